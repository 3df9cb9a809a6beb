"""``deeprg cora train|sample|eval|digits``: outputs, Ctrl-C and resume, and bad input."""

import json
import signal

import numpy as np
import pytest
import torch

from deeprg.cora import learn as learn_module
from deeprg.cora.evaluate import chain_window_entropy
from deeprg.cora.learn import Trainer
from deeprg.data import SpinDataset, save_dataset
from deeprg.lattice import Lattice
from deeprg.mc import make_sampler

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cora")
    out = {}
    for name, seed in (("train", 1), ("test", 2)):
        run = make_sampler("wolff", Lattice((16,)), 1.0, seed=seed).run(400, thin=4)
        out[name] = save_dataset(root / f"{name}.npz", SpinDataset.new(
            run.spins_flat(), K=1.0, sampler="wolff", updates_between_samples=4, seed=seed))
    rng = np.random.default_rng(0)
    np.savez(root / "images.npz", pixels=rng.integers(0, 2, (60, 4, 4)).astype(np.int8))
    np.savez(root / "six.npz", pixels=rng.integers(0, 2, (10, 6)))
    np.savez(root / "three.npz", pixels=rng.integers(0, 3, (10, 8)))
    np.savez(root / "eight.npz", spins=1 - 2 * rng.integers(0, 2, (10, 8)))
    for name in ("images", "six", "three", "eight"):
        out[name] = root / f"{name}.npz"
    return out


def train(cli, files, run, *extra):
    return cli("cora", "train", "--data", files["train"], "--epochs", "5", "--threads", "1", "--out", run,
               "--quiet", *extra)


def test_train_sample_eval(cli, files, tmp_path):
    run = tmp_path / "run"
    status, out, _ = train(cli, files, run, "--json")
    assert status == 0
    metrics = json.loads(out)
    exact = chain_window_entropy(16, 1.0, 4) / 4
    assert metrics["epochs"] == 5 and metrics["exact_window_entropy_per_site"] == pytest.approx(exact, rel=1e-12)
    for name in ("config.json", "checkpoint.pt", "metrics.json", "training_curve.png"):
        assert (run / name).exists()
    config = json.loads((run / "config.json").read_text())
    assert config["chi"] == 2 and config["window"] == 4 and config["encoding"] == "spin" and config["n_data"] == 400
    assert config["git_revision"] is None or len(config["git_revision"]) == 40

    status, _, _ = cli("cora", "sample", run, "--n", "10", "--seed", "1", "--out", tmp_path / "s.npz")
    assert status == 0 and (tmp_path / "s.png").exists()
    spins = np.load(tmp_path / "s.npz")["spins"]
    assert spins.shape == (10, 16) and spins.dtype == np.int8 and set(np.unique(spins)) <= {-1, 1}

    status, out, _ = cli("cora", "eval", run, "--data", files["test"], "--samples", "500", "--json",
                         "--plot", tmp_path / "g.png")
    assert status == 0 and (tmp_path / "g.png").exists()
    s = json.loads(out)
    assert set(s["window_nll_per_site"]) == {"mean", "error"} and s["window_nll_per_site"]["mean"] > 0.4
    assert len(s["correlation"]) == 9 and {"model", "data"} <= set(s["correlation"][1])
    assert s["correlation"][0]["model"] == 1.0 and "full_nll" not in s
    assert s["exact_window_entropy_per_site"] == pytest.approx(exact, rel=1e-12)


def test_tree_on_binary_images_reports_full_nll(cli, files, tmp_path):
    run = tmp_path / "tree"
    status, _, _ = cli("cora", "train", "--data", files["images"], "--tree", "--unshared", "--epochs", "3",
                       "--method", "layerwise", "--passes", "1", "--out", run, "--quiet")
    assert status == 0
    status, out, _ = cli("cora", "eval", run, "--data", files["images"], "--samples", "200", "--json")
    s = json.loads(out)
    assert status == 0 and s["full_nll"]["mean"] > 0 and s["full_nll_per_site"]["mean"] > 0
    status, _, _ = cli("cora", "sample", run, "--n", "4", "--out", tmp_path / "p.npz")
    pixels = np.load(tmp_path / "p.npz")["pixels"]
    assert status == 0 and pixels.shape == (4, 4, 4) and set(np.unique(pixels)) <= {0, 1}


def test_digits_command_splits_the_data(cli, tmp_path):
    pytest.importorskip("sklearn")
    status, _, _ = cli("cora", "digits", "--size", "16", "--out", tmp_path / "d.npz", "--test-out",
                       tmp_path / "t.npz", "--test-fraction", "0.25", "--seed", "3")
    assert status == 0
    train, test = np.load(tmp_path / "d.npz"), np.load(tmp_path / "t.npz")
    assert train["pixels"].shape == (1348, 16, 16) and test["pixels"].shape == (449, 16, 16)
    assert len(train["labels"]) == 1348


def test_ctrl_c_saves_a_checkpoint_and_resume_finishes(cli, files, tmp_path, monkeypatch):
    run = tmp_path / "run"
    original = Trainer.step

    def epoch_then_interrupt(self):
        record = original(self)
        if len(self.history) == 2:
            signal.raise_signal(signal.SIGINT)
        return record

    monkeypatch.setattr(Trainer, "step", epoch_then_interrupt)
    status, _, err = train(cli, files, run)
    assert status == 130 and "--resume" in err
    assert learn_module.load_checkpoint(run / "checkpoint.pt")["stage_epoch"] == 2
    assert not (run / "metrics.json").exists()
    monkeypatch.setattr(Trainer, "step", original)
    status, out, _ = train(cli, files, run, "--resume", "--json")
    assert status == 0 and json.loads(out)["epochs"] == 5
    status, _, err = train(cli, files, run)
    assert status == 2 and "--resume" in err and "--force" in err


@pytest.mark.parametrize("argv, needle", [
    (["--chi", "1"], "--chi"),
    (["--window", "32"], "window"),
    (["--window", "0"], "--window"),
    (["--method", "both"], "--method"),
    (["--data", "{six}"], "power of two"),
    (["--data", "{three}"], "two states"),
    (["--data", "{missing}"], "no such file"),
    (["--resume"], "--resume"),
])
def test_bad_training_input_exits_2_and_writes_nothing(cli, files, tmp_path, argv, needle):
    run = tmp_path / "run"
    paths = {**files, "missing": tmp_path / "nothing.npz"}
    argv = [a.format(**{k: str(v) for k, v in paths.items()}) for a in argv]
    base = ["cora", "train", "--data", files["train"], "--epochs", "2", "--out", run, "--quiet"]
    status, _, err = cli(*base, *argv)
    assert status == 2 and needle in err
    assert err.startswith("usage:") or len(err.strip().splitlines()) == 1
    assert not run.exists()


def test_too_large_cones_are_refused(cli, tmp_path):
    np.savez(tmp_path / "big.npz", pixels=np.zeros((4, 16, 16), dtype=np.int8))
    status, _, err = cli("cora", "train", "--data", tmp_path / "big.npz", "--chi", "4", "--out", tmp_path / "r")
    assert status == 2 and "window 2 with chi = 4" in err and not (tmp_path / "r").exists()


def test_bad_eval_and_sample_input_exits_2(cli, files, tmp_path):
    run = tmp_path / "run"
    assert train(cli, files, run)[0] == 0
    status, _, err = cli("cora", "eval", run, "--data", files["eight"])
    assert status == 2 and "does not match" in err
    status, _, err = cli("cora", "eval", run, "--data", files["test"], "--window", "17")
    assert status == 2 and "--window" in err
    status, _, err = cli("cora", "eval", tmp_path / "nowhere", "--data", files["test"])
    assert status == 2 and "does not exist" in err
    status, _, err = cli("cora", "sample", run, "--out", tmp_path / "no" / "s.npz")
    assert status == 2 and "--out" in err and not (tmp_path / "no").exists()
