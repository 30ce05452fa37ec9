"""Shared fixtures: a small synthetic dataset in fastMRI's on-disk format."""

import pytest

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
