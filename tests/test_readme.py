"""The README's model example runs as written."""

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_model_example_runs(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    assert blocks, "README.md has no python example"
    script = tmp_path / "example.py"
    script.write_text(blocks[0], encoding="utf-8")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert re.match(r"Growing bottleneck conv1: Selected candidate \d+ \(score [0-9.e-]+\), "
                    r"64 -> 65 filters$", lines[0]), lines
    assert re.match(r"Growing down_0 conv2: Split filter \d+ \(grad norm [0-9.e-]+\), "
                    r"8 -> 9 filters$", lines[1]), lines
    assert lines[3] == "{'conv1_out': 65, 'conv2_out': 64}"


def test_readme_lightning_example_runs(tmp_path):
    from fastmri_growth.data.synthetic import generate_dataset

    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    example = next(b for b in blocks if "DynamicUnetModule(" in b)
    generate_dataset(tmp_path / "data", num_volumes={"train": 2, "val": 1, "test": 1,
                                                     "challenge": 1},
                     num_slices=2, recon_size=32)
    script = tmp_path / "lightning_example.py"
    script.write_text(example, encoding="utf-8")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # growth_interval=2 from epoch 1 in 4 epochs: the bottleneck grew twice.
    assert proc.stdout.strip().splitlines()[-1] == "{'conv1_out': 66, 'conv2_out': 66}"
    assert list((tmp_path / "runs" / "lib").rglob("*.ckpt"))


def readme_example(tag):
    """The README python block whose first line is ``# example: <tag>``."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    (block,) = [b for b in blocks if b.startswith(f"# example: {tag}\n")]
    return block


def test_readme_growth_method_example_trains_through_the_callback(tmp_path):
    """The 'add a growth method' example: registered, then grown with in a Lightning fit."""
    from fastmri_growth.data.synthetic import generate_dataset

    generate_dataset(tmp_path / "data", challenges=("knee_singlecoil",), splits=("train",),
                     num_volumes=2, num_slices=2, recon_size=32)
    script = readme_example("add a growth method") + '''
import pytorch_lightning as pl
import torch
from fastmri.data import SliceDataset
from fastmri.data.subsample import RandomMaskFunc
from fastmri.data.transforms import UnetDataTransform
from fastmri_growth.growth import METHODS
from fastmri_growth.pl_modules import DynamicUnetModule

assert METHODS["orthogonal"] is Orthogonal
mask = RandomMaskFunc([0.08], [4])
data = SliceDataset("data/knee/singlecoil_train", challenge="singlecoil", use_dataset_cache=False,
                    transform=UnetDataTransform("singlecoil", mask_func=mask, use_seed=True))
loader = torch.utils.data.DataLoader(data, batch_size=1)
module = DynamicUnetModule(chans=2, num_pool_layers=2, growth_method="orthogonal", n_new=2,
                           layers_to_grow=["down_0:0"])
old_rows = module.unet.conv_layer("down_0", 0).weight.detach().flatten(1).clone()
trainer = pl.Trainer(max_epochs=2, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, limit_train_batches=2)
trainer.fit(module, loader)
(report,) = module.growth_reports
print(report)
w = module.unet.conv_layer("down_0", 0).weight.detach().flatten(1)
params = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
print(w.shape[0], all(id(p) in params for p in module.parameters()))
'''
    (tmp_path / "method.py").write_text(script, encoding="utf-8")
    proc = subprocess.run([sys.executable, "method.py"], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert "Growing down_0 conv1: Added 2 orthogonal filter(s), 2 -> 4 filters" in lines
    assert lines[-1] == "4 True"


def test_readme_backbone_example_grows_exactly_and_in_a_lightning_fit(tmp_path):
    """The 'add a backbone' example prints its report and True (output unchanged);
    the same network then grows under GrowthCallback in a user's LightningModule,
    scores equal brute force, and a checkpoint resumes at the grown width."""
    script = readme_example("add a backbone") + '''
import pytorch_lightning as pl
from fastmri_growth.growth import brute_force_scores_at, generate_candidates
from fastmri_growth.growth import score_candidates_at
from fastmri_growth.pl_modules import GrowthCallback

net64 = TwoLayerNet().double()
xd, yd = x.double(), y.double()
site = Site("hidden", 0)
cands = generate_candidates(net64.site_spec(site), 5, torch.Generator().manual_seed(0))
loss_of = lambda m: (lambda b: F.l1_loss(m(b[0]), b[1]))
one = score_candidates_at(net64, site, cands, [(xd, yd)], loss_of(net64))
brute = brute_force_scores_at(net64, site, cands, [(xd, yd)], loss_of)
print("scores", float(((one - brute).abs() / brute.abs()).max()) < 1e-12)

''' + readme_example("own Lightning module") + '''
(growth,) = [c for c in trainer.callbacks if isinstance(c, GrowthCallback)]
opt_params = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
print("resumed", resumed.net.get_network_size()["hidden"]["conv1_out"],
      growth.schedule.state["grown_epochs"], all(id(p) in opt_params for p in resumed.parameters()))
'''
    (tmp_path / "backbone.py").write_text(script, encoding="utf-8")
    proc = subprocess.run([sys.executable, "backbone.py"], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert re.match(r"Growing hidden conv1: Selected candidates \[\d+, \d+\] \(score [0-9.e, -]+\), "
                    r"4 -> 6 filters$", lines[0]), lines
    assert lines[1] == "True"
    assert "scores True" in lines
    # The checkpoint (epoch 2, width 8, grown at 1 and 2) resumes grown; epoch 3 grows once more,
    # with every parameter in the optimizer. The README's printed line says so too.
    assert lines[-2] == "{'hidden': {'conv1_out': 10}}"
    assert lines[-1] == "resumed 10 [1, 2, 3] True"


def test_readme_model_type_example_adds_a_model_type_to_the_command_line(tmp_path):
    """The 'register a model type' example: a registry entry is a --model-type."""
    script = tmp_path / "model_type_example.py"
    script.write_text(readme_example("register a model type"), encoding="utf-8")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "wide_unet 64 WideUnetModule"
