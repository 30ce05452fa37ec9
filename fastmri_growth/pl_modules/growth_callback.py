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
import math
from typing import (Any, Callable, Dict, List, Mapping, Optional, Protocol, Sequence, Union,
                    runtime_checkable)

import pytorch_lightning as pl
import torch

from fastmri_growth.growth.engine import FAN_OUT_INITS, grow
from fastmri_growth.growth.methods import GrowthMethod, get_method
from fastmri_growth.growth.net import GrowableNet
from fastmri_growth.growth.optim import SEEDINGS, remap_optimizer_state
from fastmri_growth.growth.pruning import (PruneReport, PruneSchedule, prune, removal_key,
                                           score_filters)
from fastmri_growth.growth.report import GrowthReport
from fastmri_growth.growth.schedule import GrowthSchedule, budget_targets_for, width_of
from fastmri_growth.growth.scoring import DEFAULT_SITE_CRITERION, site_value
from fastmri_growth.growth.sites import Site, as_site
from fastmri_growth.growth.statistics import NonFiniteLossError


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


def _data_error(err: "NonFiniteLossError", batches: Sequence[Any], epoch: int) -> Exception:
    """The scoring pass met a non-finite loss: name the data, not growth."""
    from .finite_guard import NonFiniteError, describe_batch

    where = ("another process's scoring batch" if err.batch_index is None
             else describe_batch(batches[err.batch_index]))
    return NonFiniteError(
        f"non-finite loss on {where} at the start of epoch {epoch} (found by the growth "
        "event's scoring pass, before any change to the network): the data hold NaN or Inf, "
        "or the weights already diverged; fix or remove the file"
    )


def _isolated(dataset):
    """A shallow copy of a dataset whose transforms (and their random state) are copies.

    fastMRI's ``SliceDataset`` draws random training masks from its
    transform's mask function; reading extra items through the original
    would advance that random state. The data themselves are not copied.
    """
    if dataset is None:
        return None
    out = copy.copy(dataset)
    if getattr(out, "transform", None) is not None:
        out.transform = copy.deepcopy(out.transform)
    if isinstance(getattr(out, "datasets", None), list):  # CombinedSliceDataset, ConcatDataset
        out.datasets = [_isolated(d) for d in out.datasets]
    return out


def _widths_total(size: Mapping) -> int:
    """Sum of every width in a (possibly nested) ``get_network_size()``."""
    total = 0
    for value in size.values():
        total += _widths_total(value) if isinstance(value, Mapping) else int(value)
    return total


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
        growth_batches: int = 1,
        fan_out_init: str = "zero",
        auto_sites: Optional[int] = None,
        site_criterion: str = DEFAULT_SITE_CRITERION,
        optimizer_seeding: str = "grad",
        new_filter_ramp_steps: int = 80,
        prune: Optional[PruneSchedule] = None,
    ):
        """
        Args:
            schedule: When and where to grow.
            method: A registered growth method's name or a configured method.
            method_options: Options for a method given by name.
            n_new: Filters added per site per event (not with the budget
                schedule, whose targets say how many).
            max_width: Cap on the filters of any conv (None: no cap).
            new_filter_lr_scale: Learning-rate scale of newly added weights
                during the epoch they were added in (the update is scaled,
                so it is exact for adaptive optimizers too).
            reset_optimizer: Recreate optimizers and schedulers after growth
                instead of carrying their state over.
            seed: Seed of candidate and noise generation and of the extra
                scoring batches (identical on every rank, and a function of
                the epoch, so a resumed run repeats the same decisions).
            growth_batches: Scoring batches per event: the epoch's first
                training batch and ``growth_batches - 1`` more drawn from the
                training set (per rank) by a generator seeded from ``seed``,
                the epoch and the rank. The scores are the gradient of their
                mean loss.
            fan_out_init: ``"zero"`` (function-preserving) or ``"descent"``.
            auto_sites: Grow only the this many best of the schedule's sites
                per event, ranked by ``site_criterion``.
            site_criterion: See :data:`fastmri_growth.growth.scoring.SITE_CRITERIA`.
            optimizer_seeding: New second-moment entries: ``"grad"`` (the
                square of the new slices' known gradient, never below the
                tensor's mean: measured to halve the loss bump after an event),
                ``"moment"`` (the mean over the scoring batches of their squared
                per-batch gradient, never below the mean), ``"mean"`` of the
                existing ones, or ``"zero"``.
            new_filter_ramp_steps: Ramp the new weights' updates linearly from
                0 to full over this many optimizer steps (0: no ramp). The
                default, 80, was measured to remove the training-loss bump
                after an event (RMSprop, batch 4) at equal validation quality.
            prune: When and how to remove filters (:class:`PruneSchedule`;
                None: never). Its ``exchange`` mode prunes, at every growth
                event, as many filters as the event adds.

        Raises:
            ValueError: a bad option, before anything trains.
        """
        super().__init__()
        self.method = get_method(method, **dict(method_options or {}))
        for name, value in (("n_new", n_new), ("growth_batches", growth_batches)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if max_width is not None and (not isinstance(max_width, int) or max_width < 1):
            raise ValueError(f"max_width must be an int >= 1 or None, got {max_width!r}")
        if not (isinstance(new_filter_lr_scale, (int, float)) and new_filter_lr_scale >= 0
                and math.isfinite(new_filter_lr_scale)):
            raise ValueError(
                f"new_filter_lr_scale must be a finite float >= 0, got {new_filter_lr_scale!r}")
        if not isinstance(new_filter_ramp_steps, int) or new_filter_ramp_steps < 0:
            raise ValueError(
                f"new_filter_ramp_steps must be an int >= 0, got {new_filter_ramp_steps!r}")
        if fan_out_init not in FAN_OUT_INITS:
            raise ValueError(
                f"Unknown fan_out_init {fan_out_init!r}; valid: {', '.join(FAN_OUT_INITS)}")
        if fan_out_init == "descent" and not self.method.zero_fan_out:
            raise ValueError(f"fan_out_init='descent' applies to methods that add zero-fan-out "
                             f"filters (not {self.method.name!r})")
        if optimizer_seeding not in SEEDINGS:
            raise ValueError(f"Unknown optimizer_seeding {optimizer_seeding!r}; valid: "
                             f"{', '.join(SEEDINGS)}")
        site_value(0.0, 1, 1, site_criterion)
        if auto_sites is not None:
            n_sites = len(schedule.sites) if schedule.kind != "progressive" else None
            if not isinstance(auto_sites, int) or isinstance(auto_sites, bool) or auto_sites < 1 \
                    or (n_sites is not None and auto_sites > n_sites):
                raise ValueError(
                    f"auto_sites must be an int in [1, {n_sites}] (the number of sites to "
                    f"choose from), got {auto_sites!r}")
            if not self.method.zero_fan_out:
                raise ValueError(f"auto_sites ranks candidate scores; {self.method.name!r} has "
                                 "none (use sample_select, random or gradmax)")
        self.schedule = schedule
        self.n_new = n_new
        self.max_width = max_width
        self.new_filter_lr_scale = float(new_filter_lr_scale)
        self.reset_optimizer = bool(reset_optimizer)
        self.seed = int(seed)
        self.growth_batches = growth_batches
        self.fan_out_init = fan_out_init
        self.auto_sites = auto_sites
        self.site_criterion = site_criterion
        self.optimizer_seeding = optimizer_seeding
        self.new_filter_ramp_steps = new_filter_ramp_steps
        if prune is not None and prune.exchange and schedule.kind == "budget":
            raise ValueError("prune_schedule='exchange' moves width, the budget schedule adds it: "
                             "use exchange with the interval, plateau or progressive schedule")
        self.prune = prune
        self.prune_reports: List[PruneReport] = []
        self._pruned_epochs: List[int] = []
        self.reports: List[GrowthReport] = []  # this process's, for inspection
        #: Called as ``batch_filter(batches, epoch, what, pl_module)`` on an
        #: event's scoring batches before they are used (``what``: "growth",
        #: "pruning" or "pruning and growth"); returns the batches to keep. An
        #: event left with none does not happen (the schedule's next one comes
        #: as usual). FiniteGuard's skip mode drops non-finite batches here.
        self.batch_filter: Optional[Callable[[List[Any], int, str, Any], List[Any]]] = None
        # Per grown parameter: [bool mask of the new entries, optimizer steps
        # since growth, epoch of growth] (LR scale and ramp apply to them).
        self._new: Dict[torch.nn.Parameter, list] = {}
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
                else list(self._last_validation),
                "pruned_epochs": list(self._pruned_epochs)}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self._pruned_epochs = list(state_dict.get("pruned_epochs", []))
        restored = copy.deepcopy(state_dict["schedule"])
        if "budget" not in restored and "budget" in self.schedule.state:
            restored["budget"] = self.schedule.state["budget"]
        self.schedule.state = restored
        last = state_dict.get("last_validation")
        self._last_validation = tuple(last) if last else None

    #: Checkpoint key of the recently added weights' masks and step counts
    #: (LR scale and ramp), by parameter name: a resume mid-ramp goes on
    #: exactly where the interrupted run was.
    NEW_WEIGHTS_KEY = "growth_new_weights"

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: Dict[str, Any]) -> None:
        if not self._new:
            return
        names = {id(p): n for n, p in pl_module.named_parameters()}
        checkpoint[self.NEW_WEIGHTS_KEY] = {
            names[id(p)]: {"mask": rec[0].detach().cpu(), "steps": rec[1], "epoch": rec[2]}
            for p, rec in self._new.items() if id(p) in names}

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: Dict[str, Any]) -> None:
        # Runs after the module has been resized to the stored widths and its
        # weights loaded, so the names point at the live parameters.
        saved = checkpoint.get(self.NEW_WEIGHTS_KEY) or {}
        params = dict(pl_module.named_parameters())
        self._new = {}
        for name, rec in saved.items():
            p = params.get(name)
            if p is not None and tuple(p.shape) == tuple(rec["mask"].shape):
                self._new[p] = [rec["mask"].to(p.device), int(rec["steps"]), int(rec["epoch"])]

    def prepare(self, net) -> None:
        """Fix what depends on the network at the start of growth (the budget's targets).

        Called by the growing modules right after they build their network,
        so a target below the start size fails before anything trains.

        Raises:
            ValueError: the budget target is smaller than the network.
        """
        if self.schedule.kind == "budget" and "budget" not in self.schedule.state:
            start, target, params = budget_targets_for(
                net, self.schedule.sites, self.schedule.target_chans, self.schedule.target_params)
            self.schedule.set_budget(start, target, params)

    # ------------------------------------------------------------ hooks
    def on_fit_start(self, trainer, pl_module) -> None:
        """Checks the schedule against the trainer, and fixes the budget's targets."""
        events = self.schedule.budget_epochs() if self.schedule.kind == "budget" else []
        if events and trainer.max_epochs is not None and trainer.max_epochs >= 0 and \
                self.schedule.end_epoch >= trainer.max_epochs:
            raise ValueError(
                f"growth_end_epoch={self.schedule.end_epoch} is not before max_epochs="
                f"{trainer.max_epochs}: the last growth event would never run")
        self.prepare(pl_module.growable_net())

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        """Ends the growth epoch's LR scale, and observes the last validation."""
        # The LR scale lasts for the growth epoch; a ramp may last longer.
        ramp = self.new_filter_ramp_steps
        self._new = {p: rec for p, rec in self._new.items() if ramp and rec[1] < ramp}
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
        prune_due = self.prune is not None and self.prune.due(epoch) and \
            epoch not in self._pruned_epochs
        if sites or prune_due:
            batches = [batch] + self.extra_batches(trainer, epoch)
            if self.batch_filter is not None:
                what = " and ".join(w for w, due in (("pruning", prune_due), ("growth", sites)) if due)
                batches = self.batch_filter(batches, epoch, what, pl_module)
                if not batches:
                    return
            if prune_due:
                self.prune_now(trainer, pl_module, batches, epoch)
            if sites:
                self.grow(trainer, pl_module, batches, sites, epoch)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        # After this epoch's growth, so the curve shows the size trained at.
        net = pl_module.growable_net()
        # Identical on every rank; sync_dist only keeps Lightning's DDP check quiet.
        pl_module.log("network/params", float(sum(p.numel() for p in net.parameters())),
                      on_step=False, on_epoch=True, sync_dist=True)
        pl_module.log("network/filters", float(_widths_total(net.get_network_size())),
                      on_step=False, on_epoch=True, sync_dist=True)

    def _update_scale(self, rec, epoch: int) -> float:
        scale = self.new_filter_lr_scale if epoch == rec[2] else 1.0
        if self.new_filter_ramp_steps:
            scale *= min(1.0, rec[1] / self.new_filter_ramp_steps)
        return scale

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if self._new:
            self._before_step = {p: p.detach().clone() for p in self._new}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        """Scales the last update of the weights added recently (LR scale, ramp)."""
        if not self._before_step:
            return
        epoch = trainer.current_epoch
        with torch.no_grad():
            for p, before in self._before_step.items():
                rec = self._new.get(p)
                if rec is None:
                    continue
                rec[1] += 1
                scale = self._update_scale(rec, epoch)
                if rec[0].device != p.device:  # restored on the CPU, moved since
                    rec[0] = rec[0].to(p.device)
                if scale != 1.0:
                    p.copy_(torch.where(rec[0], before + scale * (p - before), p))
        self._before_step = {}

    # ------------------------------------------------------------ growth
    def extra_batches(self, trainer: Optional[pl.Trainer], epoch: int) -> List[Any]:
        """``growth_batches - 1`` training batches for scoring, drawn reproducibly.

        Indices into the training set come from a generator seeded by the
        seed, the epoch and the rank (a resumed run draws the same ones), are
        collated by the training loader's ``collate_fn`` in its batch size,
        and moved to the module's device. They are read through a copy of the
        dataset's transform, so the draw leaves the training stream's own
        random state (fastMRI's random masks) as it was: a run that grows sees
        the same training batches as one that does not.
        """
        if self.growth_batches <= 1 or trainer is None:
            return []
        loader = trainer.train_dataloader
        dataset = _isolated(getattr(loader, "dataset", None))
        if dataset is None or not hasattr(dataset, "__len__") or len(dataset) == 0:
            return []
        batch_size = getattr(loader, "batch_size", None) or 1
        g = torch.Generator().manual_seed(
            (self.seed * 1_000_003 + epoch) * 8191 + trainer.global_rank + 1)
        count = min((self.growth_batches - 1) * batch_size, len(dataset))
        idx = torch.randperm(len(dataset), generator=g)[:count].tolist()
        collate = getattr(loader, "collate_fn", None) or torch.utils.data.default_collate
        out = []
        for i in range(0, count, batch_size):
            batch = collate([dataset[j] for j in idx[i:i + batch_size]])
            out.append(trainer.strategy.batch_to_device(batch))
        return out

    def _budgets(self, net, sites: Sequence[Site], epoch: int) -> Dict[Site, int]:
        size = net.get_network_size()
        targets = self.schedule.budget_targets(epoch) if self.schedule.kind == "budget" else None
        out = {}
        for site in sites:
            width = width_of(size, site)
            n = self.n_new if targets is None else targets.get(site.key, width) - width
            if self.max_width is not None:
                n = min(n, self.max_width - width)
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
            The growth reports (empty if no site has room to grow).
        """
        net = pl_module.growable_net()
        self.prepare(net)
        budgets = self._budgets(net, [as_site(s) for s in sites], epoch)
        if not budgets:
            self.schedule.mark_grown(epoch)
            return []
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        # Lightning's own reduction: a mean over DDP ranks, identity on one device.
        reduce_fn = None if trainer is None else (
            lambda t: trainer.strategy.reduce(t, reduce_op="mean"))
        auto = None if self.auto_sites is None else min(self.auto_sites, len(budgets))
        n_new: Any = budgets
        if auto is not None and self.schedule.kind == "budget":
            n_new = self._auto_budget(net, auto, budgets)
        if self.prune is not None and self.prune.exchange:
            # Exchange: first remove as many filters as this event adds, where
            # they matter least; then grow where the scores say.
            adds = sum(budgets.values()) if auto is None else auto * self.n_new
            self.prune_now(trainer, pl_module, batches, epoch, total=adds)
        try:
            reports = grow(net, list(budgets), self.method, batches, pl_module.growth_loss,
                           n_new=n_new, generator=generator, reduce_fn=reduce_fn,
                           fan_out_init=self.fan_out_init, auto_sites=auto,
                           site_criterion=self.site_criterion)
        except NonFiniteLossError as err:
            raise _data_error(err, batches, epoch) from None
        self.schedule.mark_grown(epoch)
        changes = [ch for r in reports for ch in r.changes]
        self._after_growth(trainer, changes, epoch)
        seconds = sum(r.seconds for r in reports)
        lines = [f"[epoch {epoch}] {r}" for r in reports]
        lines.append(
            f"[epoch {epoch}] network: {reports[-1].params_after:,} parameters "
            f"(+{reports[-1].params_after - reports[0].params_before:,}), growth took "
            f"{seconds:.2f} s on {len(batches)} scoring batch{'es' if len(batches) > 1 else ''}"
        )
        for r in reports:
            r.changes = []  # drop references to the old parameters
        self.reports.extend(reports)
        for line in lines:
            pl_module.print(line) if trainer is not None else print(line)
        if trainer is not None:
            # Epoch-level: step-level values would only reach the logger on
            # steps that are multiples of log_every_n_steps.
            logged = {
                "growth/events": float(self.schedule.events),
                "growth/filters_added": float(sum(r.n_added for r in reports)),
                "growth/seconds": float(seconds),
                "growth/params": float(reports[-1].params_after),
                "growth/scoring_loss": float(reports[0].loss),
            }
            if self.fan_out_init == "descent":
                logged["growth/scoring_loss_after"] = float(reports[0].loss_after)
            pl_module.log_dict(logged, on_step=False, on_epoch=True, sync_dist=True)
        hook = getattr(pl_module, "on_growth", None)
        if callable(hook):
            hook(reports)
        return reports

    def _auto_budget(self, net, auto: int, budgets: Dict[Site, int]):
        """Budget + auto sites: this event's parameter increment, split over the chosen sites.

        No site grows past its target width: auto sites decides which sites
        get there first. (Uncapped, a full-resolution site, cheap in
        parameters per filter, took a hundred filters in one event and the
        network three times the target's FLOPs: benchmarks/README.md.)
        """
        budget = self.schedule.state["budget"]
        events = self.schedule.budget_epochs()
        left = len([e for e in events if e not in self.schedule.state["grown_epochs"]]) or 1
        now = sum(p.numel() for p in net.parameters())
        step = max(0, budget["target_params"] - now) / left
        size = net.get_network_size()

        def count(score) -> int:
            n = int(round(step / (auto * max(score.params_per_filter, 1))))
            room = budget["target"][score.site.key] - width_of(size, score.site)
            if self.max_width is not None:
                room = min(room, self.max_width - width_of(size, score.site))
            # budgets only holds sites below this event's target: room >= 1.
            return max(1, min(n, room))
        return count

    def prune_now(self, trainer: Optional[pl.Trainer], pl_module, batches: Sequence[Any],
                  epoch: int, total: Optional[int] = None) -> List[PruneReport]:
        """Remove filters as the prune schedule says and bring the training state up to date.

        Args:
            trainer: The running trainer, or None.
            pl_module: A :class:`GrowableModule`.
            batches: Scoring batches (``taylor`` scores on them).
            epoch: The current epoch.
            total: Exchange mode: remove this many filters in all, the
                first ones in removal order over the prune sites (else: per site,
                ``n`` or ``fraction`` of its width).

        Returns:
            The prune reports (empty when no site can lose a filter).
        """
        p = self.prune
        net = pl_module.growable_net()
        reduce_fn = None if trainer is None else (
            lambda t: trainer.strategy.reduce(t, reduce_op="mean"))
        sites = [as_site(s) for s in p.sites] if p.sites is not None else net.growth_sites()
        size = net.get_network_size()
        if total is None:
            removals = {}
            for site in sites:
                width = width_of(size, site)
                n = p.n if p.n is not None else max(1, int(round(p.fraction * width)))
                n = min(n, width - p.min_width)
                if n > 0:
                    removals[site] = n
        else:
            try:
                scores = score_filters(net, sites, p.criterion, batches, pl_module.growth_loss,
                                       reduce_fn)
            except NonFiniteLossError as err:
                raise _data_error(err, batches, epoch) from None
            room = {site: width_of(size, site) - p.min_width for site in sites}
            ranked = sorted(((float(v), k, site) for site in sites
                             for k, v in enumerate(removal_key(p.criterion, scores[site]))),
                            key=lambda t: t[0])
            picked: Dict[Site, List[int]] = {}
            for _, k, site in ranked:
                if sum(map(len, picked.values())) == total:
                    break
                if len(picked.get(site, [])) < room[site]:
                    picked.setdefault(site, []).append(k)
            removals = picked
        if epoch not in self._pruned_epochs:
            self._pruned_epochs.append(epoch)
        if not removals:
            return []
        try:
            reports = prune(net, removals, p.criterion, batches, pl_module.growth_loss,
                            reduce_fn=reduce_fn, min_width=p.min_width)
        except NonFiniteLossError as err:
            raise _data_error(err, batches, epoch) from None
        changes = [ch for r in reports for ch in r.changes]
        self._after_growth(trainer, changes, epoch, new_entries=False)
        for r in reports:
            r.changes = []
        self.prune_reports.extend(reports)
        lines = [f"[epoch {epoch}] {r}" for r in reports]
        lines.append(f"[epoch {epoch}] network: {reports[-1].params_after:,} parameters "
                     f"(-{reports[0].params_before - reports[-1].params_after:,})")
        for line in lines:
            pl_module.print(line) if trainer is not None else print(line)
        if trainer is not None:
            pl_module.log_dict({
                "prune/events": float(len(self._pruned_epochs)),
                "prune/filters_removed": float(sum(len(r.removed) for r in reports)),
                "prune/params": float(reports[-1].params_after),
            }, on_step=False, on_epoch=True, sync_dist=True)
        return reports

    def _after_growth(self, trainer: Optional[pl.Trainer], changes, epoch: int,
                      new_entries: bool = True) -> None:
        """Bring optimizer, DDP wrapper and compiled graphs up to date."""
        if trainer is not None:
            if self.reset_optimizer:
                trainer.strategy.setup_optimizers(trainer)
            else:
                for opt in trainer.optimizers:
                    remap_optimizer_state(opt, changes, seeding=self.optimizer_seeding)
            strategy = trainer.strategy
            wrapped = isinstance(getattr(strategy, "model", None),
                                 torch.nn.parallel.DistributedDataParallel)
            if wrapped and hasattr(strategy, "configure_ddp"):
                # DDP hooked the old parameter objects (even with a single
                # process): rebuild the wrapper. Collective: every rank grows
                # identically, and rank 0's parameters are broadcast.
                strategy.model = strategy.lightning_module
                strategy.configure_ddp()
        if not new_entries:
            # Pruning: masks of recently added entries follow the kept ones.
            for ch in changes:
                rec = self._new.pop(ch.old, None)
                if rec is not None:
                    kept = ch.carry(rec[0].to(ch.new.dtype), ch.new.new_zeros(())) > 0.5
                    self._new[ch.new] = [kept, rec[1], rec[2]]
        elif self.new_filter_lr_scale != 1.0 or self.new_filter_ramp_steps:
            for ch in changes:
                # A weight can change twice in one event (a conv2 gets an
                # input column from its conv1, then output rows): carry the
                # mask of the earlier change into the new shape.
                earlier = self._new.pop(ch.old, None)
                mask = ch.new_mask().clone()
                if earlier is not None:
                    mask |= ch.carry(earlier[0].to(ch.new.dtype), ch.new.new_zeros(())) > 0.5
                self._new[ch.new] = [mask, 0, epoch]
        # Every growth changes shapes: a compiled graph would be a guard
        # failure and, after a few, a silent fallback to eager. This resets
        # every compiled function of the process, not only this model's.
        torch.compiler.reset()
