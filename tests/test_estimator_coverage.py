"""Coverage, not just agreement (issue 13): on the 4x4 relaxed Ising model at K_c, with a flow
trained deliberately for only 40 steps, each ln Z estimator's 2-sigma interval must contain the
exact ln Z (Kaufman, ``RelaxedIsing.exact_ln_z``) in a binomially consistent fraction of 40
independent estimation seeds (same flow, different estimation seed).

The flow (:data:`FLOW`): the default MERA with the site map, the linear map and the Z2
symmetrization, narrowed to 2 couplings per block and one hidden layer of 16 (the HMC-based
estimators are dominated by the per-call cost of the flow, which this cuts about 3x), float64,
40 Adam steps at lr 1e-2 from seed 0: relative error of the variational free energy 6.3e-2 (the
default flow reaches 1.6e-3 at 4x4 after 1500 steps, ``benchmarks/results/flow_training.md``);
its importance weights keep a median of 173 effective samples of 10,000 (1.7 %), Pareto tail
index 0.40-0.77.

Settings, as a user would choose them on 4x4 (16 sites), each estimate with the verdict of
:func:`deeprg.flows.trust.verdict`:

* importance sampling, bridge sampling against the reference sampler and SMC go through the
  functions of ``deeprg flow estimate`` (:data:`deeprg.cli.flow_tools.ESTIMATORS`, with the CLI's
  own diagnostics for the verdict), one call per seed: ``--method is --samples 10000``;
  ``--method bridge --samples 10000`` (10,000 flow samples against 10,000 exact samples of pi:
  Wolff spins, ``x = A s + chol(A) eps``); ``--method smc --samples 256 --leapfrog 1`` (256
  particles x 8 replicas, three one-step HMC moves per temperature);
* annealed importance sampling (512 samples per seed, 20 temperatures, 5 leapfrog steps) and
  bridge sampling against latent HMC are vectorized over the seeds (through the CLI they would
  take minutes): AIS anneals all 40 x 512 samples in one call and seed ``i`` is the ``i``-th
  block of 512 weights (independent given the step sizes of the shared pilot run, which is how
  the function batches anyway); the latent HMC chains of all seeds run as one batch, 32 chains x
  64 saved steps per seed with one leapfrog step per transition and every step saved, so the pi
  samples are strongly autocorrelated (tau_int ~ 8 steps) and the bridge's jackknife (32 groups
  of one whole chain) and its ``n2_eff`` must account for it; 2,048 flow samples per seed.

Criterion: at least 34 of 40 seeds (85 %) with ``|estimate - exact| <= 2 error``. The nominal
coverage of a 2-sigma interval is 95.4 % for an exact Gaussian error, 94.6 % for a 32-group
jackknife (Student t, 31 degrees of freedom) and 91.4 % for SMC's 8 replicas (t, 7 degrees of
freedom); the probability that a correct estimator falls below 34 of 40 is then 0.2 %, 0.5 % and
5 % (binomial). Error bars too small by a factor 1.5, 2 or 3 bring the expected count to 33, 27
or 20.

Measured (``benchmarks/bench_estimator_coverage.py``; process CPU seconds of the 40 seeds on one
core of a shared machine; mean |z| is 0.80 for a standard normal):

==========================================  =======  =======  ==================  =====
estimator                                   covered  mean|z|  trusted (covered)   CPU s
==========================================  =======  =======  ==================  =====
importance sampling, 10,000                 35/40    0.96      0                      6
importance sampling, 100,000                36/40    0.74     26 (22)                60
annealed IS, 512 x 20 temperatures          39/40    0.77     24 (24)                38
SMC, 256 particles x 8 replicas             35/40    0.85     40 (35)                97
bridge vs reference, 10,000 + 10,000        38/40    0.88     36 (34)                20
bridge vs latent HMC, 2,048 + 32 x 64       35/40    1.03      0                      6
  the same, pi samples taken as independent 15/40    2.63
==========================================  =======  =======  ==================  =====

The whole file takes about 2.5 minutes of one core (3.2 beside two busy processes on two cores),
SMC half of it. The latent-HMC bridge is never trusted (fewer than 200 effective samples both
ways: ``n2_eff = 2048 / (2 tau)`` is ~130) and covers anyway; a conservative verdict is not a
failure.

Importance sampling is the exception the issue anticipated, though not in the way it expected:
with 10,000 samples its intervals cover in 35 of 40 seeds, right at the bar (85-91 % over 120
seeds for each of three flows trained like this one with batch 64, by ``importance_ln_z``
directly), every miss on the low side (the heavy tail of the weights undersampled), so a hard
85 % assertion would be a coin toss. Worse, the seeds that look healthiest are the ones that
miss: with about 200 effective samples, a seed passes a 200-sample bar exactly when it drew no
large weight, i.e. when its estimate is low and its error bar too small (11 of 16 such seeds
covered here). The verdict therefore asks plain importance sampling for 1,000 effective samples
(:data:`deeprg.flows.trust.MIN_IS_ESS`, measurements in :mod:`deeprg.flows.trust`), and what is
asserted at 10,000 samples is that it vouches for no seed. With 100,000 samples (about 1,200
effective) the intervals cover in 36 of 40 seeds (asserted); the verdict trusts 26 of them, of
which 22 cover, every miss low: the selection effect is weaker but still there, kept as a strict
expected failure so that a better verdict shows up.

Two checks show that the criterion has teeth: the latent-HMC bridge fed the same pi samples in
random order (taken as independent: tau = 1/2, blocks of iid-looking samples; error bars ~3x too
small) and every estimator's error bars divided by 3 must fail it.

Measured, not asserted: SMC with 64 particles x 8 replicas (``--samples 64 --leapfrog 3``) covered
in only 33 of 40 seeds (27 of 40 with one 3-step move per temperature), every miss low and every
verdict "trusted", while each replica adapted its own step size and the replicas' ln Z were
averaged: over 160 replicas ln Z was low by 0.040(12), of which the Jensen bias of averaging ln Z
(``Var / 2``) is 0.012; with the step size fixed by hand (steps 0.45 and 0.6) the bias was
0.014(12) and 0.023(13), Jensen alone (0.011, 0.013). Since SMC freezes its steps from a pilot
run and combines the replicas as ``ln mean Z`` (:mod:`deeprg.flows.smc`), 64 particles cover in
38 of 40 (2 misses low) and 256 in 35 of 40 (3 low, 2 high; 39 of 40 before the change, within
binomial scatter).
"""

from __future__ import annotations

import functools
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

from deeprg.cli import build_parser
from deeprg.cli.flow_tools import ESTIMATORS
from deeprg.flows.annealing import annealed_importance_sampling
from deeprg.flows.bridge import bridge_ln_z, bridge_sampling
from deeprg.flows.estimators import weighted_estimate
from deeprg.flows.sampling import latent_hmc_fields
from deeprg.flows.train import FlowTrainConfig, Trainer, variational_free_energy
from deeprg.flows.trust import verdict

pytestmark = pytest.mark.slow

#: Independent estimation seeds per estimator.
SEEDS = tuple(range(40))
#: Seeds out of 40 whose 2-sigma interval must contain the exact ln Z (module docstring).
MIN_COVERED = 34

#: The undertrained flow (module docstring).
FLOW = {"L": 4, "beta": "critical", "min_eigenvalue": 0.1, "n_couplings": 2, "hidden": [16], "steps": 40,
        "batch": 256, "lr": 1e-2, "dtype": "float64", "seed": 0, "threads": 1}

#: ``deeprg flow estimate`` options per estimator that goes through the CLI's functions.
CLI_OPTIONS = {
    "importance sampling": ("is", "--samples", "10000"),
    "importance sampling, 100,000": ("is", "--samples", "100000"),
    "bridge vs reference sampler": ("bridge", "--samples", "10000", "--pi-source", "reference"),
    "SMC from the flow": ("smc", "--samples", "256", "--leapfrog", "1"),
}
#: Annealed importance sampling: samples per seed, temperatures, leapfrog steps per transition.
AIS_SAMPLES, AIS_TEMPERATURES, AIS_LEAPFROG = 512, 20, 5
#: Bridge against latent HMC: flow samples, chains and saved steps (every HMC step) per seed.
HMC_FLOW_SAMPLES, HMC_CHAINS, HMC_STEPS, HMC_LEAPFROG = 2048, 32, 64, 1


@dataclass
class Coverage:
    """Per seed: ``z = (estimate - exact) / error``, the error and the verdict."""

    name: str
    z: np.ndarray
    error: np.ndarray
    trusted: np.ndarray
    cpu_seconds: float
    extra: dict = field(default_factory=dict)

    @property
    def covered(self) -> np.ndarray:
        return np.abs(self.z) <= 2.0

    def __str__(self) -> str:
        t = self.trusted
        return (f"{self.name}: {self.covered.sum()}/{len(self.z)} covered, mean |z| {np.abs(self.z).mean():.2f}, "
                f"{t.sum()} trusted ({(self.covered & t).sum()} of them covered), {self.cpu_seconds:.0f} CPU s; "
                f"z = {np.round(self.z, 1).tolist()}")


def coverage(name: str, rows: list[tuple[float, float, bool]], exact: float, seconds: float, **extra) -> Coverage:
    """``rows``: (estimate, error, trusted) per seed."""
    value, error, trusted = (np.array(c) for c in zip(*rows))
    return Coverage(name, (value - exact) / error, error, trusted.astype(bool), seconds, extra)


@functools.cache
def _estimate_parser():
    return build_parser(["flow"])


def cli_estimate(trainer: Trainer, method: str, seed: int, *options: str):
    """What ``deeprg flow estimate RUN --method METHOD --seed SEED OPTIONS`` computes on
    ``trainer`` (without the variational bound it prints too): the CLI's estimator function, its
    diagnostics and the verdict. Returns ``(ln_z, trusted, diagnostics)``."""
    args = _estimate_parser().parse_args(["flow", "estimate", "RUN", "--method", method, "--seed", str(seed),
                                          "--quiet", *options])
    generator = torch.Generator(device=trainer.device).manual_seed(args.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # heavy-tailed importance weights: the verdict says it
        ln_z, diagnostics, _ = ESTIMATORS[method](args, trainer, args.samples, generator)
    trusted, _ = verdict(method, {**diagnostics, "ln_z_error": ln_z.error})
    return ln_z, trusted, diagnostics


# ---- the flow and the estimates, once per module ---------------------------------------------
def undertrained_trainer() -> Trainer:
    trainer = Trainer(FlowTrainConfig(**FLOW))
    trainer.train()
    return trainer


def run_cli(trainer: Trainer, name: str, cli_options: tuple[str, ...] | None = None) -> Coverage:
    """One ``deeprg flow estimate`` computation per seed, with :data:`CLI_OPTIONS` ``[name]``
    unless ``cli_options`` are given."""
    method, *options = cli_options or CLI_OPTIONS[name]
    start, rows, ess = time.process_time(), [], []
    for seed in SEEDS:
        ln_z, trusted, diagnostics = cli_estimate(trainer, method, seed, *options)
        rows.append((ln_z.mean, ln_z.error, trusted))
        ess.append(diagnostics.get("ess", np.nan))
    return coverage(name, rows, trainer.exact_ln_z, time.process_time() - start, ess=np.array(ess))


def run_ais(trainer: Trainer) -> Coverage:
    """All seeds' samples annealed in one call; seed ``i`` is block ``i`` of the weights, with the
    diagnostics ``deeprg flow estimate --method ais`` passes to the verdict."""
    start, n = time.process_time(), AIS_SAMPLES
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        result = annealed_importance_sampling(trainer.flow, trainer.target, n * len(SEEDS), AIS_TEMPERATURES,
                                              AIS_LEAPFROG, batch=2048, generator=torch.Generator().manual_seed(1))
        rows = []
        for i in range(len(SEEDS)):
            est = weighted_estimate(result.log_weights[i * n:(i + 1) * n])
            trusted, _ = verdict("ais", {"ess": est.ess_fraction * n, "pareto_k": est.pareto_k,
                                         "ln_z_error": est.ln_z.error})
            rows.append((est.ln_z.mean, est.ln_z.error, trusted))
    return coverage("annealed importance sampling", rows, trainer.exact_ln_z, time.process_time() - start,
                    acceptance=float(result.acceptance.mean()))


@torch.no_grad()
def bridge_log_weights(trainer: Trainer, pi: torch.Tensor, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(l_q, l_pi)`` as :func:`~deeprg.flows.bridge.bridge_sampling` computes them: ``l_q`` at
    :data:`HMC_FLOW_SAMPLES` fresh flow samples drawn with a generator seeded ``seed``, ``l_pi``
    ``(steps, chains)`` at the pi samples ``pi`` ``(steps, chains, L, L)``."""
    flow, target = trainer.flow, trainer.target
    x, log_q = flow.sample_and_log_prob(HMC_FLOW_SAMPLES, torch.Generator().manual_seed(seed))
    l_q = target.log_prob_unnormalized(x) - log_q
    y = pi.reshape((-1,) + tuple(flow.event_shape))
    l_pi = target.log_prob_unnormalized(y) - flow.log_prob(y)
    return l_q.numpy(), l_pi.reshape(pi.shape[:2]).numpy()


def run_bridge_hmc(trainer: Trainer) -> tuple[Coverage, Coverage]:
    """Bridge sampling against latent HMC chains, all seeds' chains run as one batch; and the same
    log-weights with the pi samples in random order (the autocorrelation ignored)."""
    flow, target, exact = trainer.flow, trainer.target, trainer.exact_ln_z
    start = time.process_time()
    pi = latent_hmc_fields(flow, target, HMC_STEPS, HMC_CHAINS * len(SEEDS), thin=1, n_leapfrog=HMC_LEAPFROG,
                           generator=torch.Generator().manual_seed(2))
    rows, naive, taus = [], [], []
    for i, seed in enumerate(SEEDS):
        chains = pi[:, i * HMC_CHAINS:(i + 1) * HMC_CHAINS]
        l_q, l_pi = bridge_log_weights(trainer, chains, 1000 + seed)
        est = bridge_ln_z(l_q, l_pi)  # 32 jackknife groups of one whole chain each
        trusted, _ = verdict("bridge", {"forward_ess": est.forward_ess * est.n2_eff,
                                        "reverse_ess": est.reverse_ess * est.n1, "ln_z_error": est.ln_z.error})
        rows.append((est.ln_z.mean, est.ln_z.error, trusted))
        taus.append(est.ln_z.tau_int)
        shuffled = np.random.default_rng(seed).permutation(l_pi.reshape(-1))
        bad = bridge_ln_z(l_q, shuffled)  # one "chain" of independent-looking samples: tau = 1/2
        naive.append((bad.ln_z.mean, bad.ln_z.error, False))
    seconds = time.process_time() - start
    return (coverage("bridge vs latent HMC", rows, exact, seconds, tau_int=np.array(taus),
                     last=(chains, 1000 + seed, est.ln_z)),
            coverage("bridge vs latent HMC, pi samples taken as independent", naive, exact, seconds))


@pytest.fixture(scope="module")
def trainer() -> Trainer:
    return undertrained_trainer()


@pytest.fixture(scope="module")
def importance(trainer) -> Coverage:
    return run_cli(trainer, "importance sampling")


@pytest.fixture(scope="module")
def importance_large(trainer) -> Coverage:
    return run_cli(trainer, "importance sampling, 100,000")


@pytest.fixture(scope="module")
def annealed(trainer) -> Coverage:
    return run_ais(trainer)


@pytest.fixture(scope="module")
def smc(trainer) -> Coverage:
    return run_cli(trainer, "SMC from the flow")


@pytest.fixture(scope="module")
def bridge_reference(trainer) -> Coverage:
    return run_cli(trainer, "bridge vs reference sampler")


@pytest.fixture(scope="module")
def bridge_hmc(trainer) -> tuple[Coverage, Coverage]:
    return run_bridge_hmc(trainer)


def assert_covers(result: Coverage) -> None:
    assert result.covered.sum() >= MIN_COVERED, str(result)


# ---- the tests -------------------------------------------------------------------------------
def test_flow_is_undertrained_with_visibly_imperfect_importance_weights(trainer, importance):
    """The scenario: relative error of the variational free energy above 2e-2 (measured 6.3e-2),
    importance weights with an effective sample size below 5 % (measured 1.7 %)."""
    bound = variational_free_energy(trainer.flow, trainer.target, 16384, generator=torch.Generator().manual_seed(3))
    exact = trainer.exact_ln_z
    relative_error = (bound.mean + exact) / abs(exact)
    assert 2e-2 < relative_error < 0.2, relative_error
    ess_fraction = float(np.median(importance.extra["ess"])) / 10_000
    assert ess_fraction < 0.05, ess_fraction


def test_importance_sampling_verdict_vouches_for_no_seed_of_10000_samples(importance):
    """With 10,000 samples importance sampling's intervals cover in 35 of 40 seeds, at the bar and
    with every miss low (module docstring), and the seeds with healthy-looking diagnostics are the
    ones that miss; the verdict must not vouch for any of them (about 170 effective samples, below
    :data:`deeprg.flows.trust.MIN_IS_ESS`)."""
    assert not importance.trusted.any(), str(importance)


def test_importance_sampling_with_enough_samples_covers_exact_ln_z_in_85_percent_of_seeds(importance_large):
    assert_covers(importance_large)


@pytest.mark.xfail(strict=True, raises=AssertionError,
                   reason="selection effect, weaker with 100,000 samples (about 1,200 effective) than with 10,000: "
                   "22 of the 26 trusted seeds covered, every miss low (module docstring)")
def test_importance_sampling_intervals_the_verdict_trusts_cover_exact_ln_z_in_85_percent_of_seeds(importance_large):
    trusted = importance_large.trusted
    assert trusted.sum() >= 10, str(importance_large)
    assert importance_large.covered[trusted].mean() >= 0.85, str(importance_large)


def test_annealed_importance_sampling_covers_exact_ln_z_in_85_percent_of_seeds(annealed):
    assert_covers(annealed)


def test_smc_from_the_flow_covers_exact_ln_z_in_85_percent_of_seeds(smc):
    assert_covers(smc)


def test_bridge_with_reference_samples_covers_exact_ln_z_in_85_percent_of_seeds(bridge_reference):
    assert_covers(bridge_reference)


def test_bridge_with_latent_hmc_samples_covers_exact_ln_z_in_85_percent_of_seeds(bridge_hmc):
    result, _ = bridge_hmc
    assert np.median(result.extra["tau_int"]) > 3, str(result)  # the pi samples are strongly autocorrelated
    assert_covers(result)


def test_latent_hmc_bridge_log_weights_are_those_of_bridge_sampling(trainer, bridge_hmc):
    """The latent-HMC bridge assembles its log-weights itself (to shuffle them for the broken
    version below); :func:`~deeprg.flows.bridge.bridge_sampling` on the last seed's chains and
    generator gives the same estimate and error."""
    chains, generator_seed, ln_z = bridge_hmc[0].extra["last"]
    again = bridge_sampling(trainer.flow, trainer.target, HMC_FLOW_SAMPLES, chains,
                            torch.Generator().manual_seed(generator_seed))
    assert again.ln_z.mean == pytest.approx(ln_z.mean, abs=1e-9)
    assert again.ln_z.error == pytest.approx(ln_z.error, rel=1e-6)


def test_bridge_with_latent_hmc_samples_taken_as_independent_fails_the_coverage_criterion(bridge_hmc):
    """The criterion has teeth: the same log-weights with the pi samples in random order (the
    bridge then measures tau = 1/2 and blocks iid-looking samples) give error bars about 3x too
    small, and coverage far below the bar (measured 22 of 40)."""
    result, naive = bridge_hmc
    assert naive.covered.sum() < MIN_COVERED, str(naive)
    assert np.median(result.error / naive.error) > 2, (result.error / naive.error).tolist()


def test_error_bars_shrunk_threefold_fail_the_coverage_criterion(importance, annealed, smc, bridge_reference,
                                                                  bridge_hmc):
    """The criterion has teeth for every estimator: with its error bars divided by 3 none passes."""
    for result in (importance, annealed, smc, bridge_reference, bridge_hmc[0]):
        assert (np.abs(result.z) * 3 <= 2).sum() < MIN_COVERED, str(result)
