"""Continuous targets: NeuralRG's relaxed Ising model (Li & Wang Eq. 7) and correlated Gaussians.

Exact partition functions are checked against direct numerical integration over R^N and against an
enumeration of the spin sum that does not use Kaufman's solution; published values are in
``tests/data/reference_values.json``.
"""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.polynomial.hermite_e import hermegauss
from scipy import integrate, stats
from scipy.special import logsumexp

from deeprg import Lattice
from deeprg.models.enumeration import all_configurations
from deeprg.models.ising import K_C
from deeprg.models.relaxed import (
    GaussianTarget,
    RelaxedIsing,
    Target,
    log_cosh,
    reference_sampler,
)

torch.set_num_threads(1)

DATA = Path(__file__).parent / "data" / "reference_values.json"


# ---- independent oracles --------------------------------------------------------------------
def lowest_eigenvalue(lattice, K):
    return float(np.linalg.eigvalsh(lattice.coupling_matrix(K))[0])


def ln_z_by_gauss_hermite(lattice, K, alpha, n_nodes):
    """ln of int exp(-x^T A^-1 x / 2) prod cosh(x_i) dx with x = C y, A = C C^T, and an
    ``n_nodes``-point probabilists' Gauss-Hermite rule in every whitened coordinate y."""
    n = lattice.n_sites
    a = lattice.coupling_matrix(K) + alpha * np.eye(n)
    chol = np.linalg.cholesky(a)
    y, w = hermegauss(n_nodes)
    grid = np.stack(np.meshgrid(*[y] * n, indexing="ij"), axis=-1).reshape(-1, n)
    ln_w = sum(np.meshgrid(*[np.log(w)] * n, indexing="ij")).ravel()
    x = grid @ chol.T
    ln_cosh = np.abs(x) + np.log1p(np.exp(-2.0 * np.abs(x))) - math.log(2.0)
    return float(np.sum(np.log(np.diag(chol))) + logsumexp(ln_w + ln_cosh.sum(axis=1)))


def ln_z_by_spin_sum(lattice, K, alpha):
    """2^-N sum_s int exp(-x^T A^-1 x / 2 + s.x) dx
    = 2^-N (2 pi)^{N/2} det(A)^{1/2} sum_s exp(s^T A s / 2), summed over all 2^N spins."""
    n = lattice.n_sites
    a = lattice.coupling_matrix(K) + alpha * np.eye(n)
    s = all_configurations(lattice).reshape(-1, n).astype(np.float64)
    sign, ln_det = np.linalg.slogdet(a)
    assert sign > 0
    return float(logsumexp(0.5 * np.einsum("ci,ij,cj->c", s, a, s)) + 0.5 * n * math.log(2 * math.pi)
                 + 0.5 * ln_det - n * math.log(2.0))


def numpy_log_prob(lattice, K, alpha, x):
    n = lattice.n_sites
    flat = np.asarray(x, dtype=np.float64).reshape(len(x), n)
    inv = np.linalg.inv(lattice.coupling_matrix(K) + alpha * np.eye(n))
    return -0.5 * np.einsum("bi,ij,bj->b", flat, inv, flat) + np.log(np.cosh(flat)).sum(axis=1)


# ---- RelaxedIsing: construction and exact ln Z ------------------------------------------------
@pytest.mark.parametrize("method", ["fft", "dense"])
@pytest.mark.parametrize("shape", [(2, 2), (4, 4), (3, 4), (6,), (2, 2, 2)])
def test_alpha_sets_lowest_eigenvalue(shape, method):
    lat = Lattice(shape)
    target = RelaxedIsing(lat, 0.37, min_eigenvalue=0.25, method=method)
    assert target.method == method
    assert target.alpha == pytest.approx(0.25 - lowest_eigenvalue(lat, 0.37), abs=1e-13)
    if method == "dense":
        assert target.precision.dtype == torch.float64
        a = np.linalg.inv(target.precision.numpy())
    else:
        assert target.operator.eigenvalues.dtype == torch.float64
        a = target.operator.to_dense().numpy()
    assert np.linalg.eigvalsh(a)[0] == pytest.approx(0.25, abs=1e-12)
    assert target.lowest_eigenvalue == pytest.approx(0.25, abs=1e-12)
    assert target.event_shape == shape and target.lattice == lat and target.K == 0.37
    assert isinstance(target, Target)


@pytest.mark.parametrize("K", [0.2, K_C])
def test_exact_ln_z_2x2_against_gauss_hermite(K):
    lat = Lattice((2, 2))
    target = RelaxedIsing(lat, K)
    errors = [abs(ln_z_by_gauss_hermite(lat, K, target.alpha, n) - target.exact_ln_z)
              for n in (8, 12, 16, 20)]
    assert errors[0] > errors[1] > errors[2]  # the quadrature converges towards exact_ln_z ...
    assert errors[-1] < 1e-10  # ... to rounding


@pytest.mark.parametrize("shape", [(3, 3), (4, 4), (3, 4), (2, 3), (8,)])
@pytest.mark.parametrize("K", [0.15, K_C, 0.9])
def test_exact_ln_z_against_spin_sum(shape, K):
    lat = Lattice(shape)
    target = RelaxedIsing(lat, K)
    assert target.exact_ln_z == pytest.approx(ln_z_by_spin_sum(lat, K, target.alpha), abs=1e-10)


def test_exact_ln_z_with_explicit_alpha():
    lat = Lattice((3, 3))
    for alpha in (2.0, 5.0):
        target = RelaxedIsing(lat, K_C, alpha=alpha)
        assert target.alpha == alpha
        assert target.exact_ln_z == pytest.approx(ln_z_by_spin_sum(lat, K_C, alpha), abs=1e-10)
    # ln Z - ln det(A) / 2 - N alpha / 2 = ln Z_Ising + (N/2) ln(pi/2) whatever alpha
    a, b = RelaxedIsing(lat, K_C, alpha=2.0), RelaxedIsing(lat, K_C, min_eigenvalue=0.7)
    shifted = [t.exact_ln_z - 0.5 * t.ln_det - 4.5 * t.alpha for t in (a, b)]
    assert shifted[0] == pytest.approx(shifted[1], abs=1e-12)


def test_exact_ln_z_unknown_in_3d():
    target = RelaxedIsing(Lattice((2, 2, 2)), 0.2)
    assert target.exact_ln_z is None and target.ln_z_ising is None


def test_published_values_at_critical_coupling():
    ref = json.loads(DATA.read_text())["relaxed_ising_neg_ln_z_critical"]
    assert "Li & Wang" in ref["source"]
    assert ref["min_eigenvalue"] == 0.1
    for L, neg_ln_z in ref["values"].items():
        target = RelaxedIsing(Lattice.square(int(L)), K_C, min_eigenvalue=ref["min_eigenvalue"])
        assert -target.exact_ln_z == pytest.approx(neg_ln_z, abs=1e-3)


# ---- RelaxedIsing: log-density and spins ------------------------------------------------------
def test_log_prob_against_numpy(rng):
    lat = Lattice((4, 4))
    target = RelaxedIsing(lat, 0.3)
    x = rng.normal(scale=2.0, size=(7, 4, 4))
    expected = numpy_log_prob(lat, 0.3, target.alpha, x)
    out = target.log_prob_unnormalized(torch.from_numpy(x))
    assert out.shape == (7,) and out.dtype == torch.float64
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-13, atol=1e-12)
    out32 = target(torch.from_numpy(x).float())
    assert out32.shape == (7,) and out32.dtype == torch.float32 and out32.device == torch.device("cpu")
    np.testing.assert_allclose(out32.numpy(), expected, rtol=1e-5)


def test_log_prob_gradient_and_large_fields():
    lat = Lattice((3, 3))
    target = RelaxedIsing(lat, K_C)
    x = torch.linspace(-3.0, 3.0, 18, dtype=torch.float64).reshape(2, 3, 3).requires_grad_(True)
    target.log_prob_unnormalized(x).sum().backward()
    flat = x.detach().reshape(2, 9)
    precision = torch.from_numpy(np.linalg.inv(lat.coupling_matrix(K_C) + target.alpha * np.eye(9)))
    expected = -flat @ precision + torch.tanh(flat)  # d ln pi / dx
    torch.testing.assert_close(x.grad.reshape(2, 9), expected, rtol=1e-12, atol=1e-12)
    big = torch.tensor([1e4, -1e4, 800.0, -90.0], dtype=torch.float32)
    torch.testing.assert_close(log_cosh(big), big.abs() - math.log(2.0))
    small = torch.tensor([0.0, 1e-3, -0.7, 5.0], dtype=torch.float64)
    torch.testing.assert_close(log_cosh(small), torch.log(torch.cosh(small)), rtol=1e-14, atol=1e-15)
    assert torch.isfinite(target.log_prob_unnormalized(torch.full((1, 3, 3), 1e3))).all()


def test_log_prob_rejects_bad_shapes():
    target = RelaxedIsing(Lattice((4, 4)), K_C)
    with pytest.raises(ValueError, match="shape"):
        target.log_prob_unnormalized(torch.zeros(3, 16))
    with pytest.raises(ValueError, match="shape"):
        target.log_prob_unnormalized(torch.zeros(4, 4))
    with pytest.raises(TypeError):
        target.log_prob_unnormalized(torch.zeros(2, 4, 4, dtype=torch.int64))


def test_sample_spins_mean_is_tanh():
    target = RelaxedIsing(Lattice((2, 2)), K_C)
    field = torch.tensor([[-1.5, -0.3], [0.0, 0.8]], dtype=torch.float64)
    n = 40_000
    x = field.expand(n, 2, 2)
    s = target.sample_spins(x, generator=torch.Generator().manual_seed(7))
    assert s.dtype == torch.int8 and s.shape == (n, 2, 2)
    assert set(torch.unique(s).tolist()) == {-1, 1}
    mean = s.double().mean(dim=0)
    err = torch.sqrt((1 - torch.tanh(field) ** 2) / n)
    assert torch.all((mean - torch.tanh(field)).abs() < 5 * err)
    again = target.sample_spins(x, generator=torch.Generator().manual_seed(7))
    assert torch.equal(s, again)
    other = target.sample_spins(x, generator=torch.Generator().manual_seed(8))
    assert not torch.equal(s, other)
    strong = target.sample_spins(torch.full((5, 2, 2), 50.0), generator=torch.Generator().manual_seed(0))
    assert torch.all(strong == 1)


# ---- RelaxedIsing: bad inputs -----------------------------------------------------------------
@pytest.mark.parametrize("K", [0.0, -0.4, float("nan"), float("inf")])
def test_bad_coupling(K):
    with pytest.raises(ValueError, match="K"):
        RelaxedIsing(Lattice((4, 4)), K)


def test_bad_alpha_and_min_eigenvalue():
    lat = Lattice((4, 4))
    edge = -lowest_eigenvalue(lat, K_C)  # 4 K_c: K + edge * I is singular
    for alpha in (edge, edge - 0.5, 0.0, float("nan")):
        with pytest.raises(ValueError, match="alpha"):
            RelaxedIsing(lat, K_C, alpha=alpha)
    RelaxedIsing(lat, K_C, alpha=edge + 1e-3)
    for m in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match="min_eigenvalue"):
            RelaxedIsing(lat, K_C, min_eigenvalue=m)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("method", ["fft", "dense"])
def test_relaxed_ising_on_cuda(method):
    target = RelaxedIsing(Lattice((4, 4)), K_C, method=method).to("cuda")
    x = torch.randn(3, 4, 4, device="cuda")
    buffer = target.precision if method == "dense" else target.operator.eigenvalues
    assert buffer.dtype == torch.float64 and buffer.device.type == "cuda"
    out = target.log_prob_unnormalized(x)
    assert out.device == x.device and out.dtype == torch.float32
    s = target.sample_spins(x, generator=torch.Generator("cuda").manual_seed(0))
    assert s.device == x.device and s.dtype == torch.int8


# ---- GaussianTarget ---------------------------------------------------------------------------
def test_gaussian_exact_ln_z_against_quadrature():
    precision = np.array([[2.0, 0.7], [0.7, 1.0]])
    target = GaussianTarget((2,), precision=precision)
    assert isinstance(target, Target)

    # trapezoid rule on a wide grid: spectrally accurate for a smooth, rapidly decaying integrand
    for h, tol in ((0.5, 1e-3), (0.1, 1e-12)):
        t = torch.arange(-14.0, 14.0 + h / 2, h, dtype=torch.float64)
        grid = torch.stack(torch.meshgrid(t, t, indexing="ij"), dim=-1).reshape(-1, 2)
        ln_z = torch.logsumexp(target.log_prob_unnormalized(grid), dim=0).item() + 2 * math.log(h)
        assert ln_z == pytest.approx(target.exact_ln_z, abs=tol)
    scipy_z, _ = integrate.dblquad(lambda y, x: math.exp(-0.5 * (2 * x * x + 1.4 * x * y + y * y)),
                                   -np.inf, np.inf, -np.inf, np.inf, epsabs=1e-12, epsrel=1e-11)
    assert target.exact_ln_z == pytest.approx(math.log(scipy_z), abs=1e-9)
    lat = GaussianTarget.lattice_correlated(Lattice((2,)), c=0.8)  # P = [[2.6, -1.6], [-1.6, 2.6]]
    np.testing.assert_allclose(lat.precision.numpy(), [[2.6, -1.6], [-1.6, 2.6]], atol=1e-15)
    expected = math.log(2 * math.pi) - 0.5 * math.log(2.6**2 - 1.6**2)
    assert lat.exact_ln_z == pytest.approx(expected, abs=1e-13)


def test_gaussian_log_density_against_scipy(rng):
    lat = Lattice((3, 3))
    target = GaussianTarget.lattice_correlated(lat, c=1.5, mass=0.4)
    precision = target.precision.numpy()
    assert np.allclose(precision, precision.T)
    assert np.all(precision.sum(axis=1) == pytest.approx(0.4))  # mass I + c * Laplacian
    x = rng.normal(size=(6, 3, 3))
    mvn = stats.multivariate_normal(mean=np.zeros(9), cov=np.linalg.inv(precision))
    logpdf = mvn.logpdf(x.reshape(6, 9))
    out = target.log_prob_unnormalized(torch.from_numpy(x)).numpy()
    diff = out - logpdf
    np.testing.assert_allclose(diff, diff[0], atol=1e-11)  # equal up to a constant ...
    assert diff[0] == pytest.approx(target.exact_ln_z, abs=1e-11)  # ... which is ln Z
    from_cov = GaussianTarget((3, 3), covariance=np.linalg.inv(precision))
    assert from_cov.exact_ln_z == pytest.approx(target.exact_ln_z, abs=1e-11)
    assert target(torch.from_numpy(x).float()).dtype == torch.float32


def test_gaussian_samples_have_the_covariance():
    target = GaussianTarget.lattice_correlated(Lattice((2, 2)), c=1.0)
    x = target.sample(50_000, generator=torch.Generator().manual_seed(3))
    assert x.shape == (50_000, 2, 2) and x.dtype == torch.float64
    cov = np.cov(x.reshape(-1, 4).numpy(), rowvar=False)
    np.testing.assert_allclose(cov, target.covariance.numpy(), atol=0.02)


def test_gaussian_bad_inputs():
    with pytest.raises(ValueError, match="positive definite"):
        GaussianTarget((2,), precision=[[1.0, 2.0], [2.0, 1.0]])
    with pytest.raises(ValueError, match="positive definite"):
        GaussianTarget((2,), covariance=[[1.0, 0.0], [0.0, 0.0]])
    with pytest.raises(ValueError, match="symmetric"):
        GaussianTarget((2,), precision=[[1.0, 0.5], [0.0, 1.0]])
    with pytest.raises(ValueError, match="shape"):
        GaussianTarget((3,), precision=np.eye(2))
    with pytest.raises(ValueError, match="exactly one"):
        GaussianTarget((2,), precision=np.eye(2), covariance=np.eye(2))
    with pytest.raises(ValueError, match="c must"):
        GaussianTarget.lattice_correlated(Lattice((4, 4)), c=-0.1)
    with pytest.raises(ValueError, match="mass"):
        GaussianTarget.lattice_correlated(Lattice((4, 4)), mass=0.0)


# ---- exact reference samples ------------------------------------------------------------------
def hotelling_chi2(values, expected, tau):
    """``d^T Cov(mean)^-1 d`` of the sample means of ``values`` ``(n, k)`` against ``expected``
    ``(k,)``, the covariance of the means inflated by ``2 tau``; chi-square with k dof."""
    n = len(values)
    d = values.mean(axis=0) - expected
    cov = np.atleast_2d(np.cov(values, rowvar=False)) * 2.0 * tau / n
    return float(d @ np.linalg.solve(cov, d)), len(d)


def exact_field_moments(lattice, K, alpha):
    """``Cov x = A + A <s s^T> A`` with ``<s s^T>`` by enumeration, ``A = K + alpha I``."""
    from deeprg.models.enumeration import Enumeration

    e = Enumeration(lattice, K)
    s = e.configurations.reshape(len(e.probabilities), -1).astype(np.float64)
    ss = (s.T * e.probabilities) @ s
    a = lattice.coupling_matrix(K) + alpha * np.eye(lattice.n_sites)
    return a + a @ ss @ a, a


@pytest.mark.parametrize("shape, K, n_chains, seed", [((3, 3), K_C, 1, 11), ((4, 4), K_C, 4, 12),
                                                      ((4, 4), 0.3, 1, 13)])
def test_reference_samples_have_the_exact_moments(shape, K, n_chains, seed):
    lat = Lattice(shape)
    target = RelaxedIsing(lat, K)
    n = 40_000
    x, info = target.sample_reference(n, seed, n_chains=n_chains)
    assert x.shape == (n,) + shape and x.dtype == torch.float64
    assert info["n_chains"] == n_chains and info["sampler"] == "wolff" and info["thin"] >= 1
    assert 0.4 < info["tau_int"] < 0.6  # thinned to nearly independent samples
    cov, a = exact_field_moments(lat, K, target.alpha)
    flat = x.reshape(n, -1).numpy()
    # E[x] = 0
    chi2, dof = hotelling_chi2(flat, np.zeros(lat.n_sites), info["tau_int"])
    assert stats.chi2.sf(chi2, dof) > 1e-3
    # E[x_i x_j] = (A + A <s s^T> A)_ij over i <= j
    iu = np.triu_indices(lat.n_sites)
    products = flat[:, iu[0]] * flat[:, iu[1]]
    chi2, dof = hotelling_chi2(products, cov[iu], info["tau_int"])
    assert stats.chi2.sf(chi2, dof) > 1e-3
    # the test has power: leaving out the noise covariance A is rejected
    wrong, _ = hotelling_chi2(products, (cov - a)[iu], info["tau_int"])
    assert stats.chi2.sf(wrong, dof) < 1e-12


def test_reference_sampler_records_the_autocorrelation():
    target = RelaxedIsing(Lattice((4, 4)), K_C)
    _, info = target.sample_reference(4000, 5, sampler="metropolis", n_chains=2, thin=1, burn_in=200)
    assert info["thin"] == 1 and info["burn_in"] == 200 and info["pilot_tau_int"] is None
    assert info["tau_int"] > 1.2  # one Metropolis sweep apart: strongly correlated, and recorded
    assert info["tau_int"] == max(info["tau_int_energy"], info["tau_int_abs_magnetization"])
    _, auto = target.sample_reference(4000, 5, sampler="metropolis", n_chains=2)
    assert auto["thin"] >= 4 * auto["pilot_tau_int"] and auto["tau_int"] < 0.65
    assert auto["seconds"] > 0
    # one sample per chain: independent by construction
    few, info = target.sample_reference(3, 5, n_chains=4)
    assert few.shape == (3, 4, 4) and info["tau_int"] == 0.5


def test_reference_samples_are_reproducible():
    target = RelaxedIsing(Lattice((4, 4)), K_C)
    x, _ = target.sample_reference(50, 3, n_chains=2)
    y, _ = target.sample_reference(50, 3, n_chains=2)
    z, _ = target.sample_reference(50, 4, n_chains=2)
    assert torch.equal(x, y) and not torch.equal(x, z)


def test_reference_sampler_protocol():
    target = RelaxedIsing(Lattice((4, 4)), K_C)
    sample = reference_sampler(target)
    x = sample(64, 2)
    assert x.shape == (64, 4, 4) and x.dtype == torch.float64
    assert torch.equal(x, target.sample_reference(64, 2)[0])
    gauss = GaussianTarget.lattice_correlated(Lattice((2, 2)), c=1.0)
    g, info = gauss.sample_reference(20_000, 9)
    assert g.shape == (20_000, 2, 2) and info["tau_int"] == 0.5 and info["n_chains"] == 1
    np.testing.assert_allclose(np.cov(g.reshape(-1, 4).numpy(), rowvar=False), gauss.covariance.numpy(), atol=0.03)
    assert torch.equal(reference_sampler(gauss, required=True)(100, 9), g[:100])

    class NoSampler:
        event_shape = (2,)
        exact_ln_z = None

        def log_prob_unnormalized(self, x):
            return -0.5 * (x**2).sum(-1)

    assert reference_sampler(NoSampler()) is None
    with pytest.raises(ValueError, match="NoSampler has no exact reference sampler.*latent HMC"):
        reference_sampler(NoSampler(), required=True)


def test_reference_sampler_bad_inputs():
    target = RelaxedIsing(Lattice((4, 4)), K_C)
    for kwargs, match in [({"n": 0}, "n must"), ({"n": 2.5}, "n must"), ({"n_chains": 0}, "n_chains"),
                          ({"sampler": "heatbath"}, "sampler"), ({"thin": 0}, "thin"), ({"thin": "fast"}, "thin")]:
        args = {"n": 10, "seed": 0} | kwargs
        with pytest.raises(ValueError, match=match):
            target.sample_reference(**args)
    with pytest.raises(ValueError, match="n must"):
        GaussianTarget((2,), precision=np.eye(2)).sample_reference(0, 1)
