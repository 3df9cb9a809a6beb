"""Training a flow by the variational free energy: bounds, exactness on a Gaussian, checkpoints."""

import json
import math
import signal

import pytest
import torch

from deeprg import Lattice
from deeprg.config import ConfigError, load_config
from deeprg.flows import train as train_module
from deeprg.flows.train import (
    CheckpointMismatch,
    FlowTrainConfig,
    NonFiniteLoss,
    Trainer,
    build_flow,
    build_target,
    variational_free_energy,
)
from deeprg.models.relaxed import GaussianTarget

torch.set_num_threads(1)

SMALL = dict(hidden=[8], n_couplings=2, threads=1, dtype="float64", eval_samples=512)


def test_training_on_a_gaussian_reaches_the_exact_free_energy():
    lattice = Lattice.square(8, 1)
    target = GaussianTarget.lattice_correlated(lattice, c=0.5)
    # the site-wise map starts bent (two-peaked marginals, for the relaxed Ising model); a Gaussian
    # target needs it straight, so it is off here, as it should be for any single-peaked target
    cfg = FlowTrainConfig(L=8, d=1, steps=300, batch=256, lr=5e-3, hidden=[16], n_couplings=2,
                          dtype="float64", threads=1, elementwise=False)
    trainer = Trainer(cfg, target=target)
    trainer.train()
    est = variational_free_energy(trainer.flow, trainer.target, 20000, generator=torch.Generator().manual_seed(1))
    exact = -target.exact_ln_z
    assert est.mean >= exact - 4 * est.error  # a variational bound
    assert abs(est.mean - exact) / abs(exact) < 1e-3


def test_variational_bound_never_below_exact_value_during_training():
    cfg = FlowTrainConfig(L=4, steps=150, batch=128, lr=3e-3, **SMALL)
    trainer = Trainer(cfg)
    exact = trainer.exact_free_energy
    gen = torch.Generator().manual_seed(7)
    for until in (0, 50, 150):
        trainer.train(until=until)
        est = variational_free_energy(trainer.flow, trainer.target, 4096, generator=gen)
        assert est.mean >= exact - 4 * est.error, (until, est, exact)
    assert est.mean - exact < 0.5 * abs(exact)  # it did learn something
    assert trainer.history[-1]["loss"] < trainer.history[0]["loss"]


def test_resume_from_checkpoint_is_exact(tmp_path):
    cfg = FlowTrainConfig(L=4, steps=12, batch=16, **SMALL)
    straight = Trainer(cfg)
    straight.train()

    first = Trainer(cfg)
    first.train(until=5, checkpoint=tmp_path / "ck.pt")
    resumed = Trainer(cfg)
    resumed.load(tmp_path / "ck.pt")
    assert resumed.step_count == 5
    resumed.train()
    for a, b in zip(straight.flow.parameters(), resumed.flow.parameters()):
        assert torch.equal(a, b)
    assert [h["loss"] for h in straight.history] == [h["loss"] for h in resumed.history]


def test_a_checkpoint_from_another_device_type_resumes_with_fresh_generators(tmp_path, as_written_on):
    """What a GPU run resumed on the CPU does (its checkpoint says cuda, which need not exist
    here): the flow, Adam and the step continue; the noise generator, whose CUDA state cannot
    drive a CPU generator, restarts from the seed and the step, with a warning, the same way
    every time."""
    cfg = FlowTrainConfig(L=4, steps=6, batch=16, **SMALL)
    first = Trainer(cfg)
    first.train(until=3, checkpoint=tmp_path / "ck.pt")
    as_written_on(tmp_path / "ck.pt", "cuda")
    runs = []
    for _ in range(2):
        resumed = Trainer(cfg)
        with pytest.warns(RuntimeWarning, match=r"written on cuda; the flow's noise generator cannot continue on cpu"
                                                r".* seeded from \[0, 3, 0\]"):
            resumed.load(tmp_path / "ck.pt")
        assert resumed.step_count == 3
        assert all(torch.equal(a, b) for a, b in zip(first.flow.parameters(), resumed.flow.parameters()))
        resumed.train()
        runs.append([p.detach().clone() for p in resumed.flow.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*runs))
    first.train()  # the uninterrupted run keeps its own stream
    assert not all(torch.equal(a, b) for a, b in zip(first.flow.parameters(), runs[0]))


def test_a_checkpoint_from_another_device_type_restarts_the_latent_hmc_generator_too(tmp_path, as_written_on):
    cfg = FlowTrainConfig(L=4, steps=4, batch=16, objective="mixture", pi_source="hmc", hmc_leapfrog=2, **SMALL)
    first = Trainer(cfg)
    first.train(until=2, checkpoint=tmp_path / "ck.pt")
    as_written_on(tmp_path / "ck.pt", "cuda")
    resumed = Trainer(cfg)
    with pytest.warns(RuntimeWarning) as caught:
        resumed.load(tmp_path / "ck.pt")
    messages = [str(w.message) for w in caught]
    assert any("the flow's noise generator" in m and "[0, 2, 0]" in m for m in messages)
    assert any("the latent HMC chains' generator" in m and "[0, 2, 1]" in m for m in messages)
    assert torch.equal(resumed.pi_source.x, first.pi_source.x)  # the chains themselves continue
    resumed.train()
    assert resumed.step_count == 4


def test_checkpoint_of_another_model_is_rejected(tmp_path):
    Trainer(FlowTrainConfig(L=4, steps=1, **SMALL)).save(tmp_path / "ck.pt")
    other = Trainer(FlowTrainConfig(L=4, steps=1, arch="tree", **SMALL))
    with pytest.raises(CheckpointMismatch, match="arch"):
        other.load(tmp_path / "ck.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointMismatch, match="not a readable"):
        other.load(tmp_path / "junk.pt")


class NaNAfter(torch.nn.Module):
    """A target whose log-density turns NaN after ``n`` calls."""

    def __init__(self, inner, n):
        super().__init__()
        self.inner, self.n, self.calls = inner, n, 0
        self.exact_ln_z = inner.exact_ln_z

    def log_prob_unnormalized(self, x):
        self.calls += 1
        out = self.inner.log_prob_unnormalized(x)
        return out * math.nan if self.calls > self.n else out

    def sample_reference(self, n, seed):
        return self.inner.sample_reference(n, seed)


@pytest.mark.parametrize("objective", ["reverse", "forward"])
def test_non_finite_loss_stops_training_and_keeps_last_checkpoint(tmp_path, objective):
    """Also for the forward objective, whose loss does not involve the flow's own samples."""
    cfg = FlowTrainConfig(L=4, steps=10, batch=16, checkpoint_seconds=1e-9, objective=objective, pi_pool=64, **SMALL)
    trainer = Trainer(cfg, target=NaNAfter(train_module.build_target(cfg), 4))
    with pytest.raises(NonFiniteLoss, match="step 5"):
        trainer.train(checkpoint=tmp_path / "ck.pt")
    params = [p.clone() for p in trainer.flow.parameters()]
    saved = Trainer(cfg)
    saved.load(tmp_path / "ck.pt")
    assert saved.step_count == 4
    for a, b in zip(params, saved.flow.parameters()):
        assert torch.equal(a, b)  # the failed step did not touch the parameters


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"L": 6}, "L must be a power of two"),
        ({"beta": 0.0}, "beta"),
        ({"beta": -1.0}, "beta"),
        ({"batch": 1}, "batch"),
        ({"arch": "transformer"}, "arch"),
        ({"L": 2, "arch": "tebd", "depth": 3}, "depth = 1"),
        ({"kernel": 2}, "kernel must be an odd integer"),
        ({"kernel": 3, "shared": False}, "kernel must be 1 when shared = false"),
        ({"spline_bins": 1}, "spline_bins must be 0"),
        ({"spline_bins": -3}, "spline_bins must be 0"),
        ({"device": "cuda:0"} if not torch.cuda.is_available() else {"device": "tpu"}, "device"),
    ],
)
def test_bad_config_is_rejected_with_its_name(overrides, match):
    with pytest.raises(ValueError, match=match):
        FlowTrainConfig(**overrides)


def trained_straight_and_resumed(cfg: FlowTrainConfig, tmp_path) -> Trainer:
    """Train ``cfg`` straight through, and again stopped at step 3, saved and resumed; assert the
    two end with equal parameters and return the straight one."""
    straight = Trainer(cfg)
    straight.train()
    first = Trainer(cfg)
    first.train(until=3)
    first.save(tmp_path / "ck.pt")
    resumed = Trainer(cfg)
    resumed.load(tmp_path / "ck.pt")
    resumed.train()
    for a, b in zip(straight.flow.parameters(), resumed.flow.parameters()):
        assert torch.equal(a, b)
    return straight


def test_convolutional_conditioners_train_and_resume_to_the_same_numbers(tmp_path):
    straight = trained_straight_and_resumed(FlowTrainConfig(L=4, steps=6, batch=16, kernel=3, **SMALL), tmp_path)
    assert any(p.dim() == 4 for p in straight.flow.parameters())  # 2D convolution weights


def test_spline_couplings_train_resume_and_grow_to_the_same_numbers(tmp_path):
    straight = trained_straight_and_resumed(FlowTrainConfig(L=4, steps=6, batch=16, spline_bins=4, **SMALL),
                                            tmp_path)
    assert straight.history[-1]["loss"] < straight.history[0]["loss"]
    larger = Trainer(FlowTrainConfig(L=8, steps=6, batch=16, spline_bins=4, **SMALL))
    larger.flow.hierarchy.initialize_from(straight.flow.hierarchy)
    with pytest.raises(ValueError, match="spline bins"):
        Trainer(FlowTrainConfig(L=8, steps=6, batch=16, spline_bins=6, **SMALL)).flow.hierarchy.initialize_from(
            straight.flow.hierarchy)


def test_unknown_config_key_is_named(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("L = 4\nlearning_rate = 0.1\n")
    with pytest.raises(ConfigError, match="learning_rate"):
        load_config(FlowTrainConfig, path)
    path.write_text("L = 4\nsteps = 7\n")
    assert load_config(FlowTrainConfig, path, {"steps": 9, "batch": None}).steps == 9


def test_cli_train_writes_run_directory(cli, tmp_path):
    run = tmp_path / "run"
    status, out, _ = cli("flow", "train", "--L", "4", "--steps", "5", "--batch", "8",
                             "--threads", "1", "--out", str(run), "--json", "--quiet")
    assert status == 0
    metrics = json.loads(out)
    assert set(metrics) >= {"variational_free_energy", "exact_free_energy", "relative_error", "steps",
                            "wall_seconds"}
    assert set(metrics["variational_free_energy"]) == {"mean", "error"}
    assert metrics["steps"] == 5 and metrics["exact_free_energy"] == pytest.approx(-37.377, abs=1e-3)
    for name in ("config.json", "checkpoint.pt", "metrics.json", "training_curve.png"):
        assert (run / name).exists()
    config = json.loads((run / "config.json").read_text())
    assert config["L"] == 4 and config["seed"] == 0 and "deeprg_version" in config

    # a second run into the same directory must not overwrite it silently
    status, _, err = cli("flow", "train", "--L", "4", "--steps", "5", "--out", str(run), "--quiet")
    assert status == 2 and "--resume" in err
    status, out, _ = cli("flow", "train", "--L", "4", "--steps", "7", "--batch", "8", "--threads", "1",
                             "--out", str(run), "--resume", "--json", "--quiet")
    assert status == 0 and json.loads(out)["steps"] == 7
    status, _, err = cli("flow", "train", "--L", "8", "--steps", "7", "--out", str(run), "--resume",
                             "--quiet")
    assert status == 2 and "--L: the run was made with L = 4" in err


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--L", "6"], "L must be a power of two"),
        (["--beta", "0"], "beta"),
        (["--batch", "1"], "--batch"),
        (["--steps", "0"], "--steps"),
        (["--arch", "cnn"], "--arch"),
    ],
)
def test_cli_bad_input_exits_2_before_writing(cli, tmp_path, argv, needle):
    run = tmp_path / "run"
    status, _, err = cli("flow", "train", *argv, "--out", str(run), "--quiet")
    assert status == 2 and needle in err.strip().splitlines()[-1]
    assert not run.exists()


def test_cli_unknown_config_key_exits_2(cli, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("stepz = 3\n")
    status, _, err = cli("flow", "train", "--config", str(cfg), "--out", str(tmp_path / "r"))
    assert status == 2 and "stepz" in err


def test_cli_ctrl_c_saves_checkpoint_and_resumes(cli, tmp_path, monkeypatch):
    run = tmp_path / "run"
    original = Trainer.step

    def step_then_interrupt(self):
        record = original(self)
        if self.step_count == 3:
            signal.raise_signal(signal.SIGINT)
        return record

    monkeypatch.setattr(Trainer, "step", step_then_interrupt)
    args = ["flow", "train", "--L", "4", "--steps", "6", "--batch", "8", "--threads", "1", "--out", str(run),
            "--quiet"]
    status, _, err = cli(*args)
    assert status == 130 and "--resume" in err
    state = train_module.load_checkpoint(run / "checkpoint.pt")
    assert state["step"] == 3 and not (run / "metrics.json").exists()
    monkeypatch.setattr(Trainer, "step", original)
    status, out, _ = cli(*args, "--resume", "--json")
    assert status == 0 and json.loads(out)["steps"] == 6


def _saved_for_backward(cfg: FlowTrainConfig) -> int:
    """Bytes of the distinct tensors the autograd graph keeps for the backward pass of one loss."""
    flow, target = build_flow(cfg), build_target(cfg)
    seen, total = set(), [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total[0] += storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        x, log_q = flow.sample_and_log_prob(cfg.batch, torch.Generator().manual_seed(0))
        (log_q - target.log_prob_unnormalized(x)).mean()
    return total[0]


@pytest.mark.parametrize("options", [dict(L=8), dict(L=16, hidden=[8], n_couplings=2), dict(L=16, dtype="float64"),
                                     dict(L=8, d=1, hidden=[16, 16, 16])])
def test_memory_estimate_covers_what_autograd_keeps_for_the_backward_pass(options):
    cfg = FlowTrainConfig(batch=8, **options)
    saved = _saved_for_backward(cfg)
    estimate, _ = cfg.memory_estimate()
    assert saved <= estimate <= 2.5 * saved + 2e6


def test_the_variational_free_energy_builds_no_autograd_graph():
    cfg = FlowTrainConfig(L=4, batch=8)
    flow, target = build_flow(cfg), build_target(cfg)
    seen = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: seen.append(t.shape) or t, lambda t: t):
        estimate = variational_free_energy(flow, target, 64, generator=torch.Generator().manual_seed(0))
    assert seen == [] and math.isfinite(estimate.mean)
