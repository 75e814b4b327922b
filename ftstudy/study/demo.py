"""``make demo``: train a reduced ``kl_budget`` sweep on the synthetic task and compare it with
the committed reference.

Five runs of the ``synthetic-demo`` preset (the quick model, 400 steps): the baseline and the
Free Transformer at κ = 1/64, 1/8, 1 and 8 bits, the paper's Figure 4 values. They train two at
a time (``--jobs 2``, one thread each) into a git-ignored folder (``runs/demo/`` by default),
then the demo prints, for each run, what the latent does under the uniform prior at generation,
writes the sweep's plot and the paper's Figure 4 at this scale, and sets each number beside the
committed reference (``results/demo/``, seeds 0, 1 and 2 of the same sweep) with a verdict:
within the reference's seed spread (its min … max over seeds), or not. Training is
deterministic, so on the same kind of machine seed 0 reproduces the reference's seed 0 exactly,
in the same precision: the reference trained in fp32, and precision ``auto`` resolves to
bf16-mixed on a CPU with native bf16 (the comparison then says so).
It is ``python -m ftstudy.ablate`` underneath:

    python -m ftstudy.ablate --study kl_budget --preset demo --seeds 0 --jobs 2 --out runs/demo \\
        --only latent_bits=0 kappa_bits=1/64 kappa_bits=1/8 kappa_bits=1 kappa_bits=8

so rerunning the demo skips finished runs and resumes interrupted ones; ``--overwrite``
retrains them (deleting only run folders that ftstudy made).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable

from ftstudy.io import REPO_ROOT, RunDir, RunError, StudyDir
from ftstudy.study import ablate
from ftstudy.core.config import ConfigError, check_seed, parse_set_args
from ftstudy.tasks.probe import NO_LATENT_FLOOR

#: Where the demo trains by default: a git-ignored folder, so a fresh clone trains.
LOCAL_OUT = REPO_ROOT / "runs" / "demo"
DEMO_POINTS = ("latent_bits=0", "kappa_bits=1/64", "kappa_bits=1/8", "kappa_bits=1", "kappa_bits=8")


def ablate_args(seed: int, jobs: int, out: Path, overrides: list[str], measure: list[str] | None = None) -> list[str]:
    return ["--study", "kl_budget", "--preset", "demo", "--seeds", str(seed), "--jobs", str(jobs),
            "--out", str(out), "--only", *DEMO_POINTS, *(["--set", *overrides] if overrides else []),
            *(["--measure", *measure] if measure is not None else [])]


def _runs(out: Path, seed: int, overrides: list[str]) -> list[ablate.PlannedRun]:
    return ablate.plan("kl_budget", "demo", [seed], parse_set_args(overrides), out, only=list(DEMO_POINTS))


def _f(v: float | None, spec: str) -> str:
    """A number, or a dash (right-aligned like the number) where a tiny run has none."""
    if v is None or not math.isfinite(v):
        return format("–", ">" + spec.split(".")[0]) if spec[0].isdigit() else "–"
    return format(v, spec)


#: The numbers the demo prints and compares: (label, reader of a run's summary.json, format).
METRICS: tuple[tuple[str, Callable[[dict[str, Any]], Any], str], ...] = (
    ("valid", lambda s: s["generation"]["valid_rate"], ".3f"),
    ("KL bits/tok", lambda s: s.get("posterior", {}).get("kl_bits_per_token"), ".3f"),
    ("same pos indep", lambda s: s["probe"].get("same_pos_independent"), ".3f"),
    ("same pos shared", lambda s: s["probe"].get("same_pos_shared"), ".3f"),
    ("MI(Z;pos)", lambda s: s["probe"].get("mi_position_bits"), ".2f"),
    ("CE prior", lambda s: s["val"].get("ce_prior"), ".4f"),
)


def _summaries(out: Path, seed: int, overrides: list[str]) -> list[tuple[str, dict[str, Any] | None]]:
    """(label, summary or None when unfinished) of each demo run, in DEMO_POINTS order."""
    rows = []
    for r in _runs(out, seed, overrides):
        m = r.config.model
        name = "baseline" if not m.is_free else f"κ = {Fraction(m.kappa_bits).limit_denominator(1024)}"
        rows.append((name, RunDir(r.run_dir).summary()))
    return rows


def report(out: Path, seed: int, overrides: list[str] = ()) -> str:  # type: ignore[assignment]
    """One line per run of the demo sweep, from the runs' summary.json files."""
    lines = [f"{'run':10s} {'valid':>6s} {'KL bits/tok':>11s} {'same pos: indep → shared':>25s} "
             f"{'MI(Z;pos)':>9s} {'CE prior':>8s} {'train s':>7s}"]
    for name, s in _summaries(out, seed, list(overrides)):
        if s is None:
            lines.append(f"{name}: not finished")
            continue
        p, g = s["probe"], s["generation"]
        kl = s.get("posterior", {}).get("kl_bits_per_token")
        lines.append(f"{name:10s} {_f(g['valid_rate'], '6.3f')} {_f(kl, '11.3f')} "
                     f"{_f(p.get('same_pos_independent'), '11.3f')} → {_f(p.get('same_pos_shared'), '.3f'):11s} "
                     f"{_f(p.get('mi_position_bits'), '9.2f')} {_f(s['val'].get('ce_prior'), '8.4f')} "
                     f"{_f(s.get('train_time_s'), '7.0f')}")
    return "\n".join(lines)


def reference_seeds(reference: Path, overrides: list[str] = ()) -> list[int]:  # type: ignore[assignment]
    """Seeds whose five demo runs are all finished in the reference folder."""
    return [seed for seed in range(10)
            if all(s is not None for _, s in _summaries(reference, seed, list(overrides)))]


def compare(out: Path, seed: int, reference: Path, overrides: list[str] = ()) -> tuple[str, int, int]:  # type: ignore[assignment]
    """Each number of this demo beside the reference's seeds, with a verdict: within their
    spread (min … max over seeds) or not.  Returns (table, numbers within, numbers compared)."""
    overrides = list(overrides)
    seeds = reference_seeds(reference, overrides)
    if not seeds:
        return (f"(no finished reference runs under {reference}: nothing to compare with)", 0, 0)
    refs = {s: _summaries(reference, s, overrides) for s in seeds}
    head = f"{'run':10s} {'number':16s} {'this run':>9s}  {'reference seeds ' + ' '.join(map(str, seeds)):>28s}  verdict"
    lines, within, compared = [head, "-" * len(head)], 0, 0
    for i, (name, mine) in enumerate(_summaries(out, seed, overrides)):
        if mine is None:
            lines.append(f"{name:10s} not finished")
            continue
        for label, read, spec in METRICS:
            value = read(mine)
            ref_values = [read(refs[s][i][1]) for s in seeds]
            finite = [v for v in ref_values if v is not None and math.isfinite(v)]
            ref_text = " ".join(_f(v, spec) for v in ref_values)
            if value is None or not math.isfinite(value) or not finite:
                verdict = "– (not measured)"
            else:
                compared += 1
                lo, hi = min(finite), max(finite)
                ok = lo <= value <= hi
                within += ok
                verdict = (f"within [{_f(lo, spec)}, {_f(hi, spec)}]" if ok
                           else f"OUTSIDE [{_f(lo, spec)}, {_f(hi, spec)}]")
                if seed in seeds and value == read(refs[seed][i][1]):
                    verdict += f", = reference seed {seed}"
            lines.append(f"{name:10s} {label:16s} {_f(value, '9' + spec):>9s}  {ref_text:>28s}  {verdict}")
    mine_p, ref_p = _precisions(out, seed, overrides), _precisions(reference, seeds[0], overrides)
    if mine_p != ref_p:
        lines.append(f"\nPrecision: these runs trained in {', '.join(sorted(mine_p))}, the reference in "
                     f"{', '.join(sorted(ref_p))} (precision auto resolves by the CPU: bf16-mixed where it has "
                     "native bf16), so no run reproduces a reference seed exactly; the seed spread is the comparison.")
    return "\n".join(lines), within, compared


def _precisions(out: Path, seed: int, overrides: list[str]) -> set[str]:
    """The precisions (config.json's ``precision_resolved``) of a seed's finished demo runs."""
    found = set()
    for r in _runs(out, seed, overrides):
        folder = RunDir(r.run_dir)
        if folder.summary() is not None and folder.config_file.exists():
            found.add(str(folder.record().get("precision_resolved")))
    return found


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ftstudy.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                   help="runs trained at once (default: 2, or 1 on a 1-core machine)")
    p.add_argument("--out", type=Path, default=LOCAL_OUT,
                   help="where the demo trains (default: runs/demo/, git-ignored)")
    p.add_argument("--reference", type=Path, default=ablate.PRESET_OUT["demo"],
                   help="committed runs to compare with (default: results/demo/)")
    p.add_argument("--overwrite", action="store_true", help="delete the demo's runs and train them again")
    p.add_argument("--set", dest="overrides", nargs="*", action="extend", default=[], metavar="KEY=VALUE",
                   help="config overrides for every run (the tests shrink the model with them; "
                        "temperature=, top_k=, top_p= set the sampling of the runs' own generations); "
                        "repeated --set options add up (the last value of a key wins)")
    p.add_argument("--measure", nargs="*", default=None, metavar="PROTOCOL",
                   help="also re-measure the runs under these sampling protocols (ablate --measure; default "
                        "t1 paper) and write kl_budget/agreement.md")
    args = p.parse_args(argv)

    try:
        check_seed(args.seed, "--seed")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    if args.overwrite:
        try:
            runs = _runs(args.out, args.seed, args.overrides)  # the seed is checked with the config
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        try:
            for r in runs:
                RunDir(r.run_dir).delete()
        except RunError as e:
            print(f"error: {e}", file=sys.stderr)
            return 3
    rc = ablate.main(ablate_args(args.seed, args.jobs, args.out, args.overrides, args.measure))
    if rc:
        return rc
    print("\n" + "=" * 78)
    print(f"Reduced kl_budget sweep (synthetic-demo, seed {args.seed}) in {time.perf_counter() - t0:.0f} s.")
    print("Every figure is measured on generations with Z drawn from the uniform prior (the encoder never runs):")
    print("1,024 sequences per run, 8 prompts × (32 with independent Z + 4 groups of 24 sharing one Z).\n")
    print(report(args.out, args.seed, args.overrides))
    print(f"\nsame pos: probability that two sequences of a group put the block at the same place "
          f"(chance ≈ 0.02).\nNo-latent floor of the task: {NO_LATENT_FLOOR:.4f} nats/char.")
    table, within, compared = compare(args.out, args.seed, args.reference, args.overrides)
    print(f"\nAgainst the committed reference ({args.reference}, the same sweep per seed):\n{table}")
    if compared:
        print(f"\n{within} of {compared} numbers are within the reference's seed spread (min … max over seeds).")
    study = StudyDir(args.out / "kl_budget")
    print(f"Runs:    {study.path}/<run>/")
    print(f"Figures: {study.figure()}, {study.figure4(args.seed)} (and .txt: the paper's Figure 4 at this scale)")
    if args.measure is not None and study.agreement_md.exists():
        print(f"Agreement under the sampling protocols: {study.agreement_md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
