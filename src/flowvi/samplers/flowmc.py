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

import torch
from torch import nn

from flowvi.core.bases import StandardNormal
from flowvi.samplers.adaptive_hmc import (
    GraphedLeapfrog,
    _log_prob_and_grad,
    adaptive_hmc,
    chain_device_dtype,
    flush_denormals,
    hmc_step,
    leapfrog,
)


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


@flush_denormals()
def flowmc(
    target,
    flow,
    chains: int = 64,
    warmup: int = 500,
    rounds: int = 20,
    local_steps: int = 20,
    global_steps: int = 20,
    train_steps: int = 50,
    draws: int = 1000,
    thin: int = 1,
    max_leapfrog: int = 32,
    target_accept: float = 0.8,
    step_size: float = 0.1,
    x0: torch.Tensor | None = None,
    init_radius: float = 2.0,
    batch_size: int = 256,
    lr: float = 1e-3,
    buffer_size: int = 20_000,
    clip: float = 50.0,
    standardize: bool = True,
    seed: int = 0,
    max_seconds: float | None = None,
    store_dtype: torch.dtype | None = None,
    device=None,
    dtype: torch.dtype | None = None,
    cuda_graph: bool | None = None,
    progress: bool = False,
) -> dict:
    """Run the hybrid sampler (module docstring) on ``target`` with ``flow`` (trained in place) as the proposal.

    Chains, warm-up and their options (``warmup``, ``max_leapfrog``, ``target_accept``, ``step_size``, ``x0``,
    ``init_radius``, ``device``, ``dtype``, ``cuda_graph``) are those of
    :func:`flowvi.samplers.adaptive_hmc.adaptive_hmc`; ``flow`` must have the target's dimension and live on the
    chains' device (any dtype). ``rounds`` training rounds of ``local_steps`` local moves, ``train_steps`` Adam
    steps (``lr``, minibatches of ``batch_size`` from the newest ``buffer_size`` local states, gradient-norm clip
    ``clip``; a step with a non-finite loss or gradient is skipped) and ``global_steps`` global moves; then
    ``draws`` production iterations (a local move or a block of ``global_steps`` global moves is one; module
    docstring), every ``thin``-th kept. ``max_seconds`` bounds the wall time: the warm-up, the training rounds (at
    least one) and production get shares in proportion to their HMC iterations, each ends early when past its share
    and what was done is kept.

    Returns a dict: ``draws`` (chains, n, d) in ``store_dtype`` (default the chains'), ``flow`` (the
    :class:`StandardizedFlow` around the trained flow, a density over x), ``step_size``, ``inverse_metric``,
    ``local_accept`` and ``global_accept`` (per chain, mean acceptance probability over production),
    ``global_jumps`` (per chain, global moves taken in production), ``local_accept_trace`` and
    ``global_accept_trace`` (per round, training rounds then production rounds, mean over chains),
    ``training_rounds``, ``nll_trace`` (per training step: the minibatch's mean -log q(x), nats per draw),
    ``divergences`` (per chain, after warm-up) and ``warmup_divergences``, ``gradient_evaluations`` (per chain, all
    phases; ``warmup_gradient_evaluations`` those of the warm-up), ``log_prob_evaluations`` (per chain, the global
    proposals' target evaluations without gradient),
    ``warmup_iterations``, ``iterations`` (production), ``seconds_warmup``, ``seconds_training``,
    ``seconds_sampling``, ``stopped_early``, ``cuda_graph`` and ``last`` (the final states).
    """
    counts = {
        "rounds": rounds,
        "local_steps": local_steps,
        "global_steps": global_steps,
        "train_steps": train_steps,
        "draws": draws,
        "thin": thin,
        "max_leapfrog": max_leapfrog,
        "batch_size": batch_size,
        "buffer_size": buffer_size,
    }
    if chains < 2:
        raise ValueError(f"flowmc needs chains >= 2 (the warm-up's metric and R-hat are across chains); got {chains}")
    bad = {k: v for k, v in counts.items() if not _is_count(v, 1)}
    if not _is_count(warmup, 0):
        bad["warmup"] = warmup
    if bad:
        raise ValueError(
            "flowmc needs positive integer counts (warmup >= 0); got " + ", ".join(f"{k}={v!r}" for k, v in bad.items())
        )
    if not lr > 0 or not clip > 0:
        raise ValueError(f"lr and clip must be positive; got {lr}, {clip}")
    if max_seconds is not None and not max_seconds > 0:
        raise ValueError(f"max_seconds must be positive, got {max_seconds}")
    d = target.dim
    if getattr(flow, "dim", None) != d:
        raise ValueError(f"the flow's dimension ({getattr(flow, 'dim', None)}) is not the target's ({d})")
    if x0 is not None and (x0.ndim != 2 or x0.shape != (chains, d)):
        raise ValueError(f"x0 must have shape (chains, d) = ({chains}, {d}); got {tuple(x0.shape)}")
    device, dtype = chain_device_dtype(target, x0, device, dtype)
    flow_device = _anchor(flow).device
    if not _same_device(flow_device, torch.device(device)):
        raise ValueError(f"the flow is on {flow_device}, the chains on {device}: move one of them (flow.to(...))")

    start = time.perf_counter()
    # HMC iterations per phase: the shares of max_seconds
    total_its = warmup + rounds * local_steps + draws * local_steps / (local_steps + 1)
    warm_budget = deadline_train = deadline_all = None
    if max_seconds is not None:
        warm_budget = max_seconds * warmup / total_its if warmup > 0 else None
        deadline_train = start + max_seconds * (warmup + rounds * local_steps) / total_its
        deadline_all = start + max_seconds
    # Phase 0: the warm-up of adaptive_hmc (raises ValueError if log_prob is not finite at the start)
    warm = adaptive_hmc(
        target,
        chains=chains,
        warmup=warmup,
        draws=0,
        max_leapfrog=max_leapfrog,
        target_accept=target_accept,
        step_size=step_size,
        x0=x0,
        init_radius=init_radius,
        seed=seed,
        max_seconds=warm_budget,
        device=device,
        dtype=dtype,
        progress=progress,
        cuda_graph=cuda_graph,
    )
    t_warm = time.perf_counter()
    eps, m_inv, x = warm["step_size"], warm["inverse_metric"], warm["last"]
    gen = torch.Generator(device=device).manual_seed(seed + 1)
    lp, g = _log_prob_and_grad(target, x)
    integrator = GraphedLeapfrog(target, x, m_inv) if warm["cuda_graph"] else leapfrog
    grads = warm["leapfrogs"] + 1
    log_probs = 0
    div = torch.zeros(chains, dtype=torch.long, device=device)
    local_trace, global_trace, nll_trace = [], [], []
    stopped_early = bool(warm["stopped_early"])

    def local_block(n_moves, states=None):
        nonlocal x, lp, g, grads, div
        acc = torch.zeros(chains, dtype=torch.float64, device=device)
        for _ in range(n_moves):
            x, lp, g, a, divergent, n_steps = hmc_step(target, x, lp, g, eps, m_inv, max_leapfrog, gen, integrator)
            grads += n_steps
            div += divergent
            acc += a.to(torch.float64)
            if states is not None:
                states.append(x)
        return acc

    def global_block(n_moves):
        """``n_moves`` global moves of every chain, then the gradient at the states for the next local moves."""
        nonlocal x, lp, g, grads, log_probs
        acc = torch.zeros(chains, dtype=torch.float64, device=device)
        jumps = torch.zeros(chains, dtype=torch.long, device=device)
        with torch.no_grad():
            log_q = proposal.log_prob(x)
            for _ in range(n_moves):
                x, lp, log_q, a, accepted = global_move(proposal, target, x, lp, log_q, gen)
                acc += a.to(torch.float64)
                jumps += accepted
        log_probs += n_moves
        lp, g = _log_prob_and_grad(target, x)
        grads += 1
        return acc, jumps

    # Training rounds: local moves fill the buffer, maximum likelihood on it, global moves with the current flow
    buffer, proposal = None, None
    opt = torch.optim.Adam(flow.parameters(), lr=lr)
    skipped, rounds_done = 0, 0
    for r in range(rounds):
        if r > 0 and deadline_train is not None and time.perf_counter() > deadline_train:
            stopped_early = True
            break
        states = []
        acc_local = local_block(local_steps, states)
        new = torch.cat(states)
        buffer = new[-buffer_size:] if buffer is None else torch.cat([buffer, new])[-buffer_size:]
        if proposal is None:
            if standardize:
                loc, sd = buffer.mean(0), buffer.std(0)
                scale = torch.where(sd > 0, sd, torch.ones_like(sd))
            else:
                loc, scale = torch.zeros(d, device=device, dtype=dtype), torch.ones(d, device=device, dtype=dtype)
            proposal = StandardizedFlow(flow, loc, scale)
        log_scale_sum = float(proposal.scale.log().sum())
        was_training = flow.training
        flow.train()
        losses = []
        for _ in range(train_steps):
            idx = torch.randint(0, len(buffer), (batch_size,), generator=gen, device=device)
            loss = -flow.log_prob(proposal.standardize(buffer[idx])).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(flow.parameters(), clip)
            if torch.isfinite(loss) and torch.isfinite(norm):
                opt.step()
            else:
                skipped += 1
            losses.append(loss.detach())
        flow.train(was_training)
        nll_trace += [v + log_scale_sum for v in torch.stack(losses).double().cpu().tolist()]
        acc_global, _ = global_block(global_steps)
        rounds_done += 1
        local_trace.append(float(acc_local.mean()) / local_steps)
        global_trace.append(float(acc_global.mean()) / global_steps)
        if progress:
            print(
                f"flowmc round {r + 1}/{rounds}: local acceptance {local_trace[-1]:.3f}, global "
                f"{global_trace[-1]:.3f}, NLL {nll_trace[-1]:.2f}",
                flush=True,
            )
    t_train = time.perf_counter()

    # Production: the flow frozen; a local move or a block of global moves is one iteration, every thin-th kept
    n_keep = draws // thin
    store = torch.empty(n_keep, chains, d, device=device, dtype=store_dtype or dtype)
    local_acc = torch.zeros(chains, dtype=torch.float64, device=device)
    global_acc = torch.zeros(chains, dtype=torch.float64, device=device)
    jumps = torch.zeros(chains, dtype=torch.long, device=device)
    n_local = n_global = kept = it = 0
    period = local_steps + 1
    round_local = torch.zeros(chains, dtype=torch.float64, device=device)
    round_global = torch.zeros(chains, dtype=torch.float64, device=device)
    while it < draws:
        if deadline_all is not None and time.perf_counter() > deadline_all:
            stopped_early = True
            break
        if it % period < local_steps:
            a = local_block(1)
            local_acc += a
            round_local += a
            n_local += 1
        else:
            a, accepted = global_block(global_steps)
            global_acc += a
            round_global += a
            jumps += accepted
            n_global += global_steps
            local_trace.append(float(round_local.mean()) / local_steps)
            global_trace.append(float(round_global.mean()) / global_steps)
            round_local.zero_(), round_global.zero_()
        if it % thin == thin - 1 and kept < n_keep:
            store[kept] = x.to(store.dtype)
            kept += 1
        it += 1
    end = time.perf_counter()
    return {
        "draws": store[:kept].transpose(0, 1),
        "flow": proposal,
        "step_size": eps,
        "inverse_metric": m_inv,
        "local_accept": (local_acc / max(n_local, 1)).cpu(),
        "global_accept": (global_acc / max(n_global, 1)).cpu(),
        "global_jumps": jumps.cpu(),
        "local_accept_trace": local_trace,
        "global_accept_trace": global_trace,
        "training_rounds": rounds_done,
        "nll_trace": nll_trace,
        "skipped_train_steps": skipped,
        "divergences": div.cpu(),
        "warmup_divergences": warm["warmup_divergences"],
        "gradient_evaluations": grads,
        "warmup_gradient_evaluations": warm["leapfrogs"],
        "log_prob_evaluations": log_probs,
        "warmup_iterations": warm["warmup_iterations"],
        "iterations": it,
        "seconds_warmup": t_warm - start,
        "seconds_training": t_train - t_warm,
        "seconds_sampling": end - t_train,
        "stopped_early": stopped_early,
        "cuda_graph": bool(warm["cuda_graph"]),
        "last": x,
    }


__all__ = ["StandardizedFlow", "flowmc", "global_move", "sample_base"]
