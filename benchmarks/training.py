"""Benchmark 3: time per training epoch with and without growth events.

``DynamicUnetModule`` in a Lightning ``Trainer`` on synthetic single-coil
knee data (fastMRI's ``UnetDataTransform``, random masks). A run that grows
every other epoch and a run that never grows (same seed, same data order)
are run alternately; a Callback reads each epoch's wall time
(``on_train_epoch_start`` -> ``on_train_epoch_end``, the growth step at the
first batch included). The module's growth reports give the seconds spent
in growth itself.

Also holds the Lightning helpers used by the quality study.
"""

import contextlib
import io
import logging
import shutil
import statistics
import time
import warnings
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

#: Data of the training benchmarks (recon_size 64 keeps CPU runs short).
FULL_DATA = {"train": 6, "val": 1, "num_slices": 4, "recon_size": 64}
QUICK_DATA = {"train": 2, "val": 1, "num_slices": 4, "recon_size": 64}
#: Growth recipe shared by benchmarks 3 and 4: 4 high-resolution blocks
#: (both convs), 4 filters each per event, every 2 epochs from epoch 2, at
#: most 4 events.
GROWTH = {"layers_to_grow": ["down_0", "down_1", "up_1", "up_2"], "n_new": 4,
          "growth_interval": 2, "growth_start_epoch": 2, "max_growth_steps": 4}


def quiet_lightning() -> None:
    """Silence Lightning's info lines and the CPU-run warnings."""
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*GPU available but not used.*")
    warnings.filterwarnings("ignore", message=".*exists and is not empty.*")
    warnings.filterwarnings("ignore", category=UserWarning, module="pytorch_lightning")


def make_data(root: Path, spec: dict, seed: int = 0) -> Path:
    """Synthetic single-coil knee data under ``root`` (reused if complete).

    ``spec``: ``train``, ``val``, ``num_slices``, ``recon_size`` and
    optionally ``phantom`` (default ``ellipses``).

    Returns:
        The ``--data_path`` root (``root/knee``).
    """
    from fastmri_growth.data.synthetic import generate_dataset

    knee = Path(root) / "knee"
    marker = Path(root) / "spec.txt"
    want = repr(sorted(spec.items())) + f" seed={seed}"
    if marker.is_file() and marker.read_text() == want:
        return knee
    if marker.is_file():
        # Written by an earlier call with another spec: this benchmark's own
        # scratch data, replaced (a folder without the marker is left alone).
        shutil.rmtree(knee, ignore_errors=True)
        (Path(root) / "fastmri_growth_synth.json").unlink(missing_ok=True)
    generate_dataset(root, challenges=("knee_singlecoil",), splits=("train", "val"),
                     num_volumes={"train": spec["train"], "val": spec["val"]},
                     num_slices=spec["num_slices"], recon_size=spec["recon_size"], seed=seed,
                     overwrite=True, phantom=spec.get("phantom", "ellipses"))
    marker.write_text(want)
    return knee


def data_module(knee: Path, seed: int, batch_size: int = 1):
    """fastMRI's data pipeline: UnetDataTransform, random 4x/8x training masks.

    The training mask's random state is seeded so that every configuration
    trained with the same seed sees the same masks in the same order.
    """
    from fastmri.data.subsample import create_mask_for_mask_type
    from fastmri.data.transforms import UnetDataTransform

    from fastmri_growth.pl_modules.data_module import FastMriDataModule

    mask = create_mask_for_mask_type("random", [0.08, 0.04], [4, 8])
    mask.rng = np.random.RandomState(seed)
    val_mask = create_mask_for_mask_type("random", [0.08, 0.04], [4, 8])
    return FastMriDataModule(
        data_path=knee, challenge="singlecoil",
        train_transform=UnetDataTransform("singlecoil", mask_func=mask, use_seed=False),
        val_transform=UnetDataTransform("singlecoil", mask_func=val_mask, use_seed=True),
        test_transform=UnetDataTransform("singlecoil"),
        use_dataset_cache_file=False, batch_size=batch_size, num_workers=0,
        distributed_sampler=False,
    )


def flops_per_step(unet, side: int) -> int:
    """FLOPs of one forward+backward of ``unet`` on a `(1, 1, side, side)` image."""
    import copy

    from torch.nn import functional as F
    from torch.utils.flop_counter import FlopCounterMode

    m = copy.deepcopy(unet).train()
    x = torch.zeros(1, 1, side, side)
    with FlopCounterMode(display=False) as fc:
        F.l1_loss(m(x), x).backward()
    return int(fc.get_total_flops())


def module_class(count_flops: bool = True):
    """DynamicUnetModule that also counts the seconds (and FLOPs) of growth.

    Args:
        count_flops: Count growth FLOPs (the counter's dispatch overhead then
            adds to the growth seconds, so timing runs turn it off).
    """
    from torch.utils.flop_counter import FlopCounterMode

    from fastmri_growth.pl_modules import DynamicUnetModule, GrowthCallback

    class CountingGrowthCallback(GrowthCallback):
        def grow(self, trainer, pl_module, batches, sites, epoch):
            start = time.perf_counter()
            if not count_flops:
                reports = super().grow(trainer, pl_module, batches, sites, epoch)
                pl_module.growth_seconds += time.perf_counter() - start
                return reports
            with FlopCounterMode(display=False) as fc:
                reports = super().grow(trainer, pl_module, batches, sites, epoch)
            pl_module.growth_seconds += time.perf_counter() - start
            pl_module.growth_flops += int(fc.get_total_flops())
            return reports

    class CountingDynamicUnetModule(DynamicUnetModule):
        growth_callback_class = CountingGrowthCallback
        growth_flops = 0
        growth_seconds = 0.0

    return CountingDynamicUnetModule


def epoch_callback(side: int):
    """A Callback recording each epoch's seconds, batches, params and FLOPs."""
    import pytorch_lightning as pl

    class EpochRecorder(pl.Callback):
        def __init__(self):
            self.epochs: List[dict] = []
            self._start = None
            self._flops_cache: Dict[str, int] = {}

        def on_train_epoch_start(self, trainer, pl_module):
            self._growth_before = getattr(pl_module, "growth_seconds", 0.0)
            self._batches = 0
            self._loss_sum = 0.0
            self._start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self._batches += 1
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            self._loss_sum += float(loss)

        def on_train_epoch_end(self, trainer, pl_module):
            seconds = time.perf_counter() - self._start
            unet = pl_module.unet
            key = repr(unet.get_network_size())
            if key not in self._flops_cache:
                self._flops_cache[key] = flops_per_step(unet, side)
            grew = trainer.current_epoch in pl_module.schedule.state["grown_epochs"]
            self.epochs.append({
                "epoch": trainer.current_epoch, "seconds": seconds, "batches": self._batches,
                "train_loss": self._loss_sum / max(self._batches, 1),
                "grew": grew, "params": unet.num_parameters(),
                "growth_seconds": getattr(pl_module, "growth_seconds", 0.0) - self._growth_before,
                "train_flops": self._flops_cache[key] * self._batches,
            })

    return EpochRecorder()


def fit(module, knee: Path, max_epochs: int, seed: int, side: int, log_dir: Path) -> dict:
    """Train ``module`` with a quiet CPU Trainer; returns per-epoch records."""
    import pytorch_lightning as pl

    quiet_lightning()
    recorder = epoch_callback(side)
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_epochs=max_epochs, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0, callbacks=[recorder],
        default_root_dir=str(log_dir),
    )
    dm = data_module(knee, seed)
    out = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(out), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, datamodule=dm)
    wall = time.perf_counter() - start
    return {"epochs": recorder.epochs, "fit_seconds": wall,
            "train_seconds": sum(e["seconds"] for e in recorder.epochs),
            "growth_seconds": float(getattr(module, "growth_seconds", 0.0)),
            "growth_flops": int(getattr(module, "growth_flops", 0)),
            "train_flops": int(sum(e["train_flops"] for e in recorder.epochs)),
            "final_params": module.unet.num_parameters(),
            "final_widths": module.unet.get_network_size(),
            "log": out.getvalue()}


def build_module(seed: int, chans: int, pools: int, grow: bool, lr: float = 1e-3,
                 count_flops: bool = True, **growth):
    """A (counting) DynamicUnetModule; ``grow=False`` disables growth."""
    import pytorch_lightning as pl

    pl.seed_everything(seed, workers=True, verbose=False)
    cls = module_class(count_flops)
    kwargs = dict(GROWTH, **growth) if grow else {"max_growth_steps": 0}
    return cls(in_chans=1, out_chans=1, chans=chans, num_pool_layers=pools, lr=lr,
               growth_seed=seed, **kwargs)


def run(workdir: Path, quick: bool = False, data: Optional[dict] = None, max_epochs: Optional[int] = None,
        repeats: Optional[int] = None, chans: int = 8, pools: int = 3) -> dict:
    """Epoch times of a growing and a non-growing run, alternated.

    Args:
        workdir: Folder for the data and Lightning's files.
        quick: Smaller data, fewer epochs and repeats.
        data: Data spec (see :data:`FULL_DATA`).
        max_epochs: Epochs per run.
        repeats: Runs per side.
        chans: Starting width.
        pools: Number of pools.

    Returns:
        Per-epoch median seconds of both sides, growth seconds and ratios.
    """
    data = data or (QUICK_DATA if quick else FULL_DATA)
    max_epochs = max_epochs or (4 if quick else 6)
    repeats = repeats or (1 if quick else 3)
    workdir = Path(workdir)
    knee = make_data(workdir / "data_training", data)
    side = data["recon_size"]
    runs = {"growth": [], "no_growth": []}
    for r in range(repeats):
        for name in runs:
            module = build_module(0, chans, pools, grow=(name == "growth"), count_flops=False)
            runs[name].append(fit(module, knee, max_epochs, 0, side, workdir / "lightning"))
    epochs = []
    for e in range(max_epochs):
        g = [run_["epochs"][e] for run_ in runs["growth"]]
        n = [run_["epochs"][e] for run_ in runs["no_growth"]]
        g_s = statistics.median(x["seconds"] for x in g)
        n_s = statistics.median(x["seconds"] for x in n)
        epochs.append({
            "epoch": e, "grew": g[0]["grew"], "params_growth": g[0]["params"],
            "params_no_growth": n[0]["params"], "batches": g[0]["batches"],
            "seconds_growth": g_s, "seconds_no_growth": n_s, "ratio": g_s / n_s,
            "growth_step_seconds": statistics.median(x["growth_seconds"] for x in g),
            "flops_ratio": g[0]["train_flops"] / n[0]["train_flops"],
        })
    for run_list in runs.values():
        for run_ in run_list:
            run_.pop("log", None)
    return {"benchmark": "training", "data": data, "max_epochs": max_epochs, "repeats": repeats,
            "chans": chans, "num_pool_layers": pools, "growth": GROWTH, "epochs": epochs,
            "total_seconds_growth": statistics.median(r_["train_seconds"] for r_ in runs["growth"]),
            "total_seconds_no_growth": statistics.median(r_["train_seconds"] for r_ in runs["no_growth"]),
            "runs": runs}


def table(res: dict) -> str:
    """Markdown table of :func:`run`'s result."""
    d = res["data"]
    g = res["growth"]
    lines = [f"DynamicUnetModule chans {res['chans']}, {res['num_pool_layers']} pools; "
             f"{d['train']} training volumes x {d['num_slices']} slices, {d['recon_size']}x"
             f"{d['recon_size']}, batch 1; growth: {', '.join(g['layers_to_grow'])} (both convs), "
             f"+{g['n_new']} filters every {g['growth_interval']} epochs from epoch "
             f"{g['growth_start_epoch']} (at most {g.get('max_growth_steps')} events); medians of "
             f"{res['repeats']} alternated runs per side.", "",
             "| epoch | grew | params (growing) | s/epoch growing | s/epoch fixed | ratio | "
             "growth step (s) | growth step / epoch |",
             "|---|---|---|---|---|---|---|---|"]
    for e in res["epochs"]:
        frac = e["growth_step_seconds"] / e["seconds_growth"] if e["seconds_growth"] else 0.0
        lines.append(f"| {e['epoch']} | {'yes' if e['grew'] else ''} | {e['params_growth']:,} | "
                     f"{e['seconds_growth']:.2f} | {e['seconds_no_growth']:.2f} | {e['ratio']:.2f} | "
                     f"{e['growth_step_seconds']:.3f} | {frac:.1%} |")
    lines.append(f"| total | | | {res['total_seconds_growth']:.1f} | {res['total_seconds_no_growth']:.1f} | "
                 f"{res['total_seconds_growth'] / res['total_seconds_no_growth']:.2f} | | |")
    return "\n".join(lines)
