"""``deeprg mcrg`` and ``deeprg rsrg exponent-vs-epoch``: bad input is refused with one line and
exit status 2 before any work, and nothing is written."""

import json
import math
import os
import shutil
import time

import pytest
import torch

from deeprg import Lattice
from deeprg.data import SpinDataset, save_dataset
from deeprg.mc import make_sampler
from deeprg.models.ising import K_C

torch.set_num_threads(1)

pytestmark = pytest.mark.filterwarnings("ignore:chain length")

HUGE = str(10**20)


def ising(path, L, n, seed):
    run = make_sampler("wolff", Lattice.square(L), K_C, seed=seed, n_chains=1).run(n, thin=2, burn_in=100)
    save_dataset(path, SpinDataset.new(run.spins_flat(), K=K_C, sampler="wolff", updates_between_samples=2,
                                       seed=seed))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """16x16 data (200 configurations), too short 16x16 data (60), and a 2-epoch run with a 4x4 filter."""
    from deeprg.cli import main

    root = tmp_path_factory.mktemp("mcrg")
    out = {"data": ising(root / "data.npz", 16, 200, 2), "short": ising(root / "short.npz", 16, 60, 3),
           "run": root / "run"}
    assert main(["rsrg", "train", "--data", str(ising(root / "train8.npz", 8, 40, 1)), "--filter", "4", "--epochs",
                 "2", "--batch", "10", "--out", str(out["run"]), "--quiet"]) == 0
    return out


def snapshot(*roots):
    return [sorted((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in root.rglob("*")) for root in roots]


def refused(cli, argv, needles, *watched):
    """Run ``deeprg argv``: exit 2 within seconds, one error line holding every needle, ``watched``
    unchanged."""
    before = snapshot(*watched)
    start = time.perf_counter()
    status, out, err = cli(*argv)
    assert status == 2, err
    assert time.perf_counter() - start < 20
    lines = [line for line in err.splitlines() if line.startswith("deeprg") or "error" in line]
    assert len(lines) == 1 and "error:" in lines[0], err
    for needle in needles:
        assert needle in lines[0], err
    assert out == ""
    assert snapshot(*watched) == before
    return lines[0]


@pytest.mark.parametrize("argv, needles", [
    (["--levels", HUGE], ["--levels", "between 1 and 2", "16x16"]),
    (["--levels", "3"], ["--levels", "between 1 and 2", "leaves a 2x2 lattice"]),
    (["--blocks", HUGE], ["--blocks", "between 2 and 100", "200 configurations"]),
    (["--blocks", "101"], ["--blocks", "between 2 and 100"]),
    (["--seed", str(2**64)], ["--seed", "2^64"]),
    (["--threads", HUGE], ["--threads", "between 1 and"]),
])
def test_mcrg_bad_numbers(cli, files, argv, needles):
    line = refused(cli, ["mcrg", "--data", files["data"], "--transform", "majority", "--quiet", *argv], needles,
                   files["data"].parent)
    assert line.startswith("deeprg")


def test_mcrg_levels_with_a_trained_filter_and_too_few_configurations(cli, files):
    refused(cli, ["mcrg", "--data", files["data"], "--transform", files["run"], "--levels", HUGE, "--quiet"],
            ["--levels", "between 1 and 2"], files["data"].parent)
    line = refused(cli, ["mcrg", "--data", files["short"], "--transform", "majority", "--quiet"],
                   ["--data", "60 configurations", "at least 70"], files["data"].parent)
    assert line.startswith("deeprg: error:")


def test_mcrg_takes_the_largest_seed_and_the_most_blocks(cli, files):
    status, out, _ = cli("mcrg", "--data", files["data"], "--transform", "majority", "--levels", "1", "--blocks", "100",
                         "--seed", 2**64 - 1, "--json", "--quiet")
    assert status == 0
    summary = json.loads(out)
    assert summary["seed"] == 2**64 - 1 and summary["n_blocks"] == 100 and len(summary["y_t"]) == 1


@pytest.mark.parametrize("argv, needles", [
    (["--transform", "majority", "--block-weights", "0,1"], ["--block-weights", "RBM projector", "majority"]),
    (["--levels", "1", "--block-weights", "0,1"], ["--levels", "N_r = 1 and 2", ">= 2"]),
    (["--block-weights", "0"], ["--block-weights", "at least 2"]),
    (["--block-weights", "0,0"], ["--block-weights", "distinct"]),
    (["--block-weights", "0,-1"], ["--block-weights", ">= 0"]),
    (["--block-weights", "0,nan"], ["--block-weights", ">= 0"]),
    (["--block-weights", "0,x"], ["--block-weights", "numbers"]),
    (["--scales", "0,1"], ["--scales", "> 0"]),
    (["--scales", "1,2", "--block-weights", "0,1"], ["not allowed with"]),
    (["--transform", "majority", "--scales", "1,2"], ["--scales", "RBM projector"]),
])
def test_mcrg_block_weights_bad_input(cli, files, argv, needles):
    base = ["mcrg", "--data", files["data"], "--transform", files["run"], "--quiet"]
    refused(cli, base + argv, needles, files["data"].parent)


def test_mcrg_block_weights_choose_per_sector(cli, files):
    """The JSON carries every block weight's exponents, the gaps and the choices, and the reported
    y_t / y_h are those of the chosen weights."""
    status, out, _ = cli("mcrg", "--data", files["data"], "--transform", files["run"], "--block-weights", "0,0.5,2",
                         "--json", "--quiet")
    assert status == 0
    s = json.loads(out)
    tuning = s["sector_tuning"]
    assert s["tuning_family"] == "block_weight" and s["tuning_parameters"] == [0.0, 0.5, 2.0]
    assert len(s["per_parameter"]) == 3
    for sector, key in (("even", "y_t"), ("odd", "y_h")):
        gaps = [math.inf if g["mean"] is None else abs(g["mean"]) for g in tuning[sector]["gaps"]]
        k = gaps.index(min(gaps))
        assert tuning[sector]["chosen"] == [0.0, 0.5, 2.0][k]
        assert s[key] == s["per_parameter"][k][key]
    status, text, _ = cli("mcrg", "--data", files["data"], "--transform", files["run"], "--block-weights", "0,0.5,2",
                          "--quiet")
    assert status == 0 and "y_t: block weight" in text and "y_h: block weight" in text
    status, out, _ = cli("mcrg", "--data", files["data"], "--transform", files["run"], "--scales", "0.5,1", "--json",
                         "--quiet")
    assert status == 0
    s = json.loads(out)
    assert s["tuning_family"] == "scale" and s["tuning_parameters"] == [0.5, 1.0] and len(s["per_parameter"]) == 2


@pytest.fixture
def run_copy(files, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(files["run"], run)
    return run


def test_exponent_vs_epoch_checks_its_outputs_before_any_work(cli, files, run_copy, tmp_path):
    (run_copy / "exponent_vs_epoch.png").mkdir()  # the plot's path is taken by a directory
    refused(cli, ["rsrg", "exponent-vs-epoch", run_copy, "--data", files["data"], "--quiet"],
            ["RUN", "exponent_vs_epoch.png", "directory"], tmp_path)
    (run_copy / "exponent_vs_epoch.png").rmdir()
    shutil.copy(files["data"], run_copy / "exponent_vs_epoch.json")  # the data would be replaced
    refused(cli, ["rsrg", "exponent-vs-epoch", run_copy, "--data", run_copy / "exponent_vs_epoch.json", "--quiet"],
            ["--data", "output of this command"], tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_exponent_vs_epoch_in_a_read_only_run(cli, files, run_copy, tmp_path):
    run_copy.chmod(0o555)
    try:
        refused(cli, ["rsrg", "exponent-vs-epoch", run_copy, "--data", files["data"], "--quiet"],
                ["RUN", "not writable"], tmp_path)
    finally:
        run_copy.chmod(0o755)


@pytest.mark.parametrize("argv, needles", [
    (["--couplings", "8"], ["--couplings", "between 1 and 7"]),
    (["--levels", HUGE], ["--levels", "between 1 and 2", "these transformations"]),
    (["--blocks", HUGE], ["--blocks", "between 2 and 100"]),
    (["--seed", str(2**64)], ["--seed", "2^64"]),
])
def test_exponent_vs_epoch_bad_numbers(cli, files, run_copy, tmp_path, argv, needles):
    refused(cli, ["rsrg", "exponent-vs-epoch", run_copy, "--data", files["data"], "--quiet", *argv], needles, tmp_path)


def ising3d(path, L, n, seed):
    from deeprg.models.ising import K_C_3D

    run = make_sampler("wolff", Lattice.square(L, 3), K_C_3D, seed=seed, n_chains=1).run(n, thin=2, burn_in=50)
    save_dataset(path, SpinDataset.new(run.spins_flat(), K=K_C_3D, sampler="wolff", updates_between_samples=2,
                                       seed=seed))
    return path


@pytest.fixture(scope="module")
def files3d(tmp_path_factory, files):
    """8^3 and 12^3 data (100 configurations each) and a 2-epoch run with a 4^3 filter."""
    from deeprg.cli import main

    root = tmp_path_factory.mktemp("mcrg3d")
    out = {"data": ising3d(root / "data.npz", 8, 100, 4), "data12": ising3d(root / "data12.npz", 12, 100, 5),
           "run": root / "run3d", "run2d": files["run"], "data2d": files["data"]}
    assert main(["rsrg", "train", "--data", str(out["data"]), "--filter", "4", "--epochs", "2", "--batch", "10",
                 "--out", str(out["run"]), "--quiet"]) == 0
    return out


def test_mcrg_on_3d_data_reports_the_3d_operators_and_reference(cli, files3d):
    status, out, _ = cli("mcrg", "--data", files3d["data"], "--transform", files3d["run"], "--levels", "1", "--json",
                         "--quiet")
    assert status == 0
    s = json.loads(out)
    assert s["d"] == 3 and s["lattice_shape"] == [8, 8, 8]
    assert len(s["y_t"][0]) == 8 and len(s["y_h"][0]) == 6 and len(s["operators"]["odd"]) == 6
    assert s["reference"]["y_t"] == pytest.approx(1.58737, abs=1e-5)
    status, text, _ = cli("mcrg", "--data", files3d["data"], "--transform", "majority", "--levels", "1", "--quiet")
    assert status == 0 and "8x8x8" in text and "y_h = 2.48185" in text


@pytest.mark.parametrize("case, needles", [
    ("3d filter on 2d data", ["--transform", "3D (4x4x4) filter", "2D"]),
    ("2d filter on 3d data", ["--transform", "2D (4x4) filter", "3D"]),
    ("too many levels", ["--levels", "between 1 and 1", "2x2x2"]),
    ("not divisible", ["--levels", "12x12x12", "not divisible"]),
    ("exponent-vs-epoch across dimensions", ["RUN", "3D (4x4x4) filter", "2D"]),
])
def test_mcrg_across_dimensions_is_refused_before_any_work(cli, files3d, case, needles):
    f = files3d
    argv = {
        "3d filter on 2d data": ["mcrg", "--data", f["data2d"], "--transform", f["run"], "--levels", "1"],
        "2d filter on 3d data": ["mcrg", "--data", f["data"], "--transform", f["run2d"], "--levels", "1"],
        "too many levels": ["mcrg", "--data", f["data"], "--transform", "majority", "--levels", "2"],
        "not divisible": ["mcrg", "--data", f["data12"], "--transform", "majority", "--levels", "3"],
        "exponent-vs-epoch across dimensions": ["rsrg", "exponent-vs-epoch", f["run"], "--data", f["data2d"]],
    }[case]
    refused(cli, [*argv, "--quiet"], needles, f["data"].parent, f["run"], f["data2d"].parent)


def test_rsrg_train_refuses_a_filter_larger_than_the_3d_lattice(cli, files3d, tmp_path):
    refused(cli, ["rsrg", "train", "--data", files3d["data"], "--filter", "10", "--out", tmp_path / "run", "--quiet"],
            ["--filter", "larger than the lattice 8x8x8"], files3d["data"].parent)
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="torch has a CUDA device here")
@pytest.mark.parametrize("command", ["mcrg majority", "mcrg run", "exponent-vs-epoch"])
def test_device_cuda_without_cuda_is_refused(cli, files, run_copy, tmp_path, command):
    argv = {"mcrg majority": ["mcrg", "--data", files["data"], "--transform", "majority"],
            "mcrg run": ["mcrg", "--data", files["data"], "--transform", run_copy],
            "exponent-vs-epoch": ["rsrg", "exponent-vs-epoch", run_copy, "--data", files["data"]]}[command]
    refused(cli, [*argv, "--device", "cuda", "--quiet"], ["--device", "'cuda'", "no CUDA device"], files["data"].parent,
            tmp_path)


def test_device_option_says_it_concerns_the_rbm_projector_only(cli, files):
    refused(cli, ["mcrg", "--data", files["data"], "--transform", "majority", "--device", "tpu", "--quiet"],
            ["--device", "cpu, cuda or cuda:N", "'tpu'"], files["data"].parent)
    for argv in (["mcrg"], ["rsrg", "exponent-vs-epoch"]):
        status, out, _ = cli(*argv, "--help")
        assert status == 0 and "--device" in out and "RBM projector only" in " ".join(out.split())


def test_mcrg_with_the_default_and_an_explicit_cpu_device_agree(cli, files):
    results = []
    for extra in ([], ["--device", "cpu"]):
        status, out, err = cli("mcrg", "--data", files["data"], "--transform", files["run"], "--block-weights", "0,1",
                               "--json", "--quiet", *extra)
        assert status == 0, err
        results.append(json.loads(out))
    assert results[0]["device"] == results[1]["device"] == "cpu"
    assert results[0]["per_parameter"] == results[1]["per_parameter"]


def test_mcrg_streams_the_data_holding_about_one_chunk_in_memory(cli, tmp_path):
    """40000 random 32x32 configurations (41 MB of spins): the command reads them from the file
    chunk by chunk (4096 configurations, 4 MB), so its peak of traced allocations stays well below
    the size of the data, and the exponents are those of the same data held in memory."""
    import tracemalloc

    import numpy as np

    import deeprg.cli.mcrg  # noqa: F401  (imported before tracing: module objects are not the data)
    from deeprg.rsrg.mcrg import mcrg
    from deeprg.rsrg.transforms import MajorityRule

    spins = np.random.default_rng(5).choice(np.array([-1, 1], dtype=np.int8), size=(40_000, 32, 32))
    path = save_dataset(tmp_path / "big.npz", SpinDataset.new(spins, K=K_C, sampler="random",
                                                              updates_between_samples=1, seed=5))
    expected = mcrg(spins, [MajorityRule()], levels=1, n_blocks=4)[0].to_dict()
    del spins
    tracemalloc.start()
    try:
        status, out, err = cli("mcrg", "--data", path, "--transform", "majority", "--levels", "1", "--blocks", "4",
                               "--quiet", "--json")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert status == 0, err
    summary = json.loads(out)
    assert summary["y_t"] == expected["y_t"] and summary["y_h"] == expected["y_h"]
    assert peak < 41e6 / 2, f"peak {peak / 1e6:.1f} MB"
