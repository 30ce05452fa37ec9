"""fastMRI's Lightning modules on pytorch-lightning 2 (fastmri_growth.pl_modules.lightning2).

Everything runs on tiny synthetic data (64 x 64 targets) through fastMRI's
unpatched SliceDataset, on the CPU.
"""
import argparse
import inspect
import json
import os
import pickle
import subprocess
import sys
import textwrap
from collections import defaultdict
from pathlib import Path

import h5py
import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from fastmri import evaluate
from fastmri import pl_modules as fastmri_pl
from fastmri.data.subsample import RandomMaskFunc
from fastmri.data.transforms import UnetDataTransform, VarNetDataTransform
from fastmri.pl_modules.mri_module import MriModule
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

from fastmri_growth.pl_modules.data_module import FastMriDataModule, _DistributedVolumeSampler
from fastmri_growth.flags import str2bool
from fastmri_growth.pl_modules.lightning2 import Lightning2MriMixin, UnetModule, VarNetModule

UNET_KW = dict(chans=4, num_pool_layers=2)
VARNET_KW = dict(num_cascades=1, pools=2, chans=2, sens_pools=2, sens_chans=2)


# ---------------------------------------------------------------------------
# data and helpers
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def torch_settings():
    """Deterministic mode restored afterwards.

    Trainer(deterministic=True) switches torch's global deterministic mode
    on; other test modules should not inherit it.
    """
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    yield
    torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


@pytest.fixture(scope="module")
def knee_root(request, tmp_path_factory):
    """A fastMRI knee root: {singlecoil,multicoil}_{train,val,test,challenge}."""
    try:
        root = Path(request.getfixturevalue("synthetic_root"))
    except pytest.FixtureLookupError:
        from fastmri_growth.data.synthetic import generate_dataset

        root = tmp_path_factory.mktemp("synthetic")
        generate_dataset(
            root,
            challenges=("knee_singlecoil", "knee_multicoil"),
            num_volumes=2,
            num_slices=3,
            recon_size=64,
            num_coils=2,
        )
    return root / "knee"


def _mask():
    return RandomMaskFunc(center_fractions=[0.08], accelerations=[4])


def unet_data(root, **kwargs):
    kwargs.setdefault("use_dataset_cache_file", False)
    return FastMriDataModule(
        root,
        "singlecoil",
        train_transform=UnetDataTransform("singlecoil", mask_func=_mask(), use_seed=False),
        val_transform=UnetDataTransform("singlecoil", mask_func=_mask()),
        test_transform=UnetDataTransform("singlecoil"),
        num_workers=0,
        **kwargs,
    )


def varnet_data(root, **kwargs):
    return FastMriDataModule(
        root,
        "multicoil",
        train_transform=VarNetDataTransform(mask_func=_mask(), use_seed=False),
        val_transform=VarNetDataTransform(mask_func=_mask()),
        test_transform=VarNetDataTransform(),
        use_dataset_cache_file=False,
        num_workers=0,
        **kwargs,
    )


def trainer(root_dir, logger=False, **kwargs):
    kwargs.setdefault("num_sanity_val_steps", 0)
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        logger=logger,
        enable_checkpointing=False,
        limit_train_batches=2,
        deterministic=True,
        default_root_dir=str(root_dir),
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


def h5_files(folder):
    return sorted(Path(folder).glob("*.h5"))


def num_slices(folder):
    total = 0
    for path in h5_files(folder):
        with h5py.File(path, "r") as f:
            total += f["kspace"].shape[0]
    return total


class CapturingUnet(UnetModule):
    """Records every validation_step output (numpy) to recompute the metrics."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.captured = []

    def validation_step(self, batch, batch_idx):
        out = super().validation_step(batch, batch_idx)
        self.captured.append(
            {
                "fname": list(out["fname"]),
                "slice_num": out["slice_num"].numpy().copy(),
                "max_value": out["max_value"].numpy().copy(),
                "output": out["output"].detach().numpy().copy(),
                "target": out["target"].detach().numpy().copy(),
                "val_loss": float(out["val_loss"]),
            }
        )
        return out


def expected_metrics(captured):
    """MriModule's validation metrics, recomputed with fastmri.evaluate.

    Per volume: NMSE, PSNR and SSIM of the stacked slices, PSNR/SSIM with the
    volume's ``max`` attribute as data range; then the mean over volumes.
    validation_loss: the mean of the per-batch losses.
    """
    slices = defaultdict(dict)
    max_value = {}
    for log in captured:
        for i, fname in enumerate(log["fname"]):
            slices[fname][int(log["slice_num"][i])] = (log["target"][i], log["output"][i])
            max_value[fname] = float(log["max_value"][i])
    per_volume = defaultdict(list)
    for fname, by_slice in slices.items():
        target = np.stack([t for _, (t, _) in sorted(by_slice.items())]).astype(np.float64)
        output = np.stack([o for _, (_, o) in sorted(by_slice.items())]).astype(np.float64)
        per_volume["nmse"].append(float(evaluate.nmse(target, output)))
        per_volume["psnr"].append(float(evaluate.psnr(target, output, maxval=max_value[fname])))
        per_volume["ssim"].append(float(evaluate.ssim(target, output, maxval=max_value[fname])[0]))
    metrics = {f"val_metrics/{k}": float(np.mean(v)) for k, v in per_volume.items()}
    metrics["validation_loss"] = float(np.mean([log["val_loss"] for log in captured]))
    return metrics, slices, max_value


def logged(trainer_):
    return {k: float(v) for k, v in trainer_.callback_metrics.items()}


# ---------------------------------------------------------------------------
# why the bridge exists
# ---------------------------------------------------------------------------


def test_unported_fastmri_module_fails_on_lightning2(knee_root, tmp_path):
    model = fastmri_pl.UnetModule(**UNET_KW)
    with pytest.raises(NotImplementedError, match="validation_epoch_end"):
        trainer(tmp_path).fit(model, datamodule=unet_data(knee_root))
    with pytest.raises(NotImplementedError, match="test_epoch_end"):
        trainer(tmp_path).test(model, datamodule=unet_data(knee_root))


# ---------------------------------------------------------------------------
# the mixin
# ---------------------------------------------------------------------------


def test_legacy_hooks_are_not_callable():
    for cls in (UnetModule, VarNetModule):
        for name in ("validation_step_end", "validation_epoch_end", "test_epoch_end"):
            assert getattr(cls, name) is None, (cls, name)
    # fastMRI's code is still there for the mixin to call.
    assert callable(MriModule.validation_epoch_end)


def test_mixin_rejects_misplaced_bases_and_legacy_hooks():
    with pytest.raises(TypeError, match=r"Bad\.validation_epoch_end is a pytorch-lightning 1\.x hook"):

        class Bad(Lightning2MriMixin, MriModule):
            def validation_epoch_end(self, outputs):
                pass

    with pytest.raises(TypeError, match=r"Lightning2MriMixin before MriModule"):

        class Reversed(MriModule, Lightning2MriMixin):
            pass

    with pytest.raises(TypeError, match=r"NotMri uses Lightning2MriMixin but does not derive"):

        class NotMri(Lightning2MriMixin, pl.LightningModule):
            pass


def test_constructors_match_fastmri():
    for ours, theirs in ((UnetModule, fastmri_pl.UnetModule), (VarNetModule, fastmri_pl.VarNetModule)):
        assert inspect.signature(ours) == inspect.signature(theirs)
    model = UnetModule(**UNET_KW)
    assert (model.unet.chans, model.unet.num_pool_layers) == (4, 2)
    assert dict(model.hparams) == {
        "in_chans": 1, "out_chans": 1, "chans": 4, "num_pool_layers": 2, "drop_prob": 0.0,
        "lr": 0.001, "lr_step_size": 40, "lr_gamma": 0.1, "weight_decay": 0.0,
    }


# ---------------------------------------------------------------------------
# validation metrics, loggers, dataloader forms
# ---------------------------------------------------------------------------


def test_validation_metrics_equal_fastmri_evaluate(knee_root, tmp_path):
    torch.manual_seed(0)
    model = CapturingUnet(**UNET_KW)
    trainer_ = trainer(tmp_path)
    trainer_.validate(model, datamodule=unet_data(knee_root), verbose=False)

    expected, slices, _ = expected_metrics(model.captured)
    assert len(model.captured) == num_slices(knee_root / "singlecoil_val")
    assert sorted(slices) == [p.name for p in h5_files(knee_root / "singlecoil_val")]
    got = logged(trainer_)
    assert set(expected) <= set(got)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-6, abs=1e-8), key

    # The tolerance tells per-volume PSNR from per-slice PSNR, and the
    # volume's max attribute from each slice's own max.
    pairs = [(log["target"][i], log["output"][i], float(log["max_value"][i])) for log in model.captured for i in range(len(log["fname"]))]
    per_slice = np.mean([evaluate.psnr(t, o, maxval=m) for t, o, m in pairs])
    slice_max = np.mean([evaluate.psnr(np.stack([t]), np.stack([o])) for t, o, _ in pairs])
    for wrong in (per_slice, slice_max):
        assert got["val_metrics/psnr"] != pytest.approx(wrong, rel=1e-6, abs=1e-8)

    # Collected outputs are freed after the epoch.
    assert model._lightning2_validation_outputs == []


@pytest.mark.parametrize("as_list", [False, True], ids=["bare_loader", "list_of_loaders"])
def test_both_val_dataloader_forms(knee_root, tmp_path, as_list):
    torch.manual_seed(0)
    model = UnetModule(num_log_images=2, **UNET_KW)
    loader = unet_data(knee_root).val_dataloader()
    trainer_ = trainer(tmp_path)
    trainer_.validate(model, dataloaders=[loader] if as_list else loader, verbose=False)
    assert isinstance(trainer_.val_dataloaders, list) == as_list
    assert len(model.val_log_indices) == 2
    assert all(0 <= i < len(loader) for i in model.val_log_indices)
    assert len(set(model.val_log_indices)) == 2
    got = logged(trainer_)
    assert {"validation_loss", "val_metrics/nmse", "val_metrics/ssim", "val_metrics/psnr"} <= set(got)
    assert all(np.isfinite(v) for v in got.values())


def test_fit_with_csv_logger(knee_root, tmp_path):
    torch.manual_seed(0)
    model = UnetModule(**UNET_KW)
    trainer_ = trainer(tmp_path, logger=CSVLogger(str(tmp_path), name="csv_logs"))
    trainer_.fit(model, datamodule=unet_data(knee_root))
    assert trainer_.global_step == 2
    rows = (Path(trainer_.logger.log_dir) / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    for key in ("epoch", "step", "validation_loss", "val_metrics/nmse", "val_metrics/ssim", "val_metrics/psnr"):
        assert key in header
    values = dict(zip(header, rows[-1].split(",")))
    assert float(values["validation_loss"]) == pytest.approx(float(trainer_.callback_metrics["validation_loss"]))


def test_fit_validate_test_without_logger(knee_root, tmp_path):
    torch.manual_seed(0)
    model = UnetModule(**UNET_KW)
    data = unet_data(knee_root)
    trainer_ = trainer(tmp_path, num_sanity_val_steps=2)
    trainer_.fit(model, datamodule=data)
    assert "validation_loss" in trainer_.callback_metrics
    assert model.val_log_indices is not None
    result = trainer_.validate(model, datamodule=data, verbose=False)
    assert set(result[0]) == {"validation_loss", "val_metrics/nmse", "val_metrics/ssim", "val_metrics/psnr"}
    trainer_.test(model, datamodule=data, verbose=False)
    assert len(h5_files(tmp_path / "reconstructions")) == len(h5_files(knee_root / "singlecoil_test"))


def test_tensorboard_gets_images_even_behind_csv_logger(knee_root, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    torch.manual_seed(0)
    model = UnetModule(num_log_images=2, **UNET_KW)
    tensorboard = TensorBoardLogger(str(tmp_path), name="lightning_logs")
    # CSV first: trainer.logger is the CSVLogger, whose experiment has no add_image.
    loggers = [CSVLogger(str(tmp_path), name="csv_logs"), tensorboard]
    trainer(tmp_path, logger=loggers).validate(model, datamodule=unet_data(knee_root), verbose=False)

    events = EventAccumulator(tensorboard.log_dir, size_guidance={"images": 0})
    events.Reload()
    expected = {
        f"val_images_idx_{i}/{kind}"
        for i in model.val_log_indices
        for kind in ("target", "reconstruction", "error")
    }
    assert set(events.Tags()["images"]) == expected
    image = events.Images(next(iter(expected)))[0]
    assert (image.width, image.height) == (64, 64)


# ---------------------------------------------------------------------------
# test mode
# ---------------------------------------------------------------------------


def test_test_mode_writes_reconstructions(knee_root, tmp_path):
    torch.manual_seed(0)
    model = UnetModule(**UNET_KW)
    data = unet_data(knee_root, test_split="challenge")
    trainer(tmp_path).test(model, datamodule=data, verbose=False)

    written = h5_files(tmp_path / "reconstructions")
    inputs = h5_files(knee_root / "singlecoil_challenge")
    assert [p.name for p in written] == [p.name for p in inputs]
    for out_path, in_path in zip(written, inputs):
        with h5py.File(out_path, "r") as out, h5py.File(in_path, "r") as src:
            assert list(out.keys()) == ["reconstruction"]
            assert out["reconstruction"].shape == (src["kspace"].shape[0], 64, 64)
            assert out["reconstruction"].dtype == np.float32

    # The file holds the model's de-normalised output, slice by slice.
    dataset = data.test_dataloader().dataset
    sample = dataset[len(dataset) - 1]
    model.eval()
    with torch.no_grad():
        direct = model(sample.image[None])[0] * sample.std + sample.mean
    with h5py.File(tmp_path / "reconstructions" / sample.fname, "r") as out:
        np.testing.assert_allclose(out["reconstruction"][sample.slice_num], direct.numpy(), rtol=1e-5, atol=1e-6)
    assert model._lightning2_test_outputs == []


def test_varnet_fit_validate_test(knee_root, tmp_path):
    torch.manual_seed(0)
    model = VarNetModule(**VARNET_KW)
    data = varnet_data(knee_root)
    trainer_ = trainer(tmp_path, logger=CSVLogger(str(tmp_path)))
    trainer_.fit(model, datamodule=data)
    got = logged(trainer_)
    assert {"train_loss", "validation_loss", "val_metrics/nmse", "val_metrics/ssim", "val_metrics/psnr"} <= set(got)
    assert all(np.isfinite(v) for v in got.values())
    trainer_.test(model, datamodule=data, verbose=False)
    written = h5_files(tmp_path / "reconstructions")
    assert [p.name for p in written] == [p.name for p in h5_files(knee_root / "multicoil_test")]
    with h5py.File(written[0], "r") as out:
        assert out["reconstruction"].shape[1:] == (64, 64)


# ---------------------------------------------------------------------------
# argparse
# ---------------------------------------------------------------------------


def test_unet_chans_flag_default_matches_constructor():
    assert fastmri_pl.UnetModule.add_model_specific_args(argparse.ArgumentParser()).parse_args([]).chans == 1
    args = UnetModule.add_model_specific_args(argparse.ArgumentParser()).parse_args([])
    assert args.chans == inspect.signature(UnetModule).parameters["chans"].default == 32
    assert UnetModule.add_model_specific_args(argparse.ArgumentParser()).parse_args(["--chans", "8"]).chans == 8


def test_varnet_sens_chans_flag_is_int():
    parser = VarNetModule.add_model_specific_args(argparse.ArgumentParser())
    args = parser.parse_args(["--sens_chans", "4", "--chans", "6"])
    assert (args.sens_chans, args.chans) == (4, 6)
    assert isinstance(args.sens_chans, int)
    assert parser.parse_args([]).sens_chans == 8


@pytest.mark.parametrize(
    "argv, cache, combine",
    [
        ([], True, False),
        (["--use_dataset_cache_file", "False", "--combine_train_val", "true"], False, True),
        (["--use_dataset_cache_file", "0", "--combine_train_val", "no"], False, False),
        (["--combine_train_val"], True, True),
    ],
)
def test_data_boolean_flags(argv, cache, combine):
    parser = FastMriDataModule.add_data_specific_args(argparse.ArgumentParser())
    args = parser.parse_args(argv)
    assert (args.use_dataset_cache_file, args.combine_train_val) == (cache, combine)
    # fastMRI's own parser reads "False" as True.
    theirs = fastmri_pl.FastMriDataModule.add_data_specific_args(argparse.ArgumentParser())
    assert theirs.parse_args(["--use_dataset_cache_file", "False"]).use_dataset_cache_file is True


def test_data_boolean_flag_rejects_junk(capsys):
    parser = FastMriDataModule.add_data_specific_args(argparse.ArgumentParser(prog="train"))
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["--combine_train_val", "maybe"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "argument --combine_train_val: expected a boolean" in err
    assert "got 'maybe'" in err
    with pytest.raises(argparse.ArgumentTypeError):
        str2bool("2")


def test_data_flags_help_lists_each_flag_once():
    text = FastMriDataModule.add_data_specific_args(argparse.ArgumentParser()).format_help()
    assert text.count("--use_dataset_cache_file") == 2  # usage line + description
    assert text.count("--combine_train_val") == 2
    assert "--data_path" in text and "--num_workers" in text


# ---------------------------------------------------------------------------
# the data module
# ---------------------------------------------------------------------------


def test_challenge_split_loads(knee_root):
    theirs = fastmri_pl.FastMriDataModule(
        knee_root, "singlecoil", None, None, UnetDataTransform("singlecoil"),
        test_split="challenge", use_dataset_cache_file=False, num_workers=0,
    )
    with pytest.raises(UnboundLocalError):
        theirs.test_dataloader()
    loader = unet_data(knee_root, test_split="challenge", test_sample_rate=1.0).test_dataloader()
    assert len(loader.dataset) == num_slices(knee_root / "singlecoil_challenge")
    assert {s[0].name for s in loader.dataset.raw_samples} == {p.name for p in h5_files(knee_root / "singlecoil_challenge")}


def test_bad_test_split_is_rejected(knee_root):
    with pytest.raises(ValueError, match=r"test_split must be one of 'val', 'test', 'challenge'; got 'train'"):
        unet_data(knee_root, test_split="train")


def test_prepare_data_without_test_folder(knee_root, tmp_path, monkeypatch):
    root = tmp_path / "knee"
    for split in ("train", "val"):
        (root / f"singlecoil_{split}").mkdir(parents=True)
        for path in h5_files(knee_root / f"singlecoil_{split}"):
            (root / f"singlecoil_{split}" / path.name).symlink_to(path)
    monkeypatch.chdir(tmp_path)
    theirs = fastmri_pl.FastMriDataModule(
        root, "singlecoil", UnetDataTransform("singlecoil"), UnetDataTransform("singlecoil"),
        UnetDataTransform("singlecoil"), num_workers=0,
    )
    with pytest.raises(FileNotFoundError, match="singlecoil_test"):
        theirs.prepare_data()

    cache = tmp_path / "cache" / "meta.pkl"
    cache.parent.mkdir()
    workdir = tmp_path / "workdir"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    ours = unet_data(root, use_dataset_cache_file=True, dataset_cache_file=cache)
    ours.prepare_data()
    assert list(workdir.iterdir()) == []
    with open(cache, "rb") as f:
        cached = pickle.load(f)
    assert set(cached) == {root / "singlecoil_train", root / "singlecoil_val"}
    assert len(ours.val_dataloader().dataset) == num_slices(root / "singlecoil_val")
    with pytest.raises(FileNotFoundError, match="singlecoil_test"):
        ours.test_dataloader()


def test_single_process_uses_no_sampler(knee_root):
    data = unet_data(knee_root)
    assert data.distributed_sampler is None
    assert isinstance(data.train_dataloader().sampler, torch.utils.data.RandomSampler)
    assert isinstance(data.val_dataloader().sampler, torch.utils.data.SequentialSampler)


def test_volume_sampler_is_a_distributed_sampler_keeping_volumes_whole(knee_root):
    dataset = unet_data(knee_root).val_dataloader().dataset
    volumes = []
    for rank in range(2):
        sampler = _DistributedVolumeSampler(dataset, num_replicas=2, rank=rank, shuffle=False)
        # Lightning leaves DistributedSampler instances in place.
        assert isinstance(sampler, torch.utils.data.DistributedSampler)
        sampler.set_epoch(1)
        volumes.append({dataset.raw_samples[i][0].name for i in sampler})
        assert len(list(sampler)) == len(sampler)
    assert volumes[0] and volumes[1] and not volumes[0] & volumes[1]
    assert volumes[0] | volumes[1] == {p.name for p in h5_files(knee_root / "singlecoil_val")}

    # fastMRI's VolumeSampler divides by zero later for a rank without volumes.
    n_volumes = len(h5_files(knee_root / "singlecoil_val"))
    with pytest.raises(ValueError, match=rf"{n_volumes} volume\(s\) for {n_volumes + 1} processes: process {n_volumes} gets no whole volume"):
        _DistributedVolumeSampler(dataset, num_replicas=n_volumes + 1, rank=n_volumes, shuffle=False)


# ---------------------------------------------------------------------------
# DDP: two CPU processes (gloo) give the single-process metrics and files
# ---------------------------------------------------------------------------

DDP_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import pytorch_lightning as pl
    import torch
    from fastmri.data.subsample import RandomMaskFunc
    from fastmri.data.transforms import UnetDataTransform
    from fastmri_growth.pl_modules.data_module import FastMriDataModule
    from fastmri_growth.pl_modules.lightning2 import UnetModule

    data_root, weights, out = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    mask = RandomMaskFunc(center_fractions=[0.08], accelerations=[4])
    data = FastMriDataModule(
        data_root, "singlecoil",
        train_transform=UnetDataTransform("singlecoil", mask_func=mask, use_seed=False),
        val_transform=UnetDataTransform("singlecoil", mask_func=mask),
        test_transform=UnetDataTransform("singlecoil"),
        use_dataset_cache_file=False, num_workers=0, test_split="val",
    )
    model = UnetModule(chans=4, num_pool_layers=2)
    model.load_state_dict(torch.load(weights))
    # Lightning 2's default use_distributed_sampler=True: the data module's
    # volume sampler must survive it.
    trainer = pl.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", logger=False,
        enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=str(out),
    )
    metrics = trainer.validate(model, datamodule=data, verbose=False)[0]
    val_loader = trainer.val_dataloaders
    trainer.test(model, datamodule=data, verbose=False)
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps({
        "world_size": trainer.world_size,
        "metrics": {k: float(v) for k, v in metrics.items()},
        "val_sampler": type(val_loader.sampler).__name__,
        "val_batches": len(val_loader),
    }))
    """
)


def test_ddp_two_processes_match_single_process(knee_root, tmp_path):
    torch.manual_seed(0)
    model = UnetModule(**UNET_KW)
    weights = tmp_path / "weights.pt"
    torch.save(model.state_dict(), weights)
    # Test mode on the val split too: two volumes, one per process.
    data = unet_data(knee_root, test_split="val")
    single = trainer(tmp_path / "single")
    expected = single.validate(model, datamodule=data, verbose=False)[0]
    single.test(model, datamodule=data, verbose=False)

    script = tmp_path / "ddp_run.py"
    script.write_text(DDP_SCRIPT)
    out = tmp_path / "ddp"
    out.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(
        [sys.executable, str(script), str(knee_root), str(weights), str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    slices_per_rank = num_slices(knee_root / "singlecoil_val") / 2
    for rank in ranks:
        assert rank["world_size"] == 2
        assert rank["val_sampler"] == "_DistributedVolumeSampler"
        assert rank["val_batches"] == slices_per_rank
        # Summed over both ranks by DistributedMetricSum: the global values.
        for key, value in expected.items():
            assert rank["metrics"][key] == pytest.approx(value, rel=1e-5), key

    ddp_files = h5_files(out / "reconstructions")
    single_files = h5_files(tmp_path / "single" / "reconstructions")
    assert [p.name for p in ddp_files] == [p.name for p in single_files]
    for a, b in zip(ddp_files, single_files):
        with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
            np.testing.assert_allclose(fa["reconstruction"][()], fb["reconstruction"][()], rtol=1e-5, atol=1e-6)
