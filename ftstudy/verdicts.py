"""``python -m ftstudy.verdicts``, the same as ``ftstudy verdicts`` (see :mod:`ftstudy.cli`)."""
from ftstudy.cli import entry

entry("verdicts", __name__)
