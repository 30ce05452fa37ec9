"""The package's import layering, read from the source (ast) and checked in a fresh interpreter.

From the bottom up: :mod:`fastmri_growth.flags` (argparse helpers, no package
imports); ``growth/`` (the backbone-agnostic engine: pure torch); ``models/``
(the backbones, built on the engine: pure torch); ``pl_modules/`` (Lightning);
``cli/`` (the command lines, on top). A layer imports only from layers below
it, and nothing imports in a cycle.
"""

import ast
import subprocess
import sys
from pathlib import Path
from typing import Dict, Set

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "fastmri_growth"
LIGHTNING = ("pytorch_lightning", "lightning", "lightning_fabric")


def module_imports(source: str, name: str, is_package: bool = False) -> Set[str]:
    """Every module that ``source`` imports, at module level or inside functions.

    Args:
        source: A module's text.
        name: Its dotted name (relative imports are resolved against it).
        is_package: Whether it is a package's ``__init__``.

    Returns:
        Absolute module names; ``from a import b`` gives ``a`` and ``a.b``
        (``b`` may be a submodule).
    """
    package = name if is_package else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)
    return {m for m in out if m}


def package_modules() -> Dict[str, Path]:
    """Dotted name -> file of every module of the package."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def imports_of(name: str, path: Path) -> Set[str]:
    return module_imports(path.read_text(encoding="utf-8"), name, path.name == "__init__.py")


def _within(module: str, prefixes) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _pkg(sub: str) -> str:
    return f"fastmri_growth.{sub}"


#: Layer -> the packages (and third-party roots) it must not import.
FORBIDDEN = {
    "fastmri_growth.growth": [_pkg("models"), _pkg("pl_modules"), _pkg("cli"),
                              _pkg("evaluation"), *LIGHTNING],
    "fastmri_growth.models": [_pkg("pl_modules"), _pkg("cli"), *LIGHTNING],
    "fastmri_growth.pl_modules": [_pkg("cli")],
}


def test_relative_imports_are_resolved():
    found = module_imports("from ..cli.common import x\nfrom . import y\n"
                           "def f():\n    import pytorch_lightning\n",
                           "fastmri_growth.pl_modules.mod")
    assert {"fastmri_growth.cli.common", "fastmri_growth.cli.common.x",
            "fastmri_growth.pl_modules.y", "pytorch_lightning"} <= found


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_only_from_below(layer):
    bad = {}
    for name, path in package_modules().items():
        if _within(name, [layer]):
            wrong = sorted(m for m in imports_of(name, path) if _within(m, FORBIDDEN[layer]))
            if wrong:
                bad[path.relative_to(REPO).as_posix()] = wrong
    assert not bad, f"{layer} must import nothing from {FORBIDDEN[layer]}: {bad}"


def test_flags_import_nothing_from_the_package():
    path = PACKAGE / "flags.py"
    found = sorted(m for m in imports_of("fastmri_growth.flags", path)
                   if _within(m, ["fastmri_growth"]))
    assert found == []


def test_no_import_cycles():
    modules = package_modules()
    graph = {name: {m for m in imports_of(name, path) if m in modules and m != name}
             for name, path in modules.items()}
    # A package's __init__ that re-exports its submodules is not a cycle with them.
    for name in graph:
        graph[name] = {m for m in graph[name] if not name.startswith(m + ".")}
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycle = stack[stack.index(nxt):] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_engine_and_backbones_load_no_lightning_and_no_fastmri():
    """What the source says, checked at run time: no import reaches them indirectly."""
    code = ("import sys, fastmri_growth.models, fastmri_growth.growth; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            f"{LIGHTNING + ('fastmri',)!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=REPO, timeout=120).stdout.strip()
    assert out == "[]", out
