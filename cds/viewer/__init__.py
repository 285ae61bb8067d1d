"""Clinician pages (Flask blueprint + Jinja templates in templates/, autoescape on)."""
