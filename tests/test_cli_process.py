"""The process-wide settings of the ``deeprg`` command: the C heap keeps freed memory, and the
commands that compute with torch flush subnormal floats to zero while they run."""

import subprocess
import sys
import textwrap

import torch

from deeprg import cli, memory
from deeprg.cli import main


def test_the_command_line_keeps_freed_memory(monkeypatch):
    calls = []
    monkeypatch.setattr(memory, "keep_freed_memory", lambda: calls.append(True) or True)
    assert main(["exact", "ising", "--L", "4", "--beta", "0.4"]) == 0
    assert calls == [True]


def twice_a_subnormal() -> float:
    """1e-39 (below float32's smallest normal, 1.18e-38) times 2 in float32: 0 when flushed."""
    return float(torch.tensor([1e-39]) * 2)


def test_commands_computing_with_torch_flush_subnormal_floats_while_they_run(monkeypatch, tmp_path):
    seen = []
    parse_args = cli.Parser.parse_args

    def probed(self, *args, **kwargs):
        namespace = parse_args(self, *args, **kwargs)
        run = namespace.run
        namespace.run = lambda ns: seen.append(twice_a_subnormal()) or run(ns)
        return namespace

    monkeypatch.setattr(cli.Parser, "parse_args", probed)
    assert twice_a_subnormal() > 0  # torch's default
    assert main(["flow", "train", "--L", "4", "--steps", "1", "--out", tmp_path / "run", "--quiet"]) == 0
    assert seen == [0.0]
    assert twice_a_subnormal() > 0  # restored for the caller (hypothesis, for one, needs subnormals)


def test_commands_without_torch_do_not_load_it():
    script = textwrap.dedent("""
        import sys
        from deeprg.cli import main
        main(["exact", "ising", "--L", "4", "--beta", "0.4"])
        print("torch" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.split()[-1] == "False"
