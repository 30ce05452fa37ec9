"""Benchmark 4: what growth buys, in a regime where capacity is the bottleneck.

Every run goes through the path a user runs: the training command's own
parser and checks (``fastmri_growth.cli.train_parser.parse_args`` and
``train_checks.validate_args`` on the flags listed per configuration below), the
``DynamicUnetModule`` they build, fastMRI's data module and transforms, and a
Lightning ``Trainer``. After training, the network is evaluated on the
validation split as the leaderboard does (fixed masks at 4x with centre
0.08 and 8x with centre 0.04; fastMRI's per-volume SSIM, PSNR and NMSE with
the volume's max as data range, averaged over volumes) and by the object
SSIM (:func:`object_metrics`). Validation is never run during training:
nothing is tuned or selected on the validation split.

Regimes (:data:`REGIMES`): 96x96 textured phantoms (40 training volumes x 8
slices = 320 slices, 20 validation volumes), and brain anatomy at 128x128 (the
same counts); U-Net with 3 pools, batch 4, 19 epochs (1,520 steps), fastMRI's
recipe (RMSprop lr 1e-3, L1 loss, random 4x/8x training masks), at which a
fixed chans-4 U-Net is clearly worse than a fixed chans-8 one.

Configurations (:data:`CONFIGS`): fixed widths (chans 2, 3, 4, 6, 8: the
capacity sweep and the Pareto front); networks that start at chans 4 and grow
to chans-8 widths with the ``budget`` schedule (events at epochs 1, 3, 5 and
7), by ``sample_select``, ``random`` or ``gradmax``, each with zero fan-out
and with ``descent``, on all sites or on the 4 best sites per event (auto),
without the optimizer treatment (second moments seeded with the mean instead
of the new slices' gradient), and with growth ending early (epoch 3) or late
(epoch 13); a chans-4 network that exchanges filters (each event removes the
8 lowest-scoring filters by Taylor or by magnitude, then grows 8 at the 4
best sites); chans 8 pruned to half its width at epoch 3 (magnitude or
Taylor).

Pairing: a seed fixes the initial weights (the same for every chans-4
configuration), the data order, the training masks (the mask function's
random state is seeded) and the candidates; growth draws its scoring batches
without touching the training stream, so a grown run and ``fixed_c4`` see
the same batches (each run records a digest of every epoch's inputs, and the
study reports whether the pairs match).

Per run: per-step training loss, per-epoch widths, parameters and FLOPs
(``torch.utils.flop_counter``: convolutions and matrix products of one
forward+backward per training slice at that epoch's widths, plus everything
growth and pruning computed), wall seconds, growth and pruning events, and
the validation metrics. Each run is one JSON file under
``<out>/quality_runs/<regime>/`` with the command, the machine and the date;
a run whose file exists with the same flags is not run again, so an
interrupted study resumes (after a change to the code, delete the records of
the configurations it affects). Tables, goals and plots:
:mod:`.quality_report`.

Usage::

    python -m benchmarks.quality --jobs 2            # the study (resumable)
    python -m benchmarks.quality --quick             # minutes, same code path
    python -m benchmarks.run_all --only quality      # the same, inside make bench
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import io
import json
import shlex
import shutil
import sys
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from . import common

ACCELERATIONS = (4, 8)
CENTER_FRACTIONS = (0.08, 0.04)
#: A pixel belongs to the object where the target exceeds this fraction of
#: the volume's max (holes filled); the synthetic backgrounds sit at 1-3%.
OBJECT_THRESHOLD = 0.1
#: Metrics per acceleration in every run (see :func:`object_metrics`).
METRICS = ("SSIM", "SSIM_object", "PSNR", "NMSE", "background_offset")


@dataclass(frozen=True)
class Regime:
    """The data and training length of one part of the study.

    Attributes:
        phantom: ``fastmri-growth-synth --phantom``.
        recon_size: Image side.
        train: Training volumes.
        val: Validation volumes.
        slices: Slices per volume.
        batch: Batch size.
        epochs: Training epochs.
        pools: U-Net pools.
        start_chans: Width the grown runs start at.
        target_chans: Width they grow to (the budget schedule's target).
        timings: ``name -> (start, end, interval)`` of the budget schedule.
        prune_epoch: Epoch at which the pruned-large runs are pruned.
        seeds_decide: Seeds of the comparisons that decide the goals.
        seeds_other: Seeds of the other comparisons.
        configs: The configurations run in this regime.
    """

    phantom: str
    recon_size: int
    train: int
    val: int
    slices: int
    batch: int
    epochs: int
    pools: int
    start_chans: int
    target_chans: int
    timings: Dict[str, Tuple[int, int, int]]
    prune_epoch: int
    seeds_decide: Tuple[int, ...]
    seeds_other: Tuple[int, ...]
    configs: Tuple[str, ...]

    @property
    def steps_per_epoch(self) -> int:
        return -(-self.train * self.slices // self.batch)


@dataclass(frozen=True)
class Config:
    """One configuration: its width, growth timing and extra training flags.

    Attributes:
        label: Name in tables and plots.
        chans: Start width; ``None``: the regime's start width.
        timing: Budget-schedule timing name (``None``: no budget growth).
        flags: Extra command-line flags; ``{prune_epoch}`` is filled in.
        decide: Run with the regime's deciding seeds (else the other seeds).
        group: ``fixed``, ``grown``, ``exchange`` or ``pruned`` (plots).
    """

    label: str
    chans: Optional[int] = None
    timing: Optional[str] = None
    flags: Tuple[str, ...] = ()
    decide: bool = False
    group: str = "grown"


def _grown(label: str, method: str, *extra: str, decide: bool = False,
           timing: str = "middle") -> Config:
    return Config(label, timing=timing, flags=("--growth_method", method) + extra, decide=decide)


#: Exchange at constant size: every other epoch from 1 (4 events), remove the
#: 8 lowest-scoring filters, then grow 2 filters at each of the 4 best sites.
_EXCHANGE = ("--growth_method", "sample_select", "--growth_schedule", "interval",
             "--growth_start_epoch", "1", "--growth_interval", "2", "--max_growth_steps", "4",
             "--auto_sites", "4", "--n_new", "2", "--prune_schedule", "exchange")

#: name -> configuration. Fixed widths first, then the grown runs.
CONFIGS: Dict[str, Config] = {
    "fixed_c2": Config("fixed chans 2", chans=2, group="fixed"),
    "fixed_c3": Config("fixed chans 3", chans=3, group="fixed"),
    "fixed_c4": Config("fixed chans 4", chans=4, group="fixed", decide=True),
    "fixed_c6": Config("fixed chans 6", chans=6, group="fixed"),
    "fixed_c8": Config("fixed chans 8", chans=8, group="fixed", decide=True),
    "sample_select": _grown("sample_select", "sample_select", decide=True),
    "random": _grown("random", "random", decide=True),
    "gradmax": _grown("gradmax", "gradmax", decide=True),
    "sample_select_descent": _grown("sample_select, descent", "sample_select",
                                    "--fan_out_init", "descent", decide=True),
    "sample_select_opt": _grown("sample_select, optimizer score", "sample_select",
                                "--candidate_score", "optimizer", decide=True),
    # The auto schedule from chans 4 with no target: it decides when to stop.
    "auto": Config("auto schedule (no target)", flags=(
        "--growth_method", "sample_select", "--candidate_score", "optimizer",
        "--growth_schedule", "auto", "--growth_start_epoch", "1", "--growth_interval", "2")),
    "auto_random": Config("auto schedule (no target), random filters", flags=(
        "--growth_method", "random", "--growth_schedule", "auto", "--growth_start_epoch", "1",
        "--growth_interval", "2")),
    "random_descent": _grown("random, descent", "random", "--fan_out_init", "descent",
                             decide=True),
    "gradmax_descent": _grown("gradmax, descent", "gradmax", "--fan_out_init", "descent",
                              decide=True),
    "auto_sites": _grown("sample_select, auto sites (4)", "sample_select", "--auto_sites", "4"),
    "no_seeding": _grown("sample_select, no optimizer treatment", "sample_select",
                         "--optimizer_seeding", "mean", "--new_filter_ramp_steps", "0"),
    "no_ramp": _grown("sample_select, grad seeding, no ramp", "sample_select",
                      "--new_filter_ramp_steps", "0", decide=True),
    "moment_seeding": _grown("sample_select, moment seeding", "sample_select",
                             "--optimizer_seeding", "moment"),
    # Diagnostic of the loss bump: instead of the ramp, new weights at 0.3x
    # the learning rate for the event's epoch (80 steps).
    "slow_new": _grown("sample_select, new weights at 0.3 lr, no ramp", "sample_select",
                       "--new_filter_lr_scale", "0.3", "--new_filter_ramp_steps", "0"),
    "early": _grown("sample_select, growth ends early", "sample_select", timing="early"),
    "late": _grown("sample_select, growth ends late", "sample_select", timing="late"),
    "exchange": Config("exchange at chans 4 (taylor)", group="exchange",
                       flags=_EXCHANGE + ("--prune_criterion", "taylor")),
    "exchange_magnitude": Config("exchange at chans 4 (magnitude)", group="exchange",
                                 flags=_EXCHANGE + ("--prune_criterion", "magnitude")),
    "pruned_magnitude": Config("chans 8 pruned by half (magnitude)", chans=8, group="pruned",
                               flags=("--max_growth_steps", "0", "--prune_schedule", "epochs",
                                      "--prune_epochs", "{prune_epoch}", "--prune_fraction", "0.5",
                                      "--prune_criterion", "magnitude")),
    "pruned_taylor": Config("chans 8 pruned by half (taylor)", chans=8, group="pruned",
                            flags=("--max_growth_steps", "0", "--prune_schedule", "epochs",
                                   "--prune_epochs", "{prune_epoch}", "--prune_fraction", "0.5",
                                   "--prune_criterion", "taylor")),
}

_TIMINGS = {"early": (1, 3, 1), "middle": (1, 7, 2), "late": (1, 13, 4)}
REGIMES: Dict[str, Regime] = {
    "textured96": Regime(
        phantom="textured", recon_size=96, train=40, val=20, slices=8, batch=4, epochs=19,
        pools=3, start_chans=4, target_chans=8, timings=_TIMINGS, prune_epoch=3,
        seeds_decide=(0, 1, 2, 3, 4), seeds_other=(0, 1, 2), configs=tuple(CONFIGS)),
    "anatomy128": Regime(
        phantom="anatomy", recon_size=128, train=40, val=20, slices=8, batch=4, epochs=19,
        pools=3, start_chans=4, target_chans=8, timings=_TIMINGS, prune_epoch=3,
        seeds_decide=(0, 1, 2, 3, 4), seeds_other=(0, 1, 2),
        configs=("fixed_c4", "fixed_c8", "sample_select", "random", "sample_select_descent")),
}
#: ``--quick``: the same configurations and code path on tiny data.
QUICK_REGIMES: Dict[str, Regime] = {
    "textured_quick": Regime(
        phantom="textured", recon_size=32, train=2, val=1, slices=4, batch=2, epochs=4,
        pools=2, start_chans=2, target_chans=4,
        timings={"early": (1, 1, 1), "middle": (1, 2, 1), "late": (1, 3, 2)}, prune_epoch=1,
        seeds_decide=(0, 1), seeds_other=(0,),
        configs=("fixed_c2", "fixed_c4", "sample_select", "random", "sample_select_descent",
                 "early", "late", "exchange", "pruned_taylor")),
    "anatomy_quick": Regime(
        phantom="anatomy", recon_size=32, train=2, val=1, slices=4, batch=2, epochs=3,
        pools=2, start_chans=2, target_chans=4,
        timings={"middle": (1, 2, 1)}, prune_epoch=1, seeds_decide=(0,), seeds_other=(0,),
        configs=("fixed_c2", "fixed_c4", "sample_select")),
}
# In the quick regimes fixed_c2 / fixed_c4 play the small / large roles.
QUICK_ROLES = {"small": "fixed_c2", "large": "fixed_c4"}
ROLES = {"small": "fixed_c4", "large": "fixed_c8"}


def roles(quick: bool) -> Dict[str, str]:
    """Which fixed configurations are 'fixed small' and 'fixed large'."""
    return QUICK_ROLES if quick else ROLES


def config_chans(regime: Regime, name: str, quick: bool) -> int:
    """The start width of configuration ``name`` in ``regime``."""
    cfg = CONFIGS[name]
    if cfg.chans is None:
        return regime.start_chans
    if quick:  # the quick regimes' widths: 2 (small) and 4 (large)
        return 2 if cfg.chans <= 3 else 4
    return cfg.chans


def seeds_of(regime: Regime, name: str) -> Tuple[int, ...]:
    return regime.seeds_decide if CONFIGS[name].decide else regime.seeds_other


def flags_of(regime: Regime, name: str, seed: int, quick: bool = False) -> List[str]:
    """The training command's flags of one run (without the paths)."""
    cfg = CONFIGS[name]
    flags = [
        "--model-type", "dynamic_unet", "--challenge", "singlecoil",
        "--chans", str(config_chans(regime, name, quick)),
        "--num_pool_layers", str(regime.pools), "--drop_prob", "0.0", "--lr", "0.001",
        "--batch_size", str(regime.batch), "--max_epochs", str(regime.epochs),
        "--seed", str(seed), "--growth_seed", str(seed),
        "--mask_type", "random", "--center_fractions", "0.08", "0.04",
        "--accelerations", "4", "8", "--num_workers", "0",
    ]
    if cfg.timing is not None:
        start, end, interval = regime.timings[cfg.timing]
        flags += ["--growth_schedule", "budget", "--target_chans", str(regime.target_chans),
                  "--growth_start_epoch", str(start), "--growth_end_epoch", str(end),
                  "--growth_interval", str(interval)]
    elif cfg.group == "fixed":
        flags += ["--max_growth_steps", "0"]
    flags += [f.format(prune_epoch=regime.prune_epoch) for f in cfg.flags]
    return flags


# --------------------------------------------------------------------------- metrics


def object_metrics(recon_dir: Path, target_dir: Path,
                   threshold: float = OBJECT_THRESHOLD) -> Dict[str, float]:
    """SSIM over the object only, and the reconstruction's background offset.

    The SSIM map is fastMRI's (``skimage.metrics.structural_similarity``,
    7x7 window, data range = the volume's max); its mean is taken over the
    pixels where the target exceeds ``threshold`` times the volume's max
    (holes filled, so dark structures inside the object count) instead of
    over the whole image. Per-slice values are averaged per volume, then
    over volumes, as fastMRI's evaluation does.

    Why: about half of every synthetic image is background whose target is
    noise at 1-3% of the volume's max. There SSIM's luminance term
    ``(2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1)``, with
    ``C1 = (0.01 * max)^2``, drops to 0.1-0.4 when the reconstruction's
    background mean is zero and below zero when it is negative, however
    small the error, so whole-image SSIM measures the sign of a tiny
    background offset that differs by seed, not the reconstruction.

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
            vol_off.append(float((pr[~obj] - gt[~obj]).mean() / maxval) if (~obj).any() else 0.0)
        ssims.append(np.mean(vol_ssim))
        offsets.append(np.mean(vol_off))
    if not ssims:
        raise ValueError(f"no reconstruction files in {recon_dir}")
    return {"SSIM_object": float(np.mean(ssims)), "background_offset": float(np.mean(offsets))}


def evaluate(net: torch.nn.Module, val_dir: Path, out_dir: Path) -> Dict[str, Dict[str, float]]:
    """Leaderboard validation at 4x and 8x plus the object metrics.

    Args:
        net: An image network ``(N, 1, H, W) -> (N, 1, H, W)`` (or ``Identity``:
            the zero-filled input).
        val_dir: The validation split folder.
        out_dir: Where the reconstructions go.

    Returns:
        ``{"4x": {metric: value}, "8x": {...}}`` with :data:`METRICS`.
    """
    from fastmri_growth.evaluation.inference import leaderboard_validation

    net.eval()
    with torch.no_grad():
        res = leaderboard_validation(net, val_dir, "singlecoil", out_dir,
                                     accelerations=ACCELERATIONS, center_fractions=CENTER_FRACTIONS,
                                     mask_type="random", num_workers=0, progress=False)
    return {f"{a}x": {**{m: float(r["metrics"][m]["mean"]) for m in ("SSIM", "PSNR", "NMSE")},
                      **object_metrics(r["reconstructions"], val_dir)}
            for a, r in res.items()}


# --------------------------------------------------------------------------- one run


def flops_per_sample(net: torch.nn.Module, side: int) -> int:
    """FLOPs of one forward+backward of ``net`` on a ``(1, 1, side, side)`` image."""
    import copy

    from torch.nn import functional as F
    from torch.utils.flop_counter import FlopCounterMode

    m = copy.deepcopy(net).train()
    x = torch.zeros(1, 1, side, side)
    with FlopCounterMode(display=False) as fc:
        F.l1_loss(m(x), x).backward()
    return int(fc.get_total_flops())


def counting_module_class():
    """``DynamicUnetModule`` whose growth callback counts the FLOPs and seconds of growth and pruning."""
    from torch.utils.flop_counter import FlopCounterMode

    from fastmri_growth.pl_modules import DynamicUnetModule, GrowthCallback

    class CountingGrowthCallback(GrowthCallback):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.flops = {"growth": 0, "prune": 0}
            self.seconds = {"growth": 0.0, "prune": 0.0}
            self.events: List[dict] = []
            self._depth = 0

        def _counted(self, kind: str, epoch: int, fn: Callable, *args, **kwargs):
            # An exchange prunes inside grow(): count only the outer call.
            if self._depth:
                return fn(*args, **kwargs)
            self._depth = 1
            start = time.perf_counter()
            try:
                with FlopCounterMode(display=False) as fc:
                    out = fn(*args, **kwargs)
            finally:
                self._depth = 0
            self.seconds[kind] += time.perf_counter() - start
            self.flops[kind] += int(fc.get_total_flops())
            return out

        def grow(self, trainer, pl_module, batches, sites, epoch):
            reports = self._counted("growth", epoch, super().grow, trainer, pl_module, batches,
                                    sites, epoch)
            self.events += [{"kind": "growth", "epoch": int(epoch),
                             "site": f"{r.layer_idx}:{r.conv_idx}", "filters": int(r.n_added),
                             "loss": float(r.loss), "loss_after": float(r.loss_after)}
                            for r in reports]
            return reports

        def prune_now(self, trainer, pl_module, batches, epoch, total=None):
            reports = self._counted("prune", epoch, super().prune_now, trainer, pl_module,
                                    batches, epoch, total)
            self.events += [{"kind": "prune", "epoch": int(epoch),
                             "site": f"{r.layer_idx}:{r.conv_idx}", "filters": len(r.removed),
                             "loss": float(r.loss_before), "loss_after": float(r.loss_after)}
                            for r in reports]
            return reports

    class CountingDynamicUnetModule(DynamicUnetModule):
        growth_callback_class = CountingGrowthCallback

    return CountingDynamicUnetModule


def step_recorder(side: int):
    """A Callback recording each step's loss and each epoch's widths, FLOPs and input digest."""
    import pytorch_lightning as pl

    class StepRecorder(pl.Callback):
        def __init__(self):
            self.losses: List[float] = []
            self.epochs: List[dict] = []
            self._flops: Dict[str, int] = {}

        def on_train_epoch_start(self, trainer, module):
            self._digest = hashlib.sha1()
            self._samples = 0
            self._start = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            self.losses.append(float(loss))
            self._digest.update(batch.image.detach().cpu().numpy().tobytes())
            self._samples += int(batch.image.shape[0])

        def on_train_epoch_end(self, trainer, module):
            net = module.growable_net()
            size = net.get_network_size()
            key = repr(size)
            if key not in self._flops:
                self._flops[key] = flops_per_sample(net, side)
            self.epochs.append({
                "epoch": trainer.current_epoch, "seconds": time.perf_counter() - self._start,
                "samples": self._samples, "params": int(net.num_parameters()),
                "widths": size, "flops_per_sample": self._flops[key],
                "train_flops": self._flops[key] * self._samples,
                "input_digest": self._digest.hexdigest()[:16]})

    return StepRecorder()


def anytime_evaluator(rec, epochs: Sequence[int], val_dir: Path, work: Path):
    """A Callback evaluating the network (as :func:`evaluate`) at the end of ``epochs``.

    Each point holds the epoch, the cumulative FLOPs so far (training plus
    growth and pruning) and the metrics. The evaluation runs on a copy of
    the network with every random state saved and restored, so the run
    trains exactly as it would without it; with a learning-rate schedule that
    does not depend on ``max_epochs`` (StepLR), a fixed network's point at
    epoch ``e`` is that network trained for ``e + 1`` epochs.
    """
    import copy
    import random

    import numpy as np
    import pytorch_lightning as pl

    class Anytime(pl.Callback):
        def __init__(self):
            self.points: List[dict] = []

        def on_train_epoch_end(self, trainer, module):
            epoch = trainer.current_epoch
            if epoch not in epochs:
                return
            states = (torch.get_rng_state(), np.random.get_state(), random.getstate())
            cb = module.growth_callback
            flops = sum(e["train_flops"] for e in rec.epochs) + cb.flops["growth"] + \
                cb.flops["prune"]
            net = copy.deepcopy(module.growable_net())
            metrics = evaluate(net, val_dir, Path(work) / f"epoch_{epoch}")
            shutil.rmtree(Path(work) / f"epoch_{epoch}", ignore_errors=True)
            torch.set_rng_state(states[0])
            np.random.set_state(states[1])
            random.setstate(states[2])
            self.points.append({"epoch": int(epoch), "total_flops": int(flops),
                                "params": int(net.num_parameters()), "metrics": metrics})

    return Anytime()


def _run_paths(out: Path, regime_name: str, name: str, seed: int) -> Path:
    return Path(out) / "quality_runs" / regime_name / f"{name}_s{seed}.json"


def train_one(spec: dict) -> dict:
    """Train and evaluate one run (in a worker process); writes and returns its record.

    Args:
        spec: ``regime`` (name), ``regime_spec``, ``config``, ``seed``,
            ``flags``, ``data_path``, ``val_dir``, ``work``, ``out_file``,
            ``threads``, ``command``.
    """
    import numpy as np
    import pytorch_lightning as pl

    from fastmri_growth.cli.train_checks import validate_args
    from fastmri_growth.cli.train_parser import model_arg_names, parse_args
    from fastmri_growth.cli.train_setup import build_data_module

    from . import training

    common.set_threads(spec["threads"])
    training.quiet_lightning()
    seed, side = spec["seed"], spec["regime_spec"]["recon_size"]
    scratch = Path(tempfile.mkdtemp(prefix=f"{spec['config']}_s{seed}_", dir=spec["work"]))
    try:
        args = parse_args(spec["flags"] + [
            "--data_path", spec["data_path"], "--default_root_dir", str(scratch / "run")])
        validate_args(args)  # the command's own checks, before anything trains
        cls = counting_module_class()
        pl.seed_everything(seed, verbose=False)  # initial weights
        module = cls(**{n: getattr(args, n) for n in model_arg_names(cls)})
        dm = build_data_module(args, distributed_sampler=False)
        # Seeded training masks: same seed, same masks in the same order.
        dm.train_transform.mask_func.rng = np.random.RandomState(seed)
        pl.seed_everything(seed, verbose=False)  # data order, the same for every width
        rec = step_recorder(side)
        callbacks = [rec]
        if spec.get("anytime_epochs"):
            callbacks.append(anytime_evaluator(rec, spec["anytime_epochs"], Path(spec["val_dir"]),
                                               scratch / "anytime"))
        trainer = pl.Trainer(
            accelerator="cpu", devices=1, max_epochs=args.max_epochs, logger=False,
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            num_sanity_val_steps=0, limit_val_batches=0, deterministic=True, callbacks=callbacks,
            default_root_dir=str(scratch / "run"))
        start = time.perf_counter()
        # The growth callback prints each event; the record keeps them instead.
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(module, datamodule=dm)
        fit_seconds = time.perf_counter() - start
        cb = module.growth_callback
        net = module.growable_net()
        metrics = evaluate(net, Path(spec["val_dir"]), scratch / "recons")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    train_flops = sum(e["train_flops"] for e in rec.epochs)
    record = {
        "regime": spec["regime"], "config": spec["config"], "seed": seed,
        "command": spec["command"], "flags": spec["flags"], "machine": common.machine(),
        "metrics": metrics, "params": int(net.num_parameters()),
        "widths": net.get_network_size(),
        "train_flops": train_flops, "growth_flops": cb.flops["growth"],
        "prune_flops": cb.flops["prune"],
        "total_flops": train_flops + cb.flops["growth"] + cb.flops["prune"],
        "fit_seconds": fit_seconds, "growth_seconds": cb.seconds["growth"],
        "prune_seconds": cb.seconds["prune"],
        "grown_epochs": sorted({e["epoch"] for e in cb.events if e["kind"] == "growth"}),
        "pruned_epochs": sorted({e["epoch"] for e in cb.events if e["kind"] == "prune"}),
        "events": cb.events,
        "epochs": rec.epochs, "losses": [round(x, 6) for x in rec.losses],
        "steps_per_epoch": spec["regime_spec"]["steps_per_epoch"],
        "anytime": callbacks[1].points if len(callbacks) > 1 else [],
        "auto_decisions": copy.deepcopy(cb.schedule.state.get("auto", [])),
    }
    common.write_json(Path(spec["out_file"]), record)
    return record


# --------------------------------------------------------------------------- the study


def make_data(root: Path, regime: Regime) -> Path:
    """The regime's dataset under ``root`` (reused when its record matches).

    Returns:
        The ``--data_path`` root (``root/knee``).
    """
    from fastmri_growth.data.synthetic import generate_dataset

    marker = Path(root) / "quality_spec.json"
    want = json.dumps({k: v for k, v in asdict(regime).items()
                       if k in ("phantom", "recon_size", "train", "val", "slices")}, sort_keys=True)
    if not (marker.is_file() and marker.read_text() == want):
        generate_dataset(root, challenges=("knee_singlecoil",), splits=("train", "val"),
                         num_volumes={"train": regime.train, "val": regime.val},
                         num_slices=regime.slices, recon_size=regime.recon_size, seed=0,
                         overwrite=True, phantom=regime.phantom)
        marker.write_text(want)
    return Path(root) / "knee"


def run_specs(specs: Sequence[dict], fn: Callable[[dict], dict], jobs: int,
              done: Callable[[dict], None]) -> None:
    """``fn(spec)`` for every spec, ``jobs`` at a time, each in a fresh process; ``done`` in order.

    A fresh (spawned) process per run: no run inherits another's threads,
    caches or compiled graphs.
    """
    if jobs <= 1:
        for spec in specs:
            done(fn(spec))
    elif specs:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, max_tasks_per_child=1) as pool:
            for r in pool.map(fn, specs):
                done(r)


def run(out: Path, quick: bool = False, regimes: Optional[Sequence[str]] = None,
        configs: Optional[Sequence[str]] = None, jobs: int = 1, threads: int = 1,
        command: str = "python -m benchmarks.quality", plot_dir: Optional[Path] = None,
        log: Callable[[str], None] = print) -> dict:
    """Every run of the study that has no up-to-date record yet, then the aggregate.

    Args:
        out: Output folder (records under ``out/quality_runs``, scratch under
            ``out/work``).
        quick: The tiny regimes (:data:`QUICK_REGIMES`).
        regimes: Subset of the regimes (default: all).
        configs: Subset of the configurations (default: each regime's).
        jobs: Runs trained at once, each in its own process.
        threads: Torch threads per run.
        command: Recorded in every run's JSON.
        plot_dir: Where the plots go (None: no plots).
        log: Progress printer.

    Returns:
        ``{"regimes", "runs", "quick", "zero_filled", "report", "plots"}``
        (see :func:`benchmarks.quality_report.aggregate`).
    """
    from . import quality_report

    table = QUICK_REGIMES if quick else REGIMES
    names = list(regimes or table)
    bad = [r for r in names if r not in table]
    if bad:
        raise ValueError(f"unknown regime(s) {', '.join(bad)}; valid: {', '.join(table)}")
    bad = [c for c in configs or () if c not in CONFIGS]
    if bad:
        raise ValueError(f"unknown configuration(s) {', '.join(bad)}; valid: {', '.join(CONFIGS)}")
    out = Path(out)
    work = out / ("work_quick" if quick else "work")
    work.mkdir(parents=True, exist_ok=True)
    specs, records, zero_filled = [], [], {}
    for rname in names:
        regime = table[rname]
        knee = make_data(work / f"quality_data_{rname}", regime)
        val_dir = knee / "singlecoil_val"
        zf_dir = Path(tempfile.mkdtemp(dir=work))
        try:
            zero_filled[rname] = evaluate(torch.nn.Identity(), val_dir, zf_dir)
        finally:
            shutil.rmtree(zf_dir, ignore_errors=True)
        chosen = [c for c in regime.configs if configs is None or c in configs]
        for seed in regime.seeds_decide:
            for name in chosen:
                if seed not in seeds_of(regime, name):
                    continue
                flags = flags_of(regime, name, seed, quick)
                path = _run_paths(out, rname, name, seed)
                if path.is_file():
                    old = json.loads(path.read_text())
                    if old.get("flags") == flags:
                        records.append(old)
                        continue
                specs.append({
                    "regime": rname, "regime_spec": {**asdict(regime),
                                                     "steps_per_epoch": regime.steps_per_epoch},
                    "config": name, "seed": seed, "flags": flags, "data_path": str(knee),
                    "val_dir": str(val_dir), "work": str(work), "out_file": str(path),
                    "threads": threads, "command": command})
    log(f"[quality] {len(records)} runs up to date, {len(specs)} to run with {jobs} job(s)")
    start = time.perf_counter()

    def done(r: dict) -> None:
        records.append(r)
        m4, m8 = r["metrics"]["4x"], r["metrics"]["8x"]
        log(f"[quality] {r['regime']} {r['config']} seed {r['seed']}: PSNR 4x {m4['PSNR']:.2f} "
            f"8x {m8['PSNR']:.2f}, object SSIM 4x {m4['SSIM_object']:.4f} 8x "
            f"{m8['SSIM_object']:.4f}, {r['params']:,} params, {r['total_flops'] / 1e12:.2f} "
            f"TFLOPs, {r['fit_seconds']:.0f} s ({len(records)} done, "
            f"{time.perf_counter() - start:.0f} s elapsed)")

    run_specs(specs, train_one, jobs, done)
    result = {"quick": quick, "regimes": {n: {**asdict(table[n]),
                                               "steps_per_epoch": table[n].steps_per_epoch}
                                           for n in names},
              "roles": roles(quick), "zero_filled": zero_filled,
              "labels": {n: c.label for n, c in CONFIGS.items()},
              "groups": {n: c.group for n, c in CONFIGS.items()},
              "decide": [n for n, c in CONFIGS.items() if c.decide],
              "runs": sorted(records, key=lambda r: (names.index(r["regime"]),
                                                     list(CONFIGS).index(r["config"]), r["seed"]))}
    result["report"] = quality_report.aggregate(result)
    if plot_dir is not None:
        result["plots"] = [str(p) for p in quality_report.plots(result, Path(plot_dir))]
    return result


def table(res: dict) -> str:
    """Markdown of the study (see :func:`benchmarks.quality_report.table`)."""
    from . import quality_report

    return quality_report.table(res)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.quality",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny regimes, same code path")
    parser.add_argument("--regimes", nargs="+", default=None,
                        help=f"subset of the regimes (full: {', '.join(REGIMES)}; quick: "
                             f"{', '.join(QUICK_REGIMES)})")
    parser.add_argument("--configs", nargs="+", default=None, choices=list(CONFIGS),
                        help="subset of the configurations")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at once")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--out", type=Path, default=Path("bench_output"))
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.threads < 1:
        parser.error(f"--jobs and --threads must be >= 1, got {args.jobs} and {args.threads}")
    command = "python -m benchmarks.quality " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    res = run(args.out, quick=args.quick, regimes=args.regimes, configs=args.configs,
              jobs=args.jobs, threads=args.threads, command=command.strip(),
              plot_dir=args.out / ("quality_plots_quick" if args.quick else "quality_plots"))
    print(table(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
