"""Pure-torch growing backbones: DynamicUnet and DynamicVarNet (no Lightning, no fastMRI import).

The growth engine itself is backbone-agnostic and lives in
:mod:`fastmri_growth.growth`; this package holds the backbones and re-exports
the engine's public pieces under their old names.
"""

from ..growth.candidates import generate_candidates
from ..growth.methods import METHODS as GROWTH_METHODS
from ..growth.optim import grow_optimizer_state, remap_optimizer_state
from ..growth.report import GrowthReport
from .dynamic_unet import DynamicUnet, DynamicUnetModel
from .dynamic_varnet import DynamicVarNet, varnet_architecture_from_state_dict
from .scoring import brute_force_scores, score_candidates, score_sites
from .topology import layer_ids
from .unet_spec import architecture_from_state_dict, default_widths

__all__ = [
    "DynamicUnet", "DynamicUnetModel", "DynamicVarNet", "GrowthReport", "GROWTH_METHODS",
    "architecture_from_state_dict", "brute_force_scores", "default_widths",
    "generate_candidates", "grow_optimizer_state", "layer_ids", "remap_optimizer_state",
    "score_candidates", "score_sites", "varnet_architecture_from_state_dict",
]
