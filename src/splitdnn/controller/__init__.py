"""The splitdnn operator (Kopf): SplitInference → one Deployment + Service per tier and a plan ConfigMap.

render.py, plan.py and status.py are pure and unit-tested; kube.py holds the few API calls; handlers.py the Kopf
handlers; run.py the entry point behind `splitdnn operator`.
"""
