"""Growth decisions: evidence over many batches, where (all sites in one pass, auto
sites), transposed-conv sites, what (random, gradmax, descent fan-out), when (the
budget schedule), and the first steps of new weights (seeding, ramp).

Equivalence checks run in float64 against brute force (one candidate added at a
time, forward, backward on the mean loss of the same batches).
"""

import copy
import math
import types

import pytest
import pytorch_lightning as pl
import torch
from fastmri.data import SliceDataset
from fastmri.data.subsample import RandomMaskFunc
from fastmri.data.transforms import UnetDataTransform
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.nn import functional as F
from torch.utils.data import DataLoader

from fastmri_growth.data.synthetic import generate_dataset
from fastmri_growth.growth import Site, generate_candidates, grow
from fastmri_growth.growth.engine import descent_fan_out, mean_loss
from fastmri_growth.growth.methods.gradmax import (
    FeatureMoments,
    GradMax,
    LinearisedProblem,
    feature_correlations,
)
from fastmri_growth.growth.optim import remap_optimizer_state
from fastmri_growth.growth.schedule import width_of
from fastmri_growth.growth.scoring import SITE_CRITERIA, brute_force_scores_at, site_value
from fastmri_growth.growth.statistics import collect
from fastmri_growth.models.dynamic_unet import DynamicUnet, score_sites
from fastmri_growth.models.unet_spec import default_widths
from fastmri_growth.pl_modules import DynamicUnetModule, GrowthCallback
from tests.fit_helpers import cpu_trainer as trainer, slice_loader as loader

F64 = torch.float64


def make_model(chans=3, pools=2, seed=0, in_chans=1, out_chans=1):
    torch.manual_seed(seed)
    return DynamicUnet(in_chans, out_chans, chans=chans, num_pool_layers=pools).to(F64).eval()


def make_batches(shapes=((2, 17, 23), (1, 16, 16), (3, 17, 23)), seed=1, chans=1):
    """Batches of different sizes (odd ones too): the statistics must not care."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, chans, h, w, generator=g, dtype=F64),
             torch.randn(n, chans, h, w, generator=g, dtype=F64)) for n, h, w in shapes]


def l1_of(net):
    return lambda b: F.l1_loss(net(b[0]), b[1])


def rel_err(a, b):
    return float(((a - b).abs() / b.abs().clamp_min(1e-30)).max())


# ------------------------------------------------------------ many batches
@pytest.mark.parametrize("site", ["down_0:1", "bottleneck:1", "up_1:1", "up_0:t", "up_1:0"])
def test_multi_batch_scores_equal_brute_force_on_the_mean_loss(site):
    model = make_model()
    batches = make_batches()
    s = Site(site.split(":")[0], int(site[-1]) if site[-1] in "01" else "t")
    cands = generate_candidates(model.site_spec(s), 4, torch.Generator().manual_seed(0))
    stats = collect(model, [model.site_spec(s)], batches, l1_of(model), candidates={s: cands})
    brute = brute_force_scores_at(model, s, cands, batches, l1_of)
    assert rel_err(stats.sites[s].scores(), brute) < 1e-12
    # One batch alone gives other scores: the mean really is over the batches.
    alone = collect(model, [model.site_spec(s)], batches[:1], l1_of(model), candidates={s: cands})
    assert rel_err(alone.sites[s].scores(), brute) > 1e-3
    # The grow_network API takes the same lists.
    m = copy.deepcopy(model)
    report = m.grow_network(s.layer, s.conv, [b[0] for b in batches], [b[1] for b in batches],
                            candidates=cands)
    assert rel_err(torch.tensor(report.scores, dtype=F64), brute) < 1e-12
    assert report.selected == [int(brute.argmax())]


def test_every_sites_one_pass_score_equals_its_brute_force():
    model = make_model()
    batches = make_batches(((2, 17, 23), (1, 16, 16)))
    ranked = score_sites(model, [b[0] for b in batches], [b[1] for b in batches],
                         n_candidates=3, generator=torch.Generator().manual_seed(0))
    assert {r.site for r in ranked} == set(model.growth_sites())  # t sites included
    for r in ranked:
        brute = brute_force_scores_at(model, r.site, r.candidates, batches, l1_of)
        assert rel_err(torch.tensor(r.scores, dtype=F64), brute) < 1e-12, r.site
        assert r.best_score == pytest.approx(float(brute.max()), rel=1e-12)
        spec = model.site_spec(r.site)
        assert r.params_per_filter == spec.params_per_filter()
        assert r.value == pytest.approx(site_value(r.best_score, r.params_per_filter,
                                                   r.flops_per_filter, "score_per_flop"))
    values = [r.value for r in ranked]
    assert values == sorted(values, reverse=True)


def test_flops_per_filter_equals_the_flop_counter():
    """A new filter's cost, as the ranking uses it, equals the measured FLOP increase."""
    from torch.utils.flop_counter import FlopCounterMode

    model = make_model(chans=2, pools=2)
    x = torch.randn(1, 1, 16, 16, dtype=F64)

    def forward_flops(m):
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            m(x)
        return fc.get_total_flops()

    ranked = score_sites(model, x, torch.randn_like(x), n_candidates=1)
    base = forward_flops(model)
    for r in ranked:
        m = copy.deepcopy(model)
        m.grow_network(r.site.layer, r.site.conv, x, torch.randn_like(x), n_candidates=1)
        assert forward_flops(m) - base == r.flops_per_filter, r.site


# ------------------------------------------------------- transposed convs
def test_transposed_conv_growth_inserts_the_slice_before_the_skip_channels():
    model = make_model(chans=2, pools=2)
    batches = make_batches(((2, 17, 23),))
    x = batches[0][0]
    before = model(x).detach()
    t_old = model.transpose_widths()[0]
    consumer_old = model.block("up_0").layers[0].weight.detach().clone()
    report = model.grow_network("up_0", "t", x, batches[0][1], n_new=2)
    assert report.size_after["up_0"]["transpose_out"] == t_old + 2 == model.transpose_widths()[0]
    w = model.block("up_0").layers[0].weight.detach()
    assert w.shape[1] == consumer_old.shape[1] + 2
    assert torch.equal(w[:, :t_old], consumer_old[:, :t_old])      # up-sampled channels
    assert torch.equal(w[:, t_old:t_old + 2], torch.zeros_like(w[:, :2]))  # the new slice
    assert torch.equal(w[:, t_old + 2:], consumer_old[:, t_old:])  # the skip, shifted
    assert torch.equal(model(x).detach(), before)
    # The grown net rebuilds from its state dict, transposed widths included.
    rebuilt = DynamicUnet.from_state_dict(model.state_dict()).eval()
    assert rebuilt.get_network_size() == model.get_network_size()
    assert torch.equal(rebuilt(x), model(x))


def test_grown_net_can_reach_a_fixed_nets_widths():
    small, big = make_model(chans=2, pools=2), make_model(chans=4, pools=2)
    x, y = make_batches(((1, 16, 16),))[0]
    target = big.get_network_size()
    for site in small.growth_sites():
        n = target[site.layer][site.width_key] - small.get_network_size()[site.layer][site.width_key]
        small.grow_network(site.layer, site.conv, x, y, method="random", n_new=n)
    assert small.get_network_size() == target == default_widths(4, 2)
    assert small.num_parameters() == big.num_parameters()
    big.load_state_dict(small.state_dict())  # identical shapes, key for key


# ------------------------------------------------------------ descent fan-out
def test_descent_lowers_the_scoring_loss_and_scale_zero_keeps_the_output():
    model = make_model(seed=3)
    batches = make_batches()
    x = batches[0][0]
    ref = model(x).detach()
    zero = copy.deepcopy(model)
    reports = grow(zero, [Site("bottleneck", 0), Site("up_1", 1)], "sample_select", batches,
                   l1_of(zero), n_new=2, generator=torch.Generator().manual_seed(0))
    changes = [c for r in reports for c in r.changes]
    loss0 = reports[0].loss
    # Zero fan-out: the function is kept (to float64 rounding of the longer sums).
    torch.testing.assert_close(zero(x).detach(), ref, rtol=0, atol=1e-13)
    # Scale 0 only: the line search keeps the function.
    assert descent_fan_out(zero, changes, batches, l1_of(zero), loss0, scales=(0.0,)) == (0.0, loss0)
    torch.testing.assert_close(zero(x).detach(), ref, rtol=0, atol=1e-13)
    # The real search: lower scoring loss, reported, and the new slices along -G.
    grown = copy.deepcopy(model)
    reports = grow(grown, [Site("bottleneck", 0), Site("up_1", 1)], "sample_select", batches,
                   l1_of(grown), n_new=2, generator=torch.Generator().manual_seed(0),
                   fan_out_init="descent")
    r = reports[0]
    assert r.fan_out_init == "descent" and r.details["descent_scale"] > 0
    assert r.loss_after < r.loss == pytest.approx(loss0)
    assert mean_loss(grown, batches, l1_of(grown)) == pytest.approx(r.loss_after, rel=1e-12)
    assert "(scoring loss" in str(r)
    for ch in (c for rr in reports for c in rr.changes if c.grad_hint is not None):
        new = ch.new.detach().index_select(ch.dim, ch.new_positions)
        cos = F.cosine_similarity(new.flatten(), -ch.grad_hint.flatten(), dim=0)
        assert float(cos) == pytest.approx(1.0, abs=1e-12)


def test_descent_applies_only_to_zero_fan_out_methods():
    model = make_model()
    x, y = make_batches(((1, 16, 16),))[0]
    with pytest.raises(ValueError, match="fan_out_init='descent'.*'split'"):
        model.grow_network("down_0", 1, x, y, method="split", fan_out_init="descent")
    with pytest.raises(ValueError, match="'sideways'.*zero, descent"):
        model.grow_network("down_0", 1, x, y, fan_out_init="sideways")


# ---------------------------------------------------------------- gradmax
def test_gradmax_pool_is_scored_exactly_and_kept_by_the_documented_rule():
    model = make_model(chans=3, seed=2)
    batches = make_batches(((2, 17, 23), (1, 16, 16)))
    site = Site("down_1", 1)
    spec = model.site_spec(site)
    method = GradMax(n_candidates=4, gradmax_directions=3)
    pre = collect(model, [spec], batches, l1_of(model),
                  accumulators={site: method.pre_accumulator(spec, 3)})
    pool = method.candidates(spec, 3, torch.Generator().manual_seed(0), pre=pre.sites[site])
    assert pool.shape[0] == 2 * 3 + 4 * 3  # both signs of 3 directions, 4 random per filter
    torch.testing.assert_close(pool[:3], -pool[3:6], rtol=0, atol=0)  # both signs
    # Exact scores of the pool.
    stats = collect(model, [spec], batches, l1_of(model), candidates={site: pool},
                    accumulators={site: FeatureMoments(pool)})
    brute = brute_force_scores_at(model, site, pool, batches, l1_of)
    assert rel_err(stats.sites[site].scores(), brute) < 1e-12
    # The feature correlations, recomputed from the feature maps themselves.
    rows = torch.cat([pool, spec.filter_rows()])
    feats = []
    for x, _ in batches:
        with torch.no_grad():
            captured = {}
            h = spec.conv.register_forward_hook(lambda m, i, o: captured.setdefault("x", i[0]))
            model(x)
            h.remove()
        feats.append(spec.features(captured["x"], rows).transpose(0, 1).flatten(1))
    # Moments averaged per batch (then over batches), as the pass does.
    m1 = sum(f.mean(1) for f in feats) / len(feats)
    m2 = sum(f @ f.T / f.shape[1] for f in feats) / len(feats)
    corr = feature_correlations(m1, m2).abs()
    k = pool.shape[0]
    # The greedy rule by hand: value = score * (1 - rho), rho = max |corr| with
    # existing filters and those already kept.
    report = copy.deepcopy(model).grow_network(
        site.layer, site.conv, [b[0] for b in batches], [b[1] for b in batches],
        method="gradmax", n_new=3, generator=torch.Generator().manual_seed(0),
        n_candidates=4, gradmax_directions=3)
    rho = corr[:k, k:].amax(dim=1)
    kept, rhos = [], []
    for _ in range(3):
        value = brute * (1 - rho)
        value[kept] = -math.inf
        j = int(value.argmax())
        kept.append(j)
        rhos.append(float(rho[j]))
        rho = torch.maximum(rho, corr[:k, j])
    assert report.selected == kept
    assert len(set(kept)) == 3
    assert report.details["feature_corr"] == pytest.approx(rhos, abs=1e-9)
    pair = corr[kept][:, kept].fill_diagonal_(0)
    assert report.details["max_corr_kept"] == pytest.approx(float(pair.max()), abs=1e-9)


def test_gradmax_directions_maximise_the_linearised_score():
    """The pool's linearised directions beat random ones on the problem they solve."""
    model = make_model(chans=3, seed=4)
    batches = make_batches()
    site = Site("bottleneck", 0)
    spec = model.site_spec(site)
    method = GradMax(n_candidates=8, gradmax_directions=2)
    pre = collect(model, [spec], batches, l1_of(model),
                  accumulators={site: method.pre_accumulator(spec, 1)}).sites[site]
    pool = method.candidates(spec, 1, torch.Generator().manual_seed(0), pre=pre)
    S = pre.extra["S"]
    A = torch.cat([pre.extra[f"A{i}"].flatten(1) for i in range(len(spec.consumers))], 1).T

    def linearised(w):
        w = w.flatten()
        return float((A @ w).norm() / (w @ S @ w).sqrt())

    best_direction = linearised(pool[0])
    assert all(best_direction >= linearised(w) - 1e-9 for w in pool[4:])
    assert isinstance(LinearisedProblem(torch.eye(2)), LinearisedProblem)


# ------------------------------------------------------------- auto sites
@pytest.mark.parametrize("criterion", SITE_CRITERIA)
def test_auto_grows_the_best_site_by_the_criterion(criterion):
    model = make_model(seed=5)
    x, y = make_batches(((2, 17, 23),))[0]
    ranked = score_sites(model, x, y, n_candidates=4, site_criterion=criterion,
                         generator=torch.Generator().manual_seed(9))
    report = model.grow_network("auto", None, x, y, n_candidates=4, site_criterion=criterion,
                                generator=torch.Generator().manual_seed(9))
    assert report.site_id == ranked[0].site
    assert report.details["site_value"] == pytest.approx(ranked[0].value)
    assert report.selected == [int(torch.tensor(ranked[0].scores).argmax())]


@pytest.mark.parametrize("method", ["sample_select", "random", "gradmax"])
def test_auto_sites_with_counts_from_the_site_score_add_exactly_those(method):
    # The budget schedule's auto mode: how many filters a chosen site gets
    # depends on its score (its parameters per filter), known after ranking.
    model = make_model(seed=7)
    batches = make_batches()
    before = model.get_network_size()
    wanted = {}

    def count(score):
        wanted[score.site] = 2 + score.params_per_filter % 3
        return wanted[score.site]

    options = {"n_candidates": 2} if method != "random" else {}
    reports = grow(model, None, method, batches, l1_of(model), n_new=count, auto_sites=3,
                   generator=torch.Generator().manual_seed(4), method_options=options)
    assert len(reports) == 3
    after = model.get_network_size()
    for r in reports:
        site = Site(r.layer_idx, r.conv_idx)
        grew = width_of(after, site) - width_of(before, site)
        assert grew == r.n_added == wanted[site] and wanted[site] > 1
        assert len(r.selected) == wanted[site]
    # Each chosen site scored a pool for its own count (sample_select: 2
    # candidates per filter; random: the filters it adds).
    per_filter = {"sample_select": 2, "random": 1}.get(method)
    if per_filter:
        assert all(len(r.scores) == per_filter * r.n_added for r in reports)


def test_auto_sites_bad_input():
    with pytest.raises(ValueError, match="Unknown growth method option.*bogus.*n_candidates"):
        grow(make_model(), None, "random", make_batches(), None, method_options={"bogus": 1})
    model = make_model()
    x, y = make_batches(((1, 16, 16),))[0]
    with pytest.raises(ValueError, match="conv_idx=None"):
        model.grow_network("auto", 0, x, y)
    with pytest.raises(ValueError, match="'per_byte'.*score, score_per_param, score_per_flop"):
        model.grow_network("auto", None, x, y, site_criterion="per_byte")
    with pytest.raises(ValueError, match="auto_sites=99 exceeds the 12 sites"):
        grow(model, None, "sample_select", [(x, y)], l1_of(model), auto_sites=99)
    with pytest.raises(ValueError, match="'split' has none"):
        grow(model, None, "split", [(x, y)], l1_of(model), auto_sites=1)


# ------------------------------------------------------- first steps of new weights
def test_grad_seeding_makes_the_first_rmsprop_step_about_lr():
    model = make_model(seed=6)
    batches = make_batches(((2, 17, 23),))
    lr = 1e-3
    opt = torch.optim.RMSprop(model.parameters(), lr=lr)
    for _ in range(3):  # some state to carry over
        opt.zero_grad()
        l1_of(model)(batches[0]).backward()
        opt.step()
    reports = grow(model, [Site("bottleneck", 0)], "sample_select", batches, l1_of(model),
                   generator=torch.Generator().manual_seed(0))
    changes = reports[0].changes
    remap_optimizer_state(opt, changes, seeding="grad")
    fan_out = [c for c in changes if c.grad_hint is not None]
    assert fan_out
    for c in fan_out:
        sq = opt.state[c.new]["square_avg"]
        seeded = sq.index_select(c.dim, c.new_positions)
        old_mean = float(opt.state[c.new]["square_avg"].index_select(
            c.dim, (c.index_map >= 0).nonzero().flatten()).mean())
        torch.testing.assert_close(seeded, torch.maximum(c.grad_hint.pow(2),
                                                         torch.full_like(seeded, old_mean)))
    before = {c.new: c.new.detach().clone() for c in fan_out}
    opt.zero_grad()
    l1_of(model)(batches[0]).backward()
    opt.step()
    for c in fan_out:
        step = (c.new.detach() - before[c.new]).index_select(c.dim, c.new_positions).abs()
        big = c.grad_hint.abs() ** 2 >= float(opt.state[c.new]["square_avg"].mean()) / 10
        assert float(step[big].max()) <= 1.02 * lr  # never the 10x of a zero-padded state


@pytest.mark.parametrize("method", ["sample_select", "gradmax", "random"])
def test_moment_seeding_is_the_mean_squared_per_batch_gradient(method):
    """``optimizer_seeding="moment"`` seeds each new fan-out entry with the mean
    over the scoring batches of its squared per-batch gradient, checked
    against brute force: one backward per batch of the grown network (zero
    fan-out, so the gradient there is the closed form's)."""
    model = make_model(seed=7)
    batches = make_batches()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    for b in batches:  # some state to carry over
        opt.zero_grad()
        l1_of(model)(b).backward()
        opt.step()
    sites = [Site("down_0", 1), Site("up_0", "t"), Site("bottleneck", 0)]
    options = {} if method == "random" else {"n_candidates": 3}
    reports = grow(model, sites, method, batches, l1_of(model), n_new=2,
                   generator=torch.Generator().manual_seed(0), method_options=options)
    changes = [c for r in reports for c in r.changes]
    fan_out = [c for c in changes if c.grad_sq_hint is not None]
    # down_0:1 feeds down_1 conv1 and the skip into up_1's conv1; up_0:t and
    # bottleneck:0 one consumer each.
    assert len(fan_out) == 4
    squares = {id(c.new): torch.zeros_like(c.grad_sq_hint) for c in fan_out}
    grads = {id(c.new): torch.zeros_like(c.grad_sq_hint) for c in fan_out}
    for b in batches:
        model.zero_grad()
        l1_of(model)(b).backward()
        for c in fan_out:
            g = c.new.grad.index_select(c.dim, c.new_positions)
            squares[id(c.new)] += g.pow(2) / len(batches)
            grads[id(c.new)] += g / len(batches)
    for c in fan_out:
        assert rel_err(c.grad_sq_hint, squares[id(c.new)]) < 1e-9
        assert rel_err(c.grad_hint, grads[id(c.new)]) < 1e-9
        # The per-batch second moment holds the batch-to-batch variance too.
        assert bool((c.grad_sq_hint >= c.grad_hint.pow(2) * (1 - 1e-12)).all())
        assert float((c.grad_sq_hint - c.grad_hint.pow(2)).max()) > 0
    remap_optimizer_state(opt, changes, seeding="moment")
    for c in fan_out:
        sq = opt.state[c.new]["square_avg"]
        old_mean = float(sq.index_select(c.dim, (c.index_map >= 0).nonzero().flatten()).mean())
        torch.testing.assert_close(sq.index_select(c.dim, c.new_positions),
                                   torch.maximum(c.grad_sq_hint,
                                                 torch.full_like(c.grad_sq_hint, old_mean)))


def test_update_ramp_scales_the_first_steps_of_new_weights():
    from fastmri_growth.growth.ramp import RampEntry

    cb = GrowthCallback(new_filter_ramp_steps=4)
    module = torch.nn.Module()
    module.w = torch.nn.Parameter(torch.zeros(3))
    p = module.w
    cb.ramp.entries["w"] = RampEntry(torch.tensor([False, True, True]), 0, 1)
    trainer = types.SimpleNamespace(current_epoch=1)
    seen = []
    for step in range(1, 6):
        cb.on_before_optimizer_step(trainer, module, None)
        with torch.no_grad():
            p += 1.0  # the optimizer's update
        before = p.detach().clone()
        cb.on_train_batch_end(trainer, module, None, None, 0)
        seen.append((p.detach() - before + 1.0).tolist())
    # Old entry: full updates; new entries: 1/4, 2/4, 3/4, 1, 1 of theirs.
    assert [s[0] for s in seen] == [1.0] * 5
    assert [s[1] for s in seen] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0])


# ---------------------------------------------------------- budget schedule
@pytest.fixture(scope="module")
def knee(tmp_path_factory):
    root = tmp_path_factory.mktemp("decisions_data")
    generate_dataset(root, challenges=("knee_singlecoil",), splits=("train", "val"),
                     num_volumes=2, num_slices=2, recon_size=32, seed=0)
    return root / "knee"




BUDGET = dict(chans=2, num_pool_layers=2, growth_schedule="budget", target_chans=4,
              growth_start_epoch=1, growth_interval=1, growth_end_epoch=3, growth_batches=3,
              n_candidates=2)


@pytest.fixture(scope="module")
def budget_runs(knee, tmp_path_factory):
    root = tmp_path_factory.mktemp("budget")
    pl.seed_everything(0)
    full = DynamicUnetModule(**BUDGET)
    widths = {}

    class Widths(pl.Callback):
        def on_train_epoch_end(self, t, m):
            widths[t.current_epoch] = m.unet.get_network_size()

    trainer(root / "full", 5, callbacks=[Widths()]).fit(full, loader(knee))
    pl.seed_everything(0)
    half = DynamicUnetModule(**BUDGET)
    ck = ModelCheckpoint(dirpath=root / "half", save_last=True)
    # A run stopped after epoch 1 (max_epochs=2 with the budget ending at 3:
    # the end-epoch check is the command line's, run with the full max_epochs).
    trainer(root / "half", 5, callbacks=[ck], enable_checkpointing=True,
            max_steps=4).fit(half, loader(knee))
    pl.seed_everything(0)
    resumed = DynamicUnetModule(**BUDGET)
    trainer(root / "resumed", 5).fit(resumed, loader(knee), ckpt_path=str(root / "half" / "last.ckpt"))
    return dict(full=full, widths=widths, half=half, resumed=resumed)


def test_budget_schedule_reaches_its_target_widths_at_its_end_epoch(budget_runs):
    widths = budget_runs["widths"]
    target = default_widths(4, 2)
    assert widths[0] == default_widths(2, 2)
    assert widths[1] != target and widths[2] != target
    assert widths[3] == widths[4] == target
    assert budget_runs["full"].schedule.state["grown_epochs"] == [1, 2, 3]
    # Linear in width: a third of the way at the first event (rounded per site).
    assert widths[1]["bottleneck"]["conv1_out"] == 8 + round(8 / 3)
    assert budget_runs["full"].unet.num_parameters() == DynamicUnet(1, 1, 4, 2).num_parameters()


def test_budget_schedule_resumes_mid_way_like_the_uninterrupted_run(budget_runs):
    full, resumed = budget_runs["full"], budget_runs["resumed"]
    assert resumed.schedule.state["grown_epochs"] == [1, 2, 3]
    assert resumed.schedule.state["budget"] == full.schedule.state["budget"]
    ref = full.state_dict()
    for k, v in resumed.state_dict().items():
        torch.testing.assert_close(v, ref[k], rtol=0, atol=1e-6)


def test_budget_with_auto_sites_grows_no_site_past_its_target(knee, tmp_path):
    from fastmri_growth.growth.schedule import budget_targets_for

    pl.seed_everything(0)
    module = DynamicUnetModule(**dict(BUDGET, auto_sites=2))
    start, target, params = budget_targets_for(module.unet, module.schedule.sites, target_chans=4)
    trainer(tmp_path, 5).fit(module, loader(knee))
    size = module.unet.get_network_size()
    grown = {s.key: width_of(size, s) for s in module.schedule.sites}
    assert all(grown[k] <= target[k] for k in target)
    assert sum(grown.values()) > sum(start.values())  # it did grow
    assert module.unet.num_parameters() <= params
    # Each event grew two sites.
    assert len(module.growth_reports) == 2 * len(module.schedule.state["grown_epochs"])


def test_growth_batches_draws_reproducible_extra_batches(knee):
    cb = DynamicUnetModule(chans=2, num_pool_layers=2, growth_batches=3).growth_callback
    t = types.SimpleNamespace(train_dataloader=loader(knee), global_rank=0,
                              strategy=types.SimpleNamespace(batch_to_device=lambda b: b))
    a, b = cb.extra_batches(t, 1), cb.extra_batches(t, 1)
    assert len(a) == 2
    assert [x.fname for x in a] == [x.fname for x in b]
    assert [int(x.slice_num) for x in a] == [int(x.slice_num) for x in b]
    assert all(torch.equal(x.image, y.image) for x, y in zip(a, b))
    other = cb.extra_batches(types.SimpleNamespace(**dict(vars(t), global_rank=1)), 1)
    assert [(x.fname, int(x.slice_num)) for x in other] != [(x.fname, int(x.slice_num)) for x in a]
    # Random training masks (use_seed=False): the draw leaves their random state alone.
    mask = RandomMaskFunc([0.08], [4])
    ds = SliceDataset(knee / "singlecoil_train", challenge="singlecoil", use_dataset_cache=False,
                      transform=UnetDataTransform("singlecoil", mask_func=mask, use_seed=False))
    state = mask.rng.get_state()[1].copy()
    t.train_dataloader = DataLoader(ds, batch_size=1)
    assert len(cb.extra_batches(t, 1)) == 2
    assert (mask.rng.get_state()[1] == state).all()


def test_batch_filter_decides_which_scoring_batches_an_event_uses(knee, tmp_path, capsys):
    seen, widths = [], {}

    def keep_first_only(batches, epoch, what, module):
        seen.append((epoch, what, len(batches)))
        return [] if epoch == 1 else batches[:1]

    class Widths(pl.Callback):
        def on_train_epoch_end(self, t, m):
            widths[t.current_epoch] = m.unet.get_network_size()

    pl.seed_everything(0)
    module = DynamicUnetModule(chans=2, num_pool_layers=2, growth_batches=3, n_new=1,
                               layers_to_grow=["down_0:0"], growth_start_epoch=1)
    module.growth_callback.batch_filter = keep_first_only
    trainer(tmp_path, 3, callbacks=[Widths()]).fit(module, loader(knee))
    assert seen == [(1, "growth", 3), (2, "growth", 3)]
    # Epoch 1: no batch left, no event; epoch 2: one event on the one batch kept.
    assert widths[1] == widths[0] and widths[2]["down_0"]["conv1_out"] == 3
    assert module.schedule.state["grown_epochs"] == [2]
    (line,) = [x for x in capsys.readouterr().out.splitlines() if "network:" in x]
    assert line.startswith("[epoch 2]") and line.endswith("on 1 scoring batch")


# --------------------------------------------------------------- bad input
BAD = [
    (dict(growth_batches=0), ["growth_batches", "0", ">= 1"]),
    (dict(auto_sites=0), ["auto_sites", "0"]),
    (dict(auto_sites=99), ["auto_sites", "99", "[1, 12]"]),
    (dict(layers_to_grow=["down_0"], auto_sites=3), ["auto_sites", "3", "[1, 2]"]),
    (dict(layers_to_grow=["auto", "down_0"]), ["'auto'", "alone"]),
    (dict(fan_out_init="sideways"), ["'sideways'", "zero", "descent"]),
    (dict(growth_method="split", fan_out_init="descent"), ["descent", "'split'"]),
    (dict(optimizer_seeding="hope"), ["'hope'", "mean", "grad", "moment", "zero"]),
    (dict(site_criterion="per_byte"), ["'per_byte'", "score_per_flop"]),
    (dict(new_filter_ramp_steps=-1), ["new_filter_ramp_steps", "-1"]),
    (dict(growth_schedule="budget", target_chans=8), ["growth_end_epoch"]),
    (dict(growth_schedule="budget", growth_end_epoch=3), ["exactly one of target_chans"]),
    (dict(growth_schedule="budget", growth_end_epoch=3, target_chans=8, target_params=10 ** 6),
     ["exactly one"]),
    (dict(growth_schedule="budget", growth_end_epoch=3, target_chans=1),
     ["target_chans=1", "below", "chans=2"]),
    (dict(growth_schedule="budget", growth_end_epoch=3, target_params=10),
     ["target_params=10", "below"]),
    (dict(growth_schedule="budget", growth_start_epoch=4, growth_end_epoch=3, target_chans=4),
     ["growth_end_epoch", ">= growth_start_epoch (4)", "3"]),
    (dict(target_chans=4), ["target_chans", "only apply to growth_schedule='budget'"]),
    (dict(growth_end_epoch=4), ["growth_end_epoch", "only apply"]),
]


@pytest.mark.parametrize("options,fragments", BAD, ids=[str(o) for o, _ in BAD])
def test_bad_decision_options_raise_before_training(options, fragments):
    with pytest.raises(ValueError) as err:
        DynamicUnetModule(**dict(dict(chans=2, num_pool_layers=2), **options))
    for fragment in fragments:
        assert fragment in str(err.value), (fragment, str(err.value))


def test_budget_end_epoch_past_max_epochs_fails_before_training(knee, tmp_path):
    module = DynamicUnetModule(**BUDGET)
    with pytest.raises(ValueError, match="growth_end_epoch=3 is not before max_epochs=3"):
        trainer(tmp_path, 3).fit(module, loader(knee))
    assert module.schedule.state["grown_epochs"] == []

