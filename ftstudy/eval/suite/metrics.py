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

__all__ = [
    "humaneval_program",
    "humaneval_pass_at_1",
    "humaneval_bits_per_byte",
    "synthetic_valid",
]


def _per_doc_score(items: Any) -> Any:
    """Registered metric function: a passthrough, the per-doc score comes from process_results."""
    return items


for _name in ("pass@1", "valid"):
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
