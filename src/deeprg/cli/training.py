"""The one training driver behind ``deeprg flow train``, ``deeprg rsrg train`` and ``deeprg cora
train``: run directory, config, resume, progress, signals, non-finite losses, metrics.

Each command describes itself with a :class:`TrainCommand` (its config class, the options that
map to config keys, how to build the trainer and what to write at the end); :func:`train`
does the rest, in this order, so that bad input is refused before any work and nothing is
written before the run is known to be valid:

1. open the run directory (:meth:`deeprg.runs.RunDir.open`: ``--out``, ``--resume``,
   ``--force`` checks);
2. resolve the config: a new run from defaults < ``--config`` TOML < options; a resumed run from
   its saved config with only the keys its config class lists in ``RESUMABLE`` changeable
   (:func:`deeprg.config.resume_config`);
3. check the estimated memory, build the trainer, load the checkpoint when resuming;
4. delete the replaced run (``--force``), write ``config.json``;
5. train with a progress bar on stderr; Ctrl-C or SIGTERM checkpoints and exits 130 / 143;
   a non-finite loss keeps the last good checkpoint and exits 1;
6. write metrics and figures, print the summary (``--json``: strict JSON).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from deeprg.cli.common import StopOnSignal, UsageError, print_json
from deeprg.config import (
    ConfigError,
    check_memory,
    default_text,
    load_config,
    read_toml,
    resume_config,
)
from deeprg.runs import CheckpointMismatch, RunDir


@dataclass
class Option:
    """A command-line option that sets config key ``key``: ``flags`` and ``argparse`` keywords;
    the help text gets the config's default appended."""

    key: str
    flags: tuple[str, ...]
    help: str
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: Help text of the default where the config's value needs words (e.g. ``"[2 log2 L]"``).
    default: str | None = None


@dataclass
class TrainCommand:
    """What one training command contributes to :func:`train`.

    ``kind``: run kind (:data:`deeprg.runs.RUN_FORMATS`); ``config_class``: its config dataclass
    (with ``RESUMABLE`` and ``memory_estimate``); ``options``: the config options; ``unit``: the
    progress-bar unit; ``prepare(args) -> dict``: reads inputs and returns config values they fix
    (e.g. CORA's lattice shape from the data) plus a ``"context"`` entry passed on; ``memory(cfg,
    context) -> (bytes, keys)``; ``build(cfg, context) -> trainer``; ``provenance(trainer,
    context) -> dict``: extra ``config.json`` keys; ``describe(trainer) -> str``: the header
    line; ``postfix(record) -> dict | None``: progress-bar postfix; ``on_record(trainer, run,
    record)``: extra work after each unit; ``finish(trainer, run, context) -> (metrics, lines)``:
    write metrics and figures, return the summary and the lines printed without ``--json``.
    """

    kind: str
    config_class: type
    options: list[Option]
    unit: str
    prepare: Callable[[argparse.Namespace], dict]
    memory: Callable[[Any, Any], tuple[float, str]]
    build: Callable[[Any, Any], Any]
    provenance: Callable[[Any, Any], dict]
    describe: Callable[[Any], str]
    postfix: Callable[[dict], dict | None]
    finish: Callable[[Any, RunDir, Any], tuple[dict, list[str]]]
    on_record: Callable[[Any, RunDir, dict], None] | None = None


def add_train_options(parser: argparse.ArgumentParser, command: TrainCommand, out_default: str | None) -> None:
    """Add the config options (help with the config's default), ``--config``, ``--out``,
    ``--resume``, ``--force``, ``--json`` and ``--quiet`` to ``parser``."""
    cls = command.config_class
    parser.add_argument("--config", help=f"TOML file with any {cls.__name__} keys (options override it)")
    for opt in command.options:
        shown = opt.default or default_text(cls, opt.key)
        parser.add_argument(*opt.flags, dest=opt.key, help=f"{opt.help} {shown}", **opt.kwargs)
    if out_default is None:
        parser.add_argument("--out", required=True, help="run directory")
    else:
        parser.add_argument("--out", default=out_default, help=f"run directory [{out_default}]")
    changeable = ", ".join(_option_names(command).get(k, k) for k in cls.RESUMABLE)
    parser.add_argument("--resume", action="store_true",
                        help=f"continue the run in --out with its saved config; only {changeable} may change")
    parser.add_argument("--force", action="store_true", help="delete the run in --out and start over")
    parser.add_argument("--json", action="store_true", help="print the final metrics as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or header")


def _option_names(command: TrainCommand) -> dict[str, str]:
    """Config key -> its command-line option (the key itself where there is none)."""
    names = {f.name: f.name for f in dataclasses.fields(command.config_class)}
    names.update({opt.key: opt.flags[0] for opt in command.options})
    return names


def _resolve(args: argparse.Namespace, command: TrainCommand, run: RunDir, fixed: dict):
    cls = command.config_class
    requested = {opt.key: getattr(args, opt.key) for opt in command.options if getattr(args, opt.key) is not None}
    try:
        if not args.resume:
            return load_config(cls, args.config, {**fixed, **requested})
        from_file = read_toml(args.config) if args.config is not None else {}
        return resume_config(cls, run.saved_config(), {**from_file, **fixed, **requested}, _option_names(command))
    except (ConfigError, ValueError, TypeError) as err:
        raise UsageError(str(err)) from None


def train(args: argparse.Namespace, command: TrainCommand) -> int:
    """Run the training command described by ``command`` (see the module docstring). Under
    ``torchrun`` (:mod:`deeprg.distributed`) every process checks, resolves and builds the
    same run (a config that differs between processes is refused on all of them); rank 0 alone
    writes the run directory and prints, and a stop request on any process stops all of them at
    the same step."""
    from deeprg.distributed import current

    world = current()
    try:
        run = RunDir.open(args.out, command.kind, resume=args.resume, force=args.force)
    except CheckpointMismatch as err:
        raise UsageError(str(err)) from None
    fixed = command.prepare(args)
    context = fixed.pop("context", None)
    cfg = _resolve(args, command, run, fixed)
    world.check_same(cfg.to_dict(), "configs")
    try:
        check_memory(*command.memory(cfg, context), getattr(cfg, "device", "cpu"))
    except ConfigError as err:
        raise UsageError(str(err)) from None
    trainer = command.build(cfg, context)
    if args.resume:
        try:
            trainer.load(run.checkpoint)
        except CheckpointMismatch as err:
            raise UsageError(f"--resume: {err}") from None
    quiet = args.quiet or not world.main
    if world.main:
        if run.replacing:
            run.clear()
        run.write_config(cfg.to_dict(), **command.provenance(trainer, context), command=sys.argv,
                         processes=world.size)
    if not quiet:
        print(command.describe(trainer), file=sys.stderr)

    from tqdm import tqdm

    bar = tqdm(total=trainer.total, initial=trainer.position, disable=quiet, desc="train",
               unit=command.unit, file=sys.stderr, dynamic_ncols=True)

    def on_record(record: dict) -> None:
        bar.update(trainer.position - bar.n)
        if command.on_record is not None:
            command.on_record(trainer, run, record)
        postfix = command.postfix(record)
        if postfix:
            bar.set_postfix(postfix, refresh=False)

    from deeprg.training import NonFiniteLoss

    try:
        with StopOnSignal() as stop:
            trainer.train(on_record=on_record, should_stop=lambda: world.any(stop.requested),
                          checkpoint=run.checkpoint)
    except NonFiniteLoss as err:
        bar.close()
        if world.main:
            kept = (f"the last good checkpoint is kept in {run.checkpoint}" if run.checkpoint.exists()
                    else "no checkpoint was saved")
            print(f"deeprg: error: training stopped: {err}; {kept}", file=sys.stderr)
        return 1
    bar.close()
    if world.any(stop.requested):
        import signal

        signum = stop.signum if stop.requested else signal.SIGTERM
        if world.main:
            by = signal.Signals(signum).name if stop.requested else "a signal to another process"
            print(f"deeprg: stopped by {by} at {command.unit} {trainer.position} of {trainer.total}; checkpoint "
                  f"saved in {run.checkpoint}; continue with --resume", file=sys.stderr)
        return 128 + signum
    if not world.main:
        return 0
    metrics, lines = command.finish(trainer, run, context)
    if args.json:
        print_json(metrics)
    else:
        print("\n".join(lines))
    return 0
