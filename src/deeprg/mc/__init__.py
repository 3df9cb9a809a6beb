"""Monte Carlo: spin samplers (numba kernels), hybrid Monte Carlo, and statistics with error bars."""

from deeprg.mc.samplers import DEFAULT_BURN_IN_SWEEPS, SAMPLERS, SampleRun, Sampler, make_sampler
from deeprg.mc.stats import (
    BinningResult,
    Estimate,
    autocorrelation,
    binning,
    estimate,
    format_value_error,
    integrated_autocorr_time,
    jackknife,
)

__all__ = [
    "DEFAULT_BURN_IN_SWEEPS",
    "SAMPLERS",
    "BinningResult",
    "Estimate",
    "SampleRun",
    "Sampler",
    "autocorrelation",
    "binning",
    "estimate",
    "format_value_error",
    "integrated_autocorr_time",
    "jackknife",
    "make_sampler",
]
