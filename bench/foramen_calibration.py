"""Calibrate and score the foraminal area ratio estimated from the axial segmentation.

The generator (cds/synth/measure.py) defines the ratio on the parasagittal plane through the
pedicles; the pipeline sees the foramen on the level's axial slices only. This script
1. prints the unnarrowed axial foramen area per level (median over foramina graded normal, from the
   truth label volumes): cds.pipeline.measure.UNNARROWED_AXIAL_FORAMEN_MM2;
2. runs the axial U-Net on each level's axial series (the truth's series-to-level mapping, so the
   figure isolates the measurement from level labelling) and fits the linear map from the widest
   axial area fraction to the truth ratio on the --fit studies: FORAMEN_RATIO_INTERCEPT/_SLOPE;
3. scores the shipped constants on the --score studies: MAE of the ratio and grade agreement.

Run:  .venv/bin/python bench/foramen_calibration.py --data /tmp/pipe40 --fit 20:40 --score 0:20
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def _range(text: str) -> slice:
    a, b = text.split(":")
    return slice(int(a), int(b))


def _grade(ratio: np.ndarray) -> np.ndarray:
    return np.where(ratio < 0.35, 2, np.where(ratio < 0.6, 1, 0))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--fit", type=_range, default=_range("20:40"))
    parser.add_argument("--score", type=_range, default=_range("0:20"))
    parser.add_argument("--models-dir", type=Path)
    args = parser.parse_args()

    from cds.dicom import load_study
    from cds.domain import Side
    from cds.pipeline import axial as ax
    from cds.pipeline import measure as ms

    studies = sorted(p for p in args.data.iterdir() if (p / "truth" / "labels.json").is_file())

    def collect(chosen: list[Path]) -> list[tuple[str, float, float, float]]:
        rows = []
        for folder in chosen:
            table = json.loads((folder / "truth" / "labels.json").read_text())
            truth = json.loads((folder / "truth" / "findings.json").read_text())["measurements"]
            study = load_study(folder / "dicom")
            for volume in study.axial_t2:
                level = table["series"].get(volume.series_uid, {}).get("level")
                if level is None:
                    continue
                seg = ax.segment_level(
                    volume.array, volume.affine, range(volume.shape[0]), models_dir=args.models_dir
                )
                for side in Side:
                    m = ms.foramen_ratio_from_axial(
                        seg.mask(ax.FORAMEN), seg.mask(ax.SAC), seg.label_spacing_mm, side, level
                    )
                    areas = ms.axial_foramen_areas(
                        seg.mask(ax.FORAMEN), seg.mask(ax.SAC), seg.label_spacing_mm, side
                    )
                    fraction = float(areas.max()) / ms.UNNARROWED_AXIAL_FORAMEN_MM2[level]
                    rows.append(
                        (level, fraction, m.value, float(truth[level]["foraminal_area_ratio"][side.value]))
                    )
        return rows

    fit = collect(studies[args.fit])
    x = np.array([r[1] for r in fit])
    y = np.array([r[3] for r in fit])
    design = np.stack([np.ones_like(x), x], axis=1)
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    print(f"fit on {len(fit)} foramina: FORAMEN_RATIO_INTERCEPT = {coef[0]:.3f}, SLOPE = {coef[1]:.3f}")
    score = collect(studies[args.score])
    est = np.array([r[2] for r in score])
    tru = np.array([r[3] for r in score])
    print(
        f"scored on {len(score)} foramina ({args.score.start}:{args.score.stop}) with the shipped constants: "
        f"MAE {np.abs(est - tru).mean():.3f}, grade agreement {(_grade(est) == _grade(tru)).mean():.1%}, "
        f"corr {np.corrcoef(est, tru)[0, 1]:.2f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
