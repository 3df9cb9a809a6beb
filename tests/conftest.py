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
