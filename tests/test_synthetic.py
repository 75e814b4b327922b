"""Tests for ftstudy.tasks.synthetic (generator, checker, tokenizer, batches) and the data module
of ftstudy.tasks.synthetic_task."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
from scipy import stats

from ftstudy.tasks import synthetic as S
from ftstudy.tasks import synthetic_task as ST

N_STAT = 10_000
STAT_SEED = 1234


def body_with_block(
    pos: int, letter: str, *, noise: tuple[int, ...] = (), extra: dict[int, str] | None = None
) -> str:
    """BODY_LEN chars: `letter` block at `pos`, `!` at `noise`, then `extra` overrides."""
    chars = ["_"] * S.BODY_LEN
    for i in range(pos, pos + S.BLOCK_LEN):
        chars[i] = letter
    for i in noise:
        chars[i] = "!"
    for i, c in (extra or {}).items():
        chars[i] = c
    return "".join(chars)


def seq(letter: str, body: str) -> str:
    return f"{letter}>{body}"


def test_constants() -> None:
    assert (S.BODY_LEN, S.BLOCK_LEN, S.NOISE_P, S.SEQ_LEN, S.PROMPT_LEN) == (64, 8, 1 / 16, 66, 2)
    assert S.LETTERS == "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    assert S.SEQ_LEN == S.PROMPT_LEN + S.BODY_LEN


# ------------------------------------------------------------------------------------------
# check: crafted cases
# ------------------------------------------------------------------------------------------

CHECK_CASES: list[tuple[str, str, tuple[bool, int | None]]] = [
    ("clean", seq("K", body_with_block(10, "K")), (True, 10)),
    ("paper example", "K>!_________!_______!____KKKKKKKK______" + "_" * 27, (True, 23)),
    ("noise inside block", seq("K", body_with_block(10, "K", noise=(12, 15))), (True, 10)),
    ("noise outside block", seq("K", body_with_block(10, "K", noise=(0, 9, 18, 63))), (True, 10)),
    (
        "noise inside and outside",
        seq("Z", body_with_block(30, "Z", noise=(3, 31, 36, 50))),
        (True, 30),
    ),
    ("block at 0", seq("A", body_with_block(0, "A")), (True, 0)),
    ("block at 56", seq("B", body_with_block(56, "B")), (True, 56)),
    ("block at 56, last char noised", seq("B", body_with_block(56, "B", noise=(63,))), (True, 56)),
    ("block at 0, first char noised", seq("A", body_with_block(0, "A", noise=(0,))), (True, 0)),
    (
        "single surviving letter",
        seq("C", body_with_block(20, "C", noise=tuple(range(21, 28)))),
        (True, 20),
    ),
    # Invalid bodies.
    (
        "letter far outside window",
        seq("K", body_with_block(10, "K", extra={30: "K"})),
        (False, None),
    ),
    ("run of nine letters", seq("K", body_with_block(10, "K", extra={18: "K"})), (False, None)),
    (
        "two blocks",
        seq("K", body_with_block(10, "K", extra={i: "K" for i in range(40, 48)})),
        (False, None),
    ),
    (
        "other letter inside block",
        seq("K", body_with_block(10, "K", extra={13: "Q"})),
        (False, None),
    ),
    (
        "other letter outside block",
        seq("K", body_with_block(10, "K", extra={40: "Q"})),
        (False, None),
    ),
    ("block letter differs from prompt", seq("K", body_with_block(10, "Q")), (False, None)),
    ("underscore inside block", seq("K", body_with_block(10, "K", extra={14: "_"})), (False, None)),
    ("all underscores", seq("K", "_" * 64), (False, None)),
    ("all noise", seq("K", "!" * 64), (False, None)),
    ("noise and underscores only", seq("K", body_with_block(10, "!", noise=(40,))), (False, None)),
    # Windows must fit in the body: letters at 57..63 need a '!' at 56 to have a window.
    ("window past body end", seq("D", "_" * 57 + "D" * 7), (False, None)),
    ("window past body end, rescued by noise", seq("D", "_" * 56 + "!" + "D" * 7), (True, 56)),
    ("letters only near end", seq("D", "_" * 60 + "DDDD"), (False, None)),
    # Malformed strings.
    ("too short", seq("K", body_with_block(10, "K"))[:-1], (False, None)),
    ("too long", seq("K", body_with_block(10, "K")) + "_", (False, None)),
    ("empty", "", (False, None)),
    ("missing >", "K" + body_with_block(10, "K") + "_", (False, None)),
    ("wrong separator", "K<" + body_with_block(10, "K"), (False, None)),
    ("lowercase prompt and block", seq("k", body_with_block(10, "k")), (False, None)),
    ("lowercase prompt, uppercase block", seq("k", body_with_block(10, "K")), (False, None)),
    ("non-ascii prompt", seq("É", body_with_block(10, "É")), (False, None)),
    ("digit in body", seq("K", body_with_block(10, "K", extra={40: "7"})), (False, None)),
    ("separator in body", seq("K", body_with_block(10, "K", extra={40: ">"})), (False, None)),
]


@pytest.mark.parametrize(
    ("s", "expected"), [c[1:] for c in CHECK_CASES], ids=[c[0] for c in CHECK_CASES]
)
def test_check_crafted(s: str, expected: tuple[bool, int | None]) -> None:
    assert S.check(s) == expected


def test_check_many_agrees_with_check_on_crafted() -> None:
    strings = [c[1] for c in CHECK_CASES]
    valid, pos = S.check_many(strings)
    assert valid.dtype == np.bool_ and pos.dtype == np.int64
    for s, v, p in zip(strings, valid, pos, strict=True):
        ok, q = S.check(s)
        assert (bool(v), int(p)) == (ok, -1 if q is None else q), s


AMBIGUITY_CASES = [
    # (name, true start, body, qualifying windows): check must return the smallest.
    ("first char noised, '_' after block", 10, body_with_block(10, "K", noise=(10,)), [10]),
    ("first char noised, '!' after block", 10, body_with_block(10, "K", noise=(10, 18)), [10, 11]),
    # Clean first char is NOT enough: a '!' before the block plus a noised last char shift it left.
    ("last char noised, '!' before block", 10, body_with_block(10, "K", noise=(9, 17)), [9, 10]),
    (
        "both edges noised, '!' on both sides",
        10,
        body_with_block(10, "K", noise=(8, 9, 10, 17, 18)),
        [9, 10, 11],
    ),
    ("lone letter in noise", 20, "!" * 20 + "K" + "!" * 43, list(range(13, 21))),
    ("lone letter at body start", 0, "K" + "!" * 63, [0]),
]


@pytest.mark.parametrize(
    ("true_pos", "body", "windows"),
    [c[1:] for c in AMBIGUITY_CASES],
    ids=[c[0] for c in AMBIGUITY_CASES],
)
def test_check_ambiguous_position_is_smallest_window(
    true_pos: int, body: str, windows: list[int]
) -> None:
    s = seq("K", body)
    assert S.qualifying_windows(s) == windows
    assert true_pos in windows
    assert S.check(s) == (True, windows[0])
    valid, pos = S.check_many([s])
    assert valid.tolist() == [True] and pos.tolist() == [windows[0]]


def test_check_rejects_non_string() -> None:
    with pytest.raises(TypeError):
        S.check(123)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"strings\[1\]"):
        S.check_many(["K>", None])  # type: ignore[list-item]


def test_check_many_empty_and_mixed_lengths() -> None:
    valid, pos = S.check_many([])
    assert valid.shape == (0,) and pos.shape == (0,)
    good = seq("K", body_with_block(3, "K"))
    valid, pos = S.check_many(["", good, good + "_", good])
    assert valid.tolist() == [False, True, False, True]
    assert pos.tolist() == [-1, 3, -1, 3]


# ------------------------------------------------------------------------------------------
# sample: statistics on 10,000 draws
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stat_samples() -> S.SampleInfo:
    return S.sample_with_info(N_STAT, STAT_SEED)


def test_samples_shape_and_validity(stat_samples: S.SampleInfo) -> None:
    strings, positions, letters, noise = stat_samples
    assert len(strings) == N_STAT and positions.shape == (N_STAT,) and letters.shape == (N_STAT,)
    assert noise.shape == (N_STAT, S.BODY_LEN) and noise.dtype == np.bool_
    assert all(len(s) == S.SEQ_LEN for s in strings)
    valid, _ = S.check_many(strings)
    assert valid.all()
    assert all(S.check(s)[0] for s in strings)


def test_samples_match_ground_truth(stat_samples: S.SampleInfo) -> None:
    strings, positions, letters, noise = stat_samples
    for s, p, c, m in zip(strings, positions, letters, noise, strict=True):
        body = ["_"] * S.BODY_LEN
        body[p : p + S.BLOCK_LEN] = [c] * S.BLOCK_LEN
        body = ["!" if hit else ch for ch, hit in zip(body, m, strict=True)]
        assert s == f"{c}>{''.join(body)}"


def test_check_position_vs_truth(stat_samples: S.SampleInfo) -> None:
    strings, positions, _, noise = stat_samples
    valid, found = S.check_many(strings)
    assert valid.all()
    # The true start always qualifies, and the rule (smallest qualifying start) never exceeds it.
    assert all(int(p) in S.qualifying_windows(s) for s, p in zip(strings, positions, strict=True))
    assert (found <= positions).all()
    # Exact whenever the true block's last character survived the noise.
    last_clean = ~noise[np.arange(N_STAT), positions + S.BLOCK_LEN - 1]
    assert last_clean.sum() > 0.9 * N_STAT
    np.testing.assert_array_equal(found[last_clean], positions[last_clean])
    # Scalar and vectorised checkers agree.
    assert [S.check(s)[1] for s in strings[:2000]] == found[:2000].tolist()


def test_noise_rate(stat_samples: S.SampleInfo) -> None:
    strings, positions, _, noise = stat_samples
    n_bang = sum(s.count("!") for s in strings)
    assert n_bang == int(noise.sum())
    assert stats.binomtest(n_bang, N_STAT * S.BODY_LEN, S.NOISE_P).pvalue > 1e-3
    # Noise is applied after the block, so it hits the target block too.
    in_block = noise[np.arange(N_STAT)[:, None], positions[:, None] + np.arange(S.BLOCK_LEN)]
    assert stats.binomtest(int(in_block.sum()), in_block.size, S.NOISE_P).pvalue > 1e-3


def test_position_uniform(stat_samples: S.SampleInfo) -> None:
    n_pos = S.BODY_LEN - S.BLOCK_LEN + 1
    counts = np.bincount(stat_samples.positions, minlength=n_pos)
    assert counts.shape == (n_pos,) and counts.min() > 0  # covers 0..56 and nothing else
    assert stats.chisquare(counts).pvalue > 1e-3


def test_letter_uniform_and_matches_prompt(stat_samples: S.SampleInfo) -> None:
    strings, _, letters, _ = stat_samples
    assert [s[0] for s in strings] == letters.tolist()
    counts = np.array([np.sum(letters == c) for c in S.LETTERS])
    assert counts.sum() == N_STAT and counts.min() > 0
    assert stats.chisquare(counts).pvalue > 1e-3


# ------------------------------------------------------------------------------------------
# sample: determinism, options, argument validation
# ------------------------------------------------------------------------------------------


def test_sample_deterministic() -> None:
    assert S.sample(200, 7) == S.sample(200, 7)
    assert S.sample(200, 7) != S.sample(200, 8)
    assert S.sample(200, 7) == S.sample_with_info(200, 7).strings
    assert S.sample(0, 7) == []


def test_sample_custom_shape_without_noise() -> None:
    strings, positions, letters, noise = S.sample_with_info(
        500, 3, body_len=16, block_len=4, noise_p=0.0
    )
    assert not noise.any()
    assert [x[0] for x in strings] == letters.tolist()
    assert all(len(s) == 18 and "!" not in s for s in strings)
    assert set(positions.tolist()) == set(range(13))
    valid, found = S.check_many(strings, body_len=16, block_len=4)
    assert valid.all()
    np.testing.assert_array_equal(found, positions)
    assert [S.check(s, body_len=16, block_len=4) for s in strings[:50]] == [
        (True, int(p)) for p in positions[:50]
    ]
    # Default-shaped checker rejects them (wrong length).
    assert not S.check_many(strings)[0].any()


def test_block_len_equals_body_len() -> None:
    strings, positions, _, _ = S.sample_with_info(20, 0, body_len=8, block_len=8)
    assert (positions == 0).all()
    assert S.check_many(strings, body_len=8, block_len=8)[0].all()


def test_sample_is_fast() -> None:
    t0 = time.perf_counter()
    out = S.sample(100_000, 0)
    # Loose bound (shared CI machines); a per-character Python loop would take far longer.
    assert time.perf_counter() - t0 < 5.0
    assert len(out) == 100_000


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n": -1}, r"n must be .*>= 0.*-1"),
        ({"n": 2.5}, r"n must be .*2\.5"),
        ({"n": True}, r"n must be .*True"),
        ({"seed": -3}, r"seed must be .*-3"),
        ({"seed": "a"}, r"seed must be .*'a'"),
        ({"body_len": 0}, r"body_len must be .*>= 1.*0"),
        ({"block_len": 0}, r"block_len must be .*1\.\.body_len=64.*0"),
        ({"block_len": 65}, r"block_len must be .*1\.\.body_len=64.*65"),
        ({"noise_p": 1.0}, r"noise_p .*0 <= noise_p < 1.*1\.0"),
        ({"noise_p": -0.1}, r"noise_p .*-0\.1"),
        ({"noise_p": math.nan}, r"noise_p .*nan"),
    ],
)
def test_sample_validation(kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {"n": 4, "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=match):
        S.sample(**args)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------
# Tokenizer and batches
# ------------------------------------------------------------------------------------------


def test_tokenizer_vocab_order() -> None:
    tok = S.CharTokenizer()
    assert tok.vocab_size == 29
    assert tok.decode(list(range(29))) == "_!>" + S.LETTERS
    assert tok.encode("_!>AZ") == [0, 1, 2, 3, 28]


def test_tokenizer_round_trip() -> None:
    tok = S.CharTokenizer()
    strings = S.sample(64, 11)
    for s in strings:
        ids = tok.encode(s)
        assert len(ids) == S.SEQ_LEN
        assert tok.decode(ids) == s
        assert tok.decode(torch.tensor(ids)) == s
    batch = tok.encode_batch(strings)
    assert batch.dtype == torch.long and batch.shape == (64, S.SEQ_LEN)
    assert batch.tolist() == [tok.encode(s) for s in strings]
    assert tok.decode_batch(batch) == strings
    assert tok.decode_batch(batch.tolist()) == strings
    assert tok.encode_batch([]).shape == (0, 0)


@pytest.mark.parametrize("bad", ["a", "?", " ", "é", "1"])
def test_tokenizer_unknown_character(bad: str) -> None:
    tok = S.CharTokenizer()
    s = "K>__" + bad + "__"
    with pytest.raises(ValueError, match=r"unknown character .*" + repr(bad) + r".*allowed"):
        tok.encode(s)
    with pytest.raises(ValueError, match=r"unknown character .*" + repr(bad)):
        tok.encode_batch(["K>_____", s])


def test_tokenizer_other_errors() -> None:
    tok = S.CharTokenizer()
    with pytest.raises(ValueError, match=r"same length.*strings\[1\] has 3"):
        tok.encode_batch(["K>__", "K>_"])
    with pytest.raises(ValueError, match=r"token id 29 out of range"):
        tok.decode([0, 29])
    with pytest.raises(ValueError, match=r"token id -1 out of range"):
        tok.decode(torch.tensor([-1]))
    with pytest.raises(ValueError, match=r"1-D"):
        tok.decode(torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"2-D"):
        tok.decode_batch(torch.zeros(3, dtype=torch.long))


def test_make_batch() -> None:
    tok = S.CharTokenizer()
    strings = S.sample(5, 2)
    b = S.make_batch(strings, tok)
    assert set(b) == {"idx", "targets", "loss_mask"}
    L = S.SEQ_LEN - 1
    assert b["idx"].shape == b["targets"].shape == b["loss_mask"].shape == (5, L)
    assert (
        b["idx"].dtype == torch.long
        and b["targets"].dtype == torch.long
        and b["loss_mask"].dtype == torch.bool
    )
    tokens = tok.encode_batch(strings)
    assert torch.equal(b["idx"], tokens[:, :-1]) and torch.equal(b["targets"], tokens[:, 1:])
    # Position 0 predicts the deterministic '>' and is masked; every body target is kept.
    assert (b["targets"][:, 0] == tok.encode(">")[0]).all()
    assert not b["loss_mask"][:, 0].any() and b["loss_mask"][:, 1:].all()
    assert (b["loss_mask"].sum(dim=1) == S.BODY_LEN).all()
    assert tok.decode_batch(b["targets"][:, 1:]) == [s[S.PROMPT_LEN :] for s in strings]


def test_make_batch_too_short() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        S.make_batch(["K"], S.CharTokenizer())


# ------------------------------------------------------------------------------------------
# Seeds and the data module
# ------------------------------------------------------------------------------------------


def test_stream_seed_derivation() -> None:
    grid = [(s, r, w) for s in range(3) for r in range(4) for w in range(4)]
    seeds = [S.derive_stream_seed(*g) for g in grid]
    assert len(set(seeds)) == len(grid)
    assert S.derive_stream_seed(0, 0, 0) != S.derive_stream_seed(0, 0, 1)
    assert S.derive_stream_seed(0, 0, 1) != S.derive_stream_seed(0, 1, 0)
    assert seeds == [S.derive_stream_seed(*g) for g in grid]  # deterministic
    batch_seeds = [S.derive_batch_seed(seeds[0], k) for k in range(100)]
    assert len(set(batch_seeds)) == 100
    # Training seeds live in [2**63, 2**64), validation seeds below: they can never collide.
    assert all(2**63 <= x < 2**64 for x in seeds + batch_seeds)
    assert (
        ST.SyntheticDataModule(4, val_size=0, seed=123).val_seed == 123 + S.VAL_SEED_OFFSET < 2**63
    )
    with pytest.raises(ValueError, match="worker_id"):
        S.derive_stream_seed(0, 0, -1)


def test_worker_streams_differ() -> None:
    ds = ST.SyntheticTrainStream(8, seed=0)
    b0, b1 = ds.batch_at(0, 0), ds.batch_at(1, 0)
    assert not torch.equal(b0["idx"], b1["idx"])
    assert torch.equal(b0["idx"], ds.batch_at(0, 0)["idx"])


def _decode(batch: S.Batch, tok: S.CharTokenizer) -> list[str]:
    return tok.decode_batch(torch.cat([batch["idx"], batch["targets"][:, -1:]], dim=1))


def test_val_set_fixed() -> None:
    a = ST.SyntheticDataModule(batch_size=32, val_size=100, seed=5)
    b = ST.SyntheticDataModule(batch_size=32, val_size=100, seed=5)
    assert a.val_strings == b.val_strings == S.sample(100, 5 + S.VAL_SEED_OFFSET)
    assert ST.SyntheticDataModule(batch_size=32, val_size=100, seed=6).val_strings != a.val_strings
    assert isinstance(a.tokenizer, S.CharTokenizer)

    batches = list(a.val_dataloader())
    assert [len(x["idx"]) for x in batches] == [32, 32, 32, 4]
    assert [s for x in batches for s in _decode(x, a.tokenizer)] == a.val_strings
    again = list(a.val_dataloader())
    assert all(torch.equal(x["idx"], y["idx"]) for x, y in zip(batches, again, strict=True))


def test_train_batches() -> None:
    dm = ST.SyntheticDataModule(batch_size=16, val_size=8, seed=0, steps_per_epoch=3)
    dl = dm.train_dataloader()
    assert len(dl) == 3
    batches = list(dl)
    assert len(batches) == 3
    for b in batches:
        assert set(b) == {"idx", "targets", "loss_mask"}
        assert b["idx"].shape == b["targets"].shape == b["loss_mask"].shape == (16, S.SEQ_LEN - 1)
        assert b["idx"].dtype == torch.long and b["loss_mask"].dtype == torch.bool
        assert S.check_many(_decode(b, dm.tokenizer))[0].all()
    assert not torch.equal(batches[0]["idx"], batches[1]["idx"])
    assert not torch.equal(batches[1]["idx"], batches[2]["idx"])
    # No overlap with validation.
    train_strings = {s for b in batches for s in _decode(b, dm.tokenizer)}
    assert not train_strings & set(dm.val_strings)

    # A second epoch continues the stream instead of repeating it.
    epoch2 = list(dl)
    assert len(epoch2) == 3
    assert not any(torch.equal(x["idx"], y["idx"]) for x in batches for y in epoch2)
    ds = dl.dataset
    assert isinstance(ds, ST.SyntheticTrainStream)
    assert all(
        torch.equal(b["idx"], ds.batch_at(0, k)["idx"]) for k, b in enumerate(batches + epoch2)
    )

    # Restarting with the same seed replays the same batches; another seed gives others.
    replay = list(
        ST.SyntheticDataModule(
            batch_size=16, val_size=8, seed=0, steps_per_epoch=3
        ).train_dataloader()
    )
    assert all(torch.equal(x["idx"], y["idx"]) for x, y in zip(batches, replay, strict=True))
    other = list(
        ST.SyntheticDataModule(
            batch_size=16, val_size=8, seed=1, steps_per_epoch=3
        ).train_dataloader()
    )
    assert not any(torch.equal(x["idx"], y["idx"]) for x, y in zip(batches, other, strict=True))


def test_endless_stream() -> None:
    ds = ST.SyntheticTrainStream(2, seed=0, steps_per_epoch=None)
    it = iter(ds)
    firsts = [next(it) for _ in range(5)]
    assert len({tuple(b["idx"].flatten().tolist()) for b in firsts}) == 5
    with pytest.raises(TypeError, match="endless"):
        len(ds)


def test_ranks_take_slices_of_one_global_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """With world size 2 each rank reads its half of the global batch that one process with
    twice the per-rank batch would train on."""
    single = ST.SyntheticDataModule(batch_size=16, val_size=0, seed=0, steps_per_epoch=1)
    whole = next(iter(single.train_dataloader()))
    dm = ST.SyntheticDataModule(batch_size=8, val_size=0, seed=0, steps_per_epoch=1)
    halves = []
    for rank in (0, 1):
        monkeypatch.setattr(ST, "distributed_rank_world", lambda r=rank: (r, 2))
        dl = dm.train_dataloader()
        assert isinstance(dl.dataset, ST.SyntheticTrainStream) and dl.dataset.rank == rank
        halves.append(next(iter(dl)))
    assert not torch.equal(halves[0]["idx"], halves[1]["idx"])
    for key in whole:
        assert torch.equal(torch.cat([halves[0][key], halves[1][key]]), whole[key]), key
    assert torch.equal(halves[1]["idx"], dm.train_dataset(rank=1, world_size=2).batch_at(0, 0)["idx"])
    with pytest.raises(ValueError, match="rank must be in 0..world_size-1"):
        ST.SyntheticTrainStream(8, seed=0, rank=2, world_size=2)


def test_multiworker_streams() -> None:
    dm = ST.SyntheticDataModule(batch_size=4, val_size=0, seed=3, steps_per_epoch=5, num_workers=2)
    dl = dm.train_dataloader()
    assert dl.persistent_workers
    ref = dm.train_dataset(rank=0)
    # Workers alternate; worker 0 takes 3 of the 5 batches per epoch, worker 1 takes 2.
    expected_epochs = [
        [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2)],
        [(0, 3), (1, 2), (0, 4), (1, 3), (0, 5)],
    ]
    for expected in expected_epochs:
        got = list(dl)
        assert len(got) == 5
        for b, (w, k) in zip(got, expected, strict=True):
            assert torch.equal(b["idx"], ref.batch_at(w, k)["idx"])
    del dl


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"val_size": -1}, "val_size"),
        ({"seed": -1}, "seed"),
        ({"seed": 2**63}, "seed"),
        ({"steps_per_epoch": 0}, "steps_per_epoch"),
        ({"num_workers": -1}, "num_workers"),
    ],
)
def test_datamodule_validation(kwargs: dict[str, int], match: str) -> None:
    args: dict[str, int] = {"batch_size": 4, **kwargs}
    with pytest.raises(ValueError, match=match):
        ST.SyntheticDataModule(**args)


def test_trainer_smoke() -> None:
    import lightning as L

    seen: list[torch.Tensor] = []

    class Tiny(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.emb = torch.nn.Embedding(29, 29)

        def _loss(self, batch: S.Batch) -> torch.Tensor:
            logits = self.emb(batch["idx"])
            loss = torch.nn.functional.cross_entropy(
                logits.transpose(1, 2), batch["targets"], reduction="none"
            )
            return (loss * batch["loss_mask"]).sum() / batch["loss_mask"].sum()

        def training_step(self, batch: S.Batch, batch_idx: int) -> torch.Tensor:
            seen.append(batch["idx"].clone())
            return self._loss(batch)

        def validation_step(self, batch: S.Batch, batch_idx: int) -> None:
            self.log("val_loss", self._loss(batch))

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = ST.SyntheticDataModule(batch_size=8, val_size=16, seed=0, steps_per_epoch=3)
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Tiny(), datamodule=dm)
    assert trainer.global_step == 6
    assert len({tuple(x.flatten().tolist()) for x in seen}) == 6
    assert "val_loss" in trainer.callback_metrics


def test_no_latent_floor_is_position_plus_noise_entropy() -> None:
    # ln(57)/64: one of 57 block positions per 64-character body; h(1/16) per character.
    assert S.NO_LATENT_FLOOR == math.log(57) / 64 - (1 / 16) * math.log(1 / 16) - (15 / 16) * math.log(15 / 16)
