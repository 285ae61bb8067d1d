"""Weights load only when their sha256 matches the card; loading is lazy and once per process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cds.errors import ModelError
from cds.ml import loading
from cds.ml.spec import InputContract, ModelSpec, read_card, write_card
from cds.ml.unet import UNet2D, UNetConfig

CONTRACT = InputContract("test", (1.0, 1.0), (32, 32), "percentile", (1.0, 99.0))
ARCH = {"type": "UNet2D", "in_channels": 1, "num_classes": 4, "base_channels": 4, "depth": 3, "groups": 2}


def _write_model(root: Path, name: str = "tiny") -> ModelSpec:
    net = UNet2D(UNetConfig(base_channels=4, depth=3, groups=2))
    sha = loading.save_weights(net, root / name / "model.safetensors")
    spec = ModelSpec(
        name=name,
        version="0.0.1",
        sha256=sha,
        architecture=ARCH,
        input=CONTRACT,
        labels=("background", "disc", "vertebra", "canal"),
    )
    write_card(spec, root / name)
    return spec


@pytest.fixture(autouse=True)
def _fresh_cache() -> None:
    loading.clear_cache()


def test_card_round_trips_through_json(tmp_path: Path) -> None:
    spec = _write_model(tmp_path)
    again = read_card("tiny", tmp_path)
    assert again == spec
    assert again.tag == "tiny@0.0.1"
    assert again.input.input_size == (32, 32)


def test_loads_verified_weights_once_per_process(tmp_path: Path) -> None:
    _write_model(tmp_path)
    first = loading.load_model("tiny", tmp_path, device="cpu")
    second = loading.load_model("tiny", tmp_path, device="cpu")
    assert first is second
    assert str(first.device) == "cpu"
    assert not first.network.training


def test_hash_mismatch_raises_model_error(tmp_path: Path) -> None:
    _write_model(tmp_path)
    weights = tmp_path / "tiny" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit in the last tensor
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="hash mismatch"):
        loading.load_model("tiny", tmp_path)


def test_missing_weights_and_missing_card_raise_model_error(tmp_path: Path) -> None:
    _write_model(tmp_path)
    (tmp_path / "tiny" / "model.safetensors").unlink()
    with pytest.raises(ModelError, match="weights missing"):
        loading.load_model("tiny", tmp_path)
    with pytest.raises(ModelError, match="card missing"):
        loading.load_model("absent", tmp_path)


def test_malformed_card_raises_model_error(tmp_path: Path) -> None:
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "card.json").write_text(json.dumps({"name": "bad"}))
    with pytest.raises(ModelError, match="malformed"):
        loading.load_model("bad", tmp_path)


def test_card_whose_architecture_does_not_fit_the_weights_is_refused(tmp_path: Path) -> None:
    spec = _write_model(tmp_path)
    wrong = ModelSpec(**{**spec.to_json(), "input": CONTRACT, "labels": spec.labels})
    data = wrong.to_json()
    data["architecture"] = {**ARCH, "base_channels": 8}
    (tmp_path / "tiny" / "card.json").write_text(json.dumps(data))
    with pytest.raises(ModelError, match="do not fit"):
        loading.load_model("tiny", tmp_path)


def test_importing_the_stage_and_specs_does_not_import_torch() -> None:
    """The web process imports the pipeline's types; torch must stay out until a model runs."""
    code = (
        "import sys, cds.pipeline, cds.pipeline.segment, cds.pipeline.levels, cds.ml, cds.ml.spec;"
        "sys.exit(1 if 'torch' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
