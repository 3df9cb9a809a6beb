"""``deeprg sample ising`` and ``deeprg data info``: bad input is refused before any sampling
with one ``deeprg: error:`` line and exit status 2, nothing written; progress bars and --quiet;
``data info`` agrees with the summary of ``sample``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import deeprg.cli.sample as sample_cli
import deeprg.data as data_module
from deeprg.cli.sample import MIN_BETA, MIN_PER_CHAIN, estimated_memory
from deeprg.data import load_dataset


@pytest.fixture
def no_sampling(monkeypatch):
    """Fail the test if the command gets as far as building a sampler."""

    def refuse(*args, **kwargs):
        raise AssertionError("sampling started despite bad input")

    monkeypatch.setattr(sample_cli, "make_sampler", refuse)


def assert_refused(result, needles, tmp_path):
    status, out, err = result
    assert status == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("deeprg: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["--n", "3", "--chains", "3"], ["--n", "1 per chain", f"at least {MIN_PER_CHAIN} per chain",
                                          "--n >= 96"]),
        (["--n", "62", "--chains", "2"], ["--n", "31 per chain", "--n >= 64"]),
        (["--n", "101", "--chains", "2"], ["--n (101) must be a multiple of --chains (2)"]),
        (["--burn-in", "0", "--thin", "auto"], ["--burn-in", "--thin auto", "--burn-in >= 4", "got 0"]),
        (["--burn-in", "3"], ["--burn-in >= 4"]),  # --thin auto is the default
        (["--beta", "1e-300"], ["--beta", f">= {MIN_BETA:g}", "got 1e-300"]),
        (["--beta", "5e-11"], ["--beta", "got 5e-11"]),
        (["--seed", str(2**64)], ["--seed", "[0, 2^64)", str(2**64)]),
        (["--seed", str(10**30)], ["--seed", "[0, 2^64)"]),
        (["--L", "100000"], ["--n/--L", "100000^2 sites", "TiB of memory", "available"]),
        (["--n", str(10**9), "--L", "32"], ["--n/--L", "1000000000 configurations", "available"]),
        (["--d", "3", "--L", "5000", "--n", "64"], ["--n/--L", "5000^3 sites"]),
    ],
)
def test_bad_input_is_refused_before_sampling(cli, tmp_path, no_sampling, argv, needles):
    path = tmp_path / "x.npz"
    result = cli("sample", "ising", "--L", "4", "--n", "100", *argv, "--out", path)
    assert_refused(result, needles, tmp_path)


def test_memory_limit_is_the_available_memory(cli, tmp_path, monkeypatch):
    need = estimated_memory(100, 16, 2)
    assert need > 100 * 16  # at least the spins
    monkeypatch.setattr(sample_cli, "available_memory", lambda: need - 1)
    argv = ["sample", "ising", "--L", "4", "--n", "100", "--quiet", "--out", tmp_path / "x.npz"]
    assert_refused(cli(*argv), ["--n/--L", "need about", "available"], tmp_path)
    monkeypatch.setattr(sample_cli, "available_memory", lambda: need)
    assert cli(*argv)[0] == 0


def test_estimated_memory_grows_with_every_input():
    base = estimated_memory(1000, 1024, 2)
    assert base >= 1000 * 1024
    assert estimated_memory(2000, 1024, 2) > base
    assert estimated_memory(1000, 2048, 2) > base
    assert estimated_memory(1000, 1024, 64) > base


def test_output_path_problems_are_refused(cli, tmp_path, no_sampling):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    base = ["sample", "ising", "--L", "4", "--n", "64"]
    assert_refused(cli(*base, "--out", out_dir), ["--out", "is a directory"], tmp_path)
    assert_refused(cli(*base, "--out", tmp_path / "missing" / "x.npz"),
                   ["--out", "does not exist"], tmp_path)
    assert not (tmp_path / "missing").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only directory")
def test_read_only_output_directory_is_refused(cli, tmp_path, no_sampling):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert_refused(cli("sample", "ising", "--L", "4", "--n", "64", "--out", ro / "x.npz"),
                       ["--out", "not writable"], tmp_path)
    finally:
        ro.chmod(0o755)


def test_smallest_coupling_and_largest_seed_are_accepted(cli, tmp_path):
    path = tmp_path / "hot.npz"
    status, out, _ = cli("sample", "ising", "--L", "4", "--n", "64", "--beta", MIN_BETA,
                         "--seed", 2**64 - 1, "--sampler", "sw", "--thin", "1", "--burn-in", "0",
                         "--json", "--quiet", "--out", path)
    assert status == 0
    s = json.loads(out)
    assert s["seed"] == 2**64 - 1 and s["K"] == MIN_BETA
    # high-temperature limit of the 4x4 torus: e = -2 tanh K (1 + O(K^2))
    assert s["exact_energy_per_site"] == pytest.approx(-2 * MIN_BETA, rel=1e-6)
    assert load_dataset(path).metadata["seed"] == 2**64 - 1


def test_progress_bars_and_quiet(cli, tmp_path):
    path = tmp_path / "x.npz"
    status, _, err = cli("sample", "ising", "--L", "4", "--n", "100", "--out", path)
    assert status == 0 and "100/100" in err
    status, _, err = cli("sample", "ising", "--L", "4", "--n", "100", "--out", path, "--quiet")
    assert status == 0 and err == ""
    status, _, err = cli("data", "info", path, "--quiet")
    assert status == 0 and err == ""


def test_data_info_agrees_with_the_sample_summary(cli, tmp_path):
    path = tmp_path / "x.npz"
    status, out, _ = cli("sample", "ising", "--L", "6", "--n", "400", "--chains", "4",
                         "--seed", "5", "--out", path, "--quiet", "--json")
    assert status == 0
    s = json.loads(out)
    status, out, _ = cli("data", "info", path, "--json", "--quiet")
    assert status == 0
    info = json.loads(out)
    for key in ("energy_per_site", "m2"):  # same series, same per-chain error analysis
        assert info[key]["mean"] == pytest.approx(s[key]["mean"], rel=1e-12)
        assert info[key]["error"] == pytest.approx(s[key]["error"], rel=1e-9)
    status, text, _ = cli("data", "info", path, "--quiet")
    lines = text.splitlines()
    assert lines[0] == f"{path}: 400 configurations of shape (6, 6) (valid deeprg dataset)"
    assert any(line.split()[:1] == ["n_chains"] and line.split()[1] == "4" for line in lines)
    assert lines[-2].split()[0] == "energy_per_site" and "tau_int" in lines[-2]
    assert lines[-1].split()[0] == "m2" and "tau_int" in lines[-1]


def test_sample_stages_the_configurations_on_disk_holding_a_chunk_in_memory(cli, tmp_path, monkeypatch):
    """20000 32x32 configurations (20 MB of spins) with chunks of at most 1 MiB and compression
    blocks of 256 KiB: the command's peak of traced allocations stays below a quarter of the data
    (4 MB measured), and the file holds exactly the configurations of the library's in-memory run
    (chain after chain)."""
    import tracemalloc

    from deeprg import Lattice
    from deeprg.mc import make_sampler
    from deeprg.models.ising import K_C

    monkeypatch.setattr(sample_cli, "CHUNK_BYTES", 1 << 20)
    monkeypatch.setattr(data_module, "SYNC_BYTES", 1 << 18)  # the compressor's blocks in flight: ~1 MB
    path = tmp_path / "x.npz"
    assert cli("sample", "ising", "--L", "32", "--n", "400", "--quiet", "--out", path)[0] == 0  # numba compiled first
    tracemalloc.start()
    try:
        status, out, err = cli("sample", "ising", "--L", "32", "--n", "20000", "--chains", "2", "--seed", "4",
                               "--threads", "1", "--quiet", "--out", path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert status == 0, err
    assert peak < 20000 * 1024 / 4, f"peak {peak / 1e6:.1f} MB"
    run = make_sampler("wolff", Lattice.square(32), K_C, seed=4, n_chains=2).run(20000, thin="auto", n_threads=1)
    np.testing.assert_array_equal(load_dataset(path).spins, run.spins.reshape(20000, 32, 32))
    assert sorted(os.listdir(tmp_path)) == ["x.npz"]


def test_disk_limit_is_the_free_space_beside_the_output(cli, tmp_path, monkeypatch):
    need = sample_cli.needed_disk(100, 16)
    assert need > 100 * 16  # at least the staged spins
    monkeypatch.setattr(sample_cli, "free_disk", lambda directory: need - 1)
    argv = ["sample", "ising", "--L", "4", "--n", "100", "--quiet", "--out", tmp_path / "x.npz"]
    assert_refused(cli(*argv), ["--n/--L", "of disk beside --out", "free in"], tmp_path)
    monkeypatch.setattr(sample_cli, "free_disk", lambda directory: need)
    assert cli(*argv)[0] == 0


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_sampling_and_leaves_nothing_behind(tmp_path, signum):
    """Ctrl-C or SIGTERM while sampling: exit status 130, one line on stderr, no dataset and no
    staged or temporary file (an existing output is kept)."""
    out = tmp_path / "x.npz"
    out.write_bytes(b"old")
    proc = subprocess.Popen([sys.executable, "-m", "deeprg", "sample", "ising", "--L", "64", "--n", "200000",
                             "--chains", "2", "--threads", "1", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".x.npz.*.staging")) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # into the sampling
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert stdout == "" and "deeprg: interrupted; nothing was written" in stderr
    assert os.listdir(tmp_path) == ["x.npz"] and out.read_bytes() == b"old"
