"""Lattice-size scaling of flow training on the relaxed Ising target: FFT against dense target.

For each 2D lattice L x L (``--sizes``, default 16 32 64 128) and each method of
:class:`deeprg.models.relaxed.RelaxedIsing` (``fft``: the circulant operator, ``O(N)`` memory;
``dense``: the ``N x N`` precision matrix, skipped with "does not fit" when ``8 N^2`` bytes exceed
``--dense-limit-gb``, 2 GB by default) and each way of the C heap (``--allocator``: ``kept``, freed
pages kept for reuse by :func:`deeprg.memory.keep_freed_memory` as the ``deeprg`` command line
does; ``default``, glibc's default, which maps every block above 32 MB afresh), one fresh process
(spawned, one torch thread unless ``--threads``) measures:

* the target alone: construction time, and the time of ``log_prob_unnormalized`` + backward on a
  ``(batch, L, L)`` float32 field (median over repeats after a warm-up), and the peak resident
  memory of the process after that stage (imports included; ``ru_maxrss``);
* flow training: the default architecture of :class:`deeprg.flows.train.FlowTrainConfig` (MERA,
  4 couplings, hidden 32 32, site and linear maps, symmetrized, float32) at ``--batch`` (64) with
  that target, through :class:`deeprg.flows.train.Trainer`: ``--warmup`` steps, then the median
  and mean time of ``--steps`` timed steps, their minor page faults and kernel CPU time per step
  (``getrusage``), and the peak resident memory of the process.

The exponent of time against ``N = L^2`` (least squares of ``ln t`` on ``ln N``) is fitted per
method and allocator over the sizes it ran. Run from the repository root:

    python benchmarks/bench_lattice_scaling.py            # L = 16..128, both methods (tens of minutes)
    python benchmarks/bench_lattice_scaling.py --quick    # smoke run: L = 8, 16, one step, temporary folder

Results go to benchmarks/results/lattice_scaling.{json,md} (``--out`` to change; a temporary
folder with ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import resource
import shlex
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from machine import describe

RESULTS = Path(__file__).parent / "results"
METHODS = ("fft", "dense")
ALLOCATORS = ("kept", "default")


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(L: int, method: str, allocator: str, batch: int, warmup: int, steps: int, repeats: int,
            threads: int) -> dict:
    """One (size, method, allocator) in its own process: the target alone, then flow training steps."""
    import torch

    from deeprg.flows.train import FlowTrainConfig, Trainer
    from deeprg.lattice import Lattice
    from deeprg.memory import keep_freed_memory
    from deeprg.models.relaxed import RelaxedIsing

    if allocator == "kept" and not keep_freed_memory():
        raise SystemExit("--allocator kept needs glibc")
    torch.set_flush_denormal(True)  # as the deeprg command does

    torch.set_num_threads(threads)
    baseline = peak_mb()
    cfg = FlowTrainConfig(L=L, batch=batch, steps=warmup + steps, threads=threads)
    t0 = time.perf_counter()
    target = RelaxedIsing(Lattice.square(L), cfg.beta, min_eigenvalue=cfg.min_eigenvalue, method=method)
    build_seconds = time.perf_counter() - t0
    x = torch.randn((batch, L, L), generator=torch.Generator().manual_seed(0))
    times = []
    for i in range(1 + repeats):  # the first call converts the buffers to float32: not timed
        xi = x.clone().requires_grad_(True)
        t0 = time.perf_counter()
        target.log_prob_unnormalized(xi).sum().backward()
        if i:
            times.append(time.perf_counter() - t0)
    target_peak = peak_mb()
    trainer = Trainer(cfg, target=target)
    for _ in range(warmup):
        trainer.step()
    step_times = []
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(steps):
        t0 = time.perf_counter()
        record = trainer.step()
        step_times.append(time.perf_counter() - t0)
    usage1 = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "L": L, "n_sites": L * L, "method": method, "allocator": allocator, "batch": batch, "threads": threads,
        "target_build_seconds": build_seconds,
        "target_seconds": statistics.median(times),
        "target_peak_memory_mb": target_peak,
        "step_seconds": statistics.median(step_times),
        "step_seconds_mean": statistics.fmean(step_times),
        "step_seconds_all": step_times,
        "page_faults_per_step": (usage1.ru_minflt - usage0.ru_minflt) / steps,
        "kernel_seconds_per_step": (usage1.ru_stime - usage0.ru_stime) / steps,
        "last_loss": record["loss"],
        "peak_memory_mb": peak_mb(),
        "baseline_memory_mb": baseline,
        "memory_estimate_mb": cfg.memory_estimate()[0] / 2**20,
    }


def run_in_process(*args) -> dict:
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(measure, *args).result()


def exponent(rows: list[dict], key: str) -> float | None:
    """Slope of ``ln rows[key]`` against ``ln N`` (least squares), ``None`` with fewer than two sizes."""
    pts = [(math.log(r["n_sites"]), math.log(r[key])) for r in rows if r.get(key)]
    if len(pts) < 2:
        return None
    x, y = np.array(pts).T
    return float(np.polyfit(x, y, 1)[0])


def markdown(results: dict) -> str:
    m = results["machine"]
    s = results["settings"]
    lines = [
        "# Lattice-size scaling: flow training on the FFT and dense relaxed Ising targets",
        "",
        f"Machine: {m['cpu']}, {m['cores']} logical cores; torch {m['torch']}, deeprg {m['deeprg']}; {m['date']}.",
        f"Command: `{results['command']}`; {s['threads']} torch thread(s), one fresh process per (L, method, "
        "allocator). Allocator: `kept`, freed pages kept for reuse (`deeprg.memory.keep_freed_memory`, as the "
        "`deeprg` command does); `default`, glibc's default (blocks above 32 MB mapped afresh at each allocation).",
        f"Default flow of `FlowTrainConfig` (float32), batch {s['batch']}, {s['warmup']} warm-up step(s) then "
        f"{s['steps']} timed step(s) (median); target alone: log_prob + backward on ({s['batch']}, L, L) float32, "
        f"median of {s['repeats']}. Peak memory: the process's maxrss (imports included) after the target stage "
        f"and at the end; estimate: `FlowTrainConfig.memory_estimate()` (FFT target, without the imports). "
        f"Dense is skipped when 8 N^2 bytes > {s['dense_limit_gb']} GB.",
        "",
        "| L | N | method | allocator | target build (s) | target log_prob+grad (ms) | target peak MB | step (s) | "
        "page faults / step | kernel s / step | peak MB | estimate MB |",
        "|" + " --- |" * 12,
    ]
    for r in results["rows"]:
        if r.get("skipped"):
            lines.append(f"| {r['L']} | {r['n_sites']} | {r['method']} | {r['allocator']} | {r['skipped']} | | | | | | | |")
            continue
        lines.append(f"| {r['L']} | {r['n_sites']} | {r['method']} | {r['allocator']} | {r['target_build_seconds']:.3f} | "
                     f"{r['target_seconds'] * 1e3:.2f} | {r['target_peak_memory_mb']:.0f} | {r['step_seconds']:.3f} | "
                     f"{r['page_faults_per_step']:.0f} | {r['kernel_seconds_per_step']:.3f} | "
                     f"{r['peak_memory_mb']:.0f} | {r['memory_estimate_mb']:.0f} |")
    lines += ["", "Fitted exponent of time against N (t ~ N^p):", "",
              "| method, allocator | training step | target log_prob+grad |", "| --- | --- | --- |"]
    for key, fit in results["exponents"].items():
        step, tgt = ("-" if v is None else f"{v:.2f}" for v in (fit["step_seconds"], fit["target_seconds"]))
        lines.append(f"| {key} | {step} | {tgt} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: L = 8, 16, one warm-up and one timed step")
    parser.add_argument("--sizes", nargs="+", type=int, help="lattice sizes L [16 32 64 128; 8 16 with --quick]")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--allocator", nargs="+", choices=ALLOCATORS, default=list(ALLOCATORS),
                        help="C heap: freed pages kept for reuse (as the deeprg command) and/or glibc's default")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--warmup", type=int, help="untimed training steps [3; 1 with --quick]")
    parser.add_argument("--steps", type=int, help="timed training steps [5; 1 with --quick]")
    parser.add_argument("--repeats", type=int, help="timed target calls [20; 3 with --quick]")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dense-limit-gb", type=float, default=2.0, help="skip dense when 8 N^2 bytes exceed this")
    parser.add_argument("--out", help="output folder [benchmarks/results; a temporary folder with --quick]")
    args = parser.parse_args()
    sizes = args.sizes or ([8, 16] if args.quick else [16, 32, 64, 128])
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    steps = args.steps if args.steps is not None else (1 if args.quick else 5)
    repeats = args.repeats if args.repeats is not None else (3 if args.quick else 20)
    out = Path(args.out) if args.out else (Path(tempfile.mkdtemp(prefix="lattice-scaling-")) if args.quick else RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    settings = {"sizes": sizes, "methods": args.methods, "allocators": args.allocator, "batch": args.batch, "warmup": warmup, "steps": steps,
                "repeats": repeats, "threads": args.threads, "dense_limit_gb": args.dense_limit_gb}
    results = {"machine": describe(), "command": "python " + shlex.join(sys.argv), "quick": args.quick,
               "settings": settings, "rows": [], "exponents": {}}
    for L in sizes:
        for method in args.methods:
            for allocator in args.allocator:
                n = L * L
                if method == "dense" and 8.0 * n * n > args.dense_limit_gb * 1e9:
                    row = {"L": L, "n_sites": n, "method": method, "allocator": allocator,
                           "skipped": f"does not fit ({8.0 * n * n / 1e9:.1f} GB > {args.dense_limit_gb} GB)"}
                    print(f"L={L:4d} {method:5s} does not fit", flush=True)
                else:
                    t0 = time.perf_counter()
                    row = run_in_process(L, method, allocator, args.batch, warmup, steps, repeats, args.threads)
                    print(f"L={L:4d} {method:5s} {allocator:7s} target {row['target_seconds'] * 1e3:8.2f} ms  "
                          f"step {row['step_seconds']:7.3f} s  peak {row['peak_memory_mb']:6.0f} MB  "
                          f"({time.perf_counter() - t0:.0f} s)", flush=True)
                results["rows"].append(row)
    for method in args.methods:
        for allocator in args.allocator:
            rows = [r for r in results["rows"]
                    if r["method"] == method and r["allocator"] == allocator and not r.get("skipped")]
            results["exponents"][f"{method}, {allocator}"] = {key: exponent(rows, key)
                                                              for key in ("step_seconds", "target_seconds")}
    stem = "lattice_scaling"
    (out / f"{stem}.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / f"{stem}.md").write_text(markdown(results))
    print(markdown(results))
    print(f"wrote {out / (stem + '.json')} and {out / (stem + '.md')}")


if __name__ == "__main__":
    main()
