"""``deeprg flow estimate|sample|hmc|mh|analyze``: commands that load a run directory written by
``deeprg flow train`` and use the trained flow (estimators, sampling, latent analysis)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from deeprg.cli.common import (
    UsageError,
    int_at_least,
    positive_float,
    print_json,
    writable_file,
)
from deeprg.flows.analysis import (
    latent_and_physical_mutual_information,
    response_maps,
    top_latent_energy,
    top_latent_sites,
)
from deeprg.flows.annealing import annealed_importance_sampling
from deeprg.flows.estimators import (
    importance_ln_z,
    independence_metropolis,
    ising_observables,
)
from deeprg.flows.sampling import SPACES, STARTS, hmc_in_space, starting_fields
from deeprg.flows.train import (
    CheckpointMismatch,
    Trainer,
    load_run,
    variational_free_energy,
)
from deeprg.mc.hmc import HMCDivergence
from deeprg.mc.reference import ising_reference
from deeprg.mc.stats import estimate, format_value_error
from deeprg.plots import field_grid, hmc_traces, latent_energy, mutual_information_maps
from deeprg.runs import atomic_path, write_json


def add_actions(actions: argparse._SubParsersAction) -> None:
    """Add the actions that use a trained flow to the ``deeprg flow`` subparsers."""
    e = actions.add_parser(
        "estimate", help="ln Z and reweighted observables by importance sampling from a trained flow",
        description="Importance sampling with the trained flow as proposal: ln Z (Eq. 6) with its error bar, "
        "the effective sample size and the Pareto tail index of the weights, the structure factor and energy "
        "per site reweighted to pi, the variational bound and, on the square lattice, the exact ln Z. With "
        "--anneal T the flow samples are annealed to pi through T temperatures by HMC in the latent space "
        "(annealed importance sampling): unbiased like plain importance sampling, with much lighter-tailed "
        "weights. Light tails do not prove convergence: check that ln Z stays within its error bar when T is "
        "doubled.")
    e.add_argument("run_dir", metavar="RUN", help="run directory of 'deeprg flow train'")
    e.add_argument("--samples", type=int_at_least(25),
                   help="flow samples [100000; 1000 with --anneal]")
    e.add_argument("--anneal", type=int_at_least(1), default=1, metavar="T",
                   help="temperatures of annealed importance sampling; 1 is plain importance sampling [1]")
    e.add_argument("--leapfrog", type=int_at_least(1), default=5,
                   help="leapfrog steps per HMC transition with --anneal [5]")
    e.add_argument("--seed", type=int_at_least(0), default=0, help="random seed [0]")
    e.add_argument("--threads", type=int_at_least(1), help="torch CPU threads")
    e.add_argument("--json", action="store_true", help="print a machine-readable summary")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    e.set_defaults(run=run_estimate)

    m = actions.add_parser("sample", help="draw fields and Ising spins from a trained flow")
    m.add_argument("run_dir", metavar="RUN", help="run directory of 'deeprg flow train'")
    m.add_argument("--n", type=int_at_least(1), default=64, help="samples [64]")
    m.add_argument("--seed", type=int_at_least(0), default=0, help="random seed [0]")
    m.add_argument("--out", required=True, help="output .npz (x: float32 fields, spins: int8); a PNG grid beside it")
    m.set_defaults(run=run_sample)

    h = actions.add_parser("hmc", help="hybrid Monte Carlo in the latent or the physical space")
    h.add_argument("run_dir", metavar="RUN", help="run directory of 'deeprg flow train'")
    h.add_argument("--space", choices=(*SPACES, "both"), default="latent",
                   help="sample the latents z (Eq. 6), the fields x (Eq. 7), or both from the same start [latent]")
    h.add_argument("--start", choices=STARTS, default="flow",
                   help="initial fields: flow samples, or N(0,1) noise to watch thermalization [flow]")
    h.add_argument("--chains", type=int_at_least(1), default=64, help="parallel chains [64]")
    h.add_argument("--steps", type=int_at_least(1), default=2000, help="production steps [2000]")
    h.add_argument("--warmup", type=int_at_least(0), default=200, help="step-size adaptation steps [200]")
    h.add_argument("--step-size", type=positive_float, default=0.1, help="initial leapfrog step [0.1]")
    h.add_argument("--leapfrog", type=int_at_least(1), default=10, help="leapfrog steps per trajectory [10]")
    h.add_argument("--seed", type=int_at_least(0), default=0, help="random seed [0]")
    h.add_argument("--threads", type=int_at_least(1), help="torch CPU threads")
    h.add_argument("--out", help="directory for hmc.json and the Fig. 3(b)-style plots hmc_*.png [none]")
    h.add_argument("--json", action="store_true", help="print a machine-readable summary")
    h.add_argument("--quiet", action="store_true", help="no progress bar")
    h.set_defaults(run=run_hmc)

    i = actions.add_parser("mh", help="independence Metropolis-Hastings with the flow as proposal",
                           description="Exact sampling of pi by Metropolis-Hastings with proposals drawn "
                           "independently from the trained flow, accepted with min(1, pi(x') q(x) / (pi(x) q(x')))."
                           " Reports the structure factor and energy per site of spins from pi(s|x), their "
                           "autocorrelation times and the acceptance rate.")
    i.add_argument("run_dir", metavar="RUN", help="run directory of 'deeprg flow train'")
    i.add_argument("--chains", type=int_at_least(1), default=64, help="parallel chains [64]")
    i.add_argument("--steps", type=int_at_least(1), default=2000, help="production steps [2000]")
    i.add_argument("--warmup", type=int_at_least(0), default=100, help="steps discarded first [100]")
    i.add_argument("--seed", type=int_at_least(0), default=0, help="random seed [0]")
    i.add_argument("--threads", type=int_at_least(1), help="torch CPU threads")
    i.add_argument("--json", action="store_true", help="print a machine-readable summary")
    i.set_defaults(run=run_mh)

    a = actions.add_parser("analyze", help="response maps and mutual information of the latent variables")
    a.add_argument("run_dir", metavar="RUN", help="run directory of 'deeprg flow train'")
    a.add_argument("--samples", type=int_at_least(64), default=2000, help="flow samples averaged over [2000]")
    a.add_argument("--seed", type=int_at_least(0), default=0, help="random seed [0]")
    a.add_argument("--out", help="output directory [RUN/analysis]")
    a.add_argument("--json", action="store_true", help="print the summary as JSON")
    a.set_defaults(run=run_analyze)


def _load(args: argparse.Namespace) -> Trainer:
    try:
        return load_run(args.run_dir, threads=getattr(args, "threads", None))
    except CheckpointMismatch as err:
        raise UsageError(f"RUN: {err}") from None


def run_estimate(args: argparse.Namespace) -> int:
    trainer = _load(args)
    flow, target = trainer.flow, trainer.target
    gen = torch.Generator(device=trainer.device).manual_seed(args.seed)
    annealed = args.anneal > 1
    n = args.samples or (1000 if annealed else 100_000)
    t0 = time.perf_counter()
    if annealed:
        with tqdm(disable=args.quiet, desc=f"annealing ({args.anneal} temperatures)", unit="transition",
                  file=sys.stderr, dynamic_ncols=True) as bar:

            def progress(done: int, total: int) -> None:
                bar.total = total
                bar.update(done - bar.n)

            result = annealed_importance_sampling(flow, target, n, args.anneal, args.leapfrog,
                                                  observables=ising_observables(target, gen), generator=gen,
                                                  callback=progress)
        est = result.estimate
    else:
        est = importance_ln_z(flow, target, n, generator=gen, observables=ising_observables(target, gen))
    seconds = time.perf_counter() - t0
    bound = variational_free_energy(flow, target, max(n, 10_000), generator=gen)
    exact = trainer.exact_ln_z
    summary = {
        "method": "annealed" if annealed else "importance",
        "ln_z": {"mean": est.ln_z.mean, "error": est.ln_z.error},
        "ess_fraction": est.ess_fraction,
        "pareto_k": est.pareto_k,
        **{name: {"mean": o.mean, "error": o.error} for name, o in est.observables.items()},
        "variational_free_energy": {"mean": bound.mean, "error": bound.error},
        "exact_ln_z": exact,
        "samples": n,
        "temperatures": args.anneal,
        "seed": args.seed,
        "seconds": seconds,
    }
    if annealed:
        summary.update(leapfrog=args.leapfrog, acceptance=float(result.acceptance.mean()))
    if args.json:
        print_json(summary)
        return 0
    how = (f"annealed importance sampling, {args.anneal} temperatures x {args.leapfrog} leapfrog steps, acceptance "
           f"{summary['acceptance']:.2f}" if annealed else "importance sampling")
    print(f"{how}: {n} samples, {seconds:.1f} s")
    print(f"  ln Z = {est.ln_z}   (ESS fraction {est.ess_fraction:.3f}, Pareto tail index {est.pareto_k:.2f})")
    for name, o in est.observables.items():
        print(f"  {name:18s} {str(o):>14s}   (reweighted)")
    print(f"variational bound  -F_q = {format_value_error(-bound.mean, bound.error)}")
    if exact is not None:
        print(f"exact              ln Z = {exact:.6f}   (deviation {(est.ln_z.mean - exact) / est.ln_z.error:+.1f} sigma)")
    return 0


def run_sample(args: argparse.Namespace) -> int:
    out = writable_file(args.out, "--out")
    trainer = _load(args)
    gen = torch.Generator(device=trainer.device).manual_seed(args.seed)
    with torch.no_grad():
        x = trainer.flow.sample(args.n, gen)
        spins = trainer.target.sample_spins(x, gen)
    x_np, s_np = x.float().cpu().numpy(), spins.cpu().numpy()
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, x=x_np, spins=s_np, seed=np.int64(args.seed))
    png = out.with_suffix(".png")
    if trainer.cfg.d == 2:
        field_grid(np.concatenate([x_np[:32], s_np[:32].astype(np.float32) * np.abs(x_np).max()]), png,
                   title=f"flow samples: fields x (first rows) and spins s ~ pi(s|x), L={trainer.cfg.L}")
    print(f"wrote {args.n} samples to {out}" + (f" and {png}" if trainer.cfg.d == 2 else ""))
    return 0


OBSERVABLES = ("structure_factor", "energy_per_site")


def _chain_summary(series: dict, acceptance: float, seconds: float) -> tuple[dict, dict]:
    """The JSON summary of one Markov-chain run (``series``: name -> ``(steps, chains)``) and its
    observables' estimates."""
    stats = {name: estimate(series[name].T.numpy()) for name in OBSERVABLES}
    return {
        **{name: {"mean": est.mean, "error": est.error} for name, est in stats.items()},
        "acceptance": acceptance,
        "tau_int": {name: est.tau_int for name, est in stats.items()},
        "seconds": seconds,
    }, stats


def _print_estimates(stats: dict) -> None:
    for name, est in stats.items():
        print(f"  {name:18s} {str(est):>14s}   tau_int {est.tau_int:.2f} steps")


def _hmc_summary(result, seconds: float) -> tuple[dict, dict]:
    summary, stats = _chain_summary(result.series, result.acceptance_rate, seconds)
    return {**summary, "step_size": result.step_size, "leapfrog": result.n_leapfrog}, stats


def run_mh(args: argparse.Namespace) -> int:
    trainer = _load(args)
    gen = torch.Generator(device=trainer.device).manual_seed(args.seed)
    t0 = time.perf_counter()
    result = independence_metropolis(trainer.flow, trainer.target, args.warmup + args.steps, args.chains,
                                     ising_observables(trainer.target, gen), gen)
    production = {name: series[args.warmup:] for name, series in result.series.items()}
    summary, stats = _chain_summary(production, float(result.acceptance[args.warmup:].mean()),
                                    time.perf_counter() - t0)
    summary.update(chains=args.chains, steps=args.steps, warmup=args.warmup, seed=args.seed)
    if args.json:
        print_json(summary)
        return 0
    print(f"independence Metropolis-Hastings (flow proposal): {args.chains} chains x {args.steps} steps, "
          f"acceptance {summary['acceptance']:.3f}, {summary['seconds']:.1f} s")
    _print_estimates(stats)
    return 0


def run_hmc(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else None
    if out is not None and out.exists() and not out.is_dir():
        raise UsageError(f"--out: {str(out)!r} exists and is not a directory")
    trainer = _load(args)
    flow, target = trainer.flow, trainer.target
    gen = torch.Generator(device=trainer.device).manual_seed(args.seed)
    x0 = starting_fields(flow, args.chains, args.start, gen)
    spaces = SPACES if args.space == "both" else (args.space,)
    results, summaries, estimates = {}, {}, {}
    for space in spaces:
        bar = tqdm(total=args.warmup + args.steps, disable=args.quiet, desc=f"hmc ({space})", unit="step",
                   file=sys.stderr, dynamic_ncols=True)
        t0 = time.perf_counter()
        try:
            results[space] = hmc_in_space(flow, target, space, x0, args.steps, step_size=args.step_size,
                                          n_leapfrog=args.leapfrog, warmup=args.warmup, generator=gen,
                                          callback=lambda step, acc: bar.update(1))
        except HMCDivergence as err:
            raise UsageError(f"--step-size: {err}") from None
        finally:
            bar.close()
        summaries[space], estimates[space] = _hmc_summary(results[space], time.perf_counter() - t0)
    reference = ising_reference(target.lattice, trainer.cfg.beta, seed=args.seed) if out or args.space == "both" else None
    common = {"chains": args.chains, "steps": args.steps, "warmup": args.warmup, "start": args.start,
              "seed": args.seed}
    if len(spaces) == 1:
        summary = {"space": spaces[0], **summaries[spaces[0]], **common}
    else:
        summary = {**summaries, **common}
    if reference is not None:
        summary["reference"] = {name: {"mean": est.mean, "error": est.error} for name, est in reference.items()}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "hmc.json", summary)
        for name, label in (("structure_factor", r"structure factor $\langle (\sum_i s_i)^2\rangle / N^2$"),
                            ("energy_per_site", "energy per site")):
            traces = {f"{space} space": torch.cat([r.warmup_series[name], r.series[name]]).numpy()
                      if r.warmup_series else r.series[name].numpy() for space, r in results.items()}
            ref = reference[name]
            hmc_traces(traces, args.warmup, (ref.mean, ref.error), out / f"hmc_{name}.png", label,
                       title=f"HMC, L={trainer.cfg.L}, K={trainer.cfg.beta:.4g}, {args.chains} chains, "
                             f"start: {args.start}")
    if args.json:
        print_json(summary)
        return 0
    for space, summ in summaries.items():
        r = results[space]
        print(f"HMC in the {space} space: {args.chains} chains x {args.steps} steps, acceptance "
              f"{r.acceptance_rate:.3f}, step size {r.step_size:.3g} x {r.n_leapfrog}, {summ['seconds']:.1f} s")
        _print_estimates(estimates[space])
    if reference is not None:
        for name, est in reference.items():
            print(f"  reference {name:18s} {str(est)}" + ("  (exact)" if est.error == 0 else "  (Wolff Monte Carlo)"))
    if out is not None:
        print(f"wrote {out / 'hmc.json'} and {out / 'hmc_structure_factor.png'}")
    return 0


def run_analyze(args: argparse.Namespace) -> int:
    trainer = _load(args)
    out = Path(args.out) if args.out else Path(args.run_dir) / "analysis"
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out: {str(out)!r} exists and is not a directory")
    flow = trainer.flow
    gen = torch.Generator(device=trainer.device).manual_seed(args.seed)
    with torch.no_grad():
        x = flow.sample(args.samples, gen)
    top = top_latent_sites(flow)
    maps = response_maps(flow, x, top)
    n = trainer.cfg.L**trainer.cfg.d
    sites = np.arange(n) if n <= 64 else np.arange(trainer.cfg.L)  # all sites, or the first row
    mi_z, mi_x = latent_and_physical_mutual_information(flow, x, sites)
    values = np.linspace(-4.0, 4.0, 81)
    profile, plane = top_latent_energy(flow, trainer.target, top, values)
    off = ~np.eye(len(sites), dtype=bool)
    summary = {
        "samples": args.samples,
        "seed": args.seed,
        "top_latent_sites": top.tolist(),
        "response_maps": maps.tolist(),
        "mi_sites": sites.tolist(),
        "mi_latent": mi_z.tolist(),
        "mi_physical": mi_x.tolist(),
        "mean_mi_latent": float(mi_z[off].mean()),
        "mean_mi_physical": float(mi_x[off].mean()),
        "top_latent_energy": {"values": values.tolist(), "profile": profile.tolist(), "plane": plane.tolist()},
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "analysis.json", summary)
    if trainer.cfg.d == 2:
        field_grid(maps, out / "response_maps.png", title="E[dz_i/dx] of the top-level latents")
    mutual_information_maps(mi_z, mi_x, out / "mutual_information.png")
    latent_energy(values, profile, plane, out / "latent_energy.png")
    if args.json:
        print_json(summary)
        return 0
    print(f"top-level latents at sites {top.tolist()}; response maps in {out / 'response_maps.png'}")
    print(f"mean pairwise mutual information: latents {summary['mean_mi_latent']:.4f} nats, "
          f"physical variables {summary['mean_mi_physical']:.4f} nats ({out / 'mutual_information.png'})")
    print(f"renormalized energy of the top-level latents: {out / 'latent_energy.png'}")
    return 0
