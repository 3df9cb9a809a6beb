"""Unbiased physics from a trained flow: importance weights, latent-space densities, exact MCMC.

* :func:`importance_ln_z` - ``ln Z = ln E_q[pi(x) / q(x)]`` (Li & Wang Eq. 6), estimated by the
  log-mean-exp of the weights over fresh flow samples, with a delta-method error bar, the
  effective sample size ``(sum w)^2 / sum w^2`` and the Pareto tail index of the weights
  (:func:`pareto_k`), which says whether the error bar can be trusted; observables reweighted to
  ``pi`` (:func:`weighted_estimate`, shared with the annealed estimator of
  :mod:`deeprg.flows.annealing`).
* :func:`latent_log_prob` - the renormalized log-density of the latents, ``ln pi(g(z)) +
  ln|det dg/dz|`` (the integrand of Eq. 6 up to ``ln p(z)`` terms that cancel): HMC on it samples
  ``x = g(z) ~ pi`` exactly, whatever the quality of the flow.
* :func:`independence_metropolis` - Metropolis-Hastings with the flow as an independent proposal,
  accepting ``x'`` with ``min(1, pi(x') q(x) / (pi(x) q(x')))``.

With a Z2-symmetrized flow the latent sampler uses the un-symmetrized bijection ``g``; since
``pi(x) = pi(-x)``, a uniformly random global sign applied to ``x = g(z)`` keeps ``pi`` invariant.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import scipy.stats
import torch
from torch import Tensor

from deeprg.distributed import World, current
from deeprg.flows.flow import Flow, random_global_sign
from deeprg.mc.stats import Estimate

__all__ = [
    "IndependenceMHResult",
    "ImportanceEstimate",
    "importance_ln_z",
    "independence_metropolis",
    "ising_observables",
    "latent_log_prob",
    "pareto_k",
    "weighted_estimate",
]


#: Effective sample size below which :func:`importance_ln_z` warns that its error bar is unreliable.
MIN_RELIABLE_ESS = 200
#: Pareto tail index above which :func:`importance_ln_z` warns (Vehtari et al., "Pareto smoothed
#: importance sampling", JMLR 25 (2024): above 0.7 the estimate converges impractically slowly).
MAX_RELIABLE_PARETO_K = 0.7


class ImportanceEstimate(NamedTuple):
    """``ln_z`` (with its delta-method error), ``ess_fraction = ESS / n``, ``pareto_k`` and the
    self-normalized reweighted ``observables`` (name -> :class:`~deeprg.mc.stats.Estimate`)."""

    ln_z: Estimate
    ess_fraction: float
    pareto_k: float
    observables: dict[str, Estimate]


def pareto_k(log_w: Tensor) -> float:
    """Shape ``k`` of a generalized Pareto distribution fitted (maximum likelihood,
    :func:`scipy.stats.genpareto.fit`) to the largest ``M = min(n / 5, 3 sqrt(n))`` importance
    weights above the next one. The weights have ``1 / k`` finite moments: for ``k < 1/2`` the
    variance is finite and the usual error bar holds; above 0.7 the estimate is unreliable whatever
    the error bar says. ``-inf`` when the tail weights are all equal (bounded weights). Raises
    ``FloatingPointError`` for non-finite weights."""
    n = len(log_w)
    m = int(min(n / 5, 3 * math.sqrt(n)))
    if m < 5:
        raise ValueError(f"need at least 25 weights for a tail fit, got {n}")
    if not torch.isfinite(log_w).all():
        raise FloatingPointError("non-finite importance weights: the flow or the target returned inf/nan")
    top = torch.sort(log_w.double()).values[-(m + 1):]
    # (w - u) / w_max for the tail weights w above u: the fitted shape does not depend on the scale,
    # and this form does not overflow however far the weights spread
    excess = (torch.exp(top[1:] - top[-1]) - torch.exp(top[0] - top[-1])).numpy()
    if excess.max() <= 0:
        return -math.inf
    shape, _, _ = scipy.stats.genpareto.fit(excess, floc=0.0)
    return float(shape)


def weighted_estimate(log_w: Tensor, values: dict[str, Tensor] | None = None) -> ImportanceEstimate:
    """Estimates from ``n`` independent log importance weights ``log_w`` ``(n,)`` of samples whose
    observables are ``values`` (name -> ``(n,)``).

    * ``ln Z = ln mean(w)`` with the delta-method error ``sqrt(Var(w) / n) / mean(w)``;
    * ``ESS / n = (sum w)^2 / (n sum w^2)`` and the tail index :func:`pareto_k`;
    * ``<O> = sum w O / sum w`` (self-normalized) with the delta-method error
      ``sqrt(sum w^2 (O - <O>)^2) / sum w``.

    The error bars hold only when the weights are not heavy-tailed: with fewer than
    :data:`MIN_RELIABLE_ESS` effective samples or a tail index above :data:`MAX_RELIABLE_PARETO_K`
    a warning says so (a reverse-KL flow under-covers parts of ``pi``: ln Z is then likely low).
    """
    log_w = log_w.double().cpu()
    n = len(log_w)
    if n < 25:
        raise ValueError(f"need at least 25 weights, got {n}")
    values = {name: o.double().cpu() for name, o in (values or {}).items()}
    for name, o in values.items():
        if o.shape != log_w.shape:
            raise ValueError(f"values[{name!r}] has shape {tuple(o.shape)}, expected {tuple(log_w.shape)}")
    if not torch.isfinite(log_w).all():
        raise FloatingPointError("non-finite importance weights: the flow or the target returned inf/nan")
    shift = log_w.max()
    w = torch.exp(log_w - shift)
    mean = w.mean()
    ess_fraction = float(w.sum() ** 2 / (w * w).sum() / n)
    k = pareto_k(log_w)
    if k > MAX_RELIABLE_PARETO_K:
        warnings.warn(
            f"importance weights are heavy-tailed (Pareto tail index {k:.2f}, effective sample size "
            f"{ess_fraction * n:.0f} of {n}): the error bars are unreliable and ln Z is likely biased low",
            stacklevel=2)
    elif ess_fraction * n < MIN_RELIABLE_ESS:
        warnings.warn(
            f"importance weights give only {ess_fraction * n:.0f} effective samples of {n} (fewer than "
            f"{MIN_RELIABLE_ESS}): the error bars are unreliable", stacklevel=2)
    observables = {}
    for name, o in values.items():
        avg = float((w * o).sum() / w.sum())
        error = float(torch.sqrt((w * w * (o - avg) ** 2).sum()) / w.sum())
        observables[name] = Estimate(avg, error, float(o.var()), math.nan, n)
    ln_z = Estimate(float(shift + torch.log(mean)), float(w.std() / math.sqrt(n) / mean), float(log_w.var()), 0.5, n)
    return ImportanceEstimate(ln_z, ess_fraction, k, observables)


@torch.no_grad()
def importance_ln_z(
    flow: Flow,
    target,
    n_samples: int,
    batch: int = 4096,
    generator: torch.Generator | None = None,
    observables: dict[str, Callable[[Tensor], Tensor]] | None = None,
    callback: Callable[[int, int], None] | None = None,
    world: World | None = None,
) -> ImportanceEstimate:
    """Importance sampling with ``n_samples`` fresh flow samples: ``ln Z``, the weights' ESS and
    tail index, and the reweighted ``observables`` (name -> function of fields
    ``(batch, *event_shape) -> (batch,)``); see :func:`weighted_estimate`. ``callback(done,
    n_samples)`` is called after each batch (e.g. a progress bar).

    On several processes (``world``, default :func:`deeprg.distributed.current`; a collective)
    every process draws each batch's latents from ``generator`` and pushes its rows
    ``world.share(batch)`` through the flow and the target, the expensive part; the fields and
    log-weights are then gathered in row order and the observables evaluated on the whole batch,
    so the generator is consumed as on one process and every process returns the one-process
    estimate (up to the rounding of row-wise arithmetic in batches of other sizes)."""
    if n_samples < 25:
        raise ValueError(f"n_samples must be >= 25, got {n_samples}")
    world = current() if world is None else world
    observables = dict(observables or {})
    log_w, values = [], {k: [] for k in observables}
    for start in range(0, n_samples, batch):
        x, lw = _weighted_draw(flow, target, min(batch, n_samples - start), generator, world)
        log_w.append(lw.double().cpu())
        for name, fn in observables.items():
            values[name].append(fn(x).double().cpu())
        if callback is not None:
            callback(start + len(x), n_samples)
    return weighted_estimate(torch.cat(log_w), {k: torch.cat(v) for k, v in values.items()})


def _weighted_draw(flow: Flow, target, n: int, generator: torch.Generator | None, world: World
                   ) -> tuple[Tensor, Tensor]:
    """``n`` flow samples ``x`` and their log importance weights ``ln pi(x) - ln q(x)``, shapes
    ``(n, *event_shape)`` and ``(n,)``, on every process of ``world`` (a collective there): every
    process draws all ``n`` latents from ``generator`` and pushes its rows ``world.share(n)``
    through the flow and the target; the rows are then gathered in order, so ``generator`` ends
    as on one process and the result is the one-process draw up to the rounding of row-wise
    arithmetic in batches of other sizes."""
    split = world.distributed and n >= world.size
    x, log_q = flow.sample_and_log_prob(n, generator, rows=world.share(n) if split else None)
    log_w = target.log_prob_unnormalized(x) - log_q
    if split:
        counts = world.counts(n)
        x, log_w = world.all_gather_tensor(x, counts), world.all_gather_tensor(log_w, counts)
    return x, log_w


def latent_log_prob(flow: Flow, target) -> Callable[[Tensor], Tensor]:
    """``z -> ln pi(g(z)) + ln|det dg/dz|`` for latent fields ``(batch, *event_shape)``."""

    def log_prob(z: Tensor) -> Tensor:
        x, logdet = flow.hierarchy.generate(z)
        return target.log_prob_unnormalized(x) + logdet

    return log_prob


@dataclass
class IndependenceMHResult:
    """``x``: final states ``(chains, *event)``; ``series``: name -> ``(n_steps, chains)``;
    ``acceptance``: mean acceptance per step ``(n_steps,)``."""

    x: Tensor
    series: dict[str, Tensor]
    acceptance: Tensor

    @property
    def acceptance_rate(self) -> float:
        return float(self.acceptance.mean())


@torch.no_grad()
def independence_metropolis(
    flow: Flow,
    target,
    n_steps: int,
    chains: int,
    observables: dict[str, Callable[[Tensor], Tensor]] | None = None,
    generator: torch.Generator | None = None,
    callback: Callable[[int, int], None] | None = None,
    world: World | None = None,
) -> IndependenceMHResult:
    """Independence Metropolis-Hastings with proposals drawn from ``flow`` (exact for ``pi``).
    ``callback(step, n_steps)`` is called after every step (e.g. a progress bar). Raises
    :class:`FloatingPointError` when a log importance weight ``ln pi(x) - ln q(x)`` of the
    starting states or of a proposal is not finite (a broken flow: such a proposal would never be
    accepted, and the chains would report the observables of the broken states).

    On several processes (``world``, default :func:`deeprg.distributed.current`; a collective)
    each step's proposals are drawn and weighed as in :func:`importance_ln_z`: every process
    pushes its share of the chains through the flow and the target and the proposals are
    gathered, while the accept decisions and the observables, whose random numbers every process
    draws alike, run on all chains everywhere. Every process then follows the one-process chains
    (up to the rounding of row-wise arithmetic in batches of other sizes)."""
    if n_steps < 1 or chains < 1:
        raise ValueError(f"n_steps and chains must be >= 1, got {n_steps} and {chains}")
    world = current() if world is None else world
    observables = dict(observables or {})

    def propose() -> tuple[Tensor, Tensor]:
        x, log_w = _weighted_draw(flow, target, chains, generator, world)
        if not torch.isfinite(log_w).all():
            raise FloatingPointError("non-finite importance weights of flow samples: the flow or the target "
                                     "returned inf/nan")
        return x, log_w

    x, log_w = propose()
    series: dict[str, list[Tensor]] = {k: [] for k in observables}
    acceptance = []
    shape = (chains,) + (1,) * (x.dim() - 1)
    for step in range(n_steps):
        x_new, log_w_new = propose()
        prob = (log_w_new - log_w).clamp(max=0.0).exp()
        u = torch.rand(chains, generator=generator, device=x.device, dtype=x.dtype)
        accept = u < prob
        x = torch.where(accept.reshape(shape), x_new, x)
        log_w = torch.where(accept, log_w_new, log_w)
        acceptance.append(float(prob.mean()))
        for name, fn in observables.items():
            series[name].append(fn(x).double().cpu())
        if callback is not None:
            callback(step + 1, n_steps)
    return IndependenceMHResult(
        x, {k: torch.stack(v) for k, v in series.items()}, torch.tensor(acceptance, dtype=torch.float64)
    )


def ising_observables(target, generator: torch.Generator | None = None, random_sign: bool = False
                      ) -> dict[str, Callable[[Tensor], Tensor]]:
    """Observables of Ising spins drawn from ``pi(s|x)`` (``target`` a
    :class:`~deeprg.models.relaxed.RelaxedIsing`), as functions of fields ``(batch, L, L)``:

    * ``structure_factor``: the uniform structure factor ``(sum_i s_i)^2 / N^2``;
    * ``energy_per_site``: ``-sum_<ij> s_i s_j / N``.

    Each call draws fresh spins; with ``random_sign`` the field's global sign is drawn at random
    first (needed for a Z2-symmetrized flow's latent sampler, see the module docstring).
    """
    bonds = {torch.device("cpu"): torch.tensor(target.lattice.bonds, dtype=torch.long)}  # device -> bonds
    n = target.lattice.n_sites

    def spins(x: Tensor) -> Tensor:
        if random_sign:
            x = random_global_sign(x, generator)
        return target.sample_spins(x, generator).reshape(x.shape[0], -1).to(x.dtype)

    def structure_factor(x: Tensor) -> Tensor:
        return spins(x).sum(1) ** 2 / n**2

    def energy_per_site(x: Tensor) -> Tensor:
        s = spins(x)
        if x.device not in bonds:  # copied to a device once, not at every step of a chain
            bonds[x.device] = bonds[torch.device("cpu")].to(x.device)
        b = bonds[x.device]
        return -(s[:, b[:, 0]] * s[:, b[:, 1]]).sum(1) / n

    return {"structure_factor": structure_factor, "energy_per_site": energy_per_site}
