"""Result files without torch: atomic text writes and the reader of ``metrics.csv``.

Kept free of heavy imports so that plotting (notebooks, ``ftstudy.plots``) starts fast.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

__all__ = ["atomic_write_text", "read_metrics"]


def atomic_write_text(path: Path, text: str) -> None:
    """Write text so that readers see the old file or the new one, never half of one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_metrics(run_dir: Path) -> list[dict[str, float | str]]:
    """Rows of a run's metrics.csv with numbers parsed and empty cells dropped (the one
    reader for plots and sweeps; only the writer, train.MetricsCSV, keeps raw strings)."""
    rows = []
    with open(Path(run_dir) / "metrics.csv", newline="") as f:
        for r in csv.DictReader(f):
            rows.append({k: (v if k == "split" else float(v)) for k, v in r.items() if v != ""})
    return rows
