"""The operator's few Kubernetes calls: server-side apply of rendered children, reading them back, status.

Server-side apply with one field manager makes create-or-patch idempotent: re-applying the same objects is a
no-op, a deleted object is re-created, a restarted operator converges to the same children (never duplicates:
names are deterministic).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from splitdnn.controller.render import LABEL_SI, MANAGER

APPLY = "application/apply-patch+yaml"
# what YAML reads verbatim inside a quoted scalar: printable, no line breaks (NEL, LS, PS), no BOM
_VERBATIM = re.compile("[^\x20-\x7e\xa0-\u2027\u202a-\ud7ff\ue000-\ufefe\uff00-\ufffd\U00010000-\U0010ffff]")


def yaml_safe_json(obj: dict) -> bytes:
    """`obj` as a server-side apply body: JSON (which is YAML) the API server's YAML decoder reads back as it was.
    The client's own json.dumps escapes a character beyond the BMP (an emoji in workload.source) as a surrogate
    pair, which that decoder refuses with a 400 (found by the spec fuzzer); here such characters stay UTF-8 and
    only what YAML would not read verbatim is escaped."""
    text = json.dumps(obj, ensure_ascii=False)
    return _VERBATIM.sub(lambda m: f"\\u{ord(m.group()):04x}", text).encode()


# (connect, read) seconds for every API call that does not set its own
REQUEST_TIMEOUT = (10.0, 60.0)


def api_client(timeout: tuple = REQUEST_TIMEOUT):
    """In-cluster config when running in a pod, else KUBECONFIG / ~/.kube/config; every call times out."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
        api = client.ApiClient()
    except config.ConfigException:
        api = config.new_client_from_config()
    return with_default_timeout(api, timeout)


def with_default_timeout(api, timeout: tuple = REQUEST_TIMEOUT):
    """The kubernetes client waits for an answer forever unless each call passes `_request_timeout`. A call on a
    connection that died silently then holds its kopf worker thread for good, and the object's timer with it (a
    timer runs again only once its last run returned), so the status stops moving. Every request of `api` (typed
    and dynamic clients alike go through rest_client.request) gets `timeout` unless it brings its own."""
    rest = api.rest_client
    request = rest.request

    def request_with_timeout(*args, _request_timeout=None, **kwargs):
        return request(*args, _request_timeout=_request_timeout or timeout, **kwargs)

    rest.request = request_with_timeout
    return api


@dataclass
class Kube:
    api: object  # kubernetes.client.ApiClient

    def _apis(self):
        from kubernetes import client

        return client.CoreV1Api(self.api), client.AppsV1Api(self.api)

    def apply(self, obj: dict):
        """Server-side apply (application/apply-patch+yaml, force, our field manager) through the dynamic
        client, whose server_side_apply is the same in every kubernetes client generation (the typed patch
        methods and ApiClient.call_api changed between 35 and 37)."""
        if obj["kind"] not in ("Deployment", "StatefulSet", "Service", "ConfigMap"):
            raise ValueError(f"cannot apply kind {obj['kind']}")
        resource = self._resource(obj["apiVersion"], obj["kind"])
        body = yaml_safe_json(obj)
        meta = obj["metadata"]
        return self.dynamic.server_side_apply(
            resource,
            body=body,
            name=meta["name"],
            namespace=meta["namespace"],
            field_manager=MANAGER,
            force_conflicts=True,
        )

    @property
    def dynamic(self):
        if getattr(self, "_dynamic", None) is None:
            from kubernetes.dynamic import DynamicClient

            self._dynamic = DynamicClient(self.api)
            self._resources = {}
        return self._dynamic

    def _resource(self, api_version: str, kind: str):
        dyn = self.dynamic
        key = (api_version, kind)
        if key not in self._resources:
            self._resources[key] = dyn.resources.get(api_version=api_version, kind=kind)
        return self._resources[key]

    def has_pods(self, namespace: str, selector: str) -> bool:
        """Any pod (terminating ones too) matches the label selector."""
        core, _ = self._apis()
        return bool(core.list_namespaced_pod(namespace, label_selector=selector, limit=1).items)

    def count_pods(self, namespace: str, selector: str) -> int:
        """Pods (terminating ones too) matching the label selector."""
        core, _ = self._apis()
        return len(core.list_namespaced_pod(namespace, label_selector=selector).items)

    def get_job(self, namespace: str, name: str) -> dict | None:
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        try:
            resp: Any = client.BatchV1Api(self.api).read_namespaced_job(name, namespace, _preload_content=False)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return json.loads(resp.data)

    def create_job(self, namespace: str, obj: dict) -> None:
        """Create a Job; one that exists already (a pass beside this one made it) is fine."""
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        try:
            client.BatchV1Api(self.api).create_namespaced_job(namespace, obj)  # type: ignore[arg-type]
        except ApiException as exc:
            if exc.status != 409:
                raise

    def create_secret(self, namespace: str, obj: dict) -> bool:
        """Create a Secret unless one of its name exists (never read or replaced: the operator needs only the right
        to create Secrets). Returns whether it created it."""
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        try:
            client.CoreV1Api(self.api).create_namespaced_secret(namespace, obj)  # type: ignore[arg-type]
        except ApiException as exc:
            if exc.status != 409:
                raise
            return False
        return True

    def delete_job(self, namespace: str, name: str) -> None:
        """Delete a Job and its pods; already gone is fine."""
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        try:
            client.BatchV1Api(self.api).delete_namespaced_job(name, namespace, propagation_policy="Background")
        except ApiException as exc:
            if exc.status != 404:
                raise

    def container_reports(self, namespace: str, job_name: str) -> dict[str, dict]:
        """The model Job's pods' build container states, by pod name (`container_state`)."""
        from splitdnn.controller.render import BUILDER

        core, _ = self._apis()
        resp = core.list_namespaced_pod(namespace, label_selector=f"job-name={job_name}", _preload_content=False)
        found = {}
        for pod in json.loads(resp.data)["items"]:
            state = container_state((pod.get("status") or {}).get("containerStatuses") or [], BUILDER)
            if state is not None:
                found[pod["metadata"]["name"]] = state
        return found

    def slicer_reports(self, namespace: str, si_name: str) -> dict[tuple[str, str], dict]:
        """What the slicer init containers of a SplitInference's pods said, by (split id, tier): the termination
        `message`, `exitCode` and `reason` of their last run, or the `waiting` reason and `waitingMessage` of one
        that cannot start (a missing Secret). `status.slicer_report` reads it."""
        from splitdnn.controller.render import LABEL_SI, LABEL_SPLIT, LABEL_TIER, SLICER

        core, _ = self._apis()
        resp = core.list_namespaced_pod(namespace, label_selector=f"{LABEL_SI}={si_name}", _preload_content=False)
        found: dict[tuple[str, str], dict] = {}
        for pod in json.loads(resp.data)["items"]:
            labels = pod["metadata"].get("labels") or {}
            key = (labels.get(LABEL_SPLIT, ""), labels.get(LABEL_TIER, ""))
            state = container_state((pod.get("status") or {}).get("initContainerStatuses") or [], SLICER)
            if state is None:
                continue
            if "exitCode" in state and (key not in found or state.get("exitCode") == 0):  # a pod that fetched wins
                found[key] = state
            elif "waiting" in state and key not in found:
                found[key] = state
        return found

    def delete(self, kind: str, namespace: str, name: str) -> None:
        """Delete a child (StatefulSet or Service); already gone is fine."""
        from kubernetes.client.exceptions import ApiException

        api_version = {"StatefulSet": "apps/v1", "Service": "v1"}[kind]
        try:
            self.dynamic.delete(self._resource(api_version, kind), name=name, namespace=namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise

    def delete_service(self, namespace: str, name: str) -> None:
        """Delete a Service; already gone is fine."""
        from kubernetes.client.exceptions import ApiException

        core, _ = self._apis()
        try:
            core.delete_namespaced_service(name, namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise

    def get_si(self, namespace: str, name: str) -> dict | None:
        """A SplitInference as stored now (None: the resource is gone)."""
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        from splitdnn.spec import GROUP, PLURAL, VERSION

        try:
            obj: Any = client.CustomObjectsApi(self.api).get_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return obj

    def patch_status(self, namespace: str, name: str, status: dict) -> None:
        """Merge `status` into a SplitInference's status subresource now (not when the Kopf handler returns)."""
        from kubernetes import client

        from splitdnn.spec import GROUP, PLURAL, VERSION

        client.CustomObjectsApi(self.api).patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURAL, name, {"status": status}
        )

    def children(self, namespace: str, si_name: str) -> dict:
        """Existing children by (kind, name): plain dicts as the API returns them."""
        core, apps = self._apis()
        sel = f"{LABEL_SI}={si_name}"
        found = {}
        for kind, lister in (
            ("Deployment", apps.list_namespaced_deployment),
            ("StatefulSet", apps.list_namespaced_stateful_set),
            ("Service", core.list_namespaced_service),
            ("ConfigMap", core.list_namespaced_config_map),
        ):
            resp = lister(namespace, label_selector=sel, _preload_content=False)
            import json

            for item in json.loads(resp.data)["items"]:
                found[(kind, item["metadata"]["name"])] = item
        return found


def container_state(statuses: list, container: str) -> dict | None:
    """A container's last run: its termination `message`, `exitCode` and `reason`, or the `waiting` reason and
    `waitingMessage` of one that cannot start (a missing Secret); None when it has said nothing yet
    (`status.slicer_report` reads it)."""
    for st in statuses:
        if st.get("name") != container:
            continue
        state = st.get("state") or {}
        done = state.get("terminated") or (st.get("lastState") or {}).get("terminated")
        if done:
            return {k: done.get(k) for k in ("message", "exitCode", "reason")}
        if (state.get("waiting") or {}).get("reason"):
            waiting = state["waiting"]
            return {"waiting": waiting.get("reason"), "waitingMessage": waiting.get("message")}
    return None
