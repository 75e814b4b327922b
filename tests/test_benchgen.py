"""The CPU-scale benchmark suite's problems (issue 15): splits never overlap, every reference
answer is correct by its own checker, code runs in the sandbox, the lm-eval tasks score
samples end to end."""

from __future__ import annotations

import itertools
import json
import random
from collections import Counter
from pathlib import Path

import pytest

from ftstudy.eval.suite import BENCH_REPEATS, BENCH_TASKS, N_BENCH, execution, materialize, metrics, render
from ftstudy.tasks import benchgen

SANDBOX = execution.sandbox_problem() is None


def _trusted_run(program: str, entry_point: str, cases: list) -> bool:
    """Runs *our own* reference programs in-process (never a model's output), comparing as the
    sandbox's verdict does: exact type-aware equality."""
    namespace: dict = {}
    exec(compile(program, "<reference>", "exec"), namespace)  # noqa: S102 - generator's own code
    return all(benchgen.same_output(namespace[entry_point](*args), want) for args, want in cases)


@pytest.mark.parametrize("family", benchgen.FAMILIES)
def test_train_and_eval_never_overlap(family: str) -> None:
    evals = benchgen.eval_problems(family, N_BENCH[family])
    assert len({p.key for p in evals}) == N_BENCH[family]
    assert all(benchgen.heldout(p.key, family) for p in evals)
    rng = random.Random(1)
    train = [benchgen.draw(family, rng, "train") for _ in range(5000)]
    assert not {p.key for p in train} & {p.key for p in evals}
    # Not even the text: no training document starts with an evaluation prompt.
    prompts = {p.prompt for p in evals}
    assert not any(p.prompt in prompts for p in train)


def test_corpus_documents_are_training_problems() -> None:
    from ftstudy.tasks.corpus import bench_documents
    evals = {p.prompt for f in benchgen.FAMILIES for p in benchgen.eval_problems(f, N_BENCH[f])}
    docs = list(bench_documents(3000, seed=0))
    fams = {d.path.split("/")[0] for d in docs}
    assert fams == set(benchgen.FAMILIES)
    for d in docs:
        fam = d.path.split("/")[0]
        assert not any(d.text.startswith(p) for p in evals)
        assert d.text.endswith("\n") or fam in ("arith", "gsm")


@pytest.mark.parametrize("family", benchgen.FAMILIES)
def test_reference_answers_pass_their_checker(family: str) -> None:
    rng = random.Random(2)
    for split in ("train", "eval"):
        for _ in range(150):
            p = benchgen.draw(family, rng, split)
            row = benchgen.eval_row(p, 0)
            assert benchgen.score_text(family, row, p.answer, run_code=_trusted_run), p


@pytest.mark.parametrize("template", benchgen.CODE_TEMPLATES, ids=lambda t: t.name)
def test_every_equivalent_body_passes(template: benchgen.CodeTemplate) -> None:
    rng = random.Random(template.name)
    for _ in range(5):
        while True:
            p = benchgen.draw("code", rng, "train")
            if p.meta["template"] == template.name:
                break
        fill_line = p.answer.strip().removeprefix("return ")
        assert fill_line  # one of the bodies, filled in
        consts = p.key.split(":")[2:]
        args = p.prompt.split("(")[1].split(")")[0].split(", ")
        names = {"x": args[0], "y": args[1] if len(args) > 1 else "y", "l": args[0]}
        fill = {**names, **dict(zip(template.consts, consts))}
        for body in template.bodies:
            program = benchgen.code_program(p.prompt, "    return " + body.format(**fill))
            assert _trusted_run(program, p.meta["entry_point"], benchgen.code_cases(p.meta)), (template.name, body)
        assert not _trusted_run(benchgen.code_program(p.prompt, "    return None"), p.meta["entry_point"],
                                benchgen.code_cases(p.meta))


def test_checkers_reject_wrong_answers() -> None:
    meta = {"edges": ["AB", "BC", "AD", "DC"], "source": "A", "target": "C"}
    assert benchgen.path_valid(meta, " A B C\n") and benchgen.path_valid(meta, " A D C")
    for bad in (" A C", " A B A D C", " B C", " A B", "", " A B C D", " AB C"):
        assert not benchgen.path_valid(meta, bad), bad
    assert benchgen.gsm_answer(" 3*4=12. 12+8=20. #### 20") == "20"
    assert benchgen.gsm_answer(" 3*4=12. 20") is None
    assert benchgen.arith_answer(" 8+6=14. 4+7+1=12. #### 124\n") == "124"
    assert benchgen.arith_answer(" 124") is None  # the sum alone is not the answer format
    # distinct answers: the same program spelled twice is one answer, a different one another
    assert benchgen.canonical_output("code", "    return x+3\n") == benchgen.canonical_output("code", "    return x + 3")
    assert benchgen.canonical_output("code", "    return 3 + x") != benchgen.canonical_output("code", "    return x + 3")
    with pytest.raises(ValueError, match="allowed"):
        benchgen.draw("poetry", random.Random(0), "train")
    with pytest.raises(ValueError, match="split"):
        benchgen.draw("code", random.Random(0), "test")
    with pytest.raises(ValueError, match="mix"):
        list(benchgen.training_documents(1, mix={"code": -1}))


def test_decision_problems_have_several_answers() -> None:
    for p in benchgen.eval_problems("path", 50):
        assert p.meta["n_paths"] >= 2
        assert p.meta["target"] not in {e.replace(p.meta["source"], "") for e in p.meta["edges"]
                                        if p.meta["source"] in e}  # never the direct edge


def test_task_files_render() -> None:
    files = render()
    for t in BENCH_TASKS:
        fam = t.removeprefix("ftstudy_bench_")
        text = files[f"{t}.yaml"].decode()
        assert f"repeats: {BENCH_REPEATS}" in text and f"bench_{fam}" in text
        assert ("unsafe_code: true" in text) == (fam == "code")
        rows = [json.loads(line) for line in files[f"bench_{fam}.test.jsonl"].decode().splitlines()]
        assert len(rows) == N_BENCH[fam] and all(benchgen.heldout(r["key"], fam) for r in rows)


@pytest.mark.skipif(not SANDBOX, reason="no bubblewrap sandbox on this machine")
def test_code_scores_run_in_the_sandbox() -> None:
    p = benchgen.eval_problems("code", 1)[0]
    row = benchgen.eval_row(p, 0)
    wrong = "    return None\n"
    scores = metrics.bench_scores("code", row, [p.answer] * 3 + [wrong] * 7)
    assert scores["pass@1"] == pytest.approx(0.3)
    assert scores["pass@10"] == 1.0 and scores["pass@5"] == pytest.approx(1 - (7 * 6 * 5 * 4 * 3) / (10 * 9 * 8 * 7 * 6))
    assert scores["distinct_correct"] == 1.0
    assert metrics.bench_scores("code", row, [wrong] * 10)["pass@10"] == 0.0
    # A completion that escapes its function is still only a program in the sandbox: it fails.
    evil = "    return open('/etc/hostname').read()\n"
    assert metrics.bench_scores("code", row, [evil])["pass@1"] == 0.0


def test_path_scores_count_distinct_valid_paths() -> None:
    row = {"edges": ["AB", "BC", "AD", "DC"], "source": "A", "target": "C"}
    s = metrics.bench_scores("path", row, [" A B C", " A D C", " A B C", " A C"])
    assert s["pass@1"] == 0.75 and s["distinct_correct"] == 2.0 and "pass@5" not in s


@pytest.mark.skipif(not SANDBOX, reason="no bubblewrap sandbox on this machine")
def test_lm_eval_tasks_end_to_end(tmp_path: Path) -> None:
    """A tiny untrained model through lm-eval: every task runs with 10 samples per problem."""
    import lm_eval

    from ftstudy.core.config import get_preset
    from ftstudy.core.model import FreeTransformer
    from ftstudy.eval.harness import FTStudyLM
    from ftstudy.eval.suite import task_manager
    from ftstudy.tasks.corpus import ByteTokenizer

    cfg = get_preset("tokens-tiny", {"max_seq_len": "192"})
    lm = FTStudyLM(model=FreeTransformer(cfg.model), tokenizer=ByteTokenizer(), batch_size=32)
    res = lm_eval.simple_evaluate(model=lm, tasks=list(BENCH_TASKS), task_manager=task_manager(), limit=2,
                                  log_samples=True, bootstrap_iters=0, confirm_run_unsafe_code=True)
    for t in BENCH_TASKS:
        r = res["results"][t]
        assert 0 <= r["pass@1,samples"] <= r["pass@5,samples"] <= r["pass@10,samples"] <= 1
        sample = res["samples"][t][0]
        assert len(sample["filtered_resps"][0]) == BENCH_REPEATS
        # every repeat is its own draw: an untrained model's 10 samples are not all equal
        assert len(set(sample["filtered_resps"][0])) > 1
    assert materialize()  # the default folder works too


def test_column_addition_steps() -> None:
    assert benchgen._column_steps(48, 76) == "8+6=14. 4+7+1=12."
    assert benchgen._column_steps(345, 278) == "5+8=13. 4+7+1=12. 3+2+1=6."
    assert benchgen._column_steps(48, 7) == "8+7=15. 4+1=5."
    rng = random.Random(3)
    for _ in range(500):
        a, b = rng.randint(10, 999), rng.randint(1, 999)
        steps = benchgen._column_steps(a, b).split()
        digits = [int(s.split("=")[1].rstrip(".")) % 10 for s in steps]
        carry = int(steps[-1].split("=")[1].rstrip(".")) // 10
        assert int(str(carry) * bool(carry) + "".join(map(str, digits[::-1]))) == a + b


# ------------------------------------------------------------------ blind baselines (audit)

def test_no_trivial_body_passes_a_held_out_code_problem() -> None:
    """The code task's blind baseline is 0: no trivial body, no wrong constant (every other
    constant in range and k +- 1..3) and no near miss passes any of the held-out problems.
    (Before the boundary tests: a trivial body passed 11 of 160, a wrong constant 4.7% of the
    time, 44% on ``gt``.)"""
    evals = benchgen.eval_problems("code", N_BENCH["code"])
    rates = benchgen.trivial_pass_rate(evals)
    assert rates == {k: 0.0 for k in ("trivial", "trivial_any", "constant", "constant_any", "near", "near_any")}
    # the same in the sandbox's calling convention, through run_code
    assert benchgen.trivial_pass_rate(evals[:10], run_code=_trusted_run_any)["trivial_any"] == 0.0


def _trusted_run_any(program: str, entry_point: str, cases: list) -> bool:
    try:
        return _trusted_run(program, entry_point, cases)
    except Exception:  # noqa: BLE001 - a wrong body may raise anything
        return False


@pytest.mark.parametrize("template", benchgen.CODE_TEMPLATES, ids=lambda t: t.name)
def test_trivial_bodies_cover_the_audit_list(template: benchgen.CodeTemplate) -> None:
    rng = random.Random(template.name)
    consts = {c: rng.randint(template.lo, template.hi) for c in template.consts}
    p = benchgen._code_make(template, consts, rng)
    bodies = benchgen.trivial_bodies(p)
    arg = p.prompt.split("(")[1].split(")")[0].split(", ")[0]
    want = {"False", "True", "0", "1", "None", "[]", arg}
    want |= {"-" + arg} if template.args != "l" else {f"len({arg})", f"sum({arg})"}
    assert want <= {b.strip().removeprefix("return ") for b in bodies["trivial"]}
    ref = template.bodies[0]
    k = consts[template.consts[0]]
    fill = {"x": arg, "l": arg, "y": p.prompt.split("(")[1].split(")")[0].split(", ")[-1],
            **{c: str(v) for c, v in consts.items()}}
    for d in (-3, -2, -1, 1, 2, 3):
        assert "    return " + ref.format(**{**fill, template.consts[0]: str(k + d)}) + "\n" in bodies["constant"]
    n_consts = (template.hi - template.lo + 1) ** len(template.consts) - 1
    assert len(bodies["constant"]) >= n_consts
    assert "    return " + ref.format(**fill) + "\n" not in bodies["constant"]
    right = {"    return " + b.format(**fill) + "\n" for b in template.bodies}
    assert bodies["near"] and not set(bodies["near"]) & right


def test_hidden_tests_reject_trivial_bodies_on_the_whole_key_space() -> None:
    """Not only the held-out draw: every key of every template (684 problems)."""
    rng = random.Random(0)
    problems = [benchgen._code_make(t, dict(zip(t.consts, vs)), rng) for t in benchgen.CODE_TEMPLATES
                for vs in itertools.product(range(t.lo, t.hi + 1), repeat=len(t.consts))]
    assert len(problems) == 684
    rates = benchgen.trivial_pass_rate(problems, kinds=("trivial", "near"))
    assert rates == {"trivial": 0.0, "trivial_any": 0.0, "near": 0.0, "near_any": 0.0}
    # wrong constants (120 bodies a problem for lin) on every fifth key, to stay fast
    assert benchgen.trivial_pass_rate(problems[::5], kinds=("constant",))["constant_any"] == 0.0


def test_code_hidden_tests_have_boundary_inputs() -> None:
    p = benchgen._code_make(benchgen._CODE_BY_NAME["gt"], {"k": 17}, random.Random(0))
    for x, want in ((16, False), (17, False), (18, True), (0, False)):
        assert f"({x}) == {want}" in p.meta["tests"]
    p = benchgen._code_make(benchgen._CODE_BY_NAME["count"], {"k": 5}, random.Random(0))
    assert "([]) == 0" in p.meta["tests"] and "([5]) == 0" in p.meta["tests"] and "([5, 6, 4]) == 1" in p.meta["tests"]
    p = benchgen._code_make(benchgen._CODE_BY_NAME["maxk"], {"k": 5}, random.Random(0))
    assert "([]) ==" not in p.meta["tests"]  # max of nothing: outside the docstring
    assert all(args[0] for args, _ in benchgen.code_cases(p.meta))  # no empty list among the cases either


def test_code_cases_are_the_displayed_tests_as_plain_data() -> None:
    """Scoring reads ``cases`` (JSON: arguments and expected output); ``tests`` shows the same
    cases as asserts. Bools stay bools and ints ints, so the exact comparison can tell them apart."""
    p = benchgen._code_make(benchgen._CODE_BY_NAME["gt"], {"k": 17}, random.Random(0))
    cases = benchgen.code_cases(p.meta)
    assert ((18,), True) in cases and all(type(want) is bool for _, want in cases)
    f = p.meta["entry_point"]
    assert p.meta["tests"] == "".join(f"assert {f}({', '.join(map(repr, a))}) == {w!r}\n" for a, w in cases)
    row = benchgen.eval_row(p, 0)
    assert isinstance(row["cases"], str) and benchgen.code_cases(row) == cases  # a flat string in the row
    assert benchgen.same_output([1, 2], [1, 2]) and not benchgen.same_output(True, 1)
    assert not benchgen.same_output([1], [1.0]) and not benchgen.same_output((1,), [1])
    with pytest.raises(ValueError, match="no 'cases' field"):
        benchgen.code_cases({"id": "code-0", "tests": "assert f(1) == 2\n"})
    with pytest.raises(ValueError, match="pairs"):
        benchgen.code_cases({"cases": "[1, 2]"})


def test_gsm_templates_are_balanced() -> None:
    """Each template has 200 / T of the held-out problems (before: 159 of 200 were buy_give),
    and about 1 / T of the training draws."""
    evals = benchgen.eval_problems("gsm", N_BENCH["gsm"])
    T = len(benchgen.GSM_TEMPLATES)
    counts = Counter(p.meta["template"] for p in evals)
    assert set(counts) == {t.name for t in benchgen.GSM_TEMPLATES}
    assert all(abs(c - N_BENCH["gsm"] / T) <= 1 for c in counts.values()), counts
    assert [p.key for p in benchgen.eval_problems("gsm", 50)] == [p.key for p in evals[:50]]  # a prefix
    rng = random.Random(4)
    train = Counter(benchgen.draw("gsm", rng, "train").meta["template"] for _ in range(4000))
    assert all(abs(c - 4000 / T) < 0.1 * 4000 / T for c in train.values()), train


def test_gsm_split_is_disjoint_over_the_whole_key_space() -> None:
    evals = {p.key for p in benchgen.eval_problems("gsm", N_BENCH["gsm"])}
    for t in benchgen.GSM_TEMPLATES:
        space = [benchgen._gsm_key(t, nums) for nums, _ in benchgen._gsm_space(t)]
        held = [k for k in space if benchgen.heldout(k, "gsm")]
        assert len(held) >= 60 and len(space) - len(held) >= 150, (t.name, len(held), len(space))
        assert {k for k in evals if k.split(":")[1] == t.name} <= set(held)
    rng = random.Random(5)
    for _ in range(2000):
        p = benchgen.draw("gsm", rng, "train")
        assert not benchgen.heldout(p.key, "gsm") and p.key not in evals


def test_gsm_chance_floors() -> None:
    """Number-blind guessers score at most 5% (before: the training mode, 0, scored 9.5% and
    the best constant 12.5%); myopic ones (a copied number, one step, a wrong pair) 0."""
    floors = benchgen.gsm_chance_floors()
    assert floors["copy"] == floors["one_step"] == floors["wrong_pair"] == 0.0
    assert floors["blind_sample"] <= floors["blind_oracle"] and floors["blind_mode"] <= floors["blind_oracle"]
    assert 0 < floors["blind_mode"] <= 0.04 and 0 < floors["blind_template"] <= 0.05
    assert floors["floor"] == max(v for k, v in floors.items() if k != "floor") <= 0.05
    # The exact training distribution is the generator's: its answers are the ones drawn.
    dist = benchgen.gsm_answer_distribution("train")
    assert sum(dist.values()) == pytest.approx(1.0)
    rng = random.Random(6)
    drawn = Counter(int(benchgen.draw("gsm", rng, "train").meta["target"]) for _ in range(4000))
    assert set(drawn) <= set(dist)
    mean = sum(v * q for v, q in dist.items())
    assert abs(sum(v * c for v, c in drawn.items()) / 4000 - mean) < 1.0  # the mean's standard error is 0.3
    small = sum(q for v, q in dist.items() if v <= 10)
    assert abs(sum(c for v, c in drawn.items() if v <= 10) / 4000 - small) < 0.03  # standard error 0.007
    for p in benchgen.eval_problems("gsm", N_BENCH["gsm"]):
        t = benchgen._GSM_BY_NAME[p.meta["template"]]
        nums = tuple(map(int, p.key.split(":")[2:]))
        assert t.valid(nums) and p.answer.endswith(f"#### {t.value(nums)}")
