"""One training run: ``python -m ftstudy.train --preset synthetic-quick --set kappa_bits=0.125 --seed 0``.

A run is a config in and a run directory out, with a deterministic name (never a
timestamp) under ``results/runs/``::

    <run>/config.json     every config field, versions, argv, git commit
    <run>/metrics.csv     one row per logged training step and per validation
    <run>/summary.json    final figures; its presence marks the run finished
    <run>/samples.txt     generations under prior Z, one per line
    <run>/ckpt/           git-ignored: last.ckpt (resumable) and model.pt (export)
    <run>/tb/             git-ignored: TensorBoard log of the same figures (tensorboard --logdir <run>/tb)

Rerunning the same command never overwrites: a finished run is reported and skipped, an
interrupted one resumes from ``ckpt/last.ckpt``; ``--overwrite`` starts over, and deletes
only the names ftstudy writes, in a folder ftstudy made (its marker ``.ftstudy-run``, or, for
a run made before markers, a complete ftstudy ``config.json``): a folder that is not a run,
or that holds anything else, is refused with those names listed and left untouched.  A run
folder, or an ``--out``, that is a symbolic link is refused before anything is written.
Every file is written atomically, only by rank 0, which holds the run folder's lock
(``.ftstudy.lock``) for the whole run: a second process on the same folder is refused with
the holder's pid, or waits with ``--wait``.  A full disk (or quota) while the run writes stops
it with one line naming the file; nothing finished is lost, and once space is freed the same
command resumes from the last checkpoint.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger

import ftstudy
from ftstudy.tasks import FinishedRun, get_task
from ftstudy.tasks import check_config as check_task_config
from ftstudy.tasks.corpus import DataError
from ftstudy.core.checkpoint import CheckpointError, load_resumable, save_model
from ftstudy.core.config import LATENT_ONLY_FIELDS, PRESETS, ConfigError, RunConfig, TrainConfig, get_preset, parse_set_args
from ftstudy.io import REPO_ROOT, CsvTable, RunDir, RunError, read_config_file
from ftstudy.run.lit import LitFreeTransformer, NonFiniteLossError, resolve_precision

__all__ = ["RunError", "run_name", "train", "main", "REPO_ROOT", "DEFAULT_RESULTS"]

DEFAULT_RESULTS = REPO_ROOT / "results" / "runs"
DEFAULT_PRESET = "synthetic-quick"

# LitFreeTransformer moves batches to a GPU itself (pinned, non-blocking) for every task's data
# module; Lightning's notice that the module's hook wins over the data module's is expected.
warnings.filterwarnings("ignore", message=r"You have overridden `transfer_batch_to_device` in `LightningModule`")


# ---------------------------------------------------------------- naming & provenance

def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def run_name(cfg: RunConfig) -> str:
    """Deterministic name: preset, variant, κ, every field that differs from the preset, seed."""
    base = get_preset(cfg.preset) if cfg.preset in PRESETS else RunConfig()
    m = cfg.model
    parts = [cfg.preset, f"free-k{_fmt(m.kappa_bits)}" if m.is_free else "base"]
    # steps is not part of the name: a finished run can be extended to more steps in place.
    skip = {"kappa_bits", "seed", "latent_bits", "steps"}
    ref, cur = base.to_dict(), cfg.to_dict()
    for section in ("model", "task", "train"):
        for key in sorted(cur[section]):
            if key in skip or cur[section][key] == ref[section][key]:
                continue
            if not m.is_free and key in LATENT_ONLY_FIELDS:
                continue  # latent-only settings do not change a baseline
            parts.append(f"{key}{_fmt(cur[section][key])}")
    if m.is_free and m.latent_bits != base.model.latent_bits:
        parts.append(f"H{m.latent_bits}")
    parts.append(f"s{cfg.train.seed}")
    return "-".join(p.replace("/", "_").replace(" ", "") for p in parts)


def _git_commit() -> dict[str, Any]:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip() != ""
        return {"git_commit": commit or None, "git_dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None, "git_dirty": None}


def _provenance(argv: list[str] | None, launcher: str | None) -> dict[str, Any]:
    import lightning
    return {
        "argv": list(sys.argv if argv is None else argv),
        # The single command that reproduces this run, and what actually launched it.
        "command": shlex.join(["python", "-m", "ftstudy.run.train", *(sys.argv[1:] if argv is None else argv)]),
        "launched_by": launcher or shlex.join(["python", "-m", "ftstudy.run.train", *sys.argv[1:]]),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "lightning": lightning.__version__, "ftstudy": ftstudy.__version__},
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()},
        **_git_commit(),
    }


# ---------------------------------------------------------------- disk full

#: errno of a write refused for want of space: the disk is full, or the user's quota is.
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """Name ``path`` in a disk-full OSError raised inside, for the one-line report of :func:`train`:
    a failed write() or fsync() names no file, and a failed copy names a temporary one (Lightning
    writes a checkpoint to a temporary file in the system's temp folder, then moves it)."""
    try:
        yield
    except OSError as e:
        if e.errno in DISK_FULL:
            raise OSError(e.errno, e.strerror or os.strerror(e.errno), str(path)) from e
        raise


def disk_full_message(run_dir: Path, e: OSError) -> str:
    """The one line for a disk-full error while ``run_dir`` trained: what was being written and
    how to go on (the folder is left as a rerun of the same command expects it)."""
    last = RunDir(run_dir).last_ckpt
    what = e.filename or f"the run folder {run_dir}"
    if last.exists():
        then = f"once space is freed, rerun the same command: the run resumes from its last checkpoint {last}"
    else:
        then = "no checkpoint was saved yet: once space is freed, rerun the same command with --overwrite"
    return f"{run_dir.name}: {os.strerror(e.errno)} while writing {what}; nothing finished was lost; {then}"


# ---------------------------------------------------------------- callbacks

class MetricsCSV(L.Callback):
    """Keeps metrics.csv: rows for logged training steps and validations; atomic rewrites.

    On resume, rows past the checkpoint's step are dropped so the file never holds a step
    twice.
    """

    def __init__(self, table: CsvTable, log_every: int) -> None:
        self.table, self.log_every = table, log_every

    @property
    def rows(self) -> list[dict[str, Any]]:
        return self.table.rows

    def load(self, up_to_step: int) -> None:
        self.table.load(keep=lambda r: int(r["step"]) <= up_to_step)

    def _write(self) -> None:
        with writing(self.table.path):
            self.table.write()

    def _add(self, trainer: L.Trainer, split: str) -> None:
        prefix = f"{split}/"
        row: dict[str, Any] = {"step": trainer.global_step, "split": split}
        for k, v in trainer.callback_metrics.items():
            if k.startswith(prefix):
                row[k[len(prefix):]] = f"{float(v):.6g}"
        if trainer.is_global_zero:
            self.rows.append(row)
            self._write()
            if split == "val" and not sys.stdout.isatty():
                # One line per validation where no live progress bar can be drawn (logs, CI).
                print(f"[ftstudy.run.train] step {row['step']}: " + ", ".join(
                    f"{k} {v}" for k, v in row.items() if k not in ("step", "split")), flush=True)

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step % self.log_every == 0 or trainer.global_step == trainer.max_steps:
            self._add(trainer, "train")

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # on_validation_end, not _epoch_end: callbacks' epoch-end hooks run before the
        # module's, which is where the validation figures are logged.
        if not trainer.sanity_checking:
            self._add(trainer, "val")


class AtomicCheckpoint(L.Callback):
    """Saves the resumable state to ckpt/last.ckpt every ``every`` steps, atomically.

    Also carries the run's accumulated wall time so resumed runs report total training time.
    """

    def __init__(self, path: Path, every: int) -> None:
        self.path, self.every = path, every
        self.tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")  # set again, for every rank, at train start
        self.elapsed = 0.0
        self._t0 = time.perf_counter()

    def state_dict(self) -> dict[str, Any]:
        return {"elapsed": self.elapsed + time.perf_counter() - self._t0}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.elapsed = float(state["elapsed"])
        self._t0 = time.perf_counter()

    @property
    def total_time(self) -> float:
        return self.elapsed + time.perf_counter() - self._t0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t0 = time.perf_counter()
        # One temporary name on every rank (a sharded checkpoint is written by all), with rank 0's pid.
        self.tmp = self.path.with_name(f".{self.path.name}.tmp{trainer.strategy.broadcast(os.getpid(), src=0)}")

    def save(self, trainer: L.Trainer) -> None:
        tmp = self.tmp
        try:
            with writing(self.path):
                # weights_only=False here means "save the optimizer and loop state too" (a resumable
                # checkpoint); it holds only tensors and plain containers, so it still loads with
                # torch.load(weights_only=True).
                trainer.save_checkpoint(tmp, weights_only=False)  # collective; rank 0 writes
                if trainer.is_global_zero:
                    with open(tmp, "rb") as f:
                        os.fsync(f.fileno())
                    os.replace(tmp, self.path)
        except BaseException:
            if trainer.is_global_zero and tmp.is_file():
                tmp.unlink()  # the previous last.ckpt stays; a partial copy only takes space
            raise
        trainer.strategy.barrier()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: LitFreeTransformer, *args: Any) -> None:
        if trainer.global_step % self.every == 0 or trainer.global_step == trainer.max_steps:
            pl_module.raise_if_nonfinite()  # never save weights updated with a NaN/inf loss
            self.save(trainer)


class Snapshots(L.Callback):
    """Keeps the model every ``every`` steps as ``<ckpt dir>/model-step<N>.pt`` (the export
    format of model.pt), for curves over one training schedule (``train --snapshot-every``).
    An output option, not part of the run's config: snapshots never change what is trained."""

    def __init__(self, folder: RunDir, cfg: RunConfig, every: int) -> None:
        self.folder, self.cfg, self.every = folder, cfg, every

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: LitFreeTransformer, *args: Any) -> None:
        step = trainer.global_step
        if not (self.every and step % self.every == 0):
            return
        pl_module.raise_if_nonfinite()  # on every rank: the same answer everywhere
        if trainer.is_global_zero:
            with writing(self.folder.snapshot_file(step)):
                save_model(self.folder.snapshot_file(step), pl_module.model, self.cfg, step=step)


# ---------------------------------------------------------------- the run

def _launch_rank(cfg: RunConfig) -> int:
    """Global rank of this process before Lightning sets up the process group.

    Lightning's DDP launcher re-runs the command for ranks > 0, and cluster launchers
    (torchrun, SLURM) start every rank at once; only rank 0 may create, check or delete
    the run directory.
    """
    for var in ("RANK", "SLURM_PROCID"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    node, local = int(os.environ.get("NODE_RANK", 0) or 0), int(os.environ.get("LOCAL_RANK", 0) or 0)
    return node * cfg.train.devices + local


def _complete(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved config with the fields added to ftstudy since it was written, at their defaults."""
    return RunConfig.from_dict(saved).to_dict()


def saved_config(run_dir: Path) -> dict[str, Any]:
    """The config a run directory was made with, as a full dict: fields added to ftstudy
    after the run was made take their defaults.  RunError if it cannot be read."""
    return RunDir(run_dir).config(_complete)


def check_resumable(cfg: RunConfig, run_dir: Path) -> str:
    """Status of ``run_dir`` for ``cfg``: new, started, interrupted, finished or extendable;
    RunError for a foreign folder or another config (see :meth:`ftstudy.io.RunDir.check`)."""
    return RunDir(run_dir).check(cfg.to_dict(), _complete)


def build_strategy(t: TrainConfig) -> str | L.pytorch.strategies.Strategy:
    """Lightning's strategy for ``t.strategy``: "fsdp" shards per transformer block (and
    checkpoints activations per block when ``activation_checkpointing``); any other name
    is passed through as is."""
    if t.strategy != "fsdp":
        return t.strategy
    from lightning.pytorch.strategies import FSDPStrategy

    from ftstudy.core.model import Block

    return FSDPStrategy(auto_wrap_policy={Block},
                        activation_checkpointing_policy={Block} if t.activation_checkpointing else None)


def make_datamodule(cfg: RunConfig, start_index: int = 0) -> L.LightningDataModule:
    """The task's data module (ftstudy.tasks), this rank's share of each global batch, resuming
    at batch ``start_index`` (raises DataError for bad shards)."""
    t = cfg.train
    return get_task(cfg.task.name).datamodule(cfg, batch_size=t.batch_size // (t.devices * t.num_nodes),
                                              steps_per_epoch=max(t.val_every, 1), start_index=start_index)


def tensorboard_logger(run_dir: Path, resume_step: int = 0) -> TensorBoardLogger:
    """The run's TensorBoard log, ``<run>/tb/`` (the figures of metrics.csv), written by global
    rank 0 only (Lightning's rank-zero logger).  One folder for the whole run: a resumed run
    appends to it and hides what the interrupted one logged after its checkpoint's step, as
    metrics.csv drops those rows."""
    return TensorBoardLogger(save_dir=str(run_dir), name=RunDir.TB, version="", default_hp_metric=False,
                             purge_step=resume_step + 1 if resume_step else None)


def train(cfg: RunConfig, run_dir: Path, *, overwrite: bool = False, wait: bool = False,
          argv: list[str] | None = None, progress: bool = True, launcher: str | None = None,
          extra_callbacks: list[L.Callback] | None = None) -> dict[str, Any]:
    """Train one run into ``run_dir`` and return its summary (skips a finished run).

    ``argv`` are the ``ftstudy.run.train`` arguments that reproduce the run (recorded in
    config.json); ``launcher`` names the command that actually ran it, if another.
    Rank 0 holds the run folder's lock throughout; ``wait``: wait for another holder
    rather than fail.  A full disk or quota is a RunError that names the file being written.
    """
    run_dir = Path(run_dir)
    try:
        return _train(cfg, run_dir, overwrite=overwrite, wait=wait, argv=argv, progress=progress, launcher=launcher,
                      extra_callbacks=extra_callbacks)
    except OSError as e:
        if e.errno not in DISK_FULL:
            raise
        raise RunError(disk_full_message(run_dir, e)) from e


def _train(cfg: RunConfig, run_dir: Path, *, overwrite: bool, wait: bool, argv: list[str] | None, progress: bool,
           launcher: str | None, extra_callbacks: list[L.Callback] | None) -> dict[str, Any]:
    """:func:`train`, but for the report of a full disk."""
    folder = RunDir(run_dir)
    if cfg.train.accelerator in ("gpu", "cuda") and not torch.cuda.is_available() and folder.status() != "finished":
        raise RunError(f"{run_dir.name}: accelerator={cfg.train.accelerator} (--device cuda), but torch "
                       f"{torch.__version__} sees no CUDA device here; allowed here: --device cpu")
    if _launch_rank(cfg) != 0:
        # Rank 0 holds the lock and has already checked, cleared or created the directory
        # (it launches us, or starts with us and waits for us at the first collective).
        status = "interrupted" if folder.last_ckpt.exists() else "new"
        return _fit(cfg, run_dir, status, argv, progress, launcher, extra_callbacks)
    # Before the lock: not even a lock file goes into a folder that is not ours, nor through a
    # link; and --overwrite is refused before anything is deleted when it could not delete all.
    folder.check_not_linked()
    if overwrite:
        folder.check_deletable()
    else:
        folder.check_ours()
    with folder.lock(wait=wait):
        if overwrite:
            folder.delete(locked=True)
        status = check_resumable(cfg, run_dir)
        if status == "finished":
            summary = folder.summary() or {}
            print(f"[ftstudy.run.train] {run_dir} is finished (step {summary.get('step')}); skipping. "
                  f"Pass --overwrite to retrain.")
            return summary
        if status == "started":
            raise RunError(f"{run_dir} exists without a checkpoint or summary (killed before its first "
                           f"checkpoint?); pass --overwrite to start it again")
        if status == "extendable":
            # Continue from the final checkpoint to the new step count; the run is
            # unfinished again until its new summary is written.
            print(f"[ftstudy.run.train] extending {run_dir} to {cfg.train.steps} steps")
            folder.unfinish()
            status = "interrupted"
        return _fit(cfg, run_dir, status, argv, progress, launcher, extra_callbacks)


DEVICES = ("cpu", "cuda")


def device_overrides(device: str | None, overrides: dict[str, Any]) -> dict[str, Any]:
    """``overrides`` with ``--device`` applied: cuda is accelerator=gpu (one GPU; several runs of
    ``ablate --jobs`` share it), cpu is accelerator=cpu; None leaves them as they are.  A
    ``--set accelerator=…`` that says otherwise is a ConfigError."""
    if device is None:
        return overrides
    if device not in DEVICES:
        raise ConfigError(f"--device {device!r}: allowed: {', '.join(DEVICES)}")
    accelerator = "gpu" if device == "cuda" else "cpu"
    given = overrides.get("accelerator")
    if given is not None and str(given) not in ((accelerator, "cuda") if device == "cuda" else (accelerator,)):
        raise ConfigError(f"--device {device} and --set accelerator={given} disagree; give one of them")
    return {**overrides, "accelerator": accelerator}


def _resume_step(run_dir: Path, last: Path, model: torch.nn.Module | None = None) -> int:
    """The step of the resumable checkpoint (loaded with weights_only=True), or a RunError
    that says how to recover from a file that cannot be read, that lacks the training state
    Lightning restores (:func:`ftstudy.core.checkpoint.load_resumable`), or whose weights are
    not ``model``'s (names and shapes)."""
    try:
        ckpt = load_resumable(last)
        if model is not None:
            want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
            have = {k: tuple(v.shape) if isinstance(v, torch.Tensor) else None for k, v in ckpt["state_dict"].items()}
            if have != want:
                odd = sorted(set(have) ^ set(want)) or sorted(k for k in want if have[k] != want[k])
                raise CheckpointError(f"checkpoint {last}: its weights are not this run's model's "
                                      f"({len(odd)} differ in name or shape, e.g. {odd[0]})")
        return ckpt["global_step"]
    except CheckpointError as e:
        raise RunError(f"{run_dir.name} cannot resume: {e}; pass --overwrite to start the run over "
                       f"(or put back a good {last.name})") from e


def _fit(cfg: RunConfig, run_dir: Path, status: str, argv: list[str] | None, progress: bool,
         launcher: str | None, extra_callbacks: list[L.Callback] | None) -> dict[str, Any]:
    """Train a run whose folder is checked (``status``: new or interrupted) and return its summary."""
    folder = RunDir(run_dir)
    last = folder.last_ckpt
    run_dir.mkdir(parents=True, exist_ok=True)
    t = cfg.train
    on_gpu = t.accelerator in ("gpu", "cuda")
    precision = resolve_precision(t.precision, t.accelerator)
    if status == "interrupted" and folder.config_file.exists():
        # A resumed (or extended) run keeps the precision it started with: "auto" resolves by
        # the machine (bf16-mixed where the CPU has native bf16), and the machine may have changed.
        recorded = folder.record().get("precision_resolved")
        if isinstance(recorded, str) and recorded != precision:
            print(f"[ftstudy.run.train] {run_dir.name}: precision {t.precision} would resolve to {precision} here; "
                  f"keeping the run's own {recorded}")
            precision = recorded
    if on_gpu:  # the same command gives the same numbers on the same GPU (cuBLAS needs this set first)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    L.seed_everything(t.seed, workers=True, verbose=False)
    lit = LitFreeTransformer(cfg)
    world = t.devices * t.num_nodes
    resume_step = 0
    if status == "interrupted":
        resume_step = _resume_step(run_dir, last, lit)
    dm = make_datamodule(cfg, resume_step)
    metrics = MetricsCSV(folder.metrics_table(), t.log_every)
    ckpt_cb = AtomicCheckpoint(last, t.ckpt_every)
    trainer = L.Trainer(
        max_steps=t.steps, accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes,
        strategy=build_strategy(t), precision=precision, logger=tensorboard_logger(run_dir, resume_step),
        enable_checkpointing=False,
        callbacks=[metrics, ckpt_cb, *(extra_callbacks or [])], val_check_interval=t.val_every, check_val_every_n_epoch=None,
        gradient_clip_val=t.grad_clip if t.grad_clip > 0 else None, num_sanity_val_steps=0,
        enable_model_summary=False, enable_progress_bar=progress and sys.stdout.isatty(), default_root_dir=str(run_dir),
        use_distributed_sampler=False, log_every_n_steps=t.log_every,
        # Deterministic kernels where CUDA has them (a warning names any op without one);
        # the CPU kernels are deterministic already.
        deterministic="warn" if on_gpu else None,
    )
    ckpt_path = None
    if status == "interrupted":
        print(f"[ftstudy.run.train] resuming {run_dir} from step {resume_step}")
        metrics.load(resume_step)
        ckpt_path = str(last)
    if trainer.is_global_zero and (status == "new" or folder.saved_steps() != t.steps):
        with writing(folder.config_file):
            folder.write_config({"config": cfg.to_dict(), "run": run_dir.name, "precision_resolved": precision,
                                 **_provenance(argv, launcher)})
    # After config.json: a run stopped before this point (bad data, say) leaves a folder that
    # is still empty, not one that looks started but is no ftstudy run.
    folder.make_ckpt_dir()

    try:
        trainer.fit(lit, datamodule=dm, ckpt_path=ckpt_path, weights_only=True)
    except NonFiniteLossError as e:
        kept = f"last good checkpoint kept at {last}" if last.exists() else "no checkpoint was saved yet"
        raise RunError(f"{run_dir.name}: {e}; {kept}") from e
    if trainer.interrupted or trainer.global_step < t.steps:
        # Lightning turns Ctrl-C into a graceful stop: never let that pass for a finished run.
        raise RunError(f"{run_dir.name}: stopped at step {trainer.global_step} of {t.steps}; "
                       f"rerun the same command to resume from {last}")
    if t.steps % t.val_every != 0 or resume_step >= t.steps:
        # Final figures at the last step when the periodic validation did not land there.
        # Decided from the config alone, so every DDP rank takes the same branch.
        trainer.validate(lit, datamodule=dm, verbose=False, weights_only=True)
    train_time = ckpt_cb.total_time
    replicas = replica_checksums(lit.model, trainer)  # a collective: every rank takes part

    summary: dict[str, Any] = {}
    if trainer.is_global_zero:
        summary = _finish(cfg, lit, run_dir, trainer, metrics, train_time, precision, replicas)
    trainer.strategy.barrier()
    return summary


def replica_checksums(model: torch.nn.Module, trainer: L.Trainer) -> list[float] | None:
    """A float64 fingerprint of the weights on every rank (identical replicas give identical
    numbers): the sum and the norm of each parameter, weighted by its position.  Read in
    place on each parameter's device, so it costs no copy of the model, whatever its size.
    None under FSDP, where the ranks hold different shards by design."""
    from lightning.pytorch.strategies import FSDPStrategy

    if isinstance(trainer.strategy, FSDPStrategy):
        return None
    params = [p.detach() for p in model.parameters()]
    total = torch.zeros((), dtype=torch.float64, device=params[0].device)
    for i, p in enumerate(params):
        total += (i + 1) * (p.sum(dtype=torch.float64) + torch.linalg.vector_norm(p, dtype=torch.float64))
    gathered = trainer.strategy.all_gather(total)
    return [float(x) for x in torch.as_tensor(gathered).reshape(-1).cpu()]


def _finish(cfg: RunConfig, lit: LitFreeTransformer, run_dir: Path, trainer: L.Trainer,
            metrics: MetricsCSV, train_time: float, precision: str, replicas: list[float] | None) -> dict[str, Any]:
    model = lit.model
    val = {k.removeprefix("val/"): float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    tps = [float(r["tokens_per_s"]) for r in metrics.rows if r.get("split") == "train" and r.get("tokens_per_s")]
    # What the task measures once trained (the synthetic task: samples.txt, groups.txt, figures).
    measured = lit.task.measure(FinishedRun(cfg, model, trainer.datamodule, run_dir, precision, val, lit.val_probe))
    with writing(RunDir(run_dir).model_file):
        save_model(RunDir(run_dir).model_file, model, cfg, step=trainer.global_step, extra=measured.checkpoint_extra)
    m = cfg.model
    summary = {
        "run": run_dir.name,
        "variant": "free" if m.is_free else "baseline",
        "kappa_bits": m.kappa_bits if m.is_free else None,
        "latent_bits": m.latent_bits,
        "step": trainer.global_step,
        "precision": precision,
        "train_time_s": round(train_time, 2),
        "tokens_per_s_median": float(sorted(tps)[len(tps) // 2]) if tps else None,
        # Every generation of the run (samples.txt, the probe) used these sampling settings.
        "sampling": cfg.task.sampling,
        "generation": {"z": "prior at every position (encoder never run)", "temperature": cfg.task.temperature,
                       "time_s": round(measured.generation_time_s, 2), **measured.generation},
        "val": val,
        "prior_ce_minus_floor": measured.prior_ce_minus_floor,
        "probe": measured.probe,
        "posterior": measured.posterior,
        "params": model.num_parameters(),
        "params_latent": model.num_parameters("latent"),
        # DDP keeps replicas equal by construction; this records that it did (None: sharded).
        "replicas": {"world_size": trainer.world_size, "weight_checksums": replicas,
                     "identical": None if replicas is None else len(set(replicas)) == 1},
    }
    summary = finite_or_none(summary)
    with writing(RunDir(run_dir).summary_file):
        RunDir(run_dir).write_summary(summary)
    return summary


def finite_or_none(obj: Any) -> Any:
    """JSON has no NaN: undefined figures (e.g. no valid pair in a group) become null."""
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


# ---------------------------------------------------------------- CLI

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ftstudy.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default=None, help=f"one of {sorted(PRESETS)} (default: {DEFAULT_PRESET})")
    p.add_argument("--set", dest="overrides", nargs="*", action="extend", default=[], metavar="KEY=VALUE",
                   help="override any config field, e.g. kappa_bits=1/8 n_layers=8 precision=32-true; "
                        "repeated --set options add up (the last value of a key wins)")
    p.add_argument("--seed", type=int, default=None, help="shorthand for --set seed=N")
    p.add_argument("--baseline", action="store_true", help="shorthand for --set latent_bits=0")
    p.add_argument("--device", default=None, choices=DEVICES,
                   help="cuda: train on the GPU (shorthand for --set accelerator=gpu; bf16-mixed there, "
                        "deterministic kernels); cpu: --set accelerator=cpu")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the training step (shorthand for --set compile=true; CUDA graphs on a GPU); "
                        "recorded in the run's config")
    p.add_argument("--out", type=Path, default=DEFAULT_RESULTS, help="parent folder of run directories")
    p.add_argument("--name", default=None, help="run directory name (default: deterministic from the config)")
    p.add_argument("--overwrite", action="store_true",
                   help="delete an existing run directory and start over (only the files ftstudy writes, in a run "
                        "folder ftstudy made; refused, untouched, if it holds anything else)")
    p.add_argument("--wait", action="store_true",
                   help="if another process is writing the run directory, wait for it rather than fail")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--snapshot-every", type=int, default=0, metavar="N",
                   help="also keep the model every N steps as ckpt/model-step<N>.pt (calibration curves; 0: none)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--config", type=Path, default=None, metavar="FILE",
                   help="the whole config from a JSON file, instead of --preset/--set/--seed/--baseline: what "
                        "--print-config prints, a run's config.json, or the file ablate --jobs gives each run "
                        "(which also names the --preset/--set arguments recorded as the run's command)")
    return p


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The RunConfig a command line asks for (raises ConfigError)."""
    overrides: dict[str, Any] = parse_set_args(args.overrides)
    if args.seed is not None:
        overrides["seed"] = str(args.seed)
    if args.baseline:
        overrides["latent_bits"] = "0"
    if args.compile:
        overrides["compile"] = "true"
    return get_preset(args.preset or DEFAULT_PRESET, device_overrides(args.device, overrides))


def config_and_command(args: argparse.Namespace, argv: list[str] | None) -> tuple[RunConfig, list[str] | None]:
    """The RunConfig a command line asks for, and the ftstudy.run.train arguments to record as
    the command that reproduces the run (None: this process's own; raises ConfigError).

    With ``--config FILE`` that names its reproducing arguments (``ablate --jobs`` writes
    one per run), those are recorded in place of ``--config FILE``, followed by the other
    options: config.json reads as if the run had been launched with ``--preset … --set …``.
    """
    if args.config is None:
        return config_from_args(args), argv
    if args.preset is not None or args.overrides or args.seed is not None or args.baseline or args.device \
            or args.compile:
        raise ConfigError("--config FILE gives the whole config: drop --preset, --set, --seed, --baseline, --device "
                          "and --compile")
    try:
        saved, train_args = read_config_file(args.config)
        cfg = RunConfig.from_dict(saved)
    except (OSError, ValueError, TypeError) as e:  # a ConfigError is a ValueError
        raise ConfigError(f"--config {args.config}: {e}") from e
    if train_args is None:
        return cfg, argv
    try:
        again = config_from_args(build_parser().parse_args(train_args))
    except SystemExit:
        again = None
    if again != cfg:
        raise ConfigError(f"--config {args.config}: its arguments {shlex.join(train_args)!r} do not reproduce its config")
    options = [("--name", args.name), ("--no-progress", args.no_progress), ("--overwrite", args.overwrite),
               ("--wait", args.wait), ("--snapshot-every", str(args.snapshot_every) if args.snapshot_every else None)]
    return cfg, [*train_args, "--out", str(args.out),
                 *[a for flag, v in options if v for a in ((flag,) if v is True else (flag, v))]]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg, command = config_and_command(args, argv)
        check_task_config(cfg)  # the task's own rules, before any folder is made
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if cfg.preset.startswith("paper-"):
        print(f"error: preset {cfg.preset!r} is shape-only (parameter/FLOP counts, cluster launch docs); "
              f"it has no training data in this release", file=sys.stderr)
        return 2
    if args.print_config:
        print(cfg.to_json())
        return 0
    run_dir = args.out / (args.name or run_name(cfg))
    if args.snapshot_every < 0:
        print(f"error: --snapshot-every = {args.snapshot_every} is not allowed: >= 0 (0: none)", file=sys.stderr)
        return 2
    extra = [Snapshots(RunDir(run_dir), cfg, args.snapshot_every)] if args.snapshot_every else None
    try:
        summary = train(cfg, run_dir, overwrite=args.overwrite, wait=args.wait, argv=command,
                        progress=not args.no_progress, extra_callbacks=extra,
                        launcher=os.environ.get("FTSTUDY_LAUNCHED_BY"))  # set by ablate --jobs
    except (RunError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    if summary:
        g = summary.get("generation", {})
        print(f"[ftstudy.run.train] {run_dir}: step {summary['step']}, val {json.dumps(summary['val'])}, "
              f"valid {g.get('valid_rate', float('nan')):.3f} of {g.get('n', 0)} (prior Z), "
              f"{summary['train_time_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
