"""Checkpoint files that survive full disks and kills, and top-k that stays top-k.

:class:`AtomicCheckpointIO` (a Lightning ``CheckpointIO`` plugin) writes a
checkpoint to a temporary file in the checkpoint's own folder, flushes and
fsyncs it, then renames it over the target: a reader sees the old file or
the new one, never half of one, and nothing is staged in ``$TMPDIR`` (a
move from there to another filesystem is a copy, not an atomic rename). A
failed write (a full disk) removes the temporary file and raises
:class:`CheckpointWriteError` naming the folder; the checkpoints already
there are untouched, so the next run resumes from the newest of them.

:class:`TopKCheckpoint` is Lightning's ``ModelCheckpoint`` that, after each
save, deletes the files of its own pattern that are no longer among its top
k (files left by an interrupted or resumed run would otherwise pile up).
"""
from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.plugins.io import TorchCheckpointIO


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (the folder's earlier checkpoints are intact)."""


def atomic_torch_save(obj: Any, path: os.PathLike) -> None:
    """``torch.save`` to a temporary file beside ``path``, fsync, rename over ``path``.

    Raises:
        CheckpointWriteError: the write failed (a full disk, say); nothing is left behind.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        try:  # make the rename itself durable
            fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:
            pass
    except BaseException as err:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        if isinstance(err, OSError):
            reason = "no space left on the device" if err.errno == errno.ENOSPC else (
                err.strerror or type(err).__name__)
            raise CheckpointWriteError(
                err.errno, f"cannot write checkpoint {path} ({reason}); the checkpoints "
                f"already in {path.parent} are intact: free space, then run the same command "
                "again to resume from the newest of them") from None
        raise


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint IO with atomic, fsynced, same-folder writes."""

    def save_checkpoint(self, checkpoint: Dict[str, Any], path, storage_options: Optional[Any] = None
                        ) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_torch_save(checkpoint, path)


class TopKCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose folder holds at most its top-k files of its own pattern."""

    @property
    def state_key(self) -> str:
        """``ModelCheckpoint``'s key, so checkpoints written with either class resume with the other."""
        key = super().state_key
        return "ModelCheckpoint" + key[len(type(self).__qualname__):]

    def _save_checkpoint(self, trainer, filepath: str) -> None:
        super()._save_checkpoint(trainer, filepath)
        # Only the default file names ("epoch=E-step=S.ckpt") are known to be ours.
        if trainer.is_global_zero and self.monitor is not None and self.save_top_k >= 0 \
                and self.filename is None:
            self._remove_stale(filepath)

    def _remove_stale(self, just_saved: str) -> None:
        if not self.dirpath or not Path(self.dirpath).is_dir():
            return
        keep = {Path(p).resolve() for p in self.best_k_models} | {Path(just_saved).resolve()}
        if self.last_model_path:
            keep.add(Path(self.last_model_path).resolve())
        for p in Path(self.dirpath).glob("epoch=*.ckpt"):
            if p.resolve() not in keep:
                p.unlink(missing_ok=True)


class EveryEpochCheckpoint(ModelCheckpoint):
    """A monitor-less ``ModelCheckpoint`` (``last.ckpt``) written at the end of every training epoch.

    Lightning's ``ModelCheckpoint`` saves after validation whenever
    ``check_val_every_n_epoch`` is not 1, so epochs without validation (all
    of them when it exceeds ``max_epochs``) wrote nothing, and a finished
    run could end without any checkpoint. This one still saves after each
    validation as before, and also at the end of every training epoch that
    no validation saved (Lightning calls ``on_train_epoch_end`` after the
    epoch's validation, and also for the last epoch of ``max_steps``); a
    run resumed from such a file starts with the next epoch, as Lightning
    reads it.
    """

    @property
    def state_key(self) -> str:
        """``ModelCheckpoint``'s key, so checkpoints written with either class resume with the other."""
        key = super().state_key
        return "ModelCheckpoint" + key[len(type(self).__qualname__):]

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        # Skipped when this step is already saved (by the epoch's validation).
        if self.monitor is None and not self._should_skip_saving_checkpoint(trainer):
            self._save_topk_checkpoint(trainer, self._monitor_candidates(trainer))
