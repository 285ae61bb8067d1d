"""``cds train sac-fine`` mechanics on a tiny fake crop cache: card, verified weights, resume."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cds.ml.loading import load_model
from cds.ml.spec import read_card
from cds.pipeline import sac_crop as sc
from cds.train import sac_fine as tf
from cds.train.sac_fine_data import CACHE_VERSION, JITTER_MM, WIDE, build_cache


def disk_crops(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Bright disks of random radius on a dim background, and the disks as targets."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:WIDE, 0:WIDE]
    xs, ts = [], []
    for _ in range(n):
        r = rng.uniform(8, 20)
        cy, cx = WIDE / 2 + rng.uniform(-4, 4, size=2)
        disk = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.float32)
        xs.append(0.2 + 0.8 * disk + rng.normal(0, 0.03, disk.shape).astype(np.float32))
        ts.append(disk)
    return np.stack(xs).astype(np.float16), np.stack(ts).astype(np.float16)


@pytest.fixture
def data(tmp_path: Path) -> tuple[Path, Path]:
    root, cache = tmp_path / "synth", tmp_path / "cache"
    names = [f"S{i}" for i in range(4)]
    root.mkdir()
    cache.mkdir()
    (root / "split.json").write_text(json.dumps({"train": names[:3], "validation": names[3:], "test": []}))
    for i, name in enumerate(names):
        (root / name / "truth").mkdir(parents=True)
        (root / name / "truth" / "findings.json").write_text(
            json.dumps({"generator_version": "test", "seed": i})
        )
        x, t = disk_crops(6, i)
        jitter = JITTER_MM if name in names[:3] else 0.0
        np.savez(cache / f"{name}-j{jitter:g}.npz", x=x, t=t, version=np.int64(CACHE_VERSION))
    return root, cache


def test_cached_crops_are_read_without_the_study_data(data: tuple[Path, Path]) -> None:
    root, cache = data
    crops = build_cache(root, ["S0"], cache, seed=0)
    assert len(crops) == 1 and crops[0].x.shape == (6, WIDE, WIDE)


def test_augment_cuts_the_inference_window_and_keeps_targets_aligned() -> None:
    x, t = disk_crops(4, 0)
    xa, ta = tf.augment(x.astype(np.float32), t.astype(np.float32), np.random.default_rng(0))
    assert xa.shape == ta.shape == (4, sc.CROP_SIZE, sc.CROP_SIZE)
    # Flips and shifts move image and target together: the bright pixels are the target's.
    assert float(xa[ta > 0.5].mean()) > float(xa[ta < 0.5].mean()) + 0.5


def test_soft_loss_is_lower_for_the_right_map() -> None:
    import torch

    t = torch.zeros(1, 8, 8)
    t[0, 2:6, 2:6] = 1.0
    good = torch.stack([-5 * (2 * t - 1), 5 * (2 * t - 1)], dim=1)
    assert tf.loss_fn(good, t, 0.5) < tf.loss_fn(-good, t, 0.5)


def test_training_writes_a_verified_model_and_resumes_after_an_interruption(
    data: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, cache = data
    models = tmp_path / "models"
    out, work = models / tf.MODEL_NAME, tmp_path / "work"
    config = tf.SacFineTrainConfig(epochs=2, batch_size=4, base_channels=4, depth=2, seed=3)
    real = tf.evaluate
    calls = {"n": 0}

    def failing_second_epoch(*args: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(tf, "evaluate", failing_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        tf.train_sac_fine(data_root=root, cache_dir=cache, out_dir=out, work_dir=work, config=config)
    assert (work / "checkpoint.pt").is_file() and not out.exists()
    monkeypatch.setattr(tf, "evaluate", real)
    spec = tf.train_sac_fine(
        data_root=root, cache_dir=cache, out_dir=out, work_dir=work, config=config, resume=True
    )
    log = [json.loads(line) for line in (out / "training_log.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in log] == [1, 2]  # epoch 1 from before the interruption, 2 after
    card = read_card(tf.MODEL_NAME, models)
    assert card.sha256 == spec.sha256 and card.labels == tf.LABELS
    assert card.input.target_spacing_mm == (sc.CROP_SPACING_MM, sc.CROP_SPACING_MM)
    assert card.training["data"]["seeds"] == [0, 1, 2]
    assert "soft_area_mae_mm2" in card.metrics["validation_best_epoch"]
    loaded = load_model(tf.MODEL_NAME, models)
    assert loaded.spec.tag == f"{tf.MODEL_NAME}@1.0.0"


def test_resume_refuses_another_config(data: tuple[Path, Path], tmp_path: Path) -> None:
    root, cache = data
    out, work = tmp_path / "m" / tf.MODEL_NAME, tmp_path / "w"
    config = tf.SacFineTrainConfig(epochs=1, batch_size=4, base_channels=4, depth=2)
    tf.train_sac_fine(data_root=root, cache_dir=cache, out_dir=out, work_dir=work, config=config)
    with pytest.raises(ValueError, match="another config"):
        tf.train_sac_fine(
            data_root=root,
            cache_dir=cache,
            out_dir=out,
            work_dir=work,
            config=tf.SacFineTrainConfig(epochs=1, batch_size=4, base_channels=4, depth=2, lr=1e-3),
            resume=True,
        )
