"""Old import path: moved to :mod:`fastmri_growth.evaluation.inference`."""
from fastmri_growth.data.fastmri_format import (  # noqa: F401
    CHALLENGES,
    MASK_TYPES,
    check_challenge,
    check_split_dir,
    expected_recon_shape,
    h5_files,
)
from fastmri_growth.data.fastmri_format import leaderboard_mask_type as default_mask_type  # noqa: F401
from fastmri_growth.data.fastmri_format import target_key as recons_key  # noqa: F401
from fastmri_growth.evaluation.inference import (  # noqa: F401
    fixed_mask_func,
    leaderboard_validation,
    reconstruct,
    resolve_split_dir,
)
