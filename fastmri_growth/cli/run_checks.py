"""Checks of the training command's checkpoints and run folder, before anything is written.

Which checkpoint a run resumes or tests (the newest usable one by default,
``--ckpt``), what a resumed run keeps from it (its module options, its
challenge, its growth state), whether a resumed run is already finished,
the ``--init-from`` weights, and whether the run folder is writable and has
room for the checkpoints. Each check raises :class:`~fastmri_growth.cli.common.UsageError`
with a message naming the fix; none writes a file.
"""
from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from typing import Any, Dict, Optional

from fastmri_growth.cli.checkpoints import (
    best_checkpoint_path,
    checkpoint_problem,
    newest_usable_checkpoint,
    next_epoch,
    read_checkpoint,
    read_init_weights,
)
from fastmri_growth.cli.common import UsageError
from fastmri_growth.cli.data_checks import model_type_data_defaults, stored_architecture
from fastmri_growth.pl_modules.model_types import checkpoint_model_type


# ---------------------------------------------------------------------------
# the checkpoint to resume or to test
# ---------------------------------------------------------------------------

#: ``--ckpt`` words: the last epoch's checkpoint or the best one by validation_loss.
CKPT_CHOICES = ("last", "best")


def _test_checkpoint(args: argparse.Namespace, checkpoint_dir: Path) -> Optional[Path]:
    """The file that ``--ckpt`` names in test mode (None: not given, or nothing found).

    Raises:
        UsageError: ``--ckpt last`` or ``best`` with no such file in the run folder.
    """
    choice = getattr(args, "ckpt", None)
    if choice is None:
        return None
    if choice == "last":
        path = checkpoint_dir / "last.ckpt"
        if not path.is_file():
            raise UsageError(f"--ckpt last: {checkpoint_dir} holds no last.ckpt; train first "
                             "with the same --default_root_dir, or pass --ckpt PATH")
        return path
    if choice == "best":
        path = best_checkpoint_path(checkpoint_dir)
        if path is None:
            raise UsageError(
                f"--ckpt best: no best checkpoint (epoch=*.ckpt by validation_loss) in "
                f"{checkpoint_dir}; pass --ckpt last or --ckpt PATH")
        return path
    path = Path(choice)
    if not path.is_file():
        raise UsageError(f"--ckpt {choice} is not a file; pass last, best or an existing "
                         ".ckpt file")
    return path


def _check_ckpt_flags(args: argparse.Namespace) -> None:
    if getattr(args, "ckpt", None) is None:
        return
    if args.mode != "test":
        raise UsageError(f"--ckpt {args.ckpt} selects the weights of --mode test; to resume "
                         "training from a file pass --ckpt_path FILE")
    if args.ckpt_path is not None:
        raise UsageError(f"--ckpt {args.ckpt} and --ckpt_path {args.ckpt_path} both name the "
                         "weights to test; pass only one of them")


def resolve_checkpoint(args: argparse.Namespace) -> Optional[Path]:
    """The checkpoint to resume from (train) or to test (test mode).

    Without ``--ckpt_path`` (or ``--ckpt`` in test mode) the newest usable
    checkpoint of ``DEFAULT_ROOT_DIR/checkpoints``: broken ones (truncated,
    unreadable, NaN weights) are skipped and listed in
    ``args.checkpoint_notes``. Also sets ``args.resume_epoch`` (the epoch a
    resumed run starts with; 0 from scratch) and ``args.resumed_events``
    (growth events the checkpoint has done).

    Raises:
        UsageError: ``--ckpt_path`` does not exist or is broken, test mode
            finds no checkpoint, the checkpoint holds the other model type or
            was trained on the other challenge, or (training) a given module
            flag differs from it (:func:`adopt_checkpoint_options`) or it lacks
            the growth schedule's state (:func:`check_growth_state`).
    """
    _check_ckpt_flags(args)
    checkpoint_dir = args.default_root_dir / "checkpoints"
    args.checkpoint_notes = getattr(args, "checkpoint_notes", [])
    args.resume_epoch, args.resumed_events = 0, 0
    explicit = Path(args.ckpt_path) if args.ckpt_path is not None else _test_checkpoint(
        args, checkpoint_dir)
    loaded = None
    if explicit is not None:
        flag = "--ckpt_path" if args.ckpt_path is not None else "--ckpt"
        if not explicit.is_file():
            raise UsageError(f"{flag} {explicit} is not a file; pass an existing .ckpt file")
        ckpt = explicit
        loaded = _read_given_checkpoint(ckpt, flag, args.mode)
        problem = checkpoint_problem(loaded)
        if problem is not None:
            raise UsageError(f"checkpoint {ckpt} cannot be used: {problem}; pass another "
                             f"{flag}")
    else:
        found = newest_usable_checkpoint(checkpoint_dir)
        note = found.skipped_note()
        if note:
            args.checkpoint_notes.append(note)
        ckpt, loaded = found.path, found.loaded
    if ckpt is None:
        broken = found.skipped if explicit is None else []
        if broken and args.mode == "train":
            # Starting from epoch 0 would overwrite them (last.ckpt first).
            raise UsageError(
                f"every checkpoint in {checkpoint_dir} is broken: {_broken_list(broken)}; "
                "nothing was trained or overwritten: to start afresh, move them out of that "
                "folder or pass another --default_root_dir; to resume, pass --ckpt_path with "
                "a good copy")
        if args.mode == "test":
            what = f"no usable .ckpt file ({_broken_list(broken)})" if broken else "no .ckpt file"
            raise UsageError(
                f"--mode test needs trained weights but {checkpoint_dir} holds {what}; "
                "train first with the same --default_root_dir, or pass --ckpt_path FILE"
            )
        return None
    stored = checkpoint_model_type(loaded)
    explicit_type = getattr(args, "model_type_given", True)
    if args.mode == "test" and stored is not None and not explicit_type:
        # Without --model-type, test mode rebuilds whatever the checkpoint holds.
        args.model_type = stored
    elif stored is not None and stored != args.model_type:
        action = "resume" if args.mode == "train" else "test"
        raise UsageError(
            f"checkpoint {ckpt} holds a {stored} model but --model-type is {args.model_type}; "
            f"pass --model-type {stored} to {action} it"
            + (", or a new --default_root_dir" if args.mode == "train" else "")
        )
    check_checkpoint_challenge(args, ckpt, loaded)
    if args.mode == "train":
        adopt_checkpoint_options(args, ckpt, loaded)
        check_growth_state(args, ckpt, loaded)
        args.resume_epoch = next_epoch(loaded)
        growth_state = ((loaded.get("callbacks") or {}).get("GrowthCallback") or {})
        args.resumed_events = len((growth_state.get("schedule") or {}).get("grown_epochs", []))
    return ckpt


# ---------------------------------------------------------------------------
# what a resumed run keeps from its checkpoint
# ---------------------------------------------------------------------------

_MISSING = object()


def _plain_value(value: Any) -> Any:
    """A flag's value in a form that compares equal to the checkpoint's (tuples as lists)."""
    if isinstance(value, (list, tuple)):
        return [_plain_value(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _flag_name(name: str) -> str:
    """The flag of a module option as ``--help`` shows it (growth flags hyphenated)."""
    from fastmri_growth.growth.config import option_names, spellings

    return spellings(name)[0] if name in option_names() else f"--{name}"


def _flag_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value)
    return str(value)


def checkpoint_options(args: argparse.Namespace, loaded: Any) -> Dict[str, Any]:
    """The module options a checkpoint was trained with, by argparse destination.

    The architecture (:func:`~fastmri_growth.cli.data_checks.stored_architecture`,
    which falls back on the weights' shapes), then every other constructor
    argument of the run's module class recorded in ``hyper_parameters``
    (optimizer, dropout, growth options). Options a checkpoint of an older
    version did not record are left out.
    """
    from fastmri_growth.cli.train_parser import model_arg_names, module_class

    stored: Dict[str, Any] = dict(stored_architecture(loaded))
    hparams = (loaded.get("hyper_parameters") or {}) if isinstance(loaded, dict) else {}
    for name in model_arg_names(module_class(args.model_type)):
        if name in hparams and name not in stored:
            stored[name] = hparams[name]
    return stored


def adopt_checkpoint_options(args: argparse.Namespace, ckpt_path: Path, loaded: Any) -> None:
    """The resume rule: the checkpoint's module options win, a differing flag is refused.

    A resumed run continues the run its checkpoint holds: its architecture,
    optimizer (``--lr``, ``--weight_decay``, ``--lr_step_size``,
    ``--lr_gamma``; Lightning restores the optimizer's and scheduler's own
    state from the checkpoint) and growth options are the checkpoint's. A
    flag left out of the command line takes the checkpoint's value (listed
    in ``args.checkpoint_notes`` when that is not the flag's default); a flag
    given with another value is refused. Trainer and data flags
    (``--max_epochs``, ``--batch_size``, ...) apply as given.

    Raises:
        UsageError: naming every given flag that differs, the checkpoint's
            value and the given one.
    """
    given = getattr(args, "given_flags", set())
    stored = checkpoint_options(args, loaded)
    diff, adopted = [], []
    for name, value in stored.items():
        current = getattr(args, name, _MISSING)
        if current is _MISSING or _plain_value(current) == _plain_value(value):
            continue
        if name in given:
            diff.append(name)
        else:
            adopted.append((name, current, value))
            setattr(args, name, value)
    if diff:
        # A value the module rejects anyway is reported as such, not as a difference.
        from fastmri_growth.cli.train_setup import build_module

        build_module(args)
        has = ", ".join(f"{k}={_flag_value(stored[k])}" for k in diff)
        got = ", ".join(f"{_flag_name(k)} is {_flag_value(getattr(args, k))}" for k in diff)
        fix = " ".join(f"{_flag_name(k)} {_flag_value(stored[k])}" for k in diff)
        raise UsageError(
            f"checkpoint {ckpt_path} has {has} but {got}; pass {fix} to resume it, or a new "
            f"--default_root_dir (a resumed run keeps its checkpoint's architecture, optimizer "
            f"and growth options; --init-from {ckpt_path} starts a new run from its weights)")
    if adopted:
        parts = ", ".join(f"{_flag_name(k)} {_flag_value(v)} (default {_flag_value(d)})"
                          for k, d, v in adopted)
        args.checkpoint_notes.append(
            f"note: resuming {ckpt_path} with its own options: {parts}")


def check_growth_state(args: argparse.Namespace, ckpt_path: Path, loaded: Any) -> None:
    """A growing run resumes only with its growth schedule's state.

    Without it (a checkpoint saved with ``weights_only=True``, or with the
    growth callback's state removed) the schedule would start over: it would
    grow again at epochs it already grew and past ``--max-growth-steps``.

    Raises:
        UsageError: naming the missing state and the way to use the weights.
    """
    from fastmri_growth.pl_modules.growth_callback import missing_growth_state
    from fastmri_growth.pl_modules.model_types import MODEL_TYPES

    spec = MODEL_TYPES.get(args.model_type)
    if spec is None or not spec.grows:
        return
    missing = missing_growth_state(loaded, spec.checkpoint_key)
    if missing:
        raise UsageError(
            f"checkpoint {ckpt_path} has no {missing}: resuming it would start its growth "
            f"schedule over (growing again, past --max-growth-steps); pass --init-from "
            f"{ckpt_path} with a new --default_root_dir to train on from its weights")


def check_checkpoint_challenge(args: argparse.Namespace, ckpt_path: Path, loaded: Any) -> None:
    """A checkpoint resumes and tests only under the challenge it was trained on.

    Raises:
        UsageError: its recorded (or inferred) challenge differs from ``--challenge``.
    """
    from fastmri_growth.pl_modules.model_types import checkpoint_challenge

    stored, how = checkpoint_challenge(loaded)
    if stored is None:
        args.checkpoint_notes.append(
            f"warning: checkpoint {ckpt_path} does not record the challenge it was trained on "
            f"(written by an older version); taking it for {args.challenge} as --challenge says")
        return
    if stored != args.challenge:
        action = "resume" if args.mode == "train" else "test"
        raise UsageError(
            f"checkpoint {ckpt_path} was trained on {stored} data ({how}) but --challenge is "
            f"{args.challenge}; pass --challenge {stored} (and {stored} data) to {action} it")


#: The first bytes of an HDF5 file (fastMRI's data and reconstructions).
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _read_given_checkpoint(path: Path, flag: str, mode: str):
    """:func:`read_checkpoint` of a file the user named, with advice about that flag.

    Raises:
        UsageError: an HDF5 file (data or reconstructions, not weights) or an
            unreadable file, naming ``flag`` and what it takes.
    """
    takes = "last, best or a .ckpt file" if flag == "--ckpt" else "a .ckpt file"
    with open(path, "rb") as f:
        head = f.read(len(_HDF5_SIGNATURE))
    if head == _HDF5_SIGNATURE:
        score = ("; to score reconstructions against the data use fastmri-growth-eval"
                 if mode == "test" else "")
        raise UsageError(
            f"{flag} {path} is an HDF5 file (fastMRI data or reconstructions), not a "
            f"checkpoint; pass {takes} written by fastmri-growth-train{score}")
    try:
        return read_checkpoint(path)
    except UsageError as err:
        why = re.search(r"\((.*)\); pass another", str(err))
        raise UsageError(f"cannot read checkpoint {path} ({why.group(1) if why else err}); "
                         f"pass {takes} written by fastmri-growth-train as {flag}") from None


def _broken_list(skipped) -> str:
    """``name (why), ...`` of broken checkpoints, each reason cut at its first sentence."""
    return ", ".join(f"{p.name} ({why.split('. ')[0].rstrip('.')})" for p, why in skipped)


def adopt_checkpoint_model_type(args: argparse.Namespace) -> None:
    """Test mode without ``--model-type``: take the model type of the checkpoint to test.

    The checkpoint is the one :func:`resolve_checkpoint` will pick
    (``--ckpt_path`` or ``--ckpt``, else the newest usable one in the run
    folder). Its model type's data defaults (``--challenge multicoil`` for a
    VarNet) replace those of the default model type for the flags not given.
    Problems with the checkpoint are left to :func:`resolve_checkpoint`,
    which reports them.
    """
    if args.mode != "test" or getattr(args, "model_type_given", True):
        return
    checkpoint_dir = args.default_root_dir / "checkpoints"
    try:
        _check_ckpt_flags(args)
        ckpt = Path(args.ckpt_path) if args.ckpt_path is not None else _test_checkpoint(
            args, checkpoint_dir)
        loaded = read_checkpoint(ckpt) if ckpt is not None and ckpt.is_file() else None
    except UsageError:
        return
    if ckpt is None:
        loaded = newest_usable_checkpoint(checkpoint_dir).loaded
    stored = checkpoint_model_type(loaded) if loaded is not None else None
    if stored is None or stored == args.model_type:
        return
    given = getattr(args, "given_flags", set())
    for name, value in model_type_data_defaults(stored).items():
        if name not in given:
            setattr(args, name, value)
    args.model_type = stored


def check_resume_not_finished(args: argparse.Namespace) -> None:
    """Note a resumed run that has nothing left to train (``args.nothing_to_train``).

    Running the same command again after a run completed is not an error
    (automatic resume makes that the way to continue after a kill); it
    trains nothing, so nothing is written either.
    """
    args.nothing_to_train = None
    max_epochs = args.max_epochs
    if args.mode != "train" or args.ckpt_path is None or max_epochs is None or max_epochs < 0:
        return
    if args.resume_epoch >= max_epochs:
        args.nothing_to_train = (
            f"note: checkpoint {args.ckpt_path} has finished epoch {args.resume_epoch - 1} and "
            f"--max_epochs is {max_epochs}: nothing to train; pass a larger --max_epochs to "
            "continue this run"
        )


# ---------------------------------------------------------------------------
# --init-from
# ---------------------------------------------------------------------------


def check_init_from(args: argparse.Namespace) -> None:
    """Read the ``--init-from`` weights and take their architecture.

    The architecture flags (``--chans``, ``--num_pool_layers``, ... or the
    VarNet's) follow the file unless given; given ones must match it. Sets
    ``args.init_weights`` (None without ``--init-from`` or when resuming:
    a run folder with a checkpoint resumes it, so re-running the same
    command after a kill continues the run instead of starting over).

    Raises:
        UsageError: test mode, an unreadable file, no matching network, or
            given architecture flags that differ from the file's.
    """
    path = getattr(args, "init_from", None)
    args.init_weights = None
    if path is None:
        return
    if args.mode != "train":
        raise UsageError(f"--init-from {path} sets the starting weights of training; "
                         "in test mode pass --ckpt_path FILE")
    if args.ckpt_path is not None:
        args.checkpoint_notes.append(
            f"note: resuming {args.ckpt_path}; --init-from {path} only sets the weights of a "
            "fresh start")
        return
    init = read_init_weights(Path(path), args.model_type)
    given = getattr(args, "given_flags", set())
    diff = [k for k, v in init.architecture.items()
            if k in given and hasattr(args, k) and getattr(args, k) != v]
    if diff:
        has = ", ".join(f"{k}={init.architecture[k]}" for k in diff)
        got = ", ".join(f"--{k} is {getattr(args, k)}" for k in diff)
        raise UsageError(f"--init-from {path} holds a network with {has} but {got}; drop "
                         f"{' '.join('--' + k for k in diff)} (read from the file) or pass "
                         "matching values")
    for k, v in init.architecture.items():
        if hasattr(args, k):
            setattr(args, k, v)
    args.init_weights = init


# ---------------------------------------------------------------------------
# the run folder
# ---------------------------------------------------------------------------


def _nearest_existing(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _unwritable_reason(folder: Path) -> Optional[str]:
    """Why files cannot be created in an existing folder (None: they can)."""
    if not folder.is_dir():
        return "is a file, not a folder"
    try:
        if os.statvfs(folder).f_flag & os.ST_RDONLY:
            return "is on a read-only file system"
    except OSError:
        pass
    if not os.access(folder, os.W_OK | os.X_OK):
        return "is not writable (permission denied)"
    return None


def check_writable_folder(path: Path, flag: str, fix: str) -> None:
    """Refuse a folder the run could not create or write into.

    Args:
        path: The folder (it may not exist yet: its nearest existing parent
            is checked then).
        flag: How to name it (``--default_root_dir X``).
        fix: What to do instead.

    Raises:
        UsageError: a component of the path is a file, or the folder (or its
            nearest existing parent) is read-only.
    """
    existing = _nearest_existing(path)
    reason = _unwritable_reason(existing)
    if reason is not None:
        where = "" if existing == Path(os.path.abspath(path)) else f": {existing}"
        raise UsageError(f"{flag}{where} {reason}; {fix}")


def check_root_dir(args: argparse.Namespace) -> None:
    """The run folder, the sub-folders the run writes, and the dataset cache can be written.

    Raises:
        UsageError: naming the folder and why not (a file in the path, a
            read-only file system, no permission).
    """
    root = Path(args.default_root_dir)
    fix = "pass a writable --default_root_dir"
    check_writable_folder(root, f"--default_root_dir {root}", fix)
    subs = ["lightning_logs", "csv_logs"] + (
        ["checkpoints"] if args.mode == "train" else ["reconstructions"])
    for sub in subs:
        if (root / sub).exists():
            reason = _unwritable_reason(root / sub)
            if reason is not None:
                raise UsageError(f"{root / sub} {reason}; {fix}")
    if args.use_dataset_cache_file:
        from fastmri_growth.cli.dataset_cache import DATASET_CACHE_FILE

        cache = Path(os.path.abspath(DATASET_CACHE_FILE))
        reason = _unwritable_reason(cache.parent)
        if reason is not None:
            raise UsageError(
                f"the dataset cache {cache} cannot be written: {cache.parent} {reason}; run from "
                "a writable folder or pass --use_dataset_cache_file false")


def free_bytes(path: Path) -> int:
    """Bytes available to this user on the file system of ``path`` (or its nearest parent)."""
    st = os.statvfs(_nearest_existing(path))
    return int(st.f_bavail) * int(st.f_frsize)


def checkpoint_bytes(num_parameters: int) -> int:
    """A generous size estimate of one checkpoint of a network of that many parameters.

    float32 weights and up to two optimizer states (Adam; RMSprop keeps
    one), plus the loops', callbacks' and random states.
    """
    return 12 * int(num_parameters) + 256 * 1024


def check_free_space(args: argparse.Namespace, num_parameters: int) -> None:
    """Room for the run's first checkpoint in the run folder.

    Two checkpoints' worth: the new file is written beside the one it
    replaces and renamed over it.

    Raises:
        UsageError: the file system holds less.
    """
    if args.mode != "train":
        return
    need = 2 * checkpoint_bytes(num_parameters)
    root = Path(args.default_root_dir)
    free = free_bytes(root)
    if free < need:
        raise UsageError(
            f"--default_root_dir {root}: {_mib(free)} free on its file system, but a "
            f"checkpoint of this {num_parameters:,}-parameter network needs about "
            f"{_mib(need)} there; free space or pass another --default_root_dir")


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"
