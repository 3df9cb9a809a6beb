"""Which training covers the target: objectives and conditioners at equal training steps.

Trains the default flow on the relaxed Ising model at K_c (Li & Wang Eq. 7) with each variant
below, for the same number of steps and the same seed, and measures on fresh samples:

* the relative error of the variational free energy (Eq. 5; the reverse KL over |F|);
* the reverse effective sample size ``(sum w)^2 / (n sum w^2)`` and the Pareto tail index ``k`` of
  the importance weights ``w = pi / q`` (``k > 0.7``: the weights' variance is effectively
  infinite and importance-weighted numbers cannot be trusted);
* the flow's own, unweighted, structure factor ``<m^2>`` and fraction of fields with ``|m| < 0.3``
  (spins drawn from ``pi(s|x)``), against the same quantities on exact reference samples (Wolff
  spins, ``x = A s + chol(A) eps``). A flow that misses the disordered configurations shows a
  structure factor that is too large and almost no mass at small ``|m|``.

Run from the repository root (about 12 minutes on 2 cores at L = 8; run it alone):

    python benchmarks/bench_flow_objectives.py [--L 8] [--steps 1000]

Results go to benchmarks/results/flow_objectives.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from machine import describe  # noqa: E402

from deeprg.flows.estimators import weighted_estimate  # noqa: E402
from deeprg.flows.train import FlowTrainConfig, Trainer  # noqa: E402

RESULTS = Path(__file__).parent / "results"
VARIANTS = {
    "reverse KL (Eq. 5)": {},
    "reverse KL, 3x3 convolutional conditioners": dict(kernel=3),
    "mixture 0.5 reverse + 0.5 forward (reference samples)": dict(objective="mixture"),
    "forward KL (reference samples)": dict(objective="forward"),
    "forward KL (latent-HMC samples)": dict(objective="forward", pi_source="hmc"),
    "mixture 0.5 (latent-HMC samples)": dict(objective="mixture", pi_source="hmc"),
}
SAMPLES = 16384
BINS = np.linspace(0.0, 1.0, 21)


def magnetizations(target, x: torch.Tensor, seed: int) -> np.ndarray:
    """``|m|`` of spins ``s ~ pi(s|x)`` for fields ``x`` ``(n, *event)``."""
    s = target.sample_spins(x, torch.Generator().manual_seed(seed)).double()
    return s.reshape(len(s), -1).mean(1).abs().numpy()


@torch.no_grad()
def measure(trainer: Trainer, seed: int = 1) -> dict:
    flow, target = trainer.flow, trainer.target
    x, log_q = flow.sample_and_log_prob(SAMPLES, torch.Generator().manual_seed(seed))
    f = (log_q - target.log_prob_unnormalized(x)).double()
    exact = trainer.exact_free_energy
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # heavy tails are what this benchmark reports
        weights = weighted_estimate(-f)
    m = magnetizations(target, x, seed)
    return {
        "relative_error": (float(f.mean()) - exact) / abs(exact),
        "sigma": float(f.std()) / np.sqrt(len(f)) / abs(exact),
        "reverse_ess": weights.ess_fraction,
        "pareto_k": weights.pareto_k,
        "structure_factor": float((m**2).mean()),
        "small_m": float((m < 0.3).mean()),
        "histogram": np.histogram(m, BINS, density=True)[0].tolist(),
        "seconds": trainer.wall_seconds,
    }


def reference(trainer: Trainer, seed: int = 2) -> dict:
    x, _ = trainer.target.sample_reference(SAMPLES, seed)
    m = magnetizations(trainer.target, x, seed)
    return {"structure_factor": float((m**2).mean()),
            "structure_factor_error": float((m**2).std() / np.sqrt(len(m))),
            "small_m": float((m < 0.3).mean()), "histogram": np.histogram(m, BINS, density=True)[0].tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--L", type=int, default=8)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows, ref = {}, None
    for name, change in VARIANTS.items():
        cfg = FlowTrainConfig(L=args.L, steps=args.steps, seed=0, threads=args.threads, **change)
        trainer = Trainer(cfg)
        trainer.train()
        if ref is None:
            ref = reference(trainer)
        try:
            rows[name] = measure(trainer)
        except FloatingPointError as err:  # a diverged flow: a result too
            rows[name] = {"failed": str(err), "last_record": trainer.history[-1], "seconds": trainer.wall_seconds}
            print(f"{name}: {err}", flush=True)
            continue
        r = rows[name]
        print(f"{name}: relative error {r['relative_error']:.2e}, ESS {r['reverse_ess']:.3f}, k {r['pareto_k']:.2f}, "
              f"S {r['structure_factor']:.3f} (reference {ref['structure_factor']:.3f}), "
              f"{r['seconds']:.0f} s", flush=True)
    results = {"machine": {**describe(), "torch_threads": args.threads}, "L": args.L, "steps": args.steps,
               "samples": SAMPLES, "reference": ref, "variants": rows}
    RESULTS.mkdir(exist_ok=True)
    stem = "flow_objectives" if args.L == 8 else f"flow_objectives_L{args.L}"
    (RESULTS / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")

    centers = 0.5 * (BINS[1:] + BINS[:-1])
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.step(centers, ref["histogram"], where="mid", color="black", lw=2, label="exact reference samples")
    for name, r in rows.items():
        if "histogram" in r:
            ax.step(centers, r["histogram"], where="mid", label=name)
    ax.set(xlabel="|m| of spins drawn from pi(s|x)", ylabel="density", yscale="log",
           title=f"{args.L}x{args.L} relaxed Ising at K_c: what the flow samples ({args.steps} steps)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / f"{stem}.png", dpi=120)

    m = results["machine"]
    lines = [f"# Which training covers the target ({args.L} x {args.L}, K_c, {args.steps} steps)", "",
             f"Machine: {m['cpu']}, {m['cores']} logical cores, torch {m['torch']} ({args.threads} thread), "
             f"{m['date']}. Command: `python benchmarks/bench_flow_objectives.py --L {args.L} --steps {args.steps}`.",
             "", f"Default flow, batch 256, seed 0; every number on {SAMPLES} fresh samples. Reference: exact samples "
             f"(Wolff spins, x = A s + chol(A) eps): structure factor {ref['structure_factor']:.4f} +- "
             f"{ref['structure_factor_error']:.4f}, fraction with |m| < 0.3: {ref['small_m']:.4f}.", "",
             "| training | relative error | reverse ESS | tail index k | structure factor | P(abs m < 0.3) | "
             "training (s) |", "| --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {k} | {r['relative_error']:.2e} +- {r['sigma']:.0e} | {r['reverse_ess']:.3f} | {r['pareto_k']:.2f} | "
              f"{r['structure_factor']:.4f} | {r['small_m']:.4f} | {r['seconds']:.0f} |" if "failed" not in r else
              f"| {k} | diverged: variational free energy {r['last_record']['loss']:.3g} at the last step "
              f"(forward NLL {r['last_record'].get('forward_nll', float('nan')):.1f}); {r['failed']} | | | | | "
              f"{r['seconds']:.0f} |" for k, r in rows.items()]
    lines += ["", f"![magnetization histograms]({stem}.png)"]
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
