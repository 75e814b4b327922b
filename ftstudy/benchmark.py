"""``python -m ftstudy.benchmark``, the same as ``ftstudy benchmark`` (see :mod:`ftstudy.cli`)."""
from ftstudy.cli import entry

entry("benchmark", __name__)
