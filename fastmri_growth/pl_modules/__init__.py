"""Lightning 2 modules: fastMRI's modules ported, and the growing U-Net and VarNet modules."""

from pathlib import Path
from typing import Any, Optional, Union

from .dynamic_unet_module import DynamicUnetModule
from .dynamic_varnet_module import DynamicVarNetModule
from .growth_callback import GrowableModule, GrowthCallback
from .lightning2 import Lightning2MriMixin, UnetModule, VarNetModule

__all__ = ["DynamicUnetModule", "DynamicVarNetModule", "GrowableModule", "GrowthCallback",
           "Lightning2MriMixin", "UnetModule", "VarNetModule", "checkpoint_model_type",
           "load_module"]

#: ``checkpoint_model_type`` result -> module class.
MODULE_CLASSES = {
    "unet": UnetModule,
    "dynamic_unet": DynamicUnetModule,
    "varnet": VarNetModule,
    "dynamic_varnet": DynamicVarNetModule,
}


def checkpoint_model_type(ckpt: Any) -> Optional[str]:
    """Which module wrote a loaded Lightning checkpoint.

    The growing modules record their widths under their own key
    (``dynamic_varnet``, ``dynamic_unet``); checkpoints without it are told
    apart by their hyperparameters (``growth_method``) and weight prefixes
    (``varnet.``, ``unet.``).

    Args:
        ckpt: The object ``torch.load`` returned.

    Returns:
        ``"dynamic_varnet"``, ``"dynamic_unet"``, ``"varnet"``, ``"unet"``,
        or None for anything else.
    """
    from .dynamic_unet_module import CHECKPOINT_KEY as UNET_KEY
    from .dynamic_varnet_module import CHECKPOINT_KEY as VARNET_KEY

    if not isinstance(ckpt, dict):
        return None
    hparams = ckpt.get("hyper_parameters") or {}
    state = ckpt.get("state_dict") or {}
    has_varnet = any(str(k).startswith("varnet.") for k in state)
    has_unet = any(str(k).startswith("unet.") for k in state)
    grows = "growth_method" in hparams
    if VARNET_KEY in ckpt or (grows and has_varnet):
        return "dynamic_varnet"
    if UNET_KEY in ckpt or grows:
        return "dynamic_unet"
    if has_varnet:
        return "varnet"
    if has_unet:
        return "unet"
    return None


def load_module(checkpoint_path: Union[str, Path], map_location="cpu"):
    """Load a trained module from a Lightning checkpoint, whatever its kind.

    A checkpoint written by :class:`DynamicUnetModule` or
    :class:`DynamicVarNetModule` (they record the grown widths) comes back as
    that module at its grown widths; one written by a fastMRI-style
    ``UnetModule`` or ``VarNetModule`` comes back as the Lightning 2
    :class:`UnetModule` or :class:`VarNetModule`.

    Args:
        checkpoint_path: Path to a ``.ckpt`` file.
        map_location: Where to load the tensors.

    Returns:
        The module, in eval mode.

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: If it holds neither a U-Net nor a VarNet.
    """
    import torch

    path = Path(checkpoint_path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint not found: {path}")
    ckpt = torch.load(path, map_location=map_location, weights_only=False)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ValueError(f"{path} is not a Lightning checkpoint (no 'state_dict')")
    kind = checkpoint_model_type(ckpt)
    if kind is None:
        raise ValueError(
            f"{path} holds no U-Net or VarNet (no 'unet.*' or 'varnet.*' weights); "
            "fastmri_growth loads UnetModule, DynamicUnetModule, VarNetModule and "
            "DynamicVarNetModule checkpoints"
        )
    module = MODULE_CLASSES[kind].load_from_checkpoint(str(path), map_location=map_location)
    module.eval()
    return module
