"""``cds explain PATH [--json]``: quick read plus explainable mode on a DICOM folder or zip.

Prints what ``cds analyze`` prints, plus the rationale and one Grad-CAM heatmap per moderate/severe
finding (``--all``: every analysed finding). With ``--json``: the analyze JSON plus
``"rationale": {"text", "writer": "model"|"template", ...}`` and
``"heatmaps": [{"level", "condition", "png", "raw", "peak_mm": [x, y, z], "region", ...}]``.
Progress goes to stderr (stdout stays machine-readable). Exit codes as ``cds analyze``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, TextIO

from cds.domain import AnalysisResult, AnalysisStatus
from cds.errors import IngestError, ModelError, StageError

STEPS = ("read DICOM", "quick read", "Grad-CAM heatmaps", "rationale")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "explain", help="analyse a study and explain it (Grad-CAM heatmaps + verified rationale)"
    )
    parser.add_argument("path", type=Path, help="DICOM folder or .zip of one study")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("cds-explain"),
        help="folder for the PNG/NPZ heatmaps (default: ./cds-explain)",
    )
    parser.add_argument(
        "--all", action="store_true", help="a heatmap for every analysed finding, not only moderate/severe"
    )
    parser.add_argument("--models-dir", type=Path, help="folder holding the model folders (default: models/)")
    parser.add_argument("--quiet", action="store_true", help="no progress display on stderr")
    parser.set_defaults(handler=run)


class Progress:
    """One line per step on stderr: '[2/4] quick read ... 2.9 s'."""

    def __init__(self, stream: TextIO | None) -> None:
        self.stream = stream
        self.step = 0
        self.start = time.perf_counter()

    def begin(self, name: str) -> None:
        self.step += 1
        self.start = time.perf_counter()
        if self.stream is not None:
            print(f"[{self.step}/{len(STEPS)}] {name} ...", end="", file=self.stream, flush=True)

    def end(self, note: str = "") -> None:
        if self.stream is not None:
            extra = f" ({note})" if note else ""
            print(f" {time.perf_counter() - self.start:.1f} s{extra}", file=self.stream, flush=True)


def run(args: argparse.Namespace) -> int:
    from cds.commands.analyze import format_table
    from cds.dicom import load_study
    from cds.explain.gradcam_inputs import traced_quick_read
    from cds.explain.gradcam_study import heatmaps_for_study, select_targets
    from cds.explain.rationale import write_rationale

    progress = Progress(None if args.quiet else sys.stderr)
    total_start = time.perf_counter()
    progress.begin(STEPS[0])
    try:
        study = load_study(args.path)
    except IngestError as exc:
        progress.end("failed")
        print(f"cannot read study ({exc.kind}): {exc.message}", file=sys.stderr)
        return 2
    load_ms = (time.perf_counter() - total_start) * 1000.0
    progress.end()
    progress.begin(STEPS[1])
    try:
        traced = traced_quick_read(study, models_dir=args.models_dir)
    except ModelError as exc:
        progress.end("failed")
        print(f"models unavailable: {exc.message}", file=sys.stderr)
        return 3
    except StageError as exc:
        progress.end("failed")
        failed = AnalysisResult(AnalysisStatus.FAILED, reason=exc.message, timings_ms={"load_dicom": load_ms})
        if not args.json:
            print(format_table(failed))
        _emit(failed, None, [], args.json)
        return 1
    result = traced.result
    progress.end(result.status.value)
    heatmaps: list[dict[str, Any]] = []
    notes: dict[str, dict[str, str]] = {}
    gradcam_ms = 0.0
    progress.begin(STEPS[2])
    if result.status is AnalysisStatus.COMPLETE:
        targets = [t for t in select_targets(result, all_findings=args.all) if t.level in traced.inputs]
        out_dir = args.out / _safe(study.study_uid)
        made = heatmaps_for_study(
            result,
            traced.inputs,
            out_dir,
            targets=targets,
            models_dir=args.models_dir,
            foramina=traced.foramina,
            recesses=traced.recesses,
        )
        gradcam_ms = sum(made.timings_ms.values())
        notes = made.notes()
        heatmaps = [
            {
                "level": h.level.value,
                "condition": h.condition.value,
                "grade": h.grade.value if h.grade else None,
                "png": str(h.overlay.resolve()),
                "raw": str(h.raw.resolve()),
                "peak_mm": list(h.peak_mm) if h.peak_mm else None,
                "series_uid": h.series_uid,
                "slice_index": h.slice_index,
                "region": h.region,
            }
            for h in made.heatmaps
        ]
    progress.end(f"{len(heatmaps)} heatmaps")
    progress.begin(STEPS[3])
    rationale = (
        write_rationale(result.to_json()["levels"], notes)
        if result.status is AnalysisStatus.COMPLETE
        else None
    )
    progress.end(rationale.writer.value if rationale else "no findings")
    total = (time.perf_counter() - total_start) * 1000.0
    timings = {"load_dicom": load_ms, **dict(result.timings_ms), "gradcam": gradcam_ms, "total": total}
    result = replace(result, timings_ms=timings)
    if not args.json:
        print(format_table(result))
    _emit(result, rationale, heatmaps, args.json)
    return 0


def _safe(uid: str) -> str:
    return "".join(ch if ch.isalnum() or ch in ".-_" else "_" for ch in uid)[:96] or "study"


def _emit(result: AnalysisResult, rationale: Any, heatmaps: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        out = result.to_json()
        out["rationale"] = rationale.to_json() if rationale is not None else None
        out["heatmaps"] = heatmaps
        print(json.dumps(out, indent=2))
        return
    if rationale is not None:
        print(f"\nrationale ({rationale.writer.value}): {rationale.text}")
    if heatmaps:
        print("\nheatmaps:")
        for h in heatmaps:
            peak = ", ".join(f"{v:.1f}" for v in h["peak_mm"]) if h["peak_mm"] else "none"
            print(f"  {h['level']} {h['condition']}: peak [{peak}] mm (LPS), {h['region']} -> {h['png']}")
