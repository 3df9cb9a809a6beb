"""Long HMC runs on large lattices keep a flat resident size (deeprg.memory)."""

import sys

import pytest
import torch

from deeprg.lattice import Lattice
from deeprg.mc import hmc as hmc_module
from deeprg.memory import trim_heap
from deeprg.models.relaxed import RelaxedIsing


def resident_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 1e6


def growth_of_a_physical_hmc_run(steps: int) -> float:
    """Resident-size growth (MB) from step 100 to step ``steps`` of physical HMC on the 32x32
    relaxed Ising model, 64 float32 chains, 10 leapfrog steps."""
    target = RelaxedIsing(Lattice.square(32), "critical")
    x0 = torch.randn((64, 32, 32), generator=torch.Generator().manual_seed(0))
    seen = {}

    def callback(step, _):
        if step in (100, steps):
            seen[step] = resident_mb()

    hmc_module.hmc(target.log_prob_unnormalized, x0, steps, step_size=0.05, n_leapfrog=10,
                   generator=torch.Generator().manual_seed(1), callback=callback)
    return seen[steps] - seen[100]


@pytest.mark.skipif(not sys.platform.startswith("linux") or not trim_heap(), reason="needs Linux and glibc")
@pytest.mark.slow
def test_a_long_physical_hmc_run_does_not_grow_the_heap():
    """Without trimming (``TRIM_EVERY`` set out of reach), the same 600 steps grew the resident size
    by 65-300 MB here, and a 10,000-step run at 32x32 was killed at 22 GB; with it, the growth
    stays within 40 MB."""
    torch.set_num_threads(1)
    assert hmc_module.TRIM_EVERY <= 100
    assert growth_of_a_physical_hmc_run(700) < 40
