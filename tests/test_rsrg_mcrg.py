"""MCRG: the linearized RG matrix on cases with known answers, streaming, and the published table."""

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from deeprg import Lattice
from deeprg.mc import make_sampler
from deeprg.models.ising import K_C
from deeprg.rsrg.mcrg import REFERENCE_EXPONENTS, MCRGAccumulator, leading_exponent, mcrg, run_mcrg
from deeprg.rsrg.operators import operator_set
from deeprg.rsrg.transforms import Decimation, MajorityRule, RBMProjector

torch.set_num_threads(1)

TABLE = Path(__file__).parent / "data" / "chung_kao_2020_table1.csv"
N_EVEN, N_ODD = 7, 4


def synthetic_values(rng, n: int, maps: dict[str, np.ndarray]) -> np.ndarray:
    """Two levels where level 0 (fine) = C @ level 1 (coarse) exactly, per sector."""
    coarse = rng.normal(size=(n, N_EVEN + N_ODD)) * np.arange(1, 12)
    fine = np.concatenate([coarse[:, :N_EVEN] @ maps["even"].T, coarse[:, N_EVEN:] @ maps["odd"].T], axis=1)
    return np.stack([fine, coarse], axis=1)


def test_identity_map_gives_the_identity_matrix(rng):
    values = synthetic_values(rng, 500, {"even": np.eye(N_EVEN), "odd": np.eye(N_ODD)})
    acc = MCRGAccumulator(500, levels=1, n_blocks=10)
    acc.add(values)
    for n_c in range(1, 8):
        assert np.allclose(acc.rg_matrix(1, "even", n_c), np.eye(n_c), atol=1e-10)
    result = acc.result("identity")
    for est in result.y_t[0] + result.y_h[0]:
        assert est.mean == pytest.approx(0.0, abs=1e-9) and est.error < 1e-9


def test_linear_map_gives_its_transpose(rng):
    """Fine = C coarse with C lower triangular: T = C^T for every N_c, leading eigenvalue 4
    (even, y = 2) and 2^(15/8) (odd, y = 15/8)."""
    even = np.tril(rng.normal(size=(N_EVEN, N_EVEN)), -1) + np.diag([4.0, 1.5, 0.7, 2.0, 0.3, 3.0, 0.1])
    odd = np.tril(rng.normal(size=(N_ODD, N_ODD)), -1) + np.diag([2 ** 1.875, 0.5, 1.2, 0.2])
    values = synthetic_values(rng, 640, {"even": even, "odd": odd})
    acc = MCRGAccumulator(640, levels=1, n_blocks=8)
    for i in range(0, 640, 100):  # in uneven chunks
        acc.add(values[i : i + 100])
    for n_c in range(1, 8):
        assert np.allclose(acc.rg_matrix(1, "even", n_c), even[:n_c, :n_c].T, atol=1e-8)
    result = acc.result("linear")
    assert all(e.mean == pytest.approx(2.0, abs=1e-9) for e in result.y_t[0])
    assert all(e.mean == pytest.approx(1.875, abs=1e-9) for e in result.y_h[0])
    assert result.n_configurations == 640 and len(result.y_t[0]) == 7 and len(result.y_h[0]) == 4


def test_linear_map_in_3d_gives_its_transpose_with_the_3d_operator_counts(rng):
    """The 3D accumulator (8 even, 6 odd operators) on level values related by a known lower
    triangular map: T = C^T for every N_c, and the leading eigenvalues give y_t = 1/nu and
    y_h = 3 - Delta_sigma of the 3D Ising model exactly."""
    ops = operator_set(3)
    n_even, n_odd = len(ops.even), len(ops.odd)
    y_t, y_h = REFERENCE_EXPONENTS[3]["y_t"], REFERENCE_EXPONENTS[3]["y_h"]
    even = np.tril(rng.normal(size=(n_even, n_even)), -1) + np.diag([2**y_t] + list(rng.uniform(0.1, 2.5, n_even - 1)))
    odd = np.tril(rng.normal(size=(n_odd, n_odd)), -1) + np.diag([2**y_h] + list(rng.uniform(0.1, 4.0, n_odd - 1)))
    coarse = rng.normal(size=(800, n_even + n_odd)) * np.arange(1, n_even + n_odd + 1)
    fine = np.concatenate([coarse[:, :n_even] @ even.T, coarse[:, n_even:] @ odd.T], axis=1)
    acc = MCRGAccumulator(800, levels=1, n_blocks=8, d=3)
    acc.add(np.stack([fine, coarse], axis=1))
    for n_c in range(1, n_even + 1):
        assert np.allclose(acc.rg_matrix(1, "even", n_c), even[:n_c, :n_c].T, atol=1e-8)
    for n_c in range(1, n_odd + 1):
        assert np.allclose(acc.rg_matrix(1, "odd", n_c), odd[:n_c, :n_c].T, atol=1e-8)
    result = acc.result("linear")
    assert len(result.y_t[0]) == n_even and len(result.y_h[0]) == n_odd and result.to_dict()["d"] == 3
    assert all(e.mean == pytest.approx(y_t, abs=1e-9) for e in result.y_t[0])
    assert all(e.mean == pytest.approx(y_h, abs=1e-9) for e in result.y_h[0])
    with pytest.raises(ValueError, match=r"shape \(batch, 2, 14\)"):
        acc.add(np.zeros((1, 2, 11)))


def test_leading_exponent_takes_the_largest_real_eigenvalue():
    rotation = 3.0 * np.array([[0.0, -1.0], [1.0, 0.0]])  # eigenvalues +-3i
    T = np.block([[rotation, np.zeros((2, 1))], [np.zeros((1, 2)), np.array([[1.5]])]])
    assert leading_exponent(T) == pytest.approx(math.log2(1.5))
    assert math.isnan(leading_exponent(np.diag([-2.0, -1.0])))


def test_jackknife_error_is_the_spread_of_the_leave_one_out_values(rng):
    """Noisy map: the error is sqrt((n-1)/n sum (y_j - mean)^2) over leave-one-block-out fits."""
    values = synthetic_values(rng, 400, {"even": np.diag([2.0, 1.0, 0.5, 0.4, 0.3, 0.2, 0.1]), "odd": np.eye(N_ODD)})
    values[:, 0] += rng.normal(size=values[:, 0].shape)
    acc = MCRGAccumulator(400, levels=1, n_blocks=4)
    acc.add(values)
    est = acc.result("noisy").y_t[0][2]
    y = []
    for j in range(4):
        keep = np.ones(400, bool)
        keep[j * 100 : (j + 1) * 100] = False
        x = values[keep].reshape(-1, 2, 11)
        c = np.cov(np.concatenate([x[:, 1, :3], x[:, 0, :3]], axis=1).T, bias=True)
        eig = np.linalg.eigvals(np.linalg.solve(c[:3, :3], c[:3, 3:]))
        assert np.all(eig.imag == 0)  # well-separated eigenvalues stay real
        y.append(math.log2(eig.real.max()))
    y = np.array(y)
    assert est.error == pytest.approx(math.sqrt(3 / 4 * np.sum((y - y.mean()) ** 2)), rel=1e-8)


def test_streaming_is_independent_of_the_chunk_size(rng):
    spins = rng.choice(np.array([-1, 1], dtype=np.int8), size=(150, 16, 16))
    transforms = [MajorityRule(), RBMProjector(0.3 * np.ones((4, 4)))]
    a = mcrg(spins, transforms, levels=2, seed=3, n_blocks=5, chunk=150)
    b = mcrg(spins, transforms, levels=2, seed=3, n_blocks=5, chunk=17)
    for ra, rb in zip(a, b):
        assert ra.to_dict() == rb.to_dict()
    c = mcrg(spins, transforms[:1], levels=2, seed=4, n_blocks=5)
    assert c[0].to_dict() != a[0].to_dict()  # ties are broken by the seed


def test_bad_input_is_rejected_before_any_work(rng):
    spins = rng.choice(np.array([-1, 1], dtype=np.int8), size=(100, 16, 16))
    with pytest.raises(ValueError, match="not divisible"):
        mcrg(spins[:, :12, :12], [MajorityRule()], levels=3)
    with pytest.raises(ValueError, match="extents >= 4"):
        mcrg(spins, [Decimation()], levels=3)
    with pytest.raises(ValueError, match="at least 128 configurations"):
        mcrg(spins, [MajorityRule()], levels=1, n_blocks=64)
    with pytest.raises(ValueError, match="larger than the lattice"):
        mcrg(spins, [RBMProjector(np.ones((16, 16)))], levels=2)
    chunks = iter([spins[:50], spins[50:]])
    with pytest.raises(ValueError, match="more than the announced"):
        run_mcrg(chunks, (16, 16), [MajorityRule()], 80, levels=1, n_blocks=4)


def published(column: str) -> dict[tuple[int, int], tuple[float, float]]:
    """(N_r, N_c) -> (value, error) from the reference CSV; '0.967(3)' -> (0.967, 0.003)."""
    out = {}
    with TABLE.open() as fh:
        for row in csv.DictReader(line for line in fh if not line.startswith("#")):
            text = row[column]
            value, err = text.rstrip(")").split("(")
            decimals = len(value.split(".")[1])
            out[int(row["N_r"]), int(row["N_c"])] = (float(value), int(err) * 10.0**-decimals)
    return out


def test_reference_table_parses():
    table = published("majority_rule")
    assert table[1, 7] == pytest.approx((0.967, 0.003)) and published("optimal_rbm")[1, 7] == pytest.approx((1.0001, 0.0011))


@pytest.mark.slow
def test_majority_rule_on_32x32_at_kc_matches_the_published_table():
    """Swendsen's majority-rule MCRG (Chung & Kao Table 1): 2 x 10^5 Wolff configurations."""
    n = 200_000
    sampler = make_sampler("wolff", Lattice.square(32), K_C, seed=11, n_chains=2)
    chunks = (run.spins_flat() for run in sampler.stream(n, thin="auto", chunk=4096))
    (result,) = run_mcrg(chunks, (32, 32), [MajorityRule()], n, levels=2, seed=0, n_blocks=20)
    table = published("majority_rule")
    for n_r in (1, 2):
        for n_c in range(1, 8):
            ours = result.y_t[n_r - 1][n_c - 1]
            value, err = table[n_r, n_c]
            assert abs(ours.mean - value) < 3.5 * math.hypot(ours.error, err), (n_r, n_c, str(ours), value)
    assert result.y_h[0][3].mean == pytest.approx(1.875, abs=0.01)
