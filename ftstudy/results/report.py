"""Aggregates of a study across seeds: mean and 95% interval per grid point.

Reads ``results/ablate/<study>/summary.csv`` (one row per run) and writes
``aggregate.csv`` and ``aggregate.md`` beside it.  Intervals are Student-t intervals over
seeds (scipy); with one seed the interval is undefined and left empty.
"""

from __future__ import annotations

import csv
import io
import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from ftstudy.io import atomic_write_text

__all__ = ["NO_LATENT_FLOOR", "METRICS", "STUDY_X", "FIG4_KAPPAS", "aggregate", "label_changes", "write_aggregate", "interval_cell",
           "kl_collapsed", "benchmark_cell", "perplexity_cell", "metric_label", "bound_name"]

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
# Config fields that vary within the studies (the grid coordinates).
KEYS = ("latent_bits", "kappa_bits", "inject_layer", "free_bits_scope", "n_layers", "dim", "batch_size", "steps",
        "kl_weight_below", "post_sampler")

# Best CE per body character of the synthetic task without a latent: ln(57)/64 (the block
# position, once per sequence) + h(1/16) (the noise, per character); PAPER.md §4, FEASIBILITY.md.
NO_LATENT_FLOOR = math.log(57) / 64 - (1 / 16) * math.log(1 / 16) - (15 / 16) * math.log(15 / 16)

# Each study's grid axis, and whether to draw it on a log scale.
STUDY_X = {"kl_budget": ("kappa_bits", True), "injection_depth": ("inject_layer", False),
           "latent_bits": ("latent_bits", True), "free_bits_scope": ("free_bits_scope", False),
           "kappa_eighth": ("change", False)}
FIG4_KAPPAS = (1 / 64, 1 / 8, 1, 8)  # the paper's Figure 4 columns


def _num(x: str) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return math.nan
    return v


def aggregate(summary_csv: Path) -> list[dict[str, Any]]:
    rows = list(csv.DictReader(io.StringIO(Path(summary_csv).read_text())))
    groups: dict[tuple, list[dict[str, str]]] = {}
    for r in rows:
        key = tuple(r.get(k, "") for k in KEYS)
        groups.setdefault(key, []).append(r)
    out = []
    for key, members in groups.items():
        agg: dict[str, Any] = dict(zip(KEYS, key))
        agg["variant"] = members[0].get("variant", "")
        agg["seeds"] = len(members)
        agg["collapsed"] = sum(m.get("collapsed") == "True" for m in members)
        for col, _ in METRICS:
            v = np.array([_num(m.get(col, "")) for m in members])
            v = v[np.isfinite(v)]
            agg[col] = float(v.mean()) if len(v) else math.nan
            if len(v) >= 2 and v.std() > 0:
                lo, hi = stats.t.interval(0.95, len(v) - 1, loc=v.mean(), scale=stats.sem(v))
            else:
                lo = hi = math.nan
            agg[f"{col}.ci_low"], agg[f"{col}.ci_high"] = float(lo), float(hi)
        out.append(agg)
    out.sort(key=lambda a: (a["variant"] != "baseline", _num(a["latent_bits"]), _num(a["kappa_bits"]),
                            _num(a["inject_layer"]), a["free_bits_scope"]))
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


def write_aggregate(study_dir: Path) -> Path | None:
    """aggregate.csv and aggregate.md of a study from its summary.csv."""
    summary = Path(study_dir) / "summary.csv"
    if not summary.exists():
        return None
    aggs = aggregate(summary)
    cols = list(aggs[0])
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    w.writerows(aggs)
    atomic_write_text(Path(study_dir) / "aggregate.csv", buf.getvalue())
    varying = [k for k in KEYS if len({a[k] for a in aggs}) > 1]
    head = ["variant", *varying, "seeds", "collapsed", *[name for _, name in METRICS]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for a in aggs:
        cells = [a["variant"], *[str(a[k]) for k in varying], str(a["seeds"]), str(a["collapsed"]),
                 *[interval_cell(a, col) for col, _ in METRICS]]
        lines.append("| " + " | ".join(cells) + " |")
    md = (f"# {Path(study_dir).name}: mean [95% t-interval over seeds]\n\n"
          "Generated by `python -m ftstudy.ablate` from summary.csv; do not edit.\n\n" + "\n".join(lines) + "\n")
    path = Path(study_dir) / "aggregate.md"
    atomic_write_text(path, md)
    return path


def kl_collapsed(kl_bits: list[float], threshold_bits: float = 0.01) -> bool:
    """The collapse rule: the KL fell to ~0 and stayed there, i.e. every logged training
    KL (bits/token) of the last quarter of a run is below ``threshold_bits``."""
    return all(v < threshold_bits for v in kl_bits[len(kl_bits) * 3 // 4:])


def label_changes(aggs: list[dict[str, Any]]) -> None:
    """Name each row of a one-change-at-a-time study by the grid fields where it differs
    from the most common value of each field ("preset" for the unchanged point)."""
    free = [a for a in aggs if a["variant"] != "baseline"]
    mode = {k: Counter(a[k] for a in free).most_common(1)[0][0] for k in KEYS} if free else {}
    for a in aggs:
        diff = [f"{k}={a[k]}" for k in KEYS if a["variant"] != "baseline" and a[k] != mode[k]]
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


def perplexity_cell(c: dict[str, Any]) -> str:
    """nats per token (bits per byte)."""
    return f"{_g(c['value'])} ({_g(c['bits_per_byte'])})" if c["value"] is not None else "—"
