"""NeuralRG in use: latent-space vs physical-space HMC, and the importance-weighted ln Z.

For L = 8 and 16 at K_c: train the default flow (or load a run directory given with ``--run``;
L = 32 needs one),
then from the same starting fields (flow samples) run HMC in the latent space (Li & Wang Eq. 6)
and in the physical space (Eq. 7) with the same chains, warm-up (step size adapted to 80%
acceptance) and leapfrog steps. For the structure factor ``<(sum_i s_i)^2>/N^2`` of spins drawn
from ``pi(s|x)`` report the integrated autocorrelation time per HMC step and per CPU second
(``tau_steps * seconds_per_step``), and the efficiency ratio physical / latent of the latter. The
same for independence Metropolis-Hastings with the flow as proposal (the other exact sampler the
flow gives), and the best ratio any flow of the same cost could reach (a perfect flow: latent tau
of half a step). Then ln Z and the reweighted structure factor by importance sampling and by
annealed importance sampling (latent-space HMC through a ladder of temperatures), each with its
error bar, ESS and Pareto tail index, against the exact ln Z and the Monte Carlo reference.

Run from the repository root (about 40 minutes on 2 cores):

    python benchmarks/bench_hmc.py
    python benchmarks/bench_hmc.py --sizes 8 --run 8=flow-run    # reuse a trained run
    python benchmarks/bench_hmc.py --run 8=runs/bench/L8 --run 16=runs/bench/L16   # flows saved by
                                                  # python benchmarks/bench_flow.py --save-runs runs/bench
    python benchmarks/bench_hmc.py --sizes 32 --run 32=runs/bench/L32-forward --physical-steps 10000 \
        --no-weighted --merge     # add L = 32 to the saved results: samplers only, physical HMC
                                  # run longer because its tau grows with L (see docs/neuralrg.md)

Results go to benchmarks/results/hmc.{json,md} and hmc_L*.png (Fig. 3(b)-style traces).
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import torch

from machine import describe

from deeprg.flows.annealing import annealed_importance_sampling
from deeprg.flows.estimators import importance_ln_z, independence_metropolis, ising_observables
from deeprg.flows.sampling import hmc_in_space, starting_fields
from deeprg.flows.train import FlowTrainConfig, Trainer, load_run
from deeprg.mc.reference import ising_reference
from deeprg.mc.stats import estimate
from deeprg.mc.stats import format_value_error as fmt
from deeprg.plots import hmc_traces

RESULTS = Path(__file__).parent / "results"
TRAIN_STEPS = {8: 3000, 16: 3000}
CHAINS, STEPS, WARMUP, LEAPFROG = 64, 1000, 200, 10
IW_SAMPLES = 100_000
AIS_SAMPLES, AIS_TEMPERATURES, AIS_LEAPFROG = 1024, 200, 5
#: tau_int of uncorrelated samples (Sokal's convention): no sampler of pi does better on average.
MIN_TAU = 0.5
LABELS = {"latent": "latent HMC", "physical": "physical HMC", "independence": "flow-proposal MH"}


def trained(L: int, run_dir: str | None, threads: int, seed: int) -> tuple[Trainer, float]:
    if run_dir:
        trainer = load_run(run_dir, threads=threads)
        return trainer, trainer.wall_seconds
    trainer = Trainer(FlowTrainConfig(L=L, steps=TRAIN_STEPS[L], threads=threads, seed=seed))
    trainer.train(on_record=lambda r: r["step"] % 500 == 0 and print(
        f"  L={L} training step {r['step']}: relative error {r.get('relative_error', float('nan')):.2e}", flush=True))
    return trainer, trainer.wall_seconds


def summarize(production: dict, warmup_trace: torch.Tensor, cpu: float, wall: float, acceptance: float) -> dict:
    """Estimates, tau and costs of one sampler run; ``production`` maps observable names to
    ``(steps, CHAINS)`` series, ``warmup_trace`` is the structure factor during warm-up."""
    steps = len(production["structure_factor"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sf = estimate(production["structure_factor"].T.numpy())
        en = estimate(production["energy_per_site"].T.numpy())
    cpu_per_step = cpu / (steps + WARMUP)
    return {
        "steps": steps,
        "structure_factor": sf.to_dict(),
        "energy_per_site": en.to_dict(),
        "tau_steps": sf.tau_int,
        "tau_is_lower_bound": any("lower bound" in str(w.message) for w in caught),
        "cpu_seconds": cpu,
        "wall_seconds": wall,
        "cpu_seconds_per_step": cpu_per_step,
        "tau_cpu_seconds": sf.tau_int * cpu_per_step,
        "acceptance": acceptance,
        "trace": torch.cat([warmup_trace, production["structure_factor"]]).numpy(),
    }


def sampler_run(trainer: Trainer, space: str, x0: torch.Tensor, seed: int, steps: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    t0, w0 = time.process_time(), time.perf_counter()
    res = hmc_in_space(trainer.flow, trainer.target, space, x0, steps, step_size=0.1, n_leapfrog=LEAPFROG,
                       warmup=WARMUP, generator=gen)
    cpu, wall = time.process_time() - t0, time.perf_counter() - w0
    out = summarize(res.series, res.warmup_series["structure_factor"], cpu, wall, res.acceptance_rate)
    return {**out, "step_size": res.step_size}


def independence_run(trainer: Trainer, seed: int, steps: int) -> dict:
    """Independence Metropolis-Hastings with the (symmetrized) flow as proposal, same chains and
    number of steps as HMC; the first ``WARMUP`` steps are discarded."""
    gen = torch.Generator().manual_seed(seed)
    observables = ising_observables(trainer.target, gen)
    t0, w0 = time.process_time(), time.perf_counter()
    res = independence_metropolis(trainer.flow, trainer.target, WARMUP + steps, CHAINS, observables, gen)
    cpu, wall = time.process_time() - t0, time.perf_counter() - w0
    production = {name: series[WARMUP:] for name, series in res.series.items()}
    return summarize(production, res.series["structure_factor"][:WARMUP], cpu, wall, res.acceptance_rate)


def bench(L: int, run_dir: str | None, threads: int, seed: int, steps: dict[str, int], weighted: bool) -> dict:
    """Samplers (``steps``: production steps per sampler) and, if ``weighted``, ln Z by plain and
    annealed importance sampling, for the flow of size ``L``."""
    trainer, train_seconds = trained(L, run_dir, threads, seed)
    flow, target = trainer.flow, trainer.target
    x0 = starting_fields(flow, CHAINS, "flow", torch.Generator().manual_seed(seed + 1))
    runs = {}
    for space in ("latent", "physical"):
        runs[space] = sampler_run(trainer, space, x0, seed + 2, steps[space])
        r = runs[space]
        print(f"  L={L} {space:8s}: S = {estimate(r['trace'][WARMUP:].T)}  tau {r['tau_steps']:.1f} steps"
              f"{' (lower bound)' if r['tau_is_lower_bound'] else ''} = {r['tau_cpu_seconds']:.3f} CPU s,"
              f" acceptance {r['acceptance']:.2f}", flush=True)
    runs["independence"] = independence_run(trainer, seed + 4, steps["independence"])
    r = runs["independence"]
    print(f"  L={L} flow-proposal MH: S = {estimate(r['trace'][WARMUP:].T)}  tau {r['tau_steps']:.1f} steps"
          f" = {r['tau_cpu_seconds']:.3f} CPU s, acceptance {r['acceptance']:.2f}", flush=True)
    reference = ising_reference(target.lattice, trainer.cfg.beta, n_samples=100_000, seed=seed)
    hmc_traces({LABELS[s]: r.pop("trace") for s, r in runs.items()}, WARMUP,
               (reference["structure_factor"].mean, reference["structure_factor"].error),
               RESULTS / f"hmc_L{L}.png", r"structure factor $\langle (\sum_i s_i)^2\rangle / N^2$",
               title=f"HMC at K_c, L={L}: {CHAINS} chains, same start (flow samples)")
    weighted = {} if not weighted else {"importance": importance_weighted(trainer, seed + 3, annealed=False),
                                        "annealed": importance_weighted(trainer, seed + 5, annealed=True)}
    for method, w in weighted.items():
        print(f"  L={L} {method} sampling: ln Z = {fmt(w['ln_z']['mean'], w['ln_z']['error'])} "
              f"({w['deviation_sigma']:+.1f} sigma), ESS fraction {w['ess_fraction']:.3f}, k {w['pareto_k']:.2f}, "
              f"{w['cpu_seconds']:.0f} CPU s", flush=True)
    return {
        "L": L,
        "train_steps": trainer.step_count,
        "train_seconds": train_seconds,
        "final_relative_error": trainer.history[-1].get("relative_error") if trainer.history else None,
        "reference": {k: v.to_dict() for k, v in reference.items()},
        "runs": runs,
        "efficiency_ratio_per_cpu_second": runs["physical"]["tau_cpu_seconds"] / runs["latent"]["tau_cpu_seconds"],
        "efficiency_ratio_per_step": runs["physical"]["tau_steps"] / runs["latent"]["tau_steps"],
        "perfect_flow_ratio_per_cpu_second":
            runs["physical"]["tau_cpu_seconds"] / (MIN_TAU * runs["latent"]["cpu_seconds_per_step"]),
        "independence_efficiency_ratio_per_cpu_second":
            runs["physical"]["tau_cpu_seconds"] / runs["independence"]["tau_cpu_seconds"],
        "weighted": weighted,
        "exact_ln_z": trainer.exact_ln_z,
    }


def importance_weighted(trainer: Trainer, seed: int, annealed: bool) -> dict:
    """ln Z and the reweighted observables by plain or annealed importance sampling."""
    flow, target = trainer.flow, trainer.target
    gen = torch.Generator().manual_seed(seed)
    observables = ising_observables(target, gen)
    t0 = time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tail index is reported instead
        if annealed:
            est = annealed_importance_sampling(flow, target, AIS_SAMPLES, AIS_TEMPERATURES, AIS_LEAPFROG,
                                               observables=observables, generator=gen).estimate
        else:
            est = importance_ln_z(flow, target, IW_SAMPLES, generator=gen, observables=observables)
    return {
        "ln_z": est.ln_z.to_dict(),
        "deviation_sigma": (est.ln_z.mean - trainer.exact_ln_z) / est.ln_z.error,
        "ess_fraction": est.ess_fraction,
        "pareto_k": est.pareto_k,
        **{name: o.to_dict() for name, o in est.observables.items()},
        "samples": AIS_SAMPLES if annealed else IW_SAMPLES,
        "temperatures": AIS_TEMPERATURES if annealed else 1,
        "leapfrog": AIS_LEAPFROG if annealed else 0,
        "cpu_seconds": time.process_time() - t0,
    }


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [
        "# NeuralRG in use: latent vs physical HMC, (annealed) importance-weighted ln Z",
        "",
        f"Machine: {m['cpu']}, {m['cores']} logical cores, torch {m['torch']} ({results['threads']} threads), "
        f"{m['date']}.",
        "",
        f"Command: `{results['command']}`. {CHAINS} chains, {WARMUP} warm-up + production steps (column 'steps') "
        f"of {LEAPFROG} leapfrog steps, both samplers from the same flow samples; structure factor "
        "S = <(sum_i s_i)^2>/N^2 of spins drawn from pi(s|x). tau is the integrated autocorrelation "
        "time of S (Sokal window); per CPU second = tau x CPU seconds per HMC step of all chains.",
        "",
        "Flows: " + "; ".join(f"L={r['L']}: {r['train_steps']} training steps, relative error "
                              f"{r['final_relative_error']:.1e} (last batch)" for r in results["sizes"]) + ".",
        *([results["notes"], ""] if results.get("notes") else [""]),
        *[f"Added later: L = {', '.join(map(str, a['sizes']))} by `{a['command']}` ({a['threads']} threads, "
          f"{a['machine']['date']})." for a in results.get("added", [])],
        *([""] if results.get("added") else []),
        "| L | sampler | steps | S | reference S | tau (steps) | CPU s / step | tau (CPU s) | acceptance |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results["sizes"]:
        ref = r["reference"]["structure_factor"]
        for space, s in r["runs"].items():
            sf = s["structure_factor"]
            bound = " (lower bound)" if s["tau_is_lower_bound"] else ""
            steps = s.get("steps", STEPS)
            if not bound and steps < 50 * s["tau_steps"]:
                bound = f" (run = {steps / s['tau_steps']:.0f} tau: rough)"
            lines.append(f"| {r['L']} | {LABELS[space]} | {steps} | {fmt(sf['mean'], sf['error'])} | "
                         f"{fmt(ref['mean'], ref['error'])} | "
                         f"{s['tau_steps']:.1f}{bound} | {s['cpu_seconds_per_step']:.4f} | {s['tau_cpu_seconds']:.3f} | "
                         f"{s['acceptance']:.2f} |")
    lines += ["", "| L | latent / physical HMC, per step | latent / physical HMC, per CPU second | "
              "the same for a perfect flow of this cost | flow-proposal MH / physical HMC, per CPU second | "
              "flow training (s) |",
              "| --- | --- | --- | --- | --- | --- |"]
    for r in results["sizes"]:
        lines.append(f"| {r['L']} | {r['efficiency_ratio_per_step']:.2g} | {r['efficiency_ratio_per_cpu_second']:.2g} | "
                     f"{r['perfect_flow_ratio_per_cpu_second']:.2g} | "
                     f"{r['independence_efficiency_ratio_per_cpu_second']:.2g} | {r['train_seconds']:.0f} |")
    lines += ["", "Efficiency = 1 / tau: the ratio is tau(physical) / tau(latent), per HMC step and per CPU "
              f"second. Target: latent at least 10x more efficient per CPU second. A perfect flow would make "
              f"latent samples independent, tau = {MIN_TAU} steps, at the same cost per step: its column, "
              "tau(physical, CPU s) / (0.5 x CPU s per latent step), bounds what any flow of this size could "
              "reach on this machine. A tau marked 'lower bound' did not fit the run; one marked 'rough' comes "
              "from a run shorter than 50 tau.", "",
              "| L | method | ln Z | exact ln Z | deviation | ESS fraction | Pareto tail index k | reweighted S | "
              "reference S | samples | CPU s |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results["sizes"]:
        ref = r["reference"]["structure_factor"]
        for method, w in r["weighted"].items():
            name = ("importance sampling" if method == "importance" else
                    f"annealed ({w['temperatures']} temperatures x {w['leapfrog']} leapfrog)")
            sf = w["structure_factor"]
            lines.append(f"| {r['L']} | {name} | {fmt(w['ln_z']['mean'], w['ln_z']['error'])} | "
                         f"{r['exact_ln_z']:.5f} | {w['deviation_sigma']:+.1f} sigma | {w['ess_fraction']:.3f} | "
                         f"{w['pareto_k']:.2f} | {fmt(sf['mean'], sf['error'])} | {fmt(ref['mean'], ref['error'])} | "
                         f"{w['samples']} | {w['cpu_seconds']:.0f} |")
    lines += ["", "A reverse-KL-trained flow under-covers part of pi, so the importance weights pi/q are "
              "heavy-tailed. The Pareto tail index k of the largest weights says how badly: above 0.7 the "
              "delta-method error bar is unreliable and ln Z is biased low (deeprg warns then, and below 200 "
              "effective samples). Annealing the flow samples to pi by latent-space HMC through a ladder of "
              "temperatures (annealed importance sampling, Neal 2001; ladder b_t = 1 - (1 - t/T)^3) keeps the "
              "estimate unbiased for any flow and makes the weights light-tailed. Light tails do not prove "
              "convergence, though: configurations the flow under-covers (here the disordered ones) gain "
              "weight only near b = 1, where the chains must reach them by local moves, and those no chain "
              "reaches are missing from ln Z and from the reweighted S alike, unseen by the ESS and k. The "
              "reweighted S against the reference shows whether that happened. Flow-proposal Metropolis-Hastings suffers from the heavy tail: it is "
              "exact only asymptotically, and a finite run stays biased toward the flow (compare its S with "
              "the reference). Latent HMC does not depend on the weights: it samples pi exactly with local "
              "moves, and its S agrees with the reference."]
    lines += [""] + [f"![L={r['L']}](hmc_L{r['L']}.png)" for r in results["sizes"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 16], choices=(8, 16, 32))
    parser.add_argument("--run", action="append", default=[], metavar="L=RUN",
                        help="use the trained run directory RUN for size L instead of training")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=STEPS, help="production steps of every sampler")
    parser.add_argument("--physical-steps", type=int, default=None, help="production steps of physical HMC "
                        "[--steps]; physical tau grows with L, so large lattices need longer runs")
    parser.add_argument("--no-weighted", action="store_true", help="skip ln Z by (annealed) importance sampling")
    parser.add_argument("--merge", action="store_true", help="add these sizes to the saved hmc.json "
                        "(replacing the same sizes) instead of starting it afresh")
    parser.add_argument("--report-only", action="store_true", help="rewrite hmc.md from hmc.json")
    args = parser.parse_args()
    runs = dict(item.split("=", 1) for item in args.run)
    missing = [L for L in args.sizes if L not in TRAIN_STEPS and str(L) not in runs]
    if missing:
        parser.error(f"--sizes {missing[0]}: no default training for this size; give a trained run with "
                     f"--run {missing[0]}=RUN")
    if args.report_only:
        results = json.loads((RESULTS / "hmc.json").read_text())
        (RESULTS / "hmc.md").write_text(markdown(results))
        return
    torch.set_num_threads(args.threads)
    RESULTS.mkdir(exist_ok=True)
    steps = {"latent": args.steps, "physical": args.physical_steps or args.steps, "independence": args.steps}
    sizes = [bench(L, runs.get(str(L)), args.threads, args.seed, steps, not args.no_weighted) for L in args.sizes]
    command = "python benchmarks/bench_hmc.py " + " ".join(
        [f"--sizes {' '.join(map(str, args.sizes))}", f"--threads {args.threads}"] + [f"--run {r}" for r in args.run]
        + ([f"--steps {args.steps}"] if args.steps != STEPS else [])
        + ([f"--physical-steps {args.physical_steps}"] if args.physical_steps else [])
        + (["--no-weighted"] if args.no_weighted else []) + (["--merge"] if args.merge else []))
    results = {"machine": describe(), "threads": args.threads, "seed": args.seed, "command": command, "sizes": sizes}
    if args.merge and (RESULTS / "hmc.json").exists():
        saved = json.loads((RESULTS / "hmc.json").read_text())
        new = {r["L"] for r in sizes}
        results = {**saved, "sizes": sorted([r for r in saved["sizes"] if r["L"] not in new] + sizes,
                                            key=lambda r: r["L"]),
                   "added": saved.get("added", []) + [{"machine": describe(), "threads": args.threads,
                                                        "command": command, "sizes": sorted(new)}]}
    (RESULTS / "hmc.json").write_text(json.dumps(results, indent=2, default=float) + "\n")
    (RESULTS / "hmc.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
