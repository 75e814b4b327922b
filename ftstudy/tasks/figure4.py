"""The paper's Figure 4 generations (F. Fleuret, "The Free Transformer", arXiv 2510.17558 v1),
transcribed in ``results/reference/paper_figure4.txt``: this module is that file's one reader.

Each panel is one KL budget κ with three groups of five sequences: group 0 (the paper's blue
box) draws Z independently per sequence, groups 1 and 2 (green boxes) share one Z per group.
:meth:`FigurePanel.table` turns a panel into an :class:`~ftstudy.tasks.agreement.GroupTable`, so
the figure is scored exactly like a run's ``groups.txt``. Torch-free.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ftstudy.io import REPO_ROOT
from ftstudy.tasks import synthetic
from ftstudy.tasks.agreement import GroupTable

__all__ = ["REFERENCE", "LATE_POSITION", "FigurePanel", "read_figure4", "panel_stats"]

#: The transcribed figure, shipped with the repository.
REFERENCE: Path = REPO_ROOT / "results" / "reference" / "paper_figure4.txt"
#: Block starts from here on count as "late" (the second half of the 57 possible starts).
LATE_POSITION: int = 32

_PANEL_KEY = "kappa_bits"


@dataclass(frozen=True)
class FigurePanel:
    """One κ of the figure: ``groups[0]`` has independent Z, ``groups[1:]`` share Z per group."""

    kappa_bits: float
    groups: tuple[tuple[str, ...], ...]

    def table(self) -> GroupTable:
        """The panel as a group table: group ids 0.. in figure order, shared for ids > 0."""
        strings = [s for g in self.groups for s in g]
        group = np.repeat(np.arange(len(self.groups)), [len(g) for g in self.groups])
        return GroupTable.from_strings(strings, group, group > 0)


def read_figure4(path: str | Path = REFERENCE) -> list[FigurePanel]:
    """The panels of a figure file, in file order.

    Format: ``#`` lines are comments; ``kappa_bits <value>`` opens a panel; every other
    non-blank line is one sequence of ``synthetic.SEQ_LEN`` characters of ``synthetic.VOCAB``;
    blank lines end a group. ValueError naming the file and line for a sequence before any
    panel, a sequence of the wrong length or with a foreign character, an unparsable or
    negative κ, or a panel without sequences.
    """
    path = Path(path)
    panels: list[tuple[float, list[list[str]], int]] = []  # (kappa, groups, line opened)

    def close(where: str) -> None:
        if panels and not any(panels[-1][1]):
            raise ValueError(f"{where}: the panel opened on line {panels[-1][2]} has no sequences")

    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        where = f"{path}:{lineno}"
        if line.startswith("#"):
            continue
        if not line.strip():
            if panels and panels[-1][1][-1]:
                panels[-1][1].append([])
            continue
        if line.split(maxsplit=1)[0] == _PANEL_KEY:
            parts = line.split()
            try:
                if len(parts) != 2:
                    raise ValueError
                kappa = float(parts[1])
            except ValueError:
                raise ValueError(f"{where}: expected '{_PANEL_KEY} <number>', got {line!r}") from None
            if not math.isfinite(kappa) or kappa < 0:
                raise ValueError(f"{where}: kappa_bits must be a finite number >= 0, got {parts[1]!r}")
            close(where)
            panels.append((kappa, [[]], lineno))
            continue
        if not panels:
            raise ValueError(f"{where}: a sequence before any '{_PANEL_KEY} <value>' line: {line!r}")
        if len(line) != synthetic.SEQ_LEN:
            raise ValueError(f"{where}: a sequence must have {synthetic.SEQ_LEN} characters, "
                             f"got {len(line)}: {line!r}")
        foreign = sorted(set(line) - set(synthetic.VOCAB))
        if foreign:
            raise ValueError(f"{where}: characters {foreign} are not in the task's vocabulary {synthetic.VOCAB!r}")
        panels[-1][1][-1].append(line)
    if not panels:
        raise ValueError(f"{path}: no '{_PANEL_KEY} <value>' line: the file holds no panel")
    close(f"{path}:end")
    return [FigurePanel(kappa, tuple(tuple(g) for g in groups if g)) for kappa, groups, _ in panels]


def panel_stats(panel: FigurePanel) -> dict[str, float | int]:
    """``n`` sequences; ``valid_rate``; ``noise_per_char`` (``!`` per body character);
    ``late_fraction`` (valid sequences with block start >= :data:`LATE_POSITION`; nan if none)."""
    table = panel.table()
    n = len(table)
    bodies = [s[synthetic.PROMPT_LEN:] for s in table.strings]
    n_valid = int(table.valid.sum())
    return {
        "n": n,
        "valid_rate": n_valid / n if n else float("nan"),
        "noise_per_char": sum(b.count("!") for b in bodies) / (n * synthetic.BODY_LEN) if n else float("nan"),
        "late_fraction": (float((table.position[table.valid] >= LATE_POSITION).mean()) if n_valid
                          else float("nan")),
    }
