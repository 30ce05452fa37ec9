"""Lightning 2 modules: fastMRI's modules ported, and the growing U-Net module."""

from pathlib import Path
from typing import Union

from .dynamic_unet_module import DynamicUnetModule
from .growth_callback import GrowableModule, GrowthCallback
from .lightning2 import Lightning2MriMixin, UnetModule, VarNetModule

__all__ = ["DynamicUnetModule", "GrowableModule", "GrowthCallback", "Lightning2MriMixin",
           "UnetModule", "VarNetModule", "load_module"]


def load_module(checkpoint_path: Union[str, Path], map_location="cpu"):
    """Load a trained module from a Lightning checkpoint, whatever its kind.

    A checkpoint written by :class:`DynamicUnetModule` (it records the grown
    widths) comes back as a DynamicUnetModule at its grown widths; one
    written by a fastMRI-style ``UnetModule`` comes back as the Lightning 2
    :class:`UnetModule`.

    Args:
        checkpoint_path: Path to a ``.ckpt`` file.
        map_location: Where to load the tensors.

    Returns:
        The module, in eval mode.

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: If it is not a U-Net checkpoint.
    """
    import torch

    from .dynamic_unet_module import CHECKPOINT_KEY

    path = Path(checkpoint_path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint not found: {path}")
    ckpt = torch.load(path, map_location=map_location, weights_only=False)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ValueError(f"{path} is not a Lightning checkpoint (no 'state_dict')")
    hparams = ckpt.get("hyper_parameters", {})
    if CHECKPOINT_KEY in ckpt or "growth_method" in hparams:
        cls = DynamicUnetModule
    elif any(k.startswith("unet.") for k in ckpt["state_dict"]):
        cls = UnetModule
    else:
        raise ValueError(
            f"{path} holds no U-Net (no 'unet.*' weights); fastmri_growth loads "
            "UnetModule and DynamicUnetModule checkpoints"
        )
    module = cls.load_from_checkpoint(str(path), map_location=map_location)
    module.eval()
    return module
