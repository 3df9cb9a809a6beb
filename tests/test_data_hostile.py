"""Hostile dataset files: refused with a one-line DatasetError naming the file, before any large
allocation, by both loaders (deeprg.data.load_dataset and deeprg.cora.load_binary, which share
the checked reader deeprg.data.open_npz) and by the command line (exit status 2)."""

from __future__ import annotations

import io
import json
import struct
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

from deeprg.cora.datasets import load_binary
from deeprg.data import (
    FORMAT,
    MAX_METADATA_CHARS,
    MAX_METADATA_DEPTH,
    DatasetError,
    SpinDataset,
    load_dataset,
    open_npz,
    save_dataset,
)

TIB = 2**40


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, array, allow_pickle=False)
    return buf.getvalue()


def npy_header(shape: tuple[int, ...], descr: str = "|i1", version: tuple[int, int] = (1, 0)) -> bytes:
    """A hand-made ``.npy`` header (magic, length, padded dict) claiming ``shape`` of ``descr``."""
    text = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape!r}, }}"
    size_format = "<H" if version == (1, 0) else "<I"
    prefix = 6 + 2 + struct.calcsize(size_format)
    text += " " * ((-(prefix + len(text) + 1)) % 64) + "\n"
    return b"\x93NUMPY" + bytes(version) + struct.pack(size_format, len(text)) + text.encode("latin1")


def write_zip(path: Path, members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def metadata_text(**extra) -> str:
    ds = SpinDataset.new(np.ones((1, 4), dtype=np.int8), K=0.5, sampler="wolff", updates_between_samples=1, seed=0)
    return json.dumps({**ds.metadata, **extra})


def valid_spins() -> bytes:
    return npy_bytes(np.ones((3, 4), dtype=np.int8))


def assert_refused(path: Path, *fragments: str) -> None:
    """Both loaders refuse ``path`` with one line naming it."""
    for load in (load_dataset, load_binary):
        with pytest.raises(DatasetError) as info:
            load(path)
        message = str(info.value)
        assert "\n" not in message and message.startswith(str(path))
        for fragment in fragments:
            assert fragment in message, (load.__name__, message)


# ---- metadata --------------------------------------------------------------------------------


def deep_metadata_file(path: Path) -> Path:
    deep = "[" * 100_000 + "]" * 100_000
    text = metadata_text()[:-1] + f', "notes": {deep}}}'
    return write_zip(path, {"spins.npy": valid_spins(), "metadata.npy": npy_bytes(np.array(text))})


def huge_header_file(path: Path, version: tuple[int, int] = (1, 0)) -> Path:
    """``spins`` claims 58 TiB: ``(58 TiB / 64, 8, 8)`` int8, holding 64 bytes."""
    spins = npy_header((58 * TIB // 64, 8, 8), version=version) + b"\x01" * 64
    return write_zip(path, {"spins.npy": spins, "metadata.npy": npy_bytes(np.array(metadata_text()))})


def test_metadata_nested_100000_levels_deep(tmp_path):
    path = deep_metadata_file(tmp_path / "deep.npz")
    assert_refused(path, "metadata JSON nests", "100001 levels deep", f"limit of {MAX_METADATA_DEPTH}")


def test_metadata_brackets_inside_strings_do_not_count(tmp_path):
    text = metadata_text(notes="[{" * 5000, nested={"a": [[[1]]]})
    path = write_zip(tmp_path / "ok.npz", {"spins.npy": valid_spins(), "metadata.npy": npy_bytes(np.array(text))})
    ds = load_dataset(path)
    assert ds.metadata["notes"] == "[{" * 5000 and ds.metadata["nested"] == {"a": [[[1]]]}
    assert load_binary(path).shape == (4,)


def test_metadata_too_long(tmp_path):
    text = metadata_text(notes="x" * MAX_METADATA_CHARS)
    path = write_zip(tmp_path / "long.npz", {"spins.npy": valid_spins(), "metadata.npy": npy_bytes(np.array(text))})
    assert_refused(path, "array 'metadata'", "more than the limit")


def test_metadata_with_an_absurd_number_is_invalid_json(tmp_path):
    text = metadata_text()[:-1] + ', "x": ' + "9" * 100_000 + "}"
    path = write_zip(tmp_path / "digits.npz", {"spins.npy": valid_spins(), "metadata.npy": npy_bytes(np.array(text))})
    assert_refused(path, "metadata is not valid JSON")


# ---- array headers ---------------------------------------------------------------------------


@pytest.mark.parametrize("version", [(1, 0), (2, 0)])
def test_header_claiming_58_tib_is_refused_before_allocating(tmp_path, version):
    path = huge_header_file(tmp_path / "huge.npz", version)
    tracemalloc.start()
    try:
        assert_refused(path, "array 'spins'", f"claims {58 * TIB} bytes", "more than the limit")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**24


def test_header_claiming_more_than_the_member_holds(tmp_path):
    spins = npy_header((1000, 8)) + b"\x01" * 80
    path = write_zip(tmp_path / "short.npz", {"spins.npy": spins, "metadata.npy": npy_bytes(np.array(metadata_text()))})
    assert_refused(path, "array 'spins'", "claims 8000 bytes", "holds only 80 bytes")


def test_huge_metadata_header_is_refused(tmp_path):
    metadata = npy_header((), descr=f"<U{2**28}") + b"\0" * 64
    path = write_zip(tmp_path / "meta.npz", {"spins.npy": valid_spins(), "metadata.npy": metadata})
    assert_refused(path, "array 'metadata'", "more than the limit")


def test_forged_zip_directory_is_refused(tmp_path):
    """The directory claims a larger uncompressed size than a stored member can have: without
    the check, the header's claim would fit the forged size and be allocated."""
    claimed = 10**6
    spins = npy_header((claimed,)) + b"\x01" * 100
    members = {"spins.npy": spins, "metadata.npy": npy_bytes(np.array(metadata_text()))}
    path = write_zip(tmp_path / "forged.npz", members, compression=zipfile.ZIP_STORED)
    raw = bytearray(path.read_bytes())
    forged = claimed + len(spins)
    local = raw.index(b"PK\x03\x04")
    central = raw.index(b"PK\x01\x02")
    assert raw[local + 30 : local + 39] == b"spins.npy" and raw[central + 46 : central + 55] == b"spins.npy"
    struct.pack_into("<I", raw, local + 22, forged)
    struct.pack_into("<I", raw, central + 24, forged)
    path.write_bytes(bytes(raw))
    assert_refused(path, "array 'spins'", "forged")


def test_object_arrays_are_not_unpickled(tmp_path):
    path = tmp_path / "pickle.npz"
    np.savez(path, spins=np.array([{"a": 1}], dtype=object), metadata=np.array(metadata_text()))
    assert_refused(path, "array 'spins'", "allow_pickle=False")
    generic = tmp_path / "generic.npz"
    np.savez(generic, pixels=np.array([[0, 1]], dtype=object))
    with pytest.raises(DatasetError, match="allow_pickle=False"):
        load_binary(generic)


def test_unsupported_npy_version(tmp_path):
    spins = npy_header((3, 4), version=(3, 0)) + b"\x01" * 12
    path = write_zip(tmp_path / "v3.npz", {"spins.npy": spins, "metadata.npy": npy_bytes(np.array(metadata_text()))})
    assert_refused(path, "unsupported .npy format version 3.0")


def test_checked_reader_round_trip_and_limit(tmp_path):
    spins = np.where(np.random.default_rng(0).random((5, 4, 4)) < 0.5, 1, -1).astype(np.int8)
    path = save_dataset(tmp_path / "ok.npz", SpinDataset.new(spins, K=0.3, sampler="wolff",
                                                             updates_between_samples=1, seed=0))
    with open_npz(path) as archive:
        assert sorted(archive.names) == ["metadata", "spins", "spins_sync"]
        np.testing.assert_array_equal(archive.read("spins"), spins)
        with pytest.raises(DatasetError, match="more than the limit of 79 bytes"):
            archive.read("spins", max_bytes=79)
        with pytest.raises(DatasetError, match="no array 'x'"):
            archive.read("x")
    assert json.loads(str(np.load(path)["metadata"][()]))["format"] == FORMAT


@pytest.mark.parametrize(("make", "fragment"), [(deep_metadata_file, "levels deep"),
                                                (huge_header_file, f"claims {58 * TIB} bytes")])
def test_command_line_refuses_hostile_files(tmp_path, capsys, make, fragment):
    from deeprg.cli import main

    path = make(tmp_path / "hostile.npz")
    with pytest.raises(SystemExit) as info:
        main(["data", "info", str(path)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("deeprg: error: ") and str(path) in err and fragment in err
    assert "Traceback" not in err
