"""CORA exactness: causal-cone window marginals, the tree's upward pass, ancestral sampling and the
Bayesian inverse, each against an independent brute-force answer on small lattices.

The oracle below contracts the whole network into the full joint distribution of a level with its
own geometry (blocks at 2J, plaquettes at 2P+1), sharing nothing with the cone code but the map
tables."""

import itertools

import numpy as np
import pytest
import torch
from scipy import stats

from deeprg.cora.inverse import coarse_grain
from deeprg.cora.marginals import window_marginals
from deeprg.cora.network import Cora
from deeprg.cora.tree import inpaint, log_likelihood

torch.set_num_threads(1)


def _table(m, pos):
    p = m.probs().detach().numpy()
    return p[0] if m.shared else p[pos]


def full_joint(net, level=0, prior=None):
    """Joint distribution of ``Gamma_level``, shape ``(dim,) * n_sites`` (row-major sites), by
    contracting every map; with ``prior`` ``(n_sites(1), chi)`` the state of level 1 is that
    product (the rest of the network above is ignored)."""
    d, L = net.d, net.shape[0]
    if prior is None:
        top, T = net.n_levels, net.top_probs().detach().numpy().copy()
    else:
        top, T = 1, np.ones(())
        for row in prior.numpy():
            T = np.multiply.outer(T, row)
    labels = list(itertools.product(range(L >> top), repeat=d))
    offs = list(itertools.product((0, 1), repeat=d))
    for j in range(top, level, -1):
        Mc, M = L >> j, L >> (j - 1)
        Dc, Df = net.dim(j), net.dim(j - 1)
        for J in itertools.product(range(Mc), repeat=d):
            W = _table(net.isometry(j), np.ravel_multi_index(J, (Mc,) * d)).reshape((Dc,) + (Df,) * len(offs))
            ax = labels.index(J)
            T = np.tensordot(T, W, axes=([ax], [0]))
            labels = labels[:ax] + labels[ax + 1:] + [("a",) + tuple(2 * c + o for c, o in zip(J, off)) for off in offs]
        u = net.disentangler(j)
        if u is not None:
            assert M > 2 and not net.tree
            for P in itertools.product(range(Mc), repeat=d):
                U = _table(u, np.ravel_multi_index(P, (Mc,) * d)).reshape((Df,) * (2 * len(offs)))
                sites = [("a",) + tuple((2 * p + 1 + o) % M for p, o in zip(P, off)) for off in offs]
                axes = [labels.index(s) for s in sites]
                T = np.tensordot(T, U, axes=(axes, list(range(len(offs)))))
                labels = [lab for i, lab in enumerate(labels) if i not in axes] + [("x",) + s[1:] for s in sites]
        else:
            assert net.tree or M == 2
        grid = list(itertools.product(range(M), repeat=d))
        T = np.transpose(T, [[lab[1:] for lab in labels].index(c) for c in grid])
        labels = grid
    return T


def window_of(P, L, d, start, w):
    sites = [np.ravel_multi_index(tuple((s + o) % L for s, o in zip(start, off)), (L,) * d)
             for off in itertools.product(range(w), repeat=d)]
    return np.einsum(P, list(range(P.ndim)), sites).reshape(-1)


def all_windows(P, L, d, w):
    return np.stack([window_of(P, L, d, s, w) for s in itertools.product(range(L), repeat=d)])


NETWORKS = [((16,), 2, False, True), ((16,), 3, False, False), ((16,), 2, True, False), ((16,), 3, True, True),
            ((4, 4), 2, False, True), ((4, 4), 3, False, False), ((4, 4), 2, True, True), ((4, 4), 3, True, False)]


@pytest.mark.parametrize("shape, chi, tree, shared", NETWORKS)
def test_window_marginals_equal_brute_force(shape, chi, tree, shared):
    net = Cora(shape, chi, tree=tree, shared=shared, init="random", seed=7)
    P = full_joint(net)
    assert P.sum() == pytest.approx(1.0, abs=1e-12)
    L, d = shape[0], len(shape)
    for w in ([1, 2, 3, 4, 5, 8, 16] if d == 1 else [1, 2, 3, 4]):
        with torch.no_grad():
            got = window_marginals(net, w).numpy()
        np.testing.assert_allclose(got, all_windows(P, L, d, w), rtol=1e-10, atol=1e-14, err_msg=f"w={w}")


@pytest.mark.parametrize("shape, chi", [((16,), 3), ((4, 4), 2)])
def test_hidden_level_windows_and_product_prior(shape, chi):
    net = Cora(shape, chi, init="random", seed=3, shared=False)
    L, d = shape[0], len(shape)
    P1 = full_joint(net, level=1)
    for w in range(1, min(3, L // 2) + 1):
        np.testing.assert_allclose(window_marginals(net, w, level=1).detach().numpy(),
                                   all_windows(P1, L // 2, d, w), rtol=1e-10, atol=1e-14)
    prior = torch.softmax(torch.randn(net.n_sites(1), chi, generator=torch.Generator().manual_seed(1),
                                      dtype=torch.float64), -1)
    P = full_joint(net, prior=prior)
    np.testing.assert_allclose(window_marginals(net, 2, prior=prior).detach().numpy(), all_windows(P, L, d, 2),
                               rtol=1e-10, atol=1e-14)


def test_marginals_are_differentiable_and_normalized():
    net = Cora((16,), 2, init="random", seed=0)
    p = window_marginals(net, 4)
    assert torch.allclose(p.sum(1), torch.ones(16, dtype=torch.float64))
    p[:, 3].sum().backward()
    grads = [q.grad for q in net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_window_errors_name_the_window():
    net = Cora((16,), 2)
    with pytest.raises(ValueError, match="window"):
        window_marginals(net, 17)
    with pytest.raises(ValueError, match="window 2 with chi = 4"):
        window_marginals(Cora((16, 16), 4), 2)


def _visible_index(configs):
    return torch.as_tensor(configs).long()


@pytest.mark.parametrize("shape, chi, shared", [((16,), 3, False), ((4, 4), 2, True), ((4, 4), 3, False)])
def test_tree_log_likelihood_equals_enumeration(shape, chi, shared):
    net = Cora(shape, chi, tree=True, shared=shared, init="random", seed=2)
    P = full_joint(net)
    n = P.size
    x = np.stack(np.unravel_index(np.arange(n), P.shape), axis=-1).reshape((n,) + shape)
    ll = log_likelihood(net, _visible_index(x)).detach().numpy()
    np.testing.assert_allclose(ll, np.log(P.reshape(-1)), rtol=1e-11, atol=1e-11)
    # missing sites are summed over
    missing = [0, 3, 7]
    observed = torch.ones((50,) + shape, dtype=torch.bool).reshape(50, -1)
    observed[:, missing] = False
    rows = np.random.default_rng(0).integers(0, n, 50)
    llm = log_likelihood(net, _visible_index(x[rows]), observed.reshape((50,) + shape)).detach().numpy()
    kept = np.delete(x[rows].reshape(50, -1), missing, axis=1)
    np.testing.assert_allclose(llm, np.log(P.sum(axis=tuple(missing))[tuple(kept.T)]), rtol=1e-11, atol=1e-11)


def test_tree_likelihood_needs_a_tree():
    with pytest.raises(ValueError, match="tree"):
        log_likelihood(Cora((8,), 2), torch.zeros(1, 8, dtype=torch.long))


def chi_square_pvalue(counts, probs):
    expected = probs * counts.sum()
    keep = expected > 5
    stat = ((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum() + (
        (counts[~keep].sum() - expected[~keep].sum()) ** 2 / max(expected[~keep].sum(), 1e-300) if (~keep).any() else 0)
    dof = keep.sum() - (0 if (~keep).any() else 1)
    return stats.chi2.sf(stat, dof)


def test_inpainting_draws_the_exact_posterior():
    net = Cora((4, 4), 3, tree=True, shared=False, init="random", seed=4)
    P = full_joint(net).reshape((2,) * 16)
    x = torch.as_tensor(np.random.default_rng(1).integers(0, 2, (1, 4, 4)))
    observed = torch.ones(1, 16, dtype=torch.bool)
    missing = [1, 6, 11]
    observed[0, missing] = False
    n = 20000
    out = inpaint(net, x.expand(n, 4, 4).clone(), observed.reshape(1, 4, 4).expand(n, 4, 4),
                  torch.Generator().manual_seed(0)).reshape(n, -1)
    kept = [i for i in range(16) if i not in missing]
    assert (out[:, kept] == x.reshape(1, -1)[:, kept]).all()
    base = x.reshape(-1).numpy().copy()
    post = []
    for values in itertools.product((0, 1), repeat=3):
        base[missing] = values
        post.append(P[tuple(base)])
    post = np.array(post) / sum(post)
    counts = np.bincount((out[:, missing] * torch.tensor([4, 2, 1])).sum(1).numpy(), minlength=8)
    assert chi_square_pvalue(counts, post) > 1e-4


@pytest.mark.parametrize("shape, chi, tree, shared", [((8,), 3, False, False), ((8,), 2, True, True)])
def test_ancestral_samples_follow_the_full_joint(shape, chi, tree, shared):
    net = Cora(shape, chi, tree=tree, shared=shared, init="random", seed=5)
    P = full_joint(net).reshape(-1)
    x = net.sample(40000, torch.Generator().manual_seed(3))
    codes = (x * (2 ** torch.arange(7, -1, -1))).sum(1).numpy()
    assert chi_square_pvalue(np.bincount(codes, minlength=256), P) > 1e-4


def test_ancestral_samples_follow_the_window_marginals_in_2d():
    net = Cora((4, 4), 2, shared=False, init="random", seed=6)
    P = full_joint(net)
    x = net.sample(20000, torch.Generator().manual_seed(4))
    assert x.shape == (20000, 4, 4) and x.dtype == torch.long
    for start in [(0, 0), (1, 2), (3, 3)]:
        window = x.roll((-start[0], -start[1]), dims=(1, 2))[:, :2, :2].reshape(-1, 4)
        codes = (window * torch.tensor([8, 4, 2, 1])).sum(1).numpy()
        assert chi_square_pvalue(np.bincount(codes, minlength=16), window_of(P, 4, 2, start, 2)) > 1e-4


def test_sampling_is_reproducible():
    net = Cora((16,), 2, init="random")
    a = net.sample(100, torch.Generator().manual_seed(9))
    b = net.sample(100, torch.Generator().manual_seed(9))
    assert torch.equal(a, b)


def exact_posterior(net, x, log_prior):
    """P(c | x) of the layer-1 coarse configuration, enumerating c and (vectorized) the
    intermediate variables between the coarse-graining maps and the disentanglers."""
    M, chi = net.n_sites(0), net.chi
    geo = net.geometry[0]
    W, u = net.isometry(1), net.disentangler(1)
    A = np.stack(np.unravel_index(np.arange(2**M), (2,) * M), axis=-1) if u is not None else x[None]

    def code(values, sites):
        return (values[..., sites] * 2 ** np.arange(len(sites) - 1, -1, -1)).sum(-1)

    f = np.ones(len(A))
    if u is not None:
        for q, sites in enumerate(geo.plaquettes):
            f = f * _table(u, q)[code(A, sites), code(x, sites)]
    block_codes = [code(A, sites) for sites in geo.blocks]
    prior = log_prior.exp().numpy()
    post = np.zeros((chi,) * net.n_sites(1))
    for c in itertools.product(range(chi), repeat=net.n_sites(1)):
        g = np.prod([_table(W, J)[c[J], block_codes[J]] for J in range(len(c))], axis=0)
        post[c] = np.prod(prior[np.arange(len(c)), c]) * (f * g).sum()
    return post.reshape(-1) / post.sum()


@pytest.mark.parametrize("shape, chi, tree, shared", [((8,), 2, False, True), ((8,), 3, True, False),
                                                     ((4, 4), 2, False, False)])
def test_bayesian_inverse_samples_the_exact_posterior(shape, chi, tree, shared):
    net = Cora(shape, chi, tree=tree, shared=shared, init="random", seed=2)
    x = np.array([0, 1, 1, 0, 1, 1, 1, 0, 0, 0, 1, 0, 1, 1, 0, 1])[: net.n_sites(0)]
    log_prior = torch.log_softmax(torch.randn(net.n_sites(1), chi, generator=torch.Generator().manual_seed(5),
                                              dtype=torch.float64), -1)
    exact = exact_posterior(net, x, log_prior)
    n = 20000
    c = coarse_grain(net, 1, torch.as_tensor(x)[None].expand(n, -1), log_prior, sweeps=25,
                     generator=torch.Generator().manual_seed(1))
    codes = (c * chi ** torch.arange(c.shape[1] - 1, -1, -1)).sum(1).numpy()
    assert chi_square_pvalue(np.bincount(codes, minlength=len(exact)), exact) > 1e-4


@pytest.mark.parametrize("shape, tree", [((16,), False), ((8, 8), False), ((8,), True)])
def test_drawing_shows_every_map(shape, tree):
    net = Cora(shape, 2, tree=tree)
    rows = net.draw().splitlines()
    n = net.n_levels
    assert sum(r.startswith("layer") and " W " in r[:10] for r in rows) == n
    assert sum(r.startswith("layer") and " U " in r[:10] for r in rows) == (0 if tree else n - 1)
    bottom = next(r for r in rows if r.startswith("level 0"))
    assert bottom.count("o") == shape[0] and f"({net.n_sites(0)} sites, dim 2)" in bottom
    layer1_u = [r for r in rows if r.startswith("layer 1 U")]
    if not tree:  # one disentangler per pair (2P+1, 2P+2), the last one wrapping around
        assert layer1_u[0][10:].count("U") == shape[0] // 2 and "<" in layer1_u[0] and ">" in layer1_u[0]
