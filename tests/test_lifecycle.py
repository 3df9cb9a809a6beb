"""One run lifecycle for the three trainers (``flow train``, ``rsrg train``, ``cora train``):
resume continues the saved config, model changes are refused, ``--force`` deletes the old run
first, SIGTERM checkpoints, every run carries a format stamp, and tampered or foreign runs and
configs are refused with exit status 2 before any work."""

import json
import re
import signal
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from deeprg.data import SpinDataset, save_dataset
from deeprg.lattice import Lattice
from deeprg.mc import make_sampler
from deeprg.models.ising import K_C
from deeprg.runs import RUN_FORMATS
from deeprg.training import TrainerBase

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore:chain length")


@dataclass
class Kind:
    """How to run one trainer from the command line, with a tiny workload."""

    name: str
    base: list  # command and required inputs
    custom: list  # a non-default model option, kept on resume
    custom_key: str
    custom_value: object
    length_flag: str  # the option that may grow on resume
    changed_model: list  # a model option that differs from ``custom``
    changed_flag: str
    grown: int  # the length a resumed run may ask for (CORA's epochs per stage cannot change)

    def argv(self, run, length, *extra):
        return [*self.base, self.length_flag, str(length), "--out", str(run), "--quiet", *extra]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("lifecycle")
    spins2d = make_sampler("wolff", Lattice.square(8), K_C, seed=1).run(40, thin=2, burn_in=100)
    save_dataset(root / "ising8.npz", SpinDataset.new(spins2d.spins_flat(), K=K_C, sampler="wolff",
                                                      updates_between_samples=2, seed=1))
    chain = make_sampler("wolff", Lattice((16,)), 1.0, seed=2).run(100, thin=2)
    save_dataset(root / "chain16.npz", SpinDataset.new(chain.spins_flat(), K=1.0, sampler="wolff",
                                                       updates_between_samples=2, seed=2))
    return root


KINDS = {
    "flow": lambda d: Kind("flow", ["flow", "train", "--batch", "8", "--threads", "1"], ["--L", "4"], "L", 4,
                           "--steps", ["--L", "8"], "--L", 3),
    "rsrg": lambda d: Kind("rsrg", ["rsrg", "train", "--data", d / "ising8.npz", "--threads", "1"],
                           ["--filter", "4"], "filter_size", 4, "--epochs", ["--filter", "2"], "--filter", 3),
    "cora": lambda d: Kind("cora", ["cora", "train", "--data", d / "chain16.npz", "--threads", "1"],
                           ["--window", "2"], "window", 2, "--epochs", ["--window", "3"], "--window", 2),
}


@pytest.fixture(params=list(KINDS))
def kind(request, data):
    return KINDS[request.param](data)


def saved(run):
    return json.loads((run / "config.json").read_text())


def test_resume_continues_the_saved_config_without_repeating_options(cli, kind, tmp_path):
    run = tmp_path / "run"
    status, _, err = cli(*kind.argv(run, 2, *kind.custom))
    assert status == 0, err
    assert saved(run)["format"] == RUN_FORMATS[kind.name]
    status, _, err = cli(*kind.argv(run, kind.grown, "--resume"))
    assert status == 0, err
    config = saved(run)
    assert config[kind.custom_key] == kind.custom_value
    assert config[kind.length_flag.lstrip("-")] == kind.grown


def test_resume_refuses_a_changed_model_option_naming_it(cli, kind, tmp_path):
    run = tmp_path / "run"
    assert cli(*kind.argv(run, 2, *kind.custom))[0] == 0
    before = (run / "checkpoint.pt").read_bytes()
    status, _, err = cli(*kind.argv(run, kind.grown, "--resume", *kind.changed_model))
    assert status == 2 and err.startswith(f"deeprg: error: {kind.changed_flag}: the run was made with")
    assert err.count("\n") == 1 and (run / "checkpoint.pt").read_bytes() == before


def test_toml_config_cannot_change_the_model_on_resume(cli, kind, tmp_path):
    run = tmp_path / "run"
    assert cli(*kind.argv(run, 2, *kind.custom))[0] == 0
    toml = tmp_path / "c.toml"
    toml.write_text(f"{kind.custom_key} = {kind.custom_value * 2}\n")
    status, _, err = cli(*kind.argv(run, kind.grown, "--resume", "--config", toml))
    assert status == 2 and f"{kind.custom_key}" in err


def test_a_new_run_refuses_an_existing_run_and_a_foreign_directory(cli, kind, tmp_path):
    run = tmp_path / "run"
    assert cli(*kind.argv(run, 2))[0] == 0
    status, _, err = cli(*kind.argv(run, 2))
    assert status == 2 and "--resume" in err and "--force" in err
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    status, _, err = cli(*kind.argv(foreign, 2))
    assert status == 2 and "not a deeprg run" in err
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    status, _, _ = cli(*kind.argv(run, 2, "--resume", "--force"))
    assert status == 2


def test_force_deletes_the_old_checkpoint_before_a_new_run_can_be_killed(cli, kind, tmp_path, monkeypatch):
    run = tmp_path / "run"
    assert cli(*kind.argv(run, 2, *kind.custom))[0] == 0
    (run / "extra.png").write_bytes(b"old figure")

    def killed(self, *args, **kwargs):
        raise KeyboardInterrupt  # as if killed right after the new config was written

    monkeypatch.setattr(TrainerBase, "train", killed)
    status, _, _ = cli(*kind.argv(run, 2, "--force"))
    assert status == 130
    assert not (run / "checkpoint.pt").exists() and not (run / "extra.png").exists()
    assert kind.custom_key not in saved(run) or saved(run)[kind.custom_key] != kind.custom_value
    monkeypatch.undo()
    status, _, err = cli(*kind.argv(run, 2, "--resume"))
    assert status == 2 and "checkpoint" in err


def test_sigterm_saves_a_checkpoint_and_resume_finishes(cli, kind, tmp_path, monkeypatch):
    run = tmp_path / "run"
    original = TrainerBase.train

    def terminated_after_first_unit(self, until=None, on_record=None, should_stop=None, checkpoint=None):
        def record_then_signal(record):
            on_record(record)
            if self.position == 1:
                signal.raise_signal(signal.SIGTERM)

        original(self, until, record_then_signal, should_stop, checkpoint)

    monkeypatch.setattr(TrainerBase, "train", terminated_after_first_unit)
    status, _, err = cli(*kind.argv(run, 2))
    assert status == 128 + signal.SIGTERM and "SIGTERM" in err and "--resume" in err
    assert (run / "checkpoint.pt").exists() and not (run / "metrics.json").exists()
    monkeypatch.undo()
    status, _, err = cli(*kind.argv(run, 2, "--resume"))
    assert status == 0 and (run / "metrics.json").exists(), err


def test_runs_of_a_newer_format_another_kind_or_a_corrupt_config_are_refused(cli, kind, tmp_path):
    run = tmp_path / "run"
    assert cli(*kind.argv(run, 2))[0] == 0
    config = saved(run)
    name, version = config["format"].rsplit("/", 1)
    (run / "config.json").write_text(json.dumps({**config, "format": f"{name}/{int(version) + 1}"}))
    status, _, err = cli(*kind.argv(run, kind.grown, "--resume"))
    assert status == 2 and "newer deeprg" in err
    other = next(f for k, f in RUN_FORMATS.items() if k != kind.name)
    (run / "config.json").write_text(json.dumps({**config, "format": other}))
    status, _, err = cli(*kind.argv(run, kind.grown, "--resume"))
    assert status == 2 and f"not a {kind.name} run" in err
    (run / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "format"}))
    status, _, err = cli(*kind.argv(run, kind.grown, "--resume"))
    assert status == 2 and "no run format stamp" in err
    (run / "config.json").write_text("{ not json")
    status, _, err = cli(*kind.argv(run, kind.grown, "--resume"))
    assert status == 2 and "corrupt" in err


def test_stale_temporary_files_of_a_killed_run_are_removed(cli, kind, tmp_path):
    run = tmp_path / "run"
    assert cli(*kind.argv(run, 2))[0] == 0
    stale = run / ".checkpoint.pt.x1y2.tmp"
    stale.write_bytes(b"half written")
    assert cli(*kind.argv(run, kind.grown, "--resume"))[0] == 0
    assert not stale.exists()


def _tamper(path, change):
    state = torch.load(path, weights_only=True)
    change(state)
    torch.save(state, path)


def _wrong_shape(state):
    """Replace the model's first parameter tensor (top level, or in the module's state dict)."""
    for key in ("weights", "flow", "network"):
        if isinstance(state.get(key), torch.Tensor):
            state[key] = torch.zeros(3, 1, 7)
            return
        if isinstance(state.get(key), dict):
            inner = state[key]
            inner[next(iter(inner))] = torch.zeros(3, 1, 7)
            return
    raise AssertionError("no model tensor in the checkpoint")


def _step_key(state):
    return next(k for k in ("step", "epoch", "stage_index") if k in state)


TAMPERINGS = {
    "missing key": (lambda s: s.pop("history"), "missing"),
    "extra key": (lambda s: s.update(surprise=1), "newer deeprg"),
    "non-integer step": (lambda s: s.update({_step_key(s): 2.5}), "must be int"),
    "wrong tensor shape": (_wrong_shape, ""),
}


@pytest.mark.parametrize("tampering", list(TAMPERINGS))
def test_tampered_checkpoints_are_refused_on_resume(cli, kind, tmp_path, tampering):
    run = tmp_path / "run"
    assert cli(*kind.argv(run, 2))[0] == 0
    change, message = TAMPERINGS[tampering]
    _tamper(run / "checkpoint.pt", change)
    status, _, err = cli(*kind.argv(run, kind.grown, "--resume"))
    assert status == 2 and err.startswith("deeprg: error:") and message in err and "Traceback" not in err


BAD_TOML = {
    "flow": ['symmetrize = "no"', "n_couplings = true", 'lr = "2e-3"', "hidden = 5", "min_eigenvalue = inf",
             "lr = nan", "L = 4.0", "[L]\nx = 1"],
    "rsrg": ['persistent = "no"', "cd_k = true", 'lr = "1e-3"', "init_scale = inf"],
    "cora": ['tree = "no"', "passes = true", 'chi = "2"', "lr = inf", "shared = 1"],
}


def test_config_values_of_the_wrong_type_are_refused(cli, kind, tmp_path):
    for line in BAD_TOML[kind.name]:
        toml = tmp_path / "bad.toml"
        toml.write_text(line + "\n")
        run = tmp_path / "run"
        status, _, err = cli(*kind.argv(run, 2, "--config", toml))
        key = re.match(r"\[?(\w+)", line).group(1)
        assert status == 2 and err.startswith("deeprg: error:") and key in err, (line, err)
        assert not run.exists()
    status, _, err = cli(*kind.argv(tmp_path / "run", 2, "--config", tmp_path))
    assert status == 2 and "is a directory" in err


def test_oversized_requests_are_refused_with_the_estimated_memory(cli, data, tmp_path):
    cases = [
        ["flow", "train", "--L", "1024", "--steps", "1"],
        ["flow", "train", "--L", "4", "--hidden", "100000", "100000"],
        ["flow", "train", "--L", "16", "--batch", "100000000"],
        ["cora", "train", "--data", data / "chain16.npz", "--chi", "1000"],
    ]
    for argv in cases:
        run = tmp_path / "run"
        status, _, err = cli(*argv, "--out", run, "--quiet")
        assert status == 2 and "GiB" in err, (argv, err)
        assert not run.exists()


def test_seed_of_2_to_the_64_is_refused(cli, kind, tmp_path):
    status, _, err = cli(*kind.argv(tmp_path / "run", 2, "--seed", str(2**64)))
    assert status == 2 and "--seed" in err and "2^64" in err
