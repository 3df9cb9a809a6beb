"""Latent vs physical HMC and flow-proposal Metropolis with a trained flow, and the reference values
they are compared with."""

import numpy as np
import pytest
import torch

from deeprg import Lattice
from deeprg.flows.annealing import annealed_importance_sampling
from deeprg.flows.estimators import importance_ln_z, independence_metropolis, ising_observables
from deeprg.flows.sampling import hmc_in_space, starting_fields
from deeprg.flows.train import FlowTrainConfig, Trainer
from deeprg.mc.reference import ising_reference
from deeprg.mc.stats import estimate
from deeprg.models.enumeration import all_configurations
from deeprg.models.exact import kaufman
from deeprg.models.ising import K_C

torch.set_num_threads(1)


def brute_force_ising_4x4(K):
    """Exact <M^2>/N^2 and energy per site of the 4x4 periodic Ising model by summing 2^16 terms
    directly (independent of deeprg.models.enumeration's weights)."""
    s = all_configurations(Lattice((4, 4))).astype(float)
    bonds = (s * np.roll(s, 1, 1)).sum((1, 2)) + (s * np.roll(s, 1, 2)).sum((1, 2))
    w = np.exp(K * bonds - K * bonds.max())
    w /= w.sum()
    m2 = (w * s.sum((1, 2)) ** 2).sum() / 256
    return float(m2), float(-(w * bonds).sum() / 16)


def test_reference_values_are_exact_on_small_lattices():
    ref = ising_reference(Lattice((4, 4)), K_C)
    m2, e = brute_force_ising_4x4(K_C)
    assert ref["structure_factor"].mean == pytest.approx(m2, rel=1e-12)
    assert ref["energy_per_site"].mean == pytest.approx(e, rel=1e-12)
    assert ref["energy_per_site"].mean == pytest.approx(kaufman(4, 4, K_C).energy_per_site, rel=1e-10)
    assert ref["structure_factor"].error == 0


def test_reference_on_larger_lattices_uses_monte_carlo_with_error_bar_and_exact_energy():
    ref = ising_reference(Lattice((8, 8)), K_C, n_samples=2000, seed=1)
    assert ref["structure_factor"].error > 0 and 0.5 < ref["structure_factor"].mean < 0.8
    assert ref["energy_per_site"].mean == pytest.approx(kaufman(8, 8, K_C).energy_per_site, rel=1e-12)


@pytest.fixture(scope="module")
def trained_4x4():
    cfg = FlowTrainConfig(L=4, steps=150, batch=128, hidden=[16], seed=3, dtype="float64", threads=1,
                          eval_samples=1024)
    trainer = Trainer(cfg)
    trainer.train()
    return trainer


@pytest.mark.filterwarnings("ignore:chain length")
@pytest.mark.parametrize("space", ["latent", "physical"])
def test_hmc_with_a_trained_flow_matches_enumeration(trained_4x4, space):
    flow, target = trained_4x4.flow, trained_4x4.target
    gen = torch.Generator().manual_seed(11)
    x0 = starting_fields(flow, 128, "noise", gen)
    res = hmc_in_space(flow, target, space, x0, 250, step_size=0.2, n_leapfrog=5, warmup=60, generator=gen)
    m2, e = brute_force_ising_4x4(K_C)
    sf = estimate(res.series["structure_factor"].T.numpy())
    en = estimate(res.series["energy_per_site"].T.numpy())
    assert abs(sf.mean - m2) < 4 * sf.error and sf.error < 0.02
    assert abs(en.mean - e) < 4 * en.error
    assert res.warmup_series["structure_factor"].shape == (60, 128)
    assert res.acceptance_rate > 0.5


@pytest.mark.filterwarnings("ignore:chain length")
def test_independence_metropolis_with_a_trained_flow_matches_enumeration(trained_4x4):
    """Flow-proposal Metropolis-Hastings is exact for pi: spins from its fields reproduce the
    enumerated structure factor and energy."""
    flow, target = trained_4x4.flow, trained_4x4.target
    gen = torch.Generator().manual_seed(12)
    res = independence_metropolis(flow, target, 300, 128, ising_observables(target, gen), gen)
    m2, e = brute_force_ising_4x4(K_C)
    sf = estimate(res.series["structure_factor"][20:].T.numpy())
    en = estimate(res.series["energy_per_site"][20:].T.numpy())
    assert abs(sf.mean - m2) < 4 * sf.error and sf.error < 0.02
    assert abs(en.mean - e) < 4 * en.error
    assert 0.05 < res.acceptance_rate < 1


@pytest.mark.parametrize("method", ["importance", "annealed"])
def test_reweighted_estimates_with_a_trained_flow_match_enumeration(trained_4x4, method):
    """ln Z and the spin observables by (annealed) importance sampling with a symmetrized trained
    flow, against Kaufman's ln Z and the enumerated spin averages."""
    flow, target = trained_4x4.flow, trained_4x4.target
    assert flow.symmetrize
    gen = torch.Generator().manual_seed(13)
    observables = ising_observables(target, gen)
    if method == "annealed":
        est = annealed_importance_sampling(flow, target, 512, 20, 3, observables=observables, generator=gen).estimate
        assert est.ess_fraction > 0.3
    else:
        est = importance_ln_z(flow, target, 20000, generator=gen, observables=observables)
    assert abs(est.ln_z.mean - target.exact_ln_z) < 4 * est.ln_z.error and est.ln_z.error < 0.1
    m2, e = brute_force_ising_4x4(K_C)
    for name, exact in (("structure_factor", m2), ("energy_per_site", e)):
        o = est.observables[name]
        assert abs(o.mean - exact) < 4 * o.error and o.error < 0.05


def test_unknown_space_or_start_is_rejected(trained_4x4):
    flow, target = trained_4x4.flow, trained_4x4.target
    with pytest.raises(ValueError, match="space"):
        hmc_in_space(flow, target, "momentum", flow.sample(2), 1)
    with pytest.raises(ValueError, match="start"):
        starting_fields(flow, 2, "hot")
