"""Checks of the training command's model type, data and network size, before anything is written.

The model type against the data flags (the facts of each model type are the
registry :mod:`fastmri_growth.pl_modules.model_types`), the paths
(``fastmri_dirs.yaml`` as fastMRI's demo reads it), the mask and
sample-rate flags, the data folders, the architecture a checkpoint stores,
and the pooling depth against the data's image size. Each check raises
:class:`~fastmri_growth.cli.common.UsageError` with a message naming the
fix; none writes a file. :func:`fastmri_growth.cli.train_checks.validate_args`
runs them in order.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from fastmri_growth.cli.checkpoints import read_checkpoint
from fastmri_growth.cli.common import UsageError
from fastmri_growth.data import fastmri_format
from fastmri_growth.data.fastmri_format import DIRS_CONFIG, synth_hint
from fastmri_growth.pl_modules.model_types import (
    MODEL_TYPES,
    UNET_ARCHITECTURE_ARGS,
    checkpoint_model_type,
    join_words,
)


# ---------------------------------------------------------------------------
# the model type against the data flags
# ---------------------------------------------------------------------------

#: The data flags whose defaults depend on the model type, with the flags' own defaults.
DATA_FLAG_DEFAULTS = {"challenge": "singlecoil", "mask_type": "random"}


def _kspace(model_type: Optional[str]) -> bool:
    """Whether a model type (None: unknown, taken as an image model) reads k-space."""
    return model_type in MODEL_TYPES and MODEL_TYPES[model_type].kspace


def model_type_data_defaults(model_type: str) -> Dict[str, Any]:
    """``challenge`` and ``mask_type`` defaults of a model type (its demo's, else the flags')."""
    demo = MODEL_TYPES[model_type].demo_defaults
    return {k: demo.get(k, v) for k, v in DATA_FLAG_DEFAULTS.items()}


def check_model_challenge(args: argparse.Namespace) -> None:
    """The VarNets reconstruct multicoil k-space only.

    Raises:
        UsageError: a k-space model type with ``--challenge singlecoil``.
    """
    if _kspace(args.model_type) and args.challenge != "multicoil":
        image_types = [n for n, t in MODEL_TYPES.items() if not t.kspace]
        raise UsageError(
            f"--model-type {args.model_type} needs multicoil data, got --challenge "
            f"{args.challenge}; pass --challenge multicoil (the VarNet estimates coil "
            f"sensitivities), or use --model-type {join_words(image_types)} for single-coil data"
        )


def _fastmri_dirs_value(key: str) -> Optional[Path]:
    """``key`` from ./fastmri_dirs.yaml read as fastMRI's ``fetch_dir`` does.

    Returns None when the file does not exist. Unlike ``fetch_dir`` no
    template file is written then: bad input must not create files.
    """
    config = Path(DIRS_CONFIG)
    if not config.is_file():
        return None
    from fastmri.data.mri_data import fetch_dir

    try:
        return fetch_dir(key, config)
    except KeyError:
        raise UsageError(
            f"{config.resolve()} has no {key!r} entry; add `{key}: /path` to it"
        ) from None
    except Exception as err:  # yaml errors, an empty file (None[key])
        msg = str(err).replace("\n", " ")
        raise UsageError(
            f"cannot read {config.resolve()} ({type(err).__name__}: {msg}); fix it or "
            "remove it and pass --data_path"
        ) from None


def resolve_paths(args: argparse.Namespace) -> None:
    """Fill ``data_path`` and ``default_root_dir`` defaults as fastMRI's demo.

    ``data_path``: ``--data_path``, else ``knee_path`` of ./fastmri_dirs.yaml.
    ``default_root_dir``: ``--default_root_dir``, else
    ``log_path/<model_type>/<model_type>_demo`` (``log_path`` from the yaml,
    else ``.``), so ``--model-type unet`` gives fastMRI's ``unet/unet_demo``.
    """
    args.data_path_source = "--data_path"
    if args.data_path is None:
        from_config = _fastmri_dirs_value("knee_path")
        if from_config is not None:
            args.data_path = from_config
            args.data_path_source = f"knee_path in {Path(DIRS_CONFIG).resolve()}"
    if args.default_root_dir is None:
        log_path = _fastmri_dirs_value("log_path") or Path(".")
        args.default_root_dir = log_path / args.model_type / f"{args.model_type}_demo"
    args.default_root_dir = Path(args.default_root_dir)


def check_mask_args(args: argparse.Namespace) -> None:
    """One centre fraction per acceleration, each in range."""
    fractions, accels = list(args.center_fractions), list(args.accelerations)
    if len(fractions) != len(accels):
        raise UsageError(
            f"--center_fractions has {len(fractions)} value(s) "
            f"({' '.join(map(str, fractions))}) but --accelerations has {len(accels)} "
            f"({' '.join(map(str, accels))}); give one centre fraction per acceleration, "
            "e.g. --center_fractions 0.08 0.04 --accelerations 4 8"
        )
    for frac in fractions:
        if not 0.0 < frac < 1.0:
            raise UsageError(
                f"--center_fractions {frac} is out of range; use fractions in (0, 1), e.g. 0.08"
            )
    for accel in accels:
        if accel < 1:
            raise UsageError(f"--accelerations {accel} is out of range; use integers >= 1, e.g. 4")


def check_sample_rates(args: argparse.Namespace) -> None:
    """Sample rates in (0, 1], and slice and volume rates not both (per split)."""
    for prefix in ("", "val_", "test_"):
        slice_rate = getattr(args, f"{prefix}sample_rate", None)
        volume_rate = getattr(args, f"{prefix}volume_sample_rate", None)
        if slice_rate is not None and volume_rate is not None:
            raise UsageError(
                f"--{prefix}sample_rate and --{prefix}volume_sample_rate were both given; "
                "pass only one of them"
            )
        for name, rate in ((f"{prefix}sample_rate", slice_rate),
                           (f"{prefix}volume_sample_rate", volume_rate)):
            if rate is not None and not 0.0 < rate <= 1.0:
                raise UsageError(f"--{name} {rate} is out of range; use a fraction in (0, 1]")


def check_batch_limits(args: argparse.Namespace) -> None:
    """``--limit_train_batches 0`` (train) or ``--limit_test_batches 0`` (test): nothing would run.

    Lightning accepts them and the run ends at once, exit status 0, having
    trained (or tested) nothing. ``--limit_val_batches 0`` stays allowed: it
    skips validation, a choice.
    """
    name = "limit_train_batches" if args.mode == "train" else "limit_test_batches"
    limit = getattr(args, name, None)
    if limit is None or isinstance(limit, bool) or not isinstance(limit, (int, float)):
        return
    if limit == 0:
        what = "trains on" if args.mode == "train" else "tests"
        raise UsageError(
            f"--{name} {limit} {what} no batch: the run would end at once having done nothing; "
            f"pass a number of batches (1 or more) or a fraction of them in (0, 1], or leave "
            f"--{name} out (all batches)")


def check_split_dir(folder: Path, challenge: str, need_target: bool, hint: str) -> None:
    """:func:`fastmri_growth.data.fastmri_format.check_split_dir` as a usage check.

    Args:
        folder: A split folder such as ``DATA/singlecoil_train``.
        challenge: ``"singlecoil"`` or ``"multicoil"``.
        need_target: Whether each file must hold the challenge's target.
        hint: What to do about a missing folder, appended to the message.

    Raises:
        UsageError: naming the folder or file and the fix.
    """
    try:
        fastmri_format.check_split_dir(folder, challenge, need_target, what="data folder",
                                       missing_hint=hint)
    except ValueError as err:
        raise UsageError(str(err)) from None


def data_folders(args: argparse.Namespace) -> Dict[str, Path]:
    """The split folders a run reads, named as FastMriDataModule names them.

    Returns:
        ``{"train": ..., "val": ..., "test": ...}``: train and val for
        training; test (the ``--test_split`` folder, or ``--test_path``) in
        both modes, since training lists it too when the dataset cache is on.
    """
    folders: Dict[str, Path] = {}
    root = Path(args.data_path) if args.data_path is not None else None
    if root is not None and args.mode == "train":
        folders["train"] = root / f"{args.challenge}_train"
        folders["val"] = root / f"{args.challenge}_val"
    if args.test_path is not None:
        folders["test"] = Path(args.test_path)
    elif root is not None:
        folders["test"] = root / f"{args.challenge}_{args.test_split}"
    return folders


def check_data(args: argparse.Namespace) -> None:
    """Check the data folders the run will read (see :func:`data_folders`)."""
    if args.data_path is None and (args.mode == "train" or args.test_path is None):
        raise UsageError(
            f"no data path: pass --data_path DIR (a fastMRI root holding "
            f"{args.challenge}_train/, {args.challenge}_val/, ...) or set knee_path in "
            f"./{DIRS_CONFIG}; {synth_hint(args.challenge)}"
        )
    if args.data_path is not None and not Path(args.data_path).is_dir():
        state = "is a file, not a folder" if Path(args.data_path).exists() else "does not exist"
        raise UsageError(
            f"data path {args.data_path} (from {args.data_path_source}) {state}; "
            f"pass --data_path DIR (a fastMRI root holding {args.challenge}_train/, ...); "
            f"{synth_hint(args.challenge)}"
        )
    layout_hint = (
        f"--data_path must hold {args.challenge}_train/, {args.challenge}_val/ and "
        f"{args.challenge}_test/ (fastMRI layout); {synth_hint(args.challenge)}"
    )
    for split, folder in data_folders(args).items():
        if split == "test" and args.mode == "train":
            # Training lists the test folder only to warm the dataset cache,
            # and skips it when it is missing.
            if not (args.use_dataset_cache_file and folder.is_dir()):
                continue
        hint = "pass an existing --test_path" if (
            split == "test" and args.test_path is not None) else layout_hint
        need_target = split in ("train", "val") or (
            args.mode == "test" and args.test_path is None and args.test_split == "val"
        )
        check_split_dir(folder, args.challenge, need_target, hint)


def architecture_args(model_type: Optional[str]) -> Tuple[str, ...]:
    """A model type's :attr:`~fastmri_growth.pl_modules.model_types.ModelType.architecture_args`.

    An unknown model type (None: a checkpoint of no registered type) is
    read as a U-Net.
    """
    if model_type in MODEL_TYPES:
        return MODEL_TYPES[model_type].architecture_args
    return UNET_ARCHITECTURE_ARGS


def stored_architecture(ckpt: Any) -> Dict[str, int]:
    """The architecture arguments a checkpoint's module was built with.

    Taken from the saved ``hyper_parameters``; any missing there are read
    from the state dict's shapes (the starting widths ``chans`` and
    ``sens_chans`` only for a fixed network, whose first conv is that wide).

    Args:
        ckpt: A loaded Lightning checkpoint.

    Returns:
        ``{name: value}`` for the names of :func:`architecture_args` found.
    """
    if not isinstance(ckpt, dict):
        return {}
    model_type = checkpoint_model_type(ckpt)
    names = architecture_args(model_type)
    hparams = ckpt.get("hyper_parameters") or {}
    found = {k: int(hparams[k]) for k in names if isinstance(hparams.get(k), int)}
    if len(found) < len(names):
        state = ckpt.get("state_dict") or {}
        read = _varnet_shapes if _kspace(model_type) else _unet_shapes
        for key, value in read(state, model_type).items():
            found.setdefault(key, value)
    return found


def _fixed(model_type: Optional[str]) -> bool:
    """Whether a model type's network keeps its starting widths (its first conv says ``chans``)."""
    return model_type in MODEL_TYPES and not MODEL_TYPES[model_type].grows


def _unet_shapes(state: Dict[str, Any], model_type: Optional[str]) -> Dict[str, int]:
    from fastmri_growth.models.unet_spec import architecture_from_state_dict

    try:
        arch = architecture_from_state_dict(
            {k: v for k, v in state.items() if str(k).startswith("unet.")})
    except (ValueError, KeyError, TypeError, IndexError):
        return {}
    found = {key: int(arch[key]) for key in ("in_chans", "out_chans", "num_pool_layers")}
    first = state.get("unet.down_sample_layers.0.layers.0.weight")
    if _fixed(model_type) and first is not None:
        found["chans"] = int(first.shape[0])
    return found


def _varnet_shapes(state: Dict[str, Any], model_type: Optional[str]) -> Dict[str, int]:
    from fastmri_growth.models.dynamic_varnet import varnet_architecture_from_state_dict

    try:
        arch = varnet_architecture_from_state_dict(state)
    except (ValueError, KeyError, TypeError, IndexError):
        return {}
    found = {key: int(arch[key]) for key in ("num_cascades", "pools", "sens_pools")}
    if _fixed(model_type):
        found.update(chans=int(arch["chans"]), sens_chans=int(arch["sens_chans"]))
    return found


# ---------------------------------------------------------------------------
# the network against the data
# ---------------------------------------------------------------------------


def max_pool_layers(height: int, width: int) -> int:
    """How many poolings a U-Net can apply to an ``height x width`` image.

    Each pooling halves (rounding down) both sides; it needs both at least 2,
    and the bottleneck it leaves must have more than one pixel (InstanceNorm
    normalises over the pixels: one pixel fails while training).
    """
    pools = 0
    while height >= 2 and width >= 2 and (height // 2) * (width // 2) > 1:
        height, width, pools = height // 2, width // 2, pools + 1
    return pools


def _unet_input_size(path: Path, challenge: str) -> Tuple[int, int]:
    """The ``(H, W)`` of the images ``UnetDataTransform`` makes from a file.

    The crop is the target's shape, or the header's reconSpace without a
    target, shrunk to a square of the k-space height when that is smaller
    (fastMRI's check for FLAIR 203).
    """
    import h5py

    with h5py.File(path, "r") as hf:
        kshape = hf["kspace"].shape
        key = fastmri_format.TARGET_KEYS.get(challenge)
        if key in hf:
            crop = tuple(int(n) for n in hf[key].shape[-2:])
        else:
            crop = fastmri_format.read_recon_space(hf["ismrmrd_header"][()])
    if kshape[-2] < crop[1]:
        crop = (kshape[-2], kshape[-2])
    return int(crop[0]), int(crop[1])


def _varnet_input_size(path: Path) -> Tuple[int, int]:
    """The ``(H, W)`` a VarNet's U-Nets see: the k-space grid padded to multiples of 16 (NormUnet)."""
    import h5py

    with h5py.File(path, "r") as hf:
        h, w = hf["kspace"].shape[-2:]
    return ((int(h) - 1) | 15) + 1, ((int(w) - 1) | 15) + 1


def check_network_fits_data(args: argparse.Namespace) -> None:
    """The pooling depth against the image size of the first file of each split read.

    Training checks the flags' depth on the train and val folders; test mode
    the tested checkpoint's depth on the test folder. A U-Net too deep for
    its images fails inside the first training step (with a traceback about
    InstanceNorm or pooling), after the run folder was written.

    Raises:
        UsageError: naming the file, its image size, and the deepest setting that fits.
    """
    folders = data_folders(args)
    splits = ("train", "val") if args.mode == "train" else ("test",)
    if args.mode == "train":
        depth = {k: getattr(args, k, None) for k in (
            ("pools", "sens_pools") if _kspace(args.model_type) else ("num_pool_layers",))}
    else:
        try:
            stored = stored_architecture(read_checkpoint(args.ckpt_path))
        except UsageError:
            return
        names = ("pools", "sens_pools") if _kspace(args.model_type) else ("num_pool_layers",)
        depth = {k: stored.get(k) for k in names}
    for split in splits:
        folder = folders.get(split)
        if folder is None or not folder.is_dir():
            continue
        files = sorted(p for p in folder.iterdir() if p.suffix == ".h5" and p.is_file())
        if not files:
            continue
        try:
            size = (_varnet_input_size(files[0]) if _kspace(args.model_type)
                    else _unet_input_size(files[0], args.challenge))
        except (OSError, KeyError, ValueError):
            continue  # check_data reports unreadable files
        fits = max_pool_layers(*size)
        for name, pools in depth.items():
            if isinstance(pools, int) and pools > fits:
                what = "images" if not _kspace(args.model_type) else \
                    "k-space grids (padded to multiples of 16)"
                fix = (f"pass --{name} {fits} or less" if args.mode == "train" else
                       "test it on data of the size it was trained on")
                raise UsageError(
                    f"{'--' + name if args.mode == 'train' else 'the checkpoint has ' + name} "
                    f"{pools} is too deep for the {size[0]}x{size[1]} {what} of {files[0]}: "
                    f"after {fits} poolings the bottleneck is "
                    f"{_side(size[0], fits)}x{_side(size[1], fits)} pixels and one more "
                    f"pooling leaves at most one pixel; {fix}")


def _side(n: int, pools: int) -> int:
    for _ in range(pools):
        n //= 2
    return n
