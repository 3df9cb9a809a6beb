"""``deeprg cora sample|eval|digits``: use a trained CORA run (exact samples, held-out likelihood
and correlations) and write scikit-learn's digits as binary-image datasets.

Every output is checked before any work: writable, distinct from the command's other files, and
not replacing a file of the run directory RUN. At their defaults on a 16 x 16 run ``sample`` and
``eval`` take about a second of work, so they show no progress bar.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch

from deeprg.cli.common import (
    UsageError,
    cpu_threads,
    device,
    distinct_paths,
    int_at_least,
    print_json,
    seed,
    writable_file,
)
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

#: Largest grey level of scikit-learn's digits.
MAX_GREY = 16

DEVICE_HELP = ("torch device: cpu, cuda or cuda:N [cpu]; the same --seed draws other samples on another "
               "device (each has its own random generator)")


def grey_level(value: str) -> float:
    """argparse type for ``digits --threshold``: a number in ``[0, 16]``."""
    try:
        v = float(value)
    except ValueError:
        v = math.nan
    if not 0 <= v <= MAX_GREY:  # nan and infinities included
        raise argparse.ArgumentTypeError(f"must be a grey level between 0 and {MAX_GREY}, got {value!r}")
    return v


def open_fraction(value: str) -> float:
    """argparse type for ``digits --test-fraction``: a number strictly between 0 and 1."""
    try:
        v = float(value)
    except ValueError:
        v = math.nan
    if not 0 < v < 1:
        raise argparse.ArgumentTypeError(f"must be a number strictly between 0 and 1, got {value!r}")
    return v


def add_actions(actions: argparse._SubParsersAction) -> None:
    """Add the actions that use a trained CORA (and ``digits``) to the ``deeprg cora`` subparsers."""
    s = actions.add_parser("sample", help="exact independent samples of a trained CORA (and a PNG grid)")
    s.add_argument("run_dir", metavar="RUN", help="run directory of 'deeprg cora train'")
    s.add_argument("--n", type=int_at_least(1), default=64, help="samples [64]")
    s.add_argument("--seed", type=seed, default=0, help="random seed, 0 .. 2^64 - 1 [0]")
    s.add_argument("--out", required=True,
                   help="output .npz (spins or pixels, as the training data); the PNG goes beside it, OUT with "
                   "the suffix .png, so OUT must not end in .png; neither may replace a file of RUN")
    s.add_argument("--device", type=device, default="cpu", help=DEVICE_HELP)
    s.add_argument("--threads", type=cpu_threads, default=1, help="torch CPU threads, 1 .. the number of CPUs [1]")
    s.add_argument("--json", action="store_true", help="print a machine-readable summary")
    s.set_defaults(run=run_sample)

    e = actions.add_parser("eval", help="held-out window NLL, correlation functions (and full NLL for trees)")
    e.add_argument("run_dir", metavar="RUN", help="run directory of 'deeprg cora train'")
    e.add_argument("--data", required=True, help="held-out data on the run's lattice")
    e.add_argument("--key", help="array of --data to use")
    e.add_argument("--window", type=int_at_least(1), help="window of the NLL [the training window]")
    e.add_argument("--samples", type=int_at_least(2), default=10000, help="model samples for G(r) [10000]")
    e.add_argument("--seed", type=seed, default=0, help="random seed, 0 .. 2^64 - 1 [0]")
    e.add_argument("--plot", help="write G(r) of model and data (and the exact G(r) of 1D Ising data) to this PNG; "
                   "it may not be --data or replace a file of RUN")
    e.add_argument("--device", type=device, default="cpu", help=DEVICE_HELP)
    e.add_argument("--threads", type=cpu_threads, default=1, help="torch CPU threads, 1 .. the number of CPUs [1]")
    e.add_argument("--json", action="store_true", help="print a machine-readable summary")
    e.set_defaults(run=run_eval)

    g = actions.add_parser("digits", help="write scikit-learn's 8x8 digits as binary images (.npz); "
                           "needs pip install '.[digits]'")
    g.add_argument("--size", type=int, choices=(8, 16), default=8, help="image size [8]")
    g.add_argument("--mode", choices=("upscale", "pad"), default="upscale", help="how to reach 16 x 16 [upscale]")
    g.add_argument("--threshold", type=grey_level, default=8.0,
                   help=f"grey level (0 .. {MAX_GREY}) above which a pixel is on [8]")
    g.add_argument("--test-fraction", type=open_fraction,
                   help="share of the 1797 digits held out into --test-out; each file gets at least one image "
                   "[0.2; needs --test-out]")
    g.add_argument("--seed", type=seed, default=0, help="random split seed [0]")
    g.add_argument("--out", required=True, help="training images (.npz: pixels, labels)")
    g.add_argument("--test-out", help="held-out images (.npz), another file than --out [none: all images go to --out]")
    g.set_defaults(run=run_digits)


def _load_data(path: str, key: str | None, option: str = "--data") -> BinaryData:
    try:
        return load_binary(path, key)
    except ValueError as err:  # DatasetError included
        raise UsageError(f"{option}: {err}") from None


def _load(args: argparse.Namespace):
    """The run's network on ``--device``, its config and ``config.json``."""
    torch.set_num_threads(args.threads)
    try:
        net, cfg, saved = load_run(args.run_dir)
    except CheckpointMismatch as err:
        raise UsageError(f"RUN: {err}") from None
    return net.to(args.device), cfg, saved


def _keep_run_files(run_dir: str, option: str, *paths: Path) -> None:
    """Refuse an output of ``option`` that would replace a file inside the run directory."""
    run = Path(run_dir).resolve()
    for path in paths:
        target = path.resolve()
        if target.exists() and run in target.parents:
            raise UsageError(f"{option}: {str(path)!r} would replace a file of the run directory {run_dir!r}; "
                             "choose a path outside it or a new name")


def run_sample(args: argparse.Namespace) -> int:
    out = writable_file(args.out, "--out")
    png = out.with_suffix(".png")
    if png == out:
        raise UsageError(f"--out: the PNG of the samples is written to OUT with the suffix .png, so {args.out!r} "
                         f"would be replaced by it; give the .npz path, e.g. {str(out.with_suffix('.npz'))!r}")
    writable_file(str(png), "--out (its PNG)")
    _keep_run_files(args.run_dir, "--out", out, png)
    net, cfg, _ = _load(args)
    generator = torch.Generator(device=args.device).manual_seed(args.seed)
    samples = net.sample(args.n, generator).cpu().numpy()
    values = decode_values(samples, cfg.encoding)
    save_binary(out, values, cfg.encoding, seed=np.uint64(args.seed))
    shown = (1 - 2 * samples).astype(np.float32)  # +1 for index 0
    if net.d == 2:
        if cfg.encoding == "binary":
            field_grid(-shown, png, title=f"CORA samples (seed {args.seed})", cmap="gray_r")
        else:
            field_grid(shown, png, title=f"CORA samples (seed {args.seed})")
    else:
        chain_samples(shown, png, title=f"CORA samples, one per row (seed {args.seed})")
    if args.json:
        print_json({"run": args.run_dir, "n": args.n, "seed": args.seed, "device": args.device,
                    "lattice_shape": list(net.shape), "encoding": cfg.encoding, "out": out, "png": png})
        return 0
    print(f"wrote {args.n} samples to {out} and {png}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    plot = None
    if args.plot:
        plot = writable_file(args.plot, "--plot")
        distinct_paths(data=args.data, plot=plot)
        _keep_run_files(args.run_dir, "--plot", plot)
    net, cfg, _ = _load(args)
    data = _load_data(args.data, args.key)
    if data.shape != net.shape:
        raise UsageError(f"--data: lattice {'x'.join(map(str, data.shape))} does not match the network's "
                         f"{'x'.join(map(str, net.shape))}")
    w = cfg.window if args.window is None else args.window
    if w > net.shape[0]:
        raise UsageError(f"--window must be at most the lattice size L = {net.shape[0]}, got {w}")
    try:
        summary = evaluate(net, torch.as_tensor(data.indices).long().to(args.device), w, args.samples,
                           torch.Generator(device=args.device).manual_seed(args.seed), data.metadata)
    except ValueError as err:  # a window whose cones are too large
        raise UsageError(f"--window: {err}") from None
    summary["seed"], summary["device"] = args.seed, args.device
    exact = dict(summary.get("exact_correlation", ()))  # r -> G(r), 1D Ising data only
    if plot is not None:
        correlation_model_vs_data(summary["correlation"], plot, title=f"CORA samples vs {Path(args.data).name}",
                                  exact=summary.get("exact_correlation"))
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
    print("   r   G(r) model          G(r) data" + ("           G(r) exact" if exact else ""))
    for c in summary["correlation"]:
        row = f"{c['r']:4d}   {c['model']:.4f} +- {c['model_error']:.4f}   {c['data']:.4f} +- {c['data_error']:.4f}"
        print(row + (f"   {exact[c['r']]:.4f}" if c["r"] in exact else ""))
    return 0


def run_digits(args: argparse.Namespace) -> int:
    if args.test_fraction is not None and args.test_out is None:
        raise UsageError("--test-fraction: needs --test-out (without it all images go to --out)")
    out = writable_file(args.out, "--out")
    test_out = writable_file(args.test_out, "--test-out") if args.test_out else None
    distinct_paths(out=out, test_out=test_out)
    try:
        pixels, labels = digits(args.size, args.threshold, args.mode)
    except ImportError as err:
        raise UsageError(str(err)) from None
    n = len(pixels)
    fraction = 0.0
    if test_out is not None:
        fraction = 0.2 if args.test_fraction is None else args.test_fraction
    n_test = round(fraction * n)
    if test_out is not None and not 1 <= n_test <= n - 1:
        empty = "--test-out" if n_test < 1 else "--out"
        raise UsageError(f"--test-fraction: {fraction} of the {n} digits leaves no image for {empty}; each file needs "
                         f"at least one, so it must lie between {math.ceil(0.5 / n * 1e5) / 1e5} and "
                         f"{math.floor((n - 0.5) / n * 1e5) / 1e5}")
    order = np.random.default_rng(args.seed).permutation(n)
    meta = {"source": "sklearn.datasets.load_digits", "size": args.size, "mode": args.mode,
            "threshold": args.threshold, "split_seed": args.seed, "test_fraction": fraction}
    train, test = order[n_test:], order[:n_test]
    save_binary(out, pixels[train], "binary", labels=labels[train], metadata=meta)
    if test_out is not None:
        save_binary(test_out, pixels[test], "binary", labels=labels[test], metadata=meta)
    print(f"wrote {len(train)} {args.size}x{args.size} binary digits to {out}"
          + (f" and {len(test)} to {test_out}" if test_out is not None else ""))
    return 0
