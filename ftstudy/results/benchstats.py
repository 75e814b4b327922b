"""Statistics of the benchmark suite (issue 15): pass@k, variance components, the minimum
detectable effect, and the paired hierarchical bootstrap over seeds and problems.

A model's result on a task is a matrix ``X[s, i]``: the score of problem ``i`` (pass@1, the
fraction of its ``n`` samples that are correct) for the model trained with seed ``s``.  Two
models are compared on the same problems (paired), pooling their seeds: the difference of
their grand means ``mean_s,i X_B − mean_s,i X_A``.  Its variance, under the model

    X[s, i] = mu + problem_i + seed_s + residual_si,    residual = interaction + sampling noise,

is ``2 (var_seed / S + var_resid / (S N))`` for two models with the baseline's variance (the
problem effects cancel: both models answer the same problems).  ``var_resid`` splits into the
problem × seed interaction and the binomial noise of ``n`` samples, ``E[p(1 − p)] / n``, so the
detectable effect of any design (seeds, problems, samples) follows from one baseline's
measurements.  The minimum detectable effect of a two-sided test at level α with power 1 − β
is ``(z_{1−α/2} + z_{1−β}) × SE``; relative to the baseline's mean it says what gain a null
result rules out.

The primary test is at seed level (:func:`ftstudy.results.seedstats.compare_seeds`): Welch's t
over each model's per-seed means ``mean_i X[s, i]``, whose variance across seeds is
``var_seed + var_resid / N`` (:func:`seed_mean_sd`), the exact relabelling p beside it, and
the detectable effect from t quantiles (:func:`ftstudy.results.seedstats.design_mde`).  The
paired bootstrap's interval is too narrow where the seed variance matters: its percentile
interval over a few resampled seeds acts like ±1.96 SE where t over seeds needs ±2.31 (5 seeds
a model, 8 df) or ±2.78 (3 seeds, 4 df), so under no difference it rejects about
``P(|t_df| > 1.96)``: 8.6% of the time at 5 seeds, 12% at 3, where 5% is allowed (simulated by
:func:`null_false_positive_rate`: 7–9% and 11–13%).  It is a secondary column only.

Torch-free: the lm-eval metrics and the results tables import it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ftstudy.results.seedstats import clopper_pearson, relabel_p_rows, welch_rows

__all__ = ["pass_at_k", "Components", "variance_components", "mde", "paired_bootstrap", "z_power", "test_power",
           "bootstrap_mde", "stack", "seed_mean_sd", "simulate_null", "null_false_positive_rate"]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` are correct (Chen et al. 2021):
    ``1 − C(n − c, k) / C(n, k)``, computed as a product to stay exact in floating point."""
    for name, v in (("n", n), ("c", c), ("k", k)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 0:
            raise ValueError(f"pass_at_k: {name} = {v!r} is not allowed: an integer >= 0")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k: k = {k} is not allowed: 1 <= k <= n = {n}")
    if c > n:
        raise ValueError(f"pass_at_k: c = {c} is not allowed: 0 <= c <= n = {n}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def z_power(alpha: float = 0.05, power: float = 0.8) -> float:
    """``z_{1−α/2} + z_{power}``: standard errors a true difference must span to be detected."""
    if not 0 < alpha < 1 or not 0 < power < 1:
        raise ValueError(f"alpha = {alpha!r} and power = {power!r} must lie in (0, 1)")
    nd = NormalDist()
    return nd.inv_cdf(1 - alpha / 2) + nd.inv_cdf(power)


@dataclass(frozen=True)
class Components:
    """Variance components of one model's score matrix (see the module docstring)."""

    mean: float  # grand mean
    var_seed: float  # between-seed variance of a seed's mean, beyond the residual's share
    var_interaction: float  # problem × seed interaction, beyond the sampling noise
    var_sampling: float  # binomial noise of one problem's score (n samples), E[p(1 − p)] / n
    n_seeds: int
    n_problems: int
    n_samples: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _matrix(x: ArrayLike) -> NDArray[np.float64]:
    a = np.asarray(x, dtype=float)
    if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] < 2:
        raise ValueError(f"scores must be a (seeds, problems) matrix with >= 2 problems, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError("scores must be finite")
    return a


def variance_components(x: ArrayLike, n_samples: int, var_seed: float | None = None) -> Components:
    """Components of ``x[s, i]``, each entry the mean of ``n_samples`` Bernoulli outcomes.

    With one seed the between-seed variance cannot be estimated: pass ``var_seed`` (an
    assumption, e.g. from another study) or get ``nan``; the interaction then cannot be told
    apart from problem difficulty and is set to 0 (an optimistic design value)."""
    a = _matrix(x)
    if not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"n_samples = {n_samples!r} is not allowed: an integer >= 1")
    s, n = a.shape
    # Unbiased binomial variance of a problem's mean over n samples: p(1 - p)/(n - 1) per cell.
    samp = float(np.mean(a * (1 - a)) / (n_samples - 1)) if n_samples > 1 else 0.0
    if s == 1:
        vs = float("nan") if var_seed is None else float(var_seed)
        return Components(float(a.mean()), vs, 0.0, samp, 1, n, n_samples)
    resid = a - a.mean(1, keepdims=True) - a.mean(0, keepdims=True) + a.mean()
    var_resid = float((resid ** 2).sum() / ((s - 1) * (n - 1)))
    var_means = float(np.var(a.mean(1), ddof=1))
    vs = max(0.0, var_means - var_resid / n) if var_seed is None else float(var_seed)
    return Components(float(a.mean()), vs, max(0.0, var_resid - samp), samp, s, n, n_samples)


def _resid(c: Components, n_samples: int) -> float:
    """The residual variance of one (seed, problem) score with ``n_samples`` samples a problem:
    the interaction plus the binomial noise, which falls as 1 / samples."""
    return c.var_interaction + c.var_sampling * c.n_samples / n_samples


def seed_mean_sd(c: Components, *, n_problems: int | None = None, n_samples: int | None = None) -> float:
    """The standard deviation of one seed's mean score ``mean_i X[s, i]`` across seeds, for a
    design of ``n_problems`` problems and ``n_samples`` samples each (default: ``c``'s own):
    ``sqrt(var_seed + var_resid / N)``, what the seed-level test sees; pass it to
    :func:`ftstudy.results.seedstats.design_mde`."""
    n = c.n_problems if n_problems is None else n_problems
    k = c.n_samples if n_samples is None else n_samples
    if min(n, k) < 1:
        raise ValueError(f"seed_mean_sd: problems = {n}, samples = {k} are not allowed: each >= 1")
    return math.sqrt(c.var_seed + _resid(c, k) / n)


def mde(c: Components, *, n_seeds: int | None = None, n_problems: int | None = None,
        n_samples: int | None = None, alpha: float = 0.05, power: float = 0.8) -> dict[str, float]:
    """Minimum detectable difference between two models with ``c``'s variance (absolute, and
    relative to ``c.mean``), for a design of ``n_seeds`` seeds per model, ``n_problems``
    problems and ``n_samples`` samples each (default: ``c``'s own), and its standard error."""
    s = c.n_seeds if n_seeds is None else n_seeds
    n = c.n_problems if n_problems is None else n_problems
    k = c.n_samples if n_samples is None else n_samples
    if min(s, n, k) < 1:
        raise ValueError(f"design seeds={s}, problems={n}, samples={k}: each must be >= 1")
    resid = _resid(c, k)
    se = math.sqrt(2 * (c.var_seed / s + resid / (s * n)))
    absolute = z_power(alpha, power) * se
    return {"se": se, "mde_abs": absolute, "mde_rel": absolute / c.mean if c.mean > 0 else float("inf"),
            "seeds": s, "problems": n, "samples": k, "alpha": alpha, "power": power}


def paired_bootstrap(a: ArrayLike, b: ArrayLike, *, n_boot: int = 4000, level: float = 0.95, seed: int = 0,
                     inflate: bool = True) -> dict[str, float]:
    """``mean(b) − mean(a)`` of two (seeds, problems) matrices on the same problems, with a
    two-level bootstrap: each resample draws the problems with replacement (the same draw for
    both models: paired) and each model's seeds with replacement (independently: different
    training runs).

    ``inflate``: before resampling, each model's seed deviations (per problem) are scaled by
    ``sqrt(S / (S − 1))``, so the resampled seed means have the variance of the data rather than
    (S − 1)/S of it; with three seeds the plain bootstrap's interval is too narrow.  Returns the
    difference, the relative change ``diff / mean(a)``, the percentile interval (of both), its
    standard error and a two-sided bootstrap p-value (the share of resampled differences, centred
    on the estimate, at least as far from it as the estimate is from 0; floor 1/n_boot).
    Intervals of a difference of rates stay within [−1, 1]."""
    xa, xb = _matrix(a), _matrix(b)
    if xa.shape[1] != xb.shape[1]:
        raise ValueError(f"paired matrices need the same problems: {xa.shape[1]} vs {xb.shape[1]} columns")
    rng = np.random.default_rng(seed)
    n = xa.shape[1]

    def prepared(x: NDArray[np.float64]) -> NDArray[np.float64]:
        s = x.shape[0]
        if not inflate or s < 2:
            return x
        centre = x.mean(0, keepdims=True)
        return centre + (x - centre) * math.sqrt(s / (s - 1))

    pa, pb = prepared(xa), prepared(xb)
    probs = rng.integers(0, n, size=(n_boot, n))

    def means(x: NDArray[np.float64]) -> NDArray[np.float64]:
        seeds = rng.integers(0, x.shape[0], size=(n_boot, x.shape[0]))
        # mean over drawn seeds of each seed's mean over the drawn problems
        per_seed = x[seeds[:, :, None], probs[:, None, :]].mean(2)
        return per_seed.mean(1)

    ma, mb = means(pa), means(pb)
    d = mb - ma
    diff = float(xb.mean() - xa.mean())
    base = float(xa.mean())
    alpha = (1 - level) / 2
    lo, hi = (float(q) for q in np.quantile(d, [alpha, 1 - alpha]))
    lo, hi = min(lo, diff), max(hi, diff)
    p = float(max(np.mean(np.abs(d - diff) >= abs(diff)), 1 / n_boot)) if diff != 0 else 1.0
    rel = np.where(ma > 0, d / np.where(ma > 0, ma, 1), np.nan)
    rel_lo, rel_hi = (float(q) for q in np.nanquantile(rel, [alpha, 1 - alpha])) if base > 0 else (math.nan,) * 2
    out = {"a": base, "b": float(xb.mean()), "diff": diff, "ci_low": max(lo, -1.0), "ci_high": min(hi, 1.0),
           "se": float(d.std(ddof=1)), "p": p, "rel": diff / base if base > 0 else math.nan,
           "rel_low": rel_lo, "rel_high": rel_hi, "seeds_a": xa.shape[0], "seeds_b": xb.shape[0], "problems": n}
    if base > 0:
        out["rel_low"], out["rel_high"] = min(out["rel_low"], out["rel"]), max(out["rel_high"], out["rel"])
    return out


def test_power(c: Components, diff: float, *, n_seeds: int | None = None, n_problems: int | None = None,
               reps: int = 200, n_boot: int = 500, seed: int = 0) -> float:
    """Power of :func:`paired_bootstrap`'s 95% interval (excluding 0) to detect a true difference
    ``diff``, by simulating the design from ``c``'s components: problem scores spread like a
    rate around ``c.mean``, a seed effect and a residual per (seed, problem), normal."""
    s = c.n_seeds if n_seeds is None else n_seeds
    n = c.n_problems if n_problems is None else n_problems
    rng = np.random.default_rng(seed)
    resid_sd = math.sqrt(c.var_interaction + c.var_sampling)
    hits = 0
    for r in range(reps):
        problem = rng.uniform(0, 2 * c.mean, n) if c.mean <= 0.5 else rng.uniform(2 * c.mean - 1, 1, n)
        xs = [problem + rng.normal(0, math.sqrt(c.var_seed), (s, 1)) + rng.normal(0, resid_sd, (s, n)) + d
              for d in (0.0, diff)]
        out = paired_bootstrap(xs[0], xs[1], n_boot=n_boot, seed=seed + r)
        hits += out["ci_low"] > 0 or out["ci_high"] < 0
    return hits / reps


def bootstrap_mde(c: Components, *, power: float = 0.8, reps: int = 200, n_boot: int = 500,
                  seed: int = 0) -> dict[str, float]:
    """The smallest difference :func:`paired_bootstrap` detects with ``power`` (simulated, see
    :func:`test_power`), found on a grid of multiples of the design's standard error; the
    bootstrap is conservative (it resamples the residual at both levels), so this is larger than
    :func:`mde`'s z-test value."""
    se = mde(c)["se"]
    lo_m, lo_p = 0.0, 0.0
    for mult in (2.8, 3.2, 3.6, 4.0, 4.5, 5.0, 6.0, 8.0):
        p = test_power(c, mult * se, reps=reps, n_boot=n_boot, seed=seed)
        if p >= power:
            m = lo_m + (mult - lo_m) * (power - lo_p) / (p - lo_p) if p > lo_p else mult
            absolute = m * se
            return {"mde_abs": absolute, "mde_rel": absolute / c.mean if c.mean > 0 else float("inf"),
                    "power_at_z_mde": test_power(c, z_power() * se, reps=reps, n_boot=n_boot, seed=seed)}
        lo_m, lo_p = mult, p
    return {"mde_abs": float("inf"), "mde_rel": float("inf"), "power_at_z_mde": float("nan")}


def stack(per_seed: Sequence[dict[Any, float]], keys: Sequence[Any] | None = None
          ) -> tuple[list[Any], NDArray[np.float64]]:
    """The (seeds, problems) matrix of per-seed ``{problem: score}`` dicts, over ``keys`` (default:
    the problems present in every seed), in that order: pass the same keys for every model so
    that their columns are the same problems (paired)."""
    if not per_seed:
        raise ValueError("no seeds")
    if keys is None:
        keys = sorted(set.intersection(*(set(d) for d in per_seed)), key=str)
    keys = list(keys)
    return keys, np.array([[float(d[k]) for k in keys] for d in per_seed])


# ---------------------------------------------------------------- the tests' false positives under the null


def simulate_null(rng: np.random.Generator, n_sims: int, *, n_seeds: int = 5, n_problems: int = 200,
                  n_samples: int = 10, baseline_mean: float = 0.4, seed_sd: float = 0.05, problem_sd: float = 0.25,
                  interaction_sd: float = 0.0) -> NDArray[np.float64]:
    """``n_sims`` benchmark experiments with no difference between the two models: an array
    (sims, 2 models, seeds, problems) of pass@1 scores.

    Per experiment, the problems' success probabilities ``q_i`` are drawn from a Beta with mean
    ``baseline_mean`` and standard deviation ``problem_sd`` (the same problems for both models:
    paired); each model's seed ``s`` shifts every problem's logit by ``b_s ~ N(0, (seed_sd / w)²)``,
    ``w = mean_i q_i (1 − q_i)``, so that a seed's mean pass@1 moves by about ``seed_sd``; each
    (seed, problem) adds an interaction ``N(0, interaction_sd²)`` on the logit scale; the score
    is the fraction correct of ``n_samples`` Bernoulli samples."""
    for name, v, low in (("n_sims", n_sims, 1), ("n_seeds", n_seeds, 2), ("n_problems", n_problems, 2),
                         ("n_samples", n_samples, 1)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < low:
            raise ValueError(f"simulate_null: {name} = {v!r} is not allowed: an integer >= {low}")
    m, v = baseline_mean, problem_sd ** 2
    if not 0 < m < 1:
        raise ValueError(f"simulate_null: baseline_mean = {m!r} is not allowed: a rate in (0, 1)")
    if not 0 <= v < m * (1 - m):
        raise ValueError(f"simulate_null: problem_sd = {problem_sd!r} is not allowed: 0 <= sd < sqrt(m (1 − m)) = "
                         f"{math.sqrt(m * (1 - m)):.3f} for baseline_mean m = {m}")
    for name, val in (("seed_sd", seed_sd), ("interaction_sd", interaction_sd)):
        if not (math.isfinite(val) and val >= 0):
            raise ValueError(f"simulate_null: {name} = {val!r} is not allowed: a finite number >= 0")
    if v > 0:
        total = m * (1 - m) / v - 1  # the Beta's a + b
        q = rng.beta(m * total, (1 - m) * total, size=(n_sims, 1, 1, n_problems))
    else:
        q = np.full((n_sims, 1, 1, n_problems), m)
    q = np.clip(q, 1e-9, 1 - 1e-9)
    w = (q * (1 - q)).mean(-1, keepdims=True)
    logit = np.log(q / (1 - q)) + rng.standard_normal((n_sims, 2, n_seeds, 1)) * (seed_sd / w)
    if interaction_sd > 0:
        logit = logit + rng.normal(0, interaction_sd, (n_sims, 2, n_seeds, n_problems))
    p = 1 / (1 + np.exp(-logit))
    return rng.binomial(n_samples, p) / n_samples


def null_false_positive_rate(*, n_seeds: int = 5, n_problems: int = 200, n_samples: int = 10,
                             baseline_mean: float = 0.4, seed_sd: float = 0.05, problem_sd: float = 0.25,
                             interaction_sd: float = 0.0, n_sims: int = 2000, alpha: float = 0.05,
                             n_boot_sims: int = 0, n_boot: int = 200, seed: int = 0) -> dict[str, float]:
    """How often each test finds a difference where there is none, on a design (see
    :func:`simulate_null` for the parameters): the share of ``n_sims`` null experiments in which

    * ``welch``: Welch's t over the two models' per-seed means rejects at ``alpha`` (the primary
      test, :func:`ftstudy.results.seedstats.compare_seeds`);
    * ``permutation``: the exact relabelling test of the same seed means does;
    * ``bootstrap``: :func:`paired_bootstrap`'s (1 − alpha) interval excludes 0, over the first
      ``n_boot_sims`` experiments (0: not run; it is the slow one) with ``n_boot`` resamples each.

    Each rate comes with its Monte Carlo Clopper–Pearson 95% interval (``*_lo``, ``*_hi``); a
    test that holds its level has a rate at or below ``alpha``.  ``seed_mean_sd``: the mean over
    experiments of the seed means' standard deviation, the spread the design really had."""
    if not 0 < alpha < 1:
        raise ValueError(f"null_false_positive_rate: alpha = {alpha!r} is not allowed: a number in (0, 1)")
    if not isinstance(n_boot_sims, (int, np.integer)) or not 0 <= n_boot_sims <= n_sims:
        raise ValueError(f"null_false_positive_rate: n_boot_sims = {n_boot_sims!r} is not allowed: an integer in "
                         f"[0, n_sims = {n_sims}]")
    rng = np.random.default_rng(seed)
    x = simulate_null(rng, n_sims, n_seeds=n_seeds, n_problems=n_problems, n_samples=n_samples,
                      baseline_mean=baseline_mean, seed_sd=seed_sd, problem_sd=problem_sd,
                      interaction_sd=interaction_sd)
    means = x.mean(-1)  # (sims, 2, seeds): each seed's pass@1
    hits = {"welch": welch_rows(means[:, 1], means[:, 0])["p"] < alpha,
            "permutation": relabel_p_rows(means[:, 1], means[:, 0]) < alpha}
    if n_boot_sims:
        boots = [paired_bootstrap(x[i, 0], x[i, 1], n_boot=n_boot, level=1 - alpha, seed=seed + i)
                 for i in range(n_boot_sims)]
        hits["bootstrap"] = np.array([r["ci_low"] > 0 or r["ci_high"] < 0 for r in boots])
    out: dict[str, float] = {"n_sims": n_sims, "n_boot_sims": n_boot_sims, "alpha": alpha,
                             "seed_mean_sd": float(means.std(-1, ddof=1).mean())}
    for name, h in hits.items():
        k = int(np.sum(h))
        lo, hi = clopper_pearson(k, len(h))
        out.update({name: k / len(h), f"{name}_lo": lo, f"{name}_hi": hi})
    return out


# ---------------------------------------------------------------- verdicts (seed level)

#: The equivalence margin of "no effect within ±m" for the benchmark suites: 25% of the
#: baseline's score (the detectable effect the designs target), so a null verdict rules out
#: the effect size a design is built for.
EQUIV_REL = 0.25


def seed_verdict(c: dict[str, Any], base_mean: float, gate: str | None = None, alpha: float = 0.05) -> str:
    """The verdict of one seed-level comparison (:func:`ftstudy.results.seedstats.compare_seeds`
    as a dict, with ``p_holm`` where it belongs to a Holm family): ``shown`` when the Holm
    p-value (the plain one outside a family) is below ``alpha`` and the interval excludes 0;
    ``no effect within ±m`` when the interval lies inside ±m, m = :data:`EQUIV_REL` × the
    baseline's mean; ``inconclusive`` otherwise; ``not gated: <why>`` when ``gate`` names a
    failed gate (no verdict is drawn on a task the models have not learned)."""
    if gate:
        return f"not gated: {gate}"
    p = c.get("p_holm", c["p"])
    if p < alpha and (c["lo"] > 0 or c["hi"] < 0):
        return "shown"
    margin = EQUIV_REL * base_mean
    if -margin < c["lo"] and c["hi"] < margin:
        return f"no effect within ±{margin:.3f}"
    return "inconclusive"
