"""The one generate() and the forward's Z policies: left padding against one prompt at a time,
the sliding window, sampling options (temperature, top-k, top-p), per-row generators, the
context-only encoder against the leaky one, and the draws importance sampling uses."""

from __future__ import annotations

import pytest
import torch

from ftstudy.core.config import ModelConfig
from ftstudy.core.latent import bit_log_probs, kl_to_uniform
from ftstudy.core.model import FreeTransformer, generate, sample_tokens

V = 29


def _model(latent_bits: int = 4, max_seq_len: int = 24, n_layers: int = 3) -> FreeTransformer:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=V, n_layers=n_layers, dim=32, n_heads=4, latent_bits=latent_bits,
                      max_seq_len=max_seq_len)
    m = FreeTransformer(cfg).double().eval()
    if m.cfg.is_free:
        with torch.no_grad():
            m.enc_head.weight.mul_(10)  # a posterior far from the prior
    return m


def _gens(seed: int, n: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed + j) for j in range(n)]


@pytest.mark.parametrize("latent_bits,z_prompt", [(4, "posterior-context"), (4, "prior"), (0, "prior")])
def test_left_padding_matches_one_prompt_at_a_time(latent_bits: int, z_prompt: str) -> None:
    m = _model(latent_bits)
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10], [11], [12, 13, 14, 15]]
    p, n = max(map(len, prompts)), 8
    tokens = torch.zeros(len(prompts), p, dtype=torch.long)
    mask = torch.zeros(len(prompts), p, dtype=torch.bool)
    for j, q in enumerate(prompts):
        tokens[j, p - len(q):], mask[j, p - len(q):] = torch.tensor(q), True
    for temperature in (0.0, 1.0):
        opts = dict(z_prompt=z_prompt, temperature=temperature, return_logits=True)
        batch = generate(m, tokens, n, prompt_mask=mask, generator=_gens(0, 4), z_generator=_gens(100, 4), **opts)
        assert batch.tokens.shape == (4, p + n) and batch.mask is not None and torch.equal(batch.mask[:, :p], mask)
        for j, q in enumerate(prompts):
            one = generate(m, torch.tensor([q]), n, generator=_gens(0, 4)[j:j + 1],
                           z_generator=_gens(100, 4)[j:j + 1], **opts)
            assert torch.equal(batch.tokens[j, p:], one.tokens[0, len(q):])
            assert torch.allclose(batch.logits[j], one.logits[0], atol=1e-6)
            if latent_bits:
                assert torch.equal(batch.bits[j, p - len(q):], one.bits[0])
                assert not batch.bits[j, :p - len(q)].any()  # padding gets no Z
    with pytest.raises(ValueError, match="left padding"):
        generate(m, tokens, 2, prompt_mask=mask.flip(1))


def test_the_window_slides_and_is_re_prefilled() -> None:
    win = 12
    m = _model(4, max_seq_len=win)
    prompt = torch.randint(0, V, (2, 5), generator=torch.Generator().manual_seed(1))
    n = 20
    g = generate(m, prompt, n, temperature=0.0, z_prompt="prior", generator=torch.Generator().manual_seed(0),
                 return_logits=True)
    assert g.tokens.shape == (2, 5 + n) and g.bits is not None
    # Reference: recompute the window at every step; when it would hold max_seq_len tokens, the
    # oldest are dropped down to half a window (positions restart at 0 in each window).
    first, slides = 0, 0
    for i in range(n):
        end = 5 + i
        ref = m(g.tokens[:, first:end], z=g.bits[:, first:end]).logits[:, -1]
        assert torch.allclose(g.logits[:, i], ref.float(), atol=1e-6)
        assert torch.equal(g.tokens[:, end], ref.argmax(-1))
        if end + 1 - first >= win and i + 1 < n:
            first, slides = end + 1 - win // 2, slides + 1
    assert slides >= 2
    again = generate(m, prompt, n, temperature=0.0, bits=g.bits, use_cache=False)
    assert torch.equal(again.tokens, g.tokens)
    long = torch.randint(0, V, (2, 30), generator=torch.Generator().manual_seed(2))
    cut = generate(m, long, 3, temperature=0.0, z_prompt="prior")
    assert torch.equal(cut.tokens[:, :win - 1], long[:, -(win - 1):])  # a long prompt keeps its last tokens


def test_sampling_options() -> None:
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().expand(400, 4)

    def seen(**kw) -> set[int]:
        return set(sample_tokens(logits, generator=torch.Generator().manual_seed(0), **kw).tolist())

    assert seen() == {0, 1, 2, 3} and seen(temperature=0.0) == {0}
    assert seen(top_k=2) == {0, 1} and seen(top_k=1) == {0}
    assert seen(top_p=0.4) == {0} and seen(top_p=0.6) == {0, 1} and seen(top_p=0.9) == {0, 1, 2}
    assert seen(top_k=3, top_p=0.6) == {0, 1} and seen(top_p=1.0) == seen()
    per_row = sample_tokens(logits, top_p=0.6, generator=_gens(0, 400))
    assert set(per_row.tolist()) == {0, 1}
    # One generator per row: a row's token does not depend on the rest of the batch.
    assert torch.equal(sample_tokens(logits[:3], top_p=0.6, generator=_gens(0, 3)), per_row[:3])
    for kw, what in [(dict(temperature=-1.0), "temperature"), (dict(temperature=float("nan")), "temperature"),
                     (dict(top_k=0), "top_k"), (dict(top_k=2.5), "top_k"), (dict(top_p=0.0), "top_p"),
                     (dict(top_p=1.5), "top_p")]:
        with pytest.raises(ValueError, match=what):
            sample_tokens(logits, **kw)
        with pytest.raises(ValueError, match=what):
            generate(_model(0), torch.zeros(1, 2, dtype=torch.long), 2, **kw)


def test_posterior_context_sees_only_the_context_and_the_leaky_one_sees_everything() -> None:
    m = _model(4)
    idx = torch.randint(0, V, (2, 10), generator=torch.Generator().manual_seed(3))
    changed = idx.clone()
    changed[:, 6:] = (changed[:, 6:] + 7) % V
    context = (torch.arange(10) < 5).expand(2, 10)
    a = m(idx, z="posterior-context", context=context, generator=_gens(0, 2))
    b = m(changed, z="posterior-context", context=context, generator=_gens(0, 2))
    assert torch.allclose(a.enc_logits[:, :5], b.enc_logits[:, :5], atol=1e-12)
    assert torch.equal(a.bits, b.bits)  # Z never depends on tokens outside the context
    # Outside the context Z is prior: fair coins whatever the encoder says.
    assert torch.equal(a.bits[:, 5:], m(idx, z="prior", generator=_gens(0, 2)).bits[:, 5:])
    la, lb = m(idx, z="posterior-leaky"), m(changed, z="posterior-leaky")
    assert not torch.allclose(la.enc_logits[:, :5], lb.enc_logits[:, :5])  # the leak
    with pytest.raises(ValueError, match="context is for"):
        m(idx, z="prior", context=context)


def test_draws_share_the_encoder_and_give_log_q_and_kl() -> None:
    m = _model(4)
    idx = torch.randint(0, V, (3, 9), generator=torch.Generator().manual_seed(4))
    g = torch.Generator().manual_seed(1)
    outs = list(m.draws(idx, z="posterior-leaky", generators=[g] * 3))
    ref_g = torch.Generator().manual_seed(1)
    for out in outs:
        ref = m(idx, z="posterior-leaky", generator=ref_g)  # draw by draw from the same stream
        assert torch.equal(out.bits, ref.bits) and torch.allclose(out.logits, ref.logits, atol=1e-12)
        p = torch.sigmoid(out.enc_logits)
        assert torch.allclose(out.log_q, torch.where(out.bits, p.log(), (1 - p).log()))
        assert torch.equal(out.log_q, bit_log_probs(out.enc_logits, out.bits))
        assert torch.allclose(out.kl, kl_to_uniform(out.enc_logits))
    assert not torch.equal(outs[0].bits, outs[1].bits)


@pytest.mark.parametrize("latent_bits", [0, 4])
@pytest.mark.parametrize("padded", [False, True])
def test_static_decode_steps_give_the_default_paths_tokens(latent_bits: int, padded: bool) -> None:
    """static=True (a tensor position, attention over the whole cache, masked) against the
    default cache path: the same logits to float64 rounding and the same tokens, through
    left padding and a window that fills and slides (24 positions, 30 new tokens)."""
    model = _model(latent_bits=latent_bits, max_seq_len=24)
    prompt = torch.randint(1, V, (3, 6))
    mask = None
    if padded:
        mask = torch.ones(3, 6, dtype=torch.bool)
        mask[0, :2] = False
        mask[2, :4] = False

    def run(static: bool) -> object:
        with torch.no_grad():
            return generate(model, prompt, 30, prompt_mask=mask, temperature=0.9, generator=_gens(5, 3),
                            return_logits=True, static=static)

    default, static = run(False), run(True)
    assert torch.equal(static.tokens, default.tokens)
    assert torch.allclose(static.logits, default.logits, rtol=0, atol=1e-9)
    if latent_bits:
        assert torch.equal(static.bits, default.bits)


def test_static_step_checks_its_cache_and_mask() -> None:
    model = _model(latent_bits=0)
    pos = torch.tensor(3)
    with pytest.raises(ValueError, match="give its KV cache"):
        model(torch.zeros(1, 1, dtype=torch.long), start=pos)
    cache = model.new_cache(1, 24, static=True)
    with pytest.raises(ValueError, match=r"shape \(1, 24\).*the whole cache for a static step"):
        model(torch.zeros(1, 1, dtype=torch.long), start=pos, cache=cache, valid=torch.ones(1, 4, dtype=torch.bool))


@pytest.mark.xdist_group("inductor")
def test_compiled_static_generation_agrees_with_eager() -> None:
    """generate(static=True) through ``torch.compile(model)`` (static shapes: the decode step
    compiles once; on a GPU the device check uses mode reduce-overhead, a CUDA graph): every
    step's logits within 1e-6 of eager, hence the same tokens and Z."""
    model = _model(latent_bits=4, max_seq_len=24, n_layers=2).float().eval()  # 2 blocks: the injection is between them
    compiled = torch.compile(model, dynamic=False)
    prompt = torch.randint(0, 20, (3, 5))

    def run(m: torch.nn.Module, static: bool) -> object:
        with torch.no_grad():
            return generate(m, prompt, 10, z_prompt="posterior-context", temperature=0.8,  # type: ignore[arg-type]
                            generator=torch.Generator().manual_seed(3), return_logits=True, static=static)

    eager, comp = run(model, False), run(compiled, True)
    assert torch.allclose(comp.logits, eager.logits, rtol=1e-6, atol=1e-6)
    assert torch.equal(comp.tokens, eager.tokens) and torch.equal(comp.bits, eager.bits)
