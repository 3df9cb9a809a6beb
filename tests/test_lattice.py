"""Lattice geometry checked against coordinates and np.roll."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deeprg import Lattice
from deeprg.models.ising import IsingModel, K_C, parse_coupling

shapes = st.lists(st.integers(2, 6), min_size=1, max_size=3).map(tuple)


def roll_bond_sum(spins, d):
    """sum_<ij> s_i s_j by np.roll, one bond per site and direction."""
    s = spins.astype(np.int64)
    axes = range(s.ndim - d, s.ndim)
    return sum((s * np.roll(s, -1, axis=a)).sum(axis=tuple(axes)) for a in axes)


@settings(max_examples=40, deadline=None)
@given(shapes)
def test_neighbour_table_matches_coordinates(shape):
    lat = Lattice(shape)
    coords = np.stack(np.unravel_index(np.arange(lat.n_sites), shape), axis=1)
    for mu in range(lat.d):
        for sign, col in ((+1, 2 * mu), (-1, 2 * mu + 1)):
            c = coords.copy()
            c[:, mu] = (c[:, mu] + sign) % shape[mu]
            np.testing.assert_array_equal(lat.neighbors[:, col], np.ravel_multi_index(tuple(c.T), shape))


@settings(max_examples=40, deadline=None)
@given(shapes, st.integers(0, 2**31 - 1))
def test_bond_sum_and_adjacency_agree_with_roll(shape, seed):
    lat = Lattice(shape)
    spins = np.random.default_rng(seed).choice(np.array([-1, 1], np.int8), size=(3,) + shape)
    expected = roll_bond_sum(spins, lat.d)
    np.testing.assert_array_equal(lat.bond_sum(spins), expected)
    flat = spins.reshape(3, -1).astype(float)
    np.testing.assert_allclose(0.5 * np.einsum("bi,ij,bj->b", flat, lat.adjacency(), flat), expected)
    assert lat.bonds.shape == (lat.d * lat.n_sites, 2)
    np.testing.assert_array_equal(lat.adjacency().sum(axis=1), 2 * lat.d)
    np.testing.assert_allclose(lat.coupling_matrix(0.3), 0.3 * lat.adjacency())


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(1, 4), min_size=1, max_size=3))
def test_blocks_tile_the_lattice_at_their_corners(half):
    shape = tuple(2 * h for h in half)
    lat = Lattice(shape)
    blocks = lat.blocks
    assert blocks.shape == (lat.n_sites // 2**lat.d, 2**lat.d)
    np.testing.assert_array_equal(np.sort(blocks.ravel()), np.arange(lat.n_sites))
    if min(half) >= 2:
        assert lat.coarse().shape == tuple(half)
    corners = np.stack(np.unravel_index(blocks[:, 0], shape), axis=1)
    coarse_coords = np.stack(np.unravel_index(np.arange(np.prod(half)), tuple(half)), axis=1)
    np.testing.assert_array_equal(corners, 2 * coarse_coords)
    offsets = np.stack(np.unravel_index(blocks, shape), axis=-1) - corners[:, None, :]
    assert set(map(tuple, offsets.reshape(-1, lat.d))) == set(np.ndindex((2,) * lat.d))


def test_extent_two_keeps_both_bonds():
    lat = Lattice((2,))
    np.testing.assert_array_equal(lat.adjacency(), [[0, 2], [2, 0]])
    assert lat.bond_sum(np.array([1, 1], np.int8)) == 2


@pytest.mark.parametrize(
    "shape, match",
    [((1, 4), "extents must be >= 2"), ((), "dimension d must be 1, 2 or 3"), ((2, 2, 2, 2), "dimension d")],
)
def test_bad_shapes_are_rejected(shape, match):
    with pytest.raises(ValueError, match=match):
        Lattice(shape)


def test_odd_lattice_cannot_be_blocked():
    with pytest.raises(ValueError, match="even extents"):
        Lattice((4, 3)).coarse()


def test_model_energy_and_log_weight_follow_the_sign_convention():
    lat = Lattice.square(4)
    model = IsingModel(lat, 0.3)
    up = np.ones((1, 4, 4), np.int8)
    assert model.energy(up)[0] == -32
    assert model.log_prob_unnormalized(up)[0] == pytest.approx(0.3 * 32)
    assert model.magnetization(-up)[0] == -16


@pytest.mark.parametrize("value", ["critical", "Kc", K_C])
def test_parse_coupling_accepts_critical(value):
    assert parse_coupling(value) == K_C


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "hot", None])
def test_parse_coupling_rejects_bad_values(value):
    with pytest.raises(ValueError, match="beta must be 'critical' or a finite number > 0"):
        parse_coupling(value)


def test_require_names_the_first_requirement_a_lattice_fails():
    assert Lattice((8, 8)).require("x", square=True, power_of_two=True, even=True) == Lattice((8, 8))
    with pytest.raises(ValueError, match="the flow needs a 1D or 2D lattice, got the 3D lattice 4x4x4"):
        Lattice((4, 4, 4)).require("the flow", dims=(1, 2))
    with pytest.raises(ValueError, match="square L\\^d lattice, got 4x8"):
        Lattice((4, 8)).require("CORA", square=True)
    with pytest.raises(ValueError, match="power of two >= 2, got 6x6"):
        Lattice((6, 6)).require("CORA", power_of_two=True)
    with pytest.raises(ValueError, match="even extents, got 5x6"):
        Lattice((5, 6)).require("the RBM projector", even=True)
