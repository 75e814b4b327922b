"""The CPU-scale benchmark suite (issue 15): generated problems that a model of a few
hundred thousand parameters, trained for minutes, solves part of the time.

Four families, each a deterministic function of a seed, each with a training split and a
held-out evaluation split that never overlap:

- ``code``: MBPP-like function synthesis.  The prompt is a signature and a docstring
  (``def f(x):\\n    \"\"\"Return x plus 3.\"\"\"\\n``), the answer a one-line body.  Hidden
  unit tests (three asserts on inputs drawn from the problem's key) decide a pass, run in
  the sandbox of :mod:`ftstudy.eval.suite.execution`.  Many templates accept several
  programs (``x + 3`` and ``3 + x``; ``max(xs)`` and ``sorted(xs)[-1]``): the training
  answers draw one of them at random, so distinct correct programs can be counted.
- ``arith``: multi-digit addition (``Question: What is 48 plus 76?``: a 2-digit number plus a
  1-digit one, two 2-digit and two 3-digit numbers) answered by column addition, units first,
  then the sum (``Answer: 8+6=14. 4+7+1=12. #### 124``); the number after ``####`` is checked
  exactly.  (Answering with the sum alone stayed at 5% after 1,400 steps: see the
  calibration notes.)
- ``gsm``: two-step word problems with one-digit numbers whose answer shows its steps and ends
  with ``#### n`` (GSM8K's format); the number after ``####`` is checked exactly.
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
import hashlib
import itertools
import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ftstudy.tasks import mathgen

__all__ = ["FAMILIES", "HELDOUT_MOD", "MIX", "ARITH_KINDS", "CODE_TEMPLATES", "Problem", "heldout", "in_heldout_class",
           "draw", "eval_problems", "training_documents", "document", "code_program", "gsm_answer", "path_valid",
           "simple_paths", "path_answer", "arith_answer", "score_text", "canonical_output", "canonical_program", "eval_row"]

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
    needs (tests, graph, target number)."""

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
    function, the argument kinds and the constants' range."""

    name: str
    doc: str
    bodies: tuple[str, ...]
    ref: Callable[..., Any]
    args: str  # "x", "xy" or "l" (one list)
    consts: tuple[str, ...] = ("k",)
    lo: int = 1
    hi: int = 49


def _t(name, doc, bodies, ref, args="x", consts=("k",), lo=1, hi=49) -> CodeTemplate:
    return CodeTemplate(name, doc, tuple(bodies), ref, args, tuple(consts), lo, hi)


CODE_TEMPLATES: tuple[CodeTemplate, ...] = (
    _t("add", "Return {x} plus {k}.", ("{x} + {k}", "{k} + {x}"), lambda x, k: x + k),
    _t("sub", "Return {x} minus {k}.", ("{x} - {k}", "-{k} + {x}"), lambda x, k: x - k),
    _t("mul", "Return {x} times {k}.", ("{x} * {k}", "{k} * {x}"), lambda x, k: x * k, lo=2),
    _t("lin", "Return {k} times {x} plus {m}.", ("{k} * {x} + {m}", "{x} * {k} + {m}", "{m} + {k} * {x}"),
       lambda x, k, m: k * x + m, consts=("k", "m"), lo=2, hi=12),
    _t("mod", "Return the remainder of {x} divided by {k}.", ("{x} % {k}",), lambda x, k: x % k, lo=2, hi=19),
    _t("sumk", "Return the sum of {x} and {k} times {y}.", ("{x} + {k} * {y}", "{k} * {y} + {x}", "{x} + {y} * {k}"),
       lambda x, y, k: x + k * y, args="xy", lo=2),
    _t("gt", "Return True if {x} is greater than {k}.", ("{x} > {k}", "{k} < {x}"), lambda x, k: x > k),
    _t("count", "Return how many elements of {l} are greater than {k}.",
       ("len([e for e in {l} if e > {k}])", "sum(1 for e in {l} if e > {k})"),
       lambda xs, k: sum(1 for e in xs if e > k), args="l"),
    _t("filter", "Return the elements of {l} that are greater than {k}.",
       ("[e for e in {l} if e > {k}]", "list(filter(lambda e: e > {k}, {l}))"),
       lambda xs, k: [e for e in xs if e > k], args="l"),
    _t("addall", "Return {l} with {k} added to every element.",
       ("[e + {k} for e in {l}]", "[{k} + e for e in {l}]", "list(map(lambda e: e + {k}, {l}))"),
       lambda xs, k: [e + k for e in xs], args="l"),
    _t("mulall", "Return {l} with every element multiplied by {k}.",
       ("[e * {k} for e in {l}]", "[{k} * e for e in {l}]"), lambda xs, k: [e * k for e in xs], args="l", lo=2),
    _t("first", "Return the first {k} elements of {l}.", ("{l}[:{k}]", "{l}[0:{k}]"), lambda xs, k: xs[:k],
       args="l", hi=9),
    _t("sumgt", "Return the sum of the elements of {l} that are greater than {k}.",
       ("sum(e for e in {l} if e > {k})", "sum([e for e in {l} if e > {k}])"),
       lambda xs, k: sum(e for e in xs if e > k), args="l"),
    _t("maxk", "Return the largest element of {l} plus {k}.", ("max({l}) + {k}", "{k} + max({l})",
                                                                 "sorted({l})[-1] + {k}"),
       lambda xs, k: max(xs) + k, args="l"),
)
_CODE_BY_NAME = {t.name: t for t in CODE_TEMPLATES}


def _code_inputs(t: CodeTemplate, rng: random.Random) -> list[tuple[Any, ...]]:
    """Three test inputs: ints for x/y, non-empty lists of ints 0-60 for l."""
    out = []
    for _ in range(3):
        if t.args == "x":
            out.append((rng.randint(-20, 40),))
        elif t.args == "xy":
            out.append((rng.randint(-20, 40), rng.randint(-20, 40)))
        else:
            out.append(([rng.randint(0, 60) for _ in range(rng.randint(3, 7))],))
    return out


def _code_problem(rng: random.Random, split: str) -> Problem:
    while True:
        t = rng.choice(CODE_TEMPLATES)
        consts = {c: rng.randint(t.lo, t.hi) for c in t.consts}
        key = f"code:{t.name}:" + ":".join(str(consts[c]) for c in t.consts)
        if heldout(key, "code") == (split == "eval"):
            break
    names = {"x": rng.choice(_XNAMES), "l": rng.choice(_LNAMES)}
    names["y"] = rng.choice([n for n in _XNAMES if n != names["x"]])
    fname = rng.choice(_FNAMES)
    params = {"x": names["x"], "xy": f"{names['x']}, {names['y']}", "l": names["l"]}[t.args]
    fill = {**names, **{c: str(v) for c, v in consts.items()}}
    doc = t.doc.format(**fill)
    prompt = f'def {fname}({params}):\n    """{doc}"""\n'
    body = "    return " + rng.choice(t.bodies).format(**fill) + "\n"
    # Tests depend only on the key, so every wording of a problem has the same hidden tests.
    trng = random.Random(key)
    tests = []
    for args in _code_inputs(t, trng):
        want = t.ref(*args, *(consts[c] for c in t.consts))
        tests.append(f"assert {fname}({', '.join(repr(a) for a in args)}) == {want!r}")
    return Problem("code", key, prompt, body, {"entry_point": fname, "tests": "\n".join(tests) + "\n",
                                               "template": t.name})


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


def _gsm_buy_give(rng, n, it):
    a, b = rng.randint(1, 9), rng.randint(1, 9)
    c = rng.randint(1, a + b)
    q = f"{n} has {a} {it}. {n} buys {b} more and gives {c} away. How many {it} does {n} have now?"
    return q, (a, b, c), [(a, "+", b), (a + b, "-", c)]


def _gsm_bags(rng, n, it):
    a, b = rng.randint(2, 4), rng.randint(2, 4)
    c = rng.randint(1, a * b)
    q = f"{n} buys {a} bags with {b} {it} in each and eats {c} of them. How many {it} are left?"
    return q, (a, b, c), [(a, "*", b), (a * b, "-", c)]


def _gsm_times(rng, n, it):
    a, b = rng.randint(2, 9), rng.randint(2, 3)
    m = rng.choice([x for x in _NAMES if x != n])
    q = f"{n} has {a} {it} and {m} has {b} times as many. How many {it} do they have together?"
    return q, (a, b), [(a, "*", b), (a, "+", a * b)]


def _gsm_days(rng, n, it):
    a, b, c = rng.randint(2, 4), rng.randint(2, 4), rng.randint(1, 9)
    q = f"{n} collects {a} {it} a day for {b} days, then finds {c} more. How many {it} does {n} have?"
    return q, (a, b, c), [(a, "*", b), (a * b, "+", c)]


_GSM_TEMPLATES = {"buy_give": _gsm_buy_give, "bags": _gsm_bags, "times": _gsm_times, "days": _gsm_days}


def _apply(a: int, op: str, b: int) -> int:
    return {"+": a + b, "-": a - b, "*": a * b}[op]


def _gsm_problem(rng: random.Random, split: str) -> Problem:
    while True:
        name = rng.choice(sorted(_GSM_TEMPLATES))
        n, it = rng.choice(_NAMES), rng.choice(_ITEMS)
        q, nums, steps = _GSM_TEMPLATES[name](rng, n, it)
        key = f"gsm:{name}:" + ":".join(map(str, nums))
        if heldout(key, "gsm") == (split == "eval"):
            break
    parts = []
    for a, op, b in steps:
        parts.append(f"{a}{op}{b}={_apply(a, op, b)}.")
    value = _apply(*steps[-1])
    return Problem("gsm", key, f"Question: {q}\nAnswer:", " " + " ".join(parts) + f" #### {value}",
                   {"target": str(value), "template": name})


def gsm_answer(text: str) -> str | None:
    """The number after ``####`` (GSM8K's strict format), else None."""
    m = re.search(r"####\s*(-?\d+)", text)
    return m.group(1) if m else None


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
    """``n`` held-out problems of ``family`` with distinct keys, in a fixed order."""
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


def score_text(family: str, doc: dict[str, Any], completion: str,
               run_code: Callable[[str, str], bool] | None = None) -> bool:
    """Whether ``completion`` solves ``doc`` (an evaluation row, see the lm-eval builder).

    Code needs ``run_code(program, tests) -> passed``: the sandbox, never called here on its own."""
    if family == "code":
        if run_code is None:
            raise ValueError("scoring code needs run_code (the sandbox of ftstudy.eval.suite.execution)")
        return run_code(code_program(doc["prompt"], completion), doc["tests"])
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
