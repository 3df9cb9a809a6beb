"""CORA benchmark: learning distributions from samples with the classical stochastic MERA.

Cases (each training run in a fresh process, one torch thread, so peak memory is its own):

* ``ising1d``: periodic Ising chain, K = 1, N = 64, 5000 training and 5000 held-out samples
  (Wolff, independent seeds). Targets: held-out 4-site window NLL within 0.5% of the exact window
  entropy (transfer matrix), nearest-neighbour correlation within 0.005 of tanh(1). Runs: joint
  (method 2) with windows 4 and 8, layer-by-layer (method 1, two passes), tree.
* ``ising2d``: 16 x 16 Ising model at K_c (4000 training, 2000 held-out samples): held-out window
  NLL and G(r) of 10000 generated samples against the held-out data, r = 0..8.
* ``digits8``, ``digits16``: scikit-learn's digits, thresholded at 8, 8 x 8 and upscaled 16 x 16 (80/20 split,
  seed 0): held-out window NLL (2 x 2), full NLL of the tree variant, sample images.

Every run records the seconds per epoch (one epoch = one full-batch step on all training data, or
one stage-epoch for layer-by-layer learning), the peak resident memory of its process and, for
reference, the resident memory before training (imports and data).

Run from the repository root:

    python benchmarks/bench_cora.py              # everything (about 7 minutes on 2 cores)
    python benchmarks/bench_cora.py --quick      # smoke test: first run of each case, tiny sizes,
                                                 # written to a temporary folder (about 40 s)
    python benchmarks/bench_cora.py --cases ising1d

Results go to benchmarks/results/cora.{json,md} and cora_*.png (``--out`` to change).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import resource
import shlex
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from machine import describe

from deeprg.cora.datasets import digits
from deeprg.cora.evaluate import evaluate
from deeprg.cora.learn import CoraTrainConfig, Trainer
from deeprg.cora.marginals import window_marginals
from deeprg.lattice import Lattice
from deeprg.mc import make_sampler
from deeprg.models.ising import K_C
from deeprg.plots import field_grid

RESULTS = Path(__file__).parent / "results"
EVAL_SAMPLES = 10000


def ising(shape, K, n, seed) -> np.ndarray:
    run = make_sampler("wolff", Lattice(shape), K, seed=seed, n_chains=2).run(n, thin="auto")
    return ((1 - run.spins_flat()) // 2).astype(np.int8)


def case_data(case: str, quick: bool) -> dict:
    """Training and held-out indices (and the metadata evaluate() uses) of a case."""
    if case == "ising1d":
        n = 500 if quick else 5000
        meta = {"model": "ising", "d": 1, "K": 1.0, "lattice_shape": [64]}
        return {"train": ising((64,), 1.0, n, 1), "test": ising((64,), 1.0, n, 2), "metadata": meta}
    if case == "ising2d":
        L = 8 if quick else 16
        return {"train": ising((L, L), K_C, 400 if quick else 4000, 1),
                "test": ising((L, L), K_C, 200 if quick else 2000, 2), "metadata": {}}
    size = 16 if case == "digits16" else 8
    pixels, _ = digits(size)
    order = np.random.default_rng(0).permutation(len(pixels))
    n_test = len(pixels) // 5
    train, test = pixels[order[n_test:]], pixels[order[:n_test]]
    if quick:
        train, test = train[:200], test[:100]
    return {"train": train, "test": test, "metadata": {}}


RUNS = {
    "ising1d": {
        "joint, window 4": dict(window=4, epochs=300),
        "joint, window 8": dict(window=8, epochs=300),
        "layerwise, window 4, 2 passes": dict(window=4, method="layerwise", passes=2, epochs=150),
        "tree, joint, window 4": dict(window=4, tree=True, epochs=300),
    },
    "ising2d": {
        "joint, window 2": dict(window=2, epochs=300),
        "joint, window 3": dict(window=3, epochs=200),
        "tree, joint, window 2": dict(window=2, tree=True, epochs=300),
    },
    "digits8": {
        "joint, window 2": dict(window=2, epochs=300),
        "joint, window 2, unshared": dict(window=2, shared=False, epochs=300),
        "tree, joint, window 2, unshared": dict(window=2, tree=True, shared=False, epochs=300),
        "tree, chi 8, joint, window 2, unshared": dict(chi=8, window=2, tree=True, shared=False, epochs=300),
    },
    "digits16": {
        "joint, window 2, unshared": dict(window=2, shared=False, epochs=300),
        "tree, joint, window 2, unshared": dict(window=2, tree=True, shared=False, epochs=300),
    },
}
#: The window of the held-out NLL reported for every run of a case (comparable across runs).
EVAL_WINDOW = {"ising1d": 4, "ising2d": 2, "digits8": 2, "digits16": 2}


def train_and_evaluate(case: str, name: str, quick: bool, out: str) -> dict:
    """One run (in its own process): train, evaluate, draw samples."""
    torch.set_num_threads(1)
    data = case_data(case, quick)
    baseline_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # imports and data
    settings = {"chi": 2, "seed": 0, **RUNS[case][name]}
    if quick:
        settings["epochs"] = max(2, settings["epochs"] // 20)
    cfg = CoraTrainConfig(lattice_shape=list(data["train"].shape[1:]),
                          encoding="spin" if case.startswith("ising") else "binary", **settings)
    trainer = Trainer(cfg, torch.as_tensor(data["train"]))
    trainer.train()
    gen = torch.Generator().manual_seed(1)
    test = torch.as_tensor(data["test"]).long()
    summary = evaluate(trainer.net, test, EVAL_WINDOW[case], EVAL_SAMPLES // (10 if quick else 1), gen,
                       data["metadata"])
    if cfg.window != EVAL_WINDOW[case]:
        summary["window_nll_per_site_training_window"] = evaluate(trainer.net, test, cfg.window, 2, gen)[
            "window_nll_per_site"]
    p2 = window_marginals(trainer.net, 2).detach()
    if trainer.net.d == 1:
        summary["nn_correlation_exact_model"] = float((p2 @ p2.new_tensor([1.0, -1.0, -1.0, 1.0])).mean())
    samples = trainer.net.sample(64, torch.Generator().manual_seed(2)).numpy()
    if trainer.net.d == 2:
        stem = f"cora_{case}_{name.replace(', ', '_').replace(' ', '')}"
        field_grid(2.0 * samples - 1.0, Path(out) / f"{stem}_samples.png", title=f"CORA {case}: {name}",
                   cmap="gray_r" if case.startswith("digits") else "RdBu_r")
    return {
        "settings": cfg.to_dict(),
        "n_train": int(data["train"].shape[0]),
        "n_test": int(data["test"].shape[0]),
        "epochs": len(trainer.history),
        "train_window_nll_per_site": trainer.history[-1]["loss"],
        "train_seconds": trainer.wall_seconds,
        "seconds_per_epoch": trainer.wall_seconds / len(trainer.history),
        "n_parameters": sum(p.numel() for p in trainer.net.parameters()),
        "peak_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "baseline_memory_mb": baseline_mb,
        **summary,
    }


def run_in_process(case: str, name: str, quick: bool, out: Path) -> dict:
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(train_and_evaluate, case, name, quick, str(out)).result()


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [
        "# CORA benchmark",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores; torch {m['torch']}, deeprg {m['deeprg']}; {m['date']}.",
        f"Command: `{results['command']}`; one torch thread per run; chi = 2 unless stated, seed 0, float64, Adam "
        "(lr 0.05 -> 5e-4, cosine), full batch, copy initialization.",
        "",
    ]
    for case, runs in results["cases"].items():
        w = EVAL_WINDOW[case]
        lines += [f"## {case}", ""]
        any_run = next(iter(runs.values()))
        lines.append(f"{any_run['n_train']} training and {any_run['n_test']} held-out configurations of "
                     f"{'x'.join(map(str, any_run['settings']['lattice_shape']))}.")
        if case == "ising1d":
            exact = any_run["exact_window_entropy_per_site"]
            lines.append(f"Exact 4-site window entropy per site {exact:.6f}; tanh(1) = {math.tanh(1):.6f}.")
        lines += ["", f"| run | held-out NLL/site (w={w}) | "
                  + ("rel. to exact | C(1) model (exact) | C(1) data | " if case == "ising1d" else "")
                  + ("full NLL/config | " if case != "ising1d" else "")
                  + "epochs | s/epoch | peak MB (before training) |",
                  "|" + " --- |" * (8 if case == "ising1d" else 6)]
        for name, r in runs.items():
            nll = r["window_nll_per_site"]
            row = f"| {name} | {nll['mean']:.5f}({nll['error'] * 1e5:.0f}) | "
            if case == "ising1d":
                rel = nll["mean"] / r["exact_window_entropy_per_site"] - 1
                row += f"{rel:+.2%} | {r['nn_correlation_exact_model']:.4f} | {r['correlation'][1]['data']:.4f} | "
            else:
                full = r.get("full_nll")
                row += (f"{full['mean']:.3f}({full['error'] * 1e3:.0f}) | " if full else "- | ")
            memory = f"{r['peak_memory_mb']:.0f} ({r['baseline_memory_mb']:.0f})"
            row += f"{r['epochs']} | {r['seconds_per_epoch']:.4f} | {memory} |"
            lines.append(row)
        lines += ["", f"G(r) = <s_i s_(i+r)> of {any_run['n_samples']} model samples vs held-out data "
                  f"(figure: cora_{case}_correlation.png):", "",
                  "| r | data | " + " | ".join(runs) + " |", "|" + " --- |" * (len(runs) + 2)]
        r_max = min(len(any_run["correlation"]), 9 if case != "ising1d" else 17)
        for r in range(1, r_max):
            lines.append(f"| {r} | {any_run['correlation'][r]['data']:.4f} | "
                         + " | ".join(f"{run['correlation'][r]['model']:.4f}" for run in runs.values()) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"


def correlation_figure(case: str, runs: dict, out: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    any_run = next(iter(runs.values()))
    r = [c["r"] for c in any_run["correlation"]]
    data = any_run["correlation"]
    ax.errorbar(r, [c["data"] for c in data], yerr=[c["data_error"] for c in data], fmt="ko-", ms=3, lw=1.2,
                capsize=2, label="held-out data")
    for name, run in runs.items():
        ax.plot(r, [c["model"] for c in run["correlation"]], "s--", ms=3, lw=1, label=name)
    ax.set_xlabel("distance r")
    ax.set_ylabel("G(r)")
    ax.set_title(f"CORA, {case}: two-point function of generated samples", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / f"cora_{case}_correlation.png", dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    parser.add_argument("--cases", nargs="+", choices=tuple(RUNS), default=list(RUNS))
    parser.add_argument("--out", help="output folder [benchmarks/results; a temporary folder with --quick]")
    args = parser.parse_args()
    out = Path(args.out) if args.out else (Path(tempfile.mkdtemp(prefix="cora-bench-")) if args.quick else RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    results = {"machine": describe(), "command": "python " + shlex.join(sys.argv), "quick": args.quick, "cases": {}}
    for case in args.cases:
        results["cases"][case] = {}
        for name in list(RUNS[case])[: 1 if args.quick else None]:
            t0 = time.perf_counter()
            r = run_in_process(case, name, args.quick, out)
            results["cases"][case][name] = r
            print(f"{case:9s} {name:34s} NLL/site {r['window_nll_per_site']['mean']:.5f}  "
                  f"{r['seconds_per_epoch'] * 1e3:7.1f} ms/epoch  {r['peak_memory_mb']:5.0f} MB  "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
        correlation_figure(case, results["cases"][case], out)
    stem = "cora"
    (out / f"{stem}.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / f"{stem}.md").write_text(markdown(results))
    print(f"wrote {out / (stem + '.json')} and {out / (stem + '.md')}")


if __name__ == "__main__":
    main()
