"""Gradient estimators: functions ``(flow, target, batch_size) -> Estimate``.

``Estimate.loss`` is a surrogate whose gradient with respect to the flow's parameters is the
estimator; ``Estimate.log_weights`` are the detached ``log p(x) - log q(x)`` of the batch, used for
logging the ELBO and the effective sample size during training.

Reverse KL (the negative ELBO up to log Z):  KL(q||p) = E_q[log q(x) - log p(x)].

* ``reparam`` — the reparameterization trick (Kingma & Welling 2014; Rezende & Mohamed 2015):
  x = f_theta(z), z ~ q0, loss = mean(log q(x) - log p(x)), differentiated through x and theta.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from .targets import checked_log_prob


@dataclass
class Estimate:
    loss: Tensor
    log_weights: Tensor


def reparam(flow, target, batch_size: int) -> Estimate:
    x, log_q = flow.sample_and_log_prob(batch_size)
    log_w = target.log_prob(x) - log_q
    return Estimate(loss=-log_w.mean(), log_weights=log_w.detach())


#: estimator name -> function. Each takes (flow, target, batch_size) and returns an Estimate.
ESTIMATORS = {"reparam": reparam}


def get_estimator(name: str):
    if name not in ESTIMATORS:
        raise ValueError(f"unknown estimator {name!r}; choose one of {', '.join(ESTIMATORS)}")
    return ESTIMATORS[name]


__all__ = ["ESTIMATORS", "Estimate", "checked_log_prob", "get_estimator", "reparam"]
