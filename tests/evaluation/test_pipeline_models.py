"""The evaluation names every model the quick read uses (its model list and its cache keys)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from cds.evaluation import run


def test_every_model_the_quick_read_loads_is_listed(monkeypatch: pytest.MonkeyPatch) -> None:
    import cds.ml.classifier
    import cds.ml.foraminal
    import cds.ml.loading
    import cds.ml.subarticular
    from cds.pipeline import quick_read

    loaded: list[str] = []

    def fake(name: str, _models_dir: Path | None = None, *_args: Any, **_kwargs: Any) -> Any:
        loaded.append(name)
        return SimpleNamespace(spec=SimpleNamespace(tag=f"{name}@0"))

    monkeypatch.setattr(cds.ml.loading, "load_model", fake)
    monkeypatch.setattr(cds.ml.classifier, "load_classifier", fake)
    monkeypatch.setattr(cds.ml.foraminal, "load_foraminal", fake)
    monkeypatch.setattr(cds.ml.subarticular, "load_subarticular", fake)
    versions = quick_read._load_models(None)
    assert set(loaded) == set(versions)
    missing = set(loaded) - set(run.pipeline_models())
    assert not missing, f"add {sorted(missing)} to cds.evaluation.run.pipeline_models"
    assert {"foraminal", "subarticular", "sac_fine"} <= set(run.pipeline_models())


def test_models_used_by_the_records_are_read_from_their_model_versions() -> None:
    records: list[dict[str, Any]] = [
        {"model_versions": {"classifier": "classifier@2.0.0", "foraminal": "foraminal@1.0.0"}},
        {"status": "failed"},
        {"model_versions": {"sagittal_seg": "sagittal_seg@1.2.0"}},
    ]
    assert run.models_used(records) == ["classifier", "foraminal", "sagittal_seg"]


def test_model_cards_of_the_shipped_models_include_the_foraminal_model() -> None:
    cards = run.model_cards(None)
    assert set(cards) == set(run.pipeline_models())
    assert cards["foraminal"]["version"] and len(str(cards["foraminal"]["sha256"])) == 64
