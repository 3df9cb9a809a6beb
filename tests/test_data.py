"""Tests of deeprg.data: round trips, rejection of bad files, atomic writes."""

from __future__ import annotations

import json
import os
import tempfile
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import deeprg
from deeprg.data import FORMAT, REQUIRED_KEYS, DatasetError, SpinDataset, load_dataset, save_dataset
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
        assert sorted(npz.files) == ["metadata", "spins"]
        assert npz["metadata"].shape == ()
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

    def broken_savez(file, **arrays):
        file.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez_compressed", broken_savez)
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
