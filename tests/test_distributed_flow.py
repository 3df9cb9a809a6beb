"""Data-parallel flow training under torch.distributed (gloo, 2 CPU processes) against one process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from deeprg.distributed import DistributedMismatch, World
from deeprg.flows.train import FlowTrainConfig, Trainer

pytestmark = pytest.mark.distributed

TRAIN = ["flow", "train", "--L", "4", "--batch", "16", "--dtype", "float64", "--seed", "3", "--hidden", "8",
         "--quiet"]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "run.toml"
    path.write_text("eval_samples = 64\ndiagnostics_every = 2\n")  # diagnostics gather the batch's rows
    return path


def deeprg(*argv, processes: int = 1, timeout: float = 240, **kwargs) -> subprocess.CompletedProcess:
    """``deeprg argv`` on one process, or on ``processes`` under ``torch.distributed.run``."""
    launch = ([sys.executable, "-m", "deeprg"] if processes == 1 else
              [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
               "-m", "--", "deeprg"])
    return subprocess.run([*launch, *map(str, argv)], capture_output=True, text=True, timeout=timeout, env=_env(),
                          **kwargs)


def _on_one_and_two(*argv) -> tuple[dict, dict]:
    """The JSON summaries of ``deeprg argv`` on one process and on two."""
    one, two = deeprg(*argv), deeprg(*argv, processes=2)
    assert one.returncode == 0 and two.returncode == 0, two.stderr
    return json.loads(one.stdout), json.loads(two.stdout)


def _flow_state(run: Path) -> dict:
    return torch.load(run / "checkpoint.pt", weights_only=True)


def _max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


@pytest.fixture(scope="module")
def one_and_two(tmp_path_factory):
    """A 5-step run on one process and the same run on two."""
    tmp = tmp_path_factory.mktemp("ddp")
    cfg = _config(tmp)
    runs = {}
    for n in (1, 2):
        out = tmp / f"p{n}"
        done = deeprg(*TRAIN, "--steps", "5", "--config", cfg, "--out", out, processes=n)
        assert done.returncode == 0, done.stderr
        runs[n] = out
    return tmp, cfg, runs


def test_two_processes_train_the_same_flow_as_one(one_and_two):
    _, _, runs = one_and_two
    a, b = _flow_state(runs[1]), _flow_state(runs[2])
    assert _max_difference(a["flow"], b["flow"]) < 1e-9
    losses = [(r["loss"], s["loss"]) for r, s in zip(a["history"], b["history"], strict=True)]
    assert all(abs(x - y) < 1e-9 * max(1.0, abs(x)) for x, y in losses)
    assert b["step"] == 5


def test_the_diagnostics_of_two_processes_see_the_whole_batch_as_one_process_does(one_and_two):
    _, _, runs = one_and_two
    one, two = (json.loads((runs[n] / "metrics.json").read_text())["diagnostics"] for n in (1, 2))
    assert one.keys() == two.keys() and one["step"] == two["step"] == 4
    for key in ("reverse_ess", "structure_factor", "reference_structure_factor"):
        assert two[key] == pytest.approx(one[key], rel=1e-6), key


def test_only_rank_zero_writes_and_the_config_records_the_processes(one_and_two):
    _, _, runs = one_and_two
    assert sorted(p.name for p in runs[2].iterdir()) == sorted(p.name for p in runs[1].iterdir())
    assert json.loads((runs[2] / "config.json").read_text())["processes"] == 2


def test_a_two_process_run_resumes_on_one_process(one_and_two):
    tmp, _, runs = one_and_two
    resumed = {}
    for n, run in runs.items():  # both continued to 8 steps on one process
        resumed[n] = shutil.copytree(run, tmp / f"resumed{n}")
        done = deeprg("flow", "train", "--resume", "--steps", "8", "--out", resumed[n], "--quiet")
        assert done.returncode == 0, done.stderr
    a, b = _flow_state(resumed[1]), _flow_state(resumed[2])
    assert a["step"] == b["step"] == 8
    assert _max_difference(a["flow"], b["flow"]) < 1e-9


def test_processes_started_with_different_options_all_refuse(tmp_path):
    script = tmp_path / "mismatch.py"
    out = tmp_path / "run"
    script.write_text(
        "import os, sys\n"
        "from deeprg.cli import main\n"
        f"sys.exit(main({[*TRAIN, '--steps', '2', '--out', str(out)]!r} + ['--lr', str(1e-3 * (1 + int(os.environ['RANK'])))]))\n")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           str(script)], capture_output=True, text=True, timeout=240, env=_env())
    assert done.returncode != 0
    assert done.stderr.count("started with different command lines") == 2
    assert not out.exists()


def test_a_one_process_command_under_torchrun_is_refused_with_exit_2(tmp_path):
    done = deeprg("exact", "ising", "--L", "4", "--beta", "0.4", processes=2)
    assert done.returncode != 0
    assert "runs on one process only" in done.stderr
    assert "exitcode  : 2" in done.stderr


def test_a_non_finite_loss_on_one_process_stops_both_before_the_step(tmp_path):
    """Rank 1 alone sees NaN from its 4th step on: both processes stop at step 4, before Adam
    moves the parameters, and the checkpoint they leave holds step 3 on both sides."""
    script, out, cfg = tmp_path / "nan.py", tmp_path / "run", tmp_path / "run.toml"
    cfg.write_text("checkpoint_seconds = 1e-9\neval_samples = 64\n")  # a checkpoint after every step
    script.write_text(
        "import os, sys\n"
        "import deeprg.flows.train as T\n"
        "if os.environ['RANK'] == '1':\n"
        "    forward, calls = T._Objective.forward, [0]\n"
        "    def nan_after(self, *a, **k):\n"
        "        x, f, nll = forward(self, *a, **k)\n"
        "        calls[0] += 1\n"
        "        return (x, f * float('nan') if calls[0] > 3 else f, nll)\n"
        "    T._Objective.forward = nan_after\n"
        "from deeprg.cli import main\n"
        f"sys.exit(main({[*TRAIN, '--steps', '10', '--config', str(cfg), '--out', str(out)]!r}))\n")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           str(script)], capture_output=True, text=True, timeout=240, env=_env())
    assert done.returncode != 0
    assert "non-finite loss at step 4" in done.stderr
    assert _flow_state(out)["step"] == 3
    assert not list(out.glob(".*.tmp"))


def test_world_larger_than_the_batch_is_refused_before_any_work():
    cfg = FlowTrainConfig(L=4, batch=2, hidden=[4], steps=1)
    with pytest.raises(DistributedMismatch, match="batch \\(2\\) must be at least the number of processes \\(4\\)"):
        Trainer(cfg, world=World(rank=0, size=4, local_rank=0, local_size=4, backend="gloo"))


def test_sigterm_to_one_process_stops_both_with_a_checkpoint_that_resumes(tmp_path):
    script = tmp_path / "train.py"
    out = tmp_path / "run"
    script.write_text(
        "import os, sys\n"
        f"open(os.path.join({str(tmp_path)!r}, 'pid' + os.environ['RANK']), 'w').write(str(os.getpid()))\n"
        "from deeprg.cli import main\n"
        f"sys.exit(main({[*TRAIN, '--steps', '1000000', '--out', str(out)]!r}))\n")
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                             str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    try:
        deadline = time.monotonic() + 120
        while not (out / "config.json").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(3.0)  # both processes are in the training loop
        os.kill(int((tmp_path / "pid1").read_text()), signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert "stopped by a signal to another process" in stderr
    state = _flow_state(out)
    assert 0 < state["step"] < 1000000
    assert not list(out.glob(".*.tmp"))
    done = deeprg("flow", "train", "--resume", "--steps", str(state["step"] + 1), "--out", out, "--quiet",
                  "--json")
    assert done.returncode == 0, done.stderr


def test_importance_sampling_on_two_processes_equals_one(one_and_two):
    _, _, runs = one_and_two
    argv = ("flow", "estimate", runs[1], "--method", "is", "--samples", "3000", "--seed", "5", "--json", "--quiet")
    a, b = _on_one_and_two(*argv)
    assert b["processes"] == 2
    for key in ("ln_z", "structure_factor", "energy_per_site"):
        for part in ("mean", "error"):
            assert b[key][part] == pytest.approx(a[key][part], rel=1e-9, abs=1e-12), key
    assert b["ess_fraction"] == pytest.approx(a["ess_fraction"], rel=1e-9)
    assert b["variational_free_energy"] == a["variational_free_energy"]


ESTIMATES = {
    "ais": ("--method", "ais", "--samples", "100", "--anneal", "4"),
    "smc": ("--method", "smc", "--samples", "32", "--replicas", "3"),
    "bridge-reference": ("--method", "bridge", "--samples", "200", "--pi-samples", "200"),
    "bridge-hmc": ("--method", "bridge", "--samples", "200", "--pi-source", "hmc", "--pi-samples", "128"),
}


@pytest.mark.parametrize("method", ESTIMATES)
def test_every_estimator_on_two_processes_equals_one(one_and_two, method):
    _, _, runs = one_and_two
    argv = ("flow", "estimate", runs[1], *ESTIMATES[method], "--seed", "5", "--json", "--quiet")
    a, b = _on_one_and_two(*argv)
    assert b["processes"] == 2
    if method == "smc":  # whole replicas per process: the same arithmetic
        assert b["ln_z"] == a["ln_z"] and b["ln_z_replicas"] == a["ln_z_replicas"]
    else:  # the flow's work split by rows: equal up to the rounding of smaller batches
        for part in ("mean", "error"):
            assert b["ln_z"][part] == pytest.approx(a["ln_z"][part], rel=1e-9, abs=1e-12)


def test_latent_hmc_on_two_processes_follows_the_one_process_chains(one_and_two):
    _, _, runs = one_and_two
    argv = ("flow", "hmc", runs[1], "--chains", "6", "--steps", "10", "--warmup", "5", "--seed", "2", "--json",
            "--quiet")
    a, b = _on_one_and_two(*argv)
    assert b["processes"] == 2
    assert b["acceptance"] == pytest.approx(a["acceptance"], rel=1e-9)
    assert b["step_size"] == pytest.approx(a["step_size"], rel=1e-9)
    for name in ("structure_factor", "energy_per_site"):
        assert b[name]["mean"] == pytest.approx(a[name]["mean"], rel=1e-9), name


def test_more_processes_than_smc_replicas_is_refused_with_exit_2(one_and_two):
    _, _, runs = one_and_two
    script_free = ("flow", "estimate", runs[1], "--method", "smc", "--samples", "32", "--replicas", "2", "--quiet")
    done = deeprg(*script_free, processes=3)
    assert done.returncode != 0
    assert "--replicas (2) must be at least the number of processes (3)" in done.stderr


def test_independence_metropolis_on_two_processes_follows_the_one_process_chains(one_and_two):
    _, _, runs = one_and_two
    argv = ("flow", "mh", runs[1], "--chains", "7", "--steps", "20", "--warmup", "3", "--seed", "2", "--json",
            "--quiet")
    a, b = _on_one_and_two(*argv)
    assert (a["processes"], b["processes"]) == (1, 2)
    assert b["acceptance"] == pytest.approx(a["acceptance"], rel=1e-9)
    for name in ("structure_factor", "energy_per_site"):
        for part in ("mean", "error"):
            assert b[name][part] == pytest.approx(a[name][part], rel=1e-9, abs=1e-12), name


@pytest.mark.parametrize("n", [7, 1])  # 7 split 4 + 3; 1 sample, fewer than processes: not split
def test_flow_samples_on_two_processes_equal_one_and_only_rank_zero_writes(one_and_two, tmp_path, n):
    import numpy as np

    _, _, runs = one_and_two
    out = {}
    for processes in (1, 2):
        path = tmp_path / str(processes) / "samples.npz"
        path.parent.mkdir()
        done = deeprg("flow", "sample", runs[1], "--n", n, "--seed", "4", "--out", path, processes=processes)
        assert done.returncode == 0, done.stderr
        assert sorted(p.name for p in path.parent.iterdir()) == ["samples.npz", "samples.png"]
        out[processes] = np.load(path)
    assert out[2]["x"].shape == (n, 4, 4)
    np.testing.assert_allclose(out[2]["x"], out[1]["x"], rtol=1e-6, atol=1e-6)
    assert np.array_equal(out[2]["spins"], out[1]["spins"])
