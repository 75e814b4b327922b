"""``python -m ftstudy.ablate``: studies of the KL budget, injection depth, latent width and
free-bits scope on the paper's synthetic task.

A study is data: a named grid of config overrides (plus the baseline where it is the
reference).  Every point × seed is an ordinary ``ftstudy.train`` run in
``results/ablate/<study>/<run>/``, so rerunning the same command skips finished runs,
resumes interrupted ones from their last checkpoint, and extends finished runs when
``--set steps=N`` asks for more steps.  ``results/ablate/<study>/summary.csv`` is rebuilt
from the per-run files after every run.

    python -m ftstudy.ablate --study kl_budget --preset quick --seeds 0 1 2
    python -m ftstudy.ablate --study all --preset quick --seeds 0 --dry-run
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
from tqdm import tqdm

from ftstudy.checkpoint import atomic_write_text
from ftstudy.config import ConfigError, RunConfig, get_preset, parse_set_args
from ftstudy.report import write_aggregate
from ftstudy.train import REPO_ROOT, RunError, check_resumable, run_name, saved_config, train

__all__ = ["STUDIES", "PRESETS", "Study", "plan", "rebuild_summary", "main"]

DEFAULT_OUT = REPO_ROOT / "results" / "ablate"
PRESETS = {"quick": "synthetic-quick", "paper": "synthetic-paper"}


@dataclass(frozen=True)
class Study:
    description: str
    points: tuple[dict[str, Any], ...]  # overrides, one run per point and seed
    fixed: dict[str, Any] = field(default_factory=dict)  # overrides shared by every Free point
    baseline: bool = False  # add the no-latent decoder as a reference point


# κ in bits: the paper's synthetic values 1/64, 1/8, 1, 8 and the real-data ones between.
KAPPAS = (1 / 64, 1 / 8, 1 / 4, 1 / 2, 1, 2, 4, 8)
# The Free studies other than kl_budget run at κ = 1/8 bit: the paper's central synthetic
# claim ("Z carries the block position") is made there, and at that budget the quick
# preset's latent is used (KL at the cap, FEASIBILITY.md and results/runs/).
STUDY_KAPPA = 1 / 8


def _studies(n_layers: int) -> dict[str, Study]:
    return {
        "kl_budget": Study("κ in bits, paper §4.1 (Fig. 4) and the real-data range",
                           tuple({"kappa_bits": k} for k in KAPPAS), baseline=True),
        "injection_depth": Study(f"blocks before the injection, 1 … L−1 = {n_layers - 1}, at κ = 1/8 bit",
                                 tuple({"inject_layer": i} for i in range(1, n_layers)),
                                 fixed={"kappa_bits": STUDY_KAPPA}),
        "latent_bits": Study("H, bits of Z per token, at κ = 1/8 bit",
                             tuple({"latent_bits": h} for h in (1, 2, 4, 8, 16)), fixed={"kappa_bits": STUDY_KAPPA}),
        "free_bits_scope": Study("per-token free bits (paper) vs one budget T·κ per sequence (DEVIATION), "
                                 "at κ = 1/8 bit",
                                 tuple({"free_bits_scope": s} for s in ("token", "sequence")),
                                 fixed={"kappa_bits": STUDY_KAPPA}),
    }


STUDIES = tuple(_studies(4))


@dataclass
class PlannedRun:
    study: str
    config: RunConfig
    run_dir: Path
    argv: list[str]  # the ftstudy.train arguments that reproduce it

    @property
    def status(self) -> str:
        """finished, extend, interrupted, or todo (nothing worth keeping on disk)."""
        s = check_resumable(self.config, self.run_dir)
        return "todo" if s in ("new", "started") else s

    def steps_left(self) -> int:
        s = self.status
        if s == "finished":
            return 0
        if s in ("extend", "interrupted"):
            metrics = self.run_dir / "metrics.csv"
            last = 0
            if metrics.exists():
                rows = list(csv.DictReader(io.StringIO(metrics.read_text())))
                last = max((int(r["step"]) for r in rows), default=0)
            return max(0, self.config.train.steps - last)
        return self.config.train.steps


def plan(study: str, preset: str, seeds: list[int], overrides: dict[str, str], out: Path) -> list[PlannedRun]:
    """Every run of a study (or of all of them), in a deterministic order."""
    base = get_preset(PRESETS[preset], overrides)
    studies = _studies(base.model.n_layers)
    names = list(studies) if study == "all" else [study]
    runs = []
    for name in names:
        s = studies[name]
        points: list[dict[str, Any]] = ([{"latent_bits": 0}] if s.baseline else []) + \
            [{**s.fixed, **p} for p in s.points]
        for seed in seeds:
            for point in points:
                ov = {**overrides, **{k: str(v) for k, v in point.items()}, "seed": str(seed)}
                cfg = get_preset(PRESETS[preset], ov)
                argv = ["--preset", PRESETS[preset], "--set", *[f"{k}={v}" for k, v in ov.items()]]
                runs.append(PlannedRun(name, cfg, out / name / run_name(cfg), argv))
    return runs


def _shape(cfg: dict[str, Any]) -> tuple:
    m, t = cfg["model"], cfg["train"]
    return m["n_layers"], m["dim"], m["latent_bits"], m["post_sampler"], t["batch_size"]


def measured_step_times(out: Path) -> dict[tuple, float]:
    """Seconds per step of finished runs under ``out``, by model/batch shape (median)."""
    times: dict[tuple, list[float]] = {}
    for summary in out.glob("*/*/summary.json"):
        try:
            s = json.loads(summary.read_text())
            cfg = json.loads((summary.parent / "config.json").read_text())["config"]
        except (OSError, ValueError, KeyError):
            continue
        if s.get("step") and s.get("train_time_s"):
            times.setdefault(_shape(cfg), []).append(s["train_time_s"] / s["step"])
    return {k: sorted(v)[len(v) // 2] for k, v in times.items()}


def seconds_per_step(cfg: RunConfig, measured: dict[tuple, float]) -> float:
    """A finished run of the same shape if there is one, else a rough model fitted on a
    2-core AVX2 CPU in fp32 (D 64/4 layers/batch 32: 0.095 s; D 128/batch 64: 0.34 s)."""
    key = _shape(cfg.to_dict())
    if key in measured:
        return measured[key]
    m, t = cfg.model, cfg.train
    units = (t.batch_size / 32) * (m.dim / 64) * (m.n_layers / 4)  # 1 = the demo's shape
    base = 0.095 * units ** 0.73  # fitted: bigger matmuls run closer to peak
    if not m.is_free:
        return base
    # Encoder block + mapper bookkeeping (~+37% at the demo's shape), plus the mapper's
    # (tokens x D) @ (D x 2^H) backward product, which dominates at H = 16.
    return 1.37 * base + t.batch_size * 65 * m.dim * (1 << m.latent_bits) * 4.7e-11


class _Progress(L.Callback):
    """Moves the sweep's step bar from inside each run."""

    def __init__(self, bar: tqdm) -> None:
        self.bar = bar
        self.last = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.last = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.is_global_zero:
            self.bar.update(trainer.global_step - self.last)
            self.last = trainer.global_step


def find_twin(run: PlannedRun, out: Path) -> Path | None:
    """A finished run with exactly this config in another study's folder (same name), if any.

    The studies share points (κ = 1/8 with the default injection and H is in kl_budget,
    latent_bits and free_bits_scope); a twin is copied instead of trained again.
    """
    want = run.config.to_dict()
    want.pop("preset", None)
    for cand in sorted(out.glob(f"*/{run.run_dir.name}")):
        if cand == run.run_dir or not (cand / "summary.json").exists():
            continue
        try:
            have = saved_config(cand)
        except RunError:
            continue
        have.pop("preset", None)
        if have == want:
            return cand
    return None


def copy_run(src: Path, dst: Path) -> None:
    """Copy a finished run directory atomically (to a temporary name, then rename)."""
    tmp = dst.with_name(f".{dst.name}.copy")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(src, tmp)
    (tmp / "COPIED_FROM").write_text(f"{src.parent.name}/{src.name}\n")
    tmp.rename(dst)


# ---------------------------------------------------------------- summary.csv

def _flatten(prefix: str, obj: dict[str, Any], out: dict[str, Any]) -> None:
    for k, v in obj.items():
        if isinstance(v, dict):
            _flatten(f"{prefix}{k}.", v, out)
        else:
            out[f"{prefix}{k}"] = json.dumps(v) if isinstance(v, list) else v


def collapsed(run_dir: Path, threshold_bits: float = 0.01) -> bool | None:
    """KL fell to ~0 and stayed there: every logged KL in the last quarter of training
    below ``threshold_bits`` per token (None for the baseline)."""
    rows = [r for r in csv.DictReader(io.StringIO((run_dir / "metrics.csv").read_text()))
            if r["split"] == "train" and r.get("kl_bits")]
    if not rows:
        return None
    tail = rows[len(rows) * 3 // 4:]
    return all(float(r["kl_bits"]) < threshold_bits for r in tail)


def rebuild_summary(study_dir: Path) -> Path | None:
    """summary.csv of a study: one row per finished run, config fields then metrics."""
    rows = []
    for run_dir in sorted(p for p in study_dir.iterdir() if (p / "summary.json").exists()):
        cfg = json.loads((run_dir / "config.json").read_text())["config"]
        summary = json.loads((run_dir / "summary.json").read_text())
        row: dict[str, Any] = {"run": run_dir.name}
        for section in ("model", "task", "train"):
            row.update(cfg[section])
        flat: dict[str, Any] = {}
        _flatten("", {k: v for k, v in summary.items() if k != "run"}, flat)
        row.update(flat)
        row["collapsed"] = collapsed(run_dir)
        rows.append(row)
    if not rows:
        return None
    cols: list[str] = []
    for r in rows:
        cols.extend(k for k in r if k not in cols)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    w.writerows(rows)
    path = study_dir / "summary.csv"
    atomic_write_text(path, buf.getvalue())
    write_aggregate(study_dir)
    return path


# ---------------------------------------------------------------- figures

STUDY_X = {"kl_budget": ("kappa_bits", True), "injection_depth": ("inject_layer", False),
           "latent_bits": ("latent_bits", True), "free_bits_scope": ("free_bits_scope", False)}
FIG4_KAPPAS = (1 / 64, 1 / 8, 1, 8)  # the paper's Figure 4 columns


def make_figures(out: Path, study: str, seed: int) -> list[Path]:
    """Per-study metric plots and, for kl_budget, the paper's Figure 4 (PNG and text)."""
    from ftstudy.plots import figure4_text, plot_figure4, plot_study, save_figure
    from ftstudy.report import aggregate

    written = []
    fig_dir = out / "figures"
    for name in (list(STUDY_X) if study == "all" else [study]):
        summary = out / name / "summary.csv"
        if not summary.exists():
            continue
        x, log_x = STUDY_X[name]
        aggs = aggregate(summary)
        if not any(a["variant"] != "baseline" for a in aggs):
            continue
        written.append(save_figure(plot_study(aggs, x, title=name, log_x=log_x),
                                   fig_dir / f"{name}.png"))
        if name == "kl_budget":
            panels = {}
            for k in FIG4_KAPPAS:
                matches = [p for p in (out / name).glob(f"*-free-k{k:g}-s{seed}/groups.txt")]
                if matches:
                    panels[f"κ = {k:g} bit"] = matches[0]
            if panels:
                written.append(save_figure(plot_figure4(panels), fig_dir / f"figure4_s{seed}.png"))
                text = "\n".join(f"===== {t} =====\n{figure4_text(p)}" for t, p in panels.items())
                path = fig_dir / f"figure4_s{seed}.txt"
                atomic_write_text(path, text)
                written.append(path)
    return written


# ---------------------------------------------------------------- CLI

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ftstudy.ablate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--study", required=True, choices=[*STUDIES, "all"])
    p.add_argument("--preset", default="quick", choices=sorted(PRESETS),
                   help="quick = synthetic-quick (minutes per run), paper = synthetic-paper (long)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], metavar="SEED")
    p.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE",
                   help="override any config field for every run, e.g. steps=3000 n_layers=8")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--dry-run", action="store_true", help="print the grid and the estimated time, train nothing")
    p.add_argument("--report", action="store_true",
                   help="train nothing: rebuild summary/aggregate tables and figures from the finished runs")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if any(s < 0 for s in args.seeds):
        print(f"error: seeds must be integers >= 0, got {args.seeds}", file=sys.stderr)
        return 2
    try:
        overrides = parse_set_args(args.overrides)
        runs = plan(args.study, args.preset, args.seeds, overrides, args.out)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    # Refuse before training anything if a run directory holds a different config.
    for r in runs:
        try:
            check_resumable(r.config, r.run_dir)
        except RunError as e:
            print(f"error: {e}", file=sys.stderr)
            return 3
    if args.report:
        for d in sorted({r.run_dir.parent for r in runs}):
            if d.exists():
                rebuild_summary(d)
        for path in make_figures(args.out, args.study, args.seeds[0]):
            print(f"[ftstudy.ablate] wrote {path}")
        return 0
    left = [(r, r.steps_left()) for r in runs]
    measured = measured_step_times(args.out)
    est = sum(n * seconds_per_step(r.config, measured) for r, n in left)
    print(f"{args.study} × preset {args.preset} ({PRESETS[args.preset]}) × seeds {args.seeds}: {len(runs)} runs, "
          f"{sum(1 for r in runs if r.status == 'finished')} finished; about {est / 60:.0f} min of training left "
          f"(rough, 2-core CPU)")
    for r, n in left:
        print(f"  {r.status:11s} {r.study}/{r.run_dir.name}  ({n} steps left)")
    if args.dry_run:
        return 0

    t0 = time.perf_counter()
    bar = tqdm(total=sum(n for _, n in left), unit="step", desc="sweep", dynamic_ncols=True,
               disable=None, mininterval=5)
    done = 0
    for i, (r, n) in enumerate(left):
        bar.set_description(f"run {i + 1}/{len(runs)} {r.study}/{r.run_dir.name}")
        twin = find_twin(r, args.out) if r.status == "todo" and not r.run_dir.exists() else None
        if twin is not None:
            copy_run(twin, r.run_dir)
            bar.update(n)
            print(f"[ftstudy.ablate] {r.study}/{r.run_dir.name}: identical finished run in "
                  f"{twin.parent.name}/, copied instead of retrained", flush=True)
        try:
            # A folder with neither checkpoint nor summary holds no training state (a run
            # killed before its first checkpoint, or copied without its git-ignored ckpt/):
            # the sweep starts it again rather than stopping.
            restart = r.run_dir.exists() and r.status == "todo"
            train(r.config, r.run_dir, argv=r.argv, progress=False, extra_callbacks=[_Progress(bar)],
                  overwrite=restart,
                  launcher="python -m ftstudy.ablate " + " ".join(sys.argv[1:] if argv is None else argv))
        except RunError as e:
            bar.close()
            print(f"error: {e}", file=sys.stderr)
            rebuild_summary(r.run_dir.parent)
            return 3
        done += 1
        rebuild_summary(r.run_dir.parent)
        if not sys.stderr.isatty():
            print(f"[ftstudy.ablate] {done}/{len(runs)} done ({r.run_dir.name}), "
                  f"{(time.perf_counter() - t0) / 60:.1f} min elapsed", flush=True)
    bar.close()
    studies = sorted({r.run_dir.parent for r in runs})
    make_figures(args.out, args.study, args.seeds[0])
    print(f"[ftstudy.ablate] {len(runs)} runs in {(time.perf_counter() - t0) / 60:.1f} min; summaries: "
          + ", ".join(str(s / "summary.csv") for s in studies))
    return 0


if __name__ == "__main__":
    sys.exit(main())
