"""Carry an optimizer across growth instead of resetting it.

Each grown parameter is swapped for its replacement at the same position in
its param group, and its per-element state is padded along the grown
dimension. ``step`` and every scalar are kept, so LR schedulers (which hold
the optimizer, not the parameters) carry on.

New second-moment entries are seeded with the mean of the existing ones of
that tensor: zero-padded second moments would make the first steps of new
weights about ``lr / sqrt(1 - alpha)`` = 10x lr for RMSprop (fastMRI's
default, no bias correction) and several times lr for Adam.
"""

from typing import Iterable

import torch

from .surgery import ParamChange

#: Per-element state holding squared-gradient averages (seeded with the mean).
SECOND_MOMENT_KEYS = ("exp_avg_sq", "max_exp_avg_sq", "square_avg", "sum", "acc_delta")


def _pad(value: torch.Tensor, change: ParamChange, key: str) -> torch.Tensor:
    shape = list(value.shape)
    shape[change.dim] = change.count
    if key in SECOND_MOMENT_KEYS and value.numel() > 0:
        fill = value.new_full(shape, float(value.mean(dtype=torch.float64)))
    else:
        fill = value.new_zeros(shape)
    return torch.cat([value, fill], dim=change.dim)


def grow_optimizer_state(optimizer: torch.optim.Optimizer, changes: Iterable[ParamChange]) -> int:
    """Replace grown parameters in ``optimizer`` and pad their state.

    Args:
        optimizer: Any ``torch.optim`` optimizer holding the old parameters.
        changes: From :attr:`GrowthReport.changes`.

    Returns:
        How many parameters were swapped (those the optimizer did not hold
        are skipped: e.g. frozen layers).
    """
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
            if torch.is_tensor(value) and value.shape == ch.old.shape:
                value = _pad(value, ch, key)
            new_state[key] = value
        optimizer.state[ch.new] = new_state
    return swapped
