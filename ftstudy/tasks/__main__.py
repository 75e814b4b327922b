"""Command line of the ftstudy lm-eval task suite.

``python -m ftstudy.tasks path``          write the task folder if needed and print it, for
                                          ``--include_path "$(python -m ftstudy.tasks path)"``
``python -m ftstudy.tasks list``          our task and group names with the keys of their scores
``python -m ftstudy.tasks check FOLDER``  check that the data files of FOLDER's tasks exist
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ftstudy.tasks.build import METRIC_KEYS, check_data_files, materialize, task_names


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ftstudy.tasks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_path = sub.add_parser("path", help="write the task folder if needed and print its path")
    p_path.add_argument("--out", default=None, help="folder to write (default: the cache folder)")
    sub.add_parser("list", help="list our task and group names with their result keys")
    p_check = sub.add_parser("check", help="check that the data files of a task folder exist")
    p_check.add_argument("folder")
    args = parser.parse_args(None if argv is None else list(argv))
    if args.command == "path":
        print(materialize(args.out))
    elif args.command == "list":
        width = max(map(len, task_names()))
        for name in task_names():
            print(f"{name:<{width}}  {', '.join(METRIC_KEYS[name])}")
    else:
        check_data_files(args.folder)
        print(f"ok: {args.folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
