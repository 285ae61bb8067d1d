"""Explainable lumbar spine MRI decision support over CDS Hooks."""
