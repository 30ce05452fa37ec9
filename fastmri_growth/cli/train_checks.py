"""Checks of the training command's arguments: everything here runs before any file is written.

:func:`validate_args` resolves the default paths (``fastmri_dirs.yaml`` as
fastMRI's demo reads it), checks the mask and sample-rate flags, growth
flags the chosen schedule, method or prune schedule would ignore, the data
folders, the run folder (writable), the checkpoint to resume or test (the
newest usable one by default), the ``--init-from`` weights, and the
pooling depth against the data's image size, and raises
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
    check_network_fits_data(args)
    check_resume_not_finished(args)
