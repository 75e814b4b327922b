"""One training run: the LightningModule and the ``train`` command that owns a run folder
(config.json, metrics.csv, summary.json, checkpoints), resumes it and measures it at the end.

May import: :mod:`ftstudy.io`, :mod:`ftstudy.core`, :mod:`ftstudy.tasks`, Lightning.
"""
