"""``make demo``: a reduced ``kl_budget`` sweep on the synthetic task, with its figures.

Five runs of the ``synthetic-demo`` preset (the quick model, 400 steps): the baseline and
the Free Transformer at κ = 1/64, 1/8, 1 and 8 bits, the paper's Figure 4 values.  They
train two at a time (``--jobs 2``, one thread each), then the demo prints, for each run,
what the latent does under the uniform prior at generation, and writes the sweep's plot
and the paper's Figure 4 at this scale.  It is ``python -m ftstudy.ablate`` underneath:

    python -m ftstudy.ablate --study kl_budget --preset demo --seeds 0 --jobs 2 \\
        --only latent_bits=0 kappa_bits=1/64 kappa_bits=1/8 kappa_bits=1 kappa_bits=8

so rerunning the demo skips finished runs and resumes interrupted ones; ``--overwrite``
retrains them (deleting only run folders that ftstudy made).  Results go to ``results/demo/``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from fractions import Fraction
from pathlib import Path

from ftstudy.study import ablate
from ftstudy.core.config import ConfigError, parse_set_args
from ftstudy.tasks.probe import NO_LATENT_FLOOR
from ftstudy.run.train import RunError, delete_run

DEMO_POINTS = ("latent_bits=0", "kappa_bits=1/64", "kappa_bits=1/8", "kappa_bits=1", "kappa_bits=8")


def ablate_args(seed: int, jobs: int, out: Path, overrides: list[str]) -> list[str]:
    return ["--study", "kl_budget", "--preset", "demo", "--seeds", str(seed), "--jobs", str(jobs),
            "--out", str(out), "--only", *DEMO_POINTS, *(["--set", *overrides] if overrides else [])]


def _runs(out: Path, seed: int, overrides: list[str]) -> list[ablate.PlannedRun]:
    return ablate.plan("kl_budget", "demo", [seed], parse_set_args(overrides), out, only=list(DEMO_POINTS))


def _f(v: float | None, spec: str) -> str:
    """A number, or a dash (right-aligned like the number) where a tiny run has none."""
    if v is None or not math.isfinite(v):
        return format("–", ">" + spec.split(".")[0]) if spec[0].isdigit() else "–"
    return format(v, spec)


def report(out: Path, seed: int, overrides: list[str] = ()) -> str:  # type: ignore[assignment]
    """One line per run of the demo sweep, from the runs' summary.json files."""
    runs = _runs(out, seed, list(overrides))
    lines = [f"{'run':10s} {'valid':>6s} {'KL bits/tok':>11s} {'same pos: indep → shared':>25s} "
             f"{'MI(Z;pos)':>9s} {'CE prior':>8s} {'train s':>7s}"]
    for r in runs:
        path = r.run_dir / "summary.json"
        if not path.exists():
            lines.append(f"{r.run_dir.name}: not finished")
            continue
        s = json.loads(path.read_text())
        m = r.config.model
        name = "baseline" if not m.is_free else f"κ = {Fraction(m.kappa_bits).limit_denominator(1024)}"
        p, g = s["probe"], s["generation"]
        kl = s.get("posterior", {}).get("kl_bits_per_token")
        lines.append(f"{name:10s} {_f(g['valid_rate'], '6.3f')} {_f(kl, '11.3f')} "
                     f"{_f(p.get('same_pos_independent'), '11.3f')} → {_f(p.get('same_pos_shared'), '.3f'):11s} "
                     f"{_f(p.get('mi_position_bits'), '9.2f')} {_f(s['val'].get('ce_prior'), '8.4f')} "
                     f"{_f(s.get('train_time_s'), '7.0f')}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ftstudy.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                   help="runs trained at once (default: 2, or 1 on a 1-core machine)")
    p.add_argument("--out", type=Path, default=ablate.PRESET_OUT["demo"])
    p.add_argument("--overwrite", action="store_true", help="delete the demo's runs and train them again")
    p.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE",
                   help="config overrides for every run (the tests shrink the model with them)")
    args = p.parse_args(argv)

    t0 = time.perf_counter()
    if args.overwrite:
        try:
            runs = _runs(args.out, args.seed, args.overrides)  # the seed is checked with the config
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        try:
            for r in runs:
                delete_run(r.run_dir)
        except RunError as e:
            print(f"error: {e}", file=sys.stderr)
            return 3
    rc = ablate.main(ablate_args(args.seed, args.jobs, args.out, args.overrides))
    if rc:
        return rc
    print("\n" + "=" * 78)
    print(f"Reduced kl_budget sweep (synthetic-demo, seed {args.seed}) in {time.perf_counter() - t0:.0f} s.")
    print("Every figure is measured on generations with Z drawn from the uniform prior (the encoder never runs):")
    print("1,024 sequences per run, 8 prompts × (32 with independent Z + 4 groups of 24 sharing one Z).\n")
    print(report(args.out, args.seed, args.overrides))
    print(f"\nsame pos: probability that two sequences of a group put the block at the same place "
          f"(chance ≈ 0.02).\nNo-latent floor of the task: {NO_LATENT_FLOOR:.4f} nats/char.")
    fig_dir = args.out / "figures"
    print(f"Runs:    {args.out / 'kl_budget'}/<run>/ (config.json, metrics.csv, summary.json, groups.txt)")
    print(f"Figures: {fig_dir / 'kl_budget.png'}, {fig_dir / f'figure4_s{args.seed}.png'} "
          f"(and .txt: the paper's Figure 4 at this scale)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
