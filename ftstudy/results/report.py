"""Aggregates of a study across seeds: mean and 95% interval per grid point.

Reads a study folder's summary.csv (one row per run) and writes its aggregate.csv and
aggregate.md (:class:`ftstudy.io.StudyDir`).  Intervals are Student-t intervals over seeds
(scipy), cut to each metric's range (:data:`METRIC_RANGES`); with one seed the interval is
undefined and left empty.  The agreement tables of ``ablate --measure`` use a hierarchical
bootstrap instead (:func:`write_agreement`).

What a study's tables and figures need to know of it (its grid axis, the columns that make a
grid point, the metrics) comes in as a :class:`StudyLayout`: the studies themselves are data
in :mod:`ftstudy.study.studies`, a layer above this one.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from ftstudy.io import RunDir, StudyDir
from ftstudy.tasks.synthetic import NO_LATENT_FLOOR  # the task's floor, quoted by the tables

__all__ = ["NO_LATENT_FLOOR", "METRICS", "as_number", "kappa_label", "METRIC_RANGES", "Axis", "StudyLayout", "aggregate", "label_changes", "write_aggregate",
           "interval_cell", "kl_collapsed", "benchmark_cell", "perplexity_cell", "metric_label", "bound_name",
           "targets_table", "AGREEMENT_COLUMNS", "T1", "T1_SAMPLING", "run_sampling", "protocol_groups", "protocol_points", "figure_rows", "write_agreement"]

# (column in summary.csv, short name in the tables)
METRICS = (
    ("generation.valid_rate", "valid"),
    ("val.ce_prior", "CE prior"),
    ("val.elbo", "ELBO"),
    ("prior_ce_minus_floor", "CE prior − floor"),
    ("posterior.kl_bits_per_token", "KL bits/tok"),
    ("posterior.informative_bits", "bits used"),
    ("posterior.codes_distinct", "codes"),
    ("posterior.aggregate_marginal_kl_bits", "agg. KL bits"),
    ("probe.same_pos_independent", "same pos, indep Z"),
    ("probe.same_pos_shared", "same pos, shared Z"),
    ("probe.noise_overlap_independent", "noise overlap, indep"),
    ("probe.noise_overlap_shared", "noise overlap, shared"),
    ("probe.mi_position_bits", "MI(Z;pos) bits"),
    ("probe.mi_collision_bits", "collision MI bits"),
    ("train_time_s", "train s"),
)


# The range each metric lives in: a t-interval over seeds is cut to it (the true value lies
# inside, so the cut interval covers it as often as the whole one did), and a rate's interval
# stays inside [0, 1].  Metrics not listed (estimates that can go below 0) are left whole.
METRIC_RANGES: dict[str, tuple[float | None, float | None]] = {
    "generation.valid_rate": (0.0, 1.0),
    "val.ce_prior": (0.0, None),
    "val.elbo": (0.0, None),
    "posterior.kl_bits_per_token": (0.0, None),
    "posterior.informative_bits": (0.0, None),
    "posterior.codes_distinct": (0.0, None),
    "posterior.aggregate_marginal_kl_bits": (0.0, None),
    "probe.same_pos_independent": (0.0, 1.0),
    "probe.same_pos_shared": (0.0, 1.0),
    "probe.noise_overlap_independent": (0.0, None),
    "probe.noise_overlap_shared": (0.0, None),
    "train_time_s": (0.0, None),
}


@dataclass(frozen=True)
class Axis:
    """A study's grid axis as its figures draw it."""

    key: str  # the column: a config field, or "change" (see label_changes)
    label: str = ""  # the axis label; the key when empty
    log: bool = False  # a log2 scale
    categorical: bool = False  # separate values (points and error bars), not a continuum (a line)

    @property
    def text(self) -> str:
        return self.label or self.key


@dataclass(frozen=True, kw_only=True)
class StudyLayout:
    """What a study's tables and figures need to know of it."""

    axis: Axis
    keys: tuple[str, ...]  # summary.csv columns whose values make a grid point (config fields)
    order: tuple[str, ...]  # rows sorted by these (numbers as numbers) after the baseline
    metrics: tuple[tuple[str, str], ...] = METRICS  # (summary.csv column, short name) of its tables
    figure4_kappas: tuple[float, ...] = ()  # κ of the paper's Figure 4 columns; () for no Figure 4
    dynamics: bool = False  # also draw its training dynamics (KL and CE against steps)


def as_number(x: Any) -> float:
    """A table cell as a number: nan for an empty or non-numeric cell."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return math.nan
    return v


def kappa_label(k: float | str) -> str:
    """κ as the paper writes it: 1/64, 1/8, 1, 8."""
    k = float(k)
    return f"1/{round(1 / k)}" if 0 < k < 1 and math.isclose(1 / k, round(1 / k)) else f"{k:g}"


def _order(v: str) -> tuple[int, float | str]:
    """Sort key of a grid value: numbers by value, before words."""
    x = as_number(v)
    return (0, x) if not math.isnan(x) else (1, v)


def aggregate(study_dir: Path, layout: StudyLayout) -> list[dict[str, Any]]:
    """One row per grid point of a study (its summary.csv's runs grouped by ``layout.keys``):
    the keys, variant, seeds, collapsed runs, then mean and 95% interval of each metric."""
    groups: dict[tuple, list[dict[str, str]]] = {}
    for r in StudyDir(study_dir).summary():
        key = tuple(r.get(k, "") for k in layout.keys)
        groups.setdefault(key, []).append(r)
    out = []
    for key, members in groups.items():
        agg: dict[str, Any] = dict(zip(layout.keys, key))
        agg["variant"] = members[0].get("variant", "")
        agg["seeds"] = len(members)
        agg["collapsed"] = sum(m.get("collapsed") == "True" for m in members)
        for col, _ in layout.metrics:
            v = np.array([as_number(m.get(col, "")) for m in members])
            v = v[np.isfinite(v)]
            agg[col] = float(v.mean()) if len(v) else math.nan
            if len(v) >= 2 and v.std() > 0:
                lo, hi = stats.t.interval(0.95, len(v) - 1, loc=v.mean(), scale=stats.sem(v))
                low_end, high_end = METRIC_RANGES.get(col, (None, None))
                lo = lo if low_end is None else max(lo, low_end)
                hi = hi if high_end is None else min(hi, high_end)
            else:
                lo = hi = math.nan
            agg[f"{col}.ci_low"], agg[f"{col}.ci_high"] = float(lo), float(hi)
        out.append(agg)
    out.sort(key=lambda a: (a["variant"] != "baseline", *(_order(a[k]) for k in layout.order)))
    return out


def interval_cell(a: dict[str, Any], col: str) -> str:
    """An aggregate column as "mean [low, high]" (the mean alone with one seed)."""
    m, lo, hi = a[col], a[f"{col}.ci_low"], a[f"{col}.ci_high"]
    if not math.isfinite(m):
        return "–"
    digits = 3 if abs(m) < 10 else 0
    if math.isfinite(lo):
        return f"{m:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"
    return f"{m:.{digits}f}"


def write_aggregate(study_dir: Path, layout: StudyLayout) -> Path | None:
    """aggregate.csv and aggregate.md of a study from its summary.csv (the .md's path; None
    without a summary.csv)."""
    study = StudyDir(study_dir)
    if not study.summary_file.exists():
        return None
    aggs = aggregate(study.path, layout)
    varying = [k for k in layout.keys if len({a[k] for a in aggs}) > 1]
    head = ["variant", *varying, "seeds", "collapsed", *[name for _, name in layout.metrics]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for a in aggs:
        cells = [a["variant"], *[str(a[k]) for k in varying], str(a["seeds"]), str(a["collapsed"]),
                 *[interval_cell(a, col) for col, _ in layout.metrics]]
        lines.append("| " + " | ".join(cells) + " |")
    md = (f"# {study.name}: mean [95% t-interval over seeds, cut to the metric's range]\n\n"
          f"Generated by `python -m ftstudy.ablate` from {study.SUMMARY}; do not edit.\n\n" + "\n".join(lines) + "\n")
    return study.write_aggregate(aggs, md)


def kl_collapsed(kl_bits: list[float], threshold_bits: float = 0.01) -> bool:
    """The collapse rule: the KL fell to ~0 and stayed there, i.e. every logged training
    KL (bits/token) of the last quarter of a run is below ``threshold_bits``."""
    return all(v < threshold_bits for v in kl_bits[len(kl_bits) * 3 // 4:])


def label_changes(aggs: list[dict[str, Any]], keys: Sequence[str]) -> None:
    """Name each row of a one-change-at-a-time study (``change``) by the grid fields among
    ``keys`` where it differs from the most common value of each field ("preset" for the
    unchanged point)."""
    free = [a for a in aggs if a["variant"] != "baseline"]
    mode = {k: Counter(a[k] for a in free).most_common(1)[0][0] for k in keys} if free else {}
    for a in aggs:
        diff = [f"{k}={a[k]}" for k in keys if a["variant"] != "baseline" and a[k] != mode[k]]
        a["change"] = ", ".join(diff) or ("baseline" if a["variant"] == "baseline" else "preset")


# ---------------------------------------------------------------- benchmark report cells

def _g(v: Any, pct: bool = False) -> str:
    if v is None:
        return "—"
    return f"{100 * v:+.0f}%" if pct else f"{v:.4g}"


def benchmark_cell(c: dict[str, Any]) -> str:
    """One cell of an ftstudy.eval.evaluate report: the value, and for a compared model its
    relative change, paired-bootstrap 95% interval of the difference and p-value."""
    if c.get("diff") is None:
        return _g(c["value"])
    lo, hi = c["ci95"]
    return (f"{_g(c['value'])} ({_g(c.get('rel_change'), pct=True)}; "
            f"Δ {c['diff']:+.3g} [{lo:+.3g}, {hi:+.3g}], p={c['p']:.2g})")


def metric_label(row: dict[str, Any], sep: str = " ") -> str:
    """A report row's metric, with its lm-eval filter when it has one."""
    return row["metric"] if row["filter"] == "none" else f"{row['metric']}{sep}({row['filter']})"


def bound_name(row: dict[str, Any]) -> str:
    """A perplexity row's bound name (e.g. iwae_16), from whichever model computed it."""
    return next((c["name"] for c in row["cells"] if c.get("name")), row["metric"])


#: The compiled-step GPU targets of the device check's compile stage (``compile.json``), each
#: as (its figure's key, name, threshold, "max" or "min", the threshold as the docs write it).
COMPILE_TARGETS: tuple[tuple[str, str, float, str, str], ...] = (
    ("quick_ms", "quick preset training step on an H200, compiled", 5.0, "max", "≤ 5 ms"),
    ("wide_bf16_mfu", "wide-shape bf16 MFU (8 layers, D 512, 8 × 1,024 tokens), best of eager and compiled",
     0.40, "min", "≥ 40%"),
    ("kv_speedup", "KV-cache generation over recompute, 256 new tokens, best of eager and compiled", 5.0, "min",
     "≥ 5×"),
)


def targets_table(result: dict[str, Any]) -> str:
    """Every target of a ``python -m ftstudy.perf suite`` result: the measured ratio, met or
    missed and by how much (markdown)."""
    lines = ["| target | measured | met |", "|---|---|---|"]
    for t in result["targets"]:
        if t["met"] is None:
            lines.append(f"| {t['target']} | – | not measured: {t['note']} |")
        else:
            word = "met" if t["met"] else f"**MISSED** (at {t['margin']:.2f} of the target)"
            lines.append(f"| {t['target']} | {t['measured']:.3g} | {word} |")
    return "\n".join(lines)


def perplexity_cell(c: dict[str, Any]) -> str:
    """nats per token (bits per byte)."""
    return f"{_g(c['value'])} ({_g(c['bits_per_byte'])})" if c["value"] is not None else "—"


# ---------------------------------------------------------------- agreement under sampling protocols

#: (figure key, short name) of the agreement tables: mean [hierarchical-bootstrap 95% interval].
AGREEMENT_COLUMNS = (
    ("exact_independent", "exact, indep Z"),
    ("exact_shared", "exact, shared Z"),
    ("within1_shared", "±1, shared Z"),
    ("within2_independent", "±2, indep Z"),
    ("within2_shared", "±2, shared Z"),
    ("exact_diff", "exact: shared − indep (80% power at)"),
    ("within2_diff", "±2: shared − indep (80% power at)"),
    ("posterior.exact_shared", "exact, posterior Z"),
    ("posterior.within2_shared", "±2, posterior Z"),
    ("posterior.recovery_exact", "at source pos"),
    ("posterior.recovery_within2", "±2 of source"),
)


def _figure_cell(s: dict[str, Any], key: str) -> str:
    m, lo, hi = s.get(key), s.get(f"{key}_ci_low"), s.get(f"{key}_ci_high")
    if m is None or not math.isfinite(m):
        return "–"
    if lo is None or not math.isfinite(lo):
        return f"{m:.3f}"
    mde = s.get(f"{key}_mde80")
    power = f" ({mde:.3f})" if mde is not None and math.isfinite(mde) else ""
    return f"{m:+.3f} [{lo:+.3f}, {hi:+.3f}]{power}" if key.endswith("_diff") else f"{m:.3f} [{lo:.3f}, {hi:.3f}]"


#: The protocol every run's own probe follows unless its config sets other sampling: a run's
#: groups file (groups.txt.gz) is its generations under t1 (re-measuring it reproduces them, measure checks).
T1 = "t1"
T1_SAMPLING: dict[str, Any] = {"temperature": 1.0, "top_k": None, "top_p": None}


def run_sampling(run: RunDir) -> dict[str, Any]:
    """The sampling of a run's own generations (its config; fields older runs lack at their defaults)."""
    task = run.config()["task"]
    return {"temperature": float(task.get("temperature", 1.0)), "top_k": task.get("top_k"),
            "top_p": task.get("top_p")}


def protocol_groups(run: RunDir, protocol: str, kind: str = "groups") -> Path | None:
    """A run's generation groups under a protocol (``kind`` "groups": prior Z, "posterior":
    the encoder's Z): its re-measurement's file, or for t1 its own groups file when its own
    probe was sampled at t1; None when there are none."""
    f = run.measure_file(protocol, kind)
    if f.exists():
        return f
    if protocol == T1 and kind == "groups" and run.groups_file.exists() and run_sampling(run) == T1_SAMPLING:
        return run.groups_file
    return None


def protocol_points(study_dir: Path, layout: StudyLayout, protocol: str) -> list[dict[str, Any]]:
    """One row per grid point of a study measured under ``protocol`` (``ablate --measure``):
    the agreement of prior-Z groups (exact, ±1, ±2; shared and independent Z) and of groups
    sharing the encoder's Z, each with a hierarchical bootstrap interval over seeds × groups
    (:func:`ftstudy.tasks.agreement.agreement_summary`), and the sampling settings.  Under
    t1, a run not re-measured counts with its own groups file (:func:`protocol_groups`),
    without posterior-Z figures."""
    from ftstudy.tasks import agreement

    study = StudyDir(study_dir)
    if not study.summary_file.exists():
        return []
    points: dict[tuple, dict[str, Any]] = {}
    for r in study.summary():
        run = study.run(r["run"])
        m, groups = run.measurement(protocol), protocol_groups(run, protocol)
        if groups is None:
            continue
        m = m if m is not None else {"sampling": T1_SAMPLING}
        key = tuple(r.get(k, "") for k in layout.keys)
        p = points.setdefault(key, {**dict(zip(layout.keys, key)), "variant": r.get("variant", ""), "runs": [],
                                    "prior": [], "posterior": [], "sampling": m["sampling"]})
        if p["sampling"] != m["sampling"]:
            raise ValueError(f"{run.path}: protocol {protocol!r} measured with {m['sampling']}, another run of the "
                             f"same point with {p['sampling']}; measure again with ablate --measure --overwrite")
        p["runs"].append(run.name)
        p["prior"].append(agreement.read_groups(groups))
        post = run.measure_file(protocol, "posterior")
        if post.exists() and "posterior" in m:
            p["posterior"].append((agreement.read_groups(post), m["posterior"]))
    rows = []
    for p in points.values():
        row = {k: p[k] for k in (*layout.keys, "variant")}
        row.update(protocol=protocol, seeds=len(p["runs"]), **{f"sampling.{k}": v for k, v in p["sampling"].items()})
        row.update(agreement.agreement_summary(p["prior"]))
        if p["posterior"]:
            post = agreement.agreement_summary([t for t, _ in p["posterior"]])
            row.update({f"posterior.{k}": v for k, v in post.items()})
            for name in ("recovery_exact", "recovery_within2", "recovery_chance_exact", "recovery_chance_within2"):
                vals = [m[name] for _, m in p["posterior"] if m.get(name) is not None]
                row[f"posterior.{name}"] = float(np.mean(vals)) if vals else math.nan
        rows.append(row)
    rows.sort(key=lambda a: (a["variant"] != "baseline", *(_order(str(a[k])) for k in layout.order)))
    return rows


def figure_rows(kappas: Sequence[float]) -> list[dict[str, Any]]:
    """The paper's Figure 4 panels at ``kappas``, measured by the same code (one "seed" of
    three groups of five: the intervals are over its groups)."""
    from ftstudy.tasks import agreement, figure4

    rows = []
    for panel in figure4.read_figure4():
        if not any(math.isclose(panel.kappa_bits, k) for k in kappas):
            continue
        # Point values only: one independent and two shared groups of five cannot carry an
        # interval or a detectable effect, so those columns are left empty, with the reason.
        summary = {k: (None if k.endswith(("_ci_low", "_ci_high", "_mde80")) else v)
                   for k, v in agreement.agreement_summary([panel.table()]).items()}
        rows.append({"kappa_bits": panel.kappa_bits, "variant": "paper Fig. 4", "seeds": 1, **summary,
                     "interval": FIGURE_NO_INTERVAL, **figure4.panel_stats(panel)})
    return rows


#: Why the paper figure's rows carry no interval.
FIGURE_NO_INTERVAL = "none: one independent and two shared groups of five sequences per κ"


def write_agreement(study_dir: Path, layout: StudyLayout, protocols: Sequence[str]) -> Path | None:
    """agreement.csv and agreement.md of a study: one table per protocol measured (and the
    paper figure's panels where the study draws Figure 4); None when nothing is measured."""
    study = StudyDir(study_dir)
    tables = {p: protocol_points(study.path, layout, p) for p in protocols}
    tables = {p: rows for p, rows in tables.items() if rows}
    if not tables:
        return None
    varying = [k for k in layout.keys if len({str(r[k]) for rows in tables.values() for r in rows}) > 1]
    head = ["variant", *varying, "seeds", "post. seeds", "valid", *[name for _, name in AGREEMENT_COLUMNS]]
    md = [f"# {study.name}: agreement on the block position, mean [95% interval]\n",
          f"Generated by `python -m ftstudy.ablate --measure` from each run's measure/ files; do not edit.\n",
          "Pairs within a group: **exact** = same block position, **±k** = positions at most k apart. "
          "Prior Z: the run's probe (per prompt one group with independent Z and groups sharing one uniform Z: "
          "32 and 4 × 24 in the quick and paper presets). Posterior Z: one group (of the same size as a shared one) "
          "per held-out sequence (32), sharing the encoder's Z of that sequence; **at source "
          "pos** = members that put the block where that sequence had it. Intervals: hierarchical percentile "
          "bootstrap (seeds, then groups within a seed, resampled with replacement; 10,000 resamples, RNG seed 0), so a rate's "
          "interval stays inside [0, 1]. **shared − indep**: the effect of sharing Z (seeds resampled jointly); in "
          "brackets after it, the smallest true difference this design detects with 80% power (two-sided 5% "
          "test, 2.8 bootstrap standard errors).\n"]
    all_rows = []
    for p, rows in tables.items():
        s = rows[0]
        posterior_seeds = [r.get("posterior.seeds") for r in rows]
        md.append(f"\n## Protocol `{p}`: temperature {s['sampling.temperature']:g}, top-k "
                  f"{s['sampling.top_k'] or 'none'}, top-p {s['sampling.top_p'] or 'none'}\n")
        if any(ps != r["seeds"] for ps, r in zip(posterior_seeds, rows) if r["variant"] != "baseline"):
            md.append("Runs not re-measured count with their own probe (groups.txt, made under this protocol); "
                      "the posterior-Z columns rest on the re-measured runs only (column *post. seeds*).\n")
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in rows:
            lines.append("| " + " | ".join([r["variant"], *[str(r[k]) for k in varying], str(r["seeds"]),
                                            str(r.get("posterior.seeds", "–")), f"{r['valid_rate']:.3f}",
                                            *[_figure_cell(r, c) for c, _ in AGREEMENT_COLUMNS]]) + " |")
        md.append("\n".join(lines) + "\n")
        all_rows += rows
    if layout.figure4_kappas:
        fig = figure_rows(layout.figure4_kappas)
        md.append("\n## The paper's Figure 4, measured by the same code\n\nThree groups of five per κ "
                  "(one independent, two shared): too few groups for an interval, so point values only.\n")
        lines = ["| κ (bits) | valid | noise per char | late blocks (≥ 32) | exact, indep Z | exact, shared Z | "
                 "±2, indep Z | ±2, shared Z | ±2: shared − indep |", "|---|---|---|---|---|---|---|---|---|"]
        for r in fig:
            lines.append(f"| {r['kappa_bits']:g} | {r['valid_rate']:.3f} | {r['noise_per_char']:.4f} | "
                         f"{r['late_fraction']:.2f} | " + " | ".join(
                             f"{r[c]:+.2f}" if c.endswith("diff") and math.isfinite(r[c]) else
                             f"{r[c]:.2f}" if math.isfinite(r[c]) else "–"
                             for c in ("exact_independent", "exact_shared", "within2_independent",
                                       "within2_shared", "within2_diff")) + " |")
        md.append("\n".join(lines) + "\n")
        all_rows += [{**r, "protocol": "paper figure"} for r in fig]
    flat = [{k: (json.dumps(v) if isinstance(v, list) else v) for k, v in r.items()} for r in all_rows]
    return study.write_agreement(flat, "\n".join(md))
