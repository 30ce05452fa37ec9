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

    trainer = pl.Trainer(callbacks=[GrowthCallback(layers_to_grow=["bottleneck"])])

The keywords are the options of :class:`~fastmri_growth.growth.config.GrowthConfig`
(the growing modules' and the command line's, under the same names and
defaults). Growth happens at the first training batch of an epoch the
schedule selects (the first batch this process sees, after a mid-epoch
resume), scored with dropout off, before that epoch's checkpoint. Each hook
hands its work to a pure piece of :mod:`fastmri_growth.growth` (schedule,
event counts, scoring-batch choice, exchange ranking, update ramp) and then
brings the training state up to date: the optimizer (state carried over, or
recreated with ``reset_optimizer``), the DDP wrapper (rebuilt; every rank
grows identically), torch.compile's caches, logs and one line per site.

Depth growth (``target_cascades``, for a backbone with cascades such as
``DynamicVarNet``) inserts one cascade at the first batch of each due epoch
(after that epoch's width growth) by
:class:`~fastmri_growth.growth.depth.DepthSchedule`: the new cascade fades in
through a gate that the callback sets before every training batch from the
global step, its parameters join the optimizer as new entries, the DDP
wrapper is rebuilt, and the width schedule's sites take in the new
cascade's U-Net.

The schedule, prune events, depth events, last validation and update ramp
are the callback's own ``state_dict``. The callback also makes the network resize
itself to a checkpoint's widths when its weights are loaded
(:func:`~fastmri_growth.growth.net.resize_on_load`, installed in ``setup``),
so ``trainer.fit(module, ckpt_path=...)`` resumes a grown network whatever
attribute holds it; a module that is loaded with ``load_from_checkpoint``
calls ``resize_on_load(self.net)`` in its constructor.
"""
from __future__ import annotations

import copy
import math
from typing import Any, Callable, Dict, List, Optional, Protocol, Sequence, Union, runtime_checkable

import pytorch_lightning as pl
import torch

from fastmri_growth.growth.config import GrowthConfig
from fastmri_growth.growth.engine import grow
from fastmri_growth.growth.net import GrowableNet, resize_on_load
from fastmri_growth.growth.depth import CascadeReport, extend_budget
from fastmri_growth.growth.optim import (Preconditioner, add_params_to_optimizer, preconditioner_for,
                                         remap_optimizer_state)
from fastmri_growth.growth.pruning import (PruneReport, exchange_removals, fixed_removals, prune,
                                           score_filters)
from fastmri_growth.growth.ramp import UpdateRamp
from fastmri_growth.growth.report import GrowthReport
from fastmri_growth.growth.schedule import (auto_budget_counts, auto_decision, auto_targets,
                                            budget_targets_for, event_counts,
                                            scoring_batch_indices, width_of)
from fastmri_growth.growth.scoring import score_sites
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


def _widths_total(size) -> int:
    """Sum of every width in a (possibly nested) ``get_network_size()``."""
    return sum(_widths_total(v) if isinstance(v, dict) else int(v) for v in size.values())


def forward_flops_per_sample(pl_module, batch: Any) -> float:
    """Forward FLOPs per sample of ``pl_module.growth_loss`` on ``batch`` (convs and matmuls)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        pl_module.growth_loss(batch)
    return counter.get_total_flops() / max(_batch_size(batch), 1)


def _batch_size(batch: Any) -> int:
    """The leading size of the first tensor in ``batch`` (a tensor, tuple, namedtuple or dict)."""
    if torch.is_tensor(batch):
        return int(batch.shape[0]) if batch.dim() else 1
    items = batch.values() if isinstance(batch, dict) else batch
    if isinstance(items, (list, tuple)) or isinstance(batch, dict):
        for item in items:
            if torch.is_tensor(item) and item.dim():
                return int(item.shape[0])
    return 1


def log_epoch_values(pl_module, values: Dict[str, float]) -> None:
    """Log values that are set once per epoch (sizes, event counts), at epoch level.

    Epoch-level: step-level values would only reach the logger on steps that
    are multiples of ``log_every_n_steps``. ``batch_size=1``: each value is
    logged once per epoch, so the weight of its mean does not matter, and
    Lightning would otherwise guess it from the current batch (growth runs in
    a batch hook), warning "ambiguous batch_size" after every event.
    ``sync_dist``: the values are identical on every rank; it only keeps
    Lightning's DDP check quiet.
    """
    pl_module.log_dict(values, on_step=False, on_epoch=True, sync_dist=True, batch_size=1)


def _reduce_fn(trainer):
    # Lightning's own reduction: a mean over DDP ranks, identity on one device.
    return None if trainer is None else (lambda t: trainer.strategy.reduce(t, reduce_op="mean"))


#: The key of :class:`GrowthCallback`'s state among a checkpoint's callback states.
GROWTH_STATE_KEY = "GrowthCallback"


def missing_growth_state(checkpoint: Any, module_key: Optional[str] = None) -> Optional[str]:
    """What growth state a checkpoint of a growing module lacks to resume (None: none).

    Args:
        checkpoint: A loaded Lightning checkpoint.
        module_key: The growing module's own checkpoint key (``"dynamic_unet"``),
            where checkpoints written before growth became a callback kept the
            schedule (``schedule_state``).

    Returns:
        A phrase naming the missing state, or None when the schedule's state is there.
    """
    if not isinstance(checkpoint, dict):
        return "growth schedule state (not a checkpoint)"
    if GROWTH_STATE_KEY in (checkpoint.get("callbacks") or {}):
        return None
    info = checkpoint.get(module_key) if module_key else None
    if isinstance(info, dict) and "schedule_state" in info:
        return None
    return f"growth schedule state (callbacks['{GROWTH_STATE_KEY}'])"


class GrowthCallback(pl.Callback):
    """Grow a :class:`GrowableModule`'s network as a :class:`GrowthConfig` says.

    Args:
        config: The growth options; or give them as keywords.
        **options: Options of :class:`GrowthConfig` by name (``growth_method``,
            ``layers_to_grow``, ``n_new``, ``prune_schedule``, ...).

    Raises:
        ValueError: a bad option, before anything trains.
    """

    def __init__(self, config: Optional[GrowthConfig] = None, **options: Any):
        super().__init__()
        if config is not None and options:
            config = config.replace(**options)
        self.config = config if config is not None else GrowthConfig.from_options(options)
        self.method = self.config.method()
        self.auto_sites = self.config.effective_auto_sites
        self.ramp = UpdateRamp(self.config.new_filter_ramp_steps, self.config.new_filter_lr_scale)
        #: When cascades are inserted and how their gates fade (None: no depth growth).
        self.depth = self.config.depth_schedule()
        self.cascade_reports: List[CascadeReport] = []  # this process's, for inspection
        self.schedule = None  # the network's sites are known at prepare()
        self.prune = None
        self.reports: List[GrowthReport] = []  # this process's, for inspection
        self.prune_reports: List[PruneReport] = []
        self.pruned_epochs: List[int] = []
        #: Called as ``batch_filter(batches, epoch, what, pl_module)`` on an
        #: event's scoring batches before they are used (``what``: "growth",
        #: "pruning" or "pruning and growth"); returns the batches to keep. An
        #: event left with none does not happen (the schedule's next one comes
        #: as usual). FiniteGuard's skip mode drops non-finite batches here.
        self.batch_filter: Optional[Callable[[List[Any], int, str, Any], List[Any]]] = None
        # (epoch, validation_loss) of the last validation, for the plateau schedule.
        self._last_validation: Optional[tuple] = None
        self._checked_epoch: Optional[int] = None
        self._before_step: Dict[str, torch.Tensor] = {}
        self._ramp_state: Optional[dict] = None

    # ------------------------------------------------------------ set-up
    def prepare(self, net) -> None:
        """Build the schedules for the network's sites and fix the budget's targets.

        Called by the growing modules right after they build their network
        (and by ``setup``), so a bad site or a target below the start size
        fails before anything trains.

        Raises:
            ValueError: a site the network lacks, a budget target below it,
                depth growth for a network without cascades, or a target
                number of cascades below the network's.
        """
        if self.depth is not None:
            capabilities = ("cascades",) if callable(getattr(net, "add_cascades", None)) else ()
            self.config.check_backbone(capabilities, type(net).__name__)
            if not self.depth.events:
                self.depth.check_start(net.num_cascades)
        if self.schedule is None:
            sites = list(net.growth_sites())
            self.schedule = self.config.schedule(sites)
            self.prune = self.config.prune_schedule(sites)
        if self.schedule.kind == "budget" and "budget" not in self.schedule.state:
            self.schedule.set_budget(*budget_targets_for(
                net, self.schedule.sites, self.schedule.target_chans, self.schedule.target_params))
        s = self.schedule
        if s.kind == "auto" and "auto_caps" not in s.state and (
                s.target_chans is not None or s.target_params is not None):
            s.state["auto_caps"] = budget_targets_for(net, s.sites, s.target_chans,
                                                      s.target_params)[1]

    def setup(self, trainer, pl_module, stage: str) -> None:
        """Prepares the schedules, and makes the network resize to a checkpoint's widths on load."""
        net = pl_module.growable_net()
        self.prepare(net)
        resize_on_load(net)

    def on_fit_start(self, trainer, pl_module) -> None:
        """Checks the schedule against the trainer (not in a ``fast_dev_run`` smoke test,
        which runs one batch of whatever schedule the real run has)."""
        s = self.schedule
        if s.kind == "budget" and trainer.max_epochs is not None and \
                not trainer.fast_dev_run and 0 <= trainer.max_epochs <= s.end_epoch:
            raise ValueError(f"growth_end_epoch={s.end_epoch} is not before max_epochs="
                             f"{trainer.max_epochs}: the last growth event would never run")

    # ------------------------------------------------------------ state
    @property
    def state_key(self) -> str:
        return GROWTH_STATE_KEY

    def state_dict(self) -> Dict[str, Any]:
        return {"schedule": copy.deepcopy(self.schedule.state),
                "last_validation": None if self._last_validation is None
                else list(self._last_validation),
                "pruned_epochs": list(self.pruned_epochs), "ramp": self.ramp.state_dict(),
                "depth": None if self.depth is None else self.depth.state_dict()}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self.pruned_epochs = list(state_dict.get("pruned_epochs", []))
        restored = copy.deepcopy(state_dict["schedule"])
        if "budget" not in restored and "budget" in self.schedule.state:
            restored["budget"] = self.schedule.state["budget"]
        self.schedule.state = restored
        last = state_dict.get("last_validation")
        self._last_validation = tuple(last) if last else None
        if "ramp" in state_dict:
            self._ramp_state = state_dict["ramp"]
        if self.depth is not None:
            self.depth.load_state_dict(state_dict.get("depth"))

    #: Where checkpoints written before the ramp joined the callback's state kept it.
    LEGACY_RAMP_KEY = "growth_new_weights"

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: Dict[str, Any]) -> None:
        """Refuses to resume training without the schedule's state; reads an old ramp.

        Raises:
            ValueError: ``trainer.fit(ckpt_path=...)`` of a checkpoint without
                the growth state (the schedule would start over, growing again
                and past ``max_growth_steps``).
        """
        if trainer is not None and trainer.state.fn == "fit":
            missing = missing_growth_state(checkpoint, getattr(pl_module, "checkpoint_key", None))
            if missing:
                raise ValueError(
                    f"cannot resume training from a checkpoint without its {missing}: the growth "
                    "schedule would start over (growing again, past max_growth_steps); load the "
                    "weights into a new run instead")
        # Lightning calls this before load_state_dict, whose state then wins.
        if self.LEGACY_RAMP_KEY in checkpoint:
            self._ramp_state = checkpoint[self.LEGACY_RAMP_KEY]

    def _restore_ramp(self, pl_module) -> None:
        """The restored ramp, by name onto the live (resized, loaded) parameters."""
        if self._ramp_state is not None:
            self.ramp.load_state_dict(self._ramp_state, dict(pl_module.named_parameters()))
            self._ramp_state = None

    # ------------------------------------------------------------ hooks
    def on_train_epoch_start(self, trainer, pl_module) -> None:
        """Ends the growth epoch's LR scale, and observes the last validation."""
        self._restore_ramp(pl_module)
        self.ramp.start_epoch()
        if self.schedule.kind == "plateau" and self._last_validation is not None:
            self.schedule.observe_validation(*self._last_validation)
            self._last_validation = None

    def on_validation_end(self, trainer, pl_module) -> None:
        """Notes the validation that actually ran (before the checkpoint is written)."""
        loss = trainer.callback_metrics.get("validation_loss")
        if not trainer.sanity_checking and loss is not None:
            self._last_validation = (trainer.current_epoch, float(loss))

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if self.ramp.entries:
            self._before_step = self.ramp.snapshot(dict(pl_module.named_parameters()))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        """Scales the last update of the weights added recently (LR scale, ramp)."""
        if self.schedule is not None and self.schedule.kind == "auto":
            loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
            if loss is not None:
                self.schedule.observe_train_loss(trainer.current_epoch, float(loss))
        if self._before_step:
            self.ramp.after_step(dict(pl_module.named_parameters()), self._before_step,
                                 trainer.current_epoch)
            self._before_step = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        """Prunes, grows and inserts cascades on this batch if the epoch is due; sets the gates."""
        # Normally batch 0; after a resume from a mid-epoch checkpoint, the
        # first batch this process sees (the schedules remember their epochs).
        self._restore_ramp(pl_module)  # resumed mid-epoch: no on_train_epoch_start
        epoch = trainer.current_epoch
        if self._checked_epoch != epoch:
            self._checked_epoch = epoch
            if self.depth is not None:
                # Resumed with more cascades than the module was built with:
                # the width schedule's sites follow the network.
                self._refresh_sites(pl_module.growable_net())
            self._width_events(trainer, pl_module, batch, epoch)
            if self.depth is not None:
                n = self.depth.due(epoch, pl_module.growable_net().num_cascades)
                if n:
                    self.insert_cascades(trainer, pl_module, epoch, n)
        if self.depth is not None and self.depth.events:
            # From the global step alone: exact after a resume, equal on every rank.
            pl_module.growable_net().set_cascade_gates(self.depth.gates(trainer.global_step))

    def _width_events(self, trainer, pl_module, batch, epoch: int) -> None:
        sites = self.schedule.sites_for_epoch(epoch)
        prune_due = self.prune is not None and self.prune.due(epoch) and \
            epoch not in self.pruned_epochs
        if not (sites or prune_due):
            return
        batches = [batch] + self.extra_batches(trainer, epoch)
        if self.batch_filter is not None:
            what = " and ".join(w for w, due in (("pruning", prune_due), ("growth", sites)) if due)
            batches = self.batch_filter(batches, epoch, what, pl_module)
            if not batches:
                return
        if prune_due:
            self.prune_now(trainer, pl_module, batches, epoch)
        if sites and self.schedule.kind == "auto":
            sites = self.auto_check(trainer, pl_module, batches, sites, epoch)
        if sites:
            self.grow(trainer, pl_module, batches, sites, epoch)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        # After this epoch's growth, so the curve shows the size trained at.
        net = pl_module.growable_net()
        values = {"network/params": float(sum(p.numel() for p in net.parameters())),
                  "network/filters": float(_widths_total(net.get_network_size()))}
        if isinstance(getattr(net, "num_cascades", None), int):
            values["network/cascades"] = float(net.num_cascades)
        log_epoch_values(pl_module, values)

    # ------------------------------------------------------------ events
    def extra_batches(self, trainer: Optional[pl.Trainer], epoch: int) -> List[Any]:
        """``growth_batches - 1`` training batches for scoring, drawn reproducibly.

        Indices come from :func:`~fastmri_growth.growth.schedule.scoring_batch_indices`
        and are collated by the training loader's ``collate_fn``, then moved to
        the module's device. They are read through a copy of the dataset's
        transform, so the draw leaves the training stream's own random state
        (fastMRI's random masks) as it was: a run that grows sees the same
        training batches as one that does not.
        """
        if self.config.growth_batches <= 1 or trainer is None:
            return []
        loader = trainer.train_dataloader
        dataset = _isolated(getattr(loader, "dataset", None))
        if dataset is None or not hasattr(dataset, "__len__"):
            return []
        collate = getattr(loader, "collate_fn", None) or torch.utils.data.default_collate
        groups = scoring_batch_indices(self.config.growth_seed, epoch, trainer.global_rank,
                                       self.config.growth_batches - 1,
                                       getattr(loader, "batch_size", None) or 1, len(dataset))
        return [trainer.strategy.batch_to_device(collate([dataset[j] for j in group]))
                for group in groups]

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
        c, net = self.config, pl_module.growable_net()
        self.prepare(net)
        targets = self.schedule.budget_targets(epoch) if self.schedule.kind == "budget" else None
        if self.schedule.kind == "auto":
            targets = self._auto_targets(net, [as_site(s) for s in sites])
        counts = event_counts(net.get_network_size(), [as_site(s) for s in sites], c.n_new,
                              targets, c.max_width)
        if not counts:
            self.schedule.mark_grown(epoch)
            return []
        auto = None if self.auto_sites is None else min(self.auto_sites, len(counts))
        n_new: Any = counts
        if auto is not None and self.schedule.kind == "budget":
            n_new = auto_budget_counts(self.schedule, net, auto, c.max_width)
        if self.prune is not None and self.prune.exchange:
            # Exchange: first remove as many filters as this event adds, where
            # they matter least; then grow where the scores say.
            adds = sum(counts.values()) if auto is None else auto * c.n_new
            self.prune_now(trainer, pl_module, batches, epoch, total=adds)
        reports = self._guarded(batches, epoch, grow, net, list(counts), self.method, batches,
                                pl_module.growth_loss, n_new=n_new,
                                generator=torch.Generator().manual_seed(
                                    c.growth_seed * 1_000_003 + epoch),
                                reduce_fn=_reduce_fn(trainer), fan_out_init=c.fan_out_init,
                                auto_sites=auto, site_criterion=c.site_criterion,
                                preconditioner=self.preconditioner(trainer))
        self.schedule.mark_grown(epoch)
        self._after_surgery(trainer, pl_module, reports, epoch, grown=True)
        self.reports.extend(reports)
        seconds = sum(r.seconds for r in reports)
        plural = "es" if len(batches) > 1 else ""
        self._say(trainer, pl_module, epoch, reports,
                  f"(+{reports[-1].params_after - reports[0].params_before:,}), growth took "
                  f"{seconds:.2f} s on {len(batches)} scoring batch{plural}")
        if trainer is not None:
            logged = {"growth/events": float(self.schedule.events),
                      "growth/filters_added": float(sum(r.n_added for r in reports)),
                      "growth/seconds": float(seconds),
                      "growth/params": float(reports[-1].params_after),
                      "growth/scoring_loss": float(reports[0].loss)}
            if c.fan_out_init == "descent":
                logged["growth/scoring_loss_after"] = float(reports[0].loss_after)
            log_epoch_values(pl_module, logged)
        hook = getattr(pl_module, "on_growth", None)
        if callable(hook):
            hook(reports)
        return reports

    def _auto_targets(self, net, sites: Sequence[Site]) -> Dict[str, int]:
        s = self.schedule
        return auto_targets(net.get_network_size(), sites, s.growth_rate, s.state.get("auto_caps"),
                            self.config.max_width)

    def auto_check(self, trainer: Optional[pl.Trainer], pl_module, batches: Sequence[Any],
                   sites: Sequence[Site], epoch: int) -> List[Site]:
        """The auto schedule's decision at ``epoch``: the sites to grow (empty: not now).

        Scores every site with room to grow (optimizer-aware scores, one
        statistics pass on ``batches``), compares the best site's predicted
        gain per added FLOP with the training loss's decrease per FLOP over
        the last epoch (:func:`~fastmri_growth.growth.schedule.auto_decision`),
        records the decision in the schedule's state and says it.
        """
        c, net, s = self.config, pl_module.growable_net(), self.schedule
        sites = [as_site(x) for x in sites]
        size = net.get_network_size()
        targets = self._auto_targets(net, sites)
        room = [x for x in sites if targets[x.key] > width_of(size, x)]
        opts = getattr(trainer, "optimizers", None) or [None]
        reduce_fn = _reduce_fn(trainer)
        scores = []
        if room:
            scores = self._guarded(
                batches, epoch, score_sites, net, batches, pl_module.growth_loss, room,
                n_candidates=int(c.method_options.get("n_candidates", 10)), criterion="score",
                generator=torch.Generator().manual_seed(c.growth_seed * 1_000_003 + epoch),
                reduce_fn=reduce_fn, preconditioner=preconditioner_for(opts[0],
                                                                       c.optimizer_seeding))
        decrease = torch.tensor([s.loss_decrease_per_step(epoch)], dtype=torch.float64)
        if reduce_fn is not None:
            decrease = reduce_fn(decrease.to(pl_module.device)).cpu()
        lr = float(opts[0].param_groups[0]["lr"]) if opts[0] is not None else 1.0
        decision = auto_decision(epoch, scores, lr, float(decrease), forward_flops_per_sample(
            pl_module, batches[0]), s.threshold)
        s.record_auto(decision)
        stopped = s.state.get("auto_stopped") is not None
        line = (f"[epoch {epoch}] auto schedule: {'growing' if decision.grow else 'not growing'}"
                f"{'; growth has stopped' if stopped else ''} ({decision.reason})")
        pl_module.print(line) if trainer is not None else print(line)
        if trainer is not None and math.isfinite(decision.ratio):
            log_epoch_values(pl_module, {"growth/auto_ratio": float(decision.ratio)})
        return room if decision.grow else []

    def preconditioner(self, trainer: Optional[pl.Trainer]) -> Optional[Preconditioner]:
        """What scores candidates under ``candidate_score="optimizer"`` (None: gradient norms).

        The trainer's first optimizer as it is now, with the event's
        second-moment seeding; outside ``fit`` (no optimizer) the steps are
        those of plain SGD, and the scores gradient norms.
        """
        if self.config.candidate_score != "optimizer":
            return None
        opts = getattr(trainer, "optimizers", None) or [None]
        return preconditioner_for(opts[0], self.config.optimizer_seeding)

    def insert_cascades(self, trainer: Optional[pl.Trainer], pl_module, epoch: int,
                        n: int = 1) -> CascadeReport:
        """Insert ``n`` cascades at the end, fading in, and bring the training state up to date.

        Args:
            trainer: The running trainer, or None outside ``fit``.
            pl_module: A :class:`GrowableModule` whose network has cascades.
            epoch: The epoch being started (seeds a fresh cascade).
            n: Cascades to insert.

        Returns:
            The insertion's report.
        """
        c, net = self.config, pl_module.growable_net()
        # At the end: earlier cascades keep their indices, so parameter
        # names (the update ramp's keys) and optimizer positions stay valid.
        report = net.add_cascades(n, position="end", init=c.cascade_init,
                                  seed=(c.growth_seed * 1_000_003 + epoch) % (2 ** 63))
        self.depth.record(epoch, 0 if trainer is None else trainer.global_step, report.indices)
        names = [f"cascade_{k}" for k in report.indices]
        if self.schedule is not None and self.schedule.kind == "budget":
            extend_budget(self.schedule.state.get("budget"), f"cascade_{report.neighbour}", names)
        self._refresh_sites(net)
        if trainer is not None:
            if c.reset_optimizer:
                trainer.strategy.setup_optimizers(trainer)
            else:
                for opt in trainer.optimizers:
                    group, before = _slot(pl_module, opt, report.new_parameters)
                    add_params_to_optimizer(opt, report.new_parameters, group, before)
            self._rebuild_ddp(trainer)
        torch.compiler.reset()
        self.cascade_reports.append(report)
        line = f"[epoch {epoch}] {report}; fades in over {c.cascade_fade_steps} optimizer steps"
        pl_module.print(line) if trainer is not None else print(line)
        if trainer is not None:
            log_epoch_values(pl_module, {"depth/events": float(len(self.depth.events)),
                                         "depth/params": float(report.params_after)})
        return report

    def _refresh_sites(self, net) -> None:
        """The width and prune schedules' sites, re-read from the network (new cascades)."""
        if self.schedule is None or self.schedule.kind == "progressive":
            return
        sites = list(net.growth_sites())
        self.schedule.sites = self.config.schedule(sites).sites
        self.prune = self.config.prune_schedule(sites)

    def prune_now(self, trainer: Optional[pl.Trainer], pl_module, batches: Sequence[Any],
                  epoch: int, total: Optional[int] = None) -> List[PruneReport]:
        """Remove filters as the prune schedule says and bring the training state up to date.

        Args:
            trainer: The running trainer, or None.
            pl_module: A :class:`GrowableModule`.
            batches: Scoring batches (``taylor`` scores on them).
            epoch: The current epoch.
            total: Exchange mode: remove this many filters in all, the first
                ones in removal order over the prune sites (else: per site,
                ``n`` or ``fraction`` of its width).

        Returns:
            The prune reports (empty when no site can lose a filter).
        """
        p, net = self.prune, pl_module.growable_net()
        sites = [as_site(s) for s in p.sites] if p.sites is not None else net.growth_sites()
        size = net.get_network_size()
        if total is None:
            removals: Any = fixed_removals(size, sites, p.n, p.fraction, p.min_width)
        else:
            scores = self._guarded(batches, epoch, score_filters, net, sites, p.criterion,
                                   batches, pl_module.growth_loss, _reduce_fn(trainer))
            room = {s: width_of(size, s) - p.min_width for s in sites}
            removals = exchange_removals(scores, p.criterion, room, total)
        if epoch not in self.pruned_epochs:
            self.pruned_epochs.append(epoch)
        if not removals:
            return []
        reports = self._guarded(batches, epoch, prune, net, removals, p.criterion, batches,
                                pl_module.growth_loss, reduce_fn=_reduce_fn(trainer),
                                min_width=p.min_width)
        self._after_surgery(trainer, pl_module, reports, epoch, grown=False)
        self.prune_reports.extend(reports)
        self._say(trainer, pl_module, epoch, reports,
                  f"(-{reports[0].params_before - reports[-1].params_after:,})")
        if trainer is not None:
            log_epoch_values(pl_module, {
                "prune/events": float(len(self.pruned_epochs)),
                "prune/filters_removed": float(sum(len(r.removed) for r in reports)),
                "prune/params": float(reports[-1].params_after),
            })
        return reports

    # ------------------------------------------------------------ helpers
    @staticmethod
    def _guarded(batches, epoch: int, fn, *args, **kwargs):
        """``fn(*args, **kwargs)``; a non-finite scoring loss names the data, not growth."""
        try:
            return fn(*args, **kwargs)
        except NonFiniteLossError as err:
            from .finite_guard import NonFiniteError, describe_batch

            where = ("another process's scoring batch" if err.batch_index is None
                     else describe_batch(batches[err.batch_index]))
            raise NonFiniteError(
                f"non-finite loss on {where} at the start of epoch {epoch} (found by the growth "
                "event's scoring pass, before any change to the network): the data hold NaN or "
                "Inf, or the weights already diverged; fix or remove the file") from None

    @staticmethod
    def _say(trainer, pl_module, epoch: int, reports, change: str) -> None:
        lines = [f"[epoch {epoch}] {r}" for r in reports]
        lines.append(f"[epoch {epoch}] network: {reports[-1].params_after:,} parameters {change}")
        for line in lines:
            pl_module.print(line) if trainer is not None else print(line)

    def _after_surgery(self, trainer: Optional[pl.Trainer], pl_module, reports, epoch: int,
                       grown: bool) -> None:
        """Bring optimizer, DDP wrapper, update ramp and compiled graphs up to date."""
        changes = [ch for r in reports for ch in r.changes]
        for r in reports:
            r.changes = []  # drop references to the old parameters
        if trainer is not None:
            if self.config.reset_optimizer:
                trainer.strategy.setup_optimizers(trainer)
            else:
                for opt in trainer.optimizers:
                    remap_optimizer_state(opt, changes, seeding=self.config.optimizer_seeding)
            self._rebuild_ddp(trainer)
        names = {id(p): n for n, p in pl_module.named_parameters()}
        if grown:
            self.ramp.grown(changes, names, epoch)
        else:
            self.ramp.pruned(changes, names)
        # Every growth changes shapes: a compiled graph would be a guard
        # failure and, after a few, a silent fallback to eager. This resets
        # every compiled function of the process, not only this model's.
        torch.compiler.reset()

    @staticmethod
    def _rebuild_ddp(trainer: pl.Trainer) -> None:
        strategy = trainer.strategy
        if isinstance(getattr(strategy, "model", None),
                      torch.nn.parallel.DistributedDataParallel) and \
                hasattr(strategy, "configure_ddp"):
            # DDP hooked the old parameter objects (even with a single
            # process): rebuild the wrapper. Collective: every rank grows
            # identically, and rank 0's parameters are broadcast.
            strategy.model = strategy.lightning_module
            strategy.configure_ddp()


def _slot(pl_module, optimizer, new_params):
    """``(param group, parameter before which new_params go)``, by module order.

    A resumed run builds its optimizer from ``module.parameters()`` and
    restores state by position: the new parameters go where that order puts
    them, in the group of the nearest held parameter before them.
    """
    order = list(pl_module.parameters())
    new_ids = {id(p) for p in new_params}
    where = {id(p): g for g, group in enumerate(optimizer.param_groups) for p in group["params"]}
    first = min(i for i, p in enumerate(order) if id(p) in new_ids)
    last = max(i for i, p in enumerate(order) if id(p) in new_ids)
    before = next((p for p in order[last + 1:] if id(p) in where), None)
    earlier = next((p for p in reversed(order[:first]) if id(p) in where), None)
    group = where[id(earlier)] if earlier is not None else (
        where[id(before)] if before is not None else 0)
    if before is not None and where[id(before)] != group:
        before = None  # the next held parameter is in another group: append to this one
    return group, before
