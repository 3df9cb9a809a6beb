"""``deeprg cora train|sample|eval|digits``: CORA, the classical stochastic MERA learned from samples.

``train`` fits a network to a dataset and writes a run directory; ``sample`` and ``eval`` load it;
``digits`` writes the scikit-learn digits as binary-image datasets.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from deeprg.cli import cora_tools
from deeprg.cli.common import (
    StopOnSignal,
    UsageError,
    check_run_dir,
    int_at_least,
    positive_float,
    print_json,
)
from deeprg.config import ConfigError, load_config
from deeprg.cora.datasets import (
    BinaryData,
    load_binary,
)
from deeprg.cora.evaluate import chain_window_entropy
from deeprg.cora.learn import (
    METHODS,
    CheckpointMismatch,
    CoraTrainConfig,
    NonFiniteLoss,
    Trainer,
)
from deeprg.plots import (
    window_nll_curve,
)
from deeprg.runs import run_provenance, write_json

CHECKPOINT = "checkpoint.pt"
OVERRIDES = ("chi", "window", "method", "tree", "shared", "epochs", "passes", "batch", "lr", "init", "seed", "dtype",
             "device", "threads")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cora", help="CORA: a stochastic MERA learned from samples (Beny 2013)")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")

    q = actions.add_parser(
        "train", help="fit a CORA to a dataset by the likelihood of its exact window marginals",
        description="Fit a CORA (classical stochastic MERA) to two-state data on a periodic L or L x L "
        "lattice (L a power of two) by maximizing the likelihood of the data's windows under the "
        "model's exact window marginals (method 2: joint; method 1: layerwise).")
    q.add_argument("--data", required=True, help="training data: a deeprg spin dataset or any .npz of 0/1 or -1/+1")
    q.add_argument("--key", help="array of --data to use [spins, else pixels, else the only array]")
    q.add_argument("--config", help="TOML file with CoraTrainConfig keys (flags override it)")
    q.add_argument("--chi", type=int_at_least(2), help="hidden dimension [2]")
    q.add_argument("--window", type=int_at_least(1), help="training window w (w x w in 2D) [4 in 1D, 2 in 2D]")
    q.add_argument("--method", choices=METHODS, help="joint (method 2) or layerwise (method 1) [joint]")
    q.add_argument("--tree", action="store_const", const=True, help="tree variant: no disentanglers")
    q.add_argument("--unshared", dest="shared", action="store_const", const=False,
                   help="one table per position instead of one per layer")
    q.add_argument("--epochs", type=int_at_least(1), help="epochs per stage [300]")
    q.add_argument("--passes", type=int_at_least(1), help="layerwise passes over all layers [2]")
    q.add_argument("--batch", type=int_at_least(0), help="configurations per step, 0 = all [0]")
    q.add_argument("--lr", type=positive_float, help="Adam learning rate [0.05]")
    q.add_argument("--init", choices=("copy", "random"), help="initial maps [copy]")
    q.add_argument("--seed", type=int_at_least(0), help="random seed [0]")
    q.add_argument("--dtype", choices=("float32", "float64"), help="[float64]")
    q.add_argument("--device", help="torch device, e.g. cpu or cuda [cpu]")
    q.add_argument("--threads", type=int_at_least(1), help="torch CPU threads [1]")
    q.add_argument("--out", default="cora-run", help="run directory [cora-run]")
    q.add_argument("--resume", action="store_true", help="continue from RUN/checkpoint.pt")
    q.add_argument("--force", action="store_true", help="start over even if RUN has a checkpoint")
    q.add_argument("--json", action="store_true", help="print the final metrics as JSON")
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    q.set_defaults(run=run_train)

    cora_tools.add_actions(actions)

def _load_data(path: str, key: str | None, option: str = "--data") -> BinaryData:
    try:
        return load_binary(path, key)
    except ValueError as err:  # DatasetError included
        raise UsageError(f"{option}: {err}") from None


def _resolve_config(args: argparse.Namespace, data: BinaryData) -> CoraTrainConfig:
    overrides = {k: getattr(args, k) for k in OVERRIDES}
    overrides.update(lattice_shape=list(data.shape), encoding=data.encoding)
    try:
        return load_config(CoraTrainConfig, args.config, overrides)
    except (ConfigError, ValueError) as err:
        raise UsageError(str(err)) from None


def run_train(args: argparse.Namespace) -> int:
    data = _load_data(args.data, args.key)
    cfg = _resolve_config(args, data)
    run_dir = Path(args.out)
    checkpoint = check_run_dir(run_dir, args.resume, args.force, CHECKPOINT)
    trainer = Trainer(cfg, torch.as_tensor(data.indices))
    if args.resume:
        try:
            trainer.load(checkpoint)
        except CheckpointMismatch as err:
            raise UsageError(f"--resume: {err}") from None
    run_dir.mkdir(parents=True, exist_ok=True)
    source = {"data": str(args.data), "data_key": args.key, "data_sha256": trainer.digest, "n_data": data.n,
              "data_metadata": {k: v for k, v in data.metadata.items() if k in ("model", "K", "d", "lattice_shape")}}
    write_json(run_dir / "config.json", {**cfg.to_dict(), **source, **run_provenance(), "command": sys.argv})
    if not args.quiet:
        n_params = sum(p.numel() for p in trainer.net.parameters())
        print(f"CORA ({'tree' if cfg.tree else 'MERA'}, {cfg.method}) on {data.n} configurations of "
              f"{'x'.join(map(str, cfg.lattice_shape))}, chi = {cfg.chi}, window {cfg.window}, {n_params} parameters, "
              f"seed {cfg.seed}", file=sys.stderr)
    bar = tqdm(total=trainer.total_epochs, initial=len(trainer.history), disable=args.quiet, desc="train",
               unit="epoch", file=sys.stderr, dynamic_ncols=True)

    def on_epoch(record: dict) -> None:
        bar.update(1)
        bar.set_postfix({"nll/site": f"{record['loss']:.4f}", "layer": record["layer"] or "all"}, refresh=False)

    try:
        with StopOnSignal() as stop:
            trainer.train(on_epoch=on_epoch, should_stop=lambda: stop.requested, checkpoint=checkpoint)
    except NonFiniteLoss as err:
        bar.close()
        kept = f"the last good checkpoint is kept in {checkpoint}" if checkpoint.exists() else "no checkpoint was saved"
        print(f"deeprg: error: training stopped: {err}; {kept}", file=sys.stderr)
        return 1
    bar.close()
    if stop.requested:
        print(f"deeprg: interrupted at epoch {len(trainer.history)}; checkpoint saved in {checkpoint}; "
              "continue with --resume", file=sys.stderr)
        return 130
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
    write_json(run_dir / "metrics.json", metrics)
    window_nll_curve(trainer.history, run_dir / "training_curve.png", reference if cfg.method == "joint" else None,
                     title=f"CORA {cfg.method}, chi={cfg.chi}, window {cfg.window}")
    if args.json:
        print_json(metrics)
    else:
        print(f"training window NLL per site {metrics['train_window_nll_per_site']:.6f}"
              + (f" (exact window entropy per site {reference:.6f})" if reference is not None else ""))
        print(f"{metrics['epochs']} epochs in {trainer.wall_seconds:.1f} s; run directory {run_dir}")
    return 0

