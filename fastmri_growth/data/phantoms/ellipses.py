"""Ellipse phantoms: a coronal knee and an axial head, smooth, anatomy-like.

The knee has femur, tibia, fibula, cartilage and menisci; the head has
scalp, skull, CSF, cortex with gyri, white matter, deep grey matter and
ventricles, plus acquisition-dependent lesions and vessels. Texture, bias and
structure sizes vary smoothly from slice to slice. This is the generator the
package has always had (``--phantom ellipses``).
"""
from __future__ import annotations

import numpy as np

from fastmri_growth.data.phantoms.common import (
    grid as _grid,
    paint as _paint,
    slice_fields as _slice_fields,
    slice_positions as _slice_positions,
    soft_ellipse as _soft_ellipse,
)

#: Smallest recon size: any even size draws (the shapes are resolution-free).
MIN_RECON_SIZE = 2


def draw(rng, num_slices: int, n: int, anatomy: str, acquisition: str) -> np.ndarray:
    """Magnitudes of one volume, ``(num_slices, n, n)``, values about 0-1.

    Args:
        rng: The volume's phantom Generator.
        num_slices: Slices of the volume.
        n: Side of the square image.
        anatomy: ``"knee"`` or ``"brain"``.
        acquisition: The volume's acquisition (contrast).
    """
    draw_slices = _knee_slices if anatomy == "knee" else _brain_slices
    return draw_slices(rng, num_slices, n, acquisition)


def _knee_slices(rng, num_slices: int, n: int, acquisition: str) -> np.ndarray:
    """Coronal knee phantom magnitudes, ``(num_slices, n, n)``, values about 0-1."""
    positions = _slice_positions(num_slices)
    fat_suppressed = acquisition == "CORPDFS_FBK"
    # fat, muscle, marrow, cartilage, cortex, meniscus
    values = (
        np.array([0.12, 0.35, 0.18, 0.60, 0.03, 0.05])
        if fat_suppressed
        else np.array([0.95, 0.45, 0.80, 0.70, 0.03, 0.05])
    ) * rng.uniform(0.9, 1.1, size=6)
    fat, muscle, marrow, cartilage, cortex, meniscus = values
    y0, x0 = _grid(n)
    edge = 0.8 * 2.0 / n
    leg_ax = rng.uniform(0.55, 0.68)
    fat_t = rng.uniform(0.04, 0.08)
    cortex_t = rng.uniform(0.02, 0.03)
    cart_t = rng.uniform(0.02, 0.03)
    shift_x = rng.uniform(-0.05, 0.05)
    angle = rng.uniform(-0.08, 0.08)
    zoom = rng.uniform(0.9, 1.05)
    joint_y = rng.uniform(-0.05, 0.05)
    fibula_side = rng.choice((-1.0, 1.0))
    c, s = np.cos(angle), np.sin(angle)
    y = (c * y0 - s * (x0 - shift_x)) / zoom - joint_y
    x = (s * y0 + c * (x0 - shift_x)) / zoom
    soft_tex = _slice_fields(rng, positions, n, 3.0)
    bone_tex = _slice_fields(rng, positions, n, 12.0)
    bias = _slice_fields(rng, positions, n, 1.0)

    def bone_parts(t, grow):
        gb = np.sqrt(max(0.0, 1.0 - 0.8 * t * t))
        d = (0.15 + 0.05 * max(0.0, -t)) * gb  # condyles part towards the back
        femur = [
            (-0.65, 0.0, 0.45, 0.17 * gb),
            (-0.25, 0.0, 0.25, 0.30 * gb),
            (-0.08, -d, 0.14, 0.15 * gb),
            (-0.08, d, 0.14, 0.15 * gb),
        ]
        tibia = [(0.35, 0.0, 0.22, 0.36 * gb), (0.75, 0.0, 0.35, 0.20 * gb)]
        fibula = [(0.62, fibula_side * 0.40 * gb, 0.18, 0.08 * max(0.0, -t))]
        parts = femur + tibia + fibula
        return [(cy, cx, ay + grow, ax + grow if ax > 0 else 0.0) for cy, cx, ay, ax in parts]

    def union(parts):
        out = np.zeros((n, n))
        for cy, cx, ay, ax in parts:
            out = np.maximum(out, _soft_ellipse(y, x, cy, cx, ay, ax, edge))
        return out

    joint = np.exp(-(((y - 0.095) / 0.09) ** 2))
    slices = np.empty((num_slices, n, n))
    for i, t in enumerate(positions):
        gw = np.sqrt(1.0 - 0.35 * t * t)
        img = np.zeros((n, n))
        img = _paint(img, _soft_ellipse(y, x, 0.0, 0.0, 0.96, leg_ax * gw, edge), fat)
        img = _paint(
            img,
            _soft_ellipse(y, x, 0.0, 0.0, 0.96 - fat_t, leg_ax * gw - fat_t, edge),
            muscle * (1.0 + 0.12 * soft_tex[i]),
        )
        articular = bone_parts(t, cortex_t + cart_t)[2:5]  # condyles and plateau
        img = _paint(img, union(articular) * joint, cartilage)
        img = _paint(img, union(bone_parts(t, cortex_t)), cortex)
        img = _paint(img, union(bone_parts(t, 0.0)), marrow * (1.0 + 0.15 * bone_tex[i]))
        gb = np.sqrt(max(0.0, 1.0 - 0.8 * t * t))
        for side in (-1.0, 1.0):
            img = _paint(
                img,
                _soft_ellipse(y, x, 0.095, side * 0.40 * gb, 0.04, 0.09 * gb, edge),
                meniscus,
            )
        slices[i] = img * (1.0 + 0.08 * bias[i])
    return np.clip(slices, 0.0, None)


# scalp fat, skull, CSF, grey matter, white matter, deep grey, lesion
_BRAIN_CONTRASTS = {
    "AXT1": (0.85, 0.05, 0.12, 0.45, 0.70, 0.50, 0.35),
    "AXT1PRE": (0.85, 0.05, 0.12, 0.45, 0.70, 0.50, 0.35),
    "AXT1POST": (0.85, 0.05, 0.12, 0.45, 0.70, 0.50, 0.35),
    "AXT2": (0.55, 0.04, 1.00, 0.62, 0.42, 0.50, 0.90),
    "AXFLAIR": (0.50, 0.04, 0.08, 0.62, 0.45, 0.55, 0.95),
}


def _brain_slices(rng, num_slices: int, n: int, acquisition: str) -> np.ndarray:
    """Axial head phantom magnitudes, ``(num_slices, n, n)``, values about 0-1."""
    positions = _slice_positions(num_slices)
    values = np.array(_BRAIN_CONTRASTS[acquisition]) * rng.uniform(0.9, 1.1, size=7)
    fat, skull, csf, grey, white, deep, lesion = values
    y0, x0 = _grid(n)
    edge = 0.8 * 2.0 / n
    head_ay = rng.uniform(0.84, 0.92)
    head_ax = head_ay * rng.uniform(0.78, 0.86)
    scalp_t, skull_t, csf_t = rng.uniform(0.035, 0.05), rng.uniform(0.04, 0.06), 0.02
    grey_t = rng.uniform(0.06, 0.09)
    angle = rng.uniform(-0.1, 0.1)
    shift = rng.uniform(-0.04, 0.04, size=2)
    c, s = np.cos(angle), np.sin(angle)
    y = c * (y0 - shift[0]) - s * (x0 - shift[1])
    x = s * (y0 - shift[0]) + c * (x0 - shift[1])
    theta = np.arctan2(y / head_ay, x / head_ax)
    # Gyri: the brain surface and the grey/white boundary wobble with angle.
    ks = np.arange(6, 18)
    phases = rng.uniform(0, 2 * np.pi, size=(2, ks.size))
    amps = rng.uniform(0.5, 1.0, size=(2, ks.size)) / np.sqrt(ks.size)
    surface = 1.0 + 0.02 * np.sum(amps[0] * np.sin(ks * theta[..., None] + phases[0]), -1)
    folds = 1.0 + 0.05 * np.sum(amps[1] * np.sin(ks * theta[..., None] + phases[1]), -1)
    tex = _slice_fields(rng, positions, n, 6.0)
    bias = _slice_fields(rng, positions, n, 1.0)
    lesions = []
    if acquisition in ("AXT2", "AXFLAIR") and rng.uniform() < 0.6:
        for _ in range(int(rng.integers(1, 4))):
            lesions.append((rng.uniform(-0.4, 0.4), rng.uniform(-0.35, 0.35),
                            rng.uniform(0.02, 0.05), rng.uniform(-0.6, 0.6)))
    vessels = []
    if acquisition == "AXT1POST":
        for _ in range(int(rng.integers(3, 7))):
            vessels.append((rng.uniform(-0.5, 0.5), rng.uniform(-0.4, 0.4),
                            rng.uniform(0.012, 0.02), rng.uniform(-0.8, 0.8)))

    slices = np.empty((num_slices, n, n))
    for i, t in enumerate(0.8 * positions):
        g = np.sqrt(1.0 - 0.45 * t * t)
        ay, ax = head_ay * g, head_ax * g
        img = np.zeros((n, n))
        img = _paint(img, _soft_ellipse(y, x, 0, 0, ay, ax, edge), fat)
        ay, ax = ay - scalp_t, ax - scalp_t
        img = _paint(img, _soft_ellipse(y, x, 0, 0, ay, ax, edge), skull)
        ay, ax = ay - skull_t, ax - skull_t
        img = _paint(img, _soft_ellipse(y, x, 0, 0, ay, ax, edge), csf)
        ay, ax = ay - csf_t, ax - csf_t
        r = np.sqrt((y / ay) ** 2 + (x / ax) ** 2)
        brain = 0.5 * (1.0 + np.tanh((surface - r) * min(ay, ax) / edge))
        img = _paint(img, brain, grey * (1.0 + 0.06 * tex[i]))
        wm_r = (1.0 - grey_t / min(ay, ax)) * folds
        wm = 0.5 * (1.0 + np.tanh((wm_r - r) * min(ay, ax) / edge))
        img = _paint(img, wm, white * (1.0 + 0.04 * tex[i]))
        # Interhemispheric fissure, front and back only.
        fissure = _soft_ellipse(y, x, 0, 0, ay, 0.012, edge / 2) * (
            1.0 / (1.0 + np.exp((y + 0.35) * 30)) + 1.0 / (1.0 + np.exp(-(y - 0.45) * 30))
        )
        img = _paint(img, fissure * brain, csf)
        mid = max(0.0, 1.0 - ((t - 0.1) / 0.5) ** 2)  # deep structures: mid slices
        for side in (-1.0, 1.0):
            basal = _soft_ellipse(y, x, 0.05, side * 0.2, 0.15 * mid, 0.08 * mid, edge)
            img = _paint(img, basal, deep)
        for cy, cx, rad, t0 in lesions:
            size = rad * max(0.0, 1.0 - ((t - t0) / 0.35) ** 2)
            img = _paint(img, _soft_ellipse(y, x, cy, cx, size, size * 0.8, edge), lesion)
        vent = max(0.0, 1.0 - ((t - 0.15) / 0.45) ** 2)
        for side in (-1.0, 1.0):
            horn = _soft_ellipse(
                y, x, -0.04, side * 0.085, 0.27 * vent, 0.06 * vent, edge, side * 0.25
            )
            img = _paint(img, horn, csf)
        img = _paint(img, _soft_ellipse(y, x, 0.12, 0.0, 0.08 * vent, 0.015 * vent, edge), csf)
        for cy, cx, rad, t0 in vessels:
            if abs(t - t0) < 0.3:
                img = _paint(img, _soft_ellipse(y, x, cy, cx, rad, rad, edge), 1.0)
        slices[i] = img * (1.0 + 0.08 * bias[i])
    return np.clip(slices, 0.0, None)
