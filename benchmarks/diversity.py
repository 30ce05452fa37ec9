"""Benchmark 8: what the growth methods keep, measured on feature maps.

The first measurements (growth.md) found gradient ascent on the fan-ins
picking near-duplicates of existing filters (feature-map correlation
0.90-0.985) while their fan-in cosines looked unremarkable: diversity has to
be measured on the features the network computes, not on the weights. Here,
per method, one growth event at every site of a U-Net trained in the quality
study's regime (chans 4, 3 pools, textured 96x96 phantoms, RMSprop lr 1e-3,
batch 4, the steps of the study's first epoch), from the same trained
network, scoring batches and generator:

* feature correlation: on held-out validation slices (a fixed mask per
  file), each site's feature maps (its conv's output after the block's
  InstanceNorm + LeakyReLU, what every consumer reads), Pearson-correlated
  over all pixels of all slices; per new filter the largest ``|corr|`` with
  an existing filter of its site, and between the new filters of a site;
* dead filters: new feature maps that are constant (standard deviation below
  1e-6 of the site's mean), which no fan-out can use;
* fan-in cosine: the largest ``|cos|`` between a new filter's fan-in and an
  existing one's, the measure the feature correlation replaces;
* score: each kept filter's exact zero-fan-out score, the gradient norm of
  the scoring batches' mean loss with respect to its fan-out slices, read
  from one backward pass of the grown network (what every method's
  ``sample_select`` ranks by); as a ratio to ``random``'s mean on the same
  seed.

The network is trained by a plain loop over fastMRI's ``SliceDataset`` and
``UnetDataTransform`` (the capacity benchmark's), not a Lightning Trainer:
what is measured is one decision from one state, not training.
"""

import copy
import statistics
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from torch.nn import functional as F

from . import capacity

FULL = {"recon_size": 96, "train_volumes": 20, "val_volumes": 4, "num_slices": 8,
        "steps": 80, "batch_size": 4, "lr": 1e-3, "num_pool_layers": 3, "chans": 4,
        "n_new": 2, "growth_batches": 8, "n_candidates": 10, "val_slices": 16,
        "seeds": (0, 1, 2)}
QUICK = {**FULL, "recon_size": 32, "train_volumes": 2, "val_volumes": 1, "num_slices": 4,
         "steps": 2, "batch_size": 2, "num_pool_layers": 2, "growth_batches": 2,
         "val_slices": 4, "seeds": (0,)}
METHODS = ("random", "sample_select", "gradmax")
DEAD_STD = 1e-6


def _batches(folder: Path, n: int, batch_size: int, seed: int, fixed: bool) -> List[tuple]:
    """``n`` batches ``(image, target)``, each `(B, 1, H, W)`, from a split folder."""
    data = capacity._dataset(folder, mask_seed=seed, fixed=fixed)
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=not fixed,
                                         generator=torch.Generator().manual_seed(seed))
    out = []
    for batch in loader:
        out.append((batch.image.unsqueeze(1), batch.target.unsqueeze(1)))
        if len(out) == n:
            break
    return out


def train(knee: Path, seed: int, cfg: dict):
    """A ``DynamicUnet`` trained for ``cfg["steps"]`` steps (fastMRI's recipe, L1, RMSprop)."""
    from fastmri_growth.models import DynamicUnet

    torch.manual_seed(seed)
    model = DynamicUnet(1, 1, cfg["chans"], cfg["num_pool_layers"])
    optimizer = torch.optim.RMSprop(model.parameters(), lr=cfg["lr"])
    steps = 0
    while steps < cfg["steps"]:
        for x, y in _batches(knee / "singlecoil_train", cfg["steps"] - steps, cfg["batch_size"],
                             seed + steps, fixed=False):
            loss = F.l1_loss(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps += 1
    return model


def site_features(model, sites, batches: Sequence[tuple]) -> Dict[str, torch.Tensor]:
    """Every site's feature maps as the network computes them.

    Returns:
        ``{site name: (C, pixels)}``: the conv's output after the site's
        channel-wise function, every slice of ``batches`` flattened.
    """
    specs = {s.key: model.site_spec(s) for s in sites}
    grabbed: Dict[str, List[torch.Tensor]] = {n: [] for n in specs}
    hooks = [spec.conv.register_forward_hook(
        lambda _m, _i, out, n=n, post=spec.post: grabbed[n].append(post(out).detach()))
        for n, spec in specs.items()]
    model.eval()
    try:
        with torch.no_grad():
            for x, _ in batches:
                model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train()
    return {n: torch.cat(f).transpose(0, 1).reshape(f[0].shape[1], -1).double()
            for n, f in grabbed.items()}


def correlations(features: torch.Tensor) -> tuple:
    """Pearson correlation of channels and which are constant.

    Args:
        features: `(C, pixels)`.

    Returns:
        ``(|corr| (C, C) with 0 wherever a constant channel is involved,
        dead (C,) bool)``.
    """
    centred = features - features.mean(dim=1, keepdim=True)
    std = centred.pow(2).mean(dim=1).sqrt()
    dead = std <= DEAD_STD * std.mean().clamp_min(1e-300)
    unit = centred / std.clamp_min(1e-300)[:, None]
    corr = (unit @ unit.T / features.shape[1]).abs()
    corr[dead, :] = 0
    corr[:, dead] = 0
    return corr, dead


def kept_scores(model, sites, widths_before: Dict[str, int], batches, loss_fn) -> Dict[str, List[float]]:
    """Each new filter's zero-fan-out score: the norm of the mean loss's gradient
    with respect to its fan-out slices in every consumer, from one backward pass.
    """
    model.zero_grad(set_to_none=True)
    loss = sum(loss_fn(b) for b in batches) / len(batches)
    loss.backward()
    out = {}
    for s in sites:
        spec = model.site_spec(s)
        old, new = widths_before[s.key], spec.width - widths_before[s.key]
        sq = torch.zeros(new, dtype=torch.float64)
        for c in spec.consumers:
            g = c.module.weight.grad.narrow(c.in_dim, c.channel_offset + old, new).double()
            sq += g.movedim(c.in_dim, 0).reshape(new, -1).pow(2).sum(dim=1)
        out[s.key] = sq.sqrt().tolist()
    model.zero_grad(set_to_none=True)
    return out


def measure(model, method: str, cfg: dict, scoring, held_out, seed: int) -> dict:
    """Grow a copy of ``model`` at every site with ``method``; measure what it kept."""
    from fastmri_growth.growth import grow

    net = copy.deepcopy(model)
    sites = net.growth_sites()
    before = {s.key: net.site_spec(s).width for s in sites}
    loss_fn = net.loss_fn(F.l1_loss)
    options = {} if method == "random" else {"n_candidates": cfg["n_candidates"]}
    grow(net, sites, method, scoring, loss_fn, n_new=cfg["n_new"],
         generator=torch.Generator().manual_seed(1000 + seed), method_options=options)
    scores = kept_scores(net, sites, before, scoring, loss_fn)
    feats = site_features(net, sites, held_out)
    per_site = []
    for s in sites:
        k = before[s.key]
        corr, dead = correlations(feats[s.key])
        new = list(range(k, corr.shape[0]))
        rows = net.site_spec(s).filter_rows().flatten(1).double()
        unit = rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-300)
        cos = (unit[k:] @ unit[:k].T).abs()
        pair = corr[k:, k:].clone().fill_diagonal_(0)
        per_site.append({
            "site": s.key, "width_before": k, "n_new": len(new),
            "corr_to_existing": corr[k:, :k].amax(dim=1).tolist(),
            "corr_between_new": float(pair.max()) if len(new) > 1 else None,
            "dead": int(dead[k:].sum()), "dead_existing": int(dead[:k].sum()),
            "cos_to_existing": cos.amax(dim=1).tolist(),
            "scores": scores[s.key],
        })
    return {"method": method, "seed": seed, "sites": per_site}


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return statistics.fmean(xs) if xs else float("nan")


def summarise(runs: List[dict]) -> List[dict]:
    """Per method: the figures over every new filter, site and seed."""
    rand = {r["seed"]: _mean([v for s in r["sites"] for v in s["scores"]])
            for r in runs if r["method"] == "random"}
    rows = []
    for method in dict.fromkeys(r["method"] for r in runs):
        mine = [r for r in runs if r["method"] == method]
        new_corr = [v for r in mine for s in r["sites"] for v in s["corr_to_existing"]]
        ratios = [_mean([v for s in r["sites"] for v in s["scores"]]) / rand[r["seed"]]
                  for r in mine if r["seed"] in rand]
        rows.append({
            "method": method, "filters": len(new_corr),
            "corr_to_existing_mean": _mean(new_corr),
            "corr_to_existing_max": max(new_corr),
            "near_duplicates": sum(v > 0.9 for v in new_corr),
            "corr_between_new_mean": _mean([s["corr_between_new"] for r in mine
                                            for s in r["sites"]]),
            "dead": sum(s["dead"] for r in mine for s in r["sites"]),
            "cos_to_existing_mean": _mean([v for r in mine for s in r["sites"]
                                           for v in s["cos_to_existing"]]),
            "score_vs_random": ratios,
        })
    return rows


def run(workdir: Path, quick: bool = False, cfg: Optional[dict] = None,
        methods: Sequence[str] = METHODS) -> dict:
    """Train one network per seed, grow a copy with each method, measure."""
    cfg = dict(QUICK if quick else FULL, **(cfg or {}))
    knee = capacity.make_data(Path(workdir) / "diversity_data", "textured", cfg)
    runs = []
    for seed in cfg["seeds"]:
        model = train(knee, seed, cfg)
        scoring = _batches(knee / "singlecoil_train", cfg["growth_batches"], cfg["batch_size"],
                           10_000 + seed, fixed=False)
        held_out = _batches(knee / "singlecoil_val", cfg["val_slices"], 1, 0, fixed=True)
        for method in methods:
            runs.append(measure(model, method, cfg, scoring, held_out, seed))
            print(f"[diversity] seed {seed} {method}: feature corr to existing "
                  f"{summarise([runs[-1]])[0]['corr_to_existing_mean']:.3f}", flush=True)
    return {"config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()},
            "runs": runs, "summary": summarise(runs)}


def table(result: dict) -> str:
    c = result["config"]
    n_sites = len(result["runs"][0]["sites"])
    lines = [f"DynamicUnet chans {c['chans']}, {c['num_pool_layers']} pools, trained "
             f"{c['steps']} steps (batch {c['batch_size']}) on textured {c['recon_size']}x"
             f"{c['recon_size']} phantoms; one event of {c['n_new']} filters at each of its "
             f"{n_sites} sites, scored on {c['growth_batches']} batches (N = "
             f"{c['n_candidates']} candidates per filter where the method selects); features on "
             f"{c['val_slices']} validation slices; seeds {', '.join(map(str, c['seeds']))}.", "",
             "| method | new filters | feature corr. to existing, mean / max | > 0.9 | "
             "feature corr. between new | dead | fan-in cos. to existing | score vs random |",
             "|---|---|---|---|---|---|---|---|"]
    for r in result["summary"]:
        ratios = r["score_vs_random"]
        ratio = (f"{statistics.fmean(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"
                 if ratios else "-")
        lines.append(f"| {r['method']} | {r['filters']} | {r['corr_to_existing_mean']:.3f} / "
                     f"{r['corr_to_existing_max']:.3f} | {r['near_duplicates']} | "
                     f"{r['corr_between_new_mean']:.3f} | {r['dead']} | "
                     f"{r['cos_to_existing_mean']:.3f} | {ratio} |")
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    print(table(run(Path("bench_output") / "work", quick="--quick" in sys.argv)))
