"""DynamicVarNetModule: fastMRI's VarNetModule with a VarNet whose U-Nets grow while training.

The module holds a :class:`~fastmri_growth.models.DynamicVarNet` as
``self.varnet`` and trains exactly like fastMRI's ``VarNetModule`` (same
forward, SSIM loss on the root-sum-of-squares image, validation/test
outputs, Adam + StepLR). Growth is done by the
:class:`~fastmri_growth.pl_modules.GrowthCallback` that the module builds
from its growth options (the same options and defaults as
:class:`~fastmri_growth.pl_modules.DynamicUnetModule`) and attaches itself.
Sites name the U-Net they grow in: ``cascade_K/LAYER[:CONV]``,
``cascade_*/LAYER`` (every cascade) or ``sens/LAYER`` (the sensitivity
model); a ``LAYER`` alone means that layer in every U-Net. Scores come from
one forward+backward of the whole VarNet on the training batch. Checkpoints
store the widths, so resuming and ``load_from_checkpoint`` rebuild the grown
network; DDP works as for the U-Net module.

Depth growth (``target_cascades``, ``cascade_interval``,
``cascade_start_epoch``, ``cascade_fade_steps``, ``cascade_init``) inserts
cascades at the end of the chain, each fading in from an identity; the
width options keep applying to every cascade, inserted ones included.
Checkpoints record the number of cascades and the gates of those still
fading in, so a run resumes, mid-fade too, with its depth.
"""

import torch
from fastmri.data import transforms

from ..growth.checks import int_at_least, require
from ..models import DynamicVarNet
from .growable import GrowthMixin
from .lightning2 import VarNetModule

#: Checkpoint key holding the widths.
CHECKPOINT_KEY = "dynamic_varnet"


class DynamicVarNetModule(GrowthMixin, VarNetModule):
    """A fastMRI ``VarNetModule`` whose cascade and sensitivity U-Nets grow during training.

    The starting weights are those of fastMRI's ``VarNetModule`` built with
    the same arguments under the same seed (the fastMRI VarNet is built,
    then converted), so a fixed and a growing run start from one network.
    """

    growable_attr = "varnet"
    checkpoint_key = CHECKPOINT_KEY
    growth_capabilities = ("cascades",)
    growth_help = {"layers_to_grow": (
        "Sites to grow: NET/LAYER (both convs) or NET/LAYER:CONV (0 or 1), NET being sens (the "
        "sensitivity U-Net), cascade_K or cascade_* (every cascade); a bare LAYER means that "
        "layer of every U-Net; layers are down_0..down_{P-1}, bottleneck, up_0..up_{P-1}; "
        "default: all")}

    def __init__(
        self,
        num_cascades: int = 12,
        pools: int = 4,
        chans: int = 18,
        sens_pools: int = 4,
        sens_chans: int = 8,
        lr: float = 0.0003,
        lr_step_size: int = 40,
        lr_gamma: float = 0.1,
        weight_decay: float = 0.0,
        **kwargs,
    ):
        """
        Args:
            num_cascades: Number of VarNet cascades.
            pools: Down-/up-sampling layers of each cascade's U-Net.
            chans: Starting width of each cascade's U-Net.
            sens_pools: Down-/up-sampling layers of the sensitivity U-Net.
            sens_chans: Starting width of the sensitivity U-Net.
            lr: Adam learning rate.
            lr_step_size: StepLR step size (epochs).
            lr_gamma: StepLR decay factor.
            weight_decay: Adam weight decay.
            **kwargs: The growth options of
                :class:`~fastmri_growth.growth.config.GrowthConfig` by name,
                as for :class:`~fastmri_growth.pl_modules.DynamicUnetModule`;
                sites name their U-Net (``cascade_K/LAYER[:CONV]``,
                ``cascade_*/LAYER``, ``sens/LAYER``; a bare ``LAYER`` is that
                layer of every U-Net), and ``target_chans`` scales every
                U-Net by ``target_chans / chans``. Then fastMRI's
                ``MriModule`` arguments (``num_log_images``).

        Raises:
            ValueError: a bad architecture or growth option, naming it,
                before anything is built.
        """
        growth, rest = self.split_growth_options(kwargs)
        # The architecture is checked before fastMRI builds its VarNet (which
        # would fail deep inside torch on, say, a float channel count).
        for name, value in (("num_cascades", num_cascades), ("pools", pools), ("chans", chans),
                            ("sens_pools", sens_pools), ("sens_chans", sens_chans)):
            require(int_at_least(1), name, value)
        # Sites too, before fastMRI builds its VarNet.
        growth.schedule(DynamicVarNet.site_ids(num_cascades, pools, sens_pools))
        super().__init__(
            num_cascades=num_cascades, pools=pools, chans=chans, sens_pools=sens_pools,
            sens_chans=sens_chans, lr=lr, lr_step_size=lr_step_size, lr_gamma=lr_gamma,
            weight_decay=weight_decay, **rest,
        )
        self.save_hyperparameters()
        self.varnet = DynamicVarNet.from_varnet(self.varnet)
        self.init_growth(growth)

    # ------------------------------------------------ GrowableModule protocol
    def growth_loss(self, batch) -> torch.Tensor:
        """The training step's loss on a ``VarNetSample`` batch.

        fastMRI's SSIM loss of the root-sum-of-squares image against the
        target (both cropped to the smaller), data range ``max_value``. With a
        "true" half-precision plugin the weights are half while the batch is
        the loader's float32: k-space and target are taken in the weights' dtype.
        """
        dtype = next(self.varnet.parameters()).dtype
        output = self.varnet(batch.masked_kspace.to(dtype), batch.mask, batch.num_low_frequencies)
        target, output = transforms.center_crop_to_smallest(batch.target.to(dtype), output)
        return self.loss(output.unsqueeze(1), target.unsqueeze(1), data_range=batch.max_value)

    def checkpoint_widths(self) -> dict:
        """What checkpoints record of the network's shape.

        Per U-Net its block and transposed-conv widths, the number of
        cascades, and the gates of the cascades fading in (``{index: gate}``).
        """
        return {"widths": self.varnet.get_network_size(),
                "transpose_widths": self.varnet.transpose_widths(),
                "num_cascades": self.varnet.num_cascades,
                "cascade_gates": self.varnet.cascade_gates()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Rebuilds the network at the checkpoint's cascades and widths (see the mixin).

        Raises:
            ValueError: the tensors disagree with the recorded number of cascades.
        """
        super().on_load_checkpoint(checkpoint)
        info = checkpoint.get(self.checkpoint_key) or {}
        recorded = info.get("num_cascades")
        if recorded is not None and int(recorded) != self.varnet.num_cascades:
            raise ValueError(
                f"Cannot load checkpoint into {type(self).__name__}: it records "
                f"num_cascades={recorded} but its tensors hold {self.varnet.num_cascades} "
                "cascades")
