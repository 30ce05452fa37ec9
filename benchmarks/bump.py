"""Benchmark 7: does training get worse right after a growth event?

Every growth event made training worse for about 25 steps in the first
measurements (growth.md: +0.002 to +0.006 mean training L1 against a fixed
net on the same batches). Here, through ``DynamicUnetModule`` in a Lightning
``Trainer``: a fixed chans-4 U-Net and grown ones that start identical
(same seed: same initial weights, data order and training masks - the
growth batches are drawn without touching the masks' random state) and
grow once, at the first batch of epoch ``event_epoch``, by a quarter of the
way to chans-8 widths (budget schedule, every site). Per training step the
loss of each run is recorded; the bump of a run is

    mean(L_grown - L_fixed) over the 25 steps after the event
  - mean(L_grown - L_fixed) over the 25 steps before it

(before the event both runs are the same network, so the second term is 0
up to float noise). The bump's spread over seeds is reported with it (mean
+/- std and the per-seed values): a bump "within noise" is one whose mean
is smaller than its spread.

Configurations: growth method x optimizer treatment:

* methods: ``random``, ``sample_select`` (N=10 per filter), ``gradmax``,
  ``sample_select`` + ``fan_out_init="descent"``;
* treatments, without an update ramp: second moments seeded with the
  ``mean`` of the existing ones, with the new slices' squared gradient
  (``grad``, the default since this benchmark measured it), with their mean
  squared per-batch gradient (``moment``); and ``grad`` with a 25-step and
  an 80-step update ramp (80: the default since the quality study measured
  it).
"""

import statistics
from pathlib import Path
from typing import Dict, List, Optional

from . import training

FULL = {"data": {"train": 20, "val": 1, "num_slices": 8, "recon_size": 96, "phantom": "textured"},
        "batch_size": 4,
        "seeds": (0, 1, 2), "chans": 4, "num_pool_layers": 3, "event_epoch": 2,
        "max_epochs": 3, "window": 25, "growth_batches": 8}
QUICK = {"data": {"train": 4, "val": 1, "num_slices": 4, "recon_size": 64}, "batch_size": 2,
         "seeds": (0,), "chans": 4, "num_pool_layers": 2, "event_epoch": 2,
         "max_epochs": 3, "window": 4, "growth_batches": 2}
METHODS = {
    "random": {"growth_method": "random"},
    "sample_select": {"growth_method": "sample_select"},
    "gradmax": {"growth_method": "gradmax"},
    "descent": {"growth_method": "sample_select", "fan_out_init": "descent"},
}
TREATMENTS = {
    "mean": {"optimizer_seeding": "mean", "new_filter_ramp_steps": 0},
    "grad": {"optimizer_seeding": "grad", "new_filter_ramp_steps": 0},
    "moment": {"optimizer_seeding": "moment", "new_filter_ramp_steps": 0},
    "grad+ramp25": {"optimizer_seeding": "grad", "new_filter_ramp_steps": 25},
    "grad+ramp80": {"optimizer_seeding": "grad", "new_filter_ramp_steps": 80},
}


def _losses(work: Path, knee: Path, cfg: dict, seed: int, growth: Optional[dict]) -> List[float]:
    """Per-step training losses of one run (growth=None: the fixed net)."""
    import pytorch_lightning as pl

    from fastmri_growth.pl_modules import DynamicUnetModule

    class Losses(pl.Callback):
        def __init__(self):
            self.values = []

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            self.values.append(float(outputs["loss"]))

    pl.seed_everything(seed, verbose=False)
    opts = dict(chans=cfg["chans"], num_pool_layers=cfg["num_pool_layers"], growth_seed=seed)
    if growth is None:
        opts["max_growth_steps"] = 0
    else:
        opts.update(growth_schedule="budget", target_chans=cfg["chans"] + max(1, cfg["chans"] // 4),
                    growth_start_epoch=cfg["event_epoch"], growth_end_epoch=cfg["event_epoch"],
                    growth_batches=cfg["growth_batches"], **growth)
    module = DynamicUnetModule(**opts)
    rec = Losses()
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=cfg["max_epochs"], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                         deterministic=True, callbacks=[rec], default_root_dir=str(work))
    dm = training.data_module(knee, seed, batch_size=cfg["batch_size"])
    trainer.fit(module, datamodule=dm)
    return rec.values


def run(work: Path, quick: bool = False, cfg: Optional[dict] = None,
        methods=None, treatments=None, log=print) -> Dict:
    """Every method x treatment for every seed, against the fixed run of that seed."""
    training.quiet_lightning()
    cfg = dict(QUICK if quick else FULL, **(cfg or {}))
    methods = list(methods or METHODS)
    treatments = list(treatments or TREATMENTS)
    knee = training.make_data(Path(work) / "bump_data", cfg["data"])
    steps_per_epoch = -(-cfg["data"]["train"] * cfg["data"]["num_slices"] // cfg["batch_size"])
    event = cfg["event_epoch"] * steps_per_epoch
    w = cfg["window"]
    rows = []
    for seed in cfg["seeds"]:
        fixed = _losses(Path(work) / "bump_runs", knee, cfg, seed, None)
        for m in methods:
            for t in treatments:
                grown = _losses(Path(work) / "bump_runs", knee, cfg, seed,
                                dict(METHODS[m], **TREATMENTS[t]))
                diff = [g - f for g, f in zip(grown, fixed)]
                before = statistics.mean(diff[event - w:event])
                after = statistics.mean(diff[event:event + w])
                rows.append({"method": m, "treatment": t, "seed": seed, "bump": after - before,
                             "before": before, "after": after,
                             "end": statistics.mean(diff[-w:])})
                log(f"[bump] seed {seed} {m:<13} {t:<9} bump {after - before:+.5f}")
    return {"config": cfg, "event_step": event, "rows": rows}


def table(result: Dict) -> str:
    cfg = result["config"]
    d = cfg["data"]
    lines = [
        f"{d['train']} training volumes x {d['num_slices']} slices of the "
        f"{d.get('phantom', 'ellipses')} phantom, {d['recon_size']}x{d['recon_size']}, batch "
        f"{cfg['batch_size']}; U-Net {cfg['num_pool_layers']} pools, "
        f"chans {cfg['chans']}; one event at step {result['event_step']} (epoch "
        f"{cfg['event_epoch']}) growing every site a quarter of the way to chans "
        f"{2 * cfg['chans']}, {cfg['growth_batches']} scoring batches; seeds "
        f"{', '.join(map(str, cfg['seeds']))}. Bump: mean training L1 of the {cfg['window']} "
        f"steps after the event minus the {cfg['window']} before, relative to the fixed net on "
        "the same batches (before the event the runs are identical: the 'before' column is the "
        "largest difference there); last column: the same difference over the last "
        f"{cfg['window']} steps of the run.", "",
        "| method | treatment | bump (mean +/- std) | per seed | before | grown - fixed, end |",
        "|---|---|---|---|---|---|"]
    keys = list(dict.fromkeys((r["method"], r["treatment"]) for r in result["rows"]))
    for m, t in keys:
        rs = [r for r in result["rows"] if (r["method"], r["treatment"]) == (m, t)]
        b = [r["bump"] for r in rs]
        e = [r["end"] for r in rs]
        sd = statistics.stdev(b) if len(b) > 1 else float("nan")
        worst_before = max(abs(r["before"]) for r in rs)
        lines.append(f"| {m} | {t} | {statistics.mean(b):+.5f} +/- {sd:.5f} | "
                     f"{', '.join(f'{x:+.4f}' for x in b)} | {worst_before:.1e} | "
                     f"{statistics.mean(e):+.5f} |")
    return "\n".join(lines)
