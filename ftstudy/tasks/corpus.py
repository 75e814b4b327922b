"""Token corpora: build memory-mapped token shards offline, and train on any shards.

``python -m ftstudy.data prepare --corpus code-math --out data/code-math`` builds the
``code-math`` corpus deterministically, with no network except pip's package registry:

- ``stdlib``: the running interpreter's CPython standard library, non-test ``.py`` files;
- ``sympy``: the ``.py`` files (tests excluded) of the pinned sympy wheel, fetched with
  ``pip download`` into a cache folder (``--cache``);
- ``math``: generated arithmetic (GPT-3 format) and GSM8K-style word problems from the
  training templates of :mod:`ftstudy.tasks.mathgen` (held-out material never enters).

``--corpus bench`` and ``--corpus decide`` build the benchmark suites' training problems
(:mod:`ftstudy.tasks.benchgen`; :mod:`ftstudy.tasks.decide`, with ``--seed-prefix`` for the
seed-conditioned baseline's copy); held-out problems never enter.

``--corpus text --input PATH ...`` builds shards from a user's own files (``.txt``, ``.py``,
``.md``…, or ``.jsonl`` with a ``"text"`` field per line).

Files that are not valid UTF-8 are skipped, with a warning, and counted in the manifest
(``skipped_undecodable``: count and the first examples; absent when none was skipped);
``--strict`` refuses them instead, naming the file.

Tokenizers: ``byte`` (default: UTF-8 bytes 0–255, ``<|endoftext|>`` = 256 ends every
document, ``<|pad|>`` = 257; vocabulary 258), ``bpe`` (byte-level BPE trained here with
``tokenizers`` on the training split) or a path to any ``tokenizers`` JSON file that has
an ``<|endoftext|>`` token.

Output folder (the format :class:`TokenDataModule` reads, whoever wrote it)::

    manifest.json            format "ftstudy-shards", dtype, vocab_size, eot_id, tokenizer,
                             splits {train, val: {shards, tokens, documents}}, sources, command
    train-00000.bin …        flat little-endian uint16 (vocab ≤ 65,536) or uint32 token ids
    val-00000.bin …
    tokenizer.json           (BPE or user tokenizer only)
    sources.jsonl            every input document: source, path, sha256, bytes, split
    .ftstudy-shards          the marker: ftstudy made this folder (one JSON line: kind
                             "ftstudy-shards", version, the command)

A document goes to validation when the SHA-256 of its name falls in the ``--val-percent``
class, so the split never depends on file order and never cuts a document in two.  The
folder is written under a temporary name and renamed when complete: an interrupted
``prepare`` leaves nothing that looks finished, and a finished one is not redone.  The
folder gets the usual permissions (``0777`` less the umask), not the temporary folder's 0700.

``--overwrite`` replaces only a folder ftstudy made: one with the marker, or, made before
markers, one with an ftstudy ``manifest.json``; and it deletes only the names above: a
folder holding anything else (an extra file, a folder, a link) is refused with those names
listed, and nothing in it is deleted.  An ``--out`` that is a symbolic link is refused.

A corpus too small to train on is refused here, not at ``train``: no documents, no text in
any, a training split without one window of ``--min-seq-len`` + 1 tokens, or (with
``--val-percent`` above 0) a validation split without one.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import io
import json
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset
from tqdm import tqdm

from ftstudy.io import clear_folder, foreign_entries, marker_state, owned_entry, refuse_link, write_marker
from ftstudy.tasks import distributed_rank_world

__all__ = ["FORMAT", "EOT", "ByteTokenizer", "FileTokenizer", "tokenizer_from_spec", "DataError", "Document",
           "Undecodable", "stdlib_documents", "sympy_documents", "math_documents", "bench_documents", "decide_documents", "text_documents", "prepare",
           "read_manifest", "is_shard_folder", "TokenDataModule", "tokenizer_spec", "load_tokenizer", "main"]

FORMAT = "ftstudy-shards"
FORMAT_VERSION = 1
#: The marker file of a shard folder ftstudy made (ftstudy.io.write_marker; its kind is FORMAT).
SHARDS_MARKER = ".ftstudy-shards"
MANIFEST = "manifest.json"
#: The names ftstudy writes in a shard folder (and the only ones --overwrite deletes), with the shards.
OWN_FILES = (MANIFEST, "tokenizer.json", "sources.jsonl", SHARDS_MARKER)
#: What a shard folder made before markers holds in its manifest.json (every prepare wrote
#: them), and a foreign manifest that merely says format "ftstudy-shards" does not.
LEGACY_MANIFEST_KEYS = ("format", "format_version", "dtype", "vocab_size", "eot_id", "tokenizer", "splits",
                        "sources_sha256", "command")
#: The shortest training sequence a prepared folder must hold one window of (the max_seq_len of
#: tokens-tiny, the smallest token preset); --min-seq-len sets another.
MIN_SEQ_LEN = 32
EOT = "<|endoftext|>"
PAD = "<|pad|>"
SYMPY_VERSION = "1.14.0"  # the version constraints.txt pins (torch depends on it)
DEFAULT_CACHE = Path(os.environ.get("FTSTUDY_CACHE", Path.home() / ".cache" / "ftstudy"))
SHARD_TOKENS = 1 << 27  # tokens per shard file (256 MiB at uint16)
CORPORA = ("code-math", "bench", "decide", "text")
CODE_MATH_SOURCES = ("stdlib", "sympy", "math")
MAX_SKIPPED_EXAMPLES = 10  # undecodable files named in the manifest (all are counted)


class DataError(ValueError):
    """Bad corpus input or a shard folder that is missing, incomplete or inconsistent."""


# ---------------------------------------------------------------- tokenizers

class ByteTokenizer:
    """UTF-8 bytes as tokens 0–255, then ``<|endoftext|>`` = 256 and ``<|pad|>`` = 257."""

    vocab_size = 258
    eot_id = 256
    pad_id = 257

    def spec(self) -> dict[str, Any]:
        return {"kind": "byte"}

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_np(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8)

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")


class FileTokenizer:
    """Any ``tokenizers`` JSON tokenizer with an ``<|endoftext|>`` token."""

    def __init__(self, json_text: str, name: str = "tokenizer.json") -> None:
        from tokenizers import Tokenizer
        try:
            self.tok = Tokenizer.from_str(json_text)
        except Exception as e:  # tokenizers raises plain Exception subclasses
            raise DataError(f"{name} is not a valid tokenizers JSON file: {e}") from e
        eot = self.tok.token_to_id(EOT)
        if eot is None:
            raise DataError(f"{name} has no {EOT!r} token; add it as a special token (it ends every document)")
        self.json_text = json_text
        self.eot_id = int(eot)
        pad = self.tok.token_to_id(PAD)
        self.pad_id = int(pad) if pad is not None else self.eot_id
        self.vocab_size = int(self.tok.get_vocab_size(with_added_tokens=True))

    def spec(self) -> dict[str, Any]:
        return {"kind": "file", "json": self.json_text}

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_np(self, text: str) -> np.ndarray:
        return np.asarray(self.encode(text), dtype=np.int64)

    def decode(self, ids: Iterable[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=True)


def tokenizer_from_spec(spec: dict[str, Any]) -> ByteTokenizer | FileTokenizer:
    """The tokenizer a manifest or checkpoint describes."""
    kind = spec.get("kind") if isinstance(spec, dict) else None
    if kind == "byte":
        return ByteTokenizer()
    if kind == "file" and isinstance(spec.get("json"), str):
        return FileTokenizer(spec["json"])
    raise DataError(f"unknown tokenizer spec {str(spec)[:80]!r}; allowed kinds: 'byte', 'file' (with its JSON)")


def train_bpe(texts: Iterable[str], vocab_size: int) -> FileTokenizer:
    """Byte-level BPE trained locally (``tokenizers``), with ``<|endoftext|>`` and ``<|pad|>``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    if vocab_size < 258:
        raise DataError(f"--bpe-vocab {vocab_size} is too small: at least 258 (256 bytes and 2 specials)")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT, PAD], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return FileTokenizer(tok.to_str())


# ---------------------------------------------------------------- sources

@dataclass(frozen=True)
class Document:
    source: str
    path: str  # stable name: relative path inside its source
    text: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Undecodable:
    """A corpus file that is not valid UTF-8: skipped and counted, or refused with ``strict``."""

    source: str
    path: str
    reason: str


def _utf8(data: bytes, what: str) -> str:
    """``data`` as UTF-8 text, or a DataError naming ``what`` and the first bad byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{what} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start})") from None


def _document(source: str, path: str, data: bytes) -> Document | Undecodable:
    try:
        return Document(source, path, _utf8(data, f"{source} file {path}"))
    except DataError as e:
        return Undecodable(source, path, str(e))


def _is_test_path(parts: Sequence[str]) -> bool:
    name = parts[-1]
    return (any(p in ("test", "tests", "idle_test", "testing") for p in parts[:-1])
            or name.startswith("test_") or name.endswith("_test.py") or name == "conftest.py")


def stdlib_documents(root: Path | None = None) -> Iterator[Document | Undecodable]:
    """Non-test .py files of the running interpreter's standard library, in sorted order."""
    root = Path(root or sysconfig.get_paths()["stdlib"])
    skip_dirs = {"site-packages", "dist-packages", "__pycache__"}
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in skip_dirs)
        for f in filenames:
            if f.endswith(".py"):
                rel = Path(dirpath, f).relative_to(root)
                if not _is_test_path(rel.parts):
                    files.append(rel)
    for rel in sorted(files):
        yield _document("stdlib", rel.as_posix(), (root / rel).read_bytes())


def fetch_wheel(package: str, version: str, cache: Path) -> Path:
    """The pinned wheel of a pure-Python package, from the cache or ``pip download``."""
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    pattern = f"{package}-{version}-*.whl"
    found = sorted(cache.glob(pattern))
    if not found:
        cmd = [sys.executable, "-m", "pip", "download", f"{package}=={version}", "--no-deps", "--only-binary=:all:",
               "--dest", str(cache), "--quiet"]
        r = subprocess.run(cmd, capture_output=True, text=True)
        found = sorted(cache.glob(pattern))
        if r.returncode != 0 or not found:
            raise DataError(f"could not fetch {package}=={version} with `{shlex.join(cmd)}`: "
                            f"{(r.stderr or r.stdout).strip()[-400:]}")
    return found[0]


def wheel_documents(wheel: Path, source: str) -> Iterator[Document | Undecodable]:
    """Non-test .py files inside a wheel, in sorted order."""
    try:
        zf = zipfile.ZipFile(wheel)
    except (zipfile.BadZipFile, OSError) as e:
        raise DataError(f"{wheel} is not a readable wheel: {e}") from e
    with zf:
        names = sorted(n for n in zf.namelist() if n.endswith(".py") and not _is_test_path(n.split("/")))
        for n in names:
            yield _document(source, n, zf.read(n))


def sympy_documents(cache: Path = DEFAULT_CACHE, version: str = SYMPY_VERSION) -> Iterator[Document | Undecodable]:
    yield from wheel_documents(fetch_wheel("sympy", version, Path(cache) / "wheels"), "sympy")


def math_documents(n_arithmetic: int, n_word: int, seed: int = 0) -> Iterator[Document]:
    """Generated training math (ftstudy.tasks.mathgen, training split only)."""
    from ftstudy.tasks import mathgen
    for kind, n in (("arithmetic", n_arithmetic), ("word_problems", n_word)):
        for i, text in enumerate(mathgen.documents(kind, n, seed)):
            yield Document("math", f"{kind}/{i:06d}", text)


def bench_documents(n: int, seed: int = 0) -> Iterator[Document]:
    """The benchmark suite's training problems (ftstudy.tasks.benchgen, training split only),
    one problem per document."""
    from ftstudy.tasks import benchgen
    for i, p in enumerate(benchgen.training_documents(n, seed)):
        yield Document("bench", f"{p.family}/{i:07d}", benchgen.document(p))


def decide_documents(n: int, seed: int = 0, prefixed: bool = False) -> Iterator[Document]:
    """The decision benchmark's training documents (ftstudy.tasks.decide: route problems of the
    training split, the creativity tasks' edges and examples); ``prefixed``: each one after a
    random seed-conditioning prefix (the seed-conditioned baseline's corpus)."""
    from ftstudy.tasks import decide
    for i, (family, text) in enumerate(decide.training_documents(n, seed, prefixed)):
        yield Document("decide", f"{family}/{i:07d}", text)


def text_documents(inputs: Sequence[str]) -> Iterator[Document | Undecodable]:
    """A user's corpus: files, folders (every file inside) or globs; .jsonl lines need "text"."""
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files.extend(sorted(q for q in p.rglob("*") if q.is_file()))
        elif p.is_file():
            files.append(p)
        else:
            matched = sorted(Path(m) for m in glob.glob(item, recursive=True) if Path(m).is_file())
            if not matched:
                raise DataError(f"--input {item!r} is not a file, a folder or a glob that matches files")
            files.extend(matched)
    if not files:
        raise DataError(f"--input {list(inputs)} holds no files")
    for f in files:
        doc = _document("text", f.as_posix(), f.read_bytes())
        if f.suffix != ".jsonl" or isinstance(doc, Undecodable):
            yield doc
        else:
            for i, line in enumerate(doc.text.splitlines()):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                    text = obj["text"]
                except (json.JSONDecodeError, KeyError, TypeError) as e:
                    raise DataError(f"{f}:{i + 1}: each .jsonl line must be a JSON object with a "
                                    f"string 'text' field ({type(e).__name__})") from e
                yield Document("text", f"{f.as_posix()}#{i}", str(text))


def _split_of(doc: Document, val_percent: float) -> str:
    h = int.from_bytes(hashlib.sha256(f"{doc.source}/{doc.path}".encode()).digest()[:8], "little")
    return "val" if (h % 10_000) < val_percent * 100 else "train"


# ---------------------------------------------------------------- shards

class _ShardWriter:
    def __init__(self, folder: Path, split: str, dtype: np.dtype, shard_tokens: int) -> None:
        self.folder, self.split, self.dtype, self.cap = folder, split, dtype, shard_tokens
        self.shards: list[dict[str, Any]] = []
        self.f: io.BufferedWriter | None = None
        self.n_in_shard = 0
        self.tokens = 0
        self.documents = 0

    def _open(self) -> None:
        name = f"{self.split}-{len(self.shards):05d}.bin"
        self.f = open(self.folder / name, "wb")
        self.shards.append({"file": name, "tokens": 0})
        self.n_in_shard = 0

    def write(self, ids: np.ndarray) -> None:
        ids = ids.astype(self.dtype, copy=False)
        self.documents += 1
        while len(ids):
            if self.f is None or self.n_in_shard >= self.cap:
                self.close_shard()
                self._open()
            take = ids[: self.cap - self.n_in_shard]
            assert self.f is not None
            self.f.write(take.astype("<" + self.dtype.str[1:], copy=False).tobytes())
            self.n_in_shard += len(take)
            self.shards[-1]["tokens"] += len(take)
            self.tokens += len(take)
            ids = ids[len(take):]

    def close_shard(self) -> None:
        if self.f is not None:
            self.f.flush()
            os.fsync(self.f.fileno())
            self.f.close()
            self.f = None

    def summary(self) -> dict[str, Any]:
        return {"shards": self.shards, "tokens": self.tokens, "documents": self.documents}


def _gather(corpus: str, args: argparse.Namespace) -> Iterator[Document | Undecodable]:
    if corpus == "text":
        yield from text_documents(args.input)
        return
    if corpus == "bench":
        yield from bench_documents(args.bench_docs, args.seed)
        return
    if corpus == "decide":
        yield from decide_documents(args.decide_docs, args.seed, args.seed_prefix)
        return
    sources = args.sources
    if "stdlib" in sources:
        yield from stdlib_documents()
    if "sympy" in sources:
        yield from sympy_documents(args.cache, args.sympy_version)
    if "math" in sources:
        yield from math_documents(args.math_arithmetic_docs, args.math_word_docs, args.seed)


def is_shard_folder(folder: Path | str) -> bool:
    """Whether ``folder`` holds an ftstudy shard folder's manifest.json (format "ftstudy-shards")."""
    return _manifest_json(Path(folder)) is not None


def _manifest_json(folder: Path) -> dict[str, Any] | None:
    try:
        m = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) and m.get("format") == FORMAT else None


def _is_shard_name(name: str) -> bool:
    split, dash, rest = name.partition("-")
    return split in ("train", "val") and bool(dash) and rest.endswith(".bin") and rest[:-4].isdigit() \
        and len(rest) >= 9


def _owns(entry: Path) -> bool:
    """Whether ``entry``, a name at the top of a shard folder, is one ftstudy writes there."""
    return owned_entry(entry, OWN_FILES, match=_is_shard_name)


def _made_by_ftstudy(folder: Path) -> bool:
    """A shard folder ftstudy made: its marker, or, without one (a legacy folder, made before
    markers), a complete ftstudy manifest.json (:data:`LEGACY_MANIFEST_KEYS`).  A marker of
    another kind, or unreadable, marks nothing."""
    marker = marker_state(folder, SHARDS_MARKER, FORMAT)
    if marker != "absent":
        return marker == "ours"
    m = _manifest_json(folder)
    return m is not None and all(k in m for k in LEGACY_MANIFEST_KEYS)


def _check_out(out: Path) -> None:
    """DataError unless ``out`` is missing, an empty folder or a folder ftstudy made; never a link."""
    refuse_link(out, "--out", DataError)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} exists and is not a folder; pick another --out")
    if out.is_dir() and any(out.iterdir()) and not _made_by_ftstudy(out):
        raise DataError(f"{out} is not empty and is not an ftstudy shard folder (neither ftstudy's marker "
                        f"{SHARDS_MARKER} nor a manifest.json of format {FORMAT!r}); ftstudy neither writes into "
                        f"nor deletes it (--overwrite included): pick another --out")


def _check_replaceable(out: Path) -> None:
    """DataError unless ``out`` is missing, empty, or a folder ftstudy made that holds only
    names it writes (the others are listed: --overwrite deletes nothing then)."""
    _check_out(out)
    foreign = foreign_entries(out, _owns) if out.is_dir() else []
    if foreign:
        shown = ", ".join(foreign[:8]) + (f" and {len(foreign) - 8} more" if len(foreign) > 8 else "")
        raise DataError(f"--out {out} holds {len(foreign)} name(s) ftstudy does not write in a shard folder "
                        f"({shown}); ftstudy deletes only its own files, so nothing was deleted (--overwrite "
                        f"included): move them out, or pick another --out")


def _umask() -> int:
    """The process's umask: read from /proc where there is one (no window with another mask
    set), else set and put back."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _inputs(docs: Sequence[Document]) -> str:
    """The corpus's inputs as an error names them: its first documents (source and name)."""
    shown = ", ".join(f"{d.source} {d.path}" for d in docs[:3])
    return shown + (f" and {len(docs) - 3} more" if len(docs) > 3 else "")


def _check_size(docs: Sequence[Document], splits: dict[str, Any], val_percent: float, min_seq_len: int) -> None:
    """DataError when the prepared splits cannot train a model of ``min_seq_len`` tokens: the
    training split needs more than one window of ``min_seq_len + 1`` tokens, the validation
    split (unless ``val_percent`` is 0) one window (the rules of :class:`TokenDataModule`)."""
    window = min_seq_len + 1
    train, val = splits["train"], splits["val"]
    if train["tokens"] <= window:
        raise DataError(f"the corpus ({_inputs(docs)}) is too small: its training split holds {train['tokens']} "
                        f"tokens in {train['documents']} document(s), and training needs more than one window of "
                        f"{window} (--min-seq-len {min_seq_len} + 1); add text, or lower --min-seq-len")
    if val_percent > 0 and val["tokens"] < window:
        raise DataError(f"the corpus ({_inputs(docs)}) is too small for --val-percent {val_percent:g}: its "
                        f"validation split holds {val['tokens']} tokens in {val['documents']} document(s), fewer "
                        f"than one window of {window} (--min-seq-len {min_seq_len} + 1); whole documents go to one "
                        f"split: add documents or raise --val-percent")


def _load_tokenizer(tokenizer: str, docs: list[Document], split: list[str],
                    bpe_vocab: int) -> tuple[ByteTokenizer | FileTokenizer, dict[str, Any]]:
    """The tokenizer ``--tokenizer`` names (BPE: trained on the training split) and its spec."""
    if tokenizer == "byte":
        return ByteTokenizer(), {"kind": "byte"}
    if tokenizer == "bpe":
        tok = train_bpe((d.text for d, s in zip(docs, split) if s == "train"), bpe_vocab)
        spec = {"kind": "file", "file": "tokenizer.json", "trained": f"byte-level BPE, vocab {bpe_vocab}"}
    else:
        path = Path(tokenizer)
        if not path.is_file():
            raise DataError(f"--tokenizer {tokenizer!r} is not allowed: 'byte', 'bpe' or a tokenizers JSON file")
        try:
            text = _utf8(path.read_bytes(), f"--tokenizer {path} (a tokenizers JSON file)")
        except OSError as e:
            raise DataError(f"--tokenizer {path} cannot be read: {e}") from e
        tok = FileTokenizer(text, name=str(path))
        spec = {"kind": "file", "file": "tokenizer.json", "from": str(path)}
    return tok, {**spec, "sha256": hashlib.sha256(tok.json_text.encode()).hexdigest()}


def _read_documents(documents: Iterable[Document | Undecodable], strict: bool,
                    progress: bool) -> tuple[list[Document], list[Undecodable]]:
    """The decodable documents and the skipped files (DataError for the first with ``strict``)."""
    docs: list[Document] = []
    skipped: list[Undecodable] = []
    for d in tqdm(documents, desc="reading documents", unit="doc", disable=not progress):
        if isinstance(d, Document):
            docs.append(d)
        elif strict:
            raise DataError(f"{d.reason}; --strict refuses files that are not UTF-8 (without it they are "
                            f"skipped and counted in manifest.json)")
        else:
            skipped.append(d)
    if skipped:
        print(f"[ftstudy.tasks.corpus] warning: skipped {len(skipped)} file(s) that are not UTF-8 text, e.g. "
              f"{skipped[0].path}; counted in manifest.json under skipped_undecodable (--strict refuses them)",
              file=sys.stderr, flush=True)
    return docs, skipped


def prepare(documents: Iterable[Document | Undecodable], out: Path, tokenizer: str = "byte", *,
            bpe_vocab: int = 4096, val_percent: float = 1.0, shard_tokens: int = SHARD_TOKENS,
            overwrite: bool = False, strict: bool = False, command: str = "",
            description: dict[str, Any] | None = None, progress: bool = True,
            min_seq_len: int = MIN_SEQ_LEN) -> dict[str, Any]:
    """Tokenize documents into ``out`` (see the module docstring); returns the manifest.

    ``min_seq_len``: the shortest training sequence the folder must hold a window of (a
    smaller corpus is refused here rather than at ``train``)."""
    out = Path(out)
    if not 0 <= val_percent < 100:
        raise DataError(f"val_percent = {val_percent} is not allowed: 0 <= val_percent < 100")
    if min_seq_len < 1:
        raise DataError(f"--min-seq-len = {min_seq_len} is not allowed: a positive integer")
    refuse_link(out, "--out", DataError)
    if is_shard_folder(out) and not overwrite:  # reads only
        print(f"[ftstudy.tasks.corpus] {out} is already prepared; pass --overwrite to rebuild it")
        return read_manifest(out)
    _check_out(out)
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise DataError(f"{out} holds an unfinished ftstudy shard folder (no {MANIFEST}); pass --overwrite "
                        f"to rebuild it")
    _check_replaceable(out)  # before any work: --overwrite that could not delete all is refused now
    docs, skipped = _read_documents(documents, strict, progress)
    if not docs:
        corpus = (description or {}).get("corpus")
        raise DataError(f"the corpus{f' {corpus!r}' if corpus else ''} has no documents; nothing to prepare")
    if not any(d.text for d in docs):
        raise DataError(f"the corpus holds no text: its {len(docs)} document(s) are all empty ({_inputs(docs)})")
    split = [_split_of(d, val_percent) for d in docs]
    tok, spec = _load_tokenizer(tokenizer, docs, split, bpe_vocab)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp{os.getpid()}-", dir=out.parent))
    try:
        tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it private (0700); a shard folder is meant to be shared
        manifest = _write_shards(docs, split, tok, spec, tmp, shard_tokens, progress)
        _check_size(docs, manifest["splits"], val_percent, min_seq_len)
        manifest.update(val_percent=val_percent, python=sys.version.split()[0], description=description or {},
                        command=command)
        if skipped:
            manifest["skipped_undecodable"] = {
                "count": len(skipped),
                "examples": [{"source": d.source, "path": d.path, "reason": d.reason}
                             for d in skipped[:MAX_SKIPPED_EXAMPLES]]}
        write_marker(tmp, SHARDS_MARKER, FORMAT, command or None)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        _check_replaceable(out)  # again: the folder may have changed while we tokenized
        if out.exists():
            # Only the names ftstudy writes (the manifest first, the marker last), all or none.
            clear_folder(out, _owns, what="--out", error=DataError, first=(MANIFEST,), last=(SHARDS_MARKER,),
                         hint="move them out, or pick another --out")
        try:
            os.replace(tmp, out)  # onto a missing or an empty folder only
        except OSError as e:
            raise DataError(f"cannot move the prepared shards into --out {out}: {e.strerror} (did something "
                            f"appear in it meanwhile?); pick another --out") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # made above by this process, never anyone else's
        raise
    return manifest


def _write_shards(docs: list[Document], split: list[str], tok: ByteTokenizer | FileTokenizer,
                  spec: dict[str, Any], tmp: Path, shard_tokens: int, progress: bool) -> dict[str, Any]:
    """Tokenize into shards in ``tmp``; the manifest's fields that describe them."""
    if spec["kind"] == "file":
        (tmp / "tokenizer.json").write_text(tok.json_text)  # type: ignore[union-attr]
    dtype = np.dtype(np.uint16) if tok.vocab_size <= 1 << 16 else np.dtype(np.uint32)
    writers = {s: _ShardWriter(tmp, s, dtype, shard_tokens) for s in ("train", "val")}
    eot = np.array([tok.eot_id], dtype=np.int64)
    with open(tmp / "sources.jsonl", "w") as src:
        for d, s in tqdm(list(zip(docs, split)), desc="tokenizing", unit="doc", disable=not progress):
            ids = tok.encode_np(d.text)
            writers[s].write(np.concatenate([ids.astype(np.int64), eot]))
            src.write(json.dumps({"source": d.source, "path": d.path, "sha256": d.sha256,
                                  "bytes": len(d.text.encode("utf-8")), "tokens": int(len(ids)) + 1,
                                  "split": s}) + "\n")
    for w in writers.values():
        w.close_shard()
    by_source: dict[str, dict[str, int]] = {}
    for d, s in zip(docs, split):
        e = by_source.setdefault(d.source, {"documents": 0, "bytes": 0, "val_documents": 0})
        e["documents"] += 1
        e["bytes"] += len(d.text.encode("utf-8"))
        e["val_documents"] += s == "val"
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "dtype": dtype.name, "vocab_size": tok.vocab_size,
        "eot_id": tok.eot_id, "pad_id": tok.pad_id, "tokenizer": spec,
        "splits": {s: w.summary() for s, w in writers.items()}, "sources": by_source,
        "sources_sha256": hashlib.sha256((tmp / "sources.jsonl").read_bytes()).hexdigest(),
    }


def read_manifest(folder: Path | str) -> dict[str, Any]:
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise DataError(f"{folder} has no manifest.json: not a prepared shard folder "
                        f"(make one with `python -m ftstudy.data prepare ... --out {folder}`)")
    m = _manifest_json(folder)
    if m is None:
        raise DataError(f"{path} is not an ftstudy shard manifest (JSON with format {FORMAT!r})")
    try:
        shards = [(folder / sh["file"], np.dtype(m["dtype"]).itemsize * sh["tokens"])
                  for s in ("train", "val") for sh in m["splits"][s]["shards"]]
    except (KeyError, TypeError, ValueError) as e:  # a manifest that only says the format
        raise DataError(f"{path} is not a complete ftstudy shard manifest ({type(e).__name__} {e} reading its "
                        f"splits, shards and dtype); prepare the folder again") from e
    for f, size in shards:
        if not f.is_file() or f.stat().st_size != size:
            raise DataError(f"shard {f} is missing or not {size} bytes as the manifest says")
    return m


def tokenizer_spec(folder: Path | str) -> dict[str, Any]:
    """A self-contained tokenizer spec (file tokenizers inlined) for a shard folder."""
    folder = Path(folder)
    spec = read_manifest(folder)["tokenizer"]
    if spec.get("kind") == "file":
        return {"kind": "file", "json": (folder / spec["file"]).read_text()}
    return dict(spec)


def load_tokenizer(folder: Path | str) -> ByteTokenizer | FileTokenizer:
    return tokenizer_from_spec(tokenizer_spec(folder))


# ---------------------------------------------------------------- training data

class _Shards:
    """Memory-mapped shards of one split, addressed as one flat token array."""

    def __init__(self, folder: Path, manifest: dict[str, Any], split: str) -> None:
        self.arrays = [np.memmap(folder / sh["file"], dtype=np.dtype(manifest["dtype"]).newbyteorder("<"), mode="r")
                       for sh in manifest["splits"][split]["shards"] if sh["tokens"] > 0]
        self.offsets = np.cumsum([0] + [len(a) for a in self.arrays])
        self.total = int(self.offsets[-1])

    def window(self, start: int, length: int) -> np.ndarray:
        out = np.empty(length, dtype=np.int64)
        pos, filled = start, 0
        while filled < length:
            i = int(np.searchsorted(self.offsets, pos, side="right") - 1)
            a = self.arrays[i]
            off = pos - int(self.offsets[i])
            take = min(length - filled, len(a) - off)
            out[filled:filled + take] = a[off:off + take]
            filled += take
            pos += take
        return out


def _batch(windows: np.ndarray) -> dict[str, torch.Tensor]:
    t = torch.from_numpy(windows)
    return {"idx": t[:, :-1].contiguous(), "targets": t[:, 1:].contiguous(),
            "loss_mask": torch.ones(t.shape[0], t.shape[1] - 1, dtype=torch.bool)}


class _TrainWindows(IterableDataset):
    """Random windows of seq_len + 1 tokens.  Step ``i`` draws the starts of one global batch
    of ``batch_size * world_size`` windows from (seed, i); rank ``r`` reads its slice, so the
    global batch does not depend on the number of ranks."""

    def __init__(self, shards: _Shards, batch_size: int, seq_len: int, seed: int, rank: int,
                 steps_per_epoch: int, start_index: int, world_size: int = 1) -> None:
        self.shards, self.batch_size, self.seq_len = shards, batch_size, seq_len
        self.seed, self.rank, self.world_size, self.steps_per_epoch = seed, rank, world_size, steps_per_epoch
        self.next_index = start_index

    def batch_at(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, 0, index, 0x544F4B])
        starts = rng.integers(0, self.shards.total - self.seq_len - 1, size=self.batch_size * self.world_size)
        mine = starts[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
        return _batch(np.stack([self.shards.window(int(s), self.seq_len + 1) for s in mine]))

    def __len__(self) -> int:
        return self.steps_per_epoch

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for _ in range(self.steps_per_epoch):
            i = self.next_index
            self.next_index += 1
            yield self.batch_at(i)


class TokenDataModule(L.LightningDataModule):
    """Training and validation batches from a prepared shard folder.

    Training: ``batch_size`` random windows of ``seq_len + 1`` tokens per step (documents
    are joined by ``<|endoftext|>``; a window may span two), reproducible from the seed and
    the step index, so a resumed run sees exactly the batches an uninterrupted one would.
    Validation: the first ``val_size`` non-overlapping windows of the validation split.
    """

    def __init__(self, data_dir: Path | str, batch_size: int, seq_len: int, val_size: int, seed: int = 0,
                 steps_per_epoch: int = 1000, start_index: int = 0, vocab_size: int | None = None,
                 val_layout: str = "first") -> None:
        super().__init__()
        self.folder = Path(data_dir)
        self.manifest = read_manifest(self.folder)
        if vocab_size is not None and vocab_size < self.manifest["vocab_size"]:
            raise DataError(f"model vocab_size = {vocab_size} is smaller than the data's vocabulary "
                            f"({self.manifest['vocab_size']}, {self.folder}); set vocab_size >= that")
        self.batch_size, self.seq_len, self.seed = batch_size, seq_len, seed
        self.steps_per_epoch, self.start_index = steps_per_epoch, start_index
        self.train = _Shards(self.folder, self.manifest, "train")
        self.val = _Shards(self.folder, self.manifest, "val")
        if self.train.total <= seq_len + 1:
            raise DataError(f"{self.folder}: the training split has {self.train.total} tokens, "
                            f"fewer than one window of {seq_len + 1}")
        n_val = self.val.total // (seq_len + 1)
        if n_val < 1:
            raise DataError(f"{self.folder}: the validation split has {self.val.total} tokens, fewer than one "
                            f"window of {seq_len + 1}; raise --val-percent")
        self.val_size = min(val_size, n_val)
        if val_layout not in ("first", "spread"):
            raise DataError(f"val_layout = {val_layout!r} is not allowed; allowed: 'first', 'spread'")
        # "first": the split's first windows (what training validates on); "spread": windows
        # evenly spaced over the whole split (every source in it, for evaluation).
        stride = n_val // self.val_size if val_layout == "spread" else 1
        w = np.stack([self.val.window(i * stride * (seq_len + 1), seq_len + 1) for i in range(self.val_size)])
        self._val_batches = [_batch(w[i:i + batch_size]) for i in range(0, self.val_size, batch_size)]

    def train_dataloader(self) -> DataLoader:
        rank, world = distributed_rank_world()
        ds = _TrainWindows(self.train, self.batch_size, self.seq_len, self.seed, rank, self.steps_per_epoch,
                           self.start_index, world_size=world)
        return DataLoader(ds, batch_size=None)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self._val_batches, batch_size=None, shuffle=False)  # type: ignore[arg-type]


# ---------------------------------------------------------------- CLI

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ftstudy.data", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("prepare", help="build token shards from a corpus")
    q.add_argument("--corpus", required=True, choices=CORPORA)
    q.add_argument("--out", type=Path, required=True, help="output folder (created)")
    q.add_argument("--tokenizer", default="byte", help="'byte' (default), 'bpe', or a tokenizers JSON file")
    q.add_argument("--bpe-vocab", type=int, default=4096, help="vocabulary of a trained BPE (default 4096)")
    q.add_argument("--input", nargs="+", default=[], help="--corpus text: files, folders or globs")
    q.add_argument("--sources", nargs="+", default=list(CODE_MATH_SOURCES), choices=CODE_MATH_SOURCES,
                   help="--corpus code-math: which parts (default all)")
    q.add_argument("--math-arithmetic-docs", type=int, default=4000,
                   help="generated arithmetic documents, 40 problems each (default 4000, ~7.5 MB)")
    q.add_argument("--math-word-docs", type=int, default=3000,
                   help="generated word-problem documents, 10 problems each (default 3000, ~6.3 MB)")
    q.add_argument("--bench-docs", type=int, default=100_000,
                   help="--corpus bench: generated training problems, one per document (default 100000, ~7.7 MB)")
    q.add_argument("--decide-docs", type=int, default=200_000,
                   help="--corpus decide: generated training documents (default 200000)")
    q.add_argument("--seed-prefix", action="store_true",
                   help="--corpus decide: every document after a random seed-conditioning prefix '#abcd\\n' "
                        "(the seed-conditioned baseline's corpus)")
    q.add_argument("--sympy-version", default=SYMPY_VERSION)
    q.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where pip downloads wheels")
    q.add_argument("--val-percent", type=float, default=1.0, help="percent of documents in validation")
    q.add_argument("--seed", type=int, default=0, help="seed of the generated math")
    q.add_argument("--shard-tokens", type=int, default=SHARD_TOKENS)
    q.add_argument("--overwrite", action="store_true",
                   help="rebuild an existing shard folder (only one ftstudy made, and only if it holds nothing "
                        "but the files ftstudy writes)")
    q.add_argument("--min-seq-len", type=int, default=MIN_SEQ_LEN,
                   help=f"the shortest training sequence (model max_seq_len) the corpus must hold one window of, "
                        f"in each split (default {MIN_SEQ_LEN}); a smaller corpus is refused")
    q.add_argument("--strict", action="store_true",
                   help="refuse input files that are not UTF-8 text (default: skip them, counted in the manifest)")
    q.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    try:
        if args.corpus == "text" and not args.input:
            raise DataError("--corpus text needs --input PATH ...")
        if isinstance(args.seed, bool) or not 0 <= args.seed <= 2**32 - 1:
            raise DataError(f"--seed = {args.seed} is not allowed: an integer 0 … {2**32 - 1}")
        for name in ("math_arithmetic_docs", "math_word_docs", "bench_docs", "decide_docs"):
            if getattr(args, name) < 0:
                raise DataError(f"--{name.replace('_', '-')} = {getattr(args, name)} must be >= 0")
        if args.shard_tokens < 1:
            raise DataError(f"--shard-tokens = {args.shard_tokens} must be >= 1")
        desc = {"corpus": args.corpus}
        if args.corpus == "bench":
            from ftstudy.tasks import benchgen
            desc.update(seed=args.seed, bench_docs=args.bench_docs, mix=benchgen.MIX,
                        heldout_mod=benchgen.HELDOUT_MOD)
        if args.seed_prefix and args.corpus != "decide":
            raise DataError(f"--seed-prefix is only allowed with --corpus decide, not --corpus {args.corpus}")
        if args.corpus == "decide":
            from ftstudy.tasks import decide
            desc.update(seed=args.seed, decide_docs=args.decide_docs, mix=decide.MIX, seed_prefix=args.seed_prefix,
                        route_heldout_mod=decide.routegen.HELDOUT_MOD)
        if args.corpus == "code-math":
            desc.update(sources=args.sources, seed=args.seed, stdlib=sysconfig.get_paths()["stdlib"],
                        math_arithmetic_docs=args.math_arithmetic_docs, math_word_docs=args.math_word_docs)
            if "sympy" in args.sources:
                wheel = fetch_wheel("sympy", args.sympy_version, Path(args.cache) / "wheels")
                desc["sympy"] = {"version": args.sympy_version, "wheel": wheel.name,
                                 "sha256": hashlib.sha256(wheel.read_bytes()).hexdigest()}
        m = prepare(_gather(args.corpus, args), args.out, args.tokenizer, bpe_vocab=args.bpe_vocab,
                    val_percent=args.val_percent, shard_tokens=args.shard_tokens, overwrite=args.overwrite,
                    strict=args.strict, command="python -m ftstudy.data " + shlex.join(argv), description=desc,
                    progress=not args.no_progress, min_seq_len=args.min_seq_len)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    sp = m["splits"]
    print(f"[ftstudy.tasks.corpus] {args.out}: train {sp['train']['tokens']:,} tokens in {sp['train']['documents']:,} "
          f"documents, val {sp['val']['tokens']:,} tokens in {sp['val']['documents']:,}; vocab {m['vocab_size']}")
    for s, e in sorted(m["sources"].items()):
        print(f"  {s}: {e['documents']:,} documents, {e['bytes']:,} bytes ({e['val_documents']} in val)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
