"""Benchmark 9: does a candidate's score predict the loss decrease training realises?

A growth method ranks zero-fan-out candidates by a score computed before
training moves them. Here the ranking is checked against what training
does. A U-Net (fastMRI's recipe: RMSprop lr 1e-3, L1 loss, random 4x/8x
training masks, batch 4) is trained on textured phantoms to step
``warmup``; then, at each of several sites, ``K`` random candidates are
scored in one statistics pass on ``growth_batches`` training batches, by

* ``grad_norm``: the gradient norm of the candidate's zero fan-out (the
  score ``sample_select`` and GradMax use);
* ``optimizer``: ``sum G**2 / sqrt(s)``, ``s`` the second moment the
  optimizer will give the new slice (``--candidate-score optimizer``);
* ``l1``: ``||G||_1`` (what a pure sign step would realise).

Each candidate is then added alone (zero fan-out, ``grad`` seeding, the
default 80-step update ramp) to a copy of the network and its optimizer
and trained for ``horizon`` steps on the same batches as a copy that did not
grow. The realised decrease of a candidate is the control's loss minus the
grown copy's, on a fixed set of held-out training batches after
``horizon`` steps (and the mean over the horizon of the per-step training
loss difference). Reported per (seed, site): Spearman's rank correlation
of each score with the realised decrease over the K candidates, and the
realised decrease of the candidate each score would keep, against the
mean over candidates (what ``random`` keeps on average) and the best.

Usage::

    python -m benchmarks.realised            # the full run (minutes)
    python -m benchmarks.realised --quick    # seconds, same code path
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from torch.nn import functional as F

from . import common, training

FULL = {"data": {"train": 20, "val": 1, "num_slices": 8, "recon_size": 64, "phantom": "textured"},
        "chans": 4, "pools": 3, "batch": 4, "warmup": 150, "horizon": 150, "candidates": 8,
        "growth_batches": 8, "held_out": 8, "seeds": (0, 1, 2),
        "sites": ("down_1:1", "bottleneck:0", "up_0:1", "up_2:t")}
QUICK = {"data": {"train": 1, "val": 1, "num_slices": 4, "recon_size": 32, "phantom": "textured"},
         "chans": 2, "pools": 2, "batch": 2, "warmup": 3, "horizon": 3, "candidates": 3,
         "growth_batches": 2, "held_out": 2, "seeds": (0,), "sites": ("down_1:1", "up_0:t")}
SCORES = ("grad_norm", "optimizer", "l1")
RAMP_STEPS = 80
#: RMSprop's learning rate (fastMRI's recipe).
LR = 1e-3


def _batches(knee: Path, seed: int, batch: int):
    """An endless stream of training batches (image, target), fastMRI's transform and masks."""
    dm = training.data_module(knee, seed, batch_size=batch)
    dm.setup("fit")  # harmless where the data module builds its sets lazily
    loader = dm.train_dataloader()
    gen = torch.Generator().manual_seed(seed)
    while True:
        torch.manual_seed(int(torch.randint(0, 2 ** 31, (1,), generator=gen)))
        for b in loader:
            yield (b.image.unsqueeze(1), b.target.unsqueeze(1))


def _loss(net, b):
    return F.l1_loss(net(b[0]), b[1])


def _train(net, opt, batches, ramp=None):
    """Train on ``batches``; returns the per-step losses. ``ramp``: (UpdateRamp, names)."""
    losses = []
    for b in batches:
        opt.zero_grad()
        loss = _loss(net, b)
        loss.backward()
        params = dict(net.named_parameters())
        before = ramp.snapshot(params) if ramp is not None else None
        opt.step()
        if ramp is not None:
            ramp.after_step(params, before, epoch=0)
        losses.append(float(loss.detach()))
    return losses


def _held_out_loss(net, batches) -> float:
    with torch.no_grad():
        return sum(float(_loss(net, b)) for b in batches) / len(batches)


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation (ties get the mean rank)."""
    def ranks(x):
        order = sorted(range(len(x)), key=lambda i: x[i])
        r = [0.0] * len(x)
        i = 0
        while i < len(x):
            j = i
            while j + 1 < len(x) and x[order[j + 1]] == x[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r
    ra, rb = ranks(list(a)), ranks(list(b))
    ma, mb = statistics.fmean(ra), statistics.fmean(rb)
    num = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    den = (sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb)) ** 0.5
    return num / den if den else float("nan")


def one_site(net, opt, site, cfg, stream_batches, scoring, held_out, seed) -> dict:
    """Score K candidates at ``site``, then add each alone and train: their realised decreases."""
    from fastmri_growth.growth import generate_candidates
    from fastmri_growth.growth.optim import preconditioner_for
    from fastmri_growth.growth.statistics import collect, precondition

    s = _site(site)
    spec = net.site_spec(s)
    cands = generate_candidates(spec, cfg["candidates"], torch.Generator().manual_seed(seed))
    stats = collect(net, [spec], scoring, lambda b: _loss(net, b), candidates={s: cands})
    st = stats.sites[s]
    scores = {"grad_norm": st.scores().tolist(),
              "l1": sum(g.flatten(1).abs().sum(1) for g in st.fan_out_grads).tolist()}
    precondition(stats, [spec], preconditioner_for(opt, "grad"))
    scores["optimizer"] = st.scores().tolist()

    control_net, control_opt = copy.deepcopy((net, opt))
    control = _train(control_net, control_opt, stream_batches)
    control_end = _held_out_loss(control_net, held_out)
    realised, realised_mean_step = [], []
    for k in range(cfg["candidates"]):
        n, o, ramp, _ = _grown_copy(net, opt, s, cands[k:k + 1], scoring)
        losses = _train(n, o, stream_batches, ramp)
        realised.append(control_end - _held_out_loss(n, held_out))
        realised_mean_step.append(statistics.fmean(c - x for c, x in zip(control, losses)))
    mean_realised = statistics.fmean(realised)
    out = {"site": site, "realised": realised, "realised_mean_step": realised_mean_step,
           "scores": scores, "mean": mean_realised, "best": max(realised)}
    for name in SCORES:
        kept = max(range(len(realised)), key=lambda i: scores[name][i])
        out[f"spearman_{name}"] = spearman(scores[name], realised)
        out[f"spearman_step_{name}"] = spearman(scores[name], realised_mean_step)
        out[f"kept_{name}"] = realised[kept]
    return out


def _replay(knee: Path, cfg: dict, seed: int):
    """The benchmark's network, optimizer and batches at each site, as :func:`run` sees them.

    Yields ``(net, opt, site, scoring, ahead, held_out)``; nothing is
    trained between sites (each case copies the network).
    """
    from itertools import islice

    from fastmri_growth.models.dynamic_unet import DynamicUnet

    stream = _batches(knee, seed, cfg["batch"])
    torch.manual_seed(seed)
    net = DynamicUnet(1, 1, chans=cfg["chans"], num_pool_layers=cfg["pools"], drop_prob=0.0)
    opt = torch.optim.RMSprop(net.parameters(), lr=LR)
    _train(net, opt, list(islice(stream, cfg["warmup"])))
    held_out = list(islice(stream, cfg["held_out"]))
    for site in cfg["sites"]:
        scoring = list(islice(stream, cfg["growth_batches"]))
        ahead = list(islice(stream, cfg["horizon"]))
        yield net, opt, site, scoring, ahead, held_out


def _site(site: str):
    from fastmri_growth.growth import Site

    layer, conv = site.split(":")
    return Site(layer, "t" if conv == "t" else int(conv))


def _grown_copy(net, opt, s, cand, scoring, ramp_steps: int = RAMP_STEPS):
    """A copy of ``(net, opt)`` with ``cand`` `(K, C_in, kh, kw)` added (zero fan-out, grad seeding)."""
    from fastmri_growth.growth import grow
    from fastmri_growth.growth.optim import remap_optimizer_state
    from fastmri_growth.growth.ramp import UpdateRamp

    n, o = copy.deepcopy((net, opt))
    reports = grow(n, [s], "sample_select", scoring, lambda b: _loss(n, b), n_new=cand.shape[0],
                   candidates={s: cand}, method_options={"n_candidates": 1})
    remap_optimizer_state(o, reports[0].changes, seeding="grad")
    ramp = UpdateRamp(ramp_steps)
    ramp.grown(reports[0].changes, {id(p): name for name, p in n.named_parameters()}, epoch=0)
    return n, o, ramp, reports[0]


def noise_floor(workdir: Path, quick: bool = False, replicates: int = 4,
                seeds: Sequence[int] = (0,)) -> dict:
    """How much of the spread between candidates a 1e-6 perturbation of one candidate gives.

    Candidate 0 of each case, its fan-in multiplied by ``1 + 1e-6 * noise``,
    is added and trained as in :func:`run` ``replicates`` times; the std of
    those realised decreases is the noise floor of a single candidate's
    realised decrease, beside the std between the K candidates.
    """
    from fastmri_growth.growth import generate_candidates

    cfg = dict(QUICK if quick else FULL)
    knee = training.make_data(Path(workdir) / "realised_data", cfg["data"])
    rows = []
    for seed in seeds:
        for net, opt, site, scoring, ahead, held_out in _replay(knee, cfg, seed):
            s = _site(site)
            cands = generate_candidates(net.site_spec(s), cfg["candidates"],
                                        torch.Generator().manual_seed(seed))
            cn, co = copy.deepcopy((net, opt))
            _train(cn, co, ahead)
            control_end = _held_out_loss(cn, held_out)

            def realised_of(cand):
                n, o, ramp, _ = _grown_copy(net, opt, s, cand, scoring)
                _train(n, o, ahead, ramp)
                return control_end - _held_out_loss(n, held_out)

            g = torch.Generator().manual_seed(99)
            perturbed = [realised_of(cands[:1] * (1 + 1e-6 * torch.randn(cands[:1].shape,
                                                                           generator=g)))
                         for _ in range(replicates)]
            between = [realised_of(cands[k:k + 1]) for k in range(cfg["candidates"])]
            rows.append({"seed": seed, "site": site, "perturbed": perturbed,
                         "candidates": between, "std_perturbed": statistics.pstdev(perturbed),
                         "std_candidates": statistics.pstdev(between)})
    return {"rows": rows, "replicates": replicates, "machine": common.machine()}


def trial_scores(workdir: Path, quick: bool = False, steps: int = 20,
                 seeds: Optional[Sequence[int]] = None) -> dict:
    """A longer look than the first step: train all K candidates jointly, then ablate each.

    All K candidates of a case are added at once (zero fan-out, grad
    seeding) and only their new weights (fan-in and fan-out) are trained for
    ``steps`` optimizer steps on the scoring batches; a candidate's trial
    score is the scoring loss's rise when its fan-out is zeroed. Compared by
    rank with each candidate's realised decrease from :func:`run`, which is
    re-run here for the same cases.
    """
    from fastmri_growth.growth import generate_candidates

    cfg = dict(QUICK if quick else FULL)
    base = run(workdir, quick=quick, cfg={**cfg, "seeds": tuple(seeds or cfg["seeds"])})
    by_case = {(r["seed"], r["site"]): r for r in base["rows"]}
    knee = training.make_data(Path(workdir) / "realised_data", cfg["data"])
    rows = []
    for seed in seeds or cfg["seeds"]:
        for net, opt, site, scoring, _, _ in _replay(knee, cfg, seed):
            s = _site(site)
            cands = generate_candidates(net.site_spec(s), cfg["candidates"],
                                        torch.Generator().manual_seed(seed))
            n, o, _, report = _grown_copy(net, opt, s, cands, scoring, ramp_steps=0)
            new = {}
            for c in report.changes:
                mask = torch.zeros_like(c.new, dtype=torch.bool)
                mask.index_fill_(c.dim, c.new_positions, True)
                new[id(c.new)] = mask
            for t in range(steps):
                o.zero_grad()
                _loss(n, scoring[t % len(scoring)]).backward()
                frozen = {}
                for p in n.parameters():
                    if id(p) in new:
                        p.grad.mul_(new[id(p)])
                    else:
                        frozen[id(p)] = p.detach().clone()
                o.step()
                with torch.no_grad():  # only the candidates train
                    for p in n.parameters():
                        if id(p) in frozen:
                            p.copy_(frozen[id(p)])
            with torch.no_grad():
                before = statistics.fmean(float(_loss(n, b)) for b in scoring)
                fan_out = [c for c in report.changes if c.grad_hint is not None]
                trial = [0.0] * cfg["candidates"]
                for j, k in enumerate(report.selected):
                    saved = []
                    for c in fan_out:
                        pos = c.new_positions[j:j + 1]
                        saved.append((c, pos, c.new.index_select(c.dim, pos).clone()))
                        c.new.index_fill_(c.dim, pos, 0.0)
                    trial[k] = statistics.fmean(float(_loss(n, b)) for b in scoring) - before
                    for c, pos, v in saved:
                        c.new.index_copy_(c.dim, pos, v)
            r = by_case[(seed, site)]
            kept = max(range(len(trial)), key=trial.__getitem__)
            rows.append({"seed": seed, "site": site, "trial": trial,
                         "spearman": spearman(trial, r["realised"]),
                         "kept_minus_mean": r["realised"][kept] - r["mean"]})
    return {"rows": rows, "steps": steps, "machine": common.machine()}


def run(workdir: Path, quick: bool = False, cfg: Optional[dict] = None) -> dict:
    """The benchmark at ``cfg`` (default: FULL, or QUICK with ``quick``)."""
    cfg = dict(cfg or (QUICK if quick else FULL))
    knee = training.make_data(Path(workdir) / "realised_data", cfg["data"])
    start = time.perf_counter()
    rows = []
    for seed in cfg["seeds"]:
        for net, opt, site, scoring, ahead, held_out in _replay(knee, cfg, seed):
            row = one_site(net, opt, site, cfg, ahead, scoring, held_out, seed)
            row["seed"] = seed
            rows.append(row)
    summary = {}
    for name in SCORES:
        rho = [r[f"spearman_{name}"] for r in rows]
        rho_step = [r[f"spearman_step_{name}"] for r in rows]
        gain = [r[f"kept_{name}"] - r["mean"] for r in rows]
        summary[name] = {"spearman_mean": statistics.fmean(rho),
                         "spearman_step_mean": statistics.fmean(rho_step),
                         "kept_minus_random_mean": statistics.fmean(gain),
                         "kept_beats_random": sum(g > 0 for g in gain), "cases": len(rows)}
    return {"config": {k: v for k, v in cfg.items()}, "rows": rows, "summary": summary,
            "seconds": time.perf_counter() - start, "machine": common.machine()}


def table(res: dict) -> str:
    """Markdown: per score, rank correlation with the realised decrease and what it keeps."""
    cfg = res["config"]
    lines = [
        f"U-Net chans {cfg['chans']}, {cfg['pools']} pools, textured phantoms "
        f"{cfg['data']['recon_size']}x{cfg['data']['recon_size']}, RMSprop lr 1e-3, L1, batch "
        f"{cfg['batch']}; trained {cfg['warmup']} steps, then at each site {cfg['candidates']} "
        f"candidates scored on {cfg['growth_batches']} batches, each added alone (zero fan-out, "
        f"grad seeding, {RAMP_STEPS}-step ramp) and trained {cfg['horizon']} steps beside a "
        f"control on the same batches; realised decrease = control minus grown held-out L1 "
        f"({cfg['held_out']} batches). Sites {', '.join(cfg['sites'])}; seeds "
        f"{', '.join(map(str, cfg['seeds']))}; {len(res['rows'])} cases; "
        f"{res['seconds']:.0f} s.",
        "",
        "| score | Spearman with realised (held-out, mean) | Spearman with mean per-step "
        "decrease | kept minus mean candidate (x1e-4 L1) | kept beats mean candidate |",
        "|---|---|---|---|---|",
    ]
    for name in SCORES:
        s = res["summary"][name]
        lines.append(f"| {name} | {s['spearman_mean']:+.2f} | {s['spearman_step_mean']:+.2f} | "
                     f"{1e4 * s['kept_minus_random_mean']:+.2f} | "
                     f"{s['kept_beats_random']} of {s['cases']} |")
    predicted = statistics.fmean(LR * s ** 2 for r in res["rows"] for s in r["scores"]["optimizer"])
    per_step = statistics.fmean(x for r in res["rows"] for x in r["realised_mean_step"])
    held = statistics.fmean(x for r in res["rows"] for x in r["realised"])
    lines += ["", f"Predicted decrease per step of one new filter (lr * optimizer score**2, "
                  f"mean over candidates and cases): {predicted:+.2e}; realised, mean per-step "
                  f"training-loss difference to the control over the {cfg['horizon']} steps: "
                  f"{per_step:+.2e}; realised held-out decrease after them: {held:+.2e}."]
    best = statistics.fmean(r["best"] - r["mean"] for r in res["rows"])
    spread = statistics.fmean(statistics.pstdev(r["realised"]) for r in res["rows"])
    lines += ["", f"Best candidate minus mean candidate: {1e4 * best:+.2f} x1e-4 L1 (what a "
                  f"perfect ranking would gain); mean spread (std) of the realised decreases "
                  f"over candidates: {1e4 * spread:.2f} x1e-4."]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.realised",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("bench_output"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--noise-floor", action="store_true",
                        help="instead: the realised decrease of one candidate perturbed by 1e-6, "
                             "against the spread between candidates (seed 0)")
    parser.add_argument("--trial", type=int, default=0, metavar="STEPS",
                        help="instead: trial scores (all candidates trained jointly for STEPS "
                             "steps, then ablated) against the realised decrease")
    parser.add_argument("--seeds", nargs="+", type=int, default=None,
                        help="seeds of --noise-floor (default 0) and --trial (default all)")
    args = parser.parse_args(argv)
    common.set_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.noise_floor or args.trial:
        extra = (noise_floor(args.out / "work", quick=args.quick, seeds=args.seeds or (0,))
                 if args.noise_floor else
                 trial_scores(args.out / "work", quick=args.quick, steps=args.trial,
                              seeds=args.seeds))
        name = "realised_noise" if args.noise_floor else "realised_trial"
        common.write_json(args.out / f"{name}{'_quick' if args.quick else ''}.json", extra)
        for row in extra["rows"]:
            if args.noise_floor:
                print(f"seed {row['seed']} {row['site']}: std of the perturbed candidate "
                      f"{1e4 * row['std_perturbed']:.2f}e-4, between candidates "
                      f"{1e4 * row['std_candidates']:.2f}e-4")
            else:
                print(f"seed {row['seed']} {row['site']}: Spearman {row['spearman']:+.2f}, kept "
                      f"minus mean {1e4 * row['kept_minus_mean']:+.2f}e-4")
        if args.trial:
            rows = extra["rows"]
            print(f"mean Spearman {statistics.fmean(r['spearman'] for r in rows):+.2f}; kept beats "
                  f"mean in {sum(r['kept_minus_mean'] > 0 for r in rows)} of {len(rows)}")
        return 0
    res = run(args.out / "work", quick=args.quick)
    res["command"] = "python -m benchmarks.realised " + " ".join(argv or sys.argv[1:])
    path = args.out / ("realised_quick.json" if args.quick else "realised.json")
    common.write_json(path, res)
    print(table(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
