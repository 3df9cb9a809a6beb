"""Sector tuning (Ron, Brandt & Swendsen): the learned filter plus a block term, and the choice of
its weight per sector by the convergence of the exponents from N_r = 1 to 2."""

import json
import math

import numpy as np
import pytest
import torch

from deeprg.mc.stats import Estimate
from deeprg.rsrg.mcrg import MCRGResult
from deeprg.rsrg.rbm import block_indicator, hidden_field
from deeprg.rsrg.transforms import MajorityRule, RBMProjector
from deeprg.rsrg.tuning import tune_sectors

torch.set_num_threads(1)


@pytest.mark.parametrize("f, d", [(2, 2), (4, 2), (8, 2), (2, 3), (4, 3), (6, 3)])
def test_block_indicator_marks_the_block_the_window_is_centred_on(f, d):
    b = block_indicator(f, d)
    assert b.shape == (f,) * d and b.sum() == 2**d
    c = f // 2 - 1
    assert np.all(b[(slice(c, c + 2),) * d] == 1)
    # the field of the indicator filter is the block's total spin
    spins = np.random.default_rng(0).choice(np.array([-1, 1], dtype=np.int8), size=(5,) + (8,) * d)
    field = hidden_field(torch.from_numpy(spins).double(), RBMProjector(b, dtype=torch.float64).weights).numpy()
    total = sum(spins[(slice(None),) + tuple(slice(o, None, 2) for o in offset)]
                for offset in np.ndindex(*(2,) * d))
    assert np.array_equal(field, total)


@pytest.mark.parametrize("d", [2, 3])
def test_a_large_block_weight_turns_the_learned_filter_into_the_majority_rule(d):
    """w + alpha * block with alpha >> |w| decides every untied block by its majority."""
    rng = np.random.default_rng(1)
    w = rng.normal(scale=0.3, size=(4,) * d)
    proj = RBMProjector(w, block_weight=1e4)
    spins = rng.choice(np.array([-1, 1], dtype=np.int8), size=(6,) + (8,) * d)
    a = proj.transform(spins, rng)
    b = MajorityRule().transform(spins, rng)
    total = sum(spins[(slice(None),) + tuple(slice(o, None, 2) for o in offset)] for offset in np.ndindex(*(2,) * d))
    decided = total != 0
    assert decided.any() and np.array_equal(a[decided], b[decided])


def test_block_weight_adds_to_the_gauge_fixed_filter():
    w = -np.arange(16, dtype=float).reshape(4, 4)  # negative sum: the gauge flips it
    proj = RBMProjector(w, dtype=torch.float64, block_weight=0.5)
    assert np.allclose(proj.weights.numpy(), -w + 0.5 * block_indicator(4, 2))
    assert RBMProjector(w).block_weight == 0.0
    for bad in (-0.1, math.inf, math.nan):
        with pytest.raises(ValueError, match="block_weight"):
            RBMProjector(w, block_weight=bad)


def result(y1: tuple[float, float], y2: tuple[float, float], err: float = 1e-3) -> MCRGResult:
    """A 2-level MCRGResult whose last-N_c y_t / y_h are y1 at N_r = 1 and y2 at N_r = 2 (the
    other N_c entries are nan, which the choice must not read)."""
    def table(a: float, b: float, n: int) -> list[list[Estimate]]:
        nan = Estimate(math.nan, math.nan, math.nan, math.nan, 100)
        return [[nan] * (n - 1) + [Estimate(v, err, math.nan, math.nan, 100)] for v in (a, b)]

    return MCRGResult("rbm", 2, 100, 10, table(y1[0], y2[0], 7), table(y1[1], y2[1], 4))


def test_tuning_chooses_per_sector_the_smallest_change_from_one_to_two_steps():
    results = [result((0.99, 1.88), (0.999, 1.87)),   # gaps +0.009, -0.010
               result((0.96, 1.874), (0.99, 1.8745)),  # gaps +0.03, +0.0005: best odd
               result((0.95, 1.86), (0.9505, 1.87))]   # gaps +0.0005: best even, +0.01
    tuning = tune_sectors([0.0, 0.5, 1.0], results)
    assert tuning.even.parameter == 1.0 and tuning.odd.parameter == 0.5
    assert tuning.even.n_c == 7 and tuning.odd.n_c == 4
    assert tuning.y_t is results[2].y_t and tuning.y_h is results[1].y_h
    assert tuning.even.gaps[0].mean == pytest.approx(0.009) and tuning.even.gaps[0].error == pytest.approx(math.sqrt(2) * 1e-3)
    assert tuning.odd.resolved  # 0.0005 against 0.01 with errors 1.4e-3
    close = tune_sectors([0.0, 1.0], [result((1.0, 1.88), (1.001, 1.881)), result((1.0, 1.88), (1.0015, 1.8815))])
    assert not close.even.resolved and close.even.parameter == 0.0
    json.dumps(tuning.to_dict())


def test_tuning_refuses_what_it_cannot_compare():
    one = result((1.0, 1.9), (1.0, 1.9))
    with pytest.raises(ValueError, match="at least 2"):
        tune_sectors([0.0], [one])
    with pytest.raises(ValueError, match="2 MCRG results for 3"):
        tune_sectors([0.0, 1.0, 2.0], [one, one])
    undefined = tune_sectors([0.0, 1.0], [result((math.nan, 1.9), (1.0, 1.9)), result((1.0, math.nan), (math.nan, 1.9))])
    assert undefined.even.parameter == 0.0 and not undefined.even.resolved  # no finite gap: first, unresolved
    assert undefined.odd.parameter == 0.0 and undefined.odd.resolved  # the only finite gap
    short = MCRGResult("rbm", 1, 100, 10, one.y_t[:1], one.y_h[:1])
    with pytest.raises(ValueError, match="levels >= 2"):
        tune_sectors([0.0, 1.0], [one, short])
