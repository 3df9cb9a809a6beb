"""Typed configurations shared by the three trainers: loading, validation and the resume rule.

A config is a dataclass. :func:`load_config` fills it from its defaults < a TOML file <
overrides (e.g. command-line flags); unknown keys are errors that name the key and list the
known ones. Every config's ``__post_init__`` starts with :func:`check_types`, which checks each
value against the field's annotation (``bool`` only ``true``/``false``, integers not booleans,
numbers finite, ``list[int]`` a list of integers) so that TOML ``symmetrize = "no"`` or
``steps = true`` is an error rather than a silent ``True`` or one step, then checks ranges with
:func:`need`. :func:`resume_config` implements the one resume rule of every run: a resumed run
continues its *saved* config, and only the keys its config class lists in ``RESUMABLE`` may be
changed.

Also here, so that the three configs share them: torch dtypes by name, device resolution,
the cosine learning-rate factor, memory estimates checked against the machine, and the
``[default]`` text of command-line help.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

__all__ = [
    "ConfigError",
    "DTYPE_NAMES",
    "available_memory",
    "check_memory",
    "check_types",
    "cosine_factor",
    "default_text",
    "load_config",
    "merge_config",
    "need",
    "resolve_device",
    "resume_config",
    "torch_dtype",
]

T = TypeVar("T")

#: Floating-point dtypes a config may name.
DTYPE_NAMES = ("float32", "float64")


class ConfigError(ValueError):
    """A configuration file, key or value that cannot be used."""


def _known_keys(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def merge_config(cls: type[T], *sources: dict[str, Any]) -> T:
    """Build ``cls`` from dicts applied in order (later wins); ``None`` values are skipped."""
    known = _known_keys(cls)
    values: dict[str, Any] = {}
    for source in sources:
        for key, value in source.items():
            if key not in known:
                raise ConfigError(f"unknown config key {key!r}; known keys: {', '.join(known)}")
            if value is not None:
                values[key] = value
    return cls(**values)


def read_toml(path: str | Path) -> dict[str, Any]:
    """The top-level table of the TOML file at ``path``; :class:`ConfigError` naming the file
    if it is missing, a directory, unreadable or not TOML."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"--config: {str(p)!r} is a directory, expected a TOML file")
    try:
        with p.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"--config: file {str(p)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"--config: cannot read {str(p)!r} ({err})") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"--config: {str(p)!r} is not valid TOML: {err}") from None


def load_config(cls: type[T], path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> T:
    """``cls`` from its defaults, then the TOML file at ``path`` (if given), then ``overrides``."""
    file_values = read_toml(path) if path is not None else {}
    try:
        return merge_config(cls, file_values, overrides or {})
    except TypeError as err:  # e.g. a TOML table where a value belongs
        raise ConfigError(str(err)) from None


def resume_config(cls: type[T], saved: dict[str, Any], requested: dict[str, Any], options: dict[str, str]) -> T:
    """The config of a resumed run: the ``saved`` config (a dict of ``cls`` keys) with the
    ``requested`` changes (``None`` values skipped). A requested key that is not in
    ``cls.RESUMABLE`` and differs from the saved value is refused, naming the key (as the
    command-line option ``options[key]`` where given) and what may change."""
    known = set(_known_keys(cls))
    base = {k: v for k, v in saved.items() if k in known}
    for key, value in requested.items():
        if key not in known:
            raise ConfigError(f"unknown config key {key!r}; known keys: {', '.join(sorted(known))}")
        if value is None or key in cls.RESUMABLE:
            continue
        probe = merge_config(cls, base, {key: value})  # normalized, e.g. beta 'critical' -> K_c
        if getattr(probe, key) != getattr(merge_config(cls, base), key):
            changeable = ", ".join(options.get(k, k) for k in cls.RESUMABLE)
            raise ConfigError(
                f"{options.get(key, key)}: the run was made with {key} = {base.get(key)!r}; a resumed run keeps "
                f"its config (it may change only {changeable}); start a new run with --force or another --out")
    return merge_config(cls, base, {k: v for k, v in requested.items() if k in cls.RESUMABLE})


# ---- validation --------------------------------------------------------------------------------
def _describe(tp: Any) -> str:
    if tp is type(None):
        return "unset"
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a finite number"
    if tp is str:
        return "a string"
    if typing.get_origin(tp) is list:
        return f"a list of {_describe(typing.get_args(tp)[0]).replace('an ', '').replace('a ', '')}s"
    return str(tp)


def _matches(value: Any, tp: Any) -> bool:
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if tp is str:
        return isinstance(value, str)
    if typing.get_origin(tp) is list:
        (item,) = typing.get_args(tp)
        return isinstance(value, (list, tuple)) and all(_matches(v, item) for v in value)
    raise TypeError(f"check_types: unsupported annotation {tp!r}")


def check_types(cfg: Any) -> None:
    """Check every field of the dataclass instance ``cfg`` against its type annotation
    (``bool``, ``int``, ``float``, ``str``, ``list[...]`` and unions of them with ``None``);
    raise :class:`ConfigError` naming the first field whose value does not fit."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        tp, value = hints[f.name], getattr(cfg, f.name)
        options = typing.get_args(tp) if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union else (tp,)
        if not any(_matches(value, option) for option in options):
            allowed = " or ".join(_describe(o) for o in options if o is not type(None))
            raise ConfigError(f"{f.name} must be {allowed}, got {value!r}")


def need(cfg: Any, ok: bool, name: str, allowed: str) -> None:
    """Raise :class:`ConfigError` ``"{name} must be {allowed}, got {value}"`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"{name} must be {allowed}, got {getattr(cfg, name)!r}")


def torch_dtype(name: str):
    """The torch dtype called ``name`` (one of :data:`DTYPE_NAMES`)."""
    import torch

    return {"float32": torch.float32, "float64": torch.float64}[name]


def resolve_device(name: str):
    """``torch.device(name)`` for ``cpu`` or ``cuda[:n]`` available here; :class:`ConfigError`
    naming ``device`` otherwise (``meta``, ``mps``, ``xpu``, a CUDA device this machine lacks)."""
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device must be 'cpu' or 'cuda[:n]', got {name!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device must be 'cpu' or 'cuda[:n]', got {name!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} requested but this torch has no CUDA device; use 'cpu'")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def cosine_factor(step: int, steps: int, ratio: float) -> float:
    """Learning-rate factor of a cosine decay from 1 at ``step = 0`` to ``ratio`` at
    ``step = steps`` (constant after)."""
    frac = min(step / steps, 1.0)
    return ratio + (1.0 - ratio) * 0.5 * (1.0 + math.cos(math.pi * frac))


# ---- memory ------------------------------------------------------------------------------------
def available_memory() -> int:
    """Bytes of memory available to a new allocation (``MemAvailable`` where Linux reports it,
    else the physical memory)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _gib(n: float) -> str:
    return f"{n / 2**30:.3g} GiB"


#: Peak resident size over the tensors a run holds, on the CPU: the ``deeprg`` command keeps
#: freed heap blocks for reuse (:func:`deeprg.memory.keep_freed_memory`), and blocks are reused
#: rather than unmapped. Measured for flow training (maxrss less the imports, over
#: ``FlowTrainConfig.memory_estimate``): 1.11-1.27 at 32x32 (two runs) and 1.10 at 64x64 with batch
#: 1024, 1.16-1.17 at 128x128 with batch 64 (1.00-1.05 with glibc's default heap);
#: ``benchmarks/results/device_cpu.md`` and ``lattice_scaling.md``.
HEAP_SLACK = 1.3


def check_memory(estimate: float, what: str, device: str = "cpu") -> None:
    """Refuse (:class:`ConfigError`) a run whose estimated peak memory exceeds what this machine
    (or CUDA device) has, naming ``what`` drives the estimate. ``estimate``: bytes of the
    tensors; on the CPU the peak counted is ``HEAP_SLACK`` times that."""
    if device.startswith("cuda"):
        import torch

        index = torch.device(device).index or 0
        limit = torch.cuda.get_device_properties(index).total_memory
    else:
        limit = available_memory()
        estimate *= HEAP_SLACK
    if estimate > limit:
        raise ConfigError(f"{what}: the run would need about {_gib(estimate)} of memory; "
                          f"{_gib(limit)} is available on {device}")


def default_text(cls: type, name: str) -> str:
    """``"[default]"`` of field ``name`` of the config class ``cls``, for command-line help."""
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    value = f.default_factory() if f.default is dataclasses.MISSING else f.default
    if isinstance(value, bool):
        value = "on" if value else "off"
    elif isinstance(value, list):
        value = " ".join(map(str, value))
    return f"[{value}]"
