"""``deeprg rsrg train``: optimal real-space RG with an RBM projector (Chung & Kao).

``rsrg train`` writes a run directory: ``config.json``, ``checkpoint.pt`` (every epoch, every
``checkpoint_seconds``, on Ctrl-C or SIGTERM), ``filters.npz`` (``filters``: ``(epochs + 1, f,
f)`` for 2D data, ``(epochs + 1, f, f, f)`` for 3D, row 0 the initialization; ``epochs``), ``metrics.json`` and ``filters.png``. ``deeprg mcrg``
and ``deeprg rsrg exponent-vs-epoch`` (:mod:`deeprg.cli.mcrg`) read it. ``--device cuda`` trains
on a GPU; the checkpoint holds CPU tensors, so the run directory is read (and resumed) anywhere.
"""

from __future__ import annotations

import argparse

from deeprg.cli import mcrg
from deeprg.cli.common import (
    UsageError,
    cpu_threads,
    device,
    int_at_least,
    positive_float,
    seed,
)
from deeprg.cli.training import Option, TrainCommand, add_train_options, train
from deeprg.rsrg.train import SCHEDULES, RBMTrainConfig

#: Snapshot epochs shown in filters.png besides the last (the seed's Fig. 1 shows 1, 3, 5, 50).
SHOWN_EPOCHS = (1, 3, 5, 10, 25)

OPTIONS = [
    Option("filter_size", ("--filter",), "filter size f, even", {"type": int_at_least(2)}),
    Option("cd_k", ("--cd-k",), "Gibbs sweeps per CD step", {"type": int_at_least(1)}),
    Option("persistent", ("--persistent",), "persistent contrastive divergence (PCD)",
           {"action": argparse.BooleanOptionalAction, "default": None}),
    Option("epochs", ("--epochs",), "training epochs", {"type": int_at_least(1)}),
    Option("batch", ("--batch",), "configurations per minibatch", {"type": int_at_least(1)}),
    Option("lr", ("--lr",), "initial Adam learning rate", {"type": positive_float}),
    Option("lr_final", ("--lr-final",), "final learning rate", {"type": positive_float}),
    Option("decay_epochs", ("--decay-epochs",), "epochs of square-root decay from --lr to --lr-final",
           {"type": positive_float}),
    Option("schedule", ("--schedule",), "form of the square-root learning-rate decay", {"choices": SCHEDULES}),
    Option("seed", ("--seed",), "random seed, 0 <= seed < 2^64", {"type": seed}),
    Option("dtype", ("--dtype",), "floating-point precision", {"choices": ("float32", "float64")}),
    Option("device", ("--device",), "torch device: cpu, cuda or cuda:N (the same --seed draws other Gibbs noise on a "
           "GPU than on the CPU)", {"type": device}),
    Option("threads", ("--threads",), "torch CPU threads, 1 .. the number of CPUs", {"type": cpu_threads}),
]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("rsrg", help="optimal real-space RG: train the RBM projector (Chung & Kao)")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    q = actions.add_parser(
        "train", help="train the RBM projector's filter by contrastive divergence",
        description="Train the translation-invariant filter (f x f in 2D, f x f x f in 3D) of the RBM projector "
        "P(mu|sigma) = exp(sum W sigma mu) / Y(sigma) on Monte Carlo configurations by minimizing "
        "KL(Boltzmann || Y / sum Y) with CD-k and Adam (Chung & Kao Eq. 8). Options override the "
        "--config file, which overrides the defaults; --resume continues the run's saved config.",
    )
    q.add_argument("--data", required=True, help="training dataset (.npz, Ising, 2D or 3D)")
    add_train_options(q, COMMAND, out_default=None)
    q.set_defaults(run=lambda args: train(args, COMMAND))
    mcrg.add_exponent_vs_epoch(actions)


def _prepare(args: argparse.Namespace) -> dict:
    from deeprg.data import load_dataset

    ds = load_dataset(args.data, model="ising", d=(2, 3))
    return {"context": (args, ds)}


def _memory(cfg, context) -> tuple[float, str]:
    args, ds = context
    return cfg.memory_estimate(ds.n, tuple(ds.metadata["lattice_shape"]))


def _build(cfg, context):
    from deeprg.rsrg.rbm import check_filter
    from deeprg.rsrg.train import Trainer

    _, ds = context
    try:
        check_filter(cfg.filter_size, tuple(ds.metadata["lattice_shape"]))
    except ValueError as err:
        raise UsageError(f"--filter: {err}") from None
    if cfg.batch > ds.n:
        raise UsageError(f"--batch: {cfg.batch} is larger than the training set ({ds.n} configurations)")
    return Trainer(cfg, ds.spins)


def _data_info(context) -> dict:
    args, ds = context
    return {"path": str(args.data), "n": ds.n, "lattice_shape": list(ds.metadata["lattice_shape"]),
            "K": ds.metadata["K"], "sampler": ds.metadata["sampler"], "seed": ds.metadata["seed"]}


def _describe(trainer) -> str:
    cfg, shape = trainer.cfg, trainer.shape
    return (f"RBM projector, {_cube(cfg.filter_size, len(shape))} filter, CD-{cfg.cd_k}"
            f"{' (persistent)' if cfg.persistent else ''}, {trainer.data_info['n']} configurations of "
            f"{'x'.join(map(str, shape))}, batch {cfg.batch}, seed {cfg.seed}"
            f"{'' if trainer.device.type == 'cpu' else f', on {trainer.device}'}")


def _cube(f: int, d: int) -> str:
    """``'8x8'`` or ``'4x4x4'``."""
    return "x".join([str(f)] * d)


def _write_filters(trainer, run) -> None:
    import numpy as np

    from deeprg.runs import atomic_path

    filters = trainer.filter_history
    with atomic_path(run.path / "filters.npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, filters=filters, epochs=np.arange(len(filters)))


def _on_record(trainer, run, record: dict) -> None:
    if record["epoch"] is not None:
        _write_filters(trainer, run)


def _postfix(record: dict) -> dict | None:
    epoch = record["epoch"]
    return None if epoch is None else {"epoch": epoch["epoch"], "cd_gap": f"{epoch['cd_gap']:.3g}"}


def _finish(trainer, run, context) -> tuple[dict, list[str]]:
    from deeprg.plots import filter_snapshots
    from deeprg.runs import write_json

    cfg = trainer.cfg
    _write_filters(trainer, run)
    filters = trainer.filter_history
    metrics = {
        "epochs": trainer.epoch,
        "steps": trainer.epoch * trainer.steps_per_epoch,
        "wall_seconds": trainer.wall_seconds,
        "final_cd_gap": trainer.history[-1]["cd_gap"],
        "final_filter": filters[-1].tolist(),
        "history": trainer.history,
        "seed": cfg.seed,
        "data": _data_info(context),
    }
    write_json(run.path / "metrics.json", metrics)
    last = len(filters) - 1
    shown = [e for e in SHOWN_EPOCHS if e < last] + [last]
    shape = trainer.shape
    filter_snapshots(filters[shown], shown, run.path / "filters.png",
                     title=f"{_cube(cfg.filter_size, len(shape))} RBM filter, CD-{cfg.cd_k}, {'x'.join(map(str, shape))} data")
    line = (f"{trainer.epoch} epochs ({metrics['steps']} steps) in {trainer.wall_seconds:.1f} s; final CD gap "
            f"{metrics['final_cd_gap']:.4g}; run directory {run.path}")
    return {k: v for k, v in metrics.items() if k != "history"}, [line]


COMMAND = TrainCommand(
    kind="rsrg",
    config_class=RBMTrainConfig,
    options=OPTIONS,
    unit="minibatch",
    prepare=_prepare,
    memory=_memory,
    build=_build,
    provenance=lambda trainer, context: {"data": _data_info(context)},
    describe=_describe,
    postfix=_postfix,
    finish=_finish,
    on_record=_on_record,
)
