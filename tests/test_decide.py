"""The decision benchmark (issue 23): its scorers on hand-made samples, the seed-conditioned
corpus, the lm-eval tasks, the harness's seed prefix, shared-Z route agreement, the calibration
curves and the seed-level report with its gates and verdicts."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import pytest
import torch

from ftstudy.core.checkpoint import save_model
from ftstudy.core.config import ModelConfig, RunConfig, TaskConfig
from ftstudy.core.model import FreeTransformer
from ftstudy.eval import decide as D
from ftstudy.eval.evaluate import entry_paths, read_samples, write_samples
from ftstudy.tasks import creativity, decide, routegen


def _route_doc() -> dict:
    p = routegen.eval_problems("main", 1)[0]
    return {"id": "x", "prompt": p.prompt, "answer": p.answer, **p.meta}


def test_route_scores_by_hand() -> None:
    doc = _route_doc()
    r0, r1 = doc["routes"]
    samples = [f" {r0}\n", f" {r0}\n", f" {r1}\n", " Z Z\n", f" {doc['source']}\n"] + [f" {r1}\n"] * 5
    s = decide.route_scores(doc, samples)
    assert s["pass@1"] == pytest.approx(8 / 10)
    assert s["distinct_correct"] == 2
    assert s["route_a"] == pytest.approx(2 / 10)
    # valid samples: 1.0 each; "Z Z": no edge (0); one node: counts 0
    assert s["edge_validity"] == pytest.approx(8 / 10)
    with pytest.raises(TypeError, match="expected a list of generated str"):
        decide.route_scores(doc, [])


def test_creative_scores_by_hand() -> None:
    train = sorted(creativity.training_examples("triangle"))
    held = sorted(creativity.heldout_examples("triangle"))
    doc = decide.eval_rows("triangle")[0]
    line = creativity.answer_line
    samples = [line(held[0]), line(held[0]), line(held[1]), line(train[0]), " xx yy\n"] + [" garbage\n"] * 5
    s = decide.creative_scores(doc, samples)
    assert s["valid"] == pytest.approx(4 / 10)
    assert s["novel"] == pytest.approx(3 / 10)
    assert s["creativity"] == pytest.approx(2 / 10) == s["pass@1"]


def test_training_documents_prefixed_are_the_same_documents() -> None:
    plain = list(decide.training_documents(300, seed=3))
    pre = list(decide.training_documents(300, seed=3, prefixed=True))
    fams = {f for f, _ in plain}
    assert fams == {"route", "sibling", "triangle"}
    for (f0, t0), (f1, t1) in zip(plain, pre):
        assert f0 == f1 and t1.endswith(t0)
        prefix = t1[: len(t1) - len(t0)]
        assert len(prefix) == decide.PREFIX_LEN + 2 and prefix[0] == "#" and prefix[-1] == "\n"
        assert prefix[1:-1].isalpha() and prefix[1:-1].islower()
    assert len({t[:6] for _, t in pre}) > 290, "prefixes are random"
    assert max(len(t.encode()) for _, t in pre) < 160, "every document fits the decide-small context"
    held = {p.key for c in routegen.CONDITIONS for p in routegen.eval_problems(c, decide.N_ROUTE)}
    train_keys = {routegen.route_key(c, p.edges, p.source, p.target)
                  for p in routegen.training_problems(2000, seed=3) for c in [p.condition]}
    assert not held & train_keys


def test_lm_eval_tasks_render() -> None:
    from ftstudy.eval import suite
    files = suite.render()
    for t in decide.TASKS:
        y = files[f"ftstudy_decide_{t}.yaml"].decode()
        assert f"decide_{t}.test.jsonl" in y and f"metrics.decide_{t}" in y
        rows = [json.loads(x) for x in files[f"decide_{t}.test.jsonl"].decode().splitlines()]
        assert len(rows) == (decide.N_ROUTE if t.startswith("route") else decide.N_CREATIVE_DOCS)
        assert f"ftstudy_decide_{t}" in suite.TASKS
    assert "ftstudy_decide" in suite.GROUPS
    from ftstudy.eval.suite import metrics
    doc = _route_doc()
    assert metrics.decide_route_main(doc, [[f" {doc['routes'][0]}\n"] * 10])["pass@1"] == 1.0


def _cfg(latent_bits: int) -> RunConfig:
    m = ModelConfig(vocab_size=258, n_layers=2, dim=32, n_heads=2, max_seq_len=160, latent_bits=latent_bits,
                    kappa_bits=1.0)
    return RunConfig(model=m, task=TaskConfig(name="tokens", data_dir="unused", n_generate=0, probe_independent=0,
                                              probe_groups=0))


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = {}
    for name, h in (("free", 4), ("base", 0)):
        torch.manual_seed(0)
        cfg = _cfg(h)
        path = tmp_path_factory.mktemp("ckpt") / f"{name}.pt"
        save_model(path, FreeTransformer(cfg.model), cfg, step=0, extra={"tokenizer": {"kind": "byte"}})
        out[name] = path
    return out


def test_harness_seed_prefix(ckpts: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from ftstudy.eval.harness import FTStudyLM, HarnessError

    class Req:
        def __init__(self, ctx: str) -> None:
            self.args = (ctx, {"until": ["\n"], "max_gen_toks": 2, "do_sample": True, "temperature": 1.0})

    def fed(lm: FTStudyLM) -> list[str]:
        seen: list[str] = []

        def capture(prompts, *a, **k):
            seen.extend(lm.tok.decode(p) for p in prompts)
            return [""] * len(prompts)

        monkeypatch.setattr(lm, "_generate_batch", capture)
        lm.generate_until([Req("Route from A to B:")] * 3, disable_tqdm=True)
        return seen

    lm = FTStudyLM(ckpts["base"], seed_prefix="true")
    first = fed(lm)
    assert len(set(first)) == 3 and all(t[0] == "#" and t.endswith("\nRoute from A to B:") for t in first)
    assert fed(FTStudyLM(ckpts["base"], seed_prefix=True)) == first, "prefixes are seeded"
    assert all(t == "Route from A to B:" for t in fed(FTStudyLM(ckpts["base"])))
    with pytest.raises(HarnessError, match="seed_prefix = 'maybe' is not allowed"):
        FTStudyLM(ckpts["base"], seed_prefix="maybe")


def test_route_agreement_runs_and_is_bounded(ckpts: dict[str, Path]) -> None:
    st = {"problems": 2, "groups": 2, "per_group": 3, "max_new": 12}
    res = D.route_agreement(ckpts["free"], "free", settings=st)
    assert res["valid_shared"] is not None and 0 <= res["valid_shared"] <= 1
    for k in ("shared", "independent", "chance"):
        assert res[k] is None or 0 <= res[k] <= 1
    assert D.route_agreement(ckpts["base"], "base", settings=st)["shared"] is None
    res = D.route_agreement(ckpts["base"], "seeded", seed_prefix=True, settings=st)
    assert res["seed_prefix"] and 0 <= res["valid_independent"] <= 1


def test_calibration_curves_table(tmp_path: Path) -> None:
    rows = []
    for s, step in itertools.product((0, 1, 2), (300, 600)):
        for t in decide.TASKS:
            good = step == 600
            rows.append({"seed": s, "step": step, "task": t, "pass@1": 0.5 if good else 0.1,
                         **({"edge_validity": 0.95 if good else 0.5} if t.startswith("route") else
                            {"valid": 0.9 if good else 0.3})})
    D._write_curves(tmp_path, rows)
    md = (tmp_path / "CURVES.md").read_text()
    assert "| 300 |" in md and md.split("| 300 |")[1].split("\n")[0].endswith("— |")
    assert md.split("| 600 |")[1].split("\n")[0].endswith("pass |")
    assert (tmp_path / "curves.csv").read_text().count("\n") == len(rows) + 1
    from ftstudy.results import plots
    fig = plots.plot_decide_curves(tmp_path / "curves.csv")
    assert len(fig.axes) == len(decide.TASKS)


def test_k_of_n_counts_the_seeds_beyond_the_reference_mean() -> None:
    assert D._k_of_n([0.2, 0.4], [0.5, 0.25, 0.35]) == [2, 3]
    assert D._k_of_n([0.5, 0.7], [0.1, 0.65, 0.3]) == [2, 3], "a drop counts the seeds below the mean"
    assert D._k_of_n([0.3, 0.3], [0.3, 0.3]) == [0, 2]


def _fake_samples(out: Path, seed: int, label: str, level: dict[str, float], sub: str = "",
                  edges: float = 0.97) -> None:
    """A samples file like evaluate_one's: every task, per-document metrics around ``level``."""
    rng = random.Random(f"{seed}:{label}:{sub}")
    samples = {}
    for t in decide.TASKS:
        n_docs = 40 if t.startswith("route") else decide.N_CREATIVE_DOCS
        rows = []
        for i in range(n_docs):
            c = sum(rng.random() < level.get(t, 0.4) for _ in range(decide.REPEATS))
            r = {"doc_id": i, "filter": "samples", "pass@1": c / decide.REPEATS, "response": ""}
            if t.startswith("route"):
                r.update(distinct_correct=float(min(c, 2)), edge_validity=edges, route_a=c / 2 / decide.REPEATS)
            else:
                r.update(valid=0.9, novel=0.5, creativity=r["pass@1"])
            rows.append(r)
        samples[f"ftstudy_decide_{t}"] = rows
    path = entry_paths(out / f"s{seed}" / sub if sub else out / f"s{seed}", label)[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_samples(path, samples)


def test_report_gates_tests_and_verdicts(tmp_path: Path) -> None:
    seeds = [0, 1, 2, 3, 4]
    labels = ["baseline", "matched (L=5)", "seeded baseline", "free k=0.5", "free k=1"]
    for s in seeds:
        for lab in labels:
            level = {t: 0.4 for t in decide.TASKS}
            level["route_two_routes"] = 0.9
            if lab == "free k=1":
                level["route_main"] = 0.75  # a large gain where the decision is needed
            # the baseline's seed 0 does not read the graph of control (b): that task is not gated
            edges = 0.5 if (lab == "baseline" and s == 0) else 0.97
            _fake_samples(tmp_path, s, lab, level, edges=edges)
            if lab.startswith("free"):
                _fake_samples(tmp_path, s, lab, level, sub="prior")
            if lab == "baseline" and s == 0:
                # only control (b) gets the bad edge validity
                path = entry_paths(tmp_path / "s0", lab)[1]
                data = read_samples(path)
                for t in ("route_main", "route_two_routes"):
                    for r in data[f"ftstudy_decide_{t}"]:
                        r["edge_validity"] = 0.97
                write_samples(path, data)
    rep = D.pooled_report(tmp_path, seeds)
    main = rep["tasks"]["route_main"]
    assert main["gate"] == {"beats_chance": True, "in_range": True, "reads_graph": True, "passed": True}
    assert main["models"]["baseline"]["pass@1_by_seed"] and len(main["models"]["free k=1"]["pass@1_by_seed"]) == 5
    c = main["comparisons"]["free k=1 vs baseline"]
    assert c["verdict"] == "shown" and c["diff"] > 0.25 and c["p_holm"] >= c["p"]
    assert c["k_of_n"] == [5, 5], "every Free seed lies above the baseline's mean"
    assert c["bootstrap"]["ci_low"] > 0, "the secondary column is there"
    assert "free k=1 vs matched (L=5)" in main["comparisons"]
    assert main["comparisons"]["matched (L=5) vs baseline"]["verdict"] in ("inconclusive",) or \
        main["comparisons"]["matched (L=5) vs baseline"]["verdict"].startswith("no effect within ±")
    assert "in_range" not in rep["tasks"]["route_two_routes"]["gate"], "control (a) is a ceiling control"
    # creativity: gated on the valid rate (RULE.md, amendment 1), compared at its floor
    assert rep["tasks"]["sibling"]["gate"] == {"learned": True, "passed": True}
    assert decide.creative_valid_rates("sibling")["memorizer"] == 1.0
    one = rep["tasks"]["route_one_route"]
    assert one["gate"]["reads_graph"] is False and not one["gate"]["passed"]
    assert all(v["verdict"].startswith("not gated") for v in one["comparisons"].values())
    assert "p_holm" not in one["comparisons"]["free k=1 vs baseline"], "an ungated task is outside the family"
    assert rep["difference_in_differences"]["free k=1"]["diff"] > 0.2
    assert rep["tasks"]["route_main"]["prior_z"]["free k=1"]["pass@1"] > 0.6
    assert set(rep["diversity_fixed_correct"]["route_main"]) == set(labels)
    md = (tmp_path / "report.md").read_text()
    assert "| route_main | free k=1 vs baseline |" in md and "shown" in md
    from ftstudy.results import plots
    table = plots.decide_table(tmp_path / "report.json")
    assert list(table.index) == list(decide.TASKS) and table.loc["route_one_route", "gate"].startswith("fail")
    comps = plots.decide_comparisons(rep)
    assert comps.loc[("route_main", "free k=1 vs baseline"), "verdict"] == "shown"
    assert comps.loc[("route_main", "free k=1 vs baseline"), "k of n"] == "5 of 5"
    fig = plots.plot_decide(rep)
    assert len(fig.axes) == 2 * len(decide.TASKS) and "gate passed" in fig.axes[0].get_title()
    assert "gate failed" in fig.axes[2].get_title(), "control (b) fails its gate in this fake report"
    assert fig.axes[len(decide.TASKS)].get_title() == "edge validity" and fig.axes[-1].get_title() == "valid"
    # the README's claims rows read the same report
    from ftstudy.results import claims
    root = tmp_path / "repo"
    (root / claims.DECIDE).parent.mkdir(parents=True)
    (root / claims.DECIDE).write_text((tmp_path / "report.json").read_text())
    verdict, seeds = claims._decide_answer("route_main")(root)
    assert "κ 1 **shown**" in verdict and "κ 1 5 of 5 above" in seeds and "matched " in verdict
    verdict, _ = claims._decide_answer("route_one_route")(root)
    assert verdict == "not gated: a baseline seed fails the gate (reads_graph)"
    row = claims._decide_task("route_main", "two routes", "pass@1")(root)
    assert row.startswith("two routes, pass@1 (5 seeds; Welch over seeds): baseline 0.") and "gate passed" in row
    assert "walker 0.375" in row and f"κ 1 {main['models']['free k=1']['pass@1']:.3f} (Δ [" in row


def test_snapshots_and_the_retrain_of_a_missing_checkpoint(tmp_path: Path) -> None:
    """``train.snapshot_every`` keeps the model along one schedule (the calibration curves), and
    the benchmarks' eval stage retrains a finished run whose model.pt is gone (a fresh clone),
    checked against its committed summary."""
    from ftstudy.eval.benchmark import ensure_models
    from ftstudy.eval.evaluate import EvalError
    from ftstudy.io import RunDir
    from ftstudy.run.train import main as train_main

    run = RunDir(tmp_path / "run")
    assert train_main(["--preset", "synthetic-tiny", "--set", "steps=10", "--snapshot-every", "5", "--out",
                       str(tmp_path), "--name", "run", "--no-progress"]) == 0
    assert sorted(run.snapshots()) == [5, 10]
    snap = torch.load(run.snapshot_file(10), weights_only=True)
    final = torch.load(run.model_file, weights_only=True)
    assert all(torch.equal(snap["state_dict"][k], v) for k, v in final["state_dict"].items())
    assert ensure_models([run.path], 1e-6) == {"run": "checkpoint"}
    run.model_file.unlink()
    assert ensure_models([run.path], 1e-6) == {"run": "retrained"}
    assert run.model_file.is_file()
    # a committed summary that the retrain does not reproduce is refused, with the way out named
    run.model_file.unlink()
    s = run.summary()
    s["val"]["ce_prior"] += 0.5
    run.write_summary(s)
    with pytest.raises(EvalError, match="--retrain-tolerance"):
        ensure_models([run.path], 1e-6)
    with pytest.raises(EvalError, match="not trained yet"):
        ensure_models([tmp_path / "nothing"], 1e-6)


def test_the_gpu_comparison_is_planned_priced_and_kept_apart(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """``ftstudy decide --device cuda --dry-run`` (the prepared GPU command, planned on a CPU):
    every model trains with accelerator=gpu and the --set given, the evaluations run on cuda,
    results go under results/gpu/<gpu>/ by default, and nothing is trained or written."""
    planned = D._planned([0, 1], tmp_path, D._overrides(D.build_parser().parse_args(
        ["--device", "cuda", "--set", "compile=true"])))
    assert len(planned) == 10 and all(cfg.train.accelerator == "gpu" and cfg.train.compile for *_, cfg in planned)
    assert all("acceleratorgpu" in d.name for _, _, d, _ in planned)
    todo = D._eval_todo(planned, tmp_path, "cuda")
    assert len(todo) == 14 and all(t[-1] == "cuda" for t in todo), "Free models twice: prefill and prior Z"
    assert D.default_out("cuda").relative_to(D.REPO_ROOT).as_posix().startswith("results/gpu/")
    assert D.default_out("cpu") == D.DEFAULT_OUT
    assert D.main(["--device", "cuda", "--seeds", "0", "1", "--jobs", "4", "--set", "compile=true", "--dry-run",
                   "--out", str(tmp_path / "gpu")]) == 0
    out = capsys.readouterr().out
    assert "then 14 evaluations (5 tasks, 10 samples per document) on cuda, 4 at a time" in out
    assert not (tmp_path / "gpu").exists()
    assert D.main(["--device", "cuda", "--set", "accelerator=cpu", "--dry-run", "--out", str(tmp_path / "x")]) == 2
    assert "--device cuda and --set accelerator=cpu disagree" in capsys.readouterr().err
