"""``python -m ftstudy.data``, the same as ``ftstudy data`` (see :mod:`ftstudy.cli`)."""
from ftstudy.cli import entry

entry("data", __name__)
