"""The notebooks run top to bottom on the committed results, say what is missing instead of
failing, and are committed with their outputs."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat
import pytest

from ftstudy.results.notebooks import INJECTED_TAG, NOTEBOOK_DIR, NotebookError, inject, parse_params

NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9]*.ipynb"))
EXPECTED = ["01_synthetic_task", "02_kl_budget", "03_injection_depth", "04_benchmarks", "05_training_dynamics",
            "06_performance"]


def _run_all(params: list[str], tmp: Path) -> list[tuple[Path, subprocess.CompletedProcess]]:
    """Each notebook in its own `python -m ftstudy.notebooks run` process, two at a time
    (one per core); the executed copies go to ``tmp/executed``."""
    def one(nb: Path) -> tuple[Path, subprocess.CompletedProcess]:
        cmd = [sys.executable, "-m", "ftstudy.results.notebooks", "run", str(nb), "--output-dir", str(tmp / "executed"),
               *[f"--param={p}" for p in params]]
        return nb, subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp)
    with ThreadPoolExecutor(2) as pool:
        return list(pool.map(one, NOTEBOOKS))


def test_the_six_notebooks_exist_and_are_committed_with_outputs() -> None:
    assert [p.stem for p in NOTEBOOKS] == EXPECTED
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1 and "RESULTS" in tagged[0].source, path
        assert not any(INJECTED_TAG in c.metadata.get("tags", []) for c in code), f"{path}: injected cell committed"
        assert all(c.execution_count is not None for c in code), f"{path}: not executed before commit"
        assert not any(o.get("output_type") == "error" for c in code for o in c.outputs), f"{path}: error output"
        images = sum("image/png" in o.get("data", {}) for c in code for o in c.outputs)
        assert images >= 1, f"{path}: no figure rendered"
        text = "".join(str(o.get("data", {}).get("text/markdown", "")) + o.get("text", "")
                       for c in code for o in c.outputs)
        assert "Missing result" not in text, f"{path}: committed with a missing result"


def test_notebooks_run_on_the_committed_results(tmp_path: Path) -> None:
    figs = tmp_path / "figs"
    for nb, proc in _run_all([f"FIG_DIR={figs}"], tmp_path):
        assert proc.returncode == 0, f"{nb.name}:\n{proc.stderr[-3000:]}"
    names = {p.name for p in figs.glob("*.png")}
    assert any(n.startswith("06_suite_") for n in names), sorted(names)
    for prefix in ("01_figure4_quick_s0", "02_kl_budget", "03_injection_depth", "04_benchmarks_s0", "04_bench_suite",
                   "04_decide_curves", "06_mapper"):
        assert f"{prefix}.png" in names, sorted(names)
    # A study's own figures (ablate --plot writes them: StudyDir.figure) are shown, not saved again.
    assert not names & {"02_agreement_position_paper.png", "02_agreement_position_t1.png",
                        "05_dynamics_kl_budget.png", "05_dynamics_long.png"}, sorted(names)


def test_notebooks_name_the_missing_results_and_the_command(tmp_path: Path) -> None:
    empty = tmp_path / "empty-results"
    empty.mkdir()
    for nb, proc in _run_all([f"RESULTS={empty}", f"FIG_DIR={tmp_path / 'figs'}"], tmp_path):
        assert proc.returncode == 0, f"{nb.name} failed instead of reporting missing results:\n{proc.stderr[-3000:]}"
    for path in NOTEBOOKS:
        nb = nbformat.read(tmp_path / "executed" / path.name, as_version=4)
        said = "".join(str(o.get("data", {}).get("text/markdown", "")) for c in nb.cells if c.cell_type == "code"
                       for o in c.outputs)
        assert "Missing result" in said and str(empty) in said and "python -m ftstudy." in said, path.name
        assert not list((tmp_path / "figs").glob(f"{path.stem[:2]}_*.png")), "a figure drawn from nothing"


def test_parameter_injection_and_bad_parameters() -> None:
    nb = nbformat.read(NOTEBOOK_DIR / "02_kl_budget.ipynb", as_version=4)
    n = len(nb.cells)
    inject(nb, {"RESULTS": "/x"})
    inject(nb, {"RESULTS": "/y"})  # replaces, does not stack
    injected = [i for i, c in enumerate(nb.cells) if INJECTED_TAG in c.metadata.get("tags", [])]
    params = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(nb.cells) == n + 1 and injected == [params[0] + 1]
    assert "RESULTS = '/y'" in nb.cells[injected[0]].source
    with pytest.raises(NotebookError, match="unknown parameter.*RESULT"):
        inject(nb, {"RESULT": "/x"})
    with pytest.raises(NotebookError, match="NAME=VALUE"):
        parse_params(["RESULTS"])
    from ftstudy.results.notebooks import main
    assert main(["run", "notebooks/nope.ipynb"]) == 2
