"""Exact solutions of the Ising model ``H = -K sum_<ij> s_i s_j`` (conventions of
:mod:`deeprg.models.ising`; bonds counted as in :class:`deeprg.lattice.Lattice`).

* :func:`exact_solution` - the one place that decides which exact solution fits a lattice: the
  periodic 1D chain (transfer matrix), the 2D torus (Kaufman), else ``None`` (3D).
* :func:`kaufman` - Kaufman's closed form (Phys. Rev. 76, 1232 (1949)) of the partition function of
  the periodic ``M x N`` square lattice, evaluated in log space together with its first two
  derivatives in K (energy and specific heat). Every quantity is accurate to ~1e-14 relative for
  every float K > 0 (1e-300 .. 1e300; values below ~1e-300 are absolute) and M, N in the
  thousands: the product below is used for ``tanh K > 0.12`` and ``exp(-2K) > 0.15``; beyond, where
  it cancels catastrophically (energy ~ -2K at small K, specific heat ~ exp(-8K) at large K),
  exact high-temperature series in ``t = tanh K`` and low-temperature series in ``u = exp(-2K)``
  of the equivalent four-Pfaffian form, with the finite-size (winding) terms kept exactly (see
  ``_SERIES_ORDER``)::

      Z = 1/2 (2 sinh 2K)^{MN/2} (Z_1 + Z_2 + Z_3 + Z_4),
      Z_1 = prod_{r=0}^{N-1} 2 cosh(M g_{2r+1} / 2),   Z_2 = prod 2 sinh(M g_{2r+1} / 2),
      Z_3 = prod_{r=0}^{N-1} 2 cosh(M g_{2r} / 2),     Z_4 = prod 2 sinh(M g_{2r} / 2),
      cosh g_k = cosh 2K coth 2K - cos(pi k / N)   (k >= 1),    g_0 = 2K + ln tanh K.

  ``g_0`` changes sign at K_c, so ``Z_4`` is negative in the ordered phase; it is carried with its
  sign. Only ``g_0`` can vanish, so its factor in ``Z_4`` is differentiated separately.
* :func:`onsager` - the infinite square lattice: free energy, energy, spontaneous magnetization
  (the same series in the tails, so equally accurate over the whole range of K).
* :func:`ising_chain` and :func:`chain_window_distribution` - the periodic 1D chain from its
  2x2 transfer matrix ``T = [[e^K, e^-K], [e^-K, e^K]]`` (eigenvalues ``2 cosh K``, ``2 sinh K``);
  above K = 1 written in ``u = exp(-2K)`` so that the specific heat keeps its relative accuracy.

Only ``ln Z ~ 2 K M N`` (or ``N K``) overflowing a float is refused, with a ``ValueError``.

Per-site quantities divide by the number of sites; energies are in units of J (see
:mod:`deeprg.models.ising`): ``e = -(1/N) d ln Z/dK``, ``c = (K^2/N) d^2 ln Z/dK^2``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass
from fractions import Fraction

import numpy as np
from scipy import integrate, special

from deeprg.lattice import Lattice
from deeprg.models.ising import K_C

__all__ = [
    "ExactThermo",
    "OnsagerSolution",
    "chain_correlation",
    "chain_window_distribution",
    "exact_solution",
    "ising_chain",
    "kaufman",
    "kaufman_energy_per_site",
    "kaufman_ln_z",
    "onsager",
]

# Above this value of sinh(2K) the gammas are evaluated through their logarithms.
_LARGE_SINH = 1e8
_FLOAT_MAX = float(np.finfo(float).max)


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


# ---- the two tails: exact power series in v = tanh K (high T) or v = exp(-2K) (low T) ----------
#
# The torus partition function is also (Kasteleyn; equivalent to Kaufman's product)
#     Z = 2^{MN} cosh^{2MN} K * 1/2 [P_11 + P_10 + P_01 + sigma P_00],  sigma = sign(K - K_c),
#     ln P_ab = 1/2 sum_{p,q} F(theta_p, phi_q),  F = ln[(1+t^2)^2 - 2t(1-t^2)(cos theta + cos phi)],
# with theta_p = (2p+a) pi/M, phi_q = (2q+b) pi/N. F = 2 ln(1+t^2) + ln[1 - (kappa/2)(cos theta +
# cos phi)], kappa = 4t(1-t^2)/(1+t^2)^2, and its Fourier coefficients are exact series in rho =
# kappa/4 = t(1-t^2)/(1+t^2)^2:  F^(n1,n2) = -sum_k rho^k W_k(n1,n2)/k (+ 2 ln(1+t^2) at n = 0),
# W_k(n1,n2) = C(k,(k+n1+n2)/2) C(k,(k+n1-n2)/2) (walks of k steps on Z^2). The grid sum is the
# aliased sum over n in (M Z) x (N Z), so with G(v) = ln(1+v^2) + F^(0,0)/2 the bulk term and
#     Lambda_ab = E + e_a O_1 + e_b O_2 + e_a e_b O_12   (e_0 = +1 periodic, e_1 = -1),
# E, O_1, O_2, O_12 = (MN/2) sum of F^(m1 M, m2 N) over (m1, m2) != 0 with (even, even), (odd,
# even), (even, odd), (odd, odd) parities,
#     ln Z = MN [ln 2 + 2 ln cosh K + G(t)] + ln Omega,
#     Omega = e^E [e^{-O_12} cosh(O_1 - O_2) - e^{O_12} sinh(O_1 + O_2)]                (K < K_c)
#     Omega = 2 e^E [cosh O_1 cosh O_2 cosh O_12 + sinh O_1 sinh O_2 sinh O_12]           (K > K_c)
# (the first-order cancellations of the four terms done exactly). kappa is self-dual: it is the
# same function of u = exp(-2K) as of t, and MN [ln 2 + 2 ln cosh K + G(t)] = MN [2K + G(u)], so
# the same series in v = u give the low-temperature side. G, E, O_1, O_2, O_12 (linear in the
# Fourier coefficients) are built as series in v in exact rational arithmetic, so the cancellations
# of the expansion in kappa leave no rounding behind; they converge for |v| < sqrt 2 - 1 and are
# used for t <= 0.12 and u <= 0.15, where _SERIES_ORDER terms leave a relative truncation error far
# below 1e-16. Omega is then combined numerically from E, O_i and their K-derivatives with the
# closed forms above (expanding it too would fail on thin strips, where ln cosh O_i is not small).

_SERIES_ORDER = 48
# Tails: tanh K <= _T_SERIES (high temperature) and exp(-2K) <= _U_SERIES (low temperature).
_T_SERIES = 0.12
_U_SERIES = 0.15


def _ser_mul(a: list, b: list) -> list:
    n = len(a)
    c = [0] * n
    for i, ai in enumerate(a):
        if ai:
            for j in range(n - i):
                if b[j]:
                    c[i + j] += ai * b[j]
    return c


def _ser_add(*terms: tuple) -> list:
    """sum of coefficient * series."""
    n = len(terms[0][1])
    return [sum((f * s[i] for f, s in terms), Fraction(0)) for i in range(n)]


@functools.lru_cache(maxsize=1)
def _rho_powers() -> tuple:
    """rho(v)^k = [v (1-v^2) / (1+v^2)^2]^k for k = 0 .. _SERIES_ORDER, integer series in v."""
    n = _SERIES_ORDER + 1
    rho = [0] * n
    for m in range(n // 2 + 1):  # v (1 - v^2) sum_m (-1)^m (m+1) v^{2m}
        for power, sign in ((2 * m + 1, 1), (2 * m + 3, -1)):
            if power < n:
                rho[power] += sign * (-1) ** m * (m + 1)
    powers = [[1] + [0] * (n - 1)]
    for _ in range(_SERIES_ORDER):
        powers.append(_ser_mul(powers[-1], rho))
    return tuple(tuple(p) for p in powers)


def _walks(k: int, n1: int, n2: int) -> int:
    """Walks of k steps on Z^2 from the origin to (n1, n2)."""
    n1, n2 = abs(n1), abs(n2)
    if n1 + n2 > k or (k + n1 + n2) % 2:
        return 0
    return math.comb(k, (k + n1 + n2) // 2) * math.comb(k, (k + n1 - n2) // 2)


@functools.lru_cache(maxsize=1)
def _bulk_series() -> tuple:
    """G(v) = ln(1 + v^2) - (1/2) sum_k rho^k W_k(0,0)/k: Onsager's ln Z/N - ln 2 - 2 ln cosh K
    as a series in v = tanh K (= the same series in exp(-2K) minus 2K)."""
    n = _SERIES_ORDER + 1
    log1p_v2 = [Fraction(0)] * n
    for m in range(1, n // 2 + 1):
        if 2 * m < n:
            log1p_v2[2 * m] = Fraction((-1) ** (m + 1), m)
    rho = _rho_powers()
    terms = [(Fraction(1), log1p_v2)]
    terms += [(Fraction(-_walks(k, 0, 0), 2 * k), rho[k]) for k in range(2, n, 2)]
    return tuple(_ser_add(*terms))


@functools.lru_cache(maxsize=64)
def _torus_series(M: int, N: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Float coefficients (exact rationals rounded once) of the series in v of E, O_1, O_2, O_12."""
    n = _SERIES_ORDER + 1
    rho = _rho_powers()
    # sum over aliases (m1 M, m2 N) != 0 of W_k, by parity class of (m1, m2)
    classes = {(0, 0): [0] * n, (1, 0): [0] * n, (0, 1): [0] * n, (1, 1): [0] * n}
    for k in range(1, n):
        for m1 in range(-(k // M), k // M + 1):
            rest = k - abs(m1) * M
            for m2 in range(-(rest // N), rest // N + 1):
                if m1 or m2:
                    classes[(m1 % 2, m2 % 2)][k] += _walks(k, m1 * M, m2 * N)
    half = Fraction(M * N, 2)
    out = []
    for c in ((0, 0), (1, 0), (0, 1), (1, 1)):
        terms = [(-half * w / k, rho[k]) for k, w in enumerate(classes[c]) if w]
        out.append(np.array([float(x) for x in _ser_add(*terms)]) if terms else np.zeros(n))
    return tuple(out)


def _eval_series(coef: np.ndarray, v: float, dv: float, d2v: float) -> tuple[float, float, float]:
    """X = sum_j c_j v^j and its first two K-derivatives, given dv/dK and d^2v/dK^2."""
    j = np.arange(len(coef), dtype=float)
    nz = coef != 0.0
    if not nz.any():
        return 0.0, 0.0, 0.0
    c, j = coef[nz], j[nz]  # every j >= 2 here
    vj2 = v ** (j - 2.0)
    x = math.fsum(c * vj2 * v * v)
    s1 = math.fsum(j * c * vj2 * v)
    s2 = math.fsum(j * (j - 1.0) * c * vj2)
    return x, dv * s1, d2v * s1 + dv * dv * s2


def _ln_cosh(x: float, x1: float, x2: float) -> tuple[float, float, float]:
    """ln cosh X and its K-derivatives from those of X."""
    ax = abs(x)
    value = math.log1p(2.0 * math.sinh(0.5 * ax) ** 2) if ax < 1.0 else ax + math.log1p(math.exp(-2.0 * ax)) - math.log(2.0)
    th = math.tanh(x)
    return value, th * x1, (1.0 - th * th) * x1 * x1 + th * x2


def _ln_omega(K: float, series, v: float, dv: float, d2v: float) -> tuple[float, float, float]:
    """ln Omega (the finite-size factor) and its K-derivatives, combined without cancellation."""
    E, O1, O2, O12 = (_eval_series(c, v, dv, d2v) for c in series)
    if K > K_C:
        # Omega = 2 e^E cosh O1 cosh O2 cosh O12 (1 + tanh O1 tanh O2 tanh O12)
        parts = [_ln_cosh(*o) for o in (O1, O2, O12)]
        a = []
        for x, x1, x2 in (O1, O2, O12):
            th = math.tanh(x)
            s2 = 1.0 - th * th
            a.append((th, s2 * x1, s2 * (x2 - 2.0 * th * x1 * x1)))
        (p, p1, p2), (q, q1, q2), (r, r1, r2) = a
        tau = p * q * r
        tau1 = p1 * q * r + p * q1 * r + p * q * r1
        tau2 = (p2 * q * r + p * q2 * r + p * q * r2
                + 2.0 * (p1 * q1 * r + p1 * q * r1 + p * q1 * r1))
        l1 = tau1 / (1.0 + tau)
        return (math.log(2.0) + E[0] + sum(x[0] for x in parts) + math.log1p(tau),
                E[1] + sum(x[1] for x in parts) + l1,
                E[2] + sum(x[2] for x in parts) + tau2 / (1.0 + tau) - l1 * l1)
    # Omega = e^E (A + B), A = e^{-O12} cosh D, B = -e^{O12} sinh S >= 0, D = O1 - O2, S = O1 + O2
    D = (O1[0] - O2[0], O1[1] - O2[1], O1[2] - O2[2])
    S = (O1[0] + O2[0], O1[1] + O2[1], O1[2] + O2[2])
    lc = _ln_cosh(*D)
    la = (-O12[0] + lc[0], -O12[1] + lc[1], -O12[2] + lc[2])
    if abs(S[0]) < 0.5:
        # ln(A + B) = ln A + log1p(R), R = P Q W with P = e^{2 O12}, Q = -sinh S, W = sech D
        P = math.exp(2.0 * O12[0])
        P1, P2 = 2.0 * O12[1] * P, (2.0 * O12[2] + 4.0 * O12[1] ** 2) * P
        ch = math.cosh(S[0])
        Q, Q1, Q2 = -math.sinh(S[0]), -ch * S[1], -(math.sinh(S[0]) * S[1] ** 2 + ch * S[2])
        thd = math.tanh(D[0])
        W = 1.0 / math.cosh(D[0])
        W1 = -W * thd * D[1]
        W2 = W * ((thd * thd - (1.0 - thd * thd)) * D[1] ** 2 - thd * D[2])
        R = P * Q * W
        R1 = P1 * Q * W + P * Q1 * W + P * Q * W1
        R2 = (P2 * Q * W + P * Q2 * W + P * Q * W2
              + 2.0 * (P1 * Q1 * W + P1 * Q * W1 + P * Q1 * W1))
        l1 = R1 / (1.0 + R)
        return E[0] + la[0] + math.log1p(R), E[1] + la[1] + l1, E[2] + la[2] + R2 / (1.0 + R) - l1 * l1
    # |S| >= 1/2: ln B = O12 + ln(-sinh S) is well conditioned; weights w_A + w_B = 1
    aS = abs(S[0])
    cth = 1.0 / math.tanh(S[0])
    lb = (O12[0] + aS + math.log(-math.expm1(-2.0 * aS)) - math.log(2.0),
          O12[1] + cth * S[1], O12[2] + cth * S[2] + (1.0 - cth * cth) * S[1] ** 2)
    wb = 1.0 / (1.0 + math.exp(la[0] - lb[0])) if la[0] - lb[0] < 700 else 0.0
    wa = 1.0 / (1.0 + math.exp(lb[0] - la[0])) if lb[0] - la[0] < 700 else 0.0
    value = max(la[0], lb[0]) + math.log1p(math.exp(-abs(la[0] - lb[0])))
    first = wa * la[1] + wb * lb[1]
    second = wa * la[2] + wb * lb[2] + wa * wb * (la[1] - lb[1]) ** 2
    return E[0] + value, E[1] + first, E[2] + second


def _kaufman_direct(M: int, N: int, K: float) -> ExactThermo:
    """Kaufman's product formula in log space (used for ``tanh K > _T_SERIES`` and
    ``exp(-2K) > _U_SERIES``, where it is accurate to ~1e-13)."""
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


def _in_tails(K: float) -> bool:
    return math.tanh(K) <= _T_SERIES or -2.0 * K <= math.log(_U_SERIES)


def _series_thermo(M: int, N: int, K: float) -> ExactThermo:
    """The tails (see the comment above ``_SERIES_ORDER``)."""
    n = M * N
    series = _torus_series(M, N)
    g = np.array([float(x) for x in _bulk_series()])[2:]  # G = sum_{j >= 4} g_j v^j
    j = np.arange(2, _SERIES_ORDER + 1, dtype=float)
    if K < K_C:
        t = math.tanh(K)
        sech2 = 1.0 - t * t
        tj = t ** (j - 2)  # t^{j-2}; underflows to 0 harmlessly
        w, w1, w2 = _ln_omega(K, series, t, sech2, -2.0 * t * sech2)
        ln_z = n * (math.log(2.0) - math.log1p(-t * t) + math.fsum(g * tj * t * t)) + w
        d1 = n * (2.0 * t + sech2 * math.fsum(j * g * tj * t)) + w1
        # d^2 t^j / dK^2 = j (1 - t^2) t^{j-2} [(j - 1) - (j + 1) t^2]
        d2 = n * sech2 * (2.0 + math.fsum(g * j * tj * ((j - 1.0) - (j + 1.0) * t * t))) + w2
        heat = K * (K * d2 / n)
    else:
        ln_z = 2.0 * K * n
        if not math.isfinite(ln_z):
            raise ValueError(f"ln Z = 2 K M N overflows a float for K={K!r} on {M} x {N}: "
                             f"K must be < {_FLOAT_MAX / (2.0 * n):.3g}")
        u = math.exp(-2.0 * K)
        w, w1, w2 = _ln_omega(K, series, u, -2.0 * u, 4.0 * u)
        uj = np.exp(-2.0 * K * j)
        ln_z += n * math.fsum(g * uj) + w
        d1 = 2.0 * n * (1.0 - math.fsum(j * g * uj)) + w1
        # K^2 u^j = exp(2 ln K - 2 j K), without an underflowing intermediate
        heat = math.fsum(4.0 * j * j * g * np.exp(2.0 * math.log(K) - 2.0 * K * j)) + K * (K * w2 / n)
    return ExactThermo(n_sites=n, K=K, ln_z=float(ln_z), free_energy_per_site=float(-ln_z / n),
                       energy_per_site=float(-d1 / n), specific_heat_per_site=float(heat))


def kaufman(M: int, N: int, K: float) -> ExactThermo:
    """Exact ``ln Z``, free energy, energy and specific heat of the periodic ``M x N`` lattice.

    Parameters
    ----------
    M, N: extents (>= 2); the result is symmetric in them.
    K: coupling ``beta J`` > 0 (any finite float; ``ValueError`` only where ``ln Z ~ 2 K M N``
       itself overflows a float).

    Accurate to about 1e-13 relative in every quantity over the whole float range of K: Kaufman's
    product for ``tanh K > 0.12`` and ``exp(-2K) > 0.15``, exact high- and low-temperature series
    beyond (see the module docstring).
    """
    M, N = int(M), int(N)
    if M < 2 or N < 2:
        raise ValueError(f"lattice extents M, N must be >= 2, got M={M}, N={N}")
    K = _check_k(K)
    if _in_tails(K):
        return _series_thermo(M, N, K)
    return _kaufman_direct(M, N, K)


def exact_solution(lattice: Lattice, K: float) -> ExactThermo | None:
    """Exact thermodynamics of the Ising model on ``lattice`` where an exact solution is known:
    the periodic chain (:func:`ising_chain`) in 1D, Kaufman's torus (:func:`kaufman`) in 2D;
    ``None`` in 3D. ``ValueError`` for a bad ``K`` (see :func:`kaufman`)."""
    if lattice.d == 1:
        return ising_chain(lattice.shape[0], K)
    if lattice.d == 2:
        return kaufman(*lattice.shape, K)
    return None


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
    m0 = (1.0 - _csch(2.0 * K) ** 4) ** 0.125 if K > K_C else 0.0
    if _in_tails(K):
        # exact series: ln Z/N = ln 2 + 2 ln cosh K + G(t) = 2K + G(u) (see _bulk_series)
        g = np.array([float(x) for x in _bulk_series()])[2:]
        j = np.arange(2, _SERIES_ORDER + 1, dtype=float)
        if K < K_C:
            t = math.tanh(K)
            tj = t ** (j - 1)
            ln_z = math.log(2.0) - math.log1p(-t * t) + math.fsum(g * tj * t)
            energy = -(2.0 * t + (1.0 - t * t) * math.fsum(j * g * tj))
        else:
            uj = np.exp(-2.0 * K * j)
            ln_z = 2.0 * K + math.fsum(g * uj)
            energy = -2.0 + 2.0 * math.fsum(j * g * uj)
        return OnsagerSolution(K, float(ln_z), float(-ln_z), float(energy), float(m0))
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
    return OnsagerSolution(K, float(ln_z), float(-ln_z), float(energy), float(m0))


def ising_chain(N: int, K: float) -> ExactThermo:
    """Periodic Ising chain of ``N >= 2`` sites: ``Z = (2 cosh K)^N + (2 sinh K)^N``."""
    N = int(N)
    if N < 2:
        raise ValueError(f"chain length N must be >= 2, got N={N}")
    K = _check_k(K)
    if K > _CHAIN_LOW_T:
        return _chain_low_temperature(N, K)
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


# Above this K the chain uses Z = e^{NK} [(1+u)^N + (1-u)^N], u = e^{-2K} (no cancellation in c).
_CHAIN_LOW_T = 1.0


def _chain_low_temperature(N: int, K: float) -> ExactThermo:
    """``ln Z = NK + ln 2 + f(u)``, ``f = (N/2) ln(1-u^2) + ln cosh(N atanh u)``; derivatives in u
    written without cancellation (``d/dK = -2u d/du``)."""
    u = math.exp(-2.0 * K)
    x = N * math.atanh(u)
    th = math.tanh(x)
    ex = math.exp(-2.0 * x)
    sech2x = 4.0 * ex / (1.0 + ex) ** 2
    ln_cosh_x = x + math.log1p(ex) - math.log(2.0)
    f = 0.5 * N * math.log1p(-u * u) + ln_cosh_x
    f1 = N * (th - u) / (1.0 - u * u)
    f2 = N * ((N * sech2x - (1.0 - u * u)) + 2.0 * u * (th - u)) / (1.0 - u * u) ** 2
    ln_z = N * K + math.log(2.0) + f
    if not math.isfinite(ln_z):
        raise ValueError(f"ln Z = N K overflows a float for K={K!r}, N={N}: K must be < {_FLOAT_MAX / N:.3g}")
    energy = -1.0 + 2.0 * u * f1 / N
    ku = K * u
    heat = 4.0 * (ku * (K * f1) + ku * ku * f2) / N
    return ExactThermo(N, K, float(ln_z), float(-ln_z / N), float(energy), float(heat))


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
    matrices are scaled by ``1 / (2 cosh K)`` (written in ``exp(-2K)``) so that powers stay finite.
    """
    N, w = int(N), int(w)
    if not 1 <= w <= N:
        raise ValueError(f"window w must lie in 1..N={N}, got w={w}")
    K = _check_k(K)
    u = math.exp(-2.0 * K)
    T = np.array([[1.0, u], [u, 1.0]]) / (1.0 + u)
    closing = np.linalg.matrix_power(T, N - w + 1)  # closing[s_w, s_1]
    if w == 1:
        p = np.diagonal(closing).copy()
        return p / p.sum()
    joint = T
    for m in range(2, w):  # append s_{m+1} to a joint over (s_1 .. s_m)
        joint = joint[..., None] * T.reshape((1,) * (m - 1) + (2, 2))
    joint = joint * closing.T.reshape((2,) + (1,) * (w - 2) + (2,))
    return joint / joint.sum()
