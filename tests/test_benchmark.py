"""python -m ftstudy.benchmark (issue 15): the parameter-matched control, the pooled report
from per-seed evaluations, the dry run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ftstudy.core.config import get_preset
from ftstudy.core.model import FreeTransformer
from ftstudy.eval import benchmark
from ftstudy.eval.evaluate import entry_paths, write_samples
from ftstudy.eval.suite import BENCH_TASKS, N_BENCH
from ftstudy.study.ablate import PRESETS, plan


def _params(cfg) -> int:
    return sum(p.numel() for p in FreeTransformer(cfg.model).parameters())


def test_parameter_matched_control(tmp_path: Path) -> None:
    runs = plan("benchmark", "bench", [0], {}, tmp_path)
    base_layers = get_preset(PRESETS["bench"]).model.n_layers
    by_label = {benchmark.model_label(r.config, base_layers): r.config for r in runs}
    assert list(by_label) == ["baseline", f"matched (L={base_layers + 1})", "free k=0.25", "free k=0.5", "free k=1"]
    base, matched = by_label["baseline"], by_label[f"matched (L={base_layers + 1})"]
    free = by_label["free k=1"]
    assert not matched.model.is_free and matched.model.n_layers == base.model.n_layers + 1
    # everything else as the baseline: one more block is the only change
    assert matched.replace(n_layers=base.model.n_layers) == base
    p_base, p_matched, p_free = _params(base), _params(matched), _params(free)
    block = sum(p.numel() for p in FreeTransformer(base.model).blocks[0].parameters())
    assert p_matched - p_base == block
    # the Free model's extra weights (encoder block, post-sampler): within 5% of the matched model
    assert abs(p_matched - p_free) / p_free < 0.05
    assert p_base < p_matched < p_free


def _fake_evaluations(out: Path, seeds: list[int], gain: dict[str, float]) -> None:
    """Samples files in evaluate's format: per doc pass@1, pass@10, distinct_correct."""
    rng = np.random.default_rng(0)
    labels = [benchmark.model_label(r.config, 4) for r in plan("benchmark", "bench", [0], {}, out / "runs")]
    for s in seeds:
        for label in labels:
            samples = {}
            for task in BENCH_TASKS:
                fam = task.removeprefix("ftstudy_bench_")
                n = N_BENCH[fam]
                p = np.clip(np.linspace(0.1, 0.7, n) + rng.normal(0, 0.05, n) + gain.get(f"{label}:{fam}", 0.0), 0, 1)
                c = rng.binomial(10, p)
                samples[task] = [{"doc_id": i, "filter": "samples", "pass@1": c[i] / 10,
                                  "pass@10": float(c[i] > 0), "distinct_correct": float(min(c[i], 2)),
                                  "response": "x"} for i in range(n)]
            path = entry_paths(out / f"s{s}", label)[1]
            path.parent.mkdir(parents=True, exist_ok=True)
            write_samples(path, samples)


def test_pooled_report(tmp_path: Path) -> None:
    # the path task's baseline above its chance (the best graph-blind guess, 0.43), Free κ = 1 above that
    lift = {f"{lab}:path": 0.15 for lab in ("baseline", "matched (L=5)", "free k=0.25", "free k=0.5")}
    _fake_evaluations(tmp_path, [0, 1, 2], {**lift, "free k=1:path": 0.35})
    rep = benchmark.pooled_report(tmp_path, [0, 1, 2], n_boot=500)
    rows = {r["family"]: r for r in rep["rows"]}
    assert set(rows) == {"code", "arith", "gsm", "path"}
    path = rows["path"]
    assert path["models"]["baseline"]["seeds"] == 3 and path["calibrated"]
    c = path["comparisons"]["free k=1 vs baseline"]["pass@1"]
    assert c["ci_low"] > 0 and c["rel"] > 0.25
    assert "free k=1 vs matched (L=5)" in path["comparisons"]
    assert path["beats_chance"] and 0.4 < path["chance"] < 0.45
    seed = path["seed_level"]["free k=1 vs baseline"]
    assert seed["verdict"] == "shown" and seed["p_holm"] >= seed["p"] and seed["lo"] > 0
    assert "free k=1 vs baseline: shown" in path["verdict"]
    assert "shown" not in rows["code"]["verdict"], rows["code"]["verdict"]
    assert 0 < path["mde"]["mde_rel"] < 1 and path["mde"]["seeds"] == 3 and path["mde_test"]["mde_rel"] > 0
    # below chance: no verdict at all
    _fake_evaluations(tmp_path / "blind", [0, 1, 2], {"free k=1:path": 0.2})
    low = {r["family"]: r for r in benchmark.pooled_report(tmp_path / "blind", [0, 1, 2], n_boot=200)["rows"]}
    assert low["path"]["verdict"].startswith("not gated: a baseline seed does not beat chance")
    md = (tmp_path / "report.md").read_text()
    assert "| Decision (many valid outputs) | ftstudy_bench_path |" in md and "matched (L=5)" in md
    assert json.loads((tmp_path / "report.json").read_text())["settings"]["temperature"] == 0.8


def test_dry_run_and_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert benchmark.main(["--seeds", "0", "--out", str(tmp_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "5 runs" in out and "evaluation: 5 model evaluations, 0 done" in out
    assert benchmark.main(["--seeds", "0", "--out", str(tmp_path), "--jobs", "0"]) == 2
    assert "--jobs = 0" in capsys.readouterr().err
    assert benchmark.main(["--seeds", "0", "--out", str(tmp_path), "--stage", "eval"]) == 2
    assert "not trained yet" in capsys.readouterr().err


# ---------------------------------------------------------------- one-line refusals (issue 24, part 4)

@pytest.mark.parametrize("command,seeds,extra", [
    ("benchmark", ["-1"], ["--dry-run"]), ("benchmark", ["0", "4294967296"], []), ("benchmark", ["-1"], []),
    ("decide", ["-1"], []), ("decide", ["0", "4294967296"], ["--stage", "report"]),
])
def test_bad_seeds_are_one_line_before_anything_is_written(command: str, seeds: list[str], extra: list[str],
                                                           tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--seeds -1 --dry-run was a 38-line traceback; ftstudy decide --seeds -1 the same."""
    from ftstudy.eval import decide

    main = benchmark.main if command == "benchmark" else decide.main
    assert main(["--seeds", *seeds, "--out", str(tmp_path / "out"), "--data", str(tmp_path / "data"), *extra]) == 2
    err = capsys.readouterr().err
    assert err == f"error: --seeds = {seeds[-1]} is not allowed: an integer 0 … 4294967295 (2^32 − 1, what every " \
                  f"seeded generator takes)\n"
    assert not any(tmp_path.iterdir())


@pytest.fixture
def no_sandbox(monkeypatch: pytest.MonkeyPatch) -> None:
    """This host as one without bubblewrap; FTSTUDY_ALLOW_UNSANDBOXED unset (restored after)."""
    from ftstudy.eval.suite import execution

    monkeypatch.setattr(execution, "sandbox_problem", lambda: "no bwrap binary (test)")
    monkeypatch.setenv(execution.ALLOW_UNSANDBOXED_ENV, "")


def test_no_sandbox_is_refused_before_any_stage_and_both_opt_outs_work(
        no_sandbox: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The refusal names --allow-unsandboxed and FTSTUDY_ALLOW_UNSANDBOXED=1: both work in this command."""
    args = ["--seeds", "0", "--out", str(tmp_path / "out"), "--data", str(tmp_path / "data")]
    assert benchmark.main(args) == 2  # every stage: refused before the data and the training
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no sandbox for generated code on this host: no bwrap binary (test)" in err
    assert "pass --allow-unsandboxed (or set FTSTUDY_ALLOW_UNSANDBOXED=1)" in err
    assert not any(tmp_path.iterdir())
    for opt_out in ("flag", "env"):
        if opt_out == "env":
            monkeypatch.setenv("FTSTUDY_ALLOW_UNSANDBOXED", "1")
        flag = ["--allow-unsandboxed"] if opt_out == "flag" else []
        assert benchmark.main([*args, "--stage", "eval", *flag]) == 2  # past the sandbox check: no models yet
        err = capsys.readouterr().err
        assert "WARNING: running generated code WITHOUT a sandbox (no bwrap binary (test))" in err
        assert "not trained yet" in err and "no sandbox for generated code" not in err
        monkeypatch.setenv("FTSTUDY_ALLOW_UNSANDBOXED", "")
