"""An analysis's explanation as the hooks see it: status, verified rationale, and the heatmaps the
viewer can serve.

The explain job (cds.explain.job) is the only writer of a COMPLETE ExplanationRecord, and it stores
only a rationale that passed the verifier (or the template's text), with the writer's label
("template" or "model:<backend>:<model>"). The hooks read the status in the same statement as the
analysis (cds.hooks.hotstore) and the rest of the record only when this worker has not read that
version yet (cds.hooks.storecatalog), then keep this immutable summary.

Heatmap indices are the viewer's: /viewer/<token>/heatmap/<index>.png serves entry <index> of the
record's heatmaps sorted by key (cds.viewer.blueprint.heatmap_png), so a heatmap keeps the index of
its position among ALL stored entries, and only entries the viewer would serve (a PNG inside the
analysis's artifact folder, named level and condition) are listed: a card never links a 404.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

from cds.domain import Condition, ExplanationStatus, Level


@dataclass(frozen=True)
class CardHeatmap:
    """One Grad-CAM overlay the viewer serves, tied to its finding."""

    #: Position in the viewer's heatmap URL (/viewer/<token>/heatmap/<index>.png).
    index: int
    #: The stored key, e.g. "L4-L5/spinal_canal".
    key: str
    level: Level
    condition: Condition


@dataclass(frozen=True)
class StoredExplanation:
    status: ExplanationStatus
    #: Version of the record (ExplanationRecord.updated_at): caches key on (status, updated_at).
    updated_at: datetime | None = None
    #: Verified rationale text (COMPLETE only); model text: escape it wherever it is shown.
    rationale: str | None = None
    #: Who wrote the rationale: "template" or "model:<backend>:<model>" (older rows: "llm:...").
    writer: str | None = None
    #: Why it FAILED (fixed wording from the job, or an error text: escape it).
    reason: str | None = None
    heatmaps: tuple[CardHeatmap, ...] = ()

    @property
    def version(self) -> tuple[ExplanationStatus, datetime | None]:
        return (self.status, self.updated_at)

    @property
    def ready(self) -> bool:
        """A finished explanation with a rationale to show (a COMPLETE row without text is not)."""
        return (
            self.status is ExplanationStatus.COMPLETE
            and bool(self.rationale and self.rationale.strip())
            and bool(self.writer)
        )

    @property
    def in_progress(self) -> bool:
        return self.status in (ExplanationStatus.PENDING, ExplanationStatus.RUNNING)

    @property
    def writer_is_model(self) -> bool:
        return bool(self.writer) and str(self.writer).startswith(("model", "llm"))


def _servable(analysis_id: str, overlay: Any, data_dir: Path | None) -> bool:
    """The viewer's rule (cds.viewer.explanation.heatmap_path): a PNG under
    artifacts/<analysis_id>/; with the data folder known, the file must also exist."""
    if not isinstance(overlay, str) or not overlay or "\x00" in overlay:
        return False
    if data_dir is not None:
        from cds.viewer.explanation import heatmap_path  # only on a cache miss

        return heatmap_path(data_dir, analysis_id, overlay) is not None
    path = PurePosixPath(overlay)
    return (
        not path.is_absolute()
        and ".." not in path.parts
        and path.parts[:2] == ("artifacts", analysis_id)
        and path.suffix.lower() == ".png"
    )


def card_heatmaps(
    analysis_id: str, heatmaps: Mapping[str, Any] | None, data_dir: Path | None = None
) -> tuple[CardHeatmap, ...]:
    """The servable heatmaps of a stored `heatmaps` object, in reading order (cranial to caudal,
    then the findings table's condition order), each with the viewer's index."""
    found: list[CardHeatmap] = []
    for index, (key, entry) in enumerate(sorted(dict(heatmaps or {}).items())):
        if not isinstance(entry, Mapping) or not _servable(analysis_id, entry.get("overlay"), data_dir):
            continue
        level_text, _, condition_text = str(key).partition("/")
        try:
            level = Level(str(entry.get("level") or level_text))
            condition = Condition(str(entry.get("condition") or condition_text))
        except ValueError:
            continue
        if any(h.level is level and h.condition is condition for h in found):
            continue  # one image per finding (the viewer shows duplicates; the report needs unique ids)
        found.append(CardHeatmap(index, str(key), level, condition))
    conditions = list(Condition)
    found.sort(key=lambda h: (h.level.index, conditions.index(h.condition)))
    return tuple(found)


def from_record(record: Any, analysis_id: str, data_dir: Path | None = None) -> StoredExplanation:
    """Summary of an ExplanationRecord (read inside its session)."""
    status = ExplanationStatus(record.status)
    if status is not ExplanationStatus.COMPLETE:
        reason = record.reason if status is ExplanationStatus.FAILED else None
        return StoredExplanation(status, record.updated_at, reason=reason)
    return StoredExplanation(
        status,
        record.updated_at,
        rationale=record.rationale,
        writer=record.writer,
        heatmaps=card_heatmaps(analysis_id, record.heatmaps, data_dir),
    )
