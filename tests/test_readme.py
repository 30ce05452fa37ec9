"""The README's model example runs as written."""

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_model_example_runs(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    assert blocks, "README.md has no python example"
    script = tmp_path / "example.py"
    script.write_text(blocks[0], encoding="utf-8")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert re.match(r"Growing bottleneck conv1: Selected candidate \d+ \(score [0-9.e-]+\), "
                    r"64 -> 65 filters$", lines[0]), lines
    assert re.match(r"Growing down_0 conv2: Split filter \d+ \(grad norm [0-9.e-]+\), "
                    r"8 -> 9 filters$", lines[1]), lines
    assert lines[3] == "{'conv1_out': 65, 'conv2_out': 64}"


def test_readme_lightning_example_runs(tmp_path):
    from fastmri_growth.data.synthetic import generate_dataset

    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    example = next(b for b in blocks if "DynamicUnetModule(" in b)
    generate_dataset(tmp_path / "data", num_volumes={"train": 2, "val": 1, "test": 1,
                                                     "challenge": 1},
                     num_slices=2, recon_size=32)
    script = tmp_path / "lightning_example.py"
    script.write_text(example, encoding="utf-8")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # growth_interval=2 from epoch 1 in 4 epochs: the bottleneck grew twice.
    assert proc.stdout.strip().splitlines()[-1] == "{'conv1_out': 66, 'conv2_out': 66}"
    assert list((tmp_path / "runs" / "lib").rglob("*.ckpt"))
