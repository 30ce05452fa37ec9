"""patches/ on a fastMRI tree: they apply in order, and fastMRI then runs on Lightning 2.

The fastmri 0.3.0 source distribution (downloaded once with pip and cached
under ``~/.cache/fastmri_growth/``) carries ``fastmri/``, ``fastmri_examples/``
and fastMRI's ``tests/``. It is extracted, committed to a scratch git
repository and patched with ``git apply``. Everything that runs the patched
code does so in a subprocess whose ``PYTHONPATH`` starts with the patched
tree, so its ``fastmri`` package is imported, not the installed one (each
subprocess checks that):

- fastMRI's own test suite: the 72 tests that pass on Lightning 1.9 pass,
  3 skip (they need the real fastMRI data);
- the patched ``train_unet_demo.py`` trains and then tests the trained
  checkpoint with ``--model-type unet`` (training on two ddp processes,
  which split the data) and ``--model-type dynamic_unet``, and refuses
  ``--mode test`` without a checkpoint;
- the patched ``train_varnet_demo.py`` grows a VarNet with
  ``--model-type dynamic_varnet`` on multicoil data and tests the grown
  checkpoint, in width and, with the cascade flags, in depth;
- validation metrics equal a volume-wise reference built from
  ``fastmri.evaluate``, and the fixes of 0004 hold.
"""

import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
PATCH_DIR = REPO / "patches"

SDIST_VERSION = "0.3.0"
SDIST_FILE = f"fastmri-{SDIST_VERSION}.tar.gz"
SDIST_SHA256 = "d7a566e5a15f8809baa8924eab8890c232bdf4b04905e53869398bfc610fe1e7"
CACHE_DIR = Path.home() / ".cache" / "fastmri_growth"

PATCHES = (
    "0001-pl_modules-port-to-pytorch-lightning-2.patch",
    "0002-examples-port-unet-and-varnet-demos-to-pytorch-lightning-2.patch",
    "0003-examples-unet-model-type-dynamic_unet.patch",
    "0004-fix-evaluate-printing-requests-import-data-module-flags.patch",
    "0005-v0.3.0-only-tests-numpy2-np-prod.patch",
    "0006-examples-varnet-model-type-dynamic_varnet.patch",
)

# Files that differ between the 0.3.0 release and main (91f2df4): only a
# "v0.3.0-only" patch may touch them, and no patch may touch setup.cfg (the
# sdist's copy was rewritten by setuptools, so one diff cannot fit both).
VERSION_SPECIFIC = (
    "setup.cfg",
    "tests/conftest.py",
    "tests/test_math.py",
    "banding_removal/fastmri/data/test_transforms.py",
    "fastmri/_version.py",
    "README.md",
    "LIST_OF_PAPERS.md",
    "fastMRI_tutorial.ipynb",
    "fastmri_examples/feature_varnet/",
)

SUBPROCESS_TIMEOUT = 900  # a guard against hangs, not a performance check


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def _sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _sdist():
    """The cached fastmri 0.3.0 sdist; downloaded with pip on first use."""
    cached = CACHE_DIR / SDIST_FILE
    if cached.is_file() and _sha256(cached) == SDIST_SHA256:
        return cached
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE_DIR) as tmp:
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary",
             ":all:", f"fastmri=={SDIST_VERSION}", "-d", tmp],
            capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT,
        )
        downloaded = Path(tmp) / SDIST_FILE
        if proc.returncode != 0 or not downloaded.is_file():
            reason = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            pytest.skip(
                f"cannot download the fastmri {SDIST_VERSION} source distribution "
                f"with pip (needed to test patches/): {reason}"
            )
        digest = _sha256(downloaded)
        assert digest == SDIST_SHA256, (
            f"pip downloaded {SDIST_FILE} with sha256 {digest}, expected {SDIST_SHA256}"
        )
        # atomic: a test run killed mid-download never leaves a partial cache
        os.replace(downloaded, cached)
    return cached


def _git(cwd, *args):
    # safe.directory: the extracted files keep the archive's owner
    return subprocess.run(
        ["git", "-c", "safe.directory=*", "-c", "core.autocrlf=false",
         "-c", "commit.gpgsign=false", "-c", "user.name=fastmri-growth tests",
         "-c", "user.email=tests@fastmri-growth.invalid", *args],
        cwd=cwd, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT,
    )


def _fresh_tree(dest):
    """The sdist extracted under ``dest`` and committed to a new git repository."""
    with tarfile.open(_sdist()) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, filter="data")
        else:  # Python < 3.11.4: the archive is pinned by its sha256 above
            tar.extractall(dest)
    tree = Path(dest) / f"fastmri-{SDIST_VERSION}"
    for args in (("init", "-q"), ("add", "-A"), ("commit", "-q", "-m", "fastmri 0.3.0")):
        proc = _git(tree, *args)
        assert proc.returncode == 0, f"git {' '.join(args)} failed: {proc.stderr}"
    return tree


def _apply(tree, names):
    """``git apply --check`` then ``git apply`` each patch, in order."""
    done = []
    for name in names:
        patch = PATCH_DIR / name
        check = _git(tree, "apply", "--check", str(patch))
        assert check.returncode == 0, (
            f"{name} does not apply after {done or 'no patch'}:\n{check.stderr}"
        )
        proc = _git(tree, "apply", str(patch))
        assert proc.returncode == 0, f"git apply {name} failed:\n{proc.stderr}"
        done.append(name)


def _touched(patch_text):
    return re.findall(r"^diff --git a/(\S+) b/", patch_text, flags=re.M)


def _env(tree, *more_paths):
    """Environment whose PYTHONPATH puts the patched tree first."""
    env = dict(os.environ)
    parts = [str(tree), *(str(p) for p in more_paths)]
    if env.get("PYTHONPATH"):
        parts.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(parts)
    return env


def _tail(proc, chars=4000):
    return f"--- stdout ---\n{proc.stdout[-chars:]}\n--- stderr ---\n{proc.stderr[-chars:]}"


def _demo(tree, workdir, *args, demo="unet/train_unet_demo.py"):
    """Run the patched train_unet_demo.py (or ``demo``, e.g. the VarNet's).

    The working directory is ``workdir/a/b``: the demo writes its path config
    to ``../../fastmri_dirs.yaml``, which then lands in ``workdir``.
    """
    cwd = Path(workdir) / "a" / "b"
    cwd.mkdir(parents=True, exist_ok=True)
    script = tree / "fastmri_examples" / demo
    return subprocess.run(
        [sys.executable, str(script), *args],
        cwd=cwd, env=_env(tree), capture_output=True, text=True,
        timeout=SUBPROCESS_TIMEOUT,
    )


def _data_args(synthetic_root):
    # --use_dataset_cache_file false: no dataset_cache.pkl in the working
    # directory (0004 makes "false" mean False)
    return ["--data_path", str(synthetic_root / "knee"), "--challenge", "singlecoil",
            "--accelerator", "cpu", "--num_workers", "0",
            "--use_dataset_cache_file", "false"]


def _num_slices(folder):
    return {p.name: h5py.File(p, "r")["kspace"].shape[0] for p in sorted(folder.glob("*.h5"))}


def _checkpoints(root):
    return sorted(p.name for p in (root / "checkpoints").glob("*.ckpt"))


# ---------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def patched_tree(tmp_path_factory):
    """fastmri 0.3.0 with every patch applied in order."""
    tree = _fresh_tree(tmp_path_factory.mktemp("fastmri_patched"))
    _apply(tree, PATCHES)
    return tree


# ---------------------------------------------------------------------------
# the patch files
# ---------------------------------------------------------------------------


def test_patch_set_is_numbered_one_concern_each():
    assert sorted(p.name for p in PATCH_DIR.glob("*.patch")) == list(PATCHES)
    for name in PATCHES:
        text = (PATCH_DIR / name).read_text()
        assert text.startswith("From "), f"{name}: not in git format-patch form"
        assert re.search(r"^Subject: \[PATCH\] \S", text, flags=re.M), name
        touched = _touched(text)
        assert touched, f"{name} changes no file"
        assert "setup.cfg" not in touched, f"{name} touches setup.cfg"
        if "v0.3.0-only" not in name:
            specific = [f for f in touched if f.startswith(VERSION_SPECIFIC)]
            assert specific == [], (
                f"{name} must apply to main and 0.3.0 alike, but touches {specific}"
            )


def test_patches_apply_in_order_to_0_3_0(patched_tree):
    # the fixture applied them; check that each concern reached its file
    mri_module = (patched_tree / "fastmri/pl_modules/mri_module.py").read_text()
    assert "def on_validation_epoch_end(self)" in mri_module
    assert "def validation_epoch_end" not in mri_module
    assert "def test_epoch_end" not in mri_module
    for demo in ("unet/train_unet_demo.py", "varnet/train_varnet_demo.py"):
        text = (patched_tree / "fastmri_examples" / demo).read_text()
        assert "Trainer.add_argparse_args(" not in text
        assert "Trainer.from_argparse_args(" not in text
        assert "use_distributed_sampler=False" in text
    assert "--model-type" in (patched_tree / "fastmri_examples/unet/train_unet_demo.py").read_text()
    assert "dynamic_varnet" in (patched_tree / "fastmri_examples/varnet/train_varnet_demo.py").read_text()
    assert "np.product" not in (patched_tree / "tests/conftest.py").read_text()
    status = _git(patched_tree, "status", "--porcelain")
    assert "setup.cfg" not in status.stdout


def test_patches_for_both_versions_apply_to_a_main_like_tree(tmp_path):
    # main (91f2df4) = 0.3.0 + the tests/ changes that 0005 backports (and
    # setup.cfg, which no patch touches): so 0005 first, then 0001-0004 must
    # apply unchanged. (No network to GitHub here; patches/README.md records
    # the check against a real clone of main.)
    tree = _fresh_tree(tmp_path)
    v030_only = [n for n in PATCHES if "v0.3.0-only" in n]
    _apply(tree, v030_only)
    proc = _git(tree, "commit", "-q", "-a", "-m", "tests/ as on main")
    assert proc.returncode == 0, proc.stderr
    _apply(tree, [n for n in PATCHES if n not in v030_only])


# ---------------------------------------------------------------------------
# fastMRI's own tests on Lightning 2
# ---------------------------------------------------------------------------

_ORIGIN_PLUGIN = '''
import json, os, sys


def pytest_sessionfinish(session, exitstatus):
    import pytorch_lightning

    with open(os.environ["FASTMRI_ORIGIN_FILE"], "w") as f:
        json.dump({"fastmri": sys.modules["fastmri"].__file__,
                   "lightning": pytorch_lightning.__version__}, f)
'''


def test_fastmri_test_suite_passes_on_lightning2(patched_tree, tmp_path):
    plugin_dir = tmp_path / "plugin"
    plugin_dir.mkdir()
    (plugin_dir / "fastmri_origin_probe.py").write_text(_ORIGIN_PLUGIN)
    origin_file = tmp_path / "origin.json"
    env = _env(patched_tree, plugin_dir)
    env["FASTMRI_ORIGIN_FILE"] = str(origin_file)
    env.pop("PYTEST_ADDOPTS", None)  # the counts below are of the whole suite
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "tests", "-q", "-p", "no:cacheprovider",
         "-p", "fastmri_origin_probe", "--rootdir", str(patched_tree)],
        cwd=patched_tree, env=env, capture_output=True, text=True,
        timeout=SUBPROCESS_TIMEOUT,
    )
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    counts = {
        kind.rstrip("s") if kind.startswith("error") else kind: int(n)
        for n, kind in re.findall(
            r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|deselected)", summary
        )
    }
    assert counts == {"passed": 72, "skipped": 3}, f"summary: {summary!r}\n{_tail(proc)}"
    assert proc.returncode == 0, _tail(proc)

    origin = json.loads(origin_file.read_text())
    assert Path(origin["fastmri"]).resolve().is_relative_to(patched_tree.resolve())
    assert origin["lightning"].split(".")[0] == "2"


# ---------------------------------------------------------------------------
# the patched demo
# ---------------------------------------------------------------------------


def test_unet_demo_trains_on_two_ddp_processes_then_tests_the_checkpoint(
    patched_tree, synthetic_root, tmp_path
):
    root = tmp_path / "unet_run"
    train = _demo(patched_tree, tmp_path, "--model-type", "unet",
                  *_data_args(synthetic_root), "--devices", "2", "--strategy", "ddp",
                  "--default_root_dir", str(root),
                  "--chans", "4", "--num_pool_layers", "2", "--max_epochs", "1")
    assert train.returncode == 0, _tail(train)
    train_slices = sum(_num_slices(synthetic_root / "knee/singlecoil_train").values())
    assert train_slices % 2 == 0
    # at batch size 1 each of the 2 processes trains on half the slices; with
    # the demo's old sampler condition (--accelerator in ddp, ddp_cpu) every
    # process walked all of them (step=train_slices)
    assert _checkpoints(root) == [f"epoch=0-step={train_slices // 2}.ckpt"]
    assert not (tmp_path / "a" / "b" / "dataset_cache.pkl").exists()

    ckpt = torch.load(root / "checkpoints" / _checkpoints(root)[0],
                      map_location="cpu", weights_only=False)
    assert ckpt["hyper_parameters"]["chans"] == 4
    state = {k[len("unet."):]: v for k, v in ckpt["state_dict"].items()}
    assert state["down_sample_layers.0.layers.0.weight"].shape == (4, 1, 3, 3)

    # one process, no model flags: the architecture comes from the checkpoint
    test = _demo(patched_tree, tmp_path, "--mode", "test",
                 *_data_args(synthetic_root), "--devices", "1",
                 "--default_root_dir", str(root))
    assert test.returncode == 0, _tail(test)
    test_folder = synthetic_root / "knee/singlecoil_test"
    expected = _num_slices(test_folder)
    recon_dir = root / "reconstructions"
    assert sorted(p.name for p in recon_dir.glob("*.h5")) == sorted(expected)
    for name, slices in expected.items():
        with h5py.File(recon_dir / name, "r") as f:
            assert list(f.keys()) == ["reconstruction"]
            recon = f["reconstruction"][()]
        assert recon.shape == (slices, 64, 64)
        assert np.isfinite(recon).all()

    # the reconstructions come from the trained weights: recompute one slice
    from fastmri.data import SliceDataset
    from fastmri.data.transforms import UnetDataTransform
    from fastmri.models import Unet

    unet = Unet(in_chans=1, out_chans=1, chans=4, num_pool_layers=2)
    unet.load_state_dict(state)
    unet.eval()
    dataset = SliceDataset(test_folder, challenge="singlecoil",
                           transform=UnetDataTransform("singlecoil"), use_dataset_cache=False)
    sample = dataset[0]
    with torch.no_grad():
        out = (unet(sample.image[None, None])[0, 0] * sample.std + sample.mean).numpy()
    with h5py.File(recon_dir / sample.fname, "r") as f:
        saved = f["reconstruction"][sample.slice_num]
    np.testing.assert_allclose(saved, out, rtol=1e-4, atol=1e-4 * np.abs(out).max())


def test_dynamic_unet_demo_grows_then_tests_the_grown_checkpoint(
    patched_tree, synthetic_root, tmp_path
):
    root = tmp_path / "dynamic_run"
    # growth at the first batch of epoch 0, so the only checkpoint is grown
    train = _demo(patched_tree, tmp_path, "--model-type", "dynamic_unet",
                  *_data_args(synthetic_root), "--devices", "1",
                  "--default_root_dir", str(root),
                  "--chans", "4", "--num_pool_layers", "2", "--max_epochs", "1",
                  "--limit_train_batches", "1", "--growth-start-epoch", "0",
                  "--layers-to-grow", "down_0", "--n-new", "1", "--n-candidates", "2")
    assert train.returncode == 0, _tail(train)
    assert _checkpoints(root) == ["epoch=0-step=1.ckpt"]
    ckpt = torch.load(root / "checkpoints" / "epoch=0-step=1.ckpt",
                      map_location="cpu", weights_only=False)
    assert ckpt["hyper_parameters"]["growth_method"] == "sample_select"
    assert ckpt["hyper_parameters"]["chans"] == 4
    state = ckpt["state_dict"]
    # down_0 grew by one filter in each conv; the rest kept its width
    assert state["unet.down_sample_layers.0.layers.0.weight"].shape == (5, 1, 3, 3)
    assert state["unet.down_sample_layers.0.layers.4.weight"].shape == (5, 5, 3, 3)
    assert state["unet.down_sample_layers.1.layers.0.weight"].shape == (8, 5, 3, 3)

    # loading the grown checkpoint into a 4-filter U-Net would fail
    test = _demo(patched_tree, tmp_path, "--model-type", "dynamic_unet", "--mode", "test",
                 *_data_args(synthetic_root), "--devices", "1",
                 "--default_root_dir", str(root))
    assert test.returncode == 0, _tail(test)
    expected = _num_slices(synthetic_root / "knee/singlecoil_test")
    recon_dir = root / "reconstructions"
    assert sorted(p.name for p in recon_dir.glob("*.h5")) == sorted(expected)
    for name, slices in expected.items():
        with h5py.File(recon_dir / name, "r") as f:
            assert f["reconstruction"].shape == (slices, 64, 64)


def test_varnet_demo_grows_a_dynamic_varnet_then_tests_the_grown_checkpoint(
    patched_tree, synthetic_root, tmp_path
):
    root = tmp_path / "varnet_run"
    data = ["--data_path", str(synthetic_root / "knee"), "--accelerator", "cpu",
            "--num_workers", "0", "--use_dataset_cache_file", "false", "--devices", "1",
            "--default_root_dir", str(root)]
    # the demo's defaults: multicoil data, equispaced masks; growth at epoch 0
    train = _demo(patched_tree, tmp_path, "--model-type", "dynamic_varnet", *data,
                  "--num_cascades", "2", "--pools", "1", "--chans", "2", "--sens_pools", "1",
                  "--sens_chans", "2", "--max_epochs", "1", "--limit_train_batches", "1",
                  "--growth-start-epoch", "0", "--layers-to-grow", "cascade_*/bottleneck:0",
                  "--n-candidates", "2", demo="varnet/train_varnet_demo.py")
    assert train.returncode == 0, _tail(train)
    assert _checkpoints(root) == ["epoch=0-step=1.ckpt"]
    ckpt = torch.load(root / "checkpoints" / "epoch=0-step=1.ckpt",
                      map_location="cpu", weights_only=False)
    assert ckpt["hyper_parameters"]["num_cascades"] == 2
    assert ckpt["hyper_parameters"]["lr"] == 0.001  # the demo's, not the module's 3e-4
    state = ckpt["state_dict"]
    for k in (0, 1):  # each cascade's bottleneck conv1 grew from 4 to 5 filters
        assert state[f"varnet.cascades.{k}.model.unet.conv.layers.0.weight"].shape == (5, 2, 3, 3)
        assert state[f"varnet.cascades.{k}.model.unet.conv.layers.4.weight"].shape == (4, 5, 3, 3)
    assert state["varnet.sens_net.norm_unet.unet.conv.layers.0.weight"].shape == (4, 2, 3, 3)

    test = _demo(patched_tree, tmp_path, "--model-type", "dynamic_varnet", "--mode", "test",
                 *data, demo="varnet/train_varnet_demo.py")
    assert test.returncode == 0, _tail(test)
    expected = _num_slices(synthetic_root / "knee/multicoil_test")
    recon_dir = root / "reconstructions"
    assert sorted(p.name for p in recon_dir.glob("*.h5")) == sorted(expected)
    for name, slices in expected.items():
        with h5py.File(recon_dir / name, "r") as f:
            assert f["reconstruction"].shape == (slices, 64, 64)
            assert np.isfinite(f["reconstruction"][()]).all()


def test_varnet_demo_takes_the_depth_flags_and_grows_cascades(
    patched_tree, synthetic_root, tmp_path
):
    # The cascade flags reach DynamicVarNetModule through the demo: one
    # cascade inserted at the first batch of epoch 1 (step 1, gate 0), fading
    # in over 1 step (step 2 trains it at gate 1, and the gate is dropped).
    root = tmp_path / "depth_run"
    data = ["--data_path", str(synthetic_root / "knee"), "--accelerator", "cpu",
            "--num_workers", "0", "--use_dataset_cache_file", "false", "--devices", "1",
            "--default_root_dir", str(root)]
    train = _demo(patched_tree, tmp_path, "--model-type", "dynamic_varnet", *data,
                  "--num_cascades", "1", "--pools", "1", "--chans", "2", "--sens_pools", "1",
                  "--sens_chans", "2", "--max_epochs", "3", "--limit_train_batches", "1",
                  "--limit_val_batches", "1", "--max-growth-steps", "0",
                  "--target-cascades", "2", "--cascade-start-epoch", "1",
                  "--cascade-interval", "3", "--cascade_fade_steps", "1",
                  "--cascade-init", "fresh", demo="varnet/train_varnet_demo.py")
    assert train.returncode == 0, _tail(train)
    assert "[epoch 1] inserted cascade_1 (fresh of cascade_0): 1 -> 2 cascades" in train.stdout
    assert _checkpoints(root) == ["epoch=2-step=3.ckpt"]
    ckpt = torch.load(root / "checkpoints" / "epoch=2-step=3.ckpt",
                      map_location="cpu", weights_only=False)
    hp = ckpt["hyper_parameters"]
    assert (hp["num_cascades"], hp["target_cascades"], hp["cascade_start_epoch"],
            hp["cascade_interval"], hp["cascade_fade_steps"], hp["cascade_init"]) == (
        1, 2, 1, 3, 1, "fresh")
    assert ckpt["callbacks"]["GrowthCallback"]["depth"]["events"] == [
        {"epoch": 1, "step": 1, "cascades": [1]}]
    assert ckpt["dynamic_varnet"]["num_cascades"] == 2
    assert ckpt["dynamic_varnet"]["cascade_gates"] == {}
    # Faded in: no gate left, fastMRI's VarNet layout.
    state = ckpt["state_dict"]
    assert "varnet.cascades.1.model.unet.conv.layers.0.weight" in state
    assert not any(k.endswith(".gate") for k in state)

    test = _demo(patched_tree, tmp_path, "--model-type", "dynamic_varnet", "--mode", "test",
                 *data, demo="varnet/train_varnet_demo.py")
    assert test.returncode == 0, _tail(test)
    expected = _num_slices(synthetic_root / "knee/multicoil_test")
    assert sorted(p.name for p in (root / "reconstructions").glob("*.h5")) == sorted(expected)


def test_demo_test_mode_without_checkpoint_exits_2(patched_tree, synthetic_root, tmp_path):
    root = tmp_path / "empty_run"
    proc = _demo(patched_tree, tmp_path, "--mode", "test", *_data_args(synthetic_root),
                 "--devices", "1", "--default_root_dir", str(root))
    assert proc.returncode == 2, _tail(proc)
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last == (
        "error: --mode test needs a trained checkpoint: none in "
        f"{root / 'checkpoints'}; train first or pass --ckpt_path"
    )
    assert not root.exists()  # nothing written


# ---------------------------------------------------------------------------
# metrics and the fixes of 0004, inside the patched tree
# ---------------------------------------------------------------------------

_CHECK_SCRIPT = r'''
import json, sys
from argparse import ArgumentParser
from types import SimpleNamespace
from collections import defaultdict
from pathlib import Path

# fastmri does not declare requests: the patched tree must import without it
sys.modules["requests"] = None

import numpy as np
import pytorch_lightning as pl
import torch
from torch.nn import functional as F

import fastmri
from fastmri import evaluate
from fastmri.data.subsample import create_mask_for_mask_type
from fastmri.data.transforms import UnetDataTransform
from fastmri.pl_modules import FastMriDataModule, UnetModule, VarNetModule

tree, data_root, work = (Path(a) for a in sys.argv[1:4])
out = {"fastmri_file": fastmri.__file__}

# --- argparse fixes -------------------------------------------------------
p = FastMriDataModule.add_data_specific_args(ArgumentParser())
a = p.parse_args(["--use_dataset_cache_file", "false", "--combine_train_val", "true"])
out["bool_flags"] = [a.use_dataset_cache_file, a.combine_train_val]
out["unet_chans_default"] = UnetModule.add_model_specific_args(ArgumentParser()).parse_args([]).chans
out["sens_chans"] = VarNetModule.add_model_specific_args(ArgumentParser()).parse_args(
    ["--sens_chans", "4"]).sens_chans

# --- test_split="challenge" -----------------------------------------------
mask = create_mask_for_mask_type("random", [0.08], [4])
dm = FastMriDataModule(
    data_path=data_root, challenge="singlecoil",
    train_transform=UnetDataTransform("singlecoil", mask_func=mask, use_seed=False),
    val_transform=UnetDataTransform("singlecoil", mask_func=mask),
    test_transform=UnetDataTransform("singlecoil"),
    test_split="challenge", use_dataset_cache_file=False, num_workers=0,
)
out["challenge_batches"] = len(dm.test_dataloader())

# --- validation metrics vs a volume-wise reference -------------------------
pl.seed_everything(0)
model = UnetModule(chans=4, num_pool_layers=2)
trainer = pl.Trainer(
    accelerator="cpu", devices=1, default_root_dir=work,
    logger=pl.loggers.CSVLogger(work / "csv"), enable_checkpointing=False,
    enable_progress_bar=False, enable_model_summary=False,
)
logged = trainer.validate(model, datamodule=dm, verbose=False)[0]
out["logged"] = {k: float(v) for k, v in logged.items()}
out["csv_columns"] = (
    (work / "csv" / "lightning_logs" / "version_0" / "metrics.csv").read_text().splitlines()[0]
)

model.eval()
slices = defaultdict(list)
losses = []
with torch.no_grad():
    for batch in dm.val_dataloader():
        output = model(batch.image)
        losses.append(float(F.l1_loss(output, batch.target)))
        std, mean = batch.std[:, None, None], batch.mean[:, None, None]
        for i, fname in enumerate(batch.fname):
            slices[fname].append((
                (output * std + mean)[i].numpy(), (batch.target * std + mean)[i].numpy(),
                float(batch.max_value[i]),
            ))
nmse, psnr, ssim = [], [], []
for fname, items in slices.items():
    mse = np.mean([evaluate.mse(t, o) for o, t, _ in items])
    norm = np.mean([evaluate.mse(t, np.zeros_like(t)) for o, t, _ in items])
    maxval = items[0][2]
    nmse.append(mse / norm)
    psnr.append(20 * np.log10(maxval) - 10 * np.log10(mse))
    ssim.append(np.mean([evaluate.ssim(t[None], o[None], maxval=maxval) for o, t, _ in items]))
out["reference"] = {
    "validation_loss": float(np.mean(losses)),
    "val_metrics/nmse": float(np.mean(nmse)),
    "val_metrics/psnr": float(np.mean(psnr)),
    "val_metrics/ssim": float(np.mean(ssim)),
}
out["val_volumes"] = len(slices)

# --- evaluate: ssim() is a 0-d array and the script's summary prints -------
t = np.random.default_rng(0).random((2, 16, 16))
out["ssim_ndim"] = int(np.ndim(evaluate.ssim(t, 0.9 * t)))
import h5py
targets = data_root / "singlecoil_val"
recons = work / "recons"
recons.mkdir()
for f in sorted(targets.glob("*.h5")):
    with h5py.File(f, "r") as src, h5py.File(recons / f.name, "w") as dst:
        dst["reconstruction"] = 0.9 * src["reconstruction_esc"][()]
# what `python -m fastmri.evaluate` runs, minus its argument parsing
args = SimpleNamespace(target_path=targets, predictions_path=recons,
                       acquisition=None, acceleration=None)
out["evaluate"] = str(evaluate.evaluate(args, "reconstruction_esc"))
print("RESULT " + json.dumps(out))
'''


@pytest.fixture(scope="module")
def in_tree_checks(patched_tree, synthetic_root, tmp_path_factory):
    work = tmp_path_factory.mktemp("in_tree_checks")
    script = work / "check.py"
    script.write_text(_CHECK_SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script), str(patched_tree), str(synthetic_root / "knee"),
         str(work)],
        cwd=work, env=_env(patched_tree), capture_output=True, text=True,
        timeout=SUBPROCESS_TIMEOUT,
    )
    assert proc.returncode == 0, _tail(proc)
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    result = json.loads(line[len("RESULT "):])
    assert Path(result["fastmri_file"]).resolve().is_relative_to(patched_tree.resolve())
    return result


def test_validation_metrics_are_volume_wise_as_in_fastmri(in_tree_checks, synthetic_root):
    logged, reference = in_tree_checks["logged"], in_tree_checks["reference"]
    assert in_tree_checks["val_volumes"] == len(list((synthetic_root / "knee/singlecoil_val").glob("*.h5")))
    assert set(reference) <= set(logged)
    for key, value in reference.items():
        assert logged[key] == pytest.approx(value, rel=1e-4), key
    # a CSVLogger has no add_image: validation must still log every metric
    columns = in_tree_checks["csv_columns"].split(",")
    assert {"validation_loss", "val_metrics/nmse", "val_metrics/ssim", "val_metrics/psnr"} <= set(columns)


def test_fixes_of_0004_hold(in_tree_checks, synthetic_root):
    # the check script imported the patched fastmri with requests blocked
    assert in_tree_checks["bool_flags"] == [False, True]
    assert in_tree_checks["unet_chans_default"] == 32
    assert in_tree_checks["sens_chans"] == 4 and isinstance(in_tree_checks["sens_chans"], int)
    challenge_slices = sum(_num_slices(synthetic_root / "knee/singlecoil_challenge").values())
    assert in_tree_checks["challenge_batches"] == challenge_slices
    assert in_tree_checks["ssim_ndim"] == 0
    summary = in_tree_checks["evaluate"]
    match = re.fullmatch(
        r"MSE = \S+ \+/- \S+ NMSE = (\S+) \+/- \S+ PSNR = \S+ \+/- \S+ SSIM = (\S+) \+/- \S+",
        summary,
    )
    assert match, summary
    # reconstructions are 0.9 x the targets: NMSE = 0.1^2
    assert float(match.group(1)) == pytest.approx(0.01, rel=1e-3)
    assert 0.9 < float(match.group(2)) <= 1.0
