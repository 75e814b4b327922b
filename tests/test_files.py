"""One writer per folder: ftstudy.io.folder_lock across processes; deleting only what
ftstudy writes (ftstudy.io.clear_folder) and never through a link; the folder marker."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from ftstudy.io import (LOCK_NAME, FolderBusyError, clear_folder, folder_lock, foreign_entries, marker_state,
                        owned_entry, write_marker)


def test_busy_folder_names_the_holder_and_wait_waits(tmp_path: Path, lock_holder) -> None:
    holder = lock_holder(tmp_path / "f", seconds=1.5)
    assert (tmp_path / "f" / LOCK_NAME).read_text().strip() == str(holder.pid)
    with pytest.raises(FolderBusyError, match=rf"f is in use by process {holder.pid} .*--wait"):
        with folder_lock(tmp_path / "f"):
            pass
    t0 = time.perf_counter()
    with folder_lock(tmp_path / "f", wait=True) as path:
        assert time.perf_counter() - t0 > 0.5  # we got it only once the holder let go
        assert path.read_text().strip() == str(os.getpid())
    assert not path.exists()  # removed as we let go


def test_lock_of_a_sigkilled_process_blocks_nobody(tmp_path: Path, lock_holder) -> None:
    holder = lock_holder(tmp_path, seconds=60)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert (tmp_path / LOCK_NAME).read_text().strip() == str(holder.pid)  # the stale file stays...
    with folder_lock(tmp_path):  # ...and blocks nothing: the kernel released the flock
        assert (tmp_path / LOCK_NAME).read_text().strip() == str(os.getpid())


def _owns(entry: Path) -> bool:
    return owned_entry(entry, files=("a.json", "b.txt", ".mark"), dirs=("sub",), match=lambda n: n.endswith(".bin"))


def test_clear_folder_deletes_its_own_names_or_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "f"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "deep.txt").write_text("x")  # inside an own folder: goes with it
    for name in ("a.json", "b.txt", "x-1.bin", ".mark", ".a.json.tmp123", LOCK_NAME):
        (folder / name).write_text("x")
    (folder / "notes.txt").write_text("mine")
    (folder / "b.json").mkdir()  # a folder of anyone else's
    (folder / "x.bin").symlink_to(tmp_path / "elsewhere")  # an own name, but a link: foreign
    with pytest.raises(ValueError, match=r"holds 3 name\(s\) ftstudy does not write \(b.json/, notes.txt, x.bin@\); "
                                         r"ftstudy deletes only its own files, so nothing was deleted: go away"):
        clear_folder(folder, _owns, what="test folder", error=ValueError, hint="go away")
    assert len(list(folder.iterdir())) == 10  # nothing deleted
    for name in ("notes.txt", "x.bin"):
        (folder / name).unlink()
    (folder / "b.json").rmdir()
    # Without them, the rest goes: ``first`` first, the others by name (sub/ with rmtree), ``last`` last.
    deleted: list[str] = []
    real_unlink = Path.unlink

    def spy(self: Path, missing_ok: bool = False) -> None:
        deleted.append(self.name)
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", spy)
    clear_folder(folder, _owns, first=("b.txt",), last=("a.json", ".mark"))
    assert deleted == ["b.txt", ".a.json.tmp123", "x-1.bin", "a.json", ".mark"]
    assert [p.name for p in folder.iterdir()] == [LOCK_NAME]  # the lock stays: its holder is the caller


def test_clear_folder_refuses_a_linked_folder(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "a.json").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "real", target_is_directory=True)
    with pytest.raises(RuntimeError, match=r"folder .*link is a symbolic link \(to .*real\); ftstudy neither writes "
                                           r"nor deletes through a link"):
        clear_folder(tmp_path / "link", _owns)
    assert (tmp_path / "real" / "a.json").exists()
    assert foreign_entries(tmp_path / "real", _owns) == []


def test_marker_is_one_small_json_line(tmp_path: Path) -> None:
    assert marker_state(tmp_path, ".mark", "kind-a") == "absent"
    path = write_marker(tmp_path, ".mark", "kind-a", "python -m x " + "y" * 1000)
    text = path.read_text()
    assert text.count("\n") == 1 and len(text) < 400 and text.endswith("…\"}\n")
    assert marker_state(tmp_path, ".mark", "kind-a") == "ours"
    assert marker_state(tmp_path, ".mark", "kind-b") == "bad"  # another kind marks nothing
    path.write_text("not json")
    assert marker_state(tmp_path, ".mark", "kind-a") == "bad"
    path.unlink()
    path.symlink_to(write_marker(tmp_path, ".real", "kind-a"))
    assert marker_state(tmp_path, ".mark", "kind-a") == "bad"  # a link is no marker


# ---------------------------------------------------------------- the tracked tree travels

#: The most the tracked tree (every file ``git ls-files`` lists) may weigh.
TREE_LIMIT_MIB = 40


def _tracked() -> list[Path]:
    """The tracked files present in the working tree (skips outside a git checkout)."""
    import shutil
    import subprocess

    from ftstudy.io import REPO_ROOT

    if shutil.which("git") is None or not (REPO_ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    proc = subprocess.run(["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"git ls-files failed: {proc.stderr.decode(errors='replace').strip()}")
    paths = [REPO_ROOT / os.fsdecode(p) for p in proc.stdout.split(b"\0") if p]
    return [p for p in paths if p.is_file() and not p.is_symlink()]  # deleted, not yet staged: gone


def test_tracked_tree_stays_under_the_limit() -> None:
    files = _tracked()
    total = sum(p.stat().st_size for p in files)
    biggest = sorted(files, key=lambda p: p.stat().st_size, reverse=True)[:5]
    assert total <= TREE_LIMIT_MIB * 2**20, (
        f"the tracked tree weighs {total / 2**20:.1f} MiB, over {TREE_LIMIT_MIB} MiB; biggest: "
        + ", ".join(f"{p.name} ({p.stat().st_size / 2**20:.1f} MiB)" for p in biggest))


def test_no_figure_is_committed_twice() -> None:
    import hashlib

    seen: dict[str, Path] = {}
    twice = []
    for p in _tracked():
        if p.suffix in (".png", ".svg", ".pdf", ".jpg"):
            digest = hashlib.sha256(p.read_bytes()).hexdigest()
            if digest in seen:
                twice.append(f"{seen[digest]} = {p}")
            seen.setdefault(digest, p)
    assert not twice, twice


def test_committed_generations_are_compressed() -> None:
    from ftstudy.io import RunDir

    legacy = [p for p in _tracked() if p.name in RunDir.LEGACY_TEXT
              or (p.parent.name == RunDir.MEASURE and p.name.endswith((".groups.txt", ".posterior.txt")))]
    assert not legacy, f"{len(legacy)} uncompressed generation files (RunDir.compress_legacy_text): {legacy[:3]}"


def test_gzip_text_is_deterministic_and_legacy_runs_convert(tmp_path: Path) -> None:
    import gzip

    from ftstudy.io import RunDir, atomic_write_gzip, gzip_bytes, read_gzip

    text = "A>__AAAAAAAA__\nB>ü\n"
    data = gzip_bytes(text)
    assert data == gzip_bytes(text) and data[4:8] == b"\0\0\0\0" and not data[3] & 0x08  # mtime 0, no file name
    atomic_write_gzip(tmp_path / "x.txt.gz", text)
    assert (tmp_path / "x.txt.gz").read_bytes() == data and read_gzip(tmp_path / "x.txt.gz") == text
    assert gzip.decompress(data).decode() == text
    run = RunDir(tmp_path / "r")
    (run.path / "measure").mkdir(parents=True)
    (run.path / "samples.txt").write_text("s1\ns2\n")
    (run.path / "groups.txt").write_text("# g\n")
    (run.path / "measure" / "t1.groups.txt").write_text("# t1\n")
    (run.path / "measure" / "t1.posterior.txt").write_text("# post\n")
    (run.path / "measure" / "t1.json").write_text("{}")
    written = run.compress_legacy_text()
    assert sorted(p.name for p in written) == ["groups.txt.gz", "samples.txt.gz", "t1.groups.txt.gz",
                                               "t1.posterior.txt.gz"]
    assert run.samples() == ["s1", "s2"] and read_gzip(run.groups_file) == "# g\n"
    assert read_gzip(run.measure_file("t1", "posterior")) == "# post\n"
    assert sorted(p.name for p in run.path.rglob("*.txt")) == [] and (run.path / "measure" / "t1.json").exists()
    assert run.compress_legacy_text() == []  # converted: nothing left to do
