"""The run folder and the study folder, each owned by one class (ftstudy.io.RunDir, StudyDir);
the studies as typed data; a parallel sweep's children get their config as a file; the
committed tables rebuild byte for byte from the committed runs."""

from __future__ import annotations

import ast
import json
import shlex
from pathlib import Path

import pytest

from ftstudy.core.config import ConfigError, get_preset
from ftstudy.io import LOCK_NAME, CsvTable, RunDir, RunError, StudyDir, read_config_file, write_config_file
from ftstudy.run.train import build_parser, config_and_command, config_from_args
from ftstudy.study.ablate import plan, rebuild_summary
from ftstudy.study.studies import STUDIES, EachBelow, Times

REPO = Path(__file__).resolve().parents[1]


def _config(**overrides) -> dict:
    return get_preset("synthetic-tiny", overrides).to_dict()


def test_run_status_from_new_to_extendable_and_foreign(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "r")
    assert run.status() == "new" and run.check(_config()) == "new"
    run.path.mkdir()
    (run.path / LOCK_NAME).write_text("123\n")
    assert run.status() == "new"  # a lock alone is no start
    (run.path / ".config.json.tmp4567").write_text("{")
    assert run.status() == "new"  # nor its holder's first atomic write, not renamed yet (ablate --jobs 9 saw it)
    (run.path / ".config.json.tmp4567").unlink()
    (run.path / "notes.txt").write_text("mine\n")
    assert run.status() == "foreign"
    with pytest.raises(RunError, match="not an ftstudy run folder"):
        run.check(_config())
    with pytest.raises(RunError, match="not an ftstudy run folder"):
        run.delete()
    assert (run.path / "notes.txt").exists()  # untouched
    (run.path / "notes.txt").unlink()
    run.write_config({"config": _config(steps=20), "run": run.name})
    assert run.status() == "started" and run.saved_steps() == 20
    run.make_ckpt_dir()
    run.last_ckpt.write_bytes(b"x")
    assert run.check(_config(steps=30)) == "interrupted"
    with pytest.raises(RunError, match="would shorten it"):
        run.check(_config(steps=10))
    with pytest.raises(RunError, match=r"different config \(train.lr: 0.001 → 0.5"):
        run.check(_config(steps=20, lr=0.5))
    run.write_summary({"step": 20})
    assert run.status() == "finished" and run.check(_config(steps=20)) == "finished"
    assert run.check(_config(steps=40)) == "extendable"
    run.unfinish()
    assert run.status() == "interrupted"
    # Fields added to ftstudy since a run was made: ``complete`` fills them before comparing.
    old = _config(steps=20)
    del old["train"]["lr"]
    run.write_config({"config": old})
    with pytest.raises(RunError, match="train.lr: None"):
        run.check(_config(steps=20))
    assert run.check(_config(steps=20), complete=lambda d: get_preset("synthetic-tiny", {"steps": 20}).to_dict()) \
        == "interrupted"
    with pytest.raises(RunError, match="cannot be read as an ftstudy config"):
        run.config(complete=lambda d: d["nope"])
    run.delete()
    assert run.status() == "new" and run.path.is_dir() and not any(run.path.iterdir())


def test_copy_marks_the_source_and_refuses_a_non_empty_target(tmp_path: Path) -> None:
    src = StudyDir(tmp_path / "a").run("r")
    src.path.mkdir(parents=True)
    src.write_config({"config": _config()})
    CsvTable(src.metrics_file, [{"step": 1, "split": "train", "kl_bits": 0.5}]).write()
    src.write_summary({"step": 1})
    dst = StudyDir(tmp_path / "b").run("r")
    dst.path.mkdir(parents=True)
    src.copy_to(dst)
    assert dst.status() == "finished" and dst.copied_from() == "a/r" and src.copied_from() is None
    assert dst.metrics() == [{"step": 1.0, "split": "train", "kl_bits": 0.5}] and dst.last_step() == 1
    assert not list(tmp_path.rglob(LOCK_NAME)) and not list((tmp_path / "b").glob(".r.copy*"))
    with pytest.raises(RunError, match="is not empty"):
        src.copy_to(dst)


# ---------------------------------------------------------------- what ftstudy made, and deleting it

_TRAIN_TINY = ["--preset", "synthetic-tiny", "--no-progress"]


def _finished_run(path: Path, *, marked: bool = True) -> RunDir:
    """A finished run of synthetic-tiny's config: marked (as train writes it now) or legacy
    (config.json alone, as every run committed before the marker)."""
    run = RunDir(path)
    run.path.mkdir(parents=True)
    record = {"config": _config(), "run": run.name}
    if marked:
        run.write_config(record)
    else:
        run.config_file.write_text(json.dumps(record))
    CsvTable(run.metrics_file, [{"step": 1, "split": "train"}]).write()
    run.make_ckpt_dir()
    run.model_file.write_bytes(b"weights")
    run.write_measurement("t1", {"agreement": 0.5})
    run.write_summary({"step": 1})
    return run


def _tree(path: Path) -> list[str]:
    return sorted(p.relative_to(path).as_posix() for p in path.rglob("*"))


def test_the_marker_says_what_made_the_folder(tmp_path: Path) -> None:
    run = _finished_run(tmp_path / "r")
    marker = (run.path / RunDir.MARKER).read_text()
    assert marker.count("\n") == 1 and len(marker) < 400
    fields = json.loads(marker)
    assert fields["kind"] == "ftstudy-run" and fields["version"] == 1 and isinstance(fields["command"], str)
    assert run.status() == "finished" and not run.is_legacy() and run.foreign() == []
    # A marker alone (written just before config.json) is no start.
    fresh = RunDir(tmp_path / "fresh")
    fresh.path.mkdir()
    (fresh.path / RunDir.MARKER).write_text(marker)
    assert fresh.status() == "new"
    # A marker of another kind marks nothing, even beside a complete config.
    (run.path / RunDir.MARKER).write_text('{"kind": "ftstudy-shards", "version": 1}\n')
    assert run.status() == "foreign"
    with pytest.raises(RunError, match="not an ftstudy run folder"):
        run.delete()
    assert run.summary_file.exists()


def test_a_config_json_of_the_right_outline_is_not_enough(tmp_path: Path, capsys) -> None:
    """The audit's case: a foreign config.json shaped {"config": {"model": {}, "task": {},
    "train": {}}} was taken for a run, and --overwrite deleted the data.txt beside it."""
    from ftstudy.run.train import main

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text(json.dumps({"config": {"model": {}, "task": {}, "train": {}}}))
    (mine / "data.txt").write_text("precious\n")
    assert RunDir(mine).status() == "foreign"
    for extra in (["--overwrite"], []):
        assert main([*_TRAIN_TINY, "--out", str(tmp_path), "--name", "mine", *extra]) == 3
        err = capsys.readouterr().err
        assert f"{mine} exists and is not an ftstudy run folder" in err and err.count("\n") == 1
    assert _tree(mine) == ["config.json", "data.txt"]  # not even a lock file
    assert (mine / "data.txt").read_text() == "precious\n"
    (mine / "data.txt").unlink()  # the outline alone is not enough either
    with pytest.raises(RunError, match="not an ftstudy run folder"):
        RunDir(mine).delete()
    assert _tree(mine) == ["config.json"]


@pytest.mark.parametrize("marked", [True, False], ids=["marked", "legacy"])
def test_deleting_a_run_refuses_foreign_names_and_deletes_nothing(tmp_path: Path, capsys, marked: bool) -> None:
    from ftstudy.run.train import main

    run = _finished_run(tmp_path / "r", marked=marked)
    assert run.is_legacy() is not marked and run.status() == "finished"
    (run.path / "notes.txt").write_text("mine\n")
    (run.path / "mydata").mkdir()
    (run.path / "mydata" / "x.csv").write_text("1\n")
    (run.path / "big").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    before = _tree(run.path)
    assert run.foreign() == ["big@", "mydata/", "notes.txt"]
    with pytest.raises(RunError, match=r"holds 3 name\(s\) ftstudy does not write \(big@, mydata/, notes.txt\)"):
        run.delete()
    assert main([*_TRAIN_TINY, "--out", str(tmp_path), "--name", "r", "--overwrite"]) == 3
    err = capsys.readouterr().err
    assert "big@, mydata/, notes.txt" in err and "nothing was deleted" in err and err.count("\n") == 1
    assert _tree(run.path) == before  # nothing deleted, not even the summary
    # Reading is not refused: the run is still finished and measured.
    assert run.summary() == {"step": 1} and run.measurement("t1") == {"agreement": 0.5}
    for name in ("notes.txt", "big"):
        (run.path / name).unlink()
    (run.path / "mydata" / "x.csv").unlink()
    (run.path / "mydata").rmdir()
    run.delete()
    assert run.status() == "new" and _tree(run.path) == []


def test_runs_committed_before_the_marker_are_legacy_runs(tmp_path: Path) -> None:
    """Every committed run has no marker: each reads as a finished ftstudy run whose folder
    holds only names ftstudy writes (what --overwrite would delete; checked, nothing deleted)."""
    committed = [RunDir(f.parent) for f in sorted((REPO / "results").rglob(RunDir.CONFIG))
                 if RunDir.CKPT not in f.parent.parts]
    assert len(committed) >= 200
    for run in committed:
        status = run.check_deletable()  # RunError if any were foreign or held a foreign name
        assert status == "finished" or not run.is_legacy(), run.path  # (a run training here now is marked)
    assert sum(r.is_legacy() for r in committed) >= 200, "the committed runs were made before the marker"
    # A legacy run copied elsewhere gets a marker (and its source none).
    old = _finished_run(tmp_path / "a" / "old", marked=False)
    dst = StudyDir(tmp_path / "b").run(old.name)
    dst.path.mkdir(parents=True)
    old.copy_to(dst)
    assert dst.status() == "finished" and not dst.is_legacy() and old.is_legacy()
    # A legacy config needs the fields every ftstudy has written: one field short is foreign.
    record = old.record()
    del record["config"]["train"]["steps"]
    old.config_file.write_text(json.dumps(record))
    assert old.status() == "foreign"


def test_nothing_is_written_or_deleted_through_a_link(tmp_path: Path, capsys) -> None:
    """The audit's case: a symlink in one --out pointing at a run emptied that run."""
    from ftstudy.run.train import main

    target = _finished_run(tmp_path / "a" / "r")
    before = _tree(target.path)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "r").symlink_to(target.path, target_is_directory=True)
    linked = RunDir(tmp_path / "b" / "r")
    assert linked.status() == "finished" and linked.summary() == {"step": 1}  # reading through it is fine
    with pytest.raises(RunError, match=r"run folder .*/b/r is a symbolic link \(to .*/a/r\)"):
        linked.delete()
    with pytest.raises(RunError, match="is a symbolic link"), linked.lock():
        pass
    for extra in (["--overwrite"], []):
        assert main([*_TRAIN_TINY, "--out", str(tmp_path / "b"), "--name", "r", *extra]) == 3
        err = capsys.readouterr().err
        assert f"run folder {tmp_path / 'b' / 'r'} is a symbolic link" in err and err.count("\n") == 1
    # An --out that is a link: refused by name too, before anything is written.
    (tmp_path / "out").symlink_to(tmp_path / "a", target_is_directory=True)
    assert main([*_TRAIN_TINY, "--out", str(tmp_path / "out"), "--name", "r", "--overwrite"]) == 3
    err = capsys.readouterr().err
    assert f"{tmp_path / 'out'} is a symbolic link (to {tmp_path / 'a'})" in err and err.count("\n") == 1
    assert main([*_TRAIN_TINY, "--out", str(tmp_path / "out"), "--name", "new"]) == 3
    assert "is a symbolic link" in capsys.readouterr().err
    assert _tree(target.path) == before and sorted(p.name for p in (tmp_path / "a").iterdir()) == ["r"]
    # A copy into a linked run folder is refused as well.
    with pytest.raises(RunError, match="is a symbolic link"):
        target.copy_to(RunDir(tmp_path / "b" / "r"))
    assert _tree(target.path) == before


def test_one_csv_writer(tmp_path: Path) -> None:
    table = CsvTable(tmp_path / "t.csv", [{"a": 1, "b": None}, {"b": True, "c": 0.1}])
    table.write()
    assert table.path.read_bytes() == b"a,b,c\r\n1,,\r\n,True,0.1\r\n"  # csv's own dialect, columns as met
    assert CsvTable(table.path).load().rows == [{"a": "1", "b": "", "c": ""}, {"a": "", "b": "True", "c": "0.1"}]
    assert CsvTable(table.path).load(keep=lambda r: r["a"] == "1").rows == [{"a": "1", "b": "", "c": ""}]
    assert CsvTable(tmp_path / "missing.csv").load().rows == []


def test_study_folder_names(tmp_path: Path) -> None:
    study = StudyDir(tmp_path / "kl_budget")
    assert study.figure() == tmp_path / "figures" / "kl_budget.png"
    assert study.figure(tmp_path / "f", "dynamics") == tmp_path / "f" / "kl_budget_dynamics.png"
    assert study.figure4(2, suffix=".txt") == tmp_path / "figures" / "figure4_s2.txt"
    assert study.log_file("r") == study.logs_dir / "r.log" and study.config_file("r").parent == study.logs_dir
    assert study.runs() == []
    for name, finished in (("b", True), ("a", False)):
        run = study.run(name)
        run.path.mkdir(parents=True)
        run.write_config({"config": _config()})
        if finished:
            run.write_summary({})
    study.logs_dir.mkdir()
    assert [r.name for r in study.runs()] == ["a", "b"] and [r.name for r in study.runs(finished=True)] == ["b"]


def test_studies_are_typed_and_equal_to_their_command_lines() -> None:
    base = get_preset("synthetic-quick", {"n_layers": "6"})
    assert STUDIES["injection_depth"].points == ({"inject_layer": EachBelow("n_layers")},)
    assert [p["inject_layer"] for p in STUDIES["injection_depth"].grid(base)] == [1, 2, 3, 4, 5]
    eighth = STUDIES["kappa_eighth"].grid(get_preset("synthetic-quick"))
    assert {"kappa_bits": 0.125, "steps": 3000} in eighth and {"kappa_bits": 0.125, "batch_size": 128} in eighth
    assert STUDIES["kappa_eighth"].points[1] == {"steps": Times(3)}
    kl = STUDIES["kl_budget"]
    assert all(type(p["kappa_bits"]) is float for p in kl.grid(base)[1:]) and kl.grid(base)[0] == {"latent_bits": 0}
    assert kl.axis.log and not kl.axis.categorical and kl.figure4_kappas == (1 / 64, 1 / 8, 1.0, 8.0)
    assert STUDIES["free_bits_scope"].axis.categorical and STUDIES["kappa_eighth"].axis.key == "change"
    # Typed grid values, no string round trip: each run's config is exactly what its recorded
    # ftstudy.run.train arguments ask for.
    runs = plan("all", "quick", [7], {"steps": "12"}, Path("/x")) + plan("kl_budget", "long", [0], {}, Path("/x"))
    for r in runs:
        assert config_from_args(build_parser().parse_args(r.argv)) == r.config, r.argv


def test_config_file_records_the_same_command_as_the_argv_path(tmp_path: Path, capsys) -> None:
    r = [r for r in plan("kl_budget", "demo", [0], {"dim": "16"}, tmp_path) if r.config.model.is_free][2]
    tail = ["--out", str(r.run_dir.parent), "--name", r.run_dir.name, "--no-progress", "--wait"]
    old = build_parser().parse_args([*r.argv, *tail])  # what a child of ablate --jobs was given before
    f = write_config_file(tmp_path / "c.json", r.config.to_dict(), r.argv)
    new = build_parser().parse_args(["--config", str(f), *tail])
    assert config_and_command(new, None) == (r.config, [*r.argv, *tail]) == (config_from_args(old), [*r.argv, *tail])
    # A bare config (what --print-config prints) or a run's config.json: the command line itself.
    (tmp_path / "bare.json").write_text(r.config.to_json())
    assert read_config_file(tmp_path / "bare.json") == (r.config.to_dict(), None)
    bare = ["--config", str(tmp_path / "bare.json"), "--out", str(tmp_path)]
    assert config_and_command(build_parser().parse_args(bare), bare) == (r.config, bare)
    # Arguments that do not give the config, a mixed command line, an unreadable file: refused.
    write_config_file(tmp_path / "lie.json", r.config.to_dict(), [*r.argv, "lr=0.5"])
    with pytest.raises(ConfigError, match="do not reproduce its config"):
        config_and_command(build_parser().parse_args(["--config", str(tmp_path / "lie.json")]), None)
    from ftstudy.run.train import main as train_main

    assert train_main(["--config", str(f), "--set", "lr=0.5"]) == 2
    assert "drop --preset, --set" in capsys.readouterr().err
    assert train_main(["--config", str(tmp_path / "missing.json")]) == 2
    assert "missing.json" in capsys.readouterr().err
    assert train_main(["--config", str(f), "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out) == r.config.to_dict()
    assert shlex.join(r.argv).startswith("--preset synthetic-demo --set dim=16 kappa_bits=")


@pytest.mark.parametrize("study", ["injection_depth", "kappa_eighth", "free_bits_scope"])
def test_committed_tables_rebuild_byte_for_byte(study: str, tmp_path: Path) -> None:
    """summary.csv, aggregate.csv and aggregate.md from the committed run files alone."""
    committed = StudyDir(REPO / "results" / "ablate" / study)
    rebuilt = StudyDir(tmp_path / study)
    rebuilt.path.mkdir()
    for run in committed.runs():
        (rebuilt.path / run.name).symlink_to(run.path, target_is_directory=True)
    assert rebuild_summary(rebuilt.path, STUDIES[study]) == rebuilt.summary_file
    for name in (StudyDir.SUMMARY, StudyDir.AGGREGATE_CSV, StudyDir.AGGREGATE_MD):
        assert (rebuilt.path / name).read_bytes() == (committed.path / name).read_bytes(), name


def test_only_the_folder_classes_spell_their_file_names() -> None:
    names = {v for cls in (RunDir, StudyDir) for k, v in vars(cls).items() if k.isupper() and isinstance(v, str)}
    names |= {f"{RunDir.CKPT}/{RunDir.LAST_CKPT}", f"{RunDir.CKPT}/{RunDir.MODEL}"}
    found = []
    for path in sorted((REPO / "ftstudy").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        if rel == "ftstudy/io.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in names:
                found.append(f"{rel}:{node.lineno}: {node.value!r}")
    assert found == []
