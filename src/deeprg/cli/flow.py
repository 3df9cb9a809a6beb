"""``deeprg flow train|estimate|sample|hmc|mh|analyze``: NeuralRG flows on the relaxed Ising model.

``train`` is the package's main job; the others load a run directory written by ``train``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from deeprg.cli import flow_tools
from deeprg.cli.common import (
    StopOnSignal,
    UsageError,
    check_run_dir,
    coupling,
    int_at_least,
    positive_float,
    print_json,
)
from deeprg.config import ConfigError, load_config
from deeprg.flows.hierarchy import ARCHITECTURES
from deeprg.flows.train import (
    CHECKPOINT_NAME,
    CheckpointMismatch,
    FlowTrainConfig,
    NonFiniteLoss,
    Trainer,
    variational_free_energy,
    write_run_config,
)
from deeprg.plots import training_curve
from deeprg.runs import write_json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("flow", help="NeuralRG: MERA-structured normalizing flows")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    q = actions.add_parser(
        "train",
        help="train a flow by the variational free energy (the package's main job)",
        description="Train a NeuralRG flow on the continuous relaxation of the Ising model "
        "(Li & Wang Eq. 7) by minimizing the variational free energy (Eq. 5). Writes RUN/config.json, "
        "RUN/checkpoint.pt, RUN/metrics.json and RUN/training_curve.png. Options override the "
        "--config file, which overrides the defaults.",
    )
    q.add_argument("--config", help="TOML file with any FlowTrainConfig keys")
    q.add_argument("--L", type=int_at_least(2), help="linear size, a power of two [8]")
    q.add_argument("--d", type=int, choices=(1, 2), help="dimension [2]")
    q.add_argument("--beta", type=coupling, help="coupling K: 'critical' or a number > 0 [critical]")
    q.add_argument("--arch", choices=ARCHITECTURES, help="network structure [mera]")
    q.add_argument("--depth", type=int_at_least(1), help="layers of the tebd structure [2 log2 L]")
    q.add_argument("--steps", type=int_at_least(1), help="training steps [1000]")
    q.add_argument("--batch", type=int_at_least(2), help="samples per step [256]")
    q.add_argument("--lr", type=positive_float, help="initial Adam learning rate [2e-3]")
    q.add_argument("--symmetrize", action=argparse.BooleanOptionalAction, default=None,
                   help="Z2-symmetrize the density, q(x) = [q0(x) + q0(-x)]/2 [on]")
    q.add_argument("--linear", action=argparse.BooleanOptionalAction, default=None,
                   help="learned translation-invariant linear map at the physical end [on]")
    q.add_argument("--elementwise", action=argparse.BooleanOptionalAction, default=None,
                   help="learned odd monotone map on every site, inside the linear map [on]")
    q.add_argument("--hidden", type=int_at_least(1), nargs="+", help="hidden widths of the coupling MLPs [32 32]")
    q.add_argument("--couplings", dest="n_couplings", type=int_at_least(1), help="affine couplings per block [4]")
    q.add_argument("--seed", type=int_at_least(0), help="random seed [0]")
    q.add_argument("--dtype", choices=("float32", "float64"), help="[float32]")
    q.add_argument("--device", help="torch device, e.g. cpu or cuda [cpu]")
    q.add_argument("--threads", type=int_at_least(1), help="torch CPU threads [torch default]")
    q.add_argument("--out", default="flow-run", help="run directory [flow-run]")
    q.add_argument("--resume", action="store_true", help="continue from RUN/checkpoint.pt")
    q.add_argument("--force", action="store_true", help="start over even if RUN has a checkpoint")
    q.add_argument("--json", action="store_true", help="print the final metrics as JSON")
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    q.set_defaults(run=run_train)

    flow_tools.add_actions(actions)

OVERRIDES = ("L", "d", "beta", "arch", "depth", "steps", "batch", "lr", "symmetrize", "linear", "elementwise", "hidden",
             "n_couplings", "seed", "dtype", "device", "threads")


def resolve_config(args: argparse.Namespace) -> FlowTrainConfig:
    try:
        return load_config(FlowTrainConfig, args.config, {k: getattr(args, k) for k in OVERRIDES})
    except (ConfigError, ValueError) as err:
        raise UsageError(str(err)) from None


def run_train(args: argparse.Namespace) -> int:
    cfg = resolve_config(args)
    run_dir = Path(args.out)
    checkpoint = check_run_dir(run_dir, args.resume, args.force, CHECKPOINT_NAME)
    trainer = Trainer(cfg)
    if args.resume:
        try:
            trainer.load(checkpoint)
        except CheckpointMismatch as err:
            raise UsageError(str(err)) from None
    run_dir.mkdir(parents=True, exist_ok=True)
    write_run_config(run_dir, cfg, command=sys.argv)

    exact = trainer.exact_free_energy
    if not args.quiet:
        n_params = sum(p.numel() for p in trainer.flow.parameters())
        known = f"; exact -ln Z = {exact:.6f}" if exact is not None else ""
        print(f"NeuralRG {cfg.arch} flow on the relaxed Ising model, {cfg.L}^{cfg.d} lattice, K = {cfg.beta:.6g}, "
              f"{n_params} parameters, seed {cfg.seed}{known}", file=sys.stderr)
    bar = tqdm(total=cfg.steps, initial=trainer.step_count, disable=args.quiet, desc="train", unit="step",
               file=sys.stderr, dynamic_ncols=True)

    def on_step(record: dict) -> None:
        bar.update(1)
        if record["step"] % 10 == 0:
            post = {"F": f"{record['loss']:.4f}"}
            if "relative_error" in record:
                post["rel_err"] = f"{record['relative_error']:.2e}"
            bar.set_postfix(post, refresh=False)

    try:
        with StopOnSignal() as stop:
            trainer.train(on_step=on_step, should_stop=lambda: stop.requested, checkpoint=checkpoint)
    except NonFiniteLoss as err:
        bar.close()
        saved = "the last good checkpoint is kept in " + str(checkpoint) if checkpoint.exists() else "no checkpoint was saved"
        print(f"deeprg: error: training stopped: {err}; {saved}", file=sys.stderr)
        return 1
    bar.close()
    if stop.requested:
        print(f"deeprg: interrupted at step {trainer.step_count}; checkpoint saved in {checkpoint}; "
              "continue with --resume", file=sys.stderr)
        return 130

    estimate = variational_free_energy(trainer.flow, trainer.target, cfg.eval_samples, generator=trainer.generator)
    metrics = {
        "variational_free_energy": {"mean": estimate.mean, "error": estimate.error},
        "exact_free_energy": exact,
        "relative_error": None if exact is None else (estimate.mean - exact) / abs(exact),
        "steps": trainer.step_count,
        "wall_seconds": trainer.wall_seconds,
        "eval_samples": cfg.eval_samples,
        "seed": cfg.seed,
    }
    write_json(run_dir / "metrics.json", metrics)
    training_curve(trainer.history, exact, run_dir / "training_curve.png",
                   title=f"{cfg.arch}, L={cfg.L}, K={cfg.beta:.4g}, batch {cfg.batch}")
    if args.json:
        print_json(metrics)
    else:
        print(f"variational free energy F_q = {estimate}  (bound on -ln Z)")
        if exact is not None:
            print(f"exact free energy      -ln Z = {exact:.6f}")
            print(f"relative error               = {metrics['relative_error']:.3e}")
        print(f"{trainer.step_count} steps in {trainer.wall_seconds:.1f} s; run directory {run_dir}")
    return 0

