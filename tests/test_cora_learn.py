"""CORA learning: recovering the Ising chain, layer-by-layer learning, exact resume, configs."""

import math

import numpy as np
import pytest
import torch

from deeprg.cora.evaluate import chain_window_entropy, correlation_function, window_codes, window_nll
from deeprg.cora.learn import CheckpointMismatch, CoraTrainConfig, Stage, Trainer, stage_marginals, stages
from deeprg.cora.marginals import window_marginals
from deeprg.cora.network import Cora
from deeprg.lattice import Lattice
from deeprg.mc import make_sampler
from deeprg.models.exact import chain_correlation

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def chain16():
    """3000 configurations of the periodic Ising chain, N = 16, K = 1, as indices."""
    run = make_sampler("wolff", Lattice((16,)), 1.0, seed=11).run(3000, thin=4)
    return torch.as_tensor((1 - run.spins_flat()) // 2).long()


def nearest_neighbour_correlation(net):
    """Exact <s_i s_{i+1}> of the model from its two-site window marginals (averaged over i)."""
    p = window_marginals(net, 2).detach()  # codes 00, 01, 10, 11 -> s s' = +1, -1, -1, +1
    return float((p @ torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=p.dtype)).mean())


def test_joint_learning_recovers_the_ising_chain(chain16):
    cfg = CoraTrainConfig(lattice_shape=[16], chi=2, window=4, epochs=150)
    trainer = Trainer(cfg, chain16)
    trainer.train()
    data_c1 = correlation_function(chain16)[1]
    model_c1 = nearest_neighbour_correlation(trainer.net)
    exact_c1 = float(chain_correlation(16, 1.0, 1))  # tanh(1) up to finite-size terms
    assert model_c1 == pytest.approx(data_c1.mean, abs=0.005)
    assert model_c1 == pytest.approx(exact_c1, abs=4 * data_c1.error + 0.005)
    assert exact_c1 == pytest.approx(math.tanh(1.0), abs=0.01)
    # the training NLL reaches the data's own window cross-entropy: the exact entropy, to noise
    nll = window_nll(trainer.net, chain16, 4)
    assert nll.mean == pytest.approx(chain_window_entropy(16, 1.0, 4) / 4, abs=3 * nll.error + 0.003)
    assert trainer.history[-1]["loss"] < trainer.history[0]["loss"]


def test_copy_initialization_avoids_the_random_trap(chain16):
    """From random tables the same budget stalls far above the copy-initialized fit."""
    results = {}
    for init in ("copy", "random"):
        trainer = Trainer(CoraTrainConfig(lattice_shape=[16], init=init, epochs=40, seed=1), chain16)
        trainer.train()
        results[init] = trainer.history[-1]["loss"]
    assert results["copy"] < results["random"] - 0.005


def test_layerwise_stages_and_learning(chain16):
    cfg = CoraTrainConfig(lattice_shape=[16], method="layerwise", passes=2, epochs=30, gibbs_sweeps=5)
    assert stages(cfg, 4) == [Stage(1, 1, 0, "uniform"), Stage(1, 2, 1, "uniform"), Stage(1, 3, 2, "uniform"),
                              Stage(1, 4, 3, "network"), Stage(2, 1, 0, "network"), Stage(2, 2, 1, "network"),
                              Stage(2, 3, 2, "network"), Stage(2, 4, 3, "network")]
    trainer = Trainer(cfg, chain16)
    before = window_nll(trainer.net, chain16, 4).mean
    seen_levels = []
    while not trainer.done:
        if trainer.stage.level > 0:
            seen_levels.append(trainer.level_data.shape)
            assert int(trainer.level_data.max()) < cfg.chi
        trainer.step()
    assert (3000, 8) in seen_levels and (3000, 2) in seen_levels  # coarse-grained data of levels 1 and 3
    after = window_nll(trainer.net, chain16, 4).mean
    assert after < before
    assert nearest_neighbour_correlation(trainer.net) > 0.5  # strongly correlated, as the data


def test_a_stage_trains_only_its_layer():
    net = Cora((16,), 2, init="random")
    p = stage_marginals(net, Stage(2, 2, 1, "network"), 3)
    p[:, 0].sum().backward()
    trained = {id(q) for q in net.layer_parameters(2)}
    for q in net.parameters():
        assert (q.grad is not None and q.grad.abs().sum() > 0) == (id(q) in trained)


@pytest.mark.parametrize("method, batch, stop_after", [("joint", 0, 2), ("layerwise", 700, 7)])
def test_resume_from_checkpoint_is_exact(tmp_path, chain16, method, batch, stop_after):
    cfg = CoraTrainConfig(lattice_shape=[16], method=method, epochs=4, passes=2, batch=batch, gibbs_sweeps=2,
                          seed=3)
    straight = Trainer(cfg, chain16)
    straight.train()
    first = Trainer(cfg, chain16)
    count = iter(range(1000))
    first.train(should_stop=lambda: next(count) == stop_after - 1, checkpoint=tmp_path / "ck.pt")
    assert len(first.history) == stop_after
    resumed = Trainer(cfg, chain16)
    resumed.load(tmp_path / "ck.pt")
    resumed.train()
    for a, b in zip(straight.net.parameters(), resumed.net.parameters()):
        assert torch.equal(a, b)
    assert [h["loss"] for h in straight.history] == [h["loss"] for h in resumed.history]


def test_a_checkpoint_from_another_device_type_resumes_with_a_fresh_generator(tmp_path, chain16, as_written_on):
    cfg = CoraTrainConfig(lattice_shape=[16], method="layerwise", epochs=4, passes=1, batch=700, gibbs_sweeps=2,
                          seed=3)
    first = Trainer(cfg, chain16)
    count = iter(range(1000))
    first.train(should_stop=lambda: next(count) == 5, checkpoint=tmp_path / "ck.pt")
    as_written_on(tmp_path / "ck.pt", "cuda")
    runs = []
    for _ in range(2):
        resumed = Trainer(cfg, chain16)
        with pytest.warns(RuntimeWarning, match=r"written on cuda; the generator of the minibatches and Gibbs sweeps "
                                                r"cannot continue on cpu"):
            resumed.load(tmp_path / "ck.pt")
        resumed.train()
        runs.append([p.detach().clone() for p in resumed.net.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_checkpoint_of_another_run_or_data_is_refused(tmp_path, chain16):
    cfg = CoraTrainConfig(lattice_shape=[16], epochs=1)
    trainer = Trainer(cfg, chain16)
    trainer.train(checkpoint=tmp_path / "ck.pt")
    with pytest.raises(CheckpointMismatch, match="chi"):
        Trainer(CoraTrainConfig(lattice_shape=[16], epochs=1, chi=3), chain16).load(tmp_path / "ck.pt")
    with pytest.raises(CheckpointMismatch, match="other data"):
        Trainer(cfg, 1 - chain16).load(tmp_path / "ck.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointMismatch, match="not a readable"):
        trainer.load(tmp_path / "junk.pt")


@pytest.mark.parametrize("kwargs, needle", [
    (dict(lattice_shape=[12]), "power of two"),
    (dict(lattice_shape=[8, 4]), "square"),
    (dict(chi=1), "chi"),
    (dict(window=17), "window"),
    (dict(window=0), "window"),
    (dict(method="both"), "method"),
    (dict(epochs=0), "epochs"),
    (dict(lr=2.0), "lr"),
    (dict(encoding="ternary"), "encoding"),
    (dict(lattice_shape=[16, 16], chi=4), "window 2 with chi = 4"),
])
def test_bad_config_is_refused(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        CoraTrainConfig(**{"lattice_shape": [16], **kwargs})


def test_default_window_depends_on_dimension():
    assert CoraTrainConfig(lattice_shape=[64]).window == 4
    assert CoraTrainConfig(lattice_shape=[8, 8]).window == 2
    assert CoraTrainConfig(lattice_shape=[2]).window == 2


def test_window_codes_match_the_marginal_convention():
    x = torch.tensor([[0, 1, 1, 0]])
    assert window_codes(x, 2, 2).tolist() == [[1, 3, 2, 0]]  # (0,1) (1,1) (1,0) (0,0 wrapping)
    y = torch.arange(16).reshape(1, 4, 4) % 2
    codes = window_codes(y, 2, 2).reshape(4, 4)
    assert codes[0, 0] == 0b0101 and codes[0, 3] == 0b1010


def test_trainer_checks_the_data_shape(chain16):
    with pytest.raises(ValueError, match="data must have shape"):
        Trainer(CoraTrainConfig(lattice_shape=[8]), chain16)


def test_two_dimensional_training_reaches_the_window_entropy():
    """Uniform images (all 0 or all 1): every 2 x 2 window is one of two values, with the
    empirical entropy h(p) per window, which a chi = 2 network represents exactly."""
    rng = np.random.default_rng(0)
    x = torch.as_tensor(np.repeat(rng.integers(0, 2, (300, 1, 1)), 8, axis=1).repeat(8, axis=2))
    p = float(x[:, 0, 0].double().mean())
    entropy = -(p * math.log(p) + (1 - p) * math.log(1 - p))
    trainer = Trainer(CoraTrainConfig(lattice_shape=[8, 8], epochs=25, lr=0.4), x)
    trainer.train()
    assert trainer.history[-1]["loss"] == pytest.approx(entropy / 4, abs=0.003)
    assert trainer.history[-1]["loss"] < trainer.history[0]["loss"]


@pytest.mark.slow
def test_ising_chain_benchmark_targets():
    """The benchmark's targets (N = 64, K = 1, 5000 training samples): held-out window NLL within
    0.5% of the exact window entropy, nearest-neighbour correlation within 0.005 of tanh(1)."""
    def chain(seed):
        run = make_sampler("wolff", Lattice((64,)), 1.0, seed=seed, n_chains=2).run(5000, thin=8)
        return torch.as_tensor((1 - run.spins_flat()) // 2).long()

    trainer = Trainer(CoraTrainConfig(lattice_shape=[64], epochs=300), chain(1))
    trainer.train()
    nll = window_nll(trainer.net, chain(2), 4)
    exact = chain_window_entropy(64, 1.0, 4) / 4
    assert abs(nll.mean / exact - 1) < 0.005
    assert nearest_neighbour_correlation(trainer.net) == pytest.approx(math.tanh(1.0), abs=0.005)
