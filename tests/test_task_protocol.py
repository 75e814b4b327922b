"""The Task protocol (ftstudy.tasks): registry, the built-in tasks' hooks, a third task in a few
lines trained through train(), and the TensorBoard log every run writes."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ftstudy import tasks
from ftstudy.core.config import ConfigError, get_preset

ROOT = Path(__file__).resolve().parents[1]


def fresh_modules(code: str) -> set[str]:
    """The modules a fresh interpreter has loaded after running ``code``."""
    out = subprocess.run([sys.executable, "-c", f"{code}\nimport sys\nprint(' '.join(sys.modules))"],
                         capture_output=True, text=True, check=True, cwd=ROOT).stdout
    return set(out.split())


def test_registry_finds_builtin_tasks_and_names_the_allowed_ones() -> None:
    assert {"synthetic", "tokens"} <= set(tasks.task_names())
    assert tasks.get_task("synthetic").name == "synthetic"
    assert tasks.get_task("tokens").name == "tokens"
    with pytest.raises(ConfigError, match=r"TaskConfig.name = 'sudoku' is not allowed: one of \[.*'synthetic'.*"
                                          r"'tokens'"):
        tasks.get_task("sudoku")
    with pytest.raises(ConfigError, match="'sudoku' is not allowed"):
        tasks.check_config(get_preset("synthetic-tiny", {"name": "sudoku"}))
    with pytest.raises(ValueError, match="already registered"):
        tasks.register_task(type(tasks.get_task("synthetic"))())
    with pytest.raises(ValueError, match="non-empty str name"):
        tasks.register_task(tasks.BaseTask())


def test_task_rules_live_in_the_tasks_not_the_config() -> None:
    """A config holds any task's fields; what a task requires is checked by the task."""
    short = get_preset("synthetic-tiny", {"max_seq_len": 32})  # builds: config knows no task
    with pytest.raises(ConfigError, match=r"ModelConfig.max_seq_len = 32 .*>= 65 for the synthetic task"):
        tasks.check_config(short)
    with pytest.raises(ConfigError, match=r"probe_group_size = 1 .*>= 2"):
        tasks.check_config(get_preset("synthetic-tiny", {"probe_group_size": 1}))
    no_data = get_preset("tokens-tiny", {"data_dir": "none"})
    with pytest.raises(ConfigError, match=r"TaskConfig.data_dir = None .*shard folder"):
        tasks.check_config(no_data)
    with pytest.raises(ConfigError, match=r"'tokens' only with n_generate"):
        tasks.check_config(get_preset("tokens-tiny", {"n_generate": 4}))
    tasks.check_config(get_preset("tokens-tiny"))
    tasks.check_config(get_preset("paper-8b"))


def test_tokenizers_come_from_the_task(tmp_path: Path) -> None:
    syn = tasks.get_task("synthetic").tokenizer(get_preset("synthetic-tiny"))
    assert syn.encode("A>") == [3, 2] and syn.decode([3, 2]) == "A>" and syn.eot_id is None
    assert syn.vocab_size == 29 and syn.pad_id == 0
    with pytest.raises(ValueError, match="unknown character 'a'"):
        syn.encode("a>")
    tok_task = tasks.get_task("tokens")
    cfg = get_preset("tokens-tiny", {"data_dir": str(tmp_path / "absent")})
    byte = tok_task.tokenizer(cfg, {"tokenizer": {"kind": "byte"}})  # a model.pt carries its own
    assert byte.encode("hé") == [104, 195, 169] and byte.eot_id == 256
    with pytest.raises(ValueError, match="no tokenizer"):
        tok_task.tokenizer(cfg, {})  # a last.ckpt without its training data
    with pytest.raises(ConfigError, match="has no tokenizer"):
        tasks.BaseTask().tokenizer(cfg)


def test_synthetic_checker_and_task_registry_import_no_torch() -> None:
    loaded = fresh_modules("import ftstudy.tasks, ftstudy.tasks.synthetic as S\nS.check(S.sample(1, 0)[0])")
    assert not {"torch", "lightning"} & loaded


def ftstudy_imports(module: str) -> set[str]:
    """Every ftstudy module ``module`` imports, directly or through others (any import
    statement, at the top or in a function; a registry's lazy import by name is not one)."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        path = ROOT.joinpath(*name.split("."))
        path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        if name in seen or not path.is_file():
            continue
        seen.add(name)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                todo += [a.name for a in node.names if a.name.startswith("ftstudy")]
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ftstudy"):
                todo.append(node.module)
                todo += [f"{node.module}.{a.name}" for a in node.names]  # submodules, if any
    return seen - {module}


def test_lit_does_not_import_the_probe() -> None:
    """run/lit.py reaches the synthetic task and its probe only through the task registry."""
    graph = ftstudy_imports("ftstudy.run.lit")
    assert "ftstudy.tasks" in graph and "ftstudy.core.model" in graph
    assert not {m for m in graph if m.startswith("ftstudy.tasks.")}
    assert "ftstudy.tasks.probe" in ftstudy_imports("ftstudy.tasks.synthetic_task")  # the check sees imports


# ---------------------------------------------------------------- a third task


class CountingTask(tasks.BaseTask):
    """Sequences that count up from a random start: the smallest task that trains."""

    name = "toy-counting"

    def datamodule(self, cfg, *, batch_size, steps_per_epoch, start_index):
        import lightning as L
        from torch.utils.data import DataLoader

        def batch(seed: int) -> dict[str, torch.Tensor]:
            start = torch.randint(0, 8, (batch_size, 1), generator=torch.Generator().manual_seed(seed))
            x = (start + torch.arange(17)) % cfg.model.vocab_size
            return {"idx": x[:, :-1], "targets": x[:, 1:], "loss_mask": torch.ones(batch_size, 16, dtype=torch.bool)}

        class Counting(L.LightningDataModule):
            def train_dataloader(self):  # batch i depends on i alone: resumable at start_index
                return DataLoader([batch(start_index + i) for i in range(steps_per_epoch)], batch_size=None)

            def val_dataloader(self):
                return DataLoader([batch(12345)], batch_size=None)

        return Counting()


def read_scalars(tb: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_a_third_task_is_one_class_and_one_registration(tmp_path: Path) -> None:
    """Config, train and lit are untouched: the task registers itself and a config names it."""
    from ftstudy.io import RunDir, read_metrics
    from ftstudy.run.train import train

    tasks.register_task(CountingTask())
    try:
        cfg = get_preset("synthetic-tiny", {"name": "toy-counting", "steps": 2, "val_every": 2, "log_every": 1,
                                            "precision": "32-true"})
        summary = train(cfg, tmp_path / "toy", progress=False)
    finally:
        tasks.unregister_task("toy-counting")
    assert "toy-counting" not in tasks.task_names()
    assert summary["step"] == 2 and summary["val"]["ce_prior"] > 0
    assert summary["probe"] == summary["posterior"] == {} and summary["prior_ce_minus_floor"] is None
    rows = read_metrics(tmp_path / "toy")
    assert [(r["step"], r["split"]) for r in rows] == [(1, "train"), (2, "train"), (2, "val")]
    assert not RunDir(tmp_path / "toy").samples_file.exists()  # the synthetic task's measurement did not run
    # The TensorBoard log has the figures of metrics.csv at the same steps.
    events = list((tmp_path / "toy" / "tb").glob("events.out.tfevents.*"))
    assert len(events) == 1
    assert read_scalars(tmp_path / "toy" / "tb", "train/loss") == [(1, pytest.approx(rows[0]["loss"], rel=1e-5)),
                                                                   (2, pytest.approx(rows[1]["loss"], rel=1e-5))]
    assert read_scalars(tmp_path / "toy" / "tb", "val/ce_prior") == [(2, pytest.approx(rows[2]["ce_prior"],
                                                                                       rel=1e-5))]


def test_tensorboard_is_written_by_rank_zero_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning.pytorch.utilities import rank_zero_only

    from ftstudy.run.train import tensorboard_logger

    monkeypatch.setattr(rank_zero_only, "rank", 1)
    logger = tensorboard_logger(tmp_path, resume_step=0)
    logger.log_hyperparams({"a": 1})
    logger.log_metrics({"train/loss": 1.0}, step=1)
    logger.save()
    logger.finalize("success")
    assert not (tmp_path / "tb").exists()
    monkeypatch.setattr(rank_zero_only, "rank", 0)
    logger.log_metrics({"train/loss": 1.0}, step=1)
    logger.finalize("success")
    assert read_scalars(tmp_path / "tb", "train/loss") == [(1, 1.0)]
