"""``deeprg cora train``: CORA, the classical stochastic MERA learned from samples (Beny 2013).

``train`` fits a network to a dataset and writes a run directory (``config.json``,
``checkpoint.pt``, ``metrics.json``, ``training_curve.png``); ``sample``, ``eval`` and ``digits``
live in :mod:`deeprg.cli.cora_tools`.
"""

from __future__ import annotations

import argparse

from deeprg.cli import cora_tools
from deeprg.cli.common import (
    UsageError,
    cpu_threads,
    device,
    int_at_least,
    positive_float,
    seed,
)
from deeprg.cli.training import Option, TrainCommand, add_train_options, train
from deeprg.cora.learn import METHODS, CoraTrainConfig

OPTIONS = [
    Option("chi", ("--chi",), "hidden dimension", {"type": int_at_least(2)}),
    Option("window", ("--window",), "training window w (w x w in 2D)", {"type": int_at_least(1)},
           "[4 in 1D, 2 in 2D]"),
    Option("method", ("--method",), "joint (method 2) or layerwise (method 1)", {"choices": METHODS}),
    Option("tree", ("--tree",), "tree variant: no disentanglers", {"action": "store_const", "const": True}),
    Option("shared", ("--unshared",), "one table per position instead of one per layer",
           {"action": "store_const", "const": False}, "[off]"),
    Option("epochs", ("--epochs",), "epochs per stage", {"type": int_at_least(1)}),
    Option("passes", ("--passes",), "layerwise passes over all layers", {"type": int_at_least(1)}),
    Option("batch", ("--batch",), "configurations per step, 0 = all", {"type": int_at_least(0)}),
    Option("lr", ("--lr",), "Adam learning rate", {"type": positive_float}),
    Option("init", ("--init",), "initial maps", {"choices": ("copy", "random")}),
    Option("seed", ("--seed",), "random seed, 0 <= seed < 2^64", {"type": seed}),
    Option("dtype", ("--dtype",), "floating-point precision", {"choices": ("float32", "float64")}),
    Option("device", ("--device",), "torch device: cpu, cuda or cuda:N", {"type": device}),
    Option("threads", ("--threads",), "torch CPU threads, 1 .. the number of CPUs", {"type": cpu_threads}),
]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cora", help="CORA: a stochastic MERA learned from samples (Beny 2013)")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    q = actions.add_parser(
        "train", help="fit a CORA to a dataset by the likelihood of its exact window marginals",
        description="Fit a CORA (classical stochastic MERA) to two-state data on a periodic L or L x L "
        "lattice (L a power of two) by maximizing the likelihood of the data's windows under the "
        "model's exact window marginals (method 2: joint; method 1: layerwise). Options override the "
        "--config file, which overrides the defaults; --resume continues the run's saved config.")
    q.add_argument("--data", required=True, help="training data: a deeprg spin dataset or any .npz of 0/1 or -1/+1")
    q.add_argument("--key", help="array of --data to use [spins, else pixels, else the only array]")
    add_train_options(q, COMMAND, out_default="cora-run")
    q.set_defaults(run=lambda args: train(args, COMMAND))
    cora_tools.add_actions(actions)


def _prepare(args: argparse.Namespace) -> dict:
    from deeprg.cora.datasets import load_binary

    try:
        data = load_binary(args.data, args.key)
    except ValueError as err:  # DatasetError included
        raise UsageError(f"--data: {err}") from None
    return {"lattice_shape": list(data.shape), "encoding": data.encoding, "context": (args, data)}


def _build(cfg, context):
    import torch

    from deeprg.cora.learn import Trainer

    _, data = context
    return Trainer(cfg, torch.as_tensor(data.indices))


def _provenance(trainer, context) -> dict:
    args, data = context
    return {"data": str(args.data), "data_key": args.key, "data_sha256": trainer.digest, "n_data": data.n,
            "data_metadata": {k: v for k, v in data.metadata.items() if k in ("model", "K", "d", "lattice_shape")}}


def _describe(trainer) -> str:
    cfg = trainer.cfg
    n_params = sum(p.numel() for p in trainer.net.parameters())
    return (f"CORA ({'tree' if cfg.tree else 'MERA'}, {cfg.method}) on {trainer.data.shape[0]} configurations of "
            f"{'x'.join(map(str, cfg.lattice_shape))}, chi = {cfg.chi}, window {cfg.window}, {n_params} parameters, "
            f"seed {cfg.seed}")


def _finish(trainer, run, context) -> tuple[dict, list[str]]:
    from deeprg.cora.evaluate import chain_window_entropy
    from deeprg.plots import window_nll_curve
    from deeprg.runs import write_json

    cfg, (_, data) = trainer.cfg, context
    metrics = {
        "train_window_nll_per_site": trainer.history[-1]["loss"],
        "epochs": len(trainer.history),
        "wall_seconds": trainer.wall_seconds,
        "seconds_per_epoch": trainer.wall_seconds / len(trainer.history),
        "n_parameters": sum(p.numel() for p in trainer.net.parameters()),
        "seed": cfg.seed,
    }
    reference = None
    meta = data.metadata
    if meta.get("model") == "ising" and meta.get("d") == 1:
        reference = chain_window_entropy(cfg.lattice_shape[0], float(meta["K"]), cfg.window) / cfg.window
        metrics["exact_window_entropy_per_site"] = reference
    write_json(run.path / "metrics.json", metrics)
    window_nll_curve(trainer.history, run.path / "training_curve.png", reference if cfg.method == "joint" else None,
                     title=f"CORA {cfg.method}, chi={cfg.chi}, window {cfg.window}")
    lines = [f"training window NLL per site {metrics['train_window_nll_per_site']:.6f}"
             + (f" (exact window entropy per site {reference:.6f})" if reference is not None else ""),
             f"{metrics['epochs']} epochs in {trainer.wall_seconds:.1f} s; run directory {run.path}"]
    return metrics, lines


COMMAND = TrainCommand(
    kind="cora",
    config_class=CoraTrainConfig,
    options=OPTIONS,
    unit="epoch",
    prepare=_prepare,
    memory=lambda cfg, context: (cfg.memory_estimate(), "chi, lattice_shape, shared"),
    build=_build,
    provenance=_provenance,
    describe=_describe,
    postfix=lambda record: {"nll/site": f"{record['loss']:.4f}", "layer": record["layer"] or "all"},
    finish=_finish,
)
