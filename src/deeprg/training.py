"""The training loop shared by the three methods' trainers (flows, the RBM projector, CORA).

A trainer does one *unit* of work per :meth:`TrainerBase.step` (a flow step, an RBM minibatch, a
CORA epoch) and says where it stands with :attr:`TrainerBase.position` and
:attr:`TrainerBase.total` (units). :meth:`TrainerBase.train` runs the units, checkpoints every
``cfg.checkpoint_seconds`` of wall time, at the end, whenever a step's record asks for it
(``record["checkpoint"]``, e.g. at the end of an RBM epoch) and when ``should_stop()`` turns true
(checked between units, so the unit in flight completes). A non-finite loss raises
:class:`NonFiniteLoss` before the parameters change, so the last checkpoint stays good.

Numerical code only: files go through :func:`deeprg.runs.save_checkpoint` in each trainer's
``save``.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path

__all__ = ["NonFiniteLoss", "TrainerBase"]


class NonFiniteLoss(RuntimeError):
    """Training produced a NaN or infinite loss or gradient (parameters left untouched)."""


class TrainerBase(ABC):
    """The generic training loop. Subclasses provide ``cfg.checkpoint_seconds``, ``step() ->
    dict``, ``position``, ``total`` and ``save(path)``."""

    cfg: object

    @property
    @abstractmethod
    def position(self) -> int:
        """Units of work done."""

    @property
    @abstractmethod
    def total(self) -> int:
        """Units of work the config asks for."""

    @abstractmethod
    def step(self) -> dict:
        """Do one unit of work; return its record (logged in the history by the subclass)."""

    @abstractmethod
    def save(self, path: str | Path) -> None:
        """Write the checkpoint atomically."""

    def train(
        self,
        until: int | None = None,
        on_record: Callable[[dict], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        checkpoint: str | Path | None = None,
    ) -> None:
        """Run units until :attr:`position` reaches ``until`` (default :attr:`total`), calling
        ``on_record(record)`` after each; save to ``checkpoint`` as described in the module
        docstring. Returns early (after saving) when ``should_stop()`` is true."""
        until = self.total if until is None else min(until, self.total)
        last_save = time.monotonic()
        while self.position < until:
            record = self.step()
            if on_record is not None:
                on_record(record)
            stop = should_stop is not None and should_stop()
            due = time.monotonic() - last_save > self.cfg.checkpoint_seconds
            if checkpoint is not None and (stop or due or self.position >= until or record.get("checkpoint")):
                self.save(checkpoint)
                last_save = time.monotonic()
            if stop:
                return
