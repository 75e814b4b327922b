"""The seed-level verdicts (ftstudy.results.verdicts) against hand-worked examples, the rule
file, and a coverage simulation with the between-seed spread the quick κ = 1/8 runs show."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from scipy import stats

from ftstudy.results import verdicts as V
from ftstudy.tasks import agreement


# ---------------------------------------------------------------- the rule file and the code agree

def test_rule_file_states_the_constants():
    text = V.RULE.read_text()
    assert f"**m = {V.EQUIV_MARGIN:g}**" in text
    assert f"**{V.SWITCHED_ON:g} κ**" in text
    assert f"{V.N_BOOT:,} resamples, RNG seed {V.BOOT_SEED}" in text
    assert "half of the paper figure's own effect" in text and V.PAPER_FRACTION == 0.5
    for verdict in ("`shown`", "`no effect within ±m`", "`paper-sized effect excluded`", "`inconclusive`"):
        assert verdict in text


# ---------------------------------------------------------------- Holm

def test_holm_hand_worked():
    # p sorted: 0.01 (×4 = 0.04), 0.02 (×3 = 0.06), 0.03 (×2 = 0.06, kept monotone), 0.5 (×1 = 0.5)
    assert V.holm([0.03, 0.5, 0.01, 0.02]) == pytest.approx([0.06, 0.5, 0.04, 0.06])
    assert V.holm([0.04, 0.04]) == pytest.approx([0.08, 0.08])
    assert V.holm([0.9, 0.3]) == pytest.approx([0.9, 0.6])  # monotone: 0.3 × 2, then max(0.6, 0.9 × 1)
    assert V.holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])  # capped at 1
    out = V.holm([0.01, math.nan, 0.02])
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.02)


# ---------------------------------------------------------------- t over seeds

def test_one_sample_matches_scipy_and_is_cut_to_range():
    x = [0.31, -0.06, 0.04, -0.03, 0.26]
    t = V.one_sample(x)
    ref = stats.ttest_1samp(x, 0.0)
    assert t.p == pytest.approx(ref.pvalue)
    lo, hi = stats.t.interval(0.95, 4, loc=np.mean(x), scale=stats.sem(x))
    assert (t.lo, t.hi) == pytest.approx((lo, hi))
    se = stats.sem(x)
    assert t.mde == pytest.approx((stats.t.ppf(0.975, 4) + stats.t.ppf(0.8, 4)) * se)
    # 5 seeds: the exact sign flip has 32 patterns; p is a multiple of 1/32
    assert (t.p_perm * 32) == pytest.approx(round(t.p_perm * 32))
    wide = V.one_sample([0.9, -0.9, 0.95])
    assert wide.lo >= -1.0 and wide.hi <= 1.0
    rate = V.one_sample([0.01, 0.02, 0.9], bounds=(0.0, 1.0))
    assert rate.lo >= 0.0


def test_two_sample_is_welch():
    a, b = [0.41, 0.05, 0.9, 0.33], [0.93, 0.94, 0.92, 0.95, 0.93]
    t = V.two_sample(a, b)
    ref = stats.ttest_ind(a, b, equal_var=False)
    assert t.p == pytest.approx(ref.pvalue)
    assert t.mean == pytest.approx(np.mean(a) - np.mean(b))
    # an exact relabelling test: 126 splits of 9 seeds into 4 and 5
    assert (t.p_perm * 126) == pytest.approx(round(t.p_perm * 126))
    with pytest.raises(ValueError, match="at least 2 seeds"):
        V.two_sample([0.1], [0.2, 0.3])


def test_sign_flip_exact_small():
    # all positive, 3 seeds: only the all-plus and all-minus patterns reach |mean| → 2/8
    assert V.sign_flip_p([0.1, 0.2, 0.3]) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="finite"):
        V.sign_flip_p([0.1, math.nan])


# ---------------------------------------------------------------- verdicts

def _test(mean, lo, hi, p, lo90=None, hi90=None, n=10):
    return V.SeedTest(n, mean, lo, hi, p, 0.1, 0.02, n - 1, lo if lo90 is None else lo90,
                      hi if hi90 is None else hi90, p)


def test_equivalence_verdict():
    inside = _test(0.001, -0.04, 0.042, 0.9, lo90=-0.03, hi90=0.031)
    assert V.decide("null", inside, math.nan)[0] == "no effect within ±0.05"
    outside = _test(0.01, -0.07, 0.09, 0.7, lo90=-0.06, hi90=0.08)
    verdict, note = V.decide("null", outside, math.nan)
    assert verdict == "inconclusive" and "not inside ±0.05" in note


def test_positive_verdicts():
    assert V.decide("positive", _test(0.3, 0.1, 0.5, 0.001), 0.004, paper_effect=0.9)[0] == "shown"
    verdict, note = V.decide("positive", _test(0.2, 0.1, 0.3, 0.001), 0.004, paper_effect=0.9)
    assert verdict == "shown" and "smaller than half" in note
    # not shown after Holm, interval below half the paper's effect
    assert V.decide("positive", _test(0.1, -0.1, 0.3, 0.2), 0.4, paper_effect=0.9)[0] == "paper-sized effect excluded"
    # not shown, interval reaching both 0 and 0.45: inconclusive
    assert V.decide("positive", _test(0.2, -0.1, 0.5, 0.2), 0.4, paper_effect=0.9)[0] == "inconclusive"
    # raw p below 0.05 but Holm above: not shown
    assert V.decide("positive", _test(0.2, 0.01, 0.5, 0.02), 0.06, paper_effect=0.9)[0] == "inconclusive"
    # a claim in the negative direction (validity falls)
    assert V.decide("positive", _test(-0.5, -0.8, -0.2, 0.001), 0.004, direction=-1, paper_effect=-0.93)[0] == "shown"
    assert V.decide("positive", _test(-0.1, -0.3, 0.1, 0.3), 0.3, direction=-1,
                    paper_effect=-0.93)[0] == "paper-sized effect excluded"
    with pytest.raises(ValueError, match="kind"):
        V.decide("maybe", _test(0, 0, 0, 1), 1)


# ---------------------------------------------------------------- KL spent

def test_kl_strata_on_a_toy_table():
    kappa = 0.125
    kl = [0.124, 0.079, 0.081, 0.120, 0.1125, 0.05]  # 0.1125 = 0.9 κ exactly: switched on
    delta = [0.31, -0.03, -0.06, 0.20, 0.25, 0.01]
    out = V.kl_strata(kl, delta, kappa)
    assert (out["n_seeds"], out["n_on"]) == (6, 3)
    assert out["share_on"] == pytest.approx(0.5)
    assert (out["share_on_lo"], out["share_on_hi"]) == pytest.approx(V.clopper_pearson(3, 6))
    assert out["delta_on"] == pytest.approx(np.mean([0.31, 0.20, 0.25]))
    assert out["delta_off"] == pytest.approx(np.mean([-0.03, -0.06, 0.01]))
    assert out["delta_on_lo"] < out["delta_on"] < out["delta_on_hi"]
    assert V.switched_on(0.1125, kappa) and not V.switched_on(0.1124, kappa)
    reg = V.kl_regression(kl, delta)
    assert reg["slope"] > 0 and reg["slope_lo"] < reg["slope"] < reg["slope_hi"]
    assert reg["spearman_rho"] == pytest.approx(stats.spearmanr(kl, delta).statistic)


def test_clopper_pearson():
    assert V.clopper_pearson(0, 10)[0] == 0.0 and V.clopper_pearson(10, 10)[1] == 1.0
    lo, hi = V.clopper_pearson(5, 10)
    assert lo == pytest.approx(0.187, abs=1e-3) and hi == pytest.approx(0.813, abs=1e-3)
    with pytest.raises(ValueError, match="0 <= k <= n"):
        V.clopper_pearson(11, 10)


# ---------------------------------------------------------------- coverage of the primary interval

#: The design of a quick run's probe: 8 prompts × (one independent group, four shared groups):
#: 8 independent and 32 shared group values per seed.  The spreads the quick κ = 1/8 runs show
#: under τ = 0.6: per-seed Δ(±2) +0.31, −0.03, −0.06, +0.04, +0.26 (standard deviation 0.17
#: between seeds); within a seed, group values spread 0.09–0.21 (shared) and 0.02–0.18
#: (independent).
SEED_SD, SHARED_SD, INDEP_SD, N_SHARED, N_INDEP, TRUE_DELTA = 0.17, 0.15, 0.10, 32, 8, 0.10


def _simulate(n_seeds: int, n_sims: int, rng: np.random.Generator):
    effects = TRUE_DELTA + SEED_SD * rng.standard_normal((n_sims, n_seeds))
    level = 0.4
    shared = [[level + SHARED_SD * rng.standard_normal(N_SHARED) for _ in range(n_seeds)] for _ in range(n_sims)]
    indep = [[level - effects[i, s] + INDEP_SD * rng.standard_normal(N_INDEP) for s in range(n_seeds)]
             for i in range(n_sims)]
    return shared, indep


@pytest.mark.parametrize("n_seeds", [5, 10])
def test_t_interval_covers_and_the_bootstrap_alone_falls_short(n_seeds):
    rng = np.random.default_rng(20261203 + n_seeds)
    n_sims = 400
    shared, indep = _simulate(n_seeds, n_sims, rng)
    t_cover = boot_cover = 0
    for sh, ind in zip(shared, indep):
        deltas = [np.mean(a) - np.mean(b) for a, b in zip(sh, ind)]
        t = V.one_sample(deltas)
        t_cover += t.lo <= TRUE_DELTA <= t.hi
        b = agreement.difference_bootstrap(sh, ind, n_boot=1000, seed=0)
        boot_cover += b["ci_low"] <= TRUE_DELTA <= b["ci_high"]
    t_rate, boot_rate = t_cover / n_sims, boot_cover / n_sims
    assert t_rate >= 0.93, f"t-interval over seeds covered {t_rate:.3f} at {n_seeds} seeds"
    assert boot_rate < 0.93, f"the hierarchical bootstrap covered {boot_rate:.3f} at {n_seeds} seeds"
    assert boot_rate < t_rate


# ---------------------------------------------------------------- the committed verdicts

def test_committed_verdicts_have_the_columns_and_match_findings():
    from ftstudy.io import CsvTable

    rows = CsvTable(V.VERDICTS).load().rows
    assert rows, "results/ablate/verdicts.csv is committed"
    assert list(rows[0])[:15] == ["claim", "study", "preset", "protocol", "kappa_bits", "n_seeds", "k_showing", "delta",
                                  "lo", "hi", "p", "p_holm", "mde", "verdict", "method"]
    allowed = re.compile(r"^(shown|no effect within ±[0-9.]+|paper-sized effect excluded|inconclusive)$")
    for r in rows:
        assert allowed.match(r["verdict"]), r["verdict"]
        assert 0 <= int(r["k_showing"]) <= int(r["n_seeds"])
        if r["lo"] and r["lo"] != "nan":  # a one-seed row has no interval
            assert float(r["lo"]) <= float(r["delta"]) <= float(r["hi"])
    assert V.main(["--check"]) == 0
