"""The paper's claims against our measurements, as tables built from committed results.

    python -m ftstudy.claims            # print every generated block (markdown, with its markers)
    python -m ftstudy.claims --check    # exit 1 if a page's block differs from the results

Three blocks are generated, each between its markers, on the pages of :data:`PAGES`:

- the answer, ``<!-- answer:begin -->`` … ``<!-- answer:end -->`` (the README): one short row
  per claim, with its verdict, the seeds that show it and a link to the result file;
- the claims table, ``<!-- claims:begin -->`` … ``<!-- claims:end -->`` (``docs/results.md``):
  the same claims with every number, the result file and the command that makes it;
- the performance targets of ``results/perf/*.json`` and ``results/gpu/*/perf.json``,
  ``<!-- perf:begin -->`` … ``<!-- perf:end -->`` (``docs/performance.md``).

``--check`` reads every block wherever it is on the pages it is given (by default
:data:`PAGES`), and fails if one differs from the results, if a page holds none, or if a block
is on no page; the test suite runs it, so a number in the documentation cannot drift from the
result file it cites.  Every cell is read from a file under ``results/``: nothing here is
typed in.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftstudy.io import REPO_ROOT, StudyDir, atomic_write_text
from ftstudy.results.report import COMPILE_TARGETS, as_number, kappa_label, targets_table

BEGIN, END = "<!-- claims:begin -->", "<!-- claims:end -->"
PERF_BEGIN, PERF_END = "<!-- perf:begin -->", "<!-- perf:end -->"
ANSWER_BEGIN, ANSWER_END = "<!-- answer:begin -->", "<!-- answer:end -->"
DECIDE_BEGIN, DECIDE_END = "<!-- decide:begin -->", "<!-- decide:end -->"
#: The pages that hold the generated blocks, relative to the repository: ``--check``'s default.
PAGES = ("README.md", "docs/results.md", "docs/performance.md", "results/benchmarks/FINDINGS.md")
PERF_DIR = "results/perf"
GPU_DIR = "results/gpu"  # python -m ftstudy.gpucheck

# The result files the claims cite, relative to the repository.
QUICK = StudyDir("results/ablate/kl_budget").aggregate_csv.as_posix()
BENCH = "results/benchmarks/code-math-small/s0/report.json"
RUNS = StudyDir("results/benchmarks/code-math-small/runs/kl_budget").summary_file.as_posix()
SCALE = "results/perf/scale.json"
QUICK_CMD = "`python -m ftstudy.ablate --study kl_budget --preset quick --seeds 0 1 2 3 4 5 6 7 8 9 --jobs 2`"
BENCH_CMD = "`make benchmark-code-math`"
SUITE = "results/benchmarks/bench/report.json"
SUITE_CMD = "`make benchmark` (`python -m ftstudy.benchmark --seeds 0 1 2 --jobs 2`)"
DECIDE = "results/benchmarks/decide/report.json"
DECIDE_CMD = "`ftstudy decide --seeds 0 1 2 3 4 --jobs 2`"


class ClaimError(RuntimeError):
    """A result file a claim cites is missing or lacks the row it needs."""


def _rows(root: Path, rel: str) -> list[dict[str, str]]:
    path = root / rel
    if not path.exists():
        raise ClaimError(f"{rel} is missing; it is made by the command in its claims row")
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _point(root: Path, rel: str, kappa: float | None) -> dict[str, str]:
    """The aggregate row of the baseline (kappa None) or of the Free model at ``kappa``."""
    for r in _rows(root, rel):
        if kappa is None and r["variant"] == "baseline":
            return r
        if kappa is not None and r["variant"] == "free" and r["kappa_bits"] and float(r["kappa_bits"]) == kappa:
            return r
    raise ClaimError(f"{rel} has no row for {'the baseline' if kappa is None else f'kappa_bits={kappa:g}'}")


def _mi(r: dict[str, str], col: str) -> str:
    """mean [95% interval] of an aggregate column, 3 decimals."""
    m = float(r[col])
    lo, hi = r.get(f"{col}.ci_low", ""), r.get(f"{col}.ci_high", "")
    if lo and hi and math.isfinite(float(lo)):
        return f"{m:.3f} [{float(lo):.3f}, {float(hi):.3f}]"
    return f"{m:.3f}"


def _report(root: Path) -> dict[str, Any]:
    path = root / BENCH
    if not path.exists():
        raise ClaimError(f"{BENCH} is missing; make it with make benchmark")
    return json.loads(path.read_text())


def _bench_row(rep: dict[str, Any], task: str, filt: str = "none") -> list[dict[str, Any]]:
    for row in rep["table"]:
        if row["task"] == task and row["filter"] == filt:
            return row["cells"]
    raise ClaimError(f"{BENCH} has no row for task {task!r} (filter {filt!r})")


def _cells(cells: list[dict[str, Any]], digits: int = 3) -> str:
    base, free = cells[0], cells[1:]
    parts = [f"baseline {base['value']:.{digits}f}"]
    for c in free:
        label = c["label"].replace("free k=", "κ ")
        lo, hi = c["ci95"]
        parts.append(f"{label} {c['value']:.{digits}f} (Δ [{lo:+.{digits}f}, {hi:+.{digits}f}], p {c['p']:.2g})")
    return "; ".join(parts)


QUICK_AGREE = StudyDir("results/ablate/kl_budget").agreement_csv.as_posix()
VERDICTS = "results/ablate/verdicts.csv"
QUICK_MEASURE_CMD = ("`python -m ftstudy.ablate --study kl_budget --preset quick --seeds 0 1 2 3 4 5 6 7 8 9 --measure`, "
                     "then `python -m ftstudy.verdicts`")
LONG_MEASURE_CMD = ("`python -m ftstudy.ablate --study kl_budget --preset long --seeds 0 1 2 3 4 5 6 7 --only "
                    "kappa_bits=1/8 --measure`, then `python -m ftstudy.verdicts`")
GPU_LONG_CMD = ("`python -m ftstudy.ablate --study kl_budget --preset long --device cuda --seeds 0 1 2 --only "
                "kappa_bits=1/8 kappa_bits=1/64 latent_bits=0 --jobs 9 --out results/gpu/nvidia-h200/ablate/long "
                "--measure t1 paper` (on one H200), then `python -m ftstudy.verdicts`")


def _agree_row(root: Path, rel: str, protocol: str, kappa: float | None) -> dict[str, str]:
    for r in _rows(root, rel):
        if r["protocol"] != protocol:
            continue
        if kappa is None and r["variant"] == "baseline":
            return r
        if kappa is not None and r["variant"] != "baseline" and r["kappa_bits"] and float(r["kappa_bits"]) == kappa:
            return r
    raise ClaimError(f"{rel} has no {protocol!r} row for {'the baseline' if kappa is None else f'kappa_bits={kappa:g}'}")


def _verdict_row(root: Path, family: str, protocol: str, claim_start: str) -> dict[str, str] | None:
    for r in _rows(root, VERDICTS):
        if r["family"] == family and r["protocol"] == protocol and r["claim"].startswith(claim_start):
            return r
    return None


def _verdict_cell(r: dict[str, str], what: str = "Δ(±2)") -> str:
    """One verdicts.csv row: Δ with its t-interval over seeds, Holm p, detectable effect and the bootstrap."""
    lo, hi = as_number(r["lo"]), as_number(r["hi"])
    iv = f" [{lo:+.3f}, {hi:+.3f}]" if math.isfinite(lo) else ""
    holm = as_number(r["p_holm"])
    p = f"p {as_number(r['p']):.2g}" + (f", Holm {holm:.2g}" if math.isfinite(holm) else "")
    boot = (f"; bootstrap [{as_number(r['boot_lo']):+.3f}, {as_number(r['boot_hi']):+.3f}]"
            if math.isfinite(as_number(r["boot_lo"])) else "")
    return (f"τ = {as_number(r['temperature']):g}: {what} {as_number(r['delta']):+.3f}{iv} ({p}; detectable "
            f"{as_number(r['mde']):.3f}; {r['k_showing']} of {r['n_seeds']} seeds show it{boot})")


def _verdict_claim(family: str, claim_start: str, secondary: str | None = "secondary",
                   what: str = "Δ(±2)", protocol: str = "paper") -> Callable[[Path], str]:
    """A claim row from verdicts.csv: its verdict under its primary ``protocol``, then the
    numbers (and the same claim under τ = 1 when it has a ``secondary`` row)."""
    def measure(root: Path) -> str:
        r = _verdict_row(root, family, protocol, claim_start)
        if r is None:
            raise ClaimError(f"{VERDICTS} has no {family!r} row for {claim_start!r}; python -m ftstudy.verdicts writes it")
        note = f", {r['note']}" if r["note"] and not r["note"].startswith("90%") else ""
        cells = [f"**{r['verdict']}**{note}. " + _verdict_cell(r, what)]
        if secondary is not None:
            t1 = _verdict_row(root, secondary, "t1", claim_start)
            if t1 is not None:
                cells.append(f"{t1['verdict']} at " + _verdict_cell(t1, what))
        return "; ".join(cells)
    return measure


def _figure(root: Path) -> str:
    parts = []
    for k in (1 / 64, 1 / 8, 1.0, 8.0):
        r = _agree_row(root, QUICK_AGREE, "paper figure", k)
        if not math.isfinite(float(r["within2_shared"] or "nan")):
            parts.append(f"κ {kappa_label(k)}: valid {float(r['valid_rate']):.2f}")
            continue
        parts.append(f"κ {kappa_label(k)}: valid {float(r['valid_rate']):.2f}, ±2 shared {float(r['within2_shared']):.2f} "
                     f"vs indep {float(r['within2_independent']):.2f}, exact {float(r['exact_shared']):.2f} vs "
                     f"{float(r['exact_independent']):.2f}")
    return "; ".join(parts) + " (one independent and two shared groups of 5 per κ: no interval)"


def _kappa_unused(root: Path) -> str:
    r = _point(root, QUICK, 1 / 64)
    return (f"KL {_mi(r, 'posterior.kl_bits_per_token')} bits/token (t over seeds); collapsed to 0 in "
            f"{r['collapsed']} of {r['seeds']} seeds")


def _code(root: Path) -> str:
    return "HumanEval pass@1: " + _cells(_bench_row(_report(root), "ftstudy_humaneval"))


def _arithmetic(root: Path) -> str:
    return "held-out arithmetic, exact match: " + _cells(_bench_row(_report(root), "ftstudy_arithmetic"))


def _gsm(root: Path) -> str:
    return "held-out GSM-style problems, strict match: " + _cells(_bench_row(_report(root), "ftstudy_gsm", "strict-match"))


def _likelihood(root: Path) -> str:
    return "HumanEval bits/byte (lower is better): " + _cells(_bench_row(_report(root), "ftstudy_humaneval_bpb"))


def _leak_figures(root: Path) -> tuple[float, float, float]:
    """Validation CE at κ = 2 with the encoder seeing the scored tokens, honest (prior Z), and
    the baseline's, from the code-math runs' summary table."""
    rows = {r["run"]: r for r in _rows(root, RUNS)}
    try:
        base, k2 = rows["code-math-small-base-s0"], rows["code-math-small-free-k2-s0"]
    except KeyError as e:
        raise ClaimError(f"{RUNS} has no row {e}") from None
    return float(k2["val.ce_posterior_LEAKY"]), float(k2["val.ce_prior"]), float(base["val.ce_prior"])


def _leak(root: Path) -> str:
    leaky, honest, base = _leak_figures(root)
    return (f"validation CE at κ 2: encoder sees the scored tokens {leaky:.3f}, honest "
            f"(prior Z) {honest:.3f}, baseline {base:.3f} nats/byte")


def _overhead(root: Path) -> str:
    path = root / SCALE
    if not path.exists():
        raise ClaimError(f"{SCALE} is missing; make it with python -m ftstudy.perf scale --json {SCALE}")
    parts = []
    for r in json.loads(path.read_text()):
        parts.append(f"{r['preset']}: encoder block {r['overhead_flops_encoder_block']:.1%} of training FLOPs, "
                     f"{r['overhead_flops']:.1%} with the post-sampler's gradient product "
                     f"({r['overhead_params']:.1%} of parameters)")
    return "; ".join(parts)


def _suite_row(root: Path, task: str) -> tuple[dict[str, Any], dict[str, Any]]:
    path = root / SUITE
    if not path.exists():
        raise ClaimError(f"{SUITE} is missing; make it with make benchmark")
    rep = json.loads(path.read_text())
    for row in rep["rows"]:
        if row["task"] == task and "comparisons" in row:
            return rep, row
    raise ClaimError(f"{SUITE} has no evaluated row for task {task!r}")


def _model_cells(labels: list[str], models: dict[str, Any], metric: str, seed_level: dict[str, Any],
                 bootstrap: dict[str, Any], name: Callable[[str], str], digits: int = 3) -> str:
    """Each model's ``metric`` and, against the baseline, the seed-level interval and p (the
    primary test) or, where there is none, the paired bootstrap's."""
    parts = []
    for lab in labels:
        m = models.get(lab)
        if m is None:
            continue
        cell = f"{name(lab)} {m[metric]:.{digits}f}"
        seed, c = seed_level.get(f"{lab} vs baseline"), bootstrap.get(f"{lab} vs baseline")
        if seed is not None:  # the primary, seed-level test
            cell += f" (Δ [{seed['lo']:+.{digits}f}, {seed['hi']:+.{digits}f}], p {seed['p']:.2g})"
        elif c is not None:
            c = c[metric]
            cell += f" (bootstrap Δ [{c['ci_low']:+.{digits}f}, {c['ci_high']:+.{digits}f}], p {c['p']:.2g})"
        parts.append(cell)
    return "; ".join(parts)


def _suite_cells(rep: dict[str, Any], row: dict[str, Any], metric: str, digits: int = 3) -> str:
    seed_level = row.get("seed_level", {}) if metric == "pass@1" else {}
    return _model_cells(rep["labels"], row["models"], metric, seed_level, row["comparisons"],
                        lambda lab: lab.replace("free k=", "κ "), digits)


def _suite_task(task: str, what: str) -> Callable[[Path], str]:
    def measure(root: Path) -> str:
        rep, row = _suite_row(root, task)
        seeds = row["models"]["baseline"]["seeds"]
        return (f"{what}, pass@1 ({seeds} seeds; Welch over seeds): {_suite_cells(rep, row, 'pass@1')}; detectable "
                f"{row['mde']['mde_rel']:+.0%} (seed t) / {row['mde_test']['mde_rel']:+.0%} (bootstrap); "
                f"{row['verdict']}")
    return measure


def _suite_diversity(root: Path) -> str:
    rep, row = _suite_row(root, "ftstudy_bench_path")
    _, code = _suite_row(root, "ftstudy_bench_code")
    return (f"distinct valid paths in 10 samples: {_suite_cells(rep, row, 'distinct_correct', 2)}; distinct correct "
            f"programs: {_suite_cells(rep, code, 'distinct_correct', 2)}")


def _decide_row(root: Path, task: str) -> tuple[dict[str, Any], dict[str, Any]]:
    path = root / DECIDE
    if not path.exists():
        raise ClaimError(f"{DECIDE} is missing; make it with {DECIDE_CMD.strip('`')}")
    rep = json.loads(path.read_text())
    row = rep["tasks"].get(task)
    if row is None or "comparisons" not in row:
        raise ClaimError(f"{DECIDE} has no evaluated row for task {task!r}")
    return rep, row


def _decide_name(label: str) -> str:
    if label.startswith("free k="):
        return f"κ {kappa_label(float(label.removeprefix('free k=')))}"
    return label.split(" ")[0]  # baseline, matched, seeded


def _decide_gate(row: dict[str, Any]) -> str | None:
    """None when the task's gate passed, else the gates a baseline seed fails."""
    gate = row["gate"]
    return None if gate["passed"] else ", ".join(k for k, v in gate.items() if k != "passed" and not v)


def _decide_task(task: str, what: str, score: str) -> Callable[[Path], str]:
    def measure(root: Path) -> str:
        rep, row = _decide_row(root, task)
        cells = _model_cells(rep["labels"], row["models"], "pass@1", row["comparisons"], {}, _decide_name)
        base = row["models"]["baseline"]
        trivial = ", ".join(f"{k} {v:.3f}" for k, v in row["baselines"].items())
        gate_fig = (f"edge validity {min(base['edge_validity_by_seed']):.2f}–{max(base['edge_validity_by_seed']):.2f}"
                    if "edge_validity_by_seed" in base else
                    f"valid {min(base['valid_by_seed']):.2f}–{max(base['valid_by_seed']):.2f}")
        gate = _decide_gate(row)
        return (f"{what}, {score} ({len(base['seeds'])} seeds; Welch over seeds): {cells}; trivial: "
                f"{trivial}; baseline {gate_fig}; gate {'passed' if gate is None else 'failed (' + gate + ')'}")
    return measure


# ---------------------------------------------------------------- the answer: one short row per claim
# Each returns (verdict, seeds): the verdict of the rule that judges the claim, or "not judged"
# with its key figure where no rule does, and k of n (the seeds that show it on their own).

def _verdict_answer(family: str, claim_start: str, secondary: str | None = "secondary",
                    protocol: str = "paper") -> Callable[[Path], tuple[str, str]]:
    def answer(root: Path) -> tuple[str, str]:
        rows = [_verdict_row(root, family, protocol, claim_start)]
        if rows[0] is None:
            raise ClaimError(f"{VERDICTS} has no {family!r} row for {claim_start!r}; python -m ftstudy.verdicts writes it")
        if secondary is not None:
            t1 = _verdict_row(root, secondary, "t1", claim_start)
            if t1 is not None:
                rows.append(t1)
        verdicts, seeds = [], []
        for r in rows:
            note = f", {r['note']}" if r["note"] and not r["note"].startswith("90%") else ""
            tau = f"τ = {as_number(r['temperature']):g}"
            verdicts.append(f"**{r['verdict']}**{note} ({tau})" if r is rows[0] else f"{r['verdict']} ({tau})")
            seeds.append(f"{r['k_showing']} of {r['n_seeds']}" + (f" ({tau})" if len(rows) > 1 else ""))
        return "; ".join(verdicts), "; ".join(seeds)
    return answer


def _kappa_unused_answer(root: Path) -> tuple[str, str]:
    r = _point(root, QUICK, 1 / 64)
    return (f"not judged: KL {float(r['posterior.kl_bits_per_token']):.3f} bits/token",
            f"{r['collapsed']} of {r['seeds']} collapse to 0")


def _figure_answer(root: Path) -> tuple[str, str]:
    parts = []
    for k in (1 / 8, 1.0):
        r = _agree_row(root, QUICK_AGREE, "paper figure", k)
        parts.append(f"κ {kappa_label(k)} {float(r['within2_shared']):.2f} vs {float(r['within2_independent']):.2f}")
    return "not judged: ±2 agreement, shared vs independent Z: " + ", ".join(parts), "– (one figure)"


def _suite_answer(task: str) -> Callable[[Path], tuple[str, str]]:
    def answer(root: Path) -> tuple[str, str]:
        _, row = _suite_row(root, task)
        return row["verdict"], f"n = {row['models']['baseline']['seeds']}"
    return answer


def _suite_diversity_answer(root: Path) -> tuple[str, str]:
    rep, row = _suite_row(root, "ftstudy_bench_path")
    free = [m["distinct_correct"] for lab, m in row["models"].items() if lab.startswith("free")]
    return (f"not judged: distinct valid paths in 10 samples, baseline {row['models']['baseline']['distinct_correct']:.2f},"
            f" Free {min(free):.2f}–{max(free):.2f}", f"n = {row['models']['baseline']['seeds']}")


def _decide_answer(task: str) -> Callable[[Path], tuple[str, str]]:
    def answer(root: Path) -> tuple[str, str]:
        rep, row = _decide_row(root, task)
        comps = [(lab, row["comparisons"][f"{lab} vs baseline"]) for lab in rep["labels"]
                 if f"{lab} vs baseline" in row["comparisons"]]
        gate = _decide_gate(row)
        if gate is not None:
            verdict = f"not gated: a baseline seed fails the gate ({gate})"
        else:
            verdict = "; ".join(f"{_decide_name(lab)} **{c['verdict']}**" for lab, c in comps)
        seeds = "; ".join(f"{_decide_name(lab)} {c['k_of_n'][0]} of {c['k_of_n'][1]}"
                          + (" above" if c["diff"] > 0 else " below" if c["diff"] < 0 else "") for lab, c in comps)
        return verdict, seeds
    return answer


def _bench_seeds(root: Path) -> str:
    return f"n = {sum(c['label'] == 'baseline' for c in _report(root)['checkpoints'])}"


def _bench_answer(task: str, filt: str = "none", digits: int = 3) -> Callable[[Path], tuple[str, str]]:
    def answer(root: Path) -> tuple[str, str]:
        cells = _bench_row(_report(root), task, filt)
        free = [c["value"] for c in cells[1:]]
        p = min(c["p"] for c in cells[1:])
        return (f"not judged: baseline {cells[0]['value']:.{digits}f}, Free {min(free):.{digits}f}–{max(free):.{digits}f}"
                f" (smallest p {p:.2g})", _bench_seeds(root))
    return answer


def _leak_answer(root: Path) -> tuple[str, str]:
    leaky, honest, base = _leak_figures(root)
    return f"not judged: CE at κ 2, leaky {leaky:.3f}, honest {honest:.3f}, baseline {base:.3f}", "n = 1"


def _overhead_answer(root: Path) -> tuple[str, str]:
    path = root / SCALE
    if not path.exists():
        raise ClaimError(f"{SCALE} is missing; make it with python -m ftstudy.perf scale --json {SCALE}")
    parts = [f"{r['overhead_flops_encoder_block']:.1%} ({r['preset']})" for r in json.loads(path.read_text())]
    return "not judged: encoder block " + ", ".join(parts) + " of training FLOPs", "– (computed)"


@dataclass(frozen=True)
class Claim:
    claim: str
    measure: Callable[[Path], str]
    source: str
    command: str
    answer: Callable[[Path], tuple[str, str]]


CLAIMS = (
    Claim("Synthetic task, κ = 1/64 bit: Z carries nothing (Fig. 4, left)", _kappa_unused, QUICK, QUICK_CMD,
          _kappa_unused_answer),
    Claim("The paper's Figure 4 itself, measured by our code", _figure, QUICK_AGREE, QUICK_MEASURE_CMD, _figure_answer),
    Claim("κ = 1/64 bit: shared Z does not move the position",
          _verdict_claim("null", "κ = 1/64 bit", secondary="null"), VERDICTS, QUICK_MEASURE_CMD,
          _verdict_answer("null", "κ = 1/64 bit", secondary="null")),
    Claim("κ = 1/8 bit: shared-Z generations agree on the block position",
          _verdict_claim("primary", "κ = 1/8 bit: generations"), VERDICTS, QUICK_MEASURE_CMD,
          _verdict_answer("primary", "κ = 1/8 bit: generations")),
    Claim("κ = 1/8 bit, same claim, longer training (D 128, 3,000 steps)",
          _verdict_claim("primary", "κ = 1/8 bit, the same with longer"), VERDICTS, LONG_MEASURE_CMD,
          _verdict_answer("primary", "κ = 1/8 bit, the same with longer")),
    Claim("κ = 1/8 bit, the same longer training on one H200 GPU (bf16)",
          _verdict_claim("gpu", "κ = 1/8 bit, longer training, on one H200", secondary=None), VERDICTS, GPU_LONG_CMD,
          _verdict_answer("gpu", "κ = 1/8 bit, longer training, on one H200", secondary=None)),
    Claim("κ = 1 bit: Z decides the position", _verdict_claim("primary", "κ = 1 bit: Z decides"), VERDICTS,
          QUICK_MEASURE_CMD, _verdict_answer("primary", "κ = 1 bit: Z decides")),
    Claim("κ = 1 bit: … and the noise (τ = 1 probe)",
          _verdict_claim("primary", "κ = 1 bit: Z also", secondary=None, what="shared − independent noise / chance",
                         protocol="t1"),
          VERDICTS, QUICK_MEASURE_CMD, _verdict_answer("primary", "κ = 1 bit: Z also", secondary=None, protocol="t1")),
    Claim("κ = 8 bits: generations become invalid",
          _verdict_claim("primary", "κ = 8 bits", what="valid rate, κ = 8 − baseline"), VERDICTS, QUICK_MEASURE_CMD,
          _verdict_answer("primary", "κ = 8 bits")),
    Claim("Code (MBPP-like): Free above baseline at 1.5B/8B; here a CPU-scale suite",
          _suite_task("ftstudy_bench_code", "generated function synthesis, hidden tests"), SUITE, SUITE_CMD,
          _suite_answer("ftstudy_bench_code")),
    Claim("Math (GSM8K): Free above baseline; CPU-scale word problems",
          _suite_task("ftstudy_bench_gsm", "two-step word problems"), SUITE, SUITE_CMD, _suite_answer("ftstudy_bench_gsm")),
    Claim("Math: CPU-scale multi-digit addition",
          _suite_task("ftstudy_bench_arith", "column addition, 2-3 digits"), SUITE, SUITE_CMD,
          _suite_answer("ftstudy_bench_arith")),
    Claim("(the paper's argument) a decision with many valid outputs",
          _suite_task("ftstudy_bench_path", "a path in a small graph"), SUITE, SUITE_CMD,
          _suite_answer("ftstudy_bench_path")),
    Claim("(the paper's argument) Free samples differ in their decision", _suite_diversity, SUITE, SUITE_CMD,
          _suite_diversity_answer),
    Claim("(the paper's argument) route choice: a decision that needs look-ahead",
          _decide_task("route_main", "two routes and three dead ends", "pass@1"), DECIDE, DECIDE_CMD,
          _decide_answer("route_main")),
    Claim("(Nagarajan et al.'s test of it) algorithmic creativity: sibling discovery",
          _decide_task("sibling", "valid, novel and unique samples", "creativity"), DECIDE, DECIDE_CMD,
          _decide_answer("sibling")),
    Claim("(Nagarajan et al.'s test of it) algorithmic creativity: triangle discovery",
          _decide_task("triangle", "valid, novel and unique samples", "creativity"), DECIDE, DECIDE_CMD,
          _decide_answer("triangle")),
    Claim("Code at 1.5B/8B, tried at CPU scale on HumanEval itself", _code, BENCH, BENCH_CMD,
          _bench_answer("ftstudy_humaneval")),
    Claim("Math (GSM8K) at CPU scale, on held-out GSM-style problems", _gsm, BENCH, BENCH_CMD,
          _bench_answer("ftstudy_gsm", "strict-match")),
    Claim("(a stand-in at CPU scale) GPT-3 arithmetic", _arithmetic, BENCH, BENCH_CMD,
          _bench_answer("ftstudy_arithmetic")),
    Claim("(not a paper claim) honest likelihood of Free vs baseline", _likelihood, BENCH, BENCH_CMD,
          _bench_answer("ftstudy_humaneval_bpb")),
    Claim("(the trap in PAPER.md) a leaky evaluation flatters Free models", _leak, RUNS, BENCH_CMD, _leak_answer),
    Claim("The encoder costs about 3.6% (1.5B) and 3.1% (8B) more compute", _overhead, SCALE,
          f"`python -m ftstudy.perf scale --json {SCALE}`", _overhead_answer),
)


def claims_table(root: Path = REPO_ROOT) -> str:
    lines = ["| paper's claim | our measurement (verdict; mean [95% t-interval over seeds]) | result file | command |",
             "|---|---|---|---|"]
    for c in CLAIMS:
        lines.append(f"| {c.claim} | {c.measure(Path(root))} | `{c.source}` | {c.command} |")
    return "\n".join(lines)


def perf_tables(root: Path = REPO_ROOT) -> str:
    """The targets table of every committed ``python -m ftstudy.perf suite`` result, by machine:
    ``results/perf/*.json``, then the device checks' ``results/gpu/<gpu>/perf.json``."""
    parts = []
    root = Path(root)
    for path in [*sorted((root / PERF_DIR).glob("*.json")), *sorted((root / GPU_DIR).glob("*/perf.json"))]:
        data = json.loads(path.read_text())
        if isinstance(data, dict) and "targets" in data:
            parts.append(f"`{path.relative_to(root).as_posix()}` ({data['machine']}, torch {data['torch']}, "
                         f"{data['threads']} threads):\n\n{targets_table(data)}")
    if not parts:
        raise ClaimError(f"no suite result in {PERF_DIR}/; make one with python -m ftstudy.perf suite")
    parts.append(compile_targets_table(root))
    return "\n\n".join(parts)


def compile_targets_table(root: Path = REPO_ROOT) -> str:
    """The compiled-step targets, from each GPU's ``compile.json`` (the device check's compile
    stage); not yet measured where no GPU has one."""
    measured = []
    for path in sorted((Path(root) / GPU_DIR).glob("*/compile.json")):
        data = json.loads(path.read_text())
        if data.get("status") == "done" and not data.get("compiler"):
            measured.append((path, data))
    head = ["| target | threshold | measured | met |", "|---|---|---|---|"]
    if not measured:
        rows = [f"| {name} | {thr} | not yet measured: no GPU has run the compile stage | – |"
                for _, name, _, _, thr in COMPILE_TARGETS]
        return ("Compiled steps (`train --compile`), GPU targets: not yet measured "
                "(`make gpu-check GPU_CHECK_ARGS=\"--stages compile\"` on a GPU):\n\n" + "\n".join(head + rows))
    out = []
    for path, data in measured:
        rows = []
        measured_by_key = {t["key"]: t for t in data["targets"]}
        for key, name, _, _, thr in COMPILE_TARGETS:
            t = measured_by_key[key]
            pct = key == "wide_bf16_mfu"
            value = "–" if t["value"] is None else (f"{t['value']:.1%}" if pct else f"{t['value']:.2f}")
            met = {True: "met", False: "**MISSED**", None: "not measured"}[t["met"]]
            rows.append(f"| {name} | {thr} | {value} | {met} |")
        out.append(f"Compiled steps, `{path.relative_to(root).as_posix()}`:\n\n" + "\n".join(head + rows))
    return "\n\n".join(out)


def answer_table(root: Path = REPO_ROOT, base: str = "") -> str:
    """One short row per claim: its verdict, k of n seeds and a link to its result file.
    ``base`` is the way from the page that quotes the table to the repository root ("" for
    the README, "../" for a page in docs/)."""
    lines = ["| paper's claim | verdict | seeds that show it (k of n) | evidence |", "|---|---|---|---|"]
    for c in CLAIMS:
        verdict, seeds = c.answer(Path(root))
        name = "/".join(Path(c.source).parts[-2:])
        lines.append(f"| {c.claim} | {verdict} | {seeds} | [{name}]({base}{c.source}) |")
    return "\n".join(lines)


def decide_tables(root: Path = REPO_ROOT) -> str:
    """The decision benchmark's report (``results/benchmarks/decide/report.json``) as two
    tables: per task its gate, trivial baselines and each model's score (mean over seeds, the
    seeds' range), then every seed-level comparison with its verdict."""
    rep, _ = _decide_row(root, "route_main")
    names = [_decide_name(lab) for lab in rep["labels"]]
    lines = ["| task | gate (every baseline seed) | trivial baselines | " + " | ".join(names) + " |",
             "|" + "---|" * (3 + len(names))]
    for task, row in rep["tasks"].items():
        gate = _decide_gate(row)
        cells = []
        for lab in rep["labels"]:
            m = row["models"].get(lab)
            v = m["pass@1_by_seed"] if m else []
            cells.append(f"{m['pass@1']:.3f} ({min(v):.3f}–{max(v):.3f})" if m else "—")
        trivial = ", ".join(f"{k} {v:.3f}" for k, v in row["baselines"].items())
        lines.append(f"| {task} | {'passed' if gate is None else 'failed: ' + gate} | {trivial} | "
                     + " | ".join(cells) + " |")
    lines += ["", "| task | comparison | Δ [95% t interval] | p Welch / perm. / Holm | detectable (rel.) | verdict "
              "| seeds beyond the reference's mean |", "|---|---|---|---|---|---|---|"]
    for task, row in rep["tasks"].items():
        for name, c in row["comparisons"].items():
            lab, ref = name.split(" vs ")
            holm = f"{c['p_holm']:.2g}" if "p_holm" in c else "–"
            mde = (f"{c['mde_rel']:+.0%}" if math.isfinite(c["mde_rel"])
                   else f"{c['mde_abs']:+.3f} abs. (reference mean 0)")
            lines.append(f"| {task} | {_decide_name(lab)} vs {_decide_name(ref)} | {c['diff']:+.3f} "
                         f"[{c['lo']:+.3f}, {c['hi']:+.3f}] | {c['p']:.2g} / {c['p_perm']:.2g} / {holm} | {mde} | "
                         f"{c['verdict']} | {c['k_of_n'][0]} of {c['k_of_n'][1]} |")
    return "\n".join(lines)


@dataclass(frozen=True)
class Block:
    """A generated block: its name, its markers and what builds it from (results root, base)."""
    name: str
    begin: str
    end: str
    build: Callable[[Path, str], str]


BLOCKS = (
    Block("answer", ANSWER_BEGIN, ANSWER_END, answer_table),
    Block("claims table", BEGIN, END, lambda root, base: claims_table(root)),
    Block("performance targets", PERF_BEGIN, PERF_END, lambda root, base: perf_tables(root)),
    Block("decision benchmark", DECIDE_BEGIN, DECIDE_END, lambda root, base: decide_tables(root)),
)


def page_blocks(page: Path, begin: str, end: str) -> list[str]:
    """Every block of ``page`` between ``begin`` and ``end``, stripped."""
    out = []
    for part in Path(page).read_text().split(begin)[1:]:
        if end not in part:
            raise ClaimError(f"{page}: {begin} without its {end}")
        out.append(part.split(end, 1)[0].strip())
    return out


def readme_block(readme: Path, begin: str = BEGIN, end: str = END) -> str:
    blocks = page_blocks(readme, begin, end)
    if not blocks:
        raise ClaimError(f"{readme} has no {begin} … {end} block")
    return blocks[0]


def _base(page: Path) -> str:
    """The relative way from ``page``'s folder to the repository root ("" at the root)."""
    import os
    try:
        Path(page).resolve().relative_to(REPO_ROOT.resolve())
    except ValueError:
        return ""
    rel = Path(os.path.relpath(REPO_ROOT.resolve(), Path(page).resolve().parent)).as_posix()
    return "" if rel == "." else rel + "/"


def check(pages: list[Path], root: Path = REPO_ROOT) -> tuple[int, str]:
    """(0, message) when every block on ``pages`` matches the results and every block is on one;
    (1, diffs) when a block differs.  Raises :class:`ClaimError` for a page without a block, a
    block on no page, or a missing result."""
    import difflib
    found: dict[str, list[str]] = {b.name: [] for b in BLOCKS}
    built: dict[tuple[str, str], str] = {}
    diffs = []
    for page in pages:
        if not Path(page).exists():
            raise ClaimError(f"{page} is missing")
        held = 0
        for b in BLOCKS:
            for got in page_blocks(page, b.begin, b.end):
                held += 1
                found[b.name].append(str(page))
                key = (b.name, _base(page))
                if key not in built:
                    built[key] = b.build(Path(root), key[1])
                want = built[key]
                if got != want:
                    diff = difflib.unified_diff(got.splitlines(), want.splitlines(), str(page), "results", lineterm="")
                    diffs.append(f"{page}: the {b.name} differs from the results (python -m ftstudy.claims prints "
                                 "every block):\n" + "\n".join(diff))
        if not held:
            raise ClaimError(f"{page} has no generated block (" + ", ".join(f"{b.begin} … {b.end}" for b in BLOCKS) + ")")
    missing = [b for b in BLOCKS if not found[b.name]]
    if missing:
        raise ClaimError("no page holds the " + ", ".join(f"{b.name} ({b.begin} … {b.end})" for b in missing)
                         + ": checked " + ", ".join(map(str, pages)))
    if diffs:
        return 1, "\n".join(diffs)
    def shown(page: str) -> str:
        try:
            return Path(page).resolve().relative_to(REPO_ROOT.resolve()).as_posix()
        except ValueError:
            return page
    where = "; ".join(f"the {name} in {', '.join(sorted({shown(p) for p in ps}))}" for name, ps in found.items())
    return 0, f"{where}: match the results ({len(CLAIMS)} claims)"


def write(pages: list[Path], root: Path = REPO_ROOT) -> list[Path]:
    """Rebuild every generated block on ``pages`` from the results, in place (atomically); the
    pages that changed."""
    changed = []
    for page in pages:
        text = new = Path(page).read_text()
        for b in BLOCKS:
            parts = new.split(b.begin)
            for i in range(1, len(parts)):
                if b.end not in parts[i]:
                    raise ClaimError(f"{page}: {b.begin} without its {b.end}")
                parts[i] = f"\n{b.build(Path(root), _base(Path(page)))}\n{b.end}" + parts[i].split(b.end, 1)[1]
            new = b.begin.join(parts)
        if new != text:
            atomic_write_text(Path(page), new)
            changed.append(Path(page))
    return changed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ftstudy.claims", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", type=Path, nargs="*", metavar="PAGE",
                   help="compare the generated blocks on these pages (default: " + ", ".join(PAGES)
                   + ") with the results")
    p.add_argument("--root", type=Path, default=REPO_ROOT, help="the repository whose results/ are read")
    p.add_argument("--write", action="store_true",
                   help="rebuild every generated block on " + ", ".join(PAGES) + " in place from the results")
    args = p.parse_args(argv)
    try:
        if args.write:
            for page in write([REPO_ROOT / page for page in PAGES], args.root):
                print(f"rewrote {page}")
            return 0
        if args.check is None:
            print("\n\n".join(f"{b.begin}\n{b.build(args.root, '')}\n{b.end}" for b in BLOCKS))
            return 0
        pages = args.check or [REPO_ROOT / page for page in PAGES]
        bad, message = check(pages, args.root)
    except ClaimError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(message, file=sys.stderr if bad else sys.stdout)
    return bad


if __name__ == "__main__":
    sys.exit(main())
