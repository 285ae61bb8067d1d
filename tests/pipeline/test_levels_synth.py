"""Level labelling on a generated study (fixed seed) against the generator's truth labels.

The masks are built from the truth label volume of the sagittal series (so the test checks the
labelling logic on real lordotic geometry, whatever the shipped network's accuracy), then the two
false positives that shifted every level by one with sagittal_seg 1.0.0 are added: a thin band on
the fused S1-S2 line and a disc-like blob in front of the spine.
"""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from cds.domain import Level
from cds.pipeline.levels import label_levels
from cds.pipeline.segment import SagittalMasks, SagittalOrientation

SEED = 7311
#: (truth labels in the model orientation, (row, col) spacing, label value -> name)
Truth = tuple[np.ndarray, tuple[float, float], dict[int, str]]


@pytest.fixture(scope="module")
def truth(tmp_path_factory: pytest.TempPathFactory) -> Truth:
    """(truth labels in the model orientation, (row, col) spacing, label value -> name)."""
    from cds.dicom import load_study
    from cds.pipeline.quick_read import model_oriented
    from cds.synth.protocol import StudyOptions
    from cds.synth.study import generate_study

    folder = generate_study(
        SEED, tmp_path_factory.mktemp("levels"), StudyOptions(sag_matrix=(256,), ax_matrix=(224,))
    )
    native = load_study(folder / "dicom").sagittal_t2
    table = json.loads((folder / "truth" / "labels.json").read_text())
    raw = np.load(folder / "truth" / table["series"][native.series_uid]["file"])["labels"]
    labels = SagittalOrientation.from_affine(native.affine).apply(raw)
    spacing = model_oriented(native).spacing_mm
    return labels, (float(spacing[1]), float(spacing[2])), {int(k): v for k, v in table["labels"].items()}


def _masks(labels: np.ndarray, names: dict[int, str]) -> SagittalMasks:
    def union(prefixes: tuple[str, ...]) -> np.ndarray:
        values = [v for v, n in names.items() if n.startswith(prefixes)]
        return np.isin(labels, values)

    # SPIDER-style classes: vertebra = body + posterior elements; the sacrum is not a vertebra here
    # on purpose (the network did not label it reliably), which is the hard case for counting.
    sacral = tuple(
        f"{kind}_S{i}" for kind in ("vertebra", "posterior_elements", "facets") for i in range(1, 5)
    )
    vertebra = union(("vertebra_", "posterior_elements_", "facets_")) & ~union(sacral)
    return SagittalMasks(
        disc=union(("disc_",)), vertebra=vertebra, canal=union(("dural_sac", "cauda", "cord"))
    )


def _named(result_centroid: tuple[float, float, float], labels: np.ndarray, names: dict[int, str]) -> str:
    k, r, c = (round(v) for v in result_centroid)
    patch = labels[k, max(0, r - 3) : r + 4, max(0, c - 3) : c + 4].ravel()
    discs = [names[int(v)] for v in patch if names.get(int(v), "").startswith("disc_")]
    return Counter(discs).most_common(1)[0][0].removeprefix("disc_") if discs else "none"


def test_truth_masks_name_every_lumbar_disc(truth: Truth) -> None:
    labels, spacing, names = truth
    result = label_levels(_masks(labels, names), spacing)
    named = {d.level: _named(d.centroid_voxel, labels, names) for d in result.discs if d.level}
    assert named == {lv: lv.value for lv in Level}
    assert not result.uncertain, result.reasons


def test_sacral_band_and_abdominal_blob_do_not_shift_the_levels(truth: Truth) -> None:
    labels, spacing, names = truth
    clean = _masks(labels, names)
    disc = clean.disc.copy()
    s1 = np.isin(labels, [v for v, n in names.items() if n == "vertebra_S1"])
    s2 = np.isin(labels, [v for v, n in names.items() if n == "vertebra_S2"])
    # the S1-S2 junction: S1 pixels with S2 just below (rows run caudal), two pixels thick
    band = s1 & (np.roll(s2, -1, axis=1) | np.roll(s2, -2, axis=1))
    assert band.sum() > 0
    disc |= band | np.roll(band, 1, axis=1)
    # a bowel loop in front of L4: disc-like signal far anterior to the spine
    l4 = np.argwhere(np.isin(labels, [v for v, n in names.items() if n == "vertebra_L4"]))
    _, r, c = (int(x) for x in np.median(l4, axis=0))
    disc[:, r - 4 : r + 4, max(0, c - 70) : max(8, c - 40)] = True
    result = label_levels(SagittalMasks(disc, clean.vertebra, clean.canal), spacing)
    named = {d.level: _named(d.centroid_voxel, labels, names) for d in result.discs if d.level}
    assert named == {lv: lv.value for lv in Level}, result.reasons
