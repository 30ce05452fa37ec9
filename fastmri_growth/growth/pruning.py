"""Pruning: remove output filters where they are not needed.

Removing filter ``j`` of a site conv removes its output channel and its
input slice ``V_jc`` in every consumer ``c`` (the same consumer map as
growth: skips, pooled encoder convs, transposed convs); the optimizer state
follows the same index map (:func:`~.optim.remap_optimizer_state`). Removing
a filter whose fan-out is zero is exact: nothing read it.

Criteria (one function each, in :data:`PRUNE_CRITERIA`; the filters with
the lowest :func:`removal_key` go first):

* ``magnitude``: the norm of the filter's fan-out over all consumers, the
  classic "low-magnitude filter". Its fan-in norm is no measure at all here:
  InstanceNorm divides it out. Fan-out magnitude ignores how active the
  channel is, and is not comparable across sites.
* ``taylor``: the first-order change of the loss when the filter is removed,
  ``dL_j = -sum_c <dL/dV_jc, V_jc>`` (setting its fan-out to zero), from one
  statistics pass over the given batches. The filters whose predicted change
  is smallest in size go first, whatever its sign (Molchanov et al. 2017):
  near a trained state the first-order term is small against the
  second-order one, so a removal it says lowers the loss is no safer than
  one it says raises it. Measured (benchmarks/README.md, quality study):
  ranking by the signed change removed filters whose removal doubled the
  training loss. It is a loss change, so it is comparable across sites.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

import torch
from torch import nn

from .engine import mean_loss
from .net import SiteSpec
from .sites import Conv, Site, as_site, width_key
from .statistics import LossFn, ReduceFn, collect
from .surgery import ParamChange, remove_output_channels


def _fan_out_rows(spec: SiteSpec) -> List[torch.Tensor]:
    """Per consumer, its input slices of the site's filters, filter first `(C, ...)`."""
    out = []
    for c in spec.consumers:
        w = c.module.weight.detach().movedim(c.in_dim, 0)
        out.append(w[c.channel_offset:c.channel_offset + spec.width])
    return out


def magnitude_scores(spec: SiteSpec, stats=None) -> torch.Tensor:
    """Norm of each filter's fan-out over all consumers, `(C,)`."""
    total = sum(r.flatten(1).double().pow(2).sum(dim=1) for r in _fan_out_rows(spec))
    return total.sqrt()


def taylor_scores(spec: SiteSpec, stats) -> torch.Tensor:
    """First-order loss change of removing each filter, `(C,)` (from consumer gradients)."""
    total = torch.zeros(spec.width, dtype=torch.float64)
    for c, grad in zip(spec.consumers, stats.consumer_grads):
        g = grad.movedim(c.in_dim, 0)[c.channel_offset:c.channel_offset + spec.width]
        v = c.module.weight.detach().movedim(c.in_dim, 0)[c.channel_offset:c.channel_offset + spec.width]
        total = total - (g.double() * v.double()).flatten(1).sum(dim=1).cpu()
    return total


#: criterion name -> (score function, needs batches).
PRUNE_CRITERIA: Dict[str, tuple] = {
    "magnitude": (magnitude_scores, False),
    "taylor": (taylor_scores, True),
}


def removal_key(criterion: str, scores: torch.Tensor) -> torch.Tensor:
    """What orders a criterion's filters for removal (lowest first), `(C,)`.

    ``magnitude``: the score; ``taylor``: the score's absolute value (the
    size of the predicted loss change).
    """
    return scores.abs() if criterion == "taylor" else scores


def check_criterion(name: Any) -> str:
    """Raise ValueError unless ``name`` is a pruning criterion."""
    if not isinstance(name, str) or name not in PRUNE_CRITERIA:
        raise ValueError(f"Unknown pruning criterion {name!r}; valid: {', '.join(PRUNE_CRITERIA)}")
    return name


@dataclass
class PruneReport:
    """What one pruning step at one site did.

    Attributes:
        layer_idx: Pruned layer id.
        conv_idx: 0, 1 or ``"t"``.
        criterion: ``"magnitude"`` or ``"taylor"``.
        removed: The removed filters' indices (before removal), first to go first.
        scores: Every filter's score before removal.
        size_before: ``get_network_size()`` before.
        size_after: ``get_network_size()`` after.
        params_before: Parameter count before.
        params_after: Parameter count after.
        seconds: Wall time.
        loss_before: Mean loss on the batches before (NaN without batches).
        loss_after: Mean loss on the batches after (NaN without batches).
        net: The sub-network of a composite backbone.
        changes: The parameter replacements (for the optimizer update).
    """

    layer_idx: str
    conv_idx: Conv
    criterion: str
    removed: List[int]
    scores: List[float]
    size_before: Dict[str, Any]
    size_after: Dict[str, Any]
    params_before: int
    params_after: int
    seconds: float
    loss_before: float = float("nan")
    loss_after: float = float("nan")
    net: str = ""
    changes: List[ParamChange] = field(default_factory=list, repr=False, compare=False)

    @property
    def site_id(self) -> Site:
        return Site(self.layer_idx, self.conv_idx, self.net)

    @property
    def site(self) -> str:
        return self.site_id.label

    def _width(self, size) -> int:
        node = size
        if self.net:
            for part in self.net.split("/"):
                node = node[part]
        return node[self.layer_idx][width_key(self.conv_idx)]

    def __str__(self) -> str:
        what = "filter" if len(self.removed) == 1 else "filters"
        vals = ", ".join(f"{self.scores[i]:.4g}" for i in self.removed)
        line = (f"Pruning {self.site}: removed {what} {self.removed} ({self.criterion} {vals}), "
                f"{self._width(self.size_before)} -> {self._width(self.size_after)} filters")
        if self.loss_after == self.loss_after:
            line += f" (loss {self.loss_before:.4g} -> {self.loss_after:.4g})"
        return line


def _num_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def score_filters(
    net: nn.Module,
    sites: Sequence[Union[Site, tuple, str]],
    criterion: str = "magnitude",
    batches: Optional[Iterable[Any]] = None,
    loss_fn: Optional[LossFn] = None,
    reduce_fn: Optional[ReduceFn] = None,
) -> Dict[Site, torch.Tensor]:
    """Every filter's pruning score at ``sites`` (one statistics pass for ``taylor``).

    Returns:
        ``{site: scores (C,)}``, float64 on the CPU (:func:`removal_key` orders
        them for removal).
    """
    check_criterion(criterion)
    score_fn, needs_batches = PRUNE_CRITERIA[criterion]
    specs = [net.site_spec(as_site(s)) for s in sites]
    stats = None
    if needs_batches:
        if batches is None or loss_fn is None:
            raise ValueError(f"criterion {criterion!r} needs batches and a loss")
        stats = collect(net, specs, list(batches), loss_fn,
                        want_consumer_grads=[s.site for s in specs], reduce_fn=reduce_fn)
    return {spec.site: score_fn(spec, stats.sites[spec.site] if stats else None).double().cpu()
            for spec in specs}


def prune(
    net: nn.Module,
    removals: Dict[Union[Site, tuple, str], Union[int, Sequence[int]]],
    criterion: str = "magnitude",
    batches: Optional[Iterable[Any]] = None,
    loss_fn: Optional[LossFn] = None,
    reduce_fn: Optional[ReduceFn] = None,
    min_width: int = 1,
    measure_loss: bool = True,
) -> List[PruneReport]:
    """Remove filters at one or more sites in one event (first: lowest :func:`removal_key`).

    Args:
        net: A GrowableNet.
        removals: ``{site: number of filters to remove}``, or ``{site: [filter
            indices]}`` to remove exactly those (chosen from
            :func:`score_filters`, say).
        criterion: A :data:`PRUNE_CRITERIA` name.
        batches: Batches for ``loss_fn`` (``taylor`` needs them; with them the
            report gives the loss before and after).
        loss_fn: ``loss_fn(batch) -> scalar``.
        reduce_fn: Mean over DDP ranks (every rank removes the same filters).
        min_width: No conv goes below this many filters.
        measure_loss: Measure the loss after removal (one forward per batch).

    Returns:
        One :class:`PruneReport` per site, in the order given.

    Raises:
        ValueError: bad arguments (every check runs before anything changes).
    """
    start = time.perf_counter()
    check_criterion(criterion)
    score_fn, needs_batches = PRUNE_CRITERIA[criterion]
    if not isinstance(min_width, int) or isinstance(min_width, bool) or min_width < 1:
        raise ValueError(f"min_width must be an int >= 1, got {min_width!r}")
    items = [(as_site(s), n) for s, n in removals.items()]
    if not items:
        raise ValueError("prune needs at least one site")
    specs = [net.site_spec(s) for s, _ in items]
    for (site, n), spec in zip(items, specs):
        if isinstance(n, (list, tuple)):
            bad = [i for i in n if not isinstance(i, int) or not 0 <= i < spec.width]
            if bad or len(set(n)) != len(n) or not n:
                raise ValueError(f"filters to remove at {site.label} must be distinct indices in "
                                 f"[0, {spec.width - 1}], got {list(n)!r}")
            n = len(n)
        elif not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"n_remove must be an int >= 1, got {n!r} for {site.label}")
        if spec.width - n < min_width:
            raise ValueError(
                f"removing {n} of the {spec.width} filters of {site.label} would leave "
                f"{spec.width - n}, below the minimum width {min_width}; remove at most "
                f"{max(spec.width - min_width, 0)}"
            )
    if batches is not None:
        batches = list(batches)
        if not batches:
            raise ValueError("prune got an empty list of batches")
        if loss_fn is None:
            raise ValueError("prune with batches needs loss_fn(batch) -> loss")
    elif needs_batches and not all(isinstance(n, (list, tuple)) for _, n in items):
        raise ValueError(f"criterion {criterion!r} needs batches (and a loss) to compute the "
                         "loss gradients; pass batch_data and target_data")

    stats = None
    loss_before = float("nan")
    if batches is not None:
        stats = collect(net, specs, batches, loss_fn,
                        want_consumer_grads=[s.site for s in specs] if needs_batches else (),
                        reduce_fn=reduce_fn)
        loss_before = stats.loss
    choices = []
    for (site, n), spec in zip(items, specs):
        if stats is None and needs_batches:  # explicit indices, no batches: no scores
            choices.append((site, list(n), [float("nan")] * spec.width))
            continue
        scores = score_fn(spec, stats.sites[site] if stats is not None else None).double()
        if not torch.isfinite(scores).all():
            raise RuntimeError(f"Pruning aborted: non-finite {criterion} scores at {site.label}; "
                               "the model is unchanged")
        if isinstance(n, (list, tuple)):
            chosen = list(n)
        else:
            key = removal_key(criterion, scores)
            chosen = torch.argsort(key, stable=True)[:n].tolist()
        key = removal_key(criterion, scores)
        choices.append((site, sorted(chosen, key=lambda i: float(key[i])), scores.tolist()))
    shared = time.perf_counter() - start

    reports = []
    for site, removed, scores in choices:
        t0 = time.perf_counter()
        size_before, params_before = net.get_network_size(), _num_params(net)
        changes = remove_output_channels(net.site_spec(site), removed)
        net.sync_attributes()
        reports.append(PruneReport(
            layer_idx=site.layer, conv_idx=site.conv, criterion=criterion, removed=removed,
            scores=scores, size_before=size_before, size_after=net.get_network_size(),
            params_before=params_before, params_after=_num_params(net),
            seconds=shared / len(choices) + time.perf_counter() - t0, loss_before=loss_before,
            net=site.net, changes=changes))
    if batches is not None and measure_loss:
        after = mean_loss(net, batches, loss_fn, reduce_fn)
        for r in reports:
            r.loss_after = after
    return reports


@dataclass
class PruneSchedule:
    """When and how a growth callback removes filters (``GrowthCallback(prune=...)``).

    Attributes:
        kind: ``"interval"`` (every ``interval`` epochs from ``start_epoch``),
            ``"epochs"`` (at the given ``epochs``) or ``"exchange"`` (at every
            growth event, as many filters as it adds).
        interval: Interval schedule.
        start_epoch: Interval schedule: first pruning epoch.
        epochs: Epochs schedule.
        n: Filters removed per site per event.
        fraction: Or this fraction of each site's width (at least one).
        criterion: ``"magnitude"`` or ``"taylor"``.
        sites: Sites that may lose filters (None: every site).
        min_width: No conv goes below this many filters.
    """

    kind: str
    interval: int = 1
    start_epoch: int = 1
    epochs: Sequence[int] = ()
    n: Optional[int] = None
    fraction: Optional[float] = None
    criterion: str = "magnitude"
    sites: Optional[Sequence[Site]] = None
    min_width: int = 1

    KINDS = ("interval", "epochs", "exchange")

    def __post_init__(self):
        if self.kind not in self.KINDS:
            raise ValueError(f"Unknown prune_schedule {self.kind!r}; valid: "
                             f"{', '.join(self.KINDS)}")
        check_criterion(self.criterion)
        for name in ("interval", "min_width"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{'prune_' if name == 'interval' else ''}{name} must be an "
                                 f"int >= 1, got {value!r}")
        if not isinstance(self.start_epoch, int) or self.start_epoch < 0:
            raise ValueError(f"prune_start_epoch must be an int >= 0, got {self.start_epoch!r}")
        if self.kind == "epochs" and (not self.epochs or any(
                not isinstance(e, int) or e < 0 for e in self.epochs)):
            raise ValueError(f"prune_schedule='epochs' needs prune_epochs, non-negative ints, "
                             f"got {list(self.epochs)!r}")
        if self.kind != "exchange":
            if (self.n is None) == (self.fraction is None):
                raise ValueError("pruning needs exactly one of prune_n and prune_fraction")
        if self.n is not None and (not isinstance(self.n, int) or isinstance(self.n, bool)
                                   or self.n < 1):
            raise ValueError(f"prune_n must be an int >= 1, got {self.n!r}")
        if self.fraction is not None and not (isinstance(self.fraction, (int, float))
                                              and 0.0 < float(self.fraction) < 1.0):
            raise ValueError(f"prune_fraction must be in (0, 1), got {self.fraction!r}")

    @property
    def exchange(self) -> bool:
        return self.kind == "exchange"

    def due(self, epoch: int) -> bool:
        """Whether a (plain) pruning event is due at the start of ``epoch``."""
        if self.kind == "interval":
            return epoch >= self.start_epoch and (epoch - self.start_epoch) % self.interval == 0
        if self.kind == "epochs":
            return epoch in self.epochs
        return False


def fixed_removals(size: Dict, sites: Sequence[Site], n: Optional[int],
                   fraction: Optional[float], min_width: int) -> Dict[Site, int]:
    """Filters removed per site at a plain pruning event: ``n`` or ``fraction`` of its width."""
    from .schedule import width_of

    out = {}
    for site in sites:
        width = width_of(size, site)
        k = n if n is not None else max(1, int(round(fraction * width)))
        k = min(k, width - min_width)
        if k > 0:
            out[site] = k
    return out


def exchange_removals(scores: Dict[Site, torch.Tensor], criterion: str, room: Dict[Site, int],
                      total: int) -> Dict[Site, List[int]]:
    """The ``total`` filters, over all sites, that go first in removal order.

    Args:
        scores: Per site, each filter's score under ``criterion`` `(C,)`.
        criterion: A :data:`PRUNE_CRITERIA` name.
        room: Per site, how many filters it may lose (width - min_width).
        total: Filters to remove in all (as many as the growth event adds).

    Returns:
        Per site, the indices of its filters to remove.
    """
    ranked = sorted(((float(v), k, site) for site in scores
                     for k, v in enumerate(removal_key(criterion, scores[site]))),
                    key=lambda t: t[0])
    picked: Dict[Site, List[int]] = {}
    count = 0
    for _, k, site in ranked:
        if count == total:
            break
        if len(picked.get(site, [])) < room[site]:
            picked.setdefault(site, []).append(k)
            count += 1
    return picked
