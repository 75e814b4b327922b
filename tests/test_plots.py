"""ftstudy.results.plots: tables and figures from result files, checked on small hand-made runs and
on the committed results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ftstudy.results import plots
from ftstudy.study.ablate import main as ablate_main
from ftstudy.study.studies import STUDIES
from ftstudy.results.claims import REPO_ROOT

RESULTS = REPO_ROOT / "results"
S0 = RESULTS / "benchmarks" / "code-math-small" / "s0" / "report.json"


def _fake_run(root: Path, name: str, kappa: float | None, seed: int, kls: list[float]) -> Path:
    d = root / name
    d.mkdir(parents=True)
    cfg = {"model": {"latent_bits": 0 if kappa is None else 8, "kappa_bits": kappa}, "train": {"seed": seed},
           "task": {}}
    (d / "config.json").write_text(json.dumps({"config": cfg}))
    rows = ["step,split,kl_bits,ce_prior"]
    for i, kl in enumerate(kls):
        rows.append(f"{10 * (i + 1)},train,{'' if kappa is None else kl},")
    rows.append(f"{10 * len(kls)},val,,0.5")
    (d / "metrics.csv").write_text("\n".join(rows) + "\n")
    return d


def test_collapse_events_against_a_naive_reading(tmp_path: Path) -> None:
    kls = {
        ("a", 0.125, 0): [0.1, 0.2, 0.1, 0.12, 0.11, 0.1, 0.1, 0.1],  # in use throughout
        ("b", 0.125, 1): [0.1, 0.05, 0.02, 0.005, 0.001, 0.0, 0.0, 0.0],  # collapses after step 30
        ("c", 1.0, 0): [0.5, 0.001, 0.001, 0.001, 0.001, 0.001, 0.001, 0.02],  # back up at the end
    }
    for (name, k, s), v in kls.items():
        _fake_run(tmp_path, name, k, s, v)
    _fake_run(tmp_path, "base", None, 0, [0.0] * 8)
    ev = plots.collapse_events(tmp_path, "kappa_bits")
    assert len(ev) == 3  # the baseline has no latent
    for (name, k, s), v in kls.items():
        row = ev[(ev["kappa_bits"] == k) & (ev["seed"] == s)].iloc[0]
        naive_collapsed = all(x < 0.01 for x in v[6:])  # last quarter of 8 logged steps
        assert bool(row["collapsed"]) == naive_collapsed
        above = [10 * (i + 1) for i, x in enumerate(v) if x >= 0.01]
        after = None if above[-1] == 10 * len(v) else above[-1]
        got = row["KL below threshold after step"]
        assert (after is None and got != got) or got == after  # NaN for "ended above"
    fig = plots.plot_dynamics(tmp_path, "kappa_bits")
    assert len(fig.axes) == 4  # two κ columns × (KL, CE)
    plots.show(fig)


def test_benchmark_tables_have_the_papers_layout() -> None:
    table = plots.benchmark_table(S0)
    groups = list(dict.fromkeys(table.index.get_level_values("group")))
    assert groups == ["Generative code", "Generative math", "Likelihood (lower is better)"]
    assert list(table.columns) == ["baseline", "free k=0.25", "free k=0.5", "free k=1", "free k=2"]
    bpb = table.xs("ftstudy_humaneval_bpb", level="task").iloc[0]
    assert bpb["baseline"] == "2.019" and "Δ" in bpb["free k=2"] and "p=0.001" in bpb["free k=2"]
    full = plots.benchmark_table(S0, subtasks=True)
    assert len(full) == len(table) + 10  # the ten arithmetic subtasks
    ppl = plots.perplexity_table(S0)
    assert list(ppl.index) == ["nll_prior", "elbo", "iwae_16"]
    assert ppl.loc["nll_prior", "baseline"].startswith("1.084 (")
    plots.show(plots.plot_benchmark_deltas(S0))
    plots.show(plots.plot_perplexity(S0))


def test_study_table_and_missing_results(tmp_path: Path, capsys) -> None:
    aggs = plots.study_aggregates(RESULTS / "ablate" / "kl_budget", STUDIES["kl_budget"])
    table = plots.study_table(aggs, "kappa_bits")
    row = table[table["kappa_bits"] == "8.0"].iloc[0]
    assert row["seeds"] == 10 and row["valid"].count("[") == 1
    assert plots.have(RESULTS / "ablate" / "kl_budget" / "summary.csv", "unused")
    assert not plots.have(tmp_path / "nope.json", "python -m ftstudy.perf suite")
    err = capsys.readouterr().err
    assert "MISSING RESULT" in err and "python -m ftstudy.perf suite" in err


def test_synthetic_examples_are_checked() -> None:
    ex = plots.synthetic_examples(6, seed=3)
    assert ex["checker: valid"].all() and not ex["corrupted copy valid"].any()
    assert (ex["checker: position"] <= ex["block at"]).all()


def test_ablate_plot_draws_the_same_figures(tmp_path: Path, capsys) -> None:
    assert ablate_main(["--study", "kl_budget", "--plot", "--out", str(RESULTS / "ablate"),
                        "--figures", str(tmp_path)]) == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    # The committed study is re-measured under the t1 and paper sampling protocols (ablate --measure).
    assert names == ["figure4_paper_s0.png", "figure4_s0.png", "figure4_s0.txt", "figure4_t1_s0.png",
                     "kl_budget.png", "kl_budget_agreement_position_paper.png",
                     "kl_budget_agreement_position_t1.png", "kl_budget_dynamics.png"]
    assert ablate_main(["--study", "kl_budget", "--plot", "--out", str(tmp_path / "none")]) == 3
    assert "no finished runs" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["nope", "perf"])
def test_perf_tables_without_mapper_rows_refuse_to_plot(tmp_path: Path, bad: str) -> None:
    if bad == "perf":
        (tmp_path / "other.json").write_text(json.dumps([{"x": 1}]))
    with pytest.raises(ValueError, match="no mapper benchmark"):
        plots.plot_mapper(plots.perf_tables(tmp_path))
