"""`cds synth` end to end: one study, split file, grade histogram on stdout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cds.cli import main


def test_cds_synth_writes_studies_split_and_histogram(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "ds"
    assert (
        main(["synth", "--out", str(out), "--n", "1", "--seed", "4", "--split", "1,0,0", "--no-progress"])
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    split = json.loads((out / "split.json").read_text())
    assert split == {"train": ["SYN-400012"], "validation": [], "test": []}
    study = out / "SYN-400012"
    assert (study / "truth" / "findings.json").is_file() and any((study / "dicom").glob("*.dcm"))
    assert report["studies"] == 1
    assert sum(report["grades"]["spinal_canal"].values()) == 5


def test_cds_synth_rejects_a_bad_split(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["synth", "--out", str(tmp_path), "--n", "1", "--split", "0.5,0.6,0.1"]) == 2
    assert "split" in capsys.readouterr().err
