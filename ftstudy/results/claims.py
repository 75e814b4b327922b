"""The paper's claims against our measurements, as one table built from committed results.

    python -m ftstudy.claims                 # print both tables (markdown, with their markers)
    python -m ftstudy.claims --check README.md   # exit 1 if the README's tables differ

The README quotes the claims table between ``<!-- claims:begin -->`` and
``<!-- claims:end -->``, and the performance targets of ``results/perf/*.json`` between
``<!-- perf:begin -->`` and ``<!-- perf:end -->``; the test suite runs ``--check``, so a
number in the README cannot drift from the result file it cites.  Every cell is read
from a file under ``results/``: nothing here is typed in.
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

from ftstudy.io import REPO_ROOT, StudyDir
from ftstudy.results.report import targets_table

BEGIN, END = "<!-- claims:begin -->", "<!-- claims:end -->"
PERF_BEGIN, PERF_END = "<!-- perf:begin -->", "<!-- perf:end -->"
PERF_DIR = "results/perf"

# The result files the claims cite, relative to the repository.
QUICK = StudyDir("results/ablate/kl_budget").aggregate_csv.as_posix()
PAPER = StudyDir("results/ablate/paper/kl_budget").aggregate_csv.as_posix()
BENCH = "results/benchmarks/code-math-small/s0/report.json"
RUNS = StudyDir("results/benchmarks/code-math-small/runs/kl_budget").summary_file.as_posix()
SCALE = "results/perf/scale.json"
QUICK_CMD = "`python -m ftstudy.ablate --study kl_budget --preset quick --seeds 0 1 2 --jobs 2`"
PAPER_CMD = "`python -m ftstudy.ablate --study kl_budget --preset paper --seeds 0 1 2 --only kappa_bits=1/8`"
BENCH_CMD = "`make benchmark`"


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


def _kappa_unused(root: Path) -> str:
    r = _point(root, QUICK, 1 / 64)
    return (f"KL {_mi(r, 'posterior.kl_bits_per_token')} bits/token; collapsed to 0 in "
            f"{r['collapsed']} of {r['seeds']} seeds")


def _position(root: Path, rel: str, kappa: float) -> str:
    r = _point(root, rel, kappa)
    return (f"same block position: shared Z {_mi(r, 'probe.same_pos_shared')} vs independent Z "
            f"{_mi(r, 'probe.same_pos_independent')} ({r['seeds']} seeds)")


def _noise(root: Path) -> str:
    r = _point(root, QUICK, 1.0)
    return (_position(root, QUICK, 1.0) + f"; shared noise / chance: shared Z {_mi(r, 'probe.noise_overlap_shared')} "
            f"vs independent {_mi(r, 'probe.noise_overlap_independent')}")


def _invalid(root: Path) -> str:
    r, b = _point(root, QUICK, 8.0), _point(root, QUICK, None)
    return f"valid rate {_mi(r, 'generation.valid_rate')} vs baseline {_mi(b, 'generation.valid_rate')} ({r['seeds']} seeds)"


def _code(root: Path) -> str:
    return "HumanEval pass@1: " + _cells(_bench_row(_report(root), "ftstudy_humaneval"))


def _arithmetic(root: Path) -> str:
    return "held-out arithmetic, exact match: " + _cells(_bench_row(_report(root), "ftstudy_arithmetic"))


def _gsm(root: Path) -> str:
    return "held-out GSM-style problems, strict match: " + _cells(_bench_row(_report(root), "ftstudy_gsm", "strict-match"))


def _likelihood(root: Path) -> str:
    return "HumanEval bits/byte (lower is better): " + _cells(_bench_row(_report(root), "ftstudy_humaneval_bpb"))


def _leak(root: Path) -> str:
    rows = {r["run"]: r for r in _rows(root, RUNS)}
    try:
        base, k2 = rows["code-math-small-base-s0"], rows["code-math-small-free-k2-s0"]
    except KeyError as e:
        raise ClaimError(f"{RUNS} has no row {e}") from None
    return (f"validation CE at κ 2: encoder sees the scored tokens {float(k2['val.ce_posterior_LEAKY']):.3f}, honest "
            f"(prior Z) {float(k2['val.ce_prior']):.3f}, baseline {float(base['val.ce_prior']):.3f} nats/byte")


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


@dataclass(frozen=True)
class Claim:
    claim: str
    measure: Callable[[Path], str]
    source: str
    command: str


CLAIMS = (
    Claim("Synthetic task, κ = 1/64 bit: Z carries nothing (Fig. 4, left)", _kappa_unused, QUICK, QUICK_CMD),
    Claim("κ = 1/8 bit: shared-Z generations agree on the block position",
          lambda root: _position(root, QUICK, 1 / 8), QUICK, QUICK_CMD),
    Claim("κ = 1/8 bit, same claim, longer training (D 128, 3,000 steps)",
          lambda root: _position(root, PAPER, 1 / 8), PAPER, PAPER_CMD),
    Claim("κ = 1 bit: Z decides the position and the noise", _noise, QUICK, QUICK_CMD),
    Claim("κ = 8 bits: generations become invalid", _invalid, QUICK, QUICK_CMD),
    Claim("Code (HumanEval+, MBPP): Free above baseline at 1.5B/8B", _code, BENCH, BENCH_CMD),
    Claim("Math (GSM8K): Free above baseline at 1.5B/8B", _gsm, BENCH, BENCH_CMD),
    Claim("(our stand-in) GPT-3 arithmetic", _arithmetic, BENCH, BENCH_CMD),
    Claim("(not a paper claim) honest likelihood of Free vs baseline", _likelihood, BENCH, BENCH_CMD),
    Claim("(the trap in PAPER.md) a leaky evaluation flatters Free models", _leak, RUNS, BENCH_CMD),
    Claim("The encoder costs about 3.6% (1.5B) and 3.1% (8B) more compute", _overhead, SCALE,
          f"`python -m ftstudy.perf scale --json {SCALE}`"),
)


def claims_table(root: Path = REPO_ROOT) -> str:
    lines = ["| paper's claim | our measurement (mean [95% interval]) | result file | command |",
             "|---|---|---|---|"]
    for c in CLAIMS:
        lines.append(f"| {c.claim} | {c.measure(Path(root))} | `{c.source}` | {c.command} |")
    return "\n".join(lines)


def perf_tables(root: Path = REPO_ROOT) -> str:
    """The targets table of every committed ``python -m ftstudy.perf suite`` result, by machine."""
    parts = []
    for path in sorted((Path(root) / PERF_DIR).glob("*.json")):
        data = json.loads(path.read_text())
        if isinstance(data, dict) and "targets" in data:
            parts.append(f"`{PERF_DIR}/{path.name}` ({data['machine']}, torch {data['torch']}, "
                         f"{data['threads']} threads):\n\n{targets_table(data)}")
    if not parts:
        raise ClaimError(f"no suite result in {PERF_DIR}/; make one with python -m ftstudy.perf suite")
    return "\n\n".join(parts)


def readme_block(readme: Path, begin: str = BEGIN, end: str = END) -> str:
    text = Path(readme).read_text()
    if begin not in text or end not in text:
        raise ClaimError(f"{readme} has no {begin} … {end} block")
    return text.split(begin, 1)[1].split(end, 1)[0].strip()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ftstudy.claims", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", type=Path, metavar="README", help="compare with the README's claims block")
    p.add_argument("--root", type=Path, default=REPO_ROOT, help="the repository whose results/ are read")
    args = p.parse_args(argv)
    try:
        table, perf = claims_table(args.root), perf_tables(args.root)
        if args.check is None:
            print(f"{BEGIN}\n{table}\n{END}\n\n{PERF_BEGIN}\n{perf}\n{PERF_END}")
            return 0
        quoted = readme_block(args.check)
        quoted_perf = readme_block(args.check, PERF_BEGIN, PERF_END)
    except ClaimError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import difflib
    bad = 0
    for name, want, got in (("claims table", table, quoted), ("performance targets", perf, quoted_perf)):
        if got != want:
            diff = difflib.unified_diff(got.splitlines(), want.splitlines(), "README", "results", lineterm="")
            print(f"the README's {name} differs from the results (python -m ftstudy.claims prints both):\n"
                  + "\n".join(diff), file=sys.stderr)
            bad = 1
    if not bad:
        print(f"{args.check}: the claims table ({len(CLAIMS)} claims) and the performance targets match the results")
    return bad


if __name__ == "__main__":
    sys.exit(main())
