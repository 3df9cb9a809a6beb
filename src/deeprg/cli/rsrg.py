"""``deeprg rsrg train|exponent-vs-epoch`` and ``deeprg mcrg``: optimal real-space RG with an RBM
projector (Chung & Kao) and Monte Carlo RG exponents.

``rsrg train`` writes a run directory: ``config.json``, ``checkpoint.pt`` (every epoch, every
``checkpoint_seconds``, on Ctrl-C), ``filters.npz`` (``filters``: ``(epochs + 1, f, f)``, row 0 the
initialization; ``epochs``), ``metrics.json`` and ``filters.png``. ``mcrg`` and
``rsrg exponent-vs-epoch`` read it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from deeprg.cli.common import StopOnSignal, UsageError, check_run_dir, int_at_least, positive_float, print_json
from deeprg.config import ConfigError, load_config
from deeprg.data import SpinDataset, load_dataset
from deeprg.mc.stats import format_value_error
from deeprg.plots import exponent_vs_epoch, filter_snapshots
from deeprg.rsrg.mcrg import MCRGResult, check_mcrg_levels, minimum_configurations, run_mcrg
from deeprg.rsrg.rbm import check_filter
from deeprg.rsrg.train import SCHEDULES, CheckpointMismatch, NonFiniteLoss, RBMTrainConfig, Trainer, load_filters
from deeprg.rsrg.transforms import Decimation, MajorityRule, RBMProjector, RGTransform
from deeprg.runs import atomic_path, read_json, run_provenance, write_json

CHECKPOINT = "checkpoint.pt"
EXACT = {"y_t": 1.0, "y_h": 15 / 8}
#: Snapshot epochs shown in filters.png besides the last (the seed's Fig. 1 shows 1, 3, 5, 50).
SHOWN_EPOCHS = (1, 3, 5, 10, 25)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("rsrg", help="optimal real-space RG: train the RBM projector (Chung & Kao)")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    q = actions.add_parser(
        "train", help="train the RBM projector's filter by contrastive divergence",
        description="Train the translation-invariant f x f filter of the RBM projector "
        "P(mu|sigma) = exp(sum W sigma mu) / Y(sigma) on Monte Carlo configurations by minimizing "
        "KL(Boltzmann || Y / sum Y) with CD-k and Adam (Chung & Kao Eq. 8). Options override the "
        "--config file, which overrides the defaults (with --resume: the run's own config).",
    )
    q.add_argument("--data", required=True, help="training dataset (.npz, Ising, 2D)")
    q.add_argument("--config", help="TOML file with any RBMTrainConfig keys")
    q.add_argument("--filter", dest="filter_size", type=int_at_least(2), help="filter size f, even [8]")
    q.add_argument("--cd-k", dest="cd_k", type=int_at_least(1), help="Gibbs sweeps per CD step [3]")
    q.add_argument("--persistent", action=argparse.BooleanOptionalAction, default=None,
                   help="persistent contrastive divergence (PCD) [off]")
    q.add_argument("--epochs", type=int_at_least(1), help="training epochs [50]")
    q.add_argument("--batch", type=int_at_least(1), help="configurations per minibatch [10]")
    q.add_argument("--lr", type=positive_float, help="initial Adam learning rate [1e-3]")
    q.add_argument("--lr-final", dest="lr_final", type=positive_float, help="final learning rate [1e-4]")
    q.add_argument("--decay-epochs", dest="decay_epochs", type=positive_float,
                   help="epochs of square-root decay from --lr to --lr-final [25]")
    q.add_argument("--schedule", choices=SCHEDULES, help="form of the square-root learning-rate decay [polynomial]")
    q.add_argument("--seed", type=int_at_least(0), help="random seed [0]")
    q.add_argument("--dtype", choices=("float32", "float64"), help="[float32]")
    q.add_argument("--threads", type=int_at_least(1), help="torch CPU threads [1]")
    q.add_argument("--out", required=True, help="run directory")
    q.add_argument("--resume", action="store_true", help="continue from RUN/checkpoint.pt")
    q.add_argument("--force", action="store_true", help="start over even if RUN has a checkpoint")
    q.add_argument("--json", action="store_true", help="print the final metrics as JSON")
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    q.set_defaults(run=run_train)

    e = actions.add_parser(
        "exponent-vs-epoch", help="MCRG y_t of the filter saved after every epoch (Chung & Kao Fig. 2)",
        description="Apply the filter of every saved epoch (and the majority rule, for reference) to "
        "the same configurations; writes RUN/exponent_vs_epoch.json and RUN/exponent_vs_epoch.png.",
    )
    e.add_argument("run_dir", metavar="RUN", help="run directory of 'deeprg rsrg train'")
    _add_mcrg_options(e, levels=1)
    e.add_argument("--couplings", type=int_at_least(1), default=7, help="N_c even couplings, 1..7 [7]")
    e.set_defaults(run=run_exponent_vs_epoch)

    m = sub.add_parser(
        "mcrg", help="Monte Carlo RG exponents y_t and y_h of an RG transformation",
        description="Coarse-grain the configurations N_r = 1..levels times with b = 2 and compute "
        "y_t (7 even couplings) and y_h (4 odd couplings) from the linearized RG matrix "
        "T = (D^{n,n})^-1 D^{n,n-1} for every N_r and N_c, with jackknife errors.",
    )
    m.add_argument("--transform", required=True, metavar="majority|decimation|RUN",
                   help="majority rule, decimation, or the trained RBM projector of a run directory")
    _add_mcrg_options(m, levels=2)
    m.set_defaults(run=run_mcrg_command)


def _add_mcrg_options(p: argparse.ArgumentParser, levels: int) -> None:
    p.add_argument("--data", required=True, help="configurations (.npz, Ising, 2D)")
    p.add_argument("--levels", type=int_at_least(1), default=levels, help=f"RG steps N_r [{levels}]")
    p.add_argument("--blocks", type=int_at_least(2), default=32, help="jackknife blocks [32]")
    p.add_argument("--seed", type=int_at_least(0), default=0, help="random seed of the transformations [0]")
    p.add_argument("--threads", type=int_at_least(1), help="torch CPU threads (RBM projector)")
    p.add_argument("--json", action="store_true", help="print a machine-readable summary")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _load_data(path: str) -> SpinDataset:
    return load_dataset(path, model="ising", d=2)


# ---- rsrg train ------------------------------------------------------------------------------
OVERRIDES = ("filter_size", "cd_k", "persistent", "epochs", "batch", "lr", "lr_final", "decay_epochs", "schedule",
             "seed", "dtype", "threads")


def _resolve_config(args: argparse.Namespace, run_dir: Path) -> RBMTrainConfig:
    """Defaults < --config TOML < (with --resume) the run's config.json < explicit options."""
    overrides = {k: getattr(args, k) for k in OVERRIDES if getattr(args, k) is not None}
    if args.resume and (run_dir / "config.json").exists():
        known = RBMTrainConfig.__dataclass_fields__
        saved = {k: v for k, v in read_json(run_dir / "config.json").items() if k in known}
        overrides = {**saved, **overrides}
    try:
        return load_config(RBMTrainConfig, args.config, overrides)
    except (ConfigError, ValueError) as err:
        raise UsageError(str(err)) from None


def _write_filters(trainer: Trainer, run_dir: Path) -> None:
    filters = trainer.filter_history
    with atomic_path(run_dir / "filters.npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, filters=filters, epochs=np.arange(len(filters)))


def _filters_figure(filters: np.ndarray, path: Path, title: str) -> None:
    last = len(filters) - 1
    shown = [e for e in SHOWN_EPOCHS if e < last] + [last]
    filter_snapshots(filters[shown], shown, path, title=title)


def run_train(args: argparse.Namespace) -> int:
    run_dir = Path(args.out)
    checkpoint = check_run_dir(run_dir, args.resume, args.force, CHECKPOINT)
    cfg = _resolve_config(args, run_dir)
    ds = _load_data(args.data)
    shape = tuple(ds.metadata["lattice_shape"])
    try:
        check_filter(cfg.filter_size, shape)
    except ValueError as err:
        raise UsageError(f"--filter: {err}") from None
    if cfg.batch > ds.n:
        raise UsageError(f"--batch: {cfg.batch} is larger than the training set ({ds.n} configurations)")
    trainer = Trainer(cfg, ds.spins)
    if args.resume:
        try:
            trainer.load(checkpoint)
        except CheckpointMismatch as err:
            raise UsageError(f"--resume: {err}") from None
    run_dir.mkdir(parents=True, exist_ok=True)
    data = {"path": str(args.data), "n": ds.n, "lattice_shape": list(shape), "K": ds.metadata["K"],
            "sampler": ds.metadata["sampler"], "seed": ds.metadata["seed"]}
    write_json(run_dir / "config.json", {**cfg.to_dict(), **run_provenance(), "data": data, "command": sys.argv})

    if not args.quiet:
        print(f"RBM projector, {cfg.filter_size}x{cfg.filter_size} filter, CD-{cfg.cd_k}"
              f"{' (persistent)' if cfg.persistent else ''}, {ds.n} configurations of {shape[0]}x{shape[1]} "
              f"at K = {ds.metadata['K']:.6g}, batch {cfg.batch}, seed {cfg.seed}", file=sys.stderr)
    total = cfg.epochs * trainer.steps_per_epoch
    done = trainer.epoch * trainer.steps_per_epoch + trainer.batch_index
    bar = tqdm(total=total, initial=done, disable=args.quiet, desc="train", unit="step", file=sys.stderr,
               dynamic_ncols=True)

    def on_epoch(record: dict) -> None:
        _write_filters(trainer, run_dir)
        bar.set_postfix({"epoch": record["epoch"], "cd_gap": f"{record['cd_gap']:.3g}"}, refresh=False)

    try:
        with StopOnSignal() as stop:
            trainer.train(on_step=lambda loss: bar.update(1), on_epoch=on_epoch,
                          should_stop=lambda: stop.requested, checkpoint=checkpoint)
    except NonFiniteLoss as err:
        bar.close()
        print(f"deeprg: error: training stopped: {err}; the last checkpoint is kept in {checkpoint}", file=sys.stderr)
        return 1
    bar.close()
    if stop.requested:
        print(f"deeprg: interrupted in epoch {trainer.epoch + 1}; checkpoint saved in {checkpoint}; "
              "continue with --resume", file=sys.stderr)
        return 130

    _write_filters(trainer, run_dir)
    filters = trainer.filter_history
    metrics = {
        "epochs": trainer.epoch,
        "steps": trainer.epoch * trainer.steps_per_epoch,
        "wall_seconds": trainer.wall_seconds,
        "final_cd_gap": trainer.history[-1]["cd_gap"],
        "final_filter": filters[-1].tolist(),
        "history": trainer.history,
        "seed": cfg.seed,
        "data": data,
    }
    write_json(run_dir / "metrics.json", metrics)
    _filters_figure(filters, run_dir / "filters.png",
                    f"{cfg.filter_size}x{cfg.filter_size} RBM filter, CD-{cfg.cd_k}, {shape[0]}x{shape[1]} data")
    if args.json:
        print_json({k: v for k, v in metrics.items() if k != "history"})
    else:
        print(f"{trainer.epoch} epochs ({metrics['steps']} steps) in {trainer.wall_seconds:.1f} s; final CD gap "
              f"{metrics['final_cd_gap']:.4g}; run directory {run_dir}")
    return 0


# ---- mcrg --------------------------------------------------------------------------------------
def _transform(value: str) -> RGTransform:
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
    return RBMProjector(filters[-1])


def _check_mcrg(args: argparse.Namespace, ds: SpinDataset, transforms: list[RGTransform]) -> None:
    try:
        check_mcrg_levels(tuple(ds.metadata["lattice_shape"]), transforms, args.levels)
    except ValueError as err:
        raise UsageError(f"--levels: {err}") from None
    need = minimum_configurations(args.blocks)
    if ds.n < need:
        raise UsageError(f"--data: {ds.n} configurations are too few for the jackknife with --blocks "
                         f"{args.blocks} (need at least {need})")


def _run(args: argparse.Namespace, ds: SpinDataset, transforms: list[RGTransform]) -> list[MCRGResult]:
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    chunk = 4096
    spins = ds.spins
    bar = tqdm(total=ds.n, disable=args.quiet, desc="mcrg", unit="config", file=sys.stderr, dynamic_ncols=True)
    try:
        return run_mcrg((spins[i : i + chunk] for i in range(0, ds.n, chunk)), spins.shape[1:], transforms, ds.n,
                        args.levels, args.seed, args.blocks, on_chunk=bar.update)
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
    ds = _load_data(args.data)
    transform = _transform(args.transform)
    _check_mcrg(args, ds, [transform])
    (result,) = _run(args, ds, [transform])
    shape = ds.metadata["lattice_shape"]
    summary = {**result.to_dict(), "transform_argument": args.transform, "data": args.data,
               "lattice_shape": shape, "K": ds.metadata["K"], "seed": args.seed, "seconds": result.seconds}
    if args.json:
        print_json(summary)
        return 0
    name = {"majority": "majority rule", "decimation": "decimation"}.get(result.transform, f"RBM projector ({args.transform})")
    print(f"MCRG of {args.data}: Ising {shape[0]}x{shape[1]}, K = {ds.metadata['K']:.10g}; {name}, b = 2; "
          f"{result.n_configurations} configurations in {result.n_blocks} jackknife blocks; seed {args.seed}")
    print(format_table(result))
    print("exact 2D Ising: y_t = 1, y_h = 15/8 = 1.875")
    return 0


# ---- rsrg exponent-vs-epoch ------------------------------------------------------------------
def run_exponent_vs_epoch(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    try:
        cfg, filters, _ = load_filters(run_dir)
    except CheckpointMismatch as err:
        raise UsageError(f"RUN: {err}") from None
    if len(filters) < 2:
        raise UsageError(f"RUN: {str(run_dir)!r} has no completed epoch yet")
    if args.couplings > 7:
        raise UsageError(f"--couplings: must be between 1 and 7, got {args.couplings}")
    ds = _load_data(args.data)
    epochs = list(range(1, len(filters)))
    transforms = [RBMProjector(filters[e]) for e in epochs] + [MajorityRule()]
    _check_mcrg(args, ds, transforms)
    results = _run(args, ds, transforms)
    k = args.couplings - 1
    table = [[[{"mean": e.mean, "error": e.error} for e in row] for row in r.y_t] for r in results[:-1]]
    majority = [[{"mean": e.mean, "error": e.error} for e in row] for row in results[-1].y_t]
    summary = {"epochs": epochs, "levels": args.levels, "couplings": args.couplings, "y_t": table,
               "majority_y_t": majority, "n_configurations": results[0].n_configurations,
               "n_blocks": args.blocks, "seed": args.seed, "data": args.data}
    write_json(run_dir / "exponent_vs_epoch.json", summary)
    last = args.levels - 1
    means = np.array([r.y_t[last][k].mean for r in results[:-1]])
    errors = np.array([r.y_t[last][k].error for r in results[:-1]])
    exponent_vs_epoch(np.array(epochs), means, errors, run_dir / "exponent_vs_epoch.png",
                      {f"majority rule {format_value_error(results[-1].y_t[last][k].mean, results[-1].y_t[last][k].error)}":
                       results[-1].y_t[last][k].mean, "exact": EXACT["y_t"]},
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
    print(f"wrote {run_dir / 'exponent_vs_epoch.json'} and {run_dir / 'exponent_vs_epoch.png'}")
    return 0
