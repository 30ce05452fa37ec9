"""Faults: non-finite data, full disks, broken checkpoints, random states, API misuse.

Library-level checks; the command line's behaviour under the same faults is
in ``tests/test_train_faults.py``.
"""

import errno
import random
from pathlib import Path

import h5py
import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from fastmri.data import SliceDataset
from fastmri.data.subsample import RandomMaskFunc
from fastmri.data.transforms import UnetDataTransform
from torch.utils.data import DataLoader

from fastmri_growth.data.synthetic import generate_dataset
from fastmri_growth.models import DynamicUnet
from fastmri_growth.pl_modules import DynamicUnetModule
from fastmri_growth.pl_modules import checkpoint_io
from fastmri_growth.pl_modules.checkpoint_io import (
    AtomicCheckpointIO,
    CheckpointWriteError,
    TopKCheckpoint,
)
from fastmri_growth.pl_modules.finite_guard import FiniteGuard, NonFiniteError
from fastmri_growth.pl_modules.rng_state import RngState, mask_generators


@pytest.fixture(scope="module")
def poisoned(tmp_path_factory):
    """Two training volumes; slice 1 of the second holds NaN k-space."""
    root = tmp_path_factory.mktemp("poisoned")
    generate_dataset(root, challenges=("knee_singlecoil",), splits=("train",),
                     num_volumes=2, num_slices=2, recon_size=32, seed=0)
    files = sorted((root / "knee" / "singlecoil_train").glob("*.h5"))
    with h5py.File(files[1], "r+") as hf:
        k = hf["kspace"][()]
        k[1, 3, 4] = np.nan
        hf["kspace"][...] = k
    return root / "knee", files[1].name


def loader(knee, use_seed=True):
    mask = RandomMaskFunc([0.08], [4])
    ds = SliceDataset(knee / "singlecoil_train", challenge="singlecoil", use_dataset_cache=False,
                      transform=UnetDataTransform("singlecoil", mask_func=mask, use_seed=use_seed))
    return DataLoader(ds, batch_size=1)


def trainer(root, epochs, callbacks=(), **kw):
    return pl.Trainer(accelerator="cpu", max_epochs=epochs, logger=False, deterministic=True,
                      enable_progress_bar=False, enable_model_summary=False,
                      num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=str(root),
                      callbacks=list(callbacks), **kw)


# ---------------------------------------------------------------- non-finite data
def test_nan_data_stops_training_before_any_update_naming_the_file(poisoned, tmp_path):
    knee, bad_file = poisoned
    module = DynamicUnetModule(chans=2, num_pool_layers=2, max_growth_steps=0)
    ck = TopKCheckpoint(dirpath=tmp_path / "ckpt", monitor="train_loss", save_last=True)
    with pytest.raises(NonFiniteError) as err:
        trainer(tmp_path, 2, [FiniteGuard(), ck]).fit(module, loader(knee))
    assert f"{bad_file} slice 1" in str(err.value) and "non-finite gradient" in str(err.value)
    assert all(torch.isfinite(p).all() for p in module.parameters())
    # The poisoned step was never applied, and no checkpoint was written after it.
    assert not (tmp_path / "ckpt").exists() or not list((tmp_path / "ckpt").glob("*.ckpt"))


def test_skipping_nan_batches_trains_on_and_reports_them(poisoned, tmp_path, capsys):
    knee, bad_file = poisoned
    module = DynamicUnetModule(chans=2, num_pool_layers=2, max_growth_steps=0)
    guard = FiniteGuard(skip=True)
    trainer(tmp_path, 2, [guard]).fit(module, loader(knee))
    assert guard.skipped == [f"{bad_file} slice 1"] * 2
    assert all(torch.isfinite(p).all() for p in module.parameters())
    assert "skipped 1 batch(es) with non-finite gradients" in capsys.readouterr().out


def test_growth_on_nan_data_blames_the_data_not_growth(poisoned, tmp_path):
    knee, bad_file = poisoned
    module = DynamicUnetModule(chans=2, num_pool_layers=2, growth_start_epoch=0,
                               growth_batches=5)  # 4 extra batches: every slice, the bad one too
    with pytest.raises(NonFiniteError) as err:
        trainer(tmp_path, 1, [FiniteGuard()]).fit(module, loader(knee))
    msg = str(err.value)
    assert bad_file in msg and "growth event's scoring pass" in msg and "the data" in msg
    assert module.unet.get_network_size() == DynamicUnet(1, 1, 2, 2).get_network_size()


# ---------------------------------------------------------------- checkpoints
def test_a_failed_checkpoint_write_leaves_nothing_behind(tmp_path, monkeypatch):
    target = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"old": 1}, target)
    old = target.read_bytes()

    def disk_full(obj, f):
        f.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_io.torch, "save", disk_full)
    with pytest.raises(CheckpointWriteError) as err:
        AtomicCheckpointIO().save_checkpoint({"new": 2}, target)
    assert "no space left" in str(err.value) and "intact" in str(err.value)
    assert target.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_top_k_checkpoint_removes_its_stale_files(poisoned, tmp_path):
    knee, _ = poisoned
    ckdir = tmp_path / "ckpt"
    ckdir.mkdir()
    (ckdir / "epoch=7-step=99.ckpt").write_bytes(b"left by an earlier run")
    (ckdir / "notes.txt").write_text("not ours")
    ds = SliceDataset(knee / "singlecoil_train", challenge="singlecoil", use_dataset_cache=False,
                      transform=UnetDataTransform("singlecoil", mask_func=RandomMaskFunc([0.08], [4]),
                                                  use_seed=True),
                      raw_sample_filter=lambda s: s.slice_ind == 0)  # the NaN slice is 1
    module = DynamicUnetModule(chans=2, num_pool_layers=2, max_growth_steps=0)
    ck = TopKCheckpoint(dirpath=ckdir, monitor="loss", save_top_k=1)  # the training loss
    t = trainer(tmp_path, 3, [ck], plugins=[AtomicCheckpointIO()])
    t.fit(module, DataLoader(ds, batch_size=1))
    names = sorted(p.name for p in ckdir.iterdir())
    epochs = [n for n in names if n.startswith("epoch=")]
    assert epochs == [Path(ck.best_model_path).name], names  # the stale file is gone
    assert "notes.txt" in names and not any(n.endswith(".partial") for n in names)
    # Its state resumes under ModelCheckpoint's key, as checkpoints written before it did.
    assert ck.state_key.startswith("ModelCheckpoint{'monitor': 'loss'")


# ---------------------------------------------------------------- random states
def test_rng_state_round_trip_includes_the_mask_generators():
    mask = RandomMaskFunc([0.08], [4])
    ds = SliceDataset.__new__(SliceDataset)
    ds.transform = UnetDataTransform("singlecoil", mask_func=mask, use_seed=False)
    assert mask_generators(ds) == [mask.rng]
    assert mask_generators([0, 1]) == []  # no transform: nothing to save
    cb = RngState()
    cb._train_dataset = lambda: ds  # what the trainer's training loader holds
    torch.manual_seed(1), np.random.seed(2), random.seed(3), mask.rng.seed(4)
    state = cb.state_dict()
    expected = (torch.rand(3), np.random.rand(3), random.random(), mask.rng.rand(3))
    torch.manual_seed(9), np.random.seed(9), random.seed(9), mask.rng.seed(9)
    cb.load_state_dict(state)
    cb.on_train_start(None, None)
    again = (torch.rand(3), np.random.rand(3), random.random(), mask.rng.rand(3))
    assert torch.equal(expected[0], again[0])
    assert np.array_equal(expected[1], again[1]) and expected[2] == again[2]
    assert np.array_equal(expected[3], again[3])
    # Plain values only: the state loads with torch.load(weights_only=True).
    import io
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    torch.load(buf, weights_only=True)


# ---------------------------------------------------------------- API misuse
def test_growth_under_no_grad_and_empty_batches():
    torch.manual_seed(0)
    model = DynamicUnet(1, 1, 2, 2)
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        report = model.grow_network("bottleneck", 0, x, x)
    assert report.width_after == report.width_before + 1
    with pytest.raises(ValueError, match=r"holds no samples \(shape \(0, 1, 16, 16\)\)"):
        model.grow_network("bottleneck", 0, x[:0], x[:0])


def test_loading_a_grown_state_dict_into_an_ungrown_net_says_what_to_do():
    torch.manual_seed(0)
    grown, plain = DynamicUnet(1, 1, 2, 2), DynamicUnet(1, 1, 2, 2)
    x = torch.randn(1, 1, 16, 16)
    grown.grow_network("down_0", 1, x, x)
    with pytest.raises(RuntimeError, match="from_state_dict"):
        plain.load_state_dict(grown.state_dict())
    plain.resize_from_state_dict(grown.state_dict())
    plain.load_state_dict(grown.state_dict())
    assert torch.equal(plain(x), grown(x))


def test_compare_refuses_nan_predictions_naming_the_file(tmp_path):
    from fastmri_growth.evaluation.metrics import EvaluationError, evaluate_folders

    generate_dataset(tmp_path / "d", challenges=("knee_singlecoil",), splits=("val",),
                     num_volumes=1, num_slices=2, recon_size=32)
    val = tmp_path / "d" / "knee" / "singlecoil_val"
    (f,) = sorted(val.glob("*.h5"))
    preds = tmp_path / "p"
    preds.mkdir()
    with h5py.File(f, "r") as hf:
        rec = hf["reconstruction_esc"][()]
    rec[0, 0, 0] = np.nan
    with h5py.File(preds / f.name, "w") as hf:
        hf["reconstruction"] = rec
    with pytest.raises(EvaluationError, match=f"{f.name} holds 1 NaN or infinite"):
        evaluate_folders(val, preds, "singlecoil")
