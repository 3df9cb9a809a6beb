"""Lattice models: the Ising model, its exact solutions and continuous relaxations."""

from deeprg.models.ising import K_C, K_C_3D, IsingModel, critical_coupling, parse_coupling

__all__ = ["K_C", "K_C_3D", "IsingModel", "critical_coupling", "parse_coupling"]
