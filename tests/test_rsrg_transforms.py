"""RG transformations: majority rule, decimation and the RBM projector against enumeration and loops."""

import itertools

import numpy as np
import pytest
import torch
from scipy import stats

from deeprg.rsrg.rbm import coupling_matrix, hidden_field, receptive_field
from deeprg.rsrg.transforms import (
    Decimation,
    MajorityRule,
    RBMProjector,
    check_levels,
    coarse_grain,
    level_generators,
)

torch.set_num_threads(1)

ALL_2X2 = np.array(list(itertools.product([-1, 1], repeat=4)), dtype=np.int8).reshape(16, 2, 2)


def loop_couplings(w: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """W_iJ by the definition: entry (a, b) of the filter couples coarse (I0, I1) to the fine site
    (2 I0 - f/2 + 1 + a, 2 I1 - f/2 + 1 + b) mod L."""
    f = len(w)
    L0, L1 = shape
    W = np.zeros((L0 * L1, L0 * L1 // 4))
    for I0 in range(L0 // 2):
        for I1 in range(L1 // 2):
            for a in range(f):
                for b in range(f):
                    x, y = (2 * I0 - f // 2 + 1 + a) % L0, (2 * I1 - f // 2 + 1 + b) % L1
                    W[x * L1 + y, I0 * (L1 // 2) + I1] += w[a, b]
    return W


def test_majority_rule_on_every_2x2_block():
    rng = np.random.default_rng(1)
    n_draws = 4000
    out = np.stack([MajorityRule().transform(ALL_2X2, rng)[:, 0, 0] for _ in range(n_draws)])
    for k, block in enumerate(ALL_2X2):
        total = int(block.sum())
        if total:
            assert np.all(out[:, k] == np.sign(total))
        else:  # tie: a fair coin
            assert stats.binomtest(int((out[:, k] == 1).sum()), n_draws, 0.5).pvalue > 1e-3


def test_majority_and_decimation_match_loops(rng):
    spins = rng.choice(np.array([-1, 1], dtype=np.int8), size=(6, 8, 12))
    maj = MajorityRule().transform(spins, np.random.default_rng(0))
    dec = Decimation().transform(spins, np.random.default_rng(0))
    assert maj.shape == dec.shape == (6, 4, 6) and maj.dtype == dec.dtype == np.int8
    for n in range(6):
        for I in range(4):
            for J in range(6):
                block = spins[n, 2 * I : 2 * I + 2, 2 * J : 2 * J + 2]
                if block.sum():
                    assert maj[n, I, J] == np.sign(block.sum())
                assert dec[n, I, J] == spins[n, 2 * I, 2 * J]


@pytest.mark.parametrize("f, shape", [(2, (4, 4)), (4, (8, 8)), (8, (8, 8)), (6, (8, 12)), (8, (32, 32))])
def test_coupling_matrix_and_conv_field_match_the_definition(rng, f, shape):
    w = rng.normal(size=(f, f))
    W = loop_couplings(w, shape)
    assert np.allclose(coupling_matrix(torch.tensor(w), shape).numpy(), W, atol=1e-14, rtol=0)
    sigma = rng.choice([-1.0, 1.0], size=(3, *shape))
    h = hidden_field(torch.tensor(sigma), torch.tensor(w)).numpy()
    assert np.allclose(h.reshape(3, -1), sigma.reshape(3, -1) @ W, atol=1e-12, rtol=0)
    sites = receptive_field(shape, f)
    assert sites.shape == (f, f, shape[0] // 2, shape[1] // 2)


def test_filter_window_is_centred_on_the_block():
    """f = 2: the window is exactly the block; f = 8: rows 2I-3 .. 2I+4 (centre 2I + 1/2)."""
    assert receptive_field((8, 8), 2)[:, :, 1, 2].tolist() == [[2 * 8 + 4, 2 * 8 + 5], [3 * 8 + 4, 3 * 8 + 5]]
    rows = receptive_field((32, 32), 8)[:, 0, 5, 0] // 32
    assert rows.tolist() == list(range(7, 15)) and rows.mean() == 2 * 5 + 0.5


def enumerate_conditional(W: np.ndarray, sigma: np.ndarray) -> dict[tuple, float]:
    """P(mu | sigma) = exp(sum_iJ W_iJ sigma_i mu_J) / sum_mu (...) by enumerating every mu."""
    M = W.shape[1]
    weights = {}
    for mu in itertools.product([-1, 1], repeat=M):
        weights[mu] = np.exp(sigma.reshape(-1) @ W @ np.array(mu, dtype=float))
    z = sum(weights.values())
    return {mu: v / z for mu, v in weights.items()}


def test_rbm_conditional_is_the_enumerated_distribution(rng):
    """4x4 lattice, 4x4 filter, 4 coarse spins: the projector's sampling frequencies and its
    product of sigmoids against P(mu|sigma) enumerated over all 16 coarse states."""
    w = 0.4 * rng.normal(size=(4, 4))
    sigma = rng.choice(np.array([-1, 1], dtype=np.int8), size=(4, 4))
    proj = RBMProjector(w, dtype=torch.float64)
    exact = enumerate_conditional(loop_couplings(proj.weights.numpy(), (4, 4)), sigma)
    p = proj.probabilities(sigma[None])[0].reshape(-1)
    for mu, prob in exact.items():
        product = np.prod([p[j] if m == 1 else 1 - p[j] for j, m in enumerate(mu)])
        assert product == pytest.approx(prob, rel=1e-12)
    n = 40000
    draws = proj.transform(np.repeat(sigma[None], n, axis=0), np.random.default_rng(3)).reshape(n, -1)
    keys = list(exact)
    index = {mu: k for k, mu in enumerate(keys)}
    counts = np.bincount([index[tuple(int(v) for v in row)] for row in draws], minlength=len(keys))
    expected = n * np.array([exact[mu] for mu in keys])
    assert stats.chisquare(counts, expected).pvalue > 1e-3


def test_rbm_with_infinite_weights_on_2x2_blocks_is_the_majority_rule():
    proj = RBMProjector(np.full((2, 2), 1e4))
    rng = np.random.default_rng(5)
    n_draws = 4000
    out = np.stack([proj.transform(ALL_2X2, rng)[:, 0, 0] for _ in range(n_draws)])
    for k, block in enumerate(ALL_2X2):
        total = int(block.sum())
        if total:
            assert np.all(out[:, k] == np.sign(total))
        else:
            assert stats.binomtest(int((out[:, k] == 1).sum()), n_draws, 0.5).pvalue > 1e-3
    # and a large lattice agrees with the majority rule wherever there is no tie
    spins = np.random.default_rng(6).choice(np.array([-1, 1], dtype=np.int8), size=(20, 16, 16))
    a, b = proj.transform(spins, rng), MajorityRule().transform(spins, rng)
    decided = (spins[:, ::2, ::2] + spins[:, 1::2, ::2] + spins[:, ::2, 1::2] + spins[:, 1::2, 1::2]) != 0
    assert np.array_equal(a[decided], b[decided])


def test_rbm_sign_gauge(rng):
    w = rng.normal(size=(4, 4)) + 0.5
    spins = rng.choice(np.array([-1, 1], dtype=np.int8), size=(3, 8, 8))
    assert np.array_equal(RBMProjector(w).probabilities(spins), RBMProjector(-w).probabilities(spins))


@pytest.mark.parametrize("transform", [MajorityRule(), RBMProjector(np.full((4, 4), 0.2))])
def test_chunking_does_not_change_the_coarse_spins(rng, transform):
    spins = rng.choice(np.array([-1, 1], dtype=np.int8), size=(50, 8, 8))
    whole = coarse_grain(spins, transform, level_generators(7, 2))
    gens = level_generators(7, 2)
    parts = [coarse_grain(spins[i : i + 13], transform, gens) for i in range(0, 50, 13)]
    for level in range(3):
        assert np.array_equal(whole[level], np.concatenate([p[level] for p in parts]))
    assert [w.shape for w in whole] == [(50, 8, 8), (50, 4, 4), (50, 2, 2)]


def test_bad_levels_and_filters():
    with pytest.raises(ValueError, match="not divisible by 2\\^levels = 8"):
        check_levels((12, 12), MajorityRule(), 3)
    with pytest.raises(ValueError, match="larger than the lattice 4x4.*level 3"):
        check_levels((16, 16), RBMProjector(np.ones((8, 8))), 3)
    assert check_levels((32, 32), RBMProjector(np.ones((8, 8))), 2) == [(32, 32), (16, 16), (8, 8)]
    with pytest.raises(ValueError, match="even"):
        RBMProjector(np.ones((3, 3)))


@pytest.mark.parametrize("shape", [(8, 8), (8, 8, 8)], ids=["2d", "3d"])
def test_rbm_projector_on_an_explicit_cpu_device_is_the_default(rng, shape):
    w = rng.normal(size=(4,) * len(shape)) * 0.3
    spins = rng.choice(np.array([-1, 1], dtype=np.int8), size=(6, *shape))
    for dtype in (torch.float32, torch.float64):
        default, cpu = RBMProjector(w, dtype=dtype), RBMProjector(w, dtype=dtype, device=torch.device("cpu"))
        assert cpu.device == torch.device("cpu") and cpu.weights.device.type == "cpu"
        assert np.array_equal(cpu.probabilities(spins), default.probabilities(spins))
        assert np.array_equal(cpu.transform(spins, np.random.default_rng(5)),
                              default.transform(spins, np.random.default_rng(5)))


@pytest.mark.parametrize("device", ["meta", "gpu"])
def test_rbm_projector_refuses_other_devices(device):
    with pytest.raises(ValueError, match="device"):
        RBMProjector(np.ones((2, 2)), device=device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="torch has a CUDA device here")
def test_rbm_projector_on_cuda_without_cuda_names_the_device():
    with pytest.raises(ValueError, match="device 'cuda' requested"):
        RBMProjector(np.ones((2, 2)), device="cuda")
