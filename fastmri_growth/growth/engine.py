"""The growth engine: one event at any number of sites, on any GrowableNet.

Phases, named after the algorithm:

1. **validate** every request (sites, counts, method options, batches)
   before anything runs;
2. **propose candidates** per site (fixed before any statistics);
3. **collect statistics** for all sites in one forward+backward per scoring
   batch (:mod:`.statistics`);
4. **propose** the new filters per site (the method);
5. **apply the surgery** site by site (:mod:`.surgery`);
6. **report**; updating an optimizer is the caller's (``remap_optimizer_state``
   with the reports' changes; the Lightning callback does it).

Nothing changes before phase 5, so every error leaves the network as it
was. All sites of an event are scored on the network as it was before the
event; zero-fan-out growth at one site does not change any other site's
statistics, so this is what scoring them one after another would give,
except that a site fed by another grown site gives the new input channels a
zero weight in its new filters.
"""
from __future__ import annotations

import time
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from .methods import GrowthMethod, get_method
from .net import SiteSpec
from .report import GrowthReport
from .sites import Site, as_site
from .statistics import LossFn, ReduceFn, collect
from .surgery import ParamChange, compose_maps

#: How new filters' fan-out slices start.
FAN_OUT_INITS = ("zero",)


def _check_count(name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value


def _input_dim(module: nn.Module) -> Optional[int]:
    if isinstance(module, nn.ConvTranspose2d):
        return 0
    if isinstance(module, nn.Conv2d):
        return 1
    return None


def grow(
    net: nn.Module,
    sites: Sequence[Union[Site, tuple, str]],
    method: Union[str, GrowthMethod] = "sample_select",
    batches: Optional[Iterable[Any]] = None,
    loss_fn: Optional[LossFn] = None,
    n_new: Union[int, Mapping[Site, int]] = 1,
    *,
    candidates: Optional[Mapping[Site, torch.Tensor]] = None,
    generator: Optional[torch.Generator] = None,
    reduce_fn: Optional[ReduceFn] = None,
    fan_out_init: str = "zero",
    method_options: Optional[Mapping[str, Any]] = None,
) -> List[GrowthReport]:
    """Grow ``net`` at ``sites`` in one event.

    Args:
        net: A :class:`~fastmri_growth.growth.net.GrowableNet`.
        sites: Sites (``Site``, ``(layer, conv)`` tuples or ``"layer:conv"``).
        method: A registered method name or a configured :class:`GrowthMethod`.
        batches: Scoring batches, each passed to ``loss_fn``; their mean loss
            is what the scores are the gradient of. None: no statistics
            (only for methods that can do without, e.g. ``split`` on the
            weights' existing ``.grad``).
        loss_fn: ``loss_fn(batch) -> scalar`` with the network as it is.
        n_new: Filters per site (an int, or a per-site mapping).
        candidates: Optional explicit fan-ins per site `(K, C_in, kh, kw)`.
        generator: CPU random generator for candidates and noise (identical
            seeds on every DDP rank give identical decisions).
        reduce_fn: Mean over DDP ranks of the accumulated statistics.
        fan_out_init: How new fan-outs start (see :data:`FAN_OUT_INITS`).
        method_options: Options for a method given by name.

    Returns:
        One :class:`GrowthReport` per site, in the order given.

    Raises:
        ValueError: bad arguments, before anything changes.
        RuntimeError: a non-finite loss or score; the network is unchanged.
    """
    start = time.perf_counter()
    m = get_method(method, **dict(method_options or {}))
    site_list = [as_site(s) for s in sites]
    if not site_list:
        raise ValueError("grow needs at least one site")
    if len(set(site_list)) != len(site_list):
        dup = next(s for s in site_list if site_list.count(s) > 1)
        raise ValueError(f"site {dup.key!r} is listed twice in one growth event")
    specs: List[SiteSpec] = [net.site_spec(s) for s in site_list]
    counts = {s: _check_count("n_new", n_new[s] if isinstance(n_new, Mapping) else n_new)
              for s in site_list}
    if fan_out_init not in FAN_OUT_INITS:
        raise ValueError(
            f"Unknown fan_out_init {fan_out_init!r}; valid: {', '.join(FAN_OUT_INITS)}")
    given = dict(candidates or {})
    for spec in specs:
        m.check(spec, counts[spec.site], given.get(spec.site))
    if batches is not None:
        batches = list(batches)
        if loss_fn is None:
            raise ValueError("grow with batches needs loss_fn(batch) -> loss")
    elif m.needs_batches:
        raise ValueError(f"{m.name} needs scoring batches (got None)")
    elif "weight_grad" in m.wants():
        for spec in specs:
            if spec.conv.weight.grad is None:
                raise ValueError(
                    f"{m.name} needs gradients: pass batch_data and target_data, or run a "
                    f"backward pass first so that the conv weights have .grad "
                    f"({spec.site.label} has none)"
                )

    # -- candidates, then one statistics pass for every site
    cands: Dict[Site, torch.Tensor] = {}
    for spec in specs:
        c = m.candidates(spec, counts[spec.site], generator, given.get(spec.site))
        if c is not None:
            cands[spec.site] = c
    accumulators = {}
    for spec in specs:
        acc = m.accumulator(spec, counts[spec.site])
        if acc is not None:
            accumulators[spec.site] = acc
    want_w = "weight_grad" in m.wants()
    stats = None
    # A method that scores nothing (no candidates, no statistics) runs no pass.
    if batches is not None and (cands or accumulators or want_w):
        stats = collect(
            net, specs, batches, loss_fn, candidates=cands,
            want_weight_grad=site_list if want_w else (),
            accumulators=accumulators, reduce_fn=reduce_fn,
        )
    shared = time.perf_counter() - start

    # -- proposals (nothing has changed yet)
    proposals = {}
    for spec in specs:
        proposals[spec.site] = m.propose(
            spec, counts[spec.site], stats.sites[spec.site] if stats is not None else None,
            generator)

    # -- surgery, site by site on the live network
    reports: List[GrowthReport] = []
    in_maps: Dict[int, torch.Tensor] = {}
    loss = stats.loss if stats is not None else float("nan")
    for site in site_list:
        t0 = time.perf_counter()
        size_before, params_before = net.get_network_size(), _num_params(net)
        spec = net.site_spec(site)
        changes = m.apply(spec, proposals[site], in_maps.get(id(spec.conv)))
        _track_input_maps(changes, in_maps)
        net.sync_attributes()
        p = proposals[site]
        reports.append(GrowthReport(
            layer_idx=site.layer, conv_idx=site.conv, method=m.name, n_added=counts[site],
            scores=list(p.scores), selected=list(p.selected),
            size_before=size_before, size_after=net.get_network_size(),
            params_before=params_before, params_after=_num_params(net),
            seconds=shared / len(site_list) + time.perf_counter() - t0, loss=loss,
            net=site.net, decision=m.describe(list(p.selected), list(p.scores)),
            fan_out_init=fan_out_init, details=dict(p.details), changes=changes,
        ))
    return reports


def _num_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def _track_input_maps(changes: Sequence[ParamChange], in_maps: Dict[int, torch.Tensor]) -> None:
    """Compose the input-channel index maps of convs that gained input channels."""
    for ch in changes:
        if ch.name == "weight" and _input_dim(ch.module) == ch.dim:
            in_maps[id(ch.module)] = compose_maps(in_maps.get(id(ch.module)), ch.index_map)
