"""Pathology drivers per level, searched so that a data set holds a balanced share of every grade.

How balance is reached without deciding grades from drivers: for each (level, condition) a *target*
measurement is drawn evenly across the three FINDINGS.md grade bands, and the driver that acts on that
condition (canal: disc protrusion and/or flavum hypertrophy; recess: facet hypertrophy; foramen:
foraminal disc protrusion) is set by bisection on a coarse measurement of the anatomy. The ground truth is
then *measured again* at full resolution on the final anatomy (cds.synth.measure), so drivers acting on
several conditions at once (a bulge narrows canal and recess; a hypertrophied facet narrows recess and
foramen) can move a finding to another grade: the truth is always the measurement.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np

from cds.domain import Level, Side
from cds.synth.anatomy import LEVEL_DISC_INDEX, Anatomy, LevelDrivers, MarrowLesion, ProtrusionKind
from cds.synth.measure import dsca, foramen_area, recess_depth
from cds.synth.raster import SpineModel

# Target bands (low, high) per grade index 0 normal_mild, 1 moderate, 2 severe.
_DSCA_BANDS = ((104.0, 190.0), (78.0, 97.0), (30.0, 72.0))
_RECESS_BANDS = ((5.3, 7.5), (3.2, 4.8), (0.4, 2.8))
_RATIO_BANDS = ((0.64, 1.0), (0.38, 0.57), (0.08, 0.32))


def _bisect(f: Callable[[float], float], target: float, lo: float, hi: float, iters: int = 4) -> float:
    """x in [lo, hi] with f(x) ~ target, for f decreasing in x (more pathology -> smaller value).

    Regula falsi with the Illinois modification: the measurements are smooth in their driver, so a few
    evaluations land within a fraction of a grade band (each evaluation rasterises a small region).
    """
    f_lo = f(lo) - target
    if f_lo <= 0:
        return lo
    f_hi = f(hi) - target
    if f_hi >= 0:
        return hi
    side = 0
    x = 0.5 * (lo + hi)
    for _ in range(iters):
        x = (lo * f_hi - hi * f_lo) / (f_hi - f_lo)
        fx = f(x) - target
        if abs(fx) < 1e-9:
            return x
        if fx > 0:
            lo, f_lo = x, fx
            if side == 1:
                f_hi *= 0.5
            side = 1
        else:
            hi, f_hi = x, fx
            if side == -1:
                f_lo *= 0.5
            side = -1
    return x


def _set(drv: LevelDrivers, field: str, value: float) -> LevelDrivers:
    """Copy of drv with one numeric driver changed (the searched one)."""
    return {
        "facet_left": lambda: replace(drv, facet_left=value),
        "facet_right": lambda: replace(drv, facet_right=value),
        "foraminal_left_mm": lambda: replace(drv, foraminal_left_mm=value),
        "foraminal_right_mm": lambda: replace(drv, foraminal_right_mm=value),
    }[field]()


def _with(anat: Anatomy, level: Level, drv: LevelDrivers) -> Anatomy:
    d = list(anat.drivers)
    d[level.index] = drv
    return replace(anat, drivers=tuple(d))


def _balanced_grades(rng: np.random.Generator) -> list[int]:
    """Target grade per level: each grade at least once in a patient's five levels, in random order."""
    g = [0, 1, 2, *(int(x) for x in rng.integers(0, 3, size=len(Level) - 3))]
    return [int(x) for x in rng.permutation(g)]


def sample_pathology(rng: np.random.Generator, anat: Anatomy) -> Anatomy:
    """Return the anatomy with drivers for every level (background degeneration + targeted narrowing)."""
    canal_targets = _balanced_grades(rng)
    recess_targets = {side: _balanced_grades(rng) for side in Side}
    foramen_targets = {side: _balanced_grades(rng) for side in Side}
    for lv in Level:
        caudal = lv.index / 4.0
        deg = float(np.clip(rng.beta(1.5, 1.5) + 0.25 * caudal * rng.random(), 0, 1))
        listhesis = float(rng.uniform(2.0, 7.0)) if rng.random() < (0.12 if lv.index >= 3 else 0.03) else 0.0
        drv = LevelDrivers(
            degeneration=deg,
            height_loss=float(deg * rng.uniform(0.0, 0.45)),
            bulge_mm=float(deg * rng.uniform(0.0, 1.2)),
            listhesis_mm=listhesis,
            flavum_mm=float(rng.uniform(2.0, 3.2)),
            protrusion_half_width_mm=float(rng.uniform(4.5, 7.5)),
        )
        anat = _with(anat, lv, drv)
        if deg > 0.55 and rng.random() < 0.4:  # Modic type 2 (fatty) change on both sides of the disc
            j = LEVEL_DISC_INDEX[lv]
            thick = float(rng.uniform(3.0, 8.0))
            bands = (
                MarrowLesion(j, "modic", 0.0, 0.0, 0.0, thick),
                MarrowLesion(j + 1, "modic", 0.0, 0.0, 1.0, thick),
            )
            anat = replace(anat, marrow_lesions=anat.marrow_lesions + bands)
        # grade targets of the lateral recesses are drawn first: a paracentral protrusion (which also
        # narrows the recess on its side) is only aimed at a side whose recess is meant to be narrowed
        recess_grades = {side: recess_targets[side][lv.index] for side in Side}
        # --- central canal: protrusion and/or flavum hypertrophy scaled by one severity x in [0, 1]
        g = canal_targets[lv.index]
        target = float(rng.uniform(*_DSCA_BANDS[g]))
        mech = int(rng.integers(3))  # 0 protrusion, 1 flavum, 2 both
        if g == 2 and rng.random() < 0.5:
            mech = 2  # severe stenosis in a large canal usually needs both
        narrowed = [s for s in Side if recess_grades[s] > 0]
        kind = ProtrusionKind.CENTRAL
        if narrowed and rng.random() < 0.5:
            side = narrowed[int(rng.integers(len(narrowed)))]
            kind = ProtrusionKind.PARACENTRAL_LEFT if side is Side.LEFT else ProtrusionKind.PARACENTRAL_RIGHT
        base = drv

        def canal(
            x: float, base: LevelDrivers = base, mech: int = mech, kind: ProtrusionKind = kind
        ) -> LevelDrivers:
            prot = 15.0 * x if mech in (0, 2) else 0.0
            flav = base.flavum_mm + (10.0 * x if mech in (1, 2) else 0.0)
            return replace(
                base, protrusion=kind if prot > 0 else ProtrusionKind.NONE, protrusion_mm=prot, flavum_mm=flav
            )

        def f_canal(x: float, lv: Level = lv, anat: Anatomy = anat, canal=canal) -> float:
            return dsca(SpineModel(_with(anat, lv, canal(x))), lv)

        drv = canal(_bisect(f_canal, target, 0.0, 1.0))
        anat = _with(anat, lv, drv)
        # --- lateral recesses: facet hypertrophy per side
        for side in Side:
            g = recess_grades[side]
            target = float(rng.uniform(*_RECESS_BANDS[g]))
            field = "facet_left" if side is Side.LEFT else "facet_right"

            def f_rec(
                h: float,
                side: Side = side,
                field: str = field,
                drv: LevelDrivers = drv,
                anat: Anatomy = anat,
                lv: Level = lv,
            ) -> float:
                return recess_depth(SpineModel(_with(anat, lv, _set(drv, field, h))), lv, side, 0.25)

            drv = _set(drv, field, _bisect(f_rec, target, 0.0, 1.2))
            anat = _with(anat, lv, drv)
        # --- foramina: foraminal protrusion per side (after facets and height loss)
        healthy = SpineModel(anat.without_pathology())
        for side in Side:
            g = foramen_targets[side][lv.index]
            target = float(rng.uniform(*_RATIO_BANDS[g]))
            ref = foramen_area(healthy, lv, side, 0.4)
            field = "foraminal_left_mm" if side is Side.LEFT else "foraminal_right_mm"
            if ref <= 0:
                continue

            def f_for(
                mm: float,
                side: Side = side,
                field: str = field,
                drv: LevelDrivers = drv,
                anat: Anatomy = anat,
                lv: Level = lv,
                ref: float = ref,
            ) -> float:
                m = SpineModel(_with(anat, lv, _set(drv, field, mm)))
                return foramen_area(m, lv, side, 0.4) / ref

            drv = _set(drv, field, _bisect(f_for, target, 0.0, 12.0))
            anat = _with(anat, lv, drv)
    return anat
