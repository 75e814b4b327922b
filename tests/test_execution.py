"""The executor of generated code: a pass cannot be faked, and the sandbox isolates.

Every attack is written so that it would *pass* if it worked; each must fail, and where it aims
at the host the host is checked as well (the file, the process, the listener are still there).
"""

from __future__ import annotations

import json
import os
import random
import socket
import struct
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ftstudy.eval.suite import execution, materialize, metrics

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(execution.sandbox_problem() is not None,
                                reason=f"no sandbox on this host: {execution.sandbox_problem()}")

WRONG = "def add(a, b):\n    return a - b\n"  # the program under test gets add() wrong
RIGHT = "def add(a, b):\n    return a + b\n"
TESTS = "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n\ncheck(add)\n"

# Writes a stolen token to every descriptor it can, then exits 0: it passes only if the
# token really was stolen.
LEAK = (
    "import os\n"
    "def leak(tok):\n"
    "    tok = tok if isinstance(tok, bytes) else str(tok).encode()\n"
    "    for fd in range(1, 64):\n"
    "        try:\n"
    "            os.write(fd, tok)\n"
    "        except OSError:\n"
    "            pass\n"
    "    os._exit(0)\n"
)


def run(program: str, tests: str = TESTS, **kw) -> execution.ExecResult:
    return execution.run_program(program, kw.pop("timeout", 5.0), tests=tests, **kw)


def test_a_correct_program_passes_and_a_wrong_one_fails():
    ok = run(RIGHT)
    assert ok.passed and ok.returncode == 0 and ok.sandbox == "bwrap", ok.stderr
    bad = run(WRONG)
    assert bad.status == "failed" and "AssertionError" in bad.stderr
    assert run(RIGHT, tests="def check(c):\n    assert c(1, 1) == 3\ncheck(add)\n").status == "failed"


CHEATS = {
    "os._exit": "import os\nos._exit(0)\n",
    "posix._exit": "import posix\nposix._exit(0)\n",
    "sys.exit": "import sys\nsys.exit(0)\n",
    "raise SystemExit": "raise SystemExit\n",
    "exit builtin": "exit()\n",
    "exit at test time": "import os\n_real = add\ndef add(a, b):\n    os._exit(0)\n",
    "exit through __main__": (
        "import __main__, sys\n"
        "for mod in list(sys.modules.values()):\n"
        "    for v in list(vars(mod).values()):\n"
        "        if callable(v) and getattr(v, '__name__', '') in ('_exit', 'exit_', 'real_exit'):\n"
        "            v(0)\n"
    ),
    "exit found through gc": (
        "import gc\n"
        "for o in gc.get_objects():\n"
        "    if callable(o) and getattr(o, '__name__', '') == '_exit':\n"
        "        o(0)\n"
    ),
    "patched builtins helper": "import builtins\nbuiltins.AssertionError = type('Quiet', (Exception,), {})\n"
                               "builtins.check = lambda c: None\n",
    "own check": "def check(candidate):\n    pass\n",
    "swallow the tests": '"""\n',
    "atexit": "import atexit, os\natexit.register(os._exit, 0)\n",
    "signal at test time": "import signal, os\nsignal.signal(signal.SIGALRM, lambda *a: os._exit(0))\n"
                           "signal.setitimer(signal.ITIMER_REAL, 0.001)\n",
}


@pytest.mark.parametrize("cheat", sorted(CHEATS))
def test_no_early_exit_passes(cheat):
    r = run(WRONG + CHEATS[cheat])
    assert r.status == "failed", (cheat, r)


def test_patched_assert_helpers_are_not_what_the_tests_call():
    # The tests compare through helpers; the program patches them to always agree.
    patched_abs = "import builtins\nbuiltins.abs = lambda x: 0\n"
    assert run(WRONG + patched_abs, tests="assert abs(add(2, 3) - 5) < 1e-9\n").status == "failed"
    patched_isclose = "import math\nmath.isclose = lambda *a, **k: True\n"
    assert run(WRONG + patched_isclose, tests="import math\nassert math.isclose(add(2, 3), 5)\n").status == "failed"
    patched_unittest = "import unittest\nunittest.TestCase.assertEqual = lambda *a, **k: None\n"
    unittest_tests = "import unittest\nunittest.TestCase().assertEqual(add(2, 3), 5)\n"
    assert run(WRONG + patched_unittest, tests=unittest_tests).status == "failed"
    assert run(RIGHT + patched_unittest, tests=unittest_tests).passed  # the restore breaks nothing


STEALS = {
    "caller frame": "import sys\nleak(sys._getframe(1).f_locals['token'])\n",
    "traceback frame": (
        "try:\n    1 / 0\nexcept ZeroDivisionError as e:\n    f = e.__traceback__.tb_frame\n"
        "    while f is not None:\n        if 'token' in f.f_locals:\n            leak(f.f_locals['token'])\n"
        "        f = f.f_back\n"
    ),
    "generator frame": (
        "def g():\n    yield\nit = g()\nnext(it)\nf = it.gi_frame.f_back\n"
        "while f is not None:\n    if 'token' in f.f_locals:\n        leak(f.f_locals['token'])\n    f = f.f_back\n"
    ),
    "trace function": (
        "import sys\n"
        "def tr(frame, event, arg):\n"
        "    if 'token' in frame.f_locals:\n        leak(frame.f_locals['token'])\n"
        "    return tr\n"
        "sys.settrace(tr)\n"
    ),
    "gc referrers": (
        "import gc\n"
        "for o in gc.get_objects():\n"
        "    if isinstance(o, dict) and isinstance(o.get('token'), bytes):\n        leak(o['token'])\n"
    ),
    "current frames": "import sys\nfor f in sys._current_frames().values():\n    leak(f.f_back.f_locals['token'])\n",
    "stdin": "import sys, os\nleak(os.read(0, 1 << 16))\n",
    "memory through ctypes": "import ctypes\nleak(ctypes.string_at(id(leak), 64))\n",
    "memory through /proc": "leak(open('/proc/self/mem', 'rb').read(16))\n",
    "hand-made code": "leak(type(leak.__code__)(*([0] * 16)))\n",
}


@pytest.mark.parametrize("steal", sorted(STEALS))
def test_the_token_cannot_be_stolen(steal):
    r = run(WRONG + LEAK + STEALS[steal])
    assert r.status == "failed", (steal, r)


# ------------------------------------------------------------------------ isolation


def test_file_writes_and_unlinks_outside_the_private_tmp_fail(tmp_path):
    victim = tmp_path / "thesis.tex"
    victim.write_text("years of work")
    # Outside the sandbox's private /tmp, which hides the host's /tmp (where a clone may live).
    outside = Path("/var/tmp") / f"ftstudy-sandbox-escape-{os.getpid()}"
    stdlib_file = Path(os.__file__).resolve()
    attacks = [
        f"import os\nos.makedirs({str(outside)!r}, exist_ok=True)\nopen({str(outside / 'x')!r}, 'w').write('x')\n",
        f"import posix\nposix.unlink({str(victim)!r})\n",
        f"import os\nos.unlink({str(victim)!r})\n",
        f"open({str(stdlib_file)!r}, 'a').close()\n",  # visible, read-only: opening to append fails
        "open('/usr/ftstudy-escape', 'w').write('x')\n",
        "open('/ftstudy-escape', 'w').write('x')\n",
    ]
    for attack in attacks:
        r = run(RIGHT + attack)
        assert r.status == "failed", (attack, r)
    assert victim.read_text() == "years of work"
    assert not outside.exists() and not Path("/ftstudy-escape").exists()
    # The repository itself: absent from the sandbox (or, under /tmp, shadowed by its tmpfs).
    repo_file = ROOT / f".sandbox-escape-{os.getpid()}"
    run(RIGHT + f"import os\nos.makedirs({str(repo_file)!r}, exist_ok=True)\n")
    assert not repo_file.exists()
    # The private /tmp is writable (and is the working directory).
    assert run(RIGHT + "import os\nassert os.getcwd() == '/tmp'\nopen('x', 'w').write('ok')\n"
               "assert open('/tmp/x').read() == 'ok'\n").passed


def test_fork_kill_and_other_processes(tmp_path):
    host = subprocess.Popen(["sleep", "30"])
    try:
        for attack in ("import os\nos.fork()\n", "import posix\nposix.fork()\n",
                       "import subprocess\nsubprocess.run(['true'])\n",
                       "import threading\nt = threading.Thread(target=print)\nt.start()\n",
                       f"import os, signal\nos.kill({host.pid}, signal.SIGKILL)\n",
                       "import os\nassert sorted(os.listdir('/proc')) != []\n"):
            r = run(RIGHT + attack)
            assert r.status == "failed", (attack, r)
        # kill(-1) reaches only what the program may signal: nothing outside its namespace.
        run(RIGHT + "import os, signal\nos.kill(-1, signal.SIGKILL)\n")
        assert host.poll() is None  # still running
    finally:
        host.kill()
        host.wait()


def test_no_network_to_the_host():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.setblocking(False)
    port = server.getsockname()[1]
    try:
        r = run(RIGHT + f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2).send(b'hi')\n")
        assert r.status == "failed", r
        with pytest.raises(BlockingIOError):
            server.accept()  # nobody connected
    finally:
        server.close()


def test_no_access_to_the_parent_environment(monkeypatch):
    monkeypatch.setenv("FTSTUDY_SECRET", "hunter2")
    steal = ("import os\n"
             "assert 'hunter2' in str(os.environ) or 'hunter2' in open(f'/proc/{os.getppid()}/environ').read()\n")
    assert run(RIGHT + steal).status == "failed"
    steal_init = "assert 'hunter2' in open('/proc/1/environ').read()\n"
    assert run(RIGHT + steal_init).status == "failed"
    probe = run(RIGHT + "import os, sys\nassert set(os.environ) <= {'PATH', 'HOME', 'TMPDIR', 'LANG', 'PWD'}, "
                        "sorted(os.environ)\nassert sys.flags.isolated and sys.flags.no_site\n"
                        "assert os.getuid() == 65534\n")
    assert probe.passed, probe.stderr


def _running_with(marker: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


@pytest.mark.parametrize("allow_fork", [False, True])
def test_a_setsid_grandchild_does_not_outlive_the_timeout(allow_fork):
    marker = f"{random.randrange(10**6, 10**7)}.{os.getpid()}"
    program = RIGHT + (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        f"        os.execv('/usr/bin/sleep', ['sleep', {marker!r}])\n"
        "    os._exit(0)\n"
        "while True:\n"
        "    pass\n"
    )
    r = run(program, timeout=1.5, allow_fork=allow_fork)
    assert r.status == ("timeout" if allow_fork else "failed"), r
    deadline = time.monotonic() + 5
    while _running_with(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _running_with(marker) == []


def test_resource_limits():
    big = run(RIGHT + "x = bytearray(10 * 1024 ** 3)\n")
    assert big.status == "failed" and "MemoryError" in big.stderr
    loop = run(RIGHT + "while True:\n    pass\n", timeout=1.0)
    assert loop.status == "timeout" and loop.returncode is None and loop.seconds < 5
    assert run(RIGHT + "open('/tmp/big', 'wb').write(b'x' * (32 << 20))\n").status == "failed"  # RLIMIT_FSIZE


def test_bad_arguments():
    with pytest.raises(ValueError, match="timeout"):
        execution.run_program("pass", timeout=0)
    with pytest.raises(ValueError, match="memory_bytes"):
        execution.run_program("pass", memory_bytes=0)
    with pytest.raises(TypeError):
        execution.run_program(b"pass")  # type: ignore[arg-type]


# ------------------------------------------------------------- no sandbox, explicit opt-in


@pytest.fixture
def no_bwrap(monkeypatch):
    monkeypatch.delenv(execution.ALLOW_UNSANDBOXED_ENV, raising=False)
    monkeypatch.setattr(execution, "bwrap_binary", lambda: None)
    execution._probe.cache_clear()
    yield
    execution._probe.cache_clear()


def test_without_a_sandbox_it_refuses_unless_allowed(no_bwrap, monkeypatch):
    assert "bubblewrap" in execution.sandbox_problem()
    with pytest.raises(execution.SandboxUnavailable, match="no bubblewrap binary.*--allow-unsandboxed"):
        run(RIGHT)
    r = run(RIGHT, allow_unsandboxed=True)
    assert r.passed and r.sandbox == "none"
    assert run(WRONG + CHEATS["os._exit"], allow_unsandboxed=True).status == "failed"  # the token still decides
    monkeypatch.setenv(execution.ALLOW_UNSANDBOXED_ENV, "1")
    assert run(RIGHT).passed


def test_evaluate_refuses_without_opt_in_or_sandbox(no_bwrap, tmp_path, capsys):
    from ftstudy.eval import evaluate

    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"")  # never loaded: the checks come first
    args = ["--checkpoints", str(ckpt), "--tasks", "ftstudy_humaneval", "--out", str(tmp_path / "out")]
    assert evaluate.main(args + ["--allow-unsandboxed"]) == 2
    assert "--allow-unsandboxed needs --confirm-run-unsafe-code" in capsys.readouterr().err
    with pytest.raises(evaluate.EvalError, match="no sandbox for generated code.*--allow-unsandboxed"):
        evaluate._check_sandbox(False)
    evaluate._check_sandbox(True)
    assert os.environ[execution.ALLOW_UNSANDBOXED_ENV] == "1"
    os.environ.pop(execution.ALLOW_UNSANDBOXED_ENV)


# ------------------------------------------------------------------------ the seccomp filter


def run_bpf(prog: bytes, nr: int, arch: int) -> int:
    """A naive classic-BPF interpreter for the instructions the filter uses."""
    ins = [struct.unpack("=HBBI", prog[i:i + 8]) for i in range(0, len(prog), 8)]
    data = struct.pack("=iI", nr, arch) + bytes(56)
    pc, acc = 0, 0
    while True:
        code, jt, jf, k = ins[pc]
        if code == 0x20:
            acc = struct.unpack_from("=I", data, k)[0]
            pc += 1
        elif code == 0x15:
            pc += 1 + (jt if acc == k else jf)
        elif code == 0x35:
            pc += 1 + (jt if acc >= k else jf)
        elif code == 0x06:
            return k
        else:
            raise AssertionError(f"unexpected BPF opcode {code:#x}")


@pytest.mark.parametrize("machine,arch,denied", [
    ("x86_64", 0xC000003E, {57: 0x50001, 58: 0x50001, 56: 0x50001, 435: 0x50026, 0x40000039: 0x50001}),
    ("aarch64", 0xC00000B7, {220: 0x50001, 435: 0x50026}),
])
def test_seccomp_filter_denies_process_creation_only(machine, arch, denied):
    prog = execution.seccomp_no_fork_filter(machine)
    for nr, ret in denied.items():
        assert run_bpf(prog, nr, arch) == ret
    for nr in (0, 1, 2, 3, 59, 60, 221, 231, 434, 436):
        if nr not in denied:
            assert run_bpf(prog, nr, arch) == 0x7FFF0000
    assert run_bpf(prog, 0, 0x40000003) == 0x80000000  # another architecture: killed
    assert execution.seccomp_no_fork_filter("riscv64") is None


# --------------------------------------------------------------------------- HumanEval


def test_every_canonical_solution_passes_in_the_sandbox():
    docs = [json.loads(line) for line in (Path(materialize()) / "humaneval.test.jsonl").open()]
    assert len(docs) == 164

    def one(d):
        program, tests = metrics.humaneval_program(d, d["canonical_solution"])
        return execution.run_program(program, 20.0, tests=tests)

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(one, docs))
    failed = [(d["task_id"], r.status, r.stderr[-300:]) for d, r in zip(docs, results) if not r.passed]
    assert failed == []
    assert all(r.sandbox == "bwrap" for r in results)


def test_sandbox_command(tmp_path):
    samples = tmp_path / "x.samples.json"
    samples.write_text(json.dumps({"ftstudy_humaneval": [
        {"doc_id": 0, "pass@1": 0.0, "response": "    return True\n"},
        {"doc_id": 1, "pass@1": 0.0, "response": "    import os\n    os._exit(0)\n"}]}))
    out = tmp_path / "sandbox.json"
    r = subprocess.run([sys.executable, "-m", "ftstudy.eval.suite", "sandbox", "--samples", str(samples), "--json", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    report = json.loads(out.read_text())
    assert report["canonical"] == {**report["canonical"], "passed": 164, "n": 164, "failed": []}
    assert report["samples"][0]["n"] == 2 and report["samples"][0]["sandbox_pass@1"] == 0.0
