"""Checkpoints: an exported model file that embeds its config and loads with weights_only=True.

Two kinds of file live in a run's git-ignored ``ckpt/`` folder:

- ``last.ckpt``: Lightning's resumable training state (weights, optimizer, loop
  counters), rewritten atomically every ``ckpt_every`` steps.  Its hyper-parameters are a
  plain dict, so it too loads with ``weights_only=True``.
- ``model.pt``: the exported model, ``{"format": "ftstudy-model", "format_version",
  "config", "state_dict", "step", "versions"}``, written at the end of a run.

``load_model`` reads either, never unpickling arbitrary objects, and turns a missing,
truncated or foreign file into a ``CheckpointError`` that says which; ``load_resumable``
checks, before Lightning restores a run from ``last.ckpt``, that the file holds the training
state a resume reads (a hand-edited or foreign file would otherwise fail deep in Lightning).
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from ftstudy.core.config import ConfigError, RunConfig
from ftstudy.io import atomic_write_text, read_metrics  # noqa: F401  (re-exported)
from ftstudy.core.model import FreeTransformer

__all__ = ["CheckpointError", "FORMAT", "save_model", "load_model", "load_checkpoint_dict", "load_resumable",
           "atomic_write_text", "read_metrics"]

FORMAT = "ftstudy-model"
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, truncated, or not one of ours."""


def save_model(path: Path, model: FreeTransformer, config: RunConfig, step: int,
               extra: dict[str, Any] | None = None) -> None:
    """Export weights + config atomically (tmp file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "step": int(step),
        "versions": {"torch": str(torch.__version__)},  # TorchVersion is not weights_only-safe
        **(extra or {}),
    }
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        # Through a file object: a full disk is then an OSError with its errno (ENOSPC), where
        # torch.save(payload, name) gives a RuntimeError from its C++ writer that names no cause.
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a partial file only takes space (a full disk's, often)
        raise


def _reason(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    detail = next((ln for ln in lines if "Unsupported global" in ln or "WeightsUnpickler" in ln), None)
    return detail or (lines[0] if lines else "")


def load_checkpoint_dict(path: Path | str) -> dict[str, Any]:
    """torch.load with weights_only=True, with clear errors for missing/truncated/foreign files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError, ValueError, OSError) as e:
        raise CheckpointError(
            f"checkpoint {path} could not be read as a torch file with weights_only=True "
            f"(truncated, corrupted, or containing arbitrary Python objects): {type(e).__name__}: "
            f"{_reason(e)}") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, not an ftstudy checkpoint dict")
    return obj


#: What Lightning reads from a checkpoint when it resumes a run (and the type of each).
_RESUME_KEYS: dict[str, type] = {
    "pytorch-lightning_version": str, "global_step": int, "epoch": int, "state_dict": dict,
    "optimizer_states": list, "lr_schedulers": list, "loops": dict, "hyper_parameters": dict,
}


def load_resumable(path: Path | str) -> dict[str, Any]:
    """The dict of a Lightning ``last.ckpt`` that a run can resume from (weights_only=True), or a
    one-line CheckpointError naming the missing or wrong entry: Lightning itself would stop with
    a KeyError or a TypeError deep in its restore code."""
    obj = load_checkpoint_dict(path)
    missing = [k for k in _RESUME_KEYS if k not in obj]
    if missing:
        raise CheckpointError(f"checkpoint {path} is not a resumable training state: it lacks {missing} "
                              f"(a Lightning checkpoint of ftstudy.run.lit has {sorted(_RESUME_KEYS)})")
    for key, type_ in _RESUME_KEYS.items():
        value = obj[key]
        if not isinstance(value, type_) or isinstance(value, bool):
            raise CheckpointError(f"checkpoint {path}: {key} = {_short(value)} is not allowed: "
                                  f"a value of type {type_.__name__}")
    for key in ("global_step", "epoch"):
        if obj[key] < 0:
            raise CheckpointError(f"checkpoint {path}: {key} = {obj[key]} is not allowed: an integer >= 0")
    if "config" not in obj["hyper_parameters"]:
        raise CheckpointError(f"checkpoint {path} is not a checkpoint of ftstudy.run.lit (no hyper_parameters "
                              f"config)")
    return obj


def _short(value: Any) -> str:
    """A value for a one-line message: its repr when short and on one line, else its type."""
    text = repr(value)
    return text if len(text) <= 60 and "\n" not in text else f"a {type(value).__name__}"


def load_model(path: Path | str, map_location: str | torch.device = "cpu") -> tuple[FreeTransformer, RunConfig, dict[str, Any]]:
    """Model, its RunConfig and the raw dict, from ``model.pt`` or a Lightning ``last.ckpt``."""
    obj = load_checkpoint_dict(path)
    if obj.get("format") == FORMAT:
        if obj.get("format_version") != FORMAT_VERSION:
            raise CheckpointError(f"checkpoint {path} has format_version {obj.get('format_version')!r}; "
                                  f"this ftstudy reads {FORMAT_VERSION}")
        cfg_dict, state = obj.get("config"), obj.get("state_dict")
    elif isinstance(obj.get("hyper_parameters"), dict) and "config" in obj["hyper_parameters"]:
        cfg_dict = obj["hyper_parameters"]["config"]
        state = {k.removeprefix("model."): v for k, v in obj.get("state_dict", {}).items() if k.startswith("model.")}
    else:
        raise CheckpointError(f"checkpoint {path} is not an ftstudy checkpoint (keys: {sorted(obj)[:8]}); "
                              f"expected 'format': {FORMAT!r} or a Lightning checkpoint of ftstudy.run.lit")
    try:
        cfg = RunConfig.from_dict(cfg_dict)
    except (ConfigError, TypeError) as e:
        raise CheckpointError(f"checkpoint {path} embeds an invalid config: {e}") from e
    model = FreeTransformer(cfg.model)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path}: weights do not match its own config: {e}") from e
    return model.to(map_location), cfg, obj
