"""Run directories: resolved config, checkpoints and metrics, all written atomically.

A run directory holds ``config.json`` (the full resolved configuration, the package version and
the git revision where known), ``checkpoint.pt`` (tensors only: loadable with
``torch.load(weights_only=True)``), ``metrics.json`` and figures. Every file is written to a
temporary name in the same directory and renamed into place, so a crash or Ctrl-C never leaves a
half-written file. The trainers of :mod:`deeprg.flows`, :mod:`deeprg.rsrg` and :mod:`deeprg.cora`
share the checkpoint helpers here.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch

import deeprg

__all__ = [
    "CheckpointMismatch",
    "atomic_path",
    "config_mismatch",
    "git_revision",
    "load_checkpoint",
    "read_json",
    "run_provenance",
    "save_checkpoint",
    "write_json",
]


class CheckpointMismatch(ValueError):
    """A checkpoint or run directory that is missing, unreadable, or for another model, data or
    version."""


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it to ``path``, on failure
    remove it (``path`` itself is never half-written)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _clean(obj: Any) -> Any:
    """JSON-safe copy: non-finite floats become None, tuples lists."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        return _clean(obj.item())
    return obj


def write_json(path: str | Path, data: dict) -> None:
    """Write ``data`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_clean(data), indent=2) + "\n")


def read_json(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


def git_revision() -> str | None:
    """The git commit of the deeprg source tree, if it is a checkout; else None."""
    src = Path(deeprg.__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=src, capture_output=True, text=True, timeout=5, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def run_provenance() -> dict[str, Any]:
    """Package version and git revision, recorded in every run's config."""
    return {"deeprg_version": deeprg.__version__, "git_revision": git_revision()}


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write ``state`` (tensors and plain containers only) with ``torch.save``, atomically."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path, fmt: str, kind: str) -> dict:
    """Load a checkpoint written by :func:`save_checkpoint` without executing code
    (``weights_only=True``) and check that its ``"format"`` entry is ``fmt``. ``kind`` names the
    checkpoint in messages (``"flow"``, ``"RBM"``, ...). Raises :class:`CheckpointMismatch`."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointMismatch(f"checkpoint {str(path)!r} does not exist") from None
    except Exception as err:  # corrupt or foreign file
        raise CheckpointMismatch(f"{str(path)!r} is not a readable deeprg {kind} checkpoint ({err})") from None
    if not isinstance(state, dict) or state.get("format") != fmt:
        raise CheckpointMismatch(f"{str(path)!r} is not a deeprg {kind} checkpoint")
    return state


def config_mismatch(saved: dict, current: dict, keys: Iterable[str]) -> str:
    """``"key: checkpoint a vs b, ..."`` for each of ``keys`` whose value differs between the
    ``saved`` and the ``current`` config dicts; empty when they all agree."""
    return ", ".join(f"{k}: checkpoint {saved.get(k)!r} vs {current.get(k)!r}"
                     for k in keys if saved.get(k) != current.get(k))
