"""Plots of a growing-U-Net run and of its reconstructions (PNG, no display).

``fastmri-growth-plot curves``: network size and validation metrics against
epoch, from the Lightning CSVLogger ``metrics.csv`` of a run, with the
epochs where the network grew marked::

    fastmri-growth-plot curves --log-dir RUN_DIR --out curves.png

``fastmri-growth-plot grid``: a few slices side by side, columns input
(zero-filled under the same fixed mask as the reconstructions), reconstruction,
target and absolute error, titled with per-slice SSIM/PSNR::

    fastmri-growth-plot grid --reconstructions RECON_DIR \\
        --data-path knee/singlecoil_val --challenge singlecoil --out grid.png \\
        [--mask-type random --acceleration 4 --center-fraction 0.08] [--num-slices 4]

Both write the PNG and print its path. Bad input: one line on stderr, exit 2.
The command line is :mod:`fastmri_growth.cli.plot`.
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

SIZE_COLUMNS = ("network/params", "network/filters")
METRIC_COLUMNS = ("val_metrics/ssim", "val_metrics/psnr")


class PlotError(ValueError):
    """Bad plotting input: the message names the problem and the fix."""


def _pyplot():
    import matplotlib

    # Agg renders to files only, so plotting works without a display.
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# ---------------------------------------------------------------- curves


def find_metrics_csvs(log_dir_or_csv) -> List[Path]:
    """Locate the CSVLogger files of a run, oldest first.

    A resumed run writes a new ``csv_logs/version_N`` per invocation, each
    holding only the epochs it trained; together they are the run.

    Args:
        log_dir_or_csv: A ``metrics.csv`` file, or a run folder: every
            ``csv_logs/version_N/metrics.csv`` below it, by ``N`` (or, when
            there is no ``csv_logs`` folder, the newest ``metrics.csv`` below it).

    Returns:
        The ``metrics.csv`` paths in version order.

    Raises:
        PlotError: the path does not exist or holds no ``metrics.csv``.
    """
    path = Path(log_dir_or_csv)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise PlotError(f"log dir {path} does not exist; pass a run folder or a metrics.csv")

    def version(p: Path) -> int:
        m = re.fullmatch(r"version_(\d+)", p.parent.name)
        return int(m.group(1)) if m else -1

    found = [p for p in path.glob("**/csv_logs/version_*/metrics.csv") if p.is_file()]
    if found:
        return sorted(found, key=lambda p: (version(p), p.stat().st_mtime))
    found = [p for p in path.glob("**/metrics.csv") if p.is_file()]
    if found:
        return [max(found, key=lambda p: p.stat().st_mtime)]
    raise PlotError(
        f"no metrics.csv under {path}; pass the run's --default_root_dir "
        "(it holds csv_logs/version_N/metrics.csv) or the csv file itself"
    )


def find_metrics_csv(log_dir_or_csv) -> Path:
    """The newest CSVLogger file of a run (the last of :func:`find_metrics_csvs`)."""
    return find_metrics_csvs(log_dir_or_csv)[-1]


def read_run_metrics(csv_paths: Sequence) -> Dict[str, Dict[int, float]]:
    """Per-epoch values of a run logged over several CSVLogger versions.

    Args:
        csv_paths: ``metrics.csv`` files, oldest first.

    Returns:
        ``{column: {epoch: value}}``; an epoch logged by a later file
        replaces that epoch of earlier files in every column (a resumed run
        re-trains the epoch after its checkpoint).

    Raises:
        PlotError: no file holds a row (the last file's problem).
    """
    merged: Dict[str, Dict[int, float]] = {}
    error: Optional[PlotError] = None
    for csv_path in csv_paths:
        try:
            data = read_epoch_metrics(csv_path)
        except PlotError as err:
            # A version that logged nothing (a run stopped at once) adds nothing.
            error = err
            continue
        redone = {e for values in data.values() for e in values}
        for values in merged.values():
            for e in redone & set(values):
                del values[e]
        for col, values in data.items():
            merged.setdefault(col, {}).update(values)
    if not merged and error is not None:
        raise error
    return merged


def read_epoch_metrics(csv_path) -> Dict[str, Dict[int, float]]:
    """Per-epoch values of every column of a CSVLogger file.

    Lightning writes one row per logging call with the other columns empty;
    the last non-empty value of a column within an epoch is kept.

    Returns:
        ``{column: {epoch: value}}`` for every column except ``epoch``.

    Raises:
        PlotError: the file has no ``epoch`` column or no rows.
    """
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "epoch" not in reader.fieldnames:
            raise PlotError(
                f"{csv_path} has no 'epoch' column; pass a Lightning CSVLogger metrics.csv"
            )
        columns: Dict[str, Dict[int, float]] = {
            c: {} for c in reader.fieldnames if c != "epoch"
        }
        rows = 0
        for row in reader:
            rows += 1
            try:
                epoch = int(float(row["epoch"]))
            except (TypeError, ValueError):
                continue
            for col in columns:
                value = row.get(col)
                if value in (None, ""):
                    continue
                try:
                    columns[col][epoch] = float(value)
                except ValueError:
                    continue
    if rows == 0:
        raise PlotError(f"{csv_path} has no rows; train at least one epoch first")
    return columns


def growth_epochs(size: Dict[int, float], sign: int = 0) -> List[int]:
    """Epochs whose network size differs from the previous logged epoch.

    Args:
        size: ``{epoch: size}``.
        sign: 0: any change; 1: growth only; -1: shrinkage only.
    """
    epochs = sorted(size)
    return [e for prev, e in zip(epochs, epochs[1:]) if size[e] != size[prev]
            and (sign == 0 or (size[e] - size[prev]) * sign > 0)]


def event_epochs(data: Dict[str, Dict[int, float]], size_col: Optional[str]):
    """Growth and pruning epochs of a run: ``(growth, pruning)``.

    Read from the events the growth callback logs (``growth/filters_added``,
    ``prune/filters_removed``); a log without them (older runs) falls back
    on the size: growth where it rose, pruning where it fell. An exchange
    event (as many filters removed as added) is in both lists.
    """
    added, removed = data.get("growth/filters_added"), data.get("prune/filters_removed")
    if added or removed:
        return (sorted(e for e, v in (added or {}).items() if v > 0),
                sorted(e for e, v in (removed or {}).items() if v > 0))
    if size_col is None:
        return [], []
    return growth_epochs(data[size_col], 1), growth_epochs(data[size_col], -1)


@dataclass
class CurvesResult:
    """What ``plot_curves`` drew.

    Attributes:
        out: The PNG written.
        csv_path: The newest ``metrics.csv`` read.
        plotted: Columns found.
        missing: Columns wanted but absent.
        growth_epochs: Epochs with a growth event.
        csv_paths: Every ``metrics.csv`` read, oldest first.
        prune_epochs: Epochs with a pruning event.
    """

    out: Path
    csv_path: Path
    plotted: List[str]
    missing: List[str]
    growth_epochs: List[int]
    csv_paths: List[Path]
    prune_epochs: List[int] = field(default_factory=list)


def plot_curves(log_dir_or_csv, out) -> CurvesResult:
    """Draw network size and validation SSIM/PSNR against epoch.

    Top panel: ``network/params`` (left axis) and ``network/filters``
    (right axis); bottom panel: ``val_metrics/ssim`` (left) and
    ``val_metrics/psnr`` (right). Dashed green lines mark growth events,
    dotted red ones pruning events (see :func:`event_epochs`). Missing
    columns are skipped and reported.

    Args:
        log_dir_or_csv: A run folder (all its ``csv_logs`` versions, see
            ``find_metrics_csvs``) or a ``metrics.csv``.
        out: The PNG to write.

    Returns:
        A ``CurvesResult``.

    Raises:
        PlotError: no csv, or none of the four columns has a value.
    """
    csv_paths = find_metrics_csvs(log_dir_or_csv)
    csv_path = csv_paths[-1]
    data = read_run_metrics(csv_paths)
    wanted = SIZE_COLUMNS + METRIC_COLUMNS
    present = [c for c in wanted if data.get(c)]
    missing = [c for c in wanted if c not in present]
    if not present:
        raise PlotError(
            f"{csv_path} has none of {', '.join(wanted)}; log them during training "
            "(DynamicUnetModule logs network/*, validation logs val_metrics/*)"
        )
    size_col = next((c for c in SIZE_COLUMNS if c in present), None)
    events, prunes = event_epochs(data, size_col)

    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    panels = [cols for cols in (SIZE_COLUMNS, METRIC_COLUMNS) if any(c in present for c in cols)]
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 3.2 * len(panels)), sharex=True, squeeze=False)
    colors = ("tab:blue", "tab:orange")
    for ax, cols in zip(axes[:, 0], panels):
        left = ax
        for i, col in enumerate(cols):
            if col not in present:
                continue
            target_ax = left if i == 0 or cols[0] not in present else left.twinx()
            epochs = sorted(data[col])
            target_ax.plot(
                epochs, [data[col][e] for e in epochs], marker="o", ms=3, color=colors[i], label=col
            )
            target_ax.set_ylabel(col, color=colors[i])
            target_ax.tick_params(axis="y", colors=colors[i])
        for e in events:
            left.axvline(e, color="tab:green", ls="--", lw=0.9)
        for e in prunes:
            left.axvline(e, color="tab:red", ls=":", lw=1.2)
        left.xaxis.set_major_locator(MaxNLocator(integer=True))
        left.grid(alpha=0.3)
    versions = csv_path.parent.name if len(csv_paths) == 1 else (
        f"{csv_paths[0].parent.name}..{csv_path.parent.name}")
    title = f"{versions}: {len(events)} growth event(s)" + (
        f" at epochs {', '.join(map(str, events))}" if events else "")
    if prunes:
        title += f"; {len(prunes)} pruning event(s) at epochs {', '.join(map(str, prunes))}"
    axes[0, 0].set_title(title, fontsize=10)
    axes[-1, 0].set_xlabel("epoch")
    if missing:
        fig.text(0.01, 0.005, "missing: " + ", ".join(missing), fontsize=7, color="gray")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return CurvesResult(out, csv_path, present, missing, events, csv_paths, prunes)


# ------------------------------------------------------------------ grid


def _pick_slices(num_slices_per_volume: Sequence[int], total: int) -> List[Tuple[int, int]]:
    """Spread ``total`` rows over volumes, taking slices near each volume's middle."""
    nv = min(total, len(num_slices_per_volume))
    picks: List[Tuple[int, int]] = []
    for v in range(nv):
        k = total // nv + (1 if v < total % nv else 0)
        n = num_slices_per_volume[v]
        # With k < n the spacing n / (k + 1) is at least 1, so no two picks round together.
        idx = list(range(n)) if k >= n else [round((j + 1) * n / (k + 1)) for j in range(k)]
        picks.extend((v, s) for s in idx)
    return picks


#: The grid's colour bar label: the error column's unit.
ERROR_LABEL = "|reconstruction - target|, % of the volume's max"
# Width of the grid's colour-bar column, relative to an image column.
_COLORBAR_WIDTH = 0.08


@dataclass
class GridRow:
    """One slice of the grid; images are ``(H, W)`` float32 on the target's scale.

    Attributes:
        name: File name of the volume.
        slice_num: Slice index.
        input: Zero-filled magnitude under the fixed mask, un-normalised.
        reconstruction: The reconstruction, centre-cropped to the input size.
        target: The target slice, or None for files without target.
        vmax: Display maximum: the cropped target volume's max (or of
            input/reconstruction without target).
    """

    name: str
    slice_num: int
    input: np.ndarray
    reconstruction: np.ndarray
    target: Optional[np.ndarray]
    vmax: float


def grid_rows(
    reconstructions,
    data_path,
    challenge: str,
    mask_type: Optional[str] = None,
    acceleration: int = 4,
    center_fraction: Optional[float] = None,
    num_slices: int = 4,
) -> Tuple[List[GridRow], str]:
    """Collect the slices that ``plot_grid`` draws.

    The input is recomputed with ``UnetDataTransform(use_seed=True)`` and the
    same fixed mask as ``fastmri_growth.evaluation.inference.reconstruct`` (files that
    carry their own ``mask`` are used as they are), then un-normalised
    (``image * std + mean``). Rows are spread over the first volumes that
    have a reconstruction, with slices taken around each volume's middle.

    Args:
        reconstructions: Folder of reconstruction files.
        data_path: The split they were made from.
        challenge: ``"singlecoil"`` or ``"multicoil"``.
        mask_type: fastMRI mask type; ``None`` picks the leaderboard's.
        acceleration: Under-sampling factor of the fixed mask.
        center_fraction: Centre fraction; ``None`` for the leaderboard
            default of the acceleration.
        num_slices: Number of rows wanted.

    Returns:
        ``(rows, mask_label)``.

    Raises:
        PlotError: unusable folders, no matching volume, bad mask settings.
    """
    import h5py
    from fastmri.data import SliceDataset
    from fastmri.data.transforms import UnetDataTransform, center_crop

    from fastmri_growth.data.fastmri_format import (
        check_challenge,
        check_split_dir,
        h5_files,
        leaderboard_mask_type,
        target_key,
    )
    from fastmri_growth.evaluation.inference import fixed_mask_func

    if num_slices < 1:
        raise PlotError(f"--num-slices must be at least 1, got {num_slices}")
    try:
        check_challenge(challenge)
        data_files = check_split_dir(data_path, what="data path")
        recon_files = h5_files(reconstructions, "reconstructions folder")
    except ValueError as err:
        raise PlotError(str(err)) from None
    data_names = {f.name for f in data_files}
    common = [f.name for f in recon_files if f.name in data_names]
    if not common:
        raise PlotError(
            f"no reconstruction in {reconstructions} is named like a file of {data_path}; "
            "pass the split the reconstructions were made from"
        )
    with h5py.File(Path(data_path) / common[0], "r") as hf:
        own_mask = "mask" in hf
    if own_mask:
        mask_func = None
        mask_label = "file mask"
    else:
        mask_type = mask_type or leaderboard_mask_type(data_files)
        try:
            mask_func = fixed_mask_func(mask_type, acceleration, center_fraction)
        except ValueError as err:
            raise PlotError(str(err)) from None
        mask_label = f"{mask_type} {acceleration}x"

    dataset = SliceDataset(
        data_path, challenge, transform=UnetDataTransform(challenge, mask_func=mask_func, use_seed=True)
    )
    index = {(fname.name, s): i for i, (fname, s, _) in enumerate(dataset.raw_samples)}
    key = target_key(challenge)

    slice_counts = []
    for name in common:
        with h5py.File(Path(reconstructions) / name, "r") as hf:
            if "reconstruction" not in hf:
                raise PlotError(f"{name} in {reconstructions} has no 'reconstruction' dataset")
            slice_counts.append(hf["reconstruction"].shape[0])
    rows: List[GridRow] = []
    for v, s in _pick_slices(slice_counts, num_slices):
        name = common[v]
        if (name, s) not in index:
            raise PlotError(f"{name} has no slice {s} in {data_path}; the reconstruction has more slices")
        sample = dataset[index[(name, s)]]
        image = (sample.image * sample.std + sample.mean).numpy().astype(np.float32)
        crop = image.shape[-2:]
        with h5py.File(Path(reconstructions) / name, "r") as hf:
            recon_vol = hf["reconstruction"]
            if recon_vol.ndim != 3 or recon_vol.shape[-2] < crop[0] or recon_vol.shape[-1] < crop[1]:
                raise PlotError(
                    f"{name}: reconstruction has shape {recon_vol.shape}, smaller than the "
                    f"{crop[0]}x{crop[1]} input crop"
                )
            recon = center_crop(np.asarray(recon_vol[s], dtype=np.float32), crop)
        with h5py.File(Path(data_path) / name, "r") as hf:
            target_vol = hf[key][()] if key in hf else None
        if target_vol is not None:
            target = center_crop(target_vol[s].astype(np.float32), crop)
            vmax = float(center_crop(target_vol, crop).max())
        else:
            target = None
            vmax = float(max(recon.max(), image.max()))
        rows.append(GridRow(name, s, image, recon, target, vmax))
    return rows, mask_label


def plot_grid(
    reconstructions,
    data_path,
    challenge: str,
    out,
    mask_type: Optional[str] = None,
    acceleration: int = 4,
    center_fraction: Optional[float] = None,
    num_slices: int = 4,
) -> Path:
    """Draw input, reconstruction, target and |error| for a few slices.

    One row per slice (see ``grid_rows``). All images of a row share the
    display range ``[0, vmax]``. The error column shows
    ``|reconstruction - target|`` in percent of the row's ``vmax``, on one
    range for every row, read off a labelled colour bar in a column of its
    own, so that every image panel has the same size. The input and
    reconstruction titles give the slice's SSIM and PSNR against the target
    (data range ``vmax``, as in evaluation). Without targets (test files)
    only the input and reconstruction columns are drawn.

    Args:
        reconstructions: Folder of reconstruction files.
        data_path: The split they were made from.
        challenge: ``"singlecoil"`` or ``"multicoil"``.
        out: The PNG to write; 280 pixels wide per column, 290 high per row.
        mask_type: See ``grid_rows``.
        acceleration: See ``grid_rows``.
        center_fraction: See ``grid_rows``.
        num_slices: See ``grid_rows``.

    Returns:
        The PNG path.
    """
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    rows, mask_label = grid_rows(
        reconstructions, data_path, challenge, mask_type, acceleration, center_fraction, num_slices
    )
    has_target = all(r.target is not None for r in rows)
    ncol = 4 if has_target else 2
    err_scale = 1.0
    if has_target:
        err_scale = max(
            float(np.abs(r.reconstruction - r.target).max()) / r.vmax if r.vmax > 0 else 0.0
            for r in rows
        )
        err_scale = err_scale or 1.0

    plt = _pyplot()
    fig = plt.figure(figsize=(2.8 * ncol, 2.9 * len(rows)))
    # The colour bar gets a narrow column of its own instead of taking its
    # width from the error panels.
    widths = [1.0] * ncol + ([_COLORBAR_WIDTH] if has_target else [])
    grid = fig.add_gridspec(len(rows), len(widths), width_ratios=widths)
    error_image = None
    for i, row in enumerate(rows):
        panels = [("input", row.input), ("reconstruction", row.reconstruction)]
        if has_target:
            panels += [("target", row.target), ("|error|", np.abs(row.reconstruction - row.target))]
        for c, (label, img) in enumerate(panels):
            ax = fig.add_subplot(grid[i, c])
            if label == "|error|":
                scale = 100.0 / row.vmax if row.vmax > 0 else 0.0
                error_image = ax.imshow(img * scale, cmap="magma", vmin=0, vmax=100.0 * err_scale)
            else:
                ax.imshow(img, cmap="gray", vmin=0, vmax=row.vmax)
            title = label
            if label in ("input", "reconstruction") and has_target and row.vmax > 0:
                ssim = structural_similarity(row.target, img, data_range=row.vmax)
                psnr = peak_signal_noise_ratio(row.target, img, data_range=row.vmax)
                title += f"\nSSIM {ssim:.3f} PSNR {psnr:.1f}"
            if label == "input":
                title = title.replace("input", f"input ({mask_label})", 1)
                # Real file names are long: a y-label keeps them out of the titles.
                ax.set_ylabel(f"{Path(row.name).stem}\nslice {row.slice_num}", fontsize=7)
            ax.set_title(title, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    if error_image is not None:
        cax = fig.add_subplot(grid[:, ncol])
        bar = fig.colorbar(error_image, cax=cax)
        bar.set_label(ERROR_LABEL, fontsize=8)
        bar.ax.tick_params(labelsize=7)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
