"""Small Lightning fits on generated single-coil data, shared by the tests."""

import pytorch_lightning as pl
from fastmri.data import SliceDataset
from fastmri.data.subsample import RandomMaskFunc
from fastmri.data.transforms import UnetDataTransform
from torch.utils.data import DataLoader


def slice_loader(knee, split="train"):
    """Batches of 1 from ``knee/singlecoil_{split}``, a fixed 4x mask per file."""
    mask = RandomMaskFunc([0.08], [4])
    ds = SliceDataset(knee / f"singlecoil_{split}", challenge="singlecoil",
                      use_dataset_cache=False,
                      transform=UnetDataTransform("singlecoil", mask_func=mask, use_seed=True))
    return DataLoader(ds, batch_size=1)


def cpu_trainer(root, epochs, limit_val_batches=0, **kw):
    """A quiet, deterministic CPU Trainer of 2 training batches per epoch."""
    return pl.Trainer(accelerator="cpu", max_epochs=epochs, logger=False, deterministic=True,
                      enable_progress_bar=False, enable_model_summary=False,
                      num_sanity_val_steps=0, limit_train_batches=2,
                      limit_val_batches=limit_val_batches, default_root_dir=str(root), **kw)
