"""GrowthCallback: grow any LightningModule's network on a schedule.

A LightningModule that wants growth says which network grows and how to
compute the loss on a training batch (the :class:`GrowableModule`
protocol)::

    class MyModule(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = DynamicUnet(1, 1, chans=8, num_pool_layers=3)

        def growable_net(self):          # a GrowableNet (DynamicUnet, DynamicVarNet, ...)
            return self.net

        def growth_loss(self, batch):    # scalar loss with the network as it is
            image, target = batch
            return F.l1_loss(self.net(image), target)

    trainer = pl.Trainer(callbacks=[GrowthCallback(GrowthSchedule("interval", sites))])

Growth happens at the first training batch of an epoch the schedule
selects (the first batch this process sees, after a mid-epoch resume),
scored on that batch with dropout off, and before that epoch's checkpoint,
so the checkpoint holds the grown network. Then the callback

* carries the optimizer over (grown parameters swapped in place, state
  remapped; LightningOptimizer, schedulers and the AMP scaler stay valid),
  or recreates optimizer and schedulers (``reset_optimizer``);
* rebuilds the DDP wrapper, which hooked the old parameter objects (every
  rank grows identically: statistics are averaged with the strategy's
  ``reduce``, candidates are drawn from identically seeded generators);
* resets torch.compile's caches (a grown network is a guard failure);
* logs ``growth/*`` and ``network/*`` and prints one line per site;
* scales the updates of new weights during the growth epoch
  (``new_filter_lr_scale``).

Its schedule state is its own ``state_dict``, so Lightning checkpoints and
restores it. Resizing a grown network when a checkpoint is loaded must
happen in the LightningModule's ``on_load_checkpoint`` (Lightning calls a
Callback's too late, after the weights): call
``self.growable_net().resize_from_state_dict(checkpoint["state_dict"])``
there, with the module's prefix stripped, as :class:`DynamicUnetModule` does.
"""
from __future__ import annotations

import copy
from typing import Any, Dict, List, Mapping, Optional, Protocol, Sequence, Union, runtime_checkable

import pytorch_lightning as pl
import torch

from fastmri_growth.growth.engine import grow
from fastmri_growth.growth.methods import GrowthMethod, get_method
from fastmri_growth.growth.net import GrowableNet
from fastmri_growth.growth.optim import remap_optimizer_state
from fastmri_growth.growth.report import GrowthReport
from fastmri_growth.growth.schedule import GrowthSchedule
from fastmri_growth.growth.sites import Site, as_site


@runtime_checkable
class GrowableModule(Protocol):
    """What a LightningModule provides to be grown by :class:`GrowthCallback`.

    ``on_growth(reports)`` is an optional hook, called after every growth
    event once the optimizer and the DDP wrapper are up to date.
    """

    def growable_net(self) -> GrowableNet:
        """The network that grows."""

    def growth_loss(self, batch: Any) -> torch.Tensor:
        """The scalar training loss on ``batch`` with the network as it is."""


def _widths_total(size: Mapping) -> int:
    """Sum of every width in a (possibly nested) ``get_network_size()``."""
    total = 0
    for value in size.values():
        total += _widths_total(value) if isinstance(value, Mapping) else int(value)
    return total


def _width_of(size: Mapping, site: Site) -> int:
    node = size
    if site.net:
        for part in site.net.split("/"):
            node = node[part]
    return node[site.layer][site.width_key]


class GrowthCallback(pl.Callback):
    """Grow a :class:`GrowableModule`'s network on a :class:`GrowthSchedule`."""

    def __init__(
        self,
        schedule: GrowthSchedule,
        method: Union[str, GrowthMethod] = "sample_select",
        method_options: Optional[Mapping[str, Any]] = None,
        n_new: int = 1,
        max_width: Optional[int] = None,
        new_filter_lr_scale: float = 1.0,
        reset_optimizer: bool = False,
        seed: int = 0,
    ):
        """
        Args:
            schedule: When and where to grow.
            method: A registered growth method's name or a configured method.
            method_options: Options for a method given by name.
            n_new: Filters added per site per event.
            max_width: Cap on the filters of any conv (None: no cap).
            new_filter_lr_scale: Learning-rate scale of newly added weights
                during the epoch they were added in (the update is scaled,
                so it is exact for adaptive optimizers too).
            reset_optimizer: Recreate optimizers and schedulers after growth
                instead of carrying their state over.
            seed: Seed of candidate and noise generation (identical on every
                rank, and a function of the epoch, so a resumed run repeats
                the same decisions).

        Raises:
            ValueError: a bad option, before anything trains.
        """
        super().__init__()
        self.method = get_method(method, **dict(method_options or {}))
        if not isinstance(n_new, int) or isinstance(n_new, bool) or n_new < 1:
            raise ValueError(f"n_new must be an int >= 1, got {n_new!r}")
        if max_width is not None and (not isinstance(max_width, int) or max_width < 1):
            raise ValueError(f"max_width must be an int >= 1 or None, got {max_width!r}")
        if not (isinstance(new_filter_lr_scale, (int, float)) and new_filter_lr_scale >= 0
                and new_filter_lr_scale == new_filter_lr_scale and new_filter_lr_scale != float("inf")):
            raise ValueError(
                f"new_filter_lr_scale must be a finite float >= 0, got {new_filter_lr_scale!r}")
        self.schedule = schedule
        self.n_new = n_new
        self.max_width = max_width
        self.new_filter_lr_scale = float(new_filter_lr_scale)
        self.reset_optimizer = bool(reset_optimizer)
        self.seed = int(seed)
        self.reports: List[GrowthReport] = []  # this process's, for inspection
        # Per grown parameter, a bool mask of the entries added this epoch.
        self._new_masks: Dict[torch.nn.Parameter, torch.Tensor] = {}
        self._before_step: Dict[torch.nn.Parameter, torch.Tensor] = {}
        # (epoch, validation_loss) of the last validation, for the plateau schedule.
        self._last_validation: Optional[tuple] = None
        self._checked_epoch: Optional[int] = None

    # ------------------------------------------------------------ state
    @property
    def state_key(self) -> str:
        return "GrowthCallback"

    def state_dict(self) -> Dict[str, Any]:
        return {"schedule": copy.deepcopy(self.schedule.state),
                "last_validation": None if self._last_validation is None
                else list(self._last_validation)}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self.schedule.state = copy.deepcopy(state_dict["schedule"])
        last = state_dict.get("last_validation")
        self._last_validation = tuple(last) if last else None

    # ------------------------------------------------------------ hooks
    def on_train_epoch_start(self, trainer, pl_module) -> None:
        """Ends the previous growth's LR scale, and observes the last validation."""
        self._new_masks = {}
        if self.schedule.kind == "plateau" and self._last_validation is not None:
            self.schedule.observe_validation(*self._last_validation)
            self._last_validation = None

    def on_validation_end(self, trainer, pl_module) -> None:
        """Notes the validation that actually ran (before the checkpoint is written)."""
        if trainer.sanity_checking:
            return
        loss = trainer.callback_metrics.get("validation_loss")
        if loss is not None:
            self._last_validation = (trainer.current_epoch, float(loss))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        """Grows the scheduled sites on this batch if the epoch is due."""
        # Normally batch 0; after a resume from a mid-epoch checkpoint, the
        # first batch this process sees (the schedule remembers grown epochs).
        epoch = trainer.current_epoch
        if self._checked_epoch == epoch:
            return
        self._checked_epoch = epoch
        sites = self.schedule.sites_for_epoch(epoch)
        if sites:
            self.grow(trainer, pl_module, [batch], sites, epoch)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        # After this epoch's growth, so the curve shows the size trained at.
        net = pl_module.growable_net()
        # Identical on every rank; sync_dist only keeps Lightning's DDP check quiet.
        pl_module.log("network/params", float(sum(p.numel() for p in net.parameters())),
                      on_step=False, on_epoch=True, sync_dist=True)
        pl_module.log("network/filters", float(_widths_total(net.get_network_size())),
                      on_step=False, on_epoch=True, sync_dist=True)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if self._new_masks:
            self._before_step = {p: p.detach().clone() for p in self._new_masks}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        """Scales the last update of the weights added this epoch."""
        if not self._before_step:
            return
        with torch.no_grad():
            for p, before in self._before_step.items():
                mask = self._new_masks.get(p)
                if mask is not None:
                    scaled = before + self.new_filter_lr_scale * (p - before)
                    p.copy_(torch.where(mask, scaled, p))
        self._before_step = {}

    # ------------------------------------------------------------ growth
    def _budgets(self, net, sites: Sequence[Site]) -> Dict[Site, int]:
        size = net.get_network_size()
        out = {}
        for site in sites:
            n = self.n_new
            if self.max_width is not None:
                n = max(0, min(n, self.max_width - _width_of(size, site)))
            if n > 0:
                out[site] = n
        return out

    def grow(self, trainer: Optional[pl.Trainer], pl_module, batches: Sequence[Any],
             sites: Sequence[Union[Site, tuple]], epoch: int) -> List[GrowthReport]:
        """Grow ``sites`` on ``batches`` and bring the training state up to date.

        Args:
            trainer: The running trainer, or None outside ``fit``.
            pl_module: A :class:`GrowableModule`.
            batches: Scoring batches as the training loader yields them.
            sites: Sites to grow.
            epoch: The epoch being started (seeds the candidates).

        Returns:
            The growth reports (empty if every site is at ``max_width``).
        """
        net = pl_module.growable_net()
        budgets = self._budgets(net, [as_site(s) for s in sites])
        if not budgets:
            self.schedule.mark_grown(epoch)
            return []
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        # Lightning's own reduction: a mean over DDP ranks, identity on one device.
        reduce_fn = None if trainer is None else (
            lambda t: trainer.strategy.reduce(t, reduce_op="mean"))
        reports = grow(net, list(budgets), self.method, batches, pl_module.growth_loss,
                       n_new=budgets, generator=generator, reduce_fn=reduce_fn)
        self.schedule.mark_grown(epoch)
        changes = [ch for r in reports for ch in r.changes]
        self._after_growth(trainer, changes)
        seconds = sum(r.seconds for r in reports)
        lines = [f"[epoch {epoch}] {r}" for r in reports]
        lines.append(
            f"[epoch {epoch}] network: {reports[-1].params_after:,} parameters "
            f"(+{reports[-1].params_after - reports[0].params_before:,}), growth took "
            f"{seconds:.2f} s"
        )
        for r in reports:
            r.changes = []  # drop references to the old parameters
        self.reports.extend(reports)
        for line in lines:
            pl_module.print(line) if trainer is not None else print(line)
        if trainer is not None:
            # Epoch-level: step-level values would only reach the logger on
            # steps that are multiples of log_every_n_steps.
            pl_module.log_dict({
                "growth/events": float(self.schedule.events),
                "growth/filters_added": float(sum(r.n_added for r in reports)),
                "growth/seconds": float(seconds),
                "growth/params": float(reports[-1].params_after),
            }, on_step=False, on_epoch=True, sync_dist=True)
        hook = getattr(pl_module, "on_growth", None)
        if callable(hook):
            hook(reports)
        return reports

    def _after_growth(self, trainer: Optional[pl.Trainer], changes) -> None:
        """Bring optimizer, DDP wrapper and compiled graphs up to date."""
        if trainer is not None:
            if self.reset_optimizer:
                trainer.strategy.setup_optimizers(trainer)
            else:
                for opt in trainer.optimizers:
                    remap_optimizer_state(opt, changes, seeding="mean")
            strategy = trainer.strategy
            wrapped = isinstance(getattr(strategy, "model", None),
                                 torch.nn.parallel.DistributedDataParallel)
            if wrapped and hasattr(strategy, "configure_ddp"):
                # DDP hooked the old parameter objects (even with a single
                # process): rebuild the wrapper. Collective: every rank grows
                # identically, and rank 0's parameters are broadcast.
                strategy.model = strategy.lightning_module
                strategy.configure_ddp()
        if self.new_filter_lr_scale != 1.0:
            for ch in changes:
                # A weight can change twice in one event (a conv2 gets an
                # input column from its conv1, then output rows): carry the
                # mask of the earlier change into the new shape.
                earlier = self._new_masks.pop(ch.old, None)
                mask = ch.new_mask().clone()
                if earlier is not None:
                    mask |= ch.carry(earlier.to(ch.new.dtype), ch.new.new_zeros(())) > 0.5
                self._new_masks[ch.new] = mask
        # Every growth changes shapes: a compiled graph would be a guard
        # failure and, after a few, a silent fallback to eager. This resets
        # every compiled function of the process, not only this model's.
        torch.compiler.reset()
