"""Sampling protocols: the token-sampling settings a generation is measured under, by name,
and the calibration that gives the paper's protocol its temperature.

- ``t1``: temperature 1, no top-k or top-p cut: the model's own distribution (the default
  of every run).
- ``paper``: the protocol of the paper's Figure 4.  The paper does not state its sampling
  temperature or truncation; its κ = 1/64 panel (Z unused) cannot come from temperature-1
  sampling of a model that fits the task (7 ``!`` in 960 characters where the data has
  1 in 16; every block at position 32 or later).  ``python -m ftstudy.calibrate`` finds the
  temperature under which our baseline and κ = 1/64 models reproduce that panel's noise
  rate and late-position skew (maximum likelihood of the panel's counts over a grid of
  temperatures) and records it in ``results/ablate/calibration/calibration.json``, which
  this protocol reads.
- any other setting as ``temperature=0.7,top_p=0.9`` (named ``t0.7-p0.9``).

This module is the one owner of the calibration file.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftstudy.core.config import check_sampling
from ftstudy.io import REPO_ROOT
from ftstudy.results.report import T1, T1_SAMPLING

__all__ = ["Protocol", "protocol", "CALIBRATION", "DEFAULT_PROTOCOLS", "calibrate_models",
           "read_calibration", "choose_temperature", "calibration_markdown"]

CALIBRATION = REPO_ROOT / "results" / "ablate" / "calibration" / "calibration.json"
#: What ``ablate --measure`` measures when given no names: the default and the paper's protocol.
DEFAULT_PROTOCOLS = ("t1", "paper")


@dataclass(frozen=True)
class Protocol:
    """A named token-sampling setting (every generation of a measurement uses it)."""

    name: str
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    source: str = ""  # where its values come from (the calibration file for "paper")

    def __post_init__(self) -> None:
        check_sampling(self.temperature, self.top_k, self.top_p)

    @property
    def sampling(self) -> dict[str, Any]:
        """temperature, top_k, top_p: the keyword arguments of the generators, as recorded."""
        return {"temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p}


def _fmt(x: float) -> str:
    return f"{x:g}"


def _parse(spec: str) -> Protocol:
    values: dict[str, Any] = {}
    for item in spec.split(","):
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or key not in ("temperature", "top_k", "top_p"):
            raise ValueError(f"protocol {spec!r}: 't1', 'paper' or settings like 'temperature=0.7,top_p=0.9' "
                             f"(keys temperature, top_k, top_p); got {item!r}")
        try:
            values[key] = int(raw) if key == "top_k" else float(raw)
        except ValueError:
            raise ValueError(f"protocol {spec!r}: {key} = {raw!r} is not a number") from None
    t = values.get("temperature", 1.0)
    name = f"t{_fmt(t)}" + (f"-p{_fmt(values['top_p'])}" if "top_p" in values else "") \
        + (f"-k{values['top_k']}" if "top_k" in values else "")
    return Protocol(name, t, values.get("top_k"), values.get("top_p"), source="command line")


def protocol(spec: str, calibration: Path = CALIBRATION) -> Protocol:
    """The protocol a name or a ``key=value,…`` setting stands for (ValueError otherwise;
    ``paper`` before ``python -m ftstudy.calibrate`` has run says so)."""
    if spec == T1:
        return Protocol(T1, **T1_SAMPLING, source="default: the model's own distribution")
    if spec == "paper":
        if not Path(calibration).exists():
            raise ValueError(f"protocol 'paper' needs its calibrated temperature: {calibration} is missing "
                             f"(run python -m ftstudy.calibrate)")
        cal = read_calibration(calibration)
        return Protocol("paper", cal["temperature"], source=f"{_rel(Path(calibration))} (python -m ftstudy.calibrate)")
    return _parse(spec)


def _rel(p: Path) -> str:
    try:
        return str(p.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(p)


def read_calibration(path: Path = CALIBRATION) -> dict[str, Any]:
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict) or not isinstance(data.get("temperature"), (int, float)):
        raise ValueError(f"{path}: not a calibration file (no temperature)")
    return data


# ---------------------------------------------------------------- calibration

def _binomial_loglik(k: int, n: int, p: float) -> float:
    p = min(max(p, 1e-9), 1 - 1e-9)
    return k * math.log(p) + (n - k) * math.log(1 - p)


def calibrate_models(models: list[tuple[Path, Any, str]], temperatures: list[float], *, n: int = 1024,
                     seed: int = 0, panel_kappa: float = 1 / 64) -> dict[str, Any]:
    """The temperature under which loaded models best reproduce the paper figure's κ =
    ``panel_kappa`` panel (:func:`ftstudy.study.calibration.calibrate` loads them): (run folder,
    model, "checkpoint" or "retrained") each."""
    import numpy as np

    from ftstudy.tasks import agreement, figure4, probe, synthetic

    panel = next((p for p in figure4.read_figure4() if math.isclose(p.kappa_bits, panel_kappa)), None)
    if panel is None:
        raise ValueError(f"the paper figure has no panel at kappa_bits = {panel_kappa}")
    stats = figure4.panel_stats(panel)
    bodies = [s[synthetic.PROMPT_LEN:] for g in panel.groups for s in g]
    k_noise, m_chars = sum(b.count("!") for b in bodies), sum(len(b) for b in bodies)
    _, positions = synthetic.check_many([s for g in panel.groups for s in g])
    valid_pos = positions[positions >= 0]
    l_late, v_valid = int((valid_pos >= figure4.LATE_POSITION).sum()), len(valid_pos)
    prompts = [f"{probe.PROBE_LETTERS[i % len(probe.PROBE_LETTERS)]}>" for i in range(n)]
    curve = []
    for t in temperatures:
        row: dict[str, Any] = {"temperature": t, "loglik": 0.0, "models": {}}
        for run, model, _ in models:
            strings = probe.generate_synthetic(model, prompts, seed=seed, temperature=t)
            valid, pos = synthetic.check_many(strings)
            noise = sum(s[synthetic.PROMPT_LEN:].count("!") for s in strings) / (n * synthetic.BODY_LEN)
            late = float((pos[valid] >= figure4.LATE_POSITION).mean()) if valid.any() else float("nan")
            counts = np.bincount(pos[valid], minlength=agreement.N_POSITIONS) + 0.5
            q = counts / counts.sum()
            # No valid generation: no position distribution, and this temperature cannot be chosen.
            ll_pos = float(np.log(q[valid_pos]).sum()) if valid.any() else -math.inf
            ll = _binomial_loglik(k_noise, m_chars, noise) + ll_pos
            row["models"][run.name] = {"noise_per_char": noise, "late_fraction": late,
                                       "valid_rate": float(valid.mean()), "loglik": ll, "loglik_positions": ll_pos,
                                       "position_counts": np.bincount(pos[valid], minlength=agreement.N_POSITIONS)
                                       .tolist()}
            row["loglik"] += ll
        curve.append(row)
        print(f"[calibrate] τ = {t:.3f}: " + ", ".join(
            f"{name}: noise {m['noise_per_char']:.4f}, late {m['late_fraction']:.3f}, valid {m['valid_rate']:.3f}"
            for name, m in row["models"].items()) + f"; log-lik {row['loglik']:.2f}", flush=True)
    cal = {
        "panel": {"kappa_bits": panel_kappa, "noise": k_noise, "chars": m_chars, "late": l_late, "valid": v_valid,
                  "positions": sorted(int(p) for p in valid_pos),
                  "noise_per_char": stats["noise_per_char"], "late_fraction": stats["late_fraction"],
                  "late_position": figure4.LATE_POSITION},
        "runs": {run.name: {"path": _rel(run), "model": how} for run, _, how in models},
        "sequences_per_model": n,
        "seed": seed,
        "top_k": None,
        "top_p": None,
        "curve": curve,
    }
    return {**cal, **choose_temperature(curve)}


#: Half the 95% quantile of chi-square with one degree of freedom: the likelihood-ratio set's cut.
_LR_CUT = 1.92


def choose_temperature(curve: list[dict[str, Any]]) -> dict[str, Any]:
    """The calibrated temperature from a calibration curve (one row per temperature, each
    model's log-likelihood of the paper panel and its position term).

    The objective is the log-likelihood *averaged* over the models: the panel is one set of 15
    sequences, and summing over models would count it once per model and make the
    likelihood-ratio set too narrow.  Its 95% set is the temperatures within 1.92 of the
    maximum.  Each term's own optimum is reported too: the noise term (``!`` count) and the
    position term (where the blocks lie) pull towards different temperatures."""
    names = list(curve[0]["models"]) if curve else []
    if not names:
        raise ValueError("an empty calibration curve")

    def mean_of(row: dict[str, Any], key: Any) -> float:
        return float(sum(key(row["models"][n]) for n in names) / len(names))

    rows = []
    for r in curve:
        rows.append({"temperature": r["temperature"], "mean": mean_of(r, lambda m: m["loglik"]),
                     "positions": mean_of(r, lambda m: m["loglik_positions"]),
                     "noise": mean_of(r, lambda m: m["loglik"] - m["loglik_positions"])})
    if not any(math.isfinite(r["mean"]) for r in rows):
        raise ValueError("no temperature of the grid gave a valid generation: these models do not do the task")

    def best_of(key: str) -> dict[str, Any]:
        return max((r for r in rows if math.isfinite(r[key])), key=lambda r: r[key])

    best = best_of("mean")
    inside = [r["temperature"] for r in rows if best["mean"] - r["mean"] <= _LR_CUT]
    summed = max(curve, key=lambda r: r["loglik"])
    inside_summed = [r["temperature"] for r in curve if summed["loglik"] - r["loglik"] <= _LR_CUT]
    return {
        "temperature": best["temperature"],
        "temperature_interval": [min(inside), max(inside)],
        "criterion": "maximum of the paper panel's log-likelihood (noise count and block positions) averaged over "
                     "the models; interval: temperatures within 1.92 of that maximum (95% likelihood-ratio set)",
        "objective": rows,
        "term_optima": {"noise": best_of("noise")["temperature"], "positions": best_of("positions")["temperature"]},
        "summed_over_models": {"temperature": summed["temperature"],
                               "temperature_interval": [min(inside_summed), max(inside_summed)]},
    }


def calibration_markdown(cal: dict[str, Any]) -> str:
    p = cal["panel"]
    names = list(cal["runs"])
    objective = {r["temperature"]: r for r in cal["objective"]}
    head = ["τ", *[f"{n}: noise / late / valid" for n in names], "log-lik, mean over models", "noise term",
            "position term"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in cal["curve"]:
        o = objective[r["temperature"]]
        mark = " **←**" if r["temperature"] == cal["temperature"] else ""
        cells = [f"{r['temperature']:.3g}"] + [
            f"{r['models'][n]['noise_per_char']:.4f} / {r['models'][n]['late_fraction']:.3f} / "
            f"{r['models'][n]['valid_rate']:.3f}" for n in names] + [
            f"{o['mean']:.1f}{mark}", f"{o['noise']:.1f}", f"{o['positions']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lo, hi = cal["temperature_interval"]
    opt = cal["term_optima"]
    summed = cal["summed_over_models"]
    return (f"# Calibration of the paper protocol's temperature\n\n"
            f"Generated by `{cal['command']}`; do not edit.\n\n"
            f"The paper's Figure 4, κ = {p['kappa_bits']:g} panel: {p['noise']} `!` in {p['chars']} body characters "
            f"(noise {p['noise_per_char']:.4f} per character; the task's data has 0.0625), {p['late']} of "
            f"{p['valid']} blocks at position ≥ {p['late_position']} (positions {', '.join(map(str, p['positions']))})."
            f"\n\n"
            f"**Chosen: τ = {cal['temperature']:.3g}** (no top-k or top-p cut); temperatures within the 95% "
            f"likelihood-ratio set: {lo:.3g} – {hi:.3g}.  Criterion: {cal['criterion']}.  Each model generated "
            f"{cal['sequences_per_model']} sequences per temperature under the prior.\n\n"
            f"**The two terms pull apart.** The noise term alone (the panel's `!` count) is best at τ = "
            f"{opt['noise']:.3g}; the position term alone (where its blocks lie) at τ = {opt['positions']:.3g}. The "
            f"chosen τ is a compromise between them, and a verdict that depends on τ must be read beside the "
            f"temperature-sensitivity table of `results/ablate/FINDINGS.md`. Summing over the models instead of "
            f"averaging (which counts the panel once per model) would give τ = {summed['temperature']:.3g} with the "
            f"narrower set {summed['temperature_interval'][0]:.3g} – {summed['temperature_interval'][1]:.3g}.\n\n"
            + "\n".join(lines) + "\n")
