"""Resume and flag faults of ``fastmri-growth-train``: the resume rule, growth state, challenge.

Each test answers one finding of issue 22 (tiny runs: chans 4, 2 pools,
64x64 images, in this process unless DDP is needed):

4. Flags on resume: the checkpoint's module options (architecture, optimizer,
   growth) win; a flag left out takes the checkpoint's value (and says so),
   a flag given with another value is refused naming both values.
5. A checkpoint without the growth callback's state is refused (it would
   grow past ``--max-growth-steps``); with it, the cap holds on resume.
6. Checkpoints record their challenge; resume, test mode and the
   leaderboard refuse the other challenge.
10. Out-of-range numbers, too many DDP processes for the validation volumes
    and growth scoring that cannot fit in memory: exit 2, one line, nothing
    written.
DDP resume: two gloo ranks on the CPU, 2 epochs then resumed to 3, end
with the weights of 3 uninterrupted epochs.
"""
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from fastmri_growth.cli import evaluate, train, train_checks
from fastmri_growth.pl_modules.model_types import checkpoint_challenge

REPO = Path(__file__).resolve().parents[1]
PROG_ERROR = "fastmri-growth-train: error: "

#: A tiny growing U-Net on the CPU, growing at epochs 1 and 2 at most.
TINY = ["--chans", "4", "--num_pool_layers", "2", "--accelerator", "cpu", "--devices", "1",
        "--num_workers", "0", "--use_dataset_cache_file", "false", "--n-candidates", "2",
        "--growth-interval", "1", "--growth-start-epoch", "1", "--max-growth-steps", "2",
        "--lr", "0.01"]


def run_main(argv, capfd):
    """``train.main(argv)`` here: ``(exit status, stdout, non-empty stderr lines)``."""
    code = train.main([str(a) for a in argv])
    out, err = capfd.readouterr()
    return code, out, [ln for ln in err.splitlines() if ln.strip()]


def files_below(folder: Path) -> dict:
    """``{relative path: bytes}`` of every file below ``folder``."""
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def assert_refused(code, out, err, fragments):
    """Bad input: exit 2, one error line, no traceback, each fragment in it."""
    assert code == 2, (code, err)
    assert len(err) == 1 and err[0].startswith(PROG_ERROR), err
    assert "Traceback" not in out
    for fragment in fragments:
        assert fragment in err[0], (fragment, err[0])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Knee data of both challenges (train, val, test; 2 volumes of 2 slices, 2 coils)."""
    from fastmri_growth.data.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("resume_data")
    generate_dataset(root, challenges=("knee_singlecoil", "knee_multicoil"),
                     splits=("train", "val", "test"), num_volumes=2, num_slices=2,
                     recon_size=64, num_coils=2, seed=0)
    return root / "knee"


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """Three single-coil epochs at --lr 0.01: grown at epochs 1 and 2 (the cap)."""
    run = tmp_path_factory.mktemp("resume_run") / "run"
    code = train.main(["--data_path", str(data), "--challenge", "singlecoil",
                       "--default_root_dir", str(run), "--max_epochs", "3", *TINY])
    assert code == 0
    return run


@pytest.fixture
def run_copy(trained, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(trained, dst)
    return dst


# ------------------------------------------------------- 4. flags on resume


def test_a_flag_that_differs_from_the_checkpoint_is_refused_naming_both_values(
        run_copy, data, capfd):
    last = run_copy / "checkpoints" / "last.ckpt"
    base = ["--data_path", data, "--challenge", "singlecoil", "--default_root_dir", run_copy,
            "--max_epochs", "4", *TINY]
    before = files_below(run_copy)
    for extra, fragments in [
        (["--lr", "0.5"], [f"checkpoint {last} has lr=0.01 but --lr is 0.5; pass --lr 0.01 to "
                           "resume it, or a new --default_root_dir"]),
        (["--weight_decay", "0.1", "--growth-interval", "2"],
         ["has weight_decay=0.0, growth_interval=1 but --weight_decay is 0.1, "
          "--growth-interval is 2; pass --weight_decay 0.0 --growth-interval 1"]),
        (["--lr_step_size", "3"], ["has lr_step_size=40 but --lr_step_size is 3"]),
        (["--chans", "8"], ["has chans=4 but --chans is 8; pass --chans 4"]),
    ]:
        code, out, err = run_main(base + extra, capfd)  # the last flag given wins in argparse
        assert_refused(code, out, err, fragments + ["--init-from"])
        assert files_below(run_copy) == before


def test_flags_left_out_take_the_checkpoints_values_and_say_so(run_copy, data, capfd):
    last = run_copy / "checkpoints" / "last.ckpt"
    # Neither the architecture nor --lr nor the growth flags: all come from the checkpoint.
    code, out, err = run_main(["--data_path", data, "--challenge", "singlecoil",
                               "--default_root_dir", run_copy, "--max_epochs", "4",
                               "--accelerator", "cpu", "--devices", "1", "--num_workers", "0",
                               "--use_dataset_cache_file", "false"], capfd)
    assert code == 0, err
    note = next(ln for ln in out.splitlines() if ln.startswith("note: resuming"))
    for part in (f"note: resuming {last} with its own options:", "--chans 4 (default 32)",
                 "--num_pool_layers 2 (default 4)", "--lr 0.01 (default 0.001)",
                 "--max-growth-steps 2 (default None)", "--n-candidates 2 (default 10)"):
        assert part in note, (part, note)
    after = load(last)
    assert after["epoch"] == 3
    # Recorded as applied, and applied: hyperparameters and optimizer agree.
    assert after["hyper_parameters"]["lr"] == 0.01
    assert after["optimizer_states"][0]["param_groups"][0]["lr"] == 0.01
    assert after["hyper_parameters"]["chans"] == 4


def test_the_same_command_resumes_without_a_note(run_copy, data, capfd):
    code, out, err = run_main(["--data_path", data, "--challenge", "singlecoil",
                               "--default_root_dir", run_copy, "--max_epochs", "4", *TINY], capfd)
    assert code == 0, err
    assert "Resuming from" in out and "note: resuming" not in out


# ------------------------------------------------- 5. missing growth state


def test_resume_keeps_the_growth_cap(run_copy, data, capfd):
    before = load(run_copy / "checkpoints" / "last.ckpt")
    assert before["callbacks"]["GrowthCallback"]["schedule"]["grown_epochs"] == [1, 2]
    code, out, err = run_main(["--data_path", data, "--challenge", "singlecoil",
                               "--default_root_dir", run_copy, "--max_epochs", "5", *TINY], capfd)
    assert code == 0, err
    after = load(run_copy / "checkpoints" / "last.ckpt")
    assert after["epoch"] == 4
    assert after["callbacks"]["GrowthCallback"]["schedule"]["grown_epochs"] == [1, 2]
    assert after["dynamic_unet"]["widths"] == before["dynamic_unet"]["widths"]
    assert "Growing" not in out


def test_a_checkpoint_without_the_growth_state_is_refused_naming_it(trained, data, tmp_path,
                                                                     capfd):
    ckpt = load(trained / "checkpoints" / "last.ckpt")
    del ckpt["callbacks"]["GrowthCallback"]
    path = tmp_path / "stateless.ckpt"
    torch.save(ckpt, path)
    run = tmp_path / "run"
    code, out, err = run_main(["--data_path", data, "--challenge", "singlecoil",
                               "--default_root_dir", run, "--ckpt_path", path, "--max_epochs", "5",
                               *TINY], capfd)
    assert_refused(code, out, err, [
        f"checkpoint {path} has no growth schedule state (callbacks['GrowthCallback'])",
        "past --max-growth-steps", f"--init-from {path}"])
    assert not run.exists()


def test_library_resume_without_the_growth_state_raises(trained, data, tmp_path):
    """trainer.fit(ckpt_path=...) itself refuses; loading the weights still works."""
    from fastmri_growth.pl_modules import DynamicUnetModule, load_module
    from tests.fit_helpers import cpu_trainer, slice_loader

    ckpt = load(trained / "checkpoints" / "last.ckpt")
    del ckpt["callbacks"]["GrowthCallback"]
    path = tmp_path / "stateless.ckpt"
    torch.save(ckpt, path)
    assert load_module(path).unet.get_network_size() == ckpt["dynamic_unet"]["widths"]
    module = DynamicUnetModule(chans=4, num_pool_layers=2, growth_interval=1, growth_start_epoch=1,
                               max_growth_steps=2, n_candidates=2)
    with pytest.raises(ValueError, match=r"without its growth schedule state "
                                         r"\(callbacks\['GrowthCallback'\]\)"):
        cpu_trainer(tmp_path, 5).fit(module, slice_loader(data), ckpt_path=str(path))
    assert module.schedule.state["grown_epochs"] == []


# ------------------------------------------------------------ 6. challenge


@pytest.fixture(scope="module")
def multicoil_run(data, tmp_path_factory):
    """One epoch of the growing U-Net on multicoil data (root-sum-of-squares images)."""
    run = tmp_path_factory.mktemp("multicoil_run") / "run"
    code = train.main(["--data_path", str(data), "--challenge", "multicoil",
                       "--default_root_dir", str(run), "--max_epochs", "1", *TINY])
    assert code == 0
    return run


def test_checkpoints_record_their_challenge(trained, multicoil_run):
    single = load(trained / "checkpoints" / "last.ckpt")
    multi = load(multicoil_run / "checkpoints" / "last.ckpt")
    assert single["datamodule_hyper_parameters"] == {"challenge": "singlecoil"}
    assert checkpoint_challenge(multi) == ("multicoil", "recorded in the checkpoint")
    # Older checkpoints: a VarNet's is inferred, a U-Net's is unknown.
    del multi["datamodule_hyper_parameters"]
    assert checkpoint_challenge(multi) == (None, "not recorded")
    varnet = {"dynamic_varnet": {"widths": {}}, "state_dict": {}}
    assert checkpoint_challenge(varnet) == ("multicoil",
                                            "a dynamic_varnet model reads multicoil k-space")


def test_a_multicoil_checkpoint_is_refused_under_singlecoil(multicoil_run, data, tmp_path,
                                                            capfd):
    run = tmp_path / "run"
    shutil.copytree(multicoil_run, run)
    last = run / "checkpoints" / "last.ckpt"
    before = files_below(run)
    expected = (f"checkpoint {last} was trained on multicoil data (recorded in the checkpoint) "
                "but --challenge is singlecoil; pass --challenge multicoil")
    for mode, extra in (("resume", ["--max_epochs", "3"]), ("test", ["--mode", "test"])):
        code, out, err = run_main(["--data_path", data, "--challenge", "singlecoil",
                                   "--default_root_dir", run, *extra, *TINY], capfd)
        assert_refused(code, out, err, [expected, "to resume it" if mode == "resume"
                                        else "to test it"])
        assert files_below(run) == before
    # The leaderboard, after its data checks (single-coil val data pass them).
    out_dir = tmp_path / "lb"
    code = evaluate.main(["leaderboard", "--checkpoint", str(last), "--data-path",
                          str(data / "singlecoil_val"), "--challenge", "singlecoil",
                          "--out", str(out_dir)])
    err = [ln for ln in capfd.readouterr().err.splitlines() if ln.strip()]
    assert code == 2 and len(err) == 1, err
    assert err[0] == (f"fastmri-growth-eval: error: checkpoint {last} was trained on multicoil "
                      "data (recorded in the checkpoint) but --challenge is singlecoil; pass "
                      "--challenge multicoil and a multicoil val split")
    assert not out_dir.exists()


def test_a_checkpoint_without_its_challenge_warns_and_tests(trained, data, tmp_path, capfd):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    last = run / "checkpoints" / "last.ckpt"
    for path in (run / "checkpoints").glob("*.ckpt"):
        old = load(path)
        del old["datamodule_hyper_parameters"]
        torch.save(old, path)
    code, out, err = run_main(["--mode", "test", "--ckpt", "last", "--data_path", data,
                               "--challenge", "singlecoil", "--default_root_dir", run, *TINY],
                              capfd)
    assert code == 0, err
    assert (f"warning: checkpoint {last} does not record the challenge it was trained on "
            "(written by an older version); taking it for singlecoil as --challenge says") in out
    assert len(list((run / "reconstructions").glob("*.h5"))) == 2
    code = evaluate.main(["leaderboard", "--checkpoint", str(last), "--data-path",
                          str(data / "singlecoil_val"), "--challenge", "singlecoil",
                          "--out", str(tmp_path / "lb"), "--accelerations", "4",
                          "--center-fractions", "0.08"])
    err = capfd.readouterr().err
    assert code == 0, err
    assert f"fastmri-growth-eval: warning: checkpoint {last} does not record the challenge" in err


# ------------------------------------------------- 10. late or raw errors


BAD_FLAGS = [
    (["--lr", "-1"], "--lr must be a finite float >= 0, got -1.0"),
    (["--lr", "nan"], "--lr must be a finite float >= 0, got nan"),
    (["--lr_gamma", "0"], "--lr_gamma must be a finite float > 0, got 0.0"),
    (["--weight_decay", "-1"], "--weight_decay must be a finite float >= 0, got -1.0"),
    (["--batch_size", "0"], "--batch_size must be an int >= 1, got 0"),
    (["--num_workers", "-1"], "--num_workers must be an int >= 0, got -1"),
    (["--lr_step_size", "0"], "--lr_step_size must be an int >= 1, got 0"),
    (["--drop_prob", "1"], "--drop_prob must be a float in [0, 1), got 1.0"),
    (["--model-type", "unet", "--chans", "0"], "--chans must be an int >= 1, got 0"),
    (["--model-type", "unet", "--chans", "-2"], "--chans must be an int >= 1, got -2"),
    (["--model-type", "unet", "--num_pool_layers", "-1"],
     "--num_pool_layers must be an int >= 1, got -1"),
    (["--model-type", "dynamic_varnet", "--challenge", "multicoil", "--num_cascades", "0"],
     "--num_cascades must be an int >= 1, got 0"),
    (["--devices", "3", "--strategy", "ddp"],
     "--devices 3 x --num_nodes 1 starts 3 processes but {data}/singlecoil_val holds 2 "
     "validation volume(s)"),
    (["--devices", "3", "--strategy", "ddp", "--mode", "test", "--ckpt_path", "{ckpt}"],
     "starts 3 processes but {data}/singlecoil_test holds 2 test volume(s)"),
]


@pytest.mark.parametrize("flags,message", BAD_FLAGS,
                         ids=[" ".join(f).replace("/", "_") for f, _ in BAD_FLAGS])
def test_bad_numbers_exit_2_before_anything_is_written(flags, message, data, trained, tmp_path,
                                                       monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    ckpt = trained / "checkpoints" / "last.ckpt"
    fmt = dict(data=data, ckpt=ckpt)
    base = ["--data_path", data, "--default_root_dir", tmp_path / "run", "--max_epochs", "1",
            "--accelerator", "cpu", "--num_workers", "0", "--use_dataset_cache_file", "false"]
    code, out, err = run_main(base + [f.format(**fmt) for f in flags], capfd)
    assert_refused(code, out, err, [message.format(**fmt)])
    assert not list(tmp_path.iterdir())


def test_n_candidates_beyond_memory_is_refused_with_the_estimate(data, tmp_path, monkeypatch,
                                                                 capfd):
    monkeypatch.setattr(train_checks, "machine_memory", lambda args: (2 * 2**30, "test RAM"))
    base = ["--data_path", data, "--challenge", "singlecoil", "--default_root_dir",
            tmp_path / "run", "--max_epochs", "2", "--accelerator", "cpu", "--num_workers", "0",
            "--use_dataset_cache_file", "false", "--chans", "4", "--num_pool_layers", "2"]
    code, out, err = run_main(base + ["--n-candidates", "1000000", "--batch_size", "2"], capfd)
    # 16 bytes x 1e6 candidates x 2 images x 64 x 64 pixels.
    assert_refused(code, out, err, [
        "--n-candidates 1000000 is too many: scoring 1000000 candidate filter(s) per site on "
        "batches of 2 64x64 image(s) needs about 122.1 GiB, but test RAM is 2.0 GiB; pass "
        "--n-candidates 16384 or fewer"])
    assert not (tmp_path / "run").exists()
    # The estimate fits: accepted (checked without training).
    from fastmri_growth.cli.train_parser import parse_args

    args = parse_args([str(a) for a in base + ["--n-candidates", "16384"]])
    train_checks.validate_args(args)
    assert train_checks.scoring_memory(args)[0] <= 2 * 2**30


def test_processes_need_volumes_only_where_validation_runs(data):
    from fastmri_growth.cli.train_parser import parse_args

    flags = ["--data_path", str(data), "--devices", "3", "--strategy", "ddp"]
    with pytest.raises(train_checks.UsageError, match="holds 2 validation volume"):
        train_checks.check_processes_have_volumes(parse_args(flags))
    train_checks.check_processes_have_volumes(parse_args(flags + ["--limit_val_batches", "0"]))
    assert train_checks.requested_processes(parse_args(["--devices", "0,1", "--num_nodes", "2"])) == 4
    assert train_checks.requested_processes(parse_args(["--devices", "-1"])) is None


# ----------------------------------------------------------------- DDP resume


DDP_RESUME = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import pytorch_lightning as pl
    import torch
    from fastmri.data.subsample import RandomMaskFunc
    from fastmri.data.transforms import UnetDataTransform
    from pytorch_lightning.callbacks import ModelCheckpoint
    from pytorch_lightning.strategies import DDPStrategy
    from fastmri_growth.pl_modules import DynamicUnetModule
    from fastmri_growth.pl_modules.data_module import FastMriDataModule
    from fastmri_growth.pl_modules.rng_state import RngState

    data_root, out = Path(sys.argv[1]), Path(sys.argv[2])


    def fit(name, epochs, ckpt_path=None):
        trainer = pl.Trainer(
            accelerator="cpu", devices=2, strategy=DDPStrategy(process_group_backend="gloo"),
            max_epochs=epochs, use_distributed_sampler=False, logger=False,
            enable_progress_bar=False, enable_model_summary=False, deterministic=True,
            num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=str(out / name),
            callbacks=[RngState(), ModelCheckpoint(dirpath=out / name, filename="last")],
        )
        # As the training command: random training masks, seeded per rank.
        mask = RandomMaskFunc(center_fractions=[0.08], accelerations=[4])
        mask.rng.seed(42 + trainer.global_rank)
        data = FastMriDataModule(
            data_root, "singlecoil",
            train_transform=UnetDataTransform("singlecoil", mask_func=mask, use_seed=False),
            val_transform=UnetDataTransform("singlecoil", mask_func=mask),
            test_transform=UnetDataTransform("singlecoil"),
            use_dataset_cache_file=False, num_workers=0, distributed_sampler=True,
        )
        pl.seed_everything(0)
        module = DynamicUnetModule(chans=2, num_pool_layers=2, n_candidates=2,
                                   layers_to_grow=["down_0:1"], growth_interval=1,
                                   growth_start_epoch=1)
        trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
        if trainer.global_rank == 0:
            torch.save(module.state_dict(), out / f"{name}.pt")
        return trainer


    fit("full", 3)
    fit("half", 2)
    ckpt = torch.load(out / "half" / "last.ckpt", weights_only=False)
    if torch.distributed.get_rank() == 0:
        (out / "saved_ranks.json").write_text(json.dumps(len(ckpt["callbacks"]["RngState"]["ranks"])))
        # As written before every rank's states were stored: rank 0's only.
        del ckpt["callbacks"]["RngState"]["ranks"]
        torch.save(ckpt, out / "rank0_only.ckpt")
    torch.distributed.barrier()
    fit("resumed", 3, str(out / "half" / "last.ckpt"))
    fit("resumed_rank0_only", 3, str(out / "rank0_only.ckpt"))
    """
)


def test_ddp_resume_equals_the_uninterrupted_run(tmp_path):
    from fastmri_growth.data.synthetic import generate_dataset

    generate_dataset(tmp_path / "data", challenges=("knee_singlecoil",), splits=("train", "val"),
                     num_volumes=4, num_slices=2, recon_size=32, seed=0)
    script = tmp_path / "ddp_resume.py"
    script.write_text(DDP_RESUME)
    out = tmp_path / "out"
    out.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_PORT", "MASTER_ADDR")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "data" / "knee"), str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert json.loads((out / "saved_ranks.json").read_text()) == 2
    full = torch.load(out / "full.pt", weights_only=True)
    resumed = torch.load(out / "resumed.pt", weights_only=True)
    assert list(full) == list(resumed)
    for key in full:
        assert torch.equal(full[key], resumed[key]), key
    # The control: rank 1 resumed from rank 0's states draws other masks.
    old = torch.load(out / "resumed_rank0_only.pt", weights_only=True)
    assert any(not torch.equal(full[k], old[k]) for k in full)
    assert "every process starts from rank 0's" in proc.stderr
