"""Benchmark 10: does growth beat training the large network for less, and does the gradient count?

The baseline a user would pick instead of growing is the large network
trained for the same FLOPs (fewer epochs). Every run goes through the same
path as the quality study (:mod:`.quality`: the training command's parser
and checks, ``DynamicUnetModule``, fastMRI's data module, a Lightning
``Trainer``; leaderboard-style validation at 4x and 8x, never used during
training), and each run is also evaluated at a few epochs on the way (an
anytime curve: quality against cumulative training FLOPs). The fixed large
network is evaluated at every epoch near the grown runs' FLOPs: its point
at epoch ``e`` *is* the large network trained for ``e + 1`` epochs (the
learning-rate schedule, StepLR(40), does not depend on ``max_epochs``, and
the evaluation leaves every random state as it was), so the FLOP-matched
baseline of a grown run is the fixed large run's point whose cumulative
FLOPs are nearest to the grown run's total.

Regimes: ``textured96`` (the quality study's), ``textured64`` (a second
matrix size, its own data) and ``anatomy128`` (brain anatomy). Configurations
(:data:`CONFIGS` names of :mod:`.quality`): the fixed widths of the sweep
(chans 4, 6, 8), the budget schedule from chans 4 to chans-8 widths with
``random``, ``sample_select`` (gradient-norm scores), ``sample_select``
with optimizer-aware scores (``--candidate-score optimizer``) and
``gradmax`` with descent fan-outs (a joint fan-in/fan-out solution in the
spirit of TINY), and the ``auto`` schedule with no target.

Usage::

    python -m benchmarks.growth_pays --jobs 2          # resumable
    python -m benchmarks.growth_pays --quick           # minutes, same code path
"""
from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from . import common, quality

#: Configurations per regime, in table order.
CONFIGS = ("fixed_c4", "fixed_c6", "fixed_c8", "random", "sample_select", "sample_select_opt",
           "gradmax_descent", "auto")
#: Epochs (0-based) at which every run is evaluated on the way.
ANYTIME = (4, 9, 14)
#: Where the fixed large network is evaluated too (its FLOP-matched points).
ANYTIME_LARGE = (4, 9, 11, 12, 13, 14, 15, 16, 17)
SEEDS = (0, 1, 2, 3, 4)

REGIMES: Dict[str, quality.Regime] = {
    "textured64": replace(quality.REGIMES["textured96"], recon_size=64, seeds_decide=SEEDS,
                          seeds_other=SEEDS, configs=CONFIGS),
    "textured96": replace(quality.REGIMES["textured96"], seeds_decide=SEEDS, seeds_other=SEEDS,
                          configs=CONFIGS),
    "anatomy128": replace(quality.REGIMES["anatomy128"], seeds_decide=SEEDS, seeds_other=SEEDS,
                          configs=("fixed_c4", "fixed_c8", "random", "sample_select_opt",
                                   "auto")),
}
QUICK_REGIMES: Dict[str, quality.Regime] = {
    "textured_quick": replace(quality.QUICK_REGIMES["textured_quick"], seeds_decide=(0, 1),
                              seeds_other=(0, 1),
                              configs=("fixed_c2", "fixed_c4", "random", "sample_select_opt",
                                       "auto")),
}
QUICK_ANYTIME = (1, 2)
#: The fixed networks that play 'large' (the budget schedule's target width).
LARGE = {"full": "fixed_c8", "quick": "fixed_c4"}
GROWN = ("random", "sample_select", "sample_select_opt", "gradmax_descent", "auto")
#: Gradient-informed methods; gradmax with descent fan-outs is the joint fan-in/fan-out
#: solution closest to TINY's that the engine has (GradMax's linearised directions as
#: fan-ins, minus the fan-out gradient, line-searched, as fan-outs).
GRADIENT = ("sample_select", "sample_select_opt", "gradmax_descent")


def psnr(metrics: dict) -> float:
    """Mean of the 4x and 8x PSNR."""
    return (metrics["4x"]["PSNR"] + metrics["8x"]["PSNR"]) / 2


def ssim_object(metrics: dict) -> float:
    return (metrics["4x"]["SSIM_object"] + metrics["8x"]["SSIM_object"]) / 2


def _path(out: Path, regime: str, name: str, seed: int) -> Path:
    return Path(out) / "growth_pays_runs" / regime / f"{name}_s{seed}.json"


def run(out: Path, quick: bool = False, regimes: Optional[Sequence[str]] = None, jobs: int = 1,
        threads: int = 1, command: str = "python -m benchmarks.growth_pays",
        log=print, configs: Optional[Sequence[str]] = None,
        seeds: Optional[Sequence[int]] = None) -> dict:
    """Every run without an up-to-date record, then the aggregate (:func:`aggregate`).

    ``configs`` and ``seeds`` restrict what is run now (records of other
    runs already written are still aggregated).
    """
    table = QUICK_REGIMES if quick else REGIMES
    names = list(regimes or table)
    bad = [r for r in names if r not in table]
    if bad:
        raise ValueError(f"unknown regime(s) {', '.join(bad)}; valid: {', '.join(table)}")
    large = LARGE["quick" if quick else "full"]
    work = Path(out) / ("work_quick" if quick else "work")
    work.mkdir(parents=True, exist_ok=True)
    specs, records = [], []
    for rname in names:
        regime = table[rname]
        knee = quality.make_data(work / f"growth_pays_data_{rname}", regime)
        for seed in regime.seeds_decide:
            for name in regime.configs:
                path = _path(out, rname, name, seed)
                wanted = (configs is None or name in configs) and (seeds is None or seed in seeds)
                if not wanted:
                    if path.is_file():
                        records.append(json.loads(path.read_text()))
                    continue
                flags = quality.flags_of(regime, name, seed, quick)
                anytime = list(QUICK_ANYTIME if quick else
                               (ANYTIME_LARGE if name == large else ANYTIME))
                path = _path(out, rname, name, seed)
                if path.is_file():
                    old = json.loads(path.read_text())
                    if old.get("flags") == flags and old.get("anytime_epochs") == anytime:
                        records.append(old)
                        continue
                specs.append({
                    "regime": rname, "regime_spec": {**asdict(regime),
                                                     "steps_per_epoch": regime.steps_per_epoch},
                    "config": name, "seed": seed, "flags": flags, "data_path": str(knee),
                    "val_dir": str(knee / "singlecoil_val"), "work": str(work),
                    "out_file": str(path), "threads": threads, "command": command,
                    "anytime_epochs": anytime})
    log(f"[growth_pays] {len(records)} runs up to date, {len(specs)} to run with {jobs} job(s)")
    start = time.perf_counter()

    def done(r: dict) -> None:
        records.append(r)
        log(f"[growth_pays] {r['regime']} {r['config']} seed {r['seed']}: PSNR "
            f"{psnr(r['metrics']):.2f}, {r['params']:,} params, {r['total_flops'] / 1e12:.2f} "
            f"TFLOPs, {r['fit_seconds']:.0f} s ({len(records)} done, "
            f"{time.perf_counter() - start:.0f} s elapsed)")

    quality.run_specs(specs, _train, jobs, done)
    result = {"quick": quick, "large": large, "command": command,
              "regimes": {n: asdict(table[n]) for n in names}, "runs": records,
              "machine": common.machine()}
    result["report"] = aggregate(result)
    return result


def _train(spec: dict) -> dict:
    record = quality.train_one(spec)
    record["anytime_epochs"] = spec["anytime_epochs"]
    common.write_json(Path(spec["out_file"]), record)
    return record


def _mean_sd(xs: Sequence[float]) -> Dict[str, float]:
    return {"mean": statistics.fmean(xs), "sd": statistics.stdev(xs) if len(xs) > 1 else 0.0,
            "n": len(xs)}


def flop_matched(run: dict, large: dict) -> dict:
    """The fixed large run's anytime point with cumulative FLOPs nearest to ``run``'s total."""
    points = large.get("anytime", []) + [{"epoch": len(large["epochs"]) - 1,
                                          "total_flops": large["total_flops"],
                                          "metrics": large["metrics"]}]
    return min(points, key=lambda p: abs(p["total_flops"] - run["total_flops"]))


def aggregate(result: dict) -> dict:
    """Per regime: per-configuration means, paired differences and the goals' figures."""
    out = {}
    large_name = result["large"]
    for rname in result["regimes"]:
        runs = [r for r in result["runs"] if r["regime"] == rname]
        by: Dict[str, Dict[int, dict]] = {}
        for r in runs:
            by.setdefault(r["config"], {})[r["seed"]] = r
        large = by.get(large_name, {})
        rows = {}
        for name, seeds in by.items():
            rs = [seeds[s] for s in sorted(seeds)]
            rows[name] = {"psnr": _mean_sd([psnr(r["metrics"]) for r in rs]),
                          "ssim_object": _mean_sd([ssim_object(r["metrics"]) for r in rs]),
                          "tflops": statistics.fmean(r["total_flops"] for r in rs) / 1e12,
                          "params": statistics.fmean(r["params"] for r in rs),
                          "seeds": sorted(seeds)}
        paired = {}

        def pair(a: str, b: str, fn=lambda x, y: psnr(x["metrics"]) - psnr(y["metrics"])):
            common_seeds = sorted(set(by.get(a, {})) & set(by.get(b, {})))
            if not common_seeds:
                return None
            d = [fn(by[a][s], by[b][s]) for s in common_seeds]
            return {"per_seed": d, "mean": statistics.fmean(d), "seeds": common_seeds,
                    "at_least_0.1": sum(x >= 0.1 for x in d), "wins": sum(x > 0 for x in d)}

        for g in GRADIENT:
            paired[f"{g} - random"] = pair(g, "random")
        for g in GROWN:
            paired[f"{g} - {large_name}"] = pair(g, large_name)
            if large:
                def matched(x, y):
                    return psnr(x["metrics"]) - psnr(flop_matched(x, y)["metrics"])
                paired[f"{g} - {large_name} at equal FLOPs"] = pair(g, large_name, matched)
        paired = {k: v for k, v in paired.items() if v is not None}
        fixed = {n: v for n, v in rows.items() if n.startswith("fixed_")}
        best_fixed = max(fixed, key=lambda n: fixed[n]["psnr"]["mean"]) if fixed else None
        auto = None
        if "auto" in rows and best_fixed is not None:
            gap = pair("auto", best_fixed)
            auto = {"best_fixed": best_fixed,
                    "psnr_gap": gap["mean"] if gap else float("nan"),
                    "psnr_gap_seeds": gap["seeds"] if gap else [],
                    "flops_share": rows["auto"]["tflops"] / fixed[best_fixed]["tflops"],
                    "sweep_tflops": sum(v["tflops"] for v in fixed.values()),
                    "auto_tflops": rows["auto"]["tflops"],
                    "widths": {s: by["auto"][s]["widths"].get("bottleneck") for s in by["auto"]},
                    "grown_epochs": {s: by["auto"][s]["grown_epochs"] for s in by["auto"]}}
        curve = {}
        for name, seeds in by.items():
            pts: Dict[int, List[tuple]] = {}
            for r in seeds.values():
                for p in r.get("anytime", []):
                    pts.setdefault(p["epoch"], []).append((p["total_flops"], psnr(p["metrics"])))
            curve[name] = {e: (statistics.fmean(f for f, _ in v) / 1e12,
                               statistics.fmean(q for _, q in v)) for e, v in sorted(pts.items())}
        out[rname] = {"rows": rows, "paired": paired, "auto": auto, "curve": curve}
    return out


def table(res: dict) -> str:
    """Markdown, one block per regime."""
    large = res["large"]
    lines = [f"Command: `{res['command']}`. PSNR: mean of the 4x and 8x leaderboard-mask "
             f"values on the validation split (dB); object SSIM likewise. TFLOPs: training "
             f"plus growth (convolutions and matrix products). Paired differences are per seed "
             f"(seed order); 'at equal FLOPs': against {large} evaluated at the epoch whose "
             f"cumulative FLOPs are nearest to the grown run's total.", ""]
    for rname, rep in res["report"].items():
        reg = res["regimes"][rname]
        lines += [f"**{rname}**: {reg['phantom']} {reg['recon_size']}x{reg['recon_size']}, "
                  f"{reg['train']} training volumes x {reg['slices']} slices, {reg['epochs']} "
                  f"epochs, U-Net {reg['pools']} pools, batch {reg['batch']}.", "",
                  "| configuration | seeds | params | TFLOPs | PSNR | object SSIM |",
                  "|---|---|---|---|---|---|"]
        for name, row in rep["rows"].items():
            lines.append(f"| {quality.CONFIGS[name].label} | {len(row['seeds'])} | "
                         f"{row['params']:,.0f} | {row['tflops']:.3g} | "
                         f"{row['psnr']['mean']:.2f} +/- {row['psnr']['sd']:.2f} | "
                         f"{row['ssim_object']['mean']:.4f} +/- {row['ssim_object']['sd']:.4f} |")
        lines += ["", "| paired difference (PSNR dB) | mean | per seed | >= +0.1 dB | wins |",
                  "|---|---|---|---|---|"]
        for name, p in rep["paired"].items():
            lines.append(f"| {name} | {p['mean']:+.3f} | "
                         f"{', '.join(f'{x:+.2f}' for x in p['per_seed'])} | "
                         f"{p['at_least_0.1']} of {len(p['per_seed'])} | "
                         f"{p['wins']} of {len(p['per_seed'])} |")
        a = rep["auto"]
        if a:
            lines += ["", f"Auto schedule (no target): {a['psnr_gap']:+.3f} dB against the best "
                          f"fixed width ({quality.CONFIGS[a['best_fixed']].label}, paired over "
                          f"seeds {', '.join(map(str, a['psnr_gap_seeds']))}) at "
                          f"{a['flops_share']:.2f}x its TFLOPs ({a['auto_tflops']:.3g}); the "
                          f"sweep of fixed widths cost {a['sweep_tflops']:.3g} TFLOPs. Grown at "
                          f"epochs {a['grown_epochs']}; final bottleneck widths {a['widths']}."]
        lines += ["", "Anytime (mean over seeds: epoch -> TFLOPs so far, PSNR):", ""]
        for name, pts in rep["curve"].items():
            if pts:
                cells = "; ".join(f"e{e}: {f:.3g} TF, {q:.2f}" for e, (f, q) in pts.items())
                lines.append(f"- {quality.CONFIGS[name].label}: {cells}")
        lines.append("")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.growth_pays",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--regimes", nargs="+", default=None)
    parser.add_argument("--configs", nargs="+", default=None, choices=list(CONFIGS) + [
        "fixed_c2"], help="run only these configurations now")
    parser.add_argument("--seeds", nargs="+", type=int, default=None,
                        help="run only these seeds now")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("bench_output"))
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.threads < 1:
        parser.error(f"--jobs and --threads must be >= 1, got {args.jobs} and {args.threads}")
    command = "python -m benchmarks.growth_pays " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    res = run(args.out, quick=args.quick, regimes=args.regimes, jobs=args.jobs,
              threads=args.threads, command=command.strip(), configs=args.configs,
              seeds=args.seeds)
    path = Path(args.out) / ("growth_pays_quick.json" if args.quick else "growth_pays.json")
    common.write_json(path, {k: v for k, v in res.items() if k != "runs"})
    print(table(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
