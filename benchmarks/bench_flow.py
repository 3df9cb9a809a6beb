"""NeuralRG benchmark: relative error of the variational free energy against wall time.

At K_c on L x L lattices (L = 4, 8, 16), train the package's default flow (MERA + circulant linear map, Z2-symmetrized,
affine couplings, hidden 32 x 32) and record, at 12 points along training, the relative error
``(F_q - F) / |F|`` of the variational free energy ``F_q`` (Eq. 3, estimated on fresh samples,
evaluation time excluded) against the exact ``F = -ln Z`` of the continuous relaxation.

Run from the repository root (about 25 minutes on 2 cores for the default runs):

    python benchmarks/bench_flow.py                     # L = 4, 8, 16 (16: ~15 min)
    python benchmarks/bench_flow.py --runs L16-long     # 16 x 16 for about an hour
    python benchmarks/bench_flow.py --runs L16-50min    # 16 x 16, a schedule that ends in ~50 minutes

Results go to benchmarks/results/flow_training.{json,md,png}; runs already in the JSON are kept
unless rerun.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from machine import describe  # noqa: E402

from deeprg.flows.train import FlowTrainConfig, Trainer, variational_free_energy  # noqa: E402

RESULTS = Path(__file__).parent / "results"
RUNS = {
    "L4": dict(L=4, steps=1500, batch=256),
    "L8": dict(L=8, steps=3000, batch=256),
    "L16": dict(L=16, steps=5000, batch=256),
    "L16-long": dict(L=16, steps=20000, batch=256),
    "L16-50min": dict(L=16, steps=16000, batch=256),
}
EVAL_SAMPLES = 4096
FINAL_EVAL_SAMPLES = 32768


def run(name: str, threads: int, seed: int) -> dict:
    cfg = FlowTrainConfig(**RUNS[name], threads=threads, seed=seed)
    trainer = Trainer(cfg)
    exact = trainer.exact_free_energy
    eval_gen = torch.Generator().manual_seed(seed + 1)
    checkpoints = sorted(set(np.linspace(0, cfg.steps, 13).astype(int).tolist()))
    curve = []
    for until in checkpoints:
        trainer.train(until_step=until)
        n = FINAL_EVAL_SAMPLES if until == cfg.steps else EVAL_SAMPLES
        est = variational_free_energy(trainer.flow, trainer.target, n, generator=eval_gen)
        point = {
            "step": until,
            "train_seconds": trainer.wall_seconds,
            "relative_error": (est.mean - exact) / abs(exact),
            "relative_error_sigma": est.error / abs(exact),
        }
        curve.append(point)
        print(f"{name}: step {until:6d}  {trainer.wall_seconds:8.1f} s  rel. error "
              f"{point['relative_error']:.3e} +- {point['relative_error_sigma']:.1e}", flush=True)
    return {
        "config": cfg.to_dict(),
        "parameters": sum(p.numel() for p in trainer.flow.parameters()),
        "exact_free_energy": exact,
        "final_variational_free_energy": est.to_dict(),
        "curve": curve,
    }


def write_outputs(results: dict) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "flow_training.json").write_text(json.dumps(results, indent=2) + "\n")
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, r in results["runs"].items():
        c = [p for p in r["curve"] if p["step"] > 0]
        ax.errorbar([p["train_seconds"] for p in c], [p["relative_error"] for p in c],
                    yerr=[p["relative_error_sigma"] for p in c], marker="o", ms=3, label=name, capsize=2)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training wall time (s)")
    ax.set_ylabel(r"relative error $(F_q - F)/|F|$")
    ax.set_title("NeuralRG (MERA, Z2-symmetrized) at $K_c$", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "flow_training.png", dpi=120)
    m = results["machine"]
    lines = [
        "# NeuralRG: relative error of the variational free energy vs wall time",
        "",
        f"Machine: {m['cpu']}, {m.get('cores', m.get('logical_cores'))} logical cores, torch {m['torch']} "
        f"({m['torch_threads']} threads), Python {m['python']}, deeprg {m['deeprg']}, {m['date']}.",
        "",
        "Command: `python benchmarks/bench_flow.py --runs " + " ".join(results["runs"]) + "`. "
        "Target: continuous relaxation of the critical Ising model (Li & Wang Eq. 7), exact "
        "`-ln Z` from Kaufman's formula. Relative error `(F_q - F)/|F|` measured on fresh samples "
        f"({EVAL_SAMPLES}, final {FINAL_EVAL_SAMPLES}); time is training time only.",
        "",
        "| run | L | linear map | steps | batch | parameters | wall time (s) | final relative error |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in results["runs"].items():
        cfg, last = r["config"], r["curve"][-1]
        lines.append(f"| {name} | {cfg['L']} | {'yes' if cfg.get('linear') else 'no'} | {cfg['steps']} | "
                     f"{cfg['batch']} | {r['parameters']} | {last['train_seconds']:.0f} | "
                     f"{last['relative_error']:.2e} +- {last['relative_error_sigma']:.0e} |")
    lines += ["", "Settings (all runs): " + ", ".join(
        f"{k}={v}" for k, v in next(iter(results["runs"].values()))["config"].items()
        if k not in ("L", "steps", "batch", "linear")), "",
        "Runs named `-nolinear` were made before the circulant linear map existed (commit 1b62140), "
        "alone on the machine; the others with the current default.", "",
        "Curves (relative error at training time):", ""]
    for name, r in results["runs"].items():
        pts = ", ".join(f"{p['train_seconds']:.0f}s: {p['relative_error']:.2e}" for p in r["curve"] if p["step"] > 0)
        lines.append(f"- **{name}**: {pts}")
    lines += ["", "Targets on 16 x 16 at K_c, 2 CPU cores: relative error below 5e-3 within 15 minutes and "
              "below 2e-3 within an hour. For comparison, the authors' public code (batch 512, their README "
              "network, Z2-symmetrized), measured on one thread of this kind of machine: 2.0e-2 after 4 minutes, "
              "1.4e-2 after 13 minutes; their published runs ended near 5e-3 after 5,000 steps.", ""]
    for name in results["runs"]:
        if not name.startswith("L16"):
            continue
        limit = 900 if name in ("L16", "L16-nolinear") else 3600
        within = [p for p in results["runs"][name]["curve"] if 0 < p["train_seconds"] <= limit]
        if within:
            best = within[-1]
            lines.append(f"- {name}: {best['relative_error']:.2e} +- {best['relative_error_sigma']:.0e} "
                         f"after {best['train_seconds']:.0f} s (the last point within {limit} s).")
    lines += ["", "![curves](flow_training.png)", ""]
    (RESULTS / "flow_training.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", choices=list(RUNS), default=["L4", "L8", "L16"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report-only", action="store_true", help="rewrite the Markdown and figure from the JSON")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    path = RESULTS / "flow_training.json"
    results = json.loads(path.read_text()) if path.exists() else {"runs": {}}
    if args.report_only:
        write_outputs(results)
        return
    results["machine"] = {**describe(), "torch_threads": args.threads}
    for name in args.runs:
        t0 = time.time()
        results["runs"][name] = run(name, args.threads, args.seed)
        print(f"{name}: {time.time() - t0:.0f} s in total", flush=True)
        write_outputs(results)


if __name__ == "__main__":
    main()
