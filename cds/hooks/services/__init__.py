"""One module per CDS service; cds.hooks.registry lists them."""
