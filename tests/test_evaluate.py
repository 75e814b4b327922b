"""python -m ftstudy.evaluate: perplexity bounds, paired statistics, the report, resume, bad input."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest

from ftstudy.eval import evaluate
from ftstudy.tasks.corpus import Document, prepare
from ftstudy.eval.evaluate import paired_stats, perplexity


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from ftstudy.core.config import get_preset
    from ftstudy.run.train import train
    root = tmp_path_factory.mktemp("eval")
    rng = random.Random(0)
    docs = [Document("text", f"d{i}", "\n".join(f"Question: What is {a} plus {b}?\nAnswer: {a + b}"
                                                for a, b in ((rng.randint(10, 99), rng.randint(10, 99))
                                                             for _ in range(20)))) for i in range(40)]
    prepare(docs, root / "shards", val_percent=20, progress=False)
    out = {}
    for name, latent in (("base", "0"), ("free", "4")):
        cfg = get_preset("tokens-tiny", {"data_dir": str(root / "shards"), "latent_bits": latent, "steps": "20",
                                         "kappa_bits": "2"})
        train(cfg, root / name, progress=False)
        out[name] = root / name
    out["shards"] = root / "shards"
    return out


def test_perplexity_bounds_are_ordered(runs: dict[str, Path]) -> None:
    free = perplexity(runs["free"] / "ckpt" / "model.pt", None, n_windows=8, k=8)
    assert free["iwae_8"] <= free["elbo"] + 1e-6  # more samples, tighter bound
    assert free["kl_per_token"] >= 0 and free["windows"] == 8
    assert free["nll_prior_bits_per_byte"] == pytest.approx(free["nll_prior"] / math.log(2), rel=1e-6)  # bytes
    base = perplexity(runs["base"] / "ckpt" / "model.pt", None, n_windows=8, k=8)
    assert base["nll_prior"] == pytest.approx(base["elbo"]) == pytest.approx(base["iwae_8"])


def test_text_perplexity_of_held_out_problems(runs: dict[str, Path]) -> None:
    """The honest bounds on given documents (a task's held-out problems), joined by EOT."""
    from ftstudy.eval.evaluate import text_perplexity
    texts = [f"Question: What is {a} plus {b}?\nAnswer: {a + b}" for a, b in ((12, 30), (45, 51), (77, 19))] * 4
    free = text_perplexity(runs["free"] / "ckpt" / "model.pt", texts, k=8)
    assert free["windows"] == len("".join(t + "x" for t in texts)) // 33 and free["documents"] == 12
    assert free["iwae_8"] <= free["elbo"] + 1e-6 and free["kl_per_token"] >= 0
    base = text_perplexity(runs["base"] / "ckpt" / "model.pt", texts, k=8)
    assert base["nll_prior"] == pytest.approx(base["elbo"]) == pytest.approx(base["iwae_8"])
    with pytest.raises(evaluate.EvalError, match="fewer than one window"):
        text_perplexity(runs["base"] / "ckpt" / "model.pt", ["hi"], k=2)


def test_paired_stats() -> None:
    a = {i: float(i % 2) for i in range(200)}
    same = paired_stats(a, dict(a))
    assert same["diff"] == 0 and same["p"] == 1.0
    better = {i: 1.0 for i in range(200)}
    s = paired_stats(a, better, n_resamples=999)
    assert s["diff"] == pytest.approx(0.5) and s["p"] < 0.01 and s["ci95"][0] > 0.3
    rng = np.random.default_rng(0)
    noise = {i: float(rng.integers(0, 2)) for i in range(200)}
    assert paired_stats(a, noise, n_resamples=999)["p"] > 0.01
    # bits per byte: (loglikelihood, bytes) pairs; b has 1 nat less per document.
    la = {i: (-10.0, 5) for i in range(50)}
    lb = {i: (-11.0, 5) for i in range(50)}
    r = paired_stats(la, lb, ratio=True, n_resamples=999)
    assert r["diff"] == pytest.approx(1 / 5 / math.log(2))


def test_compare_writes_report_and_resumes(runs: dict[str, Path], tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--checkpoints", str(runs["base"]), str(runs["free"]), "--tasks", "ftstudy_arithmetic_2da",
            "ftstudy_humaneval_bpb", "--out", str(tmp_path / "cmp"), "--limit", "6", "--ppl-windows", "4",
            "--ppl-k", "2", "--bootstrap", "199", "--gen-kwargs", "do_sample=false,temperature=0.0,max_gen_toks=32"]
    assert evaluate.main(argv) == 0
    report = json.loads((tmp_path / "cmp" / "report.json").read_text())
    # --gen-kwargs reach lm-eval's task configs and the report.
    assert report["checkpoints"][0]["settings"]["gen_kwargs"] == "do_sample=false,temperature=0.0,max_gen_toks=32"
    entry = json.loads(next(p for p in (tmp_path / "cmp" / "lm_eval").glob("*.json")
                            if not p.name.endswith(".samples.json")).read_text())["entry"]
    assert len(list((tmp_path / "cmp" / "lm_eval").glob("*.samples.json.gz"))) == 2, "samples are kept compressed"
    assert entry["configs"]["ftstudy_arithmetic_2da"]["generation_kwargs"]["max_gen_toks"] == 32
    labels = [c["label"] for c in report["checkpoints"]]
    assert labels == ["baseline", "free k=2"]
    assert sorted((r["task"], r["metric"]) for r in report["table"]) == [
        ("ftstudy_arithmetic_2da", "exact_match"), ("ftstudy_humaneval_bpb", "bits_per_byte")]  # once each
    rows = {(r["task"], r["metric"]): r for r in report["table"]}
    bpb = rows[("ftstudy_humaneval_bpb", "bits_per_byte")]
    assert bpb["group"].startswith("Likelihood") and bpb["cells"][1]["n"] == 6
    assert bpb["cells"][0]["value"] > 0 and "p" in bpb["cells"][1]
    assert rows[("ftstudy_arithmetic_2da", "exact_match")]["group"] == "Generative math"
    assert {r["metric"] for r in report["perplexity"]} == {"nll_prior", "elbo", "iwae"}
    md = (tmp_path / "cmp" / "report.md").read_text()
    assert "| Likelihood (lower is better) | ftstudy_humaneval_bpb |" in md
    assert len(list((tmp_path / "cmp" / "lm_eval").glob("*.json*"))) == 4  # results + samples, per model

    import lm_eval

    def no_rerun(*a, **k):
        raise AssertionError("a finished checkpoint was evaluated again")

    monkeypatch.setattr(lm_eval, "simple_evaluate", no_rerun)
    assert evaluate.main(argv) == 0
    assert "reusing" in capsys.readouterr().out


def test_bad_input(runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert evaluate.main(["--checkpoints", str(tmp_path / "nope"), "--tasks", "ftstudy_gsm",
                          "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert evaluate.main(["--checkpoints", str(runs["base"]), "--tasks", "ftstudy_gsm8", "--out",
                          str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "ftstudy_gsm8" in err and "ftstudy_gsm" in err
    assert evaluate.main(["--checkpoints", str(runs["base"]), "--tasks", "ftstudy_gsm", "--labels", "a", "b",
                          "--out", str(tmp_path / "o")]) == 2
    assert "--labels" in capsys.readouterr().err
    bad = tmp_path / "mytasks"
    bad.mkdir()
    (bad / "mine.yaml").write_text("task: mine\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
                                   f"    test: {tmp_path / 'absent.jsonl'}\noutput_type: loglikelihood\n"
                                   "test_split: test\ndoc_to_text: q\ndoc_to_target: a\n")
    assert evaluate.main(["--checkpoints", str(runs["base"]), "--tasks", "mine", "--include-path", str(bad),
                          "--out", str(tmp_path / "o")]) == 2
    assert "absent.jsonl" in capsys.readouterr().err


def test_generated_code_needs_the_opt_in(runs: dict[str, Path], tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    # Refused before any generation: lm-eval checks the task's unsafe_code flag first.
    assert evaluate.main(["--checkpoints", str(runs["base"]), "--tasks", "ftstudy_humaneval", "--limit", "1",
                          "--no-perplexity", "--out", str(tmp_path / "o")]) == 2
    assert "task ftstudy_humaneval executes model-generated code; pass --confirm-run-unsafe-code" \
        in capsys.readouterr().err



# ---------------------------------------------------------------- one-line refusals (issue 24, part 4)

@pytest.mark.parametrize("seed", ["-1", "4294967296"])
def test_bad_seed_is_refused_before_any_model_load_or_file_write(seed: str, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """--seed -1 was a 29-line traceback, after the model was loaded and command.txt written."""
    def no_load(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(evaluate, "load_model", no_load)
    monkeypatch.setattr(evaluate, "resolve_checkpoint", no_load)
    out = tmp_path / "o"
    assert evaluate.main(["--checkpoints", str(tmp_path / "base"), "--tasks", "ftstudy_gsm", "--seed", seed,
                          "--confirm-run-unsafe-code", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: --seed = {seed} is not allowed: an integer 0 … 4294967295 (2^32 − 1, what every seeded " \
                  f"generator takes)\n"
    assert not out.exists()  # no command.txt


def test_no_sandbox_refusal_names_opt_outs_that_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Where no sandbox can be made, the refusal names --allow-unsandboxed and
    FTSTUDY_ALLOW_UNSANDBOXED=1, and each of them gets past it (here to the missing checkpoint)."""
    from ftstudy.eval.suite import execution

    monkeypatch.setattr(execution, "sandbox_problem", lambda: "no bwrap binary (test)")
    monkeypatch.setenv(execution.ALLOW_UNSANDBOXED_ENV, "")
    args = ["--checkpoints", str(tmp_path / "nope"), "--tasks", "ftstudy_humaneval", "--confirm-run-unsafe-code",
            "--out", str(tmp_path / "o")]
    assert evaluate.main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pass --allow-unsandboxed (or set FTSTUDY_ALLOW_UNSANDBOXED=1)" in err
    assert evaluate.main([*args, "--allow-unsandboxed"]) == 2
    err = capsys.readouterr().err
    assert "WITHOUT a sandbox" in err and "does not exist" in err
    monkeypatch.setenv(execution.ALLOW_UNSANDBOXED_ENV, "1")
    assert evaluate.main(args) == 2
    err = capsys.readouterr().err
    assert "WITHOUT a sandbox" in err and "does not exist" in err
    assert not (tmp_path / "o").exists()
