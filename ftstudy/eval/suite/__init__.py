"""Offline lm-evaluation-harness task suite of the study (all names start ``ftstudy_``).

- ``ftstudy_arithmetic`` (group of ``ftstudy_arithmetic_{2da,3da,4da,5da,2ds,3ds,4ds,5ds,2dm,1dc}``):
  GPT-3 arithmetic from :mod:`ftstudy.tasks.mathgen`'s held-out problems, 100 per kind, exact match;
- ``ftstudy_gsm``: 200 GSM8K-style word problems from held-out templates and operands, exact match
  with lm-eval's gsm8k ``strict-match`` and ``flexible-extract`` filters;
- ``ftstudy_humaneval``: HumanEval pass@1, completions executed in a separate, resource-limited
  process (:mod:`ftstudy.eval.suite.execution`); marked ``unsafe_code`` like lm-eval's humaneval;
- ``ftstudy_humaneval_bpb``: bits per byte of HumanEval's canonical solutions given the prompts;
- ``ftstudy_synthetic``: the paper's synthetic task as generation, scored by validity;
- ``ftstudy_bench`` (group of ``ftstudy_bench_{code,arith,gsm,path}``): the CPU-scale suite of
  issue 15 (:mod:`ftstudy.tasks.benchgen`), 10 samples per held-out problem, pass@1/5/10 and
  the number of distinct correct answers; its code is executed in the sandbox (``unsafe_code``);
- ``ftstudy_decide`` (group of ``ftstudy_decide_{route_main,route_two_routes,route_one_route,
  sibling,triangle}``): the decision benchmark of issue 23 (:mod:`ftstudy.tasks.decide`): route
  choice with dead-end decoys and its two controls (pass@1, per-step edge validity, the share
  of samples on each route), and the algorithmic-creativity tasks (valid, novel, unique).

``dataset_path: json`` needs absolute ``data_files``, so the YAML files in ``templates/`` carry a
``@DATA_DIR@`` placeholder and :func:`materialize` writes the data (deterministically) and the
filled-in YAML files into a folder, by default ``$FTSTUDY_CACHE/tasks/<content hash>``
(``~/.cache/ftstudy`` without ``FTSTUDY_CACHE``). Use it as::

    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager
    from ftstudy.eval.suite import materialize

    tm = TaskManager(include_path=str(materialize()), include_defaults=False)
    simple_evaluate(model=lm, tasks=["ftstudy_arithmetic", "ftstudy_gsm"], task_manager=tm)

or from the shell: ``lm-eval run --include_path "$(python -m ftstudy.eval.suite path)" --tasks ...``
(the CLI always indexes lm-eval's built-in tasks as well, which takes 10-20 s, and finds a model
class registered in our code only if its module was imported first, e.g. by a wrapper that
imports it and then calls ``lm_eval.__main__.cli_evaluate()``: lm-eval 0.4.13 has no plugin
discovery). ``ftstudy_humaneval`` runs model-generated code, so it needs
``confirm_run_unsafe_code=True`` / ``--confirm_run_unsafe_code``.
``python -m ftstudy.eval.suite list`` lists the tasks and the keys of their scores in lm-eval's results
(also in :data:`METRIC_KEYS`). Scoring functions live in :mod:`ftstudy.eval.suite.metrics`, which the
YAML files reference as ``!function ftstudy.eval.suite.metrics.<name>``.
"""

from ftstudy.eval.suite.build import (
    ARITHMETIC_TASKS,
    BENCH_REPEATS,
    BENCH_TASKS,
    DECIDE_METRICS,
    DECIDE_TASKS,
    GROUPS,
    METRIC_KEYS,
    N_ARITHMETIC,
    N_BENCH,
    N_GSM,
    SYNTHETIC_PER_LETTER,
    TASKS,
    cache_root,
    check_data_files,
    check_task_names,
    content_hash,
    materialize,
    render,
    task_manager,
    task_names,
)

__all__ = [
    "ARITHMETIC_TASKS",
    "BENCH_REPEATS",
    "BENCH_TASKS",
    "DECIDE_METRICS",
    "DECIDE_TASKS",
    "GROUPS",
    "METRIC_KEYS",
    "N_ARITHMETIC",
    "N_BENCH",
    "N_GSM",
    "SYNTHETIC_PER_LETTER",
    "TASKS",
    "cache_root",
    "check_data_files",
    "check_task_names",
    "content_hash",
    "materialize",
    "render",
    "task_manager",
    "task_names",
]
