"""Real NVP bijectors acting on many small groups ("blocks") of variables at once.

Direction convention (the only place it is written down; every flow in deeprg follows it)
-----------------------------------------------------------------------------------------
A bijector relates physical-side variables ``x`` (bottom, fine scale) and latent-side variables
``z`` (top, coarse scale). It has two methods, each returning its output and the log|det| of
*its own* Jacobian:

* ``generate(z) -> (x, log|det dx/dz|)``: the inverse-RG direction, latent to physical;
* ``renormalize(x) -> (z, log|det dz/dx|)``: the RG direction, physical to latent.

They are exact inverses, and the two log-determinants at corresponding points are negatives of
each other. A flow density is ``ln q(x) = ln p(z) + log|det dz/dx|`` (Li & Wang Eq. 1).

Blocks
------
:class:`BlockRealNVP` transforms a tensor of shape ``(batch, n_blocks, k)``: ``n_blocks``
independent groups of ``k`` variables (``k = 2^d``: a 2x2 plaquette in 2D, a pair in 1D). Each
affine coupling updates a subset ``b`` of a block's variables given the rest ``a``::

    renormalize:  z_b = x_b * exp(s(x_a)) + t(x_a),     generate:  x_b = (z_b - t(z_a)) * exp(-s(z_a)),

with ``s = s_max * tanh(raw / s_max)``, a smooth bound on the log-scale. With ``spline_bins = K >
0`` each updated variable first goes through a monotone rational-quadratic spline ``r`` of ``K``
bins on ``[-B, B]`` (identity outside; Durkan, Bekasov, Murray & Papamakarios, "Neural spline
flows", NeurIPS 2019, Eqs. 4-8), whose knots and slopes are conditioned like ``s`` and ``t``::

    renormalize:  z_b = r(x_b; x_a) * exp(s(x_a)) + t(x_a),   generate:  x_b = r^-1((z_b - t) exp(-s); z_a),

``r^-1`` in closed form (the root of a quadratic), so a coupling can reshape a conditional into
two peaks, which an affine map cannot; the log-det gains ``sum ln r'``. ``s``, ``t`` (and the
spline's parameters) come from one small MLP per coupling, either shared by all blocks of the layer (translation invariance) or
one per block. The last MLP layer starts at zero, so a fresh bijector is the identity. With
``kernel = k > 1`` (shared weights only) the conditioner is convolutional instead: the blocks sit on
a periodic grid, and the first layer is a ``k^d`` circular convolution over it, so the update of
block ``J`` reads the conditioning variables of ``J`` and of the blocks within ``k // 2`` grid steps.
Those are not updated by the same coupling, so the Jacobian stays triangular and the log-det is
still ``sum s``; one coupling reaches ``k // 2`` blocks, ``n`` couplings ``n (k // 2)``.

Translation-invariant linear map
--------------------------------
:class:`CirculantLinear` acts on whole periodic fields ``(batch, *shape)``: a symmetric
convolution, diagonal in the Fourier basis,

    generate:  x = F^-1 [exp(a_k) F[z]_k],     renormalize:  z = F^-1 [exp(-a_k) F[x]_k],

with ``log|det dx/dz| = sum_k a_k``. The log-eigenvalues are kept even, ``a_k = a_-k``, so the
map is real and symmetric; they start at zero (identity).

Site-wise odd monotone map
--------------------------
:class:`OddMonotone` applies one scalar function, shared by all sites, to every variable::

    generate:  x_i = f(y_i) = y_i + sum_m a_m tanh(b_m y_i),      a_m, b_m > 0,

odd and strictly increasing (``1 <= f' <= 1 + sum_m a_m b_m``), with
``log|det dx/dy| = sum_i ln f'(y_i)``. Because ``f'`` peaks at 0 it pushes mass away from the
origin: a Gaussian becomes a two-peaked density at O(N) cost, the shape of the single-site marginal
of the relaxed Ising field (Li & Wang Eq. 7: given the spins, ``x ~ N(A s, A)``). ``renormalize``
inverts ``f`` by bracketed Newton iteration to machine precision and then takes one more Newton
step with gradients on, so that derivatives of ``f^-1`` (in ``x`` and in the parameters) are
exact: ``d f^-1 / dx = 1 / f'``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["BlockRealNVP", "CirculantLinear", "OddMonotone", "coupling_partitions", "rational_quadratic_spline"]

#: Smallest bin width and height, as a fraction of ``2 B``, and smallest knot slope of a spline.
SPLINE_MIN_BIN, SPLINE_MIN_SLOPE = 1e-3, 1e-3
#: ``softplus(SPLINE_SLOPE_SHIFT) = 1 - SPLINE_MIN_SLOPE``: zero raw parameters give the identity.
SPLINE_SLOPE_SHIFT = math.log(math.expm1(1.0 - SPLINE_MIN_SLOPE))


def rational_quadratic_spline(x: Tensor, widths: Tensor, heights: Tensor, slopes: Tensor, bound: float,
                              inverse: bool = False) -> tuple[Tensor, Tensor]:
    """Monotone rational-quadratic spline on ``[-bound, bound]``, the identity outside (Durkan et
    al. 2019, Eqs. 4-8; slopes 1 at both ends, so it joins the identity smoothly).

    ``x`` ``(...)``; raw parameters ``widths``, ``heights`` ``(..., K)`` and ``slopes`` ``(..., K - 1)``
    (interior knots): bin widths and heights are ``softmax`` fractions of ``2 bound`` (at least
    :data:`SPLINE_MIN_BIN` of it), slopes ``softplus(raw + SPLINE_SLOPE_SHIFT) + SPLINE_MIN_SLOPE``,
    so all-zero parameters give the identity. Returns ``(r(x), ln r'(x))``, or with ``inverse``
    ``(r^-1(x), ln (r^-1)'(x))``, both of shape ``(...)``."""
    k = widths.shape[-1]

    def knots(raw: Tensor) -> tuple[Tensor, Tensor]:
        size = SPLINE_MIN_BIN + (1 - SPLINE_MIN_BIN * k) * torch.softmax(raw, dim=-1)
        edges = nn.functional.pad(torch.cumsum(size, dim=-1), (1, 0))
        edges = 2 * bound * edges - bound
        end = torch.full_like(edges[..., :1], bound)
        edges = torch.cat([-end, edges[..., 1:-1], end], dim=-1)  # ends exact despite rounding
        return edges, edges[..., 1:] - edges[..., :-1]

    xs, w = knots(widths)
    ys, h = knots(heights)
    d = nn.functional.softplus(slopes + SPLINE_SLOPE_SHIFT) + SPLINE_MIN_SLOPE
    d = nn.functional.pad(d, (1, 1), value=1.0)
    inside = (x > -bound) & (x < bound)
    xc = x.clamp(-bound, bound)
    edges = ys if inverse else xs
    index = ((xc.unsqueeze(-1) >= edges[..., 1:-1]).sum(-1, keepdim=True))

    def pick(t: Tensor) -> Tensor:
        return torch.gather(t, -1, index).squeeze(-1)

    x_k, w_k, y_k, h_k, d_k, d_k1 = pick(xs[..., :-1]), pick(w), pick(ys[..., :-1]), pick(h), pick(d[..., :-1]), \
        pick(d[..., 1:])
    slope = h_k / w_k
    if inverse:
        dy = xc - y_k
        c_mix = d_k1 + d_k - 2 * slope
        a = h_k * (slope - d_k) + dy * c_mix
        b = h_k * d_k - dy * c_mix
        c = -slope * dy
        xi = (2 * c) / (-b - torch.sqrt((b * b - 4 * a * c).clamp_min(0)))
    else:
        xi = (xc - x_k) / w_k
    mix = xi * (1 - xi)
    denominator = slope + (d_k1 + d_k - 2 * slope) * mix
    log_slope = (2 * torch.log(slope) + torch.log(d_k1 * xi * xi + 2 * slope * mix + d_k * (1 - xi) ** 2)
                 - 2 * torch.log(denominator))
    if inverse:
        out, log_slope = xi * w_k + x_k, -log_slope
    else:
        out = y_k + h_k * (slope * xi * xi + d_k * mix) / denominator
    return torch.where(inside, out, x), torch.where(inside, log_slope, torch.zeros_like(log_slope))


def coupling_partitions(k: int, n_couplings: int) -> list[tuple[list[int], list[int]]]:
    """``(conditioning, updated)`` index lists of the couplings of a block of ``k = 2^d``
    variables (offsets ordered row-major in ``{0, 1}^d``).

    The pattern cycles through the "checkerboard" split (update the sites of odd offset parity
    given the even ones, then the reverse) and the split of each axis in turn, so that after a few
    couplings every variable has been conditioned on every other.
    """
    if k < 2 or k & (k - 1):
        raise ValueError(f"block size k must be a power of two >= 2, got {k}")
    d = k.bit_length() - 1
    offsets = [[(i >> (d - 1 - a)) & 1 for a in range(d)] for i in range(k)]
    splits = [[i for i in range(k) if sum(offsets[i]) % 2 == 0]]
    splits += [[i for i in range(k) if offsets[i][a] == 0] for a in range(d) if d > 1]
    out = []
    for c in range(n_couplings):
        first = splits[(c // 2) % len(splits)]
        second = [i for i in range(k) if i not in first]
        cond, upd = (first, second) if c % 2 == 0 else (second, first)
        out.append((cond, upd))
    return out


class _GroupedMLP(nn.Module):
    """MLP applied to ``(batch, n_blocks, n_in)`` with weights shared (``groups = 1``) or one set
    per block (``groups = n_blocks``). Output ``(batch, n_blocks, n_out)``."""

    def __init__(self, n_in: int, hidden: tuple[int, ...], n_out: int, groups: int) -> None:
        super().__init__()
        sizes = [n_in, *hidden, n_out]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            w = torch.empty(groups, a, b)
            if i < len(sizes) - 2:
                nn.init.uniform_(w, -1.0 / math.sqrt(a), 1.0 / math.sqrt(a))
            else:
                nn.init.zeros_(w)  # identity bijector at initialization
            self.weights.append(nn.Parameter(w))
            self.biases.append(nn.Parameter(torch.zeros(groups, 1, b)))
        self.groups = groups

    def forward(self, h: Tensor) -> Tensor:
        batch, n_blocks, _ = h.shape
        if self.groups == 1:
            h = h.reshape(batch * n_blocks, -1)
            for i, (w, b) in enumerate(zip(self.weights, self.biases)):
                h = torch.addmm(b[0], h, w[0])
                if i < len(self.weights) - 1:
                    h = nn.functional.silu(h)
            return h.reshape(batch, n_blocks, -1)
        h = h.transpose(0, 1)  # (n_blocks, batch, n_in)
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = torch.baddbmm(b, h, w)
            if i < len(self.weights) - 1:
                h = nn.functional.silu(h)
        return h.transpose(0, 1)


class _BlockConvNet(nn.Module):
    """Convolutional conditioner: blocks arranged on a periodic grid of shape ``grid``
    (``n_blocks = prod(grid)``, row-major). Input ``(batch, n_blocks, n_in)``, output
    ``(batch, n_blocks, n_out)``; the first layer is a ``kernel^d`` convolution with circular
    padding, so a block's output depends on its own inputs and on those of the blocks within
    ``kernel // 2`` grid steps; the other layers act block by block. Weights are shared by all
    blocks (translation invariance)."""

    def __init__(self, n_in: int, hidden: tuple[int, ...], n_out: int, grid: tuple[int, ...], kernel: int) -> None:
        super().__init__()
        conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[len(grid) - 1]
        sizes = [n_in, *hidden, n_out]
        self.grid = tuple(grid)
        self.layers = nn.ModuleList()
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            k = kernel if i == 0 else 1
            layer = conv(a, b, k, padding=k // 2, padding_mode="circular" if k > 1 else "zeros")
            if i == len(sizes) - 2:
                nn.init.zeros_(layer.weight)  # identity bijector at initialization
                nn.init.zeros_(layer.bias)
            self.layers.append(layer)

    def forward(self, h: Tensor) -> Tensor:
        batch, n_blocks, _ = h.shape
        h = h.transpose(1, 2).reshape(batch, -1, *self.grid)
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if i < len(self.layers) - 1:
                h = nn.functional.silu(h)
        return h.reshape(batch, -1, n_blocks).transpose(1, 2)


class BlockRealNVP(nn.Module):
    """A stack of affine couplings on ``n_blocks`` blocks of ``k`` variables each.

    Parameters
    ----------
    k: variables per block (a power of two, ``2^d``).
    n_blocks: number of blocks the bijector acts on (needed only when weights are not shared).
    n_couplings: affine coupling layers per block.
    hidden: hidden widths of each coupling's MLP.
    shared: share weights across the blocks of the layer (translation invariance).
    s_max: bound on each log-scale, ``|s| < s_max``.
    grid, kernel: the blocks' periodic grid and the conditioner reach (module docstring).
    spline_bins: 0 = affine couplings (Li & Wang); ``K > 0`` = a rational-quadratic spline of ``K``
        bins on ``[-spline_bound, spline_bound]`` before the affine map of each coupling.
    """

    def __init__(
        self,
        k: int,
        n_blocks: int,
        n_couplings: int = 4,
        hidden: tuple[int, ...] = (64, 64),
        shared: bool = True,
        s_max: float = 2.0,
        grid: tuple[int, ...] | None = None,
        kernel: int = 1,
        spline_bins: int = 0,
        spline_bound: float = 5.0,
    ) -> None:
        super().__init__()
        self.k, self.n_blocks, self.s_max = k, n_blocks, float(s_max)
        if spline_bins < 0 or spline_bins == 1:
            raise ValueError(f"spline_bins must be 0 (affine) or >= 2, got {spline_bins}")
        if not spline_bound > 0:
            raise ValueError(f"spline_bound must be > 0, got {spline_bound}")
        self.spline_bins, self.spline_bound = int(spline_bins), float(spline_bound)
        per_variable = 2 + (3 * spline_bins - 1 if spline_bins else 0)
        self.partitions = coupling_partitions(k, n_couplings)
        # the partitions as index buffers, moved with the module: indexing by a Python list would
        # copy the list to a GPU at every coupling of every step
        for c, (cond, upd) in enumerate(self.partitions):
            self.register_buffer(f"_cond{c}", torch.tensor(cond, dtype=torch.long), persistent=False)
            self.register_buffer(f"_upd{c}", torch.tensor(upd, dtype=torch.long), persistent=False)
        self.shared = bool(shared)
        if kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"kernel must be an odd integer >= 1, got {kernel}")
        if kernel > 1:
            if grid is None or math.prod(grid) != n_blocks or not shared:
                raise ValueError("a convolutional conditioner (kernel > 1) needs shared weights and the blocks' grid")
            self.nets = nn.ModuleList(
                _BlockConvNet(len(cond), tuple(hidden), per_variable * len(upd), tuple(grid), kernel)
                for cond, upd in self.partitions
            )
        else:
            groups = 1 if shared else n_blocks
            self.nets = nn.ModuleList(
                _GroupedMLP(len(cond), tuple(hidden), per_variable * len(upd), groups) for cond, upd in self.partitions
            )

    def _conditioner(self, net: nn.Module, cond: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """``s``, ``t`` ``(batch, n_blocks, n_upd)`` and the spline's raw parameters
        ``(batch, n_blocks, n_upd, 3 K - 1)`` (``None`` for affine couplings)."""
        raw = net(cond)
        n = raw.shape[-1] // (2 + (3 * self.spline_bins - 1 if self.spline_bins else 0))
        s = self.s_max * torch.tanh(raw[..., :n] / self.s_max)
        spline = raw[..., 2 * n:].unflatten(-1, (n, -1)) if self.spline_bins else None
        return s, raw[..., n:2 * n], spline

    def _spline(self, v: Tensor, params: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        k = self.spline_bins
        return rational_quadratic_spline(v, params[..., :k], params[..., k:2 * k], params[..., 2 * k:],
                                         self.spline_bound, inverse=inverse)

    def _couplings(self) -> list[tuple[nn.Module, Tensor, Tensor]]:
        """``(net, cond, upd)`` of each coupling in renormalization order, ``cond`` and ``upd``
        the index buffers of the conditioning and updated variables."""
        return [(net, getattr(self, f"_cond{c}"), getattr(self, f"_upd{c}")) for c, net in enumerate(self.nets)]

    def renormalize(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(batch, n_blocks, k) -> (z, log|det dz/dx|)``; logdet of shape ``(batch,)``."""
        logdet = x.new_zeros(x.shape[0])
        for net, cond, upd in self._couplings():
            s, t, spline = self._conditioner(net, x.index_select(-1, cond))
            new = x.index_select(-1, upd)
            if spline is not None:
                new, log_slope = self._spline(new, spline, inverse=False)
                logdet = logdet + log_slope.sum(dim=(1, 2))
            x = x.index_copy(-1, upd, new * torch.exp(s) + t)
            logdet = logdet + s.sum(dim=(1, 2))
        return x, logdet

    def generate(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """``(batch, n_blocks, k) -> (x, log|det dx/dz|)``; logdet of shape ``(batch,)``."""
        logdet = z.new_zeros(z.shape[0])
        for net, cond, upd in reversed(self._couplings()):
            s, t, spline = self._conditioner(net, z.index_select(-1, cond))
            new = (z.index_select(-1, upd) - t) * torch.exp(-s)
            if spline is not None:
                new, log_slope = self._spline(new, spline, inverse=True)
                logdet = logdet + log_slope.sum(dim=(1, 2))
            z = z.index_copy(-1, upd, new)
            logdet = logdet - s.sum(dim=(1, 2))
        return z, logdet


class CirculantLinear(nn.Module):
    """Symmetric translation-invariant linear bijector on periodic fields of shape
    ``(batch, *shape)`` (see the module docstring); ``shape`` has 1 to 3 axes."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape = tuple(shape)
        self.raw = nn.Parameter(torch.zeros(self.shape))

    def log_eigenvalues(self) -> Tensor:
        """``a_k``, even in ``k``: the raw parameters averaged with their reflection ``k -> -k``."""
        dims = tuple(range(len(self.shape)))
        reflected = torch.roll(torch.flip(self.raw, dims), (1,) * len(dims), dims)
        return 0.5 * (self.raw + reflected)

    def _transform(self, h: Tensor, sign: float) -> tuple[Tensor, Tensor]:
        a = self.log_eigenvalues()
        dims = tuple(range(1, h.dim()))
        out = torch.fft.ifftn(torch.fft.fftn(h, dim=dims) * torch.exp(sign * a), dim=dims).real
        return out, (sign * a.sum()).expand(h.shape[0])

    def generate(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return self._transform(z, 1.0)

    def renormalize(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self._transform(x, -1.0)


class OddMonotone(nn.Module):
    """Odd, strictly increasing site-wise map ``f`` (see the module docstring) on fields of any
    shape ``(batch, ...)``, with ``n_terms`` tanh terms.

    It starts at ``a_m = a_init`` (not the identity: the map must start bent for its few
    parameters to learn at the flow's learning rate) and ``b_m`` spread over ``[0.5, 4]``.
    """

    #: Newton iterations at most in :meth:`renormalize` (quadratic convergence; a handful suffice).
    MAX_ITER = 50

    def __init__(self, n_terms: int = 4, a_init: float = 0.2) -> None:
        super().__init__()
        if n_terms < 1:
            raise ValueError(f"n_terms must be >= 1, got {n_terms}")
        if a_init <= 0:
            raise ValueError(f"a_init must be > 0, got {a_init}")
        self.log_a = nn.Parameter(torch.full((n_terms,), math.log(a_init)))
        self.log_b = nn.Parameter(torch.linspace(math.log(0.5), math.log(4.0), n_terms))

    def value_and_slope(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """``f(y)`` and ``f'(y)``, both of ``y``'s shape."""
        a, b = self.log_a.exp(), self.log_b.exp()
        t = torch.tanh(y.unsqueeze(-1) * b)
        return y + (a * t).sum(-1), 1.0 + (a * b * (1.0 - t * t)).sum(-1)

    def generate(self, y: Tensor) -> tuple[Tensor, Tensor]:
        x, slope = self.value_and_slope(y)
        return x, slope.log().flatten(1).sum(1)

    def renormalize(self, x: Tensor) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            reach = self.log_a.exp().sum()  # |f(y) - y| < sum a, so the root lies in x -+ reach
            lo, hi, y = x - reach, x + reach, x.clone()
            tol = 4 * torch.finfo(x.dtype).eps
            for _ in range(self.MAX_ITER):
                fy, slope = self.value_and_slope(y)
                residual = fy - x
                lo = torch.where(residual < 0, y, lo)
                hi = torch.where(residual > 0, y, hi)
                step = y - residual / slope
                y = torch.where((step > lo) & (step < hi), step, 0.5 * (lo + hi))
                if bool((residual.abs() <= tol * (1 + x.abs())).all()):
                    break
        fy, slope = self.value_and_slope(y)
        y = y - (fy - x) / slope  # one differentiable Newton step: exact first derivatives
        return y, -self.value_and_slope(y)[1].log().flatten(1).sum(1)
