"""Lightning 2 modules: fastMRI's modules ported, and the growing U-Net and VarNet modules.

Which module is which ``--model-type``, and how a checkpoint tells its
module, is the registry in :mod:`fastmri_growth.pl_modules.model_types`.
"""

from pathlib import Path
from typing import Union

from .dynamic_unet_module import DynamicUnetModule
from .dynamic_varnet_module import DynamicVarNetModule
from .growth_callback import GrowableModule, GrowthCallback
from .lightning2 import Lightning2MriMixin, UnetModule, VarNetModule
from .model_types import MODEL_TYPES, checkpoint_model_type, join_words

__all__ = ["DynamicUnetModule", "DynamicVarNetModule", "GrowableModule", "GrowthCallback",
           "Lightning2MriMixin", "UnetModule", "VarNetModule", "load_module"]


def load_module(checkpoint_path: Union[str, Path], map_location="cpu"):
    """Load a trained module from a Lightning checkpoint, whatever its model type.

    A checkpoint written by :class:`DynamicUnetModule` or
    :class:`DynamicVarNetModule` (they record the grown widths) comes back as
    that module at its grown widths; one written by a fastMRI-style
    ``UnetModule`` or ``VarNetModule`` comes back as the Lightning 2
    :class:`UnetModule` or :class:`VarNetModule`
    (:func:`~fastmri_growth.pl_modules.model_types.checkpoint_model_type`
    tells them apart).

    Args:
        checkpoint_path: Path to a ``.ckpt`` file.
        map_location: Where to load the tensors.

    Returns:
        The module, in eval mode.

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: If it holds the network of no registered model type.
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
        prefixes = dict.fromkeys(f"'{t.state_prefix}*'" for t in MODEL_TYPES.values())
        classes = [t.class_name for t in MODEL_TYPES.values()]
        raise ValueError(
            f"{path} holds no U-Net or VarNet (no {join_words(list(prefixes))} weights); "
            f"fastmri_growth loads {join_words(classes, 'and')} checkpoints"
        )
    module = MODEL_TYPES[kind].module_class().load_from_checkpoint(
        str(path), map_location=map_location)
    module.eval()
    return module
