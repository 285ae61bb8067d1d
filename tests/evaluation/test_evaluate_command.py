"""`cds evaluate` end to end on two tiny generated studies and a two-slice fake SPIDER patient,
with the shipped models: both files are written with the expected keys, and a re-run is served
from the per-study cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cds.cli import main
from cds.ml.spec import read_card
from cds.synth.study import StudyOptions, generate_study

SMALL = StudyOptions(sag_matrix=(128,), ax_matrix=(96,), min_sag_slices=9)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("eval-data")
    for seed in (9101, 9102):
        generate_study(seed, root, SMALL)
    return root


@pytest.fixture(scope="module")
def spider(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One held-out patient (named as the sagittal card names it) with two drawn slices."""
    root = tmp_path_factory.mktemp("spider")
    patient = read_card("sagittal_seg").training["spider"]["held_out_patients"][0]
    folder = root / str(patient)
    folder.mkdir()
    for k in range(2):
        image = np.full((96, 64), 40, dtype=np.uint8)
        mask = np.zeros((96, 64), dtype=np.uint8)
        for top in range(8, 88, 20):
            image[top : top + 12, 10:40] = 120
            mask[top : top + 12, 10:40] = 76  # vertebra
            image[top + 12 : top + 16, 12:38] = 200
            mask[top + 12 : top + 16, 12:38] = 29  # disc
        image[:, 44:52] = 230
        mask[:, 44:52] = 150  # canal
        Image.fromarray(image).save(folder / f"slice{k:03d}_image.png")
        Image.fromarray(mask).save(folder / f"slice{k:03d}_mask.png")
    return root


def test_evaluate_writes_metrics_and_report_then_reuses_the_cache(
    data: Path, spider: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "eval"
    argv = ["evaluate", "--out", str(out), "--data", str(data), "--spider", str(spider)]
    argv += ["--explain-n", "0", "--no-progress"]
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for key in (
        "models",
        "code",
        "data",
        "coverage",
        "segmentation",
        "levels",
        "classification",
        "severity",
        "measurements",
        "explanation",
        "speed",
        "targets",
        "anchors",
        "misses",
        "plots",
        "gallery",
    ):
        assert key in metrics, key
    assert metrics["data"]["n_studies"] == 2
    assert metrics["data"]["overlap"]["overlapping"] == []
    assert set(metrics["models"]) == {
        "sagittal_seg",
        "axial_seg",
        "sac_fine",
        "classifier",
        "foraminal",
        "subarticular",
    }
    assert all(len(v["sha256"]) == 64 for v in metrics["models"].values())
    assert set(metrics["segmentation"]["spider"]["per_patient"]) == {
        str(read_card("sagittal_seg").training["spider"]["held_out_patients"][0])
    }
    assert metrics["explanation"]["faithfulness"]["available"] is False
    assert metrics["explanation"]["rationale"]["corpus"]["delivered_failing_verification"] == 0
    assert {t["key"] for t in metrics["targets"]} >= {
        "dsca_mae",
        "level_identification",
        "auroc_spinal_canal",
    }
    html = (out / "report.html").read_text()
    assert "<h2>Targets</h2>" in html and "Where targets are missed and why" in html
    for name in (metrics["plots"]["roc"], metrics["plots"]["calibration"], metrics["plots"]["confusion"]):
        assert (out / name).is_file() and f'src="{name}"' in html
    printed = capsys.readouterr().out
    assert "targets missed" in printed

    cached = sorted((out / "cache").glob("*/SYN-*.json"))
    assert len(cached) == 2
    stamps = [p.stat().st_mtime_ns for p in cached]
    assert main([*argv, "--n", "1"]) == 0
    assert [p.stat().st_mtime_ns for p in cached] == stamps  # served from the cache, not recomputed
    assert json.loads((out / "metrics.json").read_text())["data"]["n_studies"] == 1

    # Without the records (e.g. a new classifier), the segmentations are replayed, the rest is live
    first = json.loads(cached[0].read_text())
    assert first["replay"]["computed"] >= 2 and first["replay"]["hits"] == 0
    for p in cached:
        p.unlink()
    assert main([*argv, "--n", "1"]) == 0
    again = json.loads(cached[0].read_text())
    assert again["replay"]["hits"] == first["replay"]["computed"] and again["replay"]["computed"] == 0
    assert again["analysis"]["levels"] == first["analysis"]["levels"]
    assert again["sagittal_overlap"] == first["sagittal_overlap"]


def test_missing_data_folder_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["evaluate", "--out", str(tmp_path / "o"), "--data", str(tmp_path / "nope"), "--no-spider"])
    assert code == 2
    assert "not found" in capsys.readouterr().err
