"""``python -m ftstudy.ablate``, the same as ``ftstudy ablate`` (see :mod:`ftstudy.cli`)."""
from ftstudy.cli import entry

entry("ablate", __name__)
