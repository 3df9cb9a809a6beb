"""Annealed importance sampling (AIS; Neal, Stat. Comput. 11, 125 (2001)) from a trained flow to
``pi``, in the flow's latent space: an unbiased ``ln Z`` whose weights have much lighter tails
than the plain importance weights of :func:`~deeprg.flows.estimators.importance_ln_z`.

On latent fields ``z`` (``(batch, *event_shape)``) the base density is the flow's prior
``p(z) = N(0, 1)`` (normalized) and the log importance weight of a flow sample is

    v(z) = ln pi(x) - ln q(x),     x = g(z),

with ``q`` the flow's density (the Z2-symmetrized one if the flow is symmetrized). The target
``p(z) e^{v(z)}`` has integral ``E_p[pi(x) / q(x)] = Z``: for a plain flow by the change of
variables, and for a symmetrized one because ``pi`` and ``q`` are both even, so averaging the
integral ``int q0 pi / q`` with its reflection gives ``int pi``. The annealing path is

    ln f_b(z) = ln p(z) + b v(z),    b_t = 1 - (1 - t / T)^power,  t = 0 .. T   (T = ``n_temperatures``).

From ``z_0 ~ p``, for ``t = 1 .. T``: ``ln w += (b_t - b_{t-1}) v(z_{t-1})``, then (for ``t < T``)
``z_t`` = one HMC transition (:func:`~deeprg.mc.hmc.leapfrog`, Metropolis test) that leaves
``f_{b_t}`` invariant. Then ``E[w] = Z`` exactly (Neal 2001, Sec. 2), whatever the quality of the
flow; ``T = 1`` is plain importance sampling. The final fields ``x = g(z_{T-1})`` (with a random
global sign for a symmetrized flow) weighted by ``w`` give reweighted observables.

Unbiased is not the same as converged. Configurations that the flow under-covers (at criticality:
the disordered ones, small magnetization) gain weight only near ``b = 1``, and the chains must
reach them by local moves there; configurations no chain reaches are missing from the estimate,
and the weights' ESS and tail index cannot show it. The ladder is therefore denser near ``b = 1``
(``power = 3`` by default: the last 40% of the temperatures cover ``b > 0.93``). Check convergence
by doubling ``T``: ``ln Z`` must not move beyond its error bar.

The step size of the transition at each temperature comes from a pilot run on separate chains
(adapted towards ``target_acceptance`` from one temperature to the next) and is then fixed, so
the transitions of the estimating chains do not depend on their own past.

Several processes (``torchrun``): every process holds the whole batch and draws every random
number as one process would; the flow and target evaluations (``v`` and its gradient, the final
fields) are split by rows (:meth:`deeprg.distributed.World.map_rows`) and gathered, so every
process returns the one-process estimate up to the rounding of smaller batches.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from deeprg.distributed import World, current
from deeprg.flows.estimators import ImportanceEstimate, weighted_estimate
from deeprg.flows.flow import Flow, random_global_sign
from deeprg.mc.hmc import kinetic, leapfrog, log_prob_and_grad, metropolis_accept

__all__ = ["AnnealedEstimate", "annealed_importance_sampling", "ladder", "latent_log_weight"]

#: Step size of the pilot run's first transition.
INITIAL_STEP_SIZE = 0.5


@dataclass
class AnnealedEstimate:
    """``estimate`` of ``ln Z``, the weights' ESS and tail index and the reweighted observables;
    ``acceptance`` (mean over chains) and ``step_sizes`` of the ``T - 1`` transitions;
    ``log_weights`` ``(n_samples,)``."""

    estimate: ImportanceEstimate
    acceptance: Tensor
    step_sizes: Tensor
    log_weights: Tensor


class _Path:
    """``ln f_b`` and its gradient at one inverse temperature ``b``, remembering ``v`` and its
    gradient at the last point evaluated (the end point of a leapfrog trajectory); the evaluation
    is split by rows over the processes of ``world``."""

    def __init__(self, log_weight: Callable[[Tensor], Tensor], world: World) -> None:
        self.log_weight, self.b, self.world = log_weight, 0.0, world
        self.v = self.grad_v = None

    def evaluate(self, z: Tensor) -> None:
        self.v, self.grad_v = self.world.map_rows(lambda rows: log_prob_and_grad(self.log_weight, rows), z)

    def value_and_grad(self, z: Tensor) -> tuple[Tensor, Tensor]:
        self.evaluate(z)
        return self.at(z, self.v, self.grad_v)

    def at(self, z: Tensor, v: Tensor, grad_v: Tensor) -> tuple[Tensor, Tensor]:
        return -0.5 * z.reshape(z.shape[0], -1).pow(2).sum(1) + self.b * v, -z + self.b * grad_v


def latent_log_weight(flow: Flow, target) -> Callable[[Tensor], Tensor]:
    """``z -> v(z) = ln pi(g(z)) - ln q(g(z))``, the log importance weight of latent fields
    ``(batch, *event_shape)`` -> ``(batch,)``, differentiable in ``z``; ``q`` is the symmetrized
    density for a symmetrized flow. ``p(z) e^{v(z)}`` integrates to ``Z`` (module docstring)."""

    def log_weight(z: Tensor) -> Tensor:
        x, log_q = flow.generate_with_log_prob(z)
        return target.log_prob_unnormalized(x) - log_q

    return log_weight


def ladder(n_temperatures: int, power: float = 3.0) -> list[float]:
    """``b_t = 1 - (1 - t / T)^power`` for ``t = 0 .. T``: from 0 to 1, denser near 1 for ``power > 1``."""
    return [1.0 - (1.0 - t / n_temperatures) ** power for t in range(n_temperatures + 1)]


def _anneal(path: _Path, z: Tensor, bs: list[float], n_leapfrog: int, step_sizes: list[float] | None,
            target_acceptance: float, generator, on_transition: Callable[[], None] | None = None
            ) -> tuple[Tensor, Tensor, list[float], list[float]]:
    """One AIS pass over a batch along the inverse temperatures ``bs``. With ``step_sizes=None``
    the step size is adapted from each temperature's mean acceptance to the next (pilot run).
    ``on_transition()`` is called after every transition. Returns ``(log_w, z_final, acceptance,
    step_sizes)``."""
    adapt = step_sizes is None
    eps, used, acceptance = INITIAL_STEP_SIZE, [], []
    path.evaluate(z)
    v, grad_v = path.v, path.grad_v
    log_w = torch.zeros_like(v, dtype=torch.float64)
    shape = (z.shape[0],) + (1,) * (z.dim() - 1)
    for t in range(1, len(bs)):
        log_w += (bs[t] - bs[t - 1]) * v.double()
        if t == len(bs) - 1:
            break
        path.b = bs[t]
        if not adapt:
            eps = step_sizes[t - 1]
        lp, grad = path.at(z, v, grad_v)
        p = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
        z_new, p_new, lp_new, _ = leapfrog(path.value_and_grad, z, p, grad, eps, n_leapfrog)
        accept, prob, _ = metropolis_accept(-lp + kinetic(p), -lp_new + kinetic(p_new), z_new, generator)
        z = torch.where(accept.reshape(shape), z_new, z)
        v = torch.where(accept, path.v, v)
        grad_v = torch.where(accept.reshape(shape), path.grad_v, grad_v)
        used.append(eps)
        acceptance.append(float(prob.mean()))
        if adapt:
            eps *= math.exp(2.0 * (acceptance[-1] - target_acceptance))
        if on_transition is not None:
            on_transition()
    return log_w, z, acceptance, used


def annealed_importance_sampling(
    flow: Flow,
    target,
    n_samples: int,
    n_temperatures: int = 100,
    n_leapfrog: int = 5,
    *,
    power: float = 3.0,
    batch: int = 256,
    pilot: int = 64,
    target_acceptance: float = 0.8,
    observables: dict[str, Callable[[Tensor], Tensor]] | None = None,
    generator: torch.Generator | None = None,
    callback: Callable[[int, int], None] | None = None,
    world: World | None = None,
) -> AnnealedEstimate:
    """AIS estimate of ``ln Z`` from ``n_samples`` annealed flow samples (see the module docstring).

    Parameters
    ----------
    n_samples: independent AIS runs (>= 25, for the tail index).
    n_temperatures: ``T >= 1`` steps of ``b`` from 0 to 1 (``T - 1`` HMC transitions per sample).
    power: shape of the ladder :func:`ladder`, >= 1 (1: evenly spaced).
    n_leapfrog: leapfrog steps per transition.
    batch: samples annealed together; pilot: chains of the step-size pilot run (discarded).
    target_acceptance: acceptance the pilot run adapts the step sizes to, in (0, 1).
    observables: name -> function of fields ``(batch, *event_shape) -> (batch,)``, reweighted by the
        AIS weights (self-normalized).
    callback: called as ``callback(done, total)`` after every HMC transition of a batch (pilot
        included), for a progress bar.
    world: processes sharing the evaluations (default :func:`deeprg.distributed.current`; on
        several processes a collective with the same result on every process).
    """
    if n_samples < 25:
        raise ValueError(f"n_samples must be >= 25, got {n_samples}")
    for name, value in (("n_temperatures", n_temperatures), ("n_leapfrog", n_leapfrog), ("batch", batch),
                        ("pilot", pilot)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if not 0 < target_acceptance < 1:
        raise ValueError(f"target_acceptance must lie in (0, 1), got {target_acceptance}")
    if not power >= 1:
        raise ValueError(f"power must be >= 1, got {power}")
    observables = dict(observables or {})

    world = current() if world is None else world
    path, bs, step_sizes = _Path(latent_log_weight(flow, target), world), ladder(n_temperatures, power), None
    done, total = 0, (-(-n_samples // batch) + 1) * (n_temperatures - 1)  # batches and pilot

    def on_transition() -> None:
        nonlocal done
        done += 1
        if callback is not None:
            callback(done, total)

    if n_temperatures > 1:
        step_sizes = _anneal(path, flow.sample_latent(pilot, generator), bs, n_leapfrog, None,
                             target_acceptance, generator, on_transition)[3]
    log_ws, values, acceptance = [], {k: [] for k in observables}, []
    for start in range(0, n_samples, batch):
        path.b = 0.0
        z = flow.sample_latent(min(batch, n_samples - start), generator)
        log_w, z, acc, _ = _anneal(path, z, bs, n_leapfrog, step_sizes, target_acceptance, generator, on_transition)
        log_ws.append(log_w.cpu())
        acceptance.append(torch.tensor(acc, dtype=torch.float64) * len(log_w))
        if observables:
            with torch.no_grad():
                x = world.map_rows(lambda rows: flow.hierarchy.generate(rows)[0], z)
                if flow.symmetrize:
                    x = random_global_sign(x, generator)
                for name, fn in observables.items():
                    values[name].append(fn(x).double().cpu())
    log_w = torch.cat(log_ws)
    estimate = weighted_estimate(log_w, {k: torch.cat(v) for k, v in values.items()})
    return AnnealedEstimate(
        estimate=estimate,
        acceptance=torch.stack(acceptance).sum(0) / n_samples,
        step_sizes=torch.tensor(step_sizes or [], dtype=torch.float64),
        log_weights=log_w,
    )
