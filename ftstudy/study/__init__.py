"""Studies: grids of runs over seeds (``ablate``), their sweep runner and summaries, and the
newcomer's ``demo``.

May import: :mod:`ftstudy.io`, :mod:`ftstudy.core`, :mod:`ftstudy.tasks`, :mod:`ftstudy.run`,
:mod:`ftstudy.results`.
"""
