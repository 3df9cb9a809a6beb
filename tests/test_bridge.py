"""Bridge sampling (deeprg.flows.bridge) against known normalizers.

Two Gaussians with closed-form normalizers check the estimate and the coverage of its error bar,
with independent and with AR(1)-correlated samples of pi (an exact stationary chain in the
standardized coordinates); a trained flow on the 4x4 relaxed Ising model is checked against
Kaufman's exact ln Z with the target's exact reference sampler on the pi side.
"""

import math
import warnings

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.signal import lfilter
from scipy.special import logsumexp

from deeprg.flows.bridge import MIN_BLOCKS, MIN_SAMPLES, bridge_ln_z, bridge_sampling
from deeprg.flows.train import FlowTrainConfig, Trainer
from deeprg.models.relaxed import reference_sampler

torch.set_num_threads(1)

# q = N(0, I_3) (normalized), pi_u(x) = exp(-|x - m|^2 / (2 s^2)) with Z = (2 pi s^2)^{3/2}
DIM, MEAN, SCALE = 3, np.array([0.5, -0.3, 0.2]), 1.3
LN_Z = DIM * math.log(math.sqrt(2 * math.pi) * SCALE)


def log_weight(x):
    """ln pi_u(x) - ln q(x) for x (..., 3)."""
    return -0.5 * (((x - MEAN) / SCALE) ** 2).sum(-1) + 0.5 * (x**2).sum(-1) + 0.5 * DIM * math.log(2 * math.pi)


def flow_side(rng, n1):
    return log_weight(rng.standard_normal((n1, DIM)))


def pi_chains(rng, steps, chains, rho):
    """(steps, chains) log-weights of an exact stationary AR(1) chain of pi:
    y_0 ~ N(0, 1), y_{t+1} = rho y_t + sqrt(1 - rho^2) eps_t, x = m + s y."""
    eps = rng.standard_normal((steps, chains, DIM))
    eps[1:] *= math.sqrt(1 - rho**2)
    y = lfilter([1.0], [1.0, -rho], eps, axis=0)
    return log_weight(MEAN + SCALE * y)


def pulls(make, seeds, **kwargs):
    """(estimate - exact) / error over ``seeds``; ``make(rng) -> (l_q, l_pi)``."""
    out = []
    for seed in seeds:
        l_q, l_pi = make(np.random.default_rng(seed))
        est = bridge_ln_z(l_q, l_pi, **kwargs)
        out.append((est.ln_z.mean - LN_Z) / est.ln_z.error)
    return np.array(out)


def assert_covers(z):
    """At least 85% within 2 sigma, binomially consistent with 95.4% (a jackknife with 31 degrees
    of freedom gives 94.6%)."""
    k = int(np.sum(np.abs(z) < 2))
    assert k / len(z) >= 0.85, z
    assert stats.binomtest(k, len(z), 0.954).pvalue > 1e-3, z


# ---- Gaussians, independent samples ----------------------------------------------------------
@pytest.mark.parametrize("seed", range(4))
def test_gaussian_pair_within_three_sigma(seed):
    rng = np.random.default_rng(seed)
    est = bridge_ln_z(torch.from_numpy(flow_side(rng, 2000)), torch.from_numpy(pi_chains(rng, 2000, 1, 0.0)[:, 0]))
    assert abs(est.ln_z.mean - LN_Z) < 3 * est.ln_z.error
    assert 0 < est.ln_z.error < 0.05
    assert (est.n1, est.n2, est.n_blocks) == (2000, 2000, 32) and est.ln_z.n_samples == 4000
    assert 1000 < est.n2_eff <= 2000 and est.iterations >= 1
    assert 0 < est.forward_ess <= 1 and 0 < est.reverse_ess <= 1
    assert est.forward_pareto_k < 0.7 and est.reverse_pareto_k < 0.7


def test_gaussian_pair_coverage():
    z = pulls(lambda rng: (flow_side(rng, 1000), pi_chains(rng, 1000, 1, 0.0)[:, 0]), range(100, 160))
    assert_covers(z)
    assert 0.5 <= np.mean(np.abs(z) < 1) <= 0.85  # not inflated either (68% expected)


def test_solution_is_the_meng_wong_fixed_point():
    rng = np.random.default_rng(1)
    l_q, l_pi = flow_side(rng, 3000), pi_chains(rng, 1000, 1, 0.0)[:, 0]
    est = bridge_ln_z(l_q, l_pi)
    u, n1, n2 = est.ln_z.mean, len(l_q), est.n2_eff
    s_pi, s_q = n2 / (n1 + n2), n1 / (n1 + n2)
    num = logsumexp(l_q - np.logaddexp(math.log(s_pi) + l_q, math.log(s_q) + u)) - math.log(n1)
    den = logsumexp(-np.logaddexp(math.log(s_pi) + l_pi, math.log(s_q) + u)) - math.log(len(l_pi))
    assert num - den == pytest.approx(u, abs=1e-9)


def test_disjoint_densities_converge_and_say_so():
    """Far apart, the Meng-Wong iteration oscillates; the bracketed solve still converges and the
    effective sample sizes report the missing overlap."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2000, DIM))
    far = np.array([5.0, 4.0, 0.0]) + 0.5 * rng.standard_normal((2000, DIM))

    def lw(v):
        return -0.5 * (((v - far.mean(0)) / 0.5) ** 2).sum(-1) + 0.5 * (v**2).sum(-1)

    est = bridge_ln_z(lw(x), lw(far))
    assert math.isfinite(est.ln_z.mean) and est.forward_ess < 0.01 and est.reverse_ess < 0.01


# ---- Gaussians, autocorrelated samples of pi -------------------------------------------------
@pytest.mark.parametrize("steps, chains", [(2000, 4), (125, 64)])
def test_autocorrelated_pi_side_coverage(steps, chains):
    """AR(1) chains with rho = 0.9 (tau_int = 9.5 steps in y): blocked over steps (4 long chains)
    or over chains (64 short ones). Flow samples are many, so the pi side dominates the error."""
    rho, n1, n_blocks = 0.9, 20_000, 16
    est = bridge_ln_z(flow_side(np.random.default_rng(0), n1), pi_chains(np.random.default_rng(1), steps, chains, rho),
                      n_blocks=n_blocks)
    assert est.n2_eff < est.n2 / 5  # the measured autocorrelation enters the weights
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # blocks of 125 steps are long enough: no warning
        z = pulls(lambda rng: (flow_side(rng, n1), pi_chains(rng, steps, chains, rho)), range(40), n_blocks=n_blocks)
    assert_covers(z)
    # the same samples taken as independent (order scrambled) give an error bar that does not cover
    naive = pulls(lambda rng: (flow_side(rng, n1), rng.permutation(pi_chains(rng, steps, chains, rho).ravel())),
                  range(40), n_blocks=n_blocks)
    assert np.mean(np.abs(naive) < 2) < 0.75
    assert np.std(naive) > 2 * np.std(z)


def test_short_blocks_warn():
    rng = np.random.default_rng(3)
    with pytest.warns(RuntimeWarning, match="shorter than 10 tau_int"):
        bridge_ln_z(flow_side(rng, 2000), pi_chains(rng, 256, 2, 0.99))


# ---- bad input -------------------------------------------------------------------------------
def test_bad_input():
    rng = np.random.default_rng(0)
    l_q, l_pi = flow_side(rng, 500), pi_chains(rng, 500, 1, 0.0)[:, 0]
    with pytest.raises(ValueError, match=f"flow \\(q\\) side has 99 samples.*at least {MIN_SAMPLES}"):
        bridge_ln_z(l_q[:99], l_pi)
    with pytest.raises(ValueError, match=f"pi side has 99 samples.*at least {MIN_SAMPLES}"):
        bridge_ln_z(l_q, l_pi[:99])
    with pytest.raises(ValueError, match=f"n_blocks must be an integer >= {MIN_BLOCKS}"):
        bridge_ln_z(l_q, l_pi, n_blocks=3)
    with pytest.raises(ValueError, match="10 steps x 20 chains: 32 jackknife blocks need at least 32 steps or 32 chains"):
        bridge_ln_z(l_q, l_pi[:200].reshape(10, 20))
    bridge_ln_z(l_q, l_pi[:200].reshape(10, 20), n_blocks=8)  # 8 blocks of whole chains
    with pytest.raises(ValueError, match="l_q must have shape"):
        bridge_ln_z(l_q.reshape(100, 5), l_pi)
    with pytest.raises(ValueError, match="l_pi must have shape"):
        bridge_ln_z(l_q, l_pi.reshape(5, 10, 10))
    bad = l_pi.copy()
    bad[7] = np.nan
    with pytest.raises(FloatingPointError, match="l_pi has 1 non-finite"):
        bridge_ln_z(l_q, bad)
    with pytest.raises(ValueError, match="tol"):
        bridge_ln_z(l_q, l_pi, tol=0.0)


# ---- a trained flow on the 4x4 relaxed Ising model -------------------------------------------
@pytest.fixture(scope="module")
def trained():
    trainer = Trainer(FlowTrainConfig(L=4, steps=200, batch=64, threads=1))
    trainer.train()
    return trainer


def test_trained_flow_against_exact_ln_z(trained):
    flow, target = trained.flow, trained.target
    x, info = target.sample_reference(4096, 3, n_chains=4)
    pi_samples = x.reshape(-1, 4, 4, 4)  # step-major: (steps, chains, L, L)
    calls = []
    est = bridge_sampling(flow, target, 4096, pi_samples, torch.Generator().manual_seed(5), batch=1024,
                          callback=lambda done, total: calls.append((done, total)))
    assert abs(est.ln_z.mean - target.exact_ln_z) < 3 * est.ln_z.error
    assert est.ln_z.error < 0.05 and est.n1 == 4096 and est.n2 == 4096
    assert est.n2_eff > 4096 / (2 * 1.5 * info["tau_int"])
    assert 0.02 < est.forward_ess <= 1 and 0.02 < est.reverse_ess <= 1
    assert calls[-1] == (8192, 8192) and len(calls) == 8
    # independent samples as one (n2, L, L) block, from the protocol's plain sampler
    again = bridge_sampling(flow, target, 4096, reference_sampler(target)(4096, 4), torch.Generator().manual_seed(6))
    assert abs(again.ln_z.mean - target.exact_ln_z) < 3 * again.ln_z.error


def test_bridge_sampling_bad_input(trained):
    flow, target = trained.flow, trained.target
    with pytest.raises(ValueError, match="pi_samples must be a tensor of shape"):
        bridge_sampling(flow, target, 200, torch.zeros(300, 16))
    with pytest.raises(ValueError, match="pi_samples must be a tensor"):
        bridge_sampling(flow, target, 200, np.zeros((300, 4, 4)))
    with pytest.raises(ValueError, match="n_flow must be an integer >= 100"):
        bridge_sampling(flow, target, 50, torch.zeros(300, 4, 4))
