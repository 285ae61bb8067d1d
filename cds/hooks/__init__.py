"""CDS Hooks front door: /cds-services discovery, the lumbar MRI services, feedback.

Modules, from the edge inwards: blueprint (HTTP: size limit, auth, parse, serialise, audit),
auth/clients/jwks/replay (who is calling), models (request parsing), registry/service/services
(the services, declared once), prefetch/fhirsource (data from the EHR), orders/studies/reports
(what the EHR's resources say), catalog/storecatalog (stored analyses, jobs), advice/cards/
markdown/presenter/encode (what the clinician sees), outcome (OperationOutcome bodies, app-wide).
Nothing here imports torch or runs a model: hooks answer from the store.
"""
