"""Operations endpoints: liveness (/healthz), readiness (/readyz) and Prometheus metrics (/metrics).

Modules: metrics (the metric objects and the one-call observers other packages use), readiness
(dependency checks, torch-free), blueprint (the three routes). Nothing here imports torch or
loads a model: the web process only reads model cards and hashes weight files.
"""
