"""Pure functions from run directories to figures; the demo and the notebooks call these.

Nothing here trains or evaluates: figures are drawn from ``metrics.csv`` and
``summary.json`` as written by ``ftstudy.train``.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import matplotlib

if not os.environ.get("DISPLAY") and "inline" not in matplotlib.get_backend():
    matplotlib.use("Agg")  # headless (CI, make demo); notebooks keep their inline backend

import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402

from ftstudy.measure import NO_LATENT_FLOOR  # noqa: E402

__all__ = ["NO_LATENT_FLOOR", "read_metrics", "plot_training_curves", "save_figure"]


def read_metrics(run_dir: Path) -> list[dict[str, float | str]]:
    """Rows of a run's metrics.csv with numbers parsed (empty cells dropped)."""
    rows = []
    with open(Path(run_dir) / "metrics.csv", newline="") as f:
        for r in csv.DictReader(f):
            rows.append({k: (v if k == "split" else float(v)) for k, v in r.items() if v != ""})
    return rows


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
