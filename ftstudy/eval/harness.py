"""lm-evaluation-harness glue: ``FTStudyLM``, registered as lm-eval model ``ftstudy``.

    simple_evaluate(model=FTStudyLM("results/.../ckpt/model.pt", z_policy="posterior-context"), ...)
    simple_evaluate(model=FTStudyLM(model=free_transformer, tokenizer=tok), ...)  # a model in memory
    python -m ftstudy.harness --model ftstudy --model_args checkpoint=PATH,z_samples=4 \\
        --include_path "$(python -m ftstudy.eval.suite path)" --tasks ftstudy_arithmetic

(``python -m ftstudy.harness`` is lm-eval's own command line with this module imported, so
that ``--model ftstudy`` is registered; every lm-eval option works as documented there.  Before
lm-eval starts, the command refuses in one line a run of our tasks that execute generated code
(:data:`SANDBOXED_TASKS`) without ``--confirm_run_unsafe_code``, or where no sandbox can be made,
unless ``--allow-unsandboxed`` (ours, taken out before lm-eval reads the rest) or
``FTSTUDY_ALLOW_UNSANDBOXED=1`` asks for resource limits only; its own errors (a bad model
argument, an unreadable checkpoint) are one line and exit status 2.)

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
context, so the probabilities of all one-token continuations sum to 1.  The model's forward
pass chooses Z (``z=self.z_policy``, one generator per row) and its ``generate()`` is the
token loop; this module only batches, seeds, scores and cuts text.

Contexts longer than the model's window are truncated on the left; a continuation longer
than the window is scored in pieces of half a window, each conditioned on all tokens before
it (the chain rule: still a normalised likelihood; each piece's encoder sees only the
tokens before that piece).  Generation with
no stop strings runs to ``max_gen_toks`` or to ``<|endoftext|>``; when the window fills,
generation continues on the last half window (the tokens keep their Z).  Sampling honours
``temperature``, ``top_k`` and ``top_p`` when ``do_sample`` is true (greedy otherwise).
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import random
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

from ftstudy.core.checkpoint import CheckpointError, load_model
from ftstudy.core.config import ConfigError, ModelConfig, check_seed
from ftstudy.core.model import FreeTransformer, check_sampling, generate
from ftstudy.tasks import TextTokenizer as Tokenizer, get_task

__all__ = ["FTStudyLM", "Z_POLICIES", "SANDBOXED_TASKS", "HarnessError", "main"]

Z_POLICIES = ("posterior-context", "prior")
#: Our lm-eval tasks (and the group holding one) whose scoring runs model-generated code in the
#: sandbox of :mod:`ftstudy.eval.suite.execution`: ``unsafe_code: true`` in their YAML
#: (tests/test_harness.py checks this list against the suite's YAML files).
SANDBOXED_TASKS = ("ftstudy_humaneval", "ftstudy_bench", "ftstudy_bench_code")


class HarnessError(ValueError):
    """A request or argument the wrapper cannot score honestly."""


class Sampling(NamedTuple):
    """How generate_until samples: temperature 0 is greedy; top_k / top_p cut the distribution."""

    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None


def _seed_of(seed: int, tokens: list[int], k: int, tag: str) -> int:
    h = hashlib.sha256(f"{tag}:{seed}:{k}:".encode() + torch.tensor(tokens, dtype=torch.int64).numpy().tobytes())
    return int.from_bytes(h.digest()[:8], "little") & ((1 << 63) - 1)


@register_model("ftstudy")
class FTStudyLM(TemplateLM):
    """An ftstudy model (baseline or Free), from a checkpoint or in memory, as an lm-eval model."""

    def __init__(self, checkpoint: str | Path | None = None, z_policy: str = "posterior-context", z_samples: int = 1,
                 seed: int = 0, batch_size: int | str = 16, device: str | None = None,
                 max_batch_size: int | None = None, seed_prefix: bool = False, *,
                 model: FreeTransformer | None = None, tokenizer: Tokenizer | None = None, **kwargs: Any) -> None:
        """From a checkpoint (``checkpoint=PATH``, as lm-eval's ``--model_args`` give it) or from a
        model in memory (``model=``, put in eval mode on ``device``, with its ``tokenizer=``).

        ``seed_prefix``: every generation starts after a fresh random seed-conditioning prefix
        (:func:`ftstudy.tasks.decide.seed_prefix`, drawn like Z from the seed, the context and
        the draw index), for a model trained on prefixed documents (the decision benchmark's
        seed-conditioned baseline).  Likelihoods are never prefixed."""
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
            raise HarnessError(f"unknown FTStudyLM argument(s) {sorted(unknown)}; allowed: checkpoint (or model and "
                               f"tokenizer), z_policy, z_samples, seed, batch_size, device, seed_prefix")
        if isinstance(seed_prefix, str):  # from lm-eval's --model_args
            if seed_prefix.lower() not in ("true", "false"):
                raise HarnessError(f"seed_prefix = {seed_prefix!r} is not allowed: true or false")
            seed_prefix = seed_prefix.lower() == "true"
        self.seed_prefix = bool(seed_prefix)
        if isinstance(seed, str) and seed.strip().lstrip("-").isdigit():  # from lm-eval's --model_args
            seed = int(seed)
        try:
            check_seed(seed, "seed")
        except ConfigError as e:
            raise HarnessError(str(e)) from None
        if (checkpoint is None) == (model is None):
            raise HarnessError("give either a checkpoint path or a model instance (model=..., tokenizer=...)")
        if model is not None and tokenizer is None:
            raise HarnessError("a model instance needs its tokenizer: FTStudyLM(model=..., tokenizer=...)")
        if device is None:
            device = str(model.tok_emb.weight.device) if model is not None else \
                "cuda" if torch.cuda.is_available() else "cpu"
        elif str(device).startswith("cuda") and not torch.cuda.is_available():
            # lm-eval's command line asks for cuda:0 unless told otherwise.
            print(f"[ftstudy.eval.harness] device {device!r} is not available here; using the CPU", file=sys.stderr)
            device = "cpu"
        self.z_policy, self.z_samples, self.seed = z_policy, z_samples, int(seed)
        self.batch_size = batch_size
        self._device = torch.device(device)
        self.checkpoint = None if checkpoint is None else str(checkpoint)
        if model is not None:
            assert tokenizer is not None
            self.model: FreeTransformer = model.to(self._device).eval()
            self.tok: Tokenizer = tokenizer
            source = "the given model"
        else:
            assert checkpoint is not None
            self.model, self.tok = self._load(checkpoint, device)
            source = f"checkpoint {checkpoint}"
        if self.tok.vocab_size > self.model.cfg.vocab_size:
            raise HarnessError(f"{source}: tokenizer vocabulary {self.tok.vocab_size} exceeds the "
                               f"model's vocab_size {self.model.cfg.vocab_size}")

    @staticmethod
    def _load(checkpoint: str | Path, device: str) -> tuple[FreeTransformer, Tokenizer]:
        """The model of a checkpoint and its tokenizer (stored, the training data's, or the synthetic task's)."""
        try:
            model, cfg, raw = load_model(checkpoint, map_location=device)
        except CheckpointError as e:
            raise HarnessError(str(e)) from e
        try:
            tok: Tokenizer = get_task(cfg.task.name).tokenizer(cfg, raw)  # its own, or its training data's
        except ValueError as e:  # DataError, ConfigError
            raise HarnessError(f"checkpoint {checkpoint}: {e}") from e
        return model.eval(), tok

    @property
    def model_cfg(self) -> ModelConfig:
        return self.model.cfg

    # ------------------------------------------------------------------ lm-eval plumbing

    @property
    def eot_token_id(self) -> int:
        if self.tok.eot_id is None:
            raise HarnessError("this checkpoint's tokenizer (synthetic task) has no end-of-text token, so an "
                               "empty context cannot be scored; give a non-empty context")
        return self.tok.eot_id

    @property
    def max_length(self) -> int:
        return self.model_cfg.max_seq_len

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def tokenizer_name(self) -> str:
        return f"ftstudy-{type(self.tok).__name__}"

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        try:
            return self.tok.encode(string)
        except ValueError as e:  # e.g. a character outside the synthetic task's
            raise HarnessError(f"text {string[:40]!r} cannot be tokenized for this model: {e}") from e

    def tok_decode(self, tokens: Any) -> str:
        return self.tok.decode(tokens)

    @property
    def is_free(self) -> bool:
        return self.model_cfg.is_free

    # ------------------------------------------------------------------ Z

    def _z_generator(self, context: list[int], k: int) -> torch.Generator:
        """The generator of draw ``k`` of Z for a row whose context is ``context`` (the model draws
        the row's Z from it position by position: posterior at the context, prior after)."""
        return torch.Generator().manual_seed(_seed_of(self.seed, context, k, self.z_policy))

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
        b, t = len(chunk), max(len(r[1]) for r in chunk)
        idx = torch.full((b, t), self.tok.pad_id, dtype=torch.long)
        for j, (_, inp, _, _) in enumerate(chunk):
            idx[j, :len(inp)] = torch.tensor(inp)
        idx = idx.to(self.device)
        # Right padding: causal attention never lets a real token see a pad.
        context = None
        if self.z_policy == "posterior-context":
            n_ctx = torch.tensor([r[2] for r in chunk], device=self.device)
            context = torch.arange(t, device=self.device)[None, :] < n_ctx[:, None]  # the encoder's keys, per row
        # One generator per row and draw, seeded by the row's context tokens (none for a baseline).
        gens = [[self._z_generator(inp[:n_ctx_j], k) for _, inp, n_ctx_j, _ in chunk]
                for k in range(self.z_samples if self.is_free else 1)]
        outs = self.model.draws(idx, z=self.z_policy, context=context, generators=gens)
        draws = [F.log_softmax(out.logits.float(), -1) for out in outs]  # K x (B, T, V) log-probs
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
            until, max_gen, sampling = self._gen_args(kw)
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
                k = seen[context]
                seen[context] += 1
                if self.seed_prefix:
                    from ftstudy.tasks import decide
                    rng = random.Random(_seed_of(self.seed, ids, k, "prefix"))
                    ids = self.tok_encode(decide.seed_prefix(rng)) + ids
                encoded.append((i, ids, k))
            encoded.sort(key=lambda r: -len(r[1]))
            for b0 in range(0, len(encoded), self.batch_size):
                chunk = encoded[b0:b0 + self.batch_size]
                texts = self._generate_batch([ids for _, ids, _ in chunk], until, max_gen, sampling,
                                             draws=[k for _, _, k in chunk])
                for (i, _, _), text in zip(chunk, texts):
                    out[i] = text
                bar.update(len(chunk))
        bar.close()
        return out  # type: ignore[return-value]

    def _gen_args(self, kw: dict[str, Any]) -> tuple[list[str], int, Sampling]:
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
        top_k, top_p = kw.pop("top_k", None), kw.pop("top_p", None)
        top_k = None if top_k in (None, 0) else top_k  # 0: no cut (Hugging Face's convention)
        top_p = None if top_p is None else float(top_p)
        try:
            check_sampling(temperature, top_k, top_p)
        except ValueError as e:
            raise HarnessError(f"{e}: not allowed") from None
        if not do_sample:
            temperature = 0.0
        return until, max_gen, Sampling(temperature, top_k, top_p)

    @torch.no_grad()
    def _generate_batch(self, prompts: list[list[int]], until: list[str], max_gen: int,
                        sampling: Sampling | float, draws: list[int] | None = None) -> list[str]:
        """Left-padded batch generation with the model's ``generate()``; per-row seeded Z and
        sampling (``draws[j]``: which draw of row j's prompt this is); ``sampling``: options or
        a temperature."""
        if not isinstance(sampling, Sampling):
            sampling = Sampling(float(sampling))
        dev, b = self.device, len(prompts)
        draws = draws or [0] * b
        # The window's rule (generate() keeps the same last tokens): the seeds name what is fed.
        prompts = [p[-(self.max_length - 1):] for p in prompts]
        p_len = max(len(p) for p in prompts)
        tokens = torch.full((b, p_len), self.tok.pad_id, dtype=torch.long, device=dev)
        mask = torch.zeros(b, p_len, dtype=torch.bool, device=dev)
        for j, p in enumerate(prompts):
            tokens[j, p_len - len(p):] = torch.tensor(p)
            mask[j, p_len - len(p):] = True

        def stop(new: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
            hit = torch.zeros(b, dtype=torch.bool)
            for j in active.nonzero().flatten().tolist():
                text = self.tok.decode(new[j].tolist())
                hit[j] = any(u in text for u in until)
            return hit

        gen = generate(self.model, tokens, max_gen, prompt_mask=mask, pad_id=self.tok.pad_id, z_prompt=self.z_policy,
                       temperature=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p,
                       generator=[torch.Generator().manual_seed(_seed_of(self.seed, p, k, "sample"))
                                  for p, k in zip(prompts, draws)],
                       z_generator=[self._z_generator(p, k) for p, k in zip(prompts, draws)] if self.is_free else None,
                       eos_id=self.tok.eot_id, stop=stop if until else None)
        texts = []
        for j in range(b):
            ids = gen.tokens[j, p_len:].tolist()
            if self.tok.eot_id is not None and self.tok.eot_id in ids:
                ids = ids[:ids.index(self.tok.eot_id)]
            text = self.tok.decode(ids)
            cut = min((text.find(u) for u in until if u in text), default=-1)
            texts.append(text[:cut] if cut >= 0 else text)
        return texts


def _requested(argv: list[str]) -> tuple[list[str], bool]:
    """The task names of ``--tasks`` (space- or comma-separated, as lm-eval reads them) and whether
    ``--confirm_run_unsafe_code`` is given; ([], False) where lm-eval will refuse the line itself."""
    p = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
    p.add_argument("--tasks", "-t", nargs="+", default=[])
    p.add_argument("--confirm_run_unsafe_code", action="store_true")
    try:
        known, _ = p.parse_known_args(argv)
    except argparse.ArgumentError:
        return [], False
    return [t for item in known.tasks for t in item.split(",") if t], known.confirm_run_unsafe_code


def _refuse_early(argv: list[str]) -> None:
    """Before any model is loaded: a task of ours that runs generated code needs
    ``--confirm_run_unsafe_code`` and the sandbox (or an opt-out); without this check lm-eval
    refuses the first after loading the model, and the sandbox stops the run only when the
    first program is scored, after every generation."""
    from ftstudy.eval.suite import execution

    if argv and argv[0] in ("ls", "validate"):
        return  # lm-eval's other commands run no model
    tasks, confirmed = _requested(argv)
    needs = [t for t in tasks if t in SANDBOXED_TASKS]
    if not needs:
        return
    if not confirmed:
        raise HarnessError(f"task {needs[0]} executes model-generated code; pass --confirm_run_unsafe_code to run "
                           f"it (in the sandbox of ftstudy.eval.suite.execution)")
    if not execution.require_sandbox(None):  # SandboxUnavailable names the opt-outs, which both work here
        print(f"[ftstudy.eval.harness] WARNING: running generated code WITHOUT a sandbox "
              f"({execution.sandbox_problem()})", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """lm-eval's command line with ``--model ftstudy`` registered; 2 after a one-line error of ours."""
    from lm_eval.__main__ import cli_evaluate

    from ftstudy.eval.suite import execution

    argv = list(sys.argv[1:] if argv is None else argv)
    if "--allow-unsandboxed" in argv:  # ours, not lm-eval's: the opt-out our refusal names
        argv = [a for a in argv if a != "--allow-unsandboxed"]
        os.environ[execution.ALLOW_UNSANDBOXED_ENV] = "1"  # read where each program runs
    try:
        _refuse_early(argv)
        sys.argv = [sys.argv[0], *argv]
        cli_evaluate()
    except Exception as e:
        # EvalError only where ftstudy.eval.evaluate was imported (importing it here would import
        # this module a second time under ``python -m``, and register the model twice); under
        # ``python -m ftstudy.eval.harness`` this module is __main__, and may be imported again.
        mods = [sys.modules.get(m) for m in ("ftstudy.eval.evaluate", "ftstudy.eval.harness")]
        ours = (HarnessError, CheckpointError, execution.SandboxUnavailable,
                *(getattr(m, name) for m, name in zip(mods, ("EvalError", "HarnessError")) if m is not None))
        if isinstance(e, ours):
            print(f"error: {e}", file=sys.stderr)
            return 2
        if isinstance(e, ValueError) and str(e).startswith("Attempted to run task:"):
            # lm-eval's own refusal of a task marked unsafe (its humaneval, mbpp, ...), after the model loaded.
            print(f"error: {str(e).splitlines()[0]} (--confirm_run_unsafe_code)", file=sys.stderr)
            return 2
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
