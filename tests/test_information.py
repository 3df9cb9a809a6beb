"""The KSG mutual-information estimator against exact Gaussian values."""

import math

import numpy as np
import pytest

from deeprg.information import ksg_mutual_information, mutual_information_matrix


@pytest.mark.parametrize("rho", [0.0, 0.5, 0.9])
def test_ksg_matches_exact_gaussian_mutual_information(rho):
    rng = np.random.default_rng(0)
    cov = np.array([[1.0, rho], [rho, 1.0]])
    xy = rng.multivariate_normal([0, 0], cov, size=4000)
    est = ksg_mutual_information(xy[:, 0], xy[:, 1])
    exact = -0.5 * math.log(1 - rho**2)
    assert abs(est.mean - exact) < max(4 * est.error, 0.02)


def test_ksg_multivariate_blocks():
    rng = np.random.default_rng(1)
    cov = np.array([[1.0, 0.3, 0.6], [0.3, 1.0, 0.2], [0.6, 0.2, 1.0]])
    s = rng.multivariate_normal(np.zeros(3), cov, size=4000)
    exact = 0.5 * math.log(np.linalg.det(cov[:2, :2]) * cov[2, 2] / np.linalg.det(cov))
    est = ksg_mutual_information(s[:, :2], s[:, 2])
    assert abs(est.mean - exact) < max(4 * est.error, 0.02)


def test_mutual_information_matrix_is_symmetric_with_zero_diagonal():
    rng = np.random.default_rng(2)
    s = rng.multivariate_normal(np.zeros(3), [[1, 0.8, 0], [0.8, 1, 0], [0, 0, 1]], size=2000)
    m = mutual_information_matrix(s)
    assert np.allclose(m, m.T) and np.all(np.diag(m) == 0)
    assert m[0, 1] > 0.3 and abs(m[0, 2]) < 0.05


def test_ksg_rejects_bad_input():
    with pytest.raises(ValueError, match="same number of samples"):
        ksg_mutual_information(np.zeros(100), np.zeros(99))
    with pytest.raises(ValueError, match="k must be"):
        ksg_mutual_information(np.zeros(100), np.zeros(100), k=0)
    with pytest.raises(ValueError, match="finite"):
        ksg_mutual_information(np.full(100, np.nan), np.zeros(100))
