"""Local stochastic maps: softmax-parametrized conditional probability tables.

A map sends ``m_in`` input variables of dimension ``D_in`` to ``m_out`` output variables of
dimension ``D_out`` by the conditional table ``P(out | in)``. Joint values are *codes*: the
variables ``(v_0 .. v_{m-1})`` of dimension ``D`` have the code ``sum_k v_k D^{m-1-k}`` (first
variable most significant), i.e. the row-major index of a tensor of shape ``(D,) * m``. A table
is therefore a matrix of shape ``(D_in^m_in, D_out^m_out)`` whose rows are probability vectors::

    P(out | in) = softmax(logits[in, :])[out]

so every table is normalized for any value of the parameters, and gradients reach all entries.
A :class:`StochasticMap` holds one table per position of a layer, or a single table shared by
all positions (translation invariance).

Initialization (:func:`init_logits`) is either near a deterministic map ``in -> target[in]``
(``P = 1 - eps`` on the target, ``eps`` spread evenly over the other outputs, plus Gaussian noise
of width ``noise`` on the logits to break symmetries), or random (standard normal logits).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["StochasticMap", "categorical", "copy_targets", "decode", "encode", "init_logits"]


def encode(values: Tensor, base: int) -> Tensor:
    """Codes of the joint values ``values[..., k]`` (last axis = variables, first most
    significant) in base ``base``; integer tensor of shape ``values.shape[:-1]``."""
    code = torch.zeros(values.shape[:-1], dtype=torch.long, device=values.device)
    for k in range(values.shape[-1]):
        code = code * base + values[..., k].long()
    return code


def decode(code: Tensor, base: int, m: int) -> Tensor:
    """Inverse of :func:`encode`: ``(..., m)`` values of the ``m`` variables of ``code``."""
    powers = base ** torch.arange(m - 1, -1, -1, device=code.device)
    return (code[..., None] // powers) % base


def categorical(probs: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One draw from each probability vector ``probs[..., :]`` (inverse CDF with uniforms from
    ``generator``); long tensor of shape ``probs.shape[:-1]``."""
    u = torch.rand(probs.shape[:-1] + (1,), generator=generator, dtype=probs.dtype, device=probs.device)
    cdf = probs.cumsum(-1)
    return (cdf < u * cdf[..., -1:]).sum(-1).clamp_max(probs.shape[-1] - 1)


def copy_targets(d_in: int, d_out: int, m_out: int) -> Tensor:
    """Targets of the copy map: input value ``c`` sends every one of the ``m_out`` outputs to
    ``c mod d_out``; long tensor ``(d_in,)`` of output codes."""
    c = torch.arange(d_in) % d_out
    return encode(c[:, None].expand(d_in, m_out), d_out)


def init_logits(
    n_tables: int,
    n_in: int,
    n_out: int,
    target: Tensor | None,
    eps: float,
    noise: float,
    generator: torch.Generator,
    dtype: torch.dtype,
) -> Tensor:
    """Initial logits ``(n_tables, n_in, n_out)``: near the deterministic map ``target`` (long
    ``(n_in,)``) when given, else standard normal. ``eps`` in (0, 1) is the probability off the
    target; ``noise`` >= 0 the standard deviation of the Gaussian added to the logits."""
    if target is None:
        return torch.randn(n_tables, n_in, n_out, generator=generator, dtype=dtype)
    if n_out == 1:
        base = torch.zeros(n_in, 1, dtype=dtype)
    else:
        base = torch.full((n_in, n_out), math.log(eps / (n_out - 1)), dtype=dtype)
        base[torch.arange(n_in), target] = math.log1p(-eps)
    return base.expand(n_tables, n_in, n_out) + noise * torch.randn(
        n_tables, n_in, n_out, generator=generator, dtype=dtype
    )


class StochasticMap(nn.Module):
    """Conditional tables ``P(out | in)`` of one layer: ``(1 or n_positions, n_in, n_out)``.

    Parameters
    ----------
    n_in, n_out: numbers of joint input and output values (codes).
    n_positions: positions in the layer (coarse sites or plaquettes).
    shared: one table for all positions (translation invariance) instead of one per position.
    logits: initial logits ``(1 or n_positions, n_in, n_out)``, see :func:`init_logits`.
    """

    def __init__(self, n_in: int, n_out: int, n_positions: int, shared: bool, logits: Tensor) -> None:
        super().__init__()
        self.n_in, self.n_out, self.n_positions, self.shared = n_in, n_out, n_positions, shared
        expected = (1 if shared else n_positions, n_in, n_out)
        if tuple(logits.shape) != expected:
            raise ValueError(f"logits must have shape {expected}, got {tuple(logits.shape)}")
        self.logits = nn.Parameter(logits.clone())

    def probs(self) -> Tensor:
        """``(1 or n_positions, n_in, n_out)`` tables; rows sum to one."""
        return torch.softmax(self.logits, dim=-1)

    def log_probs(self) -> Tensor:
        """``log`` of :meth:`probs`, computed stably."""
        return torch.log_softmax(self.logits, dim=-1)

    def extra_repr(self) -> str:
        return f"n_in={self.n_in}, n_out={self.n_out}, positions={self.n_positions}, shared={self.shared}"
