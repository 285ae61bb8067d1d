"""`cds train sagittal-seg` end to end on a tiny SPIDER-like folder: weights, card, log, resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from cds.cli import main
from cds.ml.spec import read_card, sha256_file


def _fake_spider(root: Path, patients: int = 3, slices: int = 2) -> Path:
    rng = np.random.default_rng(0)
    for p in range(patients):
        folder = root / f"{p:03d}"
        folder.mkdir(parents=True)
        for k in range(slices):
            mask = np.zeros((96, 64), np.uint8)
            mask[10:30, 10:40] = 76
            mask[30:36, 10:40] = 29
            mask[36:56, 10:40] = 76
            mask[5:70, 42:50] = 150
            image = (mask.astype(np.float32) + rng.normal(0, 10, mask.shape)).clip(0, 255).astype(np.uint8)
            Image.fromarray(image).save(folder / f"slice{k:03d}_image.png")
            Image.fromarray(mask).save(folder / f"slice{k:03d}_mask.png")
    return root


def test_train_writes_verified_weights_card_and_log_and_resumes(tmp_path: Path) -> None:
    spider = _fake_spider(tmp_path / "spider")
    out = tmp_path / "models" / "sagittal_seg"
    work = tmp_path / "work"
    args = ["train", "sagittal-seg", "--data-spider", str(spider), "--out", str(out), "--work-dir", str(work)]
    args += ["--epochs", "2", "--steps-per-epoch", "1", "--batch-size", "2", "--holdout", "1"]
    assert main(args) == 0

    card = read_card("sagittal_seg", out.parent)
    assert card.sha256 == sha256_file(out / "model.safetensors")
    assert card.labels == ("background", "disc", "vertebra", "canal")
    spider_info = card.training["spider"]
    assert len(spider_info["held_out_patients"]) == 1
    assert not set(spider_info["held_out_patients"]) & set(spider_info["train_patients"])
    summary = card.metrics["spider_holdout_dice"]["summary"]
    assert set(summary) == {"disc", "vertebra", "canal", "mean"}
    assert all(0.0 <= v <= 1.0 for v in summary.values())
    log = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    assert (work / "gallery.png").stat().st_size > 0

    # rerunning the finished command resumes from the last checkpoint: no epoch is trained twice
    assert main(args) == 0
    log = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    assert read_card("sagittal_seg", out.parent).sha256 == card.sha256


def test_holdout_evaluation_runs_when_out_folder_has_another_name(tmp_path: Path) -> None:
    """The evaluation must score the model just written, whatever its folder is called."""
    spider = _fake_spider(tmp_path / "spider")
    out = tmp_path / "trial" / "sagittal_seg_try"
    args = ["train", "sagittal-seg", "--data-spider", str(spider), "--out", str(out)]
    args += ["--work-dir", str(tmp_path / "work"), "--epochs", "1", "--steps-per-epoch", "1"]
    args += ["--batch-size", "2", "--holdout", "1"]
    assert main(args) == 0

    card = read_card("sagittal_seg_try", out.parent)
    summary = card.metrics["spider_holdout_dice"]["summary"]
    assert set(summary) == {"disc", "vertebra", "canal", "mean"}
    assert not (out.parent / "sagittal_seg").exists()
