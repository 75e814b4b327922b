"""``python -m ftstudy.demo``, the same as ``ftstudy demo`` (see :mod:`ftstudy.cli`)."""
from ftstudy.cli import entry

entry("demo", __name__)
