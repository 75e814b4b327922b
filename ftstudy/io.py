"""Result files without torch: atomic text writes, the reader of ``metrics.csv``, and the
one-writer-per-folder lock.

Kept free of heavy imports so that plotting (notebooks, ``ftstudy.results.plots``) starts fast.

Every temporary name carries the writer's pid, so two processes never share one.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

#: The repository (or source tree) this package lives in: results/, notebooks/, README.md.
REPO_ROOT = Path(__file__).resolve().parents[1]

__all__ = ["REPO_ROOT", "atomic_write_text", "read_metrics", "LOCK_NAME", "FolderBusyError", "folder_lock", "clear_folder"]

# The lock file of a run or sweep folder: git-ignored, ignored by the run status logic,
# removed when its holder lets go (a killed holder leaves it, stale and harmless).
LOCK_NAME = ".ftstudy.lock"


def atomic_write_text(path: Path, text: str) -> None:
    """Write text so that readers see the old file or the new one, never half of one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_metrics(run_dir: Path) -> list[dict[str, float | str]]:
    """Rows of a run's metrics.csv with numbers parsed and empty cells dropped (the one
    reader for plots and sweeps; only the writer, train.MetricsCSV, keeps raw strings)."""
    rows = []
    with open(Path(run_dir) / "metrics.csv", newline="") as f:
        for r in csv.DictReader(f):
            rows.append({k: (v if k == "split" else float(v)) for k, v in r.items() if v != ""})
    return rows


class FolderBusyError(RuntimeError):
    """Another process holds the folder's lock."""


def _holder(fd: int) -> str:
    """The pid written in a lock file (its holder writes it just after locking: retry briefly)."""
    for _ in range(20):
        pid = os.pread(fd, 32, 0).decode("ascii", errors="replace").strip()
        if pid:
            return pid
        time.sleep(0.025)
    return "unknown"


@contextlib.contextmanager
def folder_lock(folder: Path, *, wait: bool = False, what: str = "folder",
                error: type[Exception] = FolderBusyError) -> Iterator[Path]:
    """Hold an exclusive lock on ``folder`` (created if missing) for the ``with`` block.

    The lock is ``flock`` on ``folder/.ftstudy.lock``, whose content is the holder's pid; the
    kernel drops it when the holder dies, even by SIGKILL, so a stale file blocks nobody.
    A busy folder raises ``error`` naming the holder's pid, or, with ``wait``, waits for it.
    """
    folder = Path(folder)
    path = folder / LOCK_NAME
    while True:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise error(f"cannot lock {what} {folder}: {e}") from e
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(fd)
                if not wait:
                    raise error(f"{what} {folder} is in use by process {holder} (lock {path}); wait for it to "
                                f"finish, or pass --wait to wait for it") from None
                print(f"[ftstudy] {what} {folder} is in use by process {holder}; waiting for it", file=sys.stderr,
                      flush=True)
                fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
        except BaseException:
            os.close(fd)
            raise
        if same:
            break
        os.close(fd)  # the holder removed the file as it let go: lock the current one
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == os.fstat(fd).st_ino:  # still ours (the folder may have been replaced)
                os.unlink(path)  # while still locked, so nobody can lock the unlinked file
        os.close(fd)


def clear_folder(folder: Path) -> None:
    """Delete everything in ``folder`` except its lock file.  Only for a folder the caller has
    checked is ftstudy's and whose lock it holds."""
    for p in Path(folder).iterdir():
        if p.name == LOCK_NAME:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()
