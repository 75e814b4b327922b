"""The study runner: grids, bad input, resume after SIGKILL, extension, summary.csv."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ftstudy.study.ablate import main, plan
from ftstudy.study.studies import KAPPAS
from ftstudy.core.config import parse_set_args
from ftstudy.run.train import REPO_ROOT

# The quick preset shrunk to seconds per run.
TINY = ["n_layers=2", "dim=16", "n_heads=2", "batch_size=4", "val_size=8", "n_generate=4", "probe_independent=2",
        "probe_groups=1", "probe_group_size=2", "val_every=2", "ckpt_every=2", "log_every=1", "precision=32-true"]


def test_grids() -> None:
    kl = plan("kl_budget", "quick", [0, 1], {}, Path("/x"))
    assert len(kl) == 2 * (1 + len(KAPPAS))
    assert kl[0].config.model.latent_bits == 0
    assert sorted(r.config.model.kappa_bits for r in kl if r.config.model.is_free)[:2] == [1 / 64, 1 / 64]
    depth = plan("injection_depth", "quick", [0], {"n_layers": "6"}, Path("/x"))
    assert [r.config.model.inject_layer for r in depth] == [1, 2, 3, 4, 5]
    assert {r.config.model.kappa_bits for r in depth} == {0.125}
    assert [r.config.model.latent_bits for r in plan("latent_bits", "quick", [0], {}, Path("/x"))] == [1, 2, 4, 8, 16]
    scope = plan("free_bits_scope", "quick", [3], {}, Path("/x"))
    assert [r.config.model.free_bits_scope for r in scope] == ["token", "sequence"]
    assert all(r.config.train.seed == 3 for r in scope)
    assert len(plan("all", "quick", [0], {}, Path("/x"))) == 9 + 3 + 5 + 2 + 9
    names = [r.run_dir for r in plan("all", "quick", [0, 1], {}, Path("/x"))]
    assert len(names) == len(set(names))


def test_bad_input(tmp_path: Path, capsys) -> None:
    assert main(["--study", "kl_budget", "--set", "kapa=1", "--out", str(tmp_path)]) == 2
    assert "unknown config key 'kapa'" in capsys.readouterr().err
    for seeds in (["-1"], ["0", "4294967296"]):
        assert main(["--study", "kl_budget", "--seeds", *seeds, "--out", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert f"error: --seeds = {seeds[-1]} is not allowed: an integer 0 … 4294967295" in err
        assert err.count("\n") == 1 and not any(tmp_path.iterdir())
    with pytest.raises(SystemExit):
        main(["--study", "everything"])
    with pytest.raises(SystemExit):
        main(["--study", "kl_budget", "--preset", "huge"])
    with pytest.raises(SystemExit):
        main(["--study", "kl_budget", "--seeds", "0.5"])
    assert main(["--study", "all", "--dry-run", "--out", str(tmp_path)]) == 0
    assert "28 runs" in capsys.readouterr().out and not any(tmp_path.iterdir())


def test_repeated_set_options_merge(tmp_path: Path, capsys) -> None:
    """A second --set once replaced the first: --set steps=7 --set lr=0.5 trained the preset's steps."""
    assert main(["--study", "free_bits_scope", "--set", "steps=7", "lr=0.1", "--set", "lr=0.5", "--dry-run",
                 "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "-lr0.5-" in out and "-lr0.1-" not in out and "(7 steps left)" in out
    assert not any(tmp_path.iterdir())


def _sweep(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "ftstudy.study.ablate", "--study", "free_bits_scope", "--preset", "quick",
            "--out", str(out), "--set", *TINY, *extra]


def test_sigkill_then_resume_loses_nothing(tmp_path: Path) -> None:
    out = tmp_path / "ablate"
    cmd = _sweep(out, "steps=16")
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    study = out / "free_bits_scope"
    deadline = time.time() + 240
    first = None
    while time.time() < deadline and proc.poll() is None:
        done = sorted(study.glob("*/summary.json")) if study.exists() else []
        started = [p for p in study.glob("*/ckpt/last.ckpt")] if study.exists() else []
        if done and len(started) >= 2:  # first run finished, second one has a checkpoint
            first = done[0]
            break
        time.sleep(0.2)
    assert first is not None, "the sweep did not reach its second run"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = first.read_bytes(), first.stat().st_mtime_ns
    assert json.loads(first.read_text())["step"] == 16  # finished files are whole JSON
    rerun = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "resuming" in rerun.stdout
    assert (first.read_bytes(), first.stat().st_mtime_ns) == before  # finished run untouched
    rows = list(csv.DictReader(open(study / "summary.csv")))
    assert len(rows) == 2 and {r["free_bits_scope"] for r in rows} == {"token", "sequence"}
    for run in study.iterdir():
        if run.is_dir():
            steps = [(r["step"], r["split"]) for r in csv.DictReader(open(run / "metrics.csv"))]
            assert len(steps) == len(set(steps))
    # A folder holding a run of another config is refused before anything is touched.
    other = sorted(p for p in study.iterdir() if p.is_dir())[-1] / "config.json"
    saved = json.loads(other.read_text())
    saved["config"]["train"]["lr"] = 0.5
    other.write_text(json.dumps(saved))
    refused = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 3 and "different config (train.lr: 0.5" in refused.stderr
    assert (first.read_bytes(), first.stat().st_mtime_ns) == before


def test_finished_run_extends_in_place(tmp_path: Path, capsys) -> None:
    args = ["--study", "injection_depth", "--out", str(tmp_path), "--set", *TINY]
    assert main([*args, "steps=4"]) == 0
    (run,) = [p for p in (tmp_path / "injection_depth").iterdir() if p.is_dir()]
    assert json.loads((run / "summary.json").read_text())["step"] == 4
    assert main([*args, "steps=8"]) == 0
    assert "extending" in capsys.readouterr().out
    assert json.loads((run / "summary.json").read_text())["step"] == 8
    assert json.loads((run / "config.json").read_text())["config"]["train"]["steps"] == 8
    steps = [int(r["step"]) for r in csv.DictReader(open(run / "metrics.csv")) if r["split"] == "train"]
    assert steps == list(range(1, 9))
    assert main([*args, "steps=6"]) == 3  # shortening is refused
    # Tables and figures are rebuilt from the run files alone.
    assert main([*args, "steps=8", "--report"]) == 0
    agg = (tmp_path / "injection_depth" / "aggregate.md").read_text()
    assert "| free |" in agg and "MI(Z;pos) bits" in agg
    assert (tmp_path / "figures" / "injection_depth.png").stat().st_size > 10_000


def test_identical_runs_are_copied_between_studies(tmp_path: Path) -> None:
    from ftstudy.study.ablate import copy_run, find_twin

    out = tmp_path / "ablate"
    (scope_run,) = [r for r in plan("free_bits_scope", "quick", [0], {}, out) if r.config.model.free_bits_scope == "token"]
    (width_run,) = [r for r in plan("latent_bits", "quick", [0], {}, out) if r.config.model.latent_bits == 8]
    assert scope_run.run_dir.name == width_run.run_dir.name
    scope_run.run_dir.mkdir(parents=True)
    (scope_run.run_dir / "config.json").write_text(json.dumps({"config": scope_run.config.to_dict()}))
    assert find_twin(width_run, out) is None  # not finished yet
    (scope_run.run_dir / "summary.json").write_text("{}")
    assert find_twin(width_run, out) == scope_run.run_dir
    other = [r for r in plan("latent_bits", "quick", [0], {}, out) if r.config.model.latent_bits == 4][0]
    assert find_twin(other, out) is None
    copy_run(scope_run.run_dir, width_run.run_dir)
    assert (width_run.run_dir / "COPIED_FROM").read_text().strip() == f"free_bits_scope/{scope_run.run_dir.name}"
    assert width_run.status == "finished" or (width_run.run_dir / "summary.json").exists()


def test_sweep_restarts_a_run_that_left_no_checkpoint(tmp_path: Path, capsys, lock_holder) -> None:
    """... once the sweep that holds the results folder has let go (--wait)."""
    from ftstudy.io import LOCK_NAME

    args = ["--study", "injection_depth", "--out", str(tmp_path), "--set", *TINY, "steps=2"]
    (run,) = plan("injection_depth", "quick", [0], parse_set_args([*TINY, "steps=2"]), tmp_path)
    run.run_dir.mkdir(parents=True)
    (run.run_dir / "config.json").write_text(json.dumps({"config": run.config.to_dict()}))
    (run.run_dir / "metrics.csv").write_text("step,split\n1,train\n")
    holder = lock_holder(tmp_path, seconds=1.5)  # another sweep on this folder
    assert main(args) == 3
    assert f"sweep folder {tmp_path} is in use by process {holder.pid}" in capsys.readouterr().err
    assert not (run.run_dir / "summary.json").exists()
    assert main([*args, "--wait"]) == 0
    assert f"in use by process {holder.pid}; waiting" in capsys.readouterr().err
    assert json.loads((run.run_dir / "summary.json").read_text())["step"] == 2
    assert not list(tmp_path.rglob(LOCK_NAME))
    # A folder that is not a run, where a run would go, stops the sweep before it starts.
    (run.run_dir / "summary.json").unlink()
    (run.run_dir / "config.json").unlink()
    assert main(args) == 3
    assert f"{run.run_dir} exists and is not an ftstudy run folder" in capsys.readouterr().err
    assert (run.run_dir / "metrics.csv").exists()


def test_demo_is_a_parallel_reduced_kl_sweep(tmp_path: Path, capsys) -> None:
    """make demo: baseline + κ ∈ {1/64, 1/8, 1, 8}, two runs at a time, figures, a table."""
    import shlex

    from ftstudy.study import demo
    from ftstudy.run.train import build_parser, config_from_args

    out = tmp_path / "demo"
    assert demo.main(["--out", str(out), "--jobs", "2", "--set", *TINY, "steps=4"]) == 0
    text = capsys.readouterr().out
    runs = sorted(p for p in (out / "kl_budget").iterdir() if p.is_dir() and p.name != "logs")
    assert [p.name.split("-")[2:4] for p in runs] == [["base", "dim16"], ["free", "k0.015625"], ["free", "k0.125"],
                                                      ["free", "k1"], ["free", "k8"]]
    for run in runs:
        assert json.loads((run / "summary.json").read_text())["step"] == 4
        saved = json.loads((run / "config.json").read_text())
        assert saved["launched_by"].startswith("python -m ftstudy.ablate --study kl_budget --preset demo")
        # The recorded ftstudy.run.train command reproduces the run's config exactly.
        again = config_from_args(build_parser().parse_args(shlex.split(saved["command"])[3:]))
        assert again.to_dict() == saved["config"]
    assert (out / "kl_budget" / "logs" / f"{runs[-1].name}.log").exists()
    for line in ("baseline", "κ = 1/64", "κ = 1/8", "κ = 1 ", "κ = 8 "):
        assert f"\n{line}" in text
    for fig in ("kl_budget.png", "figure4_s0.png", "figure4_s0.txt"):
        assert (out / "figures" / fig).stat().st_size > 100
    rows = list(csv.DictReader(open(out / "kl_budget" / "summary.csv")))
    assert len(rows) == 5
    # Rerunning trains nothing.
    t = time.perf_counter()
    assert demo.main(["--out", str(out), "--jobs", "2", "--set", *TINY, "steps=4"]) == 0
    assert "5 finished" in capsys.readouterr().out and time.perf_counter() - t < 60


def test_only_and_jobs_input(tmp_path: Path, capsys) -> None:
    runs = plan("kl_budget", "quick", [0], {}, tmp_path, only=["kappa_bits=1/8", "latent_bits=0"])
    assert [(r.config.model.latent_bits, r.config.model.kappa_bits) for r in runs] == [(0, 0.125), (8, 0.125)]
    # The baseline's κ field holds its default, 1/8, but a latent-only value never selects it.
    (only,) = plan("kl_budget", "quick", [0], {}, tmp_path, only=["kappa_bits=1/8"])
    assert only.config.model.latent_bits == 8
    assert main(["--study", "kl_budget", "--only", "kappa_bits=3/7", "--out", str(tmp_path), "--dry-run"]) == 2
    assert "matches no point" in capsys.readouterr().err
    assert main(["--study", "kl_budget", "--only", "kapa=1", "--out", str(tmp_path), "--dry-run"]) == 2
    assert "unknown config key 'kapa'" in capsys.readouterr().err
    assert main(["--study", "kl_budget", "--jobs", "0", "--out", str(tmp_path)]) == 2
    assert "--jobs must be an integer >= 1, got 0" in capsys.readouterr().err
    assert main(["--study", "kl_budget", "--jobs", "2", "--set", "devices=2", "--out", str(tmp_path)]) == 2
    assert "need --jobs 1" in capsys.readouterr().err
    # One change at a time: the more-steps point is its own run, next to the unchanged one.
    eighth = plan("kappa_eighth", "quick", [0], {}, tmp_path)
    names = [r.run_dir.name for r in eighth]
    assert len(names) == len(set(names)) == 9
    assert "synthetic-quick-free-k0.125-steps3000-s0" in names
    assert {r.config.model.kappa_bits for r in eighth} == {0.125}
    assert not any(tmp_path.iterdir())


def test_parallel_sweep_sigkill_takes_its_children_and_resumes(tmp_path: Path, capsys) -> None:
    """--jobs 2: SIGKILL of the sweep process alone ends its training processes too (no orphan
    keeps writing a run that the rerun resumes), and the rerun finishes every run."""
    out = tmp_path / "ablate"
    cmd = [*_sweep(out, "steps=40", "val_every=20"), "--jobs", "2"]  # two probes per run, not twenty
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    study = out / "free_bits_scope"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if study.exists() and len(list(study.glob("*/ckpt/last.ckpt"))) >= 2:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the sweep ended before both runs had a checkpoint"
    # One writer per folder: a second sweep is refused, and so is a run of a training child.
    from ftstudy.io import LOCK_NAME
    from ftstudy.run.train import main as train_main

    assert main(cmd[3:]) == 3  # in this process, while the sweep process trains
    r = plan("free_bits_scope", "quick", [0], parse_set_args([*TINY, "steps=40", "val_every=20"]), out)[0]
    child = (r.run_dir / LOCK_NAME).read_text().strip()
    assert train_main([*r.argv, "--out", str(r.run_dir.parent), "--name", r.run_dir.name, "--no-progress"]) == 3
    os.kill(proc.pid, signal.SIGKILL)  # the parent only, not its process group
    err = capsys.readouterr().err
    assert f"sweep folder {out} is in use by process {proc.pid}" in err
    assert child.isdigit() and int(child) != proc.pid and f"{r.run_dir} is in use by process {child}" in err
    proc.wait()

    def children() -> list[str]:
        ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        return [line for line in ps.splitlines() if "ftstudy.run.train" in line and str(study) in line]

    deadline = time.time() + 30
    while children() and time.time() < deadline:
        time.sleep(0.2)
    assert not children()
    rerun = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    for run in (p for p in study.iterdir() if p.is_dir() and p.name != "logs"):
        assert json.loads((run / "summary.json").read_text())["step"] == 40
        steps = [int(r["step"]) for r in csv.DictReader(open(run / "metrics.csv")) if r["split"] == "train"]
        assert steps == list(range(1, 41))  # resumed, not restarted, and no step twice
    assert "resuming" in "".join(p.read_text() for p in (study / "logs").iterdir())


def test_device_cuda_plans_gpu_runs_and_prices_them_from_the_device_check(tmp_path: Path, capsys) -> None:
    """--device cuda on a machine without one: the plan names GPU runs and prices them from
    the committed device check; training refuses with the reason; --set must agree."""
    from ftstudy.study.ablate import default_jobs, default_out, gpu_timings

    runs = plan("kl_budget", "long", [0], parse_set_args(["accelerator=gpu"]), tmp_path, only=["kappa_bits=1/8"])
    assert runs[0].run_dir.name == "synthetic-long-free-k0.125-acceleratorgpu-s0"
    assert default_out("long", "cuda").relative_to(REPO_ROOT).parts[:2] == ("results", "gpu")
    assert default_out("long", "cuda").parts[-2:] == ("ablate", "long")
    assert default_out("quick") == REPO_ROOT / "results" / "ablate"
    assert default_jobs("cpu") == 1 and 1 <= default_jobs("cuda") <= (os.cpu_count() or 1)
    checked = gpu_timings(tmp_path)
    if checked is not None:  # results/gpu/<gpu>/ladder.json committed: the long rung is priced
        assert main(["--study", "kl_budget", "--preset", "long", "--device", "cuda", "--only", "kappa_bits=1/8",
                     "--seeds", "0", "1", "2", "--jobs", "3", "--out", str(tmp_path), "--dry-run"]) == 0
        out = capsys.readouterr().out
        assert f"measured alone on {checked[0]}" in out and "3 runs" in out and "min of training left" in out
    assert main(["--study", "kl_budget", "--preset", "quick", "--device", "cuda", "--only", "kappa_bits=1/8",
                 "--set", "accelerator=cpu", "--out", str(tmp_path), "--dry-run"]) == 2
    assert "--device cuda and --set accelerator=cpu disagree" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["--study", "kl_budget", "--preset", "quick", "--device", "cuda", "--only", "kappa_bits=1/8",
                     "--set", *TINY, "steps=2", "--out", str(tmp_path)]) == 3
        assert "sees no CUDA device here; allowed here: --device cpu" in capsys.readouterr().err
        assert not list(tmp_path.glob("kl_budget/synthetic-*"))  # refused before any run folder


def test_the_old_preset_name_still_works_with_a_warning(tmp_path, capsys):
    from ftstudy.core.config import get_preset

    assert get_preset("synthetic-paper").preset == "synthetic-long"
    assert "now called 'synthetic-long'" in capsys.readouterr().err
    assert main(["--study", "kl_budget", "--preset", "paper", "--seeds", "0", "--only", "kappa_bits=1/8",
                 "--out", str(tmp_path), "--dry-run"]) == 0
    captured = capsys.readouterr()
    assert "preset 'paper' is now called 'long'" in captured.err
    assert "synthetic-long-free-k0.125-s0" in captured.out


def test_compiled_runs_are_priced_from_the_compile_stage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys) -> None:
    """--set compile=true on a GPU: the plan prices each run from the device check's compiled
    step times and the compiled runs-at-once throughput, and --jobs defaults to that stage's
    best; a --tiny check (no compiled code) prices nothing."""
    from ftstudy.study import ablate
    from ftstudy.study.ablate import default_jobs, gpu_timings, run_shape

    gpu = tmp_path / "gpu" / "cuda"
    gpu.mkdir(parents=True)
    monkeypatch.setattr(ablate, "GPU_RESULTS", tmp_path / "gpu")
    points = ["latent_bits=0", "kappa_bits=1/64", "kappa_bits=1/8", "kappa_bits=1"]
    seeds = list(range(10))
    compiled_runs = plan("kl_budget", "gpu-mid", seeds, parse_set_args(["accelerator=gpu", "compile=true"]),
                         tmp_path / "out", only=points)
    eager_runs = plan("kl_budget", "gpu-mid", [0], parse_set_args(["accelerator=gpu"]), tmp_path / "out", only=points)
    shape = run_shape(compiled_runs[0].config.to_dict())
    assert shape[-1] is True and run_shape(eager_runs[0].config.to_dict())[-1] is False
    eager_shape = list(run_shape(eager_runs[0].config.to_dict()))[:-1]  # written before compile was in the shape
    (gpu / "ladder.json").write_text(json.dumps({"rows": [{"shape": eager_shape, "s_per_step": 0.048}]}))
    (gpu / "concurrency.json").write_text(json.dumps({"jobs_default": 4, "rows": [
        {"jobs": 1, "throughput_vs_one": 1.0}, {"jobs": 8, "throughput_vs_one": 6.0}]}))
    free_shape = run_shape(compiled_runs[-1].config.to_dict())  # what the device check times: a Free model
    assert free_shape[2] > 0 and shape[2] == 0
    steps = compiled_runs[0].config.train.steps
    compile_record = {"status": "done", "jobs_default": 16,
                      "rows": [{"shape": list(free_shape), "compiled_s": 0.005, "compile_overhead_s": 60.0, "steps": steps}],
                      "concurrency": [{"jobs": 1, "throughput_vs_one": 1.0}, {"jobs": 16, "throughput_vs_one": 10.0}]}
    (gpu / "compile.json").write_text(json.dumps(compile_record))
    name, alone, scale = gpu_timings(tmp_path / "out", compiled=True)
    assert alone[free_shape] == pytest.approx(0.005 + 60.0 / steps)  # compiling once per run, spread over its steps
    assert alone[tuple(eager_shape) + (False,)] == 0.048 and scale[16] == 10.0
    assert gpu_timings(tmp_path / "out")[2] == {1: 1.0, 8: 6.0}  # eager runs: the eager throughput
    monkeypatch.setattr(ablate, "machine_name", lambda device: "cuda")
    assert default_jobs("cuda", compiled=True) == min(16, os.cpu_count() or 1)
    assert default_jobs("cuda") == min(4, os.cpu_count() or 1)
    assert main(["--study", "kl_budget", "--preset", "gpu-mid", "--device", "cuda", "--seeds", *map(str, seeds),
                 "--only", *points, "--set", "compile=true", "--jobs", "16", "--out", str(tmp_path / "out"),
                 "--dry-run"]) == 0
    out = capsys.readouterr().out
    minutes = round(40 * (steps * 0.005 + 60.0) / 10.0 / 60)  # baselines priced as their Free counterparts
    assert "40 runs" in out and f"about {minutes} min of training left" in out and "not priced" not in out
    compile_record["compiler"] = "disabled (--tiny)"
    (gpu / "compile.json").write_text(json.dumps(compile_record))
    assert free_shape not in gpu_timings(tmp_path / "out", compiled=True)[1]
    assert default_jobs("cuda", compiled=True) == min(4, os.cpu_count() or 1)
