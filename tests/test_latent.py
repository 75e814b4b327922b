"""Binary mapper, KL and free bits against naive references (PAPER.md §2.4, §3, §6)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from conftest import DEVICES
from ftstudy.core import latent
from ftstudy.core.latent import (
    binary_mapper,
    binary_mapper_reference,
    code_bits,
    codes_from_bits,
    factored_mapper,
    free_bits_penalty,
    kl_to_uniform,
)


def _inputs(h: int, lead: tuple[int, ...], d: int = 6, dtype: torch.dtype = torch.float64, seed: int = 0,
            device: str = "cpu"):
    g = torch.Generator().manual_seed(seed)
    logits = (2 * torch.randn(*lead, h, generator=g)).to(device, dtype).requires_grad_(True)
    weight = torch.randn(d, 1 << h, generator=g).to(device, dtype).requires_grad_(True)
    bits = (torch.rand(*lead, h, generator=g) < 0.5).to(device)
    grad_out = torch.randn(*lead, d, generator=g).to(device, dtype)
    return logits, weight, bits, grad_out


def _run(fn, logits, weight, bits, grad_out):
    r, used = fn(logits, weight, bits)
    gl, gw = torch.autograd.grad(r, (logits, weight), grad_out)
    return r, used, gl, gw


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("h", [1, 4, 8, 10])
@pytest.mark.parametrize("lead", [(7,), (2, 3)])
def test_mapper_matches_reference_float64(h: int, lead: tuple[int, ...], device: str) -> None:
    args = _inputs(h, lead, device=device)
    r1, b1, gl1, gw1 = _run(binary_mapper, *args)
    r2, b2, gl2, gw2 = _run(binary_mapper_reference, *args)
    assert torch.equal(b1, b2)
    assert _rel(r1, r2) <= 1e-10
    assert _rel(gl1, gl2) <= 1e-10
    assert _rel(gw1, gw2) <= 1e-10
    assert gl1.abs().max() > 0  # the encoder is not cut off (PAPER.md §6, "broken gradient")


@pytest.mark.parametrize("h", [4, 8, 10])
def test_mapper_streaming_blocks_do_not_change_result(h: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks far smaller than tokens x 2^H (and ragged ones) give the same gradients."""
    args = _inputs(h, (37,))
    _, _, gl_ref, _ = _run(binary_mapper_reference, *args)
    for block in (1 << max(h // 2, 1), 3 * (1 << ((h + 1) // 2)), 1 << 22):
        monkeypatch.setattr(latent, "_BLOCK_ELEMENTS", block)
        _, _, gl, _ = _run(binary_mapper, *args)
        assert _rel(gl, gl_ref) <= 1e-10, block


def test_mapper_value_is_the_selected_column() -> None:
    logits, weight, bits, _ = _inputs(5, (4, 3))
    r, _ = binary_mapper(logits, weight, bits)
    code = codes_from_bits(bits)
    assert torch.equal(r, weight.detach().T[code])
    # Code convention: sum_h 2^h bits[..., h] with h from 0.
    assert codes_from_bits(torch.tensor([True, False, True])).item() == 5
    assert torch.equal(code_bits(3)[5], torch.tensor([1.0, 0.0, 1.0]))


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 5e-2)])
def test_mapper_low_precision_close_to_float64(dtype: torch.dtype, tol: float) -> None:
    logits, weight, bits, grad_out = _inputs(8, (16,))
    ref = _run(binary_mapper_reference, *(x.detach().requires_grad_(x.requires_grad) for x in (logits, weight)),
               bits, grad_out)
    lo = _run(binary_mapper, logits.detach().to(dtype).requires_grad_(True),
              weight.detach().to(dtype).requires_grad_(True), bits, grad_out.to(dtype))
    assert lo[0].dtype == dtype and lo[2].dtype == dtype and lo[3].dtype == dtype
    for a, b in zip((lo[0], lo[2], lo[3]), (ref[0], ref[2], ref[3])):
        assert _rel(a.double(), b) <= tol


def test_mapper_samples_bernoulli_bits() -> None:
    logits = torch.tensor([[-3.0, 0.0, 3.0]]).expand(20000, 3).contiguous()
    weight = torch.zeros(2, 8)
    _, bits = binary_mapper(logits, weight, generator=torch.Generator().manual_seed(0))
    freq = bits.float().mean(0)
    expected = torch.sigmoid(torch.tensor([-3.0, 0.0, 3.0]))
    assert torch.allclose(freq, expected, atol=0.015)


def test_mapper_input_errors() -> None:
    with pytest.raises(ValueError, match="H = 21"):
        binary_mapper(torch.zeros(2, 21), torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"\(D, 2\^H\) = \(D, 8\)"):
        binary_mapper(torch.zeros(2, 3), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="bits shape"):
        binary_mapper(torch.zeros(2, 3), torch.zeros(3, 8), bits=torch.zeros(2, 2, dtype=torch.bool))
    with pytest.raises(TypeError, match="bool"):
        binary_mapper(torch.zeros(2, 3), torch.zeros(3, 8), bits=torch.zeros(2, 3))


@pytest.mark.parametrize("h", [1, 3, 6])
def test_kl_matches_enumeration(h: int) -> None:
    logits = 3 * torch.randn(5, h, dtype=torch.float64, generator=torch.Generator().manual_seed(h))
    p = torch.sigmoid(logits)
    for t in range(5):
        kl = 0.0
        for code in itertools.product([0, 1], repeat=h):
            q = math.prod(float(p[t, i]) if c else 1 - float(p[t, i]) for i, c in enumerate(code))
            kl += q * (math.log(q) - math.log(2.0 ** -h)) if q > 0 else 0.0
        assert kl_to_uniform(logits[t]).item() == pytest.approx(kl, rel=1e-9, abs=1e-12)


def test_kl_extremes() -> None:
    assert kl_to_uniform(torch.zeros(4)).item() == pytest.approx(0.0, abs=1e-7)
    assert kl_to_uniform(torch.full((4,), 60.0)).item() == pytest.approx(4 * math.log(2), rel=1e-6)
    assert torch.isfinite(kl_to_uniform(torch.full((2, 3), 1e4))).all()


def test_free_bits_per_token_not_after_averaging() -> None:
    kl = torch.tensor([[0.0, 2.0], [0.0, 2.0]])
    # per token: mean(max(0, [0, 2, 0, 2] - 1)) = 0.5; after averaging it would be max(0, 1 - 1) = 0.
    assert free_bits_penalty(kl, 1.0).item() == pytest.approx(0.5)
    assert free_bits_penalty(kl, 0.0).item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="kappa_nats"):
        free_bits_penalty(kl, -0.1)


def test_factored_mapper_equals_dense_on_additive_table() -> None:
    """Factored H -> D is the dense mapper restricted to tables additive in the bits."""
    h, d = 5, 4
    logits, _, bits, grad_out = _inputs(h, (9,), d=d)
    wf = torch.randn(d, h, dtype=torch.float64, requires_grad=True)
    dense = (wf @ code_bits(h, dtype=torch.float64).T).detach().requires_grad_(True)  # W[:, c] = sum_h b_h(c) wf_h
    r1, _ = factored_mapper(logits, wf, bits)
    r2, _ = binary_mapper_reference(logits, dense, bits)
    (g1,) = torch.autograd.grad(r1, logits, grad_out)
    (g2,) = torch.autograd.grad(r2, logits, grad_out)
    assert _rel(r1, r2) <= 1e-12 and _rel(g1, g2) <= 1e-10


def test_per_row_draws_do_not_depend_on_the_batch() -> None:
    """One generator per row: row j's bits are u < sigmoid(L) with its own uniforms, drawn in
    position order over its valid positions only; padding gets False."""
    logits = torch.randn(3, 7, 4, generator=torch.Generator().manual_seed(0))
    valid = torch.ones(3, 7, dtype=torch.bool)
    valid[1, :2] = valid[2, :6] = False

    def gens() -> list[torch.Generator]:
        return [torch.Generator().manual_seed(s) for s in (5, 6, 7)]

    bits = latent.sample_bits(logits, gens(), valid)
    for j in range(3):
        alone = latent.sample_bits(logits[j:j + 1, valid[j]], gens()[j:j + 1])
        assert torch.equal(bits[j, valid[j]], alone[0]) and not bits[j, ~valid[j]].any()
    u = torch.rand(5, 4, generator=torch.Generator().manual_seed(6))
    assert torch.equal(bits[1, 2:], u < torch.sigmoid(logits[1, 2:]))
    # Drawing n positions then m more from one generator is drawing n + m at once (the prompt's
    # Z and then the new tokens' come from one stream per row).
    g = torch.Generator().manual_seed(6)
    assert torch.equal(torch.cat([torch.rand(2, 4, generator=g), torch.rand(3, 4, generator=g)]), u)
    prior = latent.prior_bits((3, 7), 4, generator=gens(), valid=valid)
    assert torch.equal(prior[1, 2:], u < 0.5) and not prior[~valid].any()
    # One generator for the batch: the prior is uniform_bits, as it always was.
    assert torch.equal(latent.prior_bits((3, 7), 4, generator=torch.Generator().manual_seed(0)),
                       latent.uniform_bits((3, 7), 4, generator=torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError, match="one generator per row"):
        latent.sample_bits(logits, gens()[:2])


def test_bit_log_probs() -> None:
    logits = 3 * torch.randn(2, 5, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    bits = torch.rand(2, 5, 6, generator=torch.Generator().manual_seed(2)) < 0.5
    p = torch.sigmoid(logits)
    assert torch.allclose(latent.bit_log_probs(logits, bits), torch.where(bits, p, 1 - p).log())
    # Over every code, the probabilities sum to one (H = 3 at one position).
    codes = code_bits(3, dtype=torch.float64).bool()
    total = latent.bit_log_probs(logits[0, 0, :3].expand(8, 3), codes).sum(-1).exp().sum()
    assert total.item() == pytest.approx(1.0)
