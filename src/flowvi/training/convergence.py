"""Convergence-driven training (``steps="auto"``): when to stop, and a learning-rate schedule for an unknown length.

**The rule.** Let ``e_t`` be the batch ELBO of step t (the mean of ``log p - log q`` over the step's finite
draws) and W the window (``Stopping.window``, 100 steps). At every W-th step, with at least 2W steps since the
last learning-rate change, compare the means of the last two windows,

    delta = mean(e over the last W steps) - mean(e over the W steps before),
    se    = sqrt(var_last / W + var_prev / W),

and call the ELBO *flat* when ``delta < max(tol, 2 se)`` (``Stopping.tol`` = 0.01 nats): it rose by less than
the tolerance, or by less than two standard errors of the difference. On a flat ELBO a cheap check runs: the
PSIS k-hat (:func:`flowvi.diagnostics.importance.pareto_k`; Vehtari et al. 2024) of ``Stopping.check_draws``
(4096) fresh draws, drawn under a forked RNG so that the training stream is the same with or without checks.

* k-hat < 0.7: the fit is accepted; a closing phase decays the learning rate to zero by a half cosine over
  ``max(W, final_decay * steps so far)`` steps, then training stops ("converged").
* k-hat >= 0.7: the learning rate halves (plateau decay) and training goes on; after ``Stopping.lr_drops`` (2)
  halvings the closing phase runs anyway and the stop reason says that the ELBO converged with k-hat >= 0.7.

Training also stops at ``max_steps`` or after ``max_time`` seconds; the stop reason then says whether the ELBO
was still rising (the last comparison was not flat).

**The schedule** (:class:`AutoSchedule`, the factor of ``LambdaLR``): a linear warm-up over ``warmup`` steps,
then constant, times ``0.5 ** level`` after ``level`` plateau halvings, times ``(1 + cos(pi s / L)) / 2`` during
the closing phase (step s of L). A callable object, so ``LambdaLR.state_dict`` saves and restores it.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from flowvi.diagnostics.importance import pareto_k


class AutoSchedule:
    """Learning-rate factor for ``steps="auto"`` (module docstring)."""

    def __init__(self, warmup: int = 0):
        self.warmup, self.level, self.decay_start, self.decay_len = warmup, 0, None, 0

    def __call__(self, step: int) -> float:
        warm = min(1.0, (step + 1) / self.warmup) if self.warmup > 0 else 1.0
        factor = warm * 0.5**self.level
        if self.decay_start is not None:
            s = min(max(step - self.decay_start, 0), self.decay_len)
            factor *= 0.5 * (1 + math.cos(math.pi * s / max(self.decay_len, 1)))
        return factor


def window_delta(trace: list[float], window: int) -> tuple[float, float] | None:
    """``(delta, se)`` of the last two windows of ``trace`` (module docstring), or None when too short."""
    a = np.asarray(trace[-2 * window :], dtype=np.float64)
    if len(a) < 2 * window:
        return None
    prev, last = a[:window], a[window:]
    prev, last = prev[np.isfinite(prev)], last[np.isfinite(last)]
    if len(prev) < 2 or len(last) < 2:
        return None
    se = math.sqrt(prev.var(ddof=1) / len(prev) + last.var(ddof=1) / len(last))
    return float(last.mean() - prev.mean()), se


@torch.no_grad()
def khat_check(flow, target, n: int, seed: int, batch_size: int = 4096) -> float:
    """PSIS k-hat of ``n`` fresh draws of ``flow`` against ``target``, drawn under a forked RNG (seeded by
    ``seed``) so that the caller's random stream is untouched; non-finite log weights count as zero weight."""
    device = next(flow.parameters()).device
    devices = [device] if device.type == "cuda" else []
    was_training = flow.training
    flow.eval()
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            out = []
            for start in range(0, n, batch_size):
                x, log_q = flow.sample_and_log_prob(min(batch_size, n - start))
                out.append((target.log_prob(x) - log_q).double().cpu())
    finally:
        flow.train(was_training)
    log_w = torch.nan_to_num(torch.cat(out), nan=-math.inf)
    k = pareto_k(log_w)
    return k if math.isfinite(k) else (math.inf if not torch.isfinite(log_w).any() else k)


class Monitor:
    """Decides, step by step, whether training stops (module docstring); ``state`` lives in the TrainState."""

    def __init__(self, cfg, schedule: AutoSchedule | None, flow, target):
        self.cfg, self.schedule, self.flow, self.target = cfg, schedule, flow, target

    def observe(self, state, elbo: float) -> str | None:
        """Record the step's batch ELBO; returns a stop reason, or None to go on."""
        cfg = self.cfg
        state.elbo_trace.append(elbo)
        del state.elbo_trace[: -2 * cfg.window]
        state.since_change += 1
        if state.step % cfg.window == 0 and state.since_change >= 2 * cfg.window:
            found = window_delta(state.elbo_trace, cfg.window)
            if found is not None:
                state.elbo_delta, state.elbo_se = found
                state.elbo_flat = found[0] < max(cfg.tol, 2 * found[1])
                if cfg.auto and state.elbo_flat and (self.schedule is None or self.schedule.decay_start is None):
                    self._on_plateau(state)
                    if self.schedule is None:  # schedule="constant": no closing phase
                        return state.pending_reason
        sched = self.schedule
        if cfg.auto and sched is not None and sched.decay_start is not None:
            if state.step >= sched.decay_start + sched.decay_len:
                return state.pending_reason
        if state.step >= cfg.step_limit:
            return self._limit_reason(state, f"{cfg.step_limit} steps" + (" (max_steps)" if cfg.auto else ""))
        if cfg.max_time is not None and state.elapsed >= cfg.max_time:
            return self._limit_reason(state, f"max_time {cfg.max_time:g} s")
        return None

    def _on_plateau(self, state) -> None:
        cfg, sched = self.cfg, self.schedule
        k = khat_check(self.flow, self.target, cfg.check_draws, seed=state.step)
        state.khat_checks.append([state.step, k])
        if sched is None or k < cfg.khat or sched.level >= cfg.lr_drops:
            good = k < cfg.khat
            state.pending_reason = (
                f"converged: ELBO flat (rose {state.elbo_delta:+.3f} nats over the last {cfg.window} steps) and "
                f"PSIS k-hat {k:.2f} < {cfg.khat}"
                if good
                else f"converged with k-hat {k:.2f} >= {cfg.khat}: the ELBO stopped rising after {cfg.lr_drops} "
                "learning-rate halvings (the flow cannot fit closer at this size)"
            )
            if sched is not None:
                sched.decay_start = state.step
                sched.decay_len = max(cfg.window, round(cfg.final_decay * state.step))
        else:
            sched.level += 1
            state.since_change = 0

    @staticmethod
    def _limit_reason(state, what: str) -> str:
        rising = state.elbo_flat is False
        return f"reached {what}" + ("; the ELBO was still rising" if rising else "")


__all__ = ["AutoSchedule", "Monitor", "khat_check", "window_delta"]
