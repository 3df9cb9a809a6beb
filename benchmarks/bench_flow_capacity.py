"""NeuralRG: what lowers the variational free energy at equal steps and at equal time.

On 8 x 8 at K_c, seed 0, train the default flow (reverse KL, batch 256, 1000 steps, learning rate
2e-3 with the cosine schedule) and variants that change one thing each: more couplings, wider
networks, a larger batch (less gradient noise), a larger learning rate, rational-quadratic spline
couplings (``spline_bins``); and 3000 steps at two learning rates. Report the relative error of
the variational free energy on 16384 fresh samples, the training time and the time per step, so
that a variant that wins per step but loses per second shows as such.

Run from the repository root, alone on the machine (about 25 minutes on one core):

    python benchmarks/bench_flow_capacity.py
    python benchmarks/bench_flow_capacity.py --only "learning rate 1e-2"   # rerun some rows, keep the rest

Results go to benchmarks/results/flow_capacity.{json,md}.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from machine import describe

from deeprg.flows.train import FlowTrainConfig, Trainer, variational_free_energy

RESULTS = Path(__file__).parent / "results"
VARIANTS = {
    "default": {},
    "8 couplings per block": dict(n_couplings=8),
    "hidden widths 64 64": dict(hidden=[64, 64]),
    "batch 1024": dict(batch=1024),
    "learning rate 5e-3": dict(lr=5e-3),
    "learning rate 1e-2": dict(lr=1e-2),
    "learning rate 2e-2": dict(lr=2e-2),
    "spline couplings, 8 bins": dict(spline_bins=8),
    "spline couplings, 8 bins, 2 couplings per block": dict(spline_bins=8, n_couplings=2),
    "3000 steps": dict(steps=3000),
    "3000 steps, learning rate 1e-2": dict(steps=3000, lr=1e-2),
}
EVAL_SAMPLES = 16384


def run(change: dict, threads: int) -> dict:
    cfg = FlowTrainConfig(**{"L": 8, "steps": 1000, "batch": 256, "seed": 0, "threads": threads, **change})
    trainer = Trainer(cfg)
    trainer.train()
    est = variational_free_energy(trainer.flow, trainer.target, EVAL_SAMPLES, generator=torch.Generator().manual_seed(1))
    exact = trainer.exact_free_energy
    return {"change": change, "steps": cfg.steps, "relative_error": (est.mean - exact) / abs(exact),
            "sigma": est.error / abs(exact), "seconds": trainer.wall_seconds,
            "seconds_per_step": trainer.wall_seconds / cfg.steps}


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [
        "# NeuralRG: what lowers the variational free energy (8 x 8, K_c)",
        "",
        f"Machine: {m['cpu']}, {m['cores']} logical cores, torch {m['torch']} ({results['threads']} thread), "
        f"{m['date']}. Command: `python benchmarks/bench_flow_capacity.py`.",
        "",
        "Default flow (blocks + site map + linear map, symmetrized), reverse KL, batch 256, learning rate 2e-3 "
        "with the cosine schedule, seed 0; one change per row. Relative error of the variational free energy on "
        f"{EVAL_SAMPLES} fresh samples.",
        *([results["notes"], ""] if results.get("notes") else [""]),
        "| variant | steps | relative error | training (s) | s / step |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, r in results["variants"].items():
        lines.append(f"| {name} | {r['steps']} | {r['relative_error']:.2e} +- {r['sigma']:.0e} | {r['seconds']:.0f} | "
                     f"{r['seconds_per_step']:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", nargs="+", choices=tuple(VARIANTS), help="rerun these rows, keep the saved others")
    parser.add_argument("--report-only", action="store_true", help="rewrite flow_capacity.md from the JSON")
    args = parser.parse_args()
    path = RESULTS / "flow_capacity.json"
    if args.report_only:
        (RESULTS / "flow_capacity.md").write_text(markdown(json.loads(path.read_text())))
        return
    torch.set_num_threads(args.threads)
    saved = json.loads(path.read_text())["variants"] if args.only and path.exists() else {}
    rows = {}
    for name, change in VARIANTS.items():
        if args.only and name not in args.only and name in saved:
            rows[name] = saved[name]
            continue
        rows[name] = run(change, args.threads)
        print(f"{name}: {rows[name]['relative_error']:.2e}, {rows[name]['seconds']:.0f} s", flush=True)
    results = {"machine": describe(), "threads": args.threads, "variants": rows}
    RESULTS.mkdir(exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "flow_capacity.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
