"""``python -m ftstudy.notebooks``, the same as ``ftstudy notebooks`` (see :mod:`ftstudy.cli`)."""
from ftstudy.cli import entry

entry("notebooks", __name__)
