"""``deeprg flow estimate|sample|hmc|mh|analyze``: commands that load a run directory written by
``deeprg flow train`` and use the trained flow (estimators, sampling, latent analysis).

Every output path is checked before any work; no output replaces a file of the run directory.
A flow that gives non-finite parameters, fields, importance weights or log-densities is refused
with ``deeprg: error: ...`` and exit status 1 instead of a number computed from NaNs.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from deeprg.cli.common import (
    UsageError,
    cpu_threads,
    device,
    int_at_least,
    positive_float,
    print_json,
    seed,
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
from deeprg.flows.train import Trainer, evaluation_batch, load_run, variational_free_energy
from deeprg.mc.hmc import HMCDivergence
from deeprg.mc.reference import ising_reference
from deeprg.mc.stats import Estimate, estimate, format_value_error
from deeprg.plots import (
    field_grid,
    hmc_traces,
    latent_energy,
    latent_response_maps,
    mutual_information_maps,
)
from deeprg.runs import (
    CHECKPOINT_NAME,
    CONFIG_NAME,
    CheckpointMismatch,
    atomic_path,
    write_json,
)

#: Fewest production steps of ``flow hmc`` and ``flow mh``: the error bars come from the
#: autocorrelation of each chain's series, which needs a few steps at least.
MIN_STEPS = 10
#: ``flow mh`` warns when an estimate and its reference differ by more than this many combined
#: standard errors.
AGREEMENT_SIGMAS = 4.0
#: The files ``deeprg flow train`` writes in a run directory; no output of these commands may
#: replace them.
RUN_FILES = (CONFIG_NAME, CHECKPOINT_NAME, "metrics.json", "training_curve.png")
#: Samples per call when the variational bound is computed in chunks (the batch of
#: :func:`~deeprg.flows.train.variational_free_energy`, so the draws are those of one call).
BOUND_BATCH = 4096

HMC_FILES = ("hmc.json", "hmc_structure_factor.png", "hmc_energy_per_site.png")
ANALYSIS_FILES = ("analysis.json", "response_maps.png", "mutual_information.png", "latent_energy.png")

RUN_HELP = "run directory of 'deeprg flow train'"
DEVICE_HELP = "torch device: cpu, cuda or cuda:N [the run's device]"
QUIET_HELP = "no progress bar"


class NonFiniteFlow(Exception):
    """The flow of a run directory gives non-finite numbers (exit status 1)."""


def _exit_1_on_non_finite(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """``run`` with :class:`NonFiniteFlow` turned into ``deeprg: error: ...`` and exit status 1."""

    @functools.wraps(run)
    def checked(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except NonFiniteFlow as err:
            print(f"deeprg: error: {err}", file=sys.stderr)
            return 1

    return checked


def add_actions(actions: argparse._SubParsersAction) -> None:
    """Add the actions that use a trained flow to the ``deeprg flow`` subparsers."""
    e = actions.add_parser(
        "estimate", help="ln Z with an error bar and a verdict: importance sampling, AIS, SMC or bridge sampling",
        description="Estimate ln Z of the target with the trained flow and say whether to trust the number. "
        "Methods: 'is' importance sampling with the flow as proposal (Eq. 6); 'ais' annealed importance "
        "sampling (flow samples annealed to pi through T temperatures by latent HMC); 'smc' sequential Monte "
        "Carlo (adaptive ladder, resampling, error from independent replicas; needs no samples of pi); "
        "'bridge' bridge sampling between flow samples and samples of pi from the target's exact reference "
        "sampler or latent HMC chains (robust where the flow misses parts of pi). Each prints value, error, "
        "the effective sample sizes (both directions where defined), the tail index, CPU seconds and a "
        "one-line verdict naming the diagnostic that failed. Log-weights are summed in float64.")
    e.add_argument("run_dir", metavar="RUN", help=RUN_HELP)
    e.add_argument("--method", choices=METHODS, help="estimator [is; ais with --anneal T > 1]")
    e.add_argument("--samples", type=int_at_least(25),
                   help="flow samples (is, ais, bridge) or particles per replica (smc) "
                   "[is 100000, ais 1000, smc 1024, bridge 10000]")
    e.add_argument("--anneal", type=int_at_least(1), default=1, metavar="T",
                   help="temperatures of annealed importance sampling (ais) [1, or 100 with --method ais]")
    e.add_argument("--leapfrog", type=int_at_least(1), default=5,
                   help="leapfrog steps per HMC transition (ais, smc, bridge with --pi-source hmc) [5]")
    e.add_argument("--replicas", type=int_at_least(2), default=8, help="independent SMC replicas [8]")
    e.add_argument("--pi-source", choices=("reference", "hmc"),
                   help="samples of pi for bridge sampling: the target's exact reference sampler, or latent HMC "
                   "chains [reference where the target has one]")
    e.add_argument("--pi-samples", type=int_at_least(100),
                   help="samples of pi for bridge sampling [as --samples]")
    _add_run_options(e)
    e.set_defaults(run=_exit_1_on_non_finite(run_estimate), distributed=True)

    m = actions.add_parser("sample", help="draw fields and Ising spins from a trained flow")
    m.add_argument("run_dir", metavar="RUN", help=RUN_HELP)
    m.add_argument("--n", type=int_at_least(1), default=64, help="samples [64]")
    m.add_argument("--out", required=True,
                   help="output NAME.npz (x: float32 fields, spins: int8); in 2D a picture NAME.png beside it")
    _add_run_options(m, threads=False, quiet=False)
    m.set_defaults(run=_exit_1_on_non_finite(run_sample), distributed=True)

    h = actions.add_parser("hmc", help="hybrid Monte Carlo in the latent or the physical space")
    h.add_argument("run_dir", metavar="RUN", help=RUN_HELP)
    h.add_argument("--space", choices=(*SPACES, "both"), default="latent",
                   help="sample the latents z (Eq. 6), the fields x (Eq. 7), or both from the same start [latent]")
    h.add_argument("--start", choices=STARTS, default="flow",
                   help="initial fields: flow samples, or N(0,1) noise to watch thermalization [flow]")
    h.add_argument("--chains", type=int_at_least(1), default=64, help="parallel chains [64]")
    h.add_argument("--steps", type=int, default=2000, help=f"production steps, at least {MIN_STEPS} [2000]")
    h.add_argument("--warmup", type=int_at_least(0), default=200, help="step-size adaptation steps [200]")
    h.add_argument("--step-size", type=positive_float, default=0.1, help="initial leapfrog step [0.1]")
    h.add_argument("--leapfrog", type=int_at_least(1), default=10, help="leapfrog steps per trajectory [10]")
    h.add_argument("--out", help="directory for hmc.json and the Fig. 3(b)-style plots hmc_*.png, created if "
                   "needed [none]")
    _add_run_options(h)
    h.set_defaults(run=_exit_1_on_non_finite(run_hmc), distributed=True)

    i = actions.add_parser("mh", help="independence Metropolis-Hastings with the flow as proposal",
                           description="Exact sampling of pi by Metropolis-Hastings with proposals drawn "
                           "independently from the trained flow, accepted with min(1, pi(x') q(x) / (pi(x) q(x')))."
                           " Reports the structure factor and energy per site of spins from pi(s|x), their "
                           "autocorrelation times and the acceptance rate, next to the reference values of the "
                           "Ising model (exact up to 16 sites, else Wolff Monte Carlo; the energy is exact), and "
                           f"warns when they differ by more than {AGREEMENT_SIGMAS:g} combined standard errors.")
    i.add_argument("run_dir", metavar="RUN", help=RUN_HELP)
    i.add_argument("--chains", type=int_at_least(1), default=64, help="parallel chains [64]")
    i.add_argument("--steps", type=int, default=2000, help=f"production steps, at least {MIN_STEPS} [2000]")
    i.add_argument("--warmup", type=int_at_least(0), default=100, help="steps discarded first [100]")
    _add_run_options(i)
    i.set_defaults(run=_exit_1_on_non_finite(run_mh), distributed=True)

    a = actions.add_parser("analyze", help="response maps and mutual information of the latent variables")
    a.add_argument("run_dir", metavar="RUN", help=RUN_HELP)
    a.add_argument("--samples", type=int_at_least(64), default=2000, help="flow samples averaged over [2000]")
    a.add_argument("--out", help="output directory, created if needed [RUN/analysis]")
    _add_run_options(a, threads=False)
    a.set_defaults(run=_exit_1_on_non_finite(run_analyze))


def _add_run_options(p: argparse.ArgumentParser, *, threads: bool = True, quiet: bool = True) -> None:
    """The options every command on a run shares: ``--seed``, ``--device``, ``--threads``,
    ``--json`` and ``--quiet``."""
    p.add_argument("--seed", type=seed, default=0, help="random seed [0]")
    p.add_argument("--device", type=device, help=DEVICE_HELP)
    if threads:
        p.add_argument("--threads", type=cpu_threads, help="torch CPU threads")
    p.add_argument("--json", action="store_true", help="print a machine-readable summary")
    if quiet:
        p.add_argument("--quiet", action="store_true", help=QUIET_HELP)


def _load(args: argparse.Namespace) -> Trainer:
    """The run's trainer on ``--device``; refuses a flow with non-finite parameters."""
    try:
        trainer = load_run(args.run_dir, device=args.device, threads=getattr(args, "threads", None))
    except CheckpointMismatch as err:
        raise UsageError(f"RUN: {err}") from None
    bad = [name for name, p in trainer.flow.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise NonFiniteFlow(f"the flow in {args.run_dir!r} has non-finite parameters ({bad[0]}{more}); retrain it")
    return trainer


def _non_finite(args: argparse.Namespace, what: str) -> NonFiniteFlow:
    return NonFiniteFlow(f"the flow in {args.run_dir!r} produces non-finite {what}; retrain it")


def _check_fields(args: argparse.Namespace, x: torch.Tensor) -> None:
    if not torch.isfinite(x).all():
        raise _non_finite(args, "fields")


def _check_steps(args: argparse.Namespace) -> None:
    if args.steps < MIN_STEPS:
        raise UsageError(f"--steps: need at least {MIN_STEPS} production steps for error bars, got {args.steps}")


def _output_dir(path: Path, option: str, names: tuple[str, ...]) -> Path:
    """Check, before any work, that the directory ``path`` can be created (with its parents) or
    written into, and that the files ``names`` can be written in it; return ``path``."""
    if path.exists() and not path.is_dir():
        raise UsageError(f"{option}: {str(path)!r} exists and is not a directory")
    if path.is_dir():
        for name in names:
            writable_file(str(path / name), option)
        return path
    ancestor = next(a for a in path.absolute().parents if a.exists())
    if not ancestor.is_dir():
        raise UsageError(f"{option}: cannot create {str(path)!r}: {str(ancestor)!r} is not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UsageError(f"{option}: cannot create {str(path)!r}: directory {str(ancestor)!r} is not writable")
    return path


def _spare_run(args: argparse.Namespace, option: str, path: Path) -> None:
    """Refuse an output ``path`` that is one of the files of the run directory."""
    target = path.resolve()
    for name in RUN_FILES:
        if (Path(args.run_dir) / name).resolve() == target:
            raise UsageError(f"{option}: {str(path)!r} would replace {name} of the run directory; choose another path")


def _bar(args: argparse.Namespace, desc: str, unit: str) -> tqdm:
    return tqdm(disable=args.quiet, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True)


def _progress(bar: tqdm) -> Callable[[int, int], None]:
    """A ``callback(done, total)`` that moves ``bar``."""

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    return update


def _variational_bound(flow, target, n: int, generator: torch.Generator, bar: tqdm) -> Estimate:
    """:func:`~deeprg.flows.train.variational_free_energy` on ``n`` samples, called in chunks of
    :data:`BOUND_BATCH` to move ``bar``: the draws of one call, the chunks' means and variances
    pooled."""
    parts = []
    bar.total = n
    step = min(BOUND_BATCH, evaluation_batch(flow.n_sites))
    for start in range(0, n, step):
        parts.append(variational_free_energy(flow, target, min(step, n - start), batch=step,
                                             generator=generator))
        bar.update(parts[-1].n_samples)
    mean = sum(p.mean * p.n_samples for p in parts) / n
    squares = sum((p.variance * (p.n_samples - 1) if p.n_samples > 1 else 0.0) + p.n_samples * (p.mean - mean) ** 2
                  for p in parts)
    variance = squares / (n - 1)
    return Estimate(mean, math.sqrt(variance / n), variance, 0.5, n)


METHODS = ("is", "ais", "smc", "bridge")
DEFAULT_SAMPLES = {"is": 100_000, "ais": 1000, "smc": 1024, "bridge": 10_000}
#: Latent HMC chains for the pi side of bridge sampling, and HMC steps between saved samples.
BRIDGE_CHAINS, BRIDGE_THIN = 64, 5


def _method(args: argparse.Namespace) -> str:
    method = args.method or ("ais" if args.anneal > 1 else "is")
    if args.anneal > 1 and method != "ais":
        raise UsageError(f"--anneal: applies to --method ais only, got --method {method}")
    if method != "bridge" and (args.pi_source or args.pi_samples):
        raise UsageError(f"--pi-source/--pi-samples: apply to --method bridge only, got --method {method}")
    return method


def _estimate_is(args, trainer, n, gen):
    flow, target = trainer.flow, trainer.target
    with _bar(args, "importance sampling", "sample") as bar:
        est = importance_ln_z(flow, target, n, generator=gen, observables=ising_observables(target, gen),
                              callback=_progress(bar))
    return est.ln_z, {"ess": est.ess_fraction * n, "pareto_k": est.pareto_k}, {
        "ess_fraction": est.ess_fraction, "pareto_k": est.pareto_k,
        **{name: {"mean": o.mean, "error": o.error} for name, o in est.observables.items()}}


def _estimate_ais(args, trainer, n, gen):
    flow, target = trainer.flow, trainer.target
    temperatures = args.anneal if args.anneal > 1 else 100
    with _bar(args, f"annealing ({temperatures} temperatures)", "transition") as bar:
        result = annealed_importance_sampling(flow, target, n, temperatures, args.leapfrog,
                                              observables=ising_observables(target, gen), generator=gen,
                                              callback=_progress(bar))
    est = result.estimate
    return est.ln_z, {"ess": est.ess_fraction * n, "pareto_k": est.pareto_k}, {
        "ess_fraction": est.ess_fraction, "pareto_k": est.pareto_k, "temperatures": temperatures,
        "leapfrog": args.leapfrog, "acceptance": float(result.acceptance.mean()),
        **{name: {"mean": o.mean, "error": o.error} for name, o in est.observables.items()}}


def _estimate_smc(args, trainer, n, gen):
    from deeprg.flows.smc import smc_from_flow

    with _bar(args, f"sequential Monte Carlo (a pilot run, then {args.replicas} replicas)", "temperature") as bar:
        est = smc_from_flow(trainer.flow, trainer.target, n, args.replicas, n_leapfrog=args.leapfrog,
                            seed=args.seed, callback=lambda b, t: bar.update(1))
    return est.ln_z, {"replicas": args.replicas, "acceptance": est.acceptance}, {
        "replicas": args.replicas, "ln_z_replicas": est.ln_z_replicas.tolist(),
        "temperatures": list(est.n_temperatures), "pilot_temperatures": est.pilot.n_temperatures,
        "final_ess_fraction": est.final_ess.tolist(),
        "acceptance": est.acceptance, "leapfrog": args.leapfrog}


def _estimate_bridge(args, trainer, n, gen):
    from deeprg.flows.bridge import bridge_sampling
    from deeprg.flows.sampling import latent_hmc_fields
    from deeprg.models.relaxed import reference_sampler

    flow, target = trainer.flow, trainer.target
    n_pi = args.pi_samples or n
    sample = reference_sampler(target)
    source = args.pi_source or ("reference" if sample is not None else "hmc")
    if source == "reference":
        if sample is None:
            raise UsageError(f"--pi-source reference: the target {type(target).__name__} has no reference sampler; "
                             "use --pi-source hmc")
        with _bar(args, "reference samples of pi", "sample") as bar:
            pi = sample(n_pi, args.seed)
            bar.update(n_pi)
    else:
        steps = max(1, -(-n_pi // BRIDGE_CHAINS))
        with _bar(args, f"latent HMC ({BRIDGE_CHAINS} chains)", "step") as bar:
            pi = latent_hmc_fields(flow, target, steps, BRIDGE_CHAINS, thin=BRIDGE_THIN, n_leapfrog=args.leapfrog,
                                   generator=gen, callback=_progress(bar))
    try:
        with _bar(args, "bridge sampling", "sample") as bar:
            est = bridge_sampling(flow, target, n, pi.to(trainer.device), gen, callback=_progress(bar))
    except ValueError as err:
        raise UsageError(f"--samples/--pi-samples: {err}") from None
    return est.ln_z, {"forward_ess": est.forward_ess * est.n2_eff, "reverse_ess": est.reverse_ess * est.n1}, {
        "pi_source": source, "flow_samples": est.n1, "pi_samples": est.n2, "pi_effective_samples": est.n2_eff,
        "forward_ess_fraction": est.forward_ess, "reverse_ess_fraction": est.reverse_ess,
        "forward_pareto_k": est.forward_pareto_k, "reverse_pareto_k": est.reverse_pareto_k,
        "iterations": est.iterations}


ESTIMATORS = {"is": _estimate_is, "ais": _estimate_ais, "smc": _estimate_smc, "bridge": _estimate_bridge}


def run_estimate(args: argparse.Namespace) -> int:
    from deeprg.distributed import current
    from deeprg.flows.trust import verdict

    method = _method(args)
    world = current()
    if method == "smc":
        world.require_at_most(args.replicas, "--replicas")
    if not world.main:
        args.quiet = True
    trainer = _load(args)
    flow, target = trainer.flow, trainer.target
    gen = torch.Generator(device=trainer.device).manual_seed(args.seed)
    n = args.samples or DEFAULT_SAMPLES[method]
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        ln_z, diagnostics, details = ESTIMATORS[method](args, trainer, n, gen)
    except FloatingPointError:
        raise _non_finite(args, "importance weights") from None
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    if not world.main:
        return 0
    with _bar(args, "variational bound", "sample") as bar:
        bound = _variational_bound(flow, target, max(min(n, 100_000), 10_000), gen, bar)
    if not math.isfinite(bound.mean):
        raise _non_finite(args, "log-densities")
    trusted, line = verdict(method, {**diagnostics, "ln_z_error": ln_z.error})
    exact = trainer.exact_ln_z
    summary = {
        "method": method,
        "ln_z": {"mean": ln_z.mean, "error": ln_z.error},
        "trusted": trusted,
        "verdict": line,
        **details,
        "variational_free_energy": {"mean": bound.mean, "error": bound.error},
        "exact_ln_z": exact,
        "deviation_sigma": None if exact is None or not ln_z.error > 0 else (ln_z.mean - exact) / ln_z.error,
        "samples": n,
        "seed": args.seed,
        "device": str(trainer.device),
        "seconds": seconds,
        "cpu_seconds": cpu,
        "precision": "log-weights and sums in float64",
        "processes": world.size,
    }
    if args.json:
        print_json(summary)
        return 0
    names = {"is": "importance sampling", "ais": "annealed importance sampling", "smc": "sequential Monte Carlo",
             "bridge": "bridge sampling"}
    print(f"{names[method]}: {n} {'particles per replica' if method == 'smc' else 'flow samples'}, "
          f"{seconds:.1f} s ({cpu:.1f} CPU s)")
    print(f"  ln Z = {ln_z}")
    for key in ("ess_fraction", "pareto_k", "forward_ess_fraction", "reverse_ess_fraction", "forward_pareto_k",
                "reverse_pareto_k", "pi_effective_samples", "acceptance"):
        if key in details and details[key] is not None:
            print(f"  {key:22s} {details[key]:.4g}")
    for name in OBSERVABLES:
        if name in details:
            print(f"  {name:22s} {format_value_error(details[name]['mean'], details[name]['error'])}   (reweighted)")
    print(f"  verdict: {line}")
    print(f"variational bound  -F_q = {format_value_error(-bound.mean, bound.error)}")
    if summary["deviation_sigma"] is not None:
        print(f"exact              ln Z = {exact:.6f}   (deviation {summary['deviation_sigma']:+.1f} sigma)")
    return 0


def run_sample(args: argparse.Namespace) -> int:
    from deeprg.distributed import current

    world = current()
    out = writable_file(args.out, "--out")
    if out.suffix.lower() != ".npz":
        raise UsageError(f"--out: {args.out!r} must end in .npz (the samples; in 2D a picture NAME.png goes "
                         "beside NAME.npz)")
    trainer = _load(args)
    png = out.with_suffix(".png") if trainer.cfg.d == 2 else None
    if png is not None:
        writable_file(str(png), "--out")
        _spare_run(args, "--out", png)
    gen = torch.Generator(device=trainer.device).manual_seed(args.seed)
    split = world.distributed and args.n >= world.size
    with torch.no_grad():  # each process pushes its share of the latents through the flow
        x, _ = trainer.flow.sample_and_log_prob(args.n, gen, rows=world.share(args.n) if split else None)
    if world.any(not bool(torch.isfinite(x).all())):
        raise _non_finite(args, "fields")
    if split:
        x = world.gather_rows(x.cpu().numpy())
        if not world.main:
            return 0
        x = torch.from_numpy(x).to(trainer.device)
    elif not world.main:
        return 0
    with torch.no_grad():
        spins = trainer.target.sample_spins(x, gen)
    x_np, s_np = x.float().cpu().numpy(), spins.cpu().numpy()
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, x=x_np, spins=s_np, seed=np.uint64(args.seed))
    if png is not None:
        field_grid(np.concatenate([x_np[:32], s_np[:32].astype(np.float32) * np.abs(x_np).max()]), png,
                   title=f"flow samples: fields x (first rows) and spins s ~ pi(s|x), L={trainer.cfg.L}")
    if args.json:
        print_json({"samples": args.n, "seed": args.seed, "device": str(trainer.device), "shape": list(x_np.shape),
                    "out": out, "picture": png, "processes": world.size})
        return 0
    print(f"wrote {args.n} samples to {out}" + (f" and {png}" if png is not None else "")
          + (f" ({world.size} processes)" if world.distributed else ""))
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


def _print_reference(reference: dict) -> None:
    for name, est in reference.items():
        print(f"  reference {name:18s} {str(est)}" + ("  (exact)" if est.error == 0 else "  (Wolff Monte Carlo)"))


def _warn_if_off_reference(stats: dict, reference: dict) -> None:
    """Warn for each estimate that differs from its reference by more than
    :data:`AGREEMENT_SIGMAS` combined standard errors."""
    for name, est in stats.items():
        ref = reference[name]
        sigma = math.hypot(est.error, ref.error)
        off = abs(est.mean - ref.mean)
        if off > AGREEMENT_SIGMAS * sigma:
            value = f"{ref.mean:.6g} (exact)" if ref.error == 0 else f"{ref} (Wolff Monte Carlo)"
            by = f"by {off / sigma:.1f} combined standard errors" if sigma > 0 else "and has no error bar"
            warnings.warn(f"{name} {est} differs from the reference {value} {by}: the chains are not at "
                          "equilibrium (run more --steps, or retrain the flow)")


def _hmc_summary(result, seconds: float) -> tuple[dict, dict]:
    summary, stats = _chain_summary(result.series, result.acceptance_rate, seconds)
    return {**summary, "step_size": result.step_size, "leapfrog": result.n_leapfrog}, stats


def run_mh(args: argparse.Namespace) -> int:
    from deeprg.distributed import current

    _check_steps(args)
    world = current()
    if not world.main:
        args.quiet = True
    trainer = _load(args)
    gen = torch.Generator(device=trainer.device).manual_seed(args.seed)
    t0 = time.perf_counter()
    try:
        with _bar(args, "independence Metropolis", "step") as bar:
            result = independence_metropolis(trainer.flow, trainer.target, args.warmup + args.steps, args.chains,
                                             ising_observables(trainer.target, gen), gen, callback=_progress(bar),
                                             world=world)
    except FloatingPointError:
        raise _non_finite(args, "importance weights") from None
    if not world.main:
        return 0
    production = {name: series[args.warmup:] for name, series in result.series.items()}
    summary, stats = _chain_summary(production, float(result.acceptance[args.warmup:].mean()),
                                    time.perf_counter() - t0)
    reference = ising_reference(trainer.target.lattice, trainer.cfg.beta, seed=args.seed)
    summary.update(chains=args.chains, steps=args.steps, warmup=args.warmup, seed=args.seed,
                   device=str(trainer.device), processes=world.size,
                   reference={name: {"mean": est.mean, "error": est.error} for name, est in reference.items()})
    if args.json:
        print_json(summary)
    else:
        print(f"independence Metropolis-Hastings (flow proposal): {args.chains} chains x {args.steps} steps, "
              f"acceptance {summary['acceptance']:.3f}, {summary['seconds']:.1f} s")
        _print_estimates(stats)
        _print_reference(reference)
    sys.stdout.flush()  # the results first, then the warnings about them
    _warn_if_off_reference(stats, reference)
    return 0


def run_hmc(args: argparse.Namespace) -> int:
    from deeprg.distributed import current

    _check_steps(args)
    world = current()
    world.require_at_most(args.chains, "--chains")
    if not world.main:
        args.quiet = True
    out = _output_dir(Path(args.out), "--out", HMC_FILES) if args.out else None
    trainer = _load(args)
    flow, target = trainer.flow, trainer.target
    gen = torch.Generator(device=trainer.device).manual_seed(args.seed)
    x0 = starting_fields(flow, args.chains, args.start, gen)
    _check_fields(args, x0)
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
        except ValueError as err:  # the options are valid: the log-density of the starting point is not finite
            raise _non_finite(args, f"log-densities in the {space} space ({err})") from None
        finally:
            bar.close()
        summaries[space], estimates[space] = _hmc_summary(results[space], time.perf_counter() - t0)
    if not world.main:
        return 0
    reference = ising_reference(target.lattice, trainer.cfg.beta, seed=args.seed) if out or args.space == "both" else None
    common = {"chains": args.chains, "steps": args.steps, "warmup": args.warmup, "start": args.start,
              "seed": args.seed, "device": str(trainer.device), "processes": world.size}
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
        _print_reference(reference)
    if out is not None:
        print(f"wrote {', '.join(str(out / name) for name in HMC_FILES)}")
    return 0


def run_analyze(args: argparse.Namespace) -> int:
    trainer = _load(args)
    out = _output_dir(Path(args.out) if args.out else Path(args.run_dir) / "analysis", "--out", ANALYSIS_FILES)
    flow = trainer.flow
    gen = torch.Generator(device=trainer.device).manual_seed(args.seed)
    with torch.no_grad():
        x = flow.sample(args.samples, gen)
    _check_fields(args, x)
    top = top_latent_sites(flow)
    with _bar(args, "response maps", "latent") as bar:
        maps = response_maps(flow, x, top, callback=_progress(bar))
    n = trainer.cfg.L**trainer.cfg.d
    sites = np.arange(n) if n <= 64 else np.arange(trainer.cfg.L)  # all sites, or the first row
    with _bar(args, "mutual information", "pair") as bar:
        mi_z, mi_x = latent_and_physical_mutual_information(flow, x, sites, callback=_progress(bar))
    values = np.linspace(-4.0, 4.0, 81)
    profile, plane = top_latent_energy(flow, trainer.target, top, values)
    off = ~np.eye(len(sites), dtype=bool)
    summary = {
        "samples": args.samples,
        "seed": args.seed,
        "device": str(trainer.device),
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
    latent_response_maps(maps, out / "response_maps.png", sites=top)
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
