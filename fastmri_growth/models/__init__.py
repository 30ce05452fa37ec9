"""Pure-torch growing U-Net (no Lightning import)."""

from .dynamic_unet import DynamicUnet, DynamicUnetModel, architecture_from_state_dict, default_widths
from .growth import GROWTH_METHODS, GrowthReport, generate_candidates
from .optim import grow_optimizer_state
from .scoring import brute_force_scores, score_candidates
from .topology import layer_ids

__all__ = [
    "DynamicUnet", "DynamicUnetModel", "GrowthReport", "GROWTH_METHODS",
    "architecture_from_state_dict", "brute_force_scores", "default_widths",
    "generate_candidates", "grow_optimizer_state", "layer_ids", "score_candidates",
]
