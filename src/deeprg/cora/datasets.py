"""Data for CORA: spin datasets, binary images and any ``.npz`` of two-state arrays.

Everything becomes an :class:`BinaryData`: ``int8`` indices ``(n, L)`` or ``(n, L, L)`` with
``L`` a power of two, plus the *encoding* that maps them back:

* ``"spin"``: values ``+1 / -1`` <-> indices ``0 / 1`` (index 0 is spin up, as in
  :func:`deeprg.models.exact.chain_window_distribution`);
* ``"binary"``: values ``0 / 1`` <-> indices ``0 / 1``.

Sources: a ``deeprg.spins/1`` dataset (:func:`deeprg.data.load_dataset`, validated; its metadata
is kept), or any ``.npz`` whose array (``key``; by default ``spins``, else ``pixels``, else the
only array) holds two states. :func:`digits` gives scikit-learn's bundled 8 x 8 handwritten
digits, thresholded, as 8 x 8 or 16 x 16 binary images (optional dependency: ``pip install
'deeprg[digits]'``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deeprg.cora.network import check_lattice_shape
from deeprg.data import FORMAT, MAX_METADATA_BYTES, DatasetError, load_dataset, open_npz
from deeprg.runs import atomic_path

__all__ = ["ENCODINGS", "BinaryData", "decode_values", "digits", "encode_values", "load_binary", "save_binary"]

ENCODINGS = ("spin", "binary")

#: Array names tried, in order, when no key is given.
_DEFAULT_KEYS = ("spins", "pixels")


@dataclass(frozen=True, eq=False)
class BinaryData:
    """``indices``: int8 ``(n, *shape)`` in {0, 1}; ``encoding``: ``"spin"`` or ``"binary"``;
    ``metadata``: what is known of the source (a spin dataset's metadata, or ``{}``)."""

    indices: np.ndarray
    encoding: str
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.indices.shape[1:])

    @property
    def n(self) -> int:
        return int(self.indices.shape[0])


def encode_values(values: np.ndarray, name: str = "data") -> tuple[np.ndarray, str]:
    """``(indices int8, encoding)`` of an array of two states (-1/+1 or 0/1). ``ValueError``
    naming ``name`` for anything else."""
    values = np.asarray(values)
    if values.dtype.kind not in "iub" and not (values.dtype.kind == "f" and np.all(np.isfinite(values))
                                                and np.all(values == np.round(values))):
        raise ValueError(f"{name}: values must be two states (0/1 or -1/+1), got dtype {values.dtype}")
    present = np.unique(values).astype(np.int64)
    if set(present) <= {-1, 1}:
        return ((1 - values) // 2).astype(np.int8), "spin"
    if set(present) <= {0, 1}:
        return values.astype(np.int8), "binary"
    shown = ", ".join(str(v) for v in present[:6]) + (", ..." if len(present) > 6 else "")
    raise ValueError(f"{name}: values must be two states, 0/1 or -1/+1; found {shown}")


def decode_values(indices: np.ndarray, encoding: str) -> np.ndarray:
    """Inverse of :func:`encode_values`: int8 spins (+-1) or 0/1 values."""
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
    indices = np.asarray(indices).astype(np.int8)
    return (1 - 2 * indices).astype(np.int8) if encoding == "spin" else indices


def _checked(indices: np.ndarray, encoding: str, name: str, metadata: dict) -> BinaryData:
    if indices.ndim not in (2, 3) or indices.shape[0] < 1:
        raise ValueError(f"{name}: expected an array (n, L) or (n, L, L) with n >= 1, got shape {indices.shape}")
    try:
        check_lattice_shape(indices.shape[1:])
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from None
    return BinaryData(indices, encoding, metadata)


def load_binary(path: str | os.PathLike[str], key: str | None = None) -> BinaryData:
    """Read two-state data from ``path`` (see the module docstring) through the checked reader
    :func:`deeprg.data.open_npz` (hostile headers, pickles and metadata refused before anything
    is allocated); ``DatasetError`` or ``ValueError`` with a one-line message naming the file for
    every problem."""
    path = Path(path)
    with open_npz(path) as archive:
        names = archive.names
        spin_dataset = False
        if key is None and "metadata" in names and "spins" in names:
            meta = archive.read("metadata", max_bytes=MAX_METADATA_BYTES)
            spin_dataset = meta.ndim == 0 and meta.dtype.kind == "U" and f'"{FORMAT}"' in str(meta[()])
        if not spin_dataset:
            if key is None:
                arrays = [n for n in names if n not in ("metadata", "labels", "seed")]
                key = next((k for k in _DEFAULT_KEYS if k in names), arrays[0] if len(arrays) == 1 else None)
                if key is None:
                    raise DatasetError(f"{path}: cannot tell which array holds the data (found: "
                                       f"{', '.join(names) or 'none'}); name it with a key")
            values = archive.read(key)
    if spin_dataset:
        ds = load_dataset(path)
        indices, encoding = encode_values(ds.spins, str(path))
        return _checked(indices, encoding, str(path), dict(ds.metadata))
    indices, encoding = encode_values(values, f"{path}[{key}]")
    return _checked(indices, encoding, f"{path}[{key}]", {})


def save_binary(path: str | os.PathLike[str], values: np.ndarray, encoding: str, **extra: Any) -> Path:
    """Write ``values`` (decoded: spins or 0/1) atomically as ``spins`` (encoding ``"spin"``)
    or ``pixels`` (``"binary"``) in an ``.npz``; ``extra`` arrays are stored beside them, a dict
    as JSON text."""
    arrays = {("spins" if encoding == "spin" else "pixels"): np.asarray(values, dtype=np.int8)}
    for name, value in extra.items():
        arrays[name] = np.array(json.dumps(value)) if isinstance(value, dict) else np.asarray(value)
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)
    return path


def digits(size: int = 8, threshold: float = 8.0, mode: str = "upscale") -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1797 handwritten 8 x 8 digits (grey levels 0..16) as binary images.

    Returns ``(pixels, labels)``: int8 ``(1797, size, size)`` with pixel = 1 where the grey level
    exceeds ``threshold``, and the digit labels. ``size`` is 8 (native) or 16, reached by
    ``mode`` ``"upscale"`` (every pixel becomes 2 x 2) or ``"pad"`` (centred, zero border).
    """
    if size not in (8, 16):
        raise ValueError(f"size must be 8 or 16, got {size!r}")
    if mode not in ("upscale", "pad"):
        raise ValueError(f"mode must be 'upscale' or 'pad', got {mode!r}")
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError("the digits data need scikit-learn: pip install 'deeprg[digits]'") from None
    bunch = load_digits()
    pixels = (bunch.images > threshold).astype(np.int8)
    if size == 16:
        if mode == "upscale":
            pixels = np.kron(pixels, np.ones((1, 2, 2), dtype=np.int8))
        else:
            pixels = np.pad(pixels, ((0, 0), (4, 4), (4, 4)))
    return pixels, bunch.target.astype(np.int64)
