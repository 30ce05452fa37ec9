"""``random``: random fan-ins with a zero fan-out, no selection - the baseline.

The new filters are drawn as ``sample_select``'s candidates are (random
directions, orthonormal where the fan-in dimension allows, scaled like the
existing filters) and kept as they are. When scoring batches are given their
exact scores are still computed and reported (and their fan-out gradients
serve ``fan_out_init="descent"`` and optimizer seeding), so that ``random``
differs from the other methods only in the choice.
"""
from __future__ import annotations

from typing import List, Optional

import torch

from ..candidates import generate_candidates
from ..net import SiteSpec
from ..statistics import SiteStatistics
from . import register_method
from .base import GrowthMethod, Proposal


@register_method
class Random(GrowthMethod):
    name = "random"
    summary = "random fan-ins, zero fan-out, no selection (the baseline)"
    needs_batches = False

    def check(self, spec: SiteSpec, n_new: int, candidates: Optional[torch.Tensor]) -> None:
        super().check(spec, n_new, candidates)
        if candidates is not None and candidates.shape[0] != n_new:
            raise ValueError(
                f"random keeps every candidate: pass n_new={candidates.shape[0]} candidates, "
                f"got n_new={n_new}"
            )

    def candidates(self, spec, n_new, generator, given=None, pre=None):
        if given is not None:
            return given.to(spec.conv.weight)
        return generate_candidates(spec, n_new, generator)

    def propose(self, spec: SiteSpec, n_new: int, stats: Optional[SiteStatistics],
                generator: Optional[torch.Generator]) -> Proposal:
        # The engine hands over the candidates drawn before the statistics
        # pass (with or without scoring batches).
        scores = stats.scores() if stats.fan_out_grads is not None else None
        return Proposal(
            rows=stats.candidates, selected=list(range(n_new)),
            scores=[] if scores is None else scores.tolist(),
            fan_out_grads=stats.fan_out_grads,
            fan_out_grad_sq=stats.fan_out_grad_sq,
        )

    def describe(self, selected: List[int], scores: List[float]) -> str:
        what = "filter" if len(selected) == 1 else "filters"
        if scores:
            vals = ", ".join(f"{s:.4g}" for s in scores)
            return f"Added {len(selected)} random {what} (score {vals})"
        return f"Added {len(selected)} random {what}"
