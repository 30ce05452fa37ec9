"""Shared settings and fixtures: one torch thread, a small synthetic dataset."""

import os

# The suite's tensors are tiny, so intra-op threads only add synchronisation;
# with subprocess tests (DDP ranks, CLI runs) sharing 2 cores, oversubscribed
# OpenMP threads made single ops over 10x slower. Set before torch is
# imported, so subprocesses inherit it too.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

from fastmri_growth.data.synthetic import CHALLENGES, SPLITS

# The dataset behind ``synthetic_root``: every challenge and split, 64x64
# targets (k-space 128 x W), few volumes and slices so it is quick to build
# and to train on.
SYNTHETIC_KWARGS = dict(
    challenges=CHALLENGES,
    splits=SPLITS,
    num_volumes={"train": 2, "val": 2, "test": 1, "challenge": 1},
    num_slices=3,
    recon_size=64,
    seed=0,
)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    """Root of a synthetic dataset (see ``SYNTHETIC_KWARGS``).

    Layout: ``root/knee/singlecoil_{split}``, ``root/knee/multicoil_{split}``,
    ``root/brain/multicoil_{split}`` for split in train, val, test, challenge.
    Shared by the whole session: tests must not write into it.
    """
    from fastmri_growth.data import generate_dataset

    root = tmp_path_factory.mktemp("synthetic")
    generate_dataset(root, **SYNTHETIC_KWARGS)
    return root


@pytest.fixture(scope="session")
def tiny_knee_root(tmp_path_factory):
    """Tiny single-coil knee data: ``singlecoil_{train,val,test}``, 2 volumes of
    2 slices each, 64x64 targets; the root the training command's
    ``--data_path`` takes. Shared by the session: tests must not write into it
    (copy it first).
    """
    from fastmri_growth.data.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("tiny_knee")
    generate_dataset(root, challenges=("knee_singlecoil",), splits=("train", "val", "test"),
                     num_volumes=2, num_slices=2, recon_size=64, seed=0)
    return root / "knee"
