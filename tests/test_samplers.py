"""Tests of the Monte Carlo samplers (deeprg.mc.samplers, deeprg.mc.kernels).

Correctness is checked against the exact Boltzmann distribution from brute-force enumeration
(chi-square goodness of fit of thinned samples) and against Kaufman's exact energy of the
16x16 lattice; the rest checks reproducibility, the API and its errors.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components
from scipy.stats import chi2

from deeprg.lattice import Lattice
from deeprg.mc import (
    DEFAULT_BURN_IN_SWEEPS,
    SAMPLERS,
    estimate,
    integrated_autocorr_time,
    make_sampler,
)
from deeprg.mc import kernels
from deeprg.models.enumeration import Enumeration
from deeprg.models.exact import kaufman_energy_per_site
from deeprg.models.ising import K_C

#: Updates between saved samples in the distribution tests, >= ~6x the slowest integrated
#: autocorrelation time measured on these lattices, so that samples are effectively independent.
#: Wolff and SW decorrelate within ~2 updates everywhere here; Metropolis is limited by the
#: tunnelling of the magnetization (up to ~70 sweeps on 4x4 at K = 0.5), so its thinning is set
#: per case (the last entry of each case).
THIN = {"wolff": 8, "sw": 12}
N_SAMPLES = 20_000
P_MIN = 1e-4

def chi_square_pvalue(counts: np.ndarray, probabilities: np.ndarray) -> float:
    """Pearson chi-square p-value of ``counts`` against ``probabilities`` (same length). Bins
    with expected count < 5 are pooled, smallest first, into one bin with expected count >= 5."""
    counts = np.asarray(counts, dtype=np.float64)
    expected = counts.sum() * np.asarray(probabilities, dtype=np.float64)
    order = np.argsort(expected, kind="stable")
    pooled_obs = pooled_exp = 0.0
    k = 0
    while k < order.size and (expected[order[k]] < 5.0 or 0.0 < pooled_exp < 5.0):
        pooled_obs += counts[order[k]]
        pooled_exp += expected[order[k]]
        k += 1
    obs, exp = counts[order[k:]], expected[order[k:]]
    if pooled_exp > 0:
        obs, exp = np.append(obs, pooled_obs), np.append(exp, pooled_exp)
    assert exp.size >= 2, "too few bins for a chi-square test"
    return float(chi2.sf(np.sum((obs - exp) ** 2 / exp), exp.size - 1))


def config_pvalue(run, enumeration: Enumeration) -> float:
    """Chi-square p-value of the sampled configurations over all 2^N configurations."""
    idx = enumeration.index_of(run.spins_flat())
    counts = np.bincount(idx, minlength=enumeration.probabilities.size)
    return chi_square_pvalue(counts, enumeration.probabilities)


def energy_magnetization_pvalue(run, enumeration: Enumeration) -> float:
    """Chi-square p-value of the sampled joint (E, M) classes."""
    lat = enumeration.lattice
    n = lat.n_sites
    configs = enumeration.configurations
    e_exact = -lat.bond_sum(configs)
    m_exact = configs.reshape(len(configs), -1).sum(axis=1, dtype=np.int64)
    keys, inverse = np.unique(e_exact * (2 * n + 1) + m_exact + n, return_inverse=True)
    probs = np.bincount(inverse, weights=enumeration.probabilities, minlength=keys.size)
    e = run.flat("energy").astype(np.int64)
    m = run.flat("magnetization").astype(np.int64)
    sample_keys = e * (2 * n + 1) + m + n
    pos = np.searchsorted(keys, sample_keys)
    assert np.all(keys[np.minimum(pos, keys.size - 1)] == sample_keys), "impossible (E, M)"
    return chi_square_pvalue(np.bincount(pos, minlength=keys.size), probs)


CONFIG_CASES = [
    ((3, 3), 0.3, 50),
    ((3, 3), K_C, 100),
    ((3, 3), 0.5, 200),
    ((10,), 0.5, 50),  # even ring: checkerboard Metropolis
    ((9,), 1.0, 100),  # odd ring: sequential Metropolis
    ((2, 2, 2), 0.15, 50),  # extent 2 everywhere: every bond doubled; 3D K_c ~ 0.2217
    ((2, 2, 2), 0.3, 100),
]
CLASS_CASES = [((4, 4), 0.3, 50), ((4, 4), K_C, 150), ((4, 4), 0.5, 400), ((2, 2, 4), 0.3, 150)]


def _run(name, shape, K, metropolis_thin, seed, **kw):
    thin = metropolis_thin if name == "metropolis" else THIN[name]
    return make_sampler(name, Lattice(shape), K, seed=seed, n_chains=2).run(N_SAMPLES, thin=thin,
                                                                           **kw)


@pytest.mark.parametrize("name", SAMPLERS)
@pytest.mark.parametrize(("shape", "K", "metropolis_thin"), CONFIG_CASES)
def test_distribution_of_configurations_matches_enumeration(name, shape, K, metropolis_thin):
    seed = int(np.random.default_rng([SAMPLERS.index(name), *shape]).integers(2**31))
    run = _run(name, shape, K, metropolis_thin, seed)
    assert config_pvalue(run, Enumeration(Lattice(shape), K)) > P_MIN


@pytest.mark.parametrize("name", SAMPLERS)
@pytest.mark.parametrize(("shape", "K", "metropolis_thin"), CLASS_CASES)
def test_energy_magnetization_distribution_matches_enumeration(name, shape, K, metropolis_thin):
    seed = int(np.random.default_rng([7, SAMPLERS.index(name), *shape]).integers(2**31))
    run = _run(name, shape, K, metropolis_thin, seed, keep_spins=False)
    assert energy_magnetization_pvalue(run, Enumeration(Lattice(shape), K)) > P_MIN


def test_chi_square_rejects_a_wrong_coupling():
    """The distribution tests have power: samples at K = 0.3 fail against K = 0.33."""
    lat = Lattice((3, 3))
    run = make_sampler("wolff", lat, 0.3, seed=11, n_chains=2).run(N_SAMPLES, thin=THIN["wolff"])
    assert config_pvalue(run, Enumeration(lat, 0.3)) > P_MIN
    assert config_pvalue(run, Enumeration(lat, 0.33)) < 1e-6


def test_wolff_energy_16x16_critical_matches_kaufman():
    exact = kaufman_energy_per_site(16, 16, K_C)
    run = make_sampler("wolff", (16, 16), K_C, seed=2024, n_chains=2).run(100_000, thin=4,
                                                                         keep_spins=False)
    est = estimate(run.per_site("energy"))
    assert est.error < 1.5e-3
    assert abs(est.mean - exact) < 4 * est.error


def test_wolff_mean_cluster_size_is_susceptibility():
    """Improved estimator: <|cluster|> = <M^2> / N exactly for the Wolff algorithm."""
    lat = Lattice((4, 4))
    exact = Enumeration(lat, K_C).mean(lambda s: s.reshape(len(s), -1).sum(1) ** 2) / 16
    run = make_sampler("wolff", lat, K_C, seed=5, n_chains=2).run(40_000, thin=2,
                                                                  keep_spins=False)
    m2 = estimate(run.series["magnetization"] ** 2 / 16)
    assert abs(m2.mean - exact) < 4 * m2.error
    assert abs(run.mean_cluster_size - exact) < 4 * m2.error


@pytest.mark.parametrize("name", SAMPLERS)
def test_recorded_series_match_the_configurations(name):
    lat = Lattice((6, 4))
    run = make_sampler(name, lat, 0.4, seed=3, n_chains=2).run(
        200, thin=3, observables={"corner": lambda s: s[:, 0, 0], "m2": lambda s: s.sum((1, 2))**2}
    )
    spins = run.spins_flat()
    assert run.spins.shape == (2, 100, 6, 4) and run.spins.dtype == np.int8
    assert set(np.unique(spins)) <= {-1, 1}
    np.testing.assert_array_equal(run.flat("energy"), -lat.bond_sum(spins))
    np.testing.assert_array_equal(run.flat("magnetization"), spins.sum(axis=(1, 2)))
    np.testing.assert_array_equal(run.flat("corner"), spins[:, 0, 0])
    np.testing.assert_array_equal(run.flat("m2"), run.flat("magnetization") ** 2)
    np.testing.assert_allclose(run.per_site("energy"), run.series["energy"] / 24)
    assert run.thin == 3 and run.burn_in > 0 and run.n_samples == 200 and run.n_per_chain == 100
    assert (run.mean_cluster_size is not None) == (name == "wolff")


@pytest.mark.parametrize("name", SAMPLERS)
def test_same_seed_same_samples_different_seed_different(name):
    def sample(seed):
        return make_sampler(name, (5, 4), 0.4, seed=seed, n_chains=2).run(100, thin=2)

    a, b, c = sample(1), sample(1), sample(2)
    np.testing.assert_array_equal(a.spins, b.spins)
    np.testing.assert_array_equal(a.series["energy"], b.series["energy"])
    assert not np.array_equal(a.spins, c.spins)
    assert not np.array_equal(a.spins[0], a.spins[1])  # chains are independent streams


@pytest.mark.parametrize("name", SAMPLERS)
def test_threads_and_chunks_do_not_change_results(name):
    def sample(**kw):
        return make_sampler(name, (8, 8), K_C, seed=9, n_chains=2).run(60, thin=2, **kw)

    ref = sample(n_threads=1)
    for kw in ({"n_threads": 2}, {"n_threads": 2, "chunk": 7}, {"n_threads": 1, "chunk": 1}):
        other = sample(**kw)
        np.testing.assert_array_equal(ref.spins, other.spins)
        np.testing.assert_array_equal(ref.series["magnetization"], other.series["magnetization"])


def test_chains_continue_between_runs_and_stream_matches_run():
    ref = make_sampler("sw", (6, 6), 0.4, seed=4, n_chains=2).run(400, thin=2, burn_in=50)
    sampler = make_sampler("sw", (6, 6), 0.4, seed=4, n_chains=2)
    first = sampler.run(100, thin=2, burn_in=50)
    chunks = list(sampler.stream(300, thin=2, chunk=40))
    assert sampler.n_updates == 50 + 2 * 200
    assert chunks[0].burn_in == 0 and [c.n_per_chain for c in chunks] == [40, 40, 40, 30]
    spins = np.concatenate([first.spins] + [c.spins for c in chunks], axis=1)
    np.testing.assert_array_equal(ref.spins, spins)


def test_auto_thin_is_twice_the_pilot_autocorrelation_time():
    sampler = make_sampler("metropolis", (16, 16), K_C, seed=8, n_chains=2)
    run = sampler.run(4000, thin="auto", burn_in=1000, keep_spins=False)
    # tau_int of the energy of this Metropolis chain is ~5.6 sweeps (long runs)
    assert 3.0 < run.pilot_tau_int < 9.0 and run.burn_in == 1000
    assert run.thin == math.ceil(2 * run.pilot_tau_int)
    assert integrated_autocorr_time(run.series["energy"]) < 1.5
    assert sampler.run(20, thin=3).pilot_tau_int is None
    # a second auto run repeats the default pilot although the chains are equilibrated
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert sampler.run(20, thin="auto").burn_in == DEFAULT_BURN_IN_SWEEPS
    with pytest.warns(RuntimeWarning, match="pilot"):
        sampler.run(20, thin="auto", burn_in=8)


def test_wolff_default_burn_in_counts_sweep_equivalents():
    lat = Lattice((16, 16))
    run = make_sampler("wolff", lat, K_C, seed=1).run(10, keep_spins=False)
    # 500 sweeps of 256 sites at mean cluster size ~ 0.5 N: ~ 10^3 flips, far more than 500
    assert 500 < run.burn_in < 500 * lat.n_sites / run.mean_cluster_size * 2


def test_progress_callback_and_no_spins(capsys):
    calls = []
    run = make_sampler("wolff", (4, 4), 0.3).run(
        100, keep_spins=False, callback=lambda done, total: calls.append((done, total)),
        observables={"m": lambda s: s.sum(axis=(1, 2))},
    )
    assert run.spins is None and run.series["energy"].shape == (1, 100)
    np.testing.assert_array_equal(run.series["m"], run.series["magnetization"])
    assert calls[-1] == (100, 100) and len(calls) == 100  # chunks of 1/100 of the run
    assert capsys.readouterr().err == ""  # the library draws no progress bar
    with pytest.raises(ValueError, match="keep_spins"):
        run.spins_flat()


def test_metropolis_order_and_acceptance_table():
    order = kernels.metropolis_order((4, 2))
    parity = np.sum(np.unravel_index(order, (4, 2)), axis=0) % 2
    np.testing.assert_array_equal(parity, [0] * 4 + [1] * 4)
    np.testing.assert_array_equal(np.sort(order), np.arange(8))
    np.testing.assert_array_equal(kernels.metropolis_order((3, 2)), np.arange(6))
    table = kernels.acceptance_thresholds(0.3, 4)
    assert np.all(table[:4] == 2**53)  # s h < 0: always accepted
    assert table[4] / 2**53 == pytest.approx(kernels.ZERO_ENERGY_FLIP_PROBABILITY, rel=1e-15)
    assert kernels.ZERO_ENERGY_FLIP_PROBABILITY < 1.0
    np.testing.assert_allclose(table[5:] / 2**53, np.exp(-0.6 * np.arange(1, 5)), rtol=1e-15)


def _sweep_classes(lat: Lattice, flip_probability: np.ndarray) -> int:
    """Number of strongly connected classes of the Metropolis sweep chain (visiting order of
    :func:`kernels.metropolis_order`) on all 2^N configurations, where a site with ``x = s_i h_i``
    flips with probability ``flip_probability[x + z]`` (only whether it is 0 < p < 1 matters)."""
    n, z = lat.n_sites, 2 * lat.d
    states = np.arange(2**n)
    spins = 1 - 2 * ((states[:, None] >> np.arange(n)) & 1)
    reach = np.eye(states.size, dtype=bool)  # reach[a, b]: b reachable from a so far
    for i in kernels.metropolis_order(lat.shape):
        x = spins[:, i] * spins[:, lat.neighbors[i]].sum(axis=1)
        can_stay = flip_probability[x + z] < 1.0  # flipping always has p > 0 (K finite)
        reach = reach[:, states ^ (1 << i)] | (reach & can_stay[None, :])
    return connected_components(csr_matrix(reach), directed=True, connection="strong")[0]


@pytest.mark.parametrize("shape", [(3, 3), (4, 2), (9,), (2, 2, 2)])
def test_metropolis_sweep_chain_is_irreducible(shape):
    lat = Lattice(shape)
    z = 2 * lat.d
    assert _sweep_classes(lat, kernels.acceptance_probabilities(0.4, z)) == 1
    if shape in [(3, 3), (4, 2), (9,)]:
        # plain Metropolis, min(1, exp(-2 K x)), with a fixed order is not irreducible here
        plain = np.minimum(1.0, np.exp(-0.8 * np.arange(-z, z + 1)))
        assert _sweep_classes(lat, plain) > 1


def test_measure_counts_every_bond_of_the_lattice():
    rng = np.random.default_rng(0)
    for shape in [(2,), (5,), (2, 3), (4, 4), (2, 2, 2), (3, 2, 4)]:
        lat = Lattice(shape)
        nbr = np.array(lat.neighbors, order="C")
        for _ in range(5):
            s = rng.choice(np.array([-1, 1], dtype=np.int8), size=lat.n_sites)
            assert kernels.measure(s, nbr) == (lat.bond_sum(s), s.sum())


def test_xoshiro256starstar_reference_output():
    # Published first outputs of xoshiro256** from the state (1, 2, 3, 4) (reference C code).
    out = np.empty(6, dtype=np.uint64)
    kernels.random_uint64(np.array([1, 2, 3, 4], dtype=np.uint64), out)
    assert out.tolist() == [11520, 0, 1509978240, 1215971899390074240, 1216172134540287360,
                            607988272756665600]


def test_probability_threshold_is_exact():
    t = kernels.probability_threshold(0.3)
    k = np.uint64(int(math.ceil(0.3 * 2**53)))
    assert t == k and (k - np.uint64(1)) / 2**53 < 0.3 <= k / 2**53
    assert kernels.probability_threshold(1.0) == 2**53 and kernels.probability_threshold(0.0) == 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "heatbath"}, "sampler name must be one of"),
        ({"K": 0.0}, "K must be"),
        ({"K": -0.2}, "K must be"),
        ({"K": float("inf")}, "K must be"),
        ({"K": float("nan")}, "K must be"),
        ({"n_chains": 0}, "n_chains must be an integer >= 1"),
        ({"n_chains": 1.5}, "n_chains must be an integer >= 1"),
        ({"seed": -1}, "seed must be an integer >= 0"),
    ],
)
def test_make_sampler_rejects_bad_arguments(kwargs, match):
    args = {"name": "wolff", "lattice": (4, 4), "K": 0.4, "seed": 0, "n_chains": 2} | kwargs
    with pytest.raises(ValueError, match=match):
        make_sampler(**args)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_samples": 0}, "n_samples must be an integer >= 1"),
        ({"n_samples": 11}, "multiple of n_chains=2"),
        ({"thin": 0}, r"thin \(or 'auto'\) must be an integer >= 1"),
        ({"thin": "fast"}, r"thin \(or 'auto'\)"),
        ({"burn_in": -1}, "burn_in must be an integer >= 0"),
        ({"thin": "auto", "burn_in": 3}, "burn_in >= 4"),
        ({"n_threads": 0}, "n_threads must be an integer >= 1"),
        ({"chunk": 0}, "chunk must be an integer >= 1"),
        ({"callback": 3}, "callback must be callable"),
        ({"observables": {"energy": np.sum}}, "observable names"),
        ({"observables": {"x": 3}}, "must be callable"),
        ({"observables": [np.sum]}, "mapping"),
        ({"observables": {"x": lambda s: s.sum()}}, r"must return shape \(10,\)"),
    ],
)
def test_run_rejects_bad_arguments(kwargs, match):
    sampler = make_sampler("metropolis", (4, 4), 0.4, n_chains=2)
    with pytest.raises(ValueError, match=match):
        sampler.run(**({"n_samples": 10} | kwargs))
