"""Data, checkpoint and lost-work faults of ``fastmri-growth-train`` (issue 22, items 1, 3, 7, 8, 9, 11).

Each test reproduces one fault through the user's path (``train.main`` on a
generated dataset, or the command in a subprocess) and checks what happens
now: the exact slice list, the one error line and its exit status, the files
left in the run folder.
"""
import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest
import torch

from fastmri_growth.cli import dataset_cache, train

REPO = Path(__file__).resolve().parents[1]
PROG_ERROR = "fastmri-growth-train: error: "

#: A tiny growing U-Net on the CPU, no data loader workers.
TINY = [
    "--challenge", "singlecoil", "--chans", "4", "--num_pool_layers", "2",
    "--accelerator", "cpu", "--devices", "1", "--num_workers", "0",
]
NO_CACHE = ["--use_dataset_cache_file", "false"]


def run_main(argv, capfd):
    """``train.main(argv)`` here: ``(exit status, stdout, non-empty stderr lines)``."""
    code = train.main([str(a) for a in argv])
    out, err = capfd.readouterr()
    return code, out, [ln for ln in err.splitlines() if ln.strip()]


def cli_env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1",
                PYTHONPATH=os.pathsep.join(filter(None, [str(REPO),
                                                         os.environ.get("PYTHONPATH")])))


def generate(root: Path, num_slices: int, seed: int = 0, num_volumes: int = 2) -> Path:
    """A single-coil knee root (train and val) under ``root``; returns ``root/knee``."""
    from fastmri_growth.data.synthetic import generate_dataset

    generate_dataset(root, challenges=("knee_singlecoil",), splits=("train", "val"),
                     num_volumes=num_volumes, num_slices=num_slices, recon_size=64, seed=seed)
    return root / "knee"


def age(folder: Path, seconds: float = 3600.0) -> None:
    """Set every file's times below ``folder`` into the past (as ``cp -p`` or ``mv`` keep them)."""
    then = time.time() - seconds
    for p in folder.rglob("*"):
        os.utime(p, (then, then))


def file_slices(folder: Path) -> list:
    """``(file name, slice)`` of every slice of a folder, read from the files (no cache)."""
    from fastmri.data import SliceDataset

    ds = SliceDataset(folder, "singlecoil", use_dataset_cache=False)
    return [(Path(s[0]).name, s[1]) for s in ds.raw_samples]


def cached_slices(folder: Path, cache: Path) -> list:
    """The same list as fastMRI's SliceDataset gives it with the cache file on."""
    from fastmri.data import SliceDataset

    ds = SliceDataset(folder, "singlecoil", use_dataset_cache=True, dataset_cache_file=cache)
    return [(Path(s[0]).name, s[1]) for s in ds.raw_samples]


# ------------------------------------------- 1. the dataset cache and its folders


@pytest.fixture
def two_datasets(tmp_path, monkeypatch):
    """``(a, b)``: knee roots of 2 volumes, 3 and 2 slices each; b's files are older."""
    monkeypatch.chdir(tmp_path)
    a = generate(tmp_path / "a", num_slices=3, seed=0)
    b = generate(tmp_path / "b", num_slices=2, seed=1)
    age(b.parent)
    return a, b


def test_cache_of_a_folder_swapped_for_one_with_older_files_is_dropped(two_datasets):
    a, b = two_datasets
    cache = Path("dataset_cache.pkl")
    train_dir = a / "singlecoil_train"
    assert len(cached_slices(train_dir, cache)) == 6
    assert dataset_cache.prune_dataset_cache(cache) == []  # checked in full, fingerprinted
    assert dataset_cache.fingerprint_file(cache).is_file()
    assert dataset_cache.prune_dataset_cache(cache) == []  # fingerprint matches
    # The folder is replaced by another one whose files are older than the cache.
    train_dir.rename(a / "old_train")
    shutil.move(str(b / "singlecoil_train"), str(train_dir))
    assert max(p.stat().st_mtime for p in train_dir.iterdir()) < cache.stat().st_mtime
    assert dataset_cache.prune_dataset_cache(cache) == [str(train_dir)]
    assert cached_slices(train_dir, cache) == file_slices(train_dir)
    assert len(file_slices(train_dir)) == 4


def test_cache_written_by_fastmri_is_checked_in_full_before_its_first_fingerprint(two_datasets):
    a, b = two_datasets
    cache = Path("dataset_cache.pkl")
    train_dir = a / "singlecoil_train"
    cached_slices(train_dir, cache)  # fastMRI writes the entry; no fingerprint yet
    shutil.rmtree(train_dir)
    shutil.copytree(b / "singlecoil_train", train_dir, copy_function=shutil.copy2)
    assert not dataset_cache.fingerprint_file(cache).exists()
    assert dataset_cache.prune_dataset_cache(cache) == [str(train_dir)]
    assert cached_slices(train_dir, cache) == file_slices(train_dir)


def test_cache_of_a_repointed_symlink_is_dropped(two_datasets):
    a, b = two_datasets
    cache = Path("dataset_cache.pkl")
    link = Path("data")
    link.symlink_to(a)
    folder = link / "singlecoil_train"
    assert len(cached_slices(folder, cache)) == 6
    assert dataset_cache.prune_dataset_cache(cache) == []
    link.unlink()
    link.symlink_to(b)  # same file names, other slice counts
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        p.name for p in (a / "singlecoil_train").iterdir())
    assert dataset_cache.prune_dataset_cache(cache) == [str(folder)]
    assert cached_slices(folder, cache) == file_slices(folder) == file_slices(
        b / "singlecoil_train")


def test_cache_of_a_file_replaced_by_one_of_the_same_size_is_dropped(two_datasets):
    a, b = two_datasets
    cache = Path("dataset_cache.pkl")
    train_dir = a / "singlecoil_train"
    target = train_dir / "file1000000.h5"
    cached_slices(train_dir, cache)
    assert dataset_cache.prune_dataset_cache(cache) == []
    # A 2-slice file padded to the 3-slice file's size (HDF5 ignores trailing bytes),
    # with the old file's times.
    size, times = target.stat().st_size, (target.stat().st_atime, target.stat().st_mtime)
    replacement = Path("replacement.h5")
    shutil.copy(b / "singlecoil_train" / "file1000000.h5", replacement)
    with open(replacement, "ab") as f:
        f.write(b"\0" * (size - replacement.stat().st_size))
    with h5py.File(replacement, "r") as hf:
        assert hf["kspace"].shape[0] == 2
    os.replace(replacement, target)
    os.utime(target, times)
    assert target.stat().st_size == size
    assert dataset_cache.prune_dataset_cache(cache) == [str(train_dir)]
    assert cached_slices(train_dir, cache) == file_slices(train_dir)
    assert [n for n, _ in file_slices(train_dir)].count("file1000000.h5") == 2


def test_unchanged_entries_keep_their_fingerprint_and_a_touched_one_is_rechecked(two_datasets):
    a, _ = two_datasets
    cache = Path("dataset_cache.pkl")
    for split in ("train", "val"):
        cached_slices(a / f"singlecoil_{split}", cache)
    assert dataset_cache.prune_dataset_cache(cache) == []
    prints = dataset_cache.fingerprint_file(cache).read_bytes()
    assert dataset_cache.prune_dataset_cache(cache) == []
    assert dataset_cache.fingerprint_file(cache).read_bytes() == prints
    # chmod changes a file's ctime: the entry is compared in full again, and kept.
    f = next((a / "singlecoil_val").iterdir())
    os.chmod(f, 0o600)
    assert dataset_cache.prune_dataset_cache(cache) == []
    assert dataset_cache.fingerprint_file(cache).read_bytes() != prints
    assert set(pickle.loads(cache.read_bytes())) == {a / "singlecoil_train",
                                                     a / "singlecoil_val"}


def test_training_through_a_repointed_symlink_reads_the_new_files(two_datasets, capfd):
    a, b = two_datasets
    link = Path("data")
    link.symlink_to(a)
    argv = ["--data_path", link, *TINY, "--max_epochs", "1", "--limit_val_batches", "1"]
    code, out, err = run_main(argv + ["--default_root_dir", "r1"], capfd)
    assert code == 0, err
    link.unlink()
    link.symlink_to(b)
    # Before: the cached 6-slice list of a, then an IndexError in b's 2-slice files.
    code, out, err = run_main(argv + ["--default_root_dir", "r2"], capfd)
    assert code == 0, err
    assert (f"note: dropped the entries of {link / 'singlecoil_train'}, "
            f"{link / 'singlecoil_val'} from the dataset cache") in out
    ckpt = torch.load(Path("r2/checkpoints/last.ckpt"), map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 4  # b's 2 volumes x 2 slices, batch size 1


# ------------------------------------------------ 3. two runs on one run folder


def hold_lock(root: Path) -> subprocess.Popen:
    """Another process that takes ``root``'s run lock and keeps it until killed."""
    code = ("import sys, time; from fastmri_growth.cli.run_lock import RunLock; "
            "RunLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(root)], stdout=subprocess.PIPE,
                            text=True, env=cli_env())
    assert proc.stdout.readline().strip() == "locked"
    return proc


@pytest.fixture(scope="module")
def knee(tiny_knee_root):
    """Tiny single-coil knee data (2 volumes of 2 slices per split); read only."""
    return tiny_knee_root


def test_a_second_run_on_a_locked_run_folder_is_refused_naming_the_holder(knee, tmp_path,
                                                                          capfd):
    run = tmp_path / "run"
    argv = ["--data_path", knee, "--default_root_dir", run, *TINY, *NO_CACHE]
    lock = run / ".fastmri-growth.lock"
    holder = hold_lock(run)
    try:
        assert lock.read_text().strip() == str(holder.pid)
        code, out, err = run_main(argv + ["--max_epochs", "1"], capfd)
        assert code == 2, err
        assert err == [f"{PROG_ERROR}--default_root_dir {run} is in use by another run "
                       f"(process {holder.pid} holds {lock}); wait for it to finish, or pass "
                       "another --default_root_dir (to test its checkpoints meanwhile, pass "
                       "--ckpt_path FILE with another --default_root_dir)"]
        assert sorted(p.name for p in run.iterdir()) == [lock.name]  # nothing written
    finally:
        holder.kill()
        holder.wait()
    # kill -9 left the file with the dead pid; the next run takes it over and says so.
    assert lock.read_text().strip() == str(holder.pid)
    code, out, err = run_main(argv + ["--max_epochs", "1"], capfd)
    assert code == 0, err
    assert f"note: took over the lock {lock} of process {holder.pid}, which is no longer " \
           "running" in out
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert not lock.exists()  # released at the end
    # Test mode and a resume are refused the same way while a run holds the folder.
    holder = hold_lock(run)
    try:
        before = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
        for extra in (["--mode", "test"], ["--max_epochs", "2"]):
            code, out, err = run_main(argv + extra, capfd)
            assert code == 2 and len(err) == 1, err
            assert f"is in use by another run (process {holder.pid} holds {lock})" in err[0]
        assert {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()} == before
        assert not (run / "reconstructions").exists()
    finally:
        holder.kill()
        holder.wait()


def test_ddp_ranks_started_for_a_run_do_not_lock(monkeypatch):
    from fastmri_growth.cli.run_lock import is_launching_process

    for name in ("LOCAL_RANK", "NODE_RANK", "RANK", "GROUP_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert is_launching_process()
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert is_launching_process()
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert not is_launching_process()
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("NODE_RANK", "1")
    assert not is_launching_process()


# ------------------------------------------ 7. every checkpoint of the run broken


@pytest.fixture(scope="module")
def grown_run(knee, tmp_path_factory):
    """A two-epoch dynamic_unet run that grew at epoch 1 (its last.ckpt has grown widths)."""
    run = tmp_path_factory.mktemp("grown") / "run"
    code = train.main([str(a) for a in ["--data_path", knee, "--default_root_dir", run, *TINY,
                                         *NO_CACHE, "--max_epochs", "2"]])
    assert code == 0
    return run


def tree_bytes(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_a_run_whose_checkpoints_are_all_broken_is_refused_not_overwritten(grown_run, knee,
                                                                           tmp_path, capfd):
    run = tmp_path / "run"
    shutil.copytree(grown_run, run)
    ckdir = run / "checkpoints"
    (best,) = ckdir.glob("epoch=*.ckpt")
    last = ckdir / "last.ckpt"
    best.write_bytes(best.read_bytes()[:1000])  # truncated by a full disk
    nan = torch.load(last, map_location="cpu", weights_only=False)
    nan["state_dict"]["unet.up_conv.1.1.bias"][:] = float("nan")
    torch.save(nan, last)
    before = tree_bytes(run)
    argv = ["--data_path", knee, "--default_root_dir", run, *TINY, *NO_CACHE, "--max_epochs", "3"]
    code, out, err = run_main(argv, capfd)
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"{PROG_ERROR}every checkpoint in {ckdir} is broken: ")
    assert "last.ckpt (1 weight tensor(s) hold NaN or Inf (first: unet.up_conv.1.1.bias))" \
        in err[0]
    assert f"{best.name} (RuntimeError: PytorchStreamReader failed reading zip archive" in err[0]
    assert err[0].endswith("nothing was trained or overwritten: to start afresh, move them out "
                           "of that folder or pass another --default_root_dir; to resume, pass "
                           "--ckpt_path with a good copy")
    assert tree_bytes(run) == before
    # Test mode names them too.
    code, out, err = run_main(argv + ["--mode", "test", "--test_split", "val"], capfd)
    assert code == 2 and "holds no usable .ckpt file (last.ckpt (1 weight tensor(s)" in err[0]
    assert tree_bytes(run) == before
    # Moved aside, the same command starts afresh.
    (run / "broken").mkdir()
    for p in (best, last):
        p.rename(run / "broken" / p.name)
    code, out, err = run_main(argv[:-1] + ["1"], capfd)
    assert code == 0, err
    assert torch.load(last, map_location="cpu", weights_only=False)["epoch"] == 0


# ----------------------------- 8. a finished run without validation keeps its state


def test_a_run_without_validation_writes_last_ckpt_every_epoch_and_resumes_exactly(
        knee, tmp_path, capfd):
    # --lr_step_size 1: the learning rate changes every epoch, so a resume that
    # restored the scheduler one epoch off would differ.
    argv = ["--data_path", knee, *TINY, *NO_CACHE, "--check_val_every_n_epoch", "5",
            "--lr_step_size", "1"]
    ref, part = tmp_path / "ref", tmp_path / "part"
    code, out, err = run_main(argv + ["--default_root_dir", ref, "--max_epochs", "3"], capfd)
    assert code == 0, err
    last = ref / "checkpoints" / "last.ckpt"
    # Before: "checkpoints (none)" after 3 trained epochs.
    assert f"checkpoints:      {ref / 'checkpoints'} (last.ckpt)" in out
    assert f"last checkpoint:  {last} (the final state; resume continues from it)" in out
    assert "last validation:  none ran" in out
    reference = torch.load(last, map_location="cpu", weights_only=False)
    assert (reference["epoch"], reference["global_step"]) == (2, 12)
    # Every epoch writes it: 2 epochs, then the same command to 3 resumes at epoch 2.
    code, out, err = run_main(argv + ["--default_root_dir", part, "--max_epochs", "2"], capfd)
    assert code == 0, err
    assert torch.load(part / "checkpoints" / "last.ckpt", map_location="cpu",
                      weights_only=False)["epoch"] == 1
    code, out, err = run_main(argv + ["--default_root_dir", part, "--max_epochs", "3"], capfd)
    assert code == 0, err
    assert f"Resuming from {part / 'checkpoints' / 'last.ckpt'}" in out
    resumed = torch.load(part / "checkpoints" / "last.ckpt", map_location="cpu",
                         weights_only=False)
    assert (resumed["epoch"], resumed["global_step"]) == (2, 12)
    assert resumed["state_dict"].keys() == reference["state_dict"].keys()
    for k, v in reference["state_dict"].items():
        assert torch.equal(v, resumed["state_dict"][k]), k
    assert resumed["lr_schedulers"] == reference["lr_schedulers"]


def test_validation_every_epoch_still_writes_last_ckpt_once_per_epoch(knee, tmp_path, capfd,
                                                                      monkeypatch):
    from fastmri_growth.pl_modules import checkpoint_io

    saves = []
    real = checkpoint_io.atomic_torch_save
    monkeypatch.setattr(checkpoint_io, "atomic_torch_save",
                        lambda obj, path: (saves.append((Path(path).name, obj["epoch"])),
                                           real(obj, path))[1])
    code, out, err = run_main(["--data_path", knee, *TINY, *NO_CACHE, "--default_root_dir",
                               tmp_path / "run", "--max_epochs", "2"], capfd)
    assert code == 0, err
    assert [s for s in saves if s[0] == "last.ckpt"] == [("last.ckpt", 0), ("last.ckpt", 1)]


# --------------------------------------------------- 9. --limit_train_batches 0


@pytest.mark.parametrize("mode, flag, value", [
    ("train", "limit_train_batches", "0"),
    ("train", "limit_train_batches", "0.0"),
    ("test", "limit_test_batches", "0"),
])
def test_limits_of_no_batch_are_refused_up_front(grown_run, knee, tmp_path, capfd, mode, flag,
                                                 value):
    run = tmp_path / "run"
    if mode == "test":
        shutil.copytree(grown_run, run)
    before = tree_bytes(tmp_path)
    code, out, err = run_main(["--mode", mode, "--data_path", knee, "--default_root_dir", run,
                               *TINY, *NO_CACHE, "--test_split", "val", "--max_epochs", "1",
                               f"--{flag}", value], capfd)
    assert code == 2, err
    what = "trains on" if mode == "train" else "tests"
    assert err == [f"{PROG_ERROR}--{flag} {value} {what} no batch: the run would end at once having done nothing; pass a "
                   "number of batches (1 or more) or a fraction of them in (0, 1], or leave "
                   f"--{flag} out (all batches)"]
    assert tree_bytes(tmp_path) == before
    assert mode == "test" or not run.exists()


def test_limit_val_batches_0_still_trains_without_validation(knee, tmp_path, capfd):
    run = tmp_path / "run"
    code, out, err = run_main(["--data_path", knee, "--default_root_dir", run, *TINY, *NO_CACHE,
                               "--max_epochs", "1", "--limit_val_batches", "0"], capfd)
    assert code == 0, err
    assert torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu",
                      weights_only=False)["global_step"] == 4  # 2 volumes x 2 slices


# ------------------------------------ 11. late or raw errors: data, weights, flags


@pytest.mark.parametrize("workers", ["0", "1"])
@pytest.mark.parametrize("damage", ["delete", "truncate", "fewer slices"])
def test_a_data_file_damaged_during_the_run_is_one_line_naming_it(knee, tmp_path, monkeypatch,
                                                                  capfd, damage, workers):
    data = tmp_path / "knee"
    shutil.copytree(knee, data)
    victim = data / "singlecoil_train" / "file1000001.h5"
    real = train.build_data_module

    def build_then_damage(*args, **kwargs):
        module = real(*args, **kwargs)
        make_loader = module.train_dataloader

        def train_dataloader():
            loader = make_loader()  # the slice list is built: now the file changes
            if damage == "delete":
                victim.unlink()
            elif damage == "truncate":
                victim.write_bytes(victim.read_bytes()[:victim.stat().st_size // 2])
            else:
                with h5py.File(victim, "r+") as hf:
                    kspace = hf["kspace"][:1]
                    del hf["kspace"]
                    hf["kspace"] = kspace
            return loader

        module.train_dataloader = train_dataloader
        return module

    monkeypatch.setattr(train, "build_data_module", build_then_damage)
    code, out, err = run_main(["--data_path", data, "--default_root_dir", tmp_path / "run",
                               *TINY[:-2], "--num_workers", workers, *NO_CACHE,
                               "--max_epochs", "1", "--num_sanity_val_steps", "0"], capfd)
    assert code == 1, err
    assert "Traceback" not in out + "\n".join(err)
    assert len([ln for ln in err if ln.startswith(PROG_ERROR)]) == 1 and \
        err[-1].startswith(f"{PROG_ERROR}cannot read slice "), err
    why = {"delete": "the file no longer exists",
           "truncate": "the file is truncated (truncated file: eof = ",
           "fewer slices": "is beyond the file's slices"}[damage]
    assert f" of data file {victim}: " in err[-1] and why in err[-1], err[-1]
    assert err[-1].endswith("it changed after the run listed it (deleted, truncated or "
                            "replaced): restore it, then run the same command again (training "
                            "resumes from the newest checkpoint)")


def test_a_grown_checkpoint_for_a_fixed_unet_names_dynamic_unet(grown_run, knee, tmp_path,
                                                                capfd):
    grown = grown_run / "checkpoints" / "last.ckpt"
    run = tmp_path / "run"
    base = ["--data_path", knee, "--default_root_dir", run, *TINY[:2], *TINY[4:], *NO_CACHE,
            "--model-type", "unet", "--init-from", grown]
    for argv in (base, base + ["--chans", "5"]):
        code, out, err = run_main(argv, capfd)
        assert code == 2, err
        # Before: torch's size-mismatch list, cut mid-word at 300 characters.
        assert err == [f"{PROG_ERROR}--init-from {grown} holds a grown network (down_1 "
                       "conv1_out has 9 filters; --model-type unet builds 10 there from "
                       "chans=5); pass --model-type dynamic_unet, which takes grown widths"]
        assert not run.exists()
    # The growing type takes it.
    code, out, err = run_main(base[:-4] + ["--model-type", "dynamic_unet", "--init-from", grown,
                                           "--max_epochs", "1"], capfd)
    assert code == 0, err


def test_weights_that_do_not_load_are_summarised_on_whole_words():
    from fastmri.models import Unet

    from fastmri_growth.cli.checkpoints import _load_error

    with pytest.raises(RuntimeError) as info:
        Unet(1, 1, 4, 2).load_state_dict(Unet(1, 1, 8, 2).state_dict())
    assert _load_error(info.value) == (
        "13 tensor(s) of other shapes, first down_sample_layers.0.layers.0.weight: "
        "[8, 1, 3, 3] in the file, [4, 1, 3, 3] in the network")
    long = RuntimeError("Missing key(s) in state_dict: " + ", ".join(
        f'"block_{i}.weight"' for i in range(40)))
    short = _load_error(long)
    assert len(short) <= 304 and short.endswith(" ...")
    assert short[:-4] == long.args[0][:len(short) - 4]  # whole words only


@pytest.mark.parametrize("flag", ["--ckpt", "--ckpt_path"])
def test_test_mode_given_a_data_file_as_checkpoint_names_the_flag(grown_run, knee, tmp_path,
                                                                  capfd, flag):
    h5 = sorted((knee / "singlecoil_val").glob("*.h5"))[0]
    run = tmp_path / "run"
    shutil.copytree(grown_run, run)
    argv = ["--mode", "test", "--data_path", knee, "--default_root_dir", run, *TINY, *NO_CACHE,
            "--test_split", "val"]
    takes = "last, best or a .ckpt file" if flag == "--ckpt" else "a .ckpt file"
    code, out, err = run_main(argv + [flag, h5], capfd)
    assert code == 2, err
    # Before: "pass another --ckpt_path or move the broken file out of the checkpoints folder".
    assert err == [f"{PROG_ERROR}{flag} {h5} is an HDF5 file (fastMRI data or reconstructions), "
                   f"not a checkpoint; pass {takes} written by fastmri-growth-train; to score "
                   "reconstructions against the data use fastmri-growth-eval"]
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    code, out, err = run_main(argv + [flag, junk], capfd)
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"{PROG_ERROR}cannot read checkpoint {junk} (UnpicklingError: ")
    assert err[0].endswith(f"); pass {takes} written by fastmri-growth-train as {flag}")
    assert not (run / "reconstructions").exists()


@pytest.mark.parametrize("flag, value", [("--chans", "0"), ("--chans", "-2"),
                                         ("--num_pool_layers", "0")])
def test_zero_channels_are_refused_before_torch_warns(knee, tmp_path, capfd, flag, value):
    run = tmp_path / "run"
    argv = ["--data_path", knee, "--default_root_dir", run, *TINY, *NO_CACHE, flag, value]
    code, out, err = run_main(argv, capfd)
    assert code == 2, err
    # Before: torch's "Initializing zero-element tensors is a no-op" warning first.
    assert err == [f"{PROG_ERROR}{flag} must be an int >= 1, got {value}"]
    assert not run.exists()


def test_a_grown_varnet_state_dict_for_a_fixed_varnet_names_dynamic_varnet(tmp_path):
    from fastmri.models import VarNet

    from fastmri_growth.cli.checkpoints import read_init_weights
    from fastmri_growth.cli.common import UsageError
    from fastmri_growth.models.dynamic_varnet import DynamicVarNet

    plain = tmp_path / "varnet.pt"
    torch.save(VarNet(num_cascades=2, sens_chans=2, sens_pools=1, chans=2, pools=1).state_dict(),
               plain)
    assert read_init_weights(plain, "varnet").architecture["chans"] == 2
    net = DynamicVarNet(num_cascades=2, sens_chans=2, sens_pools=1, chans=2, pools=1)
    state = net.state_dict()
    # Widen cascade 1's first conv by one filter, as a growth event does.
    key = next(k for k in state if k.startswith("cascades.1.") and k.endswith(
        "down_sample_layers.0.layers.0.weight"))
    grown = tmp_path / "grown.pt"
    state[key] = torch.cat([state[key], state[key][:1]])
    nxt = key.replace("layers.0.weight", "layers.4.weight")
    state[nxt] = torch.cat([state[nxt], state[nxt][:, :1]], dim=1)
    torch.save(state, grown)
    with pytest.raises(UsageError) as info:
        read_init_weights(grown, "varnet")
    assert str(info.value) == (
        f"--init-from {grown} holds a grown network (cascade_1 down_0 conv2_out has 2 filters; "
        "--model-type varnet builds 3 there from chans=3); pass --model-type dynamic_varnet, "
        "which takes grown widths")


def test_dataset_cache_is_read_and_written_under_a_lock(knee, tmp_path, monkeypatch):
    """fastMRI rewrites its cache in place; concurrent builders (DDP ranks, runs
    started together) read half-written files (EOFError) without the lock."""
    import fcntl
    import pickle

    import fastmri.data.mri_data as mri_data

    from fastmri_growth.pl_modules.data_module import FastMriDataModule

    cache = tmp_path / "cache.pkl"
    seen = []
    real_dump = pickle.dump

    def dump(obj, f, *args, **kwargs):
        # Another open file description cannot take the lock while the dataset writes.
        with open(cache.with_name(cache.name + ".lock"), "a+b") as other:
            try:
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
                seen.append("unlocked")
                fcntl.flock(other, fcntl.LOCK_UN)
            except BlockingIOError:
                seen.append("locked")
        return real_dump(obj, f, *args, **kwargs)

    monkeypatch.setattr(mri_data.pickle, "dump", dump)
    from fastmri.data.transforms import UnetDataTransform

    dm = FastMriDataModule(knee, "singlecoil", train_transform=UnetDataTransform("singlecoil"),
                           val_transform=UnetDataTransform("singlecoil"),
                           test_transform=UnetDataTransform("singlecoil"),
                           use_dataset_cache_file=True, dataset_cache_file=cache,
                           batch_size=1, num_workers=0)
    dm.train_dataloader()
    assert seen == ["locked"]
    assert str(knee / "singlecoil_train") in {str(k) for k in pickle.load(open(cache, "rb"))}
    # A cache whose write was cut short is refused naming it, before fastMRI's EOFError.
    cache.write_bytes(cache.read_bytes()[:10])
    with pytest.raises(ValueError, match=r"cannot read the dataset cache .*cache\.pkl "
                                         r"\((UnpicklingError|EOFError): "):
        dm.val_dataloader()
