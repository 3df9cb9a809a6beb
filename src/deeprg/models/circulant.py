"""Translation-invariant (circulant) symmetric operators on periodic lattices, applied by FFT.

On a periodic lattice of shape ``(L_0, ..., L_{d-1})`` a real matrix ``A`` that commutes with every
lattice translation is a periodic convolution, ``(A x)_i = sum_j c(j - i) x_j`` with the kernel
``c`` (row 0 of ``A``, laid out on the lattice shape, offsets taken modulo ``L_mu``). When ``A``
is symmetric (``c(r) = c(-r)``) the discrete Fourier transform diagonalizes it with the real
eigenvalues ``lam(k) = sum_r c(r) cos(2 pi k.r / L)``, ``k`` on the same shape (the
"spectrum"; ``numpy.fft.fftn(c).real``). So ``A^p x = IFFT(lam^p FFT(x))`` for any power ``p``, in
``O(N log N)`` time and ``O(N)`` memory, ``N = prod L_mu``, with no ``N x N`` matrix.

* :func:`adjacency_kernel` - row 0 of :meth:`deeprg.lattice.Lattice.adjacency` from the lattice's
  own bonds, so the bond conventions (two bonds on an extent of 2) carry over exactly: for
  ``A = K * adjacency + alpha I``, ``lam(k) = alpha + K sum_mu 2 cos(2 pi k_mu / L_mu)``.
* :func:`circulant_spectrum` - the eigenvalues of a symmetric kernel.
* :class:`CirculantOperator` - ``A`` from its spectrum: ``apply``, ``solve``, ``sqrt_apply``,
  ``power_apply``, ``quadratic_inverse`` / ``quadratic`` (by Parseval, one real FFT), ``ln_det``,
  ``lowest``; torch, differentiable, on any device and floating dtype.

Shapes: fields are ``(..., *shape)`` - any leading (batch) dimensions, the lattice in the last
``d`` dimensions, sites in row-major order as everywhere in deeprg. The eigenvalues are held as a
float64 buffer of the half spectrum of the real FFT, shape ``(*shape[:-1], shape[-1] // 2 + 1)``
(``torch.fft.rfftn`` layout, about ``N / 2`` numbers), converted once per dtype and device and
kept (:class:`CastCache`), so a training or HMC step does no host-device copies.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from deeprg.lattice import Lattice

__all__ = ["CastCache", "CirculantOperator", "adjacency_kernel", "circulant_spectrum"]


class CastCache:
    """A float64 tensor converted once per dtype and device and kept: converting an N x N matrix
    on every call (11 calls per HMC step) made glibc's heap grow by megabytes per step on large
    lattices (a 32x32 physical-HMC benchmark ran out of 22 GB). Only the latest conversion is
    kept (the key includes the source's storage, so a moved buffer is converted afresh)."""

    def __init__(self) -> None:
        self._copies: dict = {}

    def __call__(self, tensor: Tensor, like: Tensor) -> Tensor:
        if tensor.dtype == like.dtype and tensor.device == like.device:
            return tensor
        key = (tensor.data_ptr(), tensor.device, like.dtype, like.device)
        if key not in self._copies:
            self._copies = {key: tensor.to(device=like.device, dtype=like.dtype)}
        return self._copies[key]


def adjacency_kernel(lattice: Lattice) -> np.ndarray:
    """Row 0 of ``lattice.adjacency()`` as an array of shape ``lattice.shape`` (float64), built in
    ``O(d N)`` from :attr:`Lattice.bonds` without the ``N x N`` matrix: entry ``r`` counts the bonds
    joining site 0 and site ``r`` (2 for ``r = e_mu`` on an extent of 2, as the adjacency does).
    The lattice is translation invariant, so ``adjacency()[i, j] = kernel[(r_j - r_i) mod L]``."""
    bonds = lattice.bonds
    flat = np.zeros(lattice.n_sites)
    np.add.at(flat, bonds[bonds[:, 0] == 0, 1], 1.0)  # bonds (0, j)
    np.add.at(flat, bonds[bonds[:, 1] == 0, 0], 1.0)  # bonds (i, 0)
    return flat.reshape(lattice.shape)


def circulant_spectrum(kernel: np.ndarray) -> np.ndarray:
    """Eigenvalues ``lam(k) = sum_r c(r) exp(-2 pi i k.r / L)`` of the circulant matrix with the
    real kernel ``c`` (shape = lattice shape), as a real float64 array of the same shape.
    ``ValueError`` unless ``c(r) = c(-r)`` (a symmetric matrix, real spectrum)."""
    c = np.asarray(kernel, dtype=np.float64)
    reflected = np.roll(np.flip(c), 1, axis=tuple(range(c.ndim)))  # c(-r)
    if not np.all(np.isfinite(c)) or not np.allclose(c, reflected, rtol=1e-12, atol=1e-14):
        raise ValueError("kernel must be finite and even, c(r) = c(-r) (a symmetric circulant matrix)")
    return np.fft.fftn(0.5 * (c + reflected)).real


class CirculantOperator(torch.nn.Module):
    """A real symmetric circulant ``N x N`` operator ``A`` on a periodic lattice, held as its
    eigenvalues (module docstring).

    Parameters
    ----------
    spectrum:
        The eigenvalues ``lam(k)`` on the lattice shape ``(L_0, ..., L_{d-1})`` (d = 1, 2, 3),
        real, with ``lam(k) = lam(-k)`` (e.g. :func:`circulant_spectrum` of a kernel); array or
        tensor. ``ValueError`` otherwise.

    Attributes
    ----------
    shape: the lattice shape. n_sites: ``N``.
    eigenvalues: float64 buffer, the half spectrum ``lam[..., :L_{d-1} // 2 + 1]`` (rfftn layout).
    lowest, highest: the extreme eigenvalues (floats).
    ln_det: ``ln det A = sum_k ln lam(k)`` when ``A`` is positive definite, else ``None``.

    ``solve``, ``sqrt_apply``, negative powers and ``quadratic_inverse`` need ``A`` positive
    definite (``ValueError`` otherwise); ``sqrt_apply`` is the symmetric square root ``A^{1/2}``.
    """

    def __init__(self, spectrum) -> None:
        super().__init__()
        lam = spectrum.detach().cpu().numpy() if isinstance(spectrum, Tensor) else np.asarray(spectrum)
        lam = np.array(lam, dtype=np.float64)
        if not 1 <= lam.ndim <= 3 or min(lam.shape) < 1:
            raise ValueError(f"spectrum must have 1 to 3 non-empty axes (the lattice shape), got shape {lam.shape}")
        reflected = np.roll(np.flip(lam), 1, axis=tuple(range(lam.ndim)))  # lam(-k)
        if not np.all(np.isfinite(lam)) or not np.allclose(lam, reflected, rtol=1e-12, atol=1e-14):
            raise ValueError("spectrum must be finite and even, lam(k) = lam(-k) (a real symmetric operator)")
        self.shape: tuple[int, ...] = tuple(int(s) for s in lam.shape)
        self.n_sites: int = int(lam.size)
        self.lowest: float = float(lam.min())
        self.highest: float = float(lam.max())
        self.ln_det: float | None = float(np.sum(np.log(lam))) if self.lowest > 0 else None
        half = np.ascontiguousarray(lam[..., : self.shape[-1] // 2 + 1])
        self.register_buffer("eigenvalues", torch.from_numpy(half))
        # Parseval on the half spectrum: the columns 1 .. ceil(L/2) - 1 of the last axis stand
        # for themselves and their mirror images; column 0 (and L/2 for even L) for themselves
        weights = np.full(half.shape[-1], 2.0)
        weights[0] = 1.0
        if self.shape[-1] % 2 == 0:
            weights[-1] = 1.0
        self._parseval = weights
        self._cache: dict = {}
        self._stamp: tuple | None = None

    @classmethod
    def from_lattice(cls, lattice: Lattice, K: float = 1.0, alpha: float = 0.0) -> CirculantOperator:
        """``A = K * lattice.adjacency() + alpha I``: ``lam(k) = alpha + K sum_mu 2 cos(2 pi k_mu / L_mu)``,
        from the lattice's own bonds (:func:`adjacency_kernel`)."""
        return cls(float(K) * circulant_spectrum(adjacency_kernel(lattice)) + float(alpha))

    @property
    def d(self) -> int:
        return len(self.shape)

    def _dims(self, x: Tensor) -> tuple[int, ...]:
        if not isinstance(x, Tensor) or not torch.is_floating_point(x):
            raise TypeError(f"x must be a floating-point torch tensor, got {type(x).__name__}")
        if x.dim() < self.d or tuple(x.shape[x.dim() - self.d:]) != self.shape:
            raise ValueError(f"x must have shape (..., {', '.join(map(str, self.shape))}), got {tuple(x.shape)}")
        return tuple(range(x.dim() - self.d, x.dim()))

    def _need_positive(self, what: str) -> None:
        if self.lowest <= 0:
            raise ValueError(f"{what} needs a positive definite operator; its lowest eigenvalue is {self.lowest:.6g}")

    def _multiplier(self, kind: str, p: float, like: Tensor) -> Tensor:
        """``lam^p`` (``kind = "apply"``) or ``w lam^p`` with the Parseval weights ``w`` (``"quad"``),
        half spectrum, in ``like``'s real dtype and device; computed once per key and kept until
        the buffer moves."""
        buf = self.eigenvalues
        stamp = (buf.data_ptr(), buf.device, buf.dtype)
        if stamp != self._stamp:
            self._cache, self._stamp = {}, stamp
        key = (kind, float(p), like.dtype, like.device)
        if key not in self._cache:
            m = buf.double() if p == 1 else buf.double() ** p
            if kind == "quad":
                m = m * torch.from_numpy(self._parseval).to(m.device)
            self._cache[key] = m.to(device=like.device, dtype=like.dtype)
        return self._cache[key]

    def power_apply(self, x: Tensor, p: float) -> Tensor:
        """``A^p x`` for ``x`` of shape ``(..., *shape)``: ``irfftn(lam^p rfftn(x))`` over the last
        ``d`` dimensions; same shape, dtype and device as ``x``, differentiable in ``x``."""
        dims = self._dims(x)
        if p < 0 or p != int(p):
            self._need_positive(f"A^{p}")
        spectrum = torch.fft.rfftn(x, dim=dims) * self._multiplier("apply", p, x)
        return torch.fft.irfftn(spectrum, s=self.shape, dim=dims)

    def apply(self, x: Tensor) -> Tensor:
        """``A x``."""
        return self.power_apply(x, 1.0)

    def solve(self, x: Tensor) -> Tensor:
        """``A^{-1} x``."""
        return self.power_apply(x, -1.0)

    def sqrt_apply(self, x: Tensor) -> Tensor:
        """``A^{1/2} x`` with the symmetric square root (``A^{1/2} A^{1/2} = A``)."""
        return self.power_apply(x, 0.5)

    def quadratic_power(self, x: Tensor, p: float) -> Tensor:
        """``x^T A^p x`` for each field of ``x`` ``(..., *shape)``; shape ``x.shape[:-d]``, in ``x``'s
        dtype and device, differentiable. By Parseval on one orthonormal real FFT:
        ``sum_k w_k lam(k)^p |X_k|^2``."""
        dims = self._dims(x)
        if p < 0 or p != int(p):
            self._need_positive(f"x^T A^{p} x")
        spectrum = torch.fft.rfftn(x, dim=dims, norm="ortho")
        power = spectrum.real.square() + spectrum.imag.square()
        return (power * self._multiplier("quad", p, x)).sum(dim=dims)

    def quadratic(self, x: Tensor) -> Tensor:
        """``x^T A x`` per field, shape ``x.shape[:-d]``."""
        return self.quadratic_power(x, 1.0)

    def quadratic_inverse(self, x: Tensor) -> Tensor:
        """``x^T A^{-1} x`` per field, shape ``x.shape[:-d]``."""
        return self.quadratic_power(x, -1.0)

    def to_dense(self) -> Tensor:
        """The ``N x N`` float64 matrix (for tests and small lattices only: ``8 N^2`` bytes)."""
        eye = torch.eye(self.n_sites, dtype=torch.float64, device=self.eigenvalues.device)
        return self.apply(eye.reshape((self.n_sites,) + self.shape)).reshape(self.n_sites, self.n_sites)

    def extra_repr(self) -> str:
        ln_det = "None" if self.ln_det is None else f"{self.ln_det:.6g}"
        return f"shape={self.shape}, lowest={self.lowest:.6g}, highest={self.highest:.6g}, ln_det={ln_det}"

