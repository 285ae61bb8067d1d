"""Per-level clause drafting: prompt, constraints at decoding time, batching flow, retry, fallback."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cds.domain import Grade, Level
from cds.explain.backends.base import BackendError, Generation
from cds.explain.backends.constraints import ClauseConstraints, RowFacts, VocabIndex
from cds.explain.backends.local import ClausePrompt, _StopAtSentenceEnd
from cds.explain.findings import RationaleInput, coerce_input
from cds.explain.prompt import (
    build_clause_messages,
    clause_examples,
    clean_clause,
    described_levels,
    level_lines,
)
from cds.explain.rationale import ClauseBackend, Writer, write_rationale
from cds.explain.template import compose_clauses
from cds.explain.verify import verify

L34 = "L3-L4: moderate central canal stenosis with a dural sac area of 88 mm2, flagged as uncertain."
L45 = (
    "L4-L5: severe central canal stenosis with a dural sac area of 62 mm2 (< 75 mm2), moderate left "
    "and severe right neural foraminal narrowing."
)
L56 = "L5-S1: the left neural foraminal narrowing is graded normal/mild but flagged as uncertain."
L45_BAD = "L4-L5: severe central canal stenosis and bilateral severe neural foraminal narrowing."


class ScriptedClauses:
    """A fake model at the backend boundary: one scripted clause per level per call, prompts recorded."""

    def __init__(self, rounds: Sequence[dict[Level, str] | Exception]) -> None:
        self.rounds = list(rounds)
        self.calls: list[list[ClausePrompt]] = []

    @property
    def name(self) -> str:
        return "local"

    @property
    def model_id(self) -> str:
        return "scripted-clauses"

    def generate_clauses(
        self, prompts: Sequence[ClausePrompt], *, max_new_tokens: int
    ) -> tuple[list[str], Generation]:
        assert max_new_tokens > 0
        self.calls.append(list(prompts))
        answer = self.rounds.pop(0)
        if isinstance(answer, Exception):
            raise answer
        texts = [answer[p.facts.level] for p in prompts]
        return texts, Generation(text="\n".join(texts), seconds=0.25, new_tokens=30 * len(texts))


def test_scripted_backend_is_a_clause_backend() -> None:
    assert isinstance(ScriptedClauses([]), ClauseBackend)


def test_clause_examples_pass_the_verifier_when_composed() -> None:
    for inp, level, answer in clause_examples():
        text = compose_clauses(inp, [clean_clause(answer, level)])
        assert verify(text, inp).ok, (text, verify(text, inp).violations)


def test_level_lines_and_described_levels(sample: RationaleInput) -> None:
    assert described_levels(sample) == (Level.L3_L4, Level.L4_L5, Level.L5_S1)
    lines = level_lines(sample, Level.L4_L5)
    assert lines[0].startswith("- L4-L5 central canal stenosis: severe; dural sac area 62 mm2")
    assert sum("the two sides differ" in ln for ln in lines) == 2
    assert not any("subarticular" in ln for ln in lines)  # normal, certain findings are not listed
    messages = build_clause_messages(sample, Level.L4_L5)
    assert messages[0].role == "system" and messages[-1].content.startswith("Findings at L4-L5:")
    assert "L3-L4" not in messages[-1].content  # each row sees its own level only


def test_clean_clause() -> None:
    assert clean_clause(" severe central canal stenosis.\n\nmore", Level.L4_L5) == (
        "L4-L5: severe central canal stenosis"
    )
    assert clean_clause("L4-L5: **severe** stenosis.", Level.L4_L5) == "L4-L5: severe stenosis"


def test_row_facts(sample: RationaleInput) -> None:
    facts = RowFacts.for_level(sample, Level.L4_L5)
    assert facts.grades == {Grade.SEVERE, Grade.MODERATE, Grade.NORMAL_MILD}
    assert {"62", "75", "100", "45", "31", "35", "60"} <= facts.numbers
    assert not facts.bilateral  # the foramina differ; the subarticular sides share only normal/mild
    assert not facts.uncertain
    l34 = RowFacts.for_level(sample, Level.L3_L4)
    assert "severe" in l34.banned_words() and "moderate" not in l34.banned_words()
    assert l34.uncertain and "uncertain" not in l34.banned_words()
    assert facts.next_digits("") >= {"6", "7", "1", "4", "3"} and "8" not in facts.next_digits("")
    assert facts.next_digits("6") == {"0", "2"}  # 60 (cut-off) or 62 (dural sac area)


class _WordTokenizer:
    """Characters plus a few whole-word tokens (with and without a leading space), like a BPE vocab."""

    WORDS = (" severe", "severe", " moderate", " mild", " bilateral", " uncertain", " stenosis")

    def __init__(self) -> None:
        self.vocab = [*"LS0123456789-:. ,()<%abcdefghijklmnopqrstuvwxyz", *self.WORDS, "mm2", " 5"]

    def __len__(self) -> int:
        return len(self.vocab)

    def get_vocab(self) -> dict[str, int]:
        return {t: i for i, t in enumerate(self.vocab)}

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        return "".join(tokens)

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return "".join(self.vocab[i] for i in ids)

    def encode(self, text: str) -> list[int]:
        return [self.vocab.index(ch) for ch in text]


def test_constraints_mask_other_levels_grades_and_numbers(sample: RationaleInput) -> None:
    import torch

    tok = _WordTokenizer()
    index = VocabIndex(tok)
    proc = ClauseConstraints(tok, [RowFacts.for_level(sample, Level.L3_L4)], index)

    def allowed_after(text: str) -> set[str]:
        ids = torch.tensor([tok.encode(text)])
        scores = proc(ids, torch.zeros(1, len(tok)))
        return {tok.vocab[i] for i in range(len(tok)) if scores[0, i] != float("-inf")}

    anywhere = allowed_after("abc")
    assert " severe" not in anywhere and "severe" not in anywhere and " bilateral" not in anywhere
    assert {" moderate", " mild", " uncertain", " stenosis"} <= anywhere
    assert allowed_after("a L") & set("0123456789") == {"3"}
    assert allowed_after("L3-L") & set("0123456789") == {"4"}
    start = allowed_after("area ") & set("0123456789")
    assert "8" in start and not {"4", "5"} & start  # 88 mm2 is at L3-L4; 45 % and 5.6 mm at L4-L5
    assert allowed_after("area 8") & set("0123456789") == {"8"}
    assert allowed_after("area 88") & set("0123456789") == set()  # the number is complete
    assert set("0123456789") <= allowed_after("mm")  # 'mm2': a unit, not a number
    assert not {"mm2", " 5"} & anywhere  # digits only come one per token


def test_stop_at_sentence_end_not_at_a_decimal_point() -> None:
    import torch

    tok = _WordTokenizer()
    prompt = tok.encode("ab:")
    stop = _StopAtSentenceEnd(tok, prompt_len=len(prompt))

    def stops(generated: str) -> bool:
        return bool(stop(torch.tensor([prompt + tok.encode(generated)]), None)[0])

    assert not stops(" depth 2.2")
    assert not stops(" depth 2.")
    assert stops(" depth 2.2 mm. ")


def test_clauses_are_batched_and_verified(levels_json: dict[str, Any]) -> None:
    backend = ScriptedClauses([{Level.L3_L4: L34, Level.L4_L5: L45, Level.L5_S1: L56}])
    r = write_rationale(levels_json, backend=backend)
    assert r.writer is Writer.MODEL and r.drafting == "clauses" and r.attempts == 1
    assert len(backend.calls) == 1 and len(backend.calls[0]) == 3  # one batch, one row per level
    assert r.text.startswith("L3-L4: moderate central canal stenosis")
    assert verify(r.text, coerce_input(levels_json)).ok
    assert r.to_json()["drafting"] == "clauses" and r.new_tokens == 90


def test_only_the_failing_level_is_redrafted(levels_json: dict[str, Any]) -> None:
    backend = ScriptedClauses(
        [{Level.L3_L4: L34, Level.L4_L5: L45_BAD, Level.L5_S1: L56}, {Level.L4_L5: L45}]
    )
    r = write_rationale(levels_json, backend=backend)
    assert r.writer is Writer.MODEL and r.attempts == 2 and len(r.rejected) == 1
    retry = backend.calls[1]
    assert [p.facts.level for p in retry] == [Level.L4_L5]
    assert "previous answer had mistakes" in retry[0].messages[-1].content
    assert "L3-L4: moderate central canal stenosis" in r.text  # kept from the first batch


def test_two_failures_fall_back_to_the_template(levels_json: dict[str, Any]) -> None:
    bad = {Level.L3_L4: L34, Level.L4_L5: L45_BAD, Level.L5_S1: L56}
    r = write_rationale(levels_json, backend=ScriptedClauses([bad, bad]))
    assert r.writer is Writer.TEMPLATE and r.attempts == 2 and len(r.rejected) == 2
    assert verify(r.text, coerce_input(levels_json)).ok


def test_backend_error_falls_back_to_the_template(levels_json: dict[str, Any]) -> None:
    r = write_rationale(levels_json, backend=ScriptedClauses([BackendError("model missing")]))
    assert r.writer is Writer.TEMPLATE and r.backend_error and r.drafting == "clauses"


def test_no_described_level_needs_no_model() -> None:
    quiet = {"L4-L5": {"spinal_canal": {"grade": "normal_mild", "measurements": {"dsca_mm2": 140.0}}}}
    backend = ScriptedClauses([])
    r = write_rationale(quiet, backend=backend)
    assert r.writer is Writer.TEMPLATE and r.attempts == 0 and backend.calls == []
