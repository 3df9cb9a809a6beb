"""Exact estimators built on a flow: (annealed) importance-weighted ln Z and reweighted observables,
independence MH, latent HMC."""

import math
import warnings

import pytest
import torch

from deeprg import Lattice
from deeprg.flows import Flow, Hierarchy
from deeprg.flows.annealing import annealed_importance_sampling, ladder
from deeprg.flows.estimators import (
    importance_ln_z,
    independence_metropolis,
    latent_log_prob,
    pareto_k,
    weighted_estimate,
)
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
    est, ess, k, _ = importance_ln_z(flow, target, 1000, generator=torch.Generator().manual_seed(1))
    assert abs(est.mean - target.exact_ln_z) < 1e-12 and est.error < 1e-12
    assert abs(ess - 1.0) < 1e-12
    assert k < 0  # bounded (here constant) weights


def test_importance_ln_z_is_unbiased_for_an_inexact_flow():
    flow = make_flow((4, 4), perturb=0.02)
    target = GaussianTarget.lattice_correlated(Lattice((4, 4)), c=0.1)
    est, ess, k, _ = importance_ln_z(flow, target, 40000, generator=torch.Generator().manual_seed(2))
    assert 0.05 < ess < 1.0 and k < 0.5
    assert abs(est.mean - target.exact_ln_z) < 4 * est.error


def test_reweighted_observable_equals_the_exact_covariance():
    """<x_0 x_1> and <x_0^2> of a correlated Gaussian by importance weights from an inexact flow,
    against the inverse of the precision matrix."""
    flow = make_flow((4, 4), perturb=0.02)
    target = GaussianTarget.lattice_correlated(Lattice((4, 4)), c=0.1)
    cov = torch.linalg.inv(target.precision)
    observables = {"x00^2": lambda x: x[:, 0, 0] ** 2, "x00 x01": lambda x: x[:, 0, 0] * x[:, 0, 1]}
    est = importance_ln_z(flow, target, 40000, generator=torch.Generator().manual_seed(3), observables=observables)
    for name, exact in (("x00^2", cov[0, 0]), ("x00 x01", cov[0, 1])):
        o = est.observables[name]
        assert abs(o.mean - float(exact)) < 4 * o.error and o.error < 0.02


def test_importance_ln_z_warns_when_the_weights_are_heavy_tailed():
    flow = make_flow((4, 4))  # N(0, 1) proposal for a target 3x wider in every direction
    target = GaussianTarget((4, 4), precision=torch.eye(16, dtype=torch.float64) / 9.0)
    with pytest.warns(UserWarning, match="heavy-tailed"):
        result = importance_ln_z(flow, target, 2000, generator=torch.Generator().manual_seed(1))
    assert result.pareto_k > 0.7


def test_weighted_estimate_rejects_bad_weights_and_values():
    log_w = torch.zeros(100, dtype=torch.float64)
    with pytest.raises(ValueError, match="at least 25"):
        weighted_estimate(log_w[:24])
    with pytest.raises(FloatingPointError, match="non-finite"):
        weighted_estimate(torch.cat([log_w[:99], torch.tensor([math.nan], dtype=torch.float64)]))
    with pytest.raises(ValueError, match="values\\['S'\\] has shape"), warnings.catch_warnings():
        warnings.simplefilter("error")  # raised before any warning
        weighted_estimate(log_w, {"S": torch.zeros(99)})


@pytest.mark.parametrize("k", [0.2, 0.5, 0.8])
def test_pareto_k_recovers_the_tail_index_of_pareto_weights(k):
    """Weights w = U^-k (U uniform) have a Pareto tail of index k exactly."""
    u = torch.rand(40000, generator=torch.Generator().manual_seed(int(10 * k)), dtype=torch.float64)
    assert pareto_k(-k * torch.log(u)) == pytest.approx(k, abs=0.12)


def test_pareto_k_does_not_overflow_for_widely_spread_weights():
    """Log-weights spread over thousands of nats (a badly mismatched flow) are finite; the tail
    fit must not overflow (exp(800) is inf in float64) and is the same as at any offset or scale
    of the weights."""
    u = torch.rand(40000, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    log_w = -0.8 * torch.log(u)
    spread = 3000.0 * log_w / log_w.max()  # same ordering, tail log-weights far beyond 709 apart
    assert math.isfinite(pareto_k(spread)) and pareto_k(spread) > 0.7
    assert pareto_k(log_w + 1e4) == pytest.approx(pareto_k(log_w), abs=1e-6)
    with pytest.raises(FloatingPointError, match="non-finite"):
        pareto_k(torch.cat([log_w[:99], torch.tensor([math.inf], dtype=torch.float64)]))


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


# Annealed importance sampling


def test_ladder_runs_from_0_to_1_and_is_denser_near_1():
    assert ladder(4, power=1.0) == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    b = ladder(100)
    steps = [hi - lo for lo, hi in zip(b[:-1], b[1:])]
    assert b[0] == 0.0 and b[-1] == 1.0 and all(s > 0 for s in steps)
    assert steps[-1] < steps[0] / 100


@pytest.mark.filterwarnings("ignore:importance weights give only")  # 200 samples < 200 effective
def test_one_temperature_is_plain_importance_sampling():
    flow = make_flow((4, 4), perturb=0.02)
    target = GaussianTarget.lattice_correlated(Lattice((4, 4)), c=0.1)
    ais = annealed_importance_sampling(flow, target, 200, n_temperatures=1, generator=torch.Generator().manual_seed(5))
    plain = importance_ln_z(flow, target, 200, generator=torch.Generator().manual_seed(5))
    assert ais.estimate.ln_z.mean == pytest.approx(plain.ln_z.mean, abs=1e-12)
    assert ais.estimate.ess_fraction == pytest.approx(plain.ess_fraction, abs=1e-12)
    assert len(ais.acceptance) == 0


@pytest.mark.filterwarnings("ignore:importance weights")
def test_annealing_is_unbiased_where_the_importance_weights_are_heavy_tailed():
    """N(0, 1) proposal, target N(0, 4) in 4 dimensions: the plain weights have tail index 3/4,
    so their ln Z is many sigma low; 50 temperatures of annealing make them light-tailed and exact."""
    flow = make_flow((2, 2))
    target = GaussianTarget((2, 2), precision=torch.eye(4, dtype=torch.float64) / 4.0)
    plain = importance_ln_z(flow, target, 1000, generator=torch.Generator().manual_seed(0))
    assert plain.ln_z.mean < target.exact_ln_z - 4 * plain.ln_z.error
    res = annealed_importance_sampling(flow, target, 1000, n_temperatures=50, n_leapfrog=3,
                                       generator=torch.Generator().manual_seed(0))
    est = res.estimate
    assert abs(est.ln_z.mean - target.exact_ln_z) < 4 * est.ln_z.error and est.ln_z.error < 0.05
    assert est.pareto_k < 0.6 and est.ess_fraction > 3 * plain.ess_fraction
    assert res.step_sizes.shape == (49,) and 0.6 < float(res.acceptance.mean()) < 0.95


def test_reweighted_observables_of_annealed_samples_are_exact():
    """<x_0^2> of the wide Gaussian from the annealed, reweighted samples equals its variance, 4."""
    flow = make_flow((2, 2))
    target = GaussianTarget((2, 2), precision=torch.eye(4, dtype=torch.float64) / 4.0)
    calls = []
    res = annealed_importance_sampling(flow, target, 1000, n_temperatures=50, n_leapfrog=3,
                                       observables={"x0^2": lambda x: x[:, 0, 0] ** 2},
                                       generator=torch.Generator().manual_seed(1),
                                       callback=lambda done, total: calls.append((done, total)))
    o = res.estimate.observables["x0^2"]
    assert abs(o.mean - 4.0) < 4 * o.error and o.error < 0.4
    assert calls[-1] == (5 * 49, 5 * 49) and len(calls) == 5 * 49  # (4 batches of 256 + pilot) x 49 transitions


@pytest.mark.parametrize("kwargs, needle", [({"n_temperatures": 0}, "n_temperatures"), ({"n_leapfrog": 0}, "n_leapfrog"),
                                            ({"n_samples": 24}, "n_samples"), ({"target_acceptance": 1.0}, "target_acceptance"),
                                            ({"power": 0.5}, "power")])
def test_bad_settings_are_rejected(kwargs, needle):
    flow = make_flow((2, 2))
    target = GaussianTarget((2, 2), precision=torch.eye(4, dtype=torch.float64))
    args = {"n_samples": 100, **kwargs}
    with pytest.raises(ValueError, match=needle):
        annealed_importance_sampling(flow, target, **args)
