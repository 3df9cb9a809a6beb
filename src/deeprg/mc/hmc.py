"""Hybrid (Hamiltonian) Monte Carlo for any differentiable log-density, many chains as one batch.

Each step draws momenta ``p ~ N(0, 1)``, integrates Hamilton's equations for
``H(x, p) = -ln pi(x) + |p|^2 / 2`` with ``n_leapfrog`` leapfrog steps of size ``step_size`` and
accepts the end point with probability ``min(1, exp(H_old - H_new))`` (Duane et al. 1987), chain by
chain. The step size of each trajectory is drawn uniformly from ``step_size * (1 +- jitter)``,
which keeps the chain exact and breaks the resonances of fixed-length trajectories (a trajectory
of half a period maps x -> -x in a Gaussian direction and never changes x^2). During ``warmup`` steps the step size is adapted by dual averaging (Hoffman & Gelman 2014,
Alg. 5) towards a target mean acceptance, then frozen, so the production chain is an exact
Metropolis chain. A proposal whose energy is not finite is rejected and counted; if more than half
of all proposals are, the run stops with :class:`HMCDivergence` instead of averaging garbage.

Several processes (``torchrun``): every process holds all chains and draws every random number,
as one process would; only the log-density and its gradient are split by chains
(:meth:`deeprg.distributed.World.map_rows`) and gathered, so the chains follow the one-process
trajectories (up to the rounding of smaller batches).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from deeprg.distributed import World, current
from deeprg.memory import trim_heap

#: Steps between two :func:`~deeprg.memory.trim_heap` calls of :func:`hmc` (long runs on large
#: lattices otherwise fragment the C heap by about 0.5 MB per step).
TRIM_EVERY = 50

__all__ = ["HMCDivergence", "HMCResult", "hmc", "kinetic", "leapfrog", "log_prob_and_grad", "metropolis_accept"]


class HMCDivergence(RuntimeError):
    """The integrator produced non-finite energies for most proposals (step size too large)."""


@dataclass
class HMCResult:
    """Output of :func:`hmc`.

    ``x``: final state ``(chains, *event)``; ``series``: name -> ``(n_saved, chains)`` float64
    tensors of the observables recorded after warm-up (always ``log_prob``); ``warmup_series``:
    the same during warm-up, ``(warmup, chains)``, to watch thermalization; ``acceptance``: mean
    acceptance probability per production step ``(n_saved,)``; ``step_size`` used in production;
    ``n_rejected_nonfinite`` proposals rejected for non-finite energy.
    """

    x: Tensor
    series: dict[str, Tensor]
    acceptance: Tensor
    step_size: float
    n_leapfrog: int
    n_rejected_nonfinite: int = 0
    warmup_acceptance: list[float] = field(default_factory=list)
    warmup_series: dict[str, Tensor] = field(default_factory=dict)

    @property
    def acceptance_rate(self) -> float:
        return float(self.acceptance.mean())


def log_prob_and_grad(log_prob: Callable[[Tensor], Tensor], x: Tensor) -> tuple[Tensor, Tensor]:
    """``log_prob(x)`` ``(chains,)`` and its gradient in ``x``, both detached."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        lp = log_prob(x)
        (grad,) = torch.autograd.grad(lp.sum(), x)
    return lp.detach(), grad.detach()


def leapfrog(value_and_grad: Callable[[Tensor], tuple[Tensor, Tensor]], x: Tensor, p: Tensor, grad: Tensor,
             step_size: float, n_leapfrog: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``n_leapfrog`` leapfrog steps of ``H = -ln pi(x) + |p|^2 / 2`` from ``(x, p)``, where ``grad``
    is the gradient of ``ln pi`` at ``x`` and ``value_and_grad(x) -> (ln pi(x), grad)``. Returns the
    end point ``(x, p, ln pi(x), grad)``; ``value_and_grad`` is called last at that end point."""
    p = p + 0.5 * step_size * grad
    for i in range(n_leapfrog):
        x = x + step_size * p
        lp, grad = value_and_grad(x)
        if i < n_leapfrog - 1:
            p = p + step_size * grad
    p = p + 0.5 * step_size * grad
    return x, p, lp, grad


def kinetic(p: Tensor) -> Tensor:
    """``|p|^2 / 2`` per chain of momenta ``(chains, *event)``."""
    return 0.5 * p.reshape(p.shape[0], -1).pow(2).sum(1)


def metropolis_accept(h_old: Tensor, h_new: Tensor, x_new: Tensor, generator: torch.Generator | None
                      ) -> tuple[Tensor, Tensor, Tensor]:
    """Accept decisions ``(chains,)`` for proposals of energy ``h_new`` from states of energy
    ``h_old``, the acceptance probabilities ``min(1, exp(h_old - h_new))`` and which proposals are
    finite: one whose energy or coordinates ``x_new`` are not has probability 0."""
    chains = h_new.shape[0]
    finite = torch.isfinite(h_new) & torch.isfinite(x_new.reshape(chains, -1)).all(1)
    log_ratio = torch.where(finite, h_old - h_new, torch.full_like(h_new, -math.inf))
    accept_prob = log_ratio.clamp(max=0.0).exp()
    u = torch.rand(chains, generator=generator, device=h_new.device, dtype=h_new.dtype)
    return finite & (u < accept_prob), accept_prob, finite


class _DualAveraging:
    """Step-size adaptation of Hoffman & Gelman (2014), Alg. 5 (constants as there)."""

    def __init__(self, step_size: float, target: float) -> None:
        self.mu = math.log(10.0 * step_size)
        self.target, self.h, self.log_avg, self.t = target, 0.0, 0.0, 0
        self.log_step = math.log(step_size)

    def update(self, acceptance: float) -> float:
        self.t += 1
        eta = 1.0 / (self.t + 10.0)
        self.h = (1.0 - eta) * self.h + eta * (self.target - acceptance)
        self.log_step = self.mu - math.sqrt(self.t) / 0.05 * self.h
        w = self.t**-0.75
        self.log_avg = w * self.log_step + (1.0 - w) * self.log_avg
        return math.exp(self.log_step)

    @property
    def final(self) -> float:
        return math.exp(self.log_avg)


def hmc(
    log_prob: Callable[[Tensor], Tensor],
    x0: Tensor,
    n_steps: int,
    *,
    step_size: float = 0.1,
    n_leapfrog: int = 10,
    warmup: int = 0,
    target_acceptance: float = 0.8,
    jitter: float = 0.2,
    observables: dict[str, Callable[[Tensor], Tensor]] | None = None,
    generator: torch.Generator | None = None,
    callback: Callable[[int, float], None] | None = None,
    world: World | None = None,
) -> HMCResult:
    """Run ``warmup + n_steps`` HMC steps from ``x0`` (``(chains, *event)``).

    Parameters
    ----------
    log_prob: ``(chains, *event) -> (chains,)``, differentiable (need not be normalized).
    n_steps: production steps recorded (>= 1).
    step_size, n_leapfrog: leapfrog step and number of steps per trajectory.
    warmup: steps of step-size adaptation before production (0: use ``step_size`` as given).
    target_acceptance: mean acceptance aimed at during warm-up, in (0, 1).
    jitter: relative half-width of the uniform random step size, in [0, 1).
    observables: name -> ``(chains, *event) -> (chains,)`` recorded after every step (warm-up steps
        in ``warmup_series``).
    generator: random source for momenta and accept decisions.
    callback: called as ``callback(step, acceptance)`` after every step (e.g. a progress bar).
    world: the processes that share the log-density evaluations (default
        :func:`deeprg.distributed.current`; on several processes a collective: every process calls
        it with the same arguments and gets the same result).
    """
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    if not (step_size > 0 and math.isfinite(step_size)):
        raise ValueError(f"step_size must be a finite number > 0, got {step_size}")
    if n_leapfrog < 1:
        raise ValueError(f"n_leapfrog must be >= 1, got {n_leapfrog}")
    if not 0 < target_acceptance < 1:
        raise ValueError(f"target_acceptance must lie in (0, 1), got {target_acceptance}")
    if not 0 <= jitter < 1:
        raise ValueError(f"jitter must lie in [0, 1), got {jitter}")
    observables = dict(observables or {})
    world = current() if world is None else world
    x = x0.detach().clone()
    chains = x.shape[0]

    def value_and_grad(v: Tensor) -> tuple[Tensor, Tensor]:
        return world.map_rows(lambda rows: log_prob_and_grad(log_prob, rows), v)

    lp, grad = value_and_grad(x)
    if not torch.isfinite(lp).all():
        raise ValueError("log_prob of the starting point is not finite for every chain")
    adapt = _DualAveraging(step_size, target_acceptance) if warmup > 0 else None
    eps = step_size
    series: dict[str, list[Tensor]] = {"log_prob": [], **{k: [] for k in observables}}
    warm_series: dict[str, list[Tensor]] = {k: [] for k in series}
    acceptance, warm_acc = [], []
    n_bad = 0
    for step in range(warmup + n_steps):
        p = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        h_old = -lp + kinetic(p)
        u_eps = float(torch.rand((), generator=generator, device=x.device, dtype=torch.float64))
        eps_now = eps * (1.0 + jitter * (2.0 * u_eps - 1.0))
        x_new, p_new, lp_new, grad_new = leapfrog(value_and_grad, x, p, grad, eps_now, n_leapfrog)
        accept, accept_prob, finite = metropolis_accept(h_old, -lp_new + kinetic(p_new), x_new, generator)
        n_bad += int((~finite).sum())
        shape = (chains,) + (1,) * (x.dim() - 1)
        x = torch.where(accept.reshape(shape), x_new, x)
        lp = torch.where(accept, lp_new, lp)
        grad = torch.where(accept.reshape(shape), grad_new, grad)
        mean_acc = float(accept_prob.mean())
        if n_bad > 0.5 * chains * (step + 1) and step >= 4:
            raise HMCDivergence(
                f"{n_bad} of {chains * (step + 1)} proposals had non-finite energy by step {step + 1} "
                f"(step size {eps:.3g}): reduce the step size"
            )
        if step < warmup:
            warm_acc.append(mean_acc)
            eps = adapt.update(mean_acc)
            if step == warmup - 1:
                eps = adapt.final
        else:
            acceptance.append(mean_acc)
        record = warm_series if step < warmup else series
        record["log_prob"].append(lp.double().cpu())
        for name, fn in observables.items():
            with torch.no_grad():
                record[name].append(fn(x).double().cpu())
        if (step + 1) % TRIM_EVERY == 0:
            trim_heap()
        if callback is not None:
            callback(step + 1, mean_acc)
    return HMCResult(
        x=x,
        series={k: torch.stack(v) for k, v in series.items()},
        acceptance=torch.tensor(acceptance, dtype=torch.float64),
        step_size=eps,
        n_leapfrog=n_leapfrog,
        n_rejected_nonfinite=n_bad,
        warmup_acceptance=warm_acc,
        warmup_series={k: torch.stack(v) for k, v in warm_series.items() if v},
    )
