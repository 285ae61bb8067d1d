"""Synthetic validation of the sagittal trainer: scored like the evaluation, best epoch shipped."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cds.cli import main
from cds.errors import BadRequest
from cds.ml.spec import read_card, sha256_file
from cds.pipeline.segment import CANAL, DISC, VERTEBRA
from cds.synth.study import StudyOptions, generate_study
from cds.train.sagittal_validation import split_names, study_dice, summarise_studies
from cds.train.synth_data import training_indices

SMALL = StudyOptions(sag_matrix=(128,), ax_matrix=(96,), min_sag_slices=9)


def test_split_names_reads_one_part_and_rejects_unknown_parts(tmp_path: Path) -> None:
    (tmp_path / "split.json").write_text(json.dumps({"train": ["A", "B"], "validation": ["C"]}))
    assert split_names(tmp_path, "train") == ["A", "B"]
    assert split_names(tmp_path, "validation") == ["C"]
    with pytest.raises(BadRequest, match="no part 'test'"):
        split_names(tmp_path, "test")
    with pytest.raises(BadRequest, match=r"no split\.json"):
        split_names(tmp_path / "missing", "train")


def test_training_slices_include_the_stack_centre_quick_read_segments() -> None:
    """A spine 6 slices off the stack centre: the largest-canal block alone misses the scored slices."""
    labels = np.zeros((25, 4, 4), dtype=np.uint8)
    for k, area in enumerate([0] * 15 + [2, 4, 8, 16, 8, 4, 2] + [0] * 3):
        labels[k].flat[:area] = CANAL
    largest = training_indices(labels, labels == CANAL, 5, centre_half_width=-1)
    assert largest == [16, 17, 18, 19, 20]
    both = training_indices(labels, labels == CANAL, 5, centre_half_width=2)
    assert both == [10, 11, 12, 13, 14, 16, 17, 18, 19, 20]  # stack centre 12 +- 2 (no canal there)


def test_study_dice_pools_slices_and_summary_skips_empty_classes() -> None:
    truth = np.zeros((2, 4, 4), np.uint8)
    truth[0, :2] = DISC
    truth[1, 2:] = VERTEBRA
    pred = truth.copy()
    pred[1, 3] = 0  # half of the vertebra missed
    got = study_dice(pred, truth)
    assert got["disc"] == 1.0
    assert got["vertebra"] == pytest.approx(2 * 4 / (4 + 8))
    assert got["canal"] is None  # nothing to find and nothing found: not scored
    summary = summarise_studies({"a": got, "b": {"disc": 0.5, "vertebra": 1.0, "canal": 0.8}})
    assert summary["disc"] == pytest.approx(0.75)
    assert summary["canal"] == pytest.approx(0.8)  # only study b counts
    assert summary["mean"] == pytest.approx(np.mean([0.75, (2 / 3 + 1.0) / 2, 0.8]))
    assert summary["n_studies"] == 2


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    names = [generate_study(seed, root, SMALL).name for seed in (9301, 9302, 9303)]
    (root / "split.json").write_text(json.dumps({"train": names[:2], "validation": names[2:], "test": []}))
    return root


def _fake_spider(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for p in range(2):
        folder = root / f"{p:03d}"
        folder.mkdir(parents=True)
        mask = np.zeros((96, 64), np.uint8)
        mask[10:30, 10:40] = 76
        mask[30:36, 10:40] = 29
        mask[5:70, 42:50] = 150
        image = (mask.astype(np.float32) + rng.normal(0, 10, mask.shape)).clip(0, 255).astype(np.uint8)
        Image.fromarray(image).save(folder / "slice000_image.png")
        Image.fromarray(mask).save(folder / "slice000_mask.png")
    return root


def test_validation_split_scores_every_epoch_and_ships_the_best(synth: Path, tmp_path: Path) -> None:
    from cds.ml.loading import clear_cache, load_model
    from cds.pipeline.segment import segment_sagittal_stack
    from cds.train.sagittal import CONTRACT
    from cds.train.sagittal_validation import load_validation, predict_labels

    out = tmp_path / "models" / "sagittal_seg"
    work = tmp_path / "work"
    args = ["train", "sagittal-seg", "--data-spider", str(_fake_spider(tmp_path / "spider"))]
    args += ["--data-synth", str(synth), "--synth-split", "train", "--validation-split", "validation"]
    args += ["--centre-half-width", "1", "--out", str(out), "--work-dir", str(work), "--epochs", "2"]
    args += ["--steps-per-epoch", "1", "--batch-size", "2", "--holdout", "1", "--monitor-patients", "1"]
    args += ["--spider-floor", "0.0"]
    with pytest.raises(ValueError, match="nothing to resume"):
        main([*args, "--resume"])
    assert main(args) == 0

    log = [json.loads(line) for line in (out / "training_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    assert all(r["validation_dice"]["n_studies"] == 1 for r in log)
    best = max(log, key=lambda r: r["validation_dice"]["mean"])  # first of equals, as the trainer keeps it
    card = read_card("sagittal_seg", out.parent)
    assert card.sha256 == sha256_file(out / "model.safetensors")
    assert card.training["selected_epoch"]["epoch"] == best["epoch"]
    assert card.metrics["synthetic_validation_dice"] == best["validation_dice"]
    assert card.training["synthetic_validation"]["split_part"] == "validation"
    assert "spider_holdout_dice" in card.metrics

    # the per-epoch figure is the product's own path: the label maps of segment_sagittal_stack (up to
    # float rounding: the product runs channels_last, and this barely trained network has near-ties)
    study = load_validation(synth, split_names(synth, "validation"))[0]
    clear_cache()
    model = load_model("sagittal_seg", out.parent)
    got = predict_labels(model.network, study, CONTRACT, dict(model.spec.thresholds), model.device)
    ref = segment_sagittal_stack(study.images, study.spacing_mm, models_dir=out.parent)
    clear_cache()
    expected = np.stack([m.label_map() for m in ref])
    assert got.shape == expected.shape
    assert np.mean(got == expected) > 0.99

    # --resume of the finished run trains nothing again and keeps the selected weights
    assert main([*args, "--resume"]) == 0
    assert read_card("sagittal_seg", out.parent).sha256 == card.sha256

    # a cut-short run's best epoch exported as a model folder: same weights, its figures in the card
    exported = tmp_path / "export" / "sagittal_seg"
    assert main([*args, "--export", str(work / "best.pt"), "--out", str(exported)]) == 0
    card2 = read_card("sagittal_seg", exported.parent)
    assert card2.sha256 == card.sha256
    assert card2.training["selected_epoch"]["epoch"] == best["epoch"]
    assert card2.metrics["synthetic_validation_dice"] == best["validation_dice"]
    assert card2.training["synthetic"]["studies"] == 2
    assert (exported / "training_log.jsonl").read_text() == (out / "training_log.jsonl").read_text()


def test_validation_split_requires_a_training_split(synth: Path, tmp_path: Path) -> None:
    args = ["train", "sagittal-seg", "--data-synth", str(synth), "--validation-split", "validation"]
    args += ["--out", str(tmp_path / "m" / "sagittal_seg")]
    with pytest.raises(SystemExit, match="needs --synth-split"):
        main(args)
