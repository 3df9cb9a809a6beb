"""Hybrid Monte Carlo leaves known distributions invariant."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from deeprg.mc.hmc import HMCDivergence, hmc
from deeprg.mc.stats import estimate

torch.set_num_threads(1)


def gaussian_log_prob(precision):
    def log_prob(x):
        return -0.5 * torch.einsum("bi,ij,bj->b", x, precision, x)

    return log_prob


def test_correlated_gaussian_moments_within_error_bars():
    cov = torch.tensor([[1.0, 0.8, 0.0], [0.8, 1.0, 0.3], [0.0, 0.3, 0.5]], dtype=torch.float64)
    precision = torch.linalg.inv(cov)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(64, 3, generator=gen, dtype=torch.float64)
    obs = {f"x{i}": (lambda x, i=i: x[:, i]) for i in range(3)}
    obs.update({f"x{i}x{j}": (lambda x, i=i, j=j: x[:, i] * x[:, j]) for i in range(3) for j in range(i, 3)})
    res = hmc(gaussian_log_prob(precision), x0, 400, step_size=0.3, n_leapfrog=5, warmup=100,
              observables=obs, generator=gen)
    assert res.acceptance_rate > 0.6
    for i in range(3):
        est = estimate(res.series[f"x{i}"].T.numpy()[:, 50:])
        assert abs(est.mean) < 4 * est.error
        for j in range(i, 3):
            est = estimate(res.series[f"x{i}x{j}"].T.numpy()[:, 50:])
            assert abs(est.mean - cov[i, j].item()) < 4 * est.error, (i, j, est)


def test_double_well_histogram_matches_exact_density():
    def log_prob(x):
        return -2.0 * (x[:, 0] ** 2 - 1.0) ** 2

    norm = integrate.quad(lambda v: math.exp(-2.0 * (v * v - 1.0) ** 2), -4, 4)[0]
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randn(200, 1, generator=gen, dtype=torch.float64)
    res = hmc(log_prob, x0, 300, step_size=0.25, n_leapfrog=8, warmup=50,
              observables={"x": lambda x: x[:, 0]}, generator=gen)
    samples = res.series["x"][::5].reshape(-1).numpy()  # thinned: nearly independent
    edges = np.linspace(-2.0, 2.0, 17)
    counts, _ = np.histogram(samples, bins=np.concatenate([[-np.inf], edges[1:-1], [np.inf]]))
    cdf = np.array([integrate.quad(lambda v: math.exp(-2.0 * (v * v - 1.0) ** 2), -4, e)[0] / norm
                    for e in edges[1:-1]])
    probs = np.diff(np.concatenate([[0.0], cdf, [1.0]]))
    chi2 = stats.chisquare(counts, probs * counts.sum())
    assert chi2.pvalue > 1e-3


def test_step_size_adaptation_reaches_target_acceptance():
    gen = torch.Generator().manual_seed(2)
    precision = torch.eye(10, dtype=torch.float64) * 4.0
    res = hmc(gaussian_log_prob(precision), torch.zeros(32, 10, dtype=torch.float64), 100,
              step_size=2.0, n_leapfrog=5, warmup=200, target_acceptance=0.7, generator=gen)
    assert abs(res.acceptance_rate - 0.7) < 0.12


def test_non_finite_energies_stop_the_run():
    def log_prob(x):
        v = x[:, 0]
        return torch.where(v.abs() < 3, -0.5 * v * v, torch.full_like(v, math.nan))

    with pytest.raises(HMCDivergence, match="reduce the step size"):
        hmc(log_prob, torch.zeros(16, 1, dtype=torch.float64), 50, step_size=50.0, n_leapfrog=3,
            generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize(
    "kwargs, match",
    [({"n_steps": 0}, "n_steps"), ({"step_size": -1.0}, "step_size"), ({"n_leapfrog": 0}, "n_leapfrog"),
     ({"warmup": -1}, "warmup"), ({"target_acceptance": 1.0}, "target_acceptance"), ({"jitter": 1.0}, "jitter")],
)
def test_bad_arguments(kwargs, match):
    args = {"n_steps": 10, **kwargs}
    with pytest.raises(ValueError, match=match):
        hmc(gaussian_log_prob(torch.eye(2, dtype=torch.float64)), torch.zeros(4, 2, dtype=torch.float64), **args)
