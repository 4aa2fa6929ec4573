"""Data sets for density estimation: shipped examples and a user's ``.npy`` / ``.npz`` arrays.

Two kinds of data:

* images, ``(N, C, H, W)`` integer arrays with values in ``0 .. levels-1``, modelled after uniform
  dequantization (:mod:`flowvi.data.dequantize`) and scored in bits per dimension;
* vectors, ``(N, D)`` real arrays, standardised with the training split's mean and standard deviation and
  scored in nats per dimension of the original units (the standardisation's log-Jacobian is added back).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from flowvi.data import ArrayData, load_breast_cancer, load_digits, load_wine


def _digits() -> ArrayData:
    images, _ = load_digits()
    return ArrayData("digits", images[:, None].astype(np.int64), levels=17)


def _wine() -> ArrayData:
    return ArrayData("wine", load_wine()[0].astype(np.float64))


def _breast_cancer() -> ArrayData:
    return ArrayData("breast_cancer", load_breast_cancer()[0].astype(np.float64))


def _patches(size: int) -> ArrayData:
    from flowvi.data.patches import patches  # cut at load time from scikit-image / scikit-learn photographs

    return patches(size)


#: name -> (loader, description)
SHIPPED = {
    "digits": (_digits, "UCI optdigits 8x8 images, 1797 x (1, 8, 8), 17 levels (scikit-learn's load_digits)"),
    "wine": (_wine, "UCI wine, 178 x 13 real features"),
    "breast_cancer": (_breast_cancer, "UCI breast cancer Wisconsin (diagnostic), 569 x 30 real features"),
    "patches32": (
        lambda: _patches(32),
        "32x32 RGB patches cut from the photographs in scikit-image / scikit-learn, split by photograph",
    ),
    "patches16": (lambda: _patches(16), "16x16 RGB patches of the same photographs, split by photograph"),
}


def read_array(path: Path, key: str | None, key_option: str = "--key") -> np.ndarray:
    """The array in a ``.npy`` file, or array ``key`` of a ``.npz`` file (its only one when ``key`` is None);
    ``key_option`` names the command-line option that chooses it, in error messages."""
    path = Path(path)
    if path.suffix == ".npy":
        return np.load(path, allow_pickle=False)
    if path.suffix != ".npz":
        raise ValueError(f"data file {path} must be a .npy or .npz file")
    with np.load(path, allow_pickle=False) as archive:
        keys = list(archive.keys())
        if key is None:
            if len(keys) != 1:
                raise ValueError(f"{path} holds several arrays ({', '.join(keys)}); choose one with {key_option}")
            key = keys[0]
        if key not in keys:
            raise ValueError(f"{path} has no array {key!r} ({key_option}); it holds {', '.join(keys)}")
        return archive[key]


def check_array(name: str, x: np.ndarray, levels: int | None = None) -> ArrayData:
    """Validate an array as images (4-d, integer) or vectors (2-d, real) and wrap it."""
    if x.ndim == 4:
        if not np.issubdtype(x.dtype, np.integer):
            raise ValueError(
                f"image array {name} must have an integer dtype (pixel values 0..levels-1), got {x.dtype}; "
                "quantise real-valued images to integers first, or pass (N, D) vectors"
            )
        if x.shape[0] < 2:
            raise ValueError(f"image array {name} needs at least 2 images, got shape {x.shape}")
        lo, hi = int(x.min()), int(x.max())
        if lo < 0:
            raise ValueError(f"image array {name} has negative pixel values (min {lo})")
        if levels is None:
            levels = 256 if x.dtype == np.uint8 else hi + 1
        if hi >= levels:
            raise ValueError(f"image array {name} has pixel value {hi}, outside 0..{levels - 1} (--levels {levels})")
        return ArrayData(name, x.astype(np.int64), levels=max(levels, 2))
    if x.ndim == 2:
        if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
            raise ValueError(f"vector array {name} must be real-valued, got dtype {x.dtype}")
        x = x.astype(np.float64)
        if not np.isfinite(x).all():
            raise ValueError(f"vector array {name} contains NaN or infinite values")
        if x.shape[0] < 4 or x.shape[1] < 2:
            raise ValueError(f"vector array {name} needs at least 4 rows and 2 columns, got shape {x.shape}")
        return ArrayData(name, x)
    raise ValueError(f"{name}: expected images (N, C, H, W) or vectors (N, D), got an array of shape {x.shape}")


def load_data(spec: str, key: str | None = None, levels: int | None = None) -> ArrayData:
    """A shipped data set by name (see :data:`SHIPPED`) or a path to a ``.npy`` / ``.npz`` file."""
    if spec in SHIPPED:
        return SHIPPED[spec][0]()
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"data file {spec} not found (shipped data sets: {', '.join(SHIPPED)})")
    return check_array(path.name, read_array(path, key), levels)


def train_test_split(n: int, test_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a seeded random split; at least one example on each side."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test fraction must lie in (0, 1), got {test_fraction}")
    perm = np.random.default_rng(seed).permutation(n)
    n_test = min(max(1, round(test_fraction * n)), n - 1)
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


@dataclass
class Standardizer:
    """u = (x - mean) / std per feature; ``log_det`` = log|du/dx| = -sum(log std)."""

    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def fit(cls, x: torch.Tensor) -> Standardizer:
        std = x.std(dim=0)
        return cls(x.mean(dim=0), torch.where(std > 0, std, torch.ones_like(std)))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    @property
    def log_det(self) -> float:
        return -float(torch.log(self.std).sum())


def nats_per_dim(log_prob_u: torch.Tensor, log_det: float, dim: int) -> torch.Tensor:
    """Negative log density per dimension in the original units, log p(x) = log p(u) + log|du/dx|."""
    return -(log_prob_u + log_det) / dim
