"""Several processes, nodes or GPUs through ``torch.distributed`` (launched by ``torchrun``).

deeprg does not start processes itself: ``torchrun --nproc-per-node N deeprg ...`` starts ``N``
copies of a command and sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``,
``MASTER_ADDR`` and ``MASTER_PORT``; :func:`init` reads them and joins the process group (gloo on
CPU, NCCL for GPU tensors, one GPU per local rank). Without them it returns the
one-process :data:`SINGLE` world, on which every method below is a cheap no-op, so numerical code
is written once for both cases.

Conventions that make results independent of the number of processes:

* work is split into contiguous shares in global order (:meth:`World.share`): rank ``r`` of
  ``W`` gets items ``[r n // W, (r + 1) n // W)``;
* random streams are derived from the seed and the *global* index of a chain, sample or batch
  row, never from the rank;
* totals that must be bit-identical across world sizes are exact: integer sums with
  :meth:`World.all_sum_int` (MCRG moments), or data gathered in global order
  (:meth:`World.all_gather_rows`) and reduced as one process would; totals that may differ in the
  last bits (gradients, logged losses) use ``all_reduce``;
* only rank 0 writes files (:attr:`World.main`); collective calls raise :class:`PeerLost` with a
  clear message when another process has died, so no rank hangs or writes half a result.

Collectives take and return numpy arrays (or Python scalars) and travel as CPU tensors (gloo),
except the gathers of tensors (:meth:`World.all_gather_tensor`, :meth:`World.map_rows`), which stay
on the tensors' device (NCCL between GPUs).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["SINGLE", "DistributedMismatch", "PeerLost", "World", "current", "default_threads", "init", "launched",
           "run_device", "shutdown"]

#: How long a collective waits for the other ranks before failing (a rank that died is normally
#: detected at once, when its connection closes; this bounds the wait on a rank that hangs).
TIMEOUT = datetime.timedelta(minutes=30)

#: Environment variables ``torchrun`` sets for every process.
_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


class DistributedMismatch(ValueError):
    """The ranks of one run disagree (different configs, inputs or world assumptions)."""


class PeerLost(RuntimeError):
    """A collective failed: another process of the run stopped or cannot be reached."""


@dataclass(frozen=True)
class World:
    """The processes of one run and this process's place among them.

    ``rank`` in ``[0, size)``; ``local_rank`` in ``[0, local_size)`` among the processes of this
    node; ``backend`` ``None`` (one process), ``"gloo"`` or ``"cpu:gloo,cuda:nccl"``. The
    collectives on numpy arrays below exchange CPU tensors (gloo); :meth:`all_gather_tensor` and
    :meth:`map_rows` gather tensors on their own device, and DDP's gradient buckets on GPUs go
    through NCCL.
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    backend: str | None = None

    @property
    def main(self) -> bool:
        """Whether this is rank 0, the one that writes files and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def share(self, n: int, rank: int | None = None) -> slice:
        """This rank's (or ``rank``'s) contiguous share of ``n`` items in global order:
        ``[r n // W, (r + 1) n // W)``; shares differ in length by at most one."""
        r = self.rank if rank is None else rank
        return slice(r * n // self.size, (r + 1) * n // self.size)

    def require_at_most(self, n: int, what: str) -> None:
        """``DistributedMismatch`` (the same on every rank, before any work) unless every rank gets
        at least one of the ``n`` ``what`` (e.g. ``"batch"``, ``"chains"``)."""
        if n < self.size:
            raise DistributedMismatch(
                f"{what} ({n}) must be at least the number of processes ({self.size}): every process needs "
                f"a share; use fewer processes or more {what}")

    # ---- collectives (no-ops on one process) ------------------------------------------------
    def _run(self, what: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (RuntimeError, OSError) as err:  # gloo / NCCL raise RuntimeError subclasses
            raise PeerLost(f"rank {self.rank} of {self.size}: {what} failed, another process of the run has "
                           f"stopped or cannot be reached ({str(err).splitlines()[0] if str(err) else err!r})") from None

    @staticmethod
    def _tensor(array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array))

    def all_sum(self, values) -> np.ndarray:
        """Element-wise float64 sum over ranks, on every rank (the order of addition is the
        backend's: use :meth:`all_sum_int` where bit-identical totals matter)."""
        a = np.asarray(values, dtype=np.float64)
        if not self.distributed:
            return a.copy()
        t = self._tensor(a)
        self._run("all_reduce", torch.distributed.all_reduce, t)
        return t.cpu().numpy().reshape(a.shape)

    def all_sum_start(self, values):
        """:meth:`all_sum` started now and finished later: returns ``finish()``, which waits for
        the sum and returns it. Work done between the two (a backward pass, say) overlaps the
        exchange, so a step pays one wait for the other processes instead of two; every rank
        must start its collectives in the same order (as for any collective)."""
        a = np.asarray(values, dtype=np.float64)
        if not self.distributed:
            return a.copy
        t = self._tensor(a.copy())
        work = self._run("all_reduce", torch.distributed.all_reduce, t, async_op=True)

        def finish() -> np.ndarray:
            self._run("all_reduce", work.wait)
            return t.cpu().numpy().reshape(a.shape)

        return finish

    def all_sum_int(self, values) -> np.ndarray:
        """Element-wise int64 sum over ranks, on every rank: exact, hence the same whatever the
        order of addition (the caller makes sure the totals fit in int64: they wrap around)."""
        a = np.asarray(values)
        if a.dtype.kind not in "iub":
            raise TypeError(f"all_sum_int needs integers, got dtype {a.dtype}")
        a = a.astype(np.int64)
        if not self.distributed:
            return a
        t = self._tensor(a)
        self._run("all_reduce", torch.distributed.all_reduce, t)
        return t.cpu().numpy().reshape(a.shape)

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is true on any rank (e.g. a stop request or a non-finite loss)."""
        if not self.distributed:
            return bool(flag)
        return bool(self.all_sum([1.0 if flag else 0.0])[0] > 0)

    def all_gather_rows(self, local: np.ndarray, counts: list[int] | None = None) -> np.ndarray:
        """Concatenate every rank's ``(n_r, ...)`` array along axis 0 in rank order (global
        order for :meth:`share`), on every rank; shapes past axis 0 and the dtype must agree.
        ``counts`` (every rank's ``n_r``, where the caller knows them) saves one collective."""
        local = np.ascontiguousarray(local)
        if not self.distributed:
            return local.copy()
        return self.all_gather_tensor(self._tensor(local), counts).numpy()

    def gather_rows(self, local: np.ndarray) -> np.ndarray | None:
        """:meth:`all_gather_rows` received by rank 0 only (``None`` on the other ranks), so that
        only rank 0 holds everything (e.g. the configurations it writes); on one process
        ``local`` itself, not a copy."""
        local = np.ascontiguousarray(local)
        if not self.distributed:
            return local
        out = self._gather(self._tensor(local), self._gather_counts(local), to_all=False)
        return None if out is None else out.numpy()

    def counts(self, n: int) -> list[int]:
        """Every rank's number of items in :meth:`share` of ``n``, in rank order."""
        return [len(range(n)[self.share(n, r)]) for r in range(self.size)]

    def all_gather_tensor(self, local: torch.Tensor, counts: list[int] | None = None) -> torch.Tensor:
        """:meth:`all_gather_rows` for a tensor, on its device: every rank's rows ``(n_r, ...)``
        concatenated in rank order, on every rank. CUDA tensors travel device to device (NCCL in
        the ``cpu:gloo,cuda:nccl`` group), CPU tensors through gloo: no copy through the host for
        a GPU run. ``counts`` (every rank's ``n_r``, e.g. :meth:`counts`) saves one collective.
        On one process ``local`` itself."""
        if not self.distributed:
            return local
        return self._gather(local, self._gather_counts(local) if counts is None else counts, to_all=True)

    def _gather(self, local: torch.Tensor, counts: list[int], to_all: bool) -> torch.Tensor | None:
        """The rows of every rank in rank order, on every rank (``to_all``) or on rank 0 only
        (``None`` elsewhere). The ranks' blocks are padded to the largest count and received
        straight into one tensor (``size x pad`` rows), so equal counts (the usual case) cost no
        copy of the data besides the transfer itself: for 10^5 configurations a process, fresh
        copies cost more than sending them."""
        pad = max(counts)
        send = local.detach().contiguous()
        if len(send) < pad:
            send = torch.cat([send, send.new_zeros((pad - len(send),) + tuple(send.shape[1:]))])
        receive = to_all or self.main
        out = send.new_empty((self.size * pad,) + tuple(send.shape[1:])) if receive else None
        parts = list(out.split(pad)) if receive else None
        if to_all:
            self._run("all_gather", torch.distributed.all_gather, parts, send)
        else:
            self._run("gather", torch.distributed.gather, send, parts, dst=0)
        if not receive or all(c == pad for c in counts):
            return out
        return torch.cat([out[r * pad : r * pad + c] for r, c in enumerate(counts)])

    def all_gather_objects(self, obj) -> list:
        """Every rank's ``obj`` in rank order, on every rank (pickled between the processes of
        this run, e.g. per-replica results of differing lengths); ``[obj]`` on one process."""
        if not self.distributed:
            return [obj]
        out = [None] * self.size
        self._run("all_gather_object", torch.distributed.all_gather_object, out, obj)
        return out

    def map_rows(self, fn, x: torch.Tensor):
        """``fn(x)`` with the work split by rows: this process evaluates ``fn`` on its
        :meth:`share` of the rows of ``x`` and the outputs (a tensor or a tuple of tensors, one
        row per input row) are gathered in row order on every process. ``fn`` must treat rows
        independently (a batch of log-densities and their gradients, say); the caller keeps the
        whole ``x`` and everything else (random draws, accept decisions) the same on every
        process, so the result is the one-process result up to the rounding of batches of
        other sizes. A collective; on one process, or with fewer rows than processes, ``fn(x)``.
        Outputs travel as float64 (exact for float32 and float64) in one gather, on their device
        (:meth:`all_gather_tensor`)."""
        n = len(x)
        if not self.distributed or n < self.size:
            return fn(x)
        out = fn(x[self.share(n)])
        single = isinstance(out, torch.Tensor)
        parts = (out,) if single else tuple(out)
        flat = [p.detach().reshape(len(p), -1).to(torch.float64) for p in parts]
        full = self.all_gather_tensor(torch.cat(flat, 1), self.counts(n))
        result, column = [], 0
        for p, f in zip(parts, flat, strict=True):
            width = f.shape[1]
            result.append(full[:, column : column + width].reshape((n, *p.shape[1:])).to(p.dtype))
            column += width
        return result[0] if single else tuple(result)

    def _gather_counts(self, local: np.ndarray) -> list[int]:
        meta = np.zeros(self.size, dtype=np.int64)
        meta[self.rank] = len(local)
        t = self._tensor(meta)
        self._run("all_reduce", torch.distributed.all_reduce, t)
        return [int(c) for c in t.cpu().numpy()]

    def check_same(self, payload, what: str) -> None:
        """Raise :class:`DistributedMismatch` on every rank unless ``payload`` (JSON-serializable,
        e.g. a config dict) is the same on all ranks; compares SHA-256 hashes, so the payload
        itself never travels."""
        if not self.distributed:
            return
        text = json.dumps(payload, sort_keys=True, default=str)
        digest = np.frombuffer(hashlib.sha256(text.encode()).digest(), dtype=np.uint8)
        hashes = self.all_gather_rows(digest[None, :].astype(np.int64))
        groups: dict[bytes, list[int]] = {}
        for r, h in enumerate(hashes):
            groups.setdefault(h.tobytes(), []).append(r)
        if len(groups) > 1:
            sets = "; ".join(f"ranks {', '.join(map(str, ranks))}" for ranks in groups.values())
            raise DistributedMismatch(
                f"the processes were started with different {what} ({len(groups)} different ones: {sets}); "
                f"start every process with the same options and files")


#: The world of a run started without ``torchrun``.
SINGLE = World()

_current = SINGLE


def _env_int(name: str) -> int:
    value = os.environ[name]
    try:
        return int(value)
    except ValueError:
        raise DistributedMismatch(f"environment variable {name}={value!r} is not an integer") from None


def launched() -> bool:
    """Whether this process was started by ``torchrun`` with more than one process."""
    return "WORLD_SIZE" in os.environ and _env_int("WORLD_SIZE") > 1


def init(device: str | torch.device = "cpu") -> World:
    """Join the process group ``torchrun`` described in the environment, or return
    :data:`SINGLE` when started without it (or with one process). The group uses gloo for CPU
    tensors and, where torch has CUDA, NCCL for CUDA tensors (``"cpu:gloo,cuda:nccl"``), with GPU
    ``LOCAL_RANK`` as this process's CUDA device. ``device``: the run's device; ``"cuda"`` checks
    that this local rank has a GPU. Idempotent; :func:`shutdown` leaves the group."""
    global _current
    if _current.distributed or not launched():
        return _current
    missing = [name for name in _ENV + ("MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing:
        raise DistributedMismatch(f"WORLD_SIZE is set but {', '.join(missing)} is not: start deeprg on several "
                                  "processes with torchrun (see docs/scaling.md)")
    rank, size = _env_int("RANK"), _env_int("WORLD_SIZE")
    local_rank, local_size = _env_int("LOCAL_RANK"), _env_int("LOCAL_WORLD_SIZE")
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if torch.device(device).type == "cuda" and local_rank >= gpus:
        raise DistributedMismatch(f"rank {rank}: --device cuda needs one GPU per local process, but local rank "
                                  f"{local_rank} sees {gpus} GPU(s)")
    if local_rank < gpus:
        torch.cuda.set_device(local_rank)
    backend = "cpu:gloo,cuda:nccl" if gpus else "gloo"
    try:
        torch.distributed.init_process_group(backend, rank=rank, world_size=size, timeout=TIMEOUT)
    except (RuntimeError, ValueError) as err:
        raise PeerLost(f"rank {rank}: could not join the process group ({err})") from None
    _current = World(rank, size, local_rank, local_size, backend)
    return _current


def run_device(device: str | torch.device, world: World | None = None) -> torch.device:
    """The device this process computes on: ``device`` itself, except that a CUDA device under a
    multi-process launch becomes GPU ``LOCAL_RANK`` (one GPU per local process)."""
    w = current() if world is None else world
    d = torch.device(device)
    if d.type == "cuda" and w.distributed:
        return torch.device("cuda", w.local_rank)
    return d


def current() -> World:
    """The world :func:`init` joined (:data:`SINGLE` before or without it)."""
    return _current


def shutdown(finished: bool = False) -> None:
    """Leave the process group (no-op on one process). ``finished``: every process completed
    the command; they then meet at a barrier first, so that none tears its connections down
    while another still finishes (rank 0 writing the results): a process leaving alone while its
    peer is still connected can die in gloo's teardown (``terminate called without an active
    exception``, SIGABRT). After an error there is no barrier (the others may be gone)."""
    global _current
    if _current.distributed and torch.distributed.is_initialized():
        if finished:
            try:
                torch.distributed.barrier()
            except (RuntimeError, OSError):  # another process left already: nothing to wait for
                pass
        torch.distributed.destroy_process_group()
    _current = SINGLE


def default_threads(world: World | None = None) -> int:
    """Threads per process when the user gives none: the machine's cores shared by the
    processes of this node (at least 1)."""
    w = current() if world is None else world
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // w.local_size)
