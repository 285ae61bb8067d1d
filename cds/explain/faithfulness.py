"""Is the Grad-CAM faithful? Measured on synthetic studies whose causes are known.

Two checks, per FINDINGS.md and issue 5:

* Pointing game: for every ground-truth moderate/severe finding at a level the pipeline analysed,
  the heatmap of that finding's condition is computed on that level's crop; a *hit* is when its
  maximum (in patient mm) lies inside the cause region (``truth/causes/<level>_<condition>.npz``,
  in the geometry of the series that truth/labels.json names) dilated by 3 mm. The region is the
  union of its voxels as boxes, so "dilated by 3 mm" is: distance from the peak to the nearest
  voxel box <= 3 mm, exact for any voxel size. Anchors: CheXlocalize CNN saliency 59.9 %,
  radiologists 80.1 %.
* Deletion: replacing the crop pixels of the map's top decile by a blurred copy of the crop must
  lower that condition's P(present) more than the same-shaped region moved to random places.
  Why blur, not zeros: zeroing the dural sac channel *creates* stenosis (a missing sac is a
  narrow canal), so zero-deletion raises the canal score and measures the wrong thing.

Two pointing figures, because level labelling is a separate stage with its own errors:
``pointing_game`` scores the saliency itself -- each truth-positive finding is explained on the
crop that was actually cut from its true level (the synthetic axial series records its level),
whatever name the pipeline gave that level; ``pointing_game_end_to_end`` scores what a user sees:
the heatmap of the finding at the level the pipeline *named* L (a labelling error misses).
``level_agreement`` is the share of analysed crops whose pipeline level is the true one.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from cds.domain import Condition, Grade, Level

if TYPE_CHECKING:
    from cds.dicom.study import Study
    from cds.dicom.volume import Volume
    from cds.explain.gradcam import CamMap
    from cds.explain.gradcam_geometry import CropPlacement
    from cds.explain.gradcam_inputs import TracedRead
    from cds.ml.classifier import LoadedClassifier

#: FINDINGS.md: a hit when the saliency maximum falls inside the cause region dilated by 3 mm.
DILATION_MM = 3.0
#: Deletion check: the top decile of the crop map is removed; random placements per finding.
DELETION_TOP_FRACTION = 0.10
DELETION_RANDOM_REPEATS = 8
#: Deletion fill: the crop blurred with this Gaussian sigma (pixels of 0.8 mm).
DELETION_BLUR_PX = 4.0


@dataclass(frozen=True)
class FindingScore:
    study: str
    level: Level  # the true level of the finding
    condition: Condition
    truth_grade: Grade
    crop_level: Level  # the pipeline's name of the level whose crop was explained
    hit: bool
    distance_mm: float | None  # peak to the cause region (0 inside); None: empty map
    p_present: float
    #: Deletion check, in present-logit units: drop with the map's top decile deleted, mean drop
    #: with the same region at random places (cds.explain.faithfulness.deletion_batch).
    drop_top: float
    drop_random: float

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
            "drop_top": round(self.drop_top, 4),
            "drop_random": round(self.drop_random, 4),
        }


@dataclass(frozen=True)
class Rate:
    hits: int
    n: int

    @property
    def rate(self) -> float | None:
        return self.hits / self.n if self.n else None

    def to_json(self) -> dict[str, Any]:
        return {"hits": self.hits, "n": self.n, "rate": None if self.rate is None else round(self.rate, 4)}


@dataclass(frozen=True)
class FaithfulnessReport:
    n_studies: int
    scores: tuple[FindingScore, ...]  # saliency: explained on the crop of the true level
    end_to_end: tuple[FindingScore, ...] = ()  # explained at the level the pipeline named
    level_agreement: Rate = Rate(0, 0)
    #: Truth-positive findings not scored, by reason (level not analysed, no cause mask, ...).
    skipped: Mapping[str, int] = field(default_factory=dict)

    @property
    def pointing(self) -> Rate:
        return Rate(sum(s.hit for s in self.scores), len(self.scores))

    def pointing_by_condition(self) -> dict[Condition, Rate]:
        out = {}
        for c in Condition:
            group = [s for s in self.scores if s.condition is c]
            out[c] = Rate(sum(s.hit for s in group), len(group))
        return out

    @property
    def deletion_holds(self) -> Rate:
        return Rate(sum(s.drop_top > s.drop_random for s in self.scores), len(self.scores))

    def to_json(self, *, include_findings: bool = False) -> dict[str, Any]:
        drops_top = [s.drop_top for s in self.scores]
        drops_random = [s.drop_random for s in self.scores]
        out: dict[str, Any] = {
            "method": (
                "pointing game: Grad-CAM maximum (classifier 'present' output of the finding's condition, "
                f"last conv block) inside the synthetic cause region dilated by {DILATION_MM:g} mm; "
                f"deletion: drop of the condition's present logit when the top {DELETION_TOP_FRACTION:.0%} "
                f"of the crop map is replaced by the blurred crop (sigma {DELETION_BLUR_PX:g} px) vs the "
                f"same shape at {DELETION_RANDOM_REPEATS} random places"
            ),
            "n_studies": self.n_studies,
            "n_findings": len(self.scores),
            "pointing_game": self.pointing.to_json(),
            "pointing_game_by_condition": {
                c.value: r.to_json() for c, r in self.pointing_by_condition().items()
            },
            "pointing_game_end_to_end": Rate(
                sum(s.hit for s in self.end_to_end), len(self.end_to_end)
            ).to_json(),
            "level_agreement": self.level_agreement.to_json(),
            "deletion": deletion_summary(drops_top, drops_random),
            "deletion_by_condition": {
                c.value: deletion_summary(
                    [s.drop_top for s in self.scores if s.condition is c],
                    [s.drop_random for s in self.scores if s.condition is c],
                )
                for c in Condition
            },
            "skipped": dict(self.skipped),
            "anchors": {"chexlocalize_cnn_saliency": 0.599, "chexlocalize_radiologists": 0.801},
            "target_hit_rate": 0.90,
        }
        if include_findings:
            out["findings"] = [s.to_json() for s in self.scores]
        return out


def deletion_summary(drops_top: Sequence[float], drops_random: Sequence[float]) -> dict[str, Any]:
    """Mean drops (present-logit units), the share of findings whose top-region drop beats the
    random regions' mean drop (``holds``, the check as issue 5 states it), the share where the
    top region moves the score more in either direction (``changes_more``) and how many top
    deletions raised the score: the deletion figures of every explaining model's report."""
    return {
        "score": "present logit",
        "mean_drop_top": round(float(np.mean(drops_top)), 4) if drops_top else None,
        "mean_drop_random": round(float(np.mean(drops_random)), 4) if drops_random else None,
        "holds": Rate(
            sum(t > r for t, r in zip(drops_top, drops_random, strict=True)), len(drops_top)
        ).to_json(),
        # Either direction: deleting the top region moves the score more than a random region.
        # Reported because a stenosis is the *absence* of CSF space, and blurring a recess or
        # canal's CSF into its walls can make it look narrower: the score then rises.
        "changes_more": Rate(
            sum(abs(t) > abs(r) for t, r in zip(drops_top, drops_random, strict=True)), len(drops_top)
        ).to_json(),
        "raises": sum(t < 0 for t in drops_top),
    }


def distance_to_region_mm(point_mm: NDArray[np.float64], mask: NDArray[Any], volume: Volume) -> float:
    """Distance from a patient point to the union of the mask's voxels (as boxes), in mm.

    Assumes orthogonal voxel axes (DICOM volumes); 0 when the point lies inside a voxel.
    """
    idx = np.argwhere(mask)
    if idx.size == 0:
        return float("inf")
    p = volume.patient_to_voxel(np.asarray(point_mm, dtype=np.float64))
    spacing = np.asarray(volume.spacing_mm, dtype=np.float64)
    outside = np.maximum(np.abs(idx - p[None, :]) - 0.5, 0.0) * spacing[None, :]
    return float(np.sqrt((outside**2).sum(axis=1)).min())


def crop_cause_mask(mask: NDArray[Any], volume: Volume, placement: CropPlacement) -> NDArray[np.bool_]:
    """The cause region as seen on a classifier crop: (size, size) bool, True where the crop
    pixel's centre (in patient mm) falls in a cause voxel (nearest voxel of the cause series).

    For training a localisation-aware classifier (e.g. a cause-mask auxiliary loss on the last
    conv block's class maps) with exactly the crops the pipeline cuts.
    """
    size = placement.size
    aa, bb = np.meshgrid(np.arange(size, dtype=np.float64), np.arange(size, dtype=np.float64), indexing="ij")
    mm = placement.native_to_patient(placement.crop_to_native(np.column_stack([aa.ravel(), bb.ravel()])))
    kij = np.rint(volume.patient_to_voxel(mm)).astype(np.int64)
    inside = np.all((kij >= 0) & (kij < np.asarray(mask.shape)[None, :]), axis=1)
    out = np.zeros(size * size, dtype=bool)
    k, i, j = kij[inside].T
    out[inside] = mask[k, i, j] > 0
    return out.reshape(size, size)


def top_region(crop_map: NDArray[np.floating]) -> NDArray[np.bool_]:
    """The map's top decile: its DELETION_TOP_FRACTION highest pixels, of those above zero.

    Not ``map >= quantile(map, 0.9)``: a Grad-CAM map is a ReLU and often zero on more than 90 %
    of the crop, and then that quantile is 0 and the "top" region was the whole crop, at the top
    and at every random place alike (no difference to measure)."""
    flat = np.asarray(crop_map, dtype=np.float64).ravel()
    k = min(int(np.ceil(DELETION_TOP_FRACTION * flat.size)), int(np.count_nonzero(flat > 0)))
    out = np.zeros(flat.size, dtype=bool)
    if k > 0:
        out[np.argpartition(-flat, k - 1)[:k]] = True
    return out.reshape(np.shape(crop_map))


def deletion_batch(
    crop: NDArray[np.float32], crop_map: NDArray[np.floating], rng: np.random.Generator
) -> NDArray[np.float32]:
    """The inputs of one finding's deletion check, (2 + DELETION_RANDOM_REPEATS, C, H, W): the
    intact crop, the crop with the map's top decile replaced by the blurred crop, and the same
    region shape rolled to random places (each in every channel). Shared by the three explaining
    models (classifier, foraminal, subarticular), whose crops are all (C, H, W)."""
    crop = np.asarray(crop, dtype=np.float32)
    fill = ndimage.gaussian_filter(crop, sigma=(0.0, DELETION_BLUR_PX, DELETION_BLUR_PX))
    top = top_region(crop_map)
    rows = [crop, np.where(top[None], fill, crop)]
    h, w = top.shape
    for _ in range(DELETION_RANDOM_REPEATS):
        shift = (int(rng.integers(h // 4, 3 * h // 4)), int(rng.integers(w // 4, 3 * w // 4)))
        rows.append(np.where(np.roll(top, shift, axis=(0, 1))[None], fill, crop))
    return np.stack(rows).astype(np.float32)


def deletion_result(scores: NDArray[np.floating]) -> tuple[float, float, float]:
    """(score of the intact crop, its drop with the top region deleted, mean drop with the region
    at random places) from the class scores of a deletion_batch, in its row order."""
    base = float(scores[0])
    return base, base - float(scores[1]), base - float(np.mean(scores[2:]))


def model_deletion_drops(
    network: Any,
    items: Sequence[tuple[NDArray[np.float32], NDArray[np.floating], int]],
    rng: np.random.Generator,
) -> list[tuple[float, float, float]]:
    """deletion_result per (crop, crop map, output column) item, the class score being that
    column of `network`'s output (a present logit), in one batched inference. For any of the
    explaining models: each explains a finding with the Grad-CAM of one present logit.

    Why the logit, not P(present): for most moderate/severe findings P(present) is above 0.99, so
    a deletion moves it by less than rounding and "top vs random" is decided by noise."""
    import torch

    if not items:
        return []
    batch = np.concatenate([deletion_batch(crop, crop_map, rng) for crop, crop_map, _ in items])
    device = next(network.parameters()).device
    with torch.inference_mode():
        scores = network(torch.from_numpy(batch).to(device)).cpu().numpy()
    per = 2 + DELETION_RANDOM_REPEATS
    return [
        deletion_result(scores[n * per : (n + 1) * per, column]) for n, (_, _, column) in enumerate(items)
    ]


def deletion_drops(
    loaded: LoadedClassifier,
    cams: Sequence[CamMap],
    crops: Mapping[Level, NDArray[np.float32]],
    rng: np.random.Generator,
) -> list[tuple[float, float, float]]:
    """Per classifier map: model_deletion_drops on the condition's present logit."""
    from cds.explain.gradcam import output_index

    items = [(crops[c.target.level], c.crop_map, output_index(c.target.condition)) for c in cams]
    return model_deletion_drops(loaded.network, items, rng)


def _truth_positives(study_dir: Path) -> list[tuple[Level, Condition, Grade]]:
    truth = json.loads((study_dir / "truth" / "findings.json").read_text())
    out = []
    for lv, conds in truth["levels"].items():
        for cond, data in conds.items():
            grade = Grade(data["grade"])
            if grade.present:
                out.append((Level(lv), Condition(cond), grade))
    return out


@dataclass(frozen=True)
class StudyScores:
    saliency: list[FindingScore]
    end_to_end: list[FindingScore]
    levels_agreeing: int
    levels_analysed: int
    skipped: dict[str, int]


def _true_level_of_series(labels: Mapping[str, Any], series_uid: str) -> Level | None:
    level = dict(labels.get("series", {})).get(series_uid, {}).get("level")
    return Level(level) if level else None


def score_study(study_dir: Path, *, models_dir: Path | None = None, seed: int = 0) -> StudyScores:
    """Pointing game and deletion for every truth-positive finding of one generated study."""
    from cds.dicom import load_study
    from cds.explain.gradcam_inputs import traced_quick_read

    study = load_study(study_dir / "dicom")
    traced = traced_quick_read(study, models_dir=models_dir)
    return score_traced(study_dir, study, traced, models_dir=models_dir, seed=seed)


def score_traced(
    study_dir: Path, study: Study, traced: TracedRead, *, models_dir: Path | None = None, seed: int = 0
) -> StudyScores:
    """score_study for a study already read with cds.explain.gradcam_inputs.traced_quick_read
    (e.g. by the evaluation, passing its own wrapped stages): no second quick read."""
    from cds.explain.gradcam import CamTarget, compute_maps
    from cds.explain.gradcam_study import native_map_and_peak
    from cds.ml.classifier import load_classifier
    from cds.pipeline.classify import MODEL_NAME

    skipped: dict[str, int] = {}

    def skip(why: str) -> None:
        skipped[why] = skipped.get(why, 0) + 1

    labels = json.loads((study_dir / "truth" / "labels.json").read_text())
    causes = labels.get("causes", {})
    # Which pipeline-named crop was cut from which true level (the synthetic series knows it).
    crop_of_true: dict[Level, Level] = {}
    agreeing = 0
    for named, inp in sorted(
        traced.inputs.items(),
        key=lambda kv: kv[0] != _true_level_of_series(labels, kv[1].placement.series_uid),
    ):
        true = _true_level_of_series(labels, inp.placement.series_uid)
        agreeing += int(true is named)
        if true is not None and true not in crop_of_true:
            crop_of_true[true] = named
    saliency: list[tuple[CamTarget, Level, Grade]] = []
    end_to_end: list[tuple[CamTarget, Level, Grade]] = []
    for level, condition, grade in _truth_positives(study_dir):
        if f"{level.value}_{condition.value}" not in causes:
            skip("no_cause_mask")
            continue
        if level in crop_of_true:
            saliency.append((CamTarget(crop_of_true[level], condition), level, grade))
        else:
            skip("true_level_not_analysed")
        if level in traced.inputs:
            end_to_end.append((CamTarget(level, condition), level, grade))
    unique = list(dict.fromkeys(t for t, _, _ in saliency + end_to_end))
    if not unique:
        return StudyScores([], [], agreeing, len(traced.inputs), skipped)
    loaded = load_classifier(MODEL_NAME, models_dir)
    crops = {lv: i.crop for lv, i in traced.inputs.items()}
    cams = dict(zip(unique, compute_maps(loaded, crops, unique), strict=True))
    saliency_cams = [cams[t] for t, _, _ in saliency]
    drops = deletion_drops(loaded, saliency_cams, crops, np.random.default_rng(seed))
    volumes = {v.series_uid: v for v in study.series}

    def score(
        target: CamTarget, level: Level, grade: Grade, drop: tuple[float, float, float]
    ) -> FindingScore | None:
        cam = cams[target]
        _native, _peak, peak_mm = native_map_and_peak(cam, traced.inputs[target.level])
        cause = causes[f"{level.value}_{target.condition.value}"]
        volume = volumes.get(cause["series_uid"])
        if volume is None:
            skip("cause_series_not_loaded")
            return None
        distance: float | None = None
        if peak_mm is not None:
            with np.load(study_dir / "truth" / cause["file"]) as z:
                distance = distance_to_region_mm(np.asarray(peak_mm), z["mask"], volume)
        return FindingScore(
            study=study_dir.name,
            level=level,
            condition=target.condition,
            truth_grade=grade,
            crop_level=target.level,
            hit=distance is not None and distance <= DILATION_MM,
            distance_mm=distance,
            p_present=float(1.0 / (1.0 + np.exp(-drop[0]))),
            drop_top=drop[1],
            drop_random=drop[2],
        )

    nan = (float("nan"),) * 3
    s_scores = [score(t, lv, g, d) for (t, lv, g), d in zip(saliency, drops, strict=True)]
    e_scores = [score(t, lv, g, nan) for t, lv, g in end_to_end]
    return StudyScores(
        [x for x in s_scores if x is not None],
        [x for x in e_scores if x is not None],
        agreeing,
        len(traced.inputs),
        skipped,
    )


def evaluate_faithfulness(
    data_dir: Path,
    *,
    studies: Sequence[str] | None = None,
    n: int | None = None,
    models_dir: Path | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> FaithfulnessReport:
    """Pointing game + deletion over generated studies (default: the test split of split.json,
    else every study folder). ``studies`` names folders under data_dir; ``n`` keeps the first n.

    This is the function the evaluation calls on the synthetic test split (CONTRACTS.md)."""
    names = list(studies) if studies is not None else _default_studies(data_dir)
    if n is not None:
        names = names[:n]
    results: list[StudyScores] = []
    failed: dict[str, int] = {}
    for i, name in enumerate(names):
        try:
            results.append(score_study(data_dir / name, models_dir=models_dir, seed=i))
        except Exception as exc:  # one unreadable/unanalysable study must not void the evaluation
            key = f"study_failed:{type(exc).__name__}"
            failed[key] = failed.get(key, 0) + 1
        if progress is not None:
            progress(i + 1, len(names), name)
    return aggregate(len(names), results, failed)


def aggregate(
    n_studies: int, results: Sequence[StudyScores], failed: Mapping[str, int] | None = None
) -> FaithfulnessReport:
    """One report from per-study scores (score_study / score_traced); ``failed``: studies that
    could not be scored, by reason."""
    saliency = [x for r in results for x in r.saliency]
    end_to_end = [x for r in results for x in r.end_to_end]
    skipped: dict[str, int] = dict(failed or {})
    for r in results:
        for k, v in r.skipped.items():
            skipped[k] = skipped.get(k, 0) + v
    agreement = Rate(sum(r.levels_agreeing for r in results), sum(r.levels_analysed for r in results))
    return FaithfulnessReport(n_studies, tuple(saliency), tuple(end_to_end), agreement, skipped)


def _default_studies(data_dir: Path) -> list[str]:
    split = data_dir / "split.json"
    if split.is_file():
        test = json.loads(split.read_text()).get("test")
        if test:
            return [str(s) for s in test]
    return sorted(p.name for p in data_dir.iterdir() if (p / "truth" / "findings.json").is_file())


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m cds.explain.faithfulness --data DIR --split validation --n 25``: pointing game and
    deletion check on one split of a generated data set (model selection uses ``validation``;
    the evaluation's test split is scored by ``cds evaluate``). Prints the report as JSON."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m cds.explain.faithfulness", description=main.__doc__)
    parser.add_argument("--data", type=Path, required=True, help="folder written by `cds synth`")
    parser.add_argument("--split", default="test", help="split.json key to score (default: test)")
    parser.add_argument("--studies", nargs="+", help="score these study folders instead of a split")
    parser.add_argument("--n", type=int, help="score only the first N studies of the split")
    parser.add_argument("--models", type=Path, help="models folder (default: the shipped models/)")
    parser.add_argument("--findings", action="store_true", help="include every scored finding")
    args = parser.parse_args(argv)
    if args.studies:
        names = list(args.studies)
    else:
        split = json.loads((args.data / "split.json").read_text(encoding="utf-8"))
        if args.split not in split:
            parser.error(f"split.json has no {args.split!r} split")
        names = [Path(str(s)).name for s in split[args.split]]

    def progress(done: int, total: int, name: str) -> None:
        print(f"{done}/{total} {name}", file=sys.stderr, flush=True)

    report = evaluate_faithfulness(
        args.data, studies=names, n=args.n, models_dir=args.models, progress=progress
    )
    print(json.dumps(report.to_json(include_findings=args.findings), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
