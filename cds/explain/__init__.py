"""Explainable mode: a verified, level-grounded rationale for an analysis (and, later, Grad-CAM).

Nothing here imports torch or transformers at import time; the local language model is loaded
lazily by cds.explain.backends.local the first time a rationale is requested with that backend.
The public entry point is `cds.explain.rationale.write_rationale(findings)`.
"""
