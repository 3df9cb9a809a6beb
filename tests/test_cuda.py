"""The GPU path on CUDA: flow training and the FFT target, the flow's chains and estimators (HMC,
independence Metropolis, IS, AIS, SMC, bridge) and the commands that use a run, RBM training, the
RBM projector and MCRG, CORA (skipped where torch has no CUDA; CI has none). Run on a GPU machine
with ``python -m pytest -m cuda`` (``benchmarks/device_check.sh`` runs these and the GPU benchmark)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from deeprg.flows.train import FlowTrainConfig, Trainer
from deeprg.rsrg.rbm import coupling_matrix
from deeprg.rsrg.train import RBMTrainConfig
from deeprg.rsrg.train import Trainer as RBMTrainer
from deeprg.rsrg.transforms import RBMProjector

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="torch has no CUDA device here")]


def _trainer(**changes) -> Trainer:
    cfg = FlowTrainConfig(**{"L": 8, "batch": 64, "steps": 20, "hidden": [16], "device": "cuda", **changes})
    return Trainer(cfg)


def test_flow_training_keeps_parameters_and_buffers_on_the_gpu():
    trainer = _trainer()
    for _ in range(3):
        record = trainer.step()
    assert math.isfinite(record["loss"])
    assert all(p.device.type == "cuda" for p in trainer.flow.parameters())
    assert all(b.device.type == "cuda" for b in trainer.target.buffers())


def _host_to_device_copies(step, calls: int = 2) -> list[str]:
    """Names of the host-to-device copies that ``calls`` calls of ``step()`` make."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            step()
        torch.cuda.synchronize()
    return [e.name for e in prof.events() if "HtoD" in e.name]


def _copies_per_step(run) -> int:
    """Host-to-device copies that ``run(n)`` (a chain or estimator of ``n`` steps, batches or
    temperatures) makes per step beyond its fixed start-up ones: the count at 4 steps minus the
    count at 2 steps (0 when nothing is copied step by step)."""
    run(2)  # warm-up: casts cached, kernels chosen
    return len(_host_to_device_copies(lambda: run(4), 1)) - len(_host_to_device_copies(lambda: run(2), 1))


def test_a_training_step_copies_nothing_from_host_to_device():
    trainer = _trainer()
    trainer.step()  # warm-up: casts cached, kernels chosen
    assert _host_to_device_copies(trainer.step) == []


def test_gpu_and_cpu_training_agree_in_float64():
    cpu = Trainer(FlowTrainConfig(L=4, batch=16, steps=3, hidden=[8], dtype="float64", device="cpu"))
    gpu = Trainer(FlowTrainConfig(L=4, batch=16, steps=3, hidden=[8], dtype="float64", device="cuda"))
    # the same initial parameters; the latents come from different generators (CPU and CUDA
    # streams differ), so compare the loss of the same fields instead of trajectories
    gpu.flow.load_state_dict(cpu.flow.state_dict())
    x = torch.randn(32, 4, 4, dtype=torch.float64)
    a = cpu.flow.log_prob(x) - cpu.target.log_prob_unnormalized(x)
    b = gpu.flow.log_prob(x.cuda()) - gpu.target.log_prob_unnormalized(x.cuda())
    assert torch.allclose(a, b.cpu(), rtol=1e-10, atol=1e-10)


def test_flow_train_command_runs_on_cuda(cli, tmp_path):
    status, out, err = cli("flow", "train", "--L", "8", "--steps", "5", "--device", "cuda", "--out", tmp_path / "run",
                           "--quiet", "--json")
    assert status == 0, err
    metrics = json.loads(out)
    assert math.isfinite(metrics["variational_free_energy"]["mean"])
    # the GPU run continues on the CPU: the CUDA generator's state cannot, so it restarts, with a warning
    with pytest.warns(RuntimeWarning, match="written on cuda; the flow's noise generator cannot continue on cpu"):
        status, out, err = cli("flow", "train", "--steps", "8", "--device", "cpu", "--resume", "--out", tmp_path / "run",
                               "--quiet", "--json")
    assert status == 0, err
    assert json.loads((tmp_path / "run" / "config.json").read_text())["device"] == "cpu"


def test_the_fft_target_on_the_gpu_matches_the_dense_target_on_the_cpu_in_float64():
    from deeprg import Lattice
    from deeprg.models.ising import K_C
    from deeprg.models.relaxed import RelaxedIsing

    for L in (4, 16):
        lattice = Lattice.square(L)
        dense = RelaxedIsing(lattice, K_C, method="dense").double()
        fft = RelaxedIsing(lattice, K_C).double().cuda()
        x = torch.randn(8, L, L, dtype=torch.float64, generator=torch.Generator().manual_seed(L))
        assert torch.allclose(fft.log_prob_unnormalized(x.cuda()).cpu(), dense.log_prob_unnormalized(x),
                              rtol=1e-10, atol=1e-10)
    big = RelaxedIsing(Lattice.square(64), K_C).double()  # 64 x 64: the FFT target on both devices
    x = torch.randn(4, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(64))
    assert torch.allclose(big.cuda().log_prob_unnormalized(x.cuda()).cpu(), big.cpu().log_prob_unnormalized(x),
                          rtol=1e-10, atol=1e-10)


# ---- the flow's chains and estimators ---------------------------------------------------------------
def _chains_and_estimators():
    """name -> ``run(n)``: a chain or estimator of the trained GPU flow with ``n`` steps,
    batches or temperatures."""
    from deeprg.flows.annealing import annealed_importance_sampling, latent_log_weight
    from deeprg.flows.estimators import importance_ln_z, independence_metropolis, ising_observables
    from deeprg.flows.sampling import hmc_in_space
    from deeprg.flows.smc import _Path

    trainer = _trainer(steps=5)
    for _ in range(5):
        trainer.step()
    flow, target = trainer.flow, trainer.target
    gen = torch.Generator(device="cuda").manual_seed(0)
    x0 = flow.sample(16, gen).detach()
    observables = ising_observables(target, gen)
    path = _Path(flow.log_prior, latent_log_weight(flow, target), 0.5)
    z0 = flow.sample_latent(16, gen)
    return {
        "latent HMC": lambda n: hmc_in_space(flow, target, "latent", x0, n, n_leapfrog=2, generator=gen),
        "physical HMC": lambda n: hmc_in_space(flow, target, "physical", x0, n, n_leapfrog=2, generator=gen),
        "independence MH": lambda n: independence_metropolis(flow, target, n, 16, observables, gen),
        "IS": lambda n: importance_ln_z(flow, target, 32 * n, batch=32, generator=gen, observables=observables),
        "AIS": lambda n: annealed_importance_sampling(flow, target, 32, n + 1, 2, batch=32, pilot=8,
                                                      observables=observables, generator=gen),
        "SMC moves": lambda n: path.hmc_moves(z0, 0.1, n, 2, 0.2, 0.8, gen),
    }


def test_flow_chains_and_estimators_stay_on_the_gpu_and_copy_nothing_per_step_from_the_host():
    runs = _chains_and_estimators()
    for name, run in runs.items():
        result = run(2)
        tensors = [v for v in vars(result).values() if isinstance(v, torch.Tensor)] if hasattr(result, "__dict__") \
            else [t for t in result if isinstance(t, torch.Tensor)]
        assert any(t.device.type == "cuda" for t in tensors) or name in ("IS", "AIS"), name
        assert _copies_per_step(run) <= 0, name


@pytest.mark.filterwarnings("ignore:chain length", "ignore:no Sokal window", "ignore:importance weights",
                            "ignore:.*differs from the reference")
def test_the_commands_on_a_flow_run_work_on_cuda(cli, tmp_path):
    run = tmp_path / "run"
    status, _, err = cli("flow", "train", "--L", "4", "--steps", "200", "--batch", "256", "--hidden", "8",
                         "--device", "cuda", "--out", run, "--quiet")
    assert status == 0, err
    for method, extra in (("is", ()), ("ais", ("--anneal", "4")), ("smc", ("--replicas", "2")),
                          ("bridge", ("--pi-source", "hmc", "--pi-samples", "256")), ("bridge", ())):
        status, out, err = cli("flow", "estimate", run, "--method", method, "--samples", "256", "--leapfrog", "2",
                               *extra, "--device", "cuda", "--json", "--quiet")
        assert status == 0, (method, err)
        s = json.loads(out)
        assert s["method"] == method and s["device"] == "cuda", s
        # 4x4: ln Z is known exactly; an honest error bar covers it (loosely: short runs)
        assert abs(s["ln_z"]["mean"] - s["exact_ln_z"]) < 6 * s["ln_z"]["error"] + 0.05, (method, s["ln_z"])
    status, out, err = cli("flow", "sample", run, "--n", "8", "--out", tmp_path / "s.npz", "--device", "cuda",
                           "--json")
    assert status == 0, err
    assert np.load(tmp_path / "s.npz")["x"].shape == (8, 4, 4)
    status, out, err = cli("flow", "hmc", run, "--space", "both", "--chains", "8", "--steps", "30", "--warmup", "10",
                           "--leapfrog", "3", "--device", "cuda", "--json", "--quiet")
    assert status == 0, err
    s = json.loads(out)
    assert all(0 < s[space]["structure_factor"]["mean"] <= 1 for space in ("latent", "physical"))
    status, out, err = cli("flow", "mh", run, "--chains", "8", "--steps", "40", "--warmup", "5", "--device", "cuda",
                           "--json", "--quiet")
    assert status == 0, err
    assert 0 < json.loads(out)["acceptance"] <= 1
    status, out, err = cli("flow", "analyze", run, "--samples", "128", "--out", tmp_path / "analysis",
                           "--device", "cuda", "--json")
    assert status == 0, err
    assert np.array(json.loads(out)["mi_physical"]).shape == (16, 16)


# ---- the RBM projector: training, projection, MCRG -----------------------------------------------
RBM_SHAPES = pytest.mark.parametrize("shape", [(8, 8), (8, 8, 8)], ids=["2d-dense", "3d-conv"])


def _spins(shape, n=40, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).choice(np.array([-1, 1], dtype=np.int8), size=(n, *shape))


def _rbm(shape, n=40, **changes) -> RBMTrainer:
    cfg = RBMTrainConfig(**{"filter_size": 4, "epochs": 2, "batch": 10, "persistent": True, "device": "cuda",
                            **changes})
    return RBMTrainer(cfg, _spins(shape, n))


@RBM_SHAPES
def test_rbm_training_keeps_its_state_on_the_gpu(shape):
    trainer = _rbm(shape)
    for _ in range(3):
        record = trainer.step()
    assert math.isfinite(record["loss"])
    assert trainer.device.type == "cuda" and trainer._data.device.type == "cuda"
    assert trainer.weights.device.type == "cuda" and trainer.chains.device.type == "cuda"
    assert trainer.generator.device.type == "cuda"
    assert all(v.device.type == "cuda" for state in trainer.optimizer.state.values() for k, v in state.items()
               if k != "step")
    assert all(f.device.type == "cpu" for f in trainer.filters)


@RBM_SHAPES
def test_rbm_gpu_and_cpu_start_from_the_same_filter_and_agree_on_the_cd_gradient_in_float64(shape):
    spins = _spins(shape)
    cpu, gpu = (_rbm(shape, dtype="float64", seed=11, device=device) for device in ("cpu", "cuda"))
    assert torch.equal(gpu.weights.cpu(), cpu.weights)  # the initial filter comes from the same CPU draw
    for _ in range(3):  # a few steps on each (the Gibbs noise differs between the devices)
        assert math.isfinite(cpu.step()["loss"]) and math.isfinite(gpu.step()["loss"])
    w = torch.from_numpy(np.random.default_rng(2).normal(size=(4,) * len(shape)) * 0.3)
    cpu.weights.copy_(w)
    gpu.weights.copy_(w)
    v0, vk = (torch.from_numpy(spins[s : s + 10].reshape(10, -1)).double() for s in (0, 20))
    g_cpu, loss_cpu, h_cpu = cpu.gradient(v0, vk, None if cpu.conv else coupling_matrix(cpu.weights, shape))
    W = None if gpu.conv else coupling_matrix(gpu.weights, shape)
    g_gpu, loss_gpu, h_gpu = gpu.gradient(v0.cuda(), vk.cuda(), W)
    assert g_gpu.device.type == "cuda" and h_gpu.device.type == "cuda"
    assert torch.allclose(g_gpu.cpu(), g_cpu, rtol=1e-10, atol=1e-10)
    assert torch.allclose(h_gpu.cpu(), h_cpu, rtol=1e-10, atol=1e-10)
    assert loss_gpu == pytest.approx(loss_cpu, rel=1e-10, abs=1e-10)


@RBM_SHAPES
def test_rbm_training_on_the_gpu_saves_cpu_tensors_and_resumes_on_the_cpu(tmp_path, shape):
    gpu = _rbm(shape)
    gpu.train(checkpoint=tmp_path / "checkpoint.pt")
    assert gpu.epoch == 2 and gpu.filter_history.shape == (3, *(4,) * len(shape))
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)  # no map_location: tensors as saved

    def tensors(obj):
        if isinstance(obj, torch.Tensor):
            yield obj
        elif isinstance(obj, dict):
            for v in obj.values():
                yield from tensors(v)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                yield from tensors(v)

    assert all(t.device.type == "cpu" for t in tensors(state))
    cpu = _rbm(shape, epochs=3, device="cpu")
    with pytest.warns(RuntimeWarning, match="written on cuda"):
        cpu.load(tmp_path / "checkpoint.pt")
    assert torch.equal(cpu.weights, gpu.weights.cpu()) and cpu.chains.device.type == "cpu"
    cpu.train()
    assert cpu.epoch == 3 and np.array_equal(cpu.filter_history[:3], gpu.filter_history)
    again = _rbm(shape, epochs=3)  # back on the GPU: the CUDA generator's state fits, no warning
    again.load(tmp_path / "checkpoint.pt")
    again.train()
    if len(shape) == 2:  # the dense path is deterministic on the GPU: the resumed run is the uninterrupted one
        straight = _rbm(shape, epochs=3)
        straight.train()
        assert torch.equal(again.weights, straight.weights)


@RBM_SHAPES
def test_an_rbm_training_step_copies_nothing_from_host_to_device(shape):
    trainer = _rbm(shape, n=60)  # 6 minibatches per epoch
    trainer.step()  # warm-up: the epoch's permutation is copied, Adam's state made, kernels chosen
    trainer.step()  # the persistent chains' first use
    assert _host_to_device_copies(trainer.step) == []


@RBM_SHAPES
def test_rbm_projector_on_the_gpu_matches_the_cpu_in_float64(shape):
    w = np.random.default_rng(1).normal(size=(4,) * len(shape)) * 0.4
    spins = _spins(shape, 20, 6)
    cpu = RBMProjector(w, dtype=torch.float64, block_weight=0.3)
    gpu = RBMProjector(w, dtype=torch.float64, block_weight=0.3, device="cuda")
    assert gpu.weights.device.type == "cuda"
    p, q = cpu.probabilities(spins), gpu.probabilities(spins)
    assert isinstance(q, np.ndarray) and q.dtype == np.float64
    assert np.allclose(q, p, rtol=1e-10, atol=1e-10)
    # the same uniforms from the host generator: a coarse spin could differ only for a uniform
    # within the fields' rounding (1e-15) of its probability
    a, b = (p.transform(spins, np.random.default_rng(3)) for p in (gpu, cpu))
    assert np.array_equal(a, b)


def _ising(path, L, n, seed):
    from deeprg import Lattice
    from deeprg.data import SpinDataset, save_dataset
    from deeprg.mc import make_sampler
    from deeprg.models.ising import K_C

    run = make_sampler("wolff", Lattice.square(L), K_C, seed=seed, n_chains=1).run(n, thin=2, burn_in=100)
    save_dataset(path, SpinDataset.new(run.spins_flat(), K=K_C, sampler="wolff", updates_between_samples=2,
                                       seed=seed))
    return path


@pytest.mark.filterwarnings("ignore:chain length")
def test_rsrg_train_mcrg_and_exponent_vs_epoch_run_on_cuda(cli, tmp_path):
    train, data = _ising(tmp_path / "train8.npz", 8, 60, 1), _ising(tmp_path / "data16.npz", 16, 200, 2)
    run = tmp_path / "run"
    status, out, err = cli("rsrg", "train", "--data", train, "--filter", "4", "--epochs", "2", "--device", "cuda",
                           "--out", run, "--quiet", "--json")
    assert status == 0, err
    assert json.loads((run / "config.json").read_text())["device"] == "cuda"
    status, out, err = cli("mcrg", "--data", data, "--transform", run, "--levels", "2", "--blocks", "10",
                           "--device", "cuda", "--json", "--quiet")
    assert status == 0, err
    s = json.loads(out)
    assert s["device"] == "cuda" and s["transform"] == "rbm" and len(s["y_t"]) == 2
    status, out, err = cli("mcrg", "--data", data, "--transform", run, "--block-weights", "0,1", "--device", "cuda",
                           "--json", "--quiet")
    assert status == 0, err
    status, out, err = cli("rsrg", "exponent-vs-epoch", run, "--data", data, "--blocks", "10", "--device", "cuda",
                           "--json", "--quiet")
    assert status == 0, err
    assert json.loads(out)["device"] == "cuda"
    with pytest.warns(RuntimeWarning, match="written on cuda"):  # the GPU run continues on the CPU
        status, out, err = cli("rsrg", "train", "--data", train, "--epochs", "3", "--device", "cpu", "--resume",
                               "--out", run, "--quiet", "--json")
    assert status == 0, err
    assert json.loads(out)["epochs"] == 3


# ---- CORA -----------------------------------------------------------------------------------------
def test_cora_train_sample_and_eval_run_on_cuda(cli, tmp_path):
    from deeprg import Lattice
    from deeprg.data import SpinDataset, save_dataset
    from deeprg.mc import make_sampler

    run1d = make_sampler("wolff", Lattice((16,)), 1.0, seed=1).run(200, thin=4)
    data = save_dataset(tmp_path / "ising1d.npz", SpinDataset.new(run1d.spins_flat(), K=1.0, sampler="wolff",
                                                                  updates_between_samples=4, seed=1))
    run = tmp_path / "cora"
    status, out, err = cli("cora", "train", "--data", data, "--epochs", "3", "--device", "cuda", "--out", run,
                           "--quiet", "--json")
    assert status == 0, err
    assert json.loads((run / "config.json").read_text())["device"] == "cuda"
    status, out, err = cli("cora", "sample", run, "--n", "10", "--out", tmp_path / "s.npz", "--device", "cuda",
                           "--json")
    assert status == 0, err
    assert json.loads(out)["device"] == "cuda"
    status, out, err = cli("cora", "eval", run, "--data", data, "--samples", "200", "--device", "cuda", "--json")
    assert status == 0, err
    s = json.loads(out)
    assert s["device"] == "cuda" and math.isfinite(s["window_nll_per_site"]["mean"])
