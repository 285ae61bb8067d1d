"""The verifier: every level, side, condition, grade and number in a text must match the findings.

Why it is strict rather than clever: it guards what a clinician reads. A false alarm only sends the
rationale to the template writer (always correct); a missed error reaches a clinician. So anything
the verifier cannot tie to a finding is a violation: a grade that is not the finding's, a number
that is no measurement (or threshold) of that level and condition, a foraminal or subarticular
statement without a side, "bilateral" where the sides differ, a level that was not analysed, a
heatmap claim without heatmap input, findings the system does not make (herniation, ...).

How a text is read: sentences -> tokens (levels, conditions, sides, grades, negations, numbers,
uncertainty and heatmap words; measurement names are recognised first so that "foraminal area ratio"
is not read as a condition) -> statements, one per condition mention, each owning the grade/side
words right before it and the words after it up to the next statement; a statement belongs to the
level group before it in its sentence ("L4-L5: severe ...") or to the one right after it
("severe ... at L4-L5").
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cache

from cds.domain import THRESHOLDS, Condition, Finding, Grade, Level, MeasurementName
from cds.explain.findings import RationaleInput
from cds.explain.lexicon import split_words, unknown_words
from cds.explain.wording import display_value

MAX_SENTENCES = 5
MAX_CHARS = 2000


class ViolationKind(StrEnum):
    EMPTY = "empty"
    TOO_LONG = "too_long"
    UNKNOWN_LEVEL = "unknown_level"
    ABSENT_LEVEL = "absent_level"
    NO_SUCH_FINDING = "no_such_finding"
    WRONG_GRADE = "wrong_grade"
    AMBIGUOUS_GRADE = "ambiguous_grade"
    MISSING_SIDE = "missing_side"
    BILATERAL_MISUSE = "bilateral_misuse"
    UNSUPPORTED_NUMBER = "unsupported_number"
    MISSING_FINDING = "missing_finding"
    UNTIED_STATEMENT = "untied_statement"
    UNCERTAINTY_NOT_FLAGGED = "uncertainty_not_flagged"
    UNCERTAINTY_INVENTED = "uncertainty_invented"
    UNSUPPORTED_HEATMAP = "unsupported_heatmap"
    UNSUPPORTED_TERM = "unsupported_term"


@dataclass(frozen=True)
class Violation:
    kind: ViolationKind
    message: str
    excerpt: str = ""
    #: The finding the violation concerns, when there is one (lets a retry restate the facts).
    level: Level | None = None
    condition: Condition | None = None

    def to_json(self) -> dict[str, str]:
        out = {"kind": self.kind.value, "message": self.message, "excerpt": self.excerpt}
        if self.level is not None:
            out["level"] = self.level.value
        if self.condition is not None:
            out["condition"] = self.condition.value
        return out


@dataclass(frozen=True)
class VerificationResult:
    violations: tuple[Violation, ...] = ()
    #: (level, condition) pairs the text states a grade for (correct or not).
    mentioned: frozenset[tuple[Level, Condition]] = field(default_factory=frozenset)

    @property
    def ok(self) -> bool:
        return not self.violations

    def kinds(self) -> set[ViolationKind]:
        return {v.kind for v in self.violations}


# --- lexicon -------------------------------------------------------------------------------------

_GRADE_WORDS = {
    "severe": Grade.SEVERE,
    "severely": Grade.SEVERE,
    "critical": Grade.SEVERE,
    "marked": Grade.SEVERE,
    "markedly": Grade.SEVERE,
    "high-grade": Grade.SEVERE,
    "moderate": Grade.MODERATE,
    "moderately": Grade.MODERATE,
    "mild": Grade.NORMAL_MILD,
    "mildly": Grade.NORMAL_MILD,
    "minimal": Grade.NORMAL_MILD,
    "slight": Grade.NORMAL_MILD,
    "normal": Grade.NORMAL_MILD,
    "unremarkable": Grade.NORMAL_MILD,
}

# Order matters: alternatives are tried left to right at each position (measurements first).
_TOKEN_RE = re.compile(
    r"""
    (?P<meas_dsca>\bdural\s+sac(?:\s+(?:cross-sectional\s+)?area)?|\bDSCA\b|\bcross-sectional\s+area)
  | (?P<meas_ap>\b(?:canal\s+)?(?:AP|antero-?posterior)\s+diameter)
  | (?P<meas_lrd>\blateral\s+recess\s+depth|\brecess\s+depth)
  | (?P<meas_far>\bforaminal\s+(?:cross-sectional\s+)?area(?:\s+ratio)?)
  | (?P<meas_dh>\bdis[ck]\s+height)
  | (?P<level>\b[LS]\d{1,2}\s*(?:[-–—/]|\s)\s*[LS]?\d{1,2}\b)
  | (?P<vertebra>\b(?:[LSTC]\d{1,2})\b)
  | (?P<subart>\bsubarticular(?:\s+zones?)?(?:\s*\(\s*lateral\s+recess(?:es)?\s*\))?
        (?:\s+(?:stenosis|stenoses|narrowing))?
        |\blateral\s+recess(?:es)?(?:\s+(?:stenosis|stenoses|narrowing))?)
  | (?P<foram>\b(?:neural\s+|neuro)?foram(?:inal|ina|en)\b(?:\s+(?:stenosis|stenoses|narrowing))?)
  | (?P<canal>\b(?:(?:central|spinal)\s+)?canal(?:\s+(?:stenosis|stenoses|narrowing))?
        |\b(?:central|spinal)\s+(?:stenosis|stenoses))
  | (?P<generic>\bstenos[ie]s\b|\bnarrowing\b)
  | (?P<bilateral>\bbilateral(?:ly)?\b|\bboth\s+sides\b|\bboth\b)
  | (?P<side>\bleft\b|\bright\b)
  | (?P<grade>\bhigh-grade\b|\b(?:severe|moderate|mild|critical|marked|slight)(?:ly)?\b|\bminimal\b
        |\bnormal\b|\bunremarkable\b)
  | (?P<neg>\bno\b|\bnot\b|\bwithout\b|\bnone\b|\babsent\b|\bnegative\b)
  | (?P<uncertain>\buncertain\w*|\bequivocal\b|\bindeterminate\b|\blow[-\s]confidence\b)
  | (?P<heatmap>\bheat\s*-?maps?\b|\bsaliency\b|\bgrad-?cam\b|\bactivation\s+maps?\b|\battention\s+maps?\b)
  | (?P<number>(?<![\w.])\d+(?:\.\d+)?)
        (?P<unit>\s*(?:mm2|mm²|mm\^2|sq\.?\s*mm|square\s+millimet(?:re|er)s|mm|%|percent|per\s+cent))?
  | (?P<conj>\band\b|\bor\b|&)
  | (?P<comma>[,;:()])
    """,
    re.IGNORECASE | re.VERBOSE,
)

_UNSUPPORTED_TERMS = re.compile(
    r"\b(herniat\w*|protru\w*|extru\w*|bulg\w*|(?:spondylo)?listhes\w*|fractur\w*|tumou?r\w*|neoplas\w*"
    r"|metasta\w*|cysts?\b|osteophyt\w*|hypertroph\w*|ligamentum|flavum|arthropath\w*|degenerat\w*"
    r"|cauda\s+equina|conus|myelopath\w*|radiculopath\w*|surg\w*|decompress\w*|recommend\w*|compress\w*"
    r"|impinge\w*|spondylosis|sclerosis|edema|oedema|infection|abscess"
    # Claims the system cannot make about its own output: that it was checked or is certain.
    r"|verif\w*|confirm\w*|definite\w*|diagnos\w*)",
    re.IGNORECASE,
)

_HEATMAP_RE = re.compile(
    r"\bheat\s*-?maps?\b|\bsaliency\b|\bgrad-?cam\b|\b(?:activation|attention)\s+maps?\b", re.IGNORECASE
)
_OTHER_LEVELS_RE = re.compile(r"\b(other|remaining|rest|all)\b", re.IGNORECASE)
_ATTACH_AFTER_RE = re.compile(
    r"^\s*,?\s*(?:(?:is|are|was|were|seen|noted|present|found|graded|shown)\s+)*"
    r"(?:at|in|on|of|for|involving|affecting)\s+(?:the\s+)?(?:levels?\s+)?$",
    re.IGNORECASE,
)
_SENTENCE_SPLIT_RE = re.compile(r"(?<=[.!?])\s+(?=[A-Z(\"'])|\n+")

_SIDE_CONDITIONS = {
    "foram": (Condition.LEFT_FORAMINAL, Condition.RIGHT_FORAMINAL),
    "subart": (Condition.LEFT_SUBARTICULAR, Condition.RIGHT_SUBARTICULAR),
}

_UNIT_FOR = {
    MeasurementName.DSCA_MM2: "mm2",
    MeasurementName.AP_DIAMETER_MM: "mm",
    MeasurementName.LATERAL_RECESS_DEPTH_MM: "mm",
    MeasurementName.DISC_HEIGHT_MM: "mm",
    MeasurementName.FORAMINAL_AREA_RATIO: "%",
}


@dataclass
class _Tok:
    kind: str
    text: str
    start: int
    end: int
    levels: tuple[Level, ...] = ()
    grade: Grade | None = None
    side: str | None = None
    value: float = 0.0
    decimals: int = 0
    unit: str | None = None


@dataclass
class _Statement:
    cond: _Tok
    pre: list[_Tok]
    post: list[_Tok]
    levels: tuple[Level, ...] = ()
    other_levels: bool = False


# --- tokenising ----------------------------------------------------------------------------------


def _parse_level(text: str) -> Level | None:
    m = re.match(r"([LS])(\d{1,2})\s*(?:[-–—/]|\s)\s*([LS])?(\d{1,2})$", text.strip(), re.IGNORECASE)
    if not m:
        return None
    a_kind, a_num, b_kind, b_num = (
        m.group(1).upper(),
        int(m.group(2)),
        (m.group(3) or "").upper(),
        int(m.group(4)),
    )
    if a_kind != "L":
        return None
    if a_num == 5 and b_num == 1 and b_kind == "S":
        return Level.L5_S1
    if b_kind in ("", "L") and 1 <= a_num <= 4 and b_num == a_num + 1:
        return Level(f"L{a_num}-L{b_num}")
    return None


def _unit(raw: str | None) -> str | None:
    if not raw or not raw.strip():
        return None
    low = raw.strip().lower()
    if low in {"%", "percent", "per cent"} or low.startswith("per"):
        return "%"
    if low.startswith("mm2") or low.startswith("mm²") or low.startswith("mm^") or "sq" in low:
        return "mm2"
    if low.startswith("square"):
        return "mm2"
    return "mm"


def _tokenise(sentence: str) -> tuple[list[_Tok], list[Violation]]:
    toks: list[_Tok] = []
    problems: list[Violation] = []
    for m in _TOKEN_RE.finditer(sentence):
        kind = m.lastgroup or ""
        if kind == "unit":
            kind = "number"
        text = m.group(0)
        tok = _Tok(kind, text, m.start(), m.end())
        if kind == "level":
            level = _parse_level(text)
            if level is None:
                problems.append(
                    Violation(ViolationKind.UNKNOWN_LEVEL, f"'{text}' is not a lumbar disc level", text)
                )
                continue
            tok.levels = (level,)
        elif kind == "vertebra":
            problems.append(
                Violation(ViolationKind.UNKNOWN_LEVEL, f"'{text}' names a vertebra, not a disc level", text)
            )
            continue
        elif kind == "grade":
            tok.grade = _GRADE_WORDS[text.lower()]
        elif kind == "side":
            tok.side = text.lower()
        elif kind == "number":
            num = m.group("number")
            tok.value = float(num)
            tok.decimals = len(num.split(".")[1]) if "." in num else 0
            tok.unit = _unit(m.group("unit"))
            tok.text = text.strip()
        elif kind.startswith("meas_"):
            tok.kind = "meas"
        toks.append(tok)
    return _group_levels(toks, sentence), problems


def _group_levels(toks: list[_Tok], sentence: str) -> list[_Tok]:
    """Merge 'L3-L4, L4-L5 and L5-S1' (and ranges 'L1-L2 to L3-L4') into one level-group token."""
    out: list[_Tok] = []
    for tok in toks:
        if tok.kind == "level" and out:
            prev = out[-1]
            between = sentence[prev.end : tok.start]
            if prev.kind == "conj" and len(out) >= 2 and out[-2].kind == "level":
                group = out[-2]
                if sentence[group.end : prev.start].strip(" ,") == "":
                    out.pop()
                    group.levels = group.levels + tok.levels
                    group.end = tok.end
                    continue
            if prev.kind == "comma" and prev.text == "," and len(out) >= 2 and out[-2].kind == "level":
                group = out[-2]
                out.pop()
                group.levels = group.levels + tok.levels
                group.end = tok.end
                continue
            if prev.kind == "level" and re.fullmatch(r"\s*(?:to|through|-|–|—)\s*", between):
                lo, hi = prev.levels[-1].index, tok.levels[0].index
                span = tuple(list(Level)[i] for i in range(min(lo, hi), max(lo, hi) + 1))
                prev.levels = prev.levels[:-1] + span
                prev.end = tok.end
                continue
            if prev.kind == "level" and between.strip() == "":
                prev.levels = prev.levels + tok.levels
                prev.end = tok.end
                continue
        out.append(tok)
    return out


# --- statements ----------------------------------------------------------------------------------

_PRE_KINDS = {"grade", "side", "bilateral", "neg", "uncertain", "conj"}


def _statements(toks: list[_Tok], sentence: str) -> tuple[list[_Statement], list[_Tok]]:
    """One statement per condition token; also returns tokens owned by no statement."""
    cond_idx = [i for i, t in enumerate(toks) if t.kind in ("canal", "foram", "subart", "generic")]
    owned: set[int] = set()
    stmts: list[_Statement] = []
    pre_start: dict[int, int] = {}
    for ci in cond_idx:
        j = ci
        while j - 1 >= 0 and toks[j - 1].kind in _PRE_KINDS:
            j -= 1
        while j < ci and toks[j].kind == "conj":  # a leading 'and' belongs to no one
            j += 1
        pre_start[ci] = j
    for n, ci in enumerate(cond_idx):
        end = pre_start[cond_idx[n + 1]] if n + 1 < len(cond_idx) else len(toks)
        # "... stenosis at L4-L5": a level group right after the condition is the statement's own.
        attached: int | None = None
        if (
            ci + 1 < len(toks)
            and toks[ci + 1].kind == "level"
            and _ATTACH_AFTER_RE.match(sentence[toks[ci].end : toks[ci + 1].start])
        ):
            attached = ci + 1
        post: list[_Tok] = []
        for k in range(ci + 1, max(end, (attached or 0) + 1)):
            if k == attached:
                owned.add(k)
                continue
            if toks[k].kind == "level":
                break
            post.append(toks[k])
            owned.add(k)
        pre = toks[pre_start[ci] : ci]
        owned.update(range(pre_start[ci], ci + 1))
        st = _Statement(cond=toks[ci], pre=pre, post=post)
        if attached is not None:
            st.levels = toks[attached].levels
        stmts.append(st)
    # Otherwise: the nearest level group before the statement in its sentence, else the next one.
    for st in stmts:
        if st.levels:
            continue
        ci = toks.index(st.cond)
        before = next((t for t in reversed(toks[:ci]) if t.kind == "level"), None)
        after = next((t for t in toks[ci + 1 :] if t.kind == "level"), None)
        if before is not None:
            st.levels = before.levels
        elif after is not None:
            st.levels = after.levels
        else:
            st.other_levels = bool(_OTHER_LEVELS_RE.search(sentence))
    loose = [t for i, t in enumerate(toks) if i not in owned]
    return stmts, loose


@dataclass(frozen=True)
class _Claim:
    sides: tuple[str, ...]  # () for no side; ("left",), ("right",), ("left", "right")
    bilateral_word: bool
    allowed: frozenset[Grade] | None  # None: no grade stated
    ambiguous: bool
    uncertain_word: bool


def _claims_from(run: list[_Tok]) -> list[tuple[set[str], bool, set[Grade], bool, bool]]:
    """Split a run at 'and'/'or' into parts: (sides, bilateral, grades, negated, uncertain)."""
    parts: list[tuple[set[str], bool, set[Grade], bool, bool]] = []
    cur: tuple[set[str], bool, set[Grade], bool, bool] = (set(), False, set(), False, False)
    for i, t in enumerate(run):
        if t.kind == "neg" and i + 1 < len(run) and run[i + 1].kind == "bilateral":
            continue  # "not bilateral" denies the laterality, not a grade
        if t.kind == "conj":
            parts.append(cur)
            cur = (set(), False, set(), False, False)
            continue
        sides, bil, grades, neg, unc = cur
        if t.kind == "side" and t.side:
            sides.add(t.side)
        elif t.kind == "bilateral":
            bil = True
        elif t.kind == "grade" and t.grade:
            grades.add(t.grade)
        elif t.kind == "neg":
            neg = True
        elif t.kind == "uncertain":
            unc = True
        cur = (sides, bil, grades, neg, unc)
    parts.append(cur)
    return parts


def _allowed(grades: set[Grade], neg: bool) -> tuple[frozenset[Grade] | None, bool]:
    if neg:
        return (frozenset(set(Grade) - grades) if grades else frozenset({Grade.NORMAL_MILD})), False
    if not grades:
        return None, False
    return frozenset(grades), len(grades) > 1


def _claims(st: _Statement) -> list[_Claim]:
    pre_parts = _claims_from(st.pre)
    post_parts = _claims_from(st.post)
    uncertain = any(p[4] for p in pre_parts + post_parts)
    pre_sided = [p for p in pre_parts if p[0] or p[1]]
    post_sided = [p for p in post_parts if p[0] or p[1]]
    # Per-side grades ("moderate left and severe right ..."): each sided part carries its own grade.
    for per_side in (pre_sided, [] if pre_sided else post_sided):
        if len(per_side) > 1 and all(p[2] or p[3] for p in per_side):
            out = []
            for p_sides, p_bil, p_grades, p_neg, _ in per_side:
                p_allowed, p_amb = _allowed(p_grades, p_neg)
                p_both = ("left", "right") if p_bil else tuple(sorted(p_sides))
                out.append(_Claim(p_both, p_bil, p_allowed, p_amb, uncertain))
            return out
    sided = pre_sided or post_sided
    sides: set[str] = set().union(*(p[0] for p in sided)) if sided else set()
    bil = any(p[1] for p in sided)
    grades: set[Grade] = set().union(*(p[2] for p in pre_parts + post_parts))
    neg = any(p[3] for p in pre_parts + post_parts)
    allowed, amb = _allowed(grades, neg)
    both = ("left", "right") if bil else tuple(sorted(sides))
    return [_Claim(both, bil, allowed, amb, uncertain)]


# --- checking ------------------------------------------------------------------------------------


def _number_ok(tok: _Tok, findings: Iterable[Finding], conditions: Iterable[Condition]) -> bool:
    tol = 0.5 * 10 ** (-tok.decimals) + 1e-9
    for f in findings:
        for name, value in f.measurements.items():
            unit = _UNIT_FOR[name]
            if tok.unit is not None and tok.unit != unit:
                continue
            candidates = [display_value(name, value)]
            if tok.unit is None and name is MeasurementName.FORAMINAL_AREA_RATIO:
                candidates.append(value)
            if any(abs(tok.value - c) <= tol for c in candidates):
                return True
    for cond in conditions:
        th = THRESHOLDS[cond]
        unit = _UNIT_FOR[th.measurement]
        if tok.unit is not None and tok.unit != unit:
            continue
        for cut in (th.moderate_below, th.severe_below):
            candidates = [display_value(th.measurement, cut)]
            if tok.unit is None and th.measurement is MeasurementName.FORAMINAL_AREA_RATIO:
                candidates.append(cut)
            if any(abs(tok.value - c) < 1e-9 for c in candidates):
                return True
    return False


_RANGE_RE = re.compile(
    r"(?<![\d.])(\d+(?:\.\d+)?)\s*(mm2|mm|%)?\s*to\s*<\s*(\d+(?:\.\d+)?)\s*(mm2|mm|%)?", re.IGNORECASE
)
_AT_LEAST_RE = re.compile(r"(?:>=|≥)\s*(\d+(?:\.\d+)?)\s*(mm2|mm|%)?", re.IGNORECASE)


@cache
def _ranges() -> tuple[frozenset[tuple[float, float, str]], frozenset[tuple[float, str]]]:
    """The grading table's moderate ranges (low, high, unit) and normal/mild lower bounds (computed
    once: every sentence of every text is checked against them)."""
    moderate: set[tuple[float, float, str]] = set()
    normal: set[tuple[float, str]] = set()
    for th in THRESHOLDS.values():
        unit = _UNIT_FOR[th.measurement]
        low, high = (
            display_value(th.measurement, th.severe_below),
            display_value(th.measurement, th.moderate_below),
        )
        moderate.add((round(low, 6), round(high, 6), unit))
        normal.add((round(high, 6), unit))
    return frozenset(moderate), frozenset(normal)


def _check_ranges(masked: str, sentence: str) -> list[Violation]:
    """A stated range must be one of the grading table's: 'A to < B' a moderate range, '>= B' a
    normal/mild bound. Each number alone may be a cut-off of the condition, yet '3 mm to < 3 mm'
    or '>= 35 %' states a grade boundary that does not exist."""
    moderate, normal = _ranges()
    v: list[Violation] = []
    for m in _RANGE_RE.finditer(masked):
        low, high = round(float(m.group(1)), 6), round(float(m.group(3)), 6)
        units = {u.lower() for u in (m.group(2), m.group(4)) if u}
        if not any(low == lo and high == hi and (not units or units == {unit}) for lo, hi, unit in moderate):
            v.append(
                Violation(ViolationKind.UNSUPPORTED_NUMBER, f"'{m.group(0)}' is no grade's range", sentence)
            )
    for m in _AT_LEAST_RE.finditer(masked):
        bound, unit_text = round(float(m.group(1)), 6), (m.group(2) or "").lower()
        if not any(bound == b and unit_text in ("", unit) for b, unit in normal):
            v.append(
                Violation(ViolationKind.UNSUPPORTED_NUMBER, f"'{m.group(0)}' is no grade's bound", sentence)
            )
    return v


def _split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_SPLIT_RE.split(text.strip()) if s.strip()]


def _conditions_for(st: _Statement, claim: _Claim) -> tuple[Condition, ...]:
    kind = st.cond.kind
    if kind == "canal":
        return (Condition.SPINAL_CANAL,)
    if kind in _SIDE_CONDITIONS:
        left, right = _SIDE_CONDITIONS[kind]
        return tuple(c for c, s in ((left, "left"), (right, "right")) if s in claim.sides)
    return tuple(Condition)


def verify(text: str, inp: RationaleInput) -> VerificationResult:
    """Check `text` against the findings; an empty violation tuple means it may be shown."""
    v: list[Violation] = []
    mentioned: set[tuple[Level, Condition]] = set()
    flagged: set[tuple[Level, Condition]] = set()
    sentences = _split_sentences(text)
    if not sentences:
        return VerificationResult((Violation(ViolationKind.EMPTY, "no text"),), frozenset())
    if len(sentences) > MAX_SENTENCES or len(text) > MAX_CHARS:
        v.append(
            Violation(
                ViolationKind.TOO_LONG,
                f"{len(sentences)} sentences / {len(text)} characters"
                f" (at most {MAX_SENTENCES} / {MAX_CHARS})",
            )
        )
    present_levels = set(inp.levels)
    regions = [h.region for h in inp.heatmaps]
    for sentence in sentences:
        v.extend(_check_sentence(sentence, inp, present_levels, regions, mentioned, flagged))
    for f in inp.positives:
        if (f.level, f.condition) not in mentioned:
            v.append(
                Violation(
                    ViolationKind.MISSING_FINDING,
                    f"{f.level.value} {f.condition.display} ({f.grade.display}) is not stated with its grade",
                    level=f.level,
                    condition=f.condition,
                )
            )
    already = {(x.level, x.condition) for x in v if x.kind is ViolationKind.UNCERTAINTY_NOT_FLAGGED}
    for f in inp.findings:
        key = (f.level, f.condition)
        if f.uncertain and key not in flagged and key not in already:
            v.append(
                Violation(
                    ViolationKind.UNCERTAINTY_NOT_FLAGGED,
                    f"{f.level.value} {f.condition.display} is flagged uncertain; the text must say so",
                    level=f.level,
                    condition=f.condition,
                )
            )
    return VerificationResult(tuple(v), frozenset(mentioned))


def _mask_regions(sentence: str, regions: list[str]) -> tuple[str, list[str]]:
    found: list[str] = []
    for region in sorted(regions, key=len, reverse=True):
        pattern = re.compile(re.escape(region), re.IGNORECASE)
        if pattern.search(sentence):
            found.append(region)
            sentence = pattern.sub(lambda m: " " * len(m.group(0)), sentence)
    return sentence, found


def _check_sentence(
    sentence: str,
    inp: RationaleInput,
    present_levels: set[Level],
    regions: list[str],
    mentioned: set[tuple[Level, Condition]],
    flagged: set[tuple[Level, Condition]],
) -> list[Violation]:
    v: list[Violation] = []
    # Region descriptions are only read as such in a sentence about the heatmap; elsewhere their
    # words (e.g. 'lateral recess') are ordinary text.
    is_heat = bool(_HEATMAP_RE.search(sentence))
    masked, found_regions = _mask_regions(sentence, regions) if is_heat else (sentence, [])
    for m in _UNSUPPORTED_TERMS.finditer(masked):
        v.append(
            Violation(
                ViolationKind.UNSUPPORTED_TERM, f"'{m.group(0)}' is not a finding of this analysis", sentence
            )
        )
    flagged_terms = {w.lower() for m in _UNSUPPORTED_TERMS.finditer(masked) for w in split_words(m.group(0))}
    for word in unknown_words(masked):
        if word not in flagged_terms:
            v.append(
                Violation(
                    ViolationKind.UNSUPPORTED_TERM, f"'{word}' is outside the rationale vocabulary", sentence
                )
            )
    toks, problems = _tokenise(masked)
    v.extend(p for p in problems)
    v.extend(_check_ranges(masked, sentence))
    for t in toks:
        for lv in t.levels:
            if lv not in present_levels:
                v.append(Violation(ViolationKind.ABSENT_LEVEL, f"{lv.value} was not analysed", sentence))
    stmts, loose = _statements(toks, masked)
    stated: list[tuple[Level, Condition]] = []
    for st in stmts:
        v.extend(_check_statement(st, sentence, inp, present_levels, mentioned, stated, flagged))
    v.extend(_check_loose(loose, sentence, toks, inp))
    if is_heat:
        if not inp.heatmaps:
            v.append(
                Violation(ViolationKind.UNSUPPORTED_HEATMAP, "no heatmap information was given", sentence)
            )
        else:
            noted = {(h.level, h.condition) for h in inp.heatmaps}
            if not found_regions:
                v.append(
                    Violation(
                        ViolationKind.UNSUPPORTED_HEATMAP, "heatmap sentence names no given region", sentence
                    )
                )
            for key in stated:
                if key not in noted:
                    v.append(
                        Violation(
                            ViolationKind.UNSUPPORTED_HEATMAP,
                            f"no heatmap information for {key[0].value} {key[1].display}",
                            sentence,
                        )
                    )
            for region in found_regions:
                owners = {(h.level, h.condition) for h in inp.heatmaps if h.region.lower() == region.lower()}
                if not owners & set(stated):
                    v.append(
                        Violation(
                            ViolationKind.UNSUPPORTED_HEATMAP,
                            f"region '{region}' is attributed to a finding it does not belong to",
                            sentence,
                        )
                    )
    return v


def _check_statement(
    st: _Statement,
    sentence: str,
    inp: RationaleInput,
    present_levels: set[Level],
    mentioned: set[tuple[Level, Condition]],
    stated: list[tuple[Level, Condition]],
    flagged: set[tuple[Level, Condition]],
) -> list[Violation]:
    v: list[Violation] = []
    claims = _claims(st)
    numbers = [t for t in st.post + st.pre if t.kind == "number"]
    any_grade = any(c.allowed is not None for c in claims)
    if not st.levels:
        if (
            st.other_levels
            and all(c.allowed == frozenset({Grade.NORMAL_MILD}) for c in claims)
            and not numbers
        ):
            return v  # "no stenosis at the other levels": true once every positive finding is mentioned
        if any_grade or numbers or any(c.sides for c in claims):
            v.append(
                Violation(
                    ViolationKind.UNTIED_STATEMENT, f"'{st.cond.text}' is not tied to a level", sentence
                )
            )
        return v
    levels = [lv for lv in st.levels if lv in present_levels]
    for claim in claims:
        conditions = _conditions_for(st, claim)
        if st.cond.kind in _SIDE_CONDITIONS and not claim.sides:
            if claim.allowed is not None:
                v.append(
                    Violation(
                        ViolationKind.MISSING_SIDE, f"'{st.cond.text}' without left/right/bilateral", sentence
                    )
                )
            continue
        if (
            st.cond.kind == "generic"
            and claim.allowed is not None
            and claim.allowed != frozenset({Grade.NORMAL_MILD})
        ):
            v.append(
                Violation(
                    ViolationKind.AMBIGUOUS_GRADE, f"'{st.cond.text}' does not name the condition", sentence
                )
            )
            continue
        if claim.ambiguous:
            v.append(
                Violation(
                    ViolationKind.AMBIGUOUS_GRADE,
                    f"more than one grade stated for {st.cond.text}: "
                    + ", ".join(sorted(g.display for g in (claim.allowed or ()))),
                    sentence,
                )
            )
        for lv in levels:
            level_findings = [inp.finding(lv, c) for c in conditions]
            found = [f for f in level_findings if f is not None]
            if st.cond.kind != "generic":
                for c, f in zip(conditions, level_findings, strict=True):
                    if f is None:
                        v.append(
                            Violation(
                                ViolationKind.NO_SUCH_FINDING,
                                f"{lv.value} {c.display} was not analysed",
                                sentence,
                                level=lv,
                                condition=c,
                            )
                        )
            if claim.bilateral_word and len(found) == 2 and found[0].grade is not found[1].grade:
                v.append(
                    Violation(
                        ViolationKind.BILATERAL_MISUSE,
                        f"{lv.value}: left is {found[0].grade.display}, right is {found[1].grade.display}",
                        sentence,
                        level=lv,
                        condition=found[0].condition,
                    )
                )
            for f in found:
                if st.cond.kind != "generic":
                    stated.append((f.level, f.condition))
                if claim.allowed is None:
                    continue
                if f.grade not in claim.allowed:
                    v.append(
                        Violation(
                            ViolationKind.WRONG_GRADE,
                            f"{lv.value} {f.condition.display} is {f.grade.display}, the text says "
                            + "/".join(sorted(g.display for g in claim.allowed))
                            + (" (negated)" if len(claim.allowed) > 1 and not claim.ambiguous else ""),
                            sentence,
                            level=f.level,
                            condition=f.condition,
                        )
                    )
                elif claim.allowed == frozenset({f.grade}) and not claim.ambiguous:
                    mentioned.add((f.level, f.condition))
                if st.cond.kind == "generic":
                    continue
                if f.uncertain and claim.uncertain_word:
                    flagged.add((f.level, f.condition))
                if f.uncertain and not claim.uncertain_word:
                    v.append(
                        Violation(
                            ViolationKind.UNCERTAINTY_NOT_FLAGGED,
                            f"{lv.value} {f.condition.display} is flagged uncertain",
                            sentence,
                            level=f.level,
                            condition=f.condition,
                        )
                    )
                if claim.uncertain_word and not f.uncertain:
                    v.append(
                        Violation(
                            ViolationKind.UNCERTAINTY_INVENTED,
                            f"{lv.value} {f.condition.display} is not flagged uncertain",
                            sentence,
                            level=f.level,
                            condition=f.condition,
                        )
                    )
        if (
            claim.uncertain_word
            and claim.allowed is None
            and not any(
                (f := inp.finding(lv, c)) is not None and f.uncertain for lv in levels for c in conditions
            )
        ):
            v.append(
                Violation(ViolationKind.UNCERTAINTY_INVENTED, "uncertainty claimed without basis", sentence)
            )
    all_conds = tuple(c for claim in claims for c in _conditions_for(st, claim)) or (
        (Condition.SPINAL_CANAL,) if st.cond.kind == "canal" else ()
    )
    pool = [f for lv in levels for c in all_conds if (f := inp.finding(lv, c)) is not None]
    for num in numbers:
        if not _number_ok(num, pool, all_conds):
            v.append(
                Violation(
                    ViolationKind.UNSUPPORTED_NUMBER,
                    f"'{num.text}' is no measurement or threshold of "
                    + ", ".join(lv.value for lv in st.levels)
                    + f" {st.cond.text}",
                    sentence,
                )
            )
    return v


def _check_loose(loose: list[_Tok], sentence: str, toks: list[_Tok], inp: RationaleInput) -> list[Violation]:
    """Tokens outside every statement: numbers must still be a measurement of a named level."""
    v: list[Violation] = []
    for t in loose:
        if t.kind == "number":
            before = next((x for x in reversed(toks[: toks.index(t)]) if x.kind == "level"), None)
            after = next((x for x in toks[toks.index(t) :] if x.kind == "level"), None)
            group = before or after
            pool = [f for lv in (group.levels if group else ()) for f in inp.at_level(lv)]
            conds = tuple(Condition) if group is None else tuple({f.condition for f in pool})
            ok = _number_ok(t, pool if group is not None else (), conds)
            if not ok:
                v.append(
                    Violation(
                        ViolationKind.UNSUPPORTED_NUMBER,
                        f"'{t.text}' is no measurement or threshold",
                        sentence,
                    )
                )
        elif t.kind == "grade" and t.grade is not None:
            group = next((x for x in reversed(toks[: toks.index(t)]) if x.kind == "level"), None)
            if group is None:
                group = next((x for x in toks[toks.index(t) :] if x.kind == "level"), None)
            # "..., the left side is severe": a side word in the same clause narrows the candidates.
            i = toks.index(t)
            lo = next((k for k in range(i - 1, -1, -1) if toks[k].kind in ("comma", "level")), -1)
            hi = next((k for k in range(i + 1, len(toks)) if toks[k].kind in ("comma", "level")), len(toks))
            sides = {x.side for x in toks[lo + 1 : hi] if x.kind == "side"}
            grades = {
                f.grade
                for lv in (group.levels if group else ())
                for f in inp.at_level(lv)
                if not sides or (f.condition.side is not None and f.condition.side.value in sides)
            }
            if group is None or t.grade not in grades:
                v.append(
                    Violation(
                        ViolationKind.WRONG_GRADE,
                        f"'{t.text}' is not tied to a finding with that grade",
                        sentence,
                    )
                )
        elif t.kind in ("side", "bilateral"):
            pass  # a side word alone claims nothing checkable; statements carry their own sides
    return v
