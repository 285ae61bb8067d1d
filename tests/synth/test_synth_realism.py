"""Realism properties the synthetic-to-real transfer depends on (gaps found against SPIDER, issue 3):
a thecal sac of real size that is the brightest structure on sagittal T2, and a spine in the posterior
half of the sagittal field with the abdomen in front of it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom

from cds.synth.labels import GT_GROUPS


def _mid_sagittal_t2(root: Path) -> tuple[np.ndarray, np.ndarray, float]:
    table = json.loads((root / "truth" / "labels.json").read_text())
    uid = next(u for u, s in table["series"].items() if s["kind"] == "sagittal_t2")
    dss = [pydicom.dcmread(p) for p in sorted((root / "dicom").glob("*.dcm"))]
    dss = sorted((d for d in dss if d.SeriesInstanceUID == uid), key=lambda d: int(d.InstanceNumber))
    labels = np.load(root / "truth" / table["series"][uid]["file"])["labels"]
    k = len(dss) // 2
    return dss[k].pixel_array.astype(np.float64), labels[k], float(dss[k].PixelSpacing[1])


def test_thecal_sac_is_thick_and_the_brightest_structure_on_t2(small_study: Path) -> None:
    img, lab, col_mm = _mid_sagittal_t2(small_study)
    canal = np.isin(lab, GT_GROUPS["canal"])
    vertebra = np.isin(lab, GT_GROUPS["vertebra"])
    disc = np.isin(lab, GT_GROUPS["disc"])
    # anteroposterior thickness (along the columns) of the sac on each row that has one; the upper quartile
    # skips the stenotic levels and the tapering sacral end (a healthy sac is ~12-18 mm, SPIDER likewise)
    widths = canal.sum(axis=1)
    ap_mm = float(np.percentile(widths[widths > 0], 75)) * col_mm
    assert 11.0 <= ap_mm <= 22.0, ap_mm
    core = canal & np.roll(canal, 1, axis=1) & np.roll(canal, -1, axis=1)  # away from partial volume
    assert np.median(img[core]) > np.median(img[vertebra])
    assert np.median(img[core]) > np.median(img[disc])
    assert np.median(img[core]) > np.percentile(img, 95)


def test_spine_lies_in_the_posterior_half_of_the_sagittal_field(small_study: Path) -> None:
    _, lab, _ = _mid_sagittal_t2(small_study)
    cols = np.nonzero(np.isin(lab, GT_GROUPS["canal"]))[1]
    # anterior is column 0: the canal sits behind the image centre, with room for the abdomen in front
    assert np.median(cols) > 0.5 * lab.shape[1]
