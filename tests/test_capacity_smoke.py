"""benchmarks/capacity.py runs end to end at a tiny size (its figures are not checked)."""
from benchmarks import capacity


def test_capacity_benchmark_plumbing(tmp_path, capsys):
    res = capacity.run(tmp_path, phantom="textured", chans=(2, 4), seeds=(0,), quick=True)
    assert [(r["chans"], r["seed"]) for r in res["runs"]] == [(2, 0), (4, 0)]
    for r in res["runs"]:
        assert r["params"] > 0 and r["train_l1"] > 0 and r["val_l1"] > 0
        assert r["val_psnr"] > 0
    assert set(res["zero_filled_l1"]) == {"train", "val"}
    table = capacity.table(res)
    assert table.count("\n| ") == 2  # one row per width below the header
    assert "Per seed, chans 4 minus chans 2" in table
    assert (tmp_path / "capacity_textured" / "knee" / "singlecoil_val").is_dir()
