"""Shared test settings: every device test runs on the CPU, and on CUDA where there is one;
a lock holder in another process for the one-writer-per-folder tests."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

# Under pytest-xdist (make test runs `-n 2` on two cores) each worker, and every process it
# starts, computes on one thread: two workers of two threads each would oversubscribe the CPU.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

_HOLD = """import sys, time
from pathlib import Path
from ftstudy.io import folder_lock
with folder_lock(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
"""


@pytest.fixture
def lock_holder() -> Iterator[Callable[..., subprocess.Popen]]:
    """``start(folder, seconds=60)``: a process that holds ``folder``'s ftstudy lock for that
    long (returned once it holds it); killed at the end of the test if still alive."""
    procs: list[subprocess.Popen] = []

    def start(folder: Path, seconds: float = 60) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(folder), str(seconds)], stdout=subprocess.PIPE,
                                text=True, cwd=Path(__file__).resolve().parent.parent)
        procs.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
