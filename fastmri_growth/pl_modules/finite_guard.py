"""FiniteGuard: stop at the first non-finite loss or gradient, naming the data.

One broken slice (NaN in a file's k-space) poisons every weight in a single
optimizer step; the checkpoint written at the end of that epoch then holds
the poisoned network as its "best", and growth's scoring pass is the first
to complain - about growth. The guard checks every training step before the
optimizer applies it (``on_before_optimizer_step``: the gradients exist, the
weights are still the step's inputs) and every validation output, and either

* raises :class:`NonFiniteError` naming the files and slices of the batch
  (the default: nothing of the poisoned step is applied, and no checkpoint
  of it is written), or
* with ``skip=True``, drops the step's gradients so the optimizer leaves the
  weights alone, counts the batch and reports every skipped file and slice
  at the end of the epoch (for data with a few broken slices). Growth and
  pruning events of a :class:`~.growth_callback.GrowthCallback` then score
  without the batches whose inputs are not finite (named in a line), instead
  of stopping the run.

Validation outputs are checked in both modes: a non-finite one stops the run
before that validation's checkpoint is written. Test outputs too, before the
volume's reconstruction file is written.
"""
from __future__ import annotations

from collections import Counter
from typing import Any, List, Sequence

import pytorch_lightning as pl
import torch


class NonFiniteError(RuntimeError):
    """A training or validation batch produced a non-finite loss, gradient or output."""


def describe_batch(batch: Any) -> str:
    """``"file1000001.h5 slice 3, ..."`` for a fastMRI sample batch (else "the batch")."""
    fnames = getattr(batch, "fname", None)
    slices = getattr(batch, "slice_num", None)
    if fnames is None:
        return "the batch"
    if isinstance(fnames, str):
        fnames = [fnames]
    nums = slices.tolist() if torch.is_tensor(slices) else list(slices or [])
    parts = [f"{f} slice {int(s)}" if i < len(nums) else str(f)
             for i, (f, s) in enumerate(zip(fnames, nums + [None] * len(fnames)))]
    return ", ".join(parts)


def batch_is_finite(batch: Any) -> bool:
    """Whether every floating-point tensor of a batch (a sample tuple, dict or tensor) is finite."""
    if torch.is_tensor(batch):
        return not batch.is_floating_point() or bool(torch.isfinite(batch).all())
    if isinstance(batch, dict):
        return all(batch_is_finite(v) for v in batch.values())
    if isinstance(batch, (list, tuple)):
        return all(batch_is_finite(v) for v in batch)
    return True


def summarize(where: Sequence[str]) -> str:
    """``"a.h5 slice 1 (x3); b.h5 slice 0"``: each batch once, with its count."""
    counts = Counter(where)
    return "; ".join(f"{w} (x{n})" if n > 1 else w for w, n in counts.items())


class FiniteGuard(pl.Callback):
    """Checks each training step's loss and gradients, and validation outputs.

    Args:
        skip: Skip non-finite training batches (counted and reported) instead
            of stopping.
    """

    def __init__(self, skip: bool = False):
        super().__init__()
        self.skip = bool(skip)
        self.skipped: List[str] = []
        self.skipped_scoring: List[str] = []
        self._batch: Any = None
        self._epoch_skipped = 0

    def setup(self, trainer, pl_module, stage: str) -> None:
        """With ``skip``: growth and pruning score without non-finite batches."""
        if not self.skip:
            return
        # A GrowthCallback by its hook: growth_callback imports this module.
        for cb in trainer.callbacks:
            if hasattr(cb, "batch_filter") and cb.batch_filter is None:
                cb.batch_filter = self.finite_scoring_batches

    def finite_scoring_batches(self, batches: List[Any], epoch: int, what: str,
                               pl_module) -> List[Any]:
        """A growth callback's ``batch_filter``: drops the non-finite scoring batches.

        A growth event scores on the epoch's first training batch and a few
        drawn at random; one broken slice among them would otherwise stop a
        run that was told to skip broken slices. An event left with no
        batch does not happen (the schedule's next event comes as usual).
        """
        kept = [b for b in batches if batch_is_finite(b)]
        dropped = [describe_batch(b) for b in batches if not batch_is_finite(b)]
        if dropped:
            self.skipped_scoring.extend(dropped)
            pl_module.print(
                f"[epoch {epoch}] left {len(dropped)} scoring batch(es) with non-finite "
                f"inputs out of the {what} event: {summarize(dropped)}"
                + ("" if kept else f"; no batch left, so no {what} this epoch"))
        return kept

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self._batch = batch

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        bad = [name for name, p in pl_module.named_parameters()
               if p.grad is not None and not torch.isfinite(p.grad).all()]
        if not bad:
            return
        where = describe_batch(self._batch)
        if not self.skip:
            raise NonFiniteError(
                f"non-finite gradient in {len(bad)} weight tensor(s) (first: {bad[0]}) at "
                f"epoch {trainer.current_epoch}, step {trainer.global_step}, on {where}: the "
                "data hold NaN or Inf, or training diverged; no weight was updated with it. "
                "Fix or remove the file, lower the learning rate, or pass "
                "--skip-nonfinite-batches true"
            )
        # Leave every weight as it is: optimizers skip parameters without a gradient.
        for group in optimizer.param_groups:
            for p in group["params"]:
                p.grad = None
        self.skipped.append(where)
        self._epoch_skipped += 1

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self._epoch_skipped:
            pl_module.print(
                f"[epoch {trainer.current_epoch}] skipped {self._epoch_skipped} batch(es) with "
                f"non-finite gradients: {summarize(self.skipped[-self._epoch_skipped:])}")
        # batch_size: one value per epoch; Lightning would guess it from a batch and warn.
        pl_module.log("train/skipped_batches", float(len(self.skipped)), on_step=False,
                      on_epoch=True, sync_dist=True, batch_size=1)
        self._epoch_skipped = 0

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        if trainer.sanity_checking and not isinstance(outputs, dict):
            return
        values = [outputs.get(k) for k in ("val_loss", "output")] if isinstance(outputs, dict) \
            else [outputs]
        for v in values:
            if torch.is_tensor(v) and not torch.isfinite(v).all():
                raise NonFiniteError(
                    f"non-finite validation output on {describe_batch(batch)}: the validation "
                    "data hold NaN or Inf, or the network diverged; no checkpoint was written "
                    "for this validation. Fix or remove the file"
                )

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int,
                          dataloader_idx: int = 0) -> None:
        """Stops before a non-finite reconstruction reaches a submission file."""
        output = outputs.get("output") if isinstance(outputs, dict) else outputs
        if not torch.is_tensor(output) and output is not None:
            try:  # fastMRI's test_step returns numpy
                output = torch.as_tensor(output)
            except (TypeError, ValueError, RuntimeError):
                return
        if torch.is_tensor(output) and output.is_floating_point() and \
                not torch.isfinite(output).all():
            raise NonFiniteError(
                f"non-finite reconstruction of {describe_batch(batch)}: the test data hold NaN "
                "or Inf, or the weights are not finite; its file was not written. Fix or remove "
                "the file")

    def state_dict(self) -> dict:
        return {"skipped": list(self.skipped), "skipped_scoring": list(self.skipped_scoring)}

    def load_state_dict(self, state_dict: dict) -> None:
        self.skipped = list(state_dict.get("skipped", []))
        self.skipped_scoring = list(state_dict.get("skipped_scoring", []))
