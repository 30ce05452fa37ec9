"""Curves from CSVLogger files and reconstruction grids."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib import image as mpimg

from fastmri_growth.cli import plot as plot_cli
from fastmri_growth.evaluation import plot
from fastmri_growth.evaluation.inference import fixed_mask_func, reconstruct

REPO = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

FULL_CSV = """epoch,network/filters,network/params,step,train_loss,val_metrics/nmse,val_metrics/psnr,val_metrics/ssim,validation_loss
0,8,1000,0,,,,,
0,,,4,0.5,,,,
0,,,4,,0.1,20.0,0.5,0.3
1,9,1200,5,,,,,
1,,,9,,0.09,21.0,0.55,0.28
2,9,1200,10,,,,,
2,,,14,,0.08,22.0,0.6,0.25
3,10,1500,15,,,,,
3,,,19,,0.07,23.0,0.62,0.2
"""


def _png_shape(path):
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    return mpimg.imread(path).shape[:2]


def _run_dir(tmp_path, versions):
    run = tmp_path / "run"
    for version, text in versions.items():
        d = run / "csv_logs" / f"version_{version}"
        d.mkdir(parents=True)
        (d / "metrics.csv").write_text(text)
    return run


def test_curves_from_newest_csv_marks_growth(tmp_path, capsys):
    # version_10 is newer than version_2 although it sorts first as text.
    run = _run_dir(tmp_path, {2: "epoch,step,val_metrics/ssim\n0,1,0.1\n", 10: FULL_CSV})
    assert plot.find_metrics_csv(run) == run / "csv_logs" / "version_10" / "metrics.csv"
    data = plot.read_epoch_metrics(run / "csv_logs" / "version_10" / "metrics.csv")
    assert data["network/params"] == {0: 1000.0, 1: 1200.0, 2: 1200.0, 3: 1500.0}
    assert data["val_metrics/psnr"] == {0: 20.0, 1: 21.0, 2: 22.0, 3: 23.0}
    assert data["train_loss"] == {0: 0.5}
    # Both versions are read, version_10 last: its epoch 0 replaces version_2's.
    joined = plot.read_run_metrics(plot.find_metrics_csvs(run))
    assert joined["val_metrics/ssim"] == {0: 0.5, 1: 0.55, 2: 0.6, 3: 0.62}

    result = plot.plot_curves(run, tmp_path / "out" / "curves.png")
    assert result.growth_epochs == [1, 3]
    assert result.missing == []
    assert _png_shape(result.out) == (640, 800)

    assert plot_cli.main(["curves", "--log-dir", str(run), "--out", str(tmp_path / "c2.png")]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(tmp_path / "c2.png")
    assert captured.err == ""


def test_curves_of_a_resumed_run_join_every_version(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    first = ("epoch,network/params,step,val_metrics/ssim\n"
             "0,100,0,\n0,,1,0.3\n1,100,2,\n1,,3,0.35\n")
    # Resumed from epoch 0's checkpoint: epoch 1 ran again, then 2 and 3.
    second = ("epoch,network/params,step,val_metrics/ssim\n"
              "1,120,2,\n1,,3,0.4\n2,120,4,\n2,,5,0.45\n3,150,6,\n3,,7,0.5\n")
    run = _run_dir(tmp_path, {0: first, 1: second, 11: "epoch,step\n"})
    paths = plot.find_metrics_csvs(run)
    assert [p.parent.name for p in paths] == ["version_0", "version_1", "version_11"]
    data = plot.read_run_metrics(paths)
    assert data["network/params"] == {0: 100.0, 1: 120.0, 2: 120.0, 3: 150.0}
    assert data["val_metrics/ssim"] == {0: 0.3, 1: 0.4, 2: 0.45, 3: 0.5}

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    result = plot.plot_curves(run, tmp_path / "c.png")
    assert result.growth_epochs == [1, 3]
    assert result.csv_paths == paths and result.csv_path == paths[-1]
    ticks = figures[0].axes[0].get_xticks()
    assert len(ticks) > 1 and all(float(t).is_integer() for t in ticks), ticks
    figures[0].clf()


def test_curves_with_missing_columns(tmp_path, capsys):
    csv = tmp_path / "metrics.csv"
    csv.write_text("epoch,step,network/params,val_metrics/ssim\n0,0,10,\n0,1,,0.4\n1,2,10,\n1,3,,0.5\n")
    result = plot.plot_curves(csv, tmp_path / "c.png")
    assert result.plotted == ["network/params", "val_metrics/ssim"]
    assert result.missing == ["network/filters", "val_metrics/psnr"]
    assert result.growth_epochs == []
    assert _png_shape(tmp_path / "c.png") == (640, 800)

    csv.write_text("epoch,step,val_metrics/psnr\n0,0,20\n1,1,21\n")
    assert plot_cli.main(["curves", "--log-dir", str(csv), "--out", str(tmp_path / "p.png")]) == 0
    err = capsys.readouterr().err
    assert "has no network/params, network/filters, val_metrics/ssim; plotted the rest" in err
    assert _png_shape(tmp_path / "p.png") == (320, 800)  # one panel

    csv.write_text("epoch,step,train_loss\n0,0,1.0\n")
    with pytest.raises(plot.PlotError, match="has none of network/params"):
        plot.plot_curves(csv, tmp_path / "n.png")
    assert not (tmp_path / "n.png").exists()


def test_grid_uses_the_reconstruction_mask(synthetic_root, tmp_path):
    val = synthetic_root / "knee" / "singlecoil_val"
    n0, n1 = sorted(p.name for p in val.iterdir())[:2]
    reconstruct(torch.nn.Identity(), val, "singlecoil", fixed_mask_func("random", 4),
                tmp_path / "rec", progress=False)
    rows, label = plot.grid_rows(tmp_path / "rec", val, "singlecoil", num_slices=4)
    assert label == "random 4x"
    assert [(r.name, r.slice_num) for r in rows] == [(n0, 1), (n0, 2), (n1, 1), (n1, 2)]
    for r in rows:
        # An identity network returns its input: the grid's input is the same image.
        np.testing.assert_allclose(r.input, r.reconstruction, rtol=1e-5, atol=1e-9)
        assert r.target.shape == r.input.shape == (64, 64)
    rows8, _ = plot.grid_rows(tmp_path / "rec", val, "singlecoil", acceleration=8, num_slices=1)
    assert not np.allclose(rows8[0].input, rows8[0].reconstruction, rtol=1e-3)

    out = plot.plot_grid(tmp_path / "rec", val, "singlecoil", tmp_path / "g.png")
    assert out == tmp_path / "g.png"
    assert _png_shape(out) == (1160, 1120)  # 4 rows x 4 columns


def test_grid_error_column_is_as_large_as_the_others_with_a_labelled_colour_bar(
        synthetic_root, tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    val = synthetic_root / "knee" / "singlecoil_val"
    reconstruct(torch.nn.Identity(), val, "singlecoil", fixed_mask_func("random", 4),
                tmp_path / "rec", progress=False)
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    plot.plot_grid(tmp_path / "rec", val, "singlecoil", tmp_path / "g.png", num_slices=2)
    (fig,) = figures
    fig.canvas.draw()
    images = [ax for ax in fig.axes if ax.get_images() and ax.get_title()]
    bars = [ax for ax in fig.axes if ax not in images]
    assert len(images) == 2 * 4 and len(bars) == 1
    # Every image panel, the error column included, is drawn at one size.
    sizes = {tuple(np.round(ax.get_window_extent().size, 1)) for ax in images}
    assert len(sizes) == 1, sizes
    assert [ax.get_title() for ax in images[3::4]] == ["|error|", "|error|"]
    # The colour bar sits to the right of the error column and says what it shows.
    (bar,) = bars
    assert bar.get_window_extent().x0 > max(ax.get_window_extent().x1 for ax in images)
    assert bar.get_ylabel() == plot.ERROR_LABEL and "%" in bar.get_ylabel()
    # The error panel shows |reconstruction - target| in percent of the row's max.
    rows, _ = plot.grid_rows(tmp_path / "rec", val, "singlecoil", num_slices=2)
    shown = images[3].get_images()[0].get_array()
    expected = 100 * np.abs(rows[0].reconstruction - rows[0].target) / rows[0].vmax
    np.testing.assert_allclose(np.asarray(shown), expected, rtol=1e-5, atol=1e-6)
    assert images[3].get_images()[0].get_clim() == (
        0.0, pytest.approx(100 * max(np.abs(r.reconstruction - r.target).max() / r.vmax
                                     for r in rows)))
    fig.clf()


def test_grid_of_test_files_has_two_columns(synthetic_root, tmp_path, capsys):
    test_split = synthetic_root / "brain" / "multicoil_test"
    reconstruct(torch.nn.Identity(), test_split, "multicoil", None, tmp_path / "sub",
                progress=False)
    assert plot_cli.main(["grid", "--reconstructions", str(tmp_path / "sub"), "--data-path",
                      str(test_split), "--challenge", "multicoil", "--out",
                      str(tmp_path / "g.png"), "--num-slices", "3"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "g.png")
    assert _png_shape(tmp_path / "g.png") == (870, 560)  # 3 rows x 2 columns


@pytest.mark.parametrize("case", ["no-log-dir", "no-csv"])
def test_cli_bad_input_exits_2_with_one_line(tmp_path, case):
    (tmp_path / "empty_run").mkdir()
    log_dir = tmp_path / ("nope" if case == "no-log-dir" else "empty_run")
    args = ["curves", "--log-dir", log_dir, "--out", tmp_path / "c.png"]
    proc = subprocess.run([sys.executable, "-m", "fastmri_growth.cli.plot", *map(str, args)],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    expected = {"no-log-dir": "nope does not exist", "no-csv": "no metrics.csv under"}[case]
    assert expected in lines[0]
    assert not (tmp_path / "c.png").exists()


def test_grid_bad_input_exits_2_with_one_line(synthetic_root, tmp_path, capsys):
    val = synthetic_root / "knee" / "singlecoil_val"
    base = ["grid", "--data-path", str(val), "--challenge", "singlecoil",
            "--out", str(tmp_path / "g.png")]
    cases = [
        # Test-split files are named differently from the val split's.
        (["--reconstructions", str(synthetic_root / "knee" / "singlecoil_test")],
         "no reconstruction in"),
        (["--reconstructions", str(tmp_path / "nope")], "nope does not exist"),
        (["--reconstructions", str(val), "--acceleration", "6"],
         "no default centre fraction for acceleration 6"),
        (["--reconstructions", str(val), "--num-slices", "0"], "--num-slices must be at least 1"),
        (["--reconstructions", str(val), "--challenge", "brain"], "invalid choice: 'brain'"),
    ]
    for extra, expected in cases:
        try:
            rc = plot_cli.main(base + extra)
        except SystemExit as exc:  # argparse errors exit from inside parse_args
            rc = exc.code
        assert rc == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        assert captured.err.count("\n") == 1 and expected in captured.err, captured.err
    assert not (tmp_path / "g.png").exists()
