"""``python -m ftstudy.benchmark``: the comparison on the CPU-scale benchmark suite, end
to end and resumable.

    python -m ftstudy.benchmark --seeds 0 1 2 --jobs 2             (make benchmark)
    python -m ftstudy.benchmark --seeds 0 1 2 --dry-run            (the plan and its time)
    python -m ftstudy.benchmark --stage report                     (tables from what is done)

Stages, each skipping what is already done:

1. ``data``: ``python -m ftstudy.data prepare --corpus bench --out data/bench`` (training
   problems of :mod:`ftstudy.tasks.benchgen`; the held-out ones never enter);
2. ``train``: ``python -m ftstudy.ablate --study benchmark --preset bench`` (baseline,
   parameter-matched baseline, Free at κ = 1/4, 1/2, 1 bit), every seed;
3. ``eval``: per seed and model, the lm-eval group ``ftstudy_bench`` through
   :func:`ftstudy.eval.evaluate.evaluate_one` (10 samples per held-out problem, encoder Z on
   the prompt only, prior Z on every generated token; code runs in the sandbox), and the
   honest likelihood (NLL under prior Z, ELBO, IWAE) of each task's held-out problems with
   their reference answers; ``--jobs`` of them at once, one thread each;
4. ``report``: ``<out>/report.md`` and ``report.json``: per task, the five models pooled over
   seeds, paired over problems, with a hierarchical bootstrap over seeds and problems
   (:mod:`ftstudy.results.benchstats`), relative changes with intervals and p-values, the
   minimum detectable effect of the design beside every comparison, the diversity of the
   samples and the likelihoods; and the calibration check (baseline pass@1 in [0.2, 0.8]).

The code task runs the generated programs in the sandbox of :mod:`ftstudy.eval.suite.execution`:
where none can be made, a command with the ``eval`` stage refuses before any stage runs, unless
``--allow-unsandboxed`` (or ``FTSTUDY_ALLOW_UNSANDBOXED=1``) asks to run them with resource
limits only.  Every ``--seeds`` value must be an integer 0 … 2^32 − 1.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shlex
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from ftstudy.core.checkpoint import atomic_write_text
from ftstudy.core.config import ConfigError, check_seed, get_preset
from ftstudy.eval.evaluate import (EvalError, _check_sandbox, _task_manager, entry_paths, evaluate_one, label_slug,
                                   read_samples, text_perplexity)
from ftstudy.io import RunDir
from ftstudy.results import benchstats, seedstats
from ftstudy.run.train import REPO_ROOT

__all__ = ["STAGES", "model_label", "planned_models", "ensure_models", "run_parallel", "add_common_args", "check_common_args",
           "pooled_report", "main"]

STAGES = ("data", "train", "eval", "report")
STUDY, PRESET = "benchmark", "bench"
DEFAULT_OUT = REPO_ROOT / "results" / "benchmarks" / "bench"
TASK_GROUP = "ftstudy_bench"
#: The settings of every evaluation: one draw of Z (encoder on the prompt, prior on generated
#: tokens), sampling seed 0 for every model (common random numbers: the comparison is paired).
EVAL_SETTINGS = {"z_policy": "posterior-context", "z_samples": 1, "seed": 0, "batch_size": 64, "device": "cpu",
                 "limit": None}
LIKELIHOOD_K = 16
#: Compared metrics: pass@1 (the score), pass@10 and the diversity of correct samples.
METRICS = ("pass@1", "pass@10", "distinct_correct")
CALIBRATION_RANGE = (0.2, 0.8)
TARGET_MDE_REL = 0.25
FAMILY_GROUP = {"code": "Generative code", "arith": "Generative math", "gsm": "Generative math",
                "path": "Decision (many valid outputs)"}


def model_label(cfg: Any, base_layers: int) -> str:
    """Column name of a benchmark model: baseline, matched baseline (more blocks),
    seed-conditioned baseline (trained on a ``-seeded`` corpus), or Free at its κ."""
    m = cfg.model
    if m.is_free:
        return f"free k={m.kappa_bits:g}"
    if str(cfg.task.data_dir).rstrip("/").endswith("-seeded"):
        return "seeded baseline"
    return "baseline" if m.n_layers == base_layers else f"matched (L={m.n_layers})"


def planned_models(study: str, preset: str, seeds: list[int], out: Path,
                   overrides: dict[str, Any] | None = None) -> list[tuple[int, str, Path, Any]]:
    """``(seed, label, run folder, config)`` of every model a benchmark study trains under
    ``out``/runs (with ``overrides``, the ``--set`` of its train stage, on every run)."""
    from ftstudy.study.ablate import PRESETS, plan
    base_layers = get_preset(PRESETS[preset]).model.n_layers
    return [(r.config.train.seed, model_label(r.config, base_layers), r.run_dir, r.config)
            for r in plan(study, preset, seeds, overrides or {}, out / "runs")]


def _planned(seeds: list[int], out: Path) -> list[tuple[int, str, Path, Any]]:
    return planned_models(STUDY, PRESET, seeds, out)


def _tasks() -> list[str]:
    from ftstudy.eval.suite import BENCH_TASKS
    return list(BENCH_TASKS)


def _likelihood(ckpt: Path, label: str, out: Path) -> dict[str, Any]:
    """Honest likelihood of each family's held-out problems (reused when the checkpoint is the same)."""
    from ftstudy.eval.suite import N_BENCH
    from ftstudy.tasks import benchgen
    path = out / "likelihood" / f"{label_slug(label)}.json"
    sha = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    key = {"checkpoint_sha256": sha, "k": LIKELIHOOD_K, "n": N_BENCH}
    if path.exists():
        saved = json.loads(path.read_text())
        if saved.get("key") == key:
            return saved["likelihood"]
    res = {f: text_perplexity(ckpt, [p.text for p in benchgen.eval_problems(f, N_BENCH[f])], LIKELIHOOD_K, seed=0)
           for f in benchgen.FAMILIES}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({"key": key, "label": label, "checkpoint": str(ckpt), "likelihood": res},
                                       indent=2))
    return res


def _one_thread() -> None:
    """Initializer of the --jobs worker processes: one thread each."""
    import torch
    torch.set_num_threads(1)


def _eval_job(seed: int, label: str, ckpt: str, out: str) -> tuple[int, str, float]:
    """One model of one seed: lm-eval tasks and likelihood."""
    t0 = time.perf_counter()
    folder = Path(out) / f"s{seed}"
    tm = _task_manager(_tasks())
    evaluate_one(Path(ckpt), label, _tasks(), folder, dict(EVAL_SETTINGS), tm, None, confirm_run_unsafe_code=True)
    _likelihood(Path(ckpt), label, folder)
    return seed, label, time.perf_counter() - t0


def ensure_models(run_dirs: list[Path], rel: float, out: Path | None = None) -> dict[str, str]:
    """Every finished run's ckpt/model.pt, retrained from its own config where it is absent (a
    fresh clone: checkpoints are git-ignored) and checked against the committed summary within
    relative tolerance ``rel`` (:func:`ftstudy.study.measure.ensure_model`); by run name,
    "checkpoint" or "retrained" (listed in ``out``/retrained.json with the tolerance).
    EvalError names a run that is not trained or not reproduced."""
    from ftstudy.io import RunError
    from ftstudy.study.measure import ensure_model
    how = {}
    for d in run_dirs:
        if RunDir(d).summary() is None:
            raise EvalError(f"model not trained yet: {d}; run the train stage first")
        try:
            how[d.name] = ensure_model(d, rel=rel)
        except RunError as e:
            raise EvalError(f"{e}; pass --retrain-tolerance REL to accept a retrain within a relative REL of the "
                            f"committed figures (recorded in the report)") from e
    retrained = sorted(k for k, v in how.items() if v == "retrained")
    if retrained and out is not None:
        atomic_write_text(out / "retrained.json", json.dumps({"tolerance_rel": rel, "runs": retrained}, indent=2))
    return how


def run_parallel(fn: Any, todo: list[tuple], jobs: int, tag: str) -> list[Any]:
    """``fn(*t)`` for every ``t`` in ``todo``, ``jobs`` at once in spawned processes with one
    thread each (in order, in this process, for one job); each result whose first items are
    (seed, name, seconds) is printed as it lands."""
    results = []

    def done(res: Any) -> None:
        results.append(res)
        if isinstance(res, tuple) and len(res) == 3:
            print(f"[{tag}] s{res[0]} {res[1]}: done in {res[2]:.0f} s", flush=True)

    if jobs == 1:
        for t in todo:
            done(fn(*t))
        return results
    env_threads = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn"), initializer=_one_thread) as pool:
            for res in pool.map(fn, *zip(*todo)):
                done(res)
    finally:
        if env_threads is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = env_threads
    return results


def _eval_stage(planned: list[tuple[int, str, Path, Any]], out: Path, jobs: int, rel: float = 1e-6) -> None:
    ensure_models([d for _, _, d, _ in planned], rel, out)
    todo = [(s, label, str(RunDir(d).model_file), str(out)) for s, label, d, _ in planned]
    print(f"[ftstudy.eval.benchmark] evaluating {len(todo)} models, {jobs} at a time", flush=True)
    if todo:
        run_parallel(_eval_job, todo, jobs, "ftstudy.eval.benchmark")


# ---------------------------------------------------------------- pooled report

def _read_scores(out: Path, seed: int, label: str) -> dict[str, dict[str, dict[Any, float]]] | None:
    """``{task: {metric: {doc_id: value}}}`` of one seed's model, from evaluate's samples file."""
    path = entry_paths(out / f"s{seed}", label)[1]
    if not path.is_file():
        return None
    samples = read_samples(path)
    res: dict[str, dict[str, dict[Any, float]]] = {}
    for task, rows in samples.items():
        res[task] = {m: {r["doc_id"]: float(r[m]) for r in rows if m in r} for m in METRICS}
    return res


def _read_likelihood(out: Path, seed: int, label: str) -> dict[str, Any] | None:
    path = out / f"s{seed}" / "likelihood" / f"{label_slug(label)}.json"
    return json.loads(path.read_text())["likelihood"] if path.is_file() else None


def pooled_report(out: Path, seeds: list[int], n_boot: int = 4000) -> dict[str, Any]:
    """report.json and report.md of ``out`` from every finished evaluation of ``seeds``."""
    from ftstudy.eval.suite import BENCH_REPEATS
    planned = _planned(seeds, out)
    labels = list(dict.fromkeys(label for _, label, _, _ in planned))
    params = {}
    for _, label, _, cfg in planned:
        params.setdefault(label, _param_count(cfg))
    scores = {(s, lab): _read_scores(out, s, lab) for s in seeds for lab in labels}
    have = {lab: [s for s in seeds if scores[(s, lab)] is not None] for lab in labels}
    tasks = _tasks()
    rows = []
    for task in tasks:
        family = task.removeprefix("ftstudy_bench_")
        row: dict[str, Any] = {"task": task, "family": family, "group": FAMILY_GROUP[family], "models": {}}
        mats: dict[tuple[str, str], Any] = {}
        per_model = {lab: [scores[(s, lab)][task] for s in have[lab] if task in scores[(s, lab)]] for lab in labels}
        per_model = {lab: runs for lab, runs in per_model.items() if runs}
        # The problems every seed of every model answered: one column order for all (paired).
        common = sorted(set.intersection(*(set(r[METRICS[0]]) for runs in per_model.values() for r in runs)),
                        key=str) if per_model else []
        for lab, per_seed in per_model.items():
            for m in METRICS:
                mats[(lab, m)] = benchstats.stack([p[m] for p in per_seed], common)[1]
            row["models"][lab] = {"seeds": len(per_seed), "problems": int(mats[(lab, "pass@1")].shape[1]),
                                  **{m: float(mats[(lab, m)].mean()) for m in METRICS},
                                  "pass@1_by_seed": [float(v) for v in mats[(lab, "pass@1")].mean(1)]}
        if ("baseline", "pass@1") in mats:
            comp = benchstats.variance_components(mats[("baseline", "pass@1")], BENCH_REPEATS)
            row["components"] = comp.to_dict()
            by_seed = row["models"]["baseline"]["pass@1_by_seed"]
            if comp.n_seeds >= 2:
                # primary: the seed-level test's detectable effect (t quantiles, this many seeds per
                # model, both varying like the baseline; its range from the seed variance's interval)
                row["mde"] = seedstats.design_mde(statistics.stdev(by_seed), len(by_seed), float(np.mean(by_seed)),
                                                  sd_df=len(by_seed) - 1)
                row["mde_z"] = benchstats.mde(comp)
                # the bootstrap test's own detectable effect, simulated from the same components
                row["mde_test"] = benchstats.bootstrap_mde(comp)
            else:  # the seed variance needs two seeds or more
                row["mde"] = row["mde_z"] = row["mde_test"] = {"mde_abs": math.nan, "mde_rel": math.nan}
            row["detects_target"] = row["mde"]["mde_rel"] <= TARGET_MDE_REL
            row["calibrated"] = all(CALIBRATION_RANGE[0] <= v <= CALIBRATION_RANGE[1]
                                    for v in row["models"]["baseline"]["pass@1_by_seed"])
            chance = _chance(family)
            if chance is not None:
                row["chance"] = chance
                row["beats_chance"] = all(v > chance for v in row["models"]["baseline"]["pass@1_by_seed"])
            row["comparisons"], row["seed_level"] = {}, {}
            for ref in ("baseline", next((lab for lab in labels if lab.startswith("matched")), None)):
                if ref is None or (ref, "pass@1") not in mats:
                    continue
                for lab in labels:
                    if lab == ref or (lab, "pass@1") not in mats or (ref.startswith("matched") and
                                                                     not lab.startswith("free")):
                        continue
                    name = f"{lab} vs {ref}"
                    row["comparisons"][name] = {
                        m: benchstats.paired_bootstrap(mats[(ref, m)], mats[(lab, m)], n_boot=n_boot, seed=0)
                        for m in METRICS}
                    a, b = row["models"][ref]["pass@1_by_seed"], row["models"][lab]["pass@1_by_seed"]
                    if len(a) >= 2 and len(b) >= 2:
                        row["seed_level"][name] = seedstats.compare_seeds(a, b, bounds=(-1.0, 1.0)).to_dict()
        rows.append(row)
    _seed_verdicts(rows)
    likelihood = _pooled_likelihood(out, seeds, labels, have)
    report = {"labels": labels, "seeds": seeds, "params": params, "rows": rows, "likelihood": likelihood,
              "settings": {**EVAL_SETTINGS, "samples_per_problem": BENCH_REPEATS, "temperature": 0.8, "top_p": 0.95,
                           "likelihood_k": LIKELIHOOD_K},
              "design": {"alpha": 0.05, "power": 0.8, "target_mde_rel": TARGET_MDE_REL,
                         "calibration_range": list(CALIBRATION_RANGE)},
              "command": "python -m ftstudy.benchmark --seeds " + " ".join(map(str, seeds))}
    atomic_write_text(out / "report.json", json.dumps(report, indent=2, allow_nan=True))
    atomic_write_text(out / "report.md", _markdown(report))
    return report


def _param_count(cfg: Any) -> int:
    from ftstudy.core.model import FreeTransformer
    return sum(p.numel() for p in FreeTransformer(cfg.model).parameters())


def _pooled_likelihood(out: Path, seeds: list[int], labels: list[str], have: dict[str, list[int]]) -> dict[str, Any]:
    res: dict[str, Any] = {}
    for lab in labels:
        per = [lk for s in have[lab] if (lk := _read_likelihood(out, s, lab)) is not None]
        if not per:
            continue
        res[lab] = {}
        for fam in per[0]:
            entry = {}
            for key in per[0][fam]:
                if key.endswith("_bits_per_byte"):
                    vals = [p[fam][key] for p in per]
                    entry[key] = {"mean": sum(vals) / len(vals), "by_seed": vals}
            res[lab][fam] = entry
    return res


def _chance(family: str) -> float | None:
    """A task's chance pass@1 where the generator gives one exactly: the path task's best
    graph-blind guess (:func:`ftstudy.tasks.benchgen.path_blind_rate`)."""
    from ftstudy.eval.suite import N_BENCH
    from ftstudy.tasks import benchgen
    if family == "path":
        return benchgen.path_blind_rate(benchgen.eval_problems("path", N_BENCH["path"]))
    return None


def _gate_failure(row: dict[str, Any]) -> str | None:
    if not row.get("calibrated"):
        return "a baseline seed scores outside [0.2, 0.8]"
    if row.get("beats_chance") is False:
        return f"a baseline seed does not beat chance ({row['chance']:.3f}, the best graph-blind guess)"
    return None


def _seed_verdicts(rows: list[dict[str, Any]]) -> None:
    """Seed-level verdicts: Holm over every comparison against the baseline on the tasks that
    pass their gates (calibrated, above chance), then :func:`ftstudy.results.benchstats.seed_verdict` for each; the row's verdict line
    lists them (the paired bootstrap stays a secondary column)."""
    fam = [(r, k) for r in rows if "models" in r and "baseline" in r["models"] and _gate_failure(r) is None
           for k in r.get("seed_level", {}) if k.endswith("vs baseline")]
    for (r, k), p in zip(fam, seedstats.holm([r["seed_level"][k]["p"] for r, k in fam]) if fam else []):
        r["seed_level"][k]["p_holm"] = p
    for r in rows:
        if "models" not in r or "baseline" not in r["models"]:
            continue
        why = _gate_failure(r)
        for c in r.get("seed_level", {}).values():
            c["verdict"] = benchstats.seed_verdict(c, r["models"]["baseline"]["pass@1"], why)
        free = {k: c["verdict"] for k, c in r.get("seed_level", {}).items() if k.startswith("free")}
        r["verdict"] = f"not gated: {why}" if why else \
            "; ".join(f"{k}: {v}" for k, v in free.items()) or "no Free comparison"


def _pct(x: float) -> str:
    return "—" if x != x else f"{x:+.0%}"


def _fmt_cmp(c: dict[str, Any]) -> str:
    rel = "" if math.isnan(c["rel"]) else f" ({c['rel']:+.0%} [{c['rel_low']:+.0%}, {c['rel_high']:+.0%}])"
    return f"Δ {c['diff']:+.3f} [{c['ci_low']:+.3f}, {c['ci_high']:+.3f}]{rel}, p {c['p']:.2g}"


def _markdown(rep: dict[str, Any]) -> str:
    labels = rep["labels"]
    st = rep["settings"]
    lines = ["# Benchmark suite at CPU scale", "",
             f"Seeds {', '.join(map(str, rep['seeds']))}; {st['samples_per_problem']} samples per problem at "
             f"temperature {st['temperature']}, top-p {st['top_p']}; Z: encoder on the prompt only, prior on every "
             "generated token (one draw). **Primary test: seed level** (the seed, one trained model, is the unit): "
             "Welch's t over per-seed means, the exact permutation p beside it, Holm over the comparisons against "
             "the baseline on the calibrated tasks; verdicts `shown` / `no effect within ±m` (m = 25% of the "
             "baseline) / `inconclusive`, none on an uncalibrated task (table below the next ones). Secondary: "
             "cells give the mean over seeds and problems and, below it, Δ to the baseline with the 95% interval "
             "of a hierarchical bootstrap (problems paired, seeds resampled per model), which rejects a true null "
             "too often with few seeds. MDE: the smallest relative change the design detects (two-sided α = 0.05, "
             "power 0.8): (seed t) from t quantiles and the baseline's seed spread, (bootstrap) for the bootstrap "
             "interval, by simulation.",
             "", "Parameters: " + ", ".join(f"{lab} {rep['params'][lab]:,}" for lab in labels), ""]
    for metric, title in (("pass@1", "pass@1 (fraction of correct samples)"), ("pass@10", "pass@10"),
                          ("distinct_correct", "distinct correct answers among the samples (diversity)")):
        lines += [f"## {title}", "", "| group | task | baseline MDE | " + " | ".join(labels) + " | verdict |",
                  "|" + "---|" * (4 + len(labels))]
        for row in rep["rows"]:
            cells = []
            for lab in labels:
                m = row["models"].get(lab)
                if m is None:
                    cells.append("—")
                    continue
                cell = f"{m[metric]:.3f}"
                c = row.get("comparisons", {}).get(f"{lab} vs baseline")
                if c is not None:
                    cell += "<br>" + _fmt_cmp(c[metric])
                cm = next((v for k, v in row.get("comparisons", {}).items() if k.startswith(f"{lab} vs matched")),
                          None)
                if cm is not None:
                    cell += "<br>vs matched: " + _fmt_cmp(cm[metric])
                cells.append(cell)
            mde = (f"{_pct(row['mde']['mde_rel'])} (seed t), {_pct(row['mde_test']['mde_rel'])} (bootstrap)"
                   if "mde" in row and metric == "pass@1" else "—")
            verdict = row.get("verdict", "—") if metric == "pass@1" else ""
            lines.append(f"| {row['group']} | {row['task']} | {mde} | " + " | ".join(cells) + f" | {verdict} |")
        lines.append("")
    lines += ["## Seed-level comparisons (primary)", "",
              "| task | comparison | Δ [95% t interval] | p (Welch) | p (perm.) | p Holm | detectable rel. [range] | "
              "verdict |", "|" + "---|" * 8]
    for row in rep["rows"]:
        for name, c in row.get("seed_level", {}).items():
            holm = "—" if "p_holm" not in c else f"{c['p_holm']:.3g}"
            lines.append(f"| {row['task']} | {name} | {c['diff']:+.3f} [{c['lo']:+.3f}, {c['hi']:+.3f}] | "
                         f"{c['p']:.3g} | {c['p_perm']:.3g} | {holm} | {_pct(c['mde_rel'])} "
                         f"[{_pct(c['mde_rel_lo'])}, {_pct(c['mde_rel_hi'])}] | {c['verdict']} |")
    lines += ["", "## Calibration: baseline pass@1 by seed (target 0.2-0.8)", "", "| task | by seed | in range |",
              "|---|---|---|"]
    for row in rep["rows"]:
        b = row["models"].get("baseline")
        if b:
            lines.append(f"| {row['task']} | {', '.join(f'{v:.3f}' for v in b['pass@1_by_seed'])} | "
                         f"{'yes' if row.get('calibrated') else 'NO'} |")
    lines += ["", "## Honest likelihood of the held-out problems (bits per byte, mean over seeds; lower is better)",
              "", "Reference answers given the prompts, documents joined as in training. NLL under prior Z; "
              f"ELBO and IWAE (K = {st['likelihood_k']}) are upper bounds on the true −log p(x).", "",
              "| task | bound | " + " | ".join(labels) + " |", "|" + "---|" * (2 + len(labels))]
    lk = rep["likelihood"]
    fams = sorted({f for lab in lk for f in lk[lab]})
    for fam in fams:
        for key, name in (("nll_prior_bits_per_byte", "NLL, prior Z"), ("elbo_bits_per_byte", "ELBO"),
                          (f"iwae_{st['likelihood_k']}_bits_per_byte", f"IWAE-{st['likelihood_k']}")):
            vals = [lk.get(lab, {}).get(fam, {}).get(key) for lab in labels]
            lines.append(f"| {fam} | {name} | " + " | ".join("—" if v is None else f"{v['mean']:.4f}"
                                                              for v in vals) + " |")
    lines += ["", f"Command: `{rep['command']}`", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------- CLI

def _dry_run(planned: list[tuple[int, str, Path, Any]], out: Path, seeds: list[int], jobs: int) -> None:
    from ftstudy.study import ablate
    ablate.main(["--study", STUDY, "--preset", PRESET, "--seeds", *map(str, seeds), "--out", str(out / "runs"),
                 "--jobs", str(jobs), "--dry-run"])
    done, times = [], []
    for s, label, _, _ in planned:
        path = entry_paths(out / f"s{s}", label)[0]
        if path.is_file():
            done.append(s)
            try:
                times.append(float(json.loads(path.read_text())["entry"]["eval_time_s"]))
            except (OSError, ValueError, KeyError):
                pass
    per = sorted(times)[len(times) // 2] if times else None
    left = len(planned) - len(done)
    est = "no evaluation measured yet" if per is None else \
        f"about {left * per / jobs / 60:.0f} min ({per:.0f} s per model, the median of {len(times)} measured)"
    print(f"evaluation: {len(planned)} model evaluations, {len(done)} done, {left} left; {est}, {jobs} at a time")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ftstudy.benchmark", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], metavar="SEED")
    p.add_argument("--stage", nargs="+", default=list(STAGES), choices=STAGES, help="stages to run (default all)")
    add_common_args(p, DEFAULT_OUT)
    p.add_argument("--data", type=Path, default=REPO_ROOT / "data" / "bench", help="the bench corpus (made if missing)")
    p.add_argument("--bootstrap", type=int, default=4000, help="bootstrap resamples of the pooled report")
    p.add_argument("--dry-run", action="store_true", help="print the plan and its estimated time, run nothing")
    p.add_argument("--allow-unsandboxed", action="store_true",
                   help="where no sandbox can be made, run the generated code anyway with resource limits only "
                        "(the same as FTSTUDY_ALLOW_UNSANDBOXED=1)")
    return p


def add_common_args(p: argparse.ArgumentParser, out: Path) -> None:
    """--jobs, --out and --retrain-tolerance, shared by the benchmark commands."""
    p.add_argument("--jobs", type=int, default=1, help="runs trained and models evaluated at once (one thread each)")
    p.add_argument("--out", type=Path, default=out)
    p.add_argument("--retrain-tolerance", type=float, default=1e-6, metavar="REL",
                   help="a finished run without its checkpoint (a fresh clone) is trained again and must reproduce "
                        "its committed summary within this relative tolerance (default 1e-6)")


def check_common_args(args: argparse.Namespace) -> None:
    """EvalError for a bad --seeds, --jobs or --retrain-tolerance (before anything is loaded or written)."""
    for seed in getattr(args, "seeds", None) or []:
        try:
            check_seed(seed, "--seeds")
        except ConfigError as e:
            raise EvalError(str(e)) from None
    if args.jobs < 1:
        raise EvalError(f"--jobs = {args.jobs} is not allowed: an integer >= 1")
    if not 0 <= args.retrain_tolerance < 1:
        raise EvalError(f"--retrain-tolerance = {args.retrain_tolerance} is not allowed: 0 <= REL < 1")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    try:
        check_common_args(args)
        planned = _planned(args.seeds, args.out)
        if args.dry_run:
            _dry_run(planned, args.out, args.seeds, args.jobs)
            return 0
        if "eval" in args.stage:
            # Before the data and train stages: a refusal after hours of training helps nobody.
            _check_sandbox(args.allow_unsandboxed)
        if "data" in args.stage:
            from ftstudy.tasks import corpus
            if not corpus.is_shard_folder(args.data):
                rc = corpus.main(["prepare", "--corpus", "bench", "--out", str(args.data), "--val-percent", "1",
                                  "--no-progress"])
                if rc:
                    return rc
        if "train" in args.stage:
            from ftstudy.study import ablate
            rc = ablate.main(["--study", STUDY, "--preset", PRESET, "--seeds", *map(str, args.seeds),
                              "--out", str(args.out / "runs"), "--jobs", str(args.jobs)])
            if rc:
                return rc
        if "eval" in args.stage:
            _eval_stage(planned, args.out, args.jobs, args.retrain_tolerance)
        if "report" in args.stage:
            pooled_report(args.out, args.seeds, n_boot=args.bootstrap)
            atomic_write_text(args.out / "command.txt", "python -m ftstudy.benchmark " + shlex.join(argv) + "\n")
            print((args.out / "report.md").read_text())
    except EvalError as e:  # the command-line epilogue every ftstudy command shares: one error line, exit 2
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
