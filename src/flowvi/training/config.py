"""Options of reverse-KL training (:func:`flowvi.training.loop.fit`), grouped by concern.

``TrainConfig`` holds one small dataclass per concern: :class:`Optimization` (steps, batch, learning rate and its
schedule, estimator), :class:`Stopping` (convergence-driven training, ``steps="auto"``), :class:`Guard` (skipped
steps), :class:`Logging`, :class:`FABOptions` and :class:`FastOptions` (the fast GPU step). Every option can also
be given and read by its own name, ``TrainConfig(steps=500, lr=3e-3).lr``; ``dataclasses.asdict`` gives the nested
dict and ``flat()`` the flat one (as run directories' config.json hold it); ``TrainConfig(**d)`` reads either.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields


@dataclass
class Optimization:
    steps: int | str = "auto"  # an integer, or "auto": train until converged (Stopping)
    batch_size: int = 256
    lr: float = 1e-3
    schedule: str = "auto"  # auto | cosine | constant (auto: cosine for a fixed step count, else plateau decay)
    warmup: int = 0
    weight_decay: float = 0.0
    clip: float | None = 10.0  # gradient-norm clipping; None turns it off
    estimator: str = "reparam"  # a name in flowvi.objectives.ESTIMATOR_NAMES


@dataclass
class Stopping:
    """Convergence-driven training (``steps="auto"``; the rule: :mod:`flowvi.training.convergence`)."""

    max_steps: int = 20_000  # the most steps with steps="auto"
    max_time: float | None = None  # seconds of training (either mode); None: no limit
    window: int = 100  # steps per window of the smoothed-ELBO comparison
    tol: float = 0.01  # nats: a window mean this little above the previous one is a plateau
    khat: float = 0.7  # the PSIS k-hat below which a plateaued fit is accepted
    check_draws: int = 4096  # draws of the k-hat check
    lr_drops: int = 2  # plateaus with k-hat >= khat that halve the learning rate before giving up
    final_decay: float = 0.2  # the closing cosine decay, as a fraction of the steps so far (at least one window)


@dataclass
class Guard:
    max_skip_fraction: float = 0.5  # stop when more than this fraction of steps were skipped...
    min_steps_before_stop: int = 20  # ...after at least this many steps


@dataclass
class Logging:
    checkpoint_every: int = 200
    log_every: int = 10


@dataclass
class FABOptions:
    fab_stages: int = 8  # estimator="fab": AIS stages (flowvi.objectives.fab.FAB)
    fab_leapfrog: int = 3  # estimator="fab": leapfrog steps per HMC transition
    fab_buffer: int = 16384  # estimator="fab": prioritized replay buffer, in draws (0: none)
    fab_replay: int = 4  # estimator="fab" with a buffer: training steps per AIS run


@dataclass
class FastOptions:
    """The fast step (docs/performance.md): "auto" = on for CUDA devices, off on the CPU."""

    compile: bool | str = "auto"  # torch.compile the estimator's forward and backward
    cuda_graph: bool | str = "auto"  # capture the whole step in a CUDA graph after warm-up
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast; log-dets, log-densities, loss in fp32)
    tf32: bool = True  # TF32 matrix products on CUDA during training
    overlap: bool | str = "auto"  # compile layer by layer: all-reduce overlaps backward (auto: CUDA + torchrun)
    overlap_layers: int = 1  # with overlap: consecutive layers per compiled region
    grad_comm: str = "fp32"  # fp32 | bf16 | fp16: dtype of the data-parallel gradient all-reduce


GROUPS = {
    "optimization": Optimization,
    "stopping": Stopping,
    "guard": Guard,
    "logging": Logging,
    "fab": FABOptions,
    "fast": FastOptions,
}
_OWNER = {f.name: group for group, cls in GROUPS.items() for f in fields(cls)}


@dataclass(init=False)
class TrainConfig:
    """Settings of :func:`flowvi.fit` (the options of ``flowvi fit``; stored in a run's ``config.json``), grouped by
    concern; construct with option names (``TrainConfig(steps=2000, lr=1e-3)``) and/or groups
    (``TrainConfig(stopping=Stopping(...))``), and read any option by its name (``cfg.lr``).

    ``optimization``: Adam (Kingma & Ba 2015) on batches of ``batch_size`` flow samples at learning rate ``lr``,
    a linear warm-up, then a cosine decay ``lr_t = lr (1 + cos(pi t / steps)) / 2`` (Loshchilov & Hutter 2017),
    a constant rate, or with ``steps="auto"`` a constant rate halved on plateaus and a closing decay; gradients
    clipped to norm ``clip``; ``estimator`` names the gradient of reverse KL, ``KL(q||p) = E_q[log q - log p]``
    (:mod:`flowvi.objectives.estimators`), or ``fab`` (the alpha = 2 divergence by AIS, Midgley et al. 2023,
    arXiv 2208.01893; options in ``fab``). ``stopping``: a step count, or ``auto``: until the smoothed ELBO is
    flat and PSIS k-hat < 0.7, within ``max_steps`` / ``max_time`` (docs/convergence.md). ``guard``: draws
    with a non-finite log density are dropped, a step with too few finite draws is skipped, and too many skipped
    steps raise :class:`~flowvi.training.loop.TrainingDiverged`. ``logging``: metrics and checkpoint intervals.
    ``fast``: the CUDA step (``torch.compile``, CUDA graph, autocast precision, TF32; under torchrun the overlap
    of the gradient all-reduce and its dtype).
    """

    optimization: Optimization = field(default_factory=Optimization)
    stopping: Stopping = field(default_factory=Stopping)
    guard: Guard = field(default_factory=Guard)
    logging: Logging = field(default_factory=Logging)
    fab: FABOptions = field(default_factory=FABOptions)
    fast: FastOptions = field(default_factory=FastOptions)

    def __init__(self, **options):
        groups = {name: cls() for name, cls in GROUPS.items()}
        for name, value in options.items():
            if name in GROUPS:
                groups[name] = value if isinstance(value, GROUPS[name]) else GROUPS[name](**value)
        for name, group in groups.items():
            object.__setattr__(self, name, group)
        for name, value in options.items():
            if name not in GROUPS:
                setattr(self, name, value)

    def __getattr__(self, name):
        group = _OWNER.get(name)
        if group is None or group not in self.__dict__:
            raise AttributeError(f"TrainConfig has no option {name!r}")
        return getattr(self.__dict__[group], name)

    def __setattr__(self, name, value):
        if name in GROUPS:
            object.__setattr__(self, name, value)
        elif name in _OWNER:
            setattr(self.__dict__[_OWNER[name]], name, value)
        else:
            raise TypeError(f"unknown training option {name!r}")

    def flat(self) -> dict:
        """Every option by its own name, in one flat dict (``config.json``'s ``train``; ``TrainConfig(**d)`` reads it)."""
        return {f.name: getattr(group, f.name) for group in (getattr(self, g) for g in GROUPS) for f in fields(group)}

    @property
    def auto(self) -> bool:
        """True when training runs until converged (``steps="auto"``)."""
        return self.steps == "auto"

    @property
    def step_limit(self) -> int:
        """The most steps this run takes: ``steps``, or ``max_steps`` with ``steps="auto"``."""
        return self.max_steps if self.auto else int(self.steps)

    def check(self) -> None:
        """ValueError for options no training can run with."""
        if not (self.steps == "auto" or (isinstance(self.steps, int) and self.steps >= 1)):
            raise ValueError(f"steps must be a positive integer or 'auto', got {self.steps!r}")
        if self.max_time is not None and not self.max_time > 0:
            raise ValueError(f"max_time must be positive (seconds), got {self.max_time}")
        for name in ("max_steps", "window", "check_draws", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.schedule not in ("auto", "cosine", "constant"):
            raise ValueError(f"unknown schedule {self.schedule!r}; choose auto, cosine or constant")


__all__ = ["FABOptions", "FastOptions", "GROUPS", "Guard", "Logging", "Optimization", "Stopping", "TrainConfig"]
