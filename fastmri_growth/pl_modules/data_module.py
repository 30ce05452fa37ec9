"""fastMRI's FastMriDataModule, fixed for Lightning 2 and command lines (see the class)."""
from __future__ import annotations

import argparse
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

import torch
from fastmri import pl_modules as fastmri_pl
from fastmri.data import CombinedSliceDataset, SliceDataset, VolumeSampler
from fastmri.pl_modules.data_module import worker_init_fn

from fastmri_growth.flags import redeclare, str2bool

__all__ = ["DataReadError", "FastMriDataModule", "NamedErrorSliceDataset"]


class DataReadError(Exception):
    """A data file could not be read while the run went on (deleted, truncated, replaced).

    The message names the file and slice. A DataLoader worker re-raises it in
    the main process as ``DataReadError("Caught DataReadError in DataLoader
    worker ... Original Traceback ...")``; the constructor keeps only the
    original message, so the error is still one line.
    """

    def __init__(self, message: str):
        marker = f"{type(self).__name__}: "
        if "Original Traceback" in message and marker in message:
            message = message.rsplit(marker, 1)[1].strip()
        super().__init__(message)


def _read_problem(err: BaseException, dataslice: int) -> str:
    """What went wrong reading a file, in a few words (h5py's messages are long)."""
    if isinstance(err, FileNotFoundError):
        return "the file no longer exists"
    text = " ".join(str(err).split())
    if "truncated file" in text:
        return f"the file is truncated ({text.split('(', 1)[-1].rstrip(')')})"
    if isinstance(err, IndexError):
        return f"slice {dataslice} is beyond the file's slices ({text})"
    return f"{type(err).__name__}: {text}"


class NamedErrorSliceDataset(SliceDataset):
    """fastMRI's ``SliceDataset`` whose read errors name the file and slice (:class:`DataReadError`).

    ``__getitem__`` is fastMRI 0.3.0's, with the HDF5 reads inside a
    ``try``: a file deleted, truncated or replaced by one with fewer slices
    after the slice list was built raised h5py's ``OSError`` or
    ``IndexError`` from inside a DataLoader worker, which does not say which
    file. Errors of the transform are left as they are.
    """

    def __getitem__(self, i: int):
        import h5py
        import numpy as np

        fname, dataslice, metadata = self.raw_samples[i]
        try:
            with h5py.File(fname, "r") as hf:
                kspace = hf["kspace"][dataslice]
                mask = np.asarray(hf["mask"]) if "mask" in hf else None
                target = hf[self.recons_key][dataslice] if self.recons_key in hf else None
                attrs = dict(hf.attrs)
                attrs.update(metadata)
        except (OSError, KeyError, IndexError, ValueError) as err:
            raise DataReadError(
                f"cannot read slice {dataslice} of data file {fname}: "
                f"{_read_problem(err, dataslice)}; it changed after the run listed it "
                "(deleted, truncated or replaced): restore it, then run the same command "
                "again (training resumes from the newest checkpoint)") from None
        if self.transform is None:
            return (kspace, mask, target, attrs, fname.name, dataslice)
        return self.transform(kspace, mask, target, attrs, fname.name, dataslice)


@contextmanager
def dataset_cache_lock(cache_file: Union[str, Path], use_cache: bool) -> Iterator[None]:
    """Hold an exclusive lock on fastMRI's dataset cache while a dataset reads or writes it.

    fastMRI's ``SliceDataset`` reads the pickled cache and rewrites it in
    place (``open(..., "wb")``), so a second process building a dataset at
    the same moment (DDP ranks on one node, runs started together from one
    folder) can read a half-written file: ``EOFError: Ran out of input``,
    or lose the other's entry. The lock (``flock`` on ``CACHE.lock`` beside
    the cache) makes the read-scan-write of each process whole. A cache that
    does not unpickle (a write killed half-way) is refused with its path.

    Args:
        cache_file: fastMRI's ``dataset_cache_file``.
        use_cache: The dataset's ``use_dataset_cache`` (False: no lock).

    Raises:
        ValueError: the cache file exists but cannot be read.
    """
    if not use_cache:
        yield
        return
    import fcntl
    import pickle

    cache = Path(cache_file)
    with open(cache.with_name(cache.name + ".lock"), "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if cache.is_file():
                try:
                    with open(cache, "rb") as f:
                        pickle.load(f)
                except Exception as err:
                    raise ValueError(
                        f"cannot read the dataset cache {cache.resolve()} "
                        f"({type(err).__name__}: a write was cut short?); delete it (it is "
                        "rebuilt from the data files) or pass use_dataset_cache_file=False"
                    ) from None
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


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
    - The datasets are :class:`NamedErrorSliceDataset`: a data file deleted
      or truncated while the run goes on raises :class:`DataReadError`
      naming the file and slice, not h5py's error from a worker.
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
        # Lightning writes these into every checkpoint ("datamodule_hyper_parameters"):
        # resume, test mode and the leaderboard check a checkpoint's challenge against theirs.
        self.save_hyperparameters({"challenge": challenge})

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
        lock = dataset_cache_lock(self.dataset_cache_file, self.use_dataset_cache_file)
        if is_train and self.combine_train_val:
            # Both folders with the same settings, as fastMRI does.
            rates = None if sample_rate is None else [sample_rate] * 2
            volume_rates = None if volume_sample_rate is None else [volume_sample_rate] * 2
            with lock:
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
            for part in dataset.datasets:
                # Built by fastMRI as plain SliceDatasets; same state, named read errors.
                part.__class__ = NamedErrorSliceDataset
        else:
            with lock:
                dataset = NamedErrorSliceDataset(
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
            with dataset_cache_lock(self.dataset_cache_file, True):
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
        return redeclare(
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
