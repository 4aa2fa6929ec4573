"""ActNorm (Kingma & Dhariwal 2018, Glow): per-channel affine x = z * exp(s) + b.

Channels are dim 1 of (N, C, ...) inputs. Data-dependent initialisation: on the first call, s and b are set so
that the output of that batch has zero mean and unit variance per channel; the output is x for a first
``forward`` call (sampling, variational inference) and z for a first ``inverse`` call (density estimation,
where data enter through the inverse).
log|det dx/dz| = (number of positions per channel) * sum(s).
"""

import torch

from flowvi.transforms.base import Transform


class ActNorm(Transform):
    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.log_scale = torch.nn.Parameter(torch.zeros(channels))
        self.bias = torch.nn.Parameter(torch.zeros(channels))
        self.eps = eps
        self.register_buffer("initialized", torch.tensor(False))
        # Python copy of ``initialized``: reading a CUDA buffer in every call would synchronise the device.
        self._known_initialized = False

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._known_initialized = False

    def _needs_init(self) -> bool:
        if not self._known_initialized:
            self._known_initialized = bool(self.initialized)
        return not self._known_initialized

    def _view(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return t.view(1, -1, *([1] * (z.dim() - 2)))

    @torch.no_grad()
    def _data_init(self, z: torch.Tensor) -> None:
        dims = [d for d in range(z.dim()) if d != 1]
        mean = z.mean(dim=dims)
        std = z.std(dim=dims, unbiased=False) + self.eps
        self.log_scale.copy_(-torch.log(std))
        self.bias.copy_(-mean / std)
        self.initialized.fill_(True)
        self._known_initialized = True

    @torch.no_grad()
    def _data_init_inverse(self, x: torch.Tensor) -> None:
        # z = (x - b) exp(-s) standardised: b = mean(x), s = log std(x).
        dims = [d for d in range(x.dim()) if d != 1]
        self.log_scale.copy_(torch.log(x.std(dim=dims, unbiased=False) + self.eps))
        self.bias.copy_(x.mean(dim=dims))
        self.initialized.fill_(True)
        self._known_initialized = True

    def _positions(self, z: torch.Tensor) -> int:
        return z[0, 0].numel()

    def forward(self, z: torch.Tensor):
        if z.dim() < 2 or z.shape[1] != self.log_scale.numel():
            raise ValueError(f"ActNorm expects (N, {self.log_scale.numel()}, ...), got {tuple(z.shape)}")
        if self._needs_init():
            self._data_init(z)
        x = z * self._view(self.log_scale.exp(), z) + self._view(self.bias, z)
        logdet = self.log_scale.sum() * self._positions(z)
        return x, logdet.expand(z.shape[0])

    def inverse(self, x: torch.Tensor):
        if x.dim() < 2 or x.shape[1] != self.log_scale.numel():
            raise ValueError(f"ActNorm expects (N, {self.log_scale.numel()}, ...), got {tuple(x.shape)}")
        if self._needs_init():
            self._data_init_inverse(x)
        z = (x - self._view(self.bias, x)) * self._view((-self.log_scale).exp(), x)
        logdet = -self.log_scale.sum() * self._positions(x)
        return z, logdet.expand(x.shape[0])

    def forward_with_score(self, z: torch.Tensor, score: torch.Tensor):
        """Jacobian is diagonal and log-det constant in z: score_x = score * exp(-s)."""
        x, logdet = self.forward(z)
        score_x = (score * self._view((-self.log_scale).exp(), z)).detach()
        return x, logdet, score_x
