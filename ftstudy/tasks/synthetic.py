"""Synthetic "letter block in noise" task of the Free Transformer paper (arXiv 2510.17558, §4.1):
each sequence is a two-character prompt ``<letter>>`` followed by a 64-character body made of
underscores, one block of 8 copies of the prompt's letter at a uniformly random position, and
i.i.d. ``!`` noise (probability 1/16 per body character, target block included). A model that
generates this well must make a global, latent decision (where the block goes) before emitting
tokens, which is what the paper uses to show what the Free Transformer's latent variable learns.
This module is the single source of truth for the task: the generator (:func:`sample`,
:func:`sample_with_info` with ground truth), the validity checker used to score generations
(:func:`check`, :func:`check_many`), the character tokenizer (:class:`CharTokenizer`), next-token
batches (:func:`make_batch`) and the seeds of the training stream (:func:`derive_stream_seed`,
:func:`derive_batch_seed`). It imports no torch (the figures and the lm-eval checker use it
without): tensors are made, importing torch then, only by :meth:`CharTokenizer.encode_batch` and
:func:`make_batch`. The Lightning data module and the run's hooks are in
:mod:`ftstudy.tasks.synthetic_task`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, TYPE_CHECKING, NamedTuple, TypeGuard

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    import torch

__all__ = [
    "BLOCK_LEN",
    "BODY_LEN",
    "LETTERS",
    "NOISE_P",
    "NO_LATENT_FLOOR",
    "PROMPT_LEN",
    "SEQ_LEN",
    "VAL_SEED_OFFSET",
    "VOCAB",
    "Batch",
    "CharTokenizer",
    "SampleInfo",
    "check",
    "check_many",
    "derive_batch_seed",
    "derive_stream_seed",
    "make_batch",
    "qualifying_windows",
    "sample",
    "sample_with_info",
]

BODY_LEN: int = 64
BLOCK_LEN: int = 8
NOISE_P: float = 1 / 16
LETTERS: str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
PROMPT_LEN: int = 2
SEQ_LEN: int = PROMPT_LEN + BODY_LEN

UNDERSCORE: str = "_"
NOISE: str = "!"
SEPARATOR: str = ">"

#: Token order of :class:`CharTokenizer`: ``_``=0, ``!``=1, ``>``=2, ``A``=3, ..., ``Z``=28.
VOCAB: str = UNDERSCORE + NOISE + SEPARATOR + LETTERS

#: Best cross-entropy (nats per body character) of a model without a latent: ln(57)/64 for the
#: block position (drawn once per sequence) plus h(1/16) for the noise; PAPER.md §4, FEASIBILITY.md.
NO_LATENT_FLOOR: float = (math.log(BODY_LEN - BLOCK_LEN + 1) / BODY_LEN
                          - NOISE_P * math.log(NOISE_P) - (1 - NOISE_P) * math.log(1 - NOISE_P))

#: The validation set is drawn with ``seed + VAL_SEED_OFFSET``. Training batch seeds always have
#: bit 63 set (see :func:`derive_batch_seed`) while validation seeds are kept below ``2**63``, so
#: the two can never coincide, whatever the data-module seed.
VAL_SEED_OFFSET: int = 10_000_019

# Training seeds live in [2**63, 2**64); everything handed to `sample` for validation stays below.
_TRAIN_SEED_BIT: int = 1 << 63
# Domain-separation tags so that stream seeds and batch seeds are hashes of disjoint inputs.
_STREAM_TAG: int = 0x5354_5245  # "STRE"
_BATCH_TAG: int = 0x4241_5443  # "BATC"

Batch = dict[str, "torch.Tensor"]


class SampleInfo(NamedTuple):
    """Generated sequences together with the ground truth that produced them."""

    strings: list[str]
    #: Start of the target block in the body (0-based, body coordinates), shape ``(n,)``, int64.
    positions: NDArray[np.int64]
    #: The prompt / block letter of each sequence, shape ``(n,)``, dtype ``<U1``.
    letters: NDArray[np.str_]
    #: ``True`` where a body character was replaced by ``!``, shape ``(n, body_len)``.
    noise_masks: NDArray[np.bool_]


# --------------------------------------------------------------------------------------------
# Argument validation
# --------------------------------------------------------------------------------------------


def _is_int(x: object) -> TypeGuard[int | np.integer]:
    # bool is an int subclass; accepting True as "1 sample" would hide caller bugs.
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _validate_shape(body_len: object, block_len: object) -> None:
    if not _is_int(body_len) or int(body_len) < 1:
        raise ValueError(f"body_len must be an integer >= 1, got {body_len!r}")
    if not _is_int(block_len) or not 1 <= int(block_len) <= int(body_len):
        raise ValueError(
            f"block_len must be an integer in 1..body_len={body_len}, got {block_len!r}"
        )


def _validate_sample_args(
    n: object, seed: object, body_len: object, block_len: object, noise_p: object
) -> None:
    if not _is_int(n) or int(n) < 0:
        raise ValueError(f"n must be an integer >= 0, got {n!r}")
    if not _is_int(seed) or int(seed) < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    _validate_shape(body_len, block_len)
    if (
        not isinstance(noise_p, (int, float, np.integer, np.floating))
        or isinstance(noise_p, (bool, np.bool_))
        or not 0.0 <= float(noise_p) < 1.0
    ):
        raise ValueError(f"noise_p must be a number with 0 <= noise_p < 1, got {noise_p!r}")


# --------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------


def sample_with_info(
    n: int,
    seed: int,
    *,
    body_len: int = BODY_LEN,
    block_len: int = BLOCK_LEN,
    noise_p: float = NOISE_P,
) -> SampleInfo:
    """Draw ``n`` sequences and return them with their ground truth.

    Fully determined by ``(n, seed, body_len, block_len, noise_p)`` via
    ``numpy.random.default_rng(seed)``. The draws are made in a fixed order (letters, positions,
    noise), so the first ``k`` letters/positions of a call with ``n > k`` equal those of a call with
    ``n = k`` but the noise does not; treat the seed as identifying the whole batch.
    """
    _validate_sample_args(n, seed, body_len, block_len, noise_p)
    n, body_len, block_len, noise_p = int(n), int(body_len), int(block_len), float(noise_p)
    rng = np.random.default_rng(int(seed))

    letter_idx = rng.integers(0, len(LETTERS), size=n)
    positions = rng.integers(0, body_len - block_len + 1, size=n).astype(np.int64)
    noise_masks = rng.random((n, body_len)) < noise_p

    letter_codes = np.frombuffer(LETTERS.encode("ascii"), dtype=np.uint8)[letter_idx]
    cols = np.arange(body_len)
    in_block = (cols >= positions[:, None]) & (cols < positions[:, None] + block_len)

    seqs = np.empty((n, PROMPT_LEN + body_len), dtype=np.uint8)
    seqs[:, 0] = letter_codes
    seqs[:, 1] = ord(SEPARATOR)
    body = seqs[:, PROMPT_LEN:]
    body[...] = np.where(in_block, letter_codes[:, None], ord(UNDERSCORE))
    # Noise is applied after the block so that it can hit the target too, as in the paper.
    body[noise_masks] = ord(NOISE)

    width = PROMPT_LEN + body_len
    flat = seqs.tobytes().decode("ascii")
    strings = [flat[i * width : (i + 1) * width] for i in range(n)]
    letters = np.array(list(LETTERS), dtype="<U1")[letter_idx]
    return SampleInfo(strings, positions, letters, noise_masks)


def sample(n: int, seed: int, **shape: Any) -> list[str]:
    """Draw ``n`` task sequences (strings of length ``2 + body_len``), deterministic in ``seed``;
    ``shape``: the ``body_len``, ``block_len`` and ``noise_p`` of :func:`sample_with_info`."""
    return sample_with_info(n, seed, **shape).strings


# --------------------------------------------------------------------------------------------
# Validity checking
# --------------------------------------------------------------------------------------------


def qualifying_windows(
    s: str, *, body_len: int = BODY_LEN, block_len: int = BLOCK_LEN
) -> list[int]:
    """All block starts consistent with ``s``, in increasing order (empty if ``s`` is invalid).

    A start ``w`` qualifies when the window ``[w, w + block_len)`` lies in the body, every character
    in it is the prompt letter or ``!``, and it contains every occurrence of the letter (at least
    one). For a generated sequence the true block start always qualifies (unless noise erased the
    whole block, probability ``noise_p ** block_len``), but more than one start can qualify when
    ``!`` sits at the edges of the block.
    """
    if not isinstance(s, str):
        raise TypeError(f"expected a str, got {type(s).__name__}")
    _validate_shape(body_len, block_len)
    if len(s) != PROMPT_LEN + body_len or s[1] != SEPARATOR or s[0] not in LETTERS:
        return []
    letter = s[0]
    body = s[PROMPT_LEN:]
    if any(c != UNDERSCORE and c != NOISE and c != letter for c in body):
        return []
    hits = [i for i, c in enumerate(body) if c == letter]
    if not hits or hits[-1] - hits[0] >= block_len:
        return []
    # A window containing all hits must start in [last - block_len + 1, first] and fit in the body.
    lo = max(0, hits[-1] - block_len + 1)
    hi = min(hits[0], body_len - block_len)
    return [w for w in range(lo, hi + 1) if UNDERSCORE not in body[w : w + block_len]]


def check(
    s: str, *, body_len: int = BODY_LEN, block_len: int = BLOCK_LEN
) -> tuple[bool, int | None]:
    """Return ``(valid, position)`` for one sequence.

    ``s`` is valid iff it has exactly ``2 + body_len`` characters, ``s[0]`` is in ``A``-``Z``,
    ``s[1] == '>'``, every body character is ``_``, ``!`` or the prompt letter, and some window of
    ``block_len`` consecutive body positions contains every occurrence of the letter (at least one)
    and only the letter or ``!`` (see :func:`qualifying_windows`).

    ``position`` is ``None`` when invalid. Otherwise it is the **smallest** qualifying window start.
    It is ambiguous whenever ``!`` can stand in for the letter at a block edge: e.g. with the true
    block at ``p`` and its last character noised, a ``!`` at ``p - 1`` makes ``p - 1`` qualify too.
    Consequently ``position <= p`` always, and ``position == p`` is guaranteed when the true block's
    last character is the letter (not ``!``); a clean first character is *not* enough.
    """
    windows = qualifying_windows(s, body_len=body_len, block_len=block_len)
    if not windows:
        return False, None
    return True, windows[0]


def check_many(
    strings: Sequence[str], *, body_len: int = BODY_LEN, block_len: int = BLOCK_LEN
) -> tuple[NDArray[np.bool_], NDArray[np.int64]]:
    """Vectorised :func:`check`: ``(valid, position)`` arrays of shape ``(len(strings),)``.

    ``position`` is ``-1`` for invalid strings; same rule (smallest qualifying start) as
    :func:`check`.
    """
    _validate_shape(body_len, block_len)
    width = PROMPT_LEN + body_len
    n = len(strings)
    valid = np.zeros(n, dtype=np.bool_)
    position = np.full(n, -1, dtype=np.int64)
    bad = next((i for i, s in enumerate(strings) if not isinstance(s, str)), None)
    if bad is not None:
        raise TypeError(f"strings[{bad}] must be a str, got {type(strings[bad]).__name__}")
    keep = np.fromiter((len(s) == width for s in strings), dtype=np.bool_, count=n)
    if not keep.any():
        return valid, position

    # Non-ASCII characters become '?' (one byte each, invalid anyway) so row lengths stay aligned.
    kept = strings if keep.all() else [s for s, k in zip(strings, keep, strict=True) if k]
    raw = "".join(kept).encode("ascii", errors="replace")
    seqs = np.frombuffer(raw, dtype=np.uint8).reshape(-1, width)
    letter = seqs[:, 0]
    body = seqs[:, PROMPT_LEN:]

    prompt_ok = (letter >= ord("A")) & (letter <= ord("Z")) & (seqs[:, 1] == ord(SEPARATOR))
    is_letter = body == letter[:, None]
    is_underscore = body == ord(UNDERSCORE)
    chars_ok = (is_letter | is_underscore | (body == ord(NOISE))).all(axis=1)

    # Window counts via prefix sums: a window qualifies when it holds no '_' and all the letters
    # (other characters are already excluded by chars_ok). Small ints keep this memory-bound
    # pass fast.
    count_dtype = np.int16 if body_len < 2**15 else np.int64
    n_letters = is_letter.sum(axis=1, dtype=count_dtype)

    def window_counts(mask: NDArray[np.bool_]) -> NDArray[np.integer]:
        csum = np.zeros((len(mask), body_len + 1), dtype=count_dtype)
        np.cumsum(mask, axis=1, dtype=count_dtype, out=csum[:, 1:])
        return csum[:, block_len:] - csum[:, :-block_len]

    qualifies = (
        (window_counts(is_underscore) == 0)
        & (window_counts(is_letter) == n_letters[:, None])
        & (n_letters > 0)[:, None]
    )

    ok = prompt_ok & chars_ok & qualifies.any(axis=1)
    pos = np.where(ok, qualifies.argmax(axis=1), -1)
    idx = np.flatnonzero(keep)
    valid[idx] = ok
    position[idx] = pos
    return valid, position


# --------------------------------------------------------------------------------------------
# Tokenizer and batches
# --------------------------------------------------------------------------------------------


class CharTokenizer:
    """Character-level tokenizer over the 29 task symbols.

    Fixed order (:data:`VOCAB`): ``_`` = 0, ``!`` = 1, ``>`` = 2, then ``A`` = 3 ... ``Z`` = 28.
    The order never depends on data, so token ids are stable across runs and checkpoints.
    The task has no end-of-text token (``eot_id`` None); ``pad_id`` is ``_``.
    """

    eot_id: int | None = None
    pad_id: int = 0

    def __init__(self) -> None:
        self.vocab: str = VOCAB
        self.stoi: dict[str, int] = {c: i for i, c in enumerate(VOCAB)}
        # Byte lookup table for vectorised encoding; -1 marks bytes outside the vocabulary.
        self._lut = np.full(256, -1, dtype=np.int64)
        for c, i in self.stoi.items():
            self._lut[ord(c)] = i

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def _unknown(self, ch: str) -> ValueError:
        return ValueError(f"unknown character {ch!r}; allowed characters are {self.vocab!r}")

    def encode(self, s: str) -> list[int]:
        try:
            return [self.stoi[c] for c in s]
        except KeyError as e:
            raise self._unknown(e.args[0]) from None

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        if hasattr(ids, "tolist"):  # a tensor or an array
            if ids.ndim != 1:
                raise ValueError(f"decode expects a 1-D tensor, got shape {tuple(ids.shape)}")
            ids = ids.tolist()
        out = []
        for i in ids:
            if not _is_int(i) or not 0 <= int(i) < self.vocab_size:
                raise ValueError(
                    f"token id {i!r} out of range; allowed ids are 0..{self.vocab_size - 1}"
                )
            out.append(self.vocab[int(i)])
        return "".join(out)

    def encode_batch(self, strings: Sequence[str]) -> torch.Tensor:
        """Encode equal-length strings into a ``(n, L)`` int64 tensor."""
        import torch

        if len(strings) == 0:
            return torch.empty((0, 0), dtype=torch.long)
        width = len(strings[0])
        for i, s in enumerate(strings):
            if len(s) != width:
                raise ValueError(
                    "all strings must have the same length; "
                    f"strings[0] has {width}, strings[{i}] has {len(s)}"
                )
        joined = "".join(strings)
        try:
            raw = joined.encode("ascii")
        except UnicodeEncodeError as e:
            raise self._unknown(joined[e.start]) from None
        ids = self._lut[np.frombuffer(raw, dtype=np.uint8)]
        bad = np.flatnonzero(ids < 0)
        if bad.size:
            raise self._unknown(joined[int(bad[0])])
        return torch.from_numpy(ids.reshape(len(strings), width))

    def decode_batch(self, ids: torch.Tensor | Sequence[Sequence[int]]) -> list[str]:
        if hasattr(ids, "tolist") and ids.ndim != 2:
            raise ValueError(f"decode_batch expects a 2-D tensor, got shape {tuple(ids.shape)}")
        return [self.decode(row) for row in ids]


def make_batch(strings: Sequence[str], tokenizer: CharTokenizer) -> Batch:
    """Next-token-prediction batch: ``idx`` predicts ``targets`` (shifted by one).

    ``loss_mask[:, j]`` is True iff ``targets[:, j]`` (token ``j + 1``) is a body character, i.e.
    ``j >= PROMPT_LEN - 1``: the prompt letter is never a target and the deterministic ``>`` target
    is masked out so that the loss measures only the task itself.
    """
    import torch

    tokens = tokenizer.encode_batch(strings)
    if tokens.shape[1] < 2:
        raise ValueError(
            "sequences must have at least 2 characters to form a batch, "
            f"got length {tokens.shape[1]}"
        )
    idx = tokens[:, :-1].contiguous()
    targets = tokens[:, 1:].contiguous()
    loss_mask = (torch.arange(targets.shape[1]) >= PROMPT_LEN - 1).expand_as(targets).clone()
    return {"idx": idx, "targets": targets, "loss_mask": loss_mask}


# --------------------------------------------------------------------------------------------
# Training seeds (the data module is ftstudy.tasks.synthetic_task's)
# --------------------------------------------------------------------------------------------


def _hash_to_train_seed(*words: int) -> int:
    # SeedSequence is a well-mixed hash of arbitrary non-negative ints; 63 bits of it plus the top
    # bit give training seeds that are disjoint from every validation seed (< 2**63).
    lo, hi = (int(w) for w in np.random.SeedSequence(list(words)).generate_state(2, np.uint32))
    return _TRAIN_SEED_BIT | ((hi & 0x7FFF_FFFF) << 32) | lo


def derive_stream_seed(seed: int, rank: int, worker_id: int) -> int:
    """Seed of the training stream of one (DDP rank, DataLoader worker); distinct per pair."""
    for name, v in (("seed", seed), ("rank", rank), ("worker_id", worker_id)):
        if not _is_int(v) or int(v) < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {v!r}")
    return _hash_to_train_seed(_STREAM_TAG, int(seed), int(rank), int(worker_id))


def derive_batch_seed(stream_seed: int, index: int) -> int:
    """Seed of batch ``index`` (0-based) of a stream; always in ``[2**63, 2**64)``."""
    if not _is_int(index) or int(index) < 0:
        raise ValueError(f"index must be an integer >= 0, got {index!r}")
    return _hash_to_train_seed(_BATCH_TAG, int(stream_seed), int(index))
