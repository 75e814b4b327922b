"""``python -m ftstudy.gpucheck``, the same as ``ftstudy gpu-check`` (see :mod:`ftstudy.cli`)."""
from ftstudy.cli import entry

entry("gpu-check", __name__)
