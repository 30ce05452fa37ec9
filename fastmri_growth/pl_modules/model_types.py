"""The model types: one registry of the LightningModules this package trains and loads.

Each :class:`ModelType` says everything the rest of the package needs to know
about one backbone's module: its class, whether it grows (and, for a fixed
type, which type is its growing version), whether it reads multicoil k-space,
where its network sits in the state dict, the key its checkpoints carry, the
defaults its fastMRI demo sets, and the constructor arguments that fix its
architecture. :func:`load_module <fastmri_growth.pl_modules.load_module>`,
:func:`checkpoint_model_type`, and the training command's ``--model-type``
(choices, help, module class, data and checkpoint checks) all read
:data:`MODEL_TYPES`; a new backbone is its module file plus one
:func:`register_model_type` call here.

The classes are named by import path and imported on first use: the
registry imports none of the modules, so any of them may read it without an
import cycle.
"""
from __future__ import annotations

import importlib
from collections.abc import Set
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Type

from fastmri_growth.data.fastmri_format import VARNET_DEMO_MASK_TYPE


@dataclass(frozen=True)
class ModelType:
    """One ``--model-type``: a LightningModule class and the facts about it.

    Attributes:
        name: The ``--model-type`` value, e.g. ``"dynamic_unet"``.
        module: The class as ``"package.module:Class"`` (imported by
            :meth:`module_class`).
        help: What it is, for ``--model-type``'s help (a short phrase).
        state_prefix: The prefix of its network's weights in the module's
            state dict, e.g. ``"unet."``; the network is the module's
            attribute of that name (``module.unet``).
        architecture_args: The constructor arguments that fix the
            architecture at the start of training (a growing network widens
            its convs later, from these); a resumed run must match them.
        grows: Whether the network grows (it takes the growth flags).
        growing_version: For a fixed type, the growing type that takes the
            growth flags (named in the error when they are given).
        kspace: Whether it reconstructs from multicoil k-space
            (``VarNetDataTransform``) rather than images (``UnetDataTransform``).
        checkpoint_key: The top-level key its checkpoints carry (a growing
            module records its widths there), None if none.
        demo_defaults: Flag defaults its fastMRI demo sets over the flags' own.
    """

    name: str
    module: str
    help: str
    state_prefix: str
    architecture_args: Tuple[str, ...]
    grows: bool = False
    growing_version: Optional[str] = None
    kspace: bool = False
    checkpoint_key: Optional[str] = None
    demo_defaults: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if not self.name.isidentifier():
            raise ValueError(f"model type name {self.name!r} is not an identifier "
                             "(it is a --model-type value and a folder name)")
        if self.module.count(":") != 1:
            raise ValueError(f"model type {self.name!r}: module {self.module!r} is not "
                             "'package.module:Class'")
        if not self.state_prefix.endswith(".") or not self.state_prefix[:-1].isidentifier():
            raise ValueError(f"model type {self.name!r}: state_prefix {self.state_prefix!r} is "
                             "not an attribute name followed by '.', e.g. 'unet.'")
        if self.grows and self.growing_version is not None:
            raise ValueError(f"model type {self.name!r} grows itself; it has no "
                             f"growing_version (got {self.growing_version!r})")
        # Frozen all the way down: the registry is shared by every caller.
        object.__setattr__(self, "architecture_args", tuple(self.architecture_args))
        object.__setattr__(self, "demo_defaults", MappingProxyType(dict(self.demo_defaults)))

    @property
    def network_attr(self) -> str:
        """The module's attribute that holds the network (``"unet"``, ``"varnet"``)."""
        return self.state_prefix[:-1]

    @property
    def class_name(self) -> str:
        """The module class's name, without importing it."""
        return self.module.partition(":")[2]

    def module_class(self) -> Type:
        """The LightningModule class (imported now)."""
        path, _, name = self.module.partition(":")
        return getattr(importlib.import_module(path), name)


#: ``--model-type`` value -> :class:`ModelType`, in ``--model-type``'s order.
MODEL_TYPES: Dict[str, ModelType] = {}


class _NamesWhere(Set):
    """The names of the registered model types with a true ``attr``, read live from the registry."""

    def __init__(self, attr: str):
        self._attr = attr

    def __contains__(self, name) -> bool:
        model_type = MODEL_TYPES.get(name) if isinstance(name, str) else None
        return model_type is not None and bool(getattr(model_type, self._attr))

    def __iter__(self):
        return iter([n for n, t in MODEL_TYPES.items() if getattr(t, self._attr)])

    def __len__(self) -> int:
        return len(list(iter(self)))

    def __repr__(self) -> str:
        return f"{{{', '.join(map(repr, self))}}}"


#: The names of the model types that grow (they take the growth flags); a live
#: view, so a type registered later is in it too.
GROWING_MODEL_TYPES: Set = _NamesWhere("grows")


def register_model_type(model_type: ModelType, replace: bool = False) -> ModelType:
    """Add a model type to :data:`MODEL_TYPES`.

    Args:
        model_type: The new entry.
        replace: Allow replacing an entry of the same name.

    Returns:
        ``model_type``.

    Raises:
        ValueError: the name is taken (and ``replace`` is False).
    """
    if model_type.name in MODEL_TYPES and not replace:
        raise ValueError(f"model type {model_type.name!r} is already registered "
                         f"(registered: {', '.join(MODEL_TYPES)}); pass replace=True to replace it")
    MODEL_TYPES[model_type.name] = model_type
    return model_type


def get_model_type(name: str) -> ModelType:
    """The registered model type called ``name``.

    Raises:
        ValueError: naming the unknown value and the registered ones.
    """
    try:
        return MODEL_TYPES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown model type {name!r}; choose one of "
                         f"{', '.join(MODEL_TYPES)}") from None


def join_words(words: Sequence[str], last: str = "or") -> str:
    """``"a, b or c"``: words as a sentence lists them."""
    words = list(words)
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} {last} {words[-1]}"


UNET_ARCHITECTURE_ARGS = ("in_chans", "out_chans", "chans", "num_pool_layers")
VARNET_ARCHITECTURE_ARGS = ("num_cascades", "pools", "chans", "sens_pools", "sens_chans")
#: fastMRI's ``train_varnet_demo.py`` trains 8 cascades with Adam at lr 1e-3
#: on multicoil data under equispaced masks (its module's constructor says 12
#: cascades and 3e-4). The U-Net types keep the flags' defaults, which are
#: ``train_unet_demo.py``'s.
VARNET_DEMO_DEFAULTS = dict(
    challenge="multicoil", mask_type=VARNET_DEMO_MASK_TYPE,
    num_cascades=8, pools=4, chans=18, sens_pools=4, sens_chans=8,
    lr=0.001, lr_step_size=40, lr_gamma=0.1, weight_decay=0.0,
)

register_model_type(ModelType(
    "unet", "fastmri_growth.pl_modules.lightning2:UnetModule", "fastMRI's U-Net",
    state_prefix="unet.", architecture_args=UNET_ARCHITECTURE_ARGS,
    growing_version="dynamic_unet"))
register_model_type(ModelType(
    "dynamic_unet", "fastmri_growth.pl_modules.dynamic_unet_module:DynamicUnetModule",
    "the growing U-Net", state_prefix="unet.", architecture_args=UNET_ARCHITECTURE_ARGS,
    grows=True, checkpoint_key="dynamic_unet"))
register_model_type(ModelType(
    "varnet", "fastmri_growth.pl_modules.lightning2:VarNetModule",
    "fastMRI's end-to-end VarNet, multicoil k-space", state_prefix="varnet.",
    architecture_args=VARNET_ARCHITECTURE_ARGS, growing_version="dynamic_varnet", kspace=True,
    demo_defaults=VARNET_DEMO_DEFAULTS))
register_model_type(ModelType(
    "dynamic_varnet", "fastmri_growth.pl_modules.dynamic_varnet_module:DynamicVarNetModule",
    "the VarNet whose cascade and sensitivity U-Nets grow", state_prefix="varnet.",
    architecture_args=VARNET_ARCHITECTURE_ARGS, grows=True, kspace=True,
    checkpoint_key="dynamic_varnet", demo_defaults=VARNET_DEMO_DEFAULTS))


def checkpoint_model_type(ckpt: Any) -> Optional[str]:
    """Which model type's module wrote a loaded Lightning checkpoint.

    A growing module records its widths under its :attr:`ModelType.checkpoint_key`;
    checkpoints without such a key are told apart by their hyperparameters
    (the growth flags' ``growth_method``: a growing type) and their weights'
    :attr:`ModelType.state_prefix`.

    Args:
        ckpt: The object ``torch.load`` returned.

    Returns:
        The model type's name, or None for anything else.
    """
    if not isinstance(ckpt, dict):
        return None
    for model_type in MODEL_TYPES.values():
        if model_type.checkpoint_key is not None and model_type.checkpoint_key in ckpt:
            return model_type.name
    hparams = ckpt.get("hyper_parameters") or {}
    keys = [str(k) for k in (ckpt.get("state_dict") or {})]
    grows = "growth_method" in hparams
    for model_type in MODEL_TYPES.values():
        if model_type.grows == grows and any(k.startswith(model_type.state_prefix) for k in keys):
            return model_type.name
    return None


#: Where a checkpoint records the challenge its data module read (Lightning's key
#: for the data module's hyperparameters).
DATA_HPARAMS_KEY = "datamodule_hyper_parameters"


def checkpoint_challenge(ckpt: Any) -> Tuple[Optional[str], str]:
    """The challenge (``"singlecoil"`` or ``"multicoil"``) a checkpoint was trained on.

    Recorded by :class:`~fastmri_growth.pl_modules.data_module.FastMriDataModule`
    in the data module's hyperparameters; checkpoints without that record
    (older versions, or training without the data module) are inferred from
    the model type: a VarNet reads multicoil k-space. A U-Net's weights do not
    say which data it saw.

    Args:
        ckpt: The object ``torch.load`` returned.

    Returns:
        ``(challenge, how it is known)``; ``(None, reason)`` when unknown.
    """
    if not isinstance(ckpt, dict):
        return None, "not a checkpoint"
    recorded = (ckpt.get(DATA_HPARAMS_KEY) or {}).get("challenge")
    if recorded in ("singlecoil", "multicoil"):
        return recorded, "recorded in the checkpoint"
    kind = checkpoint_model_type(ckpt)
    if kind is not None and MODEL_TYPES[kind].kspace:
        return "multicoil", f"a {kind} model reads multicoil k-space"
    return None, "not recorded"
