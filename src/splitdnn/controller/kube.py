"""The operator's few Kubernetes calls: server-side apply of rendered children, reading them back, status.

Server-side apply with one field manager makes create-or-patch idempotent: re-applying the same objects is a
no-op, a deleted object is re-created, a restarted operator converges to the same children (never duplicates:
names are deterministic).
"""

from __future__ import annotations

from dataclasses import dataclass

from splitdnn.controller.render import LABEL_SI, MANAGER

APPLY = "application/apply-patch+yaml"


def api_client():
    """In-cluster config when running in a pod, else KUBECONFIG / ~/.kube/config."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
        return client.ApiClient()
    except config.ConfigException:
        return config.new_client_from_config()


@dataclass
class Kube:
    api: object  # kubernetes.client.ApiClient

    def _apis(self):
        from kubernetes import client

        return client.CoreV1Api(self.api), client.AppsV1Api(self.api)

    def apply(self, obj: dict) -> dict:
        """Server-side apply (PATCH application/apply-patch+yaml, force, our field manager). Done through
        call_api so it works with every kubernetes client version (the typed patch methods of clients < 36 cannot
        send that content type). Both client generations serialize a dict body to JSON for this content type
        (JSON is YAML)."""
        kind, ns, name = obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"]
        path = {
            "Deployment": f"/apis/apps/v1/namespaces/{ns}/deployments/{name}",
            "Service": f"/api/v1/namespaces/{ns}/services/{name}",
            "ConfigMap": f"/api/v1/namespaces/{ns}/configmaps/{name}",
        }.get(kind)
        if path is None:
            raise ValueError(f"cannot apply kind {kind}")
        return self.api.call_api(
            path, "PATCH",
            query_params=[("fieldManager", MANAGER), ("force", "true")],
            header_params={"Content-Type": APPLY, "Accept": "application/json"},
            body=obj,
            auth_settings=["BearerToken"],
            response_type="object",
            _return_http_data_only=True,
        )

    def children(self, namespace: str, si_name: str) -> dict:
        """Existing children by (kind, name): plain dicts as the API returns them."""
        core, apps = self._apis()
        sel = f"{LABEL_SI}={si_name}"
        found = {}
        for kind, lister in (("Deployment", apps.list_namespaced_deployment),
                             ("Service", core.list_namespaced_service),
                             ("ConfigMap", core.list_namespaced_config_map)):
            resp = lister(namespace, label_selector=sel, _preload_content=False)
            import json

            for item in json.loads(resp.data)["items"]:
                found[(kind, item["metadata"]["name"])] = item
        return found
