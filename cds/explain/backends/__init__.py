"""Language-model backends for the rationale: OpenAI-compatible HTTP and local transformers.

Selection lives in cds.explain.backends.select; nothing here imports torch at import time.
"""
