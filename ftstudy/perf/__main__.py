"""``python -m ftstudy.perf``, the same as ``ftstudy perf`` (see :mod:`ftstudy.cli`)."""
from ftstudy.cli import entry

entry("perf", __name__)
