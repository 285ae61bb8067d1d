"""The hooks hot path stays light: importing the blueprint (and building an app) never loads torch."""

from __future__ import annotations

import subprocess
import sys


def test_hooks_do_not_import_torch_or_models() -> None:
    code = (
        "import sys\n"
        "import cds.hooks.blueprint, cds.hooks.registry\n"
        "names = ('torch', 'torchvision', 'transformers', 'cds.pipeline', 'cds.ml')\n"
        "heavy = [m for m in names if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == ""
