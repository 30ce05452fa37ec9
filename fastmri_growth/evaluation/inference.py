"""Run a reconstruction network over a fastMRI split and write leaderboard files.

Two kinds of network, read as fastMRI's training modules read them:

- image networks (a U-Net): the normalised zero-filled image
  ``(N, 1, H, W)`` from ``UnetDataTransform`` in, the normalised image out;
- k-space networks (fastMRI's VarNet, :class:`~fastmri_growth.models.DynamicVarNet`):
  masked multicoil k-space from ``VarNetDataTransform`` in, the
  root-sum-of-squares image out, centre-cropped as ``VarNetModule.test_step``
  crops it.

Validation here follows the leaderboard protocol: every volume is
under-sampled with a mask that depends only on its file name (both
transforms with ``use_seed=True`` draw the same mask), so two runs, or two
models, see exactly the same inputs. Test and challenge files carry their
own under-sampled k-space and mask; they are reconstructed as they are.

Output files use ``fastmri.save_reconstructions``: one HDF5 file per input
volume, named like it, holding a single ``reconstruction`` dataset of shape
``(slices, H, W)``.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Union

import h5py
import numpy as np

from fastmri_growth.data.fastmri_format import (
    LEADERBOARD_CENTER_FRACTIONS,
    MASK_TYPES,
    check_challenge,
    check_split_dir,
    leaderboard_mask_type,
    target_key,
)

if TYPE_CHECKING:  # torch is imported when a model runs, so the CLIs start fast
    import torch
    from torch import nn

PathLike = Union[str, Path]


def resolve_split_dir(data_root_or_split_path: PathLike, challenge: str, split: str = "val") -> Path:
    """Find a split folder from either the folder itself or a data root.

    Args:
        data_root_or_split_path: A folder of ``.h5`` files, or a folder that
            holds ``<challenge>_<split>`` (for example ``knee/``), or a data
            root that holds exactly one ``<anatomy>/<challenge>_<split>``.
        challenge: ``"singlecoil"`` or ``"multicoil"``.
        split: The split name, ``"val"`` by default.

    Returns:
        The split folder.

    Raises:
        ValueError: nothing or more than one candidate matches.
    """
    check_challenge(challenge)
    path = Path(data_root_or_split_path)
    if not path.is_dir():
        raise ValueError(f"data path {path} is not an existing folder; pass a split folder of .h5 files")
    if any(p.suffix == ".h5" for p in path.iterdir()):
        return path
    name = f"{challenge}_{split}"
    candidates = [path / name] if (path / name).is_dir() else []
    if not candidates:
        candidates = sorted(p for p in path.glob(f"*/{name}") if p.is_dir())
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise ValueError(
            f"no {name} folder and no .h5 files under {path}; pass the split folder "
            f"(e.g. DATA/knee/{name})"
        )
    raise ValueError(
        f"several {name} folders under {path} ({', '.join(str(c) for c in candidates)}); "
        "pass one of them"
    )


def fixed_mask_func(mask_type: str, acceleration: int, center_fraction: Optional[float] = None):
    """Build a single-setting fastMRI mask function.

    Args:
        mask_type: One of ``MASK_TYPES``.
        acceleration: The under-sampling factor.
        center_fraction: Fraction of centre columns kept; defaults to the
            leaderboard value for 4x (0.08) and 8x (0.04).

    Returns:
        A ``fastmri.data.subsample.MaskFunc``; with ``use_seed=True`` in the
        transform it gives every volume the same mask on every run.
    """
    from fastmri.data.subsample import create_mask_for_mask_type

    if mask_type not in MASK_TYPES:
        raise ValueError(f"unknown mask type {mask_type!r}; choose one of {', '.join(MASK_TYPES)}")
    if int(acceleration) != acceleration or acceleration < 1:
        raise ValueError(f"acceleration must be a positive integer, got {acceleration!r}")
    if center_fraction is None:
        if acceleration not in LEADERBOARD_CENTER_FRACTIONS:
            raise ValueError(
                f"no default centre fraction for acceleration {acceleration}; "
                "pass a centre fraction (leaderboard: 0.08 for 4x, 0.04 for 8x)"
            )
        center_fraction = LEADERBOARD_CENTER_FRACTIONS[acceleration]
    if not 0.0 < center_fraction <= 1.0:
        raise ValueError(f"centre fraction must lie in (0, 1], got {center_fraction!r}")
    return create_mask_for_mask_type(mask_type, [center_fraction], [int(acceleration)])


def _check_safe_to_write(path: Path, inputs: Sequence[Path]) -> None:
    """Refuse to replace an input file or any HDF5 file that holds raw data."""
    resolved = {p.resolve() for p in inputs}
    if path.resolve() in resolved:
        raise ValueError(
            f"output {path} is one of the input files; pass an out_dir outside the data folder"
        )
    if path.exists():
        try:
            with h5py.File(path, "r") as hf:
                keys = set(hf.keys())
        except OSError:
            keys = {"<not HDF5>"}
        if keys - {"reconstruction"}:
            raise ValueError(
                f"{path} exists and is not a reconstruction file (holds {', '.join(sorted(keys))}); "
                "pass an empty out_dir"
            )


class _Progress:
    """A per-volume progress line on stderr (tqdm when available)."""

    def __init__(self, total: int, enabled: bool, desc: str):
        self.enabled = enabled
        self.count = 0
        self.total = total
        self.bar = None
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, desc=desc, unit="vol", file=sys.stderr)
            except ImportError:
                self.bar = None
        self.desc = desc

    def update(self, name: str) -> None:
        self.count += 1
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(1)
        else:
            print(f"{self.desc}: {self.count}/{self.total} {name}", file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


#: What a network reads: ``"image"`` (a U-Net) or ``"kspace"`` (a VarNet).
MODEL_INPUTS = ("image", "kspace")


def model_input(model: nn.Module) -> str:
    """``"kspace"`` for fastMRI's VarNet and DynamicVarNet, ``"image"`` otherwise."""
    from fastmri_growth.models import DynamicVarNet

    if isinstance(model, DynamicVarNet):
        return "kspace"
    try:
        from fastmri.models import VarNet
    except ImportError:  # pragma: no cover - fastmri is a dependency
        return "image"
    return "kspace" if isinstance(model, VarNet) else "image"


class _ImageReader:
    """A U-Net on ``UnetDataTransform`` samples: normalised image in, image out."""

    def transform(self, challenge: str, mask_func: Optional[Callable]):
        from fastmri.data.transforms import UnetDataTransform

        return UnetDataTransform(challenge, mask_func=mask_func, use_seed=True)

    def run(self, model: nn.Module, batch: Any, device) -> np.ndarray:
        """`(N, H, W)`: the network's output, unnormalised."""
        image = batch.image.to(device).unsqueeze(1)
        mean = batch.mean.to(device).view(-1, 1, 1)
        std = batch.std.to(device).view(-1, 1, 1)
        return (model(image).squeeze(1) * std + mean).cpu().numpy()


class _KspaceReader:
    """A VarNet on ``VarNetDataTransform`` samples: masked multicoil k-space in, image out."""

    def transform(self, challenge: str, mask_func: Optional[Callable]):
        from fastmri.data.transforms import VarNetDataTransform

        return VarNetDataTransform(mask_func=mask_func, use_seed=True)

    def run(self, model: nn.Module, batch: Any, device) -> np.ndarray:
        """`(N, h, w)`: the network's output, centre-cropped as ``VarNetModule.test_step`` does."""
        import torch
        from fastmri.data.transforms import center_crop

        low = batch.num_low_frequencies
        if torch.is_tensor(low):
            # One value for the whole batch, as the VarNet's sensitivity model
            # expects (a collated per-sample tensor would be ambiguous there).
            values = set(low.flatten().tolist())
            if len(values) != 1:
                raise ValueError(
                    f"slices of one batch have different numbers of centre lines "
                    f"({sorted(values)}); use batch_size=1")
            low = int(values.pop())
        output = model(batch.masked_kspace.to(device), batch.mask.to(device), low)
        crop = tuple(int(c.flatten()[0]) if torch.is_tensor(c) else int(c)
                     for c in batch.crop_size)
        if output.shape[-1] < crop[1]:  # fastMRI's check for FLAIR 203
            crop = (output.shape[-1], output.shape[-1])
        return center_crop(output, crop).cpu().numpy()


def reconstruct(
    model: nn.Module,
    data_path: PathLike,
    challenge: str,
    mask_func: Optional[Callable],
    out_dir: PathLike,
    batch_size: int = 1,
    device: Union[str, torch.device] = "cpu",
    num_workers: int = 0,
    progress: bool = True,
    kind: Optional[str] = None,
) -> List[Path]:
    """Reconstruct every volume of a split and write leaderboard files.

    Args:
        model: An image network mapping normalised zero-filled images
            ``(N, 1, H, W)`` to ``(N, 1, H, W)`` (``fastmri.models.Unet``, the
            ``.unet`` of a U-Net LightningModule), or a k-space network
            mapping ``(masked_kspace (N, coils, H, W, 2), mask,
            num_low_frequencies)`` to ``(N, H, W)`` (``fastmri.models.VarNet``,
            the ``.varnet`` of a VarNet LightningModule). It is moved to
            ``device`` and run in eval mode; its training flag is restored.
        data_path: Folder of fastMRI ``.h5`` files (one split).
        challenge: ``"singlecoil"`` or ``"multicoil"`` (k-space networks:
            multicoil only).
        mask_func: fastMRI mask function for fully sampled files (val/train);
            masks are seeded from the file name, so they are fixed. ``None``
            for test/challenge files, which carry their own under-sampled
            k-space and ``mask``.
        out_dir: Folder for the output files (created if needed).
        batch_size: Slices per forward pass; above 1 every slice of the
            split must have the same size.
        device: Torch device for the forward passes.
        num_workers: DataLoader workers.
        progress: Report progress per volume on stderr.
        kind: ``"image"`` or ``"kspace"`` (see :data:`MODEL_INPUTS`); None
            tells them apart with :func:`model_input`.

    Returns:
        Paths of the written files, one per volume, in file-name order.

    Raises:
        ValueError: unknown challenge or kind, a k-space network on
            single-coil data, unreadable split folder, a ``mask_func``
            given for files that already carry a mask (or none given for
            fully sampled files), or an output that would replace a data
            file; nothing is written then.
    """
    import torch
    from fastmri.data import SliceDataset
    from fastmri.utils import save_reconstructions

    check_challenge(challenge)
    kind = model_input(model) if kind is None else kind
    if kind not in MODEL_INPUTS:
        raise ValueError(f"unknown model input kind {kind!r}; valid: {', '.join(MODEL_INPUTS)}")
    if kind == "kspace" and challenge != "multicoil":
        raise ValueError(
            f"{type(model).__name__} reconstructs multicoil k-space, but challenge is "
            f"{challenge!r}; use challenge='multicoil' (--challenge multicoil) and a multicoil split")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    files = check_split_dir(data_path, challenge=challenge, what="data path")
    has_mask = {}
    for fname in files:
        with h5py.File(fname, "r") as hf:
            has_mask[fname.name] = "mask" in hf
    masked = sorted(name for name, m in has_mask.items() if m)
    if mask_func is not None and masked:
        raise ValueError(
            f"{masked[0]} in {data_path} is already under-sampled (it has a 'mask'); "
            "pass mask_func=None for test/challenge files"
        )
    if mask_func is None and len(masked) != len(files):
        full = sorted(set(has_mask) - set(masked))
        raise ValueError(
            f"{full[0]} in {data_path} is fully sampled (no 'mask' dataset); pass a mask_func "
            "(see fixed_mask_func) so the input is under-sampled"
        )

    out_dir = Path(out_dir)
    for fname in files:
        _check_safe_to_write(out_dir / fname.name, files)

    reader = _KspaceReader() if kind == "kspace" else _ImageReader()
    dataset = SliceDataset(root=data_path, challenge=challenge,
                           transform=reader.transform(challenge, mask_func))
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers
    )

    was_training = model.training
    model.to(device)
    model.eval()
    written: List[Path] = []
    pending: Dict[str, Dict[int, np.ndarray]] = {}
    bar = _Progress(len(files), progress, f"reconstruct {Path(data_path).name}")

    def flush(name: str) -> None:
        slices = pending.pop(name)
        volume = np.stack([slices[i] for i in sorted(slices)]).astype(np.float32)
        save_reconstructions({name: volume}, out_dir)
        written.append(out_dir / name)
        bar.update(name)

    try:
        with torch.no_grad():
            for batch in loader:
                output = reader.run(model, batch, device)
                for name, slice_num, out in zip(batch.fname, batch.slice_num.tolist(), output):
                    # SliceDataset lists slices file by file, so a new name
                    # means every earlier volume is complete.
                    for done in [n for n in pending if n != name]:
                        flush(done)
                    pending.setdefault(name, {})[int(slice_num)] = out
            for name in list(pending):
                flush(name)
    finally:
        bar.close()
        model.train(was_training)
    return written


def leaderboard_validation(
    model: nn.Module,
    data_root_or_split_path: PathLike,
    challenge: str,
    out_dir: PathLike,
    accelerations: Sequence[int] = (4, 8),
    center_fractions: Sequence[float] = (0.08, 0.04),
    mask_type: Optional[str] = None,
    batch_size: int = 1,
    device: Union[str, torch.device] = "cpu",
    num_workers: int = 0,
    progress: bool = True,
) -> Dict[int, dict]:
    """Leaderboard-style validation: fixed masks per acceleration, then metrics.

    For each acceleration the split is reconstructed under a fixed mask into
    ``out_dir/<accel>x/`` and evaluated against the split's targets with
    ``fastmri_growth.evaluation.metrics.evaluate_folders`` (fastMRI's metric
    conventions).

    Args:
        model: An image network ``(N, 1, H, W) -> (N, 1, H, W)`` or a
            k-space network (a VarNet; see ``reconstruct``).
        data_root_or_split_path: The val split folder, or a folder holding
            it (see ``resolve_split_dir``).
        challenge: ``"singlecoil"`` or ``"multicoil"``.
        out_dir: Root folder of the reconstructions.
        accelerations: Under-sampling factors, one run each.
        center_fractions: Centre fraction paired with each acceleration.
        mask_type: fastMRI mask type; ``None`` picks the leaderboard's
            (``random`` for knee, ``equispaced`` for brain).
        batch_size: See ``reconstruct``.
        device: See ``reconstruct``.
        num_workers: See ``reconstruct``.
        progress: See ``reconstruct``.

    Returns:
        ``{acceleration: result}`` where result is the dict from
        ``EvaluationResult.to_dict()`` plus ``mask_type``,
        ``center_fraction`` and ``reconstructions`` (the folder).
    """
    from fastmri_growth.evaluation.metrics import evaluate_folders

    if len(accelerations) != len(center_fractions):
        raise ValueError(
            f"got {len(accelerations)} accelerations and {len(center_fractions)} centre "
            "fractions; pass one centre fraction per acceleration"
        )
    split = resolve_split_dir(data_root_or_split_path, challenge)
    files = check_split_dir(split, challenge=challenge, what="data path")
    key = target_key(challenge)
    for fname in files:
        with h5py.File(fname, "r") as hf:
            if key not in hf:
                raise ValueError(
                    f"{fname} holds no {key!r} target"
                    f"{' (it is under-sampled: a test/challenge file)' if 'mask' in hf else ''}; "
                    "leaderboard validation under-samples fully sampled files with fixed masks "
                    "and compares with their targets: pass a val split")
    if mask_type is None:
        mask_type = leaderboard_mask_type(files)
    results: Dict[int, dict] = {}
    for accel, cf in zip(accelerations, center_fractions):
        mask_func = fixed_mask_func(mask_type, accel, cf)
        accel_dir = Path(out_dir) / f"{accel}x"
        reconstruct(
            model,
            split,
            challenge,
            mask_func,
            accel_dir,
            batch_size=batch_size,
            device=device,
            num_workers=num_workers,
            progress=progress,
        )
        result = evaluate_folders(split, accel_dir, challenge).to_dict()
        result.update(
            mask_type=mask_type,
            acceleration=int(accel),
            center_fraction=float(cf),
            reconstructions=str(accel_dir),
        )
        results[int(accel)] = result
    return results
