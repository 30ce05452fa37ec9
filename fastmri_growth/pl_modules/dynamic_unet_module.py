"""DynamicUnetModule: fastMRI's UnetModule with a U-Net that grows while training.

The module holds a :class:`~fastmri_growth.models.DynamicUnet` as
``self.unet`` and trains exactly like fastMRI's ``UnetModule`` (same forward,
L1 loss, validation/test outputs, RMSprop + StepLR). Growth happens at the
first training batch of the epochs the schedule selects:

* on a training batch (the epoch's first, about to be trained on), with
  dropout off;
* before that epoch's checkpoint, so the checkpoint holds the grown model
  (ModelCheckpoint saves in ``on_validation_end``);
* idempotently: the schedule records which epochs grew, so a resumed run
  does not grow twice;
* the optimizer is kept (grown parameters swapped in place, state padded,
  see :func:`~fastmri_growth.models.grow_optimizer_state`), so LightningOptimizer,
  the LR scheduler and the AMP scaler stay valid; ``reset_optimizer=True``
  recreates optimizer and scheduler instead, for comparison;
* under DDP all ranks score with all-reduced gradients and seeded candidates,
  so they take the same decision, and the DDP wrapper is rebuilt (it hooks
  the parameter objects it saw at construction).
"""

import copy
import inspect
import logging
import math
from argparse import ArgumentParser
from typing import Dict, List, Optional

import torch
import torch.distributed as dist
from torch.nn import functional as F

from ..growth_schedule import SCHEDULES, GrowthSchedule, parse_progressive, parse_sites
from ..models import GROWTH_METHODS, DynamicUnet, architecture_from_state_dict, grow_optimizer_state
from .lightning2 import UnetModule

log = logging.getLogger(__name__)

#: Checkpoint key holding the widths and the schedule state.
CHECKPOINT_KEY = "dynamic_unet"


def _all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Average a tensor over DDP ranks (identity without a process group)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        tensor = tensor.clone()
        dist.all_reduce(tensor)
        tensor /= dist.get_world_size()
    return tensor


class DynamicUnetModule(UnetModule):
    """A fastMRI ``MriModule`` whose U-Net grows during Lightning 2 training."""

    def __init__(
        self,
        in_chans: int = 1,
        out_chans: int = 1,
        chans: int = 32,
        num_pool_layers: int = 4,
        drop_prob: float = 0.0,
        lr: float = 0.001,
        lr_step_size: int = 40,
        lr_gamma: float = 0.1,
        weight_decay: float = 0.0,
        growth_method: str = "sample_select",
        n_candidates: int = 10,
        growth_interval: int = 1,
        layers_to_grow: Optional[List[str]] = None,
        growth_schedule: str = "interval",
        plateau_patience: int = 2,
        progressive_schedule=None,
        n_new: int = 1,
        max_growth_steps: Optional[int] = None,
        max_width: Optional[int] = None,
        split_noise: Optional[float] = None,
        new_filter_lr_scale: float = 1.0,
        reset_optimizer: bool = False,
        growth_start_epoch: int = 1,
        growth_seed: int = 0,
        **kwargs,
    ):
        """
        Args:
            in_chans: Number of U-Net input channels.
            out_chans: Number of U-Net output channels.
            chans: Starting width (output channels of the first conv).
            num_pool_layers: Number of down-/up-sampling layers.
            drop_prob: Dropout probability.
            lr: RMSprop learning rate.
            lr_step_size: StepLR step size (epochs).
            lr_gamma: StepLR decay factor.
            weight_decay: RMSprop weight decay.
            growth_method: ``"sample_select"`` or ``"split"``.
            n_candidates: Candidates scored per site by sample_select.
            growth_interval: Interval schedule: grow every this many epochs.
            layers_to_grow: Sites grown at each event: entries ``"layer"``
                (both convs) or ``"layer:conv_idx"``; None grows every site.
            growth_schedule: ``"interval"``, ``"plateau"`` (grow when
                validation_loss has not improved for ``plateau_patience``
                validations) or ``"progressive"`` (``progressive_schedule``).
            plateau_patience: Plateau schedule patience, in validations
                (epochs that ran validation).
            progressive_schedule: ``{epoch: [entries]}`` or
                ``"2:down_0,bottleneck;4:up_1:1"``.
            n_new: Filters added per site per event.
            max_growth_steps: Cap on the number of growth events.
            max_width: Cap on the filters of any conv.
            split_noise: Symmetry-breaking noise of ``split`` (None: default).
            new_filter_lr_scale: Learning-rate scale of newly added weights
                during the epoch they were added in.
            reset_optimizer: Recreate optimizer and LR scheduler after growth
                instead of carrying their state over (for comparison: the LR
                schedule then restarts from its first epoch).
            growth_start_epoch: First epoch at which growth may happen.
            growth_seed: Seed of candidate and noise generation (identical on
                every rank, and a function of the epoch, so resumed runs
                repeat the same decisions).
            **kwargs: Passed to fastMRI's ``MriModule`` (``num_log_images``).
        """
        super().__init__(
            in_chans=in_chans, out_chans=out_chans, chans=chans, num_pool_layers=num_pool_layers,
            drop_prob=drop_prob, lr=lr, lr_step_size=lr_step_size, lr_gamma=lr_gamma,
            weight_decay=weight_decay, **kwargs,
        )
        self.save_hyperparameters()
        # Validate every growth option before anything trains (growth_method
        # and n_candidates: DynamicUnet below; interval and schedule:
        # GrowthSchedule).
        if not isinstance(n_new, int) or isinstance(n_new, bool) or n_new < 1:
            raise ValueError(f"n_new must be an int >= 1, got {n_new!r}")
        if max_width is not None and (not isinstance(max_width, int) or max_width < 1):
            raise ValueError(f"max_width must be an int >= 1 or None, got {max_width!r}")
        if not (isinstance(new_filter_lr_scale, (int, float)) and math.isfinite(new_filter_lr_scale)
                and new_filter_lr_scale >= 0):
            raise ValueError(f"new_filter_lr_scale must be a finite float >= 0, got {new_filter_lr_scale!r}")
        sites = parse_sites(layers_to_grow, num_pool_layers)
        progressive = (parse_progressive(progressive_schedule, num_pool_layers)
                       if growth_schedule == "progressive" else {})
        self.schedule = GrowthSchedule(
            kind=growth_schedule, sites=sites, interval=growth_interval,
            start_epoch=growth_start_epoch, patience=plateau_patience,
            progressive=progressive, max_events=max_growth_steps,
        )
        self.growth_method = growth_method
        self.n_candidates = n_candidates
        self.n_new = n_new
        self.max_width = max_width
        self.split_noise = split_noise
        self.new_filter_lr_scale = float(new_filter_lr_scale)
        self.reset_optimizer = reset_optimizer
        self.growth_seed = growth_seed
        self.unet = DynamicUnet(
            in_chans, out_chans, chans=chans, num_pool_layers=num_pool_layers,
            drop_prob=drop_prob, growth_method=growth_method, n_candidates=n_candidates,
        )
        self.growth_reports = []  # reports of this process, for inspection
        # Per grown parameter, a bool mask of the entries added this epoch
        # (new_filter_lr_scale applies to them).
        self._new_masks: Dict[torch.nn.Parameter, torch.Tensor] = {}
        # The epoch whose validation ran last (None: none since the last
        # observation), and (epoch, loss) restored from a checkpoint.
        self._validated_epoch: Optional[int] = None
        self._restored_validation: Optional[tuple] = None

    # ---------------------------------------------------------------- growth
    def on_validation_epoch_end(self) -> None:
        """Aggregates validation (fastMRI's metrics), then notes which epoch validated."""
        super().on_validation_epoch_end()
        if not self.trainer.sanity_checking:
            self._validated_epoch = self.current_epoch

    def _observe_validation(self) -> None:
        """Feed the plateau schedule the loss of the validation that actually ran.

        Lightning keeps ``validation_loss`` in ``callback_metrics`` across
        epochs without validation (``check_val_every_n_epoch > 1``); only an
        epoch that validated counts towards the patience.
        """
        loss = self.trainer.callback_metrics.get("validation_loss")
        if self._validated_epoch is not None and loss is not None:
            self.schedule.observe_validation(self._validated_epoch, float(loss))
        elif self._restored_validation is not None:
            self.schedule.observe_validation(*self._restored_validation)
        self._validated_epoch = None
        self._restored_validation = None

    def on_train_epoch_start(self) -> None:
        """Ends the previous growth's LR scale, and observes the last validation."""
        self._new_masks = {}  # new-filter LR scale lasts for the epoch of growth
        if self.schedule.kind == "plateau":
            self._observe_validation()

    def on_train_epoch_end(self) -> None:
        # After this epoch's growth, so the curve shows the size trained at.
        size = self.unet.get_network_size()
        # Identical on every rank; sync_dist only keeps Lightning's DDP check quiet.
        self.log("network/params", float(self.unet.num_parameters()), on_step=False, on_epoch=True,
                 sync_dist=True)
        self.log("network/filters", float(sum(w["conv1_out"] + w["conv2_out"] for w in size.values())),
                 on_step=False, on_epoch=True, sync_dist=True)

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        """Grows the scheduled sites on this batch if the epoch is due."""
        # Normally batch 0; after a resume from a mid-epoch checkpoint, the
        # first batch this process sees (the schedule remembers grown epochs).
        epoch = self.trainer.current_epoch
        sites = self.schedule.sites_for_epoch(epoch)
        if sites:
            self.grow(sites, batch, epoch)

    def _site_budget(self, layer: str, conv_idx: int) -> int:
        current = self.unet.get_network_size()[layer][f"conv{conv_idx + 1}_out"]
        if self.max_width is None:
            return self.n_new
        return max(0, min(self.n_new, self.max_width - current))

    def grow(self, sites, batch, epoch: int) -> list:
        """Grow ``sites`` on a training batch and carry the optimizer over.

        Args:
            sites: ``[(layer_id, conv_idx), ...]``.
            batch: A fastMRI ``UnetSample`` (image `(N, H, W)`, target
                `(N, H, W)`).
            epoch: The epoch being started (seeds the candidates).

        Returns:
            The growth reports.
        """
        # With a "true" half-precision plugin the weights are half while the
        # hook sees the loader's float32 batch: score in the weights' dtype.
        dtype = next(self.unet.parameters()).dtype
        image = batch.image.unsqueeze(1).to(dtype)
        target = batch.target.unsqueeze(1).to(dtype)
        generator = torch.Generator().manual_seed(self.growth_seed * 1_000_003 + epoch)
        reports, changes = [], []
        for layer, conv_idx in sites:
            n_new = self._site_budget(layer, conv_idx)
            if n_new == 0:
                continue
            try:
                report = self.unet.grow_network(
                    layer, conv_idx, image, target, criterion=F.l1_loss, n_new=n_new,
                    method=self.growth_method, split_noise=self.split_noise,
                    generator=generator, reduce_fn=_all_reduce_mean,
                )
            except (RuntimeError, ValueError) as err:
                if not reports:
                    raise
                done = ", ".join(r.site for r in reports)
                raise RuntimeError(
                    f"{err} (earlier sites of this growth event already grew: {done}; "
                    "the optimizer was not updated, so do not continue this run)"
                ) from err
            reports.append(report)
            changes.extend(report.changes)
        self.schedule.mark_grown(epoch)
        if not reports:
            return reports
        self._after_growth(changes)
        total_seconds = sum(r.seconds for r in reports)
        lines = [f"[epoch {epoch}] {r}" for r in reports]
        lines.append(
            f"[epoch {epoch}] network: {reports[-1].params_after:,} parameters "
            f"(+{reports[-1].params_after - reports[0].params_before:,}), growth took "
            f"{total_seconds:.2f} s"
        )
        for r in reports:
            r.changes = []  # drop references to the old parameters
        self.growth_reports.extend(reports)
        attached = self._trainer is not None
        for line in lines:
            self.print(line) if attached else print(line)
        if attached:
            # Epoch-level: step-level values would only reach the logger on
            # steps that are multiples of log_every_n_steps.
            self.log_dict({
                "growth/events": float(self.schedule.events),
                "growth/filters_added": float(sum(r.n_added for r in reports)),
                "growth/seconds": float(total_seconds),
                "growth/params": float(reports[-1].params_after),
            }, on_step=False, on_epoch=True, sync_dist=True)
        return reports

    def _after_growth(self, changes) -> None:
        """Bring optimizer, DDP wrapper and compiled graphs up to date."""
        trainer = self._trainer
        if trainer is not None:
            if self.reset_optimizer:
                trainer.strategy.setup_optimizers(trainer)
            else:
                for opt in trainer.optimizers:
                    grow_optimizer_state(opt, changes)
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
                # A weight can grow twice in one event (e.g. a conv2 gets an
                # input column from its conv1, then output rows): carry the
                # mask of the earlier growth into the new shape.
                mask = torch.zeros_like(ch.new, dtype=torch.bool)
                earlier = self._new_masks.pop(ch.old, None)
                if earlier is not None:
                    mask[tuple(slice(0, n) for n in earlier.shape)] = earlier
                mask[ch.new_slice()] = True
                self._new_masks[ch.new] = mask
        # Every growth changes shapes: a compiled graph would be a guard
        # failure and, after a few, a silent fallback to eager. This resets
        # every compiled function of the process, not only this model's.
        torch.compiler.reset()

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        """Steps, then scales the update of the weights added this epoch.

        Scaling the update (not the gradient) makes ``new_filter_lr_scale`` an
        exact learning-rate scale for any optimizer, Adam and RMSprop included.

        Args:
            epoch: Current epoch.
            batch_idx: Batch index.
            optimizer: The (Lightning-wrapped) optimizer.
            optimizer_closure: Lightning's closure (forward, backward).
        """
        if not self._new_masks:
            return super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        before = {p: p.detach().clone() for p in self._new_masks}
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        with torch.no_grad():
            for p, mask in self._new_masks.items():
                scaled = before[p] + self.new_filter_lr_scale * (p - before[p])
                p.copy_(torch.where(mask, scaled, p))

    # ----------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Stores the widths and the schedule state as plain Python values."""
        last = None
        if self._trainer is not None and self._validated_epoch is not None:
            loss = self.trainer.callback_metrics.get("validation_loss")
            if loss is not None:
                last = [self._validated_epoch, float(loss)]
        checkpoint[CHECKPOINT_KEY] = {
            "widths": self.unet.get_network_size(),
            "transpose_widths": self.unet.transpose_widths(),
            "schedule_state": copy.deepcopy(self.schedule.state),
            "last_validation": last,
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Rebuilds the U-Net at the checkpoint's widths and restores the schedule.

        Raises:
            ValueError: If the checkpoint's tensors match no valid DynamicUnet
                or another architecture than this module's.
        """
        # Lightning calls this BEFORE load_state_dict: rebuild at the saved
        # widths so that the grown tensors load strictly.
        info = checkpoint.get(CHECKPOINT_KEY)
        state_dict = checkpoint.get("state_dict", {})
        try:
            spec = architecture_from_state_dict(state_dict)
        except ValueError as err:
            raise ValueError(f"Cannot load checkpoint into DynamicUnetModule: {err}") from None
        if info is not None and info["widths"] != spec["widths"]:
            raise ValueError(
                "Cannot load checkpoint into DynamicUnetModule: its recorded widths "
                f"{info['widths']} disagree with its tensors {spec['widths']}"
            )
        if (spec["in_chans"], spec["out_chans"], spec["num_pool_layers"]) != (
                self.unet.in_chans, self.unet.out_chans, self.unet.num_pool_layers):
            raise ValueError(
                "Cannot load checkpoint into DynamicUnetModule: it holds a U-Net with "
                f"in_chans={spec['in_chans']}, out_chans={spec['out_chans']}, "
                f"num_pool_layers={spec['num_pool_layers']}, but the module was built with "
                f"in_chans={self.unet.in_chans}, out_chans={self.unet.out_chans}, "
                f"num_pool_layers={self.unet.num_pool_layers}"
            )
        if spec["widths"] != self.unet.get_network_size() or \
                spec["transpose_widths"] != self.unet.transpose_widths():
            device = next(self.unet.parameters()).device
            self.unet = DynamicUnet(
                spec["in_chans"], spec["out_chans"], chans=self.unet.chans,
                num_pool_layers=spec["num_pool_layers"], drop_prob=self.unet.drop_prob,
                growth_method=self.growth_method, n_candidates=self.n_candidates,
                widths=spec["widths"], transpose_widths=spec["transpose_widths"],
            ).to(device)
        if info is not None:
            self.schedule.state = copy.deepcopy(info["schedule_state"])
            last = info.get("last_validation")
            self._restored_validation = tuple(last) if last else None

    # ------------------------------------------------------------------ args
    @classmethod
    def growth_defaults(cls) -> dict:
        """Constructor defaults of the growth options: the one source of CLI defaults."""
        params = inspect.signature(cls.__init__).parameters
        return {name: params[name].default for name in GROWTH_ARGS}

    @classmethod
    def growth_option_strings(cls) -> List[str]:
        """Both spellings of every growth flag (``--growth-method``, ``--growth_method``, ...)."""
        return [s for name in GROWTH_ARGS
                for s in dict.fromkeys(["--" + name.replace("_", "-"), "--" + name])]

    @classmethod
    def add_model_specific_args(cls, parent_parser: ArgumentParser) -> ArgumentParser:
        """Add fastMRI's U-Net flags and the growth flags.

        Growth flags accept the hyphen and the underscore spelling
        (``--growth-method`` / ``--growth_method``).
        """
        parser = UnetModule.add_model_specific_args(parent_parser)
        d = cls.growth_defaults()
        g = parser.add_argument_group("growth")

        def flag(name, **kw):
            hy, us = "--" + name.replace("_", "-"), "--" + name
            opts = [hy] if hy == us else [hy, us]
            g.add_argument(*opts, dest=name, default=d[name], **kw)

        def optional_int(text):
            return None if str(text).lower() in ("none", "") else int(text)

        def optional_float(text):
            return None if str(text).lower() in ("none", "") else float(text)

        flag("growth_method", choices=list(GROWTH_METHODS),
             help="sample_select: score N random candidates in one pass, keep the best "
                  "(zero fan-out, output unchanged); split: duplicate the filter with the "
                  "largest gradient norm")
        flag("n_candidates", type=int, help="Candidates scored per site (sample_select)")
        flag("growth_schedule", choices=list(SCHEDULES), help="When to grow")
        flag("growth_interval", type=int, help="interval schedule: grow every N epochs")
        flag("growth_start_epoch", type=int, help="First epoch at which growth may happen")
        flag("plateau_patience", type=int,
             help="plateau schedule: grow after N validations without validation_loss "
                  "improvement")
        flag("progressive_schedule", type=str,
             help="progressive schedule, e.g. '2:down_0,bottleneck;4:up_1:1'")
        flag("layers_to_grow", nargs="+", type=str,
             help="Sites to grow: LAYER (both convs) or LAYER:CONV (0 or 1); layers are "
                  "down_0..down_{P-1}, bottleneck, up_0..up_{P-1}; default: all")
        flag("n_new", type=int, help="Filters added per site per growth event")
        flag("max_growth_steps", type=optional_int, help="Cap on growth events (default: none)")
        flag("max_width", type=optional_int, help="Cap on the filters of any conv (default: none)")
        flag("split_noise", type=optional_float,
             help="split: relative fan-in noise (0: exact, fan-out asymmetry breaks "
                  "symmetry; default: 1e-3)")
        flag("new_filter_lr_scale", type=float,
             help="Learning-rate scale of new weights during the epoch they were added in")
        flag("reset_optimizer", action="store_true",
             help="Recreate optimizer and LR scheduler after growth instead of keeping their "
                  "state (the LR schedule then restarts from its first epoch)")
        flag("growth_seed", type=int, help="Seed of candidate generation")
        return parser


#: The growth options of :class:`DynamicUnetModule` (constructor names).
GROWTH_ARGS = (
    "growth_method", "n_candidates", "growth_interval", "layers_to_grow", "growth_schedule",
    "plateau_patience", "progressive_schedule", "n_new", "max_growth_steps", "max_width",
    "split_noise", "new_filter_lr_scale", "reset_optimizer", "growth_start_epoch", "growth_seed",
)
