"""Periodic hypercubic lattices.

A :class:`Lattice` is an ``L_0 x L_1 x ... x L_{d-1}`` periodic grid (d = 1, 2, 3; rectangular
allowed). Sites are numbered in row-major (C) order of ``shape``, so a field of shape
``(batch, *shape)`` reshaped to ``(batch, n_sites)`` is indexed by these site numbers.

Bond convention (used by every model and exact solution in the package): each site ``i`` owns
one bond to its neighbour ``i + e_mu`` in every direction ``mu``, so there are exactly
``d * n_sites`` bonds. For an extent of 2 the two bonds between the same pair of sites are both
kept (a 2-site ring has 2 bonds), which is the convention of Kaufman's finite-lattice solution.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

__all__ = ["Lattice"]


@dataclass(frozen=True)
class Lattice:
    """A periodic hypercubic lattice.

    Parameters
    ----------
    shape:
        Extent in each direction, ``(L,)``, ``(M, N)`` or ``(L, L, L)``; every extent >= 2.
    """

    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        shape = tuple(int(s) for s in self.shape)
        if not 1 <= len(shape) <= 3:
            raise ValueError(f"lattice dimension d must be 1, 2 or 3, got d={len(shape)}")
        if any(s < 2 for s in shape):
            raise ValueError(f"lattice extents must be >= 2, got shape={shape}")
        object.__setattr__(self, "shape", shape)

    def require(self, what: str, *, dims: tuple[int, ...] = (1, 2, 3), square: bool = False,
                power_of_two: bool = False, even: bool = False) -> Lattice:
        """Return ``self`` if it suits ``what`` (e.g. ``"the flow"``), else ``ValueError`` naming
        the first requirement it fails: dimension in ``dims``; all extents equal (``square``);
        ``L`` a power of two (``power_of_two``); even extents (``even``). The one place where the
        methods check the lattices they accept."""
        shape = "x".join(map(str, self.shape))
        if self.d not in dims:
            allowed = " or ".join(f"{d}D" for d in dims)
            raise ValueError(f"{what} needs a {allowed} lattice, got the {self.d}D lattice {shape}")
        if square and len(set(self.shape)) > 1:
            raise ValueError(f"{what} needs a square L^d lattice, got {shape}")
        if power_of_two and any(s & (s - 1) for s in self.shape):
            raise ValueError(f"{what} needs each extent to be a power of two >= 2, got {shape}")
        if even and any(s % 2 for s in self.shape):
            raise ValueError(f"{what} needs a lattice of even extents, got {shape}")
        return self

    @classmethod
    def square(cls, L: int, d: int = 2) -> Lattice:
        """The ``L^d`` hypercubic lattice."""
        return cls((int(L),) * int(d))

    @property
    def d(self) -> int:
        """Spatial dimension."""
        return len(self.shape)

    @property
    def n_sites(self) -> int:
        return int(np.prod(self.shape))

    @property
    def n_bonds(self) -> int:
        return self.d * self.n_sites

    @cached_property
    def _coords(self) -> np.ndarray:
        """(n_sites, d) integer coordinates of every site."""
        return np.stack(np.unravel_index(np.arange(self.n_sites), self.shape), axis=1)

    def _shifted(self, axis: int, step: int) -> np.ndarray:
        """Site index of ``i + step * e_axis`` for every site ``i``, shape (n_sites,)."""
        c = self._coords.copy()
        c[:, axis] = (c[:, axis] + step) % self.shape[axis]
        return np.ravel_multi_index(tuple(c.T), self.shape).astype(np.int32)

    @cached_property
    def neighbors(self) -> np.ndarray:
        """(n_sites, 2d) int32 table: column ``2 mu`` is ``i + e_mu``, column ``2 mu + 1`` is
        ``i - e_mu``. For an extent of 2 both columns of that direction name the same site."""
        cols = []
        for mu in range(self.d):
            cols += [self._shifted(mu, +1), self._shifted(mu, -1)]
        table = np.stack(cols, axis=1)
        table.flags.writeable = False
        return table

    @cached_property
    def bonds(self) -> np.ndarray:
        """(d * n_sites, 2) int32 array of bonds ``(i, i + e_mu)``, ordered by direction then site."""
        i = np.arange(self.n_sites, dtype=np.int32)
        b = np.concatenate([np.stack([i, self._shifted(mu, +1)], axis=1) for mu in range(self.d)])
        b.flags.writeable = False
        return b

    def adjacency(self) -> np.ndarray:
        """(n_sites, n_sites) symmetric matrix ``A`` with ``A_ij`` = number of bonds joining i, j,
        so that ``sum_<ij> s_i s_j = s^T A s / 2``."""
        a = np.zeros((self.n_sites, self.n_sites))
        np.add.at(a, (self.bonds[:, 0], self.bonds[:, 1]), 1.0)
        return a + a.T

    def coupling_matrix(self, K: float) -> np.ndarray:
        """``K * A``: the matrix with ``-H = s^T (K A) s / 2`` for ``H = -K sum_<ij> s_i s_j``."""
        return float(K) * self.adjacency()

    def bond_sum(self, spins: np.ndarray) -> np.ndarray:
        """``sum_<ij> s_i s_j`` for spins of shape ``(batch, *shape)`` (or ``shape``); int64."""
        s = np.asarray(spins)
        flat = s.reshape(s.shape[: s.ndim - self.d] + (self.n_sites,)).astype(np.int64)
        return np.sum(flat[..., self.bonds[:, 0]] * flat[..., self.bonds[:, 1]], axis=-1)

    # ---- b = 2 coarse-graining -----------------------------------------------------------
    def can_block(self) -> bool:
        """Whether every extent is even, so that 2^d blocks tile the lattice."""
        return all(s % 2 == 0 for s in self.shape)

    def coarse(self) -> Lattice:
        """The lattice of 2^d blocks (every extent halved)."""
        self._require_blockable()
        return Lattice(tuple(s // 2 for s in self.shape))

    @cached_property
    def blocks(self) -> np.ndarray:
        """(n_sites / 2^d, 2^d) int32 array: row ``J`` lists the fine sites of coarse site ``J``
        (coarse sites in row-major order of :meth:`coarse`), fine sites in row-major order of their
        offsets in ``{0, 1}^d``. Block ``J`` has its corner at ``2 * coords(J)``."""
        self._require_blockable()
        coarse_shape = tuple(s // 2 for s in self.shape)
        cc = np.stack(np.unravel_index(np.arange(int(np.prod(coarse_shape))), coarse_shape), axis=1)
        offs = np.stack(np.unravel_index(np.arange(2**self.d), (2,) * self.d), axis=1)
        fine = 2 * cc[:, None, :] + offs[None, :, :]
        out = np.ravel_multi_index(tuple(np.moveaxis(fine, -1, 0)), self.shape).astype(np.int32)
        out.flags.writeable = False
        return out

    def _require_blockable(self) -> None:
        if not self.can_block():
            raise ValueError(f"2^d blocking needs even extents, got shape={self.shape}")

    def __str__(self) -> str:
        return "x".join(str(s) for s in self.shape)
