"""Starting a flow from one trained on a smaller lattice (Li & Wang, footnote 53)."""

import pytest
import torch

from deeprg.flows.hierarchy import Hierarchy
from deeprg.flows.train import FlowTrainConfig, Trainer, variational_free_energy
from deeprg.lattice import Lattice

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def trained4():
    trainer = Trainer(FlowTrainConfig(L=4, steps=150, batch=128, threads=1))
    trainer.train()
    return trainer


def test_same_size_initialization_reproduces_the_flow_exactly(trained4):
    copy = Trainer(FlowTrainConfig(L=4, steps=1, threads=1, seed=9))
    copy.flow.hierarchy.initialize_from(trained4.flow.hierarchy)
    x = trained4.flow.sample(64, torch.Generator().manual_seed(0))
    assert torch.allclose(copy.flow.log_prob(x), trained4.flow.log_prob(x), atol=1e-5)


def test_a_doubled_lattice_starts_far_closer_to_its_target_than_a_random_flow(trained4):
    def relative_error(trainer):
        est = variational_free_energy(trainer.flow, trainer.target, 4096, generator=torch.Generator().manual_seed(1))
        return (est.mean + trainer.exact_ln_z) / abs(trainer.exact_ln_z)

    fresh = Trainer(FlowTrainConfig(L=8, steps=1, threads=1))
    started = Trainer(FlowTrainConfig(L=8, steps=1, threads=1))
    started.flow.hierarchy.initialize_from(trained4.flow.hierarchy)
    assert relative_error(started) < 0.6 * relative_error(fresh)


@pytest.mark.parametrize("kwargs, message", [
    (dict(L=16), "only from an L = 16 or 8 flow"),
    (dict(L=8, arch="tree"), "same arch"),
    (dict(L=8, linear=False), "same linear map"),
])
def test_flows_that_do_not_fit_are_refused(trained4, kwargs, message):
    other = Trainer(FlowTrainConfig(steps=1, threads=1, **kwargs))
    with pytest.raises(ValueError, match=message):
        other.flow.hierarchy.initialize_from(trained4.flow.hierarchy)


def test_unshared_block_weights_are_refused():
    small = Hierarchy(Lattice.square(4), shared=False, hidden=(4,))
    large = Hierarchy(Lattice.square(8), shared=False, hidden=(4,))
    with pytest.raises(ValueError, match="shared"):
        large.initialize_from(small)


def test_cli_init_from_a_run_and_a_bad_run(cli, tmp_path):
    small = tmp_path / "small"
    assert cli("flow", "train", "--L", "4", "--steps", "3", "--batch", "8", "--out", small, "--quiet")[0] == 0
    status, _, err = cli("flow", "train", "--L", "8", "--steps", "2", "--batch", "8", "--init-from", small,
                         "--out", tmp_path / "large", "--quiet", "--json")
    assert status == 0, err
    status, _, err = cli("flow", "train", "--L", "16", "--steps", "2", "--init-from", small, "--out",
                         tmp_path / "bad", "--quiet")
    assert status == 2 and "init_from" in err and not (tmp_path / "bad").exists()
    status, _, err = cli("flow", "train", "--L", "8", "--steps", "2", "--init-from", tmp_path / "nothing",
                         "--out", tmp_path / "bad", "--quiet")
    assert status == 2 and "does not exist" in err
