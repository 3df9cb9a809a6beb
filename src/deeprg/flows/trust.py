"""Whether to trust an estimate of ``ln Z``: one verdict per estimator, naming the diagnostic that
failed.

Every estimator of ``deeprg flow estimate`` reports its diagnostics; :func:`verdict` turns them
into one line. The thresholds are conventional, not proofs: a passed check does not make a
number right (annealed importance sampling at 16x16 was 3.4 sigma off with healthy-looking
weights, ``benchmarks/results/hmc.md``), but a failed one makes it untrustworthy.

* **Tail index** ``k`` of the importance weights (Vehtari et al., "Pareto smoothed importance
  sampling", JMLR 25 (2024)): above 0.7 the variance of the weights is effectively infinite and
  the error bar means nothing.
* **Effective sample size**: fewer than :data:`MIN_ESS` effective samples make the delta-method and
  jackknife errors unreliable. Plain importance sampling needs :data:`MIN_IS_ESS`: its weights
  typically have a tail index between 0.5 and 0.7, i.e. infinite variance, so the sample variance
  is usually too small, and the sample that drew no large weight is the one with the lowest
  estimate, the smallest error *and* the healthiest-looking diagnostics (its fitted ``k`` is low
  too). Measured on the undertrained 4x4 flow of ``tests/test_estimator_coverage.py`` (60-80
  seeds each): of the estimates with ``k <= 0.7`` and at least 200 effective samples, 79 % of
  intervals covered the exact ``ln Z`` with 10,000 samples (median ESS 170), 83 % with 30,000
  (ESS 430), 95 % with 100,000 (ESS 1,200); requiring 1,000 effective samples, 92 % with
  100,000 and none trusted below. Annealed importance sampling, whose weights are light-tailed,
  keeps :data:`MIN_ESS`.
* **Bridge sampling**: the overlap of ``q`` and ``pi`` is measured from both sides. The optimal
  bridge is asymptotically at least as precise as the better of the two importance-sampling
  directions (Meng & Wong 1996, Sec. 3), so it fails only when *both* directions have fewer than
  :data:`MIN_ESS` effective samples; a poor direction is named in the line.
* **Sequential Monte Carlo**: the error comes from independent replicas; fewer than
  :data:`MIN_REPLICAS` make it unreliable, and an HMC acceptance below :data:`MIN_ACCEPTANCE`
  means the moves barely mix at some temperature. Replicas cannot see a bias they all share: SMC
  from a Gaussian with no flow at 16x16 was 4.6 of its error bars low with every check passed
  (``benchmarks/results/estimators.md``), so a passed SMC verdict says to double the moves and
  compare.
"""

from __future__ import annotations

import math

__all__ = ["MAX_PARETO_K", "MIN_ACCEPTANCE", "MIN_ESS", "MIN_IS_ESS", "MIN_REPLICAS", "verdict"]

#: Largest trusted Pareto tail index of importance weights.
MAX_PARETO_K = 0.7
#: Fewest effective samples for a trusted error bar.
MIN_ESS = 200
#: Fewest effective samples for a trusted plain importance-sampling error bar (module docstring).
MIN_IS_ESS = 1000
#: Fewest independent replicas for an SMC error bar.
MIN_REPLICAS = 4
#: Lowest trusted mean HMC acceptance.
MIN_ACCEPTANCE = 0.2


def _bad(value: float | None) -> bool:
    return value is None or not math.isfinite(value)


def verdict(method: str, diagnostics: dict) -> tuple[bool, str]:
    """``(trusted, one line)`` for the estimate of ``method`` (``is``, ``ais``, ``smc``, ``bridge``)
    with ``diagnostics``: ``ess`` (effective samples, reverse direction) and ``pareto_k`` for
    ``is``/``ais``; ``forward_ess``, ``reverse_ess`` (effective samples) for ``bridge``;
    ``replicas``, ``acceptance`` for ``smc``; ``ln_z_error`` for all."""
    if _bad(diagnostics.get("ln_z_error")):
        return False, "do not trust: the estimate or its error is not finite"
    problems = []
    if method in ("is", "ais"):
        k, ess = diagnostics.get("pareto_k"), diagnostics.get("ess")
        if not _bad(k) and k > MAX_PARETO_K:
            problems.append(f"heavy-tailed weights (Pareto k = {k:.2f} > {MAX_PARETO_K})")
        least = MIN_IS_ESS if method == "is" else MIN_ESS
        if _bad(ess) or ess < least:
            problems.append(f"only {ess:.0f} effective samples (< {least}"
                            + (": plain importance weights need more, see deeprg.flows.trust)" if method == "is" else ")"))
    elif method == "bridge":
        poor = [f"{diagnostics.get(f'{side}_ess', float('nan')):.0f} effective samples in the {side} direction"
                for side in ("forward", "reverse")
                if _bad(diagnostics.get(f"{side}_ess")) or diagnostics[f"{side}_ess"] < MIN_ESS]
        if len(poor) == 2:
            problems.append(f"q and pi barely overlap: {' and '.join(poor)} (< {MIN_ESS} each)")
        elif poor:
            return True, f"no diagnostic failed (only {poor[0]}: the estimate rests on the other direction)"
    elif method == "smc":
        replicas, acceptance = diagnostics.get("replicas", 0), diagnostics.get("acceptance")
        if replicas < MIN_REPLICAS:
            problems.append(f"only {replicas} replicas for the error bar (< {MIN_REPLICAS})")
        if not _bad(acceptance) and acceptance < MIN_ACCEPTANCE:
            problems.append(f"HMC moves barely mix (acceptance {acceptance:.2f} < {MIN_ACCEPTANCE})")
    else:
        raise ValueError(f"method must be one of is, ais, smc, bridge; got {method!r}")
    if problems:
        return False, "do not trust: " + "; ".join(problems)
    note = {"ais": " (light tails are not convergence: double the temperatures and compare)",
            "smc": " (replicas do not see a bias they all share, e.g. from too few HMC moves per temperature: "
                   "double --leapfrog and compare)"}.get(method, "")
    return True, "no diagnostic failed" + note
