"""The generated tables of the README and docs/ come from the committed result files and cannot
drift; the README stays a front page whose links resolve."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import pytest

from ftstudy.results.claims import (ANSWER_BEGIN, BEGIN, BLOCKS, CLAIMS, DECIDE_BEGIN, GPU_DIR, PAGES, PERF_BEGIN, PERF_DIR,
                                    REPO_ROOT, VERDICTS, ClaimError, answer_table, claims_table, main, perf_tables)

README = REPO_ROOT / "README.md"
DOCS = [REPO_ROOT / p for p in PAGES]
#: Every page a user reads: the README, ARCHITECTURE.md and docs/.
USER_PAGES = [README, REPO_ROOT / "ARCHITECTURE.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]


def test_the_pages_quote_the_results() -> None:
    assert main(["--check"]) == 0
    assert main(["--check", *map(str, DOCS)]) == 0


def test_each_block_lives_on_its_page() -> None:
    """The short answer on the front page, the full tables in docs/."""
    where = {BEGIN: "docs/results.md", PERF_BEGIN: "docs/performance.md", ANSWER_BEGIN: "README.md",
             DECIDE_BEGIN: "results/benchmarks/FINDINGS.md"}
    for marker, page in where.items():
        assert marker in (REPO_ROOT / page).read_text(), (marker, page)
    assert BEGIN not in README.read_text() and PERF_BEGIN not in README.read_text()


def _copy_results(root: Path) -> Path:
    """The result files the pages quote, copied under ``root``."""
    for c in CLAIMS:
        (root / c.source).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO_ROOT / c.source, root / c.source)
    shutil.copytree(REPO_ROOT / PERF_DIR, root / PERF_DIR, dirs_exist_ok=True)
    for suite in (REPO_ROOT / GPU_DIR).glob("*/perf.json"):  # the device checks' suites
        (root / suite.relative_to(REPO_ROOT)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(suite, root / suite.relative_to(REPO_ROOT))
    return root


def _edit_verdicts(root: Path, **change: str) -> None:
    """Set ``change`` on the κ = 8 primary rows of the copied verdicts.csv."""
    verdicts = root / VERDICTS
    with open(verdicts, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        if r["family"] == "primary" and r["claim"].startswith("κ = 8 bits"):
            r.update(change)
    with open(verdicts, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def test_a_changed_result_changes_the_table_and_fails_the_check(tmp_path: Path, capsys) -> None:
    root = _copy_results(tmp_path / "repo")
    assert claims_table(root) == claims_table(REPO_ROOT) and perf_tables(root) == perf_tables(REPO_ROOT)
    assert main(["--check", "--root", str(root)]) == 0
    # κ = 8: change its primary row's estimate in the file; the full table must no longer match.
    _edit_verdicts(root, delta="-0.123")
    assert "valid rate, κ = 8 − baseline -0.123" in claims_table(root)
    assert main(["--check", "--root", str(root)]) == 1
    err = capsys.readouterr().err
    assert "docs/results.md: the claims table differs" in err and "README.md: the answer" not in err


def test_a_changed_verdict_fails_the_readme_answer(tmp_path: Path, capsys) -> None:
    root = _copy_results(tmp_path / "repo")
    _edit_verdicts(root, verdict="inconclusive", k_showing="3")
    row = next(line for line in answer_table(root).splitlines() if "κ = 8 bits: generations" in line)
    assert "**inconclusive** (τ = 0.6)" in row and "| 3 of 10 (τ = 0.6);" in row
    assert main(["--check", "--root", str(root)]) == 1
    assert "README.md: the answer differs" in capsys.readouterr().err


def test_the_answer_links_each_claim_to_its_result_file() -> None:
    table = answer_table(REPO_ROOT)
    assert len(table.splitlines()) == len(CLAIMS) + 2
    for c in CLAIMS:
        assert f"]({c.source})" in table and (REPO_ROOT / c.source).exists()
    assert "](../results/ablate/verdicts.csv)" in answer_table(REPO_ROOT, "../")  # from a docs/ page


def test_a_missing_result_is_named(tmp_path: Path, capsys) -> None:
    with pytest.raises(ClaimError, match="aggregate.csv is missing"):
        claims_table(tmp_path)
    assert main(["--root", str(tmp_path)]) == 2
    page = tmp_path / "README.md"
    page.write_text("no block here\n")
    assert main(["--check", str(page)]) == 2
    assert "claims:begin" in capsys.readouterr().err


def test_a_block_on_no_page_fails(capsys) -> None:
    """Checking the README alone leaves the full tables unchecked: that is an error, not a pass."""
    assert main(["--check", str(README)]) == 2
    err = capsys.readouterr().err
    assert "no page holds the claims table" in err and "performance targets" in err


def test_a_changed_perf_result_fails_the_check(tmp_path: Path, capsys) -> None:
    import json

    root = _copy_results(tmp_path / "repo")
    suite = next(p for p in (root / PERF_DIR).glob("*.json") if "targets" in json.loads(p.read_text()))
    data = json.loads(suite.read_text())
    first = next(t for t in data["targets"] if t["measured"] is not None)
    first["measured"] *= 1.5
    suite.write_text(json.dumps(data))
    assert main(["--check", "--root", str(root)]) == 1
    assert "docs/performance.md: the performance targets differs" in capsys.readouterr().err


def test_every_generated_block_is_checked() -> None:
    assert {b.name for b in BLOCKS} == {"answer", "claims table", "performance targets", "decision benchmark"}


# ---------------------------------------------------------------- the README as a front page


def test_the_readme_is_a_front_page_with_its_test_command() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    # .ci/run runs `make test`; the README's test command must stay that one.
    assert "make test" in (REPO_ROOT / ".ci" / "run").read_text()
    assert re.search(r"(?m)^make test\b", text)


def test_no_issue_numbers_in_user_pages() -> None:
    """Readers cannot look up the project's issue tracker: pages say what a thing is."""
    for page in USER_PAGES:
        hits = re.findall(r"(?i)\bissues? ?#?\d+", page.read_text())
        assert not hits, (page.name, hits)
    for c in CLAIMS:
        assert not re.search(r"(?i)\bissue\b", c.claim), c.claim


def _links(text: str) -> list[str]:
    text = re.sub(r"```.*?```", "", text, flags=re.S)  # code blocks hold commands, not links
    return [t for t in re.findall(r"\]\(([^)\s]+)\)", text) if not re.match(r"[a-z]+:", t)]


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_relative_links_resolve() -> None:
    bad = []
    for page in USER_PAGES:
        for link in _links(page.read_text()):
            path, _, anchor = link.partition("#")
            target = (page.parent / path) if path else page
            if not target.exists():
                bad.append(f"{page.name}: {link}")
            elif anchor and target.suffix == ".md":
                body = re.sub(r"```.*?```", "", target.read_text(), flags=re.S)
                if anchor not in {_anchor(h) for h in re.findall(r"(?m)^#+ (.*)$", body)}:
                    bad.append(f"{page.name}: {link} (no such heading)")
    assert not bad, bad


def test_the_readme_links_every_docs_page() -> None:
    text = README.read_text()
    for page in sorted((REPO_ROOT / "docs").glob("*.md")):
        assert f"(docs/{page.name})" in text, page.name


def test_compiled_gpu_targets_say_not_yet_measured_until_a_gpu_ran_the_stage(tmp_path: Path) -> None:
    from ftstudy.results.claims import compile_targets_table

    assert "not yet measured" in compile_targets_table(tmp_path)
    folder = tmp_path / GPU_DIR / "some-gpu"
    folder.mkdir(parents=True)
    targets = [{"key": "quick_ms", "value": 4.2, "met": True}, {"key": "wide_bf16_mfu", "value": 0.31, "met": False},
               {"key": "kv_speedup", "value": 6.0, "met": True}]
    record = {"status": "done", "targets": targets, "compiler": "disabled (--tiny)"}
    (folder / "compile.json").write_text(json.dumps(record))
    assert "not yet measured" in compile_targets_table(tmp_path)  # a --tiny check measured no compiled code
    del record["compiler"]
    (folder / "compile.json").write_text(json.dumps(record))
    table = compile_targets_table(tmp_path)
    assert "not yet measured" not in table and "some-gpu/compile.json" in table
    assert "| 4.20 | met |" in table and "| 31.0% | **MISSED** |" in table and "| 6.00 | met |" in table


def test_write_rebuilds_a_stale_block_in_place(tmp_path: Path) -> None:
    from ftstudy.results.claims import ANSWER_END, page_blocks, write
    page = tmp_path / "README.md"
    text = README.read_text()
    head, rest = text.split(ANSWER_BEGIN, 1)
    page.write_text(head + ANSWER_BEGIN + "\nstale\n" + ANSWER_END + rest.split(ANSWER_END, 1)[1])
    assert page_blocks(page, ANSWER_BEGIN, ANSWER_END) == ["stale"]
    assert write([page]) == [page]
    assert page_blocks(page, ANSWER_BEGIN, ANSWER_END) == [answer_table(REPO_ROOT)]
    assert page.read_text() == text, "the rest of the page is untouched"
    assert write([page]) == [], "nothing to rewrite the second time"
