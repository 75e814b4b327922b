"""``python -m ftstudy.evaluate``, the same as ``ftstudy evaluate`` (see :mod:`ftstudy.cli`)."""
from ftstudy.cli import entry

entry("evaluate", __name__)
