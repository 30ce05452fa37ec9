"""Building a training run: the LightningModule, the Trainer and the data module.

Called by :func:`fastmri_growth.cli.train.run` after every check has passed
(:func:`fastmri_growth.cli.train_checks.validate_args`).
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path
from typing import Any, List, Optional

from fastmri_growth.cli.checkpoints import apply_init_weights, checkpoint_callbacks
from fastmri_growth.cli.common import UsageError, one_line
from fastmri_growth.cli.dataset_cache import DATASET_CACHE_FILE
from fastmri_growth.cli.train_parser import (
    PROG,
    data_module_class,
    data_transforms,
    model_arg_names,
    module_class,
)
from fastmri_growth.cli.trainer_flags import trainer_flags

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
    if getattr(args, "compile", False):
        compile_network(module, args.model_type, args.compile_backend)
    return module


def compile_network(module, model_type: str, backend: str) -> None:
    """``--compile``: compile the module's network in place (``nn.Module.compile``).

    In place rather than ``torch.compile(net)``: the network keeps its
    attribute and its state-dict keys (no ``_orig_mod.``), so checkpoints
    load with or without ``--compile``. Growth runs its scoring passes
    eagerly and resets the compiled graphs after every event, so the grown
    network is what the next step compiles.
    """
    from fastmri_growth.pl_modules.model_types import MODEL_TYPES

    getattr(module, MODEL_TYPES[model_type].network_attr).compile(backend=backend)


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
    and (when ``--log_every_n_steps`` was not given, since it is then
    fitted to the epoch) the warning about short epochs. (The growth
    callback gives its logged values a batch size, so Lightning has none
    to guess.)
    """
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero"):
        log = logging.getLogger(name)
        if not any(isinstance(f, _DropTips) for f in log.filters):
            log.addFilter(_DropTips())
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
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
