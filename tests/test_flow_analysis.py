"""Latent analysis: response maps, top-level sites, mutual information, latent energy."""

import numpy as np
import torch

from deeprg import Lattice
from deeprg.flows import Flow, Hierarchy
from deeprg.flows.analysis import (
    latent_and_physical_mutual_information,
    response_maps,
    top_latent_energy,
    top_latent_sites,
)
from deeprg.models.ising import K_C
from deeprg.models.relaxed import RelaxedIsing

torch.set_num_threads(1)


def test_response_of_an_identity_flow_is_a_delta_at_the_latent_site():
    flow = Flow(Hierarchy(Lattice((4, 4)), "mera", hidden=(4,))).double()  # fresh: identity
    sites = top_latent_sites(flow)
    assert sorted(sites.tolist()) == [0, 2, 8, 10]  # the top 2x2 block at stride 4 on a 4x4 lattice
    maps = response_maps(flow, torch.randn(16, 4, 4, dtype=torch.float64), sites)
    expected = np.zeros((4, 16))
    expected[np.arange(4), sites] = 1.0
    np.testing.assert_allclose(maps.reshape(4, 16), expected, atol=1e-14)


def test_response_of_a_linear_renormalization_is_its_jacobian_row():
    flow = Flow(Hierarchy(Lattice((4, 4)), "tree", hidden=(4,))).double()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    x = torch.randn(5, 4, 4, generator=gen, dtype=torch.float64)
    sites = np.array([0, 5])
    maps = response_maps(flow, x, sites)
    jac = torch.stack([torch.autograd.functional.jacobian(
        lambda v: flow.hierarchy.renormalize(v.reshape(1, 4, 4))[0].reshape(-1), xi.reshape(-1)) for xi in x])
    np.testing.assert_allclose(maps.reshape(2, 16), jac.mean(0)[sites].numpy(), atol=1e-12)


def test_identity_flow_has_equal_latent_and_physical_mutual_information():
    flow = Flow(Hierarchy(Lattice((4, 4)), "mera", hidden=(4,))).double()
    x = torch.randn(400, 4, 4, dtype=torch.float64)
    mi_z, mi_x = latent_and_physical_mutual_information(flow, x, np.arange(4))
    np.testing.assert_allclose(mi_z, mi_x)


def test_latent_energy_of_an_identity_flow_is_the_bare_energy():
    lattice = Lattice((4, 4))
    flow = Flow(Hierarchy(lattice, "mera", hidden=(4,))).double()  # fresh: g is the identity, logdet 0
    target = RelaxedIsing(lattice, K_C)
    sites = top_latent_sites(flow)
    values = np.linspace(-3, 3, 13)
    profile, plane = top_latent_energy(flow, target, sites, values)
    x = np.zeros((13, 16))
    x[:, sites] = values[:, None]
    bare = -target.log_prob_unnormalized(torch.from_numpy(x).reshape(13, 4, 4)).numpy()
    np.testing.assert_allclose(profile, bare - bare.min(), atol=1e-10)
    np.testing.assert_allclose(profile, profile[::-1], atol=1e-10)  # Z2: E(t) = E(-t)
    xp = np.zeros((13, 13, 16))
    xp[:, :, sites[0]] = values[:, None]
    xp[:, :, sites[1]] = values[None, :]
    bare_plane = -target.log_prob_unnormalized(torch.from_numpy(xp).reshape(-1, 4, 4)).numpy().reshape(13, 13)
    np.testing.assert_allclose(plane, bare_plane - bare_plane.min(), atol=1e-10)
