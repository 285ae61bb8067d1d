"""PACS tests reuse the hooks' signing key and FHIR builders (tests/hooks/hooks_support.py)."""

from __future__ import annotations

import sys
from pathlib import Path

_HOOKS = str(Path(__file__).resolve().parents[1] / "hooks")
if _HOOKS not in sys.path:
    sys.path.append(_HOOKS)
