"""Benchmark 6: what scoring every site and a whole growth event cost.

One growth event at every site of a 4-pool U-Net (transposed convs
included) against one training step (zero_grad, forward, L1 loss, backward,
RMSprop step) on the same batch, the sides timed alternately:

* ``score_sites``: random candidates scored at every site in ONE statistics
  pass (``fastmri_growth.models.dynamic_unet.score_sites``, N = 10 per site);
* a whole event at every site with ``sample_select`` (one pass, then the
  surgery of every site), with ``random``, with ``gradmax`` (two passes),
  and with ``sample_select`` plus the descent fan-out line search;
* the same event done the way the previous version did it: one
  forward+backward per site (``grow_network`` site after site).

Targets (issue "growth decisions"): scoring every site <= 1.5x a training
step; a whole event at every site <= 2x.
"""

import copy
import time
from typing import Dict, List

import torch
from torch.nn import functional as F

from .common import alternate, ratio, summary, synchronize

TARGETS = {"score_sites": 1.5, "event_sample_select": 2.0}
FULL = {"chans": 16, "num_pool_layers": 4, "side": 128, "batch": 1, "repeats": 7,
        "n_candidates": 10}
QUICK = {"chans": 8, "num_pool_layers": 3, "side": 64, "batch": 1, "repeats": 3,
         "n_candidates": 10}
SIDES = ("score_sites", "event_sample_select", "event_random", "event_gradmax",
         "event_descent", "per_site_passes")


def _timed(fn, setup=None, device=torch.device("cpu")):
    def run():
        arg = setup() if setup is not None else None
        synchronize(device)
        start = time.perf_counter()
        fn() if setup is None else fn(arg)
        synchronize(device)
        return time.perf_counter() - start
    return run


def run(quick: bool = False, cfg: Dict = None, device: str = "cpu") -> Dict:
    """Time every side against a training step; return figures and ratios."""
    from fastmri_growth.growth import grow
    from fastmri_growth.models.dynamic_unet import DynamicUnet, score_sites

    cfg = dict(QUICK if quick else FULL, **(cfg or {}))
    dev = torch.device(device)
    torch.manual_seed(0)
    model = DynamicUnet(1, 1, cfg["chans"], cfg["num_pool_layers"],
                        n_candidates=cfg["n_candidates"]).to(dev)
    x = torch.randn(cfg["batch"], 1, cfg["side"], cfg["side"], device=dev)
    y = torch.randn_like(x)
    optimizer = torch.optim.RMSprop(model.parameters(), lr=1e-5)
    loss_fn = model.loss_fn(F.l1_loss)
    sites = model.growth_sites()
    k = cfg["n_candidates"]

    def train():
        optimizer.zero_grad(set_to_none=True)
        F.l1_loss(model(x), y).backward()
        optimizer.step()

    def copy_model():
        return copy.deepcopy(model)

    def event(method, **kw):
        def go(m):
            grow(m, sites, method, [(x, y)], m.loss_fn(F.l1_loss), n_new=1,
                 generator=torch.Generator().manual_seed(0),
                 method_options={"n_candidates": k}, **kw)
        return go

    def per_site(m):
        g = torch.Generator().manual_seed(0)
        for s in sites:
            m.grow_network(s.layer, s.conv, x, y, generator=g)

    fns = {
        "train_step": _timed(train, device=dev),
        "score_sites": _timed(lambda: score_sites(model, x, y, n_candidates=k,
                                                  generator=torch.Generator().manual_seed(0)),
                              device=dev),
        "event_sample_select": _timed(event("sample_select"), copy_model, dev),
        "event_random": _timed(event("random"), copy_model, dev),
        "event_gradmax": _timed(event("gradmax"), copy_model, dev),
        "event_descent": _timed(event("sample_select", fan_out_init="descent"), copy_model, dev),
        "per_site_passes": _timed(per_site, copy_model, dev),
    }
    del loss_fn
    times = alternate(fns, repeats=cfg["repeats"], warmup=1)
    rows = []
    for side in SIDES:
        r = ratio(times[side], times["train_step"])
        rows.append({"side": side, "summary": summary(times[side]), "ratio": r,
                     "target": TARGETS.get(side),
                     "meets_target": None if side not in TARGETS else
                     r["ratio_of_medians"] <= TARGETS[side]})
    return {"config": cfg, "sites": len(sites), "train_step": summary(times["train_step"]),
            "rows": rows, "times_s": times}


LABELS = {
    "score_sites": "scoring every site (one pass, N=10 each)",
    "event_sample_select": "event at every site: sample_select",
    "event_random": "event at every site: random",
    "event_gradmax": "event at every site: gradmax (two passes)",
    "event_descent": "event at every site: sample_select + descent line search",
    "per_site_passes": "event at every site, one pass per site (previous version)",
}


def table(result: Dict) -> str:
    c = result["config"]
    lines = [f"Model: DynamicUnet chans {c['chans']}, {c['num_pool_layers']} pools "
             f"({result['sites']} sites, transposed convs included), {c['side']}x{c['side']}, "
             f"batch {c['batch']}; training step {result['train_step']['median_s'] * 1e3:.0f} ms "
             f"(median of {result['train_step']['n']}).", "",
             "| side | median (ms) | vs training step | target |", "|---|---|---|---|"]
    for r in result["rows"]:
        tgt = "-" if r["target"] is None else (
            f"<= {r['target']:g} {'met' if r['meets_target'] else 'NOT met'}")
        lines.append(f"| {LABELS[r['side']]} | {r['summary']['median_s'] * 1e3:.0f} | "
                     f"{r['ratio']['ratio_of_medians']:.2f} | {tgt} |")
    return "\n".join(lines)


def targets(result: Dict) -> List[str]:
    """Lines for the README's targets table."""
    out = []
    for r in result["rows"]:
        if r["target"] is not None:
            v = r["ratio"]["ratio_of_medians"]
            out.append(f"| {LABELS[r['side']]} <= {r['target']:g}x a training step | {v:.2f} | "
                       f"{'yes' if r['meets_target'] else 'NO'} |")
    return out


if __name__ == "__main__":
    import sys

    print(table(run(quick="--quick" in sys.argv)))
