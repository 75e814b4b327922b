"""The algorithmic-creativity tasks (sibling and triangle discovery, after Nagarajan et al. 2025):
the hidden graphs and their split, the training documents (every edge, training examples only,
each under 192 bytes), the scorer's valid / novel / unique counts, and the exact baseline rates
checked against brute force and Monte Carlo."""

from __future__ import annotations

import itertools
import random
from collections import Counter
from fractions import Fraction

import pytest

from ftstudy.tasks import creativity as C


@pytest.mark.parametrize("task", C.TASKS)
def test_graph_and_split(task: str) -> None:
    g = C.graph(task)
    assert not set(g.training) & set(g.heldout)
    assert C.training_examples(task) | C.heldout_examples(task) == C.valid_answers(task) == g.answers
    assert abs(len(g.training) - len(g.heldout)) <= 1
    assert all(a == C.parse(task, C.answer_line(a)) for a in g.answers), "answers are canonical"
    adj = g.neighbours
    if task == "sibling":
        assert g.parents == tuple(f"P{i}" for i in range(C.N_PARENTS))
        family = Counter(p for p, _ in g.edges)
        assert all(C.CHILDREN_PER_PARENT[0] <= k <= C.CHILDREN_PER_PARENT[1] for k in family.values())
        assert len(g.edges) == len(g.nodes) == len(set(g.nodes)), "a forest: every child has one parent"
        expected = {(a, b, p) for p in g.parents for a, b in itertools.combinations(sorted(adj[p]), 2)}
        assert g.answers == expected
        for p in g.parents:  # the split is made per parent: both sides everywhere
            assert any(a[2] == p for a in g.training) and any(a[2] == p for a in g.heldout)
    else:
        assert (len(g.nodes), len(g.edges), len(g.answers)) == (C.N_TRI_NODES, C.N_TRI_EDGES, C.N_TRIANGLES)
        assert all(adj[v] for v in g.nodes), "no isolated node"
        brute = {t for t in itertools.combinations(g.nodes, 3)
                 if all(b in adj[a] for a, b in itertools.combinations(t, 2))}
        assert g.answers == brute


def test_graph_seed_changes_the_graph_and_is_reproducible() -> None:
    for task in C.TASKS:
        g0, g1 = C.graph(task, 0), C.graph(task, 1)
        assert g0.edges != g1.edges
        C.graph.cache_clear()
        assert C.graph(task, 0) == g0


def _sibling_cases() -> tuple[C.Answer, C.Answer, C.Answer]:
    g = C.graph("sibling")
    t, h = g.training[0], g.heldout[0]
    h2 = next(a for a in g.heldout if a[2] != h[2])
    return t, h, h2


def test_score_sibling_hand_made() -> None:
    g = C.graph("sibling")
    t, h, h2 = _sibling_cases()
    other = next(c for c in g.nodes if g.parent_of[c] != h[2])
    gens = [
        f" {t[1]} {t[0]} {t[2]}\n",       # training example, children swapped: valid, not novel
        f" {h[0]} {h[1]} {h[2]}\n",       # held out: valid, novel, unique
        f" {h[1]} {h[0]} {h[2]}\n",       # the same answer, children swapped: a duplicate
        f"Siblings: {h2[0]} {h2[1]} {h2[2]}\nParent P0: AB\n",  # prompt repeated, extra lines: unique
        f" {h[0]} {h[1]} {g.parents[(g.parents.index(h[2]) + 1) % len(g.parents)]}\n",  # wrong parent
        f" {h[0]} {other} {h[2]}\n",      # not siblings
        f" {h[0]} {h[0]} {h[2]}\n",       # one child twice: well-formed, invalid
        f" {h[0]} {h[1]}\n",              # two names: malformed
        f" {h[0]} {h[1]} {h[2]} {h[2]}\n",  # four names: malformed
        f" {h[0].lower()} {h[1]} {h[2]}\n",  # wrong shape: malformed
        f" {h[0]} {h[1]} PX\n",           # parent without digit: malformed
        "",                                # empty: malformed
        f"\n {h[0]} {h[1]} {h[2]}\n",     # the first line is empty: malformed
    ]
    s = C.score("sibling", gens)
    assert s == {"n": 13, "malformed": 6, "valid": 4, "novel": 3, "unique": 2, "creativity": 2 / 13,
                 "valid_rate": 4 / 13, "novel_rate": 3 / 13}
    assert C.parse("sibling", f" {h[1]} {h[0]} {h[2]}") == h, "no trailing newline needed; children sorted"
    assert C.parse("sibling", "  ZZ   AA  P9 \n") == ("AA", "ZZ", "P9"), "names outside the graph parse"
    assert C.score("sibling", []) == {"n": 0, "malformed": 0, "valid": 0, "novel": 0, "unique": 0,
                                      "creativity": 0.0, "valid_rate": 0.0, "novel_rate": 0.0}


def test_score_triangle_hand_made() -> None:
    g = C.graph("triangle")
    t, h = g.training[0], g.heldout[0]
    adj = g.neighbours
    a, b, open_w = next((a, b, w) for a, b in g.edges for w in sorted(adj[a]) if w != b and w not in adj[b])
    gens = [C.answer_line(t), C.answer_line(h)] + [C.answer_line(p) for p in itertools.permutations(h)][1:]
    gens += [C.answer_line((a, b, open_w)),         # two edges of three
             C.answer_line((h[0], h[1], h[1])),     # repeated node
             C.answer_line((h[0].upper(), h[1], h[2])),  # wrong shape
             C.answer_line(h[:2]), "Triangle:\n"]
    s = C.score("triangle", gens)
    assert (s["n"], s["malformed"], s["valid"], s["novel"], s["unique"]) == (12, 3, 7, 6, 1)
    assert s["creativity"] == 1 / 12
    # every held-out triangle once: creativity 1; the training ones: valid 1, novel 0
    assert C.score("triangle", [C.answer_line(x) for x in g.heldout])["creativity"] == 1.0
    mem = C.score("triangle", [C.answer_line(x) for x in g.training])
    assert (mem["valid_rate"], mem["novel_rate"], mem["creativity"]) == (1.0, 0.0, 0.0)


@pytest.mark.parametrize("task", C.TASKS)
def test_training_documents(task: str) -> None:
    g = C.graph(task)
    docs = list(C.training_documents(task, 3000))
    assert all(len(d.encode()) <= C.MAX_DOC_BYTES == 192 for d in docs)
    assert all(d.endswith("\n") and d.count("\n") == 1 for d in docs)
    examples = [d for d in docs if d.startswith(C.prompt(task))]
    edge_docs = [d for d in docs if not d.startswith(C.prompt(task))]
    assert abs(len(examples) / len(docs) - C.EXAMPLE_SHARE) < 0.05
    shown = [C.parse(task, d.removeprefix(C.prompt(task))) for d in examples]
    assert set(shown) == set(g.training), "every training example, and only those"
    assert not set(shown) & set(g.heldout)
    for d in examples:  # the exact format: prompt, space, three names, newline
        assert d == C.example_document(task, d.removeprefix(C.prompt(task)).split())
    stated = Counter()
    by_text = {text: e for e in g.edges for text in C.edge_documents(task, e)}
    for d in edge_docs:
        assert d in by_text, f"not an edge document: {d!r}"
        stated[by_text[d]] += 1
    assert set(stated) == set(g.edges)
    assert min(stated.values()) >= len(edge_docs) // len(g.edges) - 1, "edges dealt in rounds"
    # no held-out answer ever appears, also not as three names on one line in any order
    for a in g.heldout:
        assert not any(all(name in d.split() for name in a) for d in docs)


def test_documents_are_deterministic() -> None:
    for task in C.TASKS:
        first = list(C.training_documents(task, 400, seed=3))
        assert first == list(C.training_documents(task, 400, seed=3))
        assert first[:100] == list(C.training_documents(task, 100, seed=3)), "a prefix of a longer stream"
        assert first != list(C.training_documents(task, 400, seed=4))
    assert C.prompt("sibling") == "Siblings:" and C.prompt("triangle") == "Triangle:"


def test_bad_names() -> None:
    msg = r"creativity task 'chess' is not allowed; allowed: \['sibling', 'triangle'\]"
    for call in (lambda: C.graph("chess"), lambda: C.prompt("chess"), lambda: C.parse("chess", " A B C"),
                 lambda: C.score("chess", []), lambda: list(C.training_documents("chess", 1)),
                 lambda: C.training_examples("chess"), lambda: C.baseline_rates("chess")):
        with pytest.raises(ValueError, match=msg):
            call()
    with pytest.raises(ValueError, match=r"baseline strategy 'greedy' is not allowed; allowed: \['blind'"):
        C.baseline_distribution("sibling", "greedy")
    with pytest.raises(ValueError, match=r"n = -1 is not allowed"):
        list(C.training_documents("sibling", -1))
    with pytest.raises(ValueError, match=r"graph_seed '0' is not allowed"):
        C.graph("sibling", "0")  # type: ignore[arg-type]


def test_blind_rate_by_brute_force() -> None:
    """Every guess the blind strategy can make, enumerated without the module's distribution."""
    g = C.graph("sibling")
    guesses = [(a, b, p) for a, b in itertools.permutations(g.nodes, 2) for p in g.parents]
    valid = sum(g.parent_of[a] == p and g.parent_of[b] == p for a, b, p in guesses)
    novel = sum(tuple(sorted((a, b))) + (p,) in C.heldout_examples("sibling") for a, b, p in guesses)
    rates = C.baseline_rates("sibling")["blind"]
    assert rates["valid_rate"] == float(Fraction(valid, len(guesses)))
    assert rates["novel_rate"] == float(Fraction(novel, len(guesses)))
    g = C.graph("triangle")
    triples = list(itertools.combinations(g.nodes, 3))
    assert C.baseline_rates("triangle")["blind"]["valid_rate"] == pytest.approx(C.N_TRIANGLES / len(triples))


@pytest.mark.parametrize("task", C.TASKS)
def test_baseline_rates_by_monte_carlo(task: str) -> None:
    """The samplers' scores agree with the exact rates (within 5 standard errors)."""
    exact = C.baseline_rates(task, n=50)
    rng = random.Random(f"mc:{task}")
    samples = 12_000
    for strategy in C.BASELINES:
        gens = [C.baseline_generation(task, strategy, rng) for _ in range(samples)]
        s = C.score(task, gens)
        assert s["malformed"] == 0
        for key in ("valid_rate", "novel_rate"):
            p = exact[strategy][key]
            assert abs(s[key] - p) <= 5 * (p * (1 - p) / samples) ** 0.5 + 1e-12, (strategy, key, s[key], p)
        # expected creativity of sets of 50: the mean over 240 sets
        sets = [C.score(task, gens[i:i + 50])["creativity"] for i in range(0, samples, 50)]
        mean = sum(sets) / len(sets)
        sd = (sum((x - mean) ** 2 for x in sets) / (len(sets) - 1)) ** 0.5
        assert abs(mean - exact[strategy]["creativity"]) <= 5 * sd / len(sets) ** 0.5 + 1e-12, (strategy, mean)
    assert exact["memorizer"] == {"valid_rate": 1.0, "novel_rate": 0.0, "creativity": 0.0}
    assert exact["oracle"]["novel_rate"] == len(C.graph(task).heldout) / len(C.graph(task).answers)
    assert exact["blind"]["valid_rate"] < exact["myopic"]["valid_rate"] < 1.0
