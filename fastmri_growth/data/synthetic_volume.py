"""One synthetic volume: its plan, k-space, target, ISMRMRD header and file.

The k-space of every phantom is made the same way: the phantom's magnitudes
times a smooth phase fill the central ``R`` rows of the 2x oversampled
``(2 * R, W)`` image grid, multicoil volumes multiply by normalised coil
maps, the centred orthonormal FFT (fastMRI's ``fft2c`` convention) gives the
k-space, complex noise is added and the unacquired edge columns are zeroed.
Targets are computed from that k-space with fastMRI's own functions, in the
order ``UnetDataTransform`` uses. Each volume has independent random
streams (metadata, phantom, coils, noise) seeded by ``(seed, anatomy, split,
index)``, so it does not depend on what else is generated.
"""
from __future__ import annotations

import hashlib
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Tuple

import h5py
import numpy as np

from fastmri_growth.data import phantoms
from fastmri_growth.data.fastmri_format import (
    BRAIN_ACQUISITIONS,
    ISMRMRD_NAMESPACE,
    KNEE_ACQUISITIONS,
    LEADERBOARD_CENTER_FRACTIONS,
    SPLITS,
    TARGET_KEYS,
    UNDERSAMPLED_SPLITS,
)
from fastmri_growth.data.phantoms.common import slice_fields, slice_positions
from fastmri_growth.data.phantoms.common import grid as _grid

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
MAX_VOLUMES_PER_SPLIT = 200_000
_SPLIT_IDS = {split: i for i, split in enumerate(SPLITS)}
_ANATOMY_IDS = {"knee": 0, "brain": 1}
# Independent random streams per volume.
_STREAM_META, _STREAM_PHANTOM, _STREAM_COILS, _STREAM_NOISE = range(4)


@dataclass(frozen=True)
class Challenge:
    name: str
    anatomy: str  # "knee" or "brain"
    coils: str  # "singlecoil" or "multicoil"

    @property
    def target_key(self) -> str:
        return TARGET_KEYS[self.coils]

    def folder(self, split: str) -> str:
        return f"{self.anatomy}/{self.coils}_{split}"


CHALLENGE_SPECS = {
    name: Challenge(name, *name.split("_")) for name in CHALLENGES
}


@dataclass(frozen=True)
class VolumeMeta:
    """Everything about a volume that is fixed before its images are drawn."""

    challenge: Challenge
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
# Planning: names and per-volume parameters
# ---------------------------------------------------------------------------


def _rng(seed: int, anatomy: str, split: str, index: int, stream: int, *extra: int):
    key = [seed, _ANATOMY_IDS[anatomy], _SPLIT_IDS[split], index, stream, *extra]
    return np.random.default_rng(np.random.SeedSequence(key))


def _even(x: float) -> int:
    return max(2, 2 * int(round(x / 2)))


def plan_volume(
    out_dir: Path,
    challenge: Challenge,
    split: str,
    index: int,
    recon_size: int,
    seed: int,
    num_coils: Tuple[int, int],
) -> VolumeMeta:
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

    number = _SPLIT_IDS[split] * MAX_VOLUMES_PER_SPLIT + index
    if anatomy == "knee":
        name = f"file{1_000_000 + number}.h5"
    else:
        name = f"file_brain_{acquisition}_{scanner}_{2_000_000 + number}.h5"
    patient_id = hashlib.sha256(f"{seed}/{anatomy}/{split}/{index}".encode()).hexdigest()
    return VolumeMeta(
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
# Phase, coils, k-space
# ---------------------------------------------------------------------------


def _phase(rng, num_slices: int, n: int) -> np.ndarray:
    """Smooth image phase, ``(num_slices, n, n)`` radians."""
    positions = slice_positions(num_slices)
    y, x = _grid(n)
    start, slope = rng.uniform(-0.6, 0.6, size=(2, 4))
    field = slice_fields(rng, positions, n, 1.5)
    out = np.empty((num_slices, n, n))
    for i, t in enumerate(positions):
        c0, c1, c2, c3 = start + 0.5 * slope * t
        out[i] = c0 + c1 * y + c2 * x + c3 * (x * x + y * y) + 0.4 * field[i]
    return out


def coil_sensitivities(rng, num_coils: int, height: int, width: int, recon_size: int):
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


def _undersampling_mask(meta: VolumeMeta) -> Tuple[np.ndarray, int]:
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


def phantom_rng(seed: int, anatomy: str, split: str, index: int) -> np.random.Generator:
    """The Generator a volume's phantom is drawn from (and then its phase)."""
    return _rng(seed, anatomy, split, index, _STREAM_PHANTOM)


def make_volume(
    meta: VolumeMeta, num_slices: int, recon_size: int, seed: int, phantom: str = "ellipses"
) -> Dict:
    """K-space, target or mask, and attrs of one volume (see the module docstring).

    Returns:
        ``{"kspace": complex64 array, target key or "mask": array, "attrs": dict}``.
    """
    anatomy, split, index = meta.challenge.anatomy, meta.split, meta.index
    n, height, width = recon_size, 2 * recon_size, meta.width
    rng = phantom_rng(seed, anatomy, split, index)
    magnitude = phantoms.draw(phantom, rng, num_slices, n, anatomy, meta.acquisition)
    crop = magnitude * np.exp(1j * _phase(rng, num_slices, n))
    image = np.zeros((num_slices, height, width), dtype=np.complex128)
    top, left = (height - n) // 2, (width - n) // 2  # fastMRI's center_crop offsets
    image[:, top : top + n, left : left + n] = _INTENSITY_SCALE * crop

    multicoil = meta.challenge.coils == "multicoil"
    coil_mode = 1 if multicoil else 0
    if multicoil:
        coil_rng = _rng(seed, anatomy, split, index, _STREAM_COILS, meta.num_coils)
        maps = coil_sensitivities(coil_rng, meta.num_coils, height, width, recon_size)
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


def ismrmrd_header(meta: VolumeMeta, num_slices: int, recon_size: int) -> bytes:
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


def partial_name(name: str) -> str:
    """The temporary name a file is written under before it is renamed."""
    return f".{name}.partial"


def write_volume(meta: VolumeMeta, volume: Dict, header: bytes) -> None:
    """Write one volume's HDF5 file (see ``make_volume`` and ``ismrmrd_header``)."""
    # Written under a temporary name and renamed, so an interrupted run never
    # leaves a truncated file where SliceDataset would pick it up.
    path = meta.path
    tmp = path.with_name(partial_name(path.name))
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


