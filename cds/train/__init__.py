"""Training commands for the project's own models (seeded, resumable, logged per epoch)."""
