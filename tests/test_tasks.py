"""Tests for ftstudy.eval.suite: the offline lm-eval task suite (generated data, YAML files, scoring
through lm-eval with a fake model, the sandboxed HumanEval executor, error messages)."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import subprocess
import sys
import types
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import lm_eval
import lm_eval.tasks
import pytest
import yaml
from lm_eval.api.model import LM
from lm_eval.api.registry import get_metric, metric_registry
from lm_eval.tasks import TaskManager
from lm_eval.tasks._index import TaskIndex

from ftstudy.tasks import mathgen
from ftstudy.eval import suite as T
from ftstudy.eval.suite import execution, metrics
from ftstudy.eval.suite.__main__ import GROUP_ONLY

REPO = Path(__file__).resolve().parents[1]

# ------------------------------------------------------------------------------- fixtures


class FakeLM(LM):
    """Answers from functions of the request and records every request it gets."""

    def __init__(
        self,
        generate: Callable[[str, dict[str, Any]], str] | None = None,
        loglik: Callable[[str, str], tuple[float, bool]] | None = None,
    ) -> None:
        super().__init__()
        self._generate = generate or (lambda ctx, kw: "")
        self._loglik = loglik or (lambda ctx, cont: (-1.0, False))
        self.requests: list[tuple[str, tuple[Any, ...]]] = []

    def loglikelihood(self, requests):
        self.requests += [("loglikelihood", r.args) for r in requests]
        return [self._loglik(*r.args) for r in requests]

    def loglikelihood_rolling(self, requests):
        self.requests += [("loglikelihood_rolling", r.args) for r in requests]
        return [-1.0 for _ in requests]

    def generate_until(self, requests):
        self.requests += [("generate_until", r.args) for r in requests]
        return [self._generate(*r.args) for r in requests]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return T.materialize(tmp_path_factory.mktemp("ftstudy_tasks") / "suite")


@pytest.fixture(scope="module")
def tm(folder) -> TaskManager:
    return TaskManager(include_path=str(folder), include_defaults=False)


@pytest.fixture(autouse=True)
def no_hf_evaluate(monkeypatch, caplog):
    """Every test: lm-eval must never fall back to the HF `evaluate` hub for a metric."""
    calls: list[Any] = []

    def load(*args, **kwargs):
        calls.append((args, kwargs))
        raise AssertionError(f"evaluate.load{args} called")

    monkeypatch.setitem(sys.modules, "evaluate", types.SimpleNamespace(load=load))
    caplog.set_level(logging.WARNING)
    yield
    assert calls == []
    assert not [r for r in caplog.records if "HF Evaluate" in r.getMessage()]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def evaluate(tm: TaskManager, tasks: list[str], lm: LM, **kwargs) -> dict[str, Any]:
    kwargs = {"bootstrap_iters": 0, "log_samples": True, "confirm_run_unsafe_code": True, **kwargs}
    return lm_eval.simple_evaluate(model=lm, tasks=tasks, task_manager=tm, **kwargs)


def per_doc(res: dict[str, Any], task: str, metric: str, filt: str = "none") -> dict[str, float]:
    """{doc id: per-doc score} from the logged samples of one task and filter."""
    return {s["doc"]["id"] if "id" in s["doc"] else s["doc"]["task_id"]: float(s[metric])
            for s in res["samples"][task] if s["filter"] == filt}


# ------------------------------------------------------------------------- the task folder


def test_materialize_is_deterministic_and_skips_complete_folders(tmp_path, monkeypatch):
    assert T.render() == T.render()
    digest = T.content_hash()
    assert re.fullmatch(r"[0-9a-f]{12}", digest) and digest == T.content_hash()

    monkeypatch.setenv("FTSTUDY_CACHE", str(tmp_path / "cache"))
    a = T.materialize()
    assert a == (tmp_path / "cache" / "tasks" / digest).resolve()
    stamps = {p.name: p.stat().st_mtime_ns for p in a.iterdir()}
    assert T.materialize() == a
    assert {p.name: p.stat().st_mtime_ns for p in a.iterdir()} == stamps  # nothing rewritten
    assert [p.name for p in a.parent.iterdir()] == [digest]  # no temporary folders left

    b = T.materialize(tmp_path / "elsewhere")
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    for name in names:
        if name.endswith(".jsonl"):
            assert (a / name).read_bytes() == (b / name).read_bytes(), name
        elif name.endswith("yaml"):
            assert (a / name).read_text().replace(str(a), "@") == (b / name).read_text().replace(str(b), "@")
    T.check_data_files(a)


def test_materialize_repairs_its_folder_and_refuses_foreign_ones(tmp_path):
    out = T.materialize(tmp_path / "suite")
    (out / "gsm.test.jsonl").unlink()
    (out / "ftstudy_gsm.yaml").write_text("garbage")
    assert T.materialize(tmp_path / "suite") == out
    assert len(read_jsonl(out / "gsm.test.jsonl")) == T.N_GSM
    assert "task: ftstudy_gsm" in (out / "ftstudy_gsm.yaml").read_text()

    with ThreadPoolExecutor(2) as pool:  # concurrent writers: one wins, the other reuses it
        assert set(pool.map(T.materialize, [tmp_path / "race"] * 2)) == {(tmp_path / "race").resolve()}
    T.check_data_files(tmp_path / "race")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["race", "suite"]  # no temporary folders

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not an ftstudy task folder"):
        T.materialize(foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_command_line_path_and_list(tmp_path):
    env = {**os.environ, "FTSTUDY_CACHE": str(tmp_path)}
    run = lambda *a: subprocess.run([sys.executable, "-m", "ftstudy.eval.suite", *a], env=env, cwd=REPO,  # noqa: E731
                                    capture_output=True, text=True, check=True, timeout=120).stdout
    path = Path(run("path").strip())
    assert path == (tmp_path / "tasks" / T.content_hash()).resolve() and (path / "ftstudy_gsm.yaml").is_file()
    listing = run("list")
    for name in T.task_names():
        keys = ", ".join(T.METRIC_KEYS[name]) or GROUP_ONLY
        assert re.search(rf"^{name}\s+{re.escape(keys)}$", listing, re.M)
    assert run("check", str(path)).strip() == f"ok: {path}"


def test_task_index_has_exactly_our_tasks(tm):
    assert sorted(tm.all_tasks) == sorted(T.task_names())
    assert tm.all_groups == list(T.GROUPS)
    assert set(T.METRIC_KEYS) == set(T.task_names())
    assert all(name.startswith("ftstudy_") for name in T.task_names())


def test_builtin_task_names_pass_through(folder, caplog):
    root = Path(lm_eval.tasks.__file__).parent
    index = TaskIndex.build([root / d for d in ("gsm8k", "humaneval", "mbpp", "mmlu", "arithmetic")] + [folder])
    for name in ("gsm8k", "humaneval", "mbpp", "mmlu", "arithmetic_1dc", *T.task_names()):
        assert name in index, name
    assert index["gsm8k"].yaml_path.parent == root / "gsm8k"
    assert index["humaneval"].yaml_path.parent == root / "humaneval"
    assert not [r for r in caplog.records if "overrides existing" in r.getMessage()]


def test_generated_data(folder):
    from ftstudy.tasks import synthetic as S

    for kind in mathgen.ARITH_KINDS:
        for split, n in (("test", T.N_ARITHMETIC), ("train", 32)):
            rows = read_jsonl(folder / f"arithmetic_{kind}.{split}.jsonl")
            assert len(rows) == n and len({r["question"] for r in rows}) == n
            for r in rows:
                assert r["context"] == f"Question: {r['question']}\nAnswer:"
                expr = r["question"].removeprefix("What is ").removesuffix("?")
                expr = expr.replace(" plus ", "+").replace(" minus ", "-").replace(" times ", "*")
                assert re.fullmatch(r"[0-9+\-*() ]+", expr) and str(eval(expr)) == r["answer"]  # noqa: S307
    gsm = read_jsonl(folder / "gsm.test.jsonl")
    assert len(gsm) == T.N_GSM and len({r["question"] for r in gsm}) == T.N_GSM
    assert all(r["answer"].endswith(f"\n#### {r['target_number']}") for r in gsm)
    assert {r["template"] for r in gsm} == set(mathgen.EVAL_TEMPLATES)
    assert {r["template"] for r in read_jsonl(folder / "gsm.train.jsonl")} <= set(mathgen.TRAIN_TEMPLATES)
    he = read_jsonl(folder / "humaneval.test.jsonl")
    assert len(he) == 164 and he[0]["task_id"] == "HumanEval/0"
    syn = read_jsonl(folder / "synthetic.test.jsonl")
    assert len(syn) == 26 * T.SYNTHETIC_PER_LETTER == 520
    assert {r["prompt"] for r in syn} == {c + S.SEPARATOR for c in S.LETTERS}
    assert T.build.SYNTHETIC_LETTERS == S.LETTERS and T.build.SYNTHETIC_SEPARATOR == S.SEPARATOR
    cfg = yaml.safe_load((folder / "ftstudy_synthetic.yaml").read_text().replace("!function", ""))
    assert cfg["generation_kwargs"] == {"until": [], "max_gen_toks": S.BODY_LEN, "do_sample": True, "temperature": 1.0}


def test_heldout_problems_never_appear_in_training_documents(folder):
    def questions(docs):
        return set(re.findall(r"^Question: (.*)$", "\n\n".join(docs), re.M))

    train_arith = questions(mathgen.documents("arithmetic", 300, seed=0))
    train_words = questions(mathgen.documents("word_problems", 400, seed=0))
    assert len(train_arith) > 5000 and len(train_words) > 3000
    for kind in mathgen.ARITH_KINDS:
        test_q = {r["question"] for r in read_jsonl(folder / f"arithmetic_{kind}.test.jsonl")}
        fewshot_q = {r["question"] for r in read_jsonl(folder / f"arithmetic_{kind}.train.jsonl")}
        assert not test_q & train_arith and not test_q & fewshot_q, kind
    test_q = {r["question"] for r in read_jsonl(folder / "gsm.test.jsonl")}
    assert not test_q & train_words
    assert not test_q & {r["question"] for r in read_jsonl(folder / "gsm.train.jsonl")}


# ------------------------------------------------------------------------ scoring via lm-eval


def test_arithmetic_exact_match(tm, folder):
    answers = {r["context"]: r["answer"] for k in mathgen.ARITH_KINDS
               for r in read_jsonl(folder / f"arithmetic_{k}.test.jsonl")}
    index = {r["context"]: int(r["id"].rsplit("-", 1)[1]) for k in mathgen.ARITH_KINDS
             for r in read_jsonl(folder / f"arithmetic_{k}.test.jsonl")}
    # Docs 0, 1: right (with spaces around it); 2, 3: wrong (another number, trailing period).
    variants = [" {}", "{} ", " {}1", " {}."]

    def generate(ctx, kw):
        return variants[index[ctx]].format(answers[ctx])

    lm = FakeLM(generate)
    res = evaluate(tm, ["ftstudy_arithmetic"], lm, limit=4)
    for kind in mathgen.ARITH_KINDS:
        task = f"ftstudy_arithmetic_{kind}"
        assert per_doc(res, task, "exact_match") == {f"{kind}-eval-{i}": float(i < 2) for i in range(4)}
        assert res["results"][task]["exact_match,none"] == 0.5
    assert res["results"]["ftstudy_arithmetic"]["exact_match,none"] == 0.5
    assert res["groups"]["ftstudy_arithmetic"]["exact_match,none"] == 0.5
    kinds, args = zip(*lm.requests)
    assert set(kinds) == {"generate_until"} and len(args) == 40
    for ctx, kw in args:
        assert ctx in answers and kw["until"] == ["\n"] and kw["max_gen_toks"] == 10


def test_few_shot_prompts_use_the_train_split(tm, folder):
    lm = FakeLM()
    evaluate(tm, ["ftstudy_arithmetic_2da"], lm, limit=1, num_fewshot=2)
    (_, (ctx, _)), = lm.requests
    shots = {f"{r['context']} {r['answer']}" for r in read_jsonl(folder / "arithmetic_2da.train.jsonl")}
    first, second, question = ctx.split("\n\n")
    assert first in shots and second in shots
    assert question == read_jsonl(folder / "arithmetic_2da.test.jsonl")[0]["context"]

    lm = FakeLM()
    evaluate(tm, ["ftstudy_gsm"], lm, limit=1, num_fewshot=1)
    (_, (ctx, _)), = lm.requests
    shots = {f"{r['context']} {r['answer']}" for r in read_jsonl(folder / "gsm.train.jsonl")}
    shot, question = ctx.split("\n\n")  # the shot has the full answer, steps and "#### n"
    assert shot in shots and "\n#### " in shot
    assert question == read_jsonl(folder / "gsm.test.jsonl")[0]["context"]


def test_gsm_strict_and_flexible_match(tm, folder):
    docs = read_jsonl(folder / "gsm.test.jsonl")[:4]
    n = {d["context"]: d["target_number"] for d in docs}
    generations = {
        docs[0]["context"]: " " + docs[0]["answer"],  # right, in the trained format
        docs[1]["context"]: f" We add them up, so the total is {n[docs[1]['context']]}.",  # no "####"
        docs[2]["context"]: f" {n[docs[2]['context']]} is tempting\n#### {int(n[docs[2]['context']]) + 1}",
        docs[3]["context"]: " I do not know",
    }
    lm = FakeLM(lambda ctx, kw: generations[ctx])
    res = evaluate(tm, ["ftstudy_gsm"], lm, limit=4)
    ids = [d["id"] for d in docs]
    assert per_doc(res, "ftstudy_gsm", "exact_match", "strict-match") == dict(zip(ids, [1.0, 0.0, 0.0, 0.0]))
    assert per_doc(res, "ftstudy_gsm", "exact_match", "flexible-extract") == dict(zip(ids, [1.0, 1.0, 0.0, 0.0]))
    assert res["results"]["ftstudy_gsm"]["exact_match,strict-match"] == 0.25
    assert res["results"]["ftstudy_gsm"]["exact_match,flexible-extract"] == 0.5
    for _, (ctx, kw) in lm.requests:
        assert ctx.startswith("Question: ") and ctx.endswith("\nAnswer:")
        assert kw["until"] == ["Question:", "\n\n"] and kw["max_gen_toks"] == 256


def test_humaneval_pass_at_1(tm, folder, monkeypatch):
    monkeypatch.setattr(execution, "DEFAULT_TIMEOUT", 2.0)
    docs = read_jsonl(folder / "humaneval.test.jsonl")[:4]
    completions = {
        docs[0]["prompt"]: docs[0]["canonical_solution"],
        docs[1]["prompt"]: "    return None\n",  # wrong body
        docs[2]["prompt"]: "    while True:\n        pass\n",  # never returns: timeout
        docs[3]["prompt"]: "    x = bytearray(10 * 1024 ** 3)\n    return x\n",  # 10 GB: MemoryError
    }
    lm = FakeLM(lambda ctx, kw: completions[ctx])
    res = evaluate(tm, ["ftstudy_humaneval"], lm, limit=4)
    assert per_doc(res, "ftstudy_humaneval", "pass@1") == {
        "HumanEval/0": 1.0, "HumanEval/1": 0.0, "HumanEval/2": 0.0, "HumanEval/3": 0.0}
    assert res["results"]["ftstudy_humaneval"]["pass@1,none"] == 0.25
    for _, (ctx, kw) in lm.requests:
        assert kw["until"] == ["\nclass", "\ndef", "\n#", "\nif", "\nprint"] and kw["max_gen_toks"] == 256


def test_humaneval_is_marked_unsafe(tm):
    with pytest.raises(ValueError, match="unsafe"):
        evaluate(tm, ["ftstudy_humaneval"], FakeLM(), limit=1, confirm_run_unsafe_code=False)


def test_humaneval_bits_per_byte(tm, folder):
    docs = read_jsonl(folder / "humaneval.test.jsonl")[:3]
    ll = {(d["prompt"], d["canonical_solution"]): -7.5 * (i + 1) for i, d in enumerate(docs)}
    lm = FakeLM(loglik=lambda ctx, cont: (ll[(ctx, cont)], False))
    res = evaluate(tm, ["ftstudy_humaneval_bpb"], lm, limit=3)
    n_bytes = sum(len(d["canonical_solution"].encode("utf-8")) for d in docs)
    expected = -sum(ll.values()) / n_bytes / math.log(2)
    assert math.isclose(res["results"]["ftstudy_humaneval_bpb"]["bits_per_byte,none"], expected, rel_tol=1e-12)
    assert res["higher_is_better"]["ftstudy_humaneval_bpb"]["bits_per_byte"] is False
    # The request is exactly (prompt, solution): lm-eval 0.4.13 inserts no delimiter.
    assert sorted(args for _, args in lm.requests) == sorted(ll)


def test_synthetic_validity(tm, folder):
    from ftstudy.tasks import synthetic as S

    by_letter: dict[str, str] = {}
    for s in S.sample(3000, seed=11):
        by_letter.setdefault(s[0], s[S.PROMPT_LEN:])
    assert set(by_letter) == set(S.LETTERS)
    first_half = set(S.LETTERS[:13])

    def generate(ctx, kw):
        letter = ctx[0]
        if letter in first_half:
            return by_letter[letter]  # a valid body for this letter
        other = S.LETTERS[(S.LETTERS.index(letter) + 1) % 26]
        return by_letter[other]  # a valid body, but of another letter: invalid here

    lm = FakeLM(generate)
    res = evaluate(tm, ["ftstudy_synthetic"], lm)
    scores = per_doc(res, "ftstudy_synthetic", "valid")
    assert len(scores) == 26 * T.SYNTHETIC_PER_LETTER
    assert scores == {f"{c}-{k}": float(c in first_half) for c in S.LETTERS for k in range(T.SYNTHETIC_PER_LETTER)}
    assert res["results"]["ftstudy_synthetic"]["valid,none"] == 0.5
    for _, (ctx, kw) in lm.requests:
        assert re.fullmatch(r"[A-Z]>", ctx) and kw == {"until": [], "max_gen_toks": 64, "do_sample": True, "temperature": 1.0}
    assert metrics.synthetic_valid({"prompt": "A>"}, ["garbage"]) == {"valid": 0.0}


# ------------------------------------------------------------------- metrics and bad input


def test_our_metrics_are_registered_without_hf_evaluate():
    assert "pass@1" in metric_registry and "valid" in metric_registry
    assert get_metric("pass@1") is not None and get_metric("exact_match") is not None
    assert get_metric("bits_per_byte") is not None


def test_unknown_task_names(tm):
    with pytest.raises(KeyError, match="ftstudy_gsn"):  # lm-eval's own error: no list of names
        evaluate(tm, ["ftstudy_gsn"], FakeLM())
    assert T.check_task_names(["ftstudy_gsm", "ftstudy_arithmetic"], tm) == ["ftstudy_gsm", "ftstudy_arithmetic"]
    assert T.check_task_names("ftstudy_gsm", tm) == ["ftstudy_gsm"]
    with pytest.raises(ValueError, match=r"'ftstudy_gsn' \(did you mean 'ftstudy_gsm'\?\).*Allowed: .*ftstudy_synthetic"):
        T.check_task_names(["ftstudy_gsm", "ftstudy_gsn"], tm)


def write_task(folder: Path, name: str, data_file: Path, **extra: Any) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"validation": str(data_file)}},
        "output_type": "loglikelihood",
        "validation_split": "validation",
        "test_split": None,
        "doc_to_text": "{{context}}",
        "doc_to_target": "{{completion}}",
        "target_delimiter": "",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 2.0},
        **extra,
    }
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))


def test_missing_data_file_gives_a_clear_error(tmp_path):
    missing = tmp_path / "nowhere" / "data.jsonl"
    write_task(tmp_path / "tasks", "local_missing", missing)
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))) as info:
        T.check_data_files(tmp_path / "tasks")
    assert "local_missing" in str(info.value)
    tm = TaskManager(include_path=str(tmp_path / "tasks"), include_defaults=False)
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):  # lm-eval: path only
        tm.load(["local_missing"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        T.check_data_files(tmp_path / "no_such_folder")


def test_builtin_style_yaml_with_local_data_runs(tmp_path):
    # In the style of lm-eval's arithmetic_1dc.yaml, with the data in a local JSONL file.
    rows = [{"context": "Question: What is (2 * 5) * 3?\nAnswer:", "completion": " 30"},
            {"context": "Question: What is (9 - 4) + 1?\nAnswer:", "completion": " 6"}]
    data = tmp_path / "single_digit_three_ops.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    write_task(tmp_path / "tasks", "local_arithmetic_1dc", data)
    T.check_data_files(tmp_path / "tasks")
    tm = TaskManager(include_path=str(tmp_path / "tasks"), include_defaults=False)
    lm = FakeLM(loglik=lambda ctx, cont: (-0.5, (ctx, cont) == (rows[0]["context"], rows[0]["completion"])))
    res = evaluate(tm, ["local_arithmetic_1dc"], lm)
    assert res["results"]["local_arithmetic_1dc"]["acc,none"] == 0.5
    assert sorted(args for _, args in lm.requests) == sorted((r["context"], r["completion"]) for r in rows)
