"""The update ramp of new weights: their first updates, scaled down.

After a growth event the entries the event added take steps of their own
(see :mod:`.optim`); scaling their updates by ``lr_scale`` during the epoch
they were added in, and linearly from 0 to full over ``steps`` optimizer
steps, was measured to remove the training-loss bump that follows an event
(benchmarks/README.md). The update is scaled after the optimizer step
(``before + scale * (after - before)``), so the scaling is exact for adaptive
optimizers too.

State is keyed by parameter name, so it survives the parameter objects that
growth replaces, is saved in checkpoints as plain tensors and ints, and a
run resumed mid-ramp goes on exactly where the interrupted run was. No
Lightning here: the growth callback calls these methods from its hooks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Iterable, Mapping

import torch

from .surgery import ParamChange


@dataclass
class RampEntry:
    """One parameter's recently added entries.

    Attributes:
        mask: Bool tensor of the parameter's shape, True at new entries.
        steps: Optimizer steps taken since they were added.
        epoch: The epoch of the event that added them.
    """

    mask: torch.Tensor
    steps: int
    epoch: int


class UpdateRamp:
    """Scales the updates of recently added entries (learning-rate scale and linear ramp).

    Args:
        steps: Ramp length in optimizer steps (0: no ramp).
        lr_scale: Scale of the updates during the epoch of the event.
    """

    def __init__(self, steps: int = 0, lr_scale: float = 1.0):
        self.steps = int(steps)
        self.lr_scale = float(lr_scale)
        self.entries: Dict[str, RampEntry] = {}

    @property
    def active(self) -> bool:
        """Whether any update would be scaled at all."""
        return self.steps > 0 or self.lr_scale != 1.0

    def scale(self, entry: RampEntry, epoch: int) -> float:
        """The factor of ``entry``'s next update."""
        scale = self.lr_scale if epoch == entry.epoch else 1.0
        if self.steps:
            scale *= min(1.0, entry.steps / self.steps)
        return scale

    # ------------------------------------------------------------ events
    def grown(self, changes: Iterable[ParamChange], names: Mapping[int, str], epoch: int) -> None:
        """Record the entries that a growth event's changes added.

        A weight can change twice in one event (a conv2 gets an input
        column from its conv1, then output rows), and a weight may still be
        ramping from an earlier event: earlier masks are carried into the
        new shape, and the ramp starts anew for the whole mask.

        Args:
            changes: The event's parameter changes, in the order they were made.
            names: ``id(parameter) -> name`` of the live parameters.
            epoch: The event's epoch.
        """
        if self.active:
            for name, chain in _chains(changes, names):
                self.entries[name] = RampEntry(self._carry(name, chain, added=True), 0, epoch)

    def pruned(self, changes: Iterable[ParamChange], names: Mapping[int, str]) -> None:
        """Masks of recently added entries follow the entries that pruning kept."""
        for name, chain in _chains(changes, names):
            mask = self._carry(name, chain, added=False)
            if mask is not None:
                self.entries[name].mask = mask

    def _carry(self, name: str, chain, added: bool):
        """``name``'s mask through its chain of changes (with the added entries, if ``added``)."""
        earlier = self.entries.get(name)
        mask = None
        if earlier is not None and tuple(earlier.mask.shape) == tuple(chain[0].old.shape):
            mask = earlier.mask
        for ch in chain:
            kept = None if mask is None else \
                ch.carry(mask.to(ch.new.dtype), ch.new.new_zeros(())) > 0.5
            if added:
                mask = ch.new_mask().clone() if kept is None else ch.new_mask() | kept
            else:
                mask = kept
        return mask

    def start_epoch(self) -> None:
        """The learning-rate scale lasts for the event's epoch; a ramp may last longer."""
        self.entries = {n: e for n, e in self.entries.items()
                        if self.steps and e.steps < self.steps}

    # ------------------------------------------------------------ steps
    def snapshot(self, params: Mapping[str, torch.nn.Parameter]) -> Dict[str, torch.Tensor]:
        """The ramping parameters' values before an optimizer step."""
        return {n: params[n].detach().clone() for n in self.entries if n in params}

    @torch.no_grad()
    def after_step(self, params: Mapping[str, torch.nn.Parameter],
                   before: Mapping[str, torch.Tensor], epoch: int) -> None:
        """Scale the step just taken at the new entries of every ramping parameter."""
        for name, old in before.items():
            entry, p = self.entries.get(name), params.get(name)
            if entry is None or p is None or p.shape != old.shape:
                continue
            entry.steps += 1
            scale = self.scale(entry, epoch)
            if entry.mask.device != p.device:  # restored on the CPU, moved since
                entry.mask = entry.mask.to(p.device)
            if scale != 1.0:
                p.copy_(torch.where(entry.mask, old + scale * (p - old), p))

    # ------------------------------------------------------------ state
    def state_dict(self) -> Dict[str, Dict[str, Any]]:
        return {n: {"mask": e.mask.detach().cpu(), "steps": e.steps, "epoch": e.epoch}
                for n, e in self.entries.items()}

    def load_state_dict(self, state: Mapping[str, Mapping[str, Any]],
                        params: Mapping[str, torch.nn.Parameter]) -> None:
        """Restore the entries whose parameter exists with the mask's shape."""
        self.entries = {}
        for name, rec in (state or {}).items():
            p = params.get(name)
            if p is not None and tuple(p.shape) == tuple(rec["mask"].shape):
                self.entries[name] = RampEntry(rec["mask"].to(p.device).bool(), int(rec["steps"]),
                                               int(rec["epoch"]))


def _chains(changes: Iterable[ParamChange], names: Mapping[int, str]):
    """``(name, [changes])`` per live parameter: the changes one tensor went through, in order."""
    chains: Dict[int, list] = {}
    for ch in changes:
        chains[id(ch.new)] = chains.pop(id(ch.old), []) + [ch]
    return [(names[key], chain) for key, chain in chains.items() if key in names]
