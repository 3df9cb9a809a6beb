"""Speed-up of 2 processes (``torchrun``, gloo) over 1 on this machine, for flow training, Wolff
sampling and MCRG (issue 15).

Run from the repository root, alone on the machine (about 20 minutes; writes
benchmarks/results/distributed.json and .md)::

    python benchmarks/bench_distributed.py [--quick]

Each workload runs as a fresh command three ways: one process with one thread, one process with
two threads (the best a single process does on 2 cores), and two processes with one thread each
(``python -m torch.distributed.run --standalone --nproc-per-node 2 -m -- deeprg ...``). The speed-up
is the one-process-one-thread time over the two-process time. Times:

* **flow training** (16x16, the default MERA flow, batch 256 and 1024, float32): seconds per
  step of the training loop as the run records them (no start-up, no final evaluation), over the
  steps after the first fifth; plus the machine's ceiling: two independent one-thread commands
  with half the batch each, started together;
* **Wolff sampling** (32x32 at K_c, 4 chains, 200000 configurations): the Monte Carlo time the
  command reports (``seconds``: burn-in, sampling and gathering the configurations on rank 0),
  and beside it the whole command's wall time, which adds start-up and rank 0's compressed
  writing of the dataset (serial); plus the machine's own ceiling: two independent one-thread
  commands with half the work each, started together (no communication at all);
* **MCRG** (majority rule, 32x32, N_r = 1..3, the configurations of the sampling run): wall time
  of ``deeprg mcrg`` minus that of a tiny run (start-up; every process still reads and
  decompresses the whole dataset, a serial cost included in the time).

Every measurement is repeated twice and the faster run kept (a stray process on a 2-core machine
costs tens of percent).

Each also checks that the 2-process result equals the 1-process one (parameters within 1e-6
for the flow in float32 after the run; identical spins and MCRG exponents).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from machine import describe

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
#: (label, processes, threads per process)
LAYOUTS = (("1 process, 1 thread", 1, 1), ("1 process, 2 threads", 1, 2), ("2 processes, 1 thread each", 2, 1))
#: Flow training batches: the default, and a larger one where fixed per-layer costs weigh less.
BATCHES = (256, 1024)


def cpu_times() -> tuple[int, int]:
    """(total, steal) jiffies of all CPUs from /proc/stat ((0, 0) where there is none)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return 0, 0
    return sum(fields[:8]), fields[7] if len(fields) > 7 else 0


#: Fraction of CPU time the hypervisor took (steal) during each command, in order of the runs.
STEAL: list[float] = []


def deeprg(argv: list[str], processes: int, threads: int) -> tuple[float, str]:
    """Run ``deeprg argv``; returns its wall time in seconds and its standard output (and records
    the steal fraction of the CPUs meanwhile in :data:`STEAL`)."""
    launch = ([sys.executable, "-m", "deeprg"] if processes == 1 else
              [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
               "-m", "--", "deeprg"])
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "NUMBA_NUM_THREADS": str(threads),
           "PYTHONWARNINGS": "ignore"}
    t0, (total0, steal0) = time.perf_counter(), cpu_times()
    done = subprocess.run([*launch, *argv], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    total1, steal1 = cpu_times()
    STEAL.append((steal1 - steal0) / (total1 - total0) if total1 > total0 else 0.0)
    if done.returncode != 0:
        raise RuntimeError(f"deeprg {' '.join(argv)} on {processes} process(es) failed:\n{done.stderr[-3000:]}")
    return seconds, done.stdout


def flow(tmp: Path, steps: int, L: int, batch: int, repeats: int) -> dict:
    out = {}
    states = {}
    (tmp / "eval.toml").write_text("eval_samples = 256\n")
    for label, processes, threads in LAYOUTS:
        times = []
        for repeat in range(repeats):
            run = tmp / f"flow_{batch}_{processes}_{threads}_{repeat}"
            deeprg(["flow", "train", "--L", str(L), "--batch", str(batch), "--steps", str(steps), "--threads",
                    str(threads), "--config", str(tmp / "eval.toml"), "--out", str(run), "--quiet"], processes, threads)
            state = torch.load(run / "checkpoint.pt", weights_only=True)
            history = state["history"]
            # steady state: the steps after the first fifth (warm-up: allocations, thread pools)
            skip = max(1, steps // 5)
            times.append((history[-1]["seconds"] - history[skip - 1]["seconds"]) / (steps - skip))
            states[label] = state["flow"]
        out[label] = {"seconds_per_step": min(times), "all_seconds_per_step": times}
        print(f"  flow {L}x{L}, batch {batch}, {label}: {min(times) * 1e3:.1f} ms/step", flush=True)
    a, b = states[LAYOUTS[0][0]], states[LAYOUTS[2][0]]
    out["max_parameter_difference_1_vs_2_processes"] = max(float((a[k] - b[k]).abs().max()) for k in a)
    return out


def flow_pair(tmp: Path, steps: int, L: int, batch: int, repeats: int) -> dict:
    """The machine's own ceiling for data-parallel flow training: two independent one-thread
    ``flow train`` commands with half the batch each (their own seeds), started together, no
    communication; seconds per step of the slower, measured as :func:`flow` does."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    runs = []
    for repeat in range(repeats):
        dirs = [tmp / f"flow_pair_{batch}_{repeat}_{k}" for k in range(2)]
        procs = [subprocess.Popen([sys.executable, "-m", "deeprg", "flow", "train", "--L", str(L), "--batch",
                                   str(batch // 2), "--steps", str(steps), "--threads", "1", "--seed", str(7 + k),
                                   "--config", str(tmp / "eval.toml"), "--out", str(run), "--quiet"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
                 for k, run in enumerate(dirs)]
        per_step = []
        for proc, run in zip(procs, dirs, strict=True):
            _, stderr = proc.communicate()
            if proc.returncode != 0:
                raise RuntimeError(f"independent flow training command failed:\n{stderr[-3000:]}")
            history = torch.load(run / "checkpoint.pt", weights_only=True)["history"]
            skip = max(1, steps // 5)
            per_step.append((history[-1]["seconds"] - history[skip - 1]["seconds"]) / (steps - skip))
        runs.append(max(per_step))
    print(f"  flow {L}x{L}, two independent 1-thread processes with batch {batch // 2} each: "
          f"{min(runs) * 1e3:.1f} ms/step", flush=True)
    return {"seconds_per_step": min(runs), "all_seconds_per_step": runs}


def sampling(tmp: Path, n: int, L: int, repeats: int) -> tuple[dict, Path]:
    out = {}
    for label, processes, threads in LAYOUTS:
        base = ["sample", "ising", "--L", str(L), "--beta", "critical", "--chains", "4", "--seed", "7", "--threads",
                str(threads), "--quiet", "--json"]
        runs = []
        for _ in range(repeats):
            path = tmp / f"wolff_{processes}_{threads}_{len(runs)}.npz"
            total, stdout = deeprg([*base, "--n", str(n), "--out", str(path)], processes, threads)
            runs.append((json.loads(stdout)["seconds"], total))
        mc, total = min(runs)
        out[label] = {"seconds": mc, "command_seconds": total}
        print(f"  Wolff {L}x{L}, {n} configurations, {label}: Monte Carlo {mc:.1f} s, command {total:.1f} s",
              flush=True)
    spins = [np.load(tmp / f"wolff_{p}_{t}_0.npz")["spins"] for _, p, t in LAYOUTS]
    out["identical_spins"] = all(np.array_equal(spins[0], s) for s in spins[1:])
    out["independent_pair"] = independent_pair(tmp, n, L, repeats)
    return out, tmp / "wolff_1_1_0.npz"


def independent_pair(tmp: Path, n: int, L: int, repeats: int) -> dict:
    """The machine's own ceiling for 2 processes: two independent one-thread sampling commands
    started together, each with half the work (2 chains, n/2 configurations, its own seed), no
    communication at all. The speed-up ceiling is the one-process Monte Carlo time over the slower
    of the pair's."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    runs = []
    for repeat in range(repeats):
        procs = [subprocess.Popen([sys.executable, "-m", "deeprg", "sample", "ising", "--L", str(L), "--beta", "critical",
                                   "--chains", "2", "--seed", str(7 + k), "--threads", "1", "--quiet", "--json",
                                   "--n", str(n // 2), "--out", str(tmp / f"pair_{repeat}_{k}.npz")],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for k in range(2)]
        seconds = []
        for proc in procs:
            stdout, stderr = proc.communicate()
            if proc.returncode != 0:
                raise RuntimeError(f"independent sampling command failed:\n{stderr[-3000:]}")
            seconds.append(json.loads(stdout)["seconds"])
        runs.append(max(seconds))
    print(f"  Wolff, two independent 1-thread processes with half the work each: {min(runs):.1f} s", flush=True)
    return {"seconds": min(runs), "all_seconds": runs}


def mcrg(tmp: Path, data: Path, small_data: Path, levels: int, repeats: int) -> dict:
    out = {}
    for label, processes, threads in LAYOUTS:
        base = ["mcrg", "--transform", "majority", "--levels", str(levels), "--blocks", "8", "--threads", str(threads),
                "--quiet", "--json"]
        runs = []
        for _ in range(repeats):
            small, _ = deeprg([*base, "--levels", "1", "--data", str(small_data)], processes, threads)
            total, _ = deeprg([*base, "--data", str(data)], processes, threads)
            runs.append((total - small, total, small))
        work, total, small = min(runs)
        out[label] = {"seconds": work, "command_seconds": total, "fixed_seconds": small}
        print(f"  MCRG, {label}: {work:.1f} s (+{small:.1f} s fixed)", flush=True)
    return out


def speedups(section: dict, key: str) -> dict:
    one, two = section[LAYOUTS[0][0]][key], section[LAYOUTS[2][0]][key]
    threads = section[LAYOUTS[1][0]][key]
    return {"2 processes over 1 process, 1 thread": one / two, "2 processes over 1 process, 2 threads": threads / two}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: small sizes")
    args = parser.parse_args()
    steps, L_flow, n, L_mc = (5, 8, 512, 16) if args.quick else (100, 16, 200_000, 32)
    repeats = 1 if args.quick else 2
    stem = "distributed_quick" if args.quick else "distributed"
    result = {"command": "python benchmarks/bench_distributed.py" + (" --quick" if args.quick else ""),
              "machine": describe()}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for batch in BATCHES:
            flow_steps = steps if batch <= 256 else max(5, steps // 4)
            result[f"flow_{batch}"] = flow(tmp, flow_steps, L_flow, batch, repeats)
            result[f"flow_{batch}"]["independent_pair"] = flow_pair(tmp, flow_steps, L_flow, batch, repeats)
            result[f"flow_{batch}"]["speedup"] = speedups(result[f"flow_{batch}"], "seconds_per_step")
        result["sampling"], data = sampling(tmp, n, L_mc, repeats)
        result["sampling"]["speedup"] = speedups(result["sampling"], "seconds")
        small = tmp / "small.npz"
        deeprg(["sample", "ising", "--L", str(L_mc), "--n", "512", "--chains", "4", "--out", str(small), "--quiet"], 1, 1)
        result["mcrg"] = mcrg(tmp, data, small, L_mc.bit_length() - 3, repeats)
        result["mcrg"]["speedup"] = speedups(result["mcrg"], "seconds")
    result["sizes"] = {"flow_L": L_flow, "flow_steps": steps, "sampling_L": L_mc, "sampling_n": n}
    result["steal"] = {"mean": float(np.mean(STEAL)), "max": float(np.max(STEAL)), "per_command": STEAL}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{stem}.md").write_text(markdown(result))
    print((RESULTS / f"{stem}.md").read_text())


def sec_speedup(section: dict) -> float:
    return section["speedup"]["2 processes over 1 process, 1 thread"]


def markdown(r: dict) -> str:
    m, s = r["machine"], r["sizes"]
    targets = {**{f"flow_{b}": 1.5 for b in BATCHES}, "sampling": 1.7, "mcrg": 1.7}
    names = {**{f"flow_{b}": f"flow training ({s['flow_L']}x{s['flow_L']}, batch {b}), s/step" for b in BATCHES},
             "sampling": f"Wolff sampling ({s['sampling_L']}x{s['sampling_L']}, {s['sampling_n']} configurations, 4 "
                         "chains), s",
             "mcrg": f"MCRG (majority, {s['sampling_L']}x{s['sampling_L']}, N_r = 1..{s['sampling_L'].bit_length() - 3}), s"}
    lines = [
        "# Two processes against one (torch.distributed, gloo)", "",
        f"Command: `{r['command']}` (method in its docstring). Run alone on the machine.", "",
        f"Machine: {m['cpu']}, {m['cores']} cores; Python {m['python']}, torch {m['torch']}, numpy {m['numpy']}, "
        f"numba {m['numba']}, deeprg {m['deeprg']}; {m['platform']}; {m['date']}.", "",
        "| workload | " + " | ".join(label for label, _, _ in LAYOUTS) + " | speed-up over 1 thread | over 2 threads | "
        "target |", "|---|---|---|---|---|---|---|"]
    for key, name in names.items():
        sec = r[key]
        times = [sec[label].get("seconds_per_step", sec[label].get("seconds")) for label, _, _ in LAYOUTS]
        if key == "sampling":
            name += " (whole command: " + ", ".join(f"{sec[label]['command_seconds']:.1f}" for label, _, _ in LAYOUTS) + ")"
        sp = sec["speedup"]
        one, two = sp["2 processes over 1 process, 1 thread"], sp["2 processes over 1 process, 2 threads"]
        lines.append(f"| {name} | " + " | ".join(f"{t:.4g}" for t in times)
                     + f" | {one:.2f}x | {two:.2f}x | >= {targets[key]}x: {'met' if one >= targets[key] else 'not met'} |")
    ceilings = []
    for key, name in names.items():
        pair = r[key].get("independent_pair")
        if pair is not None:
            unit = "seconds_per_step" if key.startswith("flow") else "seconds"
            ceilings.append(f"| {name} | {pair[unit]:.4g} | {r[key][LAYOUTS[0][0]][unit] / pair[unit]:.2f}x | "
                            f"{sec_speedup(r[key]):.2f}x |")
    if ceilings:
        lines += ["", "The machine's own ceiling: two independent one-thread commands started together, each with "
                  "half the work (half the batch, or half the chains and configurations) and no communication at "
                  "all; the slower of the two against one process is what 2 processes could reach at best here.", "",
                  "| workload | independent pair (slower) | ceiling | 2 processes reached |", "|---|---|---|---|",
                  *ceilings]
    if "steal" in r:
        lines += ["", f"CPU time taken by the hypervisor (steal, /proc/stat) while the commands ran: mean "
                  f"{100 * r['steal']['mean']:.0f}%, worst command {100 * r['steal']['max']:.0f}%. Above a few percent "
                  "the times measure the host's load as much as deeprg, and the speed-ups scatter accordingly."]
    lines += ["", "Flow parameters after training, 1 vs 2 processes: max difference "
              + ", ".join(f"{r[f'flow_{b}']['max_parameter_difference_1_vs_2_processes']:.2e} (batch {b})" for b in BATCHES)
              + " (float32: rounding differences of the gradient all-reduce, grown over the run).",
              f"Wolff configurations identical on 1 and 2 processes: {r['sampling']['identical_spins']}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
