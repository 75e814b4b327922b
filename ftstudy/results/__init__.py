"""Reading results: tables (``report``), figures (``plots``), the README's claims table
(``claims``) and the notebook runner (``notebooks``). Files in, text and figures out.

May import: :mod:`ftstudy.io` only, and never torch, so that notebooks and tables start fast.
"""
