"""``gradmax``: fan-ins that maximise the exact score and differ from each other.

Zero-fan-out candidates all start from the same function, so choosing among
random ones buys little (growth.md: selection measured no better than
random). ``gradmax`` builds a better pool and chooses from it with a
diversity term measured on feature maps:

1. **Pre-pass: the linearised problem.** Ignoring the activation and
   replacing each sample's InstanceNorm scale by a common one, a candidate's
   fan-out gradient is linear in its fan-in, ``G(w) = A w / sqrt(w^T S w)``,
   with ``A`` built from the consumers' deltas and the centred input patches
   and ``S`` their covariance (GradMax, Evci et al. 2022, made
   InstanceNorm-aware as in TINY, Verbockhaven et al.). Its maximisers are
   ``S^(-1/2)`` times the top right-singular vectors of ``A S^(-1/2)``, found
   in a subspace of at most :data:`MAX_LINEARISED_DIM` dimensions;
   the top ``gradmax_directions`` of them, each with both signs (LeakyReLU is
   asymmetric), join ``n_candidates`` random candidates per added filter in
   the pool. ``A``
   and ``S`` are accumulated over the scoring batches like every statistic.
2. **Exact scores.** The pool is scored by the exact closed form (the same
   pass as ``sample_select``), which also accumulates the feature maps'
   correlations: among the candidates, and against the site's existing
   filters.
3. **Diverse greedy choice.** Filters are kept one by one, each the
   candidate with the largest ``score * (1 - feature_corr_weight * rho)``,
   ``rho`` its largest absolute feature-map correlation with an existing
   filter or an already kept one. The report gives every kept filter's
   ``rho`` (``details["feature_corr"]``).

Cost: two statistics passes over the scoring batches instead of one.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional

import torch

from ..candidates import generate_candidates, random_directions, typical_norm
from ..net import SiteSpec
from ..statistics import Accumulator, SiteStatistics, consumer_slice_gradient
from . import register_method
from .base import GrowthMethod, Option, Proposal, positive_int, rows_of
from .sample_select import N_CANDIDATES

#: The linearised problem is solved in a subspace of the fan-in space of at
#: most this dimension: the whole space for small fan-ins (e.g. 9 or 36 at
#: the first convs), else a random orthonormal one (fixed per site size, so
#: every DDP rank agrees). Its cost is that of scoring this many candidates:
#: with the whole space (d up to 9 * 512) a pre-pass cost over 100 training
#: steps at chans 16 (measured in benchmarks/event_cost.py).
MAX_LINEARISED_DIM = 64


def _unit_interval(name):
    def check(value):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or \
                not 0.0 <= float(value) <= 1.0:
            return f"{name} must be a float in [0, 1], got {value!r}"
        return None
    return check


GRADMAX_DIRECTIONS = Option(
    "gradmax_directions", 4, int, positive_int("gradmax_directions"),
    "gradmax: top directions of the linearised problem (each with both signs) added to the "
    "candidate pool",
)
FEATURE_CORR_WEIGHT = Option(
    "feature_corr_weight", 1.0, float, _unit_interval("feature_corr_weight"),
    "gradmax: weight of the feature-map correlation penalty in the greedy choice "
    "(0: top scores only)",
)


class LinearisedProblem(Accumulator):
    """Per batch: ``A`` (per consumer) and ``S`` of the linearised score, in a fan-in basis.

    Args:
        basis: `(d, C_in, kh, kw)` fan-in directions spanning the searched space.
    """

    def __init__(self, basis: torch.Tensor):
        self.basis = basis

    def __call__(self, spec, inputs, deltas, input_sizes) -> Dict[str, torch.Tensor]:
        z = spec.conv_outputs(inputs, self.basis)                    # (N, d, H, W)
        z = z - z.mean(dim=(-2, -1), keepdim=True)
        n, d, h, w = z.shape
        out = {"S": torch.einsum("nihw,njhw->ij", z, z) / (n * h * w)}
        for i, (c, delta, hw) in enumerate(zip(spec.consumers, deltas, input_sizes)):
            out[f"A{i}"] = consumer_slice_gradient(c, c.see(z, hw), delta)  # (d, C_out, k, k)
        return out


class FeatureMoments(Accumulator):
    """Per batch: first and second moments of candidates' and existing filters' features.

    Args:
        candidates: `(K, C_in, kh, kw)`.
    """

    def __init__(self, candidates: torch.Tensor):
        self.candidates = candidates

    def __call__(self, spec, inputs, deltas, input_sizes) -> Dict[str, torch.Tensor]:
        rows = torch.cat([self.candidates.to(inputs.dtype), spec.filter_rows().to(inputs.dtype)])
        f = spec.features(inputs, rows)                              # (N, K + C, H, W)
        f = f.transpose(0, 1).flatten(1)                             # (K + C, N*H*W)
        return {"m1": f.mean(dim=1), "m2": f @ f.T / f.shape[1]}


def feature_correlations(m1: torch.Tensor, m2: torch.Tensor) -> torch.Tensor:
    """Correlation matrix from accumulated moments (zero where a feature is constant)."""
    cov = m2 - torch.outer(m1, m1)
    std = cov.diagonal().clamp_min(0).sqrt()
    denom = torch.outer(std, std)
    return torch.where(denom > 0, cov / denom.clamp_min(1e-30), torch.zeros_like(cov))


def linearised_directions(spec: SiteSpec, pre: SiteStatistics, basis: torch.Tensor,
                          count: int) -> torch.Tensor:
    """The top ``count`` maximisers of the linearised score, as fan-ins `(count, C_in, kh, kw)`."""
    S = pre.extra["S"].double()
    A = torch.cat([pre.extra[f"A{i}"].double().flatten(1) for i in range(len(spec.consumers))],
                  dim=1).T                                           # (R, d)
    evals, evecs = torch.linalg.eigh((S + S.T) / 2)
    floor = evals.max().clamp_min(1e-30) * 1e-6
    inv_sqrt = evecs @ torch.diag(evals.clamp_min(floor).rsqrt()) @ evecs.T
    B = A @ inv_sqrt
    _, _, vh = torch.linalg.svd(B, full_matrices=False)
    count = min(count, vh.shape[0])
    w = vh[:count] @ inv_sqrt                                         # rows: S^(-1/2) v
    w = w / w.norm(dim=1, keepdim=True).clamp_min(1e-30)
    rows = w @ basis.double().flatten(1)                              # back to the fan-in space
    rows = rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-30) * typical_norm(spec)
    return rows.reshape(count, *spec.fan_in_shape)


@register_method
class GradMax(GrowthMethod):
    name = "gradmax"
    summary = ("directions maximising the linearised score plus random candidates, scored "
               "exactly, kept greedily with a feature-correlation penalty (zero fan-out)")
    options = (N_CANDIDATES, GRADMAX_DIRECTIONS, FEATURE_CORR_WEIGHT)

    def check(self, spec: SiteSpec, n_new: int, candidates: Optional[torch.Tensor]) -> None:
        if candidates is not None:
            raise ValueError("gradmax builds its own candidates; pass none (or use sample_select)")


    def _basis(self, spec: SiteSpec) -> torch.Tensor:
        d = int(torch.Size(spec.fan_in_shape).numel())
        w = spec.conv.weight
        if d <= MAX_LINEARISED_DIM:
            eye = torch.eye(d, dtype=w.dtype, device=w.device)
        else:
            # A fixed sketch (seeded by the site's size), so every DDP rank agrees.
            g = torch.Generator().manual_seed(d)
            eye = random_directions(MAX_LINEARISED_DIM, d, g).to(dtype=w.dtype, device=w.device)
        return eye.reshape(-1, *spec.fan_in_shape)

    def pre_accumulator(self, spec: SiteSpec, n_new: int) -> Optional[Accumulator]:
        return LinearisedProblem(self._basis(spec))

    def candidates(self, spec, n_new, generator, given=None, pre=None):
        rand = generate_candidates(spec, self.n_candidates * n_new, generator)
        if pre is None or "S" not in pre.extra:
            return rand
        dirs = linearised_directions(spec, pre, self._basis(spec), self.gradmax_directions)
        dirs = dirs.to(rand)
        return torch.cat([dirs, -dirs, rand])

    def accumulator(self, spec: SiteSpec, n_new: int,
                    candidates: Optional[torch.Tensor]) -> Optional[Accumulator]:
        return FeatureMoments(candidates)

    def propose(self, spec: SiteSpec, n_new: int, stats: SiteStatistics,
                generator: Optional[torch.Generator]) -> Proposal:
        scores = stats.scores()
        if not torch.isfinite(scores).all():
            raise RuntimeError(
                f"Growth aborted: non-finite candidate scores at {spec.site.label}; "
                "the model is unchanged"
            )
        k = stats.candidates.shape[0]
        n_random = self.n_candidates * n_new
        corr = feature_correlations(stats.extra["m1"].double(), stats.extra["m2"].double()).abs()
        to_existing = corr[:k, k:].amax(dim=1) if corr.shape[0] > k else torch.zeros(k)
        rho = to_existing.clone()
        kept: List[int] = []
        rhos: List[float] = []
        s = scores.double()
        for _ in range(n_new):
            value = s * (1 - self.feature_corr_weight * rho)
            value[kept] = -math.inf
            j = int(torch.argmax(value))
            kept.append(j)
            rhos.append(float(rho[j]))
            rho = torch.maximum(rho, corr[:k, j])
        idx = torch.tensor(kept, device=scores.device)
        n_dirs = k - n_random
        pair = corr[idx][:, idx].fill_diagonal_(0) if n_new > 1 else torch.zeros(1, 1)
        return Proposal(
            rows=stats.candidates[kept], selected=kept, scores=scores.tolist(),
            fan_out_grads=rows_of(stats.fan_out_grads, idx),
            fan_out_grad_sq=rows_of(stats.fan_out_grad_sq, idx),
            details={"feature_corr": rhos,
                     "max_corr_kept": float(pair.max()),
                     "max_corr_existing": float(to_existing[idx].max()),
                     "from_linearised": [j < n_dirs for j in kept]},
        )

    def describe(self, selected: List[int], scores: List[float]) -> str:
        what = "candidate" if len(selected) == 1 else "candidates"
        sel = selected[0] if len(selected) == 1 else selected
        vals = ", ".join(f"{scores[i]:.4g}" for i in selected)
        return f"Selected {what} {sel} (score {vals}, diverse by feature correlation)"

