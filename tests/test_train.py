"""End-to-end runs on the tiny preset: files, skip/resume/overwrite, NaN stop, checkpoints."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from torch.overrides import TorchFunctionMode

from ftstudy.io import RunDir
from ftstudy.tasks import synthetic
from ftstudy.core.checkpoint import CheckpointError, load_model, read_metrics
from ftstudy.core.config import get_preset
from ftstudy.run.lit import LitFreeTransformer
from ftstudy.core.model import FreeTransformer
from ftstudy.run.train import REPO_ROOT, RunError, main, run_name, train


def tiny_cfg(**overrides):
    base = dict(steps=20, ckpt_every=5, val_every=10, log_every=5, precision="32-true", n_generate=16)
    base.update(overrides)
    return get_preset("synthetic-tiny", base)


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    run_dir = tmp_path_factory.mktemp("runs") / "free"
    return run_dir, train(tiny_cfg(), run_dir, progress=False, argv=["--preset", "synthetic-tiny"])


def test_run_directory_contents(finished: tuple[Path, dict]) -> None:
    run_dir, summary = finished
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["config"] == tiny_cfg().to_dict()
    assert cfg["argv"] == ["--preset", "synthetic-tiny"] and "torch" in cfg["versions"]
    assert "git_commit" in cfg and cfg["precision_resolved"] == "32-true"
    assert summary["step"] == 20 and summary["variant"] == "free"
    for key in ("ce_prior", "elbo", "kl_bits", "ce_posterior_LEAKY"):
        assert key in summary["val"]
    # The ELBO bound is CE_posterior + KL per scored token: never below the posterior CE.
    assert summary["val"]["elbo"] >= summary["val"]["ce_posterior_LEAKY"]
    samples = RunDir(run_dir).samples()
    assert RunDir(run_dir).samples_file.name == "samples.txt.gz"
    assert len(samples) == 16 and all(len(s) == synthetic.SEQ_LEN for s in samples)
    assert summary["generation"]["n"] == 16
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    for col in ("step", "split", "loss", "ce", "kl_nats", "kl_bits", "kl_bit00", "kl_bit03", "tokens_per_s",
                "ce_prior", "elbo", "ce_posterior_LEAKY"):
        assert col in header
    steps = [(r.split(",")[0], r.split(",")[1]) for r in rows[1:]]
    assert steps == [("5", "train"), ("10", "train"), ("10", "val"), ("15", "train"), ("20", "train"), ("20", "val")]


def test_exported_model_loads_weights_only(finished: tuple[Path, dict]) -> None:
    run_dir, _ = finished
    model, cfg, raw = load_model(run_dir / "ckpt" / "model.pt")
    assert cfg == tiny_cfg() and raw["step"] == 20
    lit_model, _, _ = load_model(run_dir / "ckpt" / "last.ckpt")  # Lightning's file, weights_only too
    for (n1, p1), (n2, p2) in zip(model.state_dict().items(), lit_model.state_dict().items(), strict=True):
        assert n1 == n2 and torch.equal(p1, p2)


def test_finished_run_is_skipped_not_overwritten(finished: tuple[Path, dict], capsys) -> None:
    run_dir, summary = finished
    mtime = (run_dir / "summary.json").stat().st_mtime_ns
    assert train(tiny_cfg(), run_dir, progress=False) == summary
    assert "skipping" in capsys.readouterr().out
    assert (run_dir / "summary.json").stat().st_mtime_ns == mtime
    with pytest.raises(RunError, match="different config"):
        train(tiny_cfg(lr=5e-4), run_dir, progress=False)


def test_checkpoint_errors(tmp_path: Path, finished: tuple[Path, dict]) -> None:
    run_dir, _ = finished
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nope.pt")
    good = (run_dir / "ckpt" / "model.pt").read_bytes()
    (tmp_path / "trunc.pt").write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_model(tmp_path / "trunc.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not an ftstudy checkpoint"):
        load_model(tmp_path / "foreign.pt")
    torch.save({"format": "ftstudy-model", "evil": Path("/")}, tmp_path / "pickle.pt")  # arbitrary object
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_model(tmp_path / "pickle.pt")


def test_interrupted_run_resumes_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         finished: tuple[Path, dict]) -> None:
    ref_dir, _ = finished
    run_dir = tmp_path / "resumed"
    orig = LitFreeTransformer.training_step

    def crash_at_12(self, batch, batch_idx):
        if self.global_step == 12:
            raise RuntimeError("simulated kill")
        return orig(self, batch, batch_idx)

    monkeypatch.setattr(LitFreeTransformer, "training_step", crash_at_12)
    with pytest.raises(RuntimeError, match="simulated kill"):
        train(tiny_cfg(log_every=1), run_dir, progress=False)  # logs steps 11 and 12 past the step-10 checkpoint
    assert not (run_dir / "summary.json").exists()
    monkeypatch.setattr(LitFreeTransformer, "training_step", orig)
    summary = train(tiny_cfg(log_every=1), run_dir, progress=False)
    assert summary["step"] == 20
    rows = [r.split(",")[:2] for r in (run_dir / "metrics.csv").read_text().splitlines()[1:]]
    assert len(rows) == len({tuple(r) for r in rows}) == 22  # no step logged twice
    # The TensorBoard log continues in the same folder, and hides what the killed run logged
    # after its checkpoint, as metrics.csv drops those rows.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert [p.name for p in run_dir.iterdir() if p.name.startswith("tb")] == ["tb"]
    assert len(list((run_dir / "tb").glob("events.out.tfevents.*"))) == 2
    tb = EventAccumulator(str(run_dir / "tb"))
    tb.Reload()
    loss = {int(r["step"]): r["loss"] for r in read_metrics(run_dir) if r["split"] == "train"}
    assert [(e.step, e.value) for e in tb.Scalars("train/loss")] == [(s, pytest.approx(v, rel=1e-5))
                                                                     for s, v in sorted(loss.items())]
    # Same data, same Z draws, same optimizer state: the resumed run ends where the
    # uninterrupted one did.
    a, _, _ = load_model(ref_dir / "ckpt" / "model.pt")
    b, _, _ = load_model(run_dir / "ckpt" / "model.pt")
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.allclose(pa, pb, rtol=1e-4, atol=1e-6), name


def test_nan_loss_stops_with_message_and_keeps_last_good_checkpoint(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    orig = FreeTransformer._losses

    def poisoned(self, out, targets, loss_mask):
        orig(self, out, targets, loss_mask)
        if self.training and poisoned.calls >= 7:
            out.loss = out.loss * float("nan")
        poisoned.calls += self.training

    poisoned.calls = 0
    monkeypatch.setattr(FreeTransformer, "_losses", poisoned)
    run_dir = tmp_path / "nan"
    with pytest.raises(RunError, match=r"non-finite loss nan at step 7.*last good checkpoint kept"):
        train(tiny_cfg(), run_dir, progress=False)
    model, _, raw = load_model(run_dir / "ckpt" / "last.ckpt")
    assert raw["global_step"] == 5
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert not (run_dir / "summary.json").exists()


def test_overwrite_and_started_dirs(tmp_path: Path) -> None:
    run_dir = tmp_path / "x"
    run_dir.mkdir()
    # A run killed before its first checkpoint: config.json and nothing to resume from.
    (run_dir / "config.json").write_text(json.dumps({"config": tiny_cfg(steps=5, n_generate=0).to_dict()}))
    (run_dir / "stray.txt").write_text("?")
    with pytest.raises(RunError, match="--overwrite"):
        train(tiny_cfg(steps=5, n_generate=0), run_dir, progress=False)
    # --overwrite deletes only the names ftstudy writes: a foreign file is listed, nothing deleted
    with pytest.raises(RunError, match=r"holds 1 name\(s\) ftstudy does not write \(stray.txt\)"):
        train(tiny_cfg(steps=5, n_generate=0), run_dir, overwrite=True, progress=False)
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.json", "stray.txt"]
    (run_dir / "stray.txt").unlink()
    summary = train(tiny_cfg(steps=5, n_generate=0), run_dir, overwrite=True, progress=False)
    assert summary["step"] == 5 and (run_dir / ".ftstudy-run").exists()
    assert not (run_dir / ".ftstudy.lock").exists()  # the run's lock, let go at its end


def test_overwrite_never_deletes_a_folder_ftstudy_did_not_make(tmp_path: Path, capsys) -> None:
    thesis = tmp_path / "mine" / "thesis.tex"
    thesis.parent.mkdir()
    thesis.write_text("\\documentclass{article}")
    (thesis.parent / "config.json").write_text('{"editor": "vim"}')  # a config.json, but not ftstudy's
    args = ["--preset", "synthetic-tiny", "--out", str(tmp_path), "--name", "mine", "--no-progress"]
    for extra in (["--overwrite"], []):
        assert main([*args, *extra]) == 3
        err = capsys.readouterr().err
        assert f"{thesis.parent} exists and is not an ftstudy run folder" in err and err.count("\n") == 1
    assert sorted(p.name for p in thesis.parent.iterdir()) == ["config.json", "thesis.tex"]  # not even a lock
    assert thesis.read_text() == "\\documentclass{article}"


def test_one_writer_per_run_folder(tmp_path: Path, capsys, lock_holder) -> None:
    """A second process is refused with the holder's pid; --wait waits, here until the holder
    is SIGKILLed, whose lock file left behind neither blocks nor marks the run as started."""
    import os
    import signal
    import threading

    from ftstudy.io import LOCK_NAME

    args = ["--preset", "synthetic-tiny", "--out", str(tmp_path), "--name", "r", "--no-progress", "--set", "steps=2",
            "val_every=2", "ckpt_every=2", "n_generate=0", "probe_independent=0", "probe_groups=0",
            "precision=32-true"]
    holder = lock_holder(tmp_path / "r")
    assert main(args) == 3
    assert f"run folder {tmp_path / 'r'} is in use by process {holder.pid}" in capsys.readouterr().err
    killer = threading.Timer(1.0, os.kill, (holder.pid, signal.SIGKILL))
    killer.start()
    try:
        assert main([*args, "--wait"]) == 0
    finally:
        killer.cancel()
    assert f"in use by process {holder.pid}; waiting" in capsys.readouterr().err
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["step"] == 2
    assert not (tmp_path / "r" / LOCK_NAME).exists()  # let go when the run ended
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / LOCK_NAME).write_text("12345\n")  # stale, as a SIGKILLed holder leaves it
    assert main([*args[:5], "s", *args[6:]]) == 0
    assert (tmp_path / "s" / "summary.json").exists()


@pytest.mark.parametrize("seed_args", [["--seed", "-1"], ["--seed", "4294967296"], ["--set", "seed=4294967296"]])
def test_seed_outside_32_bits_is_refused_before_anything_is_made(seed_args: list[str], tmp_path: Path,
                                                                  capsys) -> None:
    assert main(["--preset", "synthetic-tiny", "--out", str(tmp_path / "runs"), *seed_args]) == 2
    err = capsys.readouterr().err
    bad = seed_args[-1].removeprefix("seed=")
    assert f"TrainConfig.seed = {bad} is not allowed: an integer 0 … 4294967295" in err and err.count("\n") == 1
    assert not (tmp_path / "runs").exists()


def test_corrupt_checkpoint_on_resume_says_how_to_recover(finished: tuple[Path, dict], tmp_path: Path,
                                                          capsys) -> None:
    import shutil

    run_dir = tmp_path / "cut"
    shutil.copytree(finished[0], run_dir)
    (run_dir / "summary.json").unlink()  # interrupted: resumes from ckpt/last.ckpt...
    last = run_dir / "ckpt" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])  # ...which was cut short
    args = ["--preset", "synthetic-tiny", "--out", str(tmp_path), "--name", "cut", "--no-progress", "--set",
            "steps=20", "ckpt_every=5", "val_every=10", "log_every=5", "precision=32-true", "n_generate=16"]
    assert main(args) == 3
    err = capsys.readouterr().err
    assert err.startswith("error: cut cannot resume: checkpoint") and "truncated" in err
    assert "pass --overwrite to start the run over" in err and err.count("\n") == 1
    assert main([*args, "--overwrite"]) == 0  # which works


def test_bf16_loss_agrees_with_float32() -> None:
    cfg = get_preset("synthetic-tiny").model
    torch.manual_seed(0)
    model = FreeTransformer(cfg)
    batch = synthetic.make_batch(synthetic.sample(16, 0), synthetic.CharTokenizer())
    bits = torch.rand(16, 65, cfg.latent_bits, generator=torch.Generator().manual_seed(0)) < 0.5
    ref = model(batch["idx"], batch["targets"], batch["loss_mask"], z=bits).loss
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(batch["idx"], batch["targets"], batch["loss_mask"], z=bits).loss
    assert low.dtype == torch.float32
    assert abs(low.item() - ref.item()) / ref.item() < 0.01


def test_cli_errors_and_names(capsys, tmp_path: Path) -> None:
    assert main(["--preset", "synthetic-tiny", "--set", "kappa=1", "--out", str(tmp_path)]) == 2
    assert "unknown config key 'kappa'" in capsys.readouterr().err
    assert main(["--preset", "synthetic-tiny", "--set", "inject_layer=5", "--out", str(tmp_path)]) == 2
    assert "inject_layer = 5" in capsys.readouterr().err
    assert main(["--preset", "paper-8b", "--out", str(tmp_path)]) == 2
    assert main(["--preset", "synthetic-quick", "--set", "kappa_bits=1/8", "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["model"]["kappa_bits"] == 0.125
    assert run_name(get_preset("synthetic-quick", {"kappa_bits": 0.125, "seed": 0})) == "synthetic-quick-free-k0.125-s0"
    assert run_name(get_preset("synthetic-quick", {"latent_bits": 0, "seed": 2})) == "synthetic-quick-base-s2"
    assert run_name(get_preset("synthetic-quick", {"kappa_bits": 1, "n_layers": 8})) == \
        "synthetic-quick-free-k1-n_layers8-s0"


def test_checkpoints_and_tensorboard_logs_are_git_ignored() -> None:
    for path in ("results/runs/any/ckpt/model.pt", "results/runs/any/tb/events.out.tfevents.1.host.2.0"):
        assert subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO_ROOT).returncode == 0, path


def test_training_curves_figure(finished: tuple[Path, dict], tmp_path: Path) -> None:
    from ftstudy.results.plots import plot_training_curves, read_metrics, save_figure

    run_dir, _ = finished
    assert [r["step"] for r in read_metrics(run_dir) if r["split"] == "val"] == [10.0, 20.0]
    path = save_figure(plot_training_curves([run_dir], title="tiny"), tmp_path / "fig.png")
    assert path.stat().st_size > 10_000 and path.read_bytes()[:4] == b"\x89PNG"


def test_two_process_ddp_run_completes(tmp_path: Path) -> None:
    """Lightning's DDP launcher re-runs the command for rank 1: only rank 0 may manage the run dir."""
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "ftstudy.run.train", "--preset", "synthetic-tiny", "--out", str(tmp_path), "--name", "ddp",
         "--no-progress", "--set", "devices=2", "strategy=ddp", "precision=32-true", "steps=10", "n_generate=8"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["step"] == 10 and summary["generation"]["n"] == 8
    assert len(list((tmp_path / "ddp" / "tb").glob("events.out.tfevents.*"))) == 1  # rank 1 writes none
    # Both ranks end with the same weights (fingerprints gathered from each rank).
    rep = summary["replicas"]
    assert rep["world_size"] == 2 and len(rep["weight_checksums"]) == 2 and rep["identical"]


def test_ddp_matches_one_process_with_the_same_global_batch(tmp_path: Path) -> None:
    """Two gloo processes with half the batch each train on exactly the global batches one
    process does: same logged (rank-averaged) losses, same final weights."""
    import sys


    common = ["--preset", "synthetic-tiny", "--baseline", "--out", str(tmp_path), "--no-progress", "--set",
              "precision=32-true", "steps=8", "log_every=1", "val_every=8", "batch_size=8", "n_generate=0",
              "probe_independent=0", "probe_groups=0"]
    runs = {}
    for name, extra in (("one", ["devices=1"]), ("two", ["devices=2", "strategy=ddp"])):
        proc = subprocess.run([sys.executable, "-m", "ftstudy.run.train", *common, *extra, "--name", name],
                              cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        runs[name] = tmp_path / name
    loss = {n: [r["loss"] for r in read_metrics(d) if r["split"] == "train"] for n, d in runs.items()}
    assert len(loss["one"]) == len(loss["two"]) == 8
    assert loss["one"] == pytest.approx(loss["two"], rel=1e-4)
    m1, _, _ = load_model(runs["one"] / "ckpt" / "model.pt")
    m2, _, _ = load_model(runs["two"] / "ckpt" / "model.pt")
    for (name, a), b in zip(m1.state_dict().items(), m2.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5), name
    val = {n: json.loads((d / "summary.json").read_text())["val"]["ce_prior"] for n, d in runs.items()}
    assert val["one"] == pytest.approx(val["two"], rel=1e-4)


def test_runs_made_before_a_field_existed_still_match(finished: tuple[Path, dict], tmp_path: Path) -> None:
    import shutil

    run_dir = tmp_path / "old"
    shutil.copytree(finished[0], run_dir)
    saved = json.loads((run_dir / "config.json").read_text())
    del saved["config"]["model"]["free_bits_scope"]  # as written by an older ftstudy
    (run_dir / "config.json").write_text(json.dumps(saved))
    assert train(tiny_cfg(), run_dir, progress=False)["step"] == 20  # recognised as finished, skipped
    saved["config"]["model"]["colour"] = "red"
    (run_dir / "config.json").write_text(json.dumps(saved))
    with pytest.raises(RunError, match="cannot be read as an ftstudy config"):
        train(tiny_cfg(), run_dir, progress=False)


# ---------------------------------------------------------------- one-line errors (issue 24, part 4)

TINY_ARGS = ["--preset", "synthetic-tiny", "--no-progress", "--set", "steps=20", "ckpt_every=5", "val_every=10",
             "log_every=5", "precision=32-true", "n_generate=16"]


def _interrupted_copy(finished: tuple[Path, dict], run_dir: Path) -> Path:
    """A copy of the finished tiny run that a rerun resumes from ckpt/last.ckpt (step 20)."""
    import shutil

    shutil.copytree(finished[0], run_dir)
    (run_dir / "summary.json").unlink()
    return run_dir / "ckpt" / "last.ckpt"


def test_repeated_set_options_merge(capsys) -> None:
    """A second --set once replaced the first (--set steps=7 --set lr=0.5 trained 20 steps)."""
    assert main(["--preset", "synthetic-tiny", "--set", "steps=7", "--set", "lr=0.5", "--print-config"]) == 0
    train_cfg = json.loads(capsys.readouterr().out)["train"]
    assert train_cfg["steps"] == 7 and train_cfg["lr"] == 0.5
    assert main(["--preset", "synthetic-tiny", "--set", "steps=7", "lr=0.1", "--set", "lr=0.5", "--seed", "3",
                 "--print-config"]) == 0
    train_cfg = json.loads(capsys.readouterr().out)["train"]
    assert (train_cfg["steps"], train_cfg["lr"], train_cfg["seed"]) == (7, 0.5, 3)  # the last value of a key wins


@pytest.mark.parametrize("setting", ["lr=inf", "grad_clip=nan", "grad_clip=inf", "weight_decay=nan",
                                     "init_std=inf", "temperature=nan"])
def test_non_finite_settings_are_refused_before_anything_is_made(setting: str, tmp_path: Path, capsys) -> None:
    assert main(["--preset", "synthetic-tiny", "--out", str(tmp_path / "runs"), "--set", setting]) == 2
    err = capsys.readouterr().err
    key, _, value = setting.partition("=")
    assert f"{key} = {value} is not allowed: a finite number" in err and err.count("\n") == 1
    assert not (tmp_path / "runs").exists()


def _state(last: Path) -> dict:
    return torch.load(last, weights_only=True)


@pytest.mark.parametrize("case", ["step-abc", "step-only", "full-step-abc", "full-step-negative", "no-loops",
                                  "other-model"])
def test_a_last_ckpt_that_cannot_resume_is_one_line(case: str, finished: tuple[Path, dict], tmp_path: Path,
                                                    capsys) -> None:
    """A hand-edited or foreign last.ckpt: once a ValueError (24 lines) or Lightning's KeyError
    'pytorch-lightning_version' (45 lines); now one line, and nothing is written."""
    last = _interrupted_copy(finished, tmp_path / "r")
    full = _state(last)
    content = {
        "step-abc": {"global_step": "abc"},
        "step-only": {"global_step": 10},
        "full-step-abc": {**full, "global_step": "abc"},
        "full-step-negative": {**full, "global_step": -3},
        "no-loops": {k: v for k, v in full.items() if k != "loops"},
        "other-model": {**full, "state_dict": {"model.tok_emb.weight": torch.zeros(3, 3)}},
    }[case]
    torch.save(content, last)
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "r").rglob("*") if p.is_file()}
    assert main([*TINY_ARGS, "--out", str(tmp_path), "--name", "r"]) == 3
    err = capsys.readouterr().err
    assert err.startswith(f"error: r cannot resume: checkpoint {last}") and err.count("\n") == 1, err
    assert "pass --overwrite to start the run over" in err
    expected = {"step-abc": "lacks", "step-only": "'pytorch-lightning_version'", "full-step-abc": "global_step = 'abc'",
                "full-step-negative": "global_step = -3", "no-loops": "['loops']", "other-model": "weights"}[case]
    assert expected in err
    after = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "r").rglob("*") if p.is_file()}
    assert after == before  # not even config.json or the TensorBoard log


@pytest.mark.parametrize("where", ["checkpoint", "config"])
def test_disk_full_while_extending_a_run_is_one_line(where: str, finished: tuple[Path, dict], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """A full disk (or quota) while a finished run is extended: once 67 lines of traceback; now
    one line naming the file, the previous checkpoint kept, no partial file left, and the same
    command resumes once there is space."""
    import errno
    import shutil

    import lightning as L

    import ftstudy.io

    run_dir = tmp_path / "r"
    shutil.copytree(finished[0], run_dir)
    last = run_dir / "ckpt" / "last.ckpt"
    if where == "checkpoint":
        code, named = errno.ENOSPC, last

        def full(self, *a, **k):
            raise OSError(errno.ENOSPC, "No space left on device")  # as a failed write(): no file name

        monkeypatch.setattr(L.Trainer, "save_checkpoint", full)
    else:
        code, named = errno.EDQUOT, run_dir / "config.json"
        orig = ftstudy.io.atomic_write_text

        def full(path, text):
            if Path(path).name == "config.json":
                raise OSError(errno.EDQUOT, "Disk quota exceeded")
            return orig(path, text)

        monkeypatch.setattr(ftstudy.io, "atomic_write_text", full)
    args = [*TINY_ARGS, "--out", str(tmp_path), "--name", "r", "--set", "steps=25"]
    assert main(args) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert f"error: r: {os.strerror(code)} while writing {named}; nothing finished was lost" in err
    assert f"rerun the same command: the run resumes from its last checkpoint {last}" in err
    assert _state(last)["global_step"] == 20  # the previous checkpoint, whole
    assert not [p.name for p in run_dir.rglob(".*tmp*")]  # no partial copy takes space
    monkeypatch.undo()
    assert main(args) == 0  # space freed: the same command goes on
    assert json.loads((run_dir / "summary.json").read_text())["step"] == 25


def test_disk_full_with_no_checkpoint_says_overwrite(tmp_path: Path) -> None:
    import errno

    from ftstudy.run.train import disk_full_message

    msg = disk_full_message(tmp_path / "new", OSError(errno.ENOSPC, "No space left on device", "x/metrics.csv"))
    assert msg == ("new: No space left on device while writing x/metrics.csv; nothing finished was lost; no "
                   "checkpoint was saved yet: once space is freed, rerun the same command with --overwrite")


def test_save_model_on_a_full_disk_is_an_oserror_and_leaves_no_partial_file(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.save(payload, name) on a full disk is a RuntimeError naming no cause; through a file
    object it is the OSError (ENOSPC) that train reports in one line."""
    import errno

    import ftstudy.core.checkpoint as checkpoint

    def full(obj, f):
        f.write(b"PK partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    cfg = tiny_cfg()
    monkeypatch.setattr(checkpoint.torch, "save", full)
    with pytest.raises(OSError) as e:
        checkpoint.save_model(tmp_path / "model.pt", FreeTransformer(cfg.model), cfg, step=1)
    assert e.value.errno == errno.ENOSPC and list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ the step's numbers and host syncs
GOLDEN = Path(__file__).parent / "data" / "train-golden-synthetic-tiny.json"


@pytest.mark.parametrize("variant", ["free", "base"])
def test_training_numbers_match_the_golden_run(variant: str, tmp_path: Path) -> None:
    """The logged figures at every logged step and the final weights are those the training
    step gave before it stopped reading device values on the host at every step."""
    golden = json.loads(GOLDEN.read_text())[variant]
    extra = {"latent_bits": 0} if variant == "base" else {}
    # fp32 pinned: "auto" is bf16-mixed on a CPU with native bf16, 32-true elsewhere.
    cfg = get_preset("synthetic-tiny", {"steps": 23, "precision": "32-true", **extra})
    run_dir = tmp_path / golden["run"]
    train(cfg, run_dir, progress=False)
    rows = [{k: v for k, v in r.items() if v != "" and k != "tokens_per_s"} for r in read_metrics(run_dir)]
    assert [(int(r["step"]), r["split"]) for r in rows] == [(int(r["step"]), r["split"]) for r in golden["metrics"]]
    for got, want in zip(rows, golden["metrics"]):
        assert got.keys() == want.keys()
        for k in want:
            if k not in ("step", "split"):
                assert float(got[k]) == pytest.approx(float(want[k]), rel=1e-5, nan_ok=True), (got["step"], k)
    assert all(r.get("tokens_per_s") for r in read_metrics(run_dir) if r["split"] == "train")
    model, _, _ = load_model(run_dir / "ckpt" / "model.pt")
    total = sum(float(p.double().abs().sum()) for p in model.state_dict().values() if p.is_floating_point())
    assert total == pytest.approx(golden["weights_abs_sum"], rel=1e-6)


#: Tensor operations that make the host wait for the device (a value or a data-dependent shape).
SYNC_OPS = {"item", "tolist", "__bool__", "__int__", "__float__", "__index__", "cpu", "numpy", "nonzero",
            "masked_select", "unique", "__format__", "__repr__"}


class _SyncCounter(TorchFunctionMode):
    """Counts host-sync operations per training step, CUDA-free: on a GPU each would block."""

    def __init__(self, host_tensors: Callable[[], set[int]]) -> None:
        super().__init__()
        self.host_tensors = host_tensors  # ids of tensors that live on the host by design
        self.step = -1
        self.calls: dict[int, list[str]] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        name = getattr(func, "__name__", "")
        if name in SYNC_OPS and not (args and isinstance(args[0], torch.Tensor) and id(args[0]) in self.host_tensors()):
            self.calls.setdefault(self.step, []).append(name)
        return func(*args, **(kwargs or {}))


def test_the_training_step_reads_the_device_only_on_logged_steps(tmp_path: Path) -> None:
    import lightning as L

    class Count(L.Callback):
        """Watches from one step's start to the next's, so Lightning's own per-step work counts."""

        def __init__(self) -> None:
            self.mode = _SyncCounter(self.optimizer_steps)
            self.trainer: L.Trainer | None = None

        def optimizer_steps(self) -> set[int]:
            # Adam's step counters are CPU tensors by PyTorch's design (not capturable): reading
            # them never waits for a GPU.
            assert self.trainer is not None
            return {id(s["step"]) for opt in self.trainer.optimizers for s in opt.state.values() if "step" in s}

        def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
            if self.trainer is None:
                self.trainer = trainer
                self.mode.__enter__()
            self.mode.step = trainer.global_step

        def on_train_end(self, trainer: L.Trainer, *args: Any) -> None:
            self.mode.__exit__(None, None, None)

    count = Count()
    cfg = tiny_cfg(steps=14, ckpt_every=7, val_every=7, log_every=3)
    train(cfg, tmp_path / "run", progress=False, extra_callbacks=[count])
    # Steps (0-based) whose end logs (every 3rd and the last), saves a checkpoint or validates.
    host = {s for s in range(14) if (s + 1) % 3 == 0 or (s + 1) % 7 == 0 or s + 1 == 14}
    quiet = set(range(14)) - host
    assert {s: c for s, c in count.mode.calls.items() if s in quiet} == {}
    assert set(count.mode.calls) <= host and count.mode.calls  # the logged steps do read (the counter works)


@pytest.mark.xdist_group("inductor")
def test_compiled_training_agrees_with_eager(tmp_path: Path) -> None:
    """``train --compile`` (inductor on the CPU) gives the eager run's figures to 1e-4 relative
    and its weights to 1e-4: the same computation, compiled kernels' rounding aside."""
    cfg = tiny_cfg(steps=6, log_every=2, val_every=6, ckpt_every=6)
    eager = train(cfg, tmp_path / "eager", progress=False)
    compiled_cfg = tiny_cfg(steps=6, log_every=2, val_every=6, ckpt_every=6, compile=True)
    assert compiled_cfg.train.compile and "-compileTrue-" in run_name(compiled_cfg)
    from torch._dynamo.utils import counters

    counters.clear()
    compiled = train(compiled_cfg, tmp_path / "compiled", progress=False)
    assert counters["stats"]["unique_graphs"] >= 1  # the step really ran compiled
    saved = json.loads((tmp_path / "compiled" / "config.json").read_text())
    assert saved["config"]["train"]["compile"] is True
    rows = {d: [r for r in read_metrics(tmp_path / d) if r["split"] == "train"] for d in ("eager", "compiled")}
    assert len(rows["eager"]) == len(rows["compiled"]) == 3
    for a, b in zip(rows["eager"], rows["compiled"]):
        for k in ("loss", "ce", "kl_bits"):
            assert float(b[k]) == pytest.approx(float(a[k]), rel=1e-4, abs=1e-6), (a["step"], k)
    assert compiled["val"]["ce_prior"] == pytest.approx(eager["val"]["ce_prior"], rel=1e-4)
    a, _, _ = load_model(tmp_path / "eager" / "ckpt" / "model.pt")
    b, _, _ = load_model(tmp_path / "compiled" / "ckpt" / "model.pt")
    assert a.state_dict().keys() == b.state_dict().keys()  # the compiled view adds no module
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.allclose(pa, pb, rtol=1e-4, atol=1e-5), name


def test_a_resumed_run_keeps_the_precision_it_started_with(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys) -> None:
    """precision "auto" resolves by the machine (bf16-mixed where the CPU has native bf16): a run
    resumed or extended on another machine keeps the precision recorded when it started."""
    import ftstudy.run.train as train_module

    cfg = get_preset("synthetic-tiny", {"steps": 6, "ckpt_every": 3, "val_every": 6, "log_every": 3,
                                        "precision": "auto", "n_generate": 4})
    monkeypatch.setattr(train_module, "resolve_precision", lambda precision, accelerator: "32-true")
    run_dir = tmp_path / "run"
    train(cfg, run_dir, progress=False)
    assert json.loads((run_dir / "config.json").read_text())["precision_resolved"] == "32-true"
    seen = []
    real_trainer = train_module.L.Trainer

    def trainer(*args, **kwargs):  # noqa: ANN002, ANN003
        seen.append(kwargs["precision"])
        return real_trainer(*args, **kwargs)

    monkeypatch.setattr(train_module.L, "Trainer", trainer)
    monkeypatch.setattr(train_module, "resolve_precision", lambda precision, accelerator: "bf16-mixed")
    train(get_preset("synthetic-tiny", {**{"steps": 9, "ckpt_every": 3, "val_every": 6, "log_every": 3,
                                           "precision": "auto", "n_generate": 4}}), run_dir, progress=False)
    assert seen and set(seen) == {"32-true"}
    assert "keeping the run's own 32-true" in capsys.readouterr().out
    assert json.loads((run_dir / "config.json").read_text())["precision_resolved"] == "32-true"
