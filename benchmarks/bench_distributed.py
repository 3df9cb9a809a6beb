"""Speed-up of 2 processes (``torchrun``, gloo) over 1 on this machine, for flow training, Wolff
sampling and MCRG (issue 15).

Run from the repository root, alone on the machine (about 30 minutes; writes
benchmarks/results/distributed.json and .md)::

    python benchmarks/bench_distributed.py [--quick] [--rounds R]

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
* **MCRG** (majority rule, 32x32, N_r = 1..3, the configurations of the sampling run): the wall
  time the command reports (``wall_seconds``: rank 0 from after start-up, i.e. imports and the
  processes' join, to the summed moments), and beside it the whole command's wall time. Each
  process streams only its share of the configurations from the file, but decompresses the data
  before its share to reach it (included in the time); plus the machine's ceiling: two
  independent one-thread commands, one on each half of the data saved as its own file, started
  together (the larger of their ``wall_seconds``).

The measurements are interleaved: in each of ``--rounds`` rounds (3) every layout of a workload
runs once, in turn, so the times compared in a ratio were taken minutes apart under about the same
load of the host (on a shared VM the hypervisor's steal moves by tens of percent from one stretch
to the next). Reported: the median time over the rounds per layout, and per speed-up the median
and the range over the rounds of the same round's ratio; the target is judged on the median.

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
#: The label of the machine's ceiling: two independent one-thread commands with half the work each.
PAIR = "independent pair"


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


def interleaved(measures: dict, rounds: int, what: str) -> dict[str, list[float]]:
    """Run every measurement of ``measures`` (label -> ``fn(round) -> seconds``) once per round,
    in turn, for ``rounds`` rounds; returns label -> the seconds of each round. Measurements of
    one round run minutes apart at most, so their ratios see about the same load of the host,
    whereas whole blocks of repeats of one layout can fall into a calm or a noisy stretch."""
    times: dict[str, list[float]] = {label: [] for label in measures}
    for r in range(rounds):
        for label, fn in measures.items():
            times[label].append(fn(r))
            print(f"  {what}, round {r + 1}/{rounds}, {label}: {times[label][-1]:.4g} s", flush=True)
    return times


def summarize(times: dict[str, list[float]], key: str) -> dict:
    """Per layout the median over the rounds (and every round's value); speed-ups as the median
    and range over the rounds of the ratio of the same round's times."""
    out = {label: {key: float(np.median(t)), f"all_{key}": t} for label, t in times.items()}
    one, threads, two = (times[label] for label, _, _ in LAYOUTS)

    def ratio(a: list[float], b: list[float]) -> dict:
        per_round = [x / y for x, y in zip(a, b, strict=True)]
        return {"median": float(np.median(per_round)), "min": min(per_round), "max": max(per_round),
                "per_round": per_round}

    out["speedup"] = {"2 processes over 1 process, 1 thread": ratio(one, two),
                      "2 processes over 1 process, 2 threads": ratio(threads, two)}
    if PAIR in times:
        out["ceiling"] = ratio(one, times[PAIR])
    return out


def train(tmp: Path, steps: int, L: int, batch: int, processes: int, threads: int, name: str) -> tuple[float, dict]:
    """Seconds per step of one ``flow train`` command (the steps after the first fifth: warm-up,
    allocations and thread pools, left out) and its final flow parameters."""
    run = tmp / name
    deeprg(["flow", "train", "--L", str(L), "--batch", str(batch), "--steps", str(steps), "--threads",
            str(threads), "--config", str(tmp / "eval.toml"), "--out", str(run), "--quiet"], processes, threads)
    return _per_step(run, steps)


def _per_step(run: Path, steps: int) -> tuple[float, dict]:
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    history, skip = state["history"], max(1, steps // 5)
    return (history[-1]["seconds"] - history[skip - 1]["seconds"]) / (steps - skip), state["flow"]


def flow(tmp: Path, steps: int, L: int, batch: int, rounds: int) -> dict:
    (tmp / "eval.toml").write_text("eval_samples = 256\n")
    states = {}

    def layout(processes: int, threads: int):
        def measure(r: int) -> float:
            seconds, states[processes, threads] = train(tmp, steps, L, batch, processes, threads,
                                                        f"flow_{batch}_{processes}_{threads}_{r}")
            return seconds
        return measure

    measures = {label: layout(p, t) for label, p, t in LAYOUTS}
    measures[PAIR] = lambda r: flow_pair(tmp, steps, L, batch, r)
    out = summarize(interleaved(measures, rounds, f"flow {L}x{L} batch {batch}, s/step"), "seconds_per_step")
    a, b = states[1, 1], states[2, 1]
    out["max_parameter_difference_1_vs_2_processes"] = max(float((a[k] - b[k]).abs().max()) for k in a)
    return out


def _independent(commands: list[list[str]]) -> list[str]:
    """Start the one-thread ``deeprg`` commands together, wait for all; their standard outputs."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    total0, steal0 = cpu_times()
    procs = [subprocess.Popen([sys.executable, "-m", "deeprg", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for argv in commands]
    outputs = []
    for proc in procs:
        stdout, stderr = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"independent deeprg command failed:\n{stderr[-3000:]}")
        outputs.append(stdout)
    total1, steal1 = cpu_times()
    STEAL.append((steal1 - steal0) / (total1 - total0) if total1 > total0 else 0.0)
    return outputs


def flow_pair(tmp: Path, steps: int, L: int, batch: int, r: int) -> float:
    """The machine's own ceiling for data-parallel flow training: two independent one-thread
    ``flow train`` commands with half the batch each (their own seeds), started together, no
    communication; seconds per step of the slower, measured as :func:`train` does."""
    dirs = [tmp / f"flow_pair_{batch}_{r}_{k}" for k in range(2)]
    _independent([["flow", "train", "--L", str(L), "--batch", str(batch // 2), "--steps", str(steps), "--threads", "1",
                   "--seed", str(7 + k), "--config", str(tmp / "eval.toml"), "--out", str(run), "--quiet"]
                  for k, run in enumerate(dirs)])
    return max(_per_step(run, steps)[0] for run in dirs)


def sampling(tmp: Path, n: int, L: int, rounds: int) -> tuple[dict, Path]:
    commands: dict[str, list[float]] = {}

    def layout(label: str, processes: int, threads: int):
        def measure(r: int) -> float:
            path = tmp / f"wolff_{processes}_{threads}_{r}.npz"
            total, stdout = deeprg(["sample", "ising", "--L", str(L), "--beta", "critical", "--chains", "4", "--seed",
                                    "7", "--threads", str(threads), "--quiet", "--json", "--n", str(n), "--out",
                                    str(path)], processes, threads)
            commands.setdefault(label, []).append(total)
            return json.loads(stdout)["seconds"]
        return measure

    measures = {label: layout(label, p, t) for label, p, t in LAYOUTS}
    measures[PAIR] = lambda r: independent_pair(tmp, n, L, r)
    out = summarize(interleaved(measures, rounds, f"Wolff {L}x{L}, {n} configurations, Monte Carlo"), "seconds")
    for label, totals in commands.items():
        out[label]["command_seconds"] = float(np.median(totals))
    spins = [np.load(tmp / f"wolff_{p}_{t}_0.npz")["spins"] for _, p, t in LAYOUTS]
    out["identical_spins"] = all(np.array_equal(spins[0], s) for s in spins[1:])
    return out, tmp / "wolff_1_1_0.npz"


def independent_pair(tmp: Path, n: int, L: int, r: int) -> float:
    """The machine's own ceiling for 2 processes: two independent one-thread sampling commands
    started together, each with half the work (2 chains, n/2 configurations, its own seed), no
    communication at all; the Monte Carlo seconds of the slower."""
    outputs = _independent([["sample", "ising", "--L", str(L), "--beta", "critical", "--chains", "2", "--seed",
                              str(7 + k), "--threads", "1", "--quiet", "--json", "--n", str(n // 2), "--out",
                              str(tmp / f"pair_{r}_{k}.npz")] for k in range(2)])
    return max(json.loads(stdout)["seconds"] for stdout in outputs)


def mcrg(tmp: Path, data: Path, levels: int, rounds: int) -> dict:
    commands: dict[str, list[float]] = {}

    def argv(threads: int, path: Path) -> list[str]:
        return ["mcrg", "--transform", "majority", "--levels", str(levels), "--blocks", "8", "--threads", str(threads),
                "--quiet", "--json", "--data", str(path)]

    def layout(label: str, processes: int, threads: int):
        def measure(r: int) -> float:
            total, stdout = deeprg(argv(threads, data), processes, threads)
            commands.setdefault(label, []).append(total)
            return json.loads(stdout)["wall_seconds"]
        return measure

    measures = {label: layout(label, p, t) for label, p, t in LAYOUTS}
    halves = _halves(tmp, data)
    measures[PAIR] = lambda r: max(json.loads(stdout)["wall_seconds"]
                                   for stdout in _independent([argv(1, h) for h in halves]))
    out = summarize(interleaved(measures, rounds, "MCRG, wall time after start-up"), "seconds")
    for label, totals in commands.items():
        out[label]["command_seconds"] = float(np.median(totals))
    return out


def _halves(tmp: Path, data: Path) -> list[Path]:
    """The first and the second half of the configurations of ``data``, as two datasets: the work
    of each of two processes, for MCRG's independent pair."""
    from deeprg.data import SpinDataset, load_dataset, save_dataset

    ds = load_dataset(data)
    half = ds.n // 2
    return [save_dataset(tmp / f"mcrg_half_{k}.npz", SpinDataset(part, ds.metadata))
            for k, part in enumerate((ds.spins[:half], ds.spins[half:]))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: small sizes, one round")
    parser.add_argument("--rounds", type=int, choices=range(1, 10), metavar="{1..9}",
                        help="rounds of interleaved measurements [3; 1 with --quick]")
    args = parser.parse_args()
    steps, L_flow, n, L_mc = (5, 8, 512, 16) if args.quick else (100, 16, 200_000, 32)
    rounds = args.rounds or (1 if args.quick else 3)
    stem = "distributed_quick" if args.quick else "distributed"
    result = {"command": "python benchmarks/bench_distributed.py" + (" --quick" if args.quick else "")
              + (f" --rounds {args.rounds}" if args.rounds else ""), "machine": describe(), "rounds": rounds}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for batch in BATCHES:
            flow_steps = steps if batch <= 256 else max(5, steps // 4)
            result[f"flow_{batch}"] = flow(tmp, flow_steps, L_flow, batch, rounds)
        result["sampling"], data = sampling(tmp, n, L_mc, rounds)
        result["mcrg"] = mcrg(tmp, data, L_mc.bit_length() - 3, rounds)
    result["sizes"] = {"flow_L": L_flow, "flow_steps": steps, "sampling_L": L_mc, "sampling_n": n}
    result["steal"] = {"mean": float(np.mean(STEAL)), "max": float(np.max(STEAL)), "per_command": STEAL}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{stem}.md").write_text(markdown(result))
    print((RESULTS / f"{stem}.md").read_text())


def _ratio(r: dict) -> str:
    return f"{r['median']:.2f}x ({r['min']:.2f}-{r['max']:.2f})" if len(r["per_round"]) > 1 else f"{r['median']:.2f}x"


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
        f"{r['rounds']} rounds; in each round every layout runs once, in turn. Times: the median over the rounds. "
        "Speed-ups: the median over the rounds of the ratio of the same round's times, with their range in "
        "brackets; the target is judged on the median.", "",
        "| workload | " + " | ".join(label for label, _, _ in LAYOUTS) + " | speed-up over 1 thread | over 2 threads | "
        "target |", "|---|---|---|---|---|---|---|"]
    for key, name in names.items():
        sec = r[key]
        times = [sec[label].get("seconds_per_step", sec[label].get("seconds")) for label, _, _ in LAYOUTS]
        if key in ("sampling", "mcrg"):
            name += " (whole command: " + ", ".join(f"{sec[label]['command_seconds']:.1f}" for label, _, _ in LAYOUTS) + ")"
        one, two = sec["speedup"]["2 processes over 1 process, 1 thread"], sec["speedup"]["2 processes over 1 process, 2 threads"]
        met = "met" if one["median"] >= targets[key] else "not met"
        lines.append(f"| {name} | " + " | ".join(f"{t:.4g}" for t in times)
                     + f" | {_ratio(one)} | {_ratio(two)} | >= {targets[key]}x: {met} |")
    ceilings = []
    for key, name in names.items():
        if "ceiling" in r[key]:
            unit = "seconds_per_step" if key.startswith("flow") else "seconds"
            reached = r[key]["speedup"]["2 processes over 1 process, 1 thread"]
            ceilings.append(f"| {name} | {r[key][PAIR][unit]:.4g} | {_ratio(r[key]['ceiling'])} | {_ratio(reached)} |")
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
