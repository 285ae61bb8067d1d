"""Network definitions, model specs and hash-verified weight loading.

Importing this package is cheap on purpose: torch is imported only by the modules that need it
(``cds.ml.unet``, ``cds.ml.loading``), so that the web process can import specs and cards
without pulling in torch.
"""
