"""Old import path: moved to :mod:`fastmri_growth.evaluation.metrics` (the
metrics) and :mod:`fastmri_growth.cli.evaluate` (``fastmri-growth-eval``)."""
import sys

from fastmri_growth.cli.evaluate import SUBCOMMANDS, build_parser, main  # noqa: F401
from fastmri_growth.data.fastmri_format import ACQUISITIONS, CHALLENGES, MASK_TYPES  # noqa: F401
from fastmri_growth.evaluation.metrics import (  # noqa: F401
    METRICS,
    EvaluationError,
    EvaluationResult,
    check_submission,
    crop_for_evaluation,
    evaluate_folders,
    format_leaderboard_table,
    format_table,
    volume_metrics,
)

if __name__ == "__main__":
    sys.exit(main())
