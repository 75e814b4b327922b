"""The README's claims table is generated from the committed result files and cannot drift."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ftstudy.results.claims import (CLAIMS, GPU_DIR, PERF_DIR, REPO_ROOT, VERDICTS, ClaimError, claims_table, main,
                                    perf_tables)


def test_readme_quotes_the_results() -> None:
    assert main(["--check", str(REPO_ROOT / "README.md")]) == 0


def _copy_results(root: Path) -> Path:
    """The result files the README quotes, copied under ``root``."""
    for c in CLAIMS:
        (root / c.source).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO_ROOT / c.source, root / c.source)
    shutil.copytree(REPO_ROOT / PERF_DIR, root / PERF_DIR, dirs_exist_ok=True)
    for suite in (REPO_ROOT / GPU_DIR).glob("*/perf.json"):  # the device checks' suites
        (root / suite.relative_to(REPO_ROOT)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(suite, root / suite.relative_to(REPO_ROOT))
    return root


def test_a_changed_result_changes_the_table_and_fails_the_check(tmp_path: Path, capsys) -> None:
    root = _copy_results(tmp_path / "repo")
    assert claims_table(root) == claims_table(REPO_ROOT) and perf_tables(root) == perf_tables(REPO_ROOT)
    assert main(["--check", str(REPO_ROOT / "README.md"), "--root", str(root)]) == 0
    import csv

    verdicts = root / VERDICTS
    with open(verdicts, newline="") as f:
        rows = list(csv.DictReader(f))
    # κ = 8: change its primary row's estimate in the file; the README's number must no longer match.
    for r in rows:
        if r["family"] == "primary" and r["claim"].startswith("κ = 8 bits"):
            r["delta"] = "-0.123"
    with open(verdicts, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    assert "valid rate, κ = 8 − baseline -0.123" in claims_table(root)
    assert main(["--check", str(REPO_ROOT / "README.md"), "--root", str(root)]) == 1
    assert "differs" in capsys.readouterr().err


def test_a_missing_result_is_named(tmp_path: Path, capsys) -> None:
    with pytest.raises(ClaimError, match="aggregate.csv is missing"):
        claims_table(tmp_path)
    assert main(["--root", str(tmp_path)]) == 2
    readme = tmp_path / "README.md"
    readme.write_text("no block here\n")
    assert main(["--check", str(readme)]) == 2
    assert "claims:begin" in capsys.readouterr().err


def test_a_changed_perf_result_fails_the_check(tmp_path: Path, capsys) -> None:
    import json

    root = _copy_results(tmp_path / "repo")
    suite = next(p for p in (root / PERF_DIR).glob("*.json") if "targets" in json.loads(p.read_text()))
    data = json.loads(suite.read_text())
    first = next(t for t in data["targets"] if t["measured"] is not None)
    first["measured"] *= 1.5
    suite.write_text(json.dumps(data))
    assert main(["--check", str(REPO_ROOT / "README.md"), "--root", str(root)]) == 1
    assert "performance targets differs" in capsys.readouterr().err
