"""The ``deeprg`` command line: ``deeprg flow|exact|sample|data|rsrg|mcrg|cora ...``.

Every command module exposes ``add_parser(subparsers)`` and sets ``run(args) -> int``; numerical
work lives in the library, this package only parses, validates, calls and prints. Only the
module of the command being run is imported (:data:`COMMANDS`), so that ``deeprg --help``,
``deeprg exact`` and ``deeprg sample`` start without importing torch.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings

from deeprg import __version__
from deeprg.cli.common import UsageError

#: Command -> (module that defines it, one-line help shown by ``deeprg --help``).
COMMANDS = {
    "flow": ("deeprg.cli.flow", "NeuralRG: MERA-structured normalizing flows"),
    "exact": ("deeprg.cli.exact", "exact solutions of lattice models"),
    "sample": ("deeprg.cli.sample", "Monte Carlo samples of lattice models"),
    "data": ("deeprg.cli.data", "spin datasets (.npz)"),
    "rsrg": ("deeprg.cli.rsrg", "optimal real-space RG: train the RBM projector (Chung & Kao)"),
    "mcrg": ("deeprg.cli.mcrg", "Monte Carlo RG exponents y_t and y_h of an RG transformation"),
    "cora": ("deeprg.cli.cora", "CORA: a stochastic MERA learned from samples (Beny 2013)"),
}


class Parser(argparse.ArgumentParser):
    """argparse with the package's error format: one line ``deeprg: error: ...`` and exit 2."""

    def error(self, message: str):
        self.exit(2, f"deeprg: error: {message} (see '{self.prog} --help')\n")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The ``deeprg`` parser with the full parser of the command named in ``argv`` (all
    commands when ``argv`` is None) and a one-line entry for each other command."""
    parser = Parser(
        prog="deeprg",
        description="Machine-learned renormalization group on lattice models.",
    )
    parser.add_argument("--version", action="version", version=f"deeprg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = set(COMMANDS) if argv is None else set(argv[:1]) & set(COMMANDS)
    for name, (module, text) in COMMANDS.items():
        if name in chosen:
            importlib.import_module(module).add_parser(sub)
    for name, (module, text) in COMMANDS.items():
        if name not in sub.choices:
            sub.add_parser(name, help=text, add_help=False)
    return parser


def _format_warning(message, category, filename, lineno, line=None) -> str:
    return f"deeprg: warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    warnings.formatwarning = _format_warning
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    from deeprg.config import ConfigError
    from deeprg.data import DatasetError
    from deeprg.memory import keep_freed_memory
    from deeprg.runs import CheckpointMismatch

    keep_freed_memory()  # large tensors reuse freed pages instead of faulting them in again
    try:
        joined = _join_processes(args, argv)
    except (UsageError, ValueError) as err:
        parser.exit(2, f"deeprg: error: {err}\n")
    mismatch, lost = (), ()
    if joined:
        from deeprg.distributed import DistributedMismatch, PeerLost

        mismatch, lost = (DistributedMismatch,), (PeerLost,)
    status = None
    torch = sys.modules.get("torch")  # imported by the commands that compute with it
    if torch is not None:
        # subnormal floats (tiny backward-pass gradients) made flow training steps 4x slower on
        # Intel CPUs; flushed to zero, the numbers stay the same (docs/runs.md, "Floating point")
        torch.set_flush_denormal(True)
    try:
        status = args.run(args)
        return status
    except (UsageError, DatasetError, ConfigError, CheckpointMismatch, argparse.ArgumentTypeError, *mismatch) as err:
        parser.exit(2, f"deeprg: error: {err}\n")
    except lost as err:
        print(f"deeprg: error: {err}; nothing more was written", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("deeprg: interrupted; nothing was written", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    finally:
        if torch is not None:  # a caller in the same process gets torch's default back
            torch.set_flush_denormal(False)
        if joined:
            from deeprg import distributed

            distributed.shutdown(finished=status == 0)


def _join_processes(args: argparse.Namespace, argv: list[str]) -> bool:
    """Under ``torchrun`` with several processes, join the process group (the commands that
    split their work set ``distributed=True`` in their parser defaults; the others are refused)
    and check that every process got the same command line. Returns whether a group was joined.
    Torch is imported only then."""
    if int(os.environ.get("WORLD_SIZE", "1") or "1") <= 1:
        return False
    if not getattr(args, "distributed", False):
        words = " ".join(w for w in (args.command, getattr(args, "action", None)) if w)
        raise UsageError(f"'deeprg {words}' runs on one process only; start it without torchrun "
                         "(see docs/scaling.md for the commands that run on several)")
    from deeprg import distributed

    try:
        world = distributed.init(getattr(args, "device", None) or "cpu")
    except distributed.PeerLost as err:
        raise UsageError(str(err)) from None
    try:
        world.check_same(argv, "command lines")
    except BaseException as err:
        distributed.shutdown()  # a live group torn down at exit can abort ("terminate called ...")
        if isinstance(err, distributed.PeerLost):
            raise UsageError(str(err)) from None
        raise
    return True
