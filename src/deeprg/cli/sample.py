"""``deeprg sample ising``: Monte Carlo spin configurations with error-barred observables.

Runs unchanged under ``torchrun --nproc-per-node N deeprg sample ising ...``: every process runs
its contiguous share of the chains (:meth:`deeprg.distributed.World.share`; a chain's random
stream depends on its global index only), the burn-in and ``--thin auto`` are decided from all
chains' data, and rank 0 gathers the configurations and series chunk by chunk in chain order,
computes the estimates and writes the dataset, exactly as one process does. The configurations
are staged on disk as they come (:class:`deeprg.data.SpinWriter`; at most :data:`CHUNK_BYTES`
of spins in memory) and compressed into the dataset at the end (in blocks, on every usable core
unless ``--threads`` is given). The dataset's spins and the estimates are bit-identical whatever
the number of processes.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from tqdm import tqdm

from deeprg import Lattice, __version__
from deeprg.cli.common import (
    StopOnSignal,
    UsageError,
    coupling_or_critical,
    cpu_threads,
    int_at_least,
    print_json,
    writable_file,
)
from deeprg.config import available_memory
from deeprg.data import SpinWriter, dataset_metadata
from deeprg.mc import SAMPLERS, estimate, jackknife, make_sampler
from deeprg.mc.samplers import MIN_AUTO_BURN_IN
from deeprg.models.exact import exact_solution
from deeprg.models.ising import parse_coupling

#: Blocks of the jackknife error bar of the specific heat (cut along each chain's time axis).
JACKKNIFE_BLOCKS = 32

#: Fewest saved configurations per chain: one per jackknife block; fewer leave the specific heat
#: and the autocorrelation-corrected error bars undefined.
MIN_PER_CHAIN = JACKKNIFE_BLOCKS

#: Smallest coupling accepted. The samplers test probabilities with 53-bit resolution
#: (:func:`deeprg.mc.kernels.probability_threshold`), and everything K does is carried by
#: probabilities of order 2K (the bond probability 1 - exp(-2K) of the cluster updates, the
#: rejection probability 1 - exp(-2Kx) of Metropolis): their relative error is up to
#: 2^-53 / (2K), 5.6e-7 at this K; below ~6e-17 the sampled coupling is 2^-54 whatever K is.
MIN_BETA = 1e-10

#: Seeds are integers in [0, 2^64).
SEED_LIMIT = 2**64

#: Bytes of spins in one chunk of the stream (all chains of a process; at least one configuration
#: per chain): the configurations are staged on disk chunk by chunk, never held whole.
CHUNK_BYTES = 1 << 24

#: Peak bytes per spin of a chunk: the sampled int8 chunk plus the same-sized temporaries of
#: gathering, checking and staging it.
_SPIN_BYTES = 4

#: Bytes per saved configuration besides its spins: the float64 energy and magnetization series
#: and the per-site copies, squares and jackknife samples the summary computes from them.
_SERIES_BYTES = 128

#: Bytes per site of the lattice's tables (coordinates, neighbour table and its int32 copy,
#: bonds, the Metropolis order) and of one chain's state (spins and scratch buffers).
_LATTICE_SITE_BYTES = 128
_CHAIN_SITE_BYTES = 8


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
    q.add_argument("--beta", type=coupling_or_critical, default="critical",
                   help="coupling K = beta J: 'critical' (K_c of the simple cubic lattice, 0.221654626, for "
                   f"--d 3; of the square lattice otherwise) or a number >= {MIN_BETA:g} [critical]")
    q.add_argument("--n", type=int_at_least(1), default=20000,
                   help=f"configurations to save, at least {MIN_PER_CHAIN} per chain [20000]")
    q.add_argument("--sampler", choices=SAMPLERS, default="wolff", help="update [wolff]")
    q.add_argument("--chains", type=int_at_least(1), default=2,
                   help="independent chains, run in parallel; must divide --n; under torchrun at least the "
                   "number of processes, which share them [2]")
    q.add_argument("--threads", type=cpu_threads, default=None,
                   help="threads per process [min(chains of the process, cores / processes on this node); "
                        "the final compression: all cores]")
    q.add_argument("--thin", type=thinning, default="auto",
                   help="updates between saved configurations, or 'auto' (2 tau_int of the energy, "
                   "measured in the second half of the burn-in) [auto]")
    q.add_argument("--burn-in", type=int_at_least(0), default=None,
                   help=f"updates discarded first; >= {MIN_AUTO_BURN_IN} with --thin auto [sampler default]")
    q.add_argument("--seed", type=int_at_least(0), default=0, help="random seed in [0, 2^64) [0]")
    q.add_argument("--out", required=True, help="output dataset (.npz)")
    q.add_argument("--json", action="store_true", help="print a machine-readable summary")
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    q.set_defaults(run=run, distributed=True)


def estimated_memory(n: int, n_sites: int, chains: int) -> int:
    """Bytes a run of ``n`` configurations of ``n_sites`` sites in ``chains`` chains needs at its
    peak (an upper estimate): one chunk of int8 configurations (:data:`CHUNK_BYTES`, or the whole
    run if smaller) and its temporaries, the series and statistics of all ``n`` configurations,
    the lattice's tables and the chains' state."""
    spins = min(n * n_sites, max(CHUNK_BYTES, chains * n_sites))
    return _SPIN_BYTES * spins + n * _SERIES_BYTES + n_sites * (_LATTICE_SITE_BYTES + chains * _CHAIN_SITE_BYTES)


def needed_disk(n: int, n_sites: int) -> int:
    """Bytes of disk a run of ``n`` configurations of ``n_sites`` sites needs beside ``--out`` (an
    upper estimate): the staged configurations (``n * n_sites``) and the compressed dataset (DEFLATE
    codes each +-1 byte in at least one bit, plus block overhead: at most a quarter of that)."""
    return n * n_sites + n * n_sites // 4 + (1 << 20)


def free_disk(directory: Path) -> int:
    """Bytes free for this user in the file system of ``directory``."""
    return shutil.disk_usage(directory).free


def _format_bytes(b: float) -> str:
    """``b`` bytes with a binary unit, 3 significant digits: ``'9.54 GiB'``."""
    unit = 0
    while b >= 1024 and unit < 5:
        b /= 1024
        unit += 1
    return f"{b:.3g} {('B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB')[unit]}"


def check_args(args: argparse.Namespace, output: bool = True) -> Path:
    """Refuse, before any work, what cannot give a valid dataset and summary (:class:`UsageError`
    naming the option and what is allowed); returns the output path (checked to be writable
    only if ``output``: under torchrun only rank 0 writes)."""
    out = writable_file(args.out, "--out") if output else Path(args.out)
    args.beta = parse_coupling(args.beta, "beta", args.d)
    if args.n % args.chains:
        raise UsageError(f"--n ({args.n}) must be a multiple of --chains ({args.chains})")
    if args.n // args.chains < MIN_PER_CHAIN:
        raise UsageError(
            f"--n: {args.n} configurations in {args.chains} chains is {args.n // args.chains} per "
            f"chain; need at least {MIN_PER_CHAIN} per chain (the error bars are autocorrelation "
            f"and {JACKKNIFE_BLOCKS}-block jackknife estimates along each chain), so --n >= "
            f"{MIN_PER_CHAIN * args.chains} with --chains {args.chains}")
    if args.thin == "auto" and args.burn_in is not None and args.burn_in < MIN_AUTO_BURN_IN:
        raise UsageError(
            f"--burn-in: --thin auto measures tau_int of the energy in the second half of the "
            f"burn-in, so it needs --burn-in >= {MIN_AUTO_BURN_IN} (better 100 tau_int or more; "
            f"omit it for the sampler default), got {args.burn_in}; or give --thin a number")
    if args.beta < MIN_BETA:
        raise UsageError(
            f"--beta: must be 'critical' or a number >= {MIN_BETA:g}, got {args.beta:g}: the "
            "samplers resolve probabilities to 2^-53, too coarse for the probabilities ~2K through "
            "which a smaller K acts (K -> 0 is the infinite-temperature limit: independent spins)")
    if args.seed >= SEED_LIMIT:
        raise UsageError(f"--seed: must be an integer in [0, 2^64), got {args.seed}")
    n_sites = args.L**args.d
    need = estimated_memory(args.n, n_sites, args.chains)
    free = available_memory()
    if need > free:
        raise UsageError(
            f"--n/--L: {args.n} configurations of {args.L}^{args.d} sites need about "
            f"{_format_bytes(need)} of memory (a chunk of spins, the series of every configuration), "
            f"more than the {_format_bytes(free)} available; lower --n or --L")
    if output:
        need, free = needed_disk(args.n, n_sites), free_disk(out.parent)
        if need > free:
            raise UsageError(
                f"--n/--L: {args.n} configurations of {args.L}^{args.d} sites need about {_format_bytes(need)} of "
                f"disk beside --out (staged uncompressed, then compressed), more than the {_format_bytes(free)} "
                f"free in {out.parent}; lower --n or --L, or write elsewhere")
    if n_sites >= 2**31:
        raise UsageError(f"--L: {args.L}^{args.d} sites; the samplers index sites with 32-bit "
                         f"integers, so L^d must be < 2^31")
    return out


def _world():
    """The processes ``deeprg.cli.main`` joined under ``torchrun`` (``None`` on one process, where
    torch is not imported)."""
    if int(os.environ.get("WORLD_SIZE", "1") or "1") <= 1:
        return None
    from deeprg.distributed import current

    world = current()
    return world if world.distributed else None


def chunk_sizes(n_per_chain: int, chains: int, n_sites: int) -> tuple[int, int]:
    """Saved configurations per chain ``(chunk, block)``, the same on every process: the sampler
    yields ``chunk`` at a time (progress: at most 1/100 of the run), and ``block`` >= ``chunk``
    of them are gathered on rank 0 and staged at once, :data:`CHUNK_BYTES` of spins of all the
    chains (fewer gathers: each makes the processes wait for one another); both at least one."""
    block = max(1, CHUNK_BYTES // (chains * n_sites))
    return max(1, min(n_per_chain // 100, block)), block


def run(args: argparse.Namespace) -> int:
    world = _world()
    main = world is None or world.main
    out = check_args(args, output=main)
    if world is None:
        chains, gather, threads = None, None, args.threads
    else:  # every process its share of the chains; chain c's stream depends on c only
        from deeprg.distributed import default_threads

        world.require_at_most(args.chains, "--chains")
        share = world.share(args.chains)
        chains, gather = range(share.start, share.stop), world.all_gather_rows
        threads = args.threads or default_threads(world)
    lattice = Lattice.square(args.L, args.d)
    sampler = make_sampler(args.sampler, lattice, args.beta, seed=args.seed, n_chains=args.chains,
                           chains=chains, gather=gather)
    n_per_chain = args.n // args.chains
    chunk, block = chunk_sizes(n_per_chain, args.chains, lattice.n_sites)
    with contextlib.ExitStack() as stack:
        # rank 0 stages every chain's blocks on disk, beside --out, and writes the dataset at the end
        writer = stack.enter_context(SpinWriter(out, args.n, lattice.shape)) if main else None
        stop = stack.enter_context(StopOnSignal())
        bar = stack.enter_context(tqdm(total=n_per_chain * len(sampler.chains), disable=args.quiet or not main,
                                       file=sys.stderr, unit="config", desc=f"{args.sampler} {lattice}"))
        if not main:
            stack.enter_context(warnings.catch_warnings())
            warnings.simplefilter("ignore")  # rank 0 reports
        start = time.perf_counter()
        series: dict[str, list[np.ndarray]] = {"energy": [], "magnetization": []}
        staged, pending, first = 0, [], None

        def stage() -> int:
            """Gather the pending chunks of every chain on rank 0 and stage them; how many per chain."""
            spins = np.concatenate([p.spins for p in pending], axis=1)
            per_chain = spins.shape[1]
            values = {k: np.concatenate([p.series[k] for p in pending], axis=1) for k in series}
            pending.clear()
            if world is not None:  # rank 0 gets every chain, in chain order (= rank order)
                spins = world.gather_rows(spins)
                values = {k: world.gather_rows(v) for k, v in values.items()}
            if main:
                for c, rows in enumerate(spins):  # the file holds chain after chain
                    writer.put(c * n_per_chain + staged, rows)
                for k, v in values.items():
                    series[k].append(v)
            return per_chain

        for part in sampler.stream(args.n, thin=args.thin, burn_in=args.burn_in, n_threads=threads, chunk=chunk,
                                   callback=lambda saved, total: bar.update(saved - bar.n)):
            if first is None:
                first = part
            pending.append(part)
            held = sum(p.n_per_chain for p in pending)
            if held >= block or staged + held == n_per_chain:
                staged += stage()
            if stop.requested:
                raise KeyboardInterrupt
        if not main:
            return 0
        seconds = time.perf_counter() - start
        series = {k: np.concatenate(v, axis=1) for k, v in series.items()}
        n_sites = lattice.n_sites
        e = series["energy"] / n_sites
        m = series["magnetization"] / n_sites
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
            "thin": first.thin,
            "burn_in": first.burn_in,
            "energy_per_site": energy,
            "m2": estimate(m**2),
            "abs_m": estimate(np.abs(m)),
            "specific_heat_per_site": jackknife(lambda x: K * K * n_sites * np.var(x), e,
                                                n_blocks=JACKKNIFE_BLOCKS),
            "tau_int": energy.tau_int,
            "samples_per_second": args.n / seconds,
            "seconds": seconds,
            "processes": 1 if world is None else world.size,
            "exact_energy_per_site": None,
            "exact_specific_heat_per_site": None,
            "out": str(out),
            "deeprg_version": __version__,
        }
        exact = exact_solution(lattice, K)
        if exact is not None:
            summary["exact_energy_per_site"] = exact.energy_per_site
            summary["exact_specific_heat_per_site"] = exact.specific_heat_per_site
        # rank 0 alone compresses: on every usable core unless --threads says otherwise
        writer.finish(dataset_metadata(
            lattice.shape, K=K, sampler=args.sampler, updates_between_samples=int(first.thin), seed=args.seed,
            n_chains=args.chains, tau_int=energy.tau_int, burn_in=int(first.burn_in)), threads=args.threads)
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
        line = f"  {key:24s} {est!s:>18s}   tau_int {est.tau_int:6.2f}"
        if exact_key and s[exact_key] is not None:
            dev = (est.mean - s[exact_key]) / est.error if est.error > 0 else float("nan")
            line += f"   exact {s[exact_key]:.8f} ({dev:+.1f} sigma)"
        print(line, file=file)
    print(f"  {s['samples_per_second']:.0f} configurations/s; wrote {s['out']}", file=file)
