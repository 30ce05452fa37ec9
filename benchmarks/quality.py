"""Benchmark 4: what growth buys in reconstruction quality, at equal epochs.

Synthetic single-coil knee data, U-Nets trained with fastMRI's recipe
(L1 loss, RMSprop, random 4x/8x training masks) for the same number of
epochs, then evaluated on the validation split with fixed leaderboard masks
at 4x (centre 0.08) and 8x (centre 0.04) by fastMRI's metric definitions
(``fastmri_growth.inference.leaderboard_validation``: per-volume SSIM, PSNR,
NMSE with the volume's max as data range, averaged over volumes).

Configurations (every one with each seed; same data order and masks for a
given seed):

* ``fixed_small``: chans 8, never grows;
* ``fixed_large``: the grown runs' final widths from the start
  (``DynamicUnet(widths=...)``), never grows;
* ``grown_sample_select``: starts at chans 8, ``sample_select`` with 10
  candidates, optimizer state kept;
* ``grown_split``: the same schedule with ``split``;
* ``grown_random``: ``sample_select`` with as many candidates as filters
  added (``n_candidates == n_new``): random fan-ins and zero fan-outs, every
  candidate kept, no selection (the random-growth baseline);
* ``grown_reset``: ``sample_select`` with the optimizer and LR scheduler
  recreated after each growth (``reset_optimizer=True``).

Training cost per run: wall seconds of the training epochs (growth
included, on a shared machine: indicative) and FLOPs counted by
``torch.utils.flop_counter`` (one forward+backward per training slice at
the widths of that epoch, plus the growth steps themselves).
"""

import statistics
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from . import training

FULL = {"data": {"train": 12, "val": 4, "num_slices": 4, "recon_size": 64},
        "seeds": (0, 1, 2, 3, 4), "max_epochs": 12, "chans": 8, "num_pool_layers": 3,
        "n_candidates": 10}
QUICK = {"data": {"train": 3, "val": 2, "num_slices": 4, "recon_size": 64},
         "seeds": (0, 1), "max_epochs": 4, "chans": 8, "num_pool_layers": 3, "n_candidates": 10}

#: name -> growth options (None: fixed network). Grown runs come first: the
#: fixed large network takes their final widths.
CONFIGS = {
    "grown_sample_select": {"growth_method": "sample_select"},
    "grown_split": {"growth_method": "split"},
    "grown_random": {"growth_method": "sample_select", "n_candidates": training.GROWTH["n_new"]},
    "grown_reset": {"growth_method": "sample_select", "reset_optimizer": True},
    "fixed_small": None,
    "fixed_large": None,
}
LABELS = {
    "fixed_small": "fixed small (chans 8)",
    "fixed_large": "fixed large (grown widths)",
    "grown_sample_select": "grown: sample_select N=10",
    "grown_split": "grown: split",
    "grown_random": "grown: random (no selection)",
    "grown_reset": "grown: sample_select, optimizer reset",
}
ACCELERATIONS = (4, 8)
CENTER_FRACTIONS = (0.08, 0.04)


def _evaluate(unet, knee: Path, out_dir: Path) -> dict:
    from fastmri_growth.inference import leaderboard_validation

    unet.eval()
    with torch.no_grad():
        res = leaderboard_validation(unet, knee / "singlecoil_val", "singlecoil", out_dir,
                                     accelerations=ACCELERATIONS, center_fractions=CENTER_FRACTIONS,
                                     mask_type="random", num_workers=0, progress=False)
    return {f"{a}x": {m: r["metrics"][m]["mean"] for m in ("SSIM", "PSNR", "NMSE")}
            for a, r in res.items()}


def train_one(name: str, seed: int, cfg: dict, knee: Path, workdir: Path,
              large_widths: Optional[dict]) -> dict:
    """Train and evaluate one configuration with one seed."""
    from fastmri_growth.models import DynamicUnet

    growth = CONFIGS[name]
    opts = {"n_candidates": cfg["n_candidates"]}
    if growth is not None:
        opts.update(growth)
        module = training.build_module(seed, cfg["chans"], cfg["num_pool_layers"], grow=True, **opts)
    else:
        module = training.build_module(seed, cfg["chans"], cfg["num_pool_layers"], grow=False, **opts)
        if name == "fixed_large":
            if large_widths is None:
                raise ValueError("fixed_large needs the widths of a grown run; run a grown "
                                 "configuration first")
            # Initialised with the seed, exactly as the small model is.
            torch.manual_seed(seed)
            module.unet = DynamicUnet(1, 1, cfg["chans"], cfg["num_pool_layers"], widths=large_widths)
    fit = training.fit(module, knee, cfg["max_epochs"], seed, cfg["data"]["recon_size"],
                       workdir / "lightning")
    start = time.perf_counter()
    metrics = _evaluate(module.unet, knee, workdir / "recons" / f"{name}_seed{seed}")
    return {"config": name, "seed": seed, "metrics": metrics,
            "params": fit["final_params"], "widths": fit["final_widths"],
            "train_seconds": fit["train_seconds"], "growth_seconds": fit["growth_seconds"],
            "train_flops": fit["train_flops"], "growth_flops": fit["growth_flops"],
            "total_flops": fit["train_flops"] + fit["growth_flops"],
            "eval_seconds": time.perf_counter() - start,
            "train_loss_curve": [e["train_loss"] for e in fit["epochs"]],
            "final_train_loss": fit["epochs"][-1]["train_loss"],
            "epochs": fit["epochs"], "growth_log": [l for l in fit["log"].splitlines() if l.strip()]}


def _mean_std(xs: Sequence[float]) -> Dict[str, float]:
    xs = list(xs)
    return {"mean": statistics.mean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0,
            "min": min(xs), "max": max(xs), "n": len(xs)}


def aggregate(runs: List[dict]) -> dict:
    """Mean and spread over seeds per configuration, and paired differences."""
    out = {}
    names = [n for n in CONFIGS if any(r["config"] == n for r in runs)]
    for name in names:
        rs = [r for r in runs if r["config"] == name]
        agg = {"seeds": [r["seed"] for r in rs], "params": _mean_std(r["params"] for r in rs),
               "train_seconds": _mean_std(r["train_seconds"] for r in rs),
               "total_flops": _mean_std(r["total_flops"] for r in rs),
               "final_train_loss": _mean_std(r["final_train_loss"] for r in rs)}
        for acc in rs[0]["metrics"]:
            for m in ("SSIM", "PSNR", "NMSE"):
                agg[f"{m}_{acc}"] = _mean_std(r["metrics"][acc][m] for r in rs)
        out[name] = agg
    # Paired by seed: same data order, masks and initial small network.
    paired = {}
    ref = "grown_sample_select"
    if ref in names:
        by_seed = {r["seed"]: r for r in runs if r["config"] == ref}
        for name in names:
            if name == ref:
                continue
            for metric in ("SSIM", "PSNR"):
                for acc in ("4x", "8x"):
                    diffs = [by_seed[r["seed"]]["metrics"][acc][metric] - r["metrics"][acc][metric]
                             for r in runs if r["config"] == name and r["seed"] in by_seed]
                    if diffs:
                        paired[f"{ref} - {name}: {metric} {acc}"] = _mean_std(diffs)
    return {"per_config": out, "paired_differences": paired}


def plot(res: dict, path: Path) -> Path:
    """Val SSIM against parameters and against training FLOPs (mean +/- std)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    agg = aggregate(res["runs"])["per_config"]
    zf = res.get("zero_filled")
    markers = dict(zip(CONFIGS, ["o", "s", "^", "D", "v", "P"]))
    fig, axes = plt.subplots(2, 2, figsize=(9, 6.5), sharey="row")
    for row, acc in enumerate(("4x", "8x")):
        for col, (key, scale, xlabel) in enumerate((("params", 1e3, "parameters (thousands, final)"),
                                                    ("total_flops", 1e9, "training cost (GFLOPs, incl. growth)"))):
            ax = axes[row, col]
            for i, (name, a) in enumerate(agg.items()):
                ssim = a[f"SSIM_{acc}"]
                # Grown runs share their x: spread the markers a little.
                grown = [n for n in agg if CONFIGS[n] is not None]
                shift = 1 + 0.012 * (grown.index(name) - (len(grown) - 1) / 2) if name in grown else 1
                ax.errorbar(a[key]["mean"] / scale * shift, ssim["mean"], yerr=ssim["std"],
                            xerr=a[key]["std"] / scale, marker=markers[name], capsize=3,
                            linestyle="none", label=LABELS[name])
            if zf:
                ax.axhline(zf[acc]["SSIM"], color="gray", linestyle=":", label="zero-filled input")
            ax.set_xlabel(xlabel)
            ax.grid(alpha=0.3)
            if col == 0:
                ax.set_ylabel(f"val SSIM, {acc}")
    axes[0, 0].legend(fontsize=7, loc="best")
    cfg = res["config"]
    fig.suptitle(f"Synthetic knee single-coil, {cfg['max_epochs']} epochs, {len(cfg['seeds'])} seeds "
                 "(mean +/- std; grown runs offset horizontally for legibility)", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run(workdir: Path, quick: bool = False, cfg: Optional[dict] = None,
        configs: Optional[Sequence[str]] = None, plot_path: Optional[Path] = None,
        log=print) -> dict:
    """The whole study.

    Args:
        workdir: Folder for data, Lightning files and reconstructions.
        quick: Smaller data, fewer epochs and seeds.
        cfg: Sizes (see :data:`FULL`).
        configs: Subset of :data:`CONFIGS` (grown ones first when
            ``fixed_large`` is included).
        plot_path: Where to write the PNG (None: no plot).
        log: Progress printer.

    Returns:
        Runs, aggregates and configuration.
    """
    cfg = dict(cfg or (QUICK if quick else FULL))
    names = list(configs or CONFIGS)
    workdir = Path(workdir)
    knee = training.make_data(workdir / "data_quality", cfg["data"])
    runs, large_widths = [], None
    start = time.perf_counter()
    for seed in cfg["seeds"]:
        for name in names:
            r = train_one(name, seed, cfg, knee, workdir, large_widths)
            if CONFIGS[name] is not None:
                if large_widths is None:
                    large_widths = r["widths"]
                elif r["widths"] != large_widths:
                    raise RuntimeError(f"{name} seed {seed} ended at widths {r['widths']}, "
                                       f"other grown runs at {large_widths}")
            runs.append(r)
            log(f"[quality] seed {seed} {name}: SSIM 4x {r['metrics']['4x']['SSIM']:.4f} "
                f"8x {r['metrics']['8x']['SSIM']:.4f}, {r['params']:,} params, "
                f"{r['train_seconds']:.0f} s ({time.perf_counter() - start:.0f} s elapsed)")
    zero_filled = _evaluate(torch.nn.Identity(), knee, workdir / "recons" / "zero_filled")
    res = {"benchmark": "quality", "config": {**cfg, "seeds": list(cfg["seeds"])},
           "zero_filled": zero_filled,
           "growth": training.GROWTH, "configs": {n: CONFIGS[n] for n in names},
           "large_widths": large_widths, "runs": runs, "aggregate": aggregate(runs),
           "wall_seconds": time.perf_counter() - start}
    if plot_path is not None:
        res["plot"] = str(plot(res, plot_path))
    return res


def table(res: dict) -> str:
    """Markdown tables of :func:`run`'s result."""
    cfg, g = res["config"], res["growth"]
    d = cfg["data"]
    lines = [
        f"{d['train']} training volumes x {d['num_slices']} slices, {d['val']} validation volumes, "
        f"{d['recon_size']}x{d['recon_size']}; U-Net {cfg['num_pool_layers']} pools, start chans "
        f"{cfg['chans']}; {cfg['max_epochs']} epochs, batch 1, RMSprop lr 1e-3; growth: "
        f"{', '.join(g['layers_to_grow'])} (both convs), +{g['n_new']} filters every "
        f"{g['growth_interval']} epochs from epoch {g['growth_start_epoch']} (at most "
        f"{g.get('max_growth_steps')} events); seeds "
        f"{', '.join(map(str, cfg['seeds']))}. Mean +/- std over seeds.", "",
        "| configuration | params | SSIM 4x | PSNR 4x | NMSE 4x | SSIM 8x | PSNR 8x | NMSE 8x | "
        "last-epoch train L1 | train GFLOPs | train s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def ms(a, fmt):
        return f"{a['mean']:{fmt}} +/- {a['std']:{fmt}}"

    aggregated = aggregate(res["runs"])
    for name, a in aggregated["per_config"].items():
        lines.append(
            f"| {LABELS[name]} | {a['params']['mean']:,.0f} | {ms(a['SSIM_4x'], '.4f')} | "
            f"{ms(a['PSNR_4x'], '.2f')} | {ms(a['NMSE_4x'], '.4f')} | {ms(a['SSIM_8x'], '.4f')} | "
            f"{ms(a['PSNR_8x'], '.2f')} | {ms(a['NMSE_8x'], '.4f')} | "
            f"{ms(a['final_train_loss'], '.4f')} | {a['total_flops']['mean'] / 1e9:,.1f} | {ms(a['train_seconds'], '.0f')} |")
    zf = res.get("zero_filled")
    if zf:
        lines.append(f"| zero-filled input (no network) | 0 | {zf['4x']['SSIM']:.4f} | "
                     f"{zf['4x']['PSNR']:.2f} | {zf['4x']['NMSE']:.4f} | {zf['8x']['SSIM']:.4f} | "
                     f"{zf['8x']['PSNR']:.2f} | {zf['8x']['NMSE']:.4f} | | | |")
    paired = aggregated["paired_differences"]
    if paired:
        lines += ["", "Paired differences over seeds (same seed: same data order, masks and, for "
                  "the grown and small runs, the same initial network; positive = "
                  "sample_select better):", "",
                  "| difference | mean +/- std | min | max |", "|---|---|---|---|"]
        for k, v in paired.items():
            lines.append(f"| {k} | {v['mean']:+.4f} +/- {v['std']:.4f} | {v['min']:+.4f} | "
                         f"{v['max']:+.4f} |")
    lines += ["", "Per-seed SSIM 4x / 8x:", "",
              "| configuration | " + " | ".join(f"seed {sd}" for sd in cfg["seeds"]) + " |",
              "|---|" + "---|" * len(cfg["seeds"])]
    for name in aggregated["per_config"]:
        cells = []
        for sd in cfg["seeds"]:
            r = next((r for r in res["runs"] if r["config"] == name and r["seed"] == sd), None)
            cells.append("-" if r is None else
                         f"{r['metrics']['4x']['SSIM']:.3f} / {r['metrics']['8x']['SSIM']:.3f}")
        lines.append(f"| {LABELS[name]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
