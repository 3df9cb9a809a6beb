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
so any number of configurations can pass through in chunks. Operator sums are integers, so these
moments are accumulated exactly, in int64 (a bound on every partial sum, kept from the values
seen, refuses a block whose moments could overflow, :class:`MomentOverflow`); the covariances are
formed only at the end, exactly in Python integers, ``(n S2 - S1 S1^T) / n^2``, and rounded once to
float64. So they do not depend on the order in which configurations were added, on the chunking,
or on how many accumulators (processes) shared the data: :meth:`MCRGAccumulator.merge` and
:meth:`MCRGAccumulator.reduce` add per-block moments exactly. (Non-integer values, e.g. synthetic
tests, are accumulated in float64, shifted by the first configuration's values.)

Random numbers and several processes: the transformations draw from fixed streams tied to
*global* positions in the data. Configuration ``i`` (its index in the full data, in data order)
belongs to stream chunk ``g = i // STREAM_CHUNK``; at level ``n`` every configuration of chunk
``g`` is transformed with the generator of ``stream_generators(seed, levels, g)[n - 1]``
(``SeedSequence(seed, spawn_key=(n - 1, g))``), consumed in data order within the chunk. The
majority rule draws one uniform per tied block (a number that depends on the data and, above
level 1, on earlier draws), the RBM projector one per coarse site, decimation none; since the
draws per configuration are not fixed, a stream cannot be advanced past configurations not
transformed here, so streams restart at fixed global positions instead. Under ``torchrun`` each
process transforms its contiguous share of whole stream chunks (:func:`configuration_share`)
and the per-block integer moments are summed exactly across processes, so the moments, the
covariances and every exponent are bit-identical for any number of processes and any chunking.
Every transformation uses the same streams (common random numbers across transformations).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from deeprg.distributed import World, current
from deeprg.mc.stats import Estimate
from deeprg.rsrg.operators import OperatorSet, operator_set, operator_sums
from deeprg.rsrg.transforms import RGTransform, check_levels, stream_generators

__all__ = [
    "STREAM_CHUNK",
    "MCRGAccumulator",
    "MCRGResult",
    "MomentOverflow",
    "REFERENCE_EXPONENTS",
    "check_mcrg",
    "check_mcrg_levels",
    "configuration_share",
    "leading_exponent",
    "max_blocks",
    "mcrg",
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

#: Configurations per random stream of the transformations (module docstring). Fixed: the random
#: numbers, hence the results, depend on it; they do not depend on the chunking or the processes.
STREAM_CHUNK = 256

_INT64_MAX = int(np.iinfo(np.int64).max)

#: float64 holds every integer of magnitude below this exactly.
_FLOAT_EXACT = 2**53

#: Largest magnitude whose square fits in int64.
_SQRT_INT64_MAX = math.isqrt(_INT64_MAX)


class MomentOverflow(ValueError):
    """The exact int64 moments of a jackknife block would overflow: use more blocks."""


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
        Total number of configurations of the data (fixes the jackknife blocks).
    levels:
        Highest RG level ``N_r`` (>= 1).
    n_blocks:
        Jackknife blocks (>= 2).
    d:
        Dimension of the lattice (2 or 3): chooses the operators, :func:`operator_set`.
    start:
        Global index (in the data) of the first configuration this accumulator is given: a part
        of the data from ``start`` on can be accumulated here and the parts combined with
        :meth:`merge` or, one part per process, :meth:`reduce`.

    Integer values (operator sums, :func:`~deeprg.rsrg.operators.operator_sums`) are accumulated
    exactly in int64 (see the module docstring); the first :meth:`add` decides between that and
    float64 (non-integer values, which :meth:`merge` and :meth:`reduce` refuse).
    """

    def __init__(self, n_configurations: int, levels: int, n_blocks: int = 32, d: int = 2, start: int = 0) -> None:
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
        if isinstance(start, bool) or not isinstance(start, (int, np.integer)) or not 0 <= start <= n_configurations:
            raise ValueError(f"start must be an integer in [0, {n_configurations}], got {start!r}")
        self.n_configurations = int(n_configurations)
        self.levels = int(levels)
        self.n_blocks = int(n_blocks)
        self.block = self.n_configurations // self.n_blocks
        self._skip = self.n_configurations - self.n_blocks * self.block
        self._dim = (self.levels + 1) * len(self.operators.all)
        self._count = np.zeros(self.n_blocks, dtype=np.int64)
        self._exact: bool | None = None  # integer (exact) or float moments, fixed by the first add
        self._first: np.ndarray | None = None
        self._second: np.ndarray | None = None
        #: per block, sum over its configurations of max_k |x_k|^2 (Python ints): bounds every
        #: partial sum of the int64 moments.
        self._bound = [0] * self.n_blocks
        self._shift: np.ndarray | None = None
        self._next = int(start)
        self._ranges: list[tuple[int, int]] = []  # configurations added, [start, stop) in global order
        self.n_seen = 0

    def _allocate(self, exact: bool) -> None:
        self._exact = exact
        dtype = np.int64 if exact else np.float64
        self._first = np.zeros((self.n_blocks, self._dim), dtype=dtype)
        self._second = np.zeros((self.n_blocks, self._dim, self._dim), dtype=dtype)

    def _cover(self, ranges: list[tuple[int, int]]) -> None:
        """Record configurations ``[a, b)`` as added; refuses any that were added already."""
        merged = sorted(self._ranges + [r for r in ranges if r[1] > r[0]])
        for (a0, b0), (a1, b1) in zip(merged, merged[1:]):
            if a1 < b0:
                raise ValueError(f"configurations {a1}..{min(b0, b1) - 1} were added twice")
        joined: list[tuple[int, int]] = []
        for a, b in merged:
            if joined and joined[-1][1] == a:
                joined[-1] = (joined[-1][0], b)
            else:
                joined.append((a, b))
        self._ranges = joined
        self.n_seen = sum(b - a for a, b in joined)

    def add(self, values: np.ndarray) -> None:
        """Add ``(batch, levels + 1, n_operators)`` operator values (levels 0 .. levels of each
        configuration), in data order, continuing from ``start`` (or from the last configuration
        added)."""
        v = np.asarray(values)
        expected = (self.levels + 1, len(self.operators.all))
        if v.ndim != 3 or v.shape[1:] != expected:
            raise ValueError(f"values must have shape (batch, {expected[0]}, {expected[1]}), got {v.shape}")
        if self._next + len(v) > self.n_configurations:
            raise ValueError(f"more than the announced {self.n_configurations} configurations were added")
        if len(v) == 0:
            return
        exact = v.dtype.kind in "iub"
        if self._exact is None:
            self._allocate(exact)
        elif self._exact and not exact:
            raise ValueError(f"values must be integers (operator sums) like those added before, got dtype {v.dtype}")
        position = self._next
        block = (np.arange(position, position + len(v)) - self._skip) // self.block
        x = v.reshape(len(v), -1)
        if self._exact:
            if (v.dtype.kind == "u" and int(x.max()) > _INT64_MAX) or int(x.min()) < -_INT64_MAX:
                raise MomentOverflow(f"operator values of magnitude {max(abs(int(x.min())), int(x.max()))} do not fit "
                                     "in int64")
            self._add_exact(x.astype(np.int64), block)
        else:
            self._add_float(x.astype(np.float64), block)
        self._cover([(position, position + len(v))])
        self._next += len(v)

    def _add_exact(self, x: np.ndarray, block: np.ndarray) -> None:
        """Add int64 rows to their blocks; all blocks' bounds are checked before any changes."""
        magnitude = np.abs(x).max(axis=1)
        updates = []
        for b in np.unique(block[block >= 0]):
            rows, m = x[block == b], magnitude[block == b]
            if int(m.max()) <= _SQRT_INT64_MAX:
                squares = sum((m * m).tolist())
            else:
                squares = sum(int(a) ** 2 for a in m.tolist())
            bound = self._bound[b] + squares
            if bound > _INT64_MAX:
                raise MomentOverflow(self._overflow(int(b), int(self._count[b]) + len(rows), bound, int(m.max())))
            updates.append((b, rows, squares, bound))
        for b, rows, squares, bound in updates:
            self._count[b] += len(rows)
            self._first[b] += rows.sum(axis=0)  # every partial sum is at most `bound` in magnitude
            self._second[b] += _gram(rows, squares)
            self._bound[b] = bound

    def _overflow(self, b: int, count: int, bound: int, largest: int | None = None) -> str:
        mean_square = bound / max(count, 1)
        need = min(max_blocks(self.n_configurations), math.ceil(2 * self.n_configurations * mean_square / _INT64_MAX))
        values = f"operator values up to {largest}, " if largest is not None else ""
        return (f"the exact (int64) MCRG moments of jackknife block {b} would overflow: its {count} configurations "
                f"have {values}a sum of squares up to {float(bound):.3g} > 2^63 - 1; use more jackknife blocks "
                f"(n_blocks / --blocks, at least about {max(need, self.n_blocks + 1)}) so that each holds fewer "
                "configurations")

    def _add_float(self, x: np.ndarray, block: np.ndarray) -> None:
        if self._shift is None:
            self._shift = x[0].copy()
        x = x - self._shift
        for b in np.unique(block[block >= 0]):
            rows = x[block == b]
            self._count[b] += len(rows)
            self._first[b] += rows.sum(axis=0)
            self._second[b] += rows.T @ rows

    def merge(self, other: MCRGAccumulator) -> None:
        """Add the moments of ``other``, an accumulator of the same data (same ``n_configurations``,
        ``levels``, ``n_blocks``, ``d``) that was given other configurations: exact, so the
        result is bit-identical to one accumulator given all of them, in any order of merging."""
        if not isinstance(other, MCRGAccumulator):
            raise ValueError(f"can only merge an MCRGAccumulator, got {type(other).__name__}")
        mine = (self.n_configurations, self.levels, self.n_blocks, self.d)
        theirs = (other.n_configurations, other.levels, other.n_blocks, other.d)
        if mine != theirs:
            raise ValueError(f"cannot merge accumulators of different data or settings (n_configurations, levels, "
                             f"n_blocks, d): {mine} and {theirs}")
        if other._exact is None:
            return
        if self._exact is None:
            self._allocate(other._exact)
        if not (self._exact and other._exact):
            raise ValueError("only accumulators of integer operator values (exact moments) can be merged")
        bounds = self._combined_bounds([self._bound, other._bound])
        self._cover(other._ranges)  # refuses configurations given to both, before any change
        self._bound = bounds
        self._count = self._count + other._count
        self._first = self._first + other._first
        self._second = self._second + other._second

    def _combined_bounds(self, parts) -> list[int]:
        """Per-block sums of the bounds of several accumulators (Python ints); refuses a block
        whose combined moments could overflow int64."""
        totals = [sum(int(part[b]) for part in parts) for b in range(self.n_blocks)]
        for b, bound in enumerate(totals):
            if bound > _INT64_MAX:
                raise MomentOverflow(self._overflow(b, self.block, bound))
        return totals

    def reduce(self, world: World | None = None) -> None:
        """Sum the moments of every process's accumulator (each given its own configurations,
        e.g. its :func:`configuration_share`) exactly, with an int64 all-reduce; afterwards every
        process holds the moments of all of them. A collective: every process must call it.
        No-op on one process."""
        world = current() if world is None else world
        if not world.distributed:
            return
        if self._exact is None:
            self._allocate(True)
        if world.any(not self._exact):
            raise ValueError("only accumulators of integer operator values (exact moments) can be reduced")
        bounds = world.all_gather_rows(np.array([self._bound], dtype=np.int64))  # each <= 2^63 - 1
        ranges = world.all_gather_rows(np.array(self._ranges, dtype=np.int64).reshape(-1, 2))
        totals = self._combined_bounds(list(bounds))  # the same on every process
        self._ranges = []
        self._cover([(int(a), int(b)) for a, b in ranges])
        packed = np.concatenate([self._count, self._first.ravel(), self._second.ravel()])
        total = world.all_sum_int(packed)
        n, dim = self.n_blocks, self._dim
        self._bound = totals
        self._count = total[:n]
        self._first = total[n : n + n * dim].reshape(n, dim)
        self._second = total[n + n * dim :].reshape(n, dim, dim)

    def _totals(self, keep: np.ndarray):
        """Count and first and second moments of the blocks ``keep``: Python-integer object
        arrays (exact) for integer values, float64 otherwise."""
        n = int(self._count[keep].sum())
        if self._exact:
            return n, self._first[keep].astype(object).sum(axis=0), self._second[keep].astype(object).sum(axis=0)
        return n, self._first[keep].sum(axis=0), self._second[keep].sum(axis=0)

    def covariance(self, leave_out: int | None = None) -> np.ndarray:
        """Covariance matrix of the stacked operator vector (level-major, ``(levels + 1) *
        n_operators`` square), over all blocks or all but block ``leave_out``: for integer values
        the exact ``(n S2 - S1 S1^T) / n^2`` rounded once to float64."""
        keep = np.ones(self.n_blocks, dtype=bool)
        if leave_out is not None:
            keep[leave_out] = False
        return _covariance(*self._totals(keep), self._exact)

    def rg_matrix(self, n_r: int, sector: str, n_c: int, leave_out: int | None = None) -> np.ndarray:
        """``T = (D^{n,n})^{-1} D^{n,n-1}`` for step ``n = n_r`` on the first ``n_c`` operators of
        ``sector`` (``"even"`` or ``"odd"``); all ``nan`` if ``D^{n,n}`` is singular."""
        return _rg_matrix(self.covariance(leave_out), n_r, self._sectors, sector, n_c)

    def result(self, transform: str, seconds: float = math.nan) -> MCRGResult:
        """Jackknife exponents for every ``N_r`` and ``N_c``; needs all configurations added (here,
        or merged / reduced from other accumulators)."""
        if self.n_seen != self.n_configurations:
            raise ValueError(f"{self.n_seen} of the announced {self.n_configurations} configurations were added")
        n, first, second = self._totals(np.ones(self.n_blocks, dtype=bool))
        covs = [_covariance(n, first, second, self._exact)]
        for j in range(self.n_blocks):  # leave-one-block-out totals: the total minus block j
            if self._exact:
                f, q = first - self._first[j].astype(object), second - self._second[j].astype(object)
            else:
                f, q = first - self._first[j], second - self._second[j]
            covs.append(_covariance(n - int(self._count[j]), f, q, self._exact))
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


def _gram(x: np.ndarray, bound: int) -> np.ndarray:
    """``x.T @ x`` of int64 rows, exactly, where ``bound = sum_i max_k x_ik^2 <= 2^63 - 1`` bounds
    every partial sum: through float64 BLAS when ``bound < 2^53`` (every product and partial sum
    is then an integer float64 holds exactly, in any order of addition), else in int64."""
    if bound < _FLOAT_EXACT:
        f = x.astype(np.float64)
        return (f.T @ f).astype(np.int64)
    return x.T @ x


def _covariance(n: int, first: np.ndarray, second: np.ndarray, exact: bool) -> np.ndarray:
    """``second / n - outer(mean, mean)`` from the count and the sums: exact rational arithmetic
    on Python integers (one correctly rounded division per entry) when ``exact``."""
    if n <= 0:
        return np.full(second.shape, np.nan)
    if exact:
        numerator = n * second - np.outer(first, first)
        denominator = n * n
        return np.array([[a / denominator for a in row] for row in numerator], dtype=np.float64)
    mean = first / n
    return second / n - np.outer(mean, mean)


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


def configuration_share(n_configurations: int, world: World | None = None) -> slice:
    """The configurations process ``world.rank`` (default: :func:`deeprg.distributed.current`)
    transforms: its contiguous share (:meth:`~deeprg.distributed.World.share`) of the whole stream
    chunks of :data:`STREAM_CHUNK` configurations, so that every stream is consumed by one process
    from its start. All configurations on one process; a share may be empty."""
    w = current() if world is None else world
    n = int(n_configurations)
    share = w.share(-(-n // STREAM_CHUNK))
    return slice(min(n, share.start * STREAM_CHUNK), min(n, share.stop * STREAM_CHUNK))


class _Streams:
    """A transformation's generators of the stream chunk being transformed, one per level; chunks
    must be entered at their first configuration and then followed in data order."""

    def __init__(self, seed: int, levels: int) -> None:
        self.seed, self.levels = seed, levels
        self.index, self.generators = -1, None

    def at(self, position: int) -> list[np.random.Generator]:
        index = position // STREAM_CHUNK
        if index != self.index:
            if position % STREAM_CHUNK:
                raise ValueError(f"configuration {position} is not the first of its stream chunk of {STREAM_CHUNK}: a "
                                 "process must start at a multiple of STREAM_CHUNK (see configuration_share)")
            self.index, self.generators = index, stream_generators(self.seed, self.levels, index)
        return self.generators


def _measure_at(spins: np.ndarray, position: int, transform: RGTransform, streams: _Streams,
                level0: np.ndarray) -> np.ndarray:
    """Operator sums of configurations ``position ..`` of the data at levels ``0 .. levels``:
    ``(batch, levels + 1, n_operators)`` int64 (the operator set of the spins' dimension; ``level0``
    is ``operator_sums(spins)``). Each stream chunk's part is transformed with that chunk's
    generators, one per level; each level's operators are summed over the whole batch at once."""
    parts, generators, i = [], [], 0
    while i < len(spins):
        j = min(len(spins), (position + i) // STREAM_CHUNK * STREAM_CHUNK + STREAM_CHUNK - position)
        parts.append(spins[i:j])
        generators.append(streams.at(position + i))
        i = j
    values = [level0]
    for level in range(streams.levels):
        parts = [transform.transform(part, g[level]) for part, g in zip(parts, generators)]
        values.append(operator_sums(parts[0] if len(parts) == 1 else np.concatenate(parts)))
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
    world: World | None = None,
) -> list[MCRGResult]:
    """MCRG of several transformations on one stream of configurations.

    The data are ``n_configurations`` configurations of a 2D or 3D lattice ``shape`` in data order
    (blocks for the jackknife follow it). ``chunks`` yields ``(batch, *shape)`` int8 spins: all of
    them in order on one process; under ``torchrun`` (``world``, default
    :func:`deeprg.distributed.current`) those of this process's :func:`configuration_share`, in
    order, and every process must call this function (the moments are summed across processes).
    Level-0 operators are computed once per chunk and shared. The random numbers of configuration
    ``i`` at level ``n`` come from stream chunk ``i // STREAM_CHUNK`` (module docstring), the same
    for every transformation (common random numbers), so results depend on the seed and the data
    only, not on the chunking or the number of processes. ``on_chunk(batch)`` is called after each
    chunk. Returns one :class:`MCRGResult` per transformation, on every process; its ``seconds``
    are summed over the processes.
    """
    world = current() if world is None else world
    check_mcrg(shape, transforms, levels, n_configurations, n_blocks)
    share = configuration_share(n_configurations, world)
    accumulators = [MCRGAccumulator(n_configurations, levels, n_blocks, len(shape), start=share.start)
                    for _ in transforms]
    streams = [_Streams(seed, levels) for _ in transforms]
    seconds = [0.0] * len(transforms)
    position = share.start
    mine = f" (this process's share: configurations {share.start}..{share.stop - 1})" if world.distributed else ""
    for chunk in chunks:
        spins = np.asarray(chunk)
        if spins.shape[1:] != tuple(shape):
            raise ValueError(f"chunk of shape {spins.shape} does not hold configurations of lattice {tuple(shape)}")
        if position + len(spins) > share.stop:
            raise ValueError(f"more than the announced {n_configurations} configurations were given{mine}")
        level0 = operator_sums(spins)
        for i, (t, acc, st) in enumerate(zip(transforms, accumulators, streams)):
            t0 = time.perf_counter()
            acc.add(_measure_at(spins, position, t, st, level0))
            seconds[i] += time.perf_counter() - t0
        position += len(spins)
        if on_chunk is not None:
            on_chunk(len(spins))
    if position != share.stop:
        raise ValueError(f"{position - share.start} of the announced {share.stop - share.start} configurations "
                         f"were given{mine}")
    for acc in accumulators:
        acc.reduce(world)
    seconds = world.all_sum(seconds).tolist()
    return [acc.result(t.name, s) for t, acc, s in zip(transforms, accumulators, seconds)]


def mcrg(
    spins: np.ndarray,
    transforms: Sequence[RGTransform],
    levels: int,
    seed: int = 0,
    n_blocks: int = 32,
    chunk: int = 4096,
    on_chunk: Callable[[int], None] | None = None,
    world: World | None = None,
) -> list[MCRGResult]:
    """:func:`run_mcrg` over an in-memory ``(n, *shape)`` array (2D or 3D, all the data),
    ``chunk`` configurations at a time; under ``torchrun`` each process transforms its
    :func:`configuration_share` of it."""
    s = np.asarray(spins)
    if s.ndim not in (3, 4):
        raise ValueError(f"spins must have shape (n, L0, L1) or (n, L0, L1, L2), got shape {s.shape}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    world = current() if world is None else world
    local = s[configuration_share(len(s), world)]
    chunks = (local[i : i + chunk] for i in range(0, len(local), chunk))
    return run_mcrg(chunks, s.shape[1:], transforms, len(s), levels, seed, n_blocks, on_chunk, world)
