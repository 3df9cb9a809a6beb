"""What the repeated steps of the GPU path must not do, checked where CI can check it, on the CPU:
use host data on a device (a Python list or a numpy array as an index, ``torch.tensor`` or
``torch.as_tensor`` with a ``device``) or move a tensor to a device (``Tensor.to`` with a device,
called from deeprg). On a GPU each such call is a host-to-device copy, and a synchronization, at every step;
``tests/test_cuda.py`` counts the copies themselves where a GPU is present.

A workload ``run(n)`` (``n`` steps, batches or moves) is run with 2 and with 4 steps under
:class:`HostTraffic`; a call site whose count grows with the steps is traffic per step. Start-up
traffic (reading data, casting buffers once, assembling results on the host) is allowed.
"""

from __future__ import annotations

import collections
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch

SRC = str(Path(__file__).resolve().parents[1] / "src" / "deeprg")
TORCH = str(Path(torch.__file__).resolve().parent)


def _caller() -> str | None:
    """``file:line`` of the code that called the patched torch function, ``None`` when that is
    torch itself (its internals move tensors within a device, e.g. ``clip_grad_norm_``)."""
    here = str(Path(__file__).resolve())
    frames = [f for f in traceback.extract_stack() if f.filename != here]
    caller = frames[-1] if frames else None
    if caller is None or caller.filename.startswith(TORCH):
        return None
    if caller.filename.startswith(SRC):
        return f"{Path(caller.filename).relative_to(SRC)}:{caller.lineno}"
    return f"{caller.filename}:{caller.lineno}"


def _host_index(index) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, (list, np.ndarray)) for i in items)


def _names_a_device(args, kwargs) -> bool:
    if "device" in kwargs or any(isinstance(a, torch.Tensor) for a in args):
        return True
    return any(isinstance(a, torch.device) or (isinstance(a, str) and a.split(":")[0] in ("cpu", "cuda"))
               for a in args)


class HostTraffic:
    """Records, as ``Counter`` of ``"what at file:line"``, the calls that bring host data to a
    device while installed (through pytest's ``monkeypatch``)."""

    def __init__(self, monkeypatch) -> None:
        self.events: collections.Counter = collections.Counter()
        record = self._record
        getitem, setitem, to = torch.Tensor.__getitem__, torch.Tensor.__setitem__, torch.Tensor.to

        def patched_getitem(self, index):
            if _host_index(index):
                record("index by host data")
            return getitem(self, index)

        def patched_setitem(self, index, value):
            if _host_index(index):
                record("indexed assignment by host data")
            return setitem(self, index, value)

        def patched_to(self, *args, **kwargs):
            if _names_a_device(args, kwargs):
                record("Tensor.to(device)")
            return to(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, "__getitem__", patched_getitem)
        monkeypatch.setattr(torch.Tensor, "__setitem__", patched_setitem)
        monkeypatch.setattr(torch.Tensor, "to", patched_to)
        for name in ("tensor", "as_tensor"):
            original = getattr(torch, name)

            def patched(*args, _original=original, _name=name, **kwargs):
                if "device" in kwargs:  # host data straight onto a device (without: a CPU tensor)
                    record(f"torch.{_name}(device=...)")
                return _original(*args, **kwargs)

            monkeypatch.setattr(torch, name, patched)

    def _record(self, what: str) -> None:
        caller = _caller()
        if caller is not None:
            self.events[f"{what} at {caller}"] += 1

    def per_step(self, run) -> dict[str, int]:
        """Call sites whose count grows from ``run(2)`` to ``run(4)``, with the growth."""
        run(2)  # warm-up: casts cached, chains and optimizer state made
        counts = []
        for n in (2, 4):
            self.events.clear()
            run(n)
            counts.append(collections.Counter(self.events))
        return {site: counts[1][site] - counts[0][site] for site in counts[1] if counts[1][site] > counts[0][site]}


@pytest.fixture
def traffic(monkeypatch):
    return HostTraffic(monkeypatch)


def test_the_detector_sees_list_indexing_tensor_construction_and_device_moves(traffic):
    x = torch.zeros(3, 4)

    def run(n):
        for _ in range(n):
            _ = x[..., [0, 2]]
            x[:, np.array([1])] = 1.0
            torch.tensor([1.0]).to(x.device)
            torch.as_tensor([1], device=x.device)
            torch.tensor([2.0])  # a CPU tensor: no device involved
            _ = x[:, 1:] * 2.0  # slices and scalars are no host data
    found = traffic.per_step(run)
    assert sorted(k.split(" at ")[0] for k in found) == [
        "Tensor.to(device)", "index by host data", "indexed assignment by host data",
        "torch.as_tensor(device=...)"]
    assert all(v == 2 for v in found.values())


# ---- the flow: training and the chains and estimators on a trained flow ------------------------------
@pytest.fixture(scope="module")
def flow_run():
    from deeprg.flows.train import FlowTrainConfig, Trainer

    torch.set_num_threads(1)
    trainer = Trainer(FlowTrainConfig(L=4, batch=16, steps=20, hidden=[8], threads=1))
    for _ in range(3):
        trainer.step()
    return trainer


@pytest.mark.parametrize("objective", ["reverse", "forward", "mixture"])
@pytest.mark.parametrize("spline_bins", [0, 4])
def test_a_flow_training_step_brings_no_host_data_to_the_device(traffic, objective, spline_bins):
    from deeprg.flows.train import FlowTrainConfig, Trainer

    trainer = Trainer(FlowTrainConfig(L=4, batch=16, steps=20, hidden=[8], threads=1, objective=objective,
                                      spline_bins=spline_bins, pi_pool=1024))  # one pool: drawn in the warm-up

    def run(n):
        for _ in range(n):
            trainer.step()

    assert traffic.per_step(run) == {}


def test_a_flow_training_step_on_latent_hmc_samples_brings_no_host_data_to_the_device(traffic):
    from deeprg.flows.train import FlowTrainConfig, Trainer

    trainer = Trainer(FlowTrainConfig(L=4, batch=16, steps=20, hidden=[8], threads=1, objective="mixture",
                                      pi_source="hmc", hmc_leapfrog=2))
    assert traffic.per_step(lambda n: [trainer.step() for _ in range(n)]) == {}


def test_a_convolutional_flow_training_step_brings_no_host_data_to_the_device(traffic):
    from deeprg.flows.train import FlowTrainConfig, Trainer

    trainer = Trainer(FlowTrainConfig(L=8, batch=8, steps=20, hidden=[8], threads=1, kernel=3))
    assert traffic.per_step(lambda n: [trainer.step() for _ in range(n)]) == {}


def _flow_workloads(trainer) -> dict:
    from deeprg.flows.annealing import annealed_importance_sampling, latent_log_weight
    from deeprg.flows.bridge import bridge_sampling
    from deeprg.flows.estimators import importance_ln_z, independence_metropolis, ising_observables
    from deeprg.flows.sampling import hmc_in_space, latent_hmc_fields
    from deeprg.flows.smc import _Path

    flow, target = trainer.flow, trainer.target
    gen = torch.Generator().manual_seed(0)
    x0 = flow.sample(8, gen).detach()
    observables = ising_observables(target, gen)
    path = _Path(flow.log_prior, latent_log_weight(flow, target), 0.5)
    z0 = flow.sample_latent(8, gen)
    pi = flow.sample(400, gen).detach().double()
    return {
        "latent HMC": lambda n: hmc_in_space(flow, target, "latent", x0, n, n_leapfrog=2, generator=gen),
        "physical HMC": lambda n: hmc_in_space(flow, target, "physical", x0, n, n_leapfrog=2, generator=gen),
        "latent HMC fields": lambda n: latent_hmc_fields(flow, target, n, 4, thin=1, warmup=1, n_leapfrog=2,
                                                         generator=gen),
        "independence MH": lambda n: independence_metropolis(flow, target, n, 8, observables, gen),
        "IS": lambda n: importance_ln_z(flow, target, 32 * n, batch=32, generator=gen, observables=observables),
        "AIS": lambda n: annealed_importance_sampling(flow, target, 32, n + 1, 2, batch=32, pilot=8,
                                                      observables=observables, generator=gen),
        "SMC moves": lambda n: path.hmc_moves(z0, 0.1, n, 2, 0.2, 0.8, gen),
        "bridge": lambda n: bridge_sampling(flow, target, 100 * n, pi[: 100 * n], gen, batch=100),
    }


@pytest.mark.filterwarnings("ignore:importance weights", "ignore:chain length", "ignore:no Sokal window")
@pytest.mark.parametrize("name", ["latent HMC", "physical HMC", "latent HMC fields", "independence MH", "IS", "AIS",
                                  "SMC moves", "bridge"])
def test_the_flow_chains_and_estimators_bring_no_host_data_to_the_device_per_step(traffic, flow_run, name):
    assert traffic.per_step(_flow_workloads(flow_run)[name]) == {}


# ---- the RBM projector's training and CORA's --------------------------------------------------------
@pytest.mark.parametrize("shape", [(8, 8), (8, 8, 8)], ids=["2d-dense", "3d-conv"])
def test_an_rbm_training_step_brings_no_host_data_to_the_device(traffic, shape):
    from deeprg.rsrg.train import RBMTrainConfig, Trainer

    spins = np.random.default_rng(0).choice(np.array([-1, 1], dtype=np.int8), size=(200, *shape))
    trainer = Trainer(RBMTrainConfig(filter_size=4, epochs=50, batch=10, persistent=True, threads=1), spins)
    trainer.step()  # the first epoch draws the permutation and makes the persistent chains
    assert traffic.per_step(lambda n: [trainer.step() for _ in range(n)]) == {}


def test_a_cora_training_step_brings_no_host_data_to_the_device(traffic):
    from deeprg.cora.learn import CoraTrainConfig, Trainer

    data = torch.from_numpy(np.random.default_rng(0).integers(0, 2, size=(64, 16)))
    trainer = Trainer(CoraTrainConfig(lattice_shape=[16], epochs=50, threads=1), data)
    assert traffic.per_step(lambda n: [trainer.step() for _ in range(n)]) == {}


@pytest.mark.parametrize("shape", [(16,), (8, 8)])
def test_cora_bayesian_inverse_brings_no_host_data_to_the_device_per_gibbs_sweep(traffic, shape):
    from deeprg.cora import Cora, coarse_grain

    net = Cora(shape, 2, init="random", seed=2)
    fine = torch.from_numpy(np.random.default_rng(1).integers(0, 2, size=(32, net.n_sites(0))))
    gen = torch.Generator().manual_seed(0)
    assert traffic.per_step(lambda n: coarse_grain(net, 1, fine, sweeps=n, generator=gen)) == {}
