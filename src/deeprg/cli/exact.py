"""``deeprg exact ising``: exact thermodynamics of the Ising model."""

from __future__ import annotations

import argparse

from deeprg.cli.common import coupling, int_at_least, print_json
from deeprg.models.exact import ising_chain, kaufman, onsager


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("exact", help="exact solutions of lattice models")
    models = p.add_subparsers(dest="model", required=True, metavar="MODEL")
    q = models.add_parser(
        "ising",
        help="Ising model: Kaufman (finite periodic M x L), 1D chain, Onsager (infinite)",
        description="Exact ln Z, free energy, energy and specific heat per site of the periodic "
        "Ising model H = -K sum_<ij> s_i s_j (energies in units of J).",
    )
    q.add_argument("--L", type=int_at_least(2), default=16, help="columns (or chain length) [16]")
    q.add_argument("--M", type=int_at_least(2), default=None, help="rows (2D only) [L]")
    q.add_argument("--d", type=int, choices=(1, 2), default=2, help="dimension [2]")
    q.add_argument("--beta", type=coupling, default="critical",
                   help="coupling K = beta J: 'critical' (K_c of the square lattice) or a number > 0")
    q.add_argument("--json", action="store_true", help="print a machine-readable summary")
    q.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.d == 1:
        if args.M is not None:
            raise argparse.ArgumentTypeError("--M applies to d=2 only")
        exact, lattice = ising_chain(args.L, args.beta), [args.L]
        infinite = None
    else:
        M = args.M if args.M is not None else args.L
        exact, lattice = kaufman(M, args.L, args.beta), [M, args.L]
        infinite = onsager(args.beta).to_dict()
    summary = {"model": "ising", "lattice": lattice, "K": args.beta, **exact.to_dict()}
    if infinite is not None:
        summary["onsager"] = infinite
    if args.json:
        print_json(summary)
        return 0
    method = "transfer matrix" if args.d == 1 else "Kaufman"
    print(f"Ising {'x'.join(map(str, lattice))} periodic, K = {args.beta:.15g} ({method}, exact)")
    for key in ("ln_z", "free_energy_per_site", "energy_per_site", "specific_heat_per_site"):
        print(f"  {key:24s} {summary[key]: .15g}")
    if infinite is not None:
        print(f"  infinite lattice (Onsager): energy_per_site {infinite['energy_per_site']:.12g}, "
              f"spontaneous_magnetization {infinite['spontaneous_magnetization']:.12g}")
    return 0
