"""Command line of the ftstudy lm-eval task suite.

``python -m ftstudy.eval.suite path``          write the task folder if needed and print it, for
                                          ``--include_path "$(python -m ftstudy.eval.suite path)"``
``python -m ftstudy.eval.suite list``          our task and group names with the keys of their scores
``python -m ftstudy.eval.suite check FOLDER``  check that the data files of FOLDER's tasks exist
``python -m ftstudy.eval.suite sandbox [--samples F ...] [--json OUT]``
                                          check the code sandbox: its status, HumanEval's 164
                                          canonical solutions as completions (all must pass), and
                                          the stored completions of ``ftstudy.eval.evaluate`` sample
                                          files re-scored (compared with their stored pass@1)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ftstudy.eval.suite.build import METRIC_KEYS, check_data_files, materialize, task_names

GROUP_ONLY = "(a group: see its tasks' scores)"


def sandbox_check(samples: Sequence[str], workers: int = 4) -> dict:
    """Run HumanEval's canonical solutions, and the stored completions of each samples file, in
    the sandbox (refuses where there is none)."""
    import json
    import time
    from concurrent.futures import ThreadPoolExecutor
    from pathlib import Path

    from ftstudy.eval.suite import execution, metrics

    execution.require_sandbox(False)
    docs = {d["task_id"]: d for d in map(json.loads, (Path(materialize()) / "humaneval.test.jsonl").open())}

    def score(pairs: list[tuple[dict, str]]) -> list[bool]:
        def one(pair: tuple[dict, str]) -> bool:
            program, tests = metrics.humaneval_program(*pair)
            return execution.run_program(program, execution.DEFAULT_TIMEOUT, tests=tests).passed
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(one, pairs))

    t0 = time.perf_counter()
    canonical = score([(d, d["canonical_solution"]) for d in docs.values()])
    import subprocess

    version = subprocess.run([str(execution.bwrap_binary()), "--version"], capture_output=True, text=True).stdout
    report = {"bwrap": version.strip(), "timeout_s": execution.DEFAULT_TIMEOUT,
              "canonical": {"passed": sum(canonical), "n": len(canonical),
                            "failed": [t for t, ok in zip(docs, canonical) if not ok],
                            "seconds": round(time.perf_counter() - t0, 1)},
              "samples": []}
    order = list(docs)
    for path in samples:
        rows = json.loads(Path(path).read_text()).get("ftstudy_humaneval", [])
        rows = [r for r in rows if isinstance(r.get("response"), str)]
        if not rows:
            continue
        passed = score([(docs[order[r["doc_id"]]], r["response"]) for r in rows])
        report["samples"].append({"file": str(path), "n": len(rows),
                                  "stored_pass@1": sum(r["pass@1"] for r in rows) / max(len(rows), 1),
                                  "sandbox_pass@1": sum(passed) / max(len(rows), 1),
                                  "longest_response_chars": max(len(r["response"]) for r in rows)})
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ftstudy.eval.suite", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_path = sub.add_parser("path", help="write the task folder if needed and print its path")
    p_path.add_argument("--out", default=None, help="folder to write (default: the cache folder)")
    sub.add_parser("list", help="list our task and group names with their result keys")
    p_check = sub.add_parser("check", help="check that the data files of a task folder exist")
    p_check.add_argument("folder")
    p_box = sub.add_parser("sandbox", help="check the code sandbox on canonical and stored completions")
    p_box.add_argument("--samples", nargs="*", default=[], help="ftstudy.eval.evaluate *.samples.json files")
    p_box.add_argument("--json", default=None, help="write the report here")
    args = parser.parse_args(None if argv is None else list(argv))
    if args.command == "path":
        print(materialize(args.out))
    elif args.command == "list":
        width = max(map(len, task_names()))
        for name in task_names():
            print(f"{name:<{width}}  {', '.join(METRIC_KEYS[name]) or GROUP_ONLY}")
    elif args.command == "sandbox":
        import json

        from ftstudy.io import atomic_write_text
        from ftstudy.eval.suite.execution import SandboxUnavailable

        try:
            report = sandbox_check(args.samples)
        except SandboxUnavailable as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        c = report["canonical"]
        print(f"sandbox: {report['bwrap']}\ncanonical solutions: {c['passed']}/{c['n']} pass ({c['seconds']} s)")
        for s in report["samples"]:
            print(f"{s['file']}: {s['n']} completions, pass@1 stored {s['stored_pass@1']:.3f}, "
                  f"in the sandbox {s['sandbox_pass@1']:.3f}")
        if args.json:
            atomic_write_text(args.json, json.dumps({"command": "python -m ftstudy.eval.suite " + " ".join(
                sys.argv[1:] if argv is None else argv), **report}, indent=2) + "\n")
        return 0 if c["passed"] == c["n"] else 1
    else:
        check_data_files(args.folder)
        print(f"ok: {args.folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
