"""Checkpoint files of a training run: finding, reading and writing them.

Used by the training command (automatic resume, test mode, ``--init-from``).
Which module wrote a checkpoint is
:func:`fastmri_growth.pl_modules.model_types.checkpoint_model_type`.

A run folder can hold broken checkpoints: a file truncated by a full disk
or a kill under an older version (checkpoints are written atomically now,
see :mod:`fastmri_growth.pl_modules.checkpoint_io`), or one whose weights
are NaN (written before the non-finite guard existed). Automatic resume and
test mode take the newest checkpoint that reads and holds finite weights,
and say which ones they skipped (:func:`newest_usable_checkpoint`).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from fastmri_growth.cli.common import UsageError
from fastmri_growth.pl_modules.model_types import MODEL_TYPES


def checkpoint_files(checkpoint_dir: Path) -> List[Path]:
    """The ``*.ckpt`` files of a folder, newest first.

    Ordered by modification time; ties go to ``last*.ckpt`` (it is written
    right after the best one).
    """
    if not checkpoint_dir.is_dir():
        return []
    ckpts = [p for p in checkpoint_dir.glob("*.ckpt") if p.is_file()]
    return sorted(ckpts, key=lambda p: (p.stat().st_mtime_ns, p.name.startswith("last")),
                  reverse=True)


def newest_checkpoint(checkpoint_dir: Path) -> Optional[Path]:
    """The most recently written ``*.ckpt`` in a folder, as fastMRI's demo picks it.

    Ties go to ``last*.ckpt`` (it is written right after the best one). The
    file is not read: :func:`newest_usable_checkpoint` also skips broken ones.
    """
    files = checkpoint_files(checkpoint_dir)
    return files[0] if files else None


def read_checkpoint(path: Path) -> Any:
    """The object stored in a checkpoint file (tensors memory-mapped when possible).

    Raises:
        UsageError: the file cannot be read as a checkpoint.
    """
    import torch

    try:
        try:
            # mmap: only the small dict entries are read, not every tensor.
            return torch.load(path, map_location="cpu", mmap=True, weights_only=False)
        except RuntimeError:
            return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        first = str(err).splitlines()[0] if str(err) else ""
        raise UsageError(
            f"cannot read checkpoint {path} ({type(err).__name__}: {first}); pass another "
            "--ckpt_path or move the broken file out of the checkpoints folder"
        ) from None


def nonfinite_tensors(state_dict: Mapping[str, Any]) -> List[str]:
    """The keys of a state dict's floating-point tensors that hold NaN or Inf."""
    import torch

    return [k for k, v in state_dict.items()
            if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all()]


def checkpoint_problem(ckpt: Any) -> Optional[str]:
    """Why a loaded checkpoint cannot be resumed or tested (None when it can).

    A Lightning checkpoint is a dict with a ``state_dict``; weights with NaN
    or Inf come from a run that trained on broken data or diverged.
    """
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), Mapping):
        return "not a Lightning checkpoint (no 'state_dict')"
    bad = nonfinite_tensors(ckpt["state_dict"])
    if bad:
        return f"{len(bad)} weight tensor(s) hold NaN or Inf (first: {bad[0]})"
    return None


@dataclass
class FoundCheckpoint:
    """The checkpoint automatic resume or test mode picked, and what it passed over.

    Attributes:
        path: The checkpoint (None: the folder holds no usable one).
        loaded: Its contents (tensors memory-mapped).
        skipped: ``(path, reason)`` of the newer files that were broken.
    """

    path: Optional[Path] = None
    loaded: Any = None
    skipped: List[Tuple[Path, str]] = field(default_factory=list)

    def skipped_note(self) -> Optional[str]:
        """One line naming the skipped files and why (None if none were)."""
        if not self.skipped:
            return None
        parts = "; ".join(f"{p.name} ({why})" for p, why in self.skipped)
        target = f"using {self.path.name}" if self.path is not None else "none is usable"
        return (f"note: skipped broken checkpoint(s) in {self.skipped[0][0].parent}: {parts}; "
                f"{target} (move the broken files out to silence this)")


def _reason(err: UsageError) -> str:
    text = str(err)
    inner = re.search(r"\((.*)\); pass another", text)
    return inner.group(1) if inner else text


def newest_usable_checkpoint(checkpoint_dir: Path) -> FoundCheckpoint:
    """The newest checkpoint of a folder that reads and holds finite weights.

    Broken files (unreadable, truncated, not a Lightning checkpoint, NaN
    weights) are skipped and listed; nothing is moved or deleted.
    """
    found = FoundCheckpoint()
    for path in checkpoint_files(checkpoint_dir):
        try:
            loaded = read_checkpoint(path)
        except UsageError as err:
            found.skipped.append((path, _reason(err)))
            continue
        problem = checkpoint_problem(loaded)
        if problem is not None:
            found.skipped.append((path, problem))
            continue
        found.path, found.loaded = path, loaded
        break
    return found


def best_checkpoint_path(checkpoint_dir: Path, loaded_last: Any = None) -> Optional[Path]:
    """The run's best checkpoint by ``validation_loss`` (``--ckpt best``).

    Taken from the state of the monitoring checkpoint callback stored in a
    checkpoint of the run (``last.ckpt`` knows the best path; it is looked up
    in ``checkpoint_dir`` by name, so a moved run folder still works); else
    the only ``epoch=*.ckpt`` file of the folder.

    Args:
        checkpoint_dir: ``DEFAULT_ROOT_DIR/checkpoints``.
        loaded_last: ``last.ckpt`` already loaded, if the caller has it.
    """
    if loaded_last is None and (checkpoint_dir / "last.ckpt").is_file():
        try:
            loaded_last = read_checkpoint(checkpoint_dir / "last.ckpt")
        except UsageError:
            loaded_last = None
    states = (loaded_last or {}).get("callbacks") or {} if isinstance(loaded_last, dict) else {}
    for key, state in states.items():
        if not (isinstance(state, dict) and state.get("monitor") == "validation_loss"):
            continue
        best = state.get("best_model_path")
        if best:
            candidate = checkpoint_dir / Path(best).name
            if candidate.is_file():
                return candidate
    epochs = [p for p in checkpoint_dir.glob("epoch=*.ckpt") if p.is_file()]
    return epochs[0] if len(epochs) == 1 else None


def remove_partial_files(checkpoint_dir: Path) -> List[Path]:
    """Delete temporary checkpoint files that a killed process left behind.

    :class:`~fastmri_growth.pl_modules.checkpoint_io.AtomicCheckpointIO`
    writes ``.NAME.PID.partial`` beside each checkpoint and renames it when
    complete; a kill -9 during the write leaves it. Files of a process that
    is still running are kept.

    Returns:
        The removed files.
    """
    removed = []
    if not checkpoint_dir.is_dir():
        return removed
    for p in checkpoint_dir.glob(".*.partial"):
        m = re.match(r"^\..+\.(\d+)\.partial$", p.name)
        if m is None or not p.is_file():
            continue
        pid = int(m.group(1))
        if pid != os.getpid() and _pid_alive(pid):
            continue
        p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def next_epoch(ckpt: Any) -> int:
    """The epoch a run resumed from ``ckpt`` starts with.

    The run's checkpoints are written at the end of an epoch's validation,
    so training resumes with the following epoch (Lightning reads the loop
    state the same way); a checkpoint of a mid-epoch validation resumes in
    its own epoch.
    """
    epoch = int(ckpt.get("epoch", 0)) if isinstance(ckpt, dict) else 0
    try:
        progress = ckpt["loops"]["fit_loop"]["epoch_loop.batch_progress"]
        finished = bool(progress.get("is_last_batch", True))
    except (KeyError, TypeError):
        finished = True
    return epoch + 1 if finished else epoch


def checkpoint_callbacks(checkpoint_dir: Path) -> list:
    """fastMRI's checkpointing: the best epoch by ``validation_loss``, plus ``last.ckpt``.

    Two callbacks, because Lightning 2.6's ``save_last=True`` rewrites
    ``last.ckpt`` only in epochs that also produced a new top-k checkpoint:
    an epoch that is not the best (often the one right after growth) would
    be missing from it, and resuming would repeat epochs. The second
    callback has no monitor and rewrites ``last.ckpt`` after every epoch, validated or
    not (:class:`~fastmri_growth.pl_modules.checkpoint_io.EveryEpochCheckpoint`).
    The first is a :class:`~fastmri_growth.pl_modules.checkpoint_io.TopKCheckpoint`:
    ``epoch=*.ckpt`` files that are no longer the best (left by a resumed or
    interrupted run) are deleted, so top-1 means one file.

    Args:
        checkpoint_dir: Folder for both (``DEFAULT_ROOT_DIR/checkpoints``).
    """

    from fastmri_growth.pl_modules.checkpoint_io import EveryEpochCheckpoint, TopKCheckpoint

    best = TopKCheckpoint(
        dirpath=checkpoint_dir,
        save_top_k=1,
        verbose=True,
        monitor="validation_loss",
        mode="min",
    )
    last = EveryEpochCheckpoint(  # also in epochs without validation
        dirpath=checkpoint_dir,
        filename="last",
        save_top_k=1,
        monitor=None,
        # Overwrite last.ckpt in place, also after a run folder was moved
        # (Lightning then forgets the old paths and would write last-v1.ckpt).
        enable_version_counter=False,
    )
    return [best, last]


# ---------------------------------------------------------------------------
# --init-from: weights of a trained network as the starting point
# ---------------------------------------------------------------------------

@dataclass
class InitWeights:
    """The weights ``--init-from`` starts a run from.

    Attributes:
        path: The file.
        state_dict: The network's weights, keys without the module prefix
            (``down_sample_layers.0...`` for a U-Net, ``cascades.0...`` for a VarNet).
        architecture: The constructor arguments they imply (``chans``,
            ``num_pool_layers``, ... or ``num_cascades``, ``pools``, ...).
    """

    path: Path
    state_dict: Dict[str, Any]
    architecture: Dict[str, int]


def read_init_weights(path: Path, model_type: str) -> InitWeights:
    """Read the network weights of ``--init-from``.

    Accepts a Lightning checkpoint (fastMRI's ``UnetModule`` / ``VarNetModule``
    or this package's modules: the ``unet.`` / ``varnet.`` weights are taken)
    or a bare state dict such as fastMRI's public pretrained files.

    Args:
        path: The file.
        model_type: The run's ``--model-type`` (which network to look for).

    Raises:
        UsageError: the file is missing or unreadable, holds no such network,
            or its weights are not finite.
    """
    import torch

    spec = MODEL_TYPES[model_type]
    kind = "VarNet" if spec.kspace else "U-Net"
    if not Path(path).is_file():
        raise UsageError(f"--init-from {path} is not a file; pass a checkpoint or state dict file")
    try:
        obj = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    except Exception:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as err:
            first = str(err).splitlines()[0] if str(err) else ""
            raise UsageError(f"cannot read --init-from {path} ({type(err).__name__}: {first}); "
                             "pass a checkpoint (.ckpt) or a torch.save'd state dict") from None
    state = obj.get("state_dict") if isinstance(obj, dict) and isinstance(
        obj.get("state_dict"), Mapping) else obj
    if not isinstance(state, Mapping) or not any(torch.is_tensor(v) for v in state.values()):
        raise UsageError(f"--init-from {path} holds no state dict (a mapping of weight tensors); "
                         "pass a checkpoint (.ckpt) or a torch.save'd state dict")
    prefix = spec.state_prefix
    if any(str(k).startswith(prefix) for k in state):
        state = {str(k)[len(prefix):]: v for k, v in state.items() if str(k).startswith(prefix)}
    else:
        state = {str(k): v for k, v in state.items()}
    try:
        if spec.kspace:
            from fastmri_growth.models.dynamic_varnet import varnet_architecture_from_state_dict

            arch = varnet_architecture_from_state_dict(state)
            architecture = {k: int(arch[k]) for k in spec.architecture_args}
        else:
            from fastmri_growth.models.unet_spec import architecture_from_state_dict

            arch = architecture_from_state_dict(state)
            architecture = {k: int(arch[k]) for k in ("in_chans", "out_chans", "num_pool_layers")}
            architecture["chans"] = int(arch["widths"]["down_0"]["conv1_out"])
    except (ValueError, KeyError, TypeError, IndexError) as err:
        msg = " ".join(str(err).split())
        raise UsageError(f"--init-from {path} holds no {kind} for --model-type {model_type} "
                         f"({msg})") from None
    if not spec.grows:
        _refuse_grown_weights(path, model_type, arch)
    bad = nonfinite_tensors(state)
    if bad:
        raise UsageError(f"--init-from {path}: {len(bad)} weight tensor(s) hold NaN or Inf "
                         f"(first: {bad[0]}); pass weights of a run that did not diverge")
    return InitWeights(Path(path), dict(state), architecture)


def _refuse_grown_weights(path: Path, model_type: str, arch: Dict[str, Any]) -> None:
    """Grown widths in ``--init-from`` for a fixed-width ``--model-type``: name the growing one.

    fastMRI's Unet (and a VarNet's cascades) double ``chans`` at every pool;
    a grown network's widths do not, and loading them would fail with
    torch's list of size mismatches.

    Raises:
        UsageError: naming the first block whose width differs and the growing model type.
    """
    from fastmri_growth.models.unet_spec import default_widths

    unets = arch.get("unets") if isinstance(arch.get("unets"), dict) else {"": arch}
    for net, unet in unets.items():
        widths = unet.get("widths") or {}
        if not widths or "down_0" not in widths:
            continue
        expected = default_widths(int(widths["down_0"]["conv1_out"]),
                                  int(unet["num_pool_layers"]))
        for block, want in expected.items():
            have = widths.get(block, {})
            for conv, n in want.items():
                if have.get(conv) != n:
                    where = f"{net} {block}" if net else block
                    grower = MODEL_TYPES[model_type].growing_version or "a growing model type"
                    raise UsageError(
                        f"--init-from {path} holds a grown network ({where} {conv} has "
                        f"{have.get(conv)} filters; --model-type {model_type} builds "
                        f"{n} there from chans={widths['down_0']['conv1_out']}); pass "
                        f"--model-type {grower}, which takes grown widths")


def _load_error(err: BaseException) -> str:
    """torch's load_state_dict error, shortened to one line that ends on a whole word."""
    msg = " ".join(str(err).split())
    mismatches = re.findall(r"size mismatch for ([\w.]+): copying a param with shape "
                            r"torch\.Size\(\[([\d, ]*)\]\) from checkpoint, the shape in current "
                            r"model is torch\.Size\(\[([\d, ]*)\]\)", msg)
    if mismatches:
        key, have, want = mismatches[0]
        return (f"{len(mismatches)} tensor(s) of other shapes, first {key}: [{have}] in the "
                f"file, [{want}] in the network")
    if len(msg) > 300:
        msg = msg[:300].rsplit(" ", 1)[0] + " ..."
    return msg


def apply_init_weights(module: Any, init: InitWeights, model_type: str) -> None:
    """Load ``--init-from`` weights into a freshly built module's network.

    A growing network first takes the file's widths (a grown state dict
    works too); a budget schedule's targets are then recomputed from them.

    Raises:
        UsageError: the weights do not load into the network.
    """
    net = getattr(module, MODEL_TYPES[model_type].network_attr)
    try:
        if hasattr(net, "resize_from_state_dict"):
            net.resize_from_state_dict(init.state_dict)
        net.load_state_dict(init.state_dict, strict=True)
        callback = getattr(module, "growth_callback", None)
        if callback is not None and callback.schedule.kind == "budget":
            callback.schedule.state.pop("budget", None)
            callback.prepare(net)
    except (ValueError, RuntimeError, KeyError) as err:
        raise UsageError(f"cannot start from --init-from {init.path} ({_load_error(err)})") \
            from None
