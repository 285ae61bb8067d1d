"""The words a rationale may use: the findings' own vocabulary plus plain connecting words.

Why a closed vocabulary: the verifier ties levels, sides, conditions, grades and numbers to the
findings, but a model can also add free claims that contain none of those ("found to be a benign
condition", "a narrowing of the lateral branch of the spinal cord": SmolLM2-135M wrote both, and
both passed the entity checks). Such a sentence is an unsupported statement all the same. Rather
than list every claim a model might invent, the verifier accepts only words from this lexicon;
anything else sends the draft to a retry or the template. The lexicon is built from the domain's
own wording (conditions, measurements, grades, the template's sentences) so that the template
always passes, plus a short list of neutral function words; it deliberately has no words for
causes, diagnoses, certainty, advice or anatomy beyond the graded structures. Heatmap region
descriptions are masked before this check (they are input, validated where they enter).
"""

from __future__ import annotations

import re
from functools import cache

from cds.domain import Condition, Grade, MeasurementName

#: Neutral words for stating findings (articles, prepositions, conjunctions, copulas, comparison),
#: then the words cds.explain.verify reads as a measurement, condition or heatmap. Deliberately
#: absent: grade words other than the grading table's ('marked', 'critical', 'high', 'minimal'),
#: and negations other than 'no' and 'not' (the verifier reads 'not bilateral'; 'not a high range',
#: which a model wrote, fails on 'high').
_FUNCTION_WORDS_TEXT = """
a an the and or but with of at in on for to from by as than then also only both either
each every all other remaining rest is are was were be been being has have had it its this that these
those which where while whereas there here not
left right side sides bilateral bilaterally
level levels disc discs lumbar spine spinal
range ranges below above under over less more least most at within between up
measure measures measured measuring measurement measurements value values area ratio depth diameter
height
grade grades graded grading grading table threshold thresholds cut off cutoff cutoffs
finding findings stated shown seen noted present absent given
flagged flag uncertain uncertainty
heatmap heatmaps highlight highlights highlighted centre centres centred center centers centered
focus focuses focused region regions
narrowing narrowed narrow stenosis stenoses stenotic
mm mm2 percent
severe severely moderate moderately mild mildly normal
no
dural sac cross sectional dsca ap antero anteroposterior posterior recess recesses foraminal foramina
foramen neuroforaminal neural subarticular zone zones canal central spinal stenoses saliency grad
cam activation attention map maps square millimetre millimetres millimeter millimeters sq cent
"""


@cache
def words() -> frozenset[str]:
    """Every word (lower case) a rationale may contain; built on first use, then cached."""
    from cds.explain.template import BASIS_SENTENCE, NO_FINDINGS_SENTENCE
    from cds.explain.wording import condition_phrase

    vocabulary: set[str] = set(_FUNCTION_WORDS_TEXT.split())
    # The template's own fixed words (cds.explain.template; tests/explain check it always passes).
    phrases: list[str] = [BASIS_SENTENCE, NO_FINDINGS_SENTENCE, "no moderate or severe stenosis"]
    phrases += [c.display for c in Condition]
    phrases += [
        condition_phrase(c, bilateral=True) for c in (Condition.LEFT_FORAMINAL, Condition.LEFT_SUBARTICULAR)
    ]
    phrases += [m.display for m in MeasurementName]
    phrases += [g.display for g in Grade]
    for phrase in phrases:
        vocabulary.update(split_words(phrase))
    return frozenset(vocabulary)


_WORD_RE = re.compile(r"[A-Za-z]+")
#: Level names ('L4-L5', 'L5-S1', 'L4') and units with digits are read elsewhere, not as words.
_LEVEL_TOKEN_RE = re.compile(r"\b[LS][1-5]\b", re.IGNORECASE)


def split_words(text: str) -> list[str]:
    """The words of `text` (letters only, lower case), without level names such as L4 or S1."""
    return [w.lower() for w in _WORD_RE.findall(_LEVEL_TOKEN_RE.sub(" ", text))]


def unknown_words(text: str) -> list[str]:
    """Words of `text` outside the lexicon, in order, each once."""
    known = words()
    seen: dict[str, None] = {}
    for w in split_words(text):
        if w not in known:
            seen.setdefault(w, None)
    return list(seen)
