"""Sampling protocols, calibration and ``ablate --measure``: a finished run re-measured from its
checkpoint or by training it again, the agreement tables, and τ reaching the sampler."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from ftstudy.core.checkpoint import load_model
from ftstudy.io import RunDir, StudyDir
from ftstudy.study import protocols
from ftstudy.study.ablate import main
from ftstudy.study.measure import reproduces
from ftstudy.tasks import agreement, synthetic
from ftstudy.tasks.probe import generate_synthetic

# The quick preset shrunk to seconds per run (as tests/test_ablate.py), with enough probe groups to pair.
TINY = ["n_layers=2", "dim=16", "n_heads=2", "batch_size=8", "val_size=8", "n_generate=8", "probe_independent=3",
        "probe_groups=2", "probe_group_size=3", "val_every=10", "ckpt_every=10", "log_every=5", "steps=20",
        "warmup_steps=2", "precision=32-true"]


def _args(out: Path, *extra: str) -> list[str]:
    return ["--study", "kl_budget", "--preset", "quick", "--set", *TINY, "--seeds", "0", "--only", "kappa_bits=1/8",
            "--out", str(out), *extra]


@pytest.fixture(scope="module")
def measured(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("measure")
    assert main(_args(out, "--measure", "t1", "temperature=0.5,top_p=0.9")) == 0
    return out


def _run(out: Path) -> RunDir:
    (run,) = StudyDir(out / "kl_budget").runs(finished=True)
    return run


def test_protocol_names_and_errors(tmp_path: Path) -> None:
    assert protocols.protocol("t1").sampling == {"temperature": 1.0, "top_k": None, "top_p": None}
    p = protocols.protocol("temperature=0.5,top_p=0.9,top_k=3")
    assert (p.name, p.temperature, p.top_p, p.top_k) == ("t0.5-p0.9-k3", 0.5, 0.9, 3)
    for bad, words in (("tau=0.5", "keys temperature, top_k, top_p"), ("temperature=hot", "is not a number"),
                       ("temperature=-1", "must be a finite number >= 0"), ("top_p=1.5", "must be in (0, 1]")):
        with pytest.raises(ValueError, match=words.replace("(", r"\(").replace("]", r"\]")):
            protocols.protocol(bad)
    with pytest.raises(ValueError, match="run python -m ftstudy.calibrate"):
        protocols.protocol("paper", calibration=tmp_path / "none.json")
    cal = tmp_path / "cal.json"
    cal.write_text(json.dumps({"temperature": 0.55}))
    assert protocols.protocol("paper", calibration=cal).temperature == 0.55
    cal.write_text(json.dumps({"tau": 0.55}))
    with pytest.raises(ValueError, match="not a calibration file"):
        protocols.protocol("paper", calibration=cal)


def test_measure_writes_each_protocol_and_t1_reproduces_the_run(measured: Path) -> None:
    run = _run(measured)
    t1, sharp = run.measurement("t1"), run.measurement("t0.5-p0.9")
    assert t1["same_as_run_groups"] is True  # the run's own probe, made again from the checkpoint
    assert run.measure_file("t1", "groups").read_bytes() == run.groups_file.read_bytes()
    assert sharp["sampling"] == {"temperature": 0.5, "top_k": None, "top_p": 0.9}
    assert sharp["same_as_run_groups"] is None and t1["model"] == "checkpoint"
    for m in (t1, sharp):
        a = m["agreement"]
        for key in ("exact_shared", "within2_shared", "exact_independent"):
            if a[key] is not None:
                assert 0 <= a[f"{key}_ci_low"] <= a[key] <= a[f"{key}_ci_high"] <= 1
        post = m["posterior"]
        assert post["sources"] == 32 and len(agreement.read_groups(run.measure_file(m["protocol"], "posterior"))) \
            == 32 * 3
    # The study's tables: one section per protocol, the paper figure's panels measured by the same code.
    md = StudyDir(measured / "kl_budget").agreement_md.read_text()
    assert "## Protocol `t1`: temperature 1" in md and "## Protocol `t0.5-p0.9`: temperature 0.5" in md
    assert "| 0.125 | 1.000 |" in md  # the paper's κ = 1/8 panel: every sequence valid
    rows = [r for r in StudyDir(measured / "kl_budget").summary()]
    assert "measure.t1.agreement.exact_shared" in rows[0]


def test_measure_retrains_a_run_without_its_checkpoint(measured: Path, tmp_path: Path) -> None:
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(measured, out)
    run = _run(out)
    run.model_file.unlink()
    before = run.measurement("t1")
    assert main(_args(out, "--measure", "t1", "--overwrite-measure")) == 0
    after = run.measurement("t1")
    assert after["model"] == "retrained" and after["same_as_run_groups"] is True
    assert after["agreement"] == before["agreement"]
    assert run.model_file.exists() and not run.retrain_dir.exists()
    # A retrain killed before its first checkpoint (its folder holds only config.json) starts again.
    run.model_file.unlink()
    run.retrain_dir.mkdir(parents=True)
    shutil.copy(run.config_file, run.retrain_dir / RunDir.CONFIG)
    assert RunDir(run.retrain_dir).status() == "started"
    assert main(_args(out, "--measure", "t1", "--overwrite-measure")) == 0
    after = run.measurement("t1")
    assert after["model"] == "retrained" and run.model_file.exists() and not run.retrain_dir.exists()
    # A retrained run that does not reproduce the committed summary is refused, and nothing is
    # measured (a finished retrain in place, so that nothing trains again here).
    shutil.copytree(run.path, run.retrain_dir, ignore=shutil.ignore_patterns("ckpt", "measure"))
    shutil.copytree(run.ckpt_dir, run.retrain_dir / RunDir.CKPT, ignore=shutil.ignore_patterns("retrain"))
    run.model_file.unlink()
    s = run.summary()
    s["val"]["ce_prior"] += 0.5
    RunDir(run.retrain_dir).write_summary(s)
    assert main(_args(out, "--measure", "t1", "--overwrite-measure")) == 3
    assert run.measurement("t1") == after and run.retrain_dir.exists() and not run.model_file.exists()


def test_a_copied_twin_takes_its_sources_measurements(measured: Path, tmp_path: Path) -> None:
    """ablate copies a run that another study already finished (COPIED_FROM, no checkpoint):
    its measurements are the source's, copied rather than trained again."""
    from ftstudy.study.measure import measure_run

    src = _run(measured)
    twin = RunDir(tmp_path / "latent_bits" / src.name)
    twin.path.mkdir(parents=True)
    (tmp_path / "kl_budget").symlink_to(measured / "kl_budget")
    for p in src.path.iterdir():  # the run's files, without its ckpt/ and measure/ folders
        if p.is_file():
            (twin.path / p.name).write_bytes(p.read_bytes())
    (twin.path / RunDir.COPIED_FROM).write_text(f"kl_budget/{src.name}\n")
    assert measure_run(twin.path, [protocols.protocol("t1")]) == ["t1"]
    assert twin.measurement("t1")["model"] == f"copied from kl_budget/{src.name}"
    assert twin.measure_file("t1", "groups").read_bytes() == src.measure_file("t1", "groups").read_bytes()
    assert not twin.model_file.exists()  # nothing was trained


def test_reproduces_names_the_differences() -> None:
    a = {"val": {"ce": 1.0}, "probe": {"x": 0.5}, "generation": {"valid": 3, "time_s": 1.0}}
    assert reproduces(a, json.loads(json.dumps(a))) == []
    b = {"val": {"ce": 1.1}, "probe": {"x": 0.5}, "generation": {"valid": 3, "time_s": 9.0}}
    assert reproduces(a, b) == ["val.ce: 1.1 committed, 1.0 retrained"]


def _fixed_model(probs: dict[str, float]):
    """A decoder whose next-token distribution is ``probs`` at every position (the rest of
    the mass spread evenly): every block adds nothing, the embeddings are equal, and the
    readout's row of token i sums to log p_i."""
    import torch

    from ftstudy.core.config import ModelConfig
    from ftstudy.core.model import FreeTransformer

    model = FreeTransformer(ModelConfig(n_layers=1, dim=8, n_heads=2, max_seq_len=66))
    rest = (1 - sum(probs.values())) / (len(synthetic.VOCAB) - len(probs))
    logp = torch.tensor([math.log(probs.get(ch, rest)) for ch in synthetic.VOCAB])
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.tok_emb.weight.fill_(1.0)
        model.norm.weight.fill_(1.0)
        model.lm_head.weight.copy_(logp[:, None].expand(-1, 8) / 8)
    return model.eval(), logp


@pytest.mark.parametrize("temperature", [1.0, 0.6, 0.3])
def test_temperature_reaches_the_sampler(temperature: float) -> None:
    """On a fixed model, the `!` rate of generate_synthetic is softmax(log p / τ)[!]: it falls with τ."""
    model, logp = _fixed_model({"_": 0.8, "!": 0.06})
    strings = generate_synthetic(model, ["A>"] * 200, seed=0, temperature=temperature)
    n = len(strings) * synthetic.BODY_LEN
    rate = sum(s[synthetic.PROMPT_LEN:].count("!") for s in strings) / n
    want = float((logp / temperature).softmax(0)[synthetic.VOCAB.index("!")])
    assert abs(rate - want) < 4 * math.sqrt(want * (1 - want) / n) + 1e-4, (rate, want)


def test_run_records_its_sampling(tmp_path: Path) -> None:
    out = tmp_path / "sharp"
    assert main([*_args(out)[:5], *TINY, "temperature=0.7", *_args(out)[5 + len(TINY):]]) == 0
    run = _run(out)
    s = run.summary()
    assert s["sampling"] == {"temperature": 0.7, "top_k": None, "top_p": None}
    assert s["generation"]["temperature"] == 0.7 and "temperature0.7" in run.name


def test_calibration_picks_the_likelihood_maximum(monkeypatch, tmp_path: Path) -> None:
    """A stand-in generator whose noise rate and block positions are known per temperature:
    the chosen τ is the one that fits the paper's κ = 1/64 panel (7 `!` in 960, every block at
    32 or later)."""
    from ftstudy.tasks import probe

    def fake(model, prompts, seed, *, temperature=1.0, **kw):
        out = []
        for i in range(len(prompts)):
            # `!` per body: 4 of 64 at τ = 1; below, one in every other body (1/128, near the panel's 7/960)
            noisy = 4 if temperature == 1.0 else i % 2
            where = 32 + i % 25 if temperature == 0.6 else 10  # τ = 0.6: blocks spread over 32 … 56
            body = ["_"] * synthetic.BODY_LEN
            body[where:where + synthetic.BLOCK_LEN] = ["A"] * synthetic.BLOCK_LEN
            for j in range(noisy):
                body[j] = "!"
            out.append("A>" + "".join(body))
        return out

    monkeypatch.setattr(probe, "generate_synthetic", fake)
    cal = protocols.calibrate_models([(tmp_path / "run", None, "checkpoint")], [0.5, 0.6, 1.0], n=50)
    assert cal["temperature"] == 0.6 and cal["temperature_interval"] == [0.6, 0.6]
    lls = {r["temperature"]: r["loglik"] for r in cal["curve"]}
    assert lls[0.6] == max(lls.values())
    assert cal["panel"]["noise"] == 7 and cal["panel"]["chars"] == 960 and cal["panel"]["late"] == 15
    assert np.isclose(cal["panel"]["noise_per_char"], 7 / 960)
    assert cal["curve"][0]["models"]["run"]["late_fraction"] == 0.0
    md = protocols.calibration_markdown({**cal, "command": "python -m ftstudy.calibrate"})
    assert "**Chosen: τ = 0.6**" in md


def test_t1_table_counts_runs_by_their_own_probe(tmp_path: Path) -> None:
    """Under t1 a run not re-measured counts with its own groups file (its probe was made at τ = 1);
    under another protocol it does not count; a run whose own probe was sharper never stands in for t1."""
    from ftstudy.io import CsvTable
    from ftstudy.results.report import protocol_points
    from ftstudy.study.studies import STUDIES

    study = StudyDir(tmp_path / "kl_budget")
    body = ["_"] * synthetic.BODY_LEN
    body[40:48] = ["A"] * 8
    seq = "A>" + "".join(body)
    table = agreement.GroupTable.from_strings([seq] * 6, [0, 0, 0, 1, 1, 1], [False] * 3 + [True] * 3)
    rows = []
    for seed, temperature in ((0, 1.0), (1, 1.0), (2, 0.6)):
        run = study.run(f"r{seed}")
        run.path.mkdir(parents=True)
        run.write_config({"config": {"model": {"latent_bits": 8, "kappa_bits": 0.125},
                                     "task": {"temperature": temperature}, "train": {"seed": seed}}})
        agreement.write_groups(table, run.groups_file)
        rows.append({"run": run.name, "variant": "free", "latent_bits": 8, "kappa_bits": 0.125})
    study.run("r0").write_measurement("t1", {"sampling": {"temperature": 1.0, "top_k": None, "top_p": None}})
    agreement.write_groups(table, study.run("r0").measure_file("t1", "groups"))
    CsvTable(study.summary_file, rows).write()
    (t1,) = protocol_points(study.path, STUDIES["kl_budget"], "t1")
    assert t1["seeds"] == 2 and t1["exact_shared"] == 1.0 and t1["sampling.temperature"] == 1.0
    assert protocol_points(study.path, STUDIES["kl_budget"], "paper") == []


def test_codes_check_of_the_aggregate_posterior(measured: Path) -> None:
    """--codes: the aggregate posterior over whole codes per position, against a naive
    per-sequence sum, written beside the protocols without being one."""
    import torch

    from ftstudy.tasks.probe import code_posterior_metrics

    assert main(_args(measured, "--measure", "t1", "--codes")) == 0
    run = _run(measured)
    codes = json.loads(run.codes_file.read_text())
    h = codes["latent_bits"]
    assert 0 <= codes["code_entropy_min_bits"] <= codes["code_entropy_mean_bits"] <= h + 1e-9
    assert codes["code_kl_to_prior_mean_bits"] == pytest.approx(h - codes["code_entropy_mean_bits"])
    assert 0 <= codes["prior_mass_on_rare_codes_mean"] <= codes["prior_mass_on_rare_codes_max"] <= 1
    assert "codes.encoder" not in StudyDir(measured / "kl_budget").protocols()
    # naive reference: enumerate codes sequence by sequence
    model, cfg, _ = load_model(run.model_file)
    model.eval()
    seqs = synthetic.sample(4, 123)
    batch = synthetic.make_batch(seqs, synthetic.CharTokenizer())
    got = code_posterior_metrics(model, [batch])
    with torch.no_grad():
        p = torch.sigmoid(model(batch["idx"], z="posterior-leaky").enc_logits.double())  # (B, T, H)
    q = torch.zeros(p.shape[1], 1 << h, dtype=torch.float64)
    for c in range(1 << h):
        bits = torch.tensor([(c >> i) & 1 for i in range(h)], dtype=torch.float64)
        q[:, c] = (p * bits + (1 - p) * (1 - bits)).prod(-1).mean(0)
    ent = -(q * torch.log2(q)).sum(-1)
    assert got["code_entropy_mean_bits"] == pytest.approx(float(ent.mean()), rel=1e-9)
    assert got["code_entropy_by_position_bits"] == pytest.approx([round(float(v), 4) for v in ent], abs=1e-4)


def test_codes_needs_measure(tmp_path: Path, capsys) -> None:
    assert main(["--study", "kl_budget", "--preset", "quick", "--out", str(tmp_path), "--codes"]) == 2
    assert "goes with --measure" in capsys.readouterr().err


def test_calibration_averages_over_models_and_reports_each_term() -> None:
    """Averaging (not summing) the panel's log-likelihood over models widens the 95% set; each
    term's optimum is its own."""
    def row(t: float, noise: float, pos: float) -> dict:
        m = {"loglik": noise + pos, "loglik_positions": pos}
        return {"temperature": t, "loglik": 2 * (noise + pos), "models": {"a": m, "b": dict(m)}}

    curve = [row(0.5, -10.0, -30.0), row(0.6, -11.0, -27.0), row(0.7, -13.0, -26.5), row(0.8, -20.0, -26.0)]
    out = protocols.choose_temperature(curve)
    assert out["temperature"] == 0.6  # mean -38 against -40, -39.5, -46
    assert out["temperature_interval"] == [0.6, 0.7]  # -39.5 is within 1.92 of -38 on the mean, -40 is not
    assert out["summed_over_models"]["temperature_interval"] == [0.6, 0.6]  # the sum doubles every gap
    assert out["term_optima"] == {"noise": 0.5, "positions": 0.8}


def test_a_retrain_uses_the_thread_count_the_run_recorded(measured: Path, tmp_path: Path, monkeypatch) -> None:
    """On a CPU the order of some reductions depends on the thread count: the retrain takes the
    count the run recorded, and the process's own count is restored afterwards."""
    import shutil

    import torch

    from ftstudy.study import measure

    out = tmp_path / "copy"
    shutil.copytree(measured, out)
    run = _run(out)
    run.model_file.unlink()
    record = run.record()
    want = 1 if torch.get_num_threads() != 1 else 2
    record["machine"]["torch_threads"] = want
    run.config_file.write_text(json.dumps(record))
    seen = []
    real = measure.train

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(measure, "train", spy)
    before = torch.get_num_threads()
    measure.load_or_retrain(run.path)
    assert seen == [want] and torch.get_num_threads() == before


def test_a_retrain_uses_the_precision_the_run_recorded(measured: Path, tmp_path: Path, monkeypatch) -> None:
    """precision "auto" resolves by the machine (bf16-mixed where the CPU has native bf16): the
    retrain takes the precision the run recorded, so that it can reproduce the committed run."""
    import shutil

    import ftstudy.run.train as train_module
    from ftstudy.study import measure

    out = tmp_path / "copy"
    shutil.copytree(measured, out)
    run = _run(out)
    run.model_file.unlink()
    record = run.record()
    recorded = record["precision_resolved"]
    record["config"]["train"]["precision"] = "auto"  # a run made under "auto"
    run.config_file.write_text(json.dumps(record))
    other = "bf16-mixed" if recorded == "32-true" else "32-true"
    # This machine as one where "auto" resolves to the other precision.
    real = train_module.resolve_precision
    monkeypatch.setattr(train_module, "resolve_precision",
                        lambda precision, accelerator: other if precision == "auto" else real(precision, accelerator))
    seen = []

    class Stop(Exception):
        pass

    def spy(cfg, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        seen.append(cfg.train.precision)
        raise Stop  # the retrain itself is test_measure_retrains_a_run_without_its_checkpoint's

    monkeypatch.setattr(measure, "train", spy)
    with pytest.raises(Stop):
        measure.load_or_retrain(run.path)
    assert seen == [recorded]
