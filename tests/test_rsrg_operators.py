"""MCRG operators: total lattice sums against direct loops over sites."""

from itertools import permutations, product

import numpy as np
import pytest

from deeprg import Lattice
from deeprg.rsrg import operators as operators_module
from deeprg.rsrg.operators import (
    EVEN_OPERATORS,
    ODD_OPERATORS,
    Operator,
    OperatorSet,
    operator_set,
    operator_sums,
)


def direct_sums(s: np.ndarray) -> list[int]:
    """The 7 even then 4 odd operators of one configuration by an explicit loop over sites."""
    L0, L1 = s.shape

    def at(x, y):
        return int(s[x % L0, y % L1])

    totals = [0] * 11
    for x in range(L0):
        for y in range(L1):
            c = at(x, y)
            totals[0] += c * at(x + 1, y) + c * at(x, y + 1)
            totals[1] += c * at(x + 1, y + 1) + c * at(x + 1, y - 1)
            totals[2] += c * at(x + 1, y) * at(x, y + 1) * at(x + 1, y + 1)
            totals[3] += c * at(x + 2, y) + c * at(x, y + 2)
            totals[4] += c * (at(x + 2, y + 1) + at(x + 2, y - 1) + at(x + 1, y + 2) + at(x - 1, y + 2))
            totals[5] += at(x + 1, y) * at(x - 1, y) * at(x, y + 1) * at(x, y - 1)
            totals[6] += c * at(x + 2, y + 2) + c * at(x + 2, y - 2)
            totals[7] += c
            square = [c, at(x + 1, y), at(x, y + 1), at(x + 1, y + 1)]
            totals[8] += sum(int(np.prod(square)) * v for v in square)  # drop one corner: product * spin
            totals[9] += at(x - 1, y) * c * at(x + 1, y) + at(x, y - 1) * c * at(x, y + 1)
            totals[10] += at(x - 1, y - 1) * c * at(x + 1, y + 1) + at(x - 1, y + 1) * c * at(x + 1, y - 1)
    return totals


@pytest.mark.parametrize("shape", [(4, 4), (6, 8), (5, 7), (8, 8)])
def test_operator_sums_match_direct_loop(rng, shape):
    spins = rng.choice(np.array([-1, 1], dtype=np.int8), size=(3, *shape))
    got = operator_sums(spins)
    assert got.shape == (3, 11) and got.dtype == np.int64
    for s, row in zip(spins, got):
        assert row.tolist() == direct_sums(s)


def test_nearest_neighbour_operator_is_the_bond_sum(rng):
    spins = rng.choice(np.array([-1, 1], dtype=np.int8), size=(5, 12, 10))
    assert np.array_equal(operator_sums(spins, EVEN_OPERATORS[:1])[:, 0], Lattice((12, 10)).bond_sum(spins))


def test_ordered_state_and_parity(rng):
    up = np.ones((1, 8, 8), dtype=np.int8)
    terms = [sum(1 for _ in op.shapes) * 64 for op in EVEN_OPERATORS + ODD_OPERATORS]
    assert operator_sums(up)[0].tolist() == terms  # every product is +1
    assert terms[:7] == [128, 128, 64, 128, 256, 64, 128] and terms[7:] == [64, 256, 128, 128]
    spins = rng.choice(np.array([-1, 1], dtype=np.int8), size=(4, 8, 8))
    even, odd = len(EVEN_OPERATORS), len(ODD_OPERATORS)
    a, b = operator_sums(spins), operator_sums(-spins)
    assert np.array_equal(a[:, :even], b[:, :even]) and np.array_equal(a[:, even:], -b[:, even:])
    assert [op.parity for op in EVEN_OPERATORS] == [1] * even and [op.parity for op in ODD_OPERATORS] == [-1] * odd


def test_bad_shape():
    with pytest.raises(ValueError, match="shape"):
        operator_sums(np.ones((8, 8), dtype=np.int8))


# --- generated operators, 2D reference table and 3D set ----------------------------------------

#: The hand-written 2D table the generated operators replace (names, order and shapes).
_SQUARE = ((0, 0), (1, 0), (0, 1), (1, 1))
REFERENCE_2D = (
    ("nn", [((0, 0), (1, 0)), ((0, 0), (0, 1))]),
    ("nnn", [((0, 0), (1, 1)), ((0, 0), (1, -1))]),
    ("plaquette", [_SQUARE]),
    ("third", [((0, 0), (2, 0)), ((0, 0), (0, 2))]),
    ("2-1", [((0, 0), (2, 1)), ((0, 0), (2, -1)), ((0, 0), (1, 2)), ((0, 0), (-1, 2))]),
    ("diamond", [((1, 0), (0, 1), (-1, 0), (0, -1))]),
    ("2-2", [((0, 0), (2, 2)), ((0, 0), (2, -2))]),
    ("magnetization", [((0, 0),)]),
    ("corner3", [tuple(o for o in _SQUARE if o != left_out) for left_out in _SQUARE]),
    ("line3", [((-1, 0), (0, 0), (1, 0)), ((0, -1), (0, 0), (0, 1))]),
    ("diagonal3", [((-1, -1), (0, 0), (1, 1)), ((-1, 1), (0, 0), (1, -1))]),
)


def modulo_translation(shape):
    """Sorted offsets with the lexicographically smallest one at the origin."""
    low = min(shape)
    return tuple(sorted(tuple(c - m for c, m in zip(o, low)) for o in shape))


def test_generated_2d_operators_equal_the_hand_written_table():
    ops = EVEN_OPERATORS + ODD_OPERATORS
    assert [op.name for op in ops] == [name for name, _ in REFERENCE_2D]
    for op, (name, shapes) in zip(ops, REFERENCE_2D):
        got = sorted(modulo_translation(s) for s in op.shapes)
        assert got == sorted(modulo_translation(s) for s in shapes), name
        assert len(set(got)) == len(got), name
    assert [len(op.shapes) for op in EVEN_OPERATORS] == [2, 2, 1, 2, 4, 1, 2]
    assert [len(op.shapes) for op in ODD_OPERATORS] == [1, 4, 2, 2]
    two = operator_set(2)
    assert two.even == EVEN_OPERATORS and two.odd == ODD_OPERATORS and two.all == ops and two.d == 2


def test_operator_sets_reach_and_min_extent():
    for d in (2, 3):
        ops = operator_set(d)
        assert isinstance(ops, OperatorSet) and ops.d == d and ops.all == ops.even + ops.odd
        assert ops.reach == 2 and ops.min_extent == 4
        assert all(op.d == d for op in ops.all)
        assert ops.all[0].name == "nn" and ops.odd[0].name == "magnetization"
    assert len(operator_set(3).even) >= 7 and len(operator_set(3).odd) >= 4


def test_3d_shape_counts_and_parities():
    ops = operator_set(3)
    counts = {op.name: len(op.shapes) for op in ops.all}
    assert counts == {"nn": 3, "nnn": 6, "1-1-1": 4, "2-0-0": 3, "plaquette": 3, "2-1-0": 12, "tetrahedron": 2,
                      "2-2-0": 6, "magnetization": 1, "corner3": 12, "line3": 3, "diagonal3": 6, "triangle3": 8,
                      "body3": 4}
    assert [op.parity for op in ops.even] == [1] * len(ops.even)
    assert [op.parity for op in ops.odd] == [-1] * len(ops.odd)
    for op in ops.all:  # every shape once: distinct modulo translation, and each one has the same size
        canon = {modulo_translation(s) for s in op.shapes}
        assert len(canon) == len(op.shapes) and len({len(s) for s in op.shapes}) == 1
    up = np.ones((1, 4, 5, 6), dtype=np.int8)
    assert operator_sums(up)[0].tolist() == [120 * len(op.shapes) for op in ops.all]


def _unit(i):
    return tuple(int(i == j) for j in range(3))


def _add(*vs):
    return tuple(sum(c) for c in zip(*vs))


#: 3D shapes written out by hand (independent of the orbit generator).
_PLAQUETTES_3D = [[(0, 0, 0), _unit(a), _unit(b), _add(_unit(a), _unit(b))] for a, b in ((0, 1), (0, 2), (1, 2))]
EXPLICIT_3D = {
    "nn": [((0, 0, 0), _unit(i)) for i in range(3)],
    "nnn": [((0, 0, 0), o) for o in ((1, 1, 0), (1, -1, 0), (1, 0, 1), (1, 0, -1), (0, 1, 1), (0, 1, -1))],
    "1-1-1": [((0, 0, 0), o) for o in ((1, 1, 1), (1, 1, -1), (1, -1, 1), (1, -1, -1))],
    "2-0-0": [((0, 0, 0), (2 * a, 2 * b, 2 * c)) for a, b, c in (_unit(i) for i in range(3))],
    "plaquette": [tuple(p) for p in _PLAQUETTES_3D],
    "corner3": [tuple(o for o in p if o != left_out) for p in _PLAQUETTES_3D for left_out in p],
    "line3": [(tuple(-c for c in _unit(i)), (0, 0, 0), _unit(i)) for i in range(3)],
}


def direct_sums_3d(s, ops):
    """Every operator of ``ops`` on one configuration by an explicit loop over sites (hand-written
    shapes where EXPLICIT_3D has them, else ``op.shapes``), periodic by modulo indexing."""
    L = s.shape
    totals = []
    for op in ops:
        shapes = EXPLICIT_3D.get(op.name, op.shapes)
        total = 0
        for x in range(L[0]):
            for y in range(L[1]):
                for z in range(L[2]):
                    for shape in shapes:
                        p = 1
                        for o in shape:
                            p *= int(s[(x + o[0]) % L[0], (y + o[1]) % L[1], (z + o[2]) % L[2]])
                        total += p
        totals.append(total)
    return totals


def test_explicit_3d_shapes_match_the_generated_ones():
    ops = {op.name: op for op in operator_set(3).all}
    for name, shapes in EXPLICIT_3D.items():
        assert sorted(map(modulo_translation, shapes)) == sorted(map(modulo_translation, ops[name].shapes)), name


@pytest.mark.parametrize("shape", [(4, 4, 4), (4, 6, 8), (5, 4, 6)])
def test_3d_operator_sums_match_direct_loop(rng, shape):
    spins = rng.choice(np.array([-1, 1], dtype=np.int8), size=(2, *shape))
    ops = operator_set(3).all
    got = operator_sums(spins)
    assert got.shape == (2, len(ops)) and got.dtype == np.int64
    for s, row in zip(spins, got):
        assert row.tolist() == direct_sums_3d(s, ops)


@pytest.mark.parametrize("d", [2, 3])
def test_sums_are_invariant_under_the_lattice_symmetries(rng, d):
    L = 5
    spins = rng.choice(np.array([-1, 1], dtype=np.int8), size=(2,) + (L,) * d)
    ref = operator_sums(spins)
    n_even = len(operator_set(d).even)
    # translations
    for shift in ([1] * d, [2, 3, 4][:d], [0, 4, 1][:d]):
        assert np.array_equal(operator_sums(np.roll(spins, shift, axis=tuple(range(1, d + 1)))), ref)
    # the d! 2^d rotations and reflections of a cubic configuration (48 in 3D, 8 in 2D)
    images = []
    for axes in permutations(range(1, d + 1)):
        for flips in product((False, True), repeat=d):
            t = np.transpose(spins, (0, *axes))
            flip_axes = tuple(i + 1 for i, f in enumerate(flips) if f)
            images.append(np.flip(t, axis=flip_axes) if flip_axes else t)
    assert len(images) == (48 if d == 3 else 8)
    got = operator_sums(np.concatenate(images)).reshape(len(images), *ref.shape)
    assert np.array_equal(got, np.broadcast_to(ref, got.shape))
    # global spin flip: even operators unchanged, odd ones change sign
    flipped = operator_sums(-spins)
    assert np.array_equal(flipped[:, :n_even], ref[:, :n_even])
    assert np.array_equal(flipped[:, n_even:], -ref[:, n_even:])


def test_sub_batches_give_the_same_sums(rng, monkeypatch):
    spins = rng.choice(np.array([-1, 1], dtype=np.int8), size=(7, 4, 6, 8))
    whole = operator_sums(spins)
    monkeypatch.setattr(operators_module, "_CHUNK_SITES", 2 * 4 * 6 * 8)  # 2 configurations at a time
    assert np.array_equal(operator_sums(spins), whole)
    monkeypatch.setattr(operators_module, "_CHUNK_SITES", 1)
    assert np.array_equal(operator_sums(spins.astype(np.int64)), whole)


def rolled_sums(spins: np.ndarray, operators) -> np.ndarray:
    """The operators' total sums by the definition: products of periodically rolled copies, summed."""
    axes = tuple(range(1, spins.ndim))
    s = spins.astype(np.int64)
    return np.stack([sum(np.prod([np.roll(s, tuple(-c for c in o), axis=axes) for o in shape], axis=0)
                         for shape in op.shapes).sum(axis=axes) for op in operators], axis=1)


@pytest.mark.parametrize("last", [1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 130])
def test_bit_packed_rows_of_every_width_give_the_defined_sums(rng, last):
    """Rows along the last axis are packed into words of 8..64 bits, or several 64-bit words beyond
    64 sites; every width, and offsets reaching past a short row, give the sums of the definition."""
    ops = operator_set(2).all
    spins = rng.choice(np.array([-1, 1], dtype=np.int8), size=(3, 5, last))
    assert np.array_equal(operator_sums(spins, ops), rolled_sums(spins, ops))
    ops3 = operator_set(3).all
    spins3 = rng.choice(np.array([-1, 1], dtype=np.int8), size=(2, 3, 4, last))
    assert np.array_equal(operator_sums(spins3, ops3), rolled_sums(spins3, ops3))


def test_custom_operators_in_other_dimensions(rng):
    nn1 = Operator.from_prototype("nn", ((0,), (1,)))
    assert nn1.shapes == (((0,), (1,)),)
    chain = rng.choice(np.array([-1, 1], dtype=np.int8), size=(3, 9))
    assert np.array_equal(operator_sums(chain, (nn1,))[:, 0], (chain * np.roll(chain, 1, axis=1)).sum(axis=1))
    nn4 = Operator.from_prototype("nn", ((0, 0, 0, 0), (1, 0, 0, 0)))
    assert len(nn4.shapes) == 4
    s = rng.choice(np.array([-1, 1], dtype=np.int8), size=(2, 3, 4, 5, 3))
    bonds = sum((s * np.roll(s, 1, axis=a)).sum(axis=(1, 2, 3, 4)) for a in range(1, 5))
    assert np.array_equal(operator_sums(s, (nn4,))[:, 0], bonds)


def test_prototype_orbits():
    assert len(Operator.from_prototype("x", ((0, 0, 0), (1, 2, 3))).shapes) == 24  # generic pair: 48 / 2
    assert Operator.from_prototype("x", ((0, 0), (1, 0))) == Operator.from_prototype("x", ((5, 5), (5, 4)))
    with pytest.raises(ValueError, match="repeat"):
        Operator.from_prototype("x", ((0, 0), (0, 0)))
    with pytest.raises(ValueError, match="same dimension"):
        Operator.from_prototype("x", ((0, 0), (1, 0, 0)))
    with pytest.raises(ValueError, match="at least one offset"):
        Operator.from_prototype("x", ())


def test_bad_input():
    with pytest.raises(ValueError, match=r"d = 2 and 3, got d = 4"):
        operator_set(4)
    with pytest.raises(ValueError, match=r"d = 2 and 3, got d = 1"):
        operator_set(1)
    with pytest.raises(ValueError, match=r"\(2, 4, 4, 4, 4\)"):  # d = 4 and no operators given
        operator_sums(np.ones((2, 4, 4, 4, 4), dtype=np.int8))
    with pytest.raises(ValueError, match=r"shape \(8,\)"):
        operator_sums(np.ones(8, dtype=np.int8))
    with pytest.raises(ValueError, match=r"shape \(8,\)"):
        operator_sums(np.ones(8, dtype=np.int8), EVEN_OPERATORS)
    with pytest.raises(ValueError, match="'nn' has offsets of dimension 2.*3-dimensional"):
        operator_sums(np.ones((2, 4, 4, 4), dtype=np.int8), EVEN_OPERATORS)
    with pytest.raises(ValueError, match="dimension 3.*2-dimensional"):
        operator_sums(np.ones((2, 4, 4), dtype=np.int8), operator_set(3).all)
