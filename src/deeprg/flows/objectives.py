"""Training objectives that use samples of the target, and where those samples come from.

Li & Wang train by the reverse KL alone (Eq. 5): ``F_q = E_q[ln q - ln pi] = KL(q || pi) - ln Z``.
The reverse KL is mode-seeking: a flow that misses the disordered configurations of the critical
Ising field pays little for it, and the importance weights of its samples become heavy-tailed. The
forward KL, ``KL(pi || q) = E_pi[ln pi - ln q]``, punishes exactly those misses; its gradient
needs samples of ``pi`` and the density ``ln q(x)`` at them (the RG direction of the flow):

    L_forward = -E_{x ~ pi}[ln q(x)]                           (= KL(pi || q) + const)
    L_mixture = (1 - lambda) F_q + lambda L_forward.

Samples of ``pi`` come from a :class:`PiSource`:

* :class:`ReferenceSource`: a target's exact reference sampler
  (:func:`deeprg.models.relaxed.reference_sampler`), drawn in pools of ``pool`` samples; pool
  ``k`` is drawn with seed ``(seed, k)``, so a resumed run redraws exactly the pool it was using;
* :class:`LatentHMCSource`: persistent chains of physical fields ``x``, moved by HMC in the
  latent space of the *current* flow, targeting ``ln pi(g(z)) + ln|det dg/dz|`` (Eq. 6), run
  alongside the training as the seed does ("HMC in parallel to the training"). Any target works.
  Each draw maps the chains' fields to latents with the current flow (``z = f(x)``), moves them,
  and maps back: whatever the flow, that kernel leaves ``pi`` invariant, so chains near ``pi``
  stay near ``pi`` while the flow changes. (Keeping latent states instead would let every update
  of the flow drag the chains' fields with it, off ``pi``: forward KL on such chains diverges.)
  Their state is checkpointed.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable

import torch
from torch import Tensor

from deeprg.flows.estimators import latent_log_prob
from deeprg.flows.flow import Flow
from deeprg.mc.hmc import kinetic, leapfrog, log_prob_and_grad, metropolis_accept

__all__ = ["OBJECTIVES", "PI_SOURCES", "LatentHMCSource", "PiSource", "ReferenceSource", "forward_nll"]

#: Training objectives: the reverse KL of Eq. 5, the forward KL, or their mixture.
OBJECTIVES = ("reverse", "forward", "mixture")
#: Where the samples of pi for the forward KL come from.
PI_SOURCES = ("reference", "hmc")


def forward_nll(flow: Flow, x: Tensor) -> Tensor:
    """``-mean ln q(x)`` over samples ``x`` ``(batch, *event)`` of ``pi`` (detached from their
    source): the forward KL up to the constant entropy of ``pi``. Differentiable in the flow."""
    return -flow.log_prob(x.detach()).mean()


class PiSource(ABC):
    """Samples of ``pi`` for the forward KL: :meth:`draw` returns ``(n, *event)`` fields."""

    @abstractmethod
    def draw(self, flow: Flow, target, n: int) -> Tensor:
        """``n`` samples of ``pi`` (detached), on the flow's device and in its dtype."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict, restore: Callable[[torch.Generator, Tensor], None] | None = None) -> None:
        """Continue from :meth:`state_dict`; ``restore(generator, saved_state)`` continues a
        generator (default ``generator.set_state``; the trainer passes one that reseeds a
        checkpoint's generator written on another device type, see
        :func:`deeprg.runs.restore_generator`)."""


class ReferenceSource(PiSource):
    """Exact samples from ``sample(n, seed) -> Tensor (n, *event)`` (a target's reference
    sampler), served from pools of ``pool`` samples drawn with seeds ``(seed, k)``; position is
    the number of samples served so far (checkpointed)."""

    def __init__(self, sample: Callable[[int, int], Tensor], seed: int, pool: int) -> None:
        if pool < 1:
            raise ValueError(f"pool must be >= 1, got {pool}")
        self.sample, self.seed, self.pool = sample, int(seed), int(pool)
        self.position = 0
        self._cache: tuple[int, Tensor] | None = None

    def _pool(self, k: int, like: Tensor) -> Tensor:
        """Pool ``k``, drawn when first needed and kept on ``like``'s device and in its dtype
        (converted once per pool, not at every draw)."""
        if self._cache is None or self._cache[0] != k:
            import numpy as np

            seed = int(np.random.SeedSequence([self.seed, k]).generate_state(1, np.uint64)[0])
            self._cache = (k, self.sample(self.pool, seed).to(device=like.device, dtype=like.dtype))
        return self._cache[1]

    def draw(self, flow: Flow, target, n: int) -> Tensor:
        parts, remaining = [], n
        ref = next(flow.parameters())
        while remaining > 0:
            k, offset = divmod(self.position, self.pool)
            take = min(remaining, self.pool - offset)
            parts.append(self._pool(k, ref)[offset : offset + take])
            self.position += take
            remaining -= take
        return torch.cat(parts)

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict, restore: Callable[[torch.Generator, Tensor], None] | None = None) -> None:
        self.position = int(state["position"])


class LatentHMCSource(PiSource):
    """``n_chains`` persistent chains of fields ``x``; each :meth:`draw` maps them to latents with
    the current flow, makes ``moves`` HMC transitions of ``n_leapfrog`` leapfrog steps in the
    latent space, adapts the step size towards an acceptance of ``target_acceptance``
    (multiplicatively, by at most 10% a draw) and returns the moved fields ``g(z)`` (``n`` must
    equal ``n_chains``). Chains start from samples of the flow and are kept in the checkpoint
    with the step size."""

    def __init__(self, n_chains: int, moves: int = 1, n_leapfrog: int = 5, step_size: float = 0.1,
                 target_acceptance: float = 0.7, generator: torch.Generator | None = None) -> None:
        for name, value in (("n_chains", n_chains), ("moves", moves), ("n_leapfrog", n_leapfrog)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if not 0 < target_acceptance < 1:
            raise ValueError(f"target_acceptance must be in (0, 1), got {target_acceptance}")
        self.n_chains, self.moves, self.n_leapfrog = n_chains, moves, n_leapfrog
        self.step_size, self.target_acceptance = float(step_size), target_acceptance
        self.generator = generator
        self.x: Tensor | None = None
        self.acceptance = math.nan

    def draw(self, flow: Flow, target, n: int) -> Tensor:
        if n != self.n_chains:
            raise ValueError(f"latent HMC has {self.n_chains} chains; asked for {n} samples")
        with torch.no_grad():
            if self.x is None:
                z = flow.sample_latent(self.n_chains, self.generator)
            else:
                z, _ = flow.hierarchy.renormalize(self.x)
        log_prob = latent_log_prob(flow, target)

        def value_and_grad(z: Tensor) -> tuple[Tensor, Tensor]:
            return log_prob_and_grad(log_prob, z)

        lp, grad = value_and_grad(z)
        accepted = []
        for _ in range(self.moves):
            p = torch.randn(z.shape, generator=self.generator, device=z.device, dtype=z.dtype)
            z_new, p_new, lp_new, grad_new = leapfrog(value_and_grad, z, p, grad, self.step_size, self.n_leapfrog)
            accept, prob, _ = metropolis_accept(kinetic(p) - lp, kinetic(p_new) - lp_new, z_new, self.generator)
            shape = (-1,) + (1,) * (z.dim() - 1)
            z = torch.where(accept.reshape(shape), z_new, z)
            lp = torch.where(accept, lp_new, lp)
            grad = torch.where(accept.reshape(shape), grad_new, grad)
            accepted.append(float(prob.mean()))
        self.acceptance = sum(accepted) / len(accepted)
        self.step_size *= math.exp(max(-0.1, min(0.1, self.acceptance - self.target_acceptance)))
        with torch.no_grad():
            self.x, _ = flow.hierarchy.generate(z.detach())
        return self.x

    def state_dict(self) -> dict:
        return {"x": torch.empty(0) if self.x is None else self.x.cpu(), "step_size": self.step_size,
                "generator": self.generator.get_state() if self.generator is not None else torch.empty(0)}

    def load_state_dict(self, state: dict, restore: Callable[[torch.Generator, Tensor], None] | None = None) -> None:
        ref = self.generator.device if self.generator is not None else "cpu"
        self.x = None if state["x"].numel() == 0 else state["x"].to(ref)
        self.step_size = float(state["step_size"])
        if self.generator is not None and state["generator"].numel():
            (restore or torch.Generator.set_state)(self.generator, state["generator"])
