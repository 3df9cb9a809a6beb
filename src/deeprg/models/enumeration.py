"""Brute-force enumeration of the Ising model on tiny lattices: the package's test oracle.

Every one of the ``2^N`` configurations is listed, so ``ln Z`` and the exact mean of any
observable are exact up to float64 rounding. Sign convention as in :mod:`deeprg.models.ising`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from scipy.special import logsumexp

from deeprg.lattice import Lattice

__all__ = ["MAX_ENUMERATION_SITES", "Enumeration", "all_configurations"]

#: Largest lattice (in sites) that enumeration accepts: 2^20 configurations.
MAX_ENUMERATION_SITES = 20


def all_configurations(lattice: Lattice) -> np.ndarray:
    """All ``2^N`` spin configurations, int8 +-1, shape ``(2^N, *lattice.shape)``.

    Configuration ``c`` has spin ``+1`` at site ``i`` where bit ``i`` of ``c`` is 0, so the index
    of a configuration is ``sum_i [s_i = -1] 2^i`` (see :func:`Enumeration.index_of`).
    """
    n = lattice.n_sites
    if n > MAX_ENUMERATION_SITES:
        raise ValueError(f"enumeration needs n_sites <= {MAX_ENUMERATION_SITES}, got {n}")
    c = np.arange(2**n, dtype=np.int64)[:, None]
    bits = (c >> np.arange(n, dtype=np.int64)[None, :]) & 1
    return (1 - 2 * bits).astype(np.int8).reshape((2**n,) + lattice.shape)


@dataclass(frozen=True)
class Enumeration:
    """Exact Boltzmann distribution of ``H = -K sum_<ij> s_i s_j`` on a tiny ``lattice``."""

    lattice: Lattice
    K: float

    @cached_property
    def configurations(self) -> np.ndarray:
        """``(2^N, *shape)`` int8, ordered as in :func:`all_configurations`."""
        return all_configurations(self.lattice)

    @cached_property
    def log_weights(self) -> np.ndarray:
        """``-H(s) = K sum_<ij> s_i s_j`` of every configuration, shape ``(2^N,)``."""
        return self.K * self.lattice.bond_sum(self.configurations).astype(np.float64)

    @cached_property
    def ln_z(self) -> float:
        return float(logsumexp(self.log_weights))

    @cached_property
    def probabilities(self) -> np.ndarray:
        """Exact probability of every configuration, shape ``(2^N,)``, sums to 1."""
        return np.exp(self.log_weights - self.ln_z)

    def mean(self, observable: Callable[[np.ndarray], np.ndarray]) -> float:
        """Exact ``<O>`` of an observable mapping ``(batch, *shape)`` spins to ``(batch,)``."""
        return float(np.dot(self.probabilities, np.asarray(observable(self.configurations), float)))

    def index_of(self, spins: np.ndarray) -> np.ndarray:
        """Index into :attr:`configurations` of each configuration in ``(batch, *shape)`` spins."""
        s = np.asarray(spins).reshape(-1, self.lattice.n_sites)
        return ((s < 0).astype(np.int64) << np.arange(self.lattice.n_sites, dtype=np.int64)).sum(1)
