"""Optimal real-space RG with an RBM projector (Chung & Kao) and Monte Carlo RG (Swendsen).

See docs/rsrg.md. Modules: :mod:`~deeprg.rsrg.transforms` (majority rule, decimation, RBM
projector), :mod:`~deeprg.rsrg.rbm` (filter geometry and RBM conditionals),
:mod:`~deeprg.rsrg.train` (CD-k / PCD training), :mod:`~deeprg.rsrg.operators` (MCRG operators),
:mod:`~deeprg.rsrg.mcrg` (linearized RG matrix and exponents).
"""

from deeprg.rsrg.mcrg import MCRGAccumulator, MCRGResult, mcrg, run_mcrg
from deeprg.rsrg.operators import EVEN_OPERATORS, ODD_OPERATORS, OperatorSet, operator_set, operator_sums
from deeprg.rsrg.train import RBMTrainConfig, Trainer, load_filters
from deeprg.rsrg.transforms import (
    Decimation,
    MajorityRule,
    RBMProjector,
    RGTransform,
    coarse_grain,
    level_generators,
)

__all__ = [
    "EVEN_OPERATORS",
    "ODD_OPERATORS",
    "Decimation",
    "MCRGAccumulator",
    "MCRGResult",
    "MajorityRule",
    "OperatorSet",
    "RBMProjector",
    "RBMTrainConfig",
    "RGTransform",
    "Trainer",
    "coarse_grain",
    "level_generators",
    "load_filters",
    "mcrg",
    "operator_set",
    "operator_sums",
    "run_mcrg",
]
