"""Statistics of Monte Carlo time series: every number comes with an error bar.

Conventions
-----------
* A *series* is an array of shape ``(n,)`` (one chain) or ``(chains, n)`` (independent chains of
  equal length); time is the last axis. Chains are pooled: the mean is taken over all
  ``chains * n`` samples and autocorrelations are measured about that pooled mean, so chains
  that have not equilibrated to the same mean show up as a larger ``tau_int`` (conservative).
* Error bars are one standard error of the mean (1 sigma), corrected for autocorrelation:
  ``error = sqrt(variance * 2 tau_int / n_total)``.
* ``tau_int = 1/2 + sum_{t>=1} rho(t)`` is in units of the spacing between stored samples; an
  uncorrelated series has ``tau_int = 1/2``.
* A constant series has zero variance, so ``rho`` is undefined; by convention it is treated as
  uncorrelated: ``rho = (1, 0, 0, ...)``, ``tau_int = 1/2``, ``error = 0``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from scipy import fft

__all__ = [
    "Estimate",
    "BinningResult",
    "autocorrelation",
    "integrated_autocorr_time",
    "binning",
    "estimate",
    "jackknife",
    "format_value_error",
]

#: Series shorter than this many ``tau_int`` per chain give a warning (as in emcee).
_MIN_LENGTH_IN_TAU = 50.0


@dataclass(frozen=True)
class Estimate:
    """A Monte Carlo estimate with its 1-sigma error bar.

    Attributes
    ----------
    mean:
        Estimated value.
    error:
        Standard error of ``mean`` (1 sigma), autocorrelation-corrected.
    variance:
        Sample variance of the underlying series (``ddof=1``, all chains pooled); ``nan`` for
        derived quantities from :func:`jackknife`.
    tau_int:
        Integrated autocorrelation time in units of the sample spacing (``nan`` if unknown).
    n_samples:
        Number of samples used (all chains together).
    """

    mean: float
    error: float
    variance: float
    tau_int: float
    n_samples: int

    def __post_init__(self) -> None:
        for name in ("mean", "error", "variance", "tau_int"):
            object.__setattr__(self, name, float(getattr(self, name)))
        object.__setattr__(self, "n_samples", int(self.n_samples))

    def to_dict(self) -> dict[str, float | int | None]:
        """Plain-Python dict with keys ``mean, error, variance, tau_int, n_samples``.

        Strictly JSON-safe: non-finite floats (``nan``, ``inf``) become ``None``."""
        out: dict[str, float | int | None] = {
            name: (v if math.isfinite(v) else None)
            for name, v in (
                ("mean", self.mean),
                ("error", self.error),
                ("variance", self.variance),
                ("tau_int", self.tau_int),
            )
        }
        out["n_samples"] = self.n_samples
        return out

    def __str__(self) -> str:
        """Physicist notation with two significant digits of error: ``-1.4530(12)`` means
        ``-1.4530 +- 0.0012``; errors >= 10 are written in full, ``12350(120)``. An error of 0
        gives ``mean(0)``, a non-finite error ``mean(nan)``/``mean(inf)``."""
        return format_value_error(self.mean, self.error)


def format_value_error(value: float, error: float) -> str:
    """``value`` with ``error`` in parentheses on its last two significant digits.

    ``format_value_error(-1.45302, 0.00123) == '-1.4530(12)'``; see :meth:`Estimate.__str__`."""
    value, error = float(value), float(error)
    if not math.isfinite(error) or not math.isfinite(value):
        return f"{value:.10g}({error})"
    if error == 0.0:
        return f"{value:.10g}(0)"
    # Exponent of the error *after* rounding to 2 significant digits (0.0996 -> 0.10).
    exponent = math.floor(math.log10(float(f"{abs(error):.1e}")))
    decimals = 1 - exponent
    if decimals > 0:
        return f"{value:.{decimals}f}({round(abs(error) * 10.0**decimals):d})"
    scale = 10.0**-decimals
    return f"{round(value / scale) * scale:.0f}({round(abs(error) / scale) * scale:.0f})"


def _as_chains(x: np.ndarray | list, name: str = "x") -> np.ndarray:
    """Validate a series and return it as float64 of shape ``(chains, n)``."""
    a = np.asarray(x, dtype=np.float64)
    if a.ndim not in (1, 2):
        raise ValueError(f"{name} must have shape (n,) or (chains, n), got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name} is empty (shape {a.shape})")
    n_bad = a.size - int(np.count_nonzero(np.isfinite(a)))
    if n_bad:
        raise ValueError(f"{name} contains {n_bad} non-finite value(s) (nan/inf) out of {a.size}")
    a = np.atleast_2d(a)
    if a.shape[1] < 2:
        raise ValueError(f"{name} needs at least 2 samples per chain, got {a.shape[1]}")
    return a


def _is_constant(a: np.ndarray) -> bool:
    return bool(np.all(a == a.flat[0]))


def autocorrelation(x: np.ndarray) -> np.ndarray:
    """Normalized autocorrelation function ``rho(t)``, ``t = 0 .. n-1``, by FFT.

    Parameters
    ----------
    x:
        Series of shape ``(n,)`` or ``(chains, n)``.

    Returns
    -------
    ``(n,)`` array with ``rho[0] = 1``. The autocovariance uses the standard biased estimator
    ``C(t) = 1/n sum_{i<n-t} (x_i - mu)(x_{i+t} - mu)`` with ``mu`` the mean pooled over all
    chains, averaged over chains; ``rho = C / C(0)``. Constant input gives ``(1, 0, 0, ...)``.
    """
    a = _as_chains(x)
    n = a.shape[1]
    rho = np.zeros(n)
    rho[0] = 1.0
    if _is_constant(a):
        return rho
    centred = a - a.mean()
    n_fft = fft.next_fast_len(2 * n, real=True)  # zero-padding to >= 2n avoids wrap-around
    spectrum = fft.rfft(centred, n=n_fft, axis=1)
    acov = fft.irfft(spectrum.real**2 + spectrum.imag**2, n=n_fft, axis=1)[:, :n].mean(axis=0) / n
    return acov / acov[0]


def integrated_autocorr_time(x: np.ndarray, c: float = 5.0) -> float:
    """Integrated autocorrelation time with Sokal's automatic window.

    ``tau_int(W) = 1/2 + sum_{t=1}^{W} rho(t)`` evaluated at the smallest window ``W >= 1`` with
    ``W >= c * tau_int(W)``.

    Parameters
    ----------
    x:
        Series of shape ``(n,)`` or ``(chains, n)`` (see :func:`autocorrelation` for pooling).
    c:
        Window constant; 5 is adequate for roughly exponential decay, use larger values for
        slower (e.g. critical) decay.

    Returns
    -------
    ``tau_int`` in units of the sample spacing; ``0.5`` for a constant series. A
    :class:`RuntimeWarning` is issued when the chains are shorter than ``50 tau_int`` (the
    estimate is then unreliable) or no window satisfies the criterion (the largest is used).
    """
    if not c > 0:
        raise ValueError(f"window constant c must be > 0, got {c}")
    rho = autocorrelation(x)
    n = rho.size
    taus = 0.5 + np.cumsum(rho[1:])  # taus[W - 1] = tau_int(W), W = 1 .. n-1
    ok = np.arange(1, n) >= c * taus
    if ok.any():
        tau = float(taus[np.argmax(ok)])
    else:
        tau = float(taus[-1])
        warnings.warn(
            f"no Sokal window W <= {n - 1} satisfies W >= {c} tau_int(W); "
            f"tau_int = {tau:.3g} is a lower bound",
            RuntimeWarning,
            stacklevel=2,
        )
    if n < _MIN_LENGTH_IN_TAU * tau:
        warnings.warn(
            f"chain length {n} is less than {_MIN_LENGTH_IN_TAU:g} tau_int "
            f"(tau_int = {tau:.3g}); tau_int and error bars are unreliable",
            RuntimeWarning,
            stacklevel=2,
        )
    return tau


class BinningResult(NamedTuple):
    """Blocking analysis (unpacks as ``bin_sizes, errors, tau_int, plateau``).

    Attributes
    ----------
    bin_sizes:
        ``(levels,)`` int array ``1, 2, 4, ...``.
    errors:
        ``(levels,)`` naive standard error of the mean computed from the bin means at each level.
    tau_int:
        ``(errors[plateau] / errors[0])**2 / 2``.
    plateau:
        Index of the level taken as the plateau.
    """

    bin_sizes: np.ndarray
    errors: np.ndarray
    tau_int: float
    plateau: int


def binning(x: np.ndarray, min_bins: int = 32, c: float = 20.0) -> BinningResult:
    """Blocking analysis by doubling bin sizes (Flyvbjerg-Petersen).

    At level ``k`` each chain is cut into ``m = n // 2^k`` bins of ``2^k`` consecutive samples
    (the earliest ``n - m 2^k`` samples are dropped); the error at that level is
    ``std(bin means, ddof=1) / sqrt(number of bins)`` with the bins of all chains pooled. Levels
    continue while there are at least ``min_bins`` bins in total.

    The binned error of an exponentially correlated series approaches its plateau like
    ``1 - O(tau / bin_size)``, so the plateau is the first level with
    ``bin_size >= c * tau_bin`` where ``tau_bin = (error / errors[0])**2 / 2`` (a relative bias
    of about ``1 / c``). If no level qualifies, the last level is used and a
    :class:`RuntimeWarning` says the result is a lower bound.

    Parameters
    ----------
    x:
        Series of shape ``(n,)`` or ``(chains, n)`` with ``chains * n >= min_bins``.
    min_bins:
        Minimum number of bins (all chains together) at the coarsest level, >= 2.
    c:
        Plateau criterion, see above.
    """
    a = _as_chains(x)
    chains, n = a.shape
    if min_bins < 2:
        raise ValueError(f"min_bins must be >= 2, got {min_bins}")
    if a.size < min_bins:
        raise ValueError(f"binning needs at least min_bins={min_bins} samples, got {a.size}")
    if _is_constant(a):
        return BinningResult(np.array([1]), np.array([0.0]), 0.5, 0)
    sizes, errors = [], []
    size = 1
    while chains * (n // size) >= min_bins:
        m = n // size
        means = a[:, n - m * size :].reshape(chains, m, size).mean(axis=2)
        sizes.append(size)
        errors.append(float(np.std(means, ddof=1) / math.sqrt(means.size)))
        size *= 2
    bin_sizes = np.asarray(sizes)
    err = np.asarray(errors)
    taus = 0.5 * (err / err[0]) ** 2
    ok = bin_sizes >= c * taus
    if ok.any():
        plateau = int(np.argmax(ok))
    else:
        plateau = len(err) - 1
        warnings.warn(
            f"binning reached no plateau (largest bin {bin_sizes[-1]} < {c} tau_bin = "
            f"{c * taus[-1]:.3g}); tau_int = {taus[-1]:.3g} is a lower bound",
            RuntimeWarning,
            stacklevel=2,
        )
    return BinningResult(bin_sizes, err, float(taus[plateau]), plateau)


def estimate(x: np.ndarray, method: str = "tau") -> Estimate:
    """Mean of a series with its autocorrelation-corrected error bar.

    Parameters
    ----------
    x:
        Series of shape ``(n,)`` or ``(chains, n)``; the mean and the variance (``ddof=1``) are
        taken over all samples.
    method:
        ``"tau"``: ``tau_int`` from :func:`integrated_autocorr_time` (Sokal window, ``c = 5``);
        ``"binning"``: ``tau_int`` from the plateau of :func:`binning`.

    Returns
    -------
    :class:`Estimate` with ``error = sqrt(variance * 2 tau_int / n_total)``. A (pathological)
    negative ``tau_int`` estimate from strongly anticorrelated data gives ``error = 0``.
    """
    if method not in ("tau", "binning"):
        raise ValueError(f"method must be 'tau' or 'binning', got {method!r}")
    a = _as_chains(x)
    if _is_constant(a):
        return Estimate(a.flat[0], 0.0, 0.0, 0.5, a.size)
    tau = integrated_autocorr_time(a) if method == "tau" else binning(a).tau_int
    variance = float(np.var(a, ddof=1))
    error = math.sqrt(variance * 2.0 * max(tau, 0.0) / a.size)
    return Estimate(float(a.mean()), error, variance, tau, a.size)


def jackknife(
    func: Callable[..., float], *series: np.ndarray, n_blocks: int = 32
) -> Estimate:
    """Block-jackknife estimate of a (nonlinear) function of sample averages.

    Examples: specific heat per site ``lambda E: K**2 * np.var(E) / N``; Binder ratio
    ``lambda m2, m4: 1 - m4.mean() / (3 * m2.mean()**2)``.

    Blocking: every series has the same shape ``(n,)`` or ``(chains, n)``. The time axis is
    truncated to ``n_blocks * (n // n_blocks)`` samples by dropping the *earliest* samples, then
    cut into ``n_blocks`` contiguous blocks with the same boundaries in every chain; jackknife
    sample ``j`` leaves out block ``j`` of every chain. ``func`` receives one 1-D array per series
    holding the retained samples of all chains concatenated (chain by chain, in time order), so
    it must not depend on sample order. Blocks should be much longer than ``tau_int``.

    Returns
    -------
    :class:`Estimate` with the bias-corrected mean
    ``n_b f(all) - (n_b - 1) mean_j f(without j)``, the jackknife error
    ``sqrt((n_b - 1) / n_b sum_j (f_j - mean f_j)^2)``, ``variance = nan``, ``tau_int`` of the
    first series (:func:`integrated_autocorr_time`, to compare with the block length) and
    ``n_samples`` the number of samples used per series.
    """
    if not series:
        raise ValueError("jackknife needs at least one series")
    arrays = [_as_chains(s, name=f"series[{i}]") for i, s in enumerate(series)]
    shape = arrays[0].shape
    if any(a.shape != shape for a in arrays):
        shapes = ", ".join(str(np.shape(s)) for s in series)
        raise ValueError(f"all series must have the same shape, got {shapes}")
    chains, n = shape
    if not 2 <= n_blocks <= n:
        raise ValueError(f"n_blocks must be between 2 and the chain length {n}, got {n_blocks}")
    block = n // n_blocks
    used = [a[:, n - n_blocks * block :].reshape(chains, n_blocks, block) for a in arrays]

    def call(keep: np.ndarray) -> float:
        value = func(*(u[:, keep].reshape(-1) for u in used))
        if np.ndim(value) != 0:
            raise ValueError(f"func must return a scalar, got shape {np.shape(value)}")
        return float(value)

    full = call(np.ones(n_blocks, dtype=bool))
    leave_out = np.array([call(np.arange(n_blocks) != j) for j in range(n_blocks)])
    mean_lo = leave_out.mean()
    bias_corrected = n_blocks * full - (n_blocks - 1) * mean_lo
    error = math.sqrt((n_blocks - 1) / n_blocks * np.sum((leave_out - mean_lo) ** 2))
    tau = integrated_autocorr_time(arrays[0])
    return Estimate(bias_corrected, error, math.nan, tau, chains * n_blocks * block)
