"""Rasterise the implicit anatomy onto an axis-aligned grid of the straightened (u, v, s) frame.

Every structure is an implicit shape (superellipses, ellipsoids, capsules, bands) written around its own
level. ``SpineModel.paint`` draws them in priority order (soft canal contents first, bone last), each one
only inside its bounding box, so that painting a 14-million-voxel volume stays in the ~1 s range on one core.

The same code paints the big 0.6 mm volume the scanner samples *and* the small 0.2-0.25 mm grids on which
``cds.synth.measure`` measures DSCA, recess depth and foraminal area: the ground truth is measured on the
very anatomy that is imaged.

Pathology is painted twice: first the pathological (enlarged) shape tagged with a cause id, then the normal
shape over it untagged, so the cause volume holds exactly the *excess* tissue (the protruding disc margin,
the hypertrophied flavum or facet) that FINDINGS.md asks to be written as the explanation ground truth.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from cds.domain import Level
from cds.synth import labels as L
from cds.synth.anatomy import LEVEL_DISC_INDEX, V_INDEX, Anatomy, LevelDrivers, ProtrusionKind, layout

Arr = np.ndarray


class CauseKind(IntEnum):
    """What a tagged excess voxel is; cause id = 1 + 8 * level.index + kind."""

    DISC = 0  # posterior bulge / protrusion material in the central zone (|u| < 4 mm)
    DISC_FORAMINAL_LEFT = 1
    DISC_FORAMINAL_RIGHT = 2
    FLAVUM = 3
    FACET_LEFT = 4
    FACET_RIGHT = 5
    DISC_LEFT = 6  # posterior bulge / protrusion material left of the central zone
    DISC_RIGHT = 7


def cause_id(level: Level, kind: CauseKind) -> int:
    return 1 + 8 * level.index + int(kind)


@dataclass(frozen=True)
class Grid:
    """Axis-aligned sample grid of the straightened frame (1-D coordinates per axis, mm)."""

    u: Arr
    v: Arr
    s: Arr

    @classmethod
    def box(cls, lo: tuple[float, float, float], hi: tuple[float, float, float], step: float) -> Grid:
        axes = [np.arange(a, b + step / 2, step, dtype=np.float32) for a, b in zip(lo, hi, strict=True)]
        return cls(*axes)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self.u), len(self.v), len(self.s))


class _Canvas:
    def __init__(self, grid: Grid):
        self.g = grid
        self.labels = np.zeros(grid.shape, np.uint8)
        self.causes = np.zeros(grid.shape, np.uint8)

    @staticmethod
    def _range(axis: Arr, lo: float, hi: float) -> slice:
        """Indices of the (uniform, ascending) axis values within [lo, hi], without a search."""
        n = len(axis)
        a0 = float(axis[0])
        if n == 1:
            return slice(0, 1) if lo <= a0 <= hi else slice(0, 0)
        step = float(axis[1]) - a0
        i0 = max(0, math.ceil((lo - a0) / step - 1e-6))
        i1 = min(n, math.floor((hi - a0) / step + 1e-6) + 1)
        return slice(i0, max(i0, i1))

    def paint(
        self,
        value: int | Callable[[Arr, Arr, Arr, Arr], Arr],
        bbox: Sequence[float],
        inside: Callable[[Arr, Arr, Arr], Arr],
        cause: int | Callable[[Arr, Arr, Arr], Arr] = 0,
    ) -> None:
        g = self.g
        su = self._range(g.u, bbox[0], bbox[1])
        sv = self._range(g.v, bbox[2], bbox[3])
        ss = self._range(g.s, bbox[4], bbox[5])
        if su.start >= su.stop or sv.start >= sv.stop or ss.start >= ss.stop:
            return
        U = g.u[su][:, None, None]
        V = g.v[sv][None, :, None]
        S = g.s[ss][None, None, :]
        m = np.broadcast_to(inside(U, V, S), (su.stop - su.start, sv.stop - sv.start, ss.stop - ss.start))
        if not m.any():
            return
        lab = self.labels[su, sv, ss]
        if callable(value):
            lab[m] = np.broadcast_to(value(U, V, S, m), m.shape)[m]
        else:
            lab[m] = value
        if callable(cause):
            self.causes[su, sv, ss][m] = np.broadcast_to(cause(U, V, S), m.shape)[m]
        else:
            self.causes[su, sv, ss][m] = cause


def _superellipse(u: Arr, v: Arr, a: Arr | float, b: Arr | float, p: float) -> Arr:
    return np.abs(u / a) ** p + np.abs(v / b) ** p


class SpineModel:
    """Implicit anatomy of one patient; ``paint(grid)`` returns (internal labels, cause ids)."""

    def __init__(self, anat: Anatomy):
        self.anat = anat
        self.lay = layout(anat)
        lay = self.lay
        vs = anat.vertebrae
        mids = 0.5 * (lay.body_lo + lay.body_hi)
        order = np.argsort(mids)
        self._mid_sorted = mids[order]
        self._b_sorted = np.array([vs[i].half_depth for i in order])
        self._wc_sorted = np.array([vs[i].canal_half_width for i in order])
        self._dc_sorted = np.array([vs[i].canal_depth for i in order])
        self._slip_sorted = lay.slip[order]
        self.s_top = float(lay.body_hi[0])
        self.s_bottom = float(lay.body_lo[-1])
        i_s2 = V_INDEX["S2"]
        self.sac_end = float(0.5 * (lay.body_lo[i_s2] + lay.body_hi[i_s2]))
        self.conus = float(lay.disc_lo[LEVEL_DISC_INDEX[Level.L1_L2]] + anat.conus_s_offset)

    # ---- smooth per-s canal quantities ----------------------------------------------------------
    def v_pb(self, s: Arr) -> Arr:
        """Posterior vertebral-body margin (v) at s, including listhesis."""
        return 0.9 * np.interp(s, self._mid_sorted, self._b_sorted) + self.slip(s)

    def slip(self, s: Arr) -> Arr:
        return np.interp(s, self._mid_sorted, self._slip_sorted)

    def canal_w(self, s: Arr) -> Arr:
        return np.interp(s, self._mid_sorted, self._wc_sorted)

    def canal_d(self, s: Arr) -> Arr:
        return np.interp(s, self._mid_sorted, self._dc_sorted)

    def sac_geometry(self, s: Arr) -> tuple[Arr, Arr, Arr]:
        """(centre v, half width, half depth) of the dural sac at s; it tapers to its end in S2."""
        a = self.anat
        s1_top = 0.0
        taper = np.clip((s - self.sac_end) / max(s1_top - self.sac_end, 1.0), 0.0, 1.0)
        f = 0.35 + 0.65 * np.sqrt(taper)
        ws = a.sac_half_width * f
        hs = a.sac_half_depth * f
        vc = self.v_pb(s) + 0.7 + hs
        return vc, ws, hs

    # ---- painting -------------------------------------------------------------------------------
    def paint(self, grid: Grid) -> tuple[Arr, Arr]:
        cv = _Canvas(grid)
        self._canal_contents(cv)
        self._foramina(cv)
        for lv in Level:
            self._flavum(cv, lv)
        for j in range(L.N_D):
            self._disc(cv, j)
        for i in range(L.N_V):
            self._posterior(cv, i)
        for lv in Level:
            self._facets(cv, lv)
        for i in range(L.N_V):
            self._body(cv, i)
        return cv.labels, cv.causes

    def _canal_contents(self, cv: _Canvas) -> None:
        a = self.anat
        top, bot = self.s_top + 5, self.s_bottom

        def fat(U: Arr, V: Arr, S: Arr) -> Arr:
            vpb = self.v_pb(S)
            front = vpb + self.canal_d(S) - 0.35 * np.abs(U)
            return (np.abs(U) <= self.canal_w(S) + 0.5) & (vpb - 0.5 <= V) & (front >= V)

        cv.paint(L.EPIDURAL_FAT, (-25, 25, -5, 60, bot, top), fat)

        def sac(U: Arr, V: Arr, S: Arr) -> Arr:
            vc, ws, hs = self.sac_geometry(S)
            return ((U / ws) ** 2 + ((V - vc) / hs) ** 2 <= 1.0) & (self.sac_end <= S)

        cv.paint(L.CSF, (-12, 12, -5, 50, self.sac_end - 1, top), sac)

        # cauda equina: roots at fixed positions in sac-normalised coordinates, lying dependently
        # (posteriorly, supine patient); one pair leaves at each level going down.
        rng = np.random.default_rng(a.n_cauda_roots * 7919 + int(a.sac_half_width * 100))
        n = a.n_cauda_roots
        for k in range(n):
            ang = np.pi * (0.15 + 0.7 * (k + 0.5) / n)  # posterior half-ring
            rad = rng.uniform(0.35, 0.8)
            un0, vn0 = rad * np.cos(ang) * 1.4, rad * np.sin(ang)
            r = rng.uniform(0.55, 0.9)
            lowest = self.sac_end + 10 + (k % 6) * 12

            def root(
                U: Arr,
                V: Arr,
                S: Arr,
                un0: float = un0,
                vn0: float = vn0,
                r: float = r,
                lowest: float = lowest,
            ) -> Arr:
                vc, ws, hs = self.sac_geometry(S)
                return (
                    ((U - un0 * ws * 0.75) ** 2 + (V - vc - vn0 * hs * 0.75) ** 2 <= r * r)
                    & (lowest <= S)
                    & (self.conus + 5 >= S)
                )

            cv.paint(L.CAUDA, (-12, 12, -5, 50, lowest, self.conus + 5), root)

        def cord(U: Arr, V: Arr, S: Arr) -> Arr:
            vc, _, _ = self.sac_geometry(S)
            f = np.clip((S - self.conus) / 18.0, 0.0, 1.0) ** 0.6
            return (U / (5.0 * f + 1e-3)) ** 2 + ((V - vc + 0.5) / (4.0 * f + 1e-3)) ** 2 <= 1.0

        cv.paint(L.CORD, (-7, 7, -5, 50, self.conus, top), cord)

    def _foramina(self, cv: _Canvas) -> None:
        """Perineural fat filling each foramen, then the exiting root (upper vertebra's root)."""
        lay = self.lay
        for lv in Level:
            j = LEVEL_DISC_INDEX[lv]
            up, low = j, j + 1
            vs_up = self.anat.vertebrae[up]
            s_hi_f = 0.5 * (lay.body_lo[up] + lay.body_hi[up]) - 1.0  # upper pedicle bottom
            s_lo_f = lay.body_hi[low] - 4.0
            s_c = 0.5 * (s_hi_f + s_lo_f)
            half_s = 0.5 * (s_hi_f - s_lo_f) + 1.0
            for sign, fat_id, root_id in (
                (1, L.FORAMEN_FAT_LEFT, L.ROOT_LEFT),
                (-1, L.FORAMEN_FAT_RIGHT, L.ROOT_RIGHT),
            ):
                wc = vs_up.canal_half_width

                def env(
                    U: Arr,
                    V: Arr,
                    S: Arr,
                    s_c: float = s_c,
                    half_s: float = half_s,
                    wc: float = wc,
                    sign: int = sign,
                ) -> Arr:
                    vpb = self.v_pb(S)
                    z = (S - s_c) / half_s  # -1 bottom .. +1 top
                    au = sign * U
                    # full height through the pedicle plane (where it is measured), tapering laterally
                    lateral = np.clip(1.0 - 0.6 * (au - (wc + 5.0)) / 9.0, 0.4, 1.0)
                    half_v = 5.5 * (0.55 + 0.45 * (z + 1) / 2) * lateral
                    vc = vpb + 4.5
                    return (z**2 + ((V - vc) / half_v) ** 2 <= 1.0) & (au >= wc - 1.0) & (au <= wc + 14.0)

                cv.paint(
                    fat_id, self._side_box(sign, wc - 2, wc + 15, -5, 40, s_c - half_s, s_c + half_s), env
                )

                p0 = np.array([sign * (self.anat.sac_half_width - 1.5), 0.0, s_hi_f + 9.0])
                p1 = np.array([sign * (wc + 4.0), 0.0, s_hi_f - 4.0])
                p2 = np.array([sign * (wc + 26.0), 0.0, s_hi_f - 14.0])
                for pa, pb_, rad in ((p0, p1, 2.0), (p1, p2, 2.4)):
                    self._paint_root(cv, root_id, pa, pb_, rad)

    def _paint_root(self, cv: _Canvas, rid: int, pa: Arr, pb: Arr, rad: float) -> None:
        """Capsule between pa and pb whose v follows the canal: v = v_pb(s) + 4 + offset."""

        def inside(U: Arr, V: Arr, S: Arr) -> Arr:
            vrel = V - (self.v_pb(S) + 4.0)
            d = np.array(pb) - np.array(pa)
            t = ((U - pa[0]) * d[0] + (vrel - pa[1]) * d[1] + (S - pa[2]) * d[2]) / float(d @ d)
            t = np.clip(t, 0.0, 1.0)
            return (U - pa[0] - t * d[0]) ** 2 + (vrel - pa[1] - t * d[1]) ** 2 + (
                S - pa[2] - t * d[2]
            ) ** 2 <= rad * rad

        lo = np.minimum(pa, pb) - rad - 1
        hi = np.maximum(pa, pb) + rad + 1
        cv.paint(rid, (lo[0], hi[0], -5, 45, lo[2], hi[2]), inside)

    @staticmethod
    def _side_box(
        sign: int, a: float, b: float, v0: float, v1: float, s0: float, s1: float
    ) -> tuple[float, ...]:
        return (a, b, v0, v1, s0, s1) if sign > 0 else (-b, -a, v0, v1, s0, s1)

    def _flavum(self, cv: _Canvas, lv: Level) -> None:
        j = LEVEL_DISC_INDEX[lv]
        lay = self.lay
        d = self.anat.drivers[lv.index]
        s0, s1 = lay.disc_lo[j] - 7.0, lay.disc_hi[j] + 5.0

        def band(thick: float) -> Callable[[Arr, Arr, Arr], Arr]:
            def inside(U: Arr, V: Arr, S: Arr) -> Arr:
                front = self.v_pb(S) + self.canal_d(S) - 0.35 * np.abs(U)
                z = (S - 0.5 * (s0 + s1)) / (0.5 * (s1 - s0))
                t = thick * np.sqrt(np.clip(1 - z**4, 0, 1))
                return (np.abs(U) <= self.canal_w(S) + 3.0) & (front - t <= V) & (front + 3.0 >= V)

            return inside

        normal = min(d.flavum_mm, 2.6)
        if d.flavum_mm > normal + 0.05:
            cv.paint(L.FLAVUM, (-20, 20, -5, 50, s0, s1), band(d.flavum_mm), cause_id(lv, CauseKind.FLAVUM))
        cv.paint(L.FLAVUM, (-20, 20, -5, 50, s0, s1), band(normal))

    def _disc_shape(
        self, j: int, bulge: float, lobes: tuple[tuple[float, float, float, float, float], ...]
    ) -> tuple[Callable[[Arr, Arr, Arr], Arr], tuple[float, ...]]:
        """Disc j footprint (+ bulge) with lobes (u_centre, half_width, depth, v_margin, cranial_ext)."""
        vs = self.anat.vertebrae
        up, low = vs[j], vs[j + 1]
        lay = self.lay
        lo, hi = lay.disc_lo[j], lay.disc_hi[j]
        a0 = 0.5 * (up.half_width + low.half_width)
        b0 = 0.5 * (up.half_depth + low.half_depth)
        p = 0.5 * (up.exponent + low.exponent)
        sl_lo, sl_hi = lay.slip[j + 1], lay.slip[j]
        mid, half = 0.5 * (lo + hi), 0.5 * (hi - lo)

        def inside(U: Arr, V: Arr, S: Arr) -> Arr:
            w = np.clip((S - lo) / max(hi - lo, 0.1), 0, 1)
            Vs = V - (sl_lo + (sl_hi - sl_lo) * w)
            a, b = a0 + bulge, b0 + bulge
            base = (_superellipse(U, Vs, a, b, p) <= 1.0) & (Vs <= 0.9 * b0 + bulge)
            z = (S - mid) / (half + 1.0)
            taper = np.clip(1.0 - z**4, 0.0, 1.0)
            m = base & (np.abs(S - mid) <= half + 1.6)
            for uc, hw, depth, vm, up in lobes:
                lmid, lhalf = mid + 0.5 * up, half + 1.0 + 0.5 * up
                zl = (S - lmid) / lhalf
                tl = np.clip(1.0 - zl**4, 0.0, 1.0) if up > 0 else taper
                lobe = (((U - uc) / hw) ** 2 + ((Vs - vm) / (depth * tl + 1e-3)) ** 2 <= 1.0) & (Vs >= vm - 3)
                m = m | (lobe & (np.abs(S - lmid) <= lhalf))
            return m

        ext = 12.0
        up_ext = max([lb[4] for lb in lobes], default=0.0)
        bbox = (
            -a0 - ext - 10,
            a0 + ext + 10,
            -b0 - ext,
            b0 + ext + 6 + abs(sl_lo) + abs(sl_hi),
            lo - 2,
            hi + 2 + up_ext,
        )
        return inside, bbox

    def disc_margin_v(self, j: int, u: float) -> float:
        """Posterior margin v of the healthy disc footprint at lateral position u (no slip)."""
        vs = self.anat.vertebrae
        a0 = 0.5 * (vs[j].half_width + vs[j + 1].half_width)
        b0 = 0.5 * (vs[j].half_depth + vs[j + 1].half_depth)
        p = 0.5 * (vs[j].exponent + vs[j + 1].exponent)
        r = max(0.0, 1.0 - abs(u / a0) ** p)
        return float(min(b0 * r ** (1.0 / p), 0.9 * b0))

    def _disc(self, cv: _Canvas, j: int) -> None:
        vs = self.anat.vertebrae
        lay = self.lay
        lv = next((lv for lv in Level if LEVEL_DISC_INDEX[lv] == j), None)
        d = self.anat.drivers[lv.index] if lv is not None else LevelDrivers()
        lobes: list[tuple[float, float, float, float, float]] = []
        b0 = 0.5 * (vs[j].half_depth + vs[j + 1].half_depth)
        if d.protrusion is not ProtrusionKind.NONE and d.protrusion_mm > 0:
            ws = self.anat.sac_half_width
            uc = {
                ProtrusionKind.CENTRAL: 0.0,
                ProtrusionKind.PARACENTRAL_LEFT: 0.6 * ws,
                ProtrusionKind.PARACENTRAL_RIGHT: -0.6 * ws,
            }[d.protrusion]
            lobes.append((uc, d.protrusion_half_width_mm, d.protrusion_mm, 0.9 * b0, 0.0))
        wc = vs[j].canal_half_width
        fl = []
        for sign, depth in ((1, d.foraminal_left_mm), (-1, d.foraminal_right_mm)):
            if depth > 0:
                uc = sign * (wc + 5.0)
                vm = self.disc_margin_v(j, uc)
                fl.append((uc, 4.0, depth + 0.9 * b0 - vm, vm, 1.2 * depth))
        mid = 0.5 * (lay.disc_lo[j] + lay.disc_hi[j])
        nuc_id, ann_id = L.NUCLEUS0 + j, L.ANNULUS0 + j
        a0 = 0.5 * (vs[j].half_width + vs[j + 1].half_width)
        half = 0.5 * (lay.disc_hi[j] - lay.disc_lo[j])
        sl = 0.5 * (lay.slip[j] + lay.slip[j + 1])

        def value(U: Arr, V: Arr, S: Arr, m: Arr) -> Arr:
            nuc = (
                (U / (0.7 * a0)) ** 2
                + ((V - sl - 1.0) / (0.58 * b0)) ** 2
                + ((S - mid) / (0.75 * half + 0.6)) ** 2
            ) <= 1.0
            return np.where(nuc, nuc_id, ann_id).astype(np.uint8)

        if lv is not None:
            for lobe in fl:
                kind = CauseKind.DISC_FORAMINAL_LEFT if lobe[0] > 0 else CauseKind.DISC_FORAMINAL_RIGHT
                shape, bbox = self._disc_shape(j, 0.0, (lobe,))
                cv.paint(ann_id, bbox, shape, cause_id(lv, kind))
            if lobes or d.bulge_mm > 0:
                shape, bbox = self._disc_shape(j, d.bulge_mm, tuple(lobes))
                ids = np.array(
                    [cause_id(lv, k) for k in (CauseKind.DISC_RIGHT, CauseKind.DISC, CauseKind.DISC_LEFT)]
                )
                v_back = 0.3 * b0 + sl

                def zone(U: Arr, V: Arr, S: Arr, ids: Arr = ids) -> Arr:
                    return ids[(U > -4.0).astype(int) + (U >= 4.0).astype(int)].astype(np.uint8)

                def posterior(
                    U: Arr, V: Arr, S: Arr, shape: Callable[..., Arr] = shape, v_back: float = v_back
                ) -> Arr:
                    # only the posterior margin narrows canal, recesses and foramina: the anterior and
                    # lateral bulge is drawn (below, untagged) but is no cause of a finding
                    return shape(U, V, S) & (v_back <= V)

                cv.paint(ann_id, bbox, shape)
                cv.paint(ann_id, bbox, posterior, zone)
        shape, bbox = self._disc_shape(j, 0.0, ())
        cv.paint(value, bbox, shape)

    def _body(self, cv: _Canvas, i: int) -> None:
        vb = self.anat.vertebrae[i]
        lo, hi = float(self.lay.body_lo[i]), float(self.lay.body_hi[i])
        a, b, p, sl = vb.half_width, vb.half_depth, vb.exponent, float(self.lay.slip[i])
        mid, half = 0.5 * (lo + hi), 0.5 * (hi - lo)
        cav = 1.6  # endplate concavity depth
        # fused sacral segments have flat endplates (only the S1 top faces a disc)
        i_s1 = L.VERTEBRAE.index("S1")
        cav_lo = cav if i < i_s1 else 0.0
        cav_hi = cav if i <= i_s1 else 0.0

        def shape(shrink: float) -> Callable[[Arr, Arr, Arr], Arr]:
            def inside(U: Arr, V: Arr, S: Arr) -> Arr:
                Vs = V - sl
                zeta = (S - mid) / half
                wf = 1.0 - vb.waist * (1.0 - zeta**2)
                aa, bb = a * wf - shrink, b * (1.0 - 0.5 * vb.waist * (1.0 - zeta**2)) - shrink
                r2 = (U / a) ** 2 + (Vs / b) ** 2
                conc = np.clip(1.0 - r2, 0.0, 1.0)
                return (
                    (_superellipse(U, Vs, aa, bb, p) <= 1.0)
                    & (Vs <= 0.9 * b - shrink)
                    & (lo + cav_lo * conc + shrink * 0.8 <= S)
                    & (hi - cav_hi * conc - shrink * 0.8 >= S)
                )

            return inside

        bbox = (-a - 1, a + 1, -b - 1 + sl, b + 1 + sl, lo - 1, hi + 1)
        cv.paint(L.CORTEX0 + i, bbox, shape(0.0))
        marrow = shape(1.3)
        cv.paint(L.MARROW0 + i, bbox, marrow)
        for les in self.anat.marrow_lesions:
            if les.vertebra != i:
                continue
            if les.kind == "modic":
                s_end = hi if les.s_frac >= 0.5 else lo

                def band(U: Arr, V: Arr, S: Arr, s_end: float = s_end, t: float = les.size) -> Arr:
                    return marrow(U, V, S) & (np.abs(S - s_end) <= t + 1.6 + 1.3)

                cv.paint(L.LESION0 + i, bbox, band)
            else:
                c = np.array([les.u, les.v + sl, lo + les.s_frac * (hi - lo)])

                def ball(U: Arr, V: Arr, S: Arr, c: Arr = c, r: float = les.size) -> Arr:
                    return marrow(U, V, S) & (((U - c[0]) ** 2 + (V - c[1]) ** 2 + (S - c[2]) ** 2) <= r * r)

                cv.paint(L.LESION0 + i, bbox, ball)

    def _posterior(self, cv: _Canvas, i: int) -> None:
        """Pedicles, laminae, spinous and transverse processes of vertebra i (a fused crest in the sacrum)."""
        vb = self.anat.vertebrae[i]
        lo, hi = float(self.lay.body_lo[i]), float(self.lay.body_hi[i])
        sl = float(self.lay.slip[i])
        mid = 0.5 * (lo + hi)
        wc, dc = vb.canal_half_width, vb.canal_depth
        vpb = 0.9 * vb.half_depth + sl
        pid = L.POST0 + i
        sacral = i >= V_INDEX["S1"]
        pw = 7.5 if not sacral else 9.0
        s_ped, ph = mid + 0.25 * (hi - lo), 0.3 * (hi - lo) + 3.0

        def pedicle(U: Arr, V: Arr, S: Arr) -> Arr:
            return ((np.abs(U) - (wc + pw / 2)) / (pw / 2)) ** 2 + ((S - s_ped) / ph) ** 2 <= 1.0

        cv.paint(
            pid,
            (-wc - pw - 1, wc + pw + 1, vpb - 4, vpb + dc - 0.35 * wc + 3, s_ped - ph, s_ped + ph),
            pedicle,
        )

        lam_lo, lam_hi = lo - 4.0, mid + 4.0

        def lamina(U: Arr, V: Arr, S: Arr) -> Arr:
            front = vpb + dc - 0.35 * np.abs(U)
            shift = 0.15 * (V - front)
            return (
                (np.abs(U) <= wc + 6)
                & (front <= V)
                & (front + 6.0 >= V)
                & (S - shift >= lam_lo)
                & (S - shift <= lam_hi)
            )

        cv.paint(pid, (-wc - 7, wc + 7, vpb, vpb + dc + 8, lam_lo - 3, lam_hi + 3), lamina)

        sp_len = 30.0 if not sacral else 10.0
        v0 = vpb + dc + 2

        def spinous(U: Arr, V: Arr, S: Arr) -> Arr:
            # a plate sloping caudally, narrow at its waist and club-shaped at the tip
            x = np.clip((V - v0) / sp_len, 0, 1)
            sc = mid - 2.0 - 7.0 * x
            hh = 8.5 - 3.5 * np.sin(np.pi * x) + 1.5 * x
            return (
                (np.abs(U) <= 3.5 - 1.0 * x)
                & (v0 - 3 <= V)
                & (np.abs((V - v0) / sp_len) ** 2.5 + np.abs((S - sc) / hh) ** 2.5 <= 1.0)
            )

        cv.paint(pid, (-4, 4, v0 - 3, v0 + sp_len + 1, mid - 20, mid + 12), spinous)

        tp_len = {"L3": 30.0, "L2": 26.0, "L4": 26.0, "L1": 22.0, "L5": 24.0}.get(L.VERTEBRAE[i], 16.0)
        if sacral:
            tp_len = 40.0 * vb.half_width / 23.0

        def transverse(U: Arr, V: Arr, S: Arr) -> Arr:
            au = np.abs(U)
            return (
                (au >= wc + 2)
                & (au <= wc + pw / 2 + tp_len)
                & (((V - vpb - 5.0) / 3.5) ** 2 + ((S - s_ped) / (5.0 if not sacral else 12.0)) ** 2 <= 1.0)
            )

        ext = wc + pw / 2 + tp_len + 1
        cv.paint(pid, (-ext, ext, vpb, vpb + 10, s_ped - 13, s_ped + 13), transverse)

    def sap_geometry(self, lv: Level, sign: int, hyp: float) -> tuple[Arr, Arr, float]:
        """Superior articular process of the lower vertebra at level lv: (centre (u, v, s), semi-axes)."""
        j = LEVEL_DISC_INDEX[lv]
        low = self.anat.vertebrae[j + 1]
        lay = self.lay
        wc = low.canal_half_width
        vpb = 0.9 * low.half_depth + lay.slip[j + 1]
        rd0 = 6.2 * (low.canal_depth / 17.5)
        smid = 0.5 * (lay.disc_lo[j] + lay.disc_hi[j])
        c = np.array([sign * (wc + 2.0 - 0.3 * hyp), vpb + rd0 + 3.2 - 0.5 * hyp, smid + 2.0])
        ax = np.array([5.0, 4.5, 10.0]) * (1.0 + np.array([0.12, 0.12, 0.05]) * hyp)
        return c, ax, vpb

    def osteophyte_geometry(self, lv: Level, sign: int, hyp: float) -> tuple[Arr, Arr]:
        """Medial overgrowth of a hypertrophied superior articular process, into the lateral recess."""
        j = LEVEL_DISC_INDEX[lv]
        low = self.anat.vertebrae[j + 1]
        wc = low.canal_half_width
        vpb = 0.9 * low.half_depth + self.lay.slip[j + 1]
        rd0 = 6.2 * (low.canal_depth / 17.5)
        smid = 0.5 * (self.lay.disc_lo[j] + self.lay.disc_hi[j])
        c = np.array([sign * (wc - 1.5), vpb + rd0 + 2.5 - 7.0 * hyp, smid + 1.0])
        ax = np.array([3.0 + 1.5 * hyp, 2.5 + 0.5 * hyp, 7.0 + 2.0 * hyp])
        return c, ax

    def _facets(self, cv: _Canvas, lv: Level) -> None:
        j = LEVEL_DISC_INDEX[lv]
        d = self.anat.drivers[lv.index]
        art_low, art_up = L.ARTIC0 + j + 1, L.ARTIC0 + j
        for sign, hyp, kind in (
            (1, d.facet_left, CauseKind.FACET_LEFT),
            (-1, d.facet_right, CauseKind.FACET_RIGHT),
        ):
            c0, ax0, _ = self.sap_geometry(lv, sign, 0.0)
            up = self.anat.vertebrae[j]
            iap_c = np.array(
                [
                    sign * (up.canal_half_width + 1.5),
                    c0[1] + 6.0 + self.lay.slip[j] - self.lay.slip[j + 1],
                    c0[2] - 4.0,
                ]
            )
            iap_ax = np.array([4.5, 4.0, 11.0])
            cv.paint(art_up, _ell_bbox(iap_c, iap_ax), _ellipsoid(iap_c, iap_ax))
            sap_grown, iap_grown = _ellipsoid(c0, ax0 * 1.15), _ellipsoid(iap_c, iap_ax * 1.05)

            def joint(
                U: Arr, V: Arr, S: Arr, a: Callable[..., Arr] = sap_grown, b: Callable[..., Arr] = iap_grown
            ) -> Arr:
                return a(U, V, S) & b(U, V, S)

            cv.paint(L.FACET_JOINT, _ell_bbox(c0, ax0 * 1.15), joint)
            if hyp > 0.02:
                c, ax, _ = self.sap_geometry(lv, sign, hyp)
                cv.paint(art_low, _ell_bbox(c, ax), _ellipsoid(c, ax), cause_id(lv, kind))
                oc, oa = self.osteophyte_geometry(lv, sign, hyp)
                cv.paint(art_low, _ell_bbox(oc, oa), _ellipsoid(oc, oa), cause_id(lv, kind))
            cv.paint(art_low, _ell_bbox(c0, ax0), _ellipsoid(c0, ax0))


def _ellipsoid(c: Arr, ax: Arr) -> Callable[[Arr, Arr, Arr], Arr]:
    def inside(U: Arr, V: Arr, S: Arr) -> Arr:
        return ((U - c[0]) / ax[0]) ** 2 + ((V - c[1]) / ax[1]) ** 2 + ((S - c[2]) / ax[2]) ** 2 <= 1.0

    return inside


def _ell_bbox(c: Arr, ax: Arr) -> tuple[float, float, float, float, float, float]:
    return (c[0] - ax[0], c[0] + ax[0], c[1] - ax[1], c[1] + ax[1], c[2] - ax[2], c[2] + ax[2])
