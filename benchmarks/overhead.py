"""Benchmark 1: the cost of a growable U-Net when it is not growing.

Two paired comparisons of one training forward+backward (L1 loss, batch of
random images), each side timed alternately in the same process:

* ``DynamicUnet`` vs ``fastmri.models.Unet`` with the same widths and
  weights;
* a ``DynamicUnet`` grown by surgery vs a fresh model of the grown widths
  (``DynamicUnet.from_state_dict`` of the grown one): growth must leave no
  slow parameters behind (non-contiguous tensors, stale module attributes).

Target: both ratios <= 1.03.
"""

import time
from typing import Dict, List, Sequence

import torch
from torch.nn import functional as F

from .common import alternate, grow_sites, ratio, summary, synchronize

TARGET = 1.03

#: (chans, num_pool_layers, image side, batch) of each measured configuration.
FULL_CONFIGS = [(8, 3, 64, 4), (16, 4, 128, 1)]
QUICK_CONFIGS = [(8, 3, 64, 2)]
#: Sites grown for the grown-vs-fresh comparison (both convs of each block).
GROW_SITES = [("down_0", 0), ("down_0", 1), ("down_1", 1), ("bottleneck", 0), ("up_1", 1)]


def _step_fn(model, x, y, device):
    def step():
        model.zero_grad(set_to_none=True)
        synchronize(device)
        start = time.perf_counter()
        F.l1_loss(model(x), y).backward()
        synchronize(device)
        return time.perf_counter() - start
    return step


def compare(a, b, x, y, repeats: int, device, names=("a", "b")) -> dict:
    """Time forward+backward of two models alternately; ratio is b / a."""
    times = alternate({names[0]: _step_fn(a, x, y, device), names[1]: _step_fn(b, x, y, device)},
                      repeats=repeats, warmup=2)
    return {
        names[0]: summary(times[names[0]]),
        names[1]: summary(times[names[1]]),
        "ratio": ratio(times[names[1]], times[names[0]]),
        "times_s": times,
    }


def run(configs: Sequence[tuple] = None, repeats: int = 30, quick: bool = False,
        device: str = "cpu", grow_events: int = 2, grow_n_new: int = 4) -> dict:
    """Measure both overhead ratios for each configuration.

    Args:
        configs: ``[(chans, num_pool_layers, side, batch), ...]``.
        repeats: Timed repeats per side.
        quick: Use the quick configurations and fewer repeats.
        device: ``"cpu"`` or ``"cuda"``.
        grow_events: Growth rounds over :data:`GROW_SITES` for the grown model.
        grow_n_new: Filters per site per round.

    Returns:
        ``{"target", "results": [{"config", "vs_fastmri", "grown_vs_fresh", ...}]}``.
    """
    from fastmri.models import Unet

    from fastmri_growth.models import DynamicUnet

    if configs is None:
        configs = QUICK_CONFIGS if quick else FULL_CONFIGS
    if quick:
        repeats = min(repeats, 7)
    dev = torch.device(device)
    results: List[Dict] = []
    for chans, pools, side, batch in configs:
        torch.manual_seed(0)
        x = torch.randn(batch, 1, side, side, device=dev)
        y = torch.randn(batch, 1, side, side, device=dev)
        ref = Unet(1, 1, chans, pools).to(dev)
        dyn = DynamicUnet(1, 1, chans, pools).to(dev)
        dyn.load_state_dict(ref.state_dict())
        vs_fastmri = compare(ref, dyn, x, y, repeats, dev, names=("fastmri_unet", "dynamic_unet"))

        grown = DynamicUnet(1, 1, chans, pools).to(dev)
        sites = [s for s in GROW_SITES if s[0] in grown.layer_ids()]
        grow_sites(grown, sites, x, y, events=grow_events, n_new=grow_n_new)
        fresh = DynamicUnet.from_state_dict(grown.state_dict()).to(dev)
        grown_vs_fresh = compare(fresh, grown, x, y, repeats, dev, names=("fresh", "grown"))
        results.append({
            "config": {"chans": chans, "num_pool_layers": pools, "side": side, "batch": batch,
                       "device": device},
            "params": {"unet": sum(p.numel() for p in ref.parameters()),
                       "grown": grown.num_parameters()},
            "grown_widths": grown.get_network_size(),
            "vs_fastmri": vs_fastmri,
            "grown_vs_fresh": grown_vs_fresh,
            "meets_target": {
                "vs_fastmri": vs_fastmri["ratio"]["ratio_of_medians"] <= TARGET,
                "grown_vs_fresh": grown_vs_fresh["ratio"]["ratio_of_medians"] <= TARGET,
            },
        })
    return {"benchmark": "overhead", "target": TARGET, "repeats": repeats, "results": results}


def table(res: dict) -> str:
    """Markdown table of :func:`run`'s result."""
    from .common import fmt_ms

    lines = [
        "| chans, pools, image, batch | fastMRI Unet (ms) | DynamicUnet (ms) | ratio | "
        "fresh grown-width (ms) | grown (ms) | ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in res["results"]:
        c, a, b = r["config"], r["vs_fastmri"], r["grown_vs_fresh"]
        lines.append(
            f"| {c['chans']}, {c['num_pool_layers']}, {c['side']}x{c['side']}, {c['batch']} "
            f"| {fmt_ms(a['fastmri_unet']['median_s'])} | {fmt_ms(a['dynamic_unet']['median_s'])} "
            f"| {a['ratio']['ratio_of_medians']:.3f} (paired {a['ratio']['median_paired_ratio']:.3f}) "
            f"| {fmt_ms(b['fresh']['median_s'])} | {fmt_ms(b['grown']['median_s'])} "
            f"| {b['ratio']['ratio_of_medians']:.3f} (paired {b['ratio']['median_paired_ratio']:.3f}) |"
        )
    return "\n".join(lines)
