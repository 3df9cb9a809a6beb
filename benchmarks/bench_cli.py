"""Start-up time of the ``deeprg`` command and the main job's speed with and without background load.

Run from the repository root, alone on the machine (takes about ten minutes; writes
benchmarks/results/cli.json and benchmarks/results/cli.md)::

    python benchmarks/bench_cli.py [--before PATH]

``--before PATH`` also measures another source tree (e.g. a ``git worktree`` of an older
commit: ``git worktree add /tmp/before fe981da``), run as ``python -c`` with ``PATH/src`` first on
``sys.path``; the current tree is measured the same way from ``src``.

1. **Start-up**: wall time of ``deeprg --help``, ``deeprg exact ising --L 16`` and ``deeprg sample
   ising --L 16 --n 100``, median of ``--repeats`` runs each (fresh processes).
2. **Threads**: training steps per second of the main job (``deeprg flow train``, the defaults:
   8x8, batch 256) over ``--steps`` steps, with ``--threads`` 1, 2 and the default, alone and
   beside one busy process (a Python loop on one core, as another user's job would be). Steps per
   second are ``steps / wall_seconds`` of training as the run reports it (no start-up, no final
   evaluation).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import describe

ROOT = Path(__file__).resolve().parents[1]
STARTUP = {
    "deeprg --help": ["--help"],
    "deeprg exact ising --L 16": ["exact", "ising", "--L", "16"],
    "deeprg sample ising --L 16 --n 100": ["sample", "ising", "--L", "16", "--n", "100", "--quiet", "--out"],
}


def command(src: Path, args: list[str]) -> list[str]:
    code = (f"import sys; sys.path.insert(0, {str(src)!r}); from deeprg.cli import main; "
            f"sys.argv[0] = 'deeprg'; sys.exit(main())")
    return [sys.executable, "-c", code, *args]


def startup(src: Path, repeats: int, tmp: Path) -> dict:
    out = {}
    for name, args in STARTUP.items():
        times = []
        for i in range(repeats):
            argv = args + [str(tmp / f"s{i}.npz")] if args[-1] == "--out" else args
            t0 = time.perf_counter()
            subprocess.run(command(src, argv), check=True, capture_output=True)
            times.append(time.perf_counter() - t0)
        out[name] = {"median_seconds": statistics.median(times), "seconds": times}
        print(f"  {name:40s} {out[name]['median_seconds']:.2f} s", flush=True)
    return out


def train_speed(src: Path, threads: int | None, steps: int, busy: bool, tmp: Path) -> float:
    run = tmp / f"run-{threads}-{busy}-{time.monotonic_ns()}"
    argv = ["flow", "train", "--steps", str(steps), "--out", str(run), "--quiet", "--json"]
    if threads is not None:
        argv += ["--threads", str(threads)]
    load = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
        result = subprocess.run(command(src, argv), check=True, capture_output=True, text=True, env=env)
    finally:
        if load is not None:
            load.kill()
            load.wait()
    metrics = json.loads(result.stdout)
    return metrics["steps"] / metrics["wall_seconds"]


def threads_table(src: Path, steps: int, tmp: Path) -> dict:
    out = {}
    for threads in (1, 2, None):
        for busy in (False, True):
            key = f"threads={threads or 'default'}, {'beside one busy process' if busy else 'alone'}"
            out[key] = train_speed(src, threads, steps, busy, tmp)
            print(f"  {key:45s} {out[key]:.1f} steps/s", flush=True)
    return out


def write_markdown(results: dict, path: Path) -> None:
    labels = list(results["trees"])
    machine = results["machine"]
    lines = ["# deeprg start-up and main-job speed", "",
             f"`python benchmarks/bench_cli.py{' --before PATH' if 'before' in labels else ''}`"
             + (" with PATH a worktree of commit fe981da (before issue 12)" if "before" in labels else "")
             + f"; {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']}, {machine['date']}. "
             "Wall times on a shared virtual machine vary by about 20% between runs.", "",
             f"## Start-up (median of {results['repeats']} runs; `sample` includes sampling and the numba kernels)",
             "", "| command | " + " | ".join(labels) + " |", "| --- |" + " --- |" * len(labels)]
    for name in STARTUP:
        lines.append(f"| `{name}` | " + " | ".join(
            f"{results['trees'][t]['startup'][name]['median_seconds']:.2f} s" for t in labels) + " |")
    lines += ["", f"## Main job (`deeprg flow train`, 8x8, batch 256): training steps per second over "
              f"{results['steps']} steps", "",
              "`default` is the default of each tree: torch's (one thread per core) before, one thread after.", "",
              "| threads, load | " + " | ".join(labels) + " |", "| --- |" + " --- |" * len(labels)]
    for key in results["trees"][labels[-1]]["train_steps_per_second"]:
        lines.append(f"| {key} | " + " | ".join(
            f"{results['trees'][t]['train_steps_per_second'][key]:.1f}" for t in labels) + " |")
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", type=Path, help="another source tree to measure the same way")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--report", action="store_true", help="only rewrite cli.md from cli.json")
    args = parser.parse_args()
    if args.report:
        write_markdown(json.loads((args.out / "cli.json").read_text()), args.out / "cli.md")
        return
    trees = {"after": ROOT / "src"}
    if args.before is not None:
        trees = {"before": args.before / "src", **trees}
    results = {"machine": describe(), "steps": args.steps, "repeats": args.repeats, "trees": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for label, src in trees.items():
            print(f"{label}: {src}", flush=True)
            results["trees"][label] = {"startup": startup(src, args.repeats, Path(tmp)),
                                       "train_steps_per_second": threads_table(src, args.steps, Path(tmp))}
    (args.out / "cli.json").write_text(json.dumps(results, indent=2) + "\n")
    write_markdown(results, args.out / "cli.md")
    print(f"wrote {args.out / 'cli.json'} and {args.out / 'cli.md'}")


if __name__ == "__main__":
    main()
