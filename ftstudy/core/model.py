"""The model: a Llama-style decoder that becomes a Free Transformer when it has a latent.

Pure torch (no Lightning).  One class, ``FreeTransformer``; ``ModelConfig.latent_bits = 0``
is the baseline decoder, and every part the two variants share has the same parameter
name, so a baseline checkpoint loads into a Free model (strict=False) weight for weight.

Forward pass of the Free variant (F. Fleuret, arXiv 2510.17558, §3, Algorithm 2;
PAPER.md §2), with ``inj = ModelConfig.injection`` (paper: L/2):

    idx ─ tok_emb ─ blocks[0 .. inj-1] (causal) ──────── X ──┬──────────────── q ─┐
                                                             │                    │
              ζ (learned, repeated over T) ─ q ┐             └─ k,v ─ encoder ─┐  │
                                         encoder block (non-causal) ◀──────────┘  │
                 enc_norm ─ enc_head (D → H) ─ logits L ─ binary mapper ─ Z       │
                                   post_sampler (2^H → D) ─ R ─ X + R ─ k,v ─ blocks[inj] (causal)
                                                                 ─ blocks[inj+1 .. L-1] ─ norm ─ lm_head

R enters only the keys/values of block ``inj`` (0-based); it never enters the residual
stream.  At generation the encoder is not run for new tokens: each gets a uniform Z.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ftstudy.core.config import ModelConfig
from ftstudy.core.latent import (
    binary_mapper,
    codes_from_bits,
    factored_mapper,
    free_bits_penalty,
    kl_per_bit,
    sample_bits,
    uniform_bits,
)

__all__ = ["FreeTransformer", "ModelOutput", "KVCache", "ZSpec", "generate"]

# How Z is chosen for a forward pass: "posterior" = encoder on the same tokens (training,
# and the ELBO); "prior" = uniform bits, encoder never run (honest evaluation); or a bool
# tensor (B, T, H) of explicit bits (shared-Z groups, prefill-then-prior evaluation).
ZSpec = Literal["posterior", "prior"] | Tensor


class RotaryEmbedding(nn.Module):
    """RoPE (Su et al. 2021), rotate-half convention, table precomputed for max_seq_len."""

    def __init__(self, head_dim: int, max_seq_len: int, base: float) -> None:
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
        angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float64), inv_freq)  # (S, hd/2)
        self.register_buffer("cos", angles.cos().float(), persistent=False)
        self.register_buffer("sin", angles.sin().float(), persistent=False)

    def forward(self, x: Tensor, start: int) -> Tensor:
        """x: (B, nh, T, hd) at positions start … start+T-1."""
        t = x.shape[-2]
        if start + t > self.cos.shape[0]:
            raise ValueError(f"position {start + t - 1} is beyond max_seq_len = {self.cos.shape[0]}")
        cos = self.cos[start:start + t].to(x.dtype)  # (T, hd/2)
        sin = self.sin[start:start + t].to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class KVCache:
    """Preallocated keys/values for every decoder block: (B, n_kv_heads, max_len, hd) each."""

    def __init__(self, n_layers: int, batch: int, n_kv_heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device) -> None:
        shape = (batch, n_kv_heads, max_len, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.max_len = max_len
        self.length = 0  # positions filled so far

    def update(self, layer: int, start: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        end = start + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: position {end - 1} >= capacity {self.max_len}")
        self.k[layer][:, :, start:end] = k
        self.v[layer][:, :, start:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]


class Attention(nn.Module):
    """Grouped-query attention whose queries and keys/values may come from different inputs."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv, self.hd = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        self.wq = nn.Linear(cfg.dim, self.n_heads * self.hd, bias=False)
        self.wkv = nn.Linear(cfg.dim, 2 * self.n_kv * self.hd, bias=False)  # k and v fused
        self.wo = nn.Linear(self.n_heads * self.hd, cfg.dim, bias=False)

    def forward(self, xq: Tensor, xkv: Tensor, rope: RotaryEmbedding | None, causal: bool,
                start: int = 0, cache: KVCache | None = None, layer: int = 0,
                attn_mask: Tensor | None = None) -> Tensor:
        """``attn_mask`` (bool, broadcastable to (B, nh, T, S_total), True = may attend)
        replaces the causal rule when given: padded batches pass their own."""
        b, t, _ = xq.shape
        s = xkv.shape[1]
        q = self.wq(xq).view(b, t, self.n_heads, self.hd).transpose(1, 2)  # (B, nh, T, hd)
        k, v = self.wkv(xkv).view(b, s, 2, self.n_kv, self.hd).permute(2, 0, 3, 1, 4)  # 2 x (B, nkv, S, hd)
        if rope is not None:
            q, k = rope(q, start), rope(k, start)
        mask = attn_mask
        if attn_mask is not None:
            causal = False
            if cache is not None:
                k, v = cache.update(layer, start, k, v)
        elif cache is not None:
            k, v = cache.update(layer, start, k, v)  # (B, nkv, start+S, hd)
            if causal and start > 0:
                # Queries at start … start+T-1 see keys 0 … their own position.  With one
                # query this is all of the cache, so no mask is needed.
                causal = False
                if t > 1:
                    qpos = torch.arange(start, start + t, device=xq.device)[:, None]
                    mask = torch.arange(k.shape[2], device=xq.device)[None, :] <= qpos  # (T, S_total)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                           enable_gqa=self.n_kv != self.n_heads)  # (B, nh, T, hd)
        return self.wo(y.transpose(1, 2).reshape(b, t, self.n_heads * self.hd))


class SwiGLU(nn.Module):
    """Llama MLP: w2(silu(x W1) * x W3), with W1 and W3 fused in one matmul."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.hidden = cfg.hidden
        self.w13 = nn.Linear(cfg.dim, 2 * cfg.hidden, bias=False)
        self.w2 = nn.Linear(cfg.hidden, cfg.dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.w13(x).split(self.hidden, dim=-1)
        return self.w2(F.silu(gate) * up)


class Block(nn.Module):
    """Pre-norm transformer block; ``kv`` (default: x itself) feeds the keys/values."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.attn_norm = nn.RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = nn.RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.mlp = SwiGLU(cfg)

    def forward(self, x: Tensor, kv: Tensor | None = None, *, rope: RotaryEmbedding | None, causal: bool = True,
                start: int = 0, cache: KVCache | None = None, layer: int = 0,
                attn_mask: Tensor | None = None) -> Tensor:
        h = self.attn_norm(x)
        hkv = h if kv is None else self.attn_norm(kv)
        x = x + self.attn(h, hkv, rope, causal, start, cache, layer, attn_mask)
        return x + self.mlp(self.mlp_norm(x))


@dataclass
class ModelOutput:
    """What a forward pass returns.  Losses are scalars; per-token figures are (B, T)."""

    logits: Tensor  # (B, T, V)
    bits: Tensor | None = None  # (B, T, H) bool: the Z used
    enc_logits: Tensor | None = None  # (B, T, H): encoder logits (posterior only)
    kl: Tensor | None = None  # (B, T) KL(Q(Z_t|S) || U) in nats (posterior only)
    ce: Tensor | None = None  # masked mean next-token cross-entropy, nats
    ce_sum: Tensor | None = None  # masked sum of cross-entropies (for exact aggregation)
    n_scored: Tensor | None = None  # number of scored targets
    kl_loss: Tensor | None = None  # the free-bits term added to the loss
    loss: Tensor | None = None  # ce + kl_loss: what training minimises (PAPER.md §3)


class FreeTransformer(nn.Module):
    """Baseline decoder (``latent_bits = 0``) or Free Transformer, from a ``ModelConfig``."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        # A training setting, not part of the model (TrainConfig.activation_checkpointing sets it).
        self.activation_checkpointing = False
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.rope = RotaryEmbedding(cfg.head_dim, cfg.max_seq_len, cfg.rope_base)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.is_free:
            # PAPER.md §2.2–2.5: one non-causal block with learned queries ζ, RMSNorm +
            # Linear(D → H) readout, and the post-sampler (bias-free, like every linear here
            # [our choice]).
            self.zeta = nn.Parameter(torch.zeros(cfg.dim))
            self.encoder = Block(cfg)
            self.enc_norm = nn.RMSNorm(cfg.dim, eps=cfg.norm_eps)
            self.enc_head = nn.Linear(cfg.dim, cfg.latent_bits, bias=False)
            n_in = 1 << cfg.latent_bits if cfg.post_sampler == "dense" else cfg.latent_bits
            self.post_sampler = nn.Linear(n_in, cfg.dim, bias=False)
        self.reset_parameters()
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight

    # ------------------------------------------------------------------ set-up

    def reset_parameters(self) -> None:
        std = self.cfg.init_std
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                # GPT-2/Llama practice: residual-branch outputs scaled by 1/sqrt(2L).
                scale = 1 / math.sqrt(2 * self.cfg.n_layers) if name.endswith(("wo.weight", "w2.weight")) else 1.0
                nn.init.normal_(p, 0.0, std * scale)
            elif name == "zeta":
                nn.init.normal_(p, 0.0, std)
            else:
                nn.init.ones_(p)  # RMSNorm gains

    def num_parameters(self, part: Literal["all", "latent", "shared"] = "all") -> int:
        latent = ("zeta", "encoder.", "enc_norm.", "enc_head.", "post_sampler.")
        seen: set[int] = set()
        total = 0
        for name, p in self.named_parameters():  # named_parameters skips tied duplicates
            is_latent = name.startswith(latent)
            if part == "all" or (part == "latent") == is_latent:
                if id(p) not in seen:
                    seen.add(id(p))
                    total += p.numel()
        return total

    # ------------------------------------------------------------------ pieces

    def trunk(self, idx: Tensor, start: int = 0, cache: KVCache | None = None,
              attn_mask: Tensor | None = None) -> Tensor:
        """Embedding and the blocks before the injection point: X, (B, T, D)."""
        x = self.tok_emb(idx)
        n = self.cfg.injection if self.cfg.is_free else self.cfg.n_layers
        for i in range(n):
            x = self._block(i, x, None, start, cache, attn_mask)
        return x

    def _block(self, i: int, x: Tensor, kv: Tensor | None, start: int, cache: KVCache | None,
               attn_mask: Tensor | None) -> Tensor:
        """Block ``i``; with ``activation_checkpointing`` (training only) its activations are
        recomputed in the backward pass instead of stored (less memory, one more forward)."""
        block = self.blocks[i]
        if self.activation_checkpointing and self.training and cache is None and torch.is_grad_enabled():
            return checkpoint(lambda a, b: block(a, b, rope=self.rope, start=start, cache=None, layer=i,
                                                 attn_mask=attn_mask), x, kv, use_reentrant=False)
        return block(x, kv, rope=self.rope, start=start, cache=cache, layer=i, attn_mask=attn_mask)

    def encode(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        """Encoder logits L (B, T, H) from the trunk output X: ζ queries, X keys/values, no
        mask (``attn_mask`` restricts the keys, e.g. to a padded batch's context tokens)."""
        b, t, d = x.shape
        zeta = self.zeta.to(x.dtype).expand(b, t, d)  # ζ repeated at every position
        rope = self.rope if self.cfg.encoder_positions == "rope" else None
        h = self.encoder(zeta, x, rope=rope, causal=False, attn_mask=attn_mask)
        return self.enc_head(self.enc_norm(h))

    def post_sample(self, enc_logits: Tensor | None, bits: Tensor | None,
                    generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """R (B, T, D) from encoder logits (sampled or given bits) or from given bits alone."""
        w = self.post_sampler.weight
        dev = w.device.type
        if torch.is_autocast_enabled(dev):
            w = w.to(torch.get_autocast_dtype(dev))  # the backward's big matmul in the autocast dtype
        if enc_logits is None:
            # No encoder: Z is given (prior or explicit); R is a plain lookup, no encoder gradient.
            assert bits is not None
            if self.cfg.post_sampler == "dense":
                return w.T[codes_from_bits(bits)], bits
            return bits.to(w.dtype) @ w.T, bits
        mapper = binary_mapper if self.cfg.post_sampler == "dense" else factored_mapper
        return mapper(enc_logits.float(), w, bits=bits, generator=generator)

    def head(self, x: Tensor, start: int = 0, cache: KVCache | None = None, r: Tensor | None = None,
             attn_mask: Tensor | None = None) -> Tensor:
        """Blocks from the injection point on, final norm and readout: logits (B, T, V)."""
        first = self.cfg.injection if self.cfg.is_free else self.cfg.n_layers
        for i in range(first, self.cfg.n_layers):
            kv = (x + r) if (i == first and r is not None) else None  # PAPER.md §2.6: R into k/v only
            x = self._block(i, x, kv, start, cache, attn_mask)
        return self.lm_head(self.norm(x))

    # ------------------------------------------------------------------ forward

    def forward(self, idx: Tensor, targets: Tensor | None = None, loss_mask: Tensor | None = None, *,
                z: ZSpec = "posterior", generator: torch.Generator | None = None,
                start: int = 0, cache: KVCache | None = None) -> ModelOutput:
        """Logits, and losses when ``targets`` is given.

        ``z`` (Free model only): "posterior" runs the encoder on ``idx`` (training; its CE
        has seen the scored tokens, so it is *not* an honest likelihood), "prior" draws
        uniform bits (honest), or a bool (B, T, H) tensor of explicit bits.
        """
        cfg = self.cfg
        if idx.dim() != 2:
            raise ValueError(f"idx must be (B, T) token ids; got shape {tuple(idx.shape)}")
        b, t = idx.shape
        x = self.trunk(idx, start, cache)
        out = ModelOutput(logits=x)  # placeholder, replaced below
        r = None
        if cfg.is_free:
            enc_logits = bits = None
            if isinstance(z, Tensor):
                if z.shape != (b, t, cfg.latent_bits) or z.dtype != torch.bool:
                    raise ValueError(f"z must be a bool tensor of shape {(b, t, cfg.latent_bits)}; "
                                     f"got {z.dtype} {tuple(z.shape)}")
                bits = z
            elif z == "prior":
                bits = uniform_bits((b, t), cfg.latent_bits, idx.device, generator)
            elif z == "posterior":
                enc_logits = self.encode(x)
            else:
                raise ValueError(f"z = {z!r}: allowed 'posterior', 'prior' or a bool tensor (B, T, H)")
            r, bits = self.post_sample(enc_logits, bits, generator)
            out.bits, out.enc_logits = bits, enc_logits
            if enc_logits is not None:
                out.kl = kl_per_bit(enc_logits).sum(-1)  # (B, T) nats, PAPER.md §3
        out.logits = self.head(x, start, cache, r)
        if targets is not None:
            self._losses(out, targets, loss_mask)
        return out

    def _losses(self, out: ModelOutput, targets: Tensor, loss_mask: Tensor | None) -> None:
        cfg = self.cfg
        logits = out.logits if out.logits.dtype == torch.float64 else out.logits.float()  # CE never below fp32
        ce_tok = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
        if loss_mask is None:
            loss_mask = torch.ones_like(targets, dtype=torch.bool)
        m = loss_mask.flatten().to(ce_tok.dtype)
        out.ce_sum = (ce_tok * m).sum()
        out.n_scored = m.sum()
        out.ce = out.ce_sum / out.n_scored.clamp_min(1.0)
        out.kl_loss = torch.zeros((), device=targets.device)
        if out.kl is not None:
            # Per-token free bits (PAPER.md §3): (1/T) Σ_t max(0, KL_t − κ), over every
            # position that carries a latent, scored or not.
            if cfg.free_bits_scope == "token":
                out.kl_loss = free_bits_penalty(out.kl, cfg.kappa_nats)
            else:
                # DEVIATION (not in the paper): one budget T·κ on each sequence's total KL,
                # normalised like the paper's term (per token).
                t = out.kl.shape[1]
                out.kl_loss = free_bits_penalty(out.kl.sum(1), t * cfg.kappa_nats) / t
            if cfg.kl_weight_below > 0:
                # DEVIATION (not in the paper): also charge KL below κ, pulling Q toward the prior.
                out.kl_loss = out.kl_loss + cfg.kl_weight_below * out.kl.clamp_max(cfg.kappa_nats).mean()
        out.loss = out.ce + out.kl_loss

    # ------------------------------------------------------------------ generation

    def new_cache(self, batch: int, max_len: int | None = None, dtype: torch.dtype | None = None) -> KVCache:
        p = self.tok_emb.weight
        cap = self.cfg.max_seq_len if max_len is None else max_len
        return KVCache(self.cfg.n_layers, batch, self.cfg.kv_heads, cap, self.cfg.head_dim,
                       dtype or p.dtype, p.device)


def _sample_next(logits: Tensor, temperature: float, top_k: int | None, generator: torch.Generator | None) -> Tensor:
    """Next token ids (B,) from last-position logits (B, V)."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@dataclass
class Generation:
    tokens: Tensor  # (B, P + n) prompt followed by the generated tokens
    bits: Tensor | None  # (B, P + n - 1, H): the Z used at every position that was fed
    logits: Tensor | None  # (B, n, V) logits that produced each new token (if asked)


@torch.no_grad()
def generate(model: FreeTransformer, prompt: Tensor, max_new_tokens: int, *,
             z_prompt: Literal["posterior", "prior"] = "posterior", bits: Tensor | None = None,
             temperature: float = 1.0, top_k: int | None = None, generator: torch.Generator | None = None,
             use_cache: bool = True, return_logits: bool = False) -> Generation:
    """Sample continuations of equal-length prompts (B, P) with a KV cache.

    Z follows the paper's inference (PAPER.md §2.7): the prompt is prefilled with Z from
    the encoder run on the prompt only (``z_prompt="posterior"``) or with uniform Z, and
    every new token gets an independent uniform Z.  ``bits`` (B, P + n - 1, H) fixes Z at
    every fed position instead (the paper's shared-Z groups).  ``use_cache=False``
    recomputes the whole prefix at every step (the reference for tests and benchmarks).
    """
    cfg = model.cfg
    if prompt.dim() != 2 or prompt.shape[1] < 1:
        raise ValueError(f"prompt must be (B, P) with P >= 1; got shape {tuple(prompt.shape)}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens = {max_new_tokens} must be >= 1")
    if temperature < 0:
        raise ValueError(f"temperature = {temperature} must be >= 0 (0 = greedy)")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k = {top_k} must be >= 1 or None")
    b, p = prompt.shape
    total = p + max_new_tokens
    if total - 1 > cfg.max_seq_len:
        raise ValueError(f"prompt length {p} + max_new_tokens {max_new_tokens} - 1 exceeds max_seq_len {cfg.max_seq_len}")
    dev = prompt.device
    if cfg.is_free:
        if bits is not None and (bits.shape != (b, total - 1, cfg.latent_bits) or bits.dtype != torch.bool):
            raise ValueError(f"bits must be bool of shape {(b, total - 1, cfg.latent_bits)}; "
                             f"got {bits.dtype} {tuple(bits.shape)}")
        if bits is None:
            bits = torch.empty(b, total - 1, cfg.latent_bits, dtype=torch.bool, device=dev)
            if z_prompt == "posterior":
                # Encoder on the prompt only: its Z never depends on tokens not yet generated.
                bits[:, :p] = sample_bits(model.encode(model.trunk(prompt)), generator)
            elif z_prompt == "prior":
                bits[:, :p] = uniform_bits((b, p), cfg.latent_bits, dev, generator)
            else:
                raise ValueError(f"z_prompt = {z_prompt!r}: allowed 'posterior' or 'prior'")
            bits[:, p:] = uniform_bits((b, total - 1 - p), cfg.latent_bits, dev, generator)
    elif bits is not None:
        raise ValueError("bits were given but the model has no latent (latent_bits = 0)")

    tokens = torch.empty(b, total, dtype=torch.long, device=dev)
    tokens[:, :p] = prompt
    step_logits = []
    cache = model.new_cache(b, total, dtype=_cache_dtype(model)) if use_cache else None
    pos = 0  # tokens fed so far
    for i in range(max_new_tokens):
        end = p + i  # feed tokens[:, pos:end]
        if cache is not None:
            z = bits[:, pos:end] if bits is not None else "prior"
            logits = model(tokens[:, pos:end], z=z, start=pos, cache=cache).logits[:, -1]
            pos = end
        else:
            z = bits[:, :end] if bits is not None else "prior"
            logits = model(tokens[:, :end], z=z).logits[:, -1]
        if return_logits:
            step_logits.append(logits.float())
        tokens[:, end] = _sample_next(logits, temperature, top_k, generator)
    return Generation(tokens=tokens, bits=bits,
                      logits=torch.stack(step_logits, 1) if return_logits else None)


def _cache_dtype(model: FreeTransformer) -> torch.dtype:
    dev = model.tok_emb.weight.device.type
    if torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return model.tok_emb.weight.dtype
