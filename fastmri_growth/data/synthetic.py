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

What the slices show is the ``phantom`` (:mod:`fastmri_growth.data.phantoms`):

- ``ellipses`` (default): anatomy-like ellipse phantoms (a coronal knee with
  femur, tibia, cartilage and menisci; an axial head with scalp, skull,
  cortex, white matter and ventricles), smooth.
- ``textured``: procedural images with detail at every scale: small blobs a
  few pixels across, curved lines one pixel wide, fine and coarse texture.
- ``anatomy``: real brain MRI resampled from images shipped in the nilearn,
  dipy and nibabel wheels, augmented per volume (needs
  ``pip install fastmri-growth[anatomy]``).

Every phantom gets a smooth phase, Gaussian-bump coil sensitivities
normalised to ``sum |S|^2 = 1`` and a little complex noise. Everything is
seeded: the same arguments give byte-identical arrays, and a volume does not
depend on which other splits or challenges are generated alongside it. Knee
singlecoil and multicoil volumes of the same name show the same image.
``<out_dir>/fastmri_growth_synth.json`` records what was written where (see
:mod:`fastmri_growth.data.synthetic_manifest`), so that a re-run never mixes
datasets in a folder and never touches files it did not write.

Command line (:mod:`fastmri_growth.cli.synth`)::

    fastmri-growth-synth --out DIR --phantom textured \\
        --challenges knee_singlecoil --num-volumes train=8,val=2,test=2,challenge=2
"""

from __future__ import annotations

import inspect
import numbers
import os
import time
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from fastmri_growth.data import phantoms
from fastmri_growth.data.fastmri_format import (  # noqa: F401 - re-exported
    BRAIN_ACQUISITIONS,
    KNEE_ACQUISITIONS,
    SPLITS,
    UNDERSAMPLED_SPLITS,
)
from fastmri_growth.data.phantoms import PHANTOMS
from fastmri_growth.data.phantoms.anatomy import MissingExtraError
from fastmri_growth.data.synthetic_manifest import (
    MANIFEST_NAME,
    DatasetExistsError,
    FolderPlan,
    ForeignDataError,
    exists_message,
    inspect as inspect_folders,
    record_folders,
    settings_of,
)
from fastmri_growth.data.synthetic_volume import (
    CHALLENGE_SPECS,
    CHALLENGES,
    MAX_VOLUMES_PER_SPLIT,
    ismrmrd_header,
    make_volume,
    plan_volume,
    write_volume,
)
from fastmri_growth.data.synthetic_volume import coil_sensitivities as _coil_sensitivities  # noqa: F401

__all__ = [
    "BRAIN_ACQUISITIONS",
    "CHALLENGES",
    "KNEE_ACQUISITIONS",
    "MANIFEST_NAME",
    "PHANTOMS",
    "SPLITS",
    "DatasetExistsError",
    "ForeignDataError",
    "MissingExtraError",
    "generate_dataset",
]

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
        if not _is_int(count) or not 1 <= count < MAX_VOLUMES_PER_SPLIT:
            raise ValueError(
                f"num_volumes for split {split!r} must be an integer in "
                f"[1, {MAX_VOLUMES_PER_SPLIT - 1}], got {count!r}"
            )
    return {split: int(count) for split, count in counts.items()}


def _check_phantom(value, recon_size: int) -> str:
    if not isinstance(value, str):
        raise ValueError(f"phantom must be one of {', '.join(PHANTOMS)}, got {value!r}")
    return phantoms.check_phantom(value, recon_size)


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
    phantom: str = "ellipses",
    log: Optional[Callable[[str], None]] = None,
) -> List[Path]:
    """Write a synthetic dataset in fastMRI's layout and file format.

    Files go to ``out_dir/knee/singlecoil_{split}``,
    ``out_dir/knee/multicoil_{split}`` and ``out_dir/brain/multicoil_{split}``;
    ``out_dir/fastmri_growth_synth.json`` records which files each folder
    holds and their settings. Every argument, and what is already in the
    folders to be written, is checked before anything is written.

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
            positive even integer, at least 32 for ``textured`` and ``anatomy``.
        seed: Non-negative seed; the same arguments give identical arrays.
        overwrite: Replace the files of an earlier run in the folders being
            written, removing those the new settings do not write. Files the
            generator did not write are never replaced.
        num_coils: Coils per multicoil volume: an integer, or an inclusive
            ``(min, max)`` range drawn per file.
        phantom: What the images show: ``ellipses``, ``textured`` or
            ``anatomy`` (see :mod:`fastmri_growth.data.phantoms`).
        log: Called with a progress line per split and a summary, if given.

    Returns:
        The paths written, in writing order.

    Raises:
        ValueError: An argument is invalid; the message names it and the valid
            values. Also when a path to be written is a file.
        MissingExtraError: ``phantom="anatomy"`` without its packages (an
            ImportError saying ``pip install fastmri-growth[anatomy]``).
        ForeignDataError: A folder to be written holds entries the generator
            did not write (a ValueError); nothing is written then.
        DatasetExistsError: Files of an earlier run are there and
            ``overwrite`` is False; nothing is written then.
    """
    challenges = _check_names("challenge", challenges, CHALLENGES)
    splits = _check_names("split", splits, SPLITS)
    counts = _check_num_volumes(num_volumes, splits)
    num_slices = _check_positive_int("num_slices", num_slices)
    recon_size = _check_recon_size(recon_size)
    seed = _check_seed(seed)
    coil_range = _check_num_coils(num_coils)
    phantom = _check_phantom(phantom, recon_size)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"out_dir {str(out_dir)!r} exists and is not a folder")
    # The nearest existing ancestor must be a folder, or mkdir fails half-way.
    existing = next((p for p in out_dir.parents if p.exists()), None)
    if existing is not None and not out_dir.exists() and not existing.is_dir():
        raise ValueError(f"out_dir {str(out_dir)!r} is inside {str(existing)!r}, which "
                         "exists and is not a folder")

    plan = [
        (name, split, [
            plan_volume(out_dir, CHALLENGE_SPECS[name], split, i, recon_size, seed, coil_range)
            for i in range(counts[split])
        ])
        for name in challenges
        for split in splits
    ]
    folder_plans = [
        FolderPlan(
            folder=CHALLENGE_SPECS[name].folder(split),
            names=[m.path.name for m in metas],
            settings=settings_of({
                "phantom": phantom, "challenge": name, "split": split,
                "num_volumes": len(metas), "num_slices": num_slices, "recon_size": recon_size,
                "seed": seed, "num_coils": coil_range,
            }),
        )
        for name, split, metas in plan
    ]
    found = inspect_folders(out_dir, folder_plans)
    total = sum(len(metas) for _, _, metas in plan)
    if (found.existing or found.stale) and not overwrite:
        raise DatasetExistsError(
            exists_message(found, total, "overwrite=True"), found.existing, found.stale, total
        )

    say = log or (lambda line: None)
    written: List[Path] = []
    start = time.perf_counter()
    record_folders(out_dir, found.record, folder_plans, complete=False)
    for path in found.stale:
        path.unlink()
    for name, split, metas in plan:
        folder = out_dir / CHALLENGE_SPECS[name].folder(split)
        folder.mkdir(parents=True, exist_ok=True)
        split_start = time.perf_counter()
        for meta in metas:
            volume = make_volume(meta, num_slices, recon_size, seed, phantom)
            write_volume(meta, volume, ismrmrd_header(meta, num_slices, recon_size))
            written.append(meta.path)
        widths = sorted({m.width for m in metas})
        coils = sorted({m.num_coils for m in metas})
        shape = f"{2 * recon_size}x{_span(widths)}" + (
            f", {_span(coils)} coils" if CHALLENGE_SPECS[name].coils == "multicoil" else ""
        )
        if split in UNDERSAMPLED_SPLITS:
            content = "under-sampled with mask, no target"
        else:
            content = f"target {recon_size}x{recon_size}"
        say(
            f"{folder}: {len(metas)} volume{'s' if len(metas) > 1 else ''} x "
            f"{num_slices} slice{'s' if num_slices > 1 else ''} of {phantom}, k-space {shape}, "
            f"{content} "
            f"({time.perf_counter() - split_start:.1f} s)"
        )
    record_folders(out_dir, found.record, folder_plans, complete=True)
    size = sum(p.stat().st_size for p in written) / 2**20
    files = f"{len(written)} file{'s' if len(written) > 1 else ''}"
    say(
        f"wrote {files} ({size:.1f} MiB) under {out_dir} in "
        f"{time.perf_counter() - start:.1f} s"
    )
    if found.stale:
        say(
            f"removed {len(found.stale)} files of the earlier run that these settings do "
            "not write"
        )
    if found.existing or found.stale:
        say(
            f"replaced {len(found.existing)} existing files; delete any fastMRI dataset "
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
