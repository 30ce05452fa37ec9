"""Edges users expect: TorchScript, quiet Lightning logs, LightningCLI configs."""
import io
import warnings

import pytest
import torch
from torch.nn import functional as F

from fastmri_growth.models import DynamicUnet


# ---------------------------------------------------------------------------
# torch.jit.script
# ---------------------------------------------------------------------------


def _jit(fn, *args):
    with warnings.catch_warnings():
        # torch 2.10+ deprecates TorchScript (still supported, and what fastMRI users run).
        warnings.simplefilter("ignore", FutureWarning)
        return fn(*args)


def _script(net):
    return _jit(torch.jit.script, net)


def test_dynamic_unet_scripts_before_and_after_growth_with_eager_outputs():
    """fastMRI's Unet scripts; so does a DynamicUnet, fresh and grown at every kind of
    site (block convs and a transposed conv), on an odd-sized input (the reflect-pad path)."""
    torch.manual_seed(0)
    net = DynamicUnet(1, 1, chans=2, num_pool_layers=2).eval()
    x = torch.randn(2, 1, 17, 13)
    y = torch.randn(2, 1, 17, 13)
    with torch.no_grad():
        torch.testing.assert_close(_script(net)(x), net(x), rtol=0, atol=0)
    g = torch.Generator().manual_seed(0)
    for layer, conv in (("down_0", 1), ("bottleneck", 0), ("up_0", "t"), ("up_1", 1)):
        net.grow_network(layer, conv, x, y, n_new=2, generator=g)
    # Non-zero new fan-outs, so the grown channels reach the output.
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=g))
    assert net.get_network_size()["up_0"]["transpose_out"] == 4 + 2
    scripted = _script(net)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x), rtol=0, atol=0)
    # The scripted copy saves, loads and trains as any TorchScript module.
    buffer = io.BytesIO()
    _jit(torch.jit.save, scripted, buffer)
    buffer.seek(0)
    loaded = _jit(torch.jit.load, buffer)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x), rtol=0, atol=0)
    F.l1_loss(loaded(x), y).backward()
    assert all(p.grad is not None for p in loaded.parameters())


# ---------------------------------------------------------------------------
# Lightning's "ambiguous batch_size" warning
# ---------------------------------------------------------------------------


def _fit_warnings(module, loader, root, epochs=3, callbacks=()):
    """Every warning a short fit emits (Lightning's once-per-process cache cleared first)."""
    import pytorch_lightning as pl
    from pytorch_lightning.utilities import data as pl_data

    pl_data.warning_cache.clear()
    trainer = pl.Trainer(accelerator="cpu", max_epochs=epochs, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0,
                         limit_train_batches=2, limit_val_batches=0, default_root_dir=str(root),
                         callbacks=list(callbacks))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(module, loader)
    return [str(w.message) for w in caught]


def test_growth_pruning_and_guard_log_without_the_batch_size_warning(tiny_knee_root, tmp_path):
    """Growth and pruning events (in a batch hook) and the epoch-end values log with a
    batch size: a library fit that grows twice and prunes warns nothing about it."""
    from fastmri_growth.pl_modules import DynamicUnetModule
    from fastmri_growth.pl_modules.finite_guard import FiniteGuard

    from .fit_helpers import slice_loader

    module = DynamicUnetModule(chans=2, num_pool_layers=2, n_candidates=2,
                               layers_to_grow=["down_0:1"], prune_schedule="interval",
                               prune_start_epoch=2, prune_n=1)
    messages = _fit_warnings(module, slice_loader(tiny_knee_root), tmp_path,
                             callbacks=[FiniteGuard()])
    assert module.schedule.state["grown_epochs"] == [1, 2]
    assert module.growth_callback.pruned_epochs == [2]
    assert not [m for m in messages if "batch_size" in m], messages


def test_depth_growth_logs_without_the_batch_size_warning(tmp_path):
    """A cascade insertion (and width growth of the VarNet) warns nothing about batch_size."""
    from fastmri.data import SliceDataset
    from fastmri.data.subsample import RandomMaskFunc
    from fastmri.data.transforms import VarNetDataTransform
    from torch.utils.data import DataLoader

    from fastmri_growth.data import generate_dataset
    from fastmri_growth.pl_modules import DynamicVarNetModule

    generate_dataset(tmp_path / "data", challenges=("knee_multicoil",), splits=("train",),
                     num_volumes=1, num_slices=2, recon_size=32, num_coils=(2, 2), seed=0)
    data = SliceDataset(tmp_path / "data" / "knee" / "multicoil_train", challenge="multicoil",
                        use_dataset_cache=False,
                        transform=VarNetDataTransform(RandomMaskFunc([0.08], [4]), use_seed=True))
    module = DynamicVarNetModule(num_cascades=1, sens_chans=2, sens_pools=1, chans=2, pools=1,
                                 target_cascades=2, cascade_start_epoch=1, cascade_fade_steps=1,
                                 growth_method="random", layers_to_grow=["cascade_0/bottleneck:0"],
                                 growth_start_epoch=1, growth_batches=1)
    messages = _fit_warnings(module, DataLoader(data, batch_size=1), tmp_path / "run", epochs=2)
    assert module.varnet.num_cascades == 2
    assert not [m for m in messages if "batch_size" in m], messages


# ---------------------------------------------------------------------------
# LightningCLI and the shipped configs
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def knee_both(tmp_path_factory):
    """``root/knee`` with single- and multi-coil train/val/test: 1 volume of 2 slices, 32 x 32."""
    from fastmri_growth.data import generate_dataset

    root = tmp_path_factory.mktemp("lightning_cli_data")
    generate_dataset(root, challenges=("knee_singlecoil", "knee_multicoil"),
                     splits=("train", "val", "test"), num_volumes=1, num_slices=2,
                     recon_size=32, num_coils=(2, 2), seed=0)
    return root / "knee"


# Per config: overrides for the test, and what the fit must have built.
CONFIG_RUNS = {
    "knee_unet": ([], "UnetModule", "UnetDataTransform"),
    "knee_grown_unet": (["--model.dict_kwargs.growth_start_epoch", "0"], "DynamicUnetModule",
                        "UnetDataTransform"),
    "knee_varnet": (["--model.init_args.num_cascades", "2"], "VarNetModule",
                    "VarNetDataTransform"),
}


def test_the_shipped_configs_are_the_three_and_name_the_valid_ones():
    from fastmri_growth import configs

    assert configs.names() == sorted(CONFIG_RUNS)
    with pytest.raises(ValueError, match=r"no shipped LightningCLI config 'knee'; valid: "
                                         r"knee_grown_unet, knee_unet, knee_varnet"):
        configs.path("knee")


@pytest.mark.parametrize("name", sorted(CONFIG_RUNS))
def test_lightning_cli_fits_one_step_from_each_shipped_config(name, knee_both, tmp_path,
                                                             monkeypatch):
    """``LightningCLI`` fit, ``fast_dev_run``, from the config as shipped (the data path,
    no loader workers and no dataset cache file given for the test): one optimizer step
    of the configured module on the configured transforms; the grown U-Net grows."""
    pytest.importorskip("jsonargparse", reason="LightningCLI needs the cli extra")
    from fastmri_growth import configs
    from fastmri_growth.cli.lightning_cli import main

    monkeypatch.chdir(tmp_path)
    extra, module_name, transform_name = CONFIG_RUNS[name]
    cli = main(["fit", "--config", str(configs.path(name)),
                "--data.init_args.data_path", str(knee_both),
                "--data.init_args.num_workers", "0",
                "--data.init_args.use_dataset_cache_file", "false",
                "--trainer.fast_dev_run", "true", "--trainer.accelerator", "cpu",
                "--trainer.default_root_dir", str(tmp_path / "run"), *extra])
    assert cli.trainer.state.finished and cli.trainer.global_step == 1
    assert type(cli.model).__name__ == module_name
    assert type(cli.datamodule.train_transform).__name__ == transform_name
    assert cli.datamodule.train_transform.use_seed is False
    assert cli.datamodule.val_transform.use_seed is True
    if name == "knee_grown_unet":
        assert cli.model.growth_config.growth_schedule == "budget"
        assert cli.model.growth_reports  # grew at epoch 0, before the one step
        assert cli.model.unet.chans > 16
    assert not (tmp_path / "dataset_cache.pkl").exists()


def test_lightning_cli_without_jsonargparse_is_one_line_naming_the_extra(monkeypatch, capsys):
    from fastmri_growth.cli import lightning_cli

    monkeypatch.setattr(lightning_cli, "REQUIREMENT", "jsonargparse[signatures]>=999")
    with pytest.raises(SystemExit) as exc:
        lightning_cli.main(["fit", "--help"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["fastmri-growth-lightning: error: LightningCLI needs "
                   "'jsonargparse[signatures]>=999'; install it with "
                   "pip install 'fastmri-growth[cli]'"], err
