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


class TrunkOutline:
    """Posterior skin line y_back(z) of the trunk in the anatomy frame.

    Why not in the straightened frame: the back surface follows the lordosis only loosely, and far from
    the spine the straightened frame bends strongly; so the trunk outline is an ellipse per height z in
    the anatomy frame, placed behind a smoothed copy of the spine's centre line.
    """

    def __init__(self, model: SpineModel, curve_s: Arr, curve_yz: Arr):
        a = model.anat
        z = curve_yz[:, 1]
        keep = np.concatenate([[True], np.diff(z) > 0.05])
        # keep the monotonic (in z) part of the centre line, from the sacrum upwards
        start = int(np.nonzero(~keep)[0].max()) + 1 if (~keep).any() else 0
        zs, ys, ss = z[start:], curve_yz[start:, 0], curve_s[start:]
        self.z_grid = np.arange(zs[0] - 200.0, zs[-1] + 200.0, 2.0)
        y = np.interp(self.z_grid, zs, ys)
        k = np.ones(41) / 41.0
        y_s = np.convolve(np.pad(y, 20, mode="edge"), k, mode="valid")
        s_at = np.interp(self.z_grid, zs, ss)
        vpb = model.v_pb(s_at)
        depth = vpb + model.canal_d(s_at) + 38.0 * a.muscle_scale + a.fat_mm
        # buttocks: the back surface bulges posteriorly below the sacral promontory
        # the back follows the lordosis only in part; below the sacral promontory the buttocks bulge
        y_flat = float(np.median(y_s)) + 0.45 * (y_s - float(np.median(y_s)))
        butt = 45.0 * np.clip((20.0 - s_at) / 90.0, 0.0, 1.0) ** 1.5
        self.y_back = y_flat + depth + butt

    def back(self, z: Arr) -> Arr:
        return np.interp(z, self.z_grid, self.y_back)


def vpb_cavity(model: SpineModel, s: Arr) -> Arr:
    """The abdominal cavity ends a little behind the posterior vertebral margin (kidneys, psoas)."""
    return model.v_pb(s) + 6.0


def soft_tissue(model: SpineModel, trunk: TrunkOutline, a: Arr, u: Arr, v: Arr, s: Arr) -> Arr:
    """Internal label of each point outside the spine structures (a: anatomy points (N, 3); u, v, s: (N,))."""
    an = model.anat
    out = np.zeros(u.shape, np.uint8)
    bd, bw = an.body_half_depth, an.body_half_width
    yb = trunk.back(a[:, 2])
    yc = yb - bd
    r = (a[:, 0] / bw) ** 2 + ((a[:, 1] - yc) / bd) ** 2
    body = r <= 1.0
    out[body] = L.SUBCUT_FAT
    inner = r <= (1.0 - an.fat_mm / bd) ** 2
    skin = (r > (1.0 - 2.0 / bd) ** 2) & body
    # abdominal / pelvic cavity anteriorly; the rest of the trunk wall is muscle
    out[inner] = L.MUSCLE
    cavity = (a[:, 0] / (0.8 * bw)) ** 2 + ((a[:, 1] - (yc - 0.22 * bd)) / (0.72 * bd)) ** 2 <= 1.0
    out[inner & cavity & (v < vpb_cavity(model, s) + 0.008 * u * u)] = L.VISCERA
    vpb = model.v_pb(s)
    lam = vpb + model.canal_d(s)
    hw = np.interp(s, model._mid_sorted, model._b_sorted)  # body half depth ~ size proxy
    # fat around the vertebral bodies, the psoas and the posterior compartment
    # (thin: in front of the bodies a real sagittal slice shows the dark-grey abdomen, not a fat band)
    retro = inner & ((u / 42.0) ** 2 + ((v + 2.0) / (hw + 1.0)) ** 2 <= 1.0) & (v < 0.0)
    out[retro] = L.RETRO_FAT
    # posterior abdominal wall: muscle, with a fat plane between it and the paraspinal muscles
    ms = an.muscle_scale

    def paraspinal(sign: float, grow: float) -> Arr:
        return ((u - sign * 21.0 * ms) / (24.0 * ms * grow)) ** 2 + (
            (v - (lam + 16.0 * ms)) / (21.0 * ms * grow)
        ) ** 2 <= 1.0

    keep = inner & (v > vpb) & (s > model.sac_end - 40)
    # behind the paraspinal muscles the back is subcutaneous fat, not more muscle: real mid-sagittal
    # slices show spinous processes, then fat, then skin (no second muscle layer with a fat line in it)
    out[keep & (v > lam + 30.0 * ms)] = L.SUBCUT_FAT
    for sign in (1.0, -1.0):  # fat planes around the paraspinal muscles, lateral to the midline only
        out[paraspinal(sign, 1.05) & keep & (np.abs(u) > 10.0)] = L.RETRO_FAT
    for sign in (1.0, -1.0):
        # multifidus + erector spinae: one mass each side hugging the spinous processes
        mus = paraspinal(sign, 1.0) & keep
        out[mus] = L.MUSCLE
        # quadratus lumborum lateral to the transverse processes
        ql = ((u - sign * 58.0 * ms) / (13.0 * ms)) ** 2 + ((v - (vpb + 4.0)) / (9.0 * ms)) ** 2 <= 1.0
        out[ql & inner & (s > 0) & (s < 120)] = L.MUSCLE
        # psoas grows from L1 down to L5, beside the bodies
        grow = np.clip((130.0 - s) / 110.0, 0.0, 1.0)
        ps_r = (6.0 + 10.0 * grow) * ms
        ps = ((u - sign * (an.vertebrae[5].half_width + ps_r * 0.7)) / ps_r) ** 2 + (
            (v + 2.0) / (ps_r * 1.2)
        ) ** 2 <= 1.0
        out[ps & inner & (s > -40) & (grow > 0)] = L.PSOAS
    # aorta (bifurcates at L4) and inferior vena cava in front of the bodies
    b_front = -hw + model.slip(s)
    aorta = ((u - 12.0) ** 2 + (v - (b_front - 12.0)) ** 2 <= 100.0) & (s > 75.0)
    ivc = (((u + 20.0) / 11.0) ** 2 + ((v - (b_front - 10.0)) / 7.0) ** 2 <= 1.0) & (s > 60.0)
    out[(aorta | ivc) & inner] = L.VESSEL
    out[skin] = L.SKIN
    return out
