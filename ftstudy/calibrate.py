"""``python -m ftstudy.calibrate``, the same as ``ftstudy calibrate`` (see :mod:`ftstudy.cli`)."""
from ftstudy.cli import entry

entry("calibrate", __name__)
