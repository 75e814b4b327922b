"""Re-measure a finished synthetic run under sampling protocols (``ablate --measure``).

Committed runs keep no checkpoints (``ckpt/`` is git-ignored).  Training is deterministic,
so a finished run whose ``ckpt/model.pt`` is gone is trained again from its own config
into ``<run>/ckpt/retrain/``; the retrained run must reproduce the committed summary's
validation figures, its probe and its valid rate (it is refused otherwise, and nothing is
measured), and its model.pt becomes the run's.  A run with its model.pt is measured at once.

Each protocol (:mod:`ftstudy.study.protocols`) gives ``<run>/measure/<protocol>.json`` and
two generation files (:class:`ftstudy.io.RunDir`):

- the run's probe made again under the protocol: the same prompts, the same Z draws and
  the same seed as the run's own probe (so ``t1`` reproduces groups.txt.gz), with the
  agreement figures of :mod:`ftstudy.tasks.agreement`;
- groups sharing the encoder's Z of one held-out sequence (posterior Z) instead of a
  prior draw: how often they agree, and how often they put the block where the source
  sequence had it (:func:`ftstudy.tasks.probe.recovery_metrics`).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ftstudy.core.checkpoint import load_model
from ftstudy.core.config import RunConfig
from ftstudy.core.model import FreeTransformer
from ftstudy.io import RunDir, RunError, atomic_write_text, read_gzip
from ftstudy.run.train import finite_or_none, saved_config, train
from ftstudy.study.protocols import Protocol
from ftstudy.tasks import agreement, synthetic
from ftstudy.tasks.probe import (CODE_CHECK_MAX_BITS, GroupDesign, code_posterior_metrics, generate_groups,
                                 generate_posterior_groups, group_metrics, posterior_metrics, recovery_metrics)
from ftstudy.tasks.synthetic_task import PROBE_SEED_OFFSET

__all__ = ["load_or_retrain", "ensure_model", "measure_run", "measure_codes", "reproduces", "POSTERIOR_SOURCES"]

#: Held-out sequences whose encoder Z the posterior groups share (each group: probe_group_size members).
POSTERIOR_SOURCES = 32
_POSTERIOR_SEED_OFFSET = 29
_ENCODER_SEED_OFFSET = 23  # the seed of the run's own posterior figures (ftstudy.tasks.synthetic_task)


def reproduces(retrained: dict[str, Any], committed: dict[str, Any], rel: float = 1e-6) -> list[str]:
    """The figures where a retrained run's summary differs from the committed one ([] = same):
    every number under ``val``, ``probe`` and ``generation`` but timings."""
    diffs = []
    for section in ("val", "probe", "generation"):
        a, b = retrained.get(section) or {}, committed.get(section) or {}
        for key in sorted(set(a) | set(b)):
            if key.endswith("time_s"):
                continue
            x, y = a.get(key), b.get(key)
            if isinstance(x, (int, float)) and isinstance(y, (int, float)):
                if not (math.isclose(x, y, rel_tol=rel, abs_tol=1e-9) or (math.isnan(x) and math.isnan(y))):
                    diffs.append(f"{section}.{key}: {y} committed, {x} retrained")
            elif x != y:
                diffs.append(f"{section}.{key}: {y!r} committed, {x!r} retrained")
    return diffs


def load_or_retrain(run_dir: Path, *, wait: bool = False) -> tuple[FreeTransformer, RunConfig, str]:
    """A finished run's model: its ckpt/model.pt, or the run trained again (see the module
    docstring).  Returns (model in eval mode, config, "checkpoint" or "retrained")."""
    how = ensure_model(run_dir, wait=wait)
    model, cfg, _ = load_model(RunDir(Path(run_dir)).model_file)
    return model.eval(), cfg, how


def ensure_model(run_dir: Path, *, wait: bool = False, rel: float = 1e-6) -> str:
    """Make sure a finished run has its ckpt/model.pt: "checkpoint" when it has, "retrained"
    when it was trained again from its own config and reproduced the committed summary (every
    figure within relative tolerance ``rel``: see :func:`reproduces`); RunError otherwise
    (the retrained model is left in ckpt/retrain/, and the run gets no model.pt)."""
    folder = RunDir(Path(run_dir))
    committed = folder.summary()
    if committed is None:
        raise RunError(f"{folder.path} is not a finished run (no {folder.SUMMARY})")
    how = "checkpoint"
    if not folder.model_file.exists():
        cfg = RunConfig.from_dict(saved_config(folder.path))
        recorded = folder.record().get("precision_resolved")
        if cfg.train.precision == "auto" and isinstance(recorded, str):
            # "auto" resolves by the machine (bf16-mixed where the CPU has native bf16): train
            # again in the precision the run was trained in.
            cfg = replace(cfg, train=replace(cfg.train, precision=recorded))
        scratch = RunDir(folder.retrain_dir)
        print(f"[measure] {folder.name}: no {folder.CKPT}/{folder.MODEL}; training it again into {scratch.path}",
              flush=True)
        # A retrain killed before its first checkpoint holds no training state: start it again
        # (the folder is ours, inside the run's git-ignored ckpt/); one with a checkpoint resumes.
        restart = scratch.status() == "started"
        # Train with the thread count the run recorded: on a CPU the order of some reductions
        # depends on it, and a retrain with another count drifts from the committed run.
        threads = (folder.record().get("machine") or {}).get("torch_threads")
        before = torch.get_num_threads()
        if isinstance(threads, int) and threads >= 1 and cfg.train.accelerator == "cpu":
            torch.set_num_threads(threads)
        try:
            retrained = train(cfg, scratch.path, overwrite=restart, wait=wait, progress=False,
                              argv=[*(folder.record().get("argv") or [])], launcher="ftstudy.study.measure (retrain)")
        finally:
            torch.set_num_threads(before)
        diffs = reproduces(retrained, committed, rel=rel)
        if diffs:
            raise RunError(f"{folder.name}: the retrained run does not reproduce the committed summary "
                           f"({len(diffs)} figures differ beyond a relative {rel:g}, e.g. {diffs[0]}); its model "
                           f"is left in {scratch.path} and nothing is measured")
        scratch.model_file.replace(folder.model_file)
        # Made above by train(): a run folder of ours, emptied of the names ftstudy writes
        # (RunError, and nothing deleted, if anything else turned up in it).
        scratch.delete(wait=wait)
        scratch.path.rmdir()
        how = "retrained"
    return how


def _val_batches(cfg: RunConfig) -> list[dict[str, torch.Tensor]]:
    """The run's held-out sequences (its validation set), in its batch size."""
    val = synthetic.sample(cfg.task.val_size, cfg.train.seed + synthetic.VAL_SEED_OFFSET)
    tok = synthetic.CharTokenizer()
    return [synthetic.make_batch(val[i:i + cfg.train.batch_size], tok) for i in range(0, len(val), cfg.train.batch_size)]


def measure_codes(run_dir: Path, *, overwrite: bool = False, wait: bool = False) -> bool:
    """The aggregate posterior over whole codes on the run's held-out sequences
    (:func:`ftstudy.tasks.probe.code_posterior_metrics`), written to ``measure/codes.encoder.json``;
    False (nothing done) for a baseline, H > 12, or a run that has it already."""
    folder = RunDir(Path(run_dir))
    model_cfg = folder.config()["model"]
    if int(model_cfg.get("latent_bits", 0)) == 0 or int(model_cfg["latent_bits"]) > CODE_CHECK_MAX_BITS:
        return False
    if folder.codes_file.exists() and not overwrite:
        return False
    model, cfg, how = load_or_retrain(folder.path, wait=wait)
    if cfg.train.accelerator in ("gpu", "cuda") and torch.cuda.is_available():
        model = model.cuda()
    figures = {"model": how, **code_posterior_metrics(model, _val_batches(cfg))}
    folder.measure_dir.mkdir(exist_ok=True)
    atomic_write_text(folder.codes_file, json.dumps(finite_or_none(figures), indent=2, sort_keys=True) + "\n")
    print(f"[measure] {folder.name} codes: entropy {figures['code_entropy_mean_bits']:.3f} of "
          f"{figures['latent_bits']} bits (min {figures['code_entropy_min_bits']:.3f}), prior mass on rare codes "
          f"{figures['prior_mass_on_rare_codes_mean']:.3f}", flush=True)
    return True


def _table(samples) -> agreement.GroupTable:
    return agreement.GroupTable.from_strings(samples.strings, samples.group, samples.shared)


def _copy_from_twin(folder: RunDir, todo: list[Protocol]) -> bool:
    """A run that ablate copied from an identical run of another study (COPIED_FROM) has that
    run's model, so its measurements are that run's: copied when the twin has every protocol
    of ``todo`` measured (the same files; the JSON says where they came from)."""
    name = folder.copied_from()
    twin = RunDir(folder.path.parent.parent / name) if name else None
    if twin is None or any(twin.measurement(p.name) is None for p in todo):
        return False
    folder.measure_dir.mkdir(exist_ok=True)
    for p in todo:
        for kind in ("groups", "posterior"):
            if twin.measure_file(p.name, kind).exists():
                agreement.write_groups(agreement.read_groups(twin.measure_file(p.name, kind)),
                                       folder.measure_file(p.name, kind))
        folder.write_measurement(p.name, {**twin.measurement(p.name), "model": f"copied from {name}"})
        print(f"[measure] {folder.name} {p.name}: copied from its twin {name}", flush=True)
    return True


@torch.no_grad()
def measure_run(run_dir: Path, protocols: list[Protocol], *, overwrite: bool = False,
                wait: bool = False) -> list[str]:
    """Measure a finished run under each protocol not yet measured (all with ``overwrite``);
    returns the protocols measured."""
    folder = RunDir(Path(run_dir))
    todo = [p for p in protocols if overwrite or folder.measurement(p.name) is None]
    if not todo:
        return []
    if _copy_from_twin(folder, todo):
        return [p.name for p in todo]
    model, cfg, how = load_or_retrain(folder.path, wait=wait)
    if cfg.train.accelerator in ("gpu", "cuda") and torch.cuda.is_available():
        model = model.cuda()  # a GPU run is measured where it trained (its generators are CUDA's)
    t = cfg.task
    design = GroupDesign(t.probe_independent, t.probe_groups, t.probe_group_size)
    val_seed = cfg.train.seed + synthetic.VAL_SEED_OFFSET
    sources = synthetic.sample(POSTERIOR_SOURCES, val_seed)  # the run's first held-out sequences
    own = read_gzip(folder.groups_file) if folder.groups_file.exists() else None  # the run's own groups file, as text
    encoder = None
    if cfg.model.is_free:  # the aggregate posterior on the run's validation set (as the run's summary)
        encoder = posterior_metrics(model, _val_batches(cfg), seed=cfg.train.seed + _ENCODER_SEED_OFFSET)
    done = []
    for p in todo:
        t0 = time.perf_counter()
        samples = generate_groups(model, design, seed=cfg.train.seed + PROBE_SEED_OFFSET, **p.sampling)
        table = _table(samples)
        text = agreement.format_groups(table)
        figures: dict[str, Any] = {
            "protocol": p.name, "sampling": p.sampling, "protocol_source": p.source,
            "model": how, "probe_seed": cfg.train.seed + PROBE_SEED_OFFSET,
            "probe": group_metrics(samples), "agreement": agreement.agreement_summary([table]),
            # t1 makes the run's own probe again: the same generations, or the model is not the run's.
            "same_as_run_groups": (text == own) if own is not None and p.sampling == t.sampling else None,
        }
        folder.measure_dir.mkdir(exist_ok=True)
        agreement.write_groups(table, folder.measure_file(p.name, "groups"))
        if cfg.model.is_free:
            post, src_pos = generate_posterior_groups(model, sources, t.probe_group_size,
                                                      seed=cfg.train.seed + _POSTERIOR_SEED_OFFSET, **p.sampling)
            post_table = _table(post)
            figures["posterior"] = {"sources": len(sources), "source_seed": val_seed,
                                    **recovery_metrics(post, src_pos),
                                    "agreement": agreement.agreement_summary([post_table])}
            agreement.write_groups(post_table, folder.measure_file(p.name, "posterior"))
            # Not a generation: the same for every protocol (KL per bit, codes, per-bit marginals).
            figures["encoder"] = encoder
        figures["time_s"] = round(time.perf_counter() - t0, 2)
        folder.write_measurement(p.name, finite_or_none(figures))
        a = figures["agreement"]
        print(f"[measure] {folder.name} {p.name} (τ {p.temperature:g}): exact {a['exact_independent']:.3f} -> "
              f"{a['exact_shared']:.3f}, ±2 {a['within2_independent']:.3f} -> {a['within2_shared']:.3f}"
              + (f"; posterior Z: exact {figures['posterior']['agreement']['exact_shared']:.3f}, recovered "
                 f"{figures['posterior']['recovery_exact']:.3f}" if "posterior" in figures else ""), flush=True)
        done.append(p.name)
    return done

