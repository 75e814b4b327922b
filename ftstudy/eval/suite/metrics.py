"""Scoring functions of the ftstudy lm-eval tasks, referenced from their YAML files as
``process_results: !function ftstudy.eval.suite.metrics.<name>``.

lm-eval resolves such a reference by looking for ``ftstudy/tasks/metrics.py`` next to the YAML
file and, not finding it, by importing ``ftstudy.eval.suite.metrics``; so the YAML files need no helper
module beside them, only an environment where ``ftstudy`` is importable.

Metric names. lm-eval has no ``pass@1`` or ``valid`` metric, so this module registers both
(aggregation ``mean``, higher is better) on import, which happens while lm-eval loads the YAML,
before it builds the task. A task with ``process_results`` never looks its metric functions up
(``ConfigurableTask.__init__`` stores ``None`` for them) and the YAML files name the aggregation
and ``higher_is_better`` of every metric, so lm-eval takes those from the registry's
aggregations (``mean``, ``bits_per_byte``) and never falls back to ``evaluate.load``. The
registration is for anything else that asks the registry about these names.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

# Import lm-eval's own metrics before registering ours: the registry imports that module lazily
# only while it is empty, so registering into an empty registry first would hide exact_match & co.
import lm_eval.api.metrics  # noqa: F401
from lm_eval.api.registry import metric_registry, register_metric

from ftstudy.eval.suite import execution
from ftstudy.results.benchstats import pass_at_k
from ftstudy.tasks import benchgen, decide

#: pass@k reported by the benchmark suite's tasks (each needs at least k samples per problem).
BENCH_K = (1, 5, 10)

__all__ = [
    "bench_code",
    "bench_arith",
    "bench_gsm",
    "bench_path",
    "decide_route_main",
    "decide_route_two_routes",
    "decide_route_one_route",
    "decide_sibling",
    "decide_triangle",
    "humaneval_program",
    "humaneval_pass_at_1",
    "humaneval_bits_per_byte",
    "synthetic_valid",
]


def _per_doc_score(items: Any) -> Any:
    """Registered metric function: a passthrough, the per-doc score comes from process_results."""
    return items


for _name in ("pass@1", "valid", *(f"pass@{k}" for k in BENCH_K if k != 1), "distinct_correct", "edge_validity",
              "route_a", "novel", "creativity"):
    if _name not in metric_registry:
        register_metric(metric=_name, higher_is_better=True, aggregation="mean")(_per_doc_score)


def _single(results: Sequence[Any], task: str) -> Any:
    if len(results) != 1:
        raise ValueError(f"{task}: expected one model response per doc, got {len(results)}")
    return results[0]


def humaneval_program(doc: dict[str, Any], completion: str) -> tuple[str, str]:
    """``(program, tests)`` that decide pass@1: the prompt and the completion; then the problem's
    tests and the check call, compiled and run after the program (see :mod:`ftstudy.eval.suite.execution`)."""
    return f"{doc['prompt']}{completion}\n", f"{doc['test']}\n\ncheck({doc['entry_point']})\n"


def humaneval_pass_at_1(doc: dict[str, Any], results: Sequence[str]) -> dict[str, float]:
    """``pass@1`` = 1.0 when the greedy completion passes the problem's tests, else 0.0.

    The program runs in the bubblewrap sandbox of :mod:`ftstudy.eval.suite.execution` with a wall-time
    limit of ``execution.DEFAULT_TIMEOUT`` seconds (read at call time); a pass needs the harness's
    token, written only after the tests returned.
    """
    completion = _single(results, "ftstudy_humaneval")
    if not isinstance(completion, str):
        raise TypeError(f"ftstudy_humaneval: expected a generated str, got {type(completion).__name__}")
    program, tests = humaneval_program(doc, completion)
    result = execution.run_program(program, execution.DEFAULT_TIMEOUT, tests=tests)
    return {"pass@1": float(result.passed)}


def humaneval_bits_per_byte(doc: dict[str, Any], results: Sequence[Any]) -> dict[str, tuple[float, int]]:
    """``(log p(canonical_solution | prompt), UTF-8 bytes of the solution)`` for lm-eval's
    ``bits_per_byte`` aggregation: ``-sum(loglik) / sum(bytes) / ln 2`` over the evaluated docs."""
    loglik, _is_greedy = _single(results, "ftstudy_humaneval_bpb")
    loglik = float(loglik)
    if math.isnan(loglik) or loglik > 0:
        raise ValueError(f"ftstudy_humaneval_bpb: a log-likelihood must be <= 0, got {loglik!r}")
    return {"bits_per_byte": (loglik, len(doc["canonical_solution"].encode("utf-8")))}


def synthetic_valid(doc: dict[str, Any], results: Sequence[str]) -> dict[str, float]:
    """``valid`` = 1.0 when prompt + generation is a valid sequence of the synthetic task."""
    from ftstudy.tasks.synthetic import check

    generation = _single(results, "ftstudy_synthetic")
    if not isinstance(generation, str):
        raise TypeError(f"ftstudy_synthetic: expected a generated str, got {type(generation).__name__}")
    valid, _position = check(doc["prompt"] + generation)
    return {"valid": float(valid)}


# ------------------------------------------------------------------ the benchmark suite (issue 15)

_code_results: dict[tuple[str, str], bool] = {}


def _passes(program: str, tests: str) -> bool:
    """Sandboxed run of a program and its tests, remembered: samples repeat programs (the same
    completion of the same problem), and each run starts a sandbox (about 0.1 s)."""
    key = (program, tests)
    if key not in _code_results:
        if len(_code_results) > 200_000:
            _code_results.clear()
        _code_results[key] = execution.run_program(program, execution.DEFAULT_TIMEOUT, tests=tests).passed
    return _code_results[key]


def bench_scores(family: str, doc: dict[str, Any], samples: Sequence[str]) -> dict[str, float]:
    """Per-problem scores of ``n`` sampled completions: ``pass@k`` for every k <= n in
    :data:`BENCH_K` (the unbiased estimator of Chen et al. 2021, so pass@1 is the fraction
    correct) and ``distinct_correct``, the number of distinct correct answers among them
    (programs compared after normalising their syntax, paths as node sequences)."""
    if not samples or not all(isinstance(x, str) for x in samples):
        raise TypeError(f"ftstudy_bench_{family}: expected a list of generated str, got {samples!r:.200}")
    ok = [benchgen.score_text(family, doc, x, run_code=_passes) for x in samples]
    n, c = len(samples), sum(ok)
    out = {f"pass@{k}": pass_at_k(n, c, k) for k in BENCH_K if k <= n}
    out["distinct_correct"] = float(len({benchgen.canonical_output(family, x) for x, good in zip(samples, ok)
                                         if good}))
    return out


def _process(task: str, score: Any, doc_ref: str):
    """A task's ``process_results``: ``score(doc, samples)`` of the one response list of a doc."""
    def process(doc: dict[str, Any], results: Sequence[Any]) -> dict[str, float]:
        return score(doc, _single(results, task))

    process.__name__ = task.removeprefix("ftstudy_")
    process.__doc__ = f"Scores of {task}: see {doc_ref}."
    return process


def _bench_task(family: str):
    return _process(f"ftstudy_bench_{family}", lambda doc, samples: bench_scores(family, doc, samples),
                    ":func:`bench_scores`")


bench_code = _bench_task("code")
bench_arith = _bench_task("arith")
bench_gsm = _bench_task("gsm")
bench_path = _bench_task("path")


# ------------------------------------------------------------------ the decision benchmark (issue 23)

def _decide_task(task: str):
    score = decide.route_scores if task in decide.ROUTE_TASKS else decide.creative_scores
    return _process(f"ftstudy_decide_{task}", score, f":func:`ftstudy.tasks.decide.{score.__name__}`")


decide_route_main = _decide_task("route_main")
decide_route_two_routes = _decide_task("route_two_routes")
decide_route_one_route = _decide_task("route_one_route")
decide_sibling = _decide_task("sibling")
decide_triangle = _decide_task("triangle")
