"""Process memory (deeprg.memory): large tensors reuse freed pages; long HMC runs on large
lattices keep a flat resident size."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from deeprg.lattice import Lattice
from deeprg.mc import hmc as hmc_module
from deeprg import memory
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


GLIBC = sys.platform.startswith("linux") and memory._function("gnu_get_libc_version") is not None

#: In a fresh process: a loop that allocates four large tensors (40-64 MB, above glibc's largest
#: mmap threshold, 32 MB), writes them and frees them, 12 times; prints the page faults of the last
#: 4 rounds. Torch asks for 64-byte aligned blocks, slightly larger than the block it freed, so
#: the heap needs a few rounds before freed blocks serve the next round's requests.
REPEATED_ALLOCATIONS = textwrap.dedent("""
    import resource, sys, torch
    from deeprg.memory import keep_freed_memory
    if sys.argv[1] == "keep":
        assert keep_freed_memory()
    for round in range(12):
        if round == 8:
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        tensors = [torch.empty(size * 2**20, dtype=torch.uint8).fill_(1) for size in (40, 64, 48, 40)]
        del tensors
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def faults_of_repeated_allocations(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", REPEATED_ALLOCATIONS, mode], capture_output=True, text=True,
                         check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not GLIBC, reason="needs Linux and glibc")
def test_kept_memory_serves_repeated_large_allocations_without_faulting_them_in_again():
    """Without keep_freed_memory every round maps its blocks afresh and faults their 49,152 pages
    of 4 KiB in again (4 x 49,152 in the last 4 rounds); with it the freed pages are reused (0-4096
    faults there on this machine)."""
    one_round = (40 + 64 + 48 + 40) * 2**20 // 4096
    assert faults_of_repeated_allocations("default") > 3 * one_round
    assert faults_of_repeated_allocations("keep") < one_round // 3


def test_the_memory_check_counts_the_heap_slack_on_the_cpu(monkeypatch):
    """A CPU run is refused when its tensors fit but their peak resident size with the kept
    heap (HEAP_SLACK times the tensors) does not."""
    from deeprg import config

    monkeypatch.setattr(config, "available_memory", lambda: 2**30)
    config.check_memory(2**30 / config.HEAP_SLACK * 0.99, "batch")
    with pytest.raises(config.ConfigError, match=r"batch: the run would need about 1.01 GiB of memory; 1 GiB is available"):
        config.check_memory(2**30 / config.HEAP_SLACK * 1.01, "batch")
