"""``python -m ftstudy.train``, the same as ``ftstudy train`` (see :mod:`ftstudy.cli`)."""
from ftstudy.cli import entry

entry("train", __name__)
