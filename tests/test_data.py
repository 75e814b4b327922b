"""Token corpora (ftstudy.tasks.corpus) and generated math (ftstudy.tasks.mathgen)."""

from __future__ import annotations

import json
import random
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from ftstudy.tasks import corpus as data
from ftstudy.tasks import mathgen
from ftstudy.tasks.corpus import DataError, Document, TokenDataModule, prepare, read_manifest


def _docs(n: int = 30) -> list[Document]:
    rng = random.Random(0)
    return [Document("text", f"doc{i}", "".join(rng.choice("abc xyz\n") for _ in range(rng.randint(50, 400))) + "é")
            for i in range(n)]


def test_byte_shards_hold_the_documents_in_order(tmp_path: Path) -> None:
    docs = _docs()
    m = prepare(docs, tmp_path / "s", val_percent=20, progress=False, shard_tokens=1000)
    assert m["vocab_size"] == 258 and m["eot_id"] == 256 and m["dtype"] == "uint16"
    split = {json.loads(line)["path"]: json.loads(line)["split"] for line in open(tmp_path / "s" / "sources.jsonl")}
    assert set(split.values()) == {"train", "val"}
    for s in ("train", "val"):
        expect = b"".join(d.text.encode() + b"\x00" for d in docs if split[d.path] == s)
        got = np.concatenate([np.fromfile(tmp_path / "s" / sh["file"], dtype="<u2")
                              for sh in m["splits"][s]["shards"]])
        assert len(m["splits"][s]["shards"]) >= 2 or s == "val"  # 1,000-token shards
        ref = np.frombuffer(expect, dtype=np.uint8).astype(np.uint16)
        ref[ref == 0] = 256  # the b"\x00" placeholders stand for <|endoftext|>
        assert np.array_equal(got, ref)
    # The split is a function of each document's name, not of order.
    m2 = prepare(list(reversed(docs)), tmp_path / "r", val_percent=20, progress=False)
    assert m2["splits"]["val"]["documents"] == m["splits"]["val"]["documents"]


def test_prepare_is_not_redone_and_never_leaves_half_a_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "s"
    prepare(_docs(), out, val_percent=20, progress=False)
    mtime = (out / "manifest.json").stat().st_mtime_ns
    prepare(_docs(), out, val_percent=20, progress=False)
    assert (out / "manifest.json").stat().st_mtime_ns == mtime

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(data._ShardWriter, "close_shard", boom)
    with pytest.raises(KeyboardInterrupt):
        prepare(_docs(5), tmp_path / "t", progress=False)
    assert not (tmp_path / "t").exists()
    assert not list(tmp_path.glob(".t.tmp*"))  # and the temporary folder is gone too
    with pytest.raises(DataError, match="no manifest.json"):
        read_manifest(tmp_path / "t")


def test_bpe_and_user_tokenizers(tmp_path: Path) -> None:
    docs = _docs()
    m = prepare(docs, tmp_path / "bpe", tokenizer="bpe", bpe_vocab=300, val_percent=20, progress=False)
    tok = data.load_tokenizer(tmp_path / "bpe")
    assert m["vocab_size"] == tok.vocab_size <= 300
    assert tok.decode(tok.encode(docs[0].text)) == docs[0].text
    assert len(tok.encode(docs[0].text)) < len(docs[0].text.encode())
    m2 = prepare(docs, tmp_path / "user", tokenizer=str(tmp_path / "bpe" / "tokenizer.json"), val_percent=20,
                 progress=False)
    assert m2["splits"] == m["splits"]
    from tokenizers import Tokenizer, models
    bare = tmp_path / "bare.json"
    bare.write_text(Tokenizer(models.BPE()).to_str())
    with pytest.raises(DataError, match="<\\|endoftext\\|>"):
        prepare(docs, tmp_path / "bad", tokenizer=str(bare), progress=False)
    with pytest.raises(DataError, match="'byte', 'bpe' or a tokenizers JSON"):
        prepare(docs, tmp_path / "bad2", tokenizer="gpt2", progress=False)


def test_bad_tokenizer_file_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a.txt").write_text("hello world\n" * 20)
    (tmp_path / "weights.bin").write_bytes(bytes(range(256)) * 4)
    rc = data.main(["prepare", "--corpus", "text", "--input", str(tmp_path / "a.txt"), "--out", str(tmp_path / "o"),
                    "--tokenizer", str(tmp_path / "weights.bin"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert f"--tokenizer {tmp_path / 'weights.bin'} (a tokenizers JSON file) is not UTF-8 text (byte 0x80" in err
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob(".o.tmp*"))


def test_overwrite_replaces_only_shard_folders(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a.txt").write_text("hello world\n" * 20)
    args = ["prepare", "--corpus", "text", "--input", str(tmp_path / "a.txt"), "--no-progress", "--overwrite",
            "--val-percent", "0"]  # one document: no validation split
    thesis = tmp_path / "mine" / "thesis.tex"
    thesis.parent.mkdir()
    thesis.write_text("\\documentclass{article}")
    (thesis.parent / "manifest.json").write_text('{"format": "my-own"}')  # a manifest, but not ftstudy's
    for extra in (["--overwrite"], []):
        assert data.main([*args, "--out", str(thesis.parent), *extra]) == 2
        err = capsys.readouterr().err
        assert f"{thesis.parent} is not empty and is not an ftstudy shard folder" in err and err.count("\n") == 1
    assert sorted(p.name for p in thesis.parent.iterdir()) == ["manifest.json", "thesis.tex"]
    assert thesis.read_text() == "\\documentclass{article}"
    # A real shard folder is rebuilt.
    shards = tmp_path / "shards"
    prepare(_docs(), shards, val_percent=20, progress=False)
    assert data.main([*args, "--out", str(shards)]) == 0
    m = read_manifest(shards)
    assert m["splits"]["train"]["documents"] + m["splits"]["val"]["documents"] == 1 and "a.txt" in m["command"]


def _cli(corpus: Path, out: Path, *extra: str) -> list[str]:
    return ["prepare", "--corpus", "text", "--input", str(corpus), "--out", str(out), "--no-progress", *extra]


def _corpus(tmp_path: Path) -> Path:
    """A user corpus of 30 files that splits into a training and a validation split (20%)."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    for d in _docs():
        (folder / f"{d.path}.txt").write_text(d.text)
    return folder


def test_shard_folders_are_marked_and_shared(tmp_path: Path) -> None:
    import os
    import stat

    old = os.umask(0o022)
    try:
        m = prepare(_docs(), tmp_path / "s", val_percent=20, progress=False, command="python -m ftstudy.data x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "s").stat().st_mode) == 0o755  # not mkdtemp's 0700
    marker = (tmp_path / "s" / data.SHARDS_MARKER).read_text()
    assert marker.count("\n") == 1
    assert json.loads(marker) == {"kind": "ftstudy-shards", "version": 1, "command": "python -m ftstudy.data x"}
    assert read_manifest(tmp_path / "s") == m


def test_overwrite_deletes_only_the_shard_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corpus, out = _corpus(tmp_path), tmp_path / "s"
    assert data.main(_cli(corpus, out, "--val-percent", "20")) == 0
    (out / "notes.txt").write_text("mine\n")
    (out / "mydata").mkdir()
    before = sorted(p.name for p in out.iterdir())
    manifest = (out / "manifest.json").read_text()
    assert data.main(_cli(corpus, out, "--val-percent", "20", "--overwrite")) == 2
    err = capsys.readouterr().err
    assert f"--out {out} holds 2 name(s) ftstudy does not write in a shard folder (mydata/, notes.txt)" in err
    assert "nothing was deleted" in err and err.count("\n") == 1
    assert sorted(p.name for p in out.iterdir()) == before and (out / "manifest.json").read_text() == manifest
    assert not list(tmp_path.glob(".s.tmp*"))
    assert data.main(_cli(corpus, out, "--val-percent", "20")) == 0  # without --overwrite: prepared, kept
    assert "already prepared" in capsys.readouterr().out
    (out / "notes.txt").unlink()
    (out / "mydata").rmdir()
    assert data.main(_cli(corpus, out, "--val-percent", "30", "--overwrite")) == 0
    assert read_manifest(out)["val_percent"] == 30


def test_a_legacy_shard_folder_is_rebuilt_and_a_foreign_manifest_is_not_enough(tmp_path: Path,
                                                                              capsys: pytest.CaptureFixture) -> None:
    corpus, out = _corpus(tmp_path), tmp_path / "s"
    prepare(_docs(), out, val_percent=20, progress=False)
    (out / data.SHARDS_MARKER).unlink()  # as prepared before the marker existed (data/decide, say)
    assert data.main(_cli(corpus, out, "--val-percent", "20", "--overwrite")) == 0
    assert (out / data.SHARDS_MARKER).exists()
    # A manifest that only says the format, with a file beside it: neither is deleted.
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "manifest.json").write_text(json.dumps({"format": data.FORMAT}))
    (fake / "data.txt").write_text("precious\n")
    assert data.main(_cli(corpus, fake, "--val-percent", "20", "--overwrite")) == 2
    err = capsys.readouterr().err
    assert f"{fake} is not empty and is not an ftstudy shard folder" in err and err.count("\n") == 1
    assert data.main(_cli(corpus, fake, "--val-percent", "20")) == 2  # read as prepared: one line, no traceback
    err = capsys.readouterr().err
    assert f"{fake / 'manifest.json'} is not a complete ftstudy shard manifest" in err and err.count("\n") == 1
    assert sorted(p.name for p in fake.iterdir()) == ["data.txt", "manifest.json"]


@pytest.mark.parametrize("overwrite", [True, False])
def test_a_linked_out_is_refused_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             overwrite: bool) -> None:
    corpus, real = _corpus(tmp_path), tmp_path / "real"
    prepare(_docs(), real, val_percent=20, progress=False)
    before = {p.name: p.stat().st_mtime_ns for p in real.iterdir()}
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    rc = data.main(_cli(corpus, tmp_path / "link", "--val-percent", "20", *(["--overwrite"] if overwrite else [])))
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert f"--out {tmp_path / 'link'} is a symbolic link (to {real}); ftstudy neither writes nor deletes" in err
    assert {p.name: p.stat().st_mtime_ns for p in real.iterdir()} == before and (tmp_path / "link").is_symlink()
    assert not list(tmp_path.glob(".link.tmp*"))


def test_an_empty_or_too_small_corpus_is_refused_at_prepare(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty.txt").write_text("")
    assert data.main(_cli(tmp_path / "empty.txt", tmp_path / "o")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the corpus holds no text" in err and str(tmp_path / "empty.txt") in err
    (tmp_path / "empty.jsonl").write_text(json.dumps({"text": ""}) + "\n")
    assert data.main(_cli(tmp_path / "empty.jsonl", tmp_path / "o")) == 2
    assert "the corpus holds no text" in capsys.readouterr().err
    (tmp_path / "hi.txt").write_text("hi\n")
    assert data.main(_cli(tmp_path / "hi.txt", tmp_path / "o", "--val-percent", "0")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(tmp_path / "hi.txt") in err
    assert "is too small: its training split holds 4 tokens in 1 document(s)" in err and "window of 33" in err
    assert data.main(_cli(tmp_path / "hi.txt", tmp_path / "o", "--val-percent", "0", "--min-seq-len", "2")) == 0
    # A validation split without one window (here: no document drew it) is refused too.
    corpus = _corpus(tmp_path)
    assert data.main(_cli(corpus, tmp_path / "v", "--val-percent", "0.01")) == 2
    err = capsys.readouterr().err
    assert "too small for --val-percent 0.01: its validation split holds 0 tokens in 0 document(s)" in err
    assert not (tmp_path / "v").exists() and not list(tmp_path.glob(".v.tmp*"))
    with pytest.raises(DataError, match="the corpus 'bench' has no documents"):
        prepare([], tmp_path / "n", description={"corpus": "bench"}, progress=False)
    assert data.main(_cli(corpus, tmp_path / "w", "--min-seq-len", "0")) == 2
    assert "--min-seq-len = 0 is not allowed: a positive integer" in capsys.readouterr().err
    # What prepare lets through, training reads (the same window rules).
    m = prepare(_docs(), tmp_path / "ok", val_percent=20, progress=False, min_seq_len=32)
    assert m["splits"]["val"]["tokens"] >= 33
    TokenDataModule(tmp_path / "ok", batch_size=2, seq_len=32, val_size=1)


def test_files_that_are_not_utf8_are_skipped_and_counted_or_refused(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("plain text\n" * 30)
    (corpus / "b.txt").write_bytes("café au lait\n".encode("latin-1") * 30)
    (corpus / "c.jsonl").write_text(json.dumps({"text": "déjà vu " * 10}) + "\n")
    args = ["prepare", "--corpus", "text", "--input", str(corpus), "--no-progress", "--val-percent", "0"]
    assert data.main([*args, "--out", str(tmp_path / "strict"), "--strict"]) == 2
    err = capsys.readouterr().err
    assert f"{(corpus / 'b.txt').as_posix()} is not UTF-8 text (byte 0xe9 at offset 3); --strict refuses" in err
    assert err.count("\n") == 1 and not (tmp_path / "strict").exists()
    assert data.main([*args, "--out", str(tmp_path / "lenient")]) == 0
    assert "warning: skipped 1 file(s) that are not UTF-8" in capsys.readouterr().err
    m = read_manifest(tmp_path / "lenient")
    assert m["splits"]["train"]["documents"] == 2
    assert m["sources"]["text"]["bytes"] == len("plain text\n") * 30 + len("déjà vu ".encode()) * 10
    assert m["skipped_undecodable"]["count"] == 1
    assert [e["path"] for e in m["skipped_undecodable"]["examples"]] == [(corpus / "b.txt").as_posix()]
    assert "skipped_undecodable" not in prepare(_docs(5), tmp_path / "clean", val_percent=0, progress=False)


def test_sources_skip_tests_and_read_wheels(tmp_path: Path) -> None:
    whl = tmp_path / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as z:
        z.writestr("pkg/core.py", "x = 1\n")
        z.writestr("pkg/tests/test_core.py", "assert True\n")
        z.writestr("pkg/test_util.py", "\n")
        z.writestr("pkg/data.txt", "not code\n")
    assert [d.path for d in data.wheel_documents(whl, "pkg")] == ["pkg/core.py"]
    cache = tmp_path / "cache"
    (cache / "wheels").mkdir(parents=True)
    (cache / "wheels" / "sympy-9.9-py3-none-any.whl").write_bytes(whl.read_bytes())
    assert [d.source for d in data.sympy_documents(cache, "9.9")] == ["sympy"]  # cached: no pip call
    lib = tmp_path / "lib"
    for rel in ("os.py", "json/decoder.py", "test/test_os.py", "idlelib/idle_test/x.py", "site-packages/a.py"):
        (lib / rel).parent.mkdir(parents=True, exist_ok=True)
        (lib / rel).write_text("pass\n")
    assert [d.path for d in data.stdlib_documents(lib)] == ["json/decoder.py", "os.py"]


def test_user_corpus_and_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a.txt").write_text("hello world\n" * 50)
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "one doc"}) + "\n" + json.dumps({"text": "two"}) + "\n")
    rc = data.main(["prepare", "--corpus", "text", "--input", str(tmp_path / "a.txt"), str(tmp_path / "b.jsonl"),
                    "--out", str(tmp_path / "o"), "--no-progress", "--val-percent", "0"])
    assert rc == 0
    m = read_manifest(tmp_path / "o")
    assert m["splits"]["train"]["documents"] + m["splits"]["val"]["documents"] == 3
    assert "--corpus text" in m["command"]
    assert data.main(["prepare", "--corpus", "text", "--out", str(tmp_path / "x")]) == 2
    assert "needs --input" in capsys.readouterr().err
    assert data.main(["prepare", "--corpus", "text", "--input", str(tmp_path / "missing*"),
                      "--out", str(tmp_path / "x")]) == 2
    assert "missing*" in capsys.readouterr().err
    (tmp_path / "bad.jsonl").write_text("{not json}\n")
    assert data.main(["prepare", "--corpus", "text", "--input", str(tmp_path / "bad.jsonl"),
                      "--out", str(tmp_path / "y")]) == 2
    assert "bad.jsonl:1" in capsys.readouterr().err


def test_data_module_windows_are_shifted_reproducible_and_resumable(tmp_path: Path) -> None:
    prepare(_docs(40), tmp_path / "s", val_percent=20, progress=False)
    dm = TokenDataModule(tmp_path / "s", batch_size=4, seq_len=16, val_size=5, seed=3, steps_per_epoch=6)
    batches = list(dm.train_dataloader())
    assert len(batches) == 6
    b = batches[0]
    assert b["idx"].shape == (4, 16) and torch.equal(b["idx"][:, 1:], b["targets"][:, :-1])
    again = list(TokenDataModule(tmp_path / "s", batch_size=4, seq_len=16, val_size=5, seed=3,
                                 steps_per_epoch=6).train_dataloader())
    assert all(torch.equal(x["idx"], y["idx"]) for x, y in zip(batches, again))
    resumed = list(TokenDataModule(tmp_path / "s", batch_size=4, seq_len=16, val_size=5, seed=3, steps_per_epoch=2,
                                   start_index=4).train_dataloader())
    assert torch.equal(resumed[0]["idx"], batches[4]["idx"])
    val = list(dm.val_dataloader())
    assert sum(v["idx"].shape[0] for v in val) == 5
    spread = TokenDataModule(tmp_path / "s", batch_size=4, seq_len=16, val_size=3, val_layout="spread")
    first = TokenDataModule(tmp_path / "s", batch_size=4, seq_len=16, val_size=3)
    s_idx, f_idx = next(iter(spread.val_dataloader()))["idx"], next(iter(first.val_dataloader()))["idx"]
    assert torch.equal(s_idx[0], f_idx[0]) and not torch.equal(s_idx[1:], f_idx[1:])
    # DDP: two ranks with half the batch read the two halves of the one-process batch.
    from ftstudy.tasks.corpus import _TrainWindows
    halves = [_TrainWindows(dm.train, 2, 16, 3, rank, 1, 0, world_size=2).batch_at(0) for rank in (0, 1)]
    assert torch.equal(torch.cat([h["idx"] for h in halves]), batches[0]["idx"])
    with pytest.raises(DataError, match="val_layout"):
        TokenDataModule(tmp_path / "s", batch_size=4, seq_len=16, val_size=3, val_layout="random")
    with pytest.raises(DataError, match="vocab_size = 100"):
        TokenDataModule(tmp_path / "s", batch_size=4, seq_len=16, val_size=5, vocab_size=100)
    with pytest.raises(DataError, match="no manifest.json"):
        TokenDataModule(tmp_path, batch_size=4, seq_len=16, val_size=5)


def test_training_on_shards_writes_a_self_contained_checkpoint(tmp_path: Path) -> None:
    from ftstudy.core.checkpoint import load_checkpoint_dict
    from ftstudy.core.config import get_preset
    from ftstudy.run.train import train
    prepare(_docs(60), tmp_path / "s", val_percent=20, progress=False)
    cfg = get_preset("tokens-tiny", {"data_dir": str(tmp_path / "s"), "steps": "6"})
    summary = train(cfg, tmp_path / "run", progress=False)
    assert summary["step"] == 6 and summary["val"]["ce_prior"] > 0
    assert load_checkpoint_dict(tmp_path / "run" / "ckpt" / "model.pt")["tokenizer"] == {"kind": "byte"}


# ---------------------------------------------------------------- mathgen

def test_arithmetic_answers_are_right_and_eval_items_never_train() -> None:
    rng = random.Random(0)
    words = {"plus": "+", "minus": "-", "times": "*"}
    for kind in mathgen.ARITH_KINDS:
        for split in ("train", "eval"):
            p = mathgen.arithmetic(kind, rng, split)
            expr = p.question.removeprefix("What is ").removesuffix("?")
            for w, op in words.items():
                expr = expr.replace(f" {w} ", f" {op} ")
            assert eval(expr) == int(p.target)  # noqa: S307 - our own digits and operators
    eval_q = {mathgen.arithmetic(k, random.Random(f"e{k}"), "eval").question for k in mathgen.ARITH_KINDS}
    train_text = "".join(mathgen.documents("arithmetic", 300, seed=0))
    assert not any(f"Question: {q}\n" in train_text for q in eval_q)
    with pytest.raises(ValueError, match="allowed"):
        mathgen.arithmetic("6da", rng, "train")


def test_word_problems_hold_out_templates_and_operands() -> None:
    rng = random.Random(1)
    for _ in range(200):
        p = mathgen.word_problem(rng, "train")
        assert p.kind in mathgen.TRAIN_TEMPLATES
        assert p.answer.endswith(f"#### {p.target}")
        for a, op, b, c in re.findall(r"<<(\d+)([-+*/])(\d+)=(\d+)>>", p.answer):
            assert eval(f"{a}{op}{b}".replace("/", "//")) == int(c)  # noqa: S307
        if p.kind in ("buy_more", "weekly", "savings", "trips", "class", "two_friends"):  # all numbers drawn
            q_numbers = [int(n) for n in re.findall(r"\d+", p.question)]
            assert not any(n % 10 == mathgen.RESERVED_DIGIT for n in q_numbers)
        e = mathgen.word_problem(rng, "eval")
        assert e.kind in mathgen.EVAL_TEMPLATES
        assert any(int(n) % 10 == mathgen.RESERVED_DIGIT for n in re.findall(r"\d+", e.question))
    assert not set(mathgen.TRAIN_TEMPLATES) & set(mathgen.EVAL_TEMPLATES)
