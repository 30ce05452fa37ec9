"""Evaluate reconstructions the way fastMRI's ``evaluate.py`` does.

Three modes (``fastmri-growth-eval`` or ``python -m fastmri_growth.cli.evaluate``):

``compare`` (the default when ``--target-path`` and ``--predictions-path``
are given)::

    fastmri-growth-eval --target-path knee/singlecoil_val \\
        --predictions-path recons --challenge singlecoil [--acceleration 4] \\
        [--acquisition CORPD_FBK] [--per-volume] [--json metrics.json]

Per volume: NMSE, PSNR and SSIM (and MSE) of the reconstruction against the
target, both centre-cropped to the target width, with data range the
cropped target volume's max; then the mean and the sample standard
deviation over volumes. The numbers come from ``fastmri.evaluate``'s own
metric functions; unlike that script, printing does not crash.

``check-submission``: format checks for test/challenge submissions::

    fastmri-growth-eval check-submission --predictions-path recons \\
        --data-path knee/singlecoil_test

``leaderboard``: fixed-mask validation of a checkpoint at 4x and 8x (a U-Net
reconstructs the zero-filled image, a VarNet the masked multicoil k-space)::

    fastmri-growth-eval leaderboard --checkpoint run/checkpoints/last.ckpt \\
        --data-path knee/singlecoil_val --challenge singlecoil --out lb

Exit codes: 0 success (or a valid submission), 1 a submission with
problems, 2 bad input (one line on stderr naming the problem).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

from fastmri_growth.cli.common import HelpFormatter, OneLineParser, flag
from fastmri_growth.data.fastmri_format import ACQUISITIONS, CHALLENGES, MASK_TYPES
from fastmri_growth.evaluation.metrics import (
    EvaluationError,
    check_submission,
    evaluate_folders,
    format_leaderboard_table,
    format_table,
)

SUBCOMMANDS = ("compare", "check-submission", "leaderboard")


def _add_compare_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(*flag("--target-path"), type=Path, required=True,
                   help="folder of target files")
    p.add_argument(*flag("--predictions-path"), type=Path, required=True,
                   help="folder of reconstruction files")
    p.add_argument("--challenge", choices=CHALLENGES, required=True,
                   help="selects the target dataset (reconstruction_esc or reconstruction_rss)")
    p.add_argument("--acceleration", type=int, default=None,
                   help="keep targets with this acceleration attribute; default: all")
    p.add_argument("--acquisition", choices=ACQUISITIONS, default=None,
                   help="keep targets with this acquisition attribute; default: all")
    p.add_argument(*flag("--per-volume"), action="store_true", help="also print every volume")
    p.add_argument("--json", type=Path, default=None, help="write the metrics as JSON here")


def build_parser() -> argparse.ArgumentParser:
    """The ``fastmri-growth-eval`` argument parser.

    Multi-word options take the hyphen and the underscore spelling
    (``--data-path`` / ``--data_path``).
    """
    parser = OneLineParser(
        prog="fastmri-growth-eval",
        description="fastMRI evaluation: compare folders, check a submission, "
        "or run leaderboard-style validation of a checkpoint. Without a "
        "subcommand, 'compare' is assumed.",
        formatter_class=HelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", parser_class=OneLineParser)
    _add_compare_args(
        sub.add_parser("compare", help="metrics of reconstructions against targets",
                       formatter_class=HelpFormatter)
    )
    p = sub.add_parser("check-submission", help="check test/challenge submission files",
                       formatter_class=HelpFormatter)
    p.add_argument(*flag("--predictions-path"), type=Path, required=True,
                   help="folder of submission files (one reconstruction file per input volume)")
    p.add_argument(*flag("--data-path"), type=Path, required=True,
                   help="the test or challenge split")
    p = sub.add_parser("leaderboard", help="fixed-mask 4x/8x validation of a checkpoint",
                       formatter_class=HelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True,
                   help="Lightning checkpoint of a UnetModule, DynamicUnetModule, VarNetModule "
                        "or DynamicVarNetModule (a VarNet needs --challenge multicoil)")
    p.add_argument(*flag("--data-path"), type=Path, required=True,
                   help="val split folder (or its root)")
    p.add_argument("--challenge", choices=CHALLENGES, required=True,
                   help="singlecoil or multicoil, as the data")
    p.add_argument("--out", type=Path, required=True, help="folder for <accel>x/ reconstructions")
    p.add_argument(*flag("--mask-type"), choices=MASK_TYPES, default=None,
                   help="default: random for knee, equispaced for brain")
    p.add_argument("--accelerations", type=int, nargs="+", default=[4, 8],
                   help="one fixed-mask evaluation per acceleration")
    p.add_argument(*flag("--center-fractions"), type=float, nargs="+", default=[0.08, 0.04],
                   help="centre fraction of each acceleration's mask")
    p.add_argument(*flag("--batch-size"), type=int, default=1, help="slices per forward pass")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument(*flag("--num-workers"), type=int, default=0,
                   help="data loader worker processes")
    p.add_argument("--json", type=Path, default=None, help="write the metrics as JSON here")
    return parser


def _write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=2)
    print(f"wrote {path}")


def _run_compare(args) -> int:
    result = evaluate_folders(
        args.target_path, args.predictions_path, args.challenge, args.acceleration, args.acquisition
    )
    print(format_table(result, per_volume=args.per_volume))
    if args.json is not None:
        payload = result.to_dict()
        payload.update(target_path=str(args.target_path), predictions_path=str(args.predictions_path))
        _write_json(args.json, payload)
    return 0


def _run_check_submission(args) -> int:
    problems = check_submission(args.predictions_path, args.data_path)
    if problems:
        print(f"{len(problems)} problem(s) in {args.predictions_path}:")
        for p in problems:
            print(f"  {p}")
        return 1
    print(f"{args.predictions_path}: valid submission for {args.data_path}")
    return 0


def _load_network(checkpoint: Path):
    """The reconstruction network of a checkpoint: a module's ``.unet`` or ``.varnet``."""
    if not checkpoint.is_file():
        raise EvaluationError(f"checkpoint {checkpoint} does not exist; pass a .ckpt file")
    try:
        from fastmri_growth.pl_modules import load_module
    except ImportError as err:
        raise EvaluationError(f"cannot import fastmri_growth.pl_modules.load_module ({err})")
    try:
        module = load_module(checkpoint)
    except Exception as err:  # a corrupt or foreign file: one line, not a traceback
        raise EvaluationError(f"cannot load checkpoint {checkpoint}: {err}")
    # .unet maps (N, 1, H, W) (UnetModule.forward squeezes the channel axis);
    # .varnet maps masked multicoil k-space to (N, H, W).
    for attr in ("varnet", "unet"):
        network = getattr(module, attr, None)
        if network is not None:
            bad = [n for n, p in network.named_parameters() if not p.isfinite().all()]
            if bad:
                raise EvaluationError(
                    f"checkpoint {checkpoint}: {len(bad)} weight tensor(s) hold NaN or Inf "
                    f"(first: {bad[0]}); its reconstructions would be NaN: pass a checkpoint "
                    "of a run that did not diverge")
            return network
    raise EvaluationError(
        f"checkpoint {checkpoint} holds {type(module).__name__}, which has no .unet or "
        ".varnet; pass a U-Net or VarNet checkpoint"
    )


def _check_device(device: str) -> None:
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise EvaluationError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise EvaluationError(f"--device {device}: CUDA is not available here; use --device cpu")


def _check_leaderboard_data(args) -> Path:
    """The split folder to validate on, checked as the training command checks its data.

    Leaderboard validation under-samples fully sampled files with fixed masks
    and compares with their targets: every file must hold k-space of the
    challenge's rank and the challenge's target (a val or train split).

    Raises:
        EvaluationError: naming the file and the fix; nothing is written.
    """
    from fastmri_growth.cli.run_checks import check_writable_folder
    from fastmri_growth.cli.common import UsageError
    from fastmri_growth.data.fastmri_format import TARGET_KEYS, check_split_dir
    from fastmri_growth.evaluation.inference import resolve_split_dir

    try:
        split = resolve_split_dir(args.data_path, args.challenge)
        files = check_split_dir(split, args.challenge, what="--data-path")
    except ValueError as err:
        raise EvaluationError(str(err)) from None
    import h5py

    key = TARGET_KEYS[args.challenge]
    for f in files:
        with h5py.File(f, "r") as hf:
            if key not in hf:
                sampled = "an under-sampled test/challenge file" if "mask" in hf else "no target"
                raise EvaluationError(
                    f"{f} holds no {key!r} target ({sampled}): leaderboard validation "
                    "under-samples fully sampled data with fixed masks and compares with the "
                    "targets; pass a val split (for test/challenge data use "
                    "fastmri-growth-train --mode test and check-submission)")
    try:
        check_writable_folder(args.out, f"--out {args.out}", "pass a writable --out folder")
    except UsageError as err:
        raise EvaluationError(str(err)) from None
    return split


def _check_checkpoint_challenge(checkpoint: Path, challenge: str) -> None:
    """The checkpoint was trained on the challenge it is evaluated on (warns when unknown).

    Raises:
        EvaluationError: its recorded (or inferred) challenge is the other one.
    """
    import torch

    from fastmri_growth.pl_modules.model_types import checkpoint_challenge

    try:
        loaded = torch.load(checkpoint, map_location="cpu", mmap=True, weights_only=False)
    except Exception:  # unreadable: _load_network reports it
        return
    stored, how = checkpoint_challenge(loaded)
    if stored is None:
        print(f"fastmri-growth-eval: warning: checkpoint {checkpoint} does not record the "
              f"challenge it was trained on (written by an older version); taking it for "
              f"{challenge} as --challenge says", file=sys.stderr)
    elif stored != challenge:
        raise EvaluationError(
            f"checkpoint {checkpoint} was trained on {stored} data ({how}) but --challenge is "
            f"{challenge}; pass --challenge {stored} and a {stored} val split")


def _check_network_fits(network, split: Path, challenge: str) -> None:
    """A U-Net's pooling depth against the images of the split's first file."""
    from fastmri_growth.cli.data_checks import _unet_input_size, max_pool_layers

    pools = getattr(network, "num_pool_layers", None)
    if not isinstance(pools, int):
        return
    first = sorted(p for p in split.iterdir() if p.suffix == ".h5")[0]
    size = _unet_input_size(first, challenge)
    fits = max_pool_layers(*size)
    if pools > fits:
        raise EvaluationError(
            f"the checkpoint's U-Net has {pools} poolings, too many for the "
            f"{size[0]}x{size[1]} images of {first} (at most {fits}); pass data of the size "
            "it was trained on")


def _run_leaderboard(args) -> int:
    from fastmri_growth.evaluation.inference import leaderboard_validation, model_input

    if len(args.accelerations) != len(args.center_fractions):
        raise EvaluationError(
            f"{len(args.accelerations)} accelerations but {len(args.center_fractions)} centre "
            "fractions; pass one --center-fractions value per acceleration"
        )
    _check_device(args.device)
    if not args.checkpoint.is_file():
        raise EvaluationError(f"checkpoint {args.checkpoint} does not exist; pass a .ckpt file")
    split = _check_leaderboard_data(args)
    _check_checkpoint_challenge(args.checkpoint, args.challenge)
    network = _load_network(args.checkpoint)
    if model_input(network) == "kspace" and args.challenge != "multicoil":
        raise EvaluationError(
            f"checkpoint {args.checkpoint} holds a VarNet, which reconstructs multicoil k-space, "
            f"but --challenge is {args.challenge}; pass --challenge multicoil and a multicoil "
            "val split")
    if model_input(network) == "image":
        _check_network_fits(network, split, args.challenge)
    try:
        results = leaderboard_validation(
            network,
            split,
            args.challenge,
            args.out,
            accelerations=args.accelerations,
            center_fractions=args.center_fractions,
            mask_type=args.mask_type,
            batch_size=args.batch_size,
            device=args.device,
            num_workers=args.num_workers,
        )
    except EvaluationError:
        raise
    except ValueError as err:
        raise EvaluationError(str(err)) from None
    print(format_leaderboard_table(results))
    if args.json is not None:
        payload = {f"{a}x": r for a, r in results.items()}
        _write_json(args.json, {"checkpoint": str(args.checkpoint), "results": payload})
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``fastmri-growth-eval``; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in SUBCOMMANDS and argv[0] not in ("-h", "--help"):
        argv = ["compare"] + argv
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        print(
            "fastmri-growth-eval: error: no command given; use compare, check-submission or "
            "leaderboard (see --help)",
            file=sys.stderr,
        )
        return 2
    runners = {
        "compare": _run_compare,
        "check-submission": _run_check_submission,
        "leaderboard": _run_leaderboard,
    }
    try:
        return runners[args.command](args)
    except EvaluationError as err:
        print(f"fastmri-growth-eval: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"fastmri-growth-eval: error: {err}; check the path and that files are HDF5",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
