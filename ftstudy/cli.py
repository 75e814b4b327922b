"""The ``ftstudy`` command: one entry point whose subcommands are the package's command lines.

    ftstudy train --preset synthetic-quick --seed 0       (= python -m ftstudy.train …)
    ftstudy ablate --study kl_budget --preset quick --seeds 0 1 2 --jobs 2
    ftstudy evaluate --checkpoints BASE FREE --tasks ftstudy_gsm --out results/benchmarks/NAME
    ftstudy perf | data | demo | notebooks | claims | harness | tasks …

Each subcommand is the ``main()`` of the module named in :data:`COMMANDS`; ``ftstudy CMD --help``
shows its options; ``python -m ftstudy CMD`` is the same without the console script. The
``python -m ftstudy.<cmd>`` forms are four-line modules at the package root that call
:func:`entry`, so every spelling runs the same code. They stay because users are told to run
``python -m ftstudy.ablate`` and because the commands recorded with committed results (run
configs, reports, notebooks) name them: a recorded command must stay runnable as written. They
hold no code; a test checks that each one names a subcommand of :data:`COMMANDS`. This module sits at the top of the import
graph: it imports every layer, and nothing imports it but those thin modules.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

__all__ = ["COMMANDS", "main", "entry"]

#: subcommand → (module whose main() runs it, one line of help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("ftstudy.run.train", "train one run (resumable; skips a finished run)"),
    "ablate": ("ftstudy.study.ablate", "run a study: a grid of runs over seeds, then tables and figures"),
    "calibrate": ("ftstudy.study.calibration", "fit the paper protocol's sampling temperature to the paper's Figure 4"),
    "demo": ("ftstudy.study.demo", "train the reduced κ sweep and compare it with the committed reference"),
    "evaluate": ("ftstudy.eval.evaluate", "compare checkpoints on lm-eval tasks and perplexity"),
    "benchmark": ("ftstudy.eval.benchmark", "the CPU-scale benchmark suite end to end: data, models, lm-eval, report"),
    "decide": ("ftstudy.eval.decide", "the decision benchmark: calibration curves, models, lm-eval, seed-level report"),
    "harness": ("ftstudy.eval.harness", "lm-eval's own command line with the ftstudy model registered"),
    "tasks": ("ftstudy.eval.suite.__main__", "the offline lm-eval task suite: path, list, check, sandbox"),
    "data": ("ftstudy.tasks.corpus", "prepare token shards from a corpus"),
    "perf": ("ftstudy.perf.suite", "benchmarks that print figures (suite, mapper, scale)"),
    "gpu-check": ("ftstudy.perf.device_check", "the device check: one GPU, 8 minutes, results/gpu/<gpu name>/"),
    "notebooks": ("ftstudy.results.notebooks", "execute the notebooks against results/"),
    "claims": ("ftstudy.results.claims", "the README's claims table, from the result files"),
    "verdicts": ("ftstudy.results.verdicts", "seed-level verdicts of the synthetic claims (results/ablate/verdicts.csv)"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return "usage: ftstudy COMMAND [ARGS …]\n\ncommands:\n" + "\n".join(lines) + "\n"


def run(command: str, argv: Sequence[str]) -> int:
    """Run one subcommand with its arguments; its exit status."""
    module = importlib.import_module(COMMANDS[command][0])
    status = module.main(list(argv))
    return int(status or 0)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage(), end="")
        return 0 if args else 2
    if args[0] not in COMMANDS:
        print(f"ftstudy: unknown command {args[0]!r}; allowed: {', '.join(COMMANDS)}\n\n{_usage()}",
              file=sys.stderr, end="")
        return 2
    return run(args[0], args[1:])


def entry(command: str, module_name: str) -> None:
    """Body of a ``python -m ftstudy.<command>`` module: run the subcommand when executed."""
    if module_name == "__main__":
        sys.exit(run(command, sys.argv[1:]))


if __name__ == "__main__":
    sys.exit(main())
