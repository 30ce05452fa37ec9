"""Parameter surgery: append slices to a weight along one dimension.

Each surgery builds a NEW ``nn.Parameter`` (same dtype, device and
``requires_grad``) instead of assigning a larger tensor to ``.data``, so
autograd, optimizers and DDP see a clean replacement; the returned
:class:`ParamChange` tells the optimizer-state update what moved where.
"""

from dataclasses import dataclass
from typing import Callable, List, Optional

import torch
from torch import nn


@dataclass
class ParamChange:
    """One parameter replaced by a larger one.

    Attributes:
        module: The module holding the parameter.
        name: Attribute name on ``module`` (``"weight"``).
        old: The parameter before growth.
        new: The parameter after growth.
        dim: The grown dimension.
        offset: Index along ``dim`` of the first new entry.
        count: Number of new entries along ``dim``.
    """

    module: nn.Module
    name: str
    old: nn.Parameter
    new: nn.Parameter
    dim: int
    offset: int
    count: int

    def new_slice(self) -> tuple:
        """Index selecting the new entries of ``new``."""
        idx = [slice(None)] * self.new.dim()
        idx[self.dim] = slice(self.offset, self.offset + self.count)
        return tuple(idx)


def append_slices(
    module: nn.Module,
    name: str,
    dim: int,
    new_slices: torch.Tensor,
    edit_old: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
) -> ParamChange:
    """Append ``new_slices`` to ``module.<name>`` along ``dim``.

    Args:
        module: The module owning the parameter.
        name: Parameter attribute name.
        dim: Dimension to grow.
        new_slices: The entries to append; same shape as the parameter
            except along ``dim``.
        edit_old: Optional function returning a modified copy of the old
            values (used by ``split`` to rescale the duplicated fan-out).

    Returns:
        The :class:`ParamChange` describing the replacement.
    """
    old = getattr(module, name)
    with torch.no_grad():
        base = old.detach().clone()
        if edit_old is not None:
            base = edit_old(base)
        grown = torch.cat([base, new_slices.to(dtype=old.dtype, device=old.device)], dim=dim)
    new = nn.Parameter(grown, requires_grad=old.requires_grad)
    setattr(module, name, new)
    return ParamChange(module, name, old, new, dim, old.shape[dim], new_slices.shape[dim])


def in_dim(conv: nn.Module) -> int:
    """Input-channel dimension of a conv weight.

    Args:
        conv: ``nn.Conv2d`` (weight `(C_out, C_in, k, k)`) or
            ``nn.ConvTranspose2d`` (weight `(C_in, C_out, k, k)`).

    Returns:
        1, or 0 for a transposed conv.
    """
    return 0 if isinstance(conv, nn.ConvTranspose2d) else 1


def zero_fan_out(conv: nn.Module, count: int) -> torch.Tensor:
    """Zero input slices for ``count`` new input channels of ``conv``.

    Args:
        conv: A consumer: ``nn.Conv2d`` (weight `(C_out, C_in, k, k)`) or
            ``nn.ConvTranspose2d`` (weight `(C_in, C_out, k, k)`).
        count: Number of new input channels.

    Returns:
        Zeros `(C_out, count, k, k)`, or `(count, C_out, k, k)` for a
        transposed conv.
    """
    shape = list(conv.weight.shape)
    shape[in_dim(conv)] = count
    return conv.weight.new_zeros(shape)


def add_filters(conv: nn.Conv2d, consumers: List, fan_in: torch.Tensor) -> List[ParamChange]:
    """Append filters with the given fan-in and a ZERO fan-out in every consumer.

    The network output is unchanged: nothing reads the new channels yet.

    Args:
        conv: The grown conv, weight `(C_out, C_in, 3, 3)`.
        consumers: Its :class:`~fastmri_growth.models.topology.Consumer` list.
        fan_in: New filters `(K, C_in, 3, 3)`.

    Returns:
        The changes: the conv's weight first, then one per consumer.
    """
    changes = [append_slices(conv, "weight", 0, fan_in)]
    for c in consumers:
        changes.append(append_slices(c.module, "weight", in_dim(c.module),
                                     zero_fan_out(c.module, fan_in.shape[0])))
    return changes
