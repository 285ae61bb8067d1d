"""Constrained decoding for per-level clauses: each row may only write its own level's facts.

Why: a rejected draft costs a retry (another full generation) or ends in the template; masking at
decoding time makes the commonest errors of small models impossible instead of merely detectable.
Per row (one row = one level's clause) the processor

* bans, for the whole clause, the words of grades that no finding at that level has, "bilateral"
  where no left/right pair shares a moderate or severe grade, and "uncertain" where no finding is
  flagged uncertain;
* lets a number start or continue only as a prefix of a number that the findings of that level
  give (measurements as displayed, and the cut-offs of the level's conditions);
* lets a level name ('L4-L5') be only that row's level.

It never forces a word, so the model may still leave a finding out or mis-pair a grade with a
condition: the verifier decides what is shown, as before. The number rule needs numbers written one
digit per token (as Qwen/Llama pre-tokenizers split them): every other vocabulary entry containing
a digit is banned outright, and a vocabulary without the ten single digits is refused.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cds.domain import THRESHOLDS, Condition, Grade, Level
from cds.explain.findings import RationaleInput
from cds.explain.wording import format_number

#: Words (lower case, no leading space) that state a grade, by grade.
GRADE_WORDS: dict[Grade, tuple[str, ...]] = {
    Grade.SEVERE: ("severe", "severely", "sever", "critical"),
    Grade.MODERATE: ("moderate", "moderately", "moder", "moderat"),
    Grade.NORMAL_MILD: ("mild", "mildly", "normal"),
}
BILATERAL_WORDS = ("bilateral", "bilaterally", "bilater", "bilat", "both")
UNCERTAIN_WORDS = ("uncertain", "uncertainty", "uncert", "flagged", "flag")

_ASCII_DIGITS = frozenset("0123456789")
_PAIRS = (
    (Condition.LEFT_FORAMINAL, Condition.RIGHT_FORAMINAL),
    (Condition.LEFT_SUBARTICULAR, Condition.RIGHT_SUBARTICULAR),
)
# A number starts after a character that is neither a letter nor a digit ('mm2', 'L4' are not numbers).
_RUN_RE = re.compile(r"(?<![A-Za-z0-9.])(\d+(?:\.\d*)?)$")
_LEVEL_TAIL_RE = re.compile(r"(?<![A-Za-z])(L|S|L[1-5]\s*[-–/]\s*L?|L[1-5]\s*[-–/]\s*S?)$")


@dataclass(frozen=True)
class RowFacts:
    """What one clause may state: its level, grades, numbers, and whether bilateral/uncertain apply."""

    level: Level
    grades: frozenset[Grade]
    numbers: frozenset[str]
    bilateral: bool
    uncertain: bool

    @classmethod
    def for_level(cls, inp: RationaleInput, level: Level) -> RowFacts:
        found = inp.at_level(level)
        numbers: set[str] = set()
        for f in found:
            th = THRESHOLDS[f.condition]
            for name, value in f.measurements.items():
                cutoffs = (th.moderate_below, th.severe_below) if name is th.measurement else ()
                numbers.add(format_number(name, value, cutoffs))
            for cut in (th.moderate_below, th.severe_below):
                numbers.add(format_number(th.measurement, cut))
        bilateral = False
        for left_c, right_c in _PAIRS:
            left, right = inp.finding(level, left_c), inp.finding(level, right_c)
            # Only a shared moderate/severe grade is worded 'bilateral' (normal pairs are not listed).
            if left is not None and right is not None and left.grade is right.grade and left.grade.present:
                bilateral = True
        return cls(
            level=level,
            grades=frozenset(f.grade for f in found),
            numbers=frozenset(numbers),
            bilateral=bilateral,
            uncertain=any(f.uncertain for f in found),
        )

    def banned_words(self) -> tuple[str, ...]:
        words: list[str] = []
        for grade, forms in GRADE_WORDS.items():
            if grade not in self.grades:
                words.extend(forms)
        if not self.bilateral:
            words.extend(BILATERAL_WORDS)
        if not self.uncertain:
            words.extend(UNCERTAIN_WORDS)
        return tuple(words)

    def next_digits(self, run: str) -> set[str]:
        """Digits that may follow `run` ('' at the start of a number) so that it stays a given number."""
        return {
            n[len(run)]
            for n in self.numbers
            if n.startswith(run) and len(n) > len(run) and n[len(run)].isdigit()
        }


class VocabIndex:
    """Token ids of the vocabulary by what they spell, built once per tokenizer (~1-2 s for 150k)."""

    def __init__(self, tokenizer: Any) -> None:
        import torch

        digits: dict[str, list[int]] = {}
        words: dict[str, list[int]] = {}
        other_numeric: list[int] = []
        for piece, idx in tokenizer.get_vocab().items():
            text = tokenizer.convert_tokens_to_string([piece])
            if not text:
                continue
            if len(text) == 1 and text in _ASCII_DIGITS:
                digits.setdefault(text, []).append(idx)
            elif any(ch.isdigit() for ch in text):
                # '00', ' 5', '2.' ...: the pre-tokenizer never produces them from text, but greedy
                # decoding could; numbers are written one digit at a time so that the rule holds.
                other_numeric.append(idx)
                continue
            key = text.strip().lower()
            if key.isalpha():
                words.setdefault(key, []).append(idx)
        if len(digits) != len(_ASCII_DIGITS):
            raise ValueError("tokenizer lacks single-digit tokens; number constraints need them")
        self.digits = {k: torch.tensor(v, dtype=torch.long) for k, v in digits.items()}
        self.other_numeric = torch.tensor(other_numeric, dtype=torch.long)
        self._words = {k: torch.tensor(v, dtype=torch.long) for k, v in words.items()}
        self.vocab_size = len(tokenizer)

    def word_ids(self, words: Sequence[str]) -> Any:
        import torch

        found = [self._words[w] for w in words if w in self._words]
        return torch.cat(found) if found else torch.zeros(0, dtype=torch.long)


class ClauseConstraints:
    """transformers LogitsProcessor: the per-row rules above, for a left-padded batch of clauses."""

    def __init__(self, tokenizer: Any, rows: Sequence[RowFacts], index: VocabIndex) -> None:
        import torch

        self._tok = tokenizer
        self._rows = tuple(rows)
        self._index = index
        self._static = [torch.cat([index.word_ids(r.banned_words()), index.other_numeric]) for r in rows]
        self._all_digits = torch.cat(list(index.digits.values())) if index.digits else torch.zeros(0)

    def _ban_digits_except(self, scores: Any, row: int, allowed: set[str]) -> None:
        for digit, ids in self._index.digits.items():
            if digit not in allowed:
                scores[row, ids] = float("-inf")

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        for row, facts in enumerate(self._rows):
            if self._static[row].numel():
                scores[row, self._static[row]] = float("-inf")
            tail = self._tok.decode(input_ids[row, -6:].tolist())
            level_tail = _LEVEL_TAIL_RE.search(tail)
            if level_tail:
                self._level_rule(scores, row, facts.level, level_tail.group(1))
                continue
            if tail and (tail[-1].isalpha() or tail[-1] == "-"):
                continue  # inside a word or a unit such as 'mm2': digits here are not numbers
            run = _RUN_RE.search(tail)
            self._ban_digits_except(scores, row, facts.next_digits(run.group(1) if run else ""))
        return scores

    def _level_rule(self, scores: Any, row: int, level: Level, tail: str) -> None:
        """After 'L' only this level's first digit; after 'L4-' or 'L4-L' only its second."""
        first, second = level.value[1], level.value.split("-")[1]
        compact = re.sub(r"\s", "", tail)
        if compact in ("L", "S"):
            allowed = {first} if compact == "L" else ({"1"} if level is Level.L5_S1 else set())
        elif compact.startswith(f"L{first}"):
            allowed = {second[-1]} if compact.endswith("L") or compact.endswith("S") else set()
        else:
            allowed = set()
        self._ban_digits_except(scores, row, allowed)
