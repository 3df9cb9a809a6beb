"""Run directories: resolved config, checkpoints and metrics, all written atomically.

A run directory of any kind (:data:`RUN_FORMATS`: ``flow``, ``rsrg``, ``cora``) holds
``config.json`` (a format stamp ``"format": "deeprg.<kind>-run/<version>"``, the full resolved
configuration, the package version and the git revision where known), ``checkpoint.pt`` (tensors
and plain containers only: loaded with ``torch.load(weights_only=True)``, so loading never
executes code), ``metrics.json`` and figures. Every file is written to a temporary name
``.<name>.<random>.tmp`` in the same directory and renamed into place, so a crash, Ctrl-C or
``kill -9`` never leaves a half-written file; stale temporaries of a killed run are removed by
the next :meth:`RunDir.open`.

:meth:`RunDir.open` is the one place that decides what ``--out``, ``--resume`` and ``--force``
may do: a new run needs an empty or missing directory; ``--resume`` needs a run of the same kind
and a format this version reads; ``--force`` first deletes the previous run's files (checkpoint
first), so a forced run killed at any moment never leaves an old checkpoint beside a new config.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

import deeprg

__all__ = [
    "CONFIG_NAME",
    "CHECKPOINT_NAME",
    "CheckpointMismatch",
    "RUN_FORMATS",
    "RunDir",
    "atomic_path",
    "check_run_format",
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


#: Run-directory format of each kind; bump a version when runs of the old one can no longer be
#: reloaded.
RUN_FORMATS = {"flow": "deeprg.flow-run/4", "rsrg": "deeprg.rsrg-run/1", "cora": "deeprg.cora-run/1"}
#: File names inside a run directory.
CONFIG_NAME, CHECKPOINT_NAME = "config.json", "checkpoint.pt"


def _format_version(stamp: str) -> tuple[str, int] | None:
    """``("deeprg.flow-run", 4)`` for ``"deeprg.flow-run/4"``; None if not of that shape."""
    name, _, version = stamp.rpartition("/")
    return (name, int(version)) if name.startswith("deeprg.") and version.isdigit() else None


def check_run_format(saved: Any, kind: str, where: str | Path) -> dict:
    """``saved`` (a parsed ``config.json``) if it is a run of ``kind`` in the format this version
    reads; else :class:`CheckpointMismatch` saying whether it is another kind of run, written by
    a newer or an older deeprg, or no deeprg run at all."""
    expected = RUN_FORMATS[kind]
    stamp = saved.get("format") if isinstance(saved, dict) else None
    if stamp == expected:
        return saved
    parsed = _format_version(stamp) if isinstance(stamp, str) else None
    if parsed is None:
        raise CheckpointMismatch(f"{str(where)!r} is not a deeprg {kind} run (no run format stamp)")
    name, version = parsed
    want_name, want_version = _format_version(expected)
    if name != want_name:
        other = name.removeprefix("deeprg.").removesuffix("-run")
        raise CheckpointMismatch(f"{str(where)!r} is a deeprg {other} run, not a {kind} run")
    age = "a newer" if version > want_version else "an older"
    raise CheckpointMismatch(f"{str(where)!r} was written by {age} deeprg (run format {stamp!r}; deeprg "
                             f"{deeprg.__version__} reads {expected!r})")


class RunDir:
    """A run directory of one ``kind`` (see :data:`RUN_FORMATS`), opened by :meth:`open`."""

    def __init__(self, path: str | Path, kind: str) -> None:
        if kind not in RUN_FORMATS:
            raise ValueError(f"kind must be one of {tuple(RUN_FORMATS)}, got {kind!r}")
        self.path, self.kind = Path(path), kind
        self.config_path = self.path / CONFIG_NAME
        self.checkpoint = self.path / CHECKPOINT_NAME
        #: Set by :meth:`open` with ``force`` when the directory holds a run to be replaced.
        self.replacing = False

    @classmethod
    def open(cls, path: str | Path, kind: str, *, resume: bool = False, force: bool = False) -> RunDir:
        """Check and prepare ``path`` for a training run, before any work starts.

        * a new run (neither flag): ``path`` must not exist or be an empty directory;
        * ``resume``: ``path`` must hold a run of ``kind`` in this version's format, with its
          checkpoint; :meth:`saved_config` then gives its config;
        * ``force``: if ``path`` holds a run, :attr:`replacing` is set and the caller deletes it
          with :meth:`clear` once the new run's config has been checked (all its files, the
          checkpoint first); a directory that is not a run is written into, its files left
          alone. ``resume`` and ``force`` exclude each other.

        Nothing is written or deleted here except stale temporary files of a killed run. Raises
        :class:`CheckpointMismatch` (``ValueError``) naming the problem and the way out."""
        run = cls(path, kind)
        p = run.path
        if resume and force:
            raise CheckpointMismatch("--resume and --force exclude each other")
        if p.exists() and not p.is_dir():
            raise CheckpointMismatch(f"--out: {str(p)!r} exists and is not a directory")
        if p.is_dir() and not os.access(p, os.W_OK | os.X_OK):
            raise CheckpointMismatch(f"--out: directory {str(p)!r} is not writable")
        if not p.exists():
            if resume:
                raise CheckpointMismatch(f"--resume: run directory {str(p)!r} does not exist")
            parent = next((a for a in p.absolute().parents if a.exists()), None)
            if parent is None or not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
                raise CheckpointMismatch(f"--out: cannot create {str(p)!r} ({str(parent)!r} is not a writable "
                                         "directory)")
            return run
        run.remove_stale_temporaries()
        if resume:
            run.saved_config()  # checks kind and format
            if not run.checkpoint.exists():
                raise CheckpointMismatch(f"--resume: {str(p)!r} has no {CHECKPOINT_NAME} to continue from")
            return run
        entries = sorted(e.name for e in p.iterdir())
        is_run = CONFIG_NAME in entries or CHECKPOINT_NAME in entries
        if force:
            run.replacing = is_run
            return run
        if entries:
            if is_run:
                raise CheckpointMismatch(f"--out: {str(p)!r} already holds a run; pass --resume to continue it "
                                         "or --force to delete it and start over")
            shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
            raise CheckpointMismatch(f"--out: {str(p)!r} is not empty ({shown}) and is not a deeprg run; choose "
                                     "another directory, or pass --force to write into it")
        return run

    def remove_stale_temporaries(self) -> None:
        """Delete ``.<name>.*.tmp`` files left by a killed :func:`atomic_path`."""
        for tmp in self.path.glob(".*.tmp"):
            if tmp.is_file():
                tmp.unlink(missing_ok=True)

    def clear(self) -> None:
        """Delete the run: everything in the directory, the checkpoint first (``--force``)."""
        self.checkpoint.unlink(missing_ok=True)
        self.config_path.unlink(missing_ok=True)
        for entry in self.path.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()

    def saved_config(self) -> dict:
        """The parsed ``config.json`` of this run, checked for kind and format."""
        if not self.config_path.exists():
            raise CheckpointMismatch(f"run directory {str(self.path)!r} has no {CONFIG_NAME}")
        try:
            saved = json.loads(self.config_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
            raise CheckpointMismatch(f"{str(self.config_path)!r} is corrupt ({type(err).__name__}: {err})") from None
        return check_run_format(saved, self.kind, self.config_path)

    def load_config(self, cls: type, **changes: Any):
        """The run's config as an instance of the dataclass ``cls`` (keys ``cls`` does not know,
        such as provenance, are left out), with ``changes`` applied; :class:`CheckpointMismatch`
        naming the file if it does not make a valid ``cls``."""
        import dataclasses

        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in self.saved_config().items() if k in known}
        values.update({k: v for k, v in changes.items() if v is not None})
        try:
            return cls(**values)
        except (TypeError, ValueError) as err:
            raise CheckpointMismatch(f"{str(self.config_path)!r} is not a usable {self.kind} config ({err})") from None

    def write_config(self, config: dict, **extra: Any) -> None:
        """Create the directory if needed and write ``config.json``: the format stamp,
        ``config`` (the resolved config as a dict), provenance and ``extra`` keys."""
        self.path.mkdir(parents=True, exist_ok=True)
        write_json(self.config_path, {"format": RUN_FORMATS[self.kind], **config, **run_provenance(), **extra})


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
    import torch

    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path, fmt: str, kind: str, schema: dict[str, type | tuple[type, ...]]) -> dict:
    """Load a checkpoint written by :func:`save_checkpoint` without executing code
    (``weights_only=True``) and check it: its ``"format"`` entry is ``fmt``, its keys are exactly
    ``"format"`` and those of ``schema`` (an extra key means a newer deeprg wrote it) and each
    value has the schema's type (``int`` never ``bool``). ``kind`` names the checkpoint in
    messages (``"flow"``, ``"RBM"``, ...). Tensor shapes are checked by the trainer that loads
    the state. Raises :class:`CheckpointMismatch`."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointMismatch(f"checkpoint {str(path)!r} does not exist") from None
    except Exception as err:  # corrupt, tampered or foreign file
        raise CheckpointMismatch(f"{str(path)!r} is not a readable deeprg {kind} checkpoint ({err})") from None
    if not isinstance(state, dict) or state.get("format") != fmt:
        found = state.get("format") if isinstance(state, dict) else None
        if isinstance(found, str) and found.startswith(fmt.rpartition("/")[0] + "/"):
            raise CheckpointMismatch(f"{str(path)!r} was written by another deeprg version (checkpoint format "
                                     f"{found!r}; this version reads {fmt!r})")
        raise CheckpointMismatch(f"{str(path)!r} is not a deeprg {kind} checkpoint")
    missing = sorted(set(schema) - set(state))
    extra = sorted(set(state) - set(schema) - {"format"})
    if extra:
        raise CheckpointMismatch(f"{str(path)!r} holds entries this deeprg does not know ({', '.join(extra)}): "
                                 f"written by a newer deeprg?")
    if missing:
        raise CheckpointMismatch(f"{str(path)!r} is incomplete: {', '.join(missing)} missing")
    for key, types_ in schema.items():
        value = state[key]
        allowed = types_ if isinstance(types_, tuple) else (types_,)
        if isinstance(value, bool) and bool not in allowed or not isinstance(value, allowed):
            names = " or ".join(t.__name__ for t in allowed)
            raise CheckpointMismatch(f"{str(path)!r}: entry {key!r} must be {names}, got {type(value).__name__}")
    return state


def saved_device_type(config: dict, path: str | Path) -> str:
    """``"cpu"`` or ``"cuda"``: the device type a checkpoint's run computed on, from its config's
    ``device`` (``"cpu"`` for checkpoints older than that key); the device need not exist on
    this machine. Raises :class:`CheckpointMismatch` for any other value."""
    import torch

    value = config.get("device", "cpu")
    try:
        device = torch.device(value)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise CheckpointMismatch(f"{str(path)!r} holds an unusable config (device {value!r})")
    return device.type


def restore_generator(generator, state, saved_type: str, key: list[int], path: str | Path, what: str) -> None:
    """Continue the ``torch.Generator`` ``generator`` from a checkpoint's generator ``state``.

    A checkpoint written on another device type (``saved_type``, from :func:`saved_device_type`)
    holds another kind of generator's state: a CUDA generator's cannot drive a CPU generator,
    nor the reverse. ``generator`` is then seeded from ``numpy.random.SeedSequence(key)`` (the
    run's seed and its position, so a resumed run is still reproducible) and a
    ``RuntimeWarning`` says that ``what`` (e.g. "the flow's noise") continues with a fresh
    stream; the run goes on, but is not the one it would have been on one device type. On the
    same device type the run continues exactly. Raises :class:`CheckpointMismatch` for a state
    that does not fit ``generator``."""
    import warnings

    import numpy as np

    here = generator.device.type
    if saved_type == here:
        try:
            generator.set_state(state)
        except (RuntimeError, ValueError, TypeError) as err:
            raise CheckpointMismatch(f"{str(path)!r}: its generator state does not fit ({err})") from None
        return
    generator.manual_seed(int(np.random.SeedSequence(key).generate_state(1, np.uint64)[0]))
    warnings.warn(f"checkpoint {str(path)!r} was written on {saved_type}; {what} cannot continue on {here}, so it "
                  f"continues with a fresh stream seeded from {key} (the run differs from one that stayed on "
                  f"{saved_type})", RuntimeWarning, stacklevel=3)


def config_mismatch(saved: dict, current: dict, keys: Iterable[str]) -> str:
    """``"key: checkpoint a vs b, ..."`` for each of ``keys`` whose value differs between the
    ``saved`` and the ``current`` config dicts; empty when they all agree."""
    return ", ".join(f"{k}: checkpoint {saved.get(k)!r} vs {current.get(k)!r}"
                     for k in keys if saved.get(k) != current.get(k))
