"""The route-choice benchmark's generator: the graph shapes, the split by graph with unordered
end points, and the trivial baselines every score is read against (a look-ahead-free walker at
about 0.375 on the main condition and 1.0 on the no-decoy control; a graph-blind guess at about 0)."""

from __future__ import annotations

import random

import pytest

from ftstudy.tasks import routegen as R


@pytest.mark.parametrize("condition", R.CONDITIONS)
def test_shapes(condition: str) -> None:
    rng = random.Random(0)
    for _ in range(200):
        p = R.draw(condition, rng, "train")
        nodes = {c for e in p.edges for c in e}
        paths = R.simple_paths(p)
        assert sorted(paths) == sorted(p.routes), "the only valid answers are the routes"
        assert len(paths) == (1 if condition == "one_route" else 2)
        for r in paths:
            assert 2 <= len(r) - 2 <= 3
        if len(paths) == 2:
            assert not set(paths[0][1:-1]) & set(paths[1][1:-1]), "node-disjoint routes"
        n_route_nodes = len({v for r in paths for v in r})
        if condition == "two_routes":
            assert len(nodes) == n_route_nodes
        else:
            assert len(nodes) - n_route_nodes in range(6, 10), "three corridors of 2-3 nodes"
        if condition == "main":
            assert 12 <= len(nodes) <= 17
        assert R.route_valid(p, p.answer) and R.edge_validity(p, p.answer) == 1.0
        assert R.route_of(p, p.answer) in range(len(p.routes))
        listed = {e[0]: e[1:].upper() for e in p.prompt.split("\n")[0].removeprefix("Graph: ").split()}
        assert all(e[0].isupper() and e[1:].islower() for e in p.prompt.split("\n")[0].split()[1:])
        assert set(listed) == nodes, "every node has its adjacency list"
        assert {"".join(sorted(a + b)) for a, nb in listed.items() for b in nb} == set(p.edges)
        assert sum(map(len, listed.values())) == 2 * len(p.edges), "each edge listed from both ends"
        assert p.prompt.endswith(f"Route from {p.source} to {p.target}:")


def test_trivial_baselines() -> None:
    main = R.eval_problems("main", 300)
    assert R.walker_rate(main) == pytest.approx(0.375)
    assert R.walker_rate(R.eval_problems("two_routes", 100)) == pytest.approx(1.0)
    # one route: 1/3 at the start (the route or two corridors), then 1/2 at the third corridor's anchor
    assert R.walker_rate(R.eval_problems("one_route", 100)) == pytest.approx(1 / 6)
    assert R.blind_rate(main, samples=10) < 0.01
    # the walker by simulation agrees with its exact probability
    rng = random.Random(3)
    p = main[0]
    adj = {}
    for a, b in p.edges:
        adj.setdefault(a, set()).add(b)
        adj.setdefault(b, set()).add(a)
    hits = 0
    for _ in range(4000):
        node, seen = p.source, {p.source}
        while node != p.target:
            nxt = sorted(adj[node] - seen)
            if not nxt:
                break
            node = rng.choice(nxt)
            seen.add(node)
        hits += node == p.target
    assert hits / 4000 == pytest.approx(R.walker_success(p), abs=0.03)


@pytest.mark.parametrize("condition", R.CONDITIONS)
def test_train_and_eval_split_by_graph_with_unordered_end_points(condition: str) -> None:
    evals = R.eval_problems(condition, 150)
    assert len({p.key for p in evals}) == 150 and all(R.heldout(p.key) for p in evals)
    swapped = {R.route_key(condition, p.edges, p.target, p.source) for p in evals}
    assert swapped == {p.key for p in evals}, "swapping start and end keeps the key"
    train = list(R.training_problems(4000, seed=1, conditions=(condition,)))
    assert not {p.key for p in train} & swapped
    graphs = {tuple(p.edges) for p in evals}
    assert not any(tuple(p.edges) in graphs for p in train), "no held-out graph appears in training"


def test_scoring_by_hand() -> None:
    meta = {"condition": "main", "edges": ["AB", "BC", "CD", "AE", "EF", "FD", "AX", "XY"], "source": "A",
            "target": "D", "routes": ["A B C D", "A E F D"]}
    assert R.route_valid(meta, " A B C D\n") and R.route_of(meta, " A E F D\n") == 1
    # the answer format: each node before the end with its copied neighbour list (not scored)
    assert R.route_valid(meta, " A(bex) B(ac) C(bd) D\n") and R.route_valid(meta, " A(zz) B() C D\n")
    assert R.answer_nodes(" A(be B D\n") == ("A(be", "B", "D") and not R.route_valid(meta, " A(be B C D\n")
    assert not R.route_valid(meta, " A(BE) B C D\n") and not R.route_valid(meta, " Ab B C D\n")
    assert not R.route_valid(meta, " A X Y D\n") and R.edge_validity(meta, " A X Y D\n") == pytest.approx(2 / 3)
    assert not R.route_valid(meta, " A B A B C D\n")  # not simple
    assert R.edge_validity(meta, "A") is None and R.route_of(meta, " A C D\n") is None
    with pytest.raises(ValueError, match="allowed"):
        R.draw("maze", random.Random(0), "train")
    with pytest.raises(ValueError, match="split"):
        R.draw("main", random.Random(0), "test")
