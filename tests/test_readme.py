"""The README is the integrator's manual: every environment setting the code reads must be in it,
and every command the CLI offers must be listed, so the docs cannot silently fall behind the code."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: Names that look like settings but are not environment variables an operator sets.
NOT_SETTINGS = frozenset({"CDS_MODELS_DIR"})  # a Flask app.config key used by tests, not an env var


def _settings_read_by_code() -> set[str]:
    found: set[str] = set()
    for folder in ("cds", "docker"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix in {".py", ".yaml", ".lua"} and path.is_file():
                found.update(re.findall(r"['\"](CDS_[A-Z0-9_]+)['\"]", path.read_text()))
    return found - NOT_SETTINGS


def test_every_setting_the_code_reads_is_documented() -> None:
    readme = (ROOT / "README.md").read_text()
    settings = _settings_read_by_code()
    assert "CDS_DATABASE_URL" in settings  # the scan itself works
    missing = sorted(name for name in settings if f"`{name}`" not in readme and name not in readme)
    assert missing == [], f"settings read by the code but not in README.md: {missing}"


def test_every_cli_command_is_documented() -> None:
    from cds.cli import COMMANDS

    readme = (ROOT / "README.md").read_text()
    assert len(COMMANDS) >= 5
    missing = [name for name in COMMANDS if f"`cds {name}" not in readme]
    assert missing == [], f"cds commands not in README.md: {missing}"
