"""Hybrid Monte Carlo in the latent space of a flow, side by side with the physical space
(Li & Wang Fig. 3(b)).

* ``space="physical"``: HMC on ``ln pi(x)`` (Eq. 7) directly.
* ``space="latent"``: HMC on the renormalized log-density of the latents, ``ln pi(g(z)) +
  ln|det dg/dz|`` (Eq. 6, see :func:`~deeprg.flows.estimators.latent_log_prob`); every state is
  mapped to the field ``x = g(z)``, which is distributed exactly as ``pi`` whatever the quality of
  the flow. With a Z2-symmetrized flow the observables apply a random global sign to ``x`` (exact
  since ``pi(x) = pi(-x)``).

Both start from the same fields ``x0`` (the latent chain from ``z0 = g^-1(x0)``) and record the
same observables of Ising spins drawn from ``pi(s|x)``
(:func:`~deeprg.flows.estimators.ising_observables`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from deeprg.distributed import World, current
from deeprg.flows.estimators import ising_observables, latent_log_prob
from deeprg.flows.flow import Flow
from deeprg.mc.hmc import HMCResult, hmc

__all__ = ["SPACES", "STARTS", "hmc_in_space", "latent_hmc_fields", "starting_fields"]

SPACES = ("latent", "physical")
STARTS = ("flow", "noise")


@torch.no_grad()
def starting_fields(flow: Flow, chains: int, start: str, generator: torch.Generator | None = None) -> Tensor:
    """Initial fields ``(chains, *event_shape)``: ``"flow"`` draws them from the flow (close to
    equilibrium once trained), ``"noise"`` from ``N(0, 1)`` on every site (a disordered start far
    from equilibrium near criticality, to watch thermalization as in Fig. 3(b))."""
    if start not in STARTS:
        raise ValueError(f"start must be one of {STARTS}, got {start!r}")
    if start == "flow":
        return flow.sample(chains, generator)
    return flow.sample_latent(chains, generator)


def hmc_in_space(
    flow: Flow,
    target,
    space: str,
    x0: Tensor,
    n_steps: int,
    *,
    step_size: float = 0.1,
    n_leapfrog: int = 10,
    warmup: int = 0,
    generator: torch.Generator | None = None,
    callback: Callable[[int, float], None] | None = None,
    world: World | None = None,
) -> HMCResult:
    """HMC in ``space`` (``"latent"`` or ``"physical"``) from the fields ``x0``.

    The result's ``series`` hold ``log_prob`` (of the sampled space) and the Ising observables
    ``structure_factor`` and ``energy_per_site`` of the *fields*, ``(n_steps, chains)``; its
    ``warmup_series`` the same during warm-up. ``result.x`` is in the sampled space. On several
    processes (``world``) the log-density evaluations are split by chains
    (:func:`deeprg.mc.hmc.hmc`); a collective.
    """
    if space not in SPACES:
        raise ValueError(f"space must be one of {SPACES}, got {space!r}")
    if space == "latent":
        log_prob = latent_log_prob(flow, target)
        with torch.no_grad():
            start = flow.hierarchy.renormalize(x0)[0]

        def to_field(v: Tensor) -> Tensor:
            return flow.hierarchy.generate(v)[0]
    else:
        log_prob, start = target.log_prob_unnormalized, x0

        def to_field(v: Tensor) -> Tensor:
            return v

    base = ising_observables(target, generator, random_sign=flow.symmetrize and space == "latent")
    observables = {name: (lambda v, fn=fn: fn(to_field(v))) for name, fn in base.items()}
    return hmc(log_prob, start, n_steps, step_size=step_size, n_leapfrog=n_leapfrog, warmup=warmup,
               observables=observables, generator=generator, callback=callback, world=world)


def latent_hmc_fields(flow: Flow, target, steps: int, chains: int, *, thin: int = 5, warmup: int = 100,
                      n_leapfrog: int = 10, step_size: float = 0.1, generator: torch.Generator | None = None,
                      callback: Callable[[int, int], None] | None = None, world: World | None = None) -> Tensor:
    """Exact samples of ``pi`` by HMC in the flow's latent space (Eq. 6): ``chains`` chains started
    from flow samples, ``warmup`` steps of step-size adaptation, then ``steps`` saved fields
    ``x = g(z)`` every ``thin`` HMC steps. Returns float64 fields ``(steps, chains, *event_shape)``
    (the layout the autocorrelation-aware estimators expect); ``callback(done, steps)`` after each
    saved step. On several processes (``world``, default :func:`deeprg.distributed.current`; a
    collective) the flow's work is split by chains and every process returns all chains, equal to
    the one-process result up to rounding."""
    if min(steps, chains, thin) < 1 or warmup < 0:
        raise ValueError(f"steps, chains and thin must be >= 1 and warmup >= 0, got {steps}, {chains}, {thin}, "
                         f"{warmup}")
    world = current() if world is None else world
    log_prob = latent_log_prob(flow, target)
    with torch.no_grad():
        z = flow.hierarchy.renormalize(flow.sample(chains, generator))[0]
    result = hmc(log_prob, z, 1, step_size=step_size, n_leapfrog=n_leapfrog, warmup=warmup, generator=generator,
                 world=world)
    fields = []
    for step in range(steps):
        result = hmc(log_prob, result.x, thin, step_size=result.step_size, n_leapfrog=n_leapfrog,
                     generator=generator, world=world)
        with torch.no_grad():
            fields.append(world.map_rows(lambda z: flow.hierarchy.generate(z)[0], result.x).double())
        if callback is not None:
            callback(step + 1, steps)
    return torch.stack(fields)
