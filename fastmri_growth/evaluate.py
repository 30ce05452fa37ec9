"""Evaluate reconstructions the way fastMRI's ``evaluate.py`` does.

Three modes (``fastmri-growth-eval`` or ``python -m fastmri_growth.evaluate``):

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

``leaderboard``: fixed-mask validation of a checkpoint at 4x and 8x::

    fastmri-growth-eval leaderboard --checkpoint run/checkpoints/last.ckpt \\
        --data-path knee/singlecoil_val --challenge singlecoil --out lb

Exit codes: 0 success (or a valid submission), 1 a submission with
problems, 2 bad input (one line on stderr naming the problem).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import h5py
import numpy as np

from fastmri_growth.inference import (
    CHALLENGES,
    MASK_TYPES,
    check_challenge,
    expected_recon_shape,
    h5_files,
    recons_key,
)

ACQUISITIONS = ("CORPD_FBK", "CORPDFS_FBK", "AXT1", "AXT1PRE", "AXT1POST", "AXT2", "AXFLAIR")
METRICS = ("NMSE", "PSNR", "SSIM", "MSE")
SUBCOMMANDS = ("compare", "check-submission", "leaderboard")


class EvaluationError(ValueError):
    """Bad evaluation input: the message names the problem and the fix."""


def _metric_funcs():
    # Imported lazily: fastmri.evaluate pulls in fastmri.data (pandas, requests).
    from fastmri import evaluate as fe

    return {"NMSE": fe.nmse, "PSNR": fe.psnr, "SSIM": fe.ssim, "MSE": fe.mse}


def _attr_str(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def crop_for_evaluation(target: np.ndarray, recon: np.ndarray, name: str = "volume"):
    """Centre-crop target and reconstruction as fastMRI's evaluate.py does.

    fastMRI crops both to ``(W, W)`` with ``W`` the target width. A target
    shorter than it is wide would make fastMRI fail; it is cropped to
    ``(H, W)`` here instead.

    Args:
        target: ``(slices, H, W)``.
        recon: ``(slices, H', W')`` with ``H' >= crop`` and ``W' >= W``.
        name: Volume name for error messages.

    Returns:
        ``(target, recon)`` cropped to the same shape.
    """
    from fastmri.data.transforms import center_crop

    if target.ndim != 3:
        raise EvaluationError(f"{name}: target has shape {target.shape}; expected (slices, H, W)")
    if recon.ndim != 3:
        raise EvaluationError(
            f"{name}: reconstruction has shape {recon.shape}; expected (slices, H, W)"
        )
    if recon.shape[0] != target.shape[0]:
        raise EvaluationError(
            f"{name}: reconstruction has {recon.shape[0]} slices, target {target.shape[0]}; "
            "reconstruct every slice of the volume"
        )
    crop = (min(target.shape[-2], target.shape[-1]), target.shape[-1])
    if recon.shape[-2] < crop[0] or recon.shape[-1] < crop[1]:
        raise EvaluationError(
            f"{name}: reconstruction is {recon.shape[-2]}x{recon.shape[-1]}, smaller than the "
            f"{crop[0]}x{crop[1]} evaluation crop; write reconstructions at least the target size"
        )
    return center_crop(target, crop), center_crop(recon, crop)


def volume_metrics(target: np.ndarray, recon: np.ndarray) -> Dict[str, float]:
    """fastMRI metrics of one volume (inputs already cropped to one shape).

    Args:
        target: ``(slices, H, W)``.
        recon: ``(slices, H, W)``.

    Returns:
        ``{"NMSE", "PSNR", "SSIM", "MSE"}`` as floats; data range is
        ``target.max()`` as in ``fastmri.evaluate``.
    """
    funcs = _metric_funcs()
    return {name: float(np.asarray(funcs[name](target, recon)).reshape(-1)[0]) for name in METRICS}


@dataclass
class EvaluationResult:
    """Metrics of a folder of reconstructions.

    Attributes:
        per_volume: ``{file name: {metric: value}}`` in file-name order.
        challenge: The challenge evaluated.
        filters: The ``acceleration``/``acquisition`` filters applied.
    """

    per_volume: Dict[str, Dict[str, float]]
    challenge: str
    filters: Dict[str, object] = field(default_factory=dict)

    @property
    def num_volumes(self) -> int:
        return len(self.per_volume)

    def mean(self, metric: str) -> float:
        values = [v[metric] for v in self.per_volume.values()]
        return float(np.mean(values)) if values else math.nan

    def std(self, metric: str) -> float:
        """Sample standard deviation (ddof=1, as fastMRI's runstats); NaN for one volume."""
        values = [v[metric] for v in self.per_volume.values()]
        return float(np.std(values, ddof=1)) if len(values) > 1 else math.nan

    def to_dict(self) -> dict:
        def clean(x: float) -> Optional[float]:
            return None if math.isnan(x) else x

        return {
            "challenge": self.challenge,
            "filters": self.filters,
            "num_volumes": self.num_volumes,
            "metrics": {
                m: {"mean": clean(self.mean(m)), "std": clean(self.std(m))} for m in METRICS
            },
            "per_volume": self.per_volume,
        }


def evaluate_folders(
    target_path,
    predictions_path,
    challenge: str,
    acceleration: Optional[int] = None,
    acquisition: Optional[str] = None,
) -> EvaluationResult:
    """Compare a folder of reconstructions with a folder of targets.

    Args:
        target_path: Folder of fastMRI files holding the targets
            (``reconstruction_esc`` or ``reconstruction_rss``).
        predictions_path: Folder of reconstruction files with a
            ``reconstruction`` dataset ``(slices, H, W)``, named like the
            targets.
        challenge: ``"singlecoil"`` or ``"multicoil"``.
        acceleration: Keep only targets whose ``acceleration`` attribute
            equals this.
        acquisition: Keep only targets whose ``acquisition`` attribute
            equals this.

    Returns:
        An ``EvaluationResult``.

    Raises:
        EvaluationError: a missing or empty folder, a reconstruction without
            target or a target without reconstruction (among the volumes
            kept by the filters), a target without the dataset or attribute
            asked for, mismatched shapes.
    """
    try:
        check_challenge(challenge)
        targets = h5_files(target_path, "target path")
        preds = h5_files(predictions_path, "predictions path")
    except ValueError as err:
        raise EvaluationError(str(err)) from None
    if acquisition is not None and acquisition not in ACQUISITIONS:
        raise EvaluationError(
            f"unknown acquisition {acquisition!r}; choose one of {', '.join(ACQUISITIONS)}"
        )
    key = recons_key(challenge)
    target_names = {p.name for p in targets}
    orphans = sorted(p.name for p in preds if p.name not in target_names)
    if orphans:
        raise EvaluationError(
            f"reconstruction {orphans[0]} has no target in {target_path}"
            f"{f' ({len(orphans) - 1} more)' if len(orphans) > 1 else ''}; "
            "pass the split the reconstructions were made from"
        )
    pred_names = {p.name for p in preds}

    per_volume: Dict[str, Dict[str, float]] = {}
    for tgt_file in targets:
        with h5py.File(tgt_file, "r") as hf:
            attrs = dict(hf.attrs)
            for attr, wanted in (("acceleration", acceleration), ("acquisition", acquisition)):
                if wanted is not None and attr not in attrs:
                    raise EvaluationError(
                        f"--{attr} {wanted}: target {tgt_file.name} has no '{attr}' attribute; "
                        f"drop --{attr} for these files"
                    )
            if acquisition is not None and _attr_str(attrs["acquisition"]) != acquisition:
                continue
            if acceleration is not None and int(attrs["acceleration"]) != int(acceleration):
                continue
            if key not in hf:
                other = "multicoil" if challenge == "singlecoil" else "singlecoil"
                hint = (
                    f"these look like {other} files; pass --challenge {other}"
                    if recons_key(other) in hf
                    else "pass a split with targets (train/val, not test/challenge)"
                )
                raise EvaluationError(f"target {tgt_file.name} has no '{key}' dataset; {hint}")
            target = hf[key][()]
        if tgt_file.name not in pred_names:
            raise EvaluationError(
                f"no reconstruction for target {tgt_file.name} in {predictions_path}; "
                "reconstruct every volume or narrow with --acquisition/--acceleration"
            )
        with h5py.File(Path(predictions_path) / tgt_file.name, "r") as hf:
            if "reconstruction" not in hf:
                raise EvaluationError(
                    f"{tgt_file.name} in {predictions_path} has no 'reconstruction' dataset "
                    f"(has {', '.join(hf.keys()) or 'nothing'}); write files with "
                    "fastmri.save_reconstructions"
                )
            recon = hf["reconstruction"][()]
        if np.iscomplexobj(recon):
            raise EvaluationError(
                f"reconstruction {tgt_file.name} is complex; save magnitude images"
            )
        target, recon = crop_for_evaluation(target, recon, tgt_file.name)
        per_volume[tgt_file.name] = volume_metrics(target, recon)
    filters = {"acceleration": acceleration, "acquisition": acquisition}
    if not per_volume:
        raise EvaluationError(
            f"no target in {target_path} matches acceleration={acceleration} "
            f"acquisition={acquisition}; change the filters"
        )
    return EvaluationResult(per_volume=per_volume, challenge=challenge, filters=filters)


def _fmt(x: Optional[float]) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.6g}"


def format_table(result: EvaluationResult, per_volume: bool = False) -> str:
    """Text table: metric, mean, std, number of volumes (and per volume)."""
    lines = [f"{'metric':<6} {'mean':>12} {'std':>12} {'volumes':>8}"]
    for m in METRICS:
        lines.append(
            f"{m:<6} {_fmt(result.mean(m)):>12} {_fmt(result.std(m)):>12} {result.num_volumes:>8}"
        )
    if per_volume:
        width = max(len("volume"), *(len(n) for n in result.per_volume))
        lines.append("")
        lines.append(f"{'volume':<{width}} " + " ".join(f"{m:>12}" for m in METRICS))
        for name, vals in result.per_volume.items():
            lines.append(f"{name:<{width}} " + " ".join(f"{_fmt(vals[m]):>12}" for m in METRICS))
    return "\n".join(lines)


def check_submission(predictions_path, data_path) -> List[str]:
    """Check a test/challenge submission folder for leaderboard format.

    Every input volume needs one file with the same name (or the knee
    leaderboard's ``<stem>_v2.h5``) holding exactly one dataset,
    ``reconstruction``: real floating point, finite, shape
    ``(slices, H, W)`` with the input's slice count and the header's
    reconSpace size (as ``expected_recon_shape``).

    Args:
        predictions_path: The submission folder.
        data_path: The test or challenge split the submission answers.

    Returns:
        Every problem found, one sentence each; empty for a valid submission.

    Raises:
        EvaluationError: a folder is missing or empty, or an input file is
            not a readable fastMRI file.
    """
    try:
        inputs = h5_files(data_path, "data path")
        pred_dir = Path(predictions_path)
        if not pred_dir.is_dir():
            raise ValueError(
                f"predictions path {pred_dir} is not an existing folder; pass the submission folder"
            )
        expected = {f.name: expected_recon_shape(f) for f in inputs}
    except ValueError as err:
        raise EvaluationError(str(err)) from None

    problems: List[str] = []
    present = {p.name for p in pred_dir.iterdir()}
    matched = set()
    for name, shape in expected.items():
        v2 = Path(name).stem + "_v2.h5"
        fname = name if name in present else (v2 if v2 in present else None)
        if fname is None:
            problems.append(f"{name}: missing (no {name} in {pred_dir})")
            continue
        matched.add(fname)
        try:
            with h5py.File(pred_dir / fname, "r") as hf:
                keys = list(hf.keys())
                if "reconstruction" not in keys:
                    problems.append(
                        f"{fname}: no 'reconstruction' dataset (has {', '.join(keys) or 'nothing'})"
                    )
                    continue
                extra = [k for k in keys if k != "reconstruction"]
                if extra:
                    problems.append(
                        f"{fname}: holds more than 'reconstruction' (also {', '.join(extra)})"
                    )
                ds = hf["reconstruction"]
                if not isinstance(ds, h5py.Dataset):
                    problems.append(f"{fname}: 'reconstruction' is a group, not a dataset")
                    continue
                if not np.issubdtype(ds.dtype, np.floating):
                    problems.append(
                        f"{fname}: dtype {ds.dtype} is not real floating point (save float32 magnitudes)"
                    )
                if tuple(ds.shape) != shape:
                    problems.append(
                        f"{fname}: shape {tuple(ds.shape)}, expected {shape} (slices, H, W)"
                    )
                elif np.issubdtype(ds.dtype, np.floating) and not np.all(np.isfinite(ds[()])):
                    problems.append(f"{fname}: holds NaN or infinite values")
        except OSError as err:
            problems.append(f"{fname}: not a readable HDF5 file ({err})")
    for extra in sorted(present - matched):
        problems.append(f"{extra}: not an input volume of {data_path}; remove it")
    return problems


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr, exit code 2."""

    def error(self, message):  # noqa: D102 - argparse hook
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except ``None`` and off switches (their help says the fallback)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False or action.required:
            return action.help or ""
        return super()._get_help_string(action)


def flag(name: str) -> List[str]:
    """Both spellings of a multi-word option, as ``fastmri-growth-train`` takes them.

    Args:
        name: The hyphenated spelling, e.g. ``"--data-path"``.

    Returns:
        ``["--data-path", "--data_path"]`` (one entry for one-word options).
    """
    under = "--" + name[2:].replace("-", "_")
    return [name] if under == name else [name, under]


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
    parser = _Parser(
        prog="fastmri-growth-eval",
        description="fastMRI evaluation: compare folders, check a submission, "
        "or run leaderboard-style validation of a checkpoint. Without a "
        "subcommand, 'compare' is assumed.",
        formatter_class=HelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
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
                   help="Lightning checkpoint of a UnetModule or DynamicUnetModule")
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


def _load_unet(checkpoint: Path):
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
    # .unet maps (N, 1, H, W); UnetModule.forward squeezes the channel axis.
    unet = getattr(module, "unet", None)
    if unet is None:
        raise EvaluationError(
            f"checkpoint {checkpoint} holds {type(module).__name__}, which has no .unet; "
            "pass a U-Net checkpoint"
        )
    return unet


def _check_device(device: str) -> None:
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise EvaluationError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise EvaluationError(f"--device {device}: CUDA is not available here; use --device cpu")


def _run_leaderboard(args) -> int:
    from fastmri_growth.inference import leaderboard_validation

    if len(args.accelerations) != len(args.center_fractions):
        raise EvaluationError(
            f"{len(args.accelerations)} accelerations but {len(args.center_fractions)} centre "
            "fractions; pass one --center-fractions value per acceleration"
        )
    _check_device(args.device)
    unet = _load_unet(args.checkpoint)
    try:
        results = leaderboard_validation(
            unet,
            args.data_path,
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


def format_leaderboard_table(results: Dict[int, dict]) -> str:
    """One row per acceleration: NMSE, PSNR, SSIM means and the volume count."""
    lines = [f"{'accel':<6} {'mask':<12} {'NMSE':>10} {'PSNR':>10} {'SSIM':>10} {'volumes':>8}"]
    for accel, r in results.items():
        m = r["metrics"]
        lines.append(
            f"{str(accel) + 'x':<6} {r['mask_type']:<12} {_fmt(m['NMSE']['mean']):>10} "
            f"{_fmt(m['PSNR']['mean']):>10} {_fmt(m['SSIM']['mean']):>10} {r['num_volumes']:>8}"
        )
    return "\n".join(lines)


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
