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
stream.  How Z is chosen is the ``z`` argument of the one forward pass (``ZSpec`` below);
callers never wire the parts (``_trunk``, ``_encode``, ``_post_sample``, ``_head``)
themselves.  ``generate()`` is the one token loop: at generation the encoder is not run for
new tokens, each gets a uniform Z.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ftstudy.core.config import ModelConfig, check_sampling
from ftstudy.core.latent import (
    Generators,
    binary_mapper,
    bit_log_probs,
    codes_from_bits,
    factored_mapper,
    free_bits_penalty,
    kl_per_bit,
    marginal_penalty,
    per_row,
    prior_bits,
    sample_bits,
)

__all__ = ["FreeTransformer", "ModelOutput", "KVCache", "Generation", "ZSpec", "ZPolicy", "Z_POLICIES", "generate",
           "sample_tokens", "check_sampling"]

# How Z is chosen for a forward pass (the ``z`` argument of ``FreeTransformer.forward``):
#   "prior"             uniform bits; the encoder never runs (honest evaluation);
#   "posterior-context" the encoder sees only the context tokens (``context``; default: every
#                       real token given) and gives their Z; every other position gets a prior
#                       Z (the paper's prefill-then-generate inference; honest when the scored
#                       tokens are outside the context);
#   "posterior-leaky"   the encoder sees every token and gives every Z: what training optimises
#                       and what the ELBO needs, but as an evaluation it leaks the scored tokens;
#   a bool tensor (B, T, H) of explicit bits (shared-Z groups, Z drawn elsewhere).
ZPolicy = Literal["prior", "posterior-context", "posterior-leaky"]
Z_POLICIES: tuple[str, ...] = ("prior", "posterior-context", "posterior-leaky")
ZSpec = ZPolicy | Tensor


class RotaryEmbedding(nn.Module):
    """RoPE (Su et al. 2021), rotate-half convention, table precomputed for max_seq_len."""

    def __init__(self, head_dim: int, max_seq_len: int, base: float) -> None:
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
        angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float64), inv_freq)  # (S, hd/2)
        self.register_buffer("cos", angles.cos().float(), persistent=False)
        self.register_buffer("sin", angles.sin().float(), persistent=False)

    def forward(self, x: Tensor, start: int | Tensor) -> Tensor:
        """x: (B, nh, T, hd) at positions start … start+T-1 (``start`` a 0-d tensor: a static
        decode step, whose caller keeps it in range)."""
        t = x.shape[-2]
        if isinstance(start, Tensor):
            pos = start + torch.arange(t, device=x.device)
            return _rotate(x, self.cos[pos].to(x.dtype), self.sin[pos].to(x.dtype))
        if start + t > self.cos.shape[0]:
            raise ValueError(f"position {start + t - 1} is beyond max_seq_len = {self.cos.shape[0]}")
        cos = self.cos[start:start + t].to(x.dtype)  # (T, hd/2)
        sin = self.sin[start:start + t].to(x.dtype)
        return _rotate(x, cos, sin)


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class KVCache:
    """Preallocated keys/values for every decoder block: (B, n_kv_heads, max_len, hd) each.

    Written at a Python ``start`` (prefill, and eager decoding), attention sees the filled
    part. Written at a 0-d tensor ``start`` (a static decode step), it sees the whole buffer,
    masked past each query's position: every step has the same shapes and the buffers never
    move, so a compiled step can be captured once (CUDA graphs) and replayed."""

    def __init__(self, n_layers: int, batch: int, n_kv_heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device, static: bool = False) -> None:
        shape = (batch, n_kv_heads, max_len, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        if static:
            from torch._dynamo import mark_static_address

            for buf in (*self.k, *self.v):
                mark_static_address(buf)  # written in place by a captured step
        self.max_len = max_len

    def update(self, layer: int, start: int | Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        if isinstance(start, Tensor):
            pos = start + torch.arange(k.shape[2], device=k.device)
            self.k[layer].index_copy_(2, pos, k)
            self.v[layer].index_copy_(2, pos, v)
            return self.k[layer], self.v[layer]
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
                start: int | Tensor = 0, cache: KVCache | None = None, layer: int = 0,
                attn_mask: Tensor | None = None) -> Tensor:
        """``attn_mask`` (bool, broadcastable to (B, nh, T, S_total), True = may attend)
        replaces the causal rule when given: padded batches pass their own. A tensor
        ``start`` (a static decode step) attends over the whole cache, masked past each query."""
        b, t, _ = xq.shape
        s = xkv.shape[1]
        q = self.wq(xq).view(b, t, self.n_heads, self.hd).transpose(1, 2)  # (B, nh, T, hd)
        k, v = self.wkv(xkv).view(b, s, 2, self.n_kv, self.hd).permute(2, 0, 3, 1, 4)  # 2 x (B, nkv, S, hd)
        if rope is not None:
            q, k = rope(q, start), rope(k, start)
        mask = attn_mask
        if isinstance(start, Tensor):
            assert cache is not None, "a tensor start is a static decode step: it needs a KV cache"
            k, v = cache.update(layer, start, k, v)  # (B, nkv, max_len, hd)
            seen = torch.arange(k.shape[2], device=xq.device)[None, :] <= \
                (start + torch.arange(t, device=xq.device))[:, None]  # (T, max_len)
            mask, causal = (seen if attn_mask is None else attn_mask & seen), False
        elif attn_mask is not None:
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
                start: int | Tensor = 0, cache: KVCache | None = None, layer: int = 0,
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
    enc_logits: Tensor | None = None  # (B, T, H): encoder logits (posterior policies only)
    kl: Tensor | None = None  # (B, T) KL(Q(Z_t|S) || U) in nats ("posterior-leaky" only)
    log_q: Tensor | None = None  # (B, T, H) log Q of each drawn bit, nats, no gradient ("posterior-leaky" only)
    ce: Tensor | None = None  # masked mean next-token cross-entropy, nats
    ce_sum: Tensor | None = None  # masked sum of cross-entropies (for exact aggregation)
    n_scored: Tensor | None = None  # number of scored targets
    kl_loss: Tensor | None = None  # the free-bits term added to the loss
    loss: Tensor | None = None  # ce + kl_loss (+ marginal_weight x marginal_kl): what training minimises (PAPER.md §3)
    marginal_kl: Tensor | None = None  # aggregate-marginal penalty, nats (only when ModelConfig.marginal_weight > 0)


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

    # ------------------------------------------------------------------ parts (private: callers use forward)

    def _trunk(self, idx: Tensor, start: int | Tensor = 0, cache: KVCache | None = None,
               attn_mask: Tensor | None = None) -> Tensor:
        """Embedding and the blocks before the injection point: X, (B, T, D)."""
        x = self.tok_emb(idx)
        n = self.cfg.injection if self.cfg.is_free else self.cfg.n_layers
        for i in range(n):
            x = self._block(i, x, None, start, cache, attn_mask)
        return x

    def _block(self, i: int, x: Tensor, kv: Tensor | None, start: int | Tensor, cache: KVCache | None,
               attn_mask: Tensor | None) -> Tensor:
        """Block ``i``; with ``activation_checkpointing`` (training only) its activations are
        recomputed in the backward pass instead of stored (less memory, one more forward)."""
        block = self.blocks[i]
        if self.activation_checkpointing and self.training and cache is None and torch.is_grad_enabled():
            return checkpoint(lambda a, b: block(a, b, rope=self.rope, start=start, cache=None, layer=i,
                                                 attn_mask=attn_mask), x, kv, use_reentrant=False)
        return block(x, kv, rope=self.rope, start=start, cache=cache, layer=i, attn_mask=attn_mask)

    def _encode(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        """Encoder logits L (B, T, H) from the trunk output X: ζ queries, X keys/values, no
        mask (``attn_mask`` restricts the keys, e.g. to a padded batch's context tokens)."""
        b, t, d = x.shape
        zeta = self.zeta.to(x.dtype).expand(b, t, d)  # ζ repeated at every position
        rope = self.rope if self.cfg.encoder_positions == "rope" else None
        h = self.encoder(zeta, x, rope=rope, causal=False, attn_mask=attn_mask)
        return self.enc_head(self.enc_norm(h))

    def _post_sample(self, enc_logits: Tensor | None, bits: Tensor | None,
                     generator: Generators = None) -> tuple[Tensor, Tensor]:
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
        assert bits is not None or not per_row(generator)
        return mapper(enc_logits.float(), w, bits=bits, generator=generator)  # type: ignore[arg-type]

    def _head(self, x: Tensor, start: int | Tensor = 0, cache: KVCache | None = None, r: Tensor | None = None,
              attn_mask: Tensor | None = None) -> Tensor:
        """Blocks from the injection point on, final norm and readout: logits (B, T, V)."""
        first = self.cfg.injection if self.cfg.is_free else self.cfg.n_layers
        for i in range(first, self.cfg.n_layers):
            kv = (x + r) if (i == first and r is not None) else None  # PAPER.md §2.6: R into k/v only
            x = self._block(i, x, kv, start, cache, attn_mask)
        return self.lm_head(self.norm(x))

    # ------------------------------------------------------------------ forward

    def forward(self, idx: Tensor, targets: Tensor | None = None, loss_mask: Tensor | None = None, *,
                z: ZSpec = "posterior-leaky", generator: Generators = None, context: Tensor | None = None,
                valid: Tensor | None = None, start: int | Tensor = 0, cache: KVCache | None = None) -> ModelOutput:
        """Logits, and losses when ``targets`` is given.

        ``z`` (Free model only; see ``ZSpec``): "posterior-leaky" (the default: training),
        "posterior-context", "prior" or a bool (B, T, H) tensor of explicit bits.

        ``generator``: where Z is drawn from: one generator, or one per row (a list of B; each
        row's Z then depends on nothing else in the batch, see ``latent.sample_bits``).
        ``context`` (bool (B, T), "posterior-context" only): the tokens the encoder may see and
        whose Z it gives; default every real token.  ``valid`` (bool (B, start + T)): which
        positions of the cache and of ``idx`` are real tokens; padding is never attended to
        (left-padded batches) and gets False bits.  ``start``/``cache``: incremental decoding
        with a KV cache (explicit bits or prior Z only); a 0-d tensor ``start`` is a static
        decode step (the same shapes at every position; ``valid`` then covers the whole cache).
        """
        x, enc, mask = self._prepare(idx, z, context, valid, start, cache)
        return self._finish(idx, x, enc, mask, targets, loss_mask, z, generator, context, valid, start, cache)

    def draws(self, idx: Tensor, targets: Tensor | None = None, loss_mask: Tensor | None = None, *,
              z: ZSpec, generators: Sequence[Generators], context: Tensor | None = None,
              valid: Tensor | None = None) -> Iterator[ModelOutput]:
        """Several draws of Z for one input, one output per entry of ``generators`` (each as
        ``forward``'s ``generator``), made lazily in order: the blocks before the injection
        and the encoder run once, the rest once per draw (importance sampling, averages over Z)."""
        x, enc, mask = self._prepare(idx, z, context, valid, 0, None)

        def outputs() -> Iterator[ModelOutput]:
            for g in generators:
                yield self._finish(idx, x, enc, mask, targets, loss_mask, z, g, context, valid, 0, None)
        return outputs()

    def _prepare(self, idx: Tensor, z: ZSpec, context: Tensor | None, valid: Tensor | None, start: int | Tensor,
                 cache: KVCache | None) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Checks, the attention mask, the trunk X and (posterior policies) the encoder logits."""
        cfg = self.cfg
        if idx.dim() != 2:
            raise ValueError(f"idx must be (B, T) token ids; got shape {tuple(idx.shape)}")
        b, t = idx.shape
        if not isinstance(z, Tensor) and z not in Z_POLICIES:
            hint = " (renamed: 'posterior-leaky' is the training one, 'posterior-context' the honest one)" \
                if z == "posterior" else ""
            raise ValueError(f"z = {z!r}: allowed {', '.join(map(repr, Z_POLICIES))} or a bool tensor (B, T, H){hint}")
        static = isinstance(start, Tensor)
        if static and cache is None:
            raise ValueError("a tensor start is a static decode step: give its KV cache")
        n_keys = cache.max_len if static else start + t  # type: ignore[union-attr]
        if valid is not None and (valid.shape != (b, n_keys) or valid.dtype != torch.bool):
            raise ValueError(f"valid must be a bool tensor of shape {(b, n_keys)} (cache then idx"
                             f"{'; the whole cache for a static step' if static else ''}); "
                             f"got {valid.dtype} {tuple(valid.shape)}")
        if context is not None:
            if isinstance(z, Tensor) or z != "posterior-context":
                raise ValueError("context is for z = 'posterior-context' only")
            if context.shape != (b, t) or context.dtype != torch.bool:
                raise ValueError(f"context must be a bool tensor of shape {(b, t)}; got {context.dtype} "
                                 f"{tuple(context.shape)}")
        mask = _attention_mask(valid, start, t)
        x = self._trunk(idx, start, cache, mask)
        enc = None
        if cfg.is_free and isinstance(z, str) and z != "prior":
            if static or start > 0:
                raise ValueError(f"z = {z!r} runs the encoder on the whole sequence: not with a KV cache past "
                                 f"position 0 (give explicit bits or 'prior')")
            keys = context if context is not None else valid
            enc = self._encode(x, None if keys is None else _or_self(keys))
        return x, enc, mask

    def _finish(self, idx: Tensor, x: Tensor, enc: Tensor | None, mask: Tensor | None, targets: Tensor | None,
                loss_mask: Tensor | None, z: ZSpec, generator: Generators, context: Tensor | None,
                valid: Tensor | None, start: int | Tensor, cache: KVCache | None) -> ModelOutput:
        """Z, R, the blocks from the injection point on, and the losses."""
        cfg = self.cfg
        out = ModelOutput(logits=x)  # placeholder, replaced below
        r = None
        if cfg.is_free:
            rows = None if valid is None else (
                valid.index_select(1, start + torch.arange(idx.shape[1], device=idx.device))
                if isinstance(start, Tensor) else valid[:, start:])
            leaky = isinstance(z, str) and z == "posterior-leaky"
            bits = None
            if not leaky or rows is not None or per_row(generator):
                bits = self._z_bits(z, enc, idx.shape, idx.device, generator, context, rows)
            # "posterior-leaky" with one generator: the mapper draws the bits itself.
            r, bits = self._post_sample(enc if leaky else None, bits, generator)
            out.bits, out.enc_logits = bits, enc
            if leaky:
                assert enc is not None
                out.kl = kl_per_bit(enc).sum(-1)  # (B, T) nats, PAPER.md §3
                out.log_q = bit_log_probs(enc.detach(), bits)
        out.logits = self._head(x, start, cache, r, mask)
        if targets is not None:
            self._losses(out, targets, loss_mask)
        return out

    def _z_bits(self, z: ZSpec, enc: Tensor | None, shape: tuple[int, int] | torch.Size, device: torch.device,
                generator: Generators, context: Tensor | None, rows: Tensor | None) -> Tensor:
        """The bits (B, T, H) of a Z policy, given the encoder logits of the posterior ones."""
        h = self.cfg.latent_bits
        b, t = shape
        if isinstance(z, Tensor):
            if z.shape != (b, t, h) or z.dtype != torch.bool:
                raise ValueError(f"z must be a bool tensor of shape {(b, t, h)}; got {z.dtype} {tuple(z.shape)}")
            return z
        if z == "prior":
            return prior_bits((b, t), h, device, generator, rows)
        assert enc is not None
        if context is not None:
            enc = enc.masked_fill(~context[..., None], 0.0)  # logit 0: a fair coin (prior Z) outside the context
        return sample_bits(enc, generator, rows)

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
        if out.kl is not None and cfg.marginal_weight > 0:
            # DEVIATION (not in the paper): pull each bit's aggregate posterior marginal over the
            # scored positions towards 1/2, so that the uniform prior's codes are ones the decoder
            # saw in training; per-token KL below κ stays free.  Weight 0 skips it entirely.
            assert out.enc_logits is not None
            out.marginal_kl = marginal_penalty(out.enc_logits, loss_mask)
            out.loss = out.loss + cfg.marginal_weight * out.marginal_kl

    # ------------------------------------------------------------------ generation

    def new_cache(self, batch: int, max_len: int | None = None, dtype: torch.dtype | None = None,
                  static: bool = False) -> KVCache:
        p = self.tok_emb.weight
        cap = self.cfg.max_seq_len if max_len is None else max_len
        return KVCache(self.cfg.n_layers, batch, self.cfg.kv_heads, cap, self.cfg.head_dim,
                       dtype or p.dtype, p.device, static)


def _attention_mask(valid: Tensor | None, start: int | Tensor, t: int) -> Tensor | None:
    """(B, 1, T, S) bool for queries at start … start+T-1 of a batch with padding, over the S
    keys of ``valid`` (start + T, or a static step's whole cache): causal, padding invisible as
    keys (each query still sees itself); None without padding."""
    if valid is None:
        return None
    q = (start + torch.arange(t, device=valid.device))[:, None]
    k = torch.arange(valid.shape[1], device=valid.device)[None, :]
    return ((k <= q)[None] & (valid[:, None, :] | (k == q)[None]))[:, None]


def _or_self(keys: Tensor) -> Tensor:
    """Encoder key mask (B, 1, T, T) from allowed keys (B, T): each query may also see its own
    position, so that a position with no allowed key never attends to nothing (its Z is unused)."""
    pos = torch.arange(keys.shape[1], device=keys.device)
    return keys[:, None, None, :] | (pos[:, None] == pos[None, :])[None, None]


def sample_tokens(logits: Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                  generator: Generators = None) -> Tensor:
    """Next token ids (B,) from last-position logits (B, V): the argmax at temperature 0, else a
    draw from softmax(logits / temperature) cut to the ``top_k`` most likely tokens and to the
    ``top_p`` nucleus (the fewest most likely tokens whose probability reaches top_p).

    One generator: ``torch.multinomial`` over the batch.  One generator per row (a list):
    inverse CDF with one uniform per row from its generator, so a row's token does not depend
    on the rest of the batch.
    """
    check_sampling(temperature, top_k, top_p)
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    v = logits.shape[-1]
    if top_k is not None and top_k < v:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        p = torch.softmax(sorted_logits, dim=-1)
        beyond = p.cumsum(-1) - p >= top_p  # the mass before this token already reaches top_p
        logits = logits.masked_fill(beyond.scatter(-1, order, beyond), float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if not per_row(generator):
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # type: ignore[arg-type]
    assert isinstance(generator, (list, tuple))
    if len(generator) != logits.shape[0]:
        raise ValueError(f"{len(generator)} generators for a batch of {logits.shape[0]} rows")
    u = torch.stack([torch.rand(1, generator=g, device=g.device).cpu() for g in generator])  # (B, 1)
    cdf = probs.cpu().cumsum(-1)
    return torch.searchsorted(cdf, u * cdf[:, -1:]).squeeze(-1).clamp_max(v - 1).to(logits.device)


@dataclass
class Generation:
    tokens: Tensor  # (B, P + n): the prompt (as fed: left-padded, at most max_seq_len - 1) then n new tokens
    bits: Tensor | None  # (B, P + max_new_tokens - 1, H): the Z of every position that is or would be fed
    logits: Tensor | None  # (B, n, V) logits that produced each new token (if asked)
    mask: Tensor | None = None  # (B, P + n) bool, False at padding (when a prompt_mask was given)


@torch.no_grad()
def generate(model: FreeTransformer, prompt: Tensor, max_new_tokens: int, *, prompt_mask: Tensor | None = None,
             pad_id: int = 0, z_prompt: Literal["posterior-context", "prior"] = "posterior-context",
             bits: Tensor | None = None, temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None, generator: Generators = None, z_generator: Generators = None,
             eos_id: int | None = None, stop: Callable[[Tensor, Tensor], Tensor] | None = None,
             use_cache: bool = True, return_logits: bool = False, static: bool = False) -> Generation:
    """Sample continuations of prompts (B, P) with a KV cache: the one token loop.

    Z follows the paper's inference (PAPER.md §2.7): the prompt gets Z from the encoder run on
    the prompt only (``z_prompt="posterior-context"``) or uniform Z, and every new token an
    independent uniform Z.  ``bits`` (B, P + max_new_tokens - 1, H) fixes Z at every fed
    position instead (the paper's shared-Z groups).

    - ``prompt_mask`` (bool (B, P)): prompts of different lengths, left-padded (False at
      padding, which no token attends to); the new tokens follow column P in every row.
    - Window: at most ``max_seq_len - 1`` tokens are fed at once.  A longer prompt keeps its
      last ``max_seq_len - 1`` columns; when the window is full before the end, generation
      goes on from the last half window (the oldest tokens are dropped and the rest
      re-prefilled at positions from 0; tokens keep their Z).
    - Sampling: ``temperature`` (0 = greedy), ``top_k``, ``top_p`` (see ``sample_tokens``).
    - ``generator`` draws the tokens and ``z_generator`` (default: ``generator``) the Z; either
      may be one generator per row (a list), making each row independent of its batch.
    - Stopping: a row stops after ``eos_id`` or when ``stop(new_tokens (B, n), active (B,))``
      returns True for it (rows already stopped get ``pad_id``); the loop ends when every
      row has stopped or after ``max_new_tokens``.
    - ``use_cache=False`` recomputes the whole window at every step (the reference for tests
      and benchmarks).
    - ``static=True``: after each prefill, every one-token step has the same shapes (the
      position is a 0-d tensor, attention covers the whole cache, masked), so ``model`` may be
      ``torch.compile(model, mode="reduce-overhead")``, whose step is captured once as a CUDA
      graph and replayed. The same tokens as the default path (tests).
    """
    cfg = model.cfg
    if prompt.dim() != 2 or prompt.shape[1] < 1:
        raise ValueError(f"prompt must be (B, P) with P >= 1; got shape {tuple(prompt.shape)}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens = {max_new_tokens} must be >= 1")
    check_sampling(temperature, top_k, top_p)
    b, p = prompt.shape
    for name, g in (("generator", generator), ("z_generator", z_generator)):
        if per_row(g) and len(g) != b:  # type: ignore[arg-type]
            raise ValueError(f"{name}: {len(g)} generators for {b} prompts")  # type: ignore[arg-type]
    if prompt_mask is not None:
        if prompt_mask.shape != (b, p) or prompt_mask.dtype != torch.bool:
            raise ValueError(f"prompt_mask must be a bool tensor of shape {(b, p)}; got {prompt_mask.dtype} "
                             f"{tuple(prompt_mask.shape)}")
        if not bool(prompt_mask[:, -1].all()) or bool((prompt_mask[:, 1:] < prompt_mask[:, :-1]).any()):
            raise ValueError("prompt_mask must be left padding: in each row, False columns (if any) and then "
                             "True ones, at least one")
    win = cfg.max_seq_len
    if win < 2:
        raise ValueError(f"max_seq_len = {win}: generation needs a window of at least 2 tokens")
    if bits is not None and not cfg.is_free:
        raise ValueError("bits were given but the model has no latent (latent_bits = 0)")
    if bits is not None and (bits.shape != (b, p + max_new_tokens - 1, cfg.latent_bits) or bits.dtype != torch.bool):
        raise ValueError(f"bits must be bool of shape {(b, p + max_new_tokens - 1, cfg.latent_bits)}; "
                         f"got {bits.dtype} {tuple(bits.shape)}")
    if p > win - 1:  # drop the oldest prompt tokens: one free place for the first new token
        cut = p - (win - 1)
        prompt = prompt[:, cut:]
        prompt_mask = None if prompt_mask is None else prompt_mask[:, cut:]
        bits = None if bits is None else bits[:, cut:]
        p = win - 1
    dev = prompt.device
    total = p + max_new_tokens
    valid = None if prompt_mask is None else \
        torch.cat([prompt_mask, torch.ones(b, max_new_tokens, dtype=torch.bool, device=dev)], 1)
    if cfg.is_free and bits is None:
        bits = _generation_bits(model, prompt, total, z_prompt, generator if z_generator is None else z_generator,
                                None if valid is None else valid[:, :p])

    tokens = torch.full((b, total), pad_id, dtype=torch.long, device=dev)
    tokens[:, :p] = prompt
    step_logits = []
    done = torch.zeros(b, dtype=torch.bool, device=dev)
    cache = None
    first = 0  # first column of the current window
    fed = 0  # columns first … fed-1 are in the cache
    end = p  # the next token goes to column end
    window_valid = None  # static steps: the window's real columns, (B, win)
    while end - p < max_new_tokens and not bool(done.all()):
        if not use_cache:
            fed = first
        elif cache is None:
            cache = model.new_cache(b, win, dtype=_cache_dtype(model), static=static)
            fed = first
            if static and valid is not None:
                window_valid = torch.ones(b, win, dtype=torch.bool, device=dev)
                n = min(win, valid.shape[1] - first)
                window_valid[:, :n] = valid[:, first:first + n]
        cols = slice(fed, end)
        z = bits[:, cols] if bits is not None else "prior"
        if static and cache is not None and fed > first and end - fed == 1:  # a static one-token step
            pos = torch.full((), fed - first, dtype=torch.long, device=dev)
            out = model(tokens[:, cols], z=z, start=pos, cache=cache, valid=window_valid)
        else:
            out = model(tokens[:, cols], z=z, start=fed - first, cache=cache,
                        valid=None if valid is None else valid[:, first:end])
        logits = out.logits[:, -1].float()
        if static:
            logits = logits.clone()  # a captured step's output buffer is overwritten by the next replay
        if return_logits:
            step_logits.append(logits)
        nxt = sample_tokens(logits, temperature, top_k, top_p, generator)
        nxt[done] = pad_id
        tokens[:, end] = nxt
        if use_cache:
            fed = end
        end += 1
        if eos_id is not None:
            done |= nxt == eos_id
        if stop is not None and not bool(done.all()):
            done |= stop(tokens[:, p:end], ~done).to(dev)
        if end - first >= win and end - p < max_new_tokens:
            first = end - win // 2  # window full: go on from the last half window, re-prefilled
            cache = None
    return Generation(tokens=tokens[:, :end], bits=bits,
                      logits=torch.stack(step_logits, 1) if return_logits else None,
                      mask=None if valid is None else valid[:, :end])


def _generation_bits(model: FreeTransformer, prompt: Tensor, total: int, z_prompt: str, generator: Generators,
                     valid: Tensor | None) -> Tensor:
    """Z (B, total - 1, H) for generation: the prompt's by ``z_prompt``, then uniform."""
    if z_prompt not in ("posterior-context", "prior"):
        raise ValueError(f"z_prompt = {z_prompt!r}: allowed 'posterior-context' or 'prior'")
    b, p = prompt.shape
    enc = None
    if z_prompt == "posterior-context":
        # Encoder on the prompt only: its Z never depends on tokens not yet generated.
        _, enc, _ = model._prepare(prompt, z_prompt, None, valid, 0, None)
    head = model._z_bits(z_prompt, enc, (b, p), prompt.device, generator, None, valid)  # type: ignore[arg-type]
    tail = prior_bits((b, total - 1 - p), model.cfg.latent_bits, prompt.device, generator)
    return torch.cat([head, tail], 1)


def _cache_dtype(model: FreeTransformer) -> torch.dtype:
    dev = model.tok_emb.weight.device.type
    if torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return model.tok_emb.weight.dtype
