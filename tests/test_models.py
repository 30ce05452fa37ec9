"""Tests of the pure-torch growing U-Net (``fastmri_growth.models``).

Equivalence checks first: a DynamicUnet is fastMRI's Unet (same keys, same
outputs); growth keeps the function at every site; the one-pass scores equal
brute-force autograd. Then the optimizer, the report, the sizes, and the bad
input table. Nets are tiny (chans 2-8, images up to 67x65) and comparisons
against brute force run in float64.
"""

import copy
import random
import re

import pytest
import torch
from torch.nn import functional as F

from fastmri.models import Unet

from fastmri_growth.growth.candidates import generate_candidates
from fastmri_growth.growth.methods import METHODS as GROWTH_METHODS
from fastmri_growth.growth.methods.split import DEFAULT_SPLIT_NOISE
from fastmri_growth.growth.optim import grow_optimizer_state
from fastmri_growth.growth.report import GrowthReport
from fastmri_growth.models.dynamic_unet import DynamicUnet, brute_force_scores, score_candidates
from fastmri_growth.models.unet_spec import architecture_from_state_dict, layer_ids

F64 = torch.float64
CONV_IDXS = (0, 1)


# ----------------------------------------------------------------- helpers
def make_model(in_chans=2, out_chans=2, chans=3, num_pool_layers=2, dtype=F64, seed=0, **kwargs):
    """A seeded DynamicUnet in ``dtype``, in eval mode."""
    torch.manual_seed(seed)
    model = DynamicUnet(in_chans, out_chans, chans=chans, num_pool_layers=num_pool_layers, **kwargs)
    return model.to(dtype).eval()


def make_batch(in_chans=2, out_chans=2, h=17, w=23, n=2, dtype=F64, seed=1):
    """A seeded (image, target) pair; target `(N, out_chans, H, W)`."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, in_chans, h, w, generator=g, dtype=dtype)
    y = torch.randn(n, out_chans, h, w, generator=g, dtype=dtype)
    return x, y


def size_for(num_pool_layers):
    """Odd image sizes whose bottleneck keeps more than one pixel."""
    return {1: (17, 23), 2: (17, 23), 3: (17, 23), 4: (33, 35), 5: (67, 65)}[num_pool_layers]


def sites(num_pool_layers):
    return [(lid, ci) for lid in layer_ids(num_pool_layers) for ci in CONV_IDXS]


def eval_out(model, x):
    with torch.no_grad():
        return model(x)


def rel_max_change(new, ref):
    """Max abs change relative to the output's scale (its max abs)."""
    return ((new - ref).abs().max() / ref.abs().max()).item()


def state_snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_state_unchanged(model, before):
    after = model.state_dict()
    assert list(after) == list(before)
    for k, v in before.items():
        assert after[k].shape == v.shape, k
        assert torch.equal(after[k], v), k


def block_prefix(lid, P):
    """State-dict prefix of a layer id's ConvBlock (written out independently of the code)."""
    if lid == "bottleneck":
        return "conv"
    part, idx = lid.split("_")
    idx = int(idx)
    if part == "down":
        return f"down_sample_layers.{idx}"
    return f"up_conv.{idx}.0" if idx == P - 1 else f"up_conv.{idx}"


def expected_added_params(model, lid, ci, n_new):
    """Weights added by growing one conv by ``n_new`` filters, from the fastMRI topology."""
    P = model.num_pool_layers
    sd = model.state_dict()
    pre = block_prefix(lid, P)
    conv_w = sd[f"{pre}.layers.{4 * ci}.weight"]
    added = n_new * conv_w.shape[1] * 9  # fan-in of the new filters
    if ci == 0:
        added += n_new * sd[f"{pre}.layers.4.weight"].shape[0] * 9  # conv2 of the block
    elif lid.startswith("down_"):
        i = int(lid.split("_")[1])
        nxt = f"down_{i + 1}" if i + 1 < P else "bottleneck"
        dec = f"up_{P - 1 - i}"
        added += n_new * sd[f"{block_prefix(nxt, P)}.layers.0.weight"].shape[0] * 9
        added += n_new * sd[f"{block_prefix(dec, P)}.layers.0.weight"].shape[0] * 9
    elif lid == "bottleneck":
        added += n_new * sd["up_transpose_conv.0.layers.0.weight"].shape[1] * 4
    else:
        j = int(lid.split("_")[1])
        if j + 1 < P:
            added += n_new * sd[f"up_transpose_conv.{j + 1}.layers.0.weight"].shape[1] * 4
        else:
            added += n_new * sd[f"up_conv.{P - 1}.1.weight"].shape[0]
    return added


# ------------------------------------------------------ 1. fastMRI equivalence
EQUIV_CONFIGS = [
    # in, out, chans, pools, drop, H, W
    (1, 1, 2, 1, 0.0, 17, 23),
    (2, 2, 3, 1, 0.1, 17, 23),
    (1, 2, 4, 2, 0.0, 17, 23),
    (2, 1, 8, 2, 0.1, 33, 35),
    (1, 1, 5, 3, 0.1, 17, 23),
    (2, 2, 2, 3, 0.0, 33, 35),
    (1, 1, 2, 4, 0.0, 33, 35),
    (2, 2, 3, 4, 0.1, 33, 35),
    (1, 1, 2, 5, 0.0, 67, 65),
    (2, 1, 2, 5, 0.1, 67, 65),
]


@pytest.mark.parametrize("in_chans,out_chans,chans,pools,drop,h,w", EQUIV_CONFIGS)
def test_matches_fastmri_unet(in_chans, out_chans, chans, pools, drop, h, w):
    torch.manual_seed(0)
    unet = Unet(in_chans, out_chans, chans=chans, num_pool_layers=pools, drop_prob=drop).eval()
    sd = unet.state_dict()
    x = torch.randn(2, in_chans, h, w)
    ref = eval_out(unet, x)
    assert ref.shape == (2, out_chans, h, w)

    model = DynamicUnet(in_chans, out_chans, chans=chans, num_pool_layers=pools, drop_prob=drop)
    assert list(model.state_dict()) == list(sd)
    assert all(model.state_dict()[k].shape == v.shape for k, v in sd.items())
    assert model.num_parameters() == sum(p.numel() for p in unet.parameters())
    model.load_state_dict(sd, strict=True)
    assert torch.equal(eval_out(model.eval(), x), ref)

    built = DynamicUnet.from_unet(unet).eval()
    assert built.drop_prob == drop and built.chans == chans
    assert (built.in_chans, built.out_chans, built.num_pool_layers) == (in_chans, out_chans, pools)
    assert torch.equal(eval_out(built, x), ref)

    for prefix in ("", "unet."):
        rebuilt = DynamicUnet.from_state_dict({prefix + k: v for k, v in sd.items()}).eval()
        assert list(rebuilt.state_dict()) == list(sd)
        assert torch.equal(eval_out(rebuilt, x), ref)


def test_fastmri_unet_module_checkpoint_state_dict_loads():
    """A fastMRI UnetModule's state dict (keys ``unet.*``) rebuilds the same net."""
    torch.manual_seed(0)
    unet = Unet(1, 1, chans=4, num_pool_layers=2).eval()
    module_sd = {f"unet.{k}": v for k, v in unet.state_dict().items()}
    spec = architecture_from_state_dict(module_sd)
    assert spec["in_chans"] == 1 and spec["out_chans"] == 1 and spec["num_pool_layers"] == 2
    assert spec["transpose_widths"] == [8, 4]
    model = DynamicUnet.from_state_dict(module_sd).eval()
    x = torch.randn(1, 1, 33, 35)
    assert torch.equal(eval_out(model, x), eval_out(unet, x))


# --------------------------------------------- 2. function preservation
GROW_KW = {"split": {"split_noise": 0.0}}


def _preservation_failures(model, x, y, method, n_new, tol):
    """Every site, transposed convs included: the output after growing it alone."""
    ref = eval_out(model, x)
    bad = []
    for site in model.growth_sites():
        lid, ci = site.layer, site.conv
        m = copy.deepcopy(model)
        report = m.grow_network(lid, ci, x, y, method=method, n_new=n_new,
                                generator=torch.Generator().manual_seed(7),
                                **GROW_KW.get(method, {}))
        key = site.width_key
        assert report.size_after[lid][key] == report.size_before[lid][key] + n_new
        out = eval_out(m, x)
        err = rel_max_change(out, ref)
        if not err <= tol:
            bad.append((lid, ci, err))
    return bad


@pytest.mark.parametrize("method", sorted(GROWTH_METHODS))
@pytest.mark.parametrize("pools", [1, 2, 3, 4])
def test_growth_preserves_output_at_every_site(pools, method):
    model = make_model(chans=3, num_pool_layers=pools)
    x, y = make_batch(2, 2, *size_for(pools))
    bad = _preservation_failures(model, x, y, method, 1, 1e-6)
    assert not bad, f"output changed (site, conv, rel max abs change): {bad}"


@pytest.mark.parametrize("method", sorted(GROWTH_METHODS))
def test_growth_of_three_filters_preserves_output_at_every_site(method):
    model = make_model(chans=3, num_pool_layers=2, n_candidates=8)
    x, y = make_batch(2, 2, 17, 23)
    bad = _preservation_failures(model, x, y, method, 3, 1e-6)
    assert not bad, f"output changed (site, conv, rel max abs change): {bad}"


@pytest.mark.parametrize("method", sorted(GROWTH_METHODS))
def test_growth_preserves_output_in_float32(method):
    # float32 roundoff: sample_select adds exact zeros; split's fan-out shares
    # are not exact in float32, so allow a few ulps amplified by depth.
    model = make_model(chans=3, num_pool_layers=3, dtype=torch.float32)
    x, y = make_batch(2, 2, 17, 23, dtype=torch.float32)
    tol = 1e-6 if method == "sample_select" else 1e-5
    bad = _preservation_failures(model, x, y, method, 1, tol)
    assert not bad, f"output changed (site, conv, rel max abs change): {bad}"


def test_long_mixed_growth_sequence_keeps_output_and_sizes():
    rng = random.Random(1234)
    model = make_model(chans=2, num_pool_layers=3, n_candidates=4)
    x, y = make_batch(2, 2, 17, 23)
    ref = eval_out(model, x)
    all_sites = sites(3)
    expected = model.get_network_size()
    params = model.num_parameters()
    for step in range(30):
        lid, ci = rng.choice(all_sites)
        method = rng.choice(["sample_select", "split"])
        n_new = rng.randint(1, 3)
        report = model.grow_network(lid, ci, x, y, method=method, n_new=n_new,
                                    generator=torch.Generator().manual_seed(step),
                                    **GROW_KW.get(method, {}))
        expected[lid][f"conv{ci + 1}_out"] += n_new
        size = model.get_network_size()
        assert size == expected, f"step {step}"
        assert architecture_from_state_dict(model.state_dict())["widths"] == size
        assert report.size_after == size
        assert report.params_before == params
        params = model.num_parameters()
        assert report.params_after == params
        err = rel_max_change(eval_out(model, x), ref)
        assert err <= 1e-6, f"step {step} ({lid}, {ci}, {method}, {n_new}): {err}"
    # The grown net also runs in train mode.
    model.train()
    assert model(x).shape == (2, 2, 17, 23)


# ----------------------------------------------------- 3. split noise
def _split(model, lid, ci, x, y, noise, seed=0):
    m = copy.deepcopy(model)
    report = m.grow_network(lid, ci, x, y, method="split", split_noise=noise,
                            generator=torch.Generator().manual_seed(seed))
    return m, report


def test_default_split_noise_keeps_output_change_small():
    """Default noise moves the output by < 1e-3 of its scale at every site.

    Measured as the max abs output change (eval mode) divided by the max abs
    output, float64, fixed seeds, every site of two small nets.
    """
    assert DEFAULT_SPLIT_NOISE > 0
    worst = []
    for seed, pools in ((0, 2), (1, 3)):
        model = make_model(in_chans=1, out_chans=1, chans=4, num_pool_layers=pools, seed=seed)
        x, y = make_batch(1, 1, 32, 32, seed=seed + 10)
        ref = eval_out(model, x)
        for lid, ci in sites(pools):
            m, _ = _split(model, lid, ci, x, y, None, seed)
            worst.append((rel_max_change(eval_out(m, x), ref), pools, lid, ci))
    worst.sort(reverse=True)
    assert worst[0][0] < 1e-3, f"largest relative output changes: {worst[:4]}"


def test_split_noise_is_symmetric_and_second_order():
    """Copies get w + n and w - n with |n| = eps |w|; the output moves as eps^2.

    The ratio is measured at small eps, where no pre-activation crosses
    LeakyReLU's kink (there the change is first order on the crossing pixels).
    """
    model = make_model(in_chans=1, out_chans=1, chans=4, num_pool_layers=2)
    x, y = make_batch(1, 1, 32, 32)
    ref = eval_out(model, x)
    eps = 1e-5
    for lid, ci in sites(2):
        m, report = _split(model, lid, ci, x, y, eps)
        old_w = model.conv_layer(lid, ci).weight
        new_w = m.conv_layer(lid, ci).weight
        (i,), c = report.selected, old_w.shape[0]
        a, b = new_w[i].detach(), new_w[c].detach()
        w = old_w[i].detach()
        torch.testing.assert_close((a + b) / 2, w, rtol=0, atol=1e-14)
        assert torch.allclose((a - w).norm() / w.norm(), torch.tensor(eps, dtype=F64), rtol=1e-9)
        # Unchanged filters are untouched.
        others = [k for k in range(c) if k != i]
        assert torch.equal(new_w[others], old_w[others])
        # Both copies share the old fan-out equally.
        for cons_old, cons_new in zip(model.consumers(lid, ci), m.consumers(lid, ci)):
            dim = cons_old.in_dim
            col = cons_old.module.weight.detach().select(dim, i + cons_old.channel_offset)
            wn = cons_new.module.weight.detach()
            torch.testing.assert_close(wn.select(dim, i + cons_old.channel_offset), col / 2,
                                       rtol=0, atol=0)
            torch.testing.assert_close(wn.select(dim, wn.shape[dim] - 1), col / 2, rtol=0, atol=0)

        m_half, _ = _split(model, lid, ci, x, y, eps / 2)
        full = rel_max_change(eval_out(m, x), ref)
        half = rel_max_change(eval_out(m_half, x), ref)
        assert full < 1e-6
        assert 2.5 < full / half < 6, f"{lid} conv{ci + 1}: {full:.3g} vs {half:.3g}"


@pytest.mark.parametrize("noise", [0.0, None])
def test_split_copies_diverge_after_one_step(noise):
    model = make_model(chans=3, num_pool_layers=2)
    x, y = make_batch(2, 2, 17, 23)
    lid, ci = "down_1", 1

    # Plain SGD on the grown model.
    m, report = _split(model, lid, ci, x, y, noise)
    (i,), c = report.selected, report.size_before[lid]["conv2_out"]
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    m.train()
    F.l1_loss(m(x), y).backward()
    conv = m.conv_layer(lid, ci)
    g = conv.weight.grad
    assert (g[i] - g[c]).abs().max() > 1e-3 * g.abs().max()
    gap = (conv.weight[i] - conv.weight[c]).detach()
    opt.step()
    w = conv.weight.detach()
    assert (w[i] - w[c] - gap).abs().max() > 1e-6

    # RMSprop carried across growth (state exists before the split).
    m = copy.deepcopy(model).train()
    opt = torch.optim.RMSprop(m.parameters(), lr=1e-3)
    F.l1_loss(m(x), y).backward()
    opt.step()
    opt.zero_grad()
    report = m.grow_network(lid, ci, x, y, method="split", split_noise=noise,
                            generator=torch.Generator().manual_seed(0))
    grow_optimizer_state(opt, report.changes)
    (i,) = report.selected
    F.l1_loss(m(x), y).backward()
    opt.step()
    w = m.conv_layer(lid, ci).weight.detach()
    assert (w[i] - w[c]).abs().max() > 1e-6


def test_split_without_batch_uses_existing_gradients():
    model = make_model(chans=3, num_pool_layers=1)
    x, y = make_batch(2, 2, 17, 23)
    before = state_snapshot(model)
    with pytest.raises(ValueError, match="split needs gradients"):
        model.grow_network("down_0", 1, None, None, method="split")
    assert_state_unchanged(model, before)
    F.l1_loss(model(x), y).backward()
    norms = model.conv_layer("down_0", 1).weight.grad.flatten(1).norm(dim=1)
    ref = eval_out(model, x)
    report = model.grow_network("down_0", 1, None, None, method="split", split_noise=0.0)
    assert report.selected == [int(norms.argmax())]
    assert rel_max_change(eval_out(model, x), ref) <= 1e-12


@pytest.mark.parametrize("method", sorted(GROWTH_METHODS))
def test_same_generator_seed_gives_identical_growth(method):
    """DDP ranks with the same seed must grow identically."""
    model = make_model(chans=2, num_pool_layers=2)
    x, y = make_batch(2, 2, 17, 23)
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    ra = a.grow_network("down_1", 1, x, y, method=method, n_new=2,
                        generator=torch.Generator().manual_seed(11))
    rb = b.grow_network("down_1", 1, x, y, method=method, n_new=2,
                        generator=torch.Generator().manual_seed(11))
    assert ra.selected == rb.selected and ra.scores == rb.scores
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


# ------------------------------------------------- 4. one-pass scoring
@pytest.mark.parametrize("pools", [1, 2, 3])
def test_one_pass_scores_match_brute_force_at_every_site(pools):
    """Covers conv1 sites, down conv2 (incl. the one feeding the bottleneck),
    bottleneck conv2 (-> transposed conv), up conv2 (-> next transposed conv)
    and the last up conv2 (-> final 1x1 conv)."""
    model = make_model(chans=2, num_pool_layers=pools, drop_prob=0.1).train()
    x, y = make_batch(2, 2, 17, 23)
    g = torch.Generator().manual_seed(3)
    for lid, ci in sites(pools):
        cands = generate_candidates(model.conv_layer(lid, ci), 4, generator=g)
        fast = score_candidates(model, lid, ci, cands, x, y)
        slow = brute_force_scores(model, lid, ci, cands, x, y)
        assert fast.shape == (4,) and (fast > 0).all(), (lid, ci, fast)
        assert fast.max() > fast.min() * (1 + 1e-6), (lid, ci, fast)
        torch.testing.assert_close(fast, slow, rtol=1e-10, atol=0, msg=f"{lid} conv{ci + 1}")
        assert int(fast.argmax()) == int(slow.argmax())


@pytest.mark.parametrize("lid,ci", [("down_1", 1), ("bottleneck", 1), ("up_0", 1), ("up_1", 1),
                                    ("up_0", 0)])
def test_one_pass_scores_match_brute_force_float32(lid, ci):
    model = make_model(chans=2, num_pool_layers=2, dtype=torch.float32)
    x, y = make_batch(2, 2, 17, 23, dtype=torch.float32)
    cands = generate_candidates(model.conv_layer(lid, ci), 5, generator=torch.Generator().manual_seed(0))
    fast = score_candidates(model, lid, ci, cands, x, y)
    slow = brute_force_scores(model, lid, ci, cands, x, y)
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=0)
    assert int(fast.argmax()) == int(slow.argmax())


def test_fastmri_style_target_without_channel_dim_scores_the_same():
    model = make_model(in_chans=1, out_chans=1, chans=2, num_pool_layers=2)
    x, y = make_batch(1, 1, 17, 23)
    cands = generate_candidates(model.conv_layer("up_1", 1), 3, generator=torch.Generator().manual_seed(0))
    a = score_candidates(model, "up_1", 1, cands, x, y)
    b = score_candidates(model, "up_1", 1, cands, x, y[:, 0])
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_reduce_fn_is_applied_to_the_gradients():
    model = make_model(chans=2, num_pool_layers=2)
    x, y = make_batch(2, 2, 17, 23)
    cands = generate_candidates(model.conv_layer("down_1", 1), 3, generator=torch.Generator().manual_seed(0))
    a = score_candidates(model, "down_1", 1, cands, x, y)
    b = score_candidates(model, "down_1", 1, cands, x, y, reduce_fn=lambda t: 3 * t)
    torch.testing.assert_close(b, 3 * a, rtol=1e-12, atol=0)


@pytest.mark.parametrize("lid,ci", [("down_0", 0), ("down_1", 1), ("bottleneck", 1), ("up_1", 1)])
def test_grow_network_keeps_the_argmax_candidate(lid, ci):
    model = make_model(chans=2, num_pool_layers=2)
    x, y = make_batch(2, 2, 17, 23)
    cands = generate_candidates(model.conv_layer(lid, ci), 6, generator=torch.Generator().manual_seed(5))
    expected = score_candidates(model, lid, ci, cands, x, y)
    old_consumers = [c.module.weight.shape for c in model.consumers(lid, ci)]
    report = model.grow_network(lid, ci, x, y, method="sample_select", candidates=cands)
    assert report.selected == [int(expected.argmax())]
    torch.testing.assert_close(torch.tensor(report.scores, dtype=F64), expected, rtol=1e-12, atol=0)
    w = model.conv_layer(lid, ci).weight.detach()
    assert torch.equal(w[-1], cands[report.selected[0]])
    # The new channel's fan-out is zero in every consumer.
    for shape, cons in zip(old_consumers, model.consumers(lid, ci)):
        dim = cons.in_dim
        wc = cons.module.weight.detach()
        assert wc.shape[dim] == shape[dim] + 1
        assert torch.equal(wc.narrow(dim, shape[dim], 1), torch.zeros_like(wc.narrow(dim, 0, 1)))


@pytest.mark.parametrize("method", sorted(GROWTH_METHODS))
def test_growth_keeps_flags_grads_and_modes(method):
    model = make_model(chans=2, num_pool_layers=2, drop_prob=0.1)
    x, y = make_batch(2, 2, 17, 23)
    model.train()
    model.conv.eval()  # a mixed train/eval state must come back as it was
    F.l1_loss(model(x), y).backward()
    frozen = {"down_sample_layers.0.layers.0.weight", "up_conv.1.1.bias", "up_conv.0.layers.4.weight"}
    for name, p in model.named_parameters():
        if name in frozen:
            p.requires_grad_(False)
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    modes = {n: m.training for n, m in model.named_modules()}

    report = model.grow_network("down_0", 0, x, y, method=method, **GROW_KW.get(method, {}))
    grown = {id(ch.new) for ch in report.changes}
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert {n: m.training for n, m in model.named_modules()} == modes
    for n, p in model.named_parameters():
        if id(p) not in grown:
            assert torch.equal(p.grad, grads[n]), n

    # A fully frozen model grows too, and stays frozen.
    frozen_model = make_model(chans=2, num_pool_layers=2).requires_grad_(False)
    ref = eval_out(frozen_model, x)
    frozen_model.grow_network("up_1", 1, x, y, method=method, **GROW_KW.get(method, {}))
    assert not any(p.requires_grad for p in frozen_model.parameters())
    assert all(p.grad is None for p in frozen_model.parameters())
    assert rel_max_change(eval_out(frozen_model, x), ref) <= 1e-12


# ----------------------------------------------- 5. no near-duplicates
def test_n_new_keeps_k_distinct_candidates():
    lid, ci = "down_1", 0
    model = make_model(chans=2, num_pool_layers=2)
    x, y = make_batch(2, 2, 17, 23)
    base = generate_candidates(model.conv_layer(lid, ci), 5, generator=torch.Generator().manual_seed(2))
    s = score_candidates(model, lid, ci, base, x, y)
    best = int(s.argmax())
    # Same direction, other positive scales: InstanceNorm divides the scale out.
    cands = torch.cat([base, 2.0 * base[best:best + 1], 0.5 * base[best:best + 1]])
    dup_group = {best, 5, 6}
    scores = score_candidates(model, lid, ci, cands, x, y)
    torch.testing.assert_close(scores[5], scores[best], rtol=1e-3, atol=0)
    torch.testing.assert_close(scores[6], scores[best], rtol=1e-3, atol=0)

    report = model.grow_network(lid, ci, x, y, method="sample_select", candidates=cands, n_new=3)
    assert isinstance(report.selected, list) and len(report.selected) == 3
    assert len(set(report.selected)) == 3
    assert len(dup_group & set(report.selected)) == 1, report.selected
    # The other two are the best of the remaining distinct directions.
    rest = sorted((i for i in range(5) if i != best), key=lambda i: -float(s[i]))[:2]
    assert set(report.selected) - dup_group == set(rest)
    assert report.n_added == 3
    assert model.get_network_size()[lid]["conv1_out"] == 4 + 3
    added = model.conv_layer(lid, ci).weight.detach()[-3:]
    assert [torch.equal(added[k], cands[i]) for k, i in enumerate(report.selected)] == [True] * 3


def test_generated_candidates_are_orthogonal_with_typical_norm():
    model = make_model(chans=2, num_pool_layers=1)
    conv = model.conv_layer("down_0", 1)  # fan-in dim 2 * 9 = 18
    cands = generate_candidates(conv, 10, generator=torch.Generator().manual_seed(0))
    assert cands.shape == (10, 2, 3, 3) and cands.dtype == F64
    flat = cands.flatten(1)
    norm = conv.weight.detach().flatten(1).norm(dim=1).mean()
    torch.testing.assert_close(flat.norm(dim=1), norm.expand(10), rtol=1e-12, atol=0)
    gram = flat @ flat.T / norm ** 2
    torch.testing.assert_close(gram, torch.eye(10, dtype=F64), rtol=0, atol=1e-12)
    again = generate_candidates(conv, 10, generator=torch.Generator().manual_seed(0))
    assert torch.equal(cands, again)


# -------------------------------------------- 6. rebuild and corruption
def test_grown_state_dict_rebuilds_identically():
    # float32: a fresh model is built in the default dtype and load_state_dict
    # copies into it.
    model = make_model(chans=2, num_pool_layers=3, n_candidates=4, dtype=torch.float32)
    x, y = make_batch(2, 2, 17, 23, dtype=torch.float32)
    for k, (lid, ci) in enumerate([("down_0", 1), ("bottleneck", 0), ("up_2", 1), ("down_2", 1),
                                   ("up_0", 0), ("up_1", 1)]):
        method = "split" if k % 2 else "sample_select"
        model.grow_network(lid, ci, x, y, method=method, n_new=1 + k % 2, **GROW_KW.get(method, {}))
    for prefix in ("", "unet."):
        sd = {prefix + k: v for k, v in model.state_dict().items()}
        rebuilt = DynamicUnet.from_state_dict(sd).eval()
        assert rebuilt.get_network_size() == model.get_network_size()
        assert rebuilt.transpose_widths() == model.transpose_widths()
        assert rebuilt.num_parameters() == model.num_parameters()
        assert torch.equal(eval_out(rebuilt, x), eval_out(model, x))
        # The rebuilt model keeps growing.
        rebuilt.grow_network("down_1", 1, x, y, method="sample_select")


def _corrupt_in_channels(sd, key):
    sd = dict(sd)
    w = sd[key]
    dim = 0 if "up_transpose_conv" in key else 1
    shape = list(w.shape)
    shape[dim] += 1
    sd[key] = torch.zeros(shape, dtype=w.dtype)
    return sd


@pytest.mark.parametrize("key", [
    "down_sample_layers.1.layers.0.weight",
    "down_sample_layers.2.layers.4.weight",
    "conv.layers.0.weight",
    "conv.layers.4.weight",
    "up_transpose_conv.0.layers.0.weight",
    "up_transpose_conv.2.layers.0.weight",
    "up_conv.0.layers.0.weight",
    "up_conv.1.layers.4.weight",
    "up_conv.2.0.layers.0.weight",
    "up_conv.2.1.weight",
])
def test_architecture_rejects_wrong_in_channels(key):
    sd = make_model(chans=2, num_pool_layers=3).state_dict()
    bad = _corrupt_in_channels(sd, key)
    with pytest.raises(ValueError, match=re.escape(key)):
        architecture_from_state_dict(bad)
    with pytest.raises(ValueError, match=re.escape(key)):
        DynamicUnet.from_state_dict(bad)


@pytest.mark.parametrize("key", [
    "down_sample_layers.0.layers.4.weight",
    "down_sample_layers.1.layers.0.weight",
    "down_sample_layers.2.layers.0.weight",
    "conv.layers.0.weight",
    "conv.layers.4.weight",
    "up_transpose_conv.1.layers.0.weight",
    "up_conv.0.layers.0.weight",
    "up_conv.2.0.layers.4.weight",
    "up_conv.2.1.weight",
])
def test_architecture_rejects_missing_key(key):
    sd = dict(make_model(chans=2, num_pool_layers=3).state_dict())
    del sd[key]
    with pytest.raises(ValueError, match=re.escape(key)):
        architecture_from_state_dict(sd)


@pytest.mark.parametrize("key,shape,fragment", [
    ("conv.layers.4.weight", (16, 16, 5, 5), "3x3"),
    ("down_sample_layers.0.layers.0.weight", (2, 2, 1, 1), "3x3"),
    ("up_transpose_conv.1.layers.0.weight", (8, 4, 3, 3), "2x2"),
    ("up_conv.2.1.weight", (2, 2, 3, 3), "1x1"),
    ("up_conv.2.1.bias", (3,), "(2,)"),
    ("up_conv.1.layers.0.weight", (4, 8, 3), "(4, 8, 3)"),
])
@pytest.mark.parametrize("prefix", ["", "unet."])
def test_architecture_rejects_wrong_kernel_or_bias_naming_the_key(key, shape, fragment, prefix):
    sd = {prefix + k: v for k, v in make_model(chans=2, num_pool_layers=3).state_dict().items()}
    sd[prefix + key] = torch.zeros(shape, dtype=F64)
    with pytest.raises(ValueError) as info:
        architecture_from_state_dict(sd)
    assert repr(prefix + key) in str(info.value) and fragment in str(info.value), str(info.value)


def test_architecture_errors_name_prefixed_keys():
    sd = {f"unet.{k}": v for k, v in make_model(chans=2, num_pool_layers=3).state_dict().items()}
    bad = _corrupt_in_channels(sd, "unet.conv.layers.0.weight")
    with pytest.raises(ValueError, match=re.escape("'unet.conv.layers.0.weight'")):
        architecture_from_state_dict(bad)
    del sd["unet.up_conv.2.1.weight"]
    with pytest.raises(ValueError, match=re.escape("'unet.up_conv.2.1.weight'")):
        DynamicUnet.from_state_dict(sd)


def test_from_state_dict_rejects_missing_bias_with_value_error():
    sd = dict(make_model(chans=2, num_pool_layers=3).state_dict())
    del sd["up_conv.2.1.bias"]
    with pytest.raises(ValueError, match=re.escape("up_conv.2.1.bias")):
        DynamicUnet.from_state_dict(sd)


# --------------------------------------------- 7. gradients and optimizer
def test_every_parameter_gets_a_gradient_after_growth():
    model = make_model(chans=2, num_pool_layers=2)
    x, y = make_batch(2, 2, 17, 23)
    r1 = model.grow_network("down_1", 1, x, y, method="sample_select", n_new=2)
    r2 = model.grow_network("down_0", 0, x, y, method="split")
    r3 = model.grow_network("bottleneck", 1, x, y, method="sample_select")
    live = {id(p) for p in model.parameters()}
    assert all(id(ch.new) in live for r in (r1, r2, r3) for ch in r.changes)
    model.train()
    F.l1_loss(model(x), y).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert p.grad.shape == p.shape, name
        assert torch.isfinite(p.grad).all(), name
    # Fan-out slices of sample_select growth: non-zero gradient (that is the score).
    for report in (r1, r3):
        for ch in report.changes[1:]:
            g = ch.new.grad[ch.new_slice()]
            assert g.abs().sum() > 0, ch.name
    # Split copies: both fan-ins learn at once.
    conv_change = r2.changes[0]
    assert conv_change.new.grad[conv_change.new_slice()].abs().sum() > 0


def _optimizers():
    return {
        "sgd_momentum": lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9),
        "adam": lambda params: torch.optim.Adam(params, lr=1e-2),
        "rmsprop": lambda params: torch.optim.RMSprop(params, lr=1e-3),
    }


@pytest.mark.parametrize("opt_name", sorted(_optimizers()))
def test_grow_optimizer_state(opt_name):
    model = make_model(chans=2, num_pool_layers=2).train()
    x, y = make_batch(2, 2, 17, 23)
    opt = _optimizers()[opt_name](model.parameters())
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    for _ in range(2):
        opt.zero_grad()
        F.l1_loss(model(x), y).backward()
        opt.step()
        sched.step()
    lr_before = opt.param_groups[0]["lr"]
    positions = {id(p): i for i, p in enumerate(opt.param_groups[0]["params"])}

    report = model.grow_network("down_1", 1, x, y, method="sample_select", n_new=2)
    old_state = {id(ch.old): {k: (v.clone() if torch.is_tensor(v) else v)
                              for k, v in opt.state[ch.old].items()} for ch in report.changes}
    swapped = grow_optimizer_state(opt, report.changes)
    assert swapped == len(report.changes) == 3

    opt_ids = {id(p) for g in opt.param_groups for p in g["params"]}
    assert opt_ids == {id(p) for p in model.parameters()}
    assert len(opt.param_groups[0]["params"]) == len(list(model.parameters()))
    for ch in report.changes:
        assert opt.param_groups[0]["params"][positions[id(ch.old)]] is ch.new
        assert ch.old not in opt.state
        new_state, old = opt.state[ch.new], old_state[id(ch.old)]
        assert set(new_state) == set(old)
        for key, old_v in old.items():
            new_v = new_state[key]
            if not torch.is_tensor(old_v) or old_v.shape != ch.old.shape:
                assert torch.equal(torch.as_tensor(new_v), torch.as_tensor(old_v)), key  # step
                continue
            assert new_v.shape == ch.new.shape, key
            keep = [slice(None)] * new_v.dim()
            keep[ch.dim] = slice(0, ch.offset)
            assert torch.equal(new_v[tuple(keep)], old_v), key
            fill = new_v[ch.new_slice()]
            if key in ("exp_avg_sq", "square_avg"):
                assert old_v.mean() > 0
                torch.testing.assert_close(fill, torch.full_like(fill, float(old_v.mean())),
                                           rtol=1e-6, atol=0)
            else:
                assert torch.equal(fill, torch.zeros_like(fill)), key
    assert "step" in opt.state[report.changes[0].new] or opt_name == "sgd_momentum"

    # One step moves the new fan-out slices away from zero; the scheduler carries on.
    opt.zero_grad()
    F.l1_loss(model(x), y).backward()
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(lr_before * 0.5)
    for ch in report.changes[1:]:
        assert ch.new.detach()[ch.new_slice()].abs().min() > 0, ch.name


def test_new_slices_do_not_take_oversized_rmsprop_steps():
    """Seeded second moments keep the first step of new weights near lr."""
    model = make_model(chans=2, num_pool_layers=2).train()
    x, y = make_batch(2, 2, 17, 23)
    lr = 1e-3
    opt = torch.optim.RMSprop(model.parameters(), lr=lr)
    for _ in range(20):
        opt.zero_grad()
        F.l1_loss(model(x), y).backward()
        opt.step()
    report = model.grow_network("up_1", 1, x, y, method="sample_select")
    grow_optimizer_state(opt, report.changes)
    opt.zero_grad()
    F.l1_loss(model(x), y).backward()
    opt.step()
    fan_out = report.changes[1]
    # Zero-padded square_avg would give lr / sqrt(1 - 0.99) = 10 lr per entry.
    steps = fan_out.new.detach()[fan_out.new_slice()].abs()
    assert steps.min() > 0
    assert steps.median() < 5 * lr, steps


# ----------------------------------------------------------- 8. the report
@pytest.mark.parametrize("lid,ci,n_new", [("bottleneck", 0, 1), ("down_0", 1, 1), ("down_1", 1, 2),
                                          ("bottleneck", 1, 1), ("up_0", 1, 1), ("up_1", 1, 3),
                                          ("up_1", 0, 1)])
def test_report_fields_and_parameter_count(lid, ci, n_new):
    model = make_model(chans=2, num_pool_layers=2, n_candidates=7)
    x, y = make_batch(2, 2, 17, 23)
    expected_added = expected_added_params(model, lid, ci, n_new)
    size_before = model.get_network_size()
    params_before = model.num_parameters()
    report = model.grow_network(lid, ci, x, y, method="sample_select", n_new=n_new)
    assert isinstance(report, GrowthReport)
    assert (report.layer_idx, report.conv_idx, report.method, report.n_added) == (
        lid, ci, "sample_select", n_new)
    # n_candidates (7) per added filter.
    assert len(report.scores) == 7 * n_new and all(isinstance(s, float) for s in report.scores)
    if n_new == 1:
        assert report.selected == [report.selected[0]] and 0 <= report.selected[0] < 7
    else:
        assert isinstance(report.selected, list) and len(report.selected) == n_new
    assert report.size_before == size_before
    after = copy.deepcopy(size_before)
    after[lid][f"conv{ci + 1}_out"] += n_new
    assert report.size_after == after == model.get_network_size()
    assert report.params_before == params_before
    assert report.params_after == model.num_parameters()
    assert report.params_after - report.params_before == expected_added
    # The report records how long the growth took (a field check, not a timing limit).
    took = report.seconds
    assert isinstance(took, float) and took > 0

    width = size_before[lid][f"conv{ci + 1}_out"]
    if n_new > width:
        return
    split_model = make_model(chans=2, num_pool_layers=2)
    split_report = split_model.grow_network(lid, ci, x, y, method="split", n_new=n_new)
    assert len(split_report.scores) == width
    assert split_report.params_after - split_report.params_before == expected_added


def test_report_str():
    model = make_model(chans=2, num_pool_layers=2, n_candidates=9)
    x, y = make_batch(2, 2, 17, 23)
    report = model.grow_network("bottleneck", 0, x, y, method="sample_select")
    text = str(report)
    m = re.fullmatch(r"Growing bottleneck conv1: Selected candidate (\d+) \(score ([0-9.e+-]+)\), "
                     r"(\d+) -> (\d+) filters", text)
    assert m, text
    assert [int(m.group(1))] == report.selected
    assert float(m.group(2)) == pytest.approx(report.scores[report.selected[0]], rel=1e-3)
    assert (int(m.group(3)), int(m.group(4))) == (8, 9)

    report = model.grow_network("up_1", 1, x, y, method="split", split_noise=0.0)
    assert re.fullmatch(r"Growing up_1 conv2: Split filter \d+ \(grad norm [0-9.e+-]+\), 2 -> 3 filters",
                        str(report)), str(report)


# ------------------------------------------------------------- 9. sizes
@pytest.mark.parametrize("chans,pools", [(2, 1), (3, 3), (4, 4)])
def test_get_network_size_initial(chans, pools):
    model = DynamicUnet(1, 1, chans=chans, num_pool_layers=pools)
    size = model.get_network_size()
    expected_ids = ([f"down_{i}" for i in range(pools)] + ["bottleneck"]
                    + [f"up_{j}" for j in range(pools)])
    assert list(size) == expected_ids == model.layer_ids() == layer_ids(pools)
    for i in range(pools):
        assert size[f"down_{i}"] == {"conv1_out": chans * 2 ** i, "conv2_out": chans * 2 ** i}
        c = chans * 2 ** (pools - 1 - i)
        # transpose_out: the transposed conv that up-samples into up_i.
        assert size[f"up_{i}"] == {"conv1_out": c, "conv2_out": c, "transpose_out": c}
    assert size["bottleneck"] == {"conv1_out": chans * 2 ** pools, "conv2_out": chans * 2 ** pools}
    assert all(type(v) is int for w in size.values() for v in w.values())
    assert list(size["down_0"]) == ["conv1_out", "conv2_out"]


# -------------------------------------------------------- 10. bad input
def _bad_cases():
    x, y = make_batch(2, 2, 17, 23)
    ok = dict(layer_idx="down_1", conv_idx=1, batch_data=x, target_data=y)
    return [
        # (id, overrides, model attribute edits, message fragments)
        ("unknown layer", dict(layer_idx="down_7"), {},
         ["'down_7'", "down_0", "down_1", "bottleneck", "up_0", "up_1"]),
        ("layer as int", dict(layer_idx=0), {}, ["0", "down_0", "bottleneck", "up_1"]),
        ("conv_idx 2", dict(conv_idx=2), {}, ["2", "0", "1"]),
        ("conv_idx -1", dict(conv_idx=-1), {}, ["-1"]),
        ("conv_idx str", dict(conv_idx="1"), {}, ["'1'"]),
        ("conv_idx float", dict(conv_idx=1.0), {}, ["1.0"]),
        ("conv_idx bool", dict(conv_idx=True), {}, ["True"]),
        ("unknown method", dict(method="grow_all"), {}, ["'grow_all'", "sample_select", "split"]),
        ("n_candidates 0", {}, {"n_candidates": 0}, ["n_candidates", "0"]),
        ("n_new 0", dict(n_new=0), {}, ["n_new", "0"]),
        ("n_new -1", dict(n_new=-1), {}, ["n_new", "-1"]),
        ("n_new > explicit candidates",
         dict(n_new=4, candidates=torch.randn(3, 4, 3, 3, dtype=F64)), {}, ["n_new=4", "(3)"]),
        ("split n_new > filters", dict(n_new=5, method="split"), {}, ["n_new=5", "4"]),
        ("negative split noise", dict(method="split", split_noise=-0.1), {}, ["-0.1"]),
        ("batch channels", dict(batch_data=torch.randn(2, 3, 17, 23, dtype=F64)), {},
         ["batch_data", "(2, 3, 17, 23)", "(N, 2, H, W)"]),
        ("target shape", dict(target_data=torch.randn(2, 2, 17, 22, dtype=F64)), {},
         ["(2, 2, 17, 22)", "(2, 2, 17, 23)"]),
        ("batch device", dict(batch_data=torch.empty(2, 2, 17, 23, dtype=F64, device="meta")), {},
         ["batch_data", "meta", "cpu"]),
        ("target device", dict(target_data=torch.empty(2, 2, 17, 23, dtype=F64, device="meta")), {},
         ["target_data", "meta"]),
        ("int batch", dict(batch_data=torch.ones(2, 2, 17, 23, dtype=torch.int64)), {},
         ["batch_data", "torch.int64"]),
        ("bad candidates", dict(candidates=torch.randn(4, 5, 3, 3, dtype=F64)), {},
         ["(4, 5, 3, 3)", "(K, 4, 3, 3)"]),
        ("missing batch", dict(batch_data=None, target_data=None), {}, ["batch_data"]),
    ], ok


@pytest.mark.parametrize("case", range(len(_bad_cases()[0])), ids=[c[0] for c in _bad_cases()[0]])
def test_bad_growth_arguments_raise_before_any_change(case):
    (name, overrides, attrs, fragments), ok = _bad_cases()[0][case], _bad_cases()[1]
    model = make_model(chans=2, num_pool_layers=2)
    for k, v in attrs.items():
        setattr(model, k, v)
    model.train()
    before = state_snapshot(model)
    size, modes = model.get_network_size(), [m.training for m in model.modules()]
    kwargs = {**ok, **overrides}
    with pytest.raises(ValueError) as info:
        model.grow_network(**kwargs)
    msg = str(info.value)
    for frag in fragments:
        assert frag in msg, f"{name}: {frag!r} not in {msg!r}"
    assert_state_unchanged(model, before)
    assert model.get_network_size() == size
    assert [m.training for m in model.modules()] == modes


@pytest.mark.parametrize("method", sorted(GROWTH_METHODS))
def test_non_finite_loss_raises_runtime_error_and_keeps_model(method):
    model = make_model(chans=2, num_pool_layers=2).train()
    x, y = make_batch(2, 2, 17, 23)
    x[0, 0, 3, 4] = float("nan")
    before = state_snapshot(model)
    flags = [p.requires_grad for p in model.parameters()]
    with pytest.raises(RuntimeError, match="nan"):
        model.grow_network("up_0", 1, x, y, method=method)
    assert_state_unchanged(model, before)
    assert model.training and all(m.training for m in model.modules())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("kwargs,fragments", [
    (dict(chans=0), ["chans", "0"]),
    (dict(in_chans=0), ["in_chans", "0"]),
    (dict(num_pool_layers=0), ["num_pool_layers", "0"]),
    (dict(growth_method="foo"), ["'foo'", "sample_select", "split"]),
    (dict(n_candidates=0), ["n_candidates", "0"]),
    (dict(drop_prob=1.5), ["drop_prob", "1.5"]),
])
def test_constructor_rejects_bad_values(kwargs, fragments):
    args = {"in_chans": 1, "out_chans": 1, "chans": 2, "num_pool_layers": 2, **kwargs}
    with pytest.raises(ValueError) as info:
        DynamicUnet(**args)
    for frag in fragments:
        assert frag in str(info.value), (frag, str(info.value))


# ---------------------------------------------------- 11. README example
def test_readme_style_example(capsys):
    torch.manual_seed(0)
    model = DynamicUnet(in_chans=1, out_chans=1, chans=8, num_pool_layers=2, n_candidates=10)
    image = torch.randn(2, 1, 64, 64)
    target = torch.randn(2, 64, 64)  # fastMRI targets have no channel dim
    report = model.grow_network("bottleneck", 0, image, target)
    print(report)
    print(model.get_network_size()["bottleneck"])
    out = capsys.readouterr().out.splitlines()
    assert re.fullmatch(r"Growing bottleneck conv1: Selected candidate \d \(score [0-9.e+-]+\), "
                        r"32 -> 33 filters", out[0]), out[0]
    assert out[1] == "{'conv1_out': 33, 'conv2_out': 32}"
    assert model(image).shape == (2, 1, 64, 64)


def test_score_candidates_agrees_on_a_bad_loss_through_reduce_fn():
    """The non-finite check goes through reduce_fn, so DDP ranks abort together:
    here a finite local loss still aborts when the reduction reports a bad rank."""
    model = make_model(in_chans=1, out_chans=1)
    conv = model.conv_layer("bottleneck", 0)
    candidates = torch.randn(3, conv.weight.shape[1], 3, 3, dtype=conv.weight.dtype)
    x = torch.randn(1, 1, 16, 16, dtype=conv.weight.dtype)
    seen = []

    def other_rank_bad(t):
        # One reduction of [bad-batch count, loss sum, statistics...]:
        # another rank reports a bad batch.
        seen.append(t.shape)
        t = t.clone()
        t[0] += 1
        return t

    with pytest.raises(RuntimeError, match="another rank"):
        score_candidates(model, "bottleneck", 0, candidates, x, x, reduce_fn=other_rank_bad)
    assert len(seen) == 1 and seen[0][0] > 2
