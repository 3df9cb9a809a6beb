"""``deeprg flow estimate|sample|hmc|mh|analyze`` on a run directory of ``deeprg flow train``."""

import json

import numpy as np
import pytest
import torch

torch.set_num_threads(1)

# The smoke runs here are far too short for reliable autocorrelation times or for flow mh to reach its
# reference; those warnings are expected.
pytestmark = [pytest.mark.filterwarnings("ignore:chain length"), pytest.mark.filterwarnings("ignore:no Sokal window"),
              pytest.mark.filterwarnings("ignore:importance weights"),
              pytest.mark.filterwarnings("ignore:.*differs from the reference")]


@pytest.fixture
def run_dir(cli, tmp_path):
    run = tmp_path / "run"
    status, _, _ = cli("flow", "train", "--L", "4", "--steps", "20", "--batch", "32", "--hidden", "8",
                       "--threads", "1", "--out", run, "--quiet")
    assert status == 0
    return run


def test_estimate_reports_ln_z_with_error_and_ess(cli, run_dir):
    status, out, _ = cli("flow", "estimate", run_dir, "--samples", "4000", "--json")
    assert status == 0
    s = json.loads(out)
    assert set(s["ln_z"]) == {"mean", "error"} and s["ln_z"]["error"] > 0
    assert 0 < s["ess_fraction"] <= 1 and isinstance(s["pareto_k"], float)
    assert s["exact_ln_z"] == pytest.approx(37.377, abs=1e-3)
    # the bound: -F_q <= ln Z, and the importance estimate is unbiased (loose: few samples)
    assert -s["variational_free_energy"]["mean"] <= s["exact_ln_z"] + 4 * s["variational_free_energy"]["error"]
    assert s["method"] == "is" and s["device"] == "cpu" and 0 < s["structure_factor"]["mean"] < 1
    assert -2 < s["energy_per_site"]["mean"] < 0 and s["energy_per_site"]["error"] > 0


def test_estimate_with_annealing_reports_acceptance_and_reweighted_observables(cli, run_dir):
    status, out, _ = cli("flow", "estimate", run_dir, "--samples", "64", "--anneal", "4", "--leapfrog", "2",
                         "--json", "--quiet")
    assert status == 0
    s = json.loads(out)
    assert s["method"] == "ais" and s["temperatures"] == 4 and s["samples"] == 64
    assert 0 < s["acceptance"] <= 1 and s["ln_z"]["error"] > 0
    assert set(s["structure_factor"]) == {"mean", "error"}


def test_sample_writes_fields_spins_and_picture(cli, run_dir, tmp_path):
    out = tmp_path / "samples.npz"
    status, _, _ = cli("flow", "sample", run_dir, "--n", "8", "--out", out)
    assert status == 0
    data = np.load(out, allow_pickle=False)
    assert data["x"].shape == (8, 4, 4) and data["spins"].dtype == np.int8
    assert set(np.unique(data["spins"])) <= {-1, 1}
    assert out.with_suffix(".png").exists()


@pytest.mark.parametrize("space", ["latent", "physical"])
def test_hmc_reports_observables_with_error_bars(cli, run_dir, space):
    status, out, _ = cli("flow", "hmc", run_dir, "--space", space, "--chains", "8", "--steps", "30",
                         "--warmup", "10", "--leapfrog", "4", "--json", "--quiet")
    assert status == 0
    s = json.loads(out)
    for key in ("structure_factor", "energy_per_site"):
        assert set(s[key]) == {"mean", "error"}
    assert 0 <= s["acceptance"] <= 1 and set(s["tau_int"]) == {"structure_factor", "energy_per_site"}
    assert 0 < s["structure_factor"]["mean"] <= 1 and -2 <= s["energy_per_site"]["mean"] <= 2


def test_independence_mh_reports_observables_acceptance_and_tau(cli, run_dir):
    status, out, _ = cli("flow", "mh", run_dir, "--chains", "8", "--steps", "40", "--warmup", "5", "--json")
    assert status == 0
    s = json.loads(out)
    for key in ("structure_factor", "energy_per_site"):
        assert set(s[key]) == {"mean", "error"}
    assert 0 < s["acceptance"] <= 1 and set(s["tau_int"]) == {"structure_factor", "energy_per_site"}
    assert (s["chains"], s["steps"], s["warmup"], s["device"]) == (8, 40, 5, "cpu")


def test_hmc_in_both_spaces_writes_summary_and_fig3b_plots(cli, run_dir, tmp_path):
    out = tmp_path / "hmc"
    status, stdout, _ = cli("flow", "hmc", run_dir, "--space", "both", "--start", "noise", "--chains", "4",
                            "--steps", "12", "--warmup", "5", "--leapfrog", "3", "--out", out, "--json", "--quiet")
    assert status == 0
    s = json.loads(stdout)
    assert json.loads((out / "hmc.json").read_text()) == s
    for space in ("latent", "physical"):
        assert set(s[space]["structure_factor"]) == {"mean", "error"} and s[space]["seconds"] > 0
    # 4x4: the reference is exact (enumeration), so its error is 0
    assert s["reference"]["structure_factor"]["error"] == 0
    assert 0.7 < s["reference"]["structure_factor"]["mean"] < 0.8
    assert (out / "hmc_structure_factor.png").exists() and (out / "hmc_energy_per_site.png").exists()


def test_hmc_step_size_giving_nans_is_reported(cli, run_dir):
    status, _, err = cli("flow", "hmc", run_dir, "--space", "physical", "--chains", "4", "--steps", "10",
                         "--warmup", "0", "--step-size", "1e200", "--quiet")
    assert status == 2 and "--step-size" in err and "non-finite" in err


def test_missing_or_incomplete_run_directory_exits_2(cli, run_dir, tmp_path):
    status, _, err = cli("flow", "estimate", tmp_path / "nowhere")
    assert status == 2 and "does not exist" in err
    (run_dir / "config.json").unlink()
    status, _, err = cli("flow", "hmc", run_dir, "--quiet")
    assert status == 2 and "no config.json" in err


def test_run_directory_from_an_incompatible_version_exits_2(cli, run_dir):
    config = json.loads((run_dir / "config.json").read_text())
    config["format"] = "deeprg.flow-run/0"
    (run_dir / "config.json").write_text(json.dumps(config))
    status, _, err = cli("flow", "estimate", run_dir)
    assert status == 2 and "written by an older deeprg" in err and "flow-run/0" in err


@pytest.mark.parametrize("argv, needle", [(["hmc", "--steps", "0"], "--steps"), (["hmc", "--chains", "0"], "--chains"),
                                          (["estimate", "--samples", "24"], "--samples"),
                                          (["estimate", "--anneal", "0"], "--anneal"),
                                          (["mh", "--steps", "0"], "--steps"), (["mh", "--warmup", "-1"], "--warmup")])
def test_bad_numbers_exit_2(cli, run_dir, argv, needle):
    status, _, err = cli("flow", argv[0], run_dir, *argv[1:])
    assert status == 2 and needle in err


def test_analyze_writes_maps_and_mutual_information(cli, run_dir, tmp_path):
    out = tmp_path / "analysis"
    status, stdout, _ = cli("flow", "analyze", run_dir, "--samples", "256", "--out", out, "--json")
    assert status == 0
    s = json.loads(stdout)
    assert len(s["top_latent_sites"]) == 4 and np.array(s["response_maps"]).shape == (4, 4, 4)
    mi = np.array(s["mi_physical"])
    assert mi.shape == (16, 16) and np.allclose(mi, mi.T)
    energy = s["top_latent_energy"]
    assert np.array(energy["plane"]).shape == (len(energy["values"]),) * 2 and min(energy["profile"]) == 0
    for name in ("analysis.json", "response_maps.png", "mutual_information.png", "latent_energy.png"):
        assert (out / name).exists()


def test_a_run_trained_on_a_gpu_is_used_on_the_cpu_with_device_cpu(cli, run_dir, as_written_on):
    """The commands on a run draw from their own --seed, so a GPU run's training generators do
    not matter to them: no warning; without --device they name the missing GPU."""
    import warnings

    config = json.loads((run_dir / "config.json").read_text())
    (run_dir / "config.json").write_text(json.dumps({**config, "device": "cuda"}))
    as_written_on(run_dir / "checkpoint.pt", "cuda")
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="checkpoint .* was written on")
        status, out, err = cli("flow", "estimate", run_dir, "--samples", "200", "--device", "cpu", "--json",
                               "--quiet")
    assert status == 0, err
    assert json.loads(out)["device"] == "cpu"
    if not torch.cuda.is_available():
        status, _, err = cli("flow", "estimate", run_dir, "--samples", "200", "--quiet")
        assert status == 2 and "device 'cuda'" in err and "use 'cpu'" in err
