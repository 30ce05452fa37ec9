"""The record of what ``generate_dataset`` wrote, and the checks it allows.

fastMRI's ``SliceDataset`` reads every entry of a split folder, so a folder
must hold one dataset and nothing else. The generator keeps a record,
``<out_dir>/fastmri_growth_synth.json`` (beside the ``knee``/``brain``
folders, where no ``SliceDataset`` looks), of the files it wrote in each split
folder and the settings they were made with. Before anything is written:

- an entry of a folder to be written that the record does not list (real
  data, another tool's files, a dataset made before the record existed) is
  never touched: the run is refused, with or without ``overwrite``;
- files of an earlier run in a folder to be written make the run refuse
  unless ``overwrite`` is given; with it, the files the new settings do not
  write are removed, so a folder never mixes two runs.

Folders the run does not write are left alone, with their record.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Sequence

from fastmri_growth.data.synthetic_volume import partial_name

MANIFEST_NAME = "fastmri_growth_synth.json"
_FORMAT = 1


class DatasetExistsError(FileExistsError):
    """Raised when files of an earlier run are in the way and overwrite is off.

    Attributes:
        existing: Files this run would write that already exist.
        stale: Other files of an earlier run in the folders being written,
            which ``overwrite`` would remove.
        total: How many files the run would write.
    """

    def __init__(self, message: str, existing: Sequence[Path], stale: Sequence[Path] = (),
                 total: int = 0):
        super().__init__(message)
        self.existing = list(existing)
        self.stale = list(stale)
        self.total = total or len(self.existing)


class ForeignDataError(ValueError):
    """A folder to be written holds entries that the generator did not write there.

    Attributes:
        entries: Those entries.
    """

    def __init__(self, message: str, entries: Sequence[Path]):
        super().__init__(message)
        self.entries = list(entries)


@dataclass
class FolderPlan:
    """What a run writes into one split folder.

    Attributes:
        folder: The folder relative to the dataset root, e.g. ``knee/singlecoil_train``.
        names: File names to write, in writing order.
        settings: The settings that make them (recorded, JSON-serialisable).
    """

    folder: str
    names: List[str]
    settings: Dict


@dataclass
class Inspection:
    """What a run found in its folders (see ``inspect``).

    Attributes:
        existing: Files the run writes that already exist.
        stale: Earlier files of ours that the run does not write.
        record: The record as read (empty for a new dataset root).
    """

    existing: List[Path] = field(default_factory=list)
    stale: List[Path] = field(default_factory=list)
    record: Dict = field(default_factory=dict)


def manifest_path(out_dir) -> Path:
    """Where the record of a dataset root lives."""
    return Path(out_dir) / MANIFEST_NAME


def read_manifest(out_dir) -> Dict:
    """The record of a dataset root: ``{"folders": {folder: {...}}}``, empty if none.

    Raises:
        ValueError: the record exists but is not one of ours.
    """
    path = manifest_path(out_dir)
    if not path.exists():
        return {"format": _FORMAT, "folders": {}}
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(record.get("folders"), dict):
            raise ValueError("no 'folders' table")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError) as err:
        raise ValueError(
            f"{path} is not a fastmri-growth-synth record ({' '.join(str(err).split())}); "
            "move it away or choose another output folder"
        ) from None
    return record


def inspect(out_dir: Path, plans: Sequence[FolderPlan]) -> Inspection:
    """Classify what is in the folders a run writes; raise if it must not start.

    Raises:
        ValueError: a path the run needs is a file, or the record is unreadable.
        ForeignDataError: a folder holds entries the record does not list.
    """
    record = read_manifest(out_dir)
    found = Inspection(record=record)
    foreign: List[Path] = []
    for plan in plans:
        folder = out_dir / plan.folder
        for parent in (folder.parent, folder):
            if parent.exists() and not parent.is_dir():
                raise ValueError(
                    f"{parent} exists and is not a folder; move it away or choose another "
                    "output folder"
                )
        if not folder.is_dir():
            continue
        listed = set(record["folders"].get(plan.folder, {}).get("files", ()))
        planned = set(plan.names)
        ours = listed | planned
        partials = {partial_name(name) for name in ours}
        for entry in sorted(folder.iterdir()):
            if entry.name in partials:
                found.stale.append(entry)  # left by an interrupted run
            elif entry.name not in listed or not entry.is_file():
                foreign.append(entry)
            elif entry.name in planned:
                found.existing.append(entry)
            else:
                found.stale.append(entry)
    if foreign:
        folders = sorted({str(p.parent) for p in foreign})
        where = folders[0] if len(folders) == 1 else f"{len(folders)} folders (first: {folders[0]})"
        record_path = manifest_path(out_dir)
        why = (f"not listed in its record {record_path}" if record_path.exists()
               else f"there is no record {record_path}")
        raise ForeignDataError(
            f"{where} hold{'s' if len(folders) == 1 else ''} {_count(foreign, 'entry')} that "
            f"fastmri-growth-synth did not write (first: {foreign[0]}; {why}); nothing was "
            "written: move those out or choose another output folder",
            foreign,
        )
    return found


def exists_message(found: Inspection, total: int, option: str) -> str:
    """The refusal when earlier files are in the way, naming ``option`` as the way out."""
    if found.existing:
        body = (f"{len(found.existing)} of the {total} files to write already exist "
                f"(first: {found.existing[0]})")
        if found.stale:
            body += (f", and their folders hold {_count(found.stale, 'other file')} of an "
                     f"earlier run (first: {found.stale[0]})")
        action = "replace them" + (" and remove the others" if found.stale else "")
    else:
        body = (f"the folders to write hold {_count(found.stale, 'file')} of an earlier run "
                f"that these settings do not write (first: {found.stale[0]})")
        action = "remove them and write the new set"
    return f"{body}; nothing was written. Pass {option} to {action}"


def record_folders(out_dir: Path, record: Dict, plans: Sequence[FolderPlan],
                   complete: bool) -> None:
    """Write the record with the run's folders; the other folders keep theirs.

    Called before writing (``complete=False``: each folder lists its earlier
    and its new files, so an interrupted run leaves nothing unlisted) and
    after (``complete=True``: exactly the new files).
    """
    folders = dict(record.get("folders", {}))
    for plan in plans:
        names = list(plan.names)
        if not complete:
            earlier = folders.get(plan.folder, {}).get("files", [])
            names += [name for name in earlier if name not in set(plan.names)]
        folders[plan.folder] = {"complete": complete, "settings": plan.settings, "files": names}
    record.clear()
    record.update({
        "format": _FORMAT,
        "written_by": "fastmri_growth.data.synthetic.generate_dataset (fastmri-growth-synth)",
        "folders": dict(sorted(folders.items())),
    })
    path = manifest_path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def settings_of(plan_settings: Mapping) -> Dict:
    """A JSON-safe copy of a folder's settings (tuples become lists)."""
    return json.loads(json.dumps(dict(plan_settings)))


def _count(items: Sequence, noun: str) -> str:
    if len(items) == 1:
        return f"1 {noun}"
    plural = noun[:-1] + "ies" if noun.endswith("y") else noun + "s"
    return f"{len(items)} {plural}"
