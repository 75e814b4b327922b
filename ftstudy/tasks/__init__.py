"""What a model is trained and probed on: the paper's synthetic task with its validation
probe, and token corpora (code-math, user text) with their shards and tokenizers.

Owns: ``synthetic`` (generator and checker of the task, torch-free), ``synthetic_task`` (its
data module and :class:`Task`), ``probe`` (the shared-Z generation probe and its metrics),
``corpus`` (corpora, tokenizers, shard format), ``tokens_task`` (the :class:`Task` of token
shards), ``mathgen`` (generated arithmetic and word problems).
May import: :mod:`ftstudy.io`, :mod:`ftstudy.core`, Lightning (data modules).

A task is everything a run needs beyond the model and the optimiser. :class:`Task` says what
one provides, through five hooks:

- ``check_config(cfg)``: ConfigError for settings the task cannot run with (the synthetic
  task needs ``max_seq_len >= 65``; token shards need ``data_dir``). Called when a run
  starts; :mod:`ftstudy.core.config` knows nothing of any task.
- ``datamodule(cfg, batch_size=, steps_per_epoch=, start_index=)``: a Lightning data module
  whose batches are dicts ``idx``, ``targets``, ``loss_mask`` (``batch_size`` rows: this
  rank's share) and whose training stream starts at batch ``start_index`` (a resumed run
  sees exactly the batches an uninterrupted one would).
- ``tokenizer(cfg, checkpoint=None)``: text to ids and back (:class:`TextTokenizer`) for a
  model of this task, as the lm-eval wrapper and evaluation use it; ``checkpoint`` is the
  loaded checkpoint dict, which may carry its own tokenizer.
- ``validation_probe(cfg)``: extra validation figures computed from the model
  (:class:`ValidationProbe`), or None. The synthetic task's is the shared-Z probe.
- ``measure(run)``: what a run measures after training (:class:`FinishedRun` in,
  :class:`Measurements` out): the synthetic task writes samples.txt and groups.txt and
  reports valid rates, probe and posterior figures; token shards store their tokenizer.

:class:`BaseTask` gives every hook but ``datamodule`` a default, so a new task is one module
with a ``BaseTask`` subclass and one line, ``register_task(MyTask())``; import that module
before naming the task in a config (``task.name``). :func:`get_task` finds a task by name
(the built-in ones are imported on first use, so this package stays torch-free).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import lightning as L

    from ftstudy.core.config import RunConfig
    from ftstudy.core.model import FreeTransformer

__all__ = ["Task", "BaseTask", "TextTokenizer", "ValidationProbe", "FinishedRun", "Measurements", "get_task",
           "register_task", "unregister_task", "task_names", "check_config", "distributed_rank_world"]

# Built-in tasks, imported (and so registered) the first time they are asked for.
_BUILTIN: dict[str, str] = {"synthetic": "ftstudy.tasks.synthetic_task", "tokens": "ftstudy.tasks.tokens_task"}
_REGISTRY: dict[str, Task] = {}


class TextTokenizer(Protocol):
    """Text to token ids and back, as a task's models read and write it."""

    vocab_size: int
    eot_id: int | None  # end-of-text token; None when the task has none
    pad_id: int

    def encode(self, text: str) -> list[int]:
        """Ids of ``text``; ValueError for text the tokenizer cannot represent."""
        ...

    def decode(self, ids: Iterable[int]) -> str: ...


class ValidationProbe(Protocol):
    """Extra validation figures computed from the model itself (e.g. from its generations)."""

    #: The figures logged at every validation (metrics.csv, TensorBoard), as ``val/<name>``.
    curve: tuple[str, ...]

    def __call__(self, model: FreeTransformer) -> dict[str, float]:
        """Every figure of the probe (a superset of ``curve``); the same on every rank."""
        ...


@dataclass
class FinishedRun:
    """What a task's end-of-run measurement sees (on rank 0, after the last validation)."""

    cfg: RunConfig
    model: FreeTransformer
    datamodule: L.LightningDataModule
    run_dir: Path  # where the task may write its own files (samples.txt, groups.txt, ...)
    precision: str  # the resolved Lightning precision the run trained with
    val: dict[str, float]  # the final validation figures, without their ``val/`` prefix
    probe: ValidationProbe | None  # the probe validation ran (it may keep its last generations)


@dataclass
class Measurements:
    """The task-dependent entries of summary.json, and what model.pt carries besides weights."""

    generation: dict[str, Any] = field(default_factory=dict)  # summary "generation": e.g. valid rate
    generation_time_s: float = 0.0  # time spent generating (summary "generation.time_s")
    probe: dict[str, Any] = field(default_factory=dict)  # summary "probe"
    posterior: dict[str, Any] = field(default_factory=dict)  # summary "posterior"
    prior_ce_minus_floor: float | None = None  # summary: prior CE above the task's best possible CE
    checkpoint_extra: dict[str, Any] = field(default_factory=dict)  # model.pt entries (e.g. "tokenizer")


class Task(Protocol):
    """What a task provides to a run; see the module docstring for each hook."""

    name: str

    def check_config(self, cfg: RunConfig) -> None: ...

    def datamodule(self, cfg: RunConfig, *, batch_size: int, steps_per_epoch: int,
                   start_index: int) -> L.LightningDataModule: ...

    def tokenizer(self, cfg: RunConfig, checkpoint: Mapping[str, Any] | None = None) -> TextTokenizer: ...

    def validation_probe(self, cfg: RunConfig) -> ValidationProbe | None: ...

    def measure(self, run: FinishedRun) -> Measurements: ...


class BaseTask:
    """A :class:`Task` with defaults: any config, no tokenizer, no probe, nothing measured.
    A subclass sets ``name`` and defines ``datamodule``."""

    name: str = ""

    def check_config(self, cfg: RunConfig) -> None:
        return None

    def datamodule(self, cfg: RunConfig, *, batch_size: int, steps_per_epoch: int,
                   start_index: int) -> L.LightningDataModule:
        raise NotImplementedError(f"task {self.name!r} defines no data module")

    def tokenizer(self, cfg: RunConfig, checkpoint: Mapping[str, Any] | None = None) -> TextTokenizer:
        from ftstudy.core.config import ConfigError

        raise ConfigError(f"task {self.name!r} has no tokenizer: its models cannot read text")

    def validation_probe(self, cfg: RunConfig) -> ValidationProbe | None:
        return None

    def measure(self, run: FinishedRun) -> Measurements:
        return Measurements()


def register_task(task: Task, *, replace: bool = False) -> Task:
    """Make ``task`` available as ``get_task(task.name)``; returns it. A name already taken is
    refused unless ``replace``."""
    name = getattr(task, "name", None)
    if not isinstance(name, str) or not name:
        raise ValueError(f"a task needs a non-empty str name, got {name!r}")
    if not replace and name in _REGISTRY and _REGISTRY[name] is not task:
        raise ValueError(f"task {name!r} is already registered ({_REGISTRY[name]!r}); pass replace=True")
    _REGISTRY[name] = task
    return task


def unregister_task(name: str) -> None:
    """Forget a registered task (a built-in one comes back on its next use)."""
    _REGISTRY.pop(name, None)


def task_names() -> list[str]:
    """Every task a config may name: the built-in ones and those registered."""
    return sorted(set(_BUILTIN) | set(_REGISTRY))


def get_task(name: str) -> Task:
    """The task called ``name``; ConfigError naming the allowed tasks for any other name."""
    if name not in _REGISTRY and name in _BUILTIN:
        importlib.import_module(_BUILTIN[name])  # registers itself
    if name not in _REGISTRY:
        from ftstudy.core.config import ConfigError

        raise ConfigError(f"TaskConfig.name = {name!r} is not allowed: one of {task_names()} "
                          f"(a new task registers itself with ftstudy.tasks.register_task)")
    return _REGISTRY[name]


def check_config(cfg: RunConfig) -> None:
    """ConfigError unless ``cfg`` names a known task that accepts the rest of ``cfg``."""
    get_task(cfg.task.name).check_config(cfg)


def distributed_rank_world() -> tuple[int, int]:
    """(rank, world size) of the ``torch.distributed`` process group; (0, 1) without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return int(dist.get_rank()), int(dist.get_world_size())
    return 0, 1
