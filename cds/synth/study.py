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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cds.domain import Condition, Grade, Level, Side
from cds.synth import labels as L
from cds.synth.anatomy import V_INDEX, Anatomy, LevelDrivers, sample_anatomy
from cds.synth.appearance import Contrast, ScannerProfile, render, sample_profile, to_pixels
from cds.synth.curve import FrameMap, Pose, SpineCurve, rotation_xyz
from cds.synth.dicom_writer import SeriesMeta, StudyMeta, uid, write_series
from cds.synth.measure import LevelMeasurements, measure_all
from cds.synth.pathology import sample_pathology
from cds.synth.raster import CauseKind, Grid, SpineModel, cause_id
from cds.synth.series import Scene, SeriesGeometry, SynthSeriesKind, sample_series
from cds.synth.softtissue import TrunkOutline

GENERATOR_VERSION = "0.1.0"
_VOLUME_STEP = 0.6  # mm, resolution of the rasterised spine volume


@dataclass(frozen=True)
class StudyOptions:
    """Size knobs (tests use small images to stay fast)."""

    sag_matrix: tuple[int, ...] = (256, 288, 320)
    ax_matrix: tuple[int, ...] = (224, 256)
    min_sag_slices: int = 13


_DESCRIPTIONS = {
    "SIEMENS": ("t2_tse_sag", "t1_tse_sag", "t2_tse_tra"),
    "GE MEDICAL SYSTEMS": ("Sag T2 FSE", "Sag T1 FSE", "Ax T2 FSE"),
    "Philips": ("T2W_TSE SAG", "T1W_TSE SAG", "T2W_TSE TRA"),
}


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x)


def _sagittal(
    rng: np.random.Generator, curve: SpineCurve, model: SpineModel, pose: Pose, opts: StudyOptions
) -> SeriesGeometry:
    lay = model.lay
    top = pose.to_patient(curve.at(float(lay.body_hi[V_INDEX["T12"]]))[0])
    bot = pose.to_patient(curve.at(float(lay.body_lo[V_INDEX["S2"]]))[0])
    span = abs(top[2] - bot[2]) + 40.0
    fov = max(float(rng.uniform(280, 340)), span)
    m = int(rng.choice(opts.sag_matrix))
    ps = fov / m
    centre = 0.5 * (top + bot)
    centre[1] += float(rng.uniform(0, 25))
    centre[2] += float(rng.uniform(-10, 10))
    centre[0] = float(pose.translation[0] + rng.uniform(-2, 2))
    rz = np.deg2rad(rng.uniform(-3, 3))
    row = np.array([np.sin(rz), np.cos(rz), 0.0])  # anterior -> posterior across columns
    col = np.array([0.0, 0.0, -1.0])  # head -> feet down the rows
    if rng.random() < 0.25:  # thin contiguous slices, like a 3D SPACE/CUBE acquisition reformatted
        th = float(rng.uniform(1.2, 2.0))
        sp = th
    else:
        th = float(rng.uniform(2.5, 4.5))
        sp = th * float(rng.uniform(1.0, 1.2))
    n = max(opts.min_sag_slices, int(np.ceil(min(64.0, 40 * sp) / sp)) | 1)
    normal = np.cross(row, col)
    origin = centre - (n - 1) / 2 * sp * normal - (m - 1) / 2 * ps * (row + col)
    return SeriesGeometry(SynthSeriesKind.SAGITTAL_T2, m, m, (ps, ps), th, sp, n, row, col, origin)


def _axial(
    rng: np.random.Generator,
    curve: SpineCurve,
    model: SpineModel,
    pose: Pose,
    level: Level,
    opts: StudyOptions,
) -> SeriesGeometry:
    s_mid = model.lay.disc_mid(level)
    p, t, n_ = curve.at(s_mid)
    jitter = rotation_xyz(float(rng.uniform(-3, 3)), 0.0, float(rng.uniform(-2, 2)))
    normal = _unit(pose.direction_to_patient(jitter @ t))
    row = _unit(pose.direction_to_patient(np.array([1.0, 0.0, 0.0])))
    row = _unit(row - (row @ normal) * normal)
    col = np.cross(normal, row)
    centre = pose.to_patient(p + n_ * float(rng.uniform(5, 30)))
    fov = float(rng.uniform(160, 220))
    m = int(rng.choice(opts.ax_matrix))
    ps = fov / m
    th = float(rng.uniform(3.0, 4.0))
    sp = th * float(rng.uniform(1.0, 1.15))
    n = int(rng.integers(3, 6))
    origin = centre - (n - 1) / 2 * sp * normal - (m - 1) / 2 * ps * (row + col)
    return SeriesGeometry(SynthSeriesKind.AXIAL_T2, m, m, (ps, ps), th, sp, n, row, col, origin, level)


def _cause_ids(level: Level, condition: Condition) -> list[int]:
    side = condition.side
    left = side is Side.LEFT
    if condition is Condition.SPINAL_CANAL:
        kinds = [CauseKind.DISC, CauseKind.DISC_LEFT, CauseKind.DISC_RIGHT, CauseKind.FLAVUM]
        kinds += [CauseKind.FACET_LEFT, CauseKind.FACET_RIGHT]
    elif condition in (Condition.LEFT_SUBARTICULAR, Condition.RIGHT_SUBARTICULAR):
        kinds = [
            CauseKind.DISC_LEFT if left else CauseKind.DISC_RIGHT,
            CauseKind.FACET_LEFT if left else CauseKind.FACET_RIGHT,
        ]
    else:
        kinds = [
            CauseKind.DISC_FORAMINAL_LEFT if left else CauseKind.DISC_FORAMINAL_RIGHT,
            CauseKind.FACET_LEFT if left else CauseKind.FACET_RIGHT,
            CauseKind.DISC_LEFT if left else CauseKind.DISC_RIGHT,
        ]
    return [cause_id(level, k) for k in kinds]


def _findings_json(meas: dict[Level, LevelMeasurements]) -> tuple[dict[str, Any], dict[str, Any]]:
    levels: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for lv, m in meas.items():
        levels[lv.value] = {}
        for cond in Condition:
            name, value = m.deciding(cond)
            levels[lv.value][cond.value] = {
                "grade": m.grade(cond).value,
                "measurement": {"name": name.value, "value": round(float(value), 4)},
            }
        extra[lv.value] = {
            "dsca_mm2": round(m.dsca_mm2, 3),
            "ap_diameter_mm": round(m.ap_diameter_mm, 3),
            "disc_height_mm": round(m.disc_height_mm, 3),
            "lateral_recess_depth_mm": {s.value: round(v, 3) for s, v in m.recess_mm.items()},
            "foraminal_area_ratio": {s.value: round(v, 4) for s, v in m.foramen_ratio.items()},
            "foraminal_area_mm2": {s.value: round(v, 3) for s, v in m.foramen_area_mm2.items()},
        }
    return levels, extra


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

    sag = _sagittal(r_geom, curve, model, pose, opts)
    axials = [_axial(r_geom, curve, model, pose, lv, opts) for lv in Level]
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
    desc = _DESCRIPTIONS[profile.manufacturer]
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
    levels_json, extra = _findings_json(meas)
    for lv in Level:
        for cond in Condition:
            if meas[lv].grade(cond) is Grade.NORMAL_MILD:
                continue
            foraminal = cond in (Condition.LEFT_FORAMINAL, Condition.RIGHT_FORAMINAL)
            src = s_sag.causes if foraminal else ax_causes[lv]
            mask = np.isin(src, _cause_ids(lv, cond))
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
