"""Seed-level statistics: the trained model (one seed) is the unit of replication.

Each seed contributes one number (its Δ, its valid rate, its pass@1 averaged over problems);
the tests run over those numbers, so the between-seed spread, which no amount of problems or
samples within a seed averages away, sets the standard error:

* one set of seeds (H0: mean 0): Student t with n − 1 degrees of freedom, and the exact
  sign-flip p-value beside it (:func:`one_sample`, :func:`sign_flip_p`);
* two sets of models: Welch's t, ``SE = sqrt(s_a²/n_a + s_b²/n_b)`` with the
  Welch–Satterthwaite degrees of freedom, and the exact relabelling (permutation) p-value
  beside it (:func:`two_sample`, :func:`relabel_p`, :func:`compare_seeds`);
* the detectable effect of a two-sided test at level α with power 1 − β, from t quantiles:
  ``mde = (t_{1−α/2, df} + t_{1−β, df}) × SE`` (:func:`design_mde` for a planned design);
* its range: the seed variance behind SE is itself estimated from few seeds.  With ``df``
  degrees of freedom, ``df s² / σ²`` is χ²(df), so σ² lies in
  ``[df s² / χ²_{(1+L)/2, df}, df s² / χ²_{(1−L)/2, df}]`` with probability L, and the MDE,
  proportional to σ, in ``mde × sqrt(df / χ²_{(1+L)/2, df}) … mde × sqrt(df / χ²_{(1−L)/2, df})``;
* Holm's step-down correction within a family (:func:`holm`) and the Clopper–Pearson interval
  of a proportion (:func:`clopper_pearson`).

Intervals of a bounded metric (a rate, a difference of rates) are cut to its range.  The
rules that decide a claim from these numbers belong to each study (the synthetic study's:
:mod:`ftstudy.results.verdicts`); the benchmark's simulation of its own design is in
:mod:`ftstudy.results.benchstats`.  Torch-free: numpy and scipy only.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats

__all__ = ["LEVEL", "POWER", "ALPHA", "SeedTest", "finite_values", "t_power", "variance_range", "sign_flip_p",
           "relabel_p", "relabel_p_rows", "welch_rows", "one_sample", "two_sample", "holm", "clopper_pearson",
           "SeedComparison", "compare_seeds", "design_mde"]

LEVEL = 0.95  #: intervals: 95% Student t over seeds (and the 95% χ² range of the detectable effect)
POWER = 0.80  #: the detectable effect: 80% power
ALPHA = 0.05  #: the two-sided level of the tests (intervals are at 1 − ALPHA)

Bounds = tuple[float | None, float | None]


@dataclass(frozen=True)
class SeedTest:
    """A seed-level test: the estimate, its t-interval (cut to ``bounds``), the two-sided p,
    the detectable effect, the standard error and degrees of freedom, the 90% interval (the
    equivalence test's), and the exact permutation p-value."""

    n: int
    mean: float
    lo: float
    hi: float
    p: float
    mde: float
    se: float
    df: float
    lo90: float
    hi90: float
    p_perm: float


def _clip(x: float, bounds: Bounds) -> float:
    low, high = bounds
    if low is not None:
        x = max(x, low)
    if high is not None:
        x = min(x, high)
    return x


def finite_values(values: Sequence[float] | ArrayLike, what: str) -> NDArray[np.float64]:
    """``values`` as a flat float array; a ValueError naming the first value that is not a
    finite number (nan, inf) otherwise."""
    x = np.asarray(values, dtype=float).reshape(-1)
    bad = np.flatnonzero(~np.isfinite(x))
    if len(bad):
        raise ValueError(f"{what} must be finite numbers: {what}[{bad[0]}] = {float(x[bad[0]])!r} is not allowed "
                         f"(got {x.tolist()!r})")
    return x


def t_power(df: float, alpha: float = ALPHA, power: float = POWER) -> float:
    """``t_{1−α/2, df} + t_{power, df}``: the standard errors a true difference must span to be
    detected by a two-sided t test at level ``alpha`` with probability ``power``."""
    return float(stats.t.ppf(1 - alpha / 2, df)) + float(stats.t.ppf(power, df))


def variance_range(df: float, level: float = LEVEL) -> tuple[float, float]:
    """The factors ``(df / χ²_{(1+L)/2, df}, df / χ²_{(1−L)/2, df})`` that take a variance
    estimated with ``df`` degrees of freedom to the ends of its ``level`` interval (the
    square roots do the same for a standard error, and so for a detectable effect)."""
    if not df > 0 or not 0 < level < 1:
        raise ValueError(f"variance_range: df = {df!r} and level = {level!r} are not allowed: df > 0, 0 < level < 1")
    return float(df / stats.chi2.ppf((1 + level) / 2, df)), float(df / stats.chi2.ppf((1 - level) / 2, df))


def _t_test(mean: float, se: float, df: float, n: int, bounds: Bounds, p_perm: float, *,
            alpha: float = ALPHA, power: float = POWER) -> SeedTest:
    nan = math.nan
    if n < 2 or not math.isfinite(df) or df <= 0:
        return SeedTest(n, mean, nan, nan, nan, nan, nan, nan, nan, nan, p_perm)
    if se == 0:  # every seed the same value: the interval is that point
        return SeedTest(n, mean, mean, mean, 0.0 if mean != 0 else 1.0, 0.0, 0.0, df, mean, mean, p_perm)
    tq = float(stats.t.ppf(1 - alpha / 2, df))
    t90 = float(stats.t.ppf(1 - alpha, df))
    p = float(2 * stats.t.sf(abs(mean) / se, df))
    mde = t_power(df, alpha, power) * se
    return SeedTest(n, mean, _clip(mean - tq * se, bounds), _clip(mean + tq * se, bounds), p, mde, se, df,
                    _clip(mean - t90 * se, bounds), _clip(mean + t90 * se, bounds), p_perm)


def sign_flip_p(values: Sequence[float], *, max_exact: int = 16, n_random: int = 65_536, seed: int = 0) -> float:
    """Two-sided p-value of mean = 0 by flipping the signs of the per-seed values: exact (all
    2^n patterns) up to ``max_exact`` seeds, else ``n_random`` random patterns."""
    x = finite_values(values, "values")
    n = len(x)
    if n == 0:
        return math.nan
    if n <= max_exact:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))
    else:
        signs = np.random.default_rng(seed).choice((1.0, -1.0), size=(n_random, n))
    observed = abs(x.mean())
    return float(np.mean(np.abs(signs @ x / n) >= observed - 1e-12))


def _splits(n: int, na: int, max_exact: int, n_random: int, seed: int) -> NDArray[np.bool_]:
    """The relabellings of ``n`` seeds into ``na`` and ``n − na``, one boolean row each (True:
    the first set): every split when there are at most ``max_exact``, else ``n_random`` random ones."""
    if math.comb(n, na) <= max_exact:
        idx = np.array(list(itertools.combinations(range(n), na)))
        mask = np.zeros((len(idx), n), dtype=bool)
        np.put_along_axis(mask, idx, True, axis=1)
        return mask
    rng = np.random.default_rng(seed)
    mask = np.zeros((n_random, n), dtype=bool)
    perm = np.argsort(rng.random((n_random, n)), axis=1)[:, :na]
    np.put_along_axis(mask, perm, True, axis=1)
    return mask


def relabel_p_rows(a: ArrayLike, b: ArrayLike, *, max_exact: int = 200_000, n_random: int = 100_000,
                   seed: int = 0, chunk: int = 4_000_000) -> NDArray[np.float64]:
    """:func:`relabel_p` of many experiments at once: row ``r`` of the (experiments, n_a) and
    (experiments, n_b) matrices is one comparison; every row uses the same relabellings."""
    xa, xb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if xa.ndim != 2 or xb.ndim != 2 or len(xa) != len(xb):
        raise ValueError(f"relabel_p_rows needs two (experiments, seeds) matrices with as many rows, got shapes "
                         f"{xa.shape} and {xb.shape}")
    if not (np.isfinite(xa).all() and np.isfinite(xb).all()):
        raise ValueError("relabel_p_rows: the seed values must be finite numbers")
    na, nb = xa.shape[1], xb.shape[1]
    if na == 0 or nb == 0:
        return np.full(len(xa), math.nan)
    n = na + nb
    pooled = np.concatenate([xa, xb], axis=1)
    mask = _splits(n, na, max_exact, n_random, seed).astype(float)
    observed = np.abs(xa.mean(1) - xb.mean(1))
    total = pooled.sum(1)
    out = np.empty(len(pooled))
    step = max(1, chunk // len(mask))
    for i in range(0, len(pooled), step):
        sa = pooled[i:i + step] @ mask.T  # (rows, splits): the first set's sum under each relabelling
        diffs = sa / na - (total[i:i + step, None] - sa) / (n - na)
        out[i:i + step] = np.mean(np.abs(diffs) >= observed[i:i + step, None] - 1e-12, axis=1)
    return out


def relabel_p(a: Sequence[float], b: Sequence[float], *, max_exact: int = 200_000, n_random: int = 100_000,
              seed: int = 0) -> float:
    """Two-sided p-value of mean(a) = mean(b) by relabelling seeds between the two sets: exact
    over every split when there are at most ``max_exact``, else ``n_random`` random ones."""
    xa, xb = finite_values(a, "a"), finite_values(b, "b")
    return float(relabel_p_rows(xa[None, :], xb[None, :], max_exact=max_exact, n_random=n_random, seed=seed)[0])


def _welch_se_df(va: Any, vb: Any, na: int, nb: int) -> tuple[Any, Any]:
    """Standard error and Welch–Satterthwaite degrees of freedom of mean(a) − mean(b) from each
    side's squared standard error ``va = s_a²/n_a``, ``vb = s_b²/n_b`` (floats or arrays):
    ``df = (va + vb)² / (va²/(n_a − 1) + vb²/(n_b − 1))``, ``n_a + n_b − 2`` when both are 0."""
    se2 = va + vb
    denom = va ** 2 / (na - 1) + vb ** 2 / (nb - 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        df = np.where(se2 > 0, se2 ** 2 / np.where(se2 > 0, denom, 1.0), float(na + nb - 2))
    return np.sqrt(se2), df


def welch_rows(a: ArrayLike, b: ArrayLike) -> dict[str, NDArray[np.float64]]:
    """Welch's t of mean(a) − mean(b) for many experiments at once (rows of two (experiments,
    seeds) matrices): the difference, its standard error, degrees of freedom and two-sided p
    (a zero standard error gives p 0 for a nonzero difference, 1 for none)."""
    xa, xb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if xa.ndim != 2 or xb.ndim != 2 or len(xa) != len(xb) or min(xa.shape[1], xb.shape[1]) < 2:
        raise ValueError(f"welch_rows needs two (experiments, seeds >= 2) matrices with as many rows, got shapes "
                         f"{xa.shape} and {xb.shape}")
    na, nb = xa.shape[1], xb.shape[1]
    diff = xa.mean(1) - xb.mean(1)
    se, df = _welch_se_df(xa.var(1, ddof=1) / na, xb.var(1, ddof=1) / nb, na, nb)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(se > 0, 2 * stats.t.sf(np.abs(diff) / np.where(se > 0, se, 1.0), df),
                     np.where(diff != 0, 0.0, 1.0))
    return {"diff": diff, "se": se, "df": df, "p": p}


def one_sample(values: Sequence[float], bounds: Bounds = (-1.0, 1.0), *, alpha: float = ALPHA,
               power: float = POWER) -> SeedTest:
    """Student t over the per-seed values (H0: mean 0), interval cut to ``bounds``."""
    x = finite_values(values, "per-seed values")
    n = len(x)
    if n == 0:
        raise ValueError("one_sample needs at least one per-seed value")
    mean = float(x.mean())
    se = float(x.std(ddof=1) / math.sqrt(n)) if n >= 2 else math.nan
    return _t_test(mean, se, n - 1.0, n, bounds, sign_flip_p(x), alpha=alpha, power=power)


def two_sample(a: Sequence[float], b: Sequence[float], bounds: Bounds = (-1.0, 1.0), *, alpha: float = ALPHA,
               power: float = POWER) -> SeedTest:
    """Welch's t for mean(a) − mean(b) over two sets of seeds, interval cut to ``bounds``."""
    xa, xb = finite_values(a, "a"), finite_values(b, "b")
    if len(xa) < 2 or len(xb) < 2:
        raise ValueError(f"two_sample needs at least 2 seeds on each side, got {len(xa)} and {len(xb)}")
    se, df = _welch_se_df(xa.var(ddof=1) / len(xa), xb.var(ddof=1) / len(xb), len(xa), len(xb))
    return _t_test(float(xa.mean() - xb.mean()), float(se), float(df), len(xa) + len(xb), bounds,
                   relabel_p(xa, xb), alpha=alpha, power=power)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given (nan stays nan and is not counted)."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(len(p), math.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = len(ok)
    running = 0.0
    for rank, i in enumerate(ok[np.argsort(p[ok], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return [float(v) for v in out]


def clopper_pearson(k: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """The exact (Clopper–Pearson) interval of a binomial proportion k/n."""
    if not (isinstance(k, (int, np.integer)) and isinstance(n, (int, np.integer))) or not 0 <= k <= n or n < 1:
        raise ValueError(f"clopper_pearson needs integers 0 <= k <= n, n >= 1; got k={k!r}, n={n!r}")
    a = (1 - level) / 2
    lo = 0.0 if k == 0 else float(stats.beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(stats.beta.ppf(1 - a, k + 1, n - k))
    return lo, hi


# ---------------------------------------------------------------- two models by their per-seed means


@dataclass(frozen=True)
class SeedComparison:
    """Model b against model a by their per-seed means (:func:`compare_seeds`).

    ``diff = mean(b) − mean(a)`` with its Welch t-interval ``[lo, hi]`` (cut to the metric's
    range), two-sided ``p`` and the exact relabelling ``p_perm``; ``rel = diff / mean(a)`` with
    ``[rel_lo, rel_hi] = [lo, hi] / mean(a)`` (a's mean taken as known: its own uncertainty is
    left out, so the relative interval is a little narrow); the detectable effect
    ``mde_abs = (t_{1−α/2, df} + t_{power, df}) × se``, ``mde_rel = mde_abs / mean(a)``, and
    their range ``[mde_*_lo, mde_*_hi]`` from the χ² interval (``range_level``) of the pooled
    seed variance, ``var_df = n_a + n_b − 2`` degrees of freedom."""

    n_a: int
    n_b: int
    mean_a: float
    mean_b: float
    sd_a: float
    sd_b: float
    diff: float
    lo: float
    hi: float
    p: float
    p_perm: float
    se: float
    df: float
    rel: float
    rel_lo: float
    rel_hi: float
    mde_abs: float
    mde_abs_lo: float
    mde_abs_hi: float
    mde_rel: float
    mde_rel_lo: float
    mde_rel_hi: float
    var_df: int
    alpha: float
    power: float
    range_level: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _seed_means(values: Sequence[float], what: str) -> NDArray[np.float64]:
    x = np.asarray(values, dtype=float)
    if x.ndim != 1:
        raise ValueError(f"compare_seeds: {what} of shape {x.shape} is not allowed: one value per seed (a flat "
                         "list; of a (seeds, problems) matrix pass its row means)")
    if len(x) < 2:
        raise ValueError(f"compare_seeds: {what} = {x.tolist()!r} is not allowed: at least 2 per-seed values "
                         f"(one per trained model) for a seed variance")
    return finite_values(x, f"compare_seeds: {what}")


def _level(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and 0 < value < 1):
        raise ValueError(f"{name} = {value!r} is not allowed: a number in (0, 1)")


def compare_seeds(a: Sequence[float], b: Sequence[float], bounds: Bounds = (-1.0, 1.0), *, alpha: float = ALPHA,
                  power: float = POWER, range_level: float = LEVEL) -> SeedComparison:
    """Model b against model a (the reference) by their per-seed means (e.g. each seed's pass@1
    over the problems), the seed-level primary test.

    Welch's t over the seed means (:func:`two_sample` of b and a, interval cut to ``bounds``,
    the range of a difference of the metric: (−1, 1) for rates) with the exact relabelling
    p-value beside it; the change relative to a's mean; the detectable effect from t quantiles
    at the Welch degrees of freedom, ``(t_{1−α/2, df} + t_{power, df}) × SE``; and the range of
    that effect the uncertainty of the seed variance implies: ``df_v = n_a + n_b − 2``,
    ``mde × sqrt(df_v / χ²_{(1+L)/2, df_v}) … mde × sqrt(df_v / χ²_{(1−L)/2, df_v})``
    (:func:`variance_range`), which contains ``mde`` and narrows as seeds are added.  At least
    2 seeds a side (5 or more for a useful test); every value finite."""
    xa, xb = _seed_means(a, "a"), _seed_means(b, "b")
    _level("alpha", alpha)
    _level("power", power)
    _level("range_level", range_level)
    t = two_sample(xb, xa, bounds, alpha=alpha, power=power)
    mean_a, mean_b = float(xa.mean()), float(xb.mean())
    var_df = len(xa) + len(xb) - 2
    v_lo, v_hi = variance_range(var_df, range_level)
    mde_lo, mde_hi = t.mde * math.sqrt(v_lo), t.mde * math.sqrt(v_hi)

    def rel(x: float) -> float:
        return x / mean_a if mean_a > 0 else math.nan

    def rel_mde(x: float) -> float:
        return x / mean_a if mean_a > 0 else math.inf

    return SeedComparison(len(xa), len(xb), mean_a, mean_b, float(xa.std(ddof=1)), float(xb.std(ddof=1)), t.mean,
                          t.lo, t.hi, t.p, t.p_perm, t.se, t.df, rel(t.mean), rel(t.lo), rel(t.hi), t.mde, mde_lo,
                          mde_hi, rel_mde(t.mde), rel_mde(mde_lo), rel_mde(mde_hi), var_df, alpha, power, range_level)


def design_mde(seed_sd: float, n_seeds: int, baseline_mean: float, *, alpha: float = ALPHA, power: float = POWER,
               sd_df: int | None = None, range_level: float = LEVEL) -> dict[str, float]:
    """The seed-level detectable effect of a planned comparison of two models with ``n_seeds``
    seeds each, whose per-seed means spread with standard deviation ``seed_sd`` (the spread of
    one seed's score across seeds, everything within a seed averaged in):
    ``SE = seed_sd × sqrt(2 / n)``, ``df = 2n − 2``, ``mde_abs = (t_{1−α/2, df} + t_{power, df}) × SE``,
    ``mde_rel = mde_abs / baseline_mean``.

    ``sd_df``: the degrees of freedom ``seed_sd`` was estimated with (e.g. 4 from one model's 5
    seeds, 8 pooled over two); with it, ``mde_*_lo`` and ``mde_*_hi`` give the ``range_level``
    range of the detectable effect (:func:`variance_range`)."""
    if not isinstance(n_seeds, (int, np.integer)) or isinstance(n_seeds, bool) or n_seeds < 2:
        raise ValueError(f"design_mde: n_seeds = {n_seeds!r} is not allowed: an integer >= 2 seeds per model")
    if not (math.isfinite(seed_sd) and seed_sd >= 0):
        raise ValueError(f"design_mde: seed_sd = {seed_sd!r} is not allowed: a finite number >= 0")
    if not math.isfinite(baseline_mean):
        raise ValueError(f"design_mde: baseline_mean = {baseline_mean!r} is not allowed: a finite number")
    _level("alpha", alpha)
    _level("power", power)
    df = 2 * int(n_seeds) - 2
    se = seed_sd * math.sqrt(2 / n_seeds)
    absolute = t_power(df, alpha, power) * se

    def rel(x: float) -> float:
        return x / baseline_mean if baseline_mean > 0 else math.inf

    out = {"se": se, "df": float(df), "mde_abs": absolute, "mde_rel": rel(absolute), "seeds": int(n_seeds),
           "seed_sd": float(seed_sd), "alpha": alpha, "power": power}
    if sd_df is not None:
        if not isinstance(sd_df, (int, np.integer)) or isinstance(sd_df, bool) or sd_df < 1:
            raise ValueError(f"design_mde: sd_df = {sd_df!r} is not allowed: an integer >= 1")
        v_lo, v_hi = variance_range(sd_df, range_level)
        lo, hi = absolute * math.sqrt(v_lo), absolute * math.sqrt(v_hi)
        out.update({"mde_abs_lo": lo, "mde_abs_hi": hi, "mde_rel_lo": rel(lo), "mde_rel_hi": rel(hi),
                    "sd_df": int(sd_df), "range_level": range_level})
    return out
