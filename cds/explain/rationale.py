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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol, cast, runtime_checkable

from cds.config import Settings
from cds.domain import AnalysisResult, Finding
from cds.errors import CdsError, StageError
from cds.explain.backends.base import Generation, RationaleBackend
from cds.explain.findings import HeatmapNote, RationaleInput, coerce_input
from cds.explain.prompt import build_messages, clean_draft
from cds.explain.template import write_template
from cds.explain.verify import VerificationResult, Violation, verify

if TYPE_CHECKING:
    from cds.explain.backends.local import ClausePrompt

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
    #: "whole" (the model drafts the whole text) or "clauses" (one model clause per described level,
    #: the quiet-level and heatmap sentences added by code); None when the template wrote it alone.
    drafting: str | None = None

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
        if self.drafting:
            out["drafting"] = self.drafting
        return out


class _Unset:
    pass


_UNSET = _Unset()


def write_rationale(
    findings: Mapping[str, Any] | AnalysisResult | Iterable[Finding] | RationaleInput,
    heatmaps: Mapping[str, Any] | Iterable[HeatmapNote] | None = None,
    *,
    settings: Settings | None = None,
    backend: RationaleBackend | ClauseBackend | _Unset | None = _UNSET,
    clauses: bool | None = None,
) -> Rationale:
    """Structured findings (the analyze JSON `levels` object) -> a verified Rationale.

    `heatmaps`: optional per-finding region descriptions (`{"L4-L5": {"spinal_canal": "..."}}`).
    `backend`: override the configured backend (None: template only); by default it comes from
    `settings` (CDS_RATIONALE_BACKEND etc.; read from the environment when not given).
    Raises RationaleInputError (400) for malformed findings.
    The timings include cpu_ms (this process's CPU time, all threads): on a shared machine it shows
    what the rationale costs independently of how busy the other processes keep the cores.
    """
    cpu0 = time.process_time()
    r = _write(findings, heatmaps, settings, backend, clauses)
    return replace(r, timings_ms={**r.timings_ms, "cpu_ms": (time.process_time() - cpu0) * 1000.0})


def _write(
    findings: Mapping[str, Any] | AnalysisResult | Iterable[Finding] | RationaleInput,
    heatmaps: Mapping[str, Any] | Iterable[HeatmapNote] | None,
    settings: Settings | None,
    backend: RationaleBackend | ClauseBackend | _Unset | None,
    clauses: bool | None,
) -> Rationale:
    start = time.perf_counter()
    inp = coerce_input(findings, heatmaps)
    settings = settings or Settings.from_env()
    backend_error: str | None = None
    if isinstance(backend, _Unset):
        try:
            from cds.explain.backends.select import backend_for

            chosen: RationaleBackend | ClauseBackend | None = backend_for(settings)
        except CdsError as exc:
            chosen, backend_error = None, exc.message
    else:
        chosen = backend
    timings: dict[str, float] = {}
    rejected: list[RejectedDraft] = []
    attempts = 0
    new_tokens = 0
    use_clauses = isinstance(chosen, ClauseBackend) if clauses is None else clauses
    if chosen is not None and use_clauses:
        if not isinstance(chosen, ClauseBackend):
            raise TypeError(f"backend {chosen.name} cannot draft per-level clauses")
        return _write_by_clauses(inp, chosen, settings, start)
    if chosen is not None:
        if not hasattr(chosen, "generate"):
            raise TypeError(f"backend {chosen.name} cannot draft a whole rationale")
        whole = cast(RationaleBackend, chosen)
        violations: tuple[Violation, ...] = ()
        gen_ms = verify_ms = 0.0
        while attempts < MAX_MODEL_ATTEMPTS:
            attempts += 1
            messages = build_messages(inp, violations)
            try:
                generation = whole.generate(
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


@runtime_checkable
class ClauseBackend(Protocol):
    """A backend that drafts one clause per row (cds.explain.clauses) in one batch (the local model)."""

    @property
    def name(self) -> str: ...

    @property
    def model_id(self) -> str: ...

    def generate_clauses(
        self, prompts: Sequence[ClausePrompt], *, max_new_tokens: int
    ) -> tuple[list[str], Generation]: ...


#: Decoding budget per clause: a base plus this many tokens per finding the clause must state.
CLAUSE_TOKENS_BASE = 24
CLAUSE_TOKENS_PER_FINDING = 22


def _write_by_clauses(
    inp: RationaleInput, backend: ClauseBackend, settings: Settings, start: float
) -> Rationale:
    """Per-finding clauses in one batch -> verify the assembled text -> redraft the failing rows
    once with their facts restated -> else the template (as for whole drafts)."""
    from cds.explain import clauses as cl
    from cds.explain.backends.constraints import RowFacts
    from cds.explain.backends.local import ClausePrompt

    items = cl.clause_items(inp)
    timings: dict[str, float] = {}
    if not items:  # nothing for a model to word: the quiet-level sentence is the whole rationale
        text = write_template(inp)
        _checked_template(text, inp)
        timings["total_ms"] = (time.perf_counter() - start) * 1000.0
        return Rationale(
            text,
            Writer.TEMPLATE,
            0,
            backend=backend.name,
            model_id=backend.model_id,
            timings_ms=timings,
            drafting="clauses",
        )
    clauses: dict[cl.ClauseItem, str] = {}
    rejected: list[RejectedDraft] = []
    violations: tuple[Violation, ...] = ()
    todo = items
    attempts = new_tokens = 0
    gen_ms = verify_ms = 0.0
    backend_error: str | None = None
    while attempts < MAX_MODEL_ATTEMPTS and todo:
        attempts += 1
        prompts = [
            ClausePrompt(
                tuple(cl.build_messages(inp, item, violations)),
                RowFacts.for_findings(item.level, item.findings),
            )
            for item in todo
        ]
        budget = min(
            settings.rationale_max_new_tokens,
            CLAUSE_TOKENS_BASE + CLAUSE_TOKENS_PER_FINDING * max(len(item.findings) for item in todo),
        )
        try:
            texts, generation = backend.generate_clauses(prompts, max_new_tokens=budget)
        except CdsError as exc:
            backend_error = exc.message
            break
        gen_ms += generation.seconds * 1000.0
        new_tokens += generation.new_tokens or 0
        for item, raw in zip(todo, texts, strict=True):
            clauses[item] = cl.clean_clause(raw, item.level)
        draft = cl.compose(inp, [(item, clauses[item]) for item in items])
        t0 = time.perf_counter()
        result = verify(draft, inp)
        verify_ms += (time.perf_counter() - t0) * 1000.0
        timings.update(generate_ms=gen_ms, verify_ms=verify_ms)
        if result.ok:
            timings["total_ms"] = (time.perf_counter() - start) * 1000.0
            return Rationale(
                draft,
                Writer.MODEL,
                attempts,
                tuple(rejected),
                backend.name,
                backend.model_id,
                timings,
                new_tokens or None,
                drafting="clauses",
            )
        rejected.append(RejectedDraft(draft, result.violations))
        violations = result.violations
        # A violation that names its finding blames that row; one without a level blames the rows
        # its excerpt quotes, or every row when it quotes none (too long, say).
        loose = [v for v in violations if v.level is None]
        unplaced = any(not v.excerpt for v in loose)
        todo = tuple(
            item
            for item in items
            if unplaced or any(cl.concerns(item, v) for v in violations) or _mentions(clauses[item], loose)
        )
    text = write_template(inp)
    _checked_template(text, inp)
    timings["total_ms"] = (time.perf_counter() - start) * 1000.0
    return Rationale(
        text,
        Writer.TEMPLATE,
        attempts,
        tuple(rejected),
        backend.name,
        backend.model_id,
        timings,
        new_tokens or None,
        backend_error,
        drafting="clauses",
    )


def _mentions(clause: str, violations: Sequence[Violation]) -> bool:
    """A violation whose excerpt is (part of) this clause blames it even without a level."""
    return any(v.excerpt and (v.excerpt in clause or clause in v.excerpt) for v in violations)


def _checked_template(text: str, inp: RationaleInput) -> VerificationResult:
    """The template is correct by construction; if it ever is not, nothing unverified is shown."""
    result = verify(text, inp)
    if not result.ok:
        raise StageError("rationale", "template text failed verification: " + result.violations[0].message)
    return result
