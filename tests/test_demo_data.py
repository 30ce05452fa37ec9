"""The demo's data: brain anatomy, or a one-line error naming the extra."""
import json

import pytest

from fastmri_growth.cli import demo
from fastmri_growth.data.phantoms import anatomy
from fastmri_growth.data.synthetic import MANIFEST_NAME

TINY_ANATOMY_SPEC = {
    "challenges": ["knee_singlecoil"],
    "splits": ["train", "val", "test"],
    "num_volumes": {"train": 1, "val": 1, "test": 1},
    "num_slices": 2,
    "recon_size": 32,
    "seed": 0,
    "phantom": "anatomy",
}


def test_demo_generates_anatomy_and_reuses_it(tmp_path, monkeypatch, capsys):
    assert demo.DATA_SPEC["phantom"] == "anatomy"
    monkeypatch.setattr(demo, "DATA_SPEC", TINY_ANATOMY_SPEC)
    knee = demo.ensure_data(tmp_path / "data")
    assert knee == tmp_path / "data" / "knee"
    record = json.loads((tmp_path / "data" / MANIFEST_NAME).read_text())
    assert {f["settings"]["phantom"] for f in record["folders"].values()} == {"anatomy"}
    assert "anatomy phantom" in capsys.readouterr().out
    assert demo.ensure_data(tmp_path / "data") == knee
    assert "reusing the synthetic data" in capsys.readouterr().out


def test_demo_without_the_anatomy_extra_says_what_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(demo, "DATA_SPEC", TINY_ANATOMY_SPEC)
    monkeypatch.setattr(anatomy, "_package_dir", lambda package: None)
    with pytest.raises(demo.DemoError, match=r"pip install fastmri-growth\[anatomy\]"):
        demo.ensure_data(tmp_path / "data")
    assert not (tmp_path / "data").exists()
    assert demo.main(["--out", str(tmp_path / "out")]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "fastmri-growth[anatomy]" in err[0]
