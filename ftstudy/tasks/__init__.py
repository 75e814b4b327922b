"""What a model is trained and probed on: the paper's synthetic task with its validation
probe, and token corpora (code-math, user text) with their shards and tokenizers.

Owns: ``synthetic`` (generator and checker of the task), ``probe`` (the shared-Z generation
probe and its metrics), ``corpus`` (corpora, tokenizers, shard format), ``mathgen``
(generated arithmetic and word problems).
May import: :mod:`ftstudy.io`, :mod:`ftstudy.core`, Lightning (data modules).
"""
