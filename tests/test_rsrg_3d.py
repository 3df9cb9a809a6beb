"""b = 2 RG transformations and RBM-projector training on 3D lattices (and the 2D/3D convolutions
of the RBM against the dense coupling matrix and loops over the definition)."""

import itertools
import json

import numpy as np
import pytest
import torch
from scipy import stats

from deeprg.rsrg.rbm import (
    check_filter,
    coupling_matrix,
    filter_correlation,
    filter_gradient,
    free_energy,
    hidden_field,
    receptive_field,
    visible_field,
)
from deeprg.rsrg.train import CheckpointMismatch, RBMTrainConfig, Trainer, load_filters
from deeprg.rsrg.transforms import (
    Decimation,
    MajorityRule,
    RBMProjector,
    check_levels,
    coarse_grain,
    level_generators,
)
from deeprg.runs import RunDir, save_checkpoint

torch.set_num_threads(1)

ALL_2X2X2 = np.array(list(itertools.product([-1, 1], repeat=8)), dtype=np.int8).reshape(256, 2, 2, 2)


def random_spins(rng, n, *shape):
    return rng.choice(np.array([-1, 1], dtype=np.int8), size=(n, *shape))


def block_sums(spins):
    return sum(spins[(slice(None),) + tuple(slice(o, None, 2) for o in offset)].astype(int)
               for offset in itertools.product((0, 1), repeat=spins.ndim - 1))


def loop_couplings(w, shape):
    """W_iJ by the definition: entry a of the filter couples coarse I to the fine site
    2 I - f/2 + 1 + a (mod L) on every axis."""
    f, d = len(w), len(shape)
    coarse = [L // 2 for L in shape]
    W = np.zeros((int(np.prod(shape)), int(np.prod(coarse))))
    for J, I in enumerate(itertools.product(*map(range, coarse))):
        for a in itertools.product(range(f), repeat=d):
            site = tuple((2 * I[k] - f // 2 + 1 + a[k]) % shape[k] for k in range(d))
            W[np.ravel_multi_index(site, shape), J] += w[a]
    return W


# ---- majority rule and decimation ------------------------------------------------------------
def check_majority_of_every_block(out, n_draws):
    """``out``: (n_draws, 256) coarse spins of ALL_2X2X2; decided blocks follow the sign, each of
    the 70 tied blocks is a fair coin (and so are all ties together)."""
    totals = ALL_2X2X2.reshape(256, -1).sum(1)
    assert (totals == 0).sum() == 70
    decided = totals != 0
    assert np.all(out[:, decided] == np.sign(totals[decided]))
    ups = (out[:, ~decided] == 1).sum(0)
    assert min(stats.binomtest(int(k), n_draws, 0.5).pvalue for k in ups) > 1e-5
    assert stats.binomtest(int(ups.sum()), 70 * n_draws, 0.5).pvalue > 1e-3


def test_3d_majority_rule_on_every_2x2x2_block():
    n_draws = 2000
    out = MajorityRule().transform(np.tile(ALL_2X2X2, (n_draws, 1, 1, 1)), np.random.default_rng(1))
    assert out.shape == (256 * n_draws, 1, 1, 1) and out.dtype == np.int8
    check_majority_of_every_block(out.reshape(n_draws, 256), n_draws)


def test_3d_majority_ties_use_one_coin_per_tie_in_row_major_order(rng):
    spins = random_spins(rng, 40, 4, 6, 8)
    ties = block_sums(spins) == 0
    assert 0.2 < ties.mean() < 0.35  # 70 / 256 = 27.3% of random blocks
    out = MajorityRule().transform(spins, np.random.default_rng(9))
    coins = np.random.default_rng(9).random(int(ties.sum()))
    assert np.array_equal(out[ties], np.where(coins < 0.5, 1, -1))
    assert np.array_equal(out[~ties], np.sign(block_sums(spins))[~ties])


def test_3d_rbm_with_infinite_weights_on_2x2x2_blocks_is_the_majority_rule():
    proj = RBMProjector(np.full((2, 2, 2), 1e4))
    n_draws = 2000
    out = proj.transform(np.tile(ALL_2X2X2, (n_draws, 1, 1, 1)), np.random.default_rng(5))
    check_majority_of_every_block(out.reshape(n_draws, 256), n_draws)
    spins = random_spins(np.random.default_rng(6), 10, 8, 8, 8)
    a, b = proj.transform(spins, np.random.default_rng(7)), MajorityRule().transform(spins, np.random.default_rng(8))
    decided = block_sums(spins) != 0
    assert np.array_equal(a[decided], b[decided]) and not np.array_equal(a, b)


def test_3d_majority_and_decimation_match_loops(rng):
    spins = random_spins(rng, 3, 4, 6, 8)
    maj = MajorityRule().transform(spins, np.random.default_rng(0))
    dec = Decimation().transform(spins, np.random.default_rng(0))
    assert maj.shape == dec.shape == (3, 2, 3, 4) and maj.dtype == dec.dtype == np.int8
    for n, I, J, K in itertools.product(range(3), range(2), range(3), range(4)):
        block = spins[n, 2 * I : 2 * I + 2, 2 * J : 2 * J + 2, 2 * K : 2 * K + 2]
        if block.sum():
            assert maj[n, I, J, K] == np.sign(block.sum())
        assert dec[n, I, J, K] == spins[n, 2 * I, 2 * J, 2 * K]


@pytest.mark.parametrize("transform", [MajorityRule(), Decimation(), RBMProjector(np.full((2, 2, 2), 0.2)),
                                       RBMProjector(np.random.default_rng(4).normal(size=(4, 4, 4)) * 0.2)],
                         ids=["majority", "decimation", "rbm2", "rbm4"])
def test_3d_chunking_does_not_change_the_coarse_spins(rng, transform):
    spins = random_spins(rng, 30, 8, 8, 8)
    whole = coarse_grain(spins, transform, level_generators(7, 2))
    gens = level_generators(7, 2)
    parts = [coarse_grain(spins[i : i + 7], transform, gens) for i in range(0, 30, 7)]
    for level in range(3):
        assert np.array_equal(whole[level], np.concatenate([p[level] for p in parts]))
    assert [w.shape for w in whole] == [(30, 8, 8, 8), (30, 4, 4, 4), (30, 2, 2, 2)]


# ---- the RBM projector in 3D ---------------------------------------------------------------------
@pytest.mark.parametrize("f, shape", [(4, (4, 4, 4)), (2, (8, 6, 4)), (4, (8, 6, 4))])
def test_3d_projector_probabilities_match_a_loop(rng, f, shape):
    proj = RBMProjector(rng.normal(size=(f, f, f)) * 0.3 - 0.05, dtype=torch.float64)
    w = proj.weights.numpy()
    spins = random_spins(rng, 2, *shape)
    p = proj.probabilities(spins)
    assert p.shape == (2, *(L // 2 for L in shape))
    c = f // 2 - 1
    for n in range(2):
        for I in itertools.product(*(range(L // 2) for L in shape)):
            h = sum(w[a] * spins[(n,) + tuple((2 * I[k] - c + a[k]) % shape[k] for k in range(3))]
                    for a in itertools.product(range(f), repeat=3))
            assert p[(n,) + I] == pytest.approx(1 / (1 + np.exp(-2 * h)), rel=1e-12, abs=1e-300)


def test_3d_projector_sign_gauge(rng):
    w = rng.normal(size=(4, 4, 4)) + 0.5
    spins = random_spins(rng, 3, 8, 8, 8)
    assert np.array_equal(RBMProjector(w).probabilities(spins), RBMProjector(-w).probabilities(spins))


@pytest.mark.parametrize("f, shape", [(2, (4, 4)), (4, (4, 4)), (6, (8, 12)), (8, (8, 8)),
                                      (2, (4, 6, 8)), (4, (4, 4, 4)), (4, (8, 6, 4)), (6, (6, 6, 6)), (6, (8, 8, 8)),
                                      (8, (8, 8, 8))])
def test_fields_match_the_dense_coupling_matrix(rng, f, shape):
    """hidden_field (conv), visible_field (transposed conv + folding) and filter_correlation (the
    conv's weight gradient) against the dense W, and W against the loop definition, in float64;
    f = L included (the window wraps the whole lattice)."""
    w = rng.normal(size=(f,) * len(shape))
    W = coupling_matrix(torch.tensor(w), shape)
    if np.prod(shape) <= 256:
        assert np.allclose(W.numpy(), loop_couplings(w, shape), atol=1e-14, rtol=0)
    coarse = tuple(L // 2 for L in shape)
    sigma = torch.tensor(rng.choice([-1.0, 1.0], size=(3, *shape)))
    mu = torch.tensor(rng.choice([-1.0, 1.0], size=(3, *coarse)))
    h = hidden_field(sigma, torch.tensor(w))
    g = visible_field(mu, torch.tensor(w), shape)
    assert h.shape == (3, *coarse) and g.shape == (3, *shape)
    assert torch.allclose(h.reshape(3, -1), sigma.reshape(3, -1) @ W, atol=1e-12, rtol=0)
    assert torch.allclose(g.reshape(3, -1), mu.reshape(3, -1) @ W.T, atol=1e-12, rtol=0)
    t = torch.tensor(rng.normal(size=(3, *coarse)))
    dense = filter_gradient(sigma.reshape(3, -1).T @ t.reshape(3, -1), f, shape)
    assert torch.allclose(filter_correlation(sigma, t, f), dense, atol=1e-12, rtol=0)
    assert receptive_field(shape, f).shape == (f,) * len(shape) + coarse


def test_3d_filter_window_is_centred_on_the_block():
    sites = receptive_field((8, 8, 8), 2)[..., 1, 2, 3]
    corner = np.array([2, 4, 6])
    expected = [np.ravel_multi_index(tuple(corner + np.array(o)), (8, 8, 8))
                for o in itertools.product((0, 1), repeat=3)]
    assert sites.reshape(-1).tolist() == expected
    coords = np.stack(np.unravel_index(receptive_field((16, 16, 16), 6)[..., 1, 2, 3], (16, 16, 16)))
    assert coords.reshape(3, -1).mean(1).tolist() == [2.5, 4.5, 6.5]


# ---- one-line errors -----------------------------------------------------------------------------
def one_line(exc_info):
    assert "\n" not in str(exc_info.value)
    return str(exc_info.value)


def test_3d_bad_shapes_filters_and_levels(rng):
    with pytest.raises(ValueError, match=r"^a 3D \(4x4x4\) filter cannot act on 2D 32x32 configurations") as e:
        RBMProjector(np.ones((4, 4, 4))).check((32, 32))
    one_line(e)
    with pytest.raises(ValueError, match=r"a 2D \(4x4\) filter cannot act on 3D 8x8x8 configurations") as e:
        RBMProjector(np.ones((4, 4))).transform(random_spins(rng, 2, 8, 8, 8), rng)
    one_line(e)
    with pytest.raises(ValueError, match=r"a 3D \(2x2x2\) filter cannot act on 2D 8x8 configurations"):
        check_levels((8, 8), RBMProjector(np.ones((2, 2, 2))), 1)
    with pytest.raises(ValueError, match=r"^filter size 6 is larger than the lattice 4x4x4$") as e:
        RBMProjector(np.ones((6, 6, 6))).check((4, 4, 4))
    one_line(e)
    with pytest.raises(ValueError, match=r"larger than the lattice 4x4x4 \(at RG level 3 of 3\)") as e:
        check_levels((16, 16, 16), RBMProjector(np.ones((8, 8, 8))), 3)
    one_line(e)
    assert check_levels((16, 16, 16), RBMProjector(np.ones((8, 8, 8))), 2) == [(16, 16, 16), (8, 8, 8), (4, 4, 4)]
    for t in (MajorityRule(), Decimation(), RBMProjector(np.ones((2, 2, 2)))):
        with pytest.raises(ValueError, match="even extents") as e:
            t.transform(random_spins(rng, 2, 8, 7, 8), rng)
        one_line(e)
    with pytest.raises(ValueError, match=r"lattice 12x12x12 is not divisible by 2\^levels = 8") as e:
        check_levels((12, 12, 12), MajorityRule(), 3)
    one_line(e)
    with pytest.raises(ValueError, match=r"\(batch, L0, L1\) or \(batch, L0, L1, L2\)"):
        MajorityRule().transform(random_spins(rng, 2, 4, 4, 4, 4), rng)
    with pytest.raises(ValueError, match="2D or 3D"):
        check_levels((8,), MajorityRule(), 1)
    with pytest.raises(ValueError, match=r"square \(f, f\) or cubic \(f, f, f\)"):
        RBMProjector(np.ones((4, 4, 2)))
    with pytest.raises(ValueError, match="even integer >= 2 \\(centred on a 2x2x2 block\\)"):
        RBMProjector(np.ones((3, 3, 3)))
    with pytest.raises(ValueError, match="even integer"):
        check_filter(5, (8, 8, 8))
    with pytest.raises(ValueError, match=r"coarse spins of shape \(4, 4, 2\) do not fit"):
        visible_field(torch.ones(1, 4, 4, 2), torch.ones(2, 2, 2), (8, 8, 8))


# ---- training ------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape, f", [((8, 8, 8), 4), ((8, 8, 8), 8), ((4, 6, 8), 2), ((8, 8), 4), ((8, 12), 6)])
def test_conv_and_dense_cd_gradients_agree(rng, shape, f):
    """The convolutional path's CD gradient, loss and fields equal the dense path's (float64),
    and the gradient is the derivative of the free-energy gap (autograd through hidden_field)."""
    spins = random_spins(rng, 12, *shape)
    cfg = RBMTrainConfig(filter_size=f, dtype="float64")
    conv, dense = Trainer(cfg, spins, conv=True), Trainer(cfg, spins, conv=False)
    assert conv.conv and not dense.conv
    w = torch.tensor(rng.normal(size=(f,) * len(shape)) * 0.3)
    conv.weights.copy_(w)
    dense.weights.copy_(w)
    v0 = torch.tensor(random_spins(rng, 5, *shape).reshape(5, -1), dtype=torch.float64)
    vk = torch.tensor(random_spins(rng, 5, *shape).reshape(5, -1), dtype=torch.float64)
    g1, loss1, h1 = conv.gradient(v0, vk)
    g2, loss2, h2 = dense.gradient(v0, vk, coupling_matrix(dense.weights, shape))
    assert g1.shape == (f,) * len(shape)
    assert torch.allclose(g1, g2, atol=1e-12, rtol=0) and loss1 == pytest.approx(loss2, rel=1e-13)
    assert torch.allclose(h1.reshape(5, -1), h2, atol=1e-12, rtol=0)
    x = w.clone().requires_grad_(True)
    gap = (free_energy(hidden_field(v0.reshape(5, *shape), x)).mean()
           - free_energy(hidden_field(vk.reshape(5, *shape), x)).mean())
    (auto,) = torch.autograd.grad(gap, x)
    assert torch.allclose(g1, auto, atol=1e-12, rtol=0)


@pytest.mark.parametrize("persistent", [False, True])
def test_one_step_is_the_same_on_both_paths(rng, persistent):
    """Same seed: the two paths draw the same random numbers in the same order, so they sample the
    same Gibbs chains and take the same Adam step (float64, 8^3, f = 4, CD-3)."""
    spins = random_spins(rng, 20, 8, 8, 8)
    cfg = RBMTrainConfig(filter_size=4, dtype="float64", init_scale=0.3, persistent=persistent, seed=3)
    conv, dense = Trainer(cfg, spins), Trainer(cfg, spins, conv=False)
    assert conv.conv and torch.equal(conv.weights, dense.weights)
    for _ in range(2):
        a, b = conv.step(), dense.step()
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-12)
    assert torch.allclose(conv.weights, dense.weights, atol=1e-14, rtol=0)
    assert torch.equal(conv.generator.get_state(), dense.generator.get_state())
    if persistent:
        assert torch.equal(conv.chains, dense.chains) and conv.chains.shape == (10, 512)


def exact_rbm_samples_3d(w, n, L, rng):
    """f = 2: every coarse spin sees only its own 2x2x2 block, so Y(sigma) = prod_J 2 cosh(w . b_J)
    makes the blocks independent with p(b) ∝ cosh(w . b)."""
    blocks = ALL_2X2X2.reshape(256, 8)
    p = np.cosh(blocks @ w.reshape(-1))
    pick = rng.choice(256, size=(n, L // 2, L // 2, L // 2), p=p / p.sum())
    b = blocks[pick].reshape(n, L // 2, L // 2, L // 2, 2, 2, 2)
    return b.transpose(0, 1, 4, 2, 5, 3, 6).reshape(n, L, L, L)


def test_3d_training_recovers_the_filter_of_an_exact_rbm(rng):
    w_true = np.array([[[0.9, 0.5], [0.3, -0.4]], [[0.2, 0.6], [-0.3, 0.4]]])
    spins = exact_rbm_samples_3d(w_true, 1000, 4, rng)
    cfg = RBMTrainConfig(filter_size=2, epochs=6, batch=20, lr=0.03, lr_final=0.003, decay_epochs=3, seed=1)
    trainer = Trainer(cfg, spins)
    assert trainer.conv
    trainer.train()
    w = trainer.weights.double().numpy()
    w *= np.sign(w.sum())  # the marginal is invariant under w -> -w
    assert np.allclose(w, w_true, atol=0.1), w
    assert trainer.filter_history.shape == (7, 2, 2, 2) and len(trainer.history) == 6


def test_3d_filter_on_aligned_configurations_grows_along_its_sign(rng):
    """Fully aligned data: every dF/dw[a] is -N/8 tanh(sum w) on the data and ~0 on the decorrelated
    CD samples, so every entry moves towards sign(sum w) and |sum w| grows."""
    spins = np.ones((40, 8, 8, 8), dtype=np.int8)
    spins[::2] = -1
    cfg = RBMTrainConfig(filter_size=4, epochs=2, batch=10, lr=0.01, lr_final=0.01, seed=2)
    trainer = Trainer(cfg, spins)
    w0 = trainer.weights.clone()
    trainer.train()
    w = trainer.weights
    sign = 1.0 if float(w.sum()) > 0 else -1.0
    assert sign * float(w.sum()) > 64 * 0.05 + abs(float(w0.sum()))
    assert bool((sign * (w - w0) > 0).all())
    sums = [abs(h["filter_sum"]) for h in trainer.history]
    assert sums == sorted(sums)


def test_a_3d_run_directory_loads_into_a_3d_projector(rng, tmp_path):
    """(Resuming a 3D run exactly is checked with the 2D one, tests/test_rsrg_training.py.)"""
    spins = random_spins(rng, 30, 8, 8, 8)
    cfg = RBMTrainConfig(filter_size=4, epochs=2, batch=10, seed=5)
    trainer = Trainer(cfg, spins)
    trainer.train(checkpoint=tmp_path / "checkpoint.pt")
    assert trainer.filter_history.shape == (3, 4, 4, 4)
    RunDir(tmp_path, "rsrg").write_config(cfg.to_dict())
    _, filters, history = load_filters(tmp_path)
    assert np.array_equal(filters, trainer.filter_history) and len(history) == 2
    proj = RBMProjector(filters[-1])
    assert proj.d == 3 and proj.transform(spins[:2], rng).shape == (2, 4, 4, 4)


def test_3d_checkpoints_that_do_not_match(rng, tmp_path):
    spins3, spins2 = random_spins(rng, 20, 8, 8, 8), random_spins(rng, 20, 8, 8)
    cfg = RBMTrainConfig(filter_size=4, epochs=1)
    three = Trainer(cfg, spins3)
    three.train(checkpoint=tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointMismatch, match="other data"):
        Trainer(cfg, spins2).load(tmp_path / "checkpoint.pt")
    # a 2D run's checkpoint whose filters were replaced by 3D ones (data fingerprint intact)
    two = Trainer(cfg, spins2)
    two.train()
    state = two.state_dict()
    state["weights"], state["filters"] = three.weights.clone(), torch.stack(three.filters)
    bad = tmp_path / "bad"
    bad.mkdir()
    save_checkpoint(bad / "checkpoint.pt", state)
    with pytest.raises(CheckpointMismatch, match=r"3D filter of shape \(4, 4, 4\) does not fit the 2D training data 8x8"):
        Trainer(cfg, spins2).load(bad / "checkpoint.pt")
    RunDir(bad, "rsrg").write_config(cfg.to_dict())
    with pytest.raises(CheckpointMismatch, match=r"do not match filter_size 4, the 2D training data 8x8"):
        load_filters(bad)
    state["data"] = json.dumps({"n": 20})
    save_checkpoint(bad / "checkpoint.pt", state)
    with pytest.raises(CheckpointMismatch, match="data fingerprint is corrupt"):
        load_filters(bad)


def test_3d_trainer_shapes_and_memory_estimate(rng):
    cfg = RBMTrainConfig(filter_size=6, batch=10)
    memory, what = cfg.memory_estimate(1000, (32, 32, 32))
    assert memory < 1000 * 32768 + 16 * 10 * 36**3 * 4 + 1 and "filter_size" in what  # int8 data, no W
    dense_2d, what_2d = cfg.memory_estimate(1000, (32, 32))
    n = 1024
    assert dense_2d == 1000 * n * 4 + 3.0 * n * (n // 4) * 4 + 8.0 * 10 * n * 4 and what_2d.endswith("batch")
    t = Trainer(RBMTrainConfig(filter_size=4, epochs=1), random_spins(rng, 10, 4, 6, 8))
    assert t.conv and t.weights.shape == (4, 4, 4) and t._data.dtype == torch.int8
    with pytest.raises(ValueError, match="larger than the lattice 4x6x8"):
        Trainer(RBMTrainConfig(filter_size=6), random_spins(rng, 10, 4, 6, 8))
    with pytest.raises(ValueError, match=r"\(n, L0, L1\) or \(n, L0, L1, L2\)"):
        Trainer(RBMTrainConfig(filter_size=2), random_spins(rng, 10, 4, 4, 4, 4))
