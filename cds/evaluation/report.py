"""report.html: one self-contained page (inline CSS, PNGs beside it), rendered with Jinja2 with
autoescaping on, from metrics.json only -- the page can be regenerated from the JSON alone.

The templates are files beside this module (report.html.j2, dice_table.html.j2).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined

HERE = Path(__file__).resolve().parent


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _pct(value: Any) -> str:
    return "n/a" if value is None else f"{100 * float(value):.1f} %"


def _ci(value: Any) -> str:
    return "" if not value else f"[{value[0]:.3f}, {value[1]:.3f}]"


def render(metrics: Mapping[str, Any]) -> str:
    env = Environment(
        loader=FileSystemLoader(HERE),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals.update({"fmt": _fmt, "pct": _pct, "ci": _ci})
    return env.get_template("report.html.j2").render(m=metrics)
