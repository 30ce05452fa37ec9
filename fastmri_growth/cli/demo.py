"""End-to-end demo on CPU: synthetic brain MRI -> growing U-Net -> evaluation -> plots.

Run with ``make demo`` or ``python -m fastmri_growth.cli.demo``. Steps:

1. Generate a small synthetic single-coil set of real brain anatomy
   (``--phantom anatomy``: slices of the MNI152 template and other images
   shipped with nilearn, dipy and nibabel; ``pip install
   fastmri-growth[anatomy]``) in fastMRI's single-coil layout
   (``knee/singlecoil_*``, with the ISMRMRD header) under
   ``demo_output/data``, or reuse the one there.
2. Train a dynamic U-Net that starts narrow and grows with ``sample_select``
   (``fastmri-growth-train``) into a fresh ``demo_output/run_<timestamp>``.
3. Test mode: reconstruct the test split from the trained checkpoint
   (leaderboard file format) into ``<run>/reconstructions``.
4. Leaderboard-style validation on the val split at 4x and 8x with fixed
   masks (``<run>/leaderboard/{4x,8x}`` and ``leaderboard.json``).
5. Plots: growth and validation curves, and a reconstruction grid
   (``<run>/plots``).

Nothing outside ``--out`` (default ``demo_output``) is written, and a
previous run is never touched: every invocation makes a new run folder.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence

from fastmri_growth.cli import train
from fastmri_growth.cli.checkpoints import newest_checkpoint

PROG = "python -m fastmri_growth.cli.demo"
CHALLENGE = "singlecoil"
# One definition of the demo data, so reuse can be checked against it.
DATA_SPEC = {
    "challenges": ["knee_singlecoil"],
    "splits": ["train", "val", "test"],
    "num_volumes": {"train": 6, "val": 2, "test": 2},
    "num_slices": 8,
    "recon_size": 128,
    "seed": 0,
    # Real anatomy, so that the grid shows a brain a reader can judge (the
    # ellipse phantoms showed nothing a radiologist sees).
    "phantom": "anatomy",
}
SPEC_FILE = "demo_data_spec.json"


class DemoError(Exception):
    """A demo step failed; ``main`` prints it as one line and exits non-zero."""


def build_parser() -> argparse.ArgumentParser:
    """The demo's few knobs; every other setting is fixed for a quick CPU run."""
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--out", type=Path, default=Path("demo_output"),
                        help="folder for the data and the runs")
    parser.add_argument("--max-epochs", type=int, default=10, help="training epochs")
    parser.add_argument("--chans", type=int, default=8, help="starting width of the U-Net")
    parser.add_argument("--num-pool-layers", type=int, default=3, help="U-Net depth")
    parser.add_argument("--growth-interval", type=int, default=2,
                        help="grow every N epochs (from epoch 1)")
    parser.add_argument("--n-new", type=int, default=2, help="filters added per grown layer")
    parser.add_argument("--num-workers", type=int, default=0, help="data loader workers")
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch CPU threads; the demo's convolutions are tiny, and on a busy 2-core "
        "machine 2 OpenMP threads ran them 5x slower than 1 (0: torch's default)",
    )
    return parser


def ensure_data(data_root: Path) -> Path:
    """The synthetic single-coil root under ``data_root``, generated once and reused.

    Args:
        data_root: Folder for the synthetic set (``<data_root>/knee/...``).

    Returns:
        ``data_root / "knee"``, the ``--data_path`` for training.

    Raises:
        DemoError: ``data_root`` holds data made with other settings.
    """
    knee = data_root / "knee"
    spec_path = data_root / SPEC_FILE
    splits = [knee / f"{CHALLENGE}_{s}" for s in DATA_SPEC["splits"]]
    if spec_path.is_file() and all(any(d.glob("*.h5")) for d in splits if d.is_dir()) and all(
        d.is_dir() for d in splits
    ):
        stored = json.loads(spec_path.read_text())
        if stored == DATA_SPEC:
            print(f"[demo] reusing the synthetic data in {knee}", flush=True)
            return knee
        raise DemoError(
            f"{data_root} holds synthetic data made with other settings ({spec_path}); "
            "remove that folder or pass another --out"
        )
    if data_root.exists() and any(data_root.iterdir()):
        raise DemoError(
            f"{data_root} exists but is not a complete demo data set; remove it or pass "
            "another --out"
        )
    from fastmri_growth.data.synthetic import MissingExtraError, generate_dataset

    phantom = DATA_SPEC.get("phantom", "ellipses")
    print(f"[demo] generating a synthetic single-coil set ({phantom} phantom) in {knee}",
          flush=True)
    start = time.perf_counter()
    try:
        files = generate_dataset(
            data_root,
            challenges=tuple(DATA_SPEC["challenges"]),
            splits=tuple(DATA_SPEC["splits"]),
            num_volumes=dict(DATA_SPEC["num_volumes"]),
            num_slices=DATA_SPEC["num_slices"],
            recon_size=DATA_SPEC["recon_size"],
            seed=DATA_SPEC["seed"],
            phantom=phantom,
        )
    except MissingExtraError as err:
        raise DemoError(f"the demo's data needs the anatomy extra: {err}") from None
    # Written last: its presence marks a complete set.
    spec_path.write_text(json.dumps(DATA_SPEC, indent=2))
    print(f"[demo] wrote {len(files)} files in {time.perf_counter() - start:.1f} s", flush=True)
    return knee


def new_run_dir(out: Path, stamp: Optional[str] = None) -> Path:
    """A run folder that does not exist yet: ``out/run_<stamp>[_<n>]``.

    Args:
        out: The demo output folder.
        stamp: Defaults to the current local time, ``YYYYmmdd-HHMMSS``.
    """
    stamp = time.strftime("%Y%m%d-%H%M%S") if stamp is None else stamp
    run_dir = out / f"run_{stamp}"
    n = 1
    while run_dir.exists():
        run_dir = out / f"run_{stamp}_{n}"
        n += 1
    return run_dir


def train_argv(opts: argparse.Namespace, knee: Path, run_dir: Path) -> List[str]:
    """The ``fastmri-growth-train`` arguments of the demo run."""
    return [
        "--model-type", "dynamic_unet",
        "--data_path", str(knee),
        "--challenge", CHALLENGE,
        "--default_root_dir", str(run_dir),
        "--mask_type", "random",
        "--center_fractions", "0.08",
        "--accelerations", "4",
        "--chans", str(opts.chans),
        "--num_pool_layers", str(opts.num_pool_layers),
        "--growth-method", "sample_select",
        "--growth-interval", str(opts.growth_interval),
        "--n-new", str(opts.n_new),
        "--max_epochs", str(opts.max_epochs),
        "--accelerator", "cpu",
        "--devices", "1",
        "--num_workers", str(opts.num_workers),
        "--batch_size", "1",
        # The dataset cache would be written to the working directory.
        "--use_dataset_cache_file", "false",
        "--log_every_n_steps", "5",
        "--seed", "42",
    ]


def _step(title: str) -> float:
    print(f"\n[demo] === {title} ===", flush=True)
    return time.perf_counter()


def _call_train(argv: Sequence[str]) -> None:
    code = train.main(list(argv))
    if code != 0:
        raise DemoError(f"fastmri-growth-train {' '.join(argv)} exited with {code}")


def run_demo(opts: argparse.Namespace) -> dict:
    """All demo steps; returns the summary (also written to ``<run>/summary.json``)."""
    timings = {}
    out = opts.out
    out.mkdir(parents=True, exist_ok=True)

    t = _step("1/5 data")
    knee = ensure_data(out / "data")
    timings["data_s"] = time.perf_counter() - t

    run_dir = new_run_dir(out)
    argv = train_argv(opts, knee, run_dir)
    t = _step(f"2/5 training a growing U-Net into {run_dir}")
    print("[demo] fastmri-growth-train " + " ".join(argv), flush=True)
    _call_train(argv)
    timings["train_s"] = time.perf_counter() - t

    ckpt = newest_checkpoint(run_dir / "checkpoints")
    if ckpt is None:
        raise DemoError(f"training wrote no checkpoint in {run_dir / 'checkpoints'}")

    t = _step("3/5 test mode: reconstructions of the test split")
    test_argv = argv + ["--mode", "test", "--ckpt_path", str(ckpt)]
    _call_train(test_argv)
    timings["test_s"] = time.perf_counter() - t

    t = _step("4/5 leaderboard-style validation (val split, fixed masks, 4x and 8x)")
    from fastmri_growth.evaluation.inference import leaderboard_validation
    from fastmri_growth.evaluation.metrics import format_leaderboard_table
    from fastmri_growth.pl_modules import load_module

    module = load_module(ckpt)
    module.eval()
    val_dir = knee / f"{CHALLENGE}_val"
    leaderboard_dir = run_dir / "leaderboard"
    results = leaderboard_validation(
        module.unet, val_dir, CHALLENGE, leaderboard_dir,
        accelerations=(4, 8), center_fractions=(0.08, 0.04), mask_type="random",
        num_workers=0, progress=False,
    )
    table = format_leaderboard_table(results)
    print(table, flush=True)
    leaderboard_json = run_dir / "leaderboard.json"
    leaderboard_json.write_text(json.dumps(
        {"checkpoint": str(ckpt), "results": {f"{a}x": r for a, r in results.items()}}, indent=2
    ))
    timings["leaderboard_s"] = time.perf_counter() - t

    t = _step("5/5 plots")
    from fastmri_growth.evaluation.plot import plot_curves, plot_grid

    plots_dir = run_dir / "plots"
    curves = plot_curves(run_dir, plots_dir / "curves.png")
    grid = plot_grid(
        leaderboard_dir / "4x", val_dir, CHALLENGE, plots_dir / "grid_val_4x.png",
        mask_type="random", acceleration=4, center_fraction=0.08, num_slices=4,
    )
    timings["plots_s"] = time.perf_counter() - t

    unet = module.unet
    summary = {
        "run_dir": str(run_dir),
        "data": str(knee),
        "checkpoint": str(ckpt),
        "checkpoints": str(run_dir / "checkpoints"),
        "tensorboard": str(run_dir / "lightning_logs"),
        "metrics_csv": str(curves.csv_path),
        "test_reconstructions": str(run_dir / "reconstructions"),
        "leaderboard": str(leaderboard_json),
        "plots": [str(curves.out), str(grid)],
        "growth_epochs": curves.growth_epochs,
        "start_chans": opts.chans,
        "final_params": int(sum(p.numel() for p in unet.parameters())),
        "final_widths": unet.get_network_size(),
        "leaderboard_ssim": {f"{a}x": r["metrics"]["SSIM"]["mean"] for a, r in results.items()},
        "leaderboard_psnr": {f"{a}x": r["metrics"]["PSNR"]["mean"] for a, r in results.items()},
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def print_summary(summary: dict) -> None:
    """The human-readable end of the demo: what happened and where it is."""
    n_recon = len(list(Path(summary["test_reconstructions"]).glob("*.h5")))
    lines = [
        "",
        "[demo] ================= summary =================",
        f"run folder:            {summary['run_dir']}",
        f"synthetic data:        {summary['data']}",
        f"trained checkpoint:    {summary['checkpoint']}",
        f"growth events (epoch): {summary['growth_epochs'] or 'none'}",
        f"network:               chans {summary['start_chans']} at the start, "
        f"{summary['final_params']:,} parameters at the end",
        "leaderboard (val):     "
        + ", ".join(
            f"{k} SSIM {summary['leaderboard_ssim'][k]:.4f} "
            f"PSNR {summary['leaderboard_psnr'][k]:.2f}"
            for k in summary["leaderboard_ssim"]
        ),
        f"test reconstructions:  {summary['test_reconstructions']} ({n_recon} files)",
        f"leaderboard results:   {summary['leaderboard']}",
        f"metrics (CSV):         {summary['metrics_csv']}",
        f"TensorBoard:           tensorboard --logdir {summary['tensorboard']}",
        "plots:                 " + ", ".join(summary["plots"]),
        "timings (s):           "
        + ", ".join(f"{k[:-2]} {v}" for k, v in summary["timings_s"].items()),
    ]
    print("\n".join(lines), flush=True)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``python -m fastmri_growth.cli.demo`` (``make demo``)."""
    opts = build_parser().parse_args(argv)
    if opts.threads > 0:
        import torch

        torch.set_num_threads(opts.threads)
    start = time.perf_counter()
    try:
        summary = run_demo(opts)
    except DemoError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 1
    print_summary(summary)
    print(f"[demo] done in {time.perf_counter() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
