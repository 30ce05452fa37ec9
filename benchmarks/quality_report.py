"""Aggregates, goals, tables and plots of the quality study (:mod:`benchmarks.quality`).

Quality is summarised per run by two numbers, each the mean of its 4x and
8x values: PSNR (fastMRI's, per volume, averaged over volumes) and the
object SSIM. Differences are paired by seed (same data order, masks and,
for configurations of the same start width, the same initial network).
"""
from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Dict, List, Optional, Sequence

#: The bump window: steps before and after an event.
WINDOW = 25
#: The summary metrics: key -> (label, format).
SUMMARY = {"PSNR": ("PSNR (dB)", ".2f"), "SSIM_object": ("object SSIM", ".4f")}
#: Gradient-informed configurations and the random baseline each is paired with.
VS_RANDOM = {"sample_select": "random", "gradmax": "random",
             "sample_select_descent": "random_descent", "gradmax_descent": "random_descent"}
#: Goal thresholds (issue: quality study).
PSNR_TOL, SSIM_TOL, FLOP_SHARE, RANDOM_MARGIN = 0.05, 0.002, 0.6, 0.1


def _ms(xs: Sequence[float]) -> Dict[str, float]:
    xs = [float(x) for x in xs]
    return {"mean": statistics.mean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0,
            "n": len(xs), "values": xs}


def summary(run: dict, key: str) -> float:
    """A run's ``key`` (``PSNR`` or ``SSIM_object``) averaged over 4x and 8x."""
    return statistics.mean(run["metrics"][acc][key] for acc in ("4x", "8x"))


def last_epoch_loss(run: dict) -> float:
    """Mean training loss over the last epoch's steps."""
    return statistics.mean(run["losses"][-run["steps_per_epoch"]:])


def _by(runs: List[dict], regime: str) -> Dict[str, Dict[int, dict]]:
    out: Dict[str, Dict[int, dict]] = {}
    for r in runs:
        if r["regime"] == regime:
            out.setdefault(r["config"], {})[r["seed"]] = r
    return out


def _paired(a: Dict[int, dict], b: Dict[int, dict], fn) -> Optional[dict]:
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    d = _ms([fn(a[s]) - fn(b[s]) for s in seeds])
    d["seeds"] = seeds
    d["positive"] = sum(x > 0 for x in d["values"])
    return d


def reference_of(name: str, runs: Dict[int, dict], by: Dict[str, Dict[int, dict]]) -> Optional[str]:
    """The fixed configuration a run is paired with for its loss curve: same start width."""
    start = next(iter(runs.values()))["flags"]
    chans = start[start.index("--chans") + 1]
    for ref, ref_runs in by.items():
        if ref.startswith("fixed_") and ref != name:
            f = next(iter(ref_runs.values()))["flags"]
            if f[f.index("--chans") + 1] == chans:
                return ref
    return None


def window_of(run: dict) -> int:
    """The bump window: :data:`WINDOW` steps, at most half an epoch (tiny runs)."""
    return max(1, min(WINDOW, run["steps_per_epoch"] // 2))


def bumps(run: dict, ref: dict, epochs: Optional[Sequence[int]] = None) -> List[dict]:
    """Loss change at each event of ``run`` relative to the fixed ``ref`` on the same batches.

    ``bump = mean(d[e:e+w]) - mean(d[e-w:e])`` with ``d = loss(run) -
    loss(ref)`` per step, ``e`` the event's first step (the event happens
    before that step's forward pass) and ``w`` :func:`window_of`.

    Args:
        run: A run's record.
        ref: The fixed run of the same start width and seed.
        epochs: The epoch starts to measure (default: the run's events).
    """
    window = window_of(run)
    d = [a - b for a, b in zip(run["losses"], ref["losses"])]
    spe = run["steps_per_epoch"]
    out = []
    if epochs is None:
        epochs = sorted(set(run["grown_epochs"]) | set(run["pruned_epochs"]))
    for epoch in epochs:
        e = epoch * spe
        if e < window or e + window > len(d):
            continue
        before, after = statistics.mean(d[e - window:e]), statistics.mean(d[e:e + window])
        out.append({"epoch": epoch, "before": before, "after": after, "bump": after - before})
    return out


def quiet_epochs(run: dict) -> List[int]:
    """Epoch starts after the first event at which nothing happens (the bump's noise reference)."""
    events = set(run["grown_epochs"]) | set(run["pruned_epochs"])
    if not events:
        return []
    return [e for e in range(min(events) + 1, len(run["epochs"])) if e not in events]


def _front(fixed: List[tuple], flops: float) -> Optional[float]:
    """The fixed widths' quality at ``flops``, linear in log FLOPs between neighbours."""
    pts = sorted(fixed)
    if len(pts) < 2 or not pts[0][0] <= flops <= pts[-1][0]:
        return None
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 <= flops <= x1:
            t = 0.0 if x1 == x0 else (math.log(flops) - math.log(x0)) / (math.log(x1) - math.log(x0))
            return y0 + t * (y1 - y0)
    return None


def verdict(b: dict, null: Optional[dict]) -> str:
    """``bump``, ``improves`` or ``within noise``: the events against the quiet epoch starts.

    The same statistic taken at epoch starts without an event (after the
    first event, so the networks already differ) is the noise; the events'
    mean differs from it when the gap exceeds twice its standard error.
    """
    if null is None or null["n"] < 2 or b["n"] < 2:
        return "within noise" if abs(b["mean"]) <= b["std"] else (
            "bump" if b["mean"] > 0 else "improves")
    se = math.sqrt(b["std"] ** 2 / b["n"] + null["std"] ** 2 / null["n"])
    gap = b["mean"] - null["mean"]
    if gap > 2 * se:
        return "bump"
    if gap < -2 * se:
        return "improves"
    return "within noise"


def aggregate_regime(result: dict, regime: str) -> dict:
    """Per-configuration means, paired differences, Pareto margins, bumps and goals."""
    by = _by(result["runs"], regime)
    role = result["roles"]
    small, large = by.get(role["small"], {}), by.get(role["large"], {})
    large_flops = statistics.mean(r["total_flops"] for r in large.values()) if large else None
    per = {}
    for name, runs in by.items():
        rs = list(runs.values())
        a = {"seeds": sorted(runs), "params": _ms(r["params"] for r in rs),
             "total_flops": _ms(r["total_flops"] for r in rs),
             "growth_flops": _ms(r["growth_flops"] + r["prune_flops"] for r in rs),
             "fit_seconds": _ms(r["fit_seconds"] for r in rs),
             "growth_seconds": _ms(r["growth_seconds"] + r["prune_seconds"] for r in rs),
             "train_loss": _ms(last_epoch_loss(r) for r in rs)}
        for key in SUMMARY:
            a[key] = _ms(summary(r, key) for r in rs)
        for acc in ("4x", "8x"):
            for m in ("PSNR", "SSIM_object", "SSIM", "NMSE", "background_offset"):
                a[f"{m}_{acc}"] = _ms(r["metrics"][acc][m] for r in rs)
        if large_flops:
            a["flop_share"] = a["total_flops"]["mean"] / large_flops
        per[name] = a
    paired: Dict[str, dict] = {}
    for name, runs in by.items():
        p = {}
        for tag, other in (("small", small), ("large", large),
                           ("random", by.get(VS_RANDOM.get(name, ""), {}))):
            if other is runs or not other:
                continue
            for key in SUMMARY:
                d = _paired(runs, other, lambda r, k=key: summary(r, k))
                if d:
                    p[f"{key} vs {tag}"] = d
        paired[name] = p
    groups = result["groups"]
    fixed = [n for n in by if groups[n] == "fixed"]
    pareto = {}
    for key in SUMMARY:
        pts = [(per[n]["total_flops"]["mean"], per[n][key]["mean"]) for n in fixed]
        for n in by:
            if groups[n] == "fixed":
                continue
            f = _front(pts, per[n]["total_flops"]["mean"])
            pareto.setdefault(n, {})[key] = None if f is None else per[n][key]["mean"] - f
    bump_rows: Dict[str, dict] = {}
    pairing = {"pairs": 0, "identical_before_first_event": 0, "identical_all_epochs": 0}
    for name, runs in by.items():
        if groups[name] == "fixed":
            continue
        ref = reference_of(name, runs, by)
        if ref is None:
            continue
        rows, quiet = [], []
        for seed, r in runs.items():
            if seed not in by[ref]:
                continue
            rr = by[ref][seed]
            rows += [dict(b, seed=seed) for b in bumps(r, rr)]
            quiet += [b["bump"] for b in bumps(r, rr, quiet_epochs(r))]
            first = min(r["grown_epochs"] + r["pruned_epochs"], default=len(r["epochs"]))
            same = [x["input_digest"] == y["input_digest"] for x, y in zip(r["epochs"], rr["epochs"])]
            pairing["pairs"] += 1
            pairing["identical_before_first_event"] += all(same[:first + 1])
            pairing["identical_all_epochs"] += all(same)
        if rows:
            b = _ms(x["bump"] for x in rows)
            per_event = {}
            for x in rows:
                per_event.setdefault(x["epoch"], []).append(x["bump"])
            null = _ms(quiet) if quiet else None
            bump_rows[name] = {"reference": ref, **b,
                               "per_event": {e: statistics.mean(v) for e, v in per_event.items()},
                               "quiet": null, "verdict": verdict(b, null)}
    return {"per_config": per, "paired": paired, "pareto": pareto, "bumps": bump_rows,
            "pairing": pairing, "goals": goals(per, paired, pareto, bump_rows, groups, role)}


def goals(per: dict, paired: dict, pareto: dict, bump_rows: dict, groups: dict,
          role: dict) -> List[dict]:
    """The issue's goals, one row per (goal, configuration), with the measured figure."""
    rows = []
    grown = [n for n in per if groups[n] == "grown"]
    for n in grown:
        p = paired[n]
        if "PSNR vs small" in p:
            ps, ss = p["PSNR vs small"], p["SSIM_object vs small"]
            k = sum(a > 0 and b > 0 for a, b in zip(ps["values"], ss["values"]))
            rows.append({"goal": f"beats {role['small']} in every seed (PSNR and object SSIM)",
                         "config": n, "measured": f"{k} of {ps['n']} seeds (PSNR "
                         f"{ps['mean']:+.3f} dB, object SSIM {ss['mean']:+.4f})",
                         "met": k == ps["n"]})
    for n in grown:
        p = paired[n]
        if "PSNR vs large" in p:
            ps, ss = p["PSNR vs large"], p["SSIM_object vs large"]
            share = per[n].get("flop_share", float("nan"))
            met = ps["mean"] >= -PSNR_TOL and ss["mean"] >= -SSIM_TOL and share <= FLOP_SHARE
            rows.append({"goal": f"within {PSNR_TOL} dB / {SSIM_TOL} object SSIM of "
                         f"{role['large']} at <= {FLOP_SHARE}x its FLOPs", "config": n,
                         "measured": f"{ps['mean']:+.3f} dB, {ss['mean']:+.4f}, at "
                         f"{share:.2f}x FLOPs", "met": bool(met)})
    for n in grown + [x for x in per if groups[x] in ("exchange", "pruned")]:
        m = pareto.get(n, {})
        if m.get("PSNR") is not None and m.get("SSIM_object") is not None:
            rows.append({"goal": "on or above the fixed-width front (PSNR, object SSIM)",
                         "config": n, "measured": f"{m['PSNR']:+.3f} dB, {m['SSIM_object']:+.4f}",
                         "met": m["PSNR"] >= 0 and m["SSIM_object"] >= 0})
    for n, base in VS_RANDOM.items():
        d = paired.get(n, {}).get("PSNR vs random")
        if d:
            k = sum(x >= RANDOM_MARGIN for x in d["values"])
            need = math.ceil(0.8 * d["n"])
            rows.append({"goal": f"beats {base} by >= {RANDOM_MARGIN} dB PSNR in >= 4 of 5 seeds",
                         "config": n, "measured": f"{k} of {d['n']} seeds (mean "
                         f"{d['mean']:+.3f} dB; " + ", ".join(f"{x:+.2f}" for x in d["values"]) + ")",
                         "met": d["n"] >= 5 and k >= need})
    for n, b in bump_rows.items():
        if groups[n] in ("grown", "exchange"):
            q = b["quiet"]
            quiet = "" if q is None else f"; quiet epochs {q['mean']:+.4f} +/- {q['std']:.4f}"
            rows.append({"goal": "no post-growth loss bump (events vs quiet epochs)", "config": n,
                         "measured": f"{b['mean']:+.4f} +/- {b['std']:.4f} over {b['n']} events"
                         f"{quiet}: {b['verdict']}", "met": b["verdict"] != "bump"})
    return rows


def aggregate(result: dict) -> dict:
    """:func:`aggregate_regime` for every regime of the result."""
    return {name: aggregate_regime(result, name) for name in result["regimes"]}


# --------------------------------------------------------------------------- tables


def _cell(a: dict, fmt: str, scale: float = 1.0) -> str:
    if a["n"] > 1:
        return f"{a['mean'] * scale:{fmt}} +/- {a['std'] * scale:{fmt}}"
    return f"{a['mean'] * scale:{fmt}}"


def _values(d: dict, fmt: str) -> str:
    return ", ".join(f"{x:{fmt}}" for x in d["values"])


def regime_line(name: str, r: dict, decide: Sequence[str]) -> str:
    """One paragraph describing a regime and what it ran."""
    runs = set(r["configs"])
    start, end, interval = r["timings"]["middle"]
    timing = "; ".join(f"{t}: {_epochs(r, t)}" for t in ("early", "late") if t in runs)
    line = (f"**{name}**: {r['phantom']} phantoms {r['recon_size']}x{r['recon_size']}, "
            f"{r['train']} training volumes x {r['slices']} slices, {r['val']} validation volumes; "
            f"U-Net {r['pools']} pools, batch {r['batch']}, {r['epochs']} epochs "
            f"({r['epochs'] * r['steps_per_epoch']:,} steps), RMSprop lr 1e-3, L1, random 4x/8x "
            f"training masks. Grown runs start at chans {r['start_chans']} and grow every site to "
            f"chans-{r['target_chans']} widths (budget schedule: events at epochs "
            f"{', '.join(map(str, range(start, end + 1, interval)))}"
            + (f"; {timing}" if timing else "") + ").")
    if runs & {"pruned_magnitude", "pruned_taylor"}:
        line += f" Pruned runs lose half of every site at epoch {r['prune_epoch']}."
    decided = [n for n in decide if n in runs]
    others = [n for n in r["configs"] if n not in decided]
    line += f" Seeds: {len(r['seeds_decide'])} for {', '.join(decided)}"
    if others:
        line += f"; {len(r['seeds_other'])} for the others"
    return line + "."


def _epochs(r: dict, timing: str) -> str:
    if timing not in r["timings"]:
        return "-"
    s, e, i = r["timings"][timing]
    return ", ".join(map(str, range(s, e + 1, i)))


def table(result: dict) -> str:
    """Markdown tables of the whole study."""
    report = result.get("report") or aggregate(result)
    labels, roles = result["labels"], result["roles"]
    lines: List[str] = [
        "Quality: PSNR and object SSIM are each the mean of the 4x and 8x leaderboard-mask "
        "values on the validation split (object SSIM: fastMRI's SSIM map averaged over the "
        "object only; see below). FLOPs: convolutions and matrix products of training "
        "(one forward+backward per slice at each epoch's widths) plus everything growth and "
        "pruning computed; share: of the fixed-large run's. Mean +/- std over seeds.", ""]
    for name, agg in report.items():
        reg = result["regimes"][name]
        per = agg["per_config"]
        lines += [regime_line(name, reg, result.get("decide", [])), "",
                  "| configuration | seeds | params | TFLOPs (share) | PSNR | PSNR 4x / 8x | "
                  "object SSIM | object SSIM 4x / 8x | SSIM 4x / 8x | last-epoch train L1 | "
                  "wall s (growth+pruning s) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for n, a in per.items():
            share = f" ({a['flop_share']:.2f})" if "flop_share" in a else ""
            lines.append(
                f"| {labels[n]} | {a['params']['n']} | {a['params']['mean']:,.0f} | "
                f"{a['total_flops']['mean'] / 1e12:.3g}{share} | {_cell(a['PSNR'], '.2f')} | "
                f"{a['PSNR_4x']['mean']:.2f} / {a['PSNR_8x']['mean']:.2f} | "
                f"{_cell(a['SSIM_object'], '.4f')} | {a['SSIM_object_4x']['mean']:.4f} / "
                f"{a['SSIM_object_8x']['mean']:.4f} | {a['SSIM_4x']['mean']:.3f} / "
                f"{a['SSIM_8x']['mean']:.3f} | {_cell(a['train_loss'], '.4f')} | "
                f"{a['fit_seconds']['mean']:.0f} ({a['growth_seconds']['mean']:.1f}) |")
        zf = result.get("zero_filled", {}).get(name)
        if zf:
            lines.append(
                f"| zero-filled input (no network) | | 0 | | "
                f"{(zf['4x']['PSNR'] + zf['8x']['PSNR']) / 2:.2f} | {zf['4x']['PSNR']:.2f} / "
                f"{zf['8x']['PSNR']:.2f} | {(zf['4x']['SSIM_object'] + zf['8x']['SSIM_object']) / 2:.4f}"
                f" | {zf['4x']['SSIM_object']:.4f} / {zf['8x']['SSIM_object']:.4f} | "
                f"{zf['4x']['SSIM']:.3f} / {zf['8x']['SSIM']:.3f} | | |")
        lines += ["", f"Paired differences (per seed, in seed order; PSNR in dB): against "
                  f"{labels[roles['small']]}, {labels[roles['large']]} and the random baseline "
                  "of the same fan-out init.", "",
                  "| configuration | PSNR vs small | object SSIM vs small | PSNR vs large | "
                  "object SSIM vs large | PSNR vs random |", "|---|---|---|---|---|---|"]
        for n, p in agg["paired"].items():
            if result["groups"][n] == "fixed" and n != roles["large"]:
                continue
            cells = []
            for key, fmt in (("PSNR vs small", "+.2f"), ("SSIM_object vs small", "+.4f"),
                             ("PSNR vs large", "+.2f"), ("SSIM_object vs large", "+.4f"),
                             ("PSNR vs random", "+.2f")):
                d = p.get(key)
                cells.append("-" if d is None else f"{d['mean']:{fmt}} ({_values(d, fmt)})")
            lines.append(f"| {labels[n]} | " + " | ".join(cells) + " |")
        if agg["pareto"]:
            lines += ["", "Distance to the fixed-width front at the same training FLOPs (the fixed "
                      "widths' mean quality, linear in log FLOPs between neighbouring widths; "
                      "positive: above the front):", "",
                      "| configuration | FLOP share | PSNR above front (dB) | object SSIM above front |",
                      "|---|---|---|---|"]
            for n, m in agg["pareto"].items():
                cells = ["outside the front's range" if m[k] is None else f"{m[k]:+{f}}"
                         for k, f in (("PSNR", ".3f"), ("SSIM_object", ".4f"))]
                lines.append(f"| {labels[n]} | {agg['per_config'][n].get('flop_share', 0):.2f} | "
                             + " | ".join(cells) + " |")
        if agg["bumps"]:
            w = window_of(next(r for r in result["runs"] if r["regime"] == name))
            lines += ["", f"Loss bump at each event: mean training L1 of the {w} steps after "
                      f"it minus the {w} before, relative to the fixed run of the same start "
                      "width and seed on the same batches (negative: training improves at the "
                      "event); mean +/- std over seeds and events, and the mean per event epoch:",
                      "", "| configuration | reference | bump | per event | verdict |",
                      "|---|---|---|---|---|"]
            for n, b in agg["bumps"].items():
                ev = ", ".join(f"{e}: {v:+.4f}" for e, v in sorted(b["per_event"].items()))
                q = b["quiet"]
                qc = "-" if q is None else f"{q['mean']:+.4f} +/- {q['std']:.4f} ({q['n']})"
                lines.append(f"| {labels[n]} | {b['reference']} | {b['mean']:+.4f} +/- "
                             f"{b['std']:.4f} | {ev} | {qc} | {b['verdict']} |")
        pr = agg["pairing"]
        lines += ["", f"Pairing check: of {pr['pairs']} (run, fixed reference) pairs, "
                  f"{pr['identical_before_first_event']} saw byte-identical inputs in every epoch "
                  f"up to the first event and {pr['identical_all_epochs']} in every epoch.", "",
                  "Goals:", "", "| goal | configuration | measured | met |", "|---|---|---|---|"]
        for g in agg["goals"]:
            lines.append(f"| {g['goal']} | {labels[g['config']]} | {g['measured']} | "
                         f"{'yes' if g['met'] else 'NO'} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


# --------------------------------------------------------------------------- plots

_STYLE = {
    "sample_select": ("tab:blue", "o"), "random": ("tab:gray", "s"), "gradmax": ("tab:green", "^"),
    "sample_select_descent": ("tab:blue", "D"), "random_descent": ("tab:gray", "D"),
    "gradmax_descent": ("tab:green", "D"), "auto_sites": ("tab:purple", "P"),
    "no_seeding": ("tab:cyan", "v"), "moment_seeding": ("tab:cyan", "^"),
    "slow_new": ("teal", "v"), "no_ramp": ("tab:red", "v"), "early": ("tab:olive", "<"), "late": ("tab:brown", ">"),
    "exchange": ("tab:orange", "X"), "exchange_magnitude": ("goldenrod", "X"),
    "pruned_magnitude": ("tab:red", "*"),
    "pruned_taylor": ("tab:pink", "*"),
}


def plots(result: dict, folder: Path) -> List[Path]:
    """``quality_pareto.png`` and ``quality_bump.png`` in ``folder``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    report = result.get("report") or aggregate(result)
    labels, groups = result["labels"], result["groups"]
    names = list(report)
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    # Per regime: PSNR over the whole front, then PSNR and object SSIM near
    # the large width, where the grown runs are.
    panels = (("PSNR", False), ("PSNR", True), ("SSIM_object", True))
    fig, axes = plt.subplots(len(names), 3, figsize=(16, 4.3 * len(names)), squeeze=False)
    for row, rname in enumerate(names):
        per = report[rname]["per_config"]
        fixed = sorted((n for n in per if groups[n] == "fixed"),
                       key=lambda n: per[n]["total_flops"]["mean"])
        large = result["roles"]["large"]
        x_large = per[large]["total_flops"]["mean"] / 1e12 if large in per else None
        for col, (key, zoom) in enumerate(panels):
            ax = axes[row, col]
            xs = [per[n]["total_flops"]["mean"] / 1e12 for n in fixed]
            ax.errorbar(xs, [per[n][key]["mean"] for n in fixed],
                        yerr=[per[n][key]["std"] for n in fixed], color="black", marker="o",
                        capsize=3, label="fixed widths (the front)")
            for n, x in zip(fixed, xs):
                ax.annotate(labels[n].replace("fixed ", ""), (x, per[n][key]["mean"]),
                            textcoords="offset points", xytext=(4, -10), fontsize=7)
            shown = [(x, per[n][key]) for n, x in zip(fixed, xs)]
            for n, a in per.items():
                if groups[n] == "fixed":
                    continue
                color, marker = _STYLE.get(n, ("tab:red", "o"))
                hollow = "descent" not in n and groups[n] == "grown" and n not in (
                    "sample_select", "random", "gradmax")
                x = a["total_flops"]["mean"] / 1e12
                ax.errorbar(x, a[key]["mean"], yerr=a[key]["std"],
                            color=color, marker=marker, capsize=3, linestyle="none",
                            markerfacecolor="none" if hollow else color, label=labels[n])
                shown.append((x, a[key]))
            ax.set_xscale("log")
            if zoom and x_large:
                lo, hi = 0.45 * x_large, 1.08 * x_large
                near = [v for x, v in shown if lo <= x <= hi]
                if near:
                    y0 = min(v["mean"] - v["std"] for v in near)
                    y1 = max(v["mean"] + v["std"] for v in near)
                    pad = 0.08 * (y1 - y0 or 1.0)
                    ax.set_xlim(lo, hi)
                    ax.set_ylim(y0 - pad, y1 + pad)
                ax.set_xticks([float(f"{lo * (hi / lo) ** (i / 4):.2g}") for i in range(5)])
            else:
                ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel("training TFLOPs (growth and pruning included; log scale)")
            ax.set_ylabel(f"val {SUMMARY[key][0]}, mean of 4x and 8x")
            ax.set_title(f"{rname}" + (" (near the large width)" if zoom else ""), fontsize=9)
            ax.grid(alpha=0.3, which="both")
        axes[row, -1].legend(fontsize=6.5, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.suptitle("Quality against training cost (mean +/- std over seeds)", fontsize=10)
    fig.tight_layout()
    pareto = folder / "quality_pareto.png"
    fig.savefig(pareto, dpi=100)
    plt.close(fig)

    # Loss around the events, first regime: the run minus its fixed reference.
    # Growth in the top row, pruning and exchange (much larger) below.
    rname = names[0]
    by = _by(result["runs"], rname)
    rows = [[n for n in ("sample_select", "random", "gradmax", "sample_select_descent",
                         "random_descent", "no_ramp", "no_seeding") if n in by],
            [n for n in ("exchange", "exchange_magnitude", "pruned_magnitude", "pruned_taylor")
             if n in by]]
    rows = [r for r in rows if r]
    fig, axes = plt.subplots(max(1, len(rows)), 2, figsize=(14, 4.2 * max(1, len(rows))),
                             squeeze=False)
    for row, show in enumerate(rows):
        ax_run, ax_event = axes[row]
        events = set()
        for n in show:
            ref = reference_of(n, by[n], by)
            seeds = [s for s in by[n] if ref is not None and s in by[ref]]
            if not seeds:
                continue
            diffs = [[a - b for a, b in zip(by[n][s]["losses"], by[ref][s]["losses"])]
                     for s in seeds]
            mean = [statistics.mean(col) for col in zip(*diffs)]
            k = 10
            smooth = [statistics.mean(mean[max(0, i - k + 1):i + 1]) for i in range(len(mean))]
            color, _ = _STYLE.get(n, ("tab:red", "o"))
            style = "--" if "descent" in n else "-"
            ax_run.plot(smooth, color=color, linestyle=style, lw=1, label=f"{labels[n]} - {ref}")
            spe = by[n][seeds[0]]["steps_per_epoch"]
            aligned, w = [], window_of(by[n][seeds[0]])
            for s, d in zip(seeds, diffs):
                r = by[n][s]
                for e in sorted(set(r["grown_epochs"]) | set(r["pruned_epochs"])):
                    events.add(e * spe)
                    i = e * spe
                    if i >= 2 * w and i + 2 * w <= len(d):
                        base = statistics.mean(d[i - w:i])
                        aligned.append([x - base for x in d[i - 2 * w:i + 2 * w]])
            if aligned:
                m = [statistics.mean(col) for col in zip(*aligned)]
                ax_event.plot(range(-2 * w, 2 * w), m, color=color, linestyle=style, lw=1,
                              label=labels[n])
        for x in sorted(events):
            ax_run.axvline(x, color="gray", lw=0.5, linestyle=":")
        ax_run.axhline(0, color="black", lw=0.6)
        ax_run.set_xlabel("training step (events dotted)")
        ax_run.set_ylabel("train L1 - fixed run's L1")
        ax_run.set_title("10-step running mean, mean over seeds", fontsize=9)
        ax_run.legend(fontsize=6.5)
        ax_event.axvline(0, color="gray", lw=0.8, linestyle=":")
        ax_event.axhline(0, color="black", lw=0.6)
        ax_event.set_xlabel("steps from the event")
        ax_event.set_ylabel("the same, minus its pre-event mean")
        ax_event.set_title("aligned on each event, mean over events and seeds", fontsize=9)
    fig.suptitle(f"{rname}: training loss around growth (top) and pruning (bottom) events",
                 fontsize=10)
    fig.tight_layout()
    bump = folder / "quality_bump.png"
    fig.savefig(bump, dpi=100)
    plt.close(fig)
    return [pareto, bump]
