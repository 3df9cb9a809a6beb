"""NeuralRG: how fast does the relative error fall with training, and when would it reach a target?

Reads the per-step training history saved in the checkpoints of finished ``deeprg flow train``
runs (the batch estimate of the relative error of the variational free energy at every step), takes
running means over windows of 100 steps, and fits ``error = a * step**(-p)`` by least squares in
log-log on the steps where the learning rate is still at least ``--lr-fraction`` of its initial
value (the cosine schedule's decay would otherwise be fitted as a gain in capacity). From the fit it
extrapolates the steps, and from the run's own seconds per step the training time, needed to reach
``--target``. This is a measurement of *why* a target is out of reach, not an estimate of a flow's
quality: the fitted exponent says how much each doubling of training buys.

Run from the repository root on saved runs (a few seconds; nothing is trained):

    python benchmarks/flow_error_scaling.py runs/bench/L16 runs/bench/L16-forward \
        runs/bench/L16-forward-lr1e-2 runs/bench/L32-forward --target 7e-4 1.5e-3

Results go to benchmarks/results/flow_error_scaling.{json,md}.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from machine import describe

RESULTS = Path(__file__).parent / "results"
WINDOW = 100


def fit(run: Path, lr_fraction: float, targets: list[float]) -> dict:
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True, map_location="cpu")
    config = json.loads(ckpt["config"])
    history = ckpt["history"]
    error = np.array([h["relative_error"] for h in history], dtype=float)
    lr = np.array([h["lr"] for h in history], dtype=float)
    steps = np.arange(1, len(error) + 1)
    # running mean over the last WINDOW steps, evaluated every WINDOW steps
    ends = steps[WINDOW - 1 :: WINDOW]
    means = np.array([error[e - WINDOW : e].mean() for e in ends])
    # the first windows hold the initial transient (errors of order 1 and above): start at 500 steps
    keep = (ends >= 500) & (lr[ends - 1] >= lr_fraction * lr[0]) & (means > 0)
    if keep.sum() < 3:
        raise SystemExit(f"{run}: fewer than 3 windows with lr >= {lr_fraction} * initial lr; lower --lr-fraction")
    slope, intercept = np.polyfit(np.log(ends[keep]), np.log(means[keep]), 1)
    p = -slope
    seconds_per_step = ckpt["wall_seconds"] / ckpt["step"]
    steps_needed = [float(np.exp((intercept - np.log(t)) / p)) if p > 0 else float("inf") for t in targets]
    return {
        "run": str(run), "L": config["L"], "objective": config["objective"], "lr": config["lr"],
        "init_from": config.get("init_from"), "steps": ckpt["step"],
        "final_window_error": float(error[-WINDOW:].mean()),
        "fit_steps": [int(ends[keep][0]), int(ends[keep][-1])], "exponent": float(p),
        "seconds_per_step": seconds_per_step,
        "to_target": [{"target": t, "steps": n, "hours": n * seconds_per_step / 3600}
                      for t, n in zip(targets, steps_needed)],
    }


def markdown(results: dict) -> str:
    lines = [
        "# NeuralRG: how the relative error falls with training",
        "",
        f"Machine: {results['machine']}",
        "",
        (f"Fit `error = a * step^-p` to the running means (windows of {WINDOW} steps) of the training batches' "
        f"relative error, from step 500 while the learning rate is at least {results['lr_fraction']} of "
        f"its initial value; extrapolate to each target. Seconds per step are the run's own "
        "(wall time of the run / steps; the runs shared the machine, see docs/neuralrg.md)."),
        "",
        "| run | L | objective | lr | steps | error, last 100 steps | fitted steps | p | s/step | target | steps to target | hours to target |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results["runs"]:
        lines.append(
            f"| `{r['run']}` | {r['L']} | {r['objective']} | {r['lr']:g} | {r['steps']} | {r['final_window_error']:.2e} "
            f"| {r['fit_steps'][0]}-{r['fit_steps'][1]} | {r['exponent']:.3f} | {r['seconds_per_step']:.2f} | "
            + " | ".join(f"{t['target']:g} | {t['steps']:.2e} | {t['hours']:.0f}" for t in r["to_target"][:1]) + " |"
        )
        for t in r["to_target"][1:]:
            lines.append("| | | | | | | | | | " + f"{t['target']:g} | {t['steps']:.2e} | {t['hours']:.0f} |")
    lines += ["", "Command: `python benchmarks/flow_error_scaling.py " + " ".join(r["run"] for r in results["runs"])
              + " --target " + " ".join(f"{t:g}" for t in results["targets"]) + "`", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories of finished `deeprg flow train` runs")
    parser.add_argument("--target", type=float, nargs="+", default=[7e-4],
                        help="relative errors to extrapolate to (default 7e-4)")
    parser.add_argument("--lr-fraction", type=float, default=0.5,
                        help="fit only windows whose learning rate is at least this fraction of the initial one (default 0.5)")
    args = parser.parse_args()
    if not all(0 < t < 1 for t in args.target):
        parser.error("--target must be in (0, 1)")
    if not 0 < args.lr_fraction <= 1:
        parser.error("--lr-fraction must be in (0, 1]")
    for run in args.runs:
        if not (run / "checkpoint.pt").is_file():
            parser.error(f"runs: {run} has no checkpoint.pt")
    results = {"machine": describe(), "targets": args.target, "lr_fraction": args.lr_fraction,
               "runs": [fit(run, args.lr_fraction, args.target) for run in args.runs]}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "flow_error_scaling.json").write_text(json.dumps(results, indent=2) + "\n")
    text = markdown(results)
    (RESULTS / "flow_error_scaling.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
