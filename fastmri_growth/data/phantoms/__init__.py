"""What the synthetic slices show: one module per ``--phantom`` kind.

- ``ellipses``: smooth knee- and head-like ellipse phantoms
  (:mod:`.ellipses`).
- ``textured``: procedural images with detail at every scale, down to
  single pixels (:mod:`.textured`).
- ``anatomy``: real MRI anatomy resampled from brain images shipped inside
  the nilearn, dipy and nibabel wheels (:mod:`.anatomy`; needs
  ``pip install fastmri-growth[anatomy]``).

Each module has ``MIN_RECON_SIZE`` and ``draw(rng, num_slices, n, anatomy,
acquisition)``, which returns the magnitudes ``(num_slices, n, n)`` (values
about 0-1) of one volume from the volume's own random Generator.
"""
from __future__ import annotations

import importlib

import numpy as np

__all__ = ["PHANTOMS", "check_phantom", "draw", "min_recon_size"]

PHANTOMS = ("ellipses", "textured", "anatomy")


def _module(phantom: str):
    return importlib.import_module(f"{__name__}.{phantom}")


def check_phantom(phantom, recon_size: int) -> str:
    """Validate a phantom name against a recon size, and its packages.

    Args:
        phantom: One of ``PHANTOMS``.
        recon_size: The target side it is to be drawn at.

    Returns:
        The phantom name.

    Raises:
        ValueError: unknown phantom, or a recon size below its minimum.
        MissingExtraError: the phantom's packages or files are not installed
            (an ImportError; the message says what to install).
    """
    if phantom not in PHANTOMS:
        raise ValueError(f"unknown phantom {phantom!r}; valid phantoms: {', '.join(PHANTOMS)}")
    low = min_recon_size(phantom)
    if recon_size < low:
        raise ValueError(
            f"recon_size {recon_size} is too small for phantom {phantom!r}: it needs at "
            f"least {low}"
        )
    if phantom == "anatomy":
        _module("anatomy").check_available()
    return phantom


def min_recon_size(phantom: str) -> int:
    """The smallest target side the phantom draws at."""
    return int(_module(phantom).MIN_RECON_SIZE)


def draw(phantom: str, rng, num_slices: int, n: int, anatomy: str, acquisition: str) -> np.ndarray:
    """Magnitudes of one volume, ``(num_slices, n, n)``, values about 0-1.

    Args:
        phantom: One of ``PHANTOMS``.
        rng: The volume's phantom Generator (the only randomness used).
        num_slices: Slices of the volume.
        n: Side of the square image.
        anatomy: The challenge's anatomy, ``"knee"`` or ``"brain"``.
        acquisition: The volume's acquisition (sets the contrast where the
            phantom models one).
    """
    return _module(phantom).draw(rng, num_slices, n, anatomy, acquisition)
