"""Train or test a (growing) U-Net or VarNet on fastMRI data with pytorch-lightning 2.

The command lines of fastMRI's ``fastmri_examples/unet/train_unet_demo.py``
and ``fastmri_examples/varnet/train_varnet_demo.py`` (their flags, their
defaults where they still apply: seed 42, 50 epochs, deterministic; the
VarNet demo's 8 cascades, Adam at 1e-3, multicoil data, equispaced masks;
their run layout), ported to Lightning 2 (explicit Trainer flags:
``--accelerator``, ``--devices``, ``--strategy``, ... default to Lightning's
``auto``) and extended with
``--model-type {unet,dynamic_unet,varnet,dynamic_varnet}`` and the growth
flags of :class:`fastmri_growth.pl_modules.DynamicUnetModule` /
:class:`~fastmri_growth.pl_modules.DynamicVarNetModule`::

    fastmri-growth-train --data_path DATA/knee --challenge singlecoil \\
        --mask_type random --center_fractions 0.08 --accelerations 4 \\
        --chans 8 --growth-method sample_select --max_epochs 20 \\
        --default_root_dir runs/grow
    fastmri-growth-train --mode test --data_path DATA/knee \\
        --default_root_dir runs/grow
    fastmri-growth-train --model-type dynamic_varnet --data_path DATA/knee \\
        --num_cascades 2 --chans 4 --pools 2 --sens_chans 2 --sens_pools 2 \\
        --layers-to-grow 'cascade_*/bottleneck' --default_root_dir runs/varnet

The U-Nets read images (``UnetDataTransform``), the VarNets multicoil
k-space (``VarNetDataTransform``, ``--challenge multicoil`` only).

Run layout under ``--default_root_dir``:

- ``checkpoints/``: the best checkpoint by ``validation_loss`` and
  ``last.ckpt``, written atomically. Training resumes from the newest
  usable one automatically (broken ones are skipped and named); test mode
  loads it, or ``--ckpt last|best|PATH`` (or ``--ckpt_path``).
- ``lightning_logs/version_N/``: TensorBoard logs.
- ``csv_logs/version_N/metrics.csv``: the same metrics as CSV.
- ``reconstructions/*.h5``: test-mode reconstructions in the leaderboard
  format (one file per volume, dataset ``reconstruction``).

Bad input (missing or malformed data, inconsistent mask flags, no checkpoint
to test, unknown growth layers, flags the chosen schedule would ignore, a
U-Net too deep for the images, an unwritable or full run folder, ...) is
reported before anything is built or written: one line on stderr and exit
status 2. A run that stops on a fault while training (a non-finite loss or
gradient, naming the file and slice; a full disk while writing a checkpoint)
prints one line on stderr and exits with status 1; the checkpoints already
written are intact, and the same command resumes from the newest usable one.
"""


from __future__ import annotations

import argparse
import errno
import logging
import sys
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Type

from fastmri_growth.cli.checkpoints import (  # noqa: F401  (re-exported: the CLI's API)
    apply_init_weights,
    checkpoint_callbacks,
    newest_checkpoint,
    newest_usable_checkpoint,
    read_checkpoint,
    remove_partial_files,
    stored_model_type,
)
from fastmri_growth.cli.common import (
    HelpFormatter,
    OneLineParser,
    UsageError,
    one_line,
    redeclare,
    str2bool,
)
from fastmri_growth.cli.dataset_cache import DATASET_CACHE_FILE, prune_dataset_cache
from fastmri_growth.cli.train_checks import (  # noqa: F401  (re-exported: the CLI's API)
    DEMO_DEFAULTS,
    GROWING_MODEL_TYPES,
    GROWING_VERSION,
    KSPACE_MODEL_TYPES,
    MODEL_TYPES,
    check_data,
    check_mask_args,
    check_free_space,
    check_sample_rates,
    never_grows_reason,
    resolve_checkpoint,
    resolve_paths,
    validate_args,
)
from fastmri_growth.cli.trainer_flags import add_trainer_args, trainer_flags
from fastmri_growth.data.fastmri_format import DIRS_CONFIG, MASK_TYPES, synth_hint

PROG = "fastmri-growth-train"
DEFAULT_MODEL_TYPE = "dynamic_unet"
MODEL_TYPE_HELP = (
    "Network to train: unet (fastMRI's U-Net), dynamic_unet (the growing U-Net), varnet "
    "(fastMRI's end-to-end VarNet, multicoil k-space) or dynamic_varnet (the VarNet whose "
    "cascade and sensitivity U-Nets grow)"
)


# ---------------------------------------------------------------------------
# the classes behind --model-type
# ---------------------------------------------------------------------------


def module_class(model_type: str) -> Type:
    """The LightningModule class trained by ``--model-type``.

    Args:
        model_type: ``"unet"`` / ``"varnet"`` (fastMRI's UnetModule /
            VarNetModule ported to Lightning 2) or ``"dynamic_unet"`` /
            ``"dynamic_varnet"`` (their growing versions).
    """
    if model_type == "unet":
        from fastmri_growth.pl_modules.lightning2 import UnetModule

        return UnetModule
    if model_type == "dynamic_unet":
        from fastmri_growth.pl_modules import DynamicUnetModule

        return DynamicUnetModule
    if model_type == "varnet":
        from fastmri_growth.pl_modules.lightning2 import VarNetModule

        return VarNetModule
    if model_type == "dynamic_varnet":
        from fastmri_growth.pl_modules import DynamicVarNetModule

        return DynamicVarNetModule
    raise UsageError(
        f"unknown --model-type {model_type!r}; choose one of {', '.join(MODEL_TYPES)}"
    )


def data_transforms(model_type: str, challenge: str, mask_func) -> tuple:
    """The demo's train, val and test transforms for a model type.

    Training masks are random per call (``use_seed=False``); validation
    masks are seeded by file name (``use_seed=True``) so every epoch and every
    run sees the same inputs; test data carry their own mask.

    Returns:
        ``(train, val, test)``: ``UnetDataTransform`` s for the U-Nets,
        ``VarNetDataTransform`` s for the VarNets.
    """
    if model_type in KSPACE_MODEL_TYPES:
        from fastmri.data.transforms import VarNetDataTransform

        return (VarNetDataTransform(mask_func=mask_func, use_seed=False),
                VarNetDataTransform(mask_func=mask_func, use_seed=True),
                VarNetDataTransform())
    from fastmri.data.transforms import UnetDataTransform

    return (UnetDataTransform(challenge, mask_func=mask_func, use_seed=False),
            UnetDataTransform(challenge, mask_func=mask_func, use_seed=True),
            UnetDataTransform(challenge))


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
    return list(vars(parser.parse_args([])))


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
        help=MODEL_TYPE_HELP,
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
        "--ckpt",
        default=None,
        metavar="{last,best,PATH}",
        help=(
            "Test mode: the weights to test: last (checkpoints/last.ckpt), best (the best "
            "validation_loss) or a checkpoint file; default: the newest usable checkpoint "
            "of the run (last.ckpt after a completed run)"
        ),
    )
    group.add_argument(
        "--init-from",
        "--init_from",
        dest="init_from",
        default=None,
        type=Path,
        metavar="CKPT_OR_STATE_DICT",
        help=(
            "Start training from these weights: a Lightning checkpoint (fastMRI's UnetModule "
            "or VarNetModule, or this package's) or a bare state dict (fastMRI's pretrained "
            "files); the architecture flags follow the file. A growing model type grows from "
            "them. Ignored when the run folder holds a checkpoint to resume"
        ),
    )
    group.add_argument(
        "--skip-nonfinite-batches",
        "--skip_nonfinite_batches",
        dest="skip_nonfinite_batches",
        default=False,
        type=str2bool,
        nargs="?",
        const=True,
        metavar="BOOL",
        help=(
            "Skip training batches whose loss or gradient is NaN or Inf (counted, and named "
            "at the end of each epoch) instead of stopping at the first one"
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
    # fastMRI's train_varnet_demo.py defaults (over its module's flags).
    base.set_defaults(**DEMO_DEFAULTS[model_type])
    base = redeclare(
        base,
        (("--data_path",), dict(
            default=None, type=Path,
            help=f"Path to fastMRI data root (holding CHALLENGE_train/, CHALLENGE_val/, ...); "
                 f"default: knee_path from ./{DIRS_CONFIG}")),
        (("--use_dataset_cache_file",), dict(
            default=True, type=str2bool, nargs="?", const=True, metavar="BOOL",
            help=f"Cache the slice lists of the data folders in ./{DATASET_CACHE_FILE} "
                 "(fastMRI's file, in the working directory); entries of folders whose "
                 "files changed since are dropped before each run")),
    )
    add_trainer_args(base)
    parser = OneLineParser(
        prog=PROG,
        description=(
            "Train or test a U-Net or an end-to-end VarNet (fixed or growing) on fastMRI "
            "data with pytorch-lightning 2, as fastMRI's train_unet_demo.py and "
            "train_varnet_demo.py."
        ),
        epilog=(
            "Data path: --data_path, else knee_path from ./fastmri_dirs.yaml. "
            f"No data? {synth_hint()}."
        ),
        parents=[base],
        formatter_class=HelpFormatter,
    )
    return parser


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse the command line in two passes: ``--model-type`` picks the flags.

    Args:
        argv: Arguments without the program name; ``None`` reads ``sys.argv``.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    # allow_abbrev=False: "--mode" must not be taken as a prefix of "--model-type".
    pre = OneLineParser(prog=PROG, add_help=False, allow_abbrev=False)
    pre.add_argument(
        "--model-type", "--model_type", dest="model_type", choices=MODEL_TYPES, default=None,
    )
    known, _ = pre.parse_known_args(argv)
    model_type = known.model_type or DEFAULT_MODEL_TYPE
    parser = build_parser(model_type)
    if model_type not in GROWING_MODEL_TYPES:
        growth = growth_options()
        for token in argv:
            if token == "--":
                break
            option = token.split("=", 1)[0]
            if option in growth:
                parser.error(
                    f"growth flags need --model-type {GROWING_VERSION[model_type]} (got {option})")
    args = parser.parse_args(argv)
    # Test mode follows the checkpoint's model type unless one was asked for.
    args.model_type_given = known.model_type is not None
    args.given_flags = given_flags(parser, argv)
    return args


def given_flags(parser: argparse.ArgumentParser, argv: Sequence[str]) -> set:
    """The destinations of the flags on the command line (not left at their defaults).

    Parsed a second time into a namespace that already holds every
    destination, so argparse fills in no default (abbreviations count too).
    """
    marker = object()
    namespace = argparse.Namespace(**{
        a.dest: marker for a in parser._actions if a.dest is not argparse.SUPPRESS})
    parser.parse_args(argv, namespace=namespace)
    return {dest for dest, value in vars(namespace).items() if value is not marker}


def growth_options() -> List[str]:
    """The option strings (both spellings) that only the growing model types have."""
    from fastmri_growth.pl_modules import DynamicUnetModule

    return DynamicUnetModule.growth_option_strings()


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


def prepare_module(args: argparse.Namespace):
    """Seed, then the module to train (with ``--init-from`` weights) or the one to test.

    Seeding comes first, as in fastMRI's demo, so ``--seed`` also fixes the
    initial weights. Nothing is written.

    Raises:
        UsageError: a rejected model option, or weights that do not load.
    """
    import pytorch_lightning as pl

    pl.seed_everything(args.seed, verbose=False)
    if args.mode != "train":
        return load_trained_module(args.ckpt_path)
    module = build_module(args)
    init = getattr(args, "init_weights", None)
    if init is not None:
        apply_init_weights(module, init, args.model_type)
    return module


def uses_distributed_sampler(trainer) -> bool:
    """Whether the data loaders must shard the data across processes.

    fastMRI's demo keys this off ``--accelerator in ("ddp", "ddp_cpu")``
    while passing ``strategy="ddp"``, so every rank walked the whole set.
    """
    from pytorch_lightning.strategies import ParallelStrategy

    return isinstance(trainer.strategy, ParallelStrategy) or (
        trainer.num_devices * trainer.num_nodes > 1
    )


def _given(args: argparse.Namespace, name: str) -> bool:
    return name in getattr(args, "given_flags", set())


def progress_bar_on(args: argparse.Namespace) -> bool:
    """``--enable_progress_bar``; when not given, on only if stdout is a terminal.

    In a captured log, a progress bar is one long line of carriage returns
    that growth and checkpoint lines end up inside.
    """
    if _given(args, "enable_progress_bar"):
        return bool(args.enable_progress_bar)
    isatty = getattr(sys.stdout, "isatty", None)
    return bool(args.enable_progress_bar) and bool(isatty and isatty())


def _log_interval_callback():
    """A callback that lowers ``log_every_n_steps`` to the epoch's length when that is shorter.

    Lightning's default of 50 steps logs nothing per step in a short epoch
    (and warns); this logs at least once per epoch.
    """
    import pytorch_lightning as pl

    class FitLogInterval(pl.Callback):
        def on_train_start(self, trainer, pl_module) -> None:
            n = trainer.num_training_batches
            if isinstance(n, int) and 0 < n < trainer.log_every_n_steps:
                trainer.log_every_n_steps = n

    return FitLogInterval()


class _DropTips(logging.Filter):
    """Drops Lightning's advertising ("Tip: For seamless cloud logging ...")."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in str(record.getMessage())


def quiet_lightning(args: argparse.Namespace) -> None:
    """Silence the Lightning output that tells the user nothing about their run.

    Lightning's advertising tips, a deprecation inside Lightning itself,
    its guess of the batch size for the growth callback's epoch-level
    values, and (when ``--log_every_n_steps`` was not given, since it is
    then fitted to the epoch) the warning about short epochs.
    """
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero"):
        log = logging.getLogger(name)
        if not any(isinstance(f, _DropTips) for f in log.filters):
            log.addFilter(_DropTips())
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    warnings.filterwarnings("ignore", message=r"Trying to infer the `batch_size`")
    if not _given(args, "log_every_n_steps"):
        warnings.filterwarnings(
            "ignore", message=r"The number of training batches .* is smaller than the logging")


def build_trainer(args: argparse.Namespace):
    """The Lightning trainer: checkpoints, TensorBoard + CSV loggers, progress bar, fault guards.

    Training adds :class:`~fastmri_growth.pl_modules.finite_guard.FiniteGuard`
    (stop, or skip with ``--skip-nonfinite-batches``, at a non-finite loss or
    gradient before it reaches the weights or a checkpoint),
    :class:`~fastmri_growth.pl_modules.rng_state.RngState` (random states in
    every checkpoint) and writes checkpoints atomically
    (:class:`~fastmri_growth.pl_modules.checkpoint_io.AtomicCheckpointIO`).
    A resumed run skips the sanity validation (unless
    ``--num_sanity_val_steps`` is given): it would draw from the restored
    random state that the uninterrupted run used for training.

    Raises:
        UsageError: Lightning rejected a trainer flag (accelerator, precision, ...).
    """
    import pytorch_lightning as pl
    from lightning_fabric.utilities.exceptions import MisconfigurationException
    from pytorch_lightning.callbacks import TQDMProgressBar
    from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

    from fastmri_growth.pl_modules.checkpoint_io import AtomicCheckpointIO
    from fastmri_growth.pl_modules.finite_guard import FiniteGuard
    from fastmri_growth.pl_modules.rng_state import RngState

    root = Path(args.default_root_dir)
    callbacks: List[Any] = []
    progress = progress_bar_on(args)
    if progress:
        callbacks.append(TQDMProgressBar())
    # Every flag of cli/trainer_flags.py, plus what this command controls.
    kwargs = {f.name: getattr(args, f.name) for f in trainer_flags()}
    kwargs["enable_progress_bar"] = progress
    callbacks.append(FiniteGuard(skip=getattr(args, "skip_nonfinite_batches", False)))
    if args.mode == "train":
        callbacks.append(RngState())
        callbacks.extend(checkpoint_callbacks(root / "checkpoints"))
        if not _given(args, "log_every_n_steps"):
            callbacks.append(_log_interval_callback())
        if args.ckpt_path is not None and not _given(args, "num_sanity_val_steps"):
            kwargs["num_sanity_val_steps"] = 0
    loggers = [
        TensorBoardLogger(save_dir=str(root), name="lightning_logs"),
        CSVLogger(save_dir=str(root), name="csv_logs"),
    ]
    try:
        return pl.Trainer(
            **kwargs,
            default_root_dir=str(root),
            callbacks=callbacks,
            logger=loggers,
            plugins=[AtomicCheckpointIO()],
            # Keep fastMRI's samplers (VolumeSampler sends whole volumes to
            # one rank for validation); the data module makes them.
            use_distributed_sampler=False,
        )
    except (MisconfigurationException, ValueError, TypeError, RuntimeError) as err:
        raise UsageError(f"invalid trainer option: {one_line(err)}") from None


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


def build_data_module(args: argparse.Namespace, distributed_sampler: bool, rank: int = 0):
    """FastMriDataModule with the demo's transforms for the model type (see :func:`data_transforms`).

    The training masks' random generator is seeded from ``--seed`` (plus
    the process's rank): fastMRI seeds it from the operating system, so two
    identical runs trained on different masks. Validation masks are seeded
    per file and leave it untouched.
    """
    from fastmri.data.subsample import create_mask_for_mask_type

    mask = create_mask_for_mask_type(args.mask_type, args.center_fractions, args.accelerations)
    mask.rng.seed((int(args.seed) + int(rank)) % (2 ** 32))
    train_transform, val_transform, test_transform = data_transforms(
        args.model_type, args.challenge, mask)
    cls = data_module_class()
    return cls(
        data_path=args.data_path,
        challenge=args.challenge,
        train_transform=train_transform,
        val_transform=val_transform,
        test_transform=test_transform,
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


def _finite_guard(trainer):
    from fastmri_growth.pl_modules.finite_guard import FiniteGuard

    for cb in trainer.callbacks:
        if isinstance(cb, FiniteGuard):
            return cb
    return None


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
        guard = _finite_guard(trainer)
        if guard is not None and (guard.skipped or guard.skipped_scoring):
            from fastmri_growth.pl_modules.finite_guard import summarize

            lines.append(f"  skipped batches:  {len(guard.skipped)} training step(s) with "
                         f"non-finite gradients ({summarize(guard.skipped) or 'none'}), "
                         f"{len(guard.skipped_scoring)} growth scoring batch(es)")
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


def _tested_weights_note(args: argparse.Namespace) -> str:
    choice = getattr(args, "ckpt", None)
    if choice == "best":
        return "--ckpt best: the best validation_loss"
    if choice == "last":
        return "--ckpt last"
    if choice is not None or args.ckpt_path_given:
        return "the file given"
    return "the newest usable checkpoint of the run; --ckpt best tests the best validation_loss"


def run(args: argparse.Namespace, module=None):
    """Train or test as ``args.mode`` says; ``args`` already validated.

    Args:
        args: Validated arguments (:func:`validate_args`).
        module: The module from :func:`prepare_module` (built here if None).

    Returns:
        The trainer, for callers that want its callbacks or loggers.
    """
    if module is None:
        module = prepare_module(args)
    quiet_lightning(args)
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
    data_module = build_data_module(args, uses_distributed_sampler(trainer), trainer.global_rank)
    if args.mode == "train":
        if trainer.is_global_zero:
            removed = remove_partial_files(Path(args.default_root_dir) / "checkpoints")
            if removed:
                print(f"note: removed {len(removed)} temporary checkpoint file(s) left by an "
                      f"interrupted run ({', '.join(p.name for p in removed)})", flush=True)
        if args.ckpt_path is not None and trainer.is_global_zero:
            print(f"Resuming from {args.ckpt_path}", flush=True)
        trainer.fit(module, datamodule=data_module, ckpt_path=args.ckpt_path)
    else:
        if trainer.is_global_zero:
            print(f"Testing weights from {args.ckpt_path} ({_tested_weights_note(args)})",
                  flush=True)
        trainer.test(module, datamodule=data_module)
    if trainer.is_global_zero:
        _print_summary(args, trainer)
    return trainer


class _QuietDiskFullThreads:
    """A ``threading.excepthook`` that keeps a full disk in a logger's thread to one line.

    TensorBoard writes its event file from a background thread; on a full
    disk that thread dies with a traceback of its own, and the main thread
    fails at its next write, which :func:`run_fault` reports. Other errors
    in threads keep Python's default report.
    """

    def __init__(self):
        import threading

        self.previous = threading.excepthook
        self.errors: List[BaseException] = []

    def __call__(self, hook_args) -> None:
        exc = hook_args.exc_value
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            self.errors.append(exc)
            return
        self.previous(hook_args)


def run_fault(err: BaseException, root: Optional[Path] = None) -> Optional[str]:
    """The one-line message of a fault that stopped a run, or None for anything else.

    Faults are what the run met on the way, not bugs: a non-finite loss or
    gradient (the guard names the file and slice), a checkpoint that could
    not be written, or a full disk while writing logs. Lightning may raise
    a second error while shutting down (a logger flushing to the full
    disk); the chain of exceptions is searched for the first cause.
    """
    from fastmri_growth.pl_modules.checkpoint_io import CheckpointWriteError
    from fastmri_growth.pl_modules.finite_guard import NonFiniteError

    chain, e = [], err
    while e is not None and all(e is not c for c in chain):
        chain.append(e)
        e = e.__cause__ or e.__context__
    for e in reversed(chain):  # the first cause first
        if isinstance(e, CheckpointWriteError):
            return " ".join(str(e.strerror or e).split())  # without "[Errno 28]"
        if isinstance(e, NonFiniteError):
            return one_line(e)
    for e in reversed(chain):
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            where = f" writing {e.filename}" if e.filename else (
                f" of --default_root_dir {root}" if root is not None else "")
            what = "no space left on the device" if e.errno == errno.ENOSPC else \
                "disk quota exceeded"
            return (f"{what}{where}; the checkpoints already written are intact: free space, "
                    "then run the same command again to resume from the newest of them")
    for e in reversed(chain):
        # The run folder became unwritable while the run went on (it was checked at the start).
        if isinstance(e, OSError) and e.errno in (errno.EROFS, errno.EACCES, errno.EPERM) \
                and e.filename and root is not None and _below(e.filename, root):
            return (f"cannot write {e.filename} ({e.strerror}); the checkpoints already written "
                    "are intact: make the folder writable, then run the same command again")
    return None


def _below(path, root: Path) -> bool:
    import os

    path, root = os.path.abspath(str(path)), os.path.abspath(str(root))
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point (``fastmri-growth-train``).

    Args:
        argv: Arguments without the program name; ``None`` reads ``sys.argv``.

    Returns:
        0 on success, 2 on bad input (one line on stderr, nothing written),
        1 when a fault stopped the run (one line on stderr naming it).
    """
    args = parse_args(argv)
    args.ckpt_path_given = args.ckpt_path is not None
    try:
        validate_args(args)
        for note in getattr(args, "checkpoint_notes", []):
            print(note, flush=True)
        if getattr(args, "nothing_to_train", None):
            print(args.nothing_to_train, flush=True)
            return 0
        module = prepare_module(args)
        check_free_space(args, sum(p.numel() for p in module.parameters()))
        reason = never_grows_reason(args, module)
        if reason:
            print(f"{PROG}: warning: this run will never grow: {reason}", file=sys.stderr,
                  flush=True)
        import threading

        hook = threading.excepthook = _QuietDiskFullThreads()
        try:
            run(args, module)
        finally:
            threading.excepthook = hook.previous
    except UsageError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr, flush=True)
        return 2
    except Exception as err:
        message = run_fault(err, getattr(args, "default_root_dir", None))
        if message is None:
            raise
        print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
