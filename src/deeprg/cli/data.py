"""``deeprg data info``: inspect and validate a spin dataset."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import numpy as np
from tqdm import tqdm

from deeprg.cli.common import print_json
from deeprg.data import SpinFile, open_dataset
from deeprg.mc import estimate

#: Spins per chunk when computing the observables (bounds the int64 temporaries of
#: :meth:`~deeprg.lattice.Lattice.bond_sum` to about 64 MiB per lattice direction).
_CHUNK_SPINS = 1 << 22

#: Seconds before the progress bar appears (small files show none).
_BAR_DELAY = 1.0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="spin datasets (.npz)")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    q = actions.add_parser("info", help="validate a dataset and print its metadata and observables")
    q.add_argument("path", help="dataset file (.npz)")
    q.add_argument("--json", action="store_true", help="print a machine-readable summary")
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    q.set_defaults(run=run)


def observables(ds: SpinFile, callback: Callable[[int, int], None]) -> tuple[np.ndarray, np.ndarray]:
    """Energy ``e = -sum_<ij> s_i s_j / N`` and magnetization ``m = sum_i s_i / N`` per site of
    every configuration, each ``(n,)`` float64, streamed from the file in chunks (every value
    checked to be -1/+1 on the way); ``callback(done, n)`` after each chunk (configurations done
    so far)."""
    lattice = ds.lattice
    e = np.empty(ds.n)
    m = np.empty(ds.n)
    start = 0
    for s in ds.chunks(size=max(1, _CHUNK_SPINS // lattice.n_sites)):
        e[start : start + len(s)] = -lattice.bond_sum(s) / lattice.n_sites
        m[start : start + len(s)] = s.reshape(len(s), -1).mean(axis=1, dtype=np.float64)
        start += len(s)
        callback(start, ds.n)
    return e, m


def by_chain(x: np.ndarray, n_chains: int) -> np.ndarray:
    """A per-configuration series ``(n,)`` as ``(n_chains, n / n_chains)``, the configurations
    taken to be stored chain after chain (as ``deeprg sample`` writes them), so that error bars
    see each chain's own autocorrelation; as one ``(n,)`` series when ``n_chains`` does not
    divide ``n`` into chains of at least 2."""
    if x.size % n_chains == 0 and x.size // n_chains >= 2:
        return x.reshape(n_chains, -1)
    return x


def run(args: argparse.Namespace) -> int:
    with open_dataset(args.path) as ds:
        return _info(args, ds)


def _info(args: argparse.Namespace, ds: SpinFile) -> int:
    with tqdm(total=ds.n, disable=args.quiet, file=sys.stderr, unit="config", delay=_BAR_DELAY,
              desc="observables") as bar:
        e, m = observables(ds, lambda done, total: bar.update(done - bar.n))
    n_chains = ds.metadata["n_chains"]
    summary = {
        "path": args.path,
        "n": ds.n,
        "sync_points": ds.sync_points(),
        "metadata": ds.metadata,
        "energy_per_site": estimate(by_chain(e, n_chains)),
        "m2": estimate(by_chain(m**2, n_chains)),
    }
    if args.json:
        print_json(summary)
        return 0
    print(f"{args.path}: {ds.n} configurations of shape {tuple(ds.lattice.shape)} (valid deeprg dataset)")
    for key, value in ds.metadata.items():
        print(f"  {key:24s} {value}")
    points = summary["sync_points"]
    print(f"  {'sync points':24s} " + (f"{points} (readers start at the block of their first configuration)" if points
                                       else "none (readers decompress everything before their first configuration)"))
    for key in ("energy_per_site", "m2"):
        est = summary[key]
        print(f"  {key:24s} {est!s:>18s}   tau_int {est.tau_int:6.2f}")
    return 0
