"""Real brain MRI from images that installed packages ship in their wheels.

Nothing is downloaded: the images are read from the installed packages'
own folders (``pip install fastmri-growth[anatomy]`` installs them):

- ``mni152``: nilearn's MNI ICBM152 2009a symmetric T1 template,
  skull-stripped, 197x233x189 at 1 mm (an average of 152 real scans); any
  orientation.
- ``dipy_t1_coronal``: dipy's ``t1_coronal_slice.npy``, one real T1 coronal
  slice, 256x256 (taken as 1 mm pixels); coronal only.
- ``nibabel_example4d``: the first volume of nibabel's ``example4d.nii.gz``,
  a T2*-weighted EPI of a whole head, 128x96x24 at 2x2x2.2 mm; axial only.

A volume takes one source (drawn with the weights below), one orientation
and a block of parallel slices 2-4 mm apart through the object. Every slice
of the volume shares its random in-plane rotation, left-right flip, stretch,
field of view (the object fills 78-92% of it) and centre offset; an elastic
deformation and a bias field vary slowly from slice to slice (faster for
the single-slice source, whose slices differ by them alone). The
intensities then go through a contrast curve chosen by the acquisition
(T1, T2, FLAIR, PD, fat-suppressed PD), defined at the source's own tissue
levels and jittered per volume. The result is resampled to the requested
matrix with trilinear interpolation, supersampled and averaged where a
pixel spans several source voxels. Knee folders get the same brains, with
the PD contrasts of their knee acquisitions.

nibabel's ``tests/data/anatomical.nii`` (33x41x25 at 2 mm, a crop of the
central brain) is not used: stretched to a full matrix it is a blur with the
crop's edges in view.
"""
from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np

from fastmri_growth.data.phantoms.common import grid

#: Smallest recon size: below it a brain slice is not recognisable.
MIN_RECON_SIZE = 32
INSTALL_HINT = "pip install fastmri-growth[anatomy]"
ORIENTATIONS = ("axial", "coronal", "sagittal")
# Slice axis, then the canonical (RAS) axes of image rows and columns with the
# direction they run in: rows top to bottom (anterior->posterior axially,
# superior->inferior otherwise), columns in the radiological convention
# (patient right on the left) or anterior on the left for sagittal slices.
_AXES = {
    "axial": (2, (1, -1.0), (0, -1.0)),
    "coronal": (1, (2, -1.0), (0, -1.0)),
    "sagittal": (0, (2, -1.0), (1, -1.0)),
}
# Output values of each contrast at a T1-weighted source's tissue levels: the
# 2nd, 25th, 50th, 75th and 98th percentiles of the object (CSF and edges,
# grey matter, grey/white boundary, white matter, brightest white matter).
_CONTRASTS = {
    "T2": (1.0, 0.75, 0.62, 0.5, 0.45),
    "FLAIR": (0.2, 0.8, 0.7, 0.6, 0.55),
    "PD": (0.6, 0.75, 0.8, 0.85, 0.9),
    "PDFS": (0.45, 0.6, 0.62, 0.65, 0.68),
}
_ACQUISITION_CONTRAST = {
    "AXT1": "T1", "AXT1PRE": "T1", "AXT1POST": "T1", "AXT2": "T2", "AXFLAIR": "FLAIR",
    "CORPD_FBK": "PD", "CORPDFS_FBK": "PDFS",
}
_QUANTILES = (2, 25, 50, 75, 98)


class MissingExtraError(ImportError):
    """The anatomy phantom's packages or their image files are not installed."""


@dataclass(frozen=True)
class Source:
    """One shipped image.

    Attributes:
        name: Key in ``SOURCES``.
        package: The installed package whose folder holds it.
        path: Its path inside that folder.
        orientations: The slice orientations it is sampled in.
        weight: Probability of a volume drawing it.
        weighting: ``"T1"`` or ``"T2*"``: the tissue order of its intensities.
        noisy_background: Whether the image holds noise around the head,
            which is then faded out (else, where the source volume ends
            inside the field of view, the noise would stop at a straight edge).
    """

    name: str
    package: str
    path: str
    orientations: Tuple[str, ...]
    weight: float
    weighting: str
    noisy_background: bool = False


SOURCES: Dict[str, Source] = {
    s.name: s for s in (
        Source("mni152", "nilearn",
               "datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
               ORIENTATIONS, 0.6, "T1"),
        Source("dipy_t1_coronal", "dipy", "data/files/t1_coronal_slice.npy",
               ("coronal",), 0.15, "T1"),
        Source("nibabel_example4d", "nibabel", "tests/data/example4d.nii.gz",
               ("axial",), 0.25, "T2*", noisy_background=True),
    )
}
# nibabel reads the NIfTI files; the other two packages only ship images.
_PACKAGES = ("nibabel", "nilearn", "dipy")


def _package_dir(package: str) -> Optional[Path]:
    # find_spec locates a top-level package without importing it (nilearn
    # would import scikit-learn and pandas).
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def source_path(name: str) -> Path:
    """Where the installed package keeps a source image.

    Raises:
        MissingExtraError: the package is not installed.
    """
    source = SOURCES[name]
    folder = _package_dir(source.package)
    if folder is None:
        raise MissingExtraError(
            f"phantom 'anatomy' reads images shipped with {source.package}, which is not "
            f"installed: {INSTALL_HINT}"
        )
    return folder / source.path


def check_available() -> None:
    """Raise ``MissingExtraError`` unless every package and image is installed."""
    for package in _PACKAGES:
        if _package_dir(package) is None:
            raise MissingExtraError(
                f"phantom 'anatomy' needs {package}, which is not installed: {INSTALL_HINT}"
            )
    for name in SOURCES:
        path = source_path(name)
        if not path.is_file():
            raise MissingExtraError(
                f"phantom 'anatomy' reads {path}, which the installed "
                f"{SOURCES[name].package} does not ship: {INSTALL_HINT} --upgrade"
            )


@dataclass(frozen=True)
class LoadedSource:
    """A source image, canonical and normalised.

    Attributes:
        data: float32 ``(X, Y, Z)`` on RAS+ axes (x to the patient's right,
            y anterior, z superior), scaled so that the object's 98th
            percentile is 1, negatives clipped.
        zooms: Voxel size in mm along X, Y, Z.
        levels: The object's ``_QUANTILES`` percentiles (the last is 1).
        extent: Per axis, the mm range ``(low, high)`` of voxel positions
            whose cross-section holds at least 40% of the largest one's
            object voxels (slices are placed there, away from the thin caps).
        bbox: Per axis, the mm range covered by the object.
    """

    data: np.ndarray
    zooms: Tuple[float, float, float]
    levels: Tuple[float, ...]
    extent: Tuple[Tuple[float, float], ...]
    bbox: Tuple[Tuple[float, float], ...]


@functools.lru_cache(maxsize=None)
def load_source(name: str) -> LoadedSource:
    """Read, reorient and normalise a source image (cached per process)."""
    path = source_path(name)
    if name == "dipy_t1_coronal":
        # Rows run superior->inferior, so z = last row first; one coronal plane.
        plane = np.load(path).astype(np.float32)
        data = np.ascontiguousarray(plane[::-1, :].T[:, None, :])
        zooms = (1.0, 1.0, 1.0)
    else:
        import nibabel

        image = nibabel.as_closest_canonical(nibabel.load(str(path)))
        data = np.asarray(image.dataobj, dtype=np.float32)
        if data.ndim == 4:
            data = data[..., 0]
        zooms = tuple(float(z) for z in image.header.get_zooms()[:3])
    data = np.clip(np.nan_to_num(data), 0.0, None)
    obj = data > 0.1 * np.percentile(data[data > 0], 99.0)
    if SOURCES[name].noisy_background:
        from scipy.ndimage import binary_dilation, binary_fill_holes, gaussian_filter

        head = binary_dilation(binary_fill_holes(obj), iterations=2)
        data = data * gaussian_filter(head.astype(np.float32), 1.0)
    scale = float(np.percentile(data[obj], 98))
    data = data / scale
    levels = tuple(float(q) for q in np.percentile(data[obj], _QUANTILES))
    extent, bbox = [], []
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        area = obj.sum(axis=others)
        keep = np.flatnonzero(area >= 0.4 * area.max())
        extent.append((keep[0] * zooms[axis], keep[-1] * zooms[axis]))
        present = np.flatnonzero(area > 0)
        bbox.append((present[0] * zooms[axis], present[-1] * zooms[axis]))
    return LoadedSource(data, zooms, levels, tuple(extent), tuple(bbox))


@dataclass(frozen=True)
class AnatomyParams:
    """Everything that makes one volume, drawn by ``draw_params``.

    Attributes:
        source: Key in ``SOURCES``.
        orientation: ``axial``, ``coronal`` or ``sagittal``.
        positions: mm position of each slice along the slice axis.
        centre: mm position of the image centre on the row and column axes.
        fov: Side of the square field of view in mm.
        angle: In-plane rotation in radians.
        flip: Whether columns are mirrored.
        stretch: Scale factors of rows and columns.
        warp: ``(amplitude_mm, modes)``: the elastic displacement is
            ``amplitude * sum_k a_k sin(pi f_k . (v, u) + phase_k + drift_k i)``
            per component; ``modes`` is ``(2, K, 5)`` rows of
            ``(a, f_v, f_u, phase, drift)``.
        bias: ``(strength, modes)``: the bias field is
            ``1 + strength * sum_k ...`` with ``modes`` ``(K, 5)``.
        contrast: Output values at the source's tissue levels (5,).
        gamma: Exponent applied after the contrast curve.
    """

    source: str
    orientation: str
    positions: Tuple[float, ...]
    centre: Tuple[float, float]
    fov: float
    angle: float
    flip: bool
    stretch: Tuple[float, float]
    warp: Tuple[float, np.ndarray]
    bias: Tuple[float, np.ndarray]
    contrast: Tuple[float, ...]
    gamma: float


def _modes(rng, count: int, cycles: float, drift: float) -> np.ndarray:
    """Random smooth sinusoid modes ``(count, 5)``: amplitude, frequency, phase, drift."""
    radius = cycles * np.sqrt(rng.uniform(size=count))
    theta = rng.uniform(0, 2 * np.pi, size=count)
    return np.stack([
        rng.normal(size=count) / np.sqrt(count),
        radius * np.sin(theta), radius * np.cos(theta),
        rng.uniform(0, 2 * np.pi, size=count),
        rng.normal(0.0, drift, size=count),
    ], axis=-1)


def _field(modes: np.ndarray, v: np.ndarray, u: np.ndarray, i: int) -> np.ndarray:
    out = np.zeros(np.broadcast(v, u).shape)
    for a, fv, fu, phase, drift in modes:
        out += a * np.sin(np.pi * (fv * v + fu * u) + phase + drift * i)
    return out


def draw_params(rng, num_slices: int, n: int, acquisition: str) -> AnatomyParams:
    """Draw one volume's source, geometry, deformation, bias and contrast.

    Args:
        rng: The volume's phantom Generator.
        num_slices: Slices of the volume.
        n: Side of the square image.
        acquisition: fastMRI acquisition name; sets the contrast.
    """
    names = list(SOURCES)
    weights = np.array([SOURCES[k].weight for k in names])
    name = names[int(rng.choice(len(names), p=weights / weights.sum()))]
    source, loaded = SOURCES[name], load_source(name)
    orientation = source.orientations[int(rng.integers(len(source.orientations)))]
    axis, (row_axis, _), (col_axis, _) = _AXES[orientation]

    low, high = loaded.extent[axis]
    spacing = rng.uniform(2.0, 4.0)
    if num_slices > 1:
        spacing = min(spacing, (high - low) / (num_slices - 1))
    first = rng.uniform(low, high - spacing * (num_slices - 1))
    positions = tuple(float(first + spacing * i) for i in range(num_slices))

    size = max(loaded.bbox[row_axis][1] - loaded.bbox[row_axis][0],
               loaded.bbox[col_axis][1] - loaded.bbox[col_axis][0])
    fov = size / rng.uniform(0.78, 0.92)
    shift = rng.uniform(-0.04, 0.04, size=2) * fov
    centre = (float(np.mean(loaded.bbox[row_axis]) + shift[0]),
              float(np.mean(loaded.bbox[col_axis]) + shift[1]))
    angle = float(np.deg2rad(rng.uniform(-12.0, 12.0)))
    flip = bool(rng.uniform() < 0.5)
    stretch = tuple(float(s) for s in rng.uniform(0.94, 1.06, size=2))
    # One plane only: the slices of a volume differ by their deformation.
    drift = 0.8 if loaded.data.shape[axis] == 1 else 0.15
    warp = (float(fov * rng.uniform(0.01, 0.025)),
            np.stack([_modes(rng, 6, 3.0, drift) for _ in range(2)]))
    bias = (float(rng.uniform(0.05, 0.2)), _modes(rng, 4, 1.0, 0.05))

    kind = _ACQUISITION_CONTRAST.get(acquisition, "T1")
    if kind == "T1":
        values = np.array(loaded.levels)
    else:
        values = np.array(_CONTRASTS[kind])
    if source.weighting != "T1":
        # Tissue order runs the other way (CSF brightest): so do the values.
        values = values[::-1]
    values = values * rng.uniform(0.9, 1.1, size=values.size)
    gamma = float(rng.uniform(0.85, 1.2))
    return AnatomyParams(name, orientation, positions, centre, float(fov), angle, flip,
                         stretch, warp, bias, tuple(float(x) for x in values), gamma)


def render(params: AnatomyParams, n: int, *, deform: bool = True, bias: bool = True,
           contrast: bool = True) -> np.ndarray:
    """Resample a volume's slices from its source.

    Args:
        params: From ``draw_params``.
        n: Side of the square image.
        deform: Apply the elastic deformation (the rigid geometry always applies).
        bias: Apply the bias field.
        contrast: Apply the contrast curve and gamma (else the normalised
            source intensities).

    Returns:
        ``(len(params.positions), n, n)`` float64, values about 0-1.
    """
    from scipy.ndimage import map_coordinates

    loaded = load_source(params.source)
    axis, (row_axis, row_sign), (col_axis, col_sign) = _AXES[params.orientation]
    # Average several samples per pixel where a pixel spans several voxels.
    pixel_mm = params.fov / n
    voxel_mm = min(loaded.zooms[row_axis], loaded.zooms[col_axis])
    ss = int(np.clip(np.ceil(pixel_mm / voxel_mm - 1e-9), 1, 3))
    v, u = grid(n * ss)
    v, u = np.broadcast_arrays(v, u)
    dr = v * params.fov / 2 * params.stretch[0]
    dc = u * params.fov / 2 * params.stretch[1] * (-1.0 if params.flip else 1.0)
    c, s = np.cos(params.angle), np.sin(params.angle)
    dr, dc = c * dr - s * dc, s * dr + c * dc
    amp, warp_modes = params.warp
    strength, bias_modes = params.bias
    vb, ub = grid(n)

    out = np.empty((len(params.positions), n, n))
    for i, position in enumerate(params.positions):
        r, q = dr, dc
        if deform:
            r = r + amp * _field(warp_modes[0], v, u, i)
            q = q + amp * _field(warp_modes[1], v, u, i)
        coords = np.empty((3,) + v.shape)
        coords[axis] = position / loaded.zooms[axis]
        coords[row_axis] = (params.centre[0] + row_sign * r) / loaded.zooms[row_axis]
        coords[col_axis] = (params.centre[1] + col_sign * q) / loaded.zooms[col_axis]
        img = map_coordinates(loaded.data, coords.reshape(3, -1), order=1, mode="constant",
                              cval=0.0).reshape(v.shape)
        img = img.reshape(n, ss, n, ss).mean(axis=(1, 3))
        if contrast:
            img = _curve(img, loaded.levels, params.contrast) ** params.gamma
        if bias:
            img = img * (1.0 + strength * _field(bias_modes, vb, ub, i))
        out[i] = img
    return np.clip(out, 0.0, None)


def _curve(img: np.ndarray, levels, values) -> np.ndarray:
    """Piecewise-linear contrast: 0 at 0, ``values`` at ``levels``, flat above."""
    x = np.concatenate([[0.0], levels, [levels[-1] * 1.3]])
    y = np.concatenate([[0.0], values, [values[-1]]])
    return np.interp(img, x, y)


def draw(rng, num_slices: int, n: int, anatomy: str, acquisition: str) -> np.ndarray:
    """Magnitudes of one volume, ``(num_slices, n, n)``, values about 0-1.

    Args:
        rng: The volume's phantom Generator.
        num_slices: Slices of the volume.
        n: Side of the square image (at least ``MIN_RECON_SIZE``).
        anatomy: Unused: knee folders get the same brain images, with the
            contrast of their knee acquisitions.
        acquisition: fastMRI acquisition name; sets the contrast.
    """
    del anatomy
    return render(draw_params(rng, num_slices, n, acquisition), n)
