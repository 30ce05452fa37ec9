"""Benchmark 5 (optional): benchmarks 1 and 2 on a GPU at fastMRI sizes.

Runs only where ``torch.cuda.is_available()``; elsewhere it returns a
``skipped`` record. Sizes follow fastMRI's knee U-Net: 320x320 images,
4 pools, chans 32 (the demo's) and 64; peak memory is read with
``torch.cuda.max_memory_allocated``.
"""

import torch

from . import growth_cost, overhead


def run(quick: bool = False) -> dict:
    """Overhead and growth cost on ``cuda:0``, or a skip record."""
    if not torch.cuda.is_available():
        return {"benchmark": "gpu", "skipped": "no CUDA device (torch.cuda.is_available() is False)"}
    torch.backends.cudnn.benchmark = False
    configs = [(32, 4, 320, 1)] if quick else [(32, 4, 320, 1), (64, 4, 320, 1)]
    res_overhead = overhead.run(configs=configs, repeats=10 if quick else 30, device="cuda")
    cfg = {"chans": 32, "num_pool_layers": 4, "side": 320, "batch": 1,
           "repeats": 5 if quick else 20, "brute_repeats": 2 if quick else 3,
           "brute_site": ("down_1", 1),
           "memory": {"chans": 32, "num_pool_layers": 4, "side": 320, "batch": 1,
                      "sites": (("down_0", 1), ("bottleneck", 0)), "candidates": (10, 64),
                      "repeats": 1 if quick else 2}}
    res_growth = growth_cost.run(cfg=cfg, device="cuda", threads=None)
    return {"benchmark": "gpu", "device": torch.cuda.get_device_name(0),
            "overhead": res_overhead, "growth_cost": res_growth}


def table(res: dict) -> str:
    """Markdown of :func:`run`'s result."""
    if "skipped" in res:
        return f"Skipped: {res['skipped']}."
    return (f"Device: {res['device']}.\n\n" + overhead.table(res["overhead"]) + "\n\n"
            + growth_cost.table(res["growth_cost"]))
