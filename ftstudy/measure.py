"""What a synthetic-task run measures from generations made under the prior.

Generations use the paper's inference (PAPER.md §2.7): the encoder never sees generated
tokens; every generated position gets a uniform Z.  For the synthetic task the prompt
``<letter>>`` is also given uniform Z (``z_prompt="prior"``) unless asked otherwise, so
that "valid rate under prior Z" means Z from the prior at every position.
"""

from __future__ import annotations

from typing import Literal

import torch
from scipy.stats import binomtest

from ftstudy import synthetic
from ftstudy.model import FreeTransformer, generate

__all__ = ["synthetic_prompts", "generate_synthetic", "valid_rate"]


def synthetic_prompts(n: int, seed: int) -> list[str]:
    """n prompts ``<letter>>`` with letters drawn uniformly (seeded)."""
    g = torch.Generator().manual_seed(seed)
    letters = torch.randint(0, len(synthetic.LETTERS), (n,), generator=g)
    return [f"{synthetic.LETTERS[i]}>" for i in letters.tolist()]


@torch.no_grad()
def generate_synthetic(model: FreeTransformer, prompts: list[str], seed: int, *, batch_size: int = 250,
                       temperature: float = 1.0, z_prompt: Literal["posterior", "prior"] = "prior",
                       bits: torch.Tensor | None = None) -> list[str]:
    """Complete each prompt to the task's 66 characters with a KV cache."""
    tok = synthetic.CharTokenizer()
    was_training = model.training
    model.eval()
    g = torch.Generator(device=model.tok_emb.weight.device).manual_seed(seed)
    out: list[str] = []
    n_new = synthetic.SEQ_LEN - synthetic.PROMPT_LEN
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i:i + batch_size]
        idx = tok.encode_batch(chunk).to(model.tok_emb.weight.device)
        chunk_bits = None if bits is None else bits[i:i + batch_size]
        gen = generate(model, idx, n_new, z_prompt=z_prompt, bits=chunk_bits, temperature=temperature,
                       generator=g)
        out.extend(tok.decode_batch(gen.tokens.cpu()))
    model.train(was_training)
    return out


def valid_rate(samples: list[str]) -> dict[str, float | int]:
    """Fraction valid by ``synthetic.check`` with an exact (Clopper–Pearson) 95% interval."""
    valid, _ = synthetic.check_many(samples)
    k, n = int(valid.sum()), len(samples)
    if n == 0:
        return {"valid": 0, "n": 0, "valid_rate": float("nan"), "valid_ci_low": float("nan"),
                "valid_ci_high": float("nan")}
    ci = binomtest(k, n).proportion_ci(0.95)
    return {"valid": k, "n": n, "valid_rate": k / n, "valid_ci_low": float(ci.low), "valid_ci_high": float(ci.high)}
