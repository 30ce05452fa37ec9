"""RngState: random states in the checkpoint, so a resumed run repeats the uninterrupted one.

Lightning checkpoints weights, optimizer, schedulers, loops and callback
states, but no random state: a run resumed from the checkpoint of epoch
``e`` then shuffles, drops out and masks differently from the run that went
on. This callback stores, with every checkpoint, the generators a fastMRI
training run draws from after that point:

* torch's CPU generator (and CUDA's, when used): data-loader shuffling and
  worker seeds, dropout;
* numpy's and Python's global generators;
* the ``RandomState`` of every mask function in the training data's
  transforms: fastMRI's ``create_mask_for_mask_type`` seeds it from the
  operating system, and with ``num_workers=0`` it draws every training mask.
  It is restored when training starts, once the data loader exists.

Exact only on one process (Lightning stores rank 0's states); with data
loader workers, fastMRI's ``worker_init_fn`` seeds each worker's masks from
torch's generator, which is restored.
"""
from __future__ import annotations

import random
from typing import Any, Dict, List, Optional

import numpy as np
import pytorch_lightning as pl
import torch


def _plain(state: tuple) -> list:
    """A numpy ``RandomState`` state as plain Python values (safe for ``weights_only`` loads)."""
    name, keys, pos, has_gauss, cached = state
    return [name, [int(k) for k in keys], int(pos), int(has_gauss), float(cached)]


def _numpy(state: list) -> tuple:
    name, keys, pos, has_gauss, cached = state
    return (name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached)


def mask_generators(dataset: Any, depth: int = 3) -> List[np.random.RandomState]:
    """The ``RandomState`` s of a dataset's transforms (fastMRI mask functions), in a fixed order."""
    found: List[np.random.RandomState] = []

    def walk(obj, level):
        if obj is None or level > depth:
            return
        if isinstance(obj, np.random.RandomState):
            if all(obj is not f for f in found):
                found.append(obj)
            return
        if isinstance(obj, (list, tuple)):
            for item in obj:
                walk(item, level + 1)
            return
        attrs = getattr(obj, "__dict__", None)
        if not attrs:
            return
        for name in sorted(attrs):
            if name in ("transform", "transforms", "mask_func", "rng", "datasets"):
                walk(attrs[name], level + 1)

    walk(dataset, 0)
    return found


class RngState(pl.Callback):
    """Saves and restores the random states of a training run (see the module docstring)."""

    def __init__(self):
        super().__init__()
        self._trainer: Optional[pl.Trainer] = None
        self._pending_masks: Optional[List[Any]] = None

    @property
    def state_key(self) -> str:
        return "RngState"

    def setup(self, trainer, pl_module, stage: str) -> None:
        self._trainer = trainer

    def _train_dataset(self):
        if self._trainer is None:
            return None
        try:
            loader = self._trainer.train_dataloader
        except Exception:  # not built yet
            return None
        return getattr(loader, "dataset", None)

    def state_dict(self) -> Dict[str, Any]:
        state = {
            "torch": torch.get_rng_state(),
            "numpy": _plain(np.random.get_state()),
            "python": random.getstate(),
            "masks": [_plain(g.get_state()) for g in mask_generators(self._train_dataset())],
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        torch.set_rng_state(state_dict["torch"])
        np.random.set_state(_numpy(state_dict["numpy"]))
        random.setstate(state_dict["python"])
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])
        self._pending_masks = list(state_dict.get("masks", []))

    def on_train_start(self, trainer, pl_module) -> None:
        """Restores the masks' random states once the training data exist."""
        if not self._pending_masks:
            return
        gens = mask_generators(self._train_dataset())
        for g, s in zip(gens, self._pending_masks):
            g.set_state(_numpy(s))
        self._pending_masks = None
