"""The textured and anatomy phantoms: fastMRI's loader, determinism, content.

The ellipse phantom's format tests are in ``test_synthetic.py``; here every
other phantom goes through the same unpatched ``SliceDataset`` and
``UnetDataTransform`` checks, and its content is measured: fine detail for
``textured``, real source pixels for ``anatomy``.
"""

import dataclasses

import h5py
import numpy as np
import pytest
import torch
from fastmri.data import SliceDataset
from fastmri.data.transforms import UnetDataTransform
from scipy.ndimage import binary_erosion, median_filter

from fastmri_growth.data import generate_dataset
from fastmri_growth.data.phantoms import anatomy
from fastmri_growth.data.synthetic import CHALLENGES, MANIFEST_NAME
from fastmri_growth.data.synthetic_volume import phantom_rng

NEW_PHANTOMS = ("textured", "anatomy")
R = 32
SLICES = 2
KWARGS = dict(challenges=CHALLENGES, splits=("train", "val", "test"), num_volumes=1,
              num_slices=SLICES, recon_size=R, num_coils=(2, 3), seed=0)


@pytest.fixture(scope="module")
def phantom_roots(tmp_path_factory):
    """``{phantom: root}`` of a tiny dataset per new phantom, every challenge."""
    roots = {}
    for phantom in NEW_PHANTOMS:
        roots[phantom] = tmp_path_factory.mktemp(phantom)
        generate_dataset(roots[phantom], phantom=phantom, **KWARGS)
    return roots


def _folder(root, challenge, split):
    anatomy_name, coils = challenge.split("_")
    return root / anatomy_name / f"{coils}_{split}"


def _corr(a, b):
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


# ---------------------------------------------------------------------------
# fastMRI's loader and transforms
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("challenge", CHALLENGES)
@pytest.mark.parametrize("phantom", NEW_PHANTOMS)
def test_unet_transform_reproduces_target_bit_for_bit(phantom_roots, phantom, challenge):
    coils = challenge.split("_")[1]
    for split in ("train", "val"):
        folder = _folder(phantom_roots[phantom], challenge, split)
        raw = SliceDataset(folder, coils)
        data = SliceDataset(folder, coils, transform=UnetDataTransform(coils))
        assert len(data) == SLICES
        for i in range(len(data)):
            sample = data[i]
            kspace, _, target, attrs, _, _ = raw[i]
            # The transform normalises input and target with the input's statistics.
            assert torch.equal(sample.image, sample.target)
            restored = sample.image * sample.std + sample.mean
            unclamped = sample.image.abs() < 6
            assert unclamped.float().mean() > 0.99
            torch.testing.assert_close(restored[unclamped], torch.from_numpy(target)[unclamped],
                                       rtol=1e-5, atol=1e-6 * float(target.max()))
            assert sample.max_value == attrs["max"]
            assert kspace.shape[-2] == 2 * R and kspace.dtype == np.complex64


@pytest.mark.parametrize("phantom", NEW_PHANTOMS)
def test_undersampled_split_and_header_as_for_ellipses(phantom_roots, phantom):
    for challenge in CHALLENGES:
        coils = challenge.split("_")[1]
        (path,) = _folder(phantom_roots[phantom], challenge, "test").iterdir()
        with h5py.File(path, "r") as hf:
            assert set(hf) == {"ismrmrd_header", "kspace", "mask"}
            mask, kspace = hf["mask"][()], hf["kspace"][()]
            assert {"acceleration", "num_low_frequency", "acquisition", "patient_id"} <= set(hf.attrs)
        assert mask.dtype == bool and not np.any(kspace[..., ~mask])
        sample = SliceDataset(path.parent, coils, transform=UnetDataTransform(coils))[0]
        assert sample.image.shape == (R, R)  # crop size from the header's reconSpace
        metadata = SliceDataset(path.parent, coils).raw_samples[0][2]
        assert metadata["recon_size"] == (R, R, 1) and metadata["encoding_size"][0] == 2 * R


@pytest.mark.parametrize("phantom", NEW_PHANTOMS)
def test_record_names_the_phantom(phantom_roots, phantom):
    import json

    record = json.loads((phantom_roots[phantom] / MANIFEST_NAME).read_text())
    assert {v["settings"]["phantom"] for v in record["folders"].values()} == {phantom}
    assert len(record["folders"]) == len(CHALLENGES) * 3


# ---------------------------------------------------------------------------
# Determinism
# ---------------------------------------------------------------------------


def _arrays(paths):
    out = {}
    for path in paths:
        with h5py.File(path, "r") as hf:
            out[path.name + path.parent.name] = {k: hf[k][()].tobytes() for k in hf}
    return out


@pytest.mark.parametrize("phantom", NEW_PHANTOMS)
def test_same_seed_same_bytes_and_volumes_independent_of_other_splits(tmp_path, phantom):
    small = dict(challenges=("knee_singlecoil", "brain_multicoil"), num_volumes=2,
                 num_slices=2, recon_size=R, num_coils=2, phantom=phantom)
    first = generate_dataset(tmp_path / "a", splits=("train", "test"), seed=3, **small)
    again = generate_dataset(tmp_path / "b", splits=("train", "test"), seed=3, **small)
    assert _arrays(first) == _arrays(again)
    alone = generate_dataset(tmp_path / "c", splits=("test",), seed=3, **small)
    full = _arrays(first)
    assert _arrays(alone) == {k: v for k, v in full.items() if "_test" in k}
    other = _arrays(generate_dataset(tmp_path / "d", splits=("train", "test"), seed=4, **small))
    assert all(other[k]["kspace"] != full[k]["kspace"] for k in full if k in other)


# ---------------------------------------------------------------------------
# Content: fine detail (textured), real anatomy
# ---------------------------------------------------------------------------


def _pixel_detail(root):
    """Median over slices of the energy a 3x3 median filter removes, on the object.

    A 3x3 median keeps straight edges and smooth shading but removes lines
    one pixel wide and specks of a pixel or two; measured inside the eroded
    object and relative to its mean squared, so that the background (noise
    only) does not count.
    """
    values = []
    for path in sorted(root.glob("knee/singlecoil_train/*.h5")):
        with h5py.File(path, "r") as hf:
            volume = hf["reconstruction_esc"][()].astype(np.float64)
        for image in volume:
            inside = binary_erosion(image > 0.15 * volume.max(), iterations=2)
            residual = image - median_filter(image, size=3)
            values.append(np.mean(residual[inside] ** 2) / np.mean(image[inside]) ** 2)
    return float(np.median(values))


def test_textured_keeps_pixel_scale_detail_at_every_matrix_size(tmp_path):
    detail = {}
    for phantom in ("ellipses", "textured"):
        for size in (64, 128):
            root = tmp_path / f"{phantom}{size}"
            generate_dataset(root, splits=("train",), num_volumes=4, num_slices=2,
                             recon_size=size, phantom=phantom)
            detail[phantom, size] = _pixel_detail(root)
    # Measured (seed 0): textured 0.0071 at 64 and 0.0062 at 128, ellipses
    # 0.0083 and 0.0023 (seeds 1-3: textured keeps 77-98% when the matrix
    # doubles, ellipses 27-33%): an ellipse's thin parts (cortex, skull,
    # menisci) are pixel-sized only at low resolution; textured detail is
    # pixel-sized at every size.
    assert detail["textured", 128] > 2 * detail["ellipses", 128]
    assert detail["textured", 128] > 0.6 * detail["textured", 64]
    assert detail["ellipses", 128] < 0.45 * detail["ellipses", 64]


def test_textured_slices_share_the_body_but_not_the_detail(phantom_roots):
    from fastmri_growth.data.phantoms import textured

    volume = textured.draw(np.random.default_rng(0), 3, 96, "knee", "CORPD_FBK")
    body = [image > 0.05 for image in volume]
    overlap = [np.logical_and(a, b).sum() / np.logical_or(a, b).sum()
               for a, b in zip(body, body[1:])]
    assert min(overlap) > 0.9  # one object through the volume
    detail = [image - median_filter(image, size=5) for image in volume]
    inside = binary_erosion(body[0] & body[1], iterations=3)
    assert abs(_corr(detail[0][inside], detail[1][inside])) < 0.5  # new detail per slice


def test_anatomy_render_without_augmentation_is_the_source_slice():
    nibabel = pytest.importorskip("nibabel")
    path = anatomy.source_path("mni152")
    data = np.asarray(nibabel.as_closest_canonical(nibabel.load(str(path))).dataobj, float)
    n, x0, y0, z = 64, 130, 150, 90
    loaded = anatomy.load_source("mni152")
    # Pixel centres on voxel centres: 1 mm pixels, centre half a voxel off.
    params = anatomy.AnatomyParams(
        source="mni152", orientation="axial", positions=(float(z),),
        centre=(y0 - n / 2 + 0.5, x0 - n / 2 + 0.5), fov=float(n), angle=0.0, flip=False,
        stretch=(1.0, 1.0), warp=(0.0, np.zeros((2, 1, 5))), bias=(0.0, np.zeros((1, 5))),
        contrast=loaded.levels, gamma=1.0,
    )
    rendered = anatomy.render(params, n, deform=False, bias=False, contrast=False)[0]
    # Rows run anterior to posterior, columns from the patient's right.
    expected = data[x0 - n + 1: x0 + 1, y0 - n + 1: y0 + 1, z][::-1, ::-1].T
    assert expected.max() > 0.5 * data.max()  # a slice through the brain
    np.testing.assert_allclose(rendered * expected.max() / rendered.max(), expected,
                               rtol=0, atol=1e-4 * expected.max())
    # The normalised source keeps the file's values up to one scale factor.
    ratio = rendered[expected > 0] / expected[expected > 0]
    assert np.ptp(ratio) < 1e-5 * ratio.mean()


def test_anatomy_targets_are_augmented_source_slices(phantom_roots):
    root = phantom_roots["anatomy"]
    sources = set()
    for challenge in ("knee_singlecoil", "brain_multicoil"):
        anatomy_name, coils = challenge.split("_")
        (path,) = _folder(root, challenge, "train").iterdir()
        with h5py.File(path, "r") as hf:
            target = hf["reconstruction_esc" if coils == "singlecoil"
                        else "reconstruction_rss"][()].astype(np.float64)
            acquisition = hf.attrs["acquisition"]
        params = anatomy.draw_params(phantom_rng(0, anatomy_name, "train", 0), SLICES, R,
                                     acquisition)
        sources.add(params.source)
        # The target is the rendered volume, up to noise, phase and coils.
        assert _corr(target, anatomy.render(params, R)) > 0.99
        # Undoing the deformation and the bias field leaves it close to the
        # plain resampling of the source image.
        plain = anatomy.render(params, R, deform=False, bias=False)
        assert _corr(target, plain) > 0.8
        assert params.source in anatomy.SOURCES and params.orientation in anatomy.ORIENTATIONS
    assert sources <= set(anatomy.SOURCES)


def test_anatomy_without_its_packages_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    from fastmri_growth.cli.synth import main

    real = anatomy._package_dir
    monkeypatch.setattr(anatomy, "_package_dir",
                        lambda package: None if package == "dipy" else real(package))
    with pytest.raises(anatomy.MissingExtraError, match=r"pip install fastmri-growth\[anatomy\]"):
        generate_dataset(tmp_path / "out", recon_size=R, phantom="anatomy")
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit) as info:
        main(["--out", str(tmp_path / "out"), "--phantom", "anatomy", "--recon-size", "32"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "dipy" in err and "fastmri-growth[anatomy]" in err
    assert not (tmp_path / "out").exists()

    monkeypatch.setattr(anatomy, "SOURCES", {**anatomy.SOURCES, "mni152": dataclasses.replace(
        anatomy.SOURCES["mni152"], path="datasets/data/no_such_template.nii.gz")})
    monkeypatch.setattr(anatomy, "_package_dir", real)
    with pytest.raises(anatomy.MissingExtraError, match="no_such_template.*does not ship"):
        generate_dataset(tmp_path / "out", recon_size=R, phantom="anatomy")
    assert not (tmp_path / "out").exists()


def test_preview_draws_a_row_per_phantom(tmp_path, capsys):
    from matplotlib import image as mpimg

    from fastmri_growth.cli.synth import main

    out = tmp_path / "docs" / "phantoms.png"
    assert main(["--preview", str(out), "--recon-size", "32"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    height, width = mpimg.imread(out).shape[:2]
    assert (height, width) == (int(2.3 * 3 * 72), int(1.9 * 6 * 72))  # 3 rows, 6 columns
