"""The NeuralRG hierarchy: layers of block bijectors arranged as a MERA, a TEBD or a tree.

Li & Wang, Fig. 1 and Fig. 2(c, d). Sites of a periodic ``L^d`` lattice (``L = 2^n``) carry one
real variable each. At scale ``l`` (``l = 0 .. n-1``) the *active* sites are those whose
coordinates are multiples of ``2^l``; they form a periodic sub-lattice of extent ``L / 2^l``.
In the renormalization (RG) direction each scale applies

* a **disentangler** layer: a bijector on every 2^d plaquette of the sub-lattice whose corner sits
  at odd sub-lattice coordinates (plaquettes shifted by one site), mixing across the boundaries of
  the next layer's blocks (omitted when the sub-lattice extent is 2, where shifted and unshifted
  plaquettes coincide);
* a **decimator** layer: a bijector on every unshifted plaquette (corner at even sub-lattice
  coordinates); of its 2^d outputs the one at the corner stays active at scale ``l + 1`` and the
  other ``2^d - 1`` are final latent variables.

The last decimator acts on the 2^d sites of a sub-lattice of extent 2 and all its outputs are
latents. Each variable ends where it started: the latent field ``z`` has the lattice's shape, and
``z`` at a site decimated at scale ``l`` is a scale-``l`` latent.

One dimension, ``L = 8`` (MERA; ``D`` disentangler, ``M`` decimator; ``o`` marks the sites
active at the start of a scale, ``x`` the latents already fixed). The RG direction runs upwards, generation downwards::

    scale 2:   o x x x o x x x     M(0,4)                                 (all outputs latent)
    scale 1:   o x o x o x o x     D(2,4) D(6,0)                then  M(0,2) M(4,6)
    scale 0:   o o o o o o o o     D(1,2) D(3,4) D(5,6) D(7,0)  then  M(0,1) M(2,3) M(4,5) M(6,7)
               x0 x1 ...  x7  (physical variables)

The two reference structures of Fig. 2: ``tebd`` uses disentangler-type layers only, all at scale
0, alternating unshifted and shifted plaquettes (``depth`` layers; no variable is decimated, so
information spreads by one plaquette per layer); ``tree`` uses decimators only.

Every layer is a :class:`~deeprg.flows.bijectors.BlockRealNVP`; the direction convention is the one
written in :mod:`deeprg.flows.bijectors`. Two cheap maps can sit between the physical field and
the first layer, in generation order ``x = C(f(h))`` with ``h`` the output of the block layers:

* ``elementwise=True``: :class:`~deeprg.flows.bijectors.OddMonotone`, one learned odd monotone
  function ``f`` applied to every site, which makes the single-site marginal two-peaked;
* ``linear=True``: :class:`~deeprg.flows.bijectors.CirculantLinear`, one learned symmetric
  convolution ``C`` over the whole lattice, which captures the translation-invariant Gaussian part
  of the correlations at every length scale.

The order mirrors the relaxed Ising field (Li & Wang Eq. 7), ``x = A s + noise``: two-peaked
"spins" first, then the linear coupling kernel. Both cost O(N) (``C``: O(N log N)).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from deeprg.flows.bijectors import BlockRealNVP, CirculantLinear, OddMonotone
from deeprg.lattice import Lattice

__all__ = ["ARCHITECTURES", "Hierarchy", "LayerSpec", "layer_specs"]

ARCHITECTURES = ("mera", "tebd", "tree")


@dataclass(frozen=True)
class LayerSpec:
    """One layer of blocks: ``kind`` ('disentangler' or 'decimator'), its ``scale`` and the
    ``(n_blocks, 2^d)`` site indices of its blocks (row-major offsets; column 0 is the corner)."""

    kind: str
    scale: int
    blocks: np.ndarray


def _plaquettes(lattice: Lattice, scale: int, shifted: bool) -> np.ndarray:
    """Plaquettes of the scale-``scale`` sub-lattice, as full-lattice site indices."""
    stride = 2**scale
    sub = Lattice(tuple(s // stride for s in lattice.shape)) if min(lattice.shape) // stride >= 2 else None
    if sub is None:
        raise ValueError(f"scale {scale} is beyond the top of a lattice of shape {lattice.shape}")
    sub_coords = np.stack(np.unravel_index(sub.blocks, sub.shape), axis=-1)  # (nb, 2^d, d)
    if shifted:
        sub_coords = (sub_coords + 1) % np.array(sub.shape)
    full = sub_coords * stride
    return np.ravel_multi_index(tuple(np.moveaxis(full, -1, 0)), lattice.shape)


def _check_power_of_two_lattice(lattice: Lattice) -> int:
    """``log2 L`` of an ``L^d`` lattice with ``L`` a power of two."""
    lattice.require("the flow", square=True, power_of_two=True)
    return lattice.shape[0].bit_length() - 1


def layer_specs(lattice: Lattice, arch: str = "mera", depth: int | None = None) -> list[LayerSpec]:
    """Layers in the renormalization (RG) order for ``arch`` in :data:`ARCHITECTURES`.

    ``depth`` (``tebd`` only): number of disentangler layers, default ``2 log2 L`` (1 for L = 2).
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"arch must be one of {ARCHITECTURES}, got {arch!r}")
    n = _check_power_of_two_lattice(lattice)
    specs: list[LayerSpec] = []
    if arch == "tebd":
        depth = (2 * n if lattice.shape[0] > 2 else 1) if depth is None else int(depth)
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        if lattice.shape[0] == 2 and depth > 1:
            raise ValueError("a tebd flow on L = 2 has a single distinct layer: use depth = 1")
        return [LayerSpec("disentangler", 0, _plaquettes(lattice, 0, shifted=bool(i % 2))) for i in range(depth)]
    for scale in range(n):
        if arch == "mera" and lattice.shape[0] // 2**scale > 2:
            specs.append(LayerSpec("disentangler", scale, _plaquettes(lattice, scale, shifted=True)))
        specs.append(LayerSpec("decimator", scale, _plaquettes(lattice, scale, shifted=False)))
    return specs


class Hierarchy(nn.Module):
    """A stack of :class:`BlockRealNVP` layers on a periodic ``L^d`` lattice.

    Fields are tensors of shape ``(batch, *lattice.shape)``; both methods return the transformed
    field (same shape) and the log|det| of their own Jacobian, shape ``(batch,)``.

    Parameters
    ----------
    lattice: the lattice (``L^d``, ``L`` a power of two).
    arch: ``'mera'`` (default), ``'tebd'`` or ``'tree'``.
    depth: number of layers for ``'tebd'``.
    n_couplings, hidden, shared, s_max: passed to every :class:`BlockRealNVP`.
    linear: add a :class:`CirculantLinear` map at the physical end.
    elementwise: add an :class:`OddMonotone` site-wise map (inside the linear map, if any).
    kernel: conditioner reach; 1 = an MLP on each block's own variables (Li & Wang), odd ``k > 1``
        = a ``k^d`` convolution over the layer's grid of blocks (``L / 2^(scale + 1)`` per axis), so
        each coupling also sees the neighbouring blocks' conditioning variables.
    spline_bins: 0 = affine couplings (Li & Wang); ``K >= 2`` = a rational-quadratic spline of
        ``K`` bins inside every coupling (:class:`BlockRealNVP`).
    """

    def __init__(
        self,
        lattice: Lattice,
        arch: str = "mera",
        depth: int | None = None,
        n_couplings: int = 4,
        hidden: tuple[int, ...] = (64, 64),
        shared: bool = True,
        s_max: float = 2.0,
        linear: bool = False,
        elementwise: bool = False,
        kernel: int = 1,
        spline_bins: int = 0,
    ) -> None:
        super().__init__()
        self.lattice, self.arch = lattice, arch
        self.specs = layer_specs(lattice, arch, depth)
        k = 2**lattice.d
        self.layers = nn.ModuleList(
            BlockRealNVP(k, len(s.blocks), n_couplings, tuple(hidden), shared, s_max,
                         grid=tuple(n // 2 ** (s.scale + 1) for n in lattice.shape), kernel=kernel,
                         spline_bins=spline_bins)
            for s in self.specs
        )
        self.linear = CirculantLinear(lattice.shape) if linear else None
        self.elementwise = OddMonotone() if elementwise else None
        for i, spec in enumerate(self.specs):
            self.register_buffer(f"_index{i}", torch.as_tensor(spec.blocks, dtype=torch.long), persistent=False)

    def _indices(self) -> list[Tensor]:
        return [getattr(self, f"_index{i}") for i in range(len(self.specs))]

    def _apply_layer(self, layer: BlockRealNVP, index: Tensor, h: Tensor, method: str) -> tuple[Tensor, Tensor]:
        blocks, logdet = getattr(layer, method)(h[:, index])
        return h.index_copy(1, index.reshape(-1), blocks.reshape(h.shape[0], -1)), logdet

    def renormalize(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Physical field ``x`` -> latent field ``z`` and ``log|det dz/dx|``."""
        logdet = x.new_zeros(x.shape[0])
        for bijector in (self.linear, self.elementwise):
            if bijector is not None:
                x, ld = bijector.renormalize(x)
                logdet = logdet + ld
        h = x.reshape(x.shape[0], -1)
        for layer, index in zip(self.layers, self._indices()):
            h, ld = self._apply_layer(layer, index, h, "renormalize")
            logdet = logdet + ld
        return h.reshape(x.shape), logdet

    def generate(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Latent field ``z`` -> physical field ``x`` and ``log|det dx/dz|``."""
        h = z.reshape(z.shape[0], -1)
        logdet = h.new_zeros(h.shape[0])
        for layer, index in zip(reversed(self.layers), reversed(self._indices())):
            h, ld = self._apply_layer(layer, index, h, "generate")
            logdet = logdet + ld
        x = h.reshape(z.shape)
        for bijector in (self.elementwise, self.linear):
            if bijector is not None:
                x, ld = bijector.generate(x)
                logdet = logdet + ld
        return x, logdet

    @torch.no_grad()
    def initialize_from(self, smaller: Hierarchy) -> None:
        """Copy the weights of a trained hierarchy on an ``L/2`` (or the same ``L``) lattice into
        this one (Li & Wang, footnote 53: a larger system starts from the weights trained on a
        smaller one). Block layers must share their weights across blocks. In RG order, this
        flow's layers at scale ``s + 1`` take the weights of ``smaller``'s layers at scale ``s``
        (the coarse part of a ``2L`` lattice sees an ``L`` lattice) and its scale-0 layers also
        take ``smaller``'s scale-0 weights; the site map is copied, and the linear map's
        log-eigenvalues are carried over to the finer Fourier grid (``k_j = 2 pi j / 2L`` takes the
        value at index ``j // 2`` of the ``L`` grid; :class:`CirculantLinear` symmetrizes them in
        ``k``). Raises ``ValueError`` naming what does not fit."""
        L, L_small = self.lattice.shape[0], smaller.lattice.shape[0]
        if self.lattice.d != smaller.lattice.d or L not in (L_small, 2 * L_small):
            raise ValueError(f"can initialize an {L}^{self.lattice.d} flow only from an L = {L} or {L // 2} flow "
                             f"of the same dimension, got {L_small}^{smaller.lattice.d}")
        if self.arch != smaller.arch or self.arch == "tebd":
            raise ValueError(f"both flows must have the same arch, mera or tree; got {self.arch} and {smaller.arch}")
        for name in ("linear", "elementwise"):
            if (getattr(self, name) is None) != (getattr(smaller, name) is None):
                raise ValueError(f"both flows must have the same {name} map (on or off)")
        if not all(layer.shared for layer in (*self.layers, *smaller.layers)):
            raise ValueError("initializing from a smaller flow needs shared block weights (shared = true)")
        source = {(spec.kind, spec.scale): layer for spec, layer in zip(smaller.specs, smaller.layers)}
        for spec, layer in zip(self.specs, self.layers):
            same_kind = sorted(scale for kind, scale in source if kind == spec.kind)
            if not same_kind:  # e.g. the disentanglers of a 4^d MERA from a 2^d one: left as initialized
                continue
            try:
                layer.load_state_dict(source[(spec.kind, min(spec.scale, same_kind[-1]))].state_dict())
            except RuntimeError as err:
                raise ValueError(f"block layers differ (couplings, hidden widths, spline bins or s_max): {err}") from None
        if self.elementwise is not None:
            self.elementwise.load_state_dict(smaller.elementwise.state_dict())
        if self.linear is not None:
            a = smaller.linear.log_eigenvalues()
            index = [torch.arange(n) * L_small // n for n in self.lattice.shape]
            self.linear.raw.copy_(a[torch.meshgrid(*index, indexing="ij")])

    def latent_scale(self) -> np.ndarray:
        """Integer array of the lattice's shape: the scale at which each site's variable became a
        latent (for ``tebd`` all 0; for the top block of ``mera``/``tree``, ``log2 L - 1``)."""
        scale = np.zeros(self.lattice.n_sites, dtype=int)
        for spec in self.specs:
            if spec.kind == "decimator":
                scale[spec.blocks.reshape(-1)] = spec.scale
        return scale.reshape(self.lattice.shape)
