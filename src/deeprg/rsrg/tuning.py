"""One transformation parameter, tuned separately for the even and the odd MCRG exponents.

Ron, Brandt & Swendsen (PRE 95, 053305 (2017)) found that the block-spin transformation whose
exponents converge fastest with the number of RG steps is not the same for the thermal (even)
and the magnetic (odd) sector, and tuned one parameter of the transformation separately for each.
This module does the same for any one-parameter family (in deeprg: the learned RBM filter plus
``alpha`` times the block's total spin, ``RBMProjector(w, block_weight=alpha)``), with their
criterion of convergence, which needs no knowledge of the answer:

    gap(alpha) = y(N_r = 2, N_c) - y(N_r = 1, N_c),     N_c = all operators of the sector,

and per sector the ``alpha`` of the grid with the smallest ``|gap|`` is chosen; the exponents of
that sector are then read at ``alpha``. Every candidate is measured on the same configurations
(common random numbers, :func:`deeprg.rsrg.mcrg.run_mcrg`), so differences between candidates are
much more precise than the exponents themselves. The error quoted for a gap,
``sqrt(err_1^2 + err_2^2)``, ignores the (positive) correlation of the two levels' estimates and
so overstates it.

The choice is only as good as the grid and the statistics: a gap whose error is comparable to the
differences between candidates chooses at random among them (``SectorChoice.resolved`` says so).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from deeprg.mc.stats import Estimate
from deeprg.rsrg.mcrg import MCRGResult

__all__ = ["SectorChoice", "SectorTuning", "tune_sectors"]

_KEYS = {"even": "y_t", "odd": "y_h"}


@dataclass(frozen=True)
class SectorChoice:
    """The parameter chosen for one sector (``"even"``: y_t, ``"odd"``: y_h).

    ``gaps[k]`` is ``y(N_r = 2) - y(N_r = 1)`` at ``N_c = n_c`` for ``parameters[k]``, with the
    error ``sqrt(err_1^2 + err_2^2)``; ``index`` is the smallest finite ``|gap|`` (0 if no gap is
    finite). ``resolved`` is False when no gap is finite or when the chosen gap and the
    runner-up's differ by less than their combined error."""

    sector: str
    n_c: int
    parameters: tuple[float, ...]
    gaps: tuple[Estimate, ...]
    index: int

    @property
    def parameter(self) -> float:
        return self.parameters[self.index]

    @property
    def resolved(self) -> bool:
        if not math.isfinite(self.gaps[self.index].mean):
            return False
        finite = sorted((g for g in self.gaps if math.isfinite(g.mean)), key=lambda g: abs(g.mean))
        if len(finite) < 2:
            return True
        best, second = finite[0], finite[1]
        return abs(second.mean) - abs(best.mean) > math.hypot(best.error, second.error)

    def to_dict(self) -> dict:
        return {"sector": self.sector, "n_c": self.n_c, "parameters": list(self.parameters),
                "gaps": [{"mean": g.mean, "error": g.error} for g in self.gaps],
                "chosen": self.parameter, "resolved": self.resolved}


@dataclass(frozen=True)
class SectorTuning:
    """Per-sector choices and the exponents read at them: ``y_t`` from the even choice's result,
    ``y_h`` from the odd one's (tables indexed ``[N_r - 1][N_c - 1]`` as in :class:`MCRGResult`)."""

    even: SectorChoice
    odd: SectorChoice
    y_t: list[list[Estimate]]
    y_h: list[list[Estimate]]

    def to_dict(self) -> dict:
        def table(rows: list[list[Estimate]]) -> list[list[dict]]:
            return [[{"mean": e.mean, "error": e.error} for e in row] for row in rows]

        return {"even": self.even.to_dict(), "odd": self.odd.to_dict(), "y_t": table(self.y_t), "y_h": table(self.y_h)}


def tune_sectors(parameters: Sequence[float], results: Sequence[MCRGResult]) -> SectorTuning:
    """Choose, per sector, the parameter whose exponent changes least from ``N_r = 1`` to
    ``N_r = 2`` at ``N_c`` = all operators of the sector.

    Parameters
    ----------
    parameters:
        The candidates' parameter values (at least 2), in the order of ``results``.
    results:
        One :class:`MCRGResult` per candidate with ``levels >= 2``, measured on the same
        configurations.
    """
    params = tuple(float(p) for p in parameters)
    if len(params) < 2:
        raise ValueError(f"sector tuning needs at least 2 candidate parameters, got {len(params)}")
    if len(results) != len(params):
        raise ValueError(f"{len(results)} MCRG results for {len(params)} parameters")
    if any(r.levels < 2 for r in results):
        raise ValueError("sector tuning compares N_r = 1 and N_r = 2: every MCRG result needs levels >= 2")
    choices = {}
    for sector, key in _KEYS.items():
        n_c = len(getattr(results[0], key)[0])
        gaps = []
        for r in results:
            one, two = getattr(r, key)[0][n_c - 1], getattr(r, key)[1][n_c - 1]
            gap = two.mean - one.mean
            gaps.append(Estimate(gap, math.hypot(one.error, two.error), math.nan, math.nan, one.n_samples))
        finite = [k for k, g in enumerate(gaps) if math.isfinite(g.mean)]
        index = min(finite, key=lambda k: abs(gaps[k].mean)) if finite else 0  # none finite: unresolved
        choices[sector] = SectorChoice(sector, n_c, params, tuple(gaps), index)
    return SectorTuning(choices["even"], choices["odd"], results[choices["even"].index].y_t,
                        results[choices["odd"].index].y_h)
