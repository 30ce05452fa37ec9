"""Old import path: optimizer-state updates moved to :mod:`fastmri_growth.growth.optim`."""
from ..growth.optim import SECOND_MOMENT_KEYS, grow_optimizer_state, remap_optimizer_state  # noqa: F401
