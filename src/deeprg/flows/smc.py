"""Sequential Monte Carlo (SMC) estimates of ``ln Z`` along a geometric path, with an adaptive
ladder, systematic resampling, batched HMC moves and error bars from independent replicas.

The path. A normalized reference density ``p0`` that can be sampled exactly and an unnormalized
target ``p0(z) e^{v(z)}`` with ``Z = int p0 e^v`` are joined by

    ln f_b(z) = ln p0(z) + b v(z),    0 = b_0 < b_1 < ... < b_T = 1,

so ``f_0 = p0`` (``Z_0 = 1``) and ``f_1`` is the target. Two uses:

* :func:`smc_from_flow` - in the latent space of a trained flow: ``p0 = N(0, 1)`` the flow's prior
  and ``v(z) = ln pi(g(z)) - ln q(g(z))`` its log importance weight
  (:func:`~deeprg.flows.annealing.latent_log_weight`, the symmetrized ``q`` for a symmetrized flow;
  ``p0 e^v`` integrates to ``Z`` in both cases, see :mod:`deeprg.flows.annealing`);
* :func:`smc_from_gaussian` - no flow: ``p0 = N(0, sigma^2 I)`` in the physical space and
  ``v(x) = ln pi(x) - ln p0(x)``, the baseline that shows what the flow buys.

The algorithm (Del Moral, Doucet & Jasra, JRSS B 68, 411 (2006); the adaptive form as in Zhou,
Johansen & Aston, J. Comput. Graph. Stat. 25, 701 (2016)). ``N`` particles ``z_i ~ p0`` with
normalized weights ``W_i = 1/N``, ``ln Z = 0``; then, until ``b = 1``:

1. **Next temperature.** The incremental weights of a step ``db`` are ``w_i = exp(db v(z_i))``; their
   conditional effective sample size

       CESS(db) = N (sum_i W_i w_i)^2 / sum_i W_i w_i^2    (in [1, N])

   decreases monotonically in ``db`` (``ln CESS = ln N + 2 K(db) - K(2 db)`` with ``K`` the
   convex cumulant generating function of ``v`` under ``W``). ``db`` is found by bisection so
   that ``CESS = cess_fraction N`` (or ``db = 1 - b`` if that still keeps ``CESS`` above it, so
   the ladder ends exactly at ``b = 1``).
2. **Reweight.** ``ln Z += ln sum_i W_i w_i`` and ``W_i <- W_i w_i / sum_j W_j w_j``: the product
   of the normalized-weight increments ``Z_{b'} / Z_b`` (unbiased for ``Z`` with fixed
   temperatures; the adaptive choice adds a bias of order ``1/N``).
3. **Resample** systematically (Kitagawa 1996; one uniform for all particles) when
   ``ESS = 1 / sum_i W_i^2`` falls below ``resample_below N``; then ``W_i = 1/N``.
4. **Move** (if ``b < 1``): ``n_moves`` HMC transitions (:func:`~deeprg.mc.hmc.leapfrog`,
   ``n_leapfrog`` steps, Metropolis test) that leave ``f_b`` invariant, all particles as one batch.
   Each particle's step is ``eps (1 +- jitter)`` (uniform). With ``pilot=True`` (the default)
   ``eps`` follows a schedule ``eps(b)`` frozen from a pilot run; with ``pilot=False`` it is
   multiplied by ``exp(ADAPTATION_RATE (a - target_acceptance))`` after every move of mean
   acceptance ``a``, carrying over from one temperature to the next.

The pilot. A step size chosen from the particles themselves keeps each move invariant (it is
fixed before the move) but correlates it with the particles, which biases ``ln Z`` by order
``1/N``; the pilot, an extra adaptive run on its own seed whose estimate is discarded, sets
``eps(b)`` (the step it used at its last temperature ``<= b``) for all ``R`` replicas instead.
Measured on the undertrained 4x4 flow of ``tests/test_estimator_coverage.py`` with 64 particles:
160 replicas adapting their own steps were low by 0.040(12), with steps fixed by hand by
0.014(12)-0.023(13), of which the Jensen bias below is 0.011-0.013; with the pilot and the
combination below, 38 of 40 estimates cover the exact ln Z, against 33 before.

Combining replicas. One run's ``Z`` (the product of the mean incremental weights) is unbiased for
a fixed ladder; its ``ln Z`` is biased low by about ``Var(ln Z) / 2`` (Jensen). The ``R``
independent replicas (seeds spawned from one :class:`numpy.random.SeedSequence`) are therefore
combined as ``ln Z = ln mean_r Z_r`` (Jensen bias ``Var / (2 R)``), with the delta-method error
``std_r(Z_r) / (sqrt(R) mean_r(Z_r))``; for a small spread this is the mean of the ``ln Z_r``
with error ``std / sqrt(R)``. Like annealed importance sampling, SMC cannot see what no particle
reaches: parts of the target that neither ``p0`` nor the HMC moves populate are missing; check by
doubling ``n_particles`` or ``n_moves``.

Several processes (``torchrun``): the replicas are independent, so they are shared out
(:meth:`deeprg.distributed.World.share`; replica ``r`` keeps its own seed wherever it runs) and
their results gathered; the pilot, one replica's work, runs on every process. Every process
returns the one-process estimate exactly.

Conventions: particles ``(n_particles, *event_shape)``, ``v`` and ``ln p0`` map them to
``(n_particles,)``; weights and ``ln Z`` are accumulated in float64 whatever the particles' dtype.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from deeprg.distributed import World, current
from deeprg.flows.annealing import latent_log_weight
from deeprg.flows.flow import Flow
from deeprg.mc.hmc import kinetic, leapfrog, metropolis_accept
from deeprg.mc.stats import Estimate

__all__ = ["SMCEstimate", "SMCReplica", "smc_from_flow", "smc_from_gaussian", "smc_ln_z"]

#: ``eps <- eps exp(ADAPTATION_RATE (acceptance - target_acceptance))`` after every HMC move of an
#: adaptive run (the pilot, or every replica with ``pilot=False``).
ADAPTATION_RATE = 1.0
#: Bisection steps for the next temperature (the increment is then known to 2^-60 of ``1 - b``).
BISECTION_STEPS = 60


@dataclass
class SMCReplica:
    """One SMC run with ``T`` temperatures.

    ``ln_z``: its estimate; ``betas`` ``(T + 1,)`` float64, from exactly 0 to exactly 1;
    ``cess`` ``(T,)``: ``CESS / N`` of each step's incremental weights (``cess_fraction`` except
    possibly the last); ``ess`` ``(T,)``: ``ESS / N`` right after each reweighting (before any
    resampling); ``resampled`` ``(T,)`` bool; ``acceptance`` and ``step_sizes``
    ``(T - 1, n_moves)``: mean acceptance probability and base step size of each HMC move (none
    after the last reweighting); ``cpu_seconds``: process CPU time of the run.
    """

    ln_z: float
    betas: Tensor
    cess: Tensor
    ess: Tensor
    resampled: Tensor
    acceptance: Tensor
    step_sizes: Tensor
    cpu_seconds: float

    @property
    def n_temperatures(self) -> int:
        return len(self.cess)

    @property
    def final_ess(self) -> float:
        """``ESS / N`` after the last reweighting (to ``b = 1``)."""
        return float(self.ess[-1])


@dataclass
class SMCEstimate:
    """``ln_z``: ``ln mean_r Z_r`` over the replicas with its delta-method error (``variance``: the
    sample variance of the replicas' ``ln Z``, ``n_samples = R``; module docstring); ``replicas``:
    the ``R`` runs; ``n_particles`` per replica; ``pilot``: the run that set the step sizes
    (``None`` without one; its ``ln Z`` is not used)."""

    ln_z: Estimate
    replicas: list[SMCReplica]
    n_particles: int
    pilot: SMCReplica | None = None

    @property
    def ln_z_replicas(self) -> Tensor:
        """``ln Z`` of each replica, ``(R,)`` float64."""
        return torch.tensor([r.ln_z for r in self.replicas], dtype=torch.float64)

    @property
    def n_temperatures(self) -> list[int]:
        return [r.n_temperatures for r in self.replicas]

    @property
    def final_ess(self) -> Tensor:
        """``ESS / N`` at ``b = 1`` of each replica, ``(R,)``."""
        return torch.tensor([r.final_ess for r in self.replicas], dtype=torch.float64)

    @property
    def acceptance(self) -> float:
        """Mean acceptance probability over all HMC moves of all replicas (``nan`` if none moved)."""
        acc = torch.cat([r.acceptance.flatten() for r in self.replicas])
        return float(acc.mean()) if len(acc) else math.nan

    @property
    def cpu_seconds(self) -> float:
        """Process CPU time of the replicas and the pilot."""
        return sum(r.cpu_seconds for r in self.replicas) + (self.pilot.cpu_seconds if self.pilot else 0.0)


class _Path:
    """``ln f_b = ln p0 + b v`` at a fixed ``b``, on a batch of particles."""

    def __init__(self, log_p0: Callable[[Tensor], Tensor], v: Callable[[Tensor], Tensor], b: float) -> None:
        self.log_p0, self.v, self.b = log_p0, v, b

    def evaluate(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(ln f_b(z), v(z), grad ln f_b(z))``, detached; shapes ``(n,)``, ``(n,)``, ``z.shape``."""
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            v = self.v(z)
            lp = self.log_p0(z) + self.b * v
            (grad,) = torch.autograd.grad(lp.sum(), z)
        return lp.detach(), v.detach(), grad.detach()

    def hmc_moves(self, z: Tensor, step_size: float, n_moves: int, n_leapfrog: int, jitter: float,
                  target_acceptance: float, generator: torch.Generator, adapt: bool = True
                  ) -> tuple[Tensor, Tensor, list[float], list[float], float]:
        """``n_moves`` HMC transitions of every particle ``z`` ``(n, *event_shape)``, each invariant
        for ``f_b``, adapting the base step after each move if ``adapt``. Returns the particles,
        their ``v``, the mean acceptance probability and base step size of each move, and the
        (adapted) step size."""
        n = z.shape[0]
        shape = (n,) + (1,) * (z.dim() - 1)
        lp, v, grad = self.evaluate(z)
        acceptance, used, end = [], [], {}

        def value_and_grad(x: Tensor) -> tuple[Tensor, Tensor]:
            value, end["v"], gradient = self.evaluate(x)  # leapfrog calls it last at its end point
            return value, gradient

        for _ in range(n_moves):
            u = torch.rand(n, generator=generator, device=z.device, dtype=z.dtype)
            step = (step_size * (1.0 + jitter * (2.0 * u - 1.0))).reshape(shape)
            p = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
            z_new, p_new, lp_new, grad_new = leapfrog(value_and_grad, z, p, grad, step, n_leapfrog)
            accept, prob, _ = metropolis_accept(-lp + kinetic(p), -lp_new + kinetic(p_new), z_new, generator)
            z = torch.where(accept.reshape(shape), z_new, z)
            lp, v = torch.where(accept, lp_new, lp), torch.where(accept, end["v"], v)
            grad = torch.where(accept.reshape(shape), grad_new, grad)
            used.append(step_size)
            acceptance.append(float(prob.mean()))
            if adapt:
                step_size *= math.exp(ADAPTATION_RATE * (acceptance[-1] - target_acceptance))
        return z, v, acceptance, used, step_size


def _logsumexp(a: np.ndarray) -> float:
    """``ln sum exp(a)`` of a finite float64 array (faster than scipy's on small arrays)."""
    m = a.max()
    return float(m + np.log(np.exp(a - m).sum()))


def _ln_cess(log_w: np.ndarray, v: np.ndarray, db: float) -> float:
    """``ln(CESS / N)`` of the increment ``db`` for normalized log weights ``log_w``."""
    return 2.0 * _logsumexp(log_w + db * v) - _logsumexp(log_w + 2.0 * db * v)


def _next_increment(log_w: np.ndarray, v: np.ndarray, room: float, cess_fraction: float) -> float:
    """The increment ``db`` in ``(0, room]`` with ``CESS(db) = cess_fraction N`` by bisection, or
    ``room`` if ``CESS(room)`` is still above it; the lower end of the final bracket (so that
    ``CESS >= cess_fraction N``), 0 if even the smallest increment tried falls below."""
    goal = math.log(cess_fraction)
    if _ln_cess(log_w, v, room) >= goal:
        return room
    lo, hi = 0.0, room
    for _ in range(BISECTION_STEPS):
        mid = 0.5 * (lo + hi)
        if _ln_cess(log_w, v, mid) >= goal:
            lo = mid
        else:
            hi = mid
    return lo


def _systematic_resample(log_w: np.ndarray, generator: torch.Generator) -> np.ndarray:
    """Indices ``(N,)`` of a systematic resampling of normalized log weights ``log_w`` ``(N,)``:
    particle ``i`` is copied once for each point ``(u + k) / N`` (``k = 0 .. N-1``, one
    ``u ~ U(0, 1)``) in ``[C_{i-1}, C_i)``, ``C`` the cumulative weights."""
    n = len(log_w)
    u = float(torch.rand((), generator=generator, device=generator.device, dtype=torch.float64))
    cdf = np.cumsum(np.exp(log_w))
    return np.minimum(np.searchsorted(cdf, (u + np.arange(n)) / n, side="right"), n - 1)


def _frozen_steps(pilot: SMCReplica) -> Callable[[float], float]:
    """``eps(b)``: the base step of the pilot's first move at its last temperature ``<= b`` (its
    first temperature's below that)."""
    betas = pilot.betas[1:1 + len(pilot.step_sizes)].numpy()
    steps = pilot.step_sizes[:, 0].numpy()

    def schedule(b: float) -> float:
        return float(steps[max(0, int(np.searchsorted(betas, b, side="right")) - 1)])

    return schedule


def _replica(sample_p0, log_p0, v, n_particles: int, generator: torch.Generator, cess_fraction: float,
             resample_below: float, n_moves: int, n_leapfrog: int, step_size: float, target_acceptance: float,
             jitter: float, min_increment: float, max_temperatures: int, callback,
             schedule: Callable[[float], float] | None = None) -> SMCReplica:
    """One SMC run (module docstring); see :func:`smc_ln_z` for the parameters. With a step
    ``schedule`` ``b -> eps`` the steps are frozen; without one they adapt."""
    start = time.process_time()
    z = sample_p0(n_particles, generator).detach()
    with torch.no_grad():
        v_z = v(z)
    n_bad = int((~torch.isfinite(v_z)).sum())
    if n_bad:
        raise FloatingPointError(f"v is not finite at {n_bad} of {n_particles} particles drawn from p0: the reference, "
                                 "the flow or the target returned inf/nan")
    log_w = np.full(n_particles, -math.log(n_particles))
    b, ln_z, eps = 0.0, 0.0, step_size
    betas, cess, ess, resampled, acceptance, step_sizes = [0.0], [], [], [], [], []
    while b < 1.0:
        if len(cess) == max_temperatures:
            raise ValueError(
                f"the SMC ladder reached max_temperatures = {max_temperatures} at b = {b:.6g}: use more particles, "
                "more HMC moves or leapfrog steps per temperature, a better flow or reference density, or a larger "
                "max_temperatures")
        v_np = v_z.double().cpu().numpy()
        db = _next_increment(log_w, v_np, 1.0 - b, cess_fraction)
        if db < 1.0 - b and db < min_increment:
            raise ValueError(
                f"the SMC ladder is stuck at b = {b:.6g} after {len(cess)} temperatures: an increment of "
                f"{min_increment:g} already drops the CESS below {cess_fraction:g} N (the weights exp(db v) are "
                "dominated by a few particles); use more particles, more HMC moves or leapfrog steps per "
                "temperature, or a better flow / reference density")
        b_new = 1.0 if db >= 1.0 - b else b + db
        db = b_new - b
        cess.append(math.exp(_ln_cess(log_w, v_np, db)))
        increments = log_w + db * v_np
        ln_mean = _logsumexp(increments)
        ln_z += ln_mean
        log_w = increments - ln_mean
        ess.append(float(math.exp(-_logsumexp(2.0 * log_w)) / n_particles))
        resampled.append(ess[-1] < resample_below)
        if resampled[-1]:
            index = _systematic_resample(log_w, generator)
            index = torch.as_tensor(index, device=z.device)
            z, v_z = z[index], v_z[index]
            log_w = np.full(n_particles, -math.log(n_particles))
        b = b_new
        betas.append(b)
        if b < 1.0:
            if schedule is not None:
                eps = schedule(b)
            z, v_z, accepted, used, eps = _Path(log_p0, v, b).hmc_moves(z, eps, n_moves, n_leapfrog, jitter,
                                                                        target_acceptance, generator,
                                                                        adapt=schedule is None)
            acceptance.append(accepted)
            step_sizes.append(used)
        if callback is not None:
            callback(b, len(cess))
    return SMCReplica(
        ln_z=ln_z,
        betas=torch.tensor(betas, dtype=torch.float64),
        cess=torch.tensor(cess, dtype=torch.float64),
        ess=torch.tensor(ess, dtype=torch.float64),
        resampled=torch.tensor(resampled, dtype=torch.bool),
        acceptance=torch.tensor(acceptance, dtype=torch.float64).reshape(-1, n_moves),
        step_sizes=torch.tensor(step_sizes, dtype=torch.float64).reshape(-1, n_moves),
        cpu_seconds=time.process_time() - start,
    )


def _check(name: str, ok: bool, allowed: str, value) -> None:
    if not ok:
        raise ValueError(f"{name} must be {allowed}, got {value!r}")


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) \
        and math.isfinite(value)


def smc_ln_z(
    sample_p0: Callable[[int, torch.Generator], Tensor],
    log_p0: Callable[[Tensor], Tensor],
    v: Callable[[Tensor], Tensor],
    n_particles: int = 1024,
    replicas: int = 8,
    *,
    cess_fraction: float = 0.9,
    resample_below: float = 0.5,
    n_moves: int = 3,
    n_leapfrog: int = 5,
    step_size: float = 0.5,
    target_acceptance: float = 0.65,
    jitter: float = 0.2,
    min_increment: float = 1e-8,
    max_temperatures: int = 10_000,
    seed: int = 0,
    pilot: bool = True,
    device: torch.device | str = "cpu",
    callback: Callable[[float, int], None] | None = None,
    world: World | None = None,
) -> SMCEstimate:
    """SMC estimate of ``ln Z = ln int p0(z) e^{v(z)} dz`` from ``replicas`` independent runs of
    ``n_particles`` particles each (module docstring).

    Parameters
    ----------
    sample_p0: ``(n, generator) -> (n, *event_shape)``, exact samples of the normalized reference
        ``p0`` on ``device``.
    log_p0: ``(n, *event_shape) -> (n,)``, the normalized ``ln p0``, differentiable.
    v: ``(n, *event_shape) -> (n,)``, ``ln target - ln p0``, differentiable.
    n_particles: particles per replica, >= 2. replicas: independent runs ``R``, >= 2.
    cess_fraction: ``CESS / N`` each temperature step aims at, in (0, 1) (larger: more, smaller steps).
    resample_below: resample when ``ESS / N`` falls below this, in (0, 1].
    n_moves: HMC transitions per temperature, >= 1; n_leapfrog: leapfrog steps per transition, >= 1.
    step_size: initial base leapfrog step, > 0 (about half the scale of ``p0`` suits).
    target_acceptance: mean acceptance the step size is steered to, in (0, 1), by the pilot (or
        by every replica with ``pilot=False``).
    jitter: relative half-width of each particle's uniform random step, in [0, 1).
    min_increment: smallest allowed step in ``b``, in (0, 1); max_temperatures: >= 1. A ladder
        that needs a smaller step or more temperatures raises ``ValueError`` naming the remedies.
    seed: int >= 0; with ``pilot_seed, replica_seeds = numpy.random.SeedSequence(seed).spawn(2)``,
        replica ``r`` uses a :class:`torch.Generator` on ``device`` seeded from
        ``replica_seeds.spawn(R)[r]`` and the pilot one from ``pilot_seed``: same seed, same
        numbers, and the first replicas do not depend on ``R``.
    pilot: freeze the step sizes of all replicas from an extra adaptive run (module docstring),
        at the cost of one more replica; ``False``: each replica adapts its own.
    callback: called as ``callback(b, t)`` after the ``t``-th temperature ``b`` of a run (the
        pilot first, then the replicas, one after the other, each from ``b = 0`` to ``b = 1``),
        for a progress bar (on several processes: this process's pilot and replicas).
    world: the processes the replicas are shared among (default
        :func:`deeprg.distributed.current`; a collective, the same result on every process);
        ``DistributedMismatch`` when there are more processes than replicas.

    Raises ``FloatingPointError`` when ``ln p0`` or ``v`` is not finite at a particle drawn from
    ``p0``; proposals of the HMC moves where they are not finite are rejected.
    """
    _check("n_particles", _is_int(n_particles) and n_particles >= 2, "an int >= 2", n_particles)
    _check("replicas", _is_int(replicas) and replicas >= 2, "an int >= 2", replicas)
    _check("cess_fraction", _is_real(cess_fraction) and 0 < cess_fraction < 1, "a number in (0, 1)", cess_fraction)
    _check("resample_below", _is_real(resample_below) and 0 < resample_below <= 1, "a number in (0, 1]",
           resample_below)
    _check("n_moves", _is_int(n_moves) and n_moves >= 1, "an int >= 1", n_moves)
    _check("n_leapfrog", _is_int(n_leapfrog) and n_leapfrog >= 1, "an int >= 1", n_leapfrog)
    _check("step_size", _is_real(step_size) and step_size > 0, "a finite number > 0", step_size)
    _check("target_acceptance", _is_real(target_acceptance) and 0 < target_acceptance < 1, "a number in (0, 1)",
           target_acceptance)
    _check("jitter", _is_real(jitter) and 0 <= jitter < 1, "a number in [0, 1)", jitter)
    _check("min_increment", _is_real(min_increment) and 0 < min_increment < 1, "a number in (0, 1)", min_increment)
    _check("max_temperatures", _is_int(max_temperatures) and max_temperatures >= 1, "an int >= 1", max_temperatures)
    _check("seed", _is_int(seed) and seed >= 0, "an int >= 0", seed)
    _check("pilot", isinstance(pilot, bool), "True or False", pilot)
    world = current() if world is None else world
    world.require_at_most(int(replicas), "replicas")
    pilot_seed, replica_seeds = np.random.SeedSequence(int(seed)).spawn(2)

    def run(child, schedule=None) -> SMCReplica:
        generator = torch.Generator(device=device)
        generator.manual_seed(int(child.generate_state(1, dtype=np.uint64)[0]))
        return _replica(sample_p0, log_p0, v, int(n_particles), generator, float(cess_fraction),
                        float(resample_below), int(n_moves), int(n_leapfrog), float(step_size),
                        float(target_acceptance), float(jitter), float(min_increment), int(max_temperatures),
                        callback, schedule)

    first = run(pilot_seed) if pilot else None
    schedule = _frozen_steps(first) if first is not None and len(first.step_sizes) else None
    mine = [run(child, schedule) for child in replica_seeds.spawn(int(replicas))[world.share(int(replicas))]]
    runs = [r for part in world.all_gather_objects(mine) for r in part]
    return SMCEstimate(ln_z=_combine(torch.tensor([r.ln_z for r in runs], dtype=torch.float64)), replicas=runs,
                       n_particles=int(n_particles), pilot=first)


def _combine(values: Tensor) -> Estimate:
    """``ln mean_r exp(values_r)`` with the delta-method error ``std(Z_r) / (sqrt(R) mean(Z_r))``
    (module docstring); ``variance``: the sample variance of ``values``."""
    w = torch.exp(values - values.max())
    mean = float(w.mean())
    error = float(w.std()) / (math.sqrt(len(w)) * mean)
    return Estimate(float(values.max()) + math.log(mean), error, float(values.var()), 0.5, len(values))


def smc_from_flow(flow: Flow, target, n_particles: int = 1024, replicas: int = 8, **options) -> SMCEstimate:
    """:func:`smc_ln_z` in the latent space of ``flow``: ``p0 = N(0, 1)`` (the flow's prior, in its
    dtype and on its device) and ``v = ln pi(g(z)) - ln q(g(z))``
    (:func:`~deeprg.flows.annealing.latent_log_weight`); ``target`` any
    :class:`~deeprg.models.relaxed.Target` on the flow's device. ``options``: the keyword arguments of
    :func:`smc_ln_z` (``device`` is the flow's)."""
    if "device" in options:
        raise ValueError("smc_from_flow runs on the flow's device: move the flow and target instead of passing device")
    return smc_ln_z(flow.sample_latent, flow.log_prior, latent_log_weight(flow, target), n_particles, replicas,
                    device=next(flow.parameters()).device, **options)


def smc_from_gaussian(target, sigma: float = 1.0, n_particles: int = 1024, replicas: int = 8, *,
                      dtype: torch.dtype = torch.float64, **options) -> SMCEstimate:
    """:func:`smc_ln_z` without a flow: ``p0 = N(0, sigma^2 I)`` on fields of ``target.event_shape``
    in ``dtype``, ``v(x) = ln pi(x) - ln p0(x)`` with ``ln pi = target.log_prob_unnormalized``.
    ``options``: the keyword arguments of :func:`smc_ln_z`; ``step_size`` defaults to
    ``sigma / 2``."""
    _check("sigma", _is_real(sigma) and sigma > 0, "a finite number > 0", sigma)
    sigma = float(sigma)
    event_shape = tuple(target.event_shape)
    n_sites = math.prod(event_shape)
    device = options.get("device", "cpu")
    norm = 0.5 * n_sites * math.log(2.0 * math.pi * sigma**2)

    def sample_p0(n: int, generator: torch.Generator) -> Tensor:
        return sigma * torch.randn((n, *event_shape), generator=generator, device=device, dtype=dtype)

    def log_p0(x: Tensor) -> Tensor:
        return -0.5 * x.reshape(x.shape[0], -1).pow(2).sum(1) / sigma**2 - norm

    def v(x: Tensor) -> Tensor:
        return target.log_prob_unnormalized(x) - log_p0(x)

    options.setdefault("step_size", 0.5 * sigma)
    return smc_ln_z(sample_p0, log_p0, v, n_particles, replicas, **options)
