"""Typed configurations: dataclasses filled from defaults, a TOML file and explicit overrides.

Precedence: dataclass defaults < TOML file < overrides (e.g. command-line flags). Unknown keys are
errors that name the key and list the known ones; values are checked by the dataclass's own
``__post_init__``.
"""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["ConfigError", "load_config", "merge_config"]

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration file or key that cannot be used."""


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


def load_config(cls: type[T], path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> T:
    """``cls`` from its defaults, then the TOML file at ``path`` (if given), then ``overrides``."""
    file_values: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            with p.open("rb") as fh:
                file_values = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"config file {str(p)!r} does not exist") from None
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"config file {str(p)!r} is not valid TOML: {err}") from None
    return merge_config(cls, file_values, overrides or {})
