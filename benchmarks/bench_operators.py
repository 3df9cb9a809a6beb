"""Throughput of the MCRG operator sums (``deeprg.rsrg.operators.operator_sums``).

For square lattices L x L (L = 8 .. 128) and simple cubic ones L^3 (L = 8, 16, 32), random
+-1 configurations (about 2^24 sites per size), the default operator set of the dimension (11
operators in 2D, 14 in 3D): the best of ``--repeats`` timings of ``operator_sums`` on one thread
(numpy's elementwise loops do not use threads), as configurations and sites per second. Every
size is checked first against the definition (products of rolled copies, on 8 configurations).

``--baseline FILE`` puts the figures of an earlier run (its JSON, e.g. of an older version of the
package: run this script with ``PYTHONPATH=<old checkout>/src --out <stem>``) beside them, with the
speed-up. Run from the repository root:

    python benchmarks/bench_operators.py                # a few seconds per size
    python benchmarks/bench_operators.py --quick        # smoke run: small sizes, temporary folder

Results go to benchmarks/results/operators.{json,md} (``--out STEM`` to change the file names).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from machine import describe

RESULTS = Path(__file__).parent / "results"
SIZES = [(2, 8), (2, 16), (2, 32), (2, 64), (2, 128), (3, 8), (3, 16), (3, 32)]
QUICK_SIZES = [(2, 8), (2, 16), (3, 8)]


def defined_sums(spins: np.ndarray, operators) -> np.ndarray:
    """The operators' lattice sums by the definition: products of periodically rolled copies."""
    axes = tuple(range(1, spins.ndim))
    s = spins.astype(np.int64)
    return np.stack([sum(np.prod([np.roll(s, tuple(-c for c in o), axis=axes) for o in shape], axis=0)
                         for shape in op.shapes).sum(axis=axes) for op in operators], axis=1)


def measure(d: int, L: int, sites: int, repeats: int) -> dict:
    from deeprg.rsrg.operators import operator_set, operator_sums

    rng = np.random.default_rng(L + 100 * d)
    n = max(8, sites // L**d)
    spins = np.where(rng.random((n,) + (L,) * d) < 0.5, -1, 1).astype(np.int8)
    operators = operator_set(d).all
    if not np.array_equal(operator_sums(spins[:8], operators), defined_sums(spins[:8], operators)):
        raise AssertionError(f"operator sums differ from the definition on {L}^{d}")
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        operator_sums(spins, operators)
        times.append(time.perf_counter() - t0)
    best = min(times)
    return {"d": d, "L": L, "configurations": n, "seconds": best, "all_seconds": times,
            "configurations_per_second": n / best, "sites_per_second": n * L**d / best}


def markdown(result: dict, baseline: dict | None) -> str:
    m = result["machine"]
    lines = ["# MCRG operator sums: throughput", "",
             f"`{result['command']}` on {m['cpu']} ({m['cores']} cores), numpy {m['numpy']}, {m['date']}; one thread,",
             f"best of {result['repeats']} timings, random +-1 configurations, the default operators of the dimension",
             "(11 in 2D, 14 in 3D), each size checked against the definition first.", ""]
    old = {(r["d"], r["L"]): r for r in baseline["sizes"]} if baseline else {}
    head = "| lattice | configurations | seconds | configurations / s | sites / s |"
    rule = "|---|---|---|---|---|"
    if baseline:
        lines += [f"Baseline: {baseline['label']} ({baseline['machine']['date']}, same script).", ""]
        head += " baseline configurations / s | speed-up |"
        rule += "---|---|"
    lines += [head, rule]
    for r in result["sizes"]:
        row = (f"| {'x'.join([str(r['L'])] * r['d'])} | {r['configurations']} | {r['seconds']:.3f} | "
               f"{r['configurations_per_second']:,.0f} | {r['sites_per_second']:.3g} |")
        if baseline:
            b = old.get((r["d"], r["L"]))
            row += (f" {b['configurations_per_second']:,.0f} | {r['configurations_per_second'] / b['configurations_per_second']:.1f}x |"
                    if b else " - | - |")
        lines.append(row)
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: small sizes, temporary folder")
    parser.add_argument("--repeats", type=int, default=5, choices=range(1, 21), metavar="{1..20}",
                        help="timings per size, the best kept [5]")
    parser.add_argument("--baseline", type=Path, help="JSON of an earlier run to compare with")
    parser.add_argument("--label", default="this checkout", help="what was measured, recorded in the JSON")
    parser.add_argument("--out", default="operators", help="file stem under benchmarks/results [operators]")
    args = parser.parse_args()
    baseline = json.loads(args.baseline.read_text()) if args.baseline else None
    sizes, sites = (QUICK_SIZES, 1 << 18) if args.quick else (SIZES, 1 << 24)
    command = "python benchmarks/bench_operators.py" + (" --quick" if args.quick else "")
    result = {"command": command, "label": args.label, "machine": describe(), "repeats": args.repeats, "sizes": []}
    for d, L in sizes:
        result["sizes"].append(measure(d, L, sites, args.repeats))
        r = result["sizes"][-1]
        print(f"{L}^{d}: {r['configurations_per_second']:,.0f} configurations/s ({r['sites_per_second']:.3g} sites/s)",
              flush=True)
    folder = Path(tempfile.mkdtemp()) if args.quick else RESULTS
    folder.mkdir(exist_ok=True)
    (folder / f"{args.out}.json").write_text(json.dumps(result, indent=2) + "\n")
    (folder / f"{args.out}.md").write_text(markdown(result, baseline))
    print((folder / f"{args.out}.md").read_text())


if __name__ == "__main__":
    main()
