"""The ``deeprg`` command: outputs, exit statuses and bad-input handling."""

import json
import math

import numpy as np
import pytest

from deeprg.data import load_dataset
from deeprg.models.exact import ising_chain, kaufman
from deeprg.models.ising import K_C


def test_exact_ising_json_matches_kaufman(cli):
    status, out, _ = cli("exact", "ising", "--L", "16", "--M", "8", "--beta", "0.3", "--json")
    assert status == 0
    summary = json.loads(out)
    exact = kaufman(8, 16, 0.3)
    for key in ("ln_z", "free_energy_per_site", "energy_per_site", "specific_heat_per_site"):
        assert summary[key] == pytest.approx(getattr(exact, key), rel=1e-14)
    assert summary["lattice"] == [8, 16]


def test_exact_ising_critical_chain_and_text_output(cli):
    status, out, _ = cli("exact", "ising", "--d", "1", "--L", "10", "--beta", "critical", "--json")
    assert status == 0
    assert json.loads(out)["ln_z"] == pytest.approx(ising_chain(10, K_C).ln_z, rel=1e-14)
    status, out, _ = cli("exact", "ising")
    assert status == 0 and "energy_per_site" in out and "Kaufman" in out


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--L", "1"], "--L"),
        (["--beta", "-1"], "beta"),
        (["--beta", "nan"], "beta"),
        (["--beta", "inf"], "beta"),
        (["--beta", "0"], "beta"),
    ],
)
def test_exact_bad_input_exits_2(cli, argv, needle):
    status, out, err = cli("exact", "ising", *argv)
    assert status == 2
    assert needle in err and out == ""


def test_sample_writes_dataset_and_reports_error_bars(cli, tmp_path):
    path = tmp_path / "ising.npz"
    status, out, _ = cli(
        "sample", "ising", "--L", "8", "--beta", "0.3", "--n", "2000", "--seed", "3",
        "--out", str(path), "--json", "--quiet",
    )
    assert status == 0
    s = json.loads(out)
    for key in ("energy_per_site", "m2"):
        assert set(s[key]) >= {"mean", "error"} and s[key]["error"] > 0
    assert s["tau_int"] > 0 and s["samples_per_second"] > 0
    exact = kaufman(8, 8, 0.3).energy_per_site
    assert s["exact_energy_per_site"] == pytest.approx(exact)
    assert abs(s["energy_per_site"]["mean"] - exact) < 5 * s["energy_per_site"]["error"]
    ds = load_dataset(path, model="ising", lattice_shape=(8, 8))
    assert ds.n == 2000 and ds.spins.dtype == np.int8
    assert ds.metadata["seed"] == 3 and ds.metadata["sampler"] == "wolff"
    assert ds.metadata["K"] == 0.3


@pytest.mark.filterwarnings("ignore:chain length")
def test_sample_same_seed_same_configurations(cli, tmp_path):
    paths = [tmp_path / "a.npz", tmp_path / "b.npz"]
    for p in paths:
        argv = ["sample", "ising", "--L", "6", "--n", "100", "--seed", "11", "--sampler", "sw",
                "--thin", "2", "--out", str(p), "--quiet"]
        assert cli(*argv)[0] == 0
    a, b = (load_dataset(p).spins for p in paths)
    np.testing.assert_array_equal(a, b)


def test_sample_three_dimensions_has_no_exact_energy(cli, tmp_path):
    status, out, _ = cli(
        "sample", "ising", "--d", "3", "--L", "4", "--beta", "0.2", "--n", "200",
        "--sampler", "metropolis", "--out", str(tmp_path / "c.npz"), "--json", "--quiet",
    )
    assert status == 0
    assert json.loads(out)["exact_energy_per_site"] is None


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--L", "1"], "--L"),
        (["--beta", "-0.5"], "beta"),
        (["--beta", "nan"], "beta"),
        (["--sampler", "heatbath"], "--sampler"),
        (["--n", "0"], "--n"),
        (["--n", "101", "--chains", "2"], "--chains"),
        (["--thin", "0"], "--thin"),
    ],
)
def test_sample_bad_input_exits_2_and_writes_nothing(cli, tmp_path, argv, needle):
    path = tmp_path / "x.npz"
    status, _, err = cli("sample", "ising", "--L", "4", "--n", "100", *argv, "--out", str(path))
    assert status == 2
    last = err.strip().splitlines()[-1]  # argparse prints the usage, then one error line
    assert "error:" in last and needle in last
    assert not path.exists() and list(tmp_path.iterdir()) == []


def test_sample_unwritable_output_exits_2(cli, tmp_path):
    status, _, err = cli("sample", "ising", "--L", "4", "--n", "10",
                             "--out", str(tmp_path / "missing" / "x.npz"))
    assert status == 2 and "--out" in err and "does not exist" in err
    status, _, err = cli("sample", "ising", "--L", "4", "--n", "10", "--out", str(tmp_path))
    assert status == 2 and "is a directory" in err


def test_data_info_validates_files(cli, tmp_path):
    good = tmp_path / "good.npz"
    assert cli("sample", "ising", "--L", "4", "--n", "64", "--out", str(good), "--quiet")[0] == 0
    status, out, _ = cli("data", "info", str(good), "--json")
    assert status == 0
    info = json.loads(out)
    assert info["n"] == 64 and info["metadata"]["lattice_shape"] == [4, 4]
    assert math.isfinite(info["energy_per_site"]["mean"])
    assert info["sync_points"] == 1  # 1 KiB of spins: one block
    with np.load(good) as npz:  # the same dataset as another program writes it
        np.savez_compressed(tmp_path / "plain.npz", spins=npz["spins"], metadata=npz["metadata"])
    status, out, _ = cli("data", "info", str(tmp_path / "plain.npz"))
    assert status == 0 and "  sync points              none (readers decompress everything before" in out

    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_text("not a zip file")
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, images=np.zeros((3, 4, 4)))
    for bad in (corrupt, foreign, tmp_path / "absent.npz"):
        status, out, err = cli("data", "info", str(bad))
        assert status == 2 and out == ""
        assert err.startswith("deeprg: error:") and str(bad) in err and len(err.strip().splitlines()) == 1
