"""write_rationale: model first, verify, retry once with constraints, template fallback."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from cds.config import Settings
from cds.domain import AnalysisResult, Level
from cds.explain.backends.base import BackendError, ChatMessage, Generation
from cds.explain.findings import RationaleInput, RationaleInputError
from cds.explain.rationale import Writer, write_rationale
from cds.explain.template import write_template
from cds.explain.verify import verify

GOOD = (
    "L4-L5: severe central canal stenosis with a dural sac area of 62 mm2 (< 75 mm2), "
    "moderate left and severe right neural foraminal narrowing. "
    "L3-L4: moderate central canal stenosis, flagged as uncertain. "
    "L5-S1: no moderate or severe stenosis; left neural foraminal narrowing graded normal/mild, "
    "flagged as uncertain."
)
BAD = "L4-L5: severe central canal stenosis and bilateral severe neural foraminal narrowing."


class ScriptedBackend:
    """A fake model at the backend boundary: returns the scripted drafts in order, records prompts."""

    def __init__(self, drafts: Sequence[str | Exception]) -> None:
        self.drafts = list(drafts)
        self.calls: list[list[ChatMessage]] = []
        self.allowed: list[tuple[Level, ...]] = []

    @property
    def name(self) -> str:
        return "openai"

    @property
    def model_id(self) -> str:
        return "scripted-1"

    def generate(
        self, messages: Sequence[ChatMessage], *, allowed_levels: Sequence[Level], max_new_tokens: int
    ) -> Generation:
        self.calls.append(list(messages))
        self.allowed.append(tuple(allowed_levels))
        draft = self.drafts.pop(0)
        if isinstance(draft, Exception):
            raise draft
        return Generation(text=draft, seconds=0.5, new_tokens=50, prompt_tokens=900)


def test_verified_model_draft_is_delivered(levels_json: dict[str, Any]) -> None:
    backend = ScriptedBackend(["**Rationale:** " + GOOD + "\n\nExtra paragraph that is dropped."])
    r = write_rationale(levels_json, backend=backend)
    assert r.writer is Writer.MODEL and r.text == GOOD
    assert r.attempts == 1 and r.rejected == ()
    assert r.backend == "openai" and r.model_id == "scripted-1"
    assert r.new_tokens == 50 and r.tokens_per_s == pytest.approx(100.0)
    assert backend.allowed[0] == (Level.L3_L4, Level.L4_L5, Level.L5_S1)


def test_prompt_has_rules_three_examples_and_no_identifiers(levels_json: dict[str, Any]) -> None:
    backend = ScriptedBackend([GOOD])
    analysis = {"levels": levels_json, "status": "complete", "study_uid": "1.2.3.4", "patient": "Doe^Jane"}
    write_rationale(analysis, backend=backend)
    messages = backend.calls[0]
    assert [m.role for m in messages] == ["system"] + ["user", "assistant"] * 3 + ["user"]
    everything = " ".join(m.content for m in messages)
    assert "1.2.3.4" not in everything and "Doe" not in everything
    assert "L4-L5 left neural foraminal narrowing: moderate" in messages[-1].content
    assert "not bilateral" in messages[-1].content


def test_rejected_draft_is_retried_with_its_violations(levels_json: dict[str, Any]) -> None:
    backend = ScriptedBackend([BAD, GOOD])
    r = write_rationale(levels_json, backend=backend)
    assert r.writer is Writer.MODEL and r.attempts == 2
    assert len(r.rejected) == 1 and r.rejected[0].text == BAD
    kinds = {v.kind.value for v in r.rejected[0].violations}
    assert "bilateral_misuse" in kinds
    retry_prompt = backend.calls[1][-1].content
    assert "previous answer had mistakes" in retry_prompt
    assert "- L4-L5: left and right differ, so do not write bilateral." in retry_prompt
    assert "- L4-L5 left neural foraminal narrowing: moderate" in retry_prompt  # the fact, restated
    assert BAD not in retry_prompt  # the rejected wording is not shown back


def test_two_bad_drafts_fall_back_to_the_template(
    levels_json: dict[str, Any], sample: RationaleInput
) -> None:
    backend = ScriptedBackend([BAD, BAD.replace("severe central", "moderate central")])
    r = write_rationale(levels_json, backend=backend)
    assert r.writer is Writer.TEMPLATE and r.attempts == 2 and len(r.rejected) == 2
    assert r.text == write_template(sample)
    assert verify(r.text, sample).ok
    assert r.to_json()["writer"] == "template" and len(r.to_json()["rejected_drafts"]) == 2


def test_backend_error_falls_back_and_is_recorded(levels_json: dict[str, Any]) -> None:
    r = write_rationale(levels_json, backend=ScriptedBackend([BackendError("rationale endpoint timed out")]))
    assert r.writer is Writer.TEMPLATE and r.backend_error == "rationale endpoint timed out"


def test_template_only_when_no_backend(levels_json: dict[str, Any]) -> None:
    r = write_rationale(levels_json, backend=None)
    assert r.writer is Writer.TEMPLATE and r.attempts == 0 and r.backend == "template"
    assert r.model_id is None and "total_ms" in r.timings_ms


def test_settings_select_the_template(levels_json: dict[str, Any]) -> None:
    r = write_rationale(levels_json, settings=Settings(rationale_backend="template"))
    assert r.writer is Writer.TEMPLATE and r.backend_error is None


def test_misconfigured_endpoint_falls_back_with_reason(levels_json: dict[str, Any]) -> None:
    from cds.explain.backends.select import clear_cache

    clear_cache()
    settings = Settings(rationale_backend="openai", rationale_url="ftp://x", rationale_model="m")
    r = write_rationale(levels_json, settings=settings)
    assert r.writer is Writer.TEMPLATE and r.backend_error is not None and "http" in r.backend_error


def test_accepts_analysis_result_and_rejects_bad_input(levels_json: dict[str, Any]) -> None:
    result = AnalysisResult.from_json({"levels": levels_json, "status": "complete"})
    assert write_rationale(result, backend=None).writer is Writer.TEMPLATE
    with pytest.raises(RationaleInputError):
        write_rationale({"L9-L10": {}}, backend=None)


def test_heatmap_notes_reach_template_and_prompt(levels_json: dict[str, Any]) -> None:
    heat = {"L4-L5": {"spinal_canal": "posterior disc margin"}}
    backend = ScriptedBackend([BAD, BAD])
    r = write_rationale(levels_json, heat, backend=backend)
    assert "posterior disc margin for L4-L5 central canal stenosis" in r.text
    assert "Heatmap for L4-L5 central canal stenosis: highlights the posterior disc margin." in (
        backend.calls[0][-1].content
    )


def test_template_path_never_imports_torch() -> None:
    """The web process may write template rationales; it must not pull in torch or transformers."""
    import subprocess
    import sys

    code = (
        "import sys; from cds.explain.rationale import write_rationale; "
        "from cds.config import Settings; "
        "r = write_rationale({'L4-L5': {'spinal_canal': {'grade': 'severe'}}}, "
        "settings=Settings(rationale_backend='template')); "
        "assert r.writer.value == 'template', r; "
        "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_no_findings_gives_a_short_honest_text() -> None:
    r = write_rationale({}, backend=ScriptedBackend(["L4-L5: severe central canal stenosis."] * 2))
    assert r.writer is Writer.TEMPLATE  # any level statement is about a level that was not analysed
    assert r.text.startswith("No findings were available to describe.")
    assert {v.kind.value for v in r.rejected[0].violations} == {"absent_level"}
