"""Carry an optimizer across growth and pruning instead of resetting it.

Each changed parameter is swapped for its replacement at the same position
in its param group, and its per-element state follows the parameter's index
map (:class:`~.surgery.ParamChange`): kept entries keep their state, removed
ones lose it, new ones get fresh state. ``step`` and every scalar are kept,
so LR schedulers (which hold the optimizer, not the parameters) carry on.

Fresh second moments matter: zero-padded ones make the first steps of new
weights about ``lr / sqrt(1 - alpha)`` = 10x lr for RMSprop (fastMRI's
default, no bias correction) and several times lr for Adam. New entries are
seeded with the mean of the existing ones of that tensor (``"mean"``), or,
where the growth step knows the new entries' gradient ``g`` (zero-fan-out
slices), with ``g**2`` (``"grad"``: what RMSprop would hold after a long run
at that gradient, so the first step is about lr per entry), or with the
mean over the scoring batches of the per-batch ``g_b**2`` (``"moment"``).
``g`` is the gradient of the mean loss over all scoring batches; a training
step sees one batch, whose gradient also carries the batch-to-batch
variance, so ``g**2`` underestimates what RMSprop's average of squared step
gradients converges to wherever that variance dominates, and those entries
take steps of several times lr until the average catches up (a time
constant of ``1 / (1 - alpha)`` = 100 steps for RMSprop). ``E[g_b**2]``
estimates it directly. Both are floored at the tensor's mean.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Iterable, Optional, Tuple

import torch

from .surgery import ParamChange

#: Per-element state holding squared-gradient averages (seeded, not zeroed).
SECOND_MOMENT_KEYS = ("exp_avg_sq", "max_exp_avg_sq", "square_avg", "sum", "acc_delta")
#: How new second-moment entries are seeded.
SEEDINGS = ("mean", "grad", "moment", "zero")


def seeded_second_moment(mean: torch.Tensor, seeding: str, grad: Optional[torch.Tensor],
                         grad_sq: Optional[torch.Tensor]) -> torch.Tensor:
    """The second moment new entries start with (the rule of :func:`remap_optimizer_state`).

    Args:
        mean: The mean of the tensor's existing second-moment entries (a
            0-dim tensor of the state's dtype and device).
        seeding: One of :data:`SEEDINGS` other than ``"zero"``.
        grad: The new entries' known gradient, or None.
        grad_sq: Their known mean squared per-batch gradient, or None.

    Returns:
        A tensor shaped like the hints (or ``mean`` when there is none).
    """
    if seeding == "moment" and grad_sq is not None:
        hint = grad_sq.to(mean)
        return torch.maximum(hint, mean.expand_as(hint))
    if seeding in ("grad", "moment") and grad is not None:
        # moment without a per-batch second moment (e.g. explicit gradients
        # given by hand): the squared gradient is the best estimate left.
        hint = grad.to(mean).pow(2)
        # Never below the mean: a near-zero gradient entry would otherwise
        # give that weight a huge first step once its gradient appears.
        return torch.maximum(hint, mean.expand_as(hint))
    return mean


def _fill(value: torch.Tensor, change: ParamChange, key: str, seeding: str) -> torch.Tensor:
    if key not in SECOND_MOMENT_KEYS or seeding == "zero" or value.numel() == 0:
        return value.new_zeros(())
    mean = value.new_full((), float(value.mean(dtype=torch.float64)))
    return seeded_second_moment(mean, seeding, change.grad_hint, change.grad_sq_hint)


@dataclass(frozen=True)
class Preconditioner:
    """How an optimizer will scale the first steps of new zero-fan-out slices.

    An adaptive optimizer (RMSprop, Adam, Adagrad) steps each entry by about
    ``lr * g / sqrt(s)``, ``s`` its second moment; for a new slice ``s`` is
    what :func:`remap_optimizer_state` seeds (e.g. ``max(G**2, mean)``). On
    the expected loss the first step then lowers it by about
    ``lr * sum(G**2 / sqrt(s))``, not the ``lr * ||G||**2`` of plain SGD:
    with ``grad`` seeding and gradients above the floor that is
    ``lr * ||G||_1``; with ``moment`` seeding entries whose sign changes
    from batch to batch (large ``E[g**2]``, small ``G**2``) count for little.
    Later steps keep that shape while ``s`` stays near its seed (RMSprop's
    time constant is ``1 / (1 - alpha)`` = 100 steps), and Adam's momentum
    and bias correction scale every entry of a parameter alike. The step
    first folds its own gradient into ``s`` (``alpha * s + (1 - alpha) *
    g**2`` for RMSprop, ``beta2`` for Adam, ``s + g**2`` for Adagrad); the
    gradient of the expected loss, ``G``, stands in for ``g``.

    Attributes:
        floors: ``id(param) -> mean of its existing second-moment entries``
            for every parameter with adaptive state; parameters without
            (plain SGD, or no step taken yet) are divided by 1.
        seeding: The seeding the growth event will use (:data:`SEEDINGS`).
        eps: The optimizer's ``eps`` added to ``sqrt(s)``.
        mix: ``id(param) -> (a, b)``: the step's update ``s <- a * s + b * g**2``.
    """

    floors: Dict[int, float] = field(default_factory=dict)
    seeding: str = "grad"
    eps: float = 1e-8
    mix: Dict[int, Tuple[float, float]] = field(default_factory=dict)

    def denominator(self, weight: torch.Tensor, grad: torch.Tensor,
                    grad_sq: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """``sqrt(s) + eps`` for new entries of ``weight`` with gradient ``grad``.

        Args:
            weight: The consumer's weight parameter (looked up by identity).
            grad: The new entries' gradient (any layout, e.g. `(K, C_out, kh, kw)`).
            grad_sq: Their mean squared per-batch gradient (same shape), or None.

        Returns:
            A tensor shaped like ``grad``, or None where the optimizer does
            not rescale (then the step is ``lr * G``).
        """
        floor = self.floors.get(id(weight))
        if floor is None:
            return None
        mean = grad.new_full((), floor, dtype=torch.float64)
        if self.seeding == "zero":
            # Zero-seeded moments: only the step's own g**2 (below), so the
            # first step is g / sqrt((1 - alpha) g**2): sign steps of 10x lr.
            s = torch.zeros_like(grad, dtype=torch.float64)
        else:
            s = seeded_second_moment(mean, self.seeding, grad.to(torch.float64),
                                     None if grad_sq is None else grad_sq.to(torch.float64))
            s = s.expand_as(grad)
        a, b = self.mix.get(id(weight), (1.0, 0.0))
        s = a * s + b * grad.to(torch.float64).pow(2)
        return (s.sqrt() + self.eps).to(grad.dtype)


def preconditioner_for(optimizer: Optional[torch.optim.Optimizer],
                       seeding: str = "grad") -> Preconditioner:
    """The :class:`Preconditioner` of ``optimizer`` as it is now.

    Args:
        optimizer: Any ``torch.optim`` optimizer, or None (no rescaling).
        seeding: The second-moment seeding of new entries (:data:`SEEDINGS`).

    Raises:
        ValueError: for an unknown ``seeding``.
    """
    if seeding not in SEEDINGS:
        raise ValueError(f"Unknown second-moment seeding {seeding!r}; valid: {', '.join(SEEDINGS)}")
    floors: Dict[int, float] = {}
    mix: Dict[int, Tuple[float, float]] = {}
    eps = 1e-8
    if optimizer is not None:
        for group in optimizer.param_groups:
            eps = float(group.get("eps", eps))
            if "alpha" in group:  # RMSprop
                step_mix = (float(group["alpha"]), 1.0 - float(group["alpha"]))
            elif "betas" in group:  # Adam and its kin
                beta2 = float(group["betas"][1])
                step_mix = (beta2, 1.0 - beta2)
            else:  # Adagrad: a running sum
                step_mix = (1.0, 1.0)
            for p in group["params"]:
                state = optimizer.state.get(p, {})
                for key in SECOND_MOMENT_KEYS:
                    value = state.get(key)
                    if torch.is_tensor(value) and value.shape == p.shape and value.numel():
                        floors[id(p)] = float(value.mean(dtype=torch.float64))
                        mix[id(p)] = step_mix
                        break
    return Preconditioner(floors, seeding, eps, mix)


def remap_optimizer_state(optimizer: torch.optim.Optimizer, changes: Iterable[ParamChange],
                          seeding: str = "mean") -> int:
    """Replace changed parameters in ``optimizer`` and remap their state.

    Args:
        optimizer: Any ``torch.optim`` optimizer holding the old parameters.
        changes: From a growth or pruning report, in the order they happened
            (a parameter changed twice in one event is found by its first
            replacement).
        seeding: New second-moment entries: ``"mean"`` of the existing
            entries, ``"grad"`` (the square of the known gradient where there
            is one, never below the mean), ``"moment"`` (the known mean
            squared per-batch gradient, never below the mean), or ``"zero"``.

    Returns:
        How many parameters were swapped (those the optimizer did not hold
        are skipped: e.g. frozen layers).

    Raises:
        ValueError: for an unknown ``seeding``.
    """
    if seeding not in SEEDINGS:
        raise ValueError(f"Unknown second-moment seeding {seeding!r}; valid: {', '.join(SEEDINGS)}")
    swapped = 0
    for ch in changes:
        for group in optimizer.param_groups:
            for i, p in enumerate(group["params"]):
                if p is ch.old:
                    group["params"][i] = ch.new
                    swapped += 1
        state = optimizer.state.pop(ch.old, None)
        if state is None:
            continue
        new_state = {}
        for key, value in state.items():
            if torch.is_tensor(value) and value.shape == ch.old.shape and value.dim() > 0:
                value = ch.carry(value, _fill(value, ch, key, seeding))
            new_state[key] = value
        optimizer.state[ch.new] = new_state
    return swapped


def grow_optimizer_state(optimizer: torch.optim.Optimizer, changes: Iterable[ParamChange]) -> int:
    """Replace grown parameters in ``optimizer`` and pad their state.

    New second-moment entries are seeded with the mean of the existing ones
    (see :func:`remap_optimizer_state` for other seedings and for pruning).

    Args:
        optimizer: Any ``torch.optim`` optimizer holding the old parameters.
        changes: From :attr:`GrowthReport.changes`.

    Returns:
        How many parameters were swapped.
    """
    return remap_optimizer_state(optimizer, changes, seeding="mean")


def add_params_to_optimizer(optimizer: torch.optim.Optimizer,
                            params: Iterable[torch.nn.Parameter], group: int = 0,
                            before: Optional[torch.nn.Parameter] = None) -> int:
    """Add new parameters to an existing optimizer's param group, keeping all its state.

    For inserted layers (a VarNet cascade): the existing parameters keep
    their state and ``step``; the new ones get none, so the optimizer
    initialises theirs at their first step as for any parameter (Adam's bias
    correction then counts their own steps). The group's hyperparameters
    (lr, betas, weight decay) apply to them, and LR schedulers, which hold
    the optimizer, carry on.

    Optimizer state is saved and restored by position in the groups, and a
    resumed run builds its optimizer from ``module.parameters()``: pass
    ``before`` (the first existing parameter that follows the new ones in
    module order) so that the positions match that order.

    Args:
        optimizer: Any ``torch.optim`` optimizer.
        params: The new parameters.
        group: Index of the param group that takes them.
        before: Insert them right before this parameter of the group
            (None: at the end of the group).

    Returns:
        How many parameters were added.

    Raises:
        ValueError: a bad group index, a parameter the optimizer already
            holds, or a ``before`` that is not in the group; nothing changed.
    """
    params = list(params)
    groups = optimizer.param_groups
    if not isinstance(group, int) or isinstance(group, bool) or not 0 <= group < len(groups):
        raise ValueError(f"group must be a param group index in [0, {len(groups) - 1}], "
                         f"got {group!r}")
    held = {id(p) for g in groups for p in g["params"]}
    for i, p in enumerate(params):
        if not isinstance(p, torch.nn.Parameter):
            raise ValueError(f"params[{i}] is a {type(p).__name__}, not an nn.Parameter")
        if id(p) in held:
            raise ValueError(f"params[{i}] (shape {tuple(p.shape)}) is already in the optimizer")
    target = groups[group]["params"]
    if before is None:
        at = len(target)
    else:
        at = next((i for i, p in enumerate(target) if p is before), None)
        if at is None:
            raise ValueError(f"before (shape {tuple(before.shape)}) is not in param group {group}")
    target[at:at] = params
    return len(params)
