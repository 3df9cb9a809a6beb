"""``deeprg data info``: inspect and validate a spin dataset."""

from __future__ import annotations

import argparse

import numpy as np

from deeprg.cli.common import print_json
from deeprg.data import load_dataset
from deeprg.mc import estimate


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="spin datasets (.npz)")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    q = actions.add_parser("info", help="validate a dataset and print its metadata and observables")
    q.add_argument("path", help="dataset file (.npz)")
    q.add_argument("--json", action="store_true", help="print a machine-readable summary")
    q.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    ds = load_dataset(args.path)
    lattice = ds.lattice
    e = -lattice.bond_sum(ds.spins) / lattice.n_sites
    m = ds.spins.reshape(ds.n, -1).mean(axis=1, dtype=np.float64)
    summary = {
        "path": args.path,
        "n": ds.n,
        "metadata": ds.metadata,
        "energy_per_site": estimate(e),
        "m2": estimate(m**2),
    }
    if args.json:
        print_json(summary)
        return 0
    print(f"{args.path}: {ds.n} configurations of shape {tuple(lattice.shape)} (valid deeprg dataset)")
    for key, value in ds.metadata.items():
        print(f"  {key:24s} {value}")
    print(f"  {'energy_per_site':24s} {summary['energy_per_site']}")
    print(f"  {'m2':24s} {summary['m2']}")
    return 0
