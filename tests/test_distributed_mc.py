"""Monte Carlo sampling and MCRG on several processes (issue 15): ``deeprg.distributed`` on one
process, samplers over a subset of the chains, exact order-independent MCRG moments, and
``deeprg sample ising`` / ``deeprg mcrg`` on 2 processes giving results bit-identical to 1."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest
import torch

from deeprg import Lattice
from deeprg.data import load_dataset
from deeprg.distributed import SINGLE, DistributedMismatch, World
from deeprg.mc import make_sampler
from deeprg.models.ising import K_C
from deeprg.rsrg.mcrg import STREAM_CHUNK, MCRGAccumulator, MomentOverflow, configuration_share, mcrg
from deeprg.rsrg.transforms import MajorityRule, RBMProjector, level_generators, stream_generators

torch.set_num_threads(1)

# Short chains: the autocorrelation estimates warn, as expected.
pytestmark = pytest.mark.filterwarnings("ignore:chain length", "ignore:thin='auto'")


# ---- (a) deeprg.distributed on one process --------------------------------------------------------
@pytest.mark.parametrize("size", [1, 2, 3, 5, 8])
def test_shares_cover_every_item_once_in_global_order(size):
    for n in [0, 1, 2, 3, 7, 8, 100, 1001]:
        world = World(rank=0, size=size)
        shares = [world.share(n, rank=r) for r in range(size)]
        assert shares[0].start == 0 and shares[-1].stop == n
        assert all(a.stop == b.start for a, b in zip(shares, shares[1:]))  # contiguous, in rank order
        lengths = [s.stop - s.start for s in shares]
        assert sum(lengths) == n and max(lengths) - min(lengths) <= 1
        assert [World(rank=r, size=size).share(n) for r in range(size)] == shares


def test_single_world_collectives_are_identities():
    a = np.arange(6, dtype=np.int8).reshape(3, 2)
    assert not SINGLE.distributed and SINGLE.main and SINGLE.share(7) == slice(0, 7)
    assert np.array_equal(SINGLE.all_gather_rows(a), a) and SINGLE.all_gather_rows(a) is not a
    t = torch.from_numpy(a)
    assert SINGLE.all_gather_tensor(t) is t and SINGLE.counts(7) == [7]
    assert SINGLE.gather_rows(a) is a or np.shares_memory(SINGLE.gather_rows(a), a)
    assert SINGLE.all_sum([1.5, 2.0]).tolist() == [1.5, 2.0]
    big = np.array([2**62, -(2**62)], dtype=np.int64)
    assert SINGLE.all_sum_int(big).tolist() == big.tolist()
    with pytest.raises(TypeError, match="integers"):
        SINGLE.all_sum_int([1.5])
    assert SINGLE.any(True) and not SINGLE.any(False)
    SINGLE.check_same({"anything": object()}, "options")
    SINGLE.require_at_most(1, "--chains")
    with pytest.raises(DistributedMismatch, match="--chains"):
        World(rank=0, size=3).require_at_most(2, "--chains")


# ---- (b) a sampler over a subset of the chains --------------------------------------------------
class Recorder:
    """A gather for a sampler of all chains: records what the sampler pooled."""

    def __init__(self):
        self.calls = []

    def __call__(self, rows):
        self.calls.append(rows.copy())
        return rows


class Replay:
    """The gather of a sampler of ``chains``: checks its rows against the full run's and returns
    all chains' rows, as ``World.all_gather_rows`` does with every process running its share."""

    def __init__(self, calls, chains):
        self.calls, self.chains, self.used = calls, chains, 0

    def __call__(self, rows):
        full = self.calls[self.used]
        self.used += 1
        assert np.array_equal(rows, full[self.chains.start : self.chains.stop])
        return full


@pytest.mark.parametrize("name, burn_in", [("wolff", None), ("metropolis", 40)])
def test_subset_of_chains_is_bit_identical_to_the_same_chains_of_the_full_run(name, burn_in):
    """thin='auto' (and Wolff's default burn-in in rounds judged by the pooled cluster size)
    decided from all chains' data, given through gather: every chain is bit-identical."""
    record = Recorder()
    full = make_sampler(name, Lattice.square(6), K_C, seed=7, n_chains=4, gather=record)
    a = full.run(4 * 40, thin="auto", burn_in=burn_in)
    assert record.calls and all(c.shape[0] == 4 for c in record.calls)
    for chains in (range(1, 3), range(3, 4), range(0, 4)):
        replay = Replay(record.calls, chains)
        part = make_sampler(name, Lattice.square(6), K_C, seed=7, n_chains=4, chains=chains, gather=replay)
        b = part.run(4 * 40, thin="auto", burn_in=burn_in)
        assert replay.used == len(record.calls)
        assert (b.thin, b.burn_in, b.pilot_tau_int) == (a.thin, a.burn_in, a.pilot_tau_int)
        assert b.chains == chains and b.n_chains == len(chains) and b.spins.shape[0] == len(chains)
        assert np.array_equal(b.spins, a.spins[chains.start : chains.stop])
        for key in ("energy", "magnetization"):
            assert np.array_equal(b.series[key], a.series[key][chains.start : chains.stop])
    assert a.chains == range(4)


def test_subset_without_pooled_decisions_needs_no_gather():
    full = make_sampler("sw", Lattice.square(6), 0.3, seed=2, n_chains=3).run(3 * 20, thin=2, burn_in=10)
    part = make_sampler("sw", Lattice.square(6), 0.3, seed=2, n_chains=3, chains=slice(1, None))
    b = part.run(3 * 20, thin=2, burn_in=10)
    assert part.chains == range(1, 3) and np.array_equal(b.spins, full.spins[1:])
    assert np.array_equal(b.series["energy"], full.series["energy"][1:])
    with pytest.raises(ValueError, match="pass gather"):
        part.run(3 * 20, thin="auto", burn_in=10)
    fresh = make_sampler("sw", Lattice.square(6), 0.3, seed=2, n_chains=3, chains=range(1, 2))
    with pytest.raises(ValueError, match="pass gather"):
        fresh.run(3 * 20, thin=2)  # the default burn-in of a fresh sampler is pooled too


@pytest.mark.parametrize("chains, match", [
    (range(0), "non-empty"), (range(2, 5), r"within \[0, n_chains=4\)"), (range(0, 4, 2), "step 1"),
    (slice(0, 4, 2), "step 1"), (slice(-1, None), "within"), ([0, 1], "slice or range"),
    (slice(0.5, 2), "slice or range"),
])
def test_bad_chain_subsets_are_refused(chains, match):
    with pytest.raises(ValueError, match=match):
        make_sampler("wolff", (4, 4), K_C, n_chains=4, chains=chains)


def test_gather_must_return_every_chain():
    s = make_sampler("wolff", (4, 4), K_C, n_chains=4, chains=range(0, 2), gather=lambda rows: rows)
    with pytest.raises(ValueError, match="rows of all 4 chains"):
        s.run(4 * 8, thin="auto", burn_in=10)


# ---- (c) exact MCRG moments -----------------------------------------------------------------------
def exact_covariance(values: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The covariance of ``values[rows]`` in exact rational arithmetic, correctly rounded."""
    x = [[int(a) for a in row] for row in values.reshape(len(values), -1)[rows]]
    n, dim = len(x), len(x[0])
    s1 = [sum(r[k] for r in x) for k in range(dim)]
    s2 = [[sum(r[k] * r[m] for r in x) for m in range(dim)] for k in range(dim)]
    return np.array([[float(Fraction(n * s2[k][m] - s1[k] * s1[m], n * n)) for m in range(dim)] for k in range(dim)])


@pytest.mark.parametrize("magnitude", [1000, 10**7])  # float64-BLAS and int64 Gram matrices
def test_int64_moments_equal_exact_rational_arithmetic(rng, magnitude):
    n, blocks = 203, 4  # 3 configurations are dropped: blocks of 50 from configuration 3 on
    values = rng.integers(-magnitude, magnitude, size=(n, 2, 11)) + 10 * magnitude  # a large mean
    acc = MCRGAccumulator(n, levels=1, n_blocks=blocks)
    acc.add(values)
    assert np.array_equal(acc.covariance(), exact_covariance(values, np.arange(3, n)))
    left_out = np.r_[3:53, 103:n]  # all but block 1
    assert np.array_equal(acc.covariance(leave_out=1), exact_covariance(values, left_out))


def test_moments_do_not_depend_on_chunking_or_on_how_the_data_are_split(rng):
    n = 300
    values = rng.integers(-(10**6), 10**6, size=(n, 3, 11))
    whole = MCRGAccumulator(n, levels=2, n_blocks=6)
    whole.add(values)
    chunked = MCRGAccumulator(n, levels=2, n_blocks=6)
    for i in range(0, n, 7):
        chunked.add(values[i : i + 7])
    first, second = MCRGAccumulator(n, 2, 6), MCRGAccumulator(n, 2, 6, start=131)
    first.add(values[:131])
    second.add(values[131:200])
    second.add(values[200:])
    with pytest.raises(ValueError, match="131 of the announced 300"):
        first.result("x")
    first.merge(second)
    for acc in (chunked, first):
        assert np.array_equal(acc.covariance(), whole.covariance())
        assert np.array_equal(acc.covariance(leave_out=2), whole.covariance(leave_out=2))
        assert acc.result("x").to_dict() == whole.result("x").to_dict()
    twice = MCRGAccumulator(n, 2, 6, start=290)
    twice.add(values[290:])
    with pytest.raises(ValueError, match="added twice"):
        first.merge(twice)
    synthetic = MCRGAccumulator(n, 2, 6, start=290)
    synthetic.add(values[290:].astype(float) + 0.5)
    with pytest.raises(ValueError, match="integer"):
        MCRGAccumulator(n, 2, 6).merge(synthetic)


def test_moments_that_could_overflow_int64_are_refused_naming_the_blocks():
    acc = MCRGAccumulator(200, levels=1, n_blocks=4)
    big = np.full((1, 2, 11), 2**31, dtype=np.int64)  # square 2^62: two of them exceed 2^63 - 1
    acc.add(big)
    with pytest.raises(MomentOverflow, match=r"block 0 would overflow.*more jackknife blocks"):
        acc.add(big)


def test_mcrg_is_bit_identical_for_any_chunking(rng):
    spins = rng.choice(np.array([-1, 1], dtype=np.int8), size=(2 * STREAM_CHUNK + 50, 8, 8))
    transforms = [MajorityRule(), RBMProjector(0.3 * np.ones((4, 4)))]
    a = mcrg(spins, transforms, levels=1, seed=3, n_blocks=6, chunk=7)
    b = mcrg(spins, transforms, levels=1, seed=3, n_blocks=6, chunk=4096)
    assert [r.to_dict() for r in a] == [r.to_dict() for r in b]
    c = mcrg(spins, transforms, levels=1, seed=4, n_blocks=6)
    assert c[0].to_dict() != a[0].to_dict()  # majority-rule ties are broken by the seed


def test_stream_generators_are_children_of_the_level_sequences():
    for index in (0, 5):
        for level, g in enumerate(stream_generators(11, 3, index)):
            child = np.random.SeedSequence(11).spawn(3)[level].spawn(index + 1)[index]
            assert g.random(4).tolist() == np.random.default_rng(child).random(4).tolist()
    assert len(level_generators(11, 3)) == 3
    with pytest.raises(ValueError, match="index"):
        stream_generators(11, 3, -1)


@pytest.mark.parametrize("size", [1, 2, 3, 7])
def test_configuration_shares_are_whole_stream_chunks(size):
    for n in [70, STREAM_CHUNK, 3 * STREAM_CHUNK + 1, 20000]:
        shares = [configuration_share(n, World(rank=r, size=size)) for r in range(size)]
        assert shares[0].start == 0 and shares[-1].stop == n
        assert all(a.stop == b.start for a, b in zip(shares, shares[1:]))
        assert all(s.start % STREAM_CHUNK == 0 for s in shares)
    assert configuration_share(1000) == slice(0, 1000)


# ---- (d) 2 processes ------------------------------------------------------------------------------
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "--",
            "deeprg"]

#: One process of a hand-made 2-process launch (the environment torchrun sets): runs ``deeprg``
#: with ``{rank}`` in the arguments replaced by the rank; with DIE_IN_SAMPLING, rank 1 dies
#: (exit 0) when sampling starts.
LAUNCHED = """
import os, sys
if os.environ["RANK"] == "1" and os.environ.get("DIE_IN_SAMPLING"):
    import deeprg.mc.samplers
    deeprg.mc.samplers.Sampler.stream = lambda *a, **k: os._exit(0)
from deeprg.cli import main
sys.exit(main([a.replace("{rank}", os.environ["RANK"]) for a in sys.argv[1:]]))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_two(tmp_path, argv, **env):
    """Start ``deeprg argv`` as ranks 0 and 1 of a 2-process group; returns [(status, out, err)]."""
    script = tmp_path / "launched.py"
    script.write_text(LAUNCHED)
    port = str(free_port())
    procs = [subprocess.Popen([sys.executable, str(script), *map(str, argv)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True,
                              env={**ENV, **env, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2",
                                   "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port})
             for r in range(2)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        results.append((p.returncode, out, err))
    return results


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("deeprg")]


#: 16x16 (MCRG to N_r = 2), 2 stream chunks (each process transforms one), pooled burn-in and thin.
SAMPLE = ["sample", "ising", "--L", "16", "--n", str(2 * STREAM_CHUNK), "--chains", "4", "--seed", "5", "--json",
          "--quiet"]

#: Keys of the summaries that differ between runs (time, processes, output path).
VARYING = {"seconds", "wall_seconds", "samples_per_second", "processes", "out"}


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """``deeprg sample ising`` on one process (in-process): the reference dataset and summary."""
    from deeprg.cli import main

    path = tmp_path_factory.mktemp("one") / "data.npz"
    saved, sys.stdout = sys.stdout, io.StringIO()
    try:
        assert main([*SAMPLE, "--out", str(path)]) == 0
        summary = json.loads(sys.stdout.getvalue())
    finally:
        sys.stdout = saved
    return path, summary


#: The row gathers on 2 processes (numpy arrays to every rank or to rank 0, tensors on their
#: device), for rows split evenly (received in place, no copy) and unevenly (padded): every rank's
#: rows ``r * 100 + arange``, shapes past axis 0 and dtypes kept.
GATHERS = """
import numpy as np
import torch
from deeprg.distributed import init, shutdown
w = init()
for counts in ((3, 3), (3, 2), (1, 4)):
    for dtype in (np.int8, np.float64):
        mine = (100 * w.rank + np.arange(counts[w.rank] * 4)).astype(dtype).reshape(-1, 2, 2)
        want = np.concatenate([(100 * r + np.arange(c * 4)).astype(dtype).reshape(-1, 2, 2)
                               for r, c in enumerate(counts)])
        for got in (w.all_gather_rows(mine), w.all_gather_rows(mine, list(counts)), w.gather_rows(mine)):
            if got is None:
                assert w.rank == 1
                continue
            assert got.dtype == dtype and got.shape == want.shape and np.array_equal(got, want), (counts, dtype)
        t = torch.from_numpy(mine)  # the tensor gather, on the tensor's device (here the CPU)
        for got in (w.all_gather_tensor(t), w.all_gather_tensor(t, list(counts))):
            assert isinstance(got, torch.Tensor) and got.dtype == t.dtype and got.device == t.device
            assert np.array_equal(got.numpy(), want), (counts, dtype)
    assert w.counts(5) == [2, 3] and sum(w.counts(1)) == 1
shutdown(finished=True)
print("ok", w.rank)
"""


@pytest.mark.distributed
def test_row_gathers_on_two_processes_keep_rank_order_dtype_and_shape(tmp_path):
    script = tmp_path / "gathers.py"
    script.write_text(GATHERS)
    port = str(free_port())
    procs = [subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env={**ENV, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2",
                                              "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                                              "MASTER_PORT": port})
             for r in range(2)]
    for r, p in enumerate(procs):
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0 and out.split() == ["ok", str(r)], err[-2000:]


@pytest.mark.distributed
def test_sample_on_two_processes_is_bit_identical(one_process, tmp_path):
    path, summary = one_process
    out = tmp_path / "data.npz"
    run = subprocess.run([*TORCHRUN, *SAMPLE, "--out", str(out)], capture_output=True, text=True, env=ENV,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    two = json.loads(run.stdout)  # rank 0 alone prints
    assert two["processes"] == 2 and two["thin"] == summary["thin"] and two["burn_in"] == summary["burn_in"]
    assert {k: v for k, v in two.items() if k not in VARYING} == {k: v for k, v in summary.items() if k not in VARYING}
    a, b = load_dataset(path), load_dataset(out)
    assert np.array_equal(a.spins, b.spins)
    assert {k: v for k, v in a.metadata.items() if k != "created"} == {k: v for k, v in b.metadata.items()
                                                                        if k != "created"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.npz"]  # no temporaries left


@pytest.mark.distributed
def test_sample_on_two_nodes_joined_by_rendezvous_is_bit_identical(one_process, tmp_path):
    """Two ``torchrun`` commands, one per "node" (here both on this machine), joined through the
    c10d rendezvous of docs/scaling.md "Several nodes": each sees LOCAL_WORLD_SIZE = 1, the
    rendezvous numbers the processes, and the rank-0 process, whichever node it is on, writes."""
    path, summary = one_process
    out = tmp_path / "data.npz"
    node = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
            "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}", "--rdzv-id", "two-nodes",
            "-m", "--", "deeprg", *SAMPLE, "--threads", "1", "--out", str(out)]
    procs = [subprocess.Popen(node, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
             for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in results]
    printed = [json.loads(stdout) for stdout, _ in results if stdout.strip()]
    assert len(printed) == 1 and printed[0]["processes"] == 2  # one rank 0, on either node
    assert {k: v for k, v in printed[0].items() if k not in VARYING} == \
        {k: v for k, v in summary.items() if k not in VARYING}
    assert np.array_equal(load_dataset(path).spins, load_dataset(out).spins)


@pytest.mark.distributed
@pytest.mark.parametrize("sync_points", [True, False], ids=["deeprg-file", "file-without-sync-points"])
def test_mcrg_on_two_processes_is_bit_identical(one_process, cli, tmp_path, sync_points):
    """Also from a file another program wrote (np.savez_compressed: no sync points), where the
    second process decompresses the first's share to reach its own, with a warning saying so."""
    path, _ = one_process
    argv = ["mcrg", "--data", path, "--transform", "majority", "--levels", "2", "--blocks", "8", "--json", "--quiet"]
    status, out, _ = cli(*argv)
    assert status == 0
    one = json.loads(out)
    env = ENV
    if not sync_points:
        with np.load(path) as npz:
            np.savez_compressed(tmp_path / "plain.npz", spins=npz["spins"], metadata=npz["metadata"])
        argv[2] = tmp_path / "plain.npz"
        env = {k: v for k, v in ENV.items() if k != "PYTHONWARNINGS"}
    run = subprocess.run([*TORCHRUN, *map(str, argv)], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    two = json.loads(run.stdout)
    assert two["processes"] == 2 and one["processes"] == 1
    varying = VARYING | {"data"}
    assert {k: v for k, v in two.items() if k not in varying} == {k: v for k, v in one.items() if k not in varying}
    assert two["y_t"] == one["y_t"] and two["y_h"] == one["y_h"] and len(two["y_t"]) == 2
    warned = [line for line in run.stderr.splitlines() if "no sync points" in line]
    assert len(warned) == (0 if sync_points else 1)


@pytest.mark.distributed
@pytest.mark.parametrize("options, message", [
    (["--seed", "{rank}"], "the processes were started with different command lines"),
    (["--chains", "1"], "--chains (1) must be at least the number of processes (2)"),
], ids=["different-options", "fewer-chains-than-processes"])
def test_a_refused_two_process_run_exits_2_on_both_and_writes_nothing(tmp_path, options, message):
    out = tmp_path / "x.npz"
    results = launch_two(tmp_path, ["sample", "ising", "--L", "4", "--n", "64", *options, "--quiet", "--out", out])
    for status, stdout, err in results:
        lines = error_lines(err)
        assert status == 2 and stdout == "" and len(lines) == 1, err
        assert lines[0].startswith("deeprg: error:") and message in lines[0]
    assert not out.exists()


@pytest.mark.distributed
def test_a_process_that_dies_stops_the_run_without_writing(tmp_path):
    out = tmp_path / "x.npz"
    (status0, stdout0, err0), (status1, _, _) = launch_two(
        tmp_path, ["sample", "ising", "--L", "8", "--n", "256", "--chains", "2", "--quiet", "--out", out],
        DIE_IN_SAMPLING="1")
    lines = error_lines(err0)
    assert status1 == 0 and status0 == 1 and stdout0 == "" and len(lines) == 1, err0
    assert lines[0].startswith("deeprg: error: rank 0 of 2:") and "another process" in lines[0]
    assert list(tmp_path.glob("*.npz")) == [] and not list(tmp_path.glob(".x.npz.*"))  # nor temporary, nor staged
