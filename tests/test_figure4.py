"""The transcribed Figure 4 of the paper and its reader (ftstudy.tasks.figure4)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ftstudy.tasks import agreement, synthetic
from ftstudy.tasks.figure4 import LATE_POSITION, REFERENCE, FigurePanel, panel_stats, read_figure4


@pytest.fixture(scope="module")
def panels() -> dict[float, FigurePanel]:
    return {p.kappa_bits: p for p in read_figure4()}


def test_the_file_ships_with_the_repo_and_cites_the_paper():
    assert REFERENCE.is_file()
    header = "".join(line for line in REFERENCE.read_text().splitlines(keepends=True) if line.startswith("#"))
    assert "2510.17558" in header and "Figure 4" in header


def test_four_panels_of_three_groups_of_five(panels):
    assert list(panels) == [1 / 64, 1 / 8, 1.0, 8.0]
    assert all(len(p.groups) == 3 and all(len(g) == 5 for g in p.groups) for p in panels.values())
    strings = [s for p in panels.values() for s in p.table().strings]
    assert len(strings) == 60 and all(len(s) == synthetic.SEQ_LEN for s in strings)


def test_table_marks_group_zero_independent(panels):
    t = panels[1 / 8].table()
    assert t.group.tolist() == [0] * 5 + [1] * 5 + [2] * 5
    assert t.shared.tolist() == [False] * 5 + [True] * 10


def test_checker_accepts_small_kappa_and_rejects_kappa_8(panels):
    for kappa, p in panels.items():
        valid = p.table().valid
        assert valid.all() if kappa <= 1 else not valid.any(), kappa


def test_kappa_one_64th_panel(panels):
    stats = panel_stats(panels[1 / 64])
    assert stats["n"] == 15 and stats["valid_rate"] == 1.0
    assert stats["noise_per_char"] == 7 / 960
    assert stats["late_fraction"] == 1.0
    assert LATE_POSITION == 32


def test_kappa_8_panel_has_no_late_fraction(panels):
    stats = panel_stats(panels[8.0])
    assert stats["valid_rate"] == 0.0 and math.isnan(stats["late_fraction"])


def test_kappa_one_8th_agreement(panels):
    s = agreement.agreement_summary([panels[1 / 8].table()])
    assert s["groups_shared"] == 2 and s["groups_independent"] == 1
    assert s["exact_shared"] == pytest.approx(0.30)
    assert s["within2_shared"] == pytest.approx(1.00)
    assert s["exact_independent"] == pytest.approx(0.00)
    assert s["within2_independent"] == pytest.approx(0.10)
    # One seed, two shared groups of equal agreement (0.3 each): the interval is the point.
    assert s["exact_shared_ci_low"] == pytest.approx(0.30) and s["exact_shared_ci_high"] == pytest.approx(0.30)


HEAD = "# a comment\n\n"
SEQ = "A>" + "A" * 8 + "_" * 56


@pytest.mark.parametrize("text, line, match", [
    (HEAD + SEQ + "\n", 3, "before any"),
    (HEAD + "kappa_bits 1\n" + SEQ[:-1] + "\n", 4, "66 characters"),
    (HEAD + "kappa_bits 1\n" + SEQ + "_\n", 4, "66 characters"),
    (HEAD + "kappa_bits one\n" + SEQ + "\n", 3, "kappa_bits <number>"),
    (HEAD + "kappa_bits\n" + SEQ + "\n", 3, "kappa_bits <number>"),
    (HEAD + "kappa_bits -1\n" + SEQ + "\n", 3, ">= 0"),
    (HEAD + "kappa_bits 1\n" + SEQ[:-1] + "a\n", 4, "vocabulary"),
    (HEAD + "kappa_bits 1\n\nkappa_bits 2\n" + SEQ + "\n", 5, "no sequences"),
])
def test_malformed_files_name_file_and_line(tmp_path, text, line, match):
    path = tmp_path / "fig.txt"
    path.write_text(text)
    with pytest.raises(ValueError, match=match) as e:
        read_figure4(path)
    assert f"{path}:{line}:" in str(e.value)


def test_blank_lines_separate_groups(tmp_path):
    path = tmp_path / "fig.txt"
    path.write_text(f"kappa_bits 0.5\n\n{SEQ}\n{SEQ}\n\n\n{SEQ}\n\n")
    (panel,) = read_figure4(path)
    assert panel.kappa_bits == 0.5 and [len(g) for g in panel.groups] == [2, 1]
    assert np.array_equal(panel.table().position, [0, 0, 0])
