"""Old import path: one-pass scoring moved to :mod:`fastmri_growth.growth.scoring` and
:mod:`fastmri_growth.growth.statistics`. The U-Net-level functions stay here."""
from typing import Callable, Optional

import torch
from torch import nn
from torch.nn import functional as F

from ..growth.scoring import brute_force_scores_at, score_candidates_at
from ..growth.scoring import score_sites as score_sites_at
from ..growth.statistics import Statistics
from .dynamic_unet import prepare_target  # noqa: F401  (old import path)


def score_candidates(
    model: nn.Module,
    layer_id: str,
    conv_idx: int,
    candidates: torch.Tensor,
    batch,
    target,
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.l1_loss,
    reduce_fn: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    stats: Optional[Statistics] = None,
) -> torch.Tensor:
    """Score explicit candidate filters of a DynamicUnet in one pass.

    Args:
        model: A :class:`~fastmri_growth.models.DynamicUnet`.
        layer_id: Grown layer id.
        conv_idx: 0 or 1.
        candidates: Candidate fan-ins `(K, C_in, 3, 3)`.
        batch: `(N, in_chans, H, W)`, or a list of batches.
        target: `(N, out_chans, H, W)` or `(N, H, W)`, one per batch.
        criterion: The training loss.
        reduce_fn: Optional reduction of the statistics (DDP mean); the
            non-finite-loss check is agreed over ranks through it.
        stats: Reuse statistics already collected for these candidates.

    Returns:
        Scores `(K,)`: the norm of the gradient of the (mean) loss w.r.t.
        each candidate's parameters if it alone were added with a zero fan-out.
    """
    site = model.site(layer_id, conv_idx)
    batches = None if stats is not None else model.check_batches(batch, target)
    return score_candidates_at(model, site, candidates, batches, model.loss_fn(criterion),
                               reduce_fn=reduce_fn, stats=stats)


def brute_force_scores(
    model: nn.Module,
    layer_id: str,
    conv_idx: int,
    candidates: torch.Tensor,
    batch,
    target,
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.l1_loss,
) -> torch.Tensor:
    """Reference scores: add each candidate alone, forward, backward, norm.

    K separate forward+backward passes on copies of the model; used to test
    :func:`score_candidates` and to measure its speed-up.

    Args:
        model: A :class:`~fastmri_growth.models.DynamicUnet` (not modified).
        layer_id: Grown layer id.
        conv_idx: 0 or 1.
        candidates: Candidate fan-ins `(K, C_in, 3, 3)`.
        batch: `(N, in_chans, H, W)`, or a list of batches (mean loss).
        target: `(N, out_chans, H, W)` or `(N, H, W)`, one per batch.
        criterion: The training loss.

    Returns:
        Scores `(K,)`: the norm of the gradient of all of the candidate's
        parameters (fan-in and every consumer's fan-out slice), dropout off.
    """
    site = model.site(layer_id, conv_idx)
    batches = model.check_batches(batch, target)
    return brute_force_scores_at(model, site, candidates, batches,
                                 lambda m: m.loss_fn(criterion))


def score_sites(
    model: nn.Module,
    batches,
    targets,
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.l1_loss,
    n_candidates: int = 10,
    sites=None,
    site_criterion: str = "score_per_flop",
    generator: Optional[torch.Generator] = None,
    reduce_fn: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
):
    """Score random candidates at every site of a DynamicUnet in one pass.

    Args:
        model: A :class:`~fastmri_growth.models.DynamicUnet`.
        batches: One batch `(N, in_chans, H, W)` or a list of them.
        targets: The matching target(s).
        criterion: The training loss.
        n_candidates: Candidates per site.
        sites: Sites to score (default: all, transposed convs included).
        site_criterion: How the results are ranked (``score``,
            ``score_per_param``, ``score_per_flop``).
        generator: CPU generator for the candidates.
        reduce_fn: Mean over DDP ranks.

    Returns:
        Per site a :class:`~fastmri_growth.growth.scoring.SiteScore` (best
        score, candidates and their scores, parameters and forward FLOPs per
        added filter, value under the criterion), best first.
    """
    return score_sites_at(model, model.check_batches(batches, targets), model.loss_fn(criterion),
                          sites=sites, n_candidates=n_candidates, criterion=site_criterion,
                          generator=generator, reduce_fn=reduce_fn)


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    raise ImportError(
        f"fastmri_growth.models.scoring.{name} is gone: statistics are collected by "
        "fastmri_growth.growth.statistics.collect (every site in one pass)"
    )
