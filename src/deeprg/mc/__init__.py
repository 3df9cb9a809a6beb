# Statistics of Monte Carlo series (deeprg.mc.stats).
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

# Markov-chain samplers of the Ising model (deeprg.mc.samplers).
from deeprg.mc.samplers import (
    DEFAULT_BURN_IN_SWEEPS,
    SAMPLERS,
    SampleRun,
    Sampler,
    make_sampler,
)
