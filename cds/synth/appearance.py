"""MR appearance: tissue signal per contrast with scanner-to-scanner variation, texture, coil profile,
blur, Rician noise, ghosting, and the scaling/window tags a real scanner writes.

Why these effects: a segmentation network trained on clean piecewise-constant phantoms learns edges that
real scans do not have; each effect here is one a real lumbar TSE series shows (SPIDER shows bright
posterior fat next to the spine coil, a darker noisy abdomen, mottled marrow, dark degenerated discs).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from scipy import ndimage

from cds.domain import Level
from cds.synth import labels as L
from cds.synth.anatomy import LEVEL_DISC_INDEX, Anatomy
from cds.synth.labels import Tissue
from cds.synth.series import SampledSeries


class Contrast(StrEnum):
    T2 = "T2"
    T1 = "T1"


_T2 = {
    Tissue.AIR: 0.0,
    Tissue.MARROW: 0.55,
    Tissue.CORTEX: 0.12,
    Tissue.POSTERIOR_BONE: 0.40,
    Tissue.NUCLEUS: 0.68,
    Tissue.ANNULUS: 0.26,
    Tissue.CSF: 1.0,
    Tissue.CAUDA_ROOT: 0.22,
    Tissue.CORD: 0.33,
    Tissue.EPIDURAL_FAT: 0.6,
    Tissue.LIGAMENT: 0.10,
    Tissue.JOINT_FLUID: 0.70,
    Tissue.NERVE: 0.28,
    Tissue.MUSCLE: 0.14,
    Tissue.FAT: 0.56,
    Tissue.SKIN: 0.45,
    Tissue.VISCERA: 0.2,
    Tissue.VESSEL: 0.05,
    Tissue.ARTICULAR_BONE: 0.38,
    Tissue.MARROW_LESION: 0.72,
}
_T1 = {
    Tissue.AIR: 0.0,
    Tissue.MARROW: 0.68,
    Tissue.CORTEX: 0.04,
    Tissue.POSTERIOR_BONE: 0.52,
    Tissue.NUCLEUS: 0.36,
    Tissue.ANNULUS: 0.28,
    Tissue.CSF: 0.12,
    Tissue.CAUDA_ROOT: 0.34,
    Tissue.CORD: 0.42,
    Tissue.EPIDURAL_FAT: 0.90,
    Tissue.LIGAMENT: 0.30,
    Tissue.JOINT_FLUID: 0.15,
    Tissue.NERVE: 0.35,
    Tissue.MUSCLE: 0.32,
    Tissue.FAT: 0.95,
    Tissue.SKIN: 0.5,
    Tissue.VISCERA: 0.40,
    Tissue.VESSEL: 0.05,
    Tissue.ARTICULAR_BONE: 0.52,
    Tissue.MARROW_LESION: 0.92,
}
_TEXTURE = {
    Tissue.MARROW: 0.32,
    Tissue.MARROW_LESION: 0.15,
    Tissue.POSTERIOR_BONE: 0.15,
    Tissue.ARTICULAR_BONE: 0.15,
    Tissue.MUSCLE: 0.14,
    Tissue.FAT: 0.08,
    Tissue.EPIDURAL_FAT: 0.06,
    Tissue.VISCERA: 0.3,
    Tissue.SKIN: 0.1,
    Tissue.NUCLEUS: 0.08,
    Tissue.ANNULUS: 0.12,
    Tissue.CSF: 0.03,
}


@dataclass(frozen=True)
class ScannerProfile:
    """One simulated scanner + protocol: signal jitter, noise, coil, artefacts and output scaling."""

    field_strength_t: float
    manufacturer: str
    model_name: str
    tissue_gain_t2: tuple[float, ...]  # per Tissue multiplicative jitter
    tissue_gain_t1: tuple[float, ...]
    marrow_gain: tuple[float, ...]  # per vertebra
    snr: float
    blur_px: float
    coil_depth_mm: float
    bias_amp: float
    ghost: float  # 0 = none, else ghost amplitude
    motion: float  # 0 = none, else motion ghost amplitude
    max_value: float
    texture_scale: float
    seed: int


_SCANNERS = (
    ("SIEMENS", "Avanto_fit", 1.5),
    ("SIEMENS", "Skyra", 3.0),
    ("GE MEDICAL SYSTEMS", "SIGNA Artist", 1.5),
    ("Philips", "Ingenia", 3.0),
    ("Philips", "Achieva", 1.5),
)


def sample_profile(rng: np.random.Generator) -> ScannerProfile:
    man, model, field = _SCANNERS[int(rng.integers(len(_SCANNERS)))]
    nt = len(Tissue)
    return ScannerProfile(
        field_strength_t=field,
        manufacturer=man,
        model_name=model,
        tissue_gain_t2=tuple(float(x) for x in np.exp(rng.normal(0, 0.18, nt))),
        tissue_gain_t1=tuple(float(x) for x in np.exp(rng.normal(0, 0.18, nt))),
        marrow_gain=tuple(float(x) for x in np.exp(rng.normal(0, 0.1, L.N_V))),
        snr=float(rng.uniform(15, 60) * (1.3 if field > 2 else 1.0)),
        blur_px=float(rng.uniform(0.3, 1.0)),
        coil_depth_mm=float(rng.uniform(45, 180)),
        bias_amp=float(rng.uniform(0.0, 0.25)),
        ghost=float(rng.uniform(0.02, 0.08)) if rng.random() < 0.2 else 0.0,
        motion=float(rng.uniform(0.02, 0.06)) if rng.random() < 0.1 else 0.0,
        max_value=float(rng.uniform(700, 4000)),
        texture_scale=float(rng.uniform(0.6, 1.4)),
        seed=int(rng.integers(2**31)),
    )


def signal_table(anat: Anatomy, profile: ScannerProfile, contrast: Contrast) -> np.ndarray:
    """Signal (0..~1) of every internal id for this patient, scanner and contrast."""
    base = _T2 if contrast is Contrast.T2 else _T1
    gain = profile.tissue_gain_t2 if contrast is Contrast.T2 else profile.tissue_gain_t1
    lut = np.zeros(256, np.float32)
    ids = np.arange(256)
    tissue = L.tissue_of(ids.astype(np.uint8))
    for t in Tissue:
        lut[tissue == t] = base[t] * gain[t]
    lut[0] = 0.0
    for i in range(L.N_V):
        lut[L.MARROW0 + i] *= profile.marrow_gain[i]
    for lv in Level:
        j = LEVEL_DISC_INDEX[lv]
        deg = anat.drivers[lv.index].degeneration
        if contrast is Contrast.T2:
            lut[L.NUCLEUS0 + j] *= 1.0 - 0.75 * deg
    # thoracic discs are thin and a little darker
    for j in range(3):
        lut[L.NUCLEUS0 + j] *= 0.85
    return lut


def render(
    sampled: SampledSeries, anat: Anatomy, profile: ScannerProfile, contrast: Contrast, salt: int
) -> np.ndarray:
    """Float image (n, rows, cols) in scanner units (before uint16 conversion)."""
    rng = np.random.default_rng([profile.seed, salt])
    lut = signal_table(anat, profile, contrast)
    img = lut[sampled.sub_labels].mean(axis=-1)
    tex_amp = np.zeros(256, np.float32)
    tissue = L.tissue_of(np.arange(256, dtype=np.uint8))
    for t, a in _TEXTURE.items():
        tex_amp[tissue == t] = a * profile.texture_scale
    amp = tex_amp[sampled.labels]
    n, r, c = img.shape
    for k in range(n):
        fine = ndimage.gaussian_filter(rng.standard_normal((r, c)).astype(np.float32), 1.2)
        coarse = ndimage.gaussian_filter(rng.standard_normal((r, c)).astype(np.float32), 4.0)
        tex = fine / (fine.std() + 1e-6) * 0.6 + coarse / (coarse.std() + 1e-6) * 0.4
        img[k] *= np.clip(1.0 + amp[k] * tex, 0.2, 2.0)
        img[k] = ndimage.gaussian_filter(img[k], profile.blur_px)
    # coil: receive sensitivity falls with depth from the posterior surface coil
    # full sensitivity from the canal backwards (the coil array sits under the back), falling off
    # anteriorly into the abdomen; a mild extra gain right at the skin
    depth = np.clip(25.0 - sampled.v, 0.0, None)
    coil = (0.2 + 0.8 * np.exp(-depth / profile.coil_depth_mm)) * (
        1.0 + 0.15 * np.clip((sampled.v - 60) / 60, 0, 1)
    )
    yy, xx = np.meshgrid(np.linspace(-1, 1, r), np.linspace(-1, 1, c), indexing="ij")
    cf = rng.normal(0, 1, 3)
    bias = np.exp(profile.bias_amp * (cf[0] * yy + cf[1] * xx + cf[2] * xx * yy))
    img = img * coil * bias[None]
    # ghosting along the phase-encoding direction (columns), motion as several weaker shifted copies
    if profile.ghost > 0:
        img = img + profile.ghost * np.roll(img, c // 2, axis=2)
    if profile.motion > 0:
        for shift in rng.integers(3, c // 3, size=3):
            img = img + profile.motion * np.roll(img, int(shift), axis=2) * rng.uniform(0.5, 1.0)
    sigma = 1.0 / profile.snr
    re = img + rng.normal(0, sigma, img.shape).astype(np.float32)
    im = rng.normal(0, sigma, img.shape).astype(np.float32)
    mag = np.sqrt(re * re + im * im)
    return (mag * profile.max_value).astype(np.float32)


@dataclass(frozen=True)
class Pixels:
    data: np.ndarray  # uint16 (n, rows, cols)
    window_center: float
    window_width: float


def to_pixels(img: np.ndarray) -> Pixels:
    data = np.clip(np.rint(img), 0, 65535).astype(np.uint16)
    lo, hi = np.percentile(data, [1.0, 99.5])
    width = max(float(hi - lo), 1.0)
    return Pixels(data, float(round(lo + width / 2)), float(round(width)))
