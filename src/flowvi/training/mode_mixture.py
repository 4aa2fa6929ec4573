"""One flow per mode: the correction for the separated modes that reverse KL drops.

Reverse KL, ``KL(q || p)``, is mode-seeking: a flow started in one of several well-separated modes fits that mode
and stays there (Bishop 2006, *Pattern Recognition and Machine Learning*, Sec. 10.1.2), and its importance weights
cannot reveal the others, since no draw of q lands there. The fit's mode search
(:mod:`flowvi.training.mode_init`) has found them; :func:`mode_mixture` covers them greedily:

1. Start with the fitted flow ``q_1`` and its importance-sampling evidence ``Z_1 = mean_j p(x_j) / q_1(x_j)``,
   ``x_j ~ q_1`` (the mass of the mode it sits in: ``q_1`` has no mass elsewhere).
2. While a mode ``m_i`` of the search is uncovered by the mixture ``q = sum_k pi_k q_k`` (its log weight
   ``log p(m_i) - log q(m_i)`` more than :data:`~flowvi.training.mode_init.UNCOVERED` nats above the
   best-covered mode's; :func:`~flowvi.training.mode_init.mode_gaps`), take the worst-covered one, start a new
   flow there (loc = the mode, scales from the Hessian diagonal:
   :func:`~flowvi.training.mode_init.place_at_mode`), train it by reverse KL with the fit's own loop and settings
   (:func:`flowvi.training.loop.fit`), and estimate its ``Z_k`` the same way.
3. ``pi_k = Z_k / sum_j Z_j`` (:func:`flowvi.core.mixture.weights_from_log_evidence`): with each ``q_k`` close to
   p restricted to its mode, ``Z_k`` is that mode's mass and ``q`` is close to ``p / Z`` everywhere.

Each mode is tried once: a component that drifts away from its start leaves that mode uncovered, and the
independence-MH chains started there (:func:`flowvi.samplers.neutra.mixture_refine`) show it in R-hat. Whatever
the weights, importance sampling and independence MH with the mixture are exact where it covers p; the weights
only make them efficient.
"""

from __future__ import annotations

import time

import torch

from flowvi.core.mixture import FlowMixture, weights_from_log_evidence
from flowvi.diagnostics.evaluate import evaluate
from flowvi.training.loop import TrainConfig, fit
from flowvi.training.mode_init import UNCOVERED, mode_gaps, modes_in_window, place_at_mode

MAX_COMPONENTS = 8


def fit_at_mode(make_flow, target, mode: torch.Tensor, config: TrainConfig | None = None, seed: int = 0):
    """A new flow (``make_flow()``) started at ``mode`` (:func:`~flowvi.training.mode_init.place_at_mode`) and
    trained by reverse KL (:func:`flowvi.training.loop.fit` with ``config``, no run directory, seeded by ``seed``);
    returns ``(flow, record)`` with the stop reason, steps and seconds."""
    t0 = time.perf_counter()
    flow = make_flow()
    anchor = next(flow.parameters())
    placed, _ = place_at_mode(flow, target, mode.to(anchor.device, anchor.dtype))
    torch.manual_seed(seed)
    state = fit(flow, target, config or TrainConfig(), run_dir=None, progress=False)
    flow.eval()
    record = {"placed": placed, "steps": state.step, "stop_reason": state.stop_reason}
    return flow, record | {"seconds": time.perf_counter() - t0}


def mode_mixture(flow, target, modes, make_flow, config=None, n_eval: int = 20_000, seed: int = 0, log=print):
    """The mixture of ``flow`` and one new flow per mode it misses (module docstring): returns
    ``(FlowMixture, info)``; ``info["components"]`` lists each component's start mode, log Z, weight, training
    record, and ``info["uncovered"]`` the modes still uncovered at the end. ``modes`` (k, d): the end points of
    the search (``modes.npy``), of which those within :data:`~flowvi.training.mode_init.MODE_WINDOW` nats of the
    highest count; ``make_flow()`` builds an untrained flow like ``flow``; ``config`` the :class:`TrainConfig` of
    the new flows."""
    flow.eval()
    anchor = next(flow.parameters())
    modes = torch.as_tensor(modes).to(anchor.device, anchor.dtype)
    with torch.no_grad():
        modes = modes_in_window(list(zip(target.log_prob(modes).tolist(), modes, strict=True)))
    flows, log_z, records, tried = [flow], [_log_z(flow, target, n_eval, seed)], [{"start": "the fitted flow"}], set()
    while len(flows) < MAX_COMPONENTS:
        mixture = FlowMixture(flows, weights_from_log_evidence(log_z))
        gaps = mode_gaps(mixture, target, modes)
        open_ = [i for i in torch.argsort(gaps, descending=True).tolist() if gaps[i] > UNCOVERED and i not in tried]
        if not open_:
            break
        i = open_[0]
        tried.add(i)
        log(f"  mode {len(flows)}    fitting a flow at mode {i} of {len(modes)} (log-weight gap {gaps[i]:.1f} nats)")
        q, record = fit_at_mode(make_flow, target, modes[i], config, seed=seed + len(flows))
        flows.append(q)
        log_z.append(_log_z(q, target, n_eval, seed + len(flows)))
        records.append({"start": modes[i].tolist(), **record})
    weights = weights_from_log_evidence(log_z)
    mixture = FlowMixture(flows, weights)
    gaps = mode_gaps(mixture, target, modes)
    components = [
        {**r, "log_z": float(z), "weight": float(w.exp())} for r, z, w in zip(records, log_z, weights, strict=True)
    ]
    return mixture, {"components": components, "uncovered": int((gaps > UNCOVERED).sum()), "modes": len(modes)}


def _log_z(flow, target, n: int, seed: int) -> float:
    """The IS log Z of ``n`` draws of ``flow`` (:func:`flowvi.diagnostics.evaluate.evaluate`), seeded."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return float(evaluate(flow, target, n=n)["log_z"])


__all__ = ["MAX_COMPONENTS", "fit_at_mode", "mode_mixture"]
