"""Mutual information between continuous variables from samples.

:func:`ksg_mutual_information` is estimator 1 of Kraskov, Stoegbauer & Grassberger,
Phys. Rev. E 69, 066138 (2004): with ``eps_i`` the max-norm distance from sample ``i`` to its
``k``-th neighbour in the joint space, and ``n_x(i)``, ``n_y(i)`` the numbers of other samples
strictly closer than ``eps_i`` in the marginal spaces,

    I(X; Y) = psi(k) + psi(N) - < psi(n_x + 1) + psi(n_y + 1) >.

It is nearly unbiased for independent variables and exact in the limit N -> infinity; the
error bar comes from the scatter over disjoint subsets of the samples.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.spatial import cKDTree
from scipy.special import digamma

from deeprg.mc.stats import Estimate

__all__ = ["ksg_mutual_information", "mutual_information_matrix"]


def _ksg(x: np.ndarray, y: np.ndarray, k: int) -> float:
    n = len(x)
    joint = np.hstack([x, y])
    eps = cKDTree(joint).query(joint, k=k + 1, p=np.inf)[0][:, -1]
    radius = np.nextafter(eps, 0.0)  # strictly closer than eps
    nx = cKDTree(x).query_ball_point(x, radius, p=np.inf, return_length=True) - 1
    ny = cKDTree(y).query_ball_point(y, radius, p=np.inf, return_length=True) - 1
    return float(digamma(k) + digamma(n) - np.mean(digamma(nx + 1) + digamma(ny + 1)))


def ksg_mutual_information(x: np.ndarray, y: np.ndarray, k: int = 3, n_splits: int = 8) -> Estimate:
    """KSG estimate of ``I(X; Y)`` in nats from paired samples ``x`` ``(n,)``/``(n, dx)`` and
    ``y`` ``(n,)``/``(n, dy)``. The mean uses all samples; the error is the standard deviation of
    the estimates on ``n_splits`` disjoint subsets divided by ``sqrt(n_splits)``."""
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    y = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
    if len(x) != len(y):
        raise ValueError(f"x and y must have the same number of samples, got {len(x)} and {len(y)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if len(x) < max(2 * (k + 1), n_splits * (k + 1)):
        raise ValueError(f"need at least {n_splits * (k + 1)} samples for k={k}, n_splits={n_splits}; got {len(x)}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("x and y must be finite")
    mean = _ksg(x, y, k)
    parts = [_ksg(xs, ys, k) for xs, ys in zip(np.array_split(x, n_splits), np.array_split(y, n_splits))]
    error = float(np.std(parts, ddof=1) / math.sqrt(n_splits))
    return Estimate(mean, error, float(np.var(parts, ddof=1)), math.nan, len(x))


def mutual_information_matrix(samples: np.ndarray, k: int = 3) -> np.ndarray:
    """Pairwise KSG mutual information between the variables of ``samples`` ``(n, m)``;
    returns a symmetric ``(m, m)`` array with zeros on the diagonal."""
    samples = np.asarray(samples, dtype=np.float64)
    m = samples.shape[1]
    out = np.zeros((m, m))
    for i in range(m):
        for j in range(i + 1, m):
            out[i, j] = out[j, i] = _ksg(samples[:, i : i + 1], samples[:, j : j + 1], k)
    return out
