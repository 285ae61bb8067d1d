"""Ground-truth measurements of FINDINGS.md, taken on the generated anatomy (never on the drivers).

Each measurement rasterises only a small region of the straightened frame at fine resolution with the
same ``SpineModel.paint`` that produced the imaged volume:

* DSCA and AP diameter: planes of constant s (= planes parallel to the disc) every 0.5 mm across the disc
  level; DSCA = dural sac area (CSF + roots + cord) on the narrowest plane, AP = sac extent along the
  mid-sagittal line on that plane.
* lateral recess depth (per side): on the same planes, along the AP line through the recess (1.5 mm
  medial to the pedicle's medial wall), the distance from the posterior disc/vertebral-body margin to the
  superior articular process; minimum over the planes.
* foraminal area ratio (per side): on the parasagittal plane through the pedicles, the area of perineural
  fat + exiting root inside the foramen, divided by the same area for the same patient rendered without
  any narrowing (drivers reset to healthy).
* disc height: the disc's extent along s on the centre line (mid-sagittal, sagittal plane).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cds.domain import Condition, Grade, Level, MeasurementName, Side, grade_from_measurement
from cds.synth import labels as L
from cds.synth.anatomy import LEVEL_DISC_INDEX
from cds.synth.raster import Grid, SpineModel

_FINE = 0.25  # in-plane step of the axial measurement grids (mm)
_FOR = 0.2  # step of the foraminal plane grid (mm)


@dataclass(frozen=True)
class LevelMeasurements:
    level: Level
    dsca_mm2: float
    ap_diameter_mm: float
    disc_height_mm: float
    narrowest_s: float
    recess_mm: dict[Side, float]
    foramen_ratio: dict[Side, float]
    foramen_area_mm2: dict[Side, float]

    def deciding(self, condition: Condition) -> tuple[MeasurementName, float]:
        name = condition.deciding_measurement
        side = condition.side
        if name is MeasurementName.DSCA_MM2:
            return name, self.dsca_mm2
        assert side is not None
        if name is MeasurementName.FORAMINAL_AREA_RATIO:
            return name, self.foramen_ratio[side]
        return name, self.recess_mm[side]

    def grade(self, condition: Condition) -> Grade:
        return grade_from_measurement(condition, self.deciding(condition)[1])


def _axial_grid(model: SpineModel, level: Level, step: float = _FINE, u_half: float = 20.0) -> Grid:
    j = LEVEL_DISC_INDEX[level]
    lay = model.lay
    s0, s1 = lay.disc_lo[j] - 1.0, lay.disc_hi[j] + 1.0
    vpb = float(model.v_pb(np.array([0.5 * (s0 + s1)]))[0])
    s = np.arange(s0, s1 + 1e-6, max(step, 0.5), dtype=np.float32)
    u = np.arange(-u_half, u_half + 1e-6, step, dtype=np.float32)
    v = np.arange(vpb - 8.0, vpb + 30.0 + 1e-6, step, dtype=np.float32)
    return Grid(u, v, s)


def dsca(model: SpineModel, level: Level, step: float = 0.5) -> float:
    """DSCA only (coarser grid), for the driver search in cds.synth.pathology."""
    half = model.anat.sac_half_width + 1.0
    g = _axial_grid(model, level, step, half)
    lab, _ = model.paint(g)
    return float((_SAC[lab].sum(axis=(0, 1)) * step * step).min())


def recess_depth(model: SpineModel, level: Level, side: Side, step: float = 0.25) -> float:
    j = LEVEL_DISC_INDEX[level]
    low = model.anat.vertebrae[j + 1]
    sign = 1.0 if side is Side.LEFT else -1.0
    g0 = _axial_grid(model, level, step)
    g = Grid(np.array([sign * (low.canal_half_width - 1.5)], np.float32), g0.v, g0.s)
    lab, _ = model.paint(g)
    return float(np.nanmin([_recess_depth(lab[0, :, kk], g.v) for kk in range(len(g.s))]))


_DISC_OR_BODY = np.zeros(256, bool)
_DISC_OR_BODY[L.MARROW0 : L.MARROW0 + L.N_V] = True
_DISC_OR_BODY[L.CORTEX0 : L.CORTEX0 + L.N_V] = True
_DISC_OR_BODY[L.LESION0 : L.LESION0 + L.N_V] = True
_DISC_OR_BODY[L.NUCLEUS0 : L.ANNULUS0 + L.N_D] = True
_ARTIC = np.zeros(256, bool)
_ARTIC[L.ARTIC0 : L.ARTIC0 + L.N_V] = True
_BONE_POST = _ARTIC.copy()
_BONE_POST[L.POST0 : L.POST0 + L.N_V] = True
_SAC = np.zeros(256, bool)
_SAC[list(L.SAC_IDS)] = True


def _recess_depth(lab_col: np.ndarray, v: np.ndarray) -> float:
    """AP gap (mm) on one column (v ascending) from the last disc/body voxel to the next articular bone."""
    front = np.nonzero(_DISC_OR_BODY[lab_col])[0]
    if front.size == 0:
        return float("nan")
    k0 = front.max()
    behind = np.nonzero(_BONE_POST[lab_col[k0 + 1 :]])[0]
    if behind.size == 0:
        return float(v[-1] - v[k0])
    return float(behind[0] * (v[1] - v[0]))


def measure_level(model: SpineModel, healthy: SpineModel, level: Level) -> LevelMeasurements:
    g = _axial_grid(model, level)
    lab, _ = model.paint(g)
    sac = _SAC[lab]
    areas = sac.sum(axis=(0, 1)) * _FINE * _FINE
    k = int(np.argmin(areas))
    u0 = int(np.argmin(np.abs(g.u)))
    ap = float(sac[u0, :, k].sum() * _FINE)
    recess = {side: recess_depth(model, level, side) for side in Side}
    ratio: dict[Side, float] = {}
    area: dict[Side, float] = {}
    for side in Side:
        a_now = foramen_area(model, level, side)
        a_ref = foramen_area(healthy, level, side)
        area[side] = a_now
        ratio[side] = float(a_now / a_ref) if a_ref > 0 else 0.0
    return LevelMeasurements(
        level=level,
        dsca_mm2=float(areas[k]),
        ap_diameter_mm=ap,
        disc_height_mm=_disc_height(model, level),
        narrowest_s=float(g.s[k]),
        recess_mm=recess,
        foramen_ratio=ratio,
        foramen_area_mm2=area,
    )


def foramen_plane_u(model: SpineModel, level: Level, side: Side) -> float:
    j = LEVEL_DISC_INDEX[level]
    wc = model.anat.vertebrae[j].canal_half_width
    sign = 1.0 if side is Side.LEFT else -1.0
    return sign * (wc + 3.75)


def foramen_area(model: SpineModel, level: Level, side: Side, step: float = _FOR) -> float:
    j = LEVEL_DISC_INDEX[level]
    lay = model.lay
    s0, s1 = lay.disc_lo[j] - 16.0, lay.disc_hi[j] + 22.0
    vpb = float(model.v_pb(np.array([0.5 * (s0 + s1)]))[0])
    u = np.array([foramen_plane_u(model, level, side)], dtype=np.float32)
    v = np.arange(vpb - 10.0, vpb + 22.0, step, dtype=np.float32)
    s = np.arange(s0, s1, step, dtype=np.float32)
    lab, _ = model.paint(Grid(u, v, s))
    ids = (L.FORAMEN_FAT_LEFT, L.ROOT_LEFT) if side is Side.LEFT else (L.FORAMEN_FAT_RIGHT, L.ROOT_RIGHT)
    return float(np.isin(lab, ids).sum() * step * step)


def _disc_height(model: SpineModel, level: Level) -> float:
    j = LEVEL_DISC_INDEX[level]
    lay = model.lay
    sl = 0.5 * (lay.slip[j] + lay.slip[j + 1])
    s = np.arange(lay.disc_lo[j] - 4.0, lay.disc_hi[j] + 4.0, 0.1, dtype=np.float32)
    g = Grid(np.array([0.0], np.float32), np.array([sl], np.float32), s)
    lab, _ = model.paint(g)
    disc = (lab >= L.NUCLEUS0) & (lab < L.ANNULUS0 + L.N_D)
    return float(disc.sum() * 0.1)


def measure_all(model: SpineModel, healthy: SpineModel) -> dict[Level, LevelMeasurements]:
    return {lv: measure_level(model, healthy, lv) for lv in Level}
