"""Run a rationale writer over the corpus and count what the issue asks for.

Figures: verifier pass rate of model drafts (first drafts and all drafts), retry rate, share of
rationales the template wrote (and how many of those had nothing for a model to word), violation
counts by kind, and -- the safety property -- the
number of delivered texts that fail verification (must be zero), re-checked here independently of
write_rationale's own check.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cds.config import Settings
from cds.explain.backends.base import RationaleBackend
from cds.explain.corpus import CorpusCase
from cds.explain.findings import coerce_input
from cds.explain.rationale import Rationale, Writer, write_rationale
from cds.explain.verify import verify


@dataclass(frozen=True)
class CorpusReport:
    n_cases: int
    model_drafts: int
    model_drafts_passed: int
    first_drafts_passed: int
    retries: int
    model_delivered: int
    template_delivered: int
    backend_errors: int
    delivered_failing_verification: int
    violation_counts: dict[str, int] = field(default_factory=dict)
    total_ms: tuple[float, ...] = ()
    new_tokens: int = 0
    generate_ms: float = 0.0
    #: Cases with no moderate/severe or uncertain finding: the quiet-level sentence is the whole
    #: rationale, so no writer is asked and the template writes it by design (not a fallback).
    nothing_to_word: int = 0

    def to_json(self) -> dict[str, Any]:
        def share(a: int, b: int) -> float | None:
            return round(a / b, 4) if b else None

        times = sorted(self.total_ms)
        return {
            "n_cases": self.n_cases,
            "model_drafts": self.model_drafts,
            "model_draft_pass_rate": share(self.model_drafts_passed, self.model_drafts),
            "first_draft_pass_rate": share(
                self.first_drafts_passed, self.n_cases if self.model_drafts else 0
            ),
            "retry_rate": share(self.retries, self.n_cases if self.model_drafts else 0),
            "model_share": share(self.model_delivered, self.n_cases),
            "template_fallback_share": share(self.template_delivered, self.n_cases),
            "nothing_to_word_share": share(self.nothing_to_word, self.n_cases),
            "model_share_of_worded": share(self.model_delivered, self.n_cases - self.nothing_to_word),
            "backend_errors": self.backend_errors,
            "delivered_failing_verification": self.delivered_failing_verification,
            "violation_counts": dict(sorted(self.violation_counts.items())),
            "rationale_ms_p50": round(statistics.median(times), 2) if times else None,
            "rationale_ms_p95": round(times[min(len(times) - 1, int(0.95 * len(times)))], 2)
            if times
            else None,
            "tokens_per_s": round(self.new_tokens / (self.generate_ms / 1000.0), 2)
            if self.generate_ms
            else None,
        }


def evaluate_corpus(
    cases: Sequence[CorpusCase],
    backend: RationaleBackend | None,
    settings: Settings | None = None,
) -> tuple[CorpusReport, list[Rationale]]:
    settings = settings or Settings(rationale_backend="template")
    from cds.explain.clauses import clause_items

    drafts = passed = first_passed = retries = model_n = template_n = errors = failing = quiet = 0
    tokens = 0
    gen_ms = 0.0
    kinds: Counter[str] = Counter()
    times: list[float] = []
    out: list[Rationale] = []
    for case in cases:
        r = write_rationale(case.levels, case.heatmaps, settings=settings, backend=backend)
        out.append(r)
        inp = coerce_input(case.levels, case.heatmaps)
        if not verify(r.text, inp).ok:
            failing += 1
        quiet += int(not clause_items(inp))
        drafts += r.attempts
        model_ok = r.writer is Writer.MODEL
        passed += int(model_ok)
        first_passed += int(model_ok and r.attempts == 1)
        retries += int(r.attempts >= 2)
        model_n += int(model_ok)
        template_n += int(not model_ok)
        errors += int(r.backend_error is not None)
        for rej in r.rejected:
            kinds.update(v.kind.value for v in rej.violations)
        times.append(r.timings_ms.get("total_ms", 0.0))
        tokens += r.new_tokens or 0
        gen_ms += r.timings_ms.get("generate_ms", 0.0)
    report = CorpusReport(
        n_cases=len(cases),
        model_drafts=drafts - errors,
        model_drafts_passed=passed,
        first_drafts_passed=first_passed,
        retries=retries,
        model_delivered=model_n,
        template_delivered=template_n,
        backend_errors=errors,
        delivered_failing_verification=failing,
        violation_counts=dict(kinds),
        total_ms=tuple(times),
        new_tokens=tokens,
        generate_ms=gen_ms,
        nothing_to_word=quiet,
    )
    return report, out
