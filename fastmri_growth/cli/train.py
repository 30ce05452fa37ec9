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
  usable one automatically (broken ones are skipped and named; when every
  one is broken the run is refused, not started afresh over them); test mode
  loads it, or ``--ckpt last|best|PATH`` (or ``--ckpt_path``).
- ``lightning_logs/version_N/``: TensorBoard logs.
- ``csv_logs/version_N/metrics.csv``: the same metrics as CSV.
- ``reconstructions/*.h5``: test-mode reconstructions in the leaderboard
  format (one file per volume, dataset ``reconstruction``).
- ``.fastmri-growth.lock``: exists while a run (either mode) uses the
  folder; a second run on the same folder is refused, naming the pid of
  the one that holds it (:mod:`fastmri_growth.cli.run_lock`).

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
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from fastmri_growth.cli.checkpoints import remove_partial_files
from fastmri_growth.cli.common import UsageError, one_line
from fastmri_growth.cli.dataset_cache import DATASET_CACHE_FILE, prune_dataset_cache
from fastmri_growth.cli.run_checks import check_free_space
from fastmri_growth.cli.run_lock import RunLock, is_launching_process
from fastmri_growth.cli.train_checks import never_grows_reason, validate_args
from fastmri_growth.cli.train_parser import PROG, parse_args
from fastmri_growth.cli.train_setup import (
    build_data_module,
    build_trainer,
    cap_num_workers,
    prepare_module,
    quiet_lightning,
    uses_distributed_sampler,
)

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
        last_ckpt = ckpt_dir / "last.ckpt"
        if last_ckpt.is_file():
            lines.append(f"  last checkpoint:  {last_ckpt} (the final state; resume "
                         "continues from it)")
        last = validation_summary(trainer.callback_metrics)
        lines.append(f"  last validation:  {last or 'none ran'}")
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
    gradient (the guard names the file and slice), a data file that went
    missing or was truncated (naming it), a checkpoint that could
    not be written, or a full disk while writing logs. Lightning may raise
    a second error while shutting down (a logger flushing to the full
    disk); the chain of exceptions is searched for the first cause.
    """
    from fastmri_growth.pl_modules.checkpoint_io import CheckpointWriteError
    from fastmri_growth.pl_modules.data_module import DataReadError
    from fastmri_growth.pl_modules.finite_guard import NonFiniteError

    chain, e = [], err
    while e is not None and all(e is not c for c in chain):
        chain.append(e)
        e = e.__cause__ or e.__context__
    for e in reversed(chain):  # the first cause first
        if isinstance(e, CheckpointWriteError):
            return " ".join(str(e.strerror or e).split())  # without "[Errno 28]"
        if isinstance(e, (NonFiniteError, DataReadError)):
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
    lock = None
    try:
        validate_args(args)
        if is_launching_process():
            # Before anything is written: refused while another run holds the folder.
            lock = RunLock(args.default_root_dir).acquire()
            if lock.note:
                print(lock.note, flush=True)
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
    finally:
        if lock is not None:
            lock.release()
    return 0


if __name__ == "__main__":
    sys.exit(main())
