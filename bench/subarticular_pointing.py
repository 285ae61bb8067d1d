"""Pointing game of the subarticular heatmaps: the subarticular model's Grad-CAM vs the classifier's.

When the subarticular model grades lateral recess findings, their heatmaps come from its Grad-CAM
(cds.explain.gradcam_subarticular). This bench scores those maps with the rule of FINDINGS.md
"Explanation ground truth" (a hit when the map's maximum, in patient mm on the native axial slice,
i.e. the ``peak_mm`` the product reports, lies within 3 mm of the cause region
``truth/causes/<level>_<side>_subarticular``; cds.explain.faithfulness.distance_to_region_mm), and
scores the classifier's maps (cds.explain.gradcam, what was shown before) on the same findings.
It also runs the deletion check on the subarticular model's maps (the present logit with the map's
top decile blurred vs the same shape at random places; cds.explain.faithfulness.deletion_batch).

Every truth moderate/severe subarticular finding of the chosen studies is explained on the crop
of the level the pipeline named the same (the axial series' own level in the truth labels must
agree; other levels are counted under ``skipped``). Default studies: the VALIDATION part of
/work/data/synth-train (never the evaluation split); nothing is tuned on these figures.

Run (about 5-10 s a study on 2 shared cores):
    nice -n 10 .venv/bin/python bench/subarticular_pointing.py --out /tmp/subarticular_pointing.json
    nice -n 10 .venv/bin/python bench/subarticular_pointing.py --data /work/data/synth-test --part all --n 30
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from cds.domain import Condition, Grade, Level, Side
from cds.explain.faithfulness import (
    DILATION_MM,
    deletion_summary,
    distance_to_region_mm,
    model_deletion_drops,
)

DEFAULT_DATA = Path("/work/data/synth-train")
SIDE_OF = {Condition.LEFT_SUBARTICULAR: Side.LEFT, Condition.RIGHT_SUBARTICULAR: Side.RIGHT}


def score_study(study_dir: Path, models_dir: Path | None) -> tuple[list[dict[str, Any]], dict[str, int]]:
    from cds.explain.gradcam import CamTarget, compute_maps
    from cds.explain.gradcam_inputs import level_input
    from cds.explain.gradcam_study import native_map_and_peak as classifier_peak
    from cds.explain.gradcam_subarticular import compute_recess_maps, native_map_and_peak, recess_inputs
    from cds.ml.classifier import load_classifier
    from cds.ml.subarticular import load_subarticular
    from cds.pipeline.classify import MODEL_NAME as CLASSIFIER
    from cds.pipeline.subarticular import MODEL_NAME
    from cds.train.subarticular_data import read_levels

    skipped: dict[str, int] = {}
    labels = json.loads((study_dir / "truth" / "labels.json").read_text())
    causes = labels.get("causes", {})
    truth = json.loads((study_dir / "truth" / "findings.json").read_text())["levels"]
    reads = read_levels(study_dir)
    wanted: list[tuple[Level, Condition, Grade]] = []
    for lv_name, conds in truth.items():
        level = Level(lv_name)
        for cond in SIDE_OF:
            grade = Grade(conds[cond.value]["grade"])
            if grade is Grade.NORMAL_MILD:
                continue
            series = reads.volumes.get(level)
            true_level = None
            if series is not None:
                true_level = dict(labels.get("series", {})).get(series.series_uid, {}).get("level")
            if series is None or true_level != level.value:
                skipped["level_not_analysed_or_misnamed"] = (
                    skipped.get("level_not_analysed_or_misnamed", 0) + 1
                )
                continue
            if f"{level.value}_{cond.value}" not in causes:
                skipped["no_cause_mask"] = skipped.get("no_cause_mask", 0) + 1
                continue
            wanted.append((level, cond, grade))
    if not wanted:
        return [], skipped
    inputs = recess_inputs(reads.segs, reads.offsets, reads.volumes)
    loaded = load_subarticular(MODEL_NAME, models_dir)
    keys = [(lv, SIDE_OF[c]) for lv, c, _ in wanted]
    cams = compute_recess_maps(loaded, inputs, keys)
    # Deletion check of the maps users see: column 0 is the present logit they explain.
    drops = model_deletion_drops(
        loaded.network,
        [(inputs[k].crop.array, cam.crop_map, 0) for k, cam in zip(keys, cams, strict=True)],
        np.random.default_rng(0),
    )
    level_inputs = {lv: level_input(lv, reads.segs[lv], reads.volumes[lv]) for lv in {w[0] for w in wanted}}
    targets = [CamTarget(lv, c) for lv, c, _ in wanted]
    classifier_cams = compute_maps(
        load_classifier(CLASSIFIER, models_dir), {lv: i.crop for lv, i in level_inputs.items()}, targets
    )
    volumes = {}
    for v in reads.volumes.values():
        volumes[v.series_uid] = v
    rows = []
    for (level, cond, grade), cam, ccam, drop in zip(wanted, cams, classifier_cams, drops, strict=True):
        cause = causes[f"{level.value}_{cond.value}"]
        volume = volumes.get(cause["series_uid"])
        if volume is None:
            from cds.dicom import load_study

            volume = next(
                s for s in load_study(study_dir / "dicom").series if s.series_uid == cause["series_uid"]
            )
            volumes[volume.series_uid] = volume
        with np.load(study_dir / "truth" / cause["file"]) as z:
            mask = z["mask"]
        _n, _p, peak_mm = native_map_and_peak(cam, inputs[(level, SIDE_OF[cond])])
        _cn, _cp, c_peak_mm = classifier_peak(ccam, level_inputs[level])
        d = None if peak_mm is None else distance_to_region_mm(np.asarray(peak_mm), mask, volume)
        cd = None if c_peak_mm is None else distance_to_region_mm(np.asarray(c_peak_mm), mask, volume)
        rows.append(
            {
                "study": study_dir.name,
                "level": level.value,
                "condition": cond.value,
                "truth_grade": grade.value,
                "subarticular_distance_mm": None if d is None else round(d, 2),
                "subarticular_hit": d is not None and d <= DILATION_MM,
                "classifier_distance_mm": None if cd is None else round(cd, 2),
                "classifier_hit": cd is not None and cd <= DILATION_MM,
                "subarticular_drop_top": round(drop[1], 4),
                "subarticular_drop_random": round(drop[2], 4),
            }
        )
    return rows, skipped


def main(argv: list[str] | None = None) -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument(
        "--part",
        default="validation",
        help="part of split.json to score; 'all': every study folder, sorted (the evaluation's order: "
        "--data /work/data/synth-test --part all --n 30 are the evaluation's faithfulness studies)",
    )
    parser.add_argument("--n", type=int, default=0, help="first N studies of the part (0 = all)")
    parser.add_argument("--models-dir", type=Path)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("/tmp/subarticular_pointing.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.part == "all":
        names = sorted(p.name for p in args.data.iterdir() if (p / "truth" / "findings.json").is_file())
    else:
        parts = json.loads((args.data / "split.json").read_text())
        if args.part not in parts:
            parser.error(f"split.json has no {args.part!r} part")
        names = parts[args.part]
    names = names[: args.n or None]
    rows: list[dict[str, Any]] = []
    skipped: dict[str, int] = {}
    for i, name in enumerate(names):
        got, why = score_study(args.data / name, args.models_dir)
        rows.extend(got)
        for k, v in why.items():
            skipped[k] = skipped.get(k, 0) + v
        print(f"{i + 1}/{len(names)} {name}: {len(got)} findings", file=sys.stderr)

    def rate(key: str, sel: list[dict[str, Any]]) -> dict[str, Any]:
        hits = sum(bool(r[key]) for r in sel)
        return {"hits": hits, "n": len(sel), "rate": round(hits / len(sel), 4) if sel else None}

    summary: dict[str, Any] = {"data": str(args.data), "part": args.part, "studies": len(names)}
    for model in ("subarticular", "classifier"):
        summary[model] = {
            "all": rate(f"{model}_hit", rows),
            **{
                c.value: rate(f"{model}_hit", [r for r in rows if r["condition"] == c.value]) for c in SIDE_OF
            },
        }
    summary["subarticular"]["deletion"] = {
        "all": deletion_summary(
            [r["subarticular_drop_top"] for r in rows], [r["subarticular_drop_random"] for r in rows]
        ),
        **{
            c.value: deletion_summary(
                [r["subarticular_drop_top"] for r in rows if r["condition"] == c.value],
                [r["subarticular_drop_random"] for r in rows if r["condition"] == c.value],
            )
            for c in SIDE_OF
        },
    }
    summary["skipped"] = skipped
    args.out.write_text(json.dumps({**summary, "findings": rows}, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
