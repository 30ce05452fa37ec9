"""fastMRI's evaluation: per-volume NMSE, PSNR and SSIM of reconstruction folders.

Per volume: NMSE, PSNR and SSIM (and MSE) of the reconstruction against the
target, both centre-cropped to the target width, with data range the
cropped target volume's max; then the mean and the sample standard
deviation over volumes. The numbers come from ``fastmri.evaluate``'s own
metric functions; unlike that script, printing does not crash. Also the
format check of test/challenge submissions (:func:`check_submission`).
The command line is :mod:`fastmri_growth.cli.evaluate`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import h5py
import numpy as np

from fastmri_growth.data.fastmri_format import (
    ACQUISITIONS,
    check_challenge,
    expected_recon_shape,
    h5_files,
    other_challenge,
    target_key,
)

METRICS = ("NMSE", "PSNR", "SSIM", "MSE")


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
    key = target_key(challenge)
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
                other = other_challenge(challenge)
                hint = (
                    f"these look like {other} files; pass --challenge {other}"
                    if target_key(other) in hf
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
        if not np.all(np.isfinite(recon)):
            bad = int(np.size(recon) - np.count_nonzero(np.isfinite(recon)))
            raise EvaluationError(
                f"reconstruction {Path(predictions_path) / tgt_file.name} holds {bad} NaN or "
                "infinite value(s); its metrics would be meaningless: re-run the reconstruction "
                "(a diverged network writes NaN)"
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
