"""Real-space RG transformations with scale factor b = 2 on periodic 2D and 3D lattices.

One API for every transformation::

    coarse = t.transform(spins, generator)     # (batch, L0, L1) int8 -> (batch, L0/2, L1/2) int8
                                               # (batch, L0, L1, L2) -> (batch, L0/2, L1/2, L2/2)
    levels = coarse_grain(spins, t, level_generators(seed, 2))   # [level 0, level 1, level 2]

``spins`` are ``int8`` +-1 arrays of shape ``(batch, L_0, .., L_{d-1})``, d = 2 or 3, every
extent even; ``generator`` is a :class:`numpy.random.Generator` that supplies all the randomness
(tie breaks, sampling). Each transformation draws its uniforms in row-major order of
(configuration, coarse site), one float64 per draw, so transforming a batch in chunks gives the
same coarse spins as transforming it at once. Coarse spin ``I`` belongs to the 2^d block of fine
sites ``2 I + {0,1}^d`` (the blocks of :attr:`deeprg.lattice.Lattice.blocks`).

* :class:`MajorityRule`: ``mu = sign(block sum)``, ties (sum 0) broken by a fair coin.
* :class:`Decimation`: ``mu = sigma(2 I)``, the corner spin of each block.
* :class:`RBMProjector`: ``mu`` drawn from ``P(mu|sigma) = exp(sum_iJ W_iJ sigma_i mu_J) / Y(sigma)``
  (Chung & Kao Eqs. 3-4) with a translation-invariant ``f^d`` filter centred on the block
  (see :mod:`deeprg.rsrg.rbm`). The same filter is applied at every level.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch

from deeprg.config import resolve_device
from deeprg.lattice import Lattice
from deeprg.rsrg.rbm import block_indicator, check_filter, hidden_field

__all__ = [
    "Decimation",
    "MajorityRule",
    "RBMProjector",
    "RGTransform",
    "check_levels",
    "coarse_grain",
    "level_generators",
    "max_levels",
    "stream_generators",
]


class RGTransform(Protocol):
    """A b = 2 real-space RG transformation of +-1 spins."""

    name: str

    def check(self, shape: tuple[int, ...]) -> None:
        """Raise ``ValueError`` if the transformation cannot act on a lattice of ``shape``."""

    def transform(self, spins: np.ndarray, generator: np.random.Generator) -> np.ndarray:
        """``(batch, L_0, .., L_{d-1})`` int8 -> ``(batch, L_0/2, .., L_{d-1}/2)`` int8 coarse spins."""


def _fmt(shape) -> str:
    return "x".join(str(int(s)) for s in shape)


def _check_blockable(shape: tuple[int, ...]) -> None:
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (2, 3):
        raise ValueError(f"b = 2 blocking needs a 2D or 3D lattice, got the {len(shape)}D shape {shape}")
    if any(s < 2 for s in shape):
        raise ValueError(f"b = 2 blocking needs a lattice of even extents >= 2, got {_fmt(shape)}")
    Lattice(shape).require("b = 2 blocking", dims=(2, 3), even=True)


def _as_spins(spins: np.ndarray) -> np.ndarray:
    s = np.asarray(spins)
    if s.ndim not in (3, 4):
        raise ValueError(f"spins must have shape (batch, L0, L1) or (batch, L0, L1, L2), got shape {s.shape}")
    return s.astype(np.int8, copy=False)


class MajorityRule:
    """``mu_J = sign(sum of the 2^d spins of block J)`` (4 spins in 2D, 8 in 3D).

    A tie (block sum 0) is broken by a fair coin: ``mu_J = +1`` if a uniform draw of the generator
    is ``< 1/2``, else ``-1``, one draw per tied block in row-major order of (configuration, coarse
    site) and none for decided blocks. Ties are common: 6 of the 16 2x2 blocks (37.5%) and 70 of
    the 256 2x2x2 blocks (27.3%) of random spins; 14% of the 2x2x2 blocks of 16^3 Ising
    configurations at K_c. A coin rather than a fixed rule keeps the Z2 symmetry of the map
    exactly, ``P(mu | -sigma) = P(-mu | sigma)`` (always choosing +1 would act as a magnetic field
    on the coarse lattice and bias the odd couplings), and, unlike deferring to one chosen site of
    the block, it keeps the block's lattice symmetries.
    """

    name = "majority"

    def check(self, shape: tuple[int, ...]) -> None:
        _check_blockable(shape)

    def transform(self, spins: np.ndarray, generator: np.random.Generator) -> np.ndarray:
        s = _as_spins(spins)
        self.check(s.shape[1:])
        if s.ndim == 3:
            out = np.sign(s[:, 0::2, 0::2] + s[:, 0::2, 1::2] + s[:, 1::2, 0::2] + s[:, 1::2, 1::2])
        else:  # int8 sums of at most 8 spins are exact
            total = np.zeros_like(s[:, ::2, ::2, ::2])
            for offset in itertools.product((0, 1), repeat=3):
                total += s[(slice(None),) + tuple(slice(o, None, 2) for o in offset)]
            out = np.sign(total)
        ties = out == 0
        n_ties = int(ties.sum())
        if n_ties:
            out[ties] = np.where(generator.random(n_ties) < 0.5, 1, -1)
        return out


class Decimation:
    """``mu_J = sigma`` at the corner ``2 I`` of block J (the top-left site ``(2 I0, 2 I1)`` in
    2D; deterministic)."""

    name = "decimation"

    def check(self, shape: tuple[int, ...]) -> None:
        _check_blockable(shape)

    def transform(self, spins: np.ndarray, generator: np.random.Generator) -> np.ndarray:
        s = _as_spins(spins)
        self.check(s.shape[1:])
        return s[(slice(None),) + (slice(None, None, 2),) * (s.ndim - 1)].copy()


class RBMProjector:
    """Stochastic projector ``P(mu|sigma) = prod_J sigmoid(2 mu_J h_J(sigma))`` of an ``f^d``
    filter (Chung & Kao Eq. 3; ``h_J = sum_i W_iJ sigma_i``, see :mod:`deeprg.rsrg.rbm`).

    Parameters
    ----------
    weights:
        ``(f, f)`` (2D) or ``(f, f, f)`` (3D) filter, ``f`` even, centred on the 2^d block (offset
        ``f/2 - 1`` on every axis); it acts on configurations of its own dimension only. The model
        is Z2-symmetric under ``w -> -w, mu -> -mu``; the projector fixes this gauge by using
        ``sign(sum w) * w`` so that a block of aligned spins maps to a coarse spin of the same
        sign (odd MCRG correlations then have the right sign).
    dtype:
        Torch dtype of the field computation (``torch.float32`` by default; ``float64`` for exact
        tests).
    block_weight:
        ``alpha >= 0`` added to every filter entry on the block itself after the gauge fix
        (``w -> sign(sum w) w + alpha * block_indicator``, :func:`deeprg.rsrg.rbm.block_indicator`):
        the learned filter mixed with the stochastic majority rule of Ron, Brandt & Swendsen
        (2017). 0 (the default) is the learned projector itself; large ``alpha`` tends to the
        majority rule wherever the block sum is not 0. The one-parameter family that
        :func:`deeprg.rsrg.tuning.tune_sectors` tunes separately for the even and odd exponents.
    device:
        Torch device of the field computation (``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a
        :class:`torch.device`; a device this machine lacks is a ``ValueError`` naming ``device``).
        :attr:`weights` live there. The uniforms of :meth:`transform` still come from the numpy
        generator on the host, so the coarse spins depend on the device only through the rounding
        of the field (float64 fields differ in the last bits at most; float32 convolutions on a GPU follow
        torch's cuDNN TF32 setting, ``torch.backends.cudnn.allow_tf32``, on by default).
    """

    name = "rbm"

    def __init__(self, weights: np.ndarray | torch.Tensor, dtype: torch.dtype = torch.float32,
                 block_weight: float = 0.0, device: str | torch.device = "cpu") -> None:
        self.device = resolve_device(str(device))
        w = torch.as_tensor(weights).detach().to(device="cpu", dtype=torch.float64)
        if w.ndim not in (2, 3) or any(s != w.shape[0] for s in w.shape):
            raise ValueError(f"filter must be a square (f, f) or cubic (f, f, f) array, got shape {tuple(w.shape)}")
        if not torch.isfinite(w).all():
            raise ValueError("filter contains non-finite weights")
        self.size = int(w.shape[0])
        self.d = int(w.ndim)
        if self.size < 2 or self.size % 2:
            block = "2x2" if self.d == 2 else "2x2x2"
            raise ValueError(f"filter size must be an even integer >= 2 (centred on a {block} block), got {self.size}")
        if not (math.isfinite(block_weight) and block_weight >= 0):
            raise ValueError(f"block_weight must be a finite number >= 0, got {block_weight!r}")
        sign = -1.0 if float(w.sum()) < 0 else 1.0
        w = sign * w
        if block_weight:
            w = w + block_weight * torch.from_numpy(block_indicator(self.size, self.d))
        self.block_weight = float(block_weight)
        self.weights = w.to(device=self.device, dtype=dtype)
        self.dtype = dtype

    def check(self, shape: tuple[int, ...]) -> None:
        _check_blockable(shape)
        check_filter(self.size, tuple(shape), self.d)

    @torch.no_grad()
    def probabilities(self, spins: np.ndarray) -> np.ndarray:
        """``P(mu_J = +1 | sigma) = sigmoid(2 h_J)`` as a ``(batch, L_0/2, ..)`` float64 numpy
        array. On a GPU the spins (int8, from numpy on the host) are copied to the device once per
        call, the field is computed there and the probabilities are copied back: a host-device
        round trip per chunk of configurations, inherent in numpy input and output."""
        s = _as_spins(spins)
        self.check(s.shape[1:])
        x = torch.from_numpy(s).to(self.device).to(self.dtype)
        h = hidden_field(x, self.weights)
        return torch.sigmoid(2.0 * h).double().cpu().numpy()

    def transform(self, spins: np.ndarray, generator: np.random.Generator) -> np.ndarray:
        p = self.probabilities(spins)
        return np.where(generator.random(p.shape) < p, 1, -1).astype(np.int8)


def level_generators(seed: int, levels: int) -> list[np.random.Generator]:
    """One independent generator per RG level, from ``SeedSequence(seed).spawn(levels)``."""
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(levels)]


def stream_generators(seed: int, levels: int, index: int) -> list[np.random.Generator]:
    """One generator per RG level for stream ``index`` (e.g. a fixed global chunk of the data):
    level ``n`` uses ``SeedSequence(seed, spawn_key=(n - 1, index))``, the ``index``-th child of
    the level's sequence ``SeedSequence(seed).spawn(levels)[n - 1]`` of :func:`level_generators`,
    derived directly (no spawning of the ``index`` earlier ones)."""
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or index < 0:
        raise ValueError(f"index must be an integer >= 0, got {index!r}")
    return [np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(n, int(index)))) for n in range(levels)]


def max_levels(shape: tuple[int, ...]) -> int:
    """Most b = 2 levels the extents ``shape`` allow: the largest ``n`` with every extent divisible
    by ``2**n`` (0 for an odd extent)."""
    return min((int(s) & -int(s)).bit_length() - 1 for s in shape)


def check_levels(shape: tuple[int, ...], transform: RGTransform, levels: int) -> list[tuple[int, ...]]:
    """Shapes of levels ``0 .. levels`` (level 0 = ``shape``), after checking that ``transform``
    can act ``levels`` times: extents divisible by ``2**levels`` and whatever the transformation
    needs at each level (e.g. the RBM filter must fit). Raises ``ValueError`` naming the problem."""
    if isinstance(levels, bool) or not isinstance(levels, (int, np.integer)) or levels < 1:
        raise ValueError(f"levels must be an integer >= 1, got {levels!r}")
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (2, 3):
        raise ValueError(f"RG transformations act on 2D or 3D lattices, got shape {shape}")
    most = max_levels(shape)
    if levels > most:  # 2**levels is computed only where small: a huge count would never finish
        power = f" = {2**levels}" if levels <= max(shape).bit_length() else ""
        raise ValueError(f"lattice {_fmt(shape)} is not divisible by 2^levels{power} (levels = {levels}); "
                         f"it can be halved at most {most} times")
    shapes = [shape]
    for _ in range(levels):
        try:
            transform.check(shapes[-1])
        except ValueError as err:
            raise ValueError(f"{err} (at RG level {len(shapes)} of {levels})") from None
        shapes.append(tuple(s // 2 for s in shapes[-1]))
    return shapes


def coarse_grain(spins: np.ndarray, transform: RGTransform, generators: Sequence[np.random.Generator]) -> list[np.ndarray]:
    """Apply ``transform`` ``len(generators)`` times (level ``n`` uses ``generators[n - 1]``);
    returns ``[spins, level 1, ..., level N_r]``, level ``n`` of shape ``(batch, L_0/2^n, ..)``."""
    out = [_as_spins(spins)]
    check_levels(out[0].shape[1:], transform, len(generators))
    for generator in generators:
        out.append(transform.transform(out[-1], generator))
    return out
