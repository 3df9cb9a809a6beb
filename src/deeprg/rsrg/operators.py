"""Interaction operators of the hypercubic Ising model (d = 2 and 3) for Monte Carlo renormalization group.

An operator is a **total lattice sum** ``S_a(s) = sum_x sum_{shape in a} prod_{o in shape} s(x + o)``
over all sites ``x`` of a periodic ``L_1 x ... x L_d`` lattice and over the distinct orientations
of one spin product (offsets ``o`` are d-tuples, periodic). Total sums, not per-site averages: a
per-site normalization would shift every MCRG exponent by ``-d``.

Each operator is generated from **one prototype shape** (:meth:`Operator.from_prototype`): its
shapes are the orbit of the prototype under the point group of the hypercubic lattice (all
``d! 2^d`` permutations of the axes combined with sign flips), deduplicated modulo translation
(canonical form: subtract the lexicographically smallest offset, sort). Every distinct shape is
counted once per site, so e.g. ``nn`` is the usual bond sum (``d N`` bonds). The shapes are stored
centred (the midpoint of their bounding box, rounded down, at the origin); a total lattice sum
does not depend on where a shape is anchored.

Square lattice (d = 2), Swendsen's operators; even (Z2-even products), in order:

==  ==================  ===============================  ======  ========================================
 #  name                prototype                        shapes  the shapes (modulo translation)
==  ==================  ===============================  ======  ========================================
 1  ``nn``              (0,0)(1,0)                            2  nearest neighbours
 2  ``nnn``             (0,0)(1,1)                            2  diagonal next-nearest, (1,1) and (1,-1)
 3  ``plaquette``       (0,0)(1,0)(0,1)(1,1)                  1  4 spins of a unit square
 4  ``third``           (0,0)(2,0)                            2  third neighbours (2,0)
 5  ``2-1``             (0,0)(2,1)                            4  (2,1), (2,-1), (1,2), (-1,2)
 6  ``diamond``         (1,0)(0,1)(-1,0)(0,-1)                1  the 4 neighbours of a site
 7  ``2-2``             (0,0)(2,2)                            2  (2,2), (2,-2)
==  ==================  ===============================  ======  ========================================

odd (Z2-odd products: the magnetization and 3-spin terms), in order:

==  ==================  ===============================  ======  ========================================
 #  name                prototype                        shapes  the shapes (modulo translation)
==  ==================  ===============================  ======  ========================================
 1  ``magnetization``   (0,0)                                 1  one spin
 2  ``corner3``         (0,0)(1,0)(0,1)                       4  the 4 triples of a unit square
 3  ``line3``           (-1,0)(0,0)(1,0)                      2  straight nn triples
 4  ``diagonal3``       (-1,-1)(0,0)(1,1)                     2  straight diagonal triples
==  ==================  ===============================  ======  ========================================

Simple cubic lattice (d = 3). Pawley, Swendsen, Wallace & Wilson, Phys. Rev. B 29, 4030 (1984)
measured seven even and six odd operators on this lattice, Baillie, Gupta, Hawick & Pawley,
Phys. Rev. B 45, 10438 (1992) 53 even and 46 odd (both counts as reported in the Fox et al.
"Parallel Computing Works" account of the latter, netlib.org/utk/lsi/pcwLSI/text/node44.html);
Ron, Brandt & Swendsen, Phys. Rev. E 95, 053305 (2017) revisit the same MCRG. Their exact
operator lists could not be confirmed from the sources at hand, so the set below follows the
choice of Pawley et al. in size and spirit (short pairs first, then the 4-spin plaquette and
tetrahedron; the magnetization and 3-spin products), with shapes that are the natural 3D
counterparts of the 2D ones. Even, in order:

==  ==================  ===============================  ======  ========================================
 #  name                prototype                        shapes  the shapes (modulo translation)
==  ==================  ===============================  ======  ========================================
 1  ``nn``              (0,0,0)(1,0,0)                        3  nearest neighbours
 2  ``nnn``             (0,0,0)(1,1,0)                        6  face diagonals
 3  ``1-1-1``           (0,0,0)(1,1,1)                        4  body diagonals
 4  ``2-0-0``           (0,0,0)(2,0,0)                        3  straight pairs at distance 2
 5  ``plaquette``       (0,0,0)(1,0,0)(0,1,0)(1,1,0)          3  unit square in each of the 3 planes
 6  ``2-1-0``           (0,0,0)(2,1,0)                       12  knight's-move pairs
 7  ``tetrahedron``     (0,0,0)(1,1,0)(1,0,1)(0,1,1)          2  the 2 regular tetrahedra of a unit cube
 8  ``2-2-0``           (0,0,0)(2,2,0)                        6  doubled face diagonals
==  ==================  ===============================  ======  ========================================

odd, in order:

==  ==================  ===============================  ======  ========================================
 #  name                prototype                        shapes  the shapes (modulo translation)
==  ==================  ===============================  ======  ========================================
 1  ``magnetization``   (0,0,0)                               1  one spin
 2  ``corner3``         (0,0,0)(1,0,0)(0,1,0)                12  the 4 triples of each of the 3 squares
 3  ``line3``           (-1,0,0)(0,0,0)(1,0,0)                3  straight nn triples
 4  ``diagonal3``       (-1,-1,0)(0,0,0)(1,1,0)               6  straight face-diagonal triples
 5  ``triangle3``       (0,0,0)(1,1,0)(1,0,1)                 8  equilateral face-diagonal triangles
                                                                 (the faces of the tetrahedra)
 6  ``body3``           (-1,-1,-1)(0,0,0)(1,1,1)              4  straight body-diagonal triples
==  ==================  ===============================  ======  ========================================

The most important operators come first because MCRG truncates to the first ``N_c`` of each
sector. :func:`operator_set` returns the set of a dimension (:class:`OperatorSet`). Every shape of
both sets spans at most two lattice spacings along any axis (``reach = 2``); MCRG asks for lattice
extents ``>= min_extent = 2 reach = 4``: on those no shape wraps onto itself (its spins stay
distinct) and no two operators share a shape, while on extent 3 e.g. the pair (2,0) becomes the
nearest-neighbour pair (-1,0). (At the extent 4 itself a few orientations of one operator
coincide, e.g. (2,1) and (2,-1); that only changes the weights within that operator.)
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

__all__ = ["EVEN_OPERATORS", "ODD_OPERATORS", "Operator", "OperatorSet", "operator_set", "operator_sums"]

Offset = tuple[int, ...]
Shape = tuple[Offset, ...]

#: Lattice sites (batch x volume) evaluated at once: 2 MB of bits as bool, an eighth of it packed.
_CHUNK_SITES = 1 << 21


def _canonical(shape: Shape) -> Shape:
    """``shape`` modulo translation: the lexicographically smallest offset moved to the origin, sorted."""
    low = min(shape)
    return tuple(sorted(tuple(c - m for c, m in zip(o, low)) for o in shape))


def _centred(shape: Shape) -> Shape:
    """``shape`` translated so that the midpoint of its bounding box (rounded down) is the origin."""
    centre = [(min(c) + max(c)) // 2 for c in zip(*shape)]
    return tuple(tuple(c - m for c, m in zip(o, centre)) for o in shape)


def _point_group(d: int) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """The ``d! 2^d`` elements ``(axes, signs)`` of the hypercubic point group: ``o -> (signs[i] o[axes[i]])_i``."""
    return [(axes, signs) for axes in itertools.permutations(range(d)) for signs in itertools.product((1, -1), repeat=d)]


def _orbit(prototype: Shape) -> tuple[Shape, ...]:
    """The distinct canonical images of ``prototype`` under the hypercubic point group, sorted."""
    d = len(prototype[0])
    images = {_canonical(tuple(tuple(s * o[a] for a, s in zip(axes, signs)) for o in prototype))
              for axes, signs in _point_group(d)}
    return tuple(sorted(images))


@dataclass(frozen=True)
class Operator:
    """``S = sum_x sum_{shape in shapes} prod_{o in shape} s(x + o)`` on a periodic lattice."""

    name: str
    shapes: tuple[Shape, ...]

    @classmethod
    def from_prototype(cls, name: str, prototype: Shape) -> Operator:
        """The operator of all distinct orientations of ``prototype`` (a tuple of d-dimensional
        offsets) under the hypercubic point group, modulo translation, each stored centred."""
        prototype = tuple(tuple(int(c) for c in o) for o in prototype)
        if not prototype or not prototype[0]:
            raise ValueError(f"a prototype needs at least one offset of dimension >= 1, got {prototype!r}")
        if len({len(o) for o in prototype}) != 1:
            raise ValueError(f"all offsets of a prototype must have the same dimension, got {prototype!r}")
        if len(set(prototype)) != len(prototype):
            raise ValueError(f"a prototype must not repeat an offset (s^2 = 1), got {prototype!r}")
        return cls(name, tuple(_centred(shape) for shape in _orbit(prototype)))

    @property
    def d(self) -> int:
        """Dimension of the offsets."""
        return len(self.shapes[0][0])

    @property
    def parity(self) -> int:
        """+1 for Z2-even products, -1 for odd ones."""
        return 1 if len(self.shapes[0]) % 2 == 0 else -1


def _span(shape: Shape) -> int:
    """Largest extent (max - min of one offset component) of ``shape``."""
    return max(max(c) - min(c) for c in zip(*shape))


@dataclass(frozen=True)
class OperatorSet:
    """The MCRG operators of one dimension: ``even`` then ``odd``, most important first."""

    d: int
    even: tuple[Operator, ...]
    odd: tuple[Operator, ...]

    @property
    def all(self) -> tuple[Operator, ...]:
        """The even then the odd operators (the columns of :func:`operator_sums`)."""
        return self.even + self.odd

    @property
    def reach(self) -> int:
        """How many lattice spacings the operators reach: the largest extent of any shape along an
        axis, i.e. the largest |offset component| of a shape written from one of its end spins."""
        return max(_span(shape) for op in self.all for shape in op.shapes)

    @property
    def min_extent(self) -> int:
        """``2 * reach``: the smallest lattice extent on which no shape wraps onto itself and no two
        operators share a shape (module docstring)."""
        return 2 * self.reach


def _operators(table: tuple[tuple[str, Shape], ...]) -> tuple[Operator, ...]:
    return tuple(Operator.from_prototype(name, prototype) for name, prototype in table)


_SETS = {
    2: OperatorSet(
        2,
        _operators((
            ("nn", ((0, 0), (1, 0))),
            ("nnn", ((0, 0), (1, 1))),
            ("plaquette", ((0, 0), (1, 0), (0, 1), (1, 1))),
            ("third", ((0, 0), (2, 0))),
            ("2-1", ((0, 0), (2, 1))),
            ("diamond", ((1, 0), (0, 1), (-1, 0), (0, -1))),
            ("2-2", ((0, 0), (2, 2))),
        )),
        _operators((
            ("magnetization", ((0, 0),)),
            ("corner3", ((0, 0), (1, 0), (0, 1))),
            ("line3", ((-1, 0), (0, 0), (1, 0))),
            ("diagonal3", ((-1, -1), (0, 0), (1, 1))),
        )),
    ),
    3: OperatorSet(
        3,
        _operators((
            ("nn", ((0, 0, 0), (1, 0, 0))),
            ("nnn", ((0, 0, 0), (1, 1, 0))),
            ("1-1-1", ((0, 0, 0), (1, 1, 1))),
            ("2-0-0", ((0, 0, 0), (2, 0, 0))),
            ("plaquette", ((0, 0, 0), (1, 0, 0), (0, 1, 0), (1, 1, 0))),
            ("2-1-0", ((0, 0, 0), (2, 1, 0))),
            ("tetrahedron", ((0, 0, 0), (1, 1, 0), (1, 0, 1), (0, 1, 1))),
            ("2-2-0", ((0, 0, 0), (2, 2, 0))),
        )),
        _operators((
            ("magnetization", ((0, 0, 0),)),
            ("corner3", ((0, 0, 0), (1, 0, 0), (0, 1, 0))),
            ("line3", ((-1, 0, 0), (0, 0, 0), (1, 0, 0))),
            ("diagonal3", ((-1, -1, 0), (0, 0, 0), (1, 1, 0))),
            ("triangle3", ((0, 0, 0), (1, 1, 0), (1, 0, 1))),
            ("body3", ((-1, -1, -1), (0, 0, 0), (1, 1, 1))),
        )),
    ),
}


def operator_set(d: int) -> OperatorSet:
    """The MCRG operators of the ``d``-dimensional hypercubic lattice (d = 2 or 3; module docstring)."""
    if isinstance(d, bool) or d not in _SETS:
        raise ValueError(f"MCRG operators are defined for d = 2 and 3, got d = {d!r}")
    return _SETS[d]


#: The square-lattice operators (``operator_set(2).even`` and ``.odd``).
EVEN_OPERATORS: tuple[Operator, ...] = _SETS[2].even
ODD_OPERATORS: tuple[Operator, ...] = _SETS[2].odd


def operator_sums(spins: np.ndarray, operators: tuple[Operator, ...] | None = None) -> np.ndarray:
    """Total lattice sums of ``operators`` for every configuration.

    Parameters
    ----------
    spins:
        ``(batch, L_1, ..., L_d)`` array of +-1 (any integer dtype; int8 in the package).
    operators:
        The operators to evaluate (offsets of dimension ``d``), default ``operator_set(d).all``
        (d = 2 or 3): the even then the odd ones.

    Returns
    -------
    ``(batch, len(operators))`` int64 array; ``out[:, a]`` is ``S_a`` of each configuration.

    Multi-spin coding: a spin is one bit (1 where ``s = -1``), so the product of a shape's spins is
    ``(-1)^(XOR of its bits)`` and a shape's lattice sum is ``N - 2 popcount(XOR)``. The bits of each
    row along the last axis are packed into unsigned words (one word per row up to 64 sites, whole
    64-bit words beyond), a shift along the last axis is a periodic rotation of those bits and a
    shift along the other axes a slice of the periodically padded words: every shape costs a few
    XORs and one popcount per word instead of a multiplication per site. Sub-batches of about
    ``2^21`` sites at a time.
    """
    s = np.asarray(spins)
    d = s.ndim - 1
    if operators is None:
        if d not in _SETS:
            raise ValueError(f"spins must have shape (batch, L_1, ..., L_d) with d = 2 or 3 for the default "
                             f"operators, got shape {s.shape}")
        operators = _SETS[d].all
    elif d < 1:
        raise ValueError(f"spins must have shape (batch, L_1, ..., L_d), got shape {s.shape}")
    for op in operators:
        if any(len(o) != d for shape in op.shapes for o in shape):
            raise ValueError(f"operator {op.name!r} has offsets of dimension {op.d}, but the spins of shape "
                             f"{s.shape} are {d}-dimensional")
    out = np.empty((s.shape[0], len(operators)), dtype=np.int64)
    step = max(1, _CHUNK_SITES // max(1, math.prod(s.shape[1:])))
    for start in range(0, s.shape[0], step):
        out[start : start + step] = _sums(s[start : start + step], operators)
    return out


#: The unsigned word holding a row of 1..64 bits, by its number of bytes.
_WORDS = {1: np.uint8, 2: np.uint16, 3: np.uint32, 4: np.uint32, 5: np.uint64, 6: np.uint64, 7: np.uint64,
          8: np.uint64}


def _shifted_rows(bits: np.ndarray, shifts: list[int]) -> dict[int, np.ndarray]:
    """``{c: words}``: the rows of ``bits`` (``(..., L)`` bool) shifted by ``c`` along the last axis,
    periodically (bit ``x`` of a row is ``bits[..., (x + c) mod L]``), packed little-endian into
    ``(..., W)`` unsigned words: one word of the smallest fitting width if ``L <= 64`` (shifts are
    rotations of the word), else ``W = ceil(L / 64)`` 64-bit words (each shift packed from a slice
    of the periodically padded row). Bits beyond ``L`` are 0."""
    L = bits.shape[-1]
    if L <= 64:
        word = _WORDS[-(-L // 8)]
        packed = np.packbits(bits, axis=-1, bitorder="little")
        width = np.dtype(word).itemsize
        if packed.shape[-1] < width:
            packed = np.pad(packed, [(0, 0)] * (packed.ndim - 1) + [(0, width - packed.shape[-1])])
        rows = np.ascontiguousarray(packed).view(np.dtype(word).newbyteorder("<"))  # bit x of a row: 2^x
        mask = word((1 << L) - 1)
        out = {}
        for c in shifts:
            k = c % L
            out[c] = rows if k == 0 else ((rows >> word(k)) | (rows << word(L - k))) & mask
        return out
    r = max(abs(c) for c in shifts)
    padded = np.pad(bits, [(0, 0)] * (bits.ndim - 1) + [(r, r)], mode="wrap")
    width = -(-L // 64) * 8
    out = {}
    for c in shifts:
        packed = np.packbits(padded[..., r + c : r + c + L], axis=-1, bitorder="little")
        packed = np.pad(packed, [(0, 0)] * (packed.ndim - 1) + [(0, width - packed.shape[-1])])
        out[c] = packed.view(np.uint64)
    return out


def _sums(s: np.ndarray, operators: tuple[Operator, ...]) -> np.ndarray:
    """:func:`operator_sums` of one sub-batch ``s`` (``(batch, L_1, ..., L_d)``, +-1)."""
    batch, extents = s.shape[0], s.shape[1:]
    lead = extents[:-1]
    r = max((abs(c) for op in operators for shape in op.shapes for o in shape for c in o[:-1]), default=0)
    bits = np.pad(s < 0, ((0, 0),) + ((r, r),) * len(lead) + ((0, 0),), mode="wrap")
    words = _shifted_rows(bits, sorted({o[-1] for op in operators for shape in op.shapes for o in shape}))

    def shifted(o: Offset) -> np.ndarray:
        return words[o[-1]][(slice(None),) + tuple(slice(r + c, r + c + n) for c, n in zip(o[:-1], lead))]

    some = next(iter(words.values()))
    shape_ = (batch, *lead, some.shape[-1])
    word_bits = 8 * some.dtype.itemsize
    xor = np.empty(shape_, dtype=some.dtype)
    count = np.empty(shape_, dtype=np.uint8)
    out = np.empty((batch, len(operators)), dtype=np.int64)
    n = math.prod(extents)
    for a, op in enumerate(operators):
        # popcounts of the shapes' products, word by word
        flips = np.zeros(shape_, dtype=np.uint16 if word_bits * len(op.shapes) < 1 << 16 else np.uint64)
        for shape in op.shapes:
            if len(shape) == 1:
                np.bitwise_count(shifted(shape[0]), out=count)
            else:
                np.bitwise_xor(shifted(shape[0]), shifted(shape[1]), out=xor)
                for o in shape[2:]:
                    xor ^= shifted(o)
                np.bitwise_count(xor, out=count)
            flips += count
        out[:, a] = len(op.shapes) * n - 2 * flips.reshape(batch, -1).sum(axis=1, dtype=np.int64)
    return out
