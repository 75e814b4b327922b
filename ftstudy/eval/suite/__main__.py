"""Command line of the ftstudy lm-eval task suite.

``python -m ftstudy.eval.suite path``          write the task folder if needed and print it, for
                                          ``--include_path "$(python -m ftstudy.eval.suite path)"``
``python -m ftstudy.eval.suite list``          our task and group names with the keys of their scores
``python -m ftstudy.eval.suite check FOLDER``  check that the data files of FOLDER's tasks exist
``python -m ftstudy.eval.suite sandbox [--samples F ...] [--json OUT] [--no-canonical]``
                                          check the code sandbox: its status, HumanEval's 164
                                          canonical solutions as completions (all must pass), and
                                          the stored completions (``ftstudy_humaneval``,
                                          ``ftstudy_bench_code``) of ``ftstudy.eval.evaluate``
                                          sample files re-scored (compared with their stored pass@1)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ftstudy.eval.suite.build import METRIC_KEYS, check_data_files, materialize, task_names

GROUP_ONLY = "(a group: see its tasks' scores)"


def sandbox_check(samples: Sequence[str], workers: int = 4, canonical: bool = True) -> dict:
    """Check the code sandbox (refuses where there is none): HumanEval's canonical solutions as
    completions (unless ``canonical`` is False), then the stored completions of each samples file
    re-scored by the same verdicts as lm-eval's ``process_results``: ``ftstudy_humaneval`` rows
    (:func:`ftstudy.eval.suite.metrics.humaneval_check`) and ``ftstudy_bench_code`` rows (the
    first stored sample of each problem, :func:`ftstudy.eval.suite.metrics.bench_scores`'s check,
    against the current task folder's rows; the stored pass@1 is over all repeats)."""
    import json
    import subprocess
    import time
    from concurrent.futures import ThreadPoolExecutor
    from pathlib import Path

    from ftstudy.eval.evaluate import read_samples
    from ftstudy.eval.suite import execution, metrics
    from ftstudy.tasks import benchgen

    execution.require_sandbox(False)
    folder = Path(materialize())

    def rows(name: str) -> list[dict]:
        return [json.loads(line) for line in (folder / name).open()]

    docs = {d["task_id"]: d for d in rows("humaneval.test.jsonl")}
    order = list(docs)
    code_docs: list[dict] = []

    def verdicts(one, items: list) -> list[bool]:
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(one, items))

    version = subprocess.run([str(execution.bwrap_binary()), "--version"], capture_output=True, text=True).stdout
    report = {"bwrap": version.strip(), "timeout_s": execution.DEFAULT_TIMEOUT,
              "humaneval_tests_apart": list(metrics.HUMANEVAL_TESTS_APART), "canonical": None, "samples": []}
    if canonical:
        t0 = time.perf_counter()
        ok = verdicts(lambda d: metrics.humaneval_check(d, d["canonical_solution"]).passed, list(docs.values()))
        report["canonical"] = {"passed": sum(ok), "n": len(ok), "failed": [t for t, good in zip(docs, ok) if not good],
                               "seconds": round(time.perf_counter() - t0, 1)}
    for path in samples:
        stored = read_samples(Path(path))
        for task in ("ftstudy_humaneval", "ftstudy_bench_code"):
            got = [r for r in stored.get(task, []) if isinstance(r.get("response"), str)]
            if not got:
                continue
            if task == "ftstudy_humaneval":
                ok = verdicts(lambda r: metrics.humaneval_check(docs[order[int(r["doc_id"])]], r["response"]).passed,
                              got)
            else:
                code_docs = code_docs or rows("bench_code.test.jsonl")
                ok = verdicts(lambda r: benchgen.score_text("code", code_docs[int(r["doc_id"])], r["response"],
                                                            run_code=metrics._passes), got)
            report["samples"].append({"file": str(path), "task": task, "n": len(got),
                                      "stored_pass@1": sum(float(r.get("pass@1", 0)) for r in got) / len(got),
                                      "sandbox_pass@1": sum(ok) / len(got),
                                      "longest_response_chars": max(len(r["response"]) for r in got)})
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
    p_box.add_argument("--samples", nargs="*", default=[], help="ftstudy.eval.evaluate *.samples.json.gz files (or plain *.samples.json)")
    p_box.add_argument("--json", default=None, help="write the report here")
    p_box.add_argument("--no-canonical", action="store_true", help="skip HumanEval's 164 canonical solutions")
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
            report = sandbox_check(args.samples, canonical=not args.no_canonical)
        except SandboxUnavailable as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        c = report["canonical"]
        print(f"sandbox: {report['bwrap']}")
        if c is not None:
            print(f"canonical solutions: {c['passed']}/{c['n']} pass ({c['seconds']} s)")
        print(f"HumanEval problems whose tests run apart from the program: {len(report['humaneval_tests_apart'])} "
              f"({', '.join(report['humaneval_tests_apart'])})")
        for row in report["samples"]:
            print(f"{row['file']} {row['task']}: {row['n']} completions, pass@1 stored {row['stored_pass@1']:.3f}, "
                  f"in the sandbox {row['sandbox_pass@1']:.3f}")
        if args.json:
            atomic_write_text(args.json, json.dumps({"command": "python -m ftstudy.eval.suite " + " ".join(
                sys.argv[1:] if argv is None else argv), **report}, indent=2) + "\n")
        return 0 if c is None or c["passed"] == c["n"] else 1
    else:
        check_data_files(args.folder)
        print(f"ok: {args.folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
