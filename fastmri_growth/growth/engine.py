"""The growth engine: one event at any number of sites, on any GrowableNet.

Phases, named after the algorithm:

1. **validate** every request (sites, counts, method options, batches)
   before anything runs;
2. **propose candidates** per site, fixed before the statistics (a method
   may first run a pre-pass, e.g. ``gradmax``'s linearised problem);
3. **collect statistics** for all sites in one forward+backward per scoring
   batch (:mod:`.statistics`); with ``auto_sites`` keep the best sites
   (:func:`~.scoring.rank_sites`);
4. **propose** the new filters per site (the method);
5. **apply the surgery** site by site (:mod:`.surgery`), then, with
   ``fan_out_init="descent"``, set the new fan-outs along minus their
   closed-form gradient at the scale a line search on the scoring batches
   finds;
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

import math
import time
from dataclasses import dataclass, replace
from typing import (Any, Callable, Dict, Iterable, List, Mapping, NamedTuple, Optional, Sequence,
                    Tuple, Union)

import torch
from torch import nn

from .methods import GrowthMethod, Proposal, get_method
from .net import SiteSpec
from .report import GrowthReport
from .scoring import DEFAULT_SITE_CRITERION, SiteScore, rank_sites, site_value
from .sites import Site, as_site
from .statistics import (LossFn, ReduceFn, SiteStatistics, Statistics, _EvalMode, collect,
                         precondition)
from .surgery import ParamChange, compose_maps

#: How new filters' fan-out slices start: ``zero`` keeps the function;
#: ``descent`` sets them along minus their gradient, scaled by a line search.
FAN_OUT_INITS = ("zero", "descent")
#: Line-search scales of the descent fan-out, as fractions of the norm the new
#: slices would have at the consumers' typical column norm.
DESCENT_SCALES = (1 / 64, 1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0, 2.0, 4.0)

Count = Union[int, Mapping[Site, int], Callable[[SiteScore], int]]


@dataclass
class _Request:
    """A validated growth request (phase 1), what the later phases read.

    ``sites`` are in the caller's order: with ``auto_sites`` the pool, then
    the chosen sites; ``specs`` are theirs before the event; ``counts`` stays
    empty until the sites are chosen when ``n_new`` is a function; ``given``
    holds explicit fan-ins `(K, C_in, kh, kw)`; the rest is :func:`grow`'s.
    """

    method: GrowthMethod
    sites: List[Site]
    specs: List[SiteSpec]
    counts: Dict[Site, int]
    given: Dict[Site, torch.Tensor]
    batches: Optional[List[Any]]
    n_new: Count
    auto_sites: Optional[int]
    site_criterion: str
    fan_out_init: str
    loss_fn: Optional[LossFn]
    generator: Optional[torch.Generator]
    reduce_fn: Optional[ReduceFn]
    preconditioner: Any = None


class _Scored(NamedTuple):
    """Phases 2-3: pools `(K, C_in, kh, kw)` per site, their statistics (None:
    no pass was needed), and with ``auto_sites`` every ranked site's score."""

    candidates: Dict[Site, torch.Tensor]
    stats: Optional[Statistics]
    site_scores: Dict[Site, SiteScore]


class _Grown(NamedTuple):
    """Phase 5 at one site: the network around it, its changes, its seconds."""

    site: Site
    size_before: Dict
    params_before: int
    size_after: Dict
    params_after: int
    changes: List[ParamChange]
    seconds: float


def grow(
    net: nn.Module,
    sites: Optional[Sequence[Union[Site, tuple, str]]],
    method: Union[str, GrowthMethod] = "sample_select",
    batches: Optional[Iterable[Any]] = None,
    loss_fn: Optional[LossFn] = None,
    n_new: Count = 1,
    *,
    candidates: Optional[Mapping[Site, torch.Tensor]] = None,
    generator: Optional[torch.Generator] = None,
    reduce_fn: Optional[ReduceFn] = None,
    fan_out_init: str = "zero",
    method_options: Optional[Mapping[str, Any]] = None,
    auto_sites: Optional[int] = None,
    site_criterion: str = DEFAULT_SITE_CRITERION,
    preconditioner: Any = None,
) -> List[GrowthReport]:
    """Grow ``net`` at ``sites`` in one event.

    Args:
        net: A :class:`~fastmri_growth.growth.net.GrowableNet`.
        sites: Sites (``Site``, ``(layer, conv)`` tuples or ``"layer:conv"``);
            with ``auto_sites`` the pool to choose from (None: every site).
        method: A registered method name or a configured :class:`GrowthMethod`.
        batches: Scoring batches, each passed to ``loss_fn``; their mean loss
            is what the scores are the gradient of. None: no statistics
            (only for methods that can do without, e.g. ``split`` on the
            weights' existing ``.grad``, or ``random``).
        loss_fn: ``loss_fn(batch) -> scalar`` with the network as it is.
        n_new: Filters per site: an int, a per-site mapping, or (with
            ``auto_sites``) a function of the chosen site's :class:`SiteScore`.
        candidates: Optional explicit fan-ins per site `(K, C_in, kh, kw)`.
        generator: CPU random generator for candidates and noise (identical
            seeds on every DDP rank give identical decisions).
        reduce_fn: Mean over DDP ranks of the accumulated statistics.
        fan_out_init: How new fan-outs start (see :data:`FAN_OUT_INITS`).
        method_options: Options for a method given by name.
        auto_sites: Grow only the this many best sites of the pool, ranked
            by ``site_criterion`` from the statistics pass.
        site_criterion: See :data:`~fastmri_growth.growth.scoring.SITE_CRITERIA`.
        preconditioner: How the optimizer will scale new fan-out slices'
            steps (:func:`~fastmri_growth.growth.optim.preconditioner_for`):
            candidates and sites are then scored by the loss decrease their
            first optimizer step realises instead of by their gradient norm.
            None: gradient norms.

    Returns:
        One :class:`GrowthReport` per grown site, in network order.

    Raises:
        ValueError: bad arguments, before anything changes.
        RuntimeError: a non-finite loss or score; the network is unchanged.
    """
    start = time.perf_counter()
    req = _validate(net, sites, method, batches, loss_fn, n_new, candidates, generator,
                    reduce_fn, fan_out_init, method_options, auto_sites, site_criterion)
    req = replace(req, preconditioner=preconditioner)
    scored = _score(net, req)
    if req.auto_sites is not None:
        req, scored = _choose_sites(net, req, scored)
    shared = time.perf_counter() - start
    proposals = _propose(req, scored)  # nothing has changed up to here
    grown = _apply_surgery(net, req, proposals)
    loss = scored.stats.loss if scored.stats is not None else float("nan")
    loss_after, scale = float("nan"), None
    if req.fan_out_init == "descent":
        t0 = time.perf_counter()
        scale, loss_after = descent_fan_out(net, [c for g in grown for c in g.changes],
                                            req.batches, req.loss_fn, loss, req.reduce_fn)
        shared += time.perf_counter() - t0
    return _reports(req, proposals, grown, scored.site_scores, loss, loss_after, scale, shared)


def _validate(net, sites, method, batches, loss_fn, n_new, candidates, generator, reduce_fn,
              fan_out_init, method_options, auto_sites, site_criterion) -> _Request:
    """Check the whole request (arguments as for :func:`grow`) before anything runs.

    Raises:
        ValueError: the first problem found.
    """
    m = get_method(method, **dict(method_options or {}))
    site_list = list(net.growth_sites()) if sites is None else [as_site(s) for s in sites]
    if not site_list:
        raise ValueError("grow needs at least one site")
    if len(set(site_list)) != len(site_list):
        dup = next(s for s in site_list if site_list.count(s) > 1)
        raise ValueError(f"site {dup.key!r} is listed twice in one growth event")
    specs: List[SiteSpec] = [net.site_spec(s) for s in site_list]
    if fan_out_init not in FAN_OUT_INITS:
        raise ValueError(
            f"Unknown fan_out_init {fan_out_init!r}; valid: {', '.join(FAN_OUT_INITS)}")
    if fan_out_init == "descent" and not m.zero_fan_out:
        raise ValueError(
            f"fan_out_init='descent' applies to methods that add zero-fan-out filters "
            f"(not {m.name!r}, which sets its own fan-out)")
    if auto_sites is not None:
        _check_count("auto_sites", auto_sites)
        if auto_sites > len(site_list):
            raise ValueError(f"auto_sites={auto_sites} exceeds the {len(site_list)} sites to "
                             f"choose from")
        if not m.zero_fan_out:
            raise ValueError(f"automatic site selection ranks candidate scores; {m.name!r} "
                             "has none (use sample_select, random or gradmax)")
        site_value(0.0, 1, 1, site_criterion)  # checks the criterion's name
    elif callable(n_new):
        raise ValueError("n_new as a function of the site's score needs auto_sites")
    counts: Dict[Site, int] = {}
    if not callable(n_new):
        counts = {s: _check_count("n_new", n_new[s] if isinstance(n_new, Mapping) else n_new)
                  for s in site_list}
    given = dict(candidates or {})
    for spec in specs:
        m.check(spec, counts.get(spec.site, 1), given.get(spec.site))
    if batches is not None:
        batches = list(batches)
        if loss_fn is None:
            raise ValueError("grow with batches needs loss_fn(batch) -> loss")
    else:
        _check_without_batches(m, specs, fan_out_init, auto_sites)
    return _Request(m, site_list, specs, counts, given, batches, n_new, auto_sites,
                    site_criterion, fan_out_init, loss_fn, generator, reduce_fn)


def _check_without_batches(m: GrowthMethod, specs: List[SiteSpec], fan_out_init: str,
                           auto_sites: Optional[int]) -> None:
    """Without scoring batches only a method that needs no statistics can run."""
    if m.needs_batches or fan_out_init == "descent" or auto_sites is not None:
        raise ValueError(f"{m.name if m.needs_batches else 'this growth request'} needs "
                         "scoring batches (got None)")
    if "weight_grad" in m.wants():
        for spec in specs:
            if spec.conv.weight.grad is None:
                raise ValueError(
                    f"{m.name} needs gradients: pass batch_data and target_data, or run a "
                    f"backward pass first so that the conv weights have .grad "
                    f"({spec.site.label} has none)"
                )


def _check_count(name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value


def _score(net: nn.Module, req: _Request) -> _Scored:
    """Candidates for ``req``'s sites, then their statistics, on the network as it is."""
    cands = _propose_candidates(net, req)
    return _Scored(cands, _collect_statistics(net, req, cands), {})


def _propose_candidates(net: nn.Module, req: _Request) -> Dict[Site, torch.Tensor]:
    """Each site's pool of fan-ins `(K, C_in, kh, kw)`, after the method's pre-pass if any."""
    m, pre = req.method, None
    if req.batches is not None:
        pre_acc = {spec.site: a for spec in req.specs
                   if (a := m.pre_accumulator(spec, req.counts.get(spec.site, 1))) is not None}
        if pre_acc:
            pre = collect(net, req.specs, req.batches, req.loss_fn, accumulators=pre_acc,
                          reduce_fn=req.reduce_fn)
    cands: Dict[Site, torch.Tensor] = {}
    for spec in req.specs:
        c = m.candidates(spec, req.counts.get(spec.site, 1), req.generator,
                         req.given.get(spec.site),
                         pre.sites[spec.site] if pre is not None else None)
        if c is not None:
            cands[spec.site] = c
    return cands


def _collect_statistics(net: nn.Module, req: _Request, cands: Dict[Site, torch.Tensor]
                        ) -> Optional[Statistics]:
    """One statistics pass for every site and its pool (None when nothing needs one)."""
    m = req.method
    want_w = "weight_grad" in m.wants()
    accumulators = {spec.site: a for spec in req.specs
                    if (a := m.accumulator(spec, req.counts.get(spec.site, 1),
                                           cands.get(spec.site))) is not None}
    # A method that scores nothing (no candidates, no statistics) runs no pass.
    if req.batches is None or not (cands or accumulators or want_w):
        return None
    stats = collect(net, req.specs, req.batches, req.loss_fn, candidates=cands,
                    want_weight_grad=[spec.site for spec in req.specs] if want_w else (),
                    accumulators=accumulators, reduce_fn=req.reduce_fn)
    precondition(stats, req.specs, req.preconditioner)
    return stats


def _choose_sites(net: nn.Module, req: _Request, scored: _Scored) -> Tuple[_Request, _Scored]:
    """Keep the ``auto_sites`` best sites of the pool; their counts; their pools re-scored."""
    ranked = rank_sites(req.specs, scored.stats, req.site_criterion)
    chosen = {r.site for r in ranked[:req.auto_sites]}
    site_scores = {r.site: r for r in ranked}
    order = {s: i for i, s in enumerate(req.sites)}
    site_list = sorted(chosen, key=order.__getitem__)
    counts = req.counts
    if callable(req.n_new):
        counts = {s: _check_count("n_new", req.n_new(site_scores[s])) for s in site_list}
    req = replace(req, sites=site_list, specs=[s for s in req.specs if s.site in chosen],
                  counts=counts)
    for spec in req.specs:
        req.method.check(spec, counts[spec.site], req.given.get(spec.site))
    if callable(req.n_new) and any(counts[s] != 1 for s in site_list):
        # The pools that ranked the sites hold candidates for one filter
        # each; the chosen sites get pools for their counts.
        scored = _score(net, req)
    return req, scored._replace(site_scores=site_scores)


def _propose(req: _Request, scored: _Scored) -> Dict[Site, Proposal]:
    """The method's new filters per site (nothing has changed yet).

    Raises:
        RuntimeError: the method proposed another number of filters than asked for.
    """
    m, proposals = req.method, {}
    for spec in req.specs:
        st = scored.stats.sites[spec.site] if scored.stats is not None else SiteStatistics(
            spec.site, candidates=scored.candidates.get(spec.site))
        proposals[spec.site] = p = m.propose(spec, req.counts[spec.site], st, req.generator)
        if p.rows is not None and p.rows.shape[0] != req.counts[spec.site]:
            raise RuntimeError(
                f"{m.name} proposed {p.rows.shape[0]} filters at {spec.site.label} where "
                f"{req.counts[spec.site]} were asked for; the model is unchanged")
    return proposals


def _apply_surgery(net: nn.Module, req: _Request, proposals: Dict[Site, Proposal]
                   ) -> List[_Grown]:
    """The surgery, site by site on the live network.

    Each site's spec is taken anew, and its proposed fan-ins are remapped to
    the input channels that earlier sites of the event added.
    """
    grown, in_maps = [], {}
    for site in req.sites:
        t0 = time.perf_counter()
        size_before, params_before = net.get_network_size(), _num_params(net)
        spec = net.site_spec(site)
        changes = req.method.apply(spec, proposals[site], in_maps.get(id(spec.conv)))
        _track_input_maps(changes, in_maps)
        net.sync_attributes()
        grown.append(_Grown(site, size_before, params_before, net.get_network_size(),
                            _num_params(net), changes, time.perf_counter() - t0))
    return grown


def _reports(req: _Request, proposals: Dict[Site, Proposal], grown: List[_Grown],
             site_scores: Dict[Site, SiteScore], loss: float, loss_after: float,
             scale: Optional[float], shared: float) -> List[GrowthReport]:
    """One report per grown site; ``shared`` (scoring, descent) seconds split evenly."""
    reports = []
    for g in grown:
        p = proposals[g.site]
        details = dict(p.details)
        if g.site in site_scores:
            sc = site_scores[g.site]
            details.update(site_value=sc.value, site_best_score=sc.best_score,
                           params_per_filter=sc.params_per_filter,
                           flops_per_filter=sc.flops_per_filter)
        if scale is not None:
            details["descent_scale"] = scale
        reports.append(GrowthReport(
            layer_idx=g.site.layer, conv_idx=g.site.conv, method=req.method.name,
            n_added=req.counts[g.site], scores=list(p.scores), selected=list(p.selected),
            size_before=g.size_before, size_after=g.size_after,
            params_before=g.params_before, params_after=g.params_after,
            seconds=shared / len(req.sites) + g.seconds, loss=loss, net=g.site.net,
            decision=req.method.describe(list(p.selected), list(p.scores)),
            loss_after=loss_after, fan_out_init=req.fan_out_init, details=details,
            changes=g.changes,
        ))
    return reports


def mean_loss(net: nn.Module, batches: Sequence[Any], loss_fn: LossFn,
              reduce_fn: Optional[ReduceFn] = None) -> float:
    """Mean loss over the batches (and ranks), dropout off, no graph."""
    with torch.no_grad(), _EvalMode(net, []):
        total = sum(float(loss_fn(b).detach()) for b in batches) / len(batches)
    value = torch.tensor([total], dtype=torch.float64,
                         device=next(net.parameters()).device)
    return float(reduce_fn(value)[0]) if reduce_fn is not None else total


def descent_fan_out(net: nn.Module, changes: Sequence[ParamChange], batches: Sequence[Any],
                    loss_fn: LossFn, loss_zero: float,
                    reduce_fn: Optional[ReduceFn] = None,
                    scales: Sequence[float] = DESCENT_SCALES) -> tuple:
    """Set the new fan-out slices along minus their gradient, scaled by a line search.

    With ``V = -gamma * G / ||G||`` (``G`` the closed-form gradient of all new
    slices of the event, jointly normalised) the loss changes by
    ``-gamma ||G|| + O(gamma^2)``. ``gamma`` is searched over ``scales`` times
    ``ref``, the norm the new slices would have at their consumers' typical
    column norm, on the scoring batches; ``gamma = 0`` (the function kept)
    wins unless a scale lowers the loss.

    Args:
        net: The network, with the new (zero) slices in place.
        changes: The event's parameter changes; those with a ``grad_hint``
            are the new fan-out slices.
        batches: The scoring batches.
        loss_fn: ``loss_fn(batch) -> scalar``.
        loss_zero: The mean loss at ``gamma = 0`` (the event's scoring loss).
        reduce_fn: Mean over DDP ranks (every rank picks the same scale).
        scales: Line-search grid (fractions of ``ref``).

    Returns:
        ``(scale, loss)``: the chosen fraction (0.0 if none helped) and the
        mean scoring loss after.
    """
    slices = [c for c in changes if c.grad_hint is not None and c.count > 0]
    if not slices:
        return 0.0, loss_zero
    g_norm = math.sqrt(sum(float(c.grad_hint.double().pow(2).sum()) for c in slices))
    if not g_norm > 0:
        return 0.0, loss_zero
    ref_sq = 0.0
    for c in slices:
        kept = c.index_map >= 0
        old = c.new.detach().index_select(c.dim, kept.nonzero().flatten().to(c.new.device))
        cols = old.movedim(c.dim, 0).flatten(1).norm(dim=1)
        ref_sq += c.count * float(cols.pow(2).mean()) if cols.numel() else 0.0
    ref = math.sqrt(ref_sq)

    def set_scale(gamma: float) -> None:
        with torch.no_grad():
            for c in slices:
                pos = c.new_positions.to(c.new.device)
                c.new.index_copy_(c.dim, pos, (-gamma / g_norm) * c.grad_hint.to(c.new))

    best_scale, best_loss = 0.0, loss_zero
    for s in scales:
        set_scale(s * ref)
        value = mean_loss(net, batches, loss_fn, reduce_fn)
        if value < best_loss:
            best_scale, best_loss = s, value
    set_scale(best_scale * ref)
    return best_scale, best_loss


def _num_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def _track_input_maps(changes: Sequence[ParamChange], in_maps: Dict[int, torch.Tensor]) -> None:
    """Compose the input-channel index maps of convs that gained input channels."""
    for ch in changes:
        # A conv's input channels are its weight's dim 1, a transposed conv's dim 0.
        in_dim = 0 if isinstance(ch.module, nn.ConvTranspose2d) else 1
        if ch.name == "weight" and isinstance(ch.module, (nn.Conv2d, nn.ConvTranspose2d)) \
                and in_dim == ch.dim:
            in_maps[id(ch.module)] = compose_maps(in_maps.get(id(ch.module)), ch.index_map)
