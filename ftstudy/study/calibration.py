"""``python -m ftstudy.calibrate`` (``ftstudy calibrate``): fit the paper protocol's sampling
temperature to the paper's Figure 4 (:mod:`ftstudy.study.protocols` holds the objective, the
choice and the file; this module loads the models, through :mod:`ftstudy.study.measure`, and
runs it).  It sits above both, so that neither imports the other back.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from ftstudy.core.config import check_sampling
from ftstudy.io import REPO_ROOT, RunDir, atomic_write_text
from ftstudy.study.measure import load_or_retrain
from ftstudy.study.protocols import (CALIBRATION, _rel, calibrate_models, calibration_markdown, choose_temperature,
                                     read_calibration)

__all__ = ["calibrate", "main"]


def calibrate(runs: list[Path], temperatures: list[float], *, n: int = 1024, seed: int = 0,
              panel_kappa: float = 1 / 64) -> dict[str, Any]:
    """The temperature under which the models of ``runs`` best reproduce the paper figure's
    κ = ``panel_kappa`` panel: for each temperature, every model generates ``n`` sequences
    under the prior (the probe's prompts) and gives a noise rate r (``!`` per body character)
    and a distribution q of block positions (valid generations, smoothed by adding 1/2 to
    each of the 57 counts); the panel (k ``!`` in m characters; blocks at p_1 … p_v) has
    log-likelihood k·log r + (m−k)·log(1−r) + Σ_i log q(p_i) under them.  The position term
    carries the panel's late-position skew (every block at 32 or later) and also its spread
    within the late positions, which a late/early count alone would not.  The chosen
    temperature maximises the sum over the models; the temperatures within 1.92 of that
    maximum (a 95% likelihood-ratio set) are recorded as its interval."""
    models = []
    for run in runs:
        model, _, how = load_or_retrain(run)
        models.append((run, model, how))
    return calibrate_models(models, temperatures, n=n, seed=seed, panel_kappa=panel_kappa)



def main(argv: list[str] | None = None) -> int:
    default_runs = [REPO_ROOT / "results" / "ablate" / "kl_budget" / n
                    for n in ("synthetic-quick-base-s0", "synthetic-quick-free-k0.015625-s0")]
    from ftstudy.study import protocols
    p = argparse.ArgumentParser(prog="python -m ftstudy.calibrate", description=protocols.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=Path, nargs="+", default=default_runs,
                   help="finished runs whose models are calibrated (default: the quick baseline and κ = 1/64, "
                        "seed 0); a run without its ckpt/model.pt is trained again (deterministic)")
    p.add_argument("--temperatures", type=float, nargs="+",
                   default=[round(0.3 + 0.05 * i, 2) for i in range(15)], help="the grid (default 0.30 … 1.00)")
    p.add_argument("-n", type=int, default=1024, help="sequences per model and temperature")
    p.add_argument("--out", type=Path, default=CALIBRATION, help=f"(default {_rel(CALIBRATION)})")
    p.add_argument("--report", action="store_true",
                   help="sample nothing: choose the temperature again from the curve stored in --out and rewrite it "
                        "and its .md (the objective, each term's optimum)")
    args = p.parse_args(argv)
    if args.report:
        try:
            cal = read_calibration(args.out)
            cal.update(choose_temperature(cal["curve"]))
        except (OSError, ValueError, KeyError) as e:
            print(f"error: {args.out}: {e}", file=sys.stderr)
            return 2
        atomic_write_text(args.out, json.dumps(cal, indent=2, sort_keys=True, allow_nan=False) + "\n")
        atomic_write_text(args.out.with_suffix(".md"), calibration_markdown(cal))
        print(f"[calibrate] τ = {cal['temperature']:.3g} (95% set {cal['temperature_interval']}; noise term "
              f"{cal['term_optima']['noise']:g}, position term {cal['term_optima']['positions']:g}) -> {args.out}")
        return 0
    try:
        for t in args.temperatures:
            check_sampling(t, None, None)
        if args.n < 1:
            raise ValueError(f"-n {args.n}: at least 1")
        missing = [str(r) for r in args.runs if RunDir(r).status() != "finished"]
        if missing:
            raise ValueError(f"not finished runs: {', '.join(missing)}")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    cal = calibrate(list(args.runs), sorted(args.temperatures), n=args.n)
    cal["command"] = "python -m ftstudy.calibrate" + ("" if argv is None else "") + "".join(
        f" {a}" for a in (sys.argv[1:] if argv is None else argv))
    cal["time_s"] = round(time.perf_counter() - t0, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(cal, indent=2, sort_keys=True, allow_nan=False) + "\n")
    atomic_write_text(args.out.with_suffix(".md"), calibration_markdown(cal))
    print(f"[calibrate] τ = {cal['temperature']:.3g} (95% set {cal['temperature_interval']}) -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
