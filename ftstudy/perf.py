"""Benchmarks that print figures: ``python -m ftstudy.perf mapper``.

Speed targets are ratios measured side by side in one process (machines are noisy),
never timed unit tests.  ``mapper`` checks the binary mapper of ``ftstudy.latent``:
forward + backward at H = 16 against one (tokens x D) @ (D x 2^H) matmul in the same
precision, and the peak extra memory, against the literal dense construction.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ftstudy.latent import binary_mapper, binary_mapper_reference
from ftstudy.lit import cpu_has_native_bf16

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class _PeakRSS:
    """Samples the process's resident memory in a thread: peak above the level at start.

    ``ru_maxrss`` only ever grows, so an extra-memory figure for one call needs sampling.
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


def _best_time(fn: Callable[[], object], repeats: int, device: torch.device = torch.device("cpu")) -> float:
    fn()  # warm-up: allocator, thread pool, kernel selection
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return min(times)


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ftstudy.perf", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="bench", required=True)
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
    args = parser.parse_args(argv)

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
        tmp = args.json.with_suffix(args.json.suffix + ".tmp")
        tmp.write_text(json.dumps(rows, indent=2))
        tmp.replace(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
