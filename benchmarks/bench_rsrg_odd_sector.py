"""Why the learned projector's exponents are off (issue 14): MCRG of variants of one trained filter.

On ``--n`` fresh Wolff configurations of the 32 x 32 Ising model at K_c (N_r = 1, 2, 3; N_c = all:
7 even, 4 odd), with common random numbers, measure:

* the learned filter ``w`` (the first final filter of ``results/rsrg.json``, from ``bench_rsrg.py``)
  and ``s * w`` for sharper or softer projections (``s`` = 0.5, 2, 5);
* ``w`` averaged over the 8 symmetries of the square about the block centre;
* decimation and the majority rule; the stochastic majority rule ``p * 1_block`` (p = 0.7, 1, 3);
* ``w + alpha * 1_block`` for alpha = 0.25, 0.5, 0.75, 1 (the family the sector tuning chooses
  from).

With ``--d 3``: the first filter of ``results/rsrg3d.json`` (from ``bench_rsrg3d.py``) on 16^3
configurations at the 3D K_c (N_r = 1, 2; 8 even, 6 odd couplings), and ``alpha`` up to 16: for
``alpha >= 4`` every block whose sum is not 0 follows its majority, so those rows differ from the
majority rule only in how the ties are broken (by the learned filter's field instead of a coin).

Run from the repository root after ``bench_rsrg.py`` / ``bench_rsrg3d.py`` (about a minute per
10^5 configurations in 2D, per 5 x 10^4 in 3D)::

    python benchmarks/bench_rsrg_odd_sector.py
    python benchmarks/bench_rsrg_odd_sector.py --d 3 --n 50000

Results go to benchmarks/results/rsrg_odd_sector.{json,md} (``_3d`` with ``--d 3``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from machine import describe

from deeprg import Lattice
from deeprg.mc import make_sampler
from deeprg.mc.stats import format_value_error
from deeprg.models.ising import K_C, K_C_3D
from deeprg.rsrg.mcrg import REFERENCE_EXPONENTS, run_mcrg
from deeprg.rsrg.rbm import block_indicator
from deeprg.rsrg.transforms import Decimation, MajorityRule, RBMProjector

RESULTS = Path(__file__).parent / "results"


def symmetrized(w: np.ndarray) -> np.ndarray:
    """Average of ``w`` over the 8 symmetries of the square (the window is centred on the block)."""
    images = []
    for k in range(4):
        r = np.rot90(w, k)
        images += [r, r.T]
    return np.mean(images, axis=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="MCRG configurations [100000]")
    parser.add_argument("--seed", type=int, default=7, help="seed of the Wolff chains and the transformations [7]")
    parser.add_argument("--d", type=int, choices=(2, 3), default=2, help="dimension [2]")
    args = parser.parse_args()
    torch.set_num_threads(1)
    d = args.d
    L, LEVELS, K = (32, 3, K_C) if d == 2 else (16, 2, K_C_3D)
    source = "rsrg.json" if d == 2 else "rsrg3d.json"
    w = np.array(json.loads((RESULTS / source).read_text())["final_filters"][0])
    block = block_indicator(w.shape[0], d)
    alphas = (0.25, 0.5, 0.75, 1.0) if d == 2 else (0.5, 1.0, 2.0, 4.0, 16.0)
    variants = {
        "learned w": RBMProjector(w),
        "0.5 w": RBMProjector(0.5 * w),
        "2 w": RBMProjector(2 * w),
        "5 w": RBMProjector(5 * w),
        **({"w symmetrized about the block centre": RBMProjector(symmetrized(w))} if d == 2 else {}),
        "decimation": Decimation(),
        "majority rule": MajorityRule(),
        "stochastic majority, p = 0.7": RBMProjector(0.7 * block),
        "stochastic majority, p = 1": RBMProjector(1.0 * block),
        "stochastic majority, p = 3": RBMProjector(3.0 * block),
        **{f"w + {a:g} block": RBMProjector(w, block_weight=a) for a in alphas},
    }
    sampler = make_sampler("wolff", Lattice.square(L, d), K, seed=args.seed, n_chains=2)
    chunks = (run.spins_flat() for run in sampler.stream(args.n, thin="auto", chunk=4096))
    t0 = time.perf_counter()
    results = run_mcrg(chunks, (L,) * d, list(variants.values()), args.n, LEVELS, seed=args.seed)
    seconds = time.perf_counter() - t0
    rows = {name: {"y_t": [r.y_t[k][-1].to_dict() for k in range(LEVELS)],
                   "y_h": [r.y_h[k][-1].to_dict() for k in range(LEVELS)]} for name, r in zip(variants, results)}
    out = {"machine": describe(), "d": d, "L": L, "n": args.n, "seed": args.seed, "seconds": seconds,
           "filter": w.tolist(), "variants": rows}
    stem = "rsrg_odd_sector" if d == 2 else "rsrg_odd_sector_3d"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(out, indent=2) + "\n")

    def f(e: dict) -> str:
        return "nan" if e["mean"] is None or e["error"] is None else format_value_error(e["mean"], e["error"])

    ref = REFERENCE_EXPONENTS[d]
    lines = [f"# {d}D: MCRG of variants of one learned filter (issue 14)", "",
             f"Machine: {out['machine']}", "",
             f"{'x'.join([str(L)] * d)} Ising at K_c = {K:.10g}, {args.n} Wolff configurations (seed {args.seed}), "
             "N_c = all, common random numbers; "
             f"{seconds:.0f} s. Reference: y_t = {ref['y_t']:.5f}, y_h = {ref['y_h']:.5f} ({ref['source']}). Command: "
             f"`python benchmarks/bench_rsrg_odd_sector.py{'' if d == 2 else f' --d 3 --n {args.n}'}`.", "",
             "| transformation | " + " | ".join(f"y_t N_r={k + 1}" for k in range(LEVELS)) + " | "
             + " | ".join(f"y_h N_r={k + 1}" for k in range(LEVELS)) + " |",
             "|---|" + "---|" * (2 * LEVELS)]
    for name, row in rows.items():
        lines.append(f"| {name} | " + " | ".join(f(e) for e in row["y_t"]) + " | "
                     + " | ".join(f(e) for e in row["y_h"]) + " |")
    text = "\n".join(lines) + "\n"
    (RESULTS / f"{stem}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
