"""The synthetic task as a :class:`ftstudy.tasks.Task`: its Lightning data module, its
validation probe (the shared-Z probe of :mod:`ftstudy.tasks.probe`) and its end-of-run
measurements (samples.txt.gz, groups.txt.gz, valid rate, probe and posterior figures).

The task itself (generator, checker, tokenizer, batches) is :mod:`ftstudy.tasks.synthetic`,
which imports no torch; this module is what a training run adds to it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ftstudy.core.config import RunConfig, field_error
from ftstudy.io import RunDir
from ftstudy.tasks import BaseTask, FinishedRun, Measurements, distributed_rank_world, register_task
from ftstudy.tasks.probe import (GroupDesign, GroupSamples, generate_groups, generate_synthetic, group_metrics,
                                 posterior_metrics, synthetic_prompts, valid_rate, write_groups)
from ftstudy.tasks.synthetic import (_TRAIN_SEED_BIT, NO_LATENT_FLOOR, SEQ_LEN, VAL_SEED_OFFSET, Batch, CharTokenizer,
                                     _is_int, derive_batch_seed, derive_stream_seed, make_batch, sample)

if TYPE_CHECKING:
    from ftstudy.core.model import FreeTransformer

__all__ = ["SyntheticTask", "SyntheticDataModule", "SyntheticTrainStream", "SharedZProbe", "TASK", "PROBE_SEED_OFFSET"]


# --------------------------------------------------------------------------------------------
# Training stream and data module
# --------------------------------------------------------------------------------------------


class SyntheticTrainStream(IterableDataset[Batch]):
    """Endless stream of freshly sampled, already-batched training dicts.

    Step ``k`` of DataLoader worker ``w`` draws one *global* batch, ``sample(batch_size *
    world_size, derive_batch_seed(derive_stream_seed(seed, 0, w), k))``, and DDP rank ``rank``
    takes rows ``[rank * batch_size, (rank + 1) * batch_size)`` of it.  The global batch is
    therefore the same whatever the number of ranks: two processes with ``batch_size = B/2``
    train on exactly the batches one process with ``batch_size = B`` does (tested).  It
    depends only on those numbers: restarting with the same seed and ``num_workers`` replays
    the same batches, and ``start_index`` resumes the stream after the batches a run already
    consumed. ``rank`` and ``world_size`` must be given by the caller because
    ``torch.distributed`` is not initialised inside DataLoader worker processes.

    Each ``iter()`` yields this worker's share of ``steps_per_epoch`` batches (all workers together
    yield exactly ``steps_per_epoch``; ``None`` = forever) and *continues* the stream, so successive
    epochs see new data. That continuation lives in the dataset object, so with ``num_workers > 0``
    the DataLoader must use ``persistent_workers=True`` (as :class:`SyntheticDataModule` does).
    """

    def __init__(
        self,
        batch_size: int,
        seed: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        steps_per_epoch: int | None = None,
        tokenizer: CharTokenizer | None = None,
        start_index: int = 0,
    ) -> None:
        super().__init__()
        if not _is_int(world_size) or int(world_size) < 1 or not _is_int(rank) or not 0 <= int(rank) < int(world_size):
            raise ValueError(f"rank must be in 0..world_size-1 and world_size >= 1, got rank={rank!r}, "
                             f"world_size={world_size!r}")
        if not _is_int(start_index) or int(start_index) < 0:
            raise ValueError(f"start_index must be an integer >= 0, got {start_index!r}")
        if not _is_int(batch_size) or int(batch_size) < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if steps_per_epoch is not None and (
            not _is_int(steps_per_epoch) or int(steps_per_epoch) < 1
        ):
            raise ValueError(
                f"steps_per_epoch must be None or an integer >= 1, got {steps_per_epoch!r}"
            )
        derive_stream_seed(seed, rank, 0)  # validates seed and rank
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.steps_per_epoch = None if steps_per_epoch is None else int(steps_per_epoch)
        self.tokenizer = tokenizer if tokenizer is not None else CharTokenizer()
        # Batches already consumed by the run being resumed: the stream continues where it
        # stopped instead of replaying its first batches.
        self.start_index = int(start_index)
        self._next_index: int | None = None

    def batch_at(self, worker_id: int, index: int) -> Batch:
        """This rank's rows of global batch ``index`` of worker ``worker_id``'s stream."""
        stream_seed = derive_stream_seed(self.seed, 0, worker_id)
        rows = sample(self.batch_size * self.world_size, derive_batch_seed(stream_seed, index))
        lo = self.rank * self.batch_size
        return make_batch(rows[lo : lo + self.batch_size], self.tokenizer)

    def __len__(self) -> int:
        if self.steps_per_epoch is None:
            raise TypeError(
                "SyntheticTrainStream with steps_per_epoch=None is endless and has no length"
            )
        return self.steps_per_epoch

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        worker_id, num_workers = (0, 1) if info is None else (info.id, info.num_workers)
        if self.steps_per_epoch is None:
            quota = None
        else:
            quota = self.steps_per_epoch // num_workers + int(
                worker_id < self.steps_per_epoch % num_workers
            )
        if self._next_index is None:
            # This worker's share of the first start_index batches (DataLoader round-robin).
            self._next_index = self.start_index // num_workers + int(
                worker_id < self.start_index % num_workers
            )
        produced = 0
        while quota is None or produced < quota:
            index = self._next_index
            self._next_index += 1
            yield self.batch_at(worker_id, index)
            produced += 1


class SyntheticDataModule(L.LightningDataModule):
    """Lightning data module for the synthetic task.

    Training: :class:`SyntheticTrainStream` (fresh samples every step, ``steps_per_epoch`` batches
    per epoch, each DDP rank a slice of one global batch, distinct streams per DataLoader
    worker, reproducible from ``seed``).
    Validation: ``val_size`` fixed sequences drawn with ``seed + VAL_SEED_OFFSET``
    (``VAL_SEED_OFFSET = 10_000_019``), which can never equal a training batch seed; exposed as
    ``val_strings`` and served in order in batches of ``batch_size``.
    """

    def __init__(
        self,
        batch_size: int,
        val_size: int = 1024,
        seed: int = 0,
        steps_per_epoch: int | None = 1000,
        num_workers: int = 0,
        start_index: int = 0,
    ) -> None:
        super().__init__()
        if not _is_int(batch_size) or int(batch_size) < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if not _is_int(val_size) or int(val_size) < 0:
            raise ValueError(f"val_size must be an integer >= 0, got {val_size!r}")
        if not _is_int(seed) or not 0 <= int(seed) < _TRAIN_SEED_BIT - VAL_SEED_OFFSET:
            raise ValueError(
                f"seed must be an integer in 0..{_TRAIN_SEED_BIT - VAL_SEED_OFFSET - 1}, "
                f"got {seed!r}"
            )
        if steps_per_epoch is not None and (
            not _is_int(steps_per_epoch) or int(steps_per_epoch) < 1
        ):
            raise ValueError(
                f"steps_per_epoch must be None or an integer >= 1, got {steps_per_epoch!r}"
            )
        if not _is_int(num_workers) or int(num_workers) < 0:
            raise ValueError(f"num_workers must be an integer >= 0, got {num_workers!r}")
        self.save_hyperparameters()
        self.batch_size = int(batch_size)
        self.val_size = int(val_size)
        self.seed = int(seed)
        self.steps_per_epoch = None if steps_per_epoch is None else int(steps_per_epoch)
        self.num_workers = int(num_workers)
        # Resume: skip the batches a run already trained on (exact with num_workers = 0; with
        # workers the same batches come back, possibly in another order).
        self.start_index = int(start_index)
        self.tokenizer = CharTokenizer()
        self.val_seed = self.seed + VAL_SEED_OFFSET
        # Cheap (≈1 ms per 1k sequences), so built eagerly: val_strings is usable before setup().
        self.val_strings: list[str] = sample(self.val_size, self.val_seed)
        self._val_batches: list[Batch] = [
            make_batch(self.val_strings[i : i + self.batch_size], self.tokenizer)
            for i in range(0, self.val_size, self.batch_size)
        ]

    def train_dataset(self, rank: int | None = None, world_size: int | None = None) -> SyntheticTrainStream:
        """A fresh training stream; ``rank`` and ``world_size`` default to ``torch.distributed``'s
        (0 and 1 without a process group)."""
        dist_rank, dist_world = distributed_rank_world()
        return SyntheticTrainStream(
            self.batch_size,
            self.seed,
            rank=dist_rank if rank is None else rank,
            world_size=dist_world if world_size is None else world_size,
            steps_per_epoch=self.steps_per_epoch,
            tokenizer=self.tokenizer,
            start_index=self.start_index,
        )

    def train_dataloader(self) -> DataLoader[Batch]:
        # Rank is read here, in the main process, where the process group is initialised.
        return DataLoader(
            self.train_dataset(),
            batch_size=None,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader[Batch]:
        # Batches are precomputed tensors, so worker processes would only add overhead.
        # A list of batch dicts is a valid map-style dataset.
        return DataLoader(self._val_batches, batch_size=None, shuffle=False)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# The task
# --------------------------------------------------------------------------------------------


#: The shared-Z probe's generations are seeded with the run's seed + this.
PROBE_SEED_OFFSET = 17


class SharedZProbe:
    """How much Z decides, from generations under the prior (see :mod:`ftstudy.tasks.probe`),
    at every validation; keeps its latest generations so the end of a run need not make them
    again."""

    #: Figures logged at every validation (the full set goes to summary.json).
    curve = ("valid_rate", "same_pos_independent", "same_pos_shared", "noise_overlap_independent",
             "noise_overlap_shared", "mi_position_bits", "mi_collision_bits")

    def __init__(self, design: GroupDesign, seed: int, sampling: Mapping[str, Any] | None = None) -> None:
        self.design, self.seed = design, seed
        self.sampling = dict(sampling or {})  # temperature, top_k, top_p (TaskConfig.sampling)
        self.last: GroupSamples | None = None  # generations of the latest call

    def generate(self, model: FreeTransformer) -> GroupSamples:
        self.last = generate_groups(model, self.design, seed=self.seed, **self.sampling)
        return self.last

    def __call__(self, model: FreeTransformer) -> dict[str, float]:
        return group_metrics(self.generate(model))


class SyntheticTask(BaseTask):
    """The paper's letter-block task (§4.1)."""

    name = "synthetic"

    def check_config(self, cfg: RunConfig) -> None:
        if cfg.model.max_seq_len < SEQ_LEN - 1:
            raise field_error("ModelConfig", "max_seq_len", cfg.model.max_seq_len,
                              f">= {SEQ_LEN - 1} for the synthetic task ({SEQ_LEN} chars)")
        t = cfg.task
        if t.probe_groups > 0 and t.probe_group_size < 2:
            raise field_error("TaskConfig", "probe_group_size", t.probe_group_size, ">= 2 (pairs within a group)")

    def datamodule(self, cfg: RunConfig, *, batch_size: int, steps_per_epoch: int,
                   start_index: int) -> SyntheticDataModule:
        return SyntheticDataModule(batch_size=batch_size, val_size=cfg.task.val_size, seed=cfg.train.seed,
                                   steps_per_epoch=steps_per_epoch, num_workers=cfg.train.num_workers,
                                   start_index=start_index)

    def tokenizer(self, cfg: RunConfig, checkpoint: Mapping[str, Any] | None = None) -> CharTokenizer:
        return CharTokenizer()

    def validation_probe(self, cfg: RunConfig) -> SharedZProbe | None:
        t = cfg.task
        design = GroupDesign(t.probe_independent, t.probe_groups, t.probe_group_size)
        return SharedZProbe(design, seed=cfg.train.seed + PROBE_SEED_OFFSET, sampling=t.sampling) if design.total > 0 else None

    def measure(self, run: FinishedRun) -> Measurements:
        cfg, model = run.cfg, run.model
        out = Measurements()

        def autocast() -> torch.autocast:
            return torch.autocast(model.tok_emb.weight.device.type, dtype=torch.bfloat16,
                                  enabled=run.precision == "bf16-mixed")

        t0 = time.perf_counter()
        if cfg.task.n_generate > 0:
            prompts = synthetic_prompts(cfg.task.n_generate, seed=cfg.train.seed + 1)
            with autocast():
                samples = generate_synthetic(model, prompts, seed=cfg.train.seed + 2, z_prompt="prior",
                                             **cfg.task.sampling)
            out.generation = valid_rate(samples)
            RunDir(run.run_dir).write_samples(samples)
        out.generation_time_s = time.perf_counter() - t0
        probe = run.probe if isinstance(run.probe, SharedZProbe) else self.validation_probe(cfg)
        if probe is not None:
            with autocast():
                # The final validation (at the last step, same seed and weights) already made
                # these generations: reuse them rather than generating 1,024 sequences again.
                groups = probe.last if probe.last is not None else probe.generate(model)
                out.probe = group_metrics(groups)
                write_groups(groups, RunDir(run.run_dir).groups_file)
                val_batches = list(run.datamodule.val_dataloader())
                out.posterior = posterior_metrics(model.eval(), val_batches, seed=cfg.train.seed + 23)
        if "ce_prior" in run.val:
            out.prior_ce_minus_floor = run.val["ce_prior"] - NO_LATENT_FLOOR
        return out


TASK = register_task(SyntheticTask())
