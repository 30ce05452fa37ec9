"""Shared helpers: paired timing, machine description, JSON output."""

import datetime
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch


def set_threads(threads: Optional[int]) -> int:
    """Fix the number of intra-op threads (None: leave torch's default).

    On a machine shared with other jobs, OpenMP threads that spin-wait for
    each other make a 2-thread step many times slower than a 1-thread one
    (measured here: 700 ms vs 30 ms for the same U-Net step under load), so
    the benchmarks default to one thread.

    Returns:
        The number of threads now in use.
    """
    if threads is not None:
        torch.set_num_threads(int(threads))
    return torch.get_num_threads()


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels, so that wall times cover the work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_once(fn: Callable[[], object], device: torch.device = torch.device("cpu"),
              setup: Optional[Callable[[], object]] = None) -> float:
    """Seconds taken by one call of ``fn(*setup())`` (setup is not timed)."""
    args = setup() if setup is not None else None
    synchronize(device)
    start = time.perf_counter()
    fn() if args is None else fn(args)
    synchronize(device)
    return time.perf_counter() - start


def alternate(sides: Dict[str, Callable[[], float]], repeats: int, warmup: int = 1
              ) -> Dict[str, List[float]]:
    """Run timed sides in turn (A, B, A, B, ...) and collect their seconds.

    Alternating in the same process spreads slow phases of a shared machine
    over both sides, so that their ratio stays meaningful.

    Args:
        sides: name -> function returning the seconds of one run.
        repeats: Timed runs per side.
        warmup: Untimed runs per side first (lazy initialisation, caches).

    Returns:
        name -> list of ``repeats`` seconds.
    """
    for _ in range(warmup):
        for fn in sides.values():
            fn()
    out = {name: [] for name in sides}
    for _ in range(repeats):
        for name, fn in sides.items():
            out[name].append(fn())
    return out


def summary(times: Sequence[float]) -> Dict[str, float]:
    """Median and spread (min, max, interquartile range) of a list of seconds."""
    xs = sorted(times)
    q = statistics.quantiles(xs, n=4) if len(xs) >= 2 else [xs[0]] * 3
    return {"median_s": statistics.median(xs), "min_s": xs[0], "max_s": xs[-1],
            "iqr_s": q[2] - q[0], "n": len(xs)}


def ratio(num: Sequence[float], den: Sequence[float]) -> Dict[str, float]:
    """Ratio of medians, and the median of the per-repeat (paired) ratios."""
    paired = [a / b for a, b in zip(num, den)]
    return {"ratio_of_medians": statistics.median(num) / statistics.median(den),
            "median_paired_ratio": statistics.median(paired)}


def machine() -> dict:
    """What the figures were measured on."""
    info = {
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    try:
        import pytorch_lightning
        info["pytorch_lightning"] = pytorch_lightning.__version__
    except ImportError:  # pragma: no cover - a dependency of the package
        pass
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        if names:
            info["processor"] = names[0]
    except OSError:
        pass
    return info


def write_json(path: Path, payload: dict) -> Path:
    """Write ``payload`` as indented JSON, creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=_jsonable))
    return path


def _jsonable(x):
    if isinstance(x, torch.Tensor):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def grow_sites(model, sites, batch, target, events: int, n_new: int, method: str = "sample_select",
               seed: int = 0) -> None:
    """Grow ``model`` in place: ``events`` rounds over ``sites`` of ``n_new`` filters.

    Args:
        model: A DynamicUnet.
        sites: ``[(layer_id, conv_idx), ...]``.
        batch: `(N, 1, H, W)`.
        target: `(N, 1, H, W)`.
        events: Number of rounds.
        n_new: Filters per site per round.
        method: Growth method.
        seed: Candidate seed.
    """
    gen = torch.Generator().manual_seed(seed)
    for _ in range(events):
        for layer, conv_idx in sites:
            model.grow_network(layer, conv_idx, batch, target, n_new=n_new, method=method,
                               generator=gen)


def fmt_ms(seconds: float) -> str:
    """Seconds as milliseconds with 3 significant figures."""
    ms = seconds * 1e3
    return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"
