"""lm-evaluation-harness glue: ``FTStudyLM``, registered as lm-eval model ``ftstudy``.

    simple_evaluate(model=FTStudyLM("results/.../ckpt/model.pt", z_policy="posterior-context"), ...)
    python -m ftstudy.harness --model ftstudy --model_args checkpoint=PATH,z_samples=4 \\
        --include_path "$(python -m ftstudy.eval.suite path)" --tasks ftstudy_arithmetic

(``python -m ftstudy.harness`` is lm-eval's own command line with this module imported, so
that ``--model ftstudy`` is registered; every lm-eval option works as documented there.)

How Z is chosen for a Free model (a baseline has no Z; ``z_policy`` and ``z_samples`` do
nothing there):

- ``posterior-context`` (default, the paper's prefill-then-generate scheme): the encoder
  runs on the context tokens only (its attention keys are restricted to them); every
  scored or generated token gets a uniform (prior) Z.
- ``prior``: uniform Z everywhere; the encoder never runs.

The continuation never reaches the encoder under either policy.  ``z_samples = K``
averages the continuation's likelihood over K draws of Z in probability space
(log-mean-exp); ``is_greedy`` then asks whether each continuation token is the argmax of
the K-averaged next-token distribution.  Generation uses one draw.  Every draw comes from
a generator seeded by ``(seed, context tokens, draw index)``: scores do not depend on
batch composition or order, and every continuation of one context sees the same Z at the
context, so the probabilities of all one-token continuations sum to 1.

Contexts longer than the model's window are truncated on the left; a continuation longer
than the window is scored in pieces of half a window, each conditioned on all tokens before
it (the chain rule: still a normalised likelihood; each piece's encoder sees only the
tokens before that piece).  Generation with
no stop strings runs to ``max_gen_toks`` or to ``<|endoftext|>``; when the window fills,
generation continues on the last half window (the tokens keep their Z).
"""

from __future__ import annotations

import hashlib
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

from ftstudy.core.checkpoint import CheckpointError, load_model
from ftstudy.tasks.corpus import ByteTokenizer, DataError, FileTokenizer, tokenizer_from_spec, tokenizer_spec
from ftstudy.core.model import FreeTransformer

__all__ = ["FTStudyLM", "Z_POLICIES", "HarnessError", "SyntheticTokenizer", "main"]

Z_POLICIES = ("posterior-context", "prior")


class HarnessError(ValueError):
    """A request or argument the wrapper cannot score honestly."""


class SyntheticTokenizer:
    """The synthetic task's characters (``_ ! >`` and A–Z), for synthetic-task checkpoints."""

    eot_id = None

    def __init__(self) -> None:
        from ftstudy.tasks.synthetic import CharTokenizer
        self._t = CharTokenizer()
        self.vocab_size = self._t.vocab_size
        self.pad_id = 0

    def encode(self, text: str) -> list[int]:
        try:
            return self._t.encode(text)
        except ValueError as e:
            raise HarnessError(f"text {text[:40]!r} cannot be tokenized for a synthetic-task model: {e}") from e

    def decode(self, ids: Any) -> str:
        return self._t.decode([int(i) for i in ids])


Tokenizer = ByteTokenizer | FileTokenizer | SyntheticTokenizer


def _seed_of(seed: int, tokens: list[int], k: int, tag: str) -> int:
    h = hashlib.sha256(f"{tag}:{seed}:{k}:".encode() + torch.tensor(tokens, dtype=torch.int64).numpy().tobytes())
    return int.from_bytes(h.digest()[:8], "little") & ((1 << 63) - 1)


@register_model("ftstudy")
class FTStudyLM(TemplateLM):
    """An ftstudy checkpoint (baseline or Free) as an lm-eval model."""

    def __init__(self, checkpoint: str | Path, z_policy: str = "posterior-context", z_samples: int = 1,
                 seed: int = 0, batch_size: int | str = 16, device: str | None = None,
                 max_batch_size: int | None = None,
                 **kwargs: Any) -> None:
        super().__init__()
        if z_policy not in Z_POLICIES:
            raise HarnessError(f"z_policy = {z_policy!r} is not allowed; allowed: {list(Z_POLICIES)}")
        if not isinstance(z_samples, int) or isinstance(z_samples, bool) or z_samples < 1:
            raise HarnessError(f"z_samples = {z_samples!r} is not allowed: an integer >= 1")
        if str(batch_size).startswith("auto"):
            batch_size = 16  # no memory probing on CPU: a fixed batch
        try:
            batch_size = int(batch_size)
        except (TypeError, ValueError):
            raise HarnessError(f"batch_size = {batch_size!r} is not allowed: a positive integer or 'auto'") from None
        if batch_size < 1:
            raise HarnessError(f"batch_size = {batch_size} is not allowed: a positive integer")
        unknown = set(kwargs) - {"trust_remote_code", "dtype", "pretrained"}
        if unknown:
            raise HarnessError(f"unknown FTStudyLM argument(s) {sorted(unknown)}; allowed: checkpoint, z_policy, "
                               f"z_samples, seed, batch_size, device")
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        elif str(device).startswith("cuda") and not torch.cuda.is_available():
            # lm-eval's command line asks for cuda:0 unless told otherwise.
            print(f"[ftstudy.eval.harness] device {device!r} is not available here; using the CPU", file=sys.stderr)
            device = "cpu"
        try:
            model, cfg, raw = load_model(checkpoint, map_location=device)
        except CheckpointError as e:
            raise HarnessError(str(e)) from e
        self.model: FreeTransformer = model.eval()
        self.cfg = cfg
        self.checkpoint = str(checkpoint)
        self.z_policy, self.z_samples, self.seed = z_policy, z_samples, int(seed)
        self.batch_size = batch_size
        self._device = torch.device(device)
        spec = raw.get("tokenizer")
        try:
            if spec is not None:
                self.tok: Tokenizer = tokenizer_from_spec(spec)
            elif cfg.task.name == "tokens" and cfg.task.data_dir and Path(cfg.task.data_dir).is_dir():
                # A Lightning last.ckpt carries no tokenizer: take the training data's.
                self.tok = tokenizer_from_spec(tokenizer_spec(cfg.task.data_dir))
            elif cfg.task.name == "synthetic":
                self.tok = SyntheticTokenizer()
            else:
                raise HarnessError(f"checkpoint {checkpoint} has no tokenizer and is not a synthetic-task model")
        except DataError as e:
            raise HarnessError(f"checkpoint {checkpoint}: {e}") from e
        if self.tok.vocab_size > cfg.model.vocab_size:
            raise HarnessError(f"checkpoint {checkpoint}: tokenizer vocabulary {self.tok.vocab_size} exceeds the "
                               f"model's vocab_size {cfg.model.vocab_size}")

    # ------------------------------------------------------------------ lm-eval plumbing

    @property
    def eot_token_id(self) -> int:
        if self.tok.eot_id is None:
            raise HarnessError("this checkpoint's tokenizer (synthetic task) has no end-of-text token, so an "
                               "empty context cannot be scored; give a non-empty context")
        return self.tok.eot_id

    @property
    def max_length(self) -> int:
        return self.cfg.model.max_seq_len

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def tokenizer_name(self) -> str:
        return f"ftstudy-{type(self.tok).__name__}"

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        return self.tok.encode(string)

    def tok_decode(self, tokens: Any) -> str:
        return self.tok.decode(tokens)

    @property
    def is_free(self) -> bool:
        return self.cfg.model.is_free

    # ------------------------------------------------------------------ Z

    def _bits(self, context: list[int], enc_logits: torch.Tensor | None, n: int, k: int) -> torch.Tensor:
        """Z (n, H) for one row: posterior at the len(enc_logits) context positions (if any), prior after."""
        h = self.cfg.model.latent_bits
        g = torch.Generator().manual_seed(_seed_of(self.seed, context, k, self.z_policy))
        n_post = 0 if enc_logits is None else enc_logits.shape[0]
        bits = torch.empty(n, h, dtype=torch.bool)
        if n_post:
            assert enc_logits is not None
            bits[:n_post] = torch.rand(n_post, h, generator=g) < torch.sigmoid(enc_logits.float().cpu())
        bits[n_post:] = torch.rand(n - n_post, h, generator=g) < 0.5
        return bits.to(self.device)

    # ------------------------------------------------------------------ likelihoods

    def _loglikelihood_tokens(self, requests: list[tuple[Any, list[int], list[int]]],
                              disable_tqdm: bool = False, **kwargs: Any) -> list[tuple[float, bool]]:
        win = self.max_length
        piece = max(1, win // 2)
        prepared = []
        owner = []  # request index of each prepared piece
        for i, (_, ctx, cont) in enumerate(requests):
            if len(ctx) == 0:
                raise HarnessError("a context of zero tokens cannot be scored (lm-eval's loglikelihood puts "
                                   "<|endoftext|> there for an empty context string)")
            if len(cont) == 0:
                raise HarnessError(f"request {i}: the continuation has zero tokens")
            ctx, cont = list(ctx), list(cont)
            # A continuation longer than the window is scored in pieces of half a window, each
            # conditioned on everything before it (chain rule); each piece's encoder sees only
            # the tokens before that piece.
            starts = [0] if len(cont) <= win else list(range(0, len(cont), piece))
            for s0 in starts:
                part = cont[s0:] if len(starts) == 1 else cont[s0:s0 + piece]
                whole = (ctx + cont[:s0] + part)[-(win + 1):]
                inp = whole[:-1]
                n_ctx = len(inp) - len(part) + 1  # context tokens left in the window (>= 1)
                prepared.append((len(prepared), inp, n_ctx, part))
                owner.append(i)
        # Longest first: padding is small and the first batch shows the memory peak.
        order = sorted(prepared, key=lambda r: -len(r[1]))
        scores: list[tuple[float, bool] | None] = [None] * len(prepared)
        bar = tqdm(total=len(order), desc="ftstudy loglikelihood", disable=disable_tqdm)
        for b0 in range(0, len(order), self.batch_size):
            chunk = order[b0:b0 + self.batch_size]
            for (k, *_), res in zip(chunk, self._score_batch(chunk)):
                scores[k] = res
            bar.update(len(chunk))
        bar.close()
        out = [(0.0, True) for _ in requests]
        for k, res in enumerate(scores):
            assert res is not None
            ll, greedy = out[owner[k]]
            out[owner[k]] = (ll + res[0], greedy and res[1])
        return out

    @torch.no_grad()
    def _score_batch(self, chunk: list[tuple[int, list[int], int, list[int]]]) -> list[tuple[float, bool]]:
        m = self.model
        b, t = len(chunk), max(len(r[1]) for r in chunk)
        idx = torch.full((b, t), self.tok.pad_id, dtype=torch.long)
        for j, (_, inp, _, _) in enumerate(chunk):
            idx[j, :len(inp)] = torch.tensor(inp)
        idx = idx.to(self.device)
        # Right padding: causal attention never lets a real token see a pad.
        x = m.trunk(idx)
        draws: list[torch.Tensor]  # K x (B, T, V) log-probs
        if not self.is_free:
            draws = [F.log_softmax(m.head(x).float(), -1)]
        else:
            enc = None
            if self.z_policy == "posterior-context":
                pos = torch.arange(t, device=self.device)
                n_ctx = torch.tensor([r[2] for r in chunk], device=self.device)
                # Keys restricted to each row's context; each query may also see itself so a
                # position past the context never attends to nothing (its Z is not used).
                keys = (pos[None, :] < n_ctx[:, None])[:, None, None, :] | (pos[:, None] == pos[None, :])[None, None]
                enc = m.encode(x, attn_mask=keys)
            draws = []
            for k in range(self.z_samples):
                bits = torch.zeros(b, t, self.cfg.model.latent_bits, dtype=torch.bool, device=self.device)
                for j, (_, inp, n_ctx_j, _) in enumerate(chunk):
                    ctx_tokens = inp[:n_ctx_j]
                    bits[j, :len(inp)] = self._bits(ctx_tokens, None if enc is None else enc[j, :n_ctx_j],
                                                    len(inp), k)
                r, _ = m.post_sample(None, bits)
                draws.append(F.log_softmax(m.head(x, r=r).float(), -1))
        results = []
        for j, (_, inp, n_ctx_j, cont) in enumerate(chunk):
            c = len(cont)
            sl = slice(len(inp) - c, len(inp))  # logits that predict the continuation
            target = torch.tensor(cont, device=self.device)
            per_draw = torch.stack([d[j, sl].gather(-1, target[:, None]).squeeze(-1).sum() for d in draws])
            ll = float(torch.logsumexp(per_draw.double(), 0) - math.log(len(draws)))
            mix = torch.logsumexp(torch.stack([d[j, sl] for d in draws]), 0)  # (c, V) K-averaged (log, unnormalised)
            greedy = bool((mix.argmax(-1) == target).all())
            results.append((ll, greedy))
        return results

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of whole documents, in disjoint windows of the model's length; each
        window's context (the tokens before it) is all its encoder may see."""
        out = []
        for req in tqdm(requests, desc="ftstudy rolling", disable=disable_tqdm):
            (text,) = req.args
            tokens = self.tok_encode(text)
            if not tokens:
                out.append(0.0)
                continue
            windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
                token_list=tokens, prefix_token=self.eot_token_id, max_seq_len=self.max_length, context_len=1)]
            scores = self._loglikelihood_tokens([(None, ctx, cont) for ctx, cont in windows], disable_tqdm=True)
            out.append(sum(s for s, _ in scores))
        return out

    # ------------------------------------------------------------------ generation

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        groups: dict[str, list[tuple[int, str, dict[str, Any]]]] = defaultdict(list)
        for i, req in enumerate(requests):
            context, gen_kwargs = req.args
            kw = dict(gen_kwargs or {})
            groups[repr(sorted(kw.items()))].append((i, context, kw))
        out: list[str | None] = [None] * len(requests)
        bar = tqdm(total=len(requests), desc="ftstudy generate", disable=disable_tqdm)
        for items in groups.values():
            kw = items[0][2]
            until, max_gen, temperature = self._gen_args(kw)
            encoded = []
            seen: dict[str, int] = defaultdict(int)
            for i, context, _ in items:
                ids = self.tok_encode(context)
                if not ids:
                    if self.tok.eot_id is None:
                        raise HarnessError("generation from an empty context needs an end-of-text token, which "
                                           "this tokenizer (synthetic task) does not have")
                    ids = [self.tok.eot_id]
                # Repeats of one prompt (e.g. the synthetic task's 20 per letter) get their own
                # draws: the k-th occurrence in request order uses draw index k.
                encoded.append((i, ids, seen[context]))
                seen[context] += 1
            encoded.sort(key=lambda r: -len(r[1]))
            for b0 in range(0, len(encoded), self.batch_size):
                chunk = encoded[b0:b0 + self.batch_size]
                texts = self._generate_batch([ids for _, ids, _ in chunk], until, max_gen, temperature,
                                             draws=[k for _, _, k in chunk])
                for (i, _, _), text in zip(chunk, texts):
                    out[i] = text
                bar.update(len(chunk))
        bar.close()
        return out  # type: ignore[return-value]

    def _gen_args(self, kw: dict[str, Any]) -> tuple[list[str], int, float]:
        until = kw.pop("until", None)
        if until is None:
            until = []
        if isinstance(until, str):
            until = [until]
        if not isinstance(until, list) or not all(isinstance(u, str) for u in until):
            raise HarnessError(f"until = {until!r} is not allowed: a string or a list of strings")
        until = [u for u in until if u]
        max_gen = int(kw.pop("max_gen_toks", 256))
        if max_gen < 1:
            raise HarnessError(f"max_gen_toks = {max_gen} is not allowed: >= 1")
        do_sample = bool(kw.pop("do_sample", False))
        temperature = float(kw.pop("temperature", 1.0 if do_sample else 0.0))
        if temperature < 0:
            raise HarnessError(f"temperature = {temperature} is not allowed: >= 0 (0 = greedy)")
        if not do_sample:
            temperature = 0.0
        kw.pop("top_k", None), kw.pop("top_p", None)  # accepted, ignored: plain temperature sampling
        return until, max_gen, temperature

    @torch.no_grad()
    def _generate_batch(self, prompts: list[list[int]], until: list[str], max_gen: int,
                        temperature: float, draws: list[int] | None = None) -> list[str]:
        """Left-padded batch generation with a KV cache; per-row seeded Z and sampling
        (``draws[j]``: which draw of row j's prompt this is)."""
        m, win, dev = self.model, self.max_length, self.device
        b = len(prompts)
        draws = draws or [0] * b
        prompts = [p[-(win - 1):] for p in prompts]  # leave room for at least one new token
        p_len = max(len(p) for p in prompts)
        total = p_len + max_gen
        tokens = torch.full((b, total), self.tok.pad_id, dtype=torch.long, device=dev)
        valid = torch.zeros(b, total, dtype=torch.bool, device=dev)
        for j, p in enumerate(prompts):
            tokens[j, p_len - len(p):p_len] = torch.tensor(p)
            valid[j, p_len - len(p):p_len] = True
        valid[:, p_len:] = True
        gens = [torch.Generator().manual_seed(_seed_of(self.seed, p, k, "sample")) for p, k in zip(prompts, draws)]
        bits = None
        if self.is_free:
            h = self.cfg.model.latent_bits
            bits = torch.zeros(b, total, h, dtype=torch.bool, device=dev)
            enc = None
            if self.z_policy == "posterior-context":
                x = m.trunk(tokens[:, :p_len], attn_mask=self._prefill_mask(valid[:, :p_len]))
                pos = torch.arange(p_len, device=dev)
                keys = valid[:, None, None, :p_len] | (pos[:, None] == pos[None, :])[None, None]
                enc = m.encode(x, attn_mask=keys)
            for j, p in enumerate(prompts):
                row = self._bits(p, None if enc is None else enc[j, p_len - len(p):p_len], len(p) + max_gen,
                                 draws[j])
                bits[j, p_len - len(p):] = row
        done = torch.zeros(b, dtype=torch.bool, device=dev)
        n_new = 0
        start = 0  # first column inside the current window
        end = p_len  # columns [start, end) are fed; the next token goes to column end
        cache = None
        fed = start
        while n_new < max_gen and not bool(done.all()):
            if cache is None:
                cache = m.new_cache(b, win)
                fed = start
            seg = slice(fed, end)
            if fed == start:
                mask = self._prefill_mask(valid[:, start:end])
            else:
                mask = valid[:, None, None, start:end]
            z = None if bits is None else bits[:, seg]
            x = m.trunk(tokens[:, seg], start=fed - start, cache=cache, attn_mask=mask)
            r = None
            if z is not None:
                r, _ = m.post_sample(None, z)
            logits = m.head(x, start=fed - start, cache=cache, r=r, attn_mask=mask)[:, -1].float()
            nxt = self._next_tokens(logits, temperature, gens)
            nxt[done] = self.tok.pad_id
            tokens[:, end] = nxt
            fed = end
            end += 1
            n_new += 1
            for j in range(b):
                if done[j]:
                    continue
                if self.tok.eot_id is not None and int(nxt[j]) == self.tok.eot_id:
                    done[j] = True
                elif until:
                    text = self.tok.decode(tokens[j, p_len:end].tolist())
                    if any(u in text for u in until):
                        done[j] = True
            if end - start >= win and n_new < max_gen:
                # Window full: continue on the last half window (tokens keep their Z).
                start = end - win // 2
                cache = None
        texts = []
        for j in range(b):
            ids = tokens[j, p_len:p_len + n_new].tolist()
            if self.tok.eot_id is not None and self.tok.eot_id in ids:
                ids = ids[:ids.index(self.tok.eot_id)]
            text = self.tok.decode(ids)
            cut = min((text.find(u) for u in until if u in text), default=-1)
            texts.append(text[:cut] if cut >= 0 else text)
        return texts

    @staticmethod
    def _prefill_mask(valid: torch.Tensor) -> torch.Tensor:
        """(B, 1, T, T): causal, pads invisible as keys (each query still sees itself)."""
        t = valid.shape[1]
        pos = torch.arange(t, device=valid.device)
        causal = pos[None, :] <= pos[:, None]
        return (causal[None] & (valid[:, None, :] | (pos[:, None] == pos[None, :])[None]))[:, None]

    @staticmethod
    def _next_tokens(logits: torch.Tensor, temperature: float, gens: list[torch.Generator]) -> torch.Tensor:
        if temperature == 0:
            return logits.argmax(-1)
        probs = torch.softmax(logits / temperature, -1).cpu()
        u = torch.stack([torch.rand(1, generator=g) for g in gens])  # (B, 1), one draw per row
        cdf = probs.cumsum(-1)
        return torch.searchsorted(cdf, u * cdf[:, -1:]).squeeze(-1).clamp_max(probs.shape[-1] - 1).to(logits.device)


def main(argv: list[str] | None = None) -> None:
    """lm-eval's command line with ``--model ftstudy`` registered."""
    from lm_eval.__main__ import cli_evaluate
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()
