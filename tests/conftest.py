import numpy as np
import pytest


@pytest.fixture
def rng():
    """A fresh, seeded numpy Generator per test."""
    return np.random.default_rng(20261122)


@pytest.fixture
def cli(capsys):
    """Run ``deeprg *argv`` in-process; return (exit status, stdout, stderr)."""
    from deeprg.cli import main

    def run(*argv):
        try:
            status = main([str(a) for a in argv])
        except SystemExit as exc:
            status = exc.code
        out = capsys.readouterr()
        return status, out.out, out.err

    return run


@pytest.fixture
def as_written_on():
    """``rewrite(path, device)``: the checkpoint at ``path`` rewritten as if its run had computed
    on ``device`` (its config's ``device`` key), e.g. what a GPU run leaves, without a GPU."""
    import json

    import torch

    def rewrite(path, device):
        state = torch.load(path, map_location="cpu", weights_only=True)
        state["config"] = json.dumps({**json.loads(state["config"]), "device": device})
        torch.save(state, path)

    return rewrite
