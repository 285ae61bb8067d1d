"""The corpus evaluation counts drafts, retries and fallbacks, and re-verifies delivered texts."""

from __future__ import annotations

from collections.abc import Sequence

from cds.domain import Level
from cds.explain.backends.base import ChatMessage, Generation
from cds.explain.clauses import clause_items
from cds.explain.corpus import generate_corpus
from cds.explain.evaluation import evaluate_corpus
from cds.explain.findings import coerce_input


class AlternatingBackend:
    """Writes a wrong level on odd calls and echoes nothing useful otherwise: exercises every path."""

    def __init__(self) -> None:
        self.n = 0

    @property
    def name(self) -> str:
        return "openai"

    @property
    def model_id(self) -> str:
        return "alternating"

    def generate(
        self, messages: Sequence[ChatMessage], *, allowed_levels: Sequence[Level], max_new_tokens: int
    ) -> Generation:
        self.n += 1
        return Generation("L6-S1: severe central canal stenosis.", seconds=0.1, new_tokens=10)


def test_template_only_figures() -> None:
    report, rationales = evaluate_corpus(generate_corpus(), None)
    figures = report.to_json()
    assert figures["n_cases"] == 120 and figures["template_fallback_share"] == 1.0
    assert figures["model_draft_pass_rate"] is None and figures["delivered_failing_verification"] == 0
    assert len(rationales) == 120
    # quiet studies (nothing moderate, severe or uncertain) are the template's by design, not fallbacks
    quiet = sum(1 for c in generate_corpus() if not clause_items(coerce_input(c.levels, c.heatmaps)))
    assert 0 < quiet < 120 and figures["nothing_to_word_share"] == round(quiet / 120, 4)
    assert figures["model_share_of_worded"] == 0.0


def test_model_failures_are_counted() -> None:
    backend = AlternatingBackend()
    report, _ = evaluate_corpus(generate_corpus()[:10], backend)
    figures = report.to_json()
    assert backend.n == 20  # one draft and one retry per case
    assert figures["model_drafts"] == 20 and figures["model_draft_pass_rate"] == 0.0
    assert figures["retry_rate"] == 1.0 and figures["template_fallback_share"] == 1.0
    assert figures["violation_counts"]["unknown_level"] == 20
    assert figures["delivered_failing_verification"] == 0
    assert figures["tokens_per_s"] == 100.0
