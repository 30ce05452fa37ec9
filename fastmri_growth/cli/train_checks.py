"""Checks of the training command's arguments: everything here runs before any file is written.

:func:`validate_args` resolves the default paths (``fastmri_dirs.yaml`` as
fastMRI's demo reads it), checks the mask and sample-rate flags, growth
flags the chosen schedule, method or prune schedule would ignore, the data
folders, the run folder (writable), the checkpoint to resume or test (the
newest usable one by default), the ``--init-from`` weights, and the
pooling depth against the data's image size, and raises
:class:`~fastmri_growth.cli.common.UsageError` with a message naming the
fix. It reads files and writes none. :func:`check_free_space` and
:func:`never_grows_reason` need the built module; the training command
calls them before anything is written.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from fastmri_growth.cli.checkpoints import (
    best_checkpoint_path,
    checkpoint_problem,
    newest_usable_checkpoint,
    next_epoch,
    read_checkpoint,
    read_init_weights,
    stored_model_type,
)
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


# ---------------------------------------------------------------------------
# the checkpoint to resume or to test
# ---------------------------------------------------------------------------

#: ``--ckpt`` words: the last epoch's checkpoint or the best one by validation_loss.
CKPT_CHOICES = ("last", "best")


def _test_checkpoint(args: argparse.Namespace, checkpoint_dir: Path) -> Optional[Path]:
    """The file that ``--ckpt`` names in test mode (None: not given, or nothing found).

    Raises:
        UsageError: ``--ckpt last`` or ``best`` with no such file in the run folder.
    """
    choice = getattr(args, "ckpt", None)
    if choice is None:
        return None
    if choice == "last":
        path = checkpoint_dir / "last.ckpt"
        if not path.is_file():
            raise UsageError(f"--ckpt last: {checkpoint_dir} holds no last.ckpt; train first "
                             "with the same --default_root_dir, or pass --ckpt PATH")
        return path
    if choice == "best":
        path = best_checkpoint_path(checkpoint_dir)
        if path is None:
            raise UsageError(
                f"--ckpt best: no best checkpoint (epoch=*.ckpt by validation_loss) in "
                f"{checkpoint_dir}; pass --ckpt last or --ckpt PATH")
        return path
    path = Path(choice)
    if not path.is_file():
        raise UsageError(f"--ckpt {choice} is not a file; pass last, best or an existing "
                         ".ckpt file")
    return path


def _check_ckpt_flags(args: argparse.Namespace) -> None:
    if getattr(args, "ckpt", None) is None:
        return
    if args.mode != "test":
        raise UsageError(f"--ckpt {args.ckpt} selects the weights of --mode test; to resume "
                         "training from a file pass --ckpt_path FILE")
    if args.ckpt_path is not None:
        raise UsageError(f"--ckpt {args.ckpt} and --ckpt_path {args.ckpt_path} both name the "
                         "weights to test; pass only one of them")


def resolve_checkpoint(args: argparse.Namespace) -> Optional[Path]:
    """The checkpoint to resume from (train) or to test (test mode).

    Without ``--ckpt_path`` (or ``--ckpt`` in test mode) the newest usable
    checkpoint of ``DEFAULT_ROOT_DIR/checkpoints``: broken ones (truncated,
    unreadable, NaN weights) are skipped and listed in
    ``args.checkpoint_notes``. Also sets ``args.resume_epoch`` (the epoch a
    resumed run starts with; 0 from scratch) and ``args.resumed_events``
    (growth events the checkpoint has done).

    Raises:
        UsageError: ``--ckpt_path`` does not exist or is broken, test mode
            finds no checkpoint, the checkpoint holds the other model type, or
            (training) it was built with other architecture flags.
    """
    _check_ckpt_flags(args)
    checkpoint_dir = args.default_root_dir / "checkpoints"
    args.checkpoint_notes = getattr(args, "checkpoint_notes", [])
    args.resume_epoch, args.resumed_events = 0, 0
    explicit = Path(args.ckpt_path) if args.ckpt_path is not None else _test_checkpoint(
        args, checkpoint_dir)
    loaded = None
    if explicit is not None:
        flag = "--ckpt_path" if args.ckpt_path is not None else "--ckpt"
        if not explicit.is_file():
            raise UsageError(f"{flag} {explicit} is not a file; pass an existing .ckpt file")
        ckpt = explicit
        loaded = read_checkpoint(ckpt)
        problem = checkpoint_problem(loaded)
        if problem is not None:
            raise UsageError(f"checkpoint {ckpt} cannot be used: {problem}; pass another "
                             f"{flag}")
    else:
        found = newest_usable_checkpoint(checkpoint_dir)
        note = found.skipped_note()
        if note:
            args.checkpoint_notes.append(note)
        ckpt, loaded = found.path, found.loaded
    if ckpt is None:
        if args.mode == "test":
            what = "no .ckpt file" if not args.checkpoint_notes else "no usable .ckpt file"
            raise UsageError(
                f"--mode test needs trained weights but {checkpoint_dir} holds {what}; "
                "train first with the same --default_root_dir, or pass --ckpt_path FILE"
            )
        return None
    stored = stored_model_type(loaded)
    explicit_type = getattr(args, "model_type_given", True)
    if args.mode == "test" and stored is not None and not explicit_type:
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
        args.resume_epoch = next_epoch(loaded)
        growth_state = ((loaded.get("callbacks") or {}).get("GrowthCallback") or {})
        args.resumed_events = len((growth_state.get("schedule") or {}).get("grown_epochs", []))
    return ckpt


def adopt_checkpoint_model_type(args: argparse.Namespace) -> None:
    """Test mode without ``--model-type``: take the model type of the checkpoint to test.

    The checkpoint is the one :func:`resolve_checkpoint` will pick
    (``--ckpt_path`` or ``--ckpt``, else the newest usable one in the run
    folder). Its model type's data defaults (``--challenge multicoil`` for a
    VarNet) replace those of the default model type for the flags not given.
    Problems with the checkpoint are left to :func:`resolve_checkpoint`,
    which reports them.
    """
    if args.mode != "test" or getattr(args, "model_type_given", True):
        return
    checkpoint_dir = args.default_root_dir / "checkpoints"
    try:
        _check_ckpt_flags(args)
        ckpt = Path(args.ckpt_path) if args.ckpt_path is not None else _test_checkpoint(
            args, checkpoint_dir)
        loaded = read_checkpoint(ckpt) if ckpt is not None and ckpt.is_file() else None
    except UsageError:
        return
    if ckpt is None:
        loaded = newest_usable_checkpoint(checkpoint_dir).loaded
    stored = stored_model_type(loaded) if loaded is not None else None
    if stored is None or stored == args.model_type:
        return
    given = getattr(args, "given_flags", set())
    for name, value in model_type_data_defaults(stored).items():
        if name not in given:
            setattr(args, name, value)
    args.model_type = stored


def check_resume_not_finished(args: argparse.Namespace) -> None:
    """Note a resumed run that has nothing left to train (``args.nothing_to_train``).

    Running the same command again after a run completed is not an error
    (automatic resume makes that the way to continue after a kill); it
    trains nothing, so nothing is written either.
    """
    args.nothing_to_train = None
    max_epochs = args.max_epochs
    if args.mode != "train" or args.ckpt_path is None or max_epochs is None or max_epochs < 0:
        return
    if args.resume_epoch >= max_epochs:
        args.nothing_to_train = (
            f"note: checkpoint {args.ckpt_path} has finished epoch {args.resume_epoch - 1} and "
            f"--max_epochs is {max_epochs}: nothing to train; pass a larger --max_epochs to "
            "continue this run"
        )


# ---------------------------------------------------------------------------
# --init-from
# ---------------------------------------------------------------------------


def check_init_from(args: argparse.Namespace) -> None:
    """Read the ``--init-from`` weights and take their architecture.

    The architecture flags (``--chans``, ``--num_pool_layers``, ... or the
    VarNet's) follow the file unless given; given ones must match it. Sets
    ``args.init_weights`` (None without ``--init-from`` or when resuming:
    a run folder with a checkpoint resumes it, so re-running the same
    command after a kill continues the run instead of starting over).

    Raises:
        UsageError: test mode, an unreadable file, no matching network, or
            given architecture flags that differ from the file's.
    """
    path = getattr(args, "init_from", None)
    args.init_weights = None
    if path is None:
        return
    if args.mode != "train":
        raise UsageError(f"--init-from {path} sets the starting weights of training; "
                         "in test mode pass --ckpt_path FILE")
    if args.ckpt_path is not None:
        args.checkpoint_notes.append(
            f"note: resuming {args.ckpt_path}; --init-from {path} only sets the weights of a "
            "fresh start")
        return
    init = read_init_weights(Path(path), args.model_type)
    given = getattr(args, "given_flags", set())
    diff = [k for k, v in init.architecture.items()
            if k in given and hasattr(args, k) and getattr(args, k) != v]
    if diff:
        has = ", ".join(f"{k}={init.architecture[k]}" for k in diff)
        got = ", ".join(f"--{k} is {getattr(args, k)}" for k in diff)
        raise UsageError(f"--init-from {path} holds a network with {has} but {got}; drop "
                         f"{' '.join('--' + k for k in diff)} (read from the file) or pass "
                         "matching values")
    for k, v in init.architecture.items():
        if hasattr(args, k):
            setattr(args, k, v)
    args.init_weights = init


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
            ("pools", "sens_pools") if args.model_type in KSPACE_MODEL_TYPES
            else ("num_pool_layers",))}
    else:
        try:
            stored = stored_architecture(read_checkpoint(args.ckpt_path))
        except UsageError:
            return
        names = ("pools", "sens_pools") if args.model_type in KSPACE_MODEL_TYPES else (
            "num_pool_layers",)
        depth = {k: stored.get(k) for k in names}
    for split in splits:
        folder = folders.get(split)
        if folder is None or not folder.is_dir():
            continue
        files = sorted(p for p in folder.iterdir() if p.suffix == ".h5" and p.is_file())
        if not files:
            continue
        try:
            size = (_varnet_input_size(files[0]) if args.model_type in KSPACE_MODEL_TYPES
                    else _unet_input_size(files[0], args.challenge))
        except (OSError, KeyError, ValueError):
            continue  # check_data reports unreadable files
        fits = max_pool_layers(*size)
        for name, pools in depth.items():
            if isinstance(pools, int) and pools > fits:
                what = "images" if args.model_type not in KSPACE_MODEL_TYPES else \
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


# ---------------------------------------------------------------------------
# the run folder
# ---------------------------------------------------------------------------


def _nearest_existing(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _unwritable_reason(folder: Path) -> Optional[str]:
    """Why files cannot be created in an existing folder (None: they can)."""
    if not folder.is_dir():
        return "is a file, not a folder"
    try:
        if os.statvfs(folder).f_flag & os.ST_RDONLY:
            return "is on a read-only file system"
    except OSError:
        pass
    if not os.access(folder, os.W_OK | os.X_OK):
        return "is not writable (permission denied)"
    return None


def check_writable_folder(path: Path, flag: str, fix: str) -> None:
    """Refuse a folder the run could not create or write into.

    Args:
        path: The folder (it may not exist yet: its nearest existing parent
            is checked then).
        flag: How to name it (``--default_root_dir X``).
        fix: What to do instead.

    Raises:
        UsageError: a component of the path is a file, or the folder (or its
            nearest existing parent) is read-only.
    """
    existing = _nearest_existing(path)
    reason = _unwritable_reason(existing)
    if reason is not None:
        where = "" if existing == Path(os.path.abspath(path)) else f": {existing}"
        raise UsageError(f"{flag}{where} {reason}; {fix}")


def check_root_dir(args: argparse.Namespace) -> None:
    """The run folder, the sub-folders the run writes, and the dataset cache can be written.

    Raises:
        UsageError: naming the folder and why not (a file in the path, a
            read-only file system, no permission).
    """
    root = Path(args.default_root_dir)
    fix = "pass a writable --default_root_dir"
    check_writable_folder(root, f"--default_root_dir {root}", fix)
    subs = ["lightning_logs", "csv_logs"] + (
        ["checkpoints"] if args.mode == "train" else ["reconstructions"])
    for sub in subs:
        if (root / sub).exists():
            reason = _unwritable_reason(root / sub)
            if reason is not None:
                raise UsageError(f"{root / sub} {reason}; {fix}")
    if args.use_dataset_cache_file:
        from fastmri_growth.cli.dataset_cache import DATASET_CACHE_FILE

        cache = Path(os.path.abspath(DATASET_CACHE_FILE))
        reason = _unwritable_reason(cache.parent)
        if reason is not None:
            raise UsageError(
                f"the dataset cache {cache} cannot be written: {cache.parent} {reason}; run from "
                "a writable folder or pass --use_dataset_cache_file false")


def free_bytes(path: Path) -> int:
    """Bytes available to this user on the file system of ``path`` (or its nearest parent)."""
    st = os.statvfs(_nearest_existing(path))
    return int(st.f_bavail) * int(st.f_frsize)


def checkpoint_bytes(num_parameters: int) -> int:
    """A generous size estimate of one checkpoint of a network of that many parameters.

    float32 weights and up to two optimizer states (Adam; RMSprop keeps
    one), plus the loops', callbacks' and random states.
    """
    return 12 * int(num_parameters) + 256 * 1024


def check_free_space(args: argparse.Namespace, num_parameters: int) -> None:
    """Room for the run's first checkpoint in the run folder.

    Two checkpoints' worth: the new file is written beside the one it
    replaces and renamed over it.

    Raises:
        UsageError: the file system holds less.
    """
    if args.mode != "train":
        return
    need = 2 * checkpoint_bytes(num_parameters)
    root = Path(args.default_root_dir)
    free = free_bytes(root)
    if free < need:
        raise UsageError(
            f"--default_root_dir {root}: {_mib(free)} free on its file system, but a "
            f"checkpoint of this {num_parameters:,}-parameter network needs about "
            f"{_mib(need)} there; free space or pass another --default_root_dir")


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


# ---------------------------------------------------------------------------
# growth flags and their combinations
# ---------------------------------------------------------------------------


def check_growth_schedule(args: argparse.Namespace) -> None:
    """Growth epochs that the run's ``--max_epochs`` would never reach."""
    if args.mode != "train":
        return
    kind = getattr(args, "growth_schedule", None)
    max_epochs = args.max_epochs
    if max_epochs is None or max_epochs < 0:
        return
    if kind == "budget":
        end = getattr(args, "growth_end_epoch", None)
        if end is not None and end >= max_epochs:
            raise UsageError(
                f"--growth-end-epoch {end} is not before --max_epochs {max_epochs} (epochs "
                f"count from 0): the last growth event would never run; pass "
                f"--growth-end-epoch {max_epochs - 1} or less"
            )
    if kind == "progressive":
        late = [e for e in progressive_epochs(getattr(args, "progressive_schedule", None))
                if e >= max_epochs]
        if late:
            raise UsageError(
                f"--progressive-schedule grows at epoch {late[0]}, which --max_epochs "
                f"{max_epochs} never reaches (epochs count from 0); pass --max_epochs "
                f"{max(late) + 1} or drop that epoch from the schedule")


def progressive_epochs(spec: Any) -> List[int]:
    """The epochs of a ``--progressive-schedule`` string (malformed parts are skipped).

    The module parses the schedule in full and reports malformed parts.
    """
    if not isinstance(spec, str):
        return []
    out = []
    for part in spec.split(";"):
        epoch, sep, _ = part.strip().partition(":")
        try:
            out.append(int(epoch))
        except ValueError:
            continue
    return out


#: Growth flags that belong to some schedules only (a flag given with another
#: schedule would be ignored without a word).
SCHEDULE_FLAGS = {
    "growth_interval": ("interval", "budget"),
    "growth_start_epoch": ("interval", "plateau", "budget"),
    "plateau_patience": ("plateau",),
    "plateau_min_delta": ("plateau",),
    "progressive_schedule": ("progressive",),
    "layers_to_grow": ("interval", "plateau", "budget"),
    "n_new": ("interval", "plateau", "progressive"),
}
#: Prune flags that belong to some prune schedules only (None: any prune schedule).
PRUNE_FLAGS = {
    "prune_interval": ("interval",),
    "prune_start_epoch": ("interval",),
    "prune_epochs": ("epochs",),
    # exchange removes as many filters as each growth event adds
    "prune_n": ("interval", "epochs"),
    "prune_fraction": ("interval", "epochs"),
    "prune_criterion": None,
    "prune_sites": None,
    "min_width": None,
}
#: Prune flags whose use without a prune schedule the module reports itself.
PRUNE_FLAGS_MODULE_CHECKS = ("prune_n", "prune_fraction", "prune_epochs", "prune_sites")


def _spell(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_growth_flags(args: argparse.Namespace) -> None:
    """Growth flags that the chosen schedule, prune schedule or method would ignore.

    Only flags given on the command line count (``args.given_flags``).

    Raises:
        UsageError: naming the flag, what it applies to, and the fix.
    """
    if args.model_type not in GROWING_MODEL_TYPES or args.mode != "train":
        return
    given = getattr(args, "given_flags", set())
    kind = args.growth_schedule
    for name, kinds in SCHEDULE_FLAGS.items():
        if name in given and kind not in kinds:
            if name == "layers_to_grow" and kind == "progressive":
                raise UsageError(
                    "--layers-to-grow does not apply to --growth-schedule progressive, whose "
                    "--progressive-schedule names the sites of each epoch "
                    "('EPOCH:LAYER[:CONV],...;...'); drop --layers-to-grow")
            applies = " or ".join(kinds)
            raise UsageError(
                f"{_spell(name)} applies to --growth-schedule {applies}, not {kind}; pass "
                f"--growth-schedule {kinds[0]} or drop {_spell(name)}")
    from fastmri_growth.growth.methods import METHODS, all_options

    method = args.growth_method
    mine = {o.name for o in METHODS[method].options} if method in METHODS else set()
    for name in all_options():
        if name in given and name not in mine:
            takers = [m for m, cls in METHODS.items() if name in {o.name for o in cls.options}]
            raise UsageError(
                f"{_spell(name)} is an option of --growth-method {' or '.join(takers)}, not "
                f"{method}; drop it or pass --growth-method {takers[0]}")
    prune = getattr(args, "prune_schedule", None)
    for name, kinds in PRUNE_FLAGS.items():
        if name not in given:
            continue
        if prune is None:
            if name in PRUNE_FLAGS_MODULE_CHECKS:
                continue
            raise UsageError(f"{_spell(name)} needs a --prune-schedule (interval, epochs or "
                             "exchange); pass one or drop the flag")
        if kinds is not None and prune not in kinds:
            raise UsageError(f"{_spell(name)} applies to --prune-schedule {' or '.join(kinds)}, "
                             f"not {prune}; drop it")


def never_grows_reason(args: argparse.Namespace, module: Any) -> Optional[str]:
    """Why a growing run, as configured, will never grow (None when it may).

    Checked on the built module (its schedule and start widths) from the
    epoch the run starts with to ``--max_epochs``.
    """
    if args.mode != "train" or args.model_type not in GROWING_MODEL_TYPES:
        return None
    callback = getattr(module, "growth_callback", None)
    if callback is None:
        return None
    from fastmri_growth.growth.schedule import width_of

    schedule = callback.schedule
    first = getattr(args, "resume_epoch", 0) or 0
    max_epochs = args.max_epochs if args.max_epochs is not None and args.max_epochs >= 0 \
        else None
    done = getattr(args, "resumed_events", 0) or 0
    if schedule.max_events is not None and done >= schedule.max_events:
        return (f"--max-growth-steps is {schedule.max_events}"
                + (f" and the checkpoint has done {done} growth event(s)" if done else ""))
    sites = list(schedule.sites) if schedule.kind != "progressive" else [
        s for group in schedule.progressive.values() for s in group]
    if callback.max_width is not None and sites:
        size = module.growable_net().get_network_size()
        widths = {s.key: width_of(size, s) for s in sites}
        if all(w >= callback.max_width for w in widths.values()):
            narrowest = min(widths, key=widths.get)
            return (f"--max-width {callback.max_width} is not above the width of any site to "
                    f"grow (the narrowest, {narrowest}, has {widths[narrowest]} filters)")
    if max_epochs is None:
        return None
    epochs = range(first, max_epochs)
    if schedule.kind == "interval":
        due = [e for e in epochs if e >= schedule.start_epoch
               and (e - schedule.start_epoch) % schedule.interval == 0]
        what = (f"--growth-start-epoch {schedule.start_epoch}, --growth-interval "
                f"{schedule.interval}")
    elif schedule.kind == "budget":
        due = [e for e in schedule.budget_epochs() if e in epochs]
        what = f"budget events at epochs {schedule.budget_epochs()}"
    elif schedule.kind == "progressive":
        due = [e for e in schedule.progressive if e in epochs]
        what = f"progressive epochs {sorted(schedule.progressive)}"
    else:  # plateau: depends on the losses; only its start can rule it out
        due = [e for e in epochs if e >= schedule.start_epoch]
        what = f"--growth-start-epoch {schedule.start_epoch}"
    if due:
        return None
    start = f"from epoch {first} " if first else ""
    return (f"no growth epoch {start}before --max_epochs {max_epochs} ({what}; epochs count "
            "from 0)")


def validate_args(args: argparse.Namespace) -> None:
    """Check the parsed arguments; fill path and checkpoint defaults.

    Sets ``args.data_path``, ``args.default_root_dir``, ``args.ckpt_path``
    (None when training starts from scratch), ``args.init_weights``,
    ``args.checkpoint_notes`` and ``args.nothing_to_train``. Reads files,
    writes none.

    Raises:
        UsageError: on the first problem, with a message naming the fix.
    """
    resolve_paths(args)
    check_mask_args(args)
    check_sample_rates(args)
    adopt_checkpoint_model_type(args)
    check_model_challenge(args)
    check_growth_schedule(args)
    check_growth_flags(args)
    check_data(args)
    check_root_dir(args)
    args.ckpt_path = resolve_checkpoint(args)
    check_init_from(args)
    check_network_fits_data(args)
    check_resume_not_finished(args)
