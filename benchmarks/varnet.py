"""VarNet benchmark: what growing fastMRI's end-to-end VarNet costs and buys, at CPU size.

Usage::

    python -m benchmarks.varnet            # ~10 min on 2 shared cores
    python -m benchmarks.varnet --quick    # ~2 min
    python -m benchmarks.varnet --only cost

Writes ``bench_output/varnet.json`` (``varnet_quick.json``) with the command,
the machine and the date, and prints the Markdown tables that the section
"VarNet: growth cost and quality at CPU size" of ``benchmarks/README.md``
quotes. Two parts:

**cost**: on one synthetic multicoil knee slice (fastMRI's
``VarNetDataTransform``, random 4x mask), the time of one ``sample_select``
growth step of a :class:`~fastmri_growth.models.DynamicVarNet` (the engine's
``grow``: one forward+backward of the whole VarNet for the statistics,
candidate scoring, surgery) at sites in a cascade and in the sensitivity
model, with N = 10 and 64 candidates, relative to one training step
(``VarNetModule``'s: forward, SSIM loss, backward, Adam step), the two
timed alternately; one event over the bottleneck of every cascade; and
one-pass scoring against brute force (N copies of the VarNet, each with one
candidate added, N forward+backward passes).

**quality**: fastMRI's ``VarNetModule`` and :class:`DynamicVarNetModule`
trained in a Lightning ``Trainer`` for the same epochs on synthetic multicoil
knee data (random 4x/8x training masks, SSIM loss, Adam), then the
validation split reconstructed under fixed random 4x and 8x masks and scored
by fastMRI's per-volume SSIM/PSNR/NMSE (``leaderboard_validation``).
Configurations, each with every seed (a growing run and the fixed run of its
starting width begin from the same weights):

* ``fixed_small``: the VarNet at the starting width, never grows;
* ``grown``: starts there; every cascade's U-Net grows at every block conv,
  one filter per site and epoch from epoch 1 (``sample_select``, N=10);
* ``fixed_large``: the VarNet at twice the starting width.

Training cost: FLOPs of one forward+backward per training slice at the widths
of its epoch, plus the growth steps while they run (``torch.utils.flop_counter``:
convolutions and matrix products; FFTs and elementwise ops are not counted),
and wall seconds (indicative on a shared machine).
"""

import argparse
import contextlib
import copy
import io
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from . import common

#: Architecture at CPU size: fastMRI's demo has 8 cascades, chans 18, pools 4.
ARCH = {"num_cascades": 4, "pools": 2, "chans": 4, "sens_pools": 2, "sens_chans": 4}
FULL = {
    "data": {"train": 8, "val": 4, "num_slices": 4, "recon_size": 64, "coils": 4},
    "cost": {"arch": {**ARCH, "chans": 8}, "candidates": (10, 64), "repeats": 7,
             "brute_candidates": 10, "brute_repeats": 3},
    "quality": {"arch": ARCH, "seeds": (0, 1, 2, 3), "max_epochs": 10, "n_candidates": 10},
}
QUICK = {
    "data": {"train": 3, "val": 1, "num_slices": 4, "recon_size": 64, "coils": 4},
    "cost": {"arch": {**ARCH, "chans": 8}, "candidates": (10, 64), "repeats": 3,
             "brute_candidates": 10, "brute_repeats": 1},
    "quality": {"arch": ARCH, "seeds": (0,), "max_epochs": 4, "n_candidates": 10},
}
#: For the smoke test: everything once, tiny.
TINY = {
    "data": {"train": 1, "val": 1, "num_slices": 2, "recon_size": 32, "coils": 2},
    "cost": {"arch": {"num_cascades": 1, "pools": 1, "chans": 2, "sens_pools": 1,
                      "sens_chans": 2}, "candidates": (2,), "repeats": 1,
             "brute_candidates": 2, "brute_repeats": 1},
    "quality": {"arch": {"num_cascades": 1, "pools": 1, "chans": 2, "sens_pools": 1,
                         "sens_chans": 2}, "seeds": (0,), "max_epochs": 2, "n_candidates": 2},
}
#: Growth sites timed (``K`` is the last cascade): full resolution with a
#: pooled and a skip consumer, the bottleneck of the last cascade, the
#: sensitivity model's first block.
COST_SITES = ("cascade_0/down_0:1", "cascade_K/bottleneck:0", "sens/down_0:1")
CONFIGS = ("fixed_small", "grown", "fixed_large")
LABELS = {"fixed_small": "fixed VarNet, chans {c}", "grown": "growing VarNet from chans {c}",
          "fixed_large": "fixed VarNet, chans {c2}"}
ACCELERATIONS = (4, 8)
CENTER_FRACTIONS = (0.08, 0.04)


# ---------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------


def make_data(root: Path, spec: dict, seed: int = 0) -> Path:
    """Synthetic multicoil knee train/val under ``root`` (reused if complete); returns ``root/knee``."""
    from fastmri_growth.data.synthetic import generate_dataset

    knee = Path(root) / "knee"
    marker = Path(root) / "spec.txt"
    want = repr(sorted(spec.items())) + f" seed={seed}"
    if marker.is_file() and marker.read_text() == want:
        return knee
    generate_dataset(root, challenges=("knee_multicoil",), splits=("train", "val"),
                     num_volumes={"train": spec["train"], "val": spec["val"]},
                     num_slices=spec["num_slices"], recon_size=spec["recon_size"],
                     num_coils=(spec["coils"], spec["coils"]), seed=seed, overwrite=True)
    marker.write_text(want)
    return knee


def one_batch(knee: Path):
    """The first training slice as a batch of one ``VarNetSample``, under a seeded random 4x mask."""
    from fastmri.data import SliceDataset
    from fastmri.data.subsample import RandomMaskFunc
    from fastmri.data.transforms import VarNetDataTransform

    ds = SliceDataset(knee / "multicoil_train", challenge="multicoil", use_dataset_cache=False,
                      transform=VarNetDataTransform(RandomMaskFunc([0.08], [4]), use_seed=True))
    return torch.utils.data.default_collate([ds[0]])


def ssim_loss(net, batch, ssim):
    """VarNetModule's training loss of ``net`` on a batch."""
    from fastmri.data.transforms import center_crop_to_smallest

    out = net(batch.masked_kspace, batch.mask, batch.num_low_frequencies)
    target, out = center_crop_to_smallest(batch.target, out)
    return ssim(out.unsqueeze(1), target.unsqueeze(1), data_range=batch.max_value)


# ---------------------------------------------------------------------------
# cost
# ---------------------------------------------------------------------------


def _site(key: str, num_cascades: int) -> str:
    return key.replace("cascade_K", f"cascade_{num_cascades - 1}")


def run_cost(knee: Path, cfg: dict) -> dict:
    """Growth step vs training step, one event over every cascade, one pass vs brute force."""
    import fastmri

    from fastmri_growth.growth import brute_force_scores_at, grow, score_candidates_at
    from fastmri_growth.models import DynamicVarNet

    arch = cfg["arch"]
    batch = one_batch(knee)
    torch.manual_seed(0)
    net = DynamicVarNet(arch["num_cascades"], arch["sens_chans"], arch["sens_pools"],
                        arch["chans"], arch["pools"])
    ssim = fastmri.SSIMLoss()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-5)

    def train_step():
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        ssim_loss(net, batch, ssim).backward()
        optimizer.step()
        return time.perf_counter() - start

    def growth_step(sites, n):
        def run():
            m = copy.deepcopy(net)
            start = time.perf_counter()
            grow(m, sites, "sample_select", [batch], lambda b: ssim_loss(m, b, ssim),
                 generator=torch.Generator().manual_seed(0), method_options={"n_candidates": n})
            return time.perf_counter() - start
        return run

    rows = []
    cases = [([_site(s, arch["num_cascades"])], n) for s in COST_SITES for n in cfg["candidates"]]
    every = [f"cascade_{k}/bottleneck:0" for k in range(arch["num_cascades"])]
    cases.append((every, cfg["candidates"][0]))
    for sites, n in cases:
        times = common.alternate({"train_step": train_step, "growth_step": growth_step(sites, n)},
                                 repeats=cfg["repeats"], warmup=1)
        rows.append({"sites": sites, "n_candidates": n,
                     "train_step": common.summary(times["train_step"]),
                     "growth_step": common.summary(times["growth_step"]),
                     "ratio": common.ratio(times["growth_step"], times["train_step"])})

    site = _site(COST_SITES[0], arch["num_cascades"])
    spec = net.site_spec(site)
    n = cfg["brute_candidates"]
    cands = torch.randn(n, *spec.fan_in_shape, generator=torch.Generator().manual_seed(1))
    loss_of = (lambda m: (lambda b: ssim_loss(m, b, ssim)))

    def one_pass():
        start = time.perf_counter()
        score_candidates_at(net, site, cands, [batch], loss_of(net))
        return time.perf_counter() - start

    def brute():
        start = time.perf_counter()
        brute_force_scores_at(net, site, cands, [batch], loss_of)
        return time.perf_counter() - start

    times = common.alternate({"one_pass": one_pass, "brute_force": brute},
                             repeats=cfg["brute_repeats"], warmup=0)
    fast = score_candidates_at(net, site, cands, [batch], loss_of(net)).double()
    slow = brute_force_scores_at(net, site, cands, [batch], loss_of).double()
    return {
        "arch": arch, "kspace_shape": list(batch.masked_kspace.shape[1:-1]),
        "params": net.num_parameters(), "rows": rows,
        "scoring": {"site": site, "n_candidates": n, "one_pass": common.summary(times["one_pass"]),
                    "brute_force": common.summary(times["brute_force"]),
                    "speedup": common.ratio(times["brute_force"], times["one_pass"]),
                    "float32_rel_error": float((fast - slow).abs().max() / slow.abs().max())},
    }


def cost_table(res: dict) -> str:
    a = res["arch"]
    lines = [
        f"DynamicVarNet({a['num_cascades']} cascades, chans {a['chans']}, pools {a['pools']}, "
        f"sens_chans {a['sens_chans']}, sens_pools {a['sens_pools']}; {res['params']:,} "
        f"parameters), one slice of {res['kspace_shape'][0]} coils x {res['kspace_shape'][1]} x "
        f"{res['kspace_shape'][2]} k-space; medians of alternated runs.", "",
        "| growth sites | N | training step (ms) | growth step (ms) | growth / training |",
        "|---|---|---|---|---|"]
    for r in res["rows"]:
        sites = r["sites"][0] if len(r["sites"]) == 1 else \
            f"bottleneck:0 of all {len(r['sites'])} cascades (one event)"
        lines.append(f"| {sites} | {r['n_candidates']} | "
                     f"{common.fmt_ms(r['train_step']['median_s'])} | "
                     f"{common.fmt_ms(r['growth_step']['median_s'])} | "
                     f"{r['ratio']['ratio_of_medians']:.2f} |")
    s = res["scoring"]
    lines += ["", f"Scoring {s['n_candidates']} candidates at {s['site']}: one pass "
              f"{common.fmt_ms(s['one_pass']['median_s'])} ms, brute force "
              f"{common.fmt_ms(s['brute_force']['median_s'])} ms "
              f"({s['speedup']['ratio_of_medians']:.1f}x); largest relative difference of the "
              f"scores in float32: {s['float32_rel_error']:.1e}."]
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# quality
# ---------------------------------------------------------------------------


def _flops_per_step(varnet, batch) -> int:
    import fastmri
    from torch.utils.flop_counter import FlopCounterMode

    m = copy.deepcopy(varnet).train()
    ssim = fastmri.SSIMLoss()
    with FlopCounterMode(display=False) as fc:
        ssim_loss(m, batch, ssim).backward()
    return int(fc.get_total_flops())


def _modules():
    """VarNetModule and a DynamicVarNetModule whose growth callback counts seconds and FLOPs."""
    from torch.utils.flop_counter import FlopCounterMode

    from fastmri_growth.pl_modules import DynamicVarNetModule, GrowthCallback, VarNetModule

    class CountingGrowthCallback(GrowthCallback):
        def grow(self, trainer, pl_module, batches, sites, epoch):
            start = time.perf_counter()
            with FlopCounterMode(display=False) as fc:
                reports = super().grow(trainer, pl_module, batches, sites, epoch)
            pl_module.growth_seconds += time.perf_counter() - start
            pl_module.growth_flops += int(fc.get_total_flops())
            return reports

    class CountingDynamicVarNetModule(DynamicVarNetModule):
        growth_callback_class = CountingGrowthCallback
        growth_flops = 0
        growth_seconds = 0.0

    return VarNetModule, CountingDynamicVarNetModule


def _recorder(batch):
    import pytorch_lightning as pl

    class EpochRecorder(pl.Callback):
        def __init__(self):
            self.epochs: List[dict] = []
            self._cache: Dict[str, int] = {}

        def on_train_epoch_start(self, trainer, pl_module):
            self._batches, self._start = 0, time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch_, batch_idx):
            self._batches += 1

        def on_train_epoch_end(self, trainer, pl_module):
            seconds = time.perf_counter() - self._start
            varnet = pl_module.varnet
            key = repr([p.shape for p in varnet.parameters()])
            if key not in self._cache:
                self._cache[key] = _flops_per_step(varnet, batch)
            self.epochs.append({"epoch": trainer.current_epoch, "seconds": seconds,
                                "params": sum(p.numel() for p in varnet.parameters()),
                                "train_flops": self._cache[key] * self._batches})

    return EpochRecorder()


def _data_module(knee: Path, seed: int):
    from fastmri.data.subsample import create_mask_for_mask_type
    from fastmri.data.transforms import VarNetDataTransform

    from fastmri_growth.pl_modules.data_module import FastMriDataModule

    mask = create_mask_for_mask_type("random", [0.08, 0.04], [4, 8])
    mask.rng = np.random.RandomState(seed)  # the same training masks for every configuration
    return FastMriDataModule(
        knee, "multicoil",
        train_transform=VarNetDataTransform(mask_func=mask, use_seed=False),
        val_transform=VarNetDataTransform(mask_func=mask, use_seed=True),
        test_transform=VarNetDataTransform(),
        use_dataset_cache_file=False, num_workers=0, batch_size=1,
    )


def _train(name: str, seed: int, knee: Path, cfg: dict, workdir: Path, batch) -> dict:
    import pytorch_lightning as pl

    from fastmri_growth.evaluation.inference import leaderboard_validation

    from .training import quiet_lightning

    quiet_lightning()
    fixed_cls, growing_cls = _modules()
    arch = dict(cfg["arch"])
    pl.seed_everything(seed, workers=True, verbose=False)
    if name == "grown":
        module = growing_cls(**arch, lr=1e-3, growth_method="sample_select",
                             n_candidates=cfg["n_candidates"], layers_to_grow=["cascade_*/"
                             + lid for lid in _layer_ids(arch["pools"])],
                             growth_interval=1, growth_start_epoch=1, growth_seed=seed,
                             # As the figures in benchmarks/README.md were
                             # measured: before the update ramp became the
                             # default (it was measured on the U-Net, RMSprop).
                             new_filter_ramp_steps=0)
    else:
        if name == "fixed_large":
            arch["chans"] *= 2
        module = fixed_cls(**arch, lr=1e-3)
    recorder = _recorder(batch)
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_epochs=cfg["max_epochs"], logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0, callbacks=[recorder],
        default_root_dir=str(workdir / "lightning"), deterministic=False,
    )
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        trainer.fit(module, datamodule=_data_module(knee, seed))
    results = leaderboard_validation(
        module.varnet, knee / "multicoil_val", "multicoil", workdir / f"recon_{name}_{seed}",
        accelerations=ACCELERATIONS, center_fractions=CENTER_FRACTIONS, progress=False)
    return {
        "config": name, "seed": seed, "epochs": recorder.epochs,
        "train_seconds": sum(e["seconds"] for e in recorder.epochs),
        "train_flops": sum(e["train_flops"] for e in recorder.epochs),
        "growth_flops": int(getattr(module, "growth_flops", 0)),
        "growth_seconds": float(getattr(module, "growth_seconds", 0.0)),
        "final_params": sum(p.numel() for p in module.varnet.parameters()),
        "final_bottleneck": _bottleneck(module.varnet),
        "metrics": {a: {m: r["metrics"][m]["mean"] for m in ("SSIM", "PSNR", "NMSE")}
                    for a, r in results.items()},
    }


def _layer_ids(pools: int) -> List[str]:
    from fastmri_growth.models.unet_spec import layer_ids

    return layer_ids(pools)


def _bottleneck(varnet) -> int:
    unet = varnet.cascades[0].model.unet
    return int(unet.conv.layers[0].weight.shape[0])


def run_quality(knee: Path, cfg: dict, workdir: Path) -> dict:
    """Train every configuration with every seed; evaluate at fixed 4x and 8x masks."""
    batch = one_batch(knee)
    runs = []
    for seed in cfg["seeds"]:
        for name in CONFIGS:
            runs.append(_train(name, seed, knee, cfg, workdir, batch))
    return {"arch": cfg["arch"], "seeds": list(cfg["seeds"]), "max_epochs": cfg["max_epochs"],
            "n_candidates": cfg["n_candidates"], "runs": runs}


def quality_table(res: dict, data: dict) -> str:
    # Accelerations are int keys in memory and str keys after a JSON round trip.
    for r in res["runs"]:
        r["metrics"] = {int(k): v for k, v in r["metrics"].items()}
    a = res["arch"]
    c = a["chans"]
    lines = [
        f"{a['num_cascades']} cascades, pools {a['pools']}, sensitivity U-Net chans "
        f"{a['sens_chans']} / pools {a['sens_pools']}; {data['train']} training volume(s) x "
        f"{data['num_slices']} slices ({data['coils']} coils, {data['recon_size']}x"
        f"{data['recon_size']} targets), {res['max_epochs']} epochs, Adam 1e-3, random 4x/8x "
        f"training masks; validation ({data['val']} volume(s)) under fixed random masks; "
        f"mean over seeds {', '.join(map(str, res['seeds']))} (per-seed range in brackets).", "",
        "| configuration | final params | cascade bottleneck | training GFLOPs | growth GFLOPs "
        "| s/epoch | SSIM 4x | SSIM 8x | PSNR 4x | PSNR 8x |",
        "|---|---|---|---|---|---|---|---|---|---|"]

    def fmt(values, spec):
        mean = statistics.mean(values)
        if len(values) == 1:
            return f"{mean:{spec}}"
        return f"{mean:{spec}} [{min(values):{spec}}, {max(values):{spec}}]"

    for name in CONFIGS:
        runs = [r for r in res["runs"] if r["config"] == name]
        if not runs:
            continue
        label = LABELS[name].format(c=c, c2=2 * c)
        m = [r["metrics"] for r in runs]
        lines.append(
            f"| {label} | {runs[0]['final_params']:,} | {runs[0]['final_bottleneck']} | "
            f"{statistics.mean(r['train_flops'] for r in runs) / 1e9:.1f} | "
            f"{statistics.mean(r['growth_flops'] for r in runs) / 1e9:.2f} | "
            f"{statistics.mean(r['train_seconds'] for r in runs) / res['max_epochs']:.1f} | "
            f"{fmt([x[4]['SSIM'] for x in m], '.4f')} | {fmt([x[8]['SSIM'] for x in m], '.4f')} | "
            f"{fmt([x[4]['PSNR'] for x in m], '.2f')} | {fmt([x[8]['PSNR'] for x in m], '.2f')} |")
    lines += ["", "Paired by seed (same data order, masks and, for the growing run and the small "
              "fixed one, starting weights): SSIM difference, mean and number of seeds where it "
              "is positive.", "",
              "| comparison | SSIM 4x | SSIM 8x |", "|---|---|---|"]
    by = {(r["config"], r["seed"]): r["metrics"] for r in res["runs"]}
    for a_, b_ in (("grown", "fixed_small"), ("fixed_large", "grown")):
        seeds = [s_ for s_ in res["seeds"] if (a_, s_) in by and (b_, s_) in by]
        if not seeds:
            continue
        cells = []
        for acc in ACCELERATIONS:
            d = [by[(a_, s_)][acc]["SSIM"] - by[(b_, s_)][acc]["SSIM"] for s_ in seeds]
            cells.append(f"{statistics.mean(d):+.4f} ({sum(x > 0 for x in d)}/{len(d)})")
        names = {"grown": "growing", "fixed_small": f"fixed chans {c}",
                 "fixed_large": f"fixed chans {2 * c}"}
        lines.append(f"| {names[a_]} - {names[b_]} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------


def run(workdir: Path, cfg: dict, only=("cost", "quality")) -> dict:
    """Both parts (or those in ``only``) at the sizes of ``cfg`` (:data:`FULL`, :data:`QUICK`, :data:`TINY`)."""
    workdir = Path(workdir)
    knee = make_data(workdir / "data_varnet", cfg["data"])
    out = {"benchmark": "varnet", "data": cfg["data"], "machine": common.machine()}
    start = time.perf_counter()
    if "cost" in only:
        out["cost"] = run_cost(knee, cfg["cost"])
    if "quality" in only:
        out["quality"] = run_quality(knee, cfg["quality"], workdir)
    out["seconds"] = time.perf_counter() - start
    return out


def tables(res: dict) -> str:
    parts = []
    if "cost" in res:
        parts.append(cost_table(res["cost"]))
    if "quality" in res:
        parts.append(quality_table(res["quality"], res["data"]))
    return "\n\n".join(parts)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.varnet",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller data, fewer epochs and seeds")
    parser.add_argument("--only", nargs="+", choices=("cost", "quality"), default=("cost", "quality"))
    parser.add_argument("--out", type=Path, default=Path("bench_output"))
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args(argv)
    common.set_threads(args.threads)
    res = run(args.out / ("work_quick" if args.quick else "work"), QUICK if args.quick else FULL,
              args.only)
    res["command"] = "python -m benchmarks.varnet " + shlex.join(argv if argv is not None
                                                                  else sys.argv[1:])
    path = common.write_json(args.out / ("varnet_quick.json" if args.quick else "varnet.json"), res)
    print(tables(res))
    print(f"\n{res['command']}: {res['seconds']:.0f} s; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
