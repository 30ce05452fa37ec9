"""DynamicVarNet: fastMRI's end-to-end VarNet whose U-Nets grow.

Equivalence first: a DynamicVarNet is fastMRI's ``VarNet`` (same keys, same
outputs, over a table of small configs with odd sizes, and at the public
pretrained architecture); grown state dicts rebuild identically; one-pass
scores at sites in a cascade and in the sensitivity model equal brute force
on the whole VarNet's SSIM loss (float64); growth keeps the VarNet's output
with every registered method. Then the Lightning module, the train/test
command line on generated multicoil data (growth, resume, test mode,
leaderboard evaluation), and the bad-input table. Nets are tiny (1-2
cascades, pools 1-2, chans 2-4, 32x32 images, 2-3 coils).
"""

import copy
import inspect
import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import fastmri
from fastmri.data.subsample import EquispacedMaskFractionFunc, RandomMaskFunc
from fastmri.data.transforms import apply_mask
from fastmri.models import VarNet

from fastmri_growth.growth import (
    FAN_OUT_INITS,
    METHODS,
    Site,
    brute_force_scores_at,
    grow,
    parse_sites,
    remove_output_channels,
    score_candidates_at,
)
from fastmri_growth.models import DynamicUnet, DynamicVarNet
from fastmri_growth.models.dynamic_varnet import varnet_architecture_from_state_dict

REPO = Path(__file__).resolve().parents[1]
F64 = torch.float64


# ----------------------------------------------------------------- helpers
def make_batch(n=2, coils=3, h=32, w=28, dtype=F64, seed=1, accel=2, center=0.25):
    """Masked multicoil k-space, its mask and centre lines, a target and max value."""
    g = torch.Generator().manual_seed(seed)
    kspace = torch.randn(n, coils, h, w, 2, generator=g, dtype=dtype)
    mask_func = EquispacedMaskFractionFunc([center], [accel])
    masked, mask, low = apply_mask(kspace, mask_func, seed=seed)
    target = torch.rand(n, h, w, generator=g, dtype=dtype)
    max_value = torch.ones(n, dtype=dtype)
    return masked, mask.bool(), low, target, max_value


def ssim_loss_for(model):
    """The VarNetModule training loss of ``model`` on a ``make_batch`` tuple."""
    ssim = fastmri.SSIMLoss().to(next(model.parameters()).dtype)

    def loss(batch):
        masked, mask, low, target, max_value = batch
        out = model(masked, mask, low)
        return ssim(out.unsqueeze(1), target.unsqueeze(1), data_range=max_value)
    return loss


def tiny(dtype=F64, seed=0, num_cascades=2, sens_chans=2, sens_pools=1, chans=3, pools=2):
    torch.manual_seed(seed)
    return DynamicVarNet(num_cascades, sens_chans, sens_pools, chans, pools).to(dtype).eval()


def out(model, batch):
    with torch.no_grad():
        return model(*batch[:3])


def rel_max_change(new, ref):
    return ((new - ref).abs().max() / ref.abs().max()).item()


# ------------------------------------------------- 1. fastMRI equivalence
# (num_cascades, sens_chans, sens_pools, chans, pools, mask_center, n, coils, h, w, low)
CONFIGS = [
    (1, 2, 1, 2, 1, True, 1, 2, 32, 32, None),
    (2, 3, 2, 4, 2, True, 2, 3, 33, 27, None),
    (2, 2, 1, 3, 2, False, 1, 2, 17, 40, None),
    (1, 4, 2, 2, 1, True, 2, 2, 31, 33, 4),
    (3, 2, 1, 2, 2, True, 1, 3, 48, 21, 0),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(map(str, c)))
def test_matches_fastmri_varnet_exactly(cfg):
    nc, sc, sp, c, p, center, n, coils, h, w, low = cfg
    torch.manual_seed(0)
    ref = VarNet(num_cascades=nc, sens_chans=sc, sens_pools=sp, chans=c, pools=p,
                 mask_center=center).eval()
    torch.manual_seed(0)
    dyn = DynamicVarNet(nc, sc, sp, c, p, mask_center=center).eval()
    # Built in fastMRI's order: the same seed gives the same weights.
    ref_sd, dyn_sd = ref.state_dict(), dyn.state_dict()
    assert list(ref_sd) == list(dyn_sd)
    assert all(torch.equal(ref_sd[k], dyn_sd[k]) for k in ref_sd)
    masked, mask, mlow, _, _ = make_batch(n, coils, h, w, dtype=torch.float32)
    low = mlow if low is None else low
    with torch.no_grad():
        expected = ref(masked, mask, low)
        assert expected.shape == (n, h, w)
        assert torch.equal(dyn(masked, mask, low), expected)
        assert torch.equal(DynamicVarNet.from_varnet(ref).eval()(masked, mask, low), expected)


def test_pretrained_architecture_loads_strictly_and_matches():
    # fastMRI's public VarNet state dicts: VarNet(12, 8, 4, 18, 4).
    torch.manual_seed(0)
    ref = VarNet(num_cascades=12, sens_chans=8, sens_pools=4, chans=18, pools=4).eval()
    dyn = DynamicVarNet().eval()
    dyn.load_state_dict(ref.state_dict(), strict=True)
    arch = varnet_architecture_from_state_dict(ref.state_dict())
    assert {k: arch[k] for k in ("num_cascades", "sens_chans", "sens_pools", "chans", "pools")} \
        == {"num_cascades": 12, "sens_chans": 8, "sens_pools": 4, "chans": 18, "pools": 4}
    masked, mask, low, _, _ = make_batch(1, 2, 32, 24, dtype=torch.float32)
    with torch.no_grad():
        assert torch.equal(dyn(masked, mask, low), ref(masked, mask, low))
    assert dyn.get_network_size()["cascade_11"]["bottleneck"] == {"conv1_out": 288, "conv2_out": 288}
    assert dyn.get_network_size()["sens"]["down_0"] == {"conv1_out": 8, "conv2_out": 8}


def test_module_checkpoint_state_dict_loads_with_prefix():
    from fastmri_growth.pl_modules import VarNetModule

    module = VarNetModule(num_cascades=2, pools=1, chans=2, sens_pools=1, sens_chans=2)
    sd = module.state_dict()
    assert "loss.w" in sd  # the SSIM window: not the VarNet's, ignored
    dyn = DynamicVarNet.from_state_dict(sd).eval()
    batch = make_batch(1, 2, 32, 24, dtype=torch.float32)
    assert torch.equal(out(dyn, batch), out(module.varnet.eval(), batch))


def test_brain_sample_through_fastmri_loader_matches(tmp_path):
    # A real SliceDataset sample: an oversampled 64 x W brain k-space, fastMRI's
    # own mask and centre-line count.
    from fastmri.data import SliceDataset
    from fastmri.data.transforms import VarNetDataTransform
    from fastmri_growth.data import generate_dataset

    generate_dataset(tmp_path, challenges=("brain_multicoil",), splits=("val",), num_volumes=1,
                     num_slices=1, recon_size=32, num_coils=(3, 3), seed=0)
    ds = SliceDataset(tmp_path / "brain" / "multicoil_val", challenge="multicoil",
                      transform=VarNetDataTransform(RandomMaskFunc([0.08], [4]), use_seed=True),
                      use_dataset_cache=False)
    s = ds[0]
    torch.manual_seed(0)
    ref = VarNet(num_cascades=1, sens_chans=2, sens_pools=1, chans=2, pools=2).eval()
    dyn = DynamicVarNet.from_varnet(ref).eval()
    args = (s.masked_kspace[None], s.mask[None], s.num_low_frequencies)
    with torch.no_grad():
        assert torch.equal(dyn(*args), ref(*args))


def test_grown_state_dict_rebuilds_identically():
    net = tiny()
    batch = make_batch()
    grow(net, ["cascade_1/bottleneck:0", "sens/down_0:1", "cascade_0/up_1:1"], "sample_select",
         [batch], ssim_loss_for(net), n_new=2, generator=torch.Generator().manual_seed(0))
    size = net.get_network_size()
    assert size["cascade_1"]["bottleneck"]["conv1_out"] == 3 * 4 + 2
    for prefix in ("", "varnet."):
        sd = {prefix + k: v for k, v in net.state_dict().items()}
        rebuilt = DynamicVarNet.from_state_dict(sd).eval()
        assert rebuilt.get_network_size() == size
        assert next(rebuilt.parameters()).dtype == F64
        assert all(torch.equal(a, b) for a, b in zip(rebuilt.state_dict().values(),
                                                     net.state_dict().values()))
        assert torch.equal(out(rebuilt, batch), out(net, batch))
    # In place, as a checkpoint load does: a fresh net takes the grown widths.
    fresh = tiny(seed=5)
    fresh.resize_from_state_dict(net.state_dict())
    assert fresh.get_network_size() == size
    fresh.load_state_dict(net.state_dict(), strict=True)


# ------------------------------------------------------------ 2. growth
def test_sites_and_sizes_are_named_by_network():
    net = tiny(num_cascades=2, sens_pools=1, pools=2)
    sites = net.growth_sites()
    assert sites == DynamicVarNet.site_ids(2, 2, 1)
    # 1 pool: 3 blocks x 2 convs and the transposed conv into up_0.
    assert [s.net for s in sites[:7]] == ["sens"] * 7
    assert Site("up_0", "t", "sens") in sites
    assert len(sites) == 7 + 2 * 12  # 2 pools: 5 blocks x 2 convs + 2 transposed convs
    assert sites[7] == Site("down_0", 0, "cascade_0") and sites[7].key == "cascade_0/down_0:0"
    assert list(net.get_network_size()) == ["sens", "cascade_0", "cascade_1"]
    assert net.get_network_size()["cascade_1"] == DynamicUnet(2, 2, 3, 2).get_network_size()
    chosen = parse_sites(["cascade_*/bottleneck", "sens/down_0:1", "up_0:0"], sites)
    assert [s.key for s in chosen] == [
        "sens/down_0:1", "sens/up_0:0",
        "cascade_0/bottleneck:0", "cascade_0/bottleneck:1", "cascade_0/up_0:0",
        "cascade_1/bottleneck:0", "cascade_1/bottleneck:1", "cascade_1/up_0:0"]
    spec = net.site_spec("cascade_1/down_1:1")
    assert spec.site == Site("down_1", 1, "cascade_1")
    assert spec.conv is net.cascades[1].model.unet.down_sample_layers[1].layers[4]
    assert [c.name for c in spec.consumers] == ["bottleneck.conv1", "up_0.conv1 (skip)"]


def _score_sites(net):
    """Every site of the sensitivity U-Net and of the last cascade."""
    return [s for s in net.growth_sites() if s.net in ("sens", f"cascade_{net.num_cascades - 1}")]


def test_one_pass_scores_equal_brute_force_on_the_varnet_loss():
    net = tiny(num_cascades=2, sens_pools=1, pools=1)
    batches = [make_batch(seed=1), make_batch(n=1, seed=2)]
    worst = 0.0
    for site in _score_sites(net):
        spec = net.site_spec(site)
        g = torch.Generator().manual_seed(hash(site.key) % 1000)
        cands = torch.randn(3, *spec.fan_in_shape, generator=g, dtype=F64)
        fast = score_candidates_at(net, site, cands, batches, ssim_loss_for(net))
        slow = brute_force_scores_at(net, site, cands, batches, ssim_loss_for)
        assert slow.abs().min() > 0, site
        err = ((fast - slow).abs().max() / slow.abs().max()).item()
        worst = max(worst, err)
        assert err < 1e-12, (site.key, err)
    assert worst < 1e-12


@pytest.mark.parametrize("method", sorted(METHODS))
def test_growth_at_every_site_keeps_the_varnet_output(method):
    net = tiny()
    batch = make_batch()
    ref = out(net, batch)
    sites = net.growth_sites()
    reports = grow(net, sites, method, [batch], ssim_loss_for(net), n_new=1,
                   generator=torch.Generator().manual_seed(3),
                   method_options={"split_noise": 0.0, "n_candidates": 4})
    assert len(reports) == len(sites)
    assert all(r.width_after == r.width_before + 1 for r in reports)
    err = rel_max_change(out(net, batch), ref)
    assert err < 1e-12, (method, err)
    # The grown VarNet trains: every parameter gets a gradient.
    net.train()
    loss = ssim_loss_for(net)(batch)
    loss.backward()
    assert all(p.grad is not None for p in net.parameters())


@pytest.mark.parametrize("fan_out_init", sorted(FAN_OUT_INITS))
def test_every_fan_out_init_runs_on_the_varnet(fan_out_init):
    net = tiny()
    batch = make_batch()
    ref = out(net, batch)
    sites = parse_sites(["cascade_*/bottleneck:1", "sens/up_0:0"], net.growth_sites())
    reports = grow(net, sites, "sample_select", [batch], ssim_loss_for(net), n_new=2,
                   generator=torch.Generator().manual_seed(0), fan_out_init=fan_out_init)
    assert [r.site for r in reports] == ["sens/up_0 conv1", "cascade_0/bottleneck conv2",
                                         "cascade_1/bottleneck conv2"]
    assert all(r.fan_out_init == fan_out_init for r in reports)
    if fan_out_init == "zero":
        assert rel_max_change(out(net, batch), ref) < 1e-12


def test_removing_channels_at_a_cascade_site_keeps_the_network_consistent():
    # Pruning's surgery, on the VarNet's declared consumers.
    net = tiny()
    batch = make_batch()
    changes = remove_output_channels(net.site_spec("cascade_0/down_0:1"), [0, 2])
    net.sync_attributes()
    assert {ch.module for ch in changes} >= {net.cascades[0].model.unet.down_sample_layers[1].layers[0]}
    size = net.get_network_size()
    assert size["cascade_0"]["down_0"] == {"conv1_out": 3, "conv2_out": 1}
    assert size["cascade_1"]["down_0"] == {"conv1_out": 3, "conv2_out": 3}
    assert out(net, batch).shape == (2, 32, 28)
    rebuilt = DynamicVarNet.from_state_dict(net.state_dict()).eval()
    assert rebuilt.get_network_size() == size
    assert torch.equal(out(rebuilt, batch), out(net, batch))


def test_sample_select_report_names_the_network():
    net = tiny()
    (report,) = grow(net, ["cascade_1/bottleneck:1"], "sample_select", [make_batch()],
                     ssim_loss_for(net), generator=torch.Generator().manual_seed(0))
    assert report.net == "cascade_1" and report.site == "cascade_1/bottleneck conv2"
    assert re.fullmatch(r"Growing cascade_1/bottleneck conv2: Selected candidate \d+ "
                        r"\(score \S+\), 12 -> 13 filters", str(report)), str(report)
    assert report.size_after["cascade_0"] == report.size_before["cascade_0"]
    assert report.params_after > report.params_before


# --------------------------------------------------------- 3. bad input
def test_bad_sites_raise_naming_the_valid_networks():
    net = tiny()
    before = copy.deepcopy(net.state_dict())
    with pytest.raises(ValueError, match=r"Unknown network 'cascade_5'.*valid networks: "
                                         r"sens, cascade_0, cascade_1"):
        net.site_spec("cascade_5/down_0:0")
    with pytest.raises(ValueError, match=r"NET/LAYER:CONV, got 'down_0:0'; valid networks: sens"):
        net.site_spec(Site("down_0", 0))
    with pytest.raises(ValueError, match=r"Unknown layer id 'down_7'"):
        net.site_spec("cascade_0/down_7:0")
    with pytest.raises(ValueError, match=r"Unknown network 'cascade_9'.*valid networks: sens, "
                                         r"cascade_0, cascade_1"):
        parse_sites(["cascade_9/bottleneck"], net.growth_sites())
    with pytest.raises(ValueError, match=r"Unknown network 'cascade_2'"):
        grow(net, ["cascade_0/up_0:0", "cascade_2/up_0:0"], "sample_select", [make_batch()],
             ssim_loss_for(net))
    after = net.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], before[k]) for k in before)


def _drop(sd, prefix):
    for key in [k for k in sd if k.startswith(prefix)]:
        sd.pop(key)


def _other_pools(sd):
    _drop(sd, "cascades.1.")
    sd.update({f"cascades.1.{k}": v for k, v in VarNet(1, 2, 1, 3, 1).cascades[0].state_dict().items()})


def _three_channel_sens(sd):
    _drop(sd, "sens_net.")
    sd.update({"sens_net.norm_unet.unet." + k: v
               for k, v in DynamicUnet(3, 2, 2, 1).state_dict().items()})


# name: (edit of a tiny() state dict, fragments of the message; {p}: the key prefix)
BAD_STATE_DICTS = {
    "inconsistent widths": (
        lambda sd: sd.__setitem__("cascades.1.model.unet.up_conv.0.layers.0.weight",
                                  torch.zeros(6, 7, 3, 3)),
        ["cascade_1 U-Net", "'{p}cascades.1.model.unet.up_conv.0.layers.0.weight' has 7 input "
         "channels, expected 12"]),
    "missing dc_weight": (lambda sd: sd.pop("cascades.0.dc_weight"),
                          ["missing key '{p}cascades.0.dc_weight'"]),
    "missing cascade": (lambda sd: _drop(sd, "cascades.0."),
                        ["no '{p}cascades.0.*' keys", "numbered 0..N-1"]),
    "cascades with other pools": (_other_pools, ["cascade 1's U-Net", "has 1 pools but cascade 0's has 2"]),
    "unexpected key": (lambda sd: sd.__setitem__("cascades.0.model.extra", torch.zeros(1)),
                       ["unexpected key '{p}cascades.0.model.extra'"]),
    "no sensitivity U-Net": (lambda sd: _drop(sd, "sens_net."),
                             ["no '{p}sens_net.norm_unet.unet.*' keys"]),
    "three-channel U-Net": (_three_channel_sens, ["sens U-Net", "in_chans=3, out_chans=2"]),
}


@pytest.mark.parametrize("case", list(BAD_STATE_DICTS))
@pytest.mark.parametrize("prefix", ["", "varnet."])
def test_bad_state_dicts_raise_value_error_naming_the_key(case, prefix):
    edit, fragments = BAD_STATE_DICTS[case]
    sd = dict(tiny(dtype=torch.float32).state_dict())
    edit(sd)
    sd = {prefix + k: v for k, v in sd.items()}
    with pytest.raises(ValueError) as exc:
        DynamicVarNet.from_state_dict(sd)
    message = str(exc.value)
    assert "\n" not in message and message.startswith("state dict matches no valid DynamicVarNet")
    for fragment in fragments:
        assert fragment.format(p=prefix) in message, (case, fragment, message)
    net = tiny(dtype=torch.float32)
    before = copy.deepcopy(net.state_dict())
    with pytest.raises(ValueError):
        net.resize_from_state_dict(sd)
    after = net.state_dict()  # nothing changed
    assert list(after) == list(before) and all(torch.equal(after[k], before[k]) for k in before)


def test_resize_refuses_another_architecture_and_changes_nothing():
    # Another number of cascades is followed (depth growth, tests/test_depth.py);
    # other pools are another architecture.
    net = tiny()
    before = net.get_network_size()
    other = tiny(num_cascades=3, pools=1).state_dict()
    with pytest.raises(ValueError, match=r"sens_pools=1, pools=1, but this one has "
                                         r"sens_pools=1, pools=2"):
        net.resize_from_state_dict(other)
    assert net.get_network_size() == before


def test_single_coil_kspace_is_refused():
    net = tiny(dtype=torch.float32)
    masked, mask, low, _, _ = make_batch(coils=1, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"multicoil k-space of shape \(N, coils, H, W, 2\), got "
                                         r"\(2, 32, 28, 2\) \(single-coil k-space\?"):
        net(masked[:, 0], mask[:, 0], low)


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(num_cascades=0), "num_cascades must be an int >= 1, got 0"),
    (dict(chans=2.5), "chans must be an int >= 1, got 2.5"),
    (dict(sens_pools=0), "sens_pools must be an int >= 1, got 0"),
    (dict(mask_center="yes"), "mask_center must be True or False"),
])
def test_constructor_rejects_bad_values(kwargs, fragment):
    with pytest.raises(ValueError, match=re.escape(fragment)):
        DynamicVarNet(**kwargs)


# ------------------------------------------------ 4. the Lightning module
MODULE_ARCH = dict(num_cascades=2, pools=1, chans=2, sens_pools=1, sens_chans=2)


def test_module_constructor_is_fastmris_plus_the_growth_options():
    from fastmri.pl_modules import VarNetModule as FastmriVarNetModule

    from fastmri_growth.growth.config import defaults
    from fastmri_growth.pl_modules import DynamicVarNetModule

    def params(cls):
        return [(p.name, p.default) for p in inspect.signature(cls.__init__).parameters.values()
                if p.name != "self" and p.kind != p.VAR_KEYWORD]

    assert params(DynamicVarNetModule) == params(FastmriVarNetModule)
    module = DynamicVarNetModule(**MODULE_ARCH)
    assert {name: module.hparams[name] for name in defaults()} == defaults()


def test_module_starts_as_fastmris_varnet_and_grows_on_its_training_loss(tmp_path):
    import pytorch_lightning as pl
    from fastmri.data import SliceDataset
    from fastmri.data.transforms import VarNetDataTransform

    from fastmri_growth.data import generate_dataset
    from fastmri_growth.pl_modules import DynamicVarNetModule, VarNetModule

    generate_dataset(tmp_path, challenges=("knee_multicoil",), splits=("train",), num_volumes=1,
                     num_slices=1, recon_size=32, num_coils=(2, 2), seed=0)
    ds = SliceDataset(tmp_path / "knee" / "multicoil_train", challenge="multicoil",
                      transform=VarNetDataTransform(RandomMaskFunc([0.08], [4]), use_seed=True),
                      use_dataset_cache=False)
    batch = torch.utils.data.default_collate([ds[0]])
    pl.seed_everything(0)
    fixed = VarNetModule(**MODULE_ARCH)
    pl.seed_everything(0)
    module = DynamicVarNetModule(**MODULE_ARCH, layers_to_grow=["cascade_*/bottleneck:0"],
                                 n_candidates=3)
    assert isinstance(module.varnet, DynamicVarNet)
    a, b = fixed.state_dict(), module.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    loss = module.growth_loss(batch)
    with torch.no_grad():
        out_fixed = fixed(batch.masked_kspace, batch.mask, batch.num_low_frequencies)
        target, out_fixed = fastmri.data.transforms.center_crop_to_smallest(batch.target, out_fixed)
        expected = fixed.loss(out_fixed.unsqueeze(1), target.unsqueeze(1),
                              data_range=batch.max_value)
    assert torch.equal(loss.detach(), expected)
    reports = module.grow(["cascade_0/bottleneck:0", "cascade_1/bottleneck:0"], batch, epoch=1)
    assert [r.site for r in reports] == ["cascade_0/bottleneck conv1", "cascade_1/bottleneck conv1"]
    assert module.varnet.get_network_size()["cascade_1"]["bottleneck"]["conv1_out"] == 5
    assert module.checkpoint_widths()["widths"] == module.varnet.get_network_size()


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(layers_to_grow=["cascade_2/bottleneck"]),
     "Unknown network 'cascade_2' in layers_to_grow entry 'cascade_2/bottleneck'; valid "
     "networks: sens, cascade_0, cascade_1"),
    (dict(layers_to_grow=["sens/up_3"]), "Unknown layer 'up_3'"),
    (dict(growth_method="grow_everything"), "Unknown growth method 'grow_everything'"),
    (dict(chans=2.0), "chans must be an int >= 1, got 2.0"),
])
def test_module_rejects_bad_options(kwargs, fragment):
    from fastmri_growth.pl_modules import DynamicVarNetModule

    with pytest.raises(ValueError, match=re.escape(fragment)):
        DynamicVarNetModule(**{**MODULE_ARCH, **kwargs})


# ---------------------------------------------------- 5. the command line
TINY_VARNET = [
    "--num_cascades", "2", "--pools", "1", "--chans", "2", "--sens_pools", "1",
    "--sens_chans", "2", "--accelerator", "cpu", "--devices", "1", "--num_workers", "0",
    "--enable_progress_bar", "false", "--use_dataset_cache_file", "false",
    "--log_every_n_steps", "1",
]
GROWTH = ["--growth-start-epoch", "1", "--layers-to-grow", "cascade_*/bottleneck",
          "sens/down_0:1", "--n-candidates", "3"]
# In this process: Lightning's deterministic mode would stay on for later tests.
IN_PROCESS = ["--deterministic", "false"]


def _widths(path):
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    return ckpt, DynamicVarNet.from_state_dict(ckpt["state_dict"]).get_network_size()


def _one_line_exit_2(code, capfd):
    out, err = capfd.readouterr()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("fastmri-growth-train: error: "), err
    assert "Traceback" not in out + err
    return lines[0]


@pytest.fixture(scope="module")
def multicoil_root(tmp_path_factory):
    """Knee multicoil train/val/test (32x32 targets, 2-3 coils) and a single-coil train split."""
    from fastmri_growth.data import generate_dataset

    root = tmp_path_factory.mktemp("varnet_data")
    generate_dataset(root, challenges=("knee_multicoil",), splits=("train", "val", "test"),
                     num_volumes={"train": 2, "val": 1, "test": 1}, num_slices=2,
                     recon_size=32, num_coils=(2, 3), seed=0)
    generate_dataset(root / "single", challenges=("knee_singlecoil",), splits=("train",),
                     num_volumes=1, num_slices=1, recon_size=32, seed=0)
    return root


@pytest.fixture(scope="module")
def varnet_run(multicoil_root, tmp_path_factory):
    """Two epochs of growing-VarNet training in a real process (growth at epoch 1)."""
    work = tmp_path_factory.mktemp("varnet_cli")
    run_dir = work / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "fastmri_growth.cli.train", "--model-type", "dynamic_varnet",
         "--data_path", str(multicoil_root / "knee"), "--default_root_dir", str(run_dir),
         "--max_epochs", "2", *TINY_VARNET, *GROWTH],
        cwd=work, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir, proc


def test_cli_grows_the_varnet_in_a_lightning_fit(varnet_run):
    run_dir, proc = varnet_run
    for site in ("sens/down_0 conv2", "cascade_0/bottleneck conv1", "cascade_1/bottleneck conv2"):
        assert re.search(rf"^\[epoch 1\] Growing {re.escape(site)}: Selected candidate \d+ ",
                         proc.stdout, flags=re.M), site
    assert "[epoch 0] Growing" not in proc.stdout
    ckpt, widths = _widths(run_dir / "checkpoints" / "last.ckpt")
    assert ckpt["epoch"] == 1
    assert ckpt["hyper_parameters"]["num_cascades"] == 2
    assert ckpt["hyper_parameters"]["layers_to_grow"] == ["cascade_*/bottleneck", "sens/down_0:1"]
    assert ckpt["dynamic_varnet"]["widths"] == widths
    assert ckpt["callbacks"]["GrowthCallback"]["schedule"]["grown_epochs"] == [1]
    for k in (0, 1):  # bottleneck 2 * 2**1 = 4 wide, one filter added per conv
        assert widths[f"cascade_{k}"]["bottleneck"] == {"conv1_out": 5, "conv2_out": 5}
        assert widths[f"cascade_{k}"]["down_0"] == {"conv1_out": 2, "conv2_out": 2}
    assert widths["sens"]["down_0"] == {"conv1_out": 2, "conv2_out": 3}
    assert ckpt["state_dict"]["varnet.sens_net.norm_unet.unet.up_conv.0.0.layers.0.weight"].shape \
        == (2, 2 + 3, 3, 3)  # the skip of sens down_0 carries the new channel
    assert "last validation:  validation_loss" in proc.stdout


def test_cli_resumes_a_grown_varnet_and_grows_once_more(varnet_run, multicoil_root, tmp_path,
                                                        monkeypatch, capsys):
    import shutil

    from fastmri_growth.cli import train

    run_dir = tmp_path / "run"
    shutil.copytree(varnet_run[0], run_dir)
    monkeypatch.chdir(tmp_path)
    code = train.main(["--model-type", "dynamic_varnet", "--data_path",
                       str(multicoil_root / "knee"), "--default_root_dir", str(run_dir),
                       "--max_epochs", "3", *TINY_VARNET, *GROWTH, *IN_PROCESS])
    stdout = capsys.readouterr().out
    assert code == 0
    assert f"Resuming from {run_dir / 'checkpoints' / 'last.ckpt'}" in stdout
    assert "[epoch 1] Growing" not in stdout and "[epoch 2] Growing cascade_1/bottleneck conv1" in stdout
    ckpt, widths = _widths(run_dir / "checkpoints" / "last.ckpt")
    assert ckpt["epoch"] == 2
    assert ckpt["callbacks"]["GrowthCallback"]["schedule"]["grown_epochs"] == [1, 2]
    assert widths["cascade_0"]["bottleneck"] == {"conv1_out": 6, "conv2_out": 6}
    assert widths["sens"]["down_0"] == {"conv1_out": 2, "conv2_out": 4}


def test_cli_test_mode_writes_the_grown_varnets_reconstructions(varnet_run, multicoil_root,
                                                                 tmp_path, monkeypatch, capsys):
    import shutil

    from fastmri.data import SliceDataset
    from fastmri.data.transforms import VarNetDataTransform

    from fastmri_growth.cli import train

    run_dir = tmp_path / "run"
    shutil.copytree(varnet_run[0], run_dir)
    monkeypatch.chdir(tmp_path)
    # Neither --model-type nor --challenge: both follow the checkpoint.
    code = train.main(["--mode", "test", "--data_path", str(multicoil_root / "knee"),
                       "--default_root_dir", str(run_dir), "--accelerator", "cpu",
                       "--devices", "1", "--num_workers", "0", "--enable_progress_bar", "false",
                       "--use_dataset_cache_file", "false", *IN_PROCESS])
    assert code == 0
    assert "(test, dynamic_varnet)" in capsys.readouterr().out
    test_dir = multicoil_root / "knee" / "multicoil_test"
    recon_dir = run_dir / "reconstructions"
    assert sorted(p.name for p in recon_dir.glob("*.h5")) == sorted(p.name for p in test_dir.glob("*.h5"))
    ds = SliceDataset(test_dir, challenge="multicoil", transform=VarNetDataTransform(),
                      use_dataset_cache=False)
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    net = DynamicVarNet.from_state_dict(ckpt["state_dict"]).eval()
    for i in range(len(ds)):
        s = ds[i]
        with torch.no_grad():
            image = net(s.masked_kspace[None], s.mask[None], s.num_low_frequencies)[0]
        image = fastmri.data.transforms.center_crop(image, s.crop_size).numpy()
        with h5py.File(recon_dir / s.fname, "r") as f:
            assert list(f) == ["reconstruction"] and f["reconstruction"].shape == (2, 32, 32)
            np.testing.assert_allclose(f["reconstruction"][s.slice_num], image, rtol=1e-5,
                                       atol=1e-6 * float(np.abs(image).max()))


def test_leaderboard_evaluation_of_a_varnet_checkpoint(varnet_run, multicoil_root, tmp_path):
    import json

    from fastmri_growth.cli import evaluate
    from fastmri_growth.evaluation.inference import fixed_mask_func

    val = multicoil_root / "knee" / "multicoil_val"
    code = evaluate.main(["leaderboard", "--checkpoint", str(varnet_run[0] / "checkpoints" / "last.ckpt"),
                          "--data-path", str(val), "--challenge", "multicoil",
                          "--out", str(tmp_path / "lb"), "--json", str(tmp_path / "lb.json")])
    assert code == 0
    results = json.loads((tmp_path / "lb.json").read_text())["results"]
    assert sorted(results) == ["4x", "8x"]
    for r in results.values():
        assert r["num_volumes"] == 1 and r["mask_type"] == "random"
        assert 0 < r["metrics"]["SSIM"]["mean"] < 1
    # The 4x files hold the VarNet's reconstruction under the fixed mask.
    from fastmri.data import SliceDataset
    from fastmri.data.transforms import VarNetDataTransform

    ckpt = torch.load(varnet_run[0] / "checkpoints" / "last.ckpt", map_location="cpu",
                      weights_only=False)
    net = DynamicVarNet.from_state_dict(ckpt["state_dict"]).eval()
    ds = SliceDataset(val, challenge="multicoil", use_dataset_cache=False,
                      transform=VarNetDataTransform(fixed_mask_func("random", 4), use_seed=True))
    s = ds[1]
    with torch.no_grad():
        image = net(s.masked_kspace[None], s.mask[None], s.num_low_frequencies)[0]
    image = fastmri.data.transforms.center_crop(image, s.crop_size).numpy()
    with h5py.File(tmp_path / "lb" / "4x" / s.fname, "r") as f:
        np.testing.assert_allclose(f["reconstruction"][s.slice_num], image, rtol=1e-5,
                                   atol=1e-6 * float(np.abs(image).max()))


def test_cli_trains_fastmris_fixed_varnet(multicoil_root, tmp_path, monkeypatch, capsys):
    from fastmri_growth.cli import train
    from fastmri_growth.pl_modules import VarNetModule, load_module
    from fastmri_growth.pl_modules.model_types import checkpoint_model_type

    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "fixed"
    code = train.main(["--model-type", "varnet", "--data_path", str(multicoil_root / "knee"),
                       "--default_root_dir", str(run_dir), "--max_epochs", "1",
                       "--limit_train_batches", "2", *TINY_VARNET, *IN_PROCESS])
    assert code == 0
    assert "Growing" not in capsys.readouterr().out
    module = load_module(run_dir / "checkpoints" / "last.ckpt")
    assert type(module) is VarNetModule and type(module.varnet) is VarNet
    assert module.varnet.cascades[1].model.unet.chans == 2
    assert checkpoint_model_type(torch.load(run_dir / "checkpoints" / "last.ckpt",
                                            weights_only=False)) == "varnet"


def test_varnet_model_types_take_fastmris_varnet_demo_defaults():
    from fastmri_growth.cli import train_parser
    from fastmri_growth.cli.data_checks import resolve_paths

    for model_type in ("varnet", "dynamic_varnet"):
        args = train_parser.parse_args(["--model-type", model_type])
        assert (args.challenge, args.mask_type, args.num_cascades, args.pools, args.chans,
                args.sens_pools, args.sens_chans, args.lr, args.lr_step_size, args.lr_gamma,
                args.weight_decay) == ("multicoil", "equispaced_fraction", 8, 4, 18, 4, 8,
                                       0.001, 40, 0.1, 0.0)
        assert (args.seed, args.max_epochs, args.deterministic) == (42, 50, True)
        args.data_path = Path(".")
        resolve_paths(args)
        assert args.default_root_dir == Path(model_type) / f"{model_type}_demo"
    grown = train_parser.parse_args(["--model-type", "dynamic_varnet", "--layers-to-grow",
                                     "cascade_*/up_0:1", "--growth-method", "split"])
    assert (grown.layers_to_grow, grown.growth_method) == (["cascade_*/up_0:1"], "split")
    assert train_parser.parse_args(["--model-type", "unet"]).challenge == "singlecoil"


def test_growth_flags_are_refused_for_the_fixed_varnet(capsys):
    from fastmri_growth.cli import train_parser

    with pytest.raises(SystemExit) as exc:
        train_parser.parse_args(["--model-type", "varnet", "--layers-to-grow",
                                 "cascade_0/bottleneck"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "growth flags need --model-type dynamic_varnet (got --layers-to-grow)" in err[0]


def test_cli_bad_input_is_one_line_exit_2_and_writes_nothing(varnet_run, multicoil_root, tmp_path,
                                                             monkeypatch, capfd):
    import hashlib
    import shutil

    from fastmri_growth.cli import train

    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "run"
    shutil.copytree(varnet_run[0], run_dir)
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in run_dir.rglob("*") if p.is_file()}
    knee = str(multicoil_root / "knee")
    # single-coil files where multicoil ones belong
    fake = tmp_path / "fake"
    for split in ("train", "val"):
        (fake / f"multicoil_{split}").mkdir(parents=True)
        for f in (multicoil_root / "single" / "knee" / "singlecoil_train").glob("*.h5"):
            shutil.copy(f, fake / f"multicoil_{split}" / f.name)
    fresh = ["--default_root_dir", str(tmp_path / "fresh")]
    cases = [
        (["--model-type", "dynamic_varnet", "--data_path", knee, "--challenge", "singlecoil",
          *fresh], "--model-type dynamic_varnet needs multicoil data, got --challenge singlecoil; "
                   "pass --challenge multicoil"),
        (["--model-type", "varnet", "--data_path", str(multicoil_root / "single" / "knee"),
          "--challenge", "singlecoil", *fresh], "--model-type varnet needs multicoil data"),
        (["--model-type", "dynamic_varnet", "--data_path", str(fake), *fresh],
         "has 3-d kspace but --challenge multicoil expects 4-d"),
        (["--model-type", "dynamic_varnet", "--data_path", knee, *fresh, *TINY_VARNET,
          "--layers-to-grow", "cascade_7/bottleneck"],
         "invalid model option: Unknown network 'cascade_7' in layers_to_grow entry "
         "'cascade_7/bottleneck'; valid networks: sens, cascade_0, cascade_1"),
        (["--model-type", "dynamic_varnet", "--data_path", knee, "--default_root_dir",
          str(run_dir), *TINY_VARNET[:1], "3", *TINY_VARNET[2:], *GROWTH],
         "has num_cascades=2 but --num_cascades is 3; pass --num_cascades 2 to resume it"),
        (["--model-type", "varnet", "--mode", "test", "--data_path", knee, "--default_root_dir",
          str(run_dir)], "holds a dynamic_varnet model but --model-type is varnet; pass "
                         "--model-type dynamic_varnet to test it"),
        (["--model-type", "dynamic_unet", "--data_path", knee, "--challenge", "multicoil",
          "--default_root_dir", str(run_dir)],
         "holds a dynamic_varnet model but --model-type is dynamic_unet"),
    ]
    for argv, fragment in cases:
        line = _one_line_exit_2(train.main(argv), capfd)
        assert fragment in line, (argv, line)
    after = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in run_dir.rglob("*") if p.is_file()}
    assert after == before
    assert not (tmp_path / "fresh").exists()


# ----------------------------------------------------------------- 6. DDP
DDP_SCRIPT = r'''
import json, sys
from pathlib import Path
import pytorch_lightning as pl
import torch
from fastmri.data.subsample import RandomMaskFunc
from fastmri.data.transforms import VarNetDataTransform
from pytorch_lightning.strategies import DDPStrategy
from fastmri_growth.pl_modules import DynamicVarNetModule
from fastmri_growth.pl_modules.data_module import FastMriDataModule

data_root, out = Path(sys.argv[1]), Path(sys.argv[2])
mask = RandomMaskFunc(center_fractions=[0.08], accelerations=[4])
data = FastMriDataModule(
    data_root, "multicoil",
    train_transform=VarNetDataTransform(mask_func=mask, use_seed=False),
    val_transform=VarNetDataTransform(mask_func=mask),
    test_transform=VarNetDataTransform(),
    use_dataset_cache_file=False, num_workers=0, distributed_sampler=True,
)
pl.seed_everything(0)
module = DynamicVarNetModule(num_cascades=2, pools=1, chans=2, sens_pools=1, sens_chans=2,
                             n_candidates=3, layers_to_grow=["cascade_*/bottleneck:0", "sens/up_0"],
                             growth_start_epoch=1)
sizes = {}


class Recorder(pl.Callback):
    def on_train_epoch_end(self, trainer, m):
        sizes[trainer.current_epoch] = m.varnet.get_network_size()


trainer = pl.Trainer(
    accelerator="cpu", devices=2, strategy=DDPStrategy(process_group_backend="gloo"),
    max_epochs=3, use_distributed_sampler=False, logger=False, enable_checkpointing=False,
    enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    limit_val_batches=0, callbacks=[Recorder()], default_root_dir=str(out),
)
trainer.fit(module, datamodule=data)
rank = trainer.global_rank
module_ids = sorted(id(p) for p in module.parameters())
torch.save({k: v.detach().clone() for k, v in module.state_dict().items()}, out / f"rank{rank}.pt")
(out / f"rank{rank}.json").write_text(json.dumps({
    "world_size": trainer.world_size,
    "steps": trainer.global_step,
    "sizes": {str(k): v for k, v in sizes.items()},
    "grown_epochs": module.schedule.state["grown_epochs"],
    "selected": [[r.site, r.selected] for r in module.growth_reports],
    "optimizer_holds_module_params":
        sorted(id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]) == module_ids,
    "ddp_wraps_module_params": sorted(id(p) for p in trainer.strategy.model.parameters()) == module_ids,
}))
'''


def test_ddp_growth_keeps_two_ranks_identical(multicoil_root, tmp_path):
    import json
    import os

    script = tmp_path / "ddp_varnet.py"
    script.write_text(DDP_SCRIPT)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_PORT", "MASTER_ADDR")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.run([sys.executable, str(script), str(multicoil_root / "knee"), str(out_dir)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((out_dir / f"rank{r}.json").read_text()) for r in range(2)]
    states = [torch.load(out_dir / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for info in ranks:
        assert info["world_size"] == 2
        assert info["steps"] == 3 * 2  # 4 training slices, 2 per rank, 3 epochs
        assert info["grown_epochs"] == [1, 2]
        sizes = [info["sizes"][str(e)] for e in range(3)]
        assert [s["cascade_1"]["bottleneck"]["conv1_out"] for s in sizes] == [4, 5, 6]
        assert [s["sens"]["up_0"] for s in sizes] == [
            {"conv1_out": c, "conv2_out": c, "transpose_out": 2} for c in (2, 3, 4)]
        assert info["optimizer_holds_module_params"] and info["ddp_wraps_module_params"]
    assert ranks[0]["selected"] == ranks[1]["selected"]
    assert list(states[0]) == list(states[1])
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key


# --------------------------------------------------- 7. README, benchmark
def test_readme_varnet_example_runs(capsys):
    text = (REPO / "README.md").read_text(encoding="utf-8")
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", text, re.S)
                if b.startswith("# example: varnet\n")]
    exec(compile(block, "README.md (varnet example)", "exec"), {"__name__": "readme_varnet"})
    # Its printed lines against its comments: tests/test_readme.py.
    lines = capsys.readouterr().out.splitlines()
    assert re.fullmatch(r"Growing sens/down_0 conv2: Selected candidates \[\d+, \d+\] "
                        r"\(score \S+, \S+\), 4 -> 6 filters", lines[0]), lines
    assert lines[1] == "2"
    assert float(lines[2]) < 1e-6
    assert lines[3] == "{'conv1_out': 26, 'conv2_out': 24}"


def test_varnet_benchmark_runs_at_a_tiny_size(tmp_path):
    from benchmarks import varnet as bench

    res = bench.run(tmp_path, bench.TINY)
    rows = res["cost"]["rows"]
    assert [r["sites"] for r in rows] == [["cascade_0/down_0:1"], ["cascade_0/bottleneck:0"],
                                          ["sens/down_0:1"], ["cascade_0/bottleneck:0"]]
    assert all(r["growth_step"]["median_s"] > 0 and r["train_step"]["median_s"] > 0 for r in rows)
    assert res["cost"]["scoring"]["float32_rel_error"] < 1e-4
    runs = {r["config"]: r for r in res["quality"]["runs"]}
    assert set(runs) == set(bench.CONFIGS)
    assert runs["grown"]["final_params"] > runs["fixed_small"]["final_params"]
    assert runs["grown"]["growth_flops"] > 0 == runs["fixed_small"]["growth_flops"]
    assert runs["fixed_large"]["final_bottleneck"] == 2 * runs["fixed_small"]["final_bottleneck"]
    for r in runs.values():
        assert sorted(r["metrics"]) == [4, 8] and 0 < r["metrics"][4]["SSIM"] < 1
    table = bench.tables(res)
    assert "| growing VarNet from chans 2 |" in table and "growing - fixed chans 2" in table


# ------------------------------------ the engine's decisions and pruning on the VarNet
def test_auto_sites_pruning_and_budget_targets_on_the_varnet():
    from fastmri_growth.growth import prune
    from fastmri_growth.growth.schedule import budget_targets_for

    net = tiny()
    batch = make_batch()
    ref = out(net, batch)
    loss = ssim_loss_for(net)
    # Auto sites: the best two of every U-Net's sites, ranked from one pass.
    reports = grow(net, None, "gradmax", [batch], loss, n_new=2, auto_sites=2,
                   generator=torch.Generator().manual_seed(0),
                   method_options={"n_candidates": 2, "gradmax_directions": 1})
    assert len(reports) == 2 and all(r.net for r in reports)
    assert rel_max_change(out(net, batch), ref) < 1e-12
    # Pruning the two new (zero-fan-out) filters of each grown site gives the output back.
    removals = {r.site_id: [r.width_before, r.width_before + 1] for r in reports}
    pruned = prune(net, removals, "taylor", [batch], loss)
    assert all(sorted(p.removed) == [r.width_before, r.width_before + 1]
               for p, r in zip(pruned, reports))
    assert net.get_network_size() == tiny().get_network_size()
    assert rel_max_change(out(net, batch), ref) < 1e-12
    # Budget targets: every U-Net scaled by target_chans / chans; the count is exact.
    start, target, params = budget_targets_for(net, net.growth_sites(), target_chans=6)
    assert target["cascade_0/down_0:0"] == 6 and target["sens/down_0:0"] == 4  # 2 * 6 / 3
    grown = tiny(chans=6, sens_chans=4)
    assert params == grown.num_parameters()
