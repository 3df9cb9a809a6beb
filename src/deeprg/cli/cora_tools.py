"""``deeprg cora sample|eval|digits``: use a trained CORA run (exact samples, held-out likelihood
and correlations) and write scikit-learn's digits as binary-image datasets."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from deeprg.cli.common import UsageError, int_at_least, print_json, writable_file
from deeprg.cora.datasets import (
    BinaryData,
    decode_values,
    digits,
    load_binary,
    save_binary,
)
from deeprg.cora.evaluate import evaluate
from deeprg.cora.learn import CheckpointMismatch, load_run
from deeprg.plots import chain_samples, correlation_model_vs_data, field_grid


def add_actions(actions: argparse._SubParsersAction) -> None:
    """Add the actions that use a trained CORA (and ``digits``) to the ``deeprg cora`` subparsers."""
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
