"""Growth under torch.compile: the same scores and decisions as eager, and a grown net that runs.

The one-pass scores read the site convs' inputs and the consumers' outputs
through forward hooks; a compiled graph skipped them and every score was
zero, so ``sample_select`` and ``gradmax`` silently kept candidate 0. The
statistics pass now runs eagerly inside (:func:`fastmri_growth.growth.
statistics.eager`). ``aot_eager`` traces the graph as inductor does but runs
it with eager kernels, so it is fast enough for every test here; one test
runs inductor itself (it needs a C compiler and about half a minute).
"""
import copy
import re
import shutil

import pytest
import torch
from torch.nn import functional as F

from fastmri_growth.models import DynamicUnet
from fastmri_growth.pl_modules import DynamicUnetModule

from .fit_helpers import cpu_trainer, slice_loader

dynamo = pytest.importorskip("torch._dynamo", reason="torch.compile (dynamo) is unavailable")
if not dynamo.is_dynamo_supported():
    pytest.skip("torch.compile is not supported on this Python/platform", allow_module_level=True)


@pytest.fixture(autouse=True)
def fresh_dynamo():
    dynamo.reset()
    yield
    dynamo.reset()


def _net_and_batch():
    torch.manual_seed(0)
    net = DynamicUnet(1, 1, chans=4, num_pool_layers=2, n_candidates=6)
    x, y = torch.randn(2, 1, 16, 16), torch.randn(2, 1, 16, 16)
    return net, x, y


def _compiled(net, how, backend):
    """``net`` compiled in place (``nn.Module.compile``) or wrapped (``torch.compile``)."""
    if how == "in_place":
        net.compile(backend=backend)
        return net
    return torch.compile(net, backend=backend)


def _grow(net, x, y, method, seed):
    return net.grow_network("down_1", 0, x, y, n_new=2, method=method,
                            generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("how", ["in_place", "wrapped"])
@pytest.mark.parametrize("method", ["sample_select", "gradmax"])
def test_compiled_scores_and_growth_equal_eager_aot_eager(method, how):
    """Two growth events on a compiled copy: the same scores (exactly), the same choices,
    the same grown weights as the eager net, and the compiled net then runs the grown
    network (its output equals the eager net's)."""
    eager, x, y = _net_and_batch()
    compiled = _compiled(copy.deepcopy(eager), how, "aot_eager")
    torch.testing.assert_close(compiled(x), eager(x), rtol=0, atol=0)
    for seed in range(2):
        r_eager, r_comp = _grow(eager, x, y, method, seed), _grow(compiled, x, y, method, seed)
        assert r_comp.scores == r_eager.scores
        assert r_comp.selected == r_eager.selected
        assert min(r_comp.scores) > 0  # scores were all zero under compile
        out = compiled(x)
        assert out.shape == (2, 1, 16, 16)
        torch.testing.assert_close(out, eager(x), rtol=0, atol=0)
        out.sum().backward()  # the compiled backward of the grown net runs too
    inner = compiled if how == "in_place" else compiled._orig_mod
    for (name, a), b in zip(eager.state_dict().items(), inner.state_dict().values()):
        assert torch.equal(a, b), name
    assert inner.get_network_size()["down_1"]["conv1_out"] == 8 + 4


def test_compiled_scores_are_not_zero_without_the_eager_pass(monkeypatch):
    """The fault the eager pass fixes: with it disabled, a compiled net scores all zeros."""
    from fastmri_growth.growth import statistics
    from fastmri_growth.models.dynamic_unet import score_candidates

    eager, x, y = _net_and_batch()
    compiled = _compiled(copy.deepcopy(eager), "in_place", "aot_eager")
    compiled(x)
    cands = torch.randn(5, 4, 3, 3, generator=torch.Generator().manual_seed(1))
    want = score_candidates(eager, "down_1", 0, cands, x, y)
    torch.testing.assert_close(score_candidates(compiled, "down_1", 0, cands, x, y), want,
                               rtol=0, atol=0)
    from contextlib import nullcontext
    monkeypatch.setattr(statistics, "eager", nullcontext)
    assert torch.count_nonzero(score_candidates(compiled, "down_1", 0, cands, x, y)) == 0


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                    reason="inductor on the CPU needs a C compiler")
def test_inductor_scores_equal_eager_and_grown_net_runs():
    """Inductor itself (slow: one compile before and one after the growth event)."""
    torch.manual_seed(0)
    eager = DynamicUnet(1, 1, chans=2, num_pool_layers=1, n_candidates=4)
    x, y = torch.randn(1, 1, 8, 8), torch.randn(1, 1, 8, 8)
    compiled = copy.deepcopy(eager)
    compiled.compile(backend="inductor")
    torch.testing.assert_close(compiled(x), eager(x))
    r_eager = eager.grow_network("bottleneck", 0, x, y, n_new=1,
                                 generator=torch.Generator().manual_seed(0))
    r_comp = compiled.grow_network("bottleneck", 0, x, y, n_new=1,
                                   generator=torch.Generator().manual_seed(0))
    assert r_comp.scores == r_eager.scores and min(r_comp.scores) > 0
    assert r_comp.selected == r_eager.selected
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), eager(x))


# ---------------------------------------------------------------------------
# through GrowthCallback in a fit
# ---------------------------------------------------------------------------

FIT = dict(chans=2, num_pool_layers=2, n_candidates=4, layers_to_grow=["down_0:1", "up_1:0"],
           growth_start_epoch=0)


def _fit(root, knee, compile_how):
    torch.manual_seed(0)
    module = DynamicUnetModule(**FIT)
    fitted = module
    if compile_how == "net":
        module.unet.compile(backend="aot_eager")
    elif compile_how == "module":
        fitted = torch.compile(module, backend="aot_eager")
    trainer = cpu_trainer(root, 2)
    trainer.fit(fitted, slice_loader(knee))
    return module, trainer


@pytest.mark.parametrize("compile_how", ["net", "module"])
def test_growth_callback_scores_under_compile_equal_eager(tiny_knee_root, tmp_path, compile_how):
    """A 2-epoch fit growing at epochs 0 and 1: the first event (same weights in both runs)
    has exactly the eager run's scores and choices; every event's scores are non-zero; the
    compiled net runs the grown network."""
    eager, _ = _fit(tmp_path / "eager", tiny_knee_root, None)
    comp, trainer = _fit(tmp_path / "compiled", tiny_knee_root, compile_how)
    assert len(comp.growth_reports) == len(eager.growth_reports) == 4
    for a, b in zip(comp.growth_reports[:2], eager.growth_reports[:2]):
        assert (a.layer_idx, a.conv_idx) == (b.layer_idx, b.conv_idx)
        assert a.scores == b.scores and a.selected == b.selected
    assert all(min(r.scores) > 0 for r in comp.growth_reports)
    assert comp.unet.get_network_size() == eager.unet.get_network_size()
    image = next(iter(slice_loader(tiny_knee_root))).image.unsqueeze(1)
    comp.eval()
    with torch.no_grad():
        torch.testing.assert_close(comp.unet(image), comp.unet.forward(image), rtol=0, atol=0)


# ---------------------------------------------------------------------------
# the training command's --compile
# ---------------------------------------------------------------------------

CLI_ARGS = ["--challenge", "singlecoil", "--chans", "2", "--num_pool_layers", "2",
            "--n-candidates", "4", "--layers-to-grow", "down_0:1", "up_1:0",
            "--growth-start-epoch", "0", "--max_epochs", "1", "--limit_train_batches", "2",
            "--limit_val_batches", "1", "--accelerator", "cpu", "--devices", "1",
            "--num_workers", "0", "--enable_progress_bar", "false",
            "--use_dataset_cache_file", "false"]


def _cli(root, knee, capsys, *extra):
    from fastmri_growth.cli import train

    dynamo.reset()
    code = train.main(["--data_path", str(knee), "--default_root_dir", str(root),
                       *CLI_ARGS, *extra])
    out = capsys.readouterr()
    assert code == 0, out.err[-3000:]
    return [line for line in out.out.splitlines() if "Growing" in line]


def test_cli_compile_trains_compiled_and_grows_as_eager(tiny_knee_root, tmp_path, capsys):
    """``--compile --compile-backend aot_eager``: the epoch-0 growth lines (scores and
    choices) equal the eager run's, the grown net trains compiled, the checkpoint keeps
    the eager keys and loads, and a bad backend is one line naming the valid ones."""
    eager = _cli(tmp_path / "eager", tiny_knee_root, capsys)
    compiled = _cli(tmp_path / "compiled", tiny_knee_root, capsys, "--compile",
                    "--compile-backend", "aot_eager")
    assert len(eager) == 2 and compiled == eager, (compiled, eager)
    scores = [float(v) for v in re.findall(r"\(score ([0-9.e+-]+)\)", " ".join(compiled))]
    assert len(scores) == 2 and min(scores) > 0  # zero scores were the fault
    ckpt = torch.load(tmp_path / "compiled" / "checkpoints" / "last.ckpt", map_location="cpu",
                      weights_only=False)
    assert not [k for k in ckpt["state_dict"] if "_orig_mod" in k]
    from fastmri_growth.pl_modules import load_module

    module = load_module(tmp_path / "compiled" / "checkpoints" / "last.ckpt")
    assert module.unet.get_network_size()["down_0"]["conv2_out"] == 2 + 1

    from fastmri_growth.cli import train_parser

    with pytest.raises(SystemExit) as exc:
        train_parser.parse_args(["--compile", "--compile-backend", "tvm"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'tvm'" in err[0] and "aot_eager" in err[0], err


def test_compiled_varnet_scores_equal_eager_aot_eager():
    """The VarNet (SSIM loss through data consistency and coil sensitivities) too."""
    import fastmri
    from fastmri.data.subsample import EquispacedMaskFractionFunc
    from fastmri.data.transforms import apply_mask

    from fastmri_growth.growth import grow, parse_sites
    from fastmri_growth.models import DynamicVarNet

    torch.manual_seed(0)
    eager = DynamicVarNet(num_cascades=1, sens_chans=2, sens_pools=1, chans=2, pools=1).eval()
    compiled = copy.deepcopy(eager)
    compiled.compile(backend="aot_eager")
    g = torch.Generator().manual_seed(1)
    kspace = torch.randn(1, 2, 32, 24, 2, generator=g)
    masked, mask, low = apply_mask(kspace, EquispacedMaskFractionFunc([0.25], [2]), seed=0)
    batch = (masked, mask.bool(), low, torch.rand(1, 32, 24, generator=g), torch.ones(1))
    ssim = fastmri.SSIMLoss()

    def loss_of(net):
        def loss(b):
            out = net(*b[:3])
            return ssim(out.unsqueeze(1), b[3].unsqueeze(1), data_range=b[4])
        return loss

    sites = parse_sites(["cascade_0/bottleneck:0", "sens/down_0:1"], eager.growth_sites())
    reports = {}
    for name, net in (("eager", eager), ("compiled", compiled)):
        reports[name] = grow(net, sites, "sample_select", batches=[batch], loss_fn=loss_of(net),
                             n_new=1, generator=torch.Generator().manual_seed(0))
    for a, b in zip(reports["compiled"], reports["eager"]):
        assert a.scores == b.scores and a.selected == b.selected and min(a.scores) > 0
    with torch.no_grad():
        torch.testing.assert_close(compiled(*batch[:3]), eager(*batch[:3]), rtol=0, atol=0)
