"""Textured phantoms: detail at every scale, down to single pixels.

Each slice shows a body (an ellipse with a bright rim) holding 4-7 medium
ellipses, 30-59 small blobs of radius 0.8-3.5 pixels, 6-13 curved lines one
pixel wide, and a multiplicative Gaussian texture of 4 and 1.2 pixels,
under a smooth bias field and a random contrast curve. The counts are per
96x96 image and scale with the image area (lines with its side), so the
detail stays pixel-sized at every matrix size.

The slices of a volume share the body's outline (which changes smoothly
through the volume), its contrast and a smooth bias field; the structures
inside are each one to two slices thick, like organs, nodules and vessels in
a thick-slice acquisition, and the textures are drawn anew per slice. So a
volume's slices look like one object yet do not repeat each other's content:
40 volumes of 8 slices hold about as much to learn as 320 independent
images, far more detail than a U-Net of a few ten thousand weights can
memorise. That is what makes the width of a U-Net matter here
(``benchmarks/capacity.py`` measures it). A first version, whose small
structures were 2-4 slices thick and whose textures changed slowly, let the
same networks fit their training set 15-20% better than fresh data.

The pattern does not depend on the challenge's anatomy or acquisition.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

from fastmri_growth.data.phantoms.common import (
    correlated_fields,
    grid,
    paint,
    slice_fields,
    slice_positions,
    soft_ellipse,
)

#: Smallest recon size: below it the body cannot hold its small structures.
MIN_RECON_SIZE = 32
# The structure counts are those of a 96x96 image.
_REFERENCE_SIZE = 96
_BLOB_RADII_PX = (0.8, 3.5)
_MEDIUM_DEPTH = (0.5, 1.2)  # half-thickness, in slices
_BLOB_DEPTH = (0.3, 0.8)
_LINE_DEPTH = (0.3, 0.8)
_LINE_LENGTH_PX = (8.0, 40.0)
_TEXTURE = ((4.0, (0.06, 0.14)), (1.2, (0.03, 0.08)))  # sigma px, amplitude


def draw(rng, num_slices: int, n: int, anatomy: str, acquisition: str) -> np.ndarray:
    """Magnitudes of one volume, ``(num_slices, n, n)``, values about 0-1.

    Args:
        rng: The volume's phantom Generator.
        num_slices: Slices of the volume.
        n: Side of the square image (at least ``MIN_RECON_SIZE``).
        anatomy: Unused (the pattern is the same for knee and brain).
        acquisition: Unused.
    """
    del anatomy, acquisition
    area = (n / _REFERENCE_SIZE) ** 2
    side = n / _REFERENCE_SIZE
    positions = slice_positions(num_slices)
    y, x = grid(n)
    px = 2.0 / n  # one pixel in grid units
    edge = 0.8 * px

    body_ay = rng.uniform(0.72, 0.9)
    body_ax = body_ay * rng.uniform(0.75, 1.0)
    if rng.uniform() < 0.5:
        body_ay, body_ax = body_ax, body_ay
    body_angle = rng.uniform(-0.3, 0.3)
    body_value = rng.uniform(0.3, 0.55)
    rim_t = rng.uniform(1.5, 4.0) * px
    rim_value = rng.uniform(0.7, 1.0)

    medium = []
    per_slice = rng.integers(4, 8)
    low, high = -_MEDIUM_DEPTH[1], num_slices - 1 + _MEDIUM_DEPTH[1]
    for _ in range(int(round(per_slice * (high - low) / sum(_MEDIUM_DEPTH)))):
        cy, cx = _inside(rng, 0.55)
        medium.append((
            cy * body_ay, cx * body_ax,
            rng.uniform(6.0, 20.0) * side * px, rng.uniform(6.0, 20.0) * side * px,
            rng.uniform(0, np.pi), rng.uniform(0.05, 1.0),
            rng.uniform(low, high), rng.uniform(*_MEDIUM_DEPTH),
        ))

    per_slice = rng.integers(30, 60) * area
    blobs = []
    # Spread over the slices and a margin, so every slice meets as many.
    low, high = -_BLOB_DEPTH[1], num_slices - 1 + _BLOB_DEPTH[1]
    for _ in range(int(round(per_slice * (high - low) / sum(_BLOB_DEPTH)))):
        cy, cx = _inside(rng, 0.92)
        radius = rng.uniform(*_BLOB_RADII_PX)
        blobs.append((
            (cy * body_ay + 1.0) / px - 0.5, (cx * body_ax + 1.0) / px - 0.5,  # pixel coords
            radius, radius * rng.uniform(0.6, 1.0), rng.uniform(0, np.pi),
            rng.uniform(low, high), rng.uniform(*_BLOB_DEPTH),
            _contrast(rng, body_value),
        ))

    lines = []
    per_slice = rng.integers(6, 14) * side
    low, high = -_LINE_DEPTH[1], num_slices - 1 + _LINE_DEPTH[1]
    for _ in range(int(round(per_slice * (high - low) / sum(_LINE_DEPTH)))):
        cy, cx = _inside(rng, 0.85)
        lines.append((
            (cy * body_ay + 1.0) / px - 0.5, (cx * body_ax + 1.0) / px - 0.5,
            rng.uniform(*_LINE_LENGTH_PX) * side, rng.uniform(0, np.pi),
            rng.uniform(-0.3, 0.3), rng.normal(0.0, 0.7, size=2), rng.normal(0.0, 0.1),
            rng.uniform(low, high), rng.uniform(*_LINE_DEPTH),
            _contrast(rng, body_value),
        ))

    textures = [
        rng.uniform(*amp) * correlated_fields(rng, num_slices, n, sigma, 0.0)
        for sigma, amp in _TEXTURE
    ]
    bias = 0.08 * slice_fields(rng, positions, n, 1.0)
    gamma = rng.uniform(0.8, 1.25)

    c, s = np.cos(body_angle), np.sin(body_angle)
    yb, xb = c * y - s * x, s * y + c * x
    slices = np.empty((num_slices, n, n))
    for i, t in enumerate(positions):
        g = np.sqrt(1.0 - 0.3 * t * t)
        ay, ax = body_ay * g, body_ax * g
        body = soft_ellipse(yb, xb, 0.0, 0.0, ay, ax, edge)
        img = rim_value * body
        img = paint(img, soft_ellipse(yb, xb, 0.0, 0.0, ay - rim_t, ax - rim_t, edge), body_value)
        for cy, cx, ry, rx, angle, value, z, half in medium:
            size = np.sqrt(max(0.0, 1.0 - ((i - z) / half) ** 2))
            if size > 0:
                img = paint(
                    img, soft_ellipse(y, x, g * cy, g * cx, ry * size, rx * size, edge, angle),
                    value,
                )
        for cy, cx, ry, rx, angle, z, half, value in blobs:
            size = 1.0 - ((i - z) / half) ** 2
            if size > 0 and ry * np.sqrt(size) >= 0.3:
                _paint_patch(img, _blob_patch(n, cy, cx, ry * np.sqrt(size),
                                              rx * np.sqrt(size), angle), value, body)
        for cy, cx, length, angle, bend, drift, turn, z, half, value in lines:
            fade = 1.0 - ((i - z) / half) ** 2
            if fade > 0:
                dz = i - z
                mask = _line_patch(n, cy + drift[0] * dz, cx + drift[1] * dz, length,
                                   angle + turn * dz, bend)
                _paint_patch(img, (mask[0], mask[1], mask[2] * np.sqrt(fade)), value, body)
        texture = 1.0 + textures[0][i] + textures[1][i]
        slices[i] = np.clip(img * texture * (1.0 + bias[i]), 0.0, None) ** gamma
    return slices


def _inside(rng, radius: float) -> Tuple[float, float]:
    """A point drawn uniformly in the disc of ``radius`` (unit-disc coordinates)."""
    r = radius * np.sqrt(rng.uniform())
    phi = rng.uniform(0, 2 * np.pi)
    return r * np.sin(phi), r * np.cos(phi)


def _contrast(rng, background: float) -> float:
    """A structure's value: brighter or darker than the body by a clear margin."""
    sign = 1.0 if rng.uniform() < 0.5 else -1.0
    return float(np.clip(background + sign * rng.uniform(0.2, 0.5), 0.02, 1.0))


Patch = Tuple[slice, slice, np.ndarray]


def _window(n: int, cy: float, cx: float, reach: float) -> Tuple[slice, slice, np.ndarray, np.ndarray]:
    """Rows and columns within ``reach`` pixels of ``(cy, cx)``, clipped to the image."""
    r0, r1 = max(0, int(np.floor(cy - reach))), min(n, int(np.ceil(cy + reach)) + 1)
    c0, c1 = max(0, int(np.floor(cx - reach))), min(n, int(np.ceil(cx + reach)) + 1)
    rows = np.arange(r0, r1, dtype=float)[:, None]
    cols = np.arange(c0, c1, dtype=float)[None, :]
    return slice(r0, r1), slice(c0, c1), rows, cols


def _blob_patch(n, cy, cx, ry, rx, angle) -> Patch:
    """A small soft ellipse (pixel units, edge half a pixel) on its bounding box."""
    rs, cs, rows, cols = _window(n, cy, cx, max(ry, rx) + 2.0)
    return rs, cs, soft_ellipse(rows, cols, cy, cx, ry, rx, 0.5, angle)


def _line_patch(n, cy, cx, length, angle, bend) -> Patch:
    """A curved line one pixel wide: a triangle profile of full width 1 px at half maximum.

    The curve is a quadratic Bezier from one end to the other through a
    control point ``bend * length`` off the chord. It is sampled every 0.1
    pixel, and each pixel takes its distance to the nearest sample (at most
    0.05 px more than the distance to the curve).
    """
    d = np.array([np.sin(angle), np.cos(angle)]) * length / 2
    normal = np.array([d[1], -d[0]]) * 2 * bend
    centre = np.array([cy, cx])
    s = np.linspace(0.0, 1.0, int(np.ceil(length * (1.0 + abs(bend)) / 0.1)) + 1)[:, None]
    pts = (1 - s) ** 2 * (centre - d) + 2 * (1 - s) * s * (centre + normal) + s**2 * (centre + d)
    reach = float(np.max(np.abs(pts - centre))) + 2.0
    rs, cs, _, _ = _window(n, cy, cx, reach)
    dist = np.full((rs.stop - rs.start, cs.stop - cs.start), np.inf)
    # Only the 2x2 pixels around a sample can lie within one pixel of it.
    base = np.floor(pts).astype(int)
    for dr in (0, 1):
        for dc in (0, 1):
            r, c = base[:, 0] + dr, base[:, 1] + dc
            keep = (r >= rs.start) & (r < rs.stop) & (c >= cs.start) & (c < cs.stop)
            r, c, p = r[keep], c[keep], pts[keep]
            np.minimum.at(dist, (r - rs.start, c - cs.start), np.hypot(r - p[:, 0], c - p[:, 1]))
    return rs, cs, np.clip(1.0 - dist, 0.0, 1.0)


def _paint_patch(image: np.ndarray, patch: Patch, value: float, inside: np.ndarray) -> None:
    """Paint ``value`` through a patch's mask, within the soft mask ``inside``."""
    rs, cs, mask = patch
    image[rs, cs] = paint(image[rs, cs], mask * inside[rs, cs], value)

