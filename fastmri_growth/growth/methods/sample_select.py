"""``sample_select``: score random zero-fan-out candidates in one pass, keep the best.

``n_candidates`` random candidates per added filter are scored (``n_new``
filters: ``n_new * n_candidates`` candidates). Kept filters get the
candidate's fan-in and a zero fan-out in every consumer, so the network
output is unchanged. Scores are the exact gradient norm a brute-force pass
would measure for each candidate alone (see :mod:`..statistics`). With
``n_new > 1`` the best are kept greedily, skipping near-duplicate fan-in
directions.
"""
from __future__ import annotations

from typing import List, Optional

import torch

from ..candidates import generate_candidates, select_diverse
from ..net import SiteSpec
from ..statistics import SiteStatistics
from . import register_method
from .base import GrowthMethod, Option, Proposal, positive_int, rows_of

N_CANDIDATES = Option(
    "n_candidates", 10, int, positive_int("n_candidates"),
    "Candidates scored per added filter (sample_select, gradmax)",
)


@register_method
class SampleSelect(GrowthMethod):
    name = "sample_select"
    summary = ("score N random candidates in one pass, keep the best (zero fan-out, "
               "output unchanged)")
    options = (N_CANDIDATES,)

    def check(self, spec: SiteSpec, n_new: int, candidates: Optional[torch.Tensor]) -> None:
        super().check(spec, n_new, candidates)
        if candidates is not None and n_new > candidates.shape[0]:
            raise ValueError(
                f"n_new={n_new} exceeds the number of candidates ({candidates.shape[0]})")

    def candidates(self, spec, n_new, generator, given=None, pre=None):
        if given is not None:
            return given.to(spec.conv.weight)
        return generate_candidates(spec, self.n_candidates * n_new, generator)

    def propose(self, spec: SiteSpec, n_new: int, stats: SiteStatistics,
                generator: Optional[torch.Generator]) -> Proposal:
        scores = stats.scores()
        if not torch.isfinite(scores).all():
            raise RuntimeError(
                f"Growth aborted: non-finite candidate scores at {spec.site.label}; "
                "the model is unchanged"
            )
        selected = select_diverse(scores, stats.candidates, n_new)
        idx = torch.tensor(selected, device=scores.device)
        return Proposal(
            rows=stats.candidates[selected], selected=selected, scores=scores.tolist(),
            fan_out_grads=rows_of(stats.fan_out_grads, idx),
            fan_out_grad_sq=rows_of(stats.fan_out_grad_sq, idx),
        )

    def describe(self, selected: List[int], scores: List[float]) -> str:
        what = "candidate" if len(selected) == 1 else "candidates"
        sel = selected[0] if len(selected) == 1 else selected
        vals = ", ".join(f"{scores[i]:.4g}" for i in selected)
        return f"Selected {what} {sel} (score {vals})"
