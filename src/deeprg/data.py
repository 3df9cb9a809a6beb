"""Spin datasets on disk.

File format ``deeprg.spins/1``: an ``.npz`` archive (DEFLATE-compressed members, as
``np.savez_compressed`` writes them) with exactly the arrays

* ``spins``: ``int8`` array of shape ``(n, *lattice_shape)``, ``n >= 1``, values ``-1``/``+1``
  (the package convention of :mod:`deeprg.models.ising`);
* ``metadata``: 0-d unicode array holding a JSON object with at least the keys in
  :data:`REQUIRED_KEYS` (extra keys are allowed and preserved);

and, in files deeprg writes, ``spins_sync``: the sync points of the compressed spins, an ``int64``
array of rows ``(uncompressed offset, compressed offset, CRC-32)``, one per block of
:data:`SYNC_BYTES` of the ``spins.npy`` member (its ``.npy`` header included). Each block is
compressed on its own and ends byte-aligned (as after a full flush; still one valid DEFLATE stream
that ``np.load`` reads as before; blocks compress in parallel), so a reader can start inflating at the
block that holds its first row instead of decompressing everything before it, and checks each
block it reads whole against its CRC-32. Files without the array (written by other programs or
before it existed) are read by decompressing from the start.

Files are written atomically (temporary file in the target directory, then ``os.replace``), the
spins streamed into the archive in chunks (:func:`save_dataset` from memory, :class:`SpinWriter`
from pieces staged on disk), and read through :func:`open_npz`, the one checked reader of ``.npz`` files in the package (also used
by :func:`deeprg.cora.datasets.load_binary`). It treats every file as possibly hostile: before an
array is allocated, its ``.npy`` header is read and the byte size it claims is compared with
what the zip member holds and with :data:`MAX_ARRAY_BYTES`; arrays of Python objects (pickles)
are refused; the metadata JSON is limited to :data:`MAX_METADATA_CHARS` characters and
:data:`MAX_METADATA_DEPTH` levels of nesting before it is parsed. Every problem with a file is
reported as a :class:`DatasetError` whose one-line message starts with the path.
:func:`open_dataset` reads the metadata and the header only, and :meth:`SpinFile.chunks` streams
the configurations (one chunk in memory) for readers of files larger than memory.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import secrets
import zipfile
import zlib
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Self

import numpy as np

import deeprg
from deeprg.lattice import Lattice

__all__ = [
    "FORMAT",
    "MAX_ARRAY_BYTES",
    "MAX_METADATA_CHARS",
    "MAX_METADATA_BYTES",
    "MAX_METADATA_DEPTH",
    "REQUIRED_KEYS",
    "SYNC_BYTES",
    "DatasetError",
    "NpyHeader",
    "NpzArchive",
    "SpinDataset",
    "SpinFile",
    "SpinWriter",
    "dataset_metadata",
    "load_dataset",
    "open_dataset",
    "open_npz",
    "parse_metadata",
    "save_dataset",
]

#: Format identifier stored in ``metadata["format"]``.
FORMAT = "deeprg.spins/1"

#: Metadata keys every dataset must carry.
REQUIRED_KEYS = (
    "format",
    "model",
    "lattice_shape",
    "d",
    "K",
    "sampler",
    "updates_between_samples",
    "seed",
    "n_chains",
    "tau_int",
    "deeprg_version",
    "created",
)


#: Largest array (bytes) :meth:`NpzArchive.read` accepts by default; a header claiming more is
#: refused before anything is allocated.
MAX_ARRAY_BYTES = 2**34

#: Longest metadata JSON text (characters) :func:`parse_metadata` accepts.
MAX_METADATA_CHARS = 2**20

#: Deepest nesting of JSON arrays / objects :func:`parse_metadata` accepts.
MAX_METADATA_DEPTH = 64

#: Largest metadata array (bytes: 4 per unicode character) :func:`load_dataset` reads.
MAX_METADATA_BYTES = 4 * MAX_METADATA_CHARS

#: Largest uncompressed / compressed size ratio DEFLATE can reach (RFC 1951: 258 bytes per
#: 2-bit code, rounded up); a zip directory claiming more is forged.
_DEFLATE_MAX_RATIO = 1032

#: Errors the zip and ``.npy`` readers raise on damaged or unsupported members.
_READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError)


class DatasetError(ValueError):
    """A spin dataset file (or a dataset about to be written) is missing, unreadable or invalid.

    The message is a single line that names the path and the problem."""


@dataclass(frozen=True, eq=False)
class SpinDataset:
    """Spin configurations with the metadata describing how they were made.

    Attributes
    ----------
    spins:
        ``(n, *lattice_shape)`` int8 array of +-1.
    metadata:
        JSON-serialisable dict with at least :data:`REQUIRED_KEYS`: ``format`` (= :data:`FORMAT`),
        ``model`` (str, e.g. ``"ising"``), ``lattice_shape`` (list of ints), ``d`` (int,
        ``len(lattice_shape)``), ``K`` (float coupling, ``H = -K sum s_i s_j``), ``sampler``
        (str), ``updates_between_samples`` (int >= 1), ``seed`` (int), ``n_chains`` (int >= 1),
        ``tau_int`` (float or ``None``; integrated autocorrelation time in units of stored
        samples), ``deeprg_version`` (str), ``created`` (ISO 8601 time).

    Validation happens in :func:`save_dataset` and :func:`load_dataset`.
    """

    spins: np.ndarray
    metadata: dict[str, Any]

    @classmethod
    def new(cls, spins: np.ndarray, **metadata: Any) -> SpinDataset:
        """Dataset of ``spins`` with the metadata of :func:`dataset_metadata` (keyword arguments
        ``K``, ``sampler``, ``updates_between_samples``, ``seed``, optional ``n_chains``,
        ``tau_int``, ``model`` and extra keys) for the lattice ``spins.shape[1:]``."""
        spins = np.asarray(spins)
        return cls(spins, dataset_metadata(spins.shape[1:], **metadata))

    @property
    def n(self) -> int:
        """Number of configurations."""
        return int(self.spins.shape[0])

    @property
    def lattice(self) -> Lattice:
        """The :class:`Lattice` of ``metadata["lattice_shape"]``."""
        return Lattice(tuple(self.metadata["lattice_shape"]))


def dataset_metadata(
    lattice_shape: tuple[int, ...],
    *,
    K: float,
    sampler: str,
    updates_between_samples: int,
    seed: int,
    n_chains: int = 1,
    tau_int: float | None = None,
    model: str = "ising",
    **extra: Any,
) -> dict[str, Any]:
    """The metadata of a dataset on lattice ``lattice_shape`` (the keys of :class:`SpinDataset`):
    ``format``, ``lattice_shape`` and ``d`` filled in, the installed ``deeprg_version`` and
    ``created`` = now (UTC); ``extra`` keyword arguments become additional keys."""
    shape = [int(s) for s in lattice_shape]
    return {
        "format": FORMAT,
        "model": model,
        "lattice_shape": shape,
        "d": len(shape),
        "K": float(K),
        "sampler": sampler,
        "updates_between_samples": int(updates_between_samples),
        "seed": int(seed),
        "n_chains": int(n_chains),
        "tau_int": None if tau_int is None else float(tau_int),
        "deeprg_version": deeprg.__version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _metadata_problem(meta: Any) -> str | None:
    """What is wrong with ``meta`` (one line), or ``None``."""
    if not isinstance(meta, dict):
        return f"metadata must be a JSON object, got {type(meta).__name__}"
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        return f"metadata is missing required key(s): {', '.join(missing)}"
    if meta["format"] != FORMAT:
        return f"unsupported format {meta['format']!r} (expected {FORMAT!r})"
    shape = meta["lattice_shape"]
    if not isinstance(shape, (list, tuple)) or not all(_is_int(s) for s in shape):
        return f"metadata lattice_shape must be a list of ints, got {shape!r}"
    try:
        Lattice(tuple(shape))
    except ValueError as exc:
        return f"metadata lattice_shape is invalid: {exc}"
    checks = [
        ("model", isinstance(meta["model"], str), "a string"),
        ("d", meta["d"] == len(shape) and _is_int(meta["d"]), f"len(lattice_shape) = {len(shape)}"),
        ("K", _is_real(meta["K"]), "a finite number"),
        ("sampler", isinstance(meta["sampler"], str), "a string"),
        (
            "updates_between_samples",
            _is_int(meta["updates_between_samples"]) and meta["updates_between_samples"] >= 1,
            "an int >= 1",
        ),
        ("seed", _is_int(meta["seed"]), "an int"),
        ("n_chains", _is_int(meta["n_chains"]) and meta["n_chains"] >= 1, "an int >= 1"),
        (
            "tau_int",
            meta["tau_int"] is None or (_is_real(meta["tau_int"]) and meta["tau_int"] >= 0),
            "null or a finite number >= 0",
        ),
        ("deeprg_version", isinstance(meta["deeprg_version"], str), "a string"),
    ]
    for key, ok, expected in checks:
        if not ok:
            return f"metadata {key} must be {expected}, got {meta[key]!r}"
    try:
        datetime.fromisoformat(meta["created"])
    except (TypeError, ValueError):
        return f"metadata created must be an ISO 8601 time, got {meta['created']!r}"
    try:
        json.dumps(meta, allow_nan=False)
    except (TypeError, ValueError) as exc:
        return f"metadata is not JSON-serialisable: {exc}"
    return None


def _layout_problem(shape: tuple[int, ...], dtype: np.dtype, lattice_shape: list[int]) -> str | None:
    """What is wrong with spins of array ``shape`` and ``dtype`` for lattice ``lattice_shape`` (one
    line), or ``None``; the values are not looked at (:func:`_values_problem`)."""
    if dtype != np.int8:
        return f"spins must be int8, got {dtype}"
    if len(shape) != len(lattice_shape) + 1 or list(shape[1:]) != list(lattice_shape):
        expected = "(n, " + ", ".join(str(s) for s in lattice_shape) + ")"
        return f"spins shape {tuple(shape)} does not match metadata lattice_shape {expected}"
    if shape[0] < 1:
        return f"spins hold no configurations (shape {tuple(shape)}, need n >= 1)"
    return None


def _bad_values(spins: np.ndarray) -> tuple[int, int]:
    """The number of entries of the int8 array ``spins`` other than -1/+1 and the flat index of the
    first (``-1`` if none)."""
    # counted in chunks of 4 MB: boolean masks of the whole array (2 x 10^8 spins for 10^5 32^3
    # configurations) would cost ~25x more time than the count itself
    flat, step = spins.reshape(-1), 1 << 22
    n_bad, first = 0, -1
    for start in range(0, flat.size, step):
        chunk = flat[start : start + step]
        good = np.count_nonzero(chunk == 1) + np.count_nonzero(chunk == -1)
        if good < chunk.size:
            n_bad += chunk.size - good
            if first < 0:
                first = start + int(np.flatnonzero((chunk != 1) & (chunk != -1))[0])
    return n_bad, first


def _values_problem(spins: np.ndarray) -> str | None:
    """What is wrong with the values of the int8 array ``spins`` (one line), or ``None``."""
    n_bad, first = _bad_values(spins)
    if n_bad:
        return (
            f"spins contain {n_bad} value(s) other than -1/+1 "
            f"(e.g. {int(spins.reshape(-1)[first])} at flat index {first})"
        )
    return None


def _spins_problem(spins: np.ndarray, lattice_shape: list[int]) -> str | None:
    """What is wrong with ``spins`` for lattice ``lattice_shape`` (one line), or ``None``."""
    return _layout_problem(spins.shape, spins.dtype, lattice_shape) or _values_problem(spins)


def _validate(spins: np.ndarray, metadata: Any, path: Path) -> None:
    problem = _metadata_problem(metadata) or _spins_problem(spins, metadata["lattice_shape"])
    if problem:
        raise DatasetError(f"{path}: {problem}")


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())


@dataclass(frozen=True)
class NpyHeader:
    """The checked header of one array of an ``.npz`` archive (:meth:`NpzArchive.header`):
    its ``name``, ``shape``, ``dtype``, ``fortran_order``, and the byte ``offset`` of its data in
    the zip member."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool
    offset: int


#: Bytes decompressed per read when streaming rows (:meth:`NpzArchive.rows`).
_READ_BYTES = 1 << 20

#: Uncompressed bytes of an array's zip member between two sync points (module docstring).
SYNC_BYTES = 1 << 20

#: Fixed part of a zip local file header (APPNOTE 4.3.7); file name and extra field follow.
_LOCAL_HEADER_BYTES = 30


def _deflate_block(block: bytes) -> tuple[bytes, int]:
    """One block as raw DEFLATE from a fresh compressor at zlib's default level, ended by a full
    flush (byte-aligned, not final), and its CRC-32. zlib releases the GIL: blocks compress in
    parallel threads."""
    deflate = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15)
    return deflate.compress(block) + deflate.flush(zlib.Z_FULL_FLUSH), zlib.crc32(block)


def _usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS tells it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class _SyncingCompressor:
    """Raw DEFLATE at zlib's default level, as :mod:`zipfile` compresses a member, in blocks of
    ``block`` input bytes, each compressed on its own (the compressor's history starts afresh at
    every sync point of the module docstring, as after a full flush) by ``threads`` threads and
    written in order; the stream ends with an empty final block. The bytes do not depend on
    ``threads``. ``points()``: the ``(k, 3)`` int64 sync points; ``consumed``: input bytes seen.
    Memory: about ``threads + 2`` blocks. ``close()`` stops the threads (idempotent)."""

    def __init__(self, block: int, threads: int) -> None:
        self._block, self._threads = block, threads
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="deflate")
        self._queued: deque[tuple[int, Future]] = deque()
        self._buffer = bytearray()
        self.consumed, self._produced = 0, 0
        self._points: list[tuple[int, int, int]] = []

    def _submit(self, data: bytes) -> None:
        self._queued.append((self.consumed, self._pool.submit(_deflate_block, data)))
        self.consumed += len(data)

    def _collect(self, wait_until: int) -> bytes:
        """The compressed blocks done, in order, waiting while more than ``wait_until`` are queued."""
        pieces = []
        while self._queued and (len(self._queued) > wait_until or self._queued[0][1].done()):
            start, future = self._queued.popleft()
            compressed, crc = future.result()
            self._points.append((start, self._produced, crc))
            self._produced += len(compressed)
            pieces.append(compressed)
        return b"".join(pieces)

    def compress(self, data) -> bytes:
        view = memoryview(data).cast("B")
        if self._buffer:  # complete the partial block first
            taken = min(len(view), self._block - len(self._buffer))
            self._buffer += view[:taken]
            view = view[taken:]
            if len(self._buffer) == self._block:
                self._submit(bytes(self._buffer))
                self._buffer.clear()
        whole = len(view) // self._block * self._block
        pieces = []
        for first in range(0, whole, self._block):
            self._submit(bytes(view[first : first + self._block]))  # a copy: the caller may reuse its buffer
            pieces.append(self._collect(wait_until=self._threads))
        self._buffer += view[whole:]
        pieces.append(self._collect(wait_until=self._threads))
        return b"".join(pieces)

    def flush(self, mode: int = zlib.Z_FINISH) -> bytes:
        if mode != zlib.Z_FINISH:
            raise ValueError("only the final flush is supported")
        if self._buffer:
            self._submit(bytes(self._buffer))
            self._buffer.clear()
        tail = self._collect(wait_until=0) + zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15).flush()
        self.close()
        return tail

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def points(self) -> np.ndarray:
        return np.array(self._points, dtype=np.int64).reshape(-1, 3)


def _syncing(member: io.BufferedIOBase, threads: int) -> _SyncingCompressor | None:
    """Give the zip member ``member`` (opened for writing, DEFLATE) a :class:`_SyncingCompressor`:
    :mod:`zipfile` has no public way to flush a member's stream, so this replaces its compressor
    (the private ``_compressor``, the same since Python 3.6). ``None`` where that attribute is not
    a zlib compressor: the archive is then written without sync points, on one thread."""
    if type(getattr(member, "_compressor", None)) is not type(zlib.compressobj()):
        return None
    member._compressor = _SyncingCompressor(SYNC_BYTES, threads)  # type: ignore[attr-defined]
    return member._compressor  # type: ignore[attr-defined]


class _SyncedMember(io.RawIOBase):
    """The uncompressed bytes of a DEFLATE zip member from its sync point ``block`` on (read with a
    file handle of its own), each block checked against its CRC-32 when read whole."""

    def __init__(self, path: Path, info: zipfile.ZipInfo, points: np.ndarray, block: int) -> None:
        self._fh = open(path, "rb")
        try:
            self._fh.seek(info.header_offset)
            local = self._fh.read(_LOCAL_HEADER_BYTES)
            if len(local) != _LOCAL_HEADER_BYTES or local[:4] != b"PK\x03\x04":
                raise zipfile.BadZipFile(f"no local header of member {info.filename!r}")
            start = info.header_offset + _LOCAL_HEADER_BYTES + int.from_bytes(local[26:28], "little") \
                + int.from_bytes(local[28:30], "little")
            self._fh.seek(start + int(points[block, 1]))
        except BaseException:
            self._fh.close()
            raise
        self._left = info.compress_size - int(points[block, 1])
        self._inflate = zlib.decompressobj(-15)
        self._ends = [int(u) for u in points[block + 1 :, 0]] + [info.file_size]
        self._crcs = [int(c) for c in points[block:, 2]]
        self._position, self._crc = int(points[block, 0]), 0
        self._pending, self._used = b"", 0

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._fh.close()
        super().close()

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        while self._used == len(self._pending):
            if not self._ends:
                return 0
            data = self._inflate.unconsumed_tail
            if not data:
                data = self._fh.read(min(_READ_BYTES, self._left))
                self._left -= len(data)
                if not data:
                    raise EOFError("the compressed data end early")
            self._pending, self._used = self._inflate.decompress(data, _READ_BYTES), 0
        n = min(len(view), len(self._pending) - self._used, self._ends[0] - self._position)
        view[:n] = self._pending[self._used : self._used + n]
        self._used += n
        self._crc = zlib.crc32(view[:n], self._crc)
        self._position += n
        if self._position == self._ends[0]:
            if self._crc != self._crcs[0]:
                raise zlib.error(f"CRC-32 of the block ending at byte {self._position} does not match its sync point")
            del self._ends[0], self._crcs[0]
            self._crc = 0
        return n


class _Closing:
    """A context manager that calls ``self.close()`` on leaving the block."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class NpzArchive(_Closing):
    """Checked read access to the arrays of an ``.npz`` file; made by :func:`open_npz`, used as
    a context manager (closing the zip file).

    ``names``: the arrays (members ``NAME.npy``, suffix dropped) in archive order. Members that
    are not ``.npy`` files are not arrays and are not listed.
    """

    def __init__(self, path: Path, archive: zipfile.ZipFile) -> None:
        self.path = path
        self._zip = archive
        self._members = {
            info.filename[: -len(".npy")]: info
            for info in archive.infolist()
            if info.filename.endswith(".npy") and not info.is_dir()
        }
        self.names = list(self._members)

    def close(self) -> None:
        self._zip.close()

    def header(self, name: str, max_bytes: int = MAX_ARRAY_BYTES) -> NpyHeader:
        """The checked ``.npy`` header of array ``name``, nothing else read.

        Refused (:class:`DatasetError` naming the file and the array) if the array holds Python
        objects (it would need unpickling), or claims more bytes than ``max_bytes`` or than the zip
        member holds (uncompressed size from the zip directory, itself checked against the
        compressed size for stored and DEFLATE members)."""
        if name not in self._members:
            raise DatasetError(f"{self.path}: no array {name!r} (found: {', '.join(self.names) or 'none'})")
        info = self._members[name]
        where = f"{self.path}: cannot read array data: array {name!r}"
        try:
            with self._zip.open(info) as fh:
                version = np.lib.format.read_magic(fh)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
                elif version == (2, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
                else:
                    raise DatasetError(f"{where}: unsupported .npy format version {version[0]}.{version[1]}")
                offset = fh.tell()
        except DatasetError:
            raise
        except _READ_ERRORS as exc:
            raise DatasetError(f"{where}: {_one_line(exc)}") from exc
        if dtype.hasobject:
            raise DatasetError(
                f"{where}: it holds Python objects ({dtype}), which would need unpickling; "
                "refused (allow_pickle=False)"
            )
        claimed = math.prod(shape) * dtype.itemsize
        described = f"shape {tuple(shape)} of {dtype} claims {claimed} bytes"
        if claimed > max_bytes:
            raise DatasetError(f"{where}: {described}, more than the limit of {max_bytes} bytes")
        held = info.file_size - offset
        if claimed > held:
            raise DatasetError(f"{where}: {described} but the zip member holds only {max(held, 0)} bytes of data")
        bound = {zipfile.ZIP_STORED: info.compress_size,
                 zipfile.ZIP_DEFLATED: _DEFLATE_MAX_RATIO * info.compress_size + 64}.get(info.compress_type)
        if bound is not None and info.file_size > bound:
            raise DatasetError(
                f"{where}: the zip directory claims {info.file_size} bytes from {info.compress_size} compressed "
                "bytes, more than the compression method can produce (forged directory)"
            )
        return NpyHeader(name, tuple(shape), dtype, bool(fortran), offset)

    def read(self, name: str, max_bytes: int = MAX_ARRAY_BYTES) -> np.ndarray:
        """The array ``name`` (any shape and dtype the ``.npy`` header states), after
        :meth:`header` has checked its header."""
        self.header(name, max_bytes)
        try:
            with self._zip.open(self._members[name]) as fh:
                return np.lib.format.read_array(fh, allow_pickle=False)
        except _READ_ERRORS as exc:
            raise DatasetError(f"{self.path}: cannot read array data: array {name!r}: {_one_line(exc)}") from exc

    def sync_points(self, name: str) -> np.ndarray | None:
        """The checked sync points of array ``name`` (array ``NAME_sync``, module docstring), or
        ``None`` if the archive has none for it or its member is not DEFLATE-compressed. Raises
        :class:`DatasetError` if they are damaged: not ``(k >= 1, 3)`` int64, not starting at
        ``(0, 0)``, offsets not increasing or beyond the member, or a CRC-32 out of range."""
        info = self._members.get(name)
        if f"{name}_sync" not in self._members or info is None or info.compress_type != zipfile.ZIP_DEFLATED:
            return None
        points = self.read(f"{name}_sync", max_bytes=24 * (info.compress_size + 1))  # offsets increase
        problem = None
        if points.dtype != np.int64 or points.ndim != 2 or points.shape[0] < 1 or points.shape[1] != 3:
            problem = f"shape {points.shape} of {points.dtype}, expected (k >= 1, 3) of int64"
        elif points[0, 0] != 0 or points[0, 1] != 0:
            problem = "the first point is not at offset (0, 0)"
        elif (np.diff(points[:, :2], axis=0) <= 0).any() or points[-1, 0] >= info.file_size \
                or points[-1, 1] >= info.compress_size:
            problem = "offsets not increasing within the member"
        elif ((points[:, 2] < 0) | (points[:, 2] > 0xFFFFFFFF)).any():
            problem = "a CRC-32 out of range"
        if problem:
            raise DatasetError(f"{self.path}: damaged sync points of array {name!r}: {problem}")
        return points

    def rows(self, header: NpyHeader, start: int, stop: int, size: int) -> Iterator[np.ndarray]:
        """Rows ``start .. stop - 1`` (first axis) of the C-ordered array of ``header`` (from
        :meth:`header`), as consecutive arrays of at most ``size`` rows, read and decompressed as
        they are consumed: memory holds one chunk. With :meth:`sync_points`, decompression starts
        at the last sync point before row ``start`` and every block read whole is checked against
        its CRC-32; without, the rows before ``start`` are decompressed, not kept. Raises
        :class:`DatasetError` if the data end early, cannot be decompressed or fail a CRC-32."""
        if header.fortran_order:
            raise ValueError(f"array {header.name!r} is stored in Fortran order; rows are read from C-ordered arrays")
        row_bytes = math.prod(header.shape[1:]) * header.dtype.itemsize
        where = f"{self.path}: cannot read array data: array {header.name!r}"
        points = self.sync_points(header.name)
        try:
            skip = header.offset + start * row_bytes
            if points is None:
                opened = self._zip.open(self._members[header.name])
            else:
                block = int(np.searchsorted(points[:, 0], skip, side="right")) - 1
                opened = _SyncedMember(self.path, self._members[header.name], points, block)
                skip -= int(points[block, 0])
            with opened as fh:
                while skip:  # not fh.seek: it decompresses through buffers of 16 MB
                    got = len(fh.read(min(skip, _READ_BYTES)))
                    if not got:
                        raise EOFError(f"the data end before row {start} of {header.shape[0]}")
                    skip -= got
                for first in range(start, stop, size):
                    chunk = np.empty((min(size, stop - first), *header.shape[1:]), dtype=header.dtype)
                    view, filled = memoryview(chunk).cast("B"), 0
                    while filled < len(view):  # in pieces: read(n) builds n bytes by concatenation
                        got = fh.readinto(view[filled : filled + _READ_BYTES])
                        if not got:
                            raise EOFError(f"the data end before row {first + len(chunk)} of {header.shape[0]}")
                        filled += got
                    yield chunk
        except _READ_ERRORS as exc:
            raise DatasetError(f"{where}: {_one_line(exc)}") from exc


def open_npz(path: str | os.PathLike[str]) -> NpzArchive:
    """Open the ``.npz`` archive ``path`` for checked reading (:class:`NpzArchive`).

    Raises :class:`DatasetError` naming ``path`` if it is missing, not a regular file, or not a
    readable zip archive. This is the one place the package reads ``.npz`` data files."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: no such file")
    if not path.is_file():
        raise DatasetError(f"{path}: not a regular file")
    if not zipfile.is_zipfile(path):
        raise DatasetError(
            f"{path}: not an .npz archive (not a valid zip file: corrupt, truncated or another "
            "format)"
        )
    try:
        return NpzArchive(path, zipfile.ZipFile(path))
    except _READ_ERRORS as exc:
        raise DatasetError(f"{path}: not a readable .npz archive: {_one_line(exc)}") from exc


#: A JSON string literal (possessive: linear time on any input).
_JSON_STRING = re.compile(r'"(?:[^"\\]++|\\.)*+"', re.DOTALL)
#: Everything but brackets and braces.
_NOT_BRACKET = re.compile(r"[^\[\]{}]++")


def _json_depth(text: str) -> int:
    """Deepest nesting of arrays / objects in the JSON ``text`` (brackets inside strings not
    counted), without parsing it."""
    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text)).encode("ascii")
    if not brackets:
        return 0
    codes = np.frombuffer(brackets, dtype=np.uint8)
    steps = np.where((codes == ord("[")) | (codes == ord("{")), 1, -1)
    return int(np.cumsum(steps).max())


def parse_metadata(meta_array: np.ndarray, path: str | os.PathLike[str]) -> Any:
    """The JSON value held by the 0-d unicode array ``meta_array`` read from ``path``.

    Raises :class:`DatasetError` naming ``path`` if the array is not 0-d unicode, the text is
    longer than :data:`MAX_METADATA_CHARS`, nests arrays / objects deeper than
    :data:`MAX_METADATA_DEPTH` (checked before parsing) or is not valid JSON."""
    if meta_array.ndim != 0 or meta_array.dtype.kind != "U":
        raise DatasetError(
            f"{path}: metadata must be a 0-d unicode array holding JSON, got dtype "
            f"{meta_array.dtype} shape {meta_array.shape}"
        )
    text = str(meta_array[()])
    if len(text) > MAX_METADATA_CHARS:
        raise DatasetError(
            f"{path}: metadata JSON is {len(text)} characters long, more than the limit of "
            f"{MAX_METADATA_CHARS}"
        )
    depth = _json_depth(text)
    if depth > MAX_METADATA_DEPTH:
        raise DatasetError(
            f"{path}: metadata JSON nests arrays/objects {depth} levels deep, more than the limit of "
            f"{MAX_METADATA_DEPTH}"
        )
    try:
        return json.loads(text)
    except ValueError as exc:
        raise DatasetError(f"{path}: metadata is not valid JSON: {_one_line(exc)}") from exc


def _temporary(path: Path, kind: str) -> tuple[Path, int]:
    """A new file beside ``path`` (hidden, random name, opened exclusively for writing): its path
    and descriptor. Raises :class:`DatasetError` naming ``path`` if the directory is missing, not
    writable, or the file cannot be created."""
    directory = path.parent
    if not directory.is_dir():
        raise DatasetError(f"{path}: directory {directory} does not exist")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise DatasetError(f"{path}: directory {directory} is not writable")
    tmp = directory / f".{path.name}.{secrets.token_hex(8)}.{kind}"
    try:
        return tmp, os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as exc:
        raise DatasetError(f"{path}: cannot write in {directory}: {_one_line(exc)}") from exc


def _write_archive(path: Path, shape: tuple[int, ...], metadata: dict[str, Any], chunks: Iterable[np.ndarray],
                   threads: int | None = None) -> Path:
    """Write the ``deeprg.spins/1`` archive of ``(n, *lattice)`` int8 spins ``shape`` given as
    consecutive C-ordered ``chunks`` of rows (already checked), and ``metadata``, to a temporary
    file beside ``path``, then move it into place (``os.replace``): ``path`` is the old file or
    the complete new one, and no temporary file is left on any failure. The spins are streamed
    into the DEFLATE-compressed zip member (as ``np.savez_compressed`` stores them), so memory
    holds one chunk and a few blocks, with a sync point every :data:`SYNC_BYTES` (``spins_sync``,
    module docstring), the blocks compressed by ``threads`` threads (default: the usable cores)."""
    tmp, fd = _temporary(path, "tmp")
    syncing = None
    try:
        with open(fd, "wb") as fh:
            with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as archive:
                with archive.open("spins.npy", "w", force_zip64=True) as member:
                    syncing = _syncing(member, _usable_cores() if threads is None else threads)
                    np.lib.format.write_array_header_1_0(
                        member, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.int8)), "fortran_order": False,
                                 "shape": tuple(shape)})
                    for chunk in chunks:
                        member.write(memoryview(np.ascontiguousarray(chunk)).cast("B"))
                if syncing is not None and syncing.consumed == archive.getinfo("spins.npy").file_size:
                    with archive.open("spins_sync.npy", "w") as index:
                        np.lib.format.write_array(index, syncing.points())
                with archive.open("metadata.npy", "w") as member:
                    np.lib.format.write_array(member, np.array(json.dumps(metadata, allow_nan=False)))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, (OSError, zipfile.LargeZipFile)):
            raise DatasetError(f"{path}: writing failed: {_one_line(exc)}") from exc
        raise
    finally:
        if syncing is not None:
            syncing.close()
    return path


#: Bytes of spins per chunk when an in-memory dataset or a staged one is written.
_WRITE_BYTES = 1 << 20


def _row_chunks(spins: np.ndarray) -> Iterator[np.ndarray]:
    """Consecutive slices of rows of ``spins``, about :data:`_WRITE_BYTES` each."""
    step = max(1, _WRITE_BYTES // max(1, spins[:1].nbytes))
    return (spins[i : i + step] for i in range(0, len(spins), step))


def save_dataset(path: str | os.PathLike[str], dataset: SpinDataset, threads: int | None = None) -> Path:
    """Validate ``dataset`` and write it to exactly ``path`` (no suffix is added; use ``.npz``),
    compressing on ``threads`` threads (default: the usable cores; the file is the same for any).

    The file is written to a temporary file in the same directory and moved into place with
    ``os.replace``, so ``path`` is either the old file or the complete new one; on any failure
    no new file is left behind. Raises :class:`DatasetError` if the dataset is invalid (before
    anything is written) or the directory is missing or not writable. Returns the path.
    """
    path = Path(path)
    spins = np.ascontiguousarray(dataset.spins)  # C order: SpinFile.chunks streams rows
    _validate(spins, dataset.metadata, path)
    return _write_archive(path, spins.shape, dataset.metadata, _row_chunks(spins), threads)


class SpinWriter(_Closing):
    """A ``deeprg.spins/1`` file of ``n`` configurations of ``lattice_shape`` whose rows arrive in
    pieces, in any order (e.g. chunks in time of several chains, stored chain after chain), without
    holding them in memory.

    :meth:`put` checks a piece and stages it on disk, in a temporary file beside ``path`` (``n``
    times the sites bytes); :meth:`finish` checks that every row was put and the metadata, then
    writes the archive (:func:`save_dataset`'s format, streamed from the staging file) and moves it
    to ``path`` atomically. A context manager: leaving the block, normally or by an exception, removes
    the staging file, and ``path`` is untouched unless :meth:`finish` completed. Memory: one piece,
    and one bit per row.
    """

    def __init__(self, path: str | os.PathLike[str], n: int, lattice_shape: tuple[int, ...]) -> None:
        self.path, self.n, self.lattice_shape = Path(path), int(n), tuple(int(s) for s in lattice_shape)
        if self.n < 1:
            raise DatasetError(f"{self.path}: a dataset needs n >= 1 configurations, got {n}")
        Lattice(self.lattice_shape)  # a ValueError naming the problem of a bad shape
        self._row_bytes = math.prod(self.lattice_shape)
        self._written = np.zeros(self.n, dtype=bool)
        self._staging, fd = _temporary(self.path, "staging")
        self._file = open(fd, "r+b")

    def close(self) -> None:
        """Remove the staging file (idempotent)."""
        if not self._file.closed:
            self._file.close()
        self._staging.unlink(missing_ok=True)

    def put(self, first: int, spins: np.ndarray) -> None:
        """Rows ``first .. first + len(spins) - 1`` of the dataset: ``spins`` of shape ``(k,
        *lattice_shape)``, int8 -1/+1 (:class:`DatasetError` naming the problem otherwise, before
        anything of the piece is staged)."""
        spins = np.asarray(spins)
        if not 0 <= first <= self.n - len(spins):
            raise DatasetError(f"{self.path}: rows {first}..{first + len(spins) - 1} are outside 0..{self.n - 1}")
        if len(spins) == 0:
            return
        problem = _spins_problem(spins, list(self.lattice_shape))
        if problem:
            raise DatasetError(f"{self.path}: {problem}")
        try:
            self._file.seek(first * self._row_bytes)
            self._file.write(memoryview(np.ascontiguousarray(spins)).cast("B"))
        except OSError as exc:
            raise DatasetError(f"{self.path}: staging failed: {_one_line(exc)}") from exc
        self._written[first : first + len(spins)] = True

    def finish(self, metadata: dict[str, Any], threads: int | None = None) -> Path:
        """Write the archive with ``metadata`` (checked as :func:`save_dataset` does, its
        ``lattice_shape`` equal to this writer's), compressed on ``threads`` threads (default: the
        usable cores), and move it to ``path``; remove the staging file. Raises
        :class:`DatasetError` if a row was never put or the metadata are invalid (nothing written
        then)."""
        missing = np.flatnonzero(~self._written)
        if missing.size:
            raise DatasetError(f"{self.path}: {missing.size} of {self.n} configurations were never put "
                               f"(the first: row {int(missing[0])})")
        problem = _metadata_problem(metadata) or _layout_problem(
            (self.n, *self.lattice_shape), np.dtype(np.int8), metadata["lattice_shape"])
        if problem:
            raise DatasetError(f"{self.path}: {problem}")
        self._file.flush()
        step = max(1, _WRITE_BYTES // self._row_bytes)

        def staged() -> Iterator[np.ndarray]:
            self._file.seek(0)
            for first in range(0, self.n, step):
                chunk = np.empty((min(step, self.n - first), *self.lattice_shape), dtype=np.int8)
                if self._file.readinto(memoryview(chunk).cast("B")) != chunk.nbytes:
                    raise OSError(f"the staging file {self._staging} ends before row {first + len(chunk)}")
                yield chunk

        try:
            return _write_archive(self.path, (self.n, *self.lattice_shape), metadata, staged(), threads)
        finally:
            self.close()


class SpinFile(_Closing):
    """A ``deeprg.spins/1`` dataset opened by :func:`open_dataset`: its validated metadata and
    spins header, the configurations read on demand (:meth:`chunks`, :meth:`read`). A context
    manager (closing the file).

    Attributes: ``path``, ``metadata`` (as in :class:`SpinDataset`), ``n`` (configurations),
    ``lattice`` (:class:`Lattice` of ``metadata["lattice_shape"]``).
    """

    def __init__(self, path: Path, archive: NpzArchive, metadata: dict[str, Any], header: NpyHeader) -> None:
        self.path, self.metadata = path, metadata
        self._archive, self._header = archive, header
        self.n = int(header.shape[0])
        self.lattice = Lattice(tuple(metadata["lattice_shape"]))

    def close(self) -> None:
        self._archive.close()

    def sync_points(self) -> int:
        """How many sync points the compressed spins have (module docstring; 0: none, readers of
        a later row decompress all before it). Raises :class:`DatasetError` if they are damaged."""
        points = self._archive.sync_points("spins")
        return 0 if points is None else len(points)

    def chunks(self, rows: slice = slice(None), size: int = 4096) -> Iterator[np.ndarray]:
        """Configurations ``rows`` (a slice of step 1 of ``range(n)``) as consecutive ``(<= size,
        *lattice_shape)`` int8 arrays, read, decompressed and checked as they are consumed, so
        memory holds one chunk whatever the file's size; reading starts at the sync point before
        ``rows.start`` (module docstring; in files without sync points the configurations before it
        are decompressed, not kept). A value other than -1/+1 raises :class:`DatasetError` naming the
        configuration when its chunk is reached: a consumer that must refuse a bad file before any
        work reads it through :meth:`read` or a first pass of :meth:`chunks`."""
        start, stop, step = rows.indices(self.n)
        if step != 1:
            raise ValueError(f"rows must be a slice of step 1, got {rows}")
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        if start >= stop:
            return
        if self._header.fortran_order:  # written by another program: read whole, then cut
            spins = self.read()
            yield from (spins[i : min(i + size, stop)] for i in range(start, stop, size))
            return
        sites = self.lattice.n_sites
        for first, chunk in zip(range(start, stop, size), self._archive.rows(self._header, start, stop, size)):
            n_bad, index = _bad_values(chunk)
            if n_bad:
                raise DatasetError(
                    f"{self.path}: spins contain a value other than -1/+1: {int(chunk.reshape(-1)[index])} at flat "
                    f"index {first * sites + index} (configuration {first + index // sites})"
                )
            yield chunk

    def read(self) -> np.ndarray:
        """All configurations, ``(n, *lattice_shape)`` int8, checked to be -1/+1 (a
        :class:`DatasetError` counting the bad values and naming the first otherwise)."""
        spins = self._archive.read("spins")
        problem = _spins_problem(spins, self.metadata["lattice_shape"])
        if problem:
            raise DatasetError(f"{self.path}: {problem}")
        return spins


def open_dataset(
    path: str | os.PathLike[str],
    *,
    model: str | None = None,
    d: int | tuple[int, ...] | None = None,
    lattice_shape: tuple[int, ...] | list[int] | None = None,
) -> SpinFile:
    """Open a ``deeprg.spins/1`` dataset: read and validate its metadata and the header of its
    spins (dtype, shape, n >= 1), not the configurations (:class:`SpinFile` reads them).

    ``model``, ``d`` (one dimension or a tuple of allowed ones) and ``lattice_shape``, when
    given, must match the dataset's metadata. Raises :class:`DatasetError` (one line naming
    ``path``) if the file is missing, not an ``.npz`` archive, not a deeprg spin dataset, its
    metadata or spins header is invalid in any way checked by :func:`save_dataset`, or it does
    not match the request.
    """
    path = Path(path)
    archive = open_npz(path)
    try:
        found = sorted(archive.names)
        if "spins" not in found or "metadata" not in found:
            raise DatasetError(
                f"{path}: not a deeprg spin dataset (needs arrays 'spins' and 'metadata', "
                f"found: {', '.join(found) or 'none'})"
            )
        metadata = parse_metadata(archive.read("metadata", max_bytes=MAX_METADATA_BYTES), path)
        header = archive.header("spins")
        problem = _metadata_problem(metadata) or _layout_problem(header.shape, header.dtype, metadata["lattice_shape"])
        if problem:
            raise DatasetError(f"{path}: {problem}")
        if model is not None and metadata["model"] != model:
            raise DatasetError(f"{path}: dataset model is {metadata['model']!r}, expected {model!r}")
        allowed = (d,) if isinstance(d, int) else d
        if allowed is not None and metadata["d"] not in allowed:
            expected = " or ".join(str(x) for x in allowed)
            raise DatasetError(f"{path}: dataset has d={metadata['d']}, expected d={expected}")
        if lattice_shape is not None and list(metadata["lattice_shape"]) != list(lattice_shape):
            raise DatasetError(
                f"{path}: dataset lattice_shape is {metadata['lattice_shape']}, "
                f"expected {list(lattice_shape)}"
            )
    except BaseException:
        archive.close()
        raise
    return SpinFile(path, archive, metadata, header)


def load_dataset(
    path: str | os.PathLike[str],
    *,
    model: str | None = None,
    d: int | tuple[int, ...] | None = None,
    lattice_shape: tuple[int, ...] | list[int] | None = None,
) -> SpinDataset:
    """Read and validate a whole ``deeprg.spins/1`` dataset into memory: :func:`open_dataset`
    (same arguments and errors), then :meth:`SpinFile.read`."""
    with open_dataset(path, model=model, d=d, lattice_shape=lattice_shape) as f:
        return SpinDataset(f.read(), f.metadata)
