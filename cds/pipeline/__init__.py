"""Analysis pipeline stages (segment, classify, grade) and their composition.

Nothing here is imported eagerly: stage modules import torch lazily so that importing
``cds.pipeline`` from the web process stays cheap.
"""
