"""The nearest-neighbour Ising model on periodic hypercubic lattices.

Sign convention, used everywhere in deeprg::

    H(s) = -K sum_<ij> s_i s_j,      K = beta * J,      ln p(s) = -H(s) - ln Z.

Bonds are those of :class:`deeprg.lattice.Lattice` (``d * N`` of them). "Energy" reported by the
package is in units of J: ``E(s) = -sum_<ij> s_i s_j``, so ``H = K * E`` and
``<E> = -d ln Z / dK``; the specific heat per site is ``K^2 Var(E) / N = (K^2 / N) d^2 ln Z / dK^2``.
Spins are ``int8`` +-1 arrays of shape ``(batch, *lattice.shape)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from deeprg.lattice import Lattice

__all__ = ["K_C", "K_C_3D", "IsingModel", "critical_coupling", "is_critical", "parse_coupling", "magnetization"]

#: Critical coupling of the square-lattice Ising model, ln(1 + sqrt 2) / 2.
K_C = 0.5 * math.log1p(math.sqrt(2.0))

#: Critical coupling of the simple-cubic Ising model, 0.221654626(5): Ferrenberg, Xu & Landau,
#: Phys. Rev. E 97, 043301 (2018).
K_C_3D = 0.221654626


def critical_coupling(d: int) -> float:
    """What ``'critical'`` means on a ``d``-dimensional hypercubic lattice: :data:`K_C_3D` for
    ``d = 3``, :data:`K_C` (square lattice) for ``d = 2`` and, for want of a critical point, for the
    1D chain too."""
    return K_C_3D if d == 3 else K_C


def parse_coupling(value: str | float, name: str = "beta", d: int = 2) -> float:
    """``'critical'`` -> :func:`critical_coupling` of dimension ``d``; otherwise a finite float > 0,
    else ``ValueError`` naming ``name``."""
    if is_critical(value):
        return critical_coupling(d)
    try:
        k = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be 'critical' or a finite number > 0, got {value!r}") from None
    if not math.isfinite(k) or k <= 0:
        raise ValueError(f"{name} must be 'critical' or a finite number > 0, got {value!r}")
    return k


def is_critical(value: str | float) -> bool:
    """Whether ``value`` is one of the spellings of ``'critical'``."""
    return isinstance(value, str) and value.strip().lower() in {"critical", "kc", "k_c"}


def magnetization(spins: np.ndarray, d: int) -> np.ndarray:
    """Total magnetization ``sum_i s_i`` of each configuration; spins ``(batch, *shape)``."""
    s = np.asarray(spins)
    return s.reshape(s.shape[: s.ndim - d] + (-1,)).sum(axis=-1, dtype=np.int64)


@dataclass(frozen=True)
class IsingModel:
    """Ising model ``H = -K sum_<ij> s_i s_j`` on ``lattice``."""

    lattice: Lattice
    K: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "K", parse_coupling(self.K, "K"))

    def energy(self, spins: np.ndarray) -> np.ndarray:
        """``E(s) = -sum_<ij> s_i s_j`` (units of J), shape ``(batch,)``."""
        return -self.lattice.bond_sum(spins)

    def log_prob_unnormalized(self, spins: np.ndarray) -> np.ndarray:
        """``-H(s) = K sum_<ij> s_i s_j``, shape ``(batch,)``."""
        return self.K * self.lattice.bond_sum(spins)

    def magnetization(self, spins: np.ndarray) -> np.ndarray:
        """Total magnetization ``M = sum_i s_i``, shape ``(batch,)``."""
        return magnetization(spins, self.lattice.d)
