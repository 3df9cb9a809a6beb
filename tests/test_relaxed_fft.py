"""The FFT (circulant) path of the relaxed Ising target against the dense path and exact answers.

``RelaxedIsing(method="fft")`` (the default) holds only the eigenvalues of ``A = K + alpha I``;
every quantity is compared with ``method="dense"`` and with matrices built here from
``Lattice.coupling_matrix`` (float64, to 1e-10, relative where magnitudes are large), on square,
rectangular, 1D and 3D lattices including extents of 2 (two bonds between the same pair).
"""

import math
import time

import numpy as np
import pytest
import torch

from deeprg import Lattice
from deeprg.flows.train import FlowTrainConfig, Trainer
from deeprg.models.circulant import CirculantOperator, adjacency_kernel, circulant_spectrum
from deeprg.models.enumeration import Enumeration
from deeprg.models.ising import K_C
from deeprg.models.relaxed import GaussianTarget, RelaxedIsing

torch.set_num_threads(1)

SHAPES = [(4, 4), (2, 2), (8, 8), (16, 16), (2, 8), (8,), (4, 4, 4)]


def dense_a(lattice, K, alpha):
    return lattice.coupling_matrix(K) + alpha * np.eye(lattice.n_sites)


def fields(shape, n, seed, scale=2.0):
    return torch.randn((n, *shape), generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale


# ---- the spectrum -------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", SHAPES + [(3, 5), (2,), (2, 2, 2)])
def test_spectrum_is_the_cosine_formula_and_the_kernel_is_row_0_of_the_adjacency(shape):
    lat = Lattice(shape)
    kernel = adjacency_kernel(lat)
    np.testing.assert_array_equal(kernel.reshape(-1), lat.adjacency()[0])
    K, alpha = 0.37, 2.5  # A positive definite in 3D too (lowest eigenvalue alpha - 6K)
    op = CirculantOperator.from_lattice(lat, K, alpha)
    k = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    formula = alpha + K * sum(2 * np.cos(2 * np.pi * km / n) for km, n in zip(k, shape))
    half = formula[..., : shape[-1] // 2 + 1]
    np.testing.assert_allclose(op.eigenvalues.numpy(), half, rtol=0, atol=1e-13)
    exact = np.linalg.eigvalsh(dense_a(lat, K, alpha))
    assert op.lowest == pytest.approx(exact[0], abs=1e-12) and op.highest == pytest.approx(exact[-1], abs=1e-12)
    assert op.ln_det == pytest.approx(float(np.sum(np.log(exact))), rel=1e-12)
    np.testing.assert_allclose(op.to_dense().numpy(), dense_a(lat, K, alpha), rtol=0, atol=1e-13)


def test_spectrum_of_an_odd_kernel_is_refused():
    with pytest.raises(ValueError, match="even"):
        circulant_spectrum(np.array([0.0, 1.0, 0.0, 0.0]))  # a one-sided shift: not symmetric
    with pytest.raises(ValueError, match="even"):
        CirculantOperator(np.array([1.0, 2.0, 3.0, 4.0]))
    not_positive = CirculantOperator.from_lattice(Lattice((4,)), 1.0)  # eigenvalues -2 .. 2
    assert not_positive.ln_det is None
    with pytest.raises(ValueError, match="positive definite"):
        not_positive.solve(torch.zeros(1, 4, dtype=torch.float64))


# ---- FFT target == dense target -----------------------------------------------------------------
@pytest.mark.parametrize("shape", SHAPES)
def test_fft_target_equals_dense_target(shape):
    lat = Lattice(shape)
    fft, dense = RelaxedIsing(lat, K_C), RelaxedIsing(lat, K_C, method="dense")
    assert fft.method == "fft" and dense.method == "dense" and dense.operator is None
    assert fft.alpha == pytest.approx(dense.alpha, abs=1e-10)
    assert fft.alpha == pytest.approx(0.1 - np.linalg.eigvalsh(lat.coupling_matrix(K_C))[0], abs=1e-10)
    assert fft.ln_det == pytest.approx(dense.ln_det, rel=1e-10, abs=1e-10)
    if lat.d == 3:
        assert fft.exact_ln_z is None and dense.exact_ln_z is None
    else:
        assert fft.exact_ln_z == pytest.approx(dense.exact_ln_z, rel=1e-10, abs=1e-10)
    x64 = fields(shape, 5, 1)
    x = x64.clone().requires_grad_(True)
    y = x64.clone().requires_grad_(True)
    a, b = fft.log_prob_unnormalized(x), dense.log_prob_unnormalized(y)
    assert a.shape == (5,) and a.dtype == torch.float64
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    a.sum().backward()
    b.sum().backward()
    torch.testing.assert_close(x.grad, y.grad, rtol=1e-10, atol=1e-10)
    # the gradient is -A^{-1} x + tanh(x), with A^{-1} from numpy
    inv = np.linalg.inv(dense_a(lat, K_C, dense.alpha))
    flat = x64.reshape(5, -1).numpy()
    np.testing.assert_allclose(x.grad.reshape(5, -1).numpy(), -flat @ inv + np.tanh(flat), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("shape", SHAPES)
def test_operator_products_equal_the_dense_matrices(shape):
    lat = Lattice(shape)
    target = RelaxedIsing(lat, 0.3, min_eigenvalue=0.2)
    op, n = target.operator, lat.n_sites
    a = dense_a(lat, 0.3, target.alpha)
    w, v = np.linalg.eigh(a)
    sqrt_a = (v * np.sqrt(w)) @ v.T
    x = fields(shape, 3, 2)
    flat = x.reshape(3, n).numpy()

    def close(got, expected):
        scale = max(1.0, float(np.abs(expected).max()))
        np.testing.assert_allclose(got.reshape(expected.shape).numpy() / scale, expected / scale, rtol=0, atol=1e-10)

    close(op.apply(x), flat @ a)
    close(op.solve(x), np.linalg.solve(a, flat.T).T)
    close(op.sqrt_apply(x), flat @ sqrt_a)
    close(op.sqrt_apply(op.sqrt_apply(x)), flat @ a)  # A^{1/2} A^{1/2} eps = A eps
    close(op.quadratic_inverse(x), np.einsum("bi,ij,bj->b", flat, np.linalg.inv(a), flat))
    close(op.quadratic(x), np.einsum("bi,ij,bj->b", flat, a, flat))
    assert op.quadratic_inverse(x).shape == (3,)
    assert target.ln_det == pytest.approx(float(np.linalg.slogdet(a)[1]), rel=1e-10)
    assert target.lowest_eigenvalue == pytest.approx(0.2, abs=1e-10)


def test_fft_target_with_explicit_alpha_equals_dense():
    lat = Lattice((2, 8))
    for alpha in (2.5, 5.0):  # the lowest eigenvalue of K * adjacency is -4K = -2
        fft, dense = RelaxedIsing(lat, 0.5, alpha=alpha), RelaxedIsing(lat, 0.5, alpha=alpha, method="dense")
        assert fft.alpha == dense.alpha == alpha
        assert fft.exact_ln_z == pytest.approx(dense.exact_ln_z, rel=1e-12)
    with pytest.raises(ValueError, match="alpha"):
        RelaxedIsing(lat, 0.5, alpha=-np.linalg.eigvalsh(lat.coupling_matrix(0.5))[0])  # singular


# ---- exact reference samples --------------------------------------------------------------------
def z_scores(values, expected, tau):
    """(sample mean - expected) / standard error for each column of ``values`` ``(n, k)``, the
    standard error inflated by ``sqrt(2 tau)`` for autocorrelation."""
    n = len(values)
    return (values.mean(axis=0) - expected) / (values.std(axis=0, ddof=1) * math.sqrt(2.0 * tau / n))


@pytest.mark.parametrize("shape, seed", [((2, 2), 21), ((4,), 22)])
def test_fft_reference_samples_have_mean_zero_and_covariance_a_plus_a_ss_a(shape, seed):
    lat = Lattice(shape)
    target = RelaxedIsing(lat, K_C)
    n = 40_000
    x, info = target.sample_reference(n, seed, n_chains=2)
    assert x.shape == (n, *shape) and x.dtype == torch.float64
    e = Enumeration(lat, K_C)
    s = e.configurations.reshape(len(e.probabilities), -1).astype(np.float64)
    a = dense_a(lat, K_C, target.alpha)
    cov = a + a @ ((s.T * e.probabilities) @ s) @ a
    flat = x.reshape(n, -1).numpy()
    tau = info["tau_int"]
    assert np.all(np.abs(z_scores(flat, 0.0, tau)) < 5)
    iu = np.triu_indices(lat.n_sites)
    products = flat[:, iu[0]] * flat[:, iu[1]]
    assert np.all(np.abs(z_scores(products, cov[iu], tau)) < 5)
    # the test has power: without the noise covariance A, or with A^2 for it, it fails
    assert np.abs(z_scores(products, (cov - a)[iu], tau)).max() > 20
    assert np.abs(z_scores(products, (cov - a + a @ a)[iu], tau)).max() > 20


def test_fft_reference_samples_are_reproducible_and_differ_from_the_dense_ones():
    lat = Lattice((4, 4))
    fft, dense = RelaxedIsing(lat, K_C), RelaxedIsing(lat, K_C, method="dense")
    x, info = fft.sample_reference(50, 3, n_chains=2)
    assert torch.equal(x, fft.sample_reference(50, 3, n_chains=2)[0])
    y, info_dense = dense.sample_reference(50, 3, n_chains=2)
    # same spins s and noise eps, B = A^{1/2} against chol(A): equally exact, different fields ...
    assert not torch.allclose(x, y)
    assert info["thin"] == info_dense["thin"] and info["tau_int"] == info_dense["tau_int"]
    # ... from the same s and eps: x - y = (A^{1/2} - chol(A)) eps gives eps, then
    # A^{-1} (x - A^{1/2} eps) is the spin configuration, +-1 to rounding
    a = dense_a(lat, K_C, fft.alpha)
    w, v = np.linalg.eigh(a)
    sqrt_a = (v * np.sqrt(w)) @ v.T
    xf, yf = x.reshape(50, -1).numpy(), y.reshape(50, -1).numpy()
    eps = np.linalg.solve(sqrt_a - np.linalg.cholesky(a), (xf - yf).T)
    spins = np.linalg.solve(a, xf.T - sqrt_a @ eps)
    np.testing.assert_allclose(np.abs(spins), 1.0, atol=1e-6)


# ---- large lattices -----------------------------------------------------------------------------
def test_construction_at_128x128_is_fast_and_holds_no_n_by_n_tensor():
    n = 128 * 128
    t0 = time.perf_counter()
    target = RelaxedIsing(Lattice.square(128), K_C)
    assert time.perf_counter() - t0 < 5.0
    target(fields((128, 128), 2, 3))
    target(fields((128, 128), 2, 3).float())
    tensors = list(target.state_dict().values()) + list(target.operator._cache.values())
    assert tensors and max(t.numel() for t in tensors) <= 4 * n
    assert sum(t.numel() for t in target.buffers()) <= n
    with pytest.raises(AttributeError, match="method='dense'"):
        target.precision
    assert target.exact_ln_z == pytest.approx(RelaxedIsing(Lattice.square(128), K_C, alpha=target.alpha).exact_ln_z,
                                              rel=1e-14)


def test_float32_log_prob_at_128x128_matches_float64():
    target = RelaxedIsing(Lattice.square(128), K_C)
    x = fields((128, 128), 3, 4, scale=1.5)
    expected = target(x)
    x32 = x.float().requires_grad_(True)
    out = target(x32)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=0)
    out.sum().backward()
    x64 = x.clone().requires_grad_(True)
    target(x64).sum().backward()
    torch.testing.assert_close(x32.grad.double(), x64.grad, rtol=0, atol=1e-5 * float(x64.grad.abs().max()))


def test_eigenvalues_are_converted_once_per_dtype():
    target = RelaxedIsing(Lattice.square(8), K_C)
    x = fields((8, 8), 2, 5).float()
    target(x)
    first = dict(target.operator._cache)
    target(x)
    target(x * 2)
    assert target.operator._cache.keys() == first.keys()
    assert all(target.operator._cache[k] is first[k] for k in first)


def test_relaxed_ising_at_64x64_gives_finite_log_prob_and_gradients():
    target = RelaxedIsing(Lattice.square(64), K_C)
    x = fields((64, 64), 4, 6).float().requires_grad_(True)
    out = target(x)
    assert out.shape == (4,) and torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_memory_estimate_of_training_counts_the_target_as_linear_in_n():
    small = FlowTrainConfig(L=128, batch=2, hidden=[1], n_couplings=1)
    estimate, what = small.memory_estimate()
    assert estimate < 1e8  # the dense target alone would need 6 N^2 x 8 bytes = 12.9 GB
    assert "L" in what


@pytest.mark.slow
@pytest.mark.parametrize("L", [64, 128])
def test_a_tiny_flow_trains_at_large_l_on_the_fft_target(L):
    cfg = FlowTrainConfig(L=L, hidden=[4], depth=1, n_couplings=1, batch=4, steps=2, threads=1)
    trainer = Trainer(cfg)
    assert isinstance(trainer.target, RelaxedIsing) and trainer.target.method == "fft"
    trainer.train()
    assert len(trainer.history) == 2
    assert all(math.isfinite(r["loss"]) for r in trainer.history)


# ---- the circulant Gaussian ---------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(4, 4), (2, 8), (6,), (2, 2, 2)])
def test_circulant_gaussian_equals_dense_gaussian(shape):
    lat = Lattice(shape)
    fft = GaussianTarget.lattice_correlated(lat, c=0.7, mass=0.3, method="fft")
    dense = GaussianTarget.lattice_correlated(lat, c=0.7, mass=0.3)
    assert fft.exact_ln_z == pytest.approx(dense.exact_ln_z, rel=1e-12)
    x = fields(shape, 4, 7)
    torch.testing.assert_close(fft(x), dense(x), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(fft.operator.to_dense().numpy(), dense.precision.numpy(), atol=1e-13)
    with pytest.raises(AttributeError, match="operator"):
        fft.covariance


def test_circulant_gaussian_samples_have_the_covariance():
    lat = Lattice((2, 2))
    target = GaussianTarget.lattice_correlated(lat, c=1.0, method="fft")
    x, info = target.sample_reference(50_000, 3)
    assert x.shape == (50_000, 2, 2) and x.dtype == torch.float64 and info["tau_int"] == 0.5
    flat = x.reshape(-1, 4).numpy()
    cov = np.linalg.inv(GaussianTarget.lattice_correlated(lat, c=1.0).precision.numpy())
    iu = np.triu_indices(4)
    products = flat[:, iu[0]] * flat[:, iu[1]]
    assert np.all(np.abs(z_scores(products, cov[iu], 0.5)) < 5)
    assert np.all(np.abs(z_scores(flat, 0.0, 0.5)) < 5)
    assert torch.equal(x, target.sample_reference(50_000, 3)[0])


# ---- bad input and devices ----------------------------------------------------------------------
def test_bad_method_is_refused():
    for method in ("eigh", "FFT", None):
        with pytest.raises(ValueError, match=r"method must be one of \('fft', 'dense'\)"):
            RelaxedIsing(Lattice((4, 4)), K_C, method=method)
        with pytest.raises(ValueError, match="method must be one of"):
            GaussianTarget.lattice_correlated(Lattice((4, 4)), method=method)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fft_target_on_cuda_matches_the_cpu():
    cpu = RelaxedIsing(Lattice.square(32), K_C)
    gpu = RelaxedIsing(Lattice.square(32), K_C).to("cuda")
    assert gpu.operator.eigenvalues.device.type == "cuda"
    x = fields((32, 32), 4, 8)
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-5)):
        xg = x.to(device="cuda", dtype=dtype).requires_grad_(True)
        out = gpu(xg)
        assert out.device.type == "cuda" and out.dtype == dtype
        torch.testing.assert_close(out.double().cpu(), cpu(x), rtol=tol, atol=0)
        out.sum().backward()
        assert torch.isfinite(xg.grad).all()
    samples, _ = gpu.sample_reference(16, 1)
    assert samples.device.type == "cuda"
    torch.testing.assert_close(samples.cpu(), cpu.sample_reference(16, 1)[0], rtol=0, atol=1e-10)
