"""``python -m ftstudy.harness``, the same as ``ftstudy harness`` (see :mod:`ftstudy.cli`)."""
from ftstudy.cli import entry

entry("harness", __name__)
