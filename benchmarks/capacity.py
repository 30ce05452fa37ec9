"""Data regime: does a wider U-Net fit the synthetic phantoms better?

Growth can only pay off where the starting network is too small for the
data. This benchmark trains fastMRI's own ``Unet`` (3 pools) at two widths on
a synthetic single-coil set read through fastMRI's unpatched
``SliceDataset`` + ``UnetDataTransform`` with ``RandomMaskFunc([0.08], [4])``,
with fastMRI's recipe (RMSprop lr 1e-3, L1 loss) at batch 4 for a fixed
number of steps, and reports per width the training-set and validation-set
L1 (normalised images, as the loss) and the validation PSNR (fastMRI's
``evaluate.psnr`` per volume on un-normalised images, data range the
volume's max, averaged over volumes). Training L1 close to validation L1
with the wider network clearly lower on both means the narrow one
underfits: the regime in which growing a network has something to do.

Usage::

    python -m benchmarks.capacity                      # textured, chans 4 vs 8, seeds 0 1 2
    python -m benchmarks.capacity --phantom ellipses --seeds 0
    python -m benchmarks.capacity --quick              # a tiny run that checks the plumbing

The result goes to ``bench_output/capacity_<phantom>.json`` with the
command, the machine and the date, and a markdown table is printed. Not part
of ``make bench`` or the test suite; ``benchmarks/README.md`` quotes a run.
"""
from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from . import common

FULL = {
    "recon_size": 96, "train_volumes": 40, "val_volumes": 20, "num_slices": 8,
    "steps": 1500, "batch_size": 4, "lr": 1e-3, "num_pool_layers": 3,
}
QUICK = {**FULL, "recon_size": 32, "train_volumes": 2, "val_volumes": 1, "num_slices": 2,
         "steps": 3}


def make_data(root: Path, phantom: str, cfg: dict, data_seed: int = 0) -> Path:
    """A single-coil knee-layout set of ``phantom``: train and val splits.

    Returns:
        ``root/knee`` (holding ``singlecoil_train`` and ``singlecoil_val``).
    """
    from fastmri_growth.data.synthetic import generate_dataset

    generate_dataset(
        root, challenges=("knee_singlecoil",), splits=("train", "val"),
        num_volumes={"train": cfg["train_volumes"], "val": cfg["val_volumes"]},
        num_slices=cfg["num_slices"], recon_size=cfg["recon_size"], seed=data_seed,
        overwrite=True, phantom=phantom,
    )
    return root / "knee"


def _dataset(folder: Path, mask_seed: Optional[int], fixed: bool):
    from fastmri.data import SliceDataset
    from fastmri.data.subsample import RandomMaskFunc
    from fastmri.data.transforms import UnetDataTransform

    mask = RandomMaskFunc([0.08], [4], seed=mask_seed)
    # fixed: one mask per file (use_seed), as fastMRI validates; else a new
    # mask per sample from the seeded mask function, as fastMRI trains.
    return SliceDataset(folder, "singlecoil",
                        transform=UnetDataTransform("singlecoil", mask_func=mask, use_seed=fixed))


def evaluate(model, folder: Path) -> Dict[str, float]:
    """L1 on normalised images, and per-volume PSNR on un-normalised ones.

    Args:
        model: A ``fastmri.models.Unet``.
        folder: A split folder with targets.

    Returns:
        ``{"l1": mean over slices, "psnr": mean over volumes}``.
    """
    from fastmri.evaluate import psnr

    data = _dataset(folder, None, fixed=True)
    loader = torch.utils.data.DataLoader(data, batch_size=8, shuffle=False)
    l1, count = 0.0, 0
    volumes: Dict[str, Dict[int, tuple]] = {}
    model.eval()
    with torch.no_grad():
        for batch in loader:
            out = model(batch.image.unsqueeze(1)).squeeze(1)
            l1 += torch.nn.functional.l1_loss(out, batch.target, reduction="sum").item() / (
                out.shape[-1] * out.shape[-2])
            count += out.shape[0]
            std, mean = batch.std[:, None, None], batch.mean[:, None, None]
            for i, (name, s) in enumerate(zip(batch.fname, batch.slice_num.tolist())):
                volumes.setdefault(name, {})[s] = (
                    (out[i] * std[i] + mean[i]).numpy(), (batch.target[i] * std[i] + mean[i]).numpy())
    model.train()
    psnrs = []
    for slices in volumes.values():
        pred = np.stack([slices[s][0] for s in sorted(slices)])
        gt = np.stack([slices[s][1] for s in sorted(slices)])
        psnrs.append(float(psnr(gt, pred, maxval=gt.max())))
    return {"l1": l1 / count, "psnr": float(np.mean(psnrs))}


def zero_filled_l1(folder: Path) -> float:
    """L1 between the network's input (zero-filled, fixed masks) and the target.

    How hard a split is before any learning: a val split that is harder than
    the training split by this measure makes val L1 above train L1 without
    any overfitting.
    """
    data = _dataset(folder, None, fixed=True)
    return float(np.mean([float((s.image - s.target).abs().mean()) for s in data]))


def train_one(knee: Path, chans: int, seed: int, cfg: dict) -> dict:
    """Train fastMRI's Unet at one width and seed; evaluate on train and val."""
    from fastmri.models import Unet

    torch.manual_seed(seed)
    model = Unet(1, 1, chans=chans, num_pool_layers=cfg["num_pool_layers"], drop_prob=0.0)
    optimizer = torch.optim.RMSprop(model.parameters(), lr=cfg["lr"])
    data = _dataset(knee / "singlecoil_train", mask_seed=seed, fixed=False)
    gen = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(data, batch_size=cfg["batch_size"], shuffle=True,
                                         generator=gen, drop_last=True)
    steps, losses = 0, []
    start = time.perf_counter()
    while steps < cfg["steps"]:
        for batch in loader:
            loss = torch.nn.functional.l1_loss(model(batch.image.unsqueeze(1)).squeeze(1),
                                               batch.target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            steps += 1
            if steps == cfg["steps"]:
                break
    train_s = time.perf_counter() - start
    train = evaluate(model, knee / "singlecoil_train")
    val = evaluate(model, knee / "singlecoil_val")
    return {
        "chans": chans, "seed": seed, "params": sum(p.numel() for p in model.parameters()),
        "train_l1": train["l1"], "train_psnr": train["psnr"],
        "val_l1": val["l1"], "val_psnr": val["psnr"],
        "last100_loss": float(np.mean(losses[-100:])), "train_s": train_s,
    }


def run(workdir: Path, phantom: str = "textured", chans: Sequence[int] = (4, 8),
        seeds: Sequence[int] = (0, 1, 2), quick: bool = False) -> dict:
    """Every (seed, width) run, narrow and wide alternated per seed."""
    cfg = dict(QUICK if quick else FULL)
    start = time.perf_counter()
    knee = make_data(workdir / f"capacity_{phantom}", phantom, cfg)
    data_s = time.perf_counter() - start
    zero_filled = {split: zero_filled_l1(knee / f"singlecoil_{split}") for split in ("train", "val")}
    runs: List[dict] = []
    for seed in seeds:
        for c in chans:
            runs.append(train_one(knee, c, seed, cfg))
            r = runs[-1]
            print(f"[capacity] {phantom} chans {c} seed {seed}: train L1 {r['train_l1']:.4f} "
                  f"val L1 {r['val_l1']:.4f} val PSNR {r['val_psnr']:.2f} "
                  f"({r['train_s']:.0f} s)", flush=True)
    return {"phantom": phantom, "config": cfg, "chans": list(chans), "seeds": list(seeds),
            "runs": runs, "zero_filled_l1": zero_filled, "data_s": data_s,
            "total_s": time.perf_counter() - start}


def table(res: dict) -> str:
    """Markdown: per width the mean (min-max over seeds), then paired differences."""
    chans = res["chans"]
    by = {c: [r for r in res["runs"] if r["chans"] == c] for c in chans}

    def cell(c, key, fmt):
        xs = [r[key] for r in by[c]]
        spread = f" ({min(xs):{fmt}}-{max(xs):{fmt}})" if len(xs) > 1 else ""
        return f"{statistics.mean(xs):{fmt}}{spread}"

    lines = ["| chans | parameters | train L1 | val L1 | val PSNR (dB) | train s |",
             "|---|---|---|---|---|---|"]
    for c in chans:
        lines.append(f"| {c} | {by[c][0]['params']:,} | {cell(c, 'train_l1', '.4f')} | "
                     f"{cell(c, 'val_l1', '.4f')} | {cell(c, 'val_psnr', '.2f')} | "
                     f"{cell(c, 'train_s', '.0f')} |")
    if len(chans) == 2:
        lo, hi = chans
        pairs = [(a, b) for a in by[lo] for b in by[hi] if a["seed"] == b["seed"]]
        dpsnr = [b["val_psnr"] - a["val_psnr"] for a, b in pairs]
        dl1 = [a["train_l1"] / b["train_l1"] - 1 for a, b in pairs]
        gap = [a["val_l1"] / a["train_l1"] - 1 for a, _ in pairs]
        lines += [
            "",
            f"Per seed, chans {hi} minus chans {lo}: val PSNR "
            + ", ".join(f"{d:+.2f}" for d in dpsnr) + f" dB; chans {lo}'s training L1 is "
            + ", ".join(f"{d:+.1%}" for d in dl1) + f" higher; chans {lo}'s val L1 / train L1 - 1: "
            + ", ".join(f"{g:+.1%}" for g in gap) + ".",
        ]
    zf = res.get("zero_filled_l1")
    if zf:
        lines += ["", f"Zero-filled input (no network) L1: train {zf['train']:.4f}, val "
                      f"{zf['val']:.4f} (val {zf['val'] / zf['train'] - 1:+.1%})."]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.capacity",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--phantom", default="textured",
                        choices=("ellipses", "textured", "anatomy"))
    parser.add_argument("--chans", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 3 steps")
    parser.add_argument("--out", type=Path, default=Path("bench_output"))
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args(argv)
    common.set_threads(args.threads)
    info = common.machine()
    res = run(args.out / ("work_quick" if args.quick else "work"), args.phantom,
              args.chans, args.seeds, args.quick)
    res["command"] = "python -m benchmarks.capacity " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    res["machine"] = info
    name = f"capacity_{args.phantom}" + ("_quick" if args.quick else "")
    path = common.write_json(args.out / f"{name}.json", res)
    print(f"\nCommand: `{res['command']}`; {info['date']}; {info['processor']}, "
          f"{info['cpu_count']} cores, torch {info['torch']} with {info['torch_threads']} "
          f"thread(s); data {res['data_s']:.0f} s, total {res['total_s']:.0f} s\n")
    print(table(res))
    print(f"\n[capacity] wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
