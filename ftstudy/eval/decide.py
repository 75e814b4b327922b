"""``ftstudy decide`` (``python -m ftstudy.eval.decide``): the decision benchmark,
end to end and resumable.

    ftstudy decide --stage data calibrate --jobs 2       (the calibration curves, then stop)
    ftstudy decide --seeds 0 1 2 3 4 --jobs 2            (models, lm-eval, report)
    ftstudy decide --stage report                        (tables from what is done)
    ftstudy decide --device cuda --seeds 0 ... 9 --jobs 16 --set compile=true --dry-run
                                                          (a GPU: priced first, then run without --dry-run)

Stages, each skipping what is already done:

1. ``data``: the training corpus ``data/decide`` and the seed-conditioned baseline's
   ``data/decide-seeded`` (the same documents, each after a random prefix):
   ``python -m ftstudy.data prepare --corpus decide [--seed-prefix]``;
2. ``calibrate``: three baseline seeds trained for :data:`CALIBRATION` ``steps`` with a
   snapshot every ``every`` steps, each snapshot scored on the first ``limit`` documents of
   every task; ``<out>/calibration/curves.csv`` and ``CURVES.md``: the step count of the
   comparison is chosen from them (every seed inside the gates, :data:`GATES`);
3. ``train``: ``python -m ftstudy.ablate --study decide --preset decide`` (baseline,
   parameter-matched baseline, seed-conditioned baseline, Free at κ = 1/2 and 1 bit);
4. ``eval``: per seed and model, the lm-eval group ``ftstudy_decide`` (10 samples per
   document, temperature 0.8, top-p 0.95): every model with the paper's prefill
   (``posterior-context``: the encoder reads the prompt, Z is uniform on generated tokens),
   Free models also with prior Z at every position; the seed-conditioned baseline after a
   fresh random prefix per sample; and shared-Z route agreement on the main route task
   (:func:`route_agreement`);
5. ``report``: ``<out>/report.json`` and ``report.md`` (:func:`pooled_report`): per task and
   model the per-seed scores, the gates, the trivial baselines, seed-level comparisons
   (Welch over seed means with the exact permutation p, Holm across the family, the
   detectable effect from t quantiles with its range), the paired bootstrap as a secondary
   column, the difference in differences across the route conditions, diversity at a fixed
   number of correct samples, and the verdicts of ``results/benchmarks/decide/RULE.md``.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ftstudy.core.checkpoint import atomic_write_text
from ftstudy.core.config import get_preset
from ftstudy.eval.benchmark import (add_common_args, check_common_args, ensure_models, model_label, planned_models,
                                    run_parallel)
from ftstudy.eval.evaluate import EvalError, _task_manager, entry_paths, evaluate_one, label_slug, read_samples
from ftstudy.io import RunDir
from ftstudy.run.train import DEVICES, REPO_ROOT

__all__ = ["STAGES", "CALIBRATION", "GATES", "model_label", "route_agreement", "pooled_report", "main"]

STAGES = ("data", "calibrate", "train", "eval", "report")
STUDY, PRESET, CONFIG_PRESET = "decide", "decide", "decide-small"
DEFAULT_OUT = REPO_ROOT / "results" / "benchmarks" / "decide"
DATA = REPO_ROOT / "data" / "decide"
TASK_GROUP = "ftstudy_decide"
#: Every evaluation: one draw of Z per sample, sampling seed 0 for every model (common random
#: numbers), the paper's prefill for Z unless a Z policy is named.
EVAL_SETTINGS = {"z_policy": "posterior-context", "z_samples": 1, "seed": 0, "batch_size": 64, "device": "cpu",
                 "limit": None}
#: The calibration curves: three baseline seeds, snapshots every ``every`` steps up to ``steps``,
#: each scored on the first ``limit`` documents of every task.
CALIBRATION = {"seeds": (0, 1, 2), "steps": 3000, "every": 300, "limit": 40}
#: Gates a task must pass before any comparison on it: every baseline seed's score inside
#: ``range``, and on the route tasks every baseline seed's per-step edge validity >= ``edge_validity``.
GATES = {"range": (0.2, 0.8), "edge_validity": 0.9}
#: The creativity tasks' gate (RULE.md, amendment 1): every baseline seed's valid rate.
CREATIVE_VALID_GATE = 0.5
#: Tasks exempt from the [0.2, 0.8] gate: control (a), whose look-ahead-free walker scores 1.0.
CEILING_CONTROLS = ("route_two_routes",)
#: Shared-Z route agreement: problems of the main route task, groups per problem, samples per group.
AGREEMENT = {"problems": 50, "groups": 4, "per_group": 4, "temperature": 0.8, "top_p": 0.95, "max_new": 56}


def _planned(seeds: list[int], out: Path, overrides: dict[str, Any] | None = None) -> list[tuple[int, str, Path, Any]]:
    return planned_models(STUDY, PRESET, seeds, out, overrides)


def _tasks() -> list[str]:
    from ftstudy.eval.suite import DECIDE_TASKS
    return list(DECIDE_TASKS)


# ---------------------------------------------------------------- data

def _data_stage(data: Path) -> int:
    from ftstudy.study.studies import SEEDED_DATA
    from ftstudy.tasks import corpus
    seeded = REPO_ROOT / SEEDED_DATA if data == DATA else data.with_name(data.name + "-seeded")
    for folder, extra in ((data, []), (seeded, ["--seed-prefix"])):
        if corpus.is_shard_folder(folder):
            continue
        rc = corpus.main(["prepare", "--corpus", "decide", "--out", str(folder), "--val-percent", "1", "--no-progress",
                          *extra])
        if rc:
            return rc
    return 0


# ---------------------------------------------------------------- shared-Z route agreement

def route_agreement(ckpt: Path, label: str, seed_prefix: bool = False, seed: int = 0,
                    settings: dict[str, Any] | None = None, device: str = "cpu") -> dict[str, Any]:
    """Do samples that share one Z take the same route?  On the first ``problems`` held-out
    problems of the main route task, ``groups`` groups of ``per_group`` samples: *shared*
    groups share Z at every position (prior Z, as in the paper's Figure 4), *independent*
    ones draw it per sample.  For the seed-conditioned baseline the shared thing is the
    prefix.  Agreement: among pairs of valid samples of one group, the share on the same
    route, averaged over problems with at least one such pair; chance: the sum of squared
    route shares of the problem's independent samples.  A baseline without Z or prefix has
    nothing to share: None.  ``device``: where the model samples (its generator lives there too,
    so the draws on the CPU are the same whatever the machine)."""
    import random

    import torch

    from ftstudy.core.model import generate
    from ftstudy.eval.harness import FTStudyLM
    from ftstudy.tasks import decide, routegen

    st = {**AGREEMENT, **(settings or {})}
    model, tok = FTStudyLM._load(ckpt, device)
    cfg = model.cfg
    if not cfg.is_free and not seed_prefix:
        return {"label": label, "shared": None, "reason": "no latent and no prefix: nothing to share"}
    probs = routegen.eval_problems("main", decide.N_ROUTE)[: st["problems"]]
    g, m = st["groups"], st["per_group"]
    b = g * m
    gen = torch.Generator(device=device).manual_seed(seed)
    pre_rng = random.Random(f"agreement-prefix:{seed}")
    res: dict[str, list[float]] = {"shared": [], "independent": [], "chance": []}
    valid_rates: dict[str, list[float]] = {"shared": [], "independent": []}
    with torch.no_grad():
        for p in probs:
            routes_by_mode = {}
            for mode in ("shared", "independent"):
                if seed_prefix:
                    pres = [decide.seed_prefix(pre_rng) for _ in range(g if mode == "shared" else b)]
                    texts = [pres[i // m] if mode == "shared" else pres[i] for i in range(b)]
                    prompts = [tok.encode(t + p.prompt) for t in texts]
                else:
                    prompts = [tok.encode(p.prompt)] * b
                prompt = torch.tensor(prompts, dtype=torch.long, device=device)
                bits = None
                if cfg.is_free:
                    shape = (prompt.shape[1] + st["max_new"] - 1, cfg.latent_bits)
                    if mode == "shared":
                        bits = torch.randint(0, 2, (g, 1, *shape), generator=gen, device=device).bool()
                        bits = bits.expand(g, m, *shape)
                        bits = bits.reshape(b, *shape).contiguous()
                    else:
                        bits = torch.randint(0, 2, (b, *shape), generator=gen, device=device).bool()
                nl = tok.encode("\n")[0]
                out = generate(model, prompt, st["max_new"], bits=bits, temperature=st["temperature"],
                               top_p=st["top_p"], generator=gen, eos_id=getattr(tok, "eot_id", None),
                               stop=lambda new, active: (new == nl).any(1))
                texts = [tok.decode(row[prompt.shape[1]:].tolist()) for row in out.tokens]
                routes_by_mode[mode] = [routegen.route_of(p, t) for t in texts]
                valid_rates[mode].append(sum(r is not None for r in routes_by_mode[mode]) / b)
            ind = [r for r in routes_by_mode["independent"] if r is not None]
            for mode in ("shared", "independent"):
                same = pairs = 0
                for k in range(g):
                    rs = [r for r in routes_by_mode[mode][k * m:(k + 1) * m] if r is not None]
                    for i in range(len(rs)):
                        for j in range(i + 1, len(rs)):
                            pairs += 1
                            same += rs[i] == rs[j]
                if pairs:
                    res[mode].append(same / pairs)
            if ind:
                res["chance"].append(sum((ind.count(r) / len(ind)) ** 2 for r in set(ind)))

    def mean(v: list[float]) -> float | None:
        return sum(v) / len(v) if v else None

    return {"label": label, "shared": mean(res["shared"]), "independent": mean(res["independent"]),
            "chance": mean(res["chance"]), "problems_with_pairs": {k: len(v) for k, v in res.items()},
            "valid_shared": mean(valid_rates["shared"]), "valid_independent": mean(valid_rates["independent"]),
            "settings": st, "seed": seed, "seed_prefix": seed_prefix}


def _agreement_file(out: Path, seed: int, label: str) -> Path:
    return out / f"s{seed}" / "agreement" / f"{label_slug(label)}.json"


# ---------------------------------------------------------------- evaluation jobs

def _eval_job(seed: int, label: str, ckpt: str, out: str, z_policy: str, seed_prefix: bool,
              device: str = "cpu") -> tuple[int, str, float]:
    """One model of one seed under one Z policy: lm-eval tasks (and, for the prefill, shared-Z
    route agreement), on ``device``."""
    t0 = time.perf_counter()
    folder = Path(out) / f"s{seed}"
    settings = {**EVAL_SETTINGS, "z_policy": z_policy, "seed_prefix": seed_prefix, "device": device}
    sub = folder if z_policy == EVAL_SETTINGS["z_policy"] else folder / z_policy
    evaluate_one(Path(ckpt), label, _tasks(), sub, settings, _task_manager(_tasks()), None)
    if z_policy == EVAL_SETTINGS["z_policy"]:
        path = _agreement_file(Path(out), seed, label)
        sha = hashlib.sha256(Path(ckpt).read_bytes()).hexdigest()
        key = {"checkpoint_sha256": sha, "settings": AGREEMENT, "seed_prefix": seed_prefix}
        if not (path.is_file() and json.loads(path.read_text()).get("key") == key):
            res = route_agreement(Path(ckpt), label, seed_prefix=seed_prefix, device=device)
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, json.dumps({"key": key, "agreement": res}, indent=2))
    return seed, f"{label} [{z_policy}]", time.perf_counter() - t0


def _eval_todo(planned: list[tuple[int, str, Path, Any]], out: Path, device: str = "cpu") -> list[tuple]:
    """The evaluation jobs (:func:`_eval_job` arguments): every model with the prefill, Free
    models also with prior Z at every position."""
    todo = []
    for s, label, d, cfg in planned:
        ckpt = RunDir(d).model_file
        policies = ("posterior-context", "prior") if cfg.model.is_free else ("posterior-context",)
        for z in policies:
            todo.append((s, label, str(ckpt), str(out), z, label == "seeded baseline", device))
    return todo


def _eval_stage(planned: list[tuple[int, str, Path, Any]], out: Path, jobs: int, rel: float = 1e-6,
                device: str = "cpu") -> None:
    ensure_models([d for _, _, d, _ in planned], rel, out)
    todo = _eval_todo(planned, out, device)
    print(f"[ftstudy.eval.decide] {len(todo)} evaluations, {jobs} at a time", flush=True)
    run_parallel(_eval_job, todo, jobs, "ftstudy.eval.decide")


# ---------------------------------------------------------------- calibration curves

def _calibration_runs(out: Path) -> list[tuple[int, Path, list[str]]]:
    from ftstudy.run.train import run_name
    c = CALIBRATION
    runs = []
    for s in c["seeds"]:
        sets = [f"steps={c['steps']}", "latent_bits=0", f"seed={s}"]
        cfg = get_preset(CONFIG_PRESET, dict(x.split("=", 1) for x in sets))
        argv = ["--preset", CONFIG_PRESET, "--set", *sets, "--out", str(out / "calibration"), "--no-progress",
                "--snapshot-every", str(c["every"])]
        runs.append((s, out / "calibration" / run_name(cfg), argv))
    return runs


def _calibrate_stage(out: Path, jobs: int) -> None:
    """Train the calibration baselines (``jobs`` at once, one thread each), then score every
    snapshot on the first ``limit`` documents of every task; curves.csv and CURVES.md."""
    runs = _calibration_runs(out)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    pending = [r for r in runs if not RunDir(r[1]).summary_file.exists()]
    procs: list[subprocess.Popen[bytes]] = []
    for s, folder, argv in pending:
        while len([p for p in procs if p.poll() is None]) >= jobs:
            time.sleep(5)
        log = folder.parent / f"train-s{s}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        procs.append(subprocess.Popen([sys.executable, "-m", "ftstudy.train", *argv], env=env,
                                      stdout=open(log, "ab"), stderr=subprocess.STDOUT))
    bad = [p.args for p in procs if p.wait() != 0]
    if bad:
        raise EvalError(f"calibration training failed: {bad[0]} (see the train-s*.log beside the runs)")
    todo = []
    for s, folder, _ in runs:
        for step, snap in sorted(RunDir(folder).snapshots().items()):
            todo.append((s, step, str(snap), str(out / "calibration" / "eval" / folder.name)))
    print(f"[ftstudy.eval.decide] scoring {len(todo)} snapshots, {jobs} at a time", flush=True)
    run_parallel(_score_snapshot, todo, jobs, "ftstudy.eval.decide")
    rows = []
    for s, step, _, folder in todo:
        entry = json.loads(entry_paths(Path(folder), f"step{step}")[0].read_text())["entry"]
        for task in _tasks():
            res = entry["results"].get(task, {})
            rows.append({"seed": s, "step": step, "task": task.removeprefix("ftstudy_decide_"),
                         **{m: res.get(f"{m},samples") for m in ("pass@1", "edge_validity", "valid", "novel")
                            if f"{m},samples" in res}})
    _write_curves(out / "calibration", rows)


def _score_snapshot(seed: int, step: int, snap: str, folder: str) -> None:
    settings = {**EVAL_SETTINGS, "limit": CALIBRATION["limit"]}
    evaluate_one(Path(snap), f"step{step}", _tasks(), Path(folder), settings, _task_manager(_tasks()), None)
    print(f"[ftstudy.eval.decide] calibration s{seed} step {step}: scored", flush=True)


def _write_curves(folder: Path, rows: list[dict[str, Any]], schedule: dict[str, Any] | None = None) -> None:
    """curves.csv and CURVES.md of scored snapshots; ``schedule`` (seeds, steps, every; default
    :data:`CALIBRATION`) is what the header says the runs were."""
    from ftstudy.tasks import decide
    c = {**CALIBRATION, **(schedule or {})}
    keys = ["seed", "step", "task", "pass@1", "edge_validity", "valid", "novel"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else (f"{r[k]:.4f}" if isinstance(r[k], float) else r[k]))
                    for k in keys})
    atomic_write_text(folder / "curves.csv", buf.getvalue())
    lo, hi = GATES["range"]
    steps = sorted({r["step"] for r in rows})
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    lines = ["# Calibration curves of the decision benchmark (generated: `ftstudy decide --stage calibrate`)", "",
             f"Baseline seeds {', '.join(map(str, c['seeds']))} of preset `{CONFIG_PRESET}` trained for "
             f"{c['steps']} steps (one schedule; snapshots every {c['every']} steps), each "
             f"snapshot scored on the first {c['limit']} documents of every task (10 samples each, "
             "temperature 0.8, top-p 0.95). Cells, one per seed: route tasks pass@1 / per-step edge "
             "validity; creativity tasks valid rate / creativity. **Gate** (`RULE.md`): on route tasks every "
             f"seed's pass@1 in [{lo}, {hi}] (not on the two-route control) and edge validity >= "
             f"{GATES['edge_validity']}; on creativity tasks every seed's valid rate >= {CREATIVE_VALID_GATE} and "
             "above the myopic strategy's; a step passes when every task passes.", "",
             "| step | " + " | ".join(tasks) + " | gate |", "|" + "---|" * (len(tasks) + 2)]
    for step in steps:
        cells, ok = [], True
        for t in tasks:
            rs = sorted((r for r in rows if r["step"] == step and r["task"] == t), key=lambda r: r["seed"])
            p1 = [r.get("pass@1") for r in rs]
            ev = [r.get("edge_validity") for r in rs]
            if t.startswith("route"):
                ok &= all(v is not None and lo <= v <= hi for v in p1) or t in CEILING_CONTROLS
                ok &= all(v is not None and v >= GATES["edge_validity"] for v in ev)
                cells.append(" ".join(f"{a:.2f}/{b:.2f}" for a, b in zip(p1, ev) if a is not None and b is not None))
            else:  # creativity (RULE.md, amendment 1): the valid rate is gated, creativity is reported
                valid = [r.get("valid") for r in rs]
                floor = max(CREATIVE_VALID_GATE, decide.creative_valid_rates(t)["myopic"])
                ok &= all(v is not None and v >= floor for v in valid)
                cells.append(" ".join(f"{v:.2f}/{a:.2f}" for v, a in zip(valid, p1) if v is not None and a is not None))
        lines.append(f"| {step} | " + " | ".join(cells) + f" | {'pass' if ok else '—'} |")
    atomic_write_text(folder / "CURVES.md", "\n".join(lines) + "\n")


# ---------------------------------------------------------------- report

def _read_samples(folder: Path, label: str) -> dict[str, list[dict[str, Any]]] | None:
    path = entry_paths(folder, label)[1]
    return read_samples(path) if path.is_file() else None


def _per_seed(out: Path, seeds: list[int], label: str, z_policy: str) -> dict[int, dict[str, dict[str, Any]]]:
    """``{seed: {task: {metric: [per-doc values]}}}`` of one model under one Z policy."""
    res = {}
    for s in seeds:
        folder = out / f"s{s}" if z_policy == EVAL_SETTINGS["z_policy"] else out / f"s{s}" / z_policy
        samples = _read_samples(folder, label)
        if samples is None:
            continue
        res[s] = {t.removeprefix("ftstudy_decide_"): {m: [float(r[m]) for r in sorted(rows, key=lambda r: r["doc_id"])
                                                          if m in r] for m in rows[0] if m not in ("doc_id", "filter",
                                                                                                   "response")}
                  for t, rows in samples.items() if rows}
    return res


def _mean(v: list[float]) -> float:
    return sum(v) / len(v) if v else math.nan


def _fixed_correct_diversity(per_doc: dict[str, list[float]], n: int, weights: dict[int, float]) -> float:
    """Distinct valid answers at a fixed number of correct samples: the mean of distinct_correct
    among documents with c correct samples, averaged over c with ``weights`` (the baseline's
    distribution of c, c >= 2): a model's diversity with its accuracy held at the baseline's."""
    by_c: dict[int, list[float]] = {}
    for p1, d in zip(per_doc["pass@1"], per_doc["distinct_correct"]):
        by_c.setdefault(round(p1 * n), []).append(d)
    num = den = 0.0
    for c, w in weights.items():
        if c in by_c:
            num += w * _mean(by_c[c])
            den += w
    return num / den if den else math.nan


def pooled_report(out: Path, seeds: list[int], overrides: dict[str, Any] | None = None,
                  command: str | None = None) -> dict[str, Any]:
    """report.json and report.md from every finished evaluation of ``seeds`` (see the module doc);
    ``overrides``: the train stage's ``--set``; ``command``: the command recorded with it."""
    from ftstudy.results import benchstats, seedstats
    from ftstudy.tasks import decide
    planned = _planned(seeds, out, overrides)
    labels = list(dict.fromkeys(lab for _, lab, _, _ in planned))
    free = [lab for lab in labels if lab.startswith("free")]
    data = {(lab, z): _per_seed(out, seeds, lab, z) for lab in labels
            for z in (("posterior-context", "prior") if lab in free else ("posterior-context",))}
    rows: dict[str, Any] = {}
    n = decide.REPEATS
    for task in decide.TASKS:
        row: dict[str, Any] = {"baselines": decide.baselines(task), "models": {}, "prior_z": {}}
        for (lab, z), per in data.items():
            have = {s: v[task] for s, v in per.items() if task in v}
            if not have:
                continue
            entry = {"seeds": sorted(have), "pass@1_by_seed": [_mean(have[s]["pass@1"]) for s in sorted(have)]}
            for m in ("edge_validity", "valid", "novel", "distinct_correct"):
                if all(m in have[s] for s in have):
                    entry[f"{m}_by_seed"] = [_mean(have[s][m]) for s in sorted(have)]
            if "route_a" in next(iter(have.values())):
                entry["route_a_share_by_seed"] = [
                    (sum(have[s]["route_a"]) / sum(have[s]["pass@1"])) if sum(have[s]["pass@1"]) else math.nan
                    for s in sorted(have)]
            entry["pass@1"] = _mean(entry["pass@1_by_seed"])
            (row["models"] if z == "posterior-context" else row["prior_z"])[lab] = entry
        base = row["models"].get("baseline")
        if base is None:
            rows[task] = row
            continue
        lo, hi = GATES["range"]
        if task in decide.CREATIVE_TASKS:
            # RULE.md, amendment 1: the model has learned the graph and the format (its valid
            # rate beats the myopic strategy's, and so chance); creativity is compared at its floor
            myopic_valid = decide.creative_valid_rates(task)["myopic"]
            gate = {"learned": all(v >= max(CREATIVE_VALID_GATE, myopic_valid) for v in base["valid_by_seed"])}
        else:
            gate = {"beats_chance": all(v > row["baselines"]["blind"] for v in base["pass@1_by_seed"])}
            if task not in CEILING_CONTROLS:
                gate["in_range"] = all(lo <= v <= hi for v in base["pass@1_by_seed"])
        if "edge_validity_by_seed" in base:
            gate["reads_graph"] = all(v >= GATES["edge_validity"] for v in base["edge_validity_by_seed"])
        row["gate"] = {**gate, "passed": all(gate.values())}
        nb = len(base["pass@1_by_seed"])
        if nb >= 2:
            # the design's detectable effect: this many seeds per model, both varying like the baseline
            row["mde"] = seedstats.design_mde(statistics.stdev(base["pass@1_by_seed"]), nb, base["pass@1"],
                                              sd_df=nb - 1)
        comps = {}
        matched = next((lab for lab in labels if lab.startswith("matched")), None)
        for lab in labels:
            if lab == "baseline" or lab not in row["models"]:
                continue
            refs = ["baseline"] + ([matched] if lab.startswith("free") and matched in row["models"] else [])
            for ref in refs:
                a, b = row["models"][ref]["pass@1_by_seed"], row["models"][lab]["pass@1_by_seed"]
                if len(a) < 2 or len(b) < 2:
                    continue
                c = seedstats.compare_seeds(a, b, bounds=(-1.0, 1.0)).to_dict()
                c["k_of_n"] = _k_of_n(a, b)
                c["bootstrap"] = _bootstrap(data[(ref, "posterior-context")], data[(lab, "posterior-context")], task,
                                            benchstats)
                comps[f"{lab} vs {ref}"] = c
        row["comparisons"] = comps
        rows[task] = row
    _holm_and_verdicts(rows)
    did = _difference_in_differences(rows, labels)
    diversity = _diversity(data, n)
    agreement = {lab: [json.loads(p.read_text())["agreement"] for s in seeds
                       if (p := _agreement_file(out, s, lab)).is_file()] for lab in labels}
    report = {"labels": labels, "seeds": seeds, "tasks": rows, "difference_in_differences": did,
              "diversity_fixed_correct": diversity, "agreement": agreement,
              "settings": {**EVAL_SETTINGS, "samples_per_document": n, "temperature": 0.8, "top_p": 0.95},
              "gates": GATES, "rule": "results/benchmarks/decide/RULE.md",
              "command": command or "ftstudy decide --seeds " + " ".join(map(str, seeds))}
    atomic_write_text(out / "report.json", json.dumps(report, indent=2, allow_nan=True))
    atomic_write_text(out / "report.md", _markdown(report))
    return report


def _k_of_n(ref: list[float], lab: list[float]) -> list[int]:
    """[k, n]: of the model's n seeds, the k that lie beyond the reference's mean over seeds in
    the direction of the difference of means (0 when the means are equal): the seeds that show
    the effect on their own."""
    m_ref, m_lab = _mean(ref), _mean(lab)
    sign = (m_lab > m_ref) - (m_lab < m_ref)
    return [sum(sign * (v - m_ref) > 0 for v in lab) if sign else 0, len(lab)]


def _bootstrap(ref: dict[int, dict[str, Any]], lab: dict[int, dict[str, Any]], task: str,
               benchstats: Any) -> dict[str, float] | None:
    """The paired hierarchical bootstrap (secondary column) of two models' per-seed, per-document
    pass@1 (as :func:`_per_seed` read them): problems paired, seeds resampled."""
    import numpy as np
    mats = []
    for per in (ref, lab):
        vals = [per[s][task]["pass@1"] for s in sorted(per) if task in per[s]]
        if len(vals) < 2:
            return None
        mats.append(np.array(vals))
    return benchstats.paired_bootstrap(mats[0], mats[1], n_boot=4000, seed=0)


def _holm_and_verdicts(rows: dict[str, Any]) -> None:
    """The family: every comparison against the baseline on every task that passed its gate;
    Holm's step-down over their Welch p; verdicts per RULE.md."""
    from ftstudy.results import benchstats, seedstats
    fam = [(t, k) for t, r in rows.items() if r.get("gate", {}).get("passed") for k in r.get("comparisons", {})
           if k.endswith("vs baseline")]
    adj = seedstats.holm([rows[t]["comparisons"][k]["p"] for t, k in fam]) if fam else []
    for (t, k), p in zip(fam, adj):
        rows[t]["comparisons"][k]["p_holm"] = p
    for t, r in rows.items():
        gate = r.get("gate", {})
        why = None if gate.get("passed") else "a baseline seed fails the gate (" + ", ".join(
            k for k, v in gate.items() if k != "passed" and not v) + ")"
        for c in r.get("comparisons", {}).values():
            c["verdict"] = benchstats.seed_verdict(c, r["models"]["baseline"]["pass@1"], why)


def _difference_in_differences(rows: dict[str, Any], labels: list[str]) -> dict[str, Any]:
    """Per model, per seed: main − mean(two_routes, one_route), compared with the baseline's."""
    from ftstudy.results import seedstats
    names = ("route_main", "route_two_routes", "route_one_route")
    if not all(t in rows for t in names):
        return {}

    def contrast(lab: str) -> list[float] | None:
        ms = [rows[t]["models"].get(lab) for t in names]
        if any(m is None for m in ms) or len({tuple(m["seeds"]) for m in ms}) != 1:
            return None
        return [a - (b + c) / 2 for a, b, c in zip(*(m["pass@1_by_seed"] for m in ms))]

    base = contrast("baseline")
    out = {}
    for lab in labels:
        if lab == "baseline" or base is None:
            continue
        cur = contrast(lab)
        if cur is None or len(cur) < 2 or len(base) < 2:
            continue
        out[lab] = {"contrast_by_seed": cur, "baseline_by_seed": base,
                    **seedstats.compare_seeds(base, cur, bounds=(-2.0, 2.0)).to_dict()}
    return out


def _diversity(data: dict[tuple[str, str], Any], n: int) -> dict[str, Any]:
    """Distinct valid routes per problem at a fixed number of correct samples (the baseline's
    distribution of c), per route task and model, by seed."""
    from ftstudy.tasks import decide
    res: dict[str, Any] = {}
    for task in decide.ROUTE_TASKS:
        base = data.get(("baseline", "posterior-context"), {})
        cs = [round(p * n) for s in base.values() if task in s for p in s[task]["pass@1"]]
        cs = [c for c in cs if c >= 2]
        if not cs:
            continue
        weights = {c: cs.count(c) / len(cs) for c in set(cs)}
        res[task] = {lab: [_fixed_correct_diversity(per[s][task], n, weights) for s in sorted(per) if task in per[s]]
                     for (lab, z), per in data.items() if z == "posterior-context"}
    return res


def _fmt(x: Any, d: int = 3) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{d}f}"


def _markdown(rep: dict[str, Any]) -> str:
    labels = rep["labels"]
    lines = ["# Decision benchmark", "",
             f"Seeds {', '.join(map(str, rep['seeds']))}; {rep['settings']['samples_per_document']} samples per "
             "document at temperature 0.8, top-p 0.95; Z: encoder on the prompt, prior on generated tokens (the "
             "paper's prefill); Free models also with prior Z everywhere (own table). Primary test: Welch t over "
             "seed means (the seed is the unit), exact permutation p beside it, Holm across the gated family; "
             "the paired bootstrap is secondary. Verdicts follow `results/benchmarks/decide/RULE.md`.", "",
             "## pass@1 by model (mean over seeds; by seed in brackets) and the trivial baselines", "",
             "| task | gate | baselines | " + " | ".join(labels) + " |", "|" + "---|" * (3 + len(labels))]
    for task, row in rep["tasks"].items():
        gate = row.get("gate", {})
        g = "pass" if gate.get("passed") else ("fail: " + ", ".join(k for k, v in gate.items()
                                                                    if k != "passed" and not v)) if gate else "—"
        bl = ", ".join(f"{k} {v:.3f}" for k, v in row["baselines"].items())
        cells = []
        for lab in labels:
            m = row["models"].get(lab)
            cells.append("—" if m is None else f"{m['pass@1']:.3f} [" + " ".join(f"{v:.2f}" for v in
                                                                               m["pass@1_by_seed"]) + "]")
        lines.append(f"| {task} | {g} | {bl} | " + " | ".join(cells) + " |")
    lines += ["", "## Comparisons (seed level)", "",
              "| task | comparison | Δ [95% t interval] | rel. | p (Welch) | p (perm.) | p Holm | MDE rel. [range] | "
              "bootstrap Δ [95%] | verdict | seeds beyond the reference's mean |", "|" + "---|" * 11]
    for task, row in rep["tasks"].items():
        for name, c in row.get("comparisons", {}).items():
            bs = c.get("bootstrap") or {}
            lines.append(
                f"| {task} | {name} | {c['diff']:+.3f} [{c['lo']:+.3f}, {c['hi']:+.3f}] | {_fmt(c.get('rel'), 2)} | "
                f"{c['p']:.3g} | {_fmt(c.get('p_perm'), 3)} | {_fmt(c.get('p_holm'), 3)} | "
                f"{_fmt(c.get('mde_rel'), 2)} [{_fmt(c.get('mde_rel_lo'), 2)}, {_fmt(c.get('mde_rel_hi'), 2)}] | "
                f"{_fmt(bs.get('diff'))} [{_fmt(bs.get('ci_low'))}, {_fmt(bs.get('ci_high'))}] | {c['verdict']} | "
                f"{c['k_of_n'][0]} of {c['k_of_n'][1]} |")
    if rep["difference_in_differences"]:
        lines += ["", "## Difference in differences: main − mean(controls), against the baseline's", "",
                  "| model | Δ of contrasts [95%] | p |", "|---|---|---|"]
        for lab, c in rep["difference_in_differences"].items():
            lines.append(f"| {lab} | {c['diff']:+.3f} [{c['lo']:+.3f}, {c['hi']:+.3f}] | {c['p']:.3g} |")
    lines += ["", "## Route tasks: edge validity and balance between routes (mean over seeds)", "",
              "| task | " + " | ".join(labels) + " |", "|" + "---|" * (1 + len(labels))]
    for task, row in rep["tasks"].items():
        if not task.startswith("route"):
            continue
        cells = []
        for lab in labels:
            m = row["models"].get(lab)
            if m is None:
                cells.append("—")
                continue
            share = [v for v in m.get("route_a_share_by_seed", []) if v == v]
            cells.append(f"edges {_mean(m['edge_validity_by_seed']):.3f}, first route {_fmt(_mean(share), 2)}")
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    lines += ["", "## Free models under prior Z at every position (pass@1, mean over seeds)", "",
              "| task | " + " | ".join(lab for lab in labels if lab.startswith("free")) + " |",
              "|" + "---|" * (1 + sum(lab.startswith("free") for lab in labels))]
    for task, row in rep["tasks"].items():
        lines.append(f"| {task} | " + " | ".join(_fmt(row["prior_z"].get(lab, {}).get("pass@1"))
                                                 for lab in labels if lab.startswith("free")) + " |")
    lines += ["", "## Shared-Z route agreement (main route task; mean over seeds)", "",
              "Agreement is measured on problems where a group holds two valid samples; '—' where no "
              "seed had one.", "",
              "| model | shared | independent | chance | valid samples (shared Z) | problems with a valid pair "
              "(shared Z), summed over seeds |", "|---|---|---|---|---|---|"]
    for lab, per in rep["agreement"].items():
        per = [a for a in per if "valid_shared" in a]  # a baseline without Z or prefix shares nothing

        def avg(key: str) -> float | None:
            vals = [a[key] for a in per if a.get(key) is not None]
            return _mean(vals) if vals else None
        if per:
            lines.append(f"| {lab} | {_fmt(avg('shared'))} | {_fmt(avg('independent'))} | {_fmt(avg('chance'))} | "
                         f"{_fmt(avg('valid_shared'))} | {sum(a['problems_with_pairs']['shared'] for a in per)} |")
    lines += ["", f"Command: `{rep['command']}`", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------- CLI

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ftstudy decide", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], metavar="SEED")
    p.add_argument("--stage", nargs="+", default=["data", "train", "eval", "report"], choices=STAGES,
                   help="stages to run (default: data train eval report; calibrate runs only when named)")
    p.add_argument("--data", type=Path, default=DATA, help="the decide corpus (made if missing; the seeded one beside)")
    p.add_argument("--device", default="cpu", choices=DEVICES,
                   help="where models train and are evaluated: cpu, or cuda (one GPU, shared by --jobs runs; "
                        "default folder results/gpu/<gpu name>/benchmarks/decide/, never pooled with the CPU's)")
    p.add_argument("--set", dest="overrides", nargs="*", action="extend", default=[], metavar="KEY=VALUE",
                   help="override a config field of every comparison model, as ablate --set (e.g. compile=true "
                        "on a GPU); recorded in the runs' names and configs")
    p.add_argument("--dry-run", action="store_true",
                   help="print the models to train with their estimated time (ablate --dry-run) and the "
                        "evaluations to run; train and evaluate nothing")
    add_common_args(p, DEFAULT_OUT)
    return p


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The train stage's overrides: ``--set`` with ``--device`` applied (EvalError when they disagree)."""
    from ftstudy.core.config import ConfigError, parse_set_args
    from ftstudy.run.train import device_overrides
    try:
        return device_overrides(None if args.device == "cpu" else args.device, parse_set_args(args.overrides))
    except ConfigError as e:
        raise EvalError(str(e)) from None


def default_out(device: str) -> Path:
    """Where a comparison goes: ``results/benchmarks/decide/`` on the CPU, under
    ``results/gpu/<gpu name>/benchmarks/decide/`` on a GPU (its runs are not the CPU's)."""
    if device == "cpu":
        return DEFAULT_OUT
    from ftstudy.run.lit import machine_name
    return REPO_ROOT / "results" / "gpu" / machine_name(device) / DEFAULT_OUT.relative_to(REPO_ROOT / "results")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    try:
        check_common_args(args)
        overrides = _overrides(args)
        if args.out == DEFAULT_OUT and args.device != "cpu":
            args.out = default_out(args.device)
        train_argv = ["--study", STUDY, "--preset", PRESET, "--seeds", *map(str, args.seeds), "--out",
                      str(args.out / "runs"), "--jobs", str(args.jobs), "--device", args.device,
                      *(["--set", *args.overrides] if args.overrides else [])]
        if args.dry_run:
            from ftstudy.study import ablate
            from ftstudy.tasks.decide import REPEATS
            rc = ablate.main([*train_argv, "--dry-run"])
            planned = _planned(args.seeds, args.out, overrides)
            print(f"[ftstudy.eval.decide] then {len(_eval_todo(planned, args.out, args.device))} evaluations "
                  f"({len(_tasks())} tasks, {REPEATS} samples per document) on {args.device}, {args.jobs} at a time, into {args.out}")
            return rc
        if "data" in args.stage:
            rc = _data_stage(args.data)
            if rc:
                return rc
        if "calibrate" in args.stage:
            _calibrate_stage(args.out, args.jobs)
            print((args.out / "calibration" / "CURVES.md").read_text())
        planned = _planned(args.seeds, args.out, overrides)
        if "train" in args.stage:
            from ftstudy.study import ablate
            rc = ablate.main(train_argv)
            if rc:
                return rc
        if "eval" in args.stage:
            _eval_stage(planned, args.out, args.jobs, args.retrain_tolerance, args.device)
        if "report" in args.stage:
            pooled_report(args.out, args.seeds, overrides, "ftstudy decide " + shlex.join(argv))
            atomic_write_text(args.out / "command.txt", "ftstudy decide " + shlex.join(argv) + "\n")
            print((args.out / "report.md").read_text())
    except EvalError as e:  # the command-line epilogue every ftstudy command shares: one error line, exit 2
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
