"""Update rules: one small class per Monte Carlo kernel of :mod:`deeprg.mc.kernels`.

A rule knows its numba kernel, the tables the kernel needs (bond or acceptance thresholds, the
neighbour table, the site order), the per-chain scratch buffers, and how many of its updates make
one sweep-equivalent (N spin updates), which sets its default burn-in. It holds no chain state
and no randomness: :class:`deeprg.mc.samplers.Sampler` owns the spins and the random streams of
all chains and drives any rule the same way (the split of NetKet's ``sampler/rules``).

Units of Monte Carlo time ("updates"): one Wolff cluster flip (:class:`WolffRule`), one full
Swendsen-Wang update (:class:`SwendsenWangRule`), one Metropolis sweep over all N sites
(:class:`MetropolisRule`).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np

from deeprg.lattice import Lattice
from deeprg.mc import kernels

__all__ = [
    "DEFAULT_BURN_IN_SWEEPS",
    "RULES",
    "MetropolisRule",
    "SwendsenWangRule",
    "UpdateRule",
    "WolffRule",
]

#: Default burn-in in sweep-equivalents (N spin updates): that many updates for ``"sw"`` and
#: ``"metropolis"``; for ``"wolff"`` as many cluster flips as flip ``DEFAULT_BURN_IN_SWEEPS * N``
#: sites in total at the measured mean cluster size.
DEFAULT_BURN_IN_SWEEPS = 500


class UpdateRule(ABC):
    """One kind of Markov-chain update of the Ising model ``H = -K sum_<ij> s_i s_j`` on
    ``lattice``.

    Attributes
    ----------
    name:
        The name :func:`deeprg.mc.samplers.make_sampler` knows the rule by.
    counts_cluster_sites:
        Whether :meth:`advance` returns the number of flipped sites (then a sampler reports the
        mean cluster size).
    lattice, K:
        The model; ``K = beta J > 0``.
    nbr:
        ``(N, 2d)`` int32 neighbour table of ``lattice`` (C-contiguous, as the kernels take it).
    """

    name: ClassVar[str]
    counts_cluster_sites: ClassVar[bool] = False

    def __init__(self, lattice: Lattice, K: float) -> None:
        self.lattice = lattice
        self.K = float(K)
        # Writable C-contiguous copy: numba compiles one specialization for it.
        self.nbr = np.array(lattice.neighbors, dtype=np.int32, order="C")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(lattice={self.lattice}, K={self.K!r})"

    @abstractmethod
    def new_scratch(self, n_chains: int) -> tuple[np.ndarray, ...]:
        """Scratch buffers of ``n_chains`` chains, each array ``(n_chains, ...)``; chain ``c``
        gets ``tuple(a[c] for a in scratch)`` in :meth:`advance`."""

    @abstractmethod
    def advance(
        self,
        spins: np.ndarray,
        state: np.ndarray,
        scratch: tuple[np.ndarray, ...],
        n_between: int,
        out_spins: np.ndarray,
        out_e: np.ndarray,
        out_m: np.ndarray,
    ) -> int:
        """One chain, in place: ``out_e.shape[0]`` times ``n_between`` updates then a measurement.

        ``spins``: ``(N,)`` int8 configuration; ``state``: ``(4,)`` uint64 random stream;
        ``scratch``: this chain's buffers; ``out_spins``: ``(n_save, N)`` int8 or ``(0, N)`` to
        skip saving configurations; ``out_e`` / ``out_m``: ``(n_save,)`` float64 energy
        ``E = -sum_<ij> s_i s_j`` and magnetization ``M = sum_i s_i``. Returns the number of
        flipped sites when :attr:`counts_cluster_sites`, else 0."""

    def burn_in_updates(self, updates: int, sites: float) -> int:
        """Updates per chain that :data:`DEFAULT_BURN_IN_SWEEPS` sweep-equivalents take, judged
        after ``updates`` updates per chain that flipped ``sites`` sites per chain (chain mean;
        ``0, 0.0`` before any). Here one update is one sweep."""
        return DEFAULT_BURN_IN_SWEEPS


class WolffRule(UpdateRule):
    """Wolff single-cluster flips (:func:`deeprg.mc.kernels.wolff_chain`); bond add probability
    ``1 - exp(-2K)``. One sweep-equivalent is ``N / <cluster size>`` flips."""

    name = "wolff"
    counts_cluster_sites = True

    def __init__(self, lattice: Lattice, K: float) -> None:
        super().__init__(lattice, K)
        self.threshold = kernels.probability_threshold(-math.expm1(-2.0 * self.K))

    def new_scratch(self, n_chains: int) -> tuple[np.ndarray, ...]:
        return (np.empty((n_chains, self.lattice.n_sites), dtype=np.int32),)  # cluster stack

    def advance(self, spins, state, scratch, n_between, out_spins, out_e, out_m) -> int:
        (stack,) = scratch
        return int(kernels.wolff_chain(spins, self.nbr, self.threshold, n_between, out_spins,
                                       out_e, out_m, state, stack))

    def burn_in_updates(self, updates: int, sites: float) -> int:
        """``DEFAULT_BURN_IN_SWEEPS`` flips before any (a first round), then as many flips as
        flip ``DEFAULT_BURN_IN_SWEEPS * N`` sites at the mean cluster size ``sites / updates``."""
        if updates == 0:
            return DEFAULT_BURN_IN_SWEEPS
        return math.ceil(DEFAULT_BURN_IN_SWEEPS * self.lattice.n_sites * updates / sites)


class SwendsenWangRule(UpdateRule):
    """Swendsen-Wang updates of all clusters (:func:`deeprg.mc.kernels.sw_chain`); bond
    probability ``1 - exp(-2K)``. One update is one sweep."""

    name = "sw"

    def __init__(self, lattice: Lattice, K: float) -> None:
        super().__init__(lattice, K)
        self.threshold = kernels.probability_threshold(-math.expm1(-2.0 * self.K))

    def new_scratch(self, n_chains: int) -> tuple[np.ndarray, ...]:
        n = self.lattice.n_sites
        return (np.empty((n_chains, n), dtype=np.int32),  # union-find parents
                np.empty((n_chains, n), dtype=np.int8))   # cluster flip decisions

    def advance(self, spins, state, scratch, n_between, out_spins, out_e, out_m) -> int:
        parent, decision = scratch
        kernels.sw_chain(spins, self.nbr, self.threshold, n_between, out_spins, out_e, out_m,
                         state, parent, decision)
        return 0


class MetropolisRule(UpdateRule):
    """Single-spin-flip Metropolis sweeps (:func:`deeprg.mc.kernels.metropolis_chain`):
    checkerboard order on even lattices, else sequential; zero-energy flips are accepted with
    probability 0.99 instead of 1, which makes the fixed-order sweep ergodic (see
    :func:`deeprg.mc.kernels.acceptance_probabilities`). One update is one sweep."""

    name = "metropolis"

    def __init__(self, lattice: Lattice, K: float) -> None:
        super().__init__(lattice, K)
        self.order = kernels.metropolis_order(lattice.shape)
        self.thresholds = kernels.acceptance_thresholds(self.K, 2 * lattice.d)

    def new_scratch(self, n_chains: int) -> tuple[np.ndarray, ...]:
        return ()

    def advance(self, spins, state, scratch, n_between, out_spins, out_e, out_m) -> int:
        kernels.metropolis_chain(spins, self.nbr, self.order, self.thresholds, n_between,
                                 out_spins, out_e, out_m, state)
        return 0


#: Rule class by name, in the order of :data:`deeprg.mc.samplers.SAMPLERS`.
RULES: dict[str, type[UpdateRule]] = {
    rule.name: rule for rule in (WolffRule, SwendsenWangRule, MetropolisRule)
}
