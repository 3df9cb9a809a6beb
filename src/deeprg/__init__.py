"""deeprg: machine-learned renormalization group on lattice models."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("deeprg")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

from deeprg.lattice import Lattice

__all__ = ["Lattice", "__version__"]
