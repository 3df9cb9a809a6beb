"""Exact window marginals of a CORA through causal cones (Beny 2013, Sec. 3 and Fig. 3).

``window_marginals(net, w)`` returns, for every start site of the lattice, the joint distribution
of the ``w`` consecutive sites (``w x w`` in 2D) from that start, without sampling: the marginal
of the cone window of each level is propagated one layer down at a time, from the top state (or a
given product prior) to the requested level. At each layer only the maps in the window's causal
past are applied (:mod:`deeprg.cora.cones`); outputs outside the cone are summed over for free,
since every map is a normalized conditional. The cone of a window of up to 4 sites stays at most
4 sites wide at every scale, so one window costs ``O(log N)`` and all ``N`` windows ``O(N)``.

Where the cone covers a whole (small) level, the full joint distribution of that level is
computed instead, and windows are its rotations. Everything is plain torch arithmetic on
probabilities (normalized at every step), so the result is differentiable in the map
parameters; use float64 for exactness checks.

Conventions: a window's joint is a row of length ``D^(w^d)`` indexed by the code of the window's
values in row-major order of the window offsets (first site most significant; see
:func:`deeprg.cora.maps.encode`); rows are ordered by the row-major index of the window's start.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from torch import Tensor

from deeprg.cora.cones import (
    ClassPlan,
    class_plans,
    coarse_width,
    product_windows_index,
    rotation_permutations,
)
from deeprg.cora.network import Cora

__all__ = [
    "MAX_ENTRIES",
    "check_window",
    "cone_entries",
    "cone_widths",
    "layer_windows",
    "product_windows",
    "window_marginals",
]

#: Largest tensor (entries, all windows of a class together) a cone contraction may create.
MAX_ENTRIES = 2**26


def _disentangles(net: Cora, layer: int) -> bool:
    return net.disentangler(layer) is not None


def cone_widths(net: Cora, w: int, level: int = 0, top: int | None = None) -> dict[int, int]:
    """Window width needed at each level ``level .. top`` (default: the top) for windows of
    width ``w`` at ``level``; a width equal to the level's extent means the whole level."""
    top = net.n_levels if top is None else top
    widths = {level: w}
    for j in range(level + 1, top + 1):
        widths[j] = coarse_width(widths[j - 1], _disentangles(net, j), net.extent(j))
    return widths


@functools.lru_cache(maxsize=256)
def _geometry_plans(d: int, fine_extent: int, w: int, disentangle: bool, source_width: int, d_coarse: int,
                    d_fine: int) -> tuple[ClassPlan, ...]:
    """:func:`deeprg.cora.cones.class_plans`, cached: plans are pure geometry, so one entry serves
    every network (and every training step) with this layer geometry. The plans are shared:
    callers only read them."""
    return tuple(class_plans(d, fine_extent, w, disentangle, source_width, d_coarse, d_fine,
                             single=(w == fine_extent)))


def _plans(net: Cora, layer: int, w: int, source_width: int) -> tuple[ClassPlan, ...]:
    """Contraction plans of ``pi_layer`` for windows of width ``w`` from source windows of width
    ``source_width`` (one per parity class; see :func:`deeprg.cora.cones.class_plans`)."""
    return _geometry_plans(net.d, net.extent(layer - 1), w, _disentangles(net, layer), source_width,
                           net.dim(layer), net.dim(layer - 1))


def cone_entries(net: Cora, w: int, level: int = 0, top: int | None = None) -> int:
    """Largest tensor (entries) the windows of width ``w`` at ``level`` need: all windows of one
    parity class together, at the worst layer. Geometry only: no parameters are touched."""
    widths = cone_widths(net, w, level, top)
    return max((plan.peak * len(plan.fine_starts) for j in list(widths)[1:]
                for plan in _plans(net, j, widths[j - 1], widths[j])), default=1)


def check_window(net: Cora, w: int, level: int = 0, top: int | None = None) -> None:
    """``ValueError`` naming the window and chi if the cones of ``w`` exceed :data:`MAX_ENTRIES`."""
    entries = cone_entries(net, w, level, top)
    if entries > MAX_ENTRIES:
        raise ValueError(
            f"window {w} with chi = {net.chi} on a {'x'.join(map(str, net.shape))} lattice needs cone tensors of "
            f"{entries:.3g} entries (limit {MAX_ENTRIES:.3g}); use a smaller window or chi")


def _kept(table: Tensor, dim: int, k: int, keep: tuple[int, ...]) -> Tensor:
    """``table (..., n_in, dim^k)`` summed over the output slots not in ``keep``."""
    if len(keep) == k:
        return table
    t = table.reshape(table.shape[:-1] + (dim,) * k)
    base = table.dim() - 1
    drop = [base + s for s in range(k) if s not in keep]
    return t.sum(dim=drop).reshape(table.shape[:-1] + (dim ** len(keep),))


def _apply(T: Tensor, labels: list, inputs: tuple, table: Tensor, outputs: tuple, out_dim: int):
    """Apply the conditional ``table (1 or B, n_in, n_out)`` to the axes ``inputs`` of the joint
    ``T (B, ...)`` whose axes are named ``labels``; outputs become new last axes."""
    idx = [labels.index(lab) for lab in inputs]
    rest = [i for i in range(len(labels)) if i not in idx]
    T = T.permute(0, *[i + 1 for i in rest], *[i + 1 for i in idx])
    rest_shape = T.shape[1 : 1 + len(rest)]
    T = T.reshape(T.shape[0], math.prod(rest_shape), -1) @ table
    T = T.reshape((T.shape[0], *rest_shape) + (out_dim,) * len(outputs))
    return T, [labels[i] for i in rest] + list(outputs)


#: (id of an owner, device) -> (the owner, a long tensor on the device); see :func:`_on_device`.
_ON_DEVICE: dict = {}


def _on_device(owner, device: torch.device, build=None) -> Tensor:
    """The index array ``build(owner)`` (``owner`` itself without ``build``) of the cached plans
    as a long tensor on ``device``, made once per owner and device: the plans are cached
    geometry, so a GPU gets each index once, not at every evaluation of the marginals. The entry
    holds ``owner``, so its id stays unique while the entry lives."""
    key = (id(owner), device)
    hit = _ON_DEVICE.get(key)
    if hit is None or hit[0] is not owner:
        index = owner if build is None else build(owner)
        hit = _ON_DEVICE[key] = (owner, torch.as_tensor(index, dtype=torch.long, device=device))
    return hit[1]


def _run_plan(net: Cora, layer: int, plan: ClassPlan, source: Tensor, source_width: int, tables: dict) -> Tensor:
    d_coarse, d_fine, k = net.dim(layer), net.dim(layer - 1), 2**net.d
    device = source.device
    B = len(plan.source_starts)
    T = source[_on_device(plan.source_starts, device)]
    n_axes = source_width**net.d
    T = T.reshape((B,) + (d_coarse,) * n_axes)
    drop = [a + 1 for a in range(n_axes) if a not in plan.source_keep]
    if drop:
        T = T.sum(dim=drop)
    labels = list(plan.initial_labels)
    for op in plan.ops:
        key = (op.kind, op.keep)
        if key not in tables:
            probs = (net.isometry(layer) if op.kind == "W" else net.disentangler(layer)).probs()
            tables[key] = _kept(probs, d_fine, k, op.keep)
        table = tables[key]
        if table.shape[0] > 1:
            table = table[_on_device(op.positions, device)]
        T, labels = _apply(T, labels, op.inputs, table, op.outputs, d_fine)
    perm = [labels.index(lab) + 1 for lab in plan.output_labels]
    return T.permute(0, *perm).reshape(B, -1)


def layer_windows(net: Cora, layer: int, source: Tensor, source_width: int, w: int) -> Tensor:
    """Windows of width ``w`` of ``Gamma_{layer-1}`` from windows of width ``source_width`` of
    ``Gamma_layer`` (``source``: ``(n_sites(layer), dim(layer)^(source_width^d))``, e.g. from
    :func:`window_marginals` or :func:`product_windows`) through the maps of ``pi_layer``.
    Returns ``(n_sites(layer-1), dim(layer-1)^(w^d))``."""
    fine_extent = net.extent(layer - 1)
    if not 1 <= w <= fine_extent:
        raise ValueError(f"window w must lie in 1..{fine_extent} at level {layer - 1}, got {w}")
    plans = _plans(net, layer, w, source_width)
    tables: dict = {}
    parts = [_run_plan(net, layer, plan, source, source_width, tables) for plan in plans]
    if w == fine_extent:  # one full joint: every window is a rotation of it
        n_axes = fine_extent**net.d
        joint = parts[0].reshape((net.dim(layer - 1),) * n_axes)
        perms = rotation_permutations(net.d, fine_extent)
        return torch.stack([joint.permute(*p.tolist()).reshape(-1) for p in perms])
    order = _on_device(plans, source.device, lambda ps: np.argsort(np.concatenate([p.fine_starts for p in ps])))
    return torch.cat(parts)[order]


def product_windows(prior: Tensor, d: int, extent: int, width: int) -> Tensor:
    """Windows of width ``width`` (every start) of the product state with one-site marginals
    ``prior`` (``(dim,)`` for all sites, or ``(extent^d, dim)``) on a periodic level."""
    index = torch.as_tensor(product_windows_index(d, extent, width), device=prior.device)
    p = prior.expand(extent**d, prior.shape[-1]) if prior.dim() == 1 else prior
    sites = p[index]  # (n_starts, width^d, dim)
    joint = sites[:, 0]
    for m in range(1, sites.shape[1]):
        joint = (joint[:, :, None] * sites[:, m, None, :]).reshape(joint.shape[0], -1)
    return joint


def window_marginals(net: Cora, w: int, level: int = 0, prior: Tensor | None = None) -> Tensor:
    """Exact joint distributions of all windows of width ``w`` at ``level`` (0: visible).

    Returns ``(n_sites(level), dim(level)^(w^d))``: row ``t`` is the distribution of the window
    starting at site ``t`` (row-major), indexed by the code of its values. With ``prior``
    (``(chi,)`` or ``(n_sites(level+1), chi)``), the state of ``Gamma_{level+1}`` is taken to be
    the product of these one-site distributions (layers above ``level + 1`` and the top state are
    not used), as in the layer-by-layer learning of :mod:`deeprg.cora.learn`.
    """
    n = net.n_levels
    if not isinstance(level, int) or not 0 <= level <= n:
        raise ValueError(f"level must lie in 0..{n}, got {level!r}")
    extent = net.extent(level)
    if not isinstance(w, int) or not 1 <= w <= extent:
        raise ValueError(f"window w must be an integer in 1..{extent} (the lattice extent at level {level}), "
                         f"got {w!r}")
    if level == n:
        if prior is not None:
            raise ValueError("a prior replaces the levels above `level`; there are none above the top")
        return net.top_probs()[None]
    top = n if prior is None else level + 1
    if prior is not None and tuple(prior.shape) not in ((net.chi,), (net.n_sites(top), net.chi)):
        raise ValueError(f"prior must have shape ({net.chi},) or ({net.n_sites(top)}, {net.chi}), "
                         f"got {tuple(prior.shape)}")
    check_window(net, w, level, top)
    widths = cone_widths(net, w, level, top)
    if prior is None:
        source = net.top_probs()[None]
    else:
        source = product_windows(prior, net.d, net.extent(top), widths[top])
    for j in range(top, level, -1):
        source = layer_windows(net, j, source, widths[j], widths[j - 1])
    return source
