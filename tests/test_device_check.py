"""The device check (python -m ftstudy.gpucheck) end to end on the CPU with --tiny: every
stage writes its figures, a second call resumes instead of redoing, and bad input is refused."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ftstudy.perf.device_check import STAGES, main
from ftstudy.io import RunDir
from ftstudy.run.train import REPO_ROOT


def _check(out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ftstudy.gpucheck", "--device", "cpu", "--tiny", "--out", str(out),
                           *extra], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def checked(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("gpucheck") / "cpu"
    return out, _check(out)


def test_every_stage_runs_and_writes_its_figures(checked) -> None:
    out, proc = checked
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = {s: json.loads((out / f"{s}.json").read_text()) for s in STAGES}
    assert all(r["status"] == "done" for r in results.values())
    assert results["env"]["versions"]["torch"] == torch.__version__
    assert any(r["bench"] == "train" and r["impl"] == "ftstudy-free" for r in results["perf"]["rows"])
    conc = results["concurrency"]
    assert [r["jobs"] for r in conc["rows"]] == [1, 2] and conc["jobs_default"] in (1, 2)
    assert all(r["s_per_step_median"] > 0 for r in conc["rows"])
    assert conc["same_numbers_twice"] == {"val": True, "generation": True}  # the same config trained twice
    ladder = {r["preset"]: r for r in results["ladder"]["rows"]}
    assert set(ladder) == {"quick", "gpu"} and ladder["gpu"]["steps"] == 20000
    comp = results["compile"]
    assert [r["preset"] for r in comp["rows"]] == ["quick"] and comp["compiler"] == "disabled (--tiny)"
    assert all(r["eager_s"] > 0 and r["compiled_s"] > 0 for r in comp["rows"])
    assert [m["compiled"] for m in comp["wide"]] == [False, True] and [g["compiled"] for g in comp["generate"]] == [
        False, True]
    assert [r["jobs"] for r in comp["concurrency"]] == [1, 2]
    assert [t["met"] for t in comp["targets"]] == [None, None, None]  # a CPU meets or misses no GPU target
    assert "--compile" in RunDir(out / "compile" / "quick-compiled").record()["command"]
    assert results["kappa"]["plan"]["preset"] == "quick"
    agreement = out / results["kappa"]["agreement_csv"]
    rows = agreement.read_text().splitlines()
    assert len(rows) == 1 + 2 * 3 + 4  # header, 2 protocols x (baseline, 1/64, 1/8), the paper's 4 panels
    report = (out / "report.md").read_text()
    assert "Compiled steps" in report and "not measured on a GPU" in report
    assert "Runs at once on one device" in report and "The synthetic ladder" in report and "Protocol `paper`" in report


def test_a_second_call_resumes_and_a_failed_stage_runs_again(checked) -> None:
    out, _ = checked
    before = {s: (out / f"{s}.json").read_text() for s in STAGES}
    again = _check(out, "--stages", "concurrency", "ladder", "kappa")
    assert again.returncode == 0, again.stderr[-2000:]
    assert all(f"[gpucheck] {s}: done already" in again.stdout for s in ("concurrency", "ladder", "kappa"))
    assert {s: (out / f"{s}.json").read_text() for s in STAGES} == before
    (out / "env.json").write_text(json.dumps({"status": "failed", "error": "cut off"}))
    retry = _check(out, "--stages", "env")
    assert retry.returncode == 0 and json.loads((out / "env.json").read_text())["status"] == "done"


def test_bad_input_is_refused(tmp_path: Path, capsys) -> None:
    if not torch.cuda.is_available():
        assert main(["--out", str(tmp_path)]) == 2
        assert "sees no CUDA device here" in capsys.readouterr().err
    assert main(["--device", "cpu", "--out", str(tmp_path)]) == 2
    assert "--device cpu is for --tiny only" in capsys.readouterr().err
    assert main(["--device", "cpu", "--tiny", "--budget-min", "0", "--out", str(tmp_path)]) == 2
    assert main(["--device", "cpu", "--tiny", "--wheels", str(tmp_path / "none"), "--out", str(tmp_path)]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_every_wheel_the_gpu_targets_install_is_pinned() -> None:
    """make gpu-wheels fetches the device check's and make gpu-decide's wheels at the versions
    the CPU environment runs (constraints.txt); an unpinned name is refused by name."""
    from ftstudy.perf import device_check as dc
    pins = dc.wheel_pins()
    assert [p.split("==")[0] for p in pins] == [*dc.PEER_WHEELS, *dc.EVAL_WHEELS]
    assert all(p.split("==")[1] for p in pins) and "lm_eval" in dc.EVAL_WHEELS
    with pytest.raises(dc.CheckError, match=r"constraints.txt pins none of \['no-such-package'\]"):
        dc.wheel_pins(("lm_eval", "no-such-package"))
