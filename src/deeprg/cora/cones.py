"""Causal cones of CORA layers: which maps a window of sites depends on, and in which order to
contract them (pure geometry, numpy; no parameters).

Take a window of ``w`` consecutive sites (``w x w`` in 2D) of ``Gamma_{j-1}`` starting at ``s``.
Along each axis, in unwrapped integer coordinates:

* with disentanglers, fine site ``i`` is an output of the plaquette ``P = floor((i - 1) / 2)``
  (sites ``2P+1, 2P+2``), so the window needs plaquettes ``floor((s-1)/2) .. floor((s+w-2)/2)``,
  their intermediate inputs ``2 P_lo + 1 .. 2 P_hi + 2`` and the coarse sites ``P_lo .. P_hi + 1``;
* without (tree), the window needs the coarse sites ``floor(s/2) .. floor((s+w-1)/2)``.

So a window of width ``w`` needs a coarse window of width at most ``w // 2 + 2`` (MERA) or
``w // 2 + 1`` (tree): widths 1, 2, 3, 4 lead to 2, 3, 3, 4 and the cone of any window of up to 4
sites stays 3 or 4 sites wide at every scale (Fig. 3 of the paper), so a window marginal costs
``O(log N)``. Sites are reduced modulo the extent of their level, which merges repeated sites where
a cone wraps around a small periodic level.

All windows of one level are computed together, grouped by the parity of their start along each
axis (``2^d`` classes): within a class the windows are translates of one another by two fine
(one coarse) sites, so one :class:`ClassPlan` with per-window table positions serves them all.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

#: Cones of up to this many coarse sites get an exact search for the best contraction order.
_EXACT_SEARCH = 10

__all__ = ["ClassPlan", "Op", "class_plans", "coarse_width", "product_windows_index", "rotation_permutations"]


@dataclass(frozen=True)
class Op:
    """One map application of a plan.

    ``kind``: ``'W'`` (coarse-graining) or ``'U'`` (disentangler); ``inputs``: labels consumed
    (1 coarse site, or the 2^d intermediate sites of a plaquette); ``outputs``: labels produced;
    ``keep``: which of the map's ``2^d`` output slots they are (the others are summed over:
    free, since the map is a normalized conditional); ``positions``: ``(n_windows,)`` table
    position (coarse site or plaquette index) for each window of the class.
    """

    kind: str
    inputs: tuple
    outputs: tuple
    keep: tuple[int, ...]
    positions: np.ndarray


@dataclass(frozen=True)
class ClassPlan:
    """How to obtain the windows of one parity class at level ``j-1`` from windows of width
    ``source_width`` at level ``j``.

    ``fine_starts``: ``(n_windows,)`` row-major start site of each output window;
    ``source_starts``: ``(n_windows,)`` start of the source window each one is computed from;
    ``source_keep``: the source-window axes (row-major offsets) the cone needs, in order, named
    ``initial_labels``; ``ops``: maps in contraction order; ``output_labels``: the window's sites
    in row-major order; ``peak``: largest number of entries per window during the contraction.
    """

    fine_starts: np.ndarray
    source_starts: np.ndarray
    source_keep: tuple[int, ...]
    initial_labels: tuple
    ops: tuple[Op, ...]
    output_labels: tuple
    peak: int


def _axis_ranges(s: int, w: int, disentangle: bool) -> tuple[range, range | None, range]:
    """Unwrapped (coarse sites, plaquettes or None, intermediate sites) of a window ``[s, s+w)``."""
    if disentangle:
        p_lo, p_hi = (s - 1) // 2, (s + w - 2) // 2
        return range(p_lo, p_hi + 2), range(p_lo, p_hi + 1), range(2 * p_lo + 1, 2 * p_hi + 3)
    return range(s // 2, (s + w - 1) // 2 + 1), None, range(s, s + w)


def coarse_width(w: int, disentangle: bool, coarse_extent: int) -> int:
    """Width of the coarse windows that windows of width ``w`` need, capped at the coarse extent
    (where the cone covers the whole coarse level)."""
    need = max(len(_axis_ranges(s, w, disentangle)[0]) for s in (0, 1))
    return min(need, coarse_extent)


def _box(ranges, extent: int) -> list[tuple[int, ...]]:
    """Distinct sites (coordinates mod ``extent``) of the box ``ranges[0] x ranges[1] ...``, in
    row-major order of first appearance."""
    seen: dict[tuple[int, ...], None] = {}
    for c in itertools.product(*ranges):
        seen.setdefault(tuple(x % extent for x in c), None)
    return list(seen)


def _ravel(coords, extent: int) -> np.ndarray:
    """Row-major index of integer coordinates ``(..., d)`` (taken mod ``extent``)."""
    coords = np.asarray(coords) % extent
    d = coords.shape[-1]
    return (coords * (extent ** np.arange(d - 1, -1, -1))).sum(-1)


def _schedule(coarse, children, plaquettes, dims):
    """Contraction order minimizing the largest tensor (then the summed sizes): coarse-graining
    maps in the best order (exact search over subsets for up to :data:`_EXACT_SEARCH` coarse
    sites, greedy beyond), each disentangler as soon as its inputs are present. Returns (ops as
    ``(kind, key)``, peak number of entries per window)."""
    n = len(coarse)
    lc, lf = math.log2(dims["c"]), math.log2(dims["a"])
    parent = {a: i for i, c in enumerate(coarse) for a in children[c]}
    keys = list(plaquettes)
    masks = [sum(1 << parent[a] for a in plaquettes[p][0]) for p in keys]
    consumer = {a: q for q, p in enumerate(keys) for a in plaquettes[p][0]}

    def live(S: int) -> float:  # log2 size after the maps of S and every ready disentangler
        ready = {q for q, m in enumerate(masks) if m & S == m}
        total = (n - bin(S).count("1")) * lc + sum(len(plaquettes[keys[q]][1]) for q in ready) * lf
        for i, c in enumerate(coarse):
            if S >> i & 1:
                total += sum(1 for a in children[c] if consumer.get(a) not in ready) * lf
        return total

    def step(S: int, i: int) -> float:  # log2 size right after applying W_i to state S
        return live(S) - lc + len(children[coarse[i]]) * lf

    if n <= _EXACT_SEARCH:
        best = {0: (live(0), 2.0 ** live(0), None, None)}
        for S in sorted(range(1 << n), key=lambda s: bin(s).count("1")):
            if S not in best:
                continue
            peak, total = best[S][:2]
            for i in range(n):
                if not S >> i & 1:
                    T, size = S | 1 << i, step(S, i)
                    cand = (max(peak, size), total + 2.0**size, S, i)
                    if T not in best or cand[:2] < best[T][:2]:
                        best[T] = cand
        w_order, S = [], (1 << n) - 1
        while S:
            w_order.append(best[S][3])
            S = best[S][2]
        w_order.reverse()
    else:
        w_order, S = [], 0
        while len(w_order) < n:
            i = min((i for i in range(n) if not S >> i & 1), key=lambda i: (step(S, i), live(S | 1 << i)))
            w_order.append(i)
            S |= 1 << i
    order, done, S, peak = [], set(), 0, live(0)
    for i in w_order:
        peak = max(peak, step(S, i))
        S |= 1 << i
        order.append(("W", coarse[i]))
        for q, m in enumerate(masks):
            if q not in done and m & S == m:
                done.add(q)
                order.append(("U", keys[q]))
    return order, round(2.0**peak)


def class_plans(
    d: int,
    fine_extent: int,
    w: int,
    disentangle: bool,
    source_width: int,
    d_coarse: int,
    d_fine: int,
    single: bool = False,
) -> list[ClassPlan]:
    """Plans for all windows of width ``w`` of a level of extent ``fine_extent`` (one per parity
    class), or, with ``single``, for the one window starting at the origin.

    The source holds, for every start on the coarse level, the joint distribution of a window of
    width ``source_width`` (at least :func:`coarse_width`; equal to the coarse extent when it
    holds whole rotated copies of the coarse level).
    """
    M, Mc = fine_extent, fine_extent // 2
    offsets = list(itertools.product((0, 1), repeat=d))  # slot order of blocks and plaquettes
    dims = {"c": d_coarse, "a": d_fine, "x": d_fine}
    shifts = np.zeros((1, d), dtype=np.int64) if single else np.stack(
        np.unravel_index(np.arange(Mc**d), (Mc,) * d), axis=-1)
    plans = []
    for parity in ([(0,) * d] if single else list(itertools.product((0, 1), repeat=d))):
        ranges = [_axis_ranges(p, w, disentangle) for p in parity]
        window = _box([range(p, p + w) for p in parity], M)
        coarse = _box([r[0] for r in ranges], Mc)
        c_lo = np.array([r[0].start for r in ranges])
        if disentangle:
            plaq_list = _box([r[1] for r in ranges], Mc)
            inter = set(_box([r[2] for r in ranges], M))
        else:
            plaq_list, inter = [], set(window)
        child_kind = "a" if disentangle else "x"
        children, keeps = {}, {}
        for c in coarse:
            slots = [t for t, o in enumerate(offsets)
                     if tuple((2 * ci + oi) % M for ci, oi in zip(c, o)) in inter]
            keeps[c] = tuple(slots)
            children[c] = [(child_kind, tuple((2 * ci + oi) % M for ci, oi in zip(c, offsets[t]))) for t in slots]
        plaquettes, plaq_keep = {}, {}
        in_window = set(window)
        for p in plaq_list:
            sites = [tuple((2 * pi + 1 + oi) % M for pi, oi in zip(p, o)) for o in offsets]
            slots = tuple(t for t, s in enumerate(sites) if s in in_window)
            plaquettes[p] = ([("a", s) for s in sites], [("x", sites[t]) for t in slots])
            plaq_keep[p] = slots
        src_offset = {c: tuple((ci - lo) % Mc for ci, lo in zip(c, c_lo)) for c in coarse}
        if any(max(o) >= source_width for o in src_offset.values()):
            raise ValueError(f"source windows of width {source_width} do not cover the cone of width-{w} windows")
        coarse_sorted = sorted(coarse, key=lambda c: _ravel(src_offset[c], source_width))
        initial = [("c", c) for c in coarse_sorted]
        order, peak = _schedule(coarse_sorted, children, plaquettes, dims)
        ops = []
        for kind, key in order:
            pos = _ravel(np.asarray(key)[None, :] + shifts, Mc)
            if kind == "W":
                ops.append(Op("W", (("c", key),), tuple(children[key]), keeps[key], pos))
            else:
                ops.append(Op("U", tuple(plaquettes[key][0]), tuple(plaquettes[key][1]), plaq_keep[key], pos))
        plans.append(ClassPlan(
            fine_starts=_ravel(np.asarray(parity)[None, :] + 2 * shifts, M),
            source_starts=_ravel(c_lo[None, :] + shifts, Mc),
            source_keep=tuple(int(_ravel(src_offset[c], source_width)) for c in coarse_sorted),
            initial_labels=tuple(initial),
            ops=tuple(ops),
            output_labels=tuple(("x", s) for s in window),
            peak=int(peak),
        ))
    return plans


def rotation_permutations(d: int, extent: int) -> np.ndarray:
    """``(extent^d, extent^d)``: row ``t`` lists, for each offset ``o`` of a window starting at
    site ``t`` and covering the whole periodic level, the site ``t + o`` (row-major indices)."""
    coords = np.stack(np.unravel_index(np.arange(extent**d), (extent,) * d), axis=-1)
    return _ravel(coords[:, None, :] + coords[None, :, :], extent)


def product_windows_index(d: int, extent: int, width: int) -> np.ndarray:
    """``(extent^d, width^d)``: the sites of the window of width ``width`` at every start."""
    starts = np.stack(np.unravel_index(np.arange(extent**d), (extent,) * d), axis=-1)
    offs = np.stack(np.unravel_index(np.arange(width**d), (width,) * d), axis=-1)
    return _ravel(starts[:, None, :] + offs[None, :, :], extent)
