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
this way (same constructors). :class:`FastMriDataModule` is fastMRI's data
module with the traps that bite on Lightning 2 or on a command line removed
(see its docstring).
"""
from __future__ import annotations

import argparse
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Callable, List, Optional, Union

import numpy as np
import torch
from fastmri import pl_modules as fastmri_pl
from fastmri.data import CombinedSliceDataset, SliceDataset, VolumeSampler
from fastmri.pl_modules.data_module import worker_init_fn
from fastmri.pl_modules.mri_module import MriModule

__all__ = [
    "FastMriDataModule",
    "LEGACY_HOOKS",
    "Lightning2MriMixin",
    "UnetModule",
    "VarNetModule",
    "str2bool",
]

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
# argparse helpers
# ---------------------------------------------------------------------------

_TRUE = ("true", "yes", "y", "1", "on")
_FALSE = ("false", "no", "n", "0", "off")


def str2bool(value: Union[str, bool]) -> bool:
    """Parses a command-line boolean.

    fastMRI declares boolean flags with ``type=bool``, for which any
    non-empty string, ``"False"`` included, is True.

    Args:
        value: ``true/false``, ``yes/no``, ``y/n``, ``1/0`` or ``on/off``
            (any case), or a bool.

    Raises:
        argparse.ArgumentTypeError: ``value`` is none of these; argparse turns
            it into a one-line usage error (exit status 2).
    """
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise argparse.ArgumentTypeError(
        f"expected a boolean ({'/'.join(_TRUE)} or {'/'.join(_FALSE)}), got {value!r}"
    )


def _redeclare(parser: argparse.ArgumentParser, *declarations) -> argparse.ArgumentParser:
    """A parser with ``parser``'s arguments, some of them declared anew.

    Args:
        parser: The parser to copy (its actions are shared, not duplicated).
        *declarations: ``(option_strings, kwargs)`` pairs for ``add_argument``;
            each replaces the existing option of the same name.
    """
    new = argparse.ArgumentParser(parents=[parser], add_help=False, conflict_handler="resolve")
    for option_strings, kwargs in declarations:
        new.add_argument(*option_strings, **kwargs)
    return new


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
        for action in parser._actions:
            if action.dest == "out_chans":
                # fastMRI's help says "chanenls".
                action.help = "Number of U-Net output channels"
        return parser


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
        return _redeclare(
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


# ---------------------------------------------------------------------------
# fastMRI's data module, without its traps
# ---------------------------------------------------------------------------


class _DistributedVolumeSampler(VolumeSampler, torch.utils.data.DistributedSampler):
    """fastMRI's VolumeSampler, recognised by Lightning as a distributed sampler.

    With ``Trainer(use_distributed_sampler=True)`` (Lightning 2's default)
    Lightning wraps every sampler that is not a ``DistributedSampler`` in a
    ``DistributedSamplerWrapper``, which would split each rank's volumes
    again. Lightning leaves ``DistributedSampler`` instances alone, so this
    class keeps whole volumes on one rank whatever that flag says. All
    behaviour comes from VolumeSampler (its ``__init__`` sets every attribute
    DistributedSampler has, except ``drop_last``).
    """

    def __init__(self, dataset, **kwargs: Any) -> None:
        VolumeSampler.__init__(self, dataset, **kwargs)
        self.drop_last = False
        if not self.indices:
            # VolumeSampler would fail later with a ZeroDivisionError, and a
            # rank without batches would stall the others' metric reduction.
            raise ValueError(
                f"{len(self.all_volume_names)} volume(s) for {self.num_replicas} processes: "
                f"process {self.rank} gets no whole volume to validate or test; "
                "use at most as many processes as volumes"
            )


class FastMriDataModule(fastmri_pl.FastMriDataModule):
    """fastMRI's FastMriDataModule, fixed for Lightning 2 and command lines.

    Same constructor as ``fastmri.pl_modules.FastMriDataModule`` (same
    arguments, order and defaults) except as listed; same datasets, transforms
    and loaders otherwise. Changes, and why:

    - ``distributed_sampler`` defaults to ``None``: decided when the loaders
      are built, True when ``torch.distributed`` runs with more than one
      process. fastMRI defaults to False, and its demo sets it from
      ``--accelerator in ("ddp", "ddp_cpu")``, which no Lightning 2 run
      matches; then Lightning's own ``DistributedSampler`` splits volumes
      across ranks, so per-volume validation metrics are computed on volume
      fragments and test mode writes each volume's file from several ranks.
      Pass True/False to force it.
    - Validation and test use fastMRI's VolumeSampler as before, but as a
      ``DistributedSampler`` subclass, so Lightning 2's default
      ``use_distributed_sampler=True`` no longer re-splits it.
      ``use_distributed_sampler=False`` remains the clearest Trainer setting.
    - ``test_split="challenge"``: fastMRI raises ``UnboundLocalError``
      (``raw_sample_filter`` is only set for "train", "val" and "test"); here
      the challenge split uses the test sample rates and ``test_filter``.
    - ``prepare_data`` warms the dataset cache only for split folders that
      exist and that this module reads (``<challenge>_<test_split>`` or
      ``test_path``, not always ``<challenge>_test``): fastMRI's raises
      ``FileNotFoundError`` for a root without a test folder, even to train.
    - ``dataset_cache_file`` (new, last argument): where SliceDataset caches
      metadata. fastMRI always uses ``dataset_cache.pkl`` in the working
      directory, keyed by folder path, which goes stale when a folder's
      files change.
    - ``add_data_specific_args``: ``--use_dataset_cache_file`` and
      ``--combine_train_val`` parse ``true/false`` (fastMRI's ``type=bool``
      reads "False" as True); given without a value they mean true.

    Left as fastMRI has it: with the cache on, SliceDataset ignores
    ``raw_sample_filter`` for a folder already in the cache file (the cache
    stores whichever sample list was written first).
    """

    def __init__(
        self,
        data_path: Path,
        challenge: str,
        train_transform: Callable,
        val_transform: Callable,
        test_transform: Callable,
        combine_train_val: bool = False,
        test_split: str = "test",
        test_path: Optional[Path] = None,
        sample_rate: Optional[float] = None,
        val_sample_rate: Optional[float] = None,
        test_sample_rate: Optional[float] = None,
        volume_sample_rate: Optional[float] = None,
        val_volume_sample_rate: Optional[float] = None,
        test_volume_sample_rate: Optional[float] = None,
        train_filter: Optional[Callable] = None,
        val_filter: Optional[Callable] = None,
        test_filter: Optional[Callable] = None,
        use_dataset_cache_file: bool = True,
        batch_size: int = 1,
        num_workers: int = 4,
        distributed_sampler: Optional[bool] = None,
        dataset_cache_file: Union[str, Path] = "dataset_cache.pkl",
    ):
        """
        Args:
            data_path: Root holding ``<challenge>_train``, ``<challenge>_val``, ...
            challenge: "singlecoil" or "multicoil".
            train_transform: Transform for the training split.
            val_transform: Transform for the validation split.
            test_transform: Transform for the test split.
            combine_train_val: Train on train and val together.
            test_split: "test", "challenge" or "val": the folder test mode reads.
            test_path: A test folder that replaces ``data_path``/``test_split``.
            sample_rate: Fraction of training slices (not with volume_sample_rate).
            val_sample_rate: Same for validation.
            test_sample_rate: Same for test/challenge.
            volume_sample_rate: Fraction of training volumes.
            val_volume_sample_rate: Same for validation.
            test_volume_sample_rate: Same for test/challenge.
            train_filter: Keeps a training raw sample when it returns True.
            val_filter: Same for validation.
            test_filter: Same for test/challenge.
            use_dataset_cache_file: Cache dataset metadata in
                ``dataset_cache_file``.
            batch_size: Batch size.
            num_workers: DataLoader worker processes.
            distributed_sampler: Shard the data over processes (training:
                DistributedSampler; validation/test: whole volumes per rank).
                None: shard when torch.distributed runs with more than one
                process.
            dataset_cache_file: The metadata cache file.
        """
        super().__init__(
            data_path=data_path,
            challenge=challenge,
            train_transform=train_transform,
            val_transform=val_transform,
            test_transform=test_transform,
            combine_train_val=combine_train_val,
            test_split=test_split,
            test_path=test_path,
            sample_rate=sample_rate,
            val_sample_rate=val_sample_rate,
            test_sample_rate=test_sample_rate,
            volume_sample_rate=volume_sample_rate,
            val_volume_sample_rate=val_volume_sample_rate,
            test_volume_sample_rate=test_volume_sample_rate,
            train_filter=train_filter,
            val_filter=val_filter,
            test_filter=test_filter,
            use_dataset_cache_file=use_dataset_cache_file,
            batch_size=batch_size,
            num_workers=num_workers,
            distributed_sampler=distributed_sampler,
        )
        if test_split not in ("val", "test", "challenge"):
            raise ValueError(
                f"test_split must be one of 'val', 'test', 'challenge'; got {test_split!r}"
            )
        # fastMRI joins these with "/", so a str from a caller would fail late.
        self.data_path = None if data_path is None else Path(data_path)
        self.test_path = None if test_path is None else Path(test_path)
        self.dataset_cache_file = Path(dataset_cache_file)

    def _shard(self) -> bool:
        if self.distributed_sampler is not None:
            return bool(self.distributed_sampler)
        return (
            torch.distributed.is_available()
            and torch.distributed.is_initialized()
            and torch.distributed.get_world_size() > 1
        )

    def _split_settings(self, data_partition: str):
        """(sample_rate, volume_sample_rate, filter) of a split."""
        if data_partition == "train":
            return self.sample_rate, self.volume_sample_rate, self.train_filter
        if data_partition == "val":
            return self.val_sample_rate, self.val_volume_sample_rate, self.val_filter
        if data_partition in ("test", "challenge"):
            return self.test_sample_rate, self.test_volume_sample_rate, self.test_filter
        raise ValueError(
            f"unknown data partition {data_partition!r}; choose one of "
            "'train', 'val', 'test', 'challenge'"
        )

    def _split_root(self, data_partition: str) -> Optional[Path]:
        """The folder of a split; None without ``data_path`` (test_path runs)."""
        if data_partition in ("test", "challenge") and self.test_path is not None:
            return self.test_path
        if self.data_path is None:
            return None
        return self.data_path / f"{self.challenge}_{data_partition}"

    def _create_data_loader(
        self,
        data_transform: Callable,
        data_partition: str,
        sample_rate: Optional[float] = None,
        volume_sample_rate: Optional[float] = None,
    ) -> torch.utils.data.DataLoader:
        is_train = data_partition == "train"
        if self._split_root(data_partition) is None:
            raise ValueError(
                f"the {data_partition!r} loader needs data_path (got None); "
                "only test mode with test_path runs without it"
            )
        default_rate, default_volume_rate, raw_sample_filter = self._split_settings(data_partition)
        sample_rate = default_rate if sample_rate is None else sample_rate
        volume_sample_rate = default_volume_rate if volume_sample_rate is None else volume_sample_rate

        dataset: Union[SliceDataset, CombinedSliceDataset]
        if is_train and self.combine_train_val:
            # Both folders with the same settings, as fastMRI does.
            rates = None if sample_rate is None else [sample_rate] * 2
            volume_rates = None if volume_sample_rate is None else [volume_sample_rate] * 2
            dataset = CombinedSliceDataset(
                roots=[self._split_root("train"), self._split_root("val")],
                transforms=[data_transform] * 2,
                challenges=[self.challenge] * 2,
                sample_rates=rates,
                volume_sample_rates=volume_rates,
                use_dataset_cache=self.use_dataset_cache_file,
                dataset_cache_file=self.dataset_cache_file,
                raw_sample_filter=raw_sample_filter,
            )
        else:
            dataset = SliceDataset(
                root=self._split_root(data_partition),
                transform=data_transform,
                sample_rate=sample_rate,
                volume_sample_rate=volume_sample_rate,
                challenge=self.challenge,
                use_dataset_cache=self.use_dataset_cache_file,
                dataset_cache_file=self.dataset_cache_file,
                raw_sample_filter=raw_sample_filter,
            )

        sampler = None
        if self._shard():
            if is_train:
                sampler = torch.utils.data.DistributedSampler(dataset)
            else:
                # Whole volumes per rank: MriModule's per-volume metrics and
                # reconstructions need every slice of a volume on one rank.
                sampler = _DistributedVolumeSampler(dataset, shuffle=False)

        return torch.utils.data.DataLoader(
            dataset=dataset,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            worker_init_fn=worker_init_fn,
            sampler=sampler,
            shuffle=is_train if sampler is None else False,
        )

    def prepare_data(self) -> None:
        """Writes the metadata cache once (on rank 0) for the folders in use."""
        if not self.use_dataset_cache_file:
            return
        roots = [self._split_root("train"), self._split_root("val"), self._split_root(self.test_split)]
        transforms = [self.train_transform, self.val_transform, self.test_transform]
        for root, transform in zip(roots, transforms):
            if root is None or not root.is_dir():
                # The loader that needs it raises FileNotFoundError naming it.
                continue
            SliceDataset(
                root=root,
                transform=transform,
                challenge=self.challenge,
                use_dataset_cache=True,
                dataset_cache_file=self.dataset_cache_file,
            )

    @staticmethod
    def add_data_specific_args(parent_parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        """fastMRI's data flags, with real boolean parsing.

        ``--use_dataset_cache_file`` and ``--combine_train_val`` take
        ``true/false`` (see :func:`str2bool`; alone, they mean true).
        """
        parser = fastmri_pl.FastMriDataModule.add_data_specific_args(parent_parser)
        return _redeclare(
            parser,
            (
                ("--use_dataset_cache_file",),
                dict(
                    default=True,
                    type=str2bool,
                    nargs="?",
                    const=True,
                    metavar="BOOL",
                    help="Whether to cache dataset metadata in a pkl file (true/false)",
                ),
            ),
            (
                ("--combine_train_val",),
                dict(
                    default=False,
                    type=str2bool,
                    nargs="?",
                    const=True,
                    metavar="BOOL",
                    help="Whether to combine train and val splits for training (true/false)",
                ),
            ),
        )
