"""fastMRI's on-disk format and conventions, in one place.

Everything that names a fastMRI format fact lives here and is imported by
the CLIs, inference, evaluation, plots and the synthetic-data generator:
challenge names and their target datasets, k-space ranks, mask types,
acquisitions, the leaderboard's acceleration / centre-fraction pairs, the
ISMRMRD header namespace and the reconstruction shape it implies, and the
check that a split folder is readable by fastMRI's ``SliceDataset``.

No torch import: the command lines validate their input with this module
before anything heavy is loaded.
"""
from __future__ import annotations

import xml.etree.ElementTree as etree
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

PathLike = Union[str, Path]

#: fastMRI challenges (``--challenge``).
CHALLENGES = ("singlecoil", "multicoil")
#: The target dataset of each challenge in train/val files.
TARGET_KEYS = {"singlecoil": "reconstruction_esc", "multicoil": "reconstruction_rss"}
#: k-space rank per challenge: ``(slices, H, W)`` or ``(slices, coils, H, W)``.
KSPACE_NDIM = {"singlecoil": 3, "multicoil": 4}
#: Split folders ``<challenge>_<split>``; test and challenge files are
#: under-sampled and hold no target.
SPLITS = ("train", "val", "test", "challenge")
UNDERSAMPLED_SPLITS = ("test", "challenge")
#: Every mask type ``fastmri.data.subsample.create_mask_for_mask_type`` builds.
MASK_TYPES = ("random", "equispaced", "equispaced_fraction", "magic", "magic_fraction")
#: The mask type fastMRI's ``train_varnet_demo.py`` trains its VarNet with.
VARNET_DEMO_MASK_TYPE = "equispaced_fraction"
KNEE_ACQUISITIONS = ("CORPD_FBK", "CORPDFS_FBK")
BRAIN_ACQUISITIONS = ("AXT1", "AXT1PRE", "AXT1POST", "AXT2", "AXFLAIR")
ACQUISITIONS = KNEE_ACQUISITIONS + BRAIN_ACQUISITIONS
#: The leaderboard pairs each acceleration with one centre fraction.
LEADERBOARD_CENTER_FRACTIONS = {4: 0.08, 8: 0.04}
ISMRMRD_NAMESPACE = "http://www.ismrm.org/ISMRMRD"
_NS = {"ismrmrd": ISMRMRD_NAMESPACE}
#: The file name of fastMRI's path configuration, read in the working directory.
DIRS_CONFIG = "fastmri_dirs.yaml"


def check_challenge(challenge: str) -> None:
    """Raise ValueError unless ``challenge`` is a fastMRI challenge name."""
    if challenge not in CHALLENGES:
        raise ValueError(
            f"unknown challenge {challenge!r}; choose one of {', '.join(CHALLENGES)}"
        )


def target_key(challenge: str) -> str:
    """Name of the target dataset in fastMRI files for a challenge.

    Args:
        challenge: ``"singlecoil"`` or ``"multicoil"``.

    Returns:
        ``"reconstruction_esc"`` or ``"reconstruction_rss"``.
    """
    check_challenge(challenge)
    return TARGET_KEYS[challenge]


def other_challenge(challenge: str) -> str:
    """The other challenge name (for "did you mean" hints)."""
    return "multicoil" if challenge == "singlecoil" else "singlecoil"


def synth_hint(challenge: str = "singlecoil") -> str:
    """How to make a small synthetic set for ``--challenge challenge``."""
    if challenge == "multicoil":
        return (
            "for a small synthetic set run `fastmri-growth-synth --out DIR --challenges "
            "knee_multicoil` and pass --data_path DIR/knee"
        )
    return (
        "for a small synthetic set run `fastmri-growth-synth --out DIR` "
        "and pass --data_path DIR/knee"
    )


def h5_files(path: PathLike, what: str = "data path") -> List[Path]:
    """Sorted ``.h5`` files directly inside a folder.

    Args:
        path: A folder.
        what: How to name the folder in error messages.

    Returns:
        The ``.h5`` files, sorted by name.

    Raises:
        ValueError: the folder is missing, is a file, or holds no ``.h5`` file.
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{what} {path} does not exist; pass an existing folder")
    if not path.is_dir():
        raise ValueError(f"{what} {path} is not a folder; pass the folder of .h5 files")
    files = sorted(p for p in path.iterdir() if p.suffix == ".h5" and p.is_file())
    if not files:
        raise ValueError(f"{what} {path} holds no .h5 files; pass a folder of fastMRI .h5 files")
    return files


def check_split_dir(
    folder: PathLike,
    challenge: Optional[str] = None,
    need_target: bool = False,
    what: str = "data folder",
    missing_hint: Optional[str] = None,
) -> List[Path]:
    """Check that fastMRI's ``SliceDataset`` can read every file of a split folder.

    ``SliceDataset`` opens every entry of its root as HDF5, so a stray file
    (a README, a cache, a sub-folder) makes it crash deep inside h5py; it
    also needs ``kspace`` and the ISMRMRD header in every file.

    Args:
        folder: A split folder such as ``DATA/knee/singlecoil_train``.
        challenge: ``"singlecoil"`` or ``"multicoil"``: when given, the
            k-space rank of every file is checked against it.
        need_target: Whether each file must hold the challenge's target
            (train and val files do; test and challenge files have none).
        what: How to name the folder in error messages.
        missing_hint: What to do about a missing folder, appended to that
            message.

    Returns:
        The ``.h5`` files, sorted by name.

    Raises:
        ValueError: naming the folder or file and the fix.
    """
    import h5py

    folder = Path(folder)
    if not folder.is_dir():
        state = "is not a folder" if folder.exists() else "does not exist"
        hint = missing_hint or "pass an existing folder of fastMRI .h5 files"
        raise ValueError(f"{what} {folder} {state}; {hint}")
    entries = sorted(folder.iterdir())
    files = [p for p in entries if p.suffix == ".h5" and p.is_file()]
    if not files:
        raise ValueError(
            f"{what} {folder} holds no .h5 files; point it at a fastMRI split folder "
            f"({synth_hint(challenge or 'singlecoil')})"
        )
    others = [p.name for p in entries if p not in files]
    if others:
        shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        raise ValueError(
            f"{what} {folder} holds entries that are not .h5 files ({shown}); fastMRI's "
            "SliceDataset opens every entry as HDF5: move them out"
        )
    if challenge is not None:
        check_challenge(challenge)
    for path in files:
        try:
            with h5py.File(path, "r") as hf:
                keys = set(hf.keys())
                if "kspace" not in keys:
                    raise ValueError(
                        f"{path} has no 'kspace' dataset (it has: "
                        f"{', '.join(sorted(keys)) or 'nothing'}); "
                        "every fastMRI .h5 file needs kspace: remove or regenerate this file"
                    )
                if "ismrmrd_header" not in keys:
                    raise ValueError(
                        f"{path} has no 'ismrmrd_header' dataset, which fastMRI's SliceDataset "
                        "reads for the crop and padding; remove or regenerate this file "
                        "(`fastmri-growth-synth` writes it)"
                    )
                if challenge is None:
                    continue
                ndim = hf["kspace"].ndim
                if ndim != KSPACE_NDIM[challenge]:
                    other = other_challenge(challenge)
                    raise ValueError(
                        f"{path} has {ndim}-d kspace but --challenge {challenge} expects "
                        f"{KSPACE_NDIM[challenge]}-d; pass --challenge {other} or the matching data"
                    )
                if need_target and TARGET_KEYS[challenge] not in keys:
                    raise ValueError(
                        f"{path} has no {TARGET_KEYS[challenge]!r} target, which --challenge "
                        f"{challenge} training and validation need; pass the fully sampled "
                        "train/val data"
                    )
        except OSError as err:
            raise ValueError(
                f"cannot read {path} as HDF5 ({str(err).splitlines()[0]}); remove or "
                "replace this file"
            ) from None
    return files


def read_recon_space(header: bytes) -> Tuple[int, int]:
    """The reconstruction matrix ``(x, y)`` from an ISMRMRD header.

    Raises:
        ValueError: the header has no readable ``reconSpace/matrixSize``.
    """
    try:
        root = etree.fromstring(header)
        matrix = root.find(".//ismrmrd:encoding/ismrmrd:reconSpace/ismrmrd:matrixSize", _NS)
        return (int(matrix.find("ismrmrd:x", _NS).text), int(matrix.find("ismrmrd:y", _NS).text))
    except (etree.ParseError, AttributeError, TypeError, ValueError) as err:
        raise ValueError(f"cannot read reconSpace/matrixSize from the ISMRMRD header ({err})")


def expected_recon_shape(fname: PathLike) -> Tuple[int, int, int]:
    """Shape ``(slices, H, W)`` that a U-Net reconstruction of a file has.

    This mirrors ``UnetDataTransform`` on files without a target: the crop is
    the header's reconSpace ``(x, y)``, shrunk to a square of the k-space
    height when the k-space is shorter than the crop width (some brain
    FLAIR files).

    Raises:
        ValueError: the file has no ``kspace`` or no readable ISMRMRD header.
    """
    import h5py

    with h5py.File(fname, "r") as hf:
        if "kspace" not in hf:
            raise ValueError(f"{fname} has no 'kspace' dataset; pass a fastMRI data split")
        kshape = hf["kspace"].shape
        if "ismrmrd_header" not in hf:
            raise ValueError(f"{fname} has no 'ismrmrd_header'; pass fastMRI files with their header")
        header = hf["ismrmrd_header"][()]
    try:
        crop = read_recon_space(header)
    except ValueError as err:
        raise ValueError(f"{fname}: {err}") from None
    if kshape[-2] < crop[1]:
        crop = (kshape[-2], kshape[-2])
    return (int(kshape[0]), crop[0], crop[1])


def leaderboard_mask_type(files) -> str:
    """fastMRI's leaderboard mask type: equispaced for brain, random for knee.

    The anatomy is read from the files' ``acquisition`` attribute (brain
    acquisitions are axial: ``AXT1``, ``AXT2``, ``AXFLAIR``...), falling back
    to a ``brain`` component in the path.
    """
    import h5py

    for fname in files:
        with h5py.File(fname, "r") as hf:
            acq = hf.attrs.get("acquisition")
        if acq is not None:
            acq = acq.decode() if isinstance(acq, bytes) else str(acq)
            return "equispaced" if acq.upper().startswith("AX") else "random"
    if files and "brain" in (part.lower() for part in Path(files[0]).parts):
        return "equispaced"
    return "random"


def split_dirs(root: PathLike, challenge: str, splits=SPLITS) -> Dict[str, Path]:
    """``{split: root/<challenge>_<split>}``: fastMRI's folder layout."""
    root = Path(root)
    return {s: root / f"{challenge}_{s}" for s in splits}
