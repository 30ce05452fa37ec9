"""Collect what growth decisions need: one forward+backward per batch for every site.

For a candidate filter ``j`` of a site (fan-in ``w_j``, zero fan-out) the
only non-zero gradient is on its fan-out slice in each consumer ``c``::

    G_jc = dL/dV_jc = sum over batch and positions of delta_c (x) h_j

with ``h_j = post(conv(x, w_j))`` (as the consumer sees it: pooled, padded)
and ``delta_c`` the gradient of the loss w.r.t. the consumer conv's output.
``delta_c`` does not depend on any candidate, so one ordinary forward and
backward of the current network gives the deltas of every consumer and the
input ``x`` of every site conv at once; one weight-gradient call per
consumer then gives every candidate's ``G``.

Over several batches the loss is their mean, so ``G`` is the mean of the
per-batch ``G``: the candidates are fixed first, each batch's ``G`` is
computed from that batch's tensors and accumulated, and no graph or
activation outlives its batch. The mean of the per-batch ``G**2`` is kept
too: it is the second moment an adaptive optimizer estimates from steps on
such batches (it includes the batch-to-batch variance that ``G**2``, the
square of the mean, leaves out). Under DDP the accumulated sums are reduced
once at the end (``reduce_fn``), so every rank holds the same statistics.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .net import Consumer, SiteSpec
from .sites import Site

LossFn = Callable[[Any], torch.Tensor]
ReduceFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class SiteStatistics:
    """Statistics of one site, averaged over the scoring batches (and ranks).

    Attributes:
        site: The site.
        candidates: The scored fan-ins `(K, C_in, kh, kw)`, or None.
        fan_out_grads: Per consumer, each candidate's fan-out gradient
            `(K, C_out, kh, kw)` (candidate first), or None.
        fan_out_grad_sq: Per consumer, the mean over batches (and ranks) of
            each candidate's squared per-batch fan-out gradient (same
            shapes), or None.
        weight_grad: dL/d(site conv weight), shaped like the weight, or None.
        consumer_grads: Per consumer, dL/d(consumer weight), or None.
        extra: Accumulators a growth method asked for (see :class:`Accumulator`).
        input_hw: The site conv's input size on the first batch.
        consumer_out_hw: Each consumer's output size on the first batch.
    """

    site: Site
    candidates: Optional[torch.Tensor] = None
    fan_out_grads: Optional[List[torch.Tensor]] = None
    fan_out_grad_sq: Optional[List[torch.Tensor]] = None
    weight_grad: Optional[torch.Tensor] = None
    consumer_grads: Optional[List[torch.Tensor]] = None
    extra: Dict[str, torch.Tensor] = field(default_factory=dict)
    input_hw: Optional[tuple] = None
    consumer_out_hw: Optional[List[tuple]] = None

    def scores(self) -> torch.Tensor:
        """``s_j = sqrt(sum over consumers ||G_jc||^2)``, shape `(K,)`."""
        return scores_from_gradients(self.fan_out_grads)


@dataclass
class Statistics:
    """What one statistics pass over the scoring batches found.

    Attributes:
        sites: Per site, its :class:`SiteStatistics`.
        loss: Mean loss over the batches (and ranks), before any change.
        batches: Number of batches (per rank).
    """

    sites: Dict[Site, SiteStatistics]
    loss: float
    batches: int


class NonFiniteLossError(RuntimeError):
    """A scoring batch's loss is not finite (on this or another rank).

    Attributes:
        batch_index: Index of the first bad batch on this rank, or None when
            only another rank saw one.
    """

    def __init__(self, message: str, batch_index: Optional[int] = None):
        super().__init__(message)
        self.batch_index = batch_index


class Accumulator:
    """A per-batch statistic a growth method needs beyond the fan-out gradients.

    Subclasses compute one batch's tensors from the site conv's input ``x``
    and the consumers' deltas; the pass averages them over batches (and
    ranks) and stores them in :attr:`SiteStatistics.extra`.
    """

    def __call__(self, spec: SiteSpec, inputs: torch.Tensor, deltas: List[torch.Tensor],
                 input_sizes: List[tuple]) -> Dict[str, torch.Tensor]:
        raise NotImplementedError


class _EvalMode:
    """Eval mode and gradients on the needed weights, restored afterwards.

    Scoring runs without dropout, so that the closed form and a brute-force
    pass see the same network.
    """

    def __init__(self, model: nn.Module, params: List[nn.Parameter]):
        self.model, self.params = model, params

    def __enter__(self):
        self.modes = [(m, m.training) for m in self.model.modules()]
        self.flags = [(p, p.requires_grad) for p in self.params]
        self.model.eval()
        for p in self.params:
            p.requires_grad_(True)
        return self

    def __exit__(self, *exc):
        for m, mode in self.modes:
            m.training = mode
        for p, flag in self.flags:
            p.requires_grad_(flag)
        return False


def consumer_slice_gradient(consumer: Consumer, features: torch.Tensor,
                            delta: torch.Tensor) -> torch.Tensor:
    """Gradient of new input slices of a consumer, per candidate channel.

    Args:
        consumer: The consumer.
        features: The candidates' features as the consumer sees them `(N, K, H, W)`.
        delta: dL/d(consumer output) `(N, C_out, H', W')`.

    Returns:
        `(K, C_out, kh, kw)`: for candidate ``j``, the gradient of the
        consumer weight entries that would read channel ``j``.
    """
    m = consumer.module
    k = features.shape[1]
    kh, kw = m.weight.shape[2:]
    if isinstance(m, nn.Conv2d) and m.groups == 1:
        if (kh, kw) == (1, 1) and m.stride == (1, 1) and m.padding in ((0, 0), 0) \
                and m.dilation == (1, 1):
            return torch.einsum("ncyx,noyx->co", features, delta).reshape(k, -1, 1, 1)
        g = torch.nn.grad.conv2d_weight(features, (delta.shape[1], k, kh, kw), delta,
                                        stride=m.stride, padding=m.padding, dilation=m.dilation)
        return g.transpose(0, 1)
    if isinstance(m, nn.ConvTranspose2d) and m.groups == 1 and tuple(m.stride) == (kh, kw) \
            and tuple(m.padding) == (0, 0) and tuple(m.dilation) == (1, 1) \
            and tuple(m.output_padding) == (0, 0):
        # out[n, o, s*y+a, s*x+b] = sum_c in[n, c, y, x] W[c, o, a, b]
        n, o, h2, w2 = delta.shape
        d = delta.reshape(n, o, h2 // kh, kh, w2 // kw, kw)
        return torch.einsum("ncyx,noyaxb->coab", features, d)
    # Any other linear consumer: differentiate <delta, consumer(features, V)> at V = 0.
    shape = list(m.weight.shape)
    shape[consumer.in_dim] = k
    v = features.new_zeros(shape, requires_grad=True)
    with torch.enable_grad():
        if isinstance(m, nn.ConvTranspose2d):
            out = F.conv_transpose2d(features, v, stride=m.stride, padding=m.padding,
                                     output_padding=m.output_padding, groups=m.groups,
                                     dilation=m.dilation)
        else:
            out = F.conv2d(features, v, stride=m.stride, padding=m.padding, dilation=m.dilation,
                           groups=m.groups)
        (g,) = torch.autograd.grad((out * delta).sum(), v)
    return g.movedim(consumer.in_dim, 0)


def fan_out_gradients(spec: SiteSpec, inputs: torch.Tensor, candidates: torch.Tensor,
                      deltas: Sequence[torch.Tensor], input_sizes: Sequence[tuple]
                      ) -> List[torch.Tensor]:
    """One batch's fan-out gradients of every candidate, per consumer.

    Args:
        spec: The site.
        inputs: The site conv's input on this batch `(N, C_in, H, W)`.
        candidates: Fan-ins `(K, C_in, kh, kw)`.
        deltas: Per consumer, dL/d(consumer output).
        input_sizes: Per consumer, its input's spatial size ``(H, W)``.

    Returns:
        Per consumer `(K, C_out, kh, kw)`.
    """
    h = spec.features(inputs, candidates)
    return [consumer_slice_gradient(c, c.see(h, hw), d)
            for c, d, hw in zip(spec.consumers, deltas, input_sizes)]


def scores_from_gradients(grads: Sequence[torch.Tensor]) -> torch.Tensor:
    """``s_j = sqrt(sum over consumers ||G_jc||^2)``, shape `(K,)`."""
    total = sum(g.flatten(1).double().pow(2).sum(dim=1) for g in grads)
    return total.sqrt().to(grads[0].dtype)


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    # bfloat16 weights: accumulate in float32; float64 stays float64.
    return torch.promote_types(dtype, torch.float32)


def collect(
    net: nn.Module,
    specs: Sequence[SiteSpec],
    batches: Iterable[Any],
    loss_fn: LossFn,
    candidates: Optional[Dict[Site, torch.Tensor]] = None,
    want_weight_grad: Sequence[Site] = (),
    want_consumer_grads: Sequence[Site] = (),
    accumulators: Optional[Dict[Site, Accumulator]] = None,
    reduce_fn: Optional[ReduceFn] = None,
) -> Statistics:
    """One forward+backward per batch, statistics of every site at once.

    Gradients are taken with ``torch.autograd.grad``: parameters' ``.grad``
    fields are left as they were, train/eval modes and ``requires_grad``
    flags are restored, and it works under ``torch.no_grad()`` too.

    Args:
        net: The network holding the sites (put in eval mode while scoring).
        specs: The sites to collect for.
        batches: Scoring batches, each passed to ``loss_fn``.
        loss_fn: ``loss_fn(batch) -> scalar`` loss of the current network.
        candidates: Per site, fan-ins `(K, C_in, kh, kw)` to compute fan-out
            gradients for.
        want_weight_grad: Sites whose conv weight gradient is needed.
        want_consumer_grads: Sites whose consumers' weight gradients are needed.
        accumulators: Per site, an extra per-batch statistic.
        reduce_fn: Reduction over DDP ranks (a mean), applied once at the end.

    Returns:
        The :class:`Statistics`.

    Raises:
        ValueError: no batch was given.
        NonFiniteLossError: a loss was not finite (on any rank: every rank raises).
    """
    candidates = candidates or {}
    accumulators = accumulators or {}
    want_w = set(want_weight_grad)
    want_c = set(want_consumer_grads)
    site_convs = {s.site: s.conv for s in specs}
    consumer_modules: List[nn.Module] = []
    for s in specs:
        for c in s.consumers:
            if all(c.module is not m for m in consumer_modules):
                consumer_modules.append(c.module)
    params: List[nn.Parameter] = []
    for m in list(site_convs.values()) + consumer_modules:
        if all(m.weight is not p for p in params):
            params.append(m.weight)
    dtype = params[0].dtype if params else torch.float32
    acc_dtype = _acc_dtype(dtype)
    # Only the weight gradients asked for: a backward to the consumer outputs
    # alone skips every other weight-gradient computation.
    weights: List[nn.Parameter] = []
    for s in specs:
        wanted = ([s.conv] if s.site in want_w else []) + (
            [c.module for c in s.consumers] if s.site in want_c else [])
        for m in wanted:
            if all(m.weight is not p for p in weights):
                weights.append(m.weight)

    sums: Dict[tuple, torch.Tensor] = {}

    def add(key, value):
        value = value.detach().to(acc_dtype)
        sums[key] = value if key not in sums else sums[key] + value

    n_batches, loss_sum, bad, first_bad = 0, 0.0, 0.0, None
    sizes_of: Dict[Site, tuple] = {}
    for batch in batches:
        captured: Dict[int, dict] = {}

        def hook(module, inp, out):
            rec = captured.setdefault(id(module), {})
            if "out" in rec:
                raise RuntimeError(
                    f"{type(module).__name__} ran twice in one forward pass; growth needs each "
                    "site conv and consumer to run once"
                )
            rec["in"], rec["out"], rec["hw"] = inp[0].detach(), out, tuple(inp[0].shape[-2:])

        hooked = {id(m): m for m in list(site_convs.values()) + consumer_modules}
        handles = [m.register_forward_hook(hook) for m in hooked.values()]
        try:
            with torch.enable_grad(), _EvalMode(net, params):
                loss = loss_fn(batch)
                if not torch.is_tensor(loss) or loss.numel() != 1:
                    raise ValueError(f"the growth loss must be a scalar tensor, got {loss!r:.80}")
                loss = loss.reshape(())
                finite = bool(torch.isfinite(loss.detach()))
                missing = [type(m).__name__ for i, m in hooked.items() if i not in captured]
                if missing:
                    raise RuntimeError(
                        f"the growth loss did not run {', '.join(missing)}: the loss must be "
                        "computed with the network being grown"
                    )
                outs = [captured[id(m)]["out"] for m in consumer_modules]
                if finite:
                    grads = torch.autograd.grad(loss, outs + weights, allow_unused=True)
                else:
                    grads = [None] * (len(outs) + len(weights))
        finally:
            for h in handles:
                h.remove()
        n_batches += 1
        if not finite:
            bad += 1.0
            first_bad = (n_batches - 1, float(loss.detach())) if first_bad is None else first_bad
            captured.clear()
            continue
        loss_sum += float(loss.detach())
        delta_of = {id(m): (g if g is not None else torch.zeros_like(o))
                    for m, o, g in zip(consumer_modules, outs, grads[:len(outs)])}
        wgrad_of = {id(p): g for p, g in zip(weights, grads[len(outs):])}
        with torch.no_grad():
            for spec in specs:
                site = spec.site
                x = captured[id(spec.conv)]["in"]
                if site not in sizes_of:
                    sizes_of[site] = (tuple(x.shape[-2:]), [
                        tuple(captured[id(c.module)]["out"].shape[-2:]) for c in spec.consumers])
                deltas = [delta_of[id(c.module)] for c in spec.consumers]
                sizes = [captured[id(c.module)]["hw"] for c in spec.consumers]
                if site in candidates:
                    for i, g in enumerate(fan_out_gradients(spec, x, candidates[site], deltas, sizes)):
                        add((site, "fan_out", i), g)
                        add((site, "fan_out_sq", i), g.to(acc_dtype).pow(2))
                if site in want_w:
                    g = wgrad_of[id(spec.conv.weight)]
                    add((site, "weight"), g if g is not None else torch.zeros_like(spec.conv.weight))
                if site in want_c:
                    for i, c in enumerate(spec.consumers):
                        g = wgrad_of[id(c.module.weight)]
                        add((site, "consumer", i), g if g is not None else torch.zeros_like(c.module.weight))
                if site in accumulators:
                    for name, value in accumulators[site](spec, x, deltas, sizes).items():
                        add((site, "extra", name), value)
        captured.clear()
        del outs, grads, delta_of, wgrad_of, loss

    if n_batches == 0:
        raise ValueError("growth needs at least one scoring batch; got an empty list")
    # One reduction for everything: [bad-batch count, loss sum, statistics...].
    keys = list(sums)
    flat = torch.cat([torch.tensor([bad, loss_sum], dtype=torch.float64)]
                     + [sums[k].flatten().double().cpu() for k in keys]) if keys else \
        torch.tensor([bad, loss_sum], dtype=torch.float64)
    device = params[0].device if params else torch.device("cpu")
    flat = flat.to(device)
    if reduce_fn is not None:
        flat = reduce_fn(flat)
    if float(flat[0]) > 0:
        where = (f"the loss on scoring batch {first_bad[0]} is {first_bad[1]}"
                 if first_bad is not None else "the loss on another rank's scoring batch is not finite")
        raise NonFiniteLossError(
            f"Growth aborted: {where}: the batch or the weights hold NaN or Inf (the data, "
            "not growth); the model is unchanged",
            None if first_bad is None else first_bad[0],
        )
    mean_loss = float(flat[1]) / n_batches
    out: Dict[Site, SiteStatistics] = {s.site: SiteStatistics(s.site) for s in specs}
    offset = 2
    for k in keys:
        numel = sums[k].numel()
        value = flat[offset:offset + numel].view(sums[k].shape).to(acc_dtype) / n_batches
        offset += numel
        site, kind = k[0], k[1]
        st = out[site]
        if kind == "fan_out":
            st.fan_out_grads = (st.fan_out_grads or []) + [value]
        elif kind == "fan_out_sq":
            st.fan_out_grad_sq = (st.fan_out_grad_sq or []) + [value]
        elif kind == "weight":
            st.weight_grad = value
        elif kind == "consumer":
            st.consumer_grads = (st.consumer_grads or []) + [value]
        else:
            st.extra[k[2]] = value
    for site, cand in candidates.items():
        if site in out:
            out[site].candidates = cand
    for site, (in_hw, c_hw) in sizes_of.items():
        out[site].input_hw, out[site].consumer_out_hw = in_hw, c_hw
    return Statistics(out, mean_loss, n_batches)
