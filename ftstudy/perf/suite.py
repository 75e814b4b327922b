"""Benchmarks that print figures: ``python -m ftstudy.perf [suite|mapper]``.

Speed targets are ratios measured side by side in one process (machines are noisy),
never timed unit tests.

- ``suite`` (the default): training step time, tokens/s and peak memory of the ftstudy
  baseline and Free model against the peer x-transformers (its ``TransformerWrapper`` +
  ``Decoder`` and its ``FreeTransformer``) at the same shapes and precision; model FLOP
  utilisation against a matmul peak measured in the same run; the Free/baseline step-time
  ratio against their analytical FLOP ratio; the binary mapper against its matmul floor;
  KV-cache generation against full recompute; lm-eval loglikelihood throughput.  Prints a
  table with every target met or missed (by how much) and writes
  ``results/perf/<machine>.json``.
- ``mapper``: the binary mapper of ``ftstudy.core.latent`` alone: forward + backward at H = 16
  against one (tokens x D) @ (D x 2^H) matmul in the same precision, and the peak extra
  memory, against the literal dense construction.
"""

from __future__ import annotations

import argparse
import functools
import gc
import importlib.util
import json
import resource
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ftstudy.core.config import ModelConfig
from ftstudy.io import REPO_ROOT, atomic_write_text
from ftstudy.results.report import targets_table  # the table the README's claims print too
from ftstudy.core.latent import binary_mapper, binary_mapper_reference
from ftstudy.run.lit import compile_mode, cpu_has_native_bf16, machine_name
from ftstudy.core.model import FreeTransformer, generate

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@functools.cache
def _libc() -> Any:
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: figures may include memory freed earlier but kept by malloc
        return None


def malloc_mmap_threshold(nbytes: int) -> None:
    """glibc serves allocations of ``nbytes`` or more with their own mmap, so freeing them
    returns the memory to the OS at once (and turns off glibc's dynamic threshold).

    Memory is measured with a low threshold (64 KiB): otherwise glibc, after the first large
    free, keeps later blocks in its heap and an RSS figure for the second model measured in
    a process reads near zero.  Speed is measured with a high one (32 MiB, where glibc's own
    threshold ends up after warm-up): an mmap and page faults for every tensor would slow
    every step down.
    """
    libc = _libc()
    if libc is not None:
        libc.mallopt(-3, int(nbytes))  # M_MMAP_THRESHOLD


MEASURE_MEMORY, MEASURE_SPEED = 1 << 16, 32 << 20


class _PeakRSS:
    """Samples the process's resident memory in a thread: peak above the level at start.

    ``ru_maxrss`` only ever grows, so an extra-memory figure for one call needs sampling.
    Freed heap memory is handed back first (``malloc_trim``) so that the level at start
    is what is live.
    """

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()

    def __enter__(self) -> _PeakRSS:
        gc.collect()
        libc = _libc()
        if libc is not None:
            libc.malloc_trim(0)
        self.base = self.rss()
        self.peak = self.base
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.interval)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())

    @property
    def extra_gib(self) -> float:
        return (self.peak - self.base) / 2**30


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _times(fn: Callable[[], object], warmup: int, repeats: int, device: torch.device) -> list[float]:
    """Wall times of ``repeats`` calls after ``warmup`` untimed ones (allocator, thread pool,
    kernel selection), the device synchronised around each."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def _best_time(fn: Callable[[], object], repeats: int, device: torch.device = torch.device("cpu")) -> float:
    return min(_times(fn, 1, repeats, device))


class _PeakCUDA:
    """Peak allocated CUDA memory above the level at entry."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __enter__(self) -> _PeakCUDA:
        torch.cuda.synchronize(self.device)
        self.base = torch.cuda.memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc: object) -> None:
        torch.cuda.synchronize(self.device)
        self.peak = torch.cuda.max_memory_allocated(self.device)

    @property
    def extra_gib(self) -> float:
        return (self.peak - self.base) / 2**30


def bench_mapper(tokens: int = 4096, dim: int = 128, bits: int = 16, dtype: str = "float32",
                 repeats: int = 3, reference: bool = True, seed: int = 0,
                 device: str = "cpu") -> dict[str, float | int | str]:
    """Time and memory of the efficient mapper (fwd + bwd) vs one matmul and the literal one."""
    dt = _DTYPES[dtype]
    dev = torch.device(device)
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(tokens, bits, generator=g).to(dev, dt).requires_grad_(True)
    weight = (0.02 * torch.randn(dim, 1 << bits, generator=g)).to(dev, dt).requires_grad_(True)
    grad_out = torch.randn(tokens, dim, generator=g).to(dev, dt)
    a = torch.randn(tokens, dim, generator=g).to(dev, dt)
    b = torch.randn(dim, 1 << bits, generator=g).to(dev, dt)
    g = torch.Generator(device=dev).manual_seed(seed)
    peak = (lambda: _PeakCUDA(dev)) if dev.type == "cuda" else _PeakRSS

    def matmul() -> None:
        torch.mm(a, b)

    def run(mapper: Callable) -> Callable[[], None]:
        def step() -> None:
            logits.grad = weight.grad = None
            r, _ = mapper(logits, weight, generator=g)
            r.backward(grad_out)
        return step

    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    out: dict[str, float | int | str] = {"tokens": tokens, "dim": dim, "bits": bits, "dtype": dtype,
                                         "device": name}
    out["matmul_s"] = _best_time(matmul, repeats, dev)
    out["mapper_s"] = _best_time(run(binary_mapper), repeats, dev)
    out["ratio_to_matmul"] = out["mapper_s"] / out["matmul_s"]
    with peak() as mem:
        run(binary_mapper)()
    out["mapper_extra_gib"] = mem.extra_gib
    with peak() as mem:
        matmul()
    out["matmul_extra_gib"] = mem.extra_gib
    if reference:
        out["reference_s"] = _best_time(run(binary_mapper_reference), 1, dev)
        with peak() as mem:
            run(binary_mapper_reference)()
        out["reference_extra_gib"] = mem.extra_gib
    return out


# ---------------------------------------------------------------- the suite

@dataclass(frozen=True)
class Shape:
    """A model and batch shape, the same for every implementation compared."""

    name: str
    dim: int
    n_layers: int
    n_heads: int
    seq_len: int
    batch: int
    vocab: int = 256
    peer_free: bool = True  # also time x-transformers' FreeTransformer (it holds a tokens x 2^H one-hot)

    @property
    def tokens(self) -> int:
        return self.seq_len * self.batch


def _quick_shape() -> Shape:
    from ftstudy.core.config import get_preset

    c = get_preset("synthetic-quick")
    return Shape("quick", c.model.dim, c.model.n_layers, c.model.n_heads, 66, c.train.batch_size,
                 vocab=c.model.vocab_size)


SHAPES: dict[str, Callable[[], Shape]] = {
    "small": lambda: Shape("small", 128, 8, 4, 64, 64),  # the target shape
    "quick": _quick_shape,  # the synthetic-quick model
    "wide": lambda: Shape("wide", 512, 8, 8, 1024, 8, peer_free=False),
}
TINY = Shape("tiny", 32, 2, 2, 16, 4)  # for the tests
LATENT_BITS = 16


def ftstudy_config(shape: Shape, latent_bits: int = 0) -> ModelConfig:
    return ModelConfig(vocab_size=shape.vocab, n_layers=shape.n_layers, dim=shape.dim, n_heads=shape.n_heads,
                       max_seq_len=shape.seq_len, latent_bits=latent_bits, kappa_bits=0.5)


def flops_per_token(cfg: ModelConfig, seq_len: int) -> dict[str, float]:
    """Analytical training FLOPs per token, by part (forward + backward = 3x the forward's
    matmuls).

    Per token, forward: 2 FLOPs per weight of every linear layer (the embedding lookup is
    free, the readout is not), plus causal attention, 2 x 2 x D x (mean context) per layer.
    The Free model adds the encoder block (non-causal attention over all T keys), the
    readout D -> H, and the one product its binary mapper cannot avoid: the gradient
    g @ W of the (tokens x D) @ (D x 2^H) post-sampler, counted once.  Its forward is a
    column gather (no FLOPs), so the literal dense (tokens x 2^H) @ (2^H x D) forward
    of the paper's equations is not counted.
    """
    d, kv = cfg.dim, cfg.kv_heads * cfg.head_dim
    block = 2 * d * d + 2 * d * kv + 3 * d * cfg.hidden  # q, o; k, v; SwiGLU
    ctx = (seq_len + 1) / 2
    parts = {"decoder": 3 * (cfg.n_layers * (2 * block + 4 * d * ctx) + 2 * d * cfg.vocab_size),
             "encoder_block": 0.0, "readout": 0.0, "mapper": 0.0}
    if cfg.is_free:
        parts.update(encoder_block=3 * (2 * block + 4 * d * seq_len), readout=3 * 2 * d * cfg.latent_bits,
                     mapper=2 * d * (1 << cfg.latent_bits))
    return parts


def train_flops(cfg: ModelConfig, batch: int, seq_len: int) -> float:
    """Analytical FLOPs of one training step (see flops_per_token)."""
    return batch * seq_len * sum(flops_per_token(cfg, seq_len).values())


def _median_time(fn: Callable[[], object], warmup: int, repeats: int, device: torch.device) -> float:
    return statistics.median(_times(fn, warmup, repeats, device))


def matmul_peak(dtype: str, device: torch.device, n: int | None = None, repeats: int = 5) -> float:
    """FLOP/s of a square matmul, median of ``repeats``: the peak that MFU is measured against."""
    n = n or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(n, n, device=device, dtype=_DTYPES[dtype])
    b = torch.randn(n, n, device=device, dtype=_DTYPES[dtype])
    t = _median_time(lambda: torch.mm(a, b), 1, repeats, device)
    return 2 * n**3 / t


def _quiet_peer() -> None:
    """x-transformers logs advice (e.g. on rotary width at tiny shapes) through loguru."""
    from loguru import logger

    logger.disable("x_transformers")


def _xt_decoder(shape: Shape, hidden: int) -> torch.nn.Module:
    from x_transformers import Decoder, TransformerWrapper

    _quiet_peer()
    return TransformerWrapper(
        num_tokens=shape.vocab, max_seq_len=shape.seq_len,
        attn_layers=Decoder(dim=shape.dim, depth=shape.n_layers, heads=shape.n_heads,
                            attn_dim_head=shape.dim // shape.n_heads, rotary_pos_emb=True, use_rmsnorm=True,
                            ff_glu=True, ff_swish=True, ff_mult=hidden / shape.dim, ff_no_bias=True,
                            attn_flash=True))


def _xt_free(shape: Shape, hidden: int) -> torch.nn.Module:
    from x_transformers.free_transformer import FreeTransformer as XFree

    _quiet_peer()
    return XFree(num_tokens=shape.vocab, dim=shape.dim, dec_head_depth=shape.n_layers // 2,
                 dec_tail_depth=shape.n_layers - shape.n_layers // 2, max_seq_len=shape.seq_len + 1,
                 heads=shape.n_heads, attn_dim_head=shape.dim // shape.n_heads, latent_bits=LATENT_BITS,
                 ff_glu=True, ff_swish=True, ff_mult=hidden / shape.dim, ff_no_bias=True, attn_flash=True)


def _build_train(impl: str, shape: Shape, dtype: str, device: torch.device,
                 seed: int = 0, compile: bool = False) -> tuple[Callable[[], None], dict[str, Any]]:
    """One implementation's training step (AdamW, forward + backward + update), built and run
    once inside a memory window: parameters, gradients, optimizer state and activations.
    ``compile`` (ftstudy only): the forward through ``torch.compile`` in the mode training uses
    (``TrainConfig.compile``: CUDA graphs on a GPU); the first call compiles."""
    torch.manual_seed(seed)
    cfg = ftstudy_config(shape, LATENT_BITS if impl.endswith("free") else 0)
    peak = (lambda: _PeakCUDA(device)) if device.type == "cuda" else _PeakRSS
    idx = torch.randint(0, shape.vocab, (shape.batch, shape.seq_len + 1), device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")
    gc.collect()
    malloc_mmap_threshold(MEASURE_MEMORY)
    with peak() as mem:
        if impl.startswith("ftstudy"):
            model: torch.nn.Module = FreeTransformer(cfg).to(device)
            forward = torch.compile(model.forward, mode=compile_mode(device), dynamic=False) if compile else model

            def loss() -> torch.Tensor:
                if compile and device.type == "cuda":
                    torch.compiler.cudagraph_mark_step_begin()
                out = forward(idx[:, :-1], idx[:, 1:])
                assert out.loss is not None
                return out.loss
        elif impl == "xt-decoder":
            model = _xt_decoder(shape, cfg.hidden).to(device)

            def loss() -> torch.Tensor:
                logits = model(idx[:, :-1])
                return F.cross_entropy(logits.flatten(0, 1).float(), idx[:, 1:].flatten())
        elif impl == "xt-free":
            model = _xt_free(shape, cfg.hidden).to(device)

            def loss() -> torch.Tensor:
                return model(idx)
        else:
            raise ValueError(f"unknown implementation {impl!r}; allowed: ftstudy-base, ftstudy-free, "
                             "xt-decoder, xt-free")
        if compile and not impl.startswith("ftstudy"):
            raise ValueError(f"compile is for the ftstudy implementations, not {impl!r}")
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            with autocast:
                value = loss()
            value.backward()
            opt.step()

        step()
    malloc_mmap_threshold(MEASURE_SPEED)
    row = {"bench": "train", "impl": impl, "compiled": compile, "shape": shape.name, "dtype": dtype, "dim": shape.dim,
           "n_layers": shape.n_layers, "n_heads": shape.n_heads, "seq_len": shape.seq_len, "batch": shape.batch,
           "params": sum(p.numel() for p in model.parameters()), "peak_gib": mem.extra_gib,
           "flops_per_step": train_flops(cfg, shape.batch, shape.seq_len)}
    return step, row


def bench_train(impls: list[str], shape: Shape, dtype: str, device: torch.device, warmup: int = 2,
                repeats: int = 5, compile: bool = False) -> list[dict[str, Any]]:
    """Median step time, tokens/s and peak memory of each implementation (ftstudy-base,
    ftstudy-free, xt-decoder, xt-free) at one shape.  The steps are timed in interleaved
    rounds (one step of each implementation per round), so a slow spell of a noisy machine
    hits every implementation alike instead of one of them."""
    built = [_build_train(impl, shape, dtype, device, compile=compile) for impl in impls]
    times: list[list[float]] = [[] for _ in built]
    for r in range(warmup + repeats):
        for i, (step, _) in enumerate(built):
            _sync(device)
            t0 = time.perf_counter()
            step()
            _sync(device)
            if r >= warmup:
                times[i].append(time.perf_counter() - t0)
    rows = []
    for (_, row), ts in zip(built, times):
        t = statistics.median(ts)
        rows.append({**row, "step_s": t, "tokens_per_s": shape.tokens / t, "step_s_all": ts})
    del built
    gc.collect()
    return rows


def bench_generate(shape: Shape, latent_bits: int, device: torch.device, new_tokens: int = 256,
                   prompt_len: int = 16, batch: int = 8, repeats: int = 3, compile: bool = False) -> dict[str, Any]:
    """Tokens/s of sampling ``new_tokens`` with the KV cache and with full recompute;
    ``compile``: the cache path's static decode steps (``generate(static=True)``) through
    ``torch.compile`` in training's mode (a captured CUDA graph on a GPU), the recompute path
    through ``torch.compile(dynamic=True)`` (its window grows); both compiled by an untimed
    first call."""
    torch.manual_seed(0)
    cfg = ftstudy_config(replace(shape, seq_len=prompt_len + new_tokens), latent_bits)
    eager = FreeTransformer(cfg).to(device).eval()
    models = {True: eager, False: eager}
    if compile:
        models = {True: torch.compile(eager, mode=compile_mode(device), dynamic=False),
                  False: torch.compile(eager, dynamic=True)}
    prompt = torch.randint(0, shape.vocab, (batch, prompt_len), device=device)
    out: dict[str, Any] = {"bench": "generate", "impl": "ftstudy-free" if latent_bits else "ftstudy-base",
                           "shape": shape.name, "dtype": "float32", "batch": batch, "prompt": prompt_len,
                           "new_tokens": new_tokens, "compiled": compile}
    for use_cache in (True, False):
        def run() -> None:
            with torch.no_grad():
                generate(models[use_cache], prompt, new_tokens, z_prompt="prior",  # type: ignore[arg-type]
                         generator=torch.Generator(device=device).manual_seed(0), use_cache=use_cache,
                         static=compile and use_cache)
        t = _median_time(run, 1, repeats if use_cache else 1, device)
        out["cache_s" if use_cache else "recompute_s"] = t
    out["cache_tokens_per_s"] = batch * new_tokens / out["cache_s"]
    out["recompute_tokens_per_s"] = batch * new_tokens / out["recompute_s"]
    out["speedup"] = out["recompute_s"] / out["cache_s"]
    return out


def bench_loglikelihood(shape: Shape, latent_bits: int, device: torch.device, n_requests: int = 512,
                        batch_size: int = 32) -> dict[str, Any]:
    """Requests/s of FTStudyLM.loglikelihood on held-out GPT-3 arithmetic (prompt, answer)
    pairs, byte-level, random weights (throughput does not depend on them)."""
    import random

    from lm_eval.api.instance import Instance

    from ftstudy.eval.harness import FTStudyLM
    from ftstudy.tasks.corpus import ByteTokenizer
    from ftstudy.tasks.mathgen import ARITH_KINDS, arithmetic

    tok = ByteTokenizer()
    cfg = ftstudy_config(replace(shape, vocab=tok.vocab_size, seq_len=256), latent_bits)
    torch.manual_seed(0)
    model = FreeTransformer(cfg)
    rng = random.Random(0)
    reqs = []
    for i in range(n_requests):
        p = arithmetic(ARITH_KINDS[i % len(ARITH_KINDS)], rng, "eval")
        reqs.append(Instance(request_type="loglikelihood", doc={}, idx=i,
                             arguments=(f"Question: {p.question}\nAnswer:", f" {p.answer}")))
    lm = FTStudyLM(model=model, tokenizer=tok, batch_size=batch_size, device=str(device))
    lm.loglikelihood(reqs[:batch_size])  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    lm.loglikelihood(reqs, disable_tqdm=True)
    _sync(device)
    t = time.perf_counter() - t0
    return {"bench": "loglikelihood", "impl": "ftstudy-free" if latent_bits else "ftstudy-base", "shape": shape.name,
            "dtype": "float32", "requests": n_requests, "batch_size": batch_size, "seconds": t,
            "requests_per_s": n_requests / t}


# Targets of issue 6, as (name, row selector, ratio function, threshold, direction).
def evaluate_targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each target's measured ratio, met or missed, and by how much (side by side in one run)."""
    def find(**kw: Any) -> dict[str, Any] | None:
        return next((r for r in rows if all(r.get(k) == v for k, v in kw.items())), None)

    out = []

    def add(name: str, measured: float | None, threshold: float, higher: bool, note: str = "") -> None:
        if measured is None:
            out.append({"target": name, "measured": None, "threshold": threshold, "met": None,
                        "note": note or "not measured in this run"})
            return
        met = measured >= threshold if higher else measured <= threshold
        by = measured / threshold
        out.append({"target": name, "measured": measured, "threshold": threshold, "met": met,
                    "margin": by if higher else 1 / by, "note": note})

    dtypes = sorted({r["dtype"] for r in rows if r["bench"] == "train"})
    for dt in dtypes:
        for shape, need in (("small", 1.5), ("wide", 1.0)):
            ours, peer = find(bench="train", impl="ftstudy-base", shape=shape, dtype=dt), \
                find(bench="train", impl="xt-decoder", shape=shape, dtype=dt)
            add(f"baseline tokens/s vs x-transformers decoder, {shape}, {dt} (>= {need}x)",
                ours and peer and ours["tokens_per_s"] / peer["tokens_per_s"], need, True)
        ours, peer = find(bench="train", impl="ftstudy-free", shape="small", dtype=dt), \
            find(bench="train", impl="xt-free", shape="small", dtype=dt)
        add(f"Free step speed vs x-transformers FreeTransformer, H=16, small, {dt} (>= 8x)",
            ours and peer and peer["step_s"] / ours["step_s"], 8.0, True)
        add(f"Free peak memory vs x-transformers FreeTransformer, H=16, small, {dt} (<= 0.1x)",
            ours and peer and ours["peak_gib"] / peer["peak_gib"], 0.1, False)
        for shape in ("small", "quick", "wide"):
            b, f = find(bench="train", impl="ftstudy-base", shape=shape, dtype=dt), \
                find(bench="train", impl="ftstudy-free", shape=shape, dtype=dt)
            if b and f:
                flop_ratio = f["flops_per_step"] / b["flops_per_step"]
                add(f"Free/baseline step time over their FLOP ratio ({flop_ratio:.2f}), {shape}, {dt} (<= 1.15)",
                    (f["step_s"] / b["step_s"]) / flop_ratio, 1.15, False)
    wide = [r for r in rows if r["bench"] == "train" and r["impl"] == "ftstudy-base" and r["shape"] == "wide"]
    bf16 = next((r for r in wide if r["dtype"] == "bfloat16"), None)
    add("baseline MFU at the wide shape, bf16, against the measured bf16 matmul peak (>= 0.40)",
        bf16 and bf16.get("mfu"), 0.40, True,
        "" if bf16 else "no bf16 row: this device has no native bf16 matmul (see the fp32 MFU in the table)")
    gen = find(bench="generate", impl="ftstudy-free") or find(bench="generate", impl="ftstudy-base")
    add("KV-cache generation vs full recompute, 256 new tokens (>= 5x)", gen and gen["speedup"], 5.0, True)
    return out


def run_suite(shapes: list[str], dtypes: list[str] | None, device: torch.device, repeats: int = 5,
              peer: bool = True, tiny: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every measurement of the suite, in one process; returns the JSON written to results/perf."""
    native_bf16 = device.type == "cuda" or cpu_has_native_bf16()
    dtypes = dtypes or (["float32", "bfloat16"] if native_bf16 else ["float32"])
    rows: list[dict[str, Any]] = []
    peaks = {}
    for dt in dtypes:
        peaks[dt] = matmul_peak(dt, device, n=256 if tiny else None)
        log(f"matmul peak {dt}: {peaks[dt] / 1e9:.0f} GFLOP/s")
    shape_objs = [TINY] if tiny else [SHAPES[s]() for s in shapes]
    for shape in shape_objs:
        for dt in dtypes:
            impls = ["ftstudy-base", "ftstudy-free"]
            if peer:
                impls += ["xt-decoder"] + (["xt-free"] if shape.peer_free else [])
            for r in bench_train(impls, shape, dt, device, warmup=1 if tiny else 2, repeats=repeats):
                impl = r["impl"]
                r["mfu"] = r["flops_per_step"] / r["step_s"] / peaks[dt] if impl.startswith("ftstudy") else None
                rows.append(r)
                log(f"train {shape.name:5s} {dt:8s} {impl:13s} {r['step_s'] * 1e3:9.1f} ms/step "
                    f"{r['tokens_per_s']:9.0f} tok/s  peak {r['peak_gib']:.2f} GiB"
                    + (f"  MFU {r['mfu']:.1%}" if r["mfu"] is not None else ""))
    first = shape_objs[0]
    for bits in (0, LATENT_BITS if not tiny else 4):
        g = bench_generate(first, bits, device, new_tokens=16 if tiny else 256, repeats=1 if tiny else 3)
        rows.append(g)
        log(f"generate {first.name} {g['impl']}: cache {g['cache_tokens_per_s']:.0f} tok/s, recompute "
            f"{g['recompute_tokens_per_s']:.0f} tok/s: {g['speedup']:.1f}x")
        if importlib.util.find_spec("lm_eval") is None:  # a GPU machine's own environment may lack it
            log(f"lm-eval loglikelihood {first.name}: skipped, lm-eval is not installed")
            continue
        ll = bench_loglikelihood(first, bits, device, n_requests=16 if tiny else 512, batch_size=8 if tiny else 32)
        rows.append(ll)
        log(f"lm-eval loglikelihood {first.name} {ll['impl']}: {ll['requests_per_s']:.1f} requests/s")
    for bits in ((4,) if tiny else (8, 12, 16)):
        for dt in dtypes:
            m = bench_mapper(tokens=256 if tiny else 4096, dim=first.dim, bits=bits, dtype=dt, repeats=3,
                             reference=False, device=str(device))
            m["bench"], m["impl"] = "mapper", "ftstudy"
            rows.append(m)
            log(f"mapper H={bits} {dt}: {m['ratio_to_matmul']:.2f}x its matmul floor")
    return {"machine": machine_name(device), "device": str(device), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "native_bf16": native_bf16, "matmul_peak_flops": peaks, "rows": rows,
            "targets": evaluate_targets(rows)}


def format_suite(result: dict[str, Any]) -> str:
    """The suite as a markdown report: the training table, generation, evaluation, mapper,
    and every target with its measured ratio."""
    rows = result["rows"]
    lines = [f"# Performance on {result['machine']} (torch {result['torch']}, {result['threads']} threads)", "",
             "Matmul peak measured in the same run: "
             + ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in result["matmul_peak_flops"].items()), "",
             "## Training step (AdamW; median of interleaved rounds after warm-up)", "",
             "| shape | dtype | implementation | params | ms/step | tokens/s | peak GiB | MFU |",
             "|---|---|---|---|---|---|---|---|"]
    for r in (r for r in rows if r["bench"] == "train"):
        mfu = f"{r['mfu']:.1%}" if r.get("mfu") is not None else "–"
        lines.append(f"| {r['shape']} (D {r['dim']}, L {r['n_layers']}, T {r['seq_len']}, B {r['batch']}) | "
                     f"{r['dtype']} | {r['impl']} | {r['params']:,} | {r['step_s'] * 1e3:.1f} | "
                     f"{r['tokens_per_s']:,.0f} | {r['peak_gib']:.2f} | {mfu} |")
    lines += ["", "## Generation and evaluation", "", "| what | implementation | figure |", "|---|---|---|"]
    for r in rows:
        if r["bench"] == "generate":
            lines.append(f"| generate {r['new_tokens']} tokens, batch {r['batch']} ({r['shape']}) | {r['impl']} | "
                         f"KV cache {r['cache_tokens_per_s']:,.0f} tok/s, recompute "
                         f"{r['recompute_tokens_per_s']:,.0f} tok/s: {r['speedup']:.1f}x |")
        elif r["bench"] == "loglikelihood":
            lines.append(f"| lm-eval loglikelihood, {r['requests']} arithmetic requests ({r['shape']}) | "
                         f"{r['impl']} | {r['requests_per_s']:.1f} requests/s |")
        elif r["bench"] == "mapper":
            lines.append(f"| binary mapper fwd+bwd, H={r['bits']}, {r['tokens']} tokens, D {r['dim']}, "
                         f"{r['dtype']} | ftstudy | {r['ratio_to_matmul']:.2f}x its matmul floor "
                         f"({r['mapper_s'] * 1e3:.1f} vs {r['matmul_s'] * 1e3:.1f} ms) |")
    lines += ["", "## Targets (ratios from this run)", "", targets_table(result)]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- scale (shape-only presets)

PAPER_OVERHEAD = {"paper-1.5b": 0.036, "paper-8b": 0.031}  # the paper's quoted compute overhead


def scale_report(preset: str) -> dict[str, Any]:
    """Parameters and training FLOPs of a preset's baseline and Free model, built on the meta
    device (no memory), and the Free overhead as a fraction of the baseline: the encoder
    block alone (what the paper's 3.6% / 3.1% count), and with the readout and the
    post-sampler's unavoidable (tokens x D) @ (D x 2^H) gradient product."""
    from ftstudy.core.config import get_preset

    cfg = get_preset(preset)
    m = cfg.model
    with torch.device("meta"):
        base = FreeTransformer(replace(m, latent_bits=0))
        free = FreeTransformer(m)
    t = m.max_seq_len
    parts = flops_per_token(m, t)
    f_base, f_free = parts["decoder"], sum(parts.values())
    block = sum(p.numel() for p in base.blocks[0].parameters())
    enc_flops = parts["encoder_block"]
    return {"preset": preset, "n_layers": m.n_layers, "dim": m.dim, "latent_bits": m.latent_bits, "seq_len": t,
            "params_base": base.num_parameters(), "params_free": free.num_parameters(),
            "params_encoder_block": block, "params_post_sampler": (1 << m.latent_bits) * m.dim,
            "train_flops_per_token_base": f_base, "train_flops_per_token_free": f_free,
            "overhead_params": free.num_parameters("latent") / base.num_parameters(),
            "overhead_flops_encoder_block": enc_flops / f_base,
            "overhead_flops": f_free / f_base - 1, "paper_overhead": PAPER_OVERHEAD.get(preset),
            "strategy": cfg.train.strategy, "precision": cfg.train.precision,
            "activation_checkpointing": cfg.train.activation_checkpointing}


def format_scale(rows: list[dict[str, Any]]) -> str:
    lines = ["| preset | params (baseline → Free) | train FLOPs/token (baseline → Free) | Free overhead: params | "
             "FLOPs, encoder block | FLOPs, all | paper | settings |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        paper = f"{r['paper_overhead']:.1%}" if r["paper_overhead"] is not None else "–"
        lines.append(
            f"| {r['preset']} (L {r['n_layers']}, D {r['dim']}, H {r['latent_bits']}, T {r['seq_len']}) | "
            f"{r['params_base'] / 1e9:.2f}B → {r['params_free'] / 1e9:.2f}B | "
            f"{r['train_flops_per_token_base'] / 1e9:.1f} → {r['train_flops_per_token_free'] / 1e9:.1f} GFLOP | "
            f"{r['overhead_params']:.1%} | {r['overhead_flops_encoder_block']:.1%} | {r['overhead_flops']:.1%} | "
            f"{paper} | {r['precision']}, {r['strategy']}, activation checkpointing "
            f"{'on' if r['activation_checkpointing'] else 'off'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ftstudy.perf", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="bench")
    q = sub.add_parser("suite", help="the whole suite against x-transformers; table + results/perf/<machine>.json")
    q.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=["small", "quick", "wide"])
    q.add_argument("--dtype", nargs="+", choices=sorted(_DTYPES), default=None,
                   help="default: float32, plus bfloat16 where matmuls have native bf16 (CUDA, AVX512-BF16, AMX)")
    q.add_argument("--repeats", type=int, default=5, help="timed steps per measurement (median)")
    q.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    q.add_argument("--no-peer", action="store_true", help="skip x-transformers")
    q.add_argument("--tiny", action="store_true", help="tiny shapes, seconds: checks the command runs (tests)")
    q.add_argument("--out", type=Path, default=None,
                   help="JSON path (default results/perf/<machine>.json; a .md report is written beside it)")
    sc = sub.add_parser("scale", help="parameters, FLOPs and Free overhead of the shape-only presets (meta device)")
    sc.add_argument("--presets", nargs="+", default=sorted(PAPER_OVERHEAD))
    sc.add_argument("--json", type=Path, default=None, help="also write the rows to this file "
                    "(the committed one is results/perf/scale.json)")
    p = sub.add_parser("mapper", help="binary mapper fwd+bwd vs one matmul, and peak memory")
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--bits", type=int, default=16)
    p.add_argument("--dtype", nargs="+", choices=sorted(_DTYPES), default=None,
                   help="default: float32, plus bfloat16 where the CPU has native bf16 (AVX512-BF16/AMX); "
                        "on AVX2-only CPUs one bf16 matmul of this size takes minutes")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--no-reference", action="store_true", help="skip the literal (5 GiB) version")
    p.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv if argv is not None else (sys.argv[1:] or ["suite"]))
    if args.bench == "suite":
        return _main_suite(args)
    if args.bench == "scale":
        from ftstudy.core.config import PRESETS
        bad = [n for n in args.presets if n not in PRESETS]
        if bad:
            print(f"error: unknown preset(s) {bad}; allowed: {sorted(PRESETS)}", file=sys.stderr)
            return 2
        rows = [scale_report(n) for n in args.presets]
        print(format_scale(rows))
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(args.json, json.dumps(rows, indent=2))
        return 0

    rows = []
    native_bf16 = cpu_has_native_bf16() or args.device.startswith("cuda")
    dtypes = args.dtype or (["float32", "bfloat16"] if native_bf16 else ["float32"])
    if not native_bf16:
        print(f"CPU capability {torch.backends.cpu.get_cpu_capability()}: no native bf16 matmul here")
    for dtype in dtypes:
        row = bench_mapper(args.tokens, args.dim, args.bits, dtype, args.repeats,
                           reference=not args.no_reference, device=args.device)
        rows.append(row)
        ok_time = row["ratio_to_matmul"] <= 1.5
        ok_mem = row["mapper_extra_gib"] < 0.5
        print(f"[{dtype}] H={row['bits']} tokens={row['tokens']} D={row['dim']} on {row['device']}")
        print(f"  one matmul ({row['tokens']}x{row['dim']})@({row['dim']}x{1 << row['bits']}): "
              f"{row['matmul_s']:.3f} s, extra memory {row['matmul_extra_gib']:.2f} GiB")
        print(f"  binary_mapper fwd+bwd: {row['mapper_s']:.3f} s = {row['ratio_to_matmul']:.2f}x the matmul "
              f"(target <= 1.5x: {'met' if ok_time else 'MISSED'}), extra memory "
              f"{row['mapper_extra_gib']:.3f} GiB (target < 0.5: {'met' if ok_mem else 'MISSED'})")
        if "reference_s" in row:
            print(f"  literal reference fwd+bwd: {row['reference_s']:.2f} s, extra memory "
                  f"{row['reference_extra_gib']:.2f} GiB")
    if args.json:
        atomic_write_text(args.json, json.dumps(rows, indent=2))
    return 0


def _main_suite(args: argparse.Namespace) -> int:
    if args.repeats < 1:
        print(f"error: --repeats must be >= 1, got {args.repeats}", file=sys.stderr)
        return 2
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"error: --device {args.device}: CUDA is not available here; allowed: cpu", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    if not args.no_peer:
        try:
            import x_transformers  # noqa: F401
        except ImportError:
            print("error: x-transformers is not installed (pip install -r requirements.txt); or pass --no-peer",
                  file=sys.stderr)
            return 2
    result = run_suite(args.shapes, args.dtype, device, repeats=args.repeats, peer=not args.no_peer,
                       tiny=args.tiny)
    report = format_suite(result)
    print()
    print(report)
    out = args.out or REPO_ROOT / "results" / "perf" / f"{result['machine']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(result, indent=2))
    atomic_write_text(out.with_suffix(".md"), report)
    print(f"[ftstudy.perf.suite] wrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
