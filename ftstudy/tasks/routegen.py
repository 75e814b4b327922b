"""Route choice with dead-end decoys: a decision benchmark where look-ahead is needed.

The prompt gives a graph on 12–17 letter nodes as adjacency lists (``Graph: Abc Bad ...``)
and asks for a route from a start to an end node (``Route from A to D:``); the answer is the
route, each node before the end with its neighbour list copied from the prompt
(`` A(bc) B(ad) D``); any simple path along the graph's edges is a valid answer.  The graph is built so
that a model must *decide* and must *look ahead*:

- **main**: start and end are joined by exactly two node-disjoint routes of 2–3 inner nodes
  each, and three dead-end corridors of 2–3 nodes hang off the graph: two off the start, one
  off an inner node of one route.  A walker that follows edges and takes any unvisited
  neighbour, with no look-ahead, succeeds with probability 1/2 · (1/2 · 1 + 1/2 · 1/2) = 0.375;
  a guess that ignores the edge list succeeds about never.
- **control "no decoys"** (condition ``two_routes``): the two routes alone.  A decision
  without look-ahead: the walker succeeds always.
- **control "one route"** (condition ``one_route``): one route plus the three corridors.
  Look-ahead without a decision: one valid answer (the walker succeeds 1/3 · 1/2 = 1/6 of the
  time).

If the paper's argument holds (a latent lets the model decide the route once, up front,
instead of token by token), the Free model's gain should be largest in the main condition:
the comparison is a difference in differences across the three conditions.

Split: a problem's key is its condition, its edge set and its *unordered* pair of end points,
hashed into the held-out class (1 in :data:`HELDOUT_MOD`), so a held-out graph never appears
in training with its end points swapped.  Torch-free.
"""

from __future__ import annotations

import itertools
import random
import re
import string
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ftstudy.tasks import benchgen, mathgen

__all__ = ["CONDITIONS", "HELDOUT_MOD", "RouteProblem", "route_key", "heldout", "draw", "eval_problems",
           "training_problems", "answer_nodes", "route_valid", "edge_validity", "route_of", "walker_success",
           "walker_rate", "adjacency_text", "route_text", "blind_guess", "blind_rate", "simple_paths"]

CONDITIONS = ("main", "two_routes", "one_route")
#: 1 in HELDOUT_MOD keys is held out for evaluation.
HELDOUT_MOD = 5
_LETTERS = string.ascii_uppercase


@dataclass(frozen=True)
class RouteProblem:
    """One route problem: the prompt, one reference answer, the graph and what scores it."""

    condition: str
    key: str
    prompt: str
    answer: str
    edges: tuple[str, ...]  # "AB" for the edge A–B, sorted letters, sorted list
    source: str
    target: str
    routes: tuple[tuple[str, ...], ...] = field(default=())  # the start→end routes (simple paths)

    @property
    def text(self) -> str:
        return self.prompt + self.answer

    @property
    def meta(self) -> dict[str, Any]:
        return {"condition": self.condition, "edges": list(self.edges), "source": self.source,
                "target": self.target, "routes": [" ".join(r) for r in self.routes]}


def route_key(condition: str, edges: list[tuple[str, str]] | tuple[str, ...], source: str, target: str) -> str:
    """What decides a problem's split: its condition, its edge set and its end points as an
    unordered pair (the same graph with start and end swapped has the same key)."""
    canon = sorted("".join(sorted(e)) for e in edges)
    return f"route:{condition}:" + ",".join(canon) + ":" + "".join(sorted((source, target)))


def heldout(key: str) -> bool:
    """Whether ``key`` belongs to the held-out (evaluation) class."""
    return benchgen.in_heldout_class(f"route:{key}", HELDOUT_MOD)


def _check_condition(condition: str) -> None:
    if condition not in CONDITIONS:
        raise ValueError(f"route condition {condition!r} is not allowed; allowed: {list(CONDITIONS)}")


def _build(rng: random.Random, condition: str) -> tuple[list[tuple[str, str]], str, str, list[tuple[str, ...]]]:
    """A graph of the condition's shape with random letters: its edges, start, end and routes."""
    n_routes = 1 if condition == "one_route" else 2
    inner = [rng.randint(2, 3) for _ in range(n_routes)]
    corridors = [] if condition == "two_routes" else [rng.randint(2, 3) for _ in range(3)]
    n_nodes = 2 + sum(inner) + sum(corridors)
    letters = rng.sample(_LETTERS, n_nodes)
    source, target, rest = letters[0], letters[1], letters[2:]
    edges: list[tuple[str, str]] = []
    routes = []
    for k in inner:
        mid, rest = rest[:k], rest[k:]
        route = (source, *mid, target)
        routes.append(route)
        edges += list(itertools.pairwise(route))
    if corridors:
        # two corridors hang off the start, one off an inner node of a random route
        route = rng.choice(routes)
        anchors = [source, source, rng.choice(route[1:-1])]
        for anchor, length in zip(anchors, corridors):
            body, rest = rest[:length], rest[length:]
            edges += list(itertools.pairwise((anchor, *body)))
    assert not rest
    return edges, source, target, routes


def _lists(edges: list[tuple[str, str]], rng: random.Random) -> tuple[list[str], dict[str, list[str]]]:
    """The nodes in random order and each node's neighbours in random order."""
    adj: dict[str, list[str]] = {}
    for a, b in edges:
        adj.setdefault(a, []).append(b)
        adj.setdefault(b, []).append(a)
    nodes = list(adj)
    rng.shuffle(nodes)
    for v in nodes:
        rng.shuffle(adj[v])
    return nodes, adj


def adjacency_text(nodes: list[str], adj: dict[str, list[str]]) -> str:
    """The graph as adjacency lists, ``"Abc Da ..."``: every node once, as its capital letter
    followed by its neighbours in small letters (so every edge is listed from both ends).

    A node is written in capitals only where its list starts, and a route step copies that
    list (:func:`route_text`): one step is one induction-style look-up (find the capital the
    route has just reached, copy the small letters after it), so that what the task
    measures is the decision and the look-ahead rather than parsing.  The first two formats
    (``A:BC`` lists, then ``Abc`` lists with a bare route ``A B C``) were not learned by the
    calibration baselines within 3,000 steps (per-step edge validity 0.10 and about 0.3;
    ``results/benchmarks/decide/calibration-v1``, ``calibration-v2``)."""
    return " ".join(v + "".join(adj[v]).lower() for v in nodes)


def route_text(route: tuple[str, ...], adj: dict[str, list[str]]) -> str:
    """A route as an answer line: each node before the end with its neighbour list copied
    from the prompt, then the end: ``" S(juxv) X(cs) C(qx) Q(chr) R\n"``.  Only the capitals
    outside the brackets are the route (:func:`answer_nodes`)."""
    return " " + " ".join(f"{v}({''.join(adj[v]).lower()})" for v in route[:-1]) + f" {route[-1]}\n"


def draw(condition: str, rng: random.Random, split: str) -> RouteProblem:
    """One problem of ``condition`` from the ``train`` or ``eval`` split."""
    _check_condition(condition)
    if split not in ("train", "eval"):
        raise ValueError(f"split {split!r} is not allowed; allowed: 'train', 'eval'")
    while True:
        edges, source, target, routes = _build(rng, condition)
        key = route_key(condition, edges, source, target)
        if heldout(key) == (split == "eval"):
            break
    nodes, adj = _lists(edges, rng)
    prompt = f"Graph: {adjacency_text(nodes, adj)}\nRoute from {source} to {target}:"
    answer = route_text(rng.choice(routes), adj)
    return RouteProblem(condition, key, prompt, answer, tuple(sorted("".join(sorted(e)) for e in edges)), source,
                        target, tuple(sorted(routes)))


def eval_problems(condition: str, n: int, seed: int = 0) -> list[RouteProblem]:
    """``n`` held-out problems of ``condition`` with distinct keys, in a fixed order."""
    _check_condition(condition)
    rng = random.Random(f"route-eval:{condition}:{seed}")
    return mathgen.distinct(lambda: draw(condition, rng, "eval"), lambda p: p.key, n, f"held-out {condition} route")


def training_problems(n: int, seed: int = 0, conditions: tuple[str, ...] = CONDITIONS) -> Iterator[RouteProblem]:
    """``n`` training problems, conditions drawn uniformly from ``conditions``."""
    for c in conditions:
        _check_condition(c)
    rng = random.Random(f"route-train:{seed}")
    for _ in range(n):
        yield draw(rng.choice(conditions), rng, "train")


# ---------------------------------------------------------------------------------- scoring

def _adjacency(edges: tuple[str, ...] | list[str]) -> dict[str, set[str]]:
    adj: dict[str, set[str]] = {}
    for a, b in edges:
        adj.setdefault(a, set()).add(b)
        adj.setdefault(b, set()).add(a)
    return adj


_STEP = re.compile(r"([A-Z])(?:\([a-z]*\))?")


def answer_nodes(text: str) -> tuple[str, ...]:
    """The route of a generation's first line: each space-separated item is a capital,
    optionally followed by a bracketed list of small letters (the copied neighbour list),
    and stands for that capital; any other item stands for itself (and fails validity)."""
    line = text.strip("\n").split("\n")[0] if text.strip() else ""
    return tuple(m.group(1) if (m := _STEP.fullmatch(item)) else item for item in line.split())


def route_valid(p: RouteProblem | dict[str, Any], text: str) -> bool:
    """Whether the first line of ``text`` is a simple path from the start to the end along
    the graph's edges (the copied neighbour lists are not scored)."""
    meta = p.meta if isinstance(p, RouteProblem) else p
    nodes = answer_nodes(text)
    edges = {frozenset(e) for e in meta["edges"]}
    return (len(nodes) >= 2 and nodes[0] == meta["source"] and nodes[-1] == meta["target"]
            and len(set(nodes)) == len(nodes) and all(len(v) == 1 for v in nodes)
            and all(frozenset((a, b)) in edges for a, b in itertools.pairwise(nodes)))


def edge_validity(p: RouteProblem | dict[str, Any], text: str) -> float | None:
    """The share of a generation's steps (consecutive node pairs) that are listed edges; None
    for fewer than two nodes.  Whether the model reads the graph, step by step."""
    meta = p.meta if isinstance(p, RouteProblem) else p
    nodes = answer_nodes(text)
    if len(nodes) < 2:
        return None
    edges = {frozenset(e) for e in meta["edges"]}
    return sum(frozenset((a, b)) in edges for a, b in itertools.pairwise(nodes)) / (len(nodes) - 1)


def route_of(p: RouteProblem | dict[str, Any], text: str) -> int | None:
    """Which of the problem's routes a valid generation takes (its index), None when invalid."""
    meta = p.meta if isinstance(p, RouteProblem) else p
    if not route_valid(meta, text):
        return None
    routes = [tuple(r.split()) if isinstance(r, str) else tuple(r) for r in meta["routes"]]
    nodes = answer_nodes(text)
    return routes.index(nodes) if nodes in routes else None


def simple_paths(p: RouteProblem) -> list[tuple[str, ...]]:
    """Every simple path from the start to the end (the valid answers)."""
    adj = _adjacency(p.edges)
    return benchgen.simple_paths(adj, p.source, p.target, max_edges=len(adj))


# ---------------------------------------------------------------------------------- trivial baselines

def walker_success(p: RouteProblem) -> float:
    """The exact success probability of the look-ahead-free walker: from the start, step to a
    uniformly drawn unvisited neighbour until the end is reached (success) or no unvisited
    neighbour is left (failure)."""
    adj = _adjacency(p.edges)

    def prob(node: str, visited: frozenset[str]) -> float:
        if node == p.target:
            return 1.0
        nxt = sorted(adj[node] - visited)
        if not nxt:
            return 0.0
        return sum(prob(v, visited | {v}) for v in nxt) / len(nxt)

    return prob(p.source, frozenset({p.source}))


def walker_rate(problems: list[RouteProblem]) -> float:
    """The walker's expected pass@1 over problems."""
    return sum(walker_success(p) for p in problems) / len(problems)


def blind_guess(p: RouteProblem, rng: random.Random) -> str:
    """A guess that ignores the edge list: the start, 2 or 3 distinct other letters of the
    prompt, the end (a path of a route's length)."""
    listed = p.prompt.split("\n")[0].removeprefix("Graph:")
    letters = sorted({c for c in listed if c in _LETTERS} - {p.source, p.target})
    inner = rng.sample(letters, rng.randint(2, 3))
    return " " + " ".join((p.source, *inner, p.target)) + "\n"


def blind_rate(problems: list[RouteProblem], samples: int = 20, seed: int = 0) -> float:
    """The graph-blind guess's pass@1 over problems (``samples`` guesses each)."""
    rng = random.Random(seed)
    hits = sum(route_valid(p, blind_guess(p, rng)) for p in problems for _ in range(samples))
    return hits / (samples * len(problems))
