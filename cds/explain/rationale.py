"""write_rationale(findings): a verified 2-5 sentence rationale, by a language model or the template.

The language model explains; it never decides (ARCHITECTURE.md principle 12). Flow: the model
backend (when configured) drafts from the structured findings only; the verifier checks every level,
side, condition, grade and number; a rejected draft is retried once with its violations named as
constraints; if that fails too -- or no backend is configured, or the backend errs -- the
deterministic template writes the text. Whatever is returned has passed the verifier; the record
says which writer produced it, what was rejected and why, and what it cost.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from cds.config import Settings
from cds.domain import AnalysisResult, Finding
from cds.errors import CdsError, StageError
from cds.explain.backends.base import RationaleBackend
from cds.explain.findings import HeatmapNote, RationaleInput, coerce_input
from cds.explain.prompt import build_messages, clean_draft
from cds.explain.template import write_template
from cds.explain.verify import VerificationResult, Violation, verify

#: One draft plus one retry with the violations as constraints (issue 5).
MAX_MODEL_ATTEMPTS = 2


class Writer(StrEnum):
    MODEL = "model"
    TEMPLATE = "template"


@dataclass(frozen=True)
class RejectedDraft:
    """A model draft that failed verification, kept for audit and for the evaluation."""

    text: str
    violations: tuple[Violation, ...]

    def to_json(self) -> dict[str, Any]:
        return {"text": self.text, "violations": [v.to_json() for v in self.violations]}


@dataclass(frozen=True)
class Rationale:
    text: str
    writer: Writer
    attempts: int  # model drafts requested (0: the template was used alone)
    rejected: tuple[RejectedDraft, ...] = ()
    backend: str = "template"  # "local" | "openai" | "template"
    model_id: str | None = None
    timings_ms: Mapping[str, float] = field(default_factory=dict)
    new_tokens: int | None = None
    backend_error: str | None = None

    @property
    def tokens_per_s(self) -> float | None:
        gen_ms = self.timings_ms.get("generate_ms", 0.0)
        if not self.new_tokens or gen_ms <= 0:
            return None
        return self.new_tokens / (gen_ms / 1000.0)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "text": self.text,
            "writer": self.writer.value,
            "attempts": self.attempts,
            "backend": self.backend,
            "model_id": self.model_id,
            "rejected_drafts": [r.to_json() for r in self.rejected],
            "timings_ms": {k: round(v, 1) for k, v in self.timings_ms.items()},
        }
        if self.new_tokens is not None:
            out["new_tokens"] = self.new_tokens
        if self.backend_error:
            out["backend_error"] = self.backend_error
        return out


class _Unset:
    pass


_UNSET = _Unset()


def write_rationale(
    findings: Mapping[str, Any] | AnalysisResult | Iterable[Finding] | RationaleInput,
    heatmaps: Mapping[str, Any] | Iterable[HeatmapNote] | None = None,
    *,
    settings: Settings | None = None,
    backend: RationaleBackend | _Unset | None = _UNSET,
) -> Rationale:
    """Structured findings (the analyze JSON `levels` object) -> a verified Rationale.

    `heatmaps`: optional per-finding region descriptions (`{"L4-L5": {"spinal_canal": "..."}}`).
    `backend`: override the configured backend (None: template only); by default it comes from
    `settings` (CDS_RATIONALE_BACKEND etc.; read from the environment when not given).
    Raises RationaleInputError (400) for malformed findings.
    """
    start = time.perf_counter()
    inp = coerce_input(findings, heatmaps)
    settings = settings or Settings.from_env()
    backend_error: str | None = None
    if isinstance(backend, _Unset):
        try:
            from cds.explain.backends.select import backend_for

            chosen = backend_for(settings)
        except CdsError as exc:
            chosen, backend_error = None, exc.message
    else:
        chosen = backend
    timings: dict[str, float] = {}
    rejected: list[RejectedDraft] = []
    attempts = 0
    new_tokens = 0
    if chosen is not None:
        violations: tuple[Violation, ...] = ()
        gen_ms = verify_ms = 0.0
        while attempts < MAX_MODEL_ATTEMPTS:
            attempts += 1
            messages = build_messages(inp, violations)
            try:
                generation = chosen.generate(
                    messages, allowed_levels=inp.levels, max_new_tokens=settings.rationale_max_new_tokens
                )
            except CdsError as exc:
                backend_error = exc.message
                break
            gen_ms += generation.seconds * 1000.0
            new_tokens += generation.new_tokens or 0
            draft = clean_draft(generation.text)
            t0 = time.perf_counter()
            result = verify(draft, inp)
            verify_ms += (time.perf_counter() - t0) * 1000.0
            timings.update(generate_ms=gen_ms, verify_ms=verify_ms)
            if result.ok:
                timings["total_ms"] = (time.perf_counter() - start) * 1000.0
                return Rationale(
                    text=draft,
                    writer=Writer.MODEL,
                    attempts=attempts,
                    rejected=tuple(rejected),
                    backend=chosen.name,
                    model_id=chosen.model_id,
                    timings_ms=timings,
                    new_tokens=new_tokens or None,
                )
            rejected.append(RejectedDraft(draft, result.violations))
            violations = result.violations
    text = write_template(inp)
    final = _checked_template(text, inp)
    del final
    timings["total_ms"] = (time.perf_counter() - start) * 1000.0
    return Rationale(
        text=text,
        writer=Writer.TEMPLATE,
        attempts=attempts,
        rejected=tuple(rejected),
        backend=chosen.name if chosen is not None else "template",
        model_id=chosen.model_id if chosen is not None else None,
        timings_ms=timings,
        new_tokens=new_tokens or None,
        backend_error=backend_error,
    )


def _checked_template(text: str, inp: RationaleInput) -> VerificationResult:
    """The template is correct by construction; if it ever is not, nothing unverified is shown."""
    result = verify(text, inp)
    if not result.ok:
        raise StageError("rationale", "template text failed verification: " + result.violations[0].message)
    return result
