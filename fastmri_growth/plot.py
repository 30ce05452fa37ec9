"""Old import path: moved to :mod:`fastmri_growth.evaluation.plot` (the plots)
and :mod:`fastmri_growth.cli.plot` (``fastmri-growth-plot``)."""
import sys

from fastmri_growth.cli.plot import build_parser, main  # noqa: F401
from fastmri_growth.evaluation.plot import *  # noqa: F401,F403
from fastmri_growth.evaluation.plot import (  # noqa: F401
    CurvesResult,
    GridRow,
    PlotError,
    find_metrics_csv,
    find_metrics_csvs,
    grid_rows,
    growth_epochs,
    plot_curves,
    plot_grid,
    read_epoch_metrics,
    read_run_metrics,
)

if __name__ == "__main__":
    sys.exit(main())
