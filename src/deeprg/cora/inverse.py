"""Coarse-graining data by the Bayesian inverse of one layer (Beny 2013, Sec. 3.1, method 1).

Given configurations ``x`` of ``Gamma_{j-1}`` and a product prior ``e_j`` on ``Gamma_j``, the Bayesian
inverse of ``pi_j`` is the posterior

    P(c | x)  proportional to  sum_a prod_J e_j(c_J) W_J(a_B(J) | c_J) prod_P U_P(x_P | a_P)

over coarse configurations ``c`` (``a``: the intermediate variables between the coarse-graining
maps ``W`` and the disentanglers ``U``). :func:`coarse_grain` draws one ``c`` per configuration:

* without disentanglers (tree layers) the posterior factorizes over blocks,
  ``P(c_J | x) ~ e_j(c_J) W_J(x_B(J) | c_J)``, and is sampled exactly;
* with disentanglers it is sampled by block Gibbs sweeps: a coarse site and its ``2^d``
  intermediate children are redrawn jointly from their conditional
  ``e_j(c_J) W_J(a | c_J) prod_t U_P(t)(x_P(t) | a_P(t))``, where the children of one block sit in
  ``2^d`` different plaquettes. Blocks whose coordinates have the same parities share no plaquette,
  so the ``2^d`` parity classes are updated in turn, each in parallel. The chain starts from
  ``a = x`` (disentanglers near the identity) and runs ``sweeps`` sweeps; the ``c`` of the
  last sweep is returned.

Values are long index tensors ``(batch, n_sites)`` (row-major sites of their level).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from deeprg.cora.maps import categorical, decode, encode
from deeprg.cora.network import Cora

__all__ = ["coarse_grain"]


def _rows(table: Tensor, shared: bool, sites: Tensor, index: Tensor) -> Tensor:
    """``table[position, :, index]`` for every (batch, site): ``(batch, n_sites, n_in)``."""
    if shared:
        return table[0][:, index].permute(1, 2, 0)
    return table[sites[None, :], :, index]


@torch.no_grad()
def coarse_grain(
    net: Cora,
    layer: int,
    fine: Tensor,
    log_prior: Tensor | None = None,
    sweeps: int = 20,
    generator: torch.Generator | None = None,
    chunk: int = 2048,
) -> Tensor:
    """Configurations of ``Gamma_layer`` drawn from the Bayesian inverse of ``pi_layer`` given
    ``fine`` (long ``(batch, n_sites(layer-1))``), one per row.

    ``log_prior``: log one-site prior, ``(chi,)`` or ``(n_sites(layer), chi)``; ``None`` is uniform.
    ``sweeps``: block Gibbs sweeps for layers with disentanglers (>= 1).
    """
    if not 1 <= layer <= net.n_levels:
        raise ValueError(f"layer must lie in 1..{net.n_levels}, got {layer}")
    if fine.dim() != 2 or fine.shape[1] != net.n_sites(layer - 1):
        raise ValueError(f"fine must have shape (batch, {net.n_sites(layer - 1)}), got {tuple(fine.shape)}")
    if sweeps < 1:
        raise ValueError(f"sweeps must be >= 1, got {sweeps}")
    n_coarse, chi = net.n_sites(layer), net.dim(layer)
    if log_prior is None:
        log_prior = net.top_logits.new_zeros(chi)
    prior = log_prior.expand(n_coarse, chi)
    parts = [_coarse_grain(net, layer, fine[i : i + chunk].long(), prior, sweeps, generator)
             for i in range(0, fine.shape[0], chunk)]
    return torch.cat(parts)


def _coarse_grain(net: Cora, layer: int, fine: Tensor, prior: Tensor, sweeps: int, generator) -> Tensor:
    geo, k = net.geometry[layer - 1], 2**net.d
    d_fine, device = net.dim(layer - 1), fine.device
    blocks = torch.as_tensor(geo.blocks, device=device)
    sites = torch.arange(len(blocks), device=device)
    w = net.isometry(layer)
    log_w = w.log_probs()  # (1 or n_coarse, chi, d_fine^k)
    u = net.disentangler(layer)
    if u is None:
        logits = prior + _rows(log_w, w.shared, sites, encode(fine[:, blocks], d_fine))
        return categorical(torch.softmax(logits, -1), generator)
    plaq = torch.as_tensor(geo.plaquettes, device=device)
    log_u = _rows(u.log_probs(), u.shared, sites, encode(fine[:, plaq], d_fine))  # (batch, n_plaq, K_in)
    plaq_of = np.empty(net.n_sites(layer - 1), dtype=np.int64)
    slot_of = np.empty_like(plaq_of)
    plaq_of[geo.plaquettes.reshape(-1)] = np.repeat(np.arange(len(geo.plaquettes)), k)
    slot_of[geo.plaquettes.reshape(-1)] = np.tile(np.arange(k), len(geo.plaquettes))
    coords = np.stack(np.unravel_index(np.arange(len(blocks)), (geo.coarse_extent,) * net.d), axis=-1)
    color = (coords % 2) @ (2 ** np.arange(net.d))
    values = torch.arange(d_fine, device=device)
    a, c = fine.clone(), fine.new_zeros(fine.shape[0], len(blocks))
    log_w_all = log_w.expand(len(blocks), *log_w.shape[1:])
    classes = []  # per colour: its coarse sites J, their children, plaquettes and code powers, on the device once
    for col in range(2**net.d):
        J = np.flatnonzero(color == col)
        children = geo.blocks[J]  # (nJ, k)
        classes.append((torch.as_tensor(J, device=device), torch.as_tensor(children, device=device),
                        torch.as_tensor(plaq_of[children], device=device),
                        d_fine ** (k - 1 - torch.as_tensor(slot_of[children], device=device))))
    for _ in range(sweeps):
        for J, children, pq, power in classes:
            in_codes = encode(a[:, plaq], d_fine)[:, pq]  # (batch, nJ, k)
            base = in_codes - a[:, children] * power
            cand = base[..., None] + values * power[..., None]  # (batch, nJ, k, d_fine)
            g = torch.gather(log_u[:, pq], -1, cand)  # log U of every candidate child value
            evidence = g[..., 0, :]
            for t in range(1, k):
                evidence = (evidence[..., :, None] + g[..., t, None, :]).flatten(-2)
            logits = prior[J][None, :, :, None] + log_w_all[J][None] + evidence[:, :, None, :]
            draw = categorical(torch.softmax(logits.flatten(-2), -1), generator)  # (batch, nJ)
            c[:, J] = draw // d_fine**k
            a[:, children] = decode(draw % d_fine**k, d_fine, k)
    return c
