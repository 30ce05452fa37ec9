"""Parameter surgery: every change of a weight's shape as an old -> new index map.

One primitive, :func:`remap`, builds a NEW ``nn.Parameter`` (same dtype,
device and ``requires_grad``) whose entries along one dimension are taken
from the old parameter by an index map (``-1``: a new entry). Growth inserts
``-1`` entries, pruning drops indices, and the returned :class:`ParamChange`
tells the optimizer-state update (:mod:`.optim`) exactly what moved where.
Never assigning a larger tensor to ``.data`` keeps autograd, optimizers and
DDP consistent.

On top of it, per-site operations on the output channels of a site conv and
the matching input slices of every consumer (:class:`~.net.SiteSpec`):
:func:`add_output_channels` and :func:`remove_output_channels`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import torch
from torch import nn

from .net import SiteSpec


@dataclass
class ParamChange:
    """One parameter replaced by a reshaped one.

    Attributes:
        module: The module holding the parameter.
        name: Attribute name on ``module`` (``"weight"``, ``"bias"``).
        old: The parameter before.
        new: The parameter after.
        dim: The dimension whose size changed.
        index_map: `(new.shape[dim],)` int64: for each new index, the old index
            it was copied from, or -1 for a new entry.
        grad_hint: Optional gradient of the new entries (the new entries of
            ``new`` gathered along ``dim``), when the growth step knows it
            (zero-fan-out slices: their closed-form gradient). Used to seed
            optimizer second moments.
        grad_sq_hint: Optional mean squared per-batch gradient of the new
            entries (same layout as ``grad_hint``), when known.
    """

    module: nn.Module
    name: str
    old: nn.Parameter
    new: nn.Parameter
    dim: int
    index_map: torch.Tensor
    grad_hint: Optional[torch.Tensor] = None
    grad_sq_hint: Optional[torch.Tensor] = None

    @property
    def new_positions(self) -> torch.Tensor:
        """Indices along ``dim`` of the new entries."""
        return (self.index_map < 0).nonzero().flatten()

    @property
    def offset(self) -> int:
        """Index of the first new entry (growth inserts one contiguous block)."""
        pos = self.new_positions
        return int(pos[0]) if pos.numel() else self.new.shape[self.dim]

    @property
    def count(self) -> int:
        """Number of new entries."""
        return int(self.new_positions.numel())

    def new_slice(self) -> tuple:
        """Index selecting the new entries of ``new`` (they are contiguous after growth)."""
        idx = [slice(None)] * self.new.dim()
        idx[self.dim] = slice(self.offset, self.offset + self.count)
        return tuple(idx)

    def new_mask(self) -> torch.Tensor:
        """Bool tensor shaped like ``new``: True at the new entries."""
        shape = [1] * self.new.dim()
        shape[self.dim] = -1
        return (self.index_map < 0).to(self.new.device).view(shape).expand_as(self.new)

    def carry(self, value: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
        """A tensor shaped like ``old`` remapped like the parameter.

        Args:
            value: Shaped like ``old`` (e.g. an optimizer state buffer).
            fill: Values for the new entries: shaped like ``value`` with
                ``count`` entries along ``dim`` (or broadcastable to it).

        Returns:
            Shaped like ``new``.
        """
        return _take(value, self.dim, self.index_map.to(value.device), fill)


def _take(value: torch.Tensor, dim: int, index_map: torch.Tensor,
          fill: Optional[torch.Tensor] = None) -> torch.Tensor:
    shape = list(value.shape)
    shape[dim] = index_map.numel()
    out = value.new_zeros(shape)
    keep = index_map >= 0
    kept_pos = keep.nonzero().flatten()
    if kept_pos.numel():
        out.index_copy_(dim, kept_pos, value.index_select(dim, index_map[keep]))
    new_pos = (~keep).nonzero().flatten()
    if fill is not None and new_pos.numel():
        fshape = list(shape)
        fshape[dim] = new_pos.numel()
        out.index_copy_(dim, new_pos, fill.to(out).expand(fshape).contiguous())
    return out


def insert_map(size: int, position: int, count: int, device=None) -> torch.Tensor:
    """Index map that inserts ``count`` new entries before ``position``."""
    old = torch.arange(size, device=device)
    new = torch.full((count,), -1, dtype=torch.long, device=device)
    return torch.cat([old[:position], new, old[position:]])


def keep_map(size: int, remove: Sequence[int], device=None) -> torch.Tensor:
    """Index map that drops the indices in ``remove``."""
    drop = set(int(i) for i in remove)
    return torch.tensor([i for i in range(size) if i not in drop], dtype=torch.long, device=device)


def remap(
    module: nn.Module,
    name: str,
    dim: int,
    index_map: torch.Tensor,
    new_values: Optional[torch.Tensor] = None,
    edit_old: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    grad_hint: Optional[torch.Tensor] = None,
    grad_sq_hint: Optional[torch.Tensor] = None,
) -> ParamChange:
    """Replace ``module.<name>`` by a parameter remapped along ``dim``.

    Args:
        module: The module owning the parameter.
        name: Parameter attribute name.
        dim: The dimension to remap.
        index_map: `(new_size,)`: old index per new index, -1 for new entries.
        new_values: Values of the new entries (shape of the parameter with
            the number of new entries along ``dim``); zeros if None.
        edit_old: Optional function returning a modified copy of the old
            values before they are copied (used by ``split``).
        grad_hint: See :attr:`ParamChange.grad_hint`.
        grad_sq_hint: See :attr:`ParamChange.grad_sq_hint`.

    Returns:
        The :class:`ParamChange`.
    """
    old = getattr(module, name)
    index_map = index_map.to(device=old.device, dtype=torch.long)
    with torch.no_grad():
        base = old.detach()
        if edit_old is not None:
            base = edit_old(base.clone())
        values = _take(base, dim, index_map, new_values)
    new = nn.Parameter(values, requires_grad=old.requires_grad)
    setattr(module, name, new)
    return ParamChange(module, name, old, new, dim, index_map, grad_hint, grad_sq_hint)


def add_output_channels(
    spec: SiteSpec,
    rows: torch.Tensor,
    fan_out: Optional[List[torch.Tensor]] = None,
    fan_out_grads: Optional[List[torch.Tensor]] = None,
    fan_out_grad_sq: Optional[List[torch.Tensor]] = None,
) -> List[ParamChange]:
    """Append output filters to a site conv and input slices to its consumers.

    With a zero fan-out (the default) the network output is unchanged:
    nothing reads the new channels yet.

    Args:
        spec: The site, as the network describes it now.
        rows: Fan-ins of the new filters `(K, C_in, kh, kw)` (rows convention,
            also for a transposed conv).
        fan_out: Per consumer, the new input slices, candidate first:
            `(K, C_out, kh, kw)` for either consumer kind; zeros if None.
        fan_out_grads: Per consumer, the gradient of those slices (same
            shapes), when known; kept as :attr:`ParamChange.grad_hint`.
        fan_out_grad_sq: Per consumer, the mean squared per-batch gradient
            of those slices, when known; kept as :attr:`ParamChange.grad_sq_hint`.

    Returns:
        The changes: the site conv's weight (and bias) first, then one per consumer.
    """
    k = rows.shape[0]
    width = spec.width
    conv = spec.conv
    dev = conv.weight.device
    weight_rows = rows.transpose(0, 1) if spec.transposed else rows
    changes = [remap(conv, "weight", spec.out_dim, insert_map(width, width, k, dev), weight_rows)]
    if getattr(conv, "bias", None) is not None:
        changes.append(remap(conv, "bias", 0, insert_map(width, width, k, dev)))
    for i, c in enumerate(spec.consumers):
        size = c.module.weight.shape[c.in_dim]
        values = None if fan_out is None else fan_out[i].movedim(0, c.in_dim)
        hint = None if fan_out_grads is None else fan_out_grads[i].movedim(0, c.in_dim)
        hint_sq = None if fan_out_grad_sq is None else fan_out_grad_sq[i].movedim(0, c.in_dim)
        changes.append(remap(c.module, "weight", c.in_dim,
                             insert_map(size, c.channel_offset + width, k, dev), values,
                             grad_hint=hint, grad_sq_hint=hint_sq))
    return changes


def remove_output_channels(spec: SiteSpec, indices: Sequence[int]) -> List[ParamChange]:
    """Remove output filters of a site conv and their input slices in every consumer.

    Args:
        spec: The site, as the network describes it now.
        indices: Filters to remove, in ``range(spec.width)``.

    Returns:
        The changes, as for :func:`add_output_channels`.
    """
    width = spec.width
    conv = spec.conv
    dev = conv.weight.device
    changes = [remap(conv, "weight", spec.out_dim, keep_map(width, indices, dev))]
    if getattr(conv, "bias", None) is not None:
        changes.append(remap(conv, "bias", 0, keep_map(width, indices, dev)))
    for c in spec.consumers:
        size = c.module.weight.shape[c.in_dim]
        changes.append(remap(c.module, "weight", c.in_dim,
                             keep_map(size, [c.channel_offset + i for i in indices], dev)))
    return changes


def compose_maps(first: Optional[torch.Tensor], second: torch.Tensor) -> torch.Tensor:
    """The index map of applying ``first`` then ``second`` (old -> newest)."""
    if first is None:
        return second
    out = torch.full_like(second, -1)
    keep = second >= 0
    out[keep] = first.to(second.device)[second[keep]]
    return out


def fit_rows(rows: torch.Tensor, in_map: Optional[torch.Tensor]) -> torch.Tensor:
    """Fan-in rows proposed for the input channels a conv had, laid out for the ones it has now.

    Earlier surgeries of the same growth event may have added input channels
    to a site conv (its producer grew too); proposed filters give them a zero
    weight, which keeps the proposal's function.

    Args:
        rows: `(K, C_in_before, kh, kw)`.
        in_map: The composed index map of the conv's input dimension since
            the proposal was made (None: unchanged).

    Returns:
        `(K, C_in_now, kh, kw)`.
    """
    if in_map is None:
        return rows
    return _take(rows, 1, in_map.to(rows.device), None)
