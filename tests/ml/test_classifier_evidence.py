"""Classifier 2.x: evidence head, Grad-CAM equals the output's own map, localisation losses, mirror."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from cds.domain import Condition, Grade, Level
from cds.explain.gradcam import CamTarget, compute_maps
from cds.ml.classifier import ClassifierConfig, LevelClassifier, LoadedClassifier, build_classifier
from cds.ml.spec import InputContract, ModelSpec
from cds.pipeline import classify as cl
from cds.train import classifier as tc
from cds.train import classifier_data as cd

CONFIG = ClassifierConfig(
    in_channels=cl.IN_CHANNELS, widths=(8, 8, 8, 8), evidence_head=True, pools=1, num_measures=6, input_pool=2
)


def _net(seed: int = 0) -> LevelClassifier:
    torch.manual_seed(seed)
    net = LevelClassifier(CONFIG)
    net.summary_norm.running_mean.uniform_(0.0, 0.2)  # type: ignore[union-attr,operator]
    return net.eval()


def test_evidence_head_shapes_and_layer() -> None:
    net = _net()
    x = torch.rand(3, cl.IN_CHANNELS, cl.CROP_SIZE, cl.CROP_SIZE)
    out = net.training_outputs(x)
    assert out.logits.shape == (3, 10)
    assert out.log_evidence is not None and out.log_evidence.shape == (3, 10, 24, 24)
    assert out.measures is not None and out.measures.shape == (3, 6)
    assert net.cam_layer is net.evidence
    # forward == training logits / temperature (eval mode: dropout off)
    net.get_buffer("temperature").fill_(2.0)
    torch.testing.assert_close(net(x), out.logits / 2.0)


def test_plain_head_keeps_last_conv_as_cam_layer() -> None:
    net = LevelClassifier(ClassifierConfig(in_channels=cl.IN_CHANNELS, widths=(8, 8, 8, 8)))
    assert net.cam_layer is net.last_conv


def test_gradcam_of_an_output_is_its_own_evidence_map() -> None:
    net = _net()
    loaded = LoadedClassifier(spec=None, network=net, device=torch.device("cpu"))  # type: ignore[arg-type]
    rng = np.random.default_rng(0)
    crops = {Level.L4_L5: rng.random((cl.IN_CHANNELS, 96, 96), dtype=np.float32)}
    targets = [CamTarget(Level.L4_L5, c) for c in Condition]
    maps = compute_maps(loaded, crops, targets)
    with torch.no_grad():
        evidence = net.evidence(net.features(torch.from_numpy(crops[Level.L4_L5])[None]))[0].numpy()
    for m in maps:
        own = evidence[2 * list(Condition).index(m.target.condition)]
        np.testing.assert_allclose(m.raw / m.raw.max(), own / own.max(), rtol=1e-4, atol=1e-6)
        assert np.unravel_index(np.argmax(m.raw), m.raw.shape) == np.unravel_index(np.argmax(own), own.shape)
    assert not np.allclose(maps[0].raw / maps[0].raw.max(), maps[3].raw / maps[3].raw.max())


def test_card_architecture_round_trip() -> None:
    spec = ModelSpec(
        name="classifier",
        version="2.0.0",
        sha256="0" * 64,
        architecture={
            "type": "LevelClassifier",
            "in_channels": cl.IN_CHANNELS,
            "widths": [8, 8, 8, 8],
            "groups": 8,
            "summary_features": True,
            "evidence_head": True,
            "pools": 1,
            "num_measures": 6,
            "input_pool": 2,
        },
        input=InputContract("test", (0.8, 0.8), (96, 96), "test", (1.0, 99.0)),
        labels=tuple(f"{c.value}:{h}" for c in Condition for h in ("present", "severe")),
    )
    assert build_classifier(spec).config == CONFIG


def _region(h: int, w: int, rows: slice, cols: slice) -> torch.Tensor:
    m = torch.zeros(1, 5, 96, 96, dtype=torch.bool)
    m[0, 0, rows, cols] = True
    return m


def test_localisation_loss_rewards_evidence_inside_the_cause_region() -> None:
    causes = _region(96, 96, slice(40, 56), slice(40, 56))  # spinal canal cause: cells 10..13
    y = torch.zeros(1, 10)
    y[0, 0] = 1.0  # canal present
    inside = torch.zeros(1, 10, 24, 24)
    inside[0, 0, 11, 11] = 8.0
    outside = torch.zeros(1, 10, 24, 24)
    outside[0, 0, 2, 2] = 8.0
    assert tc.localisation_loss(inside, y, causes) < 0.5 < 4.0 < tc.localisation_loss(outside, y, causes)
    # negatives and outputs without a region contribute nothing
    assert float(tc.localisation_loss(outside, torch.zeros(1, 10), causes)) == 0.0


def test_measure_loss_ignores_unknown_values() -> None:
    pred = torch.tensor([[1.0, 5.0]])
    assert float(tc.measure_loss(pred, torch.tensor([[1.0, float("nan")]]))) == 0.0
    assert float(tc.measure_loss(pred, torch.tensor([[0.0, float("nan")]]))) == pytest.approx(0.5)


def test_pointing_proxy_counts_peaks_near_the_region() -> None:
    causes = np.zeros((2, 5, 96, 96), dtype=bool)
    causes[:, 3, 30:40, 60:70] = True  # left subarticular
    y = np.zeros((2, 10), np.float32)
    y[:, 6] = 1.0
    maps = np.zeros((2, 10, 24, 24), np.float32)
    maps[0, 6, 8, 16] = 5.0  # cell centre (34, 66): inside
    maps[1, 6, 20, 2] = 5.0  # far away
    assert tc.pointing_proxy(maps, y, causes) == pytest.approx(0.5)


def test_mirror_augmentation_swaps_sides_consistently() -> None:
    crop = np.zeros((cl.IN_CHANNELS, cd.WIDE_SIZE, cd.WIDE_SIZE), np.float32)
    crop[3, :, :10] = 1.0  # something on the patient-right edge
    causes = np.zeros((5, cd.WIDE_SIZE, cd.WIDE_SIZE), bool)
    causes[3, 50, 20] = True  # left subarticular cause, column 20
    grades = {c: Grade.NORMAL_MILD for c in Condition}
    grades[Condition.LEFT_SUBARTICULAR] = Grade.SEVERE
    measures = np.arange(6, dtype=np.float32)
    sample = cd.LevelSample("s", Level.L4_L5, crop, grades, causes, measures)
    seen = set()
    for seed in range(40):
        x, y, m, r = tc._augment(sample, random.Random(seed))
        assert x.shape == (cl.IN_CHANNELS, 96, 96) and m.shape == (5, 96, 96)
        mirrored = bool(x[3, :, -1].any())
        seen.add(mirrored)
        side = 4 if mirrored else 3  # right subarticular after the mirror
        assert m[side].sum() == 1 and m[7 - side].sum() == 0
        assert y[2 * side] == 1.0 and y[2 * (7 - side)] == 0.0
        assert list(r[2:4]) == ([3.0, 2.0] if mirrored else [2.0, 3.0])
    assert seen == {True, False}


def test_model_grading_kappa_is_one_for_perfect_outputs() -> None:
    y = np.array([[0, 0] * 5, [1, 0] * 5, [1, 1] * 5], dtype=np.float32)
    cal = np.clip(y * 0.98 + 0.01, 0, 1)
    grading = tc.model_grading(cal, y)
    assert grading["spinal_canal"]["kappa_model"] == pytest.approx(1.0)
    assert grading["spinal_canal"]["confusion_model"] == [[1, 0, 0], [0, 1, 0], [0, 0, 1]]


def _fake_samples(n: int, seed: int) -> list[cd.LevelSample]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        crop = rng.random((cl.IN_CHANNELS, cd.WIDE_SIZE, cd.WIDE_SIZE), dtype=np.float32)
        grades = {c: (Grade.MODERATE if rng.random() < 0.5 else Grade.NORMAL_MILD) for c in Condition}
        causes = np.zeros((5, cd.WIDE_SIZE, cd.WIDE_SIZE), bool)
        causes[:, 40:60, 40:60] = True
        out.append(
            cd.LevelSample(f"S{i}", Level.L4_L5, crop, grades, causes, rng.random(6).astype(np.float32))
        )
    return out


def test_trainer_logs_every_epoch_writes_a_card_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The data boundary (DICOM + axial U-Net -> cached samples) is faked; the loop, the
    checkpoint/resume logic, calibration and the card are real."""
    import json
    from types import SimpleNamespace

    import cds.ml.loading as loading
    from cds.ml.spec import read_card, sha256_file

    data = tmp_path / "data"
    data.mkdir()
    (data / "split.json").write_text(json.dumps({"train": ["T1"], "validation": ["V1"], "test": []}))
    seg_spec = SimpleNamespace(sha256="ab" * 32, tag="axial_seg@9.9.9", training={"data": {"seeds": []}})
    monkeypatch.setattr(loading, "load_model", lambda *a, **k: SimpleNamespace(spec=seg_spec))
    monkeypatch.setattr(cd, "prepare", lambda root, names, cache, seg: list(names))
    monkeypatch.setattr(
        cd, "load_samples", lambda names: _fake_samples(24 if "T1" in names else 12, len(names))
    )
    config = tc.ClassifierTrainConfig(epochs=2, batch_size=8, widths=(8, 8, 8, 8), threads=1)
    out, work = tmp_path / "models" / "classifier", tmp_path / "work"

    def run(resume: bool) -> ModelSpec:
        return tc.train_classifier(
            data_root=data,
            seg_model_dir=tmp_path / "axial_seg",
            out_dir=out,
            work_dir=work,
            config=config,
            resume=resume,
        )

    spec = run(resume=False)
    card = read_card("classifier", out.parent)
    assert card.sha256 == sha256_file(out / "model.safetensors") == spec.sha256
    assert card.architecture["evidence_head"] is True
    assert build_classifier(card).config.evidence_head
    log = [json.loads(line) for line in (work / "training_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    assert {"bce", "localisation", "measures", "val_auroc", "val_pointing_proxy"} <= set(log[0])
    assert card.metrics["selected_epoch"] in (1, 2)
    # resuming a finished run trains no epoch twice and reproduces the same weights
    again = run(resume=True)
    log = [json.loads(line) for line in (work / "training_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    assert again.sha256 == spec.sha256
    # a changed config refuses to resume from the old checkpoint
    config = tc.ClassifierTrainConfig(epochs=3, batch_size=8, widths=(8, 8, 8, 8), threads=1)
    with pytest.raises(ValueError, match="another config"):
        run(resume=True)
