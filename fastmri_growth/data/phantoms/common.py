"""Drawing helpers shared by the phantoms: grids, soft shapes, random fields."""
from __future__ import annotations

from typing import Tuple

import numpy as np


def grid(n: int) -> Tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [-1, 1], rows (y, downwards) and columns (x).

    Returns:
        ``(y, x)`` of shapes ``(n, 1)`` and ``(1, n)``.
    """
    c = (np.arange(n) - n / 2 + 0.5) / (n / 2)
    return c[:, None], c[None, :]


def soft_ellipse(y, x, cy, cx, ay, ax, edge, angle=0.0):
    """Ellipse indicator with a smooth edge of about ``edge`` (same units as y, x)."""
    if ay <= 0 or ax <= 0:
        return np.zeros(np.broadcast(y, x).shape)
    dy, dx = y - cy, x - cx
    if angle:
        c, s = np.cos(angle), np.sin(angle)
        dy, dx = c * dy - s * dx, s * dy + c * dx
    r = np.sqrt((dy / ay) ** 2 + (dx / ax) ** 2)
    return 0.5 * (1.0 + np.tanh((1.0 - r) * min(ay, ax) / edge))


def smooth_fields(rng, count: int, n: int, cycles: float) -> np.ndarray:
    """Gaussian random fields, zero mean and unit std, about ``cycles`` per FOV.

    Returns:
        Array ``(count, n, n)``.
    """
    noise = rng.standard_normal((count, n, n))
    f = np.fft.fftfreq(n) * n  # cycles per field of view
    k2 = f[:, None] ** 2 + f[None, :] ** 2
    fields = np.fft.ifft2(np.fft.fft2(noise) * np.exp(-k2 / (2.0 * cycles**2))).real
    fields -= fields.mean(axis=(-2, -1), keepdims=True)
    fields /= fields.std(axis=(-2, -1), keepdims=True) + 1e-12
    return fields


# A volume with this many slices or more spans the whole anatomy; fewer slices
# are its central ones, with the same spacing, so neighbours stay similar.
FULL_VOLUME_SLICES = 16


def slice_positions(num_slices: int) -> np.ndarray:
    """Slice positions in [-1, 1] through the anatomy, centred on 0."""
    spacing = 2.0 / (max(num_slices, FULL_VOLUME_SLICES) - 1)
    return (np.arange(num_slices) - (num_slices - 1) / 2) * spacing


def slice_fields(rng, positions: np.ndarray, n: int, cycles: float) -> np.ndarray:
    """Per-slice random fields that change smoothly through the volume.

    Returns:
        Array ``(len(positions), n, n)``, each slice of unit variance.
    """
    a, b = smooth_fields(rng, 2, n, cycles)
    angle = np.pi / 4 * positions + rng.uniform(0, 2 * np.pi)
    return np.cos(angle)[:, None, None] * a + np.sin(angle)[:, None, None] * b


def correlated_fields(rng, count: int, n: int, sigma_px: float, rho: float) -> np.ndarray:
    """Unit-variance Gaussian textures, slice ``i`` correlated ``rho`` with ``i - 1``.

    Each field is white noise blurred by a Gaussian of ``sigma_px`` pixels
    (periodic, through the FFT); consecutive fields follow an AR(1) process,
    so detail changes from slice to slice without ever repeating.

    Args:
        rng: A numpy Generator.
        count: Number of slices.
        n: Side of the square fields.
        sigma_px: Gaussian blur in pixels.
        rho: Correlation between neighbouring slices, in [0, 1].

    Returns:
        Array ``(count, n, n)``, each slice of zero mean and unit std.
    """
    f = np.fft.fftfreq(n)  # cycles per pixel
    transfer = np.exp(-2.0 * (np.pi * sigma_px) ** 2 * (f[:, None] ** 2 + f[None, :] ** 2))
    fields = np.fft.ifft2(np.fft.fft2(rng.standard_normal((count, n, n))) * transfer).real
    fields -= fields.mean(axis=(-2, -1), keepdims=True)
    fields /= fields.std(axis=(-2, -1), keepdims=True) + 1e-12
    out = np.empty_like(fields)
    out[0] = fields[0]
    for i in range(1, count):
        out[i] = rho * out[i - 1] + np.sqrt(1.0 - rho * rho) * fields[i]
    return out


def paint(image, mask, value):
    """``image`` with ``value`` painted where ``mask`` (0-1) is on."""
    return image * (1.0 - mask) + value * mask
