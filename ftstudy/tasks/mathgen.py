"""Generated math text for the ``code-math`` corpus and its held-out evaluation sets.

Two kinds of text, both deterministic functions of a seed:

- **Arithmetic in the GPT-3 format** (Brown et al. 2020, §3.9.1): ``Question: What is 48
  plus 76?\\nAnswer: 124``.  Kinds ``2da`` … ``5da`` (addition), ``2ds`` … ``5ds``
  (subtraction), ``2dm`` (2-digit multiplication) and ``1dc`` (single-digit composite,
  ``(a op b) op c``).
- **GSM8K-style word problems**: a question, then an answer whose steps are written
  ``a*b=<<a*b=c>>c`` and which ends with ``#### n`` (GSM8K's answer format).

Held-out material, never in the training corpus:

- arithmetic: every problem whose key (kind and operands) hashes into the held-out class
  (1 in ``HELDOUT_MOD``) is reserved for evaluation; training draws skip them;
- word problems: the templates in ``EVAL_TEMPLATES`` (4 of 16) appear only in evaluation;
  training problems never draw an operand ending in 7 (``RESERVED_DIGIT``; a derived
  quantity such as a total may still end in 7), and every evaluation problem draws at
  least one.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

__all__ = ["ARITH_KINDS", "HELDOUT_MOD", "RESERVED_DIGIT", "TRAIN_TEMPLATES", "EVAL_TEMPLATES", "Problem",
           "arithmetic", "word_problem", "distinct", "arithmetic_document", "word_problem_document", "format_problem"]

HELDOUT_MOD = 10
RESERVED_DIGIT = 7
ARITH_KINDS = ("2da", "3da", "4da", "5da", "2ds", "3ds", "4ds", "5ds", "2dm", "1dc")


@dataclass(frozen=True)
class Problem:
    question: str  # without "Question: "
    answer: str  # full answer text (steps and "#### n" for word problems, the number for arithmetic)
    target: str  # the final number, as a string
    kind: str  # arithmetic kind or template name


def distinct(draw: Callable[[], T], key: Callable[[T], str], n: int, what: str, tries: int = 500) -> list[T]:
    """``n`` results of ``draw()`` with distinct ``key``, in draw order; ValueError naming
    ``what`` if ``tries * n`` draws do not give that many."""
    seen: set[str] = set()
    out: list[T] = []
    for _ in range(tries * n):
        p = draw()
        if key(p) not in seen:
            seen.add(key(p))
            out.append(p)
            if len(out) == n:
                return out
    raise ValueError(f"could not draw {n} distinct {what} problems (found {len(out)})")


def format_problem(p: Problem) -> str:
    """The text a document contains and a zero-shot prompt is completed to."""
    return f"Question: {p.question}\nAnswer: {p.answer}"


def _heldout(key: str) -> bool:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") % HELDOUT_MOD == 0


def _draw_arith(kind: str, rng: random.Random) -> tuple[str, int, str]:
    if kind == "1dc":
        a, b, c = (rng.randint(1, 9) for _ in range(3))
        o1, o2 = rng.choice("+-*"), rng.choice("+-*")
        expr = f"({a} {o1} {b}) {o2} {c}"
        return f"What is {expr}?", _eval_ops(a, o1, b, o2, c), f"1dc:{a}{o1}{b}{o2}{c}"
    n = int(kind[0])
    lo, hi = 10 ** (n - 1), 10 ** n - 1
    a, b = rng.randint(lo, hi), rng.randint(lo, hi)
    op = kind[2]
    word, value = {"a": ("plus", a + b), "s": ("minus", a - b), "m": ("times", a * b)}[op]
    return f"What is {a} {word} {b}?", value, f"{kind}:{a}:{b}"


def _eval_ops(a: int, o1: str, b: int, o2: str, c: int) -> int:
    ops: dict[str, Callable[[int, int], int]] = {"+": lambda x, y: x + y, "-": lambda x, y: x - y,
                                                 "*": lambda x, y: x * y}
    return ops[o2](ops[o1](a, b), c)


def arithmetic(kind: str, rng: random.Random, split: str) -> Problem:
    """One GPT-3-format arithmetic problem of ``kind`` from the ``train`` or ``eval`` split."""
    if kind not in ARITH_KINDS:
        raise ValueError(f"arithmetic kind {kind!r} is not allowed; allowed: {list(ARITH_KINDS)}")
    if split not in ("train", "eval"):
        raise ValueError(f"split {split!r} is not allowed; allowed: 'train', 'eval'")
    while True:
        q, value, key = _draw_arith(kind, rng)
        if _heldout(key) == (split == "eval"):
            return Problem(q, str(value), str(value), kind)


# ---------------------------------------------------------------- word problems

_NAMES = ("Ava", "Ben", "Chloe", "Dan", "Emma", "Farid", "Grace", "Hugo", "Ines", "Jon", "Kira", "Liam", "Maya",
          "Noah", "Olga", "Pablo", "Quinn", "Rosa", "Sami", "Tara", "Umar", "Vera", "Wen", "Yuki", "Zoe")
_ITEMS = ("apples", "pencils", "stickers", "marbles", "cookies", "books", "cards", "stamps", "shells", "buttons")


def _step(a: int, op: str, b: int) -> tuple[str, int]:
    value = {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op]
    return f"{a}{op}{b}=<<{a}{op}{b}={value}>>{value}", value


# A template takes (rng, operand drawer) and returns (question, [answer lines], final value).
Template = Callable[[random.Random, Callable[[int, int], int]], tuple[str, list[str], int]]


def _t_buy_more(rng, num):
    n, it = rng.choice(_NAMES), rng.choice(_ITEMS)
    a, b, c = num(2, 99), num(2, 12), num(2, 20)
    s1, v1 = _step(b, "*", c)
    s2, v2 = _step(a, "+", v1)
    return (f"{n} has {a} {it}. {n} buys {b} packs with {c} {it} each. How many {it} does {n} have now?",
            [f"The packs hold {s1} {it}.", f"{n} now has {s2} {it}."], v2)


# The word-problem templates below share one shape on purpose: each is a problem family written
# as code (names, operands, two worked steps, the answer); what differs is the story and the
# operations, which is the point of having several.
def _t_give_away(rng, num):
    n, m, it = rng.choice(_NAMES), rng.choice(_NAMES), rng.choice(_ITEMS)
    b, c = num(2, 40), num(2, 40)
    a = num(b + c, b + c + 99)
    s1, v1 = _step(b, "+", c)
    s2, v2 = _step(a, "-", v1)
    return (f"{n} had {a} {it}. {n} gave {b} to {m} and {c} to a friend. How many {it} are left?",
            [f"{n} gave away {s1} {it}.", f"{n} has {s2} {it} left."], v2)


def _t_weekly(rng, num):
    n = rng.choice(_NAMES)
    a, d, w = num(2, 30), num(2, 7), num(2, 9)
    s1, v1 = _step(a, "*", d)
    s2, v2 = _step(v1, "*", w)
    return (f"{n} reads {a} pages a day, {d} days a week. How many pages does {n} read in {w} weeks?",
            [f"In a week {n} reads {s1} pages.", f"In {w} weeks that is {s2} pages."], v2)


def _t_share(rng, num):
    n, it = rng.choice(_NAMES), rng.choice(_ITEMS)
    k, each = num(2, 12), num(2, 30)
    extra = num(2, 20)
    total = k * each + extra
    s1, v1 = _step(total, "-", extra)
    s2, v2 = _step(v1, "/", k)
    return (f"{n} has {total} {it} and keeps {extra}. The rest are shared equally among {k} friends. "
            f"How many {it} does each friend get?",
            [f"{n} shares {s1} {it}.", f"Each friend gets {s2} {it}."], v2)


def _t_price(rng, num):
    n, it = rng.choice(_NAMES), rng.choice(_ITEMS)
    p, q, paid_extra = num(2, 25), num(2, 12), num(2, 50)
    s1, v1 = _step(p, "*", q)
    paid = v1 + paid_extra
    s2, v2 = _step(paid, "-", v1)
    return (f"One pack of {it} costs ${p}. {n} buys {q} packs and pays with ${paid}. How much change does {n} get?",
            [f"The packs cost {s1} dollars.", f"The change is {s2} dollars."], v2)


def _t_rows(rng, num):
    n = rng.choice(_NAMES)
    r, c, m = num(2, 20), num(2, 20), num(2, 30)
    s1, v1 = _step(r, "*", c)
    s2, v2 = _step(v1, "-", m) if m < v1 else _step(v1, "+", m)
    verb, how = ("are empty", "taken") if m < v1 else ("are added", "there")
    return (f"A hall has {r} rows of {c} chairs. Then {m} chairs {verb}. How many chairs are {how} now?",
            [f"The hall has {s1} chairs.", f"Now {s2} chairs are {how}."], v2)


def _t_savings(rng, num):
    n = rng.choice(_NAMES)
    a, s, w = num(2, 99), num(2, 40), num(2, 12)
    s1, v1 = _step(s, "*", w)
    s2, v2 = _step(a, "+", v1)
    return (f"{n} has ${a} saved and saves ${s} every week. How much will {n} have after {w} weeks?",
            [f"{n} saves {s1} dollars.", f"{n} will have {s2} dollars."], v2)


def _t_two_friends(rng, num):
    n, m, it = rng.choice(_NAMES), rng.choice(_NAMES), rng.choice(_ITEMS)
    a, k = num(2, 50), num(2, 9)
    s1, v1 = _step(a, "*", k)
    s2, v2 = _step(a, "+", v1)
    return (f"{n} has {a} {it}. {m} has {k} times as many. How many {it} do they have together?",
            [f"{m} has {s1} {it}.", f"Together they have {s2} {it}."], v2)


def _t_trips(rng, num):
    n = rng.choice(_NAMES)
    km, trips, days = num(2, 40), num(2, 4), num(2, 30)
    s1, v1 = _step(km, "*", trips)
    s2, v2 = _step(v1, "*", days)
    return (f"{n} drives {km} km per trip and makes {trips} trips a day. How many km does {n} drive in {days} days?",
            [f"Each day {n} drives {s1} km.", f"In {days} days {n} drives {s2} km."], v2)


def _t_boxes(rng, num):
    it = rng.choice(_ITEMS)
    per, boxes, broken = num(2, 24), num(2, 30), num(2, 20)
    s1, v1 = _step(per, "*", boxes)
    broken = min(broken, v1 - 1)
    s2, v2 = _step(v1, "-", broken)
    return (f"A shop gets {boxes} boxes with {per} {it} in each. {broken} {it} are damaged. "
            f"How many {it} can the shop sell?",
            [f"The shop gets {s1} {it}.", f"It can sell {s2} {it}."], v2)


def _t_class(rng, num):
    g, b, k = num(2, 30), num(2, 30), num(2, 9)
    s1, v1 = _step(g, "+", b)
    s2, v2 = _step(v1, "*", k)
    return (f"A class has {g} girls and {b} boys. Each student needs {k} notebooks. "
            f"How many notebooks does the class need?",
            [f"There are {s1} students.", f"They need {s2} notebooks."], v2)


def _t_garden(rng, num):
    n = rng.choice(_NAMES)
    rows, per, eaten = num(2, 20), num(2, 20), num(2, 30)
    s1, v1 = _step(rows, "*", per)
    eaten = min(eaten, v1 - 1)
    s2, v2 = _step(v1, "-", eaten)
    return (f"{n} plants {rows} rows of {per} carrots. Rabbits eat {eaten} carrots. How many carrots are left?",
            [f"{n} planted {s1} carrots.", f"There are {s2} carrots left."], v2)


# Evaluation-only templates: new stories and step structures built from the same operations.
def _t_bakery(rng, num):
    a, b, c = num(2, 60), num(2, 60), num(2, 9)
    s1, v1 = _step(a, "+", b)
    s2, v2 = _step(v1, "*", c)
    return (f"A bakery makes {a} muffins in the morning and {b} in the afternoon, every day. "
            f"How many muffins does it make in {c} days?",
            [f"Each day it makes {s1} muffins.", f"In {c} days it makes {s2} muffins."], v2)


def _t_tickets(rng, num):
    n = rng.choice(_NAMES)
    adult, child, na, nc = num(5, 40), num(2, 20), num(2, 9), num(2, 9)
    s1, v1 = _step(adult, "*", na)
    s2, v2 = _step(child, "*", nc)
    s3, v3 = _step(v1, "+", v2)
    return (f"Adult tickets cost ${adult} and child tickets cost ${child}. {n} buys {na} adult and {nc} child "
            f"tickets. How much does {n} pay?",
            [f"Adult tickets cost {s1} dollars.", f"Child tickets cost {s2} dollars.", f"{n} pays {s3} dollars."], v3)


def _t_library(rng, num):
    start, lent, back = num(50, 99), num(2, 40), num(2, 40)
    lent = min(lent, start - 1)
    s1, v1 = _step(start, "-", lent)
    s2, v2 = _step(v1, "+", back)
    return (f"A library shelf holds {start} books. {lent} books are lent out and later {back} other books are "
            f"returned to the shelf. How many books are on the shelf now?",
            [f"After lending, {s1} books remain.", f"After the returns there are {s2} books."], v2)


def _t_team(rng, num):
    teams, players, subs = num(2, 12), num(5, 11), num(2, 5)
    s1, v1 = _step(players, "+", subs)
    s2, v2 = _step(teams, "*", v1)
    return (f"A tournament has {teams} teams. Each team has {players} players and {subs} substitutes. "
            f"How many people play in the tournament?",
            [f"Each team has {s1} people.", f"The tournament has {s2} people."], v2)


TRAIN_TEMPLATES: dict[str, Template] = {
    "buy_more": _t_buy_more, "give_away": _t_give_away, "weekly": _t_weekly, "share": _t_share,
    "price": _t_price, "rows": _t_rows, "savings": _t_savings, "two_friends": _t_two_friends,
    "trips": _t_trips, "boxes": _t_boxes, "class": _t_class, "garden": _t_garden,
}
EVAL_TEMPLATES: dict[str, Template] = {
    "bakery": _t_bakery, "tickets": _t_tickets, "library": _t_library, "team": _t_team,
}


def word_problem(rng: random.Random, split: str, template: str | None = None) -> Problem:
    """One GSM8K-style problem: training templates and operands, or held-out ones (split='eval')."""
    if split not in ("train", "eval"):
        raise ValueError(f"split {split!r} is not allowed; allowed: 'train', 'eval'")
    table = TRAIN_TEMPLATES if split == "train" else EVAL_TEMPLATES
    if template is not None and template not in table:
        raise ValueError(f"template {template!r} is not in the {split} templates; allowed: {sorted(table)}")
    name = template or rng.choice(sorted(table))
    while True:
        used: list[int] = []

        def num(lo: int, hi: int) -> int:
            while True:
                v = rng.randint(lo, hi)
                reserved = v % 10 == RESERVED_DIGIT
                if split == "eval" or not reserved:
                    used.append(v)
                    return v

        q, lines, value = table[name](rng, num)
        if value < 0:
            continue
        if split == "eval" and not any(v % 10 == RESERVED_DIGIT for v in used):
            continue
        return Problem(q, "\n".join(lines) + f"\n#### {value}", str(value), name)


def arithmetic_document(rng: random.Random, n: int = 40) -> str:
    """A training document: n arithmetic problems of mixed kinds, blank-line separated."""
    return "\n\n".join(format_problem(arithmetic(rng.choice(ARITH_KINDS), rng, "train")) for _ in range(n))


def word_problem_document(rng: random.Random, n: int = 10) -> str:
    """A training document: n word problems from the training templates."""
    return "\n\n".join(format_problem(word_problem(rng, "train")) for _ in range(n))


def documents(kind: str, n_docs: int, seed: int) -> Iterator[str]:
    """Deterministic training documents of one kind ('arithmetic' or 'word_problems')."""
    makers = {"arithmetic": arithmetic_document, "word_problems": word_problem_document}
    if kind not in makers:
        raise ValueError(f"math kind {kind!r} is not allowed; allowed: {sorted(makers)}")
    rng = random.Random(f"{kind}:{seed}")
    for _ in range(n_docs):
        yield makers[kind](rng)
