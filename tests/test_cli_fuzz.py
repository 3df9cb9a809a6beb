"""Random argument lists and random TOML configs for every ``deeprg`` subcommand: each run ends
with exit status 0 or 2 (1 only for a training run stopped by a non-finite loss, with its
message) and never with a traceback.

Every subcommand starts from a small workload (``BASE``); hypothesis then appends options drawn
from the subcommand's own parser (so new options are fuzzed without editing this file) with
values from pools of valid, invalid and hostile strings. argparse keeps the last value of an
option, so a drawn option overrides the base one.
"""

import argparse
import itertools
import json

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deeprg.cli import build_parser, main
from deeprg.data import SpinDataset, save_dataset
from deeprg.lattice import Lattice
from deeprg.mc import make_sampler
from deeprg.models.ising import K_C

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore")

VALUES = ["-1", "0", "1", "2", "3", "5", "0.5", "1e-300", "1e20", "nan", "inf", "-inf", "abc", "", "critical",
          "cpu", "cuda", "meta", "float64", "mera", "auto", "--", "-x"]
OUTPUT_OPTIONS = {"--out", "--test-out", "--plot"}
INPUT_OPTIONS = {"--data", "--transform", "--config"}


@pytest.fixture(autouse=True)
def _in_a_scratch_directory(tmp_path, monkeypatch):
    """Hostile values of output options (``--out -1``) are relative paths: keep what they write
    out of the directory pytest runs in."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Input files and trained runs shared by all examples."""
    root = tmp_path_factory.mktemp("fuzz")
    run = make_sampler("wolff", Lattice.square(8), K_C, seed=1).run(80, thin=2, burn_in=100)
    save_dataset(root / "ising8.npz", SpinDataset.new(run.spins_flat(), K=K_C, sampler="wolff",
                                                      updates_between_samples=2, seed=1))
    chain = make_sampler("wolff", Lattice((16,)), 1.0, seed=2).run(100, thin=2)
    save_dataset(root / "chain16.npz", SpinDataset.new(chain.spins_flat(), K=1.0, sampler="wolff",
                                                       updates_between_samples=2, seed=2))
    (root / "bad.toml").write_text("this is = = not toml\n")
    (root / "dir").mkdir()
    (root / "afile").write_text("x")
    for argv in (["flow", "train", "--L", "4", "--steps", "3", "--batch", "8", "--out", root / "flowrun"],
                 ["rsrg", "train", "--data", root / "ising8.npz", "--filter", "4", "--epochs", "1", "--out",
                  root / "rsrgrun"],
                 ["cora", "train", "--data", root / "chain16.npz", "--epochs", "2", "--out", root / "corarun"]):
        assert main([str(a) for a in [*argv, "--quiet", "--threads", "1"]]) == 0
    return root


def base_argv(root, fresh):
    """Subcommand -> argv with a small workload; ``fresh`` names a new output path."""
    return {
        ("exact", "ising"): [],
        ("sample", "ising"): ["--L", "4", "--n", "64", "--out", fresh("s.npz"), "--quiet"],
        ("data", "info"): [root / "ising8.npz", "--quiet"],
        ("flow", "train"): ["--L", "4", "--steps", "2", "--batch", "8", "--threads", "1", "--out", fresh("run"),
                            "--quiet"],
        ("flow", "estimate"): [root / "flowrun", "--samples", "100", "--threads", "1", "--quiet"],
        ("flow", "sample"): [root / "flowrun", "--n", "4", "--out", fresh("f.npz")],
        ("flow", "hmc"): [root / "flowrun", "--chains", "2", "--steps", "20", "--warmup", "5", "--threads", "1",
                          "--quiet"],
        ("flow", "mh"): [root / "flowrun", "--chains", "2", "--steps", "20", "--warmup", "5", "--threads", "1"],
        ("flow", "analyze"): [root / "flowrun", "--samples", "64", "--out", fresh("analysis")],
        ("rsrg", "train"): ["--data", root / "ising8.npz", "--filter", "4", "--epochs", "1", "--out", fresh("run"),
                            "--quiet"],
        ("rsrg", "exponent-vs-epoch"): [root / "rsrgrun", "--data", root / "ising8.npz", "--blocks", "4",
                                        "--quiet"],
        ("mcrg",): ["--transform", "majority", "--data", root / "ising8.npz", "--levels", "1", "--blocks", "4",
                    "--quiet"],
        ("cora", "train"): ["--data", root / "chain16.npz", "--epochs", "1", "--out", fresh("run"), "--quiet"],
        ("cora", "sample"): [root / "corarun", "--n", "4", "--out", fresh("c.npz")],
        ("cora", "eval"): [root / "corarun", "--data", root / "chain16.npz", "--samples", "20"],
        ("cora", "digits"): ["--out", fresh("d.npz")],
    }


def subparser(path: tuple[str, ...]) -> argparse.ArgumentParser:
    parser = build_parser(list(path))
    for name in path:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


def options(path):
    """``(option string, number of values)`` of the subcommand's optional arguments."""
    out = []
    for action in subparser(path)._actions:
        if not action.option_strings or isinstance(action, argparse._HelpAction):
            continue
        flag = action.option_strings[0]
        n = 0 if action.nargs == 0 else (2 if action.nargs == "+" else 1)
        out.append((flag, n))
        if isinstance(action, argparse.BooleanOptionalAction):
            out.append((action.option_strings[-1], 0))
    return out


PATHS = [("exact", "ising"), ("sample", "ising"), ("data", "info"), ("flow", "train"), ("flow", "estimate"),
         ("flow", "sample"), ("flow", "hmc"), ("flow", "mh"), ("flow", "analyze"), ("rsrg", "train"),
         ("rsrg", "exponent-vs-epoch"), ("mcrg",), ("cora", "train"), ("cora", "sample"), ("cora", "eval"),
         ("cora", "digits")]
_counter = itertools.count()


def check_outcome(status, err, argv):
    assert "Traceback" not in err, (argv, err)
    ok = status in (0, 2) or (status == 1 and "training stopped" in err)
    assert ok, (argv, status, err)
    if status == 2:
        assert err.strip().startswith("deeprg: error:") and err.strip().count("\n") == 0, (argv, err)


@pytest.mark.parametrize("path", PATHS, ids=["-".join(p) for p in PATHS])
def test_random_arguments_exit_0_or_2_without_traceback(cli, world, tmp_path, path):
    if path == ("cora", "digits"):
        pytest.importorskip("sklearn")
    opts = options(path)

    def fresh(name):
        return tmp_path / f"{next(_counter)}-{name}"

    def values_for(flag):
        if flag in OUTPUT_OPTIONS:
            return st.sampled_from([str(fresh("out.npz")), str(world / "dir"), str(world / "afile" / "x.npz"),
                                    "/nonexistent/x.npz", str(world / "ising8.npz")[:-4] + ".png"])
        if flag in INPUT_OPTIONS:
            return st.sampled_from([str(world / "ising8.npz"), str(world / "chain16.npz"), str(world / "bad.toml"),
                                    str(world / "dir"), str(world / "flowrun"), "majority", "/nonexistent"])
        return st.sampled_from(VALUES)

    @st.composite
    def extra(draw):
        chosen = draw(st.lists(st.sampled_from(opts), max_size=4))
        argv = []
        for flag, n in chosen:
            argv += [flag, *(draw(values_for(flag)) for _ in range(n))]
        return argv

    @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(extra())
    def run(argv_extra):
        argv = [*path, *(str(a) for a in base_argv(world, fresh)[path]), *argv_extra]
        status, _, err = cli(*argv)
        check_outcome(status, err, argv)

    run()


CONFIG_KEYS = {
    "flow": ["L", "d", "beta", "min_eigenvalue", "arch", "depth", "n_couplings", "hidden", "shared", "s_max",
             "linear", "elementwise", "symmetrize", "batch", "lr", "lr_final", "grad_clip", "seed", "dtype",
             "device", "threads", "checkpoint_seconds", "nonsense"],
    "rsrg": ["filter_size", "cd_k", "persistent", "batch", "lr", "lr_final", "decay_epochs", "schedule",
             "init_scale", "seed", "dtype", "threads", "checkpoint_seconds", "nonsense"],
    "cora": ["chi", "window", "tree", "shared", "method", "passes", "batch", "lr", "lr_final", "init", "init_eps",
             "init_noise", "gibbs_sweeps", "seed", "dtype", "device", "threads", "nonsense"],
}
TOML_VALUES = ["-1", "0", "1", "2", "3", "4", "0.5", "1e-300", "1e300", "nan", "inf", "true", "false", '"no"',
               '"critical"', '"mera"', '"float64"', '"cuda"', "[]", "[2, 2]", "[true]", "{ a = 1 }", '"2"']


@pytest.mark.parametrize("kind", list(CONFIG_KEYS))
def test_random_toml_configs_exit_0_or_2_without_traceback(cli, world, tmp_path, kind):
    path = ("flow", "train") if kind == "flow" else (kind, "train")

    @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(st.dictionaries(st.sampled_from(CONFIG_KEYS[kind]), st.sampled_from(TOML_VALUES), max_size=4))
    def run(entries):
        n = next(_counter)
        toml = tmp_path / f"{n}.toml"
        toml.write_text("".join(f"{k} = {v}\n" for k, v in entries.items()))
        argv = [*path, *(str(a) for a in base_argv(world, lambda name: tmp_path / f"{n}-{name}")[path]),
                "--config", str(toml)]
        status, _, err = cli(*argv)
        check_outcome(status, err, (argv, entries))

    run()


def test_json_outputs_are_strict(cli, world):
    status, out, _ = cli("exact", "ising", "--L", "4", "--beta", "1e-300", "--json")
    assert status == 0
    json.loads(out, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    assert np.isfinite(json.loads(out)["ln_z"])


HOSTILE = ["-1", "0", "nan", "inf", "-inf", "abc", "", "1e20", "1e-300", "meta", "-x"]


@pytest.mark.parametrize("path", PATHS, ids=["-".join(p) for p in PATHS])
def test_every_option_with_every_hostile_value_exits_0_or_2(cli, world, tmp_path, path):
    """The exhaustive complement of the random test: each option alone, each hostile value."""
    if path == ("cora", "digits"):
        pytest.importorskip("sklearn")
    for flag, n in options(path):
        for value in HOSTILE if n else [None]:
            fresh = lambda name: tmp_path / f"{next(_counter)}-{name}"  # noqa: E731
            argv = [*path, *(str(a) for a in base_argv(world, fresh)[path]), flag, *([value] * n)]
            status, _, err = cli(*argv)
            check_outcome(status, err, argv)
