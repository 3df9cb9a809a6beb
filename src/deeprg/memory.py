"""Process memory: how glibc's ``malloc`` serves and returns the memory of large tensors.

PyTorch's CPU allocator and numpy take their memory from the C library's ``malloc``, which on
glibc behaves in two ways that cost deeprg's long loops dearly:

* **Large blocks are mapped afresh for every allocation.** A block above glibc's mmap threshold
  (at most 32 MB) is a private mapping of its own, returned to the kernel when freed; the next
  allocation of it faults every page in again, and the kernel zeroes each page. A flow training
  step at 128x128 (batch 64, activations of about 130 MB each) took 540,000 page faults and 1.5 s
  of kernel time out of 4.1 s. :func:`keep_freed_memory` serves every block from the heap and
  keeps freed pages for the next allocation: 11,000 faults and 0.16 s of kernel time, 3.1 s per
  step. Measured by ``benchmarks/bench_lattice_scaling.py`` and ``bench_device.py`` (kept against
  glibc's default): a flow step with batch 1024 takes 1.75 s instead of 3.1 s at 32x32 and 7.2 s
  instead of 18.7 s at 64x64; the peak resident size is 5-20% larger (freed blocks are reused
  rather than unmapped). The ``deeprg`` command line calls it at start-up; a program that uses
  deeprg as a library may call it itself.
* **Long loops of mid-sized tensors fragment the heap.** An HMC run on a 32x32 lattice (11
  gradient evaluations per step, tensors of a few hundred kilobytes) grew its resident size by
  about 0.5 MB per step until a 10,000-step run was killed at 22 GB. Lowering the mmap threshold
  stops the growth but made the same loop 2-3x slower; ``malloc_trim(0)`` every few dozen steps
  keeps it flat at no measurable cost. :func:`trim_heap` calls it where glibc provides it.

Both do nothing where the C library lacks the call (musl, macOS, Windows).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

__all__ = ["keep_freed_memory", "trim_heap"]

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


@functools.cache
def _libc():
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


def _function(name: str):
    libc = _libc()
    return getattr(libc, name, None) if libc is not None else None


def keep_freed_memory() -> bool:
    """Serve every allocation from glibc's heap and keep freed pages in the process for the next
    allocation (``mallopt(M_MMAP_MAX, 0)`` and the largest ``M_TRIM_THRESHOLD``, 2 GiB), instead
    of mapping each block above 32 MB afresh. Affects the whole process from now on (blocks
    already mapped stay so); the resident size then stays near its peak until the process ends,
    except what :func:`trim_heap` returns. Where the heap cannot grow, glibc still maps.
    Returns whether the C library took both settings (``False``: not glibc, nothing changed)."""
    mallopt = _function("mallopt")
    if mallopt is None or _function("gnu_get_libc_version") is None:  # musl's mallopt does nothing
        return False
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def trim_heap() -> bool:
    """Return the free pages of the C heap to the operating system (glibc ``malloc_trim(0)``);
    ``False`` where the C library has no such call."""
    trim = _function("malloc_trim")
    if trim is None:
        return False
    trim(0)
    return True
