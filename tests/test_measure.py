"""Probe metrics against constructed cases where the answer is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ftstudy.io import read_gzip
from ftstudy.tasks import synthetic
from ftstudy.core.config import ModelConfig
from ftstudy.tasks.probe import GroupDesign, GroupSamples, generate_groups, group_metrics, posterior_metrics, write_groups
from ftstudy.core.model import FreeTransformer


def _groups(shared_identical: bool, n_groups: int = 24, size: int = 24, n_indep: int = 8, seed: int = 0) -> GroupSamples:
    strings, group, shared = [], [], []
    fresh = iter(synthetic.sample(n_groups * size + n_indep * size, seed))
    gid = 0
    for _ in range(n_indep):  # independent groups: fresh samples
        strings += [next(fresh) for _ in range(size)]
        group += [gid] * size
        shared += [False] * size
        gid += 1
    for _ in range(n_groups):  # shared groups: copies of one sample, or fresh samples (Z ignored)
        if shared_identical:
            s = next(fresh)
            strings += [s] * size
        else:
            strings += [next(fresh) for _ in range(size)]
        group += [gid] * size
        shared += [True] * size
        gid += 1
    return GroupSamples(strings, np.array(group), np.array(shared), [s[0] for s in strings])


def test_z_that_decides_everything() -> None:
    m = group_metrics(_groups(shared_identical=True))
    assert m["valid_rate"] == 1.0
    assert m["same_pos_shared"] == 1.0
    assert m["same_pos_independent"] < 0.06
    assert m["noise_overlap_shared"] > 5  # identical noise: 64 / |noise| times chance
    assert m["mi_position_bits"] > 3.0 and m["mi_collision_bits"] > 4.0


def test_z_that_decides_nothing() -> None:
    m = group_metrics(_groups(shared_identical=False, seed=1))
    assert m["same_pos_shared_ci_low"] <= m["same_pos_chance"] <= m["same_pos_shared_ci_high"] + 0.01
    assert abs(m["mi_position_bits"]) < 0.3
    assert m["mi_position_bits_ci_low"] <= 0.0 + 0.1
    assert 0.8 < m["noise_overlap_shared"] < 1.2 and 0.8 < m["noise_overlap_independent"] < 1.2


def test_invalid_sequences_are_counted_and_skipped() -> None:
    g = _groups(shared_identical=True, n_groups=3, n_indep=2)
    g.strings[0] = "A>" + "A" * 64
    m = group_metrics(g)
    assert m["valid"] == len(g.strings) - 1 and m["n"] == len(g.strings)


def _tiny_free() -> FreeTransformer:
    torch.manual_seed(0)
    cfg = ModelConfig(n_layers=2, dim=16, n_heads=2, latent_bits=3, max_seq_len=66)
    return FreeTransformer(cfg).eval()


def test_posterior_metrics_uniform_and_informative() -> None:
    model = _tiny_free()
    batches = [synthetic.make_batch(synthetic.sample(16, 0), synthetic.CharTokenizer())]
    with torch.no_grad():
        model.enc_head.weight.zero_()
    m = posterior_metrics(model, batches, seed=0)
    assert m["kl_bits_per_token"] == pytest.approx(0.0, abs=1e-6) and m["informative_bits"] == 0
    assert m["aggregate_marginal_kl_bits"] == pytest.approx(0.0, abs=1e-6) and m["codes_distinct"] == 8
    with torch.no_grad():
        model.enc_head.weight.normal_(0, 50)
    m = posterior_metrics(model, batches, seed=0)
    assert m["kl_bits_per_token"] > 1.0 and m["informative_bits"] >= 2
    assert sum(m[f"kl_bit{h:02d}"] for h in range(3)) == pytest.approx(m["kl_bits_per_token"], rel=1e-5)


def test_generate_groups_shares_z_within_groups(tmp_path) -> None:
    model = _tiny_free()
    design = GroupDesign(n_independent=3, n_groups=2, group_size=4, letters="AB")
    s = generate_groups(model, design, seed=0)
    assert len(s.strings) == design.total == 2 * (3 + 2 * 4)
    assert s.shared.sum() == 16 and len(set(s.group.tolist())) == 6
    # With a deterministic decoder, a shared Z gives identical sequences within the group.
    with torch.no_grad():
        model.lm_head.weight.mul_(1e4)  # near-greedy sampling
    s = generate_groups(model, design, seed=1)
    for gid in np.unique(s.group[s.shared]):
        members = {s.strings[i] for i in np.flatnonzero(s.group == gid)}
        assert len(members) == 1
    write_groups(s, tmp_path / "groups.txt.gz")
    lines = read_gzip(tmp_path / "groups.txt.gz").splitlines()
    assert len(lines) == 1 + design.total and lines[1].split()[1] == "independent"
    from ftstudy.results.plots import figure4_text, plot_figure4, save_figure

    text = figure4_text(tmp_path / "groups.txt.gz", letter="B", per_group=2)
    assert text.splitlines()[0] == "[independent Z]" and text.count("[one shared Z]") == 2
    assert all(line.startswith("B>") for line in text.splitlines() if line and not line.startswith("["))
    png = save_figure(plot_figure4({"κ = 1": tmp_path / "groups.txt.gz"}), tmp_path / "fig4.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_sequence_scope_free_bits_is_a_labelled_deviation() -> None:
    import dataclasses

    torch.manual_seed(0)
    tok = ModelConfig(n_layers=2, dim=16, n_heads=2, latent_bits=4, max_seq_len=66)
    model = FreeTransformer(tok).double()
    with torch.no_grad():
        model.enc_head.weight.normal_(0, 3)
    idx = torch.randint(0, 29, (3, 20))
    kl = model(idx, idx, generator=torch.Generator().manual_seed(0)).kl
    kappa = kl.median().item()  # some tokens under the budget, some over: the scopes differ
    model.cfg = dataclasses.replace(tok, kappa_bits=kappa / np.log(2))
    out = model(idx, idx, generator=torch.Generator().manual_seed(0))
    assert out.kl_loss.item() == pytest.approx((out.kl - kappa).clamp_min(0).mean().item())
    model.cfg = dataclasses.replace(model.cfg, free_bits_scope="sequence")
    out2 = model(idx, idx, generator=torch.Generator().manual_seed(0))
    expected = ((out2.kl.sum(1) - 20 * kappa).clamp_min(0) / 20).mean().item()
    assert out2.kl_loss.item() == pytest.approx(expected)
    assert out2.kl_loss.item() < out.kl_loss.item()  # tokens under κ now pay for tokens over it
