"""CD-k / PCD training of the RBM filter: gradient, schedule, a known answer, exact resume."""

import itertools
import json

import numpy as np
import pytest
import torch

from deeprg.rsrg.rbm import coupling_matrix
from deeprg.rsrg.train import (
    CheckpointMismatch,
    RBMTrainConfig,
    Trainer,
    learning_rate,
    load_filters,
)
from deeprg.runs import RunDir

torch.set_num_threads(1)


def random_spins(rng, n, L):
    return rng.choice(np.array([-1, 1], dtype=np.int8), size=(n, L, L))


def test_inverse_square_root_schedule():
    cfg = RBMTrainConfig(schedule="inverse-sqrt")
    assert learning_rate(cfg, 0) == pytest.approx(1e-3) and learning_rate(cfg, 25) == pytest.approx(1e-4)
    assert learning_rate(cfg, 40) == learning_rate(cfg, 50) == pytest.approx(1e-4)
    t = np.array([0.0, 3.0, 10.0, 24.0])
    inv_sq = np.array([learning_rate(cfg, x) ** -2 for x in t])  # 1/lr^2 linear in t: lr ~ 1/sqrt(1 + c t)
    assert np.allclose(np.diff(inv_sq) / np.diff(t), (1e8 - 1e6) / 25, rtol=1e-10)


def test_polynomial_square_root_schedule():
    cfg = RBMTrainConfig(schedule="polynomial")
    assert learning_rate(cfg, 0) == pytest.approx(1e-3) and learning_rate(cfg, 25) == pytest.approx(1e-4)
    assert learning_rate(cfg, 30) == pytest.approx(1e-4)
    t = np.array([0.0, 3.0, 10.0, 24.0])
    sq = np.array([(learning_rate(cfg, x) - 1e-4) ** 2 for x in t])  # (lr - lr_final)^2 linear, 0 at t = 25
    assert np.allclose(sq, (9e-4) ** 2 * (1 - t / 25), rtol=1e-10)


def free_energy_loop(w: np.ndarray, sigma: np.ndarray) -> float:
    """F(sigma) = -sum_J ln 2 cosh h_J with h_J summed over the f x f window of block J."""
    f, (L0, L1) = len(w), sigma.shape
    total = 0.0
    for I0 in range(L0 // 2):
        for I1 in range(L1 // 2):
            h = sum(w[a, b] * sigma[(2 * I0 - f // 2 + 1 + a) % L0, (2 * I1 - f // 2 + 1 + b) % L1]
                    for a in range(f) for b in range(f))
            total -= np.log(2 * np.cosh(h))
    return total


def test_cd_gradient_is_the_derivative_of_the_free_energy_gap(rng):
    cfg = RBMTrainConfig(filter_size=4, dtype="float64")
    trainer = Trainer(cfg, random_spins(rng, 20, 4))  # the 4 x 4 windows wrap around the 4 x 4 lattice
    w = rng.normal(size=(4, 4)) * 0.5
    trainer.weights.copy_(torch.tensor(w))
    v0, vk = random_spins(rng, 3, 4), random_spins(rng, 3, 4)
    W = coupling_matrix(trainer.weights, (4, 4))
    grad, loss, _ = trainer.gradient(torch.tensor(v0.reshape(3, -1), dtype=torch.float64),
                                     torch.tensor(vk.reshape(3, -1), dtype=torch.float64), W)

    def gap(w):
        return (np.mean([free_energy_loop(w, s) for s in v0]) - np.mean([free_energy_loop(w, s) for s in vk]))

    assert loss == pytest.approx(gap(w), rel=1e-12)
    eps = 1e-6
    numeric = np.zeros((4, 4))
    for a, b in itertools.product(range(4), repeat=2):
        d = np.zeros((4, 4))
        d[a, b] = eps
        numeric[a, b] = (gap(w + d) - gap(w - d)) / (2 * eps)
    assert np.allclose(grad.numpy(), numeric, atol=1e-6)


def exact_rbm_samples(w: np.ndarray, n: int, L: int, rng) -> np.ndarray:
    """With f = 2 every coarse spin sees only its own block, so the visible marginal
    Y(sigma) = prod_J 2 cosh(w . block_J) makes the blocks independent, p(b) ∝ cosh(w . b)."""
    blocks = np.array(list(itertools.product([-1, 1], repeat=4)), dtype=np.int8)
    p = np.cosh(blocks @ w.reshape(-1))
    pick = rng.choice(16, size=(n, L // 2, L // 2), p=p / p.sum())
    b = blocks[pick].reshape(n, L // 2, L // 2, 2, 2)
    return b.transpose(0, 1, 3, 2, 4).reshape(n, L, L)


@pytest.mark.parametrize("persistent", [False, True])
def test_training_recovers_the_filter_of_an_exact_rbm(rng, persistent):
    w_true = np.array([[1.0, 0.6], [0.3, -0.4]])
    spins = exact_rbm_samples(w_true, 2000, 4, rng)
    cfg = RBMTrainConfig(filter_size=2, epochs=8, batch=20, lr=0.03, lr_final=0.003, decay_epochs=4,
                         persistent=persistent, seed=1)
    trainer = Trainer(cfg, spins)
    trainer.train()
    w = trainer.weights.double().numpy()
    w *= np.sign(w.sum())  # the marginal is invariant under w -> -w
    assert np.allclose(w, w_true, atol=0.1), w
    assert trainer.filter_history.shape == (9, 2, 2) and len(trainer.history) == 8


@pytest.mark.parametrize("shape", [(8, 8), (8, 8, 8)], ids=["2d", "3d"])
@pytest.mark.parametrize("persistent", [False, True])
def test_resume_reproduces_an_uninterrupted_run(rng, tmp_path, persistent, shape):
    spins = rng.choice(np.array([-1, 1], dtype=np.int8), size=(60, *shape))
    cfg = RBMTrainConfig(filter_size=4, epochs=3, batch=10, persistent=persistent, seed=5)
    straight = Trainer(cfg, spins)
    straight.train()
    first = Trainer(cfg, spins)
    stops = iter([False] * 7 + [True])  # stop mid-epoch 2
    first.train(should_stop=lambda: next(stops), checkpoint=tmp_path / "checkpoint.pt")
    assert (first.epoch, first.batch_index) == (1, 2)
    resumed = Trainer(cfg, spins)
    resumed.load(tmp_path / "checkpoint.pt")
    resumed.train()
    assert torch.equal(resumed.weights, straight.weights)
    assert np.array_equal(resumed.filter_history, straight.filter_history)
    assert [h["cd_gap"] for h in resumed.history] == [h["cd_gap"] for h in straight.history]


def test_same_seed_same_filter_and_other_seed_differs(rng):
    spins = random_spins(rng, 30, 8)
    runs = [Trainer(RBMTrainConfig(filter_size=4, epochs=1, seed=s), spins) for s in (2, 2, 3)]
    for t in runs:
        t.train()
    assert torch.equal(runs[0].weights, runs[1].weights) and not torch.equal(runs[0].weights, runs[2].weights)


def test_checkpoints_that_do_not_match(rng, tmp_path):
    spins = random_spins(rng, 30, 8)
    trainer = Trainer(RBMTrainConfig(filter_size=4, epochs=1), spins)
    trainer.train(checkpoint=tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointMismatch, match="filter_size"):
        Trainer(RBMTrainConfig(filter_size=2), spins).load(tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointMismatch, match="other data"):
        Trainer(RBMTrainConfig(filter_size=4), -spins).load(tmp_path / "checkpoint.pt")
    more = Trainer(RBMTrainConfig(filter_size=4, epochs=2), spins)  # more epochs is fine
    more.load(tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointMismatch, match="no config.json"):
        load_filters(tmp_path)
    RunDir(tmp_path, "rsrg").write_config(trainer.cfg.to_dict())
    cfg, filters, history = load_filters(tmp_path)
    assert cfg.filter_size == 4 and filters.shape == (2, 4, 4) and len(history) == 1
    RunDir(tmp_path / "junk", "rsrg").write_config(trainer.cfg.to_dict())
    (tmp_path / "junk" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointMismatch, match="not a readable"):
        load_filters(tmp_path / "junk")
    RunDir(tmp_path / "empty", "rsrg").write_config(trainer.cfg.to_dict())
    with pytest.raises(CheckpointMismatch, match="no checkpoint"):
        load_filters(tmp_path / "empty")


@pytest.mark.parametrize("key, value", [("filter_size", 3), ("cd_k", 0), ("lr_final", 0.5), ("batch", 0),
                                        ("schedule", "cosine")])
def test_bad_config_values_name_the_key(key, value):
    with pytest.raises(ValueError, match=key):
        RBMTrainConfig(**{key: value})


def test_filter_larger_than_the_lattice_or_batch_larger_than_the_data(rng):
    with pytest.raises(ValueError, match="larger than the lattice"):
        Trainer(RBMTrainConfig(filter_size=16), random_spins(rng, 20, 8))
    with pytest.raises(ValueError, match="batch"):
        Trainer(RBMTrainConfig(filter_size=4, batch=50), random_spins(rng, 20, 8))


# ---- devices -----------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(8, 8), (4, 4, 4)], ids=["2d-dense", "3d-conv"])
def test_an_explicit_cpu_device_trains_the_same_filter_as_the_default(rng, shape):
    spins = rng.choice(np.array([-1, 1], dtype=np.int8), size=(30, *shape))
    kw = {"filter_size": 4, "epochs": 2, "batch": 10, "persistent": True, "seed": 9}
    default, cpu = Trainer(RBMTrainConfig(**kw), spins), Trainer(RBMTrainConfig(**kw, device="cpu"), spins)
    default.train()
    cpu.train()
    assert cpu.device == torch.device("cpu") and cpu.weights.device.type == "cpu"
    assert torch.equal(cpu.weights, default.weights)
    assert np.array_equal(cpu.filter_history, default.filter_history)
    assert [h["cd_gap"] for h in cpu.history] == [h["cd_gap"] for h in default.history]


@pytest.mark.skipif(torch.cuda.is_available(), reason="torch has a CUDA device here")
def test_a_cuda_device_without_cuda_is_a_config_error_naming_device():
    from deeprg.config import ConfigError

    with pytest.raises(ConfigError, match="device"):
        RBMTrainConfig(device="cuda")


@pytest.mark.parametrize("device", ["meta", "mps", "gpu", ""])
def test_devices_that_are_neither_cpu_nor_cuda_are_refused(device):
    with pytest.raises(ValueError, match="device"):
        RBMTrainConfig(device=device)


def _tensors(obj, where="state"):
    """Every tensor in a nest of dicts, lists and tuples, with its path."""
    if isinstance(obj, torch.Tensor):
        yield where, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, f"{where}[{k!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{where}[{i}]")


@pytest.mark.parametrize("shape", [(8, 8), (4, 4, 4)], ids=["2d", "3d"])
def test_a_checkpoint_holds_cpu_tensors_only_and_loads_from_a_cpu_map(rng, tmp_path, shape):
    spins = rng.choice(np.array([-1, 1], dtype=np.int8), size=(30, *shape))
    cfg = RBMTrainConfig(filter_size=4, epochs=2, batch=10, persistent=True, seed=3)
    trainer = Trainer(cfg, spins)
    trainer.train(until=4, checkpoint=tmp_path / "checkpoint.pt")  # mid-epoch 2: chains and Adam's moments exist
    state = trainer.state_dict()
    found = dict(_tensors(state))
    assert {"state['weights']", "state['chains']", "state['filters']", "state['generator']"} <= set(found)
    assert any("optimizer" in k and "exp_avg" in k for k in found)
    assert all(t.device.type == "cpu" for t in found.values()), {k: t.device for k, t in found.items()}
    assert state["chains"].numel() and state["filters"].shape == (2, *(4,) * len(shape))
    saved = torch.load(tmp_path / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert all(t.device.type == "cpu" for _, t in _tensors(saved))
    assert json.loads(saved["config"])["device"] == "cpu"
    resumed = Trainer(cfg, spins)
    resumed.load(tmp_path / "checkpoint.pt")
    assert resumed.chains.device.type == "cpu" and all(f.device.type == "cpu" for f in resumed.filters)
    resumed.train()
    trainer.train()
    assert torch.equal(resumed.weights, trainer.weights)
    assert isinstance(resumed.filter_history, np.ndarray) and resumed.filter_history.dtype == np.float64


def test_a_checkpoint_from_another_device_type_resumes_with_a_fresh_gibbs_stream(rng, tmp_path, as_written_on):
    """What a GPU run resumed on a CPU machine does (the config says cuda, which need not exist
    here): the filter, Adam and the position continue, the Gibbs generator restarts from the
    seed and the position, with a warning, the same way every time."""
    spins = random_spins(rng, 30, 8)
    cfg = RBMTrainConfig(filter_size=4, epochs=2, batch=10, seed=3)
    first = Trainer(cfg, spins)
    first.train(until=4, checkpoint=tmp_path / "checkpoint.pt")
    as_written_on(tmp_path / "checkpoint.pt", "cuda")
    runs = []
    for _ in range(2):
        t = Trainer(cfg, spins)
        with pytest.warns(RuntimeWarning, match=r"written on cuda; the Gibbs chains' generator .* from \[3, 1, 1\]"):
            t.load(tmp_path / "checkpoint.pt")
        assert torch.equal(t.weights, first.weights) and (t.epoch, t.batch_index) == (1, 1)
        t.train()
        runs.append(t)
    assert torch.equal(runs[0].weights, runs[1].weights)
    first.train()  # the uninterrupted run keeps its own Gibbs stream
    assert not torch.equal(runs[0].weights, first.weights)
    RunDir(tmp_path, "rsrg").write_config({**cfg.to_dict(), "device": "cuda"})
    saved, filters, _ = load_filters(tmp_path)  # readable on a machine without the GPU it was trained on
    assert saved.device == "cpu" and filters.shape == (2, 4, 4)
