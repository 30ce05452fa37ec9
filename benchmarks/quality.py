"""Benchmark 4: what growth buys in reconstruction quality, at equal epochs.

Synthetic single-coil knee data, U-Nets trained with fastMRI's recipe
(L1 loss, RMSprop, random 4x/8x training masks) for the same number of
epochs, then evaluated on the validation split with fixed leaderboard masks
at 4x (centre 0.08) and 8x (centre 0.04) by fastMRI's metric definitions
(``fastmri_growth.inference.leaderboard_validation``: per-volume SSIM, PSNR,
NMSE with the volume's max as data range, averaged over volumes), plus
the same SSIM averaged over the object only (:func:`object_metrics`).

Why the object SSIM: in these 64x64 synthetic slices about half of every
image is background whose target is noise at 1-3% of the volume's max.
There SSIM's luminance term ``(2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1)``,
with ``C1 = (0.01 * max)^2``, drops to 0.1-0.4 when the reconstruction's
background mean ``mu_y`` is zero and below zero when it is negative, however
small the error. In most runs the networks put their 4x background 1-2% of
max below the target (slightly negative) and their 8x background 2-4% above
it, so whole-image SSIM at 4x measures the sign of a tiny background offset
that differs by seed, not the reconstruction. Averaged over the object, SSIM
ranks 4x above 8x in every run of the study.

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


#: A pixel belongs to the object where the target exceeds this fraction of
#: the volume's max (holes filled); the synthetic background sits at 1-3%.
OBJECT_THRESHOLD = 0.1
#: Metrics per acceleration in every run (see :func:`object_metrics`).
METRICS = ("SSIM", "SSIM_object", "PSNR", "NMSE", "background_offset")


def object_metrics(recon_dir: Path, target_dir: Path,
                   threshold: float = OBJECT_THRESHOLD) -> Dict[str, float]:
    """SSIM over the object only, and the reconstruction's background offset.

    The SSIM map is fastMRI's (``skimage.metrics.structural_similarity``,
    7x7 window, data range = the volume's max); its mean is taken over the
    pixels where the target exceeds ``threshold`` times the volume's max
    (holes filled, so dark structures inside the object count) instead of
    over the whole image. Per-slice values are averaged per volume, then
    over volumes, as fastMRI's evaluation does.

    Args:
        recon_dir: Folder of reconstruction files (``reconstruction``,
            ``(slices, H, W)``).
        target_dir: The split folder with the targets
            (``reconstruction_esc``).
        threshold: Object threshold as a fraction of the volume's max.

    Returns:
        ``SSIM_object`` and ``background_offset``: mean of (reconstruction -
        target) outside the object, as a fraction of the volume's max.
    """
    import h5py
    import numpy as np
    from scipy.ndimage import binary_fill_holes
    from skimage.metrics import structural_similarity

    ssims, offsets = [], []
    for rec_file in sorted(Path(recon_dir).glob("*.h5")):
        with h5py.File(rec_file, "r") as hf:
            pred = hf["reconstruction"][()]
        with h5py.File(Path(target_dir) / rec_file.name, "r") as hf:
            target = hf["reconstruction_esc"][()]
        maxval = target.max()
        vol_ssim, vol_off = [], []
        for gt, pr in zip(target, pred):
            _, smap = structural_similarity(gt, pr, data_range=maxval, full=True)
            obj = binary_fill_holes(gt > threshold * maxval)
            vol_ssim.append(float(smap[obj].mean()))
            vol_off.append(float((pr[~obj] - gt[~obj]).mean() / maxval))
        ssims.append(np.mean(vol_ssim))
        offsets.append(np.mean(vol_off))
    if not ssims:
        raise ValueError(f"no reconstruction files in {recon_dir}")
    return {"SSIM_object": float(np.mean(ssims)), "background_offset": float(np.mean(offsets))}


def _evaluate(unet, knee: Path, out_dir: Path) -> dict:
    from fastmri_growth.inference import leaderboard_validation

    unet.eval()
    with torch.no_grad():
        res = leaderboard_validation(unet, knee / "singlecoil_val", "singlecoil", out_dir,
                                     accelerations=ACCELERATIONS, center_fractions=CENTER_FRACTIONS,
                                     mask_type="random", num_workers=0, progress=False)
    return {f"{a}x": {**{m: r["metrics"][m]["mean"] for m in ("SSIM", "PSNR", "NMSE")},
                      **object_metrics(r["reconstructions"], knee / "singlecoil_val")}
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
            for m in METRICS:
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
            for metric in ("SSIM_object", "SSIM", "PSNR"):
                for acc in ("4x", "8x"):
                    diffs = [by_seed[r["seed"]]["metrics"][acc][metric] - r["metrics"][acc][metric]
                             for r in runs if r["config"] == name and r["seed"] in by_seed]
                    if diffs:
                        paired[f"{ref} - {name}: {metric} {acc}"] = {
                            **_mean_std(diffs), "positive": sum(x > 0 for x in diffs)}
    return {"per_config": out, "paired_differences": paired}


def plot(res: dict, path: Path) -> Path:
    """Val object SSIM against parameters and training FLOPs (mean +/- std)."""
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
                ssim = a[f"SSIM_object_{acc}"]
                # Grown runs share their x: spread the markers a little.
                grown = [n for n in agg if CONFIGS[n] is not None]
                shift = 1 + 0.012 * (grown.index(name) - (len(grown) - 1) / 2) if name in grown else 1
                ax.errorbar(a[key]["mean"] / scale * shift, ssim["mean"], yerr=ssim["std"],
                            xerr=a[key]["std"] / scale, marker=markers[name], capsize=3,
                            linestyle="none", label=LABELS[name])
            if zf:
                ax.axhline(zf[acc]["SSIM_object"], color="gray", linestyle=":", label="zero-filled input")
            ax.set_xlabel(xlabel)
            ax.grid(alpha=0.3)
            if col == 0:
                ax.set_ylabel(f"val SSIM over the object, {acc}")
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
            m4, m8 = r["metrics"]["4x"], r["metrics"]["8x"]
            log(f"[quality] seed {seed} {name}: object SSIM 4x {m4['SSIM_object']:.4f} "
                f"8x {m8['SSIM_object']:.4f}, SSIM 4x {m4['SSIM']:.4f} 8x {m8['SSIM']:.4f}, "
                f"{r['params']:,} params, "
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
        "SSIM: fastMRI's, over the whole image; object SSIM: the same SSIM map averaged "
        f"over the object only (target > {OBJECT_THRESHOLD:g} x the volume's max, holes filled), "
        "which is the one to compare here (see the conclusions); bg offset: mean of "
        "reconstruction - target outside the object, % of the volume's max.", "",
        "| configuration | params | object SSIM 4x | SSIM 4x | PSNR 4x | NMSE 4x | "
        "object SSIM 8x | SSIM 8x | PSNR 8x | NMSE 8x | bg offset 4x / 8x (%) | "
        "last-epoch train L1 | train GFLOPs | train s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def ms(a, fmt):
        return f"{a['mean']:{fmt}} +/- {a['std']:{fmt}}"

    def offsets(m4, m8):
        return f"{100 * m4:+.1f} / {100 * m8:+.1f}"

    aggregated = aggregate(res["runs"])
    for name, a in aggregated["per_config"].items():
        cells = [LABELS[name], f"{a['params']['mean']:,.0f}"]
        for acc in ("4x", "8x"):
            cells += [ms(a[f"SSIM_object_{acc}"], ".4f"), ms(a[f"SSIM_{acc}"], ".4f"),
                      ms(a[f"PSNR_{acc}"], ".2f"), ms(a[f"NMSE_{acc}"], ".4f")]
        cells += [offsets(a["background_offset_4x"]["mean"], a["background_offset_8x"]["mean"]),
                  ms(a["final_train_loss"], ".4f"), f"{a['total_flops']['mean'] / 1e9:,.1f}",
                  ms(a["train_seconds"], ".0f")]
        lines.append("| " + " | ".join(cells) + " |")
    zf = res.get("zero_filled")
    if zf:
        cells = ["zero-filled input (no network)", "0"]
        for acc in ("4x", "8x"):
            cells += [f"{zf[acc]['SSIM_object']:.4f}", f"{zf[acc]['SSIM']:.4f}",
                      f"{zf[acc]['PSNR']:.2f}", f"{zf[acc]['NMSE']:.4f}"]
        cells += [offsets(zf["4x"]["background_offset"], zf["8x"]["background_offset"]), "", "", ""]
        lines.append("| " + " | ".join(cells) + " |")
    paired = aggregated["paired_differences"]
    if paired:
        lines += ["", "Paired differences over seeds (same seed: same data order, masks and, for "
                  "the grown and small runs, the same initial network; positive = "
                  "sample_select better):", "",
                  "| difference | mean +/- std | min | max | seeds positive |",
                  "|---|---|---|---|---|"]
        for k, v in paired.items():
            lines.append(f"| {k.replace('SSIM_object', 'object SSIM')} | {v['mean']:+.4f} +/- "
                         f"{v['std']:.4f} | {v['min']:+.4f} | {v['max']:+.4f} | "
                         f"{v['positive']} of {v['n']} |")
    for title, cell in (
            ("Per-seed object SSIM 4x / 8x:",
             lambda m: f"{m['4x']['SSIM_object']:.3f} / {m['8x']['SSIM_object']:.3f}"),
            ("Per-seed whole-image SSIM 4x / 8x (background offset 4x / 8x, % of max):",
             lambda m: f"{m['4x']['SSIM']:.3f} / {m['8x']['SSIM']:.3f} "
                       f"({offsets(m['4x']['background_offset'], m['8x']['background_offset'])})")):
        lines += ["", title, "",
                  "| configuration | " + " | ".join(f"seed {sd}" for sd in cfg["seeds"]) + " |",
                  "|---|" + "---|" * len(cfg["seeds"])]
        for name in aggregated["per_config"]:
            cells = []
            for sd in cfg["seeds"]:
                r = next((r for r in res["runs"] if r["config"] == name and r["seed"] == sd), None)
                cells.append("-" if r is None else cell(r["metrics"]))
            lines.append(f"| {LABELS[name]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
