"""Benchmark statistics (issue 15): pass@k against its closed form, the detectable effect
against a simulation, the paired hierarchical bootstrap."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ftstudy.results import benchstats as bs


def test_pass_at_k_matches_the_closed_form() -> None:
    for n in range(1, 13):
        for c in range(n + 1):
            for k in range(1, n + 1):
                want = 1 - math.comb(n - c, k) / math.comb(n, k)
                assert bs.pass_at_k(n, c, k) == pytest.approx(want, abs=1e-12), (n, c, k)
    assert bs.pass_at_k(10, 3, 1) == pytest.approx(0.3)  # pass@1 is the fraction correct
    for bad in ((10, 3, 0), (10, 3, 11), (10, 11, 1), (-1, 0, 1), (10, 2.5, 1)):
        with pytest.raises(ValueError, match="not allowed"):
            bs.pass_at_k(*bad)


def _simulate(rng: np.random.Generator, logits: np.ndarray, reps: int, seeds: int, n: int, shift: float = 0.0,
              seed_sd: float = 0.2, inter_sd: float = 0.4) -> np.ndarray:
    """Per-problem scores of ``reps`` experiments: Bernoulli samples of a logit model with a
    seed effect and a problem × seed interaction."""
    b = rng.normal(0, seed_sd, (reps, seeds, 1))
    e = rng.normal(0, inter_sd, (reps, seeds, len(logits)))
    p = 1 / (1 + np.exp(-(logits + b + e + shift)))
    return rng.binomial(n, p) / n


def test_detectable_effect_against_a_simulation() -> None:
    """The design's standard error and its 80% power, from the components of a baseline,
    against experiments simulated at the Bernoulli level."""
    rng = np.random.default_rng(0)
    problems, seeds, n = 120, 3, 10
    logits = rng.normal(-0.4, 1.5, problems)
    truth = bs.variance_components(_simulate(rng, logits, 1, 1500, n)[0], n)  # the components, nearly exactly
    design = bs.mde(truth, n_seeds=seeds)
    assert design["seeds"] == seeds and design["mde_rel"] == pytest.approx(design["mde_abs"] / truth.mean)
    # the shift of the logits whose mean gain is the detectable effect
    ref = _simulate(rng, logits, 1, 3000, n)[0].mean()
    lo, hi = 0.0, 2.0
    for _ in range(25):
        mid = (lo + hi) / 2
        gain = _simulate(rng, logits, 1, 3000, n, shift=mid)[0].mean() - ref
        lo, hi = (mid, hi) if gain < design["mde_abs"] else (lo, mid)
    reps = 1500
    a = _simulate(rng, logits, reps, seeds, n)
    b = _simulate(rng, logits, reps, seeds, n, shift=lo)
    diff = b.mean((1, 2)) - a.mean((1, 2))
    assert diff.std() == pytest.approx(design["se"], rel=0.12)
    power = np.mean(np.abs(diff) > 1.959964 * design["se"])
    assert 0.72 <= power <= 0.88
    # more samples per problem or more problems shrink the standard error; more seeds too
    assert bs.mde(truth, n_seeds=seeds, n_samples=40)["se"] < design["se"]
    assert bs.mde(truth, n_seeds=seeds, n_problems=1000)["se"] < design["se"]
    assert bs.mde(truth, n_seeds=6)["se"] < design["se"]


def test_variance_components_of_a_known_matrix() -> None:
    x = np.array([[0.2, 0.4, 0.6], [0.3, 0.5, 0.7]])  # a pure seed shift: no interaction
    c = bs.variance_components(x, 10)
    assert c.mean == pytest.approx(0.45) and c.var_interaction == 0
    assert c.var_seed == pytest.approx(np.var([0.4, 0.5], ddof=1))
    one = bs.variance_components(x[:1], 10)
    assert math.isnan(one.var_seed) and bs.variance_components(x[:1], 10, var_seed=0.01).var_seed == 0.01
    with pytest.raises(ValueError, match="matrix"):
        bs.variance_components([0.1, 0.2], 10)


def test_paired_bootstrap() -> None:
    rng = np.random.default_rng(1)
    problems = rng.uniform(0.1, 0.9, 200)
    a = np.clip(problems + rng.normal(0, 0.05, (3, 200)), 0, 1)
    same = bs.paired_bootstrap(a, a, n_boot=500)
    assert same["diff"] == 0 and same["p"] == 1.0 and same["ci_low"] <= 0 <= same["ci_high"]
    b = np.clip(a + 0.1, 0, 1)
    r = bs.paired_bootstrap(a, b, n_boot=1000)
    assert r["ci_low"] > 0 and r["p"] <= 0.01 and r["rel"] == pytest.approx(r["diff"] / a.mean())
    assert r["rel_low"] <= r["rel"] <= r["rel_high"]
    # rates: the interval of a difference stays in [-1, 1]
    ones, zeros = np.ones((3, 50)), np.zeros((3, 50))
    full = bs.paired_bootstrap(zeros, ones, n_boot=200)
    assert full["diff"] == 1 and -1 <= full["ci_low"] <= full["ci_high"] <= 1
    with pytest.raises(ValueError, match="same problems"):
        bs.paired_bootstrap(a, a[:, :10])


def test_bootstrap_size_and_simulated_power() -> None:
    """Under no difference the bootstrap's 95% interval excludes 0 at most about 5% of the
    time; its simulated power rises with the true difference."""
    c = bs.Components(mean=0.4, var_seed=0.0005, var_interaction=0.005, var_sampling=0.02, n_seeds=3,
                      n_problems=100, n_samples=10)
    size = bs.test_power(c, 0.0, reps=150, n_boot=300)
    assert size <= 0.1
    se = bs.mde(c)["se"]
    assert bs.test_power(c, 4 * se, reps=100, n_boot=300) > bs.test_power(c, 1.5 * se, reps=100, n_boot=300)
