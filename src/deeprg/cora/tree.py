"""Exact full likelihood of the tree variant (no disentanglers), missing values marginalized, and
exact inpainting.

Without disentanglers the network is a tree: coarse site ``J`` of ``Gamma_j`` generates its block
``B(J)`` of ``Gamma_{j-1}`` through ``W_J(a | c)`` (``a`` the joint value of the ``2^d`` children).
The upward (belief-propagation) pass computes, in log space, the log-likelihood of the evidence
below every site given its value::

    lambda_0(i, v) = 0 if site i is missing or x_i = v, else -inf
    lambda_j(J, c) = log sum_a W_J(a | c) exp( sum_t lambda_{j-1}(B(J)_t, a_t) )
    log p(x_observed) = log sum_c e(c) exp( lambda_n(top, c) ),

so missing sites are summed over exactly. :func:`inpaint` then samples the missing values from
their exact posterior, top-down: ``c ~ e(c) exp(lambda_n(c))``, then each block's children
``a ~ W_J(a | c) exp(sum_t lambda_{j-1}(B(J)_t, a_t))``.

Configurations are long tensors ``(batch, *shape)`` of visible indices (0 .. visible-1);
``observed`` is a boolean tensor of the same shape (``None``: all observed).
"""

from __future__ import annotations

import torch
from torch import Tensor

from deeprg.cora.maps import categorical, decode
from deeprg.cora.network import Cora

__all__ = ["inpaint", "log_likelihood", "upward"]


def _check(net: Cora, x: Tensor, observed: Tensor | None) -> tuple[Tensor, Tensor]:
    if any(net.disentangler(j) is not None for j in range(1, net.n_levels + 1)):
        raise ValueError("the exact full likelihood needs the tree variant (a network without disentanglers)")
    if x.dim() != net.d + 1 or tuple(x.shape[1:]) != net.shape:
        raise ValueError(f"x must have shape (batch, {', '.join(map(str, net.shape))}), got {tuple(x.shape)}")
    if observed is None:
        observed = torch.ones_like(x, dtype=torch.bool)
    elif observed.shape != x.shape or observed.dtype != torch.bool:
        raise ValueError(f"observed must be a bool tensor of shape {tuple(x.shape)}")
    x = x.long()
    if bool(((x < 0) | (x >= net.visible))[observed].any()):
        raise ValueError(f"observed values must be indices 0..{net.visible - 1}")
    return x, observed


def _children_evidence(lam: Tensor, blocks: Tensor) -> Tensor:
    """``(batch, n_coarse, D^k)``: summed log-evidence of every joint value of each block."""
    acc = lam[:, blocks[:, 0]]
    for t in range(1, blocks.shape[1]):
        acc = (acc[..., :, None] + lam[:, blocks[:, t], None, :]).flatten(-2)
    return acc


def upward(net: Cora, x: Tensor, observed: Tensor | None = None) -> list[Tensor]:
    """Log-messages ``lambda_j``, ``j = 0 .. n``, each ``(batch, n_sites(j), dim(j))``."""
    x, observed = _check(net, x, observed)
    dtype = net.top_logits.dtype
    flat_x, flat_obs = x.reshape(x.shape[0], -1), observed.reshape(x.shape[0], -1)
    values = torch.arange(net.visible, device=x.device)
    match = (flat_x[..., None] == values) | ~flat_obs[..., None]
    lam = torch.where(match, 0.0, -torch.inf).to(dtype)
    messages = [lam]
    for j in range(1, net.n_levels + 1):
        blocks = torch.as_tensor(net.geometry[j - 1].blocks, device=x.device)
        evidence = _children_evidence(lam, blocks)  # (batch, n_coarse, K)
        log_w = net.isometry(j).log_probs()  # (1 or n_coarse, D_j, K)
        lam = torch.logsumexp(log_w[None] + evidence[:, :, None, :], dim=-1)
        messages.append(lam)
    return messages


def log_likelihood(net: Cora, x: Tensor, observed: Tensor | None = None, chunk: int = 512) -> Tensor:
    """``log p(x_observed)`` of each configuration, ``(batch,)``, exact (missing sites summed
    over); differentiable in the network's parameters."""
    out = []
    for i in range(0, x.shape[0], chunk):
        obs = None if observed is None else observed[i : i + chunk]
        lam = upward(net, x[i : i + chunk], obs)[-1][:, 0]  # (chunk, chi)
        out.append(torch.logsumexp(torch.log_softmax(net.top_logits, 0) + lam, dim=-1))
    return torch.cat(out)


@torch.no_grad()
def inpaint(net: Cora, x: Tensor, observed: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """``x`` with its missing sites drawn from their exact posterior given the observed ones
    (one joint draw per configuration); observed sites are returned unchanged."""
    messages = upward(net, x, observed)
    k = 2**net.d
    top = torch.softmax(torch.log_softmax(net.top_logits, 0) + messages[-1][:, 0], dim=-1)
    values = categorical(top, generator)[:, None]  # (batch, 1)
    for j in range(net.n_levels, 0, -1):
        blocks = torch.as_tensor(net.geometry[j - 1].blocks, device=x.device)
        w = net.isometry(j)
        log_w = w.log_probs()
        sites = torch.arange(len(blocks), device=x.device)
        rows = log_w[0, values] if w.shared else log_w[sites[None, :], values]  # (batch, n_coarse, K)
        post = torch.softmax(rows + _children_evidence(messages[j - 1], blocks), dim=-1)
        fine = values.new_zeros(x.shape[0], net.n_sites(j - 1))
        fine[:, blocks.reshape(-1)] = decode(categorical(post, generator), net.dim(j - 1), k).reshape(x.shape[0], -1)
        values = fine
    return values.reshape(x.shape)
