"""Chung & Kao Table 1: MCRG y_t (and y_h) of the trained RBM projector and of the majority rule.

The whole pipeline on the 32 x 32 periodic Ising model at K_c, timed stage by stage:

1. **training sets**: one per filter, each ``--train`` configurations (default 10^4, the seed's)
   from its own Wolff run (2 chains, ``thin="auto"``: 2 tau_int of the energy);
2. **training**: ``--filters`` 8 x 8 filters (default 4), each on its own training set and with its
   own initialization seed, by CD-3, Adam, the seed's square-root decay of the learning rate
   (1e-3 -> 1e-4 at epoch 25, polynomial form, see deeprg.rsrg.train), minibatch 10, ``--epochs``
   epochs (default 50), one torch thread each, two at a time (one per core). Neither the 10^4
   training configurations nor CD training pin the filter down: single filters scatter by a few
   thousandths in y_t(N_r = 1, N_c = 7) (docs/rsrg.md), so the RBM column is the average over the
   filters, with an error that adds their spread (``sd / sqrt(n)``) to the MCRG error;
3. **MCRG set and MCRG**: ``--mcrg`` fresh Wolff configurations (default 10^6, the seed's),
   streamed in chunks straight into the MCRG accumulators of both transformations (never stored),
   N_r = 1, 2, N_c = 1..7 (even) and 1..4 (odd), 32 jackknife blocks, every filter and the
   majority rule on the same configurations;
4. **sector tuning** (issue 14; Ron, Brandt & Swendsen 2017): every filter plus ``alpha`` times the
   block's total spin, for each ``alpha`` of ``--block-weights`` (default 0, 0.25, 0.5, 0.75, 1), on
   the same MCRG set; per filter, ``alpha`` is chosen separately for y_t and y_h as the one whose
   exponent (N_c = all) changes least from N_r = 1 to 2 (``deeprg.rsrg.tuning``: no knowledge of
   the exact answer); the sector-tuned column averages the filters at their chosen weights;
5. **exponent vs epoch** (the seed's Fig. 2): y_t(N_r = 1, N_c = 7) of the first filter after every
   epoch on the first ``--fig2`` configurations of the MCRG set (default 5 x 10^4, the seed's).

Run from the repository root on a quiet machine (about 20 minutes on 2 cores; 10 with
``--block-weights 0``)::

    python benchmarks/bench_rsrg.py               # writes benchmarks/results/rsrg.{json,md} and figures
    python benchmarks/bench_rsrg.py --quick --out /tmp/rsrg-smoke    # ~1 minute smoke run

The published columns come from tests/data/chung_kao_2020_table1.csv.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from machine import describe  # noqa: E402

from deeprg import Lattice  # noqa: E402
from deeprg.mc import make_sampler  # noqa: E402
from deeprg.mc.stats import Estimate, format_value_error  # noqa: E402
from deeprg.models.ising import K_C  # noqa: E402
from deeprg.plots import exponent_vs_epoch, filter_snapshots  # noqa: E402
from deeprg.rsrg.mcrg import MCRGResult, mcrg, run_mcrg  # noqa: E402
from deeprg.rsrg.train import RBMTrainConfig, Trainer  # noqa: E402
from deeprg.rsrg.tuning import tune_sectors  # noqa: E402
from deeprg.rsrg.transforms import MajorityRule, RBMProjector  # noqa: E402

TABLE = Path(__file__).resolve().parent.parent / "tests" / "data" / "chung_kao_2020_table1.csv"
L = 32
LEVELS = 2
BLOCKS = 32


def published() -> dict[str, dict[tuple[int, int], str]]:
    with TABLE.open() as fh:
        rows = list(csv.DictReader(line for line in fh if not line.startswith("#")))
    return {col: {(int(r["N_r"]), int(r["N_c"])): r[col] for r in rows} for col in ("optimal_rbm", "majority_rule")}


def sample(n: int, seed: int, chunk: int):
    """Wolff chunks ``(m, L, L)`` int8 and the sampling seconds of each."""
    sampler = make_sampler("wolff", Lattice.square(L), K_C, seed=seed, n_chains=2)
    for run in sampler.stream(n, thin="auto", chunk=chunk):
        yield run.spins_flat(), run.seconds, run.thin


def train_filter(n_train: int, epochs: int, seed: int) -> dict:
    """One training set and one CD-3 training run on it (in a worker process): filter after every
    epoch, history, sampling and training seconds."""
    t0 = time.perf_counter()
    train = np.concatenate([s for s, _, _ in sample(n_train, seed, chunk=n_train // 2)])
    sampling = time.perf_counter() - t0
    return train_on(train, RBMTrainConfig(epochs=epochs, seed=seed, threads=1), sampling)


def train_on(train: np.ndarray, cfg: RBMTrainConfig, sampling_seconds: float) -> dict:
    """Train one filter on ``train`` with ``cfg``, printing each epoch: the filter after every
    epoch, the history, the training seconds and the given sampling seconds."""
    trainer = Trainer(cfg, train)
    t0 = time.perf_counter()
    trainer.train(on_record=lambda rec: (r := rec["epoch"]) and print(
        f"  seed {cfg.seed} epoch {r['epoch']:3d}  cd_gap {r['cd_gap']:9.4f}  max|w| {r['filter_max_abs']:.3f}  "
        f"{r['seconds']:.0f} s", flush=True))
    return {"config": cfg.to_dict(), "filters": trainer.filter_history, "history": trainer.history,
            "seconds": time.perf_counter() - t0, "sampling_seconds": sampling_seconds}


def average(results: list[MCRGResult]) -> dict[str, list[list[Estimate]]]:
    """Exponents averaged over filters; error^2 = (spread of the filters)^2 / n + mean MCRG error^2
    (the MCRG errors of filters measured on the same configurations are correlated, so they are not
    divided by n)."""
    out = {}
    for key in ("y_t", "y_h"):
        table = []
        for r_row in zip(*(getattr(r, key) for r in results)):
            row = []
            for cells in zip(*r_row):
                means = np.array([c.mean for c in cells])
                errors = np.array([c.error for c in cells])
                spread = means.std(ddof=1) if len(means) > 1 else 0.0
                error = math.sqrt(spread**2 / len(means) + np.mean(errors**2))
                row.append(Estimate(means.mean(), error, math.nan, math.nan, cells[0].n_samples))
            table.append(row)
        out[key] = table
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 2000 / 3 epochs / 20000 / 5000")
    parser.add_argument("--train", type=int, help="training configurations [10000]")
    parser.add_argument("--epochs", type=int, help="training epochs [50]")
    parser.add_argument("--mcrg", type=int, help="MCRG configurations [1000000]")
    parser.add_argument("--fig2", type=int, help="configurations for y_t vs epoch, 0 to skip [50000]")
    parser.add_argument("--filters", type=int, default=4, help="filters, each on its own training set [4]")
    parser.add_argument("--seed", type=int, default=2020,
                        help="master seed: SeedSequence(seed).spawn gives the MCRG set's and each filter's seed")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of the RBM projector in MCRG [1]; training always uses 1 (its "
                             "10 x 1024 x 256 products gain nothing from more, and lose much on a busy machine)")
    parser.add_argument("--block-weights", default="0,0.25,0.5,0.75,1",
                        help="block weights alpha of the sector tuning, comma-separated; '0' to skip it [0,0.25,0.5,0.75,1]")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results", help="output directory")
    args = parser.parse_args(argv)
    if args.filters < 1:
        parser.error("--filters must be >= 1")
    alphas = [float(a) for a in args.block_weights.split(",")]
    if alphas[0] != 0 or any(a < 0 for a in alphas) or len(set(alphas)) != len(alphas):
        parser.error("--block-weights must start with 0 (the learned filter) and list distinct values >= 0")
    quick = dict(train=2000, epochs=3, mcrg=20000, fig2=5000)
    full = dict(train=10_000, epochs=50, mcrg=1_000_000, fig2=50_000)
    sizes = {k: getattr(args, k) if getattr(args, k) is not None else (quick if args.quick else full)[k] for k in full}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "rsrg_quick" if args.quick else "rsrg"
    command = "python benchmarks/bench_rsrg.py " + " ".join(argv if argv is not None else sys.argv[1:])
    t_start = time.perf_counter()
    seconds: dict[str, float] = {}

    mcrg_seed, *seeds = [int(ss.generate_state(1)[0]) for ss in np.random.SeedSequence(args.seed).spawn(args.filters + 1)]

    # 1-2. training sets and training, two filters at a time
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn")) as pool:
        runs = list(pool.map(train_filter, [sizes["train"]] * len(seeds), [sizes["epochs"]] * len(seeds), seeds))
    seconds["sampling_and_training"] = time.perf_counter() - t0
    seconds["sampling_training_sets"] = sum(run["sampling_seconds"] for run in runs)
    cfg = runs[0]["config"]
    filters = runs[0]["filters"]
    print(f"training: {len(seeds)} filters x {sizes['epochs']} epochs (with their training sets) in {seconds['sampling_and_training']:.1f} s", flush=True)

    # 3. MCRG set, streamed into every transformation
    torch.set_num_threads(args.threads)
    # per filter: alpha = 0 (the learned projector) first, then the other block weights
    transforms = [RBMProjector(run["filters"][-1], block_weight=a) for run in runs for a in alphas] + [MajorityRule()]
    kept, n_kept, thin = [], 0, None
    sampling = [0.0]

    def chunks():
        nonlocal n_kept, thin
        for spins, s, thin in sample(sizes["mcrg"], mcrg_seed, chunk=4096):
            sampling[0] += s
            if n_kept < sizes["fig2"]:
                kept.append(spins[: sizes["fig2"] - n_kept])
                n_kept += len(kept[-1])
            yield spins

    t0 = time.perf_counter()
    *per_transform, majority = run_mcrg(chunks(), (L, L), transforms, sizes["mcrg"], LEVELS, seed=args.seed,
                                        n_blocks=BLOCKS)
    per_alpha = [per_transform[i * len(alphas) : (i + 1) * len(alphas)] for i in range(len(runs))]
    per_filter = [results[0] for results in per_alpha]
    rbm = average(per_filter)
    tunings = [tune_sectors(alphas, results) for results in per_alpha] if len(alphas) > 1 else []
    tuned = None
    if tunings:
        tuned = average([dataclasses.replace(per_alpha[i][t.even.index], y_h=t.y_h) for i, t in enumerate(tunings)])
    seconds["sampling_mcrg_set"] = sampling[0]
    seconds["mcrg"] = time.perf_counter() - t0 - sampling[0]
    print(f"MCRG: {sizes['mcrg']} configurations; sampling {sampling[0]:.1f} s, MCRG {seconds['mcrg']:.1f} s", flush=True)
    seconds["pipeline_total"] = time.perf_counter() - t_start

    # 4. exponent vs epoch on the first fig2 configurations (not part of the Table 1 pipeline)
    fig2 = None
    if sizes["fig2"]:
        t0 = time.perf_counter()
        subset = np.concatenate(kept)
        per_epoch = mcrg(subset, [RBMProjector(f) for f in filters[1:]] + [MajorityRule()], levels=1,
                         seed=args.seed, n_blocks=BLOCKS)
        seconds["exponent_vs_epoch"] = time.perf_counter() - t0
        fig2 = {"n_configurations": per_epoch[0].n_configurations, "epochs": list(range(1, len(filters))),
                "y_t": [r.y_t[0][6].to_dict() for r in per_epoch[:-1]], "majority_y_t": per_epoch[-1].y_t[0][6].to_dict()}
        maj = per_epoch[-1].y_t[0][6]
        exponent_vs_epoch(np.array(fig2["epochs"]), np.array([e["mean"] for e in fig2["y_t"]]),
                          np.array([e["error"] for e in fig2["y_t"]]), args.out / f"{stem}_exponent_vs_epoch.png",
                          {f"majority rule {maj}": maj.mean, "exact": 1.0},
                          title=f"32x32 at K_c, N_r = 1, N_c = 7, {fig2['n_configurations']} configurations")

    shown = sorted({e for e in (1, 3, 5) if e < len(filters) - 1} | {len(filters) - 1})
    filter_snapshots(filters[shown], shown, args.out / f"{stem}_filters.png",
                     title=f"8x8 RBM filter, CD-3, {sizes['train']} configurations of 32x32 at K_c")
    result = {
        "command": command,
        "machine": describe(),
        "sizes": sizes,
        "thin_mcrg_set": thin,
        "seed": args.seed,
        "mcrg_set_seed": mcrg_seed,
        "torch_threads_mcrg": args.threads,
        "jackknife_blocks": BLOCKS,
        "seconds": seconds,
        "config": cfg,
        "training_seeds": seeds,
        "final_filters": [run["filters"][-1].tolist() for run in runs],
        "training_seconds_per_filter": [run["seconds"] for run in runs],
        "training_history": runs[0]["history"],
        "rbm_per_filter": [r.to_dict() for r in per_filter],
        "rbm_average": {k: [[{"mean": e.mean, "error": e.error} for e in row] for row in v] for k, v in rbm.items()},
        "block_weights": alphas,
        "sector_tuning_per_filter": [t.to_dict() for t in tunings],
        "rbm_per_filter_per_block_weight": [[r.to_dict() for r in results] for results in per_alpha],
        "sector_tuned_average": None if tuned is None else
        {k: [[{"mean": e.mean, "error": e.error} for e in row] for row in v] for k, v in tuned.items()},
        "majority": majority.to_dict(),
        "exponent_vs_epoch": fig2,
        "figures": {"filters": f"{stem}_filters.png", "exponent_vs_epoch": f"{stem}_exponent_vs_epoch.png"},
        "published": {k: {f"{a},{b}": v for (a, b), v in col.items()} for k, col in published().items()},
    }
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(markdown(result, rbm, per_filter, majority, tunings, tuned))
    print((args.out / f"{stem}.md").read_text())


def markdown(r: dict, rbm: dict, per_filter: list[MCRGResult], majority: MCRGResult, tunings: list,
             tuned: dict | None) -> str:
    m, s, n = r["machine"], r["seconds"], r["sizes"]
    pub = published()

    def fmt(e) -> str:
        return format_value_error(e.mean, e.error)

    lines = [
        "# Optimal real-space RG with an RBM projector: Chung & Kao Table 1 (deeprg.rsrg)",
        "",
        f"Command: `{r['command']}` (see its docstring for the method).",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores; Python {m['python']}, numpy {m['numpy']}, numba {m['numba']}, "
        f"torch {m['torch']}, deeprg {m['deeprg']}; {m['platform']}; {m['date']}.",
        "",
        f"32x32 periodic Ising model at K_c. {len(per_filter)} filters, each trained on its own set of "
        f"{n['train']} Wolff configurations (seeds {', '.join(map(str, r['training_seeds']))} for the set and "
        f"the initialization), {n['epochs']} epochs of CD-3 each (8x8 filter, minibatch 10, Adam 1e-3 -> 1e-4 at epoch 25, {r['config']['schedule']} decay); MCRG set {n['mcrg']} fresh Wolff "
        f"configurations ({r['thin_mcrg_set']} cluster flips apart, 2 chains), {r['jackknife_blocks']} jackknife "
        f"blocks; master seed {r['seed']}. Published: Chung & Kao (10^4 training, 10^6 MCRG configurations).",
        "",
        "## Wall time (seconds)",
        "",
        "| training sets and training (all filters, 2 at a time) | of which sampling | sampling MCRG set | MCRG (all transforms) | whole pipeline |",
        "|---|---|---|---|---|",
        f"| {s['sampling_and_training']:.1f} | {s['sampling_training_sets']:.1f} | {s['sampling_mcrg_set']:.1f} | {s['mcrg']:.1f} "
        f"| {s['pipeline_total']:.1f} ({s['pipeline_total'] / 60:.1f} min) |",
        "",
        "## y_t (exact 1)",
        "",
        "| N_r | N_c | RBM projector (ours, mean of filters) | optimal RBM (published) | majority rule (ours) | majority rule (published) |",
        "|---|---|---|---|---|---|",
    ]
    for nr in range(1, LEVELS + 1):
        for nc in range(1, 8):
            lines.append(f"| {nr} | {nc} | {fmt(rbm['y_t'][nr - 1][nc - 1])} | {pub['optimal_rbm'][nr, nc]} "
                         f"| {fmt(majority.y_t[nr - 1][nc - 1])} | {pub['majority_rule'][nr, nc]} |")
    lines += ["", "## y_h (exact 15/8 = 1.875; not published)", "",
              "| N_r | N_c | RBM projector | majority rule |", "|---|---|---|---|"]
    for nr in range(1, LEVELS + 1):
        for nc in range(1, 5):
            lines.append(f"| {nr} | {nc} | {fmt(rbm['y_h'][nr - 1][nc - 1])} | {fmt(majority.y_h[nr - 1][nc - 1])} |")
    lines += ["", "y_t(N_r, N_c = 7) of each filter (same MCRG configurations):", "",
              "| seed (training set, initialization) | N_r = 1 | N_r = 2 | training (s) |", "|---|---|---|---|"]
    for seed, one, sec in zip(r["training_seeds"], per_filter, r["training_seconds_per_filter"]):
        lines.append(f"| {seed} | {fmt(one.y_t[0][6])} | {fmt(one.y_t[1][6])} | {sec:.0f} |")
    maj, opt = majority.y_t[0][6], rbm["y_t"][0][6]
    if tuned is not None:
        lines += ["", "## Sector-tuned projector (learned filter + alpha x block spin; issue 14)", "",
                  f"Block weights alpha = {', '.join(f'{a:g}' for a in r['block_weights'])}; per filter, alpha is chosen "
                  "separately for y_t and y_h as the one whose exponent at N_c = all changes least from N_r = 1 to "
                  "N_r = 2 (gap = y(N_r=2) - y(N_r=1); the criterion of Ron, Brandt & Swendsen 2017, no exact value used).",
                  "", "| seed | alpha for y_t | gap y_t | alpha for y_h | gap y_h |", "|---|---|---|---|---|"]
        for seed, t in zip(r["training_seeds"], tunings):
            ge, go = t.even.gaps[t.even.index], t.odd.gaps[t.odd.index]
            lines.append(f"| {seed} | {t.even.parameter:g}{'' if t.even.resolved else ' (not resolved)'} | {fmt(ge)} "
                         f"| {t.odd.parameter:g}{'' if t.odd.resolved else ' (not resolved)'} | {fmt(go)} |")
        lines += ["", "| N_r | N_c | y_t sector-tuned | y_t learned | y_h sector-tuned | y_h learned | y_h majority |",
                  "|---|---|---|---|---|---|---|"]
        for nr in range(1, LEVELS + 1):
            for nc in range(1, 8):
                yh = (f"{fmt(tuned['y_h'][nr - 1][nc - 1])} | {fmt(rbm['y_h'][nr - 1][nc - 1])} | "
                      f"{fmt(majority.y_h[nr - 1][nc - 1])}") if nc <= 4 else " | | "
                lines.append(f"| {nr} | {nc} | {fmt(tuned['y_t'][nr - 1][nc - 1])} | {fmt(rbm['y_t'][nr - 1][nc - 1])} | {yh} |")
        tt, th = tuned["y_t"][0][6], tuned["y_h"][0][3]
        lines += ["", f"* sector-tuned y_h(N_r=1, N_c=4) = {fmt(th)} vs 1.875 +- 0.003: "
                  f"{'met' if abs(th.mean - 1.875) <= 0.003 else 'not met'}; y_t(N_r=1, N_c=7) = {fmt(tt)} vs 1 +- 0.003: "
                  f"{'met' if abs(tt.mean - 1.0) <= 0.003 else 'not met'} (issue 14's 2D target)."]
    lines += [
        "",
        "## Targets",
        "",
        f"* majority rule y_t(N_r=1, N_c=7) = {fmt(maj)} vs 0.967(3): difference {maj.mean - 0.967:+.4f} "
        f"({'within' if abs(maj.mean - 0.967) <= math.hypot(maj.error, 0.003) else 'outside'} the combined error).",
        f"* RBM projector y_t(N_r=1, N_c=7), mean of {len(per_filter)} filters = {fmt(opt)} vs 1.000 +- 0.003: "
        f"{'met' if abs(opt.mean - 1.0) <= 0.003 else 'not met'} (published 1.0001(11)).",
        f"* whole pipeline {s['pipeline_total'] / 60:.1f} min vs < 30 min: "
        f"{'met' if s['pipeline_total'] < 1800 else 'not met'}.",
    ]
    if r["exponent_vs_epoch"]:
        f2 = r["exponent_vs_epoch"]
        lines += ["", f"y_t(N_r=1, N_c=7) after each epoch on {f2['n_configurations']} configurations (Fig. 2): "
                  f"[{r['figures']['exponent_vs_epoch']}]({r['figures']['exponent_vs_epoch']}); last epoch "
                  f"{format_value_error(f2['y_t'][-1]['mean'], f2['y_t'][-1]['error'])}, majority rule "
                  f"{format_value_error(f2['majority_y_t']['mean'], f2['majority_y_t']['error'])} "
                  f"({s['exponent_vs_epoch']:.0f} s, not in the pipeline time)."]
    lines += ["", f"Trained filter (training seed {r['training_seeds'][0]}) after each shown epoch (Fig. 1): "
              f"[{r['figures']['filters']}]({r['figures']['filters']})."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
