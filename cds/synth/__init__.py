"""Synthetic lumbar spine MRI studies (DICOM) with measured ground truth; see cds.synth.study.

Nothing is imported here so that importing the package costs nothing; use
``from cds.synth.study import generate_study``.
"""
