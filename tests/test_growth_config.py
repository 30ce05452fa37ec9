"""Every growth option declared once: the same defaults, checks and names everywhere.

GrowthConfig / PruneConfig (fastmri_growth.growth.config) declare each
option; the growth callback, both growing Lightning modules, their
hyperparameters and the command line take theirs from it. Checkpoints keep
every option under its flag name, and a checkpoint written before the
redesign (its hyperparameters, widths, schedule and update ramp under the
old keys) still loads and resumes.
"""
import argparse
import dataclasses

import pytest
import torch

from fastmri_growth.cli import train_parser
from fastmri_growth.growth import config
from fastmri_growth.growth.config import GrowthConfig, PruneConfig, defaults, inapplicable
from fastmri_growth.growth.methods import all_options
from fastmri_growth.growth.net import resize_on_load
from fastmri_growth.models import DynamicUnet
from fastmri_growth.pl_modules import (DynamicUnetModule, DynamicVarNetModule, GrowthCallback,
                                       load_module)

VARNET = dict(num_cascades=2, pools=1, chans=2, sens_pools=1, sens_chans=2)


def test_every_default_is_the_same_in_the_callback_both_modules_and_the_cli():
    table = defaults()
    assert set(table) >= set(all_options())  # the methods' options join the table
    assert GrowthConfig().options() == table
    assert GrowthCallback().config.options() == table
    unet = DynamicUnetModule(chans=2, num_pool_layers=2)
    varnet = DynamicVarNetModule(**VARNET)
    for module in (unet, varnet):
        assert {name: module.hparams[name] for name in table} == table
        assert module.growth_config.options() == table
    net = DynamicUnet(1, 1, chans=2, num_pool_layers=2)  # the seed's API keeps two of them
    assert (net.growth_method, net.n_candidates) == (table["growth_method"], table["n_candidates"])
    for model_type in ("dynamic_unet", "dynamic_varnet"):
        args = train_parser.parse_args(["--model-type", model_type])
        assert {name: getattr(args, name) for name in table} == table, model_type


def test_each_option_has_one_declaration_with_help_and_a_flag():
    names = config.option_names()
    assert len(names) == len(set(names))
    for cls in (GrowthConfig, PruneConfig):
        for f in dataclasses.fields(cls):
            if "opt" in f.metadata:
                assert f.metadata["opt"].help, f.name
    parser = config.add_arguments(argparse.ArgumentParser())
    flags = {s for a in parser._actions for s in a.option_strings}
    assert set(config.flag_strings()) <= flags
    assert {"--growth-method", "--growth_method", "--n-candidates", "--prune-n"} <= flags


@pytest.mark.parametrize("options, message", [
    (dict(n_new=0), "n_new must be an int >= 1, got 0"),
    (dict(growth_batches=1.5), "growth_batches must be an int >= 1, got 1.5"),
    (dict(new_filter_lr_scale=-1.0), "new_filter_lr_scale must be a finite float >= 0, got -1.0"),
    (dict(growth_method="grow_all"), "Unknown growth method 'grow_all'; valid methods: "),
    (dict(fan_out_init="up"), "Unknown fan_out_init 'up'; valid: zero, descent"),
    (dict(prune_n=2), "prune_n need a prune_schedule"),
    (dict(n_candidates=0), "n_candidates must be an int >= 1, got 0"),
    (dict(bogus=1), "Unknown growth option(s) bogus; valid: growth_method, "),
    (dict(growth_schedule="budget"), "growth_schedule='budget' needs growth_end_epoch"),
    (dict(growth_method="split", fan_out_init="descent"), "not 'split'"),
    (dict(prune_schedule="exchange", growth_schedule="budget", growth_end_epoch=2,
          target_chans=4), "prune_schedule='exchange' moves width"),
])
def test_a_bad_option_is_refused_in_one_place_with_the_same_words_everywhere(options, message):
    """The callback, both modules and the configuration give one message, before anything is built."""
    makers = (lambda: GrowthConfig.from_options(options),
              lambda: GrowthCallback(**options),
              lambda: DynamicUnetModule(chans=2, num_pool_layers=2, **options),
              lambda: DynamicVarNetModule(**VARNET, **options))
    for make in makers:
        with pytest.raises(ValueError) as err:
            make()
        assert message in str(err.value)


def test_sites_are_checked_against_the_network_when_it_is_known():
    with pytest.raises(ValueError, match="Unknown layer 'up_5'"):
        DynamicUnetModule(chans=2, num_pool_layers=2, layers_to_grow=["up_5"])
    with pytest.raises(ValueError, match=r"auto_sites must be an int in \[1, 2\]"):
        DynamicUnetModule(chans=2, num_pool_layers=2, layers_to_grow=["down_0"], auto_sites=3)
    callback = GrowthCallback(layers_to_grow=["bottleneck:1"])
    assert callback.schedule is None  # no network yet
    callback.prepare(DynamicUnet(1, 1, chans=2, num_pool_layers=2))
    assert [s.key for s in callback.schedule.sites] == ["bottleneck:1"]


@pytest.mark.parametrize("values, given, message", [
    (dict(growth_schedule="plateau"), {"growth_interval"},
     "--growth-interval applies to --growth-schedule interval, budget or auto, not plateau; pass "
     "--growth-schedule interval or drop --growth-interval"),
    (dict(growth_schedule="progressive"), {"layers_to_grow"},
     "--layers-to-grow does not apply to --growth-schedule progressive"),
    (dict(growth_method="split"), {"n_candidates"},
     "--n-candidates is an option of --growth-method sample_select or gradmax, not split"),
    (dict(prune_schedule=None), {"min_width"}, "--min-width needs a --prune-schedule"),
    (dict(prune_schedule="exchange"), {"prune_n"},
     "--prune-n applies to --prune-schedule interval or epochs, not exchange; drop it"),
    (dict(growth_schedule="interval", growth_method="sample_select"),
     {"growth_interval", "n_candidates"}, None),
])
def test_which_schedule_an_option_applies_to_is_declared_with_it(values, given, message):
    problem = inapplicable(values, given)
    assert problem == message if message is None else message in problem


def test_hyperparameters_rebuild_the_same_configuration():
    options = dict(growth_method="gradmax", n_candidates=3, gradmax_directions=2,
                   growth_schedule="budget", growth_end_epoch=3, target_chans=4,
                   layers_to_grow=["down_0", "bottleneck"], prune_criterion="taylor")
    module = DynamicUnetModule(chans=2, num_pool_layers=2, **options)
    again = DynamicUnetModule(**module.hparams)
    assert again.growth_config == module.growth_config
    assert again.growth_config.options()["gradmax_directions"] == 2


def test_a_checkpoint_written_before_the_options_were_declared_once_loads_and_resumes(tmp_path):
    """Old layout: every option a constructor keyword in the hyperparameters, the
    update ramp under its own checkpoint key."""
    grown = DynamicUnetModule(chans=2, num_pool_layers=2, layers_to_grow=["down_0:1"])
    torch.manual_seed(0)
    grown.unet.grow_network("down_0", 1, torch.randn(2, 1, 16, 16), torch.randn(2, 1, 16, 16),
                            torch.nn.functional.l1_loss)
    name = "unet.down_sample_layers.0.layers.4.weight"
    mask = torch.zeros_like(dict(grown.named_parameters())[name], dtype=torch.bool)
    mask[-1] = True
    hparams = dict(in_chans=1, out_chans=1, chans=2, num_pool_layers=2, drop_prob=0.0, lr=1e-3,
                   lr_step_size=40, lr_gamma=0.1, weight_decay=0.0, **defaults())
    hparams["layers_to_grow"] = ["down_0:1"]
    schedule = {"grown_epochs": [1], "best_loss": None, "bad_epochs": 0, "observed_epochs": []}
    ckpt = {"state_dict": grown.state_dict(), "hyper_parameters": hparams,
            "pytorch-lightning_version": "2.6.6", "epoch": 1, "global_step": 6,
            "dynamic_unet": {"widths": grown.unet.get_network_size(),
                             "transpose_widths": grown.unet.transpose_widths()},
            "callbacks": {"GrowthCallback": {"schedule": schedule, "last_validation": None,
                                             "pruned_epochs": []}},
            "growth_new_weights": {name: {"mask": mask, "steps": 2, "epoch": 1}}}
    path = tmp_path / "old.ckpt"
    torch.save(ckpt, path)

    loaded = load_module(path)
    assert type(loaded) is DynamicUnetModule
    assert loaded.unet.get_network_size()["down_0"]["conv2_out"] == 3
    assert loaded.schedule.state["grown_epochs"] == [1]
    for key, value in grown.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    # Resuming: the callback reads the ramp from its old key, by parameter name.
    callback = loaded.growth_callback
    callback.on_load_checkpoint(None, loaded, ckpt)
    callback._restore_ramp(loaded)
    entry = callback.ramp.entries[name]
    assert torch.equal(entry.mask, mask) and (entry.steps, entry.epoch) == (2, 1)


def test_resize_on_load_serves_any_attribute_name():
    """A grown network held as ``backbone`` loads into a fresh holder at its widths."""
    class Holder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = resize_on_load(DynamicUnet(1, 1, chans=2, num_pool_layers=2))

    torch.manual_seed(0)
    trained = Holder()
    x = torch.randn(2, 1, 16, 16)
    trained.backbone.grow_network("bottleneck", 0, x, torch.randn(2, 1, 16, 16),
                                  torch.nn.functional.l1_loss, n_new=2)
    fresh = Holder()
    fresh.load_state_dict(trained.state_dict())
    assert fresh.backbone.get_network_size() == trained.backbone.get_network_size()
    with torch.no_grad():
        assert torch.equal(fresh.backbone.eval()(x), trained.backbone.eval()(x))
