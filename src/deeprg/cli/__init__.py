"""The ``deeprg`` command line: ``deeprg flow|exact|sample|data ...``.

Every subcommand module exposes ``add_parser(subparsers)`` and sets ``run(args) -> int``; numerical
work lives in the library, this package only parses, validates, calls and prints.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from deeprg import __version__
from deeprg.cli import cora, data, exact, flow, rsrg, sample
from deeprg.cli.common import UsageError
from deeprg.data import DatasetError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deeprg",
        description="Machine-learned renormalization group on lattice models.",
    )
    parser.add_argument("--version", action="version", version=f"deeprg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (flow, exact, sample, data, rsrg, cora):
        module.add_parser(sub)
    return parser


def _format_warning(message, category, filename, lineno, line=None) -> str:
    return f"deeprg: warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    warnings.formatwarning = _format_warning
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (UsageError, DatasetError, argparse.ArgumentTypeError) as err:
        parser.exit(2, f"deeprg: error: {err}\n")
    except KeyboardInterrupt:
        print("deeprg: interrupted; nothing was written", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
