"""The README's python examples run as written and print what their comments say.

Every python block of the README starts with ``# example: <tag>``. A
``print(...)`` statement with a comment on its line claims its output: the
comment is the printed text (one line), up to an optional explanation after
a second ``  # ``. In a claim, ``...`` stands for any text, an integer must be
printed exactly, a float may differ by 1 % (a claimed 0 is exact), and ``~X``
means the same order of magnitude (X/10 to 10X). Such a print must run exactly once.
The examples run as scripts in which those prints also record their text
(:func:`instrumented`), and :func:`check_claims` compares.
"""

import ast
import io
import json
import math
import os
import re
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"

#: The test that runs each README example (all of them check its claims).
EXAMPLES = {
    "model": "test_readme_model_example_runs",
    "lightning module": "test_readme_lightning_example_runs",
    "varnet": "test_readme_varnet_example_prints_what_it_claims",
    "add a growth method": "test_readme_growth_method_example_trains_through_the_callback",
    "add a backbone": "test_readme_backbone_example_grows_exactly_and_in_a_lightning_fit",
    "own Lightning module": "test_readme_backbone_example_grows_exactly_and_in_a_lightning_fit",
    "register a model type": "test_readme_model_type_example_adds_a_model_type_to_the_command_line",
    "depth": "test_readme_depth_example_prints_what_it_claims",
}

_NUMBER = r"-?\d+(?:\.\d+)?(?:e[+-]?\d+)?"
# A number in a claim: not part of a name such as conv1 or down_0.
_CLAIM_TOKEN = re.compile(rf"\.\.\.|(?<![\w.])~?{_NUMBER}(?![\w.])")


def python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def readme_example(tag):
    """The README python block whose first line is ``# example: <tag>``."""
    (block,) = [b for b in python_blocks() if b.startswith(f"# example: {tag}\n")]
    return block


def claims_of(block):
    """``{line number: claim}`` of the block's commented ``print(...)`` statements."""
    comments = {tok.start[0]: tok.string[1:].strip()
                for tok in tokenize.generate_tokens(io.StringIO(block).readline)
                if tok.type == tokenize.COMMENT}
    out = {}
    for node in ast.walk(ast.parse(block)):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call) and \
                isinstance(node.value.func, ast.Name) and node.value.func.id == "print" and \
                node.lineno in comments:
            out[node.lineno] = comments[node.lineno].split("  # ")[0].strip()
    return out


class _RecordPrints(ast.NodeTransformer):
    def __init__(self, tag, lines):
        self.tag, self.lines = tag, lines

    def visit_Expr(self, node):
        call = node.value
        if node.lineno in self.lines and isinstance(call, ast.Call) and \
                isinstance(call.func, ast.Name) and call.func.id == "print":
            call.func = ast.Name("__readme_print__", ast.Load())
            call.args = [ast.Constant(self.tag), ast.Constant(node.lineno), *call.args]
        return node


_PRELUDE = """
def __readme_print__(tag, line, *args, **kwargs):
    import io as _io, json as _json, os as _os
    text = _io.StringIO()
    print(*args, file=text, **{k: v for k, v in kwargs.items() if k != "file"})
    print(*args, **kwargs)
    with open(_os.environ["README_PRINTS"], "a", encoding="utf-8") as f:
        f.write(_json.dumps([tag, line, text.getvalue().rstrip("\\n")]) + "\\n")
"""


def instrumented(tag):
    """The example's source, its claimed prints recording what they print."""
    block = readme_example(tag)
    tree = _RecordPrints(tag, set(claims_of(block))).visit(ast.parse(block))
    return ast.unparse(ast.fix_missing_locations(tree)) + "\n"


def run_example(cwd, source, *tags):
    """Run ``source`` (built from the examples ``tags``) as a script in ``cwd``; check
    every claim of those examples. Returns the CompletedProcess."""
    prints = Path(cwd) / "readme_prints.jsonl"
    prints.unlink(missing_ok=True)
    script = Path(cwd) / "readme_example.py"
    script.write_text(_PRELUDE + source, encoding="utf-8")
    proc = subprocess.run([sys.executable, script.name], capture_output=True, text=True,
                          timeout=300, cwd=cwd, env=dict(os.environ, README_PRINTS=str(prints)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in prints.read_text(encoding="utf-8").splitlines()] \
        if prints.exists() else []
    for tag in tags:
        check_claims(tag, records)
    return proc


def claim_matches(claim, printed):
    """Whether ``printed`` is what ``claim`` says (see the module docstring)."""
    pattern, numbers, pos = "", [], 0
    for m in _CLAIM_TOKEN.finditer(claim):
        pattern += re.escape(claim[pos:m.start()])
        token = m.group()
        if token == "...":
            pattern += ".*?"
        elif re.fullmatch(r"-?\d+", token):
            pattern += re.escape(token)
        else:
            pattern += f"({_NUMBER})"
            numbers.append(token)
        pos = m.end()
    pattern += re.escape(claim[pos:])
    found = re.fullmatch(pattern, printed)
    if found is None:
        return False
    for want, got in zip(numbers, map(float, found.groups())):
        if want.startswith("~"):
            w = float(want[1:])
            if not (w / 10 <= abs(got) <= w * 10 if w else got == 0):
                return False
        elif not math.isclose(got, float(want), rel_tol=0.01):
            return False
    return True


def check_claims(tag, records):
    """Every claimed print of example ``tag`` ran once and printed what it claims."""
    claims = claims_of(readme_example(tag))
    for line, claim in claims.items():
        printed = [text for t, n, text in records if t == tag and n == line]
        assert len(printed) == 1, (
            f"README example {tag!r}, line {line}: the claimed print ran {len(printed)} times")
        assert claim_matches(claim, printed[0]), (
            f"README example {tag!r}, line {line}: prints {printed[0]!r}, its comment says "
            f"{claim!r}")


def test_every_python_block_is_a_tagged_example_that_a_test_runs():
    tags = []
    for block in python_blocks():
        first = block.splitlines()[0]
        assert first.startswith("# example: "), f"untagged README python block: {first!r}"
        tags.append(first[len("# example: "):])
    assert sorted(tags) == sorted(EXAMPLES)
    tests = {name for name in globals() if name.startswith("test_")}
    assert set(EXAMPLES.values()) <= tests


@pytest.mark.parametrize("claim, printed, ok", [
    ("Selected candidate 4 (score 0.02611), 64 -> 65 filters",
     "Selected candidate 4 (score 0.02612), 64 -> 65 filters", True),
    ("Selected candidate 4 (score 0.02611), 64 -> 65 filters",
     "Selected candidate 5 (score 0.02611), 64 -> 65 filters", False),
    ("(score 0.02611)", "(score 0.0300)", False),
    ("{'conv1_out': 26, 'conv2_out': 24}", "{'conv1_out': 26, 'conv2_out': 24}", True),
    ("{'conv1_out': 26, 'conv2_out': 24}", "{'conv1_out': 6, 'conv2_out': 18}", False),
    ("3e-07", "0e+00", False), ("0e+00", "0e+00", True), ("0.1312", "0.1313", True),
    ("~3e-06", "3e-07", True), ("~3e-06", "4e-08", False), ("0e+00", "3e-05", False),
    ("Growing sens/down_0 conv2: Selected candidates [...], 4 -> 6 filters",
     "Growing sens/down_0 conv2: Selected candidates [6, 18], 4 -> 6 filters", True),
    ("Growing cascade_1/bottleneck conv1: ...", "Growing cascade_0/bottleneck conv1: x", False),
])
def test_claims_compare_text_integers_and_floats(claim, printed, ok):
    assert claim_matches(claim, printed) is ok


def test_claims_of_reads_the_comment_of_each_print_and_drops_explanations():
    block = ("x = 1  # not a print\nprint(x)  # 1  # why\nprint(2)\n"
             "for i in range(2):\n    print(i)  # 0\n")
    assert claims_of(block) == {2: "1", 5: "0"}


def test_readme_model_example_runs(tmp_path):
    proc = run_example(tmp_path, instrumented("model"), "model")
    lines = proc.stdout.splitlines()
    assert re.match(r"Growing bottleneck conv1: Selected candidate \d+ \(score [0-9.e-]+\), "
                    r"64 -> 65 filters$", lines[0]), lines
    assert re.match(r"Growing down_0 conv2: Split filter \d+ \(grad norm [0-9.e-]+\), "
                    r"8 -> 9 filters$", lines[1]), lines


def test_readme_depth_example_prints_what_it_claims(tmp_path):
    proc = run_example(tmp_path, instrumented("depth"), "depth")
    assert proc.stdout.splitlines()[1] == "0e+00"  # the output is unchanged at insertion


def test_readme_lightning_example_runs(tmp_path):
    from fastmri_growth.data.synthetic import generate_dataset

    generate_dataset(tmp_path / "data", num_volumes={"train": 2, "val": 1, "test": 1,
                                                     "challenge": 1},
                     num_slices=2, recon_size=32)
    # growth_interval=2 from epoch 1 in 4 epochs: the bottleneck grew twice (the claim).
    run_example(tmp_path, instrumented("lightning module"), "lightning module")
    assert list((tmp_path / "runs" / "lib").rglob("*.ckpt"))


def test_readme_varnet_example_prints_what_it_claims(tmp_path):
    run_example(tmp_path, instrumented("varnet"), "varnet")


def test_readme_growth_method_example_trains_through_the_callback(tmp_path):
    """The 'add a growth method' example: registered, then grown with in a Lightning fit."""
    from fastmri_growth.data.synthetic import generate_dataset

    generate_dataset(tmp_path / "data", challenges=("knee_singlecoil",), splits=("train",),
                     num_volumes=2, num_slices=2, recon_size=32)
    script = instrumented("add a growth method") + '''
import pytorch_lightning as pl
import torch
from fastmri.data import SliceDataset
from fastmri.data.subsample import RandomMaskFunc
from fastmri.data.transforms import UnetDataTransform
from fastmri_growth.growth import METHODS
from fastmri_growth.pl_modules import DynamicUnetModule

assert METHODS["orthogonal"] is Orthogonal
mask = RandomMaskFunc([0.08], [4])
data = SliceDataset("data/knee/singlecoil_train", challenge="singlecoil", use_dataset_cache=False,
                    transform=UnetDataTransform("singlecoil", mask_func=mask, use_seed=True))
loader = torch.utils.data.DataLoader(data, batch_size=1)
module = DynamicUnetModule(chans=2, num_pool_layers=2, growth_method="orthogonal", n_new=2,
                           layers_to_grow=["down_0:0"])
old_rows = module.unet.conv_layer("down_0", 0).weight.detach().flatten(1).clone()
trainer = pl.Trainer(max_epochs=2, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, limit_train_batches=2)
trainer.fit(module, loader)
(report,) = module.growth_reports
print(report)
w = module.unet.conv_layer("down_0", 0).weight.detach().flatten(1)
params = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
print(w.shape[0], all(id(p) in params for p in module.parameters()))
'''
    proc = run_example(tmp_path, script, "add a growth method")
    lines = proc.stdout.strip().splitlines()
    assert "Growing down_0 conv1: Added 2 orthogonal filter(s), 2 -> 4 filters" in lines
    assert lines[-1] == "4 True"


def test_readme_backbone_example_grows_exactly_and_in_a_lightning_fit(tmp_path):
    """The 'add a backbone' example prints its report and True (output unchanged);
    the same network then grows under GrowthCallback in a user's LightningModule,
    scores equal brute force, and a checkpoint resumes at the grown width."""
    script = instrumented("add a backbone") + '''
import pytorch_lightning as pl
from fastmri_growth.growth import brute_force_scores_at, generate_candidates
from fastmri_growth.growth import score_candidates_at
from fastmri_growth.pl_modules import GrowthCallback

net64 = TwoLayerNet().double()
xd, yd = x.double(), y.double()
site = Site("hidden", 0)
cands = generate_candidates(net64.site_spec(site), 5, torch.Generator().manual_seed(0))
loss_of = lambda m: (lambda b: F.l1_loss(m(b[0]), b[1]))
one = score_candidates_at(net64, site, cands, [(xd, yd)], loss_of(net64))
brute = brute_force_scores_at(net64, site, cands, [(xd, yd)], loss_of)
print("scores", float(((one - brute).abs() / brute.abs()).max()) < 1e-12)

''' + instrumented("own Lightning module") + '''
(growth,) = [c for c in trainer.callbacks if isinstance(c, GrowthCallback)]
opt_params = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
print("resumed", resumed.net.get_network_size()["hidden"]["conv1_out"],
      growth.schedule.state["grown_epochs"], all(id(p) in opt_params for p in resumed.parameters()))
'''
    proc = run_example(tmp_path, script, "add a backbone", "own Lightning module")
    lines = proc.stdout.strip().splitlines()
    assert "scores True" in lines
    # The checkpoint (epoch 2, width 8, grown at 1 and 2) resumes grown; epoch 3 grows once more,
    # with every parameter in the optimizer (the README's claim: width 10).
    assert lines[-1] == "resumed 10 [1, 2, 3] True"


def test_readme_model_type_example_adds_a_model_type_to_the_command_line(tmp_path):
    """The 'register a model type' example: a registry entry is a --model-type."""
    run_example(tmp_path, instrumented("register a model type"), "register a model type")


def test_every_fault_table_row_names_tests_that_exist():
    """Each row of README's fault table is a test: its named test functions exist."""
    import re

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    table = readme.split("### Fault table", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    rows = rows[1:]  # the header
    assert len(rows) >= 25
    for row in rows:
        cell = row.rstrip(" |").rsplit(" | ", 1)[-1]
        names = re.findall(r"`([\w/]+\.py)?(?:::(\w+))?`", cell)
        assert names, row
        current = None
        for path, name in names:
            current = path or current
            assert current, row
            source = (Path(__file__).resolve().parent / current).read_text()
            if name:
                assert re.search(rf"^def {name}\(", source, re.M), (current, name)
