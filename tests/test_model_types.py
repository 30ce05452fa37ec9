"""The model-type registry: its entries agree with their modules, and everything reads it."""

import argparse

import pytest
import torch

from fastmri_growth.cli import train_parser
from fastmri_growth.cli.checkpoints import read_init_weights
from fastmri_growth.cli.common import UsageError
from fastmri_growth.cli.data_checks import architecture_args, model_type_data_defaults
from fastmri_growth.pl_modules.model_types import (
    GROWING_MODEL_TYPES,
    MODEL_TYPES,
    UNET_ARCHITECTURE_ARGS,
    ModelType,
    checkpoint_model_type,
    get_model_type,
    register_model_type,
)


def test_the_four_model_types_in_command_line_order():
    assert list(MODEL_TYPES) == ["unet", "dynamic_unet", "varnet", "dynamic_varnet"]
    assert set(GROWING_MODEL_TYPES) == {"dynamic_unet", "dynamic_varnet"}
    assert "unet" not in GROWING_MODEL_TYPES and None not in GROWING_MODEL_TYPES


@pytest.mark.parametrize("name", list(MODEL_TYPES))
def test_entry_agrees_with_its_module_class(name):
    spec = MODEL_TYPES[name]
    cls = spec.module_class()
    assert cls.__name__ == spec.class_name
    if spec.grows:
        # The growing modules write their widths under their own key.
        assert cls.checkpoint_key == spec.checkpoint_key
        assert cls.growable_attr == spec.network_attr
    else:
        assert MODEL_TYPES[spec.growing_version].grows
        assert MODEL_TYPES[spec.growing_version].kspace == spec.kspace
    flags = vars(cls.add_model_specific_args(argparse.ArgumentParser()).parse_args([]))
    assert set(spec.architecture_args) <= set(flags)
    assert set(spec.demo_defaults) - {"challenge", "mask_type"} <= set(flags)


def test_the_command_line_reads_the_registry():
    assert train_parser.model_type_help() == (
        "Network to train: unet (fastMRI's U-Net), dynamic_unet (the growing U-Net), varnet "
        "(fastMRI's end-to-end VarNet, multicoil k-space) or dynamic_varnet (the VarNet whose "
        "cascade and sensitivity U-Nets grow)")
    for name, spec in MODEL_TYPES.items():
        assert train_parser.module_class(name) is spec.module_class()
        assert architecture_args(name) == spec.architecture_args
    assert model_type_data_defaults("varnet") == {"challenge": "multicoil",
                                                  "mask_type": "equispaced_fraction"}
    assert model_type_data_defaults("dynamic_unet") == {"challenge": "singlecoil",
                                                        "mask_type": "random"}
    with pytest.raises(UsageError,
                       match=r"unknown --model-type 'resnet'; choose one of unet, dynamic_unet, "
                             r"varnet, dynamic_varnet"):
        train_parser.module_class("resnet")


def _ckpt(prefix, hparams=None, **extra):
    return {"state_dict": {f"{prefix}w": torch.zeros(1)}, "hyper_parameters": hparams or {},
            **extra}


@pytest.mark.parametrize("ckpt,kind", [
    (_ckpt("unet."), "unet"),
    (_ckpt("varnet."), "varnet"),
    (_ckpt("unet.", {"growth_method": "split"}), "dynamic_unet"),
    (_ckpt("varnet.", {"growth_method": "split"}), "dynamic_varnet"),
    (_ckpt("unet.", dynamic_unet={}), "dynamic_unet"),
    (_ckpt("varnet.", dynamic_varnet={}), "dynamic_varnet"),
    (_ckpt("other."), None),
    ("not a dict", None),
])
def test_checkpoint_model_type(ckpt, kind):
    assert checkpoint_model_type(ckpt) == kind


def test_a_registered_type_is_a_choice_everywhere(monkeypatch, tmp_path):
    spec = ModelType("wide_unet", "fastmri_growth.pl_modules.lightning2:UnetModule",
                     "a wide U-Net", state_prefix="unet.",
                     architecture_args=UNET_ARCHITECTURE_ARGS, growing_version="dynamic_unet",
                     checkpoint_key="wide_unet", demo_defaults={"chans": 64})
    monkeypatch.setitem(MODEL_TYPES, "wide_unet", spec)
    args = train_parser.parse_args(["--model-type", "wide_unet"])
    assert (args.model_type, args.chans) == ("wide_unet", 64)
    assert "wide_unet (a wide U-Net)" in train_parser.model_type_help()
    assert checkpoint_model_type(_ckpt("unet.", wide_unet={})) == "wide_unet"
    assert "wide_unet" not in GROWING_MODEL_TYPES
    with pytest.raises(SystemExit):
        train_parser.parse_args(["--model-type", "wide_unet", "--growth-method", "split"])
    # --init-from finds its network under its prefix.
    from fastmri.models import Unet

    path = tmp_path / "w.pt"
    torch.save({f"unet.{k}": v for k, v in Unet(1, 1, 2, 2).state_dict().items()}, path)
    assert read_init_weights(path, "wide_unet").architecture["chans"] == 2


def test_registry_errors_name_the_bad_value_and_the_valid_ones():
    with pytest.raises(ValueError, match=r"'unet' is already registered \(registered: unet, "
                                         r"dynamic_unet, varnet, dynamic_varnet\)"):
        register_model_type(MODEL_TYPES["unet"])
    with pytest.raises(ValueError, match=r"unknown model type 'resnet'; choose one of unet, "):
        get_model_type("resnet")
    assert get_model_type("varnet") is MODEL_TYPES["varnet"]
    base = dict(name="x", module="a.b:C", help="h", state_prefix="net.",
                architecture_args=("chans",))
    for bad, match in [(dict(name="no-dash"), "not an identifier"),
                       (dict(module="a.b.C"), "not 'package.module:Class'"),
                       (dict(state_prefix="net"), "state_prefix 'net' is not"),
                       (dict(grows=True, growing_version="y"), "grows itself")]:
        with pytest.raises(ValueError, match=match):
            ModelType(**{**base, **bad})
    spec = ModelType(**base, demo_defaults={"lr": 1.0})
    with pytest.raises(TypeError):
        spec.demo_defaults["lr"] = 2.0  # shared by every caller: read-only
