"""The decision benchmark (issue 23): tasks where the Free Transformer's argument should bite.

The paper argues that a latent drawn up front lets a model *decide* once (which route, which
answer among many valid ones) instead of token by token.  This suite holds the tasks where
that should show, each with the trivial baselines every score is read against:

- ``route_main``, ``route_two_routes``, ``route_one_route``: route choice with dead-end decoys
  (:mod:`ftstudy.tasks.routegen`).  The main condition needs a decision *and* look-ahead; the
  two controls need one without the other.  If the paper is right, the Free gain is largest
  in the main condition (a difference in differences).  Baselines: a look-ahead-free walker
  (0.375 / 1.0 / 1/6) and a graph-blind guess (about 0).
- ``sibling``, ``triangle``: the algorithmic-creativity tasks of Nagarajan et al. (ICML 2025,
  arXiv 2504.15266), :mod:`ftstudy.tasks.creativity`: a graph learned in the weights, and
  generations scored as valid, novel (not a training example) and unique.  Baselines: a
  blind guess, a memoriser (valid, never novel) and a myopic strategy.

Training documents of every task are mixed by :data:`MIX` into one corpus
(``python -m ftstudy.data prepare --corpus decide``).  The *seed-conditioned* baseline
(Nagarajan et al.'s hash-conditioning) trains on the same documents, each preceded by a
random prefix (:func:`seed_prefix`), and generates after a fresh random prefix: the
conjecture is that such a prefix works as "sample a plan, then decode", which is the Free
Transformer's thesis with the plan drawn outside the model.

Torch-free: the corpus builder and the lm-eval metrics import it.
"""

from __future__ import annotations

import random
import string
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

from ftstudy.tasks import creativity, routegen

__all__ = ["ROUTE_TASKS", "CREATIVE_TASKS", "TASKS", "MIX", "N_ROUTE", "N_CREATIVE_DOCS", "REPEATS", "PREFIX_LEN",
           "seed_prefix", "training_documents", "eval_rows", "route_scores", "creative_scores", "baselines",
           "creative_valid_rates",
           "task_of"]

ROUTE_TASKS = tuple(f"route_{c}" for c in routegen.CONDITIONS)
CREATIVE_TASKS = tuple(creativity.TASKS)
TASKS = ROUTE_TASKS + CREATIVE_TASKS
#: Share of each task in the training documents (route conditions equally within "route").
MIX = {"route": 0.6, "sibling": 0.2, "triangle": 0.2}
#: Held-out route problems per condition; creativity documents (the fixed prompt, repeated)
#: per task; samples per document (lm-eval's repeats).
N_ROUTE = 150
N_CREATIVE_DOCS = 10
REPEATS = 10
#: Letters of the seed-conditioning prefix ``"#abcd\n"``: 26^4 = 456,976 prefixes.
PREFIX_LEN = 4


def task_of(name: str) -> str:
    """The task of an lm-eval task name or a task name, checked."""
    task = name.removeprefix("ftstudy_decide_")
    if task not in TASKS:
        raise ValueError(f"decision task {name!r} is not allowed; allowed: {list(TASKS)}")
    return task


def seed_prefix(rng: random.Random) -> str:
    """A random seed-conditioning prefix, ``"#" + PREFIX_LEN lowercase letters + newline``."""
    return "#" + "".join(rng.choice(string.ascii_lowercase) for _ in range(PREFIX_LEN)) + "\n"


def training_documents(n: int, seed: int = 0, prefixed: bool = False) -> Iterator[tuple[str, str]]:
    """``n`` training documents ``(task family, text)`` mixed by :data:`MIX` (route problems
    from the training split only; the creativity tasks' edge and example documents); with
    ``prefixed``, each text starts with a random :func:`seed_prefix`."""
    if n < 0:
        raise ValueError(f"n = {n} is not allowed: >= 0")
    rng = random.Random(f"decide-train:{seed}")
    pre = random.Random(f"decide-prefix:{seed}")
    fams, weights = zip(*MIX.items())
    picks = [rng.choices(fams, weights)[0] for _ in range(n)]
    counts = Counter(picks)
    streams = {"route": (p.text for p in routegen.training_problems(counts["route"], seed)),
               **{t: iter(creativity.training_documents(t, counts[t], seed)) for t in CREATIVE_TASKS}}
    for f in picks:
        text = next(streams[f])
        yield f, (seed_prefix(pre) + text if prefixed else text)


def eval_rows(task: str) -> list[dict[str, Any]]:
    """The lm-eval rows of ``task``: held-out route problems, or the creativity task's fixed
    prompt repeated :data:`N_CREATIVE_DOCS` times (the samples of one document are scored
    together: uniqueness is within a document)."""
    task = task_of(task)
    if task in ROUTE_TASKS:
        cond = task.removeprefix("route_")
        return [{"id": f"{task}-{i}", "key": p.key, "prompt": p.prompt, "answer": p.answer, **p.meta}
                for i, p in enumerate(routegen.eval_problems(cond, N_ROUTE))]
    prompt = creativity.prompt(task)
    return [{"id": f"{task}-{i}", "prompt": prompt, "answer": "", "task": task} for i in range(N_CREATIVE_DOCS)]


def route_scores(doc: dict[str, Any], samples: Sequence[str]) -> dict[str, float]:
    """Per-problem scores of a route problem's samples: ``pass@1`` (fraction of valid routes),
    ``distinct_correct`` (distinct valid routes), ``edge_validity`` (mean over
    samples of the share of steps along edges; a sample of fewer than two nodes counts 0),
    ``route_a`` (fraction of samples that are valid and take the first route, for the balance
    between routes: balance = route_a / pass@1 among valid samples)."""
    if not samples or not all(isinstance(x, str) for x in samples):
        raise TypeError(f"route problem {doc.get('id')}: expected a list of generated str, got {samples!r:.200}")
    n = len(samples)
    routes = [routegen.route_of(doc, x) for x in samples]
    c = sum(r is not None for r in routes)
    out = {"pass@1": c / n}
    out["distinct_correct"] = float(len({r for r in routes if r is not None}))
    out["edge_validity"] = sum(routegen.edge_validity(doc, x) or 0.0 for x in samples) / n
    out["route_a"] = sum(r == 0 for r in routes) / n
    return out


def creative_scores(doc: dict[str, Any], samples: Sequence[str]) -> dict[str, float]:
    """Per-document scores of a creativity task's samples: ``valid``, ``novel`` (valid and not
    a training example), ``creativity`` (valid, novel and unique within the document's
    samples: the paper's headline), as fractions of the samples; ``pass@1`` = creativity, the
    score the report compares."""
    task = task_of(doc["task"])
    if not samples or not all(isinstance(x, str) for x in samples):
        raise TypeError(f"{task} document {doc.get('id')}: expected a list of generated str, got {samples!r:.200}")
    s = creativity.score(task, list(samples))
    return {"valid": s["valid_rate"], "novel": s["novel_rate"], "creativity": s["creativity"],
            "pass@1": s["creativity"]}


def baselines(task: str) -> dict[str, float]:
    """The reference strategies of ``task``'s compared score (pass@1), by name, computed exactly
    on the held-out documents: for the route tasks the graph-``blind`` guess and the
    look-ahead-free ``walker`` (the myopic strategy); for the creativity tasks the ``blind``
    guess, the ``memorizer`` (replays training examples: valid, never novel), the ``myopic``
    strategy and the ``oracle`` (uniform over all valid answers: the ceiling of a model that
    knows the graph), each as its expected creativity over :data:`REPEATS` samples.  ``blind``
    is chance: every baseline seed must beat it before a comparison counts."""
    task = task_of(task)
    if task in ROUTE_TASKS:
        probs = routegen.eval_problems(task.removeprefix("route_"), N_ROUTE)
        return {"blind": routegen.blind_rate(probs), "walker": routegen.walker_rate(probs)}
    rates = creativity.baseline_rates(task, n=REPEATS)
    return {name: rates[name]["creativity"] for name in ("blind", "memorizer", "myopic", "oracle")}


def creative_valid_rates(task: str) -> dict[str, float]:
    """The valid rate of each reference strategy of a creativity task (blind, memoriser,
    myopic, oracle): what its gate compares a baseline's valid rate with."""
    task = task_of(task)
    if task not in CREATIVE_TASKS:
        raise ValueError(f"{task!r} is not a creativity task; allowed: {list(CREATIVE_TASKS)}")
    rates = creativity.baseline_rates(task)
    return {name: rates[name]["valid_rate"] for name in ("blind", "memorizer", "myopic", "oracle")}
