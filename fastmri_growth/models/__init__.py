"""Pure-torch growing backbones: DynamicUnet and DynamicVarNet (no Lightning, no fastMRI import).

The growth engine itself is backbone-agnostic and lives in
:mod:`fastmri_growth.growth`; the helpers of each backbone (layer ids,
widths from a state dict, scoring by layer id) are imported from the
module that defines them (:mod:`.unet_spec`, :mod:`.dynamic_unet`,
:mod:`.dynamic_varnet`).
"""

from .dynamic_unet import DynamicUnet, DynamicUnetModel
from .dynamic_varnet import DynamicVarNet

__all__ = ["DynamicUnet", "DynamicUnetModel", "DynamicVarNet"]
