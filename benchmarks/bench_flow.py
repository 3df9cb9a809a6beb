"""NeuralRG benchmark: relative error of the variational free energy against wall time.

At K_c on L x L lattices (L = 4, 8, 16), train the package's default flow (MERA of affine couplings
with hidden 32 x 32, then the site-wise odd monotone map and the circulant linear map;
Z2-symmetrized) and record, at 12 points along training, the relative error
``(F_q - F) / |F|`` of the variational free energy ``F_q`` (Eq. 3, estimated on fresh samples,
evaluation time excluded) against the exact ``F = -ln Z`` of the continuous relaxation.

Run from the repository root (about 25 minutes on 2 cores for the default runs):

    python benchmarks/bench_flow.py                     # L = 4, 8, 16 (16: ~15 min)
    python benchmarks/bench_flow.py --runs L16-hour     # 16 x 16, a schedule that ends within the hour
                                                        # (about 40 minutes)
    python benchmarks/bench_flow.py --save-runs runs/bench   # also keep each trained flow as a run
                                                             # directory (for bench_hmc.py --run)

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

from deeprg.flows.train import (  # noqa: E402
    CHECKPOINT_NAME,
    FlowTrainConfig,
    Trainer,
    variational_free_energy,
    write_run_config,
)

RESULTS = Path(__file__).parent / "results"
RUNS = {
    "L4": dict(L=4, steps=1500, batch=256),
    "L8": dict(L=8, steps=3000, batch=256),
    "L16": dict(L=16, steps=4500, batch=256),
    "L16-hour": dict(L=16, steps=12000, batch=256),
}
#: Suffixes of runs made with earlier defaults (kept in the JSON, drawn grey in the figure).
EARLIER = ("-nolinear", "-linearonly")
EVAL_SAMPLES = 4096
FINAL_EVAL_SAMPLES = 32768


def run(name: str, threads: int, seed: int, save_dir: Path | None = None) -> dict:
    cfg = FlowTrainConfig(**RUNS[name], threads=threads, seed=seed)
    trainer = Trainer(cfg)
    exact = trainer.exact_free_energy
    eval_gen = torch.Generator().manual_seed(seed + 1)
    checkpoints = sorted(set(np.linspace(0, cfg.steps, 13).astype(int).tolist()))
    curve = []
    for until in checkpoints:
        trainer.train(until=until)
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
    if save_dir is not None:
        (save_dir / name).mkdir(parents=True, exist_ok=True)
        write_run_config(save_dir / name, cfg, command=f"benchmarks/bench_flow.py --runs {name}")
        trainer.save(save_dir / name / CHECKPOINT_NAME)
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
    fig, ax = plt.subplots(figsize=(8, 4.2))
    for name, r in results["runs"].items():
        c = [p for p in r["curve"] if p["step"] > 0]
        earlier = name.endswith(EARLIER)
        if earlier and not name.startswith("L16"):
            continue
        style = dict(color="0.6", ls="--", ms=2, lw=0.8) if earlier else dict(ms=3)
        ax.errorbar([p["train_seconds"] for p in c], [p["relative_error"] for p in c],
                    yerr=[p["relative_error_sigma"] for p in c], marker="o", label=name, capsize=2, **style)
    for seconds, target in ((900, 5e-3), (3600, 2e-3)):  # the 16 x 16 targets
        ax.plot([seconds], [target], marker="*", ms=12, color="k", ls="none")
        ax.annotate(f"target: {target:.0e} in {seconds // 60} min", (seconds, target), textcoords="offset points",
                    xytext=(-10, -12), ha="right", fontsize=7)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training wall time (s)")
    ax.set_ylabel(r"relative error $(F_q - F)/|F|$")
    ax.set_title("NeuralRG at $K_c$ (grey: earlier default flows, 16 x 16)", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "flow_training.png", dpi=120)
    m = results["machine"]
    current = [name for name in results["runs"] if not name.endswith(EARLIER)]
    lines = [
        "# NeuralRG: relative error of the variational free energy vs wall time",
        "",
        f"Machine: {m['cpu']}, {m.get('cores', m.get('logical_cores'))} logical cores, torch {m['torch']} "
        f"({m['torch_threads']} threads), Python {m['python']}, deeprg {m['deeprg']}, {m['date']}.",
        "",
        "Command: `python benchmarks/bench_flow.py --runs " + " ".join(current) + "`. "
        "Target: continuous relaxation of the critical Ising model (Li & Wang Eq. 7), exact "
        "`-ln Z` from Kaufman's formula. Relative error `(F_q - F)/|F|` measured on fresh samples "
        f"({EVAL_SAMPLES}, final {FINAL_EVAL_SAMPLES}); time is training time only.",
        "",
        "| run | L | linear map | site map | steps | batch | parameters | wall time (s) | final relative error |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in results["runs"].items():
        cfg, last = r["config"], r["curve"][-1]
        lines.append(f"| {name} | {cfg['L']} | {'yes' if cfg.get('linear') else 'no'} | "
                     f"{'yes' if cfg.get('elementwise') else 'no'} | {cfg['steps']} | "
                     f"{cfg['batch']} | {r['parameters']} | {last['train_seconds']:.0f} | "
                     f"{last['relative_error']:.2e} +- {last['relative_error_sigma']:.0e} |")
    lines += ["", "Settings (all runs): " + ", ".join(
        f"{k}={v}" for k, v in results["runs"][current[0]]["config"].items()
        if k not in ("L", "steps", "batch", "linear", "elementwise")), "",
        "Earlier generations of the default flow, kept for comparison (each ran alone on the machine): "
        "`-nolinear` runs predate the circulant linear map (commit 1b62140); `-linearonly` runs had the "
        "linear map but not the site-wise odd monotone map (commit d7604f9). The runs without a suffix "
        "use the current default (both maps).", "",
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
        limit = 900 if results["runs"][name]["config"]["steps"] <= 5000 else 3600  # the 15-minute or hour target
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
    parser.add_argument("--save-runs", type=Path, metavar="DIR", help="save each trained flow as DIR/<run name>")
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
        results["runs"][name] = run(name, args.threads, args.seed, args.save_runs)
        print(f"{name}: {time.time() - t0:.0f} s in total", flush=True)
        write_outputs(results)


if __name__ == "__main__":
    main()
