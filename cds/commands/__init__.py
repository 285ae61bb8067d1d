"""Subcommands of the `cds` CLI, one module each (listed in cds.cli.COMMANDS)."""
