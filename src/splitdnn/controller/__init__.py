"""The splitdnn operator (Kopf): SplitInference → one Deployment + Service per tier and a plan ConfigMap.

render.py, plan.py, status.py, reconcile.py and feedback_pass.py are pure and unit-tested; kube.py and
profiling.py hold the API calls; handlers.py is the Kopf shell (`register`); settings.py is read once at start-up;
run.py is the entry point behind `splitdnn operator`.
"""
