"""Training a NeuralRG flow by the variational free energy (Li & Wang Eqs. 3-5).

The loss is the reverse KL up to the constant ``ln Z``::

    F_q = E_{z ~ p} [ ln p(z) - ln|det dg/dz| - ln pi(g(z)) ] >= -ln Z,       (Eq. 5)

estimated on a batch with the reparametrization trick and minimized with Adam under a cosine
learning-rate schedule. :class:`Trainer` owns the flow, the target, the optimizer and the random
generator, so that a checkpoint restores a run exactly (same seed, same numbers, interrupted or
not). Numerical work only: files are written by :mod:`deeprg.runs` through :meth:`Trainer.save`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

import deeprg
from deeprg.flows.flow import Flow
from deeprg.flows.hierarchy import ARCHITECTURES, Hierarchy, layer_specs
from deeprg.lattice import Lattice
from deeprg.mc.stats import Estimate
from deeprg.models.ising import parse_coupling
from deeprg.models.relaxed import RelaxedIsing
from deeprg.runs import CheckpointMismatch, config_mismatch, run_provenance, save_checkpoint, write_json
from deeprg.runs import load_checkpoint as _load_checkpoint

__all__ = [
    "RUN_FORMAT",
    "CheckpointMismatch",
    "FlowTrainConfig",
    "NonFiniteLoss",
    "Trainer",
    "load_run",
    "variational_free_energy",
    "write_run_config",
]

DTYPES = {"float32": torch.float32, "float64": torch.float64}

#: Config keys that define the model; a checkpoint is usable only if they all agree.
MODEL_KEYS = ("L", "d", "beta", "min_eigenvalue", "arch", "depth", "n_couplings", "hidden", "shared",
              "s_max", "linear", "elementwise", "symmetrize", "dtype")
#: Format of a checkpoint file.
CHECKPOINT_FORMAT = "deeprg.flow-checkpoint/1"
#: Format of a run directory's ``config.json``; bump when a run can no longer be reloaded.
RUN_FORMAT = "deeprg.flow-run/3"
#: File names inside a run directory.
CONFIG_NAME, CHECKPOINT_NAME = "config.json", "checkpoint.pt"


@dataclass
class FlowTrainConfig:
    """Everything that defines a training run (defaults: the package's main job).

    ``elementwise`` adds the site-wise odd monotone map (:class:`~deeprg.flows.bijectors.OddMonotone`),
    which starts bent towards two-peaked single-site marginals, as the relaxed Ising field has; turn
    it off for a single-peaked target (a correlated Gaussian reaches 1.9e-2 relative error with it
    and 7.7e-5 without it in the same 300 steps; ``benchmarks/bench_flow_ablation.py``).
    """

    L: int = 8
    d: int = 2
    beta: float | str = "critical"
    min_eigenvalue: float = 0.1
    arch: str = "mera"
    depth: int | None = None
    n_couplings: int = 4
    hidden: list[int] = field(default_factory=lambda: [32, 32])
    shared: bool = True
    s_max: float = 2.0
    linear: bool = True
    elementwise: bool = True
    symmetrize: bool = True
    steps: int = 1000
    batch: int = 256
    lr: float = 2e-3
    lr_final: float = 1e-5
    grad_clip: float = 100.0
    seed: int = 0
    dtype: str = "float32"
    device: str = "cpu"
    threads: int | None = None
    eval_samples: int = 16384
    checkpoint_seconds: float = 60.0

    def __post_init__(self) -> None:
        def need(ok: bool, name: str, allowed: str) -> None:
            if not ok:
                raise ValueError(f"{name} must be {allowed}, got {getattr(self, name)!r}")

        self.beta = parse_coupling(self.beta, "beta")
        need(isinstance(self.d, int) and self.d in (1, 2, 3), "d", "1, 2 or 3")
        need(isinstance(self.L, int) and self.L >= 2 and not self.L & (self.L - 1), "L", "a power of two >= 2")
        need(self.arch in ARCHITECTURES, "arch", f"one of {ARCHITECTURES}")
        need(self.depth is None or (isinstance(self.depth, int) and self.depth >= 1), "depth", "an integer >= 1")
        need(isinstance(self.n_couplings, int) and self.n_couplings >= 1, "n_couplings", "an integer >= 1")
        self.hidden = list(self.hidden)
        need(all(isinstance(h, int) and h >= 1 for h in self.hidden), "hidden", "a list of integers >= 1")
        need(self.s_max > 0, "s_max", "> 0")
        need(isinstance(self.linear, bool), "linear", "true or false")
        need(isinstance(self.elementwise, bool), "elementwise", "true or false")
        need(self.min_eigenvalue > 0, "min_eigenvalue", "> 0")
        need(isinstance(self.steps, int) and self.steps >= 1, "steps", "an integer >= 1")
        need(isinstance(self.batch, int) and self.batch >= 2, "batch", "an integer >= 2")
        need(0 < self.lr < 1, "lr", "in (0, 1)")
        need(0 <= self.lr_final <= self.lr, "lr_final", "in [0, lr]")
        need(self.grad_clip >= 0, "grad_clip", ">= 0 (0 disables clipping)")
        need(isinstance(self.seed, int) and self.seed >= 0, "seed", "an integer >= 0")
        need(self.dtype in DTYPES, "dtype", f"one of {tuple(DTYPES)}")
        need(self.threads is None or (isinstance(self.threads, int) and self.threads >= 1), "threads", ">= 1")
        need(isinstance(self.eval_samples, int) and self.eval_samples >= 2, "eval_samples", "an integer >= 2")
        need(self.checkpoint_seconds > 0, "checkpoint_seconds", "> 0")
        try:
            device = torch.device(self.device)
        except RuntimeError:
            raise ValueError(f"device must be 'cpu' or 'cuda[:n]', got {self.device!r}") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {self.device!r} requested but this torch has no CUDA device")
        # the architecture must fit the lattice
        layer_specs(Lattice.square(self.L, self.d), self.arch, self.depth)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def model_dict(self) -> dict:
        return {k: getattr(self, k) for k in MODEL_KEYS}


class NonFiniteLoss(RuntimeError):
    """Training produced a NaN or infinite loss or gradient."""


def build_target(cfg: FlowTrainConfig) -> RelaxedIsing:
    return RelaxedIsing(Lattice.square(cfg.L, cfg.d), cfg.beta, min_eigenvalue=cfg.min_eigenvalue)


def build_flow(cfg: FlowTrainConfig) -> Flow:
    hierarchy = Hierarchy(
        Lattice.square(cfg.L, cfg.d), cfg.arch, cfg.depth, cfg.n_couplings, tuple(cfg.hidden),
        cfg.shared, cfg.s_max, cfg.linear, cfg.elementwise,
    )
    return Flow(hierarchy, cfg.symmetrize)


@torch.no_grad()
def variational_free_energy(
    flow: Flow, target, n_samples: int, batch: int = 4096, generator: torch.Generator | None = None
) -> Estimate:
    """``F_q = E_q[ln q(x) - ln pi(x)]`` (Eq. 3) on ``n_samples`` fresh independent samples, with
    its standard error. Samples are iid, so ``tau_int = 1/2``."""
    values = []
    remaining = n_samples
    while remaining > 0:
        n = min(batch, remaining)
        x, log_q = flow.sample_and_log_prob(n, generator)
        values.append((log_q - target.log_prob_unnormalized(x)).double().cpu())
        remaining -= n
    f = torch.cat(values)
    var = float(f.var()) if len(f) > 1 else math.nan
    return Estimate(float(f.mean()), math.sqrt(var / len(f)), var, 0.5, len(f))


class Trainer:
    """A flow, its target and optimizer state; :meth:`step` does one Adam step on Eq. 5."""

    def __init__(self, cfg: FlowTrainConfig, target=None) -> None:
        """``target`` (a :class:`deeprg.models.relaxed.Target` module over the config's lattice)
        defaults to the relaxed Ising model of the config."""
        self.cfg = cfg
        self.device = torch.device(cfg.device)
        dtype = DTYPES[cfg.dtype]
        if cfg.threads is not None:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)  # parameter initialization
        self.target = (build_target(cfg) if target is None else target).to(self.device)
        self.flow = build_flow(cfg).to(device=self.device, dtype=dtype)
        self.exact_ln_z = self.target.exact_ln_z
        self.optimizer = torch.optim.Adam(self.flow.parameters(), lr=cfg.lr)
        ratio = cfg.lr_final / cfg.lr

        def cosine(step: int) -> float:
            frac = min(step / cfg.steps, 1.0)
            return ratio + (1.0 - ratio) * 0.5 * (1.0 + math.cos(math.pi * frac))

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, cosine)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(cfg.seed)
        self.step_count = 0
        self.history: list[dict[str, float]] = []
        self.wall_seconds = 0.0

    @property
    def exact_free_energy(self) -> float | None:
        return None if self.exact_ln_z is None else -self.exact_ln_z

    def step(self) -> dict[str, float]:
        """One optimization step; returns the history record. Raises :class:`NonFiniteLoss`
        (leaving the parameters untouched) if the loss or the gradient is not finite."""
        t0 = time.perf_counter()
        x, log_q = self.flow.sample_and_log_prob(self.cfg.batch, self.generator)
        f = log_q - self.target.log_prob_unnormalized(x)
        loss = f.mean()
        self.optimizer.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):
            raise NonFiniteLoss(f"non-finite loss {loss.item()} at step {self.step_count + 1}")
        loss.backward()
        clip = self.cfg.grad_clip if self.cfg.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.flow.parameters(), clip)
        if not torch.isfinite(grad_norm):
            raise NonFiniteLoss(f"non-finite gradient at step {self.step_count + 1}")
        self.optimizer.step()
        self.scheduler.step()
        self.step_count += 1
        self.wall_seconds += time.perf_counter() - t0
        record = {
            "step": self.step_count,
            "loss": float(loss.detach()),
            "error": float(f.detach().std() / math.sqrt(len(f))),
            "lr": self.optimizer.param_groups[0]["lr"],
            "seconds": self.wall_seconds,
        }
        if self.exact_free_energy is not None:
            record["gap"] = record["loss"] - self.exact_free_energy
            record["relative_error"] = record["gap"] / abs(self.exact_free_energy)
        self.history.append(record)
        return record

    def train(
        self,
        until_step: int | None = None,
        on_step: Callable[[dict[str, float]], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        checkpoint: Path | None = None,
    ) -> None:
        """Run steps up to ``until_step`` (default ``cfg.steps``), saving to ``checkpoint`` every
        ``cfg.checkpoint_seconds`` and at the end, or when ``should_stop()`` turns true (checked
        between steps). On a non-finite loss the last saved checkpoint is kept and
        :class:`NonFiniteLoss` propagates."""
        until = self.cfg.steps if until_step is None else until_step
        last_save = time.monotonic()
        while self.step_count < until:
            record = self.step()
            if on_step is not None:
                on_step(record)
            stop = should_stop is not None and should_stop()
            if checkpoint is not None and (
                stop or self.step_count == until or time.monotonic() - last_save > self.cfg.checkpoint_seconds
            ):
                self.save(checkpoint)
                last_save = time.monotonic()
            if stop:
                return

    # ---- checkpoints ----------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "config": json.dumps(self.cfg.to_dict()),
            "flow": self.flow.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "generator": self.generator.get_state(),
            "step": self.step_count,
            "wall_seconds": self.wall_seconds,
            "history": self.history,
        }

    def save(self, path: str | Path) -> None:
        """Write the checkpoint atomically (tensors and plain containers only)."""
        save_checkpoint(path, self.state_dict())

    def load(self, path: str | Path) -> None:
        """Restore the state saved by :meth:`save`; the model-defining config must match."""
        state = load_checkpoint(path)
        saved = FlowTrainConfig(**json.loads(state["config"]))
        detail = config_mismatch(saved.model_dict(), self.cfg.model_dict(), MODEL_KEYS)
        if detail:
            raise CheckpointMismatch(f"checkpoint {str(path)!r} is for another model ({detail})")
        self.flow.load_state_dict(state["flow"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["generator"])
        self.step_count = int(state["step"])
        self.wall_seconds = float(state["wall_seconds"])
        self.history = list(state["history"])


def load_checkpoint(path: str | Path) -> dict:
    """Load a flow checkpoint without executing code (``weights_only=True``)."""
    return _load_checkpoint(path, CHECKPOINT_FORMAT, "flow")




def write_run_config(run_dir: str | Path, cfg: FlowTrainConfig, **extra) -> None:
    """Write ``run_dir/config.json`` (the directory must exist): the run format, the resolved
    config, provenance (deeprg version, git revision, time) and ``extra`` keys; :func:`load_run`
    reads it back together with ``run_dir/checkpoint.pt`` (:meth:`Trainer.save`)."""
    write_json(Path(run_dir) / CONFIG_NAME, {"format": RUN_FORMAT, **cfg.to_dict(), **run_provenance(), **extra})


def load_run(run_dir: str | Path, device: str | None = None, threads: int | None = None) -> Trainer:
    """The trainer of a run directory written by ``deeprg flow train``, restored from its
    checkpoint. Raises :class:`CheckpointMismatch` naming what is missing or incompatible."""
    run_dir = Path(run_dir)
    config_path, checkpoint = run_dir / CONFIG_NAME, run_dir / CHECKPOINT_NAME
    if not run_dir.is_dir():
        raise CheckpointMismatch(f"run directory {str(run_dir)!r} does not exist")
    for path in (config_path, checkpoint):
        if not path.exists():
            raise CheckpointMismatch(f"run directory {str(run_dir)!r} is incomplete: {path.name} is missing")
    try:
        saved = json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointMismatch(f"{str(config_path)!r} is not valid JSON ({err})") from None
    if not isinstance(saved, dict) or saved.get("format") != RUN_FORMAT:
        found = saved.get("format") if isinstance(saved, dict) else None
        raise CheckpointMismatch(
            f"{str(config_path)!r} was written by an incompatible deeprg version (run format {found!r}, "
            f"this version {deeprg.__version__} reads {RUN_FORMAT!r})")
    known = {f.name for f in dataclasses.fields(FlowTrainConfig)}
    values = {k: v for k, v in saved.items() if k in known}
    if device is not None:
        values["device"] = device
    if threads is not None:
        values["threads"] = threads
    try:
        cfg = FlowTrainConfig(**values)
    except (TypeError, ValueError) as err:
        raise CheckpointMismatch(f"{str(config_path)!r} is not a usable flow config ({err})") from None
    trainer = Trainer(cfg)
    trainer.load(checkpoint)
    return trainer
