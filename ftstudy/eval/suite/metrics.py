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

import ast
import builtins
import functools
import math
import operator
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
    "HUMANEVAL_TESTS_APART",
    "humaneval_cases",
    "humaneval_check",
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


# ------------------------------------------------------------------ HumanEval (issue 24)
# The verdict is made here, from plain data (see ftstudy.eval.suite.execution): the asserts of a
# problem's check() become (arguments, expected output) cases, read from the AST of the test (never
# executed here); a problem whose check() has anything else keeps its own tests, run in a tester
# process apart from the program (execution.run_tests_apart).

#: HumanEval problems whose tests are not all cases (random inputs, loops, local variables, an
#: expected value computed by the solution itself): their ``check`` runs in a sandboxed tester
#: that never runs the program (:func:`ftstudy.eval.suite.execution.run_tests_apart`).
#: ``tests/test_execution.py`` checks this list against :func:`humaneval_cases` on the wheel's data.
HUMANEVAL_TESTS_APART: tuple[str, ...] = ("HumanEval/32", "HumanEval/33", "HumanEval/38", "HumanEval/44",
                                          "HumanEval/50", "HumanEval/53", "HumanEval/151")


class _NotACase(Exception):
    """A statement of check() that is not one of the forms :func:`humaneval_cases` reads."""


_LONGEST_CONSTANT = 100_000  # items of a str, list or tuple that a constant expression may build
_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}


def _constant(node: ast.expr) -> Any:
    """The value of a constant expression of a test, from its AST: what ``ast.literal_eval``
    reads (None, bool, int, float, str, lists, tuples, dicts), and ``+ - * / // % **`` and unary
    ``-``/``+``/``not`` on such values (HumanEval writes ``candidate(3 * 19)`` and
    ``(3 + 5 + 7, 3 * 5 * 7)``), with bounds on what ``*`` and ``**`` may build."""
    if isinstance(node, ast.Constant):
        if node.value is None or type(node.value) in (bool, int, float, str):
            return node.value
    elif isinstance(node, (ast.List, ast.Tuple)):
        values = [_constant(e) for e in node.elts]
        return values if isinstance(node, ast.List) else tuple(values)
    elif isinstance(node, ast.Dict) and None not in node.keys:
        out = {}
        for k, v in zip(node.keys, node.values):
            key = _constant(k)
            if isinstance(key, (list, dict)):
                break
            out[key] = _constant(v)
        else:
            return out
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd, ast.Not)):
        v = _constant(node.operand)
        if type(v) in (bool, int, float):
            return -v if isinstance(node.op, ast.USub) else +v if isinstance(node.op, ast.UAdd) else not v
    elif isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        a, b = _constant(node.left), _constant(node.right)
        numbers = type(a) in (int, float) and type(b) in (int, float)
        if isinstance(node.op, ast.Pow) and not (numbers and abs(b) <= 64 and abs(a) <= 10**6):
            raise _NotACase(f"{ast.unparse(node)}: too large a power to build")
        if isinstance(node.op, ast.Mult) and not numbers:
            seq, n = (a, b) if type(b) is int else (b, a)
            if not (type(n) is int and type(seq) in (str, list, tuple) and len(seq) * max(n, 0) <= _LONGEST_CONSTANT):
                raise _NotACase(f"{ast.unparse(node)}: not a bounded repetition")
        try:
            return _BINOPS[type(node.op)](a, b)
        except (ArithmeticError, TypeError, ValueError):
            pass
    raise _NotACase(f"{ast.unparse(node)} is not a constant expression")


def _call_args(node: ast.expr, candidate: str) -> tuple[Any, ...] | None:
    """The arguments of ``candidate(...)`` (constants, positional only), or None if ``node`` is no such call."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == candidate:
        if node.keywords:
            raise _NotACase("a keyword argument")
        return tuple(_constant(a) for a in node.args)
    return None


def _assert_case(test: ast.expr, candidate: str) -> execution.Case | None:
    """The case of ``assert <test>``, None for ``assert True``; :class:`_NotACase` otherwise."""
    if isinstance(test, ast.Constant) and test.value is True:
        return None
    if (args := _call_args(test, candidate)) is not None:  # assert candidate(...)
        return execution.Case(args, True, "truthy")
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not) and \
            (args := _call_args(test.operand, candidate)) is not None:  # assert not candidate(...)
        return execution.Case(args, False, "truthy")
    if isinstance(test, ast.Compare) and len(test.ops) == 1:
        op, left, right = test.ops[0], test.left, test.comparators[0]
        if isinstance(op, ast.Eq) and (args := _call_args(left, candidate)) is not None:
            return execution.Case(args, _constant(right), "equal")  # candidate(...) == value
        if isinstance(op, ast.Eq) and isinstance(left, ast.Call) and isinstance(left.func, ast.Name) and \
                left.func.id == "tuple" and len(left.args) == 1 and not left.keywords and \
                (args := _call_args(left.args[0], candidate)) is not None and isinstance(right, ast.Call) and \
                isinstance(right.func, ast.Name) and right.func.id == "tuple" and len(right.args) == 1:
            value = _constant(right.args[0])  # tuple(candidate(...)) == tuple([...])
            if type(value) in (list, tuple):
                return execution.Case(args, tuple(value), "tuple")
        if isinstance(op, ast.Is) and (args := _call_args(left, candidate)) is not None and \
                isinstance(right, ast.Constant) and any(right.value is v for v in (True, False, None)):
            return execution.Case(args, right.value, "is")  # candidate(...) is True
        if isinstance(op, ast.Lt) and isinstance(left, ast.Call) and isinstance(left.func, ast.Name) and \
                left.func.id == "abs" and len(left.args) == 1 and isinstance(left.args[0], ast.BinOp) and \
                isinstance(left.args[0].op, ast.Sub) and (args := _call_args(left.args[0].left, candidate)) is not None:
            expected, tol = _constant(left.args[0].right), _constant(right)  # abs(candidate(...) - x) < tol
            if type(expected) in (int, float) and type(tol) in (int, float):
                return execution.Case(args, expected, "close", tol=tol)
    raise _NotACase(f"assert {ast.unparse(test)}")


@functools.lru_cache(maxsize=512)
def humaneval_cases(test: str) -> tuple[execution.Case, ...] | None:
    """The cases of a HumanEval problem's ``test`` (its ``METADATA`` and ``def check(candidate)``),
    read from the AST, never executed: one per ``assert candidate(...) == v``, ``assert
    tuple(candidate(...)) == tuple(v)``, ``assert candidate(...) is True``, ``assert
    abs(candidate(...) - v) < tol``, ``assert candidate(...)`` or ``assert not candidate(...)``,
    with constant arguments and values (:func:`_constant`); ``assert True``, bare names and
    strings are skipped. None when anything else is there (:data:`HUMANEVAL_TESTS_APART`).

    Equality is Python's ``==`` on the plain values that come back (``kind="equal"``), as the
    original asserts compare: ``1 == 1.0`` and ``True == 1`` still hold, an object cannot."""
    try:
        module = ast.parse(test)
    except SyntaxError:
        return None
    checks = [n for n in module.body if isinstance(n, ast.FunctionDef) and n.name == "check"]
    others = [n for n in module.body if not isinstance(n, ast.FunctionDef) or n.name != "check"]
    if len(checks) != 1 or any(not (isinstance(n, ast.Assign) and len(n.targets) == 1 and
                                    isinstance(n.targets[0], ast.Name) and n.targets[0].id == "METADATA")
                               for n in others):
        return None
    check = checks[0]
    if len(check.args.args) != 1 or check.decorator_list:
        return None
    candidate = check.args.args[0].arg
    cases = []
    try:
        for stmt in check.body:
            if isinstance(stmt, ast.Pass) or (isinstance(stmt, ast.Expr) and (
                    isinstance(stmt.value, ast.Constant) or
                    (isinstance(stmt.value, ast.Name) and stmt.value.id in dir(builtins)))):
                continue  # a docstring, a bare `print`
            if not isinstance(stmt, ast.Assert):
                raise _NotACase(ast.unparse(stmt).split("\n")[0])
            case = _assert_case(stmt.test, candidate)
            if case is not None:
                cases.append(case)
    except (_NotACase, ValueError, TypeError, RecursionError):  # ValueError, TypeError: Case refused a value
        return None
    return tuple(cases) or None


def humaneval_check(doc: dict[str, Any], completion: str, timeout: float | None = None) -> execution.ExecResult:
    """The verdict on a HumanEval completion: the prompt and the completion are the program; its
    cases (:func:`humaneval_cases`) are checked here from the outputs that come back, or, for the
    problems of :data:`HUMANEVAL_TESTS_APART`, the problem's own tests run in a tester apart,
    with the prompt (helper functions such as ``poly``, ``encode_cyclic``) as its setup.
    ``timeout`` defaults to ``execution.DEFAULT_TIMEOUT`` (read at call time)."""
    timeout = execution.DEFAULT_TIMEOUT if timeout is None else timeout
    program, entry = f"{doc['prompt']}{completion}\n", doc["entry_point"]
    cases = humaneval_cases(doc["test"])
    if cases is not None:
        return execution.check_cases(program, entry, cases, timeout)
    return execution.run_tests_apart(program, entry, f"{doc['test']}\n\ncheck({entry})\n", timeout, setup=doc["prompt"])


def humaneval_pass_at_1(doc: dict[str, Any], results: Sequence[str]) -> dict[str, float]:
    """``pass@1`` = 1.0 when the greedy completion passes the problem's tests (:func:`humaneval_check`:
    bubblewrap sandbox, wall-time limit ``execution.DEFAULT_TIMEOUT`` seconds), else 0.0."""
    completion = _single(results, "ftstudy_humaneval")
    if not isinstance(completion, str):
        raise TypeError(f"ftstudy_humaneval: expected a generated str, got {type(completion).__name__}")
    return {"pass@1": float(humaneval_check(doc, completion).passed)}


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

_code_results: dict[tuple[str, str, str], bool] = {}


def _passes(program: str, entry_point: str, cases: Sequence[tuple[tuple[Any, ...], Any]]) -> bool:
    """Sandboxed run of a code completion on its problem's inputs, the outputs compared here with
    exact type-aware equality (:func:`ftstudy.tasks.benchgen.code_cases`: the expected outputs
    never enter the sandbox); remembered, since samples repeat programs (the same completion of
    the same problem) and each run starts a sandbox (about 0.1 s)."""
    key = (program, entry_point, repr(cases))  # repr tells True from 1: the cases are JSON values
    if key not in _code_results:
        if len(_code_results) > 200_000:
            _code_results.clear()
        checks = [execution.Case(tuple(args), expected, "exact") for args, expected in cases]
        _code_results[key] = execution.check_cases(program, entry_point, checks, execution.DEFAULT_TIMEOUT).passed
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
