"""MCRG of the 3D Ising model with the majority rule, the learned RBM projector and the sector-tuned
projector (issue 14), at K_c = 0.221654626 (Ferrenberg, Xu & Landau 2018).

The whole pipeline, timed stage by stage:

1. **training sets and training**: ``--filters`` filters of size ``--filter-size``^3 (default 4),
   each trained on its own ``--train`` Wolff configurations of a ``--train-L``^3 lattice (default
   16) by CD-3 with the 2D settings (Adam 1e-3 -> 1e-4, minibatch 10, ``--epochs`` epochs), one
   torch thread each, two at a time. The filter is a local, translation-invariant map, so one
   trained on 16^3 data is applied unchanged to 32^3 configurations (training at 32^3 costs 5x
   more per step: 41 against 8.5 ms);
2. **MCRG** for each ``L`` of ``--sizes``: ``--mcrg`` fresh Wolff configurations streamed straight
   into the accumulators (never stored) of the majority rule (ties, 14 % of the blocks at K_c,
   broken by a fair coin) and of every filter plus ``alpha`` times the block spin for each
   ``alpha`` of ``--block-weights`` (``alpha = 0`` is the learned projector);
   ``N_r = 1 .. log2(L/4)``, all 8 even and 6 odd operators, 32 jackknife blocks;
3. **sector tuning** (``deeprg.rsrg.tuning``): per filter and sector, the ``alpha`` whose exponent
   at ``N_c`` = all changes least from ``N_r = 1`` to 2. With ``--family scale`` the tuned family
   is the filter scaled by each ``s`` of ``--scales`` (a softer or sharper projection; ``s = 1`` is
   the learned projector) instead of the block weight; results then go to ``rsrg3d_scale.*``. The RBM columns average the filters,
   with an error that adds their spread (``sd / sqrt(n)``) to the MCRG error.

Reference values: y_t = 1/nu = 1.58737 and y_h = 3 - Delta_sigma = 2.48185 (conformal bootstrap,
Kos, Poland, Simmons-Duffin & Vichi 2016).

Run from the repository root, alone on the machine::

    python benchmarks/bench_rsrg3d.py                       # L = 16 and 32, results/rsrg3d.{json,md} and figures
    python benchmarks/bench_rsrg3d.py --quick --out /tmp/rsrg3d-smoke   # ~2 minute smoke run
    python benchmarks/bench_rsrg3d.py --family scale --sizes 16 --reuse-filters benchmarks/results/rsrg3d.json
    python benchmarks/bench_rsrg3d.py --family scale --sizes 32 --scales 0.4,0.45,0.5,0.55,0.6,1 \
        --reuse-filters benchmarks/results/rsrg3d.json --stem rsrg3d_scale_L32
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench_rsrg import average, train_on  # noqa: E402
from machine import describe  # noqa: E402

from deeprg import Lattice  # noqa: E402
from deeprg.mc import make_sampler  # noqa: E402
from deeprg.mc.stats import Estimate, format_value_error  # noqa: E402
from deeprg.models.ising import K_C_3D  # noqa: E402
from deeprg.plots import filter_snapshots  # noqa: E402
from deeprg.rsrg.mcrg import REFERENCE_EXPONENTS, MCRGResult, run_mcrg  # noqa: E402
from deeprg.rsrg.operators import operator_set  # noqa: E402
from deeprg.rsrg.train import RBMTrainConfig  # noqa: E402
from deeprg.rsrg.transforms import MajorityRule, RBMProjector  # noqa: E402
from deeprg.rsrg.tuning import tune_sectors  # noqa: E402

BLOCKS = 32
REF = REFERENCE_EXPONENTS[3]
OPS = operator_set(3)


def sample(L: int, n: int, seed: int, chunk: int):
    """Wolff chunks ``(m, L, L, L)`` int8 at K_c, the sampling seconds of each and the thinning."""
    sampler = make_sampler("wolff", Lattice.square(L, 3), K_C_3D, seed=seed, n_chains=2)
    for run in sampler.stream(n, thin="auto", chunk=chunk):
        yield run.spins_flat(), run.seconds, run.thin


def train_filter(L: int, n_train: int, epochs: int, f: int, seed: int) -> dict:
    """One training set and one CD-3 run on it (in a worker process)."""
    t0 = time.perf_counter()
    train = np.concatenate([s for s, _, _ in sample(L, n_train, seed, chunk=max(2, n_train // 2))])
    sampling = time.perf_counter() - t0
    return train_on(train, RBMTrainConfig(filter_size=f, epochs=epochs, seed=seed, threads=1), sampling)


def table(t: dict[str, list[list[Estimate]]] | MCRGResult) -> dict:
    get = (lambda k: t[k]) if isinstance(t, dict) else (lambda k: getattr(t, k))
    return {k: [[{"mean": e.mean, "error": e.error} for e in row] for row in get(k)] for k in ("y_t", "y_h")}


def mcrg_size(L: int, n: int, seed: int, filters: list[np.ndarray], alphas: list[float], family: str) -> dict:
    """MCRG of the majority rule and every (filter, parameter) on one stream of L^3 configurations."""
    levels = int(math.log2(L // OPS.min_extent))
    make = (lambda w, a: RBMProjector(w, block_weight=a)) if family == "block" else (lambda w, a: RBMProjector(a * w))
    learned_index = alphas.index(0.0 if family == "block" else 1.0)
    transforms = [make(w, a) for w in filters for a in alphas] + [MajorityRule()]
    sampling, thin = [0.0], [None]

    def chunks():
        for spins, s, t in sample(L, n, seed, chunk=1024):
            sampling[0] += s
            thin[0] = t
            yield spins

    t0 = time.perf_counter()
    bar_every = max(1, n // 10)
    done = [0]

    def progress(k: int) -> None:
        done[0] += k
        if done[0] % bar_every < k:
            print(f"  L = {L}: {done[0]} / {n} configurations, {time.perf_counter() - t0:.0f} s", flush=True)

    *per_transform, majority = run_mcrg(chunks(), (L, L, L), transforms, n, levels, seed=seed, n_blocks=BLOCKS,
                                        on_chunk=progress)
    total = time.perf_counter() - t0
    per_alpha = [per_transform[i * len(alphas) : (i + 1) * len(alphas)] for i in range(len(filters))]
    learned = [r[learned_index] for r in per_alpha]
    tunings = [tune_sectors(alphas, r) for r in per_alpha] if len(alphas) > 1 and levels >= 2 else []
    tuned = (average([dataclasses.replace(per_alpha[i][t.even.index], y_h=t.y_h) for i, t in enumerate(tunings)])
             if tunings else None)
    return {"L": L, "levels": levels, "n": n, "seed": seed, "thin": thin[0], "sampling_seconds": sampling[0],
            "mcrg_seconds": total - sampling[0], "majority": majority, "learned": learned,
            "learned_average": average(learned), "per_alpha": per_alpha, "tunings": tunings, "tuned": tuned}


def fmt(e) -> str:
    if isinstance(e, dict):
        return format_value_error(e["mean"], e["error"])
    return format_value_error(e.mean, e.error)


def figure(sizes: list[dict], path: Path) -> None:
    """y_t and y_h (N_c = all) against N_r for every L: majority, learned, sector-tuned."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, n_c, ref in ((axes[0], "y_t", len(OPS.even), REF["y_t"]), (axes[1], "y_h", len(OPS.odd), REF["y_h"])):
        for j, s in enumerate(sizes):
            nr = np.arange(1, s["levels"] + 1)
            shift = 0.04 * (j - (len(sizes) - 1) / 2)
            series = [("majority rule", getattr(s["majority"], key), "s", "C0"),
                      ("learned projector", s["learned_average"][key], "o", "C1")]
            if s["tuned"] is not None:
                series.append(("sector-tuned projector", s["tuned"][key], "^", "C2"))
            for k, (label, rows, marker, color) in enumerate(series):
                ax.errorbar(nr + shift + 0.1 * (k - 1), [rows[r][n_c - 1].mean for r in range(s["levels"])],
                            yerr=[rows[r][n_c - 1].error for r in range(s["levels"])], fmt=marker,
                            color=color, mfc="white" if j == 0 else color, capsize=2, ms=5,
                            label=f"{label}, L = {s['L']}")
        ax.axhline(ref, ls=":", color="k", lw=1.2, label=f"{key} = {ref:.5f} (bootstrap)")
        ax.set_xlabel("RG steps $N_r$")
        ax.set_xticks(range(1, max(s["levels"] for s in sizes) + 1))
        ax.set_ylabel(f"${key[0]}_{key[2]}$ ($N_c$ = {n_c})")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="best")
    fig.suptitle("3D Ising at $K_c$ = 0.221654626: MCRG exponents against the RG step", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def figure_nc(s: dict, path: Path) -> None:
    """y_t and y_h against N_c at every N_r for the largest L."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, ref in ((axes[0], "y_t", REF["y_t"]), (axes[1], "y_h", REF["y_h"])):
        series = [("majority", getattr(s["majority"], key), "C0"), ("learned", s["learned_average"][key], "C1")]
        if s["tuned"] is not None:
            series.append(("sector-tuned", s["tuned"][key], "C2"))
        for label, rows, color in series:
            for r in range(s["levels"]):
                nc = np.arange(1, len(rows[r]) + 1)
                ax.errorbar(nc + 0.05 * r, [e.mean for e in rows[r]], yerr=[e.error for e in rows[r]],
                            fmt="o-", color=color, alpha=1 - 0.25 * r, ms=3, lw=0.8, capsize=2,
                            label=f"{label}, $N_r$ = {r + 1}")
        ax.axhline(ref, ls=":", color="k", lw=1.2, label="bootstrap")
        ax.set_xlabel("couplings $N_c$")
        ax.set_ylabel(f"${key[0]}_{key[2]}$")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=6, ncol=2)
    fig.suptitle(f"3D Ising, L = {s['L']}: convergence in the number of couplings", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 8^3 training, 2 epochs, L = 16, 4000 MCRG")
    parser.add_argument("--sizes", default=None, help="MCRG lattice sizes, comma-separated [16,32]")
    parser.add_argument("--train-L", type=int, default=None, help="training lattice size [16]")
    parser.add_argument("--train", type=int, default=None, help="training configurations per filter [10000]")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs [30]")
    parser.add_argument("--filter-size", type=int, default=4, help="filter size f (f^3 filter) [4]")
    parser.add_argument("--filters", type=int, default=4, help="filters, each on its own training set [4]")
    parser.add_argument("--mcrg", type=int, default=None, help="MCRG configurations per size [100000]")
    parser.add_argument("--family", choices=("block", "scale"), default="block",
                        help="tuned family: the filter plus alpha x block spin, or the filter times s [block]")
    parser.add_argument("--block-weights", default="0,0.25,0.5,0.75,1",
                        help="block weights alpha of the sector tuning, with 0 [0,0.25,0.5,0.75,1]")
    parser.add_argument("--scales", default="0.3,0.4,0.5,0.6,0.7,1",
                        help="scales s of the sector tuning with --family scale, with 1 [0.3,0.4,0.5,0.6,0.7,1]")
    parser.add_argument("--reuse-filters", type=Path, default=None,
                        help="take the final filters (and their seeds) of an earlier run's JSON instead of training")
    parser.add_argument("--seed", type=int, default=2025, help="master seed [2025]")
    parser.add_argument("--stem", default=None,
                        help="name of the result files [rsrg3d, rsrg3d_scale with --family scale, *_quick with --quick]")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results", help="output directory")
    args = parser.parse_args(argv)
    quick = dict(sizes="16", train_L=8, train=2000, epochs=2, mcrg=4000)
    full = dict(sizes="16,32", train_L=16, train=10_000, epochs=30, mcrg=100_000)
    for k, v in (quick if args.quick else full).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    sizes = [int(x) for x in args.sizes.split(",")]
    if args.family == "block":
        alphas = [float(a) for a in args.block_weights.split(",")]
        if 0.0 not in alphas or any(a < 0 for a in alphas) or len(set(alphas)) != len(alphas):
            parser.error("--block-weights must include 0 (the learned filter) and list distinct values >= 0")
    else:
        alphas = [float(a) for a in args.scales.split(",")]
        if 1.0 not in alphas or any(a <= 0 for a in alphas) or len(set(alphas)) != len(alphas):
            parser.error("--scales must include 1 (the learned filter) and list distinct values > 0")
    if args.filters < 1:
        parser.error("--filters must be >= 1")
    if any(L < 8 or L & (L - 1) for L in sizes):
        parser.error("--sizes must be powers of 2 >= 8")
    args.out.mkdir(parents=True, exist_ok=True)
    stem = ("rsrg3d_quick" if args.quick else "rsrg3d") + ("_scale" if args.family == "scale" else "")
    stem = args.stem or stem
    command = "python benchmarks/bench_rsrg3d.py " + " ".join(argv if argv is not None else sys.argv[1:])
    torch.set_num_threads(1)
    t_start = time.perf_counter()
    *seeds, = [int(ss.generate_state(1)[0]) for ss in np.random.SeedSequence(args.seed).spawn(args.filters + len(sizes))]
    train_seeds, mcrg_seeds = seeds[: args.filters], seeds[args.filters :]

    t0 = time.perf_counter()
    if args.reuse_filters is not None:
        earlier = json.loads(args.reuse_filters.read_text())
        train_seeds = earlier["training_seeds"]
        for key in ("train_L", "train", "epochs", "filter_size", "filters"):
            setattr(args, key, earlier[key])
        runs = [{"filters": np.array([f]), "history": earlier["training_history"], "seconds": 0.0,
                 "sampling_seconds": 0.0, "config": None} for f in earlier["final_filters"]]
    else:
        with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn")) as pool:
            runs = list(pool.map(train_filter, [args.train_L] * args.filters, [args.train] * args.filters,
                                 [args.epochs] * args.filters, [args.filter_size] * args.filters, train_seeds))
    training_seconds = time.perf_counter() - t0
    print(f"training: {args.filters} filters in {training_seconds:.0f} s", flush=True)
    filters = [run["filters"][-1] for run in runs]
    results = []
    for L, seed in zip(sizes, mcrg_seeds):
        results.append(mcrg_size(L, args.mcrg, seed, filters, alphas, args.family))
        r = results[-1]
        print(f"L = {L}: sampling {r['sampling_seconds']:.0f} s, MCRG {r['mcrg_seconds']:.0f} s", flush=True)
    total = time.perf_counter() - t_start

    shown = sorted({e for e in (1, 5) if e < args.epochs} | {args.epochs}) if args.reuse_filters is None else [args.epochs]
    snapshots = runs[0]["filters"][shown] if args.reuse_filters is None else runs[0]["filters"]
    filter_snapshots(snapshots, shown, args.out / f"{stem}_filter.png",
                     title=f"{args.filter_size}^3 RBM filter slice by slice, CD-3, {args.train} configurations of "
                     f"{args.train_L}^3 at K_c")
    figure(results, args.out / f"{stem}_exponents.png")
    figure_nc(results[-1], args.out / f"{stem}_couplings.png")
    out = {
        "command": command, "machine": describe(), "seed": args.seed, "sizes": sizes, "train_L": args.train_L,
        "train": args.train, "epochs": args.epochs, "filter_size": args.filter_size, "filters": args.filters,
        "family": args.family, "block_weights": alphas, "mcrg": args.mcrg,
        "reused_filters": None if args.reuse_filters is None else str(args.reuse_filters), "training_seeds": train_seeds, "reference": REF,
        "operators": {"even": [op.name for op in OPS.even], "odd": [op.name for op in OPS.odd]},
        "seconds": {"training": training_seconds,
                    "sampling_training_sets": sum(r["sampling_seconds"] for r in runs),
                    **{f"sampling_L{r['L']}": r["sampling_seconds"] for r in results},
                    **{f"mcrg_L{r['L']}": r["mcrg_seconds"] for r in results}, "total": total},
        "training_seconds_per_filter": [r["seconds"] for r in runs],
        "training_history": runs[0]["history"],
        "final_filters": [f.tolist() for f in filters],
        "results": [{"L": r["L"], "levels": r["levels"], "n": r["n"], "seed": r["seed"], "thin": r["thin"],
                     "majority": table(r["majority"]), "learned_average": table(r["learned_average"]),
                     "learned_per_filter": [table(x) for x in r["learned"]],
                     "sector_tuning_per_filter": [t.to_dict() for t in r["tunings"]],
                     "sector_tuned_average": None if r["tuned"] is None else table(r["tuned"]),
                     "per_filter_per_block_weight": [[table(x) for x in row] for row in r["per_alpha"]]}
                    for r in results],
        "figures": {"exponents": f"{stem}_exponents.png", "couplings": f"{stem}_couplings.png",
                    "filter": f"{stem}_filter.png"},
    }
    (args.out / f"{stem}.json").write_text(json.dumps(out, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(markdown(out, results))
    print((args.out / f"{stem}.md").read_text())


def markdown(o: dict, results: list[dict]) -> str:
    m, s = o["machine"], o["seconds"]
    ne, no = len(OPS.even), len(OPS.odd)
    lines = [
        "# 3D Ising model: MCRG with the majority rule, the learned RBM projector and the sector-tuned projector",
        "",
        f"Command: `{o['command']}` (method in its docstring).",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores; Python {m['python']}, numpy {m['numpy']}, torch {m['torch']}, "
        f"deeprg {m['deeprg']}; {m['platform']}; {m['date']}.",
        "",
        f"K_c = 0.221654626 (Ferrenberg, Xu & Landau 2018). {o['filters']} filters of {o['filter_size']}^3, each "
        f"trained on its own {o['train']} Wolff configurations of {o['train_L']}^3 ({o['epochs']} epochs of CD-3, "
        f"minibatch 10, Adam 1e-3 -> 1e-4); MCRG on {o['mcrg']} fresh Wolff configurations per size, "
        f"{BLOCKS} jackknife blocks; operators: even {', '.join(o['operators']['even'])}; odd "
        f"{', '.join(o['operators']['odd'])}. {'Block weights' if o['family'] == 'block' else 'Scales'} {', '.join(f'{a:g}' for a in o['block_weights'])}"
        f"{'' if o['reused_filters'] is None else ' (filters reused from ' + o['reused_filters'] + ', so no training time)'}. "
        f"Reference: y_t = {REF['y_t']:.5f}, y_h = {REF['y_h']:.5f} ({REF['source']}).",
        "",
        "## Wall time (seconds)",
        "",
        "| stage | seconds |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v:.0f} |" for k, v in s.items()]
    lines += ["", f"Whole pipeline: {s['total'] / 60:.1f} min (target for L = 32: under 2 hours).", ""]
    for r in results:
        lines += [f"## L = {r['L']} (N_r = 1..{r['levels']}; Wolff, {r['thin']} cluster flips between configurations)", "",
                  f"| N_r | N_c | y_t majority | y_t learned | y_t sector-tuned | y_h majority | y_h learned | y_h sector-tuned |",
                  "|---|---|---|---|---|---|---|---|"]
        tuned = r["tuned"]
        for nr in range(r["levels"]):
            for nc in range(ne):
                cells = [fmt(r["majority"].y_t[nr][nc]), fmt(r["learned_average"]["y_t"][nr][nc]),
                         fmt(tuned["y_t"][nr][nc]) if tuned else ""]
                if nc < no:
                    cells += [fmt(r["majority"].y_h[nr][nc]), fmt(r["learned_average"]["y_h"][nr][nc]),
                              fmt(tuned["y_h"][nr][nc]) if tuned else ""]
                else:
                    cells += ["", "", ""]
                lines.append(f"| {nr + 1} | {nc + 1} | " + " | ".join(cells) + " |")
        if r["tunings"]:
            p = "alpha" if o["family"] == "block" else "scale"
            lines += ["", f"Sector tuning per filter (chosen {p}; gap = y(N_r=2) - y(N_r=1) at N_c = all):", "",
                      f"| filter seed | {p} for y_t | gap | {p} for y_h | gap |", "|---|---|---|---|---|"]
            for seed, t in zip(o["training_seeds"], r["tunings"]):
                lines.append(f"| {seed} | {t.even.parameter:g}{'' if t.even.resolved else ' (not resolved)'} "
                             f"| {fmt(t.even.gaps[t.even.index])} | {t.odd.parameter:g}"
                             f"{'' if t.odd.resolved else ' (not resolved)'} | {fmt(t.odd.gaps[t.odd.index])} |")
        lines += ["", "y_t and y_h (N_c = all) of each filter, learned (alpha = 0, scale 1):", "",
                  "| filter seed | " + " | ".join(f"y_t N_r={k + 1}" for k in range(r["levels"])) + " | "
                  + " | ".join(f"y_h N_r={k + 1}" for k in range(r["levels"])) + " |",
                  "|---|" + "---|" * (2 * r["levels"])]
        for seed, x in zip(o["training_seeds"], r["learned"]):
            lines.append(f"| {seed} | " + " | ".join(fmt(x.y_t[k][ne - 1]) for k in range(r["levels"])) + " | "
                         + " | ".join(fmt(x.y_h[k][no - 1]) for k in range(r["levels"])) + " |")
        lines.append("")
    big = results[-1]
    maj_t = [big["majority"].y_t[k][ne - 1] for k in range(min(2, big["levels"]))]
    lrn_t = [big["learned_average"]["y_t"][k][ne - 1] for k in range(min(2, big["levels"]))]
    lrn_h = big["learned_average"]["y_h"][0][no - 1]
    lines += [f"## Targets (L = {big['L']}, N_c = all)", ""]
    lines.append(f"* learned y_t(N_r=1) = {fmt(lrn_t[0])} vs {REF['y_t']:.5f} +- 0.01: "
                 f"{'met' if abs(lrn_t[0].mean - REF['y_t']) <= 0.01 else 'not met'}.")
    for k in range(len(lrn_t)):
        closer = abs(lrn_t[k].mean - REF["y_t"]) < abs(maj_t[k].mean - REF["y_t"])
        lines.append(f"* N_r = {k + 1}: learned y_t {fmt(lrn_t[k])} {'closer' if closer else 'not closer'} than the "
                     f"majority rule's {fmt(maj_t[k])}.")
    lines.append(f"* learned y_h(N_r=1) = {fmt(lrn_h)} vs {REF['y_h']:.5f} +- 0.005: "
                 f"{'met' if abs(lrn_h.mean - REF['y_h']) <= 0.005 else 'not met'}.")
    if big["tuned"] is not None:
        th = big["tuned"]["y_h"][0][no - 1]
        tt = big["tuned"]["y_t"][0][ne - 1]
        lines.append(f"* sector-tuned: y_t(N_r=1) = {fmt(tt)}, y_h(N_r=1) = {fmt(th)} vs {REF['y_h']:.5f} +- 0.005: "
                     f"{'met' if abs(th.mean - REF['y_h']) <= 0.005 else 'not met'}.")
    lines += ["", f"Figures: [{o['figures']['exponents']}]({o['figures']['exponents']}) (exponents against N_r), "
              f"[{o['figures']['couplings']}]({o['figures']['couplings']}) (against N_c, L = {big['L']}), "
              f"[{o['figures']['filter']}]({o['figures']['filter']}) (the first filter, slice by slice)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
