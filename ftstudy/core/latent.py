"""The latent of the Free Transformer: binary mapper, KL to the uniform prior, free bits.

Paper: F. Fleuret, "The Free Transformer", arXiv 2510.17558, §3 (eqs. 6–8) and the
loss of §3.3; our digest is ``shared/PAPER.md`` §2.4–2.5 and §3.

The encoder produces H logits per token.  The *binary mapper* samples H independent
bits ``B_h ~ Bernoulli(sigmoid(L_h))``, turns them into a code ``c = sum_h 2^h B_h``
and a one-hot ``Y`` over the 2^H codes, and passes the gradient through
``G_c = prod_h p_h^{b_h(c)} (1 - p_h)^{1 - b_h(c)}``, the probability of every code
under those Bernoullis: the post-sampler sees ``Y + G - stopgrad(G)``.  Followed by the
post-sampler ``Linear(2^H -> D)`` with weight ``W`` (D, 2^H), the forward value is the
column ``W[:, c]`` and the gradients are

    dL/dW[:, k] = sum_{tokens with code k} g                   (g = dL/dr, a D-vector)
    dL/dL_h     = sum_c s_c G_c (b_h(c) - p_h),   s_c = g . W[:, c]
                = p_h (1 - p_h) (E_G[s | b_h = 1] - E_G[s | b_h = 0]).

``binary_mapper_reference`` builds all of that literally (a tokens x 2^H tensor).
``binary_mapper`` computes the same numbers without ever holding tokens x 2^H values:
the forward pass is a column gather; the backward pass streams ``s = g W`` over blocks
of tokens and codes and contracts each block at once with the Kronecker factors of
``G``.  Splitting the H bits into a low half (``l``, 2^H_lo codes) and a high half
(``a``) gives ``G_{a,l} = G^hi_a G^lo_l``, so for each block

    T[t, a, 0]     = sum_l s[t, a, l] G^lo[t, l]
    T[t, a, 1 + h] = sum_l s[t, a, l] G^lo[t, l] b_h(l)      (h a low bit)

is one batched matmul against a (2^H_lo x (1 + H_lo)) matrix per token, and the
high bits are finished on the small ``T`` (tokens x 2^H_hi x (1 + H_lo)).  The cost is
the one (tokens x D) @ (D x 2^H) product that any implementation of this estimator
must pay, plus a pass over each block while it is still in cache.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "MAX_LATENT_BITS",
    "Generators",
    "binary_mapper",
    "binary_mapper_reference",
    "bit_log_probs",
    "code_bits",
    "codes_from_bits",
    "free_bits_penalty",
    "kl_to_uniform",
    "kl_per_bit",
    "marginal_penalty",
    "per_row",
    "prior_bits",
    "sample_bits",
    "uniform_bits",
]

MAX_LATENT_BITS = 20
# Upper bound on the number of elements of one streamed block of s = g W in the
# backward pass.  CPU: 2^22 floats = 16 MiB in fp32, big enough for matmul efficiency,
# small enough to stay near the cache.  CUDA: 8x more (128 MiB), since there the cost
# is kernel launches, not cache misses.  Both far under the 0.5 GiB target.
_BLOCK_ELEMENTS = 1 << 22
_CUDA_BLOCK_FACTOR = 8
_TOKENS_PER_BLOCK = {"cpu": 1024, "cuda": 4096}
# CPU: the block of s = g W (tokens x codes) is kept small enough to stay in cache while it
# is contracted (1 MiB in fp32); measured ~20% faster than one 16 MiB block at H = 16.
_CPU_S_BLOCK_ELEMENTS = 1 << 18


def _check_logits(logits: Tensor) -> int:
    if logits.dim() < 1:
        raise ValueError(f"logits must have shape (..., H); got a scalar of shape {tuple(logits.shape)}")
    h = logits.shape[-1]
    if not 1 <= h <= MAX_LATENT_BITS:
        raise ValueError(f"number of latent bits H = {h} (last dim of logits) must be in 1..{MAX_LATENT_BITS}")
    if not logits.is_floating_point():
        raise TypeError(f"logits must be a floating tensor, got dtype {logits.dtype}")
    return h


def code_bits(h: int, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """(2^h, h) matrix whose row c holds the bits of code c, bit k = (c >> k) & 1."""
    codes = torch.arange(1 << h, device=device)
    shifts = torch.arange(h, device=device)
    return ((codes[:, None] >> shifts) & 1).to(dtype)


def codes_from_bits(bits: Tensor) -> Tensor:
    """Code index sum_h 2^h bits[..., h] (long), the paper's d = sum_h 2^(h-1) B_h with h from 0."""
    h = bits.shape[-1]
    weights = torch.ones((), dtype=torch.long, device=bits.device) << torch.arange(h, device=bits.device)
    return (bits.long() * weights).sum(-1)


# Where random draws come from: one generator for a whole batch, or one per row (a sequence
# as long as the batch), so that a row's draws do not depend on what else is in its batch.
Generators = torch.Generator | Sequence[torch.Generator] | None


def per_row(generator: Generators) -> bool:
    """Whether ``generator`` is one generator per row (a list or tuple) rather than one for the batch."""
    return isinstance(generator, (list, tuple))


def sample_bits(logits: Tensor, generator: Generators = None, valid: Tensor | None = None) -> Tensor:
    """Draw B_h ~ Bernoulli(sigmoid(L_h)) independently (paper eq. 6) as u < sigmoid(L_h) with u
    uniform in [0, 1); returns bool (..., H).  A logit of 0 is a fair coin (sigmoid(0) = 1/2 exactly).

    ``generator``: one for the whole tensor (one ``torch.rand`` of its shape), or one per row
    of a (B, T, H) tensor: row j then draws its uniforms from ``generator[j]`` (on that
    generator's device), position after position over its ``valid`` positions only (bool
    (B, T), default all), so its bits depend on nothing else in the batch.  Bits at invalid
    positions are False.
    """
    if not per_row(generator):
        u = torch.rand(logits.shape, device=logits.device, dtype=torch.float32, generator=generator)
        bits = u < torch.sigmoid(logits.detach().float())
        return bits if valid is None else bits & valid[..., None]
    assert isinstance(generator, (list, tuple))
    if logits.dim() != 3 or len(generator) != logits.shape[0]:
        raise ValueError(f"one generator per row needs (B, T, H) logits with B = {len(generator)} generators; "
                         f"got logits of shape {tuple(logits.shape)}")
    bits = torch.zeros(logits.shape, dtype=torch.bool, device=logits.device)
    for j, g in enumerate(generator):
        row = logits[j].detach() if valid is None else logits[j].detach()[valid[j]]  # (n_j, H), in position order
        p = torch.sigmoid(row.float().to(g.device))
        drawn = (torch.rand(p.shape, generator=g, device=g.device) < p).to(logits.device)
        if valid is None:
            bits[j] = drawn
        else:
            bits[j, valid[j]] = drawn
    return bits


def uniform_bits(shape: tuple[int, ...], h: int, device: torch.device | str | None = None,
                 generator: torch.Generator | None = None) -> Tensor:
    """Z drawn from the uniform prior over 2^h codes: h fair coins per position, bool (*shape, h)."""
    return torch.randint(0, 2, (*shape, h), device=device, generator=generator).bool()


def prior_bits(shape: tuple[int, int], h: int, device: torch.device | str | None = None,
               generator: Generators = None, valid: Tensor | None = None) -> Tensor:
    """Z from the uniform prior at every position of a (B, T) batch, bool (B, T, h); False
    where ``valid`` (bool (B, T)) is False.

    One generator: :func:`uniform_bits` (``torch.randint``).  One generator per row: fair
    coins drawn exactly as :func:`sample_bits` draws them (u < 1/2, row by row over the valid
    positions), so a row's Z does not depend on its batch.
    """
    if per_row(generator):
        return sample_bits(torch.zeros(*shape, h, device=device), generator, valid)
    bits = uniform_bits(shape, h, device, generator)  # type: ignore[arg-type]
    return bits if valid is None else bits & valid[..., None]


def bit_log_probs(logits: Tensor, bits: Tensor) -> Tensor:
    """log Q(B_h = bits_h) in nats for independent Bernoulli(sigmoid(L_h)) bits: log p_h or
    log(1 - p_h), shape (..., H); summed over the bits it is log Q(Z = bits) (importance weights)."""
    x = logits.double() if logits.dtype == torch.float64 else logits.float()  # never below fp32
    f = torch.nn.functional
    return torch.where(bits, f.logsigmoid(x), f.logsigmoid(-x))


def kl_to_uniform(logits: Tensor) -> Tensor:
    """KL(Q(Z_t | S) || U(2^H)) in nats, shape logits.shape[:-1].

    With independent bits it is sum_h (log 2 - h_b(p_h)) (PAPER.md §3); computed from the
    logits with log-sigmoids so that saturated bits stay finite.
    """
    return kl_per_bit(logits).sum(-1)


def kl_per_bit(logits: Tensor) -> Tensor:
    """Per-bit KL to a fair coin, log 2 - h_b(sigmoid(logits)), in nats, shape (..., H)."""
    x = logits.double() if logits.dtype == torch.float64 else logits.float()  # never below fp32
    p = torch.sigmoid(x)
    neg_entropy = p * torch.nn.functional.logsigmoid(x) + (1 - p) * torch.nn.functional.logsigmoid(-x)
    return math.log(2.0) + neg_entropy


def free_bits_penalty(kl: Tensor, kappa_nats: float, mask: Tensor | None = None) -> Tensor:
    """Per-token free bits (paper §3.3): mean over tokens of max(0, KL_t - kappa).

    The hinge is applied to each token's KL *before* averaging, as in the paper; applying
    it after batch averaging is a different (and weaker) constraint.
    """
    if kappa_nats < 0:
        raise ValueError(f"kappa_nats = {kappa_nats} must be >= 0")
    hinge = (kl - kappa_nats).clamp_min(0.0)
    if mask is None:
        return hinge.mean()
    m = mask.to(hinge.dtype)
    return (hinge * m).sum() / m.sum().clamp_min(1.0)


def marginal_penalty(logits: Tensor, mask: Tensor | None = None) -> Tensor:
    """KL of the aggregate per-bit marginals to fair coins, in nats (a scalar).

    DEVIATION (not in the paper; ``ModelConfig.marginal_weight``)::

        penalty = sum_h KL(Bern(p_bar_h) || Bern(1/2))
                = sum_h [p_bar_h log(2 p_bar_h) + (1 - p_bar_h) log(2 (1 - p_bar_h))],
        p_bar_h = mean over the positions kept by ``mask`` of sigmoid(logits[..., h]).

    It charges the mismatch between the aggregate posterior's bit marginals and the uniform
    prior, which per-token free bits never pay for below κ, without charging any single
    token's KL.  ``logits`` (..., H); ``mask`` (bool, ``logits.shape[:-1]``; default all).
    Stable near p_bar = 0 or 1: 1 - p_bar is averaged from sigmoid(-L) (no cancellation),
    each ``p log(2p)`` is 0 at p = 0 with a finite gradient (the log's argument is clamped),
    and the (H,) marginals are combined in float64.  No position kept: 0.
    """
    _check_logits(logits)
    x = logits.double() if logits.dtype == torch.float64 else logits.float()  # never below fp32
    p1, p0 = torch.sigmoid(x), torch.sigmoid(-x)  # P(bit = 1), P(bit = 0) per position
    if mask is None:
        p_bar = p1.flatten(0, -2).mean(0).double()  # (H,)
        q_bar = p0.flatten(0, -2).mean(0).double()
    else:
        if mask.shape != logits.shape[:-1]:
            raise ValueError(f"mask shape {tuple(mask.shape)} must equal logits.shape[:-1] = "
                             f"{tuple(logits.shape[:-1])}")
        m = mask.to(x.dtype)[..., None]
        n = m.sum().double().clamp_min(1.0)
        p_bar = (p1 * m).flatten(0, -2).sum(0).double() / n
        q_bar = (p0 * m).flatten(0, -2).sum(0).double() / n
    tiny = torch.finfo(torch.float64).tiny

    def plog2p(p: Tensor) -> Tensor:
        return p * torch.log(2 * p.clamp_min(tiny))

    return (plog2p(p_bar) + plog2p(q_bar)).sum().to(x.dtype)


def _resolve_bits(logits: Tensor, bits: Tensor | None, generator: torch.Generator | None) -> Tensor:
    if bits is None:
        return sample_bits(logits, generator)
    if bits.shape != logits.shape:
        raise ValueError(f"bits shape {tuple(bits.shape)} must equal logits shape {tuple(logits.shape)}")
    if bits.dtype != torch.bool:
        raise TypeError(f"bits must be a bool tensor, got dtype {bits.dtype}")
    return bits


def _check_weight(weight: Tensor, h: int) -> None:
    if weight.dim() != 2 or weight.shape[1] != 1 << h:
        raise ValueError(f"weight must have shape (D, 2^H) = (D, {1 << h}) for H = {h}; "
                         f"got {tuple(weight.shape)}")


def binary_mapper_reference(logits: Tensor, weight: Tensor, bits: Tensor | None = None,
                            generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """The literal construction of paper eqs. 6–8: r = W (Y + G - stopgrad(G)).

    Holds tokens x 2^H values (256 KiB per token in fp32 at H = 16): for tests only.
    """
    h = _check_logits(logits)
    _check_weight(weight, h)
    bits = _resolve_bits(logits, bits, generator)
    dtype = torch.promote_types(logits.dtype, weight.dtype)
    y = torch.nn.functional.one_hot(codes_from_bits(bits), 1 << h).to(dtype)  # (..., 2^H)
    b = code_bits(h, logits.device, dtype)  # (2^H, H)
    logp1 = torch.nn.functional.logsigmoid(logits.to(dtype))  # log p_h
    logp0 = torch.nn.functional.logsigmoid(-logits.to(dtype))  # log (1 - p_h)
    g = torch.exp(logp1 @ b.T + logp0 @ (1 - b).T)  # (..., 2^H): Kronecker product of (1-p_h, p_h)
    onehot = y + g - g.detach()
    return onehot @ weight.to(dtype).T, bits


class _BinaryMapper(torch.autograd.Function):
    """Column gather forward; streamed, Kronecker-factored backward (see module docstring)."""

    @staticmethod
    def forward(ctx, logits: Tensor, weight: Tensor, codes: Tensor, h: int) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(logits, weight, codes)
        ctx.h = h
        return weight.index_select(1, codes).T  # (N, D)

    @staticmethod
    def backward(ctx, grad_r: Tensor):  # type: ignore[override]
        logits, weight, codes = ctx.saved_tensors
        h: int = ctx.h
        grad_logits = grad_weight = None
        if ctx.needs_input_grad[1]:
            grad_weight = torch.zeros_like(weight)
            grad_weight.index_add_(1, codes, grad_r.T.to(weight.dtype))
        if ctx.needs_input_grad[0]:
            grad_logits = _logits_grad(logits, weight, grad_r, h)
        return grad_logits, grad_weight, None, None


def _logits_grad(logits: Tensor, weight: Tensor, grad_r: Tensor, h: int) -> Tensor:
    """dL/dlogits = sum_c (g . W[:, c]) G_c (b(c) - p), streamed over tokens and codes.

    Everything per token is O(2^(H/2)); the only O(2^H) object is W itself.  Working
    memory is a few blocks of at most ``_BLOCK_ELEMENTS`` values, whatever the number of
    tokens.
    """
    n, d = grad_r.shape
    h_lo = (h + 1) // 2
    h_hi = h - h_lo
    n_lo, n_hi = 1 << h_lo, 1 << h_hi
    cdt = torch.promote_types(grad_r.dtype, weight.dtype)  # matmul precision = the model's
    acc = torch.float64 if cdt == torch.float64 else torch.float32  # accumulation precision
    dev = logits.device
    b_lo = code_bits(h_lo, dev, acc)  # (n_lo, h_lo)
    b_hi = code_bits(h_hi, dev, acc)  # (n_hi, h_hi)
    w = weight.to(cdt)
    out = torch.empty(n, h, dtype=logits.dtype, device=dev)

    # Token blocks bound the per-token tensors (G factors, T); code blocks bound s = g W.
    block = _BLOCK_ELEMENTS * (_CUDA_BLOCK_FACTOR if dev.type == "cuda" else 1)
    per_token = max(n_lo * (2 + h_lo), n_hi * (2 + h_lo))
    tok_per_block = max(1, min(n, block // per_token, _TOKENS_PER_BLOCK.get(dev.type, 256)))
    s_block = _CPU_S_BLOCK_ELEMENTS if dev.type == "cpu" else block
    hi_per_block = max(1, min(n_hi, s_block // (n_lo * tok_per_block)))
    # [1 | b_lo] (n_lo, 1 + h_lo): with it the contraction of s with the per-token columns
    # [G^lo, G^lo b_0, ...] is one plain matmul, (s * G^lo) @ ones_and_bits, on the CPU;
    # a batched (per token) matmul with 1 + h_lo columns is several times slower there.
    ones_and_bits = torch.cat([torch.ones(n_lo, 1, dtype=acc, device=dev), b_lo], dim=1).to(cdt)
    for t0 in range(0, n, tok_per_block):
        t1 = min(n, t0 + tok_per_block)
        x = logits[t0:t1].to(acc)
        p = torch.sigmoid(x)  # (tb, H)
        logp1 = torch.nn.functional.logsigmoid(x)
        logp0 = torch.nn.functional.logsigmoid(-x)
        # Kronecker factors of G: G[t, a * n_lo + l] = g_hi[t, a] * g_lo[t, l].
        g_lo = torch.exp(logp1[:, :h_lo] @ b_lo.T + logp0[:, :h_lo] @ (1 - b_lo).T)  # (tb, n_lo)
        g_hi = torch.exp(logp1[:, h_lo:] @ b_hi.T + logp0[:, h_lo:] @ (1 - b_hi).T)  # (tb, n_hi)
        # Per token, columns [G^lo, G^lo * b_0, ..., G^lo * b_{h_lo-1}]: (tb, n_lo, 1 + h_lo).
        m = torch.cat([g_lo[:, :, None], g_lo[:, :, None] * b_lo[None]], dim=2).to(cdt)
        g = grad_r[t0:t1].to(cdt)
        g_lo_c = g_lo.to(cdt)  # contiguous, for the CPU contraction below
        t_blk = torch.empty(t1 - t0, n_hi, 1 + h_lo, dtype=acc, device=dev)
        for a0 in range(0, n_hi, hi_per_block):
            a1 = min(n_hi, a0 + hi_per_block)
            s = (g @ w[:, a0 * n_lo:a1 * n_lo]).view(t1 - t0, a1 - a0, n_lo)  # (tb, nb, n_lo)
            if dev.type == "cpu":
                lo_weighted = (s * g_lo_c[:, None, :]).view(-1, n_lo)  # s * G^lo
                t_blk[:, a0:a1] = (lo_weighted @ ones_and_bits).view(t1 - t0, a1 - a0, 1 + h_lo).to(acc)
            else:
                t_blk[:, a0:a1] = torch.bmm(s, m).to(acc)  # (tb, nb, 1 + h_lo)
        weighted = t_blk * g_hi[:, :, None]  # weight each high code by G^hi
        total = weighted[:, :, 0].sum(1)  # sum_c s_c G_c, (tb,)
        with_lo = weighted[:, :, 1:].sum(1)  # sum_c s_c G_c b_h(c) for the low bits, (tb, h_lo)
        with_hi = weighted[:, :, 0] @ b_hi  # same for the high bits, (tb, h_hi)
        with_bit = torch.cat([with_lo, with_hi], dim=1)  # (tb, H)
        out[t0:t1] = (with_bit - p * total[:, None]).to(logits.dtype)
    return out


def binary_mapper(logits: Tensor, weight: Tensor, bits: Tensor | None = None,
                  generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Binary mapper followed by the post-sampler Linear(2^H -> D) (paper eqs. 6–8).

    Args:
        logits: (..., H) encoder logits L_{t,h}.
        weight: (D, 2^H) post-sampler weight W (``nn.Linear(2**H, D, bias=False).weight``).
        bits: optional bool (..., H) to use instead of sampling (e.g. shared-Z groups).
        generator: torch.Generator for the Bernoulli draws.

    Returns:
        r: (..., D) with value W[:, code] and the gradients of W (Y + G - stopgrad(G)).
        bits: the bool (..., H) bits used; code = sum_h 2^h bits[..., h].

    Never holds a tokens x 2^H tensor: the backward pass streams blocks of at most
    ``_BLOCK_ELEMENTS`` values.
    """
    h = _check_logits(logits)
    _check_weight(weight, h)
    bits = _resolve_bits(logits, bits, generator)
    lead = logits.shape[:-1]
    codes = codes_from_bits(bits).reshape(-1)
    r = _BinaryMapper.apply(logits.reshape(-1, h), weight, codes, h)
    return r.reshape(*lead, weight.shape[0]), bits


def factored_mapper(logits: Tensor, weight: Tensor, bits: Tensor | None = None,
                    generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """The factored H -> D post-sampler (an ablation, not the paper's default).

    r = W_f (b + p - stopgrad(p)) with W_f (D, H): the literal mapper restricted to tables
    that are additive in the bits, W[:, c] = sum_h b_h(c) W_f[:, h]; for such tables the
    straight-through gradient equals the paper's, since sum_c G_c W[:, c] = W_f p.
    """
    h = _check_logits(logits)
    if weight.dim() != 2 or weight.shape[1] != h:
        raise ValueError(f"factored weight must have shape (D, H) = (D, {h}); got {tuple(weight.shape)}")
    bits = _resolve_bits(logits, bits, generator)
    p = torch.sigmoid(logits)
    st = bits.to(p.dtype) + p - p.detach()
    return st.to(weight.dtype) @ weight.T, bits
