"""Typed, frozen configuration: model, task and training, plus named presets.

Every choice is a typed field (``Literal`` strings where there is a choice) so a config
serialises to JSON and back exactly; presets are data (dicts of overrides), not
branches.  Validation happens at construction and names the field, the bad value and
what is allowed: every float field must be finite (nan and inf are refused whatever the
field), and in its range.  ``RunConfig`` bundles the three and is what a run directory and a
checkpoint carry.

Nothing here knows a task: ``task.name`` is any registered task (:mod:`ftstudy.tasks`), and
what a task requires of a config (sequence length, data folder, ...) is checked by the task
itself (``ftstudy.tasks.check_config``) when a run starts.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import typing
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from ftstudy.core.latent import MAX_LATENT_BITS

__all__ = [
    "ConfigError", "field_error", "ModelConfig", "TaskConfig", "TrainConfig", "RunConfig",
    "PRESETS", "PRESET_ALIASES", "resolve_preset", "get_preset", "apply_overrides", "parse_set_args", "config_value",
    "LATENT_ONLY_FIELDS", "MAX_SEED", "check_sampling", "check_seed",
]

# Model fields that only a Free model reads: they change nothing in a baseline
# (latent_bits = 0), so they neither name a baseline run nor select it.
LATENT_ONLY_FIELDS = ("kappa_bits", "inject_layer", "post_sampler", "encoder_positions", "kl_weight_below",
                      "free_bits_scope", "marginal_weight")


MAX_SEED = 2**32 - 1  # numpy's legacy seeding and Lightning's seed_everything take 0 … 2^32 − 1


class ConfigError(ValueError):
    """A configuration value that is unknown, of the wrong type, or impossible."""


def check_seed(seed: Any, option: str = "seed") -> int:
    """``seed`` if it is an integer 0 … MAX_SEED, else a one-line ConfigError that names the
    option (``--seed``, ``--seeds``): every command checks its seeds with this before it loads
    or writes anything, so a bad one never surfaces as a traceback deep in a generator."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"{option} = {seed!r} is not allowed: an integer 0 … {MAX_SEED} "
                          f"(2^32 − 1, what every seeded generator takes)")
    return seed


def field_error(cls: str, name: str, value: Any, allowed: str) -> ConfigError:
    """The error for field ``cls.name`` holding ``value``: names it, the value and what is allowed."""
    return ConfigError(f"{cls}.{name} = {value!r} is not allowed: {allowed}")


def _fail(cls: str, name: str, value: Any, allowed: str) -> None:
    raise field_error(cls, name, value, allowed)


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the decoder and of the Free Transformer's latent (PAPER.md §2)."""

    vocab_size: int = 29  # token ids 0 … vocab_size − 1 (29: the synthetic task's `_`, `!`, `>` and A–Z)
    n_layers: int = 4  # L decoder blocks
    dim: int = 128  # model width D
    n_heads: int = 4  # query heads; head size = dim / n_heads
    n_kv_heads: int | None = None  # grouped-query attention; None = n_heads (plain MHA)
    mlp_hidden: int | None = None  # SwiGLU hidden width; None = Llama's 8/3 D rounded up to mlp_multiple
    mlp_multiple: int = 32  # round the SwiGLU width up to a multiple of this (kernel-friendly)
    max_seq_len: int = 128  # RoPE table length and KV-cache capacity
    rope_base: float = 10000.0  # RoPE frequency base
    norm_eps: float = 1e-5  # RMSNorm epsilon
    tie_embeddings: bool = False  # share token embedding and vocabulary readout
    init_std: float = 0.02  # normal init of linears and embeddings; residual outputs scaled by 1/sqrt(2L)
    # --- Free Transformer latent (latent_bits = 0 is the baseline decoder) ---
    latent_bits: int = 0  # H bits of Z per token (paper: 16); 0 = no encoder, no latent
    inject_layer: int | None = None  # number of blocks before the injection; None = L // 2 (paper)
    post_sampler: Literal["dense", "factored"] = "dense"  # dense = paper's Linear(2^H -> D); factored = H -> D ablation
    encoder_positions: Literal["rope", "none"] = "rope"  # encoder q/k positions [our choice: RoPE like the decoder]
    kappa_bits: float = 0.125  # free-bits budget κ per token, in bits (paper: 1/64 … 8 synthetic, 1/4 … 2 real)
    kl_weight_below: float = 0.0  # DEVIATION (0 = paper): extra weight on KL below κ, to pull Q towards the prior
    free_bits_scope: Literal["token", "sequence"] = "token"  # token = paper; sequence = DEVIATION: budget T·κ on Σ_t KL_t
    marginal_weight: float = 0.0  # DEVIATION (0 = paper): weight of the aggregate-marginal penalty

    @property
    def is_free(self) -> bool:
        return self.latent_bits > 0

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def hidden(self) -> int:
        if self.mlp_hidden is not None:
            return self.mlp_hidden
        h = int(8 * self.dim / 3)
        return self.mlp_multiple * math.ceil(h / self.mlp_multiple)

    @property
    def injection(self) -> int:
        """Blocks before the injection: the injection block is block number injection + 1."""
        return self.n_layers // 2 if self.inject_layer is None else self.inject_layer

    @property
    def kappa_nats(self) -> float:
        return self.kappa_bits * math.log(2.0)

    def __post_init__(self) -> None:
        _check_types(self)
        c = "ModelConfig"
        for name in ("vocab_size", "n_layers", "dim", "n_heads", "max_seq_len", "mlp_multiple"):
            if getattr(self, name) < 1:
                _fail(c, name, getattr(self, name), "a positive integer")
        if self.dim % self.n_heads:
            _fail(c, "n_heads", self.n_heads, f"a divisor of dim = {self.dim}")
        if self.head_dim % 2:
            _fail(c, "n_heads", self.n_heads, f"dim / n_heads must be even for RoPE (dim = {self.dim})")
        if self.n_kv_heads is not None and (self.n_kv_heads < 1 or self.n_heads % self.n_kv_heads):
            _fail(c, "n_kv_heads", self.n_kv_heads, f"a positive divisor of n_heads = {self.n_heads}")
        if self.mlp_hidden is not None and self.mlp_hidden < 1:
            _fail(c, "mlp_hidden", self.mlp_hidden, "a positive integer or None")
        if not self.norm_eps > 0:
            _fail(c, "norm_eps", self.norm_eps, "> 0")
        if not self.rope_base > 1:
            _fail(c, "rope_base", self.rope_base, "> 1")
        if not self.init_std > 0:
            _fail(c, "init_std", self.init_std, "> 0")
        if self.latent_bits != 0 and not 1 <= self.latent_bits <= MAX_LATENT_BITS:
            _fail(c, "latent_bits", self.latent_bits, f"0 (baseline) or 1 … {MAX_LATENT_BITS}")
        if self.inject_layer is not None and not 1 <= self.inject_layer <= self.n_layers - 1:
            _fail(c, "inject_layer", self.inject_layer,
                  f"1 … n_layers − 1 = {self.n_layers - 1} (blocks before the injection), or None for L/2")
        if self.is_free and self.n_layers < 2:
            _fail(c, "n_layers", self.n_layers, "at least 2 for a Free Transformer (blocks before and at injection)")
        if not (self.kappa_bits >= 0 and math.isfinite(self.kappa_bits)):
            _fail(c, "kappa_bits", self.kappa_bits, "a finite number >= 0 (bits per token)")
        if not (self.kl_weight_below >= 0 and math.isfinite(self.kl_weight_below)):
            _fail(c, "kl_weight_below", self.kl_weight_below, "a finite number >= 0")
        if not (self.marginal_weight >= 0 and math.isfinite(self.marginal_weight)):
            _fail(c, "marginal_weight", self.marginal_weight,
                  "a finite number >= 0 (0 = the paper's loss; weight of the aggregate-marginal penalty, nats)")


@dataclass(frozen=True)
class TaskConfig:
    """What the model is trained on: a task (ftstudy.tasks) and the settings tasks read."""

    name: str = "synthetic"  # a registered task: "synthetic" (the paper's §4.1 task), "tokens" (token shards), ...
    data_dir: str | None = None  # tokens: a folder made by `python -m ftstudy.data prepare` (or the same format)
    val_size: int = 1024  # fixed validation sequences
    n_generate: int = 1000  # sequences generated under prior Z at the end of a run
    # Probe of how much Z decides, at every validation: per fixed prompt, one group with
    # independent Z and probe_groups groups sharing one Z (paper Fig. 4); 8 prompts.
    probe_independent: int = 32  # sequences in each prompt's independent-Z group
    probe_groups: int = 4  # shared-Z groups per prompt
    probe_group_size: int = 24  # sequences per shared-Z group (8 x (32 + 4 x 24) = 1024 generations)
    # Token sampling of every generation a run makes (samples.txt, the probe): temperature
    # (0 = greedy), top-k and top-p (nucleus) cuts.  τ = 1 with no cut is the default; the
    # paper's Figure 4 protocol is the named setting "paper" (ftstudy.study.protocols).
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None

    @property
    def sampling(self) -> dict[str, Any]:
        """The sampling settings, as recorded in summaries: temperature, top_k, top_p."""
        return {"temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p}

    def __post_init__(self) -> None:
        _check_types(self)
        try:
            check_sampling(self.temperature, self.top_k, self.top_p)
        except ValueError as e:
            raise ConfigError(f"TaskConfig: {e}") from None
        if not self.name:
            _fail("TaskConfig", "name", self.name, "the name of a registered task (ftstudy.tasks.task_names())")
        if self.val_size < 1:
            _fail("TaskConfig", "val_size", self.val_size, "a positive integer")
        for name in ("n_generate", "probe_independent", "probe_groups", "probe_group_size"):
            if getattr(self, name) < 0:
                _fail("TaskConfig", name, getattr(self, name), ">= 0")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and run settings (FEASIBILITY.md's prototype values by default)."""

    seed: int = 0  # seeds data, init and Z draws
    steps: int = 2000  # optimizer steps
    batch_size: int = 64  # sequences per step (global, over all devices)
    lr: float = 1e-3  # peak AdamW learning rate
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 100  # linear warm-up
    weight_decay: float = 0.1  # on matrices and embeddings only
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # global norm clip; 0 disables
    # "auto": bf16-mixed where the hardware has native bf16 matmuls (CUDA with bf16,
    # CPUs with AVX512-BF16/AMX: ~2.5x faster there), else 32-true (on AVX2-only CPUs bf16
    # matmuls are 10-100x *slower*).  The resolved value is recorded in config.json.
    precision: Literal["auto", "bf16-mixed", "32-true", "64-true"] = "auto"
    val_every: int = 500  # steps between validations
    ckpt_every: int = 500  # steps between resumable checkpoints
    log_every: int = 10  # steps between logged training rows
    accelerator: str = "cpu"  # Lightning accelerator ("cpu", "gpu", "auto")
    devices: int = 1  # processes/devices per node
    num_nodes: int = 1
    strategy: str = "auto"  # Lightning strategy ("auto", "ddp", "fsdp": sharded per transformer block)
    activation_checkpointing: bool = False  # recompute each block's activations in the backward pass
    # torch.compile the training forward/backward (static shapes; on a GPU with CUDA graphs,
    # mode "reduce-overhead"). Off by default: eager runs retrain bitwise; compiled kernels
    # agree with them to rounding, not bit for bit.
    compile: bool = False
    num_workers: int = 0  # data loader workers (synthetic data is generated in-process)

    def __post_init__(self) -> None:
        _check_types(self)
        c = "TrainConfig"
        for name in ("steps", "batch_size", "val_every", "ckpt_every", "log_every", "devices", "num_nodes"):
            if getattr(self, name) < 1:
                _fail(c, name, getattr(self, name), "a positive integer")
        for name in ("warmup_steps", "num_workers"):
            if getattr(self, name) < 0:
                _fail(c, name, getattr(self, name), ">= 0")
        if not 0 <= self.seed <= MAX_SEED:
            _fail(c, "seed", self.seed, f"an integer 0 … {MAX_SEED} (2^32 − 1, what every seeded generator takes)")
        if not self.lr > 0:
            _fail(c, "lr", self.lr, "> 0")
        if not 0 <= self.min_lr_ratio <= 1:
            _fail(c, "min_lr_ratio", self.min_lr_ratio, "0 … 1")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                _fail(c, name, getattr(self, name), "0 <= beta < 1")
        if self.weight_decay < 0 or self.grad_clip < 0:
            bad = "weight_decay" if self.weight_decay < 0 else "grad_clip"
            _fail(c, bad, getattr(self, bad), ">= 0")
        if self.batch_size % (self.devices * self.num_nodes):
            _fail(c, "batch_size", self.batch_size,
                  f"a multiple of devices * num_nodes = {self.devices * self.num_nodes} (it is the global batch)")


_SECTIONS: dict[str, type] = {"model": ModelConfig, "task": TaskConfig, "train": TrainConfig}


@dataclass(frozen=True)
class RunConfig:
    """Everything a run needs; what config.json and checkpoints carry."""

    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    preset: str = "custom"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        unknown = set(d) - {"model", "task", "train", "preset"}
        if unknown:
            raise ConfigError(f"unknown RunConfig section(s) {sorted(unknown)}; allowed: model, task, train, preset")
        parts = {}
        for name, sub in _SECTIONS.items():
            parts[name] = _build(sub, d.get(name, {}))
        return cls(**parts, preset=d.get("preset", "custom"))

    def replace(self, **overrides: Any) -> RunConfig:
        return apply_overrides(self, overrides)


def _build(cls: type, d: dict[str, Any]) -> Any:
    names = {f.name for f in fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} key(s) {sorted(unknown)}; allowed: {sorted(names)}")
    return cls(**d)


def _allowed(tp: Any) -> tuple[tuple[type, ...], tuple[Any, ...] | None]:
    """Python types accepted by an annotation, and the Literal values if it is a Literal."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return tuple({type(v) for v in typing.get_args(tp)}), typing.get_args(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        types: tuple[type, ...] = ()
        for arg in typing.get_args(tp):
            types += (type(None),) if arg is type(None) else _allowed(arg)[0]
        return types, None
    return (tp,), None


def check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    """ValueError unless temperature >= 0 (0 = greedy), top_k >= 1 or None, 0 < top_p <= 1 or None."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not math.isfinite(temperature) \
            or temperature < 0:
        raise ValueError(f"temperature = {temperature!r} must be a finite number >= 0 (0 = greedy)")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k = {top_k!r} must be an integer >= 1, or None (no top-k cut)")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, float))
                              or not 0 < top_p <= 1):
        raise ValueError(f"top_p = {top_p!r} must be in (0, 1], or None (no nucleus cut)")


def _check_types(obj: Any) -> None:
    hints = typing.get_type_hints(type(obj))
    for f in fields(obj):
        value = getattr(obj, f.name)
        types, literals = _allowed(hints[f.name])
        if literals is not None:
            if value not in literals:
                _fail(type(obj).__name__, f.name, value, f"one of {list(literals)}")
            continue
        ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
        if float in types and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if not ok:
            names = " or ".join("None" if t is type(None) else t.__name__ for t in types)
            _fail(type(obj).__name__, f.name, value, f"a value of type {names}")
        if float in types and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
            object.__setattr__(obj, f.name, value)  # JSON round trip keeps floats floats
        if isinstance(value, float) and not math.isfinite(value):
            # Every float setting is a size, a rate or a weight: nan or inf is never meant (nan
            # slips through every range check below, and grad_clip=nan trained to a "finished" run).
            _fail(type(obj).__name__, f.name, value, "a finite number (not nan or inf)")


# ---------------------------------------------------------------- overrides

def _field_index() -> dict[str, str]:
    index: dict[str, str] = {}
    for section, cls in _SECTIONS.items():
        for f in fields(cls):
            index[f.name] = section  # field names are unique across sections (checked in tests)
    return index


def _coerce(section: str, name: str, raw: Any) -> Any:
    """Parse a command-line string into the field's type ("none" → None, "1/8" → 0.125)."""
    if not isinstance(raw, str):
        return raw
    hints = typing.get_type_hints(_SECTIONS[section])
    types, literals = _allowed(hints[name])
    text = raw.strip()
    if literals is not None:
        return text
    if type(None) in types and text.lower() in ("none", "null"):
        return None
    if bool in types:
        if text.lower() in ("1", "true", "yes"):
            return True
        if text.lower() in ("0", "false", "no"):
            return False
        raise ConfigError(f"{section}.{name} = {raw!r}: expected true/false")
    if int in types:
        try:
            return int(text)
        except ValueError:
            pass
    if float in types:
        try:
            if "/" in text:
                num, den = text.split("/")
                return float(num) / float(den)
            return float(text)
        except (ValueError, ZeroDivisionError):
            pass
    if str in types:
        return text
    raise ConfigError(f"{section}.{name} = {raw!r} cannot be parsed as {' or '.join(t.__name__ for t in types)}")


def _locate(key: str) -> tuple[str, str]:
    """(section, field) of a config key given as ``field`` or ``section.field``."""
    index = _field_index()
    section, _, name = key.rpartition(".")
    if not section:
        if name not in index:
            raise ConfigError(f"unknown config key {key!r}; allowed: {sorted(index)}")
        return index[name], name
    if section not in _SECTIONS or name not in {f.name for f in fields(_SECTIONS[section])}:
        raise ConfigError(f"unknown config key {key!r}; allowed: {sorted(index)} (optionally as section.field)")
    return section, name


def config_value(cfg: RunConfig, key: str) -> Any:
    """The value of a config key (``field`` or ``section.field``) in cfg."""
    section, name = _locate(key)
    return getattr(getattr(cfg, section), name)


def apply_overrides(cfg: RunConfig, overrides: dict[str, Any]) -> RunConfig:
    """Return cfg with fields replaced; keys are field names, optionally `section.field`."""
    by_section: dict[str, dict[str, Any]] = {s: {} for s in _SECTIONS}
    for key, value in overrides.items():
        section, name = _locate(key)
        by_section[section][name] = _coerce(section, name, value)
    d = cfg.to_dict()
    for section, values in by_section.items():
        d[section].update(values)
    return RunConfig.from_dict(d)


def parse_set_args(items: list[str]) -> dict[str, str]:
    """`["kappa_bits=0.125", "model.n_layers=8"]` → dict; malformed items raise ConfigError."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {item!r}")
        out[key.strip()] = value
    return out


# ---------------------------------------------------------------- presets

# Presets are data: section overrides of the defaults.  Shape-only presets describe the
# paper's models (PAPER.md §5) for parameter/FLOP counts and cluster launches.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # Tests: a model that trains a step in milliseconds.
    "synthetic-tiny": {
        "model": dict(n_layers=2, dim=32, n_heads=2, latent_bits=4, max_seq_len=66),
        "task": dict(val_size=64, n_generate=32, probe_independent=4, probe_groups=2, probe_group_size=3),
        "train": dict(steps=20, batch_size=8, warmup_steps=2, val_every=10, ckpt_every=10, log_every=5),
    },
    # Demo: 4 layers, D 64, H 8.  Sized for a 2-core AVX2 CPU without native bf16
    # (fp32, ~16k tokens/s): about 2 minutes per model; the Free model reaches ~90% valid.
    "synthetic-quick": {
        "model": dict(n_layers=4, dim=64, n_heads=4, latent_bits=8, max_seq_len=66),
        "task": dict(val_size=1024, n_generate=1000),
        "train": dict(steps=1000, batch_size=32, lr=2e-3, warmup_steps=50, val_every=250, ckpt_every=250),
    },
    # make demo: the quick model for 400 steps, so that the reduced kl_budget sweep (5 runs,
    # two at a time with one thread each) fits in 10 minutes with the install on 2 cores.
    "synthetic-demo": {
        "model": dict(n_layers=4, dim=64, n_heads=4, latent_bits=8, max_seq_len=66),
        "task": dict(val_size=1024, n_generate=1000),
        "train": dict(steps=400, batch_size=32, lr=2e-3, warmup_steps=50, val_every=200, ckpt_every=100),
    },
    # Long runs for the κ = 1/8 question (issue 3): the prototype's shape (D 128, 4 layers,
    # H 8, batch 64), 3x the demo's steps at 2x its batch and 2x its width: 3,000 steps,
    # where the prototype's position effect had stopped growing (FEASIBILITY.md: 0.054-0.059
    # shared-Z agreement at 3,000 steps, 0.064 at 10,000).  About 17 min per Free run alone
    # on a 2-core AVX2 CPU in fp32 (0.34 s/step), about 37 min with one thread while another
    # run uses the other core.  More steps, 8 layers, H = 16 and larger batches are
    # overrides of it (`--set steps=...`; a finished run extends in place).  Named "long", not
    # "paper": the paper gives no size, step count, H or sampling for its synthetic model; the
    # old name "synthetic-paper" still works, with a warning (PRESET_ALIASES).
    "synthetic-long": {
        "model": dict(n_layers=4, dim=128, n_heads=4, latent_bits=8, max_seq_len=66),
        "task": dict(val_size=2048, n_generate=1000),
        "train": dict(steps=3000, batch_size=64, warmup_steps=200, val_every=500, ckpt_every=250),
    },
    # The GPU ladder, after synthetic-long: sizes a 2-core CPU cannot train in a
    # session (`ablate --preset gpu-mid|gpu --device cuda`; `--dry-run --device cuda` prices
    # them from the step times make gpu-check measured).  D 256, 8 layers, H 8 (H 16 is the
    # latent_bits study's point): 5,000 steps, then 20,000 steps at batch 128.
    "synthetic-gpu-mid": {
        "model": dict(n_layers=8, dim=256, n_heads=8, latent_bits=8, max_seq_len=66),
        "task": dict(val_size=2048, n_generate=1000),
        "train": dict(steps=5000, batch_size=64, warmup_steps=300, val_every=1000, ckpt_every=500),
    },
    "synthetic-gpu": {
        "model": dict(n_layers=8, dim=256, n_heads=8, latent_bits=8, max_seq_len=66),
        "task": dict(val_size=2048, n_generate=1000),
        "train": dict(steps=20000, batch_size=128, warmup_steps=500, val_every=2000, ckpt_every=1000),
    },
    # Issue 4's benchmark models on the code-math corpus (python -m ftstudy.data prepare
    # --corpus code-math --out data/code-math), byte-level.  Sized for a 2-core AVX2 CPU in
    # fp32: D 128, 4 layers, 256-byte context, batch 32, 800 steps = 6.6M tokens per model.
    # Measured with one thread each, two runs side by side: about 1.1 s/step for the
    # baseline and 1.65 s/step for the Free model (about 22 min), so baseline + four κ fit
    # in about an hour.  H = 8 (not the paper's 16): a Linear(2^16 → 128) post-sampler
    # would hold 8.4M weights, 8x the rest of the model.
    "code-math-small": {
        "model": dict(vocab_size=258, n_layers=4, dim=128, n_heads=2, latent_bits=8, kappa_bits=1.0,
                      max_seq_len=256),
        "task": dict(name="tokens", data_dir="data/code-math", val_size=128, n_generate=0, probe_independent=0,
                     probe_groups=0),
        "train": dict(steps=800, batch_size=32, lr=2e-3, warmup_steps=50, val_every=200, ckpt_every=100),
    },
    # Issue 15's benchmark suite (python -m ftstudy.data prepare --corpus bench --out data/bench):
    # generated code, arithmetic, word problems and graph paths, byte-level, a 192-byte context
    # (the longest problem is 145 bytes), D 96, 4 layers, 1,200 steps of 16 x 192 bytes.
    # Calibrated so that the baseline scores 0.2-0.8 on every task: results/benchmarks/bench/
    # CALIBRATION.md (about 9 min per baseline with one thread while another run uses the other
    # core).  H = 8, not the paper's 16: at D = 96 a dense Linear(2^16 -> D) post-sampler would
    # hold 6.3M weights, 13x the rest of the model.
    "bench-small": {
        "model": dict(vocab_size=258, n_layers=4, dim=96, n_heads=4, latent_bits=8, kappa_bits=1.0,
                      max_seq_len=192),
        "task": dict(name="tokens", data_dir="data/bench", val_size=64, n_generate=0, probe_independent=0,
                     probe_groups=0),
        "train": dict(steps=1200, batch_size=16, lr=2e-3, warmup_steps=50, val_every=400, ckpt_every=100),
    },
    # (These preset entries share one shape on purpose: a preset is data, one literal each.)
    # The decision benchmark (python -m ftstudy.data prepare --corpus decide --out
    # data/decide): route choice with decoys and the creativity tasks, byte-level, a 160-byte
    # context (the longest document, with the seed prefix, is under 130 bytes), bench-small's
    # model.  Steps from the calibration curves: results/benchmarks/decide/CALIBRATION.md.
    "decide-small": {
        "model": dict(vocab_size=258, n_layers=4, dim=96, n_heads=4, latent_bits=8, kappa_bits=1.0,
                      max_seq_len=160),
        "task": dict(name="tokens", data_dir="data/decide", val_size=64, n_generate=0, probe_independent=0,
                     probe_groups=0),
        # fp32 pinned: "auto" is bf16-mixed on CPUs with native bf16 and 32-true elsewhere, and
        # the comparison's models must train alike on whatever machine resumes them.
        "train": dict(steps=3000, batch_size=16, lr=2e-3, warmup_steps=50, val_every=500, ckpt_every=100,
                      precision="32-true"),
    },
    # Tests: the same task on a tiny model (with a shard folder given by --set data_dir=...).
    "tokens-tiny": {
        "model": dict(vocab_size=258, n_layers=2, dim=32, n_heads=2, latent_bits=4, kappa_bits=1.0, max_seq_len=32),
        "task": dict(name="tokens", data_dir="data/code-math", val_size=8, n_generate=0, probe_independent=0,
                     probe_groups=0),
        "train": dict(steps=10, batch_size=4, warmup_steps=2, val_every=5, ckpt_every=5, log_every=5),
    },
    # Shape only (PAPER.md §5): 1.5B, 28 layers, D 1536, Llama-style with GQA, H 16.
    "paper-1.5b": {
        "model": dict(vocab_size=128256, n_layers=28, dim=1536, n_heads=12, n_kv_heads=4, mlp_hidden=8192,
                      max_seq_len=4096, rope_base=500000.0, tie_embeddings=True, latent_bits=16, kappa_bits=0.5),
        "task": dict(),
        "train": dict(precision="bf16-mixed", accelerator="gpu", strategy="fsdp", activation_checkpointing=True,
                      lr=3e-4, batch_size=512),
    },
    # Shape only: 8B, 32 layers, D 4096 (Llama-3-8B-like), H 16.
    "paper-8b": {
        "model": dict(vocab_size=128256, n_layers=32, dim=4096, n_heads=32, n_kv_heads=8, mlp_hidden=14336,
                      max_seq_len=8192, rope_base=500000.0, latent_bits=16, kappa_bits=0.5),
        "task": dict(),
        "train": dict(precision="bf16-mixed", accelerator="gpu", strategy="fsdp", activation_checkpointing=True,
                      lr=3e-4, batch_size=1024),
    },
}

# Nominal sizes of the shape-only presets, for the within-10% check.
NOMINAL_PARAMS = {"paper-1.5b": 1.5e9, "paper-8b": 8.0e9}


#: Old preset names that still work, with a warning: old name → current name.
PRESET_ALIASES = {"synthetic-paper": "synthetic-long"}


def resolve_preset(name: str, aliases: dict[str, str] = PRESET_ALIASES) -> str:
    """A preset's current name; an old name (``aliases``) is accepted with a warning on stderr."""
    if name in aliases:
        new = aliases[name]
        print(f"warning: preset {name!r} is now called {new!r} (the paper gives no size, step count, H or "
              f"sampling for its synthetic model); using {new!r}", file=sys.stderr)
        return new
    return name


def get_preset(name: str, overrides: dict[str, Any] | None = None) -> RunConfig:
    name = resolve_preset(name)
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; allowed: {sorted(PRESETS)}")
    p = PRESETS[name]
    d = {"model": dict(p.get("model", {})), "task": dict(p.get("task", {})), "train": dict(p.get("train", {})),
         "preset": name}
    return apply_overrides(RunConfig.from_dict(d), overrides or {})
