"""CORA data: two-state encodings, spin datasets, generic .npz files and the digits."""

import numpy as np
import pytest

from deeprg.cora.datasets import decode_values, digits, encode_values, load_binary, save_binary
from deeprg.data import DatasetError, SpinDataset, save_dataset


def test_encodings_round_trip():
    spins = np.array([[1, -1, -1, 1]], dtype=np.int8)
    idx, enc = encode_values(spins)
    assert enc == "spin" and idx.tolist() == [[0, 1, 1, 0]] and idx.dtype == np.int8
    assert np.array_equal(decode_values(idx, enc), spins)
    pixels = np.array([[0, 1, 1, 0]], dtype=np.uint8)
    idx, enc = encode_values(pixels)
    assert enc == "binary" and idx.tolist() == [[0, 1, 1, 0]]
    assert np.array_equal(decode_values(idx, enc), pixels)
    assert encode_values(np.array([[0.0, 1.0]]))[1] == "binary"


@pytest.mark.parametrize("values", [np.array([[0, 1, 2, 1]]), np.array([[-1, 0, 1, 1]]), np.array([[0.5, 1.0]])])
def test_more_than_two_states_are_refused(values):
    with pytest.raises(ValueError, match="two states"):
        encode_values(values, "x")


def test_spin_dataset_keeps_its_metadata(tmp_path):
    spins = np.where(np.random.default_rng(0).random((5, 8)) < 0.5, 1, -1).astype(np.int8)
    path = save_dataset(tmp_path / "d.npz", SpinDataset.new(spins, K=0.5, sampler="wolff",
                                                           updates_between_samples=1, seed=0))
    data = load_binary(path)
    assert data.encoding == "spin" and data.shape == (8,) and data.n == 5
    assert data.metadata["K"] == 0.5 and data.metadata["model"] == "ising"
    assert np.array_equal(decode_values(data.indices, "spin"), spins)


def test_generic_npz_keys(tmp_path):
    images = np.random.default_rng(0).integers(0, 2, (4, 8, 8))
    np.savez(tmp_path / "one.npz", whatever=images)
    assert load_binary(tmp_path / "one.npz").shape == (8, 8)
    np.savez(tmp_path / "two.npz", a=images, b=images)
    with pytest.raises(DatasetError, match="which array"):
        load_binary(tmp_path / "two.npz")
    assert load_binary(tmp_path / "two.npz", key="b").encoding == "binary"
    with pytest.raises(DatasetError, match="no array 'c'"):
        load_binary(tmp_path / "two.npz", key="c")
    save_binary(tmp_path / "s.npz", 1 - 2 * images, "spin", seed=np.int64(3))
    back = load_binary(tmp_path / "s.npz")
    assert back.encoding == "spin" and np.array_equal(back.indices, images)


@pytest.mark.parametrize("shape, needle", [((4, 12), "power of two"), ((4, 8, 4), "square"), ((4, 2, 2, 2), "(n, L)")])
def test_bad_lattices_are_refused(tmp_path, shape, needle):
    np.savez(tmp_path / "bad.npz", pixels=np.zeros(shape, dtype=np.int8))
    with pytest.raises(ValueError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        load_binary(tmp_path / "bad.npz")


def test_missing_and_foreign_files(tmp_path):
    with pytest.raises(DatasetError, match="no such file"):
        load_binary(tmp_path / "nothing.npz")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(DatasetError, match="not an .npz"):
        load_binary(tmp_path / "text.npz")


def test_digits_are_binary_images():
    pytest.importorskip("sklearn")
    pixels, labels = digits(8)
    assert pixels.shape == (1797, 8, 8) and pixels.dtype == np.int8 and set(np.unique(pixels)) == {0, 1}
    assert labels.shape == (1797,) and set(labels) == set(range(10))
    up, _ = digits(16, mode="upscale")
    assert up.shape == (1797, 16, 16) and np.array_equal(up[:, ::2, ::2], pixels)
    pad, _ = digits(16, mode="pad")
    assert np.array_equal(pad[:, 4:12, 4:12], pixels) and pad[:, :4].sum() == 0
    with pytest.raises(ValueError, match="size"):
        digits(32)
