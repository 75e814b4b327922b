"""Aggregates of a study across seeds: mean and 95% interval per grid point.

Reads a study folder's summary.csv (one row per run) and writes its aggregate.csv and
aggregate.md (:class:`ftstudy.io.StudyDir`).  Intervals are Student-t intervals over seeds
(scipy); with one seed the interval is undefined and left empty.

What a study's tables and figures need to know of it (its grid axis, the columns that make a
grid point, the metrics) comes in as a :class:`StudyLayout`: the studies themselves are data
in :mod:`ftstudy.study.studies`, a layer above this one.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from ftstudy.io import StudyDir
from ftstudy.tasks.synthetic import NO_LATENT_FLOOR  # the task's floor, quoted by the tables

__all__ = ["NO_LATENT_FLOOR", "METRICS", "Axis", "StudyLayout", "aggregate", "label_changes", "write_aggregate",
           "interval_cell", "kl_collapsed", "benchmark_cell", "perplexity_cell", "metric_label", "bound_name",
           "targets_table"]

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


def _num(x: str) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return math.nan
    return v


def _order(v: str) -> tuple[int, float | str]:
    """Sort key of a grid value: numbers by value, before words."""
    x = _num(v)
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
            v = np.array([_num(m.get(col, "")) for m in members])
            v = v[np.isfinite(v)]
            agg[col] = float(v.mean()) if len(v) else math.nan
            if len(v) >= 2 and v.std() > 0:
                lo, hi = stats.t.interval(0.95, len(v) - 1, loc=v.mean(), scale=stats.sem(v))
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
    md = (f"# {study.name}: mean [95% t-interval over seeds]\n\n"
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
