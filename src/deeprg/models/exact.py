"""Exact solutions of the Ising model ``H = -K sum_<ij> s_i s_j`` (conventions of
:mod:`deeprg.models.ising`; bonds counted as in :class:`deeprg.lattice.Lattice`).

* :func:`kaufman` - Kaufman's closed form (Phys. Rev. 76, 1232 (1949)) of the partition function of
  the periodic ``M x N`` square lattice, evaluated entirely in log space together with its first
  two derivatives in K (energy and specific heat), stable for every K > 0 and M, N in the
  thousands::

      Z = 1/2 (2 sinh 2K)^{MN/2} (Z_1 + Z_2 + Z_3 + Z_4),
      Z_1 = prod_{r=0}^{N-1} 2 cosh(M g_{2r+1} / 2),   Z_2 = prod 2 sinh(M g_{2r+1} / 2),
      Z_3 = prod_{r=0}^{N-1} 2 cosh(M g_{2r} / 2),     Z_4 = prod 2 sinh(M g_{2r} / 2),
      cosh g_k = cosh 2K coth 2K - cos(pi k / N)   (k >= 1),    g_0 = 2K + ln tanh K.

  ``g_0`` changes sign at K_c, so ``Z_4`` is negative in the ordered phase; it is carried with its
  sign. Only ``g_0`` can vanish, so its factor in ``Z_4`` is differentiated separately.
* :func:`onsager` - the infinite square lattice: free energy, energy, spontaneous magnetization.
* :func:`ising_chain` and :func:`chain_window_distribution` - the periodic 1D chain from its
  2x2 transfer matrix ``T = [[e^K, e^-K], [e^-K, e^K]]`` (eigenvalues ``2 cosh K``, ``2 sinh K``).

Per-site quantities divide by the number of sites; energies are in units of J (see
:mod:`deeprg.models.ising`): ``e = -(1/N) d ln Z/dK``, ``c = (K^2/N) d^2 ln Z/dK^2``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import integrate, special

from deeprg.models.ising import K_C

__all__ = [
    "ExactThermo",
    "OnsagerSolution",
    "chain_correlation",
    "chain_window_distribution",
    "ising_chain",
    "kaufman",
    "kaufman_energy_per_site",
    "kaufman_ln_z",
    "onsager",
]

# Above this value of sinh(2K) the gammas are evaluated through their logarithms.
_LARGE_SINH = 1e8


@dataclass(frozen=True)
class ExactThermo:
    """Exact thermodynamics of a finite or infinite system (per-site values; ``ln_z`` total)."""

    n_sites: int
    K: float
    ln_z: float
    free_energy_per_site: float
    energy_per_site: float
    specific_heat_per_site: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def _check_k(K: float) -> float:
    K = float(K)
    if not math.isfinite(K) or K <= 0:
        raise ValueError(f"K must be a finite number > 0, got {K!r}")
    return K


def _gammas(K: float, N: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``g_k`` and its first two K-derivatives for k = 0 .. 2N-1 (``g_0`` signed)."""
    u = 2.0 * K
    k = np.arange(1, 2 * N)
    theta = np.pi * k / N
    cs = _csch(u)
    if cs > 1.0 / _LARGE_SINH:
        s = math.sinh(u)
        # cosh g = 1 + delta with delta = (sinh u - 1)^2 / sinh u + 2 sin^2(theta/2) >= 0,
        # written so that it has no cancellation at K_c and small theta.
        delta = (s - 1.0) ** 2 / s + 2.0 * np.sin(theta / 2) ** 2
        sinh_g = np.sqrt(delta * (delta + 2.0))
        g = np.log1p(delta + sinh_g)
        c1 = 2.0 * math.cosh(u) * (s * s - 1.0) / (s * s)  # d/dK of cosh 2K coth 2K
        c2 = 4.0 * (s - 1.0 / s + 2.0 * math.cosh(u) ** 2 / s**3)
        g1 = c1 / sinh_g
        g2 = (c2 - (1.0 + delta) * g1**2) / sinh_g
    else:
        # Everything divided by x = cosh g ~ sinh u, which would overflow.
        denom = 1.0 + cs * cs - np.cos(theta) * cs  # x / sinh u
        ln_s = u + math.log(-math.expm1(-2.0 * u)) - math.log(2.0)
        inv_x = cs / denom
        sinh_over_x = np.sqrt((1.0 - inv_x) * (1.0 + inv_x))
        g = ln_s + np.log(denom) + np.log1p(sinh_over_x)
        g1 = 2.0 / math.tanh(u) * (1.0 - cs * cs) / denom / sinh_over_x
        c2_over_x = 4.0 * (1.0 - cs * cs + 2.0 * cs * cs / math.tanh(u) ** 2) / denom
        g2 = (c2_over_x - g1**2) / sinh_over_x
    g0 = 2.0 * K + math.log(math.tanh(K))
    g0_1 = 2.0 + 2.0 * cs
    g0_2 = -4.0 * cs / math.tanh(u)
    return (np.concatenate([[g0], g]), np.concatenate([[g0_1], g1]), np.concatenate([[g0_2], g2]))


def _csch(u: float) -> float:
    """1 / sinh(u) for u > 0 without overflow."""
    return 2.0 * math.exp(-u) / -math.expm1(-2.0 * u)


def _log_cosh_factors(a, a1, a2):
    """Sum over factors of ln(2 cosh a) and its first two derivatives (a, a1, a2 arrays)."""
    aa = np.abs(a)
    t = np.tanh(a)
    return (
        float(np.sum(aa + np.log1p(np.exp(-2.0 * aa)))),
        float(np.sum(t * a1)),
        float(np.sum((1.0 - t * t) * a1**2 + t * a2)),
    )


def _log_sinh_factors(a, a1, a2):
    """As :func:`_log_cosh_factors` for ln(2 sinh a), all a > 0."""
    coth = 1.0 / np.tanh(a)
    return (
        float(np.sum(a + np.log(-np.expm1(-2.0 * a)))),
        float(np.sum(coth * a1)),
        float(np.sum((1.0 - coth * coth) * a1**2 + coth * a2)),
    )


def kaufman(M: int, N: int, K: float) -> ExactThermo:
    """Exact ``ln Z``, free energy, energy and specific heat of the periodic ``M x N`` lattice.

    Parameters
    ----------
    M, N: extents (>= 2); the result is symmetric in them.
    K: coupling ``beta J`` > 0.
    """
    M, N = int(M), int(N)
    if M < 2 or N < 2:
        raise ValueError(f"lattice extents M, N must be >= 2, got M={M}, N={N}")
    K = _check_k(K)
    g, g1, g2 = _gammas(K, N)
    a, a1, a2 = 0.5 * M * g, 0.5 * M * g1, 0.5 * M * g2
    odd, even = slice(1, None, 2), slice(2, None, 2)

    # Each of Z_1..Z_3 is exp(lam) with d ln Z_i/dK = D, d^2 ln Z_i/dK^2 = D2.
    logs = [
        _log_cosh_factors(a[odd], a1[odd], a2[odd]),
        _log_sinh_factors(a[odd], a1[odd], a2[odd]),
        tuple(x + y for x, y in zip(_log_cosh_factors(a[even], a1[even], a2[even]),
                                    _log_cosh_factors(a[:1], a1[:1], a2[:1]))),
    ]
    # Z_4 = 2 sinh(a_0) * Q with Q = prod_{r>=1} 2 sinh(a_2r) > 0; a_0 may be zero or negative.
    lq, dq, dq2 = _log_sinh_factors(a[even], a1[even], a2[even])
    a0, a0_1, a0_2 = a[0], a1[0], a2[0]
    e = math.exp(-2.0 * abs(a0))
    s0 = math.copysign(-math.expm1(-2.0 * abs(a0)), a0)  # 2 sinh(a0) / e^{|a0|}
    c0 = 1.0 + e  # 2 cosh(a0) / e^{|a0|}
    lam4 = abs(a0) + lq

    # Sum of the four terms relative to the largest, then ln Z'' = <D2 + (D - mu)^2> with mu =
    # ln Z' (a weighted variance: the form S2/S - (S1/S)^2 would cancel catastrophically).
    lam_max = max(lam4, *(t[0] for t in logs))
    w = [math.exp(t[0] - lam_max) for t in logs]
    w4 = math.exp(lam4 - lam_max)
    total = math.fsum(w) + w4 * s0
    mu = (math.fsum(wi * t[1] for wi, t in zip(w, logs)) + w4 * (c0 * a0_1 + s0 * dq)) / total
    var = math.fsum(wi * (t[2] + (t[1] - mu) ** 2) for wi, t in zip(w, logs)) + w4 * (
        s0 * ((dq - mu) ** 2 + dq2 + a0_1**2) + c0 * a0_2 + 2.0 * c0 * a0_1 * (dq - mu)
    )
    n = M * N
    u = 2.0 * K
    ln_2sinh = u + math.log(-math.expm1(-2.0 * u))  # ln(2 sinh 2K)
    ln_z = -math.log(2.0) + 0.5 * n * ln_2sinh + lam_max + math.log(total)
    d_ln_z = n / math.tanh(u) + mu
    d2_ln_z = -2.0 * n * _csch(u) ** 2 + var / total
    return ExactThermo(
        n_sites=n,
        K=K,
        ln_z=float(ln_z),
        free_energy_per_site=float(-ln_z / n),
        energy_per_site=float(-d_ln_z / n),
        specific_heat_per_site=float(K * K * d2_ln_z / n),
    )


def kaufman_ln_z(M: int, N: int, K: float) -> float:
    """``ln Z`` of the periodic ``M x N`` lattice (see :func:`kaufman`)."""
    return kaufman(M, N, K).ln_z


def kaufman_energy_per_site(M: int, N: int, K: float) -> float:
    """Exact ``<E>/N`` of the periodic ``M x N`` lattice (units of J; see :func:`kaufman`)."""
    return kaufman(M, N, K).energy_per_site


@dataclass(frozen=True)
class OnsagerSolution:
    """Infinite square lattice: ``ln Z / N``, energy per site and spontaneous magnetization."""

    K: float
    ln_z_per_site: float
    free_energy_per_site: float
    energy_per_site: float
    spontaneous_magnetization: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def onsager(K: float) -> OnsagerSolution:
    """Onsager's solution of the infinite square lattice at coupling ``K``.

    ``ln Z/N = ln(2 cosh 2K) + (1/pi) int_0^{pi/2} ln[(1 + sqrt(1 - kappa^2 sin^2 t)) / 2] dt``,
    ``e = -coth 2K [1 + (2/pi)(2 tanh^2 2K - 1) K(kappa)]``, ``kappa = 2 sinh 2K / cosh^2 2K``,
    ``m_0 = (1 - sinh^-4 2K)^{1/8}`` for ``K > K_c`` (0 otherwise).
    """
    K = _check_k(K)
    u = 2.0 * K
    # kappa = 2 sinh u / cosh^2 u, written to stay finite for large u
    kappa = 2.0 * math.tanh(u) / math.cosh(u) if u < 700 else 0.0
    kappa2 = min(kappa * kappa, 1.0)

    def integrand(t: float) -> float:
        return math.log(0.5 * (1.0 + math.sqrt(1.0 - kappa2 * math.sin(t) ** 2)))

    integral, _ = integrate.quad(integrand, 0.0, 0.5 * math.pi, epsabs=1e-14, epsrel=1e-13, limit=200)
    ln_2cosh = u + math.log1p(math.exp(-2.0 * u))
    ln_z = ln_2cosh + integral / math.pi
    prefactor = 2.0 * math.tanh(u) ** 2 - 1.0
    # prefactor * K(kappa) -> 0 at K_c, where kappa -> 1 and K(kappa) diverges logarithmically
    elliptic = 0.0 if kappa2 >= 1.0 else prefactor * special.ellipk(kappa2)
    energy = -(1.0 / math.tanh(u)) * (1.0 + (2.0 / math.pi) * elliptic)
    m0 = (1.0 - _csch(u) ** 4) ** 0.125 if K > K_C else 0.0
    return OnsagerSolution(K, float(ln_z), float(-ln_z), float(energy), float(m0))


def ising_chain(N: int, K: float) -> ExactThermo:
    """Periodic Ising chain of ``N >= 2`` sites: ``Z = (2 cosh K)^N + (2 sinh K)^N``."""
    N = int(N)
    if N < 2:
        raise ValueError(f"chain length N must be >= 2, got N={N}")
    K = _check_k(K)
    t = math.tanh(K)
    tn = t**N
    ln_z = N * (K + math.log1p(math.exp(-2.0 * K))) + math.log1p(tn)
    # d ln Z/dK = N t + N t^{N-1} (1 - t^2) / (1 + t^N); second derivative by the same rule
    sech2 = 1.0 - t * t
    r = t ** (N - 1) * sech2 / (1.0 + tn)
    d1 = N * t + N * r
    # d/dK of r = r * [(N-1) sech^2/t - 2 t - N t^{N-1} sech^2 / (1 + t^N)]
    dr = r * ((N - 1) * sech2 / t - 2.0 * t - N * r)
    d2 = N * sech2 + N * dr
    return ExactThermo(N, K, ln_z, -ln_z / N, -d1 / N, K * K * d2 / N)


def chain_correlation(N: int, K: float, r: int | np.ndarray) -> np.ndarray:
    """``<s_0 s_r>`` on the periodic chain: ``(t^r + t^{N-r}) / (1 + t^N)``, ``t = tanh K``."""
    K = _check_k(K)
    r = np.asarray(r)
    if np.any((r < 0) | (r > N)):
        raise ValueError(f"distance r must lie in 0..N={N}")
    t = math.tanh(K)
    return (t**r + t ** (N - r)) / (1.0 + t**N)


def chain_window_distribution(N: int, K: float, w: int) -> np.ndarray:
    """Exact joint distribution of ``w`` consecutive spins of the periodic chain.

    Returns an array of shape ``(2,) * w`` indexed by ``(s_1 .. s_w)`` with index 0 for spin +1 and
    1 for spin -1; ``P(s) = prod_{i<w} T(s_i, s_{i+1}) (T^{N-w+1})(s_w, s_1) / Tr T^N``. Transfer
    matrices are scaled by ``1 / (2 cosh K)`` so that powers stay finite.
    """
    N, w = int(N), int(w)
    if not 1 <= w <= N:
        raise ValueError(f"window w must lie in 1..N={N}, got w={w}")
    K = _check_k(K)
    T = np.array([[math.exp(K), math.exp(-K)], [math.exp(-K), math.exp(K)]]) / (2.0 * math.cosh(K))
    closing = np.linalg.matrix_power(T, N - w + 1)  # closing[s_w, s_1]
    if w == 1:
        p = np.diagonal(closing).copy()
        return p / p.sum()
    joint = T
    for m in range(2, w):  # append s_{m+1} to a joint over (s_1 .. s_m)
        joint = joint[..., None] * T.reshape((1,) * (m - 1) + (2, 2))
    joint = joint * closing.T.reshape((2,) + (1,) * (w - 2) + (2,))
    return joint / joint.sum()
