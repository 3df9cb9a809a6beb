"""``deeprg flow train|estimate|sample|hmc|mh|analyze``: NeuralRG flows on the relaxed Ising model.

``train`` is the package's main job; the others load a run directory written by ``train``.
"""

from __future__ import annotations

import argparse

from deeprg.cli import flow_tools
from deeprg.cli.common import (
    coupling,
    cpu_threads,
    device,
    int_at_least,
    positive_float,
    seed,
)
from deeprg.cli.training import Option, TrainCommand, add_train_options, train
from deeprg.flows.hierarchy import ARCHITECTURES
from deeprg.flows.objectives import OBJECTIVES, PI_SOURCES
from deeprg.flows.train import FlowTrainConfig

BOOL = {"action": argparse.BooleanOptionalAction, "default": None}


def odd_kernel(value: str) -> int:
    """argparse type: an odd integer >= 1."""
    k = int_at_least(1)(value)
    if k % 2 == 0:
        raise argparse.ArgumentTypeError(f"must be an odd integer >= 1, got {k}")
    return k


def spline_bins(value: str) -> int:
    """argparse type: 0 or an integer >= 2."""
    k = int_at_least(0)(value)
    if k == 1:
        raise argparse.ArgumentTypeError("must be 0 (affine) or an integer >= 2, got 1")
    return k


OPTIONS = [
    Option("L", ("--L",), "linear size, a power of two", {"type": int_at_least(2)}),
    Option("d", ("--d",), "dimension", {"type": int, "choices": (1, 2)}),
    Option("beta", ("--beta",), "coupling K: 'critical' or a number > 0", {"type": coupling}),
    Option("arch", ("--arch",), "network structure", {"choices": ARCHITECTURES}),
    Option("depth", ("--depth",), "layers of the tebd structure", {"type": int_at_least(1)}, "[2 log2 L]"),
    Option("steps", ("--steps",), "training steps", {"type": int_at_least(1)}),
    Option("batch", ("--batch",), "samples per step", {"type": int_at_least(2)}),
    Option("lr", ("--lr",), "initial Adam learning rate", {"type": positive_float}),
    Option("symmetrize", ("--symmetrize",), "Z2-symmetrize the density, q(x) = [q0(x) + q0(-x)]/2", BOOL),
    Option("linear", ("--linear",), "learned translation-invariant linear map at the physical end", BOOL),
    Option("elementwise", ("--elementwise",), "learned odd monotone map on every site, inside the linear map",
           BOOL),
    Option("hidden", ("--hidden",), "hidden widths of the coupling MLPs", {"type": int_at_least(1), "nargs": "+"}),
    Option("kernel", ("--kernel",), "conditioner reach: 1 = an MLP on each block alone (the paper), odd k > 1 = a "
           "k^d convolution over neighbouring blocks", {"type": odd_kernel}),
    Option("spline_bins", ("--spline-bins",), "0 = affine couplings (the paper); K >= 2 = a rational-quadratic "
           "spline of K bins in each coupling", {"type": spline_bins}),
    Option("n_couplings", ("--couplings",), "affine couplings per block", {"type": int_at_least(1)}),
    Option("objective", ("--objective",), "reverse KL (Eq. 5), forward KL on samples of pi, or their mixture",
           {"choices": OBJECTIVES}),
    Option("forward_weight", ("--forward-weight",), "weight of the forward KL in the mixture, in (0, 1)",
           {"type": positive_float}),
    Option("pi_source", ("--pi-source",), "samples of pi for the forward KL: the exact reference sampler or "
           "latent HMC chains run alongside", {"choices": PI_SOURCES}),
    Option("diagnostics_every", ("--diagnostics-every",), "log reverse ESS, tail index and the flow's structure "
           "factor every this many steps, 0 = off", {"type": int_at_least(0)}),
    Option("init_from", ("--init-from",), "start from the trained flow of this run directory on an L/2 (or L) "
           "lattice (Li & Wang, footnote 53)", {"metavar": "RUN"}, "[random]"),
    Option("seed", ("--seed",), "random seed, 0 <= seed < 2^64", {"type": seed}),
    Option("dtype", ("--dtype",), "floating-point precision", {"choices": ("float32", "float64")}),
    Option("device", ("--device",), "torch device: cpu, cuda or cuda:N", {"type": device}),
    Option("threads", ("--threads",), "torch CPU threads, 1 .. the number of CPUs (more help only large lattices on an "
           "idle machine)", {"type": cpu_threads}),
]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("flow", help="NeuralRG: MERA-structured normalizing flows")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    q = actions.add_parser(
        "train",
        help="train a flow by the variational free energy (the package's main job)",
        description="Train a NeuralRG flow on the continuous relaxation of the Ising model "
        "(Li & Wang Eq. 7) by minimizing the variational free energy (Eq. 5). Writes RUN/config.json, "
        "RUN/checkpoint.pt, RUN/metrics.json and RUN/training_curve.png. Options override the "
        "--config file, which overrides the defaults; --resume continues the run's saved config.",
    )
    add_train_options(q, COMMAND, out_default="flow-run")
    q.set_defaults(run=lambda args: train(args, COMMAND), distributed=True)
    flow_tools.add_actions(actions)


def _describe(trainer) -> str:
    cfg = trainer.cfg
    n_params = sum(p.numel() for p in trainer.flow.parameters())
    exact = trainer.exact_free_energy
    known = f"; exact -ln Z = {exact:.6f}" if exact is not None else ""
    return (f"NeuralRG {cfg.arch} flow on the relaxed Ising model, {cfg.L}^{cfg.d} lattice, K = {cfg.beta:.6g}, "
            f"{n_params} parameters, seed {cfg.seed}{known}")


def _postfix(record: dict) -> dict | None:
    if record["step"] % 10:
        return None
    post = {"F": f"{record['loss']:.4f}"}
    if "relative_error" in record:
        post["rel_err"] = f"{record['relative_error']:.2e}"
    if "reverse_ess" in record:
        post["ESS"] = f"{record['reverse_ess']:.2f}"
    return post


def _finish(trainer, run, context) -> tuple[dict, list[str]]:
    from deeprg.flows.train import variational_free_energy
    from deeprg.plots import training_curve
    from deeprg.runs import write_json

    cfg, exact = trainer.cfg, trainer.exact_free_energy
    estimate = variational_free_energy(trainer.flow, trainer.target, cfg.eval_samples, generator=trainer.generator)
    metrics = {
        "variational_free_energy": {"mean": estimate.mean, "error": estimate.error},
        "exact_free_energy": exact,
        "relative_error": None if exact is None else (estimate.mean - exact) / abs(exact),
        "steps": trainer.step_count,
        "wall_seconds": trainer.wall_seconds,
        "eval_samples": cfg.eval_samples,
        "seed": cfg.seed,
        "objective": cfg.objective,
    }
    last = next((r for r in reversed(trainer.history) if "reverse_ess" in r), None)
    if last is not None:
        metrics["diagnostics"] = {k: last[k] for k in ("step", "reverse_ess", "pareto_k", "structure_factor",
                                                       "reference_structure_factor") if k in last}
    write_json(run.path / "metrics.json", metrics)
    training_curve(trainer.history, exact, run.path / "training_curve.png",
                   title=f"{cfg.arch}, L={cfg.L}, K={cfg.beta:.4g}, batch {cfg.batch}")
    lines = [f"variational free energy F_q = {estimate}  (bound on -ln Z)"]
    if exact is not None:
        lines += [f"exact free energy      -ln Z = {exact:.6f}",
                  f"relative error               = {metrics['relative_error']:.3e}"]
    if last is not None:
        d = metrics["diagnostics"]
        line = f"at step {d['step']}: reverse ESS {d['reverse_ess']:.3f} of the batch, Pareto tail index {d['pareto_k']:.2f}"
        if "structure_factor" in d:
            line += (f"; flow structure factor {d['structure_factor']:.4f} (reference "
                     f"{d['reference_structure_factor']:.4f})")
        lines.append(line)
    lines.append(f"{trainer.step_count} steps in {trainer.wall_seconds:.1f} s; run directory {run.path}")
    return metrics, lines


def _prepare(args) -> dict:
    """Under ``torchrun`` the threads per process default to the cores shared by the node's
    processes (:func:`deeprg.distributed.default_threads`) unless ``--threads`` or the config
    file sets them."""
    from deeprg.config import read_toml
    from deeprg.distributed import current, default_threads

    world = current()
    if not world.distributed or args.threads is not None:
        return {}
    if args.config is not None and "threads" in read_toml(args.config):
        return {}
    return {"threads": default_threads(world)}


def _build(cfg, context):
    from deeprg.flows.train import Trainer

    return Trainer(cfg)


COMMAND = TrainCommand(
    kind="flow",
    config_class=FlowTrainConfig,
    options=OPTIONS,
    unit="step",
    prepare=_prepare,
    memory=lambda cfg, context: cfg.memory_estimate(),
    build=_build,
    provenance=lambda trainer, context: {},
    describe=_describe,
    postfix=_postfix,
    finish=_finish,
)
