"""Level-identification accuracy of the sagittal stage against the generator's truth label volumes.

For every generated study (``cds synth`` output): segment the sagittal T2 as quick_read does, label
the discs (cds.pipeline.levels), and look up which true disc each labelled disc is by the truth
label volume of the sagittal series (``truth/labels/<series>.npz``, re-oriented like the image).
A level counts as correctly named when the disc the pipeline calls Lx-Ly is truly the Lx-Ly disc;
a level the pipeline did not find counts as wrong. Uncertain labellings are counted both ways
(the figure is over all levels; the flagged ones are listed with their reasons).

Run:  .venv/bin/python bench/level_accuracy.py --data /tmp/pipe40 [--n 40] [--verbose]
      .venv/bin/python bench/level_accuracy.py --data /work/data/synth-train --split validation

``--split PART`` restricts the studies to one part of ``DATA/split.json`` (choose on "validation";
never tune on the evaluation's test split).

``--spider DIR`` (e.g. ../shared/data/spider-t2-sagittal) adds a check of the labelling logic alone
on real anatomy: SPIDER's own masks (no network) have no per-level labels, so it counts the patients
whose disc labelled L5-S1 is the lowest disc of the mask, and how many of the others are flagged.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np


def _truth_names(study_dir: Path) -> tuple[dict[int, str], dict[str, str]]:
    table = json.loads((study_dir / "truth" / "labels.json").read_text())
    names = {int(k): v for k, v in table["labels"].items()}
    files = {uid: s["file"] for uid, s in table["series"].items()}
    return names, files


def true_disc_name(truth: np.ndarray, names: dict[int, str], centroid: tuple[float, float, float]) -> str:
    """Most frequent truth disc label within 4 pixels of the labelled disc's centroid (its slice)."""
    k, r, c = (round(v) for v in centroid)
    k = min(max(k, 0), truth.shape[0] - 1)
    patch = truth[k, max(0, r - 4) : r + 5, max(0, c - 4) : c + 5].ravel()
    discs = [names[int(v)] for v in patch if names.get(int(v), "").startswith("disc_")]
    if not discs:
        return "none"
    return Counter(discs).most_common(1)[0][0].removeprefix("disc_")


def spider_check(root: Path) -> None:
    """Labelling on SPIDER truth masks: is L5-S1 the lowest masked disc, and are misses flagged?"""
    from PIL import Image
    from scipy import ndimage

    from cds.domain import Level
    from cds.pipeline.levels import label_levels
    from cds.pipeline.segment import SagittalMasks

    spacing = (0.46875, 0.46875)  # SPIDER's nominal pixel spacing (series.csv)
    right = flagged_misses = silent = 0
    patients = sorted(p for p in root.iterdir() if p.is_dir())
    for folder in patients:
        m = np.stack([np.array(Image.open(f)) for f in sorted(folder.glob("slice*_mask.png"))])
        labelling = label_levels(SagittalMasks(disc=m == 29, vertebra=m == 76, canal=m == 150), spacing)
        comps, n = ndimage.label(m[m.shape[0] // 2] == 29)
        rows = [np.nonzero(comps == i)[0].mean() for i in range(1, n + 1) if (comps == i).sum() > 100]
        l5 = labelling.by_level().get(Level.L5_S1)
        if l5 is not None and rows and abs(l5.centroid_voxel[1] - max(rows)) < 25:
            right += 1
        elif labelling.uncertain:
            flagged_misses += 1
        else:
            silent += 1
            print(f"SPIDER {folder.name}: L5-S1 not the lowest masked disc, not flagged")
    print(
        f"SPIDER truth masks: {len(patients)} patients, L5-S1 = lowest masked disc in {right}; "
        f"otherwise flagged {flagged_misses}, silent {silent}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--n", type=int, default=0, help="studies to use (0: all)")
    parser.add_argument("--split", help="only the studies of this part of DATA/split.json (e.g. validation)")
    parser.add_argument("--models-dir", type=Path)
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--spider", type=Path, help="also check the labelling on SPIDER truth masks")
    args = parser.parse_args()
    if args.spider:
        spider_check(args.spider)

    from cds.dicom import load_study
    from cds.domain import Level
    from cds.pipeline.levels import label_levels
    from cds.pipeline.quick_read import DEFAULT_STAGES, model_oriented
    from cds.pipeline.segment import SagittalOrientation

    studies = sorted(p for p in args.data.iterdir() if (p / "truth" / "labels.json").is_file())
    if args.split:
        from cds.train.sagittal_validation import split_names

        wanted = set(split_names(args.data, args.split))
        studies = [p for p in studies if p.name in wanted]
    if args.n:
        studies = studies[: args.n]
    correct = total = flagged = flagged_correct = 0
    errors: list[str] = []
    for folder in studies:
        study = load_study(folder / "dicom")
        native = study.sagittal_t2
        sagittal = model_oriented(native)
        masks = DEFAULT_STAGES.segment_sagittal(sagittal, args.models_dir)
        spacing = (float(sagittal.spacing_mm[1]), float(sagittal.spacing_mm[2]))
        labelling = label_levels(masks, spacing)
        names, files = _truth_names(folder)
        truth_raw = np.load(folder / "truth" / files[native.series_uid])["labels"]
        truth = SagittalOrientation.from_affine(native.affine).apply(truth_raw)
        found = {d.level: true_disc_name(truth, names, d.centroid_voxel) for d in labelling.discs if d.level}
        seq = [
            f"{d.level.value if d.level else '-'}={true_disc_name(truth, names, d.centroid_voxel)}"
            for d in labelling.discs
        ]
        ok = sum(found.get(lv) == lv.value for lv in Level)
        correct += ok
        total += len(Level)
        if labelling.uncertain:
            flagged += len(Level)
            flagged_correct += ok
        if ok < len(Level) or args.verbose:
            errors.append(f"{folder.name}: {ok}/5  {' '.join(seq)}  reasons={list(labelling.reasons)}")
    for line in errors:
        print(line)
    share = correct / max(1, total)
    print(f"studies: {len(studies)}  levels correctly named: {correct}/{total} = {share:.1%}")
    if flagged:
        n_flagged = flagged // len(Level)
        print(f"flagged uncertain: {n_flagged} studies, {flagged_correct}/{flagged} of their levels correct")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
