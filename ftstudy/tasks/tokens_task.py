"""Token shards as a :class:`ftstudy.tasks.Task`: training and validation windows from a
folder that ``python -m ftstudy.data prepare`` made (:mod:`ftstudy.tasks.corpus`), the
folder's tokenizer, no validation probe, and a model.pt that carries its tokenizer.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ftstudy.core.config import RunConfig, field_error
from ftstudy.tasks import BaseTask, FinishedRun, Measurements, register_task
from ftstudy.tasks.corpus import (ByteTokenizer, DataError, FileTokenizer, TokenDataModule, load_tokenizer,
                                  tokenizer_from_spec, tokenizer_spec)

__all__ = ["TokensTask", "TASK"]


class TokensTask(BaseTask):
    """Language modelling on prepared token shards (``task.data_dir``)."""

    name = "tokens"

    def check_config(self, cfg: RunConfig) -> None:
        t = cfg.task
        if not t.data_dir:
            raise field_error("TaskConfig", "data_dir", t.data_dir,
                              "a shard folder for task 'tokens' (python -m ftstudy.data prepare ... --out DIR)")
        if t.n_generate or t.probe_independent or t.probe_groups:
            raise field_error("TaskConfig", "name", t.name, "'tokens' only with n_generate = probe_independent = "
                              "probe_groups = 0 (synthetic-task figures)")

    def datamodule(self, cfg: RunConfig, *, batch_size: int, steps_per_epoch: int,
                   start_index: int) -> TokenDataModule:
        assert cfg.task.data_dir is not None
        return TokenDataModule(cfg.task.data_dir, batch_size=batch_size, seq_len=cfg.model.max_seq_len,
                               val_size=cfg.task.val_size, seed=cfg.train.seed, steps_per_epoch=steps_per_epoch,
                               start_index=start_index, vocab_size=cfg.model.vocab_size)

    def tokenizer(self, cfg: RunConfig,
                  checkpoint: Mapping[str, Any] | None = None) -> ByteTokenizer | FileTokenizer:
        """The checkpoint's own tokenizer (model.pt carries it), else its training data's (a
        Lightning last.ckpt carries none); DataError when neither is there."""
        spec = (checkpoint or {}).get("tokenizer")
        if spec is not None:
            return tokenizer_from_spec(spec)
        if cfg.task.data_dir and Path(cfg.task.data_dir).is_dir():
            return load_tokenizer(cfg.task.data_dir)
        raise DataError(f"no tokenizer: the checkpoint carries none and its training data "
                        f"{cfg.task.data_dir!r} is not here")

    def measure(self, run: FinishedRun) -> Measurements:
        # The checkpoint carries its tokenizer, so evaluation needs nothing but the file.
        assert isinstance(run.datamodule, TokenDataModule)
        return Measurements(checkpoint_extra={"tokenizer": tokenizer_spec(run.datamodule.folder)})


TASK = register_task(TokensTask())
