"""Constrained decoding for per-finding clauses: each row may only write its own finding's facts.

Why: a rejected draft costs a retry (another full generation) or ends in the template; masking at
decoding time makes the commonest errors of small models impossible instead of merely detectable.
Per row (one row = one finding, or a bilateral left/right pair; see cds.explain.clauses) the
processor

* bans, for the whole clause, the words of every other grade, "bilateral" unless the row is a
  bilateral pair, "uncertain" unless the finding is flagged uncertain, the other side's word, and
  the distinctive words of the other conditions;
* lets a number start or continue only as a prefix of a number that the finding gives (its
  measurements as displayed, and its condition's cut-offs);
* lets a level name ('L4-L5') be only that row's level;
* refuses to end the sentence (full stop before a space, line break, end of turn) until the row
  has stated its grade, its condition, its side or "bilateral", and "uncertain" where flagged;
* lets a word start only with a token that begins a word of the rationale vocabulary.

It never writes a word itself: the model words the finding, and the verifier still decides what is
shown. The number rule needs numbers written one digit per token (as Qwen/Llama pre-tokenizers split
them): every other vocabulary entry containing a digit is banned outright, and a vocabulary without
the ten single digits is refused.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from cds.domain import THRESHOLDS, Condition, Finding, Grade, Level, Side
from cds.explain.wording import format_number

#: Words (lower case, no leading space) that state a grade, by grade.
GRADE_WORDS: dict[Grade, tuple[str, ...]] = {
    Grade.SEVERE: ("severe", "severely", "sever", "critical"),
    Grade.MODERATE: ("moderate", "moderately", "moder", "moderat"),
    Grade.NORMAL_MILD: ("mild", "mildly", "normal"),
}
BILATERAL_WORDS = ("bilateral", "bilaterally", "bilater", "bilat", "both")
UNCERTAIN_WORDS = ("uncertain", "uncertainty", "uncert", "flagged", "flag")
SIDE_WORDS = {Side.LEFT: ("left",), Side.RIGHT: ("right",)}
#: Never written by any row: claims the system cannot make about its output (a 0.5B model liked to
#: add "verified"), and common findings it does not make (cds.explain.verify rejects both).
UNSUPPORTED_WORDS = (
    "verified",
    "verify",
    "confirmed",
    "confirm",
    "definite",
    "definitely",
    "diagnosis",
    "diagnosed",
    "hern",
    "herniation",
    "compression",
    "compressed",
    "bulge",
    "bulging",
    "surgery",
    "surgical",
)


class Family(StrEnum):
    """Condition families, whose distinctive words a row about another family may not use."""

    CANAL = "canal"
    FORAMINAL = "foraminal"
    SUBARTICULAR = "subarticular"

    @classmethod
    def of(cls, condition: Condition) -> Family:
        if condition is Condition.SPINAL_CANAL:
            return cls.CANAL
        if condition in (Condition.LEFT_FORAMINAL, Condition.RIGHT_FORAMINAL):
            return cls.FORAMINAL
        return cls.SUBARTICULAR


#: Whole tokens (lower case, no leading space) that only a row of that family may write; first
#: pieces of longer words where the tokenizer splits them ('foram'+'inal', 'sub'+'art'+'icular').
FAMILY_WORDS: dict[Family, tuple[str, ...]] = {
    Family.CANAL: ("canal", "central", "sac", "thecal"),
    Family.FORAMINAL: ("foram", "foraminal", "foramen", "foramina", "neural"),
    Family.SUBARTICULAR: ("subarticular", "sub", "recess"),
}
#: What a row must have written (as a regular expression on its text) before it may end, per family.
FAMILY_REQUIRED: dict[Family, str] = {
    Family.CANAL: r"\bcanal\b",
    Family.FORAMINAL: r"\bforamin",
    Family.SUBARTICULAR: r"\bsubarticular\b|\blateral recess\b",
}
_GRADE_REQUIRED: dict[Grade, str] = {
    Grade.SEVERE: r"\bsevere\b",
    Grade.MODERATE: r"\bmoderate\b",
    Grade.NORMAL_MILD: r"\bnormal\b|\bmild\b",
}

_ASCII_DIGITS = frozenset("0123456789")
# A number starts after a character that is neither a letter nor a digit ('mm2', 'L4' are not numbers).
_RUN_RE = re.compile(r"(?<![A-Za-z0-9.])(\d+(?:\.\d*)?)$")
_SENTENCE_END_RE = re.compile(r"\.\s")
_LEVEL_TAIL_RE = re.compile(r"(?<![A-Za-z])(L|S|L[1-5]\s*[-–/]\s*L?|L[1-5]\s*[-–/]\s*S?)$")


@dataclass(frozen=True)
class RowFacts:
    """What one clause may state (level, grades, numbers, sides, families, bilateral, uncertain)
    and what it must state before it ends (`required`, regular expressions on its text)."""

    level: Level
    grades: frozenset[Grade]
    numbers: frozenset[str]
    bilateral: bool
    uncertain: bool
    sides: frozenset[Side] = frozenset(Side)
    families: frozenset[Family] = frozenset(Family)
    required: tuple[str, ...] = ()
    #: The text the row's assistant turn starts with (part of the prompt, not generated).
    prefill: str = ""

    @classmethod
    def for_findings(cls, level: Level, findings: Sequence[Finding]) -> RowFacts:
        """The facts of one row: a single finding, or the two findings of a bilateral pair."""
        numbers: set[str] = set()
        for f in findings:
            th = THRESHOLDS[f.condition]
            for name, value in f.measurements.items():
                cutoffs = (th.moderate_below, th.severe_below) if name is th.measurement else ()
                numbers.add(format_number(name, value, cutoffs))
            for cut in (th.moderate_below, th.severe_below):
                numbers.add(format_number(th.measurement, cut))
        grades = frozenset(f.grade for f in findings)
        sides = frozenset(side for f in findings if (side := f.condition.side) is not None)
        families = frozenset(Family.of(f.condition) for f in findings)
        bilateral = len(findings) == 2
        uncertain = any(f.uncertain for f in findings)
        required = [_GRADE_REQUIRED[g] for g in sorted(grades)]
        required += [FAMILY_REQUIRED[fam] for fam in sorted(families)]
        if bilateral:
            required.append(r"\bbilateral\b")
        elif sides:
            required.append(r"\b" + next(iter(sides)).value + r"\b")
        if uncertain:
            required.append(r"\buncertain\b")
        # The clause opens with its moderate/severe grade and its side ('L4-L5: severe left ...'):
        # said first, neither can be read as a neighbouring clause's, as they were when the model put
        # the grade last ('..., marked as moderate') or named 'lateral recess stenosis' without a
        # side. A normal/mild row's grade is worded by the model ('... graded normal/mild').
        (grade,) = grades if len(grades) == 1 else (None,)
        prefill = f"{level.value}:"
        if grade is not None and grade.present:
            prefill += f" {grade.display}"
        if bilateral:
            prefill += " bilateral"
        elif sides:
            prefill += f" {next(iter(sides)).value}"
        return cls(
            level, grades, frozenset(numbers), bilateral, uncertain, sides, families, tuple(required), prefill
        )

    def unmet(self, generated: str) -> bool:
        """Whether the row (its pre-filled text plus `generated`) still lacks something it must state."""
        low = (self.prefill + generated).lower()
        return any(re.search(rx, low) is None for rx in self.required)

    def banned_words(self) -> tuple[str, ...]:
        words: list[str] = []
        stated = any(g.present for g in self.grades)  # the pre-filled text already gives the grade
        for grade, forms in GRADE_WORDS.items():
            if stated or grade not in self.grades:
                words.extend(forms)
        if stated:
            # The model repeated it ('..., marked as moderate'), which reads as a second grade.
            words.extend(("marked", "graded", "grade"))
        if not self.bilateral:
            words.extend(BILATERAL_WORDS)
        if not self.uncertain:
            words.extend(UNCERTAIN_WORDS)
        for side, forms in SIDE_WORDS.items():
            if side not in self.sides:
                words.extend(forms)
        for family, forms in FAMILY_WORDS.items():
            if family not in self.families:
                words.extend(forms)
        words.extend(UNSUPPORTED_WORDS)
        if self.grades != {Grade.MODERATE}:
            # Only the moderate range reads 'A to < B'; severe rows wrote '(3 mm to < 3 mm)'.
            words.append("to")
        return tuple(words)

    def next_digits(self, run: str) -> set[str]:
        """Digits that may follow `run` ('' at the start of a number) so that it stays a given number."""
        return {
            n[len(run)]
            for n in self.numbers
            if n.startswith(run) and len(n) > len(run) and n[len(run)].isdigit()
        }


def _lexicon_prefixes() -> frozenset[str]:
    """Every prefix of every word of the rationale vocabulary (lower case)."""
    from cds.explain.lexicon import words

    return frozenset(w[:i] for w in words() for i in range(1, len(w) + 1))


class VocabIndex:
    """Token ids of the vocabulary by what they spell, built once per tokenizer (~1-2 s for 150k)."""

    def __init__(self, tokenizer: Any) -> None:
        import torch

        digits: dict[str, list[int]] = {}
        words: dict[str, list[int]] = {}
        other_numeric: list[int] = []
        enders: list[int] = list(getattr(tokenizer, "all_special_ids", ()))
        prefixes = _lexicon_prefixes()
        off_lexicon: list[int] = []
        space_led: list[int] = []
        dots: list[int] = []
        for piece, idx in tokenizer.get_vocab().items():
            text = tokenizer.convert_tokens_to_string([piece])
            if not text:
                continue
            if "\n" in text or _SENTENCE_END_RE.search(text):
                enders.append(idx)
            if text[0].isspace():
                space_led.append(idx)
                letters = text.strip()
                if letters.isalpha() and letters.isascii() and letters.lower() not in prefixes:
                    off_lexicon.append(idx)
            if "." in text:
                dots.append(idx)
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
        #: Tokens that end a clause: special tokens (end of turn), line breaks, '. ' inside a token.
        self.enders = torch.tensor(sorted(set(enders)), dtype=torch.long)
        #: Tokens starting with white space: after a '.', they would end the sentence.
        self.space_led = torch.tensor(space_led, dtype=torch.long)
        #: Word-start tokens that begin no word of the rationale vocabulary (cds.explain.lexicon):
        #: 'unclear', 'significant', 'benign' ... can then never be started; the verifier still
        #: checks whole words (a continuation could still leave the vocabulary).
        self.off_lexicon = torch.tensor(off_lexicon, dtype=torch.long)
        #: Tokens containing a '.': while a row may not end, only a decimal point may be written.
        self.dots = torch.tensor(dots, dtype=torch.long)
        self._words = {k: torch.tensor(v, dtype=torch.long) for k, v in words.items()}
        self.vocab_size = len(tokenizer)

    def word_ids(self, words: Sequence[str]) -> Any:
        import torch

        found = [self._words[w] for w in words if w in self._words]
        return torch.cat(found) if found else torch.zeros(0, dtype=torch.long)


class ClauseConstraints:
    """transformers LogitsProcessor: the per-row rules above, for a left-padded batch of clauses."""

    def __init__(
        self, tokenizer: Any, rows: Sequence[RowFacts], index: VocabIndex, prompt_len: int | None = None
    ) -> None:
        """`prompt_len`: where the generated text starts (the rows' pre-filled text belongs to the
        prompt); None turns the rule on required statements off."""
        import torch

        self._tok = tokenizer
        self._rows = tuple(rows)
        self._prompt_len = prompt_len
        self._index = index
        self._static = [
            torch.cat([index.word_ids(r.banned_words()), index.other_numeric, index.off_lexicon])
            for r in rows
        ]
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
            if self._prompt_len is not None and facts.required:
                self._hold_the_end(scores, row, facts, input_ids[row, self._prompt_len :], tail)
            level_tail = _LEVEL_TAIL_RE.search(tail)
            if level_tail:
                self._level_rule(scores, row, facts.level, level_tail.group(1))
                continue
            if tail and (tail[-1].isalpha() or tail[-1] == "-"):
                continue  # inside a word or a unit such as 'mm2': digits here are not numbers
            run = _RUN_RE.search(tail)
            self._ban_digits_except(scores, row, facts.next_digits(run.group(1) if run else ""))
        return scores

    def _hold_the_end(self, scores: Any, row: int, facts: RowFacts, generated: Any, tail: str) -> None:
        """No end of sentence while the row still lacks a required statement: no end token, no '.'
        except right after a number's digits (a decimal point, which nothing starting with a space
        may then follow)."""
        if not facts.unmet(self._tok.decode(generated.tolist(), skip_special_tokens=True)):
            return
        scores[row, self._index.enders] = float("-inf")
        if _RUN_RE.search(tail) is None:  # not inside a number: a '.' could only end the sentence
            scores[row, self._index.dots] = float("-inf")
        elif tail.endswith("."):
            scores[row, self._index.space_led] = float("-inf")

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
