"""``deeprg sample ising``: Monte Carlo spin configurations with error-barred observables."""

from __future__ import annotations

import argparse
import sys

import numpy as np

from deeprg import Lattice, __version__
from deeprg.cli.common import coupling, int_at_least, print_json, writable_file
from deeprg.data import SpinDataset, save_dataset
from deeprg.mc import SAMPLERS, estimate, jackknife, make_sampler
from deeprg.models.exact import ising_chain, kaufman


def thinning(value: str) -> int | str:
    if value == "auto":
        return value
    return int_at_least(1)(value)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="Monte Carlo samples of lattice models")
    models = p.add_subparsers(dest="model", required=True, metavar="MODEL")
    q = models.add_parser(
        "ising",
        help="Ising model by Wolff, Swendsen-Wang or Metropolis updates",
        description="Sample the periodic Ising model H = -K sum_<ij> s_i s_j on an L^d lattice, "
        "write the configurations as a deeprg spin dataset (.npz, int8) and report the energy "
        "and m^2 per site with autocorrelation-corrected error bars.",
    )
    q.add_argument("--L", type=int_at_least(2), default=32, help="linear size [32]")
    q.add_argument("--d", type=int, choices=(1, 2, 3), default=2, help="dimension [2]")
    q.add_argument("--beta", type=coupling, default="critical",
                   help="coupling K = beta J: 'critical' (square-lattice K_c) or a number > 0 [critical]")
    q.add_argument("--n", type=int_at_least(1), default=20000, help="configurations to save [20000]")
    q.add_argument("--sampler", choices=SAMPLERS, default="wolff", help="update [wolff]")
    q.add_argument("--chains", type=int_at_least(1), default=2,
                   help="independent chains, run in parallel; must divide --n [2]")
    q.add_argument("--threads", type=int_at_least(1), default=None, help="threads [min(chains, cores)]")
    q.add_argument("--thin", type=thinning, default="auto",
                   help="updates between saved configurations, or 'auto' (2 tau_int of the energy) [auto]")
    q.add_argument("--burn-in", type=int_at_least(0), default=None,
                   help="updates discarded first [sampler default]")
    q.add_argument("--seed", type=int_at_least(0), default=0, help="random seed [0]")
    q.add_argument("--out", required=True, help="output dataset (.npz)")
    q.add_argument("--json", action="store_true", help="print a machine-readable summary")
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    q.set_defaults(run=run)


def exact_thermo(lattice: Lattice, K: float):
    """Exact energy and specific heat where known (1D chain, 2D Kaufman), else ``None``."""
    if lattice.d == 1:
        return ising_chain(lattice.shape[0], K)
    if lattice.d == 2:
        return kaufman(*lattice.shape, K)
    return None


def run(args: argparse.Namespace) -> int:
    out = writable_file(args.out, "--out")
    if args.n % args.chains:
        raise argparse.ArgumentTypeError(
            f"--n ({args.n}) must be a multiple of --chains ({args.chains})")
    lattice = Lattice.square(args.L, args.d)
    sampler = make_sampler(args.sampler, lattice, args.beta, seed=args.seed, n_chains=args.chains)
    result = sampler.run(
        args.n, thin=args.thin, burn_in=args.burn_in, n_threads=args.threads,
        progress=not args.quiet,
    )
    n_sites = lattice.n_sites
    e = result.series["energy"] / n_sites
    m = result.series["magnetization"] / n_sites
    K = args.beta
    energy = estimate(e)
    summary = {
        "model": "ising",
        "lattice": list(lattice.shape),
        "K": K,
        "sampler": args.sampler,
        "seed": args.seed,
        "n": args.n,
        "chains": args.chains,
        "thin": result.thin,
        "burn_in": result.burn_in,
        "energy_per_site": energy,
        "m2": estimate(m**2),
        "abs_m": estimate(np.abs(m)),
        "specific_heat_per_site": jackknife(lambda x: K * K * n_sites * np.var(x), e),
        "tau_int": energy.tau_int,
        "samples_per_second": args.n / result.seconds,
        "seconds": result.seconds,
        "exact_energy_per_site": None,
        "exact_specific_heat_per_site": None,
        "out": str(out),
        "deeprg_version": __version__,
    }
    exact = exact_thermo(lattice, K)
    if exact is not None:
        summary["exact_energy_per_site"] = exact.energy_per_site
        summary["exact_specific_heat_per_site"] = exact.specific_heat_per_site

    dataset = SpinDataset.new(
        result.spins_flat(), K=K, sampler=args.sampler, updates_between_samples=int(result.thin),
        seed=args.seed, n_chains=args.chains, tau_int=energy.tau_int, burn_in=int(result.burn_in),
    )
    save_dataset(out, dataset)

    if args.json:
        print_json(summary)
    else:
        print_summary(summary, file=sys.stdout)
    return 0


def print_summary(s: dict, file) -> None:
    lat = "x".join(map(str, s["lattice"]))
    print(f"Ising {lat}, K = {s['K']:.10g}, {s['sampler']}: {s['n']} configurations "
          f"({s['chains']} chains, {s['thin']} updates apart, seed {s['seed']})", file=file)
    rows = [("energy_per_site", "exact_energy_per_site"),
            ("specific_heat_per_site", "exact_specific_heat_per_site"),
            ("m2", None), ("abs_m", None)]
    for key, exact_key in rows:
        est = s[key]
        line = f"  {key:24s} {str(est):>18s}   tau_int {est.tau_int:6.2f}"
        if exact_key and s[exact_key] is not None:
            dev = (est.mean - s[exact_key]) / est.error if est.error > 0 else float("nan")
            line += f"   exact {s[exact_key]:.8f} ({dev:+.1f} sigma)"
        print(line, file=file)
    print(f"  {s['samples_per_second']:.0f} configurations/s; wrote {s['out']}", file=file)
