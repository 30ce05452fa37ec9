"""Depth benchmark: a VarNet that gains cascades while it trains, against fixed ones, at CPU size.

Every run goes through the user's path, as separate processes: the
dataset is written by ``python -m fastmri_growth.cli.synth`` (multicoil
knee), each network is trained by ``python -m fastmri_growth.cli.train``
(``--model-type varnet`` for the fixed VarNets: fastMRI's
``VarNetModule``; ``--model-type dynamic_varnet --target-cascades N`` for
the growing one) and its ``last.ckpt`` is scored by ``python -m
fastmri_growth.cli.evaluate leaderboard`` (fixed random masks at 4x with
centre 0.08 and 8x with centre 0.04, fastMRI's per-volume SSIM / PSNR /
NMSE, averaged over the validation volumes). Validation is never run
during training (``--limit_val_batches 0``): nothing is tuned or selected
on the validation split.

Configurations (:func:`configs`), each with every seed:

* ``fixed_K`` for K in the regime's sweep (e.g. 1, 2, 4, 6 cascades), all
  trained for the same epochs: whether more cascades help at this size;
* ``grown``: starts with ``start_cascades`` and inserts one cascade every
  ``cascade_interval`` epochs from ``cascade_start_epoch`` until it has
  ``target_cascades`` (each new cascade a copy of the last one, fading in
  over ``cascade_fade_steps`` optimizer steps; widths never change);
* ``fixed_N_equal_flops``: the target number of cascades, trained for the
  epochs whose FLOPs are closest to the growing run's (fewer epochs).

The insertion epochs are spread over the run so that the growing run's
training FLOPs are at most 0.7x those of ``fixed_N`` (the budget of the
goal in issue 21); they were fixed from the FLOP counts, before any run.

Pairing: a seed fixes the initial weights (``--seed``: the growing run and
``fixed_<start>`` start from the same network), the data order and the
training masks (the train command seeds the mask function).

Training FLOPs: one forward+backward of the SSIM loss per training slice
with the cascades of that step (``torch.utils.flop_counter``: convolutions
and matrix products; FFTs and elementwise ops are not counted, as in
:mod:`benchmarks.varnet`); a cascade fading in costs as much as any other.
The cascades of every step come from the checkpoint's depth events (the
step of each insertion), checked against the ``network/cascades`` column of
the run's CSV log. Wall seconds of the train command are indicative (a
shared machine).

Each run is one JSON file under ``<out>/depth_runs/<regime>/`` with its
command lines, the machine and the date; a run whose file exists with the
same flags is not run again, so an interrupted study resumes.

Usage::

    OMP_NUM_THREADS=1 python -m benchmarks.depth --out /work/depth_study   # ~40-60 min, one core
    python -m benchmarks.depth --regime quick                               # minutes
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from . import common

REPO = Path(__file__).resolve().parents[1]
ACCELERATIONS = (4, 8)
CENTER_FRACTIONS = (0.08, 0.04)


@dataclass(frozen=True)
class Regime:
    """Data, architecture and schedule of one study.

    Attributes:
        phantom: ``--phantom`` of the synth command.
        recon_size: Target side (k-space has twice as many rows).
        coils: Coils per file.
        train: Training volumes.
        val: Validation volumes.
        slices: Slices per volume.
        epochs: Epochs of every run but ``fixed_N_equal_flops``.
        pools: Pools of each cascade's U-Net.
        chans: Width of each cascade's U-Net.
        sens_pools: Pools of the sensitivity U-Net.
        sens_chans: Width of the sensitivity U-Net.
        sweep: Cascades of the fixed runs.
        start_cascades: Cascades the growing run starts with.
        target_cascades: Cascades it ends with (N).
        cascade_start_epoch: Its first insertion epoch.
        cascade_interval: Epochs between its insertions.
        cascade_fade_steps: Optimizer steps of each fade.
        seeds: Paired seeds.
        sweep_seeds: Seeds of the sweep's other cascade counts (those that
            are neither the start nor the target); None: ``seeds``.
        lr: Adam learning rate (the VarNet demo's).
    """

    phantom: str
    recon_size: int
    coils: int
    train: int
    val: int
    slices: int
    epochs: int
    pools: int
    chans: int
    sens_pools: int
    sens_chans: int
    sweep: Tuple[int, ...]
    start_cascades: int
    target_cascades: int
    cascade_start_epoch: int
    cascade_interval: int
    cascade_fade_steps: int
    seeds: Tuple[int, ...]
    sweep_seeds: Optional[Tuple[int, ...]] = None
    lr: float = 1e-3

    @property
    def steps_per_epoch(self) -> int:
        """Training steps per epoch (batch 1: one per slice)."""
        return self.train * self.slices


REGIMES: Dict[str, Regime] = {
    # 48x48 textured targets (k-space 96 rows), 4 coils; the demo's 8 cascades
    # of chans 18 and pools 4 scaled down. 36 steps an epoch, 20 epochs (720
    # steps); insertions at epochs 5, 9, 13, 17: 0.69x the training FLOPs of 6
    # cascades (evenly from epoch 4 would be 0.71x). Sized to fit about an
    # hour on one shared core (36 min with the sweep's 1 and 4 cascades at
    # seed 0 only, 50 min with every seed, under a load average of 4-7).
    "full": Regime(phantom="textured", recon_size=48, coils=4, train=6, val=6, slices=6,
                   epochs=20, pools=2, chans=8, sens_pools=2, sens_chans=4, sweep=(1, 2, 4, 6),
                   start_cascades=2, target_cascades=6, cascade_start_epoch=5,
                   cascade_interval=4, cascade_fade_steps=100, seeds=(0, 1, 2)),
    "quick": Regime(phantom="textured", recon_size=32, coils=2, train=2, val=1, slices=4,
                    epochs=6, pools=1, chans=4, sens_pools=1, sens_chans=2, sweep=(1, 2, 4),
                    start_cascades=2, target_cascades=4, cascade_start_epoch=2,
                    cascade_interval=2, cascade_fade_steps=4, seeds=(0,)),
    # The smoke test: every code path once, seconds.
    "tiny": Regime(phantom="ellipses", recon_size=32, coils=2, train=1, val=1, slices=2,
                   epochs=3, pools=1, chans=2, sens_pools=1, sens_chans=2, sweep=(1,),
                   start_cascades=1, target_cascades=3, cascade_start_epoch=1,
                   cascade_interval=1, cascade_fade_steps=3, seeds=(0,)),
}


def grown_name() -> str:
    return "grown"


def equal_name(regime: Regime) -> str:
    return f"fixed_{regime.target_cascades}_equal_flops"


def configs(regime: Regime) -> List[str]:
    """The configurations of ``regime``, in table order."""
    fixed = sorted(set(regime.sweep) | {regime.start_cascades, regime.target_cascades})
    return [f"fixed_{k}" for k in fixed] + [grown_name(), equal_name(regime)]


def seeds_of(regime: Regime, name: str) -> Tuple[int, ...]:
    """The seeds configuration ``name`` runs with."""
    if name.startswith("fixed_") and name != equal_name(regime) and \
            int(name.split("_")[1]) not in (regime.start_cascades, regime.target_cascades):
        return regime.seeds if regime.sweep_seeds is None else regime.sweep_seeds
    return regime.seeds


def label(regime: Regime, name: str, epochs: Optional[int] = None) -> str:
    """Name of a configuration in the tables."""
    if name == grown_name():
        return f"grown {regime.start_cascades} -> {regime.target_cascades} cascades"
    if name == equal_name(regime):
        return (f"fixed {regime.target_cascades} cascades, equal FLOPs"
                + (f" ({epochs} epochs)" if epochs is not None else ""))
    return f"fixed {int(name.split('_')[1])} cascades"


# --------------------------------------------------------------------------- subprocesses


def _env(threads: int) -> Dict[str, str]:
    """This checkout first on the path; ``threads`` OpenMP threads."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["OMP_NUM_THREADS"] = str(threads)
    env["MKL_NUM_THREADS"] = str(threads)
    return env


def _command(module: str, args: Sequence[str]) -> List[str]:
    return [sys.executable, "-m", module, *map(str, args)]


def _run(cmd: List[str], log_file: Path, threads: int) -> float:
    """Run ``cmd``, its output appended to ``log_file``; returns wall seconds.

    Raises:
        RuntimeError: the command failed, with the tail of its output.
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log_file, "a") as log:
        log.write(f"$ {shlex.join(cmd)}\n")
        log.flush()
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=_env(threads),
                              cwd=str(log_file.parent))
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        tail = log_file.read_text().splitlines()[-15:]
        raise RuntimeError(f"exit status {proc.returncode} of {shlex.join(cmd)}; "
                           "last lines of " + str(log_file) + ":\n" + "\n".join(tail))
    return seconds


def run_in_process(cmd: List[str], log_file: Path, threads: int) -> float:
    """:func:`_run` without the process boundary: the command's ``main`` called here.

    The same parsing, checks and code as the subprocess, minus Python's start
    and the imports (for the smoke test); ``threads`` is ignored (the
    caller's torch threads apply).
    """
    import contextlib
    import importlib
    import io

    assert cmd[1] == "-m", cmd
    main_fn = importlib.import_module(cmd[2]).main
    log_file.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    buf = io.StringIO()
    with contextlib.chdir(log_file.parent), contextlib.redirect_stdout(buf), \
            contextlib.redirect_stderr(buf):
        try:
            code = main_fn(cmd[3:])
        except SystemExit as exc:  # argparse errors
            code = exc.code
    with open(log_file, "a") as log:
        log.write(f"$ {shlex.join(cmd)}\n{buf.getvalue()}")
    if code:
        raise RuntimeError(f"exit status {code} of {shlex.join(cmd)}:\n"
                           + "\n".join(buf.getvalue().splitlines()[-15:]))
    return time.perf_counter() - start


# --------------------------------------------------------------------------- data


def synth_args(regime: Regime, root: Path) -> List[str]:
    """The synth command's flags for ``regime``'s dataset under ``root``."""
    return ["--out", str(root), "--challenges", "knee_multicoil", "--splits", "train", "val",
            "--num-volumes", f"train={regime.train},val={regime.val}",
            "--num-slices", str(regime.slices), "--recon-size", str(regime.recon_size),
            "--num-coils", str(regime.coils), "--phantom", regime.phantom, "--seed", "0",
            "--overwrite"]


def make_data(root: Path, regime: Regime, threads: int = 1) -> Path:
    """The regime's dataset under ``root`` (reused when its record matches); returns ``root/knee``."""
    root = Path(root)
    marker = root / "depth_spec.json"
    args = synth_args(regime, root)
    if not (marker.is_file() and json.loads(marker.read_text()) == args):
        root.mkdir(parents=True, exist_ok=True)
        _run(_command("fastmri_growth.cli.synth", args), root.parent / f"{root.name}.log",
             threads)
        marker.write_text(json.dumps(args))
    return root / "knee"


# --------------------------------------------------------------------------- FLOPs


def flops_per_step(regime: Regime, cascades: int, knee: Path) -> int:
    """FLOPs of one training step's forward+backward (SSIM loss) with ``cascades`` cascades.

    On the first training slice under a random 4x mask; the mask and the
    weights do not change the count.
    """
    import fastmri
    import torch
    from fastmri.data import SliceDataset
    from fastmri.data.subsample import RandomMaskFunc
    from fastmri.data.transforms import VarNetDataTransform, center_crop_to_smallest
    from torch.utils.flop_counter import FlopCounterMode

    from fastmri_growth.models import DynamicVarNet

    ds = SliceDataset(Path(knee) / "multicoil_train", challenge="multicoil",
                      use_dataset_cache=False,
                      transform=VarNetDataTransform(RandomMaskFunc([0.08], [4]), use_seed=True))
    batch = torch.utils.data.default_collate([ds[0]])
    net = DynamicVarNet(cascades, regime.sens_chans, regime.sens_pools, regime.chans,
                        regime.pools).train()
    ssim = fastmri.SSIMLoss()
    with FlopCounterMode(display=False) as fc:
        out = net(batch.masked_kspace, batch.mask, batch.num_low_frequencies)
        target, out = center_crop_to_smallest(batch.target, out)
        ssim(out.unsqueeze(1), target.unsqueeze(1), data_range=batch.max_value).backward()
    return int(fc.get_total_flops())


def planned_cascades(regime: Regime) -> List[int]:
    """Cascades of the growing run in each epoch (all insertions at an epoch's first batch)."""
    from fastmri_growth.growth.depth import DepthSchedule

    sched = DepthSchedule(target=regime.target_cascades, interval=regime.cascade_interval,
                          start_epoch=regime.cascade_start_epoch,
                          fade_steps=regime.cascade_fade_steps)
    inserts = sched.planned_epochs(regime.start_cascades, 0, regime.epochs)
    return [regime.start_cascades + sum(e <= epoch for e in inserts)
            for epoch in range(regime.epochs)]


def equal_flops_epochs(regime: Regime, flops: Callable[[int], int]) -> int:
    """Epochs of the target VarNet whose FLOPs are closest to the growing run's planned FLOPs."""
    grown = sum(flops(k) for k in planned_cascades(regime))
    return max(1, round(grown / flops(regime.target_cascades)))


def cascades_per_step(start: int, events: Sequence[dict], steps: int) -> List[int]:
    """Cascades in each of ``steps`` training steps, from the depth events' steps.

    A cascade inserted at global step ``s0`` (before the step) takes part in
    step ``s0`` and every later one.
    """
    out = []
    for s in range(steps):
        out.append(start + sum(len(e["cascades"]) for e in events if e["step"] <= s))
    return out


# --------------------------------------------------------------------------- one run


def train_flags(regime: Regime, name: str, seed: int, epochs: int) -> List[str]:
    """The train command's flags of one run (without the paths)."""
    grown = name == grown_name()
    cascades = regime.start_cascades if grown else (
        regime.target_cascades if name == equal_name(regime) else int(name.split("_")[1]))
    flags = [
        "--model-type", "dynamic_varnet" if grown else "varnet", "--challenge", "multicoil",
        "--num_cascades", str(cascades), "--pools", str(regime.pools),
        "--chans", str(regime.chans), "--sens_pools", str(regime.sens_pools),
        "--sens_chans", str(regime.sens_chans), "--lr", str(regime.lr),
        "--mask_type", "random", "--center_fractions", "0.08", "0.04",
        "--accelerations", "4", "8", "--batch_size", "1", "--max_epochs", str(epochs),
        "--seed", str(seed), "--num_workers", "0", "--accelerator", "cpu", "--devices", "1",
        "--limit_val_batches", "0", "--num_sanity_val_steps", "0",
        "--enable_progress_bar", "false", "--use_dataset_cache_file", "false",
    ]
    if grown:
        flags += ["--target-cascades", str(regime.target_cascades),
                  "--cascade-start-epoch", str(regime.cascade_start_epoch),
                  "--cascade-interval", str(regime.cascade_interval),
                  "--cascade-fade-steps", str(regime.cascade_fade_steps),
                  "--max-growth-steps", "0"]  # depth only: the widths stay
    return flags


def eval_flags(ckpt: Path, val_dir: Path, out: Path, json_file: Path) -> List[str]:
    return ["leaderboard", "--checkpoint", str(ckpt), "--data-path", str(val_dir),
            "--challenge", "multicoil", "--out", str(out), "--mask-type", "random",
            "--accelerations", *map(str, ACCELERATIONS),
            "--center-fractions", *map(str, CENTER_FRACTIONS), "--json", str(json_file)]


def csv_cascades(run_root: Path) -> List[int]:
    """``network/cascades`` of each epoch from the run's CSV log (empty: none logged)."""
    files = sorted(Path(run_root).glob("csv_logs/version_*/metrics.csv"))
    if not files:
        return []
    out = []
    with open(files[-1], newline="") as f:
        for row in csv.DictReader(f):
            if row.get("network/cascades"):
                out.append(int(float(row["network/cascades"])))
    return out


def run_one(regime_name: str, regime: Regime, name: str, seed: int, epochs: int, knee: Path,
            work: Path, flops: Callable[[int], int], threads: int = 1) -> dict:
    """Train one configuration with one seed, score it, and return its record."""
    import torch

    run_root = Path(work) / f"{name}_s{seed}"
    if run_root.exists():
        shutil.rmtree(run_root)  # an interrupted attempt: start clean (no resume)
    run_root.mkdir(parents=True)
    log = run_root / "commands.log"
    flags = train_flags(regime, name, seed, epochs)
    train_cmd = _command("fastmri_growth.cli.train",
                         flags + ["--data_path", str(knee), "--default_root_dir", str(run_root)])
    train_seconds = _run(train_cmd, log, threads)
    ckpt_file = run_root / "checkpoints" / "last.ckpt"
    lb_json = run_root / "leaderboard.json"
    eval_cmd = _command("fastmri_growth.cli.evaluate",
                        eval_flags(ckpt_file, knee / "multicoil_val", run_root / "lb", lb_json))
    _run(eval_cmd, log, threads)
    ckpt = torch.load(ckpt_file, map_location="cpu", weights_only=False)
    steps = int(ckpt["global_step"])
    start = int(ckpt["hyper_parameters"]["num_cascades"])
    depth = (ckpt.get("callbacks", {}).get("GrowthCallback") or {}).get("depth") or {}
    events = depth.get("events", [])
    per_step = cascades_per_step(start, events, steps)
    final = len({k.split(".")[2] for k in ckpt["state_dict"] if k.startswith("varnet.cascades.")})
    logged = csv_cascades(run_root)
    results = json.loads(lb_json.read_text())["results"]
    record = {
        "regime": regime_name, "config": name, "seed": seed, "epochs": epochs, "flags": flags,
        "commands": [shlex.join(train_cmd), shlex.join(eval_cmd)], "machine": common.machine(),
        "steps": steps, "start_cascades": start, "final_cascades": final,
        "depth_events": events, "logged_cascades": logged,
        "params": sum(int(v.numel()) for k, v in ckpt["state_dict"].items()
                      if not k.endswith(".gate")),
        "train_flops": sum(flops(k) for k in per_step),
        "train_seconds": train_seconds,
        "metrics": {a: {m: float(r["metrics"][m]["mean"]) for m in ("SSIM", "PSNR", "NMSE")}
                    for a, r in results.items()},
    }
    if logged and per_step:
        spe = steps // max(1, len(logged))
        # The value logged at an epoch's end is the cascades its last step trained.
        expected = [per_step[(e + 1) * spe - 1] for e in range(len(logged))]
        if logged != expected:
            raise RuntimeError(f"{name} seed {seed}: network/cascades logged {logged} but the "
                               f"depth events give {expected}")
    shutil.rmtree(run_root, ignore_errors=True)
    return record


# --------------------------------------------------------------------------- the study


def run(out: Path, regime_name: str = "full", only: Optional[Sequence[str]] = None,
        threads: int = 1, log: Callable[[str], None] = print) -> dict:
    """Every run of the study without an up-to-date record, then the aggregate.

    Args:
        out: Output folder (records under ``out/depth_runs/<regime>``, scratch
            under ``out/work_depth``).
        regime_name: A key of :data:`REGIMES`.
        only: Subset of the configurations (default: all).
        threads: Threads of each command.
        log: Progress printer.

    Returns:
        ``{"regime", "regime_name", "flops_per_step", "equal_epochs", "runs"}``.
    """
    if regime_name not in REGIMES:
        raise ValueError(f"unknown regime {regime_name!r}; valid: {', '.join(REGIMES)}")
    regime = REGIMES[regime_name]
    names = configs(regime)
    bad = [c for c in only or () if c not in names]
    if bad:
        raise ValueError(f"unknown configuration(s) {', '.join(bad)}; valid: {', '.join(names)}")
    out = Path(out)
    work = out / "work_depth" / regime_name
    knee = make_data(work / "data", regime, threads)
    cache: Dict[int, int] = {}

    def flops(k: int) -> int:
        if k not in cache:
            cache[k] = flops_per_step(regime, k, knee)
        return cache[k]

    eq_epochs = equal_flops_epochs(regime, flops)
    records: List[dict] = []
    start = time.perf_counter()
    for seed in regime.seeds:
        for name in names:
            if (only is not None and name not in only) or seed not in seeds_of(regime, name):
                continue
            epochs = eq_epochs if name == equal_name(regime) else regime.epochs
            flags = train_flags(regime, name, seed, epochs)
            path = out / "depth_runs" / regime_name / f"{name}_s{seed}.json"
            if path.is_file():
                old = json.loads(path.read_text())
                if old.get("flags") == flags:
                    records.append(old)
                    continue
            r = run_one(regime_name, regime, name, seed, epochs, knee, work, flops, threads)
            common.write_json(path, r)
            records.append(r)
            m4, m8 = r["metrics"]["4x"], r["metrics"]["8x"]
            log(f"[depth] {name} seed {seed}: SSIM 4x {m4['SSIM']:.4f} 8x {m8['SSIM']:.4f}, "
                f"PSNR 4x {m4['PSNR']:.2f} 8x {m8['PSNR']:.2f}, {r['final_cascades']} cascades, "
                f"{r['train_flops'] / 1e12:.3f} TFLOPs, {r['train_seconds']:.0f} s "
                f"({time.perf_counter() - start:.0f} s elapsed)")
    return {"regime_name": regime_name, "regime": asdict(regime),
            "flops_per_step": {str(k): v for k, v in sorted(cache.items())},
            "equal_epochs": eq_epochs, "planned_cascades": planned_cascades(regime),
            "runs": records}


def _fmt(values: Sequence[float], spec: str) -> str:
    mean = statistics.mean(values)
    if len(values) == 1:
        return f"{mean:{spec}}"
    return f"{mean:{spec}} [{min(values):{spec}}, {max(values):{spec}}]"


def table(res: dict) -> str:
    """Markdown: the sweep and the growth comparison, paired differences, the goals."""
    reg = Regime(**{k: tuple(v) if isinstance(v, list) else v
                    for k, v in res["regime"].items()})
    runs = res["runs"]
    by = {(r["config"], r["seed"]): r for r in runs}
    seeds = sorted({r["seed"] for r in runs})
    fixed_n = f"fixed_{reg.target_cascades}"
    ref_flops = [r["train_flops"] for r in runs if r["config"] == fixed_n]
    ref = statistics.mean(ref_flops) if ref_flops else None
    lines = [
        f"{reg.train} training volumes x {reg.slices} slices of {reg.phantom} phantoms "
        f"({reg.coils} coils, k-space {2 * reg.recon_size} rows, {reg.recon_size}x"
        f"{reg.recon_size} targets), batch 1, Adam {reg.lr:g}, random 4x/8x training masks; "
        f"cascade U-Nets chans {reg.chans} / pools {reg.pools}, sensitivity U-Net chans "
        f"{reg.sens_chans} / pools {reg.sens_pools}; {reg.epochs} epochs "
        f"({reg.epochs * reg.steps_per_epoch} steps) unless stated; growing run: "
        f"{reg.start_cascades} -> {reg.target_cascades} cascades, one inserted at epochs "
        f"{', '.join(str(e) for e in _insert_epochs(res))} (fade {reg.cascade_fade_steps} "
        f"steps). Validation: {reg.val} volumes under fixed random masks. Mean over the seeds "
        f"({', '.join(map(str, seeds))}) [per-seed range].", "",
        "| configuration | seeds | cascades at the end | params | training GFLOPs | FLOPs / "
        f"fixed {reg.target_cascades} | train s | SSIM 4x | SSIM 8x | PSNR 4x | PSNR 8x |",
        "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in configs(reg):
        rs = [r for r in runs if r["config"] == name]
        if not rs:
            continue
        fl = statistics.mean(r["train_flops"] for r in rs)
        lines.append(
            f"| {label(reg, name, rs[0]['epochs'])} | {len(rs)} | {rs[0]['final_cascades']} | "
            f"{rs[0]['params']:,} | {fl / 1e9:.3g} | "
            f"{'' if ref is None else f'{fl / ref:.2f}'} | "
            f"{statistics.mean(r['train_seconds'] for r in rs):.0f} | "
            f"{_fmt([r['metrics']['4x']['SSIM'] for r in rs], '.4f')} | "
            f"{_fmt([r['metrics']['8x']['SSIM'] for r in rs], '.4f')} | "
            f"{_fmt([r['metrics']['4x']['PSNR'] for r in rs], '.2f')} | "
            f"{_fmt([r['metrics']['8x']['PSNR'] for r in rs], '.2f')} |")
    lines += ["", "Paired by seed: difference, mean over seeds and seeds where it is positive.",
              "", "| comparison | SSIM 4x | SSIM 8x | PSNR 4x | PSNR 8x |", "|---|---|---|---|---|"]
    fixed = [n for n in configs(reg) if n.startswith("fixed_") and n != equal_name(reg)]
    pairs = [(grown_name(), fixed_n), (grown_name(), equal_name(reg))]
    pairs += [(grown_name(), n) for n in reversed(fixed) if n != fixed_n]
    sweep = sorted(reg.sweep)
    pairs += [(f"fixed_{b}", f"fixed_{a}") for a, b in zip(sweep, sweep[1:])]
    diffs = {}
    for a, b in pairs:
        common_seeds = [s for s in seeds if (a, s) in by and (b, s) in by]
        if not common_seeds:
            continue
        cells = []
        for metric, spec in (("SSIM", "+.4f"), ("PSNR", "+.2f")):
            for acc in ("4x", "8x"):
                d = [by[(a, s)]["metrics"][acc][metric] - by[(b, s)]["metrics"][acc][metric]
                     for s in common_seeds]
                diffs[(a, b, acc, metric)] = d
                cells.append(f"{statistics.mean(d):{spec}} ({sum(x > 0 for x in d)}/{len(d)})")
        lines.append(f"| {label(reg, a)} - {label(reg, b)} | " + " | ".join(cells) + " |")
    goals = _goals(reg, runs, diffs, ref)
    if goals:
        lines += ["", *goals]
    return "\n".join(lines)


def _insert_epochs(res: dict) -> List[int]:
    ks = res["planned_cascades"]
    return [e for e in range(1, len(ks)) if ks[e] > ks[e - 1]]


def _goals(reg: Regime, runs: List[dict], diffs: dict, ref: Optional[float]) -> List[str]:
    g, fn, eq = grown_name(), f"fixed_{reg.target_cascades}", equal_name(reg)
    grown = [r["train_flops"] for r in runs if r["config"] == g]
    if not grown or ref is None:
        return []
    ratio = statistics.mean(grown) / ref
    out = []
    if all((g, fn, a, "SSIM") in diffs for a in ("4x", "8x")):
        worst = min(statistics.mean(diffs[(g, fn, a, "SSIM")]) for a in ("4x", "8x"))
        ok = worst >= -0.002 and ratio <= 0.7
        out.append(f"Goal 1 (within 0.002 SSIM of fixed {reg.target_cascades} at <= 0.7x its "
                   f"training FLOPs): {'met' if ok else 'NOT met'}: FLOPs ratio {ratio:.2f}, "
                   f"mean SSIM difference {worst:+.4f} at the worse acceleration.")
    if all((g, eq, a, "SSIM") in diffs for a in ("4x", "8x")):
        ds = [statistics.mean(diffs[(g, eq, a, "SSIM")]) for a in ("4x", "8x")]
        ok = all(d > 0 for d in ds)
        out.append(f"Goal 2 (better than fixed {reg.target_cascades} at equal FLOPs): "
                   f"{'met' if ok else 'NOT met'}: mean SSIM difference {ds[0]:+.4f} (4x), "
                   f"{ds[1]:+.4f} (8x).")
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.depth",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--regime", choices=list(REGIMES), default="full",
                        help="full: the study; quick: minutes; tiny: the smoke test's")
    parser.add_argument("--configs", nargs="+", default=None,
                        help="subset of the configurations (default: all)")
    parser.add_argument("--threads", type=int, default=1, help="threads per command")
    parser.add_argument("--out", type=Path, default=Path("bench_output"))
    parser.add_argument("--tables-only", action="store_true",
                        help="print the tables of <out>/depth_<regime>.json; train nothing")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    if args.tables_only:
        path = args.out / f"depth_{args.regime}.json"
        if not path.is_file():
            parser.error(f"--tables-only needs {path}; run the study first")
        print(table(json.loads(path.read_text())))
        return 0
    common.set_threads(args.threads)
    command = "python -m benchmarks.depth " + shlex.join(
        list(sys.argv[1:] if argv is None else argv))
    start = time.perf_counter()
    try:
        res = run(args.out, args.regime, args.configs, args.threads)
    except ValueError as err:
        parser.error(str(err))
    res["command"] = command.strip()
    res["machine"] = common.machine()
    res["seconds"] = time.perf_counter() - start
    path = common.write_json(args.out / f"depth_{args.regime}.json", res)
    print(table(res))
    print(f"\n{res['command']}: {res['seconds']:.0f} s; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
