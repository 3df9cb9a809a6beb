"""Evaluating a CORA on data: window negative log-likelihood, correlation functions, full NLL.

* **Window NLL per site** (the learning objective, Beny 2013 Sec. 3): for every configuration,
  ``-(1 / (N w^d)) sum_t ln P_t(x_window(t))`` over all ``N`` window starts ``t``, with the exact
  window marginals ``P_t`` of :func:`deeprg.cora.marginals.window_marginals`. Its mean over
  held-out data is the cross-entropy of the data's window distributions relative to the model's,
  per site; for data drawn from a known distribution it is bounded below by the exact window
  entropy per site (:func:`chain_window_entropy` for the periodic Ising chain).
* **Correlation function** ``G(r) = < s_i s_{i + r e_mu} >`` averaged over sites, axes ``mu`` and
  configurations, ``r = 0 .. L/2``, with ``s = +1`` for index 0 and ``-1`` for index 1 (spins as
  they are; ``s = 1 - 2 p`` for 0/1 pixels). Computed on samples of the model and on the data,
  and exactly for data of the periodic Ising chain, ``(t^r + t^(L-r)) / (1 + t^L)``, ``t = tanh K``.
* **Full NLL** (tree variant only): ``-ln p(x)`` per configuration from :mod:`deeprg.cora.tree`.

Every mean carries a 1-sigma error bar (:func:`deeprg.mc.stats.estimate`, corrected for the
autocorrelation of the series in the order the configurations are stored).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch
from torch import Tensor

from deeprg.cora.marginals import window_marginals
from deeprg.cora.network import Cora
from deeprg.cora.tree import log_likelihood
from deeprg.mc.stats import Estimate, estimate
from deeprg.models.exact import chain_correlation, chain_window_distribution

__all__ = ["chain_window_entropy", "correlation_function", "evaluate", "full_nll", "window_codes", "window_nll"]


def window_codes(values: Tensor, w: int, base: int) -> Tensor:
    """Codes of the windows of width ``w`` at every start of configurations ``values`` (long
    ``(n, *shape)``): long ``(n, n_sites)``, starts in row-major order, window sites in row-major
    order of their offsets (first most significant), as in :func:`window_marginals`."""
    d = values.dim() - 1
    code = torch.zeros_like(values, dtype=torch.long)
    for offset in itertools.product(range(w), repeat=d):
        code = code * base + torch.roll(values.long(), shifts=[-o for o in offset], dims=list(range(1, d + 1)))
    return code.reshape(values.shape[0], -1)


def _per_config_window_nll(log_p: Tensor, codes: Tensor, w: int, d: int) -> Tensor:
    sites = torch.arange(codes.shape[1], device=codes.device)
    return -log_p[sites[None, :], codes].mean(1) / w**d


@torch.no_grad()
def window_nll(net: Cora, x: Tensor, w: int) -> Estimate:
    """Mean window NLL per site of the configurations ``x`` (long ``(n, *shape)`` indices)."""
    log_p = window_marginals(net, w).clamp_min(torch.finfo(net.top_logits.dtype).tiny).log()
    values = _per_config_window_nll(log_p, window_codes(x, w, net.visible), w, net.d)
    return estimate(values.double().cpu().numpy())


@torch.no_grad()
def full_nll(net: Cora, x: Tensor) -> Estimate:
    """Mean of ``-ln p(x)`` per configuration (tree variant only)."""
    return estimate((-log_likelihood(net, x)).double().cpu().numpy())


def correlation_function(x: Tensor) -> list[Estimate]:
    """``G(r)``, ``r = 0 .. L // 2``, of configurations ``x`` (long ``(n, *shape)`` indices)."""
    s = (1 - 2 * x).double()
    d, L = s.dim() - 1, s.shape[1]
    out = []
    for r in range(L // 2 + 1):
        g = sum((s * torch.roll(s, -r, dims=a + 1)).reshape(len(s), -1).mean(1) for a in range(d)) / d
        out.append(estimate(g.cpu().numpy()))
    return out


def chain_window_entropy(N: int, K: float, w: int) -> float:
    """Exact entropy (nats) of ``w`` consecutive spins of the periodic Ising chain."""
    p = chain_window_distribution(N, K, w).reshape(-1)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def _value(e: Estimate) -> dict:
    return {"mean": e.mean, "error": e.error}


@torch.no_grad()
def evaluate(
    net: Cora,
    x: Tensor,
    w: int,
    n_samples: int = 10000,
    generator: torch.Generator | None = None,
    metadata: dict | None = None,
) -> dict:
    """Summary of a model against data ``x`` (long ``(n, *shape)`` indices): ``window``,
    ``window_nll_per_site``, ``correlation`` (list over ``r`` of ``{"r", "model", "model_error",
    "data", "data_error"}``, model from ``n_samples`` fresh samples), and ``full_nll`` /
    ``full_nll_per_site`` for the tree variant. With ``metadata`` of a 1D Ising dataset (keys
    ``model``, ``d``, ``K``, ``lattice_shape``), also ``exact_window_entropy_per_site`` and
    ``exact_correlation``: ``[r, G(r)]`` pairs, ``r = 0 .. L // 2``, of the periodic chain
    (:func:`deeprg.models.exact.chain_correlation`), ready for
    :func:`deeprg.plots.correlation_model_vs_data`'s ``exact``."""
    if tuple(x.shape[1:]) != net.shape:
        raise ValueError(f"data lattice {tuple(x.shape[1:])} does not match the network's {net.shape}")
    summary: dict = {"window": w, "window_nll_per_site": _value(window_nll(net, x, w))}
    meta = metadata or {}
    if meta.get("model") == "ising" and meta.get("d") == 1:
        N = int(meta["lattice_shape"][0])
        summary["exact_window_entropy_per_site"] = chain_window_entropy(N, float(meta["K"]), w) / w
        r = np.arange(N // 2 + 1)
        exact = chain_correlation(N, float(meta["K"]), r)
        summary["exact_correlation"] = [[int(i), float(g)] for i, g in zip(r, exact)]
    samples = net.sample(n_samples, generator)
    model, data = correlation_function(samples), correlation_function(x)
    summary["correlation"] = [
        {"r": r, "model": m.mean, "model_error": m.error, "data": g.mean, "data_error": g.error}
        for r, (m, g) in enumerate(zip(model, data))
    ]
    if all(net.disentangler(j) is None for j in range(1, net.n_levels + 1)):  # a tree
        nll = full_nll(net, x)
        summary["full_nll"] = _value(nll)
        n_sites = math.prod(net.shape)
        summary["full_nll_per_site"] = {"mean": nll.mean / n_sites, "error": nll.error / n_sites}
    summary["n_data"], summary["n_samples"] = int(x.shape[0]), int(n_samples)
    return summary
