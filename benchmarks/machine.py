"""Description of the machine a benchmark ran on, recorded with every result."""

from __future__ import annotations

import os
import platform
from datetime import datetime
from pathlib import Path

import numba
import numpy as np
import torch

import deeprg


def describe() -> dict:
    """CPU model, core count, library versions and the date."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "torch": torch.__version__,
        "deeprg": deeprg.__version__,
        "platform": platform.platform(),
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
    }
