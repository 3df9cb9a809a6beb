"""What the latent variables of a trained flow mean (Li & Wang Fig. 4).

* :func:`response_maps` - the expected response ``E_x[dz_i / dx]`` of chosen latents ``z_i`` to
  the physical field, one lattice-shaped image per latent (Fig. 4(a));
* :func:`top_latent_sites` - the sites holding the latents of the coarsest scale (the collective
  variables at the top of the hierarchy);
* :func:`latent_and_physical_mutual_information` - KSG mutual information between pairs of latent
  variables and between pairs of physical variables (Fig. 4(b, c));
* :func:`top_latent_energy` - the renormalized energy of the latents (Eq. 6),
  ``E(z) = -ln pi(g(z)) - ln|det dg/dz|``, restricted to the top-level latents with every other
  latent held at 0, its prior mode.

Expectations are over the fields passed in (e.g. flow samples, or HMC samples of ``pi``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from deeprg.flows.flow import Flow
from deeprg.information import mutual_information_matrix

__all__ = ["latent_and_physical_mutual_information", "response_maps", "top_latent_energy", "top_latent_sites"]


def top_latent_sites(flow: Flow) -> np.ndarray:
    """Flat indices of the sites whose latents were produced at the coarsest scale."""
    scale = flow.hierarchy.latent_scale().reshape(-1)
    return np.flatnonzero(scale == scale.max())


def response_maps(flow: Flow, x: Tensor, sites: np.ndarray,
                  callback: Callable[[int, int], None] | None = None) -> np.ndarray:
    """``E_x[dz_i/dx]`` for latents at flat ``sites``; returns ``(len(sites), *event_shape)``.
    ``callback(done, len(sites))`` is called after each map (e.g. a progress bar)."""
    x = x.detach().clone().requires_grad_(True)
    z, _ = flow.hierarchy.renormalize(x)
    flat = z.reshape(len(z), -1)
    maps = []
    for i in sites:
        (grad,) = torch.autograd.grad(flat[:, int(i)].sum(), x, retain_graph=True)
        maps.append((grad.mean(0)).detach().double().cpu().numpy())
        if callback is not None:
            callback(len(maps), len(sites))
    return np.stack(maps)


def latent_and_physical_mutual_information(flow: Flow, x: Tensor, sites: np.ndarray, k: int = 3,
                                           callback: Callable[[int, int], None] | None = None
                                           ) -> tuple[np.ndarray, np.ndarray]:
    """Pairwise KSG mutual information (nats) among the latents at flat ``sites`` and among the
    physical variables at the same sites; two ``(len(sites), len(sites))`` arrays, the values of
    :func:`~deeprg.information.mutual_information_matrix`. The pairs are estimated one at a time;
    ``callback(done, total)`` is called after each of the ``total = len(sites) (len(sites) - 1)``
    pairs of both arrays (e.g. a progress bar)."""
    with torch.no_grad():
        z, _ = flow.hierarchy.renormalize(x)
    m = len(sites)
    pairs = [(i, j) for i in range(m) for j in range(i + 1, m)]
    matrices = []
    for field in (z, x):
        values = field.reshape(len(field), -1)[:, sites].double().cpu().numpy()
        mi = np.zeros((m, m))
        for done, (i, j) in enumerate(pairs, start=len(matrices) * len(pairs) + 1):
            mi[i, j] = mi[j, i] = mutual_information_matrix(values[:, [i, j]], k)[0, 1]
            if callback is not None:
                callback(done, 2 * len(pairs))
        matrices.append(mi)
    return matrices[0], matrices[1]


@torch.no_grad()
def top_latent_energy(flow: Flow, target, sites: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The renormalized latent energy ``E(z) = -ln pi(g(z)) - ln|det dg/dz|`` (up to the constant
    ``ln Z``) as a function of the latents at flat ``sites`` (e.g. :func:`top_latent_sites`), with
    all other latents at 0.

    Returns ``(profile, plane)``: ``profile[k]`` is ``E`` with every chosen latent equal to
    ``values[k]`` (the collective direction, along which the Z2 symmetry shows as a double well
    below T_c); ``plane[k, l]`` is ``E`` with the first two chosen latents at ``values[k]`` and
    ``values[l]`` and the others at 0. Both are shifted so that their minimum is 0.
    """
    sites = np.asarray(sites, dtype=int)
    values = np.asarray(values, dtype=float)
    if sites.ndim != 1 or len(sites) < 2:
        raise ValueError(f"sites must list at least two latents, got {sites.tolist()}")
    ref = next(flow.parameters())
    t = torch.as_tensor(values, dtype=ref.dtype, device=ref.device)
    n = flow.n_sites

    def energy(z_flat: Tensor) -> np.ndarray:
        x, logdet = flow.hierarchy.generate(z_flat.reshape(len(z_flat), *flow.event_shape))
        e = -(target.log_prob_unnormalized(x) + logdet).double().cpu().numpy()
        return e - e.min()

    line = torch.zeros(len(t), n, dtype=ref.dtype, device=ref.device)
    line[:, torch.as_tensor(sites)] = t[:, None]
    grid = torch.zeros(len(t), len(t), n, dtype=ref.dtype, device=ref.device)
    grid[:, :, int(sites[0])] = t[:, None]
    grid[:, :, int(sites[1])] = t[None, :]
    return energy(line), energy(grid.reshape(-1, n)).reshape(len(t), len(t))
