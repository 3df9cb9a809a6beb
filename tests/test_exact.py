"""Exact solutions checked against brute-force enumeration and independent formulas."""

import math

import numpy as np
import pytest
from scipy import integrate

from deeprg import Lattice
from deeprg.models.enumeration import Enumeration
from deeprg.models.exact import (
    chain_correlation,
    chain_window_distribution,
    ising_chain,
    kaufman,
    onsager,
)
from deeprg.models.ising import K_C

COUPLINGS = [0.15, 0.35, K_C, 0.5, 0.9]


def enumerated_thermo(shape, K):
    lat = Lattice(shape)
    enum = Enumeration(lat, K)
    bond = lambda s: lat.bond_sum(s).astype(float)  # noqa: E731
    mean = enum.mean(bond)
    var = enum.mean(lambda s: (bond(s) - mean) ** 2)
    n = lat.n_sites
    return enum.ln_z, -mean / n, K * K * var / n


@pytest.mark.parametrize("shape", [(2, 2), (2, 3), (3, 3), (3, 4), (4, 3), (2, 4), (4, 4)])
@pytest.mark.parametrize("K", COUPLINGS)
def test_kaufman_matches_enumeration(shape, K):
    ln_z, energy, heat = enumerated_thermo(shape, K)
    exact = kaufman(*shape, K)
    assert exact.ln_z == pytest.approx(ln_z, abs=1e-12)
    assert exact.energy_per_site == pytest.approx(energy, abs=1e-12)
    assert exact.specific_heat_per_site == pytest.approx(heat, abs=1e-12)
    assert exact.free_energy_per_site == pytest.approx(-ln_z / exact.n_sites, abs=1e-12)


@pytest.mark.parametrize("K", [0.05, 0.3, K_C, 0.47, 1.5])
def test_kaufman_is_symmetric_in_the_extents(K):
    a, b = kaufman(6, 250, K), kaufman(250, 6, K)
    assert a.ln_z == pytest.approx(b.ln_z, rel=1e-13)
    assert a.energy_per_site == pytest.approx(b.energy_per_site, rel=1e-11)
    assert a.specific_heat_per_site == pytest.approx(b.specific_heat_per_site, rel=1e-9)


@pytest.mark.parametrize("L", [8, 64, 512])
@pytest.mark.parametrize("K", [0.2, 0.43, K_C, 0.452, 0.8])
def test_kaufman_derivatives_match_finite_differences(L, K):
    h = 1e-4 * K
    lnz = [kaufman(L, L, K + j * h).ln_z for j in (-2, -1, 0, 1, 2)]
    d1 = (lnz[0] - 8 * lnz[1] + 8 * lnz[3] - lnz[4]) / (12 * h)
    d2 = (-lnz[0] + 16 * lnz[1] - 30 * lnz[2] + 16 * lnz[3] - lnz[4]) / (12 * h * h)
    exact = kaufman(L, L, K)
    n = L * L
    assert exact.energy_per_site == pytest.approx(-d1 / n, rel=1e-7)
    assert exact.specific_heat_per_site == pytest.approx(K * K * d2 / n, rel=2e-3, abs=1e-6)


@pytest.mark.parametrize("K", [1e-6, 1e-2, 5.0, 60.0, 500.0])
@pytest.mark.parametrize("L", [2, 512, 1024])
def test_kaufman_is_finite_at_extreme_couplings(L, K):
    exact = kaufman(L, L, K)
    values = np.array([exact.ln_z, exact.energy_per_site, exact.specific_heat_per_site])
    assert np.all(np.isfinite(values))
    assert -2.0 - 1e-12 <= exact.energy_per_site <= 0.0
    assert exact.specific_heat_per_site >= -1e-9


@pytest.mark.parametrize("K", [0.1, 0.3, 0.42, 0.46, 0.6, 1.0])
def test_large_kaufman_lattice_approaches_onsager(K):
    L = 512
    exact, inf = kaufman(L, L, K), onsager(K)
    # in the ordered phase the two ground states add ln 2 to ln Z
    ordered_correction = math.log(2.0) / L**2 if K > K_C else 0.0
    assert exact.ln_z / L**2 == pytest.approx(inf.ln_z_per_site + ordered_correction, abs=1e-11)
    assert exact.energy_per_site == pytest.approx(inf.energy_per_site, abs=1e-9)


@pytest.mark.parametrize("K", [0.2, K_C, 0.7])
def test_onsager_free_energy_matches_double_integral(K):
    c, s = math.cosh(2 * K) ** 2, math.sinh(2 * K)
    integral, _ = integrate.dblquad(
        lambda a, b: math.log(c - s * (math.cos(a) + math.cos(b))), 0, math.pi, 0, math.pi,
        epsabs=1e-12, epsrel=1e-12,
    )
    assert onsager(K).ln_z_per_site == pytest.approx(math.log(2) + integral / (2 * math.pi**2), abs=1e-9)


def test_onsager_critical_point_values():
    sol = onsager(K_C)
    assert sol.energy_per_site == pytest.approx(-math.sqrt(2.0), abs=1e-12)
    assert sol.spontaneous_magnetization == 0.0
    assert onsager(0.5).spontaneous_magnetization == pytest.approx(
        (1 - math.sinh(1.0) ** -4) ** 0.125, rel=1e-14
    )
    assert 0.0 < onsager(K_C * 1.001).spontaneous_magnetization < onsager(0.5).spontaneous_magnetization


@pytest.mark.parametrize("N", [2, 3, 5, 8, 12])
@pytest.mark.parametrize("K", [0.2, 0.8, 2.0])
def test_chain_matches_enumeration(N, K):
    ln_z, energy, heat = enumerated_thermo((N,), K)
    exact = ising_chain(N, K)
    assert exact.ln_z == pytest.approx(ln_z, abs=1e-12)
    assert exact.energy_per_site == pytest.approx(energy, abs=1e-12)
    assert exact.specific_heat_per_site == pytest.approx(heat, abs=1e-12)
    enum = Enumeration(Lattice((N,)), K)
    for r in range(N + 1):
        exact_corr = enum.mean(lambda s: s[:, 0].astype(float) * s[:, r % N])
        assert chain_correlation(N, K, r) == pytest.approx(exact_corr, abs=1e-12)


@pytest.mark.parametrize("w", [1, 2, 3, 5])
def test_chain_window_distribution_matches_enumeration(w):
    N, K = 9, 0.7
    enum = Enumeration(Lattice((N,)), K)
    window = (enum.configurations[:, :w] < 0).astype(int)  # index 0 for +1, 1 for -1
    expected = np.zeros((2,) * w)
    np.add.at(expected, tuple(window.T), enum.probabilities)
    np.testing.assert_allclose(chain_window_distribution(N, K, w), expected, atol=1e-14)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: kaufman(1, 4, 0.3), "M, N must be >= 2"),
        (lambda: kaufman(4, 4, 0.0), "K must be"),
        (lambda: kaufman(4, 4, float("nan")), "K must be"),
        (lambda: onsager(-1.0), "K must be"),
        (lambda: ising_chain(1, 0.3), "N must be >= 2"),
        (lambda: chain_window_distribution(4, 0.3, 5), "window w"),
        (lambda: chain_correlation(4, 0.3, 7), "distance r"),
    ],
)
def test_bad_arguments_are_rejected(call, match):
    with pytest.raises(ValueError, match=match):
        call()
