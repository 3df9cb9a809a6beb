"""NeuralRG flows: block Real NVP bijectors, the MERA / TEBD / tree hierarchies and the flow density.

Every check runs in float64 on randomly perturbed parameters (a fresh bijector is the identity,
which would make most of these checks pass trivially). Direction convention under test
(:mod:`deeprg.flows.bijectors`): ``generate(z) -> (x, log|det dx/dz|)``,
``renormalize(x) -> (z, log|det dz/dx|)``.
"""

import math

import numpy as np
import pytest
import torch

from deeprg.flows import ARCHITECTURES, BlockRealNVP, Flow, Hierarchy, layer_specs
from deeprg.flows.bijectors import CirculantLinear, OddMonotone, coupling_partitions, rational_quadratic_spline
from deeprg.lattice import Lattice

torch.set_num_threads(1)

TIGHT = dict(rtol=1e-12, atol=1e-12)  # exact inversion
LOGDET = dict(rtol=1e-10, atol=1e-10)  # analytic log|det| against slogdet of the autograd Jacobian
HIDDEN = (16,)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(20261122)


def perturb(module: torch.nn.Module, seed: int = 0, scale: float = 0.1) -> torch.nn.Module:
    """Add small Gaussian noise to every parameter (in place), so the bijectors are not the identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


def randn(*shape, seed=1):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def jacobian_slogdets(fn, x: torch.Tensor) -> torch.Tensor:
    """Per-sample ``ln|det J|`` of ``fn`` (a batched map returning ``(out, logdet)``) at each row of ``x``,
    from the autograd Jacobian of the flattened single-sample map."""
    out = []
    for xi in x:
        def flat(v, shape=xi.shape):
            return fn(v.reshape(1, *shape))[0].reshape(-1)

        J = torch.autograd.functional.jacobian(flat, xi.reshape(-1), vectorize=True)
        sign, logabs = torch.linalg.slogdet(J)
        assert sign != 0
        out.append(logabs)
    return torch.stack(out)


def single_jacobian(fn, x: torch.Tensor) -> torch.Tensor:
    """Jacobian ``d fn(x)_flat / d x_flat`` of a batched map at one sample ``x`` (no batch axis)."""
    return torch.autograd.functional.jacobian(
        lambda v: fn(v.reshape(1, *x.shape))[0].reshape(-1), x.reshape(-1), vectorize=True
    )


#: Round trips through rational-quadratic splines: the root of a quadratic in steep bins and a sum
#: of more logarithms cost a digit or two.
SPLINE_TIGHT = dict(rtol=1e-10, atol=1e-10)


def check_bijection(bij, x: torch.Tensor, n_jac: int = 2, tight: dict = TIGHT) -> None:
    """Round trips (to ``tight``), logdets against slogdet of the Jacobian, and logdet antisymmetry."""
    z, ld_r = bij.renormalize(x)
    x_back, ld_g_back = bij.generate(z)
    assert z.shape == x.shape and ld_r.shape == (x.shape[0],)
    torch.testing.assert_close(x_back, x, **tight)
    # the map is genuinely nontrivial
    assert (z - x).abs().max() > 1e-3
    assert ld_r.abs().max() > 1e-4
    # log|det dz/dx|(x) + log|det dx/dz|(z(x)) = 0
    torch.testing.assert_close(ld_r + ld_g_back, torch.zeros_like(ld_r), **tight)

    zz = x.flip(0) * 0.9 + 0.1  # a different set of latent points
    xx, ld_g = bij.generate(zz)
    z_back, ld_r_back = bij.renormalize(xx)
    torch.testing.assert_close(z_back, zz, **tight)
    torch.testing.assert_close(ld_g + ld_r_back, torch.zeros_like(ld_g), **tight)

    torch.testing.assert_close(ld_r[:n_jac], jacobian_slogdets(bij.renormalize, x[:n_jac]), **LOGDET)
    torch.testing.assert_close(ld_g[:n_jac], jacobian_slogdets(bij.generate, zz[:n_jac]), **LOGDET)


# --------------------------------------------------------------------------------------------
# BlockRealNVP and coupling partitions
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "unshared"])
@pytest.mark.parametrize("k", [2, 4, 8])
def test_block_realnvp_inverse_and_logdet(k, shared):
    n_blocks = 3
    bij = perturb(BlockRealNVP(k, n_blocks, n_couplings=4, hidden=(16, 16), shared=shared).double(), seed=k)
    check_bijection(bij, randn(5, n_blocks, k, seed=k), n_jac=2)


def test_block_realnvp_fresh_is_identity():
    bij = BlockRealNVP(4, 3, hidden=(8,)).double()
    x = randn(4, 3, 4)
    z, ld = bij.renormalize(x)
    torch.testing.assert_close(z, x, rtol=0, atol=0)
    torch.testing.assert_close(ld, torch.zeros(4, dtype=torch.float64), rtol=0, atol=0)


def test_block_realnvp_unshared_weights_differ_between_blocks():
    """Unshared weights: the same block content maps differently in different blocks; shared: identically."""
    x = randn(1, 1, 4).expand(2, 3, 4).contiguous()
    for shared in (True, False):
        bij = perturb(BlockRealNVP(4, 3, hidden=(8,), shared=shared).double(), seed=5)
        z, _ = bij.renormalize(x)
        same = torch.allclose(z[:, 0], z[:, 1], rtol=0, atol=1e-14)
        assert same == shared


def spline_parameters(n: int, bins: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, m, generator=g, dtype=torch.float64) for m in (bins, bins, bins - 1)]


def test_rational_quadratic_spline_inverts_with_the_log_slope_of_its_derivative():
    x = torch.linspace(-7, 7, 2001, dtype=torch.float64)  # inside and outside the bound 5
    params = spline_parameters(len(x), 8, seed=2)
    y, log_slope = rational_quadratic_spline(x, *params, bound=5.0)
    x_back, log_slope_back = rational_quadratic_spline(y, *params, bound=5.0, inverse=True)
    torch.testing.assert_close(x_back, x, **SPLINE_TIGHT)
    torch.testing.assert_close(log_slope + log_slope_back, torch.zeros_like(x), **SPLINE_TIGHT)
    xg = x.clone().requires_grad_(True)
    (slope,) = torch.autograd.grad(rational_quadratic_spline(xg, *params, bound=5.0)[0].sum(), xg)
    torch.testing.assert_close(log_slope, slope.log(), **LOGDET)
    outside = x.abs() >= 5
    assert torch.equal(y[outside], x[outside]) and (log_slope[outside] == 0).all()
    assert (y[~outside].abs() < 5).all() and (y[~outside] - x[~outside]).abs().max() > 0.1
    assert (slope > 0).all()


def test_rational_quadratic_spline_is_continuous_and_the_identity_at_zero_parameters():
    x = torch.linspace(-6, 6, 4001, dtype=torch.float64)
    params = spline_parameters(1, 8, seed=3)
    y, _ = rational_quadratic_spline(x, *(p.expand(len(x), -1) for p in params), bound=5.0)
    assert (y.diff() > 0).all() and y.diff().max() < 0.05  # increasing, no jumps at knots or at +-5
    zero = [torch.zeros_like(p) for p in spline_parameters(len(x), 8, seed=3)]
    y0, log_slope0 = rational_quadratic_spline(x, *zero, bound=5.0)
    torch.testing.assert_close(y0, x, **TIGHT)
    torch.testing.assert_close(log_slope0, torch.zeros_like(x), **TIGHT)


@pytest.mark.parametrize("k", [2, 4])
def test_block_spline_couplings_inverse_and_logdet(k):
    bij = perturb(BlockRealNVP(k, 3, n_couplings=4, hidden=(16,), spline_bins=6).double(), seed=k)
    check_bijection(bij, 3 * randn(5, 3, k, seed=k), n_jac=2, tight=SPLINE_TIGHT)


def test_block_spline_couplings_fresh_are_the_identity():
    bij = BlockRealNVP(4, 3, hidden=(8,), spline_bins=8).double()
    x = 3 * randn(4, 3, 4)
    z, ld = bij.renormalize(x)
    torch.testing.assert_close(z, x, **TIGHT)
    torch.testing.assert_close(ld, torch.zeros(4, dtype=torch.float64), **TIGHT)


@pytest.mark.parametrize("bins", [1, -2])
def test_bad_spline_bins_rejected(bins):
    with pytest.raises(ValueError, match="spline_bins"):
        BlockRealNVP(4, 3, hidden=(8,), spline_bins=bins)


@pytest.mark.parametrize("k", [2, 4, 8])
def test_coupling_partitions(k):
    d = k.bit_length() - 1
    n_splits = 1 if d == 1 else 1 + d  # checkerboard, then each axis
    parts = coupling_partitions(k, 4 * n_splits)
    for cond, upd in parts:
        assert set(cond).isdisjoint(upd)
        assert sorted(cond + upd) == list(range(k))
        assert cond and upd
    # the first two couplings (a split and its complement) update every variable
    assert set(parts[0][1]) | set(parts[1][1]) == set(range(k))
    # after one full cycle every variable has been updated given every other one
    pairs = {(i, j) for cond, upd in parts[: 2 * n_splits] for i in cond for j in upd}
    assert pairs == {(i, j) for i in range(k) for j in range(k) if i != j}
    # the pattern cycles
    assert parts[2 * n_splits :] == parts[: len(parts) - 2 * n_splits]


@pytest.mark.parametrize("k", [0, 1, 3, 6])
def test_coupling_partitions_rejects_bad_block_size(k):
    with pytest.raises(ValueError, match="power of two"):
        coupling_partitions(k, 4)


# --------------------------------------------------------------------------------------------
# CirculantLinear
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(8,), (4, 4), (4, 2), (2, 4, 4)], ids=lambda s: "x".join(map(str, s)))
def test_circulant_linear_inverse_and_logdet(shape):
    bij = perturb(CirculantLinear(shape).double(), seed=len(shape), scale=0.5)
    check_bijection(bij, randn(4, *shape, seed=3), n_jac=2)


def test_circulant_linear_is_a_symmetric_translation_invariant_real_map():
    shape = (4, 8)
    bij = perturb(CirculantLinear(shape).double(), seed=7, scale=0.5)
    jac = single_jacobian(bij.generate, randn(*shape, seed=2))
    torch.testing.assert_close(jac, jac.T, **TIGHT)  # symmetric
    x = randn(3, *shape, seed=4)
    shifted = bij.generate(torch.roll(x, (1, 3), (1, 2)))[0]
    torch.testing.assert_close(shifted, torch.roll(bij.generate(x)[0], (1, 3), (1, 2)), **TIGHT)
    assert bij.generate(x)[0].dtype == torch.float64


def test_circulant_linear_fresh_is_identity():
    bij = CirculantLinear((4, 4)).double()
    x = randn(2, 4, 4)
    z, ld = bij.renormalize(x)
    torch.testing.assert_close(z, x, **TIGHT)
    assert ld.abs().max() == 0


# --------------------------------------------------------------------------------------------
# OddMonotone
# --------------------------------------------------------------------------------------------


def odd_monotone(seed=0):
    return perturb(OddMonotone().double(), seed=seed, scale=0.5)


@pytest.mark.parametrize("shape", [(8,), (4, 4)], ids=lambda s: "x".join(map(str, s)))
def test_odd_monotone_inverse_and_logdet(shape):
    check_bijection(odd_monotone(seed=len(shape)), 2.0 * randn(4, *shape, seed=3), n_jac=2)


def test_odd_monotone_is_odd_increasing_and_two_peaked():
    bij = odd_monotone(seed=1)
    y = torch.linspace(-8, 8, 2001, dtype=torch.float64).reshape(1, -1)
    x = bij.generate(y)[0]
    torch.testing.assert_close(bij.generate(-y)[0], -x, **TIGHT)
    assert (x.diff() > 0).all()
    # a standard normal pushed through f has a density dip at 0: p_x(x) = p_y(y) / f'(y)
    _, slope = bij.value_and_slope(y)
    density = (-0.5 * y**2).exp() / slope
    assert density[0, 1000] < density.max()


def test_odd_monotone_inverts_extreme_values_to_machine_precision():
    bij = odd_monotone(seed=2)
    x = torch.tensor([[-1e4, -37.5, -1e-9, 0.0, 1e-300, 3.0, 250.0]], dtype=torch.float64)
    y, _ = bij.renormalize(x)
    torch.testing.assert_close(bij.generate(y)[0], x, rtol=1e-14, atol=1e-14)
    assert y[0, 3] == 0


def test_odd_monotone_inverse_has_exact_parameter_gradients():
    """Autograd gradients of a scalar of ``f^-1(x)`` and its log|det| in the parameters (through the
    final Newton step) against central differences of the numerically exact inverse."""
    bij = odd_monotone(seed=3)
    x = 1.5 * randn(2, 6, seed=4)
    w = randn(2, 6, seed=5)

    def objective() -> torch.Tensor:
        y, logdet = bij.renormalize(x)
        return (w * y).sum() + logdet.sum()

    objective().backward()
    eps = 1e-6
    for param in (bij.log_a, bij.log_b):
        for i in range(len(param)):
            with torch.no_grad():
                param[i] += eps
                up = objective()
                param[i] -= 2 * eps
                down = objective()
                param[i] += eps
            assert param.grad[i].item() == pytest.approx(((up - down) / (2 * eps)).item(), rel=1e-6, abs=1e-8)


def test_odd_monotone_rejects_bad_settings():
    with pytest.raises(ValueError, match="n_terms"):
        OddMonotone(n_terms=0)
    with pytest.raises(ValueError, match="a_init"):
        OddMonotone(a_init=0.0)


# --------------------------------------------------------------------------------------------
# Hierarchy
# --------------------------------------------------------------------------------------------

HIERARCHY_CASES = (
    [((L,), arch) for L in (8, 16) for arch in ARCHITECTURES]
    + [((L, L), arch) for L in (2, 4, 8) for arch in ARCHITECTURES]
    + [((L, L, L), arch) for L in (2, 4) for arch in ("mera", "tree")]
)


def make_hierarchy(shape, arch, shared=True, seed=0, depth=None, scale=0.1, linear=False, elementwise=False,
                   kernel=1, spline_bins=0):
    lattice = Lattice(shape)
    if arch == "tebd" and depth is None and shape[0] == 2:
        depth = 1  # the default depth (2 log2 L = 2) is rejected on L = 2; see test below
    h = Hierarchy(lattice, arch, depth=depth, n_couplings=4, hidden=HIDDEN, shared=shared, linear=linear,
                  elementwise=elementwise, kernel=kernel, spline_bins=spline_bins)
    return perturb(h.double(), seed=seed, scale=scale)


def case_id(case):
    shape, arch = case
    return f"{arch}-{'x'.join(map(str, shape))}"


@pytest.mark.parametrize("case", HIERARCHY_CASES, ids=case_id)
def test_hierarchy_inverse_and_logdet(case):
    shape, arch = case
    h = make_hierarchy(shape, arch, seed=len(shape) * 100 + shape[0])
    x = randn(4, *shape, seed=shape[0])
    check_bijection(h, x, n_jac=2)


@pytest.mark.parametrize("case", [((16,), "mera"), ((4, 4), "mera"), ((4, 4), "tree"), ((2, 2, 2), "mera")],
                         ids=case_id)
@pytest.mark.parametrize("elementwise", [False, True], ids=["linear", "linear+site"])
def test_hierarchy_with_linear_map_inverse_and_logdet(case, elementwise):
    shape, arch = case
    h = make_hierarchy(shape, arch, seed=3, linear=True, elementwise=elementwise)
    with torch.no_grad():
        h.linear.raw.normal_(0, 0.3)
    check_bijection(h, randn(4, *shape, seed=5), n_jac=2)


def test_hierarchy_site_map_sits_between_blocks_and_linear_map():
    """generate = C(f(blocks(z))): with the blocks and C at the identity, x = f(z) site by site."""
    h = Hierarchy(Lattice((4, 4)), "mera", hidden=HIDDEN, linear=True, elementwise=True).double()
    z = randn(2, 4, 4, seed=6)
    torch.testing.assert_close(h.generate(z)[0], h.elementwise.generate(z)[0], **TIGHT)
    with torch.no_grad():
        h.linear.raw.normal_(0, 0.3)
    expected = h.linear.generate(h.elementwise.generate(z)[0])[0]
    torch.testing.assert_close(h.generate(z)[0], expected, **TIGHT)


def test_hierarchy_unshared_weights():
    h = make_hierarchy((4, 4), "mera", shared=False, seed=7)
    assert all(net.groups == len(spec.blocks) for layer, spec in zip(h.layers, h.specs) for net in layer.nets)
    check_bijection(h, randn(4, 4, 4, seed=8), n_jac=2)


def test_shared_weights_translation_covariance():
    """Shared weights on tebd (all scale-0 plaquettes): translating the field by one plaquette
    (2 sites) translates the latent field; unshared weights break this."""
    x = randn(2, 8, 8, seed=3)
    for shared in (True, False):
        h = make_hierarchy((8, 8), "tebd", shared=shared, seed=4)
        z, _ = h.renormalize(x)
        zs, _ = h.renormalize(torch.roll(x, shifts=(2, 4), dims=(1, 2)))
        covariant = torch.allclose(zs, torch.roll(z, shifts=(2, 4), dims=(1, 2)), rtol=1e-12, atol=1e-12)
        assert covariant == shared


def sublattice_sites(lattice, scale):
    """Full-lattice indices of the sites active at ``scale`` (all coordinates multiples of 2^scale)."""
    coords = np.stack(np.unravel_index(np.arange(lattice.n_sites), lattice.shape), axis=1)
    return np.flatnonzero((coords % 2**scale == 0).all(axis=1))


@pytest.mark.parametrize("case", HIERARCHY_CASES, ids=case_id)
def test_layer_blocks_partition_active_sublattice(case):
    shape, arch = case
    lattice = Lattice(shape)
    d, L = lattice.d, shape[0]
    specs = layer_specs(lattice, arch, depth=1 if arch == "tebd" and L == 2 else None)
    for spec in specs:
        assert spec.blocks.shape[1] == 2**d
        flat = spec.blocks.reshape(-1)
        assert len(set(flat.tolist())) == flat.size, "blocks of a layer overlap"
        np.testing.assert_array_equal(np.sort(flat), sublattice_sites(lattice, spec.scale))
        coords = np.stack(np.unravel_index(spec.blocks[:, 0], shape), axis=1) // 2**spec.scale
        if spec.kind == "decimator":
            assert (coords % 2 == 0).all(), "decimator corners sit at even sub-lattice coordinates"
    if arch == "mera":
        n = L.bit_length() - 1
        kinds = [(s.kind, s.scale) for s in specs]
        expected = []
        for scale in range(n):
            if L // 2**scale > 2:
                expected.append(("disentangler", scale))
            expected.append(("decimator", scale))
        assert kinds == expected
        for spec in specs:
            if spec.kind == "disentangler":
                coords = np.stack(np.unravel_index(spec.blocks[:, 0], shape), axis=1) // 2**spec.scale
                assert (coords % 2 == 1).all(), "disentangler corners sit at odd sub-lattice coordinates"
    if arch == "tree":
        assert all(s.kind == "decimator" for s in specs)
    if arch == "tebd":
        assert all(s.kind == "disentangler" and s.scale == 0 for s in specs)
        assert len(specs) == (1 if L == 2 else 2 * (L.bit_length() - 1))


@pytest.mark.parametrize("case", [c for c in HIERARCHY_CASES if c[1] != "tebd"], ids=case_id)
def test_each_site_decimated_exactly_once(case):
    shape, arch = case
    lattice = Lattice(shape)
    d, L = lattice.d, shape[0]
    n = L.bit_length() - 1
    top = n - 1
    specs = layer_specs(lattice, arch)
    decimators = [s for s in specs if s.kind == "decimator"]
    assert [s.scale for s in decimators] == list(range(n))
    assert len(decimators[-1].blocks) == 1  # the top block
    count = np.zeros(lattice.n_sites, dtype=int)
    for s in decimators[:-1]:
        np.add.at(count, s.blocks[:, 1:].reshape(-1), 1)  # non-corner outputs become latents
    np.add.at(count, decimators[-1].blocks.reshape(-1), 1)  # all outputs of the top block
    np.testing.assert_array_equal(count, np.ones(lattice.n_sites, dtype=int))

    h = Hierarchy(lattice, arch, hidden=(4,))
    scale = h.latent_scale()
    assert scale.shape == shape
    hist = np.bincount(scale.reshape(-1), minlength=n)
    expected = [(2**d - 1) * (L // 2 ** (l + 1)) ** d for l in range(top)] + [2**d]
    np.testing.assert_array_equal(hist, expected)
    assert hist.sum() == lattice.n_sites
    # the top block holds the origin
    assert scale.reshape(-1)[0] == top


def test_tebd_latent_scale_is_zero():
    h = Hierarchy(Lattice((4, 4)), "tebd", hidden=(4,))
    np.testing.assert_array_equal(h.latent_scale(), np.zeros((4, 4), dtype=int))


@pytest.mark.parametrize("shape", [(8,), (4, 4), (4, 4, 4)], ids=lambda s: "x".join(map(str, s)))
def test_tree_scale0_latents_depend_only_on_their_block(shape):
    lattice = Lattice(shape)
    h = make_hierarchy(shape, "tree", seed=11)
    x = randn(*shape, seed=12)
    J = single_jacobian(h.renormalize, x)  # (n_sites, n_sites): d z_i / d x_j
    dec0 = h.specs[0]
    assert dec0.kind == "decimator" and dec0.scale == 0
    n_checked = 0
    for block in dec0.blocks:
        mask = np.zeros(lattice.n_sites, dtype=bool)
        mask[block] = True
        for site in block[1:]:  # the non-corner outputs are final scale-0 latents
            row = J[site]
            assert row[torch.as_tensor(~mask)].abs().max() == 0
            assert (row[torch.as_tensor(mask)].abs() > 0).all()
            n_checked += 1
    assert n_checked == (2**lattice.d - 1) * len(dec0.blocks)
    # while the top latents depend on every physical variable
    assert (J[0].abs() > 0).all()


@pytest.mark.parametrize("shape", [(8,), (4, 4), (4, 4, 4)], ids=lambda s: "x".join(map(str, s)))
def test_tebd_depth_one_jacobian_is_block_diagonal(shape):
    lattice = Lattice(shape)
    h = make_hierarchy(shape, "tebd", depth=1, seed=13)
    x = randn(*shape, seed=14)
    for fn, v in ((h.renormalize, x), (h.generate, x)):
        J = single_jacobian(fn, v)
        same_block = np.zeros((lattice.n_sites, lattice.n_sites), dtype=bool)
        for block in lattice.blocks:
            same_block[np.ix_(block, block)] = True
        same_block = torch.as_tensor(same_block)
        assert J[~same_block].abs().max() == 0
        assert (J[same_block].abs() > 0).all()


CONV_CASES = [((16,), "mera"), ((8, 8), "mera"), ((8, 8), "tree"), ((8, 8), "tebd"), ((4, 4, 4), "mera")]


@pytest.mark.parametrize("case", CONV_CASES, ids=case_id)
def test_convolutional_conditioners_inverse_and_logdet(case):
    shape, arch = case
    h = make_hierarchy(shape, arch, seed=21, kernel=3, linear=True, elementwise=True)
    check_bijection(h, randn(3, *shape, seed=22), n_jac=1)


@pytest.mark.parametrize("case", [((16,), "mera"), ((8, 8), "mera"), ((4, 4), "tree")], ids=case_id)
def test_spline_couplings_in_a_hierarchy_inverse_and_logdet(case):
    shape, arch = case
    # (random weights of scale 0.1 on fields of scale 2 make knots so steep that an 8x8 round trip
    # loses all digits: ill-conditioned parameters, not an error of the inverse)
    h = make_hierarchy(shape, arch, seed=27, spline_bins=8, linear=True, elementwise=True, scale=0.05)
    check_bijection(h, 2 * randn(3, *shape, seed=28), n_jac=1, tight=SPLINE_TIGHT)


@pytest.mark.parametrize("shape", [(16,), (8, 8)], ids=lambda s: "x".join(map(str, s)))
def test_convolutional_conditioner_reaches_neighbouring_blocks_only(shape):
    """One coupling of a 3^d conditioner: a block's outputs depend on its own block and on the
    blocks one grid step away (periodically), and on nothing further (each further coupling
    reaches one grid step more)."""
    lattice = Lattice(shape)
    h = Hierarchy(lattice, "tebd", depth=1, n_couplings=1, hidden=HIDDEN, kernel=3)
    h = perturb(h.double(), seed=23)
    J = single_jacobian(h.renormalize, randn(*shape, seed=24))
    grid = tuple(n // 2 for n in shape)
    block_of = np.empty(lattice.n_sites, dtype=int)
    for b, sites in enumerate(lattice.blocks):
        block_of[sites] = b
    coords = np.stack(np.unravel_index(np.arange(len(lattice.blocks)), grid), axis=1)
    delta = np.abs(coords[:, None, :] - coords[None, :, :])
    near = (np.minimum(delta, np.array(grid) - delta) <= 1).all(axis=2)  # (blocks, blocks)
    reach = torch.as_tensor(near[np.ix_(block_of, block_of)])
    assert J[~reach].abs().max() == 0
    other_block = torch.as_tensor(block_of[:, None] != block_of[None, :])
    assert J[reach & other_block].abs().max() > 1e-3  # the neighbours are really seen


def test_convolutional_conditioners_are_translation_covariant():
    x = randn(2, 8, 8, seed=25)
    h = make_hierarchy((8, 8), "tebd", seed=26, kernel=3)
    z, _ = h.renormalize(x)
    zs, _ = h.renormalize(torch.roll(x, shifts=(2, 4), dims=(1, 2)))
    torch.testing.assert_close(zs, torch.roll(z, shifts=(2, 4), dims=(1, 2)), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kernel, shared", [(2, True), (0, True), (3, False)])
def test_bad_convolutional_conditioner_rejected(kernel, shared):
    with pytest.raises(ValueError, match="kernel"):
        Hierarchy(Lattice((4, 4)), "mera", hidden=HIDDEN, shared=shared, kernel=kernel)


def test_tebd_depth_two_spreads_beyond_a_block():
    h = make_hierarchy((8,), "tebd", depth=2, seed=15)
    J = single_jacobian(h.renormalize, randn(8, seed=16))
    # after an unshifted and a shifted layer, site 1 sees sites 0..3 (blocks (0,1), (2,3) then (1,2))
    nz = (J[1].abs() > 0).nonzero().reshape(-1).tolist()
    assert nz == [0, 1, 2, 3]


# --------------------------------------------------------------------------------------------
# Flow
# --------------------------------------------------------------------------------------------


def make_flow(shape, arch="mera", symmetrize=False, seed=0, scale=0.1, linear=False, elementwise=False):
    hierarchy = make_hierarchy(shape, arch, seed=seed, scale=scale, linear=linear, elementwise=elementwise)
    flow = Flow(hierarchy, symmetrize=symmetrize)
    if linear:
        with torch.no_grad():
            flow.hierarchy.linear.raw.normal_(0, 0.2, generator=torch.Generator().manual_seed(seed))
    return flow


SYM = pytest.mark.parametrize("symmetrize", [False, True], ids=["plain", "sym"])


@SYM
@pytest.mark.parametrize("shape", [(8,), (4, 4)], ids=lambda s: "x".join(map(str, s)))
def test_log_prob_matches_sample_and_log_prob(shape, symmetrize):
    flow = make_flow(shape, symmetrize=symmetrize, seed=21, linear=True, elementwise=True)
    x, log_q = flow.sample_and_log_prob(64, generator=torch.Generator().manual_seed(3))
    assert x.shape == (64, *shape) and x.dtype == torch.float64 and log_q.shape == (64,)
    torch.testing.assert_close(flow.log_prob(x), log_q, rtol=1e-10, atol=1e-10)


@SYM
def test_log_prob_normalized_quadrature_two_sites(symmetrize):
    """1D L = 2 flow (2 variables): integrate exp(log_prob) on a wide grid (trapezoid rule, which is
    spectrally accurate for a smooth density that vanishes at the edges of the box)."""
    # 0.1 perturbations already give this flow a long, thin ridge (density ~e^-12 at |x| = 40);
    # 0.05 keeps it clearly non-Gaussian but lets a +-24 box hold all but ~1e-10 of the mass
    flow = make_flow((2,), symmetrize=symmetrize, seed=22, scale=0.05)
    n = 481
    grid = torch.linspace(-24.0, 24.0, n, dtype=torch.float64)
    x = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), dim=-1).reshape(-1, 2)
    with torch.no_grad():
        lp = flow.log_prob(x)
    gauss = -0.5 * x.pow(2).sum(1) - math.log(2 * math.pi)
    assert (lp - gauss).abs().max() > 1e-2  # the flow is not the prior
    dx = (grid[1] - grid[0]).item()
    w = torch.full((n,), dx, dtype=torch.float64)
    w[0] = w[-1] = dx / 2
    lp = lp.reshape(n, n)
    total = (lp.exp() * w[:, None] * w[None, :]).sum().item()
    # the density is negligible at the edge of the box
    assert max(lp[0].max(), lp[-1].max(), lp[:, 0].max(), lp[:, -1].max()) < -20
    assert total == pytest.approx(1.0, abs=1e-8)


@SYM
@pytest.mark.parametrize("maps", [(), ("linear",), ("linear", "elementwise")], ids=["nvp", "nvp+linear", "nvp+linear+site"])
def test_log_prob_normalized_importance_sampling_4x4(symmetrize, maps):
    """mean of exp(log_prob(x) - log_proposal(x)) over a wide Gaussian proposal is 1 within 4 SE."""
    flow = make_flow((4, 4), symmetrize=symmetrize, seed=23, scale=0.05, **{m: True for m in maps})
    with torch.no_grad():
        samples = flow.sample(8192, generator=torch.Generator().manual_seed(5)).reshape(8192, -1)
    # proposal: the flow's own mean and covariance, inflated 1.5x (wider in every principal direction)
    mean, cov = samples.mean(0), torch.cov(samples.T)
    proposal = torch.distributions.MultivariateNormal(mean, covariance_matrix=1.5 * cov)
    n = 100_000
    torch.manual_seed(6)
    x = proposal.sample((n,))
    with torch.no_grad():
        w = (flow.log_prob(x.reshape(n, 4, 4)) - proposal.log_prob(x)).exp()
    est, se = w.mean().item(), (w.std() / math.sqrt(n)).item()
    assert se < 0.02, f"proposal too poor: standard error {se}"
    assert abs(est - 1.0) < 4 * se, (est, se)
    # the check has power: a density off by a factor e^0.05 would fail it
    assert abs(est * math.exp(0.05) - 1.0) > 4 * se


def test_symmetrized_log_prob_is_even():
    flow = make_flow((4, 4), symmetrize=True, seed=24)
    plain = Flow(flow.hierarchy, symmetrize=False)
    x = randn(16, 4, 4, seed=7) + 0.5
    with torch.no_grad():
        torch.testing.assert_close(flow.log_prob(x), flow.log_prob(-x), **TIGHT)
        # the unsymmetrized density is not even, so the symmetrization is doing something
        assert (plain.log_prob(x) - plain.log_prob(-x)).abs().max() > 1e-2
        # q_s(x) = [q(x) + q(-x)] / 2
        expected = torch.logaddexp(plain.log_prob(x), plain.log_prob(-x)) - math.log(2)
        torch.testing.assert_close(flow.log_prob(x), expected, **TIGHT)


def test_symmetrized_sampling_flips_signs_reproducibly():
    shape, n = (4, 4), 200
    sym = make_flow(shape, symmetrize=True, seed=25)
    plain = Flow(sym.hierarchy, symmetrize=False)
    x_sym = sym.sample(n, generator=torch.Generator().manual_seed(9))
    x_plain = plain.sample(n, generator=torch.Generator().manual_seed(9))
    # same latent draws: each symmetrized sample is +- the plain one
    plus = (x_sym == x_plain).flatten(1).all(1)
    minus = (x_sym == -x_plain).flatten(1).all(1)
    assert bool((plus | minus).all())
    n_flipped = int(minus.sum())
    assert 0.3 * n < n_flipped < 0.7 * n
    # exact reproduction with the same seed, different draws with another seed
    again, log_q_again = sym.sample_and_log_prob(n, generator=torch.Generator().manual_seed(9))
    assert torch.equal(again, x_sym)
    other = sym.sample(n, generator=torch.Generator().manual_seed(10))
    assert not torch.equal(other, x_sym)
    # plain sampling is reproducible too
    assert torch.equal(plain.sample(n, generator=torch.Generator().manual_seed(9)), x_plain)


def test_sample_is_generate_of_latent():
    flow = make_flow((4, 4), seed=26)
    x, log_q = flow.sample_and_log_prob(8, generator=torch.Generator().manual_seed(2))
    z = flow.sample_latent(8, generator=torch.Generator().manual_seed(2))
    x_ref, ld = flow.hierarchy.generate(z)
    torch.testing.assert_close(x, x_ref, rtol=0, atol=0)
    torch.testing.assert_close(log_q, flow.log_prior(z) - ld, rtol=0, atol=0)
    torch.testing.assert_close(
        flow.log_prior(z), torch.distributions.Normal(0.0, 1.0).log_prob(z).flatten(1).sum(1), **TIGHT
    )


def test_sample_and_log_prob_is_differentiable():
    flow = make_flow((4, 4), symmetrize=True, seed=27)
    x, log_q = flow.sample_and_log_prob(8, generator=torch.Generator().manual_seed(1))
    (x.pow(2).sum() + log_q.sum()).backward()
    grads = [p.grad for p in flow.parameters()]
    assert all(g is not None for g in grads)
    assert any(g.abs().max() > 0 for g in grads)


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(6,), (3, 3), (12, 12), (6, 6, 6)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_lattice_not_power_of_two_rejected(shape, arch):
    with pytest.raises(ValueError, match="power of two"):
        Hierarchy(Lattice(shape), arch, hidden=(4,))


@pytest.mark.parametrize("shape", [(4, 8), (8, 4), (2, 4), (4, 4, 2)], ids=lambda s: "x".join(map(str, s)))
def test_rectangular_lattice_rejected(shape):
    with pytest.raises(ValueError, match=r"L\^d lattice"):
        Hierarchy(Lattice(shape), "mera", hidden=(4,))


@pytest.mark.parametrize("arch", ["MERA", "peps", "", "mera "])
def test_unknown_arch_rejected(arch):
    with pytest.raises(ValueError, match="arch must be one of"):
        Hierarchy(Lattice((4, 4)), arch, hidden=(4,))


@pytest.mark.parametrize("depth", [0, -1])
def test_tebd_depth_below_one_rejected(depth):
    with pytest.raises(ValueError, match="depth must be >= 1"):
        Hierarchy(Lattice((4, 4)), "tebd", depth=depth, hidden=(4,))


def test_tebd_l2_depth_above_one_rejected():
    with pytest.raises(ValueError, match="depth = 1"):
        Hierarchy(Lattice((2, 2)), "tebd", depth=2, hidden=(4,))


def test_tebd_l2_default_depth_is_accepted():
    h = Hierarchy(Lattice((2, 2)), "tebd", hidden=(4,))
    assert len(h.specs) == 1
