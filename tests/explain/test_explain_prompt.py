"""The prompt's worked examples and rendering."""

from __future__ import annotations

from cds.explain.findings import RationaleInput
from cds.explain.prompt import build_messages, clean_draft, example_inputs, render_findings
from cds.explain.verify import verify


def test_worked_examples_pass_the_verifier() -> None:
    examples = example_inputs()
    assert len(examples) == 3
    for inp, answer in examples:
        assert verify(answer, inp).ok, (answer, verify(answer, inp).violations)


def test_render_pairs_sides_and_lists_quiet_and_absent_levels(sample: RationaleInput) -> None:
    text = render_findings(sample)
    assert "- L4-L5 central canal stenosis: severe; dural sac area 62 mm2 (severe range < 75 mm2)" in text
    assert text.count("(the two sides differ: not bilateral)") == 2
    assert "Levels with no moderate or severe finding: L5-S1." in text
    assert "Not analysed (do not mention): L1-L2, L2-L3." in text
    assert "No heatmap information." in text
    assert "uncertain" in text


def test_messages_end_with_the_case(sample: RationaleInput) -> None:
    messages = build_messages(sample)
    assert messages[0].role == "system" and "bilateral" in messages[0].content
    assert messages[-1].content == render_findings(sample)


def test_clean_draft() -> None:
    assert clean_draft("Rationale: **L4-L5:** severe.\n- more\n\nignored") == "L4-L5: severe. more"
