"""Exact estimators built on a flow: importance-weighted ln Z, independence MH, latent HMC."""

import math

import pytest
import torch

from deeprg import Lattice
from deeprg.flows import Flow, Hierarchy
from deeprg.flows.estimators import importance_ln_z, independence_metropolis, latent_log_prob, pareto_k
from deeprg.mc.hmc import hmc
from deeprg.mc.stats import estimate
from deeprg.models.enumeration import Enumeration
from deeprg.models.ising import K_C
from deeprg.models.relaxed import GaussianTarget, RelaxedIsing

torch.set_num_threads(1)


def make_flow(shape, symmetrize=False, perturb=0.0, seed=0):
    flow = Flow(Hierarchy(Lattice(shape), "mera", hidden=(8,)), symmetrize=symmetrize).double()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(perturb * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return flow


def test_importance_ln_z_is_exact_for_an_exact_flow():
    flow = make_flow((4, 4))  # a fresh flow is the identity: q = N(0, 1)
    target = GaussianTarget((4, 4), precision=torch.eye(16, dtype=torch.float64))
    est, ess, k = importance_ln_z(flow, target, 1000, generator=torch.Generator().manual_seed(1))
    assert abs(est.mean - target.exact_ln_z) < 1e-12 and est.error < 1e-12
    assert abs(ess - 1.0) < 1e-12
    assert k < 0  # bounded (here constant) weights


def test_importance_ln_z_is_unbiased_for_an_inexact_flow():
    flow = make_flow((4, 4), perturb=0.02)
    target = GaussianTarget.lattice_correlated(Lattice((4, 4)), c=0.1)
    est, ess, k = importance_ln_z(flow, target, 40000, generator=torch.Generator().manual_seed(2))
    assert 0.05 < ess < 1.0 and k < 0.5
    assert abs(est.mean - target.exact_ln_z) < 4 * est.error


def test_importance_ln_z_warns_when_the_weights_are_heavy_tailed():
    flow = make_flow((4, 4))  # N(0, 1) proposal for a target 3x wider in every direction
    target = GaussianTarget((4, 4), precision=torch.eye(16, dtype=torch.float64) / 9.0)
    with pytest.warns(UserWarning, match="heavy-tailed"):
        result = importance_ln_z(flow, target, 2000, generator=torch.Generator().manual_seed(1))
    assert result.pareto_k > 0.7


@pytest.mark.parametrize("k", [0.2, 0.5, 0.8])
def test_pareto_k_recovers_the_tail_index_of_pareto_weights(k):
    """Weights w = U^-k (U uniform) have a Pareto tail of index k exactly."""
    u = torch.rand(40000, generator=torch.Generator().manual_seed(int(10 * k)), dtype=torch.float64)
    assert pareto_k(-k * torch.log(u)) == pytest.approx(k, abs=0.12)


def test_independence_metropolis_with_exact_proposal_accepts_everything():
    flow = make_flow((4, 4))
    target = GaussianTarget((4, 4), precision=torch.eye(16, dtype=torch.float64))
    res = independence_metropolis(flow, target, 20, chains=8, generator=torch.Generator().manual_seed(3))
    assert res.acceptance_rate == pytest.approx(1.0, abs=1e-12)


def structure_factor_exact(K):
    enum = Enumeration(Lattice((2, 2)), K)
    return enum.mean(lambda s: s.reshape(len(s), -1).sum(1).astype(float) ** 2) / 16


# 256 chains of 300 steps: tau_int is estimated from the autocovariance pooled over all chains,
# so the per-chain length warning does not apply.
@pytest.mark.filterwarnings("ignore:chain length")
def test_latent_hmc_with_symmetrized_flow_samples_the_target_exactly():
    K = K_C
    target = RelaxedIsing(Lattice((2, 2)), K)
    flow = make_flow((2, 2), symmetrize=True, perturb=0.1)  # deliberately not trained
    gen = torch.Generator().manual_seed(4)
    z0 = flow.sample_latent(256, gen)

    def structure_factor(z):
        x, _ = flow.hierarchy.generate(z)
        sign = torch.randint(0, 2, (len(z), 1, 1), generator=gen).double() * 2 - 1  # symmetrized flow
        s = target.sample_spins(sign * x, gen).double()
        return s.reshape(len(z), -1).sum(1) ** 2 / 16

    res = hmc(latent_log_prob(flow, target), z0, 300, step_size=0.3, n_leapfrog=6, warmup=100,
              observables={"sf": structure_factor}, generator=gen)
    est = estimate(res.series["sf"].T.numpy())
    assert abs(est.mean - structure_factor_exact(K)) < 4 * est.error
    assert 0.3 < res.acceptance_rate
    assert math.isfinite(est.error) and est.error > 0
