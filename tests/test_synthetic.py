"""The synthetic dataset goes through fastMRI's own, unpatched loader.

Everything here reads the files with ``fastmri.data.SliceDataset`` and
fastMRI's transforms, as a training run on the real data would.
"""

import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET

import h5py
import numpy as np
import pytest
import torch
from fastmri.data import SliceDataset
from fastmri.data.mri_data import et_query
from fastmri.data.subsample import EquispacedMaskFractionFunc, RandomMaskFunc
from fastmri.data.transforms import UnetDataTransform, VarNetDataTransform

from fastmri_growth.data import generate_dataset
from fastmri_growth.data.synthetic import (
    BRAIN_ACQUISITIONS,
    CHALLENGES,
    KNEE_ACQUISITIONS,
    MANIFEST_NAME,
    SPLITS,
    DatasetExistsError,
    ForeignDataError,
    _coil_sensitivities,
)
from fastmri_growth.cli.synth import main
from tests.conftest import SYNTHETIC_KWARGS

R = SYNTHETIC_KWARGS["recon_size"]
NUM_SLICES = SYNTHETIC_KWARGS["num_slices"]
FULLY_SAMPLED = ("train", "val")
UNDERSAMPLED = ("test", "challenge")
MULTICOIL = tuple(c for c in CHALLENGES if c.endswith("multicoil"))


def _folder(root, challenge, split):
    anatomy, coils = challenge.split("_")
    return root / anatomy / f"{coils}_{split}"


def _dataset(root, challenge, split, transform=None):
    coils = challenge.split("_")[1]
    return SliceDataset(_folder(root, challenge, split), coils, transform=transform)


def _mask_func(challenge):
    # fastMRI's recipes: random masks for knee, equispaced for brain.
    if challenge.startswith("knee"):
        return RandomMaskFunc([0.08, 0.04], [4, 8], seed=0)
    return EquispacedMaskFractionFunc([0.08, 0.04], [4, 8], seed=0)


def _read(path):
    with h5py.File(path, "r") as hf:
        arrays = {k: hf[k][()] for k in hf}
        attrs = dict(hf.attrs)
    return arrays, attrs


# ---------------------------------------------------------------------------
# Layout, format, header
# ---------------------------------------------------------------------------


def test_layout_and_file_names(synthetic_root):
    knee_name = re.compile(r"file1\d{6}\.h5")
    brain_name = re.compile(
        rf"file_brain_({'|'.join(BRAIN_ACQUISITIONS)})_\d{{3}}_2\d{{6}}\.h5"
    )
    for challenge in CHALLENGES:
        names = []
        for split in SPLITS:
            files = sorted(p.name for p in _folder(synthetic_root, challenge, split).iterdir())
            assert len(files) == SYNTHETIC_KWARGS["num_volumes"][split], (challenge, split)
            pattern = knee_name if challenge.startswith("knee") else brain_name
            assert all(pattern.fullmatch(f) for f in files), files
            names += files
        assert len(set(names)) == len(names), f"names repeat across splits: {names}"
    # Beside the anatomy folders, only the generator's record of what it wrote.
    assert sorted(p.name for p in synthetic_root.iterdir()) == [
        "brain", MANIFEST_NAME, "knee"
    ]
    record = json.loads((synthetic_root / MANIFEST_NAME).read_text())
    folders = {
        str(d.relative_to(synthetic_root)): sorted(p.name for p in d.iterdir())
        for d in synthetic_root.glob("*/*_*")
    }
    assert {k: sorted(v["files"]) for k, v in record["folders"].items()} == folders
    assert all(v["complete"] and v["settings"]["phantom"] == "ellipses"
               for v in record["folders"].values())


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("challenge", CHALLENGES)
def test_slice_dataset_reads_every_file(synthetic_root, challenge, split):
    dataset = _dataset(synthetic_root, challenge, split)
    num_volumes = SYNTHETIC_KWARGS["num_volumes"][split]
    assert len(dataset) == num_volumes * NUM_SLICES
    multicoil = challenge.endswith("multicoil")
    target_key = "reconstruction_rss" if multicoil else "reconstruction_esc"
    acquisitions = KNEE_ACQUISITIONS if challenge.startswith("knee") else BRAIN_ACQUISITIONS

    for fname, slice_num, metadata in dataset.raw_samples[::NUM_SLICES]:
        arrays, attrs = _read(fname)
        kspace = arrays["kspace"]
        width = kspace.shape[-1]
        assert kspace.dtype == np.complex64
        if multicoil:
            assert kspace.ndim == 4 and 4 <= kspace.shape[1] <= 8
        else:
            assert kspace.ndim == 3
        assert kspace.shape[0] == NUM_SLICES and kspace.shape[-2] == 2 * R
        assert width % 2 == 0 and width >= R
        if challenge.startswith("knee"):
            assert width == 74  # even(1.15 * 64)

        # What SliceDataset parsed from the ISMRMRD header.
        assert metadata["encoding_size"] == (2 * R, width, 1)
        assert metadata["recon_size"] == (R, R, 1)
        left, right = metadata["padding_left"], metadata["padding_right"]
        assert 0 <= left < width // 2 < right <= width
        assert right - left >= 0.9 * width
        # The header's acquired range is exactly where k-space is non-zero.
        column_energy = np.abs(kspace).reshape(-1, width).sum(axis=0)
        assert np.all(column_energy[:left] == 0) and np.all(column_energy[right:] == 0)

        assert attrs["acquisition"] in acquisitions
        assert re.fullmatch(r"[0-9a-f]{64}", attrs["patient_id"])
        if split in FULLY_SAMPLED:
            assert set(arrays) == {"ismrmrd_header", "kspace", target_key}
            target = arrays[target_key]
            assert target.shape == (NUM_SLICES, R, R) and target.dtype == np.float32
            assert attrs["max"] == pytest.approx(float(target.max()), rel=1e-7)
            assert attrs["norm"] == pytest.approx(float(np.linalg.norm(target)), rel=1e-6)
            assert np.all(column_energy[left:right] > 0)
        else:
            assert set(arrays) == {"ismrmrd_header", "kspace", "mask"}
            assert "max" not in attrs and "norm" not in attrs

    kspace, mask, target, attrs, fname, slice_num = dataset[0]
    assert kspace.shape[-2] == 2 * R
    if split in FULLY_SAMPLED:
        assert mask is None and target.shape == (R, R)
    else:
        assert target is None and mask.dtype == bool and mask.shape == (kspace.shape[-1],)


def test_header_is_ismrmrd_xml(synthetic_root):
    path = next(_folder(synthetic_root, "brain_multicoil", "train").iterdir())
    arrays, attrs = _read(path)
    root = ET.fromstring(arrays["ismrmrd_header"])
    assert root.tag == "{http://www.ismrm.org/ISMRMRD}ismrmrdHeader"
    width = arrays["kspace"].shape[-1]
    enc = ["encoding", "encodedSpace", "matrixSize"]
    assert [et_query(root, enc + [a]) for a in "xyz"] == [str(2 * R), str(width), "1"]
    lims = ["encoding", "encodingLimits", "kspace_encoding_step_1"]
    assert et_query(root, lims + ["minimum"]) == "0"
    assert et_query(root, ["receiverChannels"]) == str(arrays["kspace"].shape[1])
    assert et_query(root, ["protocolName"]) == attrs["acquisition"]


# ---------------------------------------------------------------------------
# Targets and fastMRI's transforms
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("split", FULLY_SAMPLED)
@pytest.mark.parametrize("challenge", CHALLENGES)
def test_unet_transform_on_fully_sampled_data_reproduces_target(synthetic_root, challenge, split):
    coils = challenge.split("_")[1]
    raw = _dataset(synthetic_root, challenge, split)
    dataset = _dataset(synthetic_root, challenge, split, UnetDataTransform(coils))
    for i in range(len(dataset)):
        sample = dataset[i]
        target = torch.from_numpy(raw[i][2])
        # The transform normalises input and target with the input's statistics.
        assert torch.equal(sample.image, sample.target), (
            f"max error {(sample.image - sample.target).abs().max()}"
        )
        # Undo the normalisation where the transform did not clamp.
        unclamped = sample.image.abs() < 6
        restored = sample.image * sample.std + sample.mean
        assert unclamped.float().mean() > 0.99
        torch.testing.assert_close(
            restored[unclamped], target[unclamped], rtol=1e-5, atol=1e-6 * target.max().item()
        )
        assert sample.max_value == raw[i][3]["max"]


@pytest.mark.parametrize("challenge", CHALLENGES)
def test_unet_transform_with_mask_and_on_test_split(synthetic_root, challenge):
    coils = challenge.split("_")[1]
    train = _dataset(
        synthetic_root, challenge, "train", UnetDataTransform(coils, _mask_func(challenge))
    )
    sample = train[0]
    assert sample.image.shape == (R, R) and sample.target.shape == (R, R)
    assert torch.isfinite(sample.image).all()
    assert not torch.equal(sample.image, sample.target)  # under-sampled input

    test = _dataset(synthetic_root, challenge, "test", UnetDataTransform(coils))
    sample = test[0]
    assert sample.image.shape == (R, R)  # crop size from the header's reconSpace
    assert sample.max_value == 0.0 and sample.target.numel() == 1


@pytest.mark.parametrize("challenge", MULTICOIL)
def test_varnet_transform_and_model(synthetic_root, challenge):
    from fastmri.models import VarNet

    train = _dataset(synthetic_root, challenge, "train", VarNetDataTransform(_mask_func(challenge)))
    raw = _dataset(synthetic_root, challenge, "train")
    sample = train[0]
    meta = raw.raw_samples[0][2]
    num_coils, width = raw[0][0].shape[0], raw[0][0].shape[-1]
    assert sample.masked_kspace.shape == (num_coils, 2 * R, width, 2)
    assert sample.mask.shape == (1, 1, width, 1) and sample.mask.dtype == torch.bool
    assert not sample.mask[..., : meta["padding_left"], :].any()
    assert not sample.mask[..., meta["padding_right"] :, :].any()
    assert sample.crop_size == (R, R) and sample.max_value == raw[0][3]["max"]

    model = VarNet(num_cascades=1, sens_chans=2, sens_pools=2, chans=2, pools=2)
    with torch.no_grad():
        output = model(
            sample.masked_kspace[None], sample.mask[None], sample.num_low_frequencies
        )
    assert output.shape == (1, 2 * R, width) and torch.isfinite(output).all()

    test = _dataset(synthetic_root, challenge, "test", VarNetDataTransform())
    raw_test = _dataset(synthetic_root, challenge, "test")
    sample = test[0]
    kspace, mask, _, _, _, _ = raw_test[0]
    meta = raw_test.raw_samples[0][2]
    expected = mask.copy()
    expected[: meta["padding_left"]] = False
    expected[meta["padding_right"] :] = False
    assert torch.equal(sample.mask.reshape(-1), torch.from_numpy(expected))
    assert torch.equal(torch.view_as_complex(sample.masked_kspace), torch.from_numpy(kspace))


@pytest.mark.parametrize("split", UNDERSAMPLED)
@pytest.mark.parametrize("challenge", CHALLENGES)
def test_undersampled_splits_follow_fastmri_mask_conventions(synthetic_root, challenge, split):
    for path in _folder(synthetic_root, challenge, split).iterdir():
        arrays, attrs = _read(path)
        mask, kspace = arrays["mask"], arrays["kspace"]
        width = kspace.shape[-1]
        assert mask.dtype == bool and mask.shape == (width,)
        acceleration, low = attrs["acceleration"], attrs["num_low_frequency"]
        center_fraction = {4: 0.08, 8: 0.04}[acceleration]
        assert low == round(width * center_fraction)
        pad = (width - low + 1) // 2  # fastMRI's MaskFunc.calculate_center_mask
        assert mask[pad : pad + low].all()
        assert mask.sum() < width / 2
        # Unsampled columns are zero in every slice and coil.
        assert not np.any(kspace[..., ~mask])
        if challenge.startswith("brain"):
            # Equispaced outside the centre: gaps differ by at most one column.
            for side in (np.flatnonzero(mask[:pad]), np.flatnonzero(mask[pad + low :])):
                gaps = np.diff(side)
                assert gaps.size == 0 or gaps.max() - gaps.min() <= 1, side


# ---------------------------------------------------------------------------
# Content
# ---------------------------------------------------------------------------


def _corr(a, b):
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


@pytest.mark.parametrize("challenge", CHALLENGES)
def test_images_are_smooth_anatomy_not_noise(synthetic_root, challenge):
    key = "reconstruction_rss" if challenge.endswith("multicoil") else "reconstruction_esc"
    for path in _folder(synthetic_root, challenge, "train").iterdir():
        target = _read(path)[0][key].astype(np.float64)
        for image in target:
            assert _corr(image[:, 1:], image[:, :-1]) > 0.8  # neighbouring pixels
            centre = image[R // 4 : 3 * R // 4, R // 4 : 3 * R // 4].mean()
            corners = np.concatenate(
                [image[:4, :4], image[:4, -4:], image[-4:, :4], image[-4:, -4:]]
            )
            assert centre > 3 * corners.mean()  # object in the middle, noise around
        for a, b in zip(target[:-1], target[1:]):
            assert _corr(a, b) > 0.7  # neighbouring slices


def test_knee_singlecoil_and_multicoil_share_anatomy(synthetic_root):
    sc = _read(next(_folder(synthetic_root, "knee_singlecoil", "train").glob("*.h5")))
    name = next(_folder(synthetic_root, "knee_singlecoil", "train").glob("*.h5")).name
    mc = _read(_folder(synthetic_root, "knee_multicoil", "train") / name)
    assert sc[1]["patient_id"] == mc[1]["patient_id"]
    assert sc[1]["acquisition"] == mc[1]["acquisition"]
    assert _corr(sc[0]["reconstruction_esc"], mc[0]["reconstruction_rss"]) > 0.95


def test_coil_sensitivities_are_normalised_and_smooth():
    maps = _coil_sensitivities(np.random.default_rng(0), 6, 128, 74, 64)
    assert maps.shape == (6, 128, 74)
    np.testing.assert_allclose(np.sum(np.abs(maps) ** 2, axis=0), 1.0, rtol=1e-12)
    step = np.abs(np.diff(maps, axis=-1)).max()
    assert step < 0.1  # no jumps between neighbouring pixels
    assert np.abs(maps).max(axis=(1, 2)).min() > 0.5  # each coil sees something


# ---------------------------------------------------------------------------
# Determinism, overwrite protection, bad input
# ---------------------------------------------------------------------------

SMALL = dict(
    challenges=("knee_multicoil", "brain_multicoil"),
    splits=("train", "test"),
    num_volumes=1,
    num_slices=2,
    recon_size=32,
)


def _snapshot(paths, root):
    out = {}
    for path in paths:
        arrays, attrs = _read(path)
        out[str(path.relative_to(root))] = (arrays, attrs)
    return out


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for name in a:
        (arrays_a, attrs_a), (arrays_b, attrs_b) = a[name], b[name]
        assert arrays_a.keys() == arrays_b.keys()
        for key in arrays_a:
            bytes_a, bytes_b = (np.asarray(x[key]).tobytes() for x in (arrays_a, arrays_b))
            assert bytes_a == bytes_b, (name, key)
        assert attrs_a == attrs_b


def test_same_seed_gives_identical_arrays(tmp_path):
    first = generate_dataset(tmp_path / "a", seed=5, **SMALL)
    second = generate_dataset(tmp_path / "b", seed=5, **SMALL)
    assert len(first) == 4
    _assert_same(_snapshot(first, tmp_path / "a"), _snapshot(second, tmp_path / "b"))

    other = _snapshot(generate_dataset(tmp_path / "c", seed=6, **SMALL), tmp_path / "c")
    assert not any(np.array_equal(a[0]["kspace"], b[0]["kspace"])
                   for a, b in zip(_snapshot(first, tmp_path / "a").values(), other.values())
                   if a[0]["kspace"].shape == b[0]["kspace"].shape)

    # A volume does not depend on what else is generated with it.
    alone = generate_dataset(tmp_path / "d", seed=5, **{**SMALL, "splits": ("test",)})
    full = _snapshot(first, tmp_path / "a")
    _assert_same(_snapshot(alone, tmp_path / "d"), {k: v for k, v in full.items() if "_test" in k})


def test_refuses_to_overwrite_and_writes_nothing(tmp_path):
    kwargs = dict(challenges=("knee_singlecoil",), num_volumes=1, num_slices=2, recon_size=32)
    (path,) = generate_dataset(tmp_path, splits=("train",), **kwargs)
    before = path.read_bytes()

    with pytest.raises(DatasetExistsError, match="overwrite=True") as info:
        generate_dataset(tmp_path, splits=("train", "val"), seed=1, **kwargs)
    assert isinstance(info.value, FileExistsError)
    assert info.value.existing == [path] and str(path) in str(info.value)
    assert path.read_bytes() == before
    assert not (tmp_path / "knee" / "singlecoil_val").exists()

    written = generate_dataset(tmp_path, splits=("train", "val"), seed=1, overwrite=True, **kwargs)
    assert written[0] == path and len(written) == 2
    assert path.read_bytes() != before  # seed 1 now
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no leftovers


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"challenges": ("knee",)},
            "unknown challenge 'knee'; valid challenges: "
            "knee_singlecoil, knee_multicoil, brain_multicoil",
        ),
        ({"challenges": ()}, "no challenges given"),
        (
            {"splits": ("training",)},
            "unknown split 'training'; valid splits: train, val, test, challenge",
        ),
        (
            {"recon_size": 63},
            "recon_size must be a positive even integer (e.g. 64, 128, 320), got 63",
        ),
        ({"recon_size": 0}, "got 0"),
        ({"recon_size": 64.0}, "got 64.0"),
        (
            {"num_volumes": 0},
            "num_volumes for split 'train' must be an integer in [1, 199999], got 0",
        ),
        ({"num_volumes": {"tset": 1}}, "unknown split 'tset'"),
        (
            {"num_volumes": {"val": 1}, "splits": ("train",)},
            "names split 'val', which is not being generated",
        ),
        ({"num_slices": 0}, "num_slices must be a positive integer, got 0"),
        ({"seed": -1}, "seed must be a non-negative integer, got -1"),
        ({"num_coils": (5, 2)}, "1 <= min <= max, got (5, 2)"),
        (
            {"phantom": "noise"},
            "unknown phantom 'noise'; valid phantoms: ellipses, textured, anatomy",
        ),
        (
            {"phantom": "textured", "recon_size": 16},
            "recon_size 16 is too small for phantom 'textured': it needs at least 32",
        ),
        ({"phantom": "anatomy", "recon_size": 30}, "needs at least 32"),
    ],
)
def test_bad_arguments_raise_clear_errors(tmp_path, kwargs, message):
    with pytest.raises(ValueError) as info:
        generate_dataset(tmp_path / "out", **kwargs)
    assert message in str(info.value)
    assert not (tmp_path / "out").exists()


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "fastmri_growth.cli.synth", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--challenges", "knee"], ["'knee'", "knee_singlecoil", "brain_multicoil"]),
        (["--splits", "train", "tset"], ["'tset'", "challenge"]),
        (["--recon-size", "63"], ["--recon-size", "positive even integer", "63"]),
        (["--recon-size", "big"], ["--recon-size", "'big'"]),
        (["--num-volumes", "train=x"], ["--num-volumes", "'x'"]),
        (["--num-volumes", "tset=2"], ["'tset'", "train, val, test, challenge"]),
        (["--num-volumes", "val=2", "--splits", "train"], ["'val'", "not being generated"]),
        (["--num-coils", "8-4"], ["--num-coils", "(8, 4)"]),
        (["--phantom", "noise"], ["--phantom", "'noise'", "ellipses", "textured", "anatomy"]),
        (["--phantom", "textured", "--recon-size", "16"], ["16", "'textured'", "at least 32"]),
    ],
)
def test_cli_rejects_bad_input_with_one_line(tmp_path, args, expected):
    result = _cli("--out", tmp_path / "out", *args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("fastmri-growth-synth: error:")
    for text in expected:
        assert text in lines[0]
    assert not (tmp_path / "out").exists()


def test_cli_writes_summary_and_refuses_to_overwrite(tmp_path, capsys):
    args = ["--out", str(tmp_path), "--challenges", "brain_multicoil", "--splits", "val", "test",
            "--num-volumes", "1", "--num-slices", "2", "--recon-size", "32", "--seed", "3"]
    assert main(args) == 0
    out = capsys.readouterr().out
    files = sorted(tmp_path.glob("brain/multicoil_*/*.h5"))
    assert [f.parent.name for f in files] == ["multicoil_test", "multicoil_val"]
    assert "brain/multicoil_val: 1 volume x 2 slices" in out
    assert "wrote 2 files" in out
    before = [f.read_bytes() for f in files]

    again = _cli(*args)
    assert again.returncode == 2
    assert again.stderr.count("\n") == 1 and "--overwrite" in again.stderr
    assert "2 files to write already exist" in again.stderr
    assert "Traceback" not in again.stderr
    assert [f.read_bytes() for f in files] == before

    assert main([*args, "--overwrite"]) == 0
    assert "replaced 2 existing files" in capsys.readouterr().out
    assert sorted(tmp_path.glob("brain/multicoil_*/*")) == files


# ---------------------------------------------------------------------------
# Re-runs: never a mixed folder, never someone else's files
# ---------------------------------------------------------------------------

TINY = dict(challenges=("knee_singlecoil",), splits=("train",), recon_size=32)


def _names(folder):
    return sorted(p.name for p in folder.iterdir())


def test_overwrite_with_fewer_volumes_leaves_no_stale_files(tmp_path, capsys):
    train = tmp_path / "knee" / "singlecoil_train"
    generate_dataset(tmp_path, num_volumes=6, num_slices=3, **TINY)
    generate_dataset(tmp_path, challenges=("brain_multicoil",), splits=("val",), num_volumes=1,
                     num_slices=2, recon_size=32)
    brain_val = tmp_path / "brain" / "multicoil_val"
    kept = {p: p.read_bytes() for p in brain_val.iterdir()}

    # Without overwrite: refused, naming the earlier files, and nothing changes.
    before = {p: p.read_bytes() for p in train.iterdir()}
    with pytest.raises(DatasetExistsError, match="overwrite=True") as info:
        generate_dataset(tmp_path, num_volumes=2, num_slices=2, **TINY)
    assert len(info.value.existing) == 2 and len(info.value.stale) == 4
    assert "4 other files of an earlier run" in str(info.value)
    assert {p: p.read_bytes() for p in train.iterdir()} == before

    written = generate_dataset(tmp_path, num_volumes=2, num_slices=2, overwrite=True,
                               log=print, **TINY)
    assert _names(train) == sorted(p.name for p in written) == ["file1000000.h5",
                                                                 "file1000001.h5"]
    out = capsys.readouterr().out
    assert "removed 4 files of the earlier run" in out
    dataset = SliceDataset(train, "singlecoil")
    assert len(dataset) == 2 * 2  # no 3-slice volume left behind
    # Another folder, not written by this run, keeps its files and its record.
    assert {p: p.read_bytes() for p in brain_val.iterdir()} == kept
    record = json.loads((tmp_path / MANIFEST_NAME).read_text())["folders"]
    assert record["knee/singlecoil_train"]["files"] == _names(train)
    assert record["knee/singlecoil_train"]["settings"]["num_slices"] == 2
    assert record["brain/multicoil_val"]["files"] == _names(brain_val)


def test_other_files_in_a_folder_are_never_touched(tmp_path):
    train = tmp_path / "knee" / "singlecoil_train"
    generate_dataset(tmp_path, num_volumes=1, num_slices=2, **TINY)
    (train / "notes.txt").write_text("mine")
    before = {p: p.read_bytes() for p in train.iterdir()}
    for overwrite in (False, True):
        with pytest.raises(ForeignDataError, match="did not write") as info:
            generate_dataset(tmp_path, num_volumes=2, num_slices=2, overwrite=overwrite,
                             phantom="textured", **TINY)
        assert info.value.entries == [train / "notes.txt"]
        assert "notes.txt" in str(info.value) and "nothing was written" in str(info.value)
        assert {p: p.read_bytes() for p in train.iterdir()} == before

    # Files of the same names that the record does not list (real data, or a
    # set made before the record existed) are not replaced either.
    (train / "notes.txt").unlink()
    (tmp_path / MANIFEST_NAME).unlink()
    with pytest.raises(ForeignDataError, match="there is no record"):
        generate_dataset(tmp_path, num_volumes=1, num_slices=2, overwrite=True, **TINY)
    assert {p: p.read_bytes() for p in train.iterdir()} == {
        k: v for k, v in before.items() if k.name != "notes.txt"}


def test_interrupted_run_leftovers_are_cleaned_and_bad_records_refused(tmp_path):
    train = tmp_path / "knee" / "singlecoil_train"
    generate_dataset(tmp_path, num_volumes=1, num_slices=2, **TINY)
    (train / ".file1000000.h5.partial").write_bytes(b"half")
    generate_dataset(tmp_path, num_volumes=1, num_slices=2, overwrite=True, **TINY)
    assert _names(train) == ["file1000000.h5"]

    (tmp_path / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(ValueError, match="is not a fastmri-growth-synth record"):
        generate_dataset(tmp_path, num_volumes=1, num_slices=2, overwrite=True, **TINY)
    (tmp_path / MANIFEST_NAME).unlink()
    (tmp_path / "brain").write_text("a file where a folder goes")
    with pytest.raises(ValueError, match="exists and is not a folder"):
        generate_dataset(tmp_path / "brain" / "x", **TINY)
    with pytest.raises(ValueError, match="brain exists and is not a folder"):
        generate_dataset(tmp_path, challenges=("brain_multicoil",), splits=("val",),
                         recon_size=32)


def test_cli_refuses_a_folder_of_other_data_with_one_line(tmp_path):
    train = tmp_path / "knee" / "singlecoil_train"
    train.mkdir(parents=True)
    (train / "file1000000.h5").write_bytes(b"real scanner data")
    result = _cli("--out", tmp_path, "--recon-size", "32", "--splits", "train", "--overwrite")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert "file1000000.h5" in lines[0] and "did not write" in lines[0]
    assert (train / "file1000000.h5").read_bytes() == b"real scanner data"
    assert not (tmp_path / MANIFEST_NAME).exists()
