"""``python -m ftstudy.ablate``: studies of the KL budget, injection depth, latent width and
free-bits scope on the paper's synthetic task.

A study is data (:mod:`ftstudy.study.studies`): a named grid of typed config overrides (plus
the baseline where it is the reference), with its plot axis, table columns and figures.
Every point × seed is an ordinary ``ftstudy.run.train`` run in
``results/ablate/<study>/<run>/``, so rerunning the same command skips finished runs,
resumes interrupted ones from their last checkpoint, and extends finished runs when
``--set steps=N`` asks for more steps.  ``results/ablate/<study>/summary.csv`` is rebuilt
from the per-run files after every run.

    python -m ftstudy.ablate --study kl_budget --preset quick --seeds 0 1 2 --jobs 2
    python -m ftstudy.ablate --study all --preset quick --seeds 0 --dry-run
    python -m ftstudy.ablate --study kl_budget --preset long --seeds 0 1 2 --only kappa_bits=1/8

Each preset has its own results folder (``--out`` overrides it): quick → results/ablate/,
long → results/ablate/long/, demo → results/demo/.  ``--jobs N`` trains N runs at once,
each in its own process with cpu_count/N threads: on a 2-core CPU two one-thread runs of
the quick model train 1.8x faster in total than one two-thread run.  Each such process is
given its run's resolved config as a file (``<study>/logs/<run>.config.json``, read by
``ftstudy.run.train --config``), its output going to ``<study>/logs/<run>.log``.

One sweep at a time per results folder: the sweep holds the folder's lock
(``.ftstudy.lock``) while it trains, and every run's own lock while training it (with
``--jobs N`` each ``ftstudy.run.train`` process takes its run's).  A second sweep on the folder
is refused with the holder's pid, or waits for it with ``--wait``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
from tqdm import tqdm

from ftstudy.core.config import (LATENT_ONLY_FIELDS, ConfigError, RunConfig, check_seed, config_value, get_preset,
                                 parse_set_args, resolve_preset)
from ftstudy.io import RunDir, StudyDir, folder_lock, write_config_file
from ftstudy.results.report import kl_collapsed, write_aggregate, write_agreement
from ftstudy.run.lit import machine_name
from ftstudy.run.train import (DEVICES, REPO_ROOT, RunError, check_resumable, device_overrides, run_name,
                               saved_config, train)
from ftstudy.study.protocols import DEFAULT_PROTOCOLS, Protocol, protocol
from ftstudy.study.studies import STUDIES, Study

__all__ = ["STUDIES", "PRESETS", "Study", "PlannedRun", "plan", "rebuild_summary", "main"]

DEFAULT_OUT = REPO_ROOT / "results" / "ablate"
GPU_RESULTS = REPO_ROOT / "results" / "gpu"  # results/gpu/<gpu name>/: device checks and GPU sweeps
# --preset → (config preset, default results folder)
PRESETS = {"quick": "synthetic-quick", "long": "synthetic-long", "demo": "synthetic-demo",
           "code-math": "code-math-small", "bench": "bench-small", "decide": "decide-small", "gpu-mid": "synthetic-gpu-mid",
           "gpu": "synthetic-gpu"}
#: Old --preset names that still work, with a warning.
PRESET_ALIASES = {"paper": "long"}
PRESET_OUT = {"quick": DEFAULT_OUT, "long": DEFAULT_OUT / "long", "demo": REPO_ROOT / "results" / "demo",
              "code-math": REPO_ROOT / "results" / "benchmarks" / "code-math-small" / "runs",
              "bench": REPO_ROOT / "results" / "benchmarks" / "bench" / "runs",
              "decide": REPO_ROOT / "results" / "benchmarks" / "decide" / "runs",
              "gpu-mid": DEFAULT_OUT / "gpu-mid", "gpu": DEFAULT_OUT / "gpu"}


def default_out(preset: str, device: str = "cpu") -> Path:
    """A preset's results folder: GPU runs go under results/gpu/<gpu name>/ (their numbers are
    not the CPU's, so their tables never pool with CPU runs)."""
    out = PRESET_OUT[preset]
    if device == "cpu":
        return out
    return GPU_RESULTS / machine_name(device) / out.relative_to(REPO_ROOT / "results")


@dataclass
class PlannedRun:
    study: str
    config: RunConfig
    run_dir: Path
    argv: list[str]  # the ftstudy.run.train arguments that reproduce it

    @property
    def folder(self) -> RunDir:
        return RunDir(self.run_dir)

    @property
    def study_dir(self) -> StudyDir:
        return StudyDir(self.run_dir.parent)

    def summarize(self) -> None:
        """Rebuild its study's tables (after the run finished, failed or was copied in)."""
        rebuild_summary(self.run_dir.parent, STUDIES[self.study])

    @property
    def status(self) -> str:
        """finished, extendable, interrupted, or todo (nothing worth keeping on disk)."""
        s = check_resumable(self.config, self.run_dir)
        return "todo" if s in ("new", "started") else s

    def steps_left(self) -> int:
        s = self.status
        if s == "finished":
            return 0
        if s in ("extendable", "interrupted"):
            return max(0, self.config.train.steps - self.folder.last_step())
        return self.config.train.steps


def study_names(study: str) -> list[str]:
    """The studies ``--study`` names: one, or for ``all`` every study marked ``in_all``."""
    return [n for n, s in STUDIES.items() if s.in_all] if study == "all" else [study]


def plan(study: str, preset: str, seeds: list[int], overrides: dict[str, str], out: Path,
         only: list[str] | None = None) -> list[PlannedRun]:
    """Every run of a study (or of all of them), in a deterministic order.

    ``only`` (``KEY=VALUE`` items) keeps the grid points whose config sets one of the
    keys to its value: ``["kappa_bits=1/8", "latent_bits=0"]`` keeps κ = 1/8 and the baseline.
    """
    base = get_preset(PRESETS[preset], overrides)
    names = study_names(study)
    # Values are parsed and validated as config values (so "1/8" == "0.125").
    wanted = []
    for item in only or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--only expects key=value, got {item!r}")
        key = key.strip()
        wanted.append((key, config_value(get_preset(PRESETS[preset], {**overrides, key: value}), key)))
    runs = []
    for name in names:
        points = STUDIES[name].grid(base)
        for seed in seeds:
            for point in points:
                ov = {**overrides, **point, "seed": seed}  # grid values typed; --set values parsed
                cfg = get_preset(PRESETS[preset], ov)
                if wanted and not any(config_value(cfg, k) == v and (cfg.model.is_free or k.rpartition(".")[2]
                                                                 not in LATENT_ONLY_FIELDS) for k, v in wanted):
                    continue
                argv = ["--preset", PRESETS[preset], "--set", *[f"{k}={v}" for k, v in ov.items()]]
                # Run names leave steps out (a finished run extends in place); a grid point
                # that changes the steps is a different run and says so in its name.
                rname = run_name(cfg)
                if "steps" in point:
                    rname = rname.removesuffix(f"-s{seed}") + f"-steps{cfg.train.steps}-s{seed}"
                runs.append(PlannedRun(name, cfg, out / name / rname, argv))
    if only and not runs:
        raise ConfigError(f"--only {' '.join(only)} matches no point of study {study!r}")
    return runs


def run_shape(cfg: dict[str, Any]) -> tuple:
    """What a run's step time depends on (a config dict): model and batch shape, accelerator
    and precision."""
    m, t = cfg["model"], cfg["train"]
    return (m["n_layers"], m["dim"], m["latent_bits"], m["post_sampler"], t["batch_size"], m["max_seq_len"],
            t["accelerator"], t["precision"], bool(t.get("compile", False)))


def _shape_key(shape: list[Any]) -> tuple:
    """A run shape read back from a device check's JSON; those written before ``compile`` was
    part of the shape are eager runs."""
    return tuple(shape) if len(shape) == 9 else (*shape, False)


def measured_step_times(out: Path) -> dict[tuple, float]:
    """Seconds per step of finished runs under ``out``, by model/batch shape (median)."""
    times: dict[tuple, list[float]] = {}
    studies = [StudyDir(p) for p in out.iterdir() if p.is_dir()] if out.is_dir() else []
    for run in (r for study in studies for r in study.runs(finished=True)):
        try:
            s, cfg = run.summary() or {}, run.config()
        except (OSError, ValueError, RunError):
            continue
        if s.get("step") and s.get("train_time_s"):
            times.setdefault(run_shape(cfg), []).append(s["train_time_s"] / s["step"])
    return {k: sorted(v)[len(v) // 2] for k, v in times.items()}


def seconds_per_step(cfg: RunConfig, measured: dict[tuple, float]) -> float | None:
    """A finished run of the same shape (and accelerator) if there is one; on a GPU, else a
    measured neighbouring shape (:func:`_gpu_neighbour`), or None (``make gpu-check`` measures
    the GPU presets); on a CPU, else a rough model fitted on a 2-core CPU in fp32 (D 64/4
    layers/batch 32/66 tokens: 0.095 s; D 128/batch 64: 0.34 s; D 128/batch 32/256 tokens:
    about 1 s)."""
    key = run_shape(cfg.to_dict())
    if key in measured:
        return measured[key]
    m, t = cfg.model, cfg.train
    if t.accelerator != "cpu":
        return _gpu_neighbour(key, measured)
    units = (t.batch_size / 32) * (m.dim / 64) * (m.n_layers / 4)  # 1 = the demo's shape
    units *= (m.max_seq_len / 66) ** 1.5  # longer windows: more tokens, and attention grows as T^2
    base = 0.095 * units ** 0.73  # fitted: bigger matmuls run closer to peak
    if not m.is_free:
        return base
    # Encoder block + mapper bookkeeping (~+37% at the demo's shape), plus the mapper's
    # (tokens x D) @ (D x 2^H) backward product, which dominates at H = 16.
    return 1.37 * base + t.batch_size * 65 * m.dim * (1 << m.latent_bits) * 4.7e-11


def _gpu_neighbour(key: tuple, measured: dict[tuple, float]) -> float | None:
    """A GPU run's step time from a measured run of a neighbouring shape, an upper bound: a
    baseline takes its Free counterpart's time (the device check times Free models; the
    baseline does a subset of their work), and a compiled run with no compiled figure its
    eager time (what compiling improves on). None if neither was measured."""
    def same(k: tuple, latent: bool, compiled: bool) -> bool:
        return (k[0:2] == key[0:2] and k[4:8] == key[4:8] and k[8] == compiled
                and ((k[2], k[3]) == (key[2], key[3]) if not latent else k[2] > 0))
    for compiled in ([True, False] if key[8] else [False]):
        for latent in ([False, True] if key[2] == 0 else [False]):
            found = [v for k, v in measured.items() if same(k, latent, compiled)]
            if found:
                return max(found)
    return None


def gpu_timings(out: Path, compiled: bool = False) -> tuple[str, dict[tuple, float], dict[int, float]] | None:
    """What the device check measured on a GPU (``results/gpu/<gpu>/ladder.json``,
    ``concurrency.json`` and ``compile.json``): the GPU's name, seconds per step alone by run
    shape (eager and compiled), and the throughput of N runs at once over one (of compiled
    runs when ``compiled`` and the check measured them).  The GPU that ``out`` lies under if
    it has them, else the first checked GPU; None if no GPU was checked."""
    folders = [f for f in sorted(GPU_RESULTS.glob("*")) if (f / "ladder.json").exists()]
    mine = [f for f in folders if f in out.resolve().parents or f == out.resolve()]
    if not (mine or folders):
        return None
    folder = (mine or folders)[0]
    try:
        ladder = json.loads((folder / "ladder.json").read_text())
        conc = json.loads((folder / "concurrency.json").read_text()) if (folder / "concurrency.json").exists() else {}
    except (OSError, ValueError):
        return None
    alone = {_shape_key(r["shape"]): r["s_per_step"] for r in ladder.get("rows", []) if r.get("shape")}
    scale = {int(r["jobs"]): float(r["throughput_vs_one"]) for r in conc.get("rows", [])}
    try:
        comp = json.loads((folder / "compile.json").read_text()) if (folder / "compile.json").exists() else {}
    except (OSError, ValueError):
        comp = {}
    if comp.get("status") == "done" and not comp.get("compiler"):  # a --tiny check measured no compiled code
        # Compiling costs once per run: spread over the measured rung's own step count.
        alone.update({_shape_key(r["shape"]): r["compiled_s"] + r.get("compile_overhead_s", 0.0) / r.get("steps", 1)
                      for r in comp.get("rows", [])})
        if compiled and comp.get("concurrency"):
            scale = {int(r["jobs"]): float(r["throughput_vs_one"]) for r in comp["concurrency"]}
    return folder.name, alone, scale


def default_jobs(device: str, compiled: bool = False) -> int:
    """--jobs when not given: 1 on the CPU; on a GPU, the number of runs at once that the
    device check found best for this GPU (``concurrency.json``; ``compile.json`` for compiled
    runs), at most the CPU count, else half the CPU count."""
    cores = os.cpu_count() or 1
    if device == "cpu":
        return 1
    folder = GPU_RESULTS / machine_name(device)
    for name in ("compile.json", "concurrency.json") if compiled else ("concurrency.json",):
        try:
            record = json.loads((folder / name).read_text())
            if record.get("compiler"):  # a --tiny check: no compiled figures
                continue
            return max(1, min(cores, int(record["jobs_default"])))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return max(1, cores // 2)


class _Progress(L.Callback):
    """Moves the sweep's step bar from inside each run."""

    def __init__(self, bar: tqdm) -> None:
        self.bar = bar
        self.last = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.last = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.is_global_zero:
            self.bar.update(trainer.global_step - self.last)
            self.last = trainer.global_step


def find_twin(run: PlannedRun, out: Path) -> Path | None:
    """A finished run with exactly this config in another study's folder (same name), if any.

    The studies share points (κ = 1/8 with the default injection and H is in kl_budget,
    latent_bits and free_bits_scope); a twin is copied instead of trained again.
    """
    want = run.config.to_dict()
    want.pop("preset", None)
    for cand in sorted(out.glob(f"*/{run.run_dir.name}")):
        if cand == run.run_dir or RunDir(cand).status() != "finished":
            continue
        try:
            have = saved_config(cand)
        except RunError:
            continue
        have.pop("preset", None)
        if have == want:
            return cand
    return None


def copy_run(src: Path, dst: Path, *, wait: bool = False) -> None:
    """Copy a finished run directory into ``dst`` (see :meth:`ftstudy.io.RunDir.copy_to`)."""
    RunDir(src).copy_to(RunDir(dst), wait=wait)


# ---------------------------------------------------------------- summary.csv

def _flatten(prefix: str, obj: dict[str, Any], out: dict[str, Any]) -> None:
    for k, v in obj.items():
        if isinstance(v, dict):
            _flatten(f"{prefix}{k}.", v, out)
        else:
            out[f"{prefix}{k}"] = json.dumps(v) if isinstance(v, list) else v


def collapsed(run_dir: Path, threshold_bits: float = 0.01) -> bool | None:
    """KL fell to ~0 and stayed there: every logged KL in the last quarter of training
    below ``threshold_bits`` per token (None for the baseline)."""
    kl = [float(r["kl_bits"]) for r in RunDir(run_dir).metrics() if r["split"] == "train" and "kl_bits" in r]
    return kl_collapsed(kl, threshold_bits) if kl else None


def rebuild_summary(study_dir: Path, study: Study) -> Path | None:
    """summary.csv of a study: one row per finished run, config fields then metrics; then
    its aggregate tables."""
    folder = StudyDir(study_dir)
    rows = []
    for run in folder.runs(finished=True):
        # Every config field, those added since the run was made at their defaults (the
        # values the run used), so old and new runs of a point share their grid columns.
        cfg, summary = saved_config(run.path), run.summary() or {}
        row: dict[str, Any] = {"run": run.name}
        for section in ("model", "task", "train"):
            row.update(sorted(cfg[section].items()))  # by name, as config.json has them
        # What precision "auto" resolved to on the machine that trained the run (it depends on
        # the CPU: bf16-mixed where it has native bf16).
        row["precision_resolved"] = run.record().get("precision_resolved")
        flat: dict[str, Any] = {}
        # "sampling" repeats the config's temperature/top_k/top_p columns.
        _flatten("", {k: v for k, v in summary.items() if k not in ("run", "sampling")}, flat)
        row.update(flat)
        row["collapsed"] = collapsed(run.path)
        for protocol in folder.protocols():  # ablate --measure: per-run agreement (lists left out)
            m = run.measurement(protocol)
            if m is not None:
                kept = {k: m[k] for k in ("agreement", "posterior", "sampling") if k in m}
                measured: dict[str, Any] = {}
                _flatten(f"measure.{protocol}.", kept, measured)
                row.update({k: v for k, v in measured.items() if not (isinstance(v, str) and v.startswith("["))})
        rows.append(row)
    if not rows:
        return None
    path = folder.write_summary(rows)
    write_aggregate(folder.path, study)
    write_agreement(folder.path, study, folder.protocols())
    return path


# ---------------------------------------------------------------- figures

def make_figures(out: Path, study: str, seed: int, fig_dir: Path | None = None) -> list[Path]:
    """Figures of every finished study under ``out`` (see ftstudy.results.plots.study_figures)."""
    from ftstudy.results.plots import study_figures

    names = study_names(study)
    return [p for name in names for p in study_figures(out / name, seed, STUDIES[name], fig_dir)]


# ---------------------------------------------------------------- CLI

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ftstudy.ablate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--study", required=True, choices=[*STUDIES, "all"])
    p.add_argument("--preset", default="quick", choices=sorted([*PRESETS, *PRESET_ALIASES]),
                   help="quick = synthetic-quick (minutes per run), long = synthetic-long (D 128, 3,000 steps; "
                        "its old name paper still works, with a warning), demo = synthetic-demo (make demo)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], metavar="SEED")
    p.add_argument("--set", dest="overrides", nargs="*", action="extend", default=[], metavar="KEY=VALUE",
                   help="override any config field for every run, e.g. steps=3000 n_layers=8; repeated --set "
                        "options add up (the last value of a key wins)")
    p.add_argument("--only", nargs="+", default=None, metavar="KEY=VALUE",
                   help="keep only the grid points that set one of these, e.g. kappa_bits=1/8 latent_bits=0")
    p.add_argument("--jobs", type=int, default=None,
                   help="runs trained at once, one process each with cpu_count/jobs threads (default 1; with "
                        "--device cuda, where they share the one GPU: the default make gpu-check measured for "
                        "this GPU, else cpu_count/2)")
    p.add_argument("--device", default="cpu", choices=DEVICES,
                   help="where every run trains: cpu, or cuda (the GPU that CUDA_VISIBLE_DEVICES names first; "
                        "shorthand for --set accelerator=gpu, which names the runs ...-acceleratorgpu-...); "
                        "default folder results/gpu/<gpu name>/...")
    p.add_argument("--out", type=Path, default=None,
                   help="results folder (default: results/ablate/ for quick, results/ablate/<preset>/ for long, "
                        "gpu-mid and gpu, results/demo/ for demo; under results/gpu/<gpu name>/ with --device cuda)")
    p.add_argument("--dry-run", action="store_true", help="print the grid and the estimated time, train nothing")
    p.add_argument("--wait", action="store_true",
                   help="if another sweep holds the results folder (or another process a run), wait for it "
                        "rather than fail")
    p.add_argument("--report", action="store_true",
                   help="train nothing: rebuild summary/aggregate tables and figures from the finished runs")
    p.add_argument("--plot", action="store_true",
                   help="train nothing: draw the figures from the committed tables and runs (the same "
                        "ftstudy.results.plots functions the notebooks call)")
    p.add_argument("--measure", nargs="*", default=None, metavar="PROTOCOL",
                   help="after training, re-measure every finished run under these sampling protocols (default: "
                        f"{' '.join(DEFAULT_PROTOCOLS)}; 't1', 'paper' (the calibrated temperature of python -m "
                        "ftstudy.calibrate) or 'temperature=0.7,top_p=0.9'), from its ckpt/model.pt or by training "
                        "it again (deterministic; it must reproduce its summary); writes <run>/measure/ and the "
                        "study's agreement.md")
    p.add_argument("--codes", action="store_true",
                   help="with --measure: also the aggregate posterior over whole codes per position (H <= 12; "
                        "<run>/measure/codes.encoder.json): its entropy against H bits and the prior's mass on codes "
                        "the encoder never produces")
    p.add_argument("--overwrite-measure", action="store_true",
                   help="with --measure: measure again the protocols a run already has")
    p.add_argument("--figures", type=Path, default=None, metavar="DIR",
                   help="where --plot/--report write figures (default: OUT/figures)")
    return p


def _prepare(r: PlannedRun, out: Path, wait: bool) -> bool:
    """Copy a finished twin into place if there is one; True if the run must start over.

    A folder with neither checkpoint nor summary holds no training state (a run killed
    before its first checkpoint, or copied without its git-ignored ckpt/): the sweep starts
    it again rather than stopping.
    """
    if check_resumable(r.config, r.run_dir) == "new":
        twin = find_twin(r, out)
        if twin is not None:
            copy_run(twin, r.run_dir, wait=wait)
            print(f"[ftstudy.study.ablate] {r.study}/{r.run_dir.name}: identical finished run in "
                  f"{twin.parent.name}/, copied instead of retrained", flush=True)
    return r.run_dir.exists() and r.status == "todo"


def _run_inline(left: list[tuple[PlannedRun, int]], out: Path, bar: tqdm, launcher: str, t0: float,
                wait: bool) -> int:
    for i, (r, n) in enumerate(left):
        bar.set_description(f"run {i + 1}/{len(left)} {r.study}/{r.run_dir.name}")
        try:
            restart = _prepare(r, out, wait)
            if r.status == "finished":
                bar.update(n)
            train(r.config, r.run_dir, argv=r.argv, progress=False, extra_callbacks=[_Progress(bar)],
                  overwrite=restart, wait=wait, launcher=launcher)
        except RunError as e:
            print(f"error: {e}", file=sys.stderr)
            r.summarize()
            return 3
        r.summarize()
        if not sys.stderr.isatty():
            print(f"[ftstudy.study.ablate] {i + 1}/{len(left)} done ({r.run_dir.name}), "
                  f"{(time.perf_counter() - t0) / 60:.1f} min elapsed", flush=True)
    return 0


def _die_with_parent() -> None:
    """In a child: get SIGTERM when the sweep process dies, even by SIGKILL (Linux), so no
    orphan keeps training a run that a rerun of the sweep would resume at the same time."""
    if sys.platform.startswith("linux"):
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _run_parallel(left: list[tuple[PlannedRun, int]], out: Path, bar: tqdm, launcher: str, t0: float,
                  jobs: int, wait: bool) -> int:
    threads = max(1, (os.cpu_count() or 1) // jobs)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "FTSTUDY_LAUNCHED_BY": launcher}
    queue = list(left)
    running: dict[subprocess.Popen, tuple[PlannedRun, int, Path]] = {}
    finished_steps, failed, done = 0, [], 0
    try:
        while queue or running:
            while queue and len(running) < jobs and not failed:
                r, n = queue.pop(0)
                restart = _prepare(r, out, wait)
                if r.status == "finished":
                    finished_steps += n
                    done += 1
                    r.summarize()
                    continue
                log = r.study_dir.log_file(r.run_dir.name)
                log.parent.mkdir(parents=True, exist_ok=True)
                # The child reads the resolved config, and records r.argv as the command that
                # reproduces it (ftstudy.run.train --config).
                config = write_config_file(r.study_dir.config_file(r.run_dir.name), r.config.to_dict(), r.argv)
                cmd = [sys.executable, "-m", "ftstudy.run.train", "--config", str(config),
                       "--out", str(r.run_dir.parent), "--name", r.run_dir.name, "--no-progress",
                       *(["--overwrite"] if restart else []), *(["--wait"] if wait else [])]
                with open(log, "ab") as f:
                    proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT,
                                            preexec_fn=_die_with_parent)
                running[proc] = (r, n, log)
            if not running:
                break
            time.sleep(2)
            for proc in [p for p in running if p.poll() is not None]:
                r, n, log = running.pop(proc)
                r.summarize()
                if proc.returncode != 0:
                    failed.append((r, log))
                    continue
                finished_steps += n
                done += 1
                if not sys.stderr.isatty():
                    print(f"[ftstudy.study.ablate] {done}/{len(left)} done ({r.run_dir.name}), "
                          f"{(time.perf_counter() - t0) / 60:.1f} min elapsed", flush=True)
            live = sum(n - r.steps_left() for r, n, _ in running.values())
            bar.set_description(f"{done}/{len(left)} runs done, {len(running)} running")
            bar.update(max(0, finished_steps + live - bar.n))
    except BaseException:
        for proc in running:
            proc.terminate()
        for proc in running:
            proc.wait()
        raise
    for r, log in failed:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        print(f"error: {r.study}/{r.run_dir.name} failed; its log is {log}:\n{tail}", file=sys.stderr)
    return 3 if failed else 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.preset = resolve_preset(args.preset, PRESET_ALIASES)
    if args.jobs is not None and args.jobs < 1:
        print(f"error: --jobs must be an integer >= 1, got {args.jobs}", file=sys.stderr)
        return 2
    out = args.out if args.out is not None else default_out(args.preset, args.device)
    try:
        for seed in args.seeds:
            check_seed(seed, "--seeds")
        overrides = device_overrides(None if args.device == "cpu" else args.device, parse_set_args(args.overrides))
        runs = plan(args.study, args.preset, args.seeds, overrides, out, only=args.only)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.jobs is None:
        args.jobs = default_jobs(args.device, compiled=bool(runs) and all(r.config.train.compile for r in runs))
    if args.jobs > 1 and any(r.config.train.devices * r.config.train.num_nodes > 1 for r in runs):
        print(f"error: --jobs {args.jobs} runs one single-device process per run; runs with devices > 1 "
              f"or num_nodes > 1 need --jobs 1", file=sys.stderr)
        return 2
    # Refuse before training anything if a run directory holds a different config.
    for r in runs:
        try:
            check_resumable(r.config, r.run_dir)
        except RunError as e:
            print(f"error: {e}", file=sys.stderr)
            return 3
    if args.report:
        for name, d in sorted({(r.study, r.run_dir.parent) for r in runs}):
            if d.exists():
                rebuild_summary(d, STUDIES[name])
        for path in make_figures(out, args.study, args.seeds[0], args.figures):
            print(f"[ftstudy.study.ablate] wrote {path}")
        return 0
    if args.plot:
        written = make_figures(out, args.study, args.seeds[0], args.figures)
        for path in written:
            print(f"[ftstudy.study.ablate] wrote {path}")
        if not written:
            print(f"error: no finished runs of study {args.study!r} under {out} to plot; train them with "
                  f"python -m ftstudy.ablate --study {args.study} --preset {args.preset}", file=sys.stderr)
            return 3
        return 0
    protocols = None
    if args.codes and args.measure is None:
        print("error: --codes measures finished runs: it goes with --measure (e.g. --measure paper --codes)",
              file=sys.stderr)
        return 2
    if args.measure is not None:
        try:
            protocols = [protocol(name) for name in (args.measure or DEFAULT_PROTOCOLS)]
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    if args.dry_run:
        _print_plan(args, runs, out)
        return 0
    try:
        if any(r.status != "finished" for r in runs):
            with folder_lock(out, wait=args.wait, what="sweep folder", error=RunError):
                rc = _sweep(args, runs, out, argv)
            if rc:
                return rc
        elif protocols is None:
            _print_plan(args, runs, out)
            return 0
        if protocols is not None:
            return _measure(runs, protocols, out, args)
    except RunError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    return 0


def _measure(runs: list[PlannedRun], protocols: list[Protocol], out: Path, args: argparse.Namespace) -> int:
    """Re-measure every run under the protocols (each run under its own lock: this may run
    beside a sweep that trains other runs of the same folder), then rebuild the tables."""
    from ftstudy.study.measure import measure_codes, measure_run  # torch and the probe, on use

    t0 = time.perf_counter()
    for i, r in enumerate(runs):
        if r.config.task.name != "synthetic":
            print(f"error: --measure measures the synthetic task; {r.run_dir.name} trains on {r.config.task.name!r}",
                  file=sys.stderr)
            return 2
        with r.folder.lock(wait=args.wait):
            done = measure_run(r.run_dir, protocols, overwrite=args.overwrite_measure, wait=args.wait)
            if args.codes and measure_codes(r.run_dir, overwrite=args.overwrite_measure, wait=args.wait):
                done.append("codes")
        print(f"[ftstudy.study.ablate] measured {i + 1}/{len(runs)} {r.study}/{r.run_dir.name}"
              f"{': ' + ', '.join(done) if done else ' (already)'}; {(time.perf_counter() - t0) / 60:.1f} min",
              flush=True)
    for name, d in sorted({(r.study, r.run_dir.parent) for r in runs}):
        rebuild_summary(d, STUDIES[name])
        print(f"[ftstudy.study.ablate] wrote {StudyDir(d).agreement_md}")
    make_figures(out, args.study, args.seeds[0], args.figures)
    return 0


def _print_plan(args: argparse.Namespace, runs: list[PlannedRun], out: Path) -> list[tuple[PlannedRun, int]]:
    """Print the grid, each run's status and the estimated time; the runs with their steps left."""
    left = [(r, r.steps_left()) for r in runs]
    measured = measured_step_times(out)
    on_gpu = any(r.config.train.accelerator != "cpu" for r in runs)
    how = "rough, 2-core CPU"
    speedup = min(args.jobs, os.cpu_count() or 1) * (0.9 if args.jobs > 1 else 1.0)
    if on_gpu:
        gpu = gpu_timings(out, compiled=all(r.config.train.compile for r, _ in left))
        if gpu is not None:
            name, alone, scale = gpu
            measured = {**alone, **measured}
            near = min(scale, key=lambda n: (abs(n - args.jobs), n)) if scale else None
            speedup = scale[near] if near is not None else 1.0
            how = (f"GPU step times measured alone on {name} by make gpu-check, times the throughput of "
                   f"{near} runs at once there ({speedup:.2f}x one)" if near else f"GPU step times of {name}")
        else:
            how = "no GPU measured yet: make gpu-check on the GPU measures its step times"
    per = [seconds_per_step(r.config, measured) for r, _ in left]
    if on_gpu and any(r.config.train.compile for r, _ in left) and not any(k[8] for k in measured):
        how += "; no compiled step time measured: compiled runs priced at their eager step time, an upper bound"
    known = [n * p for (r, n), p in zip(left, per) if p is not None]
    unknown = sum(1 for (r, n), p in zip(left, per) if p is None and n)
    if unknown and not known:
        est = f"training time unknown ({unknown} runs of a shape not measured on this device)"
    else:
        est = f"about {sum(known) / speedup / 60:.0f} min of training left" + (
            f" for the runs of a measured shape ({unknown} runs of an unmeasured shape not priced)" if unknown else "")
    print(f"{args.study} × preset {args.preset} ({PRESETS[args.preset]}) × seeds {args.seeds}: {len(runs)} runs, "
          f"{sum(1 for r in runs if r.status == 'finished')} finished; {est} with --jobs {args.jobs} ({how}); "
          f"results in {out}")
    for r, n in left:
        print(f"  {r.status:11s} {r.study}/{r.run_dir.name}  ({n} steps left)")
    return left


def _sweep(args: argparse.Namespace, runs: list[PlannedRun], out: Path, argv: list[str] | None) -> int:
    """Train every run not finished (the caller holds the sweep folder's lock)."""
    left = _print_plan(args, runs, out)
    t0 = time.perf_counter()
    launcher = "python -m ftstudy.ablate " + " ".join(sys.argv[1:] if argv is None else argv)
    bar = tqdm(total=sum(n for _, n in left), unit="step", desc="sweep", dynamic_ncols=True,
               disable=None, mininterval=5)
    try:
        if args.jobs == 1:
            rc = _run_inline(left, out, bar, launcher, t0, args.wait)
        else:
            rc = _run_parallel(left, out, bar, launcher, t0, args.jobs, args.wait)
    finally:
        bar.close()
    if rc:
        return rc
    studies = sorted({r.run_dir.parent for r in runs})
    make_figures(out, args.study, args.seeds[0], args.figures)
    print(f"[ftstudy.study.ablate] {len(runs)} runs in {(time.perf_counter() - t0) / 60:.1f} min; summaries: "
          + ", ".join(str(StudyDir(s).summary_file) for s in studies))
    return 0


if __name__ == "__main__":
    sys.exit(main())
