"""Exact solutions checked against brute-force enumeration and independent formulas."""

import functools
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate

from deeprg import Lattice
from deeprg.cli import main
from deeprg.models.enumeration import Enumeration, all_configurations
from deeprg.models.exact import (
    chain_correlation,
    chain_window_distribution,
    exact_solution,
    ising_chain,
    kaufman,
    onsager,
)
from deeprg.models.ising import K_C

COUPLINGS = [0.15, 0.35, K_C, 0.5, 0.9]


def enumerated_thermo(shape, K):
    lat = Lattice(shape)
    enum = Enumeration(lat, K)
    bond = lambda s: lat.bond_sum(s).astype(float)
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


# ---- the whole float range of K -------------------------------------------------------------------

TINY = 1e-300  # below this, values are compared absolutely (they are at the edge of underflow)
log_uniform_k = st.floats(min_value=-300.0, max_value=300.0).map(lambda e: 10.0**e)


@functools.cache
def density_of_states(shape):
    lat = Lattice(shape)
    values, counts = np.unique(lat.bond_sum(all_configurations(lat)), return_counts=True)
    return values.astype(float), counts.astype(float), lat.n_sites


def dos_thermo(shape, K):
    """ln Z, energy and specific heat per site from the enumerated density of states g(b) of the
    bond sum b, written with sums of terms of one sign only, so exact to rounding at every K:
    at small K, <b> = sum g b (e^{Kb} - 1) / Z (sum g b = 0); at large K, relative to the top level."""
    b, g, n = density_of_states(shape)
    top = b.max()
    w = g * np.exp(K * (b - top))
    if K < 0.5:
        z = math.fsum(g * np.exp(K * b))
        ln_z = n * math.log(2.0) + math.log(z / 2.0**n)
        mean = math.fsum(g * b * np.expm1(K * b)) / z
    else:
        z = math.fsum(w)
        ln_z = K * top + math.log(z)
        mean = top - math.fsum(w * (top - b)) / z
    var = math.fsum(w / math.fsum(w) * (b - mean) ** 2)
    return ln_z, -mean / n, K * (K * var) / n


def assert_close(actual, expected, rel=1e-12):
    assert math.isfinite(actual)
    if abs(expected) < TINY:
        assert abs(actual - expected) <= TINY
    else:
        assert actual == pytest.approx(expected, rel=rel)


@pytest.mark.parametrize("shape", [(2, 2), (2, 3), (3, 3), (2, 4), (3, 4), (4, 4)])
@settings(max_examples=60, deadline=None)
@given(K=log_uniform_k)
def test_kaufman_matches_enumeration_over_the_whole_float_range(shape, K):
    exact = kaufman(*shape, K)
    ln_z, energy, heat = dos_thermo(shape, K)
    assert_close(exact.ln_z, ln_z)
    assert_close(exact.energy_per_site, energy)
    assert_close(exact.specific_heat_per_site, heat)
    assert exact.specific_heat_per_site >= 0.0 and -2.0 <= exact.energy_per_site < 0.0


@pytest.mark.parametrize("shape", [(3, 3), (4, 4)])
@pytest.mark.parametrize("K", np.linspace(0.02, 3.0, 25).tolist() + [0.1199, 0.1201, 0.9486, 0.9487])
def test_kaufman_matches_enumeration_across_the_regime_boundaries(shape, K):
    exact = kaufman(*shape, K)
    for value, expected in zip((exact.ln_z, exact.energy_per_site, exact.specific_heat_per_site),
                               dos_thermo(shape, K)):
        assert value == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("shape", [(16, 16), (5, 40), (64, 64)])
@pytest.mark.parametrize("K", [1e-300, 1e-100, 1e-12, 1e-8, 1e-6])
def test_kaufman_small_coupling_follows_the_high_temperature_series(shape, K):
    # M, N >= 5: ln Z = N ln 2 + 2N ln cosh K + N t^4 + O(t^5); e = -2t - 4t^3; c = 2K^2 (1 + 5 t^2)
    exact, n, t = kaufman(*shape, K), shape[0] * shape[1], math.tanh(K)
    assert exact.ln_z == pytest.approx(n * (math.log(2.0) + 2.0 * math.log(math.cosh(K))), rel=1e-15)
    assert exact.energy_per_site == pytest.approx(-2.0 * t - 4.0 * t**3, rel=1e-12)
    assert_close(exact.specific_heat_per_site, 2.0 * K * K * (1.0 + 5.0 * K * K))


@pytest.mark.parametrize("N", [2, 3, 50])
@pytest.mark.parametrize("K", [1e-300, 1e-30, 1e-9])
def test_thin_strips_count_their_winding_loops_at_small_coupling(N, K):
    # 2 x N: each vertical pair is a loop of length 2 (a_2 = N), so e = -(2 + 2/2) t = -3t
    exact = kaufman(2, N, K)
    extra = 2.0 / 2.0 + (2.0 / N if N == 2 else 0.0)
    assert exact.energy_per_site == pytest.approx(-(2.0 + extra) * math.tanh(K), rel=1e-12)


@pytest.mark.parametrize("shape", [(16, 16), (5, 40), (3, 7)])
@pytest.mark.parametrize("K", [20.0, 50.0, 88.0])
def test_kaufman_large_coupling_follows_the_low_temperature_series(shape, K):
    # M, N >= 3: only single flips (4 broken bonds) at order u^4: ln Z = 2NK + ln 2 + N u^4 + O(u^6)
    exact, n = kaufman(*shape, K), shape[0] * shape[1]
    assert exact.ln_z == pytest.approx(2.0 * n * K + math.log(2.0), rel=1e-15)
    assert exact.energy_per_site == pytest.approx(-2.0 + 8.0 * math.exp(-8.0 * K), rel=1e-15)
    expected = 64.0 * math.exp(2.0 * math.log(K) - 8.0 * K)
    assert exact.specific_heat_per_site == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("K", [1e3, 1e100, 1e300])
def test_kaufman_huge_coupling_is_the_ground_state(K):
    exact = kaufman(32, 48, K)
    assert exact.ln_z == pytest.approx(2.0 * 32 * 48 * K + math.log(2.0), rel=1e-15)
    assert exact.energy_per_site == -2.0 and exact.specific_heat_per_site == 0.0


def test_kaufman_refuses_a_ln_z_beyond_the_float_range():
    with pytest.raises(ValueError, match="K must be <"):
        kaufman(10**5, 10**5, 1e300)


@pytest.mark.parametrize("K", [1e-300, 1e-8, 1e-3, 0.1199, 0.1201, 0.9486, 0.9487, 5.0, 1e300])
def test_kaufman_is_symmetric_in_the_extents_in_every_regime(K):
    a, b = kaufman(3, 11, K), kaufman(11, 3, K)
    for x, y in zip((a.ln_z, a.energy_per_site, a.specific_heat_per_site),
                    (b.ln_z, b.energy_per_site, b.specific_heat_per_site)):
        assert_close(x, y, rel=1e-12)


# Domb's high-temperature series of the square lattice: ln Z/N - ln 2 - 2 ln cosh K
ONSAGER_HIGH_T = [(4, 1.0), (6, 2.0), (8, 4.5), (10, 12.0)]


@settings(max_examples=100, deadline=None)
@given(K=st.floats(min_value=-300.0, max_value=-3.0).map(lambda e: 10.0**e))
def test_onsager_small_coupling_matches_the_high_temperature_series(K):
    t = math.tanh(K)
    sol = onsager(K)
    series = sum(c * t**j for j, c in ONSAGER_HIGH_T)
    d_series = sum(j * c * t ** (j - 1) for j, c in ONSAGER_HIGH_T) * (1.0 - t * t)
    assert sol.ln_z_per_site == pytest.approx(math.log(2.0) - math.log1p(-t * t) + series, rel=1e-15)
    assert sol.energy_per_site == pytest.approx(-(2.0 * t + d_series), rel=1e-12)


@settings(max_examples=100, deadline=None)
@given(K=st.floats(min_value=0.5, max_value=300.0).map(lambda e: 10.0**e))
def test_onsager_large_coupling_matches_the_low_temperature_series(K):
    # by duality the same series in u = exp(-2K): ln Z/N = 2K + u^4 + 2u^6 + ...
    uj = [(j, c, math.exp(-2.0 * K * j)) for j, c in ONSAGER_HIGH_T]
    sol = onsager(K)
    assert sol.ln_z_per_site == pytest.approx(2.0 * K + sum(c * u for _, c, u in uj), rel=1e-15)
    assert sol.energy_per_site == pytest.approx(-2.0 + 2.0 * sum(j * c * u for j, c, u in uj), rel=1e-15)
    csch = 2.0 * math.exp(-2.0 * K) / -math.expm1(-4.0 * K)
    assert sol.spontaneous_magnetization == pytest.approx(math.exp(math.log1p(-(csch**4)) / 8.0), rel=1e-15)


@pytest.mark.parametrize("K", [0.05, 0.1199, 0.1201, 0.9486, 0.9487, 1.3])
def test_onsager_matches_large_kaufman_lattice_on_both_sides_of_the_regime_boundaries(K):
    L = 256
    exact, inf = kaufman(L, L, K), onsager(K)
    ordered_correction = math.log(2.0) / L**2 if K > K_C else 0.0
    assert exact.ln_z / L**2 == pytest.approx(inf.ln_z_per_site + ordered_correction, rel=1e-14)
    assert exact.energy_per_site == pytest.approx(inf.energy_per_site, rel=1e-12)


@pytest.mark.parametrize("N", [2, 3, 5, 12])
@settings(max_examples=60, deadline=None)
@given(K=log_uniform_k)
def test_chain_matches_enumeration_over_the_whole_float_range(N, K):
    exact = ising_chain(N, K)
    ln_z, energy, heat = dos_thermo((N,), K)
    assert_close(exact.ln_z, ln_z)
    assert_close(exact.energy_per_site, energy)
    assert_close(exact.specific_heat_per_site, heat)


@pytest.mark.parametrize("N", [2, 7, 1000, 10**9])
@settings(max_examples=40, deadline=None)
@given(K=log_uniform_k)
def test_chain_ln_z_matches_the_closed_form(N, K):
    # ln Z = N ln(2 cosh K) + ln(1 + tanh^N K), ln(2 cosh K) = K + log1p(e^{-2K})
    if math.isinf(N * K):
        with pytest.raises(ValueError, match="K must be <"):
            ising_chain(N, K)
        return
    closed = N * (K + math.log1p(math.exp(-2.0 * K))) + math.log1p(math.tanh(K) ** N)
    assert ising_chain(N, K).ln_z == pytest.approx(closed, rel=1e-13)


@pytest.mark.parametrize("N", [2, 5, 12])
@pytest.mark.parametrize("K", [0.9999, 1.0, 1.0001, 3.0, 10.0])
def test_chain_matches_enumeration_across_its_regime_boundary(N, K):
    exact = ising_chain(N, K)
    for value, expected in zip((exact.ln_z, exact.energy_per_site, exact.specific_heat_per_site),
                               dos_thermo((N,), K)):
        assert value == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("K", [1e-300, 1e-5, 0.5, 40.0, 1e300])
def test_chain_energy_and_specific_heat_follow_their_asymptotics(K):
    N = 1000
    exact = ising_chain(N, K)
    if K < 1.0:  # e = -t, c = K^2 sech^2 K (the t^N corrections are invisible)
        assert exact.energy_per_site == pytest.approx(-math.tanh(K), rel=1e-12)
        assert_close(exact.specific_heat_per_site, K * K / math.cosh(K) ** 2)
    else:  # two domain walls at u^2: ln Z = NK + ln 2 + N(N-1)/2 u^2 + ...
        u2 = math.exp(-4.0 * K)
        assert exact.energy_per_site == pytest.approx(-1.0 + 2.0 * (N - 1) * u2, rel=1e-12)
        if K > 10:
            assert_close(exact.specific_heat_per_site, 8.0 * (N - 1) * math.exp(2.0 * math.log(K) - 4.0 * K))


def test_chain_window_distribution_is_finite_at_huge_coupling():
    p = chain_window_distribution(9, 800.0, 3)
    assert np.all(np.isfinite(p)) and p[0, 0, 0] == pytest.approx(0.5) and p[1, 1, 1] == pytest.approx(0.5)


def test_exact_solution_picks_the_solution_that_fits_the_lattice():
    assert exact_solution(Lattice((7,)), 0.3) == ising_chain(7, 0.3)
    assert exact_solution(Lattice((4, 6)), 0.3) == kaufman(4, 6, 0.3)
    assert exact_solution(Lattice((4, 4, 4)), 0.3) is None
    with pytest.raises(ValueError, match="K must be"):
        exact_solution(Lattice((4, 4)), -1.0)


def run_cli(capsys, *argv):
    try:
        status = main(["exact", "ising", *argv])
    except SystemExit as exc:
        status = exc.code
    out = capsys.readouterr()
    return status, out.out, out.err


@pytest.mark.parametrize("beta", ["1e-300", "1e-8", "1e300"])
def test_cli_prints_strict_json_with_correct_values_over_the_range(capsys, beta):
    status, out, _ = run_cli(capsys, "--L", "4", "--beta", beta, "--json")
    assert status == 0
    summary = json.loads(out, parse_constant=lambda c: pytest.fail(f"non-strict JSON {c}"))
    K = float(beta)
    ln_z, energy, heat = dos_thermo((4, 4), K)
    assert_close(summary["ln_z"], ln_z)
    assert_close(summary["energy_per_site"], energy)
    assert_close(summary["specific_heat_per_site"], heat)
    assert summary["onsager"]["energy_per_site"] == pytest.approx(onsager(K).energy_per_site, rel=1e-15)


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--beta", "1e-400"], "underflows"),
        (["--beta", "inf"], "beta"),
        (["--beta", "-0"], "beta"),
        (["--L", "2000000"], "--L must lie in 2..1000000"),
        (["--L", "8", "--M", "2000000"], "--M must lie in 2..1000000"),
        (["--L", "100000", "--beta", "1e300"], "K must be <"),
        (["--d", "1", "--L", str(10**16)], "--L must lie in 2.."),
        (["--d", "1", "--L", "4", "--M", "4"], "--M applies to d=2 only"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(capsys, argv, needle):
    status, out, err = run_cli(capsys, *argv)
    assert status == 2 and out == ""
    assert needle in err
    assert err.strip().splitlines()[-1].startswith(("deeprg: error:", "deeprg exact ising: error:"))
