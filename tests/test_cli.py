"""The ``ftstudy`` command, ``python -m ftstudy CMD`` and the thin ``python -m ftstudy.<cmd>`` modules."""
from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from ftstudy import cli

PKG = Path(cli.__file__).parent
#: root modules that hold code rather than a command
NOT_COMMANDS = {"__init__", "__main__", "cli", "io"}


def _shims() -> list[Path]:
    return sorted(p for p in PKG.glob("*.py") if p.stem not in NOT_COMMANDS)


@pytest.mark.parametrize("path", _shims(), ids=lambda p: p.stem)
def test_root_module_is_only_an_entry_to_a_command(path: Path) -> None:
    tree = ast.parse(path.read_text())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "entry"]
    assert len(calls) == 1, f"{path.name} should call ftstudy.cli.entry once"
    command = calls[0].args[0].value
    assert command in cli.COMMANDS
    body = [n for n in tree.body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
    assert len(body) == 2, f"{path.name} holds code beyond its entry"  # the import and the call


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_every_command_has_a_main(command: str) -> None:
    module = importlib.import_module(cli.COMMANDS[command][0])
    assert callable(module.main)


def test_unknown_command_names_it_and_lists_the_allowed(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["trian"]) == 2
    err = capsys.readouterr().err
    assert "'trian'" in err and "train" in err and "ablate" in err


def test_python_dash_m_ftstudy_runs_a_subcommand() -> None:
    out = subprocess.run([sys.executable, "-m", "ftstudy", "train", "--help"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "--preset" in out.stdout
    listing = subprocess.run([sys.executable, "-m", "ftstudy"], capture_output=True, text=True, timeout=60)
    assert listing.returncode == 2 and "commands:" in listing.stdout
