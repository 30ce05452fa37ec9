"""Checks of the training command's arguments: everything here runs before any file is written.

:func:`validate_args` resolves the default paths (``fastmri_dirs.yaml`` as
fastMRI's demo reads it), checks the mask and sample-rate flags, the data
folders, and the checkpoint to resume or test, and raises
:class:`~fastmri_growth.cli.common.UsageError` with a message naming the
fix. It reads files and writes none.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from fastmri_growth.cli.checkpoints import newest_checkpoint, read_checkpoint, stored_model_type
from fastmri_growth.cli.common import UsageError
from fastmri_growth.data import fastmri_format
from fastmri_growth.data.fastmri_format import DIRS_CONFIG, VARNET_DEMO_MASK_TYPE, synth_hint

# ---------------------------------------------------------------------------
# the model types behind --model-type
# ---------------------------------------------------------------------------

#: ``--model-type`` values: fastMRI's U-Net and VarNet, and their growing versions.
MODEL_TYPES = ("unet", "dynamic_unet", "varnet", "dynamic_varnet")
#: Each fixed model type and the growing one that takes the growth flags.
GROWING_VERSION = {"unet": "dynamic_unet", "varnet": "dynamic_varnet"}
#: The model types that grow (the growth flags exist only for them).
GROWING_MODEL_TYPES = tuple(GROWING_VERSION.values())
#: The model types that reconstruct from multicoil k-space (VarNetDataTransform).
KSPACE_MODEL_TYPES = ("varnet", "dynamic_varnet")

#: Defaults that a model type's demo sets over the flags' own: fastMRI's
#: ``train_varnet_demo.py`` trains 8 cascades with Adam at lr 1e-3 on
#: multicoil data under equispaced masks (its module's constructor says 12
#: cascades and 3e-4). The U-Net types keep the flags' defaults, which are
#: ``train_unet_demo.py``'s.
_VARNET_DEMO = dict(
    challenge="multicoil", mask_type=VARNET_DEMO_MASK_TYPE,
    num_cascades=8, pools=4, chans=18, sens_pools=4, sens_chans=8,
    lr=0.001, lr_step_size=40, lr_gamma=0.1, weight_decay=0.0,
)
DEMO_DEFAULTS: Dict[str, Dict[str, Any]] = {
    "unet": {}, "dynamic_unet": {}, "varnet": _VARNET_DEMO, "dynamic_varnet": _VARNET_DEMO,
}
#: The data flags whose defaults depend on the model type, with the flags' own defaults.
DATA_FLAG_DEFAULTS = {"challenge": "singlecoil", "mask_type": "random"}


def model_type_data_defaults(model_type: str) -> Dict[str, Any]:
    """``challenge`` and ``mask_type`` defaults of a model type (see :data:`DEMO_DEFAULTS`)."""
    return {k: DEMO_DEFAULTS[model_type].get(k, v) for k, v in DATA_FLAG_DEFAULTS.items()}


def check_model_challenge(args: argparse.Namespace) -> None:
    """The VarNets reconstruct multicoil k-space only.

    Raises:
        UsageError: a k-space model type with ``--challenge singlecoil``.
    """
    if args.model_type in KSPACE_MODEL_TYPES and args.challenge != "multicoil":
        raise UsageError(
            f"--model-type {args.model_type} needs multicoil data, got --challenge "
            f"{args.challenge}; pass --challenge multicoil (the VarNet estimates coil "
            "sensitivities), or use --model-type unet or dynamic_unet for single-coil data"
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
        raise UsageError(
            f"data path {args.data_path} (from {args.data_path_source}) does not exist; "
            f"pass --data_path DIR; {synth_hint(args.challenge)}"
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


#: Per model type, the constructor arguments that fix the architecture at the
#: start of training (a growing network widens its convs later, from these).
ARCHITECTURE_ARGS = ("in_chans", "out_chans", "chans", "num_pool_layers")
VARNET_ARCHITECTURE_ARGS = ("num_cascades", "pools", "chans", "sens_pools", "sens_chans")


def architecture_args(model_type: Optional[str]) -> Tuple[str, ...]:
    """:data:`ARCHITECTURE_ARGS` for the U-Nets, :data:`VARNET_ARCHITECTURE_ARGS` for the VarNets."""
    return VARNET_ARCHITECTURE_ARGS if model_type in KSPACE_MODEL_TYPES else ARCHITECTURE_ARGS


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
    model_type = stored_model_type(ckpt)
    names = architecture_args(model_type)
    hparams = ckpt.get("hyper_parameters") or {}
    found = {k: int(hparams[k]) for k in names if isinstance(hparams.get(k), int)}
    if len(found) < len(names):
        state = ckpt.get("state_dict") or {}
        read = _varnet_shapes if model_type in KSPACE_MODEL_TYPES else _unet_shapes
        for key, value in read(state, model_type).items():
            found.setdefault(key, value)
    return found


def _unet_shapes(state: Dict[str, Any], model_type: Optional[str]) -> Dict[str, int]:
    from fastmri_growth.models import architecture_from_state_dict

    try:
        arch = architecture_from_state_dict(
            {k: v for k, v in state.items() if str(k).startswith("unet.")})
    except (ValueError, KeyError, TypeError, IndexError):
        return {}
    found = {key: int(arch[key]) for key in ("in_chans", "out_chans", "num_pool_layers")}
    first = state.get("unet.down_sample_layers.0.layers.0.weight")
    if model_type == "unet" and first is not None:
        found["chans"] = int(first.shape[0])
    return found


def _varnet_shapes(state: Dict[str, Any], model_type: Optional[str]) -> Dict[str, int]:
    from fastmri_growth.models import varnet_architecture_from_state_dict

    try:
        arch = varnet_architecture_from_state_dict(state)
    except (ValueError, KeyError, TypeError, IndexError):
        return {}
    found = {key: int(arch[key]) for key in ("num_cascades", "pools", "sens_pools")}
    if model_type == "varnet":
        found.update(chans=int(arch["chans"]), sens_chans=int(arch["sens_chans"]))
    return found


def check_architecture(args: argparse.Namespace, ckpt_path: Path, ckpt: Any) -> None:
    """Refuse to resume a checkpoint built with other architecture flags.

    Lightning would fail inside ``fit`` (a size mismatch while loading the
    state dict) with a traceback; this names the flags to pass instead.

    Raises:
        UsageError: a flag of :func:`architecture_args` differs from the checkpoint.
    """
    stored = stored_architecture(ckpt)
    diff = [k for k in architecture_args(args.model_type)
            if k in stored and getattr(args, k, stored[k]) != stored[k]]
    if diff:
        has = ", ".join(f"{k}={stored[k]}" for k in diff)
        given = ", ".join(f"--{k} is {getattr(args, k)}" for k in diff)
        fix = " ".join(f"--{k} {stored[k]}" for k in diff)
        raise UsageError(
            f"checkpoint {ckpt_path} has {has} but {given}; pass {fix} to resume it, "
            "or a new --default_root_dir"
        )


def resolve_checkpoint(args: argparse.Namespace) -> Optional[Path]:
    """The checkpoint to resume from (train) or to test (test mode).

    Raises:
        UsageError: ``--ckpt_path`` does not exist, test mode finds no
            checkpoint, the checkpoint holds the other model type, or
            (training) it was built with other architecture flags.
    """
    checkpoint_dir = args.default_root_dir / "checkpoints"
    if args.ckpt_path is not None:
        ckpt = Path(args.ckpt_path)
        if not ckpt.is_file():
            raise UsageError(f"--ckpt_path {ckpt} is not a file; pass an existing .ckpt file")
    else:
        ckpt = newest_checkpoint(checkpoint_dir)
    if ckpt is None:
        if args.mode == "test":
            raise UsageError(
                f"--mode test needs trained weights but {checkpoint_dir} holds no .ckpt file; "
                "train first with the same --default_root_dir, or pass --ckpt_path FILE"
            )
        return None
    loaded = read_checkpoint(ckpt)
    stored = stored_model_type(loaded)
    explicit = getattr(args, "model_type_given", True)
    if args.mode == "test" and stored is not None and not explicit:
        # Without --model-type, test mode rebuilds whatever the checkpoint holds.
        args.model_type = stored
    elif stored is not None and stored != args.model_type:
        action = "resume" if args.mode == "train" else "test"
        raise UsageError(
            f"checkpoint {ckpt} holds a {stored} model but --model-type is {args.model_type}; "
            f"pass --model-type {stored} to {action} it"
            + (", or a new --default_root_dir" if args.mode == "train" else "")
        )
    if args.mode == "train":
        check_architecture(args, ckpt, loaded)
    return ckpt


def check_growth_schedule(args: argparse.Namespace) -> None:
    """Growth epochs that the run's ``--max_epochs`` would never reach."""
    if getattr(args, "growth_schedule", None) != "budget" or args.mode != "train":
        return
    end, max_epochs = getattr(args, "growth_end_epoch", None), args.max_epochs
    if end is not None and max_epochs is not None and max_epochs >= 0 and end >= max_epochs:
        raise UsageError(
            f"--growth-end-epoch {end} is not before --max_epochs {max_epochs} (epochs count "
            f"from 0): the last growth event would never run; pass --growth-end-epoch "
            f"{max_epochs - 1} or less"
        )


def adopt_checkpoint_model_type(args: argparse.Namespace) -> None:
    """Test mode without ``--model-type``: take the model type of the checkpoint to test.

    The checkpoint is the one :func:`resolve_checkpoint` will pick
    (``--ckpt_path``, else the newest in the run folder). Its model type's
    data defaults (``--challenge multicoil`` for a VarNet) replace those of
    the default model type for the flags not given. Problems with the
    checkpoint are left to :func:`resolve_checkpoint`, which reports them.
    """
    if args.mode != "test" or getattr(args, "model_type_given", True):
        return
    ckpt = Path(args.ckpt_path) if args.ckpt_path is not None else \
        newest_checkpoint(args.default_root_dir / "checkpoints")
    if ckpt is None or not ckpt.is_file():
        return
    try:
        stored = stored_model_type(read_checkpoint(ckpt))
    except UsageError:
        return
    if stored is None or stored == args.model_type:
        return
    given = getattr(args, "given_flags", set())
    for name, value in model_type_data_defaults(stored).items():
        if name not in given:
            setattr(args, name, value)
    args.model_type = stored


def validate_args(args: argparse.Namespace) -> None:
    """Check the parsed arguments; fill path and checkpoint defaults.

    Sets ``args.data_path``, ``args.default_root_dir`` and ``args.ckpt_path``
    (None when training starts from scratch). Reads files, writes none.

    Raises:
        UsageError: on the first problem, with a message naming the fix.
    """
    resolve_paths(args)
    check_mask_args(args)
    check_sample_rates(args)
    adopt_checkpoint_model_type(args)
    check_model_challenge(args)
    check_growth_schedule(args)
    check_data(args)
    args.ckpt_path = resolve_checkpoint(args)
