"""Per-finding clause drafting: rows, prompt, constraints at decoding time, batching, retry, fallback."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cds.domain import Condition, Grade, Level, Side
from cds.explain.backends.base import BackendError, Generation
from cds.explain.backends.constraints import ClauseConstraints, Family, RowFacts, VocabIndex
from cds.explain.backends.local import ClausePrompt, _StopAtSentenceEnd
from cds.explain.clauses import (
    build_messages,
    clause_items,
    clean_clause,
    compose,
    described_levels,
    examples,
)
from cds.explain.findings import RationaleInput, coerce_input
from cds.explain.rationale import ClauseBackend, Writer, write_rationale
from cds.explain.verify import verify

C = Condition
Row = tuple[Level, Condition]  # a row by its level and its (first) finding's condition
GOOD: dict[Row, str] = {
    (Level.L3_L4, C.SPINAL_CANAL): "L3-L4: moderate central canal stenosis with a dural sac area of 88 mm2, "
    "flagged as uncertain.",
    (Level.L4_L5, C.SPINAL_CANAL): "L4-L5: severe central canal stenosis with a dural sac area of 62 mm2 "
    "(< 75 mm2).",
    (Level.L4_L5, C.LEFT_FORAMINAL): "L4-L5: moderate left neural foraminal narrowing with a foraminal "
    "area ratio of 45 %.",
    (Level.L4_L5, C.RIGHT_FORAMINAL): "L4-L5: severe right neural foraminal narrowing.",
    (Level.L5_S1, C.LEFT_FORAMINAL): "L5-S1: the left neural foraminal narrowing is graded normal/mild but "
    "flagged as uncertain.",
}
L45_RIGHT_BAD = "L4-L5: moderate right neural foraminal narrowing."


class ScriptedClauses:
    """A fake model at the backend boundary: one scripted clause per row per call, prompts recorded."""

    def __init__(self, rounds: Sequence[dict[Row, str] | Exception]) -> None:
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
        texts = [answer[_row(p)] for p in prompts]
        return texts, Generation(text="\n".join(texts), seconds=0.25, new_tokens=30 * len(texts))


def _row(prompt: ClausePrompt) -> Row:
    """The row a prompt is for, read back from its last message ('- L4-L5 left neural ...')."""
    line = prompt.messages[-1].content.splitlines()[1]
    for cond in C:
        if f" {cond.display}:" in line:
            return prompt.facts.level, cond
    return prompt.facts.level, C.LEFT_FORAMINAL if "bilateral neural" in line else C.LEFT_SUBARTICULAR


def test_scripted_backend_is_a_clause_backend() -> None:
    assert isinstance(ScriptedClauses([]), ClauseBackend)


def test_examples_pass_the_verifier_when_composed() -> None:
    for inp, item, answer in examples():
        text = compose(inp, [(item, clean_clause(answer, item.level))])
        assert verify(text, inp).ok, (text, verify(text, inp).violations)
        facts = RowFacts.for_findings(item.level, item.findings)
        assert not facts.unmet(answer)  # what the examples show, the constraints allow to end


def test_rows_one_per_described_finding_pairs_merged(sample: RationaleInput) -> None:
    items = clause_items(sample)
    assert [(i.level, i.conditions) for i in items] == [
        (Level.L3_L4, (C.SPINAL_CANAL,)),
        (Level.L4_L5, (C.SPINAL_CANAL,)),
        (Level.L4_L5, (C.LEFT_FORAMINAL,)),  # moderate and severe: two rows, never 'bilateral'
        (Level.L4_L5, (C.RIGHT_FORAMINAL,)),
        (Level.L5_S1, (C.LEFT_FORAMINAL,)),  # normal/mild but uncertain
    ]
    assert described_levels(sample) == (Level.L3_L4, Level.L4_L5, Level.L5_S1)
    pair = coerce_input(
        {
            "L2-L3": {
                "left_subarticular": {"grade": "severe", "measurements": {"lateral_recess_depth_mm": 2.1}},
                "right_subarticular": {"grade": "severe", "measurements": {"lateral_recess_depth_mm": 2.4}},
            }
        }
    )
    (item,) = clause_items(pair)
    assert item.bilateral and "2.1 mm on the left and 2.4 mm on the right" in item.line()
    messages = build_messages(sample, items[2])
    assert messages[0].role == "system"
    assert (
        messages[-1].content.splitlines()[1].startswith("- L4-L5 left neural foraminal narrowing: moderate")
    )
    assert "right" not in messages[-1].content and "L3-L4" not in messages[-1].content  # its own row only


def test_clean_clause_and_compose(sample: RationaleInput) -> None:
    assert clean_clause(" severe central canal stenosis.\n\nmore", Level.L4_L5) == (
        "L4-L5: severe central canal stenosis"
    )
    assert clean_clause("L4-L5: **severe** stenosis.", Level.L4_L5) == "L4-L5: severe stenosis"
    items = clause_items(sample)
    text = compose(sample, [(i, clean_clause(GOOD[(i.level, i.conditions[0])], i.level)) for i in items])
    assert (
        "L4-L5: severe central canal stenosis with a dural sac area of 62 mm2 (< 75 mm2); moderate left"
        in text
    )
    assert text.count("L4-L5:") == 1 and verify(text, sample).ok


def test_row_facts(sample: RationaleInput) -> None:
    items = clause_items(sample)
    left = RowFacts.for_findings(items[2].level, items[2].findings)
    assert (
        left.grades == {Grade.MODERATE} and left.sides == {Side.LEFT} and left.families == {Family.FORAMINAL}
    )
    assert {
        "45",
        "35",
        "60",
    } == left.numbers  # its ratio and its condition's cut-offs, nothing of L4-L5's canal
    banned = left.banned_words()
    assert {"severe", "mild", "right", "canal", "bilateral", "uncertain"} <= set(banned)
    assert "moderate" in banned and "marked" in banned  # stated by the pre-filled text, never again
    assert "left" not in banned and "foram" not in banned
    assert left.prefill == "L4-L5: moderate left"  # a moderate/severe grade and the side open it
    assert left.unmet(" narrowing")  # no condition, no side yet
    assert not left.unmet(" left neural foraminal narrowing")
    assert {"verified", "confirmed", "herniation"} <= set(banned)  # never written by any row
    canal = RowFacts.for_findings(items[0].level, items[0].findings)
    assert (
        canal.uncertain
        and "uncertain" not in canal.banned_words()
        and {"left", "right"} <= set(canal.banned_words())
    )
    assert canal.unmet(" central canal stenosis")  # the uncertainty is not stated yet
    normal = RowFacts.for_findings(items[4].level, items[4].findings)  # L5-S1 normal/mild, uncertain
    assert normal.prefill == "L5-S1: left" and normal.unmet(" neural foraminal narrowing, uncertain")
    assert not normal.unmet(" neural foraminal narrowing graded normal/mild, flagged as uncertain")
    assert "to" in normal.banned_words() and "to" not in left.banned_words()  # 'A to < B': moderate only
    assert canal.next_digits("") == {"8", "9", "1", "7"}  # 88 mm2, 9.4 mm, 8.8 mm, cut-offs 100, 75
    assert canal.next_digits("8") == {"8"}  # 88 or 8.8 ('.' is not a digit: the number may end)


class _WordTokenizer:
    """Characters plus a few whole-word tokens (with and without a leading space), like a BPE vocab."""

    WORDS = (" severe", "severe", " moderate", " mild", " bilateral", " uncertain", " stenosis", " benign")

    def __init__(self) -> None:
        self.vocab = [
            *"LS0123456789-:. ,()<%abcdefghijklmnopqrstuvwxyz",
            *self.WORDS,
            "mm2",
            " 5",
            "\n",
            ". ",
        ]
        self.all_special_ids = [len(self.vocab)]  # end of turn
        self.vocab.append("<eot>")

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


def test_constraints_mask_other_grades_sides_and_numbers(sample: RationaleInput) -> None:
    import torch

    tok = _WordTokenizer()
    index = VocabIndex(tok)
    canal = clause_items(sample)[0]  # L3-L4 moderate central canal stenosis, uncertain
    proc = ClauseConstraints(tok, [RowFacts.for_findings(canal.level, canal.findings)], index)

    def allowed_after(text: str) -> set[str]:
        ids = torch.tensor([tok.encode(text)])
        scores = proc(ids, torch.zeros(1, len(tok)))
        return {tok.vocab[i] for i in range(len(tok)) if scores[0, i] != float("-inf")}

    anywhere = allowed_after("abc")
    assert " severe" not in anywhere and "severe" not in anywhere and " bilateral" not in anywhere
    assert " mild" not in anywhere  # the L3-L4 foramina are normal/mild, but this row is the canal's
    assert " moderate" not in anywhere  # its own grade too: the pre-filled 'L3-L4: moderate' said it
    assert {" uncertain", " stenosis"} <= anywhere
    assert " benign" not in anywhere  # starts no word of the rationale vocabulary
    assert allowed_after("a L") & set("0123456789") == {"3"}
    assert allowed_after("L3-L") & set("0123456789") == {"4"}
    start = allowed_after("area ") & set("0123456789")
    assert "8" in start and not {"4", "5"} & start  # 88 mm2 is at L3-L4; 45 % and 5.6 mm at L4-L5
    assert allowed_after("area 8") & set("0123456789") == {"8"}
    assert allowed_after("area 88") & set("0123456789") == set()  # the number is complete
    assert set("0123456789") <= allowed_after("mm")  # 'mm2': a unit, not a number
    assert not {"mm2", " 5"} & anywhere  # digits only come one per token


def test_constraints_hold_the_end_until_the_row_is_stated(sample: RationaleInput) -> None:
    import torch

    tok = _WordTokenizer()
    index = VocabIndex(tok)
    canal = clause_items(sample)[0]  # must state: moderate, canal, uncertain
    prompt = tok.encode("L3-L4:")
    proc = ClauseConstraints(tok, [RowFacts.for_findings(canal.level, canal.findings)], index, len(prompt))

    def allowed_after(generated: str) -> set[str]:
        ids = torch.tensor([prompt + tok.encode(generated)])
        scores = proc(ids, torch.zeros(1, len(tok)))
        return {tok.vocab[i] for i in range(len(tok)) if scores[0, i] != float("-inf")}

    early = allowed_after(" moderate central canal stenosis")
    assert not {"\n", ". ", "<eot>", "."} & early and "," in early
    assert "." not in allowed_after(" dural sac area 88 mm2")  # 'mm2' is a unit: '.' would end it
    assert "." in allowed_after(" disc height 8")  # a decimal point
    assert " " not in allowed_after(" disc height 8.")  # '.' + space would end the sentence
    assert "8" in allowed_after(" disc height 8.")  # ... but a decimal point may go on (8.8 mm)
    done = allowed_after(" moderate central canal stenosis, flagged as uncertain")
    assert {"\n", ". ", "<eot>"} <= done


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
    backend = ScriptedClauses([GOOD])
    r = write_rationale(levels_json, backend=backend)
    assert r.writer is Writer.MODEL and r.drafting == "clauses" and r.attempts == 1
    assert len(backend.calls) == 1 and len(backend.calls[0]) == 5  # one batch, one row per finding
    assert r.text.startswith("L3-L4: moderate central canal stenosis")
    assert "(< 75 mm2); moderate left neural foraminal narrowing" in r.text  # one part per level
    assert verify(r.text, coerce_input(levels_json)).ok
    assert r.to_json()["drafting"] == "clauses" and r.new_tokens == 150


def test_only_the_failing_row_is_redrafted(levels_json: dict[str, Any]) -> None:
    first = {**GOOD, (Level.L4_L5, C.RIGHT_FORAMINAL): L45_RIGHT_BAD}
    backend = ScriptedClauses([first, GOOD])
    r = write_rationale(levels_json, backend=backend)
    assert r.writer is Writer.MODEL and r.attempts == 2 and len(r.rejected) == 1
    retry = backend.calls[1]
    assert [_row(p) for p in retry] == [(Level.L4_L5, C.RIGHT_FORAMINAL)]
    assert "previous answer had mistakes" in retry[0].messages[-1].content
    assert "L4-L5: severe central canal stenosis" in r.text  # kept from the first batch
    assert "severe right neural foraminal narrowing" in r.text


def test_two_failures_fall_back_to_the_template(levels_json: dict[str, Any]) -> None:
    bad = {**GOOD, (Level.L4_L5, C.RIGHT_FORAMINAL): L45_RIGHT_BAD}
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
