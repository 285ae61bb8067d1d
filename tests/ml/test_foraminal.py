"""Foraminal network: outputs, card contract, hash-verified loading, and the pipeline stage."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cds.dicom.selection import SeriesKind
from cds.dicom.volume import Volume
from cds.domain import Level, MeasurementName, Side
from cds.errors import ModelError
from cds.ml import foraminal as fm
from cds.ml.loading import save_weights
from cds.ml.spec import InputContract, ModelSpec, write_card
from cds.pipeline import foramen_crop as fc
from cds.pipeline import foraminal as stage


def write_model(root: Path, *, rule: bool, tamper: bool = False) -> Path:
    torch.manual_seed(0)
    net = fm.ForaminalNet(fm.ForaminalConfig(in_channels=fc.IN_CHANNELS, stem=4, widths=(4, 6)))
    net.eval()
    directory = root / "foraminal"
    sha = save_weights(net, directory / "model.safetensors")
    spec = ModelSpec(
        name="foraminal",
        version="0.0.1",
        sha256=("0" * 64) if tamper else sha,
        architecture={"type": fm.ARCHITECTURE, "in_channels": fc.IN_CHANNELS, "stem": 4, "widths": [4, 6]},
        input=InputContract("parasagittal", (0.875, 0.875), (fc.SIZE, fc.SIZE), "p1/p99", (1.0, 99.0)),
        labels=fm.OUTPUT_LABELS,
        thresholds={"present": 0.5, "grade_from_ratio_rule": 1.0 if rule else 0.0},
    )
    write_card(spec, directory)
    fm.clear_cache()
    return root


def sagittal() -> Volume:
    a = np.eye(4)
    a[:3, 0] = (3.0, 0.0, 0.0)
    a[:3, 1] = (0.0, 0.0, -1.0)
    a[:3, 2] = (0.0, 1.0, 0.0)
    a[:3, 3] = (-30.0, -60.0, 80.0)
    arr = np.random.default_rng(1).random((21, 160, 120)).astype(np.float32)
    return Volume(arr, a, (3.0, 1.0, 1.0), "1.2.3", "SAG T2", SeriesKind.SAGITTAL_T2)


def test_network_gives_two_ordinal_logits_and_a_ratio_per_crop() -> None:
    net = fm.ForaminalNet(fm.ForaminalConfig(in_channels=fc.IN_CHANNELS, stem=4, widths=(4, 6))).eval()
    out = net(torch.rand(3, fc.IN_CHANNELS, fc.SIZE, fc.SIZE))
    assert out.shape == (3, len(fm.OUTPUT_LABELS))
    net.set_temperature([2.0, 4.0])
    halved = net(torch.zeros(1, fc.IN_CHANNELS, fc.SIZE, fc.SIZE))
    net.set_temperature([1.0, 1.0])
    plain = net(torch.zeros(1, fc.IN_CHANNELS, fc.SIZE, fc.SIZE))
    assert torch.allclose(halved[0, :2] * torch.tensor([2.0, 4.0]), plain[0, :2], atol=1e-5)
    assert torch.allclose(halved[0, 2], plain[0, 2])  # temperature never touches the ratio


def test_loading_refuses_weights_other_than_the_cards(tmp_path: Path) -> None:
    root = write_model(tmp_path, rule=True, tamper=True)
    with pytest.raises(ModelError, match="hash mismatch"):
        fm.load_foraminal("foraminal", root)


def test_card_with_other_labels_is_refused(tmp_path: Path) -> None:
    root = write_model(tmp_path, rule=True)
    card = root / "foraminal" / "card.json"
    data = json.loads(card.read_text())
    data["labels"] = ["something", "else", "entirely"]
    card.write_text(json.dumps(data))
    with pytest.raises(ModelError, match="labels"):
        fm.load_foraminal("foraminal", root)


def test_model_is_loaded_once_per_process(tmp_path: Path) -> None:
    root = write_model(tmp_path, rule=True)
    assert fm.load_foraminal("foraminal", root) is fm.load_foraminal("foraminal", root)


@pytest.mark.parametrize("rule", [True, False])
def test_stage_reads_every_level_and_side_and_labels_the_ratio_as_model_estimated(
    tmp_path: Path, rule: bool
) -> None:
    root = write_model(tmp_path, rule=rule)
    vol = sagittal()
    centres = {Level.L3_L4: np.array([0.0, -20.0, 40.0]), Level.L4_L5: np.array([0.0, -18.0, 5.0])}
    normals = dict.fromkeys(centres, np.array([0.0, 0.0, 1.0]))
    readings = stage.estimate_foramina(vol, centres, normals, models_dir=root)
    assert set(readings) == {(lv, s) for lv in centres for s in (Side.LEFT, Side.RIGHT)}
    for (level, side), r in readings.items():
        assert (r.level, r.side) == (level, side)
        assert 0.0 <= r.estimate.p_severe <= r.estimate.p_present <= 1.0
        m = r.ratio
        assert m.name is MeasurementName.FORAMINAL_AREA_RATIO and m.side is side
        assert m.provenance.plane.value == "sagittal"
        assert "model-estimated" in m.provenance.method
        assert m.reliable is rule and (not m.issues) is rule
    # the reported slice lies on the finding's side: slices run toward patient left here
    left = readings[(Level.L3_L4, Side.LEFT)].ratio.provenance.slice_index
    right = readings[(Level.L3_L4, Side.RIGHT)].ratio.provenance.slice_index
    assert left > 10 > right
    assert stage.estimate_foramina(vol, {}, {}, models_dir=root) == {}


def test_quick_read_merge_replaces_only_the_foraminal_estimates(tmp_path: Path) -> None:
    from cds.domain import Condition
    from cds.pipeline import measure as ms
    from cds.pipeline.classify import LevelProbabilities
    from cds.pipeline.grade import SeverityEstimate
    from cds.pipeline.quick_read import LevelMeasurements, _with_foramina

    base = SeverityEstimate(0.5, 0.1)
    probs = LevelProbabilities(Level.L4_L5, dict.fromkeys(Condition, base))
    dsca = ms.Measurement(MeasurementName.DSCA_MM2, 90.0, ms.Provenance(ms.Plane.AXIAL, 0, "x"))
    measured = LevelMeasurements({Condition.SPINAL_CANAL: (dsca,)})
    ratio = stage.ratio_measurement(0.3, Side.LEFT, 4, "1.0.0", reliable=True)
    reading = stage.ForaminalReading(Level.L4_L5, Side.LEFT, SeverityEstimate(0.9, 0.7), ratio)
    p2, m2 = _with_foramina(probs, measured, {(Level.L4_L5, Side.LEFT): reading})
    assert p2.estimates[Condition.LEFT_FORAMINAL] == SeverityEstimate(0.9, 0.7)
    assert p2.estimates[Condition.RIGHT_FORAMINAL] == base  # no reading: the classifier's stays
    assert p2.estimates[Condition.SPINAL_CANAL] == base
    assert m2.by_condition[Condition.LEFT_FORAMINAL] == (ratio,)
    assert m2.by_condition[Condition.SPINAL_CANAL] == (dsca,)
    assert dataclasses.is_dataclass(p2)
