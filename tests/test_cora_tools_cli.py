"""``deeprg cora sample|eval|digits``: bad input is refused with one line and exit status 2 before
anything is written; --json, --device and the exact G(r) of 1D Ising data."""

import json
import os

import numpy as np
import pytest
import torch

from deeprg.data import SpinDataset, save_dataset
from deeprg.lattice import Lattice
from deeprg.mc import make_sampler

torch.set_num_threads(1)

RUN_FILES = ("config.json", "checkpoint.pt", "metrics.json", "training_curve.png")


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """Ising chain data (L = 16, K = 1) and a CORA run trained on it for 2 epochs."""
    from deeprg.cli import main

    root = tmp_path_factory.mktemp("cora_tools")
    run = make_sampler("wolff", Lattice((16,)), 1.0, seed=1).run(200, thin=4)
    data = save_dataset(root / "chain.npz", SpinDataset.new(run.spins_flat(), K=1.0, sampler="wolff",
                                                              updates_between_samples=4, seed=1))
    assert main(["cora", "train", "--data", str(data), "--epochs", "2", "--out", str(root / "run"), "--quiet"]) == 0
    return {"data": data, "run": root / "run"}


def snapshot(*roots):
    return [sorted((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in root.rglob("*")) for root in roots]


def refused(cli, argv, needles, *watched):
    """Run ``deeprg argv``: exit 2, one error line holding every needle, ``watched`` unchanged."""
    before = snapshot(*watched)
    status, out, err = cli(*argv)
    assert status == 2, err
    lines = [line for line in err.splitlines() if line.startswith("deeprg") or "error" in line]
    assert len(lines) == 1 and "error:" in lines[0], err
    for needle in needles:
        assert needle in lines[0], err
    assert out == ""
    assert snapshot(*watched) == before
    return lines[0]


# ---- sample ------------------------------------------------------------------------------------
def test_sample_json_device_and_largest_seed(cli, chain, tmp_path):
    seed = 2**64 - 1
    status, out, _ = cli("cora", "sample", chain["run"], "--n", "5", "--seed", seed, "--device", "cpu",
                         "--out", tmp_path / "s.npz", "--json")
    assert status == 0
    summary = json.loads(out)
    assert summary["n"] == 5 and summary["seed"] == seed and summary["device"] == "cpu"
    assert summary["out"] == str(tmp_path / "s.npz") and summary["png"] == str(tmp_path / "s.png")
    assert summary["lattice_shape"] == [16] and summary["encoding"] == "spin"
    with np.load(tmp_path / "s.npz") as f:
        assert f["spins"].shape == (5, 16) and int(f["seed"]) == seed
    assert (tmp_path / "s.png").exists()


def test_sample_png_may_not_replace_the_samples(cli, chain, tmp_path):
    line = refused(cli, ["cora", "sample", chain["run"], "--out", tmp_path / "c.png"], ["--out", "c.npz'"],
                   tmp_path, chain["run"])
    assert line.startswith("deeprg: error:")
    assert not (tmp_path / "c.png").exists()


@pytest.mark.parametrize("name", ["training_curve.npz", "config.json", "metrics.json"])
def test_sample_outputs_may_not_replace_run_files(cli, chain, name):
    refused(cli, ["cora", "sample", chain["run"], "--out", chain["run"] / name], ["--out", "run directory"],
            chain["run"])
    assert sorted(p.name for p in chain["run"].iterdir()) == sorted(RUN_FILES)


def test_sample_outputs_must_be_writable(cli, chain, tmp_path):
    (tmp_path / "file").write_text("not a directory")
    refused(cli, ["cora", "sample", chain["run"], "--out", tmp_path / "file" / "s.npz"], ["--out"], tmp_path)
    (tmp_path / "s.png").mkdir()  # the PNG's path is taken by a directory
    refused(cli, ["cora", "sample", chain["run"], "--out", tmp_path / "s.npz"], ["--out", "directory"], tmp_path)
    assert not (tmp_path / "s.npz").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_sample_into_a_read_only_directory(cli, chain, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        refused(cli, ["cora", "sample", chain["run"], "--out", locked / "s.npz"], ["--out", "not writable"], tmp_path)
    finally:
        locked.chmod(0o755)


@pytest.mark.parametrize("argv, needles", [
    (["--seed", str(2**64)], ["--seed", "2^64"]),
    (["--seed", "-1"], ["--seed"]),
    (["--device", "tpu"], ["--device", "cpu, cuda or cuda:N"]),
    (["--threads", str(10**20)], ["--threads", "between 1 and"]),
    (["--threads", "0"], ["--threads"]),
])
def test_sample_bad_options(cli, chain, tmp_path, argv, needles):
    refused(cli, ["cora", "sample", chain["run"], "--out", tmp_path / "s.npz", *argv], needles, tmp_path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_cuda_device_is_refused(cli, chain, tmp_path):
    refused(cli, ["cora", "sample", chain["run"], "--out", tmp_path / "s.npz", "--device", "cuda"],
            ["--device", "no CUDA device"], tmp_path)
    refused(cli, ["cora", "eval", chain["run"], "--data", chain["data"], "--device", "cuda:1"],
            ["--device", "no CUDA device"], tmp_path)


# ---- eval --------------------------------------------------------------------------------------
def test_eval_prints_and_plots_the_exact_correlation(cli, chain, tmp_path):
    status, out, _ = cli("cora", "eval", chain["run"], "--data", chain["data"], "--samples", "200", "--device", "cpu",
                         "--json")
    assert status == 0
    summary = json.loads(out)
    t = np.tanh(1.0)
    exact = {int(r): g for r, g in summary["exact_correlation"]}
    assert exact[1] == pytest.approx((t + t**15) / (1 + t**16), rel=1e-12) and sorted(exact) == list(range(9))
    assert summary["device"] == "cpu" and summary["seed"] == 0

    status, out, _ = cli("cora", "eval", chain["run"], "--data", chain["data"], "--samples", "200",
                         "--plot", tmp_path / "g.png")
    assert status == 0 and (tmp_path / "g.png").exists()
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.strip().startswith("r "))
    assert "G(r) exact" in lines[header]
    rows = [line.split() for line in lines[header + 1:]]
    assert len(rows) == 9 and all(len(row) == 8 for row in rows)
    assert float(rows[1][-1]) == pytest.approx(exact[1], abs=5e-5)


def test_eval_plot_may_not_replace_its_data_or_run_files(cli, chain, tmp_path):
    refused(cli, ["cora", "eval", chain["run"], "--data", chain["data"], "--plot", chain["data"]],
            ["--plot", "same file as --data"], chain["data"].parent)
    refused(cli, ["cora", "eval", chain["run"], "--data", chain["data"], "--plot", chain["run"] / "training_curve.png"],
            ["--plot", "run directory"], chain["run"])


def test_eval_bad_options(cli, chain, tmp_path):
    (tmp_path / "file").write_text("not a directory")
    refused(cli, ["cora", "eval", chain["run"], "--data", chain["data"], "--plot", tmp_path / "file" / "g.png"],
            ["--plot"], tmp_path)
    refused(cli, ["cora", "eval", chain["run"], "--data", chain["data"], "--seed", str(2**64)], ["--seed", "2^64"],
            tmp_path)


# ---- digits ------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-0.5", "16.5", "eight"])
def test_digits_threshold_must_be_a_grey_level(cli, tmp_path, value):
    refused(cli, ["cora", "digits", f"--threshold={value}", "--out", tmp_path / "d.npz"],
            ["--threshold", "between 0 and 16"], tmp_path)


@pytest.mark.parametrize("value", ["nan", "0", "1", "1.5", "-0.1"])
def test_digits_test_fraction_must_lie_between_0_and_1(cli, tmp_path, value):
    refused(cli, ["cora", "digits", f"--test-fraction={value}", "--out", tmp_path / "d.npz", "--test-out",
                  tmp_path / "t.npz"], ["--test-fraction", "between 0 and 1"], tmp_path)


def test_digits_outputs_are_distinct_and_the_split_leaves_images_in_both(cli, tmp_path):
    refused(cli, ["cora", "digits", "--out", tmp_path / "d.npz", "--test-out", tmp_path / "d.npz"],
            ["--test-out", "same file as --out"], tmp_path)
    refused(cli, ["cora", "digits", "--test-fraction", "0.3", "--out", tmp_path / "d.npz"],
            ["--test-fraction", "needs --test-out"], tmp_path)
    pytest.importorskip("sklearn")
    for fraction, empty in (("0.9999", "--out"), ("0.0001", "--test-out")):
        refused(cli, ["cora", "digits", "--test-fraction", fraction, "--out", tmp_path / "d.npz", "--test-out",
                      tmp_path / "t.npz"], ["--test-fraction", f"no image for {empty}", "1797", "0.00028", "0.99972"],
                tmp_path)
    status, out, _ = cli("cora", "digits", "--test-fraction", "0.99972", "--out", tmp_path / "d.npz", "--test-out",
                         tmp_path / "t.npz")
    assert status == 0 and "wrote 1 8x8 binary digits" in out and "1796 to" in out
    with np.load(tmp_path / "d.npz") as train, np.load(tmp_path / "t.npz") as test:
        assert train["pixels"].shape == (1, 8, 8) and test["pixels"].shape == (1796, 8, 8)
