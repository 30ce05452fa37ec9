"""Depth growth: cascades inserted into a VarNet during training.

1. ``DynamicVarNet.add_cascades``: exact at insertion (gate 0), both inits;
   gates in the state dict while fading, dropped at 1, after which the
   state dict loads strictly into fastMRI's VarNet with identical outputs;
   resizing from a state dict with other cascades and gates.
2. The optimizer helper: new parameters join a group, one step moves them.
3. The schedule (pure): due epochs, idempotence, gate values by step.
4. A Lightning fit: resume mid-fade equals the uninterrupted run (with
   width growth of every cascade, inserted ones included); checkpoints
   record the cascades.
5. The command line: flags in --help, bad values refused (exit 2, one
   line), a U-Net given cascade flags refused; the README's depth example.
6. DDP: two ranks insert the same cascades at the same steps, with the same
   gates and identical weights (fresh cascades and width growth included).
"""
import re
from pathlib import Path

import fastmri
import pytest
import pytorch_lightning as pl
import torch
from fastmri.data import SliceDataset
from fastmri.data.subsample import EquispacedMaskFractionFunc, RandomMaskFunc
from fastmri.data.transforms import VarNetDataTransform, apply_mask
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from fastmri_growth.cli import train
from fastmri_growth.growth.depth import DepthSchedule, extend_budget
from fastmri_growth.growth.optim import add_params_to_optimizer
from fastmri_growth.models import DynamicVarNet

F32 = torch.float32
ARCH = dict(num_cascades=2, sens_chans=2, sens_pools=1, chans=3, pools=2)


def make_batch(n=2, coils=3, h=32, w=28, dtype=F32, seed=1):
    g = torch.Generator().manual_seed(seed)
    kspace = torch.randn(n, coils, h, w, 2, generator=g, dtype=dtype)
    masked, mask, low = apply_mask(kspace, EquispacedMaskFractionFunc([0.25], [2]), seed=seed)
    target = torch.rand(n, h, w, generator=g, dtype=dtype)
    return masked, mask.bool(), low, target, torch.ones(n, dtype=dtype)


def tiny(seed=0, **kw):
    torch.manual_seed(seed)
    return DynamicVarNet(**{**ARCH, **kw}).eval()


def out(model, batch):
    with torch.no_grad():
        return model(*batch[:3])


def rel(new, ref):
    return float((new - ref).norm() / ref.norm())


def loss_of(model, batch):
    ssim = fastmri.SSIMLoss()
    masked, mask, low, target, max_value = batch
    return ssim(model(masked, mask, low).unsqueeze(1), target.unsqueeze(1), data_range=max_value)


# ------------------------------------------------------------ 1. the network
@pytest.mark.parametrize("init", ["copy", "fresh"])
@pytest.mark.parametrize("position", ["end", "start", 1])
def test_insertion_leaves_the_output_unchanged(init, position):
    model, batch = tiny(), make_batch()
    before = out(model, batch)
    report = model.add_cascades(2 if position == 1 else 1, position=position, init=init, seed=5)
    assert model.num_cascades == report.cascades_after == 2 + report.n
    assert rel(out(model, batch), before) <= 1e-6
    assert model.cascade_gates() == {k: 0.0 for k in report.indices}
    assert report.params_after - report.params_before == sum(
        p.numel() for p in report.new_parameters)
    # Open the gates halfway: the new cascades now act.
    model.set_cascade_gates(0.5)
    assert rel(out(model, batch), before) > 1e-4


def test_copy_starts_from_the_neighbour_and_fresh_from_fastmris_default_init():
    model = tiny()
    model.add_cascades(init="copy")
    new, neighbour = model.cascades[2].state_dict(), model.cascades[1].state_dict()
    assert all(torch.equal(new[k], neighbour[k]) for k in neighbour if k != "gate")
    fresh = tiny()
    fresh.add_cascades(init="fresh", seed=3)
    # fastMRI's default: the block as VarNet builds it, under that seed.
    torch.manual_seed(3)
    expected = fastmri.models.varnet.VarNetBlock(fastmri.models.varnet.NormUnet(3, 2))
    got = fresh.cascades[2].state_dict()
    assert all(torch.equal(got[k], v) for k, v in expected.state_dict().items())
    assert not torch.equal(got["model.unet.conv.layers.0.weight"],
                           neighbour["model.unet.conv.layers.0.weight"])
    # The global random state is left alone by a seeded fresh cascade.
    m = tiny()
    state = torch.random.get_rng_state()
    m.add_cascades(init="fresh", seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_fresh_cascade_takes_a_grown_neighbours_widths():
    model, batch = tiny(), make_batch()
    loss = lambda b: loss_of(model, b)  # noqa: E731
    from fastmri_growth.growth import get_method, grow

    model.train()
    grow(model, ["cascade_1/bottleneck:0"], get_method("random"), [batch], loss, n_new=2,
         generator=torch.Generator().manual_seed(0))
    model.eval()
    before = out(model, batch)
    model.add_cascades(init="fresh", seed=0)
    size = model.get_network_size()
    assert size["cascade_2"] == size["cascade_1"] != size["cascade_0"]
    assert rel(out(model, batch), before) <= 1e-6


def test_gates_are_in_the_state_dict_while_fading_and_gone_at_one():
    model, batch = tiny(), make_batch()
    model.add_cascades(init="copy")
    model.set_cascade_gates(0.25)
    sd = model.state_dict()
    assert torch.equal(sd["cascades.2.gate"], torch.tensor([0.25]))
    # A state dict with a gate rebuilds (resizes) to the same fading network.
    rebuilt = DynamicVarNet.from_state_dict(sd).eval()
    assert rebuilt.cascade_gates() == {2: 0.25}
    assert torch.equal(out(rebuilt, batch), out(model, batch))
    assert model.set_cascade_gates(1.0) == {}
    sd = model.state_dict()
    assert not any(k.endswith(".gate") for k in sd)
    fixed = fastmri.models.VarNet(num_cascades=3, sens_chans=2, sens_pools=1, chans=3,
                                  pools=2).eval()
    fixed.load_state_dict(sd, strict=True)
    with torch.no_grad():
        assert torch.equal(fixed(*batch[:3]), out(model, batch))


def test_resize_from_state_dict_follows_cascades_and_gates():
    grown = tiny()
    grown.add_cascades(2, init="fresh", seed=1)
    grown.set_cascade_gates({2: 1.0, 3: 0.5})
    small = tiny(seed=4)
    small.resize_from_state_dict(grown.state_dict())
    small.load_state_dict(grown.state_dict(), strict=True)
    assert small.num_cascades == 4 and small.cascade_gates() == {3: 0.5}
    # And back down: fewer cascades, no gate.
    plain = tiny(seed=2, num_cascades=1)
    small.resize_from_state_dict(plain.state_dict())
    small.load_state_dict(plain.state_dict(), strict=True)
    assert small.num_cascades == 1 and small.cascade_gates() == {}


@pytest.mark.parametrize("call, fragment", [
    (lambda m: m.add_cascades(0), "n must be an int >= 1, got 0"),
    (lambda m: m.add_cascades(position=3), "position must be 'end', 'start' or an int in [0, 2], "
                                           "got 3"),
    (lambda m: m.add_cascades(init="clone"), "Unknown cascade init 'clone'; valid: copy, fresh"),
    (lambda m: m.set_cascade_gates(1.5), "a cascade gate must be a number in [0, 1], got 1.5"),
    (lambda m: m.set_cascade_gates({7: 0.5}), "cascade index must be an int in [0, 1], got 7"),
])
def test_bad_depth_arguments_are_refused_before_anything_changes(call, fragment):
    model = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=re.escape(fragment)):
        call(model)
    after = model.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], before[k]) for k in before)


def test_bad_gate_key_shape_names_the_key():
    sd = tiny().state_dict()
    sd["cascades.1.gate"] = torch.zeros(2)
    with pytest.raises(ValueError, match=re.escape("'cascades.1.gate' has shape (2,)")):
        DynamicVarNet.from_state_dict(sd)


# ------------------------------------------------------------ 2. the optimizer
def test_new_cascade_joins_the_optimizer_and_one_step_moves_it():
    model, batch = tiny(), make_batch()
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss_of(model, batch).backward()
    opt.step()
    opt.zero_grad()
    old = [p for g in opt.param_groups for p in g["params"]]
    steps = {id(p): int(opt.state[p]["step"]) for p in old}
    report = model.add_cascades(init="copy")
    assert add_params_to_optimizer(opt, report.new_parameters) == len(report.new_parameters)
    held = opt.param_groups[0]["params"]
    assert held[:len(old)] == old and held[len(old):] == report.new_parameters
    # The optimizer's order is the module's: a resumed run rebuilds it so.
    assert [id(p) for p in held] == [id(p) for p in model.parameters()]
    model.set_cascade_gates(0.5)  # at 0 the new cascade gets no gradient
    before = [p.detach().clone() for p in report.new_parameters]
    loss_of(model, batch).backward()
    opt.step()
    assert all(not torch.equal(b, p) for b, p in zip(before, report.new_parameters)
               if p.grad is not None and p.grad.abs().sum() > 0)
    assert any(not torch.equal(b, p) for b, p in zip(before, report.new_parameters))
    assert all(int(opt.state[p]["step"]) == steps[id(p)] + 1 for p in old)
    assert all(int(opt.state[p]["step"]) == 1 for p in report.new_parameters)
    with pytest.raises(ValueError, match="already in the optimizer"):
        add_params_to_optimizer(opt, report.new_parameters[:1])
    with pytest.raises(ValueError, match=re.escape("group must be a param group index in [0, 0], "
                                                   "got 2")):
        add_params_to_optimizer(opt, [torch.nn.Parameter(torch.zeros(1))], group=2)


def test_new_parameters_go_before_a_given_parameter():
    a, b, c = (torch.nn.Parameter(torch.zeros(1)) for _ in range(3))
    opt = torch.optim.SGD([a, c], lr=0.1)
    add_params_to_optimizer(opt, [b], before=c)
    assert opt.param_groups[0]["params"] == [a, b, c]


# ------------------------------------------------------------ 3. the schedule
def test_schedule_is_a_function_of_epoch_cascades_and_step():
    s = DepthSchedule(target=4, interval=2, start_epoch=1, fade_steps=4)
    assert [e for e in range(8) if s.due(e, 2)] == [1, 3, 5, 7]
    assert s.planned_epochs(2, 0, 8) == [1, 3]
    s.record(1, 10, [2])
    assert s.due(1, 3) == 0  # idempotent
    assert s.gates(10) == {2: 0.0} and s.gates(12) == {2: 0.5} and s.gates(20) == {2: 1.0}
    assert s.fading(13) and not s.fading(14)
    again = DepthSchedule(target=4, interval=2, start_epoch=1, fade_steps=4)
    again.load_state_dict(s.state_dict())
    assert again.gates(11) == s.gates(11)
    with pytest.raises(ValueError, match="target_cascades=1 is below the network's 2 cascades"):
        DepthSchedule(target=1).check_start(2)
    budget = {"start": {"cascade_1/down_0:0": 3, "sens/down_0:0": 2},
              "target": {"cascade_1/down_0:0": 6, "sens/down_0:0": 4}, "target_params": 1}
    extend_budget(budget, "cascade_1", ["cascade_2"])
    assert budget["start"]["cascade_2/down_0:0"] == 3 and budget["target"]["cascade_2/down_0:0"] == 6


# ------------------------------------------------------------ 4. Lightning
MODULE_ARCH = dict(num_cascades=1, pools=1, chans=2, sens_pools=1, sens_chans=2)
# Insertions at epochs 1 and 3 (2 batches an epoch: global steps 2 and 6),
# fading over 3 steps; width growth of every cascade's bottleneck at epoch 2.
DEPTH = dict(target_cascades=3, cascade_start_epoch=1, cascade_interval=2, cascade_fade_steps=3,
             growth_method="random", layers_to_grow=["cascade_*/bottleneck:0"],
             growth_interval=4, growth_start_epoch=2, growth_batches=1)


@pytest.fixture(scope="module")
def multicoil(tmp_path_factory):
    from fastmri_growth.data import generate_dataset

    root = tmp_path_factory.mktemp("depth_data")
    generate_dataset(root, challenges=("knee_multicoil",), splits=("train", "val"),
                     num_volumes=1, num_slices=2, recon_size=32, num_coils=(2, 2), seed=0)
    return root / "knee"


def _loader(knee):
    ds = SliceDataset(knee / "multicoil_train", challenge="multicoil", use_dataset_cache=False,
                      transform=VarNetDataTransform(RandomMaskFunc([0.08], [4]), use_seed=True))
    return DataLoader(ds, batch_size=1)


def _fit(knee, root, epochs, ckpt_path=None):
    from fastmri_growth.pl_modules import DynamicVarNetModule

    pl.seed_everything(0)
    module = DynamicVarNetModule(**MODULE_ARCH, lr=1e-3, **DEPTH)
    trainer = pl.Trainer(accelerator="cpu", max_epochs=epochs, logger=False, deterministic=True,
                         enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, limit_val_batches=0,
                         default_root_dir=str(root),
                         callbacks=[ModelCheckpoint(dirpath=root / "ckpt", save_last=True)])
    trainer.fit(module, _loader(knee), ckpt_path=ckpt_path)
    return module, trainer


@pytest.fixture(scope="module")
def runs(multicoil, tmp_path_factory):
    root = tmp_path_factory.mktemp("depth_resume")
    a, ta = _fit(multicoil, root / "a", 4)
    b1, _ = _fit(multicoil, root / "b", 2)
    midway = root / "b" / "midway.ckpt"
    midway.write_bytes((root / "b" / "ckpt" / "last.ckpt").read_bytes())
    b2, tb2 = _fit(multicoil, root / "b", 4, ckpt_path=str(midway))
    return dict(a=a, ta=ta, b1=b1, b2=b2, tb2=tb2, midway=midway)


def test_resume_mid_fade_equals_the_uninterrupted_run(runs):
    a, b2, ta, tb2 = runs["a"], runs["b2"], runs["ta"], runs["tb2"]
    assert a.varnet.num_cascades == b2.varnet.num_cascades == 3
    assert runs["b1"].varnet.num_cascades == 2
    assert ta.global_step == tb2.global_step == 8
    events = a.growth_callback.depth.events
    assert [(e["epoch"], e["step"], e["cascades"]) for e in events] == [(1, 2, [1]), (3, 6, [2])]
    assert b2.growth_callback.depth.events == events
    # The last cascade is still fading (steps 6, 7 of 6..9), the first is plain.
    assert a.varnet.cascade_gates() == b2.varnet.cascade_gates() == {2: pytest.approx(1 / 3)}
    # Width growth at epoch 2 reached the inserted cascade_1; cascade_2 copied it.
    size = a.varnet.get_network_size()
    assert [size[f"cascade_{k}"]["bottleneck"]["conv1_out"] for k in range(3)] == [5, 5, 5]
    sa, sb = a.state_dict(), b2.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key
    opt_a, opt_b = ta.optimizers[0], tb2.optimizers[0]
    pa = [p for g in opt_a.param_groups for p in g["params"]]
    pb = [p for g in opt_b.param_groups for p in g["params"]]
    assert [p.shape for p in pa] == [p.shape for p in pb]
    assert [id(p) for p in pa] == [id(p) for p in a.parameters()]
    for x, y in zip(pa, pb):
        for key in opt_a.state[x]:
            torch.testing.assert_close(torch.as_tensor(opt_a.state[x][key]),
                                       torch.as_tensor(opt_b.state[y][key]), rtol=0, atol=0)


def test_the_midway_checkpoint_records_cascades_and_the_fading_gate(runs):
    ckpt = torch.load(runs["midway"], map_location="cpu", weights_only=False)
    info = ckpt["dynamic_varnet"]
    assert info["num_cascades"] == 2 and info["cascade_gates"] == {1: pytest.approx(1 / 3)}
    assert "varnet.cascades.1.gate" in ckpt["state_dict"]
    assert ckpt["hyper_parameters"]["num_cascades"] == 1  # where it started
    assert ckpt["callbacks"]["GrowthCallback"]["depth"]["events"] == [
        {"epoch": 1, "step": 2, "cascades": [1]}]
    from fastmri_growth.pl_modules import load_module

    loaded = load_module(runs["midway"])
    assert loaded.varnet.num_cascades == 2
    assert loaded.varnet.cascade_gates() == {1: pytest.approx(1 / 3)}
    bad = dict(ckpt, dynamic_varnet=dict(info, num_cascades=5))
    with pytest.raises(ValueError, match="records num_cascades=5 but its tensors hold 2"):
        type(loaded)(**MODULE_ARCH, **DEPTH).on_load_checkpoint(bad)


def test_a_unet_module_given_depth_options_is_refused_naming_the_value():
    from fastmri_growth.pl_modules import DynamicUnetModule, GrowthCallback
    from fastmri_growth.models import DynamicUnet

    with pytest.raises(ValueError, match=re.escape(
            "target_cascades=3 needs a network with cascades (DynamicVarNet); "
            "DynamicUnetModule has no cascades")):
        DynamicUnetModule(chans=2, num_pool_layers=2, target_cascades=3)
    with pytest.raises(ValueError, match=re.escape("DynamicUnet has no cascades")):
        GrowthCallback(target_cascades=3).prepare(DynamicUnet(1, 1, chans=2, num_pool_layers=2))
    from fastmri_growth.pl_modules import DynamicVarNetModule

    with pytest.raises(ValueError, match="target_cascades=1 is below the network's 2 cascades"):
        DynamicVarNetModule(**{**MODULE_ARCH, "num_cascades": 2}, target_cascades=1)


# ------------------------------------------------------------ 5. the command line
def _one_line_exit_2(code, capfd):
    out_, err = capfd.readouterr()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("fastmri-growth-train: error: "), err
    assert "Traceback" not in out_ + err
    return lines[0]


def test_cli_help_lists_the_depth_flags(capsys):
    with pytest.raises(SystemExit) as exc:
        train.main(["--model-type", "dynamic_varnet", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--target-cascades", "--cascade-interval", "--cascade-start-epoch",
                 "--cascade-fade-steps", "--cascade-init {copy,fresh}"):
        assert flag in text, flag


TINY_VARNET = ["--num_cascades", "2", "--pools", "1", "--chans", "2", "--sens_pools", "1",
               "--sens_chans", "2", "--accelerator", "cpu", "--devices", "1",
               "--num_workers", "0", "--use_dataset_cache_file", "false"]


@pytest.mark.parametrize("argv, fragments", [
    (["--model-type", "dynamic_unet", "--target-cascades", "3"],
     ["--target-cascades 3 applies to backbones with cascades (--model-type dynamic_varnet)",
      "--model-type dynamic_unet has none"]),
    (["--model-type", "dynamic_unet", "--cascade-init", "fresh"], ["--cascade-init fresh"]),
    (["--model-type", "dynamic_varnet", *TINY_VARNET, "--cascade-interval", "2"],
     ["--cascade-interval is an option of depth growth, which needs --target-cascades N"]),
    (["--model-type", "dynamic_varnet", *TINY_VARNET, "--target-cascades", "0"],
     ["target_cascades must be an int >= 1 or None, got 0"]),
    (["--model-type", "dynamic_varnet", *TINY_VARNET, "--target-cascades", "1"],
     ["target_cascades=1 is below the network's 2 cascades"]),
    (["--model-type", "dynamic_varnet", *TINY_VARNET, "--target-cascades", "3",
      "--cascade-fade-steps", "-1"], ["cascade_fade_steps must be an int >= 0, got -1"]),
    (["--model-type", "dynamic_varnet", "--cascade-init", "clone"],
     ["invalid choice: 'clone'", "copy", "fresh"]),
    (["--model-type", "varnet", "--target-cascades", "3"],
     ["growth flags need --model-type dynamic_varnet (got --target-cascades)"]),
])
def test_cli_refuses_bad_depth_flags_in_one_line(argv, fragments, multicoil, tmp_path,
                                                  monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    argv = argv + ["--data_path", str(multicoil), "--default_root_dir", str(tmp_path / "run")]
    try:
        code = train.main(argv)
    except SystemExit as exc:  # argparse
        code = exc.code
    line = _one_line_exit_2(code, capfd)
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    assert not (tmp_path / "run").exists()


def test_readme_depth_example_runs(capsys):
    readme = Path(__file__).resolve().parents[1] / "README.md"
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", readme.read_text(encoding="utf-8"),
                                      re.S) if b.startswith("# example: depth\n")]
    exec(compile(block, "README.md (depth example)", "exec"), {"__name__": "readme_depth"})
    assert capsys.readouterr().out.splitlines() == [
        "inserted cascade_2 (copy of cascade_1): 2 -> 3 cascades, 40,280 -> 56,747 parameters",
        "0e+00", "{2: 0.5}"]


# ------------------------------------------------------------ DDP
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
# Fresh cascades (drawn from growth_seed) at epochs 1 and 2, fading over 2 steps,
# and width growth of every cascade's bottleneck at epoch 2 (before that epoch's
# insertion, whose fresh cascade takes its neighbour's grown widths).
module = DynamicVarNetModule(num_cascades=1, pools=1, chans=2, sens_pools=1, sens_chans=2,
                             target_cascades=3, cascade_start_epoch=1, cascade_fade_steps=2,
                             cascade_init="fresh", growth_method="random",
                             layers_to_grow=["cascade_*/bottleneck:0"], growth_start_epoch=2)
trainer = pl.Trainer(
    accelerator="cpu", devices=2, strategy=DDPStrategy(process_group_backend="gloo"),
    max_epochs=3, use_distributed_sampler=False, logger=False, enable_checkpointing=False,
    enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    limit_val_batches=0, default_root_dir=str(out),
)
trainer.fit(module, datamodule=data)
rank = trainer.global_rank
module_ids = sorted(id(p) for p in module.parameters())
torch.save({k: v.detach().clone() for k, v in module.state_dict().items()}, out / f"rank{rank}.pt")
(out / f"rank{rank}.json").write_text(json.dumps({
    "world_size": trainer.world_size, "steps": trainer.global_step,
    "events": module.growth_callback.depth.events,
    "gates": {str(k): v for k, v in module.varnet.cascade_gates().items()},
    "bottlenecks": [s["bottleneck"]["conv1_out"] for n, s in module.varnet.get_network_size().items()
                    if n.startswith("cascade_")],
    "optimizer_holds_module_params":
        sorted(id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]) == module_ids,
    "ddp_wraps_module_params": sorted(id(p) for p in trainer.strategy.model.parameters()) == module_ids,
}))
'''


def test_ddp_depth_growth_keeps_two_ranks_identical(multicoil, tmp_path):
    import json
    import os
    import subprocess
    import sys

    script = tmp_path / "ddp_depth.py"
    script.write_text(DDP_SCRIPT)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_PORT", "MASTER_ADDR")}
    repo = Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = os.pathsep.join([str(repo), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.run([sys.executable, str(script), str(multicoil), str(out_dir)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((out_dir / f"rank{r}.json").read_text()) for r in range(2)]
    states = [torch.load(out_dir / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for info in ranks:
        assert info["world_size"] == 2 and info["steps"] == 3  # 2 slices, 1 per rank, 3 epochs
        assert info["events"] == [{"epoch": 1, "step": 1, "cascades": [1]},
                                  {"epoch": 2, "step": 2, "cascades": [2]}]
        assert info["gates"] == {"1": 0.5, "2": 0.0}  # those of the last step (2)
        assert info["bottlenecks"] == [5, 5, 5]
        assert info["optimizer_holds_module_params"] and info["ddp_wraps_module_params"]
    assert list(states[0]) == list(states[1])
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key
