"""The executor of generated code: the verdict is made outside the program's process, from
plain data, so nothing the program does to its own interpreter fakes a pass (issue 24); the
sandbox isolates, and cannot be used to exhaust the host.

Every attack is written so that it would *pass* if it worked (most of them did pass before
issue 24, when the program's process ran the tests and held a token); each must fail, through
every entry point: :func:`execution.check_cases` and :func:`execution.run_tests_apart`, the
bench code scorer, HumanEval's pass@1 on a problem scored by cases and on one whose tests run
apart, lm-eval's ``process_results`` functions, and ``python -m ftstudy.eval.suite sandbox
--samples``. Where an attack aims at the host, the host is checked as well.
"""

from __future__ import annotations

import json
import math
import os
import random
import socket
import struct
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ftstudy.eval.suite import execution, materialize, metrics
from ftstudy.eval.suite.execution import Case

ROOT = Path(__file__).resolve().parents[1]
NO_SANDBOX = execution.sandbox_problem()
needs_sandbox = pytest.mark.skipif(NO_SANDBOX is not None, reason=f"no sandbox on this host: {NO_SANDBOX}")

WRONG = "def add(a, b):\n    return a - b\n"  # the program under test gets add() wrong
RIGHT = "def add(a, b):\n    return a + b\n"
CASES = [Case((2, 3), 5), Case((-1, 1), 0), Case((2, 3), 5, "close", tol=1e-9)]
# Tests of the old kind (one process ran program and tests): helpers the program could patch.
APART_TESTS = ("import re\n"
               "assert abs(add(2, 3) - 5) < 1e-9\n"
               "assert re.fullmatch('0', str(add(-1, 1)))\n"
               "assert add(4, 4) == 8\n")


def run(program: str, cases=CASES, **kw) -> execution.ExecResult:
    return execution.check_cases(program, "add", cases, kw.pop("timeout", 5.0), **kw)


@needs_sandbox
def test_a_correct_program_passes_and_a_wrong_one_fails():
    ok = run(RIGHT)
    assert ok.passed and ok.returncode == 0 and ok.sandbox == "bwrap", ok.stderr
    bad = run(WRONG)
    assert bad.status == "failed" and "case 1: add(2, 3) returned -1, expected (exact) 5" in bad.stderr
    assert run(RIGHT, [Case((1, 1), 3)]).status == "failed"
    assert execution.run_tests_apart(RIGHT, "add", APART_TESTS).passed
    bad = execution.run_tests_apart(WRONG, "add", APART_TESTS)
    assert bad.status == "failed" and "AssertionError" in bad.stderr


# ------------------------------------------------------------------- the verdict: plain data


def test_the_wire_carries_plain_data_only():
    value = (1, [True, None, 2.5, "s\udcff"], {"a": (1,), 2: [], (3, "x"): {}})
    assert execution.wire_decode(json.loads(json.dumps(execution.wire_encode(value)))) == value
    for bad in ({1, 2}, b"x", float("nan"), math.inf, object(), type("I", (int,), {})(3), [1, frozenset()],
                type("L", (list,), {})()):
        with pytest.raises(execution.WireError):
            execution.wire_encode(bad)
    for text in ('{"set": [1]}', '{"tuple": [1], "x": 2}', '{"dict": [[[1], 2]]}', '{"dict": [[1, 2], [1, 3]]}',
                 '{"dict": [[1, 2, 3]]}', "1e999", "[NaN]", '{"a": 1}'):
        with pytest.raises((execution.WireError, ValueError)):
            execution.wire_decode(execution._wire_loads(text))


def test_case_kinds_compare_in_this_process():
    assert Case((), 1).holds(1) and not Case((), 1).holds(True) and not Case((), 1).holds(1.0)
    assert Case((), [1, (2,)]).holds([1, (2,)]) and not Case((), [1, (2,)]).holds([1, [2]])
    assert Case((), {1: "a"}).holds({1: "a"}) and not Case((), {1: "a"}).holds({True: "a"})
    assert Case((), 1, "equal").holds(True) and Case((), 1, "equal").holds(1.0)  # HumanEval's ==
    assert Case((), 0.5, "close", tol=1e-6).holds(0.5000001) and not Case((), 0.5, "close", tol=1e-6).holds("x")
    assert not Case((), 0.5, "close", tol=1e-6).holds(10 ** 400)  # OverflowError in the comparison: no pass
    assert Case((), True, "truthy").holds([0]) and Case((), False, "truthy").holds("")
    assert Case((), True, "is").holds(True) and not Case((), True, "is").holds(1)
    assert Case((), (1, 2), "tuple").holds([1, 2]) and not Case((), (1, 2), "tuple").holds(3)
    with pytest.raises(ValueError, match="case kind 'same' is not allowed; allowed:"):
        Case((), 1, "same")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not plain data"):
        Case(({1},), 1)
    with pytest.raises(ValueError, match="tol > 0"):
        Case((), 1.0, "close")
    with pytest.raises(ValueError, match="True, False or None"):
        Case((), 1, "is")
    with pytest.raises(TypeError, match="tuple"):
        Case([1], 1)  # type: ignore[arg-type]


@needs_sandbox
def test_outputs_come_back_as_plain_data_or_not_at_all():
    program = ("class Yes:\n    def __eq__(self, other):\n        return True\n"
               "class YesInt(int):\n    def __eq__(self, other):\n        return True\n"
               "def f(kind):\n"
               "    return {'tuple': (1, 'a'), 'dict': {'k': [1.5, None]}, 'set': {1}, 'yes': Yes(),\n"
               "            'yesint': YesInt(3), 'nan': float('nan'), 'big': 10 ** 5000, 'bool': True}[kind]\n")
    r = execution.run_calls(program, "f", [("tuple",), ("dict",), ("set",), ("yes",), ("yesint",), ("nan",),
                                          ("big",), ("bool",), ("missing",)])
    assert r.problem is None and len(r.answers) == 9
    assert [a.value for a in r.answers[:2]] == [(1, "a"), {"k": [1.5, None]}]
    assert all("WireError" in a.error for a in r.answers[2:6]), r.answers
    assert "ValueError" in r.answers[6].error and r.answers[7].value is True and "KeyError" in r.answers[8].error


@needs_sandbox
def test_forged_answers_pass_only_if_they_are_right():
    # The program writes answers of its own on every descriptor, then exits: they are checked
    # like any other answer, and an answer right for (2, 3) is wrong for (-1, 1).
    forge = ("import os\nfor fd in range(1, 64):\n    try:\n"
             "        os.write(fd, b'{\"value\":5}\\n{\"value\":5}\\n{\"value\":5}\\n')\n"
             "    except OSError:\n        pass\nos._exit(0)\n")
    assert run(WRONG + forge).status == "failed"
    assert execution.run_tests_apart(WRONG + forge, "add", APART_TESTS).status == "failed"


CHEATS = {
    "os._exit": "import os\nos._exit(0)\n",
    "posix._exit": "import posix\nposix._exit(0)\n",
    "sys.exit": "import sys\nsys.exit(0)\n",
    "raise SystemExit": "raise SystemExit\n",
    "exit builtin": "exit()\n",
    "exit at call time": "import os\n_real = add\ndef add(a, b):\n    os._exit(0)\n",
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
    "swallow the rest": '"""\n',
    "atexit": "import atexit, os\natexit.register(os._exit, 0)\n",
    "signal at call time": "import signal, os\nsignal.signal(signal.SIGALRM, lambda *a: os._exit(0))\n"
                           "signal.setitimer(signal.ITIMER_REAL, 0.001)\n",
}


@needs_sandbox
@pytest.mark.parametrize("cheat", sorted(CHEATS))
def test_no_early_exit_passes(cheat):
    assert run(WRONG + CHEATS[cheat]).status == "failed", cheat
    assert execution.run_tests_apart(WRONG + CHEATS[cheat], "add", APART_TESTS).status == "failed", cheat


# ------------------------------------------------------------- the attacks of the issue 24 audit
# Module-level code appended to a wrong completion; "ENTRY" is the function under test. Before
# issue 24 the first four passed: they found the harness's token (or patched what the tests
# then called) and the process wrote it and exited 0.

_LEAK = (
    "import os as _os, json as _json\n"
    "def _leak(frame):\n"
    "    found = {}\n"
    "    while frame is not None:\n"
    "        loc = dict(frame.f_locals)\n"
    "        if 'token' in loc and 'result_fd' in loc:\n"
    "            _os.write(loc['result_fd'], loc['token'])\n"
    "            _os._exit(0)\n"
    "        found.update({k: repr(v)[:2000] for k, v in loc.items()\n"
    "                      if k in ('job', 'calls', 'cases', 'expected', 'tests', 'token')})\n"
    "        frame = frame.f_back\n"
    "    data = _json.dumps(found).encode() + b'\\n'\n"
    "    for fd in range(1, 64):\n"
    "        try:\n"
    "            _os.write(fd, data)\n"
    "        except OSError:\n"
    "            pass\n"
    "    _os._exit(0)\n"
)

ATTACKS = {
    # 1. A signal handler's frame walks f_back to the harness's locals.
    "signal handler frame": _LEAK + (
        "import signal as _signal, time as _time\n"
        "_signal.signal(_signal.SIGALRM, lambda signum, frame: _leak(frame))\n"
        "_signal.setitimer(_signal.ITIMER_REAL, 0.01)\n"
        "_time.sleep(2)\n"
    ),
    # 2. A subinterpreter (no audit hook there) with ctypes walks every thread's frames.
    "subinterpreter with ctypes": (
        "import _xxsubinterpreters as _interp\n"
        "_interp.run_string(_interp.create(), " + repr(
            _LEAK + "import ctypes, sys\nfor _f in list(sys._current_frames().values()):\n    _leak(_f)\n") + ")\n"
    ),
    # 3. Its own __builtins__ in its globals, which the tests then ran with.
    "own __builtins__": (
        "import builtins as _b\n"
        "__builtins__ = dict(_b.__dict__, abs=lambda x: 0, str=lambda *a: '0', len=lambda x: 0,\n"
        "                    isinstance=lambda *a: True, tuple=lambda *a: ())\n"
    ),
    # 4. Modules the harness had imported survived its module reset: patch what tests use.
    "patched pre-imported modules": (
        "import re, functools, collections, itertools, operator, json, os, time, types, math, random, copy, builtins\n"
        "re.fullmatch = re.match = re.search = lambda *a, **k: True\n"
        "functools.reduce = lambda *a, **k: 0\n"
        "collections.Counter = dict\n"
        "itertools.permutations = lambda *a, **k: iter(())\n"
        "operator.eq = lambda a, b: True\n"
        "json.dumps = lambda *a, **k: '{\"value\": 5}'\n"
        "json.loads = lambda *a, **k: {'value': 5}\n"
        "math.isclose = lambda *a, **k: True\n"
        "math.fabs = lambda x: 0.0\n"
        "random.choice = lambda seq: seq[0]\n"
        "random.randint = lambda a, b: a\n"
        "copy.deepcopy = lambda x, *a: x\n"
        "time.sleep = lambda s: None\n"
        "types.FunctionType = object\n"
        "builtins.abs = lambda x: 0\n"
    ),
    # 5. An object whose __eq__ always says yes (before: 155 of 164 HumanEval problems, 160 of
    # 160 of our code task); and an int subclass doing the same.
    "always-equal object": (
        "class _Yes:\n"
        "    def __eq__(self, other):\n        return True\n"
        "    def __ne__(self, other):\n        return False\n"
        "    __hash__ = object.__hash__\n"
        "    def __bool__(self):\n        return True\n"
        "    def __sub__(self, other):\n        return 0\n"
        "    __rsub__ = __sub__\n"
        "    def __abs__(self):\n        return 0\n"
        "    def __lt__(self, other):\n        return True\n"
        "    def __iter__(self):\n        return iter(())\n"
        "def ENTRY(*args, **kwargs):\n    return _Yes()\n"
    ),
    "always-equal int": (
        "class _YesInt(int):\n"
        "    def __eq__(self, other):\n        return True\n"
        "    __hash__ = int.__hash__\n"
        "def ENTRY(*args, **kwargs):\n    return _YesInt(0)\n"
    ),
}

# Host exhaustion: the wrong answer unless the attack worked (/dev/shm was a tmpfs the size of
# half the host's memory; /tmp is capped at 64 MiB).
_FILL = ("def _worked():\n"
         "    try:\n"
         "        for i in range(6):\n"
         "            with open(f'{DIR}/fill{{i}}', 'wb') as fh:\n"
         "                fh.write(b'x' * (15 << 20))\n"
         "        return True\n"
         "    except OSError:\n"
         "        return False\n")
GATES = {"/dev/shm beyond the cap": _FILL.format(DIR="/dev/shm"), "/tmp beyond the cap": _FILL.format(DIR="/tmp"),
         "a new file in /dev": "def _worked():\n    try:\n        open('/dev/x', 'w').write('x')\n"
                               "        return True\n    except OSError:\n        return False\n"}
# ptrace(ATTACH) on the namespace's pid 1 succeeded and stalled the run for its whole timeout:
# now the right answer only if it was denied (EPERM), and the run must stay short.
PTRACE = ("def _denied():\n"
          "    import ctypes, errno\n"
          "    libc = ctypes.CDLL(None, use_errno=True)\n"
          "    r = libc.ptrace(16, 1, 0, 0)\n"  # PTRACE_ATTACH
          "    return r == -1 and ctypes.get_errno() == errno.EPERM\n")


def _humaneval_docs() -> dict[str, dict]:
    return {d["task_id"]: d for d in map(json.loads, (Path(materialize()) / "humaneval.test.jsonl").open())}


def _code_rows() -> list[dict]:
    return [json.loads(line) for line in (Path(materialize()) / "bench_code.test.jsonl").open()]


# Targets: (entry point, wrong body, right expression, wrong expression) of each scored problem.
def _targets() -> dict[str, tuple]:
    docs = _humaneval_docs()
    row = _code_rows()[0]
    right = row["answer"].strip().removeprefix("return ")
    assert metrics.humaneval_cases(docs["HumanEval/2"]["test"]) is not None  # scored by cases
    assert "HumanEval/38" in metrics.HUMANEVAL_TESTS_APART  # scored by its own tests, apart
    return {"bench code": (row, row["entry_point"], "    return None\n", right, "None"),
            "humaneval cases": (docs["HumanEval/2"], "truncate_number", "    return 0.0\n", "number % 1.0", "0.0"),
            "humaneval apart": (docs["HumanEval/38"], "decode_cyclic", "    return s\n",
                                "encode_cyclic(encode_cyclic(s))", "s")}


def _completion(body: str, attack: str, entry: str) -> str:
    return body + "\n" + attack.replace("ENTRY", entry)


def _score(target: str, doc: dict, completion: str) -> float:
    """pass@1 through lm-eval's process_results functions (what the YAML files name)."""
    if target == "bench code":
        scores = metrics.bench_code(doc, [[completion]])
        assert scores == metrics.bench_scores("code", doc, [completion])
        return scores["pass@1"]
    return metrics.humaneval_pass_at_1(doc, [completion])["pass@1"]


@needs_sandbox
@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_attacks_fail_through_check_cases_and_tests_apart(attack):
    program = _completion(WRONG, ATTACKS[attack], "add")
    r = run(program)
    assert r.status == "failed", (attack, r)
    r = execution.run_tests_apart(program, "add", APART_TESTS)
    assert r.status == "failed", (attack, r)


@needs_sandbox
@pytest.mark.parametrize("target", ["bench code", "humaneval cases", "humaneval apart"])
@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_attacks_fail_through_the_scorers(attack, target):
    doc, entry, wrong, _, _ = _targets()[target]
    assert _score(target, doc, _completion(wrong, ATTACKS[attack], entry)) == 0.0, (attack, target)


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_attacks_fail_unsandboxed_too(no_bwrap, attack):
    program = _completion(WRONG, ATTACKS[attack], "add")
    r = run(program, allow_unsandboxed=True)
    assert r.status == "failed" and r.sandbox == "none", (attack, r)
    r = execution.run_tests_apart(program, "add", APART_TESTS, allow_unsandboxed=True)
    assert r.status == "failed" and r.sandbox == "none", (attack, r)


@needs_sandbox
@pytest.mark.parametrize("gate", sorted(GATES))
def test_host_exhaustion_fails_through_every_scorer(gate):
    r = run("def add(a, b):\n    return (a + b) if _worked() else (a - b)\n" + GATES[gate])
    assert r.status == "failed", (gate, r)
    for target, (doc, entry, _, right, wrong) in _targets().items():
        completion = f"    return ({right}) if _worked() else ({wrong})\n\n" + GATES[gate]
        assert _score(target, doc, completion) == 0.0, (gate, target)


@needs_sandbox
def test_ptrace_on_pid_1_is_denied_at_once_through_every_scorer():
    t0 = time.monotonic()
    r = run("def add(a, b):\n    return (a + b) if _denied() else (a - b)\n" + PTRACE)
    assert r.passed and r.seconds < 3, r
    for target, (doc, entry, _, right, wrong) in _targets().items():
        completion = f"    return ({right}) if _denied() else ({wrong})\n\n" + PTRACE
        assert _score(target, doc, completion) == 1.0, target
    assert time.monotonic() - t0 < 20  # no run stalled until its timeout (5 s each)


@needs_sandbox
def test_attacks_fail_through_the_sandbox_command(tmp_path):
    targets = _targets()
    attacks = {**ATTACKS, **GATES}
    rows: dict[str, list] = {"ftstudy_humaneval": [], "ftstudy_bench_code": []}
    denied: dict[str, list] = {"ftstudy_humaneval": [], "ftstudy_bench_code": []}
    order = list(_humaneval_docs())
    for target, (doc, entry, wrong_body, right, wrong) in targets.items():
        task, doc_id = ("ftstudy_bench_code", 0) if target == "bench code" else \
            ("ftstudy_humaneval", order.index(doc["task_id"]))
        for name, attack in attacks.items():
            completion = (f"    return ({right}) if _worked() else ({wrong})\n\n" + attack if name in GATES
                          else _completion(wrong_body, attack, entry))
            rows[task].append({"doc_id": doc_id, "pass@1": 0.0, "response": completion})
        denied[task].append({"doc_id": doc_id, "pass@1": 1.0,
                             "response": f"    return ({right}) if _denied() else ({wrong})\n\n" + PTRACE})
    (tmp_path / "attacks.samples.json").write_text(json.dumps(rows))
    (tmp_path / "ptrace.samples.json").write_text(json.dumps(denied))
    out = tmp_path / "sandbox.json"
    r = subprocess.run([sys.executable, "-m", "ftstudy.eval.suite", "sandbox", "--no-canonical", "--samples",
                        str(tmp_path / "attacks.samples.json"), str(tmp_path / "ptrace.samples.json"),
                        "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    report = json.loads(out.read_text())
    got = {(Path(s["file"]).name, s["task"]): (s["n"], s["sandbox_pass@1"]) for s in report["samples"]}
    n = len(attacks)
    assert got == {("attacks.samples.json", "ftstudy_humaneval"): (2 * n, 0.0),
                   ("attacks.samples.json", "ftstudy_bench_code"): (n, 0.0),
                   ("ptrace.samples.json", "ftstudy_humaneval"): (2, 1.0),
                   ("ptrace.samples.json", "ftstudy_bench_code"): (1, 1.0)}
    assert report["canonical"] is None and report["humaneval_tests_apart"] == list(metrics.HUMANEVAL_TESTS_APART)


@needs_sandbox
def test_always_equal_objects_pass_nothing_on_our_code_task():
    """Before: 160 of 160. Every eighth problem here (the full sweep takes a minute)."""
    attack = ATTACKS["always-equal object"]
    rows = _code_rows()[::8]
    with ThreadPoolExecutor(2) as pool:
        scores = list(pool.map(lambda row: metrics.bench_scores(
            "code", row, [_completion("    return None\n", attack, row["entry_point"])])["pass@1"], rows))
    assert scores == [0.0] * len(rows)


@needs_sandbox
def test_patched_helpers_do_not_reach_tests_run_apart():
    # The tests compare through helpers; the program patches them to always agree.
    patched_abs = "import builtins\nbuiltins.abs = lambda x: 0\n"
    tests = "assert abs(add(2, 3) - 5) < 1e-9\n"
    assert execution.run_tests_apart(WRONG + patched_abs, "add", tests).status == "failed"
    patched_isclose = "import math\nmath.isclose = lambda *a, **k: True\n"
    tests = "import math\nassert math.isclose(add(2, 3), 5)\n"
    assert execution.run_tests_apart(WRONG + patched_isclose, "add", tests).status == "failed"
    patched_unittest = "import unittest\nunittest.TestCase.assertEqual = lambda *a, **k: None\n"
    unittest_tests = "import unittest\nunittest.TestCase().assertEqual(add(2, 3), 5)\n"
    assert execution.run_tests_apart(WRONG + patched_unittest, "add", unittest_tests).status == "failed"
    assert execution.run_tests_apart(RIGHT + patched_unittest, "add", unittest_tests).passed
    # HumanEval/38 draws its inputs with random.choice: patched in the program, all-'a' strings
    # would make `return s` right. The tester's random is its own.
    doc = _humaneval_docs()["HumanEval/38"]
    assert metrics.humaneval_check(doc, "    return s\n\nimport random\nrandom.choice = lambda seq: seq[0]\n").status \
        == "failed"
    assert metrics.humaneval_check(doc, doc["canonical_solution"]).passed


STEALS = {  # other ways to the harness's frames (each leaks what it finds, then exits 0)
    "caller frame": "import sys\n_leak(sys._getframe(1))\n",
    "traceback frame": "try:\n    1 / 0\nexcept ZeroDivisionError as e:\n    _leak(e.__traceback__.tb_frame)\n",
    "generator frame": "def _g():\n    yield\n_it = _g()\nnext(_it)\n_leak(_it.gi_frame)\n",
    "trace function": "import sys\nsys.settrace(lambda frame, event, arg: _leak(frame))\n",
    "current frames": "import sys\nfor _f in sys._current_frames().values():\n    _leak(_f)\n",
    "gc referrers": ("import gc, os\nfor _o in gc.get_objects():\n"
                     "    if isinstance(_o, dict) and 'calls' in _o:\n"
                     "        os.write(_o.get('answers_fd', 1), b'{\"value\":5}\\n' * 3)\n"),
    "stdin": "import sys, os\nos.write(1, os.read(0, 1 << 16))\n",
    "memory through /proc": "_os.write(1, open('/proc/self/mem', 'rb').read(16))\n",
}


@needs_sandbox
@pytest.mark.parametrize("steal", sorted(STEALS))
def test_nothing_in_the_program_process_decides(steal):
    program = WRONG + _LEAK + STEALS[steal]
    assert run(program).status == "failed", steal
    assert execution.run_tests_apart(program, "add", APART_TESTS).status == "failed", steal


# ------------------------------------------------------------------------------ isolation


@needs_sandbox
def test_dev_is_read_only_with_four_devices_and_no_writable_tmpfs_but_tmp():
    program = (
        "import os, errno, ctypes\n"
        "def probe():\n"
        "    out = {'dev': sorted(os.listdir('/dev')), 'shm': os.path.exists('/dev/shm')}\n"
        "    try:\n        open('/dev/x', 'w')\n        out['dev_write'] = True\n"
        "    except OSError as e:\n        out['dev_write'] = errno.errorcode[e.errno]\n"
        "    written = 0\n"
        "    try:\n"
        "        for i in range(6):\n"
        "            with open(f'/tmp/f{i}', 'wb') as fh:\n"
        "                fh.write(b'x' * (15 << 20))\n"
        "            written += 15\n"
        "    except OSError as e:\n"
        "        out['tmp_error'] = errno.errorcode[e.errno]\n"
        "    out['tmp_mib'] = written\n"
        "    open('/dev/null', 'w').write('x')\n"
        "    out['urandom'] = len(open('/dev/urandom', 'rb').read(8))\n"
        "    libc = ctypes.CDLL(None, use_errno=True)\n"
        "    denied = {}\n"
        "    for name, args in {'ptrace': (16, 1, 0, 0), 'process_vm_readv': (1, 0, 0, 0, 0, 0),\n"
        "                        'memfd_create': (b'x', 0), 'shmget': (0, 1 << 20, 0o1600)}.items():\n"
        "        r = getattr(libc, name)(*args)\n"
        "        denied[name] = (r, errno.errorcode.get(ctypes.get_errno()))\n"
        "    out['denied'] = denied\n"
        "    import resource\n"
        "    out['nofile'] = resource.getrlimit(resource.RLIMIT_NOFILE)[0]\n"
        "    return out\n"
    )
    r = execution.run_calls(program, "probe", [()])
    assert r.problem is None and r.answers and r.answers[0].ok, (r.stderr, r.answers)
    out = r.answers[0].value
    assert out["dev"] == ["null", "random", "urandom", "zero"] and out["shm"] is False
    assert out["dev_write"] == "EROFS" and out["urandom"] == 8
    assert out["tmp_error"] == "ENOSPC" and out["tmp_mib"] < 64  # the tmpfs cap, 64 MiB in all
    if execution.seccomp_no_fork_filter() is not None:
        assert out["denied"] == {k: (-1, "EPERM") for k in ("ptrace", "process_vm_readv", "memfd_create", "shmget")}
    assert out["nofile"] == execution.DEFAULT_OPEN_FILES


@needs_sandbox
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


@needs_sandbox
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


@needs_sandbox
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


@needs_sandbox
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


@needs_sandbox
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


@needs_sandbox
def test_resource_limits():
    big = run(RIGHT + "x = bytearray(10 * 1024 ** 3)\n")
    assert big.status == "failed" and "MemoryError" in big.stderr
    loop = run(RIGHT + "while True:\n    pass\n", timeout=1.0)
    assert loop.status == "timeout" and loop.returncode is None and loop.seconds < 5
    assert run(RIGHT + "open('/tmp/big', 'wb').write(b'x' * (32 << 20))\n").status == "failed"  # RLIMIT_FSIZE
    slow = execution.run_tests_apart(RIGHT + "while True:\n    pass\n", "add", APART_TESTS, timeout=1.0)
    assert slow.status == "timeout" and slow.seconds < 5


@needs_sandbox
def test_runs_at_once_are_bounded_by_memory(monkeypatch):
    cost = execution._cost(execution.DEFAULT_MEMORY_BYTES)
    gate = execution._MemoryGate(2 * cost)
    monkeypatch.setattr(execution, "_GATE", gate)
    slow = "import time\ntime.sleep(0.3)\n" + RIGHT
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: run(slow), range(4)))
    assert all(r.passed for r in results) and gate.peak == 2 * cost and gate.used == 0
    gate.peak = 0
    assert execution.run_tests_apart(RIGHT, "add", APART_TESTS).passed and gate.peak == 2 * cost  # two processes
    assert execution.memory_budget() == 2 * cost


def test_the_memory_gate_lets_one_run_exceed_the_budget():
    gate = execution._MemoryGate(10)
    with gate.hold(25):  # more than the budget alone: it runs, and the others wait
        started = threading.Event()

        def other():
            with gate.hold(1):
                started.set()

        t = threading.Thread(target=other)
        t.start()
        assert not started.wait(0.2)
    t.join(2)
    assert started.is_set() and gate.used == 0 and gate.peak == 25


def test_bad_arguments():
    with pytest.raises(ValueError, match="timeout"):
        execution.check_cases("pass", "f", CASES, timeout=0)
    with pytest.raises(ValueError, match="memory_bytes"):
        execution.run_calls("pass", "f", [()], memory_bytes=0)
    with pytest.raises(ValueError, match=r"entry_point must be a Python identifier, got 'f\(\)'"):
        execution.run_calls("pass", "f()", [()])
    with pytest.raises(TypeError):
        execution.run_calls(b"pass", "f", [()])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="tuple of arguments"):
        execution.run_calls("pass", "f", [[1]])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="not plain data"):
        execution.run_calls("pass", "f", [({1},)])
    with pytest.raises(TypeError, match="non-empty sequence of Case"):
        execution.check_cases("pass", "f", [])


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
    with pytest.raises(execution.SandboxUnavailable):
        execution.run_tests_apart(RIGHT, "add", APART_TESTS)
    r = run(RIGHT, allow_unsandboxed=True)
    assert r.passed and r.sandbox == "none"
    assert run(WRONG + CHEATS["os._exit"], allow_unsandboxed=True).status == "failed"
    assert execution.run_tests_apart(RIGHT, "add", APART_TESTS, allow_unsandboxed=True).passed
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


EPERM, ENOSYS = 0x50001, 0x50026


@pytest.mark.parametrize("machine,arch,denied", [
    ("x86_64", 0xC000003E, {57: EPERM, 58: EPERM, 56: EPERM, 435: ENOSYS, 0x40000039: EPERM,  # processes
                            101: EPERM, 310: EPERM, 311: EPERM, 438: EPERM,  # ptrace & co
                            319: EPERM, 447: EPERM, 29: EPERM, 30: EPERM,  # memory outside RLIMIT_AS
                            298: EPERM, 321: EPERM, 323: EPERM, 425: EPERM}),
    ("aarch64", 0xC00000B7, {220: EPERM, 435: ENOSYS, 117: EPERM, 270: EPERM, 271: EPERM, 438: EPERM,
                             279: EPERM, 447: EPERM, 194: EPERM, 196: EPERM, 241: EPERM, 280: EPERM,
                             282: EPERM, 425: EPERM}),
])
def test_seccomp_filter_denies_what_it_lists_only(machine, arch, denied):
    prog = execution.seccomp_no_fork_filter(machine)
    for nr, ret in denied.items():
        assert run_bpf(prog, nr, arch) == ret, nr
    for nr in (0, 1, 2, 3, 9, 59, 60, 62, 63, 221, 231, 434, 436):  # read, write, ..., mmap, execve, kill, ...
        if nr not in denied:
            assert run_bpf(prog, nr, arch) == 0x7FFF0000, nr
    assert run_bpf(prog, 0, 0x40000003) == 0x80000000  # another architecture: killed
    assert execution.seccomp_no_fork_filter("riscv64") is None


# --------------------------------------------------------------------------- HumanEval


def test_humaneval_cases_are_read_from_the_ast_never_run():
    test = ("METADATA = {}\n\ndef check(candidate):\n"
            "    assert candidate([1, 2], 3 * 19) == (3 + 5, -2), 'message'\n"
            "    assert abs(candidate(1.5, 0) - 2.0 / 4.0) < 1e-6\n"
            "    assert candidate('a', 1) is True\n"
            "    assert not candidate('', 0)\n"
            "    assert tuple(candidate([3], 1)) == tuple([3])\n"
            "    assert True, 'skipped'\n"
            "    print\n")
    cases = metrics.humaneval_cases(test)
    assert cases == (Case(([1, 2], 57), (8, -2), "equal"), Case((1.5, 0), 0.5, "close", tol=1e-6),
                     Case(("a", 1), True, "is"), Case(("", 0), False, "truthy"), Case(([3], 1), (3,), "tuple"))
    marker = Path(f"/tmp/ftstudy-humaneval-ran-{os.getpid()}")
    ran = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    for body in (f"assert candidate(1) == {ran}", f"assert candidate({ran}) == 1",
                 "x = 1\n    assert candidate(x) == 1", "for i in range(3):\n        assert candidate(i) == i", "assert candidate(2 ** 10 ** 6) == 1",
                 "assert candidate('a' * 10 ** 9) == 1", "assert candidate(1) == f(1)", "assert candidate(x=1) == 1"):
        assert metrics.humaneval_cases(f"def check(candidate):\n    {body}\n") is None, body
    assert not marker.exists()
    assert metrics.humaneval_cases(f"{ran}\ndef check(candidate):\n    assert candidate(1) == 1\n") is None
    assert metrics.humaneval_cases("def check(candidate):\n    pass\n") is None  # no case: tests apart


def test_humaneval_problems_whose_tests_run_apart():
    docs = _humaneval_docs()
    apart = tuple(t for t, d in docs.items() if metrics.humaneval_cases(d["test"]) is None)
    assert apart == metrics.HUMANEVAL_TESTS_APART and len(apart) == 7
    assert sum(len(metrics.humaneval_cases(d["test"]) or ()) for d in docs.values()) == 1103


@needs_sandbox
def test_every_canonical_solution_passes_in_the_sandbox():
    docs = list(_humaneval_docs().values())
    assert len(docs) == 164
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda d: metrics.humaneval_check(d, d["canonical_solution"], 20.0), docs))
    failed = [(d["task_id"], r.status, r.stderr[-300:]) for d, r in zip(docs, results) if not r.passed]
    assert failed == []
    assert all(r.sandbox == "bwrap" for r in results)


@needs_sandbox
def test_sandbox_command(tmp_path):
    samples = tmp_path / "x.samples.json"
    samples.write_text(json.dumps({"ftstudy_humaneval": [
        {"doc_id": 0, "pass@1": 0.0, "response": "    return True\n"},
        {"doc_id": 1, "pass@1": 0.0, "response": "    import os\n    os._exit(0)\n"}]}))
    out = tmp_path / "sandbox.json"
    r = subprocess.run([sys.executable, "-m", "ftstudy.eval.suite", "sandbox", "--samples", str(samples), "--json", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "tests run apart from the program: 7 (HumanEval/32," in r.stdout
    report = json.loads(out.read_text())
    assert report["canonical"] == {**report["canonical"], "passed": 164, "n": 164, "failed": []}
    assert report["samples"][0]["n"] == 2 and report["samples"][0]["sandbox_pass@1"] == 0.0
