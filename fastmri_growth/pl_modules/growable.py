"""GrowthMixin: what every growing fastMRI module shares.

A module that mixes this in (before its fastMRI base) holds one growable
network as the attribute named by :attr:`GrowthMixin.growable_attr`, takes
the growth options (:class:`~fastmri_growth.growth.config.GrowthConfig`) as
keyword arguments next to its own, and calls :meth:`GrowthMixin.init_growth`
once its network is built. The mixin records every option as a
hyperparameter under its flag name, attaches the
:class:`~.growth_callback.GrowthCallback`, adds the growth flags to the
module's own, gives access to the schedule and reports, and keeps the grown
widths in checkpoints (resized in ``on_load_checkpoint``, which Lightning
runs before loading the weights).
"""
from __future__ import annotations

from argparse import ArgumentParser
from typing import Any, Dict, Mapping, Tuple

import torch

from fastmri_growth.growth import config as growth_config
from fastmri_growth.growth.config import GrowthConfig
from fastmri_growth.growth.net import resize_on_load
from fastmri_growth.growth.schedule import GrowthSchedule

from .growth_callback import GrowthCallback


#: What fastMRI's ``MriModule`` takes through a module's ``**kwargs``.
MRI_MODULE_ARGS = ("num_log_images",)


class GrowthMixin:
    """Growth plumbing of a LightningModule with one growable network.

    Class attributes:
        growable_attr: Attribute holding the network (``"unet"``, ``"varnet"``);
            its state-dict keys carry this prefix.
        checkpoint_key: Checkpoint key under which the widths are stored.
        growth_callback_class: The callback class built from the growth
            options (a subclass may count or probe growth events).
    """

    growable_attr: str = "net"
    checkpoint_key: str = "growth"
    growth_callback_class = GrowthCallback
    growth_callback: GrowthCallback
    #: Flag help that differs for this backbone (its site names).
    growth_help: Dict[str, str] = {}
    #: What the network has that some options need (``"cascades"``: depth growth).
    growth_capabilities: Tuple[str, ...] = ()

    @staticmethod
    def split_growth_options(kwargs: Mapping[str, Any]) -> Tuple[GrowthConfig, Dict[str, Any]]:
        """``(checked growth configuration, the other keyword arguments)``.

        Called first in a growing module's constructor, so a bad option
        fails before any network is built.

        Raises:
            ValueError: a keyword that is neither a growth option nor
                ``MriModule``'s ``num_log_images``, or a bad option value.
        """
        known = growth_config.option_names() + list(MRI_MODULE_ARGS)
        unknown = sorted(set(kwargs) - set(known))
        if unknown:
            raise ValueError(f"Unknown growth option(s) {', '.join(unknown)}; valid: "
                             f"{', '.join(known)}")
        return GrowthConfig.split(kwargs)

    def init_growth(self, config: GrowthConfig) -> None:
        """Record every growth option as a hyperparameter and attach the callback.

        Called once the network exists: the schedule is built for its sites
        (a bad site or a budget target below the start fails now), and the
        network resizes itself to a state dict's widths whenever one is loaded.
        """
        # save_hyperparameters() records the keywords given; every option is
        # recorded (under its flag name) so a checkpoint says how it grew.
        config.check_backbone(self.growth_capabilities, type(self).__name__)
        self.hparams.update(config.options())
        self.growth_callback = self.growth_callback_class(config)
        net = self.growable_net()
        self.growth_callback.prepare(net)
        resize_on_load(net)

    @property
    def growth_config(self) -> GrowthConfig:
        return self.growth_callback.config

    @classmethod
    def add_model_specific_args(cls, parent_parser: ArgumentParser) -> ArgumentParser:
        """The fastMRI base module's flags, then every growth flag.

        Growth flags accept the hyphen and the underscore spelling
        (``--growth-method`` / ``--growth_method``).
        """
        parser = super().add_model_specific_args(parent_parser)
        return growth_config.add_arguments(parser, cls.growth_help)

    # ------------------------------------------------ GrowableModule protocol
    def growable_net(self):
        """The network that grows."""
        return getattr(self, self.growable_attr)

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
            sites: :class:`~fastmri_growth.growth.Site` s or ``(layer, conv)`` tuples.
            batch: A training batch as the module's loader yields it.
            epoch: The epoch being started (seeds the candidates).

        Returns:
            The growth reports.
        """
        return self.growth_callback.grow(self._trainer, self, [batch], sites, epoch)

    # ----------------------------------------------------------- checkpoints
    def _net_state_dict(self, checkpoint: Mapping[str, Any]) -> Dict[str, torch.Tensor]:
        prefix = self.growable_attr + "."
        return {k: v for k, v in checkpoint.get("state_dict", {}).items() if k.startswith(prefix)}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Stores the widths as plain Python values (the schedule is the callback's)."""
        super().on_save_checkpoint(checkpoint)
        checkpoint[self.checkpoint_key] = self.checkpoint_widths()

    def checkpoint_widths(self) -> Dict[str, Any]:
        """What :meth:`on_save_checkpoint` records: ``{"widths": get_network_size()}``."""
        return {"widths": self.growable_net().get_network_size()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Rebuilds the network at the checkpoint's widths and restores the schedule.

        Raises:
            ValueError: the checkpoint's tensors match no valid network of
                this module's architecture, or disagree with its recorded widths.
        """
        super().on_load_checkpoint(checkpoint)
        info = checkpoint.get(self.checkpoint_key)
        name = type(self).__name__
        net = self.growable_net()
        try:
            net.resize_from_state_dict(self._net_state_dict(checkpoint))
        except ValueError as err:
            raise ValueError(f"Cannot load checkpoint into {name}: {err}") from None
        if info is not None and info.get("widths") is not None and \
                not _same_widths(info["widths"], net.get_network_size()):
            raise ValueError(
                f"Cannot load checkpoint into {name}: its recorded widths {info['widths']} "
                f"disagree with its tensors {net.get_network_size()}"
            )
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


def _same_widths(recorded: Mapping, actual: Mapping) -> bool:
    """Recorded widths equal the tensors' (keys the recording has; later keys are derived)."""
    for key, value in recorded.items():
        if key not in actual:
            return False
        if isinstance(value, Mapping):
            if not isinstance(actual[key], Mapping) or not _same_widths(value, actual[key]):
                return False
        elif int(value) != int(actual[key]):
            return False
    return True

