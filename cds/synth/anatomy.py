"""Patient anatomy of one synthetic study: sizes, curve and per-level pathology drivers, sampled from a seed.

All lengths are in millimetres in the *straightened spine frame* (u, v, s) described in ``cds.synth.curve``:
u = patient left (+) / right (-), v = posterior (+) / anterior (-) offset from the vertebral-body centre
line, s = arc length along that line, cranial (+), with s = 0 at the S1 superior endplate.

Why a straightened frame: every structure (vertebra, disc, sac, facets) can then be written as a simple
implicit shape around "its" level, while lordosis, sacral slope and patient position are applied by the
curve and the patient pose alone. Measurements on a constant-s plane are exactly measurements on the plane
parallel to the disc (the axial plane of FINDINGS.md).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

import numpy as np

from cds.domain import Level
from cds.synth.labels import DISCS, N_D, N_V, VERTEBRAE

# Typical adult dimensions per vertebra T10..S4 (mm): body height, half width, half depth,
# interpedicular half width, midline bony canal AP depth.
_BODY_H = (21.0, 22.0, 23.0, 25.0, 26.0, 27.0, 27.0, 27.0, 28.0, 22.0, 18.0, 14.0)
_HALF_W = (16.0, 17.0, 19.0, 20.0, 21.0, 22.0, 23.0, 24.0, 23.0, 18.0, 13.0, 9.0)
_HALF_D = (13.0, 14.0, 14.5, 15.0, 15.5, 16.0, 16.0, 16.0, 15.0, 11.0, 8.0, 6.0)
_CANAL_W = (8.5, 9.0, 10.0, 11.0, 11.5, 12.0, 12.5, 13.5, 14.0, 11.0, 8.0, 6.0)
_CANAL_D = (15.0, 15.5, 16.0, 17.0, 17.0, 17.5, 18.0, 18.5, 15.0, 11.0, 8.0, 6.0)
# Healthy disc heights T10-T11..L5-S1 (mm, at the centre).
_DISC_H = (5.0, 6.0, 7.0, 8.5, 9.5, 10.5, 11.0, 10.5)

#: Index of each lumbar Level's disc in DISCS.
LEVEL_DISC_INDEX = {lv: DISCS.index(lv.value) for lv in Level}
#: Index of vertebra name in VERTEBRAE.
V_INDEX = {v: i for i, v in enumerate(VERTEBRAE)}


class ProtrusionKind(StrEnum):
    NONE = "none"
    CENTRAL = "central"
    PARACENTRAL_LEFT = "paracentral_left"
    PARACENTRAL_RIGHT = "paracentral_right"


@dataclass(frozen=True)
class LevelDrivers:
    """Pathology drivers of one disc level. Grades are *measured* on the anatomy they produce."""

    degeneration: float = 0.0  # 0..1: nucleus loses T2 signal
    height_loss: float = 0.0  # 0..0.6 fraction of disc height lost
    bulge_mm: float = 0.0  # diffuse circumferential bulge beyond the vertebral margin
    protrusion: ProtrusionKind = ProtrusionKind.NONE
    protrusion_mm: float = 0.0  # depth of the central/paracentral protrusion
    protrusion_half_width_mm: float = 6.0
    foraminal_left_mm: float = 0.0  # foraminal (far-lateral) protrusion depth, left
    foraminal_right_mm: float = 0.0
    flavum_mm: float = 2.5  # ligamentum flavum thickness (normal 2-3.5)
    facet_left: float = 0.0  # 0..1 facet (superior articular process) hypertrophy
    facet_right: float = 0.0
    listhesis_mm: float = 0.0  # anterior slip of the upper vertebra

    def healthy(self) -> LevelDrivers:
        """The same level without any narrowing: the reference for the foraminal area ratio."""
        return LevelDrivers(degeneration=self.degeneration)

    def to_json(self) -> dict[str, float | str]:
        return {
            "degeneration": round(self.degeneration, 4),
            "height_loss": round(self.height_loss, 4),
            "bulge_mm": round(self.bulge_mm, 3),
            "protrusion": self.protrusion.value,
            "protrusion_mm": round(self.protrusion_mm, 3),
            "protrusion_half_width_mm": round(self.protrusion_half_width_mm, 3),
            "foraminal_left_mm": round(self.foraminal_left_mm, 3),
            "foraminal_right_mm": round(self.foraminal_right_mm, 3),
            "flavum_mm": round(self.flavum_mm, 3),
            "facet_left": round(self.facet_left, 4),
            "facet_right": round(self.facet_right, 4),
            "listhesis_mm": round(self.listhesis_mm, 3),
        }


@dataclass(frozen=True)
class MarrowLesion:
    """Fatty marrow inside one vertebral body: a haemangioma (ball) or a Modic type 2 endplate band.

    Position in the body's own frame: u, v in mm from the body axis, s_frac 0 (caudal) .. 1 (cranial);
    for an endplate band, s_frac is 0 or 1 and size is the band thickness.
    """

    vertebra: int
    kind: str  # "haemangioma" | "modic"
    u: float
    v: float
    s_frac: float
    size: float


@dataclass(frozen=True)
class VertebraShape:
    height: float
    half_width: float
    half_depth: float
    exponent: float  # superellipse exponent of the axial outline (2 = ellipse, larger = boxier)
    canal_half_width: float
    canal_depth: float
    waist: float  # lateral concavity fraction


@dataclass(frozen=True)
class Anatomy:
    """Everything that defines one synthetic patient's spine (before the MR scanner sees it)."""

    vertebrae: tuple[VertebraShape, ...]
    disc_heights: tuple[float, ...]  # healthy heights, per DISCS entry
    drivers: tuple[LevelDrivers, ...]  # per Level (L1-L2..L5-S1)
    sacral_slope_deg: float
    lordosis_deg: float
    kyphosis_deg_per_100mm: float
    sacral_kyphosis_deg_per_100mm: float
    sac_half_width: float
    sac_half_depth: float
    conus_s_offset: float  # conus tip relative to the L1-L2 disc (mm, + = cranial)
    fat_mm: float  # posterior subcutaneous fat thickness
    body_half_width: float
    body_half_depth: float
    muscle_scale: float
    n_cauda_roots: int = 14
    marrow_lesions: tuple[MarrowLesion, ...] = ()

    def level_drivers(self, level: Level) -> LevelDrivers:
        return self.drivers[level.index]

    def without_pathology(self) -> Anatomy:
        return replace(self, drivers=tuple(d.healthy() for d in self.drivers))

    def params_json(self) -> dict[str, object]:
        return {
            "sacral_slope_deg": round(self.sacral_slope_deg, 3),
            "lordosis_deg": round(self.lordosis_deg, 3),
            "sac_half_width_mm": round(self.sac_half_width, 3),
            "sac_half_depth_mm": round(self.sac_half_depth, 3),
            "fat_mm": round(self.fat_mm, 3),
            "vertebral_scale": round(self.vertebrae[V_INDEX["L3"]].half_width / _HALF_W[V_INDEX["L3"]], 4),
            "drivers": {lv.value: self.drivers[lv.index].to_json() for lv in Level},
            "marrow_lesions": [
                {"vertebra": VERTEBRAE[m.vertebra], "kind": m.kind, "size_mm": round(m.size, 2)}
                for m in self.marrow_lesions
            ],
        }


@dataclass(frozen=True)
class Layout:
    """s-positions (mm) of every vertebral body and disc, and each vertebra's anterior slip (v offset)."""

    body_lo: np.ndarray  # (N_V,) caudal endplate centre
    body_hi: np.ndarray  # (N_V,) cranial endplate centre
    disc_lo: np.ndarray  # (N_D,)
    disc_hi: np.ndarray  # (N_D,)
    slip: np.ndarray  # (N_V,) v offset of each vertebra (negative = anterior)

    def disc_mid(self, level: Level) -> float:
        j = LEVEL_DISC_INDEX[level]
        return float(0.5 * (self.disc_lo[j] + self.disc_hi[j]))


def disc_heights_now(anat: Anatomy) -> np.ndarray:
    h = np.array(anat.disc_heights, float)
    for lv in Level:
        h[LEVEL_DISC_INDEX[lv]] *= 1.0 - anat.drivers[lv.index].height_loss
    return h


def layout(anat: Anatomy) -> Layout:
    """Stack bodies and discs along s: S1 superior endplate at s = 0, lumbar above, sacrum below."""
    dh = disc_heights_now(anat)
    body_lo = np.zeros(N_V)
    body_hi = np.zeros(N_V)
    disc_lo = np.zeros(N_D)
    disc_hi = np.zeros(N_D)
    i_s1 = V_INDEX["S1"]
    # sacrum: fused bodies touching each other; their cortical shells form the thin remnant lines, so the
    # sacrum reads as one bone (no soft tissue between the segments)
    top = 0.0
    for i in range(i_s1, N_V):
        body_hi[i] = top
        body_lo[i] = top - anat.vertebrae[i].height
        top = body_lo[i]
    bottom = 0.0
    for i in range(i_s1 - 1, -1, -1):  # L5 up to T10; disc i sits below vertebra i
        disc_lo[i] = bottom
        disc_hi[i] = bottom + dh[i]
        body_lo[i] = disc_hi[i]
        body_hi[i] = body_lo[i] + anat.vertebrae[i].height
        bottom = body_hi[i]
    slip = np.zeros(N_V)
    for lv in Level:
        j = LEVEL_DISC_INDEX[lv]  # disc j lies between vertebra j (upper) and j+1 (lower)
        slip[: j + 1] -= anat.drivers[lv.index].listhesis_mm
    return Layout(body_lo, body_hi, disc_lo, disc_hi, slip)


def sample_anatomy(rng: np.random.Generator, drivers: tuple[LevelDrivers, ...]) -> Anatomy:
    """Draw a patient: overall size, per-vertebra shape jitter, curve, canal and soft tissues."""
    size = rng.uniform(0.88, 1.12)
    canal = rng.uniform(0.9, 1.12)
    verts = []
    for i in range(N_V):
        j = rng.normal(0.0, 0.03, size=4)
        verts.append(
            VertebraShape(
                height=_BODY_H[i] * size * (1 + j[0]),
                half_width=_HALF_W[i] * size * (1 + j[1]),
                half_depth=_HALF_D[i] * size * (1 + j[2]),
                exponent=float(rng.uniform(2.2, 3.0)),
                canal_half_width=_CANAL_W[i] * canal * (1 + j[3]),
                canal_depth=_CANAL_D[i] * canal * rng.uniform(0.95, 1.05),
                waist=float(rng.uniform(0.03, 0.09)),
            )
        )
    disc_h = tuple(h * size * rng.uniform(0.85, 1.15) for h in _DISC_H)
    return Anatomy(
        vertebrae=tuple(verts),
        disc_heights=disc_h,
        drivers=drivers,
        sacral_slope_deg=float(rng.uniform(22, 38)),
        lordosis_deg=float(rng.uniform(20, 45)),
        kyphosis_deg_per_100mm=float(rng.uniform(3, 12)),
        sacral_kyphosis_deg_per_100mm=float(rng.uniform(20, 40)),
        sac_half_width=float(rng.uniform(6.8, 8.6) * canal),
        sac_half_depth=float(rng.uniform(6.4, 8.2) * canal),
        conus_s_offset=float(rng.uniform(-10, 25)),
        fat_mm=float(rng.uniform(8, 30)),
        body_half_width=float(rng.uniform(140, 185) * size),
        body_half_depth=float(rng.uniform(100, 150) * size),
        muscle_scale=float(rng.uniform(0.8, 1.2) * size),
        n_cauda_roots=int(rng.integers(10, 18)),
        marrow_lesions=tuple(
            MarrowLesion(
                vertebra=int(v),
                kind="haemangioma",
                u=float(rng.uniform(-10, 10)),
                v=float(rng.uniform(-8, 6)),
                s_frac=float(rng.uniform(0.25, 0.75)),
                size=float(rng.uniform(3, 9)),
            )
            for v in rng.integers(0, V_INDEX["S1"], size=int(rng.poisson(0.5)))
        ),
    )
