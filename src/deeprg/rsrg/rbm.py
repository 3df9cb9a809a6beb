"""The RBM projector of Chung & Kao: a translation-invariant ``f x f`` filter, stride 2, no biases.

Fine spins ``sigma`` live on a periodic ``L0 x L1`` lattice, coarse spins ``mu`` on the
``L0/2 x L1/2`` lattice of 2x2 blocks. Coarse spin ``J = (I0, I1)`` couples to the fine spins of
an ``f x f`` window centred on its block (``f`` even, so the window is symmetric about the block
centre)::

    W_{i J} = sum_{a, b = 0}^{f-1} w[a, b] * [i == (2 I0 - c + a, 2 I1 - c + b) mod (L0, L1)],
    c = f/2 - 1.

For ``f = 2`` the window is exactly the block; ``f = 8`` covers rows ``2 I0 - 3 .. 2 I0 + 4``.
The window must fit the lattice (``f <= L0, L1``); periodic images never overlap then.

The joint weight is the RBM ``Q(sigma, mu) ∝ exp(sum_{iJ} W_iJ sigma_i mu_J)`` (Eq. 5), so both
conditionals are products of independent spins (Eqs. 3-4)::

    h_J(sigma) = sum_i W_iJ sigma_i,   P(mu|sigma) = prod_J exp(mu_J h_J) / (2 cosh h_J),
    P(mu_J = +1 | sigma) = sigmoid(2 h_J),
    g_i(mu) = sum_J W_iJ mu_J,         P(sigma_i = +1 | mu) = sigmoid(2 g_i),

and the visible marginal is the normalized normalizing factor ``Y(sigma) / sum Y`` with
``ln Y(sigma) = sum_J ln 2 cosh h_J(sigma)`` (Eq. 4); its free energy is
``F(sigma) = -ln Y(sigma)``.

Two evaluations of the same map: :func:`hidden_field` (a circular-padded ``conv2d``, fast on large
batches, used by the projector in MCRG) and :func:`coupling_matrix` (the dense ``W``, differentiable,
fast for the small minibatches of training).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from deeprg.lattice import Lattice

__all__ = [
    "check_filter",
    "coupling_matrix",
    "filter_gradient",
    "free_energy",
    "hidden_field",
    "receptive_field",
    "sample_spins",
]


def check_filter(f: int, shape: tuple[int, ...]) -> None:
    """Raise ``ValueError`` unless ``f`` is an even filter size fitting the 2D lattice ``shape``."""
    if isinstance(f, bool) or not isinstance(f, (int, np.integer)) or f < 2 or f % 2:
        raise ValueError(f"filter size must be an even integer >= 2 (centred on a 2x2 block), got {f!r}")
    if not 1 <= len(shape) <= 3 or any(s < 2 for s in shape):
        raise ValueError(f"the RBM projector needs a 2D lattice of even extents, got shape {tuple(shape)}")
    Lattice(tuple(shape)).require("the RBM projector", dims=(2,), even=True)
    if f > min(shape):
        raise ValueError(f"filter size {f} is larger than the lattice {shape[0]}x{shape[1]}")


def receptive_field(shape: tuple[int, int], f: int) -> np.ndarray:
    """``(f, f, L0/2, L1/2)`` int64 array: flat (row-major) index of the fine site that filter
    entry ``(a, b)`` of coarse spin ``(I0, I1)`` couples to."""
    check_filter(f, shape)
    L0, L1 = shape
    c = f // 2 - 1
    a = np.arange(f)
    rows = (2 * np.arange(L0 // 2)[None, :] - c + a[:, None]) % L0  # (f, L0/2)
    cols = (2 * np.arange(L1 // 2)[None, :] - c + a[:, None]) % L1  # (f, L1/2)
    return rows[:, None, :, None] * L1 + cols[None, :, None, :]


@functools.lru_cache(maxsize=16)
def _field_index(shape: tuple[int, int], f: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(site, coarse)``, both ``(f*f, M)`` int64: entry ``k = a f + b`` of the filter couples
    coarse site ``J`` to fine site ``site[k, J]`` (``coarse[k, J] = J``). Pairs are distinct
    because the window fits the lattice."""
    site = torch.as_tensor(receptive_field(shape, f).reshape(f * f, -1))
    return site, torch.arange(site.shape[1]).expand_as(site)


def coupling_matrix(weights: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """The dense ``(L0 L1, L0 L1 / 4)`` matrix ``W_iJ`` of the filter ``weights`` (``(f, f)``);
    fine and coarse sites in row-major order. Differentiable in ``weights``."""
    site, coarse = _field_index(tuple(shape), weights.shape[-1])
    site, coarse = site.to(weights.device), coarse.to(weights.device)
    values = weights.reshape(-1, 1).expand(site.shape)
    W = weights.new_zeros(shape[0] * shape[1], site.shape[1])
    return W.index_put((site.reshape(-1), coarse.reshape(-1)), values.reshape(-1))


def filter_gradient(dW: torch.Tensor, f: int, shape: tuple[int, int]) -> torch.Tensor:
    """Chain rule through :func:`coupling_matrix`: ``dL/dw[a, b] = sum_J dL/dW_{i(a,b,J) J}`` for a
    gradient ``dW`` of shape ``(L0 L1, L0 L1 / 4)``; returns ``(f, f)``."""
    site, coarse = _field_index(tuple(shape), f)
    return dW[site.to(dW.device), coarse.to(dW.device)].sum(dim=1).reshape(f, f)


def hidden_field(sigma: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``h_J = sum_i W_iJ sigma_i`` for ``sigma`` of shape ``(batch, L0, L1)`` (float); returns
    ``(batch, L0/2, L1/2)``. A cross-correlation with stride 2 after circular padding by
    ``f/2 - 1`` on every side."""
    f = weights.shape[-1]
    check_filter(f, tuple(sigma.shape[1:]))
    c = f // 2 - 1
    x = sigma[:, None]
    if c:
        x = F.pad(x, (c, c, c, c), mode="circular")
    return F.conv2d(x, weights[None, None].to(sigma.dtype), stride=2)[:, 0]


def free_energy(h: torch.Tensor) -> torch.Tensor:
    """``F = -sum_J ln 2 cosh h_J`` per configuration from the hidden fields ``(batch, ...)``."""
    return -torch.logaddexp(h, -h).flatten(1).sum(1)


def sample_spins(field: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Independent +-1 spins with ``P(+1) = sigmoid(2 field)``, same shape and dtype as ``field``."""
    u = torch.rand(field.shape, generator=generator, dtype=field.dtype, device=field.device)
    return torch.where(u < torch.sigmoid(2.0 * field), 1.0, -1.0).to(field.dtype)
