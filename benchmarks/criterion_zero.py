"""Where the sector-tuning criterion's gap crosses zero, between the grid points of a run.

Reads the JSON of a ``bench_rsrg3d.py --family scale`` run and, for each filter and sector, finds
the two neighbouring scales between which the gap ``y(N_r = 2) - y(N_r = 1)`` (N_c = all)
changes sign, interpolates its zero linearly and the exponent ``y(N_r = 1)`` there. With
``--matched SMALL.json`` (the same filters on a lattice half as large) it also interpolates the
zero of the finite-size-matched gap ``y(N_r = 2; L) - y(N_r = 1; L/2)`` (both end on the same
lattice), on the scales the two runs share. No new Monte Carlo: figures from committed results::

    python benchmarks/criterion_zero.py benchmarks/results/rsrg3d_scale_L32.json \\
        --matched benchmarks/results/rsrg3d_scale.json
    python benchmarks/criterion_zero.py benchmarks/results/rsrg3d_f6_L16.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

KEYS = {"even": "y_t", "odd": "y_h"}


def exponents(run: dict, f: int, key: str, n_r: int) -> dict[float, float]:
    """Scale -> ``key`` at ``N_r = n_r`` (N_c = all) of filter ``f`` of the run's one lattice size."""
    result = run["results"][-1]
    return {s: res[key][n_r - 1][-1]["mean"]
            for s, res in zip(run["block_weights"], result["per_filter_per_block_weight"][f])}


def zero(gap: dict[float, float]) -> tuple[float, float, float] | None:
    """``(s_low, s_high, s_zero)`` of the first sign change of ``gap`` over increasing scales."""
    scales = sorted(gap)
    for a, b in zip(scales, scales[1:]):
        if gap[a] * gap[b] <= 0 and gap[a] != gap[b]:
            return a, b, a + (b - a) * gap[a] / (gap[a] - gap[b])
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path, help="JSON of a bench_rsrg3d.py --family scale run")
    parser.add_argument("--matched", type=Path, help="the same filters on a lattice half as large")
    args = parser.parse_args()
    run = json.loads(args.run.read_text())
    small = json.loads(args.matched.read_text()) if args.matched else None
    for sector, key in KEYS.items():
        at_zero, zeros, matched = [], [], []
        for f in range(len(run["results"][-1]["per_filter_per_block_weight"])):
            one, two = exponents(run, f, key, 1), exponents(run, f, key, 2)
            found = zero({s: two[s] - one[s] for s in one})
            if found is None:
                print(f"{sector} sector, filter {f}: the gap does not change sign on the grid")
                continue
            a, b, s = found
            y = one[a] + (s - a) / (b - a) * (one[b] - one[a])
            zeros.append(s)
            at_zero.append(y)
            line = f"{sector} sector, filter {f}: zero at s = {s:.4f} (between {a} and {b}), {key}(N_r=1) = {y:.4f}"
            if small is not None:
                coarse = exponents(small, f, key, 1)
                found = zero({s: two[s] - coarse[s] for s in two if s in coarse})
                if found is not None:
                    matched.append(found[2])
                    line += f"; matched zero at s = {found[2]:.4f}"
            print(line)
        if at_zero:
            spread = max(at_zero) - min(at_zero)
            summary = (f"{sector} sector: mean zero s = {statistics.mean(zeros):.4f}, {key}(N_r=1) there "
                       f"{statistics.mean(at_zero):.4f} (spread {spread:.4f})")
            if matched:
                summary += f"; matched zero s = {statistics.mean(matched):.4f}"
            print(summary)


if __name__ == "__main__":
    main()
