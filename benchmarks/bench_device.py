"""Flow training, latent HMC and importance sampling on one device (a GPU, or the CPU to compare).

For each 2D lattice L x L (``--sizes``, default 32 64 128) on the relaxed Ising target at K_c (FFT
operator, :class:`deeprg.models.relaxed.RelaxedIsing`), with the default flow of
:class:`deeprg.flows.train.FlowTrainConfig` (MERA, 4 couplings, hidden 32 32, site and linear
maps, symmetrized) in ``--dtype`` (float32) at batch ``--batch`` (1024) on ``--device`` (cuda):

* training: ``--warmup`` untimed steps, then ``--steps`` timed steps (each ended by a device
  synchronization); median seconds per step, steps and samples per second;
* host-to-device copies per training step, counted by the torch profiler over two steps (GPU
  only; 0 is what the GPU path promises: parameters, buffers, noise and target stay on the device);
* latent HMC (:func:`deeprg.mc.hmc.hmc` on ``ln pi(g(z)) + ln|det dg/dz|``, the sampler of
  ``deeprg flow hmc``): ``batch`` chains, 10 leapfrog steps per trajectory, median seconds per
  trajectory over ``--hmc-steps``;
* importance sampling (:func:`deeprg.flows.estimators.importance_ln_z`, ``deeprg flow estimate``):
  samples per second over ``--is-batches`` batches of ``batch`` samples;
* peak memory: ``torch.cuda.max_memory_allocated`` on a GPU (reset per size), the process's
  maxrss on the CPU (whose heap keeps freed pages, :func:`deeprg.memory.keep_freed_memory`, as
  the ``deeprg`` command's does, unless ``--allocator default``); the estimate of :meth:`FlowTrainConfig.memory_estimate` beside it. A size whose
  estimate exceeds the free device memory is skipped and says so.

The flow is barely trained (the warm-up and timed steps): the rates do not depend on the weights.
Run from the repository root:

    python benchmarks/bench_device.py                         # a GPU: L = 32, 64, 128, batch 1024
    python benchmarks/bench_device.py --device cpu --sizes 32 64 --steps 3 --hmc-steps 2 --is-batches 2
    python benchmarks/bench_device.py --quick --device cpu    # smoke run: L = 8, 16, batch 64, temporary folder

``benchmarks/device_check.sh`` runs the CUDA tests and then this script on a GPU machine. Results go
to ``benchmarks/results/device_<cpu|cuda>.{json,md}`` (``--out`` to change the folder; a temporary
folder with ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import resource
import shlex
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from machine import describe

RESULTS = Path(__file__).parent / "results"
LEAPFROG = 10


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _host_to_device_copies(step, device: torch.device) -> int | None:
    """Host-to-device copies that two training steps make (``None`` on the CPU)."""
    if device.type != "cuda":
        return None
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        step()
        step()
        torch.cuda.synchronize(device)
    return sum(1 for e in prof.events() if "HtoD" in e.name)


def measure(L: int, args: argparse.Namespace, device: torch.device) -> dict:
    """One lattice size: training, latent HMC and importance sampling on ``device``."""
    from deeprg.flows.estimators import importance_ln_z, latent_log_prob
    from deeprg.flows.train import FlowTrainConfig, Trainer
    from deeprg.mc.hmc import hmc

    cfg = FlowTrainConfig(L=L, batch=args.batch, steps=args.warmup + args.steps + 2, dtype=args.dtype,
                          device=str(device), threads=args.threads, seed=0)
    estimate_mb = cfg.memory_estimate()[0] / 2**20
    row = {"L": L, "n_sites": L * L, "batch": args.batch, "memory_estimate_mb": estimate_mb}
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0] / 2**20
        if estimate_mb > 0.9 * free:
            return {**row, "skipped": f"estimate {estimate_mb:.0f} MB > 90% of the free {free:.0f} MB"}
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    trainer = Trainer(cfg)
    for _ in range(args.warmup):
        trainer.step()
    times = [_timed(trainer.step, device) for _ in range(args.steps)]
    copies = _host_to_device_copies(trainer.step, device)
    step = statistics.median(times)
    row.update(step_seconds=step, step_seconds_all=times, steps_per_second=1.0 / step,
               samples_per_second=args.batch / step, host_to_device_copies_per_step=None if copies is None else copies / 2,
               train_peak_mb=_peak_mb(device))

    flow, target = trainer.flow, trainer.target
    gen = torch.Generator(device=device).manual_seed(1)
    with torch.no_grad():
        z = flow.hierarchy.renormalize(flow.sample(args.batch, gen))[0]
    log_prob = latent_log_prob(flow, target)
    state = {"z": z}

    def trajectory() -> None:
        state["z"] = hmc(log_prob, state["z"], 1, n_leapfrog=LEAPFROG, step_size=0.05, generator=gen).x

    trajectory()  # warm-up
    hmc_times = [_timed(trajectory, device) for _ in range(args.hmc_steps)]
    row.update(hmc_trajectory_seconds=statistics.median(hmc_times), hmc_trajectory_seconds_all=hmc_times,
               hmc_chain_steps_per_second=args.batch / statistics.median(hmc_times))

    def sampling() -> None:
        importance_ln_z(flow, target, args.batch * args.is_batches, batch=args.batch, generator=gen)

    sampling()  # warm-up
    is_seconds = _timed(sampling, device)
    row.update(is_seconds=is_seconds, is_samples_per_second=args.batch * args.is_batches / is_seconds,
               peak_mb=_peak_mb(device))
    return row


def markdown(results: dict) -> str:
    m, s = results["machine"], results["settings"]
    device = s["device_name"]
    lines = [
        f"# Flow training, latent HMC and importance sampling on {device}",
        "",
        f"Machine: {device}; host {m['cpu']}, {m['cores']} logical cores; torch {m['torch']}, deeprg {m['deeprg']}; "
        f"{m['date']}.",
        f"Command: `{results['command']}`.",
        f"Relaxed Ising target at K_c (FFT), default `FlowTrainConfig` flow in {s['dtype']}, batch {s['batch']}; "
        f"training: {s['warmup']} warm-up then {s['steps']} timed steps (median); latent HMC: {s['batch']} chains, "
        f"{LEAPFROG} leapfrog steps per trajectory, median of {s['hmc_steps']}; importance sampling: "
        f"{s['is_batches']} batches of {s['batch']}. Peak memory: "
        + ("`torch.cuda.max_memory_allocated`" if s["device"].startswith("cuda") else "process maxrss (imports included)")
        + "; estimate: `FlowTrainConfig.memory_estimate()`. C heap: "
        + ("freed pages kept for reuse (`deeprg.memory.keep_freed_memory`, as the `deeprg` command)."
           if s.get("allocator", "kept") == "kept" else "glibc's default (blocks above 32 MB mapped afresh)."),
        "",
        "| L | N | step (s) | steps/s | samples/s (training) | HtoD copies per step | HMC trajectory (s) | "
        "IS samples/s | peak MB | estimate MB |",
        "|" + " --- |" * 10,
    ]
    for r in results["rows"]:
        if r.get("skipped"):
            lines.append(f"| {r['L']} | {r['n_sites']} | {r['skipped']} | | | | | | | {r['memory_estimate_mb']:.0f} |")
            continue
        copies = "-" if r["host_to_device_copies_per_step"] is None else f"{r['host_to_device_copies_per_step']:g}"
        lines.append(f"| {r['L']} | {r['n_sites']} | {r['step_seconds']:.4f} | {r['steps_per_second']:.2f} | "
                     f"{r['samples_per_second']:.0f} | {copies} | {r['hmc_trajectory_seconds']:.4f} | "
                     f"{r['is_samples_per_second']:.0f} | {r['peak_mb']:.0f} | {r['memory_estimate_mb']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cpu, cuda or cuda:N [cuda]")
    parser.add_argument("--quick", action="store_true", help="smoke run: L = 8, 16, batch 64, few steps")
    parser.add_argument("--sizes", nargs="+", type=int, help="lattice sizes L [32 64 128; 8 16 with --quick]")
    parser.add_argument("--batch", type=int, help="batch, chains and IS batch [1024; 64 with --quick]")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--warmup", type=int, help="untimed training steps [3; 1 with --quick]")
    parser.add_argument("--steps", type=int, help="timed training steps [10; 2 with --quick]")
    parser.add_argument("--hmc-steps", type=int, help="timed HMC trajectories [5; 2 with --quick]")
    parser.add_argument("--is-batches", type=int, help="importance-sampling batches [8; 2 with --quick]")
    parser.add_argument("--threads", type=int, default=None, help="torch threads on the CPU [all cores]")
    parser.add_argument("--allocator", choices=("kept", "default"), default="kept",
                        help="C heap: freed pages kept for reuse, as the deeprg command does [kept], or glibc's "
                        "default (blocks above 32 MB mapped afresh at each allocation; results to device_<type>_default)")
    parser.add_argument("--out", help="output folder [benchmarks/results; a temporary folder with --quick]")
    args = parser.parse_args()
    # the flow is barely trained: its importance weights are heavy-tailed, which is no matter for rates
    warnings.filterwarnings("ignore", message="importance weights")
    quick = args.quick
    sizes = args.sizes or ([8, 16] if quick else [32, 64, 128])
    defaults = {"batch": (64, 1024), "warmup": (1, 3), "steps": (2, 10), "hmc_steps": (2, 5), "is_batches": (2, 8)}
    for name, (small, full) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, small if quick else full)
        if getattr(args, name) < (0 if name == "warmup" else 1):
            parser.error(f"--{name.replace('_', '-')} must be >= {0 if name == 'warmup' else 1}")
    if min(sizes) < 4 or any(L & (L - 1) for L in sizes):
        parser.error("--sizes must be powers of 2, at least 4")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: this torch has no CUDA device")
    from deeprg.memory import keep_freed_memory

    if args.allocator == "kept" and not keep_freed_memory():  # as the deeprg command does
        parser.error("--allocator kept needs glibc")
    torch.set_flush_denormal(True)  # as the deeprg command does
    if device.type == "cpu" and args.threads is not None:
        torch.set_num_threads(args.threads)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    out = Path(args.out) if args.out else (Path(tempfile.mkdtemp(prefix="bench-device-")) if quick else RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    settings = {"device": str(device), "device_name": name, "sizes": sizes, "batch": args.batch, "dtype": args.dtype,
                "warmup": args.warmup, "steps": args.steps, "hmc_steps": args.hmc_steps,
                "is_batches": args.is_batches, "threads": torch.get_num_threads(), "allocator": args.allocator}
    if device.type == "cuda":
        settings["cuda"] = torch.version.cuda
    results = {"machine": describe(), "command": "python " + shlex.join(sys.argv), "quick": quick,
               "settings": settings, "rows": []}
    for L in sizes:
        t0 = time.perf_counter()
        row = measure(L, args, device)
        results["rows"].append(row)
        if row.get("skipped"):
            print(f"L={L:4d} skipped: {row['skipped']}", flush=True)
        else:
            print(f"L={L:4d} step {row['step_seconds']:.4f} s ({row['steps_per_second']:.2f}/s)  "
                  f"HMC trajectory {row['hmc_trajectory_seconds']:.4f} s  IS {row['is_samples_per_second']:.0f}/s  "
                  f"peak {row['peak_mb']:.0f} MB  ({time.perf_counter() - t0:.0f} s)", flush=True)
    stem = f"device_{device.type}" + ("_default" if args.allocator == "default" else "")
    (out / f"{stem}.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / f"{stem}.md").write_text(markdown(results))
    print(markdown(results))
    print(f"wrote {out / (stem + '.json')} and {out / (stem + '.md')}")


if __name__ == "__main__":
    main()
