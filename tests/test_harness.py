"""FTStudyLM, the lm-eval wrapper: honest Z, batching against a naive reference, generation, bad input."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ftstudy.core.checkpoint import save_model
from ftstudy.core.config import ModelConfig, RunConfig, TaskConfig
from ftstudy.core.latent import sample_bits
from ftstudy.eval.harness import FTStudyLM, HarnessError
from ftstudy.core.model import FreeTransformer

EOT = 256


def _cfg(latent_bits: int, kappa: float = 8.0, max_seq_len: int = 32) -> RunConfig:
    m = ModelConfig(vocab_size=258, n_layers=2, dim=32, n_heads=2, max_seq_len=max_seq_len, latent_bits=latent_bits,
                    kappa_bits=kappa)
    return RunConfig(model=m, task=TaskConfig(name="tokens", data_dir="unused", n_generate=0, probe_independent=0,
                                              probe_groups=0))


@pytest.fixture(scope="module")
def leaky_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A byte-level Free model trained with κ = 8 bits on <EOT> then one random byte repeated:
    the first byte is a coin flip only Z can know, so the encoder learns to carry it."""
    torch.manual_seed(0)
    cfg = _cfg(8)
    m = FreeTransformer(cfg.model)
    opt = torch.optim.AdamW(m.parameters(), 1e-2)
    for _ in range(250):
        b = torch.randint(97, 113, (64, 1))
        x = torch.cat([torch.full((64, 1), EOT), b.expand(64, 8)], 1)
        out = m(x[:, :-1], x[:, 1:], z="posterior-leaky")
        out.loss.backward()
        opt.step()
        opt.zero_grad()
    path = tmp_path_factory.mktemp("ckpt") / "free.pt"
    save_model(path, m, cfg, step=250, extra={"tokenizer": {"kind": "byte"}})
    return path


@pytest.fixture(scope="module")
def base_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(1)
    cfg = _cfg(0)
    path = tmp_path_factory.mktemp("ckpt") / "base.pt"
    save_model(path, FreeTransformer(cfg.model), cfg, step=0, extra={"tokenizer": {"kind": "byte"}})
    return path


@pytest.mark.parametrize("z_samples", [1, 3])
@pytest.mark.parametrize("policy", ["posterior-context", "prior"])
def test_one_token_continuations_sum_to_one(leaky_ckpt: Path, policy: str, z_samples: int) -> None:
    lm = FTStudyLM(leaky_ckpt, z_policy=policy, z_samples=z_samples, batch_size=50)
    for ctx in ([EOT], [EOT, 100, 100]):
        res = lm._loglikelihood_tokens([(None, ctx, [v]) for v in range(258)], disable_tqdm=True)
        assert abs(sum(math.exp(ll) for ll, _ in res) - 1) < 1e-3


def test_a_leaking_wrapper_would_fail_that_test(leaky_ckpt: Path) -> None:
    """Control: Z from an encoder that sees the continuation makes the same sum far above 1."""
    lm = FTStudyLM(leaky_ckpt)
    total = 0.0
    with torch.no_grad():
        for v in range(258):
            seq = torch.tensor([[EOT, v]])
            logits = lm.model(seq, z="posterior-leaky", generator=torch.Generator().manual_seed(0)).logits
            total += float(torch.log_softmax(logits[0, 0].float(), -1)[v].exp())
    assert total > 2.0


def _naive(lm: FTStudyLM, ctx: list[int], cont: list[int], k: int) -> float:
    """One request alone: encoder on the context alone (no padding, no mask), Z drawn with the
    wrapper's seed for the row (posterior at the context, fair coins after), explicit bits."""
    win = lm.max_length
    whole = (ctx + cont)[-(win + 1):]
    inp = whole[:-1]
    n_ctx = len(inp) - len(cont) + 1
    m = lm.model
    with torch.no_grad():
        lls = []
        for j in range(k):
            if m.cfg.is_free:
                z_logits = torch.zeros(1, len(inp), m.cfg.latent_bits)  # logit 0: a fair coin (prior Z)
                if lm.z_policy == "posterior-context":
                    z_logits[:, :n_ctx] = m(torch.tensor([inp[:n_ctx]]), z="posterior-leaky").enc_logits
                bits = sample_bits(z_logits, [lm._z_generator(inp[:n_ctx], j)])
                logits = m(torch.tensor([inp]), z=bits).logits[0]
            else:
                logits = m(torch.tensor([inp])).logits[0]
            lp = torch.log_softmax(logits.float(), -1)[len(inp) - len(cont):]
            lls.append(float(lp.gather(-1, torch.tensor(cont)[:, None]).sum()))
    return float(torch.logsumexp(torch.tensor(lls, dtype=torch.float64), 0) - math.log(k))


@pytest.mark.parametrize("which", ["free-posterior-context", "free-prior", "base"])
def test_batched_scores_match_the_naive_reference(leaky_ckpt: Path, base_ckpt: Path, which: str) -> None:
    ckpt = base_ckpt if which == "base" else leaky_ckpt
    policy = "prior" if which == "free-prior" else "posterior-context"
    g = torch.Generator().manual_seed(3)
    reqs = []
    for n_ctx, n_cont in [(1, 1), (3, 5), (20, 4), (40, 10), (5, 32), (31, 2), (2, 1)]:  # some truncated left
        reqs.append((None, torch.randint(0, 256, (n_ctx,), generator=g).tolist(),
                     torch.randint(0, 256, (n_cont,), generator=g).tolist()))
    outs = []
    for bs in (1, 3, 16):
        lm = FTStudyLM(ckpt, z_policy=policy, z_samples=2, batch_size=bs)
        outs.append([ll for ll, _ in lm._loglikelihood_tokens(reqs, disable_tqdm=True)])
    lm = FTStudyLM(ckpt, z_policy=policy, z_samples=2)
    ref = [_naive(lm, c, t, 2) for _, c, t in reqs]
    for got in outs:
        assert got == pytest.approx(ref, abs=1e-4)


def test_a_continuation_longer_than_the_window_is_scored_in_pieces(leaky_ckpt: Path) -> None:
    lm = FTStudyLM(leaky_ckpt, batch_size=4)
    ctx, cont = [EOT, 97], list(range(97, 113)) * 3  # 48 tokens > window 32: pieces of 16
    (whole,) = lm._loglikelihood_tokens([(None, ctx, cont)], disable_tqdm=True)
    pieces = lm._loglikelihood_tokens([(None, ctx + cont[:s], cont[s:s + 16]) for s in (0, 16, 32)],
                                      disable_tqdm=True)
    assert whole[0] == pytest.approx(sum(p for p, _ in pieces), abs=1e-4)
    assert whole[1] == all(g for _, g in pieces)


def test_scores_are_reproducible_and_seeded(leaky_ckpt: Path) -> None:
    reqs = [(None, [EOT, 97, 97], [97, 97, 98])]
    a = FTStudyLM(leaky_ckpt, seed=0)._loglikelihood_tokens(reqs, disable_tqdm=True)
    b = FTStudyLM(leaky_ckpt, seed=0)._loglikelihood_tokens(reqs, disable_tqdm=True)
    assert a == b
    others = {FTStudyLM(leaky_ckpt, seed=s, z_policy="prior")._loglikelihood_tokens(reqs, disable_tqdm=True)[0][0]
              for s in range(6)}
    assert len(others) > 1  # Z draws depend on the seed


def test_rolling_equals_one_pass_for_a_short_document(base_ckpt: Path) -> None:
    class Req:
        def __init__(self, text: str) -> None:
            self.args = (text,)

    lm = FTStudyLM(base_ckpt)
    text = "def f(x):\n    return 2*x\n"  # 26 bytes < window 32
    ids = lm.tok_encode(text)
    (got,) = lm.loglikelihood_rolling([Req(text)], disable_tqdm=True)
    with torch.no_grad():
        logits = lm.model(torch.tensor([[EOT] + ids[:-1]])).logits[0]
    ref = float(torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(ids)[:, None]).sum())
    assert got == pytest.approx(ref, abs=1e-4)
    long = "x = 1\n" * 30  # 180 bytes: six windows, every byte scored once
    (got_long,) = lm.loglikelihood_rolling([Req(long)], disable_tqdm=True)
    assert got_long < got < 0


@pytest.mark.parametrize("policy", ["posterior-context", "prior"])
def test_batched_generation_matches_one_at_a_time(leaky_ckpt: Path, policy: str) -> None:
    lm1 = FTStudyLM(leaky_ckpt, z_policy=policy, batch_size=1)
    lm4 = FTStudyLM(leaky_ckpt, z_policy=policy, batch_size=4)
    prompts = [[EOT], [EOT, 97, 97, 97], [100] * 20, [EOT, 105]]
    for temperature in (0.0, 1.0):
        one = [lm1._generate_batch([p], [], 12, temperature)[0] for p in prompts]
        many = lm4._generate_batch(prompts, [], 12, temperature)
        assert one == many


def test_a_model_in_memory_scores_and_samples_like_its_checkpoint(leaky_ckpt: Path) -> None:
    class Req:
        def __init__(self, ctx: str, kw: dict) -> None:
            self.args = (ctx, kw)

    reqs = [(None, [EOT, 97, 97], [97, 98]), (None, [EOT], [100])]
    gens = [Req("aa", {"until": [], "max_gen_toks": 6, "do_sample": True}),
            Req("aa", {"until": [], "max_gen_toks": 6, "do_sample": True, "top_k": 1}),
            Req("aa", {"until": [], "max_gen_toks": 6})]
    lm = FTStudyLM(leaky_ckpt, z_samples=2)
    mem = FTStudyLM(model=FreeTransformer(lm.model.cfg).eval(), tokenizer=lm.tok, z_samples=2)
    mem.model.load_state_dict(lm.model.state_dict())
    assert mem.checkpoint is None and mem.max_length == 32
    assert mem._loglikelihood_tokens(reqs, disable_tqdm=True) == lm._loglikelihood_tokens(reqs, disable_tqdm=True)
    outs = mem.generate_until(gens, disable_tqdm=True)
    assert outs == lm.generate_until(gens, disable_tqdm=True)
    assert outs[1] == outs[2]  # top_k = 1 is greedy


def test_repeated_prompts_get_their_own_draws(tmp_path: Path) -> None:
    """Identical requests each get their own Z and token draws.  The model is untrained (its
    next-byte distribution is spread over the vocabulary), so shared draws would show as
    identical outputs whatever the floating-point details of a training run on this CPU."""
    class Req:
        def __init__(self, ctx: str) -> None:
            self.args = (ctx, {"until": [], "max_gen_toks": 8, "do_sample": True, "temperature": 1.0})

    torch.manual_seed(2)
    cfg = _cfg(8)
    path = tmp_path / "untrained.pt"
    save_model(path, FreeTransformer(cfg.model), cfg, step=0, extra={"tokenizer": {"kind": "byte"}})
    lm = FTStudyLM(path, batch_size=3)
    outs = lm.generate_until([Req("\n")] * 6 + [Req("ab")], disable_tqdm=True)
    assert len(set(outs[:6])) == 6
    assert outs == FTStudyLM(path, batch_size=7).generate_until([Req("\n")] * 6 + [Req("ab")], disable_tqdm=True)


def test_generate_until_stops_and_limits(leaky_ckpt: Path) -> None:
    class Req:
        def __init__(self, ctx: str, kw: dict) -> None:
            self.args = (ctx, kw)

    lm = FTStudyLM(leaky_ckpt)
    free_run = lm.generate_until([Req("aaaa", {"until": [], "max_gen_toks": 70})], disable_tqdm=True)[0]
    assert len(free_run.encode()) <= 70 * 3  # replacement chars may widen undecodable bytes
    # Past the 32-token window, generation continues on the last half window.
    assert len(lm.tok_encode(free_run)) >= 40 or "\ufffd" in free_run
    stop = free_run[3:5] if len(free_run) >= 5 else None
    if stop:
        cut = lm.generate_until([Req("aaaa", {"until": [stop], "max_gen_toks": 70})], disable_tqdm=True)[0]
        assert stop not in cut and free_run.startswith(cut)
    short = lm.generate_until([Req("aaaa", {"until": "\n", "max_gen_toks": 3})], disable_tqdm=True)[0]
    assert len(lm.tok_encode(short)) <= 3 * 3
    assert lm.generate_until([Req("", {"max_gen_toks": 2})], disable_tqdm=True)[0] is not None  # empty → <EOT>


def test_bad_input_is_a_clear_error(tmp_path: Path, leaky_ckpt: Path) -> None:
    with pytest.raises(HarnessError, match="does not exist"):
        FTStudyLM(tmp_path / "nope.pt")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(HarnessError, match="not an ftstudy checkpoint"):
        FTStudyLM(foreign)
    with pytest.raises(HarnessError, match="z_policy"):
        FTStudyLM(leaky_ckpt, z_policy="posterior")
    with pytest.raises(HarnessError, match="z_samples"):
        FTStudyLM(leaky_ckpt, z_samples=0)
    with pytest.raises(HarnessError, match="unknown FTStudyLM argument"):
        FTStudyLM(leaky_ckpt, temperature=3)
    with pytest.raises(HarnessError, match="either a checkpoint path or a model instance"):
        FTStudyLM()
    lm = FTStudyLM(leaky_ckpt)
    with pytest.raises(HarnessError, match="needs its tokenizer"):
        FTStudyLM(model=lm.model)
    with pytest.raises(HarnessError, match="top_p"):
        lm.generate_until([type("R", (), {"args": ("abc", {"do_sample": True, "top_p": 1.5})})()], disable_tqdm=True)
    with pytest.raises(HarnessError, match="zero tokens"):
        lm._loglikelihood_tokens([(None, [], [97])], disable_tqdm=True)

    class Req:
        args = ("abc", {"until": 5})

    with pytest.raises(HarnessError, match="until"):
        lm.generate_until([Req()], disable_tqdm=True)


def test_synthetic_checkpoint_uses_the_character_tokenizer(tmp_path: Path) -> None:
    from ftstudy.core.config import get_preset
    cfg = get_preset("synthetic-tiny")
    path = tmp_path / "syn.pt"
    save_model(path, FreeTransformer(cfg.model), cfg, step=0)
    lm = FTStudyLM(path)
    assert lm.tok_encode("A>") == [3, 2]
    with pytest.raises(HarnessError, match="cannot be tokenized"):
        lm.tok_encode("a>")
    with pytest.raises(HarnessError, match="end-of-text"):
        _ = lm.eot_token_id


def test_lm_eval_cli_finds_the_model(base_ckpt: Path, tmp_path: Path) -> None:
    """`python -m ftstudy.harness` is lm-eval's CLI with --model ftstudy registered."""
    from ftstudy.eval import suite as tasks
    include = tasks.materialize()
    r = subprocess.run([sys.executable, "-m", "ftstudy.eval.harness", "run", "--model", "ftstudy", "--model_args",
                        f"checkpoint={base_ckpt}", "--include_path", str(include), "--tasks",
                        "ftstudy_arithmetic_2da", "--limit", "2", "--output_path", str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "ftstudy_arithmetic_2da" in r.stdout


# ---------------------------------------------------------------- python -m ftstudy.harness: one-line refusals

def test_sandboxed_tasks_are_the_suites_unsafe_code_tasks_and_their_groups() -> None:
    import re

    from ftstudy.eval.harness import SANDBOXED_TASKS
    from ftstudy.eval.suite import render

    yamls = {name: data.decode() for name, data in render().items() if name.endswith(".yaml")}
    unsafe = {re.search(r"^task: (\S+)$", text, re.M).group(1) for text in yamls.values()
              if re.search(r"^unsafe_code: true$", text, re.M)}
    groups = {re.search(r"^group: (\S+)$", text, re.M).group(1) for text in yamls.values()
              if re.search(r"^group: ", text, re.M) and any(re.search(rf"^\s+- {t}$", text, re.M) for t in unsafe)}
    assert unsafe and groups and set(SANDBOXED_TASKS) == unsafe | groups


@pytest.fixture
def lm_eval_cli(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """lm-eval's CLI replaced by a recorder of its sys.argv; FTSTUDY_ALLOW_UNSANDBOXED unset (restored after)."""
    import lm_eval.__main__

    from ftstudy.eval.suite import execution

    calls: list[list[str]] = []
    monkeypatch.setattr(lm_eval.__main__, "cli_evaluate", lambda: calls.append(list(sys.argv[1:])))
    monkeypatch.setattr(sys, "argv", ["harness"])
    monkeypatch.setenv(execution.ALLOW_UNSANDBOXED_ENV, "")
    return calls


RUN = ["run", "--model", "ftstudy", "--model_args", "checkpoint=model.pt", "--limit", "2"]


@pytest.mark.parametrize("tasks", [["--tasks", "ftstudy_humaneval"], ["--tasks", "ftstudy_gsm,ftstudy_bench"],
                                   ["-t", "ftstudy_gsm", "ftstudy_bench_code"]])
def test_no_sandbox_is_refused_before_lm_eval_starts(tasks: list[str], lm_eval_cli: list[list[str]],
                                                     monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """Without bwrap the harness refused only after generating (37-69 lines); now one line, no model loaded."""
    from ftstudy.eval import harness
    from ftstudy.eval.suite import execution

    monkeypatch.setattr(execution, "sandbox_problem", lambda: "no bwrap binary (test)")
    assert harness.main([*RUN, *tasks, "--confirm_run_unsafe_code"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: no sandbox for generated code on this host: no bwrap")
    assert "pass --allow-unsandboxed (or set FTSTUDY_ALLOW_UNSANDBOXED=1)" in err
    assert lm_eval_cli == []
    # Both opt-outs the refusal names work here; ours is taken out of lm-eval's arguments.
    assert harness.main([*RUN, *tasks, "--confirm_run_unsafe_code", "--allow-unsandboxed"]) == 0
    assert lm_eval_cli == [[*RUN, *tasks, "--confirm_run_unsafe_code"]]
    assert "WARNING: running generated code WITHOUT a sandbox" in capsys.readouterr().err
    monkeypatch.setenv(execution.ALLOW_UNSANDBOXED_ENV, "1")
    assert harness.main([*RUN, *tasks, "--confirm_run_unsafe_code"]) == 0 and len(lm_eval_cli) == 2


def test_code_tasks_need_the_confirmation_and_others_need_no_sandbox(lm_eval_cli: list[list[str]],
                                                                     monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from ftstudy.eval import harness
    from ftstudy.eval.suite import execution

    monkeypatch.setattr(execution, "sandbox_problem", lambda: "no bwrap binary (test)")
    assert harness.main([*RUN, "--tasks", "ftstudy_bench"]) == 2
    assert capsys.readouterr().err == ("error: task ftstudy_bench executes model-generated code; pass "
                                       "--confirm_run_unsafe_code to run it (in the sandbox of "
                                       "ftstudy.eval.suite.execution)\n")
    assert harness.main([*RUN, "--tasks", "ftstudy_gsm", "ftstudy_bench_arith", "--confirm_run_unsafe_code"]) == 0
    assert harness.main(["ls", "tasks"]) == 0
    assert len(lm_eval_cli) == 2 and capsys.readouterr().err == ""


def test_errors_of_ours_inside_lm_eval_are_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys) -> None:
    import lm_eval.__main__

    from ftstudy.eval import harness
    from ftstudy.eval.suite import execution

    monkeypatch.setattr(sys, "argv", ["harness"])

    def build_model() -> None:  # what lm-eval does with --model ftstudy --model_args checkpoint=...
        FTStudyLM(str(tmp_path / "nope.pt"))

    def unsafe() -> None:
        raise ValueError("Attempted to run task: humaneval which is marked as unsafe. Set "
                         "confirm_run_unsafe_code=True to run this task.")

    def late_sandbox() -> None:
        raise execution.SandboxUnavailable("no sandbox for generated code on this host: test")

    for fake, expected in ((build_model, "does not exist"), (unsafe, "humaneval which is marked as unsafe"),
                           (late_sandbox, "no sandbox")):
        monkeypatch.setattr(lm_eval.__main__, "cli_evaluate", fake)
        assert harness.main(["run", "--model", "ftstudy", "--tasks", "gsm8k"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and expected in err and err.count("\n") == 1, err

    def other() -> None:
        raise ValueError("a bug")

    monkeypatch.setattr(lm_eval.__main__, "cli_evaluate", other)
    with pytest.raises(ValueError, match="a bug"):  # not ours: not hidden
        harness.main(["run", "--tasks", "gsm8k"])


@pytest.mark.parametrize("seed", [-1, 2**32, "-1", "abc"])
def test_seed_model_argument_must_be_32_bits(seed: object, base_ckpt: Path) -> None:
    with pytest.raises(HarnessError, match=r"seed = .* is not allowed: an integer 0 … 4294967295"):
        FTStudyLM(base_ckpt, seed=seed)
    assert FTStudyLM(base_ckpt, seed="7").seed == 7


def test_the_command_line_refusal_is_one_line_and_exit_status_2(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "ftstudy.harness", "run", "--model", "ftstudy", "--model_args",
                        f"checkpoint={tmp_path / 'model.pt'}", "--tasks", "ftstudy_humaneval"],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr[-2000:]
    assert "task ftstudy_humaneval executes model-generated code" in r.stderr
    assert not any(tmp_path.iterdir())
