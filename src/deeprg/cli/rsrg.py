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

from deeprg.cli import mcrg
from deeprg.cli.common import (
    StopOnSignal,
    UsageError,
    check_run_dir,
    int_at_least,
    positive_float,
    print_json,
)
from deeprg.config import ConfigError, load_config
from deeprg.data import SpinDataset, load_dataset
from deeprg.plots import filter_snapshots
from deeprg.rsrg.rbm import check_filter
from deeprg.rsrg.train import (
    SCHEDULES,
    CheckpointMismatch,
    NonFiniteLoss,
    RBMTrainConfig,
    Trainer,
)
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

    mcrg.add_actions(sub, actions)

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


