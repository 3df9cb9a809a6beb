"""Argument types, output helpers and error conventions shared by the ``deeprg`` commands.

Errors in user input are raised as :class:`UsageError` (or as ``argparse.ArgumentTypeError`` from
an argument type) before any work starts; :func:`deeprg.cli.main` turns them into a one-line
``deeprg: error: ...`` message and exit status 2, as argparse does.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import numpy as np

from deeprg.models.ising import is_critical, parse_coupling


class UsageError(Exception):
    """Bad user input found after parsing (exit status 2)."""


class StopOnSignal:
    """Turn SIGINT (Ctrl-C) and SIGTERM (sent by batch schedulers before they kill a job) into a
    flag checked between units of work (the unit in flight completes). A second signal aborts at
    once. ``signum`` records the first signal received."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def __enter__(self):
        self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:  # a second signal aborts at once
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def coupling(value: str) -> float:
    """argparse type for ``--beta``: ``critical`` or a finite float > 0."""
    try:
        return parse_coupling(value, "beta")
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def coupling_or_critical(value: str) -> float | str:
    """argparse type for a ``--beta`` whose ``critical`` depends on another option (the dimension):
    ``'critical'`` as is, else a finite float > 0; resolve with
    :func:`deeprg.models.ising.parse_coupling` once the dimension is known."""
    if is_critical(value):
        return "critical"
    return coupling(value)


def int_at_least(minimum: int):
    """argparse type: an integer >= ``minimum``."""

    def parse(value: str) -> int:
        try:
            v = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {value!r}") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {v}")
        return v

    parse.__name__ = f"integer >= {minimum}"
    return parse


def seed(value: str) -> int:
    """argparse type for ``--seed``: an integer in ``[0, 2^64)`` (what numpy's ``SeedSequence``
    and torch's generators take)."""
    try:
        v = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, 2^64), got {value!r}") from None
    if not 0 <= v < 2**64:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, 2^64), got {v}")
    return v


def cpu_threads(value: str) -> int:
    """argparse type for ``--threads``: an integer from 1 to the number of CPUs (more threads than
    CPUs only slows torch down, and a huge count makes it fail or hang)."""
    cpus = os.cpu_count() or 1
    try:
        v = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer between 1 and {cpus}, got {value!r}") from None
    if not 1 <= v <= cpus:
        raise argparse.ArgumentTypeError(f"must be an integer between 1 and {cpus} (the CPUs of this machine), "
                                         f"got {v}")
    return v


def positive_float(value: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        v = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {value!r}") from None
    if not v > 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {value!r}")
    return v


def writable_file(path: str, option: str) -> Path:
    """Check, before any work, that ``path`` can be created or replaced; return it."""
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    if p.is_dir():
        raise UsageError(f"{option}: {path!r} is a directory, expected a file path")
    if parent.exists() and not parent.is_dir():
        raise UsageError(f"{option}: {str(parent)!r} is not a directory")
    if not parent.is_dir():
        raise UsageError(f"{option}: directory {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK):
        raise UsageError(f"{option}: directory {str(parent)!r} is not writable")
    return p


def device(value: str) -> str:
    """argparse type for ``--device``: ``cpu``, ``cuda`` or ``cuda:N`` where this torch has that CUDA
    device (torch is imported only for a CUDA request)."""
    v = value.strip().lower()
    if v == "cpu":
        return v
    if v == "cuda" or (v.startswith("cuda:") and v[5:].isdigit()):
        import torch

        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{value!r} requested but this torch has no CUDA device; use cpu")
        index = int(v[5:]) if ":" in v else 0
        if index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(
                f"{value!r}: this machine has {torch.cuda.device_count()} CUDA device(s), cuda:0 .. "
                f"cuda:{torch.cuda.device_count() - 1}")
        return v
    raise argparse.ArgumentTypeError(f"must be cpu, cuda or cuda:N, got {value!r}")


def distinct_paths(**paths: str | Path | None) -> None:
    """Refuse two of a command's files (inputs and outputs, keyed by option name, ``None``
    skipped) that are one and the same file, so that no output overwrites another output or an
    input of the same command."""
    seen: dict[Path, str] = {}
    for option, path in paths.items():
        if path is None:
            continue
        key = Path(os.path.abspath(path))
        try:
            key = key.resolve()
        except OSError:
            pass
        name = "--" + option.replace("_", "-")
        if key in seen:
            raise UsageError(f"{name}: {str(path)!r} is the same file as {seen[key]}; choose another path")
        seen[key] = name


def to_jsonable(obj: Any) -> Any:
    """Convert numpy scalars/arrays and dataclass-like records to JSON types."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if hasattr(obj, "to_dict"):
        return to_jsonable(obj.to_dict())
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def print_json(summary: dict) -> None:
    """Print ``summary`` as strict JSON: NaN and infinities become ``null``."""
    json.dump(to_jsonable(summary), sys.stdout, indent=2, allow_nan=False)
    sys.stdout.write("\n")
