"""Reference values of Ising observables to compare samplers against (the exact lines of plots).

:func:`ising_reference` gives, for the periodic Ising model ``H = -K sum_<ij> s_i s_j`` on a
lattice:

* ``structure_factor``: the uniform structure factor ``E[(sum_i s_i)^2] / N^2``, exact by
  enumeration for ``N <= 16``, otherwise from Wolff Monte Carlo with an error bar;
* ``energy_per_site``: ``E[-sum_<ij> s_i s_j] / N``, exact (Kaufman in 2D, the transfer matrix in
  1D, enumeration for ``N <= 16``), otherwise from the same Monte Carlo run.

Exact values come as :class:`~deeprg.mc.stats.Estimate` with ``error = 0``.
"""

from __future__ import annotations

import math

from deeprg.lattice import Lattice
from deeprg.mc.samplers import make_sampler
from deeprg.mc.stats import Estimate, estimate
from deeprg.models.enumeration import Enumeration
from deeprg.models.exact import exact_solution

__all__ = ["ising_reference"]

_ENUMERATE_UP_TO = 16


def _exact(value: float) -> Estimate:
    return Estimate(value, 0.0, math.nan, math.nan, 0)


def ising_reference(lattice: Lattice, K: float, n_samples: int = 20_000, seed: int = 0) -> dict[str, Estimate]:
    """``{"structure_factor": Estimate, "energy_per_site": Estimate}`` at coupling ``K``."""
    n = lattice.n_sites
    if n <= _ENUMERATE_UP_TO:
        enum = Enumeration(lattice, K)
        return {"structure_factor": _exact(enum.mean(lambda s: s.reshape(len(s), -1).sum(1) ** 2.0) / n**2),
                "energy_per_site": _exact(-enum.mean(lattice.bond_sum) / n)}
    run = make_sampler("wolff", lattice, K, seed=seed, n_chains=2).run(n_samples)
    out = {"structure_factor": estimate((run.series["magnetization"] / n) ** 2),
           "energy_per_site": estimate(run.series["energy"] / n)}
    exact = exact_solution(lattice, K)
    if exact is not None:
        out["energy_per_site"] = _exact(exact.energy_per_site)
    return out
