"""Markov-chain Monte Carlo samplers of the Ising model ``H = -K sum_<ij> s_i s_j``.

One generic driver, :class:`Sampler`, over the update rules of :mod:`deeprg.mc.rules` (each
wrapping one numba kernel of :mod:`deeprg.mc.kernels`)::

    sampler = make_sampler("wolff", Lattice((32, 32)), K_C, seed=1, n_chains=2)
    # the same: Sampler(WolffRule(Lattice((32, 32)), K_C), seed=1, n_chains=2)
    run = sampler.run(100_000, thin="auto")      # burn-in, then 50_000 samples per chain
    run.spins            # (2, 50_000, 32, 32) int8
    run.series["energy"] # (2, 50_000) float64, E = -sum_<ij> s_i s_j (units of J)

Units of Monte Carlo time ("updates"): one Wolff cluster flip (``"wolff"``), one full
Swendsen-Wang update (``"sw"``), one Metropolis sweep over all N sites (``"metropolis"``); see
:mod:`deeprg.mc.rules`. Progress is reported through an optional ``callback(done, total)``
(saved samples, all chains together); the library draws no progress bar.

Chains start from independent uniformly random configurations (hot start) and each owns one
random stream: chain ``c`` (its *global* index among the ``n_chains``) is seeded from
``numpy.random.SeedSequence(seed).spawn(n_chains)[c]``, which is the same for every ``n_chains > c``.
Results depend only on ``(sampler, lattice, K, seed, n_chains)`` and the sequence of calls, never
on the number of threads or the chunk size. The chain state persists between calls: a second
:meth:`Sampler.run` continues the same chains.

Several processes: a sampler may run a contiguous subset of the chains (``chains=range(a, b)``),
e.g. a process's share of them, ``World.share(n_chains)``. Its chains are bit-identical to the same
chains of a sampler of all of them, provided the decisions taken from all chains together see all
chains: the default burn-in (rounds until the mean cluster size, pooled over the chains, says
enough sweeps were done) and ``thin="auto"`` (``tau_int`` of the energy, pooled over the chains).
For these the sampler passes its chains' data through ``gather`` (rows of its chains -> rows of
all chains in chain order; ``World.all_gather_rows`` under ``torchrun``), so every process takes
the decision one process takes.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from deeprg.lattice import Lattice
from deeprg.mc import kernels
from deeprg.mc.rules import DEFAULT_BURN_IN_SWEEPS, RULES, UpdateRule
from deeprg.mc.stats import integrated_autocorr_time
from deeprg.models.ising import parse_coupling

__all__ = [
    "DEFAULT_BURN_IN_SWEEPS",
    "MIN_AUTO_BURN_IN",
    "SAMPLERS",
    "SampleRun",
    "Sampler",
    "make_sampler",
]

#: Names accepted by :func:`make_sampler`: ``("wolff", "sw", "metropolis")``.
SAMPLERS = tuple(RULES)

#: Smallest explicit ``burn_in`` that ``thin="auto"`` accepts: its pilot (the second half of the
#: burn-in) needs at least two updates per chain to measure an autocorrelation time.
MIN_AUTO_BURN_IN = 4

#: A pilot (the recorded second half of the burn-in) shorter than this many ``tau_int`` of the
#: energy gives a warning when ``thin="auto"``.
_MIN_PILOT_IN_TAU = 50.0

#: Default chunk: at most this many bytes of spins per chunk (all chains together).
_CHUNK_BYTES = 1 << 24

Observable = Callable[[np.ndarray], np.ndarray]

#: ``callback(done, total)``: saved samples so far and in all, all chains together.
Progress = Callable[[int, int], None]

#: ``gather(rows)``: the ``(len(chains), ...)`` rows of a sampler's chains -> the
#: ``(n_chains, ...)`` rows of all chains, in chain order.
Gather = Callable[[np.ndarray], np.ndarray]


@dataclass
class SampleRun:
    """Samples of a :class:`Sampler` (one :meth:`Sampler.run`, or one chunk of
    :meth:`Sampler.stream`).

    Attributes
    ----------
    sampler, lattice, K, seed:
        What produced the samples.
    n_chains:
        Number of chains held here (all the sampler's chains, or its subset ``chains``).
    thin:
        Updates between consecutive saved samples of a chain (chosen value if ``"auto"``).
    burn_in:
        Updates per chain discarded before the first saved sample by this call (0 when the
        chains were continued without burn-in).
    spins:
        ``(n_chains, n_per_chain, *lattice.shape)`` int8 configurations, or ``None`` when not
        kept. Sample ``k`` of chain ``c`` was taken ``thin * (k + 1)`` updates after the burn-in.
    series:
        ``name -> (n_chains, n_per_chain)`` float64 time series: ``"energy"`` (total
        ``E = -sum_<ij> s_i s_j``, units of J), ``"magnetization"`` (total ``M = sum_i s_i``),
        and one per user observable.
    seconds:
        Wall time of the call (burn-in, sampling, measurements), in seconds.
    mean_cluster_size:
        Rules that count flipped sites (Wolff) only: mean number of sites per cluster flip
        during sampling; else ``None``.
    pilot_tau_int:
        With ``thin="auto"``: integrated autocorrelation time of the energy, in updates,
        measured in the pilot of all chains (``thin = max(1, ceil(2 pilot_tau_int))``); else
        ``None``.
    chains:
        Global indices of the chains held (``range(n_chains)`` unless the sampler ran a subset);
        row ``i`` of ``spins`` and of every series is chain ``chains[i]``.
    """

    sampler: str
    lattice: Lattice
    K: float
    seed: int
    n_chains: int
    thin: int
    burn_in: int
    spins: np.ndarray | None
    series: dict[str, np.ndarray] = field(repr=False)
    seconds: float
    mean_cluster_size: float | None = None
    pilot_tau_int: float | None = None
    chains: range | None = None

    def __post_init__(self) -> None:
        if self.chains is None:
            self.chains = range(self.n_chains)

    @property
    def n_per_chain(self) -> int:
        return int(self.series["energy"].shape[1])

    @property
    def n_samples(self) -> int:
        """Total number of saved samples, all chains together."""
        return self.n_chains * self.n_per_chain

    def spins_flat(self) -> np.ndarray:
        """All configurations as ``(n_samples, *lattice.shape)`` int8, chain after chain (a view
        when possible)."""
        if self.spins is None:
            raise ValueError("spins were not kept (run with keep_spins=True)")
        return self.spins.reshape((self.n_samples,) + self.lattice.shape)

    def flat(self, name: str) -> np.ndarray:
        """Series ``name`` as one ``(n_samples,)`` array, chain after chain (order of
        :meth:`spins_flat`)."""
        return self._series(name).reshape(-1)

    def per_site(self, name: str) -> np.ndarray:
        """Series ``name`` divided by the number of sites, ``(n_chains, n_per_chain)`` (e.g. the
        energy per site ``e = E / N`` or magnetization per site ``m = M / N``)."""
        return self._series(name) / self.lattice.n_sites

    def _series(self, name: str) -> np.ndarray:
        if name not in self.series:
            raise KeyError(f"no series {name!r}; available: {sorted(self.series)}")
        return self.series[name]


def _check_int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_chains(chains, n_chains: int) -> range:
    """``chains`` (``None``: all; a ``slice`` or ``range`` of step 1) as a non-empty ``range``
    within ``[0, n_chains)``."""
    if chains is None:
        return range(n_chains)
    if isinstance(chains, slice):
        ints = all(v is None or (isinstance(v, (int, np.integer)) and not isinstance(v, bool))
                   for v in (chains.start, chains.stop, chains.step))
        if not ints:
            raise ValueError(f"chains must be a slice or range of chain indices, got {chains!r}")
        resolved = range(0 if chains.start is None else int(chains.start),
                         n_chains if chains.stop is None else int(chains.stop),
                         1 if chains.step is None else int(chains.step))
    elif isinstance(chains, range):
        resolved = chains
    else:
        raise ValueError(f"chains must be a slice or range of chain indices, got {type(chains).__name__}")
    if resolved.step != 1 or len(resolved) == 0 or resolved.start < 0 or resolved.stop > n_chains:
        raise ValueError(f"chains must be a non-empty contiguous range (step 1) within [0, n_chains={n_chains}), "
                         f"got {chains!r}")
    return resolved


class Sampler:
    """``n_chains`` independent Markov chains driven by one :class:`~deeprg.mc.rules.UpdateRule`.

    The sampler owns the chain state: the spins ``(n_chains, N)`` int8 and one xoshiro256**
    stream per chain (:func:`deeprg.mc.kernels.seed_states`); the rule only advances one chain
    at a time. Chains run concurrently in threads (the kernels release the GIL).

    Parameters
    ----------
    rule:
        The update, e.g. ``WolffRule(Lattice((32, 32)), K_C)``.
    seed:
        Integer >= 0; chain ``c`` uses ``numpy.random.SeedSequence(seed).spawn(n_chains)[c]``.
    n_chains:
        Number of independent chains, >= 1.
    chains:
        The chains this sampler runs: a contiguous ``range`` or ``slice`` of ``[0, n_chains)``
        (default: all). Chain ``c`` is the same whichever subset holds it.
    gather:
        ``gather(rows) -> all rows``: the ``(len(chains), ...)`` rows of this sampler's chains to
        the ``(n_chains, ...)`` rows of all chains in chain order (e.g.
        ``World.all_gather_rows``, with every process running its share of the chains). Used for
        the decisions taken from all chains (the default burn-in, ``thin="auto"``); required for
        those when ``chains`` is not all of them.

    Attributes: ``rule``, ``name``, ``lattice``, ``K`` (those of the rule), ``seed``,
    ``n_chains``, ``chains``, ``n_updates`` (updates per chain so far), ``equilibrated``
    (whether a burn-in has been done).
    """

    def __init__(self, rule: UpdateRule, seed: int = 0, n_chains: int = 1,
                 chains: range | slice | None = None, gather: Gather | None = None) -> None:
        if not isinstance(rule, UpdateRule):
            raise ValueError(f"rule must be an UpdateRule, got {type(rule).__name__}")
        self.rule = rule
        self.seed = _check_int(seed, "seed", 0)
        self.n_chains = _check_int(n_chains, "n_chains", 1)
        self.chains = _check_chains(chains, self.n_chains)
        if gather is not None and not callable(gather):
            raise ValueError(f"gather must be callable as gather(rows) -> rows of all chains, got {gather!r}")
        self._gather = gather
        self.n_updates = 0
        self.equilibrated = False
        n_local = len(self.chains)
        self._rng = kernels.seed_states(self.seed, self.n_chains)[self.chains.start : self.chains.stop].copy()
        self._spins = np.empty((n_local, rule.lattice.n_sites), dtype=np.int8)
        for c in range(n_local):
            kernels.random_spins(self._spins[c], self._rng[c])
        self._scratch = rule.new_scratch(n_local)

    @property
    def subset(self) -> bool:
        """Whether this sampler runs only some of the ``n_chains`` chains."""
        return len(self.chains) != self.n_chains

    @property
    def name(self) -> str:
        return self.rule.name

    @property
    def lattice(self) -> Lattice:
        return self.rule.lattice

    @property
    def K(self) -> float:
        return self.rule.K

    def __repr__(self) -> str:
        chains = f", chains=range({self.chains.start}, {self.chains.stop})" if self.subset else ""
        return (
            f"Sampler({self.name!r}, lattice={self.lattice}, K={self.K!r}, seed={self.seed}, "
            f"n_chains={self.n_chains}{chains}, n_updates={self.n_updates})"
        )

    @property
    def spins(self) -> np.ndarray:
        """Current configuration of each of this sampler's chains, ``(len(chains),
        *lattice.shape)`` int8 (a copy)."""
        return self._spins.reshape((len(self.chains),) + self.lattice.shape).copy()

    def _all_chains(self, rows: np.ndarray) -> np.ndarray:
        """``rows`` of this sampler's chains -> the rows of all chains (through ``gather``)."""
        if self._gather is None:
            if self.subset:  # refused by stream's checks; a guard for direct calls
                raise ValueError("a sampler of a subset of the chains needs gather for decisions taken "
                                 "from all chains")
            return rows
        out = np.asarray(self._gather(rows))
        if out.shape != (self.n_chains,) + rows.shape[1:]:
            raise ValueError(f"gather must return the rows of all {self.n_chains} chains, shape "
                             f"{(self.n_chains,) + rows.shape[1:]}, got {out.shape}")
        return out

    # ---- driving the rule ------------------------------------------------------------------
    def _advance_all(
        self, n_between: int, n_save: int, spins_out: np.ndarray | None, pool
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """This sampler's chains: ``n_save`` times ``n_between`` updates and a measurement.
        Configurations go to ``spins_out`` ((len(chains), n_save, N) int8) when given. Returns
        energies and magnetizations ``(len(chains), n_save)`` and the flipped sites of each chain
        (int64 ``(len(chains),)``, counted by rules with ``counts_cluster_sites``, else 0)."""
        n_local = len(self.chains)
        energy = np.empty((n_local, n_save))
        mag = np.empty((n_local, n_save))
        no_spins = np.empty((0, self.lattice.n_sites), dtype=np.int8)

        def task(c: int) -> int:
            out = no_spins if spins_out is None else spins_out[c]
            scratch = tuple(a[c] for a in self._scratch)
            return self.rule.advance(self._spins[c], self._rng[c], scratch, n_between, out,
                                     energy[c], mag[c])

        if pool is None:
            sites = [task(c) for c in range(n_local)]
        else:
            sites = list(pool.map(task, range(n_local)))
        self.n_updates += n_between * n_save
        return energy, mag, np.array(sites, dtype=np.int64)

    def _burn_in(self, burn_in: int | None, record: bool, pool) -> tuple[int, np.ndarray | None]:
        """Discard updates; returns ``(updates per chain, pilot)`` where the pilot is the energy
        after every update of the second half of the burn-in of *all* chains, ``(n_chains, n)``
        (gathered), if ``record``.

        ``burn_in=None``: the rule's default (:meth:`UpdateRule.burn_in_updates`), in rounds
        until the updates done reach the updates needed at the mean cluster size measured so
        far (pooled over all chains, gathered after each round); the pilot is the last
        ``done - done // 2`` updates. Explicit ``burn_in``: ``burn_in - burn_in // 2`` updates,
        then a pilot of ``burn_in // 2``."""
        if burn_in is not None:
            half = burn_in // 2 if record else 0
            if burn_in - half > 0:
                self._advance_all(burn_in - half, 1, None, pool)
            pilot = self._all_chains(self._advance_all(1, half, None, pool)[0]) if half > 0 else None
            return burn_in, pilot
        done, sites, rounds = 0, 0.0, []
        size = self.rule.burn_in_updates(0, 0.0)
        while True:
            if record:
                energy, _, s = self._advance_all(1, size, None, pool)
                rounds.append(energy)
            else:
                s = self._advance_all(size, 1, None, pool)[2]
            done += size
            sites += int(self._all_chains(s).sum()) / self.n_chains
            needed = self.rule.burn_in_updates(done, sites)
            if done >= needed:
                break
            size = needed - done
        pilot = self._all_chains(np.concatenate(rounds, axis=1)[:, done // 2 :]) if record else None
        return done, pilot

    def _pilot_tau(self, pilot: np.ndarray) -> float:
        """``tau_int`` (updates) of the pilot energies ``(n_chains, n)``; warns if too short."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            tau = integrated_autocorr_time(pilot)
        if pilot.shape[1] < _MIN_PILOT_IN_TAU * tau:
            warnings.warn(
                f"thin='auto': the pilot ({pilot.shape[1]} updates) is shorter than "
                f"{_MIN_PILOT_IN_TAU:g} tau_int of the energy (tau_int = {tau:.3g} updates); "
                "the chosen thin may be too small; pass a larger burn_in",
                RuntimeWarning,
                stacklevel=4,
            )
        return tau

    # ---- sampling --------------------------------------------------------------------------
    def stream(
        self,
        n_samples: int,
        thin: int | str = 1,
        burn_in: int | None = None,
        observables: Mapping[str, Observable] | None = None,
        keep_spins: bool = True,
        chunk: int | None = None,
        n_threads: int | None = None,
        callback: Progress | None = None,
    ) -> Iterator[SampleRun]:
        """Sample in chunks; yields one :class:`SampleRun` per chunk of ``chunk`` saved samples
        per chain (the last may be shorter), so that long runs need not be held in memory.

        Parameters
        ----------
        n_samples:
            Total number of saved samples, all ``n_chains`` chains together; a multiple of
            ``n_chains`` (a sampler of a subset of the chains saves ``n_samples / n_chains`` per
            chain of its subset).
        thin:
            Updates between saved samples (int >= 1), or ``"auto"``: ``max(1, ceil(2 tau_int))``
            with ``tau_int`` (in updates) of the energy measured after every update of the
            second half of the burn-in (all chains pooled); warns if that pilot is shorter than
            50 ``tau_int``.
        burn_in:
            Updates per chain to discard first (Wolff: cluster flips). ``None``: on the first
            call, or whenever ``thin="auto"``, :data:`DEFAULT_BURN_IN_SWEEPS` sweep-equivalents;
            otherwise 0 (the chains continue).
        observables:
            ``name -> f`` with ``f`` mapping int8 spins ``(batch, *lattice.shape)`` to
            ``(batch,)``; each adds a series (names ``energy`` and ``magnetization`` are taken).
        keep_spins:
            Whether the chunks carry the configurations.
        chunk:
            Saved samples per chain per chunk; default: at most 16 MiB of spins per chunk and,
            with a ``callback``, at most 1/100 of the run.
        n_threads:
            Threads running chains concurrently; default ``min(len(chains), os.cpu_count())``.
        callback:
            Called as ``callback(done, total)`` after each chunk, with ``done`` the saved
            samples so far (this sampler's chains together, increasing, ending at ``total =
            n_samples``, or ``n_samples / n_chains * len(chains)`` for a subset of the chains).

        The arguments are checked when ``stream`` is called; the burn-in runs when the first
        chunk is requested. Each chunk's ``seconds`` is its own wall time (the first includes
        the burn-in).
        """
        n_per_chain = self._check_n_samples(n_samples)
        if not (isinstance(thin, str) and thin == "auto"):
            thin = _check_int(thin, "thin (or 'auto')", 1)
        if burn_in is not None:
            burn_in = _check_int(burn_in, "burn_in", 0)
        if thin == "auto" and burn_in is not None and burn_in < MIN_AUTO_BURN_IN:
            raise ValueError(
                f"thin='auto' needs burn_in >= {MIN_AUTO_BURN_IN} (or None) for its pilot, "
                f"got {burn_in}"
            )
        obs = self._check_observables(observables)
        n_threads = self._check_threads(n_threads)
        pooled = thin == "auto" or (burn_in is None and not self.equilibrated)
        if pooled and self.subset and self._gather is None:
            raise ValueError(
                f"this sampler runs chains {self.chains.start}..{self.chains.stop - 1} of {self.n_chains}: "
                "the default burn-in and thin='auto' are decided from all chains, so pass gather (e.g. "
                "World.all_gather_rows), or an explicit burn_in and an integer thin")
        if callback is not None and not callable(callback):
            raise ValueError(f"callback must be callable as callback(done, total), got {callback!r}")
        if chunk is None:
            chunk = max(1, _CHUNK_BYTES // (len(self.chains) * self.lattice.n_sites))
            if callback is not None:
                chunk = min(chunk, max(1, n_per_chain // 100))
        chunk = min(_check_int(chunk, "chunk", 1), n_per_chain)
        return self._generate(n_per_chain, thin, burn_in, obs, keep_spins, chunk, n_threads,
                              callback)

    def _generate(
        self,
        n_per_chain: int,
        thin: int | str,
        burn_in: int | None,
        obs: dict[str, Observable],
        keep_spins: bool,
        chunk: int,
        n_threads: int,
        callback: Progress | None,
    ) -> Iterator[SampleRun]:
        """The generator behind :meth:`stream` (arguments already checked)."""
        shape = self.lattice.shape
        auto = thin == "auto"
        if burn_in is None and self.equilibrated and not auto:
            burn_in = 0
        counts_sites = self.rule.counts_cluster_sites
        pool = ThreadPoolExecutor(n_threads) if n_threads > 1 else None
        try:
            t0 = time.perf_counter()
            burn_in, pilot = self._burn_in(burn_in, auto, pool)
            self.equilibrated = True
            tau = self._pilot_tau(pilot) if auto else None
            if auto:
                thin = max(1, math.ceil(2.0 * tau))
            need_spins = keep_spins or bool(obs)
            n_local = len(self.chains)
            done = 0
            while done < n_per_chain:
                m = min(chunk, n_per_chain - done)
                spins = (np.empty((n_local, m, self.lattice.n_sites), dtype=np.int8)
                         if need_spins else None)
                energy, mag, sites = self._advance_all(thin, m, spins, pool)
                series = {"energy": energy, "magnetization": mag}
                if spins is not None:
                    spins = spins.reshape((n_local, m) + shape)
                for name, f in obs.items():
                    series[name] = self._evaluate(name, f, spins)
                done += m
                if callback is not None:
                    callback(done * n_local, n_per_chain * n_local)
                t1 = time.perf_counter()
                yield SampleRun(
                    sampler=self.name, lattice=self.lattice, K=self.K, seed=self.seed,
                    n_chains=n_local, thin=thin, burn_in=burn_in,
                    spins=spins if keep_spins else None, series=series, seconds=t1 - t0,
                    mean_cluster_size=(int(sites.sum()) / (n_local * m * thin)
                                       if counts_sites else None),
                    pilot_tau_int=tau, chains=self.chains,
                )
                t0 = time.perf_counter()
        finally:
            if pool is not None:
                pool.shutdown()

    def run(
        self,
        n_samples: int,
        thin: int | str = 1,
        burn_in: int | None = None,
        observables: Mapping[str, Observable] | None = None,
        keep_spins: bool = True,
        n_threads: int | None = None,
        callback: Progress | None = None,
        chunk: int | None = None,
    ) -> SampleRun:
        """Burn in (see :meth:`stream`), then save ``n_samples`` samples (``n_samples /
        n_chains`` per chain, ``thin`` updates apart) and return them as one :class:`SampleRun`
        (of this sampler's chains). Arguments as in :meth:`stream`; the result does not depend
        on ``chunk`` or ``n_threads``, and each chain's samples not on which subset of the chains
        the sampler runs."""
        t0 = time.perf_counter()
        chunks = self.stream(n_samples, thin=thin, burn_in=burn_in, observables=observables,
                             keep_spins=keep_spins, chunk=chunk, n_threads=n_threads,
                             callback=callback)
        n_per_chain = n_samples // self.n_chains
        n_local = len(self.chains)
        spins, series, first, done, sites = None, {}, None, 0, 0.0
        for part in chunks:  # copied into preallocated arrays: peak memory = result + 1 chunk
            if first is None:
                first = part
                series = {k: np.empty((n_local, n_per_chain)) for k in part.series}
                if keep_spins:
                    spins = np.empty((n_local, n_per_chain) + self.lattice.shape, np.int8)
            m = part.n_per_chain
            for k, v in part.series.items():
                series[k][:, done : done + m] = v
            if spins is not None:
                spins[:, done : done + m] = part.spins
            if part.mean_cluster_size is not None:
                sites += part.mean_cluster_size * m
            done += m
        return SampleRun(
            sampler=self.name, lattice=self.lattice, K=self.K, seed=self.seed,
            n_chains=n_local, thin=first.thin, burn_in=first.burn_in, spins=spins,
            series=series, seconds=time.perf_counter() - t0,
            mean_cluster_size=sites / n_per_chain if self.rule.counts_cluster_sites else None,
            pilot_tau_int=first.pilot_tau_int, chains=self.chains,
        )

    # ---- argument checks -------------------------------------------------------------------
    def _check_n_samples(self, n_samples) -> int:
        n_samples = _check_int(n_samples, "n_samples", 1)
        if n_samples % self.n_chains:
            raise ValueError(
                f"n_samples must be a multiple of n_chains={self.n_chains}, got {n_samples}"
            )
        return n_samples // self.n_chains

    def _check_threads(self, n_threads) -> int:
        if n_threads is None:
            return min(len(self.chains), os.cpu_count() or 1)
        return min(_check_int(n_threads, "n_threads", 1), len(self.chains))

    @staticmethod
    def _check_observables(observables) -> dict[str, Observable]:
        if observables is None:
            return {}
        if not isinstance(observables, Mapping):
            raise ValueError("observables must be a mapping name -> callable, "
                             f"got {type(observables).__name__}")
        for name, f in observables.items():
            if not isinstance(name, str) or name in ("energy", "magnetization"):
                raise ValueError("observable names must be strings other than 'energy' and "
                                 f"'magnetization', got {name!r}")
            if not callable(f):
                raise ValueError(f"observable {name!r} must be callable, got {f!r}")
        return dict(observables)

    def _evaluate(self, name: str, f: Observable, spins: np.ndarray) -> np.ndarray:
        c, m = spins.shape[:2]
        values = np.asarray(f(spins.reshape((c * m,) + self.lattice.shape)), dtype=np.float64)
        if values.shape != (c * m,):
            raise ValueError(f"observable {name!r} must return shape ({c * m},) for {c * m} "
                             f"configurations, got {values.shape}")
        return values.reshape(c, m)


def make_sampler(
    name: str,
    lattice: Lattice | Sequence[int],
    K: float | str,
    seed: int = 0,
    n_chains: int = 1,
    chains: range | slice | None = None,
    gather: Gather | None = None,
) -> Sampler:
    """Build a :class:`Sampler` over the rule called ``name``.

    Parameters
    ----------
    name:
        One of :data:`SAMPLERS`: ``"wolff"`` (single-cluster, :class:`~deeprg.mc.rules.WolffRule`),
        ``"sw"`` (Swendsen-Wang, :class:`~deeprg.mc.rules.SwendsenWangRule`), ``"metropolis"``
        (single-spin-flip sweeps, :class:`~deeprg.mc.rules.MetropolisRule`).
    lattice:
        A :class:`~deeprg.lattice.Lattice` or its shape.
    K:
        Coupling ``K = beta J > 0`` (finite) or ``"critical"`` for the square-lattice ``K_C``.
    seed:
        Integer >= 0; chain ``c`` uses ``numpy.random.SeedSequence(seed).spawn(n_chains)[c]``.
    n_chains:
        Number of independent chains, >= 1.
    chains, gather:
        Run only these chains (default all), with ``gather`` for the decisions taken from all
        chains; see :class:`Sampler`.
    """
    if name not in RULES:
        raise ValueError(f"sampler name must be one of {SAMPLERS}, got {name!r}")
    if not isinstance(lattice, Lattice):
        lattice = Lattice(tuple(lattice))
    return Sampler(RULES[name](lattice, parse_coupling(K, "K")), seed, n_chains, chains, gather)
