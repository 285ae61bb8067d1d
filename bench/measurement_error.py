"""Where the stage-3 measurements go wrong: pipeline vs generator truth, broken down by cause.

Runs the production quick read on the VALIDATION studies of a synthetic training set (never on the
evaluation split /work/data/synth-test) and compares every measurement the grades rest on (DSCA, AP
diameter, lateral recess depth per side) with the generator's ``findings.json``. Three values per
(level, measurement) separate the causes of an error:

* ``pred``   - the pipeline's value (axial U-Net masks -> cds.pipeline.quick_read.measure_level);
* ``oracle`` - the same measurement code on the generator's own label map of the same slices
  (resampled into the canonical grid exactly like the network's output): its error against the
  truth is the *sampling/method* error (thick slices that miss the narrowest plane, line position,
  edge convention), independent of segmentation;
* ``truth``  - the generator's value (minimum over planes every 0.5 mm across the disc level).

``pred - oracle`` is then the segmentation's share. Tables are broken down by slice spacing, number
of slices, level, scanner and size of the true value.

Two steps, both re-runnable with one command:

1. ``collect`` (slow, once): quick_read on each validation study, segmentations replayed from
   ``--cache``/replay (so a second collect with another classifier costs only the DICOM load and
   the classifier); keeps per level the axial labels, the truth labels in the same grid, the
   classifier's probabilities and the slice geometry in ``--cache``/<study>.pkl;
2. ``report`` (seconds): re-measures the cached masks with the *current* measurement code and
   prints the error tables (and, with ``--json``, writes them).

3. ``fine`` (a minute): DSCA and AP diameter measured without (old: axial_seg's sac) and with the
   refine_sac stage (new: the ``sac_fine`` model's 0.4 mm sac probability, cds/pipeline/sac_refine.py)
   on the same cached segmentations (the native slices are re-read from DICOM), plus variants of
   the new measurement (thresholded instead of summed probability, AP line through the sac's own
   centre) so the shipped choice is visibly the validation's best; ``--figure`` draws the errors.

Run:  nice -n 5 .venv/bin/python bench/measurement_error.py collect --data /work/data/synth-train
      .venv/bin/python bench/measurement_error.py report --data /work/data/synth-train
      .venv/bin/python bench/measurement_error.py fine --figure models/sac_fine/validation.png
"""

from __future__ import annotations

import argparse
import itertools
import json
import pickle
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_CACHE = Path("/work/data/h4-measure-cache")
SCHEMA = "measure-error-1"


# ----------------------------------------------------------------------------------------------
# collect
# ----------------------------------------------------------------------------------------------


def _thicknesses(dicom_dir: Path) -> dict[str, float]:
    """Series uid -> SliceThickness from the headers (pixel data not read)."""
    import pydicom

    out: dict[str, float] = {}
    for f in sorted(dicom_dir.glob("*.dcm")):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        uid = str(ds.SeriesInstanceUID)
        if uid not in out and "SliceThickness" in ds:
            out[uid] = float(ds.SliceThickness)
    return out


def _truth_canonical(raw: np.ndarray, seg: Any) -> np.ndarray:
    """Truth label map of the segmented slices in the measurement grid, as axial classes."""
    from cds.pipeline import axial as ax

    lut = ax.class_of_gt()
    up = ax.MEASURE_UPSAMPLE
    rows = []
    for row, k in enumerate(seg.slice_indices):
        t = lut[ax.to_canonical(raw[k].astype(np.uint8), seg.frames[row], order=0)]
        rows.append(np.repeat(np.repeat(t, up, axis=0), up, axis=1))
    return np.stack(rows).astype(np.uint8)


def _core_stages(stages: Any, models_dir: Path | None) -> Any:
    """The production stages, minus an optional model that is not shipped yet (the foraminal
    stage replaces only foraminal estimates, which this analysis does not score)."""
    from dataclasses import fields

    from cds.ml.spec import model_dir

    names = {f.name for f in fields(stages)}
    if "foraminal" not in names or (model_dir("foraminal", models_dir) / "card.json").is_file():
        return stages

    def load_core(md: Path | None) -> dict[str, str]:
        from cds.ml.classifier import load_classifier
        from cds.ml.loading import load_model

        versions = {n: load_model(n, md).spec.tag for n in ("sagittal_seg", "axial_seg")}
        versions["classifier"] = load_classifier("classifier", md).spec.tag
        return versions

    return replace(stages, load_models=load_core, foraminal=lambda _v, _d, _m: {})


def collect_study(folder: Path, cache: Path, models_dir: Path | None) -> dict[str, Any]:
    from cds.dicom import load_study
    from cds.evaluation.recorder import recording_stages
    from cds.evaluation.replay import StageStore, replaying_stages
    from cds.evaluation.truth import read_truth
    from cds.pipeline.quick_read import DEFAULT_STAGES, quick_read

    truth = read_truth(folder)
    findings = json.loads((folder / "truth" / "findings.json").read_text())
    study = load_study(folder / "dicom")
    store = StageStore.load(cache / "replay" / f"{truth.name}.pkl")
    stages, record = recording_stages(replaying_stages(_core_stages(DEFAULT_STAGES, models_dir), store))
    analysis = quick_read(study, models_dir=models_dir, stages=stages)
    store.save()
    thick = _thicknesses(folder / "dicom")
    volumes = {id(seg): vol for vol, seg in record.axial()}
    probabilities = record.probabilities()
    series_level = {
        uid: info.get("level")
        for uid, info in json.loads((folder / "truth" / "labels.json").read_text())["series"].items()
    }
    labelling = record.labelling()
    sagittal = record.sagittal()
    discs = {}
    if labelling is not None and sagittal is not None:
        from cds.pipeline.quick_read import disc_locations

        got = disc_locations(sagittal[0], sagittal[1], labelling)
        discs = {lv.value: d for lv, d in got.items()}
    levels: dict[str, Any] = {}
    for level, seg in record.axial_by_level().items():
        vol = volumes.get(id(seg))
        if vol is None:
            continue
        raw = truth.labels_of(vol.series_uid)
        oracle = _truth_canonical(raw, seg) if raw is not None and raw.shape == vol.shape else None
        est = probabilities.get(level)
        disc = discs.get(level.value)
        offsets = None
        if disc is not None:  # signed distance (mm) of each slice centre from the sagittal disc centre
            centres = [
                vol.voxel_to_patient(np.array([k, (vol.shape[1] - 1) / 2, (vol.shape[2] - 1) / 2]))
                for k in seg.slice_indices
            ]
            offsets = [float((c - disc.centre) @ disc.normal) for c in centres]
        levels[level.value] = {
            "seg": replace(seg, probs=np.zeros(0, np.float32), images=np.zeros(0, np.float32)),
            "oracle": oracle,
            "series_level": series_level.get(vol.series_uid),
            "n_slices_volume": int(vol.shape[0]),
            "slice_spacing": float(vol.spacing_mm[0]),
            "pixel_spacing": float(vol.spacing_mm[1]),
            "thickness": thick.get(vol.series_uid),
            "offsets_mm": offsets,
            "disc_height": disc.height if disc is not None else None,
            "estimates": {c.value: (e.p_present, e.p_severe) for c, e in est.estimates.items()}
            if est
            else {},
        }
    return {
        "schema": SCHEMA,
        "study": truth.name,
        "model_versions": dict(analysis.model_versions),
        "findings_truth": findings,
        "analysis": analysis.to_json(),
        "levels": levels,
    }


def seg_training_studies(models_dir: Path | None) -> set[str]:
    """Studies the shipped axial U-Net was trained on (its card's seeds): errors measured on them
    are optimistic, so they are reported apart and never used to fit a correction."""
    from cds.ml.spec import model_dir

    card = json.loads((model_dir("axial_seg", models_dir) / "card.json").read_text())
    return {f"SYN-{s}" for s in card.get("training", {}).get("data", {}).get("seeds", [])}


def chosen(args: argparse.Namespace) -> list[str]:
    """The split's studies, without those the axial U-Net was trained on unless --all-studies."""
    split = json.loads((args.data / "split.json").read_text())
    names = list(split[args.split])
    if not args.all_studies:
        seen = seg_training_studies(args.models_dir)
        names = [n for n in names if n not in seen]
    return names[: args.n] if args.n else names


def collect(args: argparse.Namespace) -> int:
    names = chosen(args)
    args.cache.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        out = args.cache / f"{name}.pkl"
        if out.is_file() and not args.force:
            continue
        t0 = time.perf_counter()
        rec = collect_study(args.data / name, args.cache, args.models_dir)
        tmp = out.with_suffix(".tmp")
        tmp.write_bytes(pickle.dumps(rec, protocol=5))
        tmp.replace(out)
        print(f"[{i + 1}/{len(names)}] {name} {time.perf_counter() - t0:.1f}s", flush=True)
    return 0


# ----------------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One compared value: a measurement of one level (and side) of one study."""

    study: str
    level: str
    name: str  # dsca_mm2, ap_diameter_mm, recess_mm
    side: str | None
    truth: float
    pred: float | None
    oracle: float | None
    context: dict[str, Any]


def _measure(seg: Any, level: str, offsets: list[float] | None) -> dict[str, float | None]:
    from cds.domain import Condition, Level, MeasurementName
    from cds.pipeline.quick_read import measure_level

    got = measure_level(seg, None, Level(level), offsets).by_condition

    def value(cond: Condition, name: MeasurementName) -> float | None:
        for m in got.get(cond, ()):
            if m.name is name:
                return float(m.value)
        return None

    return {
        "dsca_mm2": value(Condition.SPINAL_CANAL, MeasurementName.DSCA_MM2),
        "ap_diameter_mm": value(Condition.SPINAL_CANAL, MeasurementName.AP_DIAMETER_MM),
        "recess_left": value(Condition.LEFT_SUBARTICULAR, MeasurementName.LATERAL_RECESS_DEPTH_MM),
        "recess_right": value(Condition.RIGHT_SUBARTICULAR, MeasurementName.LATERAL_RECESS_DEPTH_MM),
    }


def load_records(cache: Path, names: Iterable[str]) -> list[dict[str, Any]]:
    out = []
    for name in names:
        p = cache / f"{name}.pkl"
        if p.is_file():
            rec = pickle.loads(p.read_bytes())
            if rec.get("schema") == SCHEMA:
                out.append(rec)
    return out


def _full_segs(cache: Path, study: str) -> list[Any]:
    """The replayed axial segmentations of a study (with probabilities, which the compact record
    drops), so the measurement code sees exactly what quick_read gives it."""
    from cds.evaluation.replay import StageStore

    return list(StageStore.load(cache / "replay" / f"{study}.pkl").axial.values())


def _full(compact: Any, full: list[Any]) -> Any:
    for seg in full:
        if seg.slice_indices == compact.slice_indices and np.array_equal(seg.labels, compact.labels):
            return seg
    return compact


def rows_of(records: list[dict[str, Any]], cache: Path = DEFAULT_CACHE) -> list[Row]:
    rows: list[Row] = []
    for rec in records:
        full = _full_segs(cache, rec["study"])
        truth = rec["findings_truth"]["measurements"]
        scanner = rec["findings_truth"]["params"]["scanner"]
        for level, lv in rec["levels"].items():
            t = truth.get(level)
            if t is None or lv["series_level"] != level:
                continue  # a wrongly labelled level: a level-naming error, not a measurement error
            seg = _full(lv["seg"], full)
            pred = _measure(seg, level, lv["offsets_mm"])
            oracle = (
                _measure(
                    replace(seg, labels=lv["oracle"], probs=np.zeros(0, np.float32)), level, lv["offsets_mm"]
                )
                if lv["oracle"] is not None
                else {}
            )
            ctx = {
                "n_slices": len(lv["seg"].slice_indices),
                "spacing": lv["slice_spacing"],
                "thickness": lv["thickness"],
                "pixel": lv["pixel_spacing"],
                "scanner": f"{scanner['manufacturer']} {scanner['field_strength_t']}T",
                "offsets": lv["offsets_mm"],
            }
            for key, name, side, tv in (
                ("dsca_mm2", "dsca_mm2", None, t["dsca_mm2"]),
                ("ap_diameter_mm", "ap_diameter_mm", None, t["ap_diameter_mm"]),
                ("recess_left", "recess_mm", "left", t["lateral_recess_depth_mm"]["left"]),
                ("recess_right", "recess_mm", "right", t["lateral_recess_depth_mm"]["right"]),
            ):
                if name == "ap_diameter_mm" and tv == 0:
                    continue  # generator artefact (prev_note): true AP 0 beside a non-zero DSCA
                rows.append(
                    Row(rec["study"], level, name, side, float(tv), pred.get(key), oracle.get(key), ctx)
                )
    return rows


def _stats(err: np.ndarray) -> str:
    if err.size == 0:
        return "n=0"
    a = np.abs(err)
    return (
        f"n={err.size:4d} MAE={a.mean():6.2f} bias={err.mean():+6.2f} med|e|={np.median(a):5.2f} "
        f"p90|e|={np.percentile(a, 90):6.2f}"
    )


def _table(rows: list[Row], key: Callable[[Row], Any], title: str) -> None:
    groups: dict[Any, list[Row]] = defaultdict(list)
    for r in rows:
        groups[key(r)].append(r)
    print(f"  by {title}:")
    for k in sorted(groups, key=str):
        g = groups[k]
        pe = np.array([r.pred - r.truth for r in g if r.pred is not None])
        oe = np.array([r.oracle - r.truth for r in g if r.oracle is not None])
        print(f"    {k!s:>14}  pred {_stats(pe)}  | oracle {_stats(oe)}")


def _bin(v: float, edges: tuple[float, ...]) -> str:
    for lo, hi in itertools.pairwise(edges):
        if lo <= v < hi:
            return f"[{lo:g},{hi:g})"
    return f">={edges[-1]:g}"


SIZE_BINS = {
    "dsca_mm2": (0, 75, 100, 150, 1e9),
    "ap_diameter_mm": (0, 6, 9, 12, 1e9),
    "recess_mm": (0, 3, 5, 8, 1e9),
}


def summary(rows: list[Row]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ("dsca_mm2", "ap_diameter_mm", "recess_mm"):
        sel = [r for r in rows if r.name == name and r.pred is not None]
        pe = np.array([r.pred - r.truth for r in sel if r.pred is not None])
        oe = np.array([r.oracle - r.truth for r in sel if r.oracle is not None])
        out[name] = {
            "n": int(pe.size),
            "mae": float(np.abs(pe).mean()) if pe.size else None,
            "bias": float(pe.mean()) if pe.size else None,
            "median_abs": float(np.median(np.abs(pe))) if pe.size else None,
            "p90_abs": float(np.percentile(np.abs(pe), 90)) if pe.size else None,
            "oracle_mae": float(np.abs(oe).mean()) if oe.size else None,
            "oracle_bias": float(oe.mean()) if oe.size else None,
        }
    return out


def report(args: argparse.Namespace) -> int:
    names = chosen(args)
    records = load_records(args.cache, names)
    if not records:
        print("no collected records: run the collect step first", file=sys.stderr)
        return 1
    t0 = time.perf_counter()
    rows = rows_of(records, args.cache)
    print(
        f"{len(records)} studies, {len(rows)} compared values, re-measured in {time.perf_counter() - t0:.1f}s"
    )
    print("models:", records[0]["model_versions"])
    for name in ("dsca_mm2", "ap_diameter_mm", "recess_mm"):
        sel = [r for r in rows if r.name == name]
        print(f"\n== {name}")
        _table(sel, lambda r: "all", "all")
        _table(sel, lambda r: r.context["n_slices"], "slices in the level")
        _table(sel, lambda r: _bin(r.context["spacing"], (0, 3.5, 4.0, 99)), "slice spacing mm")
        _table(sel, lambda r: _bin(r.context["thickness"] or 0, (0, 3.5, 99)), "slice thickness mm")
        _table(sel, lambda r: r.level, "level")
        _table(sel, lambda r: r.context["scanner"], "scanner")
        _table(sel, lambda r: _bin(r.truth, SIZE_BINS[r.name]), "true value")
        if name == "recess_mm":
            _table(sel, lambda r: r.side, "side")
    if args.worst:
        for name in ("dsca_mm2", "ap_diameter_mm", "recess_mm"):
            sel = sorted(
                (r for r in rows if r.name == name and r.pred is not None),
                key=lambda r: -abs((r.pred or 0.0) - r.truth),
            )[: args.worst]
            print(f"\nworst {name}:")
            for r in sel:
                off = r.context["offsets"]
                offs = ",".join(f"{o:+.1f}" for o in off) if off else "?"
                print(
                    f"  {r.study} {r.level} {r.side or '':5} truth {r.truth:7.2f} pred {r.pred:7.2f} "
                    f"oracle {r.oracle if r.oracle is None else round(r.oracle, 2)} slices@[{offs}]"
                )
    result = summary(rows)
    print("\nsummary:", json.dumps(result, indent=1))
    if args.json:
        per_value = [
            {
                "study": r.study,
                "level": r.level,
                "name": r.name,
                "side": r.side,
                "truth": r.truth,
                "pred": r.pred,
                "oracle": r.oracle,
                "n_slices": r.context["n_slices"],
            }
            for r in rows
        ]
        args.json.write_text(
            json.dumps({"studies": len(records), "summary": result, "values": per_value}, indent=1)
        )
    return 0


# ----------------------------------------------------------------------------------------------
# policy: which source should decide each condition's grade
# ----------------------------------------------------------------------------------------------


def policy(args: argparse.Namespace) -> int:
    """Quadratic-weighted kappa per condition of: the rule alone (where its measurement is
    reliable, the model elsewhere), the model alone, and the shipped GradingPolicy; plus how many
    findings each flags uncertain and the kappa among the certain ones."""
    from cds.domain import Condition, Grade, Level
    from cds.evaluation.metrics import quadratic_weighted_kappa
    from cds.pipeline.grade import DEFAULT_POLICY, Decider, GradingPolicy, SeverityEstimate, grade_level
    from cds.pipeline.quick_read import measure_level

    records = load_records(args.cache, chosen(args))
    if not records:
        print("no collected records: run the collect step first", file=sys.stderr)
        return 1
    policies = {
        "rule": GradingPolicy(deciders=dict.fromkeys(Condition, Decider.RULE)),
        "model": GradingPolicy(deciders=dict.fromkeys(Condition, Decider.MODEL)),
        "shipped": DEFAULT_POLICY,
    }
    truth: dict[Condition, list[int]] = defaultdict(list)
    got: dict[tuple[str, Condition], list[int]] = defaultdict(list)
    flagged: dict[tuple[str, Condition], list[bool]] = defaultdict(list)
    for rec in records:
        full = _full_segs(args.cache, rec["study"])
        levels_truth = rec["findings_truth"]["levels"]
        for level, lv in rec["levels"].items():
            if lv["series_level"] != level or not lv["estimates"] or level not in levels_truth:
                continue
            seg = _full(lv["seg"], full)
            measured = measure_level(seg, lv["disc_height"], Level(level), lv["offsets_mm"]).by_condition
            learned = {Condition(c): SeverityEstimate(*pe) for c, pe in lv["estimates"].items()}
            for c in Condition:
                truth[c].append(Grade(levels_truth[level][c.value]["grade"]).rank)
            for name, pol in policies.items():
                for d in grade_level(Level(level), measured, learned, pol):
                    got[(name, d.finding.condition)].append(d.finding.grade.rank)
                    flagged[(name, d.finding.condition)].append(d.finding.uncertain)
    print(f"{len(records)} studies; classifier {records[0]['model_versions'].get('classifier')}")
    print(
        f"{'condition':20} {'n':>4} "
        + " ".join(f"{n:>8}" for n in policies)
        + "   shipped: uncertain, kappa of certain"
    )
    out: dict[str, Any] = {}
    for c in Condition:
        t = np.array(truth[c])
        kappas = {n: quadratic_weighted_kappa(t, np.array(got[(n, c)])) for n in policies}
        unc = np.array(flagged[("shipped", c)])
        certain = ~unc
        kc = (
            quadratic_weighted_kappa(t[certain], np.array(got[("shipped", c)])[certain])
            if certain.any()
            else None
        )
        cells = " ".join(f"{k:8.3f}" if k is not None else "     n/a" for k in kappas.values())
        print(f"{c.value:20} {t.size:4d} {cells}   {unc.mean():.0%}, {kc if kc is None else round(kc, 3)}")
        out[c.value] = {
            "n": int(t.size),
            "kappa": kappas,
            "uncertain_share": float(unc.mean()),
            "kappa_certain": kc,
        }
    if args.json:
        args.json.write_text(json.dumps({"studies": len(records), "policy": out}, indent=1))
    return 0


# ----------------------------------------------------------------------------------------------
# fine: old (axial_seg) vs new (refine_sac) DSCA and AP diameter
# ----------------------------------------------------------------------------------------------


def _volume_of(study: Any, seg: Any) -> Any:
    """The axial volume a cached segmentation was made from (same canonical images)."""
    from cds.pipeline import axial as ax

    k = seg.slice_indices[0]
    for vol in study.axial_t2:
        if max(seg.slice_indices) >= vol.shape[0]:
            continue
        images, _ = ax.preprocess(np.asarray(vol.array), vol.affine, [k])
        if images.shape[1:] == seg.images.shape[1:] and np.allclose(images[0], seg.images[0], atol=1e-4):
            return vol
    return None


def _fine_variants(fine: Any, seg: Any, axes: list[Any]) -> dict[str, float | None]:
    """DSCA and AP from the fine map in the shipped way and in the rejected alternatives."""
    from dataclasses import replace as dc_replace

    from cds.pipeline import measure as ms
    from cds.pipeline import sac_crop as sc
    from cds.pipeline.sac_refine import canal_measurements

    out: dict[str, float | None] = {}
    got = canal_measurements(fine, seg.label_spacing_mm, axes)
    if got is None:
        return out
    out["dsca_soft"], out["ap_soft_body_line"] = got[0].value, got[1].value
    px = sc.CROP_SPACING_MM**2
    for thr in (0.3, 0.4, 0.5, 0.6):
        out[f"dsca_p>{thr:g}"] = float(min((p > thr).sum() * px for p in fine.probs))
    # AP through the fine sac's own centre column instead of the disc/body centre.
    row = got[0].provenance.slice_index
    n = fine.rows.index(row)
    prob = fine.probs[n]
    cols = np.arange(prob.shape[1])
    col_c = float((prob.sum(axis=0) * cols).sum() / max(prob.sum(), 1e-9))
    from cds.pipeline.sac_refine import crop_to_grid

    grid_c = crop_to_grid(np.array([[0.0, col_c]]), fine.crops[n])[0, 1] * seg.label_spacing_mm[1]
    a = axes[row]
    shifted = list(axes)
    shifted[row] = dc_replace(a, origin_mm=np.array([a.origin_mm[0], grid_c]))
    got2 = canal_measurements(fine, seg.label_spacing_mm, shifted)
    out["ap_soft_sac_line"] = got2[1].value if got2 else None
    # AP on the thresholded fine map (edges at p = 0.5) along the disc/body line.
    sp = (sc.CROP_SPACING_MM, sc.CROP_SPACING_MM)
    from cds.pipeline.sac_refine import grid_to_crop

    o = grid_to_crop(a.origin_mm / np.asarray(seg.label_spacing_mm), fine.crops[n]) * sc.CROP_SPACING_MM
    out["ap_p>0.5_body_line"] = ms.chord_through(prob > 0.5, sp, o, a.posterior)[0]
    # AP as the smallest over the refined rows (not on the narrowest-area row).
    aps = []
    for r, c, p in zip(fine.rows, fine.crops, fine.probs, strict=True):
        oc = grid_to_crop(axes[r].origin_mm / np.asarray(seg.label_spacing_mm), c) * sc.CROP_SPACING_MM
        aps.append(ms.soft_chord_mm(p, sp, oc, axes[r].posterior)[0])
    out["ap_min_rows"] = float(min(aps))
    # AP through the midpoint of the disc/body's left-right extent (a herniation moves the
    # centroid toward its side, not the lateral extremes), and through the vertebral body only.
    from cds.pipeline import axial as ax

    for tag, mask in (
        ("bbox", seg.mask(ax.DISC)[row] | seg.mask(ax.BODY)[row]),
        ("bodybbox", seg.mask(ax.BODY)[row]),
    ):
        if mask.any():
            main = ms.largest_component(mask)
            cols_m = np.nonzero(main.any(axis=0))[0]
            mid = 0.5 * (cols_m.min() + cols_m.max()) * seg.label_spacing_mm[1]
            ax2 = list(axes)
            ax2[row] = dc_replace(a, origin_mm=np.array([a.origin_mm[0], mid]))
            g3 = canal_measurements(fine, seg.label_spacing_mm, ax2)
            out[f"ap_soft_{tag}_line"] = g3[1].value if g3 else None
    out["row_offset"] = float(row)
    out["n_rows"] = float(len(fine.rows))
    return out


def _fine_oracle(truth: Any, vol: Any, seg: Any, fine: Any) -> Any:
    """The new measurement on the generator's own label of the same crops (bilinear, soft): its
    error against the truth is what is left once the network is perfect (slice sampling, line)."""
    from cds.pipeline import axial as ax
    from cds.pipeline import sac_crop as sc
    from cds.pipeline.sac_refine import FineSac

    raw = truth.labels_of(vol.series_uid)
    if raw is None or raw.shape != vol.shape or not fine.rows:
        return None
    lut = ax.class_of_gt()
    probs = []
    for row, crop in zip(fine.rows, fine.crops, strict=True):
        sac = (lut[raw[seg.slice_indices[row]]] == ax.SAC).astype(np.float32)
        probs.append(np.clip(sc.sample(sac, sc.native_coords(crop, seg.frames[row]), crop.size), 0, 1))
    return FineSac(fine.rows, fine.crops, np.stack(probs))


def fine_step(args: argparse.Namespace) -> int:
    import torch

    from cds.dicom import load_study
    from cds.domain import Level
    from cds.evaluation.truth import read_truth
    from cds.pipeline import axial as ax
    from cds.pipeline import measure as ms
    from cds.pipeline import quick_read as qr
    from cds.pipeline.sac_refine import refine_sac

    torch.set_num_threads(args.threads)
    records = load_records(args.cache, chosen(args))
    if not records:
        print("no collected records: run the collect step first", file=sys.stderr)
        return 1
    values: list[dict[str, Any]] = []
    t_refine: list[float] = []
    for rec in records:
        study = load_study(args.data / rec["study"] / "dicom")
        truth_labels = read_truth(args.data / rec["study"])
        full = _full_segs(args.cache, rec["study"])
        truth = rec["findings_truth"]["measurements"]
        for level, lv in rec["levels"].items():
            t = truth.get(level)
            if t is None or lv["series_level"] != level:
                continue
            seg = _full(lv["seg"], full)
            vol = _volume_of(study, seg)
            if vol is None or seg.images.size == 0:
                continue
            t0 = time.perf_counter()
            fine = refine_sac({level: (vol, seg)}, args.models_dir)[level]
            t_refine.append(time.perf_counter() - t0)
            old = qr.measure_level(seg, None, Level(level), lv["offsets_mm"]).by_condition
            new = qr.measure_level(seg, None, Level(level), lv["offsets_mm"], fine).by_condition
            sac, body = seg.mask(ax.SAC), seg.mask(ax.DISC) | seg.mask(ax.BODY)
            axes = [
                ms.axial_axes(
                    body[i], sac[i], seg.label_spacing_mm, qr.POSTERIOR_RC, qr.LEFT_RC, use_shape=False
                )
                for i in range(sac.shape[0])
            ]
            row: dict[str, Any] = {
                "study": rec["study"],
                "level": level,
                "truth_dsca": float(t["dsca_mm2"]),
                "truth_ap": float(t["ap_diameter_mm"]),
                "refined_rows": len(fine.rows),
            }
            for tag, got in (("old", old), ("new", new)):
                for m in got[qr.Condition.SPINAL_CANAL]:
                    if m.name.value in ("dsca_mm2", "ap_diameter_mm"):
                        row[f"{tag}_{m.name.value}"] = float(m.value)
            row.update(_fine_variants(fine, seg, axes))
            oracle = _fine_oracle(truth_labels, vol, seg, fine)
            if oracle is not None:
                row.update({f"oracle_{k}": v for k, v in _fine_variants(oracle, seg, axes).items()})
            values.append(row)
    print(
        f"{len(records)} validation studies, {len(values)} levels; refine_sac median "
        f"{1000 * float(np.median(t_refine)):.1f} ms per level"
    )

    def stats(key: str, truth_key: str) -> dict[str, float]:
        sel = [
            v
            for v in values
            if v.get(key) is not None and not (truth_key == "truth_ap" and v[truth_key] == 0)
        ]
        err = np.array([v[key] - v[truth_key] for v in sel])
        return {
            "n": int(err.size),
            "mae": float(np.abs(err).mean()),
            "bias": float(err.mean()),
            "p90_abs": float(np.percentile(np.abs(err), 90)),
        }

    dsca_keys = ["old_dsca_mm2", "new_dsca_mm2", *(k for k in values[0] if k.startswith("dsca_p>"))]
    dsca_keys += ["oracle_dsca_soft", "oracle_dsca_p>0.5"]
    ap_keys = [
        "old_ap_diameter_mm",
        "new_ap_diameter_mm",
        "ap_soft_sac_line",
        "ap_p>0.5_body_line",
        "oracle_ap_soft_body_line",
        "oracle_ap_soft_sac_line",
        "ap_min_rows",
        "oracle_ap_min_rows",
        "ap_soft_bbox_line",
        "oracle_ap_soft_bbox_line",
        "ap_soft_bodybbox_line",
        "oracle_ap_soft_bodybbox_line",
    ]
    summary = {k: stats(k, "truth_dsca") for k in dsca_keys} | {k: stats(k, "truth_ap") for k in ap_keys}
    for k, st in summary.items():
        print(
            f"  {k:22} n={st['n']:4d} MAE={st['mae']:6.2f} bias={st['bias']:+6.2f}",
            f"p90|e|={st['p90_abs']:6.2f}",
        )
    if args.json:
        args.json.write_text(
            json.dumps({"studies": len(records), "summary": summary, "values": values}, indent=1)
        )
    if args.figure:
        _fine_figure(values, summary, args.figure)
    return 0


def _fine_figure(values: list[dict[str, Any]], summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axs = plt.subplots(1, 2, figsize=(10, 4.6))
    for axp, (name, tkey, unit, lim) in zip(
        axs,
        (("dsca_mm2", "truth_dsca", "mm2", 250.0), ("ap_diameter_mm", "truth_ap", "mm", 20.0)),
        strict=True,
    ):
        for tag, colour in (("old", "tab:orange"), ("new", "tab:blue")):
            key = f"{tag}_{name}"
            pts = [(v[tkey], v[key]) for v in values if v.get(key) is not None and v[tkey] > 0]
            x, y = np.array(pts).T
            st = summary[key]
            source = "axial_seg" if tag == "old" else "refine_sac"
            label = f"{source}: MAE {st['mae']:.2f}, bias {st['bias']:+.2f}"
            axp.scatter(x, y, s=9, alpha=0.6, color=colour, label=label)
        axp.plot([0, lim], [0, lim], "k--", lw=0.8)
        axp.set_xlim(0, lim)
        axp.set_ylim(0, lim)
        axp.set_xlabel(f"generator truth ({unit})")
        axp.set_ylabel(f"measured ({unit})")
        axp.set_title(name)
        axp.legend(loc="upper left", fontsize=8)
    fig.suptitle("Validation (synth-train split 'validation', studies axial_seg never saw)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("step", choices=("collect", "report", "policy", "fine"))
    parser.add_argument("--data", type=Path, default=Path("/work/data/synth-train"))
    parser.add_argument("--split", default="validation", choices=("train", "validation"))
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--models-dir", type=Path)
    parser.add_argument("--n", type=int, default=0, help="first N studies of the split (0 = all)")
    parser.add_argument("--force", action="store_true", help="collect again even when cached")
    parser.add_argument("--worst", type=int, default=0, help="list the N worst values per measurement")
    parser.add_argument(
        "--all-studies", action="store_true", help="include studies the axial U-Net was trained on"
    )
    parser.add_argument("--json", type=Path, help="write the summary here")
    parser.add_argument("--figure", type=Path, help="fine: draw old vs new errors to this PNG")
    parser.add_argument("--threads", type=int, default=1, help="fine: torch CPU threads")
    args = parser.parse_args(argv)
    if "synth-test" in str(args.data):
        parser.error("the evaluation split is never used for analysis or tuning")
    return {"collect": collect, "report": report, "policy": policy, "fine": fine_step}[args.step](args)


if __name__ == "__main__":
    raise SystemExit(main())
