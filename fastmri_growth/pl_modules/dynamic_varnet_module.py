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
"""

from argparse import ArgumentParser
from typing import List, Optional

import torch
from fastmri.data import transforms

from ..flags import redeclare
from ..models import DynamicVarNet
from .growable import GrowthMixin
from .growth_options import (
    add_growth_args,
    build_growth_callback,
    growth_arg_names,
    growth_default,
    spellings,
    split_growth_options,
)
from .lightning2 import VarNetModule

#: Checkpoint key holding the widths.
CHECKPOINT_KEY = "dynamic_varnet"

D = growth_default


class DynamicVarNetModule(GrowthMixin, VarNetModule):
    """A fastMRI ``VarNetModule`` whose cascade and sensitivity U-Nets grow during training.

    The starting weights are those of fastMRI's ``VarNetModule`` built with
    the same arguments under the same seed (the fastMRI VarNet is built,
    then converted), so a fixed and a growing run start from one network.
    """

    growable_attr = "varnet"
    checkpoint_key = CHECKPOINT_KEY

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
            num_cascades: Number of VarNet cascades.
            pools: Down-/up-sampling layers of each cascade's U-Net.
            chans: Starting width of each cascade's U-Net.
            sens_pools: Down-/up-sampling layers of the sensitivity U-Net.
            sens_chans: Starting width of the sensitivity U-Net.
            lr: Adam learning rate.
            lr_step_size: StepLR step size (epochs).
            lr_gamma: StepLR decay factor.
            weight_decay: Adam weight decay.
            growth_method: A registered growth method (``sample_select``,
                ``split``, ...).
            n_candidates: Candidates scored per site by sample_select.
            growth_interval: Interval schedule: grow every this many epochs.
            layers_to_grow: Sites grown at each event: ``NET/LAYER[:CONV]``
                with NET ``sens``, ``cascade_K`` or ``cascade_*``; a bare
                ``LAYER[:CONV]`` means that layer of every U-Net; None grows
                every site.
            growth_schedule: ``"interval"``, ``"plateau"`` or ``"progressive"``.
            plateau_patience: Plateau schedule patience, in validations.
            progressive_schedule: ``{epoch: [entries]}`` or
                ``"2:cascade_*/bottleneck;4:sens/up_0:1"``.
            n_new: Filters added per site per event.
            max_growth_steps: Cap on the number of growth events.
            max_width: Cap on the filters of any conv.
            split_noise: Symmetry-breaking noise of ``split`` (None: default).
            new_filter_lr_scale: Learning-rate scale of newly added weights
                during the epoch they were added in.
            reset_optimizer: Recreate optimizer and LR scheduler after growth.
            growth_start_epoch: First epoch at which growth may happen.
            growth_seed: Seed of candidate and noise generation.
            plateau_min_delta: Plateau schedule: a smaller improvement of
                validation_loss does not count.
            growth_batches, fan_out_init, auto_sites, site_criterion,
                optimizer_seeding, new_filter_ramp_steps, growth_end_epoch,
                target_chans, target_params, prune_schedule, prune_interval,
                prune_start_epoch, prune_epochs, prune_n, prune_fraction,
                prune_criterion, prune_sites, min_width: as for
                :class:`~fastmri_growth.pl_modules.DynamicUnetModule` (the same
                table of growth options); ``target_chans`` scales every U-Net
                by ``target_chans / chans`` (the cascades' start width).
            **kwargs: Options of other registered growth methods, then
                fastMRI's ``MriModule`` arguments (``num_log_images``).

        Raises:
            ValueError: a bad architecture or growth option, naming it,
                before anything trains.
        """
        growth = {name: value for name, value in locals().items() if name in growth_arg_names()}
        growth.update(split_growth_options(kwargs))
        # The architecture is checked before fastMRI builds its VarNet (which
        # would fail deep inside torch on, say, a float channel count).
        for name, value in (("num_cascades", num_cascades), ("pools", pools), ("chans", chans),
                            ("sens_pools", sens_pools), ("sens_chans", sens_chans)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        site_ids = DynamicVarNet.site_ids(num_cascades, pools, sens_pools)
        callback = build_growth_callback(growth, site_ids, self.growth_callback_class)
        super().__init__(
            num_cascades=num_cascades, pools=pools, chans=chans, sens_pools=sens_pools,
            sens_chans=sens_chans, lr=lr, lr_step_size=lr_step_size, lr_gamma=lr_gamma,
            weight_decay=weight_decay, **kwargs,
        )
        self.save_hyperparameters()
        self.growth_callback = callback
        self.growth_method = growth_method
        self.varnet = DynamicVarNet.from_varnet(self.varnet)
        self.growth_callback.prepare(self.varnet)  # a budget target below the start fails now

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
        """The widths stored in checkpoints: per U-Net, its block and transposed-conv widths."""
        return {"widths": self.varnet.get_network_size(),
                "transpose_widths": self.varnet.transpose_widths()}

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
        """Add fastMRI's VarNet flags and the growth flags.

        ``--layers-to-grow`` entries name the U-Net: ``cascade_K/LAYER[:CONV]``,
        ``cascade_*/LAYER`` or ``sens/LAYER``.
        """
        parser = add_growth_args(VarNetModule.add_model_specific_args(parent_parser))
        return redeclare(parser, (tuple(spellings("layers_to_grow")), dict(
            dest="layers_to_grow", default=D("layers_to_grow"), type=str, nargs="+",
            help="Sites to grow: NET/LAYER (both convs) or NET/LAYER:CONV (0 or 1), NET being "
                 "sens (the sensitivity U-Net), cascade_K or cascade_* (every cascade); a bare "
                 "LAYER means that layer of every U-Net; layers are down_0..down_{P-1}, "
                 "bottleneck, up_0..up_{P-1}; default: all")))


#: The growth options of :class:`DynamicVarNetModule` (constructor names).
GROWTH_ARGS = tuple(growth_arg_names())
