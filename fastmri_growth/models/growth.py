"""Growth methods: ``sample_select`` and ``split``, and the report they return.

Phases (named after the algorithm): validate the request, collect
statistics (one forward+backward, :mod:`.scoring`), choose the new filters,
apply the surgery (:mod:`.surgery`). Nothing changes before the choice is
made, so every error leaves the model as it was.
"""

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Union

import torch
from torch import nn
from torch.nn import functional as F

from .scoring import collect_statistics, score_candidates
from .surgery import ParamChange, add_filters, append_slices, in_dim
from .topology import conv_name, parse_layer_id

#: Default relative fan-in noise of ``split``: each copy gets +/- this
#: fraction of the filter's norm in a random direction. The output change is
#: second order in it except at pixels near LeakyReLU's kink, where it is
#: first order; measured at every site of small float64 U-Nets, 1e-3 moves
#: the output by at most about 1e-4 of its scale (1e-2 moved it by 1.4e-3).
DEFAULT_SPLIT_NOISE = 1e-3
#: Fan-out asymmetry used by ``split`` when ``split_noise == 0``: the copies
#: keep identical fan-ins and take ``1/2 + eta`` and ``1/2 - eta`` of the old
#: fan-out, which preserves the output exactly and still gives the copies
#: different fan-in gradients.
SPLIT_FAN_OUT_ASYMMETRY = 0.1
#: Candidates whose fan-in directions have a cosine similarity above this are
#: near-duplicates; ``sample_select`` with ``n_new > 1`` keeps only one.
DUPLICATE_COSINE = 0.95


@dataclass
class GrowthReport:
    """What one growth step did.

    Attributes:
        layer_idx: Grown layer id.
        conv_idx: 0 or 1.
        method: ``"sample_select"`` or ``"split"``.
        n_added: Number of filters added.
        scores: sample_select: one score per candidate; split: the fan-in
            gradient norm of every existing filter.
        selected: Kept candidate index (sample_select) or duplicated filter
            index (split); a list when ``n_added > 1``.
        size_before: :meth:`DynamicUnet.get_network_size` before.
        size_after: :meth:`DynamicUnet.get_network_size` after.
        params_before: Parameter count before.
        params_after: Parameter count after.
        seconds: Wall time of the growth step.
        loss: Loss on the scoring batch before growth.
        changes: The parameter replacements (for the optimizer update).
    """

    layer_idx: str
    conv_idx: int
    method: str
    n_added: int
    scores: List[float]
    selected: Union[int, List[int]]
    size_before: Dict[str, Dict[str, int]]
    size_after: Dict[str, Dict[str, int]]
    params_before: int
    params_after: int
    seconds: float
    loss: float = float("nan")
    changes: List[ParamChange] = field(default_factory=list, repr=False, compare=False)

    @property
    def site(self) -> str:
        """e.g. ``"bottleneck conv1"``."""
        return f"{self.layer_idx} {conv_name(self.conv_idx)}"

    def __str__(self) -> str:
        key = f"{conv_name(self.conv_idx)}_out"
        before, after = self.size_before[self.layer_idx][key], self.size_after[self.layer_idx][key]
        sel = self.selected if isinstance(self.selected, list) else [self.selected]
        vals = ", ".join(f"{self.scores[i]:.4g}" for i in sel)
        if self.method == "split":
            what = "filter" if len(sel) == 1 else "filters"
            chosen = f"Split {what} {self.selected} (grad norm {vals})"
        else:
            what = "candidate" if len(sel) == 1 else "candidates"
            chosen = f"Selected {what} {self.selected} (score {vals})"
        return f"Growing {self.site}: {chosen}, {before} -> {after} filters"


# --------------------------------------------------------------- validation
def _validate(model, layer_idx, conv_idx, batch, target, n_new, method, split_noise, candidates):
    from .dynamic_unet import _check_conv_idx

    parse_layer_id(layer_idx, model.num_pool_layers)
    _check_conv_idx(conv_idx)
    if method not in GROWTH_METHODS:
        raise ValueError(
            f"Unknown growth method {method!r}; valid methods: {', '.join(GROWTH_METHODS)}"
        )
    if not isinstance(n_new, int) or isinstance(n_new, bool) or n_new < 1:
        raise ValueError(f"n_new must be an int >= 1, got {n_new!r}")
    conv = model.conv_layer(layer_idx, conv_idx)
    device, dtype = conv.weight.device, conv.weight.dtype
    if method == "sample_select":
        if candidates is None:
            n_cand = model.n_candidates
            if not isinstance(n_cand, int) or isinstance(n_cand, bool) or n_cand < 1:
                raise ValueError(f"n_candidates must be an int >= 1, got {n_cand!r}")
        else:
            want = (conv.weight.shape[1], 3, 3)
            if not torch.is_tensor(candidates) or candidates.dim() != 4 or tuple(candidates.shape[1:]) != want:
                got = tuple(candidates.shape) if torch.is_tensor(candidates) else type(candidates).__name__
                raise ValueError(
                    f"candidates must have shape (K, {want[0]}, 3, 3) for {layer_idx} "
                    f"{conv_name(conv_idx)}, got {got}"
                )
            n_cand = candidates.shape[0]
        if n_new > n_cand:
            raise ValueError(f"n_new={n_new} exceeds the number of candidates ({n_cand})")
    else:
        if split_noise is not None and (not isinstance(split_noise, (int, float)) or
                                        not math.isfinite(split_noise) or split_noise < 0):
            raise ValueError(f"split_noise must be a finite float >= 0 or None, got {split_noise!r}")
        if n_new > conv.weight.shape[0]:
            raise ValueError(
                f"n_new={n_new} exceeds the {conv.weight.shape[0]} filters of {layer_idx} "
                f"{conv_name(conv_idx)} that split can duplicate"
            )
    if batch is None and target is None and method == "split":
        if conv.weight.grad is None:
            raise ValueError(
                "split needs gradients: pass batch_data and target_data, or run a "
                "backward pass first so that the conv weights have .grad"
            )
        return
    if batch is None or target is None:
        raise ValueError(f"{method} needs batch_data and target_data (got None)")
    for name, t in (("batch_data", batch), ("target_data", target)):
        if not torch.is_tensor(t):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.device != device:
            raise ValueError(f"{name} is on device {t.device} but the model is on {device}")
        if t.dtype != dtype:
            raise ValueError(f"{name} has dtype {t.dtype} but the model's weights are {dtype}")
    if batch.dim() != 4 or batch.shape[1] != model.in_chans:
        raise ValueError(
            f"batch_data must have shape (N, {model.in_chans}, H, W), got {tuple(batch.shape)}"
        )
    n, _, h, w = batch.shape
    valid = [(n, model.out_chans, h, w)] + ([(n, h, w)] if model.out_chans == 1 else [])
    if tuple(target.shape) not in valid:
        raise ValueError(
            f"target_data shape {tuple(target.shape)} does not match the batch; valid "
            f"shapes: {' or '.join(map(str, valid))}"
        )


# ---------------------------------------------------------------- candidates
def generate_candidates(conv: nn.Conv2d, count: int, generator: Optional[torch.Generator] = None
                        ) -> torch.Tensor:
    """Random candidate fan-ins, orthogonal where the dimension allows.

    InstanceNorm makes the score independent of a fan-in's scale but not of
    its direction, so the first ``min(count, C_in*9)`` candidates are
    orthonormalised (no two near-identical directions) and all are scaled to
    the mean norm of the conv's existing filters, so a kept filter starts at
    a typical magnitude.

    Args:
        conv: The grown conv, weight `(C_out, C_in, 3, 3)`.
        count: Number of candidates K.
        generator: Optional CPU random generator.

    Returns:
        Candidates `(K, C_in, 3, 3)` on the conv's device and dtype.
    """
    w = conv.weight.detach()
    d = w[0].numel()
    g = torch.randn(count, d, generator=generator, dtype=torch.float64)
    m = min(count, d)
    q, r = torch.linalg.qr(g[:m].T)
    # Fix QR's sign ambiguity so the result is a deterministic function of g.
    q = q * torch.sign(torch.diagonal(r)).where(torch.diagonal(r) != 0, torch.ones(1, dtype=q.dtype))
    g = torch.cat([q.T, g[m:] / g[m:].norm(dim=1, keepdim=True)], dim=0)
    norm = w.flatten(1).norm(dim=1).mean()
    if not torch.isfinite(norm) or norm <= 0:
        norm = torch.tensor(math.sqrt(2.0))  # Kaiming: std sqrt(2/d) per entry
    return (g * norm.double().cpu()).reshape(count, *w.shape[1:]).to(w)


def select_diverse(scores: torch.Tensor, candidates: torch.Tensor, n_new: int,
                   max_cosine: float = DUPLICATE_COSINE) -> List[int]:
    """Greedy top-k by score, skipping near-duplicate fan-in directions.

    Args:
        scores: `(K,)`.
        candidates: `(K, C_in, 3, 3)`.
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


# ------------------------------------------------------------------- methods
def sample_select(model, layer_idx, conv_idx, batch, target, criterion, n_new,
                  candidates=None, generator=None, reduce_fn=None, **_):
    """Score K random candidates in one pass and keep the best ``n_new``.

    Kept filters get the candidate's fan-in and a ZERO fan-out in every
    consumer, so the network output is unchanged.

    Args:
        model: The :class:`~fastmri_growth.models.DynamicUnet` to grow.
        layer_idx: Layer id.
        conv_idx: 0 or 1.
        batch: Scoring batch `(N, in_chans, H, W)`.
        target: Target `(N, out_chans, H, W)` or `(N, H, W)`.
        criterion: Loss ``criterion(output, target)``.
        n_new: Filters to keep.
        candidates: Optional fan-ins `(K, C_in, 3, 3)`; default: ``model.n_candidates``
            from :func:`generate_candidates`.
        generator: Optional CPU random generator.
        reduce_fn: Optional reduction of each gradient tensor (DDP mean).

    Returns:
        ``(scores, selected, changes, loss)``: K floats, the kept indices,
        the :class:`ParamChange` list, and the loss before growth.
    """
    conv = model.conv_layer(layer_idx, conv_idx)
    if candidates is None:
        candidates = generate_candidates(conv, model.n_candidates, generator)
    candidates = candidates.to(conv.weight)
    stats = collect_statistics(model, layer_idx, conv_idx, batch, target, criterion, reduce_fn)
    scores = score_candidates(model, layer_idx, conv_idx, candidates, batch, target,
                              criterion, reduce_fn=reduce_fn, stats=stats)
    if not torch.isfinite(scores).all():
        raise RuntimeError(
            f"Growth aborted: non-finite candidate scores at {layer_idx} "
            f"{conv_name(conv_idx)}; the model is unchanged"
        )
    selected = select_diverse(scores, candidates, n_new)
    changes = add_filters(conv, model.consumers(layer_idx, conv_idx), candidates[selected])
    return scores.tolist(), selected, changes, stats.loss


def split(model, layer_idx, conv_idx, batch, target, criterion, n_new,
          split_noise=None, generator=None, reduce_fn=None, **_):
    """Duplicate the filters with the largest fan-in gradient norm.

    Both copies share the old fan-out: each consumer's column is split into
    two halves, which is exact because InstanceNorm normalises each channel
    on its own. Symmetry is broken by ``split_noise`` (relative fan-in noise,
    ``+eps`` on one copy and ``-eps`` on the other: the first-order changes
    cancel except near LeakyReLU's kink), or, with ``split_noise == 0``, by
    fan-out shares ``1/2 +/- SPLIT_FAN_OUT_ASYMMETRY`` (output preserved up to
    float rounding).

    Choosing by the largest gradient norm is a heuristic; published
    splitting methods (Wu, Wang & Liu 2019; Wu et al., Firefly 2020) use a
    second-order criterion.

    Args:
        model: The :class:`~fastmri_growth.models.DynamicUnet` to grow.
        layer_idx: Layer id.
        conv_idx: 0 or 1.
        batch: Batch `(N, in_chans, H, W)` for the gradients, or None to use
            the conv weight's existing ``.grad`` `(C_out, C_in, 3, 3)`.
        target: Target `(N, out_chans, H, W)` or `(N, H, W)`, or None.
        criterion: Loss ``criterion(output, target)``.
        n_new: Filters to duplicate.
        split_noise: Relative fan-in noise; None means ``DEFAULT_SPLIT_NOISE``.
        generator: Optional CPU random generator for the noise.
        reduce_fn: Optional reduction of the weight gradient (DDP mean).

    Returns:
        ``(grad_norms, selected, changes, loss)``: one fan-in gradient norm
        per existing filter, the duplicated indices, the
        :class:`ParamChange` list, and the loss before growth.
    """
    conv = model.conv_layer(layer_idx, conv_idx)
    if batch is not None:
        stats = collect_statistics(model, layer_idx, conv_idx, batch, target, criterion, reduce_fn)
        grad, loss = stats.weight_grad, stats.loss
    else:
        grad, loss = conv.weight.grad.detach(), float("nan")
    if reduce_fn is not None:
        grad = reduce_fn(grad)
    norms = grad.flatten(1).norm(dim=1)
    if not torch.isfinite(norms).all():
        raise RuntimeError(
            f"Growth aborted: non-finite gradients at {layer_idx} {conv_name(conv_idx)}; "
            "the model is unchanged"
        )
    selected = torch.argsort(norms, descending=True)[:n_new].tolist()
    eps = DEFAULT_SPLIT_NOISE if split_noise is None else float(split_noise)
    w = conv.weight.detach()
    rows = w[selected].clone()
    if eps > 0:
        noise = torch.randn(rows.shape, generator=generator, dtype=torch.float64).to(rows)
        scale = eps * rows.flatten(1).norm(dim=1) / noise.flatten(1).norm(dim=1).clamp_min(1e-30)
        noise = noise * scale.view(-1, 1, 1, 1)
        keep_share, new_share = 0.5, 0.5
    else:
        noise = torch.zeros_like(rows)
        keep_share, new_share = 0.5 + SPLIT_FAN_OUT_ASYMMETRY, 0.5 - SPLIT_FAN_OUT_ASYMMETRY
    sel = torch.tensor(selected, device=w.device)

    def edit_fan_in(old):
        old[sel] += noise
        return old

    changes = [append_slices(conv, "weight", 0, rows - noise, edit_old=edit_fan_in)]
    for c in model.consumers(layer_idx, conv_idx):
        dim = in_dim(c.module)
        cols_idx = sel + c.channel_offset
        cols = c.module.weight.detach().index_select(dim, cols_idx)

        def edit_fan_out(old, dim=dim, cols_idx=cols_idx):
            old.index_copy_(dim, cols_idx, old.index_select(dim, cols_idx) * keep_share)
            return old

        changes.append(append_slices(c.module, "weight", dim, cols * new_share, edit_old=edit_fan_out))
    return norms.tolist(), selected, changes, loss


#: The growth methods; CLI choices are drawn from this dict.
GROWTH_METHODS: Dict[str, Callable] = {"sample_select": sample_select, "split": split}


def grow(model, layer_idx, conv_idx, batch, target, criterion=F.l1_loss, n_new=1, method=None,
         split_noise=None, candidates=None, generator=None, reduce_fn=None) -> GrowthReport:
    """Grow one conv of ``model``: validate, choose, apply the surgery.

    See :meth:`DynamicUnet.grow_network` for the arguments (batch
    `(N, in_chans, H, W)`, target `(N, out_chans, H, W)` or `(N, H, W)`,
    candidates `(K, C_in, 3, 3)`).

    Returns:
        The :class:`GrowthReport`.
    """
    start = time.perf_counter()
    method = model.growth_method if method is None else method
    _validate(model, layer_idx, conv_idx, batch, target, n_new, method, split_noise, candidates)
    size_before, params_before = model.get_network_size(), model.num_parameters()
    scores, selected, changes, loss = GROWTH_METHODS[method](
        model, layer_idx, conv_idx, batch, target, criterion, n_new,
        candidates=candidates, split_noise=split_noise, generator=generator, reduce_fn=reduce_fn,
    )
    model.sync_attributes()
    return GrowthReport(
        layer_idx=layer_idx, conv_idx=conv_idx, method=method, n_added=n_new,
        scores=scores, selected=selected[0] if n_new == 1 else selected,
        size_before=size_before, size_after=model.get_network_size(),
        params_before=params_before, params_after=model.num_parameters(),
        seconds=time.perf_counter() - start, loss=loss, changes=changes,
    )
