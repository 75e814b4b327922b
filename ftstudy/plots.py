"""Pure functions from run directories to figures; the demo and the notebooks call these.

Nothing here trains or evaluates: figures are drawn from ``metrics.csv`` and
``summary.json`` as written by ``ftstudy.train``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import matplotlib

if not os.environ.get("DISPLAY") and "inline" not in matplotlib.get_backend():
    matplotlib.use("Agg")  # headless (CI, make demo); notebooks keep their inline backend

import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402

from ftstudy.checkpoint import read_metrics  # noqa: E402
from ftstudy.measure import NO_LATENT_FLOOR  # noqa: E402

__all__ = ["NO_LATENT_FLOOR", "read_metrics", "plot_training_curves", "save_figure"]


def _label(run_dir: Path) -> str:
    s = json.loads((Path(run_dir) / "summary.json").read_text())
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
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def read_groups(path: Path) -> list[tuple[int, bool, str]]:
    """groups.txt rows as (group id, shared, sequence)."""
    rows = []
    for line in Path(path).read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        gid, kind, _valid, _pos, seq = line.split(maxsplit=4)
        rows.append((int(gid), kind == "shared", seq))
    return rows


def figure4_text(groups_file: Path, letter: str | None = None, per_group: int = 8, shared_groups: int = 2) -> str:
    """The paper's Figure 4 for one run as text: one prompt, an independent-Z group and
    ``shared_groups`` shared-Z groups."""
    rows = read_groups(groups_file)
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


def plot_figure4(panels: dict[str, Path], letter: str | None = None, per_group: int = 8,
                 shared_groups: int = 2) -> plt.Figure:
    """Figure 4 at our scale: one column per κ; per column an independent-Z group (blue
    box) and shared-Z groups (green boxes), as in the paper.  Block letters are drawn
    dark, noise red, underscores light."""
    n = len(panels)
    rows_per_col = (1 + shared_groups) * (per_group + 1)
    fig, axes = plt.subplots(1, n, figsize=(5.2 * n, 0.16 * rows_per_col + 1), squeeze=False)
    for ax, (title, path) in zip(axes[0], panels.items()):
        text = figure4_text(path, letter, per_group, shared_groups).splitlines() + [""]  # "" closes a box
        ax.set_xlim(0, 67)
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
            for x, ch in enumerate(line):
                c = "#bbbbbb" if ch == "_" else ("tab:red" if ch == "!" else "black")
                ax.text(x, y, ch, fontsize=5.5, family="monospace", ha="center", va="center", color=c)
    fig.tight_layout()
    return fig


def plot_study(aggs: list[dict], x: str, title: str = "", log_x: bool = False) -> plt.Figure:
    """Key metrics of a study (rows of ftstudy.report.aggregate) against the grid field ``x``,
    with 95% intervals over seeds where there are several; the baseline as a dashed line."""
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

    labels = [str(a[x]) for a in free]
    try:
        [float(v) for v in labels]
        categorical = False
    except ValueError:
        categorical = True  # e.g. free_bits_scope: token / sequence

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
            if base and math.isfinite(base[0].get(col, math.nan)):
                ax.axhline(base[0][col], color=line.get_color(), ls="--", lw=1, label=f"{name}, baseline")
        if col == "val.elbo":
            ax.axhline(NO_LATENT_FLOOR, color="gray", ls=":", lw=1, label="no-latent floor")
        ax.set(xlabel=x, ylabel=label)
        if categorical:
            ax.set_xticks(range(len(labels)), labels, rotation=35, ha="right", fontsize=8)
        elif log_x:
            ax.set_xscale("log", base=2)
            finite = [v for v in xs(free) if math.isfinite(v) and v > 0]
            if finite:  # explicit limits: a panel whose metric is all NaN has no data range
                ax.set_xlim(min(finite) / 1.5, max(finite) * 1.5)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
