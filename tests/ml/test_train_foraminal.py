"""``cds train foraminal`` mechanics on a tiny fake crop cache: card, verified weights, resume."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cds.domain import Level, Side
from cds.ml import foraminal as fm
from cds.pipeline import foramen_crop as fc
from cds.train import foraminal as tf
from cds.train.foraminal_data import CACHE_VERSION, MARGIN, load_examples


def fake_cache(cache: Path, name: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    keys = [(lv, s) for lv in Level for s in (Side.LEFT, Side.RIGHT)]
    ratios = rng.uniform(0.1, 1.0, len(keys)).astype(np.float32)
    grades = ["severe" if r < 0.35 else "moderate" if r < 0.6 else "normal_mild" for r in ratios]
    w = fc.SIZE + 2 * MARGIN
    crops = rng.random((len(keys), fc.IN_CHANNELS, w, w)).astype(np.float32) * 500
    crops *= ratios[:, None, None, None]  # brighter = wider foramen: something to learn
    cache.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        cache / f"{name}.npz",
        version=np.int32(CACHE_VERSION),
        crops=crops.astype(np.float16),
        levels=np.array([k[0].value for k in keys]),
        sides=np.array([k[1].value for k in keys]),
        grades=np.array(grades),
        ratios=ratios,
        window=np.array([0.0, 500.0]),
        geometry=np.array([fc.SIZE, MARGIN, fc.CRANIAL_TOP_MM, fc.POSTERIOR_START_MM]),
    )


@pytest.fixture
def data(tmp_path: Path) -> tuple[Path, Path]:
    root, cache = tmp_path / "synth", tmp_path / "cache"
    names = [f"S{i}" for i in range(5)]
    root.mkdir()
    (root / "split.json").write_text(json.dumps({"train": names[:3], "validation": names[3:], "test": []}))
    for i, n in enumerate(names):
        fake_cache(cache, n, i)
    return root, cache


def test_cached_examples_are_cut_to_the_current_window(data: tuple[Path, Path]) -> None:
    _, cache = data
    ex = load_examples(cache / "S0.npz")
    assert len(ex) == 10
    assert ex[0].crop.shape == (fc.IN_CHANNELS, fc.SIZE + 2 * MARGIN, fc.SIZE + 2 * MARGIN)
    assert ex[0].scale > 0


def test_training_writes_a_verified_model_and_resumes_after_an_interruption(
    data: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, cache = data
    out, work = tmp_path / "models" / "foraminal", tmp_path / "work"
    config = tf.ForaminalTrainConfig(epochs=2, batch_size=8, stem=4, widths=(4, 6), seed=3)
    real_metrics = tf.metrics
    calls = {"n": 0}

    def failing_second_epoch(out_: Any, val: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_metrics(out_, val)

    monkeypatch.setattr(tf, "metrics", failing_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        tf.train_foraminal(root, cache, out, work, config)
    assert (work / "checkpoint.pt").is_file() and not out.exists()
    monkeypatch.setattr(tf, "metrics", real_metrics)

    spec = tf.train_foraminal(root, cache, out, work, config, resume=True)
    lines = [json.loads(x) for x in (out / "training_log.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2]
    assert spec.metrics["validation"]["all"]["n"] == 20
    assert spec.architecture["stem"] == 4
    fm.clear_cache()
    loaded = fm.load_foraminal("foraminal", out.parent)  # hash-verified against the card
    assert loaded.spec.sha256 == spec.sha256
    with pytest.raises(ValueError, match="another config"):
        tf.train_foraminal(root, cache, out, work, tf.ForaminalTrainConfig(epochs=3), resume=True)


def test_grade_helpers_follow_findings_thresholds() -> None:
    assert list(tf.ratio_grade(np.array([0.2, 0.5, 0.7]))) == [2, 1, 0]
    assert list(tf.ordinal_grade(np.array([0.1, 0.9, 0.95]), np.array([0.05, 0.2, 0.9]))) == [0, 1, 2]


def test_members_are_averaged_into_one_verified_ensemble(data: tuple[Path, Path], tmp_path: Path) -> None:
    root, cache = data
    out = tmp_path / "models" / "foraminal"
    config = tf.ForaminalTrainConfig(epochs=1, batch_size=8, stem=4, widths=(4, 6), members=2)
    spec = tf.train_foraminal(root, cache, out, tmp_path / "work", config)
    assert spec.architecture["type"] == fm.ENSEMBLE and spec.architecture["members"] == 2
    assert (tmp_path / "work" / "member_1" / "checkpoint.pt").is_file()
    members = [json.loads(x)["member"] for x in (out / "training_log.jsonl").read_text().splitlines()]
    assert members == [0, 1]
    fm.clear_cache()
    loaded = fm.load_foraminal("foraminal", out.parent)
    assert isinstance(loaded.network, fm.ForaminalEnsemble) and len(loaded.network.cam_layers) == 2
