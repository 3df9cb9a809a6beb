"""Monte Carlo renormalization group (Swendsen 1979): critical exponents from RG-transformed samples.

Conventions
-----------
* Level 0 is the data lattice (2D or 3D); level ``n`` is the result of ``n`` applications of the
  b = 2 transformation (``L / 2^n``). Operators ``S_a^n`` are the total lattice sums of the
  operator set of the lattice's dimension (:func:`deeprg.rsrg.operators.operator_set`) evaluated
  on level ``n``.
* Connected correlations ``D^{n,m}_ab = <S_a^n S_b^m> - <S_a^n><S_b^m>``.
* With ``H = sum_a K_a S_a`` (weight ``e^H``, Chung & Kao Eq. 1), the chain rule
  ``d<S_a^n>/dK_b^{n-1} = sum_c d<S_a^n>/dK_c^n dK_c^n/dK_b^{n-1}`` reads ``D^{n,n-1} = D^{n,n} T``,
  so the linearized RG matrix of step ``N_r`` (levels ``N_r`` and ``N_r - 1``) is::

      T^{(N_r)} = (D^{N_r,N_r})^{-1} D^{N_r,N_r-1},      restricted to the first N_c operators.

* Exponents: ``y = ln(lambda) / ln(b)``, ``b = 2``, with ``lambda`` the largest *real*
  eigenvalue of ``T`` (eigenvalues with ``|Im| <= 1e-9 |lambda|_max`` count as real); ``y_t``
  from the even operators, ``y_h`` from the odd ones. The even and odd sectors do not mix
  (their cross-correlations vanish by Z2 symmetry), so each uses its own operators only.
* Errors: block jackknife. The ``n`` configurations, in the order given, are cut into
  ``n_blocks`` contiguous blocks of ``n // n_blocks`` (the earliest ``n mod n_blocks`` are
  dropped, as in :func:`deeprg.mc.stats.jackknife`); blocks should be much longer than the
  autocorrelation time of the data. Every exponent is an :class:`~deeprg.mc.stats.Estimate` with
  the bias-corrected jackknife mean ``n_b y(all) - (n_b - 1) mean_j y(without j)`` and the
  jackknife error ``sqrt((n_b - 1)/n_b sum_j (y_j - mean y_j)^2)``.

Streaming: :class:`MCRGAccumulator` keeps, per jackknife block, only the count, the sums of the
operator vector of all levels and the sums of its outer products (a few thousand numbers),
so any number of configurations can pass through in chunks. The values are shifted by those of
the first configuration before accumulation (covariances are shift invariant) to avoid
cancellation.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from deeprg.mc.stats import Estimate
from deeprg.rsrg.operators import OperatorSet, operator_set, operator_sums
from deeprg.rsrg.transforms import RGTransform, check_levels, level_generators

__all__ = [
    "MCRGAccumulator",
    "MCRGResult",
    "REFERENCE_EXPONENTS",
    "check_mcrg",
    "check_mcrg_levels",
    "leading_exponent",
    "max_blocks",
    "mcrg",
    "measure",
    "minimum_configurations",
    "run_mcrg",
]

#: ln b for b = 2.
_LN_B = math.log(2.0)


#: Reference exponents of the Ising universality class by dimension, with their source: 2D exact
#: (Onsager; y_h = 2 - eta/2 with eta = 1/4); 3D conformal bootstrap (Kos, Poland,
#: Simmons-Duffin & Vichi, JHEP 08 (2016) 036: nu = 0.629971(4), Delta_sigma = 0.5181489(10), so
#: y_t = 1/nu and y_h = 3 - Delta_sigma).
REFERENCE_EXPONENTS = {
    2: {"y_t": 1.0, "y_h": 15 / 8, "source": "exact (Onsager)"},
    3: {"y_t": 1 / 0.629971, "y_h": 3 - 0.5181489, "source": "conformal bootstrap (Kos et al. 2016)"},
}

#: Fewest configurations per jackknife block.
_PER_BLOCK = 2


def _sectors(operators: OperatorSet) -> dict[str, slice]:
    """Positions of the even and the odd operators in the accumulated vectors (even first)."""
    n_even = len(operators.even)
    return {"even": slice(0, n_even), "odd": slice(n_even, n_even + len(operators.odd))}


def minimum_configurations(n_blocks: int, d: int = 2) -> int:
    """Fewest configurations MCRG accepts on a ``d``-dimensional lattice: 2 per jackknife block and
    10 per even operator."""
    return max(_PER_BLOCK * n_blocks, 10 * len(operator_set(d).even))


def max_blocks(n_configurations: int) -> int:
    """Most jackknife blocks ``n_configurations`` allow (2 configurations per block); MCRG also needs
    ``n_configurations >= minimum_configurations(2)``."""
    return int(n_configurations) // _PER_BLOCK


def leading_exponent(T: np.ndarray) -> float:
    """``ln(lambda) / ln 2`` for the largest real eigenvalue ``lambda`` of ``T``; ``nan`` if ``T``
    is not finite, has no real eigenvalue or ``lambda <= 0``."""
    if not np.all(np.isfinite(T)):
        return math.nan
    eig = np.linalg.eigvals(T)
    scale = max(float(np.abs(eig).max()), np.finfo(float).tiny)
    real = eig.real[np.abs(eig.imag) <= 1e-9 * scale]
    if real.size == 0 or real.max() <= 0:
        return math.nan
    return math.log(float(real.max())) / _LN_B


@dataclass(frozen=True)
class MCRGResult:
    """Exponents of one transformation.

    ``y_t[N_r - 1][N_c - 1]`` for ``N_r = 1 .. levels`` and ``N_c = 1 .. `` the number of even
    operators of the dimension ``d`` (7 in 2D); ``y_h[N_r - 1][N_c - 1]`` for the odd ones (4 in
    2D). ``n_configurations`` is the number used (a multiple of ``n_blocks``); ``seconds`` the
    wall time spent coarse-graining and measuring the levels >= 1 of this transformation."""

    transform: str
    levels: int
    n_configurations: int
    n_blocks: int
    y_t: list[list[Estimate]]
    y_h: list[list[Estimate]]
    seconds: float = math.nan
    d: int = 2

    def to_dict(self) -> dict:
        ops = operator_set(self.d)

        def table(rows: list[list[Estimate]]) -> list[list[dict]]:
            return [[{"mean": _finite(e.mean), "error": _finite(e.error)} for e in row] for row in rows]

        return {
            "transform": self.transform,
            "levels": self.levels,
            "n_configurations": self.n_configurations,
            "n_blocks": self.n_blocks,
            "d": self.d,
            "operators": {"even": [op.name for op in ops.even], "odd": [op.name for op in ops.odd]},
            "y_t": table(self.y_t),
            "y_h": table(self.y_h),
        }


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


class MCRGAccumulator:
    """Streaming per-block moments of the operators of levels ``0 .. levels``.

    Parameters
    ----------
    n_configurations:
        Total number of configurations that will be added (fixes the jackknife blocks).
    levels:
        Highest RG level ``N_r`` (>= 1).
    n_blocks:
        Jackknife blocks (>= 2).
    d:
        Dimension of the lattice (2 or 3): chooses the operators, :func:`operator_set`.
    """

    def __init__(self, n_configurations: int, levels: int, n_blocks: int = 32, d: int = 2) -> None:
        for name, value, low in (("n_blocks", n_blocks, 2), ("levels", levels, 1)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        self.operators = operator_set(d)
        self.d = int(d)
        self._sectors = _sectors(self.operators)
        need = minimum_configurations(n_blocks, d)
        if n_configurations < need:
            raise ValueError(f"MCRG with {n_blocks} jackknife blocks needs at least {need} configurations "
                             f"(2 per block, 10 per even operator), got {n_configurations}")
        self.n_configurations = int(n_configurations)
        self.levels = int(levels)
        self.n_blocks = int(n_blocks)
        self.block = self.n_configurations // self.n_blocks
        self._skip = self.n_configurations - self.n_blocks * self.block
        dim = (self.levels + 1) * len(self.operators.all)
        self._count = np.zeros(self.n_blocks, dtype=np.int64)
        self._first = np.zeros((self.n_blocks, dim))
        self._second = np.zeros((self.n_blocks, dim, dim))
        self._shift: np.ndarray | None = None
        self.n_seen = 0

    def add(self, values: np.ndarray) -> None:
        """Add ``(batch, levels + 1, n_operators)`` operator values (from :func:`measure`), in data
        order."""
        v = np.asarray(values)
        expected = (self.levels + 1, len(self.operators.all))
        if v.ndim != 3 or v.shape[1:] != expected:
            raise ValueError(f"values must have shape (batch, {expected[0]}, {expected[1]}), got {v.shape}")
        if self.n_seen + len(v) > self.n_configurations:
            raise ValueError(f"more than the announced {self.n_configurations} configurations were added")
        x = v.reshape(len(v), -1).astype(np.float64)
        if len(x) == 0:
            return
        if self._shift is None:
            self._shift = x[0].copy()
        x -= self._shift
        block = (np.arange(self.n_seen, self.n_seen + len(x)) - self._skip) // self.block
        self.n_seen += len(x)
        for b in np.unique(block[block >= 0]):
            rows = x[block == b]
            self._count[b] += len(rows)
            self._first[b] += rows.sum(axis=0)
            self._second[b] += rows.T @ rows

    def covariance(self, leave_out: int | None = None) -> np.ndarray:
        """Covariance matrix of the stacked operator vector (level-major, ``(levels + 1) *
        n_operators`` square), over all blocks or all but block ``leave_out``."""
        keep = np.ones(self.n_blocks, dtype=bool)
        if leave_out is not None:
            keep[leave_out] = False
        n = self._count[keep].sum()
        mean = self._first[keep].sum(axis=0) / n
        return self._second[keep].sum(axis=0) / n - np.outer(mean, mean)

    def rg_matrix(self, n_r: int, sector: str, n_c: int, leave_out: int | None = None) -> np.ndarray:
        """``T = (D^{n,n})^{-1} D^{n,n-1}`` for step ``n = n_r`` on the first ``n_c`` operators of
        ``sector`` (``"even"`` or ``"odd"``); all ``nan`` if ``D^{n,n}`` is singular."""
        return _rg_matrix(self.covariance(leave_out), n_r, self._sectors, sector, n_c)

    def result(self, transform: str, seconds: float = math.nan) -> MCRGResult:
        """Jackknife exponents for every ``N_r`` and ``N_c``; needs all configurations added."""
        if self.n_seen != self.n_configurations:
            raise ValueError(f"{self.n_seen} of the announced {self.n_configurations} configurations were added")
        covs = [self.covariance()] + [self.covariance(j) for j in range(self.n_blocks)]
        tables = {}
        for sector, sl in self._sectors.items():
            n_ops = sl.stop - sl.start
            y = np.array([[[leading_exponent(_rg_matrix(c, n_r, self._sectors, sector, n_c)) for n_c in range(1, n_ops + 1)]
                           for n_r in range(1, self.levels + 1)] for c in covs])
            tables[sector] = [[self._estimate(y[:, r, k]) for k in range(n_ops)] for r in range(self.levels)]
        return MCRGResult(transform, self.levels, int(self._count.sum()), self.n_blocks,
                          tables["even"], tables["odd"], seconds, self.d)

    def _estimate(self, y: np.ndarray) -> Estimate:
        full, leave_out = y[0], y[1:]
        nb = self.n_blocks
        mean_lo = leave_out.mean()
        error = math.sqrt((nb - 1) / nb * np.sum((leave_out - mean_lo) ** 2))
        return Estimate(nb * full - (nb - 1) * mean_lo, error, math.nan, math.nan, int(self._count.sum()))


def _rg_matrix(cov: np.ndarray, n_r: int, sectors: dict[str, slice], sector: str, n_c: int) -> np.ndarray:
    n_ops = sectors["odd"].stop
    sl = sectors[sector]
    if not 1 <= n_c <= sl.stop - sl.start:
        raise ValueError(f"n_c must be between 1 and {sl.stop - sl.start} for the {sector} sector, got {n_c}")
    ops = np.arange(sl.start, sl.start + n_c)
    fine, coarse = (n_r - 1) * n_ops + ops, n_r * n_ops + ops
    A = cov[np.ix_(coarse, coarse)]
    B = cov[np.ix_(coarse, fine)]
    try:
        return np.linalg.solve(A, B)
    except np.linalg.LinAlgError:
        return np.full_like(B, np.nan)


def check_mcrg_levels(shape: tuple[int, ...], transforms: Sequence[RGTransform], levels: int) -> None:
    """Raise ``ValueError`` unless every transformation can act ``levels`` times on ``shape`` and
    the last level has extents >= the operators' ``min_extent`` (4: they reach two lattice
    spacings); the message gives the allowed range of
    ``levels`` and why one more level is refused."""
    if not transforms:
        raise ValueError("no RG transformation given")
    if isinstance(levels, bool) or not isinstance(levels, (int, np.integer)) or levels < 1:
        raise ValueError(f"levels must be an integer >= 1, got {levels!r}")
    reason = _refusal(shape, transforms, levels)
    if reason:
        most = 0  # at most log2(extent) rounds: check_levels refuses more halvings than that
        while not _refusal(shape, transforms, most + 1):
            most += 1
        where = (f"on a {'x'.join(str(int(s)) for s in shape)} lattice with "
                 + ("this transformation" if len(transforms) == 1 else "these transformations"))
        if not most:
            raise ValueError(f"no MCRG level is possible {where}: {reason}")
        raise ValueError(f"levels must be between 1 and {most} for MCRG {where}, got {levels}: {reason}")


def _refusal(shape: tuple[int, ...], transforms: Sequence[RGTransform], levels: int) -> str:
    """Why ``levels`` MCRG levels are impossible, or ``""``."""
    try:
        for t in transforms:
            last = check_levels(shape, t, levels)[-1]
    except ValueError as err:
        return str(err)
    least = operator_set(len(shape)).min_extent
    if min(last) < least:
        return (f"levels = {levels} leaves a {'x'.join(map(str, last))} lattice; MCRG operators need extents "
                f">= {least} at the last level")
    return ""


def check_mcrg(shape: tuple[int, ...], transforms: Sequence[RGTransform], levels: int,
               n_configurations: int, n_blocks: int) -> None:
    """Everything :func:`run_mcrg` checks before any work (:func:`check_mcrg_levels` and
    :func:`minimum_configurations`); raises ``ValueError`` naming the problem."""
    if len(shape) not in (2, 3):
        raise ValueError(f"MCRG needs a 2D or 3D lattice, got shape {tuple(shape)}")
    check_mcrg_levels(shape, transforms, levels)
    MCRGAccumulator(n_configurations, levels, n_blocks, len(shape))


def measure(spins: np.ndarray, transform: RGTransform, generators: Sequence[np.random.Generator],
            level0: np.ndarray | None = None) -> np.ndarray:
    """Operator sums at levels ``0 .. len(generators)``: ``(batch, levels + 1, n_operators)``
    int64 (the operator set of the spins' dimension). ``level0`` (``operator_sums(spins)``) may be
    passed to share it between transformations."""
    values = [operator_sums(spins) if level0 is None else level0]
    s = spins
    for generator in generators:
        s = transform.transform(s, generator)
        values.append(operator_sums(s))
    return np.stack(values, axis=1)


def run_mcrg(
    chunks: Iterable[np.ndarray],
    shape: tuple[int, ...],
    transforms: Sequence[RGTransform],
    n_configurations: int,
    levels: int,
    seed: int = 0,
    n_blocks: int = 32,
    on_chunk: Callable[[int], None] | None = None,
) -> list[MCRGResult]:
    """MCRG of several transformations on one stream of configurations.

    ``chunks`` yields ``(batch, *shape)`` int8 spins of a 2D or 3D lattice ``shape``,
    ``n_configurations`` in all, in data order (blocks for the jackknife follow it). Level-0 operators are computed once
    per chunk and shared. Every transformation draws level ``n`` from its own copy of
    ``level_generators(seed, levels)[n - 1]`` (common random numbers across transformations), so
    results depend on the seed and the data only, not on the chunking. ``on_chunk(batch)`` is
    called after each chunk. Returns one :class:`MCRGResult` per transformation.
    """
    check_mcrg(shape, transforms, levels, n_configurations, n_blocks)
    accumulators = [MCRGAccumulator(n_configurations, levels, n_blocks, len(shape)) for _ in transforms]
    generators = [level_generators(seed, levels) for _ in transforms]
    seconds = [0.0] * len(transforms)
    for chunk in chunks:
        spins = np.asarray(chunk)
        if spins.shape[1:] != tuple(shape):
            raise ValueError(f"chunk of shape {spins.shape} does not hold configurations of lattice {tuple(shape)}")
        level0 = operator_sums(spins)
        for i, (t, acc, gens) in enumerate(zip(transforms, accumulators, generators)):
            t0 = time.perf_counter()
            acc.add(measure(spins, t, gens, level0))
            seconds[i] += time.perf_counter() - t0
        if on_chunk is not None:
            on_chunk(len(spins))
    return [acc.result(t.name, s) for t, acc, s in zip(transforms, accumulators, seconds)]


def mcrg(
    spins: np.ndarray,
    transforms: Sequence[RGTransform],
    levels: int,
    seed: int = 0,
    n_blocks: int = 32,
    chunk: int = 4096,
    on_chunk: Callable[[int], None] | None = None,
) -> list[MCRGResult]:
    """:func:`run_mcrg` over an in-memory ``(n, *shape)`` array (2D or 3D), ``chunk``
    configurations at a time."""
    s = np.asarray(spins)
    if s.ndim not in (3, 4):
        raise ValueError(f"spins must have shape (n, L0, L1) or (n, L0, L1, L2), got shape {s.shape}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    chunks = (s[i : i + chunk] for i in range(0, len(s), chunk))
    return run_mcrg(chunks, s.shape[1:], transforms, len(s), levels, seed, n_blocks, on_chunk)
