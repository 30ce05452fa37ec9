"""Checkpoint files of a training run: finding, reading and writing them.

Used by the training command (automatic resume, test mode) and by anything
that has to tell which module wrote a checkpoint before loading it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from fastmri_growth.cli.common import UsageError


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


def read_checkpoint(path: Path) -> Any:
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


def stored_model_type(ckpt: Any) -> Optional[str]:
    """The ``--model-type`` whose module wrote a checkpoint.

    ``"dynamic_varnet"``, ``"dynamic_unet"``, ``"varnet"`` or ``"unet"``,
    decided as :func:`fastmri_growth.pl_modules.load_module` decides it
    (:func:`fastmri_growth.pl_modules.checkpoint_model_type`). Returns None
    for a checkpoint that holds none of them.
    """
    from fastmri_growth.pl_modules import checkpoint_model_type

    return checkpoint_model_type(ckpt)


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
