"""Algorithmic creativity: sibling discovery and triangle discovery, with an in-weights graph.

After Nagarajan, Wu, Ding & Raghunathan, "Roll the dice & look before you leap: Going beyond
the creative limits of next-token prediction", ICML 2025 (arXiv 2504.15266), their "combinational
creativity" tasks.  Each task has one small hidden graph, fixed by ``graph_seed`` (the study uses
``graph_seed=0``).  The model never sees the graph in its prompt: it learns it *in weights*
from training documents that state one edge each, and it learns the task from training
documents that are valid examples.  At test time it continues a fixed short prompt; each
generation is scored as

- **valid**: consistent with the hidden graph;
- **novel**: valid and not one of the examples shown in training (the *held-out* half of the
  valid answers, reachable only by combining the memorised edges);
- **unique**: novel and the first generation with that answer in the sample set.

The headline figure is **creativity** = unique / n (the paper's algorithmic creativity: the
share of generations that are valid, novel and distinct).  With ``H`` held-out answers it can
never exceed ``H / n``: read it against the ``oracle`` baseline at the same ``n``.

Tasks (sizes are the module constants):

- ``sibling``: a forest of :data:`N_PARENTS` parents (``P0`` … ``P6``), each with 4–6 children
  (two uppercase letters, e.g. ``KD``), every child with one parent.  An answer is two distinct
  children of one parent and that parent: ``Siblings: KD MX P3``.  The two children form an
  *unordered* pair: ``MX KD P3`` is the same answer as ``KD MX P3`` (so swapping a training
  example's children is neither novel nor a new unique answer).  Edge documents state one
  parent–child edge, in either direction (``Parent P3: KD`` or ``Child KD: P3``).
- ``triangle``: an undirected graph on :data:`N_TRI_NODES` nodes (two lowercase letters, e.g.
  ``ka``) with exactly :data:`N_TRI_EDGES` edges and exactly :data:`N_TRIANGLES` triangles
  (planted triangles, then filler edges that close no triangle).  An answer is an unordered
  triple of pairwise connected nodes: ``Triangle: ka mx qd``.  Edge documents state one edge,
  its end points in either order (``Edge: ka mx``).

Split: the valid answers of a task are shuffled with a seed of ``graph_seed`` and cut in two
halves: the training half (:func:`training_examples`, the only answers example documents ever
show) and the held-out half (novel).  For ``sibling`` the cut is made per parent, so every
parent has answers on both sides.

Trivial baselines (exact rates from the strategies' answer distributions, :func:`baseline_rates`):

- ``blind``: ignores the graph; a uniformly random well-formed answer over the graph's names
  (sibling: an unordered pair of distinct children and a parent; triangle: three distinct nodes).
- ``memorizer``: replays a uniformly drawn training example (valid 1, novel 0).
- ``myopic``: commits token by token without planning the whole answer.  Sibling: a random
  child, then a random *other* child (not planned through a shared parent), then the first
  child's parent (looked up correctly); valid exactly when the second child happens to be a
  sibling.  Triangle: a random edge, then a random neighbour of one of its ends (the other end
  if the first has none but the edge); valid exactly when that node also touches the other end.
- ``oracle``: a uniformly drawn valid answer (the graph fully learnt, answers drawn without
  bias): valid 1, novel = the held-out share; its creativity at ``n`` is what a perfect
  generaliser reaches on average (the hard ceiling, held-out answers only and no repeat, is
  ``min(H, n) / n``).

For ``graph_seed=0``: sibling has 7 parents (4, 4, 4, 4, 6, 6, 6 children), 34 children, 34
edges, 69 answers (35 training, 34 held out); blind valid 0.0176, novel 0.0087; myopic valid
0.1230, novel 0.0606; oracle novel 0.4928 (creativity 0.3225 at n = 64, 0.1296 at n = 256).
Triangle has 24 nodes, 60 edges, 24 triangles (12 + 12); blind valid 0.0119, novel 0.0059;
myopic valid 0.2842, novel 0.1441; oracle novel 0.5 (creativity 0.1752 at n = 64, 0.0469 at
n = 256).  Torch-free and deterministic.
"""

from __future__ import annotations

import functools
import itertools
import random
import re
import string
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from fractions import Fraction
from types import MappingProxyType

__all__ = ["TASKS", "BASELINES", "N_PARENTS", "CHILDREN_PER_PARENT", "N_TRI_NODES", "N_TRI_EDGES", "N_TRIANGLES",
           "EXAMPLE_SHARE", "MAX_DOC_BYTES", "Answer", "CreativityGraph", "graph", "prompt", "answer_line",
           "example_document", "edge_documents", "training_documents", "training_examples", "heldout_examples",
           "valid_answers", "parse", "score", "baseline_distribution", "baseline_rates", "baseline_generation",
           "expected_creativity"]

TASKS = ("sibling", "triangle")
BASELINES = ("blind", "memorizer", "myopic", "oracle")

#: Sibling graph: parents ``P0``..``P{N_PARENTS-1}``, each with a number of children drawn
#: uniformly from CHILDREN_PER_PARENT (inclusive).
N_PARENTS = 7
CHILDREN_PER_PARENT = (4, 6)
#: Triangle graph: nodes, edges and triangles, each exact.
N_TRI_NODES = 24
N_TRI_EDGES = 60
N_TRIANGLES = 24
#: The share of training documents that are examples (prompt + a training answer); the rest
#: state one edge each.  Edges and examples are each dealt in shuffled rounds, so every edge
#: (every training example) appears once before any appears twice.
EXAMPLE_SHARE = 0.5
#: Every document fits a model's context with room to spare.
MAX_DOC_BYTES = 192

_PROMPTS = {"sibling": "Siblings:", "triangle": "Triangle:"}
_CHILD = re.compile(r"[A-Z]{2}")
_PARENT = re.compile(r"P[0-9]")
_TRI_NODE = re.compile(r"[a-z]{2}")

#: An answer in canonical form: sibling (child, child, parent) with the children sorted;
#: triangle the three nodes sorted.
Answer = tuple[str, str, str]

if N_PARENTS > 10:
    raise ValueError(f"N_PARENTS = {N_PARENTS} is not allowed: parent names are P0..P9, at most 10")


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"creativity task {task!r} is not allowed; allowed: {list(TASKS)}")


def _check_strategy(strategy: str) -> None:
    if strategy not in BASELINES:
        raise ValueError(f"baseline strategy {strategy!r} is not allowed; allowed: {list(BASELINES)}")


# ---------------------------------------------------------------------------------- graphs

@dataclass(frozen=True)
class CreativityGraph:
    """One task's hidden graph and its split.

    ``nodes``: the names an answer's free slots are drawn from (sibling: the children; triangle:
    every node); ``parents``: sibling parents (empty for triangle); ``edges``: sibling
    (parent, child), triangle (a, b) with a < b, sorted; ``training`` / ``heldout``: the two
    halves of the valid answers, canonical and sorted."""

    task: str
    graph_seed: int
    nodes: tuple[str, ...]
    parents: tuple[str, ...]
    edges: tuple[tuple[str, str], ...]
    training: tuple[Answer, ...]
    heldout: tuple[Answer, ...]

    @functools.cached_property
    def answers(self) -> frozenset[Answer]:
        """Every valid answer."""
        return frozenset(self.training) | frozenset(self.heldout)

    @functools.cached_property
    def neighbours(self) -> Mapping[str, frozenset[str]]:
        """Each name's neighbours (sibling: a parent's children and a child's parent)."""
        adj: dict[str, set[str]] = {v: set() for v in (*self.nodes, *self.parents)}
        for a, b in self.edges:
            adj[a].add(b)
            adj[b].add(a)
        return MappingProxyType({v: frozenset(s) for v, s in adj.items()})

    @functools.cached_property
    def parent_of(self) -> Mapping[str, str]:
        """Sibling: each child's parent (empty for triangle)."""
        return MappingProxyType({c: p for p, c in self.edges} if self.task == "sibling" else {})


def _names(alphabet: str) -> list[str]:
    return [a + b for a in alphabet for b in alphabet]


def _sibling_graph(graph_seed: int) -> CreativityGraph:
    rng = random.Random(f"creativity-graph:sibling:{graph_seed}")
    sizes = [rng.randint(*CHILDREN_PER_PARENT) for _ in range(N_PARENTS)]
    names = rng.sample(_names(string.ascii_uppercase), sum(sizes))
    parents = tuple(f"P{i}" for i in range(N_PARENTS))
    split_rng = random.Random(f"creativity-split:sibling:{graph_seed}")
    edges, training, heldout = [], [], []
    for i, (p, k) in enumerate(zip(parents, sizes)):
        kids, names = sorted(names[:k]), names[k:]
        edges += [(p, c) for c in kids]
        pairs = [(a, b, p) for a, b in itertools.combinations(kids, 2)]
        split_rng.shuffle(pairs)
        cut = len(pairs) // 2 if i % 2 == 0 else (len(pairs) + 1) // 2  # odd counts alternate sides
        training += pairs[:cut]
        heldout += pairs[cut:]
    children = tuple(sorted(c for _, c in edges))
    return CreativityGraph("sibling", graph_seed, children, parents, tuple(sorted(edges)), tuple(sorted(training)),
                           tuple(sorted(heldout)))


def _triangles(adj: dict[str, set[str]]) -> list[Answer]:
    """Every triangle of an adjacency map, as sorted triples, sorted."""
    return sorted((a, b, c) for a in adj for b in adj[a] if b > a for c in adj[a] & adj[b] if c > b)


def _triangle_graph(graph_seed: int) -> CreativityGraph:
    rng = random.Random(f"creativity-graph:triangle:{graph_seed}")
    nodes = sorted(rng.sample(_names(string.ascii_lowercase), N_TRI_NODES))
    adj: dict[str, set[str]] = {v: set() for v in nodes}
    n_edges = 0

    def add(a: str, b: str) -> None:
        nonlocal n_edges
        if b not in adj[a]:
            adj[a].add(b)
            adj[b].add(a)
            n_edges += 1

    # planted triangles, each accepted only while the triangle count stays within N_TRIANGLES
    # and the edge count leaves room to connect every node
    for _ in range(100_000):
        n_tri = len(_triangles(adj))
        if n_tri == N_TRIANGLES:
            break
        tri = rng.sample(nodes, 3)
        trial = {v: set(s) for v, s in adj.items()}
        for a, b in itertools.combinations(tri, 2):
            trial[a].add(b)
            trial[b].add(a)
        trial_edges = sum(map(len, trial.values())) // 2
        isolated = sum(not s for s in trial.values())
        if len(_triangles(trial)) <= N_TRIANGLES and trial_edges + isolated <= N_TRI_EDGES:
            for a, b in itertools.combinations(tri, 2):
                add(a, b)
    else:
        raise RuntimeError(f"could not plant {N_TRIANGLES} triangles on {N_TRI_NODES} nodes (graph_seed {graph_seed})")

    def filler(a: str, b: str) -> bool:  # a new edge that closes no triangle
        return a != b and b not in adj[a] and not adj[a] & adj[b]

    # filler edges: first one for each node left isolated, then random ones up to N_TRI_EDGES
    for v in [v for v in nodes if not adj[v]]:
        partners = [u for u in nodes if filler(v, u)]
        add(v, rng.choice(partners))
    while n_edges < N_TRI_EDGES:
        a, b = rng.sample(nodes, 2)
        if filler(a, b):
            add(a, b)
    triangles = _triangles(adj)
    assert len(triangles) == N_TRIANGLES and n_edges == N_TRI_EDGES and all(adj.values())
    split_rng = random.Random(f"creativity-split:triangle:{graph_seed}")
    split_rng.shuffle(triangles)
    cut = len(triangles) // 2
    edges = tuple(sorted((a, b) for a in adj for b in adj[a] if a < b))
    return CreativityGraph("triangle", graph_seed, tuple(nodes), (), edges, tuple(sorted(triangles[:cut])),
                           tuple(sorted(triangles[cut:])))


@functools.lru_cache(maxsize=32)
def graph(task: str, graph_seed: int = 0) -> CreativityGraph:
    """The hidden graph of ``task`` fixed by ``graph_seed``, with its split of the answers."""
    _check_task(task)
    if not isinstance(graph_seed, int) or isinstance(graph_seed, bool):
        raise ValueError(f"graph_seed {graph_seed!r} is not allowed; allowed: an int")
    return _sibling_graph(graph_seed) if task == "sibling" else _triangle_graph(graph_seed)


def training_examples(task: str, graph_seed: int = 0) -> frozenset[Answer]:
    """The answers example documents show in training (canonical); generating one is not novel."""
    return frozenset(graph(task, graph_seed).training)


def heldout_examples(task: str, graph_seed: int = 0) -> frozenset[Answer]:
    """The valid answers never shown in training (canonical): generating one is novel."""
    return frozenset(graph(task, graph_seed).heldout)


def valid_answers(task: str, graph_seed: int = 0) -> frozenset[Answer]:
    """Every valid answer (canonical): the training and the held-out half."""
    return graph(task, graph_seed).answers


# ---------------------------------------------------------------------------------- documents

def prompt(task: str) -> str:
    """The fixed generation prompt of ``task``; an example document is prompt + :func:`answer_line`."""
    _check_task(task)
    return _PROMPTS[task]


def answer_line(answer: Iterable[str]) -> str:
    """A generation's text for ``answer`` (in the order given): ``" KD MX P3\\n"``."""
    return " " + " ".join(answer) + "\n"


def example_document(task: str, answer: Iterable[str]) -> str:
    """An example document: the prompt, then ``answer`` in the order given."""
    return prompt(task) + answer_line(answer)


def edge_documents(task: str, edge: tuple[str, str]) -> tuple[str, ...]:
    """Every document that states ``edge`` (one per direction or format); training draws one."""
    _check_task(task)
    a, b = edge
    if task == "sibling":  # (parent, child)
        return (f"Parent {a}: {b}\n", f"Child {b}: {a}\n")
    return (f"Edge: {a} {b}\n", f"Edge: {b} {a}\n")


def _rounds(items: tuple, rng: random.Random) -> Iterator:
    """``items`` forever, in a fresh shuffled order each round."""
    while True:
        order = list(items)
        rng.shuffle(order)
        yield from order


def training_documents(task: str, n: int, seed: int = 0, graph_seed: int = 0) -> Iterator[str]:
    """``n`` training documents of ``task``: a share :data:`EXAMPLE_SHARE` of example
    documents (training answers only, sibling children and triangle nodes in random order),
    the rest edge documents (one edge each, in a random direction).  Deterministic in
    (task, n, seed, graph_seed); a longer stream starts with the shorter one."""
    g = graph(task, graph_seed)
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"number of documents n = {n!r} is not allowed; allowed: an int >= 0")
    rng = random.Random(f"creativity-docs:{task}:{graph_seed}:{seed}")
    edges = _rounds(g.edges, rng)
    examples = _rounds(g.training, rng)
    for _ in range(n):
        if rng.random() < EXAMPLE_SHARE:
            answer = list(next(examples))
            free = answer[:2] if task == "sibling" else answer
            rng.shuffle(free)
            yield example_document(task, free + answer[2:] if task == "sibling" else free)
        else:
            yield rng.choice(edge_documents(task, next(edges)))


# ---------------------------------------------------------------------------------- scoring

def parse(task: str, text: str) -> Answer | None:
    """The canonical answer of a generation's first line, None when it is malformed.

    ``text`` is the continuation after :func:`prompt` (a leading prompt is also accepted).
    Well-formed: exactly three whitespace-separated names of the task's shapes (sibling: two
    children ``[A-Z]{2}`` then a parent ``P[0-9]``; triangle: three ``[a-z]{2}``).  Names
    need not be in the graph and may repeat: such an answer is well-formed but not valid."""
    _check_task(task)
    line = text.split("\n", 1)[0].removeprefix(_PROMPTS[task])
    tokens = line.split()
    if len(tokens) != 3:
        return None
    if task == "sibling":
        a, b, p = tokens
        if not (_CHILD.fullmatch(a) and _CHILD.fullmatch(b) and _PARENT.fullmatch(p)):
            return None
        return (min(a, b), max(a, b), p)
    if not all(_TRI_NODE.fullmatch(t) for t in tokens):
        return None
    x, y, z = sorted(tokens)
    return (x, y, z)


def score(task: str, generations: Iterable[str], graph_seed: int = 0) -> dict[str, float | int]:
    """Counts and rates of a sample set: ``n``, ``malformed``, ``valid``, ``novel`` (valid and
    not a training example), ``unique`` (novel and the first of its answer in the list),
    ``creativity`` = unique / n, ``valid_rate``, ``novel_rate`` (fractions of n; 0.0 when n = 0)."""
    g = graph(task, graph_seed)
    answers, training = g.answers, frozenset(g.training)
    n = malformed = valid = novel = 0
    seen: set[Answer] = set()
    for text in generations:
        n += 1
        a = parse(task, text)
        if a is None:
            malformed += 1
            continue
        if a not in answers:
            continue
        valid += 1
        if a in training:
            continue
        novel += 1
        seen.add(a)
    unique = len(seen)
    rate = (lambda k: k / n) if n else (lambda k: 0.0)
    return {"n": n, "malformed": malformed, "valid": valid, "novel": novel, "unique": unique,
            "creativity": rate(unique), "valid_rate": rate(valid), "novel_rate": rate(novel)}


# ---------------------------------------------------------------------------------- trivial baselines

def baseline_distribution(task: str, strategy: str, graph_seed: int = 0) -> dict[Answer, Fraction]:
    """The exact distribution of a baseline's canonical answers (probabilities sum to 1;
    answers that are not valid are included)."""
    g = graph(task, graph_seed)
    _check_strategy(strategy)
    dist: dict[Answer, Fraction] = {}

    def put(answer: Answer, p: Fraction) -> None:
        dist[answer] = dist.get(answer, Fraction(0)) + p

    if strategy in ("memorizer", "oracle"):
        pool = g.training if strategy == "memorizer" else sorted(g.answers)
        for a in pool:
            put(a, Fraction(1, len(pool)))
    elif strategy == "blind" and task == "sibling":
        pairs = list(itertools.combinations(g.nodes, 2))
        for (a, b), p in itertools.product(pairs, g.parents):
            put((a, b, p), Fraction(1, len(pairs) * len(g.parents)))
    elif strategy == "blind":
        triples = list(itertools.combinations(g.nodes, 3))
        for t in triples:
            put(t, Fraction(1, len(triples)))
    elif task == "sibling":  # myopic
        parent_of, c = g.parent_of, len(g.nodes)
        for a, b in itertools.permutations(g.nodes, 2):
            put((min(a, b), max(a, b), parent_of[a]), Fraction(1, c * (c - 1)))
    else:  # triangle, myopic
        adj = g.neighbours
        for e in g.edges:
            for a, b in (e, e[::-1]):  # the end the third node is drawn next to, then the other
                pool = sorted(adj[a] - {b}) or sorted(adj[b] - {a}) or sorted(set(g.nodes) - {a, b})
                for w in pool:
                    x, y, z = sorted((a, b, w))
                    put((x, y, z), Fraction(1, 2 * len(g.edges) * len(pool)))
    assert sum(dist.values()) == 1
    return dist


def expected_creativity(dist: dict[Answer, Fraction], heldout: Iterable[Answer], n: int) -> float:
    """The exact expected creativity (distinct held-out answers / n) of ``n`` independent draws
    from ``dist``: the sum over held-out answers a of (1 - (1 - p_a)^n), over n."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"sample size n = {n!r} is not allowed; allowed: an int >= 1")
    return sum(1.0 - (1.0 - float(dist.get(a, 0))) ** n for a in heldout) / n


def baseline_rates(task: str, graph_seed: int = 0, n: int | None = None) -> dict[str, dict[str, float]]:
    """Each baseline's exact ``valid_rate`` and ``novel_rate`` (as :func:`score` defines them),
    and, when ``n`` is given, its exact expected ``creativity`` for a sample set of ``n``."""
    g = graph(task, graph_seed)
    answers, heldout = g.answers, frozenset(g.heldout)
    out: dict[str, dict[str, float]] = {}
    for strategy in BASELINES:
        dist = baseline_distribution(task, strategy, graph_seed)
        rates = {"valid_rate": float(sum(p for a, p in dist.items() if a in answers)),
                 "novel_rate": float(sum(p for a, p in dist.items() if a in heldout))}
        if n is not None:
            rates["creativity"] = expected_creativity(dist, heldout, n)
        out[strategy] = rates
    return out


def baseline_generation(task: str, strategy: str, rng: random.Random, graph_seed: int = 0) -> str:
    """One generation (text after the prompt) of a baseline, drawn with ``rng``: the sampler
    whose exact distribution :func:`baseline_distribution` gives."""
    g = graph(task, graph_seed)
    _check_strategy(strategy)
    if strategy in ("memorizer", "oracle"):
        answer = list(rng.choice(g.training if strategy == "memorizer" else sorted(g.answers)))
    elif strategy == "blind":
        answer = rng.sample(g.nodes, 2) + [rng.choice(g.parents)] if task == "sibling" else rng.sample(g.nodes, 3)
    elif task == "sibling":  # myopic: a child, another child, the first child's parent
        a = rng.choice(g.nodes)
        b = rng.choice([c for c in g.nodes if c != a])
        answer = [a, b, g.parent_of[a]]
    else:  # triangle, myopic: an edge, then a neighbour of one of its ends
        adj = g.neighbours
        a, b = rng.choice(g.edges)
        if rng.random() < 0.5:
            a, b = b, a
        pool = sorted(adj[a] - {b}) or sorted(adj[b] - {a}) or sorted(set(g.nodes) - {a, b})
        answer = [a, b, rng.choice(pool)]
    return answer_line(answer)
