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

Under DDP every rank draws its own masks (and dropout): each rank's states
are gathered into the checkpoint (``"ranks"``, in rank order; Lightning
writes rank 0's file) and each rank restores its own, so a resumed DDP run
repeats the uninterrupted one too. A checkpoint resumed on another number of
processes (or one written before the states were gathered) gives every rank
rank 0's states, with a warning. With data loader workers, fastMRI's
``worker_init_fn`` seeds each worker's masks from torch's generator, which
is restored.
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

    def _own_state(self) -> Dict[str, Any]:
        """This process's generators (torch's CPU state as a tensor, the rest plain values)."""
        state = {
            "torch": torch.get_rng_state(),
            "numpy": _plain(np.random.get_state()),
            "python": random.getstate(),
            "masks": [_plain(g.get_state()) for g in mask_generators(self._train_dataset())],
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
        return state

    def _world(self):
        """``(rank, world size)`` of the running process group ((0, 1) without one)."""
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    def state_dict(self) -> Dict[str, Any]:
        """Rank 0's states at the top level, and every rank's under ``"ranks"``.

        Lightning builds the checkpoint on every rank at the same moment, so
        gathering here is a collective that every rank joins.
        """
        own = self._own_state()
        rank, world = self._world()
        if world == 1:
            return dict(own, ranks=[own])
        gathered: List[Any] = [None] * world
        torch.distributed.all_gather_object(gathered, own)
        return dict(gathered[0], ranks=gathered)

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        rank, world = self._world()
        ranks = state_dict.get("ranks")
        if isinstance(ranks, list) and len(ranks) == world:
            state_dict = ranks[rank]
        elif world > 1 or (isinstance(ranks, list) and len(ranks) != world):
            from pytorch_lightning.utilities import rank_zero_warn

            saved = len(ranks) if isinstance(ranks, list) else "1 (rank 0's only)"
            rank_zero_warn(
                f"the checkpoint holds the random states of {saved} process(es) but this run "
                f"has {world}: every process starts from rank 0's, so the masks drawn from now "
                "on differ from the uninterrupted run's")
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
