"""Soft tissues around the spine (muscles, fat, skin, viscera, vessels), evaluated point-wise.

They are cheap analytic tests in the straightened frame and fill every sample the spine volume leaves
empty, so the spine volume can stay small (the canal region at 0.6 mm) while the axial fields of view
still show the whole trunk cross-section.
"""

from __future__ import annotations

import numpy as np

from cds.synth import labels as L
from cds.synth.raster import SpineModel

Arr = np.ndarray


def soft_tissue(model: SpineModel, u: Arr, v: Arr, s: Arr) -> Arr:
    """Internal label of each point (1-D arrays) outside the spine structures."""
    a = model.anat
    out = np.zeros(u.shape, np.uint8)
    vpb = model.v_pb(s)
    lam = vpb + model.canal_d(s)  # posterior canal wall at midline
    v_skin = lam + 38.0 * a.muscle_scale + a.fat_mm
    bd, bw = a.body_half_depth, a.body_half_width
    vc = v_skin - bd
    # pelvis: the trunk is wider and flatter below the sacral promontory
    r = (u / bw) ** 2 + ((v - vc) / bd) ** 2
    body = r <= 1.0
    out[body] = L.SUBCUT_FAT
    inner_scale = 1.0 - a.fat_mm / bd
    inner = r <= inner_scale**2
    skin = (r > (1.0 - 2.0 / bd) ** 2) & body
    # abdominal / pelvic contents anterior to the spine
    visc = inner & (v < -5.0)
    out[visc] = L.VISCERA
    # retroperitoneal fat around the spine and psoas
    retro = inner & (v < 10.0) & (v > -model.anat.vertebrae[5].half_depth - 40.0) & (np.abs(u) < 70.0)
    out[retro] = L.RETRO_FAT
    # deep posterior compartment (between muscles), fat
    post = inner & (v >= -5.0)
    out[post & ~retro] = L.RETRO_FAT
    # paraspinal muscles (erector spinae + multifidus), two big ellipses behind the transverse processes
    ms = a.muscle_scale
    for sign in (1.0, -1.0):
        mus = ((u - sign * 24.0 * ms) / (21.0 * ms)) ** 2 + (
            (v - (lam + 14.0 * ms)) / (23.0 * ms)
        ) ** 2 <= 1.0
        mus &= inner & (s > model.sac_end - 30)
        out[mus] = L.MUSCLE
        # quadratus lumborum lateral to the transverse processes
        ql = ((u - sign * 60.0 * ms) / (14.0 * ms)) ** 2 + ((v - (vpb + 4.0)) / (9.0 * ms)) ** 2 <= 1.0
        out[ql & inner & (s > 0) & (s < 120)] = L.MUSCLE
        # psoas grows from L1 down to L5, beside the bodies
        grow = np.clip((130.0 - s) / 110.0, 0.0, 1.0)
        ps_r = (6.0 + 10.0 * grow) * ms
        ps = ((u - sign * (model.anat.vertebrae[5].half_width + ps_r * 0.7)) / ps_r) ** 2 + (
            (v + 2.0) / (ps_r * 1.2)
        ) ** 2 <= 1.0
        out[ps & inner & (s > -40) & (grow > 0)] = L.PSOAS
    # aorta (bifurcates at L4) and inferior vena cava in front of the bodies
    b_front = -np.interp(s, model._mid_sorted, model._b_sorted) + model.slip(s)
    aorta = ((u - 12.0) ** 2 + (v - (b_front - 12.0)) ** 2 <= 100.0) & (s > 75.0)
    ivc = (((u + 20.0) / 11.0) ** 2 + ((v - (b_front - 10.0)) / 7.0) ** 2 <= 1.0) & (s > 60.0)
    out[(aorta | ivc) & inner] = L.VESSEL
    out[skin] = L.SKIN
    return out
