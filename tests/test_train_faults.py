"""The command lines under faults: broken data, full and read-only disks, kills, bad flags.

Each test answers one finding of the fault review of ``fastmri-growth-train``
and ``fastmri-growth-eval`` (tiny runs: chans 4, 2 pools, 64x64 images).
Bad input must give exit status 2, one line on stderr, and leave every file
as it was (no run folder, no logs, no dataset cache). A fault met while
training (NaN data, a full disk) gives exit status 1 and one line, with
the checkpoints written before it intact. Most runs call ``main`` in this
process; the kill -9 and full-disk tests run the command in a subprocess.
The library side of the same faults is in ``tests/test_faults.py``.
"""
import errno
import hashlib
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from fastmri_growth.cli import (data_checks, evaluate, run_checks, train, train_checks,
                                train_parser, train_setup)

REPO = Path(__file__).resolve().parents[1]
PROG_ERROR = "fastmri-growth-train: error: "

#: Flags of every run here: a tiny growing U-Net on the CPU, growth at epoch 1.
TINY = [
    "--challenge", "singlecoil", "--chans", "4", "--num_pool_layers", "2",
    "--accelerator", "cpu", "--devices", "1", "--num_workers", "0",
    "--use_dataset_cache_file", "false",
]


# ------------------------------------------------------------------ helpers


def tree_hashes(folder: Path) -> dict:
    """``{relative path: sha256}`` of every file below ``folder``."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def run_main(argv, capfd):
    """``train.main(argv)`` in this process: ``(exit status, stdout, non-empty stderr lines)``."""
    code = train.main([str(a) for a in argv])
    out, err = capfd.readouterr()
    return code, out, [ln for ln in err.splitlines() if ln.strip()]


def cli_env(tmpdir: Path = None) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    if tmpdir is not None:
        env["TMPDIR"] = str(tmpdir)
    return env


def cli_cmd(args):
    return [sys.executable, "-m", "fastmri_growth.cli.train", *map(str, args)]


def run_cli(args, cwd, timeout=300, tmpdir=None):
    return subprocess.run(cli_cmd(args), cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=cli_env(tmpdir))


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def last_epoch(run: Path) -> int:
    """The epoch of ``run``'s last.ckpt (-1 while there is none; the file is written atomically)."""
    try:
        return int(load(run / "checkpoints" / "last.ckpt")["epoch"])
    except (FileNotFoundError, RuntimeError, EOFError, KeyError):
        return -1


def assert_fault(code, out, err, fragments):
    """A fault that stopped a run: exit 1, one error line last on stderr, no traceback."""
    assert code == 1, err
    assert err and err[-1].startswith(PROG_ERROR), err
    assert sum(ln.startswith(PROG_ERROR) for ln in err) == 1, err
    assert "Traceback" not in out + "\n".join(err)
    for fragment in fragments:
        assert fragment in err[-1], (fragment, err[-1])


def max_weight_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    assert all(a[k].shape == b[k].shape for k in a)
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


@pytest.fixture(scope="module")
def knee(tiny_knee_root):
    """Tiny single-coil knee data (see ``tiny_knee_root``); read only."""
    return tiny_knee_root


@pytest.fixture(scope="module")
def trained(knee, tmp_path_factory):
    """A two-epoch growing run (growth at epoch 1), trained in this process."""
    run = tmp_path_factory.mktemp("faults_run") / "run"
    code = train.main(["--data_path", str(knee), "--default_root_dir", str(run),
                       "--max_epochs", "2", *TINY])
    assert code == 0
    return run


@pytest.fixture
def run_copy(trained, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(trained, dst)
    return dst


def poison(root: Path, split: str, index: int = 1, slice_num: int = 1) -> str:
    """Put a NaN into one slice's k-space of a split's ``index``-th file; returns its name."""
    f = sorted((root / f"singlecoil_{split}").glob("*.h5"))[index]
    with h5py.File(f, "r+") as hf:
        k = hf["kspace"][()]
        k[slice_num, 3, 4] = np.nan
        hf["kspace"][...] = k
    return f.name


@pytest.fixture(scope="module")
def poisoned(knee, tmp_path_factory):
    """The knee data with NaN k-space in slice 1 of the second training file."""
    root = tmp_path_factory.mktemp("poisoned") / "knee"
    shutil.copytree(knee, root)
    return root, poison(root, "train")


def mount_tmpfs(where: Path, size: str = "2m", options: str = "") -> None:
    """Mount a small tmpfs at ``where`` (skips the test where this machine does not allow it)."""
    where.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (f",{options}" if options else "")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or proc.returncode}): "
                    "full and read-only disks are covered without a mount elsewhere")


def fill(path: Path) -> None:
    """Write ``path`` until its file system is full (unbuffered: closing writes nothing more)."""
    with open(path, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as err:
            assert err.errno == errno.ENOSPC


@pytest.fixture
def tmpfs(tmp_path):
    """A 2 MiB tmpfs mounted for the test (unmounted afterwards)."""
    mnt = tmp_path / "mnt"
    mount_tmpfs(mnt)
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


# ------------------------------------------------------- 1. non-finite data


def test_nan_kspace_stops_at_its_slice_before_any_checkpoint(poisoned, tmp_path, capfd):
    root, bad = poisoned
    run = tmp_path / "run"
    argv = ["--data_path", root, "--default_root_dir", run, "--max_epochs", "2", *TINY]
    for attempt in range(2):  # a rerun finds no poisoned checkpoint to resume
        code, out, err = run_main(argv, capfd)
        assert_fault(code, out, err, [f"{bad} slice 1", "non-finite gradient", "epoch 0",
                                      "--skip-nonfinite-batches"])
        assert "Growth" not in err[-1] and "Resuming" not in out
        assert not list(run.rglob("*.ckpt")), "no checkpoint of the poisoned step"
    # fastMRI's fixed U-Net: the same guard (it used to exit 0 with validation_loss nan).
    code, out, err = run_main(["--model-type", "unet", "--data_path", root, "--default_root_dir",
                               tmp_path / "unet", "--max_epochs", "1", "--chans", "4",
                               "--num_pool_layers", "2", "--accelerator", "cpu",
                               "--num_workers", "0", "--use_dataset_cache_file", "false"], capfd)
    assert_fault(code, out, err, [f"{bad} slice 1", "non-finite gradient"])
    assert not list((tmp_path / "unet").rglob("*.ckpt"))


def test_nan_validation_data_stop_before_the_first_checkpoint(knee, tmp_path, capfd):
    root = tmp_path / "knee"
    shutil.copytree(knee, root)
    bad = poison(root, "val", index=0, slice_num=0)
    run = tmp_path / "run"
    code, out, err = run_main(["--data_path", root, "--default_root_dir", run,
                               "--max_epochs", "1", *TINY], capfd)
    assert_fault(code, out, err, [f"{bad} slice 0", "non-finite validation output"])
    assert not list(run.rglob("*.ckpt"))


def test_nan_test_data_stop_before_their_reconstruction_is_written(trained, knee, tmp_path,
                                                                    capfd):
    root = tmp_path / "knee"
    shutil.copytree(knee, root)
    bad = poison(root, "test", index=0, slice_num=0)
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    code, out, err = run_main(["--mode", "test", "--data_path", root, "--default_root_dir", run,
                               *TINY], capfd)
    assert_fault(code, out, err, [f"non-finite reconstruction of {bad} slice 0"])
    assert not (run / "reconstructions" / bad).exists()


def test_skip_nonfinite_batches_trains_on_and_reports_them(poisoned, tmp_path, capfd):
    root, bad = poisoned
    run = tmp_path / "run"
    # growth_batches 8 > 4 slices: every growth event draws the bad slice to score on.
    code, out, err = run_main(["--data_path", root, "--default_root_dir", run,
                               "--max_epochs", "2", "--skip-nonfinite-batches", "true", *TINY],
                              capfd)
    assert code == 0, err
    assert f"[epoch 0] skipped 1 batch(es) with non-finite gradients: {bad} slice 1" in out
    assert f"scoring batch(es) with non-finite inputs out of the growth event: {bad} slice 1" in out
    assert "skipped batches:  2 training step(s) with non-finite gradients" in out
    assert "[epoch 1] network:" in out  # growth went ahead on the finite batches
    state = load(run / "checkpoints" / "last.ckpt")["state_dict"]
    assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())


# ------------------------------------------- 2., 3., 5., 8. flags and folders up front


def _bad_input_cases(tmp: Path, knee: Path, run: Path):
    """``(name, argv, fragments of the one error line)`` for bad input found up front."""
    data = ["--data_path", str(knee)]
    fresh = ["--default_root_dir", str(tmp / "fresh"), *TINY]
    resume = ["--default_root_dir", str(run), *TINY]
    afile = tmp / "a_file"
    afile.write_text("not a folder")
    junk = tmp / "junk.pt"
    junk.write_bytes(b"not torch")
    nan_ckpt = tmp / "nan.ckpt"
    ckpt = load(run / "checkpoints" / "last.ckpt")
    ckpt["state_dict"]["unet.up_conv.1.1.weight"][0] = float("nan")
    torch.save(ckpt, nan_ckpt)
    from fastmri.models import Unet, VarNet

    wide = tmp / "unet8.pt"
    torch.save(Unet(1, 1, 8, 2).state_dict(), wide)
    varnet = tmp / "varnet.pt"
    torch.save(VarNet(num_cascades=1, sens_chans=2, sens_pools=1, chans=2, pools=1).state_dict(),
               varnet)
    return [
        # 2. checked too late
        ("split noise negative", data + fresh + ["--growth-method", "split",
                                                 "--split-noise", "-1"],
         ["split_noise must be a finite float >= 0", "-1.0"]),
        ("split noise nan", data + fresh + ["--growth-method", "split", "--split-noise", "nan"],
         ["split_noise", "nan"]),
        ("pools too deep for the images", data + fresh + ["--num_pool_layers", "7"],
         ["--num_pool_layers 7 is too deep for the 64x64 images of",
          "singlecoil_train/file1000000.h5", "pass --num_pool_layers 5 or less"]),
        # 3. silently doing nothing
        ("progressive schedule without the progressive schedule",
         data + fresh + ["--progressive-schedule", "1:down_0"],
         ["--progressive-schedule applies to --growth-schedule progressive, not interval"]),
        ("layers under the progressive schedule", data + fresh + [
            "--growth-schedule", "progressive", "--progressive-schedule", "1:down_0",
            "--layers-to-grow", "bottleneck"],
         ["--layers-to-grow does not apply to --growth-schedule progressive"]),
        ("progressive epoch beyond the run", data + fresh + [
            "--growth-schedule", "progressive", "--progressive-schedule", "1:down_0;5:up_1",
            "--max_epochs", "3"],
         ["grows at epoch 5, which --max_epochs 3 never reaches", "--max_epochs 6"]),
        ("plateau flag under interval", data + fresh + ["--plateau-patience", "3"],
         ["--plateau-patience applies to --growth-schedule plateau, not interval"]),
        ("interval flag under progressive", data + fresh + [
            "--growth-schedule", "progressive", "--progressive-schedule", "1:down_0",
            "--growth-interval", "2"],
         ["--growth-interval applies to --growth-schedule interval, budget or auto, not progressive"]),
        ("n-new under budget", data + fresh + [
            "--growth-schedule", "budget", "--target-chans", "8", "--growth-end-epoch", "2",
            "--max_epochs", "3", "--n-new", "2"],
         ["--n-new applies to", "not budget"]),
        ("method option of another method", data + fresh + ["--split-noise", "0.1"],
         ["--split-noise is an option of --growth-method split, not sample_select"]),
        ("prune flag of another prune schedule", data + fresh + [
            "--prune-schedule", "epochs", "--prune-epochs", "1", "--prune-n", "1",
            "--prune-interval", "2"],
         ["--prune-interval applies to --prune-schedule interval, not epochs"]),
        ("prune flag without a prune schedule", data + fresh + ["--min-width", "2"],
         ["--min-width needs a --prune-schedule"]),
        ("prune count under exchange", data + fresh + ["--prune-schedule", "exchange",
                                                       "--prune-n", "2"],
         ["--prune-n applies to --prune-schedule interval or epochs, not exchange"]),
        # 5. unwritable run folder; 8. a data path that is a file
        ("root dir below a file", data + ["--default_root_dir", str(afile / "run"), *TINY],
         [f"--default_root_dir {afile / 'run'}: {afile} is a file, not a folder"]),
        ("data path is a file", ["--data_path", str(afile)] + fresh,
         [f"data path {afile} (from --data_path) is a file, not a folder"]),
        # test mode's --ckpt
        ("--ckpt when training", data + fresh + ["--ckpt", "best"],
         ["--ckpt best selects the weights of --mode test", "--ckpt_path"]),
        ("--ckpt and --ckpt_path", data + resume + ["--mode", "test", "--ckpt", "last",
                                                    "--ckpt_path", str(nan_ckpt)],
         ["pass only one of them"]),
        ("--ckpt best without a best", data + ["--mode", "test", "--ckpt", "best",
                                               "--default_root_dir", str(tmp / "fresh")],
         ["--ckpt best: no best checkpoint"]),
        ("--ckpt of a missing file", data + resume + ["--mode", "test", "--ckpt",
                                                      str(tmp / "nope.ckpt")],
         ["--ckpt", "nope.ckpt is not a file"]),
        ("checkpoint with NaN weights", data + fresh + ["--ckpt_path", str(nan_ckpt)],
         [f"checkpoint {nan_ckpt} cannot be used: 1 weight tensor(s) hold NaN or Inf "
          "(first: unet.up_conv.1.1.weight)"]),
        # --init-from
        ("--init-from a missing file", data + fresh + ["--init-from", str(tmp / "nope.pt")],
         ["--init-from", "nope.pt is not a file"]),
        ("--init-from junk", data + fresh + ["--init-from", str(junk)],
         ["cannot read --init-from", "junk.pt"]),
        ("--init-from other chans", data + fresh + ["--init-from", str(wide)],
         ["holds a network with chans=8 but --chans is 4", "drop --chans"]),
        ("--init-from a VarNet for a U-Net", data + fresh + ["--init-from", str(varnet)],
         ["holds no U-Net for --model-type dynamic_unet"]),
        ("--init-from in test mode", data + resume + ["--mode", "test", "--init-from",
                                                      str(wide)],
         ["--init-from", "in test mode pass --ckpt_path"]),
    ]


def test_bad_input_is_one_line_exit_2_and_writes_nothing(trained, knee, tmp_path, monkeypatch,
                                                         capfd):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    cases = _bad_input_cases(tmp_path, knee, run)
    before = tree_hashes(tmp_path)
    data_before = tree_hashes(knee)
    for name, argv, fragments in cases:
        code, out, err = run_main(argv, capfd)
        assert code == 2, (name, err)
        assert len(err) == 1 and err[0].startswith(PROG_ERROR), (name, err)
        assert "Traceback" not in out, name
        for fragment in fragments:
            assert fragment in err[0], (name, fragment, err[0])
        assert tree_hashes(tmp_path) == before, name
    assert tree_hashes(knee) == data_before
    assert not (tmp_path / "fresh").exists() and not (tmp_path / "dataset_cache.pkl").exists()


def test_full_root_dir_is_refused_up_front(knee, tmp_path, monkeypatch, capfd):
    from fastmri_growth.pl_modules import DynamicUnetModule

    monkeypatch.setattr(run_checks, "free_bytes", lambda path: 100_000)
    code, out, err = run_main(["--data_path", knee, "--default_root_dir", tmp_path / "run",
                               *TINY], capfd)
    assert code == 2 and len(err) == 1, err
    params = sum(p.numel() for p in DynamicUnetModule(chans=4, num_pool_layers=2).parameters())
    assert "0.1 MiB free on its file system" in err[0] and f"{params:,}-parameter" in err[0]
    assert not (tmp_path / "run").exists()


def test_read_only_and_full_mounts_are_refused_up_front(knee, tmp_path, tmpfs, monkeypatch,
                                                        capfd):
    (tmpfs / "run" / "checkpoints").mkdir(parents=True)
    ro = subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], capture_output=True)
    if ro.returncode != 0:
        pytest.skip("cannot remount the tmpfs read-only here")
    for root in (tmpfs / "run", tmpfs / "new" / "run"):
        code, out, err = run_main(["--data_path", knee, "--default_root_dir", root, *TINY], capfd)
        assert code == 2 and len(err) == 1, err
        assert "is on a read-only file system; pass a writable --default_root_dir" in err[0]
    monkeypatch.chdir(tmpfs)  # the dataset cache goes to the working directory
    argv = ["--data_path", knee, "--default_root_dir", tmp_path / "run", *TINY[:-2]]
    code, out, err = run_main(argv, capfd)
    assert code == 2 and "the dataset cache" in err[0] and "--use_dataset_cache_file false" in \
        err[0], err
    subprocess.run(["mount", "-o", "remount,rw", str(tmpfs)], check=True)
    fill(tmpfs / "filler")
    code, out, err = run_main(["--data_path", knee, "--default_root_dir", tmpfs / "run", *TINY],
                              capfd)
    assert code == 2 and len(err) == 1 and "free on its file system" in err[0], err
    assert not (tmp_path / "run").exists() and not list((tmpfs / "run").rglob("*.*"))


def test_a_run_that_will_never_grow_says_so(knee, tmp_path, capfd):
    code, out, err = run_main(["--data_path", knee, "--default_root_dir", tmp_path / "run",
                               "--max_epochs", "2", "--max-width", "2", *TINY], capfd)
    assert code == 0
    assert ("fastmri-growth-train: warning: this run will never grow: --max-width 2 is not above "
            "the width of any site to grow (the narrowest, down_0:0, has 4 filters)") in err
    ckpt = load(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert ckpt["dynamic_unet"]["widths"]["down_0"] == {"conv1_out": 4, "conv2_out": 4}
    # The other ways a run never grows, as the warning reads them (no training needed).
    for flags, reason in (
        (["--max-growth-steps", "0"], "--max-growth-steps is 0"),
        (["--growth-start-epoch", "5"], "no growth epoch before --max_epochs 2"),
        (["--growth-schedule", "plateau", "--growth-start-epoch", "3"],
         "no growth epoch before --max_epochs 2 (--growth-start-epoch 3"),
    ):
        args = train_parser.parse_args(["--data_path", str(knee), "--default_root_dir",
                                 str(tmp_path / "other"), "--max_epochs", "2", *TINY, *flags])
        train_checks.validate_args(args)
        assert reason in train_checks.never_grows_reason(args, train_setup.prepare_module(args))
    args = train_parser.parse_args(["--data_path", str(knee), "--default_root_dir",
                             str(tmp_path / "other"), "--max_epochs", "3", *TINY])
    train_checks.validate_args(args)
    assert train_checks.never_grows_reason(args, train_setup.prepare_module(args)) is None


@pytest.fixture(scope="module")
def multicoil(tmp_path_factory):
    """One multicoil knee volume per split (train, val), one slice, two coils."""
    from fastmri_growth.data.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("multicoil")
    generate_dataset(root, challenges=("knee_multicoil",), splits=("train", "val"),
                     num_volumes=1, num_slices=1, recon_size=64, num_coils=2, seed=0)
    return root / "knee"


def _varnet_argv(multicoil, run):
    return ["--model-type", "dynamic_varnet", "--data_path", multicoil, "--default_root_dir",
            run, "--accelerator", "cpu", "--num_workers", "0", "--use_dataset_cache_file",
            "false"]


def test_varnet_pools_too_deep_for_the_kspace_grid(multicoil, tmp_path, capfd):
    with h5py.File(next((multicoil / "multicoil_train").glob("*.h5")), "r") as hf:
        h, w = hf["kspace"].shape[-2:]
    pad = (((h - 1) | 15) + 1, ((w - 1) | 15) + 1)  # NormUnet pads to multiples of 16
    fits = data_checks.max_pool_layers(*pad)
    base = _varnet_argv(multicoil, tmp_path / "run") + [
        "--num_cascades", "1", "--chans", "2", "--sens_chans", "2"]
    for flags, bad in ((["--pools", str(fits + 1), "--sens_pools", "1"], "--pools"),
                       (["--pools", "1", "--sens_pools", str(fits + 1)], "--sens_pools")):
        code, out, err = run_main(base + flags, capfd)
        assert code == 2 and len(err) == 1, err
        assert f"{bad} {fits + 1} is too deep for the {pad[0]}x{pad[1]} k-space grids" in err[0]
        assert f"pass {bad} {fits} or less" in err[0]
    assert not (tmp_path / "run").exists()


def test_init_from_a_fastmri_varnet_state_dict(multicoil, tmp_path):
    from fastmri.models import VarNet

    torch.manual_seed(5)
    varnet = VarNet(num_cascades=2, sens_chans=2, sens_pools=1, chans=3, pools=2)
    torch.save(varnet.state_dict(), tmp_path / "varnet.pt")
    args = train_parser.parse_args([str(a) for a in _varnet_argv(multicoil, tmp_path / "run") + [
        "--init-from", tmp_path / "varnet.pt"]])
    train_checks.validate_args(args)
    assert (args.num_cascades, args.chans, args.pools, args.sens_chans, args.sens_pools) == (
        2, 3, 2, 2, 1)  # the architecture follows the file
    module = train_setup.prepare_module(args)
    assert max_weight_diff(module.varnet.state_dict(), varnet.state_dict()) == 0.0
    assert not (tmp_path / "run").exists()


def test_max_pool_layers_matches_what_trains():
    from fastmri_growth.models import DynamicUnet

    for h, w in ((64, 64), (24, 40), (17, 23), (12, 12), (320, 320)):
        fits = data_checks.max_pool_layers(h, w)
        for pools in (fits, fits + 1):
            net = DynamicUnet(1, 1, 2, pools).train()
            try:
                net(torch.randn(1, 1, h, w))
                ok = True
            except (ValueError, RuntimeError):
                ok = False
            assert ok == (pools == fits), (h, w, pools)


# ------------------------------------------------------------- 4. checkpoints


def test_full_disk_while_checkpointing_keeps_the_earlier_checkpoints(knee, tmp_path, monkeypatch,
                                                                     capfd):
    from fastmri_growth.pl_modules import checkpoint_io

    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmpdir))
    monkeypatch.setattr(tempfile, "tempdir", None)
    real_save = torch.save
    calls = []

    def disk_fills_at_the_third_save(obj, f):
        calls.append(1)
        if len(calls) > 2:  # epoch 0's best and last fit, epoch 1's do not
            f.write(b"x" * 5000)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f)

    monkeypatch.setattr(checkpoint_io.torch, "save", disk_fills_at_the_third_save)
    run = tmp_path / "run"
    argv = ["--data_path", knee, "--default_root_dir", run, "--max_epochs", "3", *TINY]
    code, out, err = run_main(argv, capfd)
    assert_fault(code, out, err, ["cannot write checkpoint", "no space left on the device",
                                  "intact", "run the same command again"])
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["epoch=0-step=4.ckpt", "last.ckpt"], names  # no partial file
    assert load(run / "checkpoints" / "last.ckpt")["epoch"] == 0
    assert not [p for p in tmpdir.rglob("*") if p.is_file()], "nothing staged in $TMPDIR"
    # Space is back: the same command resumes from the newest intact checkpoint.
    monkeypatch.setattr(checkpoint_io.torch, "save", real_save)
    code, out, err = run_main(argv, capfd)
    assert code == 0, err
    assert f"Resuming from {run / 'checkpoints' / 'last.ckpt'}" in out
    assert load(run / "checkpoints" / "last.ckpt")["epoch"] == 2
    assert len(list((run / "checkpoints").glob("epoch=*.ckpt"))) == 1  # top-1 is one file


def test_full_tmpfs_mid_run_then_resume(tmp_path, tmpfs):
    """A real full disk: a 2 MiB tmpfs fills up after the first checkpoint."""
    from fastmri_growth.data.synthetic import generate_dataset

    generate_dataset(tmp_path / "d", challenges=("knee_singlecoil",), splits=("train", "val"),
                     num_volumes={"train": 4, "val": 1}, num_slices=4, recon_size=64, seed=0)
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    run = tmpfs / "run"
    args = ["--data_path", tmp_path / "d" / "knee", "--default_root_dir", run, "--max_epochs",
            "4", *TINY]
    with open(tmp_path / "out", "w") as out, open(tmp_path / "err", "w") as err:
        proc = subprocess.Popen(cli_cmd(args), cwd=tmp_path, stdout=out, stderr=err,
                                env=cli_env(tmpdir))
        deadline = time.monotonic() + 120
        while last_epoch(run) < 0 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        fill(tmpfs / "filler")
        proc.wait(timeout=120)
    lines = [ln for ln in (tmp_path / "err").read_text().splitlines() if ln.strip()]
    assert proc.returncode == 1, lines
    assert lines[-1].startswith(PROG_ERROR) and "no space left on the device" in lines[-1]
    assert "Traceback" not in "\n".join(lines)
    ckpts = sorted((run / "checkpoints").iterdir())
    assert [p.suffix for p in ckpts] == [".ckpt"] * len(ckpts) and len(ckpts) >= 2
    for p in ckpts:  # every file there is a whole checkpoint
        assert "state_dict" in load(p)
    assert not [p for p in tmpdir.rglob("*") if p.is_file()]
    (tmpfs / "filler").unlink()
    proc = run_cli(args, cwd=tmp_path, tmpdir=tmpdir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Resuming from" in proc.stdout and last_epoch(run) == 3


def test_resume_skips_broken_checkpoints_and_says_which(run_copy, knee, capfd):
    ckdir = run_copy / "checkpoints"
    (best,) = ckdir.glob("epoch=*.ckpt")
    last = ckdir / "last.ckpt"
    truncated = ckdir / "epoch=7-step=99.ckpt"
    truncated.write_bytes(last.read_bytes()[:2000])  # what a full disk used to leave
    os.utime(truncated, ns=(last.stat().st_mtime_ns + 10**9,) * 2)
    args = train_parser.parse_args(["--data_path", str(knee), "--default_root_dir", str(run_copy),
                             "--max_epochs", "3", *TINY])
    train_checks.validate_args(args)
    assert args.ckpt_path == last
    assert "epoch=7-step=99.ckpt (" in args.checkpoint_notes[0]
    assert "using last.ckpt" in args.checkpoint_notes[0]
    # A last.ckpt with NaN weights (written before the guard existed) is skipped too.
    poisoned = load(last)
    poisoned["state_dict"]["unet.up_conv.1.1.bias"][:] = float("nan")
    torch.save(poisoned, last)
    os.utime(last, ns=(truncated.stat().st_mtime_ns - 1,) * 2)
    code, out, err = run_main(["--data_path", knee, "--default_root_dir", run_copy,
                               "--max_epochs", "3", *TINY], capfd)
    assert code == 0, err
    assert "note: skipped broken checkpoint(s)" in out
    assert "last.ckpt (1 weight tensor(s) hold NaN or Inf (first: unet.up_conv.1.1.bias))" in out
    assert f"Resuming from {best}" in out
    # The stale and the broken epoch files are gone: top-1 keeps one.
    names = sorted(p.name for p in ckdir.iterdir())
    assert len([n for n in names if n.startswith("epoch=")]) == 1 and "last.ckpt" in names
    assert load(last)["epoch"] == 2


def test_partial_files_of_a_killed_write_are_removed(run_copy, knee, capfd):
    ckdir = run_copy / "checkpoints"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = ckdir / f".last.ckpt.{dead.pid}.partial"
    stale.write_bytes(b"half a checkpoint")
    code, out, err = run_main(["--data_path", knee, "--default_root_dir", run_copy,
                               "--max_epochs", "3", *TINY], capfd)
    assert code == 0, err
    assert f"removed 1 temporary checkpoint file(s) left by an interrupted run ({stale.name})" \
        in out
    assert not stale.exists()
    # The same command once more: nothing left to train, nothing written.
    before = tree_hashes(run_copy)
    code, out, err = run_main(["--data_path", knee, "--default_root_dir", run_copy,
                               "--max_epochs", "3", *TINY], capfd)
    assert code == 0 and "nothing to train" in out and tree_hashes(run_copy) == before


# ------------------------------------------------------------- 10. exact resume


@pytest.fixture(scope="module")
def longer_epochs(tmp_path_factory):
    """16 training slices, so that a kill lands inside an epoch."""
    from fastmri_growth.data.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("kill_data")
    generate_dataset(root, challenges=("knee_singlecoil",), splits=("train", "val"),
                     num_volumes={"train": 4, "val": 1}, num_slices=4, recon_size=64, seed=0)
    return root / "knee"


def test_kill_9_after_a_growth_event_resumes_to_the_same_weights(longer_epochs, tmp_path):
    args = ["--data_path", longer_epochs, "--max_epochs", "4", "--deterministic", "true",
            "--growth-batches", "3", *TINY]
    reference = run_cli(args + ["--default_root_dir", tmp_path / "ref"], cwd=tmp_path)
    assert reference.returncode == 0, reference.stderr[-2000:]
    # Quiet output: no Lightning tips or internal warnings, no progress bar in a log.
    for noise in ("Tip:", "LeafSpec", "smaller than the logging interval", "it/s]"):
        assert noise not in reference.stdout + reference.stderr, noise

    run = tmp_path / "killed"
    with open(tmp_path / "killed.out", "w") as out:
        proc = subprocess.Popen(cli_cmd(args + ["--default_root_dir", run]), cwd=tmp_path,
                                stdout=out, stderr=subprocess.STDOUT, env=cli_env())
        deadline = time.monotonic() + 120
        while last_epoch(run) < 1 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        # Somewhere in epoch 2 (or its growth event, or its checkpoint write).
        time.sleep(random.Random(14).uniform(0.0, 0.4))
        assert proc.poll() is None, "the run ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    killed_at = last_epoch(run)
    assert 1 <= killed_at < 3
    resumed = run_cli(args + ["--default_root_dir", run], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"Resuming from {run / 'checkpoints' / 'last.ckpt'}" in resumed.stdout

    ref, res = (load(r / "checkpoints" / "last.ckpt") for r in (tmp_path / "ref", run))
    assert ref["dynamic_unet"] == res["dynamic_unet"]  # same widths
    assert max_weight_diff(ref["state_dict"], res["state_dict"]) <= 1e-6
    ref_cb, res_cb = (dict(c["callbacks"]["GrowthCallback"]) for c in (ref, res))
    ref_ramp, res_ramp = ref_cb.pop("ramp"), res_cb.pop("ramp")
    assert ref_cb == res_cb
    assert ref_ramp.keys() == res_ramp.keys()
    for name, rec in ref_ramp.items():  # the update ramp's masks and step counts
        assert torch.equal(rec["mask"], res_ramp[name]["mask"]), name
        assert (rec["steps"], rec["epoch"]) == (res_ramp[name]["steps"], res_ramp[name]["epoch"])

    def growth_lines(text, after):
        """The growth reports of the epochs after ``after``, without their timing."""
        return [re.sub(r"growth took [0-9.]+ s", "", ln) for ln in text.splitlines()
                if ln.startswith("[epoch ") and int(ln[7:ln.index("]")]) > after]

    assert growth_lines(resumed.stdout, killed_at) == growth_lines(reference.stdout, killed_at)
    assert growth_lines(reference.stdout, killed_at)  # growth happened after the kill point

    def last_validation(text):
        return [ln for ln in text.splitlines() if "last validation:" in ln]

    assert last_validation(resumed.stdout) == last_validation(reference.stdout)
    # log_every_n_steps fitted to the 16-step epochs: every epoch logged its training loss.
    import csv

    with open(tmp_path / "ref" / "csv_logs" / "version_0" / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("loss")]
    assert {int(r["epoch"]) for r in rows} == {0, 1, 2, 3}


# ------------------------------------------------------------- --init-from, --ckpt


def test_init_from_a_fastmri_unet_checkpoint_or_state_dict(knee, tmp_path, capfd):
    import pytorch_lightning as pl
    from fastmri.models import Unet

    from fastmri_growth.pl_modules import UnetModule

    torch.manual_seed(3)
    fixed = UnetModule(chans=4, num_pool_layers=2)
    ckpt = tmp_path / "unet_module.ckpt"
    torch.save({"state_dict": fixed.state_dict(), "hyper_parameters": dict(fixed.hparams),
                "pytorch-lightning_version": pl.__version__}, ckpt)
    common = ["--data_path", knee, "--accelerator", "cpu", "--num_workers", "0",
              "--use_dataset_cache_file", "false", "--lr", "0"]  # lr 0: the weights stay
    code, out, err = run_main(["--model-type", "unet", "--init-from", ckpt, "--max_epochs", "1",
                               "--default_root_dir", tmp_path / "fixed", *common], capfd)
    assert code == 0, err
    trained = load(tmp_path / "fixed" / "checkpoints" / "last.ckpt")
    assert trained["hyper_parameters"]["chans"] == 4  # read from the file
    assert max_weight_diff(trained["state_dict"], fixed.state_dict()) == 0.0

    # A bare state dict (as fastMRI's pretrained files), grown with more new
    # filters per event than candidates per filter.
    torch.manual_seed(4)
    bare = Unet(1, 1, 4, 2).state_dict()
    torch.save(bare, tmp_path / "unet.pt")
    code, out, err = run_main(["--init-from", tmp_path / "unet.pt", "--max_epochs", "2",
                               "--layers-to-grow", "bottleneck:0", "--n-new", "3",
                               "--n-candidates", "2", "--default_root_dir", tmp_path / "grow",
                               *common], capfd)
    assert code == 0, err
    grown = load(tmp_path / "grow" / "checkpoints" / "last.ckpt")
    assert grown["dynamic_unet"]["widths"]["bottleneck"] == {"conv1_out": 19, "conv2_out": 16}
    for key, value in bare.items():
        new = grown["state_dict"]["unet." + key]
        assert torch.equal(new[tuple(slice(0, n) for n in value.shape)], value), key


def test_test_mode_ckpt_best_last_or_path(trained, knee, tmp_path, capfd):
    ckdir = trained / "checkpoints"
    (best,) = ckdir.glob("epoch=*.ckpt")
    for choice, expected in (("last", ckdir / "last.ckpt"), ("best", best), (str(best), best)):
        args = train_parser.parse_args(["--mode", "test", "--data_path", str(knee), "--default_root_dir",
                                 str(trained), "--ckpt", choice, *TINY])
        train_checks.validate_args(args)
        assert args.ckpt_path == expected, choice
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    code, out, err = run_main(["--mode", "test", "--data_path", knee, "--default_root_dir", run,
                               "--ckpt", "best", *TINY], capfd)
    assert code == 0, err
    assert f"Testing weights from {run / 'checkpoints' / best.name} (--ckpt best" in out
    assert len(list((run / "reconstructions").glob("*.h5"))) == 2


# ------------------------------------------------------------- 6., 7. evaluation CLI


def _eval(argv, capfd):
    code = evaluate.main([str(a) for a in argv])
    out, err = capfd.readouterr()
    return code, out, [ln for ln in err.splitlines() if ln.strip()]


def test_leaderboard_checks_the_data_before_running(trained, knee, tmp_path, capfd):
    ckpt = trained / "checkpoints" / "last.ckpt"
    out_dir = tmp_path / "lb"
    cases = [
        (["--data-path", knee / "singlecoil_val", "--challenge", "multicoil"],
         ["has 3-d kspace but --challenge multicoil expects 4-d", "--challenge singlecoil"]),
        (["--data-path", knee / "singlecoil_test", "--challenge", "singlecoil"],
         ["holds no 'reconstruction_esc' target (an under-sampled test/challenge file)",
          "pass a val split"]),
        (["--data-path", knee, "--challenge", "multicoil"], ["no multicoil_val folder"]),
    ]
    nan = tmp_path / "nan.ckpt"
    poisoned = load(ckpt)
    poisoned["state_dict"]["unet.up_conv.1.1.weight"][0] = float("inf")
    torch.save(poisoned, nan)
    for argv, fragments in cases + [
            (["--checkpoint", nan, "--data-path", knee / "singlecoil_val", "--challenge",
              "singlecoil"], ["hold NaN or Inf", "its reconstructions would be NaN"])]:
        full = ["leaderboard", "--out", out_dir] + (
            argv if "--checkpoint" in argv else ["--checkpoint", ckpt] + argv)
        code, out, err = _eval(full, capfd)
        assert code == 2 and len(err) == 1, err
        assert "Traceback" not in out and "mask_func" not in err[0]
        for fragment in fragments:
            assert fragment in err[0], (fragment, err[0])
        assert not out_dir.exists()


def test_compare_refuses_a_nan_reconstruction_naming_it(knee, tmp_path, capfd):
    preds = tmp_path / "preds"
    preds.mkdir()
    for f in sorted((knee / "singlecoil_val").glob("*.h5")):
        with h5py.File(f, "r") as hf:
            rec = hf["reconstruction_esc"][()]
        if f.name.endswith("0.h5"):
            rec[1, 5, 5] = np.nan
            bad = f.name
        with h5py.File(preds / f.name, "w") as hf:
            hf["reconstruction"] = rec
    code, out, err = _eval(["--target-path", knee / "singlecoil_val", "--predictions-path", preds,
                            "--challenge", "singlecoil"], capfd)
    assert code == 2 and len(err) == 1, err
    assert f"{preds / bad} holds 1 NaN or infinite value(s)" in err[0]
    assert "n/a" not in out
