"""Scoring candidate filters: one forward+backward for all of them.

A candidate ``j`` is a new output filter of conv ``k`` with fan-in ``w_j``
and a zero fan-out. Its only non-zero gradient is on its fan-out slice in
each consumer ``c``::

    G_jc = dL/dV_jc = sum over batch and positions of delta_c (x) h_j

where ``h_j = LReLU(IN(conv(x_k, w_j)))`` (dropout off), pooled as the
consumer sees it, and ``delta_c`` is the gradient of the loss w.r.t. the
consumer conv's output. ``delta_c`` does not depend on any candidate, so one
ordinary forward+backward of the current network gives every score
``s_j = sqrt(sum_c ||G_jc||^2)``: exactly the gradient norm that adding the
candidate alone and back-propagating would measure
(:func:`brute_force_scores` checks that).
"""

import copy
from dataclasses import dataclass
from typing import Callable, List, Optional

import torch
from torch import nn
from torch.nn import functional as F

from .surgery import add_filters
from .topology import Consumer


@dataclass
class GrowthStatistics:
    """What one forward+backward of the current network provides.

    Attributes:
        inputs: Input of the grown conv `(N, C_in, H, W)`, detached.
        deltas: Per consumer, dL/d(consumer conv output), detached:
            `(N, C_out, H', W')` at the consumer's resolution.
        consumers: The consumers, in the order of ``deltas``.
        weight_grad: dL/d(grown conv weight) `(C_out, C_in, 3, 3)`.
        loss: The loss value.
    """

    inputs: torch.Tensor
    deltas: List[torch.Tensor]
    consumers: List[Consumer]
    weight_grad: torch.Tensor
    loss: float


class _EvalMode:
    """Eval mode and gradients on the needed weights, restored afterwards.

    Scoring runs without dropout so that the closed form and a brute-force
    pass see the same network (growth.md: dropout masks would differ).
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


def prepare_target(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Shape the target like the output (fastMRI targets have no channel dim).

    Args:
        output: Model output `(N, C, H, W)`.
        target: `(N, C, H, W)`, or `(N, H, W)` when ``C == 1``.

    Returns:
        The target as `(N, C, H, W)`.
    """
    if target.dim() == output.dim() - 1 and output.shape[1] == 1:
        return target.unsqueeze(1)
    return target


def collect_statistics(
    model: nn.Module,
    layer_id: str,
    conv_idx: int,
    batch: torch.Tensor,
    target: torch.Tensor,
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    reduce_fn: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
) -> GrowthStatistics:
    """Run one forward+backward and capture what scoring needs.

    Gradients are taken with ``torch.autograd.grad``, so the parameters'
    ``.grad`` fields are left as they were, and nothing keeps the graph alive
    afterwards.

    Args:
        model: A :class:`~fastmri_growth.models.DynamicUnet`.
        layer_id: Grown layer id.
        conv_idx: 0 or 1.
        batch: `(N, in_chans, H, W)`.
        target: `(N, out_chans, H, W)` or `(N, H, W)`.
        criterion: ``criterion(output, target) -> scalar``.
        reduce_fn: Optional DDP mean: the finiteness check is then taken
            over all ranks, so that every rank aborts or none does (a rank
            raising alone would leave the others waiting in a collective).

    Returns:
        The captured :class:`GrowthStatistics`.

    Raises:
        RuntimeError: If the loss is not finite (on any rank).
    """
    conv = model.conv_layer(layer_id, conv_idx)
    consumers = model.consumers(layer_id, conv_idx)
    captured = {}
    outputs = [None] * len(consumers)

    def grab_input(_m, inp, _out):
        captured["x"] = inp[0].detach()

    def grab_output(i):
        def hook(_m, _inp, out):
            outputs[i] = out
        return hook

    handles = [conv.register_forward_hook(grab_input)]
    handles += [c.module.register_forward_hook(grab_output(i)) for i, c in enumerate(consumers)]
    params = [conv.weight] + [c.module.weight for c in consumers]
    try:
        with _EvalMode(model, params):
            out = model(batch)
            loss = criterion(out, prepare_target(out, target))
            bad = (~torch.isfinite(loss.detach())).to(loss.dtype).reshape(1)
            if reduce_fn is not None:
                bad = reduce_fn(bad)
            if bad.item() > 0:
                raise RuntimeError(
                    f"Growth aborted: the loss on the scoring batch is {loss.item()} "
                    "(on this or another rank); the model is unchanged"
                )
            grads = torch.autograd.grad(loss, outputs + [conv.weight])
    finally:
        for h in handles:
            h.remove()
    return GrowthStatistics(
        inputs=captured["x"],
        deltas=[g.detach() for g in grads[:-1]],
        consumers=consumers,
        weight_grad=grads[-1].detach(),
        loss=float(loss.detach()),
    )


def candidate_features(inputs: torch.Tensor, fan_in: torch.Tensor) -> torch.Tensor:
    """Feature maps of candidate filters, as the network would compute them.

    Args:
        inputs: Input of the grown conv `(N, C_in, H, W)`.
        fan_in: Candidate filters `(K, C_in, 3, 3)`.

    Returns:
        ``LReLU(IN(conv(inputs, fan_in)))`` of shape `(N, K, H, W)`
        (dropout is off while scoring).
    """
    h = F.conv2d(inputs, fan_in.to(inputs.dtype), padding=1)
    return F.leaky_relu(F.instance_norm(h), negative_slope=0.2)


def fan_out_gradients(
    stats: GrowthStatistics, fan_in: torch.Tensor
) -> List[torch.Tensor]:
    """Gradient of each consumer's new fan-out slice, for every candidate.

    Args:
        stats: From :func:`collect_statistics`.
        fan_in: Candidate filters `(K, C_in, 3, 3)`.

    Returns:
        Per consumer, a tensor whose dim 0 indexes the K candidates:
        `(K, C_out, 3, 3)` for a 3x3 conv, `(K, C_out, 2, 2)` for a
        transposed conv, `(K, C_out)` for the final 1x1 conv.
    """
    h = candidate_features(stats.inputs, fan_in)
    K = fan_in.shape[0]
    grads = []
    for consumer, delta in zip(stats.consumers, stats.deltas):
        hc = F.avg_pool2d(h, kernel_size=2, stride=2) if consumer.pooled else h
        if consumer.kind == "conv3x3":
            g = torch.nn.grad.conv2d_weight(hc, (delta.shape[1], K, 3, 3), delta, padding=1)
            grads.append(g.transpose(0, 1))
        elif consumer.kind == "transpose2x2":
            # out[n, o, 2y+a, 2x+b] = sum_c in[n, c, y, x] W[c, o, a, b]
            n, o, H2, W2 = delta.shape
            d = delta.reshape(n, o, H2 // 2, 2, W2 // 2, 2)
            grads.append(torch.einsum("ncyx,noyaxb->coab", hc, d))
        elif consumer.kind == "conv1x1":
            grads.append(torch.einsum("ncyx,noyx->co", hc, delta))
        else:  # pragma: no cover - the topology declares only these kinds
            raise AssertionError(consumer.kind)
    return grads


def scores_from_gradients(grads: List[torch.Tensor]) -> torch.Tensor:
    """Scores from the fan-out gradients.

    Args:
        grads: Per consumer, gradients whose dim 0 indexes the K candidates
            (from :func:`fan_out_gradients`).

    Returns:
        ``s_j = sqrt(sum over consumers ||G_jc||^2)``, shape `(K,)`.
    """
    total = sum(g.flatten(1).pow(2).sum(dim=1) for g in grads)
    return total.sqrt()


def score_candidates(
    model: nn.Module,
    layer_id: str,
    conv_idx: int,
    candidates: torch.Tensor,
    batch: torch.Tensor,
    target: torch.Tensor,
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.l1_loss,
    reduce_fn: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    stats: Optional[GrowthStatistics] = None,
) -> torch.Tensor:
    """Score explicit candidate filters in one pass.

    Args:
        model: A :class:`~fastmri_growth.models.DynamicUnet`.
        layer_id: Grown layer id.
        conv_idx: 0 or 1.
        candidates: Candidate fan-ins `(K, C_in, 3, 3)`.
        batch: `(N, in_chans, H, W)`.
        target: `(N, out_chans, H, W)` or `(N, H, W)`.
        criterion: The training loss.
        reduce_fn: Optional reduction of each gradient tensor (DDP mean).
        stats: Reuse statistics already collected on this batch.

    Returns:
        Scores `(K,)`: the norm of the loss gradient w.r.t. each candidate's
        parameters if it alone were added with a zero fan-out.
    """
    if stats is None:
        stats = collect_statistics(model, layer_id, conv_idx, batch, target, criterion, reduce_fn)
    with torch.no_grad():
        grads = fan_out_gradients(stats, candidates)
        if reduce_fn is not None:
            grads = [reduce_fn(g) for g in grads]
        return scores_from_gradients(grads)


def brute_force_scores(
    model: nn.Module,
    layer_id: str,
    conv_idx: int,
    candidates: torch.Tensor,
    batch: torch.Tensor,
    target: torch.Tensor,
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
        batch: `(N, in_chans, H, W)`.
        target: `(N, out_chans, H, W)` or `(N, H, W)`.
        criterion: The training loss.

    Returns:
        Scores `(K,)`: the norm of the gradient of all of the candidate's
        parameters (fan-in and every consumer's fan-out slice), dropout off.
    """
    scores = []
    for j in range(candidates.shape[0]):
        m = copy.deepcopy(model)
        m.eval()
        m.requires_grad_(True)
        changes = add_filters(m.conv_layer(layer_id, conv_idx), m.consumers(layer_id, conv_idx),
                              candidates[j:j + 1])
        m.sync_attributes()
        out = m(batch)
        loss = criterion(out, prepare_target(out, target))
        news = [ch.new for ch in changes]
        grads = torch.autograd.grad(loss, news)
        total = sum(g[ch.new_slice()].pow(2).sum() for g, ch in zip(grads, changes))
        scores.append(total.sqrt())
    return torch.stack(scores).detach()
