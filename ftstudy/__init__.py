"""ftstudy: a study package reproducing the Free Transformer (Fleuret 2025)."""

__version__ = "0.1.0"
