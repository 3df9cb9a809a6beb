"""Flow training with and without subnormal floats flushed to zero (``torch.set_flush_denormal``).

The ``deeprg`` commands that compute with torch flush subnormals (docs/runs.md, "Floating point:
subnormal numbers"). This measures why: the default flow of :class:`deeprg.flows.train.FlowTrainConfig`
at ``--L`` (16), ``--batch`` (256), seed 0, trained for ``--steps`` (100) steps on ``--threads`` (1)
torch threads, once with torch's default and once flushed, each in a fresh process (the mode is
set before torch starts its threads). Reported per mode: the mean seconds per step of every block
of 10 steps, the mean over the run, the final loss, and how many float32 values below the
smallest normal (1.18e-38) the operators of one step produced or consumed at ``--probe`` (step 70),
counted with a ``TorchDispatchMode`` (that step is not timed). Run alone on the machine:

    python benchmarks/bench_subnormals.py [--threads 2]

Results: benchmarks/results/subnormals[_threadsN].{json,md}.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import shlex
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from machine import describe

RESULTS = Path(__file__).parent / "results"


def train(flush: bool, L: int, batch: int, steps: int, threads: int, probe: int) -> dict:
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    torch.set_flush_denormal(flush)
    from deeprg.flows.train import FlowTrainConfig, Trainer

    torch.set_num_threads(threads)
    trainer = Trainer(FlowTrainConfig(L=L, batch=batch, steps=steps, threads=threads, seed=0))
    tiny = torch.finfo(torch.float32).tiny

    class Subnormals(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for x in (*args, *(out if isinstance(out, (tuple, list)) else (out,))):
                if isinstance(x, torch.Tensor) and x.dtype == torch.float32:
                    Subnormals.count += int(((x != 0) & (x.abs() < tiny)).sum())
            return out

    seconds, counted = [], None
    for step in range(1, steps + 1):
        if step == probe:
            with Subnormals():
                record = trainer.step()
            counted = Subnormals.count
            continue
        t0 = time.perf_counter()
        record = trainer.step()
        seconds.append(time.perf_counter() - t0)
    blocks = [sum(seconds[i:i + 10]) / len(seconds[i:i + 10]) for i in range(0, len(seconds), 10)]
    return {"flush": flush, "seconds_per_step": sum(seconds) / len(seconds), "block_means": blocks,
            "final_loss": record["loss"], "subnormals_at_probe": counted}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--L", type=int, default=16)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--probe", type=int, default=70, help="step whose subnormals are counted (untimed)")
    args = parser.parse_args()
    rows = []
    for flush in (False, True):
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            rows.append(pool.submit(train, flush, args.L, args.batch, args.steps, args.threads, args.probe).result())
        r = rows[-1]
        print(f"flush={flush}: {r['seconds_per_step']:.3f} s/step, loss {r['final_loss']!r}, "
              f"{r['subnormals_at_probe']} subnormals at step {args.probe}", flush=True)
    results = {"machine": describe(), "command": "python " + shlex.join(sys.argv), "settings": vars(args), "rows": rows}
    m = results["machine"]
    lines = ["# Flow training with and without subnormal floats flushed to zero", "",
             f"Machine: {m['cpu']}, {m['cores']} logical cores; torch {m['torch']}, deeprg {m['deeprg']}; {m['date']}.",
             f"Command: `{results['command']}`. Default flow, L = {args.L}, batch {args.batch}, seed 0, "
             f"{args.steps} steps, {args.threads} thread(s), a fresh process per mode; step {args.probe} untimed "
             "(its subnormal float32 values, inputs and outputs of every operator, are counted).", "",
             "| subnormals | s/step (run mean) | s/step per block of 10 steps | final loss | subnormals at the probed step |",
             "| --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {'flushed' if r['flush'] else 'torch default'} | {r['seconds_per_step']:.3f} | "
                     f"{' '.join(f'{b:.2f}' for b in r['block_means'])} | {r['final_loss']!r} | "
                     f"{r['subnormals_at_probe']:,} |")
    stem = "subnormals" + (f"_threads{args.threads}" if args.threads != 1 else "")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(results, indent=1) + "\n")
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
