"""Ingestion of a study written by the synthetic generator (cds.synth): geometry agrees with the
generator's own affines, label volumes line up with Volume.array, and every axial block maps to the
disc level the generator aimed it at, through patient coordinates only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cds.dicom import SeriesKind, Study, load_study
from cds.dicom.levels import slice_levels
from cds.domain import Level


@pytest.fixture(scope="module")
def synth_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Study, dict[str, Any]]:
    from cds.synth.study import generate_study

    root = generate_study(seed=11, out_dir=tmp_path_factory.mktemp("synth"))
    labels = json.loads((root / "truth" / "labels.json").read_text())
    return root, load_study(root / "dicom"), labels


def test_series_selected_and_geometry_matches_generator(
    synth_study: tuple[Path, Study, dict[str, Any]],
) -> None:
    _, study, labels = synth_study
    assert study.sagittal_t2.kind is SeriesKind.SAGITTAL_T2 and study.sagittal_t1 is not None
    assert len(study.axial_t2) == 5
    assert len({v.frame_of_reference_uid for v in study.series}) == 1  # one patient space
    for volume in study.series:
        truth = labels["series"][volume.series_uid]
        assert truth["kind"] == volume.kind.value
        assert tuple(truth["shape"]) == volume.shape
        np.testing.assert_allclose(volume.affine, np.array(truth["affine"]), atol=1e-4)


def test_label_volumes_line_up_with_images(synth_study: tuple[Path, Study, dict[str, Any]]) -> None:
    root, study, labels = synth_study
    sag = study.sagittal_t2
    mask = np.load(root / "truth" / labels["series"][sag.series_uid]["file"])["labels"]
    assert mask.shape == sag.shape
    names = {int(k): v for k, v in labels["labels"].items()}
    csf = np.isin(mask, [k for k, v in names.items() if v == "dural_sac"] or labels["groups"]["canal"])
    bone = np.isin(mask, labels["groups"]["vertebra"])
    assert csf.any() and bone.any()
    # T2: CSF is bright, bone (marrow + cortex) darker; only true if labels and pixels share the slice order
    assert sag.array[csf].mean() > sag.array[bone].mean()


def test_axial_blocks_map_to_their_levels(synth_study: tuple[Path, Study, dict[str, Any]]) -> None:
    root, study, labels = synth_study
    sag = study.sagittal_t2
    mask = np.load(root / "truth" / labels["series"][sag.series_uid]["file"])["labels"]
    value_of = {v: int(k) for k, v in labels["labels"].items()}
    centres = {
        level: sag.voxel_to_patient(np.argwhere(mask == value_of[f"disc_{level.value}"]).mean(axis=0))
        for level in Level
    }
    for axial in study.axial_t2:
        aimed = Level(labels["series"][axial.series_uid]["level"])
        found = slice_levels(axial, centres)
        middle = found[axial.shape[0] // 2]
        assert middle.level is aimed and middle.offset_mm is not None and abs(middle.offset_mm) < 3.0
        assert {s.level for s in found} <= {aimed, None}
