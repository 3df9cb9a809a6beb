"""``deeprg exact ising``: exact thermodynamics of the Ising model."""

from __future__ import annotations

import argparse
import math

from deeprg.cli.common import UsageError, coupling, int_at_least, print_json
from deeprg.lattice import Lattice
from deeprg.models.exact import exact_solution, onsager

# Kaufman's product costs O(L) memory and time: 10^6 per side takes about a second.
MAX_EXTENT_2D = 10**6
# The chain's closed form costs O(1); beyond this N the per-site values no longer change.
MAX_CHAIN = 10**15


def beta(value: str) -> float:
    """``--beta``: as :func:`deeprg.cli.common.coupling`, naming a value that underflows to 0."""
    try:
        v = float(value)
    except ValueError:
        v = None
    if v == 0.0 and any(c in "123456789" for c in value.split("e")[0].split("E")[0]):
        raise argparse.ArgumentTypeError(
            f"beta {value!r} underflows to 0 in double precision; beta must lie in "
            f"[{math.ulp(0.0):.3g}, {float.fromhex('0x1.fffffffffffffp+1023'):.3g}] or be 'critical'")
    return coupling(value)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("exact", help="exact solutions of lattice models")
    models = p.add_subparsers(dest="model", required=True, metavar="MODEL")
    q = models.add_parser(
        "ising",
        help="Ising model: Kaufman (finite periodic M x L), 1D chain, Onsager (infinite)",
        description="Exact ln Z, free energy, energy and specific heat per site of the periodic "
        "Ising model H = -K sum_<ij> s_i s_j (energies in units of J), accurate to ~1e-14 "
        "relative for any K from 1e-300 to 1e300.",
    )
    q.add_argument("--L", type=int_at_least(2), default=16,
                   help=f"columns (2..{MAX_EXTENT_2D:.0e}), or chain length (2..{MAX_CHAIN:.0e}) [16]")
    q.add_argument("--M", type=int_at_least(2), default=None, help=f"rows (2D only, 2..{MAX_EXTENT_2D:.0e}) [L]")
    q.add_argument("--d", type=int, choices=(1, 2), default=2, help="dimension [2]")
    q.add_argument("--beta", type=beta, default="critical",
                   help="coupling K = beta J: 'critical' (K_c of the square lattice) or a number > 0")
    q.add_argument("--json", action="store_true", help="print a machine-readable summary")
    q.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.d == 1:
        if args.M is not None:
            raise UsageError("--M applies to d=2 only")
        if args.L > MAX_CHAIN:
            raise UsageError(f"--L must lie in 2..{MAX_CHAIN} for d=1, got {args.L}")
        shape = (args.L,)
    else:
        M = args.M if args.M is not None else args.L
        for name, value in (("--L", args.L), ("--M", M)):
            if value > MAX_EXTENT_2D:
                raise UsageError(f"{name} must lie in 2..{MAX_EXTENT_2D} for d=2 (Kaufman's product "
                                 f"takes O({name[2:]}) memory and time), got {value}")
        shape = (M, args.L)
    try:
        exact = exact_solution(Lattice(shape), args.beta)
        infinite = onsager(args.beta).to_dict() if args.d == 2 else None
    except ValueError as err:  # ln Z beyond the float range
        raise UsageError(f"--beta: {err}") from None
    lattice = list(shape)
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
