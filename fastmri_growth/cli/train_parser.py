"""The training command's parser: the classes behind ``--model-type`` and every flag.

fastMRI's demo flags (data, masks, run layout, seed), the Trainer's flags
(derived from ``pl.Trainer``'s signature), and the model's own flags from
its ``add_model_specific_args`` (the growth flags for the growing model
types). :func:`parse_args` picks the parser for the given ``--model-type``;
bad input is a one-line :class:`~fastmri_growth.cli.common.UsageError`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Type

from fastmri_growth.cli.common import HelpFormatter, OneLineParser, UsageError
from fastmri_growth.cli.dataset_cache import DATASET_CACHE_FILE
from fastmri_growth.cli.trainer_flags import add_trainer_args
from fastmri_growth.data.fastmri_format import DIRS_CONFIG, MASK_TYPES, synth_hint
from fastmri_growth.flags import redeclare, str2bool
from fastmri_growth.pl_modules.model_types import MODEL_TYPES, join_words

PROG = "fastmri-growth-train"
DEFAULT_MODEL_TYPE = "dynamic_unet"


def model_type_help() -> str:
    """``--model-type``'s help: every registered model type and what it is."""
    return "Network to train: " + join_words([f"{t.name} ({t.help})" for t in MODEL_TYPES.values()])


# ---------------------------------------------------------------------------
# the classes behind --model-type (their facts: pl_modules.model_types)
# ---------------------------------------------------------------------------


def module_class(model_type: str) -> Type:
    """The LightningModule class trained by ``--model-type``.

    Raises:
        UsageError: ``model_type`` is not registered.
    """
    if model_type not in MODEL_TYPES:
        raise UsageError(
            f"unknown --model-type {model_type!r}; choose one of {', '.join(MODEL_TYPES)}")
    return MODEL_TYPES[model_type].module_class()


def data_transforms(model_type: str, challenge: str, mask_func) -> tuple:
    """The demo's train, val and test transforms for a model type.

    Training masks are random per call (``use_seed=False``); validation
    masks are seeded by file name (``use_seed=True``) so every epoch and every
    run sees the same inputs; test data carry their own mask.

    Returns:
        ``(train, val, test)``: ``UnetDataTransform`` s for the U-Nets,
        ``VarNetDataTransform`` s for the VarNets.
    """
    if MODEL_TYPES[model_type].kspace:
        from fastmri.data.transforms import VarNetDataTransform

        return (VarNetDataTransform(mask_func=mask_func, use_seed=False),
                VarNetDataTransform(mask_func=mask_func, use_seed=True),
                VarNetDataTransform())
    from fastmri.data.transforms import UnetDataTransform

    return (UnetDataTransform(challenge, mask_func=mask_func, use_seed=False),
            UnetDataTransform(challenge, mask_func=mask_func, use_seed=True),
            UnetDataTransform(challenge))


def data_module_class() -> Type:
    """FastMriDataModule as fixed for Lightning 2 (same flags as fastMRI's)."""
    from fastmri_growth.pl_modules.data_module import FastMriDataModule

    return FastMriDataModule


def model_arg_names(cls: Type) -> List[str]:
    """The argparse destinations that ``cls.add_model_specific_args`` declares.

    These, and only these, are handed to the module's constructor, so the
    module's parser stays the one place that defines model flags and their
    defaults.
    """
    parser = cls.add_model_specific_args(argparse.ArgumentParser(add_help=False))
    return list(vars(parser.parse_args([])))


# ---------------------------------------------------------------------------
# parser
# ---------------------------------------------------------------------------


def _add_run_args(parser: argparse.ArgumentParser, model_type: str) -> None:
    group = parser.add_argument_group("run")
    group.add_argument(
        "--mode", default="train", choices=("train", "test"), type=str, help="Operation mode"
    )
    group.add_argument(
        "--model-type",
        "--model_type",
        dest="model_type",
        default=model_type,
        choices=tuple(MODEL_TYPES),
        help=model_type_help(),
    )
    group.add_argument("--seed", default=42, type=int, help="Random seed (pl.seed_everything)")
    group.add_argument(
        "--ckpt_path",
        default=None,
        type=Path,
        help=(
            "Checkpoint to resume from (train) or to test (test); default: the "
            "newest .ckpt in DEFAULT_ROOT_DIR/checkpoints"
        ),
    )
    group.add_argument(
        "--default_root_dir",
        default=None,
        type=Path,
        help=(
            "Folder for checkpoints, logs and reconstructions; default: "
            f"LOG_PATH/MODEL_TYPE/MODEL_TYPE_demo, LOG_PATH being log_path from "
            f"./{DIRS_CONFIG}, else ."
        ),
    )
    group.add_argument(
        "--ckpt",
        default=None,
        metavar="{last,best,PATH}",
        help=(
            "Test mode: the weights to test: last (checkpoints/last.ckpt), best (the best "
            "validation_loss) or a checkpoint file; default: the newest usable checkpoint "
            "of the run (last.ckpt after a completed run)"
        ),
    )
    group.add_argument(
        "--init-from",
        "--init_from",
        dest="init_from",
        default=None,
        type=Path,
        metavar="CKPT_OR_STATE_DICT",
        help=(
            "Start training from these weights: a Lightning checkpoint (fastMRI's UnetModule "
            "or VarNetModule, or this package's) or a bare state dict (fastMRI's pretrained "
            "files); the architecture flags follow the file. A growing model type grows from "
            "them. Ignored when the run folder holds a checkpoint to resume"
        ),
    )
    group.add_argument(
        "--skip-nonfinite-batches",
        "--skip_nonfinite_batches",
        dest="skip_nonfinite_batches",
        default=False,
        type=str2bool,
        nargs="?",
        const=True,
        metavar="BOOL",
        help=(
            "Skip training batches whose loss or gradient is NaN or Inf (counted, and named "
            "at the end of each epoch) instead of stopping at the first one"
        ),
    )


#: ``--compile-backend`` choices: inductor (torch.compile's default) and the two
#: debug backends that trace the same graph but run eager kernels (no C compiler).
COMPILE_BACKENDS = ("inductor", "aot_eager", "eager")


def _add_compile_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("torch.compile")
    group.add_argument(
        "--compile",
        dest="compile",
        default=False,
        type=str2bool,
        nargs="?",
        const=True,
        metavar="BOOL",
        help=(
            "Train the network compiled with torch.compile (in place: checkpoints keep their "
            "keys). Growth scores the network eagerly, exactly as without --compile, and "
            "the grown network is compiled anew"
        ),
    )
    group.add_argument(
        "--compile-backend",
        "--compile_backend",
        dest="compile_backend",
        default="inductor",
        choices=COMPILE_BACKENDS,
        help="torch.compile backend of --compile (inductor on the CPU needs a C compiler)",
    )


def _add_mask_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("k-space mask")
    group.add_argument(
        "--mask_type",
        choices=MASK_TYPES,
        default="random",
        type=str,
        help="Type of k-space mask",
    )
    group.add_argument(
        "--center_fractions",
        nargs="+",
        default=[0.08],
        type=float,
        help="Fraction of center k-space lines kept, one per acceleration",
    )
    group.add_argument(
        "--accelerations",
        nargs="+",
        default=[4],
        type=int,
        help="Acceleration rates to use for masks",
    )


def build_parser(model_type: str = DEFAULT_MODEL_TYPE) -> argparse.ArgumentParser:
    """The full parser for one model type.

    Model flags and their defaults come from the module class's own
    ``add_model_specific_args``; data flags from FastMriDataModule's
    ``add_data_specific_args``.

    Args:
        model_type: A registered model type; selects the model flags.

    Returns:
        The parser; its errors are one line on stderr with exit status 2.
    """
    base = argparse.ArgumentParser(add_help=False)
    _add_run_args(base, model_type)
    _add_compile_args(base)
    _add_mask_args(base)
    base = data_module_class().add_data_specific_args(base)
    # fastMRI's demo: no default test path; data_path is resolved later from
    # fastmri_dirs.yaml so that --help reads no file.
    base.set_defaults(test_path=None)
    base = module_class(model_type).add_model_specific_args(base)
    # The model type's demo defaults (train_varnet_demo.py's, over its module's flags).
    base.set_defaults(**MODEL_TYPES[model_type].demo_defaults)
    base = redeclare(
        base,
        (("--data_path",), dict(
            default=None, type=Path,
            help=f"Path to fastMRI data root (holding CHALLENGE_train/, CHALLENGE_val/, ...); "
                 f"default: knee_path from ./{DIRS_CONFIG}")),
        (("--use_dataset_cache_file",), dict(
            default=True, type=str2bool, nargs="?", const=True, metavar="BOOL",
            help=f"Cache the slice lists of the data folders in ./{DATASET_CACHE_FILE} "
                 "(fastMRI's file, in the working directory); entries of folders whose "
                 "files changed since are dropped before each run")),
    )
    add_trainer_args(base)
    parser = OneLineParser(
        prog=PROG,
        description=(
            "Train or test a U-Net or an end-to-end VarNet (fixed or growing) on fastMRI "
            "data with pytorch-lightning 2, as fastMRI's train_unet_demo.py and "
            "train_varnet_demo.py."
        ),
        epilog=(
            "Data path: --data_path, else knee_path from ./fastmri_dirs.yaml. "
            f"No data? {synth_hint()}."
        ),
        parents=[base],
        formatter_class=HelpFormatter,
    )
    return parser


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse the command line in two passes: ``--model-type`` picks the flags.

    Args:
        argv: Arguments without the program name; ``None`` reads ``sys.argv``.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    # allow_abbrev=False: "--mode" must not be taken as a prefix of "--model-type".
    pre = OneLineParser(prog=PROG, add_help=False, allow_abbrev=False)
    pre.add_argument(
        "--model-type", "--model_type", dest="model_type", choices=tuple(MODEL_TYPES),
        default=None,
    )
    known, _ = pre.parse_known_args(argv)
    model_type = known.model_type or DEFAULT_MODEL_TYPE
    parser = build_parser(model_type)
    spec = MODEL_TYPES[model_type]
    if not spec.grows:
        growth = growth_options()
        need = spec.growing_version or join_words(
            [n for n, t in MODEL_TYPES.items() if t.grows])
        for token in argv:
            if token == "--":
                break
            option = token.split("=", 1)[0]
            if option in growth:
                parser.error(f"growth flags need --model-type {need} (got {option})")
    args = parser.parse_args(argv)
    # Test mode follows the checkpoint's model type unless one was asked for.
    args.model_type_given = known.model_type is not None
    args.given_flags = given_flags(parser, argv)
    return args


def given_flags(parser: argparse.ArgumentParser, argv: Sequence[str]) -> set:
    """The destinations of the flags on the command line (not left at their defaults).

    Parsed a second time into a namespace that already holds every
    destination, so argparse fills in no default (abbreviations count too).
    """
    marker = object()
    namespace = argparse.Namespace(**{
        a.dest: marker for a in parser._actions if a.dest is not argparse.SUPPRESS})
    parser.parse_args(argv, namespace=namespace)
    return {dest for dest, value in vars(namespace).items() if value is not marker}


def growth_options() -> List[str]:
    """The option strings (both spellings) that only the growing model types have."""
    from fastmri_growth.growth.config import flag_strings

    return flag_strings()
