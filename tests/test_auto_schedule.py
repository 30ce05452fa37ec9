"""The auto growth schedule: grow while new capacity is predicted to pay per FLOP."""

import math

import pytest
import pytorch_lightning as pl
import torch

from fastmri_growth.data.synthetic import generate_dataset
from fastmri_growth.growth import GrowthConfig, Site
from fastmri_growth.growth.schedule import GrowthSchedule, auto_decision, auto_targets, width_of
from fastmri_growth.growth.scoring import SiteScore
from fastmri_growth.pl_modules import DynamicUnetModule
from tests.fit_helpers import cpu_trainer, slice_loader


def site_score(label, score, flops):
    layer, conv = label.split(":")
    return SiteScore(Site(layer, int(conv)), score, [score], torch.zeros(1), 10, flops)


def test_decision_compares_predicted_gain_per_flop_with_trainings_progress_per_flop():
    scores = [site_score("down_0:1", 2.0, 100), site_score("bottleneck:0", 3.0, 1000)]
    # gains: 0.1 * 4 / 100 = 4e-3 and 0.1 * 9 / 1000 = 9e-4 per FLOP; progress 0.5 / 1000.
    d = auto_decision(3, scores, lr=0.1, loss_decrease_per_step=0.5, flops_per_sample=1000,
                      threshold=1.0)
    assert d.site == Site("down_0", 1).label
    assert d.gain_per_flop == pytest.approx(4e-3)
    assert d.progress_per_flop == pytest.approx(5e-4)
    assert d.ratio == pytest.approx(8.0)
    assert d.grow and "gain ratio 8 >= threshold 1" in d.reason
    d = auto_decision(3, scores, 0.1, 0.5, 1000, threshold=8.5)
    assert not d.grow and "gain ratio 8 < threshold 8.5" in d.reason
    # Training that no longer improves: any predicted gain pays.
    d = auto_decision(3, scores, 0.1, -0.01, 1000, threshold=100.0)
    assert d.grow and math.isinf(d.ratio) and "did not fall" in d.reason
    d = auto_decision(3, [], 0.1, 0.5, 1000, 1.0)
    assert not d.grow and d.capped and d.reason == "every site is at its cap"


def test_loss_decrease_per_step_is_measured_over_the_last_epoch():
    s = GrowthSchedule("auto", [Site("down_0", 1)])
    for step, loss in enumerate([5.0, 4.0, 3.0, 2.0, 1.0]):
        s.observe_train_loss(0, loss)
    assert math.isnan(s.loss_decrease_per_step(0))  # no epoch before 0
    # A loss falling by 1 per step: halves (5, 4) and (2, 1), centres 3 steps apart.
    assert s.loss_decrease_per_step(1) == pytest.approx(1.0)
    s.observe_train_loss(1, 7.0)  # epoch 1 starts: epoch 0 stays the evidence
    assert s.loss_decrease_per_step(1) == pytest.approx(1.0)
    assert math.isnan(s.loss_decrease_per_step(3))


def test_schedule_stops_after_patience_declines_or_at_the_caps():
    sites = [Site("down_0", 1)]
    s = GrowthSchedule("auto", sites, interval=2, start_epoch=1, auto_patience=2)
    assert s.sites_for_epoch(1) == sites and s.sites_for_epoch(2) == []
    no = dict(grow=False, ratio=0.5, gain_per_flop=1.0, progress_per_flop=2.0, site="down_0:1",
              threshold=1.0)
    yes = dict(no, grow=True, ratio=2.0)
    from fastmri_growth.growth.schedule import AutoDecision
    s.record_auto(AutoDecision(1, **no))
    s.record_auto(AutoDecision(3, **yes))
    s.record_auto(AutoDecision(5, **no))
    assert s.sites_for_epoch(7) == sites  # one decline since the last growth
    s.record_auto(AutoDecision(7, **no))
    assert s.state["auto_stopped"] == 7 and s.sites_for_epoch(9) == []
    assert [d["epoch"] for d in s.state["auto"]] == [1, 3, 5, 7]
    capped = GrowthSchedule("auto", sites)
    capped.record_auto(AutoDecision(1, **no, capped=True))
    assert capped.state["auto_stopped"] == 1
    ended = GrowthSchedule("auto", sites, end_epoch=3)
    assert ended.sites_for_epoch(3) == sites and ended.sites_for_epoch(4) == []


def test_targets_grow_by_the_rate_within_the_caps():
    size = {"down_0": {"conv1_out": 4, "conv2_out": 8}}
    sites = [Site("down_0", 0), Site("down_0", 1)]
    assert auto_targets(size, sites, 0.25) == {sites[0].key: 5, sites[1].key: 10}
    assert auto_targets(size, sites, 0.0) == {sites[0].key: 5, sites[1].key: 9}
    assert auto_targets(size, sites, 0.25, caps={sites[1].key: 9}, max_width=4) == {
        sites[0].key: 4, sites[1].key: 4}


def test_auto_options_are_checked_and_declared_for_auto_only():
    with pytest.raises(ValueError, match="auto_threshold"):
        GrowthConfig.from_options(growth_schedule="auto", auto_threshold=-1.0)
    with pytest.raises(ValueError, match="at most one of target_chans and target_params"):
        GrowthConfig.from_options(growth_schedule="auto", target_chans=8, target_params=10)
    from fastmri_growth.growth.config import inapplicable

    problems = inapplicable({"growth_schedule": "interval", "auto_threshold": 2.0},
                            {"auto_threshold"})
    assert problems == ("--auto-threshold applies to --growth-schedule auto, not interval; pass "
                        "--growth-schedule auto or drop --auto-threshold")


@pytest.fixture(scope="module")
def knee(tmp_path_factory):
    root = tmp_path_factory.mktemp("auto_data")
    generate_dataset(root, challenges=("knee_singlecoil",), splits=("train",),
                     num_volumes=2, num_slices=2, recon_size=32, seed=0)
    return root / "knee"


def fit(knee, root, epochs=4, **options):
    pl.seed_everything(0)
    module = DynamicUnetModule(chans=4, num_pool_layers=2, growth_schedule="auto",
                               growth_batches=2, n_candidates=2, **options)
    trainer = cpu_trainer(root, epochs)
    trainer.fit(module, slice_loader(knee))
    return module


def test_auto_grows_while_it_pays_and_says_why(knee, tmp_path, capsys):
    module = fit(knee, tmp_path / "grow", auto_threshold=0.0)
    out = capsys.readouterr().out
    log = module.growth_callback.schedule.state["auto"]
    assert [d["epoch"] for d in log] == [1, 2, 3] and all(d["grow"] for d in log)
    assert out.count("auto schedule: growing (gain ratio") == 3
    # Every site widened by a quarter (at least one filter) at each event.
    size = module.unet.get_network_size()
    # 4 -> 5 -> 6 -> 8: + max(1, round(0.25 * w)) at each of the 3 events.
    assert size["down_0"]["conv1_out"] == 8
    assert size["bottleneck"]["conv1_out"] == 16 + 4 + 5 + 6


def test_auto_with_a_high_threshold_never_grows_and_stops(knee, tmp_path, capsys):
    module = fit(knee, tmp_path / "never", auto_threshold=1e30)
    out = capsys.readouterr().out
    state = module.growth_callback.schedule.state
    assert [d["grow"] for d in state["auto"]] == [False, False]
    assert state["auto_stopped"] == 2
    assert "auto schedule: not growing; growth has stopped (gain ratio" in out
    assert module.unet.get_network_size()["down_0"]["conv1_out"] == 4
    # The decisions are in the callback's checkpoint state.
    assert module.growth_callback.state_dict()["schedule"]["auto"] == state["auto"]


def test_auto_stops_at_its_target_chans_cap(knee, tmp_path, capsys):
    module = fit(knee, tmp_path / "cap", epochs=5, auto_threshold=0.0, target_chans=5)
    out = capsys.readouterr().out
    state = module.growth_callback.schedule.state
    widths = module.unet.get_network_size()
    fixed5 = DynamicUnetModule(chans=5, num_pool_layers=2).unet.get_network_size()
    assert widths == fixed5
    assert state["auto"][-1]["capped"] and "every site is at its cap" in out
    assert state["auto_stopped"] == state["auto"][-1]["epoch"]


def test_auto_schedule_through_the_training_command(tiny_knee_root, tmp_path, capfd):
    import torch as _torch

    from fastmri_growth.cli import train

    run = tmp_path / "run"
    argv = ["--data_path", tiny_knee_root, "--default_root_dir", run, "--challenge", "singlecoil",
            "--chans", "4", "--num_pool_layers", "2", "--accelerator", "cpu", "--devices", "1",
            "--num_workers", "0", "--use_dataset_cache_file", "false", "--max_epochs", "3",
            "--growth-schedule", "auto", "--auto-threshold", "0", "--candidate-score",
            "optimizer", "--growth-batches", "2", "--n-candidates", "2"]
    assert train.main([str(a) for a in argv]) == 0
    out = capfd.readouterr().out
    assert out.count("auto schedule: growing (gain ratio") == 2  # epochs 1 and 2
    ckpt = _torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    state = ckpt["callbacks"]["GrowthCallback"]["schedule"]
    assert [d["epoch"] for d in state["auto"]] == [1, 2]
    assert ckpt["hyper_parameters"]["growth_schedule"] == "auto"
    assert ckpt["hyper_parameters"]["candidate_score"] == "optimizer"
    # A flag the auto schedule ignores is refused in one line.
    code = train.main([str(a) for a in argv[:-12]] + ["--default_root_dir", str(tmp_path / "b"),
                                                     "--auto-threshold", "2"])
    err = capfd.readouterr().err
    assert code == 2 and "--auto-threshold applies to --growth-schedule auto" in err
