"""``deeprg cora train|sample|eval|digits``: CORA, the classical stochastic MERA learned from samples.

``train`` fits a network to a dataset and writes a run directory; ``sample`` and ``eval`` load it;
``digits`` writes the scikit-learn digits as binary-image datasets.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from deeprg.cli.common import (
    StopOnSignal,
    UsageError,
    check_run_dir,
    int_at_least,
    positive_float,
    print_json,
    writable_file,
)
from deeprg.config import ConfigError, load_config
from deeprg.cora.datasets import BinaryData, decode_values, digits, load_binary, save_binary
from deeprg.cora.evaluate import chain_window_entropy, evaluate
from deeprg.cora.learn import METHODS, CheckpointMismatch, CoraTrainConfig, NonFiniteLoss, Trainer, load_run
from deeprg.plots import chain_samples, correlation_model_vs_data, field_grid, window_nll_curve
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

    s = actions.add_parser("sample", help="exact independent samples of a trained CORA (and a PNG grid)")
    s.add_argument("run_dir", metavar="RUN", help="run directory of 'deeprg cora train'")
    s.add_argument("--n", type=int_at_least(1), default=64, help="samples [64]")
    s.add_argument("--seed", type=int_at_least(0), default=0, help="random seed [0]")
    s.add_argument("--out", required=True, help="output .npz (spins or pixels, as the training data); PNG beside it")
    s.add_argument("--threads", type=int_at_least(1), default=1, help="torch CPU threads [1]")
    s.set_defaults(run=run_sample)

    e = actions.add_parser("eval", help="held-out window NLL, correlation functions (and full NLL for trees)")
    e.add_argument("run_dir", metavar="RUN", help="run directory of 'deeprg cora train'")
    e.add_argument("--data", required=True, help="held-out data on the run's lattice")
    e.add_argument("--key", help="array of --data to use")
    e.add_argument("--window", type=int_at_least(1), help="window of the NLL [the training window]")
    e.add_argument("--samples", type=int_at_least(2), default=10000, help="model samples for G(r) [10000]")
    e.add_argument("--seed", type=int_at_least(0), default=0, help="random seed [0]")
    e.add_argument("--plot", help="write G(r) of model and data to this PNG")
    e.add_argument("--threads", type=int_at_least(1), default=1, help="torch CPU threads [1]")
    e.add_argument("--json", action="store_true", help="print a machine-readable summary")
    e.set_defaults(run=run_eval)

    g = actions.add_parser("digits", help="write scikit-learn's 8x8 digits as binary images (.npz)")
    g.add_argument("--size", type=int, choices=(8, 16), default=8, help="image size [8]")
    g.add_argument("--mode", choices=("upscale", "pad"), default="upscale", help="how to reach 16 x 16 [upscale]")
    g.add_argument("--threshold", type=float, default=8.0, help="grey level (0..16) above which a pixel is on [8]")
    g.add_argument("--test-fraction", type=float, default=0.2, help="share held out into --test-out [0.2]")
    g.add_argument("--seed", type=int_at_least(0), default=0, help="random split seed [0]")
    g.add_argument("--out", required=True, help="training images (.npz: pixels, labels)")
    g.add_argument("--test-out", help="held-out images (.npz) [none: all images go to --out]")
    g.set_defaults(run=run_digits)


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


def _load(args: argparse.Namespace):
    torch.set_num_threads(args.threads)
    try:
        return load_run(args.run_dir)
    except CheckpointMismatch as err:
        raise UsageError(f"RUN: {err}") from None


def run_sample(args: argparse.Namespace) -> int:
    out = writable_file(args.out, "--out")
    net, cfg, _ = _load(args)
    samples = net.sample(args.n, torch.Generator().manual_seed(args.seed)).numpy()
    values = decode_values(samples, cfg.encoding)
    save_binary(out, values, cfg.encoding, seed=np.int64(args.seed))
    png = out.with_suffix(".png")
    shown = (1 - 2 * samples).astype(np.float32)  # +1 for index 0
    if net.d == 2:
        if cfg.encoding == "binary":
            field_grid(-shown, png, title=f"CORA samples (seed {args.seed})", cmap="gray_r")
        else:
            field_grid(shown, png, title=f"CORA samples (seed {args.seed})")
    else:
        chain_samples(shown, png, title=f"CORA samples, one per row (seed {args.seed})")
    print(f"wrote {args.n} samples to {out} and {png}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    net, cfg, _ = _load(args)
    data = _load_data(args.data, args.key)
    if data.shape != net.shape:
        raise UsageError(f"--data: lattice {'x'.join(map(str, data.shape))} does not match the network's "
                         f"{'x'.join(map(str, net.shape))}")
    w = cfg.window if args.window is None else args.window
    if w > net.shape[0]:
        raise UsageError(f"--window must be at most the lattice size L = {net.shape[0]}, got {w}")
    plot = writable_file(args.plot, "--plot") if args.plot else None
    try:
        summary = evaluate(net, torch.as_tensor(data.indices).long(), w, args.samples,
                           torch.Generator().manual_seed(args.seed), data.metadata)
    except ValueError as err:  # a window whose cones are too large
        raise UsageError(f"--window: {err}") from None
    summary["seed"] = args.seed
    if plot is not None:
        correlation_model_vs_data(summary["correlation"], plot, title=f"CORA samples vs {Path(args.data).name}")
    if args.json:
        print_json(summary)
        return 0
    nll = summary["window_nll_per_site"]
    line = f"window NLL per site (w = {w}): {nll['mean']:.6f} +- {nll['error']:.6f}"
    if "exact_window_entropy_per_site" in summary:
        line += f"   exact window entropy per site {summary['exact_window_entropy_per_site']:.6f}"
    print(line)
    if "full_nll" in summary:
        print(f"full NLL per configuration: {summary['full_nll']['mean']:.4f} +- {summary['full_nll']['error']:.4f}")
    print("   r   G(r) model          G(r) data")
    for c in summary["correlation"]:
        print(f"{c['r']:4d}   {c['model']:.4f} +- {c['model_error']:.4f}   {c['data']:.4f} +- {c['data_error']:.4f}")
    return 0


def run_digits(args: argparse.Namespace) -> int:
    if not 0 <= args.test_fraction < 1:
        raise UsageError(f"--test-fraction must lie in [0, 1), got {args.test_fraction}")
    out = writable_file(args.out, "--out")
    test_out = writable_file(args.test_out, "--test-out") if args.test_out else None
    try:
        pixels, labels = digits(args.size, args.threshold, args.mode)
    except ImportError as err:
        raise UsageError(str(err)) from None
    order = np.random.default_rng(args.seed).permutation(len(pixels))
    n_test = int(round(args.test_fraction * len(pixels))) if test_out is not None else 0
    meta = {"source": "sklearn.datasets.load_digits", "size": args.size, "mode": args.mode,
            "threshold": args.threshold, "split_seed": args.seed, "test_fraction": args.test_fraction}
    train, test = order[n_test:], order[:n_test]
    save_binary(out, pixels[train], "binary", labels=labels[train], metadata=meta)
    if test_out is not None:
        save_binary(test_out, pixels[test], "binary", labels=labels[test], metadata=meta)
    print(f"wrote {len(train)} {args.size}x{args.size} binary digits to {out}"
          + (f" and {len(test)} to {test_out}" if test_out is not None else ""))
    return 0
