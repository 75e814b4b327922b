"""The demo compares its runs with the committed reference: within the seed spread, or not."""

from __future__ import annotations

import json
from pathlib import Path

from ftstudy.study import demo


def fake_summary(valid: float, kl: float | None) -> dict:
    return {"generation": {"valid_rate": valid}, "posterior": {} if kl is None else {"kl_bits_per_token": kl},
            "probe": {"same_pos_independent": 0.02, "same_pos_shared": 0.03, "mi_position_bits": 0.1},
            "val": {"ce_prior": 0.3}, "train_time_s": 1.0}


def write_runs(folder: Path, seed: int, valid: float) -> None:
    for r in demo._runs(folder, seed, []):
        r.run_dir.mkdir(parents=True)
        kl = None if not r.config.model.is_free else 0.5
        (r.run_dir / "summary.json").write_text(json.dumps(fake_summary(valid, kl)))


def test_compare_gives_a_verdict_per_number(tmp_path):
    ref, out = tmp_path / "ref", tmp_path / "out"
    write_runs(ref, 0, 0.80)
    write_runs(ref, 1, 0.90)
    assert demo.reference_seeds(ref) == [0, 1]
    write_runs(out, 0, 0.80)
    table, within, compared = demo.compare(out, 0, ref)
    assert "within [0.800, 0.900], = reference seed 0" in table
    # 5 runs × 6 numbers each, the baseline has no KL: 29 compared, all within.
    assert (within, compared) == (29, 29)
    assert "– (not measured)" in table  # the baseline's KL
    write_runs(out, 2, 0.95)
    table, within, compared = demo.compare(out, 2, ref)
    assert "OUTSIDE [0.800, 0.900]" in table and "= reference seed" not in table
    assert (within, compared) == (24, 29)
    table, within, compared = demo.compare(out, 0, tmp_path / "empty")
    assert "no finished reference runs" in table and compared == 0


def test_compare_says_when_the_precisions_differ(tmp_path):
    """precision auto resolves by the CPU: a demo trained in bf16-mixed against an fp32 reference
    cannot reproduce a reference seed, and the comparison says so."""
    ref, out = tmp_path / "ref", tmp_path / "out"
    write_runs(ref, 0, 0.80)
    write_runs(out, 0, 0.80)
    for folder, precision in ((ref, "32-true"), (out, "bf16-mixed")):
        for r in demo._runs(folder, 0, []):
            (r.run_dir / "config.json").write_text(json.dumps({"precision_resolved": precision}))
    table, _, _ = demo.compare(out, 0, ref)
    assert "these runs trained in bf16-mixed, the reference in 32-true" in table
    for r in demo._runs(out, 0, []):
        (r.run_dir / "config.json").write_text(json.dumps({"precision_resolved": "32-true"}))
    assert "Precision:" not in demo.compare(out, 0, ref)[0]
