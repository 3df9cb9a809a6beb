"""Training the RBM projector by contrastive divergence (Chung & Kao, Sec. 3-4), in 2D or 3D.

The optimal criterion (Eq. 8) is the KL divergence between the Boltzmann distribution of the data
and the normalized normalizing factor ``Y(sigma) / sum Y`` of the projector, i.e. maximum
likelihood of an RBM without biases whose visible marginal is ``Y``. With the free energy
``F(sigma) = -ln Y(sigma) = -sum_J ln 2 cosh h_J(sigma)`` the gradient of the KL divergence is
``<dF/dw>_data - <dF/dw>_model``; CD-k estimates the model term from ``k`` block-Gibbs sweeps
(``mu ~ P(mu|sigma)``, then ``sigma ~ P(sigma|mu)``) started at the minibatch (or, with
``persistent``, from persistent chains, PCD), so the loss minimized by Adam is::

    loss = mean_batch F(sigma_data) - mean_batch F(sigma_k),     sigma_k held fixed.

Schedule (the seed's "square root decay" from 1e-3 to 1e-4 at epoch 25, constant after): Adam
with, for ``t < T`` (``t`` the training time in epochs, fractional within an epoch,
``T = decay_epochs``), either ``lr(t) = lr_final + (lr - lr_final) sqrt(1 - t/T)`` (``"polynomial"``,
the default: a power-1/2 polynomial decay, as TensorFlow's ``polynomial_decay(power=0.5)``) or
``lr(t) = lr / sqrt(1 + (r^2 - 1) t/T)`` with ``r = lr / lr_final`` (``"inverse-sqrt"``), and
``lr_final`` for ``t >= T``. The seed's wording fits both; with the polynomial form the MCRG
exponents of the trained filter stop changing within 50 epochs, as in the seed's Fig. 2, while
the inverse-square-root form (about 4x less total step size by epoch 25) needs about 100.
Minibatches: every epoch visits a fresh permutation of the data from
``SeedSequence([seed, epoch])`` in ``n // batch`` minibatches (the remainder is left out that
epoch). The filter (``(f, f)`` on 2D data, ``(f, f, f)`` on 3D data) starts uniform in
``[-init_scale, init_scale]``.

Two evaluations of the fields, the same numbers up to rounding (:func:`conv_path` picks one from
the data's lattice): the *dense* path builds the ``(N, N/2^d)`` coupling matrix every minibatch
(fast for the small 2D lattices, and the path of every 2D run, so 2D results do not move); the
*convolutional* path uses :func:`~deeprg.rsrg.rbm.hidden_field`,
:func:`~deeprg.rsrg.rbm.visible_field` and :func:`~deeprg.rsrg.rbm.filter_correlation` with
memory ``O(batch N)``, for every 3D run (the dense matrix of a 32^3 lattice has 32768 x 4096
entries, 537 MB in float32, and a step holds three of them; a step there takes 1.8 s dense and
0.04-0.06 s convolutional). Both paths draw the same random numbers in the same order, so they
sample the same chains given the same fields.

:class:`Trainer` owns the filter, the optimizer, the torch generator of the Gibbs chains and the
position in the epoch, so a checkpoint resumes a run exactly; the filter after every epoch is kept
(``Trainer.filters``, epoch 0 = initialization).

Devices (``device``, ``cpu`` by default, ``cuda`` or ``cuda:N``): the training set is copied to the
device once (int8 on the convolutional path, floats on the dense path), each epoch's permutation
once per epoch, and the filter, Adam's moments, the Gibbs chains and the Gibbs generator live there,
so a minibatch copies nothing from the host to the device (a step reads back only the logged
scalars, the loss and the sharpness). The initial filter is always drawn from a CPU generator
seeded ``seed``; on the CPU the Gibbs chains continue that generator's stream (as they always
have), on a GPU they draw from a CUDA generator seeded ``seed``: the same seed gives the same
initial filter on every device but other Gibbs noise, hence another trained filter, on another
device type (in float32 the convolutional path on a GPU also follows torch's cuDNN TF32 setting).
Checkpoints hold CPU tensors only and resume on any device; on the same device type the run
continues exactly, while a run moved to another device type (a GPU run resumed on a CPU machine,
say) cannot continue its Gibbs stream there and starts a fresh one seeded from ``seed`` and its
position, with a warning (:meth:`Trainer.load`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from deeprg.config import DTYPE_NAMES, check_types, need, resolve_device, torch_dtype
from deeprg.rsrg.rbm import (
    check_filter,
    coupling_matrix,
    filter_correlation,
    filter_gradient,
    free_energy,
    hidden_field,
    sample_spins,
    visible_field,
)
from deeprg.runs import (CheckpointMismatch, RunDir, config_mismatch, restore_generator, save_checkpoint,
                         saved_device_type)
from deeprg.runs import load_checkpoint as _load_checkpoint
from deeprg.training import NonFiniteLoss, TrainerBase

__all__ = [
    "CHECKPOINT_FORMAT",
    "SCHEDULES",
    "CheckpointMismatch",
    "NonFiniteLoss",
    "RBMTrainConfig",
    "Trainer",
    "conv_path",
    "data_fingerprint",
    "learning_rate",
    "load_filters",
]

CHECKPOINT_FORMAT = "deeprg.rbm-checkpoint/1"
#: Entries of a checkpoint (besides ``format``) and their types.
CHECKPOINT_SCHEMA = {"config": str, "data": str, "weights": torch.Tensor, "optimizer": dict,
                     "generator": torch.Tensor, "epoch": int, "batch_index": int, "sums": dict,
                     "chains": torch.Tensor, "filters": torch.Tensor, "history": list, "wall_seconds": float}

#: Learning-rate schedules, ``x = t / decay_epochs`` in [0, 1], ``t`` in epochs:
#: ``"polynomial"``: ``lr_final + (lr - lr_final) sqrt(1 - x)`` (power-1/2 polynomial decay);
#: ``"inverse-sqrt"``: ``lr / sqrt(1 + (r^2 - 1) x)``, ``r = lr / lr_final``.
SCHEDULES = ("polynomial", "inverse-sqrt")


def conv_path(shape: tuple[int, ...]) -> bool:
    """Whether training on a lattice of ``shape`` uses the convolutional path: for every 3D
    lattice, never in 2D (the dense path keeps 2D runs bit-identical to the original code).
    Measured CD-3 steps, batch 10, float32, one thread: 8^3 4 ms (conv) vs 1 ms (dense), 16^3
    8-15 ms vs 27 ms, 32^3 40-65 ms vs 1.8 s and 2 GB (f = 4, 6); the small 3D lattices where the
    dense path is faster cost milliseconds either way."""
    return len(shape) == 3


@dataclass
class RBMTrainConfig:
    """Everything that defines a training run (defaults: the seed's settings)."""

    filter_size: int = 8
    cd_k: int = 3
    persistent: bool = False
    epochs: int = 50
    batch: int = 10
    lr: float = 1e-3
    lr_final: float = 1e-4
    decay_epochs: float = 25.0
    schedule: str = "polynomial"
    init_scale: float = 0.01
    seed: int = 0
    dtype: str = "float32"
    #: torch device: ``cpu``, ``cuda`` or ``cuda:N`` (same seed, other Gibbs noise on another
    #: device type: see the module docstring).
    device: str = "cpu"
    #: torch CPU threads; 1 by default: the 10 x 1024 x 256 products of a step gain nothing from
    #: more, and OpenMP threads competing with other work on the cores slow them 10x and more.
    threads: int | None = 1
    checkpoint_seconds: float = 60.0

    #: Keys a resumed run may change (everything else must match the checkpoint).
    RESUMABLE: ClassVar[tuple[str, ...]] = ("epochs", "device", "threads", "checkpoint_seconds")

    def __post_init__(self) -> None:
        check_types(self)
        need(self, self.filter_size >= 2 and self.filter_size % 2 == 0, "filter_size",
             "an even integer >= 2 (centred on a 2x2 block)")
        need(self, self.cd_k >= 1, "cd_k", "an integer >= 1")
        need(self, self.epochs >= 1, "epochs", "an integer >= 1")
        need(self, self.batch >= 1, "batch", "an integer >= 1")
        need(self, 0 < self.lr < 1, "lr", "in (0, 1)")
        need(self, 0 < self.lr_final <= self.lr, "lr_final", "in (0, lr]")
        need(self, self.decay_epochs > 0, "decay_epochs", "> 0")
        need(self, self.schedule in SCHEDULES, "schedule", f"one of {SCHEDULES}")
        need(self, self.init_scale >= 0, "init_scale", ">= 0")
        need(self, 0 <= self.seed < 2**64, "seed", "an integer in [0, 2^64)")
        need(self, self.dtype in DTYPE_NAMES, "dtype", f"one of {DTYPE_NAMES}")
        resolve_device(self.device)
        need(self, self.threads is None or self.threads >= 1, "threads", "an integer >= 1")
        need(self, self.checkpoint_seconds > 0, "checkpoint_seconds", "> 0")

    def memory_estimate(self, n_data: int, shape: tuple[int, ...]) -> tuple[float, str]:
        """Estimated peak memory of training on ``n_data`` configurations of ``shape`` in bytes,
        and what drives it. Dense path (2D): the training set as floats, the dense ``N x N/4``
        coupling matrix of the filter (with its gradient and Adam's moments of the filter
        negligible) and a minibatch's Gibbs chains. Convolutional path (3D, :func:`conv_path`): the
        training set as int8 and about 16 minibatch-sized float arrays on the padded lattice of
        extents ``L + f - 2`` (chains, fields, padded copies, the transposed convolution)."""
        n = math.prod(shape)
        size = 4 if self.dtype == "float32" else 8
        if conv_path(shape):
            padded = math.prod(int(s) + self.filter_size - 2 for s in shape)
            return (n_data * n + 16.0 * self.batch * padded * size,
                    "the data set's lattice and size, batch, filter_size")
        return (n_data * n * size + 3.0 * n * (n // 4) * size + 8.0 * self.batch * n * size,
                "the data set's lattice and size, batch")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def learning_rate(cfg: RBMTrainConfig, epochs_done: float) -> float:
    """Square-root decay from ``lr`` to ``lr_final`` at ``decay_epochs`` (``cfg.schedule``, see
    :data:`SCHEDULES`), ``lr_final`` after."""
    if epochs_done >= cfg.decay_epochs:
        return cfg.lr_final
    x = epochs_done / cfg.decay_epochs
    if cfg.schedule == "polynomial":
        return cfg.lr_final + (cfg.lr - cfg.lr_final) * math.sqrt(1.0 - x)
    r2 = (cfg.lr / cfg.lr_final) ** 2
    return max(cfg.lr_final, cfg.lr / math.sqrt(1.0 + (r2 - 1.0) * x))


def data_fingerprint(spins: np.ndarray) -> dict:
    """Shape and SHA-256 of the training spins, stored in checkpoints to detect other data."""
    s = np.ascontiguousarray(spins, dtype=np.int8)
    return {"n": int(s.shape[0]), "lattice_shape": list(s.shape[1:]), "sha256": hashlib.sha256(s.data).hexdigest()}


class Trainer(TrainerBase):
    """The filter of an RBM projector trained by CD-k / PCD on ``spins``; the unit of
    :meth:`~deeprg.training.TrainerBase.train` is one minibatch.

    Parameters
    ----------
    cfg:
        The run's configuration.
    spins:
        ``(n, L0, L1)`` or ``(n, L0, L1, L2)`` int8 +-1 training configurations (even extents
        >= ``cfg.filter_size``, ``n >= cfg.batch``); the filter has the data's dimension.
    conv:
        Use the convolutional path (True) or the dense coupling matrix (False); by default
        :func:`conv_path` of the lattice (dense in 2D, convolutional in 3D). Both give the same
        training up to rounding; a checkpoint resumes exactly on the path that wrote it.

    The training set, the filter (:attr:`weights`), Adam's state, the persistent chains and the
    Gibbs :attr:`generator` are on :attr:`device` (``cfg.device``); :attr:`filters` (the
    snapshots after each epoch) are kept on the host.
    """

    def __init__(self, cfg: RBMTrainConfig, spins: np.ndarray, conv: bool | None = None) -> None:
        s = np.asarray(spins)
        if s.ndim not in (3, 4):
            raise ValueError(f"training spins must have shape (n, L0, L1) or (n, L0, L1, L2), got shape {s.shape}")
        check_filter(cfg.filter_size, s.shape[1:])
        if cfg.batch > len(s):
            raise ValueError(f"batch ({cfg.batch}) is larger than the training set ({len(s)} configurations)")
        self.cfg = cfg
        if cfg.threads is not None:
            torch.set_num_threads(cfg.threads)
        dtype = torch_dtype(cfg.dtype)
        self.device = resolve_device(cfg.device)
        self.shape = tuple(int(x) for x in s.shape[1:])
        self.d = len(self.shape)
        self.conv = conv_path(self.shape) if conv is None else bool(conv)
        self.data_info = data_fingerprint(s)
        if self.conv:  # int8 (n, N), converted a minibatch at a time (exact for +-1)
            data = torch.from_numpy(np.ascontiguousarray(s.reshape(len(s), -1), dtype=np.int8))
        else:
            data = torch.from_numpy(s.reshape(len(s), -1).astype(np.float32)).to(dtype)
        self._data = data.to(self.device)  # once: minibatches are then indexed on the device
        self.dtype = dtype
        # The initial filter comes from a CPU generator seeded ``seed`` on every device; on the
        # CPU the Gibbs chains continue its stream, on a GPU they use a CUDA generator seeded ``seed``.
        host = torch.Generator().manual_seed(cfg.seed)
        f = cfg.filter_size
        init = (2.0 * torch.rand((f,) * self.d, generator=host, dtype=torch.float64) - 1.0) * cfg.init_scale
        self.generator = (host if self.device.type == "cpu"
                          else torch.Generator(device=self.device).manual_seed(cfg.seed))
        self.weights = init.to(device=self.device, dtype=dtype)
        self.optimizer = torch.optim.Adam([self.weights], lr=cfg.lr)
        self.steps_per_epoch = len(s) // cfg.batch
        self.epoch = 0  # completed epochs
        self.batch_index = 0  # minibatches done in the current epoch
        self.chains: torch.Tensor | None = None  # persistent chains (PCD)
        self.filters = [_host(self.weights)]
        self.history: list[dict] = []
        self._sums = {"cd_gap": 0.0, "sharpness": 0.0, "steps": 0}
        self.wall_seconds = 0.0
        self._perm: tuple[int, torch.Tensor] | None = None

    # ---- training ---------------------------------------------------------------------------
    def _permutation(self) -> torch.Tensor:
        """This epoch's permutation of the training set: drawn on the host from
        ``SeedSequence([seed, epoch])`` (the same on every device) and copied to the device once
        per epoch, as a LongTensor that minibatches are sliced from."""
        if self._perm is None or self._perm[0] != self.epoch:
            rng = np.random.default_rng(np.random.SeedSequence([self.cfg.seed, self.epoch]))
            perm = torch.from_numpy(rng.permutation(len(self._data)))
            self._perm = (self.epoch, perm.to(device=self.device, dtype=torch.long))
        return self._perm[1]

    def _gibbs(self, v: torch.Tensor, W: torch.Tensor | None) -> torch.Tensor:
        """``cd_k`` block-Gibbs sweeps from the flat ``(batch, N)`` configurations ``v``, with the
        dense ``W`` or (``W is None``) the convolutions; returns flat configurations."""
        if W is not None:
            for _ in range(self.cfg.cd_k):
                mu = sample_spins(v @ W, self.generator)
                v = sample_spins(mu @ W.T, self.generator)
            return v
        x = v.reshape(len(v), *self.shape)
        for _ in range(self.cfg.cd_k):
            mu = sample_spins(hidden_field(x, self.weights), self.generator)
            x = sample_spins(visible_field(mu, self.weights, self.shape), self.generator)
        return x.reshape(len(v), -1)

    def gradient(self, v0: torch.Tensor, vk: torch.Tensor,
                 W: torch.Tensor | None = None) -> tuple[torch.Tensor, float, torch.Tensor]:
        """CD gradient of ``loss = <F>_{v0} - <F>_{vk}`` with respect to the filter, for flat
        configurations ``(batch, N)`` on :attr:`device`: with ``dF/dW_iJ = -sigma_i tanh(h_J)``,
        ``dloss/dW = (vk^T tanh(h_k) - v0^T tanh(h_0)) / batch``, summed over the entries of ``W``
        that share a filter weight. With the dense ``W`` of the current filter this is a matrix
        product and :func:`~deeprg.rsrg.rbm.filter_gradient`; with ``W = None`` (convolutional
        path) the fields come from :func:`~deeprg.rsrg.rbm.hidden_field` of the current filter
        and the sum from :func:`~deeprg.rsrg.rbm.filter_correlation`. Returns
        ``(gradient (f,)*d, loss, h_0)`` (``h_0`` flat on the dense path, ``(batch, L_0/2, ..)``
        on the convolutional one)."""
        if W is not None:
            h0, hk = v0 @ W, vk @ W
            loss = float(free_energy(h0).mean() - free_energy(hk).mean())
            dW = (torch.cat([vk, v0]).T @ torch.cat([torch.tanh(hk), -torch.tanh(h0)])) / len(v0)
            grad = filter_gradient(dW, self.cfg.filter_size, self.shape)
            return grad, loss, h0
        b = len(v0)
        v = torch.cat([vk, v0]).reshape(2 * b, *self.shape)
        h = hidden_field(v, self.weights)
        hk, h0 = h[:b], h[b:]
        loss = float(free_energy(h0).mean() - free_energy(hk).mean())
        grad = filter_correlation(v, torch.cat([torch.tanh(hk), -torch.tanh(h0)]), self.cfg.filter_size) / b
        return grad, loss, h0

    @property
    def position(self) -> int:
        return self.epoch * self.steps_per_epoch + self.batch_index

    @property
    def total(self) -> int:
        return self.cfg.epochs * self.steps_per_epoch

    @torch.no_grad()
    def step(self) -> dict:
        """One minibatch: CD-k gradient, Adam step at the scheduled learning rate. Returns
        ``{"loss": <F>_data - <F>_k, "epoch": record of the epoch it completed or None,
        "checkpoint": whether it completed an epoch}``; raises :class:`NonFiniteLoss` (filter
        untouched) if the loss is not finite."""
        t0 = time.perf_counter()
        b = self.cfg.batch
        idx = self._permutation()[self.batch_index * b : (self.batch_index + 1) * b]
        v0 = self._data[idx]
        if self.conv:
            v0 = v0.to(self.dtype)
        W = None if self.conv else coupling_matrix(self.weights, self.shape)
        start = v0 if not self.cfg.persistent else (v0 if self.chains is None else self.chains)
        vk = self._gibbs(start, W)
        grad, loss, h0 = self.gradient(v0, vk, W)
        if not (math.isfinite(loss) and torch.isfinite(grad).all()):
            raise NonFiniteLoss(f"non-finite loss {loss} at epoch {self.epoch + 1}, minibatch {self.batch_index + 1}")
        if self.cfg.persistent:
            self.chains = vk
        self.weights.grad = grad
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.cfg, self.epoch + self.batch_index / self.steps_per_epoch)
        self.optimizer.step()
        self._sums["cd_gap"] += loss
        self._sums["sharpness"] += float(torch.tanh(h0).abs().mean())
        self._sums["steps"] += 1
        self.batch_index += 1
        self.wall_seconds += time.perf_counter() - t0
        ended = self.batch_index == self.steps_per_epoch
        if ended:
            self._end_epoch()
        return {"loss": loss, "epoch": self.history[-1] if ended else None, "checkpoint": ended}

    def _end_epoch(self) -> None:
        n = self._sums["steps"]
        w = self.weights
        self.epoch += 1
        self.batch_index = 0
        self.filters.append(_host(w))
        self.history.append({
            "epoch": self.epoch,
            "cd_gap": self._sums["cd_gap"] / n,
            "sharpness": self._sums["sharpness"] / n,
            "lr": learning_rate(self.cfg, self.epoch),
            "filter_sum": float(w.sum()),
            "filter_max_abs": float(w.abs().max()),
            "seconds": self.wall_seconds,
        })
        self._sums = {"cd_gap": 0.0, "sharpness": 0.0, "steps": 0}

    @property
    def filter_history(self) -> np.ndarray:
        """``(epochs + 1, *(f,)*d)`` float64 filters after each epoch (row 0: initialization), a
        numpy array on the host."""
        return torch.stack(self.filters).cpu().double().numpy()

    # ---- checkpoints ------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The checkpoint: CPU tensors only (filter, Adam's state, chains, snapshots; the
        generator's state is a CPU byte tensor on every device), so it loads on any device."""
        return {
            "format": CHECKPOINT_FORMAT,
            "config": json.dumps(self.cfg.to_dict()),
            "data": json.dumps(self.data_info),
            "weights": _host(self.weights),
            "optimizer": _on_host(self.optimizer.state_dict()),
            "generator": self.generator.get_state(),
            "epoch": self.epoch,
            "batch_index": self.batch_index,
            "sums": dict(self._sums),
            "chains": _host(self.chains) if self.chains is not None else torch.empty(0),
            "filters": torch.stack(self.filters).cpu(),
            "history": self.history,
            "wall_seconds": self.wall_seconds,
        }

    def save(self, path: str | Path) -> None:
        """Write the checkpoint atomically (tensors and plain containers only)."""
        save_checkpoint(path, self.state_dict())

    def load(self, path: str | Path) -> None:
        """Restore a checkpoint of the same run: same data and same config except
        ``RBMTrainConfig.RESUMABLE`` (e.g. more epochs, another device). The state moves to
        :attr:`device`. A checkpoint written on another device type (``cuda`` read on ``cpu`` or
        the reverse) holds the state of another kind of generator, which cannot continue here:
        the Gibbs generator is then seeded from ``cfg.seed`` and the position (epoch and
        minibatch) and a ``RuntimeWarning`` says so; the run goes on, but is not the one it would
        have been on a single device type. On the same device type the run continues exactly."""
        state = load_checkpoint(path)
        saved = _config_from_json(state["config"], path)
        saved_type = saved_device_type(json.loads(state["config"]), path)
        keys = [f.name for f in dataclasses.fields(RBMTrainConfig) if f.name not in RBMTrainConfig.RESUMABLE]
        detail = config_mismatch(saved.to_dict(), self.cfg.to_dict(), keys)
        if detail:
            raise CheckpointMismatch(f"checkpoint {str(path)!r} is for another run ({detail})")
        try:
            data = json.loads(state["data"])
        except (ValueError, RecursionError):
            raise CheckpointMismatch(f"{str(path)!r}: its data fingerprint is corrupt") from None
        if data != self.data_info:
            raise CheckpointMismatch(
                f"checkpoint {str(path)!r} was trained on other data ({data['n']} configurations of "
                f"{'x'.join(map(str, data['lattice_shape']))}, sha256 {data['sha256'][:12]}...)")
        f, d = self.cfg.filter_size, self.d
        for shape in (tuple(state["weights"].shape), tuple(state["filters"].shape[1:])):
            if len(shape) != d:
                raise CheckpointMismatch(f"{str(path)!r}: its {len(shape)}D filter of shape {shape} does not fit the "
                                         f"{d}D training data {'x'.join(map(str, self.shape))}")
        if tuple(state["weights"].shape) != (f,) * d or tuple(state["filters"].shape[1:]) != (f,) * d:
            raise CheckpointMismatch(f"{str(path)!r}: filter of shape {tuple(state['weights'].shape)} does not fit "
                                     f"filter_size {f}")
        try:
            self.optimizer.load_state_dict(state["optimizer"])  # Adam moves its moments to the filter's device
        except (RuntimeError, ValueError, KeyError, TypeError) as err:
            raise CheckpointMismatch(f"{str(path)!r} does not fit its config ({err})") from None
        self.weights.copy_(state["weights"])
        self.epoch = int(state["epoch"])
        self.batch_index = int(state["batch_index"])
        restore_generator(self.generator, state["generator"], saved_type, [self.cfg.seed, self.epoch, self.batch_index],
                          path, "the Gibbs chains' generator")
        self._sums = dict(state["sums"])
        self.chains = state["chains"].to(self.device) if state["chains"].numel() else None
        self.filters = [f.cpu() for f in state["filters"]]
        self.history = list(state["history"])
        self.wall_seconds = float(state["wall_seconds"])


def _host(t: torch.Tensor) -> torch.Tensor:
    """A CPU copy of ``t`` (a copy also on the CPU, so later steps do not change it)."""
    return t.detach().to("cpu", copy=True)


def _on_host(obj):
    """``obj`` (an optimizer's state dict: dicts, lists, tensors, numbers) with every tensor on
    the CPU (CPU tensors as they are)."""
    if isinstance(obj, torch.Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        return {k: _on_host(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_on_host(v) for v in obj)
    return obj


def _config_from_json(text: str, path: str | Path) -> RBMTrainConfig:
    """The saved config, with ``device`` set to ``cpu``: where a run was trained does not define
    it, and a run trained on a GPU must be readable on a machine without one (the saved device:
    :func:`deeprg.runs.saved_device_type`)."""
    known = {f.name for f in dataclasses.fields(RBMTrainConfig)}
    try:
        values = {k: v for k, v in json.loads(text).items() if k in known}
        return RBMTrainConfig(**{**values, "device": "cpu"})
    except (TypeError, ValueError, AttributeError, RecursionError) as err:
        raise CheckpointMismatch(f"{str(path)!r} holds an unusable RBM config ({err})") from None


def _lattice_shape(text: str, path: str | Path) -> tuple[int, ...]:
    """The 2D or 3D ``lattice_shape`` of a checkpoint's data fingerprint."""
    try:
        shape = json.loads(text)["lattice_shape"]
        ok = (isinstance(shape, list) and len(shape) in (2, 3)
              and all(isinstance(s, int) and not isinstance(s, bool) and s >= 2 for s in shape))
    except (ValueError, RecursionError, TypeError, KeyError):
        ok = False
    if not ok:
        raise CheckpointMismatch(f"{str(path)!r}: its data fingerprint is corrupt (no 2D or 3D lattice_shape)")
    return tuple(shape)


def load_checkpoint(path: str | Path) -> dict:
    """Load an RBM checkpoint without executing code (``weights_only=True``)."""
    return _load_checkpoint(path, CHECKPOINT_FORMAT, "RBM", CHECKPOINT_SCHEMA)


def load_filters(run_dir: str | Path) -> tuple[RBMTrainConfig, np.ndarray, list[dict]]:
    """The config, the ``(epochs + 1, *(f,)*d)`` filter snapshots (row ``e`` after epoch ``e``,
    row 0 the initialization; ``d`` the dimension of the training data, from the checkpoint's
    data fingerprint) and the per-epoch history of a run directory of ``deeprg rsrg train``.
    Raises :class:`CheckpointMismatch` naming what is missing or inconsistent."""
    run = RunDir(run_dir, "rsrg")
    if not run.path.is_dir():
        raise CheckpointMismatch(f"run directory {str(run.path)!r} does not exist")
    run.saved_config()  # kind and format
    checkpoint = run.checkpoint
    if not checkpoint.exists():
        raise CheckpointMismatch(f"run directory {str(run.path)!r} has no checkpoint.pt")
    state = load_checkpoint(checkpoint)
    cfg = _config_from_json(state["config"], checkpoint)
    lattice = _lattice_shape(state["data"], checkpoint)
    filters = state["filters"]
    f, d = cfg.filter_size, len(lattice)
    if filters.ndim != d + 1 or tuple(filters.shape[1:]) != (f,) * d or len(filters) != int(state["epoch"]) + 1:
        raise CheckpointMismatch(f"{str(checkpoint)!r}: filter snapshots of shape {tuple(filters.shape)} do not "
                                 f"match filter_size {f}, the {d}D training data {'x'.join(map(str, lattice))} and "
                                 f"{state['epoch']} completed epochs")
    return cfg, filters.double().numpy(), list(state["history"])
