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

import torch
from torch.nn import functional as F

from ..growth.checks import int_at_least, require
from ..models import DynamicUnet
from .growable import GrowthMixin
from .lightning2 import UnetModule

#: Checkpoint key holding the widths (and, in checkpoints of older versions,
#: the schedule state).
CHECKPOINT_KEY = "dynamic_unet"


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
            **kwargs: The growth options of
                :class:`~fastmri_growth.growth.config.GrowthConfig` by name
                (``growth_method``, ``layers_to_grow``, ``growth_schedule``,
                ``n_candidates``, ``prune_schedule``, ...; sites are
                ``LAYER[:CONV]``), then fastMRI's ``MriModule`` arguments
                (``num_log_images``).

        Raises:
            ValueError: a bad growth option, naming it and the valid ones,
                before anything is built.
        """
        growth, rest = self.split_growth_options(kwargs)
        # Before fastMRI builds its Unet: zero channels there make torch warn first.
        for name, value in (("in_chans", in_chans), ("out_chans", out_chans), ("chans", chans),
                            ("num_pool_layers", num_pool_layers)):
            require(int_at_least(1), name, value)
        super().__init__(
            in_chans=in_chans, out_chans=out_chans, chans=chans, num_pool_layers=num_pool_layers,
            drop_prob=drop_prob, lr=lr, lr_step_size=lr_step_size, lr_gamma=lr_gamma,
            weight_decay=weight_decay, **rest,
        )
        self.save_hyperparameters()
        self.unet = DynamicUnet(
            in_chans, out_chans, chans=chans, num_pool_layers=num_pool_layers,
            drop_prob=drop_prob, growth_method=growth.growth_method,
            n_candidates=growth.method_options["n_candidates"],
        )
        self.init_growth(growth)

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
