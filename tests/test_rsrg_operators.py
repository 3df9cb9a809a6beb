"""MCRG operators: total lattice sums against direct loops over sites."""

import numpy as np
import pytest

from deeprg import Lattice
from deeprg.rsrg.operators import EVEN_OPERATORS, ODD_OPERATORS, operator_sums


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
