"""The pinned environment is consistent across requirements.txt, environment.yml,
constraints.txt and pyproject.toml, and CI runs `make test`."""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
TORCH_VERSION = "2.13.0"

_PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*(?P<version>[^\s;#]+)$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*")


def normalize(name: str) -> str:
    """PEP 503 name normalisation."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_pins(lines: list[str], source: str) -> dict[str, str]:
    """Map normalised name -> exact version for requirement lines.

    Blank lines, comments and pip options (-c, -r, -e, --...) are skipped; any other line
    that is not `name==version` fails, as does a name listed twice.
    """
    pins: dict[str, str] = {}
    for raw in lines:
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#") or line.startswith("-"):
            continue
        m = _PIN.match(line)
        if m is None:
            raise AssertionError(f"{source}: {raw!r} is not pinned exactly with ==")
        name = normalize(m["name"])
        if name in pins:
            raise AssertionError(f"{source}: {m['name']} is listed twice")
        pins[name] = m["version"]
    return pins


def pin_differences(a: dict[str, str], b: dict[str, str]) -> list[str]:
    """Human-readable differences between two pin sets (empty when identical)."""
    diffs = []
    for name in sorted(a.keys() | b.keys()):
        if a.get(name) != b.get(name):
            diffs.append(f"{name}: {a.get(name)} != {b.get(name)}")
    return diffs


def requirements_pins() -> dict[str, str]:
    path = ROOT / "requirements.txt"
    return parse_pins(path.read_text().splitlines(), path.name)


def constraints_pins() -> dict[str, str]:
    path = ROOT / "constraints.txt"
    return parse_pins(path.read_text().splitlines(), path.name)


def environment_pip_lines() -> list[str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_sections = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip_sections) == 1, "environment.yml needs exactly one pip: section"
    return [str(x) for x in pip_sections[0]]


def environment_pins() -> dict[str, str]:
    return parse_pins(environment_pip_lines(), "environment.yml")


def test_parse_pins_and_differences_detect_mismatches():
    a = parse_pins(["Foo_Bar==1.0  # comment", "-c constraints.txt", "", "torch==2.13.0"], "a")
    b = parse_pins(["foo.bar==1.1", "torch==2.13.0"], "b")
    assert a == {"foo-bar": "1.0", "torch": "2.13.0"}
    assert pin_differences(a, b) == ["foo-bar: 1.0 != 1.1"]
    assert pin_differences(a, {"torch": "2.13.0"}) == ["foo-bar: 1.0 != None"]
    with pytest.raises(AssertionError, match="not pinned"):
        parse_pins(["numpy>=2"], "x")
    with pytest.raises(AssertionError, match="twice"):
        parse_pins(["numpy==2.0", "NumPy==2.0"], "x")


def test_requirements_match_environment_yml():
    req, env = requirements_pins(), environment_pins()
    assert req, "requirements.txt lists no requirements"
    assert pin_differences(req, env) == []


def test_environment_yml_installs_project_with_the_lock():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert "python=3.11" in env["dependencies"]
    lines = environment_pip_lines()
    assert "-e ." in lines
    assert "-c constraints.txt" in lines


def test_direct_requirements_pinned_identically_in_constraints():
    req, lock = requirements_pins(), constraints_pins()
    diffs = [f"{name}: requirements {v} != constraints {lock.get(name)}"
             for name, v in sorted(req.items()) if lock.get(name) != v]
    assert diffs == []


def test_constraints_do_not_lock_the_project_itself():
    assert "ftstudy" not in constraints_pins()


def test_torch_pinned_to_2_13_0_everywhere():
    assert requirements_pins().get("torch") == TORCH_VERSION
    assert environment_pins().get("torch") == TORCH_VERSION
    assert constraints_pins().get("torch") == TORCH_VERSION
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert f"torch=={TORCH_VERSION}" in [d.replace(" ", "") for d in deps]


def test_pyproject_declares_the_same_direct_dependencies():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] == "ftstudy"
    names = {normalize(_NAME.match(d.strip())[0]) for d in project["dependencies"]}
    assert names == set(requirements_pins())


def test_ci_run_calls_make_test():
    path = ROOT / ".ci" / "run"
    assert os.access(path, os.X_OK), ".ci/run must be executable"
    lines = [ln.split("#", 1)[0].strip() for ln in path.read_text().splitlines()[1:]]
    assert "set -euo pipefail" in lines
    assert "make test" in lines
