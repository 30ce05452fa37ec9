"""fastMRI's dataset cache file, kept in step with the data folders it lists.

fastMRI's ``SliceDataset`` caches the slice list of each data folder in
``dataset_cache.pkl`` (``{folder: [FastMRIRawDataSample, ...]}``, keyed by
the folder as given) and trusts an entry for as long as it exists. A folder
regenerated in place, replaced by another one (older file times, other
slice counts) or reached through a repointed symlink would then be read with
the old list: too few slices, or an ``IndexError`` inside a DataLoader
worker.

:func:`prune_dataset_cache` runs before the data are read and drops every
entry that differs from its folder's files. File times decide nothing: each
entry is checked against a fingerprint of its folder, recorded beside the
cache in ``dataset_cache.pkl.fingerprints`` (JSON) once the entry was found
to match the files in full:

- the folder's resolved path (a repointed symlink changes it);
- per file: name, size and slice count (``kspace.shape[0]``, read from the
  HDF5 header), plus the file's inode and change time as a change detector.

An entry whose fingerprint matches is kept. Any other entry (no fingerprint
yet, a fingerprint of another entry, or one that differs) is compared in
full: the slice list is computed from the files with fastMRI's own
``SliceDataset._retrieve_metadata`` and must equal the cached one, names,
slice indices and metadata; then it is kept and fingerprinted, else dropped
(and rebuilt by fastMRI from the files).
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path
from typing import Any, Dict, List, Optional

from fastmri_growth.cli.common import UsageError

# fastMRI's SliceDataset cache: relative, so it lives in the working directory.
DATASET_CACHE_FILE = Path("dataset_cache.pkl")

#: Version of the fingerprint layout; fingerprints of another version are ignored.
_FINGERPRINT_VERSION = 1


def fingerprint_file(cache_file: Path) -> Path:
    """The file beside ``cache_file`` that holds the fingerprints of its entries."""
    return cache_file.with_name(cache_file.name + ".fingerprints")


def entry_digest(samples: Any) -> str:
    """A digest of one cache entry (its slice list), so a fingerprint names the entry it checked.

    Args:
        samples: The entry: a list of ``(fname, slice_ind, metadata)``.
    """
    text = repr([(str(s[0]), int(s[1]), sorted((str(k), repr(v)) for k, v in s[2].items()))
                 for s in samples])
    return hashlib.sha256(text.encode()).hexdigest()


def num_slices(path: Path) -> int:
    """The slice count of a fastMRI HDF5 file (``kspace.shape[0]``; only the header is read).

    Raises:
        OSError, KeyError: the file is not readable HDF5 or has no ``kspace``.
    """
    import h5py

    with h5py.File(path, "r") as hf:
        return int(hf["kspace"].shape[0])


def folder_fingerprint(folder: Path) -> Optional[Dict[str, Any]]:
    """What a cache entry of ``folder`` is checked against (None: the folder is unreadable).

    Args:
        folder: A data folder as the cache names it.

    Returns:
        ``{"root": resolved path, "files": {name: [size, num_slices, inode,
        ctime_ns]}}`` over every entry of the folder (fastMRI lists them all).
    """
    try:
        files: Dict[str, List[int]] = {}
        for p in sorted(folder.iterdir()):
            st = p.stat()
            files[p.name] = [int(st.st_size), num_slices(p), int(st.st_ino), int(st.st_ctime_ns)]
        return {"root": str(folder.resolve()), "files": files}
    except (OSError, KeyError, ValueError, TypeError):
        return None


def entry_matches_files(folder: Path, samples: Any) -> bool:
    """Whether a cache entry is exactly the slice list fastMRI would build from the files now.

    The list is rebuilt with fastMRI's own ``SliceDataset._retrieve_metadata``
    (file names in sorted order, every slice, the header's metadata) and
    compared entry by entry.
    """
    from fastmri.data import SliceDataset

    try:
        expected = []
        for fname in sorted(folder.iterdir()):
            metadata, count = SliceDataset._retrieve_metadata(None, fname)
            expected += [(fname, i, metadata) for i in range(count)]
        return entry_digest(expected) == entry_digest(samples)
    except Exception:  # an unreadable file or a malformed entry: rebuild from the files
        return False


def _read_fingerprints(path: Path) -> Dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != _FINGERPRINT_VERSION or \
            not isinstance(data.get("entries"), dict):
        return {}
    return data["entries"]


def _write_atomically(path: Path, data: bytes) -> None:
    # Write beside and rename, so no reader ever sees half a file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def prune_dataset_cache(cache_file: Path = DATASET_CACHE_FILE) -> List[str]:
    """Drop the entries of fastMRI's dataset cache that differ from their folders' files.

    Entries whose recorded fingerprint still matches their folder are kept
    without reading the slice lists again; the others are compared in full
    (see the module docstring) and kept, with a new fingerprint, or dropped.
    The cache and its fingerprints are rewritten atomically when anything
    changed.

    Args:
        cache_file: The pickled ``{folder: [FastMRIRawDataSample, ...]}`` cache.

    Returns:
        The folders whose entries were dropped (empty when none or no file).

    Raises:
        UsageError: the cache file cannot be read.
    """
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
    prints_path = fingerprint_file(cache_file)
    recorded = _read_fingerprints(prints_path)
    kept: Dict[Any, Any] = {}
    prints: Dict[str, Any] = {}
    stale: List[str] = []
    for root, samples in cache.items():
        folder = Path(root)
        now = folder_fingerprint(folder) if folder.is_dir() else None
        try:
            digest = entry_digest(samples)
        except Exception:  # not a list of fastMRI samples
            digest = None
        if now is None or digest is None:
            stale.append(str(root))
            continue
        old = recorded.get(str(root))
        fresh = isinstance(old, dict) and old.get("entry") == digest and \
            old.get("folder") == now
        if not fresh and not entry_matches_files(folder, samples):
            stale.append(str(root))
            continue
        kept[root] = samples
        prints[str(root)] = {"entry": digest, "folder": now}
    if stale:
        _write_atomically(cache_file, pickle.dumps(kept))
    if prints != recorded:
        _write_atomically(prints_path, json.dumps(
            {"version": _FINGERPRINT_VERSION, "entries": prints}).encode())
    return stale
