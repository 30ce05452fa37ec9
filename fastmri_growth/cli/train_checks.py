"""Checks of the training command's arguments: everything here runs before any file is written.

:func:`validate_args` resolves the default paths (``fastmri_dirs.yaml`` as
fastMRI's demo reads it), checks the numbers the module, optimizer and
data loaders take, the mask and sample-rate flags, growth flags the chosen
schedule, method or prune schedule would ignore, the data folders, the run
folder (writable), the checkpoint to resume or test (the newest usable one
by default), the ``--init-from`` weights, the pooling depth against the
data's image size, the DDP processes against the validation volumes and
growth's scoring memory against the machine's, and raises
:class:`~fastmri_growth.cli.common.UsageError` with a message naming the
fix. It reads files and writes none.
:func:`~fastmri_growth.cli.run_checks.check_free_space` and
:func:`never_grows_reason` need the built module; the training command
calls them before anything is written. The checks of the model type, the
data and the network's size against it are in
:mod:`~fastmri_growth.cli.data_checks`, those of checkpoints, initial
weights and the run folder in :mod:`~fastmri_growth.cli.run_checks`; the
growth flags' combinations are here.
"""
from __future__ import annotations

import argparse
from typing import Any, List, Optional

from fastmri_growth.cli.common import UsageError
from fastmri_growth.cli.data_checks import (
    check_batch_limits,
    check_data,
    check_mask_args,
    check_model_challenge,
    check_network_fits_data,
    check_sample_rates,
    resolve_paths,
)
from fastmri_growth.cli.run_checks import (
    adopt_checkpoint_model_type,
    check_init_from,
    check_resume_not_finished,
    check_root_dir,
    resolve_checkpoint,
)
from fastmri_growth.growth.checks import float_at_least, int_at_least
from fastmri_growth.pl_modules.model_types import GROWING_MODEL_TYPES


# ---------------------------------------------------------------------------
# growth flags and their combinations
# ---------------------------------------------------------------------------


def check_growth_schedule(args: argparse.Namespace) -> None:
    """Growth epochs that the run's ``--max_epochs`` would never reach."""
    if args.mode != "train":
        return
    kind = getattr(args, "growth_schedule", None)
    max_epochs = args.max_epochs
    if max_epochs is None or max_epochs < 0:
        return
    if kind == "budget":
        end = getattr(args, "growth_end_epoch", None)
        if end is not None and end >= max_epochs:
            raise UsageError(
                f"--growth-end-epoch {end} is not before --max_epochs {max_epochs} (epochs "
                f"count from 0): the last growth event would never run; pass "
                f"--growth-end-epoch {max_epochs - 1} or less"
            )
    if kind == "progressive":
        late = [e for e in progressive_epochs(getattr(args, "progressive_schedule", None))
                if e >= max_epochs]
        if late:
            raise UsageError(
                f"--progressive-schedule grows at epoch {late[0]}, which --max_epochs "
                f"{max_epochs} never reaches (epochs count from 0); pass --max_epochs "
                f"{max(late) + 1} or drop that epoch from the schedule")


def progressive_epochs(spec: Any) -> List[int]:
    """The epochs of a ``--progressive-schedule`` string (malformed parts are skipped).

    The module parses the schedule in full and reports malformed parts.
    """
    if not isinstance(spec, str):
        return []
    out = []
    for part in spec.split(";"):
        epoch, sep, _ = part.strip().partition(":")
        try:
            out.append(int(epoch))
        except ValueError:
            continue
    return out


def check_growth_flags(args: argparse.Namespace) -> None:
    """Growth flags that the chosen schedule, prune schedule or method would ignore.

    Only flags given on the command line count (``args.given_flags``); which
    option applies to what is declared with the option
    (:mod:`fastmri_growth.growth.config`).

    Raises:
        UsageError: naming the flag, what it applies to, and the fix.
    """
    if args.model_type not in GROWING_MODEL_TYPES or args.mode != "train":
        return
    from fastmri_growth.growth.config import inapplicable
    from fastmri_growth.pl_modules.model_types import get_model_type

    # What the backbone has (cascades) decides whether depth-growth flags apply.
    capabilities = getattr(get_model_type(args.model_type).module_class(),
                           "growth_capabilities", ())
    problem = inapplicable(vars(args), getattr(args, "given_flags", set()), capabilities,
                           f"--model-type {args.model_type}")
    if problem:
        raise UsageError(problem)


def never_grows_reason(args: argparse.Namespace, module: Any) -> Optional[str]:
    """Why a growing run, as configured, will never grow (None when it may).

    Checked on the built module (its schedule and start widths) from the
    epoch the run starts with to ``--max_epochs``.
    """
    if args.mode != "train" or args.model_type not in GROWING_MODEL_TYPES:
        return None
    callback = getattr(module, "growth_callback", None)
    if callback is None:
        return None
    from fastmri_growth.growth.schedule import width_of

    schedule = callback.schedule
    first = getattr(args, "resume_epoch", 0) or 0
    max_epochs = args.max_epochs if args.max_epochs is not None and args.max_epochs >= 0 \
        else None
    depth = getattr(callback, "depth", None)
    if depth is not None and (max_epochs is None or depth.planned_epochs(
            module.growable_net().num_cascades, first, max_epochs)):
        return None  # cascades will be inserted
    done = getattr(args, "resumed_events", 0) or 0
    if schedule.max_events is not None and done >= schedule.max_events:
        return (f"--max-growth-steps is {schedule.max_events}"
                + (f" and the checkpoint has done {done} growth event(s)" if done else ""))
    sites = list(schedule.sites) if schedule.kind != "progressive" else [
        s for group in schedule.progressive.values() for s in group]
    if callback.config.max_width is not None and sites:
        size = module.growable_net().get_network_size()
        widths = {s.key: width_of(size, s) for s in sites}
        if all(w >= callback.config.max_width for w in widths.values()):
            narrowest = min(widths, key=widths.get)
            return (f"--max-width {callback.config.max_width} is not above the width of any site to "
                    f"grow (the narrowest, {narrowest}, has {widths[narrowest]} filters)")
    if max_epochs is None:
        return None
    epochs = range(first, max_epochs)
    if schedule.kind == "interval":
        due = [e for e in epochs if e >= schedule.start_epoch
               and (e - schedule.start_epoch) % schedule.interval == 0]
        what = (f"--growth-start-epoch {schedule.start_epoch}, --growth-interval "
                f"{schedule.interval}")
    elif schedule.kind == "budget":
        due = [e for e in schedule.budget_epochs() if e in epochs]
        what = f"budget events at epochs {schedule.budget_epochs()}"
    elif schedule.kind == "progressive":
        due = [e for e in schedule.progressive if e in epochs]
        what = f"progressive epochs {sorted(schedule.progressive)}"
    else:  # plateau: depends on the losses; only its start can rule it out
        due = [e for e in epochs if e >= schedule.start_epoch]
        what = f"--growth-start-epoch {schedule.start_epoch}"
    if due:
        return None
    start = f"from epoch {first} " if first else ""
    return (f"no growth epoch {start}before --max_epochs {max_epochs} ({what}; epochs count "
            "from 0)")


# ---------------------------------------------------------------------------
# numbers the module, the optimizer and the data loaders take
# ---------------------------------------------------------------------------


def _positive_float(name: str, value: Any) -> Optional[str]:
    if float_at_least(0.0)(name, value) is not None or value <= 0:
        return f"{name} must be a finite float > 0, got {value!r}"
    return None


def _probability(name: str, value: Any) -> Optional[str]:
    problem = float_at_least(0.0)(name, value)
    if problem is None and value >= 1:
        problem = f"{name} must be a float in [0, 1), got {value!r}"
    return problem


#: Range checks of the module and data flags (:mod:`fastmri_growth.growth.checks`
#: words the problems); a flag a model type lacks is skipped. fastMRI's modules
#: take any value and fail later: a ZeroDivisionError after an epoch
#: (``--lr_step_size 0``), a U-Net built with no layers (``--num_pool_layers -1``).
FLAG_CHECKS = {
    "lr": float_at_least(0.0),  # 0 keeps the weights (a test of the data path, say)
    "weight_decay": float_at_least(0.0),
    "lr_gamma": _positive_float,
    "lr_step_size": int_at_least(1),
    "drop_prob": _probability,
    "batch_size": int_at_least(1),
    "num_workers": int_at_least(0),
    "in_chans": int_at_least(1),
    "out_chans": int_at_least(1),
    "chans": int_at_least(1),
    "num_pool_layers": int_at_least(1),
    "num_cascades": int_at_least(1),
    "pools": int_at_least(1),
    "sens_chans": int_at_least(1),
    "sens_pools": int_at_least(1),
}


def check_flag_ranges(args: argparse.Namespace) -> None:
    """Numbers out of range for the module, its optimizer or the data loaders.

    Raises:
        UsageError: ``--FLAG must be ..., got VALUE``, naming the valid values.
    """
    for name, check in FLAG_CHECKS.items():
        if not hasattr(args, name):
            continue
        value = getattr(args, name)
        problem = check(f"--{name}", value)
        if problem is not None:
            raise UsageError(problem)


# ---------------------------------------------------------------------------
# what the machine must hold: processes and growth's scoring memory
# ---------------------------------------------------------------------------


def requested_processes(args: argparse.Namespace) -> Optional[int]:
    """How many processes ``--devices`` x ``--num_nodes`` starts (None: not known up front)."""
    devices = args.devices
    if isinstance(devices, str):
        text = devices.strip().strip("[]")
        if text == "auto":
            count = 1
            if str(args.accelerator) in ("auto", "gpu", "cuda"):
                import torch

                count = max(1, torch.cuda.device_count())
        elif "," in text:
            count = len([p for p in text.split(",") if p.strip()])
        else:
            try:
                count = int(text)
            except ValueError:
                return None
    elif isinstance(devices, int) and not isinstance(devices, bool):
        count = devices
    else:
        return None
    if count < 1:  # -1: every device of the accelerator, resolved by Lightning
        return None
    nodes = args.num_nodes if isinstance(args.num_nodes, int) and args.num_nodes > 0 else 1
    return count * nodes


def check_processes_have_volumes(args: argparse.Namespace) -> None:
    """Every DDP process gets at least one validation (test) volume.

    fastMRI's ``VolumeSampler`` gives each process whole volumes; one with
    none fails after DDP setup on every rank, leaving log folders behind.

    Raises:
        UsageError: more processes than volumes, naming both counts.
    """
    processes = requested_processes(args)
    if processes is None or processes < 2:
        return
    if args.mode == "train" and args.limit_val_batches == 0:
        return  # no validation loader is built
    from fastmri_growth.cli.data_checks import data_folders

    split = "val" if args.mode == "train" else "test"
    folder = data_folders(args).get(split)
    if folder is None or not folder.is_dir():
        return
    volumes = len([p for p in folder.iterdir() if p.suffix == ".h5" and p.is_file()])
    rate = getattr(args, f"{split}_volume_sample_rate", None)
    if rate is not None:
        volumes = max(1, round(volumes * rate)) if volumes else 0
    if volumes < processes:
        what = "validation" if split == "val" else "test"
        raise UsageError(
            f"--devices {args.devices} x --num_nodes {args.num_nodes} starts {processes} "
            f"processes but {folder} holds {volumes} {what} volume(s): each process "
            f"{'validates' if split == 'val' else 'tests'} whole volumes, so every one needs at "
            f"least one; pass --devices {max(volumes, 1)} or fewer, or more {what} volumes")


#: Bytes per candidate feature value at the peak of a scoring pass: the
#: features, the consumer's deltas they are multiplied with and the product
#: (measured 2.2 to 3.4 for a DynamicUnet's full-resolution sites; rounded up).
SCORING_BYTES_PER_VALUE = 4 * 4


def scoring_memory(args: argparse.Namespace) -> Optional[tuple]:
    """An upper estimate of a growth event's scoring memory, from the flags and the data.

    The candidates' features, ``(N, K, H, W)`` floats for ``K = n_candidates x
    n_new`` candidates per site at the input's resolution (the widest sites
    see it), times :data:`SCORING_BYTES_PER_VALUE`; ``N`` is the batch (times
    the coils for a VarNet's sensitivity network). Each scoring batch is
    handled alone, so ``--growth-batches`` does not add up.

    Returns:
        ``(bytes, K, N, (H, W))``, or None when the method scores no candidates
        or the data cannot be read.
    """
    from fastmri_growth.cli.data_checks import (_kspace, _unet_input_size, _varnet_input_size,
                                                data_folders)

    n_candidates = getattr(args, "n_candidates", None)
    method = getattr(args, "growth_method", None)
    if not isinstance(n_candidates, int) or method not in ("sample_select", "gradmax"):
        return None
    folder = data_folders(args).get("train")
    if folder is None or not folder.is_dir():
        return None
    files = sorted(p for p in folder.iterdir() if p.suffix == ".h5" and p.is_file())
    if not files:
        return None
    try:
        if _kspace(args.model_type):
            import h5py

            size = _varnet_input_size(files[0])
            with h5py.File(files[0], "r") as hf:
                coils = int(hf["kspace"].shape[1]) if hf["kspace"].ndim == 4 else 1
        else:
            size, coils = _unet_input_size(files[0], args.challenge), 1
    except (OSError, KeyError, ValueError):
        return None
    k = n_candidates * max(1, int(getattr(args, "n_new", 1) or 1))
    n = max(1, int(args.batch_size)) * coils
    return SCORING_BYTES_PER_VALUE * k * n * size[0] * size[1], k, n, size


def machine_memory(args: argparse.Namespace) -> Optional[tuple]:
    """``(bytes, what)`` of the memory one process would score growth in (None: not known).

    The first GPU's total memory when the run uses CUDA, else the memory
    available to new processes (``MemAvailable``) shared by the run's processes.
    """
    import torch

    cuda = str(args.accelerator) in ("gpu", "cuda") or (
        str(args.accelerator) == "auto" and torch.cuda.is_available())
    if cuda:
        if not torch.cuda.is_available() or "fork" in str(args.strategy) or \
                "notebook" in str(args.strategy):
            return None  # initialising CUDA here would break a forking strategy
        props = torch.cuda.get_device_properties(0)
        return int(props.total_memory), f"the {props.name}'s memory"
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    # Every process of the run scores in this memory at once.
                    processes = requested_processes(args) or 1
                    share = int(line.split()[1]) * 1024 // processes
                    what = "the memory available on this machine" + (
                        f", shared by {processes} processes," if processes > 1 else "")
                    return share, what
    except OSError:
        pass
    return None


def check_scoring_memory(args: argparse.Namespace) -> None:
    """Refuse ``--n-candidates`` whose scoring pass cannot fit in memory.

    Raises:
        UsageError: with the estimate and the machine's memory.
    """
    if args.mode != "train" or args.model_type not in GROWING_MODEL_TYPES:
        return
    need = scoring_memory(args)
    have = machine_memory(args)
    if need is None or have is None or need[0] <= have[0]:
        return
    nbytes, k, n, (h, w) = need
    raise UsageError(
        f"--n-candidates {args.n_candidates} is too many: scoring {k} candidate filter(s) per "
        f"site on batches of {n} {h}x{w} image(s) needs about {nbytes / 2**30:.1f} GiB, but "
        f"{have[1]} is {have[0] / 2**30:.1f} GiB; pass --n-candidates "
        f"{max(1, int(args.n_candidates * have[0] / nbytes))} or fewer (or a smaller "
        "--batch_size)")


def validate_args(args: argparse.Namespace) -> None:
    """Check the parsed arguments; fill path and checkpoint defaults.

    Sets ``args.data_path``, ``args.default_root_dir``, ``args.ckpt_path``
    (None when training starts from scratch), ``args.init_weights``,
    ``args.checkpoint_notes`` and ``args.nothing_to_train``. Reads files,
    writes none.

    Raises:
        UsageError: on the first problem, with a message naming the fix.
    """
    resolve_paths(args)
    check_flag_ranges(args)
    check_mask_args(args)
    check_sample_rates(args)
    check_batch_limits(args)
    adopt_checkpoint_model_type(args)
    check_model_challenge(args)
    check_growth_schedule(args)
    check_growth_flags(args)
    check_data(args)
    check_root_dir(args)
    args.ckpt_path = resolve_checkpoint(args)
    check_init_from(args)
    if args.ckpt_path is not None and args.mode == "train":
        check_growth_schedule(args)  # with the options taken from the checkpoint
    check_network_fits_data(args)
    check_processes_have_volumes(args)
    check_scoring_memory(args)
    check_resume_not_finished(args)
