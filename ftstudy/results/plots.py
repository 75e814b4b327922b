"""Pure functions from committed results to figures and tables.

The notebooks, ``python -m ftstudy.ablate --plot`` and the demo all call these, so a figure
in a notebook and the PNG in ``results/figures/`` come from the same code.  Nothing here
trains or evaluates: inputs are the files ``ftstudy.run.train``, ``ftstudy.study.ablate``,
``ftstudy.eval.evaluate`` and ``ftstudy.perf.suite`` write (``metrics.csv``, ``summary.json``,
``summary.csv``, ``report.json``, ``results/perf/*.json``).
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import matplotlib

if not os.environ.get("DISPLAY") and "inline" not in matplotlib.get_backend():
    matplotlib.use("Agg")  # headless (CI, make demo); notebooks keep their inline backend

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from ftstudy.io import RunDir, StudyDir, atomic_write_text, read_metrics  # noqa: E402
from ftstudy.results.report import (  # noqa: E402
    METRICS, NO_LATENT_FLOOR, Axis, StudyLayout, aggregate, benchmark_cell, bound_name, interval_cell, kl_collapsed,
    label_changes, metric_label, perplexity_cell, protocol_groups,
)

__all__ = [
    "bench_table", "bench_likelihood_table", "plot_bench",
    "NO_LATENT_FLOOR", "read_metrics", "have", "show", "plot_training_curves", "save_figure", "figure4_text", "plot_figure4",
    "figure4_panels", "plot_study", "study_aggregates", "study_runs", "study_table", "per_seed_table", "study_figures",
    "plot_dynamics", "collapse_events", "benchmark_table", "perplexity_table", "plot_benchmark_deltas",
    "plot_perplexity", "synthetic_examples", "perf_tables", "perf_suites", "suite_tables", "plot_suite",
    "plot_mapper", "protocol_tables", "plot_agreement_by_position", "paper_figure4_panels",
    "verdict_frame", "plot_tau_sensitivity", "plot_delta_vs_kl", "plot_contrasts",
]


def _notebook_display() -> Any:
    """IPython's ``display`` when running in a notebook kernel, else None."""
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:
        return None
    return display if get_ipython() is not None else None


def show(fig: plt.Figure, path: Path | str | None = None) -> None:
    """Display ``fig`` in a notebook (if running in one), save it as PNG at ``path`` (if
    given), and close it."""
    display = _notebook_display()
    if display is not None:
        display(fig)
    if path is not None:
        save_figure(fig, Path(path))
    else:
        plt.close(fig)


def have(path: Path | str, command: str) -> bool:
    """True if ``path`` exists; otherwise say which result is missing and the command that
    makes it (a notebook cell then skips its figure instead of failing with a stack trace)."""
    path = Path(path)
    if path.exists():
        return True
    display = _notebook_display()
    if display is not None:  # rendered as a visible note in a notebook
        from IPython.display import Markdown

        display(Markdown(f"**Missing result** `{path}`. Make it with:\n\n```bash\n{command}\n```"))
    else:
        print(f"MISSING RESULT: {path}\n  make it with: {command}", file=sys.stderr)
    return False


def _label(run_dir: Path) -> str:
    s = RunDir(run_dir).summary()
    if s is None:
        raise ValueError(f"{run_dir} is not a finished run")
    if s["variant"] == "baseline":
        return "baseline"
    return f"Free, κ = {s['kappa_bits']:g} bit"


def plot_training_curves(run_dirs: list[Path], title: str = "") -> plt.Figure:
    """Validation CE under prior Z (and the ELBO) and the KL used, against training steps."""
    sns.set_theme(style="whitegrid", context="notebook")
    fig, (ax_ce, ax_kl) = plt.subplots(1, 2, figsize=(11, 4))
    colors = sns.color_palette("deep", len(run_dirs))
    for run_dir, color in zip(run_dirs, colors):
        rows = read_metrics(run_dir)
        label = _label(run_dir)
        val = [r for r in rows if r["split"] == "val"]
        ax_ce.plot([r["step"] for r in val], [r["ce_prior"] for r in val], "o-", color=color,
                   label=f"{label}: CE, prior Z")
        if any("ce_posterior_LEAKY" in r for r in val):
            ax_ce.plot([r["step"] for r in val], [r["elbo"] for r in val], "s--", color=color, alpha=0.7,
                       label=f"{label}: ELBO bound")
        train = [r for r in rows if r["split"] == "train" and "kl_bits" in r]
        if train:
            ax_kl.plot([r["step"] for r in train], [r["kl_bits"] for r in train], color=color, label=label)
    ax_ce.axhline(NO_LATENT_FLOOR, color="gray", ls=":", label=f"no-latent floor {NO_LATENT_FLOOR:.3f}")
    ax_ce.set(xlabel="step", ylabel="nats per body character", title="validation (honest figures)")
    ax_ce.legend(fontsize=8)
    ax_kl.set(xlabel="step", ylabel="bits per token", title="KL(Q(Z|S) ‖ uniform), training batches")
    if ax_kl.lines:
        ax_kl.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def save_figure(fig: plt.Figure, path: Path) -> Path:
    """Save atomically (tmp file + rename) and close the figure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")  # the suffix names the format
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def figure4_text(groups: Path | Any, letter: str | None = None, per_group: int = 8, shared_groups: int = 2) -> str:
    """The paper's Figure 4 for one run as text: one prompt, an independent-Z group and
    ``shared_groups`` shared-Z groups.  ``groups``: a groups file (a run's groups.txt.gz or a
    measurement's) or a :class:`ftstudy.tasks.agreement.GroupTable` (e.g. the paper's own
    panel, :meth:`ftstudy.tasks.figure4.FigurePanel.table`)."""
    from ftstudy.tasks import agreement

    table = groups if isinstance(groups, agreement.GroupTable) else agreement.read_groups(groups)
    rows = [(int(g), bool(sh), seq) for g, sh, seq in zip(table.group, table.shared, table.strings)]
    letter = letter or rows[0][2][0]
    mine = [r for r in rows if r[2][0] == letter]
    gids = sorted({g for g, _, _ in mine})
    indep = [g for g in gids if not any(s for gg, s, _ in mine if gg == g)][:1]
    shared = [g for g in gids if any(s for gg, s, _ in mine if gg == g)][:shared_groups]
    out = []
    for g in indep + shared:
        kind = "independent Z" if g in indep else "one shared Z"
        out.append(f"[{kind}]")
        out += [seq for gg, _, seq in mine if gg == g][:per_group]
        out.append("")
    return "\n".join(out)


def plot_figure4(panels: dict[str, Any], letter: str | None = None, per_group: int = 8,
                 shared_groups: int = 2) -> plt.Figure:
    """Figure 4 at our scale: one column per κ; per column an independent-Z group (blue
    box) and shared-Z groups (green boxes), as in the paper.  Block letters are drawn
    dark, noise red, underscores light.  ``panels``: title → groups file or GroupTable
    (:func:`figure4_text`)."""
    n = len(panels)
    rows_per_col = (1 + shared_groups) * (per_group + 1)
    fig, axes = plt.subplots(1, n, figsize=(5.2 * n, 0.16 * rows_per_col + 1), squeeze=False)
    fig.subplots_adjust(left=0.005, right=0.995, top=0.92, bottom=0.01, wspace=0.04)
    # Fixed margins, so the monospace size that fills a panel's 67 cells is known: a
    # DejaVu Sans Mono character advances 0.602 em.
    fontsize = axes[0, 0].get_position().width * fig.get_figwidth() * 72 / 67 / 0.602
    for ax, (title, path) in zip(axes[0], panels.items()):
        text = figure4_text(path, letter, per_group, shared_groups).splitlines() + [""]  # "" closes a box
        ax.set_xlim(-0.5, 66.5)
        ax.set_ylim(len(text) + 0.5, -0.5)
        ax.axis("off")
        ax.set_title(title, fontsize=10)
        y0 = None
        for y, line in enumerate(text):
            if line.startswith("["):
                y0, color = y, ("tab:blue" if "independent" in line else "tab:green")
                continue
            if not line:
                if y0 is not None:
                    ax.add_patch(plt.Rectangle((-0.5, y0 + 0.5), 67, y - y0 - 1, fill=False, ec=color, lw=1.5))
                continue
            # One text per colour (others blanked), overlaid: 3 artists per line, not 66.
            for keep, c in ((lambda ch: ch == "_", "#bbbbbb"), (lambda ch: ch == "!", "tab:red"),
                            (lambda ch: ch not in "_!", "black")):
                ax.text(-0.5, y, "".join(ch if keep(ch) else " " for ch in line), fontsize=fontsize,
                        family="DejaVu Sans Mono", ha="left", va="center", color=c)
    return fig


# Panels whose metric cannot leave [0, 1] or go below 0: the axis stops there even where a
# t-interval over three seeds does not (the seeds themselves are drawn as dots).
_BOUNDED = {"valid rate (prior Z)": (0, 1.02), "P(same block position)": (0, 1.02),
            "KL used, bits/token": (0, None), "MI(Z; position), bits": (None, None),
            "nats/char": (0, None), "shared noise / chance": (0, None)}


def plot_study(aggs: list[dict], axis: Axis, title: str = "", seeds: pd.DataFrame | None = None) -> plt.Figure:
    """Key metrics of a study (rows of ftstudy.results.report.aggregate) against its grid
    ``axis``, with 95% intervals over seeds where there are several; the baseline as a dashed
    line.  ``seeds`` (a study's summary.csv as a DataFrame) adds each run as a dot."""
    sns.set_theme(style="whitegrid", context="notebook")
    panels = (
        ("generation.valid_rate", "valid rate (prior Z)"),
        ("posterior.kl_bits_per_token", "KL used, bits/token"),
        (("probe.same_pos_independent", "probe.same_pos_shared"), "P(same block position)"),
        ("probe.mi_position_bits", "MI(Z; position), bits"),
        (("val.ce_prior", "val.elbo"), "nats/char"),
        (("probe.noise_overlap_independent", "probe.noise_overlap_shared"), "shared noise / chance"),
    )
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    free = [a for a in aggs if a["variant"] != "baseline"]
    base = [a for a in aggs if a["variant"] == "baseline"]

    x, categorical = axis.key, axis.categorical  # categorical, e.g. free_bits_scope: token / sequence
    labels = [str(a[x]) for a in free]

    def xs(rows):
        if categorical:
            return list(range(len(rows)))
        return [float(a[x]) if a[x] not in ("", None) else math.nan for a in rows]

    for ax, (cols, label) in zip(axes.flat, panels):
        for col in (cols if isinstance(cols, tuple) else (cols,)):
            y = [a[col] for a in free]
            lo = [a[f"{col}.ci_low"] for a in free]
            hi = [a[f"{col}.ci_high"] for a in free]
            name = col.split(".")[-1].replace("same_pos_", "").replace("noise_overlap_", "")
            if categorical:  # one change at a time, token/sequence: not a continuum, no line
                err = [[m - a for m, a in zip(y, lo)], [b - m for m, b in zip(y, hi)]]
                line = ax.errorbar(xs(free), y, yerr=err, fmt="o", capsize=3, label=name).lines[0]
            else:
                line, = ax.plot(xs(free), y, "o-", label=name)
                ax.fill_between(xs(free), lo, hi, color=line.get_color(), alpha=0.2)
                if seeds is not None and col in seeds.columns:
                    runs = seeds[seeds["variant"] != "baseline"]
                    ax.plot(runs[x].astype(float), runs[col], ".", color=line.get_color(), alpha=0.6, ms=5)
            if base and math.isfinite(base[0].get(col, math.nan)):
                ax.axhline(base[0][col], color=line.get_color(), ls="--", lw=1, label=f"{name}, baseline")
        if col == "val.elbo":
            ax.axhline(NO_LATENT_FLOOR, color="gray", ls=":", lw=1, label="no-latent floor")
        ax.set(xlabel=axis.text, ylabel=label)
        lo_lim, hi_lim = _BOUNDED.get(label, (None, None))
        ax.set_ylim(bottom=lo_lim, top=hi_lim)
        if categorical:
            ax.set_xticks(range(len(labels)), labels, rotation=35, ha="right", fontsize=8)
        elif axis.log:
            ax.set_xscale("log", base=2)
            finite = [v for v in xs(free) if math.isfinite(v) and v > 0]
            if finite:  # explicit limits: a panel whose metric is all NaN has no data range
                ax.set_xlim(min(finite) / 1.5, max(finite) * 1.5)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- studies (ftstudy.study.ablate results)

def study_aggregates(study_dir: Path, layout: StudyLayout) -> list[dict[str, Any]]:
    """Rows of a study's aggregate (mean and 95% t-interval over seeds per grid point),
    each named by what it changes (``change``)."""
    aggs = aggregate(study_dir, layout)
    label_changes(aggs, layout.keys)
    return aggs


def study_runs(study_dir: Path) -> pd.DataFrame:
    """A study's summary.csv: one row per finished run (config fields, then metrics)."""
    return pd.read_csv(StudyDir(study_dir).summary_file)


def study_table(aggs: list[dict[str, Any]], x: str,
                metrics: tuple[tuple[str, str], ...] | None = None) -> pd.DataFrame:
    """The study as a table: one row per grid point, "mean [low, high]" over seeds."""
    metrics = metrics or METRICS
    rows = []
    for a in aggs:
        row = {"variant": a["variant"], x: a.get(x, ""), "seeds": a["seeds"], "collapsed": a["collapsed"]}
        for col, name in metrics:
            row[name] = interval_cell(a, col)
        rows.append(row)
    return pd.DataFrame(rows)


PER_SEED = (("generation.valid_rate", "valid"), ("val.ce_prior", "CE prior"), ("val.elbo", "ELBO"),
            ("posterior.kl_bits_per_token", "KL bits/tok"), ("probe.same_pos_independent", "same pos, indep"),
            ("probe.same_pos_shared", "same pos, shared"), ("probe.noise_overlap_shared", "noise overlap, shared"),
            ("probe.mi_position_bits", "MI(Z;pos) bits"), ("collapsed", "collapsed"))


def per_seed_table(study_dir: Path, x: str) -> pd.DataFrame:
    """One row per run of a study: the grid value, the seed and the key metrics."""
    df = study_runs(study_dir)
    cols = [c for c, _ in PER_SEED if c in df.columns]
    out = df[["variant", x, "seed", *cols]].rename(columns=dict(PER_SEED))
    return out.sort_values(["variant", x, "seed"], na_position="first").reset_index(drop=True)


def figure4_panels(study_dir: Path, seed: int, kappas: tuple[float, ...], protocol: str = "") -> dict[str, Path]:
    """The groups files of the Free runs of ``seed`` at the budgets ``kappas`` (the paper's
    Figure 4 columns, a study's ``figure4_kappas``), by title; with ``protocol``, their
    re-measurement's groups under that sampling protocol (``ablate --measure``)."""
    def groups(r: RunDir) -> Path:
        return r.measure_file(protocol, "groups") if protocol else r.groups_file

    runs = [r for r in StudyDir(study_dir).runs(finished=True) if groups(r).exists()]
    panels = {}
    configs = [(r, r.config()) for r in runs]
    for k in kappas:
        for r, cfg in configs:
            m, t = cfg["model"], cfg["train"]
            if m["latent_bits"] > 0 and m["kappa_bits"] == k and t["seed"] == seed:
                panels[f"κ = {k:g} bit" + (f" ({protocol})" if protocol else "")] = groups(r)
                break
    return panels


def paper_figure4_panels(kappas: tuple[float, ...] | None = None, path: Path | None = None) -> dict[str, Any]:
    """The paper's own Figure 4 (``path``, default results/reference/paper_figure4.txt) as
    panels for :func:`plot_figure4`, by title."""
    from ftstudy.tasks import figure4

    return {f"paper, κ = {p.kappa_bits:g} bit": p.table() for p in figure4.read_figure4(path or figure4.REFERENCE)
            if kappas is None or any(math.isclose(p.kappa_bits, k) for k in kappas)}


#: The sampling protocols whose Figure 4 and agreement-by-position figures a study draws.
FIGURE_PROTOCOLS = ("t1", "paper")


def study_figures(study_dir: Path, seed: int, layout: StudyLayout, fig_dir: Path | None = None) -> list[Path]:
    """A study's metric figure and, as its ``layout`` asks, the paper's Figure 4 for ``seed``
    (PNG and text) and its training dynamics, written into ``fig_dir`` (default: the
    results folder's figures/).  [] if the study has no finished Free run."""
    study = StudyDir(study_dir)
    if not study.summary_file.exists():
        return []
    aggs = study_aggregates(study.path, layout)
    if not any(a["variant"] != "baseline" for a in aggs):
        return []
    seeds = study_runs(study.path)
    written = [save_figure(plot_study(aggs, layout.axis, title=study.name, seeds=seeds), study.figure(fig_dir))]
    panels = figure4_panels(study.path, seed, layout.figure4_kappas)
    if panels:
        written.append(save_figure(plot_figure4(panels), study.figure4(seed, fig_dir)))
        text = "\n".join(f"===== {t} =====\n{figure4_text(p)}" for t, p in panels.items())
        written.append(study.figure4(seed, fig_dir, ".txt"))
        atomic_write_text(written[-1], text)
    if layout.dynamics:
        written.append(save_figure(plot_dynamics(study.path, layout.axis.key), study.figure(fig_dir, "dynamics")))
    # ablate --measure: the figures of the two main protocols (the temperatures of the
    # sensitivity study are summarised by plot_tau_sensitivity, not drawn one by one)
    for protocol in [p for p in study.protocols() if p in FIGURE_PROTOCOLS] if layout.figure4_kappas else ():
        panels = figure4_panels(study.path, seed, layout.figure4_kappas, protocol)
        if panels:
            written.append(save_figure(plot_figure4(panels, per_group=5), study.figure4(seed, fig_dir,
                                                                                        protocol=protocol)))
        kappas = tuple(k for k in (1 / 8, 1.0) if protocol_tables(study.path, protocol, k))
        if kappas:
            written.append(save_figure(plot_agreement_by_position(study.path, protocol, kappas),
                                       study.figure(fig_dir, f"agreement_position_{protocol}")))
    return written


# ---------------------------------------------------------------- training dynamics

def _runs_by(study_dir: Path, x: str) -> dict[Any, list[tuple[int, Path]]]:
    """Runs of a study with metrics by grid value (None for the baseline), as (seed, dir)."""
    out: dict[Any, list[tuple[int, Path]]] = {}
    for r in StudyDir(study_dir).runs():
        if not r.metrics_file.exists():
            continue
        cfg = r.config()
        m = cfg["model"]
        key = None if m["latent_bits"] == 0 else {**m, **cfg["train"], **cfg.get("task", {})}.get(x)
        out.setdefault(key, []).append((cfg["train"]["seed"], r.path))
    return out


def collapse_events(study_dir: Path, x: str, threshold_bits: float = 0.01) -> pd.DataFrame:
    """Per Free run: the final training KL, whether the run collapsed (summary.csv's rule:
    every logged KL of the last quarter below ``threshold_bits``), and the last logged step
    with the KL at or above the threshold, after which it stayed below (empty if the KL
    ended above it)."""
    rows = []
    for key, runs in _runs_by(study_dir, x).items():
        if key is None:
            continue
        for seed, d in runs:
            kl = [(r["step"], r["kl_bits"]) for r in read_metrics(d) if r["split"] == "train" and "kl_bits" in r]
            if not kl:
                continue
            above = [s for s, v in kl if v >= threshold_bits]
            rows.append({x: key, "seed": seed, "final KL bits/tok": kl[-1][1],
                         "collapsed": kl_collapsed([v for _, v in kl], threshold_bits),
                         "KL below threshold after step": (None if above and above[-1] == kl[-1][0]
                                                          else (above[-1] if above else kl[0][0]))})
    return pd.DataFrame(rows).sort_values([x, "seed"]).reset_index(drop=True) if rows else pd.DataFrame()


def plot_dynamics(study_dir: Path, x: str, smooth: int = 5) -> plt.Figure:
    """Training KL (top) and validation CE under prior Z (bottom) against steps, one column
    per grid value and one line per seed; the budget κ dashed, the baseline's CE grey, a
    collapsed run drawn with an ×."""
    sns.set_theme(style="whitegrid", context="notebook")
    by = _runs_by(study_dir, x)
    keys = sorted(k for k in by if k is not None)
    if not keys:
        raise ValueError(f"{study_dir} holds no finished Free run with a {x!r} to plot")
    fig, axes = plt.subplots(2, len(keys), figsize=(2.6 * len(keys) + 1, 5.5), squeeze=False, sharex=True)
    base = [read_metrics(d) for _, d in by.get(None, [])]
    colors = sns.color_palette("deep", 10)
    for j, key in enumerate(keys):
        ax_kl, ax_ce = axes[0, j], axes[1, j]
        for seed, d in sorted(by[key]):
            rows = read_metrics(d)
            kl = [(r["step"], r["kl_bits"]) for r in rows if r["split"] == "train" and "kl_bits" in r]
            c = colors[seed % 10]
            if kl:
                steps, vals = zip(*kl)
                w = max(1, min(smooth, len(vals)))
                vals = np.convolve(vals, np.ones(w) / w, mode="valid")
                ax_kl.plot(steps[w - 1:], vals, color=c, lw=1, label=f"seed {seed}")
                if kl_collapsed([v for _, v in kl]):  # the rule of collapse_events and summary.csv
                    ax_kl.plot(steps[-1], vals[-1], "x", color=c, ms=9, mew=2)
            val = [(r["step"], r["ce_prior"]) for r in rows if r["split"] == "val" and "ce_prior" in r]
            if val:
                ax_ce.plot(*zip(*val), "o-", color=c, ms=3, lw=1)
        kappa = float(key) if x == "kappa_bits" else float(RunDir(by[key][0][1]).config()["model"]["kappa_bits"])
        ax_kl.axhline(kappa, color="black", ls="--", lw=1, label="κ")
        ax_kl.axhline(0.9 * kappa, color="black", ls=":", lw=0.8, label="0.9 κ (switched on)")
        for rows in base:
            val = [(r["step"], r["ce_prior"]) for r in rows if r["split"] == "val" and "ce_prior" in r]
            if val:
                ax_ce.plot(*zip(*val), color="gray", lw=1, alpha=0.7)
        ax_kl.set_title(f"{x} = {key:g}" if isinstance(key, float) else f"{x} = {key}", fontsize=10)
        ax_kl.set_ylim(bottom=0)
        ax_ce.set_xlabel("step")
        if j == 0:
            ax_kl.set_ylabel("KL, bits/token (train)")
            ax_ce.set_ylabel("CE, prior Z (val)")
            ax_kl.legend(fontsize=7)
    fig.suptitle(f"{Path(study_dir).name}: where the KL goes (× = collapsed), and the honest CE "
                 "(grey: baseline)", fontsize=11)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- benchmarks (ftstudy.eval.evaluate reports)

def _report(report: Path | dict[str, Any]) -> dict[str, Any]:
    return report if isinstance(report, dict) else json.loads(Path(report).read_text())


def benchmark_table(report: Path | dict[str, Any], subtasks: bool = False) -> pd.DataFrame:
    """The paper's Tables 1–2 layout: rows grouped (generative code, generative math, …),
    one column per model; every compared cell carries the relative change, the paired
    bootstrap 95% interval of the difference and the permutation p-value."""
    r = _report(report)
    labels = [c["label"] for c in r["checkpoints"]]
    rows = []
    for row in r["table"]:
        task = row["task"]
        if not subtasks and task.startswith("ftstudy_arithmetic_"):
            continue
        rows.append({"group": row["group"], "task": task, "metric": metric_label(row),
                     **{lab: benchmark_cell(c) for lab, c in zip(labels, row["cells"])}})
    return pd.DataFrame(rows).set_index(["group", "task", "metric"])


def perplexity_table(report: Path | dict[str, Any]) -> pd.DataFrame:
    """Honest perplexity on the validation shard: NLL under prior Z, the ELBO and the
    importance-weighted bound, nats per token (bits per byte), one column per model."""
    r = _report(report)
    labels = [c["label"] for c in r["checkpoints"]]
    rows = []
    for row in r["perplexity"]:
        rows.append({"bound": bound_name(row), **{lab: perplexity_cell(c) for lab, c in zip(labels, row["cells"])}})
    return pd.DataFrame(rows).set_index("bound")


def plot_benchmark_deltas(report: Path | dict[str, Any], subtasks: bool = False) -> plt.Figure:
    """Each Free model minus the baseline per task, with the paired 95% interval (a forest
    plot); one panel per task because the metrics have different units."""
    sns.set_theme(style="whitegrid", context="notebook")
    r = _report(report)
    rows = [row for row in r["table"] if subtasks or not row["task"].startswith("ftstudy_arithmetic_")]
    fig, axes = plt.subplots(1, len(rows), figsize=(3.2 * len(rows) + 0.5, 3.6), squeeze=False)
    for ax, row in zip(axes[0], rows):
        cells = [c for c in row["cells"] if c.get("diff") is not None]
        ys = range(len(cells))
        for y, c in zip(ys, cells):
            lo, hi = c["ci95"]
            color = "tab:red" if c["p"] < 0.05 else "tab:gray"
            ax.errorbar(c["diff"], y, xerr=[[c["diff"] - lo], [hi - c["diff"]]], fmt="o", color=color, capsize=3)
        ax.axvline(0, color="black", lw=1)
        ax.set_yticks(list(ys), [c["label"] for c in cells])
        ax.invert_yaxis()
        metric = metric_label(row, sep="\n")
        ax.set_title(f"{row['task'].removeprefix('ftstudy_')}\nΔ {metric}", fontsize=9)
    fig.suptitle("Free − baseline, paired 95% interval (red: p < 0.05)", fontsize=10)
    fig.tight_layout()
    return fig


def plot_perplexity(report: Path | dict[str, Any]) -> plt.Figure:
    """The three honest bounds per model, bits per byte (lower is better)."""
    sns.set_theme(style="whitegrid", context="notebook")
    r = _report(report)
    data = [{"model": c["label"], "bound": bound_name(row), "bits per byte": c["bits_per_byte"]}
            for row in r["perplexity"] for c in row["cells"] if c["value"] is not None]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    if data:
        sns.barplot(pd.DataFrame(data), x="model", y="bits per byte", hue="bound", ax=ax)
    ax.set_title("validation perplexity: prior Z, ELBO, importance-weighted bound")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- the CPU-scale suite (issue 15)

def _bench_cell(row: dict[str, Any], label: str, metric: str) -> str:
    m = row["models"].get(label)
    if m is None:
        return "—"
    cell = f"{m[metric]:.3f}"
    for ref in ("baseline", "matched"):
        c = next((v for k, v in row.get("comparisons", {}).items()
                  if k.startswith(f"{label} vs {ref}")), None)
        if c is not None:
            c = c[metric]
            rel = "" if c["rel"] != c["rel"] else f" {c['rel']:+.0%} [{c['rel_low']:+.0%}, {c['rel_high']:+.0%}]"
            cell += f"; vs {ref}:{rel} p {c['p']:.2g}"
    return cell


def bench_table(report: Path | dict[str, Any], metric: str = "pass@1") -> pd.DataFrame:
    """The suite's report (``python -m ftstudy.benchmark``) in the paper's Table 1 layout: a row
    per task, a column per model (mean over seeds and problems; relative change to the baseline
    and to the matched baseline with the hierarchical-bootstrap interval and p-value), and the
    design's detectable effect."""
    r = _report(report)
    rows = []
    for row in r["rows"]:
        d = {"group": row["group"], "task": row["task"].removeprefix("ftstudy_bench_")}
        d.update({lab: _bench_cell(row, lab, metric) for lab in r["labels"]})
        if "mde" in row:
            d["detectable (seed t / bootstrap)"] = " / ".join("—" if v != v else f"{v:+.0%}"
                                                         for v in (row["mde"]["mde_rel"], row["mde_test"]["mde_rel"]))
            d["verdict"] = row["verdict"]
        rows.append(d)
    return pd.DataFrame(rows).set_index(["group", "task"])


def bench_likelihood_table(report: Path | dict[str, Any]) -> pd.DataFrame:
    """Bits per byte of each task's held-out problems (mean over seeds): NLL under prior Z, ELBO, IWAE."""
    r = _report(report)
    k = r["settings"]["likelihood_k"]
    rows = []
    lk = r["likelihood"]
    for fam in sorted({f for lab in lk for f in lk[lab]}):
        for key, name in (("nll_prior_bits_per_byte", "NLL, prior Z"), ("elbo_bits_per_byte", "ELBO"),
                          (f"iwae_{k}_bits_per_byte", f"IWAE-{k}")):
            rows.append({"task": fam, "bound": name,
                         **{lab: lk.get(lab, {}).get(fam, {}).get(key, {}).get("mean") for lab in r["labels"]}})
    return pd.DataFrame(rows, columns=["task", "bound", *r["labels"]]).set_index(["task", "bound"])


def plot_bench(report: Path | dict[str, Any]) -> plt.Figure:
    """pass@1 and distinct correct answers per task and model: the mean over seeds and each
    seed's value (dots)."""
    sns.set_theme(style="whitegrid", context="notebook")
    r = _report(report)
    rows = [row for row in r["rows"] if row["models"]]
    fig, axes = plt.subplots(2, len(rows), figsize=(3.3 * len(rows) + 0.5, 6.4), squeeze=False)
    for j, row in enumerate(rows):
        labels = [lab for lab in r["labels"] if lab in row["models"]]
        for i, metric in enumerate(("pass@1", "distinct_correct")):
            ax = axes[i][j]
            means = [row["models"][lab][metric] for lab in labels]
            ax.bar(range(len(labels)), means, color=["tab:gray", "tab:brown"] + ["tab:blue"] * (len(labels) - 2))
            if metric == "pass@1":
                for x, lab in enumerate(labels):
                    ys = row["models"][lab]["pass@1_by_seed"]
                    ax.plot([x] * len(ys), ys, "k.", ms=5)
                ax.axhspan(0.2, 0.8, color="tab:green", alpha=0.06)
            ax.set_xticks(range(len(labels)), [lab.replace("free k=", "κ ").replace("matched ", "matched\n")
                                               for lab in labels], fontsize=8)
            ax.set_title(f"{row['task'].removeprefix('ftstudy_bench_')}: {metric}", fontsize=10)
    fig.suptitle("CPU-scale suite: mean over seeds (dots: each seed; band: the calibration target)", fontsize=10)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- the synthetic task itself

def decide_table(report: Path | dict[str, Any]) -> pd.DataFrame:
    """The decision benchmark's report (``ftstudy decide``): a row per task with its gate and
    trivial baselines, a column per model: pass@1, mean over seeds, and the per-seed values."""
    r = _report(report)
    rows = []
    for task, row in r["tasks"].items():
        gate = row.get("gate", {})
        d = {"task": task, "gate": "pass" if gate.get("passed") else
             ("fail: " + ", ".join(k for k, v in gate.items() if k != "passed" and not v) if gate else "—"),
             "baselines": ", ".join(f"{k} {v:.3f}" for k, v in row["baselines"].items())}
        for lab in r["labels"]:
            m = row["models"].get(lab)
            d[lab] = "—" if m is None else f"{m['pass@1']:.3f} (" + " ".join(f"{v:.2f}" for v in m["pass@1_by_seed"]) + ")"
        rows.append(d)
    return pd.DataFrame(rows).set_index("task")


def decide_comparisons(report: Path | dict[str, Any]) -> pd.DataFrame:
    """The decision benchmark's seed-level comparisons (primary), with the bootstrap beside."""
    r = _report(report)
    rows = []
    for task, row in r["tasks"].items():
        for name, c in row.get("comparisons", {}).items():
            bs = c.get("bootstrap") or {}
            rows.append({"task": task, "comparison": name, "Δ": round(c["diff"], 3),
                         "95% t interval": f"[{c['lo']:+.3f}, {c['hi']:+.3f}]", "p": c["p"], "p perm.": c["p_perm"],
                         "p Holm": c.get("p_holm"), "detectable (rel.)": f"{c['mde_rel']:+.0%}",
                         "bootstrap interval": f"[{bs['ci_low']:+.3f}, {bs['ci_high']:+.3f}]" if bs else "—",
                         "verdict": c["verdict"], "k of n": "{} of {}".format(*c["k_of_n"])})
    return pd.DataFrame(rows).set_index(["task", "comparison"]) if rows else pd.DataFrame()


def plot_decide(report: Path | dict[str, Any]) -> plt.Figure:
    """The decision benchmark's scores, a column per task: on top each model's score (pass@1,
    creativity on the creativity tasks) by seed (dots) and mean over seeds (bar), the trivial
    baselines as lines; below what the task's gate reads (per-step edge validity on the route
    tasks, the valid rate on the creativity tasks) with the gate's threshold dashed."""
    sns.set_theme(style="whitegrid", context="notebook")
    r = _report(report)
    tasks = [(t, row) for t, row in r["tasks"].items() if row["models"]]
    fig, axes = plt.subplots(2, len(tasks), figsize=(3.2 * len(tasks) + 0.5, 6.4), squeeze=False)
    styles = {"blind": ":", "walker": "--", "memorizer": "-.", "myopic": "--", "oracle": "-"}
    colors = {"baseline": "tab:gray", "seeded baseline": "tab:green"}
    for j, (task, row) in enumerate(tasks):
        labels = [lab for lab in r["labels"] if lab in row["models"]]
        gate_metric, threshold = (("edge_validity", r["gates"]["edge_validity"]) if task.startswith("route")
                                  else ("valid", 0.5))
        for i, (metric, ax) in enumerate((("pass@1", axes[0][j]), (gate_metric, axes[1][j]))):
            for x, lab in enumerate(labels):
                vals = row["models"][lab].get(f"{metric}_by_seed", [])
                if not vals:
                    continue
                ax.bar(x, sum(vals) / len(vals), alpha=0.6,
                       color=colors.get(lab, "tab:brown" if lab.startswith("matched") else "tab:blue"))
                ax.plot([x] * len(vals), vals, "k.", ms=5)
            ax.set_xticks(range(len(labels)), [lab.replace("free k=", "κ ").replace("matched ", "matched\n")
                                               .replace("seeded baseline", "seeded") for lab in labels], fontsize=8)
            if i == 0:
                for name, v in row["baselines"].items():
                    ax.axhline(v, color="0.3", lw=0.8, ls=styles.get(name, "-"), label=f"{name} {v:.2f}")
                ax.legend(fontsize=6, loc="upper right")
                gate = row.get("gate", {})
                ax.set_title(f"{task} (gate {'passed' if gate.get('passed') else 'failed'})", fontsize=9)
            else:
                ax.axhline(threshold, color="tab:red", lw=0.8, ls="--")
                ax.set_ylim(0, 1.05)
                ax.set_title(gate_metric.replace("_", " "), fontsize=9)
    axes[0][0].set_ylabel("pass@1 (creativity on sibling, triangle)", fontsize=8)
    axes[1][0].set_ylabel("what the gate reads (red: its threshold)", fontsize=8)
    fig.suptitle("Decision benchmark: mean over seeds (dots: each seed; lines: trivial baselines)", fontsize=10)
    fig.tight_layout()
    return fig


def plot_decide_curves(curves_csv: Path | str, gate: tuple[float, float] = (0.2, 0.8)) -> plt.Figure:
    """Calibration curves: each task's pass@1 (creativity for the creativity tasks) and, dashed,
    what its gate reads besides (the route tasks' per-step edge validity, the creativity tasks'
    valid rate) against the training step, one line per baseline seed, the [0.2, 0.8] band shaded."""
    df = pd.read_csv(curves_csv)
    tasks = list(dict.fromkeys(df["task"]))
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.2 * len(tasks), 3.0), sharey=True, squeeze=False)
    for ax, task in zip(axes[0], tasks):
        ax.axhspan(*gate, color="0.92")
        for seed, g in df[df["task"] == task].groupby("seed"):
            g = g.sort_values("step")
            line = ax.plot(g["step"], g["pass@1"], marker="o", ms=3, label=f"seed {seed}")[0]
            gated = "edge_validity" if g["edge_validity"].notna().any() else "valid"
            if g[gated].notna().any():
                ax.plot(g["step"], g[gated], ls="--", color=line.get_color(), lw=1)
        ax.set_title(task, fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylim(0, 1.02)
    axes[0][0].set_ylabel("pass@1 (dashed: edge validity / valid rate)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def synthetic_examples(n: int = 8, seed: int = 0) -> pd.DataFrame:
    """Samples from the task's generator with their ground truth, and what the checker says
    about each sample and about a corrupted copy of it (one body character changed)."""
    from ftstudy.tasks.synthetic import check, sample_with_info

    info = sample_with_info(n, seed)
    rows = []
    for s, pos, letter in zip(info.strings, info.positions, info.letters):
        ok, found = check(s)
        body = list(s)
        far = 2 + (int(pos) + 40) % (len(s) - 2)  # a body cell outside the block: a stray letter
        body[far] = letter if body[far] != letter else "_"
        bad = "".join(body)
        bad_ok, _ = check(bad)
        rows.append({"sequence": s, "letter": letter, "block at": int(pos), "checker: valid": ok,
                     "checker: position": found, "corrupted copy valid": bad_ok})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- performance (ftstudy.perf.suite results)

def perf_tables(perf_dir: Path) -> dict[str, pd.DataFrame]:
    """Every ``results/perf/*.json`` as a table, by file stem."""
    out = {}
    for p in sorted(Path(perf_dir).glob("*.json")):
        data = json.loads(p.read_text())
        rows = data if isinstance(data, list) else data.get("rows", [data])
        out[p.stem] = pd.DataFrame(rows)
    return out


def perf_suites(perf_dir: Path) -> dict[str, dict[str, Any]]:
    """The ``python -m ftstudy.perf suite`` results under ``perf_dir``, by machine."""
    out = {}
    for p in sorted(Path(perf_dir).glob("*.json")):
        data = json.loads(p.read_text())
        if isinstance(data, dict) and "targets" in data and "rows" in data:
            out[data.get("machine", p.stem)] = data
    return out


def suite_tables(result: dict[str, Any]) -> dict[str, pd.DataFrame]:
    """A suite result as tables: training steps, generation, evaluation, mapper, targets."""
    rows = pd.DataFrame(result["rows"])
    out = {}
    for bench, cols in (("train", ["shape", "dtype", "impl", "params", "step_s", "tokens_per_s", "peak_gib", "mfu"]),
                        ("generate", ["shape", "impl", "new_tokens", "batch", "cache_tokens_per_s",
                                      "recompute_tokens_per_s", "speedup"]),
                        ("loglikelihood", ["shape", "impl", "requests", "batch_size", "requests_per_s"]),
                        ("mapper", ["bits", "tokens", "dim", "dtype", "matmul_s", "mapper_s", "ratio_to_matmul"])):
        part = rows[rows["bench"] == bench] if "bench" in rows else rows.iloc[0:0]
        out[bench] = part[[c for c in cols if c in part.columns]].reset_index(drop=True)
    t = pd.DataFrame(result["targets"])
    out["targets"] = t[[c for c in ("target", "measured", "threshold", "met", "margin", "note") if c in t.columns]]
    return out


def plot_suite(result: dict[str, Any]) -> plt.Figure:
    """Training throughput (tokens/s) and peak memory per implementation and shape, and the
    baseline's model FLOP utilisation against the matmul peak measured in the same run."""
    sns.set_theme(style="whitegrid", context="notebook")
    train = suite_tables(result)["train"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, col, title, log in ((axes[0], "tokens_per_s", "training tokens/s (higher is better)", True),
                                (axes[1], "peak_gib", "peak memory of a training step, GiB", True)):
        sns.barplot(train, x="shape", y=col, hue="impl", ax=ax)
        ax.set_title(title, fontsize=10)
        if log:
            ax.set_yscale("log")
        ax.legend(fontsize=7)
    ours = train[train["impl"].str.startswith("ftstudy")]
    sns.barplot(ours, x="shape", y="mfu", hue="impl", ax=axes[2])
    axes[2].set_title("model FLOP utilisation (of the measured matmul peak)", fontsize=10)
    axes[2].set_ylim(0, 1)
    axes[2].legend(fontsize=7)
    fig.suptitle(f"{result['machine']}: " + ", ".join(sorted(set(train['dtype']))), fontsize=11)
    fig.tight_layout()
    return fig


def plot_mapper(tables: dict[str, pd.DataFrame]) -> plt.Figure:
    """The binary mapper's time against its matmul floor (and the naive reference), per
    machine and latent width H."""
    sns.set_theme(style="whitegrid", context="notebook")
    frames = [(df[df["bench"] == "mapper"] if "bench" in df.columns else df).assign(machine=name)
              for name, df in tables.items() if "mapper_s" in df.columns]
    if not frames:
        raise ValueError("no mapper benchmark among the perf results (python -m ftstudy.perf mapper)")
    df = pd.concat(frames, ignore_index=True)
    values = [c for c in ("matmul_s", "mapper_s", "reference_s") if c in df.columns]
    long = df[["machine", "bits", *values]].melt(id_vars=["machine", "bits"], value_vars=values,
                                                 var_name="implementation", value_name="seconds")
    long["case"] = long["machine"] + ", H=" + long["bits"].astype(str)
    fig, ax = plt.subplots(figsize=(7, 3.6))
    sns.barplot(long, x="case", y="seconds", hue="implementation", ax=ax)
    ax.set_yscale("log")
    ax.set_title("binary mapper (forward + backward) against its matmul floor")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- agreement against the information bound

def protocol_tables(study_dir: Path, protocol: str, kappa: float, groups: str = "groups") -> list[Any]:
    """The group tables (:class:`ftstudy.tasks.agreement.GroupTable`) of a study's Free runs at
    ``kappa`` measured under ``protocol``, one per seed (``groups``: "groups" for prior Z,
    "posterior" for the encoder's Z)."""
    from ftstudy.tasks import agreement

    out = []
    for r in StudyDir(study_dir).runs(finished=True):
        cfg = r.config()
        if cfg["model"]["latent_bits"] > 0 and math.isclose(cfg["model"]["kappa_bits"], kappa):
            path = protocol_groups(r, protocol, groups)
            if path is not None:
                out.append(agreement.read_groups(path))
    return out


def plot_agreement_by_position(study_dir: Path, protocol: str, kappas: tuple[float, ...] = (1 / 8, 1.0),
                               tol: int = 0) -> plt.Figure:
    """Agreement of shared-Z groups against their block position (one panel per κ), beside
    the information bound: a block at body position p is placed after p + 2 tokens, so the
    decoder can have read at most (p + 2)·κ bits of Z (per-token free bits), and two
    sequences sharing Z then agree on the position with probability at most the ceiling of
    :func:`ftstudy.tasks.agreement.agreement_ceiling` (derived for sampling at τ = 1; under a
    sharper τ the decoder's own sampling adds agreement the bound does not count).  Each bin's
    chance level comes from shuffling members among a prompt's shared groups.  The paper's
    Figure 4 groups at the same κ are drawn as stars."""
    from ftstudy.tasks import agreement, figure4

    sns.set_theme(style="whitegrid", context="notebook")
    fig, axes = plt.subplots(1, len(kappas), figsize=(5.6 * len(kappas), 4.2), squeeze=False)
    paper = {round(p.kappa_bits, 9): p for p in figure4.read_figure4()}
    name = "exact" if tol == 0 else f"±{tol}"
    for ax, kappa in zip(axes[0], kappas):
        tables = protocol_tables(study_dir, protocol, kappa)
        if tables:
            rows = agreement.agreement_by_position(tables, tol=tol)
            mid = [(r["low"] + r["high"]) / 2 for r in rows if r["groups"]]
            m = [r["mean"] for r in rows if r["groups"]]
            err = [[r["mean"] - r["ci_low"] for r in rows if r["groups"]],
                   [r["ci_high"] - r["mean"] for r in rows if r["groups"]]]
            ax.errorbar(mid, m, yerr=err, fmt="o-", color="tab:green", capsize=3,
                        label=f"ours, shared Z ({len(tables)} seeds; 95% bootstrap)")
            ax.plot(mid, [r["chance"] for r in rows if r["groups"]], "s:", color="tab:blue", ms=5,
                    label="each bin's chance (members shuffled among a prompt's groups)")
            pooled = np.concatenate([t.position[t.valid & ~t.shared] for t in tables])
            counts = np.bincount(pooled, minlength=agreement.N_POSITIONS)
            p_marg = counts[counts > 0] / max(1, counts.sum())
            h = float(-(p_marg * np.log2(p_marg)).sum()) if counts.sum() else None
            if tol == 0 and counts.sum() > 0:
                pos = np.arange(agreement.N_POSITIONS)
                ceiling = agreement.agreement_ceiling(np.array([agreement.bound_bits(p, kappa) for p in pos]),
                                                      entropy_bits=h)
                ax.plot(pos, ceiling, color="black", ls="--",
                        label="ceiling from (p + 2)·κ bits of Z (derived for τ = 1 sampling)")
        panel = paper.get(round(kappa, 9))
        if panel is not None:
            t = panel.table()
            for i, pp in enumerate(t.positions("shared")):
                ax.plot([agreement.group_position(pp)], [agreement.group_agreement(pp, tol)], "*", ms=14,
                        color="tab:red", label="paper Fig. 4 (groups of 5)" if i == 0 else None)
        full = math.log2(agreement.N_POSITIONS) / kappa - 2
        if full < agreement.N_POSITIONS:
            ax.axvline(full, color="gray", lw=0.8)
            ax.text(full, 1.0, f" {math.log2(agreement.N_POSITIONS):.1f} bits", fontsize=8, va="top", color="gray")
        ax.set(xlabel="block position of the group (median member)", ylabel=f"pairs agreeing ({name})",
               title=f"κ = {kappa:g} bit, protocol {protocol}", ylim=(0, 1.02), xlim=(-1, agreement.N_POSITIONS))
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- seed-level verdicts (ftstudy.results.verdicts)

def _csv(path: Path | str) -> pd.DataFrame:
    return pd.read_csv(path, keep_default_na=True)


def verdict_frame(verdicts_csv: Path | str, families: tuple[str, ...] = ("primary", "null", "secondary", "gpu")
                  ) -> pd.DataFrame:
    """verdicts.csv's claim rows of ``families`` as a table to read: Δ [95% t-interval], k of
    n, Holm p, the detectable effect, the bootstrap beside it, and the verdict."""
    df = _csv(verdicts_csv)
    df = df[df["family"].isin(families)]

    def iv(r: pd.Series, a: str, b: str) -> str:
        return f"[{r[a]:+.3f}, {r[b]:+.3f}]" if pd.notna(r[a]) else "–"

    return pd.DataFrame({
        "family": df["family"], "claim": df["claim"], "preset": df["preset"],
        "protocol (τ)": [f"{p} ({t:g})" for p, t in zip(df["protocol"], df["temperature"])],
        "k of n": [f"{k} of {n}" for k, n in zip(df["k_showing"], df["n_seeds"])],
        "Δ": df["delta"].round(3), "95% t-interval": [iv(r, "lo", "hi") for _, r in df.iterrows()],
        "p (Holm)": [f"{p:.2g} ({h:.2g})" if pd.notna(h) else f"{p:.2g}" for p, h in zip(df["p"], df["p_holm"])],
        "detectable": df["mde"].round(3), "bootstrap": [iv(r, "boot_lo", "boot_hi") for _, r in df.iterrows()],
        "verdict": [v + (f" ({n})" if isinstance(n, str) and n else "") for v, n in zip(df["verdict"], df["note"])],
    }).reset_index(drop=True)


def plot_tau_sensitivity(verdicts_csv: Path | str) -> plt.Figure:
    """Δ(±2) with its 95% t-interval over seeds against the sampling temperature, one line per
    position claim (the sensitivity families of verdicts.csv); 0 and half the paper figure's
    effect are drawn, and each point is labelled with its verdict's first word and k of n."""
    sns.set_theme(style="whitegrid", context="notebook")
    df = _csv(verdicts_csv)
    df = df[df["family"].str.startswith("sensitivity")]
    fig, ax = plt.subplots(figsize=(7.5, 4.4))
    offsets = {c: (i - 1) * 0.008 for i, c in enumerate(dict.fromkeys(df["claim"]))}
    for (claim, preset), g in df.groupby(["claim", "preset"], sort=False):
        g = g.sort_values("temperature")
        x = g["temperature"] + offsets[claim]
        ax.errorbar(x, g["delta"], yerr=[g["delta"] - g["lo"], g["hi"] - g["delta"]], fmt="o-", capsize=3,
                    label=f"{claim.split(':')[0]} ({preset})")
        for xi, (_, r) in zip(x, g.iterrows()):
            ax.annotate(f"{r['verdict'].split()[0]} {r['k_showing']}/{r['n_seeds']}", (xi, r["hi"]),
                        textcoords="offset points", xytext=(0, 4), ha="center", fontsize=6)
    ax.axhline(0, color="black", lw=0.8)
    papers = df["paper_effect"].dropna()
    if len(papers):
        ax.axhline(0.5 * papers.iloc[0], color="tab:red", ls="--", lw=0.8, label="half the paper figure's Δ")
    ax.set(xlabel="sampling temperature τ", ylabel="Δ(±2): shared − independent Z",
           title="Position claims against τ (95% t-interval over seeds)")
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    return fig


def plot_delta_vs_kl(kl_spent_csv: Path | str) -> plt.Figure:
    """Per-seed Δ(±2) under protocol `paper` against the KL each run spent, for every κ = 1/8
    quick condition (kl_budget, injection depth, latent width), with the switched-on line at
    0.9 κ and the least-squares fit of kl_spent.csv's regression row."""
    sns.set_theme(style="whitegrid", context="notebook")
    df = _csv(kl_spent_csv)
    reg = df[df["study"] == "regression"]
    rows = df[(df["study"] != "regression") & (df["preset"] == "quick") & np.isclose(df["kappa_bits"], 0.125)]
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    markers = {"kl_budget": "o", "injection_depth": "s", "latent_bits": "^"}
    for _, r in rows.iterrows():
        kl, d = json.loads(r["per_seed_kl"]), json.loads(r["per_seed_delta"])
        ax.plot(kl, d, markers.get(r["study"], "o"), ms=6, alpha=0.8, label=f"{r['condition']} ({r['study']})")
    ax.axvline(0.9 * 0.125, color="black", ls=":", lw=0.8, label="0.9 κ: switched on")
    if len(reg):
        r = reg.iloc[0]
        xs = np.linspace(0, 0.13, 20)
        ax.plot(xs, r["intercept"] + r["slope"] * xs, color="gray", lw=1,
                label=f"fit: slope {r['slope']:+.2f} per bit, ρ {r['spearman_rho']:+.2f}")
    ax.axhline(0, color="black", lw=0.8)
    ax.set(xlabel="KL spent at the end of training (bits/token, held-out)", ylabel="Δ(±2) per seed, τ = 0.6",
           title="κ = 1/8: the effect against the KL a run spent")
    ax.legend(fontsize=6, ncol=2, loc="upper left")
    fig.tight_layout()
    return fig


def plot_contrasts(contrasts_csv: Path | str, protocol: str = "paper") -> plt.Figure:
    """Injection depth and latent width against KL spent: shared-Z agreement, independent-Z
    agreement and validity drawn apart (mean over seeds of each condition; the paper's
    setting, inject after block 2 and H = 8, as the reference point)."""
    sns.set_theme(style="whitegrid", context="notebook")
    df = _csv(contrasts_csv)
    df = df[df["protocol"] == protocol]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.0))
    for (study, g), marker in zip(df.groupby("study", sort=False), ("s", "^")):
        ref = g.iloc[0]
        for ax, name, label in zip(axes, ("shared", "independent", "valid"),
                                   ("±2 agreement, shared Z", "±2 agreement, independent Z", "valid rate")):
            ax.plot(g["kl_cond"], g[f"{name}_cond"], marker, ms=7, label=study)
            for _, r in g.iterrows():
                ax.annotate(r["condition"].split(" = ")[1], (r["kl_cond"], r[f"{name}_cond"]), fontsize=7,
                            textcoords="offset points", xytext=(4, 2))
            ax.plot([ref["kl_ref"]], [ref[f"{name}_ref"]], marker, ms=9, mfc="none", mec="black",
                    label=f"{study}: {ref['reference']}")
            ax.set(xlabel="KL spent (bits/token)", ylabel=label)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Depth and width at κ = 1/8 against the KL they spend (protocol {protocol})", fontsize=11)
    fig.tight_layout()
    return fig
