"""Diagnostics: importance sampling (log Z, ESS, Pareto k-hat), MCMC convergence (R-hat, ESS), Monte Carlo
error analysis (jackknife, autocorrelation), and the evaluation of a trained flow against its target."""

from flowvi.diagnostics.importance import (
    gpd_fit,
    log_evidence,
    log_mean_exp,
    moment_pareto_k,
    normalized_ess,
    pareto_k,
    psis_log_weights,
    summarize,
)

__all__ = [
    "gpd_fit",
    "log_evidence",
    "log_mean_exp",
    "moment_pareto_k",
    "normalized_ess",
    "pareto_k",
    "psis_log_weights",
    "summarize",
]
