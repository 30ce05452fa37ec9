"""DynamicUnetModule grows under DDP: two CPU processes (gloo) stay identical.

Lightning's DDP launcher re-runs the script of the main process for every
other rank, so the run lives in a standalone script started in a subprocess.
"""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

DDP_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import pytorch_lightning as pl
    import torch
    from fastmri.data.subsample import RandomMaskFunc
    from fastmri.data.transforms import UnetDataTransform
    from pytorch_lightning.strategies import DDPStrategy
    from fastmri_growth.pl_modules import DynamicUnetModule
    from fastmri_growth.pl_modules.data_module import FastMriDataModule

    data_root, out, devices = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    options = json.loads(sys.argv[4])


    class Recorder(pl.Callback):
        def __init__(self):
            self.sizes, self.steps = {}, {}

        def on_train_epoch_end(self, trainer, module):
            self.sizes[trainer.current_epoch] = module.unet.get_network_size()
            self.steps[trainer.current_epoch] = trainer.global_step


    mask = RandomMaskFunc(center_fractions=[0.08], accelerations=[4])
    data = FastMriDataModule(
        data_root, "singlecoil",
        train_transform=UnetDataTransform("singlecoil", mask_func=mask, use_seed=False),
        val_transform=UnetDataTransform("singlecoil", mask_func=mask),
        test_transform=UnetDataTransform("singlecoil"),
        use_dataset_cache_file=False, num_workers=0, distributed_sampler=True,
    )
    pl.seed_everything(0)
    module = DynamicUnetModule(**dict(dict(
        chans=2, num_pool_layers=2, n_candidates=3, layers_to_grow=["down_0:1", "bottleneck"],
        growth_interval=1, growth_start_epoch=1,
    ), **options))
    recorder = Recorder()
    trainer = pl.Trainer(
        accelerator="cpu", devices=devices, strategy=DDPStrategy(process_group_backend="gloo"),
        max_epochs=3, use_distributed_sampler=False, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0, callbacks=[recorder],
        default_root_dir=str(out),
    )
    trainer.fit(module, datamodule=data)

    rank = trainer.global_rank
    opt_ids = sorted(id(p) for g in trainer.optimizers[0].param_groups for p in g["params"])
    ddp_ids = sorted(id(p) for p in trainer.strategy.model.parameters())
    module_ids = sorted(id(p) for p in module.parameters())
    torch.save({k: v.detach().clone() for k, v in module.state_dict().items()}, out / f"rank{rank}.pt")
    (out / f"rank{rank}.json").write_text(json.dumps({
        "world_size": trainer.world_size,
        "sizes": {str(k): v for k, v in recorder.sizes.items()},
        "steps": {str(k): v for k, v in recorder.steps.items()},
        "grown_epochs": module.schedule.state["grown_epochs"],
        "selected": [[r.layer_idx, r.conv_idx, r.selected] for r in module.growth_reports],
        "removed": [[r.layer_idx, r.conv_idx, r.removed]
                    for r in module.growth_callback.prune_reports],
        "train_sampler": type(trainer.train_dataloader.sampler).__name__,
        "optimizer_holds_module_params": opt_ids == module_ids,
        "ddp_wraps_module_params": ddp_ids == module_ids,
    }))
    """
)


@pytest.fixture(scope="module")
def knee_train(tmp_path_factory):
    from fastmri_growth.data.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("ddp_data")
    # 4 volumes x 2 slices: each rank trains on 4 different slices per epoch.
    generate_dataset(root, challenges=("knee_singlecoil",), splits=("train", "val"),
                     num_volumes=4, num_slices=2, recon_size=32, seed=0)
    return root / "knee"


# Every decision option at once: two passes (gradmax), auto sites, a descent
# line search, seeding from gradients and a ramp, on several scoring batches
# that differ per rank: the ranks must still decide alike.
DECISIONS = dict(growth_method="gradmax", layers_to_grow=["auto"], auto_sites=2,
                 fan_out_init="descent", growth_batches=3, optimizer_seeding="grad",
                 new_filter_ramp_steps=2, n_candidates=2, gradmax_directions=2)


# One process under strategy="ddp" is wrapped in DDP too, and needs the same rebuild.
# Pruning by the Taylor criterion (reduced statistics) in exchange for growth.
EXCHANGE = dict(layers_to_grow=["auto"], auto_sites=1, prune_schedule="exchange",
                prune_criterion="taylor", growth_batches=2)


@pytest.mark.parametrize("devices,options", [(2, {}), (1, {}), (2, DECISIONS), (2, EXCHANGE)],
                         ids=["2", "1", "2-decisions", "2-exchange"])
def test_ddp_growth_keeps_ranks_identical(knee_train, tmp_path, devices, options):
    script = tmp_path / "ddp_grow.py"
    script.write_text(DDP_SCRIPT)
    out = tmp_path / "out"
    out.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_PORT", "MASTER_ADDR")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.run(
        [sys.executable, str(script), str(knee_train), str(out), str(devices),
         json.dumps(options)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]

    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(devices)]
    states = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(devices)]
    steps = 8 // devices
    for info in ranks:
        assert info["world_size"] == devices
        assert info["train_sampler"] == "DistributedSampler"
        assert info["grown_epochs"] == [1, 2]
        sizes = {int(e): s for e, s in info["sizes"].items()}
        if options.get("prune_schedule") == "exchange":
            assert len(info["selected"]) == 2 and info["removed"]
        elif options:  # auto sites: two sites chosen per event
            assert len(info["selected"]) == 4
        else:
            assert [(sizes[e]["down_0"]["conv2_out"], sizes[e]["bottleneck"]["conv1_out"],
                     sizes[e]["bottleneck"]["conv2_out"]) for e in range(3)] == [
                (2, 8, 8), (3, 9, 9), (4, 10, 10)]
            assert sizes[2]["down_0"]["conv1_out"] == 2  # only down_0's second conv grows
        # 8 slices over the ranks: training went on after each growth.
        assert {int(e): s for e, s in info["steps"].items()} == {0: steps, 1: 2 * steps, 2: 3 * steps}
        assert info["optimizer_holds_module_params"]
        assert info["ddp_wraps_module_params"]
    if devices == 1:
        return
    # Same decisions on both ranks ...
    assert ranks[0]["selected"] == ranks[1]["selected"]
    assert ranks[0]["removed"] == ranks[1]["removed"]
    assert ranks[0]["sizes"] == ranks[1]["sizes"]
    # ... and identical parameters at the end.
    assert list(states[0]) == list(states[1])
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key
