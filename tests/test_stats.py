"""Tests of deeprg.mc.stats against AR(1) series and iid Gaussian data with exact answers.

AR(1): x_t = phi x_{t-1} + sqrt(1 - phi^2) eps_t, started in equilibrium, has unit variance,
rho(t) = phi^|t|, tau_int = (1 + phi) / (2 (1 - phi)) and error of the mean sqrt(2 tau_int / n).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.signal import lfilter

from deeprg.mc.stats import (
    Estimate,
    autocorrelation,
    binning,
    estimate,
    format_value_error,
    integrated_autocorr_time,
    jackknife,
)


def ar1(phi: float, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Stationary AR(1) series of the given shape (time on the last axis)."""
    rng = np.random.default_rng(seed)
    eps = rng.standard_normal(shape)
    x_before = rng.standard_normal(shape[:-1] + (1,))  # equilibrium state at t = -1
    return lfilter([math.sqrt(1.0 - phi**2)], [1.0, -phi], eps, axis=-1, zi=phi * x_before)[0]


def tau_exact(phi: float) -> float:
    return (1.0 + phi) / (2.0 * (1.0 - phi))


def bin_error_exact(phi: float, b: int, n_bins: int) -> float:
    """Exact standard deviation of the mean of ``n_bins`` independent AR(1) bins of size b,
    i.e. what the naive error of the bin means estimates at bin size b."""
    var_bin_mean = ((1 + phi) / (1 - phi) - 2 * phi * (1 - phi**b) / (b * (1 - phi) ** 2)) / b
    return math.sqrt(var_bin_mean / n_bins)


# ---- autocorrelation and tau_int -----------------------------------------------------------


@pytest.mark.parametrize("phi", [0.0, 0.5, 0.9])
def test_tau_int_of_ar1(phi):
    x = ar1(phi, (2**18,), seed=10)
    assert integrated_autocorr_time(x) == pytest.approx(tau_exact(phi), rel=0.1)


def test_autocorrelation_of_ar1_is_geometric():
    x = ar1(0.8, (2**18,), seed=11)
    rho = autocorrelation(x)
    assert rho.shape == x.shape
    assert rho[0] == 1.0
    np.testing.assert_allclose(rho[:10], 0.8 ** np.arange(10), atol=0.02)


def test_autocorrelation_pools_chains_about_the_common_mean():
    # Two white-noise chains offset by +-3: about the pooled mean the offset is a persistent
    # correlation rho(t) = 9 / (9 + 1) at every lag.
    noise = np.random.default_rng(12).standard_normal((2, 4096))
    x = noise + np.array([[3.0], [-3.0]])
    rho = autocorrelation(x)
    np.testing.assert_allclose(rho[1:20], 0.9, atol=0.02)
    # Multi-chain input without an offset matches the single-chain convention.
    y = ar1(0.5, (8, 2**15), seed=13)
    assert integrated_autocorr_time(y) == pytest.approx(tau_exact(0.5), rel=0.1)


def test_constant_series_is_treated_as_uncorrelated():
    x = np.full(100, 0.1)
    np.testing.assert_array_equal(autocorrelation(x), np.eye(1, 100)[0])
    assert integrated_autocorr_time(x) == 0.5
    est = estimate(x)
    assert (est.mean, est.error, est.variance, est.tau_int) == (0.1, 0.0, 0.0, 0.5)
    assert binning(x).tau_int == 0.5


def test_short_series_warns_that_tau_is_unreliable():
    x = ar1(0.9, (100,), seed=14)
    with pytest.warns(RuntimeWarning, match="unreliable"):
        integrated_autocorr_time(x)


# ---- error bars of the mean ----------------------------------------------------------------


@pytest.mark.parametrize(("phi", "method"), [(0.5, "tau"), (0.9, "tau"), (0.9, "binning")])
def test_error_bar_matches_scatter_of_independent_replicas(phi, method):
    n_rep, n = 400, 2**14
    x = ar1(phi, (n_rep, n), seed=20)
    ests = [estimate(row, method=method) for row in x]
    means = np.array([e.mean for e in ests])
    errors = np.array([e.error for e in ests])
    # Stated error vs exact error of the mean vs observed scatter of the means.
    assert errors.mean() == pytest.approx(math.sqrt(2 * tau_exact(phi) / n), rel=0.1)
    assert errors.mean() / means.std(ddof=1) == pytest.approx(1.0, abs=0.15)
    # Coverage: the true mean 0 lies within 2 sigma in ~95.4% of replicas (binomial sd ~1%).
    coverage = np.mean(np.abs(means) < 2 * errors)
    assert 0.915 < coverage < 0.99


def test_estimate_fields_and_multichain_pooling():
    x = ar1(0.5, (8, 2**15), seed=21)
    est = estimate(x)
    assert est.n_samples == x.size
    assert est.mean == pytest.approx(x.mean(), abs=1e-14)
    assert est.variance == pytest.approx(x.var(ddof=1), rel=1e-12)
    assert est.variance == pytest.approx(1.0, rel=0.03)
    assert est.tau_int == pytest.approx(tau_exact(0.5), rel=0.1)
    assert est.error == pytest.approx(math.sqrt(est.variance * 2 * est.tau_int / x.size))
    # A single chain given as (1, n) is the same as (n,).
    assert estimate(x[:1]) == estimate(x[0])


# ---- binning -------------------------------------------------------------------------------


def test_binning_levels_follow_exact_ar1_curve_and_plateau_agrees_with_tau():
    phi, n = 0.9, 2**20
    x = ar1(phi, (n,), seed=30)
    res = binning(x)
    sizes, errors, tau_bin, plateau = res
    np.testing.assert_array_equal(sizes, 2 ** np.arange(len(sizes)))
    assert n // sizes[-1] >= 32 and n // (2 * sizes[-1]) < 32  # stops at min_bins
    # Every level with enough bins to be precise lies on the exact finite-bin curve.
    for b, err in zip(sizes, errors):
        if n // b >= 512:  # relative noise of the error <= 1/sqrt(2 * 512) ~ 3%
            assert err == pytest.approx(bin_error_exact(phi, int(b), n // int(b)), rel=0.1)
    assert sizes[plateau] >= 20 * tau_bin
    assert tau_bin == pytest.approx(tau_exact(phi), rel=0.1)
    assert tau_bin == pytest.approx(integrated_autocorr_time(x), rel=0.1)
    assert tau_bin == pytest.approx(0.5 * (errors[plateau] / errors[0]) ** 2)
    assert estimate(x, method="binning").tau_int == tau_bin


def test_binning_multichain_counts_bins_of_all_chains():
    x = ar1(0.5, (4, 1000), seed=31)
    sizes, errors, _, _ = binning(x, min_bins=64)
    assert 4 * (1000 // sizes[-1]) >= 64 > 4 * (1000 // (2 * sizes[-1]))
    assert errors[0] == pytest.approx(x.std(ddof=1) / math.sqrt(x.size))


def test_binning_without_plateau_warns():
    x = ar1(0.99, (2000,), seed=32)
    with pytest.warns(RuntimeWarning, match="no plateau"):
        res = binning(x)
    assert res.plateau == len(res.errors) - 1


# ---- jackknife -----------------------------------------------------------------------------


def test_jackknife_of_linear_function_is_the_block_mean_error():
    # For f = mean the jackknife reproduces the mean and the naive error of the block means.
    x = ar1(0.9, (3, 2**12 + 5), seed=40)  # 5 extra samples: the earliest are dropped
    est = jackknife(np.mean, x, n_blocks=16)
    used = x[:, 5:]
    block_means = used.reshape(3, 16, -1).mean(axis=(0, 2))
    assert est.mean == pytest.approx(used.mean(), abs=1e-13)
    assert est.error == pytest.approx(block_means.std(ddof=1) / 4.0, rel=1e-10)
    assert est.n_samples == used.size
    assert math.isnan(est.variance)
    assert est.tau_int == integrated_autocorr_time(x)


@pytest.mark.filterwarnings("ignore:chain length:RuntimeWarning")  # tau_int of 16 samples
def test_jackknife_bias_correction_reproduces_unbiased_estimators():
    # Delete-1 jackknife (one sample per block) of the biased estimators mean^2 and var(ddof=0)
    # gives exactly the unbiased ones: mean^2 - s^2 / n and s^2 (s^2 with ddof=1).
    x = np.random.default_rng(40).normal(2.0, 2.0, size=16)
    s2 = x.var(ddof=1)
    est = jackknife(lambda a: a.mean() ** 2, x, n_blocks=16)
    assert est.mean == pytest.approx(x.mean() ** 2 - s2 / 16, rel=1e-12)
    assert jackknife(np.var, x, n_blocks=16).mean == pytest.approx(s2, rel=1e-12)


@pytest.mark.filterwarnings("ignore:chain length:RuntimeWarning")  # tau_int of 64 samples
@pytest.mark.parametrize(
    ("func", "exact"),
    [(lambda x: np.mean(x) ** 2, 4.0), (lambda x: np.var(x), 4.0)],
    ids=["mean_squared", "variance"],
)
def test_jackknife_nonlinear_matches_exact_value_within_error_bars(func, exact):
    # 1000 replicas of 64 iid N(2, 2^2) samples in 32 blocks: the estimates average to the exact
    # value, and the jackknife error matches the scatter over replicas.
    n_rep, n = 1000, 64
    data = np.random.default_rng(41).normal(2.0, 2.0, size=(n_rep, n))
    ests = [jackknife(func, row, n_blocks=32) for row in data]
    values = np.array([e.mean for e in ests])
    errors = np.array([e.error for e in ests])
    assert abs(values.mean() - exact) < 3 * values.std(ddof=1) / math.sqrt(n_rep)
    assert np.sqrt(np.mean(errors**2)) / values.std(ddof=1) == pytest.approx(1.0, abs=0.15)
    # Coverage of +-2 errors: a little below 95% because the error itself has only ~31 degrees
    # of freedom and var of 64 samples is skewed.
    assert 0.88 < np.mean(np.abs(values - exact) < 2 * errors) < 0.99


def test_jackknife_binder_ratio_of_gaussian_magnetization_is_zero():
    # For Gaussian m, <m^4> = 3 <m^2>^2, so U = 1 - <m^4> / (3 <m^2>^2) = 0.
    m = np.random.default_rng(42).standard_normal((4, 2**14))
    est = jackknife(lambda m2, m4: 1 - m4.mean() / (3 * m2.mean() ** 2), m**2, m**4)
    assert est.n_samples == m.size
    assert abs(est.mean) < 3 * est.error
    assert 0 < est.error < 0.02


def test_jackknife_rejects_bad_arguments():
    x = np.zeros(64) + np.arange(64)
    with pytest.raises(ValueError, match="same shape"):
        jackknife(lambda a, b: a.mean() * b.mean(), x, x[:32])
    with pytest.raises(ValueError, match="n_blocks"):
        jackknife(np.mean, x, n_blocks=65)
    with pytest.raises(ValueError, match="scalar"):
        jackknife(lambda a: a[:2], x)
    with pytest.raises(ValueError, match="at least one series"):
        jackknife(np.mean)


# ---- Estimate ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mean", "error", "text"),
    [
        (-1.45302, 0.00123, "-1.4530(12)"),
        (0.5, 0.0996, "0.50(10)"),  # the error rounds up to the next decade
        (2.0, 1.5, "2.0(15)"),
        (12345.0, 123.0, "12340(120)"),
        (1e-8, 2.5e-10, "0.00000001000(25)"),
        (3.25, 0.0, "3.25(0)"),
        (3.25, math.nan, "3.25(nan)"),
    ],
)
def test_estimate_str_physicist_notation(mean, error, text):
    assert str(Estimate(mean, error, 1.0, 0.5, 10)) == text
    assert format_value_error(mean, error) == text


def test_estimate_to_dict_is_plain_and_strict_json():
    est = Estimate(np.float64(1.5), np.float32(0.25), 2.0, math.nan, np.int64(100))
    d = est.to_dict()
    assert d == {"mean": 1.5, "error": 0.25, "variance": 2.0, "tau_int": None, "n_samples": 100}
    assert type(d["mean"]) is float and type(d["n_samples"]) is int
    assert json.loads(json.dumps(d, allow_nan=False)) == d


# ---- input validation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("x", "match"),
    [
        ([], "empty"),
        (np.zeros((3, 0)), "empty"),
        ([1.0, np.nan, 2.0, np.inf], "2 non-finite"),
        ([1.0], "at least 2 samples"),
        (np.zeros((2, 2, 2)), "shape"),
    ],
)
def test_bad_input_is_rejected(x, match):
    for func in (estimate, integrated_autocorr_time, autocorrelation):
        with pytest.raises(ValueError, match=match):
            func(x)


def test_bad_options_are_rejected():
    x = np.arange(100.0)
    with pytest.raises(ValueError, match="method"):
        estimate(x, method="bootstrap")
    with pytest.raises(ValueError, match="min_bins"):
        binning(x[:10], min_bins=32)
    with pytest.raises(ValueError, match="window constant"):
        integrated_autocorr_time(x, c=0)
