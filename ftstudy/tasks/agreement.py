"""How often generations that share Z agree on the block position of the synthetic task.

Owns, torch-free (numpy only):

- :class:`GroupTable`, a run's generation groups (strings, group id, shared or independent Z,
  checker verdict), and the groups file format (a run's ``groups.txt.gz``, a measurement's
  ``<protocol>.groups.txt.gz`` and ``.posterior.txt.gz``: text, gzip-compressed by
  :func:`ftstudy.io.atomic_write_gzip`): :func:`write_groups` (the text: :func:`format_groups`)
  and :func:`read_groups` are its one writer and one reader;
- tolerant agreement: :func:`pair_distances`, :func:`group_agreement` (two valid members of a
  group agree within ``tol`` when their block starts differ by at most ``tol``),
  :func:`distance_histogram`;
- the interval: :func:`hierarchical_bootstrap` over seeds (runs) and the groups of each seed;
- the summaries: :func:`agreement_summary` (per kind and tolerance) and
  :func:`agreement_by_position` (shared groups binned by where their block lies);
- what the KL budget allows: :func:`bound_bits` (bits of Z read before the block starts) and
  :func:`agreement_ceiling` (the most exact agreement those bits permit).
"""

from __future__ import annotations

import gzip
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ftstudy.io import atomic_write_gzip, read_gzip
from ftstudy.tasks import synthetic

__all__ = ["TOLERANCES", "N_POSITIONS", "KINDS", "GroupTable", "format_groups", "write_groups", "read_groups",
           "pair_distances",
           "group_agreement", "distance_histogram", "Interval", "hierarchical_bootstrap", "difference_bootstrap",
           "agreement_summary", "tolerance_name",
           "group_position", "agreement_by_position", "bound_bits", "agreement_ceiling"]

#: Tolerances (in body characters) that :func:`agreement_summary` reports by default.
TOLERANCES: tuple[int, ...] = (0, 1, 2)
#: Possible block starts in the body: 0..56.
N_POSITIONS: int = synthetic.BODY_LEN - synthetic.BLOCK_LEN + 1
#: The two kinds of group: all members share one Z, or each member draws its own.
KINDS: tuple[str, ...] = ("shared", "independent")

_HEADER = "# group  Z            valid  position  sequence"
_KIND_COLUMN = {True: "shared     ", False: "independent"}
_DEFAULT_BINS: tuple[tuple[int, int], ...] = ((0, 7), (8, 15), (16, 23), (24, 31), (32, 39), (40, 47), (48, 56))


def _is_int(x: object) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _check_tol(tol: object) -> int:
    if not _is_int(tol) or int(tol) < 0:  # type: ignore[call-overload]
        raise ValueError(f"tol must be an integer >= 0, got {tol!r}")
    return int(tol)  # type: ignore[call-overload]


# --------------------------------------------------------------------------------------------
# The groups of a run and groups.txt
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class GroupTable:
    """One run's generations in groups; arrays are read-only, one entry per string.

    ``eq=False``: tables hold arrays, so they compare (and hash) by identity.
    """

    strings: tuple[str, ...]
    group: NDArray[np.int64]  # group id of each string
    shared: NDArray[np.bool_]  # the string's group shares one Z
    valid: NDArray[np.bool_]  # synthetic.check_many's verdict
    position: NDArray[np.int64]  # block start in the body; -1 when invalid

    def __post_init__(self) -> None:
        strings = tuple(self.strings)
        n = len(strings)
        arrays = {"group": (self.group, np.int64), "shared": (self.shared, np.bool_),
                  "valid": (self.valid, np.bool_), "position": (self.position, np.int64)}
        object.__setattr__(self, "strings", strings)
        for name, (value, dtype) in arrays.items():
            a = np.asarray(value)
            if a.shape != (n,):
                raise ValueError(f"GroupTable.{name} must have shape ({n},) like strings, got {a.shape}")
            if dtype is np.bool_ and n and a.dtype != np.bool_:
                raise ValueError(f"GroupTable.{name} must be bool, got dtype {a.dtype}")
            if dtype is np.int64 and n and not np.issubdtype(a.dtype, np.integer):
                raise ValueError(f"GroupTable.{name} must be integer, got dtype {a.dtype}")
            a = np.array(a, dtype=dtype)  # a private copy
            a.setflags(write=False)
            object.__setattr__(self, name, a)
        bad = np.flatnonzero(self.valid != (self.position >= 0))
        if bad.size:
            i = int(bad[0])
            raise ValueError(f"GroupTable: string {i} has valid={bool(self.valid[i])} but position="
                             f"{int(self.position[i])}; position must be >= 0 exactly when valid")
        for gid in np.unique(self.group):
            kinds = np.unique(self.shared[self.group == gid])
            if len(kinds) > 1:
                raise ValueError(f"GroupTable: group {int(gid)} mixes shared and independent members")

    @classmethod
    def from_strings(cls, strings: Sequence[str], group: ArrayLike, shared: ArrayLike) -> GroupTable:
        """A table whose ``valid`` and ``position`` come from :func:`synthetic.check_many`."""
        strings = tuple(strings)
        valid, position = synthetic.check_many(strings)
        return cls(strings, np.asarray(group, dtype=np.int64).reshape(-1),
                   np.asarray(shared, dtype=np.bool_).reshape(-1), valid, position)

    def __len__(self) -> int:
        return len(self.strings)

    def positions(self, kind: str) -> list[NDArray[np.int64]]:
        """Valid block starts of each group of ``kind`` ("shared" or "independent"), in group-id
        order, keeping only groups with at least 2 valid members."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        want = kind == "shared"
        out = []
        for gid in np.unique(self.group):
            members = self.group == gid
            if bool(self.shared[members][0]) != want:
                continue
            p = self.position[members & self.valid]
            if len(p) >= 2:
                out.append(p.copy())
        return out


def format_groups(table: GroupTable) -> str:
    """The text of a groups file: a header, then one line ``group kind valid position sequence`` per string,
    in table order, newline-terminated."""
    lines = [_HEADER]
    for s, gid, sh, ok, p in zip(table.strings, table.group, table.shared, table.valid, table.position):
        lines.append(f"{int(gid):5d}  {_KIND_COLUMN[bool(sh)]}  {int(ok):5d}  {int(p):8d}  {s}")
    return "\n".join(lines) + "\n"


def write_groups(table: GroupTable, path: str | Path) -> Path:
    """Write a groups file (:func:`format_groups`, gzip-compressed, atomic); returns ``path``."""
    atomic_write_gzip(Path(path), format_groups(table))
    return Path(path)


def read_groups(path: str | Path) -> GroupTable:
    """Parse a groups file written by :func:`write_groups`, re-checking every sequence.

    ValueError naming the file and line for a malformed line, a group that mixes kinds, or a
    ``valid``/``position`` column that disagrees with :func:`synthetic.check_many`; ValueError
    naming the file when it is not gzip-compressed text.
    """
    path = Path(path)
    try:
        text = read_gzip(path)
    except (gzip.BadGzipFile, EOFError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a gzip-compressed groups file ({e})") from None
    strings: list[str] = []
    group: list[int] = []
    shared: list[bool] = []
    valid: list[bool] = []
    position: list[int] = []
    line_of: list[int] = []
    kind_of_group: dict[int, tuple[bool, int]] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        if line.startswith("#"):
            continue
        parts = line.split()
        where = f"{path}:{lineno}"
        if len(parts) != 5:
            raise ValueError(f"{where}: expected 5 columns 'group kind valid position sequence', "
                             f"got {len(parts)}: {line!r}")
        gid_s, kind, ok_s, pos_s, s = parts
        try:
            gid, pos = int(gid_s), int(pos_s)
        except ValueError:
            raise ValueError(f"{where}: group and position must be integers, "
                             f"got {gid_s!r} and {pos_s!r}") from None
        if kind not in KINDS:
            raise ValueError(f"{where}: kind must be one of {KINDS}, got {kind!r}")
        if ok_s not in ("0", "1"):
            raise ValueError(f"{where}: valid must be 0 or 1, got {ok_s!r}")
        sh = kind == "shared"
        first = kind_of_group.setdefault(gid, (sh, lineno))
        if first[0] != sh:
            raise ValueError(f"{where}: group {gid} is {kind} here but "
                             f"{KINDS[0] if first[0] else KINDS[1]} on line {first[1]}")
        strings.append(s)
        group.append(gid)
        shared.append(sh)
        valid.append(ok_s == "1")
        position.append(pos)
        line_of.append(lineno)
    table = GroupTable.from_strings(strings, np.array(group, dtype=np.int64), np.array(shared, dtype=np.bool_))
    disagree = np.flatnonzero((table.valid != np.array(valid, dtype=np.bool_))
                              | (table.position != np.array(position, dtype=np.int64)))
    if disagree.size:
        i = int(disagree[0])
        raise ValueError(f"{path}:{line_of[i]}: the file says valid={int(valid[i])} position={position[i]} "
                         f"but synthetic.check_many says valid={int(table.valid[i])} "
                         f"position={int(table.position[i])}")
    return table


# --------------------------------------------------------------------------------------------
# Tolerant agreement
# --------------------------------------------------------------------------------------------


def pair_distances(positions: ArrayLike) -> NDArray[np.int64]:
    """``|p_i - p_j|`` for every pair ``i < j`` (row-major order of the upper triangle)."""
    p = np.asarray(positions, dtype=np.int64).reshape(-1)
    i, j = np.triu_indices(len(p), 1)
    return np.abs(p[i] - p[j])


def group_agreement(positions: ArrayLike, tol: int) -> float:
    """Fraction of pairs whose block starts differ by at most ``tol``; nan for fewer than 2."""
    tol = _check_tol(tol)
    d = pair_distances(positions)
    return float((d <= tol).mean()) if d.size else float("nan")


def distance_histogram(groups: Sequence[ArrayLike]) -> NDArray[np.int64]:
    """Counts of within-group pair distances 0..N_POSITIONS-1, pooled over ``groups``."""
    hist = np.zeros(N_POSITIONS, dtype=np.int64)
    for g in groups:
        d = pair_distances(g)
        if d.size and d.max() >= N_POSITIONS:
            raise ValueError(f"pair distance {int(d.max())} is out of range: block starts lie in "
                             f"0..{N_POSITIONS - 1}, so distances in 0..{N_POSITIONS - 1}")
        hist += np.bincount(d, minlength=N_POSITIONS)
    return hist


# --------------------------------------------------------------------------------------------
# Hierarchical bootstrap
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Interval:
    """A point estimate with its bootstrap interval and how much data it rests on."""

    mean: float
    low: float
    high: float
    n_seeds: int
    n_groups: int


def hierarchical_bootstrap(values: Sequence[Sequence[float]], *, n_boot: int = 10_000, level: float = 0.95,
                           seed: int = 0) -> Interval:
    """Mean over seeds of each seed's mean group value, with a two-level percentile interval.

    ``values[s]`` are the per-group statistics of seed (run) ``s``; nan values are dropped, then
    seeds left without groups. Each resample draws the seeds with replacement and then, inside
    each drawn seed, its groups with replacement. The interval is clamped to contain the mean
    (a percentile interval need not) and lies in [min, max] of the group values, so a rate's
    interval stays in [0, 1]. No data: ``Interval(nan, nan, nan, 0, 0)``. Deterministic in
    ``seed``.
    """
    if not _is_int(n_boot) or int(n_boot) < 1:
        raise ValueError(f"n_boot must be an integer >= 1, got {n_boot!r}")
    if isinstance(level, bool) or not isinstance(level, (int, float, np.floating)) or not 0 < float(level) < 1:
        raise ValueError(f"level must be a number in (0, 1), got {level!r}")
    if not _is_int(seed) or int(seed) < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    if isinstance(values, np.ndarray) and values.ndim == 1:
        raise ValueError("values must be a sequence of per-seed sequences, got a 1-D array; "
                         "wrap one seed as [values]")
    seeds = []
    for s, v in enumerate(values):
        a = np.asarray(v, dtype=float).reshape(-1) if np.ndim(v) else None
        if a is None:
            raise ValueError(f"values[{s}] must be a sequence of group values, got {v!r}")
        a = a[~np.isnan(a)]
        if np.isinf(a).any():
            raise ValueError(f"values[{s}] contains an infinite group value")
        if a.size:
            seeds.append(a)
    n_seeds = len(seeds)
    if n_seeds == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0, 0)
    sizes = np.array([len(a) for a in seeds])
    n_groups = int(sizes.sum())
    lo_v = float(min(a.min() for a in seeds))
    hi_v = float(max(a.max() for a in seeds))
    mean = float(np.mean([a.mean() for a in seeds]))
    mean = min(max(mean, lo_v), hi_v)
    if lo_v == hi_v:
        return Interval(lo_v, lo_v, lo_v, n_seeds, n_groups)

    width = int(sizes.max())
    table = np.zeros((n_seeds, width))
    for s, a in enumerate(seeds):
        table[s, :len(a)] = a
    rng = np.random.default_rng(int(seed))
    n_boot = int(n_boot)
    drawn = rng.integers(0, n_seeds, size=(n_boot, n_seeds))  # seeds of each resample
    n_drawn = sizes[drawn]  # (B, S): groups of each drawn seed
    # Groups within each drawn seed: uniform index below that seed's size; columns past the
    # size are padding and masked out.
    idx = np.floor(rng.random((n_boot, n_seeds, width)) * n_drawn[..., None]).astype(np.int64)
    picked = table[drawn[..., None], idx]
    used = np.arange(width) < n_drawn[..., None]
    seed_means = np.where(used, picked, 0.0).sum(axis=2) / n_drawn
    stats = seed_means.mean(axis=1)
    alpha = (1 - float(level)) / 2
    low, high = (float(q) for q in np.quantile(stats, [alpha, 1 - alpha]))
    low = min(max(low, lo_v), mean)
    high = max(min(high, hi_v), mean)
    return Interval(mean, low, high, n_seeds, n_groups)


#: z_{0.975} + z_{0.80}: a true difference of this many standard errors is detected (two-sided
#: 5% test) with 80% probability.
_MDE_Z = 1.959964 + 0.841621


def difference_bootstrap(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]], *, n_boot: int = 10_000,
                         level: float = 0.95, seed: int = 0) -> dict[str, float]:
    """mean(a) − mean(b) (each a mean over seeds of per-seed group means, as
    :func:`hierarchical_bootstrap`), with a percentile interval from resampling the seeds
    *jointly* (a seed's a and b groups come from one run) and each seed's groups with
    replacement, its bootstrap standard error, and ``mde80``: the smallest true difference
    this design detects with 80% probability in a two-sided 5% test (2.80 standard errors).
    Seeds where either side has no group are left out; none left: nan everywhere.  Rates in
    [0, 1] give a difference and interval in [−1, 1]."""
    pairs = []
    for va, vb in zip(a, b, strict=True):
        xa, xb = np.asarray(va, dtype=float).reshape(-1), np.asarray(vb, dtype=float).reshape(-1)
        xa, xb = xa[~np.isnan(xa)], xb[~np.isnan(xb)]
        if xa.size and xb.size:
            pairs.append((xa, xb))
    nan = float("nan")
    if not pairs:
        return {"diff": nan, "ci_low": nan, "ci_high": nan, "se": nan, "mde80": nan, "seeds": 0}
    rng = np.random.default_rng(int(seed))
    n_seeds = len(pairs)
    drawn = rng.integers(0, n_seeds, size=(int(n_boot), n_seeds))

    def resampled_means(side: int) -> NDArray[np.float64]:
        out = np.zeros(drawn.shape)
        for s, pair in enumerate(pairs):
            x = pair[side]
            hit = drawn == s
            k = int(hit.sum())
            if k:
                out[hit] = x[rng.integers(0, len(x), size=(k, len(x)))].mean(axis=1)
        return out.mean(axis=1)

    d = resampled_means(0) - resampled_means(1)
    point = float(np.mean([x.mean() for x, _ in pairs]) - np.mean([y.mean() for _, y in pairs]))
    alpha = (1 - float(level)) / 2
    low, high = (float(q) for q in np.quantile(d, [alpha, 1 - alpha]))
    se = float(d.std(ddof=1)) if len(d) > 1 else nan
    return {"diff": point, "ci_low": min(low, point), "ci_high": max(high, point), "se": se,
            "mde80": _MDE_Z * se, "seeds": n_seeds}


# --------------------------------------------------------------------------------------------
# Summaries
# --------------------------------------------------------------------------------------------


def tolerance_name(tol: int) -> str:
    """How a tolerance is named in figure keys: ``exact`` for 0, ``within<tol>`` otherwise."""
    return "exact" if tol == 0 else f"within{tol}"


def agreement_summary(tables: Sequence[GroupTable], tolerances: Sequence[int] = TOLERANCES,
                      **bootstrap_kwargs: Any) -> dict[str, float | int | list]:
    """Agreement of shared-Z and independent-Z groups, one table per seed (run).

    For each kind and tolerance ``tol``: ``{name}_{kind}`` with ``_ci_low``/``_ci_high`` (name
    ``exact`` for 0, ``within{tol}`` otherwise), the :func:`hierarchical_bootstrap` of the
    per-group agreement; ``groups_{kind}`` (groups with >= 2 valid members),
    ``distance_hist_{kind}`` (pooled pair distances); ``seeds`` (tables given); ``valid_rate``
    (pooled over every sequence; nan for none); and per tolerance ``{name}_diff`` (shared −
    independent, :func:`difference_bootstrap`) with ``_ci_low``/``_ci_high`` and ``_mde80``, the
    difference this design detects with 80% power.
    """
    tols = [_check_tol(t) for t in tolerances]
    if len(set(tols)) != len(tols):
        raise ValueError(f"tolerances must be distinct, got {list(tolerances)!r}")
    for i, t in enumerate(tables):
        if not isinstance(t, GroupTable):
            raise TypeError(f"tables[{i}] must be a GroupTable, got {type(t).__name__}")
    out: dict[str, float | int | list] = {"seeds": len(tables)}
    values: dict[tuple[str, int], list[list[float]]] = {}
    for kind in KINDS:
        per_seed = [t.positions(kind) for t in tables]
        for tol in tols:
            name = f"{tolerance_name(tol)}_{kind}"
            values[kind, tol] = [[group_agreement(g, tol) for g in groups] for groups in per_seed]
            iv = hierarchical_bootstrap(values[kind, tol], **bootstrap_kwargs)
            out[name], out[f"{name}_ci_low"], out[f"{name}_ci_high"] = iv.mean, iv.low, iv.high
        out[f"groups_{kind}"] = sum(len(groups) for groups in per_seed)
        out[f"distance_hist_{kind}"] = distance_histogram([g for groups in per_seed for g in groups]).tolist()
    for tol in tols:  # shared − independent: the effect of sharing Z, and what this design can detect
        d = difference_bootstrap(values["shared", tol], values["independent", tol], **bootstrap_kwargs)
        name = f"{tolerance_name(tol)}_diff"
        out[name], out[f"{name}_ci_low"], out[f"{name}_ci_high"] = d["diff"], d["ci_low"], d["ci_high"]
        out[f"{name}_mde80"] = d["mde80"]
    n = sum(len(t) for t in tables)
    out["valid_rate"] = float(sum(int(t.valid.sum()) for t in tables) / n) if n else float("nan")
    return out


def group_position(positions: ArrayLike) -> int:
    """A shared group's block start: the median of its valid starts (the lower one for an even
    count)."""
    p = np.sort(np.asarray(positions, dtype=np.int64).reshape(-1))
    if p.size == 0:
        raise ValueError("group_position needs at least one position, got none")
    return int(p[(len(p) - 1) // 2])


def _shared_groups_by_prompt(table: GroupTable) -> list[list[NDArray[np.int64]]]:
    """The valid block starts of each shared group (>= 2 valid), grouped by the prompt their
    group was generated from (a sequence's prompt is its first ``PROMPT_LEN`` characters)."""
    by_prompt: dict[str, list[NDArray[np.int64]]] = {}
    for gid in np.unique(table.group):
        members = np.flatnonzero(table.group == gid)
        if not table.shared[members[0]]:
            continue
        p = table.position[members[table.valid[members]]]
        if len(p) >= 2:
            by_prompt.setdefault(table.strings[members[0]][:synthetic.PROMPT_LEN], []).append(p.copy())
    return list(by_prompt.values())


def agreement_by_position(tables: Sequence[GroupTable], *, tol: int = 0,
                          bins: Sequence[tuple[int, int]] = _DEFAULT_BINS, shuffles: int = 200,
                          shuffle_seed: int = 0, **bootstrap_kwargs: Any) -> list[dict[str, float | int]]:
    """Agreement within ``tol`` of shared groups, binned by :func:`group_position`, beside each
    bin's own chance level.

    ``bins`` are inclusive ``(low, high)`` ranges of block start; a group outside every bin is
    left out and one inside several counts in each. One row per bin: ``low``, ``high``,
    ``groups``, ``mean``, ``ci_low``, ``ci_high`` (hierarchical bootstrap over seeds and the
    bin's groups; an empty bin has 0 groups and nan figures), and ``chance``: the same
    statistic after shuffling the valid members of a prompt's shared groups among those groups
    (group sizes kept), averaged over ``shuffles`` shuffles.  Binning by the median position
    changes the chance level per bin (late blocks crowd together under sharp sampling), so each
    bin is compared with its own chance, not with one pooled figure.
    """
    tol = _check_tol(tol)
    checked = []
    for b in bins:
        if (not isinstance(b, (tuple, list)) or len(b) != 2 or not all(_is_int(x) for x in b)
                or int(b[0]) > int(b[1])):
            raise ValueError(f"each bin must be a pair of integers (low, high) with low <= high, got {b!r}")
        checked.append((int(b[0]), int(b[1])))
    if not _is_int(shuffles) or int(shuffles) < 0:
        raise ValueError(f"shuffles must be an integer >= 0, got {shuffles!r}")

    def binned(per_seed: list[list[tuple[int, float]]]) -> list[list[list[float]]]:
        return [[[a for pos, a in groups if lo <= pos <= hi] for groups in per_seed] for lo, hi in checked]

    def bin_mean(values: list[list[float]]) -> float:
        means = [np.mean(v) for v in values if len(v)]
        return float(np.mean(means)) if means else float("nan")

    per_seed = [[(group_position(g), group_agreement(g, tol)) for g in t.positions("shared")] for t in tables]
    prompts = [_shared_groups_by_prompt(t) for t in tables]
    rng = np.random.default_rng(int(shuffle_seed))
    chance_sum = np.zeros(len(checked))
    chance_n = np.zeros(len(checked))
    for _ in range(int(shuffles)):
        shuffled = []
        for seed_prompts in prompts:
            groups_out = []
            for groups in seed_prompts:
                pooled = rng.permutation(np.concatenate(groups))
                cuts = np.cumsum([len(g) for g in groups])[:-1]
                groups_out += [(group_position(g), group_agreement(g, tol)) for g in np.split(pooled, cuts)]
            shuffled.append(groups_out)
        for i, values in enumerate(binned(shuffled)):
            m = bin_mean(values)
            if math.isfinite(m):
                chance_sum[i] += m
                chance_n[i] += 1
    rows = []
    for i, ((lo, hi), values) in enumerate(zip(checked, binned(per_seed))):
        iv = hierarchical_bootstrap(values, **bootstrap_kwargs)
        rows.append({"low": lo, "high": hi, "groups": sum(len(v) for v in values),
                     "mean": iv.mean, "ci_low": iv.low, "ci_high": iv.high,
                     "chance": float(chance_sum[i] / chance_n[i]) if chance_n[i] else float("nan")})
    return rows


# --------------------------------------------------------------------------------------------
# What the KL budget allows
# --------------------------------------------------------------------------------------------


def bound_bits(position: ArrayLike, kappa_bits: float, prompt_len: int = synthetic.PROMPT_LEN) -> Any:
    """Bits of Z the decoder can have read when it starts the block at body ``position``:
    ``(position + prompt_len) * kappa_bits``.

    The first block character is token ``prompt_len + position``, predicted at the position
    before it, which has seen ``Z_0 .. Z_{prompt_len + position - 1}``. With per-token free
    bits the encoder pays nothing below ``kappa_bits`` per token and so uses about that much;
    as the Z_t are independent under the prior and the encoder's posterior factorises over
    tokens, ``I(Z_{<=t}; S) <= sum_{s<=t} E KL(q(Z_s | S) || p(Z_s)) ~= (t + 1) * kappa``.
    An approximation: free bits hold the KL near ``kappa`` on average, not below it per token.
    Accepts a number or an array of positions.
    """
    if isinstance(kappa_bits, bool) or not isinstance(kappa_bits, (int, float, np.integer, np.floating)) \
            or not kappa_bits >= 0:
        raise ValueError(f"kappa_bits must be a number >= 0, got {kappa_bits!r}")
    if not _is_int(prompt_len) or int(prompt_len) < 0:
        raise ValueError(f"prompt_len must be an integer >= 0, got {prompt_len!r}")
    p = np.asarray(position)
    if not np.issubdtype(p.dtype, np.number) or (p < 0).any():
        raise ValueError(f"position must be >= 0, got {position!r}")
    out = (p + int(prompt_len)) * float(kappa_bits)
    return float(out) if out.ndim == 0 else out


def _fano(p: NDArray[np.float64], m: int) -> NDArray[np.float64]:
    """F(P) = h(1 - P) + (1 - P) log2(M - 1): Fano's bound on H(X | z) when max_x p(x|z) = P."""
    q = 1.0 - p
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(q > 0, q * np.log2(q), 0.0) - np.where(p > 0, p * np.log2(p), 0.0)
    return h + q * math.log2(m - 1)


def agreement_ceiling(bits: ArrayLike, *, n_positions: int = N_POSITIONS,
                      entropy_bits: float | None = None) -> Any:
    """Upper bound on P(two sequences sharing Z put the block at the same start) when
    ``I(Z; X) <= bits``, X the block start with ``M = n_positions`` values.

    Given ``z``, the collision probability ``sum_x p(x|z)^2`` is at most ``P(z) = max_x p(x|z)``.
    Fano: ``H(X | z) <= F(P(z))`` with ``F(P) = h(1 - P) + (1 - P) log2(M - 1)`` (``h`` the
    binary entropy in bits). ``F`` is concave and decreasing on ``[1/M, 1]`` (from ``log2 M`` to
    0) and ``P(z) >= 1/M``, so ``P(z) <= F^-1(H(X | z))`` with ``F^-1`` concave and decreasing;
    by Jensen ``E P(z) <= F^-1(H(X | Z))``, and ``H(X | Z) = H(X) - I >= H(X) - bits`` gives
    ``E P(z) <= F^-1(H(X) - bits)``. ``H(X)`` is ``entropy_bits`` if given, else ``log2 M``
    (uniform block start). 1.0 when ``H(X) - bits <= 0``. ``F^-1`` by bisection to 1e-10,
    returning the upper end so the result stays a bound. Accepts a number or an array.
    """
    if not _is_int(n_positions) or int(n_positions) < 2:
        raise ValueError(f"n_positions must be an integer >= 2, got {n_positions!r}")
    m = int(n_positions)
    h_max = math.log2(m)
    if entropy_bits is None:
        h_x = h_max
    else:
        number = isinstance(entropy_bits, (int, float, np.integer, np.floating)) and not isinstance(entropy_bits, bool)
        if not number or not 0 <= float(entropy_bits) <= h_max + 1e-12:
            raise ValueError(f"entropy_bits must be a number in [0, log2(n_positions) = {h_max:.6g}], "
                             f"got {entropy_bits!r}")
        h_x = min(float(entropy_bits), h_max)
    b = np.asarray(bits, dtype=float)
    if np.isnan(b).any() or (b < 0).any():
        raise ValueError(f"bits must be >= 0 (a mutual information), got {bits!r}")
    target = h_x - b  # the least H(X | Z) can be
    lo = np.full(b.shape, 1.0 / m)  # F(lo) >= target
    hi = np.ones(b.shape)  # F(hi) <= target
    while (hi - lo).max(initial=0.0) > 1e-10:
        mid = (lo + hi) / 2
        above = _fano(mid, m) >= target
        lo = np.where(above, mid, lo)
        hi = np.where(above, hi, mid)
    out = np.where(target <= 0, 1.0, np.where(target >= h_max, 1.0 / m, hi))
    return float(out) if out.ndim == 0 else out
