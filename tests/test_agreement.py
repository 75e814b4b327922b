"""Tolerant agreement, the groups file, the hierarchical bootstrap and the agreement ceiling
(ftstudy.tasks.agreement)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ftstudy.tasks import agreement as ag
from ftstudy.tasks import synthetic
from ftstudy.tasks.agreement import (N_POSITIONS, GroupTable, Interval, agreement_by_position, agreement_ceiling,
                                     agreement_summary, bound_bits, distance_histogram, format_groups,
                                     group_agreement, group_position, hierarchical_bootstrap, pair_distances,
                                     read_groups, write_groups)
from ftstudy.io import gzip_bytes


def seq(pos: int, letter: str = "A", noise: tuple[int, ...] = ()) -> str:
    body = ["_"] * synthetic.BODY_LEN
    body[pos:pos + synthetic.BLOCK_LEN] = letter * synthetic.BLOCK_LEN
    for i in noise:
        body[i] = "!"
    return f"{letter}>" + "".join(body)


BAD = "A>" + "B" * 64  # invalid: a foreign letter


@pytest.fixture
def table() -> GroupTable:
    strings = [seq(3), seq(5, "C"), BAD, seq(5, noise=(40,)), seq(10), seq(11), seq(10), "short"]
    return GroupTable.from_strings(strings, [0, 0, 0, 1, 1, 1, 2, 2], [False, False, False, True, True, True,
                                                                        False, False])


def test_constants():
    assert ag.TOLERANCES == (0, 1, 2) and N_POSITIONS == 57


# ------------------------------------------------------------------ GroupTable and the groups file


def test_table_from_strings_and_positions(table):
    assert table.valid.tolist() == [True, True, False, True, True, True, True, False]
    assert table.position.tolist() == [3, 5, -1, 5, 10, 11, 10, -1]
    (shared,) = table.positions("shared")
    assert shared.tolist() == [5, 10, 11]
    assert [p.tolist() for p in table.positions("independent")] == [[3, 5]]  # group 2: one valid member
    with pytest.raises(ValueError, match=r"'both'.*shared.*independent|shared.*independent.*'both'"):
        table.positions("both")
    with pytest.raises(ValueError):
        table.position[0] = 1  # read-only


def test_table_refuses_mixed_groups_and_bad_shapes():
    with pytest.raises(ValueError, match="mixes"):
        GroupTable.from_strings([seq(0), seq(1)], [0, 0], [True, False])
    with pytest.raises(ValueError, match="shape"):
        GroupTable.from_strings([seq(0), seq(1)], [0], [True, True])


def test_groups_file_round_trip(table, tmp_path):
    text = format_groups(table)
    assert text.splitlines()[0] == "# group  Z            valid  position  sequence" and text.endswith("\n")
    path = write_groups(table, tmp_path / "groups.txt.gz")
    data = path.read_bytes()
    assert data[:2] == b"\x1f\x8b" and data == gzip_bytes(text)  # gzip, deterministic (mtime 0, no name)
    back = read_groups(path)
    assert back.strings == table.strings
    for name in ("group", "shared", "valid", "position"):
        assert np.array_equal(getattr(back, name), getattr(table, name)), name
    assert format_groups(back) == text
    assert write_groups(back, tmp_path / "again.txt.gz").read_bytes() == data  # rewriting gives the same bytes


def test_uncompressed_groups_file_is_refused(table, tmp_path):
    path = tmp_path / "groups.txt.gz"
    path.write_text(format_groups(table))
    with pytest.raises(ValueError, match="not a gzip-compressed groups file"):
        read_groups(path)


def test_format_reproduces_committed_groups_files():
    """The committed runs' groups files (written by the probe before this module owned the
    format, then compressed) read back and written again byte for byte."""
    from ftstudy.io import REPO_ROOT, RunDir

    files = sorted((REPO_ROOT / "results" / "ablate" / "kl_budget").glob(f"*-s0/{RunDir.GROUPS}"))
    assert len(files) >= 5
    for path in files[:5]:
        assert gzip_bytes(format_groups(read_groups(path))) == path.read_bytes(), path


def test_empty_groups_file(tmp_path):
    empty = GroupTable.from_strings([], [], [])
    assert len(read_groups(write_groups(empty, tmp_path / "groups.txt.gz"))) == 0


@pytest.mark.parametrize("edit, match", [
    (lambda line: line.replace("      5  A>", "      6  A>"), "check_many says"),  # wrong position
    (lambda line: line.replace("  1         5", "  0         5"), "check_many says"),  # wrong verdict
    (lambda line: line[:30], "5 columns"),
    (lambda line: line.replace("shared     ", "joint      "), "kind must be one of"),
    (lambda line: line.replace("    1  shared", "    x  shared"), "integers"),
    (lambda line: line.replace("    1  shared", "    0  shared"), "group 0 is shared"),
])
def test_malformed_groups_file_names_the_line(table, tmp_path, edit, match):
    lines = format_groups(table).splitlines()
    assert lines[4].startswith("    1  shared") and "      5  A>" in lines[4]  # the 4th sequence
    lines[4] = edit(lines[4])
    path = tmp_path / "groups.txt.gz"
    path.write_bytes(gzip_bytes("\n".join(lines) + "\n"))
    with pytest.raises(ValueError, match=match) as e:
        read_groups(path)
    assert f"{path}:5:" in str(e.value)


# ------------------------------------------------------------------ agreement


def test_pair_agreement_and_histogram_against_a_double_loop():
    rng = np.random.default_rng(1)
    groups = [rng.integers(0, N_POSITIONS, size=rng.integers(0, 12)) for _ in range(40)]
    hist = np.zeros(N_POSITIONS, dtype=int)
    for g in groups:
        pairs = [abs(int(g[i]) - int(g[j])) for i in range(len(g)) for j in range(i + 1, len(g))]
        assert sorted(pair_distances(g).tolist()) == sorted(pairs)
        for d in pairs:
            hist[d] += 1
        for tol in (0, 1, 2, 5):
            expected = sum(d <= tol for d in pairs) / len(pairs) if pairs else math.nan
            got = group_agreement(g, tol)
            assert (math.isnan(got) and math.isnan(expected)) or got == pytest.approx(expected)
    assert np.array_equal(distance_histogram(groups), hist)
    assert distance_histogram([]).tolist() == [0] * N_POSITIONS


def test_agreement_arguments():
    assert math.isnan(group_agreement([4], 0)) and math.isnan(group_agreement([], 0))
    assert group_agreement([4, 6], 2) == 1.0 and group_agreement([4, 7], 2) == 0.0
    with pytest.raises(ValueError, match="tol"):
        group_agreement([1, 2], -1)
    with pytest.raises(ValueError, match="out of range"):
        distance_histogram([[0, 60]])


def test_group_position_is_the_lower_median():
    assert group_position([9, 1, 5]) == 5
    assert group_position([9, 1, 5, 7]) == 5
    assert group_position([4]) == 4
    with pytest.raises(ValueError):
        group_position([])


# ------------------------------------------------------------------ bootstrap


def test_bootstrap_all_agree_and_none_agree():
    ones = [[1.0] * 8 for _ in range(3)]
    assert hierarchical_bootstrap(ones) == Interval(1.0, 1.0, 1.0, 3, 24)
    zeros = [[0.0] * 8 for _ in range(3)]
    assert hierarchical_bootstrap(zeros) == Interval(0.0, 0.0, 0.0, 3, 24)


def test_bootstrap_one_seed_one_group_empty_and_nan():
    iv = hierarchical_bootstrap([[0.0, 0.5, 1.0, 0.5]])
    assert iv.n_seeds == 1 and iv.n_groups == 4 and iv.mean == 0.5 and 0.0 <= iv.low < 0.5 < iv.high <= 1.0
    assert hierarchical_bootstrap([[0.4]]) == Interval(0.4, 0.4, 0.4, 1, 1)
    for empty in ([], [[]], [[], [math.nan]]):
        iv = hierarchical_bootstrap(empty)
        assert math.isnan(iv.mean) and math.isnan(iv.low) and math.isnan(iv.high)
        assert (iv.n_seeds, iv.n_groups) == (0, 0)
    # nan groups are dropped, and a seed left with none is dropped too
    assert hierarchical_bootstrap([[1.0, math.nan], [math.nan], [0.0]]) == \
        hierarchical_bootstrap([[1.0], [0.0]])
    assert hierarchical_bootstrap([[1.0, math.nan], [math.nan], [0.0]]).n_seeds == 2


def test_bootstrap_mean_is_mean_of_seed_means():
    iv = hierarchical_bootstrap([[1.0, 1.0, 1.0, 0.0], [0.0]])
    assert iv.mean == pytest.approx((0.75 + 0.0) / 2) and iv.n_groups == 5


def test_bootstrap_random_rates_stay_in_range_and_contain_the_mean():
    rng = np.random.default_rng(7)
    for _ in range(25):
        n_seeds = int(rng.integers(1, 6))
        values = [rng.beta(0.3, 0.3, size=int(rng.integers(1, 10))).round(1).tolist() for _ in range(n_seeds)]
        iv = hierarchical_bootstrap(values, n_boot=300, seed=int(rng.integers(100)))
        flat = [v for s in values for v in s]
        assert min(flat) <= iv.low <= iv.mean <= iv.high <= max(flat)
        assert 0.0 <= iv.low and iv.high <= 1.0


def test_bootstrap_is_deterministic():
    rng = np.random.default_rng(3)
    values = [rng.random(32).tolist() for _ in range(5)]
    a = hierarchical_bootstrap(values, seed=11)
    assert a == hierarchical_bootstrap(values, seed=11)
    assert a != hierarchical_bootstrap(values, seed=12)
    assert a.low < a.mean < a.high


def test_bootstrap_arguments():
    for kwargs in ({"n_boot": 0}, {"level": 1.0}, {"seed": -1}):
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            hierarchical_bootstrap([[0.1, 0.2]], **kwargs)
    with pytest.raises(ValueError, match="values"):
        hierarchical_bootstrap([0.1, 0.2])


# ------------------------------------------------------------------ summaries


def test_agreement_summary(table):
    other = GroupTable.from_strings([seq(20), seq(20), seq(40), seq(40), seq(41)], [0, 0, 1, 1, 1],
                                    [True, True, False, False, False])
    s = agreement_summary([table, other], n_boot=200)
    assert s["seeds"] == 2 and s["groups_shared"] == 2 and s["groups_independent"] == 2
    # shared: seed 0 one group [5, 10, 11] (exact 0, within1 1/3), seed 1 one group [20, 20] (1, 1)
    assert s["exact_shared"] == pytest.approx(0.5)
    assert s["within1_shared"] == pytest.approx((1 / 3 + 1) / 2)
    # independent: seed 0 [3, 5] (exact 0, within2 1), seed 1 [40, 40, 41] (1/3, 1)
    assert s["exact_independent"] == pytest.approx(1 / 6)
    assert s["within2_independent"] == 1.0 and s["within2_independent_ci_low"] == 1.0
    for kind in ("shared", "independent"):
        for name in ("exact", "within1", "within2"):
            assert s[f"{name}_{kind}_ci_low"] <= s[f"{name}_{kind}"] <= s[f"{name}_{kind}_ci_high"]
    hist = s["distance_hist_shared"]
    assert isinstance(hist, list) and len(hist) == N_POSITIONS and sum(hist) == 4
    assert hist[0] == 1 and hist[1] == 1 and hist[5] == 1 and hist[6] == 1
    assert s["valid_rate"] == pytest.approx(11 / 13)
    assert agreement_summary([table], tolerances=(0, 3), n_boot=10).keys() >= {"within3_shared", "exact_shared"}
    with pytest.raises(ValueError, match="tol"):
        agreement_summary([table], tolerances=(0, -1))
    empty = agreement_summary([])
    assert empty["seeds"] == 0 and math.isnan(empty["valid_rate"]) and math.isnan(empty["exact_shared"])


def test_agreement_by_position():
    a = GroupTable.from_strings([seq(2), seq(2), seq(50), seq(50), seq(52), seq(30), seq(31)],
                                [0, 0, 1, 1, 1, 2, 2], [True] * 7)
    b = GroupTable.from_strings([seq(4), seq(6)], [0, 0], [True, True])
    rows = agreement_by_position([a, b], n_boot=200)
    assert [(r["low"], r["high"]) for r in rows] == [(0, 7), (8, 15), (16, 23), (24, 31), (32, 39), (40, 47),
                                                     (48, 56)]
    by_low = {r["low"]: r for r in rows}
    assert by_low[0]["groups"] == 2 and by_low[0]["mean"] == pytest.approx(0.5)  # seed a: 1, seed b: 0
    assert by_low[48]["groups"] == 1 and by_low[48]["mean"] == pytest.approx(1 / 3)
    assert by_low[24]["groups"] == 1 and by_low[24]["mean"] == 0.0
    assert by_low[8]["groups"] == 0 and math.isnan(by_low[8]["mean"]) and math.isnan(by_low[8]["ci_low"])
    assert by_low[0]["ci_low"] <= 0.5 <= by_low[0]["ci_high"]
    # chance: members shuffled among a prompt's shared groups; seed b has one group, so its
    # shuffles are the group itself; seed a's three groups mix
    assert all("chance" in r for r in rows)
    (whole,) = agreement_by_position([b], bins=((0, 56),), n_boot=50)
    assert whole["chance"] == pytest.approx(whole["mean"])
    (row,) = agreement_by_position([a, b], tol=2, bins=((0, 56),), n_boot=50)
    assert row["groups"] == 4 and row["mean"] == pytest.approx(((1 + 1 + 1) / 3 + 1) / 2)
    with pytest.raises(ValueError, match="bin"):
        agreement_by_position([a], bins=((5, 1),))


# ------------------------------------------------------------------ what the budget allows


def test_bound_bits():
    assert bound_bits(0, 0.125) == pytest.approx(2 * 0.125)
    assert bound_bits(30, 1 / 64) == pytest.approx(32 / 64)
    assert np.allclose(bound_bits(np.array([0, 8]), 1.0, prompt_len=0), [0.0, 8.0])
    with pytest.raises(ValueError, match="kappa_bits"):
        bound_bits(3, -1.0)


def test_ceiling_end_points_and_monotone():
    m = N_POSITIONS
    assert agreement_ceiling(0.0) == 1 / m
    assert agreement_ceiling(math.log2(m)) == 1.0 and agreement_ceiling(10.0) == 1.0
    bits = np.linspace(0, math.log2(m), 200)
    c = agreement_ceiling(bits)
    assert c.shape == bits.shape and np.all(np.diff(c) >= -1e-12) and c[100] > c[1] > c[0]
    assert np.all((c >= 1 / m) & (c <= 1))
    assert agreement_ceiling(0.0, n_positions=2) == 0.5
    # a non-uniform marginal allows more agreement at the same bits
    assert agreement_ceiling(0.5, entropy_bits=4.0) > agreement_ceiling(0.5)
    with pytest.raises(ValueError, match="bits"):
        agreement_ceiling(-0.1)
    with pytest.raises(ValueError, match="entropy_bits"):
        agreement_ceiling(0.1, entropy_bits=7.0)


def _mi_and_collision(p_z: np.ndarray, p_x_given_z: np.ndarray) -> tuple[float, float, float]:
    """I(Z; X), P(same X for two draws sharing Z), H(X) of an explicit joint distribution."""
    def h(p: np.ndarray) -> float:
        p = p[p > 0]
        return float(-(p * np.log2(p)).sum())

    p_x = p_z @ p_x_given_z
    h_cond = sum(pz * h(row) for pz, row in zip(p_z, p_x_given_z))
    return max(h(p_x) - h_cond, 0.0), float(p_z @ (p_x_given_z ** 2).sum(axis=1)), h(p_x)


def test_ceiling_is_never_below_an_explicit_construction():
    m = N_POSITIONS
    # Z reveals the block start with probability eps and nothing otherwise.
    for eps in (0.0, 0.01, 0.1, 0.3, 0.7, 0.99):
        p_z = np.r_[np.full(m, eps / m), 1 - eps]
        p_x_given_z = np.vstack([np.eye(m), np.full((1, m), 1 / m)])
        mi, collision, _ = _mi_and_collision(p_z, p_x_given_z)
        assert mi == pytest.approx(eps * math.log2(m))
        assert collision == pytest.approx(eps + (1 - eps) / m)
        assert agreement_ceiling(mi) >= collision - 1e-9
    # Z names one of k equal blocks of starts.
    for k in (3, 19, 57):
        p_x_given_z = np.zeros((k, m))
        for z, cols in enumerate(np.array_split(np.arange(m), k)):
            p_x_given_z[z, cols] = 1 / len(cols)
        p_z = np.array([(p_x_given_z[z] > 0).sum() / m for z in range(k)])
        mi, collision, _ = _mi_and_collision(p_z, p_x_given_z)
        assert agreement_ceiling(mi) >= collision - 1e-9
    # Random joint distributions, with their own marginal entropy.
    rng = np.random.default_rng(5)
    for _ in range(50):
        n_z = int(rng.integers(1, 8))
        p_z = rng.dirichlet(np.ones(n_z))
        p_x_given_z = rng.dirichlet(np.full(m, float(rng.choice([0.05, 0.5, 5.0]))), size=n_z)
        mi, collision, h_x = _mi_and_collision(p_z, p_x_given_z)
        assert agreement_ceiling(mi, entropy_bits=h_x) >= collision - 1e-9


def test_difference_bootstrap():
    from ftstudy.tasks.agreement import difference_bootstrap

    # Identical sides: a zero difference, a degenerate interval.
    same = [[0.2, 0.4, 0.3], [0.1, 0.5]]
    d = difference_bootstrap(same, same)
    assert d["diff"] == 0 and d["ci_low"] <= 0 <= d["ci_high"] and d["seeds"] == 2
    # Every shared group agrees, no independent one: +1 exactly, inside [−1, 1].
    d = difference_bootstrap([[1.0, 1.0]] * 3, [[0.0, 0.0]] * 3)
    assert d["diff"] == d["ci_low"] == d["ci_high"] == 1.0 and d["se"] == 0
    # A seed missing one side is left out; none left: nan.
    d = difference_bootstrap([[0.5], []], [[0.1], [0.2]])
    assert d["seeds"] == 1 and math.isclose(d["diff"], 0.4)
    assert math.isnan(difference_bootstrap([[]], [[0.1]])["diff"])
    # Random rates: interval around the point, inside [−1, 1]; more groups detect smaller effects.
    rng = np.random.default_rng(0)
    small = difference_bootstrap([rng.random(4).tolist() for _ in range(3)], [rng.random(4).tolist() for _ in range(3)])
    big = difference_bootstrap([rng.random(64).tolist() for _ in range(3)], [rng.random(64).tolist() for _ in range(3)])
    for d in (small, big):
        assert -1 <= d["ci_low"] <= d["diff"] <= d["ci_high"] <= 1
    assert big["mde80"] < small["mde80"]
    assert math.isclose(big["mde80"], 2.801585 * big["se"])


def test_summary_reports_the_difference(table):
    s = agreement_summary([table, table])
    for name in ("exact_diff", "within1_diff", "within2_diff"):
        assert name in s and f"{name}_mde80" in s
        if not math.isnan(s[name]):
            assert math.isclose(s[name], s[name.replace("diff", "shared")] - s[name.replace("diff", "independent")])
