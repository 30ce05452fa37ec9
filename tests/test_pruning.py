"""Pruning: exact removal of zero-fan-out filters at every kind of site, the
Taylor criterion against the measured loss change, optimizer rows of kept
filters, remove/grow round trips, pruning in a Lightning fit (resume, exchange),
bad input."""


import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.nn import functional as F

from fastmri_growth.data.synthetic import generate_dataset
from fastmri_growth.growth import Site, prune
from fastmri_growth.growth.optim import remap_optimizer_state
from fastmri_growth.growth.pruning import score_filters
from fastmri_growth.models import DynamicUnet
from fastmri_growth.pl_modules import DynamicUnetModule
from tests.fit_helpers import cpu_trainer as trainer, slice_loader as loader

F64 = torch.float64


def make_model(chans=3, pools=2, seed=0):
    torch.manual_seed(seed)
    return DynamicUnet(1, 1, chans=chans, num_pool_layers=pools).to(F64).eval()


def batch(n=2, h=17, w=23, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 1, h, w, generator=g, dtype=F64),
            torch.randn(n, 1, h, w, generator=g, dtype=F64))


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_state(model, before, atol=0.0):
    after = model.state_dict()
    assert list(after) == list(before)
    for k, v in before.items():
        assert after[k].shape == v.shape, k
        torch.testing.assert_close(after[k], v, rtol=0, atol=atol)


# ------------------------------------------------------------- exactness
@pytest.mark.parametrize("site", DynamicUnet.site_ids(2), ids=lambda s: s.key)
def test_growing_then_removing_zero_fan_out_filters_is_exact_at_every_site(site):
    model = make_model()
    x, y = batch()
    ref, before = model(x).detach(), snapshot(model)
    width = model.site_spec(site).width
    model.grow_network(site.layer, site.conv, x, y, n_new=2)
    # The new filters (zero fan-out) are the last two: removing them is exact ...
    report = model.prune_network(site.layer, site.conv, 2, batch_data=x, target_data=y)
    assert sorted(report.removed) == [width, width + 1]  # magnitude: zero fan-out goes first
    assert report.scores[width] == report.scores[width + 1] == 0.0
    torch.testing.assert_close(model(x).detach(), ref, rtol=0, atol=1e-13)
    # ... and gives back the original network, parameter for parameter.
    assert_same_state(model, before)
    assert report.loss_after == pytest.approx(report.loss_before, abs=1e-13)
    assert report.params_before - report.params_after == 2 * model.site_spec(
        site).params_per_filter()


def test_removing_then_growing_rebuilds_from_the_state_dict():
    model = make_model()
    x, y = batch()
    for site in (Site("down_0", 1), Site("up_0", "t"), Site("bottleneck", 0)):
        model.prune_network(site.layer, site.conv, 2, "taylor", x, y)
        model.grow_network(site.layer, site.conv, x, y, n_new=1)
    size = model.get_network_size()
    assert size["down_0"]["conv2_out"] == 2 and size["up_0"]["transpose_out"] == 5
    rebuilt = DynamicUnet.from_state_dict(model.state_dict()).eval()
    assert rebuilt.get_network_size() == size
    assert torch.equal(rebuilt(x), model(x))


# ------------------------------------------------------------- criteria
def test_taylor_predicts_the_loss_change_of_removing_a_small_filter():
    model = make_model(seed=2)
    x, y = batch()
    site = Site("down_1", 1)
    spec = model.site_spec(site)
    # Make filter 2's fan-out small: the first-order prediction is then accurate.
    with torch.no_grad():
        for c in spec.consumers:
            w = c.module.weight.movedim(c.in_dim, 0)
            w[c.channel_offset + 2] *= 1e-3
    (taylor,) = score_filters(model, [site], "taylor", [(x, y)],
                              model.loss_fn(F.l1_loss)).values()
    loss_fn = model.loss_fn(F.l1_loss)
    with torch.no_grad():
        before = float(loss_fn((x, y)))
    report = prune(model, {site: [2]}, "taylor", [(x, y)], loss_fn)[0]
    with torch.no_grad():
        measured = float(loss_fn((x, y))) - before
    assert report.scores[2] == pytest.approx(float(taylor[2]))
    assert measured == pytest.approx(float(taylor[2]), rel=2e-2)
    assert report.loss_after - report.loss_before == pytest.approx(measured, rel=1e-9)


def test_taylor_removes_the_smallest_predicted_change_whatever_its_sign():
    model = make_model(chans=4, seed=3)
    x, y = batch()
    site = Site("down_1", 0)
    loss_fn = model.loss_fn(F.l1_loss)
    (scores,) = score_filters(model, [site], "taylor", [(x, y)], loss_fn).values()
    assert (scores < 0).any() and (scores > 0).any()  # both signs present
    order = torch.argsort(scores.abs(), stable=True).tolist()
    report = prune(model, {site: 3}, "taylor", [(x, y)], loss_fn)[0]
    assert report.removed == order[:3]
    # Not the signed order: the most negative prediction is not first to go.
    assert report.removed != torch.argsort(scores, stable=True)[:3].tolist()


def test_magnitude_is_the_fan_out_norm():
    model = make_model()
    site = Site("down_0", 1)  # two consumers: the next encoder conv and the skip
    spec = model.site_spec(site)
    (scores,) = score_filters(model, [site]).values()
    for j in range(spec.width):
        total = sum(float(c.module.weight.detach().movedim(c.in_dim, 0)[c.channel_offset + j]
                          .pow(2).sum()) for c in spec.consumers)
        assert float(scores[j]) == pytest.approx(total ** 0.5, rel=1e-12)


# ------------------------------------------------------------- optimizer
def test_kept_filters_keep_their_optimizer_rows():
    model = make_model()
    x, y = batch()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(2):
        opt.zero_grad()
        F.l1_loss(model(x), y).backward()
        opt.step()
    old_state = {id(p): {k: v.clone() for k, v in opt.state[p].items()} for p in model.parameters()}
    (report,) = prune(model, {Site("bottleneck", 1): [0, 5]}, "magnitude")
    assert remap_optimizer_state(opt, report.changes) == len(report.changes)
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(p) for p in model.parameters()}
    for ch in report.changes:
        kept = ch.index_map
        for key in ("exp_avg", "exp_avg_sq"):
            old = old_state[id(ch.old)][key]
            torch.testing.assert_close(opt.state[ch.new][key], old.index_select(ch.dim, kept),
                                       rtol=0, atol=0)
        assert float(opt.state[ch.new]["step"]) == float(old_state[id(ch.old)]["step"])
    opt.zero_grad()
    F.l1_loss(model(x), y).backward()
    opt.step()  # and the optimizer steps on the pruned shapes


# ------------------------------------------------------------- bad input
BAD = [
    (dict(n_remove=12), ["removing 12 of the 12 filters", "below the minimum width 1",
                         "at most 11"]),
    (dict(n_remove=3, min_width=10), ["leave 9", "minimum width 10", "at most 2"]),
    (dict(n_remove=0), ["n_remove must be an int >= 1, got 0"]),
    (dict(n_remove=1, criterion="l1"), ["'l1'", "magnitude, taylor"]),
    (dict(n_remove=1, criterion="taylor", batch_data=None, target_data=None),
     ["'taylor' needs batches"]),
    (dict(n_remove=1, min_width=0), ["min_width must be an int >= 1, got 0"]),
    (dict(conv_idx="t", n_remove=1), ["conv_idx must be 0", "1 (second conv)"]),
]


@pytest.mark.parametrize("kwargs,fragments", BAD, ids=[str(k) for k, _ in BAD])
def test_bad_pruning_arguments_change_nothing(kwargs, fragments):
    model = make_model()
    x, y = batch()
    before = snapshot(model)
    args = dict(layer_idx="bottleneck", conv_idx=0, batch_data=x, target_data=y)
    args.update(kwargs)
    with pytest.raises(ValueError) as err:
        model.prune_network(**args)
    for fragment in fragments:
        assert fragment in str(err.value), (fragment, str(err.value))
    assert_same_state(model, before)


BAD_OPTIONS = [
    (dict(prune_n=1), ["prune_n", "need a prune_schedule"]),
    (dict(prune_schedule="sometimes"), ["'sometimes'", "interval, epochs, exchange"]),
    (dict(prune_schedule="interval"), ["exactly one of prune_n and prune_fraction"]),
    (dict(prune_schedule="interval", prune_fraction=1.0), ["prune_fraction", "(0, 1)", "1.0"]),
    (dict(prune_schedule="interval", prune_fraction=0.0), ["(0, 1)"]),
    (dict(prune_schedule="interval", prune_n=0), ["prune_n must be an int >= 1 or None, got 0"]),
    (dict(prune_schedule="epochs", prune_n=1), ["prune_epochs"]),
    (dict(prune_schedule="epochs", prune_n=1, prune_epochs="2,x"), ["'2,x'"]),
    (dict(prune_schedule="interval", prune_n=1, prune_criterion="l1"), ["'l1'", "taylor"]),
    (dict(prune_schedule="interval", prune_n=1, prune_sites=["down_9"]), ["'down_9'"]),
    (dict(prune_schedule="exchange", growth_schedule="budget", target_chans=4,
          growth_end_epoch=2), ["exchange", "budget"]),
]


@pytest.mark.parametrize("options,fragments", BAD_OPTIONS, ids=[str(o) for o, _ in BAD_OPTIONS])
def test_bad_prune_options_raise_before_training(options, fragments):
    with pytest.raises(ValueError) as err:
        DynamicUnetModule(chans=2, num_pool_layers=2, **options)
    for fragment in fragments:
        assert fragment in str(err.value), (fragment, str(err.value))


# ------------------------------------------------------------- Lightning
@pytest.fixture(scope="module")
def knee(tmp_path_factory):
    root = tmp_path_factory.mktemp("prune_data")
    generate_dataset(root, challenges=("knee_singlecoil",), splits=("train",),
                     num_volumes=2, num_slices=2, recon_size=32, seed=0)
    return root / "knee"




PRUNE = dict(chans=4, num_pool_layers=2, prune_schedule="interval", prune_interval=2,
             prune_start_epoch=1, prune_n=1, prune_criterion="taylor",
             prune_sites=["down_0", "up_1:1"], growth_interval=2, growth_start_epoch=2,
             layers_to_grow=["bottleneck:0"], growth_batches=2, n_candidates=2)


def test_pruning_in_a_fit_resumes_like_the_uninterrupted_run(knee, tmp_path):
    pl.seed_everything(0)
    full = DynamicUnetModule(**PRUNE)
    trainer(tmp_path / "full", 4).fit(full, loader(knee))
    size = full.unet.get_network_size()
    # Pruned at epochs 1 and 3 (one filter per site each), grown at epoch 2.
    assert full.growth_callback.pruned_epochs == [1, 3]
    assert (size["down_0"]["conv1_out"], size["down_0"]["conv2_out"],
            size["up_1"]["conv2_out"]) == (2, 2, 2)
    assert size["bottleneck"]["conv1_out"] == 17
    assert len(full.growth_callback.prune_reports) == 6
    pl.seed_everything(0)
    half = DynamicUnetModule(**PRUNE)
    ck = ModelCheckpoint(dirpath=tmp_path / "half", save_last=True)
    trainer(tmp_path / "half", 4, callbacks=[ck], enable_checkpointing=True,
            max_steps=4).fit(half, loader(knee))
    pl.seed_everything(0)
    resumed = DynamicUnetModule(**PRUNE)
    trainer(tmp_path / "resumed", 4).fit(resumed, loader(knee),
                                        ckpt_path=str(tmp_path / "half" / "last.ckpt"))
    assert resumed.growth_callback.pruned_epochs == [1, 3]
    assert resumed.unet.get_network_size() == size
    ref = full.state_dict()
    for k, v in resumed.state_dict().items():
        torch.testing.assert_close(v, ref[k], rtol=0, atol=1e-6)


def test_exchange_moves_width_without_changing_the_filter_count(knee, tmp_path):
    module = DynamicUnetModule(chans=4, num_pool_layers=2, growth_interval=1,
                               growth_start_epoch=1, layers_to_grow=["auto"], auto_sites=2,
                               n_new=2, prune_schedule="exchange", prune_criterion="taylor",
                               growth_batches=2, n_candidates=2)
    count = lambda m: sum(w for site in m.unet.get_network_size().values() for w in site.values())
    before = count(module)
    trainer(tmp_path, 3).fit(module, loader(knee))
    cb = module.growth_callback
    assert len(cb.reports) == 4 and len(cb.prune_reports) >= 1  # 2 sites x 2 events
    assert sum(len(r.removed) for r in cb.prune_reports) == sum(r.n_added for r in cb.reports) == 8
    assert count(module) == before
    assert module.unet.get_network_size() != DynamicUnet(1, 1, 4, 2).get_network_size()


# ------------------------------------------------------------- plots
def test_curves_show_growth_and_pruning_events_apart(tmp_path):
    from fastmri_growth.evaluation.plot import plot_curves

    logged = tmp_path / "logged.csv"
    logged.write_text(
        "epoch,network/params,growth/filters_added,prune/filters_removed,val_metrics/ssim\n"
        "0,1000,,,0.5\n1,1200,4,,0.6\n2,1100,,2,0.62\n3,1100,2,2,0.63\n")
    res = plot_curves(logged, tmp_path / "a.png")
    assert (res.growth_epochs, res.prune_epochs) == ([1, 3], [2, 3])  # epoch 3: an exchange
    # Without the event columns (older logs): from the size's rises and falls.
    sizes = tmp_path / "sizes.csv"
    sizes.write_text("epoch,network/params\n0,1000\n1,1200\n2,1100\n3,1100\n4,1300\n")
    res = plot_curves(sizes, tmp_path / "b.png")
    assert (res.growth_epochs, res.prune_epochs) == ([1, 4], [2])
    assert (tmp_path / "b.png").read_bytes()[:4] == b"\x89PNG"


def test_pruning_logs_and_prints_its_events(knee, tmp_path, capsys):
    from pytorch_lightning.loggers import CSVLogger

    from fastmri_growth.evaluation.plot import plot_curves

    module = DynamicUnetModule(chans=4, num_pool_layers=2, prune_schedule="epochs",
                               prune_epochs="1", prune_n=1, prune_sites=["up_1:1"],
                               max_growth_steps=0)
    t = pl.Trainer(accelerator="cpu", max_epochs=2, logger=CSVLogger(str(tmp_path), name="csv"),
                   enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                   limit_train_batches=2, limit_val_batches=0, enable_checkpointing=False,
                   default_root_dir=str(tmp_path))
    t.fit(module, loader(knee))
    out = capsys.readouterr().out
    assert "[epoch 1] Pruning up_1 conv2: removed filter [" in out and "4 -> 3 filters" in out
    res = plot_curves(tmp_path / "csv", tmp_path / "c.png")
    assert (res.growth_epochs, res.prune_epochs) == ([], [1])
