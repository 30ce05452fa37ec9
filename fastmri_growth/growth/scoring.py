"""Scoring candidate filters: the one-pass closed form and its brute-force reference.

:func:`score_candidates` scores explicit fan-ins at one site from one
statistics pass (:mod:`.statistics`); :func:`brute_force_scores` adds each
candidate alone to a copy of the network, runs forward and backward, and
takes the norm of the gradient of all of the candidate's parameters - the
K-pass reference the closed form is tested against.
"""
from __future__ import annotations

import copy
from typing import Any, Iterable, Optional, Union

import torch
from torch import nn

from .sites import Site, as_site
from .statistics import LossFn, ReduceFn, Statistics, _EvalMode, collect
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
