"""DynamicUnetModule: fastMRI's UnetModule with a U-Net that grows while training.

The module holds a :class:`~fastmri_growth.models.DynamicUnet` as
``self.unet`` and trains exactly like fastMRI's ``UnetModule`` (same forward,
L1 loss, validation/test outputs, RMSprop + StepLR). Growth is done by a
:class:`~fastmri_growth.pl_modules.GrowthCallback` that the module builds
from its growth options and attaches itself (``configure_callbacks``); the
module implements the callback's :class:`GrowableModule` protocol and keeps
the grown widths in its checkpoints:

* growth at the first training batch of the epochs the schedule selects,
  on that batch with dropout off, before that epoch's checkpoint;
* idempotent: the schedule records which epochs grew, so a resumed run
  does not grow twice;
* the optimizer is kept (grown parameters swapped in place, state
  remapped), so LightningOptimizer, the LR scheduler and the AMP scaler stay
  valid; ``reset_optimizer=True`` recreates optimizer and scheduler instead;
* under DDP all ranks score with averaged statistics and seeded candidates,
  so they take the same decision, and the DDP wrapper is rebuilt.
"""

from argparse import ArgumentParser
from typing import List, Optional

import torch
from torch.nn import functional as F

from ..growth.methods import all_options, check_method_name, option_default
from ..growth.schedule import GrowthSchedule, parse_progressive
from ..growth.sites import parse_sites
from ..models import DynamicUnet, architecture_from_state_dict
from .growth_callback import GrowthCallback
from .growth_options import add_growth_args, growth_arg_names, spellings
from .lightning2 import UnetModule

#: Checkpoint key holding the widths (and, in checkpoints of older versions,
#: the schedule state).
CHECKPOINT_KEY = "dynamic_unet"


class DynamicUnetModule(UnetModule):
    """A fastMRI ``MriModule`` whose U-Net grows during Lightning 2 training.

    Class attributes:
        growth_callback_class: The callback built from the growth options; a
            subclass may name a :class:`GrowthCallback` subclass (to count or
            probe growth events, say).
    """

    growth_callback_class = GrowthCallback

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
        n_candidates: int = option_default("n_candidates"),
        growth_interval: int = 1,
        layers_to_grow: Optional[List[str]] = None,
        growth_schedule: str = "interval",
        plateau_patience: int = 2,
        progressive_schedule=None,
        n_new: int = 1,
        max_growth_steps: Optional[int] = None,
        max_width: Optional[int] = None,
        split_noise: Optional[float] = option_default("split_noise"),
        new_filter_lr_scale: float = 1.0,
        reset_optimizer: bool = False,
        growth_start_epoch: int = 1,
        growth_seed: int = 0,
        plateau_min_delta: float = 0.0,
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
            growth_method: A registered growth method (``sample_select``,
                ``split``, ...).
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
            plateau_min_delta: Plateau schedule: a smaller improvement of
                validation_loss does not count.
            **kwargs: Options of other registered growth methods, then
                fastMRI's ``MriModule`` arguments (``num_log_images``).
        """
        method_options = {"n_candidates": n_candidates, "split_noise": split_noise}
        for name in all_options():
            if name in kwargs:
                method_options[name] = kwargs.pop(name)
        super().__init__(
            in_chans=in_chans, out_chans=out_chans, chans=chans, num_pool_layers=num_pool_layers,
            drop_prob=drop_prob, lr=lr, lr_step_size=lr_step_size, lr_gamma=lr_gamma,
            weight_decay=weight_decay, **kwargs,
        )
        self.save_hyperparameters()
        # Every growth option is checked here, before anything trains.
        check_method_name(growth_method)
        all_sites = DynamicUnet.site_ids(num_pool_layers)
        sites = parse_sites(layers_to_grow, all_sites)
        progressive = (parse_progressive(progressive_schedule, all_sites)
                       if growth_schedule == "progressive" else {})
        schedule = GrowthSchedule(
            kind=growth_schedule, sites=sites, interval=growth_interval,
            start_epoch=growth_start_epoch, patience=plateau_patience,
            min_delta=plateau_min_delta, progressive=progressive, max_events=max_growth_steps,
        )
        self.growth_callback = self.growth_callback_class(
            schedule, method=growth_method, method_options=method_options, n_new=n_new,
            max_width=max_width, new_filter_lr_scale=new_filter_lr_scale,
            reset_optimizer=reset_optimizer, seed=growth_seed,
        )
        self.growth_method = growth_method
        self.unet = DynamicUnet(
            in_chans, out_chans, chans=chans, num_pool_layers=num_pool_layers,
            drop_prob=drop_prob, growth_method=growth_method, n_candidates=n_candidates,
        )

    # ------------------------------------------------ GrowableModule protocol
    def growable_net(self) -> DynamicUnet:
        """The U-Net that grows."""
        return self.unet

    def growth_loss(self, batch) -> torch.Tensor:
        """The training loss (L1 on normalised images) of a ``UnetSample`` batch.

        With a "true" half-precision plugin the weights are half while the
        batch is the loader's float32: the loss is taken in the weights' dtype.
        """
        dtype = next(self.unet.parameters()).dtype
        image = batch.image.unsqueeze(1).to(dtype)
        target = batch.target.unsqueeze(1).to(dtype)
        return F.l1_loss(self.unet(image), target)

    def configure_callbacks(self):
        """Attaches the growth callback (replacing one of its type given to the Trainer)."""
        return [self.growth_callback]

    @property
    def schedule(self) -> GrowthSchedule:
        """The growth schedule (its state is the callback's checkpointed state)."""
        return self.growth_callback.schedule

    @property
    def growth_reports(self) -> list:
        """This process's growth reports, for inspection."""
        return self.growth_callback.reports

    def grow(self, sites, batch, epoch: int) -> list:
        """Grow ``sites`` on a training batch now, as a scheduled event would.

        Args:
            sites: ``[(layer_id, conv_idx), ...]`` or :class:`Site` s.
            batch: A fastMRI ``UnetSample`` (image `(N, H, W)`, target `(N, H, W)`).
            epoch: The epoch being started (seeds the candidates).

        Returns:
            The growth reports.
        """
        return self.growth_callback.grow(self._trainer, self, [batch], sites, epoch)

    # ----------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Stores the widths as plain Python values (the schedule is the callback's)."""
        checkpoint[CHECKPOINT_KEY] = {
            "widths": self.unet.get_network_size(),
            "transpose_widths": self.unet.transpose_widths(),
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Rebuilds the U-Net at the checkpoint's widths and restores the schedule.

        Lightning calls this BEFORE loading the weights (a Callback's hook
        would run after them), so the grown tensors then load strictly.

        Raises:
            ValueError: If the checkpoint's tensors match no valid DynamicUnet
                or another architecture than this module's.
        """
        info = checkpoint.get(CHECKPOINT_KEY)
        state_dict = {k: v for k, v in checkpoint.get("state_dict", {}).items()
                      if k.startswith("unet.")}
        try:
            spec = architecture_from_state_dict(state_dict)
            if info is not None and info["widths"] != spec["widths"]:
                raise ValueError(
                    f"its recorded widths {info['widths']} disagree with its tensors "
                    f"{spec['widths']}"
                )
            self.unet.resize_from_state_dict(state_dict)
        except ValueError as err:
            raise ValueError(f"Cannot load checkpoint into DynamicUnetModule: {err}") from None
        # The schedule: the callback's own state (also for load_from_checkpoint,
        # where no Trainer restores callbacks), or the module's key in
        # checkpoints written before growth became a callback.
        callback = self.growth_callback
        state = (checkpoint.get("callbacks") or {}).get(callback.state_key)
        if state is not None:
            callback.load_state_dict(state)
        elif info is not None and "schedule_state" in info:
            callback.load_state_dict({"schedule": info["schedule_state"],
                                      "last_validation": info.get("last_validation")})

    # ------------------------------------------------------------------ args
    @classmethod
    def growth_defaults(cls) -> dict:
        """Constructor defaults of the growth options: the one source of CLI defaults."""
        import inspect

        params = inspect.signature(cls.__init__).parameters
        return {name: params[name].default for name in GROWTH_ARGS if name in params}

    @classmethod
    def growth_option_strings(cls) -> List[str]:
        """Both spellings of every growth flag (``--growth-method``, ``--growth_method``, ...)."""
        return [s for name in growth_arg_names() for s in spellings(name)]

    @classmethod
    def add_model_specific_args(cls, parent_parser: ArgumentParser) -> ArgumentParser:
        """Add fastMRI's U-Net flags and the growth flags.

        Growth flags accept the hyphen and the underscore spelling
        (``--growth-method`` / ``--growth_method``).
        """
        parser = UnetModule.add_model_specific_args(parent_parser)
        return add_growth_args(parser, cls)


#: The growth options of :class:`DynamicUnetModule` (constructor names).
GROWTH_ARGS = tuple(growth_arg_names())
