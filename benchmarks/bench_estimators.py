"""ln Z of a trained flow's target by every estimator of ``deeprg flow estimate``, over independent
estimation seeds, against the exact value (issue 13's trust benchmark).

Run from the repository root on a run directory of ``deeprg flow train`` (16x16 at K_c in the
committed results)::

    python benchmarks/bench_estimators.py --run runs/bench/L16 --methods bridge-reference --seeds 10
    python benchmarks/bench_estimators.py --run runs/bench/L16 --methods is bridge-hmc smc --seeds 3
    python benchmarks/bench_estimators.py --report          # merge all into estimators.md

Each call appends its rows to ``benchmarks/results/estimators_<run name>_<methods>.json`` (so calls
with different methods or runs can run side by side; one row per method and seed:
value, error, deviation from the exact ln Z in units of the error, the method's diagnostics and
verdict, wall and CPU seconds); ``--report`` writes ``estimators.md`` with, per method, the
fraction of seeds within 2 sigma, the median error and the mean CPU time, one section per run. Methods:

* ``is``: importance sampling, ``--is-samples`` flow samples;
* ``bridge-reference``: bridge sampling, ``--flow-samples`` flow samples against as many exact
  samples of pi from the reference sampler (Wolff spins, ``x = A s + chol(A) eps``);
* ``bridge-hmc``: the same with pi samples from 64 latent HMC chains (no reference sampler);
* ``smc``: sequential Monte Carlo from the flow, ``--particles`` per replica, ``--replicas``;
* ``smc-gaussian``: sequential Monte Carlo from N(0, 1) with physical HMC: no flow at all.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from machine import describe

from deeprg.flows.bridge import bridge_sampling
from deeprg.flows.estimators import importance_ln_z
from deeprg.flows.sampling import latent_hmc_fields
from deeprg.flows.smc import smc_from_flow, smc_from_gaussian
from deeprg.flows.train import load_run
from deeprg.flows.trust import verdict
from deeprg.models.relaxed import reference_sampler

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ("is", "bridge-reference", "bridge-hmc", "smc", "smc-gaussian")


def estimate(method: str, trainer, seed: int, args) -> tuple:
    flow, target = trainer.flow, trainer.target
    gen = torch.Generator().manual_seed(seed)
    if method == "is":
        est = importance_ln_z(flow, target, args.is_samples, generator=gen)
        n = args.is_samples
        return est.ln_z, {"ess": est.ess_fraction * n, "pareto_k": est.pareto_k}, {"samples": n}
    if method.startswith("bridge"):
        n = args.flow_samples
        if method == "bridge-reference":
            pi = reference_sampler(target)(n, seed)
        else:
            pi = latent_hmc_fields(flow, target, max(1, n // 64), 64, thin=5, n_leapfrog=5, generator=gen)
        est = bridge_sampling(flow, target, n, pi, gen)
        return est.ln_z, {"forward_ess": est.forward_ess * est.n2_eff, "reverse_ess": est.reverse_ess * est.n1}, {
            "flow_samples": est.n1, "pi_samples": est.n2, "pi_effective": est.n2_eff,
            "forward_ess_fraction": est.forward_ess, "reverse_ess_fraction": est.reverse_ess,
            "forward_pareto_k": est.forward_pareto_k, "reverse_pareto_k": est.reverse_pareto_k}
    moves = {"n_moves": args.moves, "n_leapfrog": args.leapfrog}
    if method == "smc":
        est = smc_from_flow(flow, target, args.particles, args.replicas, seed=seed, **moves)
    else:
        est = smc_from_gaussian(target, 1.0, args.particles, args.replicas, seed=seed, **moves)
    return est.ln_z, {"replicas": args.replicas, "acceptance": est.acceptance}, {
        "particles": args.particles, "replicas": args.replicas, "moves": args.moves, "leapfrog": args.leapfrog,
        "temperatures": list(est.n_temperatures),
        "acceptance": est.acceptance}


def run(args) -> None:
    trainer = load_run(args.run, threads=args.threads)
    exact = trainer.exact_ln_z
    tag = f"-{args.tag}" if args.tag else ""
    path = RESULTS / f"estimators_{args.run.name}_{'_'.join(args.methods)}{tag}.json"
    data = json.loads(path.read_text()) if path.exists() else {"rows": []}
    data["machine"] = describe()
    data["run"] = {"path": str(args.run), "L": trainer.cfg.L, "K": trainer.cfg.beta, "steps": trainer.step_count,
                   "exact_ln_z": exact,
                   "relative_error": next((r.get("relative_error") for r in reversed(trainer.history)), None)}
    for method in args.methods:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                ln_z, diagnostics, details = estimate(method, trainer, seed, args)
            except ValueError as err:  # e.g. an SMC ladder that cannot advance: a result too
                row = {"method": method + tag, "seed": seed, "failed": str(err)}
            else:
                trusted, line = verdict(method.split("-")[0] if method != "smc-gaussian" else "smc",
                                        {**diagnostics, "ln_z_error": ln_z.error})
                row = {"method": method + tag, "seed": seed, "ln_z": ln_z.mean, "error": ln_z.error,
                       "deviation_sigma": (ln_z.mean - exact) / ln_z.error if ln_z.error > 0 else None,
                       "trusted": trusted, "verdict": line, "diagnostics": diagnostics, **details}
            row.update(seconds=time.perf_counter() - t0, cpu_seconds=time.process_time() - c0)
            print(json.dumps(row), flush=True)
            data["rows"].append(row)
            path.write_text(json.dumps(data, indent=2) + "\n")


def table(data: dict) -> list[str]:
    """The Markdown section of one flow run: a row per method."""
    for row in data["rows"]:  # verdicts by the current deeprg.flows.trust, from the recorded diagnostics
        if "diagnostics" in row:
            row["trusted"], row["verdict"] = verdict(row["method"].split("-")[0],
                                                     {**row["diagnostics"], "ln_z_error": row["error"]})
    m, r = data["machine"], data["run"]
    lines = [f"## `{r['path']}`", "",
             f"{r['L']}x{r['L']} relaxed Ising at K = {r['K']:.10g}, {r['steps']} training steps, "
             f"relative error of the variational free energy in training {r['relative_error']:.2e}; exact ln Z "
             f"= {r['exact_ln_z']:.6f} (Kaufman). Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, "
             f"{m['date']}.", "",
             "| method | settings | seeds | within 2 sigma | median error | mean CPU s | trusted | values (deviation in sigma) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for method in dict.fromkeys(x["method"] for x in data["rows"]):
        rows = [x for x in data["rows"] if x["method"] == method]
        done = [x for x in rows if "ln_z" in x]
        within = sum(abs(x["deviation_sigma"]) <= 2 for x in done)
        values = ", ".join(f"{x['ln_z']:.4f}({x['deviation_sigma']:+.1f})" for x in done)
        failed = len(rows) - len(done)
        first = rows[0]
        if "flow_samples" in first:
            settings = f"{first['flow_samples']} flow + {first['pi_samples']} pi samples"
        elif "particles" in first:
            settings = (f"{first['particles']} particles x {first['replicas']} replicas, "
                        f"{first.get('moves', 3)} moves x {first.get('leapfrog', 5)} leapfrog")
        else:
            settings = f"{first.get('samples', '?')} samples"
        lines.append(
            f"| {method} | {settings} | {len(rows)} | {within} of {len(done)}{f' ({failed} failed)' if failed else ''} | "
            f"{statistics.median(x['error'] for x in done) if done else float('nan'):.4f} | "
            f"{statistics.mean(x['cpu_seconds'] for x in rows):.0f} | "
            f"{sum(x.get('trusted', False) for x in done)} of {len(done)} | {values} |")
    verdicts = sorted({x["verdict"] for x in data["rows"] if "verdict" in x and not x["trusted"]})
    if verdicts:
        lines += ["", "Verdicts of the untrusted estimates:", ""] + [f"- {v}" for v in verdicts]
    return lines + [""]


def report() -> None:
    """``estimators.md``: one section per flow run, from every ``estimators_*.json``."""
    runs: dict[str, dict] = {}
    for part in sorted(RESULTS.glob("estimators_*.json")):
        data = json.loads(part.read_text())
        merged = runs.setdefault(data["run"]["path"], {"machine": data["machine"], "run": data["run"], "rows": []})
        if merged["run"] != data["run"]:
            raise SystemExit(f"{part.name} holds another training state of {data['run']['path']}; remove the stale file")
        merged["rows"] += data["rows"]
    lines = ["# ln Z estimators against the exact value", "",
             "Per flow run, every estimate over independent estimation seeds. Commands: see "
             "`benchmarks/bench_estimators.py`.", ""]
    for data in runs.values():
        lines += table(data)
    (RESULTS / "estimators.md").write_text("\n".join(lines))
    print(f"wrote {RESULTS / 'estimators.md'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, help="run directory of 'deeprg flow train'")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=["bridge-reference"])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--is-samples", type=int, default=100_000)
    parser.add_argument("--flow-samples", type=int, default=20_000)
    parser.add_argument("--particles", type=int, default=512)
    parser.add_argument("--replicas", type=int, default=8)
    parser.add_argument("--moves", type=int, default=3, help="SMC: HMC moves per temperature")
    parser.add_argument("--leapfrog", type=int, default=5, help="SMC: leapfrog steps per HMC move")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tag", help="suffix of the method names and the JSON file (e.g. the sample size)")
    parser.add_argument("--report", action="store_true", help="only write estimators.md from estimators.json")
    args = parser.parse_args()
    if args.report:
        report()
        return
    if args.run is None:
        parser.error("--run is required")
    run(args)
    report()


if __name__ == "__main__":
    main()
