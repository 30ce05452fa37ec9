"""``fastmri-growth-synth``: write a synthetic dataset in fastMRI's format.

See :func:`fastmri_growth.data.synthetic.generate_dataset` for what is written
and :mod:`fastmri_growth.data.phantoms` for what the images show.

Command line::

    fastmri-growth-synth --out DIR --phantom textured \\
        --challenges knee_singlecoil --num-volumes train=8,val=2,test=2,challenge=2
    fastmri-growth-synth --preview docs/phantoms.png   # one picture of every phantom
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from fastmri_growth.cli.common import OneLineParser
from fastmri_growth.data.synthetic import (
    _DEFAULTS,
    CHALLENGES,
    PHANTOMS,
    SPLITS,
    DatasetExistsError,
    MissingExtraError,
    _check_num_coils,
    _check_positive_int,
    _check_recon_size,
    _check_seed,
    generate_dataset,
)
from fastmri_growth.data.synthetic_manifest import Inspection, exists_message


def _arg(check):
    def parse(text):
        try:
            return check(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    return parse


def _parse_int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{what} must be an integer, got {text!r}") from None


def _parse_num_volumes(text: str):
    if "=" not in text:
        return _parse_int(text, "--num-volumes")
    counts = {}
    for item in text.split(","):
        split, sep, count = item.partition("=")
        split = split.strip()
        if not sep or not split:
            raise ValueError(
                f"expected an integer or split=count pairs like train=8,val=2, got {text!r}"
            )
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
        counts[split] = _parse_int(count.strip(), f"the count for {split}")
    return counts


def _parse_num_coils(text: str):
    low, sep, high = text.partition("-")
    if not sep:
        return _check_num_coils(_parse_int(text, "--num-coils"))
    return _check_num_coils((_parse_int(low, "--num-coils"), _parse_int(high, "--num-coils")))


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser; defaults come from ``generate_dataset``."""
    d = _DEFAULTS
    parser = OneLineParser(
        prog="fastmri-growth-synth",
        description=(
            "Write a synthetic dataset in fastMRI's layout and HDF5 format "
            "(DIR/knee/singlecoil_train/file1000000.h5, ...), readable by an "
            "unpatched fastmri.data.SliceDataset."
        ),
    )
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--out", type=Path, metavar="DIR", help="root folder of the dataset")
    target.add_argument("--preview", type=Path, metavar="PNG",
                        help="instead of a dataset, draw example targets of every phantom "
                             "(a row each) into this PNG, at --recon-size and --seed")
    parser.add_argument("--phantom", choices=PHANTOMS, default=d["phantom"],
                        help="what the images show: ellipses (smooth knee/head phantoms), "
                             "textured (detail down to single pixels) or anatomy (real brain "
                             "MRI from images shipped with nilearn, dipy and nibabel; needs "
                             "pip install fastmri-growth[anatomy]) (default: %(default)s)")
    parser.add_argument("--challenges", nargs="+", choices=CHALLENGES,
                        default=list(d["challenges"]), metavar="CHALLENGE",
                        help=f"any of {', '.join(CHALLENGES)} "
                             f"(default: {' '.join(d['challenges'])})")
    parser.add_argument("--splits", nargs="+", choices=SPLITS, default=list(d["splits"]),
                        metavar="SPLIT",
                        help=f"any of {', '.join(SPLITS)} (default: all)")
    parser.add_argument("--num-volumes", "--num_volumes", dest="num_volumes",
                        type=_arg(_parse_num_volumes), default=d["num_volumes"],
                        metavar="N|SPLIT=N,...",
                        help="volumes per split: one integer, or e.g. "
                             "train=8,val=2 (unnamed splits get %(default)s)")
    parser.add_argument("--num-slices", "--num_slices", dest="num_slices",
                        type=_arg(lambda t: _check_positive_int(
                            "--num-slices", _parse_int(t, "--num-slices"))),
                        default=d["num_slices"], help="slices per volume (default: %(default)s)")
    parser.add_argument("--recon-size", "--recon_size", dest="recon_size",
                        type=_arg(lambda t: _check_recon_size(_parse_int(t, "--recon-size"))),
                        default=d["recon_size"],
                        help="side of the square target, even; k-space has twice as "
                             "many rows; at least 32 for textured and anatomy "
                             "(default: %(default)s)")
    parser.add_argument("--num-coils", "--num_coils", dest="num_coils",
                        type=_arg(_parse_num_coils), default=d["num_coils"],
                        metavar="N|MIN-MAX",
                        help="coils per multicoil file, drawn per file from "
                             "MIN-MAX (default: 4-8)")
    parser.add_argument("--seed", type=_arg(lambda t: _check_seed(_parse_int(t, "--seed"))),
                        default=d["seed"], help="random seed (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the files of an earlier run in the folders written, and "
                             "remove those the new settings do not write (default: refuse and "
                             "write nothing); files it did not write are never touched")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.preview is not None:
            from fastmri_growth.data.preview import render_preview

            print(render_preview(args.preview, recon_size=args.recon_size, seed=args.seed))
            return 0
        generate_dataset(
            args.out,
            challenges=args.challenges,
            splits=args.splits,
            num_volumes=args.num_volumes,
            num_slices=args.num_slices,
            recon_size=args.recon_size,
            seed=args.seed,
            overwrite=args.overwrite,
            num_coils=args.num_coils,
            phantom=args.phantom,
            log=print,
        )
    except DatasetExistsError as err:
        found = Inspection(existing=err.existing, stale=err.stale)
        parser.error(exists_message(found, err.total, "--overwrite"))
    except (ValueError, MissingExtraError) as err:
        parser.error(" ".join(str(err).split()))
    except OSError as err:
        parser.error(f"{err}; check the path")
    return 0


if __name__ == "__main__":
    sys.exit(main())
