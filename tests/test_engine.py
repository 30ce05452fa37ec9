"""The growth engine's layout promises: old checkpoints still load and resume, and
one owner of fastMRI's format facts (the import layering is in test_layering.py)."""

import ast
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from fastmri_growth.data.synthetic import generate_dataset
from fastmri_growth.pl_modules import DynamicUnetModule, load_module
from tests.fit_helpers import cpu_trainer, slice_loader as _loader

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "fastmri_growth"
# No update ramp: the version before the growth callback had none, so its
# checkpoints carry no ramp state (tests/test_dynamic_unet_module.py resumes
# mid-ramp).
OPTIONS = dict(chans=2, num_pool_layers=2, n_candidates=2, layers_to_grow=["down_0:1"],
               growth_interval=2, new_filter_ramp_steps=0)


# ------------------------------------------------------ checkpoints of older versions
def to_legacy_format(ckpt: dict) -> dict:
    """A checkpoint as the version before the growth callback wrote it.

    That version kept the schedule under the module's ``"dynamic_unet"`` key
    (``widths``, ``transpose_widths``, ``schedule_state``, ``last_validation``),
    had no growth callback state and no ``plateau_min_delta`` hyperparameter;
    its other keys are Lightning's and unchanged.
    """
    ckpt = dict(ckpt)
    callbacks = dict(ckpt["callbacks"])
    state = callbacks.pop("GrowthCallback")
    ckpt["callbacks"] = callbacks
    hparams = dict(ckpt["hyper_parameters"])
    hparams.pop("plateau_min_delta")
    ckpt["hyper_parameters"] = hparams
    ckpt["dynamic_unet"] = dict(ckpt["dynamic_unet"], schedule_state=state["schedule"],
                                last_validation=state["last_validation"])
    assert sorted(ckpt) == sorted([
        "epoch", "global_step", "pytorch-lightning_version", "state_dict", "loops", "callbacks",
        "optimizer_states", "lr_schedulers", "hparams_name", "hyper_parameters", "dynamic_unet"])
    return ckpt




def _trainer(root, epochs, **kw):
    return cpu_trainer(root, epochs, limit_val_batches=1, **kw)


@pytest.fixture(scope="module")
def legacy(tmp_path_factory):
    """A grown run's epoch-1 checkpoint in the old format, and the uninterrupted run."""
    tmp = tmp_path_factory.mktemp("legacy")
    generate_dataset(tmp / "data", challenges=("knee_singlecoil",), splits=("train", "val"),
                     num_volumes=2, num_slices=2, recon_size=32)
    knee = tmp / "data" / "knee"
    pl.seed_everything(0)
    full = DynamicUnetModule(**OPTIONS)
    _trainer(tmp / "full", 4).fit(full, _loader(knee, "train"), _loader(knee, "val"))
    pl.seed_everything(0)
    half = DynamicUnetModule(**OPTIONS)
    ck = ModelCheckpoint(dirpath=tmp / "half", save_last=True)
    _trainer(tmp / "half", 2, callbacks=[ck]).fit(half, _loader(knee, "train"),
                                                  _loader(knee, "val"))
    new = torch.load(tmp / "half" / "last.ckpt", map_location="cpu", weights_only=False)
    path = tmp / "legacy.ckpt"
    torch.save(to_legacy_format(new), path)
    return dict(path=path, knee=knee, full=full, half=half, tmp=tmp)


def test_old_checkpoint_loads_grown(legacy):
    module = load_module(legacy["path"])
    assert type(module) is DynamicUnetModule
    assert module.unet.get_network_size()["down_0"]["conv2_out"] == 3
    for k, v in legacy["half"].state_dict().items():
        assert torch.equal(module.state_dict()[k], v), k
    assert module.schedule.state["grown_epochs"] == [1]
    assert module.hparams.plateau_min_delta == 0.0  # absent then: the default


def test_old_checkpoint_resumes_like_the_uninterrupted_run(legacy):
    pl.seed_everything(0)
    resumed = DynamicUnetModule(**OPTIONS)
    _trainer(legacy["tmp"] / "resumed", 4).fit(
        resumed, _loader(legacy["knee"], "train"), _loader(legacy["knee"], "val"),
        ckpt_path=str(legacy["path"]))
    assert resumed.schedule.state["grown_epochs"] == [1, 3]  # epoch 1 not grown again
    assert [r.width_after for r in resumed.growth_reports] == [4]
    full = legacy["full"].state_dict()
    for k, v in resumed.state_dict().items():
        torch.testing.assert_close(v, full[k], rtol=0, atol=1e-6)


# ---------------------------------------------------------- format facts
# Acquisition names also key the synthetic generator's contrast tables; these
# are the facts that must have a single definition.
FORMAT_FACTS = {"reconstruction_esc", "reconstruction_rss", "equispaced_fraction",
                "magic_fraction", "http://www.ismrm.org/ISMRMRD"}


def test_fastmri_format_facts_are_defined_once():
    """Code (not docstrings or messages) spells these only in data/fastmri_format.py."""
    owner = PACKAGE / "data" / "fastmri_format.py"
    found = {}
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                      if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef))
                      and n.body and isinstance(n.body[0], ast.Expr)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value in FORMAT_FACTS \
                    and id(node) not in docstrings:
                found.setdefault(node.value, set()).add(path.relative_to(REPO).as_posix())
    assert found, "the facts should be found in data/fastmri_format.py"
    for fact, paths in found.items():
        assert paths == {owner.relative_to(REPO).as_posix()}, (fact, paths)
