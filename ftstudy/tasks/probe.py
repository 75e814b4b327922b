"""What a synthetic-task run measures from generations made under the prior.

Generations use the paper's inference (PAPER.md §2.7) through the model's one
``generate()``: the encoder never sees generated tokens; every generated position gets a
uniform Z.  For the synthetic task the prompt ``<letter>>`` is also given uniform Z
(``z_prompt="prior"``) unless asked otherwise, so that "valid rate under prior Z" means Z
from the prior at every position.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from scipy import stats
from scipy.stats import binomtest

from ftstudy.tasks import synthetic
from ftstudy.tasks.agreement import GroupTable, tolerance_name
from ftstudy.tasks.agreement import write_groups as agreement_write_groups
from ftstudy.tasks.synthetic import NO_LATENT_FLOOR
from ftstudy.core.latent import codes_from_bits, kl_per_bit, uniform_bits
from ftstudy.core.model import FreeTransformer, generate

__all__ = ["synthetic_prompts", "generate_synthetic", "valid_rate", "GroupDesign", "GroupSamples",
           "generate_groups", "group_metrics", "posterior_metrics", "code_posterior_metrics", "PROBE_LETTERS", "NO_LATENT_FLOOR",
           "write_groups", "generate_posterior_groups", "recovery_metrics"]


def synthetic_prompts(n: int, seed: int) -> list[str]:
    """n prompts ``<letter>>`` with letters drawn uniformly (seeded)."""
    g = torch.Generator().manual_seed(seed)
    letters = torch.randint(0, len(synthetic.LETTERS), (n,), generator=g)
    return [f"{synthetic.LETTERS[i]}>" for i in letters.tolist()]


@torch.no_grad()
def generate_synthetic(model: FreeTransformer, prompts: list[str], seed: int, *, batch_size: int = 250,
                       temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                       z_prompt: Literal["posterior-context", "prior"] = "prior",
                       bits: torch.Tensor | None = None) -> list[str]:
    """Complete each prompt to the task's 66 characters with a KV cache (sampling options as
    in ``ftstudy.core.model.sample_tokens``; prompts of equal length)."""
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
                       top_k=top_k, top_p=top_p, generator=g)
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


# ---------------------------------------------------------------- how much Z decides


# Fixed prompts for every run, so runs are compared on the same questions.
PROBE_LETTERS = synthetic.LETTERS[::3][:8]  # A D G J M P S V


@dataclass
class GroupDesign:
    """Per prompt: one group with independent Z per sequence, and groups sharing one Z
    (the whole T x H bit pattern), as in the paper's Figure 4 (blue vs green boxes)."""

    n_independent: int = 32  # sequences in the independent-Z group of each prompt
    n_groups: int = 4  # shared-Z groups per prompt
    group_size: int = 24  # sequences per shared-Z group
    letters: str = PROBE_LETTERS

    @property
    def total(self) -> int:
        return len(self.letters) * (self.n_independent + self.n_groups * self.group_size)


@dataclass
class GroupSamples:
    strings: list[str]
    group: np.ndarray  # (N,) group id
    shared: np.ndarray  # (N,) bool: the group shares one Z
    letter: list[str]


@torch.no_grad()
def generate_groups(model: FreeTransformer, design: GroupDesign, seed: int, batch_size: int = 256, *,
                    temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None) -> GroupSamples:
    """Generate the group design under the prior; shared groups reuse one bit pattern."""
    cfg = model.cfg
    dev = model.tok_emb.weight.device
    g = torch.Generator(device=dev).manual_seed(seed)
    n_fed = synthetic.SEQ_LEN - 1  # positions that receive a Z
    prompts, group, shared, bits = [], [], [], []
    gid = 0
    for letter in design.letters:
        prompt = f"{letter}>"
        members = [(design.n_independent, False)] + [(design.group_size, True)] * design.n_groups
        for size, is_shared in members:
            if cfg.is_free:
                if is_shared:
                    z = uniform_bits((1, n_fed), cfg.latent_bits, dev, g).expand(size, n_fed, cfg.latent_bits)
                else:
                    z = uniform_bits((size, n_fed), cfg.latent_bits, dev, g)
                bits.append(z)
            prompts += [prompt] * size
            group += [gid] * size
            shared += [is_shared] * size
            gid += 1
    all_bits = torch.cat(bits) if bits else None
    strings = generate_synthetic(model, prompts, seed=seed + 1, batch_size=batch_size, bits=all_bits,
                                 temperature=temperature, top_k=top_k, top_p=top_p)
    return GroupSamples(strings, np.array(group), np.array(shared), [s[0] for s in prompts])


@torch.no_grad()
def generate_posterior_groups(model: FreeTransformer, sources: list[str], group_size: int, seed: int, *,
                              temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                              batch_size: int = 256) -> tuple[GroupSamples, np.ndarray]:
    """Groups that share the encoder's Z of one held-out sequence: separates "the encoder does
    not carry the block position" from "the uniform prior gives codes the decoder never saw".

    For each source S (a valid task sequence), one Z is drawn from Q(Z | S) at every fed
    position (the model's ``forward`` with ``z="posterior-leaky"`` on S's 65 input tokens,
    one seeded generator), and ``group_size`` sequences are generated from S's prompt with
    that bit pattern at every position (``generate_synthetic``, as ``generate_groups`` does
    with a prior draw).  Returns the samples (group j = source j, every group shared) and the
    sources' block positions (``synthetic.check_many``).
    """
    cfg = model.cfg
    if not cfg.is_free:
        raise ValueError("posterior groups need a Free model (latent_bits > 0): a baseline has no encoder Z to share")
    if group_size < 1:
        raise ValueError(f"group_size = {group_size} must be >= 1")
    if batch_size < 1:
        raise ValueError(f"batch_size = {batch_size} must be >= 1")
    src_valid, src_pos = synthetic.check_many(sources)
    if not src_valid.all():
        bad = int(np.flatnonzero(~src_valid)[0])
        raise ValueError(f"sources[{bad}] = {sources[bad]!r} is not a valid {synthetic.SEQ_LEN}-character task "
                         f"sequence (synthetic.check)")
    dev = model.tok_emb.weight.device
    tok = synthetic.CharTokenizer()
    g = torch.Generator(device=dev).manual_seed(seed)
    was_training = model.training
    model.eval()
    z = []
    for i in range(0, len(sources), batch_size):
        idx = synthetic.make_batch(sources[i:i + batch_size], tok)["idx"].to(dev)  # (b, 65): the fed tokens
        out = model(idx, z="posterior-leaky", generator=g)  # Z drawn from the encoder, Q(Z | S)
        assert out.bits is not None
        z.append(out.bits)
    model.train(was_training)
    n, h = len(sources), cfg.latent_bits
    bits = torch.cat(z) if z else torch.zeros(0, synthetic.SEQ_LEN - 1, h, dtype=torch.bool, device=dev)
    member_bits = bits[:, None].expand(n, group_size, *bits.shape[1:]).reshape(n * group_size, *bits.shape[1:])
    prompts = [s[:synthetic.PROMPT_LEN] for s in sources for _ in range(group_size)]
    strings = generate_synthetic(model, prompts, seed=seed + 1, batch_size=batch_size, bits=member_bits,
                                 temperature=temperature, top_k=top_k, top_p=top_p) if prompts else []
    group = np.repeat(np.arange(n), group_size)
    return GroupSamples(strings, group, np.ones(n * group_size, dtype=bool), [s[0] for s in prompts]), src_pos


def recovery_metrics(samples: GroupSamples, source_positions: np.ndarray,
                     tolerances: tuple[int, ...] = (0, 1, 2)) -> dict[str, float]:
    """How often a group sharing a source's posterior Z puts the block where the source had it.

    Per group (group id j = ``source_positions[j]``), the fraction of its valid members whose
    block starts within ``tol`` of the source's position; ``recovery_exact`` /
    ``recovery_within<tol>`` are the means over groups with at least one valid member.
    ``recovery_chance_*``: the same rate if members' positions were drawn from the pooled
    valid positions independently of the source, sum_x q(x) [|x - p_j| <= tol] with q the
    pooled marginal, averaged over the same groups.  Also ``valid_rate`` (all members) and
    ``recovery_groups`` (groups scored).
    """
    valid, pos = synthetic.check_many(samples.strings)
    src = np.asarray(source_positions, dtype=np.int64)
    out: dict[str, float] = {"valid_rate": float(valid.mean()) if len(valid) else float("nan")}
    pool = pos[valid]
    values, counts = np.unique(pool, return_counts=True)
    q = counts / max(1, counts.sum())  # the pooled marginal of member positions
    per: dict[int, list[float]] = {t: [] for t in tolerances}
    chance: dict[int, list[float]] = {t: [] for t in tolerances}
    for gid in np.unique(samples.group):
        if not 0 <= gid < len(src) or src[gid] < 0:
            raise ValueError(f"group {gid} has no valid source position (source_positions has {len(src)} entries)")
        members = pos[(samples.group == gid) & valid]
        if len(members) == 0:
            continue
        dist = np.abs(members - src[gid])
        for t in tolerances:
            per[t].append(float((dist <= t).mean()))
            chance[t].append(float(q[np.abs(values - src[gid]) <= t].sum()))
    for t in tolerances:
        out[f"recovery_{tolerance_name(t)}"] = float(np.mean(per[t])) if per[t] else float("nan")
        out[f"recovery_chance_{tolerance_name(t)}"] = float(np.mean(chance[t])) if chance[t] else float("nan")
    out["recovery_groups"] = float(len(per[tolerances[0]])) if tolerances else 0.0
    return out


def _noise_sets(strings: list[str]) -> list[np.ndarray]:
    return [np.frombuffer(s[synthetic.PROMPT_LEN:].encode(), dtype=np.uint8) == ord("!") for s in strings]


def _mean_ci(values: list[float]) -> tuple[float, float, float]:
    """Mean and 95% t-interval over groups (nan when undefined)."""
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=float)
    if len(v) == 0:
        return float("nan"), float("nan"), float("nan")
    if len(v) == 1 or v.std() == 0:
        return float(v.mean()), float(v.mean()), float(v.mean())
    lo, hi = stats.t.interval(0.95, len(v) - 1, loc=v.mean(), scale=stats.sem(v))
    return float(v.mean()), float(lo), float(hi)


def _entropy_bits(counts: np.ndarray, miller_madow: bool = True) -> float:
    n = counts.sum()
    if n == 0:
        return float("nan")
    p = counts[counts > 0] / n
    h = float(-(p * np.log2(p)).sum())
    if miller_madow:  # first-order bias correction of the plug-in estimate
        h += (len(p) - 1) / (2 * n * math.log(2))
    return h


def group_metrics(samples: GroupSamples, body_len: int = synthetic.BODY_LEN) -> dict[str, float]:
    """Valid rate; same-position and shared-noise rates for independent vs shared Z; MI(Z; position).

    Pairs are taken within a group; a group's statistic is the mean over its pairs, and
    intervals are t-intervals over groups.
    """
    valid, pos = synthetic.check_many(samples.strings)
    noise = _noise_sets(samples.strings)
    out: dict[str, float] = {**{k: float(v) for k, v in valid_rate(samples.strings).items()}}
    n_pos = body_len - synthetic.BLOCK_LEN + 1
    indep_pos = pos[valid & ~samples.shared]
    q = np.bincount(indep_pos, minlength=n_pos) / max(1, len(indep_pos))
    out["same_pos_chance"] = float((q ** 2).sum())
    per: dict[str, dict[str, list[float]]] = {k: {"same_pos": [], "noise_overlap": []}
                                              for k in ("independent", "shared")}
    cond_entropies, group_sizes = [], []
    for gid in np.unique(samples.group):
        in_group = samples.group == gid
        kind = "shared" if samples.shared[in_group][0] else "independent"
        members = np.flatnonzero(in_group & valid)
        if len(members) < 2:
            continue
        pp = pos[members]
        same = (pp[:, None] == pp[None, :])[np.triu_indices(len(pp), 1)]
        per[kind]["same_pos"].append(float(same.mean()))
        ratios = []
        for i, j in zip(*np.triu_indices(len(members), 1)):
            a, b = noise[members[i]], noise[members[j]]
            if a.any() and b.any():
                ratios.append(float((a & b).sum() / (a.sum() * b.sum() / body_len)))
        per[kind]["noise_overlap"].append(float(np.mean(ratios)) if ratios else float("nan"))
        if kind == "shared":
            cond_entropies.append(_entropy_bits(np.bincount(pp, minlength=n_pos), miller_madow=False))
            group_sizes.append(len(pp))
    for kind, d in per.items():
        for name, values in d.items():
            m, lo, hi = _mean_ci(values)
            out[f"{name}_{kind}"], out[f"{name}_{kind}_ci_low"], out[f"{name}_{kind}_ci_high"] = m, lo, hi
    # MI(Z; position) = H(pos) - E_Z H(pos | Z), both plug-in entropies at the *same*
    # sample size so that their (large, for 24 samples over 57 positions) downward bias
    # cancels: H(pos) is the mean entropy of random pseudo-groups drawn from all valid
    # generations pooled (a sample of the marginal, since every Z is uniform).
    pool = pos[valid]
    rng = np.random.default_rng(0)
    null = [_entropy_bits(np.bincount(rng.choice(pool, size, replace=False), minlength=n_pos), miller_madow=False)
            for size in group_sizes for _ in range(20)] if len(pool) else []
    h_null = float(np.mean(null)) if null else float("nan")
    h_cond, h_cond_lo, h_cond_hi = _mean_ci(cond_entropies)
    out["position_entropy_bits"] = _entropy_bits(np.bincount(pool, minlength=n_pos)) if len(pool) else float("nan")
    out["mi_position_bits"] = h_null - h_cond
    out["mi_position_bits_ci_low"] = h_null - h_cond_hi
    out["mi_position_bits_ci_high"] = h_null - h_cond_lo
    # Collision (Rényi-2) form: log2 of how much more often two sequences sharing Z agree
    # on the position than two independent ones.
    s, i = out["same_pos_shared"], out["same_pos_independent"]
    out["mi_collision_bits"] = float(np.log2(s / i)) if s > 0 and i > 0 else float("nan")
    return out


@torch.no_grad()
def posterior_metrics(model: FreeTransformer, batches: list[dict[str, torch.Tensor]],
                      seed: int) -> dict[str, float | list[float]]:
    """How the encoder uses the latent on held-out sequences, and how far its Z is from the prior.

    KL per token and per bit (bits), bits carrying information, codes drawn and their
    entropy, and the aggregate per-bit marginals' KL to fair coins (the part of the
    mismatch with the uniform prior that per-token free bits never pay for), and those
    marginals themselves (``bit_marginals``: the H aggregate P(bit = 1)).
    """
    cfg = model.cfg
    if not cfg.is_free:
        return {}
    dev = model.tok_emb.weight.device
    g = torch.Generator(device=dev).manual_seed(seed)
    kl_bits, mean_p, codes = [], [], []
    for batch in batches:
        out = model(batch["idx"].to(dev), z="posterior-leaky", generator=g)  # Z drawn from the encoder
        assert out.enc_logits is not None and out.bits is not None
        logits = out.enc_logits.float()  # (B, T, H)
        kl_bits.append(kl_per_bit(logits).flatten(0, 1) / math.log(2))
        mean_p.append(torch.sigmoid(logits).flatten(0, 1))
        codes.append(codes_from_bits(out.bits).flatten())
    per_bit = torch.cat(kl_bits).mean(0)  # (H,)
    p_bar = torch.cat(mean_p).mean(0).double()  # aggregate P(bit = 1)
    agg_kl = float((1 + p_bar * torch.log2(p_bar) + (1 - p_bar) * torch.log2(1 - p_bar)).sum())
    code_counts = np.bincount(torch.cat(codes).cpu().numpy())
    out = {
        "kl_bits_per_token": float(per_bit.sum()),
        "informative_bits": int((per_bit > 0.01).sum()),
        "codes_distinct": int((code_counts > 0).sum()),
        "code_entropy_bits": _entropy_bits(code_counts, miller_madow=False),
        "codes_drawn": int(code_counts.sum()),
        "aggregate_marginal_kl_bits": agg_kl,
        "max_bit_bias": float((p_bar - 0.5).abs().max()),
        # The H aggregate per-bit P(bit = 1): each bit's marginal bias under the aggregate posterior.
        "bit_marginals": [float(v) for v in p_bar],
    }
    out.update({f"kl_bit{h:02d}": float(v) for h, v in enumerate(per_bit)})
    return out


#: The widest latent whose aggregate posterior over codes is computed exactly (2^12 codes per position).
CODE_CHECK_MAX_BITS = 12
#: A code is "never produced" at a position when the aggregate posterior gives it less than this
#: fraction of the prior's mass 2^-H there.
RARE_CODE_FRACTION = 0.1


@torch.no_grad()
def code_posterior_metrics(model: FreeTransformer, batches: list[dict[str, torch.Tensor]]) -> dict[str, object]:
    """The aggregate posterior over whole codes, position by position (H <= 12).

    For each token position t, q̄_t(c) = mean over held-out sequences of the encoder's
    probability of code c (the product of its H Bernoullis).  The prior is uniform over the 2^H
    codes (H bits of entropy).  Per-bit marginals near ½ do not show that the codes are used
    uniformly: the bits can be correlated.  Reported: the entropy of q̄_t (bits) averaged over
    positions and its minimum, the KL(q̄_t ‖ prior) = H − entropy averaged over positions, and
    the prior's mass on codes the encoder (almost) never produces at that position
    (q̄_t(c) < 0.1 × 2^-H), averaged over positions: the share of prior draws that ask the
    decoder for a code it never saw in training.  Empty for a baseline or H > 12."""
    cfg = model.cfg
    if not cfg.is_free or cfg.latent_bits > CODE_CHECK_MAX_BITS:
        return {}
    h = cfg.latent_bits
    dev = model.tok_emb.weight.device
    codes = torch.arange(1 << h, device=dev)
    bits = ((codes[:, None] >> torch.arange(h, device=dev)) & 1).double()  # (C, H), bit h of code c
    total = None
    n = 0
    g = torch.Generator(device=dev).manual_seed(0)  # Z is drawn but not used: only the encoder's logits are
    for batch in batches:
        out = model(batch["idx"].to(dev), z="posterior-leaky", generator=g)
        assert out.enc_logits is not None
        logits = out.enc_logits.double()  # (B, T, H)
        log_p, log_q = torch.nn.functional.logsigmoid(logits), torch.nn.functional.logsigmoid(-logits)
        log_code = log_p @ bits.T + log_q @ (1 - bits).T  # (B, T, C)
        part = log_code.exp().sum(0)  # (T, C)
        total = part if total is None else total + part
        n += logits.shape[0]
    assert total is not None
    q = (total / n).clamp_min(0)
    q = q / q.sum(-1, keepdim=True)
    entropy = -(q * torch.log2(q.clamp_min(1e-300))).sum(-1)  # (T,)
    rare = (q < RARE_CODE_FRACTION / (1 << h)).double().mean(-1)  # prior mass on rare codes, (T,)
    return {"latent_bits": h, "positions": int(q.shape[0]), "sequences": n,
            "code_entropy_mean_bits": float(entropy.mean()), "code_entropy_min_bits": float(entropy.min()),
            "code_kl_to_prior_mean_bits": float(h - entropy.mean()),
            "prior_mass_on_rare_codes_mean": float(rare.mean()), "prior_mass_on_rare_codes_max": float(rare.max()),
            "code_entropy_by_position_bits": [round(float(v), 4) for v in entropy],
            "rare_code_fraction": RARE_CODE_FRACTION}


def write_groups(samples: GroupSamples, path) -> None:
    """The probe's generations as a groups file (:func:`ftstudy.tasks.agreement.write_groups`)."""
    agreement_write_groups(GroupTable.from_strings(samples.strings, samples.group, samples.shared), path)
