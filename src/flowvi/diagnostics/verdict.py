"""One verdict on a run's draws: can they be trusted, why, and what to do if not.

After a fit (or ``flowvi evaluate``), the draws are the flow's, importance-resampled: they can be trusted when
the flow covers every mode the mode search found (:func:`flowvi.training.mode_init.mode_coverage`: importance
weights cannot reveal a mode that the flow never draws from), the PSIS k-hat of the importance weights is below 0.7 (Vehtari et al. 2024, *Pareto smoothed importance
sampling*: below it the self-normalized estimates have finite variance and vanishing bias), so is the k-hat of
``h w`` for the first and second moments of every reported parameter (the draws' means and sds:
:func:`flowvi.diagnostics.importance.moment_pareto_k`, recorded by the resampling), and the effective number of
draws ``n * ESS/n`` is at least ``MIN_ESS``. After ``flowvi refine``, the draws are MCMC draws: they
can be trusted when the rank-normalized split R-hat is at most 1.01 and the bulk- and tail-ESS are at least 400
for every coordinate (Vehtari et al. 2021, *Rank-normalization, folding, and localization*, Bayesian Analysis),
and no trajectory diverged.
"""

from __future__ import annotations

import math

KHAT = 0.7
MIN_ESS = 400
RHAT = 1.01


def fit_verdict(summary: dict, stop_reason: str | None = None) -> dict:
    """``{"trustworthy", "reason", "action"}`` from an evaluation summary (``pareto_k``, ``ess``, ``n``) and the
    training's stop reason (which says whether the ELBO was still rising)."""
    k, ess = summary.get("pareto_k", math.nan), summary.get("ess", 0.0) * summary.get("n", 0)
    rising = bool(stop_reason and "still rising" in stop_reason)
    modes = summary.get("modes") or {}
    if modes.get("uncovered"):  # k-hat cannot see a mode the flow never draws from
        return {
            "trustworthy": False,
            "reason": f"the flow misses {modes['uncovered']} of {modes['found']} modes found by the mode search "
            f"(log-weight gap {modes['gap']:.1f} nats)",
            "action": "run `flowvi refine RUN_DIR` (its chains start at those modes), or train with --estimator fab",
        }
    moment_k = (summary.get("samples") or {}).get("moment_k_hat")
    moments_ok = moment_k is None or not moment_k >= KHAT  # NaN (no tail to fit): no evidence against
    if math.isfinite(k) and k < KHAT and ess >= MIN_ESS and moments_ok:
        return {"trustworthy": True, "reason": f"PSIS k-hat {k:.2f}, {ess:.0f} effective draws", "action": None}
    why = [f"k-hat {k:.2f}" if math.isfinite(k) else "k-hat undefined (no finite importance weight)"]
    if not moments_ok:
        param = summary["samples"].get("moment_k_hat_param")
        why.append(f"k-hat {moment_k:.2f} for the moments of {param} (its mean or sd is unreliable)")
    if ess < MIN_ESS:
        why.append(f"{ess:.0f} effective draws < {MIN_ESS}")
    if rising:
        why.append("ELBO still rising")
    action = "run `flowvi refine RUN_DIR`" + (" or train longer" if rising else "")
    return {"trustworthy": False, "reason": ", ".join(why), "action": action}


def refine_verdict(method: str, rhat_max: float, bulk_ess_min: float, tail_ess_min: float, divergences: int = 0):
    """The verdict on MCMC draws of ``flowvi refine`` (module docstring)."""
    name = {"neutra": "NeuTra-HMC", "imh": "independence MH", "mixture": "independence MH with a mode mixture"}.get(
        method, method
    )
    ok = rhat_max <= RHAT and bulk_ess_min >= MIN_ESS and tail_ess_min >= MIN_ESS and divergences == 0
    if ok:
        return {
            "trustworthy": True,
            "reason": f"{name}, R-hat {rhat_max:.3f} <= {RHAT}, bulk ESS {bulk_ess_min:.0f} >= {MIN_ESS}, "
            f"tail ESS {tail_ess_min:.0f} >= {MIN_ESS}",
            "action": None,
        }
    why = [f"{name}: R-hat {rhat_max:.3f}", f"bulk ESS {bulk_ess_min:.0f}", f"tail ESS {tail_ess_min:.0f}"]
    if divergences:
        why.append(f"{divergences} divergent transitions")
    other = {"neutra": "--method imh", "imh": "--method neutra"}.get(method, "fit with --estimator fab")
    if divergences:
        action = f"divergent trajectories mean biased draws: refine with a higher --target-accept, or {other}"
    else:
        action = "refine with more --draws" + (" or --max-leapfrog" if method == "neutra" else "") + f", or {other}"
    return {"trustworthy": False, "reason": ", ".join(why), "action": action}


def format_verdict(verdict: dict, refined: bool = False) -> str:
    """The one line a command ends with, e.g. ``trustworthy: PSIS k-hat 0.41, ...``."""
    if verdict["trustworthy"]:
        return f"{'refined' if refined else 'trustworthy'}: {verdict['reason']}"
    return f"not trustworthy: {verdict['reason']}" + (f" — {verdict['action']}" if verdict["action"] else "")


__all__ = ["KHAT", "MIN_ESS", "RHAT", "fit_verdict", "format_verdict", "refine_verdict"]
