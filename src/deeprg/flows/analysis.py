"""What the latent variables of a trained flow mean (Li & Wang Fig. 4).

* :func:`response_maps` - the expected response ``E_x[dz_i / dx]`` of chosen latents ``z_i`` to
  the physical field, one lattice-shaped image per latent (Fig. 4(a));
* :func:`top_latent_sites` - the sites holding the latents of the coarsest scale (the collective
  variables at the top of the hierarchy);
* :func:`latent_and_physical_mutual_information` - KSG mutual information between pairs of latent
  variables and between pairs of physical variables (Fig. 4(b, c)).

Expectations are over the fields passed in (e.g. flow samples, or HMC samples of ``pi``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from deeprg.flows.flow import Flow
from deeprg.information import mutual_information_matrix

__all__ = ["latent_and_physical_mutual_information", "response_maps", "top_latent_sites"]


def top_latent_sites(flow: Flow) -> np.ndarray:
    """Flat indices of the sites whose latents were produced at the coarsest scale."""
    scale = flow.hierarchy.latent_scale().reshape(-1)
    return np.flatnonzero(scale == scale.max())


def response_maps(flow: Flow, x: Tensor, sites: np.ndarray) -> np.ndarray:
    """``E_x[dz_i/dx]`` for latents at flat ``sites``; returns ``(len(sites), *event_shape)``."""
    x = x.detach().clone().requires_grad_(True)
    z, _ = flow.hierarchy.renormalize(x)
    flat = z.reshape(len(z), -1)
    maps = []
    for i in sites:
        (grad,) = torch.autograd.grad(flat[:, int(i)].sum(), x, retain_graph=True)
        maps.append((grad.mean(0)).detach().double().cpu().numpy())
    return np.stack(maps)


def latent_and_physical_mutual_information(flow: Flow, x: Tensor, sites: np.ndarray, k: int = 3
                                           ) -> tuple[np.ndarray, np.ndarray]:
    """Pairwise KSG mutual information (nats) among the latents at flat ``sites`` and among the
    physical variables at the same sites; two ``(len(sites), len(sites))`` arrays."""
    with torch.no_grad():
        z, _ = flow.hierarchy.renormalize(x)
    zs = z.reshape(len(z), -1)[:, sites].double().cpu().numpy()
    xs = x.reshape(len(x), -1)[:, sites].double().cpu().numpy()
    return mutual_information_matrix(zs, k), mutual_information_matrix(xs, k)
