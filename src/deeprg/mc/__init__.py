"""Monte Carlo: spin samplers (update rules over numba kernels, one driver), hybrid Monte Carlo,
and statistics with error bars."""

from deeprg.mc.rules import (
    DEFAULT_BURN_IN_SWEEPS,
    RULES,
    MetropolisRule,
    SwendsenWangRule,
    UpdateRule,
    WolffRule,
)
from deeprg.mc.samplers import SAMPLERS, Sampler, SampleRun, make_sampler
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
    "RULES",
    "SAMPLERS",
    "BinningResult",
    "Estimate",
    "MetropolisRule",
    "SampleRun",
    "Sampler",
    "SwendsenWangRule",
    "UpdateRule",
    "WolffRule",
    "autocorrelation",
    "binning",
    "estimate",
    "format_value_error",
    "integrated_autocorr_time",
    "jackknife",
    "make_sampler",
]
