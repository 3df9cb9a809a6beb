"""CORA, the correlation renormalization ansatz (Beny 2013, Sec. 2): a stochastic MERA.

A probability distribution ``mu`` over a periodic ``L^d`` lattice ``Gamma_0`` of discrete variables
(d = 1, 2; ``L = 2^n``) is written as

    mu = pi_1 o pi_2 o ... o pi_n (e),

where ``Gamma_j`` is the lattice of ``(L / 2^j)^d`` sites, each standing for a block of ``2^d``
sites of ``Gamma_{j-1}``, ``e`` is the *top state* (a distribution of the single site of
``Gamma_n``) and the layer ``pi_j`` maps states of ``Gamma_j`` to states of ``Gamma_{j-1}``.
Variables of ``Gamma_0`` have dimension ``visible`` (2: spins, binary pixels); those of every
coarser level have dimension ``chi >= 2``. Each layer is made of local stochastic maps
(:mod:`deeprg.cora.maps`), applied in this order (generation runs downwards):

1. **coarse-graining maps** ``W``: site ``J`` of ``Gamma_j`` -> the ``2^d`` sites of its block
   (``Lattice.blocks`` of ``Gamma_{j-1}``: corner ``2 J``, children in row-major order of their
   offsets in ``{0, 1}^d``), producing *intermediate* variables of the fine dimension;
2. **disentanglers** ``U``: on every ``2^d`` plaquette of ``Gamma_{j-1}`` with corner ``2 P + 1``
   (one per coarse site ``P``; pairs ``(2P+1, 2P+2)`` in 1D), straddling the block boundaries,
   from the intermediate variables to the final ones. They are omitted where ``Gamma_{j-1}`` has
   extent 2 (shifted and unshifted plaquettes coincide) and in the *tree* variant.

So one coarse site influences its own block and, through the disentanglers, the nearest
neighbours of the block; a layer creates correlations at one scale only. One dimension,
``L = 8``, as drawn by :meth:`Cora.draw` (each visible site is 4 characters wide; ``W`` spans the
block it generates, ``U`` the pair of sites it acts on, the last pair wrapping around as
``[-U->`` at the right end and ``<--]`` at the left)::

    level 3                   o                  top state e (1 site, dim chi)
    layer 3 W [---------------W--------------]   coarse-graining: 1 site -> its block of 2
    level 2           o               o          hidden (2 sites, dim chi)
    layer 2 W [-------W------][-------W------]   coarse-graining: 1 site -> its block of 2
    layer 2 U <------][-------U------][---U-->   disentanglers across block boundaries
    level 1       o       o       o       o      hidden (4 sites, dim chi)
    layer 1 W [---W--][---W--][---W--][---W--]   coarse-graining: 1 site -> its block of 2
    layer 1 U <--][---U--][---U--][---U--][-U>   disentanglers across block boundaries
    level 0     o   o   o   o   o   o   o   o    visible (8 sites, dim 2)

(layer 3 has no disentangler: on 2 sites the shifted pair is the block itself).

Equivalently the model is a Bayesian network (Fig. 2 of the paper) with the visible variables at
the bottom, so :meth:`Cora.sample` draws exact independent configurations ancestrally. In 2D
every map acts on ``2 x 2`` blocks / plaquettes; along each axis the structure is the one drawn.

Maps are shared across the positions of a layer (``shared=True``, translation invariance by
``2^j`` sites at level ``j``) or not. Values are integer indices ``0 .. dim-1``; for spins index 0
is ``s = +1`` and index 1 is ``s = -1`` (as in :func:`deeprg.models.exact.chain_window_distribution`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from deeprg.cora.drawing import draw_chain
from deeprg.cora.maps import StochasticMap, categorical, copy_targets, decode, encode, init_logits
from deeprg.lattice import Lattice

__all__ = ["INITS", "Cora", "LayerGeometry", "check_lattice_shape"]

#: Initializations: near copy/identity maps (avoids the trap of random tables) or random.
INITS = ("copy", "random")


def check_lattice_shape(shape) -> tuple[int, ...]:
    """``shape`` as a tuple if it is ``(L,)`` or ``(L, L)`` with ``L`` a power of two >= 2; else
    ``ValueError`` naming the problem."""
    shape = tuple(int(s) for s in shape)
    if not 1 <= len(shape) <= 3 or any(s < 2 for s in shape):
        raise ValueError(f"CORA needs a 1D (L,) or 2D (L, L) lattice with L >= 2, got shape {shape}")
    return Lattice(shape).require("CORA", dims=(1, 2), square=True, power_of_two=True).shape


@dataclass(frozen=True)
class LayerGeometry:
    """Index tables of layer ``j`` between ``Gamma_j`` (coarse) and ``Gamma_{j-1}`` (fine).

    ``blocks``: ``(n_coarse, 2^d)`` fine sites of each coarse site's block (row-major offsets).
    ``plaquettes``: ``(n_coarse, 2^d)`` fine sites of the shifted plaquette with corner
    ``2 P + 1``, or ``None`` without disentanglers. Sites are row-major indices of their level.
    """

    layer: int
    fine_extent: int
    coarse_extent: int
    blocks: np.ndarray
    plaquettes: np.ndarray | None


def _geometry(d: int, layer: int, fine_extent: int, disentangle: bool) -> LayerGeometry:
    fine = Lattice((fine_extent,) * d)
    blocks = np.asarray(fine.blocks, dtype=np.int64)
    plaquettes = None
    if disentangle:
        coords = np.stack(np.unravel_index(blocks, fine.shape), axis=-1)  # (n_coarse, 2^d, d)
        plaquettes = np.ravel_multi_index(tuple(np.moveaxis((coords + 1) % fine_extent, -1, 0)), fine.shape)
    return LayerGeometry(layer, fine_extent, fine_extent // 2, blocks, plaquettes)


class Cora(nn.Module):
    """The network: layers ``pi_1 .. pi_n`` of stochastic maps and the top state ``e``.

    Parameters
    ----------
    shape: lattice shape ``(L,)`` or ``(L, L)``, ``L = 2^n >= 2``.
    chi: dimension of every hidden (coarse) variable, >= 2.
    tree: no disentanglers (the tree variant).
    shared: one table per layer and kind of map instead of one per position.
    visible: dimension of the visible variables (2).
    init: ``'copy'`` (coarse-graining maps near ``c -> (c mod D, ..., c mod D)``, disentanglers
        near the identity, top state near uniform) or ``'random'`` (standard normal logits).
    init_eps, init_noise: see :func:`deeprg.cora.maps.init_logits`.
    seed: seed of the initialization.
    dtype: floating type of the parameters (float64 for exact tests).
    """

    def __init__(
        self,
        shape,
        chi: int = 2,
        *,
        tree: bool = False,
        shared: bool = True,
        visible: int = 2,
        init: str = "copy",
        init_eps: float = 0.1,
        init_noise: float = 0.1,
        seed: int = 0,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        super().__init__()
        self.shape = check_lattice_shape(shape)
        if not isinstance(chi, int) or chi < 2:
            raise ValueError(f"chi must be an integer >= 2, got {chi!r}")
        if not isinstance(visible, int) or visible < 2:
            raise ValueError(f"visible must be an integer >= 2, got {visible!r}")
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        if not 0 < init_eps < 1:
            raise ValueError(f"init_eps must lie in (0, 1), got {init_eps!r}")
        if init_noise < 0:
            raise ValueError(f"init_noise must be >= 0, got {init_noise!r}")
        self.d, self.chi, self.visible = len(self.shape), chi, visible
        self.tree, self.shared = bool(tree), bool(shared)
        self.n_levels = self.shape[0].bit_length() - 1
        gen = torch.Generator().manual_seed(int(seed))
        k = 2**self.d
        self.geometry: list[LayerGeometry] = []
        isometries, disentanglers = [], []
        for j in range(1, self.n_levels + 1):
            fine_extent = self.extent(j - 1)
            geo = _geometry(self.d, j, fine_extent, disentangle=not self.tree and fine_extent > 2)
            self.geometry.append(geo)
            d_in, d_out, n_pos = self.dim(j), self.dim(j - 1), len(geo.blocks)
            n_tables = 1 if shared else n_pos
            target = copy_targets(d_in, d_out, k) if init == "copy" else None
            logits = init_logits(n_tables, d_in, d_out**k, target, init_eps, init_noise, gen, dtype)
            isometries.append(StochasticMap(d_in, d_out**k, n_pos, shared, logits))
            if geo.plaquettes is not None:
                target = torch.arange(d_out**k) if init == "copy" else None
                logits = init_logits(n_tables, d_out**k, d_out**k, target, init_eps, init_noise, gen, dtype)
                disentanglers.append(StochasticMap(d_out**k, d_out**k, n_pos, shared, logits))
            else:
                disentanglers.append(None)
        self.isometries = nn.ModuleList(isometries)
        self._disentanglers = nn.ModuleList([u for u in disentanglers if u is not None])
        self._has_disentangler = [u is not None for u in disentanglers]
        top = init_noise * torch.randn(chi, generator=gen, dtype=dtype) if init == "copy" else torch.randn(
            chi, generator=gen, dtype=dtype)
        self.top_logits = nn.Parameter(top)

    # ---- structure -------------------------------------------------------------------------
    def extent(self, level: int) -> int:
        """Linear size ``L / 2^level`` of ``Gamma_level``."""
        return self.shape[0] >> level

    def n_sites(self, level: int) -> int:
        return self.extent(level) ** self.d

    def dim(self, level: int) -> int:
        """Dimension of the variables of ``Gamma_level``: ``visible`` at 0, else ``chi``."""
        return self.visible if level == 0 else self.chi

    def isometry(self, layer: int) -> StochasticMap:
        """Coarse-graining maps of layer ``layer`` (1 .. n): ``(dim(j), dim(j-1)^(2^d))`` tables."""
        return self.isometries[layer - 1]

    def disentangler(self, layer: int) -> StochasticMap | None:
        """Disentanglers of layer ``layer``, or ``None`` where the layer has none."""
        if not self._has_disentangler[layer - 1]:
            return None
        return self._disentanglers[sum(self._has_disentangler[: layer - 1])]

    def layer_parameters(self, layer: int) -> list[nn.Parameter]:
        """Parameters of ``pi_layer`` (and of the top state for the last layer)."""
        params = list(self.isometry(layer).parameters())
        u = self.disentangler(layer)
        if u is not None:
            params += list(u.parameters())
        if layer == self.n_levels:
            params.append(self.top_logits)
        return params

    def top_probs(self) -> Tensor:
        """The top state ``e``: ``(chi,)`` probabilities of the single site of ``Gamma_n``."""
        return torch.softmax(self.top_logits, dim=0)

    # ---- ancestral sampling --------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, chunk: int = 4096) -> Tensor:
        """``n`` exact independent configurations, long ``(n, *shape)`` of indices ``0 ..
        visible-1``, drawn top-down (Bayesian network); same ``generator`` state, same draws."""
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be an integer >= 1, got {n!r}")
        return torch.cat([self._sample(min(chunk, n - i), generator) for i in range(0, n, chunk)])

    def sample_from(self, level: int, values: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Apply ``pi_1 o ... o pi_level`` to configurations ``values`` (long ``(batch,
        n_sites(level))``) of ``Gamma_level``; returns ``(batch, n_sites(0))`` visible indices."""
        x = values
        for j in range(level, 0, -1):
            x = self._generate_layer(j, x, generator)
        return x

    def _sample(self, n: int, generator: torch.Generator | None) -> Tensor:
        top = self.top_probs().expand(n, 1, self.chi)
        x = self.sample_from(self.n_levels, categorical(top, generator), generator)
        return x.reshape((n,) + self.shape)

    def _generate_layer(self, j: int, coarse: Tensor, generator) -> Tensor:
        geo, k, d_fine = self.geometry[j - 1], 2**self.d, self.dim(j - 1)
        n, sites = coarse.shape[0], torch.arange(len(geo.blocks), device=coarse.device)
        w = self.isometry(j)
        table = w.probs()
        rows = table[0, coarse] if w.shared else table[sites[None, :], coarse]  # (n, n_coarse, d_fine^k)
        fine = coarse.new_zeros(n, self.n_sites(j - 1))
        blocks = torch.as_tensor(geo.blocks, device=coarse.device)
        fine[:, blocks.reshape(-1)] = decode(categorical(rows, generator), d_fine, k).reshape(n, -1)
        u = self.disentangler(j)
        if u is None:
            return fine
        plaq = torch.as_tensor(geo.plaquettes, device=coarse.device)
        code = encode(fine[:, plaq], d_fine)  # (n, n_plaquettes)
        table = u.probs()
        rows = table[0, code] if u.shared else table[sites[None, :], code]
        out = fine.clone()
        out[:, plaq.reshape(-1)] = decode(categorical(rows, generator), d_fine, k).reshape(n, -1)
        return out

    # ---- drawing ---------------------------------------------------------------------------
    def draw(self) -> str:
        """ASCII drawing of the network along one axis (the 2D network is this structure along
        each axis), generation running downwards; see the module docstring."""
        kind = "tree" if self.tree else "MERA"
        maps = "shared" if self.shared else "position-dependent"
        head = (f"CORA ({kind}), {self.d}D lattice {'x'.join(map(str, self.shape))}, chi = {self.chi}, "
                f"{maps} maps; generation runs downwards" + ("; drawn along one axis" if self.d == 2 else ""))
        rows = draw_chain(self.shape[0], self._has_disentangler, self.chi, self.visible, self.d)
        return "\n".join([head, *rows])
