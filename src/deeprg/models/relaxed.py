"""Continuous target densities for normalizing flows (torch).

Every target follows the :class:`Target` protocol: an ``event_shape`` (the lattice shape), an
unnormalized log-density ``log_prob_unnormalized(x)`` of fields ``x`` of shape
``(batch, *event_shape)`` returning ``(batch,)``, and ``exact_ln_z``, the logarithm of the integral
of ``exp(log_prob_unnormalized)`` over ``R^N`` where it is known (else ``None``), which is the exact
lower bound of a flow's variational free energy ``F = -ln Z``.

* :class:`RelaxedIsing` - the continuous relaxation of the Ising model used by NeuralRG
  (Li & Wang, PRL 121, 260601 (2018), Eq. 7)::

      ln pi(x) = -x^T (K + alpha I)^{-1} x / 2 + sum_i ln cosh(x_i),

  with ``K`` the coupling matrix ``lattice.coupling_matrix(K)`` (so that the Ising weight is
  ``exp(s^T K s / 2) = exp(-H(s))`` in the convention of :mod:`deeprg.models.ising`) and ``alpha``
  an offset making ``A = K + alpha I`` positive definite. Writing
  ``prod_i cosh(x_i) = 2^{-N} sum_s exp(s.x)`` and doing each Gaussian integral,
  ``int dx exp(-x^T A^{-1} x / 2 + s.x) = (2 pi)^{N/2} det(A)^{1/2} exp(s^T A s / 2)`` with
  ``s^T A s = s^T K s + alpha N``, gives::

      ln Z = ln Z_Ising + (1/2) ln det(K + alpha I) + (N/2) [ln(pi/2) + alpha],

  the seed's ``-ln Z = -ln Z_Ising - (1/2) ln det(K + alpha I) + (N/2)[ln(2/pi) - alpha]``.
  Given ``x`` the spins are independent: ``pi(s|x) = prod_i 1 / (1 + exp(-2 s_i x_i))``, and the
  marginal of ``s`` under ``pi(s|x) pi(x)`` is the Boltzmann distribution ``exp(s^T K s / 2)``.
* :class:`GaussianTarget` - a correlated Gaussian ``-x^T P x / 2`` (exactly solvable test target).

**Reference samplers (optional part of the protocol).** A target may also offer exact samples of
its normalized density through ``sample_reference(n, seed) -> (x, info)``: ``x`` of shape
``(n, *event_shape)`` float64, ``info`` a dict with at least ``tau_int`` (integrated
autocorrelation time of the samples in their order, 1/2 for independent ones), ``n_chains`` (the
samples are ordered step-major: ``x.reshape(n // n_chains, n_chains, *event_shape)`` is
``(steps, chains)``) and ``seconds``. :func:`reference_sampler` says whether a target has one.
:class:`RelaxedIsing` draws them from the mixture form of Eq. 7: completing the square in
``-x^T A^{-1} x / 2 + s.x`` gives ``-(x - A s)^T A^{-1} (x - A s) / 2 + s^T A s / 2`` with
``s^T A s = s^T K s + alpha N``, so::

    pi(x) = 2^{-N} sum_s exp(-x^T A^{-1} x / 2 + s.x)
          = 2^{-N} e^{alpha N / 2} (2 pi)^{N/2} det(A)^{1/2} sum_s N(x; A s, A) exp(s^T K s / 2),

a mixture over Ising configurations ``s`` with Boltzmann weights of Gaussians of mean ``A s`` and
covariance ``A``: draw ``s`` from a cluster Monte Carlo sampler, then ``x = A s + B eps`` with
``eps ~ N(0, I)`` and any ``B B^T = A`` (``A^{1/2}``, or ``chol(A)`` on the dense path). Hence
``E[x] = 0`` and ``Cov x = A + A <s s^T> A``.
:class:`GaussianTarget` offers its exact :meth:`GaussianTarget.sample`.

**Large lattices.** On the periodic hypercubic lattices of :class:`~deeprg.lattice.Lattice`,
``A = K + alpha I`` (and ``mass I + c * Laplacian`` of :meth:`GaussianTarget.lattice_correlated`)
commutes with translations, so it is a convolution diagonalized by the FFT
(:mod:`deeprg.models.circulant`). By default (``method="fft"``) :class:`RelaxedIsing` holds only
the eigenvalues of ``A`` (a float64 buffer of about ``N / 2`` numbers): ``alpha`` from the lowest
eigenvalue, ``ln det A`` from all of them, ``x^T A^{-1} x`` by one real FFT per field, reference
samples by FFTs; nothing is ``N x N``, so 128 x 128 and beyond fit. ``method="dense"`` keeps the
``N x N`` matrices (``eigh``, the precision matrix, Cholesky), the reference for tests and
benchmarks, for lattices up to a few thousand sites. :class:`GaussianTarget` is dense unless it
is given a :class:`~deeprg.models.circulant.CirculantOperator` as its precision
(``lattice_correlated(..., method="fft")``).

Buffers are float64 (so ``module.to(device)`` moves them) and are converted to the dtype and
device of ``x`` once and kept (:class:`~deeprg.models.circulant.CastCache`).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from deeprg.lattice import Lattice
from deeprg.mc.samplers import SAMPLERS, make_sampler
from deeprg.mc.stats import integrated_autocorr_time
from deeprg.models.circulant import CastCache, CirculantOperator, adjacency_kernel, circulant_spectrum
from deeprg.models.exact import exact_solution
from deeprg.models.ising import parse_coupling

__all__ = ["AUTO_THIN_IN_TAU", "METHODS", "GaussianTarget", "RelaxedIsing", "Target", "log_cosh", "reference_sampler"]

#: ``thin="auto"`` of :meth:`RelaxedIsing.sample_reference` keeps one configuration every
#: ``ceil(AUTO_THIN_IN_TAU * tau)`` updates, ``tau`` the pilot's autocorrelation time of the energy:
#: for exponential decay the saved samples are then correlated by ``exp(-4) = 0.018`` (``tau_int``
#: about 0.52 samples).
AUTO_THIN_IN_TAU = 4.0

_LN2 = math.log(2.0)

#: The ``method`` of :class:`RelaxedIsing`: ``"fft"`` (circulant operator, ``O(N)`` memory) or
#: ``"dense"`` (``N x N`` matrices, the reference path).
METHODS = ("fft", "dense")


@runtime_checkable
class Target(Protocol):
    """The protocol every continuous target density of deeprg follows.

    Attributes
    ----------
    event_shape:
        Shape of one field, the lattice shape, e.g. ``(L, L)``; ``N = prod(event_shape)``.
    exact_ln_z:
        ``ln`` of ``int_{R^N} exp(log_prob_unnormalized(x)) dx``, or ``None`` if it is unknown.
    """

    event_shape: tuple[int, ...]
    exact_ln_z: float | None

    def log_prob_unnormalized(self, x: Tensor) -> Tensor:
        """Unnormalized log-density of ``x`` of shape ``(batch, *event_shape)``; returns ``(batch,)``
        in the dtype and on the device of ``x``, differentiable in ``x``."""
        ...


def _flatten_batch(x: Tensor, event_shape: tuple[int, ...]) -> Tensor:
    """Check that ``x`` is a floating ``(batch, *event_shape)`` tensor; return it as ``(batch, N)``."""
    if not isinstance(x, Tensor) or not torch.is_floating_point(x):
        raise TypeError(f"x must be a floating-point torch tensor, got {type(x).__name__}"
                        + (f" of dtype {x.dtype}" if isinstance(x, Tensor) else ""))
    if x.dim() != len(event_shape) + 1 or tuple(x.shape[1:]) != tuple(event_shape):
        raise ValueError(f"x must have shape (batch, {', '.join(map(str, event_shape))}), "
                         f"got {tuple(x.shape)}")
    return x.reshape(x.shape[0], -1)


def _quadratic_form(flat: Tensor, matrix: Tensor) -> Tensor:
    """``x^T M x`` for each row of ``flat`` ``(batch, N)``, in ``flat``'s dtype; shape ``(batch,)``.
    ``matrix`` must already have ``flat``'s dtype and device (see :class:`~deeprg.models.circulant.CastCache`)."""
    return ((flat @ matrix) * flat).sum(dim=-1)


def log_cosh(x: Tensor) -> Tensor:
    """``ln cosh(x)`` elementwise, stable for any ``|x|``: ``|x| + log1p(exp(-2|x|)) - ln 2``."""
    a = x.abs()
    return a + torch.log1p(torch.exp(-2.0 * a)) - _LN2


class RelaxedIsing(torch.nn.Module):
    """The continuous relaxation of the Ising model, Li & Wang (2018) Eq. 7.

    ``ln pi(x) = -x^T (K + alpha I)^{-1} x / 2 + sum_i ln cosh(x_i)`` for fields ``x`` of shape
    ``(batch, *lattice.shape)``, where ``K = lattice.coupling_matrix(K)`` is the coupling matrix of
    ``H = -K sum_<ij> s_i s_j`` (bond convention of :class:`~deeprg.lattice.Lattice`).

    Parameters
    ----------
    lattice:
        Periodic lattice (d = 1, 2, 3).
    K:
        Coupling ``beta J``, finite and > 0 (``'critical'`` gives ``K_C``); else ``ValueError``.
    min_eigenvalue:
        Choose ``alpha`` so that the lowest eigenvalue of ``K + alpha I`` equals this value
        (> 0; default 0.1, the choice of the NeuralRG code). Ignored when ``alpha`` is given.
    alpha:
        Explicit offset; ``K + alpha I`` must be positive definite (lowest eigenvalue above
        ``1e-10 * max(1, ||K||)``), else ``ValueError``.
    method:
        ``"fft"`` (default): ``A = K + alpha I`` is circulant on the periodic lattice and is held
        as its eigenvalues ``alpha + K sum_mu 2 cos(2 pi k_mu / L_mu)``
        (:class:`~deeprg.models.circulant.CirculantOperator`); no ``N x N`` matrix is ever
        formed (``O(N)`` memory, ``O(N log N)`` per field), so any lattice size works.
        ``"dense"``: the ``N x N`` precision matrix from ``eigh`` (the reference path, a few
        thousand sites at most). Both give the same ``alpha``, ``ln_det``, ``exact_ln_z`` and
        log-density to rounding. Else ``ValueError``.

    Attributes
    ----------
    event_shape: ``lattice.shape``.
    n_sites: ``N``.
    method: ``"fft"`` or ``"dense"``.
    operator: the :class:`~deeprg.models.circulant.CirculantOperator` ``A`` (``method="fft"``),
        ``None`` for ``method="dense"``.
    precision: only for ``method="dense"``: float64 buffer ``(N, N)``, ``(K + alpha I)^{-1}``
        (``AttributeError`` naming the alternatives for ``method="fft"``).
    lowest_eigenvalue: the lowest eigenvalue of ``K + alpha I``.
    ln_det: ``ln det(K + alpha I)``.
    ln_z_ising: exact ``ln Z_Ising`` (Kaufman in 2D, transfer matrix in 1D), ``None`` in 3D.
    exact_ln_z: ``ln Z_Ising + ln_det / 2 + (N/2)[ln(pi/2) + alpha]``, ``None`` in 3D.
    """

    def __init__(self, lattice: Lattice, K: float, *, min_eigenvalue: float = 0.1,
                 alpha: float | None = None, method: str = "fft") -> None:
        super().__init__()
        if not isinstance(lattice, Lattice):
            raise TypeError(f"lattice must be a deeprg Lattice, got {type(lattice).__name__}")
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        self._lattice = lattice
        self._K = parse_coupling(K, "K")
        self._method = method
        if method == "dense":
            coupling = lattice.coupling_matrix(self._K)
            eigvals, eigvecs = np.linalg.eigh(coupling)
            lowest, largest = float(eigvals[0]), float(np.abs(eigvals).max())
        else:
            spectrum = self._K * circulant_spectrum(adjacency_kernel(lattice))  # of K * adjacency
            lowest, largest = float(spectrum.min()), float(np.abs(spectrum).max())
        # numerically positive definite: a singular or nearly singular A would make the
        # precision matrix meaningless
        tol = 1e-10 * max(1.0, largest)
        if alpha is None:
            m = float(min_eigenvalue)
            if not math.isfinite(m) or m <= tol:
                raise ValueError(f"min_eigenvalue must be a finite number > {tol:.3g} (1e-10 times the coupling "
                                 f"matrix's largest |eigenvalue|, at least 1e-10), got {min_eigenvalue!r}")
            self._alpha = m - lowest
        else:
            a = float(alpha)
            if not math.isfinite(a) or lowest + a <= tol:
                raise ValueError(
                    f"alpha={alpha!r} does not make K + alpha I positive definite: its lowest "
                    f"eigenvalue would be {lowest + a:.6g} (need alpha > {-lowest:.6g})")
            self._alpha = a
        if method == "dense":
            w = eigvals + self._alpha  # eigenvalues of A = K + alpha I, all > 0
            precision = (eigvecs / w) @ eigvecs.T
            precision = 0.5 * (precision + precision.T)
            self.register_buffer("precision", torch.from_numpy(precision).to(torch.float64))
            self._precision_like = CastCache()
            self.operator: CirculantOperator | None = None
            self.ln_det: float = float(np.sum(np.log(w)))
        else:
            self.operator = CirculantOperator(spectrum + self._alpha)
            self.ln_det = float(self.operator.ln_det)
        self.lowest_eigenvalue: float = lowest + self._alpha
        self.event_shape: tuple[int, ...] = tuple(lattice.shape)
        self.n_sites: int = lattice.n_sites
        self.ln_z_ising: float | None = _ising_ln_z(lattice, self._K)
        n = self.n_sites
        self.exact_ln_z: float | None = (
            None if self.ln_z_ising is None
            else self.ln_z_ising + 0.5 * self.ln_det + 0.5 * n * (math.log(math.pi / 2) + self._alpha)
        )

    def __getattr__(self, name: str):
        if name == "precision" and self.__dict__.get("_method") == "fft":
            raise AttributeError(
                "RelaxedIsing(method='fft') holds no dense precision matrix (A^{-1} is applied by FFT): "
                "use target.operator (solve, apply, quadratic_inverse, to_dense on small lattices) "
                "or RelaxedIsing(..., method='dense')")
        return super().__getattr__(name)

    @property
    def lattice(self) -> Lattice:
        return self._lattice

    @property
    def K(self) -> float:
        """The coupling ``beta J`` (the matrix is ``lattice.coupling_matrix(K)``)."""
        return self._K

    @property
    def alpha(self) -> float:
        """The diagonal offset of ``K + alpha I``."""
        return self._alpha

    @property
    def method(self) -> str:
        """``"fft"`` (the circulant :attr:`operator`) or ``"dense"`` (the ``N x N`` :attr:`precision`)."""
        return self._method

    def _device(self) -> torch.device:
        return self.operator.eigenvalues.device if self.operator is not None else self.precision.device

    def log_prob_unnormalized(self, x: Tensor) -> Tensor:
        """``ln pi(x)`` of Eq. 7 for ``x`` of shape ``(batch, *event_shape)``; returns ``(batch,)``
        in ``x``'s dtype and device (differentiable in ``x``)."""
        flat = _flatten_batch(x, self.event_shape)
        if self.operator is not None:
            quadratic = self.operator.quadratic_inverse(x)
        else:
            quadratic = _quadratic_form(flat, self._precision_like(self.precision, flat))
        return -0.5 * quadratic + log_cosh(flat).sum(dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        """Alias of :meth:`log_prob_unnormalized`."""
        return self.log_prob_unnormalized(x)

    def spin_probability(self, x: Tensor) -> Tensor:
        """``pi(s_i = +1 | x) = 1 / (1 + exp(-2 x_i))``, same shape as ``x``."""
        return torch.sigmoid(2.0 * x)

    @torch.no_grad()
    def sample_spins(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Draw Ising spins ``s ~ pi(s|x) = prod_i 1 / (1 + exp(-2 s_i x_i))``.

        ``x``: ``(batch, *event_shape)`` float tensor. ``generator``: a ``torch.Generator`` on
        ``x``'s device for reproducible draws (``None``: torch's global generator).
        Returns int8 +-1 spins of shape ``(batch, *event_shape)`` on ``x``'s device; ``E[s|x] =
        tanh(x)``.
        """
        _flatten_batch(x, self.event_shape)
        u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        up = u < self.spin_probability(x)
        return torch.where(up, 1, -1).to(torch.int8)

    @torch.no_grad()
    def sample_reference(self, n: int, seed: int, *, sampler: str = "wolff", n_chains: int = 1,
                         thin: int | str = "auto", burn_in: int | None = None) -> tuple[Tensor, dict]:
        """Exact samples of the normalized ``pi(x)``: Ising configurations ``s`` from a cluster
        Monte Carlo sampler, then ``x = A s + B eps``, ``A = K + alpha I``, ``eps ~ N(0, I)``
        (the mixture form of Eq. 7 in the module docstring), with ``B B^T = A``: the symmetric
        square root ``A^{1/2}`` by FFT for ``method="fft"``, the Cholesky factor for
        ``method="dense"``. Both give ``x | s ~ N(A s, A)``, so both are exact, but the two
        methods give different samples for the same seed (the same ``s`` and ``eps``); each is
        reproducible for a given seed.

        Parameters
        ----------
        n:
            Number of fields, >= 1.
        seed:
            Integer >= 0. Chain ``c`` uses ``SeedSequence(seed).spawn(n_chains)[c]`` (the samplers'
            convention); the noise ``eps`` uses child ``n_chains`` of the same spawn.
        sampler:
            One of :data:`deeprg.mc.SAMPLERS` (``"wolff"``, ``"sw"``, ``"metropolis"``).
        n_chains:
            Independent Markov chains; each saves ``ceil(n / n_chains)`` configurations (the last
            step is cut to ``n`` samples).
        thin:
            Updates between saved configurations (int >= 1), or ``"auto"``: after the default
            burn-in (with its pilot, see :meth:`deeprg.mc.Sampler.stream`) keep one every
            ``ceil(AUTO_THIN_IN_TAU * tau)`` updates, ``tau`` the pilot's integrated
            autocorrelation time of the energy in updates.
        burn_in:
            Updates per chain discarded first (``None``: the sampler's default).

        Returns
        -------
        ``(x, info)``: ``x`` ``(n, *event_shape)`` float64 on the buffers' device, ordered
        step-major, ``x[t * n_chains + c]`` being sample ``t`` of chain ``c`` (so
        ``x.reshape(-1, n_chains, *event_shape)`` is ``(steps, chains)`` when ``n_chains`` divides
        ``n``). ``info``: ``sampler``, ``n_chains``, ``thin`` (updates), ``burn_in`` (updates),
        ``pilot_tau_int`` (updates; ``None`` for an explicit ``thin``), ``tau_int`` (integrated
        autocorrelation time of the saved configurations in units of saved samples, the larger of
        those of the energy and of ``|M|``, pooled over chains, rough for chains shorter than
        ``50 tau_int``; 1/2 with one sample per chain) to be used for error bars (``x`` is no more
        correlated than ``s``), ``tau_int_energy``,
        ``tau_int_abs_magnetization`` and ``seconds`` (wall time).
        """
        t0 = time.perf_counter()
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"n must be an integer >= 1, got {n!r}")
        if isinstance(n_chains, bool) or not isinstance(n_chains, (int, np.integer)) or n_chains < 1:
            raise ValueError(f"n_chains must be an integer >= 1, got {n_chains!r}")
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
        if not (thin == "auto" or (isinstance(thin, (int, np.integer)) and not isinstance(thin, bool)
                                   and thin >= 1)):
            raise ValueError(f"thin must be an integer >= 1 or 'auto', got {thin!r}")
        n, n_chains = int(n), int(n_chains)
        steps = -(-n // n_chains)
        chains = make_sampler(sampler, self._lattice, self._K, seed=seed, n_chains=n_chains)
        pilot_tau = None
        if thin == "auto":
            pilot = chains.run(n_chains, thin="auto", burn_in=burn_in, keep_spins=False)
            pilot_tau = pilot.pilot_tau_int
            thin = max(1, math.ceil(AUTO_THIN_IN_TAU * pilot_tau))
            burn_in = pilot.burn_in
            run = chains.run(steps * n_chains, thin=thin, burn_in=0)
        else:
            run = chains.run(steps * n_chains, thin=int(thin), burn_in=burn_in)
            burn_in = run.burn_in
        tau_e = _saved_tau(run.series["energy"])
        tau_m = _saved_tau(np.abs(run.series["magnetization"]))
        # (chains, steps, N) -> step-major (steps * chains, N), cut to n
        spins = np.swapaxes(run.spins.reshape(n_chains, steps, -1), 0, 1).reshape(steps * n_chains, -1)[:n]
        noise_rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(n_chains + 1)[-1])
        if self.operator is None:
            a = self._lattice.coupling_matrix(self._K) + self._alpha * np.eye(self.n_sites)
            eps = noise_rng.standard_normal((n, self.n_sites))
            x = torch.from_numpy(spins.astype(np.float64) @ a + eps @ np.linalg.cholesky(a).T)
        else:
            x = self._mixture_fields(spins, noise_rng)
        info = {"sampler": sampler, "n_chains": n_chains, "thin": int(thin), "burn_in": int(burn_in),
                "pilot_tau_int": pilot_tau, "tau_int": max(tau_e, tau_m), "tau_int_energy": tau_e,
                "tau_int_abs_magnetization": tau_m, "seconds": time.perf_counter() - t0}
        return x.reshape((n,) + self.event_shape).to(self._device()), info

    #: Fields computed at once by :meth:`_mixture_fields` (bounds its FFT temporaries).
    _CHUNK = 256

    def _mixture_fields(self, spins: np.ndarray, noise_rng: np.random.Generator) -> Tensor:
        """``x = A s + A^{1/2} eps`` by FFT for spins ``(n, N)``, ``eps`` drawn row by row from
        ``noise_rng`` (the same stream as one ``(n, N)`` draw); float64 ``(n, N)`` on the CPU."""
        n = len(spins)
        out = torch.empty((n, self.n_sites), dtype=torch.float64)
        device = self._device()
        for start in range(0, n, self._CHUNK):
            stop = min(n, start + self._CHUNK)
            s = torch.from_numpy(spins[start:stop].astype(np.float64)).reshape((-1,) + self.event_shape)
            eps = torch.from_numpy(noise_rng.standard_normal((stop - start, self.n_sites)))
            x = self.operator.apply(s.to(device)) + self.operator.sqrt_apply(eps.reshape(s.shape).to(device))
            out[start:stop] = x.reshape(stop - start, -1).cpu()
        return out

    def extra_repr(self) -> str:
        return f"lattice={self._lattice}, K={self._K:.6g}, alpha={self._alpha:.6g}, method={self._method!r}"


def _saved_tau(series: np.ndarray) -> float:
    """``tau_int`` (in saved samples) of a ``(chains, steps)`` series, 1/2 with one step (chains
    are independent). The warnings of :func:`~deeprg.mc.stats.integrated_autocorr_time` are
    silenced: the value is a report, rough for chains shorter than ``50 tau_int``."""
    if series.shape[1] < 2:
        return 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return integrated_autocorr_time(series)


def _ising_ln_z(lattice: Lattice, K: float) -> float | None:
    """Exact ``ln Z_Ising`` of ``lattice`` (1D or 2D), ``None`` in 3D."""
    exact = exact_solution(lattice, K)
    return None if exact is None else exact.ln_z


class GaussianTarget(torch.nn.Module):
    """A correlated zero-mean Gaussian: ``log_prob_unnormalized(x) = -x^T P x / 2``.

    Parameters
    ----------
    event_shape:
        Shape of one field; ``N = prod(event_shape)``.
    precision, covariance:
        Exactly one, an ``(N, N)`` symmetric positive definite matrix (array or tensor); the
        covariance is inverted. ``ValueError`` if it is not symmetric positive definite. The
        precision may instead be a :class:`~deeprg.models.circulant.CirculantOperator` of shape
        ``event_shape`` (a translation-invariant Gaussian on a periodic lattice): then nothing
        ``N x N`` is formed, the log-density and samples go through FFTs.

    Attributes
    ----------
    precision: float64 buffer ``(N, N)``. covariance: float64 buffer ``(N, N)``, ``P^{-1}``
        (both only for a matrix; ``AttributeError`` for an operator).
    operator: the :class:`~deeprg.models.circulant.CirculantOperator` ``P``, or ``None``.
    exact_ln_z: ``(N/2) ln 2 pi - (1/2) ln det P``.
    """

    def __init__(self, event_shape: tuple[int, ...], *, precision=None, covariance=None) -> None:
        super().__init__()
        self.event_shape: tuple[int, ...] = tuple(int(s) for s in event_shape)
        if not self.event_shape or any(s < 1 for s in self.event_shape):
            raise ValueError(f"event_shape must be a non-empty tuple of positive ints, got {event_shape!r}")
        n = int(np.prod(self.event_shape))
        if (precision is None) == (covariance is None):
            raise ValueError("give exactly one of precision and covariance")
        self.n_sites: int = n
        if isinstance(precision, CirculantOperator):
            if precision.shape != self.event_shape:
                raise ValueError(f"precision operator has shape {precision.shape}, need event_shape {self.event_shape}")
            if precision.lowest <= 0:
                raise ValueError(f"precision must be positive definite; its lowest eigenvalue is "
                                 f"{precision.lowest:.6g}")
            self.operator: CirculantOperator | None = precision
            self.ln_det_precision: float = float(precision.ln_det)
            self.exact_ln_z: float | None = 0.5 * n * math.log(2.0 * math.pi) - 0.5 * self.ln_det_precision
            return
        name = "precision" if precision is not None else "covariance"
        m = _as_numpy(precision if precision is not None else covariance)
        if m.shape != (n, n):
            raise ValueError(f"{name} must have shape ({n}, {n}) for event_shape {self.event_shape}, "
                             f"got {m.shape}")
        if not np.all(np.isfinite(m)) or not np.allclose(m, m.T, rtol=1e-10, atol=1e-12):
            raise ValueError(f"{name} must be a finite symmetric matrix")
        m = 0.5 * (m + m.T)
        chol = _cholesky(m, name)
        ln_det_m = 2.0 * float(np.sum(np.log(np.diag(chol))))
        inv = np.linalg.inv(m)
        inv = 0.5 * (inv + inv.T)
        p, cov = (m, inv) if name == "precision" else (inv, m)
        ln_det_p = ln_det_m if name == "precision" else -ln_det_m
        self.register_buffer("precision", torch.from_numpy(p))
        self._precision_like = CastCache()
        self.register_buffer("covariance", torch.from_numpy(cov))
        self.register_buffer("_scale", torch.from_numpy(np.linalg.cholesky(cov)))
        self.operator = None
        self.ln_det_precision = ln_det_p
        self.exact_ln_z = 0.5 * n * math.log(2.0 * math.pi) - 0.5 * ln_det_p

    def __getattr__(self, name: str):
        if name in ("precision", "covariance", "_scale") and "operator" in self.__dict__.get("_modules", {}):
            raise AttributeError(
                f"a GaussianTarget with a circulant precision operator holds no dense {name} matrix: "
                "use target.operator (apply, solve, quadratic, to_dense on small lattices)")
        return super().__getattr__(name)

    @classmethod
    def lattice_correlated(cls, lattice: Lattice, c: float = 1.0, *, mass: float = 1.0,
                           method: str = "dense") -> GaussianTarget:
        """Translation-invariant Gaussian on ``lattice``: ``P = mass I + c L`` with the graph
        Laplacian ``L = 2d I - A`` (``A`` = :meth:`Lattice.adjacency`), i.e. a free lattice field
        ``sum_i mass x_i^2 / 2 + c sum_<ij> (x_i - x_j)^2 / 2``; ``c >= 0``, ``mass > 0``. The
        correlation length grows like ``sqrt(c / mass)``. ``method``: ``"dense"`` (default; the
        ``N x N`` :attr:`precision` and :attr:`covariance`) or ``"fft"`` (``P`` as a
        :class:`~deeprg.models.circulant.CirculantOperator` with eigenvalues
        ``mass + c sum_mu (2 - 2 cos(2 pi k_mu / L_mu))``, for large lattices)."""
        c, mass = float(c), float(mass)
        if not math.isfinite(c) or c < 0:
            raise ValueError(f"c must be a finite number >= 0, got {c!r}")
        if not math.isfinite(mass) or mass <= 0:
            raise ValueError(f"mass must be a finite number > 0, got {mass!r}")
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if method == "fft":
            spectrum = mass + c * (2 * lattice.d - circulant_spectrum(adjacency_kernel(lattice)))
            return cls(lattice.shape, precision=CirculantOperator(spectrum))
        adjacency = lattice.adjacency()
        laplacian = 2 * lattice.d * np.eye(lattice.n_sites) - adjacency
        return cls(lattice.shape, precision=mass * np.eye(lattice.n_sites) + c * laplacian)

    def log_prob_unnormalized(self, x: Tensor) -> Tensor:
        """``-x^T P x / 2`` for ``x`` of shape ``(batch, *event_shape)``; returns ``(batch,)`` in
        ``x``'s dtype and device."""
        flat = _flatten_batch(x, self.event_shape)
        if self.operator is not None:
            return -0.5 * self.operator.quadratic(x)
        return -0.5 * _quadratic_form(flat, self._precision_like(self.precision, flat))

    def forward(self, x: Tensor) -> Tensor:
        """Alias of :meth:`log_prob_unnormalized`."""
        return self.log_prob_unnormalized(x)

    def log_prob(self, x: Tensor) -> Tensor:
        """Normalized log-density ``-x^T P x / 2 - exact_ln_z``, shape ``(batch,)``."""
        return self.log_prob_unnormalized(x) - self.exact_ln_z

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, *,
               dtype: torch.dtype = torch.float64) -> Tensor:
        """``n`` exact samples, shape ``(n, *event_shape)``, on the buffers' device: ``C z`` with
        ``z ~ N(0, I)`` and ``C C^T = P^{-1}`` (the Cholesky factor of the covariance, or ``P^{-1/2}``
        by FFT for an operator, which gives different samples for the same generator)."""
        if self.operator is not None:
            device = self.operator.eigenvalues.device
            z = torch.randn((int(n),) + self.event_shape, generator=generator, dtype=dtype, device=device)
            return self.operator.power_apply(z, -0.5)
        scale = self._scale.to(dtype)
        z = torch.randn((int(n), self.n_sites), generator=generator, dtype=dtype, device=scale.device)
        return (z @ scale.T).reshape((int(n),) + self.event_shape)

    def sample_reference(self, n: int, seed: int) -> tuple[Tensor, dict]:
        """The reference-sampler protocol (module docstring): ``n`` independent exact samples
        ``(n, *event_shape)`` float64 from :meth:`sample` with a generator seeded by ``seed``;
        ``info = {"n_chains": 1, "tau_int": 0.5, "seconds": ...}``."""
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"n must be an integer >= 1, got {n!r}")
        t0 = time.perf_counter()
        device = self.operator.eigenvalues.device if self.operator is not None else self._scale.device
        generator = torch.Generator(device=device).manual_seed(int(seed))
        x = self.sample(int(n), generator)
        return x, {"n_chains": 1, "tau_int": 0.5, "seconds": time.perf_counter() - t0}


def reference_sampler(target, *, required: bool = False) -> Callable[[int, int], Tensor] | None:
    """The target's exact sampler as ``sample(n, seed) -> x`` ``(n, *event_shape)`` float64 (the
    ``x`` of ``target.sample_reference(n, seed)``; see the module docstring), or ``None`` when the
    target has no ``sample_reference`` method. With ``required=True`` a target without one raises
    a ``ValueError`` that says to sample ``pi`` by latent HMC instead
    (:func:`deeprg.flows.sampling.hmc_in_space` or :func:`deeprg.flows.estimators.latent_log_prob`
    with :func:`deeprg.mc.hmc.hmc`), which is exact for any target."""
    method = getattr(target, "sample_reference", None)
    if callable(method):
        return lambda n, seed: method(n, seed)[0]
    if required:
        raise ValueError(
            f"the target {type(target).__name__} has no exact reference sampler (no sample_reference "
            "method); sample pi by latent HMC instead (deeprg.flows.sampling.hmc_in_space, or "
            "deeprg.mc.hmc.hmc on deeprg.flows.estimators.latent_log_prob), which is exact for any target")
    return None


def _as_numpy(m) -> np.ndarray:
    if isinstance(m, Tensor):
        m = m.detach().cpu().numpy()
    return np.array(m, dtype=np.float64)


def _cholesky(m: np.ndarray, name: str) -> np.ndarray:
    try:
        return np.linalg.cholesky(m)
    except np.linalg.LinAlgError:
        lowest = float(np.linalg.eigvalsh(m)[0])
        raise ValueError(f"{name} must be positive definite; its lowest eigenvalue is {lowest:.6g}") from None
