"""The package's layers import one way, down (ARCHITECTURE.md):

    io < core < tasks < run < results < study < eval < perf < cli

Every ``import`` of an ftstudy module, at the top of a file or inside a function, is checked;
and the torch-free layers are imported in a fresh interpreter to check that torch stays out.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "ftstudy"
LAYERS = ["io", "core", "tasks", "run", "results", "study", "eval", "perf", "cli"]
# The `python -m ftstudy.<cmd>` modules belong to the command line, the top layer.
COMMAND_MODULES = {"train", "ablate", "demo", "evaluate", "benchmark", "harness", "data", "notebooks", "claims", "calibrate",
                   "gpucheck", "verdicts"}


def layer_of(module: str) -> int:
    """Layer of a dotted module name under ftstudy ("ftstudy" itself: the bottom)."""
    parts = module.split(".")
    if len(parts) == 1:
        return 0
    head = parts[1]
    if head in COMMAND_MODULES or head in ("cli", "__main__") or module == "ftstudy.perf.__main__":
        return LAYERS.index("cli")
    if head not in LAYERS:
        raise AssertionError(f"{module} is in no layer; allowed top-level names: {LAYERS}")
    return LAYERS.index(head)


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every ftstudy import in a file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "ftstudy"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and node.module.split(".")[0] == "ftstudy":
            if node.module == "ftstudy":  # from ftstudy import x: x is a subpackage or module
                out += [(node.lineno, f"ftstudy.{a.name}") for a in node.names if a.name != "__version__"]
            else:
                out.append((node.lineno, node.module))
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            raise AssertionError(f"{path}:{node.lineno}: relative import; write ftstudy.… in full")
    return out


def test_every_import_goes_down():
    violations = []
    files = sorted(PKG.rglob("*.py"))
    assert len(files) > 30
    for path in files:
        mod = module_name(path)
        own = layer_of(mod)
        for line, target in imported_modules(path):
            if layer_of(target) > own:
                violations.append(f"{path.relative_to(PKG.parent)}:{line}: {mod} ({LAYERS[own]}) imports "
                                  f"{target} ({LAYERS[layer_of(target)]})")
    assert violations == []


def test_the_check_fails_on_an_upward_import(tmp_path):
    bad = tmp_path / "ftstudy" / "core" / "bad.py"
    bad.parent.mkdir(parents=True)
    bad.write_text("def f():\n    from ftstudy.run.train import main\n")
    (line, target), = imported_modules(bad)
    assert (line, target) == (2, "ftstudy.run.train")
    assert layer_of(target) > layer_of("ftstudy.core.bad")
    with pytest.raises(AssertionError, match="in no layer"):
        layer_of("ftstudy.misc")


@pytest.mark.parametrize("modules", [
    ["ftstudy.io"],
    ["ftstudy.results.report", "ftstudy.results.plots", "ftstudy.results.claims", "ftstudy.results.notebooks",
     "ftstudy.results.verdicts", "ftstudy.tasks.agreement", "ftstudy.tasks.figure4"],
])
def test_torch_free_layers(modules):
    code = f"import sys\nfor m in {modules!r}:\n    __import__(m)\nprint('torch' in sys.modules)\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
