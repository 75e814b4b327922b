"""The CPU-scale benchmark suite (issue 15): generated problems that a model of a few
hundred thousand parameters, trained for minutes, solves part of the time.

Four families, each a deterministic function of a seed, each with a training split and a
held-out evaluation split that never overlap:

- ``code``: MBPP-like function synthesis.  The prompt is a signature and a docstring
  (``def f(x):\\n    \"\"\"Return x plus 3.\"\"\"\\n``), the answer a one-line body.  Hidden
  tests (four to six *cases*, (arguments, expected output) pairs of plain JSON values: boundary
  inputs, such as ``k - 1``, ``k``, ``k + 1``, 0, a negative number, the empty and one-element
  lists, then random ones drawn from the problem's key) decide a pass: the sandbox of
  :mod:`ftstudy.eval.suite.execution` calls the completed function on the arguments only, and
  its outputs are compared with the expected ones outside it, with exact type-aware equality
  (``True`` is not ``1``; every output is an int, a bool or a list of ints, so no tolerance is
  needed).  An object that claims to equal anything never leaves the sandbox.  No trivial
  body (a constant, the argument, ``len(xs)``, ...), wrong constant or near miss
  (:func:`trivial_bodies`) passes any problem: the code task's blind baseline
  (:func:`trivial_pass_rate`) is 0.  Many templates accept several
  programs (``x + 3`` and ``3 + x``; ``max(xs)`` and ``sorted(xs)[-1]``): the training
  answers draw one of them at random, so distinct correct programs can be counted.
- ``arith``: multi-digit addition (``Question: What is 48 plus 76?``: a 2-digit number plus a
  1-digit one, two 2-digit and two 3-digit numbers) answered by column addition, units first,
  then the sum (``Answer: 8+6=14. 4+7+1=12. #### 124``); the number after ``####`` is checked
  exactly.  (Answering with the sum alone stayed at 5% after 1,400 steps: see the
  calibration notes.)
- ``gsm``: two-step word problems with one-digit numbers whose answer shows its steps and ends
  with ``#### n`` (GSM8K's format); the number after ``####`` is checked exactly.  Four
  templates (:data:`GSM_TEMPLATES`), equally frequent in both splits; no answer equals a number
  of the question, a single step on two of them, or the two steps on a wrong pair, so the
  myopic guessers of :func:`gsm_chance_floors` score 0 and number-blind ones at most 5%.
- ``path``: a decision task with many valid outputs.  The prompt lists the edges of a small
  connected graph on the letters A-E and asks for a path between two nodes; any simple
  path along listed edges is valid, and the training answers are uniform draws among the
  simple paths of at most four edges.  The model has to commit early, at the first step, to
  one of several consistent continuations: the situation the paper's argument is about.

Held-out rule: a problem's *key* (its family, template and numbers, or its graph and end
points: what decides the answer, never names or wording) is hashed; keys in the held-out
class (1 in ``HELDOUT_MOD[family]``) are evaluation problems and training draws skip them.
So no evaluation problem, in any wording, is ever a training document
(``tests/test_benchgen.py`` checks this on the generated sets).

Everything here is torch-free: the lm-eval task builder and the results layer import it.
"""

from __future__ import annotations

import ast
import collections
import hashlib
import itertools
import json
import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ftstudy.tasks import mathgen

__all__ = ["FAMILIES", "HELDOUT_MOD", "MIX", "ARITH_KINDS", "CODE_TEMPLATES", "GSM_TEMPLATES", "TRIVIAL_BODIES",
           "NEAR_CONSTANT", "Problem", "heldout", "in_heldout_class", "draw", "eval_problems", "training_documents",
           "document", "code_program", "gsm_answer", "path_valid", "simple_paths", "path_answer", "path_blind_rate", "arith_answer",
           "score_text", "canonical_output", "canonical_program", "eval_row", "trivial_bodies", "trivial_pass_rate",
           "code_cases", "same_output", "RunCode",
           "gsm_answer_distribution", "gsm_chance_floors"]

FAMILIES = ("code", "arith", "gsm", "path")
#: 1 in HELDOUT_MOD[family] keys is held out for evaluation.  Code has the smallest key space
#: (template and constants), so a larger share of it is held out to reach enough problems.
HELDOUT_MOD = {"code": 4, "arith": 10, "gsm": 4, "path": 4}
#: Share of each family among training documents.
MIX = {"code": 0.3, "arith": 0.25, "gsm": 0.25, "path": 0.2}
#: Arithmetic kinds: a 2-digit number plus a 1-digit one, two 2-digit and two 3-digit numbers.
ARITH_KINDS = ("2d1a", "2da", "3da")


@dataclass(frozen=True)
class Problem:
    """One problem: ``prompt`` is what the model is given, ``answer`` a reference completion
    (one of possibly many valid ones); ``key`` decides the split; ``meta`` is what a checker
    needs (cases, graph, target number)."""

    family: str
    key: str
    prompt: str
    answer: str
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def text(self) -> str:
        """The training document: prompt followed by the answer."""
        return self.prompt + self.answer


def in_heldout_class(text: str, mod: int) -> bool:
    """Whether ``text`` hashes (sha256) into the held-out class, 1 in ``mod``."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") % mod == 0


def heldout(key: str, family: str) -> bool:
    """Whether ``key`` belongs to the held-out (evaluation) class of ``family``."""
    return in_heldout_class(f"bench:{key}", HELDOUT_MOD[family])


# ------------------------------------------------------------------------------------- code

_XNAMES = ("x", "n", "a", "v")
_LNAMES = ("xs", "nums", "vals", "items")
_FNAMES = ("f", "g", "solve", "compute", "func", "helper")


@dataclass(frozen=True)
class CodeTemplate:
    """A docstring with ``{k}`` (and ``{m}``) constants, its equivalent bodies, the reference
    function, the argument kinds, the constants' range and its *near misses*: wrong bodies one
    slip away (``>=`` for ``>``, the operands swapped, the neighbouring template's operation)."""

    name: str
    doc: str
    bodies: tuple[str, ...]
    ref: Callable[..., Any]
    args: str  # "x", "xy" or "l" (one list)
    consts: tuple[str, ...] = ("k",)
    lo: int = 1
    hi: int = 49
    near: tuple[str, ...] = ()


def _t(name, doc, bodies, ref, args="x", consts=("k",), lo=1, hi=49, near=()) -> CodeTemplate:
    return CodeTemplate(name, doc, tuple(bodies), ref, args, tuple(consts), lo, hi, tuple(near))


CODE_TEMPLATES: tuple[CodeTemplate, ...] = (
    _t("add", "Return {x} plus {k}.", ("{x} + {k}", "{k} + {x}"), lambda x, k: x + k,
       near=("{x} - {k}", "{x} * {k}", "{x} + {k} + 1")),
    _t("sub", "Return {x} minus {k}.", ("{x} - {k}", "-{k} + {x}"), lambda x, k: x - k,
       near=("{k} - {x}", "{x} + {k}", "abs({x} - {k})")),
    _t("mul", "Return {x} times {k}.", ("{x} * {k}", "{k} * {x}"), lambda x, k: x * k, lo=2,
       near=("{x} + {k}", "{x} ** {k}", "{x} * {k} + 1")),
    _t("lin", "Return {k} times {x} plus {m}.", ("{k} * {x} + {m}", "{x} * {k} + {m}", "{m} + {k} * {x}"),
       lambda x, k, m: k * x + m, consts=("k", "m"), lo=2, hi=12,
       near=("{k} * ({x} + {m})", "({k} + {x}) * {m}", "{k} * {x} - {m}")),
    _t("mod", "Return the remainder of {x} divided by {k}.", ("{x} % {k}",), lambda x, k: x % k, lo=2, hi=19,
       near=("{x} // {k}", "{k} % {x}", "{x} - {k}")),
    _t("sumk", "Return the sum of {x} and {k} times {y}.", ("{x} + {k} * {y}", "{k} * {y} + {x}", "{x} + {y} * {k}"),
       lambda x, y, k: x + k * y, args="xy", lo=2,
       near=("{y} + {k} * {x}", "({x} + {k}) * {y}", "{k} * ({x} + {y})", "{x} * {k} + {y}")),
    _t("gt", "Return True if {x} is greater than {k}.", ("{x} > {k}", "{k} < {x}"), lambda x, k: x > k,
       near=("{x} >= {k}", "{x} < {k}", "{x} <= {k}", "{x} != {k}")),
    _t("count", "Return how many elements of {l} are greater than {k}.",
       ("len([e for e in {l} if e > {k}])", "sum(1 for e in {l} if e > {k})"),
       lambda xs, k: sum(1 for e in xs if e > k), args="l",
       near=("len([e for e in {l} if e >= {k}])", "len([e for e in {l} if e < {k}])",
             "sum(e for e in {l} if e > {k})")),
    _t("filter", "Return the elements of {l} that are greater than {k}.",
       ("[e for e in {l} if e > {k}]", "list(filter(lambda e: e > {k}, {l}))"),
       lambda xs, k: [e for e in xs if e > k], args="l",
       near=("[e for e in {l} if e >= {k}]", "[e for e in {l} if e < {k}]", "[e for e in {l} if e <= {k}]")),
    _t("addall", "Return {l} with {k} added to every element.",
       ("[e + {k} for e in {l}]", "[{k} + e for e in {l}]", "list(map(lambda e: e + {k}, {l}))"),
       lambda xs, k: [e + k for e in xs], args="l",
       near=("{l} + [{k}]", "[e * {k} for e in {l}]", "[e - {k} for e in {l}]")),
    _t("mulall", "Return {l} with every element multiplied by {k}.",
       ("[e * {k} for e in {l}]", "[{k} * e for e in {l}]"), lambda xs, k: [e * k for e in xs], args="l", lo=2,
       near=("{l} * {k}", "[e + {k} for e in {l}]", "[e ** {k} for e in {l}]")),
    _t("first", "Return the first {k} elements of {l}.", ("{l}[:{k}]", "{l}[0:{k}]"), lambda xs, k: xs[:k],
       args="l", hi=9, near=("{l}[{k}:]", "{l}[-{k}:]", "{l}[1:{k} + 1]", "sorted({l})[:{k}]")),
    _t("sumgt", "Return the sum of the elements of {l} that are greater than {k}.",
       ("sum(e for e in {l} if e > {k})", "sum([e for e in {l} if e > {k}])"),
       lambda xs, k: sum(e for e in xs if e > k), args="l",
       near=("sum(e for e in {l} if e >= {k})", "sum(e for e in {l} if e < {k})",
             "len([e for e in {l} if e > {k}])")),
    _t("maxk", "Return the largest element of {l} plus {k}.", ("max({l}) + {k}", "{k} + max({l})",
                                                                 "sorted({l})[-1] + {k}"),
       lambda xs, k: max(xs) + k, args="l",
       near=("min({l}) + {k}", "{l}[-1] + {k}", "{l}[0] + {k}", "sum({l}) + {k}", "max({l}) * {k}")),
)
_CODE_BY_NAME = {t.name: t for t in CODE_TEMPLATES}


def _code_inputs(t: CodeTemplate, rng: random.Random, k: int) -> list[tuple[Any, ...]]:
    """The hidden test inputs of a problem with first constant ``k``: boundary cases first,
    then random ones.

    - one int (``x``): 0, ``k - 1``, ``k``, ``k + 1``, a negative number and a positive one
      (a comparison flips between ``k`` and ``k + 1``; ``k - 1`` and ``k`` pin a modulus);
    - two ints (``xy``): ``(0, 1)`` (the constant alone), ``(k, -1)``, ``(-r, k)``, ``(r, 0)``
      and a random pair;
    - one list (``l``): the empty list (except ``maxk``, whose doc needs an element), ``[k]``,
      ``[k, k + 1, k - 1]``, a list with a negative number and 0 (for ``maxk``, two negative
      numbers), and a random list of 3-7 ints 0-60 (for ``first``, of ``k + 2`` distinct ints,
      so that every other prefix length differs).

    So every constant ``k' != k`` and every body of :func:`trivial_bodies` fails at least one
    assert, on every problem of the key space (``tests/test_benchgen.py``)."""
    if t.args == "x":
        xs = [0, k - 1, k, k + 1, -rng.randint(1, 20), rng.randint(1, 40)]
        return [(x,) for x in dict.fromkeys(xs)]
    if t.args == "xy":
        return [(0, 1), (k, -1), (-rng.randint(1, 20), k), (rng.randint(1, 40), 0),
                (rng.randint(-20, 40), rng.randint(-20, 40))]
    around = [k, k + 1, k - 1]  # the largest neither first nor last: ``xs[0]``, ``xs[-1]`` are not ``max(xs)``
    lists = [] if t.name == "maxk" else [[]]
    lists += [[k], around]
    if t.name == "maxk":
        lists.append([-rng.randint(1, 20), -rng.randint(21, 40)])
    else:
        lists.append([-rng.randint(1, 20), 0, k + rng.randint(1, 20)])
    if t.name == "first":
        lists.append(rng.sample(range(0, 61), k + 2))
    else:
        lists.append([rng.randint(0, 60) for _ in range(rng.randint(3, 7))])
    return [(xs,) for xs in lists]


def _code_fill(t: CodeTemplate, rng: random.Random, consts: dict[str, int]) -> tuple[dict[str, str], str]:
    names = {"x": rng.choice(_XNAMES), "l": rng.choice(_LNAMES)}
    names["y"] = rng.choice([n for n in _XNAMES if n != names["x"]])
    fname = rng.choice(_FNAMES)
    return {**names, **{c: str(v) for c, v in consts.items()}}, fname


def _code_problem(rng: random.Random, split: str) -> Problem:
    while True:
        t = rng.choice(CODE_TEMPLATES)
        consts = {c: rng.randint(t.lo, t.hi) for c in t.consts}
        key = f"code:{t.name}:" + ":".join(str(consts[c]) for c in t.consts)
        if heldout(key, "code") == (split == "eval"):
            break
    return _code_make(t, consts, rng)


def _code_make(t: CodeTemplate, consts: dict[str, int], rng: random.Random) -> Problem:
    """The problem of template ``t`` with ``consts``, its names and wording drawn from ``rng``."""
    key = f"code:{t.name}:" + ":".join(str(consts[c]) for c in t.consts)
    fill, fname = _code_fill(t, rng, consts)
    params = {"x": fill["x"], "xy": f"{fill['x']}, {fill['y']}", "l": fill["l"]}[t.args]
    doc = t.doc.format(**fill)
    prompt = f'def {fname}({params}):\n    """{doc}"""\n'
    body = "    return " + rng.choice(t.bodies).format(**fill) + "\n"
    # Cases depend only on the key, so every wording of a problem has the same hidden tests.
    trng = random.Random(key)
    cases = [[list(args), t.ref(*args, *(consts[c] for c in t.consts))]
             for args in _code_inputs(t, trng, consts[t.consts[0]])]
    # "cases" (JSON text: rows stay flat strings for lm-eval's Arrow loader) is what scoring uses;
    # "tests" shows the same cases as asserts, for readers only.
    tests = "".join(f"assert {fname}({', '.join(map(repr, args))}) == {want!r}\n" for args, want in cases)
    return Problem("code", key, prompt, body, {"entry_point": fname, "cases": json.dumps(cases), "tests": tests,
                                               "template": t.name})


def code_cases(row: dict[str, Any]) -> list[tuple[tuple[Any, ...], Any]]:
    """The hidden tests of a code row (or a code problem's ``meta``): ``(arguments, expected
    output)`` pairs of plain JSON values, parsed from its ``cases`` field."""
    text = row.get("cases")
    if not isinstance(text, str):
        raise ValueError(f"code row {row.get('id', row.get('entry_point', '?'))!r} has no 'cases' field (a task "
                         f"folder from before issue 24?); rebuild it with `python -m ftstudy.eval.suite path`")
    data = json.loads(text)
    if not (isinstance(data, list) and data and all(isinstance(c, list) and len(c) == 2 and isinstance(c[0], list)
                                                   for c in data)):
        raise ValueError(f"'cases' must be a non-empty JSON list of [arguments list, expected output] pairs, "
                         f"got {text[:100]!r}")
    return [(tuple(args), want) for args, want in data]


#: Bodies that ignore the specification: constants, an argument returned as it is, a
#: one-call summary of the list.  None of them is correct for any template's constants.
TRIVIAL_BODIES: dict[str, tuple[str, ...]] = {
    "any": ("False", "True", "0", "1", "-1", "None", "[]"),
    "x": ("{x}", "-{x}", "abs({x})", "{x} * {x}", "{x} > 0"),
    "xy": ("{x}", "{y}", "-{x}", "{x} + {y}", "{x} - {y}", "{x} * {y}"),
    "l": ("{l}", "len({l})", "sum({l})", "max({l})", "min({l})", "sorted({l})", "{l}[::-1]", "{l}[1:]",
          "{l}[0]", "{l}[-1]"),
}
#: How far off a *near* constant is: ``k ± 1 ... k ± NEAR_CONSTANT`` (besides every other
#: constant in the template's range).
NEAR_CONSTANT = 3


def _problem_fill(p: Problem) -> tuple[CodeTemplate, dict[str, str], dict[str, int]]:
    """A code problem's template, names (from its prompt) and constants (from its key)."""
    t = _CODE_BY_NAME[p.key.split(":")[1]]
    consts = dict(zip(t.consts, map(int, p.key.split(":")[2:])))
    params = p.prompt.split("(", 1)[1].split(")", 1)[0].split(", ")
    names = {"l": params[0]} if t.args == "l" else {"x": params[0], "y": params[-1]}
    return t, names, consts


def trivial_bodies(p: Problem) -> dict[str, list[str]]:
    """Wrong completions of code problem ``p`` that its hidden tests must reject, by kind:

    - ``trivial``: :data:`TRIVIAL_BODIES` (constants, the argument itself, ``len``/``sum``/...
      of the list);
    - ``constant``: the template's reference body with every other constant in its range
      and every constant within :data:`NEAR_CONSTANT` of the right one (each constant varied
      on its own; for ``lin``, every other ``(k, m)`` pair in range);
    - ``near``: the template's near misses (``>=`` for ``>``, operands swapped, ...).

    Each completion is a full line, ``"    return ...\\n"``, as a model's would be."""
    t, names, consts = _problem_fill(p)
    fill = {**names, **{c: str(v) for c, v in consts.items()}}

    def line(body: str, values: dict[str, int] | None = None) -> str:
        return "    return " + body.format(**{**fill, **{c: str(v) for c, v in (values or {}).items()}}) + "\n"

    trivial = [line(b) for b in TRIVIAL_BODIES["any"] + TRIVIAL_BODIES[t.args]]
    others: list[dict[str, int]] = [dict(zip(t.consts, vs))
                                    for vs in itertools.product(range(t.lo, t.hi + 1), repeat=len(t.consts))]
    for c in t.consts:
        others += [{**consts, c: consts[c] + d} for d in range(-NEAR_CONSTANT, NEAR_CONSTANT + 1)]
    constant = list(dict.fromkeys(line(t.bodies[0], vs) for vs in others if vs != consts))
    return {"trivial": list(dict.fromkeys(trivial)), "constant": constant, "near": [line(b) for b in t.near]}


def same_output(a: Any, b: Any) -> bool:
    """Exact type-aware equality of plain JSON values (``True`` is not ``1``, ``1.0`` is not
    ``1``): what the sandbox's verdict checks for this task, for the in-process runs below."""
    if type(a) is not type(b):
        return False
    if type(a) is list:
        return len(a) == len(b) and all(map(same_output, a, b))
    if type(a) is dict:
        return a.keys() == b.keys() and all(same_output(a[k], b[k]) for k in a)
    return a == b


def _run_own_code(program: str, entry_point: str, cases: list[tuple[tuple[Any, ...], Any]]) -> bool:
    """Runs the generator's *own* programs in-process (the reference and the bodies of
    :func:`trivial_bodies`): never a model's output, which goes to the sandbox."""
    namespace: dict[str, Any] = {}
    try:
        exec(compile(program, "<benchgen>", "exec"), namespace)  # noqa: S102 - our own code, see the docstring
        fn = namespace[entry_point]
        return all(same_output(fn(*args), want) for args, want in cases)
    except Exception:  # noqa: BLE001 - a wrong body may raise anything (ZeroDivisionError, IndexError, ...)
        return False


#: How code is run for a verdict: ``run_code(program, entry_point, cases) -> passed``.
RunCode = Callable[[str, str, list[tuple[tuple[Any, ...], Any]]], bool]


def trivial_pass_rate(problems: list[Problem], run_code: RunCode | None = None,
                      kinds: tuple[str, ...] = ("trivial", "constant", "near")) -> dict[str, float]:
    """How often the bodies of :func:`trivial_bodies` pass the hidden tests of ``problems``
    (code problems): for each kind, ``kind`` is the share of (problem, body) pairs that pass (the
    pass@1 of a guesser drawing one such body at random: the *blind baseline* of the code task)
    and ``kind_any`` the share of problems that at least one body of the kind passes.

    ``run_code(program, entry_point, cases) -> passed`` defaults to running in-process, which
    is only for these bodies: they are the generator's own code.  ``kinds`` picks the kinds reported."""
    run = _run_own_code if run_code is None else run_code
    out: dict[str, float] = {}
    for kind in kinds:
        pairs = passed = anyp = 0
        for p in problems:
            cases = code_cases(p.meta)
            ok = [run(code_program(p.prompt, body), p.meta["entry_point"], cases) for body in trivial_bodies(p)[kind]]
            pairs, passed, anyp = pairs + len(ok), passed + sum(ok), anyp + any(ok)
        out[kind] = passed / pairs if pairs else 0.0
        out[f"{kind}_any"] = anyp / len(problems) if problems else 0.0
    return out


def code_program(prompt: str, completion: str) -> str:
    """The program a code completion makes: the prompt, then the completion."""
    return prompt + completion + "\n"


def canonical_program(completion: str) -> str:
    """A completion with comments, blank lines and spacing normalised (by the AST where it
    parses), to count *distinct* programs rather than distinct spellings."""
    try:
        return ast.unparse(ast.parse("def _f():\n" + completion if completion.startswith(" ") else completion))
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return re.sub(r"\s+", " ", completion).strip()


# ------------------------------------------------------------------------------------ arith

_ARITH_DIGITS = {"2d1a": (2, 1), "2da": (2, 2), "3da": (3, 3)}


def _column_steps(a: int, b: int) -> str:
    """Column addition, units first: ``8+6=14. 4+7+1=12.`` (the carry added as ``+1``)."""
    steps, carry = [], 0
    da, db = str(a)[::-1], str(b)[::-1]
    for i in range(max(len(da), len(db))):
        terms = [d[i] for d in (da, db) if i < len(d)] + (["1"] if carry else [])
        total = sum(int(t) for t in terms)
        steps.append(f"{'+'.join(terms)}={total}.")
        carry = total // 10
    return " ".join(steps)


def _arith_problem(rng: random.Random, split: str) -> Problem:
    kind = rng.choice(ARITH_KINDS)
    na, nb = _ARITH_DIGITS[kind]
    while True:
        a, b = rng.randint(10 ** (na - 1), 10 ** na - 1), rng.randint(max(1, 10 ** (nb - 1)), 10 ** nb - 1)
        key = f"arith:{kind}:{a}:{b}"
        if heldout(key, "arith") == (split == "eval"):
            break
    return Problem("arith", key, f"Question: What is {a} plus {b}?\nAnswer:",
                   f" {_column_steps(a, b)} #### {a + b}", {"target": str(a + b)})


def arith_answer(text: str) -> str | None:
    """The number after ``####`` (as for word problems), else None."""
    return gsm_answer(text)


# -------------------------------------------------------------------------------------- gsm

_NAMES = mathgen._NAMES
_ITEMS = mathgen._ITEMS
_OPS: dict[str, Callable[[int, int], int]] = {"+": lambda a, b: a + b, "-": lambda a, b: a - b,
                                              "*": lambda a, b: a * b}


@dataclass(frozen=True)
class GsmTemplate:
    """A two-step word problem on three numbers ``a, b, c``: ``question`` (with ``{n}`` a name,
    ``{it}`` an item), ``ranges`` (each number's bounds, inclusive, from the numbers before it:
    drawn one after the other, uniformly), and the steps: ``first = (i, op, j)`` computes
    ``nums[i] op nums[j]``, then ``then = (op, k)`` computes ``that op nums[k]``, the answer."""

    name: str
    question: str
    ranges: tuple[Callable[..., tuple[int, int]], ...]
    first: tuple[int, str, int]
    then: tuple[str, int]

    def steps(self, nums: tuple[int, ...]) -> list[tuple[int, str, int]]:
        """The two steps, as ``(left, op, right)`` on numbers."""
        i, op, j = self.first
        mid = _OPS[op](nums[i], nums[j])
        return [(nums[i], op, nums[j]), (mid, self.then[0], nums[self.then[1]])]

    def value(self, nums: tuple[int, ...]) -> int:
        """The answer."""
        return _apply(*self.steps(nums)[-1])

    def shortcuts(self, nums: tuple[int, ...]) -> dict[str, list[int]]:
        """What guessers who read the numbers but do not solve the problem answer, by kind (all
        equally likely within a kind): ``copy`` a number of the question; ``one_step``: one of
        the template's two operations on an ordered pair of the numbers (the first step's
        result among them: stopping early); ``wrong_pair``: the template's two steps with the
        first one on a wrong pair (either order) and the remaining number in the second."""
        ops = tuple(dict.fromkeys((self.first[1], self.then[0])))
        pairs = [(i, j) for i in range(3) for j in range(3) if i != j]
        ref = {self.first[0], self.first[2]}
        return {"copy": list(nums),
                "one_step": [_apply(nums[i], op, nums[j]) for op in ops for i, j in pairs],
                "wrong_pair": [_apply(_apply(nums[i], self.first[1], nums[j]), self.then[0], nums[3 - i - j])
                               for i, j in pairs if {i, j} != ref]}

    def valid(self, nums: tuple[int, ...]) -> bool:
        """Whether ``nums`` makes a problem: the answer is positive and no shortcut of
        :meth:`shortcuts` gives it (so copying a number, stopping after one step or pairing
        the wrong numbers never scores)."""
        v = self.value(nums)
        return v > 0 and all(v not in guesses for guesses in self.shortcuts(nums).values())


#: The word-problem templates, every number one digit.  Each has 230-450 valid number
#: triples, so 65+ held-out keys (``eval_problems`` takes the same number from each).
GSM_TEMPLATES: tuple[GsmTemplate, ...] = (
    GsmTemplate("bags", "{n} buys {a} bags with {b} {it} in each and eats {c} of them. How many {it} are left?",
                (lambda: (2, 9), lambda a: (2, 9), lambda a, b: (1, min(9, a * b - 1))), (0, "*", 1), ("-", 2)),
    GsmTemplate("boxes", "{n} has {a} boxes with {b} {it} in each and buys {c} more boxes. How many {it} does {n} "
                "have now?", (lambda: (1, 8), lambda a: (2, 9), lambda a, b: (1, 9 - a)), (0, "+", 2), ("*", 1)),
    GsmTemplate("buy_give", "{n} has {a} {it}. {n} buys {b} more and gives {c} away. How many {it} does {n} have "
                "now?", (lambda: (1, 9), lambda a: (1, 9), lambda a, b: (1, min(9, a + b - 1))), (0, "+", 1), ("-", 2)),
    GsmTemplate("days", "{n} collects {a} {it} a day for {b} days, then finds {c} more. How many {it} does {n} have?",
                (lambda: (2, 9), lambda a: (2, 9), lambda a, b: (1, 9)), (0, "*", 1), ("+", 2)),
)
_GSM_BY_NAME = {t.name: t for t in GSM_TEMPLATES}


def _apply(a: int, op: str, b: int) -> int:
    return _OPS[op](a, b)


def _gsm_key(t: GsmTemplate, nums: tuple[int, ...]) -> str:
    return f"gsm:{t.name}:" + ":".join(map(str, nums))


def _gsm_problem(rng: random.Random, split: str, template: str | None = None) -> Problem:
    """A word problem: the template drawn uniformly (or ``template``), then its numbers until
    they are valid and their key is in ``split``'s class.  Drawing the template first and
    splitting within it keeps the templates equally frequent in both splits."""
    t = _GSM_BY_NAME[template] if template is not None else rng.choice(GSM_TEMPLATES)
    while True:
        nums: tuple[int, ...] = ()
        for r in t.ranges:
            nums += (rng.randint(*r(*nums)),)
        if t.valid(nums) and heldout(_gsm_key(t, nums), "gsm") == (split == "eval"):
            break
    n, it = rng.choice(_NAMES), rng.choice(_ITEMS)
    q = t.question.format(n=n, it=it, **dict(zip("abc", nums)))
    steps = t.steps(nums)
    parts = [f"{a}{op}{b}={_apply(a, op, b)}." for a, op, b in steps]
    value = t.value(nums)
    return Problem("gsm", _gsm_key(t, nums), f"Question: {q}\nAnswer:", " " + " ".join(parts) + f" #### {value}",
                   {"target": str(value), "template": t.name})


def gsm_answer(text: str) -> str | None:
    """The number after ``####`` (GSM8K's strict format), else None."""
    m = re.search(r"####\s*(-?\d+)", text)
    return m.group(1) if m else None


def _gsm_space(t: GsmTemplate) -> Iterator[tuple[tuple[int, ...], float]]:
    """Every valid number triple of ``t`` with its probability under the generator (before the
    split), the sequential uniform draws renormalised over the valid triples."""
    def walk(prefix: tuple[int, ...], p: float) -> Iterator[tuple[tuple[int, ...], float]]:
        if len(prefix) == len(t.ranges):
            yield prefix, p
            return
        lo, hi = t.ranges[len(prefix)](*prefix)
        for v in range(lo, hi + 1):
            yield from walk(prefix + (v,), p / (hi - lo + 1))

    space = [(nums, p) for nums, p in walk((), 1.0) if t.valid(nums)]
    z = sum(p for _, p in space)
    return ((nums, p / z) for nums, p in space)


def gsm_answer_distribution(split: str = "train", template: str | None = None) -> dict[int, float]:
    """The exact distribution of gsm answers in ``split`` (all templates, equally likely, or one)."""
    ts = GSM_TEMPLATES if template is None else (_GSM_BY_NAME[template],)
    out: dict[int, float] = {}
    for t in ts:
        space = [(nums, p) for nums, p in _gsm_space(t) if heldout(_gsm_key(t, nums), "gsm") == (split == "eval")]
        z = sum(p for _, p in space)
        for nums, p in space:
            out[t.value(nums)] = out.get(t.value(nums), 0.0) + p / z / len(ts)
    return out


def gsm_chance_floors(problems: list[Problem] | None = None) -> dict[str, float]:
    """The pass@1 that guessers who do not solve the problem get on ``problems`` (default the
    held-out set, ``eval_problems("gsm", 200)``), exactly (each guesser's expected score, no
    sampling):

    - ``blind_mode``: number-blind, always the most frequent answer of the training split;
    - ``blind_sample``: number-blind, an answer drawn from the training split's answer
      distribution;
    - ``blind_template``: number-blind but template-aware, the most frequent training answer
      of the problem's template (reads the wording, ignores the numbers);
    - ``copy``, ``one_step``, ``wrong_pair``: myopic, the guesses of
      :meth:`GsmTemplate.shortcuts` (a number of the question copied at random; one right
      operation on a random pair; both steps with the first on a wrong pair), each 0 by
      construction (:meth:`GsmTemplate.valid`), computed all the same;
    - ``blind_oracle``: the best single answer for ``problems`` in hindsight (not a guesser
      one can build; an upper bound on every constant guess);
    - ``floor``: the largest of these (a conservative floor: a model scoring below it has
      shown nothing that a guesser of these kinds lacks)."""
    problems = eval_problems("gsm", 200) if problems is None else problems
    train = gsm_answer_distribution("train")
    mode = max(train, key=lambda v: (train[v], -v))
    tmode = {}
    for t in GSM_TEMPLATES:
        d = gsm_answer_distribution("train", t.name)
        tmode[t.name] = max(d, key=lambda v, d=d: (d[v], -v))
    sums = dict.fromkeys(("blind_mode", "blind_sample", "blind_template", "copy", "one_step", "wrong_pair"), 0.0)
    for p in problems:
        t = _GSM_BY_NAME[p.meta["template"]]
        nums = tuple(map(int, p.key.split(":")[2:]))
        target = int(p.meta["target"])
        guesses = t.shortcuts(nums)
        sums["blind_mode"] += target == mode
        sums["blind_sample"] += train.get(target, 0.0)
        sums["blind_template"] += target == tmode[t.name]
        for kind, vs in guesses.items():
            sums[kind] += sum(v == target for v in vs) / len(vs)
    out = {k: v / len(problems) for k, v in sums.items()}
    out["blind_oracle"] = max(collections.Counter(p.meta["target"] for p in problems).values()) / len(problems)
    out["floor"] = max(out.values())
    return out


# ------------------------------------------------------------------------------------- path

_NODES = "ABCDE"
_MAX_PATH_EDGES = 4


def simple_paths(adj: dict[str, set[str]], s: str, t: str, max_edges: int) -> list[tuple[str, ...]]:
    """Every simple path from ``s`` to ``t`` of at most ``max_edges`` edges, in ``adj``'s graph."""
    out: list[tuple[str, ...]] = []

    def walk(path: list[str]) -> None:
        if path[-1] == t:
            out.append(tuple(path))
            return
        if len(path) - 1 == max_edges:
            return
        for v in sorted(adj[path[-1]]):
            if v not in path:
                walk(path + [v])

    walk([s])
    return out


def _path_problem(rng: random.Random, split: str) -> Problem:
    while True:
        nodes = list(_NODES)
        rng.shuffle(nodes)
        edges = {tuple(sorted((nodes[i], rng.choice(nodes[:i])))) for i in range(1, len(nodes))}  # a tree
        while len(edges) < len(nodes) + 1:  # two more edges than a tree: cycles, so several paths
            a, b = rng.sample(nodes, 2)
            edges.add(tuple(sorted((a, b))))
        s, t = rng.sample(nodes, 2)
        adj: dict[str, set[str]] = {v: set() for v in nodes}
        for a, b in edges:
            adj[a].add(b)
            adj[b].add(a)
        paths = simple_paths(adj, s, t, _MAX_PATH_EDGES)
        if len(paths) < 2 or t in adj[s]:
            continue  # a decision needs at least two answers, and none of them the direct edge
        key = "path:" + ",".join(a + b for a, b in sorted(edges)) + f":{s}{t}"
        if heldout(key, "path") == (split == "eval"):
            break
    listed = [f"{a}-{b}" if rng.random() < 0.5 else f"{b}-{a}" for a, b in sorted(edges)]
    rng.shuffle(listed)
    prompt = f"Graph: {' '.join(listed)}\nPath from {s} to {t}:"
    answer = " " + " ".join(rng.choice(paths)) + "\n"
    return Problem("path", key, prompt, answer, {"edges": sorted(a + b for a, b in edges), "source": s, "target": t,
                                                 "n_paths": len(paths)})


def path_blind_rate(problems: list[Problem]) -> float:
    """The exact pass@1 of the best graph-blind guess on path problems: the start, ``k``
    distinct other nodes in random order, the end, with the one ``k`` (1-3 inner nodes) that
    does best over ``problems``.  It ignores the edge list (it knows the node set and the
    answers' length distribution only): a model that never reads the graph scores at most
    about this, so it is the path task's chance."""
    rates = {}
    for k in (1, 2, 3):
        total = 0.0
        for p in problems:
            s, t = p.meta["source"], p.meta["target"]
            seqs = list(itertools.permutations([v for v in _NODES if v not in (s, t)], k))
            total += sum(path_valid(p.meta, " ".join((s, *mid, t))) for mid in seqs) / len(seqs)
        rates[k] = total / len(problems)
    return max(rates.values())


def path_answer(text: str) -> tuple[str, ...]:
    """The node letters of a generation's first line."""
    return tuple(text.strip("\n").split("\n")[0].split()) if text.strip() else ()


def path_valid(meta: dict[str, Any], text: str) -> bool:
    """Whether the first line of ``text`` is a simple path from source to target along edges."""
    nodes = path_answer(text)
    edges = {frozenset(e) for e in meta["edges"]}
    return (len(nodes) >= 2 and nodes[0] == meta["source"] and nodes[-1] == meta["target"]
            and len(set(nodes)) == len(nodes) and all(len(v) == 1 for v in nodes)
            and all(frozenset((a, b)) in edges for a, b in itertools.pairwise(nodes)))


# ------------------------------------------------------------------------------- generation

_MAKERS: dict[str, Callable[[random.Random, str], Problem]] = {
    "code": _code_problem, "arith": _arith_problem, "gsm": _gsm_problem, "path": _path_problem}


def draw(family: str, rng: random.Random, split: str) -> Problem:
    """One problem of ``family`` from the ``train`` or ``eval`` split."""
    if family not in _MAKERS:
        raise ValueError(f"benchmark family {family!r} is not allowed; allowed: {list(FAMILIES)}")
    if split not in ("train", "eval"):
        raise ValueError(f"split {split!r} is not allowed; allowed: 'train', 'eval'")
    return _MAKERS[family](rng, split)


def eval_problems(family: str, n: int, seed: int = 0) -> list[Problem]:
    """``n`` held-out problems of ``family`` with distinct keys, in a fixed order.  Word problems
    (``gsm``) are drawn template by template and interleaved: each template has ``n // T`` or one
    more, and the first ``m`` of ``n`` problems are ``eval_problems("gsm", m)``."""
    if family == "gsm":  # template by template, so the templates are equally represented
        per = []
        for i, t in enumerate(GSM_TEMPLATES):
            trng = random.Random(f"bench-eval:gsm:{t.name}:{seed}")
            per.append(mathgen.distinct(lambda trng=trng, t=t: _gsm_problem(trng, "eval", t.name), lambda p: p.key,
                                        n // len(GSM_TEMPLATES) + (i < n % len(GSM_TEMPLATES)),
                                        f"held-out gsm {t.name}"))
        return [ps[j] for j in range(max(map(len, per), default=0)) for ps in per if j < len(ps)]
    rng = random.Random(f"bench-eval:{family}:{seed}")
    return mathgen.distinct(lambda: draw(family, rng, "eval"), lambda p: p.key, n, f"held-out {family}")


def document(p: Problem) -> str:
    """A training document: one problem, prompt then answer."""
    return p.text


def training_documents(n: int, seed: int = 0, mix: dict[str, float] | None = None) -> Iterator[Problem]:
    """``n`` training problems, families drawn by ``mix`` (default :data:`MIX`)."""
    mix = MIX if mix is None else mix
    bad = [f for f in mix if f not in FAMILIES]
    if bad or not mix or any(w < 0 for w in mix.values()) or sum(mix.values()) <= 0:
        raise ValueError(f"mix {mix!r} is not allowed: non-negative weights over {list(FAMILIES)}, not all 0")
    rng = random.Random(f"bench-train:{seed}")
    fams, weights = zip(*sorted(mix.items()))
    for _ in range(n):
        yield draw(rng.choices(fams, weights)[0], rng, "train")


# ---------------------------------------------------------------------------------- scoring

def canonical_output(family: str, completion: str) -> str:
    """What two completions must share to count as the same answer (for diversity)."""
    if family == "code":
        return canonical_program(completion.split("\n\n")[0])
    if family == "path":
        return " ".join(path_answer(completion))
    if family == "gsm":
        return re.sub(r"\s+", " ", completion.split("####")[0]).strip() + f" #### {gsm_answer(completion)}"
    return str(arith_answer(completion))


def score_text(family: str, doc: dict[str, Any], completion: str, run_code: RunCode | None = None) -> bool:
    """Whether ``completion`` solves ``doc`` (an evaluation row, see the lm-eval builder).

    Code needs ``run_code(program, entry_point, cases) -> passed`` (:func:`code_cases`): the
    sandbox, which runs the program on the cases' arguments and compares the outputs outside
    it; never called here on its own."""
    if family == "code":
        if run_code is None:
            raise ValueError("scoring code needs run_code (the sandbox of ftstudy.eval.suite.execution)")
        return run_code(code_program(doc["prompt"], completion), doc["entry_point"], code_cases(doc))
    if family == "arith":
        return arith_answer(completion) == doc["target"]
    if family == "gsm":
        return gsm_answer(completion) == doc["target"]
    if family == "path":
        return path_valid(doc, completion)
    raise ValueError(f"benchmark family {family!r} is not allowed; allowed: {list(FAMILIES)}")


def eval_row(p: Problem, index: int) -> dict[str, Any]:
    """An lm-eval data row for problem ``p``."""
    return {"id": f"{p.family}-{index}", "key": p.key, "prompt": p.prompt, "answer": p.answer, **p.meta}
