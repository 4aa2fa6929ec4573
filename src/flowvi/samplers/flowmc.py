"""Hybrid NF-MCMC in the style of FlowMC: lock-step local HMC chains plus global independence moves from a flow
that is trained, by maximum likelihood, on the chains' own states.

Gabrié, Rotskoff & Vanden-Eijnden (2022), *Adaptive Monte Carlo augmented with normalizing flows*, PNAS 119,
e2109420119; Wong, Gabrié & Foreman-Mackey (2023), *flowMC: Normalizing flow enhanced sampling package for
probabilistic inference in JAX*, JOSS 8, 5021. What :func:`flowmc` runs, with N chains x_1..x_N in lock-step on
the target's device and dtype (the flow may be float32 while the chains are float64; states are cast at the
boundary):

* **Phase 0, warm-up**: :func:`flowvi.samplers.adaptive_hmc.adaptive_hmc` with ``draws = 0`` (dual averaging of
  the step size, Stan's windowed diagonal metric ``m_inv``); its last states start the chains.
* **Local move**: one HMC transition of every chain (:func:`flowvi.samplers.adaptive_hmc.hmc_step`: the warm-up's
  step size and metric, fixed; a number of leapfrog steps drawn from ``{1..max_leapfrog}``).
* **Global move** (:func:`global_move`): every chain proposes ``x' ~ q`` independently of its state and accepts
  with the independence Metropolis-Hastings probability ``min(1, alpha)``,

      log alpha = log p(x') - log p(x) + log q(x) - log q(x'),

  which needs ``log q`` of the current state, i.e. the flow's inverse. A move is rejected when ``x'``, ``log p(x')``,
  ``log q(x')`` or ``log q(x)`` is not finite (a LOFT layer's inverse overflows far beyond its threshold): that
  rejects the pair (x, x') in both directions, so detailed balance holds on the states where both are finite.
* **Standardization**: the flow models ``y = (x - m) / s``, with m and s the mean and sd of the chains' states in
  the first training round (per coordinate), so ``q(x) = q_y((x - m) / s) / prod(s)`` (:class:`StandardizedFlow`)
  and a freshly built flow (couplings at the identity) starts as the diagonal Gaussian N(m, diag s^2) of the chains.
* **Training rounds** (``rounds``): ``local_steps`` local moves, whose states are appended to a buffer (the newest
  ``buffer_size`` kept), then ``train_steps`` Adam steps on minibatches of the buffer of the forward-KL (maximum
  likelihood) loss ``-(1/B) sum_b log q(x_b)`` (mass covering: the flow puts mass wherever the chains have been,
  unlike reverse KL), then ``global_steps`` global moves with the current flow. These rounds adapt the proposal;
  their states are not kept.
* **Production**: the flow frozen, rounds of ``local_steps`` local moves and a block of ``global_steps`` global
  moves; a local move is one iteration, and so is a whole block of global moves (its last state is the draw), and
  every ``thin``-th of ``draws`` iterations is kept. With q fixed, both moves leave p invariant, so the production
  chains are a valid MCMC. (Keeping the state after every global move would weight a state that rejects all of
  them ``global_steps + 1`` times in the draws' mean: on the regularized horseshoe at p = 30, with 2 % acceptance,
  the bulk-ESS of beta per local move was four times lower that way than with one draw per block.)

Every global move is one ``log_prob`` evaluation per chain (no gradient); after each block of global moves the
gradient at the chains' states is recomputed once. All randomness comes from ``torch.Generator`` objects seeded by
``seed`` (the warm-up's own, then ``seed + 1``): the global torch RNG is not touched, except that a flow whose base
is not the standard normal samples from it on a forked, seeded copy (:func:`sample_base`).

In high dimension an independence proposal is accepted only when q matches p closely in all d coordinates (the
log weight ``log p - log q`` has a spread growing like sqrt(d) for a fixed per-coordinate mismatch); the global
acceptance in the result says how often it happened.
"""

from __future__ import annotations

import math
import operator
import time
from dataclasses import dataclass

import torch
from torch import nn

from flowvi.core.bases import StandardNormal
from flowvi.core.options import split_options
from flowvi.samplers.adaptive_hmc import (
    ChainSchedule,
    HMCKernel,
    adaptive_hmc,
    chain_device_dtype,
    flush_denormals,
    hmc_step,
)
from flowvi.samplers.hmc import GraphedLeapfrog, leapfrog, log_prob_and_grad


def _is_count(v, low: int) -> bool:
    try:
        return operator.index(v) >= low
    except TypeError:
        return False


def _same_device(a: torch.device, b: torch.device) -> bool:
    """``cuda`` and ``cuda:0`` are the same device when device 0 is the current one."""
    if a.type != b.type:
        return False
    if a.type != "cuda":
        return True
    current = torch.cuda.current_device()
    return (current if a.index is None else a.index) == (current if b.index is None else b.index)


def _anchor(module: nn.Module) -> torch.Tensor:
    """A floating-point parameter or buffer of ``module``: its device and dtype are the module's."""
    for t in (*module.parameters(), *module.buffers()):
        if t.is_floating_point():
            return t
    raise ValueError(f"{type(module).__name__} has no floating-point parameter or buffer to take a device from")


def sample_base(base, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` draws of a flow's base distribution from ``generator``. A standard normal base draws from it directly;
    any other base (Student-t needs Gamma draws, which take no generator) draws from the global RNG forked and
    seeded from ``generator``, so the caller's global RNG stream is left as it was."""
    a = base._anchor
    if generator is None:
        return base.sample(n)
    if isinstance(base, StandardNormal):
        return torch.randn((n, *base.event_shape), generator=generator, device=a.device, dtype=a.dtype)
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())
    cuda = a.device.type == "cuda"
    with torch.random.fork_rng(devices=[a.device] if cuda else []):
        torch.random.default_generator.manual_seed(seed)
        if cuda:
            with torch.cuda.device(a.device):
                torch.cuda.manual_seed(seed)
        return base.sample(n)


class StandardizedFlow(nn.Module):
    """The density of ``x = loc + scale * y``, ``y ~ flow``: ``log q(x) = log q_y((x - loc) / scale) - sum log scale``.

    ``loc`` and ``scale`` (d,) are in the chains' dtype, the flow in its own (float32, say); ``log_prob`` and
    ``sample_and_log_prob`` take and return the chains' dtype."""

    def __init__(self, flow, loc: torch.Tensor, scale: torch.Tensor):
        super().__init__()
        self.flow = flow
        self.register_buffer("loc", loc.detach().clone())
        self.register_buffer("scale", scale.detach().clone())

    @property
    def dim(self) -> int:
        return self.flow.dim

    def standardize(self, x: torch.Tensor) -> torch.Tensor:
        """``(x - loc) / scale`` in the flow's dtype."""
        return ((x - self.loc) / self.scale).to(_anchor(self.flow).dtype)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        lq = self.flow.log_prob(self.standardize(x))
        return lq.to(self.loc.dtype) - self.scale.log().sum()

    def sample_and_log_prob(self, n: int, generator: torch.Generator | None = None):
        z = sample_base(self.flow.base, n, generator)
        y, logdet = self.flow.transform(z)
        x = self.loc + self.scale * y.to(self.loc.dtype)
        return x, (self.flow.base.log_prob(z) - logdet).to(self.loc.dtype) - self.scale.log().sum()


@torch.no_grad()
def global_move(proposal, target, x, lp, log_q, generator: torch.Generator):
    """One independence Metropolis-Hastings step of every chain (module docstring): ``x' ~ proposal`` and accept
    with probability ``min(1, exp(log p(x') - log p(x) + log q(x) - log q(x')))``; rejected where any of x', its
    log densities or ``log_q`` (= log q(x)) is not finite. Returns ``(x, lp, log_q, accept_prob, accepted)``: the
    new states with their log p and log q, and per chain the acceptance probability (0 when rejected as non-finite)
    and whether the move was taken."""
    xp, lqp = proposal.sample_and_log_prob(x.shape[0], generator=generator)
    xp, lqp = xp.to(x.dtype), lqp.to(x.dtype)
    finite_x = torch.isfinite(xp).all(1)
    xp = torch.where(finite_x[:, None], xp, x)  # the target never sees NaN or inf
    lpp = target.log_prob(xp)
    ok = finite_x & torch.isfinite(lpp) & torch.isfinite(lqp) & torch.isfinite(log_q)
    log_alpha = torch.where(ok, (lpp - lp) + (log_q - lqp), torch.full_like(lp, -math.inf))
    log_u = torch.rand(x.shape[0], generator=generator, device=x.device, dtype=x.dtype).log()
    accepted = log_u < log_alpha
    return (
        torch.where(accepted[:, None], xp, x),
        torch.where(accepted, lpp, lp),
        torch.where(accepted, lqp, log_q),
        log_alpha.clamp(max=0).exp(),
        accepted,
    )


@dataclass(frozen=True)
class Schedule:
    """How long each phase runs: ``chains`` in lock-step, ``warmup`` adaptive-HMC iterations, ``rounds`` training
    rounds of ``local_steps`` local moves, ``train_steps`` Adam steps and ``global_steps`` global moves, then
    ``draws`` production iterations, every ``thin``-th kept. ``max_seconds`` bounds the wall time (module docstring)."""

    chains: int = 64
    warmup: int = 500
    rounds: int = 20
    local_steps: int = 20
    global_steps: int = 20
    train_steps: int = 50
    draws: int = 1000
    thin: int = 1
    seed: int = 0
    max_seconds: float | None = None


@dataclass(frozen=True)
class FlowTraining:
    """Maximum likelihood on the chains' states: Adam with ``lr``, minibatches of ``batch_size`` from the newest
    ``buffer_size`` states, gradient-norm clip ``clip``; ``standardize`` the states first (:class:`StandardizedFlow`)."""

    batch_size: int = 256
    lr: float = 1e-3
    buffer_size: int = 20_000
    clip: float = 50.0
    standardize: bool = True


def _validate(target, flow, s: Schedule, t: FlowTraining, hmc: HMCKernel, x0) -> None:
    counts = {
        "rounds": s.rounds,
        "local_steps": s.local_steps,
        "global_steps": s.global_steps,
        "train_steps": s.train_steps,
        "draws": s.draws,
        "thin": s.thin,
        "max_leapfrog": hmc.max_leapfrog,
        "batch_size": t.batch_size,
        "buffer_size": t.buffer_size,
    }
    if s.chains < 2:
        raise ValueError(f"flowmc needs chains >= 2 (the warm-up's metric and R-hat are across chains); got {s.chains}")
    bad = {k: v for k, v in counts.items() if not _is_count(v, 1)}
    if not _is_count(s.warmup, 0):
        bad["warmup"] = s.warmup
    if bad:
        raise ValueError(
            "flowmc needs positive integer counts (warmup >= 0); got " + ", ".join(f"{k}={v!r}" for k, v in bad.items())
        )
    if not t.lr > 0 or not t.clip > 0:
        raise ValueError(f"lr and clip must be positive; got {t.lr}, {t.clip}")
    if s.max_seconds is not None and not s.max_seconds > 0:
        raise ValueError(f"max_seconds must be positive, got {s.max_seconds}")
    d = target.dim
    if getattr(flow, "dim", None) != d:
        raise ValueError(f"the flow's dimension ({getattr(flow, 'dim', None)}) is not the target's ({d})")
    if x0 is not None and (x0.ndim != 2 or x0.shape != (s.chains, d)):
        raise ValueError(f"x0 must have shape (chains, d) = ({s.chains}, {d}); got {tuple(x0.shape)}")


class _Chains:
    """The chains after the warm-up, with their counters: local moves, global moves, training rounds."""

    def __init__(self, target, warm: dict, s: Schedule, hmc: HMCKernel, device):
        self.target, self.s, self.hmc = target, s, hmc
        self.eps, self.m_inv, self.x = warm["step_size"], warm["inverse_metric"], warm["last"]
        self.gen = torch.Generator(device=device).manual_seed(s.seed + 1)
        self.lp, self.g = log_prob_and_grad(target, self.x)
        self.integrator = GraphedLeapfrog(target, self.x, self.m_inv) if warm["cuda_graph"] else leapfrog
        self.grads, self.log_probs = warm["leapfrogs"] + 1, 0
        self.div = torch.zeros(s.chains, dtype=torch.long, device=device)
        self.device, self.proposal = device, None

    def local_block(self, n_moves: int, states: list | None = None) -> torch.Tensor:
        acc = torch.zeros(self.s.chains, dtype=torch.float64, device=self.device)
        for _ in range(n_moves):
            self.x, self.lp, self.g, a, divergent, n_steps = hmc_step(
                self.target, self.x, self.lp, self.g, self.eps, self.m_inv, self.hmc.max_leapfrog, self.gen,
                self.integrator,
            )  # fmt: skip
            self.grads += n_steps
            self.div += divergent
            acc += a.to(torch.float64)
            if states is not None:
                states.append(self.x)
        return acc

    def global_block(self, n_moves: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``n_moves`` global moves of every chain, then the gradient at the states for the next local moves."""
        acc = torch.zeros(self.s.chains, dtype=torch.float64, device=self.device)
        jumps = torch.zeros(self.s.chains, dtype=torch.long, device=self.device)
        with torch.no_grad():
            log_q = self.proposal.log_prob(self.x)
            for _ in range(n_moves):
                self.x, self.lp, log_q, a, accepted = global_move(
                    self.proposal, self.target, self.x, self.lp, log_q, self.gen
                )
                acc += a.to(torch.float64)
                jumps += accepted
        self.log_probs += n_moves
        self.lp, self.g = log_prob_and_grad(self.target, self.x)
        self.grads += 1
        return acc, jumps


def _train(chains: _Chains, flow, t: FlowTraining, deadline, progress: bool) -> dict:
    """The training rounds: local moves fill the buffer, maximum likelihood on it, global moves with the flow."""
    s, d = chains.s, chains.target.dim
    buffer, opt = None, torch.optim.Adam(flow.parameters(), lr=t.lr)
    out = {"local": [], "global": [], "nll": [], "skipped": 0, "rounds": 0, "stopped_early": False}
    for r in range(s.rounds):
        if r > 0 and deadline is not None and time.perf_counter() > deadline:
            out["stopped_early"] = True
            break
        states = []
        acc_local = chains.local_block(s.local_steps, states)
        new = torch.cat(states)
        buffer = new[-t.buffer_size :] if buffer is None else torch.cat([buffer, new])[-t.buffer_size :]
        if chains.proposal is None:
            loc, scale = (
                torch.zeros(d, device=new.device, dtype=new.dtype),
                torch.ones(d, device=new.device, dtype=new.dtype),
            )
            if t.standardize:
                loc, sd = buffer.mean(0), buffer.std(0)
                scale = torch.where(sd > 0, sd, torch.ones_like(sd))
            chains.proposal = StandardizedFlow(flow, loc, scale)
        out["nll"] += _fit_round(flow, chains.proposal, buffer, opt, t, s.train_steps, chains.gen, out)
        acc_global, _ = chains.global_block(s.global_steps)
        out["rounds"] += 1
        out["local"].append(float(acc_local.mean()) / s.local_steps)
        out["global"].append(float(acc_global.mean()) / s.global_steps)
        if progress:
            print(
                f"flowmc round {r + 1}/{s.rounds}: local acceptance {out['local'][-1]:.3f}, global "
                f"{out['global'][-1]:.3f}, NLL {out['nll'][-1]:.2f}",
                flush=True,
            )
    return out


def _fit_round(flow, proposal, buffer, opt, t: FlowTraining, steps: int, gen, out: dict) -> list[float]:
    """``steps`` Adam steps of ``-mean log q`` on minibatches of the buffer; a non-finite step is skipped.
    Returns the losses in nats per draw of x (the standardization's log-Jacobian added back)."""
    log_scale_sum = float(proposal.scale.log().sum())
    was_training = flow.training
    flow.train()
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, len(buffer), (t.batch_size,), generator=gen, device=buffer.device)
        loss = -flow.log_prob(proposal.standardize(buffer[idx])).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(flow.parameters(), t.clip)
        if torch.isfinite(loss) and torch.isfinite(norm):
            opt.step()
        else:
            out["skipped"] += 1
        losses.append(loss.detach())
    flow.train(was_training)
    return [v + log_scale_sum for v in torch.stack(losses).double().cpu().tolist()]


def _produce(chains: _Chains, store: torch.Tensor, deadline, trace: dict) -> dict:
    """Production with the flow frozen: a local move or a block of global moves is one iteration."""
    s, dev, n = chains.s, chains.device, chains.s.chains
    zeros = lambda dtype=torch.float64: torch.zeros(n, dtype=dtype, device=dev)  # noqa: E731
    local_acc, global_acc, jumps, round_local, round_global = zeros(), zeros(), zeros(torch.long), zeros(), zeros()
    n_local = n_global = kept = it = 0
    stopped_early, period = False, s.local_steps + 1
    while it < s.draws:
        if deadline is not None and time.perf_counter() > deadline:
            stopped_early = True
            break
        if it % period < s.local_steps:
            a = chains.local_block(1)
            local_acc += a
            round_local += a
            n_local += 1
        else:
            a, accepted = chains.global_block(s.global_steps)
            global_acc += a
            round_global += a
            jumps += accepted
            n_global += s.global_steps
            trace["local"].append(float(round_local.mean()) / s.local_steps)
            trace["global"].append(float(round_global.mean()) / s.global_steps)
            round_local.zero_(), round_global.zero_()
        if it % s.thin == s.thin - 1 and kept < len(store):
            store[kept] = chains.x.to(store.dtype)
            kept += 1
        it += 1
    return {
        "draws": store[:kept].transpose(0, 1),
        "local_accept": (local_acc / max(n_local, 1)).cpu(),
        "global_accept": (global_acc / max(n_global, 1)).cpu(),
        "global_jumps": jumps.cpu(),
        "iterations": it,
        "stopped_early": stopped_early,
    }


@flush_denormals()
def _deadlines(s: Schedule, start: float) -> tuple:
    """``max_seconds`` shared by the phases in proportion to their HMC iterations: the warm-up's budget and the
    ends of training and of the whole run (all None without ``max_seconds``)."""
    if s.max_seconds is None:
        return None, None, None
    total_its = s.warmup + s.rounds * s.local_steps + s.draws * s.local_steps / (s.local_steps + 1)
    warm_budget = s.max_seconds * s.warmup / total_its if s.warmup > 0 else None
    deadline_train = start + s.max_seconds * (s.warmup + s.rounds * s.local_steps) / total_its
    return warm_budget, deadline_train, start + s.max_seconds


def flowmc(
    target,
    flow,
    schedule: Schedule | None = None,
    local: HMCKernel | None = None,
    training: FlowTraining | None = None,
    *,
    x0: torch.Tensor | None = None,
    device=None,
    dtype: torch.dtype | None = None,
    store_dtype: torch.dtype | None = None,
    progress: bool = False,
    **flat,
) -> dict:
    """Run the hybrid sampler (module docstring) on ``target`` with ``flow`` (trained in place) as the proposal.

    Options come grouped (:class:`Schedule`, :class:`~flowvi.samplers.adaptive_hmc.HMCKernel` for the warm-up and
    the local moves, :class:`FlowTraining`) or as their flat
    keywords (``chains=16, warmup=100, lr=1e-3``), which fill the groups not given. Chains start from ``x0``
    (chains, d) or dispersed on ``device``/``dtype`` as in :func:`flowvi.samplers.adaptive_hmc.adaptive_hmc`;
    ``flow`` must have the target's dimension and live on the chains' device (any dtype). ``max_seconds`` bounds the
    wall time: the warm-up, the training rounds (at least one) and production get shares in proportion to their HMC
    iterations, each ends early when past its share, and what was done is kept.

    Returns a dict: ``draws`` (chains, n, d) in ``store_dtype`` (default the chains'), ``flow`` (the
    :class:`StandardizedFlow` around the trained flow, a density over x), ``step_size``, ``inverse_metric``,
    ``local_accept`` and ``global_accept`` (per chain, mean acceptance probability over production),
    ``global_jumps`` (per chain, global moves taken in production), ``local_accept_trace`` and
    ``global_accept_trace`` (per round, training rounds then production rounds, mean over chains),
    ``training_rounds``, ``nll_trace`` (per training step: the minibatch's mean -log q(x), nats per draw),
    ``skipped_train_steps``, ``divergences`` (per chain, after warm-up) and ``warmup_divergences``,
    ``gradient_evaluations`` (per chain, all phases; ``warmup_gradient_evaluations`` those of the warm-up),
    ``log_prob_evaluations`` (per chain, the global proposals' target evaluations without gradient),
    ``warmup_iterations``, ``iterations`` (production), ``seconds_warmup``, ``seconds_training``,
    ``seconds_sampling``, ``stopped_early``, ``cuda_graph`` and ``last`` (the final states).
    """
    given_s, given_k, given_t = split_options(flat, Schedule, HMCKernel, FlowTraining)
    s, hmc, t = schedule or given_s, local or given_k, training or given_t
    _validate(target, flow, s, t, hmc, x0)
    device, dtype = chain_device_dtype(target, x0, device, dtype)
    flow_device = _anchor(flow).device
    if not _same_device(flow_device, torch.device(device)):
        raise ValueError(f"the flow is on {flow_device}, the chains on {device}: move one of them (flow.to(...))")

    start = time.perf_counter()
    warm_budget, deadline_train, deadline_all = _deadlines(s, start)
    warm_up = ChainSchedule(chains=s.chains, warmup=s.warmup, draws=0, seed=s.seed, max_seconds=warm_budget)
    # raises ValueError if log_prob is not finite at the start
    warm = adaptive_hmc(target, warm_up, hmc, x0=x0, device=device, dtype=dtype, progress=progress)
    t_warm = time.perf_counter()
    chains = _Chains(target, warm, s, hmc, device)
    trained = _train(chains, flow, t, deadline_train, progress)
    t_train = time.perf_counter()
    store = torch.empty(s.draws // s.thin, s.chains, target.dim, device=device, dtype=store_dtype or dtype)
    produced = _produce(chains, store, deadline_all, trained)
    end = time.perf_counter()
    return {
        **produced,
        "flow": chains.proposal,
        "step_size": chains.eps,
        "inverse_metric": chains.m_inv,
        "local_accept_trace": trained["local"],
        "global_accept_trace": trained["global"],
        "training_rounds": trained["rounds"],
        "nll_trace": trained["nll"],
        "skipped_train_steps": trained["skipped"],
        "divergences": chains.div.cpu(),
        "warmup_divergences": warm["warmup_divergences"],
        "gradient_evaluations": chains.grads,
        "warmup_gradient_evaluations": warm["leapfrogs"],
        "log_prob_evaluations": chains.log_probs,
        "warmup_iterations": warm["warmup_iterations"],
        "seconds_warmup": t_warm - start,
        "seconds_training": t_train - t_warm,
        "seconds_sampling": end - t_train,
        "stopped_early": bool(warm["stopped_early"]) or trained["stopped_early"] or produced["stopped_early"],
        "cuda_graph": bool(warm["cuda_graph"]),
        "last": chains.x,
    }


__all__ = ["FlowTraining", "Schedule", "StandardizedFlow", "flowmc", "global_move", "sample_base"]
