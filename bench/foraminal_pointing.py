"""Pointing game of the foraminal heatmaps users see: Grad-CAM of the foraminal model.

cds.explain.faithfulness scores the axial classifier's maps for every condition, foraminal ones
included; but foraminal findings are graded by the foraminal model (cds.pipeline.foraminal) and
explained by Grad-CAM on *that* model (cds.explain.gradcam_foramen), on a parasagittal crop.
This bench scores those maps with the same rule (FINDINGS.md "Explanation ground truth"): a hit
when the map's maximum, in patient mm on the native sagittal slice (exactly the ``peak_mm`` the
product reports), lies within 3 mm of the cause region ``truth/causes/<level>_<side>_foraminal``
(faithfulness.distance_to_region_mm, in the geometry of the series labels.json names).

Two figures, as in faithfulness.py:
* ``pointing_game``: each truth moderate/severe foraminal finding is explained on the foramen crop
  cut at its *true* level (the pipeline-named disc whose centre is nearest the true disc's
  centroid in the sagittal truth labels), whatever the pipeline called that level;
* ``pointing_game_end_to_end``: the map of the foramen the pipeline *named* that level.
Only levels the foraminal stage analysed are scored; the others are counted under ``skipped``.
Evaluation only: nothing here is tuned on these figures.

Run (about 5-10 s a study on 2 shared cores):
    nice -n 5 .venv/bin/python bench/foraminal_pointing.py --out /tmp/foraminal_pointing.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from cds.domain import Condition, Grade, Level, Side
from cds.explain.faithfulness import (
    DILATION_MM,
    Rate,
    deletion_summary,
    distance_to_region_mm,
    model_deletion_drops,
)

if TYPE_CHECKING:
    from cds.dicom.volume import Volume
    from cds.explain.gradcam_foramen import ForamenInput

DEFAULT_DATA = Path("/work/data/synth-test")
DEFAULT_N = 30
SIDE_OF: Mapping[Condition, Side] = {
    Condition.LEFT_FORAMINAL: Side.LEFT,
    Condition.RIGHT_FORAMINAL: Side.RIGHT,
}
#: A named disc farther than this from every true disc centroid has no true level.
LEVEL_MATCH_MM = 15.0


@dataclass(frozen=True)
class Score:
    study: str
    level: Level  # true level of the finding
    condition: Condition
    truth_grade: Grade
    crop_level: Level  # pipeline name of the foramen crop that was explained
    hit: bool
    distance_mm: float | None  # None: empty map
    p_present: float  # sigmoid of the calibrated present logit of that crop
    #: Diagnostics of a miss, from the cause series' voxel boxes: gap along its slice axis
    #: (sagittal: left-right) and the in-plane distance ignoring that axis. None: empty map.
    slice_gap_mm: float | None = None
    in_plane_mm: float | None = None
    #: Deletion check (faithfulness.deletion_batch) of this map, present-logit units; saliency
    #: scores only (None for end-to-end ones).
    drop_top: float | None = None
    drop_random: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "study": self.study,
            "level": self.level.value,
            "condition": self.condition.value,
            "truth_grade": self.truth_grade.value,
            "crop_level": self.crop_level.value,
            "hit": self.hit,
            "distance_mm": None if self.distance_mm is None else round(self.distance_mm, 2),
            "p_present": round(self.p_present, 4),
            "slice_gap_mm": None if self.slice_gap_mm is None else round(self.slice_gap_mm, 2),
            "in_plane_mm": None if self.in_plane_mm is None else round(self.in_plane_mm, 2),
            "drop_top": None if self.drop_top is None else round(self.drop_top, 4),
            "drop_random": None if self.drop_random is None else round(self.drop_random, 4),
        }


def gap_components(point_mm: NDArray[np.float64], mask: NDArray[Any], volume: Volume) -> tuple[float, float]:
    """(gap along the slice axis to the nearest masked slice, in-plane distance to the region
    ignoring the slice axis), both in mm: tells a miss caused by the peak lying on a neighbouring
    sagittal slice (slices are ~4 mm apart) from one in the wrong place on the slice."""
    idx = np.argwhere(mask)
    p = volume.patient_to_voxel(np.asarray(point_mm, dtype=np.float64))
    out = np.maximum(np.abs(idx - p[None, :]) - 0.5, 0.0) * np.asarray(volume.spacing_mm)[None, :]
    return float(out[:, 0].min()), float(np.sqrt(out[:, 1] ** 2 + out[:, 2] ** 2).min())


def is_hit(distance_mm: float | None) -> bool:
    """FINDINGS.md: inside the cause region dilated by 3 mm (None: an empty map never hits)."""
    return distance_mm is not None and distance_mm <= DILATION_MM


def disc_centroids_mm(
    labels: Mapping[str, Any], study_dir: Path, series_uid: str
) -> dict[Level, NDArray[np.float64]]:
    """Centroid (patient mm) of each lumbar disc label in the truth labels of one series."""
    series = labels["series"].get(series_uid)
    if series is None:
        return {}
    with np.load(study_dir / "truth" / series["file"]) as z:
        vol = z["labels"]
    affine = np.asarray(series["affine"], dtype=np.float64)
    out: dict[Level, NDArray[np.float64]] = {}
    for code, name in labels["labels"].items():
        if not name.startswith("disc_"):
            continue
        try:
            level = Level(name.removeprefix("disc_"))
        except ValueError:
            continue  # thoracic discs
        idx = np.argwhere(vol == int(code))
        if idx.size:
            kij = np.append(idx.mean(axis=0), 1.0)
            out[level] = (affine @ kij)[:3]
    return out


def true_levels(
    foramina: Mapping[tuple[Level, Side], ForamenInput], centroids: Mapping[Level, NDArray[np.float64]]
) -> dict[Level, Level]:
    """true level -> pipeline name of the foramen crop cut there (nearest true disc centroid)."""
    out: dict[Level, Level] = {}
    named = {lv: inp.frame.origin for (lv, _side), inp in foramina.items()}
    for lv, origin in named.items():  # two crops on one true disc: the correctly named one wins
        if not centroids:
            break
        true, d = min(
            ((t, float(np.linalg.norm(origin - c))) for t, c in centroids.items()), key=lambda x: x[1]
        )
        if d <= LEVEL_MATCH_MM and (true not in out or lv is true):
            out[true] = lv
    return out


def score_study(study_dir: Path, models_dir: Path | None) -> tuple[list[Score], list[Score], dict[str, int]]:
    from cds.dicom import load_study
    from cds.explain.gradcam_foramen import compute_foramen_maps, native_map, peak
    from cds.explain.gradcam_inputs import traced_quick_read
    from cds.ml.foraminal import load_foraminal
    from cds.pipeline.foraminal import MODEL_NAME

    skipped: dict[str, int] = {}

    def skip(why: str) -> None:
        skipped[why] = skipped.get(why, 0) + 1

    study = load_study(study_dir / "dicom")
    traced = traced_quick_read(study, models_dir=models_dir)
    labels = json.loads((study_dir / "truth" / "labels.json").read_text())
    causes = labels.get("causes", {})
    truth = json.loads((study_dir / "truth" / "findings.json").read_text())
    foramina = traced.foramina
    sag_uids = {inp.series_uid for inp in foramina.values()}
    centroids = disc_centroids_mm(labels, study_dir, next(iter(sag_uids))) if sag_uids else {}
    crop_of_true = true_levels(foramina, centroids)

    saliency: list[tuple[tuple[Level, Side], Level, Condition, Grade]] = []
    end_to_end: list[tuple[tuple[Level, Side], Level, Condition, Grade]] = []
    for lv, conds in truth["levels"].items():
        for cond_name, data in conds.items():
            condition, grade = Condition(cond_name), Grade(data["grade"])
            if condition not in SIDE_OF or not grade.present:
                continue
            level, side = Level(lv), SIDE_OF[condition]
            if f"{lv}_{cond_name}" not in causes:
                skip("no_cause_mask")
                continue
            if not foramina:
                skip("foraminal_stage_did_not_run")
                continue
            if level in crop_of_true and (crop_of_true[level], side) in foramina:
                saliency.append(((crop_of_true[level], side), level, condition, grade))
            else:
                skip("true_level_not_analysed")
            if (level, side) in foramina:
                end_to_end.append(((level, side), level, condition, grade))
            else:
                skip("named_level_not_analysed")
    keys = list(dict.fromkeys(k for k, *_ in saliency + end_to_end))
    if not keys:
        return [], [], skipped
    loaded = load_foraminal(MODEL_NAME, models_dir)
    cams = dict(zip(keys, compute_foramen_maps(loaded, foramina, keys), strict=True))
    volumes = {v.series_uid: v for v in study.series}
    drops = model_deletion_drops(
        loaded.network,
        [(foramina[k].crop, cams[k].crop_map, 0) for k, *_ in saliency],  # column 0: present logit
        np.random.default_rng(0),
    )

    def score(
        key: tuple[Level, Side],
        level: Level,
        condition: Condition,
        grade: Grade,
        drop: tuple[float, float, float] | None = None,
    ) -> Score | None:
        cam, inp = cams[key], foramina[key]
        found = peak(native_map(cam, inp), inp)  # exactly the product's peak_mm
        cause = causes[f"{level.value}_{condition.value}"]
        volume = volumes.get(cause["series_uid"])
        if volume is None:
            skip("cause_series_not_loaded")
            return None
        distance: float | None = None
        gaps: tuple[float | None, float | None] = (None, None)
        if found is not None:
            point = np.asarray(found[1], dtype=np.float64)
            with np.load(study_dir / "truth" / cause["file"]) as z:
                distance = distance_to_region_mm(point, z["mask"], volume)
                gaps = gap_components(point, z["mask"], volume)
        return Score(
            study=study_dir.name,
            level=level,
            condition=condition,
            truth_grade=grade,
            crop_level=key[0],
            hit=is_hit(distance),
            distance_mm=distance,
            p_present=float(1.0 / (1.0 + np.exp(-cam.logit))),
            slice_gap_mm=gaps[0],
            in_plane_mm=gaps[1],
            drop_top=None if drop is None else drop[1],
            drop_random=None if drop is None else drop[2],
        )

    s = [score(*x, d) for x, d in zip(saliency, drops, strict=True)]
    e = [score(*x) for x in end_to_end]
    return [x for x in s if x is not None], [x for x in e if x is not None], skipped


def rates(scores: Sequence[Score]) -> dict[str, Any]:
    out: dict[str, Any] = {"overall": Rate(sum(s.hit for s in scores), len(scores)).to_json()}
    for c in SIDE_OF:
        group = [s for s in scores if s.condition is c]
        out[c.value] = Rate(sum(s.hit for s in group), len(group)).to_json()
    dists = [s.distance_mm for s in scores if s.distance_mm is not None]
    out["median_distance_mm"] = round(float(np.median(dists)), 2) if dists else None
    out["max_distance_mm"] = round(float(np.max(dists)), 2) if dists else None
    misses = [s for s in scores if not s.hit and s.slice_gap_mm is not None and s.in_plane_mm is not None]
    out["misses_in_plane_within_3mm"] = sum(
        s.in_plane_mm is not None and s.in_plane_mm <= DILATION_MM for s in misses
    )
    return out


def deletion_of(scores: Sequence[Score]) -> dict[str, Any]:
    """Deletion figures of the saliency maps, overall and per side (faithfulness.deletion_summary)."""
    scored = [s for s in scores if s.drop_top is not None and s.drop_random is not None]

    def summary(group: Sequence[Score]) -> dict[str, Any]:
        return deletion_summary(
            [float(s.drop_top or 0.0) for s in group], [float(s.drop_random or 0.0) for s in group]
        )

    out = {"overall": summary(scored)}
    for c in SIDE_OF:
        out[c.value] = summary([s for s in scored if s.condition is c])
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument(
        "--split", default=None, help="score this split.json part (e.g. validation) instead of all folders"
    )
    parser.add_argument("--n", type=int, default=DEFAULT_N, help="first N study folders, sorted")
    parser.add_argument("--models", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None, help="write the JSON report here")
    args = parser.parse_args(argv)
    if args.split is not None:
        parts = json.loads((args.data / "split.json").read_text(encoding="utf-8"))
        if args.split not in parts:
            parser.error(f"split.json has no {args.split!r} part")
        pool = sorted(Path(str(s)).name for s in parts[args.split])
    else:
        pool = sorted(p.name for p in args.data.iterdir() if (p / "truth" / "findings.json").is_file())
    names = pool[: args.n]
    saliency: list[Score] = []
    end_to_end: list[Score] = []
    skipped: dict[str, int] = {}
    for i, name in enumerate(names):
        try:
            s, e, sk = score_study(args.data / name, args.models)
        except Exception as exc:  # one unreadable study must not void the figure; counted
            sk, s, e = {f"study_failed:{type(exc).__name__}": 1}, [], []
        saliency += s
        end_to_end += e
        for k, v in sk.items():
            skipped[k] = skipped.get(k, 0) + v
        print(f"{i + 1}/{len(names)} {name}: {sum(x.hit for x in s)}/{len(s)}", file=sys.stderr, flush=True)
    report: dict[str, Any] = {
        "method": (
            "pointing game: Grad-CAM (foraminal model 'present' logit, cds.explain.gradcam_foramen) peak in "
            f"patient mm on the native sagittal slice within {DILATION_MM:g} mm of the cause region; "
            "deletion: drop of that logit when the crop map's top decile is blurred vs the same shape at "
            "random places (cds.explain.faithfulness.deletion_batch)"
        ),
        "data": str(args.data),
        "studies": names,
        "pointing_game": rates(saliency),
        "pointing_game_end_to_end": rates(end_to_end),
        "deletion": deletion_of(saliency),
        "skipped": skipped,
        "misses": [x.to_json() for x in saliency + end_to_end if not x.hit],
        "findings": [x.to_json() for x in saliency],
    }
    for title, key in (("true level", "pointing_game"), ("end to end", "pointing_game_end_to_end")):
        r = report[key]
        parts = ", ".join(f"{k} {v['hits']}/{v['n']}" for k, v in r.items() if isinstance(v, dict))
        print(f"{title}: {parts}; median distance {r['median_distance_mm']} mm")
    d = report["deletion"]["overall"]
    print(
        f"deletion (present logit): holds {d['holds']['hits']}/{d['holds']['n']}, mean drop top "
        f"{d['mean_drop_top']} vs random {d['mean_drop_random']}"
    )
    print(f"skipped: {skipped}")
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
