"""Execute the study notebooks headlessly, optionally with injected parameters.

    python -m ftstudy.notebooks run                      # every notebooks/*.ipynb, checked, nothing written
    python -m ftstudy.notebooks run --inplace            # and save them with their outputs (what is committed)
    python -m ftstudy.notebooks run notebooks/04_benchmarks.ipynb --param RESULTS=/path/to/results \
        --output-dir /tmp/executed                    # keep the executed copies elsewhere

Parameters work as in papermill: each notebook has one code cell tagged ``parameters``
holding defaults (``RESULTS``, ``FIG_DIR``, ...); ``--param KEY=VALUE`` adds a cell tagged
``injected-parameters`` right after it, so the overrides win.  Values are passed as Python
strings.  A notebook that fails stops the command with the notebook, the cell and the
error, and nothing is written for it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from ftstudy.io import REPO_ROOT, atomic_write_text

NOTEBOOK_DIR = REPO_ROOT / "notebooks"
PARAM_TAG = "parameters"
INJECTED_TAG = "injected-parameters"


class NotebookError(RuntimeError):
    """A notebook cannot be run (missing, no parameters cell, bad parameter, or a cell failed)."""


def parse_params(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise NotebookError(f"bad --param {item!r}: expected NAME=VALUE with NAME a Python identifier")
        out[key] = value
    return out


def inject(nb: nbformat.NotebookNode, params: dict[str, str]) -> nbformat.NotebookNode:
    """Insert a cell setting ``params`` after the ``parameters`` cell (replacing an earlier
    injected cell).  Only names the parameters cell defines can be set."""
    cells = [c for c in nb.cells if INJECTED_TAG not in c.get("metadata", {}).get("tags", [])]
    idx = [i for i, c in enumerate(cells)
           if c.cell_type == "code" and PARAM_TAG in c.get("metadata", {}).get("tags", [])]
    if len(idx) != 1:
        raise NotebookError(f"expected exactly one code cell tagged {PARAM_TAG!r}, found {len(idx)}")
    nb.cells = cells
    if not params:
        return nb
    defined = {line.split("=", 1)[0].strip() for line in cells[idx[0]].source.splitlines()
               if "=" in line and not line.lstrip().startswith("#")}
    unknown = sorted(set(params) - defined)
    if unknown:
        raise NotebookError(f"unknown parameter(s) {unknown}; this notebook takes {sorted(defined)}")
    src = "# Injected by python -m ftstudy.notebooks\n" + "\n".join(f"{k} = {v!r}" for k, v in params.items())
    cell = nbformat.v4.new_code_cell(src, metadata={"tags": [INJECTED_TAG]})
    nb.cells.insert(idx[0] + 1, cell)
    return nb


def run_notebook(path: Path, params: dict[str, str] | None = None, timeout: int = 600,
                 write: Path | None = None) -> nbformat.NotebookNode:
    """Execute ``path`` top to bottom (working directory: its folder) and return it with its
    outputs; write it atomically to ``write`` if given."""
    path = Path(path)
    if not path.is_file():
        raise NotebookError(f"no notebook at {path}")
    nb = inject(nbformat.read(path, as_version=4), params or {})
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent.resolve())}})
    try:
        client.execute()
    except CellExecutionError as e:
        raise NotebookError(f"{path}: a cell failed:\n{e}") from None
    if write is not None:
        atomic_write_text(Path(write), nbformat.writes(nb) + "\n")  # as nbformat.write ends the file
    return nb


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ftstudy.notebooks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="execute notebooks top to bottom")
    r.add_argument("notebooks", nargs="*", type=Path, help="default: every notebooks/*.ipynb, in order")
    r.add_argument("--param", action="append", default=[], metavar="NAME=VALUE")
    r.add_argument("--inplace", action="store_true", help="save each notebook with its outputs")
    r.add_argument("--output-dir", type=Path, default=None, metavar="DIR",
                   help="save the executed notebooks into DIR instead (same names)")
    r.add_argument("--timeout", type=int, default=600, help="seconds per cell (default 600)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    paths = args.notebooks or sorted(NOTEBOOK_DIR.glob("[0-9]*.ipynb"))
    if args.inplace and args.output_dir:
        print("error: --inplace and --output-dir exclude each other", file=sys.stderr)
        return 2
    try:
        params = parse_params(args.param)
        if args.output_dir:
            args.output_dir.mkdir(parents=True, exist_ok=True)
        for path in paths:
            t0 = time.perf_counter()
            write = path if args.inplace else (args.output_dir / path.name if args.output_dir else None)
            run_notebook(path, params, args.timeout, write=write)
            print(f"[ftstudy.results.notebooks] {path}: ran in {time.perf_counter() - t0:.1f} s"
                  + (f", saved to {write}" if write else ""), flush=True)
    except NotebookError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
