"""Bridge sampling between a flow ``q`` and the target ``pi``: ``ln Z`` from both directions.

Importance sampling (:func:`deeprg.flows.estimators.importance_ln_z`) uses samples of ``q`` only
and is biased low where ``q`` misses parts of ``pi``. Bridge sampling uses samples of both
densities: ``x_i ~ q`` (``n1``, independent) and ``y_j ~ pi`` (``n2``, from the target's exact
reference sampler or from Markov chains such as latent HMC), with the log importance weights

    l_q[i] = ln pi_u(x_i) - ln q(x_i),        l_pi[j] = ln pi_u(y_j) - ln q(y_j),

``pi_u`` the unnormalized target. Meng & Wong (1996, Statistica Sinica 6, 831, Eq. 4.1) give the
optimal bridge's estimate of ``r = Z_pi / Z_q`` (``Z_q = 1`` for a normalized flow) as the fixed
point of

    r <- [ (1/n1) sum_i w_i / (s_pi w_i + s_q r) ] / [ (1/n2) sum_j 1 / (s_pi v_j + s_q r) ],

``w_i = exp(l_q[i])``, ``v_j = exp(l_pi[j])``, ``s_pi = n2_eff / (n1 + n2_eff)``,
``s_q = n1 / (n1 + n2_eff)``; it is Bennett's acceptance ratio (J. Comput. Phys. 22, 245
(1976)): with ``u = ln r`` and ``c = ln(s_pi / s_q) = ln(n2_eff / n1)`` the fixed point solves

    h(u) = (1/n2) sum_j sigmoid(u - l_pi[j] - c) - (1/n2_eff) sum_i sigmoid(l_q[i] - u + c) = 0,

(multiply the fixed-point equation by ``r`` and write ``w / (s_pi w + s_q r) = sigmoid(l - u + c)
/ s_pi``, ``r / (s_pi v + s_q r) = sigmoid(u - l - c) / s_q``). ``h`` rises strictly with ``u``
from ``-n1/n2_eff`` to 1, so the root is unique. The plain fixed-point iteration of ``r`` need not
converge: when ``q`` and ``pi`` barely overlap its slope approaches -1 and it oscillates. So the
root of ``h`` is bracketed by doubling steps from the mean of the forward and reverse
importance-sampling estimates and found by Brent's method to ``|du| < tol`` (float64, sigmoids by
``scipy.special.expit``: no overflow for any log-weights).

Correlated samples of ``pi`` (Markov chains) enter the optimal weights through their effective
number ``n2_eff = n2 / (2 tau)`` (as in Gronau et al., "A tutorial on bridge sampling",
J. Math. Psych. 81, 80 (2017), and their ``bridgesampling`` package), with ``tau`` the integrated
autocorrelation time (Sokal window, :func:`deeprg.mc.stats.integrated_autocorr_time`) of the
pi-side terms ``sigmoid(u - l_pi[j] - c)`` of the equation above at a first solution with
``n2_eff = n2``.

Error bar: a delete-one-group jackknife over ``n_blocks`` groups. Group ``k`` holds block ``k`` of
the flow samples (contiguous, independent samples) and block ``k`` of the pi samples: whole chains
when there are at least ``n_blocks`` chains (exactly independent groups), else a contiguous range of
steps of every chain (nearly independent when the range is much longer than ``tau``; a
``RuntimeWarning`` says when it is shorter than ``10 tau``). Each ``u_k`` is the bridge solved
without group ``k`` (same ``tau``) and ``error = sqrt((B - 1)/B sum_k (u_k - mean u_k)^2)``
(Efron & Stein 1981). The jackknife needs no formula for the variance of a ratio of correlated
means and stays valid for any ``tau``, which enters only the (optimal) weights.

Diagnostics: the forward effective sample size ``(sum a)^2 / (n2 sum a^2)`` of the weights
``a_j = q/pi = exp(-l_pi[j])`` on the pi samples and the reverse one of ``w_i = pi/q`` on the flow
samples (Kish's formula, ignoring autocorrelation), and the Pareto tail index
(:func:`deeprg.flows.estimators.pareto_k`) of each set. A small forward ESS or a large forward
tail index means ``q`` misses parts of ``pi``, which importance sampling cannot see.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import scipy.optimize
import torch
from scipy.special import expit, logsumexp
from torch import Tensor

from deeprg.distributed import World, current
from deeprg.flows.estimators import pareto_k
from deeprg.flows.flow import Flow
from deeprg.mc.stats import Estimate, integrated_autocorr_time

__all__ = ["MIN_BLOCKS", "MIN_SAMPLES", "BridgeEstimate", "bridge_ln_z", "bridge_sampling"]

#: Fewest samples on either side that :func:`bridge_ln_z` accepts.
MIN_SAMPLES = 100
#: Fewest jackknife groups that :func:`bridge_ln_z` accepts.
MIN_BLOCKS = 4
#: A block of steps shorter than this many ``tau`` of the pi chains gives a warning.
_MIN_BLOCK_IN_TAU = 10.0


class BridgeEstimate(NamedTuple):
    """Result of :func:`bridge_ln_z`.

    Attributes
    ----------
    ln_z:
        ``ln(Z_pi / Z_q)`` (``ln Z_pi`` for a normalized flow) with its jackknife error;
        ``variance`` is ``nan``, ``tau_int`` that of the pi side, ``n_samples = n1 + n2``.
    forward_ess, reverse_ess:
        Effective sample size fractions of the weights ``q/pi`` on the pi samples and ``pi/q`` on
        the flow samples, in (0, 1].
    forward_pareto_k, reverse_pareto_k:
        Pareto tail indices of those weights (:func:`~deeprg.flows.estimators.pareto_k`).
    iterations:
        Iterations of Brent's method in the final solve.
    n1, n2:
        Flow samples and pi samples.
    n2_eff:
        ``n2 / (2 tau_int)``, the pi samples' effective number used in the weights.
    n_blocks:
        Jackknife groups.
    """

    ln_z: Estimate
    forward_ess: float
    reverse_ess: float
    forward_pareto_k: float
    reverse_pareto_k: float
    iterations: int
    n1: int
    n2: int
    n2_eff: float
    n_blocks: int


def _as_float64(values, name: str) -> np.ndarray:
    if isinstance(values, Tensor):
        values = values.detach().cpu().double().numpy()
    a = np.asarray(values, dtype=np.float64)
    n_bad = a.size - int(np.count_nonzero(np.isfinite(a)))
    if n_bad:
        raise FloatingPointError(f"{name} has {n_bad} non-finite log-weight(s) of {a.size}: the flow or the "
                                 "target returned inf/nan")
    return a


def _log_mean_exp(a: np.ndarray) -> float:
    return float(logsumexp(a) - math.log(a.size))


def _solve(l_q: np.ndarray, l_pi: np.ndarray, n2_eff: float, u0: float, tol: float, max_iter: int
           ) -> tuple[float, int]:
    """Root ``u = ln r`` of Bennett's equation (module docstring),
    ``h(u) = mean_j sigmoid(u - l_pi[j] - c) - (n1 / n2_eff) mean_i sigmoid(l_q[i] - u + c)``
    with ``c = ln(n2_eff / n1)``,
    for flat float64 ``l_q`` ``(n1,)`` and ``l_pi`` ``(n2,)``: bracketed from ``u0`` outwards by
    doubling steps, then Brent's method to ``|du| < tol``. Returns ``(u, iterations)``."""
    ratio = l_q.size / n2_eff
    c = math.log(1.0 / ratio)

    def h(u: float) -> float:
        return float(np.mean(expit(u - l_pi - c)) - ratio * np.mean(expit(l_q - u + c)))

    lo, hi, step = u0 - 1.0, u0 + 1.0, 1.0
    while h(lo) > 0:
        step *= 2.0
        lo -= step
    step = 1.0
    while h(hi) < 0:
        step *= 2.0
        hi += step
    u, result = scipy.optimize.brentq(h, lo, hi, xtol=tol, rtol=4 * np.finfo(float).eps, maxiter=max_iter,
                                      full_output=True, disp=False)
    if not result.converged:
        raise RuntimeError(f"bridge sampling did not converge in {max_iter} iterations: q and pi barely overlap")
    return float(u), int(result.iterations)


def _ess_fraction(log_w: np.ndarray) -> float:
    w = np.exp(log_w - log_w.max())
    return float(w.sum() ** 2 / (w * w).sum() / w.size)


def bridge_ln_z(l_q: Tensor | np.ndarray, l_pi: Tensor | np.ndarray, *, n_blocks: int = 32,
                tol: float = 1e-10, max_iter: int = 1000) -> BridgeEstimate:
    """Optimal bridge-sampling estimate of ``ln(Z_pi / Z_q)`` with a jackknife error (module
    docstring).

    Parameters
    ----------
    l_q:
        ``ln pi_u(x) - ln q(x)`` at ``n1`` independent flow samples, shape ``(n1,)``.
    l_pi:
        The same at the ``n2`` samples of ``pi``: ``(steps, chains)`` (Markov chains, time first,
        as latent HMC produces them; the reference sampler's step-major output reshaped to
        ``(-1, n_chains)``) or ``(n2,)`` (one chain in time order; independent samples are a
        chain with ``tau = 1/2``).
    n_blocks:
        Jackknife groups, >= :data:`MIN_BLOCKS`; the pi side needs at least this many chains or
        steps.
    tol, max_iter:
        Convergence of the root in ``ln r`` (Brent's method); ``RuntimeError`` if ``max_iter`` is
        reached.

    Raises ``ValueError`` when either side has fewer than :data:`MIN_SAMPLES` samples or too few
    chains and steps for ``n_blocks`` groups, ``FloatingPointError`` on non-finite log-weights.
    """
    if isinstance(n_blocks, bool) or not isinstance(n_blocks, (int, np.integer)) or n_blocks < MIN_BLOCKS:
        raise ValueError(f"n_blocks must be an integer >= {MIN_BLOCKS}, got {n_blocks!r}")
    if not tol > 0 or not max_iter >= 1:
        raise ValueError(f"tol must be > 0 and max_iter >= 1, got {tol!r} and {max_iter!r}")
    a = _as_float64(l_q, "l_q")
    b = _as_float64(l_pi, "l_pi")
    if a.ndim != 1:
        raise ValueError(f"l_q must have shape (n1,), got {a.shape}")
    if b.ndim not in (1, 2):
        raise ValueError(f"l_pi must have shape (steps, chains) or (n2,), got {b.shape}")
    b = b.reshape(-1, 1) if b.ndim == 1 else b
    steps, chains = b.shape
    n1, n2 = a.size, b.size
    if n1 < max(MIN_SAMPLES, n_blocks):
        raise ValueError(f"the flow (q) side has {n1} samples; bridge sampling needs at least "
                         f"{max(MIN_SAMPLES, n_blocks)}")
    if n2 < MIN_SAMPLES:
        raise ValueError(f"the pi side has {n2} samples; bridge sampling needs at least {MIN_SAMPLES}")
    if chains < n_blocks and steps < n_blocks:
        raise ValueError(f"the pi side has {steps} steps x {chains} chains: {n_blocks} jackknife blocks need "
                         f"at least {n_blocks} steps or {n_blocks} chains (or pass a smaller n_blocks >= "
                         f"{MIN_BLOCKS})")

    flat = b.reshape(-1)
    u0 = 0.5 * (_log_mean_exp(a) - _log_mean_exp(-flat))  # mean of reverse and forward IS
    u1, _ = _solve(a, flat, float(n2), u0, tol, max_iter)
    if steps >= 2:
        terms = expit(u1 - b - math.log(n2 / n1))  # pi-side terms of Bennett's equation
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            tau = max(0.5, integrated_autocorr_time(terms.T))
    else:
        tau = 0.5
    n2_eff = n2 / (2.0 * tau)
    u, iterations = _solve(a, flat, n2_eff, u1, tol, max_iter)

    q_groups = np.array_split(np.arange(n1), n_blocks)
    if chains >= n_blocks:  # whole chains: independent groups
        pi_rest = [np.delete(b, cols, axis=1) for cols in np.array_split(np.arange(chains), n_blocks)]
    else:  # contiguous ranges of steps of every chain
        rows = np.array_split(np.arange(steps), n_blocks)
        shortest = min(len(r) for r in rows)
        if shortest < _MIN_BLOCK_IN_TAU * tau:
            warnings.warn(f"bridge sampling: jackknife blocks of {shortest} steps are shorter than "
                          f"{_MIN_BLOCK_IN_TAU:g} tau_int = {_MIN_BLOCK_IN_TAU * tau:.3g} steps of the pi chains; "
                          "the error bar is likely too small (run longer chains or use more chains)",
                          RuntimeWarning, stacklevel=2)
        pi_rest = [np.delete(b, r, axis=0) for r in rows]
    leave_out = np.empty(n_blocks)
    for k in range(n_blocks):
        rest_pi = pi_rest[k].reshape(-1)
        leave_out[k] = _solve(np.delete(a, q_groups[k]), rest_pi, rest_pi.size / (2.0 * tau), u, tol, max_iter)[0]
    error = math.sqrt((n_blocks - 1) / n_blocks * np.sum((leave_out - leave_out.mean()) ** 2))

    ln_z = Estimate(u, error, math.nan, tau, n1 + n2)
    return BridgeEstimate(
        ln_z=ln_z,
        forward_ess=_ess_fraction(-flat),
        reverse_ess=_ess_fraction(a),
        forward_pareto_k=pareto_k(torch.from_numpy(-flat)),
        reverse_pareto_k=pareto_k(torch.from_numpy(a)),
        iterations=iterations,
        n1=n1,
        n2=n2,
        n2_eff=n2_eff,
        n_blocks=int(n_blocks),
    )


@torch.no_grad()
def bridge_sampling(flow: Flow, target, n_flow: int, pi_samples: Tensor, generator: torch.Generator | None = None,
                    *, batch: int = 4096, n_blocks: int = 32,
                    callback: Callable[[int, int], None] | None = None, world: World | None = None) -> BridgeEstimate:
    """Bridge sampling between ``flow`` and ``target`` (module docstring): draws ``n_flow`` fresh
    flow samples, evaluates the log-weights ``ln pi_u - ln q`` of both sides in batches of
    ``batch`` (the target in float64, the flow in its own dtype, differences in float64) and calls
    :func:`bridge_ln_z`.

    ``pi_samples``: exact samples of ``pi``, ``(n2, *event_shape)`` (one chain in time order, or
    independent samples such as the output of
    :func:`deeprg.models.relaxed.reference_sampler`) or ``(steps, chains, *event_shape)`` (e.g.
    latent HMC chains mapped to fields), on any device (moved to the flow's once).
    ``callback(done, total)`` is called after each batch,
    ``total = n_flow + n2``.

    On several processes (``world``, default :func:`deeprg.distributed.current`; a collective,
    every process passing the same ``pi_samples``) each process evaluates its share of every
    batch's rows (every process draws the whole batch's latents, as in
    :func:`~deeprg.flows.estimators.importance_ln_z`) and the log-weights are gathered in row
    order: every process returns the one-process estimate up to the rounding of smaller batches.
    """
    event = tuple(flow.event_shape)
    if not isinstance(pi_samples, Tensor) or pi_samples.dim() not in (len(event) + 1, len(event) + 2) \
            or tuple(pi_samples.shape[pi_samples.dim() - len(event):]) != event:
        shape = tuple(pi_samples.shape) if isinstance(pi_samples, Tensor) else type(pi_samples).__name__
        raise ValueError(f"pi_samples must be a tensor of shape (n2, {', '.join(map(str, event))}) or "
                         f"(steps, chains, {', '.join(map(str, event))}), got {shape}")
    if isinstance(n_flow, bool) or not isinstance(n_flow, (int, np.integer)) or n_flow < MIN_SAMPLES:
        raise ValueError(f"n_flow must be an integer >= {MIN_SAMPLES} (samples of the flow q), got {n_flow!r}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    world = current() if world is None else world
    ref = next(flow.parameters())
    chain_shape = tuple(pi_samples.shape[: pi_samples.dim() - len(event)])
    y = pi_samples.reshape((-1,) + event).to(ref.device)  # to the flow's device once, not batch by batch
    total = n_flow + len(y)

    def pi_side(part: Tensor) -> Tensor:
        return target.log_prob_unnormalized(part.double()) - flow.log_prob(part.to(ref.dtype)).double()

    l_q, l_pi = [], []
    for start in range(0, n_flow, batch):
        n = min(batch, n_flow - start)
        split = world.distributed and n >= world.size
        x, log_q = flow.sample_and_log_prob(n, generator, rows=world.share(n) if split else None)
        lw = target.log_prob_unnormalized(x.double()) - log_q.double()
        l_q.append((world.all_gather_tensor(lw, world.counts(n)) if split else lw).cpu())
        if callback is not None:
            callback(start + n, total)
    for start in range(0, len(y), batch):
        part = y[start : start + batch]
        l_pi.append(world.map_rows(pi_side, part).cpu())
        if callback is not None:
            callback(n_flow + start + len(part), total)
    return bridge_ln_z(torch.cat(l_q), torch.cat(l_pi).reshape(chain_shape), n_blocks=n_blocks)
