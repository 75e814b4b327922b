"""Evaluation through lm-evaluation-harness: the ``FTStudyLM`` model wrapper (``harness``),
the baseline-vs-Free comparison with paired statistics and honest perplexity (``evaluate``),
and the offline lm-eval task suite with its sandboxed code execution (``suite``).

May import every lower layer: :mod:`ftstudy.io`, :mod:`ftstudy.core`, :mod:`ftstudy.tasks`,
:mod:`ftstudy.run`, :mod:`ftstudy.results`, :mod:`ftstudy.study`.
"""
