"""Compare a baseline and Free models on benchmarks (lm-eval, in-process) and on perplexity.

    python -m ftstudy.evaluate --checkpoints BASE FREE1 FREE2 ... \\
        --tasks ftstudy_arithmetic ftstudy_gsm ftstudy_humaneval ftstudy_humaneval_bpb \\
        --out results/benchmarks/NAME

A checkpoint is a ``model.pt`` or a run folder (its ``ckpt/model.pt``); the first one is the
reference ("baseline") that the others are compared with.  Per checkpoint, the command
keeps lm-eval's JSON (``lm_eval/<label>.json``, with its per-document samples beside it),
and measures honest perplexity on the validation shard of the checkpoint's own data (or
``--val-data``):

- ``nll_prior``: cross-entropy with uniform Z everywhere (the encoder never runs): a
  single-draw estimate of E_z[−log p(x|z)], itself an upper bound on −log p(x);
- ``elbo``: CE with Z from the encoder on the whole window plus the KL to the uniform
  prior, per token: an upper bound on −log p(x) (the evidence lower bound, negated);
- ``iwae_K``: the importance-weighted bound with K posterior samples (Burda et al. 2016),
  −log (1/K) Σ_k p(x|z_k) p(z_k) / q(z_k|x), per token; tighter than the ELBO as K grows.

For a baseline all three are its NLL.  The report (``report.md`` and ``report.json``) is a
table in the paper's layout: rows grouped as generative code, generative math, likelihood
and synthetic; a column per checkpoint; each Free column with its relative change to the
reference, a paired-bootstrap 95% interval of the difference (same documents resampled for
both models, ``scipy.stats.bootstrap``) and a two-sided paired permutation p-value
(``scipy.stats.permutation_test``, sign flips of per-document differences).

Everything per checkpoint is written atomically and reused on a rerun with the same
settings, so an interrupted comparison resumes where it stopped.

Tasks that execute model-generated code (``ftstudy_humaneval``, lm-eval's humaneval, mbpp…) run
only with ``--confirm-run-unsafe-code``; ours run it in the bubblewrap sandbox of
:mod:`ftstudy.eval.suite.execution`. Where no sandbox can be made the command refuses before any
model is loaded, unless ``--allow-unsandboxed`` is also given (resource limits only).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ftstudy.core.checkpoint import CheckpointError, atomic_write_text, load_model
from ftstudy.core.config import ConfigError, check_seed
from ftstudy.io import RunDir, atomic_write_gzip, read_gzip
from ftstudy.eval.harness import Z_POLICIES, FTStudyLM, HarnessError
from ftstudy.results.report import benchmark_cell, bound_name, metric_label, perplexity_cell

__all__ = ["resolve_checkpoint", "perplexity", "text_perplexity", "paired_stats", "entry_paths", "read_samples",
           "write_samples", "label_slug", "build_report", "main"]

LN2 = math.log(2.0)
# Row groups of the report, in the paper's order (Table 2: generative code/math first).
GROUPS = (
    ("Generative code", ("ftstudy_humaneval", "ftstudy_bench_code", "humaneval", "mbpp", "humaneval_plus",
                         "mbpp_plus")),
    ("Generative math", ("ftstudy_gsm", "ftstudy_arithmetic", "ftstudy_bench_arith", "ftstudy_bench_gsm", "gsm8k",
                         "gsm8k_cot")),
    ("Decision (many valid outputs)", ("ftstudy_bench_path",)),
    ("Likelihood (lower is better)", ("ftstudy_humaneval_bpb",)),
    ("Synthetic task", ("ftstudy_synthetic",)),
)


class EvalError(ValueError):
    """Bad evaluation input: a checkpoint, a task name or an option."""


def resolve_checkpoint(path: str | Path) -> Path:
    p = Path(path)
    if p.is_dir():
        p = RunDir(p).model_file
    if not p.is_file():
        raise EvalError(f"checkpoint {path} does not exist (give a model.pt or a run folder with ckpt/model.pt)")
    return p


def _label(cfg: Any, used: set[str]) -> str:
    m = cfg.model
    base = "baseline" if not m.is_free else f"free k={m.kappa_bits:g}"
    label, i = base, 2
    while label in used:
        label, i = f"{base} #{i}", i + 1
    used.add(label)
    return label


# ---------------------------------------------------------------- perplexity

@torch.no_grad()
def _bounds(model: Any, batches: Any, k: int, g: torch.Generator, tok: Any = None) -> dict[str, float]:
    """Sums over ``batches`` (dicts with ``idx`` and ``targets``) of the honest figures: NLL under
    prior Z, the ELBO's CE (Z from the encoder on the window) and KL, and the IWAE bound with
    ``k`` posterior draws; with ``tok``, the UTF-8 bytes of the targets as well."""
    sums = {"nll_prior": 0.0, "ce_post": 0.0, "kl": 0.0, "iwae": 0.0, "tokens": 0, "bytes": 0}
    for batch in batches:
        idx, tgt = batch["idx"], batch["targets"]
        n = tgt.numel()
        sums["tokens"] += n
        if tok is not None:
            sums["bytes"] += sum(len(tok.decode(row.tolist()).encode("utf-8")) for row in tgt)
        if not model.cfg.is_free:
            out = model(idx, tgt)
            for key in ("nll_prior", "ce_post", "iwae"):
                sums[key] += float(out.ce_sum)
            continue
        sums["nll_prior"] += float(model(idx, tgt, z="prior", generator=g).ce_sum)
        # q(z|x) sees the window: a proposal for the bound, not a prediction.  K draws of Z from
        # it, each with its log q; the encoder runs once.
        logw = []
        for j, out in enumerate(model.draws(idx, z="posterior-leaky", generators=[g] * k)):
            assert out.log_q is not None and out.kl is not None and out.bits is not None
            logits = out.logits.float()
            ll = -torch.nn.functional.cross_entropy(logits.flatten(0, 1), tgt.flatten(), reduction="none")
            ll = ll.view(tgt.shape).sum(1)  # (B,) log p(x | z) per window
            log_p_z = -LN2 * out.bits.shape[1] * out.bits.shape[2]  # uniform prior over 2^H codes per token
            logw.append(ll + log_p_z - out.log_q.sum((1, 2)))  # log q(z|x) per window
            if j == 0:
                sums["ce_post"] += float(-ll.sum())
                sums["kl"] += float(out.kl.sum())
        lw = torch.stack(logw)  # (K, B)
        sums["iwae"] += float(-(torch.logsumexp(lw, 0) - math.log(k)).sum())
    return sums


def _per_token(sums: dict[str, float], k: int, is_free: bool) -> dict[str, Any]:
    n = sums["tokens"]
    res: dict[str, Any] = {"tokens": n, "k": k if is_free else None, "nll_prior": sums["nll_prior"] / n,
                           "elbo": (sums["ce_post"] + sums["kl"]) / n, f"iwae_{k}": sums["iwae"] / n,
                           "kl_per_token": sums["kl"] / n}
    if is_free:
        res["ce_posterior_LEAKY"] = sums["ce_post"] / n  # diagnostic only: Z has seen the targets
    if sums["bytes"]:
        for key in ("nll_prior", "elbo", f"iwae_{k}"):
            res[f"{key}_bits_per_byte"] = res[key] * n / sums["bytes"] / LN2
    return res


@torch.no_grad()
def perplexity(ckpt: Path, data_dir: str | Path | None, n_windows: int, k: int, seed: int = 0,
               batch_size: int = 16) -> dict[str, Any]:
    """Honest per-token figures on the first n_windows windows of a validation split."""
    from ftstudy.tasks.corpus import TokenDataModule, tokenizer_from_spec
    model, cfg, raw = load_model(ckpt)
    model.eval()
    folder = data_dir or cfg.task.data_dir
    if folder is None:
        raise EvalError(f"{ckpt}: no validation data (a synthetic-task model); pass --val-data or --no-perplexity")
    dm = TokenDataModule(folder, batch_size=batch_size, seq_len=cfg.model.max_seq_len, val_size=n_windows,
                         seed=0, vocab_size=cfg.model.vocab_size, val_layout="spread")
    g = torch.Generator().manual_seed(seed)
    tok = tokenizer_from_spec(raw["tokenizer"]) if "tokenizer" in raw else None
    sums = _bounds(model, dm.val_dataloader(), k, g, tok)
    return {"windows": dm.val_size, "layout": "evenly spaced over the validation split",
            "window": cfg.model.max_seq_len, "data": str(folder), **_per_token(sums, k, model.cfg.is_free)}


@torch.no_grad()
def text_perplexity(ckpt: Path, texts: list[str], k: int, seed: int = 0, batch_size: int = 16) -> dict[str, Any]:
    """The same honest figures on ``texts`` (e.g. a task's held-out problems with their reference
    answers): the documents joined by the end-of-text token, as in the training shards, and cut
    into consecutive windows of the model's length (the last, partial one dropped)."""
    from ftstudy.tasks.corpus import tokenizer_from_spec
    model, cfg, raw = load_model(ckpt)
    model.eval()
    if "tokenizer" not in raw:
        raise EvalError(f"{ckpt}: no tokenizer in the checkpoint (a synthetic-task model): no text likelihood")
    tok = tokenizer_from_spec(raw["tokenizer"])
    ids: list[int] = []
    for t in texts:
        ids += tok.encode(t) + [tok.eot_id]
    w = cfg.model.max_seq_len + 1
    n_win = len(ids) // w
    if n_win < 1:
        raise EvalError(f"{len(ids)} tokens of text are fewer than one window of {w}")
    windows = torch.tensor(ids[:n_win * w], dtype=torch.long).view(n_win, w)
    batches = [{"idx": windows[i:i + batch_size, :-1], "targets": windows[i:i + batch_size, 1:]}
               for i in range(0, n_win, batch_size)]
    sums = _bounds(model, batches, k, torch.Generator().manual_seed(seed), tok)
    return {"windows": n_win, "window": cfg.model.max_seq_len, "documents": len(texts),
            **_per_token(sums, k, model.cfg.is_free)}


# ---------------------------------------------------------------- statistics

def _metric_values(samples: list[dict[str, Any]], metric: str, filt: str) -> dict[Any, Any]:
    return {s["doc_id"]: s[metric] for s in samples if s.get("filter") == filt and metric in s}


def paired_stats(a: dict[Any, Any], b: dict[Any, Any], ratio: bool = False, n_resamples: int = 2000,
                 seed: int = 0) -> dict[str, Any]:
    """Difference b − a of a per-document metric: paired bootstrap 95% CI and a paired p-value.

    ``ratio``: values are (loglikelihood, bytes) pairs aggregated as bits per byte."""
    from scipy import stats
    keys = sorted(set(a) & set(b), key=str)
    if len(keys) < 2:
        return {"n": len(keys), "diff": None, "ci95": None, "p": None}
    rng = np.random.default_rng(seed)
    if ratio:
        la = np.array([a[k][0] for k in keys], float)
        lb = np.array([b[k][0] for k in keys], float)
        nb = np.array([a[k][1] for k in keys], float)

        def stat(x: np.ndarray, y: np.ndarray, w: np.ndarray, axis: int = -1) -> np.ndarray:
            return (-y.sum(axis) + x.sum(axis)) / w.sum(axis) / LN2

        diff = float(stat(la, lb, nb))
        ci = stats.bootstrap((la, lb, nb), stat, paired=True, vectorized=True, n_resamples=n_resamples,
                             confidence_level=0.95, method="percentile", random_state=rng)
        # Per-document bit differences, weighted by bytes, for the sign-flip test.
        d = (la - lb) / LN2
        p = stats.permutation_test((d,), lambda x, axis=-1: x.sum(axis), permutation_type="samples",
                                   n_resamples=n_resamples, vectorized=True, random_state=rng).pvalue
    else:
        xa = np.array([float(a[k]) for k in keys])
        xb = np.array([float(b[k]) for k in keys])
        d = xb - xa
        diff = float(d.mean())
        if np.all(d == d[0]):
            return {"n": len(keys), "diff": diff, "ci95": [diff, diff], "p": 1.0 if diff == 0 else 0.0}
        ci = stats.bootstrap((xa, xb), lambda x, y, axis=-1: (y - x).mean(axis), paired=True, vectorized=True,
                             n_resamples=n_resamples, confidence_level=0.95, method="percentile", random_state=rng)
        p = stats.permutation_test((d,), lambda x, axis=-1: x.mean(axis), permutation_type="samples",
                                   n_resamples=n_resamples, vectorized=True, random_state=rng).pvalue
    lo, hi = ci.confidence_interval
    return {"n": len(keys), "diff": diff, "ci95": [float(lo), float(hi)], "p": float(p)}


# ---------------------------------------------------------------- report

def _rows(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(group, task, metric, filter) for every scalar metric lm-eval reported, grouped."""
    rows = []
    for task, metrics in results.items():
        for key, value in metrics.items():
            if "," not in key or key.endswith("_stderr") or "_stderr," in key or not isinstance(value, (int, float)):
                continue
            metric, filt = key.split(",", 1)
            rows.append((task, metric, filt))
    listed = {n for _, names in GROUPS for n in names}

    def in_group(task: str, names: tuple[str, ...]) -> bool:
        # A group's subtasks (ftstudy_arithmetic_2da) go with it unless listed themselves.
        return task in names or (task not in listed and any(task.startswith(n + "_") for n in names))

    out = []
    for group, names in GROUPS:
        for task, metric, filt in sorted(rows):
            if in_group(task, names):
                out.append((group, task, metric, filt))
    known = {(t, m, f) for _, t, m, f in out}
    for task, metric, filt in sorted(rows):
        if (task, metric, filt) not in known:
            out.append(("Other", task, metric, filt))
    return out


def _subtasks(samples: dict[str, list[dict[str, Any]]], task: str) -> list[str]:
    """A task's own samples, or its subtasks' for a group (lm-eval logs samples per subtask)."""
    if task in samples:
        return [task]
    return sorted(t for t in samples if t.startswith(task + "_"))


def build_report(entries: list[dict[str, Any]], out: Path, n_resamples: int = 2000) -> dict[str, Any]:
    """report.json and report.md from per-checkpoint entries (lm-eval results + samples + ppl)."""
    ref = entries[0]
    table = []
    for group, task, metric, filt in _rows(ref["results"]):
        row = {"group": group, "task": task, "metric": metric, "filter": filt, "cells": []}
        subs = _subtasks(ref["samples"], task)
        ratio = metric == "bits_per_byte"
        for e in entries:
            value = e["results"].get(task, {}).get(f"{metric},{filt}")
            cell: dict[str, Any] = {"label": e["label"], "value": value}
            if e is not ref and value is not None and ref["results"][task].get(f"{metric},{filt}") is not None:
                r = ref["results"][task][f"{metric},{filt}"]
                cell["rel_change"] = (value - r) / abs(r) if r else None
                a, b = {}, {}
                for s in subs:
                    a.update({(s, k): v for k, v in _metric_values(ref["samples"].get(s, []), metric, filt).items()})
                    b.update({(s, k): v for k, v in _metric_values(e["samples"].get(s, []), metric, filt).items()})
                cell.update(paired_stats(a, b, ratio=ratio, n_resamples=n_resamples))
            row["cells"].append(cell)
        table.append(row)
    ppl_rows = []
    for key in ("nll_prior", "elbo", "iwae"):
        cells = []
        for e in entries:
            p = e.get("perplexity") or {}
            name = next((k for k in p if k == key or (key == "iwae" and k.startswith("iwae_")
                                                       and not k.endswith("_per_byte"))), None)
            cells.append({"label": e["label"], "value": p.get(name) if name else None,
                          "bits_per_byte": p.get(f"{name}_bits_per_byte") if name else None, "name": name})
        ppl_rows.append({"metric": key, "cells": cells})
    cmd = out / "command.txt"
    report = {"checkpoints": [{k: e[k] for k in ("label", "checkpoint", "settings")} for e in entries],
              "table": table, "perplexity": ppl_rows,
              "command": cmd.read_text().strip() if cmd.exists() else None}
    atomic_write_text(out / "report.json", json.dumps(report, indent=2, allow_nan=False, default=_json_default))
    atomic_write_text(out / "report.md", _markdown(report))
    return report


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    raise TypeError(type(o).__name__)


def _markdown(report: dict[str, Any]) -> str:
    labels = [c["label"] for c in report["checkpoints"]]
    lines = ["# Benchmark comparison", "",
             f"Reference: **{labels[0]}**. Each other column: value, relative change to the reference, "
             "paired-bootstrap 95% interval of the difference, and the paired permutation p-value.", ""]
    head = "| group | task | metric | " + " | ".join(labels) + " |"
    lines += [head, "|" + "---|" * (3 + len(labels))]
    for row in report["table"]:
        cells = [benchmark_cell(c) for c in row["cells"]]
        lines.append(f"| {row['group']} | {row['task']} | {metric_label(row)} | " + " | ".join(cells) + " |")
    if any(c["value"] is not None for row in report["perplexity"] for c in row["cells"]):
        lines += ["", "## Perplexity on the validation shard (per token, nats; bits per byte in brackets)", "",
                  "| bound | " + " | ".join(labels) + " |", "|" + "---|" * (1 + len(labels))]
        for row in report["perplexity"]:
            cells = [perplexity_cell(c) for c in row["cells"]]
            lines.append(f"| {bound_name(row)} | " + " | ".join(cells) + " |")
    settings = {json.dumps(c["settings"], sort_keys=True) for c in report["checkpoints"]}
    if len(settings) == 1:
        lines += ["", f"Settings (every checkpoint): `{settings.pop()}`"]
    else:
        lines += ["", "Settings: " + "; ".join(f"{c['label']}: `{json.dumps(c['settings'], sort_keys=True)}`"
                                               for c in report["checkpoints"])]
    lines += ["", "Checkpoints: " + "; ".join(f"{c['label']}: `{c['checkpoint']}`" for c in report["checkpoints"])]
    if report.get("command"):
        lines += ["", f"Command: `{report['command']}`"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- running

def _task_manager(tasks: list[str], include: list[Path] | None = None) -> Any:
    """Our tasks (plus a user's task folders) in one TaskManager; lm-eval's built-in index is
    loaded only when a name is not found there."""
    from lm_eval.tasks import TaskManager

    from ftstudy.eval import suite as ft_tasks
    for folder in include or []:
        try:
            ft_tasks.check_data_files(folder)  # names the task and the missing path
        except (FileNotFoundError, ValueError) as e:
            raise EvalError(str(e)) from e
    paths = [str(ft_tasks.materialize()), *(str(p) for p in include or [])]
    tm = TaskManager(include_path=paths, include_defaults=False)
    if any(t not in tm.all_tasks and not t.startswith("ftstudy_") for t in tasks):
        # gsm8k, humaneval, mmlu, ...: lm-eval's own tasks (most need network for their data).
        tm = TaskManager(include_path=paths, include_defaults=True)
    try:
        ft_tasks.check_task_names(tasks, tm)
    except ValueError as e:
        raise EvalError(str(e)) from e
    return tm


def label_slug(label: str) -> str:
    """A column label as a file name: a short hash (labels may differ only in punctuation) and
    the label's letters and digits."""
    return hashlib.sha256(label.encode()).hexdigest()[:6] + "-" + "".join(c if c.isalnum() else "_" for c in label)


def entry_paths(out: Path, label: str) -> tuple[Path, Path]:
    """Where :func:`evaluate_one` keeps a checkpoint's lm-eval entry and its per-document
    samples (gzip-compressed JSON: :func:`write_samples`)."""
    slug = label_slug(label)
    return out / "lm_eval" / f"{slug}.json", out / "lm_eval" / f"{slug}.samples.json.gz"


def write_samples(path: Path, samples: dict[str, list[dict[str, Any]]]) -> None:
    """The per-document samples file (``{task: [row, ...]}``): JSON, gzip-compressed
    deterministically, written atomically; the one writer of ``*.samples.json.gz``."""
    atomic_write_gzip(Path(path), json.dumps(samples, default=_json_default))


def read_samples(path: Path) -> dict[str, list[dict[str, Any]]]:
    """A samples file: ``*.samples.json.gz`` (:func:`write_samples`) or a plain
    ``*.samples.json`` (as older results and hand-made files hold)."""
    path = Path(path)
    return json.loads(read_gzip(path) if path.name.endswith(".gz") else path.read_text())


def evaluate_one(ckpt: Path, label: str, tasks: list[str], out: Path, settings: dict[str, Any],
                 task_manager: Any, ppl: dict[str, Any] | None, *,
                 confirm_run_unsafe_code: bool = False) -> dict[str, Any]:
    """lm-eval + perplexity for one checkpoint, reused when already done with the same settings."""
    import lm_eval

    path, samples_path = entry_paths(out, label)
    sha = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    from ftstudy.eval import suite as ft_tasks
    key = {"settings": settings, "tasks": tasks, "checkpoint_sha256": sha, "perplexity": ppl,
           "task_suite": ft_tasks.content_hash()}
    if path.exists() and samples_path.exists():
        saved = json.loads(path.read_text())
        if saved.get("key") == key:
            print(f"[ftstudy.eval.evaluate] {label}: reusing {path}")
            return {**saved["entry"], "samples": read_samples(samples_path)}
    t0 = time.perf_counter()
    lm = FTStudyLM(ckpt, z_policy=settings["z_policy"], z_samples=settings["z_samples"], seed=settings["seed"],
                   batch_size=settings["batch_size"], device=settings["device"],
                   seed_prefix=bool(settings.get("seed_prefix", False)))
    try:
        res = lm_eval.simple_evaluate(model=lm, tasks=tasks, task_manager=task_manager, limit=settings["limit"],
                                      log_samples=True, bootstrap_iters=0, random_seed=settings["seed"],
                                      numpy_random_seed=settings["seed"], torch_random_seed=settings["seed"],
                                      fewshot_random_seed=settings["seed"], gen_kwargs=settings.get("gen_kwargs"),
                                      confirm_run_unsafe_code=confirm_run_unsafe_code)
    except ValueError as e:
        if "unsafe" not in str(e) or confirm_run_unsafe_code:
            raise
        name = re.search(r"task: (\S+)", str(e))
        raise EvalError(f"task {name.group(1) if name else '?'} executes model-generated code; pass "
                        f"--confirm-run-unsafe-code to allow it (it runs in a bubblewrap sandbox, see the "
                        f"README's benchmark section)") from e
    eval_s = time.perf_counter() - t0
    samples = {t: [{k: v for k, v in s.items() if k in ("doc_id", "filter") or k in s.get("metrics", [])}
                   | {"response": _first_response(s)} for s in ss] for t, ss in res.get("samples", {}).items()}
    perp = None
    if ppl is not None:
        perp = perplexity(ckpt, ppl["data"], ppl["windows"], ppl["k"], seed=settings["seed"])
    entry = {"label": label, "checkpoint": str(ckpt), "checkpoint_sha256": sha, "settings": settings,
             "results": res["results"], "groups": res.get("groups", {}), "configs": res.get("configs", {}),
             "n_samples": res.get("n-samples", {}), "versions": res.get("versions", {}),
             "eval_time_s": round(eval_s, 1), "perplexity": perp}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_samples(samples_path, samples)
    atomic_write_text(path, json.dumps({"key": key, "entry": entry}, indent=2, default=str))
    return {**entry, "samples": samples}


def _check_sandbox(allow_unsandboxed: bool) -> None:
    """Refuse before any model is loaded when generated code could not be isolated, unless
    running it without isolation was asked for (which later calls of run_program then see):
    by ``--allow-unsandboxed`` or by ``FTSTUDY_ALLOW_UNSANDBOXED=1``, the two opt-outs the
    refusal names."""
    from ftstudy.eval.suite import execution

    try:
        if execution.require_sandbox(allow_unsandboxed or execution.allow_unsandboxed_from_env()):
            return
    except execution.SandboxUnavailable as e:
        raise EvalError(str(e)) from e
    print(f"[ftstudy.eval.evaluate] WARNING: running generated code WITHOUT a sandbox "
          f"({execution.sandbox_problem()})", file=sys.stderr)
    os.environ[execution.ALLOW_UNSANDBOXED_ENV] = "1"


def _first_response(s: dict[str, Any]) -> Any:
    fr = s.get("filtered_resps")
    if isinstance(fr, list) and fr:
        v = fr[0]
        if isinstance(v, (list, tuple)) and v and isinstance(v[0], str):
            v = v[0]
        if isinstance(v, str):
            return v[:400]
    return None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ftstudy.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoints", nargs="+", required=True, help="model.pt files or run folders; first = reference")
    p.add_argument("--tasks", nargs="+", required=True, help="ftstudy_* task names or lm-eval built-in names")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--labels", nargs="+", default=None, help="column names (default: from each config)")
    p.add_argument("--include-path", nargs="+", type=Path, default=[],
                   help="extra lm-eval task folders (YAML), checked for missing data files first")
    p.add_argument("--gen-kwargs", default=None, metavar="K=V,...",
                   help="sampling of generation tasks, over each task's own (lm-eval's --gen_kwargs), e.g. "
                        "'do_sample=true,temperature=0.5,top_p=0.9'; recorded in the report with each task's "
                        "resulting generation_kwargs (its configs)")
    p.add_argument("--z-policy", default="posterior-context", choices=Z_POLICIES)
    p.add_argument("--z-samples", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="cpu")
    p.add_argument("--limit", type=float, default=None, help="lm-eval's limit (documents per task, or a fraction)")
    p.add_argument("--ppl-windows", type=int, default=256, help="validation windows for perplexity")
    p.add_argument("--ppl-k", type=int, default=16, help="importance samples for the IWAE bound")
    p.add_argument("--val-data", default=None, help="shard folder for perplexity (default: each model's own)")
    p.add_argument("--no-perplexity", action="store_true")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap and permutation resamples")
    p.add_argument("--confirm-run-unsafe-code", action="store_true",
                   help="allow tasks that execute model-generated code (run in a bubblewrap sandbox)")
    p.add_argument("--allow-unsandboxed", action="store_true",
                   help="where no sandbox can be made, run generated code anyway with resource limits only")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    try:
        try:
            check_seed(args.seed, "--seed")  # before any model is loaded or file written
        except ConfigError as e:
            raise EvalError(str(e)) from None
        if args.z_samples < 1 or args.batch_size < 1 or args.ppl_k < 1 or args.ppl_windows < 1:
            raise EvalError("--z-samples, --batch-size, --ppl-k and --ppl-windows must be >= 1")
        if args.allow_unsandboxed and not args.confirm_run_unsafe_code:
            raise EvalError("--allow-unsandboxed needs --confirm-run-unsafe-code")
        if args.confirm_run_unsafe_code:
            _check_sandbox(args.allow_unsandboxed)
        ckpts = [resolve_checkpoint(c) for c in args.checkpoints]
        if args.labels is not None and len(args.labels) != len(ckpts):
            raise EvalError(f"--labels has {len(args.labels)} names for {len(ckpts)} checkpoints")
        used: set[str] = set()
        labels = []
        for i, c in enumerate(ckpts):
            _, cfg, _ = load_model(c)
            labels.append(args.labels[i] if args.labels else _label(cfg, used))
        tm = _task_manager(args.tasks, args.include_path)
        settings = {"z_policy": args.z_policy, "z_samples": args.z_samples, "seed": args.seed,
                    "batch_size": args.batch_size, "device": args.device, "limit": args.limit,
                    # Recorded only when given, so earlier reports' settings (and their reuse) stay as they were.
                    **({"gen_kwargs": args.gen_kwargs} if args.gen_kwargs else {})}
        ppl = None if args.no_perplexity else {"data": args.val_data, "windows": args.ppl_windows, "k": args.ppl_k,
                                               "layout": "spread"}
        args.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out / "command.txt", "python -m ftstudy.evaluate " + shlex.join(argv) + "\n")
        entries = []
        for c, label in zip(ckpts, labels):
            print(f"[ftstudy.eval.evaluate] {label}: {c}")
            entries.append(evaluate_one(c, label, args.tasks, args.out, settings, tm, ppl,
                                        confirm_run_unsafe_code=args.confirm_run_unsafe_code))
        build_report(entries, args.out, n_resamples=args.bootstrap)
    except (EvalError, HarnessError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print((args.out / "report.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
