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

from ..models import DynamicUnet
from .growable import GrowthMixin
from .growth_options import (
    add_growth_args,
    build_growth_callback,
    growth_arg_names,
    growth_default,
    spellings,
    split_growth_options,
)
from .lightning2 import UnetModule

#: Checkpoint key holding the widths (and, in checkpoints of older versions,
#: the schedule state).
CHECKPOINT_KEY = "dynamic_unet"

D = growth_default


class DynamicUnetModule(GrowthMixin, UnetModule):
    """A fastMRI ``MriModule`` whose U-Net grows during Lightning 2 training.

    Class attributes:
        growth_callback_class: The callback built from the growth options; a
            subclass may name a :class:`GrowthCallback` subclass (to count or
            probe growth events, say).
    """

    growable_attr = "unet"
    checkpoint_key = CHECKPOINT_KEY

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
        growth_method: str = D("growth_method"),
        n_candidates: int = D("n_candidates"),
        growth_interval: int = D("growth_interval"),
        layers_to_grow: Optional[List[str]] = D("layers_to_grow"),
        growth_schedule: str = D("growth_schedule"),
        plateau_patience: int = D("plateau_patience"),
        progressive_schedule=D("progressive_schedule"),
        n_new: int = D("n_new"),
        max_growth_steps: Optional[int] = D("max_growth_steps"),
        max_width: Optional[int] = D("max_width"),
        split_noise: Optional[float] = D("split_noise"),
        new_filter_lr_scale: float = D("new_filter_lr_scale"),
        reset_optimizer: bool = D("reset_optimizer"),
        growth_start_epoch: int = D("growth_start_epoch"),
        growth_seed: int = D("growth_seed"),
        plateau_min_delta: float = D("plateau_min_delta"),
        growth_batches: int = D("growth_batches"),
        fan_out_init: str = D("fan_out_init"),
        auto_sites: Optional[int] = D("auto_sites"),
        site_criterion: str = D("site_criterion"),
        optimizer_seeding: str = D("optimizer_seeding"),
        new_filter_ramp_steps: int = D("new_filter_ramp_steps"),
        growth_end_epoch: Optional[int] = D("growth_end_epoch"),
        target_chans: Optional[int] = D("target_chans"),
        target_params: Optional[int] = D("target_params"),
        prune_schedule: Optional[str] = D("prune_schedule"),
        prune_interval: int = D("prune_interval"),
        prune_start_epoch: int = D("prune_start_epoch"),
        prune_epochs: Optional[str] = D("prune_epochs"),
        prune_n: Optional[int] = D("prune_n"),
        prune_fraction: Optional[float] = D("prune_fraction"),
        prune_criterion: str = D("prune_criterion"),
        prune_sites: Optional[List[str]] = D("prune_sites"),
        min_width: int = D("min_width"),
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
            growth_batches: Scoring batches per event (the epoch's first and
                ``growth_batches - 1`` drawn reproducibly from the training set).
            fan_out_init: ``"zero"`` (function-preserving) or ``"descent"``.
            auto_sites: Grow only the this many best sites per event
                (``layers_to_grow=["auto"]``: of all sites; default 1 then).
            site_criterion: How sites are ranked: ``score``,
                ``score_per_param`` or ``score_per_flop``.
            optimizer_seeding: New second-moment state: ``grad``, ``moment``, ``mean``, ``zero``.
            new_filter_ramp_steps: Ramp new weights' updates over this many steps.
            growth_end_epoch: Budget schedule: the epoch of the last event.
            target_chans: Budget schedule: grow to a fixed U-Net's widths of this chans.
            target_params: Budget schedule: grow to this many parameters.
            prune_schedule: When to remove filters: ``"interval"``,
                ``"epochs"``, ``"exchange"`` (at every growth event, as many
                filters as it adds), or None (never).
            prune_interval: Interval prune schedule: every this many epochs.
            prune_start_epoch: Interval prune schedule: first epoch.
            prune_epochs: Epochs prune schedule, e.g. ``"3,6,9"``.
            prune_n: Filters removed per prune site per event.
            prune_fraction: Or this fraction of each site's width.
            prune_criterion: ``"magnitude"`` or ``"taylor"``.
            prune_sites: Sites that may lose filters (default: all).
            min_width: No conv goes below this many filters.
            **kwargs: Options of other registered growth methods, then
                fastMRI's ``MriModule`` arguments (``num_log_images``).
        """
        growth = {name: value for name, value in locals().items() if name in growth_arg_names()}
        growth.update(split_growth_options(kwargs))
        super().__init__(
            in_chans=in_chans, out_chans=out_chans, chans=chans, num_pool_layers=num_pool_layers,
            drop_prob=drop_prob, lr=lr, lr_step_size=lr_step_size, lr_gamma=lr_gamma,
            weight_decay=weight_decay, **kwargs,
        )
        self.save_hyperparameters()
        # Every growth option is checked here, before anything trains.
        self.growth_callback = build_growth_callback(
            growth, DynamicUnet.site_ids(num_pool_layers), self.growth_callback_class)
        self.growth_method = growth_method
        self.unet = DynamicUnet(
            in_chans, out_chans, chans=chans, num_pool_layers=num_pool_layers,
            drop_prob=drop_prob, growth_method=growth_method, n_candidates=n_candidates,
        )
        self.growth_callback.prepare(self.unet)  # a budget target below the start fails now

    # ------------------------------------------------ GrowableModule protocol
    def growth_loss(self, batch) -> torch.Tensor:
        """The training loss (L1 on normalised images) of a ``UnetSample`` batch.

        With a "true" half-precision plugin the weights are half while the
        batch is the loader's float32: the loss is taken in the weights' dtype.
        """
        dtype = next(self.unet.parameters()).dtype
        image = batch.image.unsqueeze(1).to(dtype)
        target = batch.target.unsqueeze(1).to(dtype)
        return F.l1_loss(self.unet(image), target)

    def checkpoint_widths(self) -> dict:
        """The widths stored in checkpoints (also read by :func:`~fastmri_growth.pl_modules.load_module`)."""
        return {"widths": self.unet.get_network_size(),
                "transpose_widths": self.unet.transpose_widths()}

    # ------------------------------------------------------------------ args
    @classmethod
    def growth_defaults(cls) -> dict:
        """Defaults of the growth options (the table the constructor and flags share)."""
        return {name: growth_default(name) for name in growth_arg_names()}

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
        return add_growth_args(parser)


#: The growth options of :class:`DynamicUnetModule` (constructor names).
GROWTH_ARGS = tuple(growth_arg_names())
