"""Train or test a (growing) U-Net on fastMRI data with pytorch-lightning 2.

The command line of fastMRI's ``fastmri_examples/unet/train_unet_demo.py``
(its flags, its defaults where they still apply: seed 42, 50 epochs,
deterministic; its run layout), ported to Lightning 2 (explicit Trainer
flags: ``--accelerator``, ``--devices``, ``--strategy``, ... default to
Lightning's ``auto``) and extended with ``--model-type {unet,dynamic_unet}``
and the growth flags of
:class:`fastmri_growth.pl_modules.DynamicUnetModule`::

    fastmri-growth-train --data_path DATA/knee --challenge singlecoil \\
        --mask_type random --center_fractions 0.08 --accelerations 4 \\
        --chans 8 --growth-method sample_select --max_epochs 20 \\
        --default_root_dir runs/grow
    fastmri-growth-train --mode test --data_path DATA/knee \\
        --default_root_dir runs/grow

Run layout under ``--default_root_dir``:

- ``checkpoints/``: the best checkpoint by ``validation_loss`` and
  ``last.ckpt``. Training resumes from the newest one automatically; test
  mode loads it (or ``--ckpt_path``).
- ``lightning_logs/version_N/``: TensorBoard logs.
- ``csv_logs/version_N/metrics.csv``: the same metrics as CSV.
- ``reconstructions/*.h5``: test-mode reconstructions in the leaderboard
  format (one file per volume, dataset ``reconstruction``).

Bad input (missing or malformed data, inconsistent mask flags, no checkpoint
to test, unknown growth layers, ...) is reported before anything is built or
written: one line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Type

PROG = "fastmri-growth-train"
MODEL_TYPES = ("unet", "dynamic_unet")
DEFAULT_MODEL_TYPE = "dynamic_unet"
# Every mask type that fastmri.data.subsample.create_mask_for_mask_type builds.
MASK_TYPES = ("random", "equispaced", "equispaced_fraction", "magic", "magic_fraction")
CHALLENGE_TARGET_KEY = {"singlecoil": "reconstruction_esc", "multicoil": "reconstruction_rss"}
# k-space rank per challenge: (slices, H, W) or (slices, coils, H, W).
CHALLENGE_KSPACE_NDIM = {"singlecoil": 3, "multicoil": 4}
DIRS_CONFIG = "fastmri_dirs.yaml"
# fastMRI's SliceDataset cache: relative, so it lives in the working directory.
DATASET_CACHE_FILE = Path("dataset_cache.pkl")
SYNTH_HINT = (
    "for a small synthetic set run `fastmri-growth-synth --out DIR` "
    "and pass --data_path DIR/knee"
)


def synth_hint(challenge: str = "singlecoil") -> str:
    """How to make synthetic data for ``--challenge challenge``."""
    if challenge == "multicoil":
        return (
            "for a small synthetic set run `fastmri-growth-synth --out DIR --challenges "
            "knee_multicoil` and pass --data_path DIR/knee"
        )
    return SYNTH_HINT


class UsageError(Exception):
    """Bad command-line input; :func:`main` prints it as one line and exits 2."""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except ``None`` (those flags explain their fallback)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None:
            return action.help or ""
        return super()._get_help_string(action)


class _OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr (exit status 2)."""

    def error(self, message: str) -> None:  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# ---------------------------------------------------------------------------
# argument types
# ---------------------------------------------------------------------------


def str2bool(value) -> bool:
    """Parse a command-line boolean (the Lightning-2 bridge's parser)."""
    from fastmri_growth.pl_modules.lightning2 import str2bool as parse

    return parse(value)


def _bool_or_warn(value: str):
    """``--deterministic`` takes a boolean or Lightning's ``"warn"``."""
    if str(value).strip().lower() == "warn":
        return "warn"
    return str2bool(value)


def _int_or_float(value: str):
    """Lightning's ``limit_*_batches``: an int is a batch count, a float a fraction."""
    try:
        return int(value)
    except ValueError:
        pass
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a batch count (int) or a fraction (float), got {value!r}"
        ) from None


def _devices(value: str):
    """``--devices``: an int, ``auto``, or a device list such as ``0,1``."""
    try:
        return int(value)
    except ValueError:
        return value


# ---------------------------------------------------------------------------
# the classes behind --model-type
# ---------------------------------------------------------------------------


def module_class(model_type: str) -> Type:
    """The LightningModule class trained by ``--model-type``.

    Args:
        model_type: ``"unet"`` (fastMRI's UnetModule ported to Lightning 2) or
            ``"dynamic_unet"`` (the growing U-Net).
    """
    if model_type == "unet":
        from fastmri_growth.pl_modules.lightning2 import UnetModule

        return UnetModule
    if model_type == "dynamic_unet":
        from fastmri_growth.pl_modules import DynamicUnetModule

        return DynamicUnetModule
    raise UsageError(
        f"unknown --model-type {model_type!r}; choose one of {', '.join(MODEL_TYPES)}"
    )


def data_module_class() -> Type:
    """FastMriDataModule as fixed for Lightning 2 (same flags as fastMRI's)."""
    from fastmri_growth.pl_modules.lightning2 import FastMriDataModule

    return FastMriDataModule


def model_arg_names(cls: Type) -> List[str]:
    """The argparse destinations that ``cls.add_model_specific_args`` declares.

    These, and only these, are handed to the module's constructor, so the
    module's parser stays the one place that defines model flags and their
    defaults.
    """
    parser = cls.add_model_specific_args(argparse.ArgumentParser(add_help=False))
    return [a.dest for a in parser._actions if a.dest != argparse.SUPPRESS]


# ---------------------------------------------------------------------------
# parser
# ---------------------------------------------------------------------------


def _add_run_args(parser: argparse.ArgumentParser, model_type: str) -> None:
    group = parser.add_argument_group("run")
    group.add_argument(
        "--mode", default="train", choices=("train", "test"), type=str, help="Operation mode"
    )
    group.add_argument(
        "--model-type",
        "--model_type",
        dest="model_type",
        default=model_type,
        choices=MODEL_TYPES,
        help="Network to train: fastMRI's fixed U-Net or the growing U-Net",
    )
    group.add_argument("--seed", default=42, type=int, help="Random seed (pl.seed_everything)")
    group.add_argument(
        "--ckpt_path",
        default=None,
        type=Path,
        help=(
            "Checkpoint to resume from (train) or to test (test); default: the "
            "newest .ckpt in DEFAULT_ROOT_DIR/checkpoints"
        ),
    )


def _add_mask_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("k-space mask")
    group.add_argument(
        "--mask_type",
        choices=MASK_TYPES,
        default="random",
        type=str,
        help="Type of k-space mask",
    )
    group.add_argument(
        "--center_fractions",
        nargs="+",
        default=[0.08],
        type=float,
        help="Fraction of center k-space lines kept, one per acceleration",
    )
    group.add_argument(
        "--accelerations",
        nargs="+",
        default=[4],
        type=int,
        help="Acceleration rates to use for masks",
    )


def _add_trainer_args(parser: argparse.ArgumentParser) -> None:
    # Lightning 2 dropped Trainer.add_argparse_args: these are the Trainer
    # arguments a fastMRI user passes, with fastMRI's demo defaults where it
    # sets one (max_epochs=50, deterministic=True).
    group = parser.add_argument_group("trainer (pytorch_lightning.Trainer)")
    group.add_argument("--accelerator", default="auto", help="cpu, gpu, cuda, mps, tpu or auto")
    group.add_argument(
        "--devices", default="auto", type=_devices, help="Device count, list such as 0,1, or auto"
    )
    group.add_argument(
        "--strategy", default="auto", help="Distributed strategy: auto, ddp, ddp_spawn, ..."
    )
    group.add_argument("--num_nodes", default=1, type=int, help="Number of machines")
    group.add_argument(
        "--precision", default="32-true", help="32-true, 16-mixed, bf16-mixed, 64-true, ..."
    )
    group.add_argument("--max_epochs", default=50, type=int, help="Number of epochs")
    group.add_argument(
        "--max_steps", default=-1, type=int, help="Stop after this many steps (-1: no limit)"
    )
    group.add_argument(
        "--default_root_dir",
        default=None,
        type=Path,
        help=(
            "Folder for checkpoints, logs and reconstructions; default: "
            f"LOG_PATH/MODEL_TYPE/MODEL_TYPE_demo, LOG_PATH being log_path from "
            f"./{DIRS_CONFIG}, else ."
        ),
    )
    group.add_argument(
        "--deterministic",
        default=True,
        type=_bool_or_warn,
        help="Deterministic algorithms (true, false or warn)",
    )
    for split in ("train", "val", "test"):
        group.add_argument(
            f"--limit_{split}_batches",
            default=None,
            type=_int_or_float,
            help=f"Batches per {split} epoch: an int count or a float fraction; default: all",
        )
    group.add_argument(
        "--log_every_n_steps", default=50, type=int, help="Log training metrics every N steps"
    )
    group.add_argument(
        "--num_sanity_val_steps",
        default=2,
        type=int,
        help="Validation batches run before training (-1: all)",
    )
    group.add_argument(
        "--check_val_every_n_epoch", default=1, type=int, help="Validate every N epochs"
    )
    group.add_argument(
        "--gradient_clip_val", default=None, type=float, help="Gradient clipping value"
    )
    group.add_argument(
        "--accumulate_grad_batches", default=1, type=int, help="Accumulate gradients over N batches"
    )
    group.add_argument(
        "--enable_progress_bar", default=True, type=str2bool, help="Show a progress bar"
    )


def build_parser(model_type: str = DEFAULT_MODEL_TYPE) -> argparse.ArgumentParser:
    """The full parser for one model type.

    Model flags and their defaults come from the module class's own
    ``add_model_specific_args``; data flags from FastMriDataModule's
    ``add_data_specific_args``.

    Args:
        model_type: One of :data:`MODEL_TYPES`; selects the model flags.

    Returns:
        The parser; its errors are one line on stderr with exit status 2.
    """
    base = argparse.ArgumentParser(add_help=False)
    _add_run_args(base, model_type)
    _add_mask_args(base)
    base = data_module_class().add_data_specific_args(base)
    # fastMRI's demo: no default test path; data_path is resolved later from
    # fastmri_dirs.yaml so that --help reads no file.
    base.set_defaults(test_path=None)
    base = module_class(model_type).add_model_specific_args(base)
    _add_trainer_args(base)
    for action in base._actions:
        if action.dest == "use_dataset_cache_file":
            action.help = (
                f"Cache the slice lists of the data folders in ./{DATASET_CACHE_FILE} "
                "(fastMRI's file, in the working directory); entries of folders whose "
                "files changed since are dropped before each run"
            )
        if action.dest == "data_path":
            action.help = (
                f"Path to fastMRI data root (holding CHALLENGE_train/, CHALLENGE_val/, ...); "
                f"default: knee_path from ./{DIRS_CONFIG}"
            )
    parser = _OneLineParser(
        prog=PROG,
        description=(
            "Train or test a U-Net (fixed or growing) on fastMRI data with "
            "pytorch-lightning 2, as fastMRI's train_unet_demo.py."
        ),
        epilog=(
            "Data path: --data_path, else knee_path from ./fastmri_dirs.yaml. "
            f"No data? {SYNTH_HINT}."
        ),
        parents=[base],
        formatter_class=_HelpFormatter,
    )
    return parser


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse the command line in two passes: ``--model-type`` picks the flags.

    Args:
        argv: Arguments without the program name; ``None`` reads ``sys.argv``.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    # allow_abbrev=False: "--mode" must not be taken as a prefix of "--model-type".
    pre = _OneLineParser(prog=PROG, add_help=False, allow_abbrev=False)
    pre.add_argument(
        "--model-type", "--model_type", dest="model_type", choices=MODEL_TYPES, default=None,
    )
    known, _ = pre.parse_known_args(argv)
    model_type = known.model_type or DEFAULT_MODEL_TYPE
    parser = build_parser(model_type)
    if model_type == "unet":
        growth = growth_options()
        for token in argv:
            if token == "--":
                break
            option = token.split("=", 1)[0]
            if option in growth:
                parser.error(f"growth flags need --model-type dynamic_unet (got {option})")
    args = parser.parse_args(argv)
    # Test mode follows the checkpoint's model type unless one was asked for.
    args.model_type_given = known.model_type is not None
    return args


def growth_options() -> List[str]:
    """The option strings (both spellings) that only ``dynamic_unet`` has."""
    fixed = {o for a in build_parser("unet")._actions for o in a.option_strings}
    return [o for a in build_parser("dynamic_unet")._actions for o in a.option_strings
            if o not in fixed]


# ---------------------------------------------------------------------------
# validation: everything here runs before any file is written
# ---------------------------------------------------------------------------


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
    """Check that fastMRI's SliceDataset can read every file in ``folder``.

    Args:
        folder: A split folder such as ``DATA/singlecoil_train``.
        challenge: ``"singlecoil"`` or ``"multicoil"``.
        need_target: Whether each file must hold the challenge's target
            (train and val do; test and challenge files have none).
        hint: What to do about a missing folder, appended to the message.

    Raises:
        UsageError: naming the folder or file and the fix.
    """
    import h5py

    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise UsageError(f"data folder {folder} {what}; {hint}")
    entries = sorted(folder.iterdir())
    files = [p for p in entries if p.suffix == ".h5" and p.is_file()]
    if not files:
        raise UsageError(
            f"data folder {folder} holds no .h5 files; point --data_path at a fastMRI "
            f"data root ({synth_hint(challenge)})"
        )
    others = [p.name for p in entries if p not in files]
    if others:
        shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        raise UsageError(
            f"data folder {folder} holds entries that are not .h5 files ({shown}); "
            "fastMRI's SliceDataset opens every entry as HDF5: move them out"
        )
    target_key = CHALLENGE_TARGET_KEY[challenge]
    for path in files:
        try:
            with h5py.File(path, "r") as hf:
                keys = set(hf.keys())
                if "kspace" not in keys:
                    raise UsageError(
                        f"{path} has no 'kspace' dataset (it has: "
                        f"{', '.join(sorted(keys)) or 'nothing'}); "
                        "every fastMRI .h5 file needs kspace: remove or regenerate this file"
                    )
                if "ismrmrd_header" not in keys:
                    raise UsageError(
                        f"{path} has no 'ismrmrd_header' dataset, which fastMRI's SliceDataset "
                        "reads for the crop and padding; remove or regenerate this file "
                        "(`fastmri-growth-synth` writes it)"
                    )
                ndim = hf["kspace"].ndim
                if ndim != CHALLENGE_KSPACE_NDIM[challenge]:
                    other = "multicoil" if challenge == "singlecoil" else "singlecoil"
                    raise UsageError(
                        f"{path} has {ndim}-d kspace but --challenge {challenge} expects "
                        f"{CHALLENGE_KSPACE_NDIM[challenge]}-d; pass --challenge {other} "
                        "or the matching data"
                    )
                if need_target and target_key not in keys:
                    raise UsageError(
                        f"{path} has no {target_key!r} target, which --challenge {challenge} "
                        "training and validation need; pass the fully sampled train/val data"
                    )
        except OSError as err:
            raise UsageError(
                f"cannot read {path} as HDF5 ({str(err).splitlines()[0]}); remove or "
                "replace this file"
            ) from None


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


def newest_checkpoint(checkpoint_dir: Path) -> Optional[Path]:
    """The most recently written ``*.ckpt`` in a folder, as fastMRI's demo picks it.

    Ties go to ``last*.ckpt`` (it is written right after the best one).
    """
    if not checkpoint_dir.is_dir():
        return None
    ckpts = [p for p in checkpoint_dir.glob("*.ckpt") if p.is_file()]
    if not ckpts:
        return None
    return max(ckpts, key=lambda p: (p.stat().st_mtime_ns, p.name.startswith("last")))


def _read_checkpoint(path: Path) -> Any:
    """The object stored in a checkpoint file (tensors memory-mapped when possible).

    Raises:
        UsageError: the file cannot be read as a checkpoint.
    """
    import torch

    try:
        try:
            # mmap: only the small dict entries are read, not every tensor.
            return torch.load(path, map_location="cpu", mmap=True, weights_only=False)
        except RuntimeError:
            return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        first = str(err).splitlines()[0] if str(err) else ""
        raise UsageError(
            f"cannot read checkpoint {path} ({type(err).__name__}: {first}); pass another "
            "--ckpt_path or move the broken file out of the checkpoints folder"
        ) from None


def _stored_model_type(ckpt: Any) -> Optional[str]:
    """``"dynamic_unet"`` or ``"unet"``: the module a checkpoint was written by.

    Decided as :func:`fastmri_growth.pl_modules.load_module` decides it.
    Returns None for a checkpoint that holds neither.
    """
    from fastmri_growth.pl_modules.dynamic_unet_module import CHECKPOINT_KEY

    if not isinstance(ckpt, dict):
        return None
    hparams = ckpt.get("hyper_parameters") or {}
    if CHECKPOINT_KEY in ckpt or "growth_method" in hparams:
        return "dynamic_unet"
    if any(str(k).startswith("unet.") for k in ckpt.get("state_dict", {})):
        return "unet"
    return None


def _checkpoint_model_type(path: Path) -> Optional[str]:
    """:func:`_stored_model_type` of the checkpoint file ``path``.

    Raises:
        UsageError: the file cannot be read as a checkpoint.
    """
    return _stored_model_type(_read_checkpoint(path))


#: The constructor arguments that fix a U-Net's architecture at the start of
#: training (a growing U-Net widens its convs later, but from ``chans``).
ARCHITECTURE_ARGS = ("in_chans", "out_chans", "chans", "num_pool_layers")


def stored_architecture(ckpt: Any) -> Dict[str, int]:
    """The architecture arguments a checkpoint's module was built with.

    Taken from the saved ``hyper_parameters``; any missing there are read
    from the state dict's shapes (``chans`` only for a fixed U-Net, whose
    first conv is ``chans`` wide).

    Args:
        ckpt: A loaded Lightning checkpoint.

    Returns:
        ``{name: value}`` for the names of :data:`ARCHITECTURE_ARGS` found.
    """
    if not isinstance(ckpt, dict):
        return {}
    hparams = ckpt.get("hyper_parameters") or {}
    found = {k: int(hparams[k]) for k in ARCHITECTURE_ARGS if isinstance(hparams.get(k), int)}
    if len(found) < len(ARCHITECTURE_ARGS):
        from fastmri_growth.models import architecture_from_state_dict

        state = ckpt.get("state_dict") or {}
        try:
            arch = architecture_from_state_dict(
                {k: v for k, v in state.items() if str(k).startswith("unet.")}
            )
        except (ValueError, KeyError, TypeError, IndexError):
            arch = None
        if arch is not None:
            for key in ("in_chans", "out_chans", "num_pool_layers"):
                found.setdefault(key, int(arch[key]))
            if _stored_model_type(ckpt) == "unet":
                first = state.get("unet.down_sample_layers.0.layers.0.weight")
                if first is not None:
                    found.setdefault("chans", int(first.shape[0]))
    return found


def check_architecture(args: argparse.Namespace, ckpt_path: Path, ckpt: Any) -> None:
    """Refuse to resume a checkpoint built with other architecture flags.

    Lightning would fail inside ``fit`` (a size mismatch while loading the
    state dict) with a traceback; this names the flags to pass instead.

    Raises:
        UsageError: a flag of :data:`ARCHITECTURE_ARGS` differs from the checkpoint.
    """
    stored = stored_architecture(ckpt)
    diff = [k for k in ARCHITECTURE_ARGS
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
    loaded = _read_checkpoint(ckpt)
    stored = _stored_model_type(loaded)
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
    check_data(args)
    args.ckpt_path = resolve_checkpoint(args)


# ---------------------------------------------------------------------------
# building the run
# ---------------------------------------------------------------------------


def build_module(args: argparse.Namespace):
    """The LightningModule for training, from the module's own flags.

    Raises:
        UsageError: the module rejected a value (e.g. an unknown growth layer).
    """
    cls = module_class(args.model_type)
    kwargs = {name: getattr(args, name) for name in model_arg_names(cls)}
    try:
        return cls(**kwargs)
    except ValueError as err:
        raise UsageError(f"invalid model option: {err}") from None


def load_trained_module(ckpt: Path):
    """The trained module stored in a checkpoint, grown widths restored.

    Raises:
        UsageError: the checkpoint holds no U-Net or does not load.
    """
    from fastmri_growth.pl_modules import load_module

    try:
        return load_module(ckpt)
    except (ValueError, RuntimeError, KeyError, TypeError) as err:
        msg = " ".join(str(err).split())
        raise UsageError(
            f"cannot load trained weights from {ckpt} ({msg}); pass a checkpoint written by "
            f"{PROG} with --ckpt_path"
        ) from None


def uses_distributed_sampler(trainer) -> bool:
    """Whether the data loaders must shard the data across processes.

    fastMRI's demo keys this off ``--accelerator in ("ddp", "ddp_cpu")``
    while passing ``strategy="ddp"``, so every rank walked the whole set.
    """
    from pytorch_lightning.strategies import ParallelStrategy

    return isinstance(trainer.strategy, ParallelStrategy) or (
        trainer.num_devices * trainer.num_nodes > 1
    )


def checkpoint_callbacks(checkpoint_dir: Path) -> list:
    """fastMRI's checkpointing: the best epoch by ``validation_loss``, plus ``last.ckpt``.

    Two callbacks, because Lightning 2.6's ``save_last=True`` rewrites
    ``last.ckpt`` only in epochs that also produced a new top-k checkpoint:
    an epoch that is not the best (often the one right after growth) would
    be missing from it, and resuming would repeat epochs. The second
    callback has no monitor and rewrites ``last.ckpt`` after every epoch.

    Args:
        checkpoint_dir: Folder for both (``DEFAULT_ROOT_DIR/checkpoints``).
    """
    from pytorch_lightning.callbacks import ModelCheckpoint

    best = ModelCheckpoint(
        dirpath=checkpoint_dir,
        save_top_k=1,
        verbose=True,
        monitor="validation_loss",
        mode="min",
    )
    last = ModelCheckpoint(
        dirpath=checkpoint_dir,
        filename="last",
        save_top_k=1,
        monitor=None,
        # Overwrite last.ckpt in place, also after a run folder was moved
        # (Lightning then forgets the old paths and would write last-v1.ckpt).
        enable_version_counter=False,
    )
    return [best, last]


def build_trainer(args: argparse.Namespace):
    """The Lightning trainer: checkpoints, TensorBoard + CSV loggers, progress bar.

    Raises:
        UsageError: Lightning rejected a trainer flag (accelerator, precision, ...).
    """
    import pytorch_lightning as pl
    from lightning_fabric.utilities.exceptions import MisconfigurationException
    from pytorch_lightning.callbacks import TQDMProgressBar
    from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

    root = Path(args.default_root_dir)
    callbacks: List[Any] = []
    if args.enable_progress_bar:
        callbacks.append(TQDMProgressBar())
    if args.mode == "train":
        callbacks.extend(checkpoint_callbacks(root / "checkpoints"))
    loggers = [
        TensorBoardLogger(save_dir=str(root), name="lightning_logs"),
        CSVLogger(save_dir=str(root), name="csv_logs"),
    ]
    try:
        return pl.Trainer(
            accelerator=args.accelerator,
            devices=args.devices,
            strategy=args.strategy,
            num_nodes=args.num_nodes,
            precision=args.precision,
            max_epochs=args.max_epochs,
            max_steps=args.max_steps,
            default_root_dir=str(root),
            deterministic=args.deterministic,
            limit_train_batches=args.limit_train_batches,
            limit_val_batches=args.limit_val_batches,
            limit_test_batches=args.limit_test_batches,
            log_every_n_steps=args.log_every_n_steps,
            num_sanity_val_steps=args.num_sanity_val_steps,
            check_val_every_n_epoch=args.check_val_every_n_epoch,
            gradient_clip_val=args.gradient_clip_val,
            accumulate_grad_batches=args.accumulate_grad_batches,
            enable_progress_bar=args.enable_progress_bar,
            callbacks=callbacks,
            logger=loggers,
            # Keep fastMRI's samplers (VolumeSampler sends whole volumes to
            # one rank for validation); the data module makes them.
            use_distributed_sampler=False,
        )
    except (MisconfigurationException, ValueError, TypeError, RuntimeError) as err:
        msg = " ".join(str(err).split())
        raise UsageError(f"invalid trainer option: {msg}") from None


def _cached_folder_is_stale(folder: Path, samples: Any, cache_mtime_ns: int) -> bool:
    """Whether a cache entry no longer describes ``folder``.

    Stale when the folder is gone, its files are not the cached ones, or one
    of them was written after the cache (e.g. regenerated with fewer slices).
    """
    if not folder.is_dir():
        return True
    files = [p for p in folder.iterdir() if p.is_file()]
    try:
        cached = {Path(sample[0]).name for sample in samples}
    except (TypeError, IndexError):
        return True
    if {p.name for p in files} != cached:
        return True
    return any(p.stat().st_mtime_ns > cache_mtime_ns for p in files)


def prune_dataset_cache(cache_file: Path = DATASET_CACHE_FILE) -> List[str]:
    """Drop the stale entries of fastMRI's dataset cache file, rewriting it.

    fastMRI's SliceDataset trusts the cache for any folder listed in it, so
    data regenerated in place (fewer slices, other files) would be read with
    the old slice list and fail inside a DataLoader worker.

    Args:
        cache_file: The pickled ``{folder: [FastMRIRawDataSample, ...]}`` cache.

    Returns:
        The folders whose entries were dropped (empty when none or no file).

    Raises:
        UsageError: the cache file cannot be read.
    """
    import os
    import pickle

    if not cache_file.is_file():
        return []
    try:
        with open(cache_file, "rb") as f:
            cache = pickle.load(f)
    except Exception as err:
        raise UsageError(
            f"cannot read the dataset cache {cache_file.resolve()} ({type(err).__name__}); "
            "delete it (it is rebuilt) or pass --use_dataset_cache_file false"
        ) from None
    if not isinstance(cache, dict):
        raise UsageError(
            f"the dataset cache {cache_file.resolve()} is not fastMRI's cache (a dict); "
            "delete it (it is rebuilt) or pass --use_dataset_cache_file false"
        )
    mtime_ns = cache_file.stat().st_mtime_ns
    stale = [root for root, samples in cache.items()
             if _cached_folder_is_stale(Path(root), samples, mtime_ns)]
    if not stale:
        return []
    kept = {root: samples for root, samples in cache.items() if root not in stale}
    # Write beside and rename, so no reader ever sees half a file.
    tmp = cache_file.with_name(f".{cache_file.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        pickle.dump(kept, f)
    os.replace(tmp, cache_file)
    return [str(root) for root in stale]


def cap_num_workers(requested: int, cpus: Optional[int] = None):
    """fastMRI's ``--num_workers`` (default 4), at most one per available CPU.

    More loader processes than CPUs only compete with the training process
    (and make Lightning and torch warn).

    Args:
        requested: ``--num_workers``.
        cpus: CPUs available to this process; None asks the OS.

    Returns:
        ``(num_workers, note)``; ``note`` is None when nothing was capped.
    """
    import os

    if cpus is None:
        try:
            cpus = len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            cpus = os.cpu_count() or 1
    if requested <= cpus:
        return requested, None
    return cpus, (
        f"note: --num_workers {requested} is more than the {cpus} CPU(s) available; "
        f"using {cpus} data loader workers"
    )


def build_data_module(args: argparse.Namespace, distributed_sampler: bool):
    """FastMriDataModule with the demo's transforms.

    Training masks are random per call (``use_seed=False``); validation
    masks are seeded by file name (``use_seed=True``) so every epoch and every
    run sees the same inputs; test data carry their own mask.
    """
    from fastmri.data.subsample import create_mask_for_mask_type
    from fastmri.data.transforms import UnetDataTransform

    mask = create_mask_for_mask_type(args.mask_type, args.center_fractions, args.accelerations)
    cls = data_module_class()
    return cls(
        data_path=args.data_path,
        challenge=args.challenge,
        train_transform=UnetDataTransform(args.challenge, mask_func=mask, use_seed=False),
        val_transform=UnetDataTransform(args.challenge, mask_func=mask, use_seed=True),
        test_transform=UnetDataTransform(args.challenge),
        combine_train_val=args.combine_train_val,
        test_split=args.test_split,
        test_path=args.test_path,
        sample_rate=args.sample_rate,
        val_sample_rate=args.val_sample_rate,
        test_sample_rate=args.test_sample_rate,
        volume_sample_rate=args.volume_sample_rate,
        val_volume_sample_rate=args.val_volume_sample_rate,
        test_volume_sample_rate=args.test_volume_sample_rate,
        use_dataset_cache_file=args.use_dataset_cache_file,
        dataset_cache_file=DATASET_CACHE_FILE,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        distributed_sampler=distributed_sampler,
    )


#: (metric logged by MriModule, label, format) of the summary's validation line.
SUMMARY_METRICS = (
    ("validation_loss", "validation_loss", ".4g"),
    ("val_metrics/ssim", "SSIM", ".4f"),
    ("val_metrics/psnr", "PSNR", ".2f"),
    ("val_metrics/nmse", "NMSE", ".4g"),
)


def validation_summary(metrics: Dict[str, Any]) -> str:
    """The last validation's loss, SSIM, PSNR and NMSE as one line ("" if none ran).

    Args:
        metrics: ``trainer.callback_metrics`` (the latest logged values).
    """
    parts = [f"{label} {float(metrics[key]):{fmt}}"
             for key, label, fmt in SUMMARY_METRICS if key in metrics]
    return ", ".join(parts)


def _print_summary(args: argparse.Namespace, trainer) -> None:
    root = Path(args.default_root_dir)
    lines = [f"\n{PROG} ({args.mode}, {args.model_type}) outputs under {root}:"]
    ckpt_dir = root / "checkpoints"
    ckpts = sorted(p.name for p in ckpt_dir.glob("*.ckpt")) if ckpt_dir.is_dir() else []
    if args.mode == "train":
        lines.append(f"  checkpoints:      {ckpt_dir} ({', '.join(ckpts) or 'none'})")
        callback = trainer.checkpoint_callback
        if callback is not None and callback.best_model_path:
            score = callback.best_model_score
            best = f" (validation_loss {float(score):.4g})" if score is not None else ""
            lines.append(f"  best checkpoint:  {callback.best_model_path}{best}")
        last = validation_summary(trainer.callback_metrics)
        if last:
            lines.append(f"  last validation:  {last}")
    else:
        lines.append(f"  tested weights:   {args.ckpt_path}")
    for logger in trainer.loggers:
        name = type(logger).__name__
        if name == "TensorBoardLogger":
            lines.append(f"  TensorBoard logs: {logger.log_dir} (tensorboard --logdir {root})")
        elif name == "CSVLogger":
            lines.append(f"  CSV metrics:      {Path(logger.log_dir) / 'metrics.csv'}")
    if args.mode == "test":
        recon_dir = root / "reconstructions"
        count = len(list(recon_dir.glob("*.h5"))) if recon_dir.is_dir() else 0
        lines.append(f"  reconstructions:  {recon_dir} ({count} .h5 files)")
    print("\n".join(lines), flush=True)


def run(args: argparse.Namespace):
    """Train or test as ``args.mode`` says; ``args`` already validated.

    Returns:
        The trainer, for callers that want its callbacks or loggers.
    """
    import pytorch_lightning as pl

    if args.mode == "train":
        module = build_module(args)
    else:
        module = load_trained_module(args.ckpt_path)
    trainer = build_trainer(args)
    if args.use_dataset_cache_file:
        dropped = prune_dataset_cache(DATASET_CACHE_FILE)
        if dropped and trainer.is_global_zero:
            print(
                f"note: dropped the entries of {', '.join(dropped)} from the dataset cache "
                f"{DATASET_CACHE_FILE.resolve()}: their files changed since it was written",
                flush=True,
            )
    args.num_workers, note = cap_num_workers(args.num_workers)
    if note and trainer.is_global_zero:
        print(note, flush=True)
    data_module = build_data_module(args, uses_distributed_sampler(trainer))
    pl.seed_everything(args.seed)
    if args.mode == "train":
        if args.ckpt_path is not None and trainer.is_global_zero:
            print(f"Resuming from {args.ckpt_path}", flush=True)
        trainer.fit(module, datamodule=data_module, ckpt_path=args.ckpt_path)
    else:
        if trainer.is_global_zero:
            print(f"Testing weights from {args.ckpt_path}", flush=True)
        trainer.test(module, datamodule=data_module)
    if trainer.is_global_zero:
        _print_summary(args, trainer)
    return trainer


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point (``fastmri-growth-train``).

    Args:
        argv: Arguments without the program name; ``None`` reads ``sys.argv``.

    Returns:
        0 on success, 2 on bad input (one line on stderr, nothing written).
    """
    args = parse_args(argv)
    try:
        validate_args(args)
        run(args)
    except UsageError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
