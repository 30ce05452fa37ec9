"""Candidate fan-ins and how to choose among them.

InstanceNorm makes a zero-fan-out candidate's score independent of its
fan-in's scale but not of its direction, so candidates are random
directions, orthonormalised where the fan-in dimension allows, scaled to the
existing filters' mean norm so that a kept filter starts at a typical
magnitude.
"""
from __future__ import annotations

import math
from typing import List, Optional, Union

import torch
from torch import nn
from torch.nn import functional as F

from .net import SiteSpec

#: Candidates whose fan-in directions have a cosine similarity above this are
#: near-duplicates; selecting several keeps only one of them.
DUPLICATE_COSINE = 0.95


def random_directions(count: int, dim: int, generator: Optional[torch.Generator] = None
                      ) -> torch.Tensor:
    """``count`` unit vectors in ``R^dim``, the first ``min(count, dim)`` orthonormal.

    Drawn in float64 on the CPU, so the result is the same function of the
    generator's state on every machine and device.

    Returns:
        `(count, dim)` float64.
    """
    g = torch.randn(count, dim, generator=generator, dtype=torch.float64)
    m = min(count, dim)
    q, r = torch.linalg.qr(g[:m].T)
    # Fix QR's sign ambiguity so the result is a deterministic function of g.
    diag = torch.diagonal(r)
    q = q * torch.sign(diag).where(diag != 0, torch.ones(1, dtype=q.dtype))
    return torch.cat([q.T, g[m:] / g[m:].norm(dim=1, keepdim=True)], dim=0)


def _rows(spec_or_conv: Union[SiteSpec, nn.Module]) -> torch.Tensor:
    if isinstance(spec_or_conv, SiteSpec):
        return spec_or_conv.filter_rows()
    w = spec_or_conv.weight.detach()
    return w.transpose(0, 1) if isinstance(spec_or_conv, nn.ConvTranspose2d) else w


def typical_norm(spec: Union[SiteSpec, nn.Module]) -> float:
    """Mean norm of a site's existing filters (Kaiming's ``sqrt(2)`` if there are none)."""
    norm = _rows(spec).flatten(1).norm(dim=1).mean()
    if not torch.isfinite(norm) or norm <= 0:
        return math.sqrt(2.0)  # Kaiming: std sqrt(2/d) per entry
    return float(norm)


def generate_candidates(spec: Union[SiteSpec, nn.Module], count: int,
                        generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Random candidate fan-ins for a site, orthogonal where the dimension allows.

    Args:
        spec: The site (or its conv module).
        count: Number of candidates K.
        generator: Optional CPU random generator.

    Returns:
        Candidates `(K, C_in, kh, kw)` on the conv's device and dtype.
    """
    rows = _rows(spec)
    shape = tuple(rows.shape[1:])
    dirs = random_directions(count, int(torch.Size(shape).numel()), generator)
    w = rows
    return (dirs * typical_norm(spec)).reshape(count, *shape).to(device=w.device, dtype=w.dtype)


def select_diverse(scores: torch.Tensor, candidates: torch.Tensor, n_new: int,
                   max_cosine: float = DUPLICATE_COSINE) -> List[int]:
    """Greedy top-k by score, skipping near-duplicate fan-in directions.

    Args:
        scores: `(K,)`.
        candidates: `(K, C_in, kh, kw)`.
        n_new: How many to keep.
        max_cosine: Candidates more similar than this to a kept one are
            skipped (unless too few remain, then the best of the rest fill up).

    Returns:
        ``n_new`` candidate indices, best first.
    """
    order = torch.argsort(scores, descending=True).tolist()
    dirs = F.normalize(candidates.flatten(1).double(), dim=1)
    kept: List[int] = []
    for i in order:
        if len(kept) == n_new:
            break
        if all(float(dirs[i] @ dirs[j]) <= max_cosine for j in kept):
            kept.append(i)
    for i in order:  # too few distinct directions: fill with the best others
        if len(kept) == n_new:
            break
        if i not in kept:
            kept.append(i)
    return kept
