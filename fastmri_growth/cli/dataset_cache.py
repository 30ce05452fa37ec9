"""fastMRI's dataset cache file, kept in step with the data folders it lists."""
from __future__ import annotations

from pathlib import Path
from typing import Any, List

from fastmri_growth.cli.common import UsageError

# fastMRI's SliceDataset cache: relative, so it lives in the working directory.
DATASET_CACHE_FILE = Path("dataset_cache.pkl")


def _cached_folder_is_stale(folder: Path, samples: Any, cache_mtime_ns: int) -> bool:
    """Whether a cache entry no longer describes ``folder``.

    Stale when the folder is gone, its files are not the cached ones, or one
    of them was written after the cache (e.g. regenerated with fewer slices).
    """
    if not folder.is_dir():
        return True
    files = [p for p in folder.iterdir() if p.is_file()]
    try:
        cached = {Path(sample[0]).name for sample in samples}
    except (TypeError, IndexError):
        return True
    if {p.name for p in files} != cached:
        return True
    return any(p.stat().st_mtime_ns > cache_mtime_ns for p in files)


def prune_dataset_cache(cache_file: Path = DATASET_CACHE_FILE) -> List[str]:
    """Drop the stale entries of fastMRI's dataset cache file, rewriting it.

    fastMRI's SliceDataset trusts the cache for any folder listed in it, so
    data regenerated in place (fewer slices, other files) would be read with
    the old slice list and fail inside a DataLoader worker.

    Args:
        cache_file: The pickled ``{folder: [FastMRIRawDataSample, ...]}`` cache.

    Returns:
        The folders whose entries were dropped (empty when none or no file).

    Raises:
        UsageError: the cache file cannot be read.
    """
    import os
    import pickle

    if not cache_file.is_file():
        return []
    try:
        with open(cache_file, "rb") as f:
            cache = pickle.load(f)
    except Exception as err:
        raise UsageError(
            f"cannot read the dataset cache {cache_file.resolve()} ({type(err).__name__}); "
            "delete it (it is rebuilt) or pass --use_dataset_cache_file false"
        ) from None
    if not isinstance(cache, dict):
        raise UsageError(
            f"the dataset cache {cache_file.resolve()} is not fastMRI's cache (a dict); "
            "delete it (it is rebuilt) or pass --use_dataset_cache_file false"
        )
    mtime_ns = cache_file.stat().st_mtime_ns
    stale = [root for root, samples in cache.items()
             if _cached_folder_is_stale(Path(root), samples, mtime_ns)]
    if not stale:
        return []
    kept = {root: samples for root, samples in cache.items() if root not in stale}
    # Write beside and rename, so no reader ever sees half a file.
    tmp = cache_file.with_name(f".{cache_file.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        pickle.dump(kept, f)
    os.replace(tmp, cache_file)
    return [str(root) for root in stale]
