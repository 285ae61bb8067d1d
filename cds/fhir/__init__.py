"""FHIR R4 at the edge: terminology, resource builders, validation and a FHIR REST client.

The only package that imports fhir.resources (R4B models), and only inside functions, so importing
cds.fhir stays cheap for the web process.
"""
