"""Optimizer-aware scores: the loss decrease a new filter's first optimizer step realises.

``candidate_score="optimizer"`` scores a candidate by ``sum G**2 / D`` with
``D = sqrt(s) + eps`` and ``s`` the second moment its fan-out slice will be
seeded with, so that ``lr * score**2`` is the first step's loss decrease.
These tests take that step for real (torch's RMSprop and Adam on the grown
network, float64) and compare.
"""

import copy

import pytest
import pytorch_lightning as pl
import torch
from torch.nn import functional as F

from fastmri_growth.data.synthetic import generate_dataset
from fastmri_growth.growth import Site, generate_candidates, grow
from fastmri_growth.growth.optim import Preconditioner, preconditioner_for, remap_optimizer_state
from fastmri_growth.growth.scoring import score_sites
from fastmri_growth.growth.statistics import collect, precondition
from fastmri_growth.models.dynamic_unet import DynamicUnet
from fastmri_growth.pl_modules import DynamicUnetModule
from fastmri_growth.pl_modules import growth_callback as callback_module
from tests.fit_helpers import cpu_trainer, slice_loader

F64 = torch.float64


def make_model(seed=0):
    torch.manual_seed(seed)
    return DynamicUnet(1, 1, chans=3, num_pool_layers=2).to(F64).eval()


def make_batches(seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(2, 1, 16, 16, generator=g, dtype=F64),
             torch.randn(2, 1, 16, 16, generator=g, dtype=F64)) for _ in range(3)]


def mse_of(net):
    # Smooth, so that a small step's decrease is first order.
    return lambda b: F.mse_loss(net(b[0]), b[1])


def mean_loss(net, batches):
    with torch.no_grad():
        return sum(float(mse_of(net)(b)) for b in batches) / len(batches)


def trained(optimizer_cls, seed=0, **kw):
    model = make_model(seed)
    opt = optimizer_cls(model.parameters(), **kw)
    for b in make_batches(seed + 10):  # state to carry over
        opt.zero_grad()
        mse_of(model)(b).backward()
        opt.step()
    return model, opt


def realised_first_step(model, opt, site, cand, batches, seeding):
    """Add ``cand`` alone (zero fan-out), seed the optimizer, take one step of the
    new weights on the mean loss of ``batches``: the loss decrease."""
    model, opt = copy.deepcopy((model, opt))
    reports = grow(model, [site], "sample_select", batches, mse_of(model),
                   candidates={site: cand})
    changes = reports[0].changes
    remap_optimizer_state(opt, changes, seeding=seeding)
    for state in opt.state.values():
        if "exp_avg" in state:  # Adam's momentum would move the old weights too
            state["exp_avg"].zero_()
    before = mean_loss(model, batches)
    opt.zero_grad()
    (sum(mse_of(model)(b) for b in batches) / len(batches)).backward()
    new = {id(c.new): c for c in changes}
    for p in model.parameters():
        # Only the new entries move: the prediction is about them.
        c = new.get(id(p))
        mask = torch.zeros_like(p)
        if c is not None:
            mask.index_fill_(c.dim, c.new_positions, 1.0)
        p.grad.mul_(mask)
    opt.step()
    return before - mean_loss(model, batches)


@pytest.mark.parametrize("seeding", ["grad", "moment", "mean", "zero"])
@pytest.mark.parametrize("site", ["down_0:1", "bottleneck:0", "up_0:t"])
def test_optimizer_score_predicts_the_first_rmsprop_steps_loss_decrease(seeding, site):
    model, opt = trained(torch.optim.RMSprop, lr=1e-7)
    batches = make_batches()
    s = Site(site.split(":")[0], int(site[-1]) if site[-1] in "01" else "t")
    cands = generate_candidates(model.site_spec(s), 4, torch.Generator().manual_seed(0))
    spec = model.site_spec(s)
    stats = collect(model, [spec], batches, mse_of(model), candidates={s: cands})
    plain = stats.sites[s].scores().clone()
    precondition(stats, [spec], preconditioner_for(opt, seeding))
    scores = stats.sites[s].scores()
    lr = opt.param_groups[0]["lr"]
    for k in range(cands.shape[0]):
        realised = realised_first_step(model, opt, s, cands[k:k + 1], batches, seeding)
        predicted = lr * float(scores[k]) ** 2
        assert realised == pytest.approx(predicted, rel=2e-3), (k, realised, predicted)
        # The plain gradient norm predicts plain SGD's step, not this one.
        assert lr * float(plain[k]) ** 2 != pytest.approx(realised, rel=0.5)


def test_optimizer_score_predicts_adams_first_step_up_to_one_factor_per_parameter():
    """Adam's bias correction and (1 - beta1) scale every entry alike: the
    realised decreases are proportional to the predicted ones."""
    model, opt = trained(torch.optim.Adam, lr=1e-6)
    batches = make_batches()
    s = Site("down_1", 1)
    spec = model.site_spec(s)
    cands = generate_candidates(spec, 5, torch.Generator().manual_seed(3))
    stats = collect(model, [spec], batches, mse_of(model), candidates={s: cands})
    precondition(stats, [spec], preconditioner_for(opt, "grad"))
    predicted = stats.sites[s].scores().pow(2)
    realised = torch.tensor([realised_first_step(model, opt, s, cands[k:k + 1], batches, "grad")
                             for k in range(5)], dtype=F64)
    ratio = realised / predicted
    assert float(ratio.max() / ratio.min()) < 1.03
    assert int(realised.argmax()) == int(predicted.argmax())


def test_no_adaptive_state_leaves_the_gradient_norm():
    model, opt = trained(torch.optim.SGD, lr=1e-3)
    batches = make_batches()
    g = torch.Generator().manual_seed(0)
    plain = score_sites(model, batches, mse_of(model), n_candidates=3, criterion="score",
                        generator=g)
    for pre in (preconditioner_for(opt, "grad"), preconditioner_for(None), None):
        scored = score_sites(model, batches, mse_of(model), n_candidates=3, criterion="score",
                             generator=torch.Generator().manual_seed(0), preconditioner=pre)
        assert [r.site for r in scored] == [r.site for r in plain]
        for a, b in zip(scored, plain):
            assert a.scores == b.scores


def test_grad_seeding_above_the_floor_scores_by_the_l1_norm():
    """With seeded s = G**2 (floor 0, eps 0) the step is lr * sign(G): score**2 = ||G||_1."""
    model = make_model()
    batches = make_batches()
    s = Site("down_0", 1)
    spec = model.site_spec(s)
    cands = generate_candidates(spec, 4, torch.Generator().manual_seed(0))
    stats = collect(model, [spec], batches, mse_of(model), candidates={s: cands})
    pre = Preconditioner({id(c.module.weight): 0.0 for c in spec.consumers}, "grad", eps=0.0)
    precondition(stats, [spec], pre)
    l1 = sum(g.flatten(1).abs().sum(1) for g in stats.sites[s].fan_out_grads)
    torch.testing.assert_close(stats.sites[s].scores().pow(2), l1)


def test_preconditioner_refuses_an_unknown_seeding():
    with pytest.raises(ValueError, match="Unknown second-moment seeding 'nope'; valid: mean, grad"):
        preconditioner_for(None, "nope")


def test_candidate_score_optimizer_reaches_the_engine_through_the_callback(tmp_path, monkeypatch):
    generate_dataset(tmp_path, challenges=("knee_singlecoil",), splits=("train",),
                     num_volumes=1, num_slices=2, recon_size=32, seed=0)
    seen = []
    real_grow = callback_module.grow

    def spy(net, *args, **kwargs):
        seen.append(kwargs.get("preconditioner"))
        return real_grow(net, *args, **kwargs)

    monkeypatch.setattr(callback_module, "grow", spy)
    for score in ("optimizer", "grad_norm"):
        pl.seed_everything(0)
        module = DynamicUnetModule(chans=2, num_pool_layers=2, growth_start_epoch=1,
                                   max_growth_steps=1, n_candidates=2, growth_batches=1,
                                   candidate_score=score)
        assert module.hparams.candidate_score == score
        cpu_trainer(tmp_path / score, 2).fit(module, slice_loader(tmp_path / "knee"))
    optimizer_pre, plain = seen
    assert plain is None
    assert isinstance(optimizer_pre, Preconditioner)
    assert optimizer_pre.seeding == "grad"
    # Every parameter has RMSprop state by then (epoch 1's first batch).
    assert len(optimizer_pre.floors) == len(list(module.parameters()))
