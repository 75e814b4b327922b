"""Posterior-Z diagnostics and the aggregate-marginal penalty (a labelled DEVIATION).

Separates "the encoder does not carry the block position" (groups sharing the encoder's Z of
a held-out sequence do not recover its position) from "the uniform prior hands the decoder
codes it never saw" (they do, but prior-Z groups do not agree); the remedy pulls each bit's
aggregate posterior marginal towards 1/2.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from ftstudy.core.config import LATENT_ONLY_FIELDS, ConfigError, ModelConfig, get_preset
from ftstudy.core.latent import kl_per_bit, marginal_penalty
from ftstudy.core.model import FreeTransformer
from ftstudy.tasks import synthetic
from ftstudy.tasks.probe import (GroupSamples, generate_posterior_groups, generate_synthetic, posterior_metrics,
                                 recovery_metrics)

TINY = get_preset("synthetic-tiny").model  # 2 layers, D 32, H 4


def _model(cfg: ModelConfig = TINY, seed: int = 0) -> FreeTransformer:
    torch.manual_seed(seed)
    return FreeTransformer(cfg).eval()


# ---------------------------------------------------------------- the penalty


def _naive_penalty(logits: torch.Tensor, mask: torch.Tensor | None) -> float:
    """sum_h KL(Bern(p_bar_h) || Bern(1/2)) in nats, with explicit loops."""
    lead = logits.shape[:-1]
    flat = logits.reshape(-1, logits.shape[-1]).tolist()
    keep = [True] * len(flat) if mask is None else mask.reshape(-1).tolist()
    total = 0.0
    for h in range(logits.shape[-1]):
        ps = [1 / (1 + math.exp(-row[h])) for row, k in zip(flat, keep) if k]
        p = sum(ps) / len(ps)
        for x in (p, 1 - p):
            total += x * math.log(2 * x) if x > 0 else 0.0
    assert len(flat) == math.prod(lead)
    return total


def test_marginal_penalty_against_a_naive_loop() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 4, generator=g, dtype=torch.float64) * 2 + 0.7  # biased bits
    mask = torch.rand(3, 5, generator=g) < 0.6
    assert marginal_penalty(logits).item() == pytest.approx(_naive_penalty(logits, None), rel=1e-10)
    assert marginal_penalty(logits, mask).item() == pytest.approx(_naive_penalty(logits, mask), rel=1e-10)
    # fp32 input: fp32 result, same number to fp32 precision.
    got = marginal_penalty(logits.float(), mask)
    assert got.dtype == torch.float32 and got.item() == pytest.approx(_naive_penalty(logits, mask), rel=1e-5)


def test_marginal_penalty_zero_at_fair_coins_and_finite_when_saturated() -> None:
    assert marginal_penalty(torch.zeros(2, 7, 4)).item() == 0.0
    # Bits biased one way at some tokens and the other way at others can average to 1/2: no
    # penalty although every token's KL is large (what per-token KL would charge).
    opposite = torch.tensor([[[30.0, -30.0]], [[-30.0, 30.0]]])
    assert marginal_penalty(opposite).item() == pytest.approx(0.0, abs=1e-12)
    assert kl_per_bit(opposite).sum().item() > 2
    for value in (1e4, -1e4, 200.0, -200.0, 40.0):
        x = torch.full((2, 3, 4), value, requires_grad=True)
        pen = marginal_penalty(x)
        assert math.isfinite(pen.item()) and pen.item() > 0
        assert pen.item() == pytest.approx(4 * math.log(2), rel=1e-6)  # 4 bits, each always the same
        pen.backward()
        assert torch.isfinite(x.grad).all()
    x = torch.tensor([[0.5, -3.0]], requires_grad=True)
    marginal_penalty(x).backward()
    assert (x.grad[0, 0] > 0) and (x.grad[0, 1] < 0)  # pushes each marginal back towards 1/2


def test_marginal_penalty_ignores_masked_positions() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 6, 3, generator=g)
    mask = torch.zeros(4, 6, dtype=torch.bool)
    mask[:, 2:] = True
    changed = logits.clone()
    changed[:, :2] = 50.0  # only masked-out positions change
    a, b = marginal_penalty(logits, mask), marginal_penalty(changed, mask)
    assert a.item() == b.item()
    assert a.item() == pytest.approx(marginal_penalty(logits[:, 2:]).item(), rel=1e-6)
    assert marginal_penalty(logits, torch.zeros(4, 6, dtype=torch.bool)).item() == 0.0  # nothing kept
    with pytest.raises(ValueError, match="mask shape"):
        marginal_penalty(logits, mask[:, :3])


# ---------------------------------------------------------------- the loss


def _batch(n: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    return synthetic.make_batch(synthetic.sample(n, seed), synthetic.CharTokenizer())


def _loss(model: FreeTransformer, batch: dict[str, torch.Tensor]):
    gen = torch.Generator().manual_seed(5)
    return model(batch["idx"], batch["targets"], batch["loss_mask"], z="posterior-leaky", generator=gen)


def test_loss_unchanged_at_weight_zero_and_shifted_by_weight_times_penalty() -> None:
    batch = _batch()
    ref = _model(TINY)
    assert TINY.marginal_weight == 0.0
    zero = _model(dataclasses.replace(TINY, marginal_weight=0.0))
    a, b = _loss(ref, batch), _loss(zero, batch)
    assert torch.equal(a.loss, b.loss) and torch.equal(a.kl_loss, b.kl_loss)
    assert a.marginal_kl is None and b.marginal_kl is None
    w = 0.75
    weighted = _model(dataclasses.replace(TINY, marginal_weight=w))
    weighted.load_state_dict(ref.state_dict())
    c = _loss(weighted, batch)
    assert c.marginal_kl is not None and c.marginal_kl.item() > 0
    assert torch.equal(c.ce, a.ce) and torch.equal(c.kl_loss, a.kl_loss)  # same Z draws, same terms
    assert c.marginal_kl.item() == pytest.approx(
        marginal_penalty(c.enc_logits, batch["loss_mask"]).item(), rel=1e-6)
    assert (c.loss - a.loss).item() == pytest.approx(w * c.marginal_kl.item(), rel=1e-5, abs=1e-7)
    # The penalty has a gradient into the encoder.
    c.marginal_kl.backward()
    assert weighted.enc_head.weight.grad is not None and weighted.enc_head.weight.grad.abs().sum() > 0
    # Not a training forward (no KL): no penalty.
    prior = weighted(batch["idx"], batch["targets"], batch["loss_mask"], z="prior",
                     generator=torch.Generator().manual_seed(0))
    assert prior.marginal_kl is None


def test_config_refuses_a_bad_marginal_weight() -> None:
    for bad in (-0.5, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="marginal_weight"):
            ModelConfig(latent_bits=4, marginal_weight=bad)
    assert "marginal_weight" in LATENT_ONLY_FIELDS
    assert ModelConfig(marginal_weight=2).marginal_weight == 2


# ---------------------------------------------------------------- posterior-Z groups


def test_generate_posterior_groups_shapes_prompts_and_determinism() -> None:
    model = _model()
    info = synthetic.sample_with_info(3, 11)
    samples, pos = generate_posterior_groups(model, info.strings, 4, seed=3)
    assert isinstance(samples, GroupSamples) and len(samples.strings) == 12
    assert all(len(s) == synthetic.SEQ_LEN for s in samples.strings)
    assert samples.group.tolist() == [0] * 4 + [1] * 4 + [2] * 4 and samples.shared.all()
    assert [s[:2] for s in samples.strings] == [s[:2] for s in info.strings for _ in range(4)]
    assert samples.letter == [s[0] for s in info.strings for _ in range(4)]
    assert pos.tolist() == info.positions.tolist()
    again, _ = generate_posterior_groups(model, info.strings, 4, seed=3)
    assert again.strings == samples.strings
    other, _ = generate_posterior_groups(model, info.strings, 4, seed=4)
    assert other.strings != samples.strings
    assert not model.training


def test_posterior_groups_use_the_encoders_draw_of_each_source() -> None:
    model = _model(seed=1)
    with torch.no_grad():
        model.enc_head.weight.normal_(0, 3)  # an informative, non-degenerate posterior
    sources = synthetic.sample(2, 5)
    samples, _ = generate_posterior_groups(model, sources, 3, seed=9, temperature=0.0)
    # The same draw, made by hand: the encoder's Z of each source (seeded), then greedy decoding.
    idx = synthetic.make_batch(sources, synthetic.CharTokenizer())["idx"]
    bits = model(idx, z="posterior-leaky", generator=torch.Generator().manual_seed(9)).bits
    assert bits is not None and bits.shape == (2, synthetic.SEQ_LEN - 1, TINY.latent_bits)
    expected = generate_synthetic(model, [s[:2] for s in sources], seed=0, bits=bits, temperature=0.0)
    assert samples.strings == [e for e in expected for _ in range(3)]


def test_posterior_groups_refuse_a_baseline_and_bad_sources() -> None:
    base = _model(dataclasses.replace(TINY, latent_bits=0))
    with pytest.raises(ValueError, match="Free model"):
        generate_posterior_groups(base, synthetic.sample(2, 0), 3, seed=0)
    with pytest.raises(ValueError, match="sources\\[1\\]"):
        generate_posterior_groups(_model(), [synthetic.sample(1, 0)[0], "A>" + "_" * 64], 3, seed=0)


# ---------------------------------------------------------------- recovery


def _at(pos: int, letter: str = "K") -> str:
    body = "_" * pos + letter * synthetic.BLOCK_LEN
    return f"{letter}>" + body + "_" * (synthetic.BODY_LEN - len(body))


def _samples(groups: list[list[str]]) -> GroupSamples:
    strings = [s for g in groups for s in g]
    group = np.array([i for i, g in enumerate(groups) for _ in g])
    return GroupSamples(strings, group, np.ones(len(strings), dtype=bool), [s[0] for s in strings])


def test_recovery_all_none_and_within() -> None:
    src = np.array([10, 30])
    m = recovery_metrics(_samples([[_at(10)] * 5, [_at(30)] * 3]), src)
    assert m["recovery_exact"] == m["recovery_within1"] == m["recovery_within2"] == 1.0 and m["valid_rate"] == 1.0
    m = recovery_metrics(_samples([[_at(40)] * 5, [_at(20)] * 3]), src)
    assert m["recovery_exact"] == m["recovery_within2"] == 0.0
    m = recovery_metrics(_samples([[_at(10), _at(11), _at(12), _at(13)], [_at(29), _at(30), _at(33), _at(27)]]), src)
    assert m["recovery_exact"] == pytest.approx((0.25 + 0.25) / 2)
    assert m["recovery_within1"] == pytest.approx((0.5 + 0.5) / 2)
    assert m["recovery_within2"] == pytest.approx((0.75 + 0.5) / 2)
    # Invalid members count in valid_rate only; a group with none valid is not scored.
    bad = "K>" + "!" * 64
    m = recovery_metrics(_samples([[_at(10), bad], [bad, bad]]), src)
    assert m["valid_rate"] == 0.25 and m["recovery_exact"] == 1.0 and m["recovery_groups"] == 1


def test_recovery_chance_from_the_pooled_positions() -> None:
    # Pooled valid positions: 10 twice, 40 once, 41 once -> q = (1/2, 1/4, 1/4).
    m = recovery_metrics(_samples([[_at(10), _at(10)], [_at(40), _at(41)]]), np.array([10, 40]))
    assert m["recovery_exact"] == pytest.approx((1 + 0.5) / 2)
    assert m["recovery_chance_exact"] == pytest.approx((0.5 + 0.25) / 2)  # q(10), q(40)
    assert m["recovery_chance_within2"] == pytest.approx((0.5 + 0.5) / 2)  # q(8..12), q(38..42)
    assert m["recovery_within2"] == 1.0


# ---------------------------------------------------------------- posterior_metrics


def test_posterior_metrics_reports_the_bit_marginals() -> None:
    model = _model()
    with torch.no_grad():
        model.enc_head.weight.normal_(0, 2)
    m = posterior_metrics(model, [_batch(8)], seed=0)
    p = np.array(m["bit_marginals"])
    assert p.shape == (TINY.latent_bits,) and ((p > 0) & (p < 1)).all()
    agg = float((1 + p * np.log2(p) + (1 - p) * np.log2(1 - p)).sum())
    assert agg == pytest.approx(m["aggregate_marginal_kl_bits"], rel=1e-6)
    assert m["max_bit_bias"] == pytest.approx(float(np.abs(p - 0.5).max()), rel=1e-6)
