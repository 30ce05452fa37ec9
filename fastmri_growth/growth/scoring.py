"""Scoring candidate filters: the one-pass closed form and its brute-force reference.

:func:`score_candidates` scores explicit fan-ins at one site from one
statistics pass (:mod:`.statistics`); :func:`brute_force_scores` adds each
candidate alone to a copy of the network, runs forward and backward, and
takes the norm of the gradient of all of the candidate's parameters - the
K-pass reference the closed form is tested against.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Iterable, List, Optional, Sequence, Union

import torch
from torch import nn

from .sites import Site, as_site
from .statistics import LossFn, ReduceFn, Statistics, _EvalMode, collect, precondition
from .surgery import add_output_channels


def score_candidates_at(
    net: nn.Module,
    site: Union[Site, tuple, str],
    candidates: torch.Tensor,
    batches: Iterable[Any],
    loss_fn: LossFn,
    reduce_fn: Optional[ReduceFn] = None,
    stats: Optional[Statistics] = None,
) -> torch.Tensor:
    """Scores of explicit candidate fan-ins at one site, in one pass over the batches.

    Args:
        net: A GrowableNet.
        site: The site.
        candidates: Fan-ins `(K, C_in, kh, kw)`.
        batches: Scoring batches for ``loss_fn``.
        loss_fn: ``loss_fn(batch) -> scalar``.
        reduce_fn: Mean over DDP ranks.
        stats: Statistics already collected for these candidates (skips the pass).

    Returns:
        `(K,)`: the norm of the gradient of the mean loss w.r.t. each
        candidate's parameters if it alone were added with a zero fan-out.
    """
    site = as_site(site)
    if stats is None:
        spec = net.site_spec(site)
        stats = collect(net, [spec], batches, loss_fn, candidates={site: candidates},
                        reduce_fn=reduce_fn)
    return stats.sites[site].scores()


def brute_force_scores_at(
    net: nn.Module,
    site: Union[Site, tuple, str],
    candidates: torch.Tensor,
    batches: Iterable[Any],
    loss_fn_for,
) -> torch.Tensor:
    """Reference scores: add each candidate alone, forward, backward, norm.

    K separate passes on copies of the network, dropout off.

    Args:
        net: A GrowableNet (not modified).
        site: The site.
        candidates: Fan-ins `(K, C_in, kh, kw)`.
        batches: Scoring batches; the loss is their mean.
        loss_fn_for: ``loss_fn_for(copy) -> (batch -> loss)``: the loss of a
            given copy of the network.

    Returns:
        `(K,)` scores.
    """
    site = as_site(site)
    batches = list(batches)
    scores = []
    for j in range(candidates.shape[0]):
        m = copy.deepcopy(net)
        changes = add_output_channels(m.site_spec(site), candidates[j:j + 1])
        m.sync_attributes()
        news = [ch.new for ch in changes]
        loss_fn = loss_fn_for(m)
        with torch.enable_grad(), _EvalMode(m, news):
            loss = sum(loss_fn(b) for b in batches) / len(batches)
            grads = torch.autograd.grad(loss, news)
        total = sum(g[ch.new_slice()].double().pow(2).sum() for g, ch in zip(grads, changes))
        scores.append(total.sqrt().to(candidates.dtype))
    return torch.stack(scores).detach()


# ------------------------------------------------------------- where to grow
#: How sites are ranked for automatic site selection (``layer_idx="auto"``).
#: A site's score ``s`` is its best candidate's gradient norm: the first-order
#: loss decrease per unit norm of the new filter's fan-out (growth.md,
#: "Descent fan-out"). Ranked by ``s`` alone, by ``s`` per parameter one new
#: filter adds there, or by ``s`` per forward FLOP it adds (per sample).
SITE_CRITERIA = ("score", "score_per_param", "score_per_flop")
#: What a candidate's score measures: the gradient norm of its zero fan-out
#: (GradMax's criterion), or the loss decrease the optimizer's first step on
#: its new weights realises (:class:`~fastmri_growth.growth.optim.Preconditioner`).
CANDIDATE_SCORES = ("grad_norm", "optimizer")
DEFAULT_SITE_CRITERION = "score_per_flop"


@dataclass
class SiteScore:
    """How much growing one site is expected to help, and what it costs.

    Attributes:
        site: The site.
        best_score: The best candidate's score.
        scores: Every candidate's score `(K,)`, as floats.
        candidates: The scored fan-ins `(K, C_in, kh, kw)`.
        params_per_filter: Parameters one new filter adds (fan-in, fan-outs).
        flops_per_filter: Forward FLOPs per sample one new filter adds.
        value: The site's value under the ranking criterion.
    """

    site: Site
    best_score: float
    scores: List[float] = field(repr=False)
    candidates: torch.Tensor = field(repr=False)
    params_per_filter: int = 0
    flops_per_filter: int = 0
    value: float = float("nan")


def site_value(best_score: float, params: int, flops: int, criterion: str) -> float:
    """A site's value under ``criterion`` (see :data:`SITE_CRITERIA`).

    Raises:
        ValueError: an unknown criterion.
    """
    if criterion == "score":
        return best_score
    if criterion == "score_per_param":
        return best_score / max(params, 1)
    if criterion == "score_per_flop":
        return best_score / max(flops, 1)
    raise ValueError(f"Unknown site criterion {criterion!r}; valid: {', '.join(SITE_CRITERIA)}")


def rank_sites(specs, stats: Statistics, criterion: str = DEFAULT_SITE_CRITERION
               ) -> List[SiteScore]:
    """Every scored site's :class:`SiteScore`, best value first.

    Args:
        specs: The sites' specs (as when the statistics were collected).
        stats: Statistics holding each site's candidates and fan-out gradients.
        criterion: One of :data:`SITE_CRITERIA`.
    """
    out = []
    for spec in specs:
        st = stats.sites[spec.site]
        if st.fan_out_grads is None:
            continue
        scores = st.scores()
        best = float(scores.max())
        params = spec.params_per_filter()
        flops = spec.flops_per_filter(st.input_hw, st.consumer_out_hw)
        out.append(SiteScore(spec.site, best, scores.tolist(), st.candidates, params, flops,
                             site_value(best, params, flops, criterion)))
    return sorted(out, key=lambda s: -s.value)


def score_sites(
    net: nn.Module,
    batches: Iterable[Any],
    loss_fn: LossFn,
    sites: Optional[Sequence[Union[Site, tuple, str]]] = None,
    n_candidates: int = 10,
    criterion: str = DEFAULT_SITE_CRITERION,
    generator: Optional[torch.Generator] = None,
    reduce_fn: Optional[ReduceFn] = None,
    preconditioner: Any = None,
) -> List[SiteScore]:
    """Score random candidates at every site in ONE pass over the batches.

    Args:
        net: A GrowableNet.
        batches: Scoring batches for ``loss_fn``.
        loss_fn: ``loss_fn(batch) -> scalar``.
        sites: Sites to score (default: all of the network's).
        n_candidates: Candidates per site.
        criterion: Ranking criterion (:data:`SITE_CRITERIA`).
        generator: CPU generator for the candidates.
        reduce_fn: Mean over DDP ranks.
        preconditioner: Score by the optimizer's realised first step (see
            :func:`~fastmri_growth.growth.optim.preconditioner_for`); None:
            gradient norms.

    Returns:
        One :class:`SiteScore` per site, best value first.
    """
    from .candidates import generate_candidates

    site_value(0.0, 1, 1, criterion)  # checks the name before any work
    if not isinstance(n_candidates, int) or isinstance(n_candidates, bool) or n_candidates < 1:
        raise ValueError(f"n_candidates must be an int >= 1, got {n_candidates!r}")
    chosen = net.growth_sites() if sites is None else [as_site(s) for s in sites]
    specs = [net.site_spec(s) for s in chosen]
    cands = {spec.site: generate_candidates(spec, n_candidates, generator) for spec in specs}
    stats = collect(net, specs, batches, loss_fn, candidates=cands, reduce_fn=reduce_fn)
    precondition(stats, specs, preconditioner)
    return rank_sites(specs, stats, criterion)
