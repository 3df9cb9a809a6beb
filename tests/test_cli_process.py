"""The process-wide settings of the ``deeprg`` command: the C heap keeps freed memory, and the
commands that compute with torch flush subnormal floats to zero."""

import subprocess
import sys
import textwrap

from deeprg import memory
from deeprg.cli import main


def test_the_command_line_keeps_freed_memory(monkeypatch):
    calls = []
    monkeypatch.setattr(memory, "keep_freed_memory", lambda: calls.append(True) or True)
    assert main(["exact", "ising", "--L", "4", "--beta", "0.4"]) == 0
    assert calls == [True]


#: In a fresh process: run a deeprg command, then print whether torch is loaded and what a
#: subnormal float32 (1e-39, below the smallest normal 1.18e-38) times 2 becomes.
AFTER_A_COMMAND = textwrap.dedent("""
    import sys
    from deeprg.cli import main
    try:
        main(sys.argv[1:])
    except SystemExit:
        pass
    if "torch" not in sys.modules:
        print("no torch")
    else:
        import torch
        print(float(torch.tensor([1e-39]) * 2))
""")


def after(tmp_path, *argv) -> str:
    out = subprocess.run([sys.executable, "-c", AFTER_A_COMMAND, *map(str, argv)], capture_output=True, text=True,
                         check=True, cwd=tmp_path)
    return out.stdout.strip().splitlines()[-1]


def test_commands_computing_with_torch_flush_subnormal_floats(tmp_path):
    assert float(after(tmp_path, "flow", "train", "--L", "4", "--steps", "1", "--out", "run", "--quiet")) == 0.0
    assert float(after(tmp_path, "flow", "train", "--help-not")) > 0  # torch's default: a refused command sets nothing


def test_commands_without_torch_do_not_load_it(tmp_path):
    assert after(tmp_path, "exact", "ising", "--L", "4", "--beta", "0.4") == "no torch"
