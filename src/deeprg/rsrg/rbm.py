"""The RBM projector of Chung & Kao: a translation-invariant filter, stride 2, no biases, in 2D or 3D.

Fine spins ``sigma`` live on a periodic ``L_0 x .. x L_{d-1}`` lattice (d = 2 or 3), coarse spins
``mu`` on the ``L_0/2 x .. x L_{d-1}/2`` lattice of 2^d blocks. Coarse spin ``J = (I_0, .., I_{d-1})``
couples to the fine spins of an ``f^d`` window centred on its block (``f`` even, so the window is
symmetric about the block centre); in 2D::

    W_{i J} = sum_{a, b = 0}^{f-1} w[a, b] * [i == (2 I0 - c + a, 2 I1 - c + b) mod (L0, L1)],
    c = f/2 - 1,

and in 3D the same with a third filter index and the offset ``c`` on every axis. For ``f = 2``
the window is exactly the block; ``f = 8`` covers rows ``2 I0 - 3 .. 2 I0 + 4``. The window must
fit the lattice (``f <= L_k`` on every axis); periodic images never overlap then.

The joint weight is the RBM ``Q(sigma, mu) ∝ exp(sum_{iJ} W_iJ sigma_i mu_J)`` (Eq. 5), so both
conditionals are products of independent spins (Eqs. 3-4)::

    h_J(sigma) = sum_i W_iJ sigma_i,   P(mu|sigma) = prod_J exp(mu_J h_J) / (2 cosh h_J),
    P(mu_J = +1 | sigma) = sigmoid(2 h_J),
    g_i(mu) = sum_J W_iJ mu_J,         P(sigma_i = +1 | mu) = sigmoid(2 g_i),

and the visible marginal is the normalized normalizing factor ``Y(sigma) / sum Y`` with
``ln Y(sigma) = sum_J ln 2 cosh h_J(sigma)`` (Eq. 4); its free energy is
``F(sigma) = -ln Y(sigma)``.

Two evaluations of the same map: the convolutions :func:`hidden_field` (circular padding, then a
stride-2 ``conv2d`` / ``conv3d``), :func:`visible_field` (its adjoint: a stride-2 transposed
convolution folded back onto the periodic lattice) and :func:`filter_correlation` (the filter
gradient, the weight gradient of the same convolution), memory ``O(batch N)``; and the dense
``(N, N/2^d)`` matrix :func:`coupling_matrix` (differentiable, fast for the small minibatches of
2D training, but ``N^2 / 2^d`` entries: 537 MB in float32 for a 32^3 lattice).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F

from deeprg.lattice import Lattice

__all__ = [
    "block_indicator",
    "check_filter",
    "coupling_matrix",
    "filter_correlation",
    "filter_gradient",
    "free_energy",
    "hidden_field",
    "receptive_field",
    "sample_spins",
    "visible_field",
]


def _fmt(shape) -> str:
    return "x".join(str(int(s)) for s in shape)


def _block(d: int) -> str:
    return "x".join(["2"] * (d if d == 3 else 2))


def check_filter(f: int, shape: tuple[int, ...], filter_dim: int | None = None) -> None:
    """Raise a one-line ``ValueError`` unless ``f`` is an even filter size fitting the lattice
    ``shape`` (2D or 3D, even extents, ``f <= `` every extent). With ``filter_dim``, also unless the
    filter's dimension (``weights.ndim``) is that of the lattice."""
    if isinstance(f, bool) or not isinstance(f, (int, np.integer)) or f < 2 or f % 2:
        raise ValueError(f"filter size must be an even integer >= 2 (centred on a {_block(len(shape))} block), "
                         f"got {f!r}")
    if not 1 <= len(shape) <= 3 or any(s < 2 for s in shape):
        raise ValueError(f"the RBM projector needs a 2D or 3D lattice of even extents, got shape {tuple(shape)}")
    Lattice(tuple(shape)).require("the RBM projector", dims=(2, 3), even=True)
    if filter_dim is not None and filter_dim != len(shape):
        raise ValueError(f"a {filter_dim}D ({_fmt((f,) * filter_dim)}) filter cannot act on {len(shape)}D "
                         f"{_fmt(shape)} configurations")
    if f > min(shape):
        raise ValueError(f"filter size {f} is larger than the lattice {_fmt(shape)}")


def _check_weights(weights: torch.Tensor, shape: tuple[int, ...]) -> int:
    """Check a ``(f,)*d`` filter against the lattice ``shape``; return ``f``."""
    f = int(weights.shape[-1])
    if weights.ndim not in (2, 3) or any(s != f for s in weights.shape):
        raise ValueError(f"filter must be a square (f, f) or cubic (f, f, f) array, got shape {tuple(weights.shape)}")
    check_filter(f, tuple(shape), weights.ndim)
    return f


def receptive_field(shape: tuple[int, ...], f: int) -> np.ndarray:
    """``(f,)*d + (L_0/2, .., L_{d-1}/2)`` int64 array: flat (row-major) index of the fine site
    that filter entry ``(a_0, .., a_{d-1})`` of coarse spin ``(I_0, .., I_{d-1})`` couples to."""
    shape = tuple(int(s) for s in shape)
    check_filter(f, shape)
    d = len(shape)
    c = f // 2 - 1
    a = np.arange(f)
    out = np.zeros((f,) * d + tuple(L // 2 for L in shape), dtype=np.int64)
    stride = 1
    for k in reversed(range(d)):
        L = shape[k]
        idx = (2 * np.arange(L // 2)[None, :] - c + a[:, None]) % L  # (f, L_k/2)
        view = [1] * (2 * d)
        view[k], view[d + k] = f, L // 2
        out = out + idx.reshape(view) * stride
        stride *= L
    return out


_CPU = torch.device("cpu")


@functools.lru_cache(maxsize=16)
def _field_index(shape: tuple[int, ...], f: int, device: torch.device = _CPU) -> tuple[torch.Tensor, torch.Tensor]:
    """``(site, coarse)``, both ``(f^d, M)`` int64 on ``device``: entry ``k`` (row-major) of the
    filter couples coarse site ``J`` to fine site ``site[k, J]`` (``coarse[k, J] = J``). Pairs are
    distinct because the window fits the lattice. Cached per device, so that the dense path on a
    GPU copies the indices to it once, not every training step."""
    if device.type != "cpu":
        site, coarse = _field_index(shape, f)
        return site.to(device), coarse.to(device)
    site = torch.as_tensor(receptive_field(shape, f).reshape(f ** len(shape), -1))
    return site, torch.arange(site.shape[1]).expand_as(site)


def coupling_matrix(weights: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """The dense ``(N, N / 2^d)`` matrix ``W_iJ`` of the filter ``weights`` (``(f,)*d``) on the
    lattice ``shape`` of ``N`` sites; fine and coarse sites in row-major order. Differentiable in
    ``weights``."""
    shape = tuple(int(s) for s in shape)
    f = _check_weights(weights, shape)
    site, coarse = _field_index(shape, f, weights.device)
    values = weights.reshape(-1, 1).expand(site.shape)
    W = weights.new_zeros(math.prod(shape), site.shape[1])
    return W.index_put((site.reshape(-1), coarse.reshape(-1)), values.reshape(-1))


def filter_gradient(dW: torch.Tensor, f: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Chain rule through :func:`coupling_matrix`: ``dL/dw[a] = sum_J dL/dW_{i(a,J) J}`` for a
    gradient ``dW`` of shape ``(N, N / 2^d)``; returns ``(f,)*d``."""
    shape = tuple(int(s) for s in shape)
    site, coarse = _field_index(shape, f, dW.device)
    return dW[site, coarse].sum(dim=1).reshape((f,) * len(shape))


def _padded(sigma: torch.Tensor, c: int) -> torch.Tensor:
    """``sigma[:, None]`` circularly padded by ``c`` on both sides of every lattice axis."""
    x = sigma[:, None]
    if c:
        x = F.pad(x, (c,) * (2 * (sigma.ndim - 1)), mode="circular")
    return x


def hidden_field(sigma: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``h_J = sum_i W_iJ sigma_i`` for ``sigma`` of shape ``(batch, L_0, .., L_{d-1})`` (float)
    and a ``(f,)*d`` filter; returns ``(batch, L_0/2, ..)``. A cross-correlation with stride 2
    (``conv2d`` / ``conv3d``) after circular padding by ``f/2 - 1`` on every side."""
    f = _check_weights(weights, tuple(sigma.shape[1:]))
    conv = F.conv2d if weights.ndim == 2 else F.conv3d
    return conv(_padded(sigma, f // 2 - 1), weights[None, None].to(sigma.dtype), stride=2)[:, 0]


def visible_field(mu: torch.Tensor, weights: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """``g_i = sum_J W_iJ mu_J`` for coarse spins ``mu`` of shape ``(batch, L_0/2, ..)`` (float)
    and a ``(f,)*d`` filter on the lattice ``shape``; returns ``(batch, *shape)``. The adjoint of
    :func:`hidden_field`: a transposed convolution with stride 2 gives the field on the padded
    lattice of extents ``L_k + f - 2`` (padded site ``p`` is fine site ``p - c mod L_k``,
    ``c = f/2 - 1``), and the ``c`` padded layers on each side are added back onto the sites they
    wrap to."""
    shape = tuple(int(s) for s in shape)
    f = _check_weights(weights, shape)
    coarse = tuple(L // 2 for L in shape)
    if tuple(mu.shape[1:]) != coarse:
        raise ValueError(f"coarse spins of shape {tuple(mu.shape[1:])} do not fit the lattice {_fmt(shape)} "
                         f"(expected {coarse})")
    conv_t = F.conv_transpose2d if weights.ndim == 2 else F.conv_transpose3d
    y = conv_t(mu[:, None], weights[None, None].to(mu.dtype), stride=2)[:, 0]
    c = f // 2 - 1
    if c:
        for k, L in enumerate(shape):
            ax = k + 1
            centre = y.narrow(ax, c, L)
            y = torch.cat([centre.narrow(ax, 0, c) + y.narrow(ax, L + c, c),
                           centre.narrow(ax, c, L - 2 * c),
                           centre.narrow(ax, L - c, c) + y.narrow(ax, 0, c)], dim=ax)
    return y


def filter_correlation(sigma: torch.Tensor, t: torch.Tensor, f: int) -> torch.Tensor:
    """``C[a] = sum_{n, J} sigma_{n, i(a, J)} t_{n, J}`` for fine spins ``sigma`` of shape
    ``(batch, L_0, ..)`` and coarse values ``t`` of shape ``(batch, L_0/2, ..)``; returns
    ``(f,)*d``. This is ``sum_iJ sigma_i t_J dW_iJ/dw[a]``, the filter gradient of
    ``sum_iJ W_iJ sigma_i t_J`` (what :func:`filter_gradient` gives for ``dW = sigma^T t``),
    computed as the weight gradient of the convolution of :func:`hidden_field`."""
    d = sigma.ndim - 1
    check_filter(f, tuple(sigma.shape[1:]))
    weight_grad = torch.nn.grad.conv2d_weight if d == 2 else torch.nn.grad.conv3d_weight
    x = _padded(sigma, f // 2 - 1)
    return weight_grad(x, (1, 1) + (f,) * d, t[:, None].to(sigma.dtype), stride=2)[0, 0]


def block_indicator(f: int, d: int) -> np.ndarray:
    """``(f,)*d`` float64 filter that is 1 on the 2^d block the window is centred on (entries
    ``f/2 - 1`` and ``f/2`` of every axis) and 0 elsewhere: ``h_J`` of this filter is the block's
    total spin, so ``p * block_indicator`` is the stochastic majority rule of Ron, Brandt &
    Swendsen (PRE 95, 053305 (2017)), ``P(mu|sigma) ∝ exp(p mu sum_{i in block} sigma_i)``."""
    check_filter(f, (f,) * d, d)
    out = np.zeros((f,) * d)
    c = f // 2 - 1
    out[(slice(c, c + 2),) * d] = 1.0
    return out


def free_energy(h: torch.Tensor) -> torch.Tensor:
    """``F = -sum_J ln 2 cosh h_J`` per configuration from the hidden fields ``(batch, ...)``."""
    return -torch.logaddexp(h, -h).flatten(1).sum(1)


def sample_spins(field: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Independent +-1 spins with ``P(+1) = sigmoid(2 field)``, same shape and dtype as ``field``."""
    u = torch.rand(field.shape, generator=generator, dtype=field.dtype, device=field.device)
    return torch.where(u < torch.sigmoid(2.0 * field), 1.0, -1.0).to(field.dtype)
