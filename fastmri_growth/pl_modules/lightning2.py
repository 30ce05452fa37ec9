"""fastMRI's Lightning modules on pytorch-lightning 2.

fastMRI 0.3.0 (``fastmri.pl_modules``) was written for pytorch-lightning 1.x.
On Lightning 2 its ``MriModule`` cannot train, validate or test:

- ``validation_epoch_end`` and ``test_epoch_end`` exist on the class, and
  Lightning 2 raises ``NotImplementedError`` for any model on which they are
  merely callable (``trainer/configuration_validator.py``).
- ``validation_step_end`` is never called any more, so the per-slice metrics
  it computes would silently vanish.
- ``self.trainer.val_dataloaders`` is a bare ``DataLoader`` when there is one
  loader, so ``val_dataloaders[0]`` raises.
- ``log_image`` calls ``self.logger.experiment.add_image``, which crashes with
  a ``CSVLogger`` or with no logger at all.

:class:`Lightning2MriMixin` fixes these without editing fastMRI: put it before
``MriModule`` (or any subclass of it) in the bases. It turns the removed hooks
into ``None``, collects the step outputs in ``on_validation_batch_end`` /
``on_test_batch_end`` and hands them to fastMRI's own
``validation_step_end`` / ``validation_epoch_end`` / ``test_epoch_end`` code,
so ``validation_loss`` and ``val_metrics/{nmse,ssim,psnr}`` are computed and
reduced across processes exactly as fastMRI defines them.

:class:`UnetModule` and :class:`VarNetModule` are fastMRI's modules ported
this way (same constructors). fastMRI's data module, fixed the same way, is
:class:`fastmri_growth.pl_modules.data_module.FastMriDataModule`.
"""
from __future__ import annotations

import argparse
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, List

import numpy as np
import torch
from fastmri import pl_modules as fastmri_pl
from fastmri.pl_modules.mri_module import MriModule

from fastmri_growth.flags import redeclare, str2bool

__all__ = ["LEGACY_HOOKS", "Lightning2MriMixin", "UnetModule", "VarNetModule"]

# Lightning 1.x hooks that Lightning 2 either rejects (the *_epoch_end ones)
# or silently never calls (the *_step_end ones).
LEGACY_HOOKS = (
    "training_step_end",
    "training_epoch_end",
    "validation_step_end",
    "validation_epoch_end",
    "test_step_end",
    "test_epoch_end",
)

# A fastMRI tree with the Lightning 2 port applied (patches/0001) defines the
# Lightning 2 hooks itself and no longer has the 1.x methods the mixin calls;
# the mixin then leaves every hook to MriModule.
FASTMRI_PORTED = "on_validation_epoch_end" in vars(MriModule)

# MriModule logs values that DistributedMetricSum has already summed over all
# processes, so every rank logs the same number and sync_dist would only add a
# redundant all-reduce. Lightning 2 still suggests sync_dist for any
# epoch-level value logged under DDP; silence that advice for these keys only.
warnings.filterwarnings(
    "ignore",
    message=r"It is recommended to use `self\.log\('(validation_loss|val_metrics/(nmse|ssim|psnr))'",
)


class Lightning2MriMixin:
    """Runs a fastMRI ``MriModule`` subclass on pytorch-lightning 2.

    Use it as the first base, before the fastMRI module::

        class MyModule(Lightning2MriMixin, fastmri.pl_modules.MriModule):
            ...

    The subclass keeps fastMRI's contract: ``validation_step`` returns a dict
    with ``batch_idx``, ``fname``, ``slice_num``, ``max_value``, ``output``
    ``(N, H, W)``, ``target`` ``(N, H, W)`` and ``val_loss``; ``test_step``
    returns ``fname``, ``slice`` and ``output`` ``(N, H, W)``. It must not
    define any of :data:`LEGACY_HOOKS` (checked when the class is created).
    Subclasses that override ``on_validation_batch_end``,
    ``on_validation_epoch_end``, ``on_test_batch_end`` or
    ``on_test_epoch_end`` must call ``super()``.

    What it does on each hook:

    - ``on_validation_batch_end``: runs ``MriModule.validation_step_end`` on
      the step output (input checks, image logging, per-slice MSE, target
      norm and SSIM) and keeps only its small per-slice result.
    - ``on_validation_epoch_end``: runs ``MriModule.validation_epoch_end`` on
      the kept results (per-volume NMSE/PSNR/SSIM, summed over processes by
      fastMRI's ``DistributedMetricSum``; logs ``validation_loss`` and
      ``val_metrics/{nmse,ssim,psnr}``), then frees them.
    - ``on_test_batch_end`` / ``on_test_epoch_end``: collect the test outputs
      and write them per volume with ``fastmri.save_reconstructions`` to
      ``<trainer.default_root_dir>/reconstructions`` (``MriModule.test_epoch_end``),
      then free them.
    """

    # Lightning 2 rejects a model on which the *_epoch_end hooks are callable
    # and never calls validation_step_end. None shadows MriModule's methods,
    # which the hooks below call explicitly.
    validation_step_end = None
    validation_epoch_end = None
    test_epoch_end = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not issubclass(cls, MriModule):
            raise TypeError(
                f"{cls.__name__} uses Lightning2MriMixin but does not derive from "
                "fastmri.pl_modules.MriModule; the mixin only ports MriModule subclasses"
            )
        for name in LEGACY_HOOKS:
            if callable(getattr(cls, name, None)):
                raise TypeError(
                    f"{cls.__name__}.{name} is a pytorch-lightning 1.x hook that "
                    "Lightning 2 rejects or never calls. Put Lightning2MriMixin before "
                    "MriModule in the bases, and move custom code to the matching "
                    "on_*_batch_end / on_*_epoch_end hook (calling super())"
                )

    # -- collected outputs --------------------------------------------------

    def _collected(self, stage: str) -> List[Any]:
        # Created lazily: a mixin __init__ would sit between the module's
        # __init__ and save_hyperparameters(), which reads the caller's frames.
        name = f"_lightning2_{stage}_outputs"
        outputs = getattr(self, name, None)
        if outputs is None:
            outputs = []
            setattr(self, name, outputs)
        return outputs

    def _take_collected(self, stage: str) -> List[Any]:
        outputs = self._collected(stage)
        setattr(self, f"_lightning2_{stage}_outputs", [])
        return outputs

    # -- validation ---------------------------------------------------------

    def _first_val_loader_length(self) -> int:
        """Batches in the first validation loader, for picking images to log.

        Lightning 2 gives ``trainer.val_dataloaders`` as the user returned
        it: a bare DataLoader, a list/tuple of them, or a dict.
        """
        loaders = self.trainer.val_dataloaders
        if isinstance(loaders, Mapping):
            loaders = list(loaders.values())
        if isinstance(loaders, Sequence):
            loaders = loaders[0] if len(loaders) > 0 else None
        try:
            return len(loaders)
        except TypeError:
            # An iterable-style loader has no length: fall back to the number
            # of batches Lightning will run.
            return int(self.trainer.num_val_batches[0])

    def on_validation_epoch_start(self) -> None:
        """Drops results left by an interrupted validation epoch."""
        super().on_validation_epoch_start()
        self._take_collected("validation")

    def on_validation_batch_end(
        self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        """Computes the per-slice metrics of one validation batch.

        Args:
            outputs: The dict returned by ``validation_step`` (see the class
                docstring for its keys).
            batch: The validation batch.
            batch_idx: Index of the batch in its loader.
            dataloader_idx: Index of the loader.
        """
        super().on_validation_batch_end(outputs, batch, batch_idx, dataloader_idx)
        if FASTMRI_PORTED:
            return
        if not isinstance(outputs, Mapping):
            raise RuntimeError(
                f"{type(self).__name__}.validation_step returned {type(outputs).__name__}; "
                "MriModule expects a dict with keys batch_idx, fname, slice_num, "
                "max_value, output, target, val_loss"
            )
        if self.val_log_indices is None:
            # MriModule picks these from val_dataloaders[0], which fails on a
            # bare DataLoader; choose them the same way, for both forms.
            self.val_log_indices = list(
                np.random.permutation(self._first_val_loader_length())[: self.num_log_images]
            )
        # fastMRI computes the metrics in numpy, which has no bfloat16: with a
        # "true" half-precision plugin the outputs arrive in half precision.
        outputs = {k: v.float() if torch.is_tensor(v) and v.is_floating_point() else v
                   for k, v in outputs.items()}
        self._collected("validation").append(MriModule.validation_step_end(self, outputs))

    def on_validation_epoch_end(self) -> None:
        """Aggregates per volume, reduces across processes, logs, frees."""
        super().on_validation_epoch_end()
        if FASTMRI_PORTED:
            return
        val_logs = self._take_collected("validation")
        if val_logs:
            MriModule.validation_epoch_end(self, val_logs)

    def log_image(self, name: str, image: torch.Tensor) -> None:
        """Logs a ``(1, H, W)`` image to every logger that can show images.

        MriModule calls ``self.logger.experiment.add_image``, which crashes
        with a CSVLogger or no logger; here loggers whose experiment has no
        ``add_image`` are skipped, and with several loggers (TensorBoard plus
        CSV) the image still reaches TensorBoard.
        """
        for logger in self.loggers:
            add_image = getattr(logger.experiment, "add_image", None)
            if callable(add_image):
                add_image(name, image, global_step=self.global_step)

    # -- test ---------------------------------------------------------------

    def on_test_epoch_start(self) -> None:
        """Drops outputs left by an interrupted test epoch."""
        super().on_test_epoch_start()
        self._take_collected("test")

    def on_test_batch_end(
        self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        """Keeps one test batch's reconstructions, as numpy on the CPU.

        Args:
            outputs: The dict returned by ``test_step``: ``fname``, ``slice``
                and ``output`` ``(N, H, W)``.
            batch: The test batch.
            batch_idx: Index of the batch in its loader.
            dataloader_idx: Index of the loader.
        """
        super().on_test_batch_end(outputs, batch, batch_idx, dataloader_idx)
        if FASTMRI_PORTED:
            return
        if not isinstance(outputs, Mapping) or not {"fname", "slice", "output"} <= set(outputs):
            raise RuntimeError(
                f"{type(self).__name__}.test_step must return a dict with keys "
                f"fname, slice, output; got {outputs!r:.200}"
            )
        output = outputs["output"]
        if isinstance(output, torch.Tensor):
            # Keeping device tensors for the whole test set would hold GPU memory.
            output = output.detach().float().cpu().numpy()
        self._collected("test").append({**outputs, "output": output})

    def on_test_epoch_end(self) -> None:
        """Writes one ``reconstruction`` file per volume, then frees the outputs."""
        super().on_test_epoch_end()
        if FASTMRI_PORTED:
            return
        test_logs = self._take_collected("test")
        if test_logs:
            MriModule.test_epoch_end(self, test_logs)


# ---------------------------------------------------------------------------
# fastMRI's modules on Lightning 2
# ---------------------------------------------------------------------------


class UnetModule(Lightning2MriMixin, fastmri_pl.UnetModule):
    """fastMRI's U-Net training module on pytorch-lightning 2.

    Same constructor, steps and optimizer as ``fastmri.pl_modules.UnetModule``
    (RMSprop, StepLR, L1 loss on normalised images; ``self.unet`` is a
    ``fastmri.models.Unet`` taking ``(N, 1, H, W)``), with the Lightning 2
    hooks of :class:`Lightning2MriMixin`.
    """

    @staticmethod
    def add_model_specific_args(parent_parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        """fastMRI's U-Net flags, with ``--chans`` defaulting to 32.

        fastMRI's parser says 1 where the constructor says 32; its demo hides
        that with ``set_defaults``. Here the flag and the constructor agree.
        """
        parser = fastmri_pl.UnetModule.add_model_specific_args(parent_parser)
        parser.set_defaults(chans=32)
        # fastMRI's help says "chanenls".
        return redeclare(parser, (("--out_chans",), dict(
            default=1, type=int, help="Number of U-Net output channels")))


class VarNetModule(Lightning2MriMixin, fastmri_pl.VarNetModule):
    """fastMRI's end-to-end VarNet training module on pytorch-lightning 2.

    Same constructor, steps and optimizer as ``fastmri.pl_modules.VarNetModule``
    (Adam, StepLR, SSIM loss; multicoil k-space ``(N, coils, H, W, 2)`` in,
    ``(N, H, W)`` out), with the Lightning 2 hooks of
    :class:`Lightning2MriMixin`.
    """

    @staticmethod
    def add_model_specific_args(parent_parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        """fastMRI's VarNet flags, with ``--sens_chans`` parsed as an int.

        fastMRI declares it ``type=float``; a float channel count then makes
        the sensitivity U-Net's ``Conv2d`` raise.
        """
        parser = fastmri_pl.VarNetModule.add_model_specific_args(parent_parser)
        return redeclare(
            parser,
            (
                ("--sens_chans",),
                dict(
                    default=8,
                    type=int,
                    help="Number of channels for sense map estimation U-Net in VarNet",
                ),
            ),
        )
