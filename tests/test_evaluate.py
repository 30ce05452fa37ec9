"""Evaluation, submission checks and fixed-mask inference."""
import json
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from fastmri import evaluate as fe

from fastmri_growth.cli import evaluate as evaluate_cli
from fastmri_growth.data.fastmri_format import expected_recon_shape
from fastmri_growth.data.synthetic import generate_dataset
from fastmri_growth.evaluation import metrics as ev
from fastmri_growth.evaluation.inference import fixed_mask_func, leaderboard_validation, reconstruct

REPO = Path(__file__).resolve().parents[1]

def _write(path, **datasets):
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as hf:
        attrs = datasets.pop("attrs", {})
        for k, v in datasets.items():
            hf[k] = v
        hf.attrs.update(attrs)


@pytest.fixture
def folders(tmp_path):
    """Targets (slices, 20, 16) and larger reconstructions (slices, 24, 22)."""
    rng = np.random.default_rng(1)
    tdir, pdir = tmp_path / "targets", tmp_path / "recons"
    specs = [("a.h5", 4, "CORPD_FBK"), ("b.h5", 8, "CORPDFS_FBK"), ("c.h5", 4, "CORPDFS_FBK")]
    arrays = {}
    for name, accel, acq in specs:
        target = rng.uniform(0, 2, (3, 20, 16)).astype(np.float32)
        recon = rng.uniform(0, 2, (3, 24, 22)).astype(np.float32)
        # The evaluated centre must be close to the target for meaningful values.
        recon[:, 4:20, 3:19] = target[:, 2:18] + 0.1 * rng.standard_normal((3, 16, 16))
        _write(tdir / name, reconstruction_esc=target,
               attrs={"acceleration": accel, "acquisition": acq})
        _write(pdir / name, reconstruction=recon)
        arrays[name] = (target, recon)
    return tdir, pdir, arrays


def _direct(target, recon):
    """fastMRI's crop by hand: (W, W) centre of both, W = target width."""
    t = target[:, 2:18, :]
    r = recon[:, 4:20, 3:19]
    return {
        "NMSE": float(fe.nmse(t, r)),
        "PSNR": float(fe.psnr(t, r)),
        "SSIM": float(fe.ssim(t, r)[0]),
        "MSE": float(fe.mse(t, r)),
    }


def test_metrics_equal_direct_recomputation_with_center_crop(folders):
    tdir, pdir, arrays = folders
    result = ev.evaluate_folders(tdir, pdir, "singlecoil")
    assert list(result.per_volume) == ["a.h5", "b.h5", "c.h5"]
    for name, (target, recon) in arrays.items():
        expected = _direct(target, recon)
        for m in ev.METRICS:
            assert result.per_volume[name][m] == pytest.approx(expected[m], rel=1e-12)
    for m in ev.METRICS:
        values = [_direct(*arrays[n])[m] for n in arrays]
        assert result.mean(m) == pytest.approx(np.mean(values), rel=1e-12)
        assert result.std(m) == pytest.approx(np.std(values, ddof=1), rel=1e-12)
    # Same means as fastMRI's own evaluate() on the same folders.
    args = Namespace(target_path=tdir, predictions_path=pdir, acquisition=None, acceleration=None)
    theirs = fe.evaluate(args, "reconstruction_esc").means()
    for m in ev.METRICS:
        assert result.mean(m) == pytest.approx(float(np.asarray(theirs[m]).reshape(-1)[0]), rel=1e-6)
    assert 0.5 < result.mean("SSIM") < 1.0


def test_filters_select_volumes(folders):
    tdir, pdir, arrays = folders
    r4 = ev.evaluate_folders(tdir, pdir, "singlecoil", acceleration=4)
    assert list(r4.per_volume) == ["a.h5", "c.h5"]
    assert r4.filters == {"acceleration": 4, "acquisition": None}
    fs = ev.evaluate_folders(tdir, pdir, "singlecoil", acquisition="CORPDFS_FBK")
    assert list(fs.per_volume) == ["b.h5", "c.h5"]
    both = ev.evaluate_folders(tdir, pdir, "singlecoil", acceleration=8, acquisition="CORPDFS_FBK")
    assert list(both.per_volume) == ["b.h5"]
    assert both.per_volume["b.h5"]["PSNR"] == pytest.approx(_direct(*arrays["b.h5"])["PSNR"])
    assert np.isnan(both.std("PSNR"))  # one volume: no spread
    with pytest.raises(ev.EvaluationError, match="no target .* matches acceleration=6"):
        ev.evaluate_folders(tdir, pdir, "singlecoil", acceleration=6)


def test_main_prints_table_and_writes_json(folders, tmp_path, capsys):
    tdir, pdir, arrays = folders
    out = tmp_path / "res" / "m.json"
    rc = evaluate_cli.main(["--target-path", str(tdir), "--predictions-path", str(pdir),
                  "--challenge", "singlecoil", "--per-volume", "--json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    result = ev.evaluate_folders(tdir, pdir, "singlecoil")
    ssim_row = next(line for line in text.splitlines() if line.startswith("SSIM "))
    assert ssim_row.split() == ["SSIM", f"{result.mean('SSIM'):.6g}", f"{result.std('SSIM'):.6g}", "3"]
    assert any(line.startswith("b.h5 ") for line in text.splitlines())
    data = json.loads(out.read_text())
    assert data["num_volumes"] == 3 and data["challenge"] == "singlecoil"
    assert data["metrics"]["PSNR"]["mean"] == pytest.approx(result.mean("PSNR"), rel=1e-12)
    assert data["per_volume"]["c.h5"]["NMSE"] == pytest.approx(_direct(*arrays["c.h5"])["NMSE"])
    # The explicit subcommand gives the same numbers.
    assert evaluate_cli.main(["compare", "--target-path", str(tdir), "--predictions-path", str(pdir),
                    "--challenge", "singlecoil", "--acceleration", "8"]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[-1] == "1"


def test_bad_compare_inputs_name_the_problem(folders, tmp_path):
    tdir, pdir, arrays = folders
    _write(pdir / "extra.h5", reconstruction=np.zeros((3, 20, 16), np.float32))
    with pytest.raises(ev.EvaluationError, match="extra.h5 has no target"):
        ev.evaluate_folders(tdir, pdir, "singlecoil")
    (pdir / "extra.h5").unlink()
    (pdir / "b.h5").unlink()
    with pytest.raises(ev.EvaluationError, match="no reconstruction for target b.h5"):
        ev.evaluate_folders(tdir, pdir, "singlecoil")
    # Filtered out: its missing reconstruction does not matter.
    assert ev.evaluate_folders(tdir, pdir, "singlecoil", acceleration=4).num_volumes == 2
    with pytest.raises(ev.EvaluationError, match="pass --challenge singlecoil"):
        ev.evaluate_folders(tdir, pdir, "multicoil", acceleration=4)
    _write(pdir / "a.h5", reconstruction=np.zeros((3, 12, 16), np.float32))
    with pytest.raises(ev.EvaluationError, match="a.h5: reconstruction is 12x16, smaller"):
        ev.evaluate_folders(tdir, pdir, "singlecoil", acceleration=4)
    _write(pdir / "a.h5", reconstruction=np.zeros((2, 20, 16), np.float32))
    with pytest.raises(ev.EvaluationError, match="2 slices, target 3"):
        ev.evaluate_folders(tdir, pdir, "singlecoil", acceleration=4)
    _write(pdir / "a.h5", reconstruction=arrays["a.h5"][1])
    _write(tdir / "n.h5", reconstruction_esc=np.zeros((3, 20, 16), np.float32))
    _write(pdir / "n.h5", reconstruction=np.zeros((3, 20, 16), np.float32))
    with pytest.raises(ev.EvaluationError, match="n.h5 has no 'acceleration' attribute"):
        ev.evaluate_folders(tdir, pdir, "singlecoil", acceleration=4)


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "fastmri_growth.cli.evaluate", *map(str, args)],
        capture_output=True, text=True, cwd=REPO,
    )


@pytest.mark.parametrize("case", ["missing", "challenge"])
def test_cli_bad_input_exits_2_with_one_line(folders, tmp_path, case):
    tdir, pdir, _ = folders
    args = {
        "missing": ["--target-path", tmp_path / "nope", "--predictions-path", pdir, "--challenge", "singlecoil"],
        "challenge": ["--target-path", tdir, "--predictions-path", pdir, "--challenge", "knee"],
    }[case]
    proc = _cli(*args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    expected = {
        "missing": "nope does not exist",
        "challenge": "invalid choice: 'knee'",
    }[case]
    assert expected in lines[0]


def test_main_bad_input_exits_2_with_one_line(folders, tmp_path, capsys):
    tdir, pdir, _ = folders
    (tmp_path / "empty").mkdir()
    _write(tmp_path / "orphans" / "zzz.h5", reconstruction=np.zeros((3, 20, 16), np.float32))
    (tmp_path / "not_h5.h5").write_text("text")
    cases = [
        (["--target-path", tdir, "--predictions-path", tmp_path / "empty", "--challenge",
          "singlecoil"], "holds no .h5 files"),
        (["--target-path", tdir, "--predictions-path", tmp_path / "orphans", "--challenge",
          "singlecoil"], "zzz.h5 has no target"),
        (["--target-path", tdir, "--predictions-path", pdir, "--challenge", "singlecoil",
          "--acquisition", "AXT9"], "invalid choice: 'AXT9'"),
        (["check-submission", "--predictions-path", pdir, "--data-path", tdir],
         "a.h5 has no 'kspace' dataset"),
        (["leaderboard", "--checkpoint", tmp_path / "none.ckpt", "--data-path", tdir,
          "--challenge", "singlecoil", "--out", tmp_path / "lb"], "none.ckpt does not exist"),
        (["leaderboard", "--checkpoint", tmp_path / "none.ckpt", "--data-path", tdir,
          "--challenge", "singlecoil", "--out", tmp_path / "lb", "--device", "tpu9"],
         "unknown device 'tpu9'"),
        ([], "no command given"),
    ]
    for args, expected in cases:
        try:
            rc = evaluate_cli.main([str(a) for a in args])
        except SystemExit as exc:  # argparse errors exit from inside parse_args
            rc = exc.code
        assert rc == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and expected in err, err
    assert not (tmp_path / "lb").exists()


def test_check_submission(tmp_path, capsys):
    generate_dataset(tmp_path / "d", splits=("test",), num_volumes=3, num_slices=3, recon_size=32)
    data_dir = tmp_path / "d" / "knee" / "singlecoil_test"
    data = sorted(data_dir.iterdir())
    v0, v1, v2 = (f.name for f in data)
    assert expected_recon_shape(data[0]) == (3, 32, 32)
    sub = tmp_path / "sub"
    for f in data:
        _write(sub / f.name, reconstruction=np.ones((3, 32, 32), np.float32))
    assert ev.check_submission(sub, data_dir) == []
    assert evaluate_cli.main(["check-submission", "--predictions-path", str(sub),
                    "--data-path", str(data_dir)]) == 0
    capsys.readouterr()

    _write(sub / v0, recon=np.ones((3, 32, 32), np.float32))
    _write(sub / v1, reconstruction=np.ones((3, 32, 30), np.float32))
    (sub / v2).unlink()
    problems = ev.check_submission(sub, data_dir)
    assert problems == [
        f"{v0}: no 'reconstruction' dataset (has recon)",
        f"{v1}: shape (3, 32, 30), expected (3, 32, 32) (slices, H, W)",
        f"{v2}: missing (no {v2} in {sub})",
    ]
    assert evaluate_cli.main(["check-submission", "--predictions-path", str(sub),
                    "--data-path", str(data_dir)]) == 1
    out = capsys.readouterr().out
    assert "3 problem(s)" in out and f"{v2}: missing" in out

    _write(sub / v0, reconstruction=np.ones((3, 32, 32), np.complex64), extra=np.zeros(2))
    _write(sub / v1, reconstruction=np.full((3, 32, 32), np.nan, np.float32))
    # The knee leaderboard's _v2 names are accepted.
    _write(sub / (Path(v2).stem + "_v2.h5"), reconstruction=np.ones((3, 32, 32), np.float64))
    _write(sub / "stray.h5", reconstruction=np.ones((3, 32, 32), np.float32))
    assert ev.check_submission(sub, data_dir) == [
        f"{v0}: holds more than 'reconstruction' (also extra)",
        f"{v0}: dtype complex64 is not real floating point (save float32 magnitudes)",
        f"{v1}: holds NaN or infinite values",
        f"stray.h5: not an input volume of {data_dir}; remove it",
    ]


@pytest.mark.parametrize("anatomy,challenge", [("knee", "singlecoil"), ("brain", "multicoil")])
def test_reconstruct_identity_is_deterministic(synthetic_root, tmp_path, anatomy, challenge):
    split = synthetic_root / anatomy / f"{challenge}_val"
    files = sorted(split.iterdir())
    key = "reconstruction_esc" if challenge == "singlecoil" else "reconstruction_rss"
    model = torch.nn.Identity()
    out1 = reconstruct(model, split, challenge, fixed_mask_func("random", 4), tmp_path / "r1",
                       progress=False)
    out2 = reconstruct(model, split, challenge, fixed_mask_func("random", 4), tmp_path / "r2",
                       batch_size=2, progress=False)
    out8 = reconstruct(model, split, challenge, fixed_mask_func("random", 8), tmp_path / "r8",
                       progress=False)
    assert [p.name for p in out1] == [f.name for f in files]
    for f, a, b, c in zip(files, out1, out2, out8):
        with h5py.File(a, "r") as ha, h5py.File(b, "r") as hb, h5py.File(c, "r") as hc, \
                h5py.File(f, "r") as hf:
            assert list(ha.keys()) == ["reconstruction"]
            ra, rb = ha["reconstruction"][()], hb["reconstruction"][()]
            assert ra.shape == hf[key].shape == (3, 64, 64)
            assert ra.dtype == np.float32
            np.testing.assert_array_equal(ra, rb)
            assert not np.allclose(ra, hc["reconstruction"][()])
            # Un-normalised: the zero-filled magnitude, on the target's scale.
            assert ra.mean() == pytest.approx(hf[key][()].mean(), rel=0.3)
    assert ev.check_submission(tmp_path / "r1", split) == []


def test_reconstruct_test_files_and_refusals(synthetic_root, tmp_path):
    test_split = synthetic_root / "knee" / "singlecoil_test"
    model = torch.nn.Conv2d(1, 1, 3, padding=1)
    model.train()
    out = reconstruct(model, test_split, "singlecoil", None, tmp_path / "sub", progress=False)
    assert model.training  # restored
    assert [p.name for p in out] == sorted(p.name for p in test_split.iterdir())
    assert ev.check_submission(tmp_path / "sub", test_split) == []
    with pytest.raises(ValueError, match="already under-sampled"):
        reconstruct(model, test_split, "singlecoil", fixed_mask_func("random", 4), tmp_path / "x")
    val = tmp_path / "d" / "knee" / "singlecoil_val"
    generate_dataset(tmp_path / "d", splits=("val",), num_volumes=1, num_slices=2, recon_size=32)
    with pytest.raises(ValueError, match="fully sampled"):
        reconstruct(model, val, "singlecoil", None, tmp_path / "x")
    before = {p: p.read_bytes() for p in val.iterdir()}
    with pytest.raises(ValueError, match="is one of the input files"):
        reconstruct(model, val, "singlecoil", fixed_mask_func("random", 4), val)
    assert {p: p.read_bytes() for p in val.iterdir()} == before
    with pytest.raises(ValueError, match="unknown challenge 'knee'"):
        reconstruct(model, val, "knee", None, tmp_path / "x")
    with pytest.raises(ValueError, match="unknown mask type 'gauss'"):
        fixed_mask_func("gauss", 4)
    assert not (tmp_path / "x").exists()


def test_leaderboard_validation_plain_module(synthetic_root, tmp_path):
    # The anatomy folder is enough: the val split inside it is found.
    results = leaderboard_validation(torch.nn.Identity(), synthetic_root / "knee", "singlecoil",
                                     tmp_path / "lb", progress=False)
    assert sorted(results) == [4, 8]
    split = synthetic_root / "knee" / "singlecoil_val"
    names = sorted(p.name for p in split.iterdir())
    for accel, cf in ((4, 0.08), (8, 0.04)):
        r = results[accel]
        assert (r["acceleration"], r["center_fraction"], r["mask_type"]) == (accel, cf, "random")
        assert sorted(p.name for p in (tmp_path / "lb" / f"{accel}x").iterdir()) == names
        direct = ev.evaluate_folders(split, tmp_path / "lb" / f"{accel}x", "singlecoil")
        assert r["metrics"]["SSIM"]["mean"] == direct.mean("SSIM")
        assert r["num_volumes"] == len(names)
    # More samples, better zero-filled input.
    assert results[4]["metrics"]["NMSE"]["mean"] < results[8]["metrics"]["NMSE"]["mean"]
    table = ev.format_leaderboard_table(results).splitlines()
    assert table[1].split()[:2] == ["4x", "random"] and table[2].split()[:2] == ["8x", "random"]

    brain = leaderboard_validation(torch.nn.Identity(), synthetic_root / "brain" / "multicoil_val",
                                   "multicoil", tmp_path / "lbb", accelerations=(4,),
                                   center_fractions=(0.08,), progress=False)
    assert brain[4]["mask_type"] == "equispaced"
    with pytest.raises(ValueError, match="several multicoil_val folders"):
        leaderboard_validation(torch.nn.Identity(), synthetic_root, "multicoil", tmp_path / "z")
    with pytest.raises(ValueError, match="one centre fraction per acceleration"):
        leaderboard_validation(torch.nn.Identity(), synthetic_root / "knee", "singlecoil",
                               tmp_path / "z", accelerations=(4, 8), center_fractions=(0.08,))
    assert not (tmp_path / "z").exists()


def test_every_multi_word_flag_takes_both_spellings_and_help_shows_defaults(capsys):
    from fastmri_growth.cli import plot

    cases = [
        (evaluate_cli.build_parser(), ["compare", "--target_path", "t", "--predictions_path", "p",
                                   "--challenge", "singlecoil", "--per_volume"]),
        (evaluate_cli.build_parser(), ["check-submission", "--predictions_path", "p",
                                   "--data_path", "d"]),
        (evaluate_cli.build_parser(), ["leaderboard", "--checkpoint", "c", "--data_path", "d",
                                   "--challenge", "multicoil", "--out", "o", "--mask_type",
                                   "equispaced", "--center_fractions", "0.08", "--batch_size",
                                   "3", "--num_workers", "2"]),
        (plot.build_parser(), ["curves", "--log_dir", "r", "--out", "c.png"]),
        (plot.build_parser(), ["grid", "--reconstructions", "r", "--data_path", "d",
                               "--challenge", "singlecoil", "--out", "g.png", "--mask_type",
                               "random", "--center_fraction", "0.04", "--num_slices", "2"]),
    ]
    for parser, argv in cases:
        under = vars(parser.parse_args(argv))
        hyphen = vars(parser.parse_args([a.replace("_", "-") if a.startswith("--") else a
                                         for a in argv]))
        assert under == hyphen, argv
    args = cases[2][0].parse_args(cases[2][1])
    assert (args.data_path, args.mask_type, args.center_fractions, args.batch_size,
            args.num_workers) == (Path("d"), "equispaced", [0.08], 3, 2)

    for parser, sub in ((evaluate_cli.build_parser(), "leaderboard"), (plot.build_parser(), "grid")):
        with pytest.raises(SystemExit):
            parser.parse_args([sub, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        if sub == "leaderboard":
            for expected in ("(default: [4, 8])", "(default: [0.08, 0.04])",
                             "slices per forward pass (default: 1)", "(default: cpu)",
                             "data loader worker processes (default: 0)", "--data_path"):
                assert expected in text, expected
        else:
            assert "fixed mask (default: 4)" in text and "rows of the grid (default: 4)" in text
