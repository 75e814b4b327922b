"""Result files without torch: atomic text writes, the one CSV writer, the one-writer-per-folder
lock, and the two folders ftstudy writes, each owned by one class:

- :class:`RunDir`, a run folder: every file name in it, its config and summary, its metrics,
  its status (new, started, interrupted, finished, extendable, foreign), copying and deleting it;
- :class:`StudyDir`, a study folder (a grid of runs): its tables, logs and figure names.

No other module spells a file name of these folders.  Kept free of heavy imports so that
plotting (notebooks, ``ftstudy.results.plots``) starts fast.

Every temporary name carries the writer's pid, so two processes never share one.

What ftstudy made is decided by a marker file it writes into each folder it makes
(:func:`write_marker`: ``.ftstudy-run`` here, ``.ftstudy-shards`` in a shard folder), never
by the shape of a file a user could have written.  ftstudy deletes only the names it writes
(:func:`clear_folder`): a folder that holds anything else is refused whole, and nothing in
it is deleted.  Nothing is written or deleted through a symbolic link (:func:`refuse_link`).
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import gzip
import io
import json
import os
import shlex
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The repository (or source tree) this package lives in: results/, notebooks/, README.md.
REPO_ROOT = Path(__file__).resolve().parents[1]

__all__ = ["REPO_ROOT", "atomic_write_text", "atomic_write_gzip", "read_gzip", "gzip_bytes", "read_metrics",
           "LOCK_NAME", "FolderBusyError", "folder_lock", "clear_folder",
           "foreign_entries", "owned_entry", "refuse_link", "MARKER_VERSION", "write_marker", "marker_state",
           "CsvTable", "RunError", "RunDir", "StudyDir", "write_config_file", "read_config_file"]

# The lock file of a run or sweep folder: git-ignored, ignored by the run status logic,
# removed when its holder lets go (a killed holder leaves it, stale and harmless).
LOCK_NAME = ".ftstudy.lock"


def _temp_name(name: str) -> str:
    """The temporary file an atomic write of ``name`` goes through (renamed onto it)."""
    return f".{name}.tmp{os.getpid()}"


def _is_temp(name: str) -> bool:
    return name.startswith(".") and name.rpartition(".tmp")[2].isdigit()


def _atomic_write(path: Path, data: str | bytes) -> None:
    path = Path(path)
    tmp = path.with_name(_temp_name(path.name))
    try:
        with open(tmp, "wb" if isinstance(data, bytes) else "w") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk or an interrupt leaves no temporary file
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write text so that readers see the old file or the new one, never half of one."""
    _atomic_write(path, text)


def gzip_bytes(text: str) -> bytes:
    """``text`` (UTF-8) as a deterministic gzip member: no file name, mtime 0, OS byte 255
    ("unknown"), level 9; the same text always gives the same bytes (with the same zlib)."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", compresslevel=9, fileobj=buf, mtime=0) as f:
        f.write(text.encode("utf-8"))
    return buf.getvalue()


def atomic_write_gzip(path: Path, text: str) -> None:
    """Write ``text`` gzip-compressed (:func:`gzip_bytes`), atomically: the format of the
    ``*.txt.gz`` files of a run folder (generations: see :class:`RunDir`)."""
    _atomic_write(path, gzip_bytes(text))


def read_gzip(path: Path) -> str:
    """The text of a file :func:`atomic_write_gzip` wrote."""
    with gzip.open(Path(path), "rt", encoding="utf-8", newline="") as f:
        return f.read()


def read_metrics(run_dir: Path) -> list[dict[str, float | str]]:
    """Rows of a run's metrics.csv with numbers parsed and empty cells dropped (the one
    reader for plots and sweeps; only the writer, train.MetricsCSV, keeps raw strings)."""
    return [{k: (v if k == "split" else float(v)) for k, v in r.items() if v != ""}
            for r in CsvTable(RunDir(run_dir).metrics_file).load().rows]


class CsvTable:
    """A CSV file of dict rows, and the one CSV writer (metrics.csv, summary.csv, aggregate.csv).

    The header is every key of the rows in order of first appearance; a row without a
    column leaves its cell empty.  Written whole and atomically; read back as strings.
    """

    def __init__(self, path: Path, rows: Iterable[dict[str, Any]] = ()) -> None:
        self.path = Path(path)
        self.rows: list[dict[str, Any]] = list(rows)

    def load(self, keep: Callable[[dict[str, str]], bool] | None = None) -> CsvTable:
        """Replace the rows by the file's (those ``keep`` accepts), as strings; none if no file."""
        self.rows = []
        if self.path.exists():
            with open(self.path, newline="") as f:
                self.rows = [r for r in csv.DictReader(f) if keep is None or keep(r)]
        return self

    def text(self) -> str:
        cols: list[str] = []
        for r in self.rows:
            cols.extend(k for k in r if k not in cols)
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols)
        w.writeheader()
        w.writerows(self.rows)
        return buf.getvalue()

    def write(self) -> Path:
        atomic_write_text(self.path, self.text())
        return self.path


def _write_json(path: Path, obj: Any, **kw: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, **kw))


class FolderBusyError(RuntimeError):
    """Another process holds the folder's lock."""


def _holder(fd: int) -> str:
    """The pid written in a lock file (its holder writes it just after locking: retry briefly)."""
    for _ in range(20):
        pid = os.pread(fd, 32, 0).decode("ascii", errors="replace").strip()
        if pid:
            return pid
        time.sleep(0.025)
    return "unknown"


@contextlib.contextmanager
def folder_lock(folder: Path, *, wait: bool = False, what: str = "folder",
                error: type[Exception] = FolderBusyError) -> Iterator[Path]:
    """Hold an exclusive lock on ``folder`` (created if missing) for the ``with`` block.

    The lock is ``flock`` on ``folder/.ftstudy.lock``, whose content is the holder's pid; the
    kernel drops it when the holder dies, even by SIGKILL, so a stale file blocks nobody.
    A busy folder raises ``error`` naming the holder's pid, or, with ``wait``, waits for it.
    """
    folder = Path(folder)
    path = folder / LOCK_NAME
    while True:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise error(f"cannot lock {what} {folder}: {e}") from e
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(fd)
                if not wait:
                    raise error(f"{what} {folder} is in use by process {holder} (lock {path}); wait for it to "
                                f"finish, or pass --wait to wait for it") from None
                print(f"[ftstudy] {what} {folder} is in use by process {holder}; waiting for it", file=sys.stderr,
                      flush=True)
                fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
        except BaseException:
            os.close(fd)
            raise
        if same:
            break
        os.close(fd)  # the holder removed the file as it let go: lock the current one
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == os.fstat(fd).st_ino:  # still ours (the folder may have been replaced)
                os.unlink(path)  # while still locked, so nobody can lock the unlinked file
        os.close(fd)


# ---------------------------------------------------------------- markers and deletion

#: The version of the marker's JSON line (:func:`write_marker`).
MARKER_VERSION = 1
_MARKER_COMMAND_CHARS = 300  # the marker stays one short line (config.json keeps the whole command)


def _this_command() -> str:
    return shlex.join(["python", *sys.argv])


def write_marker(folder: Path, name: str, kind: str, command: str | None = None) -> Path:
    """Mark ``folder`` as made by ftstudy: ``folder/name`` holds one JSON line, ``{"kind":
    kind, "version": MARKER_VERSION, "command": the command that made it}`` (this process's
    own when None; cut to a few hundred characters).  The marker, not the shape of any other
    file, is what lets ftstudy later delete in the folder (:func:`clear_folder`)."""
    command = _this_command() if command is None else command
    if len(command) > _MARKER_COMMAND_CHARS:
        command = command[:_MARKER_COMMAND_CHARS - 1] + "…"
    path = Path(folder) / name
    atomic_write_text(path, json.dumps({"kind": kind, "version": MARKER_VERSION, "command": command},
                                       ensure_ascii=False) + "\n")
    return path


def marker_state(folder: Path, name: str, kind: str) -> str:
    """``absent`` (no ``folder/name``), ``ours`` (a plain file holding a marker of ``kind``) or
    ``bad`` (anything else by that name: a link, a folder, another kind, not JSON), which
    marks nothing: a folder with a bad marker is not taken for ftstudy's."""
    path = Path(folder) / name
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return "absent"
    except OSError:
        return "bad"
    if not stat.S_ISREG(st.st_mode) or st.st_size > 4096:
        return "bad"
    try:
        m = json.loads(path.read_text())
    except (OSError, ValueError):
        return "bad"
    return "ours" if isinstance(m, dict) and m.get("kind") == kind and isinstance(m.get("version"), int) else "bad"


def owned_entry(entry: Path, files: Iterable[str] = (), dirs: Iterable[str] = (),
                match: Callable[[str], bool] | None = None) -> bool:
    """Whether ``entry`` (a direct child of a folder) is one ftstudy writes there: a plain
    file named in ``files`` (or accepted by ``match``), the leftover temporary file of an
    atomic write of one of ``files``, or a real folder named in ``dirs``.  A symbolic link is
    never ftstudy's, whatever its name (deleting it would not delete what ftstudy wrote)."""
    try:
        mode = os.lstat(entry).st_mode
    except FileNotFoundError:
        return True  # gone meanwhile: nothing left to judge
    name = entry.name
    files = set(files)
    if name in set(dirs):
        return stat.S_ISDIR(mode)
    is_file = name in files or (match is not None and match(name)) or (
        _is_temp(name) and name[1:].rpartition(".tmp")[0] in files)
    return is_file and stat.S_ISREG(mode)


def foreign_entries(folder: Path, owns: Callable[[Path], bool]) -> list[str]:
    """The names in ``folder`` that ``owns`` rejects (sorted; folders end in "/", links in
    "@"); the lock file is never foreign."""
    out = []
    for p in Path(folder).iterdir():
        if p.name == LOCK_NAME or owns(p):
            continue
        out.append(p.name + ("@" if p.is_symlink() else "/" if p.is_dir() else ""))
    return sorted(out)


def _names(names: list[str], most: int = 8) -> str:
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def clear_folder(folder: Path, owns: Callable[[Path], bool], *, what: str = "folder",
                 error: type[Exception] = RuntimeError, first: Iterable[str] = (), last: Iterable[str] = (),
                 hint: str = "") -> None:
    """Delete the entries of ``folder`` that ftstudy writes (those ``owns`` accepts:
    see :func:`owned_entry`), all or nothing.

    When ``folder`` holds anything else, ``error`` names it and nothing is deleted (then
    ``hint`` ends the message, e.g. "pick another --out").  ``folder`` itself is never a
    symbolic link here (``error`` too).  The lock file is kept: its holder is the caller.
    ``first`` / ``last``: names deleted before / after all others, in that order: the file
    that says a folder is finished goes first, its marks (config, marker) last, so that a
    deletion cut short leaves a folder still recognised as ftstudy's, and not as finished.
    Entries that turn up while it runs are judged one by one: only ``owns``'s are deleted.
    """
    folder = Path(folder)
    refuse_link(folder, what, error)
    foreign = foreign_entries(folder, owns)
    if foreign:
        raise error(f"{what} {folder} holds {len(foreign)} name(s) ftstudy does not write ({_names(foreign)}); "
                    f"ftstudy deletes only its own files, so nothing was deleted"
                    + (f": {hint}" if hint else ""))
    first, last = list(first), list(last)
    order = {n: i for i, n in enumerate(first)} | {n: len(first) + 1 + i for i, n in enumerate(last)}
    for p in sorted(folder.iterdir(), key=lambda p: (order.get(p.name, len(first)), p.name)):
        if p.name == LOCK_NAME or not owns(p):
            continue
        try:
            is_dir = stat.S_ISDIR(os.lstat(p).st_mode)
        except FileNotFoundError:
            continue
        if is_dir:
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)


def refuse_link(path: Path, what: str, error: type[Exception] = RuntimeError) -> None:
    """``error`` when ``path`` is a symbolic link: ftstudy neither writes nor deletes through
    one (a link in one results folder once let ``--overwrite`` empty the run it pointed at)."""
    path = Path(path)
    if path.is_symlink():
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        raise error(f"{what} {path} is a symbolic link (to {target}); ftstudy neither writes nor deletes "
                    f"through a link: give the real folder")


# ---------------------------------------------------------------- run folders

class RunError(RuntimeError):
    """A run that cannot start (its folder is not ftstudy's, holds another config, or is in
    use) or that failed."""


def _differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Config fields (but steps) on which two config dicts differ, as ``section.field: a → b``."""
    return [f"{sec}.{k}: {a[sec].get(k)!r} → {b[sec].get(k)!r}" for sec in ("model", "task", "train")
            for k in sorted(set(a[sec]) | set(b[sec])) if a[sec].get(k) != b[sec].get(k) and k != "steps"]


class _File:
    """A read-only attribute of a folder class: its ``path`` joined with some of its names."""

    def __init__(self, *names: str) -> None:
        self.names = names

    def __get__(self, folder: Any, owner: type | None = None) -> Any:
        return self if folder is None else folder.path.joinpath(*self.names)


@dataclass(frozen=True)
class _Folder:
    """A folder ftstudy writes, by its path."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def name(self) -> str:
        return self.path.name


class RunDir(_Folder):
    """A run folder, the one owner of its file names and of the rules for its state::

        config.json    every config field and the run's provenance (written first)
        metrics.csv    one row per logged training step and per validation
        summary.json   final figures; its presence marks the run finished
        samples.txt.gz generations under prior Z, one a line;  groups.txt.gz: the probe's
                       generation groups (:mod:`ftstudy.tasks.agreement`'s format)
        ckpt/          git-ignored: last.ckpt (resumable) and model.pt (export);
                       model-step<N>.pt: snapshots kept by train.snapshot_every;
                       ckpt/retrain/: the run trained again (same config) to re-measure it
        measure/       re-measurements of the finished model under a sampling protocol:
                       <protocol>.json, <protocol>.groups.txt.gz (prior-Z groups, as
                       groups.txt.gz) and <protocol>.posterior.txt.gz (groups sharing the
                       encoder's Z); and
                       codes.encoder.json, the aggregate posterior over whole codes (no protocol)
        tb/            git-ignored: the TensorBoard log of the same figures
        COPIED_FROM    a run copied from an identical one of another study
        .ftstudy-run   the marker: ftstudy made this folder (one JSON line: kind
                       "ftstudy-run", version, the command; written with config.json)
        .ftstudy.lock  held by the one process writing the folder

    Status: ``new`` (absent, or empty but for a lock file or a marker), ``foreign`` (not an
    ftstudy run: never written into nor deleted), ``started`` (an ftstudy config, but
    neither checkpoint nor summary), ``interrupted`` (a resumable checkpoint), ``finished``
    (a summary), and, for a wanted config with more steps than a finished run made,
    ``extendable``.  Every write is atomic.

    Generations (the ``*.txt.gz`` files) are plain text compressed by :func:`atomic_write_gzip`
    (deterministic: the same text gives the same bytes) and read by :func:`read_gzip`.
    Runs written before that have ``samples.txt``, ``groups.txt`` and ``measure/*.txt``
    (:data:`LEGACY_TEXT`): :meth:`compress_legacy_text` converts them (the committed runs are
    converted); their names stay ftstudy's, so such a folder can still be deleted.

    An ftstudy run is a folder with the marker and a config.json of the shape train writes
    ({"config": {"model": …, "task": …, "train": …}}).  Runs made before the marker existed
    (every run committed under results/ until then) have none: such a *legacy* run is one
    whose config.json holds a complete config (the fields every ftstudy has written:
    :data:`LEGACY_FIELDS`), which a foreign file of the same outline does not.  A legacy run
    reads, resumes, extends and is re-measured as any other (its next config.json write
    marks it).

    Deleting (``--overwrite``, :meth:`delete`) removes only the names above, marked run or
    legacy alike, and refuses, listing them, when the folder holds anything else (a user's
    notes, a folder, a symbolic link): then nothing is deleted.  Neither the run folder nor
    the folder it is in may be a symbolic link for any write (:meth:`check_not_linked`).
    """

    CONFIG = "config.json"
    METRICS = "metrics.csv"
    SUMMARY = "summary.json"
    SAMPLES = "samples.txt.gz"
    GROUPS = "groups.txt.gz"
    #: The uncompressed names of samples and groups, in runs written before compression.
    LEGACY_TEXT = ("samples.txt", "groups.txt")
    CKPT = "ckpt"
    LAST_CKPT = "last.ckpt"
    MODEL = "model.pt"
    TB = "tb"
    COPIED_FROM = "COPIED_FROM"
    RETRAIN = "retrain"
    MEASURE = "measure"
    MARKER = ".ftstudy-run"
    #: The marker's kind (:func:`write_marker`).
    KIND = "ftstudy-run"
    #: The files and folders ftstudy writes at a run folder's top (the only names it deletes).
    OWN_FILES = (CONFIG, METRICS, SUMMARY, SAMPLES, GROUPS, COPIED_FROM, MARKER, *LEGACY_TEXT)
    OWN_DIRS = (CKPT, TB, MEASURE)
    #: The fields a legacy run's config.json (no marker) holds in each section: what every
    #: ftstudy has written, and what tells a run apart from a file of the same outline.
    LEGACY_FIELDS = {"model": ("dim", "n_layers", "n_heads", "vocab_size", "latent_bits"), "task": ("name",),
                     "train": ("steps", "seed", "lr", "batch_size")}

    config_file = _File(CONFIG)
    metrics_file = _File(METRICS)
    summary_file = _File(SUMMARY)
    samples_file = _File(SAMPLES)
    groups_file = _File(GROUPS)
    ckpt_dir = _File(CKPT)
    #: Lightning's resumable training state.
    last_ckpt = _File(CKPT, LAST_CKPT)
    #: The exported model (``ftstudy.core.checkpoint``).
    model_file = _File(CKPT, MODEL)
    tb_dir = _File(TB)
    def snapshot_file(self, step: int) -> Path:
        """The model kept at ``step`` by ``train.snapshot_every`` (git-ignored, in ckpt/)."""
        return self.ckpt_dir / f"model-step{int(step):06d}.pt"

    def snapshots(self) -> dict[int, Path]:
        """The kept snapshots by step."""
        return {int(p.stem.removeprefix("model-step")): p for p in sorted(self.ckpt_dir.glob("model-step[0-9]*.pt"))}

    #: Where a finished run is trained again when its model.pt is gone (git-ignored, in ckpt/).
    retrain_dir = _File(CKPT, RETRAIN)
    measure_dir = _File(MEASURE)
    #: The aggregate posterior over whole codes (protocol-free; not a protocol's .json).
    codes_file = _File(MEASURE, "codes.encoder.json")

    def measure_file(self, protocol: str, kind: str = "json") -> Path:
        """A re-measurement's file: ``kind`` "json" (its figures), "groups" (prior-Z groups)
        or "posterior" (groups sharing the encoder's Z), for a protocol name."""
        suffix = {"json": ".json", "groups": ".groups.txt.gz", "posterior": ".posterior.txt.gz"}
        if kind not in suffix:
            raise ValueError(f"kind = {kind!r}: one of {sorted(suffix)}")
        if not protocol or "/" in protocol or protocol.startswith("."):
            raise ValueError(f"protocol = {protocol!r}: a plain name (no '/', not starting with '.')")
        return self.measure_dir / f"{protocol}{suffix[kind]}"

    def measurement(self, protocol: str) -> dict[str, Any] | None:
        """A re-measurement's figures (None when not measured)."""
        f = self.measure_file(protocol)
        return json.loads(f.read_text()) if f.exists() else None

    def write_measurement(self, protocol: str, figures: dict[str, Any]) -> None:
        self.measure_dir.mkdir(exist_ok=True)
        _write_json(self.measure_file(protocol), figures, allow_nan=False)

    # ------------------------------------------------------------ files

    def record(self) -> dict[str, Any]:
        """config.json as written: ``{"config": …, "run", "argv", "command", versions …}``."""
        return json.loads(self.config_file.read_text())

    def config(self, complete: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> dict[str, Any]:
        """The config the run was made with (its ``model``, ``task``, ``train`` sections),
        through ``complete`` when given (which fills the fields added to ftstudy since).
        RunError if it cannot be read."""
        try:
            cfg = self.record()["config"]
            return complete(cfg) if complete is not None else cfg
        except (KeyError, ValueError, TypeError, OSError) as e:
            raise RunError(f"{self.config_file} cannot be read as an ftstudy config: {e}") from e

    def write_config(self, record: dict[str, Any]) -> None:
        """Write config.json, after the marker (written once: the folder is ftstudy's from
        its first file on; its command is the run's, as recorded)."""
        if marker_state(self.path, self.MARKER, self.KIND) != "ours":
            command = record.get("command") if isinstance(record, dict) else None
            write_marker(self.path, self.MARKER, self.KIND, command if isinstance(command, str) else None)
        _write_json(self.config_file, record)

    def saved_steps(self) -> int | None:
        """The steps the saved config asks for (None before config.json is written)."""
        return self.record()["config"]["train"]["steps"] if self.config_file.exists() else None

    def summary(self) -> dict[str, Any] | None:
        """summary.json (None while the run is unfinished)."""
        return json.loads(self.summary_file.read_text()) if self.summary_file.exists() else None

    def write_summary(self, summary: dict[str, Any]) -> None:
        """Finish the run: JSON has no NaN, so undefined figures must already be null."""
        _write_json(self.summary_file, summary, allow_nan=False)

    def unfinish(self) -> None:
        """Remove summary.json, so that a finished run can be extended to more steps."""
        self.summary_file.unlink()

    def metrics(self) -> list[dict[str, float | str]]:
        """metrics.csv rows with numbers parsed (see :func:`read_metrics`)."""
        return read_metrics(self.path)

    def metrics_table(self) -> CsvTable:
        """metrics.csv as a table of raw strings, for its writer (empty until loaded)."""
        return CsvTable(self.metrics_file)

    def last_step(self) -> int:
        """The last step metrics.csv holds (0 without one)."""
        if not self.metrics_file.exists():
            return 0
        return int(max((r["step"] for r in self.metrics()), default=0))

    def write_samples(self, samples: list[str]) -> None:
        """samples.txt.gz: one generation a line."""
        atomic_write_gzip(self.samples_file, "\n".join(samples) + "\n")

    def samples(self) -> list[str]:
        """The generations of samples.txt.gz ([] without one)."""
        return read_gzip(self.samples_file).splitlines() if self.samples_file.exists() else []

    def compress_legacy_text(self) -> list[Path]:
        """Convert the uncompressed generations of a run written before compression
        (samples.txt, groups.txt, measure/<protocol>.groups.txt and .posterior.txt) to their
        ``.gz`` names, byte for byte the same text, and remove the originals; returns the
        files written.  A no-op on a converted run."""
        old = [self.path / n for n in self.LEGACY_TEXT]
        if self.measure_dir.is_dir():
            old += sorted(self.measure_dir.glob("*.groups.txt")) + sorted(self.measure_dir.glob("*.posterior.txt"))
        written = []
        for f in old:
            if f.is_file() and not f.is_symlink():
                new = f.with_name(f.name + ".gz")
                atomic_write_gzip(new, f.read_bytes().decode("utf-8"))
                f.unlink()
                written.append(new)
        return written

    def make_ckpt_dir(self) -> Path:
        """ckpt/, with a .gitignore of its own (belt and braces beside the repo's)."""
        self.ckpt_dir.mkdir(exist_ok=True)
        atomic_write_text(self.ckpt_dir / ".gitignore", "*\n")
        return self.ckpt_dir

    # ------------------------------------------------------------ status

    def is_ftstudy(self) -> bool:
        """Whether the folder holds an ftstudy run: the marker and a config.json of the shape
        train writes, or, without a marker (a legacy run: see the class), a config.json that
        holds a complete config.  A marker of another kind, or unreadable, marks nothing."""
        marker = marker_state(self.path, self.MARKER, self.KIND)
        if marker == "bad":
            return False
        try:
            if os.path.islink(self.config_file):
                return False
            saved = self.record()
        except (OSError, ValueError):
            return False
        cfg = saved.get("config") if isinstance(saved, dict) else None
        if not (isinstance(cfg, dict) and all(isinstance(cfg.get(s), dict) for s in ("model", "task", "train"))):
            return False
        return marker == "ours" or all(f in cfg[s] for s, fields in self.LEGACY_FIELDS.items() for f in fields)

    def is_legacy(self) -> bool:
        """An ftstudy run made before the marker existed (see the class)."""
        return marker_state(self.path, self.MARKER, self.KIND) == "absent" and self.is_ftstudy()

    def owns(self, entry: Path) -> bool:
        """Whether ``entry``, a name at the top of the folder, is one ftstudy writes there."""
        return owned_entry(entry, self.OWN_FILES, self.OWN_DIRS)

    def foreign(self) -> list[str]:
        """The names in the folder ftstudy does not write (see :func:`foreign_entries`)."""
        return foreign_entries(self.path, self.owns) if self.path.is_dir() else []

    def check_not_linked(self) -> None:
        """RunError when the run folder, or the folder it is in (``--out``), is a symbolic
        link: ftstudy writes no run and deletes nothing through one."""
        refuse_link(self.path.parent, "the folder the run goes in (--out)", RunError)
        refuse_link(self.path, "run folder", RunError)

    def status(self) -> str:
        """new, foreign, finished, interrupted or started (see the class)."""
        p = self.path
        if not p.exists() or (p.is_dir() and all(q.name in (LOCK_NAME, self.MARKER) or _is_temp(q.name)
                                                 for q in p.iterdir())):
            # A lock file alone is no start: its holder may not have written anything yet (or
            # only the temporary file of its first atomic write, config.json, not renamed yet,
            # or only the marker written just before it).
            return "new"
        if not self.is_ftstudy():
            return "foreign"
        if self.summary_file.exists():
            return "finished"
        if self.last_ckpt.exists():
            return "interrupted"
        return "started"

    def check_ours(self) -> str:
        """The status; RunError for a foreign folder."""
        status = self.status()
        if status == "foreign":
            raise RunError(f"{self.path} exists and is not an ftstudy run folder (neither ftstudy's marker "
                           f"{self.MARKER} with its {self.CONFIG}, nor a complete ftstudy {self.CONFIG}); ftstudy "
                           f"neither writes into nor deletes it (--overwrite included): pick another --out or --name")
        return status

    def check(self, want: dict[str, Any], complete: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> str:
        """Status of the folder for a run of config ``want`` (a config dict): new, started,
        interrupted, finished or extendable.  Reads only; touches nothing.

        RunError when the folder is foreign or holds a run of another config (only
        ``train.steps`` may differ: more steps extend a run, fewer are refused).
        ``complete``: see :meth:`config`.
        """
        status = self.check_ours()
        if status == "new":
            return status
        saved = self.config(complete)
        diff = _differences(saved, want)
        if diff:
            raise RunError(f"{self.path} holds a run with a different config ({'; '.join(diff)}); "
                           f"pick another --out or pass --overwrite")
        old_steps, steps = saved["train"]["steps"], want["train"]["steps"]
        if steps < old_steps and status in ("finished", "interrupted"):
            raise RunError(f"{self.path} was set up for {old_steps} steps; asking for {steps} would shorten it "
                           f"(pass --overwrite to start over)")
        if status == "finished" and steps > (self.summary() or {}).get("step", 0):
            return "extendable"
        return status

    # ------------------------------------------------------------ whole folders

    def lock(self, *, wait: bool = False) -> contextlib.AbstractContextManager[Path]:
        """Hold the run's lock (:func:`folder_lock`; RunError if another process holds it, or
        if the folder or the one it is in is a symbolic link: see :meth:`check_not_linked`)."""
        self.check_not_linked()
        return folder_lock(self.path, wait=wait, what="run folder", error=RunError)

    def check_deletable(self) -> str:
        """The status, when :meth:`delete` would go through; RunError (naming the reason:
        a link, a folder that is not an ftstudy run, names ftstudy does not write) otherwise.
        Reads only."""
        self.check_not_linked()
        status = self.check_ours()
        foreign = self.foreign()
        if foreign:
            raise RunError(f"run folder {self.path} holds {len(foreign)} name(s) ftstudy does not write "
                           f"({_names(foreign)}); ftstudy deletes only its own files, so nothing was deleted "
                           f"(--overwrite included): move them out, or pick another --out or --name")
        return status

    def delete(self, *, locked: bool = False, wait: bool = False) -> None:
        """Empty a run folder that ftstudy made of the names ftstudy writes (the class's list).
        RunError, and nothing deleted, for a folder that is not an ftstudy run, for a
        symbolic link, and for one that holds any other name (listed).  The lock file stays
        (it goes when its holder lets go).  ``locked``: the caller holds the run's lock
        already; else it is taken here."""
        if not locked:
            if self.check_deletable() == "new" and not self.path.exists():
                return  # nothing to delete (and no lock file to make)
            with self.lock(wait=wait):
                self.delete(locked=True)
            return
        self.check_deletable()  # under the lock: what is there now
        # summary.json first (a deletion cut short never looks finished), the marks last.
        clear_folder(self.path, self.owns, what="run folder", error=RunError, first=(self.SUMMARY,),
                     last=(self.CONFIG, self.MARKER), hint="move them out, or pick another --out or --name")

    def copy_to(self, dst: RunDir, *, wait: bool = False) -> None:
        """Copy this finished run into ``dst`` (missing, or empty but for a lock file),
        holding ``dst``'s lock, and mark it with COPIED_FROM.  The copy is made in a fresh
        temporary folder of this process, then moved in with summary.json, the mark of a
        finished run, last."""
        with dst.lock(wait=wait):
            if any(p.name != LOCK_NAME for p in dst.path.iterdir()):
                raise RunError(f"cannot copy {self.path} to {dst.path}: {dst.path} is not empty")
            tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.copy{os.getpid()}-", dir=dst.path.parent))
            try:
                shutil.copytree(self.path, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns(LOCK_NAME))
                (tmp / self.COPIED_FROM).write_text(f"{self.path.parent.name}/{self.name}\n")
                # The copy is a folder ftstudy made here (a legacy source gives a marked copy).
                write_marker(tmp, self.MARKER, self.KIND)
                for p in sorted(tmp.iterdir(), key=lambda p: p.name == self.SUMMARY):
                    os.replace(p, dst.path / p.name)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)  # made above by this process, never anyone else's

    def copied_from(self) -> str | None:
        """``study/run`` this run was copied from, if it was."""
        f = self.path / self.COPIED_FROM
        return f.read_text().strip() if f.exists() else None


# The file ``python -m ftstudy.train --config FILE`` reads: a resolved config, and the
# ftstudy.run.train arguments that reproduce it (recorded as the run's command).
_CONFIG_KEY, _ARGS_KEY = "config", "train_args"


def write_config_file(path: Path, config: dict[str, Any], train_args: list[str] | None = None) -> Path:
    """Write a config for ``ftstudy.run.train --config`` (with the arguments that reproduce it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_json(path, {_CONFIG_KEY: config, **({_ARGS_KEY: list(train_args)} if train_args is not None else {})})
    return path


def read_config_file(path: Path) -> tuple[dict[str, Any], list[str] | None]:
    """(config dict, reproducing ftstudy.run.train arguments or None) of a ``--config`` file:
    one :func:`write_config_file` wrote, a run's config.json, or a bare config (what
    ``--print-config`` prints).  ValueError or OSError if it cannot be read."""
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a JSON object expected")
    if isinstance(data.get(_CONFIG_KEY), dict):
        args = data.get(_ARGS_KEY)
        if args is not None and not (isinstance(args, list) and all(isinstance(a, str) for a in args)):
            raise ValueError(f"{path}: {_ARGS_KEY} must be a list of strings")
        return data[_CONFIG_KEY], args
    return data, None


# ---------------------------------------------------------------- study folders

class StudyDir(_Folder):
    """A study folder (``<results>/<study>/``), the one owner of its file names::

        <run>/          one RunDir per grid point and seed
        summary.csv     one row per finished run: config fields, then its figures
        aggregate.csv   one row per grid point: mean and 95% interval over seeds
        aggregate.md    the same as a markdown table
        agreement.csv   one row per grid point and sampling protocol: agreement on the block
                        position with bootstrap intervals (ablate --measure); agreement.md
        logs/           git-ignored: each parallel run's log and the config it was given

    and of the names of its figures, which go to ``<results>/figures/`` by default (one
    folder for the studies of a results folder).
    """

    SUMMARY, AGGREGATE_CSV, AGGREGATE_MD = "summary.csv", "aggregate.csv", "aggregate.md"
    AGREEMENT_CSV, AGREEMENT_MD = "agreement.csv", "agreement.md"
    LOGS, FIGURES = "logs", "figures"

    # Each folder class names its own files with the same descriptors (RunDir's above): the
    # shared shape is the pattern, the names differ.
    summary_file = _File(SUMMARY)
    aggregate_csv = _File(AGGREGATE_CSV)
    aggregate_md = _File(AGGREGATE_MD)
    agreement_csv = _File(AGREEMENT_CSV)
    agreement_md = _File(AGREEMENT_MD)
    logs_dir = _File(LOGS)

    def run(self, name: str) -> RunDir:
        return RunDir(self.path / name)

    def runs(self, *, finished: bool = False) -> list[RunDir]:
        """Its run folders (with a config.json; ``finished``: with a summary.json), by name."""
        if not self.path.is_dir():
            return []
        runs = [RunDir(p) for p in sorted(self.path.iterdir()) if p.is_dir()]
        return [r for r in runs if (r.summary_file if finished else r.config_file).exists()]

    def log_file(self, run: str) -> Path:
        """Where a parallel sweep sends a run's output."""
        return self.logs_dir / f"{run}.log"

    def config_file(self, run: str) -> Path:
        """The config a parallel sweep gives a run (``ftstudy.run.train --config``)."""
        return self.logs_dir / f"{run}.{RunDir.CONFIG}"

    def summary(self) -> list[dict[str, str]]:
        """summary.csv's rows, as strings."""
        return CsvTable(self.summary_file).load().rows

    def write_summary(self, rows: list[dict[str, Any]]) -> Path:
        return CsvTable(self.summary_file, rows).write()

    @staticmethod
    def _write_table(csv_path: Path, md_path: Path, rows: list[dict[str, Any]], markdown: str) -> Path:
        CsvTable(csv_path, rows).write()
        atomic_write_text(md_path, markdown)
        return md_path

    def write_aggregate(self, rows: list[dict[str, Any]], markdown: str) -> Path:
        """aggregate.csv and aggregate.md (returned)."""
        return self._write_table(self.aggregate_csv, self.aggregate_md, rows, markdown)

    def write_agreement(self, rows: list[dict[str, Any]], markdown: str) -> Path:
        """agreement.csv and agreement.md (returned)."""
        return self._write_table(self.agreement_csv, self.agreement_md, rows, markdown)

    def protocols(self) -> list[str]:
        """The sampling protocols any of its runs was re-measured under (``measure/*.json``)."""
        names = {p.name.removesuffix(".json") for r in self.runs(finished=True) if r.measure_dir.is_dir()
                 for p in r.measure_dir.glob("*.json") if p != r.codes_file}
        return sorted(names, key=lambda n: (n != "t1", n != "paper", n))

    # ------------------------------------------------------------ figures

    @property
    def figures_dir(self) -> Path:
        """The default folder of its figures: ``figures/`` beside the study folders."""
        return self.path.parent / self.FIGURES

    def figure(self, fig_dir: Path | None = None, kind: str = "") -> Path:
        """The study's metric figure (``kind`` "") or another of its figures (``dynamics``)."""
        return Path(fig_dir or self.figures_dir) / f"{self.name}{'_' + kind if kind else ''}.png"

    def figure4(self, seed: int, fig_dir: Path | None = None, suffix: str = ".png", protocol: str = "") -> Path:
        """The paper's Figure 4 for one seed, as a picture (.png) or as text (.txt): from the
        runs' own probe, or (``protocol``) from their re-measurement under that protocol."""
        return Path(fig_dir or self.figures_dir) / f"figure4{'_' + protocol if protocol else ''}_s{seed}{suffix}"
