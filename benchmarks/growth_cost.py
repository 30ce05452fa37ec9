"""Benchmark 2: what one growth step costs.

For ``sample_select`` with N = 1, 10, 64 candidates at several growth sites:

* time of one growth step (``DynamicUnet.grow_network``: statistics pass,
  candidate scoring, surgery) relative to one training step (zero_grad,
  forward, L1 loss, backward, RMSprop step) on the same batch, the two timed
  alternately;
* time of one-pass scoring (``score_candidates``) relative to brute force
  (``brute_force_scores``: N copies of the model, each with one candidate
  added, N forward+backward passes), on the same candidates;
* peak memory of a growth step relative to a training step's.

Peak memory method. CPU: each side runs in a fresh subprocess
(``python -m benchmarks.growth_cost --peak-child ...``) that builds the model
and optimizer, warms every code path up at a tiny image size (lazy
initialisation, optimizer state), frees the gradients, reads its resident
set size (``/proc/self/statm``), runs the measured step once at the full
size and reads its peak RSS (``getrusage(RUSAGE_SELF).ru_maxrss``). The
figure is peak minus the RSS before the step: the memory the step itself
needed. glibc serves large tensors with ``mmap`` and unmaps them on free, so
RSS follows the live tensors; the kernel's RSS counters lag by up to about
100 kB, far below the tens of MiB measured. GPU: ``torch.cuda.max_memory_allocated()``
minus the allocation before the step.

Targets: growth step N=10 <= 2x a training step, N=64 <= 3x; brute force /
one pass >= N/2; peak memory of a growth step <= 1.5x a training step's.
"""

import argparse
import copy
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import List, Optional, Sequence

import torch
from torch.nn import functional as F

from .common import alternate, ratio, summary, synchronize

TARGETS = {"growth_vs_train": {10: 2.0, 64: 3.0}, "brute_vs_one_pass": "N/2",
           "peak_memory_vs_train": 1.5}
CANDIDATES = (1, 10, 64)
#: Growth sites timed: full resolution with two consumers (one pooled), the
#: bottleneck's first conv, and the last decoder conv (feeds the 1x1 conv).
SITES = (("down_0", 1), ("bottleneck", 0), ("up_last", 1))

FULL = {"chans": 16, "num_pool_layers": 4, "side": 128, "batch": 1, "repeats": 10,
        "brute_repeats": 3, "brute_site": ("down_1", 1),
        "memory": {"chans": 16, "num_pool_layers": 4, "side": 320, "batch": 1,
                   "sites": (("down_0", 1), ("bottleneck", 0)), "candidates": (10, 64),
                   "repeats": 2}}
QUICK = {"chans": 8, "num_pool_layers": 3, "side": 64, "batch": 1, "repeats": 5,
         "brute_repeats": 2, "brute_site": ("down_1", 1),
         "memory": {"chans": 8, "num_pool_layers": 3, "side": 160, "batch": 1,
                    "sites": (("down_0", 1),), "candidates": (10, 64), "repeats": 1}}


def _resolve_site(site, pools):
    layer, conv_idx = site
    if layer == "up_last":
        layer = f"up_{pools - 1}"
    return layer, int(conv_idx)


def _build(chans, pools, side, batch, device, seed=0):
    from fastmri_growth.models import DynamicUnet

    torch.manual_seed(seed)
    model = DynamicUnet(1, 1, chans, pools).to(device)
    x = torch.randn(batch, 1, side, side, device=device)
    y = torch.randn(batch, 1, side, side, device=device)
    return model, x, y


def _train_step(model, optimizer, x, y):
    optimizer.zero_grad(set_to_none=True)
    F.l1_loss(model(x), y).backward()
    optimizer.step()


def _timed(fn, device, setup=None):
    def run():
        arg = setup() if setup is not None else None
        synchronize(device)
        start = time.perf_counter()
        fn() if setup is None else fn(arg)
        synchronize(device)
        return time.perf_counter() - start
    return run


def time_growth(cfg: dict, device: torch.device, candidates: Sequence[int], sites) -> List[dict]:
    """Growth step vs training step, alternately, per site and N."""
    model, x, y = _build(cfg["chans"], cfg["num_pool_layers"], cfg["side"], cfg["batch"], device)
    optimizer = torch.optim.RMSprop(model.parameters(), lr=1e-5)
    train = _timed(lambda: _train_step(model, optimizer, x, y), device)
    out = []
    for site in sites:
        layer, conv_idx = _resolve_site(site, cfg["num_pool_layers"])
        for n in candidates:
            def setup(n=n):
                m = copy.deepcopy(model)
                m.n_candidates = n
                return m

            def grow(m, layer=layer, conv_idx=conv_idx):
                m.grow_network(layer, conv_idx, x, y, method="sample_select",
                               generator=torch.Generator().manual_seed(0))

            times = alternate({"train_step": train, "growth_step": _timed(grow, device, setup)},
                              repeats=cfg["repeats"], warmup=1)
            out.append({"site": f"{layer}:{conv_idx}", "n_candidates": n,
                        "train_step": summary(times["train_step"]),
                        "growth_step": summary(times["growth_step"]),
                        "ratio": ratio(times["growth_step"], times["train_step"]),
                        "times_s": times})
    return out


def time_brute_force(cfg: dict, device: torch.device, candidates: Sequence[int]) -> List[dict]:
    """One-pass scoring vs brute force on the same candidates."""
    from fastmri_growth.growth.candidates import generate_candidates
    from fastmri_growth.models.dynamic_unet import brute_force_scores, score_candidates

    model, x, y = _build(cfg["chans"], cfg["num_pool_layers"], cfg["side"], cfg["batch"], device)
    layer, conv_idx = _resolve_site(cfg["brute_site"], cfg["num_pool_layers"])
    out = []
    for n in candidates:
        cands = generate_candidates(model.conv_layer(layer, conv_idx), n,
                                    torch.Generator().manual_seed(0))
        holder = {}

        def one_pass():
            holder["one"] = score_candidates(model, layer, conv_idx, cands, x, y)

        def brute():
            holder["brute"] = brute_force_scores(model, layer, conv_idx, cands, x, y)

        times = alternate({"one_pass": _timed(one_pass, device), "brute_force": _timed(brute, device)},
                          repeats=cfg["brute_repeats"], warmup=0)
        diff = (holder["one"] - holder["brute"]).abs().max().item()
        rel = diff / max(holder["brute"].abs().max().item(), 1e-30)
        r = ratio(times["brute_force"], times["one_pass"])
        out.append({"site": f"{layer}:{conv_idx}", "n_candidates": n,
                    "one_pass": summary(times["one_pass"]),
                    "brute_force": summary(times["brute_force"]), "ratio": r,
                    "target": n / 2, "meets_target": r["ratio_of_medians"] >= n / 2,
                    "scores_max_rel_diff": rel, "times_s": times})
    return out


# ------------------------------------------------------------------ memory
def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def peak_child(spec: dict) -> dict:
    """Measure one step's peak memory in this (fresh) process; see the module doc."""
    device = torch.device(spec["device"])
    threads = spec.get("threads")
    if threads:
        torch.set_num_threads(int(threads))
    model, x, y = _build(spec["chans"], spec["num_pool_layers"], spec["side"], spec["batch"], device)
    optimizer = torch.optim.RMSprop(model.parameters(), lr=1e-5)
    layer, conv_idx = _resolve_site(spec.get("site", ("down_0", 1)), spec["num_pool_layers"])
    model.n_candidates = int(spec.get("n_candidates", 1))
    small = 2 ** (spec["num_pool_layers"] + 1)
    xs, ys = x[..., :small, :small].contiguous(), y[..., :small, :small].contiguous()

    def step(xx, yy, m):
        if spec["kind"] == "train":
            _train_step(m, optimizer, xx, yy)
        else:
            m.grow_network(layer, conv_idx, xx, yy, method="sample_select",
                           generator=torch.Generator().manual_seed(0))

    # Warm-up at a tiny size: optimizer state, lazy kernels, thread pools.
    _train_step(model, optimizer, xs, ys)
    if spec["kind"] == "growth":
        step(xs, ys, copy.deepcopy(model))
    optimizer.zero_grad(set_to_none=True)
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before, maxrss_before = torch.cuda.memory_allocated(device), None
    else:
        before, maxrss_before = _rss_bytes(), _maxrss_bytes()
    step(x, y, model)
    synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else _maxrss_bytes()
    return {"kind": spec["kind"], "before_bytes": before, "peak_bytes": peak,
            "maxrss_before_bytes": maxrss_before, "step_peak_bytes": peak - before,
            # If the step never exceeded the earlier high-water mark, the
            # figure is only a lower bound.
            "lower_bound": maxrss_before is not None and peak <= maxrss_before}


def _run_child(spec: dict) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.growth_cost", "--peak-child", json.dumps(spec)]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=root)
    if proc.returncode != 0:
        raise RuntimeError(f"peak-memory child failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure_memory(mcfg: dict, device: str, threads: Optional[int]) -> dict:
    """Peak memory of a training step and of growth steps, fresh process each."""
    base = {k: mcfg[k] for k in ("chans", "num_pool_layers", "side", "batch")}
    base.update(device=device, threads=threads)
    specs = {"train_step": dict(base, kind="train")}
    for site in mcfg["sites"]:
        for n in mcfg["candidates"]:
            layer, c = _resolve_site(site, mcfg["num_pool_layers"])
            specs[f"growth {layer}:{c} N={n}"] = dict(base, kind="growth", site=(layer, c),
                                                      n_candidates=n)
    raw = {name: [] for name in specs}
    for _ in range(mcfg["repeats"]):  # alternate the sides here too
        for name, spec in specs.items():
            raw[name].append(_run_child(spec))
    med = {name: statistics.median(r["step_peak_bytes"] for r in runs) for name, runs in raw.items()}
    rows = []
    for name in specs:
        if name == "train_step":
            continue
        # At tiny sizes a step may not move the RSS at all: no ratio then.
        r = med[name] / med["train_step"] if med["train_step"] > 0 else float("nan")
        rows.append({"side": name, "step_peak_bytes": med[name], "ratio_vs_train": r,
                     "meets_target": r <= TARGETS["peak_memory_vs_train"]})
    return {"config": dict(base), "method": "fresh subprocess per side; peak RSS minus RSS before "
            "the step (CPU) or max_memory_allocated minus allocated before (CUDA)",
            "train_step_peak_bytes": med["train_step"], "growth": rows, "raw": raw}


def run(cfg: Optional[dict] = None, quick: bool = False, device: str = "cpu",
        threads: Optional[int] = 1, candidates: Sequence[int] = CANDIDATES,
        sites=SITES, memory: bool = True) -> dict:
    """All growth-cost figures.

    Args:
        cfg: Sizes (see :data:`FULL`); default FULL, or QUICK with ``quick``.
        quick: Use the quick sizes.
        device: ``"cpu"`` or ``"cuda"``.
        threads: Threads of the peak-memory children.
        candidates: The N values.
        sites: Timed growth sites.
        memory: Also measure peak memory.

    Returns:
        ``{"growth_vs_train", "brute_force", "memory", "targets", ...}``.
    """
    cfg = dict(cfg or (QUICK if quick else FULL))
    dev = torch.device(device)
    growth = time_growth(cfg, dev, candidates, sites)
    for row in growth:
        tgt = TARGETS["growth_vs_train"].get(row["n_candidates"])
        row["target"] = tgt
        row["meets_target"] = None if tgt is None else row["ratio"]["ratio_of_medians"] <= tgt
    brute = time_brute_force(cfg, dev, candidates)
    mem = measure_memory(cfg["memory"], device, threads) if memory else None
    return {"benchmark": "growth_cost", "config": {k: v for k, v in cfg.items() if k != "memory"},
            "device": device, "targets": {"growth_vs_train": {str(k): v for k, v in
                                                              TARGETS["growth_vs_train"].items()},
                                          "brute_vs_one_pass": "N/2",
                                          "peak_memory_vs_train": TARGETS["peak_memory_vs_train"]},
            "growth_vs_train": growth, "brute_force": brute, "memory": mem}


def table(res: dict) -> str:
    """Markdown tables of :func:`run`'s result."""
    from .common import fmt_ms

    c = res["config"]
    lines = [f"Model: DynamicUnet chans {c['chans']}, {c['num_pool_layers']} pools, "
             f"{c['side']}x{c['side']} images, batch {c['batch']} ({res['device']}).", "",
             "| site | N | training step (ms) | growth step (ms) | ratio | target |",
             "|---|---|---|---|---|---|"]
    for r in res["growth_vs_train"]:
        tgt = "-" if r["target"] is None else f"<= {r['target']:g} {'met' if r['meets_target'] else 'MISSED'}"
        lines.append(f"| {r['site']} | {r['n_candidates']} | {fmt_ms(r['train_step']['median_s'])} | "
                     f"{fmt_ms(r['growth_step']['median_s'])} | "
                     f"{r['ratio']['ratio_of_medians']:.2f} | {tgt} |")
    lines += ["", "| site | N | one pass (ms) | brute force (ms) | brute / one pass | target | "
              "max rel. score difference |", "|---|---|---|---|---|---|---|"]
    for r in res["brute_force"]:
        lines.append(f"| {r['site']} | {r['n_candidates']} | {fmt_ms(r['one_pass']['median_s'])} | "
                     f"{fmt_ms(r['brute_force']['median_s'])} | {r['ratio']['ratio_of_medians']:.1f} | "
                     f">= {r['target']:g} {'met' if r['meets_target'] else 'MISSED'} | "
                     f"{r['scores_max_rel_diff']:.1e} |")
    mem = res.get("memory")
    if mem:
        mc = mem["config"]
        lines += ["", f"Peak memory ({mem['method']}); chans {mc['chans']}, {mc['num_pool_layers']} "
                  f"pools, {mc['side']}x{mc['side']}, batch {mc['batch']}:", "",
                  "| step | peak above baseline (MiB) | vs training step | target <= 1.5 |",
                  "|---|---|---|---|",
                  f"| training step | {mem['train_step_peak_bytes'] / 2**20:.1f} | 1.00 | |"]
        for r in mem["growth"]:
            lines.append(f"| {r['side']} | {r['step_peak_bytes'] / 2**20:.1f} | "
                         f"{r['ratio_vs_train']:.2f} | {'met' if r['meets_target'] else 'MISSED'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.growth_cost")
    parser.add_argument("--peak-child", type=str, default=None,
                        help="internal: JSON spec of one peak-memory measurement")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.peak_child is not None:
        print(json.dumps(peak_child(json.loads(args.peak_child))))
        return 0
    torch.set_num_threads(1)
    res = run(quick=args.quick)
    print(table(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
