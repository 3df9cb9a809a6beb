"""NeuralRG: normalizing flows arranged as a MERA of Real NVP bijectors (Li & Wang 2018)."""

from deeprg.flows.bijectors import BlockRealNVP
from deeprg.flows.flow import Flow
from deeprg.flows.hierarchy import ARCHITECTURES, Hierarchy, layer_specs

__all__ = ["ARCHITECTURES", "BlockRealNVP", "Flow", "Hierarchy", "layer_specs"]
