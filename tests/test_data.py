"""Tests of deeprg.data: round trips, rejection of bad files, atomic writes."""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
import zlib
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import deeprg
from deeprg import data as data_module
from deeprg.data import (
    FORMAT,
    REQUIRED_KEYS,
    DatasetError,
    NpzArchive,
    SpinDataset,
    SpinWriter,
    load_dataset,
    open_dataset,
    save_dataset,
)
from deeprg.lattice import Lattice


def make_dataset(shape=(4, 6), n=5, seed=0, **extra) -> SpinDataset:
    rng = np.random.default_rng(seed)
    spins = rng.choice(np.array([-1, 1], dtype=np.int8), size=(n, *shape))
    return SpinDataset.new(
        spins, K=0.44, sampler="wolff", updates_between_samples=10, seed=seed, n_chains=2, **extra
    )


def write_raw(path: Path, spins: np.ndarray, metadata) -> Path:
    """Write an npz the way save_dataset does, but without any validation."""
    text = metadata if isinstance(metadata, str) else json.dumps(metadata)
    np.savez_compressed(path, spins=spins, metadata=np.array(text))
    return path


def assert_rejected(path: Path, *fragments: str, **request) -> str:
    with pytest.raises(DatasetError) as info:
        load_dataset(path, **request)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message
    return message


# ---- round trip ----------------------------------------------------------------------------


def test_round_trip_preserves_spins_and_metadata(tmp_path):
    ds = make_dataset(run_id="abc", notes={"tag": [1, 2]})
    out = save_dataset(tmp_path / "spins.npz", ds)
    assert out == tmp_path / "spins.npz"
    loaded = load_dataset(out, model="ising", d=2, lattice_shape=(4, 6))
    assert loaded.spins.dtype == np.int8
    np.testing.assert_array_equal(loaded.spins, ds.spins)
    assert loaded.metadata == ds.metadata
    assert loaded.metadata["run_id"] == "abc" and loaded.metadata["notes"] == {"tag": [1, 2]}
    assert loaded.n == 5
    assert loaded.lattice == Lattice((4, 6))
    assert sorted(os.listdir(tmp_path)) == ["spins.npz"]


def test_new_fills_in_required_metadata():
    ds = make_dataset(shape=(3, 4, 5), tau_int=2.5)
    meta = ds.metadata
    assert set(REQUIRED_KEYS) <= set(meta)
    assert meta["format"] == FORMAT
    assert meta["lattice_shape"] == [3, 4, 5] and meta["d"] == 3
    assert meta["deeprg_version"] == deeprg.__version__
    assert meta["tau_int"] == 2.5
    assert datetime.fromisoformat(meta["created"]).tzinfo is not None


def test_file_is_plain_npz_without_pickles(tmp_path):
    ds = make_dataset()
    save_dataset(tmp_path / "a.npz", ds)
    with np.load(tmp_path / "a.npz", allow_pickle=False) as npz:
        assert sorted(npz.files) == ["metadata", "spins", "spins_sync"]
        assert npz["metadata"].shape == ()
        assert np.array_equal(npz["spins"], ds.spins)
        assert json.loads(str(npz["metadata"])) == ds.metadata


def test_save_replaces_an_existing_file(tmp_path):
    path = tmp_path / "a.npz"
    save_dataset(path, make_dataset(seed=1))
    new = make_dataset(seed=2)
    save_dataset(path, new)
    np.testing.assert_array_equal(load_dataset(path).spins, new.spins)
    assert sorted(os.listdir(tmp_path)) == ["a.npz"]


@settings(max_examples=40, deadline=None)
@given(
    shape=st.lists(st.integers(2, 5), min_size=1, max_size=3).map(tuple),
    n=st.integers(1, 4),
    seed=st.integers(0, 2**32 - 1),
    tau=st.one_of(st.none(), st.floats(0.0, 1e6)),
    K=st.floats(-2.0, 2.0),
)
def test_round_trip_property(shape, n, seed, tau, K):
    rng = np.random.default_rng(seed)
    spins = (2 * rng.integers(0, 2, size=(n, *shape)) - 1).astype(np.int8)
    ds = SpinDataset.new(
        spins, K=K, sampler="metropolis", updates_between_samples=1, seed=seed, tau_int=tau
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = save_dataset(Path(tmp) / "ds.npz", ds)
        loaded = load_dataset(path, d=len(shape), lattice_shape=shape)
        assert os.listdir(tmp) == ["ds.npz"]
    assert loaded.spins.dtype == np.int8
    np.testing.assert_array_equal(loaded.spins, spins)
    assert loaded.metadata == ds.metadata
    assert loaded.lattice.shape == shape


# ---- streaming ------------------------------------------------------------------------------


def stored_npz(path: Path, spins: np.ndarray, metadata) -> Path:
    """The dataset as an uncompressed archive (``np.savez``): zip members that seek cheaply."""
    np.savez(path, spins=spins, metadata=np.array(json.dumps(metadata)))
    return path


@pytest.mark.parametrize("writer", ["compressed", "small sync blocks", "stored", "fortran"])
@settings(max_examples=30, deadline=None)
@given(start=st.integers(-40, 40), stop=st.integers(-40, 40), size=st.integers(1, 40))
def test_streamed_chunks_are_the_rows_of_the_file(writer, start, stop, size):
    """Any slice of rows and any chunk size: the chunks, joined, are those rows of the data, each
    chunk at most ``size`` long; for archives written by save_dataset (with its sync points every
    1 MiB, and every 40 bytes: several per row, rows straddling them), by np.savez, and for a
    Fortran-ordered array written by another program."""
    ds = make_dataset(shape=(3, 5), n=37)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "a.npz"
        if writer == "compressed":
            save_dataset(path, ds)
        elif writer == "small sync blocks":
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(data_module, "SYNC_BYTES", 40)
                save_dataset(path, ds)
        elif writer == "stored":
            stored_npz(path, ds.spins, ds.metadata)
        else:
            write_raw(path, np.asfortranarray(ds.spins), ds.metadata)
        with open_dataset(path, model="ising", d=2) as f:
            assert f.n == 37 and f.metadata == ds.metadata
            chunks = list(f.chunks(slice(start, stop), size))
    expected = ds.spins[start:stop]
    assert all(0 < len(c) <= size and c.dtype == np.int8 for c in chunks)
    joined = np.concatenate(chunks) if chunks else np.empty((0, 3, 5), np.int8)
    np.testing.assert_array_equal(joined, expected)


def test_streaming_names_the_first_bad_configuration_it_reaches(tmp_path):
    """A bad value is reported by the chunk that holds it, with its flat index and configuration;
    rows outside the slice read are not checked (they are decompressed, never looked at)."""
    ds = make_dataset(shape=(4, 6), n=50)
    spins = ds.spins.copy()
    spins[7, 1, 2] = 5
    path = write_raw(tmp_path / "bad.npz", spins, ds.metadata)
    with open_dataset(path) as f:
        assert len(list(f.chunks(slice(8, None), 4))) == 11
        chunks = f.chunks(slice(2, None), 4)
        assert next(chunks).shape == (4, 4, 6)
        with pytest.raises(DatasetError, match=r"bad\.npz: spins contain a value other than -1/\+1: 5 at flat index "
                           rf"{7 * 24 + 8} \(configuration 7\)"):
            next(chunks)


def test_damaged_compressed_data_is_a_dataset_error_when_streamed(tmp_path):
    """Bytes flipped in the middle of the compressed spins: the header still reads, the stream
    fails with a one-line DatasetError naming the file (zlib's error or the CRC check)."""
    ds = make_dataset(shape=(16, 16), n=400)
    path = save_dataset(tmp_path / "a.npz", ds)
    raw = bytearray(path.read_bytes())
    middle = len(raw) // 2
    raw[middle : middle + 64] = bytes(64)
    path.write_bytes(bytes(raw))
    with open_dataset(path) as f:
        with pytest.raises(DatasetError) as info:
            for _ in f.chunks(size=50):
                pass
    assert str(path) in str(info.value) and "cannot read array data" in str(info.value)
    assert "\n" not in str(info.value)


def _member_data(path: Path, name: str) -> tuple[int, zipfile.ZipInfo]:
    """File offset of the (compressed) data of zip member ``name``, and its ZipInfo."""
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(name)
    with open(path, "rb") as fh:
        fh.seek(info.header_offset)
        local = fh.read(30)
    return info.header_offset + 30 + int.from_bytes(local[26:28], "little") + int.from_bytes(local[28:30], "little"), info


@pytest.mark.parametrize("n", [7, 40])
def test_archives_carry_a_sync_point_with_the_crc_of_every_block(tmp_path, monkeypatch, n):
    """Blocks of SYNC_BYTES of the uncompressed spins member, the last one short or (n = 7: a
    header of 128 bytes and 7 rows of 128 fill exactly 4 blocks of 256) full, each with its CRC-32;
    the stream is still one that np.load and zipfile's CRC check read whole."""
    monkeypatch.setattr(data_module, "SYNC_BYTES", 256)
    ds = make_dataset(shape=(8, 16), n=n)
    path = save_dataset(tmp_path / "a.npz", ds)
    with zipfile.ZipFile(path) as z:
        assert z.testzip() is None
        raw = z.read("spins.npy")
    with np.load(path) as npz:
        np.testing.assert_array_equal(npz["spins"], ds.spins)
        points = npz["spins_sync"]
    blocks = -(-len(raw) // 256)
    assert points.dtype == np.int64 and points.shape == (blocks, 3)
    np.testing.assert_array_equal(points[:, 0], 256 * np.arange(blocks))
    assert points[:, 2].tolist() == [zlib.crc32(raw[u : u + 256]) for u in points[:, 0]]
    # each block inflates on its own from its compressed offset
    start, info = _member_data(path, "spins.npy")
    compressed = path.read_bytes()[start : start + info.compress_size]
    for (u, c, _), following in zip(points, [*points[1:, 1], info.compress_size]):
        assert zlib.decompressobj(-15).decompress(compressed[c:following]) == raw[u : u + 256]


def test_the_file_does_not_depend_on_the_compression_threads(tmp_path, monkeypatch):
    """Blocks compressed on 1, 2 or 5 threads: the same bytes (spins, sync points), read back
    whole by zipfile (CRC) and np.load."""
    monkeypatch.setattr(data_module, "SYNC_BYTES", 512)  # 1 + 60 * 96 / 512: 12 blocks
    ds = make_dataset(shape=(8, 12), n=60)
    files = [save_dataset(tmp_path / f"{t}.npz", ds, threads=t).read_bytes() for t in (1, 2, 5)]
    with zipfile.ZipFile(tmp_path / "5.npz") as z:
        assert z.testzip() is None
    with np.load(tmp_path / "5.npz") as npz:
        np.testing.assert_array_equal(npz["spins"], ds.spins)
        assert len(npz["spins_sync"]) == 12
    start, info = _member_data(tmp_path / "1.npz", "spins.npy")
    spins = [f[start : start + info.compress_size] for f in files]
    assert spins[0] == spins[1] == spins[2]


def test_an_interrupted_write_stops_the_compression_threads_and_leaves_nothing(tmp_path, monkeypatch):
    """Ctrl-C while the staged rows stream into the archive: no file, no staging file, and no
    compression thread left running."""
    import threading

    monkeypatch.setattr(data_module, "SYNC_BYTES", 256)
    ds = make_dataset(shape=(16, 16), n=64)
    before = threading.active_count()
    real = np.ascontiguousarray
    calls = []

    def interrupted(a, *args, **kwargs):  # the fourth chunk of rows written is interrupted
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(a, *args, **kwargs)

    monkeypatch.setattr(data_module, "_WRITE_BYTES", 1024)  # 4 rows a chunk
    with SpinWriter(tmp_path / "a.npz", 64, (16, 16)) as writer:
        writer.put(0, ds.spins)
        monkeypatch.setattr(data_module.np, "ascontiguousarray", interrupted)
        with pytest.raises(KeyboardInterrupt):
            writer.finish(ds.metadata, threads=3)
        monkeypatch.setattr(data_module.np, "ascontiguousarray", real)
    assert os.listdir(tmp_path) == []
    assert threading.active_count() == before
    assert not [t for t in threading.enumerate() if t.name.startswith("deflate")]


def test_a_reader_starts_at_the_sync_point_before_its_first_row(tmp_path, monkeypatch):
    """The compressed bytes of block 1 destroyed: rows from block 3 on still stream (nothing
    before their sync point is read), rows from the start fail with a DatasetError. (Blocks of
    64 KiB: opening reads the .npy header through zipfile, 4 KiB of compressed bytes.)"""
    monkeypatch.setattr(data_module, "SYNC_BYTES", 1 << 16)  # 256 rows of 256 bytes per block
    ds = make_dataset(shape=(16, 16), n=2000)
    path = save_dataset(tmp_path / "a.npz", ds)
    with np.load(path) as npz:
        points = npz["spins_sync"]
    start, _ = _member_data(path, "spins.npy")
    raw = bytearray(path.read_bytes())
    raw[start + points[1, 1] : start + points[2, 1]] = bytes(points[2, 1] - points[1, 1])
    path.write_bytes(bytes(raw))
    first_row = (points[3, 0] - 128) // 256 + 1  # the first row wholly in block 3
    with open_dataset(path) as f:
        later = np.concatenate(list(f.chunks(slice(first_row, None), 30)))
        np.testing.assert_array_equal(later, ds.spins[first_row:])
        with pytest.raises(DatasetError, match=r"a\.npz: cannot read array data: array 'spins'"):
            list(f.chunks(size=30))


def _forged(tmp_path, monkeypatch, forge) -> Path:
    """A dataset of 40 16x16 configurations, blocks of 1024 bytes, written with sync points
    ``forge(points)``."""
    monkeypatch.setattr(data_module, "SYNC_BYTES", 1024)
    true_points = data_module._SyncingCompressor.points
    monkeypatch.setattr(data_module._SyncingCompressor, "points", lambda self: forge(true_points(self)))
    return save_dataset(tmp_path / "forged.npz", make_dataset(shape=(16, 16), n=40))


@pytest.mark.parametrize("forge, message", [
    (lambda p: p[:, :2], r"shape \(\d+, 2\) of int64, expected \(k >= 1, 3\)"),
    (lambda p: p.astype(np.int32), "shape .* of int32"),
    (lambda p: p[1:], r"the first point is not at offset \(0, 0\)"),
    (lambda p: p[[0, 2, 1]], "offsets not increasing"),
    (lambda p: np.vstack([p, [[10**9, 10**9, 0]]]), "offsets not increasing"),
    (lambda p: p * [[1, 1, -1]] - [[0, 0, 1]], "a CRC-32 out of range"),
])
def test_damaged_sync_points_are_refused_before_reading(tmp_path, monkeypatch, forge, message):
    path = _forged(tmp_path, monkeypatch, forge)
    with open_dataset(path) as f:
        with pytest.raises(DatasetError, match=rf"forged\.npz: damaged sync points of array 'spins': {message}"):
            next(f.chunks(slice(20, None)))


def test_a_block_failing_its_crc_is_a_dataset_error(tmp_path, monkeypatch):
    path = _forged(tmp_path, monkeypatch, lambda p: p ^ [[0, 0, 1]])
    with open_dataset(path) as f:
        with pytest.raises(DatasetError, match=r"CRC-32 of the block ending at byte \d+ does not match its sync point"):
            list(f.chunks(slice(20, None)))


@pytest.mark.parametrize("python", ["no _compressor", "_compressor not used"])
def test_where_zipfile_differs_the_archive_is_written_without_sync_points(tmp_path, monkeypatch, python):
    """Another Python's zipfile: a member without the private ``_compressor`` gets none, and a
    compressor that did not see every byte of the member (zipfile no longer uses the attribute)
    writes no sync points; the archive then streams from any row by decompressing from the start."""
    assert data_module._syncing(object(), 1) is None
    if python == "no _compressor":
        monkeypatch.setattr(data_module, "_syncing", lambda member, threads: None)
    else:
        monkeypatch.setattr(data_module, "_syncing", lambda member, threads: data_module._SyncingCompressor(64, 1))
    ds = make_dataset(shape=(16, 16), n=40)
    path = save_dataset(tmp_path / "a.npz", ds)
    with zipfile.ZipFile(path) as z:
        assert z.testzip() is None and sorted(z.namelist()) == ["metadata.npy", "spins.npy"]
    with open_dataset(path) as f:
        np.testing.assert_array_equal(np.concatenate(list(f.chunks(slice(25, None), 4))), ds.spins[25:])


def test_open_checks_metadata_and_header_without_reading_the_spins(tmp_path, monkeypatch):
    """open_dataset refuses bad metadata, dtype and shape, and reads no spin data to do so."""
    ds = make_dataset()
    path = write_raw(tmp_path / "float.npz", ds.spins.astype(np.float32), ds.metadata)
    with pytest.raises(DatasetError, match="spins must be int8"):
        open_dataset(path)
    good = save_dataset(tmp_path / "good.npz", ds)

    read, arrays_read = NpzArchive.read, []

    def recording_read(self, name, *args, **kwargs):
        arrays_read.append(name)
        return read(self, name, *args, **kwargs)

    monkeypatch.setattr(NpzArchive, "read", recording_read)
    with open_dataset(good, lattice_shape=(4, 6)) as f:
        assert (f.n, f.lattice) == (5, Lattice((4, 6)))
    assert arrays_read == ["metadata"]
    with pytest.raises(DatasetError, match=r"lattice_shape is \[4, 6\], expected \[6, 4\]"):
        open_dataset(good, lattice_shape=(6, 4))


def test_chunks_refuse_bad_arguments(tmp_path):
    path = save_dataset(tmp_path / "a.npz", make_dataset())
    with open_dataset(path) as f:
        with pytest.raises(ValueError, match="step 1"):
            next(f.chunks(slice(0, 5, 2)))
        with pytest.raises(ValueError, match="size must be >= 1"):
            next(f.chunks(size=0))


# ---- streamed writing -----------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(cuts=st.lists(st.integers(1, 36), max_size=6, unique=True), order=st.randoms(use_true_random=False))
def test_writer_assembles_pieces_put_in_any_order(cuts, order):
    """The rows cut into pieces at ``cuts`` and put in a random order give the file save_dataset
    writes for the whole array; the staging file is gone afterwards."""
    ds = make_dataset(shape=(3, 5), n=37)
    edges = [0, *sorted(cuts), 37]
    pieces = list(zip(edges[:-1], edges[1:]))
    order.shuffle(pieces)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "a.npz"
        with SpinWriter(path, 37, (3, 5)) as writer:
            for a, b in pieces:
                writer.put(a, ds.spins[a:b])
            assert writer.finish(ds.metadata) == path
        loaded = load_dataset(path)
        assert sorted(os.listdir(d)) == ["a.npz"]
    np.testing.assert_array_equal(loaded.spins, ds.spins)
    assert loaded.metadata == ds.metadata


def test_writer_refuses_bad_pieces_and_missing_rows_and_leaves_no_file(tmp_path):
    ds = make_dataset(shape=(4, 6), n=10)
    path = tmp_path / "a.npz"
    save_dataset(path, make_dataset(shape=(4, 6), n=3, seed=9))  # an old file, kept on failure
    bad = ds.spins[:2].copy()
    bad[1, 0, 0] = 0
    with SpinWriter(path, 10, (4, 6)) as writer:
        with pytest.raises(DatasetError, match=r"rows 9\.\.10 are outside 0\.\.9"):
            writer.put(9, ds.spins[:2])
        with pytest.raises(DatasetError, match="1 value\\(s\\) other than -1/\\+1"):
            writer.put(0, bad)
        with pytest.raises(DatasetError, match=r"spins shape \(2, 6, 4\) does not match"):
            writer.put(0, ds.spins[:2].reshape(2, 6, 4))
        writer.put(0, ds.spins[:4])
        writer.put(6, ds.spins[6:])
        with pytest.raises(DatasetError, match="2 of 10 configurations were never put \\(the first: row 4\\)"):
            writer.finish(ds.metadata)
        assert len(os.listdir(tmp_path)) == 2  # the old file and the staging file
    assert os.listdir(tmp_path) == ["a.npz"]
    assert load_dataset(path).n == 3


def test_writer_refuses_metadata_of_another_lattice_and_cleans_up_on_an_exception(tmp_path):
    ds = make_dataset(shape=(4, 6), n=4)
    path = tmp_path / "a.npz"
    with pytest.raises(KeyboardInterrupt):
        with SpinWriter(path, 4, (4, 6)) as writer:
            writer.put(0, ds.spins)
            with pytest.raises(DatasetError, match="does not match metadata lattice_shape"):
                writer.finish({**ds.metadata, "lattice_shape": [6, 4]})
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []
    with pytest.raises(DatasetError, match="does not exist"):
        SpinWriter(tmp_path / "no" / "a.npz", 4, (4, 6))


# ---- rejection of bad files ----------------------------------------------------------------


def test_missing_file(tmp_path):
    assert_rejected(tmp_path / "nope.npz", "no such file")


def test_text_file_renamed_npz(tmp_path):
    path = tmp_path / "text.npz"
    path.write_text("this is not an archive\n")
    assert_rejected(path, "not an .npz archive")


def test_truncated_npz(tmp_path):
    path = save_dataset(tmp_path / "full.npz", make_dataset())
    cut = tmp_path / "cut.npz"
    cut.write_bytes(path.read_bytes()[:200])
    assert_rejected(cut, "not an .npz archive")


def test_foreign_npz(tmp_path):
    path = tmp_path / "foreign.npz"
    np.savez(path, weights=np.zeros(3), bias=np.ones(2))
    assert_rejected(path, "not a deeprg spin dataset", "bias, weights")


def test_single_npy_array(tmp_path):
    path = tmp_path / "single.npz"
    with open(path, "wb") as fh:
        np.save(fh, np.ones((2, 4, 4), dtype=np.int8))
    assert_rejected(path, "not an .npz archive")


def test_object_array_is_not_unpickled(tmp_path):
    path = tmp_path / "pickle.npz"
    np.savez(path, spins=np.array([{"a": 1}], dtype=object), metadata=np.array("{}"))
    assert_rejected(path, "cannot read array data", "allow_pickle=False")


def test_spins_with_value_zero(tmp_path):
    ds = make_dataset()
    spins = ds.spins.copy()
    spins[1, 2, 3] = 0
    path = write_raw(tmp_path / "zero.npz", spins, ds.metadata)
    assert_rejected(path, "1 value(s) other than -1/+1", "e.g. 0")


@pytest.mark.parametrize("bad_at", [[10, 5_000_000, 5_000_001], [5_000_000], [2**22 - 1, 2**22]])
def test_bad_spins_are_counted_and_the_first_named_across_the_chunks_of_a_large_array(tmp_path, bad_at):
    """5 x 1024^2 spins: more than one 4 MB chunk of the validation, bad values on both sides of
    a chunk boundary; the count is the total and the example is the first in flat order."""
    spins = np.ones((5, 1024, 1024), dtype=np.int8)
    spins.reshape(-1)[bad_at] = [3 + k for k in range(len(bad_at))]
    meta = {**make_dataset().metadata, "lattice_shape": [1024, 1024], "n": 5}
    path = write_raw(tmp_path / "large.npz", spins, meta)
    assert_rejected(path, f"{len(bad_at)} value(s) other than -1/+1", f"e.g. 3 at flat index {bad_at[0]})")


def test_float_spins(tmp_path):
    ds = make_dataset()
    path = write_raw(tmp_path / "float.npz", ds.spins.astype(np.float32), ds.metadata)
    assert_rejected(path, "spins must be int8", "float32")


def test_spins_shape_not_matching_metadata(tmp_path):
    ds = make_dataset(shape=(4, 6))
    path = write_raw(tmp_path / "shape.npz", ds.spins[:, :, :5], ds.metadata)
    assert_rejected(path, "does not match metadata lattice_shape (n, 4, 6)")
    path = write_raw(tmp_path / "flat.npz", ds.spins.reshape(5, 24), ds.metadata)
    assert_rejected(path, "does not match metadata lattice_shape")


def test_no_configurations(tmp_path):
    ds = make_dataset()
    path = write_raw(tmp_path / "empty.npz", ds.spins[:0], ds.metadata)
    assert_rejected(path, "no configurations")


def test_metadata_missing_keys(tmp_path):
    ds = make_dataset()
    meta = {k: v for k, v in ds.metadata.items() if k not in ("seed", "K")}
    path = write_raw(tmp_path / "meta.npz", ds.spins, meta)
    assert_rejected(path, "missing required key(s): K, seed")


def test_wrong_format_version(tmp_path):
    ds = make_dataset()
    path = write_raw(tmp_path / "v2.npz", ds.spins, {**ds.metadata, "format": "deeprg.spins/2"})
    assert_rejected(path, "unsupported format 'deeprg.spins/2'", FORMAT)


def test_metadata_not_json(tmp_path):
    ds = make_dataset()
    path = write_raw(tmp_path / "json.npz", ds.spins, "{'format': not json")
    assert_rejected(path, "metadata is not valid JSON")


def test_metadata_not_an_object(tmp_path):
    ds = make_dataset()
    path = write_raw(tmp_path / "list.npz", ds.spins, [1, 2])
    assert_rejected(path, "metadata must be a JSON object")


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("d", 3, "metadata d must be len(lattice_shape) = 2"),
        ("lattice_shape", [4, 1], "lattice_shape is invalid"),
        ("lattice_shape", "4x6", "lattice_shape must be a list of ints"),
        ("updates_between_samples", 0, "updates_between_samples must be an int >= 1"),
        ("tau_int", -1.0, "tau_int must be null or a finite number >= 0"),
        ("created", "yesterday", "created must be an ISO 8601 time"),
        ("K", "hot", "K must be a finite number"),
    ],
)
def test_inconsistent_metadata_values(tmp_path, key, value, fragment):
    ds = make_dataset()
    path = write_raw(tmp_path / "bad.npz", ds.spins, {**ds.metadata, key: value})
    assert_rejected(path, fragment)


def test_request_mismatch(tmp_path):
    path = save_dataset(tmp_path / "a.npz", make_dataset(shape=(4, 6)))
    assert_rejected(path, "model is 'ising', expected 'potts'", model="potts")
    assert_rejected(path, "d=2, expected d=3", d=3)
    assert_rejected(path, "lattice_shape is [4, 6], expected [6, 4]", lattice_shape=(6, 4))


# ---- atomic, validated writes --------------------------------------------------------------


def test_invalid_dataset_is_not_written(tmp_path):
    ds = make_dataset()
    spins = ds.spins.copy()
    spins[0, 0, 0] = 3
    path = tmp_path / "bad.npz"
    with pytest.raises(DatasetError, match="other than -1/"):
        save_dataset(path, SpinDataset(spins, ds.metadata))
    with pytest.raises(DatasetError, match="missing required key"):
        save_dataset(path, SpinDataset(ds.spins, {"format": FORMAT}))
    with pytest.raises(DatasetError, match="not JSON-serialisable"):
        save_dataset(path, SpinDataset(ds.spins, {**ds.metadata, "extra": np.int64(3)}))
    assert os.listdir(tmp_path) == []


def test_failed_write_leaves_no_temp_file_and_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "a.npz"
    old = make_dataset(seed=1)
    save_dataset(path, old)

    def broken_write(file, array, **kwargs):  # after the spins: a partial archive is on disk
        file.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(np.lib.format, "write_array", broken_write)
    with pytest.raises(DatasetError, match="writing failed: OSError: disk full") as info:
        save_dataset(path, make_dataset(seed=2))
    assert str(path) in str(info.value)
    assert os.listdir(tmp_path) == ["a.npz"]
    monkeypatch.undo()
    np.testing.assert_array_equal(load_dataset(path).spins, old.spins)


def test_missing_directory(tmp_path):
    path = tmp_path / "no" / "such" / "a.npz"
    with pytest.raises(DatasetError, match="does not exist") as info:
        save_dataset(path, make_dataset())
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_unwritable_directory(tmp_path, monkeypatch):
    # Permission bits do not stop root, so the access check is simulated.
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(DatasetError, match="is not writable") as info:
        save_dataset(tmp_path / "a.npz", make_dataset())
    assert str(tmp_path / "a.npz") in str(info.value)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == []
