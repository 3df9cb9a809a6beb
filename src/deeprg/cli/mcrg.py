"""``deeprg mcrg`` and ``deeprg rsrg exponent-vs-epoch``: Monte Carlo RG exponents y_t and y_h of
an RG transformation (majority rule, decimation, or the RBM projector of an ``rsrg train`` run).

The configurations are streamed from the file in chunks (:meth:`deeprg.data.SpinFile.chunks`), so
memory holds one chunk whatever the size of the data. Both run unchanged under ``torchrun
--nproc-per-node N``: every process reads only its share of the configurations
(:func:`deeprg.rsrg.mcrg.configuration_share`), transforms it, and the exact integer moments are
summed across processes, so the exponents are bit-identical whatever the
number of processes; rank 0 alone prints and writes. ``--device cuda`` computes the RBM projector's
fields on a GPU (GPU ``LOCAL_RANK`` under torchrun); the majority rule, decimation and the moments
stay in numpy on the host.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from tqdm import tqdm

from deeprg.cli.common import (
    UsageError,
    cpu_threads,
    device,
    int_at_least,
    print_json,
    seed,
    writable_file,
)
from deeprg.data import SpinFile, open_dataset
from deeprg.distributed import current, default_threads, run_device
from deeprg.mc.stats import format_value_error
from deeprg.plots import exponent_vs_epoch
from deeprg.rsrg.mcrg import (
    REFERENCE_EXPONENTS,
    MCRGResult,
    MomentOverflow,
    check_mcrg_levels,
    configuration_share,
    max_blocks,
    minimum_configurations,
    run_mcrg,
)
from deeprg.rsrg.operators import operator_set
from deeprg.rsrg.tuning import SectorTuning, tune_sectors
from deeprg.rsrg.train import CheckpointMismatch, load_filters
from deeprg.rsrg.transforms import Decimation, MajorityRule, RBMProjector, RGTransform
from deeprg.runs import write_json


def _counts(sector: str) -> str:
    """``'7 in 2D, 8 in 3D'``: how many operators of ``sector`` each dimension has."""
    return ", ".join(f"{len(getattr(operator_set(d), sector))} in {d}D" for d in (2, 3))


def add_exponent_vs_epoch(actions: argparse._SubParsersAction) -> None:
    """Add ``exponent-vs-epoch`` to the ``deeprg rsrg`` actions."""
    e = actions.add_parser(
        "exponent-vs-epoch", help="MCRG y_t of the filter saved after every epoch (Chung & Kao Fig. 2)",
        description="Apply the filter of every saved epoch (and the majority rule, for reference) to "
        "the same configurations; writes RUN/exponent_vs_epoch.json and RUN/exponent_vs_epoch.png (replacing "
        "those of an earlier call; both are checked to be writable before any work).",
    )
    e.add_argument("run_dir", metavar="RUN", help="run directory of 'deeprg rsrg train'")
    _add_mcrg_options(e, levels=1)
    e.add_argument("--couplings", type=int_at_least(1), default=7,
                   help=f"N_c even couplings, 1 .. the number of even operators ({_counts('even')}) [7]")
    e.set_defaults(run=run_exponent_vs_epoch, distributed=True)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``deeprg mcrg`` to the top-level subparsers."""
    m = sub.add_parser(
        "mcrg", help="Monte Carlo RG exponents y_t and y_h of an RG transformation",
        description="Coarse-grain the configurations (2D or 3D) N_r = 1..levels times with b = 2 and "
        f"compute y_t (from the even couplings: {_counts('even')}) and y_h (from the odd ones: "
        f"{_counts('odd')}) from the linearized RG matrix T = (D^{{n,n}})^-1 D^{{n,n-1}} for every N_r and "
        "N_c, with jackknife errors.",
    )
    m.add_argument("--transform", required=True, metavar="majority|decimation|RUN",
                   help="majority rule, decimation, or the trained RBM projector of a run directory")
    tuned = m.add_mutually_exclusive_group()
    tuned.add_argument("--block-weights", type=parameter_list(0.0, True), metavar="A,B,...",
                       help="with a RUN: measure the filter plus alpha times the block's total spin for each "
                       "alpha >= 0 listed (at least 2, e.g. 0,0.25,0.5,0.75,1) and choose alpha separately for y_t "
                       "and y_h as the one whose exponent changes least from N_r = 1 to 2 (Ron, Brandt & Swendsen "
                       "2017); needs --levels >= 2")
    tuned.add_argument("--scales", type=parameter_list(0.0, False), metavar="S,T,...",
                       help="with a RUN: the same sector tuning over the filter scaled by each s > 0 listed (a softer "
                       "or sharper projection, e.g. 0.4,0.5,0.6,0.8,1); needs --levels >= 2")
    _add_mcrg_options(m, levels=2)
    m.set_defaults(run=run_mcrg_command, distributed=True)


def _add_mcrg_options(p: argparse.ArgumentParser, levels: int) -> None:
    p.add_argument("--data", required=True, help="configurations (.npz, Ising, 2D or 3D)")
    p.add_argument("--levels", type=int_at_least(1), default=levels,
                   help=f"RG steps N_r, 1 .. log2(L / 4) at most (and as far as the filter fits) [{levels}]")
    p.add_argument("--blocks", type=int_at_least(2), default=32,
                   help="jackknife blocks, 2 .. half the configurations [32]")
    p.add_argument("--seed", type=seed, default=0, help="random seed of the transformations, 0 .. 2^64 - 1 [0]")
    p.add_argument("--threads", type=cpu_threads, help="torch CPU threads per process (RBM projector), 1 .. the number "
                   "of CPUs [torch's default; under torchrun the cores / processes on this node]")
    p.add_argument("--device", type=device, default="cpu",
                   help="torch device of the RBM projector's fields: cpu, cuda or cuda:N (under torchrun each process "
                   "uses GPU LOCAL_RANK); RBM projector only: the majority rule and decimation run in numpy on the "
                   "host whatever the device. The coarse spins depend on the device only through the rounding of "
                   "the fields [cpu]")
    p.add_argument("--json", action="store_true", help="print a machine-readable summary")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _device(args: argparse.Namespace):
    """The torch device of this process's RBM projectors: ``--device``, GPU ``LOCAL_RANK``
    under torchrun (:func:`deeprg.distributed.run_device`)."""
    return run_device(args.device, current())


def _open_data(path: str) -> SpinFile:
    """The Ising configurations of ``--data``, opened (metadata and header checked); the spins are
    streamed by :func:`_run`."""
    return open_dataset(path, model="ising", d=(2, 3))


# ---- mcrg --------------------------------------------------------------------------------------
def _transform(value: str, device="cpu") -> RGTransform:
    if value == "majority":
        return MajorityRule()
    if value == "decimation":
        return Decimation()
    if not Path(value).is_dir():
        raise UsageError(f"--transform: expected 'majority', 'decimation' or a run directory of "
                         f"'deeprg rsrg train', got {value!r}")
    try:
        _, filters, _ = load_filters(value)
    except CheckpointMismatch as err:
        raise UsageError(f"--transform: {err}") from None
    return RBMProjector(filters[-1], device=device)


def parameter_list(low: float, inclusive: bool):
    """argparse type of ``--block-weights`` / ``--scales``: at least 2 distinct finite numbers
    ``>= low`` (``> low`` unless ``inclusive``), comma-separated."""
    bound = f"{'>=' if inclusive else '>'} {low:g}"

    def parse(value: str) -> tuple[float, ...]:
        try:
            values = tuple(float(v) for v in value.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be comma-separated numbers {bound}, got {value!r}") from None
        if len(values) < 2 or len(set(values)) != len(values):
            raise argparse.ArgumentTypeError(f"must list at least 2 distinct values, got {value!r}")
        if not all(math.isfinite(v) and (v >= low if inclusive else v > low) for v in values):
            raise argparse.ArgumentTypeError(f"every value must be a finite number {bound}, got {value!r}")
        return values

    parse.__name__ = "list of numbers"
    return parse


def _check_mcrg(args: argparse.Namespace, ds: SpinFile, transforms: list[RGTransform],
                transform_option: str = "--transform") -> None:
    shape = tuple(ds.metadata["lattice_shape"])
    for t in transforms:  # the data's dimension and the filter's size before the levels
        try:
            t.check(shape)
        except ValueError as err:
            raise UsageError(f"{transform_option}: {err} (the data of --data)") from None
    try:
        check_mcrg_levels(shape, transforms, args.levels)
    except ValueError as err:
        raise UsageError(f"--levels: {err}") from None
    least = minimum_configurations(2, len(shape))
    if ds.n < least:
        raise UsageError(f"--data: {ds.n} configurations are too few for MCRG (need at least {least})")
    if args.blocks > max_blocks(ds.n):
        raise UsageError(f"--blocks: must be between 2 and {max_blocks(ds.n)} for the {ds.n} configurations of "
                         f"--data (at least 2 per block), got {args.blocks}")


def _run(args: argparse.Namespace, ds: SpinFile, transforms: list[RGTransform]) -> list[MCRGResult]:
    """MCRG of ``transforms`` on the data, this process's share of it under torchrun."""
    world = current()
    threads = args.threads if args.threads is not None or not world.distributed else default_threads(world)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    share = configuration_share(ds.n, world)
    if world.distributed and world.main and not ds.sync_points():
        warnings.warn("--data has no sync points (written by another program or an older deeprg): every process "
                      "decompresses the configurations before its share (a serial cost growing with the processes)")
    bar = tqdm(total=share.stop - share.start, disable=args.quiet or not world.main, desc="mcrg", unit="config",
               file=sys.stderr, dynamic_ncols=True)
    try:
        return run_mcrg(ds.chunks(share, 4096), ds.lattice.shape, transforms, ds.n, args.levels, args.seed,
                        args.blocks, on_chunk=bar.update, world=world)
    except MomentOverflow as err:
        raise UsageError(f"--blocks: {err}") from None
    finally:
        bar.close()


def format_table(result: MCRGResult) -> str:
    """y_t and y_h by (N_r, N_c), one row per pair."""
    lines = [f"{'N_r':>3} {'N_c':>3}   {'y_t':<14} {'y_h':<14}"]
    for r in range(result.levels):
        for c in range(len(result.y_t[r])):
            yt = result.y_t[r][c]
            yh = format_value_error(result.y_h[r][c].mean, result.y_h[r][c].error) if c < len(result.y_h[r]) else ""
            lines.append(f"{r + 1:>3} {c + 1:>3}   {format_value_error(yt.mean, yt.error):<14} {yh:<14}")
    return "\n".join(lines)


def run_mcrg_command(args: argparse.Namespace) -> int:
    start = time.perf_counter()  # after start-up: imports, and under torchrun the processes' join
    with _open_data(args.data) as ds:
        return _mcrg_command(args, ds, start)


def _mcrg_command(args: argparse.Namespace, ds: SpinFile, start: float) -> int:
    dev = _device(args)
    transform = _transform(args.transform, dev)
    transforms = [transform]
    family, option = ("block_weight", "--block-weights") if args.block_weights is not None else ("scale", "--scales")
    parameters = args.block_weights if args.block_weights is not None else args.scales
    if parameters is not None:
        if not isinstance(transform, RBMProjector):
            raise UsageError(f"{option}: applies to the RBM projector of a run directory, not to "
                             f"--transform {args.transform}")
        if args.levels < 2:
            raise UsageError(f"--levels: {option} compares N_r = 1 and 2, so it needs --levels >= 2, got {args.levels}")
        w = transform.weights.double().cpu().numpy()
        transforms = [RBMProjector(w, block_weight=a, device=dev) if family == "block_weight"
                      else RBMProjector(a * w, device=dev) for a in parameters]
    _check_mcrg(args, ds, transforms)
    results = _run(args, ds, transforms)
    if not current().main:
        return 0
    result = results[0]
    shape = ds.metadata["lattice_shape"]
    reference = REFERENCE_EXPONENTS[len(shape)]
    summary = {**result.to_dict(), "transform_argument": args.transform, "data": args.data,
               "lattice_shape": shape, "K": ds.metadata["K"], "seed": args.seed,
               "seconds": sum(r.seconds for r in results), "wall_seconds": time.perf_counter() - start,
               "processes": current().size, "device": args.device,
               "reference": reference}
    tuning = None
    if parameters is not None:
        tuning = tune_sectors(parameters, results)
        result = dataclasses.replace(results[tuning.even.index], y_h=tuning.y_h, transform="rbm, sector-tuned")
        summary.update(y_t=result.to_dict()["y_t"], y_h=result.to_dict()["y_h"], transform=result.transform,
                       tuning_family=family, tuning_parameters=list(parameters), sector_tuning=tuning.to_dict(),
                       per_parameter=[r.to_dict() for r in results])
    if args.json:
        print_json(summary)
        return 0
    name = {"majority": "majority rule", "decimation": "decimation"}.get(results[0].transform, f"RBM projector ({args.transform})")
    print(f"MCRG of {args.data}: Ising {'x'.join(map(str, shape))}, K = {ds.metadata['K']:.10g}; {name}, b = 2; "
          f"{result.n_configurations} configurations in {result.n_blocks} jackknife blocks; seed {args.seed}")
    if tuning is not None:
        print(format_tuning(tuning, family))
    print(format_table(result))
    print(f"{len(shape)}D Ising, {reference['source']}: y_t = {reference['y_t']:.6g}, y_h = {reference['y_h']:.6g}")
    return 0


# ---- rsrg exponent-vs-epoch ------------------------------------------------------------------
def format_tuning(tuning: SectorTuning, family: str) -> str:
    """Gaps y(N_r = 2) - y(N_r = 1) per parameter and sector, and the choices."""
    name = {"block_weight": "alpha", "scale": "scale"}[family]
    lines = [f"{name:>7}   {'gap y_t (N_c = ' + str(tuning.even.n_c) + ')':<22} {'gap y_h (N_c = ' + str(tuning.odd.n_c) + ')':<22}"]
    for k, alpha in enumerate(tuning.even.parameters):
        e, o = tuning.even.gaps[k], tuning.odd.gaps[k]
        mark_e = "*" if k == tuning.even.index else " "
        mark_o = "*" if k == tuning.odd.index else " "
        lines.append(f"{alpha:>7g}   {format_value_error(e.mean, e.error) + mark_e:<22} {format_value_error(o.mean, o.error) + mark_o:<22}")
    for choice, key in ((tuning.even, "y_t"), (tuning.odd, "y_h")):
        note = "" if choice.resolved else " (not resolved: the runner-up's gap is within the errors)"
        lines.append(f"{key}: {family.replace('_', ' ')} {choice.parameter:g}{note}")
    return "\n".join(lines)


def run_exponent_vs_epoch(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    try:
        _, filters, _ = load_filters(run_dir)
    except CheckpointMismatch as err:
        raise UsageError(f"RUN: {err}") from None
    if len(filters) < 2:
        raise UsageError(f"RUN: {str(run_dir)!r} has no completed epoch yet")
    outputs = [writable_file(str(run_dir / f"exponent_vs_epoch.{ext}"), "RUN") for ext in ("json", "png")]
    if Path(args.data).resolve() in [p.resolve() for p in outputs]:
        raise UsageError(f"--data: {args.data!r} is an output of this command ({outputs[0].name} and "
                         f"{outputs[1].name} in RUN); move or rename it")
    with _open_data(args.data) as ds:
        return _exponent_vs_epoch(args, ds, filters, outputs)


def _exponent_vs_epoch(args: argparse.Namespace, ds: SpinFile, filters: np.ndarray, outputs: list[Path]) -> int:
    d = ds.metadata["d"]
    n_even = len(operator_set(d).even)
    if args.couplings > n_even:
        raise UsageError(f"--couplings: must be between 1 and {n_even} for {d}D data, got {args.couplings}")
    epochs = list(range(1, len(filters)))
    dev = _device(args)
    transforms = [RBMProjector(filters[e], device=dev) for e in epochs] + [MajorityRule()]
    _check_mcrg(args, ds, transforms, "RUN")
    results = _run(args, ds, transforms)
    if not current().main:
        return 0
    k = args.couplings - 1
    table = [[[{"mean": e.mean, "error": e.error} for e in row] for row in r.y_t] for r in results[:-1]]
    majority = [[{"mean": e.mean, "error": e.error} for e in row] for row in results[-1].y_t]
    summary = {"epochs": epochs, "levels": args.levels, "couplings": args.couplings, "y_t": table,
               "majority_y_t": majority, "n_configurations": results[0].n_configurations,
               "n_blocks": args.blocks, "seed": args.seed, "data": args.data, "device": args.device}
    write_json(outputs[0], summary)
    last = args.levels - 1
    means = np.array([r.y_t[last][k].mean for r in results[:-1]])
    errors = np.array([r.y_t[last][k].error for r in results[:-1]])
    exponent_vs_epoch(np.array(epochs), means, errors, outputs[1],
                      {f"majority rule {format_value_error(results[-1].y_t[last][k].mean, results[-1].y_t[last][k].error)}":
                       results[-1].y_t[last][k].mean, REFERENCE_EXPONENTS[d]["source"]: REFERENCE_EXPONENTS[d]["y_t"]},
                      title=f"N_r = {args.levels}, N_c = {args.couplings}, {summary['n_configurations']} configurations")
    if args.json:
        print_json(summary)
        return 0
    print(f"y_t at N_c = {args.couplings} after each epoch ({summary['n_configurations']} configurations, "
          f"{args.blocks} jackknife blocks, seed {args.seed}):")
    print(f"{'epoch':>5}  " + "  ".join(f"{'N_r = ' + str(n + 1):<14}" for n in range(args.levels)))
    for e, r in zip(epochs, results[:-1]):
        print(f"{e:>5}  " + "  ".join(f"{format_value_error(r.y_t[n][k].mean, r.y_t[n][k].error):<14}"
                                      for n in range(args.levels)))
    maj = results[-1]
    print(f"{'maj.':>5}  " + "  ".join(f"{format_value_error(maj.y_t[n][k].mean, maj.y_t[n][k].error):<14}"
                                     for n in range(args.levels)))
    print(f"wrote {outputs[0]} and {outputs[1]}")
    return 0
