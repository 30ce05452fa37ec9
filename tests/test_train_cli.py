"""The train/test command line (``fastmri_growth.cli.train``), end to end.

Training, resuming and test mode run ``python -m fastmri_growth.cli.train`` in a
subprocess on a tiny synthetic single-coil knee set (64 x 64, 2 volumes of 2
slices per split, chans 4, 2 pools). Bad input runs ``main`` in-process
(plus one subprocess) and checks: exit status 2, one line on stderr, no
traceback, and checkpoints unchanged byte for byte.
"""
import csv
import hashlib
import inspect
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from fastmri_growth.cli import (
    checkpoints,
    common,
    data_checks,
    dataset_cache,
    train,
    train_checks,
    train_parser,
    train_setup,
)
from fastmri_growth.data.fastmri_format import MASK_TYPES

CHANS, POOLS = 4, 2
# Growth at the start of epoch 1 (the second epoch), every epoch after.
TINY_ARGS = [
    "--challenge", "singlecoil",
    "--chans", str(CHANS),
    "--num_pool_layers", str(POOLS),
    "--growth-method", "sample_select",
    "--n-candidates", "4",
    "--growth-interval", "1",
    "--growth-start-epoch", "1",
    "--accelerator", "cpu",
    "--devices", "1",
    "--num_workers", "0",
    "--enable_progress_bar", "false",
    "--log_every_n_steps", "1",
]


def run_cli(args, cwd, timeout=300):
    """``python -m fastmri_growth.cli.train ARGS`` in ``cwd``; returns the CompletedProcess."""
    # OMP_NUM_THREADS=1 is inherited from tests/conftest.py.
    return subprocess.run(
        [sys.executable, "-m", "fastmri_growth.cli.train", *map(str, args)],
        cwd=cwd, capture_output=True, text=True, timeout=timeout,
    )


def file_hashes(folder: Path) -> dict:
    """``{relative path: sha256}`` of every file below ``folder``."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*")) if p.is_file()
    }


def csv_epochs(csv_path: Path) -> set:
    with open(csv_path, newline="") as f:
        return {int(row["epoch"]) for row in csv.DictReader(f) if row["epoch"]}


def unet_numel(state_dict) -> int:
    return sum(t.numel() for k, t in state_dict.items() if k.startswith("unet."))


@pytest.fixture(scope="module")
def knee_root(tiny_knee_root):
    """A tiny synthetic single-coil knee root (see ``tiny_knee_root``); read only."""
    return tiny_knee_root


@pytest.fixture(scope="module")
def trained_run(knee_root, tmp_path_factory):
    """Two epochs of growing-U-Net training; returns (run_dir, CompletedProcess)."""
    work = tmp_path_factory.mktemp("cli_train")
    run_dir = work / "run"
    proc = run_cli(["--data_path", knee_root, "--default_root_dir", run_dir,
                    "--max_epochs", "2", *TINY_ARGS], cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir, proc


@pytest.fixture
def run_copy(trained_run, tmp_path):
    """A private copy of the trained run (mtimes kept) for tests that write to it."""
    dst = tmp_path / "run"
    shutil.copytree(trained_run[0], dst)
    return dst


# ------------------------------------------------------------------ parser


def test_help_lists_model_type_growth_flags_both_spellings(capsys):
    with pytest.raises(SystemExit) as exc:
        train.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--model-type", "--model_type", "--growth-method", "--growth_method",
                 "--n-candidates", "--n_candidates", "--layers-to-grow", "--layers_to_grow",
                 "--growth-schedule", "--growth_schedule", "--max-width", "--max_width",
                 "--mode", "--mask_type", "--center_fractions", "--accelerations", "--data_path",
                 "--use_dataset_cache_file", "--combine_train_val", "--accelerator", "--devices",
                 "--strategy", "--num_nodes", "--precision", "--max_epochs", "--default_root_dir",
                 "--deterministic", "--limit_train_batches", "--limit_val_batches",
                 "--log_every_n_steps", "--num_sanity_val_steps", "--seed", "--chans"):
        assert re.search(rf"(^|[\s\[,]){re.escape(flag)}\b", out), flag
    assert "fastmri-growth-synth" in out


def test_unet_model_type_has_no_growth_flags_and_its_own_defaults(capsys):
    parser = train_parser.build_parser("unet")
    options = {o for a in parser._actions for o in a.option_strings}
    assert "--growth-method" not in options and "--chans" in options
    args = train_parser.parse_args(["--model-type", "unet"])
    assert args.model_type == "unet"
    assert args.chans == 32  # the ported UnetModule's default, not fastMRI's 1
    # Growth flags are rejected for the fixed U-Net, in one line.
    with pytest.raises(SystemExit) as exc:
        train_parser.parse_args(["--model-type", "unet", "--growth-method", "split"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "growth flags need --model-type dynamic_unet (got --growth-method)" in err[0]
    with pytest.raises(SystemExit):
        train_parser.parse_args(["--model_type", "unet", "--n_new=2"])
    assert "(got --n_new)" in capsys.readouterr().err


def test_growth_flags_accept_both_spellings_and_module_defaults():
    from fastmri_growth.growth.config import defaults as growth_defaults

    defaults = train_parser.parse_args([])
    assert defaults.model_type == "dynamic_unet"
    for name, value in growth_defaults().items():
        assert getattr(defaults, name) == value, name
    hyphen = train_parser.parse_args(
        ["--growth-method", "split", "--n-new", "3", "--layers-to-grow", "down_0"])
    under = train_parser.parse_args(
        ["--growth_method", "split", "--n_new", "3", "--layers_to_grow", "down_0"])
    for args in (hyphen, under):
        assert (args.growth_method, args.n_new, args.layers_to_grow) == ("split", 3, ["down_0"])
    # --mode is not mistaken for an abbreviation of --model-type.
    assert train_parser.parse_args(["--mode", "test"]).mode == "test"


def test_mask_types_are_all_of_fastmris():
    from fastmri.data import subsample

    source = inspect.getsource(subsample.create_mask_for_mask_type)
    assert set(re.findall(r'mask_type_str == "(\w+)"', source)) == set(MASK_TYPES)
    for mask_type in MASK_TYPES:
        args = train_parser.parse_args(["--mask_type", mask_type])
        assert args.mask_type == mask_type
        subsample.create_mask_for_mask_type(mask_type, [0.08], [4])


def test_boolean_flags_parse_false():
    args = train_parser.parse_args(["--use_dataset_cache_file", "False", "--deterministic", "false",
                             "--combine_train_val", "true"])
    assert args.use_dataset_cache_file is False
    assert args.deterministic is False
    assert args.combine_train_val is True
    assert train_parser.parse_args(["--deterministic", "warn"]).deterministic == "warn"
    assert train_parser.parse_args(["--limit_train_batches", "3"]).limit_train_batches == 3
    assert train_parser.parse_args(["--limit_train_batches", "0.5"]).limit_train_batches == 0.5


def test_lightning_limit_defaults_and_worker_cap(capsys):
    args = train_parser.parse_args([])
    # None, not 1.0: Lightning then prints no "Trainer(limit_*_batches=1.0)" lines.
    assert (args.limit_train_batches, args.limit_val_batches, args.limit_test_batches) == (
        None, None, None)
    assert train_parser.parse_args(["--limit_val_batches", "2"]).limit_val_batches == 2
    assert args.num_workers == 4  # fastMRI's default, capped per machine
    assert train_setup.cap_num_workers(4, cpus=2) == (
        2, "note: --num_workers 4 is more than the 2 CPU(s) available; "
        "using 2 data loader workers")
    assert train_setup.cap_num_workers(2, cpus=2) == (2, None)
    assert train_setup.cap_num_workers(0, cpus=1) == (0, None)
    with pytest.raises(SystemExit):
        train.main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "default: 1e-3" in out and "Number of U-Net output channels" in out
    assert "./dataset_cache.pkl" in out


def test_stale_dataset_cache_entries_are_dropped(tmp_path, monkeypatch):
    from fastmri.data import SliceDataset

    from fastmri_growth.data.synthetic import generate_dataset

    monkeypatch.chdir(tmp_path)
    generate_dataset(tmp_path / "d", challenges=("knee_singlecoil",), splits=("train", "val"),
                     num_volumes=1, num_slices=3, recon_size=64, seed=0)
    cache = Path("dataset_cache.pkl")
    train_dir = tmp_path / "d" / "knee" / "singlecoil_train"
    val_dir = tmp_path / "d" / "knee" / "singlecoil_val"
    for folder in (train_dir, val_dir):
        SliceDataset(folder, "singlecoil", use_dataset_cache=True, dataset_cache_file=cache)
    assert dataset_cache.prune_dataset_cache(cache) == []  # nothing changed yet
    # Regenerated in place with fewer slices: fastMRI would still list 3.
    generate_dataset(tmp_path / "d", challenges=("knee_singlecoil",), splits=("train",),
                     num_volumes=1, num_slices=2, recon_size=64, seed=0, overwrite=True)
    stale = SliceDataset(train_dir, "singlecoil", use_dataset_cache=True,
                         dataset_cache_file=cache)
    assert len(stale) == 3
    with pytest.raises(IndexError):
        stale[2]  # what a DataLoader worker hit
    assert dataset_cache.prune_dataset_cache(cache) == [str(train_dir)]
    assert dataset_cache.prune_dataset_cache(cache) == []
    fresh = SliceDataset(train_dir, "singlecoil", use_dataset_cache=True,
                         dataset_cache_file=cache)
    assert len(fresh) == 2
    assert fresh[1][2].shape == (64, 64)  # the last slice's target reads
    # The untouched folder keeps its entry; a removed file also makes it stale.
    import pickle

    assert list(pickle.loads(cache.read_bytes())) == [val_dir, train_dir]
    next(val_dir.glob("*.h5")).rename(tmp_path / "moved.h5")
    assert dataset_cache.prune_dataset_cache(cache) == [str(val_dir)]
    cache.write_bytes(b"junk")
    with pytest.raises(common.UsageError, match="cannot read the dataset cache"):
        dataset_cache.prune_dataset_cache(cache)


def test_newest_checkpoint_by_mtime_ties_to_last(tmp_path):
    assert checkpoints.newest_checkpoint(tmp_path / "missing") is None
    old, best, last = (tmp_path / n for n in ("epoch=0.ckpt", "epoch=1.ckpt", "last.ckpt"))
    for i, p in enumerate((old, best, last)):
        p.write_bytes(b"x")
        os.utime(p, ns=(10**18 + i, 10**18 + i))
    assert checkpoints.newest_checkpoint(tmp_path) == last
    os.utime(best, ns=(10**18 + 5, 10**18 + 5))
    assert checkpoints.newest_checkpoint(tmp_path) == best
    os.utime(last, ns=(10**18 + 5, 10**18 + 5))
    assert checkpoints.newest_checkpoint(tmp_path) == last


def test_last_ckpt_is_every_epoch_and_best_is_the_best(tmp_path):
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader, TensorDataset

    class WorseEachEpoch(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def training_step(self, batch, batch_idx):
            return (self.w - 1.0).pow(2).sum()

        def validation_step(self, batch, batch_idx):
            self.log("validation_loss", float(self.current_epoch))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

        def train_dataloader(self):
            return DataLoader(TensorDataset(torch.zeros(2, 1)), batch_size=1)

        val_dataloader = train_dataloader

    ckpt_dir = tmp_path / "checkpoints"
    trainer = pl.Trainer(
        default_root_dir=tmp_path, max_epochs=3, accelerator="cpu", devices=1, logger=False,
        callbacks=checkpoints.checkpoint_callbacks(ckpt_dir), enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0,
    )
    trainer.fit(WorseEachEpoch())
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["epoch=0-step=2.ckpt", "last.ckpt"]
    assert torch.load(ckpt_dir / "last.ckpt", weights_only=False)["epoch"] == 2
    assert checkpoints.newest_checkpoint(ckpt_dir) == ckpt_dir / "last.ckpt"


def test_distributed_sampler_follows_strategy_and_devices(tmp_path, knee_root):
    base = ["--data_path", str(knee_root), "--default_root_dir", str(tmp_path),
            "--accelerator", "cpu", "--num_workers", "0"]
    single = train_parser.parse_args(base + ["--devices", "1"])
    train_checks.validate_args(single)
    assert not train_setup.uses_distributed_sampler(train_setup.build_trainer(single))
    for extra in (["--devices", "2"], ["--devices", "1", "--strategy", "ddp"]):
        args = train_parser.parse_args(base + extra)
        train_checks.validate_args(args)
        trainer = train_setup.build_trainer(args)
        assert trainer.num_devices * trainer.num_nodes >= 1
        assert train_setup.uses_distributed_sampler(trainer), extra
        data = train_setup.build_data_module(args, train_setup.uses_distributed_sampler(trainer))
        assert data.distributed_sampler is True
    assert not any(tmp_path.iterdir()), "building a trainer must not write files"


def test_fastmri_dirs_yaml_is_honoured_and_never_created(tmp_path, monkeypatch, knee_root):
    monkeypatch.chdir(tmp_path)
    args = train_parser.parse_args([])
    data_checks.resolve_paths(args)
    assert args.data_path is None
    assert args.default_root_dir == Path(".") / "dynamic_unet" / "dynamic_unet_demo"
    assert not (tmp_path / "fastmri_dirs.yaml").exists()  # fetch_dir would write a template

    (tmp_path / "fastmri_dirs.yaml").write_text(
        f"knee_path: {knee_root}\nbrain_path: /nowhere\nlog_path: {tmp_path / 'logs'}\n"
    )
    args = train_parser.parse_args(["--model-type", "unet"])
    data_checks.resolve_paths(args)
    assert args.data_path == knee_root
    assert args.default_root_dir == tmp_path / "logs" / "unet" / "unet_demo"
    data_checks.check_data(args)
    # --data_path wins over the yaml.
    args = train_parser.parse_args(["--data_path", "elsewhere"])
    data_checks.resolve_paths(args)
    assert args.data_path == Path("elsewhere")


# ------------------------------------------------------- training end to end


def test_train_grows_and_writes_the_run_layout(trained_run):
    run_dir, proc = trained_run
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").glob("*.ckpt"))
    assert "last.ckpt" in ckpts and len(ckpts) == 2, ckpts  # best (top 1) + last
    assert any(re.fullmatch(r"epoch=1-step=\d+\.ckpt", n) for n in ckpts), ckpts

    from fastmri_growth.pl_modules import DynamicUnetModule

    start = DynamicUnetModule(chans=CHANS, num_pool_layers=POOLS).state_dict()
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu",
                      weights_only=False)
    assert ckpt["epoch"] == 1
    grown = ckpt["state_dict"]
    assert unet_numel(grown) > unet_numel(start)
    first = "unet.down_sample_layers.0.layers.0.weight"
    assert start[first].shape[0] == CHANS
    wider = [k for k in start if k.startswith("unet.") and grown[k].shape != start[k].shape]
    assert wider and all(grown[k].numel() > start[k].numel() for k in wider)

    assert list((run_dir / "lightning_logs" / "version_0").glob("events.out.tfevents.*"))
    metrics = run_dir / "csv_logs" / "version_0" / "metrics.csv"
    assert csv_epochs(metrics) == {0, 1}
    header = metrics.read_text().splitlines()[0].split(",")
    for column in ("validation_loss", "val_metrics/ssim", "val_metrics/psnr", "val_metrics/nmse",
                   "network/params", "network/filters"):
        assert column in header
    assert str(run_dir / "checkpoints") in proc.stdout
    assert str(metrics) in proc.stdout
    assert "was configured" not in proc.stdout + proc.stderr  # limit_*_batches left unset
    # The summary gives the last epoch's validation metrics, as logged.
    with open(metrics, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["val_metrics/ssim"] and r["epoch"] == "1"]
    last = rows[-1]
    expected = (f"last validation:  validation_loss {float(last['validation_loss']):.4g}, "
                f"SSIM {float(last['val_metrics/ssim']):.4f}, "
                f"PSNR {float(last['val_metrics/psnr']):.2f}, "
                f"NMSE {float(last['val_metrics/nmse']):.4g}")
    assert expected in proc.stdout, proc.stdout[-2000:]
    assert re.search(r"best checkpoint: .*epoch=1-step=\d+\.ckpt \(validation_loss [0-9.e-]+\)",
                     proc.stdout), proc.stdout[-2000:]


def test_second_invocation_resumes_from_the_checkpoint(run_copy, knee_root):
    before = torch.load(run_copy / "checkpoints" / "last.ckpt", map_location="cpu",
                        weights_only=False)
    import pickle

    # A cache entry of a folder that is gone is dropped before the data are read.
    gone = run_copy.parent / "gone_folder"
    (run_copy.parent / "dataset_cache.pkl").write_bytes(pickle.dumps({gone: []}))
    proc = run_cli(["--data_path", knee_root, "--default_root_dir", run_copy,
                    "--max_epochs", "3", *TINY_ARGS], cwd=run_copy.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"note: dropped the entries of {gone} from the dataset cache" in proc.stdout
    assert gone not in pickle.loads((run_copy.parent / "dataset_cache.pkl").read_bytes())
    assert f"Resuming from {run_copy / 'checkpoints' / 'last.ckpt'}" in proc.stdout
    # Only epoch 2 ran: the new logger version starts where the checkpoint ended.
    assert csv_epochs(run_copy / "csv_logs" / "version_1" / "metrics.csv") == {2}
    after = torch.load(run_copy / "checkpoints" / "last.ckpt", map_location="cpu",
                       weights_only=False)
    assert after["epoch"] == 2 and after["global_step"] > before["global_step"]
    assert unet_numel(after["state_dict"]) > unet_numel(before["state_dict"])


def test_test_mode_writes_reconstructions_of_the_trained_weights(run_copy, knee_root):
    from fastmri.data import SliceDataset
    from fastmri.data.transforms import UnetDataTransform

    from fastmri_growth.pl_modules import DynamicUnetModule, load_module

    ckpts_before = file_hashes(run_copy / "checkpoints")
    proc = run_cli(["--mode", "test", "--data_path", knee_root, "--default_root_dir", run_copy,
                    *TINY_ARGS], cwd=run_copy.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"Testing weights from {run_copy / 'checkpoints' / 'last.ckpt'}" in proc.stdout
    assert file_hashes(run_copy / "checkpoints") == ckpts_before
    recon_dir = run_copy / "reconstructions"
    test_dir = knee_root / "singlecoil_test"
    assert sorted(p.name for p in recon_dir.glob("*.h5")) == sorted(
        p.name for p in test_dir.glob("*.h5"))
    assert str(recon_dir) in proc.stdout

    trained = load_module(run_copy / "checkpoints" / "last.ckpt")
    untrained = DynamicUnetModule(chans=CHANS, num_pool_layers=POOLS).eval()
    dataset = SliceDataset(test_dir, challenge="singlecoil",
                           transform=UnetDataTransform("singlecoil"), use_dataset_cache=False)
    assert len(dataset) == 4
    worst_trained, best_untrained = 0.0, np.inf
    with torch.no_grad():
        for sample in dataset:
            with h5py.File(recon_dir / sample.fname, "r") as hf:
                assert list(hf.keys()) == ["reconstruction"]
                written = hf["reconstruction"][sample.slice_num]
            # Compared in normalised units (fastMRI images are ~1e-4 in size).
            written = (written - sample.mean.numpy()) / sample.std.numpy()
            for module in (trained, untrained):
                out = module(sample.image.unsqueeze(0))[0].numpy()
                diff = float(np.abs(out - written).max())
                if module is trained:
                    worst_trained = max(worst_trained, diff)
                else:
                    best_untrained = min(best_untrained, diff)
    assert worst_trained < 1e-4, worst_trained
    assert best_untrained > 0.1, best_untrained


def test_evaluate_and_plot_the_trained_run(trained_run, knee_root, tmp_path):
    import json

    from fastmri_growth.cli import evaluate, plot

    run_dir = trained_run[0]
    lb, js = tmp_path / "lb", tmp_path / "lb.json"
    code = evaluate.main(["leaderboard", "--checkpoint", str(run_dir / "checkpoints" / "last.ckpt"),
                          "--data-path", str(knee_root / "singlecoil_val"),
                          "--challenge", "singlecoil", "--out", str(lb), "--json", str(js)])
    assert code == 0
    results = json.loads(js.read_text())["results"]
    assert set(results) == {"4x", "8x"}
    assert all(0.0 < r["metrics"]["SSIM"]["mean"] <= 1.0 for r in results.values())
    assert plot.main(["curves", "--log-dir", str(run_dir), "--out", str(tmp_path / "c.png")]) == 0
    assert plot.main(["grid", "--reconstructions", str(lb / "4x"),
                      "--data-path", str(knee_root / "singlecoil_val"), "--challenge",
                      "singlecoil", "--out", str(tmp_path / "g.png")]) == 0
    for png in ("c.png", "g.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- bad input


def _bad_h5(folder: Path, drop: str, knee_root: Path) -> None:
    """Copy the train/val/test folders, removing dataset ``drop`` from one file."""
    for split in ("train", "val", "test"):
        shutil.copytree(knee_root / f"singlecoil_{split}", folder / f"singlecoil_{split}")
    victim = sorted((folder / "singlecoil_train").glob("*.h5"))[0]
    with h5py.File(victim, "a") as hf:
        del hf[drop]


def _bad_cases(tmp: Path, knee_root: Path, run_dir: Path):
    """``(name, argv, expected message fragments)`` for each kind of bad input."""
    empty = tmp / "empty_root"
    for split in ("train", "val"):
        (empty / f"singlecoil_{split}").mkdir(parents=True)
    _bad_h5(tmp / "no_kspace", "kspace", knee_root)
    _bad_h5(tmp / "no_header", "ismrmrd_header", knee_root)
    fresh = tmp / "fresh_run"
    broken = tmp / "broken.ckpt"
    broken.write_bytes(b"not a checkpoint")
    foreign = tmp / "foreign.ckpt"
    torch.save({"state_dict": {"net.weight": torch.zeros(1)}, "hyper_parameters": {}}, foreign)
    common = ["--default_root_dir", str(run_dir), *TINY_ARGS]
    data = ["--data_path", str(knee_root)]
    from fastmri_growth.pl_modules.lightning2 import UnetModule

    # A fixed U-Net checkpoint without hyper_parameters: chans read from shapes.
    unet_ckpt = tmp / "unet.ckpt"
    torch.save({"state_dict": UnetModule(chans=4, num_pool_layers=2).state_dict(),
                "hyper_parameters": {}}, unet_ckpt)
    unet_args = ["--model-type", "unet", "--accelerator", "cpu", "--num_workers", "0",
                 "--default_root_dir", str(fresh)]
    return [
        ("no data path", common, ["no data path", "--data_path", "fastmri-growth-synth"]),
        ("missing data path", ["--data_path", str(tmp / "nope")] + common,
         ["does not exist", str(tmp / "nope"), "fastmri-growth-synth"]),
        ("no h5 files", ["--data_path", str(empty)] + common,
         ["holds no .h5 files", str(empty / "singlecoil_train")]),
        ("no kspace", ["--data_path", str(tmp / "no_kspace")] + common,
         ["no 'kspace' dataset", "no_kspace"]),
        ("no header", ["--data_path", str(tmp / "no_header")] + common,
         ["no 'ismrmrd_header'", "no_header", "(`fastmri-growth-synth` writes it)"]),
        ("wrong challenge", data + common + ["--challenge", "multicoil"],
         ["multicoil_train", "fastmri-growth-synth --out DIR --challenges knee_multicoil"]),
        ("mask lengths", data + common + ["--center_fractions", "0.08",
                                          "--accelerations", "4", "8"],
         ["--center_fractions has 1", "--accelerations has 2"]),
        ("test without checkpoint", data + ["--mode", "test", "--default_root_dir", str(fresh),
                                            *TINY_ARGS],
         ["--mode test", "no .ckpt", "--ckpt_path"]),
        ("missing ckpt_path", data + common + ["--ckpt_path", str(tmp / "nope.ckpt")],
         ["--ckpt_path", "nope.ckpt"]),
        ("broken checkpoint", data + common + ["--ckpt_path", str(broken)],
         ["cannot read checkpoint", "broken.ckpt"]),
        ("checkpoint without a U-Net", data + ["--mode", "test", "--ckpt_path", str(foreign),
                                               "--default_root_dir", str(fresh)],
         ["cannot load trained weights", "foreign.ckpt"]),
        ("unknown growth layer", data + common + ["--layers-to-grow", "down_9"],
         ["invalid model option", "down_9"]),
        ("other model type", data + ["--default_root_dir", str(run_dir), "--model-type", "unet",
                                     "--accelerator", "cpu", "--num_workers", "0"],
         ["dynamic_unet model", "--model-type dynamic_unet"]),
        ("resume with other pools", data + common + ["--num_pool_layers", "3"],
         [f"checkpoint {run_dir / 'checkpoints' / 'last.ckpt'} has num_pool_layers=2 but "
          "--num_pool_layers is 3; pass --num_pool_layers 2 to resume it, or a new "
          "--default_root_dir"]),
        ("resume with other chans and pools", data + common + [
            "--ckpt_path", str(run_dir / "checkpoints" / "last.ckpt"), "--chans", "8",
            "--num_pool_layers", "1"],
         ["has chans=4, num_pool_layers=2 but --chans is 8, --num_pool_layers is 1; "
          "pass --chans 4 --num_pool_layers 2"]),
        ("resume a fixed U-Net with other chans", data + unet_args + [
            "--ckpt_path", str(unet_ckpt), "--chans", "8", "--num_pool_layers", "2"],
         ["unet.ckpt has chans=4 but --chans is 8"]),
        ("test with the other model type", data + unet_args + [
            "--mode", "test", "--default_root_dir", str(run_dir)],
         ["holds a dynamic_unet model but --model-type is unet; "
          "pass --model-type dynamic_unet to test it"]),
        ("both sample rates", data + common + ["--sample_rate", "0.5",
                                               "--volume_sample_rate", "0.5"],
         ["--sample_rate", "--volume_sample_rate"]),
        ("budget ends after the run", data + common + [
            "--growth-schedule", "budget", "--target-chans", "8", "--growth-end-epoch", "9",
            "--max_epochs", "9"],
         ["--growth-end-epoch 9 is not before --max_epochs 9", "--growth-end-epoch 8"]),
        ("budget target below the start", data + common + [
            "--growth-schedule", "budget", "--target-chans", "2", "--growth-end-epoch", "1"],
         ["invalid model option", "target_chans=2", "chans=4"]),
        ("budget flag without the budget schedule", data + common + ["--target-params", "9000"],
         ["target_params", "growth_schedule='budget'"]),
        ("no growth batches", data + common + ["--growth-batches", "0"],
         ["growth_batches must be an int >= 1, got 0"]),
        ("too many auto sites", data + common + ["--layers-to-grow", "auto", "--auto-sites", "50"],
         ["auto_sites", "50", "[1, 12]"]),
        ("prune fraction out of range", data + common + [
            "--prune-schedule", "interval", "--prune-fraction", "1.5"],
         ["prune_fraction must be in (0, 1), got 1.5"]),
        ("prune flag without a prune schedule", data + common + ["--prune-n", "2"],
         ["prune_n", "need a prune_schedule"]),
    ]


def test_bad_input_one_line_exit_2_checkpoints_untouched(run_copy, knee_root, tmp_path,
                                                         monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)  # no fastmri_dirs.yaml here
    before = file_hashes(run_copy)
    for name, argv, fragments in _bad_cases(tmp_path, knee_root, run_copy):
        code = train.main(argv)
        out, err = capfd.readouterr()
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert code == 2, (name, err)
        assert len(lines) == 1, (name, err)
        assert lines[0].startswith("fastmri-growth-train: error: "), (name, err)
        assert "Traceback" not in err + out, name
        for fragment in fragments:
            assert fragment in lines[0], (name, fragment, lines[0])
        assert file_hashes(run_copy) == before, name
    assert not (tmp_path / "fresh_run").exists()
    assert not (tmp_path / "fastmri_dirs.yaml").exists()


@pytest.mark.parametrize("argv, fragment", [
    (["--mask_type", "bogus"], "equispaced_fraction"),
    (["--model-type", "vit"], "dynamic_unet"),
    (["--use_dataset_cache_file", "maybe"], "--use_dataset_cache_file"),
    # Trainer flags are typed from pl.Trainer's signature: literals are choices.
    (["--precision", "17"], "invalid choice: '17'"),
    (["--max_epochs", "ten"], "--max_epochs"),
    (["--fan-out-init", "sideways"], "invalid choice: 'sideways'"),
    (["--site-criterion", "per_byte"], "invalid choice: 'per_byte'"),
])
def test_argparse_errors_are_one_line(argv, fragment, capsys):
    with pytest.raises(SystemExit) as exc:
        train.main(argv)
    assert exc.value.code == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and fragment in lines[0], lines


def test_bad_input_in_a_real_process(trained_run, knee_root):
    run_dir = trained_run[0]
    before = file_hashes(run_dir / "checkpoints")
    proc = run_cli(["--data_path", knee_root, "--default_root_dir", run_dir, *TINY_ARGS,
                    "--center_fractions", "0.08", "--accelerations", "4", "8"], cwd=run_dir.parent)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert "--center_fractions has 1" in lines[0] and "Traceback" not in proc.stderr
    assert file_hashes(run_dir / "checkpoints") == before


# -------------------------------------------------------------------- demo


TINY_DEMO_SPEC = {
    "challenges": ["knee_singlecoil"],
    "splits": ["train", "val", "test"],
    "num_volumes": {"train": 2, "val": 2, "test": 1},
    "num_slices": 2,
    "recon_size": 64,
    "seed": 0,
}


def test_demo_end_to_end_and_rerun(tmp_path, monkeypatch, capsys):
    """``make demo`` at toy size: all five steps, then a re-run beside the first."""
    from fastmri_growth.cli import demo

    monkeypatch.setattr(demo, "DATA_SPEC", TINY_DEMO_SPEC)
    monkeypatch.chdir(tmp_path)
    argv = ["--out", "out", "--max-epochs", "2", "--chans", "4", "--num-pool-layers", "2",
            "--growth-interval", "1", "--n-new", "1"]
    assert demo.main(argv) == 0
    out = capsys.readouterr().out
    runs = sorted((tmp_path / "out").glob("run_*"))
    assert len(runs) == 1
    run = runs[0]
    summary = __import__("json").loads((run / "summary.json").read_text())
    assert summary["growth_epochs"] == [1]
    assert summary["final_params"] > unet_numel(
        __import__("fastmri_growth.pl_modules", fromlist=["x"]).DynamicUnetModule(
            chans=4, num_pool_layers=2).state_dict())
    assert set(summary["leaderboard_ssim"]) == {"4x", "8x"}
    assert len(list((run / "reconstructions").glob("*.h5"))) == 1
    for sub in ("leaderboard/4x", "leaderboard/8x"):
        assert len(list((run / sub).glob("*.h5"))) == 2
    for png in summary["plots"]:
        assert Path(png).read_bytes()[:4] == b"\x89PNG"
    assert str(run) in out and "summary" in out
    data_files = file_hashes(tmp_path / "out" / "data")

    # A second run reuses the data and leaves the first run alone.
    first_run = file_hashes(run)
    argv[argv.index("--max-epochs") + 1] = "1"  # the re-run only needs to finish
    assert demo.main(argv) == 0
    assert "reusing the synthetic data" in capsys.readouterr().out
    assert file_hashes(tmp_path / "out" / "data") == data_files
    assert file_hashes(run) == first_run
    assert len(list((tmp_path / "out").glob("run_*"))) == 2
    # Two runs within the same second get distinct folders (not timed: the
    # two runs above may or may not have shared a second).
    stamps = tmp_path / "stamps"
    for expected in ("run_S", "run_S_1", "run_S_2"):
        folder = demo.new_run_dir(stamps, "S")
        assert folder.name == expected
        folder.mkdir(parents=True)


def test_demo_refuses_foreign_data(tmp_path, monkeypatch, capsys):
    from fastmri_growth.cli import demo

    monkeypatch.setattr(demo, "DATA_SPEC", TINY_DEMO_SPEC)
    data = tmp_path / "data"
    (data / "knee" / "singlecoil_train").mkdir(parents=True)
    (data / "knee" / "singlecoil_train" / "mine.h5").write_bytes(b"precious")
    with pytest.raises(demo.DemoError, match="not a complete demo data set"):
        demo.ensure_data(data)
    assert (data / "knee" / "singlecoil_train" / "mine.h5").read_bytes() == b"precious"
    code = demo.main(["--out", str(tmp_path)])
    assert code == 1
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "not a complete demo data set" in err[0]
