"""``deeprg rsrg train|exponent-vs-epoch`` and ``deeprg mcrg``: outputs, resume and bad input."""

import json

import numpy as np
import pytest
import torch

from deeprg import Lattice
from deeprg.data import SpinDataset, save_dataset
from deeprg.mc import make_sampler
from deeprg.models.ising import K_C

torch.set_num_threads(1)

# The datasets here are far too short for reliable autocorrelation times; that warning is expected.
pytestmark = pytest.mark.filterwarnings("ignore:chain length")


def ising_dataset(path, L, n, seed, **meta):
    run = make_sampler("wolff", Lattice.square(L), K_C, seed=seed, n_chains=1).run(n, thin=2, burn_in=200)
    ds = SpinDataset.new(run.spins_flat(), K=K_C, sampler="wolff", updates_between_samples=2, seed=seed, **meta)
    save_dataset(path, ds)
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    return {
        "train8": ising_dataset(d / "train8.npz", 8, 100, 1),
        "mcrg16": ising_dataset(d / "mcrg16.npz", 16, 200, 2),
    }


@pytest.fixture(scope="module")
def run4(data, tmp_path_factory):
    """A trained 4x4 filter (2 epochs on 8x8 data)."""
    from deeprg.cli import main

    out = tmp_path_factory.mktemp("runs") / "run4"
    assert main(["rsrg", "train", "--data", str(data["train8"]), "--filter", "4", "--epochs", "2", "--out",
                 str(out), "--quiet", "--threads", "1"]) == 0
    return out


def test_train_writes_the_run_directory(cli, data, tmp_path):
    out = tmp_path / "run"
    status, stdout, _ = cli("rsrg", "train", "--data", data["train8"], "--filter", "4", "--cd-k", "2", "--epochs", "3",
                            "--batch", "10", "--seed", "4", "--out", out, "--quiet", "--json")
    assert status == 0
    metrics = json.loads(stdout)
    assert metrics["epochs"] == 3 and metrics["steps"] == 30 and np.shape(metrics["final_filter"]) == (4, 4)
    for name in ("config.json", "checkpoint.pt", "filters.npz", "metrics.json", "filters.png"):
        assert (out / name).exists()
    with np.load(out / "filters.npz") as f:
        assert f["filters"].shape == (4, 4, 4) and f["epochs"].tolist() == [0, 1, 2, 3]
        assert np.allclose(f["filters"][-1], metrics["final_filter"])
    config = json.loads((out / "config.json").read_text())
    assert config["cd_k"] == 2 and config["seed"] == 4 and config["data"]["n"] == 100


def test_resume_continues_the_run_exactly(cli, data, tmp_path):
    args = ("rsrg", "train", "--data", data["train8"], "--filter", "4", "--quiet")
    assert cli(*args, "--epochs", "2", "--out", tmp_path / "straight")[0] == 0
    assert cli(*args, "--epochs", "1", "--out", tmp_path / "split")[0] == 0
    assert cli("rsrg", "train", "--data", data["train8"], "--epochs", "2", "--resume", "--out", tmp_path / "split",
               "--quiet")[0] == 0
    a, b = np.load(tmp_path / "straight" / "filters.npz"), np.load(tmp_path / "split" / "filters.npz")
    assert np.array_equal(a["filters"], b["filters"])


def test_mcrg_json_tables(cli, data):
    status, out, _ = cli("mcrg", "--data", data["mcrg16"], "--transform", "majority", "--levels", "2",
                         "--blocks", "10", "--json", "--quiet")
    assert status == 0
    s = json.loads(out)
    assert len(s["y_t"]) == 2 and all(len(row) == 7 for row in s["y_t"])
    assert len(s["y_h"]) == 2 and all(len(row) == 4 for row in s["y_h"])
    assert all(set(e) == {"mean", "error"} for row in s["y_t"] + s["y_h"] for e in row)
    assert 0.5 < s["y_t"][0][0]["mean"] < 1.5 and 1.5 < s["y_h"][0][0]["mean"] < 2.2
    assert s["n_configurations"] == 200 and s["seed"] == 0


def test_mcrg_with_a_trained_projector_prints_the_table(cli, data, run4):
    status, out, _ = cli("mcrg", "--data", data["mcrg16"], "--transform", run4, "--levels", "2", "--blocks", "10",
                         "--quiet")
    assert status == 0
    rows = [line.split() for line in out.splitlines() if line[:3].strip().isdigit()]
    assert [(int(r[0]), int(r[1])) for r in rows] == [(n_r, n_c) for n_r in (1, 2) for n_c in range(1, 8)]
    assert "RBM projector" in out


def test_exponent_vs_epoch(cli, data, run4):
    status, out, _ = cli("rsrg", "exponent-vs-epoch", run4, "--data", data["mcrg16"], "--blocks", "10", "--json",
                         "--quiet")
    assert status == 0
    s = json.loads(out)
    assert s["epochs"] == [1, 2] and len(s["y_t"]) == 2 and len(s["y_t"][0]) == 1 and len(s["y_t"][0][0]) == 7
    assert (run4 / "exponent_vs_epoch.png").exists()
    assert json.loads((run4 / "exponent_vs_epoch.json").read_text())["epochs"] == [1, 2]


def snapshot(root):
    return sorted((str(p), p.stat().st_mtime_ns) for p in root.rglob("*"))


@pytest.fixture
def bad(tmp_path, data, run4):
    """Paths for bad-input cases: another model, another dimension, a run with an 8x8 filter."""
    paths = {
        "potts": tmp_path / "potts.npz",
        "chain": tmp_path / "chain.npz",
        "garbage_run": tmp_path / "garbage_run",
        "existing": tmp_path / "existing",
        **data,
        "run4": run4,
    }
    rng = np.random.default_rng(0)
    spins = rng.choice(np.array([-1, 1], dtype=np.int8), size=(100, 8, 8))
    save_dataset(paths["potts"], SpinDataset.new(spins, K=0.5, sampler="wolff", updates_between_samples=1, seed=0,
                                                 model="potts"))
    save_dataset(paths["chain"], SpinDataset.new(spins.reshape(100, 64), K=0.5, sampler="wolff",
                                                 updates_between_samples=1, seed=0))
    paths["garbage_run"].mkdir()
    (paths["garbage_run"] / "checkpoint.pt").write_bytes(b"junk")
    paths["existing"].mkdir()
    (paths["existing"] / "checkpoint.pt").write_bytes(b"junk")
    return paths


BAD = [
    (["mcrg", "--data", "{mcrg16}", "--transform", "majority", "--levels", "5"], "--levels"),
    (["mcrg", "--data", "{mcrg16}", "--transform", "majority", "--levels", "3"], "--levels"),
    (["mcrg", "--data", "{mcrg16}", "--transform", "majority", "--blocks", "200"], "--blocks"),
    (["mcrg", "--data", "{mcrg16}", "--transform", "nowhere"], "--transform"),
    (["mcrg", "--data", "{mcrg16}", "--transform", "{garbage_run}"], "--transform"),
    (["mcrg", "--data", "{potts}", "--transform", "majority"], "model"),
    (["mcrg", "--data", "{chain}", "--transform", "majority"], "d=1"),
    (["mcrg", "--data", "{train8}", "--transform", "{run4}", "--levels", "2"], "--levels"),
    (["rsrg", "train", "--data", "{train8}", "--filter", "16", "--out", "{tmp}/new"], "--filter"),
    (["rsrg", "train", "--data", "{train8}", "--filter", "3", "--out", "{tmp}/new"], "filter_size"),
    (["rsrg", "train", "--data", "{train8}", "--batch", "500", "--out", "{tmp}/new"], "--batch"),
    (["rsrg", "train", "--data", "{potts}", "--out", "{tmp}/new"], "model"),
    (["rsrg", "train", "--data", "{train8}", "--out", "{existing}"], "--out"),
    (["rsrg", "train", "--data", "{train8}", "--filter", "2", "--resume", "--out", "{run4}"], "filter_size"),
    (["rsrg", "train", "--data", "{mcrg16}", "--resume", "--out", "{run4}"], "other data"),
    (["rsrg", "train", "--data", "{train8}", "--epochs", "0", "--out", "{tmp}/new"], "--epochs"),
    (["rsrg", "exponent-vs-epoch", "{garbage_run}", "--data", "{mcrg16}"], "RUN"),
]


@pytest.mark.parametrize("argv, needle", BAD)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(cli, bad, tmp_path, argv, needle):
    argv = [a.format(tmp=tmp_path, **{k: str(v) for k, v in bad.items()}) for a in argv]
    before = snapshot(tmp_path), snapshot(bad["run4"])
    status, out, err = cli(*argv)
    assert status == 2
    lines = [line for line in err.splitlines() if line.startswith("deeprg") or "error" in line]
    assert len(lines) == 1 and needle in lines[0], err
    assert (snapshot(tmp_path), snapshot(bad["run4"])) == before
    assert not (tmp_path / "new").exists()


# ---- --device ----------------------------------------------------------------------------------
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="torch has a CUDA device here")


@NO_CUDA
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_train_on_cuda_without_cuda_exits_2_naming_the_option(cli, bad, tmp_path, device):
    argv = ["rsrg", "train", "--data", bad["train8"], "--filter", "4", "--out", tmp_path / "new", "--device", device]
    before = snapshot(tmp_path), snapshot(bad["run4"])
    status, out, err = cli(*argv, "--quiet")
    assert status == 2 and out == ""
    lines = [line for line in err.splitlines() if line.startswith("deeprg") or "error" in line]
    assert len(lines) == 1 and "--device" in lines[0] and "no CUDA device" in lines[0], err
    assert (snapshot(tmp_path), snapshot(bad["run4"])) == before
    assert not (tmp_path / "new").exists()


def test_device_is_recorded_and_may_change_on_resume(cli, data, tmp_path):
    args = ("rsrg", "train", "--data", data["train8"], "--filter", "4", "--quiet")
    assert cli(*args, "--epochs", "2", "--out", tmp_path / "straight")[0] == 0
    assert cli(*args, "--epochs", "1", "--device", "cpu", "--out", tmp_path / "split")[0] == 0
    assert json.loads((tmp_path / "split" / "config.json").read_text())["device"] == "cpu"
    status, _, err = cli("rsrg", "train", "--data", data["train8"], "--epochs", "2", "--device", "cpu", "--resume",
                         "--out", tmp_path / "split", "--quiet")
    assert status == 0, err
    a, b = np.load(tmp_path / "straight" / "filters.npz"), np.load(tmp_path / "split" / "filters.npz")
    assert np.array_equal(a["filters"], b["filters"])


def test_a_gpu_run_resumes_on_the_cpu(cli, data, tmp_path):
    """A run directory written with --device cuda (simulated: its config and checkpoint say
    cuda) continues on a machine without a GPU with --device cpu, warning that its Gibbs stream
    restarts; mcrg reads it as it is."""
    out = tmp_path / "run"
    assert cli("rsrg", "train", "--data", data["train8"], "--filter", "4", "--epochs", "1", "--out", out,
               "--quiet")[0] == 0
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "device": "cuda"}))
    state = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    state["config"] = json.dumps({**json.loads(state["config"]), "device": "cuda"})
    torch.save(state, out / "checkpoint.pt")
    status, _, err = cli("mcrg", "--data", data["mcrg16"], "--transform", out, "--levels", "1", "--blocks", "10",
                         "--quiet", "--json")
    assert status == 0, err
    if not torch.cuda.is_available():
        status, _, err = cli("rsrg", "train", "--data", data["train8"], "--epochs", "2", "--resume", "--out", out,
                             "--quiet")
        assert status == 2 and "device 'cuda'" in err and "use 'cpu'" in err
    with pytest.warns(RuntimeWarning, match="written on cuda"):
        status, _, err = cli("rsrg", "train", "--data", data["train8"], "--epochs", "2", "--device", "cpu", "--resume",
                             "--out", out, "--quiet", "--json")
    assert status == 0, err
    assert json.loads((out / "config.json").read_text())["device"] == "cpu"
    assert np.load(out / "filters.npz")["filters"].shape == (3, 4, 4)


def test_mcrg_records_the_device_and_an_explicit_cpu_is_the_default(cli, data, run4):
    base = ("mcrg", "--data", data["mcrg16"], "--transform", run4, "--levels", "1", "--blocks", "10", "--json",
            "--quiet")
    status, out, _ = cli(*base)
    assert status == 0
    default = json.loads(out)
    status, out, _ = cli(*base, "--device", "cpu")
    assert status == 0
    cpu = json.loads(out)
    assert default["device"] == cpu["device"] == "cpu"
    assert cpu["y_t"] == default["y_t"] and cpu["y_h"] == default["y_h"]
