"""Interaction operators of the square-lattice Ising model for Monte Carlo renormalization group.

An operator is a **total lattice sum** ``S_a(s) = sum_x sum_{shape in a} prod_{o in shape} s(x + o)``
over all sites ``x`` of a periodic ``L0 x L1`` lattice and over the listed orientations of one
spin product (offsets ``o = (row, column)``, periodic). Total sums, not per-site averages: a
per-site normalization would shift every MCRG exponent by ``-d``.

Even operators (Z2-even products, the couplings of Swendsen's MCRG analysis), in order:

==  ==================  ===========================================================================
 #  name                shapes (offsets from x)
==  ==================  ===========================================================================
 1  ``nn``              (0,0)(1,0); (0,0)(0,1)                          nearest neighbours
 2  ``nnn``             (0,0)(1,1); (0,0)(1,-1)                         diagonal next-nearest
 3  ``plaquette``       (0,0)(1,0)(0,1)(1,1)                            4 spins of a unit square
 4  ``third``           (0,0)(2,0); (0,0)(0,2)                          third neighbours (2,0)
 5  ``2-1``             (0,0)(2,1); (0,0)(2,-1); (0,0)(1,2); (0,0)(-1,2)  neighbours at (2,1)
 6  ``diamond``         (1,0)(0,1)(-1,0)(0,-1)                          the 4 neighbours of a site
 7  ``2-2``             (0,0)(2,2); (0,0)(2,-2)                         neighbours at (2,2)
==  ==================  ===========================================================================

Odd operators (Z2-odd products: the magnetization and 3-spin terms), in order:

==  ==================  ===========================================================================
 #  name                shapes (offsets from x)
==  ==================  ===========================================================================
 1  ``magnetization``   (0,0)
 2  ``corner3``         the 4 triples of a unit square: (1,0)(0,1)(1,1); (0,0)(0,1)(1,1);
                        (0,0)(1,0)(1,1); (0,0)(1,0)(0,1)
 3  ``line3``           (-1,0)(0,0)(1,0); (0,-1)(0,0)(0,1)              straight nn triples
 4  ``diagonal3``       (-1,-1)(0,0)(1,1); (-1,1)(0,0)(1,-1)            straight diagonal triples
==  ==================  ===========================================================================

Every shape is counted once per site, so e.g. ``nn`` is the usual bond sum (``2 N`` bonds) and
``corner3`` has ``4 N`` terms. Operators reach two lattice spacings, so MCRG asks for lattices of
extent >= 4 (on smaller ones distinct shapes coincide).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["EVEN_OPERATORS", "ODD_OPERATORS", "Operator", "operator_sums"]

Offset = tuple[int, int]


@dataclass(frozen=True)
class Operator:
    """``S = sum_x sum_{shape in shapes} prod_{o in shape} s(x + o)`` on a periodic lattice."""

    name: str
    shapes: tuple[tuple[Offset, ...], ...]

    @property
    def parity(self) -> int:
        """+1 for Z2-even products, -1 for odd ones."""
        return 1 if len(self.shapes[0]) % 2 == 0 else -1


def _pairs(*offsets: Offset) -> tuple[tuple[Offset, ...], ...]:
    return tuple(((0, 0), o) for o in offsets)


EVEN_OPERATORS: tuple[Operator, ...] = (
    Operator("nn", _pairs((1, 0), (0, 1))),
    Operator("nnn", _pairs((1, 1), (1, -1))),
    Operator("plaquette", (((0, 0), (1, 0), (0, 1), (1, 1)),)),
    Operator("third", _pairs((2, 0), (0, 2))),
    Operator("2-1", _pairs((2, 1), (2, -1), (1, 2), (-1, 2))),
    Operator("diamond", (((1, 0), (0, 1), (-1, 0), (0, -1)),)),
    Operator("2-2", _pairs((2, 2), (2, -2))),
)

_SQUARE = ((0, 0), (1, 0), (0, 1), (1, 1))

ODD_OPERATORS: tuple[Operator, ...] = (
    Operator("magnetization", (((0, 0),),)),
    Operator("corner3", tuple(tuple(o for o in _SQUARE if o != left_out) for left_out in _SQUARE)),
    Operator("line3", (((-1, 0), (0, 0), (1, 0)), ((0, -1), (0, 0), (0, 1)))),
    Operator("diagonal3", (((-1, -1), (0, 0), (1, 1)), ((-1, 1), (0, 0), (1, -1)))),
)

#: Largest |offset| of any operator: the periodic padding needed to evaluate them by slicing.
_REACH = max(abs(c) for op in EVEN_OPERATORS + ODD_OPERATORS for shape in op.shapes for o in shape for c in o)


def operator_sums(spins: np.ndarray, operators: tuple[Operator, ...] = EVEN_OPERATORS + ODD_OPERATORS) -> np.ndarray:
    """Total lattice sums of ``operators`` for every configuration.

    Parameters
    ----------
    spins:
        ``(batch, L0, L1)`` array of +-1 (any integer dtype; int8 in the package).
    operators:
        The operators to evaluate, default the 7 even then the 4 odd ones.

    Returns
    -------
    ``(batch, len(operators))`` int64 array; ``out[:, a]`` is ``S_a`` of each configuration.
    """
    s = np.asarray(spins)
    if s.ndim != 3:
        raise ValueError(f"spins must have shape (batch, L0, L1), got shape {s.shape}")
    s = s.astype(np.int8, copy=False)
    r = _REACH
    padded = np.pad(s, ((0, 0), (r, r), (r, r)), mode="wrap")
    L0, L1 = s.shape[1:]

    def shifted(o: Offset) -> np.ndarray:
        return padded[:, r + o[0] : r + o[0] + L0, r + o[1] : r + o[1] + L1]

    out = np.empty((s.shape[0], len(operators)), dtype=np.int64)
    for a, op in enumerate(operators):
        total = np.zeros(s.shape[0], dtype=np.int64)
        for shape in op.shapes:
            product = shifted(shape[0]).copy()
            for o in shape[1:]:
                product *= shifted(o)
            total += product.sum(axis=(1, 2), dtype=np.int64)
        out[:, a] = total
    return out
