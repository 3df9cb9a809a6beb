"""Lattice models: the Ising model, its exact solutions and continuous relaxations."""

from deeprg.models.ising import K_C, IsingModel, parse_coupling

__all__ = ["K_C", "IsingModel", "parse_coupling"]
