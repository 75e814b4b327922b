"""``python -m ftstudy.claims``, the same as ``ftstudy claims`` (see :mod:`ftstudy.cli`)."""
from ftstudy.cli import entry

entry("claims", __name__)
