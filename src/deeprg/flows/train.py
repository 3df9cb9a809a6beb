"""Training a NeuralRG flow by the variational free energy (Li & Wang Eqs. 3-5).

The loss is the reverse KL up to the constant ``ln Z``::

    F_q = E_{z ~ p} [ ln p(z) - ln|det dg/dz| - ln pi(g(z)) ] >= -ln Z,       (Eq. 5)

estimated on a batch with the reparametrization trick and minimized with Adam under a cosine
learning-rate schedule; or (``objective``) the forward KL ``-E_pi[ln q]`` on samples of ``pi``, or
the mixture ``(1 - forward_weight) F_q + forward_weight (-E_pi[ln q])``
(:mod:`deeprg.flows.objectives`). With ``diagnostics_every = k > 0`` every k-th step also logs
the reverse effective sample size and the Pareto tail index of the batch's importance weights
and the flow's own (unweighted) structure factor next to the reference value. :class:`Trainer` owns the flow, the target, the optimizer and the random
generator, so that a checkpoint restores a run exactly (same seed, same numbers, interrupted or
not). Numerical work only: files are written by :mod:`deeprg.runs` through :meth:`Trainer.save`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from torch import Tensor

from deeprg import distributed
from deeprg.config import (
    DTYPE_NAMES,
    ConfigError,
    check_types,
    cosine_factor,
    need,
    resolve_device,
    torch_dtype,
)
from deeprg.flows.flow import Flow
from deeprg.flows.estimators import pareto_k
from deeprg.flows.hierarchy import ARCHITECTURES, Hierarchy, layer_specs
from deeprg.flows.objectives import OBJECTIVES, PI_SOURCES, LatentHMCSource, ReferenceSource, forward_nll
from deeprg.lattice import Lattice
from deeprg.mc.stats import Estimate
from deeprg.models.ising import parse_coupling
from deeprg.models.relaxed import RelaxedIsing
from deeprg.runs import (CheckpointMismatch, RunDir, config_mismatch, restore_generator, save_checkpoint,
                         saved_device_type)
from deeprg.runs import load_checkpoint as _load_checkpoint
from deeprg.training import NonFiniteLoss, TrainerBase

__all__ = [
    "CheckpointMismatch",
    "FlowTrainConfig",
    "NonFiniteLoss",
    "Trainer",
    "load_run",
    "variational_free_energy",
]

#: Config keys that define the model; a checkpoint is usable only if they all agree.
MODEL_KEYS = ("L", "d", "beta", "min_eigenvalue", "arch", "depth", "n_couplings", "hidden", "kernel", "spline_bins",
              "shared", "s_max", "linear", "elementwise", "symmetrize", "dtype")
#: Format of a checkpoint file.
CHECKPOINT_FORMAT = "deeprg.flow-checkpoint/1"
#: Entries of a checkpoint (besides ``format``) and their types.
CHECKPOINT_SCHEMA = {"config": str, "flow": dict, "optimizer": dict, "scheduler": dict, "generator": torch.Tensor,
                     "step": int, "wall_seconds": float, "history": list, "pi_source": dict}


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
    #: Coupling conditioners: 1 = an MLP on the block's own variables (Li & Wang); an odd k > 1 =
    #: a k^d convolution over the grid of blocks, so each block also sees its neighbours.
    kernel: int = 1
    #: 0 = affine couplings (Li & Wang); K >= 2 = a rational-quadratic spline of K bins in each
    #: coupling (Durkan et al. 2019), which can bend a conditional into two peaks.
    spline_bins: int = 0
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
    #: torch CPU threads (None: torch's default, one per core). One by default: the main job runs as
    #: fast on one thread as on two when alone, and 4.6x faster beside one busy process
    #: (benchmarks/results/cli.md).
    threads: int | None = 1
    eval_samples: int = 16384
    checkpoint_seconds: float = 60.0
    #: ``reverse`` (Eq. 5), ``forward`` (-E_pi[ln q]) or ``mixture`` of the two.
    objective: str = "reverse"
    #: Weight lambda of the forward KL in the mixture.
    forward_weight: float = 0.5
    #: Samples of pi for the forward KL: the target's exact ``reference`` sampler (pools of
    #: ``pi_pool``) or latent ``hmc`` chains run alongside (``batch`` chains, ``hmc_moves``
    #: transitions of ``hmc_leapfrog`` steps per training step).
    pi_source: str = "reference"
    pi_pool: int = 16384
    hmc_moves: int = 1
    hmc_leapfrog: int = 5
    #: Log reverse ESS, tail index and the flow's structure factor every this many steps (0: off).
    diagnostics_every: int = 0
    #: Run directory of a trained flow on an ``L/2`` (or ``L``) lattice to start from
    #: (:meth:`~deeprg.flows.hierarchy.Hierarchy.initialize_from`); None: random initialization.
    init_from: str | None = None

    #: Keys a resumed run may change; the others define the run.
    RESUMABLE: ClassVar[tuple[str, ...]] = ("steps", "threads", "device", "eval_samples", "checkpoint_seconds",
                                            "diagnostics_every")

    def __post_init__(self) -> None:
        check_types(self)
        self.beta = parse_coupling(self.beta, "beta")
        need(self, self.d in (1, 2, 3), "d", "1, 2 or 3")
        need(self, self.L >= 2 and not self.L & (self.L - 1), "L", "a power of two >= 2")
        need(self, self.arch in ARCHITECTURES, "arch", f"one of {ARCHITECTURES}")
        need(self, self.depth is None or self.depth >= 1, "depth", "an integer >= 1")
        need(self, self.n_couplings >= 1, "n_couplings", "an integer >= 1")
        self.hidden = list(self.hidden)
        need(self, len(self.hidden) >= 1 and all(h >= 1 for h in self.hidden), "hidden",
             "a non-empty list of integers >= 1")
        need(self, self.kernel >= 1 and self.kernel % 2 == 1, "kernel", "an odd integer >= 1")
        need(self, self.spline_bins == 0 or self.spline_bins >= 2, "spline_bins", "0 (affine) or an integer >= 2")
        need(self, self.kernel == 1 or self.shared, "kernel", "1 when shared = false (a convolution shares weights)")
        need(self, self.s_max > 0, "s_max", "> 0")
        # the target's own bound: 1e-10 x the largest |eigenvalue| 2 d K of the coupling matrix
        floor = 1e-10 * max(1.0, 2 * self.d * self.beta)
        need(self, self.min_eigenvalue > floor, "min_eigenvalue", f"a finite number > {floor:.3g}")
        need(self, self.steps >= 1, "steps", "an integer >= 1")
        need(self, self.batch >= 2, "batch", "an integer >= 2")
        need(self, 0 < self.lr < 1, "lr", "in (0, 1)")
        need(self, 0 <= self.lr_final <= self.lr, "lr_final", "in [0, lr]")
        need(self, self.grad_clip >= 0, "grad_clip", ">= 0 (0 disables clipping)")
        need(self, 0 <= self.seed < 2**64, "seed", "an integer in [0, 2^64)")
        need(self, self.dtype in DTYPE_NAMES, "dtype", f"one of {DTYPE_NAMES}")
        need(self, self.threads is None or self.threads >= 1, "threads", "an integer >= 1")
        need(self, self.eval_samples >= 2, "eval_samples", "an integer >= 2")
        need(self, self.checkpoint_seconds > 0, "checkpoint_seconds", "> 0")
        need(self, self.objective in OBJECTIVES, "objective", f"one of {OBJECTIVES}")
        need(self, 0 < self.forward_weight < 1, "forward_weight", "in (0, 1)")
        need(self, self.pi_source in PI_SOURCES, "pi_source", f"one of {PI_SOURCES}")
        uses_pool = self.objective != "reverse" and self.pi_source == "reference"
        need(self, self.pi_pool >= (self.batch if uses_pool else 1), "pi_pool",
             f"an integer >= batch = {self.batch}" if uses_pool else "an integer >= 1")
        need(self, self.hmc_moves >= 1, "hmc_moves", "an integer >= 1")
        need(self, self.hmc_leapfrog >= 1, "hmc_leapfrog", "an integer >= 1")
        need(self, self.diagnostics_every >= 0, "diagnostics_every", "an integer >= 0 (0: off)")
        resolve_device(self.device)
        # the architecture must fit the lattice
        try:
            layer_specs(Lattice.square(self.L, self.d), self.arch, self.depth)
        except ValueError as err:
            raise ConfigError(str(err)) from None

    def memory_estimate(self) -> tuple[float, str]:
        """Estimated peak memory of training in bytes, and the keys that drive it: the relaxed
        target (``O(N)``, ``N = L^d``: its FFT eigenvalues and their casts, and the complex FFT
        of the batch with its gradient; no ``N x N`` matrix, see
        :class:`~deeprg.models.relaxed.RelaxedIsing`), the parameters with their gradients and
        Adam moments, and the activations of one batch kept for the backward pass. The last
        dominates: counted with ``torch.autograd.graph.saved_tensors_hooks``, the autograd graph
        keeps per sample about 4 numbers per hidden unit of every coupling's MLP on every block,
        3 per block variable of every coupling (inputs, scales, shifts), 9 per block variable of
        every layer (the block-ordered field and its pieces) and about 20 per site (the field at
        every level, the target's FFTs); the coefficients below round these up
        (``tests/test_flow_training.py`` checks the estimate against that count)."""
        n = self.L**self.d
        k = 2**self.d
        size = 4 if self.dtype == "float32" else 8
        specs = layer_specs(Lattice.square(self.L, self.d), self.arch, self.depth) if n <= 2**22 else None
        n_layers = len(specs) if specs is not None else 2 * self.d * int(math.log2(self.L))
        blocks = [len(sp.blocks) for sp in specs] if specs is not None else [n // k] * n_layers
        widths = [k // 2, *self.hidden, k]
        per_mlp = sum(a * b + b for a, b in zip(widths[:-1], widths[1:]))
        mlps = sum(self.n_couplings * (1 if self.shared else b) for b in blocks)
        params = 4.0 * per_mlp * mlps * size
        per_sample = (sum(blocks) * (4.5 * sum(self.hidden) * self.n_couplings + 4.0 * k * self.n_couplings + 10.0 * k)
                      + 24.0 * n)
        activations = self.batch * per_sample * size
        target = 8.0 * n * 8 + 4.0 * self.batch * n * size
        return target + params + activations, "L, batch, hidden, n_couplings"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def model_dict(self) -> dict:
        return {k: getattr(self, k) for k in MODEL_KEYS}


def build_target(cfg: FlowTrainConfig) -> RelaxedIsing:
    return RelaxedIsing(Lattice.square(cfg.L, cfg.d), cfg.beta, min_eigenvalue=cfg.min_eigenvalue)


def build_flow(cfg: FlowTrainConfig) -> Flow:
    hierarchy = Hierarchy(
        Lattice.square(cfg.L, cfg.d), cfg.arch, cfg.depth, cfg.n_couplings, tuple(cfg.hidden),
        cfg.shared, cfg.s_max, cfg.linear, cfg.elementwise, cfg.kernel, cfg.spline_bins,
    )
    return Flow(hierarchy, cfg.symmetrize)


def evaluation_batch(n_sites: int) -> int:
    """Fields per batch of an evaluation without gradients: 4096, fewer on lattices above 32x32
    so that a batch holds at most 2^22 sites (256 fields at 128x128)."""
    return max(1, min(4096, 2**22 // n_sites))


@torch.no_grad()
def variational_free_energy(
    flow: Flow, target, n_samples: int, batch: int | None = None, generator: torch.Generator | None = None
) -> Estimate:
    """``F_q = E_q[ln q(x) - ln pi(x)]`` (Eq. 3) on ``n_samples`` fresh independent samples, with
    its standard error, ``batch`` fields at a time (default :func:`evaluation_batch`). Samples
    are iid, so ``tau_int = 1/2``."""
    batch = evaluation_batch(flow.n_sites) if batch is None else batch
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


class _Objective(torch.nn.Module):
    """The differentiable part of one training step as a module, so that
    ``DistributedDataParallel`` can wrap it: this process's rows of the batch's flow samples,
    their ``ln q - ln pi`` and the summed ``-ln q`` of samples ``x_pi`` of ``pi``."""

    def __init__(self, flow: Flow, target) -> None:
        super().__init__()
        self.flow = flow
        self.target = target

    def forward(self, n: int, generator: torch.Generator, rows: slice, x_pi: Tensor | None,
                reverse_grad: bool) -> tuple[Tensor, Tensor, Tensor | None]:
        with torch.set_grad_enabled(reverse_grad):
            x, log_q = self.flow.sample_and_log_prob(n, generator, rows)
            f = log_q - self.target.log_prob_unnormalized(x)
        nll_sum = None if x_pi is None else forward_nll(self.flow, x_pi) * len(x_pi)
        return x, f, nll_sum


class Trainer(TrainerBase):
    """A flow, its target and optimizer state; :meth:`step` does one Adam step on Eq. 5 (the
    unit of :meth:`~deeprg.training.TrainerBase.train`).

    **Data parallel.** On ``W`` processes (``world.size > 1``, launched by ``torchrun``) the
    flow is wrapped in ``DistributedDataParallel`` (gloo on CPU, NCCL on GPUs). The batch stays
    ``cfg.batch`` whatever ``W``: every process draws the whole batch's latents (and random
    signs) from the one seeded generator and keeps its rows ``world.share(batch)``
    (:meth:`Flow.sample_and_log_prob` with ``rows``), so 1 and ``W`` processes follow the same
    trajectory up to the order of floating-point reductions, and checkpoints (written by rank 0)
    do not depend on ``W``: a run may resume on another number of processes. Losses are summed
    per process and scaled by ``W / batch`` so that DDP's average of the gradients is the
    gradient of the batch mean; the logged loss and error are reduced over all processes in
    float64, and a non-finite value on any process stops every process."""

    def __init__(self, cfg: FlowTrainConfig, target=None, world: distributed.World | None = None) -> None:
        """``target`` (a :class:`deeprg.models.relaxed.Target` module over the config's lattice)
        defaults to the relaxed Ising model of the config. ``world`` (default: the one
        :func:`deeprg.distributed.init` joined) makes the trainer data-parallel: see the class
        docstring."""
        self.cfg = cfg
        self.world = distributed.current() if world is None else world
        self.device = distributed.run_device(resolve_device(cfg.device), self.world)
        dtype = torch_dtype(cfg.dtype)
        torch.set_num_threads(cfg.threads if cfg.threads is not None else distributed.default_threads(self.world))
        if self.world.distributed:
            self.world.require_at_most(cfg.batch, "batch")
            if cfg.objective != "reverse" and cfg.pi_source == "hmc":
                raise ConfigError("pi_source: latent HMC chains ('hmc') run on one process only; use pi_source = "
                                  "'reference' or objective = 'reverse' on several processes")
        #: This process's rows of every batch (all rows on one process).
        self.rows = self.world.share(cfg.batch)
        torch.manual_seed(cfg.seed)  # parameter initialization
        self.target = (build_target(cfg) if target is None else target).to(self.device)
        self.flow = build_flow(cfg).to(device=self.device, dtype=dtype)
        if cfg.init_from is not None:
            self._initialize_from(cfg.init_from)
        self._parallel = _Objective(self.flow, self.target)
        if self.world.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self._parallel = torch.nn.parallel.DistributedDataParallel(
                self._parallel, device_ids=ids, forward_sync_buffers=False)
        self.exact_ln_z = self.target.exact_ln_z
        self.optimizer = torch.optim.Adam(self.flow.parameters(), lr=cfg.lr)
        ratio = cfg.lr_final / cfg.lr
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer,
                                                           lambda step: cosine_factor(step, cfg.steps, ratio))
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(cfg.seed)
        self.step_count = 0
        self.history: list[dict[str, float]] = []
        self.wall_seconds = 0.0
        self.pi_source = None if cfg.objective == "reverse" else self._pi_source()
        self._diagnostic_generator: torch.Generator | None = None
        self._reference_structure_factor: tuple[float, float] | None = None

    def _initialize_from(self, run_dir: str) -> None:
        smaller = load_run(run_dir, device="cpu", threads=self.cfg.threads)
        try:
            self.flow.hierarchy.initialize_from(smaller.flow.hierarchy)
        except ValueError as err:
            raise ConfigError(f"init_from: {err}") from None

    def _pi_source(self):
        cfg = self.cfg
        if cfg.pi_source == "hmc":
            gen = torch.Generator(device=self.device).manual_seed(cfg.seed + 2)
            return LatentHMCSource(cfg.batch, cfg.hmc_moves, cfg.hmc_leapfrog, generator=gen)
        from deeprg.models.relaxed import reference_sampler

        sample = reference_sampler(self.target)
        if sample is None:
            raise ConfigError(f"pi_source: the target {type(self.target).__name__} has no reference sampler; use "
                              "pi_source = 'hmc' (latent HMC chains run alongside the training)")
        return ReferenceSource(sample, cfg.seed, cfg.pi_pool)

    @property
    def position(self) -> int:
        return self.step_count

    @property
    def total(self) -> int:
        return self.cfg.steps

    @property
    def exact_free_energy(self) -> float | None:
        return None if self.exact_ln_z is None else -self.exact_ln_z

    def step(self) -> dict[str, float]:
        """One optimization step; returns the history record. Raises :class:`NonFiniteLoss`
        (leaving the parameters untouched) if the loss, the gradient or ``ln q - ln pi`` of the
        batch's flow samples is not finite (on any process)."""
        t0 = time.perf_counter()
        cfg, world = self.cfg, self.world
        x_pi = None
        if cfg.objective != "reverse":
            x_pi = self.pi_source.draw(self.flow, self.target, cfg.batch)
            if isinstance(self.pi_source, ReferenceSource):
                x_pi = x_pi[self.rows]
        # this process's rows; the sums are scaled so that DDP's average over processes is the
        # gradient of the mean over the whole batch
        x, f, nll_sum = self._parallel(cfg.batch, self.generator, self.rows, x_pi, cfg.objective != "forward")
        scale = world.size / cfg.batch
        extra: dict[str, float] = {}
        if cfg.objective == "reverse":
            loss = f.sum() * scale
        else:
            extra["forward_nll"] = world.all_sum([float(nll_sum.detach())]).item() / cfg.batch
            if isinstance(self.pi_source, LatentHMCSource):
                extra["hmc_acceptance"] = self.pi_source.acceptance
            nll = nll_sum * scale
            loss = nll if cfg.objective == "forward" else (1 - cfg.forward_weight) * f.sum() * scale + cfg.forward_weight * nll
        self.optimizer.zero_grad(set_to_none=True)
        f_detached = f.detach()
        # the batch's sums travel while the backward pass runs (one wait per step for the other
        # processes, in the gradient all-reduce); a non-finite value stops before the Adam step
        sums = world.all_sum_start([float(f_detached.double().sum()), float(f_detached.double().pow(2).sum()),
                                    float(not torch.isfinite(loss)), float(not torch.isfinite(f_detached).all())])
        loss.backward()
        sums = sums().tolist()
        if sums[2] > 0:
            raise NonFiniteLoss(f"non-finite loss at step {self.step_count + 1}")
        if sums[3] > 0:  # the forward objective does not see the flow's own samples
            raise NonFiniteLoss(f"non-finite ln q - ln pi on the flow's own samples at step {self.step_count + 1}: "
                                "the flow has diverged")
        clip = self.cfg.grad_clip if self.cfg.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.flow.parameters(), clip)
        if not torch.isfinite(grad_norm):  # gradients are averaged: the same on every process
            raise NonFiniteLoss(f"non-finite gradient at step {self.step_count + 1}")
        self.optimizer.step()
        self.scheduler.step()
        self.step_count += 1
        self.wall_seconds += time.perf_counter() - t0
        n = cfg.batch
        mean = sums[0] / n
        variance = max(sums[1] / n - mean * mean, 0.0) * n / (n - 1)
        record = {
            "step": self.step_count,
            "loss": mean,
            "error": math.sqrt(variance / n),
            **extra,
            "lr": self.optimizer.param_groups[0]["lr"],
            "seconds": self.wall_seconds,
        }
        if self.exact_free_energy is not None:
            record["gap"] = record["loss"] - self.exact_free_energy
            record["relative_error"] = record["gap"] / abs(self.exact_free_energy)
        if cfg.diagnostics_every and self.step_count % cfg.diagnostics_every == 0:
            counts = world.counts(cfg.batch)  # the rows of every process: its share of the batch
            x_all, log_w = world.all_gather_tensor(x.detach(), counts), world.all_gather_tensor(-f_detached, counts)
            record.update(self.diagnostics(x_all, log_w))
        self.history.append(record)
        return record

    @torch.no_grad()
    def diagnostics(self, x: Tensor, log_w: Tensor) -> dict[str, float]:
        """Trust diagnostics of flow samples ``x`` ``(batch, *event)`` with log importance weights
        ``log_w = ln pi - ln q``: the reverse ESS fraction ``(sum w)^2 / (n sum w^2)``, the Pareto
        tail index of the weights (NaN for a batch under 25), and for an Ising target the flow's own (unweighted) structure
        factor ``<(sum_i s_i)^2> / N^2`` of spins ``s ~ pi(s|x)`` with its reference value (exact
        or Wolff Monte Carlo, :func:`deeprg.mc.reference.ising_reference`). Uses its own random
        generator, so the training's random stream does not depend on the diagnostics."""
        lw = log_w.double()
        ess = float(torch.exp(2 * torch.logsumexp(lw, 0) - torch.logsumexp(2 * lw, 0))) / len(lw)
        out = {"reverse_ess": ess, "pareto_k": pareto_k(lw) if len(lw) >= 25 else math.nan}
        if hasattr(self.target, "sample_spins"):
            if self._diagnostic_generator is None:
                self._diagnostic_generator = torch.Generator(device=self.device).manual_seed(self.cfg.seed + 1)
                from deeprg.mc.reference import ising_reference

                ref = ising_reference(self.target.lattice, self.cfg.beta, seed=self.cfg.seed)["structure_factor"]
                self._reference_structure_factor = (ref.mean, ref.error)
            s = self.target.sample_spins(x, self._diagnostic_generator).double()
            n = s[0].numel()
            out["structure_factor"] = float((s.reshape(len(s), -1).sum(1) ** 2).mean() / n**2)
            out["reference_structure_factor"] = self._reference_structure_factor[0]
        return out

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
            "pi_source": {} if self.pi_source is None else self.pi_source.state_dict(),
        }

    def save(self, path: str | Path) -> None:
        """Write the checkpoint atomically (tensors and plain containers only); on several
        processes only rank 0 writes (every rank holds the same state)."""
        if self.world.main:
            save_checkpoint(path, self.state_dict())

    def load(self, path: str | Path) -> None:
        """Restore the state saved by :meth:`save`; the model-defining config must match. The
        state moves to :attr:`device`. A checkpoint written on another device type (a GPU run
        resumed on the CPU, or the reverse) holds another kind of generator's state: the noise
        (and latent-HMC) generators then restart from the seed and the step, with a
        ``RuntimeWarning`` (:func:`deeprg.runs.restore_generator`); on the same device type
        the run continues exactly."""
        state = load_checkpoint(path)
        try:
            config = json.loads(state["config"])
            if not isinstance(config, dict):
                raise TypeError(f"a JSON object, not {type(config).__name__}")
            # where a run computed does not define its model: a GPU run loads on a machine without one
            saved = FlowTrainConfig(**{**config, "device": "cpu"})
        except (TypeError, ValueError, RecursionError) as err:
            raise CheckpointMismatch(f"{str(path)!r} holds an unusable flow config ({err})") from None
        saved_type = saved_device_type(config, path)
        detail = config_mismatch(saved.model_dict(), self.cfg.model_dict(), MODEL_KEYS)
        if detail:
            raise CheckpointMismatch(f"checkpoint {str(path)!r} is for another model ({detail})")
        try:
            self.flow.load_state_dict(state["flow"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        except (RuntimeError, ValueError, KeyError, TypeError) as err:
            raise CheckpointMismatch(f"{str(path)!r} does not fit its config ({err})") from None
        step = int(state["step"])
        restore_generator(self.generator, state["generator"], saved_type, [self.cfg.seed, step, 0], path,
                          "the flow's noise generator")
        if self.pi_source is not None:

            def restore(generator: torch.Generator, saved_state: Tensor) -> None:
                restore_generator(generator, saved_state, saved_type, [self.cfg.seed, step, 1], path,
                                  "the latent HMC chains' generator")

            try:
                self.pi_source.load_state_dict(state["pi_source"], restore)
            except CheckpointMismatch:  # from restore_generator: already says what
                raise
            except (KeyError, TypeError, ValueError, AttributeError) as err:
                raise CheckpointMismatch(f"{str(path)!r}: its pi-sample source state is unusable ({err})") from None
        self.step_count = step
        self.wall_seconds = float(state["wall_seconds"])
        self.history = list(state["history"])


def load_checkpoint(path: str | Path) -> dict:
    """Load a flow checkpoint without executing code (``weights_only=True``)."""
    return _load_checkpoint(path, CHECKPOINT_FORMAT, "flow", CHECKPOINT_SCHEMA)




def load_run(run_dir: str | Path, device: str | None = None, threads: int | None = None) -> Trainer:
    """The trainer of a run directory written by ``deeprg flow train``, restored from its
    checkpoint, optionally on another ``device`` or with another number of ``threads``. Raises
    :class:`CheckpointMismatch` naming what is missing or incompatible."""
    run = RunDir(run_dir, "flow")
    if not run.path.is_dir():
        raise CheckpointMismatch(f"run directory {str(run.path)!r} does not exist")
    cfg = run.load_config(FlowTrainConfig, device=device, threads=threads)
    if not run.checkpoint.exists():
        raise CheckpointMismatch(f"run directory {str(run.path)!r} is incomplete: {run.checkpoint.name} is missing")
    trainer = Trainer(cfg)
    with warnings.catch_warnings():
        # the commands that use a run draw from their own --seed: whether the training's
        # generators could continue on this device type does not matter to them
        warnings.filterwarnings("ignore", message="checkpoint .* was written on", category=RuntimeWarning)
        trainer.load(run.checkpoint)
    return trainer
