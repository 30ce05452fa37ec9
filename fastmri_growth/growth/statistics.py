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

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from itertools import zip_longest
from typing import (Any, Callable, ContextManager, Dict, Iterable, Iterator, List, NamedTuple,
                    Optional, Sequence, Tuple)

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
        fan_out_denominators: Per consumer, how the optimizer will divide the
            steps of each candidate's fan-out slice (shaped like
            ``fan_out_grads``; None entries: not at all), or None: scores
            are plain gradient norms. Set by :func:`precondition`.
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
    fan_out_denominators: Optional[List[Optional[torch.Tensor]]] = None

    def scores(self) -> torch.Tensor:
        """Each candidate's score, shape `(K,)`.

        ``s_j = sqrt(sum over consumers and entries G_jc**2 / D_jc)``: with no
        denominators (``D = 1``) the gradient norm of the candidate's fan-out;
        with an optimizer's (:func:`precondition`) ``lr * s_j**2`` is the loss
        decrease its first optimizer step will realise, to first order.
        """
        if self.fan_out_denominators is None:
            return scores_from_gradients(self.fan_out_grads)
        return preconditioned_scores(self.fan_out_grads, self.fan_out_denominators)


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


def eager() -> ContextManager:
    """Run every ``torch.compile``'d function and module eagerly inside the block.

    The statistics pass reads each site conv's input and each consumer's
    output through forward hooks, and differentiates the loss w.r.t. those
    outputs. A compiled graph (``module.compile()``, ``torch.compile(fn)``,
    Lightning's compiled steps; inductor or aot_eager) does not run the hooks
    the pass registers, or turns the outputs they see into tensors the loss
    does not depend on through autograd: every score came out zero. Under
    this stance the growth forward passes run the Python modules themselves,
    so compiled and eager networks get the same scores, bit for bit; the
    compiled code is kept for training.
    """
    set_stance = getattr(torch.compiler, "set_stance", None)  # torch >= 2.6
    return set_stance("force_eager") if set_stance is not None else nullcontext()


class _EvalMode:
    """Eval mode, eager execution and gradients on the needed weights, restored afterwards.

    Scoring runs without dropout, so that the closed form and a brute-force
    pass see the same network, and eagerly (:func:`eager`), so that the
    statistics hooks run under ``torch.compile`` too.
    """

    def __init__(self, model: nn.Module, params: List[nn.Parameter]):
        self.model, self.params = model, params

    def __enter__(self):
        self.modes = [(m, m.training) for m in self.model.modules()]
        self.flags = [(p, p.requires_grad) for p in self.params]
        self.stance = eager()
        self.stance.__enter__()
        self.model.eval()
        for p in self.params:
            p.requires_grad_(True)
        return self

    def __exit__(self, *exc):
        for m, mode in self.modes:
            m.training = mode
        for p, flag in self.flags:
            p.requires_grad_(flag)
        self.stance.__exit__(*exc)
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


def preconditioned_scores(grads: Sequence[torch.Tensor],
                          denominators: Sequence[Optional[torch.Tensor]]) -> torch.Tensor:
    """``s_j = sqrt(sum over consumers and entries G_jc**2 / D_jc)``, shape `(K,)`.

    Args:
        grads: Per consumer `(K, C_out, kh, kw)`.
        denominators: Per consumer, the same shape, or None (``D = 1``).
    """
    total = 0
    for g, d in zip(grads, denominators):
        sq = g.flatten(1).double().pow(2)
        if d is not None:
            sq = sq / d.flatten(1).double()
        total = total + sq.sum(dim=1)
    return total.sqrt().to(grads[0].dtype)


def precondition(stats: "Statistics", specs: Sequence[SiteSpec], preconditioner) -> None:
    """Give every scored site of ``stats`` the optimizer's step denominators.

    Args:
        stats: A statistics pass's result (changed in place).
        specs: The sites' specs as the pass saw them.
        preconditioner: ``preconditioner.denominator(weight, G, G_sq)`` (see
            :class:`~fastmri_growth.growth.optim.Preconditioner`), or None
            (scores stay plain gradient norms).
    """
    if preconditioner is None:
        return
    for spec in specs:
        st = stats.sites.get(spec.site)
        if st is None or st.fan_out_grads is None:
            continue
        sq = st.fan_out_grad_sq or [None] * len(st.fan_out_grads)
        st.fan_out_denominators = [
            preconditioner.denominator(c.module.weight, g, q)
            for c, g, q in zip(spec.consumers, st.fan_out_grads, sq)]


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    # bfloat16 weights: accumulate in float32; float64 stays float64.
    return torch.promote_types(dtype, torch.float32)


def _unique(items: Iterable[Any]) -> list:
    """``items`` without repeats (by identity), in first-seen order."""
    return list({id(x): x for x in items}.values())


@contextmanager
def _capture(modules: Sequence[nn.Module]) -> Iterator[Dict[int, tuple]]:
    """Forward hooks recording each module's ``(input, output)`` by ``id``, removed after."""
    seen: Dict[int, tuple] = {}

    def hook(module, inp, out):
        if id(module) in seen:
            raise RuntimeError(
                f"{type(module).__name__} ran twice in one forward pass; growth needs each "
                "site conv and consumer to run once"
            )
        seen[id(module)] = (inp[0].detach(), out)

    handles = [m.register_forward_hook(hook) for m in modules]
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


class _Batch(NamedTuple):
    """One finite batch's tensors, freed with it: by module ``id`` its ``(input,
    output)`` and a consumer's ``delta`` dL/d(output) `(N, C_out, H', W')`; by
    weight ``id`` the asked-for ``weight_grads`` (zero where the loss does not reach)."""

    seen: Dict[int, tuple]
    deltas: Dict[int, torch.Tensor]
    weight_grads: Dict[int, torch.Tensor]


def _plus(total: Optional[torch.Tensor], value: torch.Tensor, dtype: torch.dtype
          ) -> torch.Tensor:
    # Out of place: the first batch's tensor may be a method's own.
    value = value.detach().to(dtype)
    return value if total is None else total + value


@dataclass
class _SiteSums:
    """One site's statistics summed over batches, in the accumulation dtype.

    Attributes mirror :class:`SiteStatistics`: ``fan_out`` and ``fan_out_sq``
    (per consumer `(K, C_out, kh, kw)`), ``weight`` (or None), ``consumer``
    (per consumer, its weight's shape), ``extra`` (by name); the sizes are
    the first finite batch's.
    """

    fan_out: List[torch.Tensor] = field(default_factory=list)
    fan_out_sq: List[torch.Tensor] = field(default_factory=list)
    weight: Optional[torch.Tensor] = None
    consumer: List[torch.Tensor] = field(default_factory=list)
    extra: Dict[str, torch.Tensor] = field(default_factory=dict)
    input_hw: Optional[tuple] = None
    consumer_out_hw: Optional[List[tuple]] = None

    def add(self, spec: SiteSpec, batch: _Batch, run: "_Pass") -> None:
        """Add one finite batch's statistics of ``spec`` (under ``no_grad``)."""
        site, dt = spec.site, run.acc_dtype
        x = batch.seen[id(spec.conv)][0]
        if self.input_hw is None:
            self.input_hw = tuple(x.shape[-2:])
            self.consumer_out_hw = [tuple(batch.seen[id(c.module)][1].shape[-2:])
                                    for c in spec.consumers]
        deltas = [batch.deltas[id(c.module)] for c in spec.consumers]
        sizes = [tuple(batch.seen[id(c.module)][0].shape[-2:]) for c in spec.consumers]
        if site in run.candidates:
            grads = fan_out_gradients(spec, x, run.candidates[site], deltas, sizes)
            self.fan_out = [_plus(t, g, dt) for t, g in zip_longest(self.fan_out, grads)]
            self.fan_out_sq = [_plus(t, g.to(dt).pow(2), dt)
                               for t, g in zip_longest(self.fan_out_sq, grads)]
        if site in run.want_w:
            self.weight = _plus(self.weight, batch.weight_grads[id(spec.conv.weight)], dt)
        if site in run.want_c:
            self.consumer = [_plus(t, batch.weight_grads[id(c.module.weight)], dt)
                             for t, c in zip_longest(self.consumer, spec.consumers)]
        if site in run.accumulators:
            for name, value in run.accumulators[site](spec, x, deltas, sizes).items():
                self.extra[name] = _plus(self.extra.get(name), value, dt)

    def tensors(self) -> List[torch.Tensor]:
        """Every sum, in the order :meth:`statistics` takes the means back."""
        weight = [] if self.weight is None else [self.weight]
        return [*self.fan_out, *self.fan_out_sq, *weight, *self.consumer, *self.extra.values()]

    def statistics(self, site: Site, means: Iterator[torch.Tensor],
                   candidates: Optional[torch.Tensor]) -> SiteStatistics:
        """The site's statistics, its means taken off ``means`` in :meth:`tensors` order."""
        def take(sums):
            return [next(means) for _ in sums] or None

        # Keyword arguments are evaluated left to right, in the order of tensors().
        return SiteStatistics(
            site, candidates, fan_out_grads=take(self.fan_out),
            fan_out_grad_sq=take(self.fan_out_sq),
            weight_grad=None if self.weight is None else next(means),
            consumer_grads=take(self.consumer), extra=dict(zip(self.extra, take(self.extra) or [])),
            input_hw=self.input_hw, consumer_out_hw=self.consumer_out_hw)


class _Pass:
    """One statistics pass: what it hooks and differentiates, the sums, the loss tally.

    ``hooked`` holds the site convs and consumers once each (a module can be
    both), ``params`` their weights, ``weights`` those whose gradient is asked for.
    """

    def __init__(self, specs: Sequence[SiteSpec], candidates, want_w, want_c, accumulators):
        self.specs, self.candidates, self.accumulators = specs, candidates, accumulators
        self.want_w, self.want_c = set(want_w), set(want_c)
        self.consumers = _unique(c.module for s in specs for c in s.consumers)
        self.hooked = _unique([s.conv for s in specs] + self.consumers)
        self.params = _unique(m.weight for m in self.hooked)
        # Only the weight gradients asked for: a backward to the consumer outputs
        # alone skips every other weight-gradient computation.
        self.weights = _unique(m.weight for s in specs
                               for m in ([s.conv] if s.site in self.want_w else [])
                               + ([c.module for c in s.consumers] if s.site in self.want_c else []))
        self.acc_dtype = _acc_dtype(self.params[0].dtype if self.params else torch.float32)
        self.sums = {s.site: _SiteSums() for s in specs}
        self.batches, self.loss_sum, self.bad = 0, 0.0, 0.0
        self.first_bad: Optional[tuple] = None  # (batch index, loss) on this rank

    def forward_backward(self, net: nn.Module, loss_fn: LossFn, batch: Any
                         ) -> Tuple[float, Optional[_Batch]]:
        """One batch's loss, and its tensors (None when the loss is not finite).

        Raises:
            ValueError: the loss is not a scalar tensor.
            RuntimeError: a hooked module ran twice, or not at all.
        """
        with _capture(self.hooked) as seen, torch.enable_grad(), _EvalMode(net, self.params):
            loss = loss_fn(batch)
            if not torch.is_tensor(loss) or loss.numel() != 1:
                raise ValueError(f"the growth loss must be a scalar tensor, got {loss!r:.80}")
            loss = loss.reshape(())
            missing = [type(m).__name__ for m in self.hooked if id(m) not in seen]
            if missing:
                raise RuntimeError(
                    f"the growth loss did not run {', '.join(missing)}: the loss must be "
                    "computed with the network being grown"
                )
            if not bool(torch.isfinite(loss.detach())):
                return float(loss.detach()), None
            outs = [seen[id(m)][1] for m in self.consumers]
            grads = torch.autograd.grad(loss, outs + self.weights, allow_unused=True)
        deltas = {id(m): g if g is not None else torch.zeros_like(o)
                  for m, o, g in zip(self.consumers, outs, grads[:len(outs)])}
        return float(loss.detach()), _Batch(seen, deltas, {
            id(p): g if g is not None else torch.zeros_like(p)
            for p, g in zip(self.weights, grads[len(outs):])})

    def add(self, loss: float, batch: Optional[_Batch]) -> None:
        """Count one batch; sum its statistics if its loss is finite."""
        if batch is None:
            self.bad += 1.0
            self.first_bad = self.first_bad or (self.batches, loss)
        else:
            self.loss_sum += loss
            with torch.no_grad():
                for spec in self.specs:
                    self.sums[spec.site].add(spec, batch, self)
        self.batches += 1

    def finish(self, reduce_fn: Optional[ReduceFn]) -> Statistics:
        """Reduce over ranks, abort on any rank's non-finite loss, average over batches.

        One float64 vector ``[bad-batch count, loss sum, every sum...]`` is
        reduced: one collective, and every rank sees the same abort.
        """
        if self.batches == 0:
            raise ValueError("growth needs at least one scoring batch; got an empty list")
        tensors = [t for s in self.sums.values() for t in s.tensors()]
        flat = torch.cat([torch.tensor([self.bad, self.loss_sum], dtype=torch.float64)]
                         + [t.flatten().double().cpu() for t in tensors])
        flat = flat.to(self.params[0].device if self.params else torch.device("cpu"))
        if reduce_fn is not None:
            flat = reduce_fn(flat)
        if float(flat[0]) > 0:
            bad = self.first_bad
            where = (f"the loss on scoring batch {bad[0]} is {bad[1]}" if bad is not None
                     else "the loss on another rank's scoring batch is not finite")
            raise NonFiniteLossError(
                f"Growth aborted: {where}: the batch or the weights hold NaN or Inf (the data, "
                "not growth); the model is unchanged", None if bad is None else bad[0])
        chunks = flat[2:].split([t.numel() for t in tensors])
        means = iter([c.view(t.shape).to(self.acc_dtype) / self.batches
                      for c, t in zip(chunks, tensors)])
        return Statistics({site: s.statistics(site, means, self.candidates.get(site))
                           for site, s in self.sums.items()},
                          float(flat[1]) / self.batches, self.batches)


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
    run = _Pass(specs, candidates or {}, want_weight_grad, want_consumer_grads,
                accumulators or {})
    for batch in batches:
        run.add(*run.forward_backward(net, loss_fn, batch))  # the batch's tensors die here
    return run.finish(reduce_fn)
