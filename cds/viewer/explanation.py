"""What the page shows of an analysis's explanation (Grad-CAM heatmaps + rationale), and where the
heatmap files may be read from.

The explain job (cds.explain.job) stores ExplanationRecord.heatmaps as
``{"L4-L5/spinal_canal": {"overlay": <path relative to data_dir>, "level": ..., "condition": ...,
"slice_index": k, "series_uid": ..., "peak_mm": [x, y, z]}}``. The viewer serves an overlay only
when its path resolves inside ``data_dir/artifacts/<analysis_id>/`` and is a PNG: a stored path
can never make the web process read another file.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cds.domain import Condition, ExplanationStatus, Grade, Level
from cds.viewer.artifacts import artifacts_root

_STATUS_TEXT = {
    "none": "Not requested yet.",
    "pending": "Requested: waiting for a worker to compute it.",
    "running": "Being computed now (heatmaps, then the written rationale).",
    "complete": "Ready.",
    "failed": "No explanation could be produced.",
    "unavailable": "Only a completed analysis can be explained.",
}


def status_text(status: str) -> str:
    return _STATUS_TEXT.get(status, status)


#: A new paragraph where a level's account starts ("...; L4-L5: ...") or a sentence starts.
_BREAK = re.compile(r"(?<=[.;])\s+(?=L[1-5]-(?:L[1-5]|S1):)|(?<=\.)\s+(?=[A-Z])")


def rationale_paragraphs(text: str) -> tuple[str, ...]:
    """The rationale split for reading (one paragraph per level or sentence); words unchanged."""
    return tuple(part.strip() for part in _BREAK.split(text) if part.strip())


def writer_text(writer: str | None) -> str | None:
    """Who wrote the rationale, in words a clinician can weigh."""
    if not writer:
        return None
    if writer == "template":
        return "template writer: fixed sentences filled in from the measured findings"
    if writer == "model" or writer.startswith(("llm", "model")):
        detail = writer.split(":", 1)[1] if ":" in writer else ""
        name = f" ({detail})" if detail else ""
        return f"language model{name}, checked against the findings by the verifier before display"
    return writer


@dataclass(frozen=True)
class HeatmapView:
    index: int
    key: str
    level: Level | None
    condition: Condition | None
    caption: str
    slice_text: str | None
    overlay: str  # path relative to data_dir, as stored


@dataclass(frozen=True)
class ExplanationView:
    status: str
    status_text: str
    reason: str | None = None
    writer: str | None = None
    writer_text: str | None = None
    rationale: str | None = None
    heatmaps: tuple[HeatmapView, ...] = ()

    @property
    def rationale_paragraphs(self) -> tuple[str, ...]:
        return rationale_paragraphs(self.rationale or "")

    @property
    def in_progress(self) -> bool:
        return self.status in ("pending", "running")


def _heatmap(
    index: int, key: str, entry: Mapping[str, Any], grades: Mapping[str, Grade]
) -> HeatmapView | None:
    overlay = entry.get("overlay")
    if not isinstance(overlay, str) or not overlay:
        return None
    level_text, _, condition_text = key.partition("/")
    try:
        level: Level | None = Level(str(entry.get("level") or level_text))
        condition: Condition | None = Condition(str(entry.get("condition") or condition_text))
    except ValueError:
        level, condition = None, None
    if level is not None and condition is not None:
        grade = grades.get(f"{level.value}/{condition.value}")
        what = f"{grade.display} {condition.display}" if grade else condition.display
        caption = f"Where the classifier looked for its {what} call at {level.value}"
    else:
        caption = f"Heatmap {key}"
    region = entry.get("region")
    if isinstance(region, str) and region.strip():
        region = region.strip()
        caption += f" ({region})" if region.startswith("no ") else f"; strongest over the {region}"
    slice_index = entry.get("slice_index")
    slice_text = f"axial slice {int(slice_index) + 1}" if isinstance(slice_index, int) else None
    return HeatmapView(index, key, level, condition, caption, slice_text, overlay)


def build_view(record: Any | None, grades: Mapping[str, Grade], analysis_complete: bool) -> ExplanationView:
    """From an ExplanationRecord (or None: never requested)."""
    if not analysis_complete:
        return ExplanationView("unavailable", status_text("unavailable"))
    if record is None:
        return ExplanationView("none", status_text("none"))
    status = record.status.value if isinstance(record.status, ExplanationStatus) else str(record.status)
    if status != "complete":
        return ExplanationView(
            status, status_text(status), reason=record.reason if status == "failed" else None
        )
    heatmaps = []
    for i, (key, entry) in enumerate(sorted(dict(record.heatmaps or {}).items())):  # i: the URL index
        if isinstance(entry, Mapping):
            view = _heatmap(i, str(key), entry, grades)
            if view is not None:
                heatmaps.append(view)
    conditions = list(Condition)
    heatmaps.sort(  # reading order: cranial to caudal, then the table's condition order
        key=lambda h: (h.level.index if h.level else 99, conditions.index(h.condition) if h.condition else 99)
    )
    return ExplanationView(
        status,
        status_text(status),
        writer=record.writer,
        writer_text=writer_text(record.writer),
        rationale=record.rationale,
        heatmaps=tuple(heatmaps),
    )


def heatmap_path(data_dir: Path, analysis_id: str, relative: str) -> Path | None:
    """The file of a stored heatmap path, or None when it leaves the analysis's artifact folder."""
    if not relative or "\x00" in relative or Path(relative).is_absolute():
        return None
    allowed = (artifacts_root(data_dir) / analysis_id).resolve()
    candidate = (Path(data_dir) / relative).resolve()
    if not candidate.is_relative_to(allowed) or candidate.suffix.lower() != ".png":
        return None
    return candidate if candidate.is_file() else None
