"""``split``: duplicate the filters with the largest fan-in gradient norm.

Both copies share the old fan-out: each consumer's column is split in two,
which is exact because InstanceNorm normalises each channel on its own.
Symmetry is broken by ``split_noise`` (relative fan-in noise, ``+eps`` on one
copy and ``-eps`` on the other: the first-order changes cancel except near
LeakyReLU's kink), or, with ``split_noise == 0``, by fan-out shares
``1/2 +/- SPLIT_FAN_OUT_ASYMMETRY`` (output preserved up to float rounding).

Choosing by the largest gradient norm is a heuristic; published splitting
methods (Wu, Wang & Liu 2019; Wu et al., Firefly 2020) use a second-order
criterion.
"""
from __future__ import annotations

from typing import List, Optional

import torch

from ..net import SiteSpec
from ..statistics import SiteStatistics
from ..surgery import ParamChange, fit_rows, insert_map, remap
from . import register_method
from .base import GrowthMethod, Option, Proposal, optional_nonneg_float, parse_optional_float

#: Default relative fan-in noise of ``split``: each copy gets +/- this
#: fraction of the filter's norm in a random direction. The output change is
#: second order in it except at pixels near LeakyReLU's kink, where it is
#: first order; measured at every site of small float64 U-Nets, 1e-3 moves
#: the output by at most about 1e-4 of its scale (1e-2 moved it by 1.4e-3).
DEFAULT_SPLIT_NOISE = 1e-3
#: Fan-out asymmetry used when ``split_noise == 0``: the copies keep
#: identical fan-ins and take ``1/2 + eta`` and ``1/2 - eta`` of the old
#: fan-out, which preserves the output exactly and still gives the copies
#: different fan-in gradients.
SPLIT_FAN_OUT_ASYMMETRY = 0.1

SPLIT_NOISE = Option(
    "split_noise", None, parse_optional_float, optional_nonneg_float("split_noise"),
    "split: relative fan-in noise (0: exact, fan-out asymmetry breaks symmetry; "
    "default: " + f"{DEFAULT_SPLIT_NOISE:.0e}".replace("e-0", "e-") + ")",
)


@register_method
class Split(GrowthMethod):
    name = "split"
    summary = "duplicate the filter with the largest gradient norm"
    options = (SPLIT_NOISE,)
    zero_fan_out = False
    needs_batches = False  # the weights' existing .grad serve without batches

    def check(self, spec: SiteSpec, n_new: int, candidates: Optional[torch.Tensor]) -> None:
        if candidates is not None:
            raise ValueError("split takes no candidates (it duplicates existing filters)")
        if n_new > spec.width:
            raise ValueError(
                f"n_new={n_new} exceeds the {spec.width} filters of {spec.site.label} that "
                "split can duplicate"
            )

    def wants(self):
        return ("weight_grad",)

    def propose(self, spec: SiteSpec, n_new: int, stats: Optional[SiteStatistics],
                generator: Optional[torch.Generator]) -> Proposal:
        grad = stats.weight_grad if stats is not None and stats.weight_grad is not None \
            else spec.conv.weight.grad.detach()
        grad_rows = grad.transpose(0, 1) if spec.transposed else grad
        norms = grad_rows.flatten(1).norm(dim=1)
        if not torch.isfinite(norms).all():
            raise RuntimeError(
                f"Growth aborted: non-finite gradients at {spec.site.label}; the model is unchanged"
            )
        selected = torch.argsort(norms, descending=True)[:n_new].tolist()
        eps = DEFAULT_SPLIT_NOISE if self.split_noise is None else float(self.split_noise)
        rows = spec.filter_rows()[selected]
        if eps > 0:
            noise = torch.randn(rows.shape, generator=generator, dtype=torch.float64).to(rows)
            scale = eps * rows.flatten(1).norm(dim=1) / noise.flatten(1).norm(dim=1).clamp_min(1e-30)
            noise = noise * scale.view(-1, 1, 1, 1)
        else:
            noise = torch.zeros_like(rows)
        return Proposal(rows=None, selected=selected, scores=norms.tolist(),
                        details={"noise": noise, "eps": eps})

    def apply(self, spec: SiteSpec, proposal: Proposal,
              in_map: Optional[torch.Tensor]) -> List[ParamChange]:
        eps = proposal.details["eps"]
        keep_share, new_share = (0.5, 0.5) if eps > 0 else (
            0.5 + SPLIT_FAN_OUT_ASYMMETRY, 0.5 - SPLIT_FAN_OUT_ASYMMETRY)
        conv, dim, width = spec.conv, spec.out_dim, spec.width
        dev = conv.weight.device
        sel = torch.tensor(proposal.selected, device=dev)
        # The copies are read now: input channels added earlier in this event
        # are part of the filters being duplicated.
        noise = fit_rows(proposal.details["noise"], in_map)
        rows = spec.filter_rows().index_select(0, sel)
        noise_w = noise.transpose(0, 1) if spec.transposed else noise

        def edit_fan_in(old):
            old.index_add_(dim, sel, noise_w.to(old))
            return old

        new_rows = rows - noise
        changes = [remap(conv, "weight", dim, insert_map(width, width, len(sel), dev),
                         new_rows.transpose(0, 1) if spec.transposed else new_rows,
                         edit_old=edit_fan_in)]
        if getattr(conv, "bias", None) is not None:
            bias = conv.bias.detach().index_select(0, sel)
            changes.append(remap(conv, "bias", 0, insert_map(width, width, len(sel), dev), bias))
        for c in spec.consumers:
            cdim = c.in_dim
            cols_idx = sel + c.channel_offset
            cols = c.module.weight.detach().index_select(cdim, cols_idx)

            def edit_fan_out(old, cdim=cdim, cols_idx=cols_idx):
                old.index_copy_(cdim, cols_idx, old.index_select(cdim, cols_idx) * keep_share)
                return old

            size = c.module.weight.shape[cdim]
            changes.append(remap(c.module, "weight", cdim,
                                 insert_map(size, c.channel_offset + width, len(sel), dev),
                                 cols * new_share, edit_old=edit_fan_out))
        return changes

    def describe(self, selected: List[int], scores: List[float]) -> str:
        what = "filter" if len(selected) == 1 else "filters"
        sel = selected[0] if len(selected) == 1 else selected
        vals = ", ".join(f"{scores[i]:.4g}" for i in selected)
        return f"Split {what} {sel} (grad norm {vals})"
