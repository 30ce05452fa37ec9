"""DynamicUnetModule on pytorch-lightning 2 (fastmri_growth.pl_modules.dynamic_unet_module).

Training, validation and test mode as fastMRI's UnetModule; growth at the
epochs each schedule selects; the optimizer and LR scheduler carried across
growth; resuming a grown run; loading grown checkpoints; bad options and bad
checkpoints; the command-line flags; torch.compile after growth.

Everything runs on a tiny synthetic knee dataset (32 x 32 targets, 2 volumes
of 2 slices per split) through fastMRI's unpatched SliceDataset, on the CPU.
"""
import argparse
import csv
import hashlib
import inspect
import math
from pathlib import Path

import h5py
import pytest
import pytorch_lightning as pl
import torch
from fastmri import pl_modules as fastmri_pl
from fastmri.data import SliceDataset
from fastmri.data.subsample import RandomMaskFunc
from fastmri.data.transforms import UnetDataTransform
from fastmri.pl_modules.mri_module import MriModule
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger
from torch.nn import functional as F
from torch.utils.data import DataLoader

from fastmri_growth.data.synthetic import generate_dataset
from fastmri_growth.pl_modules import DynamicUnetModule, UnetModule, load_module

# chans=2, two pools: widths down 2/4, bottleneck 8, up 4/2. Growing only the
# second conv of down_0 keeps each growth step cheap.
SMALL = dict(chans=2, num_pool_layers=2, n_candidates=2, layers_to_grow=["down_0:1"])
RECON = 32


# ---------------------------------------------------------------------------
# data and helpers
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def knee(tmp_path_factory):
    """``root/knee`` with singlecoil_{train,val,test}: 2 volumes x 2 slices, 32 x 32."""
    root = tmp_path_factory.mktemp("dynamic_unet_data")
    generate_dataset(
        root, challenges=("knee_singlecoil",), splits=("train", "val", "test"),
        num_volumes=2, num_slices=2, recon_size=RECON, seed=0,
    )
    return root / "knee"


def loader(knee, split):
    """An unshuffled loader; masks seeded per file and slice, so runs repeat exactly."""
    if split == "test":
        transform = UnetDataTransform("singlecoil")
    else:
        mask = RandomMaskFunc(center_fractions=[0.08], accelerations=[4])
        transform = UnetDataTransform("singlecoil", mask_func=mask, use_seed=True)
    dataset = SliceDataset(
        knee / f"singlecoil_{split}", transform=transform, challenge="singlecoil",
        use_dataset_cache=False,
    )
    return DataLoader(dataset, batch_size=1, shuffle=False, num_workers=0)


def make_trainer(root, max_epochs, callbacks=(), checkpoint=None, **kwargs):
    kwargs.setdefault("logger", False)
    kwargs.setdefault("limit_train_batches", 2)
    kwargs.setdefault("num_sanity_val_steps", 0)
    callbacks = list(callbacks) + ([checkpoint] if checkpoint is not None else [])
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=max_epochs,
        enable_checkpointing=checkpoint is not None,
        callbacks=callbacks,
        deterministic=True,
        default_root_dir=str(root),
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


class SizeRecorder(Callback):
    """Network size and parameter count at the end of every training epoch."""

    def __init__(self):
        self.sizes, self.params = {}, {}

    def on_train_epoch_end(self, trainer, module):
        self.sizes[trainer.current_epoch] = module.unet.get_network_size()
        self.params[trainer.current_epoch] = module.unet.num_parameters()


class BatchCounter(Callback):
    def __init__(self):
        self.batches = 0

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.batches += 1


def read_metrics(log_dir):
    (path,) = Path(log_dir).rglob("metrics.csv")
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def column(rows, key):
    """``{epoch: float}`` of the rows where ``key`` was logged."""
    return {int(r["epoch"]): float(r[key]) for r in rows if r.get(key) not in (None, "")}


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def assert_state_dicts_equal(a, b):
    assert list(a) == list(b)
    for key in a:
        assert a[key].shape == b[key].shape, key
        diff = (a[key].double() - b[key].double()).abs().max().item() if a[key].numel() else 0.0
        assert diff <= 1e-6, f"{key}: max abs difference {diff:.3g}"


# ---------------------------------------------------------------------------
# training like fastMRI's UnetModule
# ---------------------------------------------------------------------------


def test_is_mri_module_with_unet_module_constructor_and_optimizer():
    module = DynamicUnetModule(chans=2, num_pool_layers=2, lr=0.01, lr_step_size=3, lr_gamma=0.5,
                               weight_decay=0.1)
    assert isinstance(module, MriModule)
    # fastMRI's UnetModule arguments come first, with the same defaults.
    theirs = list(inspect.signature(fastmri_pl.UnetModule.__init__).parameters.values())
    ours = list(inspect.signature(DynamicUnetModule.__init__).parameters.values())
    for a, b in zip(theirs[:-1], ours):  # theirs[-1] is **kwargs
        assert (a.name, a.default) == (b.name, b.default)

    optimizers, schedulers = module.configure_optimizers()
    (opt,), (sched,) = optimizers, schedulers
    assert isinstance(opt, torch.optim.RMSprop)
    assert opt.defaults["lr"] == 0.01 and opt.defaults["weight_decay"] == 0.1
    assert isinstance(sched, torch.optim.lr_scheduler.StepLR)
    assert (sched.step_size, sched.gamma) == (3, 0.5)

    # Same forward as fastMRI's: (N, H, W) in and out through a 1-channel U-Net.
    image = torch.randn(2, RECON, RECON)
    expected = module.unet(image.unsqueeze(1)).squeeze(1)
    torch.testing.assert_close(module(image), expected, rtol=0, atol=0)


def test_fit_validate_test_on_lightning2(knee, tmp_path):
    module = DynamicUnetModule(**SMALL)
    trainer = make_trainer(tmp_path, 1)
    trainer.fit(module, loader(knee, "train"), loader(knee, "val"))
    assert trainer.global_step == 2

    metrics = trainer.validate(module, loader(knee, "val"), verbose=False)[0]
    for key in ("validation_loss", "val_metrics/nmse", "val_metrics/ssim", "val_metrics/psnr"):
        assert math.isfinite(metrics[key]), key
    # fastMRI's validation_loss is the mean L1 loss of the validation slices.
    assert 0 < metrics["validation_loss"] < 10

    trainer.test(module, loader(knee, "test"), verbose=False)
    written = sorted((tmp_path / "reconstructions").glob("*.h5"))
    expected = sorted(p.name for p in (knee / "singlecoil_test").glob("*.h5"))
    assert [p.name for p in written] == expected
    for path in written:
        with h5py.File(path, "r") as f:
            assert f["reconstruction"].shape == (2, RECON, RECON)


def test_training_step_is_l1_loss(knee):
    module = DynamicUnetModule(**SMALL)
    batch = next(iter(loader(knee, "train")))
    loss = module.training_step(batch, 0)
    expected = F.l1_loss(module(batch.image), batch.target)
    torch.testing.assert_close(loss, expected)


# ---------------------------------------------------------------------------
# growth schedules
# ---------------------------------------------------------------------------

BASE = {"down_0": (2, 2), "down_1": (4, 4), "bottleneck": (8, 8), "up_0": (4, 4, 4),
        "up_1": (2, 2, 2)}


def widths(**changes):
    """Widths in get_network_size() form; up layers also give transpose_out."""
    w = dict(BASE, **changes)
    return {k: dict(zip(("conv1_out", "conv2_out", "transpose_out"), v)) for k, v in w.items()}


SCHEDULE_CASES = {
    # growth_interval 2 from epoch 1: epochs 1 and 3.
    "interval": (
        dict(growth_schedule="interval", growth_interval=2, growth_start_epoch=1),
        4,
        [widths(), widths(down_0=(2, 3)), widths(down_0=(2, 3)), widths(down_0=(2, 4))],
        [1, 3],
    ),
    # lr=0: validation_loss never improves. Observed at the start of epochs
    # 1 (best), 2 (1 bad epoch), 3 (2 bad epochs = patience): growth at 3.
    "plateau": (
        dict(growth_schedule="plateau", plateau_patience=2, lr=0.0),
        4,
        [widths(), widths(), widths(), widths(down_0=(2, 3))],
        [3],
    ),
    "progressive": (
        dict(growth_schedule="progressive", progressive_schedule="1:down_0;2:bottleneck:1"),
        3,
        [widths(), widths(down_0=(3, 3)), widths(down_0=(3, 3), bottleneck=(8, 9))],
        [1, 2],
    ),
}


@pytest.mark.parametrize("kind", list(SCHEDULE_CASES))
def test_growth_happens_at_scheduled_epochs_only(knee, tmp_path, kind, capsys):
    options, epochs, expected_sizes, grown_epochs = SCHEDULE_CASES[kind]
    module = DynamicUnetModule(**dict(SMALL, **options))
    recorder = SizeRecorder()
    trainer = make_trainer(
        tmp_path, epochs, callbacks=[recorder], logger=CSVLogger(str(tmp_path), name="csv"),
        log_every_n_steps=1, limit_val_batches=2 if kind == "plateau" else 0,
    )
    trainer.fit(module, loader(knee, "train"), loader(knee, "val"))

    assert [recorder.sizes[e] for e in range(epochs)] == expected_sizes
    assert module.schedule.state["grown_epochs"] == grown_epochs
    assert sorted({r.layer_idx for r in module.growth_reports}) == sorted(
        {lid for lid, w in expected_sizes[-1].items() if w != widths()[lid]})

    rows = read_metrics(tmp_path / "csv")
    assert column(rows, "network/params") == {e: float(p) for e, p in recorder.params.items()}
    assert set(column(rows, "network/filters")) == set(range(epochs))
    for key in ("growth/events", "growth/params", "growth/seconds", "growth/filters_added"):
        assert sorted(column(rows, key)) == grown_epochs, key
    assert sorted(column(rows, "growth/events").values()) == [float(i + 1) for i in range(len(grown_epochs))]

    out = capsys.readouterr().out
    for epoch in grown_epochs:
        assert f"[epoch {epoch}] Growing" in out
        assert f"[epoch {epoch}] network:" in out and "parameters" in out and "growth took" in out
    for epoch in set(range(epochs)) - set(grown_epochs):
        assert f"[epoch {epoch}]" not in out


def test_growth_metrics_reach_logger_with_default_log_every_n_steps(knee, tmp_path):
    """Growth events are rare: they must not be dropped by log_every_n_steps (default 50)."""
    module = DynamicUnetModule(**SMALL)
    trainer = make_trainer(tmp_path, 2, logger=CSVLogger(str(tmp_path), name="csv"),
                           limit_val_batches=1)
    trainer.fit(module, loader(knee, "train"), loader(knee, "val"))
    assert module.schedule.state["grown_epochs"] == [1]
    rows = read_metrics(tmp_path / "csv")
    assert sorted(column(rows, "network/params")) == [0, 1]
    for key in ("growth/events", "growth/params", "growth/seconds", "growth/filters_added"):
        assert sorted(column(rows, key)) == [1], f"{key} missing from metrics.csv"


# ---------------------------------------------------------------------------
# resume equals an uninterrupted run; loading grown checkpoints
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(knee, tmp_path_factory):
    """Run A: 4 epochs straight. Run B: 2 epochs, then a new process-like
    Trainer + module resumed from last.ckpt to 4 epochs. Growth at 1 and 3."""
    options = dict(SMALL, growth_interval=2)
    root = tmp_path_factory.mktemp("resume")

    pl.seed_everything(0)
    a = DynamicUnetModule(**options)
    ta = make_trainer(root / "a", 4, limit_val_batches=1, checkpoint=ModelCheckpoint(dirpath=root / "a" / "ckpt", save_last=True))
    ta.fit(a, loader(knee, "train"), loader(knee, "val"))

    pl.seed_everything(0)
    b1 = DynamicUnetModule(**options)
    tb1 = make_trainer(root / "b", 2, limit_val_batches=1, checkpoint=ModelCheckpoint(dirpath=root / "b" / "ckpt", save_last=True))
    tb1.fit(b1, loader(knee, "train"), loader(knee, "val"))
    midway = root / "b" / "midway.ckpt"
    midway.write_bytes((root / "b" / "ckpt" / "last.ckpt").read_bytes())

    pl.seed_everything(0)
    b2 = DynamicUnetModule(**options)
    tb2 = make_trainer(root / "b", 4, limit_val_batches=1, checkpoint=ModelCheckpoint(dirpath=root / "b" / "ckpt", save_last=True))
    tb2.fit(b2, loader(knee, "train"), loader(knee, "val"), ckpt_path=str(midway))
    return dict(a=a, ta=ta, b1=b1, b2=b2, tb2=tb2, midway=midway,
                last_a=root / "a" / "ckpt" / "last.ckpt", root=root)


def test_resume_equals_uninterrupted_run(runs):
    a, b1, b2, ta, tb2 = runs["a"], runs["b1"], runs["b2"], runs["ta"], runs["tb2"]
    grown = widths(down_0=(2, 4))
    assert b1.unet.get_network_size() == widths(down_0=(2, 3))
    assert a.unet.get_network_size() == grown
    assert b2.unet.get_network_size() == grown
    assert b2.schedule.state["grown_epochs"] == [1, 3]
    # The resumed process grew once (epoch 3), not again at epoch 1.
    assert [r.size_after["down_0"]["conv2_out"] for r in b2.growth_reports] == [4]
    assert tb2.global_step == ta.global_step == 8

    assert_state_dicts_equal(a.state_dict(), b2.state_dict())

    opt_a, opt_b = ta.optimizers[0], tb2.optimizers[0]
    params_a = [p for g in opt_a.param_groups for p in g["params"]]
    params_b = [p for g in opt_b.param_groups for p in g["params"]]
    assert [p.shape for p in params_a] == [p.shape for p in params_b]
    for pa, pb in zip(params_a, params_b):
        sa, sb = opt_a.state[pa], opt_b.state[pb]
        assert sa.keys() == sb.keys()
        for key in sa:
            torch.testing.assert_close(torch.as_tensor(sa[key]), torch.as_tensor(sb[key]), rtol=0, atol=1e-6)
    sched_a = ta.lr_scheduler_configs[0].scheduler
    sched_b = tb2.lr_scheduler_configs[0].scheduler
    assert sched_a.last_epoch == sched_b.last_epoch == 4
    assert sched_b.optimizer is opt_b


def test_resume_mid_ramp_restores_the_new_weights_masks_and_steps(runs):
    """The interrupted run stopped 2 steps into the 80-step update ramp of its
    epoch-1 growth: the checkpoint holds the new entries' masks and step
    counts by parameter name (the growth callback's state), which is what made
    the resumed run above equal the uninterrupted one."""
    ckpt = torch.load(runs["midway"], map_location="cpu", weights_only=False)
    saved = ckpt["callbacks"]["GrowthCallback"]["ramp"]
    params = dict(runs["b1"].named_parameters())
    assert saved and set(saved) <= set(params)
    assert "unet.down_sample_layers.0.layers.4.weight" in saved  # the grown conv2
    for name, rec in saved.items():
        assert rec["mask"].shape == params[name].shape and rec["mask"].any()
        assert rec["steps"] == 2 and rec["epoch"] == 1


def test_midway_checkpoint_holds_the_grown_model(runs):
    ckpt = torch.load(runs["midway"], map_location="cpu", weights_only=False)
    assert ckpt["epoch"] == 1
    assert ckpt["state_dict"]["unet.down_sample_layers.0.layers.4.weight"].shape[0] == 3
    # Widths under the module's key; the schedule is the growth callback's state.
    assert ckpt["dynamic_unet"]["widths"]["down_0"] == {"conv1_out": 2, "conv2_out": 3}
    assert ckpt["callbacks"]["GrowthCallback"]["schedule"]["grown_epochs"] == [1]


def test_load_from_checkpoint_returns_grown_model(runs):
    trained = runs["a"].eval()
    loaded = DynamicUnetModule.load_from_checkpoint(str(runs["last_a"]), map_location="cpu").eval()
    assert loaded.unet.get_network_size() == trained.unet.get_network_size() == widths(down_0=(2, 4))
    assert_state_dicts_equal(trained.state_dict(), loaded.state_dict())
    image = torch.randn(1, RECON, RECON, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(loaded(image), trained(image), rtol=0, atol=0)

    via_load_module = load_module(runs["last_a"])
    assert type(via_load_module) is DynamicUnetModule and not via_load_module.training
    assert via_load_module.unet.get_network_size() == widths(down_0=(2, 4))
    assert_state_dicts_equal(trained.state_dict(), via_load_module.state_dict())


def test_load_module_reads_a_lightning2_unet_module_checkpoint(knee, tmp_path):
    module = UnetModule(chans=2, num_pool_layers=2)
    trainer = make_trainer(tmp_path, 1, limit_train_batches=1, limit_val_batches=0)
    trainer.fit(module, loader(knee, "train"))
    path = tmp_path / "unet.ckpt"
    trainer.save_checkpoint(str(path))
    loaded = load_module(path)
    assert type(loaded) is UnetModule and not loaded.training
    assert_state_dicts_equal(module.state_dict(), loaded.state_dict())


# ---------------------------------------------------------------------------
# the optimizer across growth
# ---------------------------------------------------------------------------


class OptimizerProbe(DynamicUnetModule):
    """Snapshots optimizer and scheduler right before and right after growth.

    "Before": at the start of every epoch (growth happens at the epoch's
    first batch, before any step); "after": the module's ``on_growth`` hook.
    """

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        opt = self.trainer.optimizers[0]
        params_before = dict(self.named_parameters())
        self._before = dict(
            opt=opt, sched=self.trainer.lr_scheduler_configs[0].scheduler,
            params_before=params_before,
            values_before={n: q.detach().clone() for n, q in params_before.items()},
            state_objects={n: opt.state.get(p) for n, p in params_before.items()},
            state_values={n: {k: v.clone() for k, v in opt.state[p].items()}
                          for n, p in params_before.items()},
        )

    def on_growth(self, reports):
        b = self._before
        opt, sched = b["opt"], b["sched"]
        opt_after = self.trainer.optimizers[0]
        params_after = dict(self.named_parameters())
        self.probe = dict(
            b, opt_after=opt_after, sched_after=self.trainer.lr_scheduler_configs[0].scheduler,
            last_epoch=sched.last_epoch, lr=[g["lr"] for g in opt.param_groups],
            params_after=params_after,
            values_after={n: q.detach().clone() for n, q in params_after.items()},
            state_after={n: {k: v.clone() for k, v in opt_after.state.get(p, {}).items()}
                         for n, p in params_after.items()},
            state_after_objects={n: opt_after.state.get(p) for n, p in params_after.items()},
            opt_param_ids=[id(p) for g in opt_after.param_groups for p in g["params"]],
        )


GROWN = {  # growing down_0's second conv by one filter: what changes, along which dim
    "unet.down_sample_layers.0.layers.4.weight": 0,
    "unet.down_sample_layers.1.layers.0.weight": 1,
    "unet.up_conv.1.0.layers.0.weight": 1,  # skip connection into up_1
}


def test_optimizer_state_carried_over_growth(knee, tmp_path):
    # Mean seeding, checked exactly below (grad seeding: test_growth_decisions).
    module = OptimizerProbe(**SMALL, optimizer_seeding="mean")
    trainer = make_trainer(tmp_path, 2, limit_val_batches=0)
    trainer.fit(module, loader(knee, "train"))
    p = module.probe

    assert p["opt_after"] is p["opt"] and p["sched_after"] is p["sched"]
    assert p["sched"].optimizer is p["opt"]
    assert p["last_epoch"] == 1  # StepLR stepped once, after epoch 0
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == 2  # and continued
    assert p["lr"] == [module.lr]

    # Every parameter of the module is in the optimizer, once.
    module_ids = [id(q) for q in p["params_after"].values()]
    assert sorted(p["opt_param_ids"]) == sorted(module_ids)
    assert {id(q) for q in module.parameters()} == set(module_ids)

    changed = {n for n in p["params_after"] if p["params_after"][n].shape != p["params_before"][n].shape}
    assert changed == set(GROWN)
    for name, after in p["params_after"].items():
        before_values = p["state_values"][name]
        assert before_values, f"{name} had no optimizer state before growth"
        if name not in changed:
            assert after is p["params_before"][name]
            assert p["state_after_objects"][name] is p["state_objects"][name], name
            for key, value in before_values.items():
                assert torch.equal(p["state_after"][name][key], value), (name, key)
            continue
        dim = GROWN[name]
        old = p["params_before"][name]
        assert after.shape[dim] == old.shape[dim] + 1
        state = p["state_after"][name]
        assert state.keys() == before_values.keys()
        torch.testing.assert_close(state["step"], before_values["step"], rtol=0, atol=0)
        old_sq = before_values["square_avg"]
        new_sq = state["square_avg"]
        assert new_sq.shape == after.shape
        torch.testing.assert_close(new_sq.narrow(dim, 0, old.shape[dim]), old_sq, rtol=0, atol=0)
        seeded = new_sq.narrow(dim, old.shape[dim], 1)
        torch.testing.assert_close(seeded, torch.full_like(seeded, old_sq.mean().item()))
        # The old weights are unchanged by sample_select's growth itself.
        torch.testing.assert_close(p["values_after"][name].narrow(dim, 0, old.shape[dim]),
                                   p["values_before"][name], rtol=0, atol=0)


def test_reset_optimizer_recreates_optimizer_and_scheduler(knee, tmp_path):
    module = OptimizerProbe(**SMALL, reset_optimizer=True)
    trainer = make_trainer(tmp_path, 2, limit_val_batches=0)
    trainer.fit(module, loader(knee, "train"))
    p = module.probe
    assert p["opt_after"] is not p["opt"]
    assert p["sched_after"] is not p["sched"] and p["sched_after"].optimizer is p["opt_after"]
    assert all(not s for s in p["state_after"].values())
    assert sorted(p["opt_param_ids"]) == sorted(id(q) for q in p["params_after"].values())
    assert trainer.global_step == 4
    # The fresh optimizer trained the grown network after growth.
    assert all(trainer.optimizers[0].state[q] for q in module.parameters())


class NewWeightProbe(DynamicUnetModule):
    """Grown weights right after growth and at the end of every epoch."""

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        self._epoch_start = {n: q.detach().clone() for n, q in self.named_parameters()}

    def on_growth(self, reports):
        self.before_growth = self._epoch_start
        self.after_growth = {n: q.detach().clone() for n, q in self.named_parameters()}

    def on_train_epoch_end(self):
        super().on_train_epoch_end()
        self.epoch_end = getattr(self, "epoch_end", {})
        self.epoch_end[self.current_epoch] = {n: q.detach().clone() for n, q in self.named_parameters()}


def test_new_filter_lr_scale_zero_freezes_new_weights_during_growth_epoch(knee, tmp_path):
    module = NewWeightProbe(**SMALL, new_filter_lr_scale=0.0, max_growth_steps=1)
    trainer = make_trainer(tmp_path, 3, limit_train_batches=2, limit_val_batches=0)
    trainer.fit(module, loader(knee, "train"))
    assert module.schedule.state["grown_epochs"] == [1]

    for name, dim in GROWN.items():
        n_old = module.before_growth[name].shape[dim]
        grown, end1, end2 = (w[name] for w in (module.after_growth, module.epoch_end[1], module.epoch_end[2]))
        # New entries: frozen for the growth epoch's steps ...
        torch.testing.assert_close(end1.narrow(dim, n_old, 1), grown.narrow(dim, n_old, 1), rtol=0, atol=0)
        # ... while the old entries trained.
        assert not torch.equal(end1.narrow(dim, 0, n_old), grown.narrow(dim, 0, n_old)), name
    # The scale lasts for the growth epoch only: the new fan-out (zero at
    # growth) trains in the next epoch.
    fan_out = "unet.down_sample_layers.1.layers.0.weight"
    assert not torch.equal(module.epoch_end[2][fan_out][:, -1:], module.epoch_end[1][fan_out][:, -1:])


# ---------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------

BAD_OPTIONS = [
    (dict(layers_to_grow=["down_9"]), ["'down_9'", "down_0", "down_1", "bottleneck", "up_0", "up_1"]),
    (dict(layers_to_grow=["down_0:2"]), ["'2'", "0", "1"]),
    (dict(layers_to_grow=["down_0", "middle:1"]), ["'middle'", "bottleneck"]),
    (dict(growth_schedule="progressive", progressive_schedule="x:down_0"), ["'x'", "EPOCH:LAYER"]),
    (dict(growth_schedule="progressive", progressive_schedule="2"), ["'2'", "EPOCH:LAYER"]),
    (dict(growth_schedule="progressive", progressive_schedule=None), ["progressive_schedule", "EPOCH:LAYER"]),
    (dict(growth_schedule="progressive", progressive_schedule="1:down_9"), ["'down_9'", "bottleneck"]),
    (dict(growth_schedule="progressive", progressive_schedule="-1:down_0"), ["-1", ">= 0"]),
    (dict(growth_interval=0), ["growth_interval", "0", ">= 1"]),
    (dict(growth_method="firefly"), ["'firefly'", "sample_select", "split", "random", "gradmax"]),
    (dict(growth_schedule="cosine"), ["'cosine'", "interval", "plateau", "progressive"]),
    (dict(n_new=0), ["n_new", "0"]),
    (dict(n_candidates=0), ["n_candidates", "0"]),
    (dict(plateau_patience=0), ["plateau_patience", "0"]),
    (dict(growth_start_epoch=-1), ["growth_start_epoch", "-1"]),
    (dict(max_width=0), ["max_width", "0"]),
    (dict(max_growth_steps=-1), ["max_growth_steps", "-1"]),
    (dict(new_filter_lr_scale=-1.0), ["new_filter_lr_scale", "-1.0"]),
]


@pytest.mark.parametrize("options,fragments", BAD_OPTIONS, ids=[str(o) for o, _ in BAD_OPTIONS])
def test_bad_growth_options_raise_before_training(options, fragments):
    kwargs = dict(chans=2, num_pool_layers=2)
    kwargs.update(options)
    with pytest.raises(ValueError) as err:
        DynamicUnetModule(**kwargs)
    message = str(err.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def _corrupt_in_channels(ckpt):
    key = "down_sample_layers.1.layers.0.weight"
    w = ckpt["state_dict"]["unet." + key]
    ckpt["state_dict"]["unet." + key] = torch.zeros(w.shape[0], w.shape[1] + 1, *w.shape[2:])
    return key


def _corrupt_final_bias(ckpt):
    key = "unet.up_conv.1.1.bias"
    ckpt["state_dict"][key] = torch.zeros(ckpt["state_dict"][key].numel() + 1)
    return key


def _corrupt_recorded_widths(ckpt):
    ckpt["dynamic_unet"]["widths"]["down_0"]["conv2_out"] += 1
    return "widths"


@pytest.mark.parametrize("corrupt", [_corrupt_in_channels, _corrupt_final_bias, _corrupt_recorded_widths])
def test_bad_checkpoint_fails_before_training_and_overwrites_nothing(runs, knee, tmp_path, corrupt):
    ckdir = tmp_path / "checkpoints"
    ckdir.mkdir()
    good = ckdir / "last.ckpt"
    good.write_bytes(runs["last_a"].read_bytes())
    ckpt = torch.load(good, map_location="cpu", weights_only=False)
    needle = corrupt(ckpt)
    bad = ckdir / "bad.ckpt"
    torch.save(ckpt, bad)
    before = {p.name: sha256(p) for p in ckdir.iterdir()}

    with pytest.raises((ValueError, RuntimeError)) as err:
        DynamicUnetModule.load_from_checkpoint(str(bad), map_location="cpu")
    assert needle in str(err.value)
    with pytest.raises((ValueError, RuntimeError)) as err:
        load_module(bad)
    assert needle in str(err.value)

    module = DynamicUnetModule(**dict(SMALL, growth_interval=2))
    counter = BatchCounter()
    trainer = make_trainer(tmp_path, 6, callbacks=[counter],
                           checkpoint=ModelCheckpoint(dirpath=ckdir, save_last=True))
    with pytest.raises((ValueError, RuntimeError)) as err:
        trainer.fit(module, loader(knee, "train"), loader(knee, "val"), ckpt_path=str(bad))
    assert needle in str(err.value)
    assert counter.batches == 0
    assert {p.name: sha256(p) for p in ckdir.iterdir()} == before


# ---------------------------------------------------------------------------
# command-line flags
# ---------------------------------------------------------------------------

FLAG_VALUES = [
    ("growth_method", ["split"], "split"),
    ("n_candidates", ["3"], 3),
    ("growth_interval", ["2"], 2),
    ("layers_to_grow", ["down_0", "bottleneck:1"], ["down_0", "bottleneck:1"]),
    ("growth_schedule", ["plateau"], "plateau"),
    ("plateau_patience", ["3"], 3),
    ("progressive_schedule", ["1:down_0;2:up_1:1"], "1:down_0;2:up_1:1"),
    ("n_new", ["2"], 2),
    ("max_growth_steps", ["4"], 4),
    ("max_width", ["16"], 16),
    ("split_noise", ["0.01"], 0.01),
    ("new_filter_lr_scale", ["0.5"], 0.5),
    ("reset_optimizer", [], True),
    ("growth_start_epoch", ["0"], 0),
]


def _parser():
    return DynamicUnetModule.add_model_specific_args(argparse.ArgumentParser())


def test_flag_defaults_equal_constructor_defaults():
    args = _parser().parse_args([])
    params = inspect.signature(DynamicUnetModule.__init__).parameters
    for name, param in params.items():
        if name in ("self", "kwargs"):
            continue
        assert hasattr(args, name), f"no flag for {name}"
        assert getattr(args, name) == param.default, name
    module = DynamicUnetModule(**{k: getattr(args, k) for k in params if k not in ("self", "kwargs")})
    assert module.hparams.chans == 32 and module.hparams.growth_method == "sample_select"


@pytest.mark.parametrize("name,values,expected", FLAG_VALUES, ids=[f[0] for f in FLAG_VALUES])
def test_flag_hyphen_and_underscore_spellings(name, values, expected):
    for flag in ("--" + name.replace("_", "-"), "--" + name):
        args = _parser().parse_args([flag, *values])
        assert getattr(args, name) == expected, flag


def test_fastmri_model_flags_and_bad_choice(capsys):
    args = _parser().parse_args(["--chans", "8", "--num_pool_layers", "3", "--lr", "0.01",
                                 "--lr_step_size", "5", "--lr_gamma", "0.2", "--weight_decay", "0.1",
                                 "--drop_prob", "0.1", "--in_chans", "1", "--out_chans", "1"])
    assert (args.chans, args.num_pool_layers, args.lr, args.lr_step_size, args.lr_gamma,
            args.weight_decay, args.drop_prob) == (8, 3, 0.01, 5, 0.2, 0.1, 0.1)
    with pytest.raises(SystemExit) as err:
        _parser().parse_args(["--growth-method", "firefly"])
    assert err.value.code == 2
    assert "firefly" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# torch.compile
# ---------------------------------------------------------------------------


def test_compiled_unet_keeps_compiling_after_growth(knee, monkeypatch):
    """After each growth the module resets dynamo, so growth never exhausts the
    recompile limit (which silently falls back to eager). The limit is lowered
    to 3 so that 3 growths would exhaust it without the reset."""
    dynamo = pytest.importorskip("torch._dynamo", reason="torch.compile (dynamo) is unavailable")
    if not dynamo.is_dynamo_supported():
        pytest.skip("torch.compile is not supported on this Python/platform")
    from torch._dynamo.utils import counters

    limit_name = "recompile_limit" if hasattr(dynamo.config, "recompile_limit") else "cache_size_limit"
    module = DynamicUnetModule(**SMALL)
    # grow() outside a Trainer: no logging or printing target.
    monkeypatch.setattr(module, "log_dict", lambda *a, **k: None)
    monkeypatch.setattr(module, "print", lambda *a, **k: None)
    batch = next(iter(loader(knee, "train")))
    image = batch.image.unsqueeze(1)

    dynamo.reset()
    counters.clear()
    with dynamo.config.patch(**{limit_name: 3}):
        module.unet.compile(backend="eager")
        for epoch in range(1, 4):
            module.train()
            module.unet(image)
            module.grow([("down_0", 1)], batch, epoch)
        module.train()
        compiled = module.unet(image)
        frames = dict(counters["frames"])
        unimplemented = dict(counters["unimplemented"])
    dynamo.reset()

    assert module.unet.get_network_size()["down_0"]["conv2_out"] == 5
    limit_hits = [k for k in unimplemented if "limit" in k.lower()]
    assert not limit_hits, limit_hits[0][:200]
    assert frames.get("ok", 0) == frames.get("total", 0) > 0
    with torch.no_grad():
        torch.testing.assert_close(compiled.detach(), module.unet.forward(image))


@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16-true"])
def test_growth_and_validation_under_bfloat16(knee, tmp_path, precision):
    """Growth scores in the weights' dtype; validation metrics survive half precision."""
    module = DynamicUnetModule(**SMALL)
    trainer = make_trainer(tmp_path, 2, precision=precision)
    trainer.fit(module, loader(knee, "train"), loader(knee, "val"))
    assert module.schedule.state["grown_epochs"] == [1]
    assert module.unet.get_network_size()["down_0"]["conv2_out"] == SMALL["chans"] + 1
    for key in ("validation_loss", "val_metrics/ssim", "val_metrics/psnr", "val_metrics/nmse"):
        assert torch.isfinite(trainer.callback_metrics[key]), key


def test_new_filter_lr_scale_covers_a_weight_grown_twice_in_one_event(knee, tmp_path):
    """down_0's conv2 gets an input column (conv1 grew) and an output row (conv2 grew)."""
    options = dict(SMALL, layers_to_grow=["down_0"])
    module = NewWeightProbe(**options, new_filter_lr_scale=0.0, max_growth_steps=1)
    trainer = make_trainer(tmp_path, 2, limit_train_batches=2, limit_val_batches=0)
    trainer.fit(module, loader(knee, "train"))
    assert module.schedule.state["grown_epochs"] == [1]
    name = "unet.down_sample_layers.0.layers.4.weight"
    old, grown, end = module.before_growth[name], module.after_growth[name], module.epoch_end[1][name]
    assert grown.shape == (old.shape[0] + 1, old.shape[1] + 1, 3, 3)
    torch.testing.assert_close(end[-1:], grown[-1:], rtol=0, atol=0)  # new output filter
    torch.testing.assert_close(end[:, -1:], grown[:, -1:], rtol=0, atol=0)  # new input column
    assert not torch.equal(end[:-1, :-1], grown[:-1, :-1])  # old entries trained


def test_plateau_counts_only_epochs_that_validated(knee, tmp_path):
    """With validation every 2nd epoch (lr=0: never improving), patience 2 is
    reached at the third validation (epoch 5), so growth happens in epoch 6,
    not earlier through the stale validation_loss of skipped epochs."""
    options = dict(SMALL, growth_schedule="plateau", plateau_patience=2, lr=0.0)
    module = DynamicUnetModule(**options)
    trainer = make_trainer(tmp_path, 7, limit_train_batches=1, limit_val_batches=1,
                           check_val_every_n_epoch=2)
    trainer.fit(module, loader(knee, "train"), loader(knee, "val"))
    assert module.schedule.state["observed_epochs"] == [1, 3, 5]
    assert module.schedule.state["grown_epochs"] == [6]


def test_progressive_epochs_are_not_subject_to_growth_start_epoch():
    from fastmri_growth.growth.schedule import GrowthSchedule, parse_progressive
    from fastmri_growth.growth.sites import Site, parse_sites
    from fastmri_growth.models.unet_spec import layer_ids

    block_sites = [Site(lid, c) for lid in layer_ids(2) for c in (0, 1)]
    schedule = GrowthSchedule(kind="progressive", sites=[], start_epoch=1,
                              progressive=parse_progressive("0:down_0;2:up_1:1", block_sites))
    assert schedule.sites_for_epoch(0) == [Site("down_0", 0), Site("down_0", 1)]
    assert schedule.sites_for_epoch(1) == []
    assert schedule.sites_for_epoch(2) == [Site("up_1", 1)]
    # A generator of entries is read once, not consumed by a length check.
    assert parse_sites((e for e in ["up_1:1", "down_0:0"]), block_sites) == [
        Site("down_0", 0), Site("up_1", 1)]
