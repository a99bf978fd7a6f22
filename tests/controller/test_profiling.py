"""Profiling Jobs for planner.mode auto: what the operator renders and how it reads the result back."""

import json

from splitdnn.controller import profiling
from splitdnn.spec import from_resource


def si():
    return from_resource(
        {
            "apiVersion": "splitdnn.io/v1alpha1",
            "kind": "SplitInference",
            "metadata": {"name": "cnn14", "namespace": "ns"},
            "spec": {
                "model": {"builtin": "cnn14"},
                "planner": {"mode": "auto"},
                "tiers": [
                    {
                        "name": "device",
                        "nodeSelector": {"splitdnn.io/tier": "device"},
                        "resources": {"limits": {"memory": "1Gi"}},
                    },
                    {"name": "edge", "nodeSelector": {"splitdnn.io/tier": "edge"}},
                    {"name": "cloud"},
                ],
            },
        }
    )


def test_job_runs_the_profiler_on_the_tiers_nodes():
    job = profiling.render_job(si(), 0, "splitdnn/agent:test")
    assert job["kind"] == "Job" and job["metadata"]["name"] == "cnn14-profile-device"
    assert job["metadata"]["labels"]["splitdnn.io/splitinference"] == "cnn14"
    pod = job["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"splitdnn.io/tier": "device"} and pod["restartPolicy"] == "Never"
    (c,) = pod["containers"]
    assert c["image"] == "splitdnn/agent:test" and c["resources"] == {"limits": {"memory": "1Gi"}}
    # the profile times the runtime the tier serves with (no tiers[].runtime: auto, LiteRT where blocks convert)
    assert "splitdnn profile cnn14 --tier device --runtime auto" in c["command"][2]
    assert profiling.MARKER in c["command"][2]
    assert c["securityContext"]["readOnlyRootFilesystem"] and c["securityContext"]["runAsNonRoot"]


def test_the_profile_is_read_from_the_log_after_the_marker():
    doc = {
        "format": "splitdnn.profile/1",
        "model": "cnn14",
        "tier": "device",
        "blocks": [{"name": "conv2d", "time": 0.001, "samples_s": [0.001] * 10}],
    }
    log = "profiling cnn14 on device ━━━ 14/14\n" + profiling.MARKER + "\n" + json.dumps(doc)
    got = profiling.parse_log(log, "cnn14", "device")
    assert got["blocks"] == [{"name": "conv2d", "time": 0.001}]  # raw samples stay out of the ConfigMap
    assert profiling.parse_log(log, "cnn14", "edge") is None  # another tier's profile
    assert profiling.parse_log(log, "resnet", "device") is None
    assert profiling.parse_log("Traceback ...", "cnn14", "device") is None
    assert profiling.parse_log(profiling.MARKER + "\n{not json", "cnn14", "device") is None


def test_a_job_holds_the_profiles_back_only_while_it_can_still_bring_one():
    import datetime as dt

    from kubernetes.client import V1Job, V1JobCondition, V1JobStatus, V1ObjectMeta

    from splitdnn.controller.profiling import running

    now = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.UTC)

    def job(age_s, **status):
        return V1Job(
            metadata=V1ObjectMeta(creation_timestamp=now - dt.timedelta(seconds=age_s)), status=V1JobStatus(**status)
        )

    assert running(job(30), now, wait=600)  # just created, no pod done yet
    assert running(job(30, active=1, failed=1), now, wait=600)  # a pod failed, the next attempt runs
    assert not running(job(30, succeeded=1), now, wait=600)  # its profile is there to read
    assert not running(job(30, failed=3, conditions=[V1JobCondition(type="Failed", status="True")]), now, wait=600)
    assert not running(job(601, active=1), now, wait=600)  # e.g. no node can run it: stop waiting
