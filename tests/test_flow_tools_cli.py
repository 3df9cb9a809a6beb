"""Bad input, outputs, progress and broken flows of ``deeprg flow estimate|sample|hmc|mh|analyze``
(issue 12): every refusal is a one-line ``deeprg: error:`` before any work, with nothing written."""

import json
import os
import re
import shutil

import numpy as np
import pytest
import torch

from deeprg.cli import main
from deeprg.mc.stats import Estimate

torch.set_num_threads(1)

# The runs here are far too short for reliable autocorrelation times and importance weights.
pytestmark = [pytest.mark.filterwarnings("ignore:chain length"), pytest.mark.filterwarnings("ignore:no Sokal window"),
              pytest.mark.filterwarnings("ignore:importance weights"),
              pytest.mark.filterwarnings("ignore:.*differs from the reference")]

COMMANDS = ("estimate", "sample", "hmc", "mh", "analyze")


def _train(out, *extra):
    status = main(["flow", "train", "--L", "4", "--steps", "5", "--batch", "8", "--hidden", "8", "--threads", "1",
                   "--out", str(out), "--quiet", *extra])
    assert status == 0
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny trained 4 x 4 run, shared by the module: tests must not modify it."""
    return _train(tmp_path_factory.mktemp("flow") / "run")


def _edit_flow(run, out, edit):
    """A copy of ``run`` at ``out`` whose flow parameters went through ``edit(name, tensor)``."""
    shutil.copytree(run, out)
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    for name, tensor in state["flow"].items():
        edit(name, tensor)
    torch.save(state, out / "checkpoint.pt")
    return out


@pytest.fixture(scope="module")
def nan_run(run, tmp_path_factory):
    """The run with one NaN parameter in its flow."""
    first = next(iter(torch.load(run / "checkpoint.pt", weights_only=True)["flow"]))
    return _edit_flow(run, tmp_path_factory.mktemp("nan") / "run",
                      lambda name, t: t.view(-1)[0].fill_(float("nan")) if name == first else None)


@pytest.fixture(scope="module")
def overflowing_run(run, tmp_path_factory):
    """The run with finite parameters whose linear map overflows: exp(1000) = inf."""
    return _edit_flow(run, tmp_path_factory.mktemp("inf") / "run",
                      lambda name, t: t.fill_(1000.0) if name == "hierarchy.linear.raw" else None)


def _strict_json(text):
    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def _one_line_error(err, needle):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("deeprg: error:") and needle in lines[0], err


def _argv(command, run, tmp_path):
    """The cheapest valid invocation of ``command``."""
    return {"estimate": ["estimate", run, "--samples", "100", "--quiet"],
            "sample": ["sample", run, "--n", "4", "--out", tmp_path / "s.npz"],
            "hmc": ["hmc", run, "--chains", "2", "--steps", "10", "--warmup", "0", "--leapfrog", "2", "--quiet"],
            "mh": ["mh", run, "--chains", "2", "--steps", "10", "--warmup", "0", "--quiet"],
            "analyze": ["analyze", run, "--samples", "64", "--out", tmp_path / "an", "--quiet"]}[command]


# --- --device --------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_takes_device(cli, monkeypatch, command):
    monkeypatch.setenv("COLUMNS", "300")
    status, out, _ = cli("flow", command, "--help")
    assert status == 0 and "--device" in out and "[the run's device]" in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
@pytest.mark.parametrize("command", COMMANDS)
def test_cuda_device_without_cuda_exits_2_and_writes_nothing(cli, run, tmp_path, command):
    status, out, err = cli("flow", *_argv(command, run, tmp_path), "--device", "cuda")
    assert status == 2 and "--device" in err and "no CUDA device" in err and out == ""
    assert list(tmp_path.iterdir()) == []


def test_cpu_device_runs(cli, run, tmp_path):
    status, out, _ = cli("flow", "sample", run, "--n", "4", "--out", tmp_path / "s.npz", "--device", "cpu", "--json")
    assert status == 0 and _strict_json(out)["samples"] == 4


# --- outputs checked before any work -----------------------------------------------------------------


@pytest.fixture
def read_only(monkeypatch, tmp_path):
    """A directory that os.access calls not writable (chmod does not stop root)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    access = os.access

    def fake(path, mode, *args, **kwargs):
        if os.path.abspath(path) == str(ro) and mode & os.W_OK:
            return False
        return access(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", fake)
    return ro


UNWRITABLE = ([("sample", where) for where in ("read-only", "parent is a file", "missing parent", "is a directory")]
              + [(command, where) for command in ("hmc", "analyze")
                 for where in ("read-only", "read-only itself", "parent is a file", "is a file")])


@pytest.mark.parametrize("command, where", UNWRITABLE)
def test_unwritable_out_exits_2_before_any_work(cli, run, tmp_path, read_only, command, where):
    (tmp_path / "file").write_text("keep")
    (tmp_path / "dir.npz").mkdir()
    before = sorted(tmp_path.rglob("*"))
    name = "s.npz" if command == "sample" else "out"
    out = {"read-only": read_only / name, "read-only itself": read_only, "parent is a file": tmp_path / "file" / name,
           "missing parent": tmp_path / "missing" / name, "is a directory": tmp_path / "dir.npz",
           "is a file": tmp_path / "file"}[where]
    # hmc with its defaults (2200 steps) and analyze would take long: the check must come first
    status, stdout, err = cli("flow", command, run, "--out", out)
    assert status == 2 and stdout == ""
    _one_line_error(err, "--out")
    assert sorted(tmp_path.rglob("*")) == before and (tmp_path / "file").read_text() == "keep"


@pytest.mark.parametrize("command, name", [("hmc", "hmc.json"), ("analyze", "latent_energy.png")])
def test_output_file_taken_by_a_directory_exits_2(cli, run, tmp_path, command, name):
    (tmp_path / "out" / name).mkdir(parents=True)
    status, _, err = cli("flow", command, run, "--out", tmp_path / "out")
    assert status == 2
    _one_line_error(err, name)


def test_hmc_and_analyze_create_missing_output_directories(cli, run, tmp_path):
    status, stdout, _ = cli("flow", "hmc", run, "--chains", "2", "--steps", "10", "--warmup", "0", "--leapfrog", "2",
                            "--out", tmp_path / "a" / "b", "--quiet")
    assert status == 0 and (tmp_path / "a" / "b" / "hmc.json").exists()
    assert all(str(tmp_path / "a" / "b" / name) in stdout
               for name in ("hmc.json", "hmc_structure_factor.png", "hmc_energy_per_site.png"))


def test_sample_out_must_be_npz(cli, run, tmp_path):
    status, _, err = cli("flow", "sample", run, "--out", tmp_path / "s.png")
    assert status == 2
    _one_line_error(err, ".npz")
    assert list(tmp_path.iterdir()) == []


def test_sample_picture_never_replaces_a_file_of_the_run(cli, run, tmp_path):
    before = (run / "training_curve.png").read_bytes()
    status, _, err = cli("flow", "sample", run, "--out", run / "training_curve.npz")
    assert status == 2
    _one_line_error(err, "training_curve.png")
    assert (run / "training_curve.png").read_bytes() == before and not (run / "training_curve.npz").exists()
    status, _, err = cli("flow", "sample", run, "--out", run / "checkpoint.pt")
    assert status == 2 and ".npz" in err


def test_sample_writes_npz_and_png_beside_it_and_json(cli, run, tmp_path):
    status, out, _ = cli("flow", "sample", run, "--n", "6", "--out", tmp_path / "s.npz", "--json")
    assert status == 0
    s = _strict_json(out)
    assert s == {"samples": 6, "seed": 0, "device": "cpu", "shape": [6, 4, 4], "out": str(tmp_path / "s.npz"),
                 "picture": str(tmp_path / "s.png"), "processes": 1}
    assert np.load(tmp_path / "s.npz", allow_pickle=False)["x"].shape == (6, 4, 4)
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"


# --- --steps ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["hmc", "mh"])
@pytest.mark.parametrize("steps", ["1", "9", "-3"])
def test_too_few_steps_exit_2(cli, run, command, steps):
    status, out, err = cli("flow", command, run, "--steps", steps)
    assert status == 2 and out == ""
    _one_line_error(err, "--steps: need at least 10")


# --- progress bars -----------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, bars", [
    (["estimate", "--samples", "100"], ["importance sampling", "variational bound"]),
    (["estimate", "--samples", "30", "--anneal", "2", "--leapfrog", "1"], ["annealing", "variational bound"]),
    (["mh", "--chains", "2", "--steps", "10", "--warmup", "0"], ["independence Metropolis"]),
    (["analyze", "--samples", "64"], ["response maps", "mutual information"]),
])
def test_progress_bars_on_stderr_unless_quiet(cli, run, tmp_path, argv, bars):
    extra = ["--out", tmp_path / "an"] if argv[0] == "analyze" else []
    status, _, err = cli("flow", argv[0], run, *argv[1:], *extra, "--json")
    assert status == 0 and all(bar in err for bar in bars), err
    status, _, err = cli("flow", argv[0], run, *argv[1:], *extra, "--json", "--quiet")
    assert status == 0 and not any(bar in err for bar in bars), err


# --- flow mh: reference ------------------------------------------------------------------------------


def test_mh_prints_the_exact_reference(cli, run):
    status, out, _ = cli("flow", "mh", run, "--chains", "4", "--steps", "10", "--warmup", "0", "--quiet")
    assert status == 0
    assert "reference structure_factor" in out and "reference energy_per_site" in out and "(exact)" in out
    status, out, _ = cli("flow", "mh", run, "--chains", "4", "--steps", "10", "--warmup", "0", "--quiet", "--json")
    s = _strict_json(out)
    # 4x4 at K_c: enumeration
    assert s["reference"]["structure_factor"]["error"] == 0
    assert 0.7 < s["reference"]["structure_factor"]["mean"] < 0.8


def test_mh_warns_when_far_from_the_reference(cli, run, monkeypatch):
    far = {"structure_factor": Estimate(5.0, 0.1, 0.0, 0.5, 0), "energy_per_site": Estimate(-1.5, 0.0, 0.0, 0.5, 0)}
    monkeypatch.setattr("deeprg.cli.flow_tools.ising_reference", lambda *args, **kwargs: far)
    with pytest.warns(UserWarning) as record:
        status, out, _ = cli("flow", "mh", run, "--chains", "4", "--steps", "10", "--warmup", "0", "--quiet")
    assert status == 0 and "reference structure_factor" in out
    messages = [str(w.message) for w in record if "differs from the reference" in str(w.message)]
    assert len(messages) == 2
    assert re.match(r"structure_factor .* reference 5\.00\(10\) \(Wolff Monte Carlo\) by \d+\.\d combined", messages[0])
    assert re.match(r"energy_per_site .* reference -1\.5 \(exact\) by \d+\.\d combined", messages[1])


# --- flows that give non-finite numbers --------------------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS)
def test_nan_flow_is_refused_with_exit_1(cli, nan_run, tmp_path, command):
    status, out, err = cli("flow", *_argv(command, nan_run, tmp_path))
    assert status == 1 and out == ""
    _one_line_error(err, "has non-finite parameters")
    assert "retrain" in err and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command, argv, what", [
    ("estimate", [], "importance weights"),
    ("estimate", ["--anneal", "2", "--leapfrog", "1"], "importance weights"),
    ("sample", [], "fields"),
    ("mh", [], "importance weights"),
    ("hmc", [], "fields"),
    ("hmc", ["--start", "noise"], "log-densities in the latent space"),
    ("analyze", [], "fields"),
])
def test_flow_with_non_finite_output_is_refused_with_exit_1(cli, overflowing_run, tmp_path, command, argv, what):
    status, out, err = cli("flow", *_argv(command, overflowing_run, tmp_path), *argv)
    assert status == 1 and out == ""
    _one_line_error(err, f"produces non-finite {what}")
    assert list(tmp_path.iterdir()) == []


# --- flow analyze on a chain -------------------------------------------------------------------------


def test_analyze_on_a_chain_writes_what_it_announces(cli, tmp_path):
    chain = _train(tmp_path / "chain", "--d", "1", "--L", "8")
    status, out, _ = cli("flow", "analyze", chain, "--samples", "64", "--quiet")
    assert status == 0
    announced = [word.strip("();,") for word in out.split() if word.strip("();,").endswith((".png", ".json"))]
    assert announced and all(os.path.exists(path) for path in announced)
    assert {os.path.basename(p) for p in announced} == {"response_maps.png", "mutual_information.png",
                                                        "latent_energy.png"}


@pytest.mark.parametrize("method, extra", [("is", []), ("ais", ["--anneal", "3"]), ("smc", ["--replicas", "4"]),
                                           ("bridge", []), ("bridge", ["--pi-source", "hmc"])])
def test_estimate_methods_report_value_error_diagnostics_and_a_verdict(cli, run, method, extra):
    status, out, err = cli("flow", "estimate", run, "--method", method, "--samples", "256", "--quiet",
                           "--json", *extra)
    assert status == 0, err
    summary = json.loads(out)
    assert summary["method"] == method and isinstance(summary["trusted"], bool) and summary["verdict"]
    assert summary["ln_z"]["error"] > 0 and summary["cpu_seconds"] > 0
    # the module's flow is barely trained: a number far from the exact one must not be trusted
    assert abs(summary["deviation_sigma"]) < 5 or not summary["trusted"], summary["verdict"]
    if method == "bridge":
        assert {"forward_ess_fraction", "reverse_ess_fraction", "forward_pareto_k", "pi_source"} <= set(summary)
    if method == "smc":
        assert len(summary["ln_z_replicas"]) == 4 and summary["pilot_temperatures"] >= 1
        assert all(0 < f <= 1 for f in summary["final_ess_fraction"]) and max(summary["final_ess_fraction"]) > 0.05


@pytest.mark.parametrize("argv, needle", [
    (["--method", "smc", "--anneal", "5"], "--anneal"),
    (["--method", "is", "--pi-source", "hmc"], "--pi-source"),
    (["--method", "bridge", "--samples", "50"], "--samples"),
])
def test_estimate_options_that_do_not_fit_the_method_exit_2(cli, run, argv, needle):
    status, out, err = cli("flow", "estimate", run, *argv, "--quiet")
    assert status == 2 and err.startswith("deeprg: error:") and needle in err and not out


def test_a_verdict_names_the_diagnostic_that_failed():
    from deeprg.flows.trust import verdict

    assert verdict("is", {"ess": 1000, "pareto_k": 0.2, "ln_z_error": 0.1}) == (True, "no diagnostic failed")
    ok, line = verdict("is", {"ess": 50, "pareto_k": 0.9, "ln_z_error": 0.1})
    assert not ok and "Pareto k = 0.90" in line and "only 50 effective samples" in line
    # plain importance sampling needs 1000 effective samples, annealed importance sampling 200
    ok, line = verdict("is", {"ess": 500, "pareto_k": 0.3, "ln_z_error": 0.1})
    assert not ok and "only 500 effective samples (< 1000" in line
    assert verdict("ais", {"ess": 500, "pareto_k": 0.3, "ln_z_error": 0.1})[0]
    ok, line = verdict("bridge", {"forward_ess": 20, "reverse_ess": 5000, "ln_z_error": 0.1})
    assert ok and "only 20 effective samples in the forward direction" in line
    ok, line = verdict("bridge", {"forward_ess": 20, "reverse_ess": 7, "ln_z_error": 0.1})
    assert not ok and "barely overlap" in line and "7 effective samples in the reverse direction" in line
    ok, line = verdict("smc", {"replicas": 2, "acceptance": 0.1, "ln_z_error": 0.1})
    assert not ok and "replicas" in line and "barely mix" in line
    assert not verdict("ais", {"ess": 1000, "pareto_k": 0.1, "ln_z_error": float("nan")})[0]
