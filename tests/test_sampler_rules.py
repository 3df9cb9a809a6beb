"""Tests of the update rules (deeprg.mc.rules) and the generic driver (deeprg.mc.samplers).

The distribution of every rule is checked against enumeration in test_samplers.py; here: the
refactor into rules kept every random stream (bit-for-bit against outputs recorded before it),
results do not depend on threads or chunks, rules are interchangeable behind one driver, and the
progress callback.

``tests/data/sampler_outputs_488e832.npz`` holds the outputs of :func:`reference_cases` written
at commit 488e832, before ``Sampler`` was split into rules and driver, by
``numpy.savez_compressed(path, **reference_cases())``. Do not regenerate it with newer code: its
purpose is to catch any change of the random streams (a change that is meant must say so and
replace the file).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest

from deeprg.lattice import Lattice
from deeprg.mc import (
    DEFAULT_BURN_IN_SWEEPS,
    RULES,
    SAMPLERS,
    MetropolisRule,
    Sampler,
    SwendsenWangRule,
    UpdateRule,
    WolffRule,
    make_sampler,
)
from deeprg.models.ising import K_C

FIXTURE = Path(__file__).parent / "data" / "sampler_outputs_488e832.npz"


def reference_cases() -> dict[str, np.ndarray]:
    """Outputs of every sampler on 2D, rectangular, 1D and 3D lattices through the public API:
    default burn-in, continuation, ``thin="auto"`` with explicit and default burn-in, and a
    chunked single-thread stream."""
    out = {}
    for name in ("wolff", "sw", "metropolis"):
        for shape, K in (((4, 4), 0.44), ((5, 3), 0.3), ((6,), 0.8), ((3, 3, 3), 0.2)):
            tag = f"{name}_{'x'.join(map(str, shape))}"
            s = make_sampler(name, shape, K, seed=7, n_chains=3)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                r1 = s.run(12, thin=1)                       # default burn-in
                r2 = s.run(9, thin=3)                        # continuation
                r3 = s.run(6, thin="auto", burn_in=40)       # auto with explicit burn-in
                r4 = s.run(6, thin="auto")                   # auto with default burn-in
            for i, r in enumerate((r1, r2, r3, r4)):
                out[f"{tag}_r{i}_spins"] = r.spins
                out[f"{tag}_r{i}_energy"] = r.series["energy"]
                out[f"{tag}_r{i}_mag"] = r.series["magnetization"]
                out[f"{tag}_r{i}_meta"] = np.array([r.thin, r.burn_in,
                    np.nan if r.pilot_tau_int is None else r.pilot_tau_int,
                    np.nan if r.mean_cluster_size is None else r.mean_cluster_size])
            out[f"{tag}_final"] = s.spins
    s = make_sampler("wolff", (8, 8), "critical", seed=123456789, n_chains=2)
    parts = list(s.stream(40, thin=2, burn_in=None, chunk=7, n_threads=1))
    out["stream_wolff_8x8_spins"] = np.concatenate([p.spins for p in parts], axis=1)
    out["stream_wolff_8x8_energy"] = np.concatenate([p.series["energy"] for p in parts], axis=1)
    return out


def test_same_seed_same_outputs_as_before_the_rules_split():
    recorded = np.load(FIXTURE, allow_pickle=False)
    now = reference_cases()
    assert set(now) == set(recorded.files)
    for key in recorded.files:
        np.testing.assert_array_equal(now[key], recorded[key], err_msg=key)


@pytest.mark.parametrize("name", SAMPLERS)
def test_threads_do_not_change_the_configurations(name):
    def sample(n_threads, chunk=None):
        sampler = make_sampler(name, (6, 6), 0.4, seed=2**64 - 1, n_chains=4)
        return sampler.run(40, thin="auto", n_threads=n_threads, chunk=chunk)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ref = sample(1)
        for n_threads, chunk in ((2, None), (4, 3), (3, 1)):
            other = sample(n_threads, chunk)
            assert other.thin == ref.thin and other.burn_in == ref.burn_in
            np.testing.assert_array_equal(other.spins, ref.spins)
            np.testing.assert_array_equal(other.series["energy"], ref.series["energy"])


@pytest.mark.parametrize("rule", [WolffRule, SwendsenWangRule, MetropolisRule])
def test_a_sampler_built_from_a_rule_equals_make_sampler(rule):
    lat = Lattice((4, 6))
    direct = Sampler(rule(lat, 0.35), seed=5, n_chains=2).run(30, thin=2)
    named = make_sampler(rule.name, lat, 0.35, seed=5, n_chains=2).run(30, thin=2)
    np.testing.assert_array_equal(direct.spins, named.spins)
    assert direct.sampler == rule.name and direct.K == 0.35 and direct.lattice == lat
    assert (direct.mean_cluster_size is not None) == rule.counts_cluster_sites


def test_rule_registry_matches_the_sampler_names():
    assert tuple(RULES) == SAMPLERS == ("wolff", "sw", "metropolis")
    for name, rule in RULES.items():
        assert issubclass(rule, UpdateRule) and rule.name == name


def test_default_burn_in_is_counted_in_sweep_equivalents():
    lat = Lattice((8, 8))
    for rule in (SwendsenWangRule(lat, 0.4), MetropolisRule(lat, 0.4)):
        # one update is one sweep, whatever was flipped
        assert rule.burn_in_updates(0, 0.0) == rule.burn_in_updates(700, 123.0) == DEFAULT_BURN_IN_SWEEPS
    wolff = WolffRule(lat, 0.4)
    assert wolff.burn_in_updates(0, 0.0) == DEFAULT_BURN_IN_SWEEPS  # a first round
    # 500 flips of mean size 16 = 125 sweeps of 64 sites: 2000 flips make 500 sweeps
    assert wolff.burn_in_updates(500, 500 * 16.0) == 2000
    assert wolff.burn_in_updates(500, 500 * 64.0) == 500
    assert wolff.burn_in_updates(3, 3 * 7.0) == math.ceil(500 * 64 / 7.0)


def test_rules_keep_no_chain_state():
    """Two samplers sharing one rule object run exactly as with a rule each."""
    lat = Lattice((5, 5))
    shared = WolffRule(lat, K_C)
    a, b = Sampler(shared, seed=1, n_chains=2), Sampler(shared, seed=2, n_chains=2)
    a.run(20, thin=1, burn_in=10)
    b.run(20, thin=1, burn_in=10)
    ref = Sampler(WolffRule(lat, K_C), seed=1, n_chains=2)
    ref.run(20, thin=1, burn_in=10)
    np.testing.assert_array_equal(a.spins, ref.spins)


@pytest.mark.parametrize("chunk", [None, 1, 7, 50])
def test_callback_reports_monotone_progress_up_to_the_total(chunk):
    calls = []
    sampler = make_sampler("sw", (4, 4), 0.3, seed=3, n_chains=2)
    sampler.run(100, thin=1, burn_in=5, chunk=chunk, callback=lambda d, t: calls.append((d, t)))
    done = [d for d, _ in calls]
    assert all(t == 100 for _, t in calls)
    assert done == sorted(set(done)) and done[0] > 0 and done[-1] == 100
    assert all(d % 2 == 0 for d in done)  # whole steps of every chain
    if chunk is not None:
        assert len(calls) == math.ceil(50 / chunk)


def test_callback_of_a_stream_is_called_as_chunks_are_drawn():
    calls = []
    stream = make_sampler("metropolis", (4, 4), 0.3).stream(
        30, thin=1, burn_in=0, chunk=10, callback=lambda d, t: calls.append(d))
    assert calls == []  # nothing runs before the first chunk is requested
    next(stream)
    assert calls == [10]
    list(stream)
    assert calls == [10, 20, 30]


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((object(),), "rule must be an UpdateRule"),
        ((MetropolisRule(Lattice((4, 4)), 0.3), -1), "seed must be an integer >= 0"),
        ((MetropolisRule(Lattice((4, 4)), 0.3), 0, 0), "n_chains must be an integer >= 1"),
    ],
)
def test_sampler_rejects_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        Sampler(*args)
