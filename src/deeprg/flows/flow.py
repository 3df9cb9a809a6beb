"""A normalizing flow: standard normal prior on the latents and a hierarchy of bijectors.

``x = g(z)`` with ``z ~ N(0, 1)`` on every site; ``ln q(x) = ln p(z) + log|det dz/dx|`` (Li & Wang
Eq. 1; direction convention in :mod:`deeprg.flows.bijectors`). With ``symmetrize=True`` the
density is the Z2-symmetric mixture ``q_s(x) = [q(x) + q(-x)] / 2``, sampled by drawing from ``q``
and flipping the sign of the whole field with probability 1/2.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from deeprg.flows.hierarchy import Hierarchy

__all__ = ["Flow", "random_global_sign"]


def random_signs(n: int, generator: torch.Generator | None, like: Tensor) -> Tensor:
    """``n`` independent signs +-1 with probability 1/2 each, ``(n,)`` in ``like``'s dtype and
    on its device."""
    return torch.randint(0, 2, (n,), generator=generator, device=like.device).to(like.dtype) * 2 - 1


def random_global_sign(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """``x`` ``(batch, ...)`` with the sign of each whole field flipped with probability 1/2."""
    sign = random_signs(x.shape[0], generator, x)
    return x * sign.reshape((-1,) + (1,) * (x.dim() - 1))


class Flow(nn.Module):
    """Flow density over fields of shape ``(batch, *hierarchy.lattice.shape)``."""

    def __init__(self, hierarchy: Hierarchy, symmetrize: bool = False) -> None:
        super().__init__()
        self.hierarchy = hierarchy
        self.symmetrize = bool(symmetrize)

    @property
    def event_shape(self) -> tuple[int, ...]:
        return self.hierarchy.lattice.shape

    @property
    def n_sites(self) -> int:
        return self.hierarchy.lattice.n_sites

    def _reference(self) -> Tensor:
        return next(self.parameters())

    def log_prior(self, z: Tensor) -> Tensor:
        """Standard normal ``ln p(z)`` of latent fields ``(batch, *event_shape)`` -> ``(batch,)``."""
        return -0.5 * z.reshape(z.shape[0], -1).pow(2).sum(1) - 0.5 * self.n_sites * math.log(2 * math.pi)

    def sample_latent(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        ref = self._reference()
        return torch.randn((n, *self.event_shape), generator=generator, device=ref.device, dtype=ref.dtype)

    def _base_log_prob(self, x: Tensor) -> Tensor:
        z, logdet = self.hierarchy.renormalize(x)
        return self.log_prior(z) + logdet

    def log_prob(self, x: Tensor) -> Tensor:
        """``ln q(x)`` for fields ``(batch, *event_shape)`` -> ``(batch,)``."""
        if not self.symmetrize:
            return self._base_log_prob(x)
        both = self._base_log_prob(torch.cat([x, -x]))
        return torch.logaddexp(*both.chunk(2)) - math.log(2.0)

    def generate_with_log_prob(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Fields ``x = g(z)`` of latent fields ``z`` and the flow's ``ln q(x)`` (of the symmetrized
        density if ``symmetrize``), differentiable in ``z`` and in the parameters; shapes
        ``(batch, *event_shape)`` and ``(batch,)``. No random sign is applied."""
        x, logdet = self.hierarchy.generate(z)
        log_q = self.log_prior(z) - logdet
        if self.symmetrize:
            log_q = torch.logaddexp(log_q, self._base_log_prob(-x)) - math.log(2.0)
        return x, log_q

    def sample_and_log_prob(self, n: int, generator: torch.Generator | None = None,
                            rows: slice | None = None) -> tuple[Tensor, Tensor]:
        """``n`` fields ``x ~ q`` and their ``ln q(x)``, differentiable in the parameters
        (reparametrization); shapes ``(n, *event_shape)`` and ``(n,)``.

        ``rows``: return only these rows of the ``n`` draws. All ``n`` latents (and random signs)
        are drawn from ``generator`` either way, so the rows equal the same rows of the full draw
        and the generator ends in the same state: data-parallel processes keep their share of one
        batch (:mod:`deeprg.distributed`)."""
        z = self.sample_latent(n, generator)
        sign = random_signs(n, generator, z) if self.symmetrize else None
        if rows is not None:
            z = z[rows]
            sign = None if sign is None else sign[rows]
        x, log_q = self.generate_with_log_prob(z)
        if sign is None:
            return x, log_q
        return x * sign.reshape((-1,) + (1,) * (x.dim() - 1)), log_q

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` fields ``x ~ q``, shape ``(n, *event_shape)``."""
        return self.sample_and_log_prob(n, generator)[0]
