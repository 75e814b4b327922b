"""Seed-level verdicts of the synthetic study's claims, by the rule in ``results/ablate/VERDICT_RULE.md``.

    python -m ftstudy.verdicts            # write results/ablate/verdicts.csv, kl_spent.csv, contrasts.csv,
                                          # posterior_seeds.csv, bound_bins.csv and FINDINGS.md's generated section
    python -m ftstudy.verdicts --check    # exit 1 if FINDINGS.md's generated section differs

The seed (one trained model) is the unit of replication.  Each claim row gives the per-seed
values, their mean, a Student-t interval over seeds (Welch for two sets of models), the
two-sided p-value, the exact sign-flip (or relabelling) p-value beside it, the detectable
effect from t quantiles, k of n seeds that show the effect on their own, and, as a secondary
column, the hierarchical bootstrap over seeds and groups.  Holm's correction runs within each
family of positive claims; the null claim gets an equivalence test (TOST) with margin
:data:`EQUIV_MARGIN`.  The statistics over seeds are :mod:`ftstudy.results.seedstats`'s; this module
holds the rule, the claims and the run folders.  Torch-free: it reads the committed run folders only.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from ftstudy.io import REPO_ROOT, CsvTable, RunDir, StudyDir, atomic_write_text
from ftstudy.results.report import as_number, figure_rows, kappa_label, protocol_groups
from ftstudy.results.seedstats import (ALPHA, LEVEL, POWER, SeedTest, clopper_pearson, holm, one_sample, relabel_p,
                                       sign_flip_p, two_sample)
from ftstudy.results.seedstats import finite_values as _finite
from ftstudy.tasks import agreement

__all__ = ["LEVEL", "POWER", "ALPHA", "EQUIV_MARGIN", "PAPER_FRACTION", "SWITCHED_ON", "N_BOOT", "BOOT_SEED",
           "VERDICTS", "SeedTest", "one_sample", "two_sample", "sign_flip_p", "relabel_p", "holm", "clopper_pearson",
           "decide", "switched_on", "kl_strata", "kl_regression", "SeedValue", "position_seeds", "Claim", "CLAIMS",
           "verdict_rows", "main"]

# ---------------------------------------------------------------- the rule's constants (VERDICT_RULE.md)

# LEVEL (95% Student t intervals over seeds), POWER (the detectable effect: 80% power, two-sided
# 5% test) and ALPHA (Holm's family-wise level, and each one-sided test of the equivalence test)
# are seedstats' defaults, which the rule adopts; imported above.
EQUIV_MARGIN = 0.05  #: m of "no effect within ±m" (±2 agreement difference)
PAPER_FRACTION = 0.5  #: "paper-sized effect excluded": the interval lies below this fraction of the paper's effect
SWITCHED_ON = 0.9  #: a run is switched on when its end-of-training KL is at least this × κ
N_BOOT = 10_000  #: bootstrap resamples (secondary column, and each seed's own interval)
BOOT_SEED = 0  #: the bootstrap's RNG seed
TOL = 2  #: the tolerance of the position claims (±2 body characters)

RULE = REPO_ROOT / "results" / "ablate" / "VERDICT_RULE.md"
ABLATE = REPO_ROOT / "results" / "ablate"
VERDICTS = ABLATE / "verdicts.csv"
KL_SPENT = ABLATE / "kl_spent.csv"
CONTRASTS = ABLATE / "contrasts.csv"
POSTERIOR = ABLATE / "posterior_seeds.csv"
BOUND = ABLATE / "bound_bins.csv"
REMEDY_DIR = "results/ablate/remedy/kl_budget"
FINDINGS = ABLATE / "FINDINGS.md"
BEGIN, END = "<!-- verdicts:begin -->", "<!-- verdicts:end -->"

#: The columns of verdicts.csv (the issue's list first, then what explains a row).
COLUMNS = ("claim", "study", "preset", "protocol", "kappa_bits", "n_seeds", "k_showing", "delta", "lo", "hi", "p",
           "p_holm", "mde", "verdict", "method", "family", "temperature", "p_perm", "boot_lo", "boot_hi",
           "paper_effect", "note", "per_seed", "folder")

# ---------------------------------------------------------------- statistics over seeds


# SeedTest, the t tests over seeds, the permutation p-values, Holm and Clopper–Pearson: see
# ftstudy.results.seedstats (imported above); the rule's own decision follows.


def decide(kind: str, test: SeedTest, p_holm: float, *, direction: int = 1,
           paper_effect: float | None = None) -> tuple[str, str]:
    """The verdict of one claim row and its note, by the rule (VERDICT_RULE.md).

    ``kind`` "positive" (an effect in ``direction``, +1 or −1) or "null" (no effect within
    ±:data:`EQUIV_MARGIN`); ``paper_effect`` the paper figure's own effect (same sign as
    ``direction``), None when the paper gives none."""
    if kind not in ("positive", "null"):
        raise ValueError(f"kind must be 'positive' or 'null', got {kind!r}")
    if direction not in (1, -1):
        raise ValueError(f"direction must be +1 or -1, got {direction!r}")
    if not math.isfinite(test.lo):
        return "inconclusive", "fewer than 2 seeds"
    if kind == "null":
        if -EQUIV_MARGIN <= test.lo90 and test.hi90 <= EQUIV_MARGIN:
            return f"no effect within ±{EQUIV_MARGIN:g}", ""
        return "inconclusive", f"the 90% interval [{test.lo90:+.3f}, {test.hi90:+.3f}] is not inside ±{EQUIV_MARGIN:g}"
    # Put the claim on the positive side.
    lo, hi = (test.lo, test.hi) if direction == 1 else (-test.hi, -test.lo)
    estimate = direction * test.mean
    bar = PAPER_FRACTION * abs(paper_effect) if paper_effect is not None else None
    small = bar is not None and hi < bar
    if math.isfinite(p_holm) and p_holm < ALPHA and estimate > 0:
        return "shown", ("smaller than half the paper's effect" if small else "")
    if small:
        return "paper-sized effect excluded", ""
    return "inconclusive", ""


# ---------------------------------------------------------------- KL spent


def switched_on(kl_bits: float, kappa_bits: float) -> bool:
    """The pre-declared rule: end-of-training KL >= :data:`SWITCHED_ON` × κ."""
    return bool(kl_bits >= SWITCHED_ON * kappa_bits)


def kl_strata(kl_bits: Sequence[float], delta: Sequence[float], kappa_bits: float) -> dict[str, Any]:
    """One condition's seeds split by :func:`switched_on`: the share switched on with its
    Clopper–Pearson interval, and the mean Δ (t-interval) among the switched-on seeds and
    among the others."""
    kl, d = _finite(kl_bits, "kl_bits"), _finite(delta, "delta")
    if len(kl) != len(d) or not len(kl):
        raise ValueError(f"kl_bits and delta must be equally long and non-empty, got {len(kl)} and {len(d)}")
    on = np.array([switched_on(k, kappa_bits) for k in kl])
    lo, hi = clopper_pearson(int(on.sum()), len(on))
    out: dict[str, Any] = {"n_seeds": len(on), "n_on": int(on.sum()), "share_on": float(on.mean()),
                           "share_on_lo": lo, "share_on_hi": hi}
    for name, sel in (("on", on), ("off", ~on)):
        if sel.sum() >= 2:
            t = one_sample(d[sel])
            out.update({f"delta_{name}": t.mean, f"delta_{name}_lo": t.lo, f"delta_{name}_hi": t.hi})
        else:
            out.update({f"delta_{name}": float(d[sel].mean()) if sel.any() else math.nan,
                        f"delta_{name}_lo": math.nan, f"delta_{name}_hi": math.nan})
    return out


def kl_regression(kl_bits: Sequence[float], delta: Sequence[float]) -> dict[str, float]:
    """Least-squares slope of Δ on KL spent (95% t-interval, n − 2 degrees of freedom) and
    Spearman's ρ with its p-value."""
    x, y = _finite(kl_bits, "kl_bits"), _finite(delta, "delta")
    if len(x) != len(y) or len(x) < 3:
        raise ValueError(f"kl_regression needs at least 3 equally long pairs, got {len(x)} and {len(y)}")
    fit = stats.linregress(x, y)
    tq = float(stats.t.ppf(1 - ALPHA / 2, len(x) - 2))
    rho = stats.spearmanr(x, y)
    return {"n": len(x), "slope": float(fit.slope), "slope_lo": float(fit.slope - tq * fit.stderr),
            "slope_hi": float(fit.slope + tq * fit.stderr), "slope_p": float(fit.pvalue),
            "intercept": float(fit.intercept), "spearman_rho": float(rho.statistic), "spearman_p": float(rho.pvalue)}


# ---------------------------------------------------------------- per-seed values from the run folders


@dataclass(frozen=True)
class SeedValue:
    """One run under one protocol: its ±2 agreement per group (shared and independent Z), its
    Δ with its own bootstrap interval over groups, its valid rate and the KL it spent."""

    run: str
    seed: int
    kappa_bits: float | None
    kl_bits: float | None
    shared: tuple[float, ...]
    independent: tuple[float, ...]
    n_sequences: int
    n_valid: int
    temperature: float

    @property
    def delta(self) -> float:
        return float(np.mean(self.shared) - np.mean(self.independent))

    @property
    def valid_rate(self) -> float:
        return self.n_valid / self.n_sequences

    def own_interval(self) -> tuple[float, float]:
        d = agreement.difference_bootstrap([self.shared], [self.independent], n_boot=N_BOOT, seed=BOOT_SEED)
        return d["ci_low"], d["ci_high"]


def _config(run: RunDir) -> dict[str, Any]:
    return run.record()["config"]


def _summary(run: RunDir) -> dict[str, Any]:
    s = run.summary()
    if s is None:
        raise ValueError(f"{run.path} is not finished (no summary.json)")
    return s


def run_kl(run: RunDir) -> float | None:
    """The KL a finished Free run spent at the end of training (bits/token, held-out), None for a baseline."""
    kl = _summary(run).get("posterior", {}).get("kl_bits_per_token")
    return float(kl) if kl is not None else None


def seed_value(run: RunDir, protocol: str, tol: int = TOL) -> SeedValue | None:
    """A finished run's per-group agreement under ``protocol`` (None when not measured there)."""
    path = protocol_groups(run, protocol)
    if path is None:
        return None
    table = agreement.read_groups(path)
    m = run.measurement(protocol)
    temperature = float(m["sampling"]["temperature"]) if m is not None else 1.0
    model = _config(run)["model"]
    free = int(model.get("latent_bits", 0)) > 0
    return SeedValue(run.name, int(_config(run)["train"]["seed"]), float(model["kappa_bits"]) if free else None,
                     run_kl(run) if free else None,
                     tuple(agreement.group_agreement(g, tol) for g in table.positions("shared")),
                     tuple(agreement.group_agreement(g, tol) for g in table.positions("independent")),
                     len(table), int(table.valid.sum()), temperature)


def select_runs(folder: Path, keep: Callable[[dict[str, Any]], bool]) -> list[RunDir]:
    """The finished runs of one study folder whose config (model section) ``keep`` accepts, by seed."""
    runs = [r for r in StudyDir(folder).runs(finished=True) if keep(_config(r)["model"])]
    return sorted(runs, key=lambda r: int(_config(r)["train"]["seed"]))


def position_seeds(folder: Path, protocol: str, keep: Callable[[dict[str, Any]], bool]) -> list[SeedValue]:
    out = []
    for run in select_runs(folder, keep):
        v = seed_value(run, protocol)
        if v is not None and v.shared and v.independent:
            out.append(v)
    return out


def free_at(kappa: float, **fixed: Any) -> Callable[[dict[str, Any]], bool]:
    """A run filter: a Free model at κ (bits) with the paper's loss, and the given model fields."""
    def keep(m: dict[str, Any]) -> bool:
        return (int(m.get("latent_bits", 0)) > 0 and math.isclose(float(m["kappa_bits"]), kappa)
                and float(m.get("marginal_weight", 0.0)) == 0.0 and float(m.get("kl_weight_below", 0.0)) == 0.0
                and all(m.get(k) == v for k, v in fixed.items()))
    return keep


def baseline(m: dict[str, Any]) -> bool:
    return int(m.get("latent_bits", 0)) == 0


# ---------------------------------------------------------------- the claims


@dataclass(frozen=True)
class Claim:
    """One claim of the paper about the synthetic task, and where its runs are."""

    key: str
    text: str
    kind: str  # "position", "null", "noise", "validity"
    folder: str  # the study folder, relative to the repository
    preset: str
    kappa_bits: float
    command: str

    @property
    def study(self) -> str:
        return Path(self.folder).name


QUICK_DIR = "results/ablate/kl_budget"
LONG_DIR = "results/ablate/long/kl_budget"
GPU_LONG_DIR = "results/gpu/nvidia-h200/ablate/long/kl_budget"
QUICK_CMD = "python -m ftstudy.ablate --study kl_budget --preset quick --seeds 0 1 2 3 4 5 6 7 8 9 --measure"
LONG_CMD = ("python -m ftstudy.ablate --study kl_budget --preset long --seeds 0 1 2 3 4 5 6 7 --only kappa_bits=1/8 "
            "--measure")
GPU_CMD = ("python -m ftstudy.ablate --study kl_budget --preset long --device cuda --seeds 0 1 2 --only kappa_bits=1/8 "
           "kappa_bits=1/64 latent_bits=0 --jobs 9 --measure t1 paper (on one H200)")

CLAIMS = (
    Claim("null_1/64", "κ = 1/64 bit: shared Z does not move the block position", "null", QUICK_DIR, "quick",
          1 / 64, QUICK_CMD),
    Claim("position_1/8", "κ = 1/8 bit: generations sharing Z agree on the block position", "position", QUICK_DIR,
          "quick", 1 / 8, QUICK_CMD),
    Claim("position_1/8_long", "κ = 1/8 bit, the same with longer training (D 128, 3,000 steps)", "position",
          LONG_DIR, "long", 1 / 8, LONG_CMD),
    Claim("position_1", "κ = 1 bit: Z decides the block position", "position", QUICK_DIR, "quick", 1.0, QUICK_CMD),
    Claim("noise_1", "κ = 1 bit: Z also carries the noise (shared noise over chance)", "noise", QUICK_DIR, "quick",
          1.0, QUICK_CMD),
    Claim("validity_8", "κ = 8 bits: generations become invalid (valid rate against the baseline)", "validity",
          QUICK_DIR, "quick", 8.0, QUICK_CMD),
    Claim("position_1/8_gpu", "κ = 1/8 bit, longer training, on one H200 GPU (bf16)", "position", GPU_LONG_DIR,
          "long", 1 / 8, GPU_CMD),
)

#: (family, protocol, claim keys): Holm runs within each family (VERDICT_RULE.md).
PRIMARY = ("primary", "paper", ("position_1/8", "position_1/8_long", "position_1", "validity_8"))
PRIMARY_NOISE = ("primary", "t1", ("noise_1",))
SECONDARY = ("secondary", "t1", ("position_1/8", "position_1/8_long", "position_1", "validity_8"))
NULLS = (("null", "paper", ("null_1/64",)), ("null", "t1", ("null_1/64",)))
GPU = (("gpu", "paper", ("position_1/8_gpu",)),)
SENSITIVITY_PROTOCOLS = ("t0.5", "paper", "t0.7", "t0.8", "t1")
SENSITIVITY_CLAIMS = ("position_1/8", "position_1/8_long", "position_1")


def paper_effects() -> dict[float, dict[str, float]]:
    """The paper's Figure 4 measured by our code: Δ(±2) and valid rate per κ."""
    return {float(r["kappa_bits"]): {"delta": float(r["within2_diff"]), "valid": float(r["valid_rate"])}
            for r in figure_rows((1 / 64, 1 / 8, 1.0, 8.0))}


def _fmt(x: float | None, digits: int = 3, signed: bool = True) -> str:
    if x is None or not math.isfinite(x):
        return ""
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def _claim_row(claim: Claim, protocol: str, root: Path, paper: dict[float, dict[str, float]]) -> dict[str, Any] | None:
    """One claim under one protocol: the test, k of n, the bootstrap; None when not measured."""
    folder = root / claim.folder
    base = {"claim": claim.text, "study": claim.study, "preset": claim.preset, "protocol": protocol,
            "kappa_bits": claim.kappa_bits, "folder": claim.folder}
    if claim.kind in ("position", "null"):
        seeds = position_seeds(folder, protocol, free_at(claim.kappa_bits))
        if not seeds:
            return None
        deltas = [s.delta for s in seeds]
        test = one_sample(deltas)
        own = [s.own_interval() for s in seeds]
        k = sum(lo > 0 for lo, _ in own)
        boot = agreement.difference_bootstrap([s.shared for s in seeds], [s.independent for s in seeds],
                                              n_boot=N_BOOT, seed=BOOT_SEED)
        paper_effect = paper.get(claim.kappa_bits, {}).get("delta") if claim.kind == "position" else None
        method = ("one-sample t over per-seed Δ(±2) = shared − independent agreement; p_perm exact sign flip; "
                  "k: seed's own 95% group bootstrap above 0")
        if claim.kind == "null":
            method = (f"TOST with margin ±{EQUIV_MARGIN:g} on the 90% t-interval over per-seed Δ(±2); "
                      "k: seed's own 95% group bootstrap above 0")
        per_seed = [round(d, 4) for d in deltas]
        temperature = seeds[0].temperature
        row = {**base, "n_seeds": test.n, "k_showing": k, "temperature": temperature, "_test": test,
               "boot_lo": boot["ci_low"], "boot_hi": boot["ci_high"], "paper_effect": paper_effect,
               "method": method, "per_seed": json.dumps(per_seed),
               "_kind": "null" if claim.kind == "null" else "positive",
               "_direction": 1}
        return row
    if claim.kind == "noise":
        if protocol != "t1":
            return None
        runs = select_runs(folder, free_at(claim.kappa_bits))
        if not runs:
            return None
        deltas, k = [], 0
        for r in runs:
            p = _summary(r)["probe"]
            d = p["noise_overlap_shared"] - p["noise_overlap_independent"]
            se = math.hypot((p["noise_overlap_shared_ci_high"] - p["noise_overlap_shared_ci_low"]) / 3.92,
                            (p["noise_overlap_independent_ci_high"] - p["noise_overlap_independent_ci_low"]) / 3.92)
            deltas.append(d)
            k += d - 1.96 * se > 0
        test = one_sample(deltas, bounds=(None, None))
        return {**base, "n_seeds": test.n, "k_showing": k, "temperature": 1.0, "_test": test, "boot_lo": None,
                "boot_hi": None, "paper_effect": None, "per_seed": json.dumps([round(d, 4) for d in deltas]),
                "method": ("one-sample t over per-seed (shared − independent) noise overlap / chance, the run's own "
                           "τ = 1 probe; p_perm exact sign flip; k: seed's difference above 1.96 × its "
                           "standard error"),
                "_kind": "positive", "_direction": 1}
    if claim.kind == "validity":
        free = [s for s in (seed_value(r, protocol) for r in select_runs(folder, free_at(claim.kappa_bits)))
                if s is not None]
        base_seeds = [s for s in (seed_value(r, protocol) for r in select_runs(folder, baseline)) if s is not None]
        if len(free) < 2 or len(base_seeds) < 2:
            return None
        fv, bv = [s.valid_rate for s in free], [s.valid_rate for s in base_seeds]
        test = two_sample(fv, bv)
        bar = float(np.mean(bv))
        k = sum(clopper_pearson(s.n_valid, s.n_sequences)[1] < bar for s in free)
        paper_valid = paper.get(claim.kappa_bits, {}).get("valid")
        paper_effect = (paper_valid - bar) if paper_valid is not None else None
        lo_b, hi_b = _bootstrap_two(fv, bv)
        return {**base, "n_seeds": len(free), "k_showing": k, "temperature": free[0].temperature, "_test": test,
                "boot_lo": lo_b, "boot_hi": hi_b, "paper_effect": paper_effect,
                "per_seed": json.dumps({"free": [round(v, 4) for v in fv], "baseline": [round(v, 4) for v in bv]}),
                "method": (f"Welch t of per-seed valid rate, κ = {claim.kappa_bits:g} minus the baseline "
                           f"({len(bv)} seeds); p_perm exact relabelling; k: seed's Clopper–Pearson 95% interval "
                           "below the baseline's mean"),
                "_kind": "positive", "_direction": -1}
    raise ValueError(f"claim {claim.key}: unknown kind {claim.kind!r}")


def _bootstrap_two(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Percentile bootstrap of mean(a) − mean(b), seeds resampled within each set (secondary)."""
    rng = np.random.default_rng(BOOT_SEED)
    xa, xb = np.asarray(a, float), np.asarray(b, float)
    da = xa[rng.integers(0, len(xa), (N_BOOT, len(xa)))].mean(1)
    db = xb[rng.integers(0, len(xb), (N_BOOT, len(xb)))].mean(1)
    lo, hi = np.quantile(da - db, [ALPHA / 2, 1 - ALPHA / 2])
    return float(lo), float(hi)


def _finish(rows: list[dict[str, Any]], family: str) -> list[dict[str, Any]]:
    """Holm over a family's positive rows, then each row's verdict and its flat columns."""
    positive = [r for r in rows if r["_kind"] == "positive"]
    adjusted = holm([r["_test"].p for r in positive])
    for r, ph in zip(positive, adjusted):
        r["p_holm"] = ph
    out = []
    for r in rows:
        t: SeedTest = r.pop("_test")
        kind, direction = r.pop("_kind"), r.pop("_direction")
        ph = r.get("p_holm", math.nan) if kind == "positive" else math.nan
        verdict, note = decide(kind, t, ph, direction=direction, paper_effect=r.get("paper_effect"))
        r.update({"family": family, "delta": t.mean, "lo": t.lo, "hi": t.hi, "p": t.p, "p_holm": ph, "mde": t.mde,
                  "p_perm": t.p_perm, "verdict": verdict, "note": note})
        if kind == "null":
            r["note"] = (note or "") + ("; " if note else "") + f"90% interval [{t.lo90:+.3f}, {t.hi90:+.3f}]"
        out.append({c: r.get(c) for c in COLUMNS})
    return out


def verdict_rows(root: Path = REPO_ROOT) -> list[dict[str, Any]]:
    """Every claim row of verdicts.csv, family by family."""
    root = Path(root)
    paper = paper_effects()
    claims = {c.key: c for c in CLAIMS}
    families: list[tuple[str, str, tuple[str, ...]]] = [PRIMARY, PRIMARY_NOISE, SECONDARY, *NULLS, *GPU]
    families += [(f"sensitivity {p}", p, SENSITIVITY_CLAIMS) for p in SENSITIVITY_PROTOCOLS]
    grouped: dict[str, list[dict[str, Any]]] = {}
    for family, protocol, keys in families:
        for key in keys:
            row = _claim_row(claims[key], protocol, root, paper)
            if row is not None:
                grouped.setdefault(family, []).append(row)
    out = []
    for family, rows in grouped.items():
        out += _finish(rows, family)
    return out


# ---------------------------------------------------------------- KL spent and the ablations as contrasts

#: The κ = 1/8 quick runs of every study (one change at a time from the kl_budget point), for
#: the regression of Δ on KL spent; a model that appears in several studies counts once.
KAPPA_EIGHTH_FOLDERS = ("results/ablate/kl_budget", "results/ablate/injection_depth", "results/ablate/latent_bits")


def _depth(layer: int) -> Callable[[dict[str, Any]], bool]:
    """κ = 1/8 runs whose latent enters after block ``layer`` (None in a config: L/2 = 2 at the quick preset)."""
    return lambda m: free_at(1 / 8)(m) and int(m.get("inject_layer") or int(m["n_layers"]) // 2) == layer


def _width(h: int) -> Callable[[dict[str, Any]], bool]:
    """κ = 1/8 runs with H = ``h`` bits per token."""
    return lambda m: free_at(1 / 8)(m) and int(m["latent_bits"]) == h


def kl_rows(root: Path = REPO_ROOT, protocol: str = "paper") -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per condition: seeds switched on and Δ(±2) among them; and the regression of Δ on KL
    spent over every κ = 1/8 quick run."""
    root = Path(root)
    rows = []
    conditions: list[tuple[str, str, str, Callable[[dict[str, Any]], bool], float]] = []
    for k in (1 / 64, 1 / 8, 1 / 4, 1 / 2, 1.0, 2.0, 4.0, 8.0):
        conditions.append(("kl_budget", "quick", f"κ = {kappa_label(k)}", free_at(k), k))
    conditions.append(("kl_budget", "long", "κ = 1/8", free_at(1 / 8), 1 / 8))
    # The paper's setting of the two ablations (inject after block L/2 = 2, H = 8) is the
    # kl_budget κ = 1/8 row: the same runs, with all its seeds.
    for layer in (1, 3):
        conditions.append(("injection_depth", "quick", f"inject after block {layer}", _depth(layer), 1 / 8))
    for h in (1, 2, 4, 16):
        conditions.append(("latent_bits", "quick", f"H = {h}", _width(h), 1 / 8))
    for study, preset, label, keep, kappa in conditions:
        folder = root / (LONG_DIR if preset == "long" else f"results/ablate/{study}")
        seeds = position_seeds(folder, protocol, keep)
        if not seeds:
            continue
        kl = [s.kl_bits for s in seeds]
        strata = kl_strata(kl, [s.delta for s in seeds], kappa)
        rows.append({"study": study, "preset": preset, "condition": label, "kappa_bits": kappa, "protocol": protocol,
                     "kl_mean": float(np.mean(kl)), "kl_min": float(np.min(kl)), "kl_max": float(np.max(kl)),
                     **strata, "per_seed_kl": json.dumps([round(v, 4) for v in kl]),
                     "per_seed_delta": json.dumps([round(s.delta, 4) for s in seeds])})
    pairs: dict[str, tuple[float, float]] = {}
    for rel in KAPPA_EIGHTH_FOLDERS:
        for run in select_runs(root / rel, free_at(1 / 8)):
            # one model, one point: the same run appears in several studies (copied twins, and
            # injection_depth's inject_layer = 2, the kl_budget run's config spelled out), with
            # the same seed and, being the same model, the same validation figures
            key = json.dumps([_config(run)["train"]["seed"], _summary(run).get("val")], sort_keys=True)
            v = seed_value(run, protocol)
            if key not in pairs and v is not None and v.shared and v.independent:
                pairs[key] = (float(v.kl_bits), v.delta)
    reg = kl_regression([p[0] for p in pairs.values()], [p[1] for p in pairs.values()]) if len(pairs) >= 3 else {}
    return rows, {"protocol": protocol, **reg}


def contrast_rows(root: Path = REPO_ROOT) -> list[dict[str, Any]]:
    """Injection depth and latent width as contrasts with the paper's setting (inject after
    block L/2 = 2, H = 8: the kl_budget κ = 1/8 runs, every seed): Welch t over per-seed
    values of Δ(±2), shared and independent agreement and validity, with the KL spent; Holm
    within each study and protocol."""
    root = Path(root)
    out = []
    for study, field, values, reference, keep_at in (("injection_depth", "inject_layer", (1, 3), 2, _depth),
                                                     ("latent_bits", "latent_bits", (1, 2, 4, 16), 8, _width)):
        folder = root / "results" / "ablate" / study
        for protocol in ("paper", "t1"):
            # the paper's setting is the kl_budget κ = 1/8 point: the same runs, all their seeds
            ref = position_seeds(root / QUICK_DIR, protocol, keep_at(reference))
            rows = []
            for v in values:
                cond = position_seeds(folder, protocol, keep_at(v))
                if len(cond) < 2 or len(ref) < 2:
                    continue
                row: dict[str, Any] = {"study": study, "protocol": protocol, "condition": f"{field} = {v}",
                                       "reference": f"{field} = {reference}", "n_seeds": len(cond),
                                       "n_reference": len(ref), "temperature": cond[0].temperature}
                for name, get in (("delta", lambda s: s.delta), ("shared", lambda s: float(np.mean(s.shared))),
                                  ("independent", lambda s: float(np.mean(s.independent))),
                                  ("valid", lambda s: s.valid_rate), ("kl", lambda s: float(s.kl_bits))):
                    a, b = [get(s) for s in cond], [get(s) for s in ref]
                    t = two_sample(a, b, bounds=(None, None) if name == "kl" else (-1.0, 1.0))
                    row.update({f"{name}_cond": float(np.mean(a)), f"{name}_ref": float(np.mean(b)),
                                f"{name}_diff": t.mean, f"{name}_lo": t.lo, f"{name}_hi": t.hi, f"{name}_p": t.p})
                rows.append(row)
            adjusted = holm([r["delta_p"] for r in rows])
            for r, ph in zip(rows, adjusted):
                r["delta_p_holm"] = ph
                r["verdict"] = "shown" if ph < ALPHA else "inconclusive"
            out += rows
    return out


# ---------------------------------------------------------------- posterior against prior, seed by seed


def posterior_rows(root: Path = REPO_ROOT, protocol: str = "paper") -> list[dict[str, Any]]:
    """Per seed, not pooled: where the position is lost.  For the quick κ = 1/8 and κ = 1 runs
    with the paper's loss, and with the marginal penalty (the remedy, labelled DEVIATION): KL
    spent and switched on, how often the encoder's Z puts the block at its source sequence's
    position (against chance), exact agreement of groups sharing a prior Z and a posterior Z,
    the per-bit marginal bias, and, where ``ablate --measure --codes`` ran, the aggregate
    posterior over whole codes (entropy against H bits; the prior's mass on codes the encoder
    never produces)."""
    root = Path(root)
    sets = [("paper's loss", root / QUICK_DIR, 1 / 8, 0.0), ("paper's loss", root / QUICK_DIR, 1.0, 0.0),
            ("marginal penalty 1 (DEVIATION)", root / "results/ablate/kappa_eighth", 1 / 8, 1.0),
            ("marginal penalty 1 (DEVIATION)", root / REMEDY_DIR, 1.0, 1.0)]
    rows = []
    for loss, folder, kappa, weight in sets:
        def keep(m: dict[str, Any], kappa: float = kappa, weight: float = weight) -> bool:
            return (int(m.get("latent_bits", 0)) == 8 and math.isclose(float(m["kappa_bits"]), kappa)
                    and float(m.get("marginal_weight", 0.0)) == weight and float(m.get("kl_weight_below", 0.0)) == 0
                    and m.get("free_bits_scope", "token") == "token" and int(m.get("n_layers", 4)) == 4
                    and (m.get("inject_layer") in (None, 2)))
        for run in select_runs(folder, keep):
            if run.name.endswith(tuple(f"-{x}" for x in ("steps3000", "batch_size128", "n_layers8"))):
                continue
            m = run.measurement(protocol)
            if m is None or "posterior" not in m:
                continue
            kl = run_kl(run)
            enc, post = m.get("encoder") or {}, m["posterior"]
            codes = json.loads(run.codes_file.read_text()) if run.codes_file.exists() else {}
            v = seed_value(run, protocol)
            rows.append({"loss": loss, "study": folder.name if folder.name != "kl_budget" else "kl_budget",
                         "folder": str(folder.relative_to(root)), "kappa_bits": kappa,
                         "seed": int(_config(run)["train"]["seed"]), "protocol": protocol, "kl_bits": kl,
                         "switched_on": switched_on(kl, kappa) if kl is not None else None,
                         "delta": v.delta if v is not None else None,
                         "recovery_exact": post.get("recovery_exact"),
                         "recovery_chance": post.get("recovery_chance_exact"),
                         "exact_shared_prior": m["agreement"].get("exact_shared"),
                         "exact_shared_posterior": post["agreement"].get("exact_shared"),
                         "max_bit_bias": enc.get("max_bit_bias"),
                         "aggregate_marginal_kl_bits": enc.get("aggregate_marginal_kl_bits"),
                         "code_entropy_bits": codes.get("code_entropy_mean_bits"),
                         "code_entropy_min_bits": codes.get("code_entropy_min_bits"),
                         "prior_mass_on_rare_codes": codes.get("prior_mass_on_rare_codes_mean"),
                         "valid_rate": v.valid_rate if v is not None else None})
    return rows


def posterior_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| loss | κ | seed | KL spent (on?) | Δ(±2) | encoder's Z: block at the source's position (chance) | "
             "exact agreement, prior Z → posterior Z | max per-bit bias | code entropy, mean (min) of 8 bits | "
             "prior mass on codes never produced | valid |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ent = (f"{as_number(r['code_entropy_bits']):.2f} ({as_number(r['code_entropy_min_bits']):.2f})"
               if math.isfinite(as_number(r["code_entropy_bits"])) else "not measured")
        rare = f"{as_number(r['prior_mass_on_rare_codes']):.3f}" if math.isfinite(as_number(r["prior_mass_on_rare_codes"])) else "–"
        on = {"True": "on", "False": "off"}.get(str(r["switched_on"]), "–")
        lines.append(f"| {r['loss']} | {kappa_label(r['kappa_bits'])} | {r['seed']} | {as_number(r['kl_bits']):.3f} ({on}) | "
                     f"{as_number(r['delta']):+.3f} | {as_number(r['recovery_exact']):.3f} ({as_number(r['recovery_chance']):.3f}) | "
                     f"{as_number(r['exact_shared_prior']):.3f} → {as_number(r['exact_shared_posterior']):.3f} | "
                     f"{as_number(r['max_bit_bias']):.3f} | {ent} | {rare} | {as_number(r['valid_rate']):.3f} |")
    return "\n".join(lines)


# ---------------------------------------------------------------- the information bound, band by band


def bound_rows(root: Path = REPO_ROOT, kappas: Sequence[float] = (1 / 8, 1.0),
               protocols: Sequence[str] = ("paper", "t1")) -> list[dict[str, Any]]:
    """Exact agreement of shared-Z groups per band of block position (the quick kl_budget runs),
    each band beside its own chance level (members shuffled among a prompt's shared groups)
    and beside the ceiling that (p + 2)·κ bits of Z allow at the band's middle position
    (:func:`ftstudy.tasks.agreement.agreement_ceiling`, derived for sampling at τ = 1)."""
    root = Path(root)
    rows = []
    for protocol in protocols:
        for kappa in kappas:
            tables = []
            for run in select_runs(root / QUICK_DIR, free_at(kappa)):
                path = protocol_groups(run, protocol)
                if path is not None:
                    tables.append(agreement.read_groups(path))
            if not tables:
                continue
            pooled = np.concatenate([t.position[t.valid & ~t.shared] for t in tables])
            counts = np.bincount(pooled, minlength=agreement.N_POSITIONS)
            p = counts[counts > 0] / counts.sum()
            entropy = float(-(p * np.log2(p)).sum())
            for r in agreement.agreement_by_position(tables, tol=0, n_boot=N_BOOT, seed=BOOT_SEED):
                mid = (r["low"] + r["high"]) / 2
                ceiling = agreement.agreement_ceiling(agreement.bound_bits(mid, kappa), entropy_bits=entropy)
                rows.append({"protocol": protocol, "kappa_bits": kappa, "seeds": len(tables), **r,
                             "ceiling_at_middle": float(ceiling), "marginal_entropy_bits": entropy})
    return rows


def bound_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| protocol | κ | band of block start | shared-Z groups | exact agreement [95% bootstrap] | the band's chance | "
             "ceiling from (p + 2)κ bits (τ = 1 derivation) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if not int(r["groups"]):
            continue
        lines.append(f"| {r['protocol']} | {kappa_label(r['kappa_bits'])} | {r['low']}–{r['high']} | {r['groups']} | "
                     f"{as_number(r['mean']):.3f} [{as_number(r['ci_low']):.3f}, {as_number(r['ci_high']):.3f}] | "
                     f"{_fmt(as_number(r['chance']), signed=False) or '–'} | "
                     f"{as_number(r['ceiling_at_middle']):.2f} |")
    return "\n".join(lines)


# ---------------------------------------------------------------- the generated FINDINGS section


def _interval(r: dict[str, Any], key: str = "delta", lo: str = "lo", hi: str = "hi") -> str:
    m = as_number(r[key])
    if not math.isfinite(m):
        return "–"
    if not math.isfinite(as_number(r[lo])):
        return f"{m:+.3f}"
    return f"{m:+.3f} [{as_number(r[lo]):+.3f}, {as_number(r[hi]):+.3f}]"


def _p(x: Any) -> str:
    v = as_number(x)
    return "–" if not math.isfinite(v) else (f"{v:.2g}" if v >= 0.001 else f"{v:.1e}")


def verdict_table(rows: list[dict[str, Any]], families: Sequence[str]) -> str:
    lines = ["| claim | preset | protocol (τ) | seeds (k showing) | Δ [95% t-interval] | p (Holm) | sign-flip p | "
             "detectable (80%) | bootstrap (secondary) | verdict |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["family"] not in families:
            continue
        boot = f"[{as_number(r['boot_lo']):+.3f}, {as_number(r['boot_hi']):+.3f}]" if math.isfinite(as_number(r["boot_lo"])) else "–"
        verdict = f"**{r['verdict']}**" + (f" ({r['note']})" if r["note"] else "")
        lines.append(f"| {r['claim']} | {r['preset']} | {r['protocol']} ({as_number(r['temperature']):g}) | "
                     f"{r['n_seeds']} ({r['k_showing']} of {r['n_seeds']}) | {_interval(r)} | {_p(r['p'])} "
                     f"({_p(r['p_holm'])}) | {_p(r['p_perm'])} | {as_number(r['mde']):.3f} | {boot} | {verdict} |")
    return "\n".join(lines)


def sensitivity_table(rows: list[dict[str, Any]]) -> str:
    claims = [c for c in CLAIMS if c.key in SENSITIVITY_CLAIMS]
    by = {(r["claim"], r["protocol"]): r for r in rows if r["family"].startswith("sensitivity")}
    head = "| τ | " + " | ".join(f"{c.text} ({c.preset})" for c in claims) + " |"
    lines = [head, "|---|" + "---|" * len(claims)]
    for p in SENSITIVITY_PROTOCOLS:
        cells = []
        tau = ""
        for c in claims:
            r = by.get((c.text, p))
            if r is None:
                cells.append("not measured")
                continue
            tau = f"{as_number(r['temperature']):g}"
            seeds = f"{r['n_seeds']} seed{'' if str(r['n_seeds']) == '1' else 's'}"
            cells.append(f"{_interval(r)}, {seeds} ({r['k_showing']} showing), Holm p {_p(r['p_holm'])}: "
                         f"**{r['verdict']}**")
        lines.append(f"| {tau or p} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def kl_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| study | preset | condition | seeds | KL spent, bits/token (min–max) | switched on (≥ 0.9κ) [95% CP] | "
             "Δ(±2) switched on [95% t] | Δ(±2) the others |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['study']} | {r['preset']} | {r['condition']} | {r['n_seeds']} | {as_number(r['kl_mean']):.3f} "
                     f"({as_number(r['kl_min']):.3f}–{as_number(r['kl_max']):.3f}) | {r['n_on']} of {r['n_seeds']} "
                     f"[{as_number(r['share_on_lo']):.2f}, {as_number(r['share_on_hi']):.2f}] | "
                     f"{_interval(r, 'delta_on', 'delta_on_lo', 'delta_on_hi')} | "
                     f"{_interval(r, 'delta_off', 'delta_off_lo', 'delta_off_hi')} |")
    return "\n".join(lines)


def contrast_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| study | protocol | condition − reference | seeds | Δ(±2) difference [95% Welch t] (Holm p) | shared Z | "
             "independent Z | valid | KL spent | verdict |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        def cell(name: str) -> str:
            return (f"{as_number(r[f'{name}_cond']):.3f} − {as_number(r[f'{name}_ref']):.3f} = "
                    f"{_interval(r, f'{name}_diff', f'{name}_lo', f'{name}_hi')}")
        lines.append(f"| {r['study']} | {r['protocol']} | {r['condition']} − {r['reference']} | {r['n_seeds']} vs "
                     f"{r['n_reference']} | {_interval(r, 'delta_diff', 'delta_lo', 'delta_hi')} "
                     f"({_p(r['delta_p_holm'])}) | {cell('shared')} | {cell('independent')} | {cell('valid')} | "
                     f"{cell('kl')} | **{r['verdict']}** |")
    return "\n".join(lines)


def findings_section(root: Path = REPO_ROOT) -> str:
    """The generated part of FINDINGS.md, from the three CSV files."""
    root = Path(root)
    rows = CsvTable(root / VERDICTS.relative_to(REPO_ROOT)).load().rows
    kl = CsvTable(root / KL_SPENT.relative_to(REPO_ROOT)).load().rows
    con = CsvTable(root / CONTRASTS.relative_to(REPO_ROOT)).load().rows
    if not rows:
        raise FileNotFoundError(f"{VERDICTS.relative_to(REPO_ROOT)} is missing or empty; "
                                "python -m ftstudy.verdicts writes it")
    reg_rows = [r for r in kl if r.get("study") == "regression"]
    kl = [r for r in kl if r.get("study") != "regression"]
    parts = [
        "Generated by `python -m ftstudy.verdicts` from `verdicts.csv`, `kl_spent.csv`, `contrasts.csv`, "
        "`posterior_seeds.csv` and `bound_bins.csv` (which it writes from the run folders) by the rule in "
        "`VERDICT_RULE.md`; do not edit by hand.",
        "### Verdicts: primary family (Holm over these rows)",
        verdict_table(rows, ("primary",)),
        "### The null claim (equivalence test, margin ±%g)" % EQUIV_MARGIN,
        verdict_table(rows, ("null",)),
        "### Secondary family: the same claims at τ = 1",
        verdict_table(rows, ("secondary",)),
        "### The GPU runs (their own family)",
        verdict_table(rows, ("gpu",)),
        "### Sensitivity to the sampling temperature (each τ its own Holm family of three)",
        sensitivity_table(rows),
        "### KL spent (switched on: end-of-training KL ≥ %g κ), protocol `paper`" % SWITCHED_ON,
        kl_table(kl),
    ]
    for r in reg_rows:
        parts.append(f"Across the {r['n']} κ = 1/8 quick runs of kl_budget, injection_depth and latent_bits (twins "
                     f"once), Δ(±2) under `{r['protocol']}` against KL spent: slope {as_number(r['slope']):+.2f} "
                     f"[{as_number(r['slope_lo']):+.2f}, {as_number(r['slope_hi']):+.2f}] per bit/token (p {_p(r['slope_p'])}), "
                     f"Spearman ρ {as_number(r['spearman_rho']):+.2f} (p {_p(r['spearman_p'])}).")
    parts += ["### Injection depth and latent width as contrasts with the paper's setting (Welch t over seeds; "
              "Holm within each study and protocol)", contrast_table(con)]
    bound = CsvTable(root / BOUND.relative_to(REPO_ROOT)).load().rows
    if bound:
        parts += ["### The information bound, band by band (quick, all seeds; each band against its own chance)",
                  bound_table(bound)]
    post = CsvTable(root / POSTERIOR.relative_to(REPO_ROOT)).load().rows
    if post:
        parts += ["### Posterior against prior, seed by seed (protocol `paper`)", posterior_table(post)]
    return "\n\n".join(parts)


def write_all(root: Path = REPO_ROOT) -> list[Path]:
    root = Path(root)
    rows = verdict_rows(root)
    kl, reg = kl_rows(root)
    con = contrast_rows(root)
    out = [CsvTable(root / VERDICTS.relative_to(REPO_ROOT), rows).write()]
    reg_row = {"study": "regression", **{k: (json.dumps(v) if isinstance(v, list) else v) for k, v in reg.items()}}
    out.append(CsvTable(root / KL_SPENT.relative_to(REPO_ROOT), [*kl, reg_row] if reg else kl).write())
    out.append(CsvTable(root / CONTRASTS.relative_to(REPO_ROOT), con).write())
    out.append(CsvTable(root / POSTERIOR.relative_to(REPO_ROOT), posterior_rows(root)).write())
    out.append(CsvTable(root / BOUND.relative_to(REPO_ROOT), bound_rows(root)).write())
    findings = root / FINDINGS.relative_to(REPO_ROOT)
    text = findings.read_text()
    if BEGIN not in text or END not in text:
        raise FileNotFoundError(f"{findings} has no {BEGIN} … {END} block to fill")
    head, rest = text.split(BEGIN, 1)
    atomic_write_text(findings, f"{head}{BEGIN}\n{findings_section(root)}\n{END}{rest.split(END, 1)[1]}")
    out.append(findings)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ftstudy.verdicts", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true",
                   help="write nothing: exit 1 if FINDINGS.md's generated section differs from the CSV files")
    p.add_argument("--root", type=Path, default=REPO_ROOT, help="the repository whose results/ are read")
    args = p.parse_args(argv)
    try:
        if args.check:
            findings = (args.root / FINDINGS.relative_to(REPO_ROOT)).read_text()
            quoted = findings.split(BEGIN, 1)[1].split(END, 1)[0].strip() if BEGIN in findings else ""
            if quoted != findings_section(args.root).strip():
                print(f"error: the generated section of {FINDINGS.relative_to(REPO_ROOT)} differs from the CSV files; "
                      "rebuild it with python -m ftstudy.verdicts", file=sys.stderr)
                return 1
            print("FINDINGS.md's generated section matches the CSV files python -m ftstudy.verdicts writes")
            return 0
        for path in write_all(args.root):
            print(f"[ftstudy.verdicts] wrote {path}")
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
