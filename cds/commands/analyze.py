"""``cds analyze PATH [--json]``: run the quick read on a DICOM folder or zip and print the findings.

Exit codes: 0 analysed (status complete or unanalysable, the reason printed), 1 a pipeline stage
failed (status failed, the stage named), 2 the input could not be read as a lumbar MRI study,
3 model weights missing or not the ones their cards describe. With ``--json`` every outcome is one
JSON object on stdout (``levels``, ``status``, ``timings_ms``, and ``reason`` whenever the study
was not fully analysed), so a script can always read why. torch and pydicom are imported
inside the handler only.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, TextIO

from cds.domain import AnalysisResult, AnalysisStatus, Condition, Finding, Level
from cds.errors import IngestError, ModelError, StageError


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("analyze", help="analyse a lumbar spine MRI study (DICOM folder or zip)")
    parser.add_argument("path", type=Path, help="DICOM folder or .zip of one study")
    parser.add_argument("--json", action="store_true", help="print the result as JSON (FINDINGS.md names)")
    parser.add_argument("--models-dir", type=Path, help="folder holding the model folders (default: models/)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from cds.dicom import load_study
    from cds.pipeline.quick_read import quick_read

    start = time.perf_counter()

    def elapsed() -> dict[str, float]:
        return {"load_dicom": (time.perf_counter() - start) * 1000.0}

    try:
        study = load_study(args.path)
    except IngestError as exc:
        if exc.kind == "no_sagittal_t2":
            why = AnalysisResult(AnalysisStatus.UNANALYSABLE, reason=exc.message, timings_ms=elapsed())
            return _emit(why, args.json)
        unreadable = AnalysisResult(
            AnalysisStatus.UNANALYSABLE,
            reason=f"cannot read study ({exc.kind}): {exc.message}",
            timings_ms=elapsed(),
        )
        _emit(unreadable, args.json, stream=sys.stdout if args.json else sys.stderr)
        return 2
    load_ms = elapsed()["load_dicom"]
    try:
        result = quick_read(study, models_dir=args.models_dir)
    except ModelError as exc:
        reason = f"models unavailable: {exc.message}"
        failed = AnalysisResult(AnalysisStatus.FAILED, reason=reason, timings_ms={"load_dicom": load_ms})
        _emit(failed, args.json, stream=sys.stdout if args.json else sys.stderr)
        return 3
    except StageError as exc:
        failed = AnalysisResult(AnalysisStatus.FAILED, reason=exc.message, timings_ms={"load_dicom": load_ms})
        _emit(failed, args.json)
        return 1
    total = (time.perf_counter() - start) * 1000.0
    timings = {"load_dicom": load_ms, **dict(result.timings_ms), "total": total}
    return _emit(replace(result, timings_ms=timings), args.json)


def _emit(result: AnalysisResult, as_json: bool, stream: TextIO | None = None) -> int:
    """Print the result (JSON or table); every outcome, failures included, says why in ``reason``."""
    text = json.dumps(result.to_json(), indent=2) if as_json else format_table(result)
    print(text, file=stream or sys.stdout)
    return 0


def _measurements(f: Finding) -> str:
    parts = []
    for name, value in f.measurements.items():
        shown = f"{value * 100:.0f} %" if name.unit == "1" else f"{value:.1f} {name.unit}"
        parts.append(f"{name.value}={shown}")
    return ", ".join(parts)


def format_table(result: AnalysisResult) -> str:
    """Plain-text findings table: one row per (level, condition), then status, reason, timings."""
    lines = [f"status: {result.status.value}"]
    if result.reason:
        lines.append(f"note: {result.reason}")
    if result.labelling_uncertain:
        lines.append("level labelling uncertain: check the level count")
    if result.findings:
        header = f"{'level':<6} {'condition':<19} {'grade':<12} {'prob':>5}  {'flag':<9} measurements"
        lines += ["", header, "-" * len(header)]
        order = {c: i for i, c in enumerate(Condition)}
        for f in sorted(result.findings, key=lambda f: (f.level.index, order[f.condition])):
            flag = "uncertain" if f.uncertain else ""
            lines.append(
                f"{f.level.value:<6} {f.condition.value:<19} {f.grade.value:<12} {f.probability:>5.2f}  "
                f"{flag:<9} {_measurements(f)}"
            )
    if result.timings_ms:
        lines.append("")
        lines.append("timings (ms): " + ", ".join(f"{k} {v:.0f}" for k, v in result.timings_ms.items()))
    if result.model_versions:
        lines.append("models: " + ", ".join(result.model_versions.values()))
    return "\n".join(lines)


__all__ = ["Level", "format_table", "register", "run"]
