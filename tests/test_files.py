"""One writer per folder: ftstudy.io.folder_lock across processes."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from ftstudy.io import LOCK_NAME, FolderBusyError, folder_lock


def test_busy_folder_names_the_holder_and_wait_waits(tmp_path: Path, lock_holder) -> None:
    holder = lock_holder(tmp_path / "f", seconds=1.5)
    assert (tmp_path / "f" / LOCK_NAME).read_text().strip() == str(holder.pid)
    with pytest.raises(FolderBusyError, match=rf"f is in use by process {holder.pid} .*--wait"):
        with folder_lock(tmp_path / "f"):
            pass
    t0 = time.perf_counter()
    with folder_lock(tmp_path / "f", wait=True) as path:
        assert time.perf_counter() - t0 > 0.5  # we got it only once the holder let go
        assert path.read_text().strip() == str(os.getpid())
    assert not path.exists()  # removed as we let go


def test_lock_of_a_sigkilled_process_blocks_nobody(tmp_path: Path, lock_holder) -> None:
    holder = lock_holder(tmp_path, seconds=60)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert (tmp_path / LOCK_NAME).read_text().strip() == str(holder.pid)  # the stale file stays...
    with folder_lock(tmp_path):  # ...and blocks nothing: the kernel released the flock
        assert (tmp_path / LOCK_NAME).read_text().strip() == str(os.getpid())
