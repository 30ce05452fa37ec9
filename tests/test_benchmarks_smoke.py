"""Smoke test of the benchmarks at the tiniest sizes: output structure only.

The benchmarks themselves are not part of the test suite (``make bench``
runs them); this only checks that each benchmark function runs end to end
and returns the fields that the tables and the README are built from. No
timing is asserted.
"""

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks import growth_cost, overhead, quality, quality_report, run_all, training

TINY_DATA = {"train": 1, "val": 1, "num_slices": 2, "recon_size": 32}


def test_overhead_structure():
    res = overhead.run(configs=[(2, 2, 16, 1)], repeats=2, grow_events=1, grow_n_new=1)
    (row,) = res["results"]
    assert row["config"] == {"chans": 2, "num_pool_layers": 2, "side": 16, "batch": 1, "device": "cpu"}
    for key, names in (("vs_fastmri", ("fastmri_unet", "dynamic_unet")), ("grown_vs_fresh", ("fresh", "grown"))):
        assert set(row[key]) == {*names, "ratio", "times_s"}
        assert all(len(row[key]["times_s"][n]) == 2 for n in names)
        assert row[key]["ratio"]["ratio_of_medians"] > 0
    # GROW_SITES present at 2 pools: down_0 conv1+conv2, down_1 conv2, bottleneck conv1, up_1 conv2.
    assert row["params"]["grown"] > row["params"]["unet"]
    assert row["grown_widths"]["down_0"] == {"conv1_out": 3, "conv2_out": 3}
    assert "| 2, 2, 16x16, 1 |" in overhead.table(res)


def test_growth_cost_structure(monkeypatch):
    cfg = {"chans": 2, "num_pool_layers": 2, "side": 16, "batch": 1, "repeats": 2, "brute_repeats": 1,
           "brute_site": ("down_1", 1),
           "memory": {"chans": 2, "num_pool_layers": 2, "side": 32, "batch": 1,
                      "sites": (("down_0", 1),), "candidates": (3,), "repeats": 1}}
    # One real subprocess round trip; the table's other sides run in-process
    # (each child would import torch again).
    spec = {"kind": "growth", "chans": 2, "num_pool_layers": 2, "side": 32, "batch": 1,
            "device": "cpu", "threads": 1, "site": ["down_0", 1], "n_candidates": 3}
    child = growth_cost._run_child(spec)
    assert child["kind"] == "growth" and child["step_peak_bytes"] == child["peak_bytes"] - child["before_bytes"]
    monkeypatch.setattr(growth_cost, "_run_child", growth_cost.peak_child)
    res = growth_cost.run(cfg=cfg, candidates=(1, 10), sites=(("down_0", 1), ("up_last", 1)))
    sites_ns = [(r["site"], r["n_candidates"]) for r in res["growth_vs_train"]]
    assert sites_ns == [("down_0:1", 1), ("down_0:1", 10), ("up_1:1", 1), ("up_1:1", 10)]
    assert [r["target"] for r in res["growth_vs_train"]] == [None, 2.0, None, 2.0]
    assert [r["n_candidates"] for r in res["brute_force"]] == [1, 10]
    for r in res["brute_force"]:
        assert r["target"] == r["n_candidates"] / 2
        assert r["scores_max_rel_diff"] < 1e-3  # one pass and brute force agree
    mem = res["memory"]
    assert [r["side"] for r in mem["growth"]] == ["growth down_0:1 N=3"]
    # At this size the figure is within the kernel's RSS-counter lag (~100 kB):
    # only its presence is checked.
    assert isinstance(mem["train_step_peak_bytes"], (int, float))
    train = mem["raw"]["train_step"][0]
    assert train["kind"] == "train" and train["peak_bytes"] > 0
    text = growth_cost.table(res)
    assert "| down_0:1 | 10 |" in text and "Peak memory" in text


def test_training_and_quality_structure(tmp_path):
    res = training.run(tmp_path, data=TINY_DATA, max_epochs=3, repeats=1, chans=2, pools=3)
    assert [e["epoch"] for e in res["epochs"]] == [0, 1, 2]
    assert [e["grew"] for e in res["epochs"]] == [False, False, True]
    assert res["epochs"][2]["params_growth"] > res["epochs"][2]["params_no_growth"]
    # The growth step's duration is recorded (a field check, not a timing limit).
    growth_step = res["epochs"][2]["growth_step_seconds"]
    assert growth_step > 0
    assert all(e["batches"] == 2 for e in res["epochs"])
    assert "| 2 | yes |" in training.table(res)



def test_quality_study_structure(tmp_path):
    logs = []
    q = quality.run(tmp_path, quick=True, regimes=["textured_quick"], plot_dir=tmp_path / "plots",
                    command="c", log=logs.append)
    regime = quality.QUICK_REGIMES["textured_quick"]
    want = [(n, s) for n in regime.configs for s in quality.seeds_of(regime, n)]
    assert sorted((r["config"], r["seed"]) for r in q["runs"]) == sorted(want)
    runs = {(r["config"], r["seed"]): r for r in q["runs"]}
    small, grown = runs[("fixed_c2", 0)], runs[("sample_select", 0)]
    large, pruned = runs[("fixed_c4", 0)], runs[("pruned_taylor", 0)]
    # The grown run reaches the large fixed widths; growth and pruning are counted.
    assert grown["widths"] == large["widths"] and grown["params"] == large["params"]
    assert grown["grown_epochs"] == [1, 2] and grown["growth_flops"] > 0
    assert small["growth_flops"] == 0 and small["grown_epochs"] == []
    assert pruned["pruned_epochs"] == [1] and pruned["prune_flops"] > 0
    assert pruned["params"] < large["params"]
    assert runs[("exchange", 0)]["params"] != small["params"] or \
        runs[("exchange", 0)]["widths"] != small["widths"]
    steps = regime.epochs * regime.steps_per_epoch
    for r in q["runs"]:
        assert len(r["losses"]) == steps and len(r["epochs"]) == regime.epochs
        assert set(r["metrics"]) == {"4x", "8x"} and set(r["metrics"]["4x"]) == set(quality.METRICS)
        assert 0 < r["metrics"]["4x"]["SSIM_object"] <= 1
        assert r["total_flops"] == r["train_flops"] + r["growth_flops"] + r["prune_flops"]
        assert r["command"] == "c" and "date" in r["machine"]
    # Paired: same seed, same inputs until the first event (and after it).
    assert [e["input_digest"] for e in grown["epochs"]] == [e["input_digest"] for e in small["epochs"]]
    assert small["losses"][:regime.steps_per_epoch] == grown["losses"][:regime.steps_per_epoch]
    # Per-run records on disk; a second call trains nothing.
    files = sorted((tmp_path / "quality_runs" / "textured_quick").glob("*.json"))
    assert len(files) == len(want)
    logs.clear()
    again = quality.run(tmp_path, quick=True, regimes=["textured_quick"], log=logs.append)
    assert logs[0].startswith(f"[quality] {len(want)} runs up to date, 0 to run")
    assert len(again["runs"]) == len(want)
    report = q["report"]["textured_quick"]
    assert report["pairing"]["identical_before_first_event"] == report["pairing"]["pairs"] > 0
    diff = report["paired"]["sample_select"]["PSNR vs small"]
    assert diff["values"] == pytest.approx(
        [quality_report.summary(runs[("sample_select", s)], "PSNR")
         - quality_report.summary(runs[("fixed_c2", s)], "PSNR") for s in diff["seeds"]])
    assert {g["config"] for g in report["goals"]} >= {"sample_select", "random"}
    for png in q["plots"]:
        assert Path(png).read_bytes()[:4] == b"\x89PNG"
    json.dumps(q)
    text = quality.table(q)
    assert "| fixed chans 2 |" in text and "| zero-filled input (no network) |" in text
    assert "Goals:" in text and "Pairing check" in text
    with pytest.raises(ValueError, match="unknown regime.*valid: textured_quick, anatomy_quick"):
        quality.run(tmp_path, quick=True, regimes=["nope"])

    machine = {"date": "d", "cpu_count": 2, "processor": "p", "torch": "t", "torch_threads": 1,
               "cuda": None, "load_average": [1.0, 1.0, 1.0]}
    section = run_all.render({"quality": {"command": "c", "machine": machine, "seconds": 1.0,
                                          "result": q}}, quick=False)
    readme = tmp_path / "README.md"
    readme.write_text(f"# B\n\nbefore\n\n{run_all.BEGIN}\nold\n{run_all.END}\n\nafter\n")
    run_all.update_readme(section, readme)
    text = readme.read_text()
    assert "old" not in text and "before" in text and "after" in text
    assert "### 4. Quality study" in text and text.count(run_all.BEGIN) == 1
    assert "(quality_pareto.png)" in text and "(quality_bump.png)" in text


def test_quality_bump_and_front():
    spe = 60
    ref = {"losses": [1.0] * 180}
    run = {"losses": [1.0] * 60 + [1.5] * 25 + [1.0] * 95, "steps_per_epoch": spe,
           "grown_epochs": [1], "pruned_epochs": []}
    (b,) = quality_report.bumps(run, ref)
    assert b["epoch"] == 1 and b["before"] == 0 and b["bump"] == pytest.approx(0.5)
    # Linear in log FLOPs between neighbouring widths; None outside.
    pts = [(1.0, 10.0), (100.0, 20.0)]
    assert quality_report._front(pts, 10.0) == pytest.approx(15.0)
    assert quality_report._front(pts, 1000.0) is None
    # Events against the quiet epoch starts: twice the standard error decides.
    null = {"mean": 0.0, "std": 0.002, "n": 40}
    assert quality_report.verdict({"mean": 0.003, "std": 0.0025, "n": 20}, null) == "bump"
    assert quality_report.verdict({"mean": -0.003, "std": 0.0025, "n": 20}, null) == "improves"
    assert quality_report.verdict({"mean": 0.003, "std": 0.02, "n": 20}, null) == "within noise"
    run["epochs"] = [{}] * 3
    assert quality_report.quiet_epochs(run) == [2]
    (q,) = quality_report.bumps(run, ref, quality_report.quiet_epochs(run))
    assert q["epoch"] == 2 and q["bump"] == pytest.approx(0.0)


def _write_volume(path, key, image):
    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as hf:
        hf.create_dataset(key, data=image[None].astype(np.float32))


def test_object_ssim_ignores_background_offset(tmp_path):
    from skimage.metrics import structural_similarity

    # Object (1.0) on a background at 1% of the max, as in the synthetic data.
    yy, xx = np.mgrid[:32, :32]
    target = np.where((yy - 16) ** 2 + (xx - 16) ** 2 < 81, 1.0, 0.01)
    obj = target > 0.1
    _write_volume(tmp_path / "val" / "f.h5", "reconstruction_esc", target)
    whole, objects = {}, {}
    for offset in (-0.02, 0.02):
        pred = np.where(obj, target, target + offset)
        _write_volume(tmp_path / str(offset) / "f.h5", "reconstruction", pred)
        m = quality.object_metrics(tmp_path / str(offset), tmp_path / "val")
        assert m["background_offset"] == pytest.approx(offset, abs=1e-6)
        objects[offset] = m["SSIM_object"]
        whole[offset] = structural_similarity(target, pred, data_range=1.0)
    # A background 2% of max below the target (i.e. negative) makes SSIM's
    # luminance term negative there; the same offset above the target costs
    # far less. Over the object the two agree.
    assert whole[0.02] - whole[-0.02] > 0.25
    assert objects[-0.02] == pytest.approx(objects[0.02], abs=0.05)
    assert objects[-0.02] > 0.99


def test_event_cost_structure():
    from benchmarks import event_cost

    res = event_cost.run(cfg={"chans": 2, "num_pool_layers": 2, "side": 16, "repeats": 1,
                              "n_candidates": 2})
    assert res["sites"] == 12
    assert [r["side"] for r in res["rows"]] == list(event_cost.SIDES)
    assert all(r["ratio"]["ratio_of_medians"] > 0 for r in res["rows"])
    text = event_cost.table(res)
    assert "| scoring every site (one pass, N=10 each) |" in text and "<= 1.5" in text
    assert len(event_cost.targets(res)) == 2


def test_bump_structure(tmp_path):
    from benchmarks import bump

    cfg = {"data": TINY_DATA, "batch_size": 1, "seeds": (0,), "chans": 2, "num_pool_layers": 2,
           "event_epoch": 1, "max_epochs": 2, "window": 1, "growth_batches": 1}
    res = bump.run(tmp_path, cfg=cfg, methods=["random"], treatments=["mean", "grad"],
                   log=lambda *_: None)
    assert [(r["method"], r["treatment"]) for r in res["rows"]] == [("random", "mean"),
                                                                   ("random", "grad")]
    # Paired runs: before the event the grown and the fixed net are the same.
    assert all(r["before"] == 0.0 for r in res["rows"])
    assert "| random | grad |" in bump.table(res)


def test_training_data_replaces_its_own_stale_data_only(tmp_path):
    from fastmri_growth.data.synthetic_manifest import ForeignDataError

    small = dict(TINY_DATA, train=1)
    knee = training.make_data(tmp_path / "own", small)
    first = sorted(p.name for p in (knee / "singlecoil_train").iterdir())
    # Another spec in the same folder: the earlier data were this helper's, so replaced.
    knee = training.make_data(tmp_path / "own", dict(small, train=2))
    assert len(list((knee / "singlecoil_train").iterdir())) == 2 > len(first)
    # Files it did not write (no marker) are never touched.
    foreign = tmp_path / "foreign" / "knee" / "singlecoil_train"
    foreign.mkdir(parents=True)
    (foreign / "file1000000.h5").write_bytes(b"data")
    with pytest.raises(ForeignDataError):
        training.make_data(tmp_path / "foreign", small)
    assert (foreign / "file1000000.h5").read_bytes() == b"data"


def test_diversity_structure(tmp_path):
    from benchmarks import diversity

    cfg = {"recon_size": 32, "train_volumes": 1, "val_volumes": 1, "num_slices": 2, "steps": 1,
           "batch_size": 1, "num_pool_layers": 1, "chans": 2, "growth_batches": 1,
           "n_candidates": 2, "val_slices": 2, "seeds": (0,)}
    res = diversity.run(tmp_path, cfg=cfg, methods=("random", "gradmax"))
    assert [r["method"] for r in res["summary"]] == ["random", "gradmax"]
    sites = res["runs"][0]["sites"]
    assert len(sites) == 7 and all(len(s["corr_to_existing"]) == 2 for s in sites)
    assert all(0 <= v <= 1 + 1e-9 for s in sites for v in s["corr_to_existing"])
    assert res["summary"][0]["score_vs_random"] == [pytest.approx(1.0)]
    assert "| gradmax | 14 |" in diversity.table(res)


def test_diversity_kept_scores_are_the_engines_scores():
    """The backward-pass score of a kept zero-fan-out filter equals the score
    sample_select ranked it by; feature correlations of a duplicated channel are 1."""
    import torch
    from torch.nn import functional as F

    from benchmarks import diversity
    from fastmri_growth.growth import grow
    from fastmri_growth.models import DynamicUnet

    torch.manual_seed(0)
    net = DynamicUnet(1, 1, chans=3, num_pool_layers=2).double()
    batches = [(torch.randn(2, 1, 16, 16, dtype=torch.float64),
                torch.randn(2, 1, 16, 16, dtype=torch.float64)) for _ in range(2)]
    loss_fn = net.loss_fn(F.l1_loss)
    sites = net.growth_sites()
    before = {s.key: net.site_spec(s).width for s in sites}
    reports = grow(net, sites, "sample_select", batches, loss_fn, n_new=1,
                   generator=torch.Generator().manual_seed(0),
                   method_options={"n_candidates": 4})
    kept = diversity.kept_scores(net, sites, before, batches, loss_fn)
    for r in reports:
        key = f"{r.layer_idx}:{r.conv_idx}"
        assert kept[key] == [pytest.approx(r.scores[r.selected[0]], rel=1e-9)], key
    feats = torch.randn(3, 50, dtype=torch.float64)
    feats[2] = 2 * feats[0] + 1
    corr, dead = diversity.correlations(torch.cat([feats, torch.ones(1, 50)]))
    assert corr[2, 0] == pytest.approx(1.0) and dead.tolist() == [False, False, False, True]
    assert corr[3].abs().sum() == 0


def test_realised_structure(tmp_path):
    from benchmarks import realised

    res = realised.run(tmp_path, quick=True)
    assert len(res["rows"]) == len(realised.QUICK["sites"]) * len(realised.QUICK["seeds"])
    for row in res["rows"]:
        assert len(row["realised"]) == realised.QUICK["candidates"]
        assert set(row["scores"]) == set(realised.SCORES)
        # The kept candidate is the argmax of each score, its decrease one of the realised.
        for name in realised.SCORES:
            assert row[f"kept_{name}"] in row["realised"]
    assert realised.spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert realised.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert "| optimizer |" in realised.table(res)


def test_growth_pays_structure(tmp_path, monkeypatch):
    from dataclasses import replace

    from benchmarks import growth_pays

    tiny = replace(growth_pays.QUICK_REGIMES["textured_quick"], epochs=3, seeds_decide=(0,),
                   seeds_other=(0,), configs=("fixed_c4", "random"))
    monkeypatch.setattr(growth_pays, "QUICK_REGIMES", {"tiny": tiny})
    res = growth_pays.run(tmp_path, quick=True, log=lambda line: None)
    by = {r["config"]: r for r in res["runs"]}
    large = by["fixed_c4"]
    # The large run is evaluated on the way; its points' FLOPs grow with the epochs.
    assert [p["epoch"] for p in large["anytime"]] == list(growth_pays.QUICK_ANYTIME)
    flops = [p["total_flops"] for p in large["anytime"]]
    assert flops == sorted(flops) and len(set(flops)) == len(flops)
    # Epoch 2 is the last: its point is the finished run.
    assert flops[-1] == large["total_flops"]
    assert large["anytime"][-1]["metrics"] == large["metrics"]
    matched = growth_pays.flop_matched(by["random"], large)
    assert min(abs(f - by["random"]["total_flops"]) for f in flops) == \
        abs(matched["total_flops"] - by["random"]["total_flops"])
    rep = res["report"]["tiny"]
    assert "random - fixed_c4 at equal FLOPs" in rep["paired"]
    assert "**tiny**" in growth_pays.table(res)
    # Resumable: a second call runs nothing.
    again = growth_pays.run(tmp_path, quick=True, log=lambda line: None)
    assert len(again["runs"]) == 2
    # A point on the way is the network trained for that many epochs: the
    # evaluation leaves the training as it was.
    short = replace(tiny, epochs=2, configs=("fixed_c4",))
    monkeypatch.setattr(growth_pays, "QUICK_REGIMES", {"short": short})
    monkeypatch.setattr(growth_pays, "QUICK_ANYTIME", ())
    (two,) = growth_pays.run(tmp_path, quick=True, log=lambda line: None)["runs"]
    at_1 = next(p for p in large["anytime"] if p["epoch"] == 1)
    assert two["metrics"] == at_1["metrics"]
    assert two["total_flops"] == at_1["total_flops"]


def test_depth_study_structure(tmp_path, monkeypatch):
    from benchmarks import depth

    # The commands' own main() in this process (each child would import
    # torch and Lightning again); _run's process boundary is checked below.
    monkeypatch.setattr(depth, "_run", depth.run_in_process)
    res = depth.run(tmp_path, "tiny", log=lambda line: None)
    by = {r["config"]: r for r in res["runs"]}
    assert list(by) == ["fixed_1", "fixed_3", "grown", "fixed_3_equal_flops"]
    f = {int(k): v for k, v in res["flops_per_step"].items()}
    assert res["planned_cascades"] == [1, 2, 3]
    grown = by["grown"]
    assert grown["flags"][:2] == ["--model-type", "dynamic_varnet"]
    assert by["fixed_3"]["flags"][:2] == ["--model-type", "varnet"]
    # One insertion at the first batch of epochs 1 and 2 (2 steps an epoch).
    assert grown["depth_events"] == [{"epoch": 1, "step": 2, "cascades": [1]},
                                     {"epoch": 2, "step": 4, "cascades": [2]}]
    assert grown["logged_cascades"] == [1, 2, 3]  # network/cascades in the CSV log
    assert (grown["start_cascades"], grown["final_cascades"]) == (1, 3)
    assert grown["params"] == by["fixed_3"]["params"]  # gates dropped at the end
    assert grown["train_flops"] == 2 * (f[1] + f[2] + f[3])
    assert by["fixed_3"]["train_flops"] == 6 * f[3]
    eq = by["fixed_3_equal_flops"]
    assert eq["epochs"] == res["equal_epochs"] == round((f[1] + f[2] + f[3]) / f[3]) < 3
    assert eq["train_flops"] == 2 * eq["epochs"] * f[3]
    for r in by.values():
        assert set(r["metrics"]) == {"4x", "8x"}
        assert all(0 < r["metrics"][a]["SSIM"] <= 1 for a in ("4x", "8x"))
        assert r["commands"][0].split()[2] == "fastmri_growth.cli.train"
        assert r["commands"][1].split()[2:4] == ["fastmri_growth.cli.evaluate", "leaderboard"]
    text = depth.table(res)
    assert "| grown 1 -> 3 cascades | 1 | 3 |" in text
    assert "| grown 1 -> 3 cascades - fixed 3 cascades, equal FLOPs |" in text
    assert "| grown 1 -> 3 cascades - fixed 1 cascades |" in text
    depth.common.write_json(tmp_path / "depth_tiny.json", res)
    assert depth.main(["--regime", "tiny", "--out", str(tmp_path), "--tables-only"]) == 0
    assert "Goal 1 " in text and "Goal 2 " in text
    # A second run reads the records instead of training again.
    monkeypatch.setattr(depth, "_run", lambda *a: pytest.fail("ran a command again"))
    again = depth.run(tmp_path, "tiny", log=lambda line: None)
    assert again["runs"] == json.loads(json.dumps(res["runs"]))
    with pytest.raises(ValueError, match="unknown configuration.*fixed_9.*valid: fixed_1"):
        depth.run(tmp_path, "tiny", only=["fixed_9"])


def test_depth_commands_run_with_this_checkout_first_on_the_path(tmp_path):
    import sys

    from benchmarks import depth

    log = tmp_path / "elsewhere" / "commands.log"
    depth._run([sys.executable, "-c", "import benchmarks; print(benchmarks.__file__)"], log, 1)
    assert str(Path(depth.__file__).parent / "__init__.py") in log.read_text()
    with pytest.raises(RuntimeError, match=r"(?s)^exit status 3 of .*\nboom$"):
        depth._run([sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"], log, 1)
