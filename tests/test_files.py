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
