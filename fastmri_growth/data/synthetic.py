"""Synthetic MRI volumes in fastMRI's exact on-disk format.

The files are meant to go through fastMRI's own, unpatched loader
(``fastmri.data.SliceDataset`` with ``UnetDataTransform`` or
``VarNetDataTransform``), so that code developed on them runs unchanged on the
real knee and brain data. Each volume is one HDF5 file holding:

- ``kspace`` complex64, singlecoil ``(slices, 2 * R, W)`` or multicoil
  ``(slices, coils, 2 * R, W)``, where ``R`` is the reconstruction size. The
  readout is 2x oversampled like the scanner data: the object occupies the
  central ``R`` rows of the ``(2 * R, W)`` image grid. A few edge columns are
  left unacquired (zero), as the ISMRMRD header's encoding limits say.
- ``reconstruction_esc`` (singlecoil) or ``reconstruction_rss`` (multicoil)
  float32 ``(slices, R, R)``: the centre crop of ``|ifft2c(kspace)|`` (root
  sum of squares over coils for multicoil), computed with fastMRI's functions
  in the same order as ``UnetDataTransform``. Test and challenge files carry
  no target but a bool ``mask`` ``(W,)`` and under-sampled k-space.
- attrs ``acquisition``, ``patient_id``, and ``max``/``norm`` of the target
  (train, val) or ``acceleration``/``num_low_frequency`` (test, challenge).
- ``ismrmrd_header``: ISMRMRD XML with the fields ``SliceDataset`` parses.

The images are ellipse phantoms with anatomy-like structure (a coronal knee
with femur, tibia, cartilage and menisci; an axial head with scalp, skull,
cortex, white matter and ventricles), smooth texture that varies smoothly from
slice to slice, a smooth phase, Gaussian-bump coil sensitivities normalised to
``sum |S|^2 = 1`` and a little complex noise. Everything is seeded: the same
arguments give byte-identical arrays, and a volume does not depend on which
other splits or challenges are generated alongside it. Knee singlecoil and
multicoil volumes of the same name show the same anatomy.

Command line (:mod:`fastmri_growth.cli.synth`)::

    fastmri-growth-synth --out DIR \\
        --challenges knee_singlecoil --num-volumes train=8,val=2,test=2,challenge=2
"""

from __future__ import annotations

import hashlib
import inspect
import numbers
import os
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import h5py
import numpy as np

from fastmri_growth.data.fastmri_format import (
    BRAIN_ACQUISITIONS,
    ISMRMRD_NAMESPACE,
    KNEE_ACQUISITIONS,
    LEADERBOARD_CENTER_FRACTIONS,
    SPLITS,
    TARGET_KEYS,
    UNDERSAMPLED_SPLITS,
)

__all__ = [
    "CHALLENGES",
    "SPLITS",
    "DatasetExistsError",
    "generate_dataset",
]

CHALLENGES = ("knee_singlecoil", "knee_multicoil", "brain_multicoil")
# (center_fraction, acceleration) pairs of fastMRI's test and challenge sets.
ACCELERATIONS = tuple((cf, acc) for acc, cf in LEADERBOARD_CENTER_FRACTIONS.items())

# Brain k-space widths vary per file in the public data (320, 368, 384, 396
# columns for a 320 reconstruction); these are the same ratios.
_BRAIN_WIDTH_RATIOS = (1.0, 1.15, 1.2, 1.25)
_KNEE_WIDTH_RATIO = 1.15  # 368 / 320
_BRAIN_SCANNER_CODES = (200, 201, 202, 203, 205, 206, 207, 208, 209, 210)
# Scanner-like absolute intensities (targets of order 1e-4) rather than [0, 1],
# so that code silently assuming unit-range images fails here, not on real data.
_INTENSITY_SCALE = 3e-4
# File numbers are allocated in a block per split, so a file's name (and, via
# the seed, its content) never depends on how many volumes other splits have.
_MAX_VOLUMES_PER_SPLIT = 200_000
_SPLIT_IDS = {split: i for i, split in enumerate(SPLITS)}
_ANATOMY_IDS = {"knee": 0, "brain": 1}
# Independent random streams per volume.
_STREAM_META, _STREAM_PHANTOM, _STREAM_COILS, _STREAM_NOISE = range(4)


class DatasetExistsError(FileExistsError):
    """Raised when files to be written already exist and overwrite is off.

    Attributes:
        existing: The paths that already exist.
    """

    def __init__(self, message: str, existing: Sequence[Path]):
        super().__init__(message)
        self.existing = list(existing)


@dataclass(frozen=True)
class _Challenge:
    name: str
    anatomy: str  # "knee" or "brain"
    coils: str  # "singlecoil" or "multicoil"

    @property
    def target_key(self) -> str:
        return TARGET_KEYS[self.coils]

    def folder(self, split: str) -> str:
        return f"{self.anatomy}/{self.coils}_{split}"


_CHALLENGE_SPECS = {
    name: _Challenge(name, *name.split("_")) for name in CHALLENGES
}


@dataclass(frozen=True)
class _VolumeMeta:
    """Everything about a volume that is fixed before its images are drawn."""

    challenge: _Challenge
    split: str
    index: int
    path: Path
    acquisition: str
    width: int
    num_coils: int
    pad_left: int  # unacquired (zero) columns on the left
    pad_right: int  # unacquired (zero) columns on the right
    patient_id: str
    field_strength: float
    center_fraction: float
    acceleration: int
    mask_seed: int

    @property
    def undersampled(self) -> bool:
        return self.split in UNDERSAMPLED_SPLITS


# ---------------------------------------------------------------------------
# Argument checks (shared by the API and the command line)
# ---------------------------------------------------------------------------


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_names(kind: str, values, valid: Sequence[str]) -> Tuple[str, ...]:
    if isinstance(values, str):
        values = (values,)
    values = tuple(values)
    if not values:
        raise ValueError(f"no {kind}s given; valid {kind}s: {', '.join(valid)}")
    for value in values:
        if value not in valid:
            raise ValueError(
                f"unknown {kind} {value!r}; valid {kind}s: {', '.join(valid)}"
            )
    return tuple(dict.fromkeys(values))  # drop repeats, keep the order


def _check_recon_size(value) -> int:
    if not _is_int(value) or value <= 0 or value % 2:
        raise ValueError(
            f"recon_size must be a positive even integer (e.g. 64, 128, 320), got {value!r}"
        )
    return int(value)


def _check_positive_int(name: str, value) -> int:
    if not _is_int(value) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _check_seed(value) -> int:
    if not _is_int(value) or value < 0:
        raise ValueError(f"seed must be a non-negative integer, got {value!r}")
    return int(value)


def _check_num_coils(value) -> Tuple[int, int]:
    if _is_int(value):
        value = (value, value)
    try:
        low, high = value
    except (TypeError, ValueError):
        raise ValueError(
            f"num_coils must be an integer or a (min, max) pair, got {value!r}"
        ) from None
    if not (_is_int(low) and _is_int(high) and 1 <= low <= high):
        raise ValueError(
            f"num_coils must be an integer >= 1 or a (min, max) pair with "
            f"1 <= min <= max, got {value!r}"
        )
    return int(low), int(high)


def _check_num_volumes(value, splits: Sequence[str]) -> Dict[str, int]:
    default = _DEFAULTS["num_volumes"]
    if _is_int(value):
        counts = {split: value for split in splits}
    elif isinstance(value, Mapping):
        for split in value:
            if split not in SPLITS:
                raise ValueError(
                    f"num_volumes names unknown split {split!r}; valid splits: "
                    f"{', '.join(SPLITS)}"
                )
            if split not in splits:
                raise ValueError(
                    f"num_volumes names split {split!r}, which is not being "
                    f"generated (splits: {', '.join(splits)})"
                )
        counts = {split: value.get(split, default) for split in splits}
    else:
        raise ValueError(
            f"num_volumes must be an integer or a mapping split -> integer, got {value!r}"
        )
    for split, count in counts.items():
        if not _is_int(count) or not 1 <= count < _MAX_VOLUMES_PER_SPLIT:
            raise ValueError(
                f"num_volumes for split {split!r} must be an integer in "
                f"[1, {_MAX_VOLUMES_PER_SPLIT - 1}], got {count!r}"
            )
    return {split: int(count) for split, count in counts.items()}


# ---------------------------------------------------------------------------
# Planning: names and per-volume parameters
# ---------------------------------------------------------------------------


def _rng(seed: int, anatomy: str, split: str, index: int, stream: int, *extra: int):
    key = [seed, _ANATOMY_IDS[anatomy], _SPLIT_IDS[split], index, stream, *extra]
    return np.random.default_rng(np.random.SeedSequence(key))


def _even(x: float) -> int:
    return max(2, 2 * int(round(x / 2)))


def _plan_volume(
    out_dir: Path,
    challenge: _Challenge,
    split: str,
    index: int,
    recon_size: int,
    seed: int,
    num_coils: Tuple[int, int],
) -> _VolumeMeta:
    anatomy = challenge.anatomy
    # Drawn in a fixed order whatever the challenge, so that knee singlecoil
    # and multicoil volumes with the same name share their parameters.
    rng = _rng(seed, anatomy, split, index, _STREAM_META)
    if anatomy == "knee":
        acquisition = str(rng.choice(KNEE_ACQUISITIONS))
        width = _even(_KNEE_WIDTH_RATIO * recon_size)
    else:
        acquisition = str(rng.choice(BRAIN_ACQUISITIONS))
        width = _even(float(rng.choice(_BRAIN_WIDTH_RATIOS)) * recon_size)
    scanner = int(rng.choice(_BRAIN_SCANNER_CODES))
    coils = int(rng.integers(num_coils[0], num_coils[1] + 1))
    # The scanner does not acquire a few edge phase-encoding columns; the
    # header's encoding limits describe the acquired range.
    pad_total = int(round(width * rng.uniform(0.0, 0.06)))
    pad_left = int(rng.integers(0, pad_total + 1))
    pad_right = pad_total - pad_left
    field_strength = float(rng.choice((1.5, 3.0)))
    center_fraction, acceleration = ACCELERATIONS[int(rng.integers(len(ACCELERATIONS)))]
    mask_seed = int(rng.integers(2**32))
    if challenge.coils == "singlecoil":
        coils = 1

    number = _SPLIT_IDS[split] * _MAX_VOLUMES_PER_SPLIT + index
    if anatomy == "knee":
        name = f"file{1_000_000 + number}.h5"
    else:
        name = f"file_brain_{acquisition}_{scanner}_{2_000_000 + number}.h5"
    patient_id = hashlib.sha256(f"{seed}/{anatomy}/{split}/{index}".encode()).hexdigest()
    return _VolumeMeta(
        challenge=challenge,
        split=split,
        index=index,
        path=out_dir / challenge.folder(split) / name,
        acquisition=acquisition,
        width=width,
        num_coils=coils,
        pad_left=pad_left,
        pad_right=pad_right,
        patient_id=patient_id,
        field_strength=field_strength,
        center_fraction=center_fraction,
        acceleration=acceleration,
        mask_seed=mask_seed,
    )


# ---------------------------------------------------------------------------
# Phantoms
# ---------------------------------------------------------------------------


def _grid(n: int) -> Tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [-1, 1], rows (y, downwards) and columns (x)."""
    c = (np.arange(n) - n / 2 + 0.5) / (n / 2)
    return c[:, None], c[None, :]


def _soft_ellipse(y, x, cy, cx, ay, ax, edge, angle=0.0):
    """Ellipse indicator with a smooth edge of about ``edge`` (same units as y, x)."""
    if ay <= 0 or ax <= 0:
        return np.zeros(np.broadcast(y, x).shape)
    dy, dx = y - cy, x - cx
    if angle:
        c, s = np.cos(angle), np.sin(angle)
        dy, dx = c * dy - s * dx, s * dy + c * dx
    r = np.sqrt((dy / ay) ** 2 + (dx / ax) ** 2)
    return 0.5 * (1.0 + np.tanh((1.0 - r) * min(ay, ax) / edge))


def _smooth_fields(rng, count: int, n: int, cycles: float) -> np.ndarray:
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
_FULL_VOLUME_SLICES = 16


def _slice_positions(num_slices: int) -> np.ndarray:
    """Slice positions in [-1, 1] through the anatomy, centred on 0."""
    spacing = 2.0 / (max(num_slices, _FULL_VOLUME_SLICES) - 1)
    return (np.arange(num_slices) - (num_slices - 1) / 2) * spacing


def _slice_fields(rng, positions: np.ndarray, n: int, cycles: float) -> np.ndarray:
    """Per-slice random fields that change smoothly through the volume.

    Returns:
        Array ``(len(positions), n, n)``, each slice of unit variance.
    """
    a, b = _smooth_fields(rng, 2, n, cycles)
    angle = np.pi / 4 * positions + rng.uniform(0, 2 * np.pi)
    return np.cos(angle)[:, None, None] * a + np.sin(angle)[:, None, None] * b


def _paint(image, mask, value):
    return image * (1.0 - mask) + value * mask


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


def _phase(rng, num_slices: int, n: int) -> np.ndarray:
    """Smooth image phase, ``(num_slices, n, n)`` radians."""
    positions = _slice_positions(num_slices)
    y, x = _grid(n)
    start, slope = rng.uniform(-0.6, 0.6, size=(2, 4))
    field = _slice_fields(rng, positions, n, 1.5)
    out = np.empty((num_slices, n, n))
    for i, t in enumerate(positions):
        c0, c1, c2, c3 = start + 0.5 * slope * t
        out[i] = c0 + c1 * y + c2 * x + c3 * (x * x + y * y) + 0.4 * field[i]
    return out


def _coil_sensitivities(rng, num_coils: int, height: int, width: int, recon_size: int):
    """Smooth complex coil maps with ``sum_c |S_c|^2 = 1``, ``(coils, H, W)``.

    Each coil is a Gaussian bump centred on a ring around the object, with a
    slowly varying phase.
    """
    half = recon_size / 2
    y = ((np.arange(height) - height // 2) / half)[:, None]
    x = ((np.arange(width) - width // 2) / half)[None, :]
    angles = rng.uniform(0, 2 * np.pi) + 2 * np.pi * np.arange(num_coils) / num_coils
    angles = angles + rng.uniform(-0.2, 0.2, size=num_coils)
    sigma = rng.uniform(0.6, 0.9, size=num_coils)
    phase0 = rng.uniform(0, 2 * np.pi, size=num_coils)
    grad = rng.uniform(-1.0, 1.0, size=(num_coils, 2))
    maps = np.empty((num_coils, height, width), dtype=np.complex128)
    for c in range(num_coils):
        cy, cx = 1.15 * np.sin(angles[c]), 1.0 * np.cos(angles[c])
        bump = np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * sigma[c] ** 2))
        maps[c] = bump * np.exp(1j * (phase0[c] + grad[c, 0] * y + grad[c, 1] * x))
    return maps / np.sqrt(np.sum(np.abs(maps) ** 2, axis=0))


def _fft2c(image: np.ndarray) -> np.ndarray:
    """Centred orthonormal 2D FFT over the last two axes (fastmri.fft2c's convention)."""
    axes = (-2, -1)
    shifted = np.fft.ifftshift(image, axes=axes)
    return np.fft.fftshift(np.fft.fft2(shifted, axes=axes, norm="ortho"), axes=axes)


# ---------------------------------------------------------------------------
# Volumes
# ---------------------------------------------------------------------------


def _undersampling_mask(meta: _VolumeMeta) -> Tuple[np.ndarray, int]:
    """fastMRI's mask conventions: random for knee, equispaced for brain."""
    from fastmri.data.subsample import EquispacedMaskFractionFunc, RandomMaskFunc

    mask_class = RandomMaskFunc if meta.challenge.anatomy == "knee" else EquispacedMaskFractionFunc
    mask_func = mask_class([meta.center_fraction], [meta.acceleration])
    mask, num_low_frequencies = mask_func((1, meta.width, 1), seed=meta.mask_seed)
    return mask.numpy().reshape(meta.width) > 0, int(num_low_frequencies)


def _target(kspace: np.ndarray, recon_size: int, multicoil: bool) -> np.ndarray:
    """The target exactly as ``UnetDataTransform`` builds its input, per slice.

    Args:
        kspace: ``(slices, H, W)`` or ``(slices, coils, H, W)`` complex64.

    Returns:
        float32 ``(slices, recon_size, recon_size)``.
    """
    import fastmri
    import torch
    from fastmri.data.transforms import complex_center_crop, to_tensor

    out = np.empty((kspace.shape[0], recon_size, recon_size), dtype=np.float32)
    # One thread: these tensors are small, and on a busy machine intra-op
    # threads make torch's FFT shifts many times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for i in range(kspace.shape[0]):
            image = fastmri.ifft2c(to_tensor(kspace[i]))
            image = fastmri.complex_abs(complex_center_crop(image, (recon_size, recon_size)))
            if multicoil:
                image = fastmri.rss(image)
            out[i] = image.numpy()
    finally:
        torch.set_num_threads(threads)
    return out


def _make_volume(meta: _VolumeMeta, num_slices: int, recon_size: int, seed: int) -> Dict:
    anatomy, split, index = meta.challenge.anatomy, meta.split, meta.index
    n, height, width = recon_size, 2 * recon_size, meta.width
    rng = _rng(seed, anatomy, split, index, _STREAM_PHANTOM)
    draw = _knee_slices if anatomy == "knee" else _brain_slices
    magnitude = draw(rng, num_slices, n, meta.acquisition)
    crop = magnitude * np.exp(1j * _phase(rng, num_slices, n))
    image = np.zeros((num_slices, height, width), dtype=np.complex128)
    top, left = (height - n) // 2, (width - n) // 2  # fastMRI's center_crop offsets
    image[:, top : top + n, left : left + n] = _INTENSITY_SCALE * crop

    multicoil = meta.challenge.coils == "multicoil"
    coil_mode = 1 if multicoil else 0
    if multicoil:
        coil_rng = _rng(seed, anatomy, split, index, _STREAM_COILS, meta.num_coils)
        maps = _coil_sensitivities(coil_rng, meta.num_coils, height, width, recon_size)
        image = image[:, None] * maps[None]
    kspace = _fft2c(image)
    noise_rng = _rng(seed, anatomy, split, index, _STREAM_NOISE, coil_mode)
    sigma = _INTENSITY_SCALE * noise_rng.uniform(0.006, 0.02) / np.sqrt(2.0)
    kspace = kspace + sigma * (
        noise_rng.standard_normal(kspace.shape) + 1j * noise_rng.standard_normal(kspace.shape)
    )
    kspace[..., : meta.pad_left] = 0
    kspace[..., width - meta.pad_right :] = 0
    kspace = kspace.astype(np.complex64)

    volume = {"kspace": kspace}
    if meta.undersampled:
        mask, num_low_frequencies = _undersampling_mask(meta)
        volume["kspace"] = np.where(mask, kspace, np.complex64(0))
        volume["mask"] = mask
        volume["attrs"] = {
            "acceleration": meta.acceleration,
            "acquisition": meta.acquisition,
            "num_low_frequency": num_low_frequencies,
            "patient_id": meta.patient_id,
        }
    else:
        target = _target(kspace, recon_size, multicoil)
        volume[meta.challenge.target_key] = target
        volume["attrs"] = {
            "acquisition": meta.acquisition,
            "max": float(target.max()),
            "norm": float(np.linalg.norm(target.astype(np.float64))),
            "patient_id": meta.patient_id,
        }
    return volume


def _ismrmrd_header(meta: _VolumeMeta, num_slices: int, recon_size: int) -> bytes:
    """ISMRMRD XML with the fields ``SliceDataset._retrieve_metadata`` parses."""
    ns = ISMRMRD_NAMESPACE
    ET.register_namespace("", ns)

    def sub(parent, tag, text=None):
        element = ET.SubElement(parent, f"{{{ns}}}{tag}")
        if text is not None:
            element.text = str(text)
        return element

    def xyz(parent, tag, values):
        element = sub(parent, tag)
        for axis, value in zip("xyz", values):
            sub(element, axis, value)

    fov = 140.0 if meta.challenge.anatomy == "knee" else 220.0
    thickness = 3.0 if meta.challenge.anatomy == "knee" else 5.0
    root = ET.Element(f"{{{ns}}}ismrmrdHeader")
    sub(sub(root, "measurementInformation"), "protocolName", meta.acquisition)
    system = sub(root, "acquisitionSystemInformation")
    sub(system, "systemFieldStrength_T", meta.field_strength)
    sub(system, "receiverChannels", meta.num_coils)
    encoding = sub(root, "encoding")
    encoded = sub(encoding, "encodedSpace")
    xyz(encoded, "matrixSize", (2 * recon_size, meta.width, 1))
    xyz(encoded, "fieldOfView_mm", (2 * fov, fov * meta.width / recon_size, thickness))
    recon = sub(encoding, "reconSpace")
    xyz(recon, "matrixSize", (recon_size, recon_size, 1))
    xyz(recon, "fieldOfView_mm", (fov, fov, thickness))
    limits = sub(encoding, "encodingLimits")
    # SliceDataset: padding_left = W // 2 - center, padding_right =
    # padding_left + maximum + 1, i.e. the acquired column range.
    acquired = meta.width - meta.pad_left - meta.pad_right
    step1 = sub(limits, "kspace_encoding_step_1")
    sub(step1, "minimum", 0)
    sub(step1, "maximum", acquired - 1)
    sub(step1, "center", meta.width // 2 - meta.pad_left)
    step2 = sub(limits, "kspace_encoding_step_2")
    for tag in ("minimum", "maximum", "center"):
        sub(step2, tag, 0)
    slices = sub(limits, "slice")
    sub(slices, "minimum", 0)
    sub(slices, "maximum", num_slices - 1)
    sub(slices, "center", num_slices // 2)
    sub(encoding, "trajectory", "cartesian")
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def _write_volume(meta: _VolumeMeta, volume: Dict, header: bytes) -> None:
    # Written under a temporary name and renamed, so an interrupted run never
    # leaves a truncated file where SliceDataset would pick it up.
    path = meta.path
    tmp = path.with_name(f".{path.name}.partial")
    try:
        with h5py.File(tmp, "w") as hf:
            hf.create_dataset("ismrmrd_header", data=np.bytes_(header))
            for key, value in volume.items():
                if key != "attrs":
                    hf.create_dataset(key, data=value)
            for key, value in volume["attrs"].items():
                hf.attrs[key] = value
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------


def generate_dataset(
    out_dir: Union[str, os.PathLike],
    challenges: Sequence[str] = ("knee_singlecoil",),
    splits: Sequence[str] = SPLITS,
    num_volumes: Union[int, Mapping[str, int]] = 2,
    num_slices: int = 4,
    recon_size: int = 128,
    seed: int = 0,
    overwrite: bool = False,
    *,
    num_coils: Union[int, Tuple[int, int]] = (4, 8),
    log: Optional[Callable[[str], None]] = None,
) -> List[Path]:
    """Write a synthetic dataset in fastMRI's layout and file format.

    Files go to ``out_dir/knee/singlecoil_{split}``,
    ``out_dir/knee/multicoil_{split}`` and ``out_dir/brain/multicoil_{split}``.
    Every argument is checked before anything is written.

    Args:
        out_dir: Root folder of the dataset (created if missing).
        challenges: Any of ``knee_singlecoil``, ``knee_multicoil``,
            ``brain_multicoil``.
        splits: Any of ``train``, ``val`` (fully sampled, with target) and
            ``test``, ``challenge`` (under-sampled, with mask, no target).
        num_volumes: Volumes per split: one integer for all splits, or a
            mapping ``split -> count``; splits it leaves out get 2.
        num_slices: Slices per volume.
        recon_size: Side ``R`` of the square target; k-space is
            ``2 * R`` rows (oversampled readout) by ``W >= R`` columns. Must be a
            positive even integer.
        seed: Non-negative seed; the same arguments give identical arrays.
        overwrite: Replace existing files instead of refusing.
        num_coils: Coils per multicoil volume: an integer, or an inclusive
            ``(min, max)`` range drawn per file.
        log: Called with a progress line per split and a summary, if given.

    Returns:
        The paths written, in writing order.

    Raises:
        ValueError: An argument is invalid; the message names it and the valid
            values.
        DatasetExistsError: Some files exist and ``overwrite`` is False;
            nothing is written then.
    """
    challenges = _check_names("challenge", challenges, CHALLENGES)
    splits = _check_names("split", splits, SPLITS)
    counts = _check_num_volumes(num_volumes, splits)
    num_slices = _check_positive_int("num_slices", num_slices)
    recon_size = _check_recon_size(recon_size)
    seed = _check_seed(seed)
    coil_range = _check_num_coils(num_coils)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"out_dir {str(out_dir)!r} exists and is not a folder")

    plan = [
        (name, split, [
            _plan_volume(out_dir, _CHALLENGE_SPECS[name], split, i, recon_size, seed, coil_range)
            for i in range(counts[split])
        ])
        for name in challenges
        for split in splits
    ]
    existing = [m.path for _, _, metas in plan for m in metas if m.path.exists()]
    total = sum(len(metas) for _, _, metas in plan)
    if existing and not overwrite:
        raise DatasetExistsError(
            f"{len(existing)} of the {total} files to write already exist "
            f"(first: {existing[0]}); nothing was written. Pass overwrite=True "
            "to replace them.",
            existing,
        )

    say = log or (lambda line: None)
    written: List[Path] = []
    start = time.perf_counter()
    for name, split, metas in plan:
        folder = out_dir / _CHALLENGE_SPECS[name].folder(split)
        folder.mkdir(parents=True, exist_ok=True)
        split_start = time.perf_counter()
        for meta in metas:
            volume = _make_volume(meta, num_slices, recon_size, seed)
            _write_volume(meta, volume, _ismrmrd_header(meta, num_slices, recon_size))
            written.append(meta.path)
        widths = sorted({m.width for m in metas})
        coils = sorted({m.num_coils for m in metas})
        shape = f"{2 * recon_size}x{_span(widths)}" + (
            f", {_span(coils)} coils" if _CHALLENGE_SPECS[name].coils == "multicoil" else ""
        )
        if split in UNDERSAMPLED_SPLITS:
            content = "under-sampled with mask, no target"
        else:
            content = f"target {recon_size}x{recon_size}"
        say(
            f"{folder}: {len(metas)} volume{'s' if len(metas) > 1 else ''} x "
            f"{num_slices} slice{'s' if num_slices > 1 else ''}, k-space {shape}, {content} "
            f"({time.perf_counter() - split_start:.1f} s)"
        )
        ours = {m.path.name for m in metas}
        others = [p for p in folder.iterdir() if p.name not in ours]
        if others:
            say(
                f"  note: {folder} also holds {len(others)} other entries "
                "(SliceDataset will read them too)"
            )
    size = sum(p.stat().st_size for p in written) / 2**20
    files = f"{len(written)} file{'s' if len(written) > 1 else ''}"
    say(
        f"wrote {files} ({size:.1f} MiB) under {out_dir} in "
        f"{time.perf_counter() - start:.1f} s"
    )
    if existing:
        say(
            f"replaced {len(existing)} existing files; delete any fastMRI dataset "
            "cache (dataset_cache.pkl) that lists these folders, or SliceDataset "
            "will keep using the old slice lists"
        )
    return written


def _span(values: Sequence[int]) -> str:
    return str(values[0]) if len(values) == 1 else f"{values[0]}-{values[-1]}"


_DEFAULTS = {
    name: p.default
    for name, p in inspect.signature(generate_dataset).parameters.items()
    if p.default is not inspect.Parameter.empty
}
