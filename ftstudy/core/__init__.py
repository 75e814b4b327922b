"""The model and its mathematics: model configuration, latent maths (binary mapper, KL, free
bits), the Free Transformer with its one forward (a Z policy argument) and its one ``generate()``,
and the ``model.pt`` checkpoint format.

Owns: ``config`` (every config dataclass and preset), ``latent``, ``model``, ``checkpoint``.
May import: torch and :mod:`ftstudy.io`. Never Lightning, never a task, a run or a study.
"""
