"""ftstudy.perf.suite: the analytical FLOP counts against torch's counter, the target logic on
hand-made rows, and the suite end to end at a tiny shape (figures, not timing asserts)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from ftstudy.perf import suite as perf
from ftstudy.core.config import ModelConfig
from ftstudy.core.model import FreeTransformer


def test_train_flops_match_torch_counter_for_the_linear_layers() -> None:
    cfg = ModelConfig(vocab_size=64, n_layers=3, dim=64, n_heads=4, max_seq_len=32, latent_bits=0)
    b, t = 2, 32
    model = FreeTransformer(cfg)
    idx = torch.randint(0, 64, (b, t + 1))
    with FlopCounterMode(display=False) as counter:
        model(idx[:, :-1], idx[:, 1:]).loss.backward()
    counts = counter.get_flop_counts()["Global"]
    mm = sum(v for k, v in counts.items() if "mm" in str(k) and "attention" not in str(k))
    full = perf.train_flops(cfg, b, t)
    # The analytical count without attention: 3 x 2 x (weights of every linear) per token.
    d = cfg.dim
    block = 2 * d * d + 2 * d * cfg.kv_heads * cfg.head_dim + 3 * d * cfg.hidden
    linear = 3 * b * t * (cfg.n_layers * 2 * block + 2 * d * cfg.vocab_size)
    assert mm == pytest.approx(linear, rel=1e-6)
    assert full > linear  # the full count adds causal attention on top
    # Free: the encoder block, the readout and the mapper's one gradient product, nothing else.
    free = dataclasses.replace(cfg, latent_bits=6)
    extra = perf.train_flops(free, b, t) - perf.train_flops(cfg, b, t)
    assert extra == b * t * (3 * (2 * block + 4 * d * t + 2 * d * 6) + 2 * d * 64)


def _row(impl: str, shape: str, step_s: float, peak: float = 1.0, flops: float = 1.0, dtype: str = "float32"):
    return {"bench": "train", "impl": impl, "shape": shape, "dtype": dtype, "step_s": step_s,
            "tokens_per_s": 1.0 / step_s, "peak_gib": peak, "flops_per_step": flops, "mfu": 0.5}


def test_targets_met_missed_and_by_how_much() -> None:
    rows = [_row("ftstudy-base", "small", 1.0), _row("xt-decoder", "small", 2.0),  # 2x faster: met
            _row("ftstudy-base", "wide", 1.0), _row("xt-decoder", "wide", 0.8),  # 0.8x: missed
            _row("ftstudy-free", "small", 1.5, peak=0.5, flops=2.0), _row("xt-free", "small", 6.0, peak=4.0),
            {"bench": "generate", "impl": "ftstudy-free", "speedup": 7.0}]
    t = {x["target"].split(" (")[0]: x for x in perf.evaluate_targets(rows)}
    assert t["baseline tokens/s vs x-transformers decoder, small, float32"]["met"] is True
    wide = t["baseline tokens/s vs x-transformers decoder, wide, float32"]
    assert wide["met"] is False and wide["margin"] == pytest.approx(0.8)
    speed = t["Free step speed vs x-transformers FreeTransformer, H=16, small, float32"]
    assert speed["measured"] == pytest.approx(4.0) and speed["met"] is False and speed["margin"] == pytest.approx(0.5)
    mem = t["Free peak memory vs x-transformers FreeTransformer, H=16, small, float32"]
    assert mem["measured"] == pytest.approx(0.125) and mem["met"] is False
    ratio = next(v for k, v in t.items() if k.startswith("Free/baseline step time over their FLOP ratio"))
    assert ratio["measured"] == pytest.approx(0.75) and ratio["met"] is True
    assert t["KV-cache generation vs full recompute, 256 new tokens"]["met"] is True
    bf16 = next(v for k, v in t.items() if k.startswith("baseline MFU at the wide shape"))
    assert bf16["met"] is None and "no bf16 row" in bf16["note"]


def test_suite_runs_end_to_end_at_a_tiny_shape(tmp_path: Path, capsys) -> None:
    out = tmp_path / "perf.json"
    assert perf.main(["suite", "--tiny", "--repeats", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    impls = {(r["bench"], r["impl"]) for r in result["rows"]}
    assert {("train", "ftstudy-base"), ("train", "ftstudy-free"), ("train", "xt-decoder"), ("train", "xt-free"),
            ("generate", "ftstudy-free"), ("loglikelihood", "ftstudy-base")} <= impls
    assert any(r["bench"] == "mapper" for r in result["rows"])
    assert result["targets"] and (tmp_path / "perf.md").read_text().startswith("# Performance on")
    printed = capsys.readouterr().out
    assert "## Targets" in printed and "matmul peak float32" in printed


def test_scale_presets_on_the_meta_device(capsys) -> None:
    rows = [perf.scale_report(n) for n in ("paper-1.5b", "paper-8b")]
    for r in rows:
        # The encoder block is one block in L: about 1/L of the compute, as the paper counts it.
        assert 0.5 / r["n_layers"] < r["overhead_flops_encoder_block"] < 1.5 / r["n_layers"]
        assert r["overhead_flops"] > r["overhead_flops_encoder_block"]
        assert r["activation_checkpointing"] and r["strategy"] == "fsdp"
    assert perf.main(["scale"]) == 0
    table = capsys.readouterr().out
    print(table)  # parameter and FLOP counts, visible with pytest -s
    assert "paper-1.5b" in table and "paper-8b" in table


def test_bad_input(capsys) -> None:
    assert perf.main(["suite", "--repeats", "0"]) == 2
    if not torch.cuda.is_available():
        assert perf.main(["suite", "--device", "cuda"]) == 2
    assert perf.main(["scale", "--presets", "paper-80b"]) == 2
    err = capsys.readouterr().err
    assert "--repeats must be >= 1" in err and "paper-80b" in err
