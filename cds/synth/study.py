"""One complete synthetic lumbar MRI study with its ground truth: ``generate_study(seed, out_dir)``.

Layout written (CONTRACTS.md):
    <out_dir>/<study>/dicom/*.dcm                sagittal T2, sagittal T1, one axial T2 stack per disc level
    <out_dir>/<study>/truth/findings.json        grades + deciding measurements (FINDINGS.md shape)
    <out_dir>/<study>/truth/labels.json          label table, SPIDER-compatible groups, per-series files
    <out_dir>/<study>/truth/labels/<SeriesInstanceUID>.npz   key "labels", (slices, rows, cols) uint8
    <out_dir>/<study>/truth/causes/<level>_<condition>.npz   key "mask", for every moderate/severe finding

Determinism: every random draw comes from ``numpy.random.default_rng`` streams spawned from the seed, UIDs
are hashed from the seed, and nothing reads the clock, so one seed gives byte-identical files.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import numpy as np

from cds.domain import Condition, Grade, Level
from cds.synth import labels as L
from cds.synth.anatomy import V_INDEX, Anatomy, LevelDrivers, sample_anatomy
from cds.synth.appearance import Contrast, ScannerProfile, render, sample_profile, to_pixels
from cds.synth.curve import FrameMap, Pose, SpineCurve, rotation_xyz
from cds.synth.dicom_writer import SeriesMeta, StudyMeta, uid, write_series
from cds.synth.measure import measure_all
from cds.synth.pathology import sample_pathology
from cds.synth.protocol import DESCRIPTIONS, StudyOptions, plan_axial, plan_sagittal
from cds.synth.raster import Grid, SpineModel
from cds.synth.series import Scene, SeriesGeometry, SynthSeriesKind, sample_series
from cds.synth.softtissue import TrunkOutline
from cds.synth.truth import cause_ids, findings_json

GENERATOR_VERSION = "0.1.0"
_VOLUME_STEP = 0.6  # mm, resolution of the rasterised spine volume


def generate_study(
    seed: int, out_dir: Path, options: StudyOptions | None = None, study_name: str | None = None
) -> Path:
    """Generate one study into ``out_dir/<study_name>`` (default ``SYN-<seed>``) and return that folder."""
    opts = options or StudyOptions()
    ss = np.random.SeedSequence([0x5E9, seed])
    r_anat, r_path, r_scan, r_geom, r_meta = (np.random.default_rng(s) for s in ss.spawn(5))
    anat: Anatomy = sample_anatomy(r_anat, tuple(LevelDrivers() for _ in Level))
    anat = sample_pathology(r_path, anat)
    model = SpineModel(anat)
    healthy = SpineModel(anat.without_pathology())
    curve = SpineCurve.from_anatomy(anat, float(model.lay.body_hi[V_INDEX["L1"]]))
    profile: ScannerProfile = sample_profile(r_scan)

    # pose: L3 centre near the magnet isocentre, small rotations
    rot = rotation_xyz(
        float(r_geom.uniform(-5, 5)), float(r_geom.uniform(-3, 3)), float(r_geom.uniform(-4, 4))
    )
    l3 = curve.at(float(0.5 * (model.lay.body_lo[V_INDEX["L3"]] + model.lay.body_hi[V_INDEX["L3"]])))[0]
    target = np.array([r_geom.uniform(-10, 10), r_geom.uniform(-30, 10), r_geom.uniform(-30, 30)])
    pose = Pose(rot, target - rot @ l3)

    sag = plan_sagittal(r_geom, curve, model, pose, opts)
    axials = [plan_axial(r_geom, curve, model, pose, lv, opts) for lv in Level]
    corners = np.concatenate([g.corners() for g in (sag, *axials)])
    ac = pose.to_anatomy(corners)
    frame = FrameMap(
        curve, (float(ac[:, 1].min()), float(ac[:, 1].max())), (float(ac[:, 2].min()), float(ac[:, 2].max()))
    )
    grid = Grid.box(
        (-48.0, -34.0, float(model.lay.body_lo[-1]) - 3),
        (48.0, 84.0, float(model.lay.body_hi[0]) + 3),
        _VOLUME_STEP,
    )
    labels, causes = model.paint(grid)
    for arr in (labels, causes):  # empty border: out-of-volume lookups clip onto it (series.Scene)
        arr[[0, -1], :, :] = 0
        arr[:, [0, -1], :] = 0
        arr[:, :, [0, -1]] = 0
    scene = Scene(model, pose, frame, grid, labels, causes, TrunkOutline(model, curve.s, curve.c))
    meas = measure_all(model, healthy)

    name = study_name or f"SYN-{seed:06d}"
    root = Path(out_dir) / name
    dicom_dir, truth = root / "dicom", root / "truth"
    (truth / "labels").mkdir(parents=True, exist_ok=True)
    (truth / "causes").mkdir(parents=True, exist_ok=True)
    study = StudyMeta(
        seed=seed,
        study_uid=uid(seed, "study"),
        frame_uid=uid(seed, "frame"),
        patient_name=f"SYNTHETIC^PATIENT^{seed % 10000:04d}",
        patient_id=f"SYN-{seed:06d}",
        study_date=dt.date(2020, 1, 1) + dt.timedelta(days=int(r_meta.integers(0, 1800))),
        accession=f"SYNACC{seed:08d}",
        manufacturer=profile.manufacturer,
        model_name=profile.model_name,
        field_strength_t=profile.field_strength_t,
        patient_sex=str(r_meta.choice(["F", "M"])),
        patient_age_years=int(r_meta.integers(25, 85)),
    )
    desc = DESCRIPTIONS[profile.manufacturer]
    series_json: dict[str, Any] = {}

    def emit(
        geom: SeriesGeometry,
        kind: SynthSeriesKind,
        img: np.ndarray,
        lab: np.ndarray,
        number: int,
        description: str,
        te: float,
        tr: float,
        etl: int,
    ) -> str:
        suid = uid(seed, f"series/{number}")
        meta = SeriesMeta(
            suid, number, description, te, tr, etl, 150.0 if kind is not SynthSeriesKind.SAGITTAL_T1 else 90.0
        )
        write_series(dicom_dir, geom, to_pixels(img), study, meta)
        np.savez_compressed(truth / "labels" / f"{suid}.npz", labels=L.internal_to_gt(lab))
        series_json[suid] = {
            "file": f"labels/{suid}.npz",
            "kind": kind.value,
            "description": description,
            "series_number": number,
            "level": geom.level.value if geom.level else None,
            "shape": [geom.n_slices, geom.rows, geom.cols],
            "affine": np.round(geom.affine, 6).tolist(),
        }
        return suid

    s_sag = sample_series(sag, scene)
    t2 = render(s_sag, anat, profile, Contrast.T2, 1)
    sag_uid = emit(
        sag,
        SynthSeriesKind.SAGITTAL_T2,
        t2,
        s_sag.labels,
        2,
        desc[0],
        float(r_meta.uniform(85, 120)),
        float(r_meta.uniform(2800, 4500)),
        int(r_meta.integers(15, 25)),
    )
    t1 = render(s_sag, anat, profile, Contrast.T1, 2)
    emit(
        sag,
        SynthSeriesKind.SAGITTAL_T1,
        t1,
        s_sag.labels,
        3,
        desc[1],
        float(r_meta.uniform(8, 14)),
        float(r_meta.uniform(450, 700)),
        int(r_meta.integers(3, 6)),
    )
    ax_uid: dict[Level, str] = {}
    ax_causes: dict[Level, np.ndarray] = {}
    for k, (lv, geom) in enumerate(zip(Level, axials, strict=True)):
        smp = sample_series(geom, scene)
        img = render(smp, anat, profile, Contrast.T2, 10 + k)
        ax_uid[lv] = emit(
            geom,
            SynthSeriesKind.AXIAL_T2,
            img,
            smp.labels,
            4 + k,
            desc[2],
            float(r_meta.uniform(85, 120)),
            float(r_meta.uniform(3000, 5500)),
            int(r_meta.integers(12, 20)),
        )
        ax_causes[lv] = smp.causes

    causes_json: dict[str, Any] = {}
    levels_json, extra = findings_json(meas)
    for lv in Level:
        for cond in Condition:
            if meas[lv].grade(cond) is Grade.NORMAL_MILD:
                continue
            foraminal = cond in (Condition.LEFT_FORAMINAL, Condition.RIGHT_FORAMINAL)
            src = s_sag.causes if foraminal else ax_causes[lv]
            mask = np.isin(src, cause_ids(lv, cond))
            key = f"{lv.value}_{cond.value}"
            np.savez_compressed(truth / "causes" / f"{key}.npz", mask=mask.astype(np.uint8))
            causes_json[key] = {
                "file": f"causes/{key}.npz",
                "series_uid": sag_uid if foraminal else ax_uid[lv],
                "voxels": int(mask.sum()),
            }
    findings = {
        "levels": levels_json,
        "measurements": extra,
        "study_uid": study.study_uid,
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "params": {
            "anatomy": anat.params_json(),
            "scanner": {
                "manufacturer": profile.manufacturer,
                "model": profile.model_name,
                "field_strength_t": profile.field_strength_t,
                "snr": round(profile.snr, 3),
                "blur_px": round(profile.blur_px, 3),
                "ghost": round(profile.ghost, 4),
                "motion": round(profile.motion, 4),
            },
            "pose": {
                "rotation": np.round(pose.rotation, 6).tolist(),
                "translation_mm": np.round(pose.translation, 4).tolist(),
            },
        },
    }
    (truth / "findings.json").write_text(json.dumps(findings, indent=1, sort_keys=True))
    table = {
        "labels": {str(k): v for k, v in L.GT_LABELS.items()},
        "groups": {k: list(v) for k, v in L.GT_GROUPS.items()},
        "index_order": "(slice, row, col); slice k = InstanceNumber k + 1; affine (k, row, col, 1) -> LPS",
        "series": series_json,
        "causes": causes_json,
    }
    (truth / "labels.json").write_text(json.dumps(table, indent=1, sort_keys=True))
    return root
