"""``fastmri-growth-plot``: curves of a run and grids of its reconstructions.

See :mod:`fastmri_growth.evaluation.plot` for what each plot shows.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from fastmri_growth.cli.common import HelpFormatter, OneLineParser, flag
from fastmri_growth.data.fastmri_format import CHALLENGES, MASK_TYPES
from fastmri_growth.evaluation import plot as _plot
from fastmri_growth.evaluation.plot import PlotError, plot_curves, plot_grid


def build_parser() -> argparse.ArgumentParser:
    """The ``fastmri-growth-plot`` argument parser.

    Multi-word options take the hyphen and the underscore spelling
    (``--log-dir`` / ``--log_dir``).
    """
    parser = OneLineParser(prog="fastmri-growth-plot", description=_plot.__doc__.split("\n\n")[0],
                     formatter_class=HelpFormatter)
    sub = parser.add_subparsers(dest="command", parser_class=OneLineParser)
    p = sub.add_parser("curves", help="network size and val SSIM/PSNR against epoch",
                       formatter_class=HelpFormatter)
    p.add_argument(*flag("--log-dir"), type=Path, required=True,
                   help="run folder (every csv_logs/version_N is read) or a metrics.csv")
    p.add_argument("--out", type=Path, required=True, help="PNG to write")
    p = sub.add_parser("grid", help="input / reconstruction / target / |error| per slice",
                       formatter_class=HelpFormatter)
    p.add_argument("--reconstructions", type=Path, required=True,
                   help="folder of reconstruction files")
    p.add_argument(*flag("--data-path"), type=Path, required=True,
                   help="split the reconstructions come from")
    p.add_argument("--challenge", choices=CHALLENGES, required=True,
                   help="singlecoil or multicoil, as the data")
    p.add_argument("--out", type=Path, required=True, help="PNG to write")
    p.add_argument(*flag("--mask-type"), choices=MASK_TYPES, default=None,
                   help="default: random for knee, equispaced for brain")
    p.add_argument("--acceleration", type=int, default=4,
                   help="under-sampling factor of the input column's fixed mask")
    p.add_argument(*flag("--center-fraction"), type=float, default=None,
                   help="default: 0.08 for 4x, 0.04 for 8x")
    p.add_argument(*flag("--num-slices"), type=int, default=4, help="rows of the grid")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``fastmri-growth-plot``; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        print("fastmri-growth-plot: error: no command given; use curves or grid (see --help)",
              file=sys.stderr)
        return 2
    try:
        if args.command == "curves":
            result = plot_curves(args.log_dir, args.out)
            if result.missing:
                print(
                    f"note: {result.csv_path} has no {', '.join(result.missing)}; plotted the rest",
                    file=sys.stderr,
                )
            print(result.out)
        else:
            print(
                plot_grid(
                    args.reconstructions,
                    args.data_path,
                    args.challenge,
                    args.out,
                    mask_type=args.mask_type,
                    acceleration=args.acceleration,
                    center_fraction=args.center_fraction,
                    num_slices=args.num_slices,
                )
            )
    except PlotError as err:
        print(f"fastmri-growth-plot: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"fastmri-growth-plot: error: {err}; check the path and that files are HDF5",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
