"""The verifier against adversarial texts: each wrong statement must be caught and named."""

from __future__ import annotations

import pytest

from cds.explain.findings import RationaleInput
from cds.explain.verify import ViolationKind as K
from cds.explain.verify import verify

# A correct text for the `sample` fixture; every adversarial text below is a small edit of it.
FORAMINA = (
    "moderate left neural foraminal narrowing, foraminal area ratio 45 % (35 % to < 60 %); "
    "severe right neural foraminal narrowing, foraminal area ratio 31 % (< 35 %)"
)
GOOD = (
    "L3-L4: moderate central canal stenosis, dural sac area 88 mm2 (75 mm2 to < 100 mm2), "
    "flagged as uncertain. L4-L5: severe central canal stenosis, dural sac area 62 mm2 (< 75 mm2); "
    + FORAMINA
    + ". L5-S1: no moderate or severe stenosis"
    + "; left neural foraminal narrowing graded normal/mild, flagged as uncertain."
)


def kinds(text: str, inp: RationaleInput) -> set[K]:
    return verify(text, inp).kinds()


def test_good_text_passes(sample: RationaleInput) -> None:
    result = verify(GOOD, sample)
    assert result.ok, result.violations
    assert {(f.level, f.condition) for f in sample.positives} <= result.mentioned


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # wrong level: the severe canal stenosis moved to L5-S1
        (GOOD.replace("L4-L5: severe", "L5-S1: severe"), {K.WRONG_GRADE, K.MISSING_FINDING}),
        # a level that was not analysed at all
        (GOOD + " L2-L3: no stenosis.", {K.ABSENT_LEVEL}),
        # impossible level names and bare vertebrae
        (GOOD.replace("L5-S1: no", "L6-S1: no"), {K.UNKNOWN_LEVEL}),
        (
            GOOD.replace("L5-S1: no moderate or severe stenosis", "The L4 vertebra is unremarkable"),
            {K.UNKNOWN_LEVEL},
        ),
        # wrong grade
        (GOOD.replace("severe central canal", "moderate central canal"), {K.WRONG_GRADE, K.MISSING_FINDING}),
        # invented number and a number from another finding
        (GOOD.replace("62 mm2", "58 mm2"), {K.UNSUPPORTED_NUMBER}),
        (GOOD.replace("ratio 45 %", "ratio 31 %"), {K.UNSUPPORTED_NUMBER}),
        (GOOD.replace("62 mm2", "62 mm"), {K.UNSUPPORTED_NUMBER}),
        # missing severe finding
        (
            GOOD.replace("; severe right neural foraminal narrowing, foraminal area ratio 31 % (< 35 %)", ""),
            {K.MISSING_FINDING},
        ),
    ],
)
def test_adversarial_edits_are_caught(sample: RationaleInput, text: str, expected: set[K]) -> None:
    found = kinds(text, sample)
    assert expected <= found, (text, found)


def test_bilateral_misuse_with_asymmetric_grades(sample: RationaleInput) -> None:
    text = GOOD.replace(
        FORAMINA,
        "severe bilateral neural foraminal narrowing",
    )
    found = kinds(text, sample)
    assert K.BILATERAL_MISUSE in found
    assert K.WRONG_GRADE in found  # left is moderate


def test_both_sides_phrase_is_bilateral_too(sample: RationaleInput) -> None:
    assert K.BILATERAL_MISUSE in kinds(GOOD + " L4-L5: moderate foraminal narrowing on both sides.", sample)


def test_per_side_grades_in_one_phrase_are_understood(sample: RationaleInput) -> None:
    text = GOOD.replace(
        FORAMINA,
        "moderate left and severe right neural foraminal narrowing",
    )
    assert verify(text, sample).ok
    swapped = text.replace("moderate left and severe right", "severe left and moderate right")
    assert K.WRONG_GRADE in kinds(swapped, sample)


def test_hedged_but_wrong_text_is_still_wrong(sample: RationaleInput) -> None:
    hedged = GOOD.replace("severe central canal stenosis", "possibly moderate central canal stenosis")
    assert K.WRONG_GRADE in kinds(hedged, sample)
    ranged = GOOD.replace("severe central canal stenosis", "moderate-to-severe central canal stenosis")
    assert K.AMBIGUOUS_GRADE in kinds(ranged, sample)


def test_missing_side_on_foraminal_statement(sample: RationaleInput) -> None:
    assert K.MISSING_SIDE in kinds(GOOD + " L4-L5: severe foraminal narrowing.", sample)


def test_statement_without_level(sample: RationaleInput) -> None:
    assert K.UNTIED_STATEMENT in kinds(GOOD + " There is also severe central canal stenosis.", sample)


def test_statement_with_level_after_it(sample: RationaleInput) -> None:
    text = (
        "Severe central canal stenosis at L4-L5, with moderate left and severe right neural foraminal "
        "narrowing. "
        "Moderate central canal stenosis at L3-L4 is flagged as uncertain. No stenosis at the other levels. "
        "The left neural foramen at L5-S1 is normal/mild but uncertain."
    )
    assert verify(text, sample).ok, verify(text, sample).violations


def test_uncertainty_must_be_flagged_and_not_invented(sample: RationaleInput) -> None:
    assert K.UNCERTAINTY_NOT_FLAGGED in kinds(GOOD.replace(", flagged as uncertain", ""), sample)
    invented = GOOD.replace("dural sac area 62 mm2 (< 75 mm2)", "dural sac area 62 mm2 (< 75 mm2), uncertain")
    assert K.UNCERTAINTY_INVENTED in kinds(invented, sample)


def test_negated_normal_claim_about_a_positive_level(sample: RationaleInput) -> None:
    assert K.WRONG_GRADE in kinds(GOOD + " L4-L5: no central canal stenosis.", sample)
    assert K.WRONG_GRADE in kinds(GOOD.replace("L5-S1: no", "L4-L5 and L5-S1: no"), sample)


def test_number_within_rounding_and_thresholds(sample: RationaleInput) -> None:
    assert verify(GOOD.replace("62 mm2", "61.8 mm2"), sample).ok
    assert K.UNSUPPORTED_NUMBER in kinds(GOOD.replace("62 mm2", "61.2 mm2"), sample)
    assert verify(GOOD.replace("ratio 45 %", "ratio 0.45"), sample).ok
    # a threshold of another condition is not a threshold of this one
    assert K.UNSUPPORTED_NUMBER in kinds(GOOD.replace("(< 75 mm2)", "(< 35 mm2)"), sample)


def test_stated_ranges_must_be_the_grading_tables(sample: RationaleInput) -> None:
    assert "(< 75 mm2)" in GOOD and "(75 mm2 to < 100 mm2)" in GOOD and verify(GOOD, sample).ok
    # each number is a cut-off of the condition, but these ranges do not exist (a model wrote one)
    for bad in ("(75 mm2 to < 75 mm2)", "(100 mm2 to < 75 mm2)", "(normal/mild range >= 75 mm2)"):
        assert K.UNSUPPORTED_NUMBER in kinds(GOOD.replace("(< 75 mm2)", bad), sample), bad


def test_words_outside_the_rationale_vocabulary(sample: RationaleInput) -> None:
    # free claims without any level, grade or number (SmolLM2-135M wrote these; all passed before)
    for claim in (
        ", found to be a benign condition",
        ", indicating a possible narrowing of the lateral branch of the spinal cord",
        ", unclear",
        ", probably due to posterior cortical atrophy",
    ):
        text = GOOD.replace("62 mm2 (< 75 mm2)", "62 mm2 (< 75 mm2)" + claim)
        assert text != GOOD and K.UNSUPPORTED_TERM in kinds(text, sample), claim
    from cds.explain.lexicon import unknown_words, words

    assert unknown_words(GOOD) == []
    assert unknown_words("The cord looks benign at L4-L5.") == ["cord", "looks", "benign"]
    assert not {"herniation", "verified", "cord", "nerve", "recommend", "surgery"} & words()


def test_unsupported_clinical_terms(sample: RationaleInput) -> None:
    text = GOOD.replace("L5-S1: no moderate", "L4-L5 shows a disc herniation. L5-S1: no moderate")
    assert K.UNSUPPORTED_TERM in kinds(text, sample)
    assert K.UNSUPPORTED_TERM in kinds(GOOD + " Surgical decompression is recommended.", sample)
    # claims that the output was checked or is certain (a 0.5B model wrote "..., verified")
    for claim in (
        "62 mm2 (< 75 mm2), verified",
        "62 mm2 (< 75 mm2), confirmed",
        "62 mm2 (< 75 mm2), definite",
    ):
        assert K.UNSUPPORTED_TERM in kinds(GOOD.replace("62 mm2 (< 75 mm2)", claim), sample), claim


def test_heatmap_claims_need_heatmap_input(
    sample: RationaleInput, sample_with_heatmap: RationaleInput
) -> None:
    heat = " The heatmap for L4-L5 central canal stenosis highlights the posterior disc margin."
    assert K.UNSUPPORTED_HEATMAP in kinds(GOOD + heat, sample)
    assert verify(GOOD + heat, sample_with_heatmap).ok
    wrong_finding = (
        " The heatmap for L4-L5 left neural foraminal narrowing highlights the posterior disc margin."
    )
    assert K.UNSUPPORTED_HEATMAP in kinds(GOOD + wrong_finding, sample_with_heatmap)
    invented_region = " The heatmap for L4-L5 central canal stenosis highlights the facet joint."
    assert K.UNSUPPORTED_HEATMAP in kinds(GOOD + invented_region, sample_with_heatmap)


def test_length_and_empty(sample: RationaleInput) -> None:
    assert verify("", sample).kinds() == {K.EMPTY}
    long = GOOD + " L5-S1: no moderate or severe stenosis." * 3
    assert K.TOO_LONG in kinds(long, sample)


def test_violation_names_the_problem(sample: RationaleInput) -> None:
    result = verify(GOOD.replace("62 mm2", "58 mm2"), sample)
    (violation,) = result.violations
    assert "58 mm2" in violation.message and "L4-L5" in violation.message
    assert violation.to_json()["kind"] == "unsupported_number"


def test_loose_grade_with_a_side_is_checked_against_that_side(sample: RationaleInput) -> None:
    assert verify(GOOD + " L4-L5: the right side is severe.", sample).ok
    assert K.WRONG_GRADE in kinds(GOOD + " L4-L5: the left side is severe.", sample)


def test_not_bilateral_does_not_negate_the_grade(sample: RationaleInput) -> None:
    text = GOOD.replace("(< 35 %). L5-S1", "(< 35 %), not bilateral. L5-S1")
    assert verify(text, sample).ok, verify(text, sample).violations


def test_violations_name_their_finding(sample: RationaleInput) -> None:
    text = GOOD.replace("severe central", "moderate central")
    named = [x for x in verify(text, sample).violations if x.level]
    assert {x.kind for x in named} == {K.WRONG_GRADE, K.MISSING_FINDING}
    for x in named:
        assert x.to_json()["level"] == "L4-L5" and x.to_json()["condition"] == "spinal_canal"


@pytest.mark.parametrize(
    "text",
    [
        GOOD.replace("L4-L5: severe", "L4/L5: severe"),
        GOOD.replace("L4-L5: severe", "L4–L5: severe"),
        GOOD.replace("L4-L5: severe", "L4-5: severe"),
        GOOD.replace("L5-S1: no", "L5/S1: no"),
    ],
)
def test_level_spellings(sample: RationaleInput, text: str) -> None:
    assert verify(text, sample).ok, verify(text, sample).violations


def test_level_ranges_expand(sample: RationaleInput) -> None:
    # L3-L4 to L5-S1 covers L4-L5, whose canal is severe: "no stenosis" across the range is wrong
    assert K.WRONG_GRADE in kinds(GOOD + " L3-L4 to L5-S1: no central canal stenosis.", sample)
    # a range reaching a level that was not analysed
    assert K.ABSENT_LEVEL in kinds(GOOD + " L1-L2 through L2-L3: no stenosis.", sample)


def test_every_uncertain_finding_must_be_flagged(sample: RationaleInput) -> None:
    text = GOOD.replace("; left neural foraminal narrowing graded normal/mild, flagged as uncertain.", ".")
    (v,) = verify(text, sample).violations
    assert v.kind is K.UNCERTAINTY_NOT_FLAGGED and v.level is not None and v.level.value == "L5-S1"
