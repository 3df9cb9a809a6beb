"""Throughput of the Monte Carlo samplers: decorrelated Ising configurations per second.

Run from the repository root (takes a few minutes; writes benchmarks/results/samplers.json and
benchmarks/results/samplers.md)::

    python benchmarks/bench_samplers.py

For every sampler (wolff, sw, metropolis) and L = 16, 32, 64 at K = K_C on the periodic L x L
lattice, twice: one chain on one thread ("1 core") and ``os.cpu_count()`` chains on as many
threads ("all cores"):

1. burn in (the sampler's default) and run a pilot of ``>= max(2000, 100 tau)`` updates saving
   every update; ``tau`` = integrated autocorrelation time of the energy in updates (Sokal);
2. production: ``thin = max(1, ceil(2 tau))`` updates between saved samples, ``--repeats``
   runs of about ``--seconds`` of wall time each, spins kept (int8) and energy and
   magnetization measured; ``saved/s`` is the median over the repeats (the machine may be
   shared, so single timings are noisy);
3. ``tau_saved`` = integrated autocorrelation time of the saved energies (in saved samples,
   all repeats together) and ``decorrelated/s = saved/s / max(1, 2 tau_saved)``.

One "update" is one Wolff cluster flip, one Swendsen-Wang update or one Metropolis sweep.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from machine import describe

from deeprg.mc import SAMPLERS, integrated_autocorr_time, make_sampler
from deeprg.models.ising import K_C

SIZES = (16, 32, 64)
TARGET = {"sampler": "wolff", "L": 32, "per_core": 5000.0}


def tau_int(x: np.ndarray) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return integrated_autocorr_time(x)


def _python_loop(n: int) -> float:
    t0 = time.perf_counter()
    x = 0
    for i in range(n):
        x += i
    return time.perf_counter() - t0


def process_speedup(cores: int, n: int = 10_000_000) -> float:
    """Throughput of ``cores`` processes running a pure-Python loop relative to one process:
    what the hardware allows at most (``cores`` on independent cores)."""
    one = _python_loop(n)
    with multiprocessing.Pool(cores) as pool:
        t0 = time.perf_counter()
        pool.map(_python_loop, [n] * cores)
        wall = time.perf_counter() - t0
    return cores * one / wall


def bench(name: str, L: int, n_chains: int, seconds: float, repeats: int, seed: int) -> dict:
    sampler = make_sampler(name, (L, L), K_C, seed=seed, n_chains=n_chains)
    n = 2000
    pilot = sampler.run(n * n_chains, thin=1, keep_spins=False)
    tau = tau_int(pilot.series["energy"])
    if n < 100 * tau:  # extend the pilot to 100 tau
        extra = math.ceil(100 * tau) - n
        more = sampler.run(extra * n_chains, thin=1, keep_spins=False)
        tau = tau_int(np.concatenate([pilot.series["energy"], more.series["energy"]], axis=1))
    thin = max(1, math.ceil(2 * tau))
    # Calibrate the production length from a short timed run, then time the production runs.
    probe = sampler.run(20 * n_chains, thin=thin)
    n_per_chain = max(50, int(seconds / (probe.seconds / 20)))
    rates, energies, clusters = [], [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run = sampler.run(n_per_chain * n_chains, thin=thin)
        rates.append(run.n_samples / (time.perf_counter() - t0))
        energies.append(run.series["energy"])
        clusters.append(run.mean_cluster_size)
    energy = np.concatenate(energies, axis=1)
    tau_saved = tau_int(energy)
    saved_rate = float(np.median(rates))
    return {
        "sampler": name,
        "L": L,
        "K": K_C,
        "n_chains": n_chains,
        "n_threads": min(n_chains, os.cpu_count() or 1),
        "tau_energy_updates": tau,
        "thin": thin,
        "saved_per_run": n_per_chain * n_chains,
        "saved_per_second_repeats": rates,
        "saved_per_second": saved_rate,
        "updates_per_second": saved_rate * thin,
        "tau_energy_saved": tau_saved,
        "decorrelated_per_second": saved_rate / max(1.0, 2.0 * tau_saved),
        "mean_cluster_size": None if name != "wolff" else float(np.mean(clusters)),
        "energy_per_site": float(energy.mean() / L**2),
    }


def markdown(info: dict, rows: list[dict], target: dict) -> str:
    lines = [
        "# Sampler throughput (deeprg.mc)",
        "",
        "Command: `python benchmarks/bench_samplers.py` (see its docstring for the method).",
        "",
        f"Machine: {info['cpu']}, {info['cores']} cores; Python {info['python']}, "
        f"numpy {info['numpy']}, numba {info['numba']}; {info['platform']}; {info['date']}.",
        "",
        "Square lattice L x L at K = K_C. An update is one Wolff cluster flip, one Swendsen-Wang "
        "update or one Metropolis sweep. `tau` is the integrated autocorrelation time of the "
        "energy in updates (pilot run), `thin = ceil(2 tau)`, `tau_saved` the same for the saved "
        "series (in saved samples); decorrelated/s = saved/s / max(1, 2 tau_saved). Energy and "
        "magnetization are measured and int8 spins kept for every saved sample; rates are "
        "medians of the repeated production runs.",
        "",
        "| sampler | L | chains (threads) | tau [updates] | thin | us/update | saved/s "
        "| tau_saved | decorrelated/s | speedup | mean cluster |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    single = {(r["sampler"], r["L"]): r for r in rows if r["n_chains"] == 1}
    for r in rows:
        mcs = "" if r["mean_cluster_size"] is None else f"{r['mean_cluster_size']:.0f}"
        one = single[r["sampler"], r["L"]]
        lines.append(
            f"| {r['sampler']} | {r['L']} | {r['n_chains']} ({r['n_threads']}) "
            f"| {r['tau_energy_updates']:.2f} | {r['thin']} "
            f"| {1e6 * r['n_threads'] / r['updates_per_second']:.1f} "
            f"| {r['saved_per_second']:,.0f} | {r['tau_energy_saved']:.2f} "
            f"| {r['decorrelated_per_second']:,.0f} "
            f"| {r['updates_per_second'] / one['updates_per_second']:.2f} | {mcs} |"
        )
    lines += [
        "",
        "us/update is per thread (wall time x threads / updates); speedup is the update rate "
        "relative to one chain on one thread. For comparison, the hardware limit: "
        f"{info['cores']} processes running a pure-Python loop reach "
        f"{info['process_speedup']:.2f}x the throughput of one.",
        "",
        f"Target: >= {target['per_core']:,.0f} decorrelated {target['L']}x{target['L']} "
        f"configurations per second per core with {target['sampler']}: measured "
        f"{target['measured_per_core']:,.0f} on one core "
        f"({'met' if target['met'] else 'NOT met'}).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=1.0,
                        help="wall time of each production run (default 1)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="production runs per case; the median rate is reported (default 3)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"),
                        help="output directory (default benchmarks/results)")
    args = parser.parse_args(argv)
    info = describe()
    cores = os.cpu_count() or 1
    info["process_speedup"] = process_speedup(cores)
    # Compile (or load from the numba cache) before timing anything.
    for name in SAMPLERS:
        make_sampler(name, (4, 4), K_C).run(2, burn_in=1)
    rows = []
    for name in SAMPLERS:
        for L in SIZES:
            for n_chains in sorted({1, cores}):
                r = bench(name, L, n_chains, args.seconds, args.repeats, seed=L)
                rows.append(r)
                print(f"{name:10s} L={L:3d} chains={n_chains}: tau={r['tau_energy_updates']:.2f} "
                      f"thin={r['thin']} saved/s={r['saved_per_second']:,.0f} "
                      f"tau_saved={r['tau_energy_saved']:.2f} "
                      f"decorrelated/s={r['decorrelated_per_second']:,.0f}", flush=True)
    one = next(r for r in rows if r["sampler"] == TARGET["sampler"] and r["L"] == TARGET["L"]
               and r["n_chains"] == 1)
    target = dict(TARGET, measured_per_core=one["decorrelated_per_second"],
                  met=one["decorrelated_per_second"] >= TARGET["per_core"])
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"machine": info, "method": __doc__, "target": target, "results": rows}
    (args.out / "samplers.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "samplers.md").write_text(markdown(info, rows, target))
    print(f"wrote {args.out / 'samplers.json'} and {args.out / 'samplers.md'}", file=sys.stderr)


if __name__ == "__main__":
    main()
