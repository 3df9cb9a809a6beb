"""Training objectives beyond Eq. 5: forward KL and the mixture, on samples of pi from latent HMC
chains or a reference sampler; trust diagnostics logged during training."""

import math

import pytest
import torch

from deeprg.config import ConfigError
from deeprg.flows.objectives import LatentHMCSource, ReferenceSource
from deeprg.flows.train import FlowTrainConfig, Trainer
from deeprg.lattice import Lattice
from deeprg.models.relaxed import GaussianTarget

torch.set_num_threads(1)


def small(**kw):
    base = dict(L=4, steps=6, batch=16, threads=1, eval_samples=64)
    return FlowTrainConfig(**{**base, **kw})


@pytest.mark.parametrize("objective, source", [("forward", "hmc"), ("mixture", "hmc"), ("mixture", "reference")])
def test_training_with_samples_of_pi_resumes_exactly(tmp_path, objective, source):
    cfg = small(objective=objective, pi_source=source, pi_pool=40)
    straight = Trainer(cfg)
    straight.train()
    first = Trainer(cfg)
    first.train(until=3, checkpoint=tmp_path / "ck.pt")
    resumed = Trainer(cfg)
    resumed.load(tmp_path / "ck.pt")
    resumed.train()
    for a, b in zip(straight.flow.parameters(), resumed.flow.parameters()):
        assert torch.equal(a, b)
    assert [r["forward_nll"] for r in straight.history] == [r["forward_nll"] for r in resumed.history]


def test_latent_hmc_chains_adapt_their_step_towards_the_target_acceptance():
    cfg = small(objective="forward", pi_source="hmc")
    trainer = Trainer(cfg)
    source = trainer.pi_source
    assert isinstance(source, LatentHMCSource)
    for _ in range(40):
        x = source.draw(trainer.flow, trainer.target, cfg.batch)
    assert x.shape == (cfg.batch, 4, 4) and torch.isfinite(x).all()
    assert 0.4 < source.acceptance < 0.95


def test_forward_kl_on_exact_samples_recovers_a_gaussian_covariance():
    """A flow with only the circulant linear map can represent a translation-invariant Gaussian;
    trained by the forward KL alone on exact samples, its covariance matches the target's."""
    lattice = Lattice.square(4)
    target = GaussianTarget.lattice_correlated(lattice, c=0.8)
    cfg = small(objective="forward", pi_source="reference", steps=400, batch=256, elementwise=False,
                symmetrize=False, lr=1e-2, n_couplings=1, hidden=[4], pi_pool=4096)
    trainer = Trainer(cfg, target=target)
    assert isinstance(trainer.pi_source, ReferenceSource)
    gen = torch.Generator().manual_seed(5)
    trainer.train()
    with torch.no_grad():
        x = trainer.flow.sample(20000, gen).double().reshape(20000, -1)
    cov = torch.cov(x.T)
    exact = torch.as_tensor(target.covariance, dtype=torch.float64)
    assert torch.allclose(cov, exact, atol=0.06 * float(exact.diagonal().mean()))


def test_diagnostics_log_ess_tail_index_and_structure_factor():
    trainer = Trainer(small(steps=4, batch=32, diagnostics_every=2))
    trainer.train()
    logged = [r for r in trainer.history if "reverse_ess" in r]
    assert [r["step"] for r in logged] == [2, 4]
    for r in logged:
        assert 0 < r["reverse_ess"] <= 1 and math.isfinite(r["pareto_k"])
        assert 0 <= r["structure_factor"] <= 1
        assert r["reference_structure_factor"] == pytest.approx(0.7614, abs=1e-3)  # exact, 4x4 at K_c


def test_diagnostics_do_not_change_the_training_numbers():
    plain, watched = Trainer(small()), Trainer(small(diagnostics_every=1))
    plain.train()
    watched.train()
    assert [r["loss"] for r in plain.history] == [r["loss"] for r in watched.history]


@pytest.mark.parametrize("key, value", [("objective", "backward"), ("forward_weight", 1.0), ("forward_weight", 0.0),
                                        ("pi_source", "mcmc"), ("pi_pool", 0), ("hmc_moves", 0),
                                        ("diagnostics_every", -1)])
def test_bad_objective_settings_are_refused(key, value):
    with pytest.raises(ConfigError, match=key):
        small(**{key: value})


def test_a_target_without_a_reference_sampler_asks_for_latent_hmc():
    class Plain(torch.nn.Module):
        event_shape, exact_ln_z = (4, 4), None

        def log_prob_unnormalized(self, x):
            return -0.5 * x.reshape(len(x), -1).pow(2).sum(1)

    with pytest.raises(ConfigError, match="pi_source = 'hmc'"):
        Trainer(small(objective="forward"), target=Plain())
    assert isinstance(Trainer(small(objective="forward", pi_source="hmc"), target=Plain()).pi_source,
                      LatentHMCSource)


def test_latent_hmc_chains_stay_on_pi_while_the_flow_changes():
    """The chains' state is the field x, moved by HMC in the latent space of whatever the flow is
    now: a pi-invariant kernel for every flow. Chains started on exact samples of a Gaussian keep
    its covariance through draws between which the flow's parameters are perturbed, while the
    same latents pushed through the perturbed flows (chains that kept z) drift off it."""
    lattice = Lattice.square(4)
    target = GaussianTarget.lattice_correlated(lattice, c=0.8)
    cfg = small(objective="forward", pi_source="hmc", batch=4000, elementwise=False, symmetrize=False,
                dtype="float64")
    trainer = Trainer(cfg, target=target)
    source = trainer.pi_source
    source.x = target.sample_reference(cfg.batch, seed=3)[0].to(torch.float64)
    gen = torch.Generator().manual_seed(1)
    exact = torch.as_tensor(target.covariance, dtype=torch.float64)
    tolerance = 0.1 * float(exact.diagonal().mean())

    def deviation(x):
        return float((torch.cov(x.reshape(cfg.batch, -1).T) - exact).abs().max())

    for _ in range(6):
        with torch.no_grad():
            z, _ = trainer.flow.hierarchy.renormalize(source.x)
            for p in trainer.flow.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
            dragged, _ = trainer.flow.hierarchy.generate(z)
        x = source.draw(trainer.flow, target, cfg.batch)
        assert source.acceptance > 0.5
        assert deviation(x) < tolerance
    assert deviation(dragged) > 2 * tolerance
