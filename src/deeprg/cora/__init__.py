"""CORA, the correlation renormalization ansatz (Beny 2013): a classical stochastic MERA that
learns probability distributions of 1D and 2D lattice data from samples.

* :class:`Cora` (:mod:`~deeprg.cora.network`): the network of softmax-parametrized local
  stochastic maps (:mod:`~deeprg.cora.maps`), its exact ancestral sampling and ASCII drawing;
* :func:`window_marginals` (:mod:`~deeprg.cora.marginals`, geometry in :mod:`~deeprg.cora.cones`):
  exact joint distributions of all windows of a lattice through their causal cones;
* :func:`log_likelihood`, :func:`inpaint` (:mod:`~deeprg.cora.tree`): exact full likelihood of the
  tree variant with missing values, and inpainting;
* :func:`coarse_grain` (:mod:`~deeprg.cora.inverse`): data coarse-grained by the Bayesian inverse
  of a layer;
* :class:`CoraTrainConfig`, :class:`Trainer`, :func:`load_run` (:mod:`~deeprg.cora.learn`):
  learning by the window likelihood, all layers jointly (method 2) or layer by layer (method 1);
* :func:`evaluate` and friends (:mod:`~deeprg.cora.evaluate`); data (:mod:`~deeprg.cora.datasets`).
"""

from deeprg.cora.datasets import BinaryData, decode_values, digits, encode_values, load_binary, save_binary
from deeprg.cora.evaluate import (
    chain_window_entropy,
    correlation_function,
    evaluate,
    full_nll,
    window_codes,
    window_nll,
)
from deeprg.cora.inverse import coarse_grain
from deeprg.cora.learn import CoraTrainConfig, Trainer, load_run
from deeprg.cora.marginals import window_marginals
from deeprg.cora.network import Cora
from deeprg.cora.tree import inpaint, log_likelihood

__all__ = [
    "BinaryData",
    "Cora",
    "CoraTrainConfig",
    "Trainer",
    "chain_window_entropy",
    "coarse_grain",
    "correlation_function",
    "decode_values",
    "digits",
    "encode_values",
    "evaluate",
    "full_nll",
    "inpaint",
    "load_binary",
    "load_run",
    "log_likelihood",
    "save_binary",
    "window_codes",
    "window_marginals",
    "window_nll",
]
