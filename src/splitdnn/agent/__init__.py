"""The data plane: one agent process per tier serves its slice over the TF Serving Predict API, forwards its
outputs to the next tier, emulates the tier's overhead and outgoing link, and exports Prometheus metrics.

Pure pieces (`wire`, `link`, `stage`, `source`, `netem` command building) are importable and testable without
gRPC servers or a kernel; `server` and `local` are the thin shells around them.
"""
