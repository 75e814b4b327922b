"""Shared test settings: every device test runs on the CPU, and on CUDA where there is one."""

from __future__ import annotations

import torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
