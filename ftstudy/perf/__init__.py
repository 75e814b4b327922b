"""Benchmarks that print figures (``python -m ftstudy.perf``): step time, memory and MFU
against x-transformers, the mapper against its matmul floor, generation with and without the
KV cache, lm-eval throughput, and FLOP shares at the paper's scale.

May import every layer below the command line.
"""
