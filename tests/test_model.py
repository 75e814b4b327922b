"""The model against the paper's definition: equivalence, injection, causality, KV cache."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from conftest import DEVICES
from ftstudy.core.config import ModelConfig, get_preset
from ftstudy.core.model import FreeTransformer, generate

VOCAB = 29


def tiny(**kw) -> ModelConfig:
    base = dict(vocab_size=VOCAB, n_layers=4, dim=32, n_heads=4, latent_bits=4, max_seq_len=48)
    base.update(kw)
    return ModelConfig(**base)


def _model(cfg: ModelConfig, seed: int = 0, dtype: torch.dtype = torch.float64) -> FreeTransformer:
    torch.manual_seed(seed)
    return FreeTransformer(cfg).to(dtype).eval()


def _idx(b: int = 3, t: int = 20, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (b, t), generator=torch.Generator().manual_seed(seed))


VARIANTS = {
    "free": {},
    "free-gqa-tied": dict(n_kv_heads=2, tie_embeddings=True),
    "free-factored": dict(post_sampler="factored"),
    "free-inject1": dict(inject_layer=1),
    "free-inject3": dict(inject_layer=3),
    "free-no-enc-rope": dict(encoder_positions="none"),
    "baseline": dict(latent_bits=0),
    "baseline-gqa": dict(latent_bits=0, n_kv_heads=1),
}


def test_shared_parameter_names_identical() -> None:
    free, base = FreeTransformer(tiny()), FreeTransformer(tiny(latent_bits=0))
    fnames, bnames = set(dict(free.named_parameters())), set(dict(base.named_parameters()))
    assert bnames <= fnames
    extra = fnames - bnames
    assert all(n.startswith(("zeta", "encoder.", "enc_norm.", "enc_head.", "post_sampler.")) for n in extra)
    assert free.post_sampler.weight.shape == (32, 2 ** 4)  # the literal Linear(2^H -> D) by default


@pytest.mark.parametrize("extra", [{}, dict(n_kv_heads=2, tie_embeddings=True), dict(inject_layer=1)])
def test_zero_post_sampler_is_baseline_bit_for_bit(extra: dict) -> None:
    base = FreeTransformer(tiny(latent_bits=0, **extra)).eval()
    free = FreeTransformer(tiny(**extra)).eval()
    missing = free.load_state_dict(base.state_dict(), strict=False).missing_keys
    assert set(missing) == {n for n in dict(free.named_parameters()) if n not in dict(base.named_parameters())}
    with torch.no_grad():
        free.post_sampler.weight.zero_()
    idx = _idx()
    ref = base(idx).logits
    for z in ("posterior-leaky", "posterior-context", "prior"):
        assert torch.equal(free(idx, z=z).logits, ref), z
    # ... and a non-zero post-sampler does change them (the test can fail).
    with torch.no_grad():
        free.post_sampler.weight.normal_()
    assert not torch.equal(free(idx, z="prior").logits, ref)


def test_r_enters_only_keys_values_of_the_injection_block() -> None:
    """Blocks before the injection never see Z; the injection block's queries and
    residual come from X alone, so the output at position t depends on Z only through
    keys/values at positions <= t."""
    cfg = tiny(inject_layer=2)
    m = _model(cfg)
    idx = _idx(2, 12)
    seen: dict[str, torch.Tensor] = {}
    inj = m.blocks[2]
    orig = inj.forward

    def spy(x, kv=None, **kw):
        seen["x"], seen["kv"] = x.clone(), kv.clone()
        return orig(x, kv, **kw)

    inj.forward = spy  # type: ignore[method-assign]
    bits = torch.zeros(2, 12, 4, dtype=torch.bool)
    m(idx, z=bits)
    x0, kv0 = seen["x"], seen["kv"]
    m(idx, z=~bits)
    assert torch.equal(seen["x"], x0)  # residual stream before injection untouched by Z
    assert not torch.allclose(seen["kv"], kv0)
    r = m.post_sampler.weight.T[torch.zeros(2, 12, dtype=torch.long)]
    assert torch.allclose(kv0, x0 + r)  # keys/values from X + R


def test_encoder_gets_gradient_from_reconstruction_only() -> None:
    """The "broken gradient" trap: CE alone must reach the encoder through the mapper."""
    m = _model(tiny(kappa_bits=1e6), dtype=torch.float32)  # free bits so large the KL term is 0
    m.train()
    idx = _idx()
    out = m(idx, idx, z="posterior-leaky")
    assert out.kl_loss is not None and out.kl_loss.item() == 0.0
    out.ce.backward()
    for name in ("enc_head.weight", "zeta", "encoder.attn.wq.weight", "post_sampler.weight"):
        g = dict(m.named_parameters())[name].grad
        assert g is not None and g.abs().sum() > 0, name


def test_prior_never_runs_encoder(monkeypatch: pytest.MonkeyPatch) -> None:
    m = _model(tiny())

    def boom(*a, **k):
        raise AssertionError("encoder ran under prior Z")

    monkeypatch.setattr(m, "_encode", boom)
    m(_idx(), z="prior")
    generate(m, _idx(2, 3), 5, z_prompt="prior", generator=torch.Generator().manual_seed(0))


def test_loss_is_ce_plus_per_token_free_bits() -> None:
    m = _model(tiny(kappa_bits=0.05), dtype=torch.float64)
    with torch.no_grad():
        m.enc_head.weight.mul_(200)  # push encoder logits so KL varies across tokens around κ
    idx = _idx()
    mask = torch.rand(idx.shape, generator=torch.Generator().manual_seed(2)) < 0.7
    out = m(idx, idx, mask, z="posterior-leaky", generator=torch.Generator().manual_seed(3))
    ce = torch.nn.functional.cross_entropy(out.logits.flatten(0, 1), idx.flatten(), reduction="none")
    ce = (ce * mask.flatten()).sum() / mask.sum()
    kappa = 0.05 * torch.log(torch.tensor(2.0, dtype=torch.float64))
    fb = (out.kl - kappa).clamp_min(0).mean()
    assert out.kl.std() > 0 and 0 < fb.item()
    assert torch.allclose(out.ce, ce) and torch.allclose(out.loss, ce + fb)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_causality(variant: str) -> None:
    """Changing tokens after t never changes logits at positions <= t (Free: under fixed prior Z)."""
    cfg = tiny(**VARIANTS[variant])
    m = _model(cfg)
    idx = _idx(2, 16)
    z = torch.rand(2, 16, cfg.latent_bits) < 0.5 if cfg.is_free else "posterior-leaky"
    ref = m(idx, z=z).logits
    for t in (0, 7, 14):
        changed = idx.clone()
        changed[:, t + 1:] = (changed[:, t + 1:] + 5) % VOCAB
        out = m(changed, z=z).logits
        assert torch.equal(out[:, :t + 1], ref[:, :t + 1])
        assert not torch.allclose(out[:, t + 1:], ref[:, t + 1:])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_cached_generation_matches_full_recompute(variant: str, device: str) -> None:
    cfg = tiny(**VARIANTS[variant])
    m = _model(cfg, dtype=torch.float32).to(device)
    prompt = _idx(3, 5).to(device)
    g = generate(m, prompt, 20, generator=torch.Generator(device=device).manual_seed(0), return_logits=True)
    assert g.tokens.shape == (3, 25) and torch.equal(g.tokens[:, :5], prompt)
    z = g.bits if cfg.is_free else "posterior-leaky"
    full = m(g.tokens[:, :-1], z=z).logits[:, 4:]  # logits that produced tokens 5 … 24
    rel = ((g.logits - full).abs().max() / full.abs().max()).item()
    assert rel <= 1e-5
    # The uncached path with the same Z and the same sampling stream gives the same tokens.
    g2 = generate(m, prompt, 20, bits=g.bits, use_cache=False, return_logits=True,
                  temperature=0.0) if cfg.is_free else generate(m, prompt, 20, use_cache=False, temperature=0.0,
                                                                return_logits=True)
    g3 = generate(m, prompt, 20, bits=g.bits, temperature=0.0, return_logits=True) if cfg.is_free else \
        generate(m, prompt, 20, temperature=0.0, return_logits=True)
    assert torch.equal(g2.tokens, g3.tokens)
    assert torch.allclose(g2.logits, g3.logits, rtol=1e-5, atol=1e-5)


def test_generation_z_policies() -> None:
    cfg = tiny()
    m = _model(cfg, dtype=torch.float32)
    prompt = _idx(4, 6)
    g = generate(m, prompt, 10, generator=torch.Generator().manual_seed(0))
    assert g.bits is not None and g.bits.shape == (4, 15, 4)
    # Shared Z + greedy decoding: identical prompts and Z give identical sequences.
    shared = torch.rand(1, 15, 4, generator=torch.Generator().manual_seed(5)) < 0.5
    same = generate(m, prompt[:1].expand(4, 6), 10, bits=shared.expand(4, 15, 4), temperature=0.0)
    assert (same.tokens == same.tokens[:1]).all()
    # Prompt Z from the encoder on the prompt only: appending tokens does not change it.
    enc_short = m(prompt, z="posterior-context").enc_logits
    assert enc_short is not None and enc_short.shape == (4, 6, 4)
    longer = torch.cat([prompt, _idx(4, 3, seed=9)], 1)
    context = torch.arange(9)[None].expand(4, 9) < 6
    assert torch.allclose(m(longer, z="posterior-context", context=context).enc_logits[:, :6], enc_short, atol=1e-6)
    with pytest.raises(ValueError, match="bits must be bool of shape"):
        generate(m, prompt, 10, bits=torch.zeros(4, 3, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="z_prompt"):
        generate(m, prompt, 10, z_prompt="sideways")  # type: ignore[arg-type]
    # Past the window: generation goes on from the last half window (tests/test_generate.py).
    assert generate(m, prompt, 100, temperature=0.0).tokens.shape == (4, 106)
    with pytest.raises(ValueError, match="no latent"):
        generate(_model(tiny(latent_bits=0)), prompt, 3, bits=torch.zeros(4, 8, 4, dtype=torch.bool))


def test_top_k_one_is_greedy() -> None:
    m = _model(tiny(latent_bits=0), dtype=torch.float32)
    prompt = _idx(2, 4)
    a = generate(m, prompt, 8, top_k=1, generator=torch.Generator().manual_seed(1))
    b = generate(m, prompt, 8, temperature=0.0)
    assert torch.equal(a.tokens, b.tokens)


def test_forward_z_errors() -> None:
    m = _model(tiny())
    with pytest.raises(ValueError, match="z must be a bool tensor of shape"):
        m(_idx(), z=torch.zeros(3, 20, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="z = 'encoder'"):
        m(_idx(), z="encoder")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="renamed"):
        m(_idx(), z="posterior")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="beyond max_seq_len"):
        m(_idx(1, 49))


@pytest.mark.parametrize("name", ["paper-1.5b", "paper-8b"])
def test_paper_presets_on_meta_device(name: str) -> None:
    from ftstudy.core.config import NOMINAL_PARAMS

    cfg = get_preset(name)
    with torch.device("meta"):
        base = FreeTransformer(dataclasses.replace(cfg.model, latent_bits=0))
        free = FreeTransformer(cfg.model)
    n = base.num_parameters()
    assert abs(n - NOMINAL_PARAMS[name]) / NOMINAL_PARAMS[name] < 0.10, n
    # Free overhead: one encoder block plus the literal 2^16 x D post-sampler.
    block = sum(p.numel() for p in base.blocks[0].parameters())
    assert free.num_parameters("latent") >= block + 2 ** 16 * cfg.model.dim


@pytest.mark.parametrize("bits", [0, 4])
def test_activation_checkpointing_changes_memory_not_results(bits: int) -> None:
    """Recomputing block activations in the backward gives the same loss and gradients."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=29, n_layers=4, dim=32, n_heads=2, max_seq_len=66, latent_bits=bits)
    m = FreeTransformer(cfg).train()
    idx = torch.randint(0, 29, (3, 65))
    grads = []
    for ac in (False, True):
        m.activation_checkpointing = ac
        m.zero_grad()
        out = m(idx[:, :-1], idx[:, 1:], generator=torch.Generator().manual_seed(1))
        out.loss.backward()
        grads.append((out.loss.item(), [p.grad.clone() for p in m.parameters()]))
    assert grads[0][0] == pytest.approx(grads[1][0], rel=1e-6)
    for a, b in zip(grads[0][1], grads[1][1]):
        assert torch.allclose(a, b, atol=1e-6)


def test_fsdp_strategy_shards_per_block() -> None:
    from lightning.pytorch.strategies import FSDPStrategy

    from ftstudy.core.model import Block
    from ftstudy.run.train import build_strategy

    cfg = get_preset("paper-1.5b")
    s = build_strategy(cfg.train)
    assert isinstance(s, FSDPStrategy)
    assert Block in s.kwargs["auto_wrap_policy"]._module_classes  # one FSDP unit per transformer block
    assert Block in s._activation_checkpointing_kwargs["auto_wrap_policy"]._module_classes
    assert cfg.train.activation_checkpointing and cfg.train.precision == "bf16-mixed"
    assert build_strategy(get_preset("synthetic-tiny").train) == "auto"
